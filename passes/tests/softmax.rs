//! The softmax-under-order-statistics rules (`argmax-softmax`,
//! `topk-softmax-indices`, `topk-softmax-renorm`), each tested three ways: a
//! snapshot of its output in the text format, the interpreter on random
//! inputs before and after (1e-5 relative; random logits have no ties),
//! and graphs where it must not fire.

mod common;

use common::{assert_same_outputs, count, does_not_fire, fires, optimize_with, parse, print};

// ---- argmax-softmax ----

const ARGMAX: &str = "argmax-softmax";

const ARGMAX_SOFTMAX: &str = r#"graph "g" {
  input %x: f32[4, 3, 6]
  %p = Softmax(%x) {axis = -1} @softmax
  %i = ArgMax(%p) {axis = 2, keepdims = 0, select_last_index = 1} @argmax
  output %i
}"#;

#[test]
fn argmax_softmax_snapshot_and_numbers() {
    let (g, out, printed) = fires(ARGMAX, ARGMAX_SOFTMAX);
    assert_eq!(count(&out, "Softmax"), 0);
    assert_eq!(count(&out, "ArgMax"), 1);
    insta::assert_snapshot!("argmax_softmax", printed);
    assert_same_outputs(&g, &out);
}

#[test]
fn argmin_of_log_softmax_keepdims_numbers() {
    let text = r#"graph "g" {
  input %x: f32[4, 6]
  %p = LogSoftmax(%x) {axis = 0} @log_softmax
  %i = ArgMin(%p) {axis = -2, keepdims = 1} @argmin
  output %i
}"#;
    let (g, out, _) = fires(ARGMAX, text);
    assert_eq!(count(&out, "LogSoftmax"), 0);
    assert_same_outputs(&g, &out);
}

#[test]
fn argmax_softmax_keeps_a_softmax_used_elsewhere() {
    let text = r#"graph "g" {
  input %x: f32[4, 6]
  %p = Softmax(%x) {axis = 1} @softmax
  %i = ArgMax(%p) {axis = 1} @argmax
  output %i
  output %p
}"#;
    let (g, out, _) = fires(ARGMAX, text);
    assert_eq!(count(&out, "Softmax"), 1, "the probabilities are an output");
    assert!(print(&out).contains("ArgMax(%x)"), "{}", print(&out));
    assert_same_outputs(&g, &out);
}

#[test]
fn argmax_not_along_another_axis() {
    does_not_fire(ARGMAX, &ARGMAX_SOFTMAX.replace("{axis = 2,", "{axis = 1,"));
}

#[test]
fn argmax_not_over_a_non_softmax() {
    does_not_fire(
        ARGMAX,
        &ARGMAX_SOFTMAX.replace("Softmax(%x) {axis = -1}", "Sigmoid(%x)"),
    );
}

// ---- topk-softmax-renorm and topk-softmax-indices ----

const RENORM: &str = "topk-softmax-renorm";
const INDICES: &str = "topk-softmax-indices";

/// Mixtral-style top-2 gating over 8 experts.
const GATING: &str = r#"graph "g" {
  input %logits: f32[5, 8]
  init %k: i64[1] = [2]
  %probs = Softmax(%logits) {axis = 1} @router_softmax
  %top, %experts = TopK(%probs, %k) {axis = -1} @router_topk
  %total = ReduceSum(%top) {axes = [-1], keepdims = 1} @router_sum
  %weights = Div(%top, %total) @router_renorm
  output %weights
  output %experts
}"#;

#[test]
fn topk_renorm_snapshot_and_numbers() {
    let (g, out, printed) = fires(RENORM, GATING);
    assert_eq!(count(&out, "Div"), 0);
    assert_eq!(count(&out, "ReduceSum"), 0);
    // The indices still read the softmax's TopK: only the renorm rule ran.
    assert_eq!(count(&out, "TopK"), 2);
    insta::assert_snapshot!("topk_softmax_renorm", printed);
    assert_same_outputs(&g, &out);
}

#[test]
fn topk_indices_snapshot_and_numbers() {
    let text = r#"graph "g" {
  input %logits: f32[5, 8]
  init %k: i64[1] = [3]
  %probs = Softmax(%logits) {axis = 1} @router_softmax
  %top, %experts = TopK(%probs, %k) {axis = 1, largest = 0} @router_topk
  output %experts
}"#;
    let (g, out, printed) = fires(INDICES, text);
    assert_eq!(count(&out, "Softmax"), 0);
    insta::assert_snapshot!("topk_softmax_indices", printed);
    assert_same_outputs(&g, &out);
}

#[test]
fn gating_with_both_rules_drops_the_softmax_over_every_expert() {
    let g = parse(GATING);
    let (out, report) = optimize_with(&g, &[RENORM, INDICES]);
    assert_eq!(report.fired(RENORM), 1, "{report}");
    assert_eq!(report.fired(INDICES), 1, "{report}");
    assert_eq!(count(&out, "TopK"), 1, "{}", print(&out));
    assert_eq!(
        count(&out, "Softmax"),
        1,
        "only the softmax over the top 2 remains"
    );
    assert!(print(&out).contains("TopK(%logits, %k)"), "{}", print(&out));
    assert!(
        report.cost_after.flops < report.cost_before.flops,
        "{report}"
    );
    assert_same_outputs(&g, &out);
}

#[test]
fn topk_renorm_not_without_the_renormalization() {
    does_not_fire(
        RENORM,
        r#"graph "g" {
  input %logits: f32[5, 8]
  init %k: i64[1] = [2]
  init %two: f32[] = 2
  %probs = Softmax(%logits) {axis = 1} @router_softmax
  %top, %experts = TopK(%probs, %k) {axis = -1} @router_topk
  %weights = Div(%top, %two) @halve
  output %weights
  output %experts
}"#,
    );
}

#[test]
fn topk_renorm_not_when_summing_over_another_axis() {
    does_not_fire(RENORM, &GATING.replace("axes = [-1]", "axes = [0]"));
}

#[test]
fn topk_renorm_not_when_the_sum_drops_the_axis() {
    // keepdims = 0 gives [5], which cannot divide [5, 2] row by row.
    let text = GATING
        .replace("input %logits: f32[5, 8]", "input %logits: f32[2, 8]")
        .replace("keepdims = 1", "keepdims = 0");
    does_not_fire(RENORM, &text);
}

#[test]
fn topk_not_when_the_softmax_runs_along_another_axis() {
    let text = GATING.replace("Softmax(%logits) {axis = 1}", "Softmax(%logits) {axis = 0}");
    does_not_fire(RENORM, &text);
    does_not_fire(INDICES, &text);
}

#[test]
fn topk_renorm_with_the_sum_axes_as_an_input_numbers() {
    // ReduceSum as opset 13+ writes it: the axes are a constant input.
    let text = GATING
        .replace(
            "init %k: i64[1] = [2]",
            "init %k: i64[1] = [2]\n  init %axes: i64[1] = [1]",
        )
        .replace(
            "ReduceSum(%top) {axes = [-1], keepdims = 1}",
            "ReduceSum(%top, %axes) {keepdims = 1}",
        );
    let (g, out, _) = fires(RENORM, &text);
    assert_eq!(count(&out, "ReduceSum"), 0);
    assert_same_outputs(&g, &out);
}
