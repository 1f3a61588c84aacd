//! Per-kernel cycle counts (`CompileOptions::profile`): one entry per
//! kernel labelled with its op(s) and node, counted over every run, the
//! results unchanged by profiling, and nothing recorded when it is off.

use kiln_backend_llvm::{compile, CompileOptions};
use kiln_ir::dtype::DType;
use kiln_ir::graph::{Graph, ValueId};
use kiln_ir::op::{BinaryOp, Op, UnaryOp};
use kiln_ir::tensor::Tensor;
use kiln_ir::types::TensorType;

fn node(g: &mut Graph, name: &str, op: Op, inputs: &[ValueId]) -> ValueId {
    let id = g.add_node(name, op, inputs.iter().map(|&v| Some(v)).collect(), &[&format!("{name}.out")]).unwrap();
    g.node(id).output(0).unwrap()
}

/// MatMul, then a fused Add+Relu chain, then Softmax.
fn graph() -> (Graph, Vec<(String, Tensor)>) {
    let mut g = Graph::new("profiled");
    let a = g.add_input("a", TensorType::fixed(DType::F32, &[64, 96])).unwrap();
    let b = g.add_input("b", TensorType::fixed(DType::F32, &[96, 80])).unwrap();
    let c = g.add_input("c", TensorType::fixed(DType::F32, &[80])).unwrap();
    let mm = node(&mut g, "project", Op::MatMul, &[a, b]);
    let biased = node(&mut g, "bias", Op::Binary(BinaryOp::Add), &[mm, c]);
    let relu = node(&mut g, "relu", Op::Unary(UnaryOp::Relu), &[biased]);
    let y = node(&mut g, "probs", Op::Softmax { axis: -1 }, &[relu]);
    g.set_outputs(vec![y]);
    kiln_ir::infer_types(&mut g).unwrap();
    let fill = |shape: &[usize], k: f64| {
        let n: usize = shape.iter().product();
        Tensor::from_f64s(DType::F32, shape, &(0..n).map(|i| (i as f64 * k).sin()).collect::<Vec<_>>())
    };
    let inputs = vec![
        ("a".to_string(), fill(&[64, 96], 0.37)),
        ("b".to_string(), fill(&[96, 80], 0.11)),
        ("c".to_string(), fill(&[80], 0.7)),
    ];
    (g, inputs)
}

#[test]
fn profile_counts_each_kernel_over_every_run() {
    let (g, inputs) = graph();
    let plain = compile(&g, &CompileOptions::default()).unwrap();
    let profiled = compile(&g, &CompileOptions { profile: true, ..CompileOptions::default() }).unwrap();
    let want = plain.run(&inputs).unwrap();
    for _ in 0..3 {
        let got = profiled.run(&inputs).unwrap();
        assert_eq!(got[0].1.to_raw_le(), want[0].1.to_raw_le(), "profiling changed the result");
    }
    let times = profiled.profile();
    let mut labels: Vec<(String, String)> = times.iter().map(|t| (t.ops.clone(), t.node.clone())).collect();
    labels.sort();
    assert_eq!(
        labels,
        [
            ("Add+Relu".to_string(), "relu".to_string()),
            ("MatMul".to_string(), "project".to_string()),
            ("Softmax".to_string(), "probs".to_string()),
        ]
    );
    assert!(times.iter().all(|t| t.runs == 3), "{times:?}");
    assert!(times.iter().all(|t| t.cycles > 0), "{times:?}");
    // Most expensive first.
    assert!(times.windows(2).all(|w| w[0].cycles >= w[1].cycles), "{times:?}");
    assert!(plain.profile().is_empty(), "profile recorded without CompileOptions::profile");
}

#[test]
fn a_failed_run_still_leaves_a_consistent_profile() {
    // A label out of range fails in its kernel; the counters of the steps
    // before it are kept, and later runs keep counting.
    let mut g = Graph::new("loss");
    let x = g.add_input("x", TensorType::fixed(DType::F32, &[4, 5])).unwrap();
    let labels = g.add_input("labels", TensorType::fixed(DType::I64, &[4])).unwrap();
    let relu = node(&mut g, "relu", Op::Unary(UnaryOp::Relu), &[x]);
    let loss = node(
        &mut g,
        "loss",
        Op::SoftmaxCrossEntropyLoss { reduction: kiln_ir::op::LossReduction::Mean, ignore_index: None },
        &[relu, labels],
    );
    g.set_outputs(vec![loss]);
    kiln_ir::infer_types(&mut g).unwrap();
    let compiled = compile(&g, &CompileOptions { profile: true, ..CompileOptions::default() }).unwrap();
    let x_val = Tensor::from_f64s(DType::F32, &[4, 5], &[0.5; 20]);
    let good = Tensor::from_i64s(DType::I64, &[4], &[0, 1, 2, 3]);
    let bad = Tensor::from_i64s(DType::I64, &[4], &[0, 1, 9, 3]);
    compiled.run(&[("x".into(), x_val.clone()), ("labels".into(), good.clone())]).unwrap();
    let err = compiled.run(&[("x".into(), x_val.clone()), ("labels".into(), bad)]).unwrap_err();
    assert!(err.to_string().contains("loss"), "{err}");
    compiled.run(&[("x".into(), x_val), ("labels".into(), good)]).unwrap();
    let times = compiled.profile();
    assert_eq!(times.len(), 2, "{times:?}");
    assert!(times.iter().all(|t| t.runs == 2), "only completed runs count: {times:?}");
}
