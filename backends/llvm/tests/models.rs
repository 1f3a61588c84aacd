//! The example models (GPT-2, BERT, LLaMA; fused and unfused export
//! styles) on the CPU backend, against their reference outputs in
//! `test_data_set_0` (rtol 1e-4, atol 1e-5). Every model must compile and
//! match: an op without a CPU lowering fails the test. Every model also runs after
//! `kiln_passes` `-O2` (which fuses each layer's attention into one ONNX
//! `Attention` node), and must match the same references.

use kiln_backend_llvm::{compile, CompileOptions};
use kiln_ir::onnx::read_tensor_pb;
use kiln_ir::tensor::Tensor;
use kiln_test_support::example_model_dirs;
use std::path::Path;

fn numbered(dir: &Path, prefix: &str) -> Vec<Tensor> {
    (0..)
        .map(|i| dir.join(format!("{prefix}_{i}.pb")))
        .take_while(|p| p.exists())
        .map(|p| read_tensor_pb(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).1)
        .collect()
}

/// Runs `graph` on the CPU backend with the inputs of `dir`'s
/// `test_data_set_0` and compares its outputs with the references there.
fn matches_reference(name: &str, dir: &Path, graph: &kiln_ir::graph::Graph) {
    let compiled = compile(graph, &CompileOptions::default()).unwrap_or_else(|e| panic!("{name}: compile: {e}"));
    let data = dir.join("test_data_set_0");
    let names: Vec<String> =
        kiln_ir::interp::required_inputs(graph).iter().map(|&v| graph.value(v).name.clone()).collect();
    let inputs: Vec<(String, Tensor)> = names.into_iter().zip(numbered(&data, "input")).collect();
    let outputs = compiled.run(&inputs).unwrap_or_else(|e| panic!("{name}: run: {e}"));
    let expected = numbered(&data, "output");
    assert_eq!(outputs.len(), expected.len(), "{name}: output count");
    for ((out, got), want) in outputs.iter().zip(&expected) {
        assert_eq!(got.shape(), want.shape(), "{name}/{out}: shape");
        for (i, (a, b)) in got.to_f64s().iter().zip(want.to_f64s()).enumerate() {
            assert!((a - b).abs() <= 1e-5 + 1e-4 * b.abs(), "{name}/{out}: element {i} is {a}, reference {b}");
        }
    }
}

#[test]
fn example_models_optimized_with_o2_match_their_references() {
    use kiln_passes::manager::{optimize, OptLevel, Pipeline};
    let Some(dirs) = example_model_dirs(Path::new(env!("CARGO_TARGET_TMPDIR"))) else {
        eprintln!("models: no example models and no Python to make them; skipping");
        return;
    };
    let mut fused_attention = 0;
    for dir in &dirs {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let graph = kiln_ir::load(dir.join("model.onnx")).unwrap_or_else(|e| panic!("{name}: load: {e}"));
        let (optimized, _) =
            optimize(&graph, &Pipeline::level(OptLevel::O2)).unwrap_or_else(|e| panic!("{name}: -O2: {e}"));
        let attention =
            optimized.node_ids().into_iter().filter(|&n| optimized.node(n).op.name() == "Attention").count();
        fused_attention += attention;
        matches_reference(&format!("{name} -O2"), dir, &optimized);
        println!("{name} -O2 ({attention} Attention nodes): ok");
    }
    assert!(fused_attention > 0, "-O2 fused no attention in any example model");
}

#[test]
fn example_models_match_their_references() {
    let Some(dirs) = example_model_dirs(Path::new(env!("CARGO_TARGET_TMPDIR"))) else {
        eprintln!("models: no example models and no Python to make them; skipping");
        return;
    };
    assert!(!dirs.is_empty(), "no example models");
    for dir in &dirs {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let graph = kiln_ir::load(dir.join("model.onnx")).unwrap_or_else(|e| panic!("{name}: load: {e}"));
        matches_reference(&name, dir, &graph);
        println!("{name}: ok");
    }
}
