//! Conversion to an e-graph and back with no rules: multi-output nodes,
//! omitted optional inputs and outputs, shared values, CSE and DCE.

mod common;

use common::{assert_same_outputs, parse, print};
use kiln_passes::convert::{to_egraph, to_graph};
use kiln_passes::cost::CostModel;
use kiln_passes::extract::extract_dag;
use kiln_passes::manager::{optimize, Pass, Pipeline};
use kiln_passes::TypeAnalysis;

fn round_trip(text: &str) -> (kiln_ir::Graph, kiln_ir::Graph) {
    let g = parse(text);
    let pipeline = Pipeline::new("none", vec![Pass { name: "none", description: "no rules", rules: vec![] }]);
    let (out, _) = optimize(&g, &pipeline).expect("round trip");
    kiln_ir::verify(&out).expect("verifies");
    (g, out)
}

#[test]
fn tuples_omitted_slots_and_shared_values_round_trip_exactly() {
    let text = r#"graph "g" {
  input %x: f32[6, 4]
  init %k: i64[1] = [2]
  init %hi: f32[] = 0.5
  %a, %b, %c = Split(%x) {num_outputs = 3} @split
  %v, %i = TopK(%a, %k) {axis = 0} @topk
  %e = Exp(%b) @exp
  %s = Add(%e, %e) @twice
  %clip = Clip(%s, _, %hi) @clip
  %n, _ = Dropout(%clip) @drop
  output %v, %i, %n, %c
}"#;
    let (g, out) = round_trip(text);
    assert_eq!(print(&out), print(&g), "nothing to share or drop: unchanged");
    assert_same_outputs(&g, &out);
}

#[test]
fn equal_nodes_are_merged_and_dead_ones_dropped() {
    let text = r#"graph "g" {
  input %x: f32[3]
  %a = Exp(%x) @exp1
  %b = Exp(%x) @exp2
  %dead = Neg(%x) @unused
  %y = Add(%a, %b) @add
  output %y
}"#;
    let (g, out) = round_trip(text);
    assert_eq!(out.node_count(), 2, "{}", print(&out));
    assert!(out.node_by_name("exp1").is_some() && out.node_by_name("exp2").is_none());
    assert!(out.node_by_name("unused").is_none());
    assert_same_outputs(&g, &out);
}

#[test]
fn an_output_listed_twice_and_an_input_output_keep_their_names() {
    let text = r#"graph "g" {
  input %x: f32[2]
  %y = Sigmoid(%x) @sig
  %z = Identity(%y) @copy
  output %y, %z, %x
}"#;
    let (g, out) = round_trip(text);
    assert_eq!(print(&out), print(&g));
}

#[test]
fn extraction_counts_a_shared_class_once() {
    let g = parse(
        r#"graph "g" {
  input %x: f32[64, 64]
  %h = MatMul(%x, %x) @big
  %a = Relu(%h) @left
  %b = Tanh(%h) @right
  %y = Add(%a, %b) @join
  output %y
}"#,
    );
    let conv = to_egraph(&g, TypeAnalysis::default(), false).unwrap();
    let model = CostModel::default();
    let roots = conv.source.roots();
    let ex = extract_dag(&conv.egraph, &roots, &|eg, c, n| model.enode_cost(eg, c, n)).unwrap();
    let out = to_graph(&conv.egraph, &conv.source, &ex).unwrap();
    assert_eq!(out.node_count(), 4, "the MatMul is emitted once");
    let per_node: f64 = out
        .node_ids()
        .into_iter()
        .map(|n| {
            let node = out.node(n);
            let ins: Vec<_> = node.inputs.iter().map(|v| v.and_then(|v| out.value(v).ty.as_ref())).collect();
            let outs: Vec<_> = node.outputs.iter().flatten().map(|&v| out.value(v).ty.as_ref().unwrap()).collect();
            model.weigh(&model.op_cost(&node.op, &ins, &outs))
        })
        .sum();
    assert!((ex.cost - per_node).abs() <= 1e-6 * per_node, "{} vs {per_node}", ex.cost);
    assert!((model.graph_cost(&out).time_ns - per_node).abs() <= 1e-6 * per_node);
}
