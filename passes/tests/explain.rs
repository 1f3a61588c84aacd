//! `explain_node`: the rule applications between a source node's term and
//! the term extracted for it.

mod common;

use common::parse;
use kiln_passes::manager::{explain_node, OptLevel, Pipeline};

/// An LM head and a LogSoftmax + NLL loss: loss fusion, then the head
/// folded into it.
const HEAD_LOSS: &str = r#"graph "g" {
  input %h: f32[6, 4]
  input %y: i64[6]
  init %w: f32[4, 5] = [[0.1, -0.2, 0.3, 0.4, -0.5], [0.6, 0.7, -0.8, 0.9, 0.1], [0.2, -0.3, 0.4, 0.5, -0.6], [0.7, 0.8, -0.9, 0.1, 0.2]]
  %x = MatMul(%h, %w) @head
  %lp = LogSoftmax(%x) {axis = 1} @ls
  %loss = NegativeLogLikelihoodLoss(%lp, %y) @nll
  %r = Relu(%h) @relu
  output %loss
  output %r
}"#;

#[test]
fn a_fused_loss_lists_its_rules_in_order() {
    let g = parse(HEAD_LOSS);
    let e = explain_node(&g, &Pipeline::level(OptLevel::O2), "nll").unwrap();
    assert!(e.rewritten && e.live, "{e:?}");
    assert_eq!(e.value, "loss");
    let rules: Vec<&str> = e.steps.iter().map(|s| s.rule.as_str()).collect();
    assert_eq!(rules, ["loss-logsoftmax-nll", "loss-linear-ce"], "{e:#?}");
    assert!(
        e.original.starts_with("NegativeLogLikelihoodLoss("),
        "{}",
        e.original
    );
    assert!(
        e.result.starts_with("kiln.LinearCrossEntropy"),
        "{}",
        e.result
    );
    assert!(
        e.steps[0].after.starts_with("kiln.CrossEntropy"),
        "{:?}",
        e.steps[0]
    );
    assert!(!e.passes.is_empty());
}

#[test]
fn untouched_and_absorbed_nodes() {
    let g = parse(HEAD_LOSS);
    let pipeline = Pipeline::level(OptLevel::O2);
    let relu = explain_node(&g, &pipeline, "relu").unwrap();
    assert!(
        !relu.rewritten && relu.live && relu.steps.is_empty(),
        "{relu:?}"
    );
    // The head's logits are no longer computed: LinearCrossEntropy took them in.
    let head = explain_node(&g, &pipeline, "head").unwrap();
    assert!(!head.live, "{head:?}");
    // Without passes nothing is rewritten.
    let none = explain_node(&g, &Pipeline::level(OptLevel::O0), "nll").unwrap();
    assert!(!none.rewritten && none.steps.is_empty(), "{none:?}");
}

#[test]
fn an_unknown_node_is_an_error() {
    let g = parse(HEAD_LOSS);
    let e = explain_node(&g, &Pipeline::level(OptLevel::O2), "nope").unwrap_err();
    assert!(e.to_string().contains("no node named `nope`"), "{e}");
}
