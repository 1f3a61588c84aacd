//! The LM-head fusion `loss-linear-ce`, tested three ways: snapshots of its
//! output in the text format, the interpreter on random inputs before and
//! after (1e-5 relative), and graphs where it must not fire.

mod common;

use common::{assert_same_outputs, count, optimize_with, parse};
use kiln_ir::graph::Graph;

const RULE: &str = "loss-linear-ce";

fn fires(text: &str) -> (Graph, Graph, String) {
    common::fires(RULE, text)
}

fn does_not_fire(text: &str) {
    common::does_not_fire(RULE, text)
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

// ---- loss-linear-ce-flat ----

const FLAT: &str = "loss-linear-ce-flat";

fn flat_fires(text: &str) -> (Graph, Graph, String) {
    common::fires(FLAT, text)
}

fn flat_does_not_fire(text: &str) {
    common::does_not_fire(FLAT, text)
}

/// The shifted loss of a Hugging Face causal LM with tied embeddings, the
/// logits also a graph output.
const SHIFTED_TIED: &str = r#"graph "g" {
  input %h: f32[2, 5, 4]
  input %wte: f32[7, 4]
  input %y: i64[2, 5]
  input %cw: f32[7]
  init %c0: i64[1] = [0]
  init %c1: i64[1] = [-1]
  init %c2: i64[1] = [1]
  init %c3: i64[1] = [1]
  init %c4: i64[1] = [9223372036854775807]
  init %c5: i64[1] = [1]
  init %c6: i64[2] = [-1, 7]
  init %c7: i64[1] = [-1]
  %w = Transpose(%wte) {perm = [1, 0]} @tied
  %logits = MatMul(%h, %w) @head
  %shift = Slice(%logits, %c0, %c1, %c2) @shift_logits
  %yshift = Slice(%y, %c3, %c4, %c5) @shift_labels
  %flat = Reshape(%shift, %c6) @flat_logits
  %yflat = Reshape(%yshift, %c7) @flat_labels
  %loss = kiln::CrossEntropy(%flat, %yflat, %cw) {reduction = "mean", ignore_index = 3} @ce
  output %loss
  output %logits
}"#;

#[test]
fn flat_shifted_tied_head_snapshot_and_numbers() {
    let (g, out, printed) = flat_fires(SHIFTED_TIED);
    assert_eq!(count(&out, "LinearCrossEntropy"), 1);
    assert_eq!(count(&out, "CrossEntropy"), 0);
    assert_eq!(count(&out, "MatMul"), 1, "the logits output keeps its head");
    insta::assert_snapshot!("loss_linear_flat_shifted_tied", printed);
    assert_same_outputs(&g, &out);
}

#[test]
fn flat_unshifted_plain_head_numbers() {
    let text = r#"graph "g" {
  input %h: f32[2, 5, 4]
  input %w: f32[4, 7]
  input %y: i64[10]
  init %c0: i64[2] = [10, 7]
  %logits = MatMul(%h, %w) @head
  %flat = Reshape(%logits, %c0) @flat_logits
  %loss = kiln::CrossEntropy(%flat, %y) {reduction = "sum"} @ce
  output %loss
}"#;
    let (g, out, printed) = flat_fires(text);
    assert_eq!(count(&out, "LinearCrossEntropy"), 1);
    assert_eq!(count(&out, "MatMul"), 0);
    insta::assert_snapshot!("loss_linear_flat_plain", printed);
    assert_same_outputs(&g, &out);
}

#[test]
fn flat_not_for_a_slice_of_the_vocabulary_axis() {
    flat_does_not_fire(
        r#"graph "g" {
  input %h: f32[2, 5, 4]
  input %w: f32[4, 7]
  input %y: i64[10]
  init %c0: i64[1] = [0]
  init %c1: i64[1] = [6]
  init %c2: i64[1] = [-1]
  init %c3: i64[2] = [-1, 6]
  %logits = MatMul(%h, %w) @head
  %part = Slice(%logits, %c0, %c1, %c2) @vocab_slice
  %flat = Reshape(%part, %c3) @flat_logits
  %loss = kiln::CrossEntropy(%flat, %y) @ce
  output %loss
}"#,
    );
}

#[test]
fn flat_not_when_the_reshape_moves_the_class_axis() {
    // [2, 5, 6] reshaped to [20, 3] splits the vocabulary axis: the loss's
    // classes are not the head's.
    flat_does_not_fire(
        r#"graph "g" {
  input %h: f32[2, 5, 4]
  input %w: f32[4, 6]
  input %y: i64[20]
  init %c0: i64[2] = [20, 3]
  %logits = MatMul(%h, %w) @head
  %flat = Reshape(%logits, %c0) @flat_logits
  %loss = kiln::CrossEntropy(%flat, %y) @ce
  output %loss
}"#,
    );
}

#[test]
fn flat_not_for_a_batched_head_weight() {
    flat_does_not_fire(
        r#"graph "g" {
  input %h: f32[2, 5, 4]
  input %w: f32[2, 4, 7]
  input %y: i64[10]
  init %c0: i64[2] = [-1, 7]
  %logits = MatMul(%h, %w) @head
  %flat = Reshape(%logits, %c0) @flat_logits
  %loss = kiln::CrossEntropy(%flat, %y) @ce
  output %loss
}"#,
    );
}

#[test]
fn fused_head_is_cheaper_in_bytes_and_peak_memory() {
    // With V well above d the N x V logits dominate what the unfused graph
    // moves and holds; the fused op never forms them.
    let text = r#"graph "g" {
  input %h: f32[64, 8]
  input %w: f32[8, 512]
  input %y: i64[64]
  %logits = MatMul(%h, %w) @head
  %loss = kiln::CrossEntropy(%logits, %y) @ce
  output %loss
}"#;
    let g = parse(text);
    let (out, report) = optimize_with(&g, &[RULE]);
    assert_eq!(
        count(&out, "LinearCrossEntropy"),
        1,
        "extraction picks the fused op:\n{report}"
    );
    let logits_bytes = 64.0 * 512.0 * 4.0;
    assert!(
        report.cost_before.bytes - report.cost_after.bytes >= logits_bytes,
        "bytes {} -> {}",
        report.cost_before.bytes,
        report.cost_after.bytes
    );
    // Before, the logits are live at once; after, the whole peak (inputs
    // included) is below their size.
    assert!(
        report.cost_before.peak_bytes >= logits_bytes
            && report.cost_after.peak_bytes < logits_bytes,
        "peak {} -> {}",
        report.cost_before.peak_bytes,
        report.cost_after.peak_bytes
    );
    assert!(
        report.cost_after.flops <= report.cost_before.flops,
        "flops {} -> {}",
        report.cost_before.flops,
        report.cost_after.flops
    );
    assert_same_outputs(&g, &out);
}

#[test]
fn flat_with_symbolic_batch_and_sequence() {
    let text = r#"graph "g" {
  input %h: f32[batch, seq, 4]
  input %w: f32[4, 7]
  input %y: i64[batch, seq]
  init %rows: i64[2] = [-1, 7]
  init %flat_y: i64[1] = [-1]
  %logits = MatMul(%h, %w) @head
  %flat = Reshape(%logits, %rows) @flat_logits
  %yflat = Reshape(%y, %flat_y) @flat_labels
  %loss = kiln::CrossEntropy(%flat, %yflat) {reduction = "mean"} @ce
  output %loss
}"#;
    let (g, out, _) = flat_fires(text);
    assert_eq!(count(&out, "LinearCrossEntropy"), 1);
    assert_eq!(count(&out, "MatMul"), 0);
    assert_same_outputs(&g, &out);
}

// ---- notes, biased MatMul heads, Gemm heads under the shift ----

#[test]
fn report_notes_that_the_logits_output_keeps_its_head() {
    let text = r#"graph "g" {
  input %h: f32[6, 4]
  input %w: f32[4, 5]
  input %y: i64[6]
  %logits = MatMul(%h, %w) @head
  %loss = kiln::CrossEntropy(%logits, %y) @ce
  output %loss
  output %logits
}"#;
    let g = parse(text);
    let (_, report) = optimize_with(&g, &[RULE]);
    assert_eq!(report.notes.len(), 1, "{report}");
    let note = &report.notes[0];
    assert_eq!(note.rule, RULE);
    assert_eq!(note.node, "ce");
    assert_eq!(
        note.message,
        "logits `logits` are a graph output: kept the MatMul path beside LinearCrossEntropy"
    );
    assert!(
        report
            .to_string()
            .contains("note: loss-linear-ce at ce: logits `logits`"),
        "{report}"
    );
}

#[test]
fn no_note_when_the_logits_are_not_an_output() {
    let g = parse(MATMUL_HEAD);
    let (_, report) = optimize_with(&g, &[RULE]);
    assert_eq!(report.fired(RULE), 1);
    assert!(report.notes.is_empty(), "{report}");
}

#[test]
fn flat_report_notes_the_unshifted_logits_output() {
    let g = parse(SHIFTED_TIED);
    let (_, report) = optimize_with(&g, &[FLAT]);
    let messages: Vec<&str> = report.notes.iter().map(|n| n.message.as_str()).collect();
    assert_eq!(
        messages,
        ["logits `logits` are a graph output: kept the MatMul path beside LinearCrossEntropy"],
        "{report}"
    );
}

const BIASED_HEAD: &str = r#"graph "g" {
  input %h: f32[6, 4]
  input %w: f32[4, 5]
  input %b: f32[5]
  input %y: i64[6]
  input %cw: f32[5]
  %prod = MatMul(%h, %w) @head
  %logits = Add(%b, %prod) @bias
  %loss = kiln::CrossEntropy(%logits, %y, %cw) {reduction = "mean", label_smoothing = 0.05} @ce
  output %loss
}"#;

#[test]
fn matmul_plus_bias_head_snapshot_and_numbers() {
    let (g, out, printed) = fires(BIASED_HEAD);
    assert_eq!(count(&out, "LinearCrossEntropy"), 1);
    assert_eq!(count(&out, "MatMul"), 0);
    assert_eq!(count(&out, "Add"), 0);
    insta::assert_snapshot!("loss_linear_matmul_bias", printed);
    assert_same_outputs(&g, &out);
}

#[test]
fn tied_head_plus_bias_numbers() {
    let text = r#"graph "g" {
  input %h: f32[6, 4]
  input %wte: f32[5, 4]
  input %b: f32[5]
  input %y: i64[6]
  %w = Transpose(%wte) {perm = [1, 0]} @tied
  %prod = MatMul(%h, %w) @head
  %logits = Add(%prod, %b) @bias
  %loss = kiln::CrossEntropy(%logits, %y) {reduction = "sum"} @ce
  output %loss
}"#;
    let (g, out, _) = fires(text);
    assert_eq!(count(&out, "LinearCrossEntropy"), 1);
    assert_eq!(count(&out, "Transpose"), 0);
    assert_same_outputs(&g, &out);
}

#[test]
fn not_for_a_bias_that_broadcasts_over_classes() {
    // b [6, 1] is a per-row offset (it cancels in the loss, but it is not
    // the fused op's per-class bias).
    does_not_fire(
        r#"graph "g" {
  input %h: f32[6, 4]
  input %w: f32[4, 5]
  input %b: f32[6, 1]
  input %y: i64[6]
  %prod = MatMul(%h, %w) @head
  %logits = Add(%prod, %b) @bias
  %loss = kiln::CrossEntropy(%logits, %y) @ce
  output %loss
}"#,
    );
}

#[test]
fn not_for_a_bias_that_widens_the_product() {
    // b [2, 6, 5] broadcasts the [6, 5] product to 3-D logits.
    does_not_fire(
        r#"graph "g" {
  input %h: f32[6, 4]
  input %w: f32[4, 5]
  input %b: f32[2, 6, 5]
  input %y: i64[2, 5]
  %prod = MatMul(%h, %w) @head
  %logits = Add(%prod, %b) @bias
  %loss = kiln::CrossEntropy(%logits, %y) @ce
  output %loss
}"#,
    );
}

/// A Linear-with-bias head exported as Gemm on flattened rows, unflattened
/// back, shifted and flattened again for the loss, its logits an output.
const SHIFTED_GEMM: &str = r#"graph "g" {
  input %h: f32[2, 5, 4]
  input %w: f32[7, 4]
  input %b: f32[7]
  input %y: i64[2, 5]
  init %rows_shape: i64[2] = [10, 4]
  init %logits_shape: i64[3] = [2, 5, 7]
  init %c0: i64[1] = [0]
  init %c1: i64[1] = [-1]
  init %c2: i64[1] = [1]
  init %c3: i64[1] = [1]
  init %c4: i64[1] = [9223372036854775807]
  init %c5: i64[1] = [1]
  init %c6: i64[2] = [-1, 7]
  init %c7: i64[1] = [-1]
  %rows = Reshape(%h, %rows_shape) @flat_hidden
  %flat_logits0 = Gemm(%rows, %w, %b) {transB = 1} @head
  %logits = Reshape(%flat_logits0, %logits_shape) @unflatten
  %shift = Slice(%logits, %c0, %c1, %c2) @shift_logits
  %yshift = Slice(%y, %c3, %c4, %c5) @shift_labels
  %flat = Reshape(%shift, %c6) @flat_logits
  %yflat = Reshape(%yshift, %c7) @flat_labels
  %loss = kiln::CrossEntropy(%flat, %yflat) {reduction = "mean"} @ce
  output %loss
  output %logits
}"#;

#[test]
fn flat_gemm_head_under_the_shift_snapshot_and_numbers() {
    let (g, out, printed) = flat_fires(SHIFTED_GEMM);
    assert_eq!(count(&out, "LinearCrossEntropy"), 1);
    assert_eq!(count(&out, "CrossEntropy"), 0);
    assert_eq!(count(&out, "Gemm"), 1, "the logits output keeps its head");
    insta::assert_snapshot!("loss_linear_flat_shifted_gemm", printed);
    assert_same_outputs(&g, &out);
    let (_, report) = optimize_with(&g, &[FLAT]);
    assert!(
        report.notes.iter().any(|n| n.message
            == "logits `logits` are a graph output: kept the Gemm path beside LinearCrossEntropy"),
        "{report}"
    );
}

#[test]
fn flat_biased_matmul_head_numbers() {
    let text = r#"graph "g" {
  input %h: f32[2, 5, 4]
  input %w: f32[4, 7]
  input %b: f32[7]
  input %y: i64[10]
  init %c0: i64[2] = [-1, 7]
  %prod = MatMul(%h, %w) @head
  %logits = Add(%prod, %b) @bias
  %flat = Reshape(%logits, %c0) @flat_logits
  %loss = kiln::CrossEntropy(%flat, %y) {reduction = "none"} @ce
  output %loss
}"#;
    let (g, out, _) = flat_fires(text);
    assert_eq!(count(&out, "LinearCrossEntropy"), 1);
    assert_eq!(count(&out, "Add"), 0);
    assert_same_outputs(&g, &out);
}

#[test]
fn flat_not_for_a_gemm_whose_rows_are_not_the_logits_rows() {
    // The inner Reshape reads H [5, 2, 4] while the logits are unflattened
    // to [2, 5, 7]: the same rows in memory order, but the slice of the
    // leading axes would pick different rows of H.
    flat_does_not_fire(
        r#"graph "g" {
  input %h: f32[5, 2, 4]
  input %w: f32[7, 4]
  input %y: i64[8]
  init %rows_shape: i64[2] = [10, 4]
  init %logits_shape: i64[3] = [2, 5, 7]
  init %c0: i64[1] = [0]
  init %c1: i64[1] = [-1]
  init %c2: i64[1] = [1]
  init %c6: i64[2] = [-1, 7]
  %rows = Reshape(%h, %rows_shape) @flat_hidden
  %flat_logits0 = Gemm(%rows, %w) {transB = 1} @head
  %logits = Reshape(%flat_logits0, %logits_shape) @unflatten
  %shift = Slice(%logits, %c0, %c1, %c2) @shift_logits
  %flat = Reshape(%shift, %c6) @flat_logits
  %loss = kiln::CrossEntropy(%flat, %y) @ce
  output %loss
}"#,
    );
}
