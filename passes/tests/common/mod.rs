//! Helpers shared by the passes tests: graphs from text, optimizing with
//! chosen rules, random inputs, and running graphs in the reference
//! interpreter to compare outputs.

#![allow(dead_code)]

use kiln_ir::dim::Dim;
use kiln_ir::dtype::DType;
use kiln_ir::graph::Graph;
use kiln_ir::tensor::Tensor;
use kiln_passes::manager::{optimize, Pass, Pipeline};
use kiln_passes::rules::{all_rules, Rule};
use kiln_passes::Report;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Parses a graph in kiln's text format and infers its types.
pub fn parse(text: &str) -> Graph {
    let mut g = kiln_ir::parse_graph(text).expect("test graph parses");
    kiln_ir::infer_types(&mut g).expect("test graph infers");
    kiln_ir::verify(&g).expect("test graph verifies");
    g
}

/// The rule with this name.
pub fn rule(name: &str) -> Arc<dyn Rule> {
    all_rules()
        .into_iter()
        .find(|r| r.name() == name)
        .unwrap_or_else(|| panic!("no rule `{name}`"))
}

/// A pipeline of one pass running exactly the named rules.
pub fn pipeline_of(rules: &[&str]) -> Pipeline {
    let pass = Pass {
        name: "test",
        description: "rules under test",
        rules: rules.iter().map(|r| rule(r)).collect(),
    };
    Pipeline::new("test", vec![pass])
}

/// Optimizes with exactly the named rules.
pub fn optimize_with(g: &Graph, rules: &[&str]) -> (Graph, Report) {
    optimize(g, &pipeline_of(rules)).expect("optimization succeeds")
}

/// Printed form, for snapshots and equality.
pub fn print(g: &Graph) -> String {
    kiln_ir::print_graph(g)
}

/// Random inputs for every graph input that has no initializer: floats
/// uniform in [-1, 1), integers in [0, 4), booleans fair; symbolic dims
/// take their size from `sizes` (3 when not listed).
pub fn random_inputs(g: &Graph, seed: u64, sizes: &BTreeMap<&str, i64>) -> Vec<(String, Tensor)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for &v in g.inputs() {
        let val = g.value(v);
        if val.initializer.is_some() {
            continue;
        }
        let ty = val.ty.as_ref().expect("inputs are typed");
        let shape: Vec<usize> = ty
            .shape
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => *n as usize,
                d => d
                    .eval(&|s| Some(sizes.get(s).copied().unwrap_or(3)))
                    .expect("dims evaluate") as usize,
            })
            .collect();
        let n: usize = shape.iter().product();
        let t = if ty.dtype.is_float() {
            let v: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
            Tensor::from_f64s(ty.dtype, &shape, &v)
        } else if ty.dtype == DType::Bool {
            let v: Vec<i64> = (0..n).map(|_| rng.random_range(0..2)).collect();
            Tensor::from_i64s(ty.dtype, &shape, &v)
        } else {
            let v: Vec<i64> = (0..n).map(|_| rng.random_range(0..4)).collect();
            Tensor::from_i64s(ty.dtype, &shape, &v)
        };
        out.push((val.name.clone(), t));
    }
    out
}

/// Runs a graph in the reference interpreter.
pub fn run(g: &Graph, inputs: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    kiln_ir::interp::run(g, inputs).unwrap_or_else(|e| panic!("interpreter failed on `{}`: {e}", g.name))
}

/// Largest relative error between two tensors: max |a - b| over
/// max(max |a|, 1e-30). Shapes and dtypes must match.
pub fn rel_error(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dtype(), b.dtype(), "dtypes differ");
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    let (x, y) = (a.to_f64s(), b.to_f64s());
    let scale = x.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    let diff = x.iter().zip(&y).fold(0.0f64, |m, (p, q)| {
        if p.is_nan() && q.is_nan() {
            m
        } else {
            m.max((p - q).abs())
        }
    });
    diff / scale
}

/// Runs both graphs on the same random inputs (three seeds) and asserts
/// every output agrees to `1e-5` relative error; returns the largest error.
pub fn assert_same_outputs(before: &Graph, after: &Graph) -> f64 {
    let mut worst = 0.0f64;
    for seed in 0..3 {
        let inputs = random_inputs(before, seed, &BTreeMap::new());
        let a = run(before, &inputs);
        let b = run(after, &inputs);
        assert_eq!(a.len(), b.len(), "output counts differ");
        for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
            assert_eq!(na, nb, "output names differ");
            let e = rel_error(ta, tb);
            assert!(e <= 1e-5, "output `{na}` differs: relative error {e}");
            worst = worst.max(e);
        }
    }
    worst
}

/// Optimizes `text` with `rule` alone and checks it fired without errors;
/// returns the input, the output and the output printed for a snapshot.
pub fn fires(rule: &str, text: &str) -> (Graph, Graph, String) {
    let g = parse(text);
    let (out, report) = optimize_with(&g, &[rule]);
    assert!(report.fired(rule) > 0, "{rule} did not fire:\n{report}");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let printed = print(&out);
    (g, out, printed)
}

/// Optimizes `text` with `rule` alone and checks it did not fire and the
/// graph came back as it went in.
pub fn does_not_fire(rule: &str, text: &str) {
    let g = parse(text);
    let (out, report) = optimize_with(&g, &[rule]);
    assert_eq!(report.fired(rule), 0, "{rule} fired:\n{report}");
    assert_eq!(print(&out), print(&g), "graph changed although {rule} did not fire");
}

/// How many nodes of `g` have op type `op`.
pub fn count(g: &Graph, op: &str) -> usize {
    g.node_ids().into_iter().filter(|&n| g.node(n).op.name() == op).count()
}
