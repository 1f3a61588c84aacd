//! The LM-head fusion `loss-linear-ce`, tested three ways: snapshots of its
//! output in the text format, the interpreter on random inputs before and
//! after (1e-5 relative), and graphs where it must not fire.

mod common;

use common::{assert_same_outputs, optimize_with, parse, print};
use kiln_ir::graph::Graph;

const RULE: &str = "loss-linear-ce";

fn fires(text: &str) -> (Graph, Graph, String) {
    let g = parse(text);
    let (out, report) = optimize_with(&g, &[RULE]);
    assert!(report.fired(RULE) > 0, "{RULE} did not fire:\n{report}");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let printed = print(&out);
    (g, out, printed)
}

fn does_not_fire(text: &str) {
    let g = parse(text);
    let (out, report) = optimize_with(&g, &[RULE]);
    assert_eq!(report.fired(RULE), 0, "{RULE} fired:\n{report}");
    assert_eq!(print(&out), print(&g), "graph changed although {RULE} did not fire");
}

fn count(g: &Graph, op: &str) -> usize {
    g.node_ids().into_iter().filter(|&n| g.node(n).op.name() == op).count()
}

const MATMUL_HEAD: &str = r#"graph "g" {
  input %h: f32[6, 4]
  input %w: f32[4, 5]
  input %y: i64[6]
  input %cw: f32[5]
  %logits = MatMul(%h, %w) @head
  %loss = kiln::CrossEntropy(%logits, %y, %cw) {reduction = "sum", ignore_index = 2, label_smoothing = 0.1, z_loss = 0.01} @ce
  output %loss
}"#;

#[test]
fn matmul_head_snapshot_and_numbers() {
    let (g, out, printed) = fires(MATMUL_HEAD);
    assert_eq!(count(&out, "LinearCrossEntropy"), 1);
    assert_eq!(count(&out, "MatMul"), 0);
    assert_eq!(count(&out, "CrossEntropy"), 0);
    insta::assert_snapshot!("loss_linear_matmul", printed);
    assert_same_outputs(&g, &out);
}

const TIED_HEAD: &str = r#"graph "g" {
  input %h: f32[6, 4]
  input %wte: f32[5, 4]
  input %y: i64[6]
  %w = Transpose(%wte) {perm = [1, 0]} @tied
  %logits = MatMul(%h, %w) @head
  %loss = kiln::CrossEntropy(%logits, %y) {reduction = "mean"} @ce
  output %loss
}"#;

#[test]
fn tied_embedding_head_uses_the_embedding_directly() {
    let (g, out, printed) = fires(TIED_HEAD);
    assert_eq!(count(&out, "LinearCrossEntropy"), 1);
    assert_eq!(count(&out, "Transpose"), 0);
    insta::assert_snapshot!("loss_linear_tied", printed);
    assert_same_outputs(&g, &out);
}

const GEMM_HEAD: &str = r#"graph "g" {
  input %h: f32[6, 4]
  input %w: f32[5, 4]
  input %b: f32[5]
  input %y: i64[6]
  %logits = Gemm(%h, %w, %b) {transB = 1} @head
  %loss = kiln::CrossEntropy(%logits, %y) {reduction = "none"} @ce
  output %loss
}"#;

#[test]
fn gemm_head_with_bias_snapshot_and_numbers() {
    let (g, out, printed) = fires(GEMM_HEAD);
    assert_eq!(count(&out, "LinearCrossEntropy"), 1);
    assert_eq!(count(&out, "Gemm"), 0);
    insta::assert_snapshot!("loss_linear_gemm", printed);
    assert_same_outputs(&g, &out);
}

#[test]
fn logits_kept_for_their_other_use() {
    let text = r#"graph "g" {
  input %h: f32[6, 4]
  input %w: f32[4, 5]
  input %y: i64[6]
  %logits = MatMul(%h, %w) @head
  %loss = kiln::CrossEntropy(%logits, %y) @ce
  output %loss
  output %logits
}"#;
    let (g, out, _) = fires(text);
    assert_eq!(count(&out, "LinearCrossEntropy"), 1);
    assert_eq!(count(&out, "MatMul"), 1);
    assert_eq!(count(&out, "CrossEntropy"), 0);
    assert_same_outputs(&g, &out);
}

#[test]
fn not_for_a_gemm_with_scaled_product() {
    does_not_fire(
        r#"graph "g" {
  input %h: f32[6, 4]
  input %w: f32[5, 4]
  input %y: i64[6]
  %logits = Gemm(%h, %w) {alpha = 0.5, transB = 1} @head
  %loss = kiln::CrossEntropy(%logits, %y) @ce
  output %loss
}"#,
    );
}

#[test]
fn not_for_a_gemm_without_trans_b() {
    does_not_fire(
        r#"graph "g" {
  input %h: f32[6, 4]
  input %w: f32[4, 5]
  input %y: i64[6]
  %logits = Gemm(%h, %w) @head
  %loss = kiln::CrossEntropy(%logits, %y) @ce
  output %loss
}"#,
    );
}

#[test]
fn not_for_a_bias_that_is_not_per_class() {
    does_not_fire(
        r#"graph "g" {
  input %h: f32[6, 4]
  input %w: f32[5, 4]
  input %b: f32[6, 1]
  input %y: i64[6]
  %logits = Gemm(%h, %w, %b) {transB = 1} @head
  %loss = kiln::CrossEntropy(%logits, %y) @ce
  output %loss
}"#,
    );
}

#[test]
fn not_for_a_head_weight_of_the_wrong_rank() {
    // A batched weight [2, 4, 5] broadcasts h over a batch: the logits are
    // [2, 6, 5], not an N x V head.
    does_not_fire(
        r#"graph "g" {
  input %h: f32[6, 4]
  input %w: f32[2, 4, 5]
  input %y: i64[2, 5]
  %logits = MatMul(%h, %w) @head
  %loss = kiln::CrossEntropy(%logits, %y) @ce
  output %loss
}"#,
    );
}

#[test]
fn not_when_the_class_axis_is_not_the_matmul_columns() {
    // Logits [2, 3, 5]: the loss's class axis is axis 1 (size 3), while the
    // head's vocabulary is the last axis.
    does_not_fire(
        r#"graph "g" {
  input %h: f32[2, 3, 4]
  input %w: f32[4, 5]
  input %y: i64[2, 5]
  %logits = MatMul(%h, %w) @head
  %loss = kiln::CrossEntropy(%logits, %y) @ce
  output %loss
}"#,
    );
}

#[test]
fn not_over_a_non_matmul_input() {
    does_not_fire(
        r#"graph "g" {
  input %x: f32[6, 5]
  input %s: f32[6, 5]
  input %y: i64[6]
  %logits = Add(%x, %s) @add
  %loss = kiln::CrossEntropy(%logits, %y) @ce
  output %loss
}"#,
    );
}

#[test]
fn not_for_a_transpose_that_is_not_a_swap_of_the_weight() {
    // Transpose of a [4, 5] weight gives [5, 4], whose matmul with h [6, 4]
    // does not type; here the head weight is [d, V] already and the
    // Transpose sits on h instead, so only the plain fusion may fire and the
    // tied form must not read h as an embedding.
    let text = r#"graph "g" {
  input %ht: f32[4, 6]
  input %w: f32[4, 5]
  input %y: i64[6]
  %h = Transpose(%ht) {perm = [1, 0]} @t
  %logits = MatMul(%h, %w) @head
  %loss = kiln::CrossEntropy(%logits, %y) @ce
  output %loss
}"#;
    let (g, out, _) = fires(text);
    assert_eq!(count(&out, "Transpose"), 1);
    assert_same_outputs(&g, &out);
}
