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

// ---- loss-zloss-fold ----

const ZLOSS: &str = "loss-zloss-fold";

/// PaLM's z-loss on a mean cross-entropy: `CE + c * mean(logsumexp(x)^2)`.
const ZLOSS_MEAN: &str = r#"graph "g" {
  input %x: f32[6, 5]
  input %y: i64[6]
  init %coef: f32[] = 0.25
  init %two: f32[] = 2
  %ce = kiln::CrossEntropy(%x, %y) {label_smoothing = 0.1} @ce
  %lse = ReduceLogSumExp(%x) {axes = [1], keepdims = 0} @lse
  %sq = Pow(%lse, %two) @square
  %z = ReduceMean(%sq) {keepdims = 0} @zmean
  %term = Mul(%coef, %z) @scale
  %loss = Add(%ce, %term) @total
  output %loss
}"#;

#[test]
fn zloss_mean_snapshot_and_numbers() {
    let (g, out, printed) = fires(ZLOSS, ZLOSS_MEAN);
    assert_eq!(count(&out, "CrossEntropy"), 1);
    assert_eq!(count(&out, "ReduceLogSumExp"), 0);
    assert_eq!(count(&out, "Add"), 0);
    insta::assert_snapshot!("loss_zloss_mean", printed);
    assert_same_outputs(&g, &out);
}

#[test]
fn zloss_sum_with_log_sum_exp_spelled_out_numbers() {
    let text = r#"graph "g" {
  input %x: f32[2, 5, 3]
  input %y: i64[2, 3]
  init %coef: f32[1] = [0.5]
  %ce = kiln::CrossEntropy(%x, %y) {reduction = "sum"} @ce
  %e = Exp(%x) @exp
  %s = ReduceSum(%e) {axes = [-2], keepdims = 1} @sum
  %lse = Log(%s) @log
  %sq = Mul(%lse, %lse) @square
  %z = ReduceSum(%sq) {axes = [0, 1, 2], keepdims = 0} @zsum
  %term = Mul(%z, %coef) @scale
  %loss = Add(%term, %ce) @total
  output %loss
}"#;
    // The [1]-shaped coefficient would broadcast the scalar sum to [1];
    // the sum is then not the loss's type, so the rule must not fire here.
    common::does_not_fire(ZLOSS, text);
    let scalar = text.replace("init %coef: f32[1] = [0.5]", "init %coef: f32[] = 0.5");
    let (g, out, _) = fires(ZLOSS, &scalar);
    assert_eq!(count(&out, "CrossEntropy"), 1);
    assert_eq!(count(&out, "Exp"), 0);
    assert_same_outputs(&g, &out);
}

#[test]
fn zloss_per_sample_without_coefficient_numbers() {
    let text = r#"graph "g" {
  input %x: f32[6, 5]
  input %y: i64[6]
  %ce = kiln::CrossEntropy(%x, %y) {reduction = "none"} @ce
  %lse = ReduceLogSumExp(%x) {axes = [1], keepdims = 0} @lse
  %sq = Mul(%lse, %lse) @square
  %loss = Add(%ce, %sq) @total
  output %loss
}"#;
    let (g, out, printed) = fires(ZLOSS, text);
    assert!(printed.contains("z_loss = 1.0"), "{printed}");
    assert_eq!(count(&out, "Mul"), 0);
    assert_same_outputs(&g, &out);
}

#[test]
fn zloss_with_sce_and_lm_head_becomes_one_linear_cross_entropy() {
    let text = r#"graph "g" {
  input %h: f32[6, 4]
  input %w: f32[4, 5]
  input %y: i64[6]
  init %coef: f32[] = 0.0001
  init %two: f32[] = 2
  %logits = MatMul(%h, %w) @head
  %ce = SoftmaxCrossEntropyLoss(%logits, %y) @sce
  %lse = ReduceLogSumExp(%logits) {axes = [1], keepdims = 0} @lse
  %sq = Pow(%lse, %two) @square
  %z = ReduceMean(%sq) {keepdims = 0} @zmean
  %term = Mul(%z, %coef) @scale
  %loss = Add(%ce, %term) @total
  output %loss
}"#;
    let g = parse(text);
    let pipeline = kiln_passes::Pipeline::from_names(&["loss"]).expect("loss pass exists");
    let (out, report) = kiln_passes::optimize(&g, &pipeline).expect("optimizes");
    assert_eq!(report.fired(ZLOSS), 1, "{report}");
    assert_eq!(out.node_count(), 1, "{report}\n{}", common::print(&out));
    assert!(common::print(&out)
        .contains("kiln::LinearCrossEntropy(%h, %w, %y) {z_loss = 0.0001, transpose_weight = 0}"));
    assert_same_outputs(&g, &out);
}

#[test]
fn zloss_not_with_ignore_index() {
    // Ignored samples have no z-term in the op, but the graph's mean
    // counts them.
    does_not_fire(
        ZLOSS,
        &ZLOSS_MEAN.replace("{label_smoothing = 0.1}", "{ignore_index = 1}"),
    );
}

#[test]
fn zloss_not_with_class_weights() {
    let text = ZLOSS_MEAN
        .replace("input %y: i64[6]", "input %y: i64[6]\n  input %cw: f32[5]")
        .replace("CrossEntropy(%x, %y)", "CrossEntropy(%x, %y, %cw)");
    does_not_fire(ZLOSS, &text);
}

#[test]
fn zloss_not_when_the_reduction_differs_from_the_loss() {
    does_not_fire(
        ZLOSS,
        &ZLOSS_MEAN.replace("ReduceMean(%sq)", "ReduceSum(%sq)"),
    );
}

#[test]
fn zloss_not_over_another_axis() {
    does_not_fire(ZLOSS, &ZLOSS_MEAN.replace("axes = [1]", "axes = [0]"));
}

#[test]
fn zloss_not_for_a_coefficient_known_only_at_run_time() {
    does_not_fire(
        ZLOSS,
        &ZLOSS_MEAN.replace("init %coef: f32[] = 0.25", "input %coef: f32[]"),
    );
}

#[test]
fn zloss_not_for_the_log_sum_exp_of_other_logits() {
    let text = ZLOSS_MEAN
        .replace(
            "input %y: i64[6]",
            "input %y: i64[6]\n  input %x2: f32[6, 5]",
        )
        .replace("ReduceLogSumExp(%x)", "ReduceLogSumExp(%x2)");
    does_not_fire(ZLOSS, &text);
}

#[test]
fn zloss_not_for_a_cube() {
    does_not_fire(
        ZLOSS,
        &ZLOSS_MEAN.replace("init %two: f32[] = 2", "init %two: f32[] = 3"),
    );
}

#[test]
fn zloss_on_a_shifted_tied_head_becomes_one_linear_cross_entropy() {
    // A Hugging Face causal LM's shifted loss with PaLM's z-loss on the
    // same flattened logits; the logits are also an output.
    let text = r#"graph "g" {
  input %h: f32[2, 5, 4]
  input %wte: f32[7, 4]
  input %y: i64[2, 5]
  init %c0: i64[1] = [0]
  init %c1: i64[1] = [-1]
  init %c2: i64[1] = [1]
  init %c3: i64[1] = [1]
  init %c4: i64[1] = [9223372036854775807]
  init %c6: i64[2] = [-1, 7]
  init %c7: i64[1] = [-1]
  init %coef: f32[] = 0.001
  %w = Transpose(%wte) {perm = [1, 0]} @tied
  %logits = MatMul(%h, %w) @head
  %shift = Slice(%logits, %c0, %c1, %c2) @shift_logits
  %yshift = Slice(%y, %c3, %c4, %c2) @shift_labels
  %flat = Reshape(%shift, %c6) @flat_logits
  %yflat = Reshape(%yshift, %c7) @flat_labels
  %lp = LogSoftmax(%flat) {axis = 1} @log_softmax
  %ce = NegativeLogLikelihoodLoss(%lp, %yflat) @nll
  %lse = ReduceLogSumExp(%flat) {axes = [-1], keepdims = 0} @lse
  %sq = Mul(%lse, %lse) @square
  %z = ReduceMean(%sq) {keepdims = 0} @zmean
  %term = Mul(%coef, %z) @scale
  %loss = Add(%ce, %term) @total
  output %loss
  output %logits
}"#;
    let g = parse(text);
    let pipeline = kiln_passes::Pipeline::from_names(&["loss"]).expect("loss pass exists");
    let (out, report) = kiln_passes::optimize(&g, &pipeline).expect("optimizes");
    let printed = common::print(&out);
    assert_eq!(count(&out, "LinearCrossEntropy"), 1, "{report}\n{printed}");
    assert_eq!(count(&out, "ReduceLogSumExp"), 0, "{printed}");
    assert_eq!(count(&out, "MatMul"), 1, "the logits output keeps its head");
    assert!(printed.contains("z_loss = 0.001"), "{printed}");
    assert!(!report.notes.is_empty(), "{report}");
    assert_same_outputs(&g, &out);
}
