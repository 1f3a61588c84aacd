//! The pass manager: levels and named passes, saturation limits that are
//! reported, and rule bugs that are caught.

mod common;

use common::{parse, pipeline_of, print};
use egg::{Id, PatternAst};
use kiln_ir::op::Op;
use kiln_passes::lang::{Disc, KilnLang};
use kiln_passes::manager::{optimize, OptLevel, Pass, Pipeline, Stop};
use kiln_passes::rules::{AstBuilder, Match, Rule};
use kiln_passes::KilnEGraph;
use std::sync::Arc;
use std::time::Duration;

/// Six transposes that cancel in pairs: saturation needs several rounds.
const CHAIN: &str = r#"graph "chain" {
  input %x: f32[2, 3]
  %a = Transpose(%x) @t1
  %b = Transpose(%a) @t2
  %c = Transpose(%b) @t3
  %d = Transpose(%c) @t4
  %e = Transpose(%d) @t5
  %f = Transpose(%e) @t6
  %y = Relu(%f) @relu
  output %y
}"#;

#[test]
fn o0_returns_the_graph_unchanged() {
    let g = parse(CHAIN);
    let (out, report) = optimize(&g, &Pipeline::level(OptLevel::O0)).unwrap();
    assert_eq!(print(&out), print(&g));
    assert!(report.passes.is_empty() && report.rewrites.is_empty());
}

#[test]
fn o1_saturates_and_reports_where_rules_fired() {
    let g = parse(CHAIN);
    let (out, report) = optimize(&g, &Pipeline::level(OptLevel::O1)).unwrap();
    assert_eq!(out.node_count(), 1, "{}", print(&out));
    assert_eq!(report.passes[0].stop, Stop::Saturated);
    assert!(!report.limit_hit());
    let cancel = report
        .rewrites
        .iter()
        .find(|r| r.rule == "transpose-cancel")
        .expect("fired");
    assert!(cancel.nodes.iter().any(|n| n == "t2"), "{:?}", cancel.nodes);
    assert_eq!(report.ops_before["Transpose"], 6);
    assert!(!report.ops_after.contains_key("Transpose"));
    let text = report.to_string();
    assert!(
        text.contains("transpose-cancel") && text.contains("saturated"),
        "{text}"
    );
}

#[test]
fn iteration_limit_is_reported() {
    let g = parse(CHAIN);
    let mut p = Pipeline::level(OptLevel::O1);
    p.limits.iterations = 1;
    let (out, report) = optimize(&g, &p).unwrap();
    assert_eq!(report.passes[0].stop, Stop::IterationLimit(1));
    assert!(report.limit_hit());
    assert!(report.to_string().contains("iteration limit"), "{report}");
    kiln_ir::verify(&out).unwrap();
}

#[test]
fn node_limit_is_reported() {
    let g = parse(CHAIN);
    let mut p = Pipeline::level(OptLevel::O1);
    p.limits.nodes = 4;
    let (out, report) = optimize(&g, &p).unwrap();
    assert!(
        matches!(report.passes[0].stop, Stop::NodeLimit(_)),
        "{report}"
    );
    assert!(report.to_string().contains("node limit"), "{report}");
    kiln_ir::verify(&out).unwrap();
}

#[test]
fn time_limit_is_reported_and_marks_the_result_machine_dependent() {
    let g = parse(CHAIN);
    let mut p = Pipeline::level(OptLevel::O1);
    p.limits.time = Duration::ZERO;
    let (_, report) = optimize(&g, &p).unwrap();
    assert!(
        matches!(report.passes[0].stop, Stop::TimeLimit(_)),
        "{report}"
    );
    assert!(!report.deterministic());
}

#[test]
fn unknown_pass_is_an_error_listing_the_known_ones() {
    let err = Pipeline::from_names(&["algebra", "nope"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope") && err.contains("algebra"), "{err}");
    assert_eq!(Pipeline::from_names(&["algebra"]).unwrap().passes.len(), 1);
}

#[test]
fn a_graph_no_rule_applies_to_comes_out_unchanged() {
    let g = parse(
        r#"graph "plain" {
  input %x: f32[batch, 8]
  init %w: f32[8, 4] = [[0.5, 0.0, 0.0, 0.0], [0.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.5], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]]
  %h = MatMul(%x, %w) @proj
  %y = Softmax(%h) @softmax
  output %y
}"#,
    );
    let (out, report) = optimize(&g, &Pipeline::level(OptLevel::O2)).unwrap();
    assert!(report.rewrites.is_empty(), "{report}");
    assert_eq!(print(&out), print(&g));
}

/// A deliberately wrong rule: `ReduceSum(x)` -> `x`, which changes the shape.
struct WrongRule;

impl Rule for WrongRule {
    fn name(&self) -> &'static str {
        "wrong"
    }
    fn description(&self) -> &'static str {
        "a rule that breaks types, to test that the analysis catches it"
    }
    fn roots(&self) -> Option<Vec<Disc>> {
        Some(vec![Disc::onnx("ReduceSum")])
    }
    fn search(&self, egraph: &KilnEGraph, class: Id, out: &mut Vec<Match>) {
        for n in &egraph[class].nodes {
            if let KilnLang::Op { op, children, .. } = n {
                if matches!(op.op(), Op::Reduce { .. }) {
                    let mut b = AstBuilder::new();
                    let x = b.class(children[0]);
                    b.node(KilnLang::op(op.op().clone(), vec![x]));
                    out.push(b.finish());
                }
            }
        }
    }
    fn rewrite(&self, _: &mut KilnEGraph, _: Id, m: &Match) -> Option<PatternAst<KilnLang>> {
        let mut b = AstBuilder::continuing(&m.subst);
        b.var(kiln_passes::rules::var_at(&m.lhs, Id::from(0))?);
        Some(b.into_ast())
    }
}

const REDUCE: &str = r#"graph "reduce" {
  input %x: f32[2, 3]
  %y = ReduceSum(%x) {axes = [1], keepdims = 0} @sum
  output %y
}"#;

fn wrong_pipeline(strict: bool) -> Pipeline {
    let mut p = pipeline_of(&[]);
    p.passes = vec![Pass {
        name: "wrong",
        description: "wrong rule",
        rules: vec![Arc::new(WrongRule)],
    }];
    p.strict_analysis = strict;
    p
}

#[test]
fn a_rule_that_breaks_types_is_reported_and_the_input_kept() {
    let g = parse(REDUCE);
    let (out, report) = optimize(&g, &wrong_pipeline(false)).unwrap();
    assert_eq!(report.errors.len(), 1, "{report}");
    assert!(
        report.errors[0].contains("wrong") && report.errors[0].contains("incompatible"),
        "{report}"
    );
    assert_eq!(print(&out), print(&g));
}

#[test]
#[should_panic(expected = "incompatible types")]
fn a_rule_that_breaks_types_panics_in_strict_mode() {
    let _ = optimize(&parse(REDUCE), &wrong_pipeline(true));
}
