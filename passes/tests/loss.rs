//! The loss-fusion rules, each tested three ways: a snapshot of its output
//! in the text format, the interpreter on random inputs before and after
//! (1e-5 relative), and graphs where it must not fire.

mod common;

use common::{assert_same_outputs, count, does_not_fire, fires, optimize_with, parse};

// ---- loss-sce ----

const SCE: &str = r#"graph "g" {
  input %x: f32[6, 5]
  input %y: i64[6]
  input %w: f32[5]
  %loss, %log_prob = SoftmaxCrossEntropyLoss(%x, %y, %w) {ignore_index = 2, reduction = "sum"} @sce
  output %loss
  output %log_prob
}"#;

#[test]
fn loss_sce_snapshot_and_numbers() {
    let (g, out, printed) = fires("loss-sce", SCE);
    assert_eq!(count(&out, "CrossEntropy"), 1);
    assert_eq!(count(&out, "SoftmaxCrossEntropyLoss"), 0);
    insta::assert_snapshot!("loss_sce", printed);
    assert_same_outputs(&g, &out);
}

#[test]
fn loss_sce_spatial_loss_only() {
    let text = r#"graph "g" {
  input %x: f32[2, 4, 3]
  input %y: i64[2, 3]
  %loss = SoftmaxCrossEntropyLoss(%x, %y) @sce
  output %loss
}"#;
    let (g, out, _) = fires("loss-sce", text);
    assert_eq!(count(&out, "CrossEntropy"), 1);
    assert_same_outputs(&g, &out);
}

#[test]
fn loss_sce_not_for_other_losses() {
    does_not_fire(
        "loss-sce",
        r#"graph "g" {
  input %x: f32[6, 5]
  input %y: i64[6]
  %loss = NegativeLogLikelihoodLoss(%x, %y) @nll
  output %loss
}"#,
    );
}

// ---- loss-logsoftmax-nll ----

const LOGSOFTMAX_NLL: &str = r#"graph "g" {
  input %x: f32[6, 5]
  input %y: i64[6]
  %lp = LogSoftmax(%x) {axis = 1} @ls
  %loss = NegativeLogLikelihoodLoss(%lp, %y) {reduction = "mean"} @nll
  output %loss
}"#;

#[test]
fn loss_logsoftmax_nll_snapshot_and_numbers() {
    let (g, out, printed) = fires("loss-logsoftmax-nll", LOGSOFTMAX_NLL);
    assert_eq!(count(&out, "CrossEntropy"), 1);
    assert_eq!(count(&out, "LogSoftmax"), 0);
    assert_eq!(count(&out, "NegativeLogLikelihoodLoss"), 0);
    insta::assert_snapshot!("loss_logsoftmax_nll", printed);
    assert_same_outputs(&g, &out);
}

#[test]
fn loss_logsoftmax_nll_negative_axis_weights_and_ignore_index() {
    let text = r#"graph "g" {
  input %x: f32[2, 4, 3]
  input %y: i64[2, 3]
  input %w: f32[4]
  %lp = LogSoftmax(%x) {axis = -2} @ls
  %loss = NegativeLogLikelihoodLoss(%lp, %y, %w) {ignore_index = 1, reduction = "none"} @nll
  output %loss
}"#;
    let (g, out, _) = fires("loss-logsoftmax-nll", text);
    assert_eq!(count(&out, "CrossEntropy"), 1);
    assert_same_outputs(&g, &out);
}

#[test]
fn loss_logsoftmax_nll_keeps_the_log_softmax_for_its_other_use() {
    let text = r#"graph "g" {
  input %x: f32[6, 5]
  input %y: i64[6]
  %lp = LogSoftmax(%x) {axis = 1} @ls
  %loss = NegativeLogLikelihoodLoss(%lp, %y) @nll
  %e = Exp(%lp) @probs
  output %loss
  output %e
}"#;
    let g = parse(text);
    let (out, report) = optimize_with(&g, &["loss-logsoftmax-nll"]);
    assert!(report.fired("loss-logsoftmax-nll") > 0, "{report}");
    // The other consumer still reads a LogSoftmax; the loss may come from
    // either form, and both are equal.
    assert_eq!(count(&out, "LogSoftmax"), 1);
    assert_eq!(count(&out, "Exp"), 1);
    assert_same_outputs(&g, &out);
}

#[test]
fn loss_logsoftmax_nll_not_over_another_axis() {
    does_not_fire(
        "loss-logsoftmax-nll",
        r#"graph "g" {
  input %x: f32[2, 4, 4]
  input %y: i64[2, 4]
  %lp = LogSoftmax(%x) {axis = -1} @ls
  %loss = NegativeLogLikelihoodLoss(%lp, %y) @nll
  output %loss
}"#,
    );
}

#[test]
fn loss_logsoftmax_nll_not_without_a_log_softmax() {
    does_not_fire(
        "loss-logsoftmax-nll",
        r#"graph "g" {
  input %x: f32[6, 5]
  input %y: i64[6]
  %lp = Softmax(%x) {axis = 1} @sm
  %loss = NegativeLogLikelihoodLoss(%lp, %y) @nll
  output %loss
}"#,
    );
}

// ---- loss-softmax-log-nll ----

const SOFTMAX_LOG_NLL: &str = r#"graph "g" {
  input %x: f32[6, 5]
  input %y: i64[6]
  input %w: f32[5]
  %p = Softmax(%x) {axis = 1} @sm
  %lp = Log(%p) @log
  %loss = NegativeLogLikelihoodLoss(%lp, %y, %w) {reduction = "sum"} @nll
  output %loss
}"#;

#[test]
fn loss_softmax_log_nll_snapshot_and_numbers() {
    let (g, out, printed) = fires("loss-softmax-log-nll", SOFTMAX_LOG_NLL);
    assert_eq!(count(&out, "CrossEntropy"), 1);
    assert_eq!(count(&out, "Softmax"), 0);
    assert_eq!(count(&out, "Log"), 0);
    insta::assert_snapshot!("loss_softmax_log_nll", printed);
    assert_same_outputs(&g, &out);
}

#[test]
fn loss_softmax_log_nll_keeps_the_softmax_for_its_other_use() {
    let text = r#"graph "g" {
  input %x: f32[6, 5]
  input %y: i64[6]
  %p = Softmax(%x) {axis = 1} @sm
  %lp = Log(%p) @log
  %loss = NegativeLogLikelihoodLoss(%lp, %y) @nll
  output %loss
  output %p
}"#;
    let g = parse(text);
    let (out, report) = optimize_with(&g, &["loss-softmax-log-nll"]);
    assert!(report.fired("loss-softmax-log-nll") > 0, "{report}");
    assert_eq!(count(&out, "Softmax"), 1);
    assert_same_outputs(&g, &out);
}

#[test]
fn loss_softmax_log_nll_not_for_a_softmax_without_the_log() {
    does_not_fire(
        "loss-softmax-log-nll",
        r#"graph "g" {
  input %x: f32[6, 5]
  input %y: i64[6]
  %p = Softmax(%x) {axis = 1} @sm
  %loss = NegativeLogLikelihoodLoss(%p, %y) @nll
  output %loss
}"#,
    );
}

#[test]
fn loss_softmax_log_nll_not_over_another_axis() {
    does_not_fire(
        "loss-softmax-log-nll",
        r#"graph "g" {
  input %x: f32[2, 4, 4]
  input %y: i64[2, 4]
  %p = Softmax(%x) {axis = 2} @sm
  %lp = Log(%p) @log
  %loss = NegativeLogLikelihoodLoss(%lp, %y) @nll
  output %loss
}"#,
    );
}
