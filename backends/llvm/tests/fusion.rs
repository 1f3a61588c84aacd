//! Norm prologues: a LayerNormalization or RMSNormalization whose input is
//! computed by a fused elementwise chain (the residual sum, `MatMul + bias +
//! residual`) runs that chain inside its own kernel, writing the sum only
//! when something else reads it. Each block is checked against the
//! interpreter on 1 and 2 threads, and its kernels are counted through the
//! profile labels; the negative cases keep the chain as its own kernel.

use kiln_backend_llvm::{compile, CompileOptions};
use kiln_ir::dtype::DType;
use kiln_ir::graph::{Graph, ValueId};
use kiln_ir::op::{BinaryOp, GeluApproximation, Op};
use kiln_ir::tensor::Tensor;
use kiln_ir::types::TensorType;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ROWS: usize = 64;
const COLS: usize = 256;

fn random(rng: &mut StdRng, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
    Tensor::from_f64s(DType::F32, shape, &v)
}

fn input(g: &mut Graph, name: &str, shape: &[usize]) -> ValueId {
    g.add_input(name, TensorType::fixed(DType::F32, shape)).unwrap()
}

fn constant(g: &mut Graph, rng: &mut StdRng, name: &str, shape: &[usize]) -> ValueId {
    let t = random(rng, shape);
    g.add_initializer(name, t).unwrap()
}

fn node(g: &mut Graph, name: &str, op: Op, inputs: &[ValueId]) -> ValueId {
    let id = g.add_node(name, op, inputs.iter().map(|&v| Some(v)).collect(), &[&format!("{name}.out")]).unwrap();
    g.node(id).output(0).unwrap()
}

fn add(g: &mut Graph, name: &str, a: ValueId, b: ValueId) -> ValueId {
    node(g, name, Op::Binary(BinaryOp::Add), &[a, b])
}

fn layer_norm(g: &mut Graph, rng: &mut StdRng, name: &str, x: ValueId, axis: i64, cols: &[usize]) -> ValueId {
    let scale = constant(g, rng, &format!("{name}.scale"), cols);
    let bias = constant(g, rng, &format!("{name}.bias"), cols);
    node(g, name, Op::LayerNormalization { axis, epsilon: 1e-5, stash_type: DType::F32 }, &[x, scale, bias])
}

fn assert_close(got: &Tensor, want: &Tensor, what: &str) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    for (i, (a, b)) in got.to_f64s().iter().zip(want.to_f64s()).enumerate() {
        let ok = a == &b || (a - b).abs() <= 1e-5 * b.abs().max(1.0);
        assert!(ok, "{what}: element {i} is {a}, interpreter says {b}");
    }
}

/// Compiles `g` with profiling, checks it against the interpreter on 1 and
/// 2 threads (and that both thread counts agree bitwise), and returns the
/// kernels' op labels in step order.
fn check(mut g: Graph, inputs: &[(String, Tensor)], what: &str) -> Vec<String> {
    kiln_ir::infer_types(&mut g).unwrap_or_else(|e| panic!("{what}: inference: {e}"));
    let compiled = compile(&g, &CompileOptions { profile: true, ..CompileOptions::default() })
        .unwrap_or_else(|e| panic!("{what}: compile: {e}"));
    let want = kiln_ir::interp::run(&g, inputs).unwrap_or_else(|e| panic!("{what}: interpreter: {e}"));
    let mut first: Option<Vec<(String, Tensor)>> = None;
    for threads in [1, 2] {
        compiled.set_threads(Some(threads));
        let got = compiled.run(inputs).unwrap_or_else(|e| panic!("{what}: run on {threads} threads: {e}"));
        assert_eq!(got.len(), want.len(), "{what}: outputs");
        for ((name, a), (_, b)) in got.iter().zip(&want) {
            assert_close(a, b, &format!("{what} / {name} on {threads} threads"));
        }
        if let Some(first) = &first {
            for ((name, a), (_, b)) in got.iter().zip(first) {
                assert_eq!(a.to_raw_le(), b.to_raw_le(), "{what} / {name}: 2 threads differ from 1");
            }
        }
        first = Some(got);
    }
    let mut times = compiled.profile();
    times.sort_by_key(|t| t.step);
    times.into_iter().map(|t| t.ops).collect()
}

/// A BERT (post-LN) block tail: `LayerNorm(x·W + b + x)`. The bias and
/// residual adds run inside the norm; the sum is never written.
#[test]
fn post_ln_residual_runs_inside_layer_norm() {
    let mut rng = StdRng::seed_from_u64(1);
    let mut g = Graph::new("bert_tail");
    let x = input(&mut g, "x", &[ROWS, COLS]);
    let w = constant(&mut g, &mut rng, "w", &[COLS, COLS]);
    let b = constant(&mut g, &mut rng, "b", &[COLS]);
    let mm = node(&mut g, "dense", Op::MatMul, &[x, w]);
    let biased = add(&mut g, "bias", mm, b);
    let residual = add(&mut g, "residual", biased, x);
    let y = layer_norm(&mut g, &mut rng, "ln", residual, -1, &[COLS]);
    g.set_outputs(vec![y]);
    let inputs = vec![("x".to_string(), random(&mut rng, &[ROWS, COLS]))];
    let labels = check(g.clone(), &inputs, "bert tail");
    assert_eq!(labels, ["MatMul", "Add+Add+LayerNormalization"]);

    // The sum has no storage: the arena holds the MatMul result only.
    kiln_ir::infer_types(&mut g).unwrap();
    let compiled = compile(&g, &CompileOptions::default()).unwrap();
    let spec = compiled.specialization_for(&inputs).unwrap();
    // Step kernels are named `k<step>_<what>` (shared helpers are not).
    let steps: Vec<&String> = spec
        .kernels
        .iter()
        .filter(|k| k.strip_prefix('k').is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit())))
        .collect();
    assert_eq!(steps, ["k0_matmul", "k1_fused_layernorm"]);
    assert_eq!(spec.intermediate_bytes, ROWS * COLS * 4, "only the MatMul result is an intermediate");
}

/// A GPT-2 (pre-LN) block: the residual sum feeds the norm and the next
/// residual add, so the norm kernel writes it as a second output.
#[test]
fn pre_ln_residual_sum_is_written_once_for_the_next_add() {
    let mut rng = StdRng::seed_from_u64(2);
    let mut g = Graph::new("gpt2_block");
    let x = input(&mut g, "x", &[2, ROWS / 2, COLS]);
    let attn = input(&mut g, "attn", &[2, ROWS / 2, COLS]);
    let h = add(&mut g, "residual1", x, attn);
    let ln = layer_norm(&mut g, &mut rng, "ln2", h, -1, &[COLS]);
    let w = constant(&mut g, &mut rng, "w", &[COLS, COLS]);
    let b = constant(&mut g, &mut rng, "b", &[COLS]);
    let mm = node(&mut g, "fc", Op::MatMul, &[ln, w]);
    let biased = add(&mut g, "fc.bias", mm, b);
    let act = node(&mut g, "gelu", Op::Gelu { approximate: GeluApproximation::Tanh }, &[biased]);
    let out = add(&mut g, "residual2", h, act);
    g.set_outputs(vec![out]);
    let inputs = vec![
        ("x".to_string(), random(&mut rng, &[2, ROWS / 2, COLS])),
        ("attn".to_string(), random(&mut rng, &[2, ROWS / 2, COLS])),
    ];
    let labels = check(g, &inputs, "gpt2 block");
    assert_eq!(labels, ["Add+LayerNormalization", "MatMul", "Add+Gelu+Add"]);
}

/// A LLaMA block head: `RMSNorm(x + attn · 0.5)`, a scalar constant
/// inlined, and the sum also a graph output (which must still be written).
#[test]
fn rms_norm_prologue_with_the_sum_as_a_graph_output() {
    let mut rng = StdRng::seed_from_u64(3);
    let mut g = Graph::new("llama_block");
    let x = input(&mut g, "x", &[ROWS, COLS]);
    let attn = input(&mut g, "attn", &[ROWS, COLS]);
    let half = g.add_initializer("half", Tensor::from_f64s(DType::F32, &[], &[0.5])).unwrap();
    let scaled = node(&mut g, "scale", Op::Binary(BinaryOp::Mul), &[attn, half]);
    let h = add(&mut g, "residual", x, scaled);
    let weight = constant(&mut g, &mut rng, "rms.weight", &[COLS]);
    let y = node(&mut g, "rms", Op::RMSNormalization { axis: -1, epsilon: 1e-6, stash_type: DType::F32 }, &[h, weight]);
    g.set_outputs(vec![y, h]);
    let inputs =
        vec![("x".to_string(), random(&mut rng, &[ROWS, COLS])), ("attn".to_string(), random(&mut rng, &[ROWS, COLS]))];
    let labels = check(g, &inputs, "llama block");
    assert_eq!(labels, ["Mul+Add+RMSNormalization"]);
}

/// An operand broadcast within each row (`[rows, 1]`) does not cover whole
/// rows: the chain keeps its own kernel.
#[test]
fn operand_broadcast_within_rows_is_not_fused() {
    let mut rng = StdRng::seed_from_u64(4);
    let mut g = Graph::new("row_broadcast");
    let x = input(&mut g, "x", &[ROWS, COLS]);
    let per_row = input(&mut g, "per_row", &[ROWS, 1]);
    let h = add(&mut g, "shift", x, per_row);
    let y = layer_norm(&mut g, &mut rng, "ln", h, -1, &[COLS]);
    g.set_outputs(vec![y]);
    let inputs =
        vec![("x".to_string(), random(&mut rng, &[ROWS, COLS])), ("per_row".to_string(), random(&mut rng, &[ROWS, 1]))];
    let labels = check(g, &inputs, "row broadcast");
    assert_eq!(labels, ["Add", "LayerNormalization"]);
}

/// A norm over more than the last axis is left alone.
#[test]
fn norm_over_more_than_the_last_axis_is_not_fused() {
    let mut rng = StdRng::seed_from_u64(5);
    let mut g = Graph::new("two_axes");
    let x = input(&mut g, "x", &[4, 16, 32]);
    let r = input(&mut g, "r", &[4, 16, 32]);
    let h = add(&mut g, "residual", x, r);
    let y = layer_norm(&mut g, &mut rng, "ln", h, -2, &[16, 32]);
    g.set_outputs(vec![y]);
    let inputs =
        vec![("x".to_string(), random(&mut rng, &[4, 16, 32])), ("r".to_string(), random(&mut rng, &[4, 16, 32]))];
    let labels = check(g, &inputs, "two axes");
    assert_eq!(labels, ["Add", "LayerNormalization"]);
}

/// When a step between the chain and the norm reads the chain's result, the
/// chain cannot move to the norm's position, so it stays a kernel.
#[test]
fn a_reader_between_chain_and_norm_blocks_the_fusion() {
    let mut rng = StdRng::seed_from_u64(6);
    let mut g = Graph::new("reader_between");
    let x = input(&mut g, "x", &[ROWS, COLS]);
    let r = input(&mut g, "r", &[ROWS, COLS]);
    let h = add(&mut g, "residual", x, r);
    let w = constant(&mut g, &mut rng, "w", &[COLS, COLS]);
    // The MatMul reads `h` and comes first in topological order (it is
    // added first), and the norm reads its result, so it runs in between.
    let mm = node(&mut g, "proj", Op::MatMul, &[h, w]);
    let scale = constant(&mut g, &mut rng, "ln.scale", &[COLS]);
    let mixed = add(&mut g, "mix", h, mm);
    let y = node(&mut g, "ln", Op::LayerNormalization { axis: -1, epsilon: 1e-5, stash_type: DType::F32 }, &[h, scale]);
    let out = add(&mut g, "out", y, mixed);
    g.set_outputs(vec![out]);
    let inputs =
        vec![("x".to_string(), random(&mut rng, &[ROWS, COLS])), ("r".to_string(), random(&mut rng, &[ROWS, COLS]))];
    let labels = check(g, &inputs, "reader between");
    assert!(labels.iter().any(|l| l == "Add"), "the residual add keeps its kernel: {labels:?}");
}

/// A LayerNormalization that also returns its mean and inverse standard
/// deviation (as training graphs keep them) computes its input's chain all
/// the same, over a 3-D input with a bias broadcast from `[1, 1, cols]`.
#[test]
fn layer_norm_statistics_with_a_prologue() {
    let mut rng = StdRng::seed_from_u64(7);
    let mut g = Graph::new("ln_stats");
    let x = input(&mut g, "x", &[2, ROWS / 2, COLS]);
    let r = input(&mut g, "r", &[2, ROWS / 2, COLS]);
    let b = constant(&mut g, &mut rng, "b", &[1, 1, COLS]);
    let biased = add(&mut g, "bias", r, b);
    let h = add(&mut g, "residual", x, biased);
    let scale = constant(&mut g, &mut rng, "ln.scale", &[COLS]);
    let id = g
        .add_node(
            "ln",
            Op::LayerNormalization { axis: -1, epsilon: 1e-5, stash_type: DType::F32 },
            vec![Some(h), Some(scale)],
            &["ln.y", "ln.mean", "ln.inv_std"],
        )
        .unwrap();
    let outs: Vec<ValueId> = g.node(id).outputs.iter().flatten().copied().collect();
    g.set_outputs(outs);
    let inputs = vec![
        ("x".to_string(), random(&mut rng, &[2, ROWS / 2, COLS])),
        ("r".to_string(), random(&mut rng, &[2, ROWS / 2, COLS])),
    ];
    let labels = check(g, &inputs, "ln statistics");
    assert_eq!(labels, ["Add+Add+LayerNormalization"]);
}
