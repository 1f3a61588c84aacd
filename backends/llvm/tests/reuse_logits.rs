//! The backend's `LinearCrossEntropy` → `CrossEntropy` rewrite when the graph
//! also returns the logits: what it produces (snapshot of the backend's
//! graph), that the numbers equal the interpreter on the original graph,
//! and the graphs where it must not fire.

use kiln_backend_llvm::{compile, CompileOptions};
use kiln_ir::dtype::DType;
use kiln_ir::graph::Graph;
use kiln_ir::tensor::Tensor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// GPT-2's shape of the problem: logits = h·wteᵀ returned, and the loss
/// on the shifted rows `h[:, :-1]` flattened, with tied `[V, d]` weights.
const SHIFTED_TIED: &str = r#"graph "g" {
  input %h: f32[2, 5, 8]
  input %wte: f32[16, 8]
  input %labels: i64[8]
  init %s0: i64[1] = [0]
  init %s4: i64[1] = [4]
  init %s1: i64[1] = [1]
  init %shape: i64[2] = [-1, 8]
  %wte_t = Transpose(%wte) {perm = [1, 0]} @wte_t
  %logits = MatMul(%h, %wte_t) @lm_head
  %shifted = Slice(%h, %s0, %s4, %s1) @shift
  %rows = Reshape(%shifted, %shape) @flatten
  %loss = kiln::LinearCrossEntropy(%rows, %wte, %labels) {reduction = "mean", ignore_index = 3, label_smoothing = 0.1, z_loss = 0.01} @loss
  output %logits
  output %loss
}"#;

/// An untied `[d, V]` head on 2-D hidden states, per-sample losses.
const UNTIED: &str = r#"graph "g" {
  input %h: f32[6, 8]
  input %w: f32[8, 16]
  input %labels: i64[6]
  %logits = MatMul(%h, %w) @lm_head
  %loss = kiln::LinearCrossEntropy(%h, %w, %labels) {reduction = "none", transpose_weight = 0} @loss
  output %logits
  output %loss
}"#;

fn graph(text: &str) -> Graph {
    let mut g = kiln_ir::parse_graph(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    kiln_ir::infer_types(&mut g).unwrap();
    g
}

fn random_inputs(g: &Graph, seed: u64) -> Vec<(String, Tensor)> {
    let mut rng = StdRng::seed_from_u64(seed);
    g.inputs()
        .iter()
        .filter(|&&v| g.value(v).initializer.is_none())
        .map(|&v| {
            let val = g.value(v);
            let ty = val.ty.as_ref().unwrap();
            let shape = ty.fixed_shape().unwrap();
            let n: usize = shape.iter().product();
            let t = if ty.dtype == DType::I64 {
                Tensor::from_i64s(DType::I64, &shape, &(0..n).map(|_| rng.random_range(0..16)).collect::<Vec<_>>())
            } else {
                Tensor::from_f64s(ty.dtype, &shape, &(0..n).map(|_| rng.random_range(-1.0..1.0)).collect::<Vec<_>>())
            };
            (val.name.clone(), t)
        })
        .collect()
}

fn kernels(g: &Graph) -> Vec<String> {
    let compiled = compile(g, &CompileOptions::default()).unwrap();
    compiled.specialization_for(&random_inputs(g, 0)).unwrap().kernels.clone()
}

fn assert_matches_interpreter(g: &Graph) {
    let compiled = compile(g, &CompileOptions::default()).unwrap();
    for seed in 0..3 {
        let inputs = random_inputs(g, seed);
        let want = kiln_ir::interp::run(g, &inputs).unwrap();
        let got = compiled.run(&inputs).unwrap();
        for ((name, a), (_, b)) in got.iter().zip(&want) {
            for (x, y) in a.to_f64s().iter().zip(b.to_f64s()) {
                assert!((x - y).abs() <= 1e-5 + 1e-5 * y.abs(), "{name}: {x} vs interpreter {y}");
            }
        }
    }
}

#[test]
fn shifted_tied_head_reads_the_returned_logits() {
    let g = graph(SHIFTED_TIED);
    let compiled = compile(&g, &CompileOptions::default()).unwrap();
    insta::assert_snapshot!("reuse_logits_shifted_tied", kiln_ir::print_graph(compiled.graph()));
    let k = kernels(&g);
    assert!(k.iter().any(|n| n.ends_with("_CrossEntropy")), "{k:?}");
    assert!(!k.iter().any(|n| n.contains("LinearCrossEntropy")), "{k:?}");
    assert_matches_interpreter(&g);
}

#[test]
fn reshape_target_from_a_constant_node() {
    // Exporters write the flattening shape as a Constant node, not an
    // initializer.
    let text = SHIFTED_TIED
        .replace("  init %shape: i64[2] = [-1, 8]\n", "")
        .replace("  %wte_t =", "  %shape = Constant() {value = i64[2] [-1, 8]} @shape_node\n  %wte_t =");
    let g = graph(&text);
    let k = kernels(&g);
    assert!(k.iter().any(|n| n.ends_with("_CrossEntropy")), "{k:?}");
    assert!(!k.iter().any(|n| n.contains("LinearCrossEntropy")), "{k:?}");
    assert_matches_interpreter(&g);
}

#[test]
fn untied_head_reads_the_returned_logits() {
    let g = graph(UNTIED);
    let compiled = compile(&g, &CompileOptions::default()).unwrap();
    insta::assert_snapshot!("reuse_logits_untied", kiln_ir::print_graph(compiled.graph()));
    assert_matches_interpreter(&g);
}

#[test]
fn does_not_fire_without_the_same_logits() {
    // No logits computed at all.
    let only_loss = UNTIED.replace("  %logits = MatMul(%h, %w) @lm_head\n", "").replace("  output %logits\n", "");
    // The head reads another weight value than the loss.
    let other_weight = UNTIED
        .replace("input %w: f32[8, 16]", "input %w: f32[8, 16]\n  input %w2: f32[8, 16]")
        .replace("MatMul(%h, %w)", "MatMul(%h, %w2)");
    // A bias the returned logits do not include.
    let with_bias = UNTIED
        .replace("input %labels: i64[6]", "input %labels: i64[6]\n  input %bias: f32[16]")
        .replace("(%h, %w, %labels)", "(%h, %w, %labels, %bias)");
    // The loss's rows are not the head's rows (a different input).
    let other_rows = UNTIED
        .replace("input %h: f32[6, 8]", "input %h: f32[6, 8]\n  input %h2: f32[6, 8]")
        .replace("LinearCrossEntropy(%h,", "LinearCrossEntropy(%h2,");
    for (what, text) in
        [("only loss", only_loss), ("other weight", other_weight), ("bias", with_bias), ("other rows", other_rows)]
    {
        let g = graph(&text);
        let compiled = compile(&g, &CompileOptions::default()).unwrap();
        let kept =
            compiled.graph().node_ids().into_iter().any(|n| compiled.graph().node(n).op.name() == "LinearCrossEntropy");
        assert!(kept, "{what}: the fused loss must stay");
        assert_matches_interpreter(&g);
    }
}
