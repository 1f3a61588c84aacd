//! The graph runner (`interp::run`): input validation, error wrapping,
//! outputs that are inputs or initializers, progress, type checks, and a
//! GPT-2-small-sized block (checked against naive arithmetic, not timed).

use kiln_ir::dim::Dim;
use kiln_ir::interp::{self, RunOptions};
use kiln_ir::op::{AttentionAttrs, BinaryOp, GeluApproximation, UnaryOp};
use kiln_ir::{DType, Graph, IrError, Op, Tensor, TensorType};
use std::cell::Cell;

fn f32s(shape: &[usize], v: &[f64]) -> Tensor {
    Tensor::from_f64s(DType::F32, shape, v)
}

/// Deterministic pseudo-random values in [-1, 1).
fn noise(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let values: Vec<f64> = (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect();
    f32s(shape, &values)
}

fn sym_ty(dtype: DType, dims: &[&str]) -> TensorType {
    TensorType::new(dtype, dims.iter().map(|d| Dim::parse(d).expect("dim")).collect())
}

/// `y = exp(x) + x`, `z = -y`, outputs y and z; x is `f32[batch, 3]`.
fn small_graph() -> Graph {
    let mut g = Graph::new("small");
    let x = g.add_input("x", sym_ty(DType::F32, &["batch", "3"])).unwrap();
    let e = g.add_node("exp", Op::Unary(UnaryOp::Exp), vec![Some(x)], &["e"]).unwrap();
    let e = g.node(e).output(0).unwrap();
    let add = g.add_node("add", Op::Binary(BinaryOp::Add), vec![Some(e), Some(x)], &["y"]).unwrap();
    let y = g.node(add).output(0).unwrap();
    let neg = g.add_node("neg", Op::Unary(UnaryOp::Neg), vec![Some(y)], &["z"]).unwrap();
    let z = g.node(neg).output(0).unwrap();
    g.add_output(y);
    g.add_output(z);
    g
}

fn value_error_names(err: IrError, value: &str, needle: &str) {
    match &err {
        IrError::Value { value: v, message } => {
            assert_eq!(v, value, "{err}");
            assert!(message.contains(needle), "`{needle}` not in: {err}");
        }
        other => panic!("expected a value error about `{value}`, got {other}"),
    }
}

#[test]
fn runs_in_order_and_returns_named_outputs() {
    let g = small_graph();
    let out = interp::run(&g, &[("x".into(), f32s(&[1, 3], &[0.0, 1.0, -1.0]))]).unwrap();
    assert_eq!(out.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["y", "z"]);
    let y = out[0].1.to_f64s();
    let z = out[1].1.to_f64s();
    for (i, x) in [0.0f64, 1.0, -1.0].into_iter().enumerate() {
        let want = (x.exp() + x) as f32 as f64;
        assert!((y[i] - want).abs() < 1e-6, "{} vs {want}", y[i]);
        assert_eq!(z[i], -y[i]);
    }
}

#[test]
fn bad_inputs_are_value_errors_naming_the_input() {
    let g = small_graph();
    let ok = || f32s(&[2, 3], &[0.0; 6]);
    value_error_names(interp::run(&g, &[]).unwrap_err(), "x", "missing");
    value_error_names(interp::run(&g, &[("x".into(), ok()), ("w".into(), ok())]).unwrap_err(), "w", "not an input");
    value_error_names(interp::run(&g, &[("e".into(), ok())]).unwrap_err(), "e", "not an input");
    value_error_names(interp::run(&g, &[("x".into(), ok()), ("x".into(), ok())]).unwrap_err(), "x", "more than once");
    let wrong_dtype = Tensor::from_f64s(DType::F64, &[2, 3], &[0.0; 6]);
    value_error_names(interp::run(&g, &[("x".into(), wrong_dtype)]).unwrap_err(), "x", "dtype");
    value_error_names(interp::run(&g, &[("x".into(), f32s(&[6], &[0.0; 6]))]).unwrap_err(), "x", "rank");
    value_error_names(interp::run(&g, &[("x".into(), f32s(&[3, 2], &[0.0; 6]))]).unwrap_err(), "x", "dim 1");
}

#[test]
fn a_symbol_takes_one_size_across_inputs() {
    let mut g = Graph::new("two");
    let a = g.add_input("a", sym_ty(DType::F32, &["n"])).unwrap();
    let b = g.add_input("b", sym_ty(DType::F32, &["n+1"])).unwrap();
    let c = g.add_input("c", sym_ty(DType::F32, &["n"])).unwrap();
    let s = g.add_node("sum", Op::Binary(BinaryOp::Add), vec![Some(a), Some(c)], &["s"]).unwrap();
    g.add_output(g.node(s).output(0).unwrap());
    g.add_output(b);
    let t = |n: usize| f32s(&[n], &vec![1.0; n]);
    let run = |a, b, c| interp::run(&g, &[("a".into(), t(a)), ("b".into(), t(b)), ("c".into(), t(c))]);
    assert!(run(2, 3, 2).is_ok());
    value_error_names(run(2, 3, 4).unwrap_err(), "c", "`n` is 2");
    value_error_names(run(2, 2, 2).unwrap_err(), "b", "dim 0");
}

#[test]
fn kernel_failures_name_the_node_and_op() {
    let mut g = Graph::new("bad");
    let a = g.add_input("a", sym_ty(DType::F32, &["m", "k"])).unwrap();
    let b = g.add_input("b", sym_ty(DType::F32, &["k2", "n"])).unwrap();
    let mm = g.add_node("proj", Op::MatMul, vec![Some(a), Some(b)], &["y"]).unwrap();
    g.add_output(g.node(mm).output(0).unwrap());
    let err =
        interp::run(&g, &[("a".into(), f32s(&[2, 3], &[0.0; 6])), ("b".into(), f32s(&[2, 3], &[0.0; 6]))]).unwrap_err();
    match &err {
        IrError::Node { node, op, message } => {
            assert_eq!((node.as_str(), op.as_str()), ("proj", "MatMul"));
            assert!(message.contains("inner dimensions"), "{err}");
        }
        other => panic!("expected a node error, got {other}"),
    }
}

#[test]
fn outputs_may_be_inputs_or_initializers_and_initializers_feed_nodes() {
    let mut g = Graph::new("passthrough");
    let x = g.add_input("x", TensorType::fixed(DType::I64, &[2])).unwrap();
    let w = g.add_initializer("w", Tensor::vec_i64(&[10, 20])).unwrap();
    let add = g.add_node("add", Op::Binary(BinaryOp::Add), vec![Some(x), Some(w)], &["y"]).unwrap();
    g.add_output(x);
    g.add_output(w);
    g.add_output(g.node(add).output(0).unwrap());
    g.add_output(x);
    let out = interp::run(&g, &[("x".into(), Tensor::vec_i64(&[1, 2]))]).unwrap();
    let got: Vec<(&str, Vec<i64>)> = out.iter().map(|(n, t)| (n.as_str(), t.to_i64s())).collect();
    assert_eq!(got, [("x", vec![1, 2]), ("w", vec![10, 20]), ("y", vec![11, 22]), ("x", vec![1, 2])]);
}

#[test]
fn an_initializer_that_is_a_graph_input_is_a_default() {
    let mut g = Graph::new("default");
    let x = g.add_initializer("x", Tensor::vec_i64(&[1])).unwrap();
    g.set_inputs(vec![x]);
    let neg = g.add_node("neg", Op::Unary(UnaryOp::Neg), vec![Some(x)], &["y"]).unwrap();
    g.add_output(g.node(neg).output(0).unwrap());
    assert_eq!(interp::run(&g, &[]).unwrap()[0].1.to_i64s(), vec![-1]);
    assert_eq!(interp::run(&g, &[("x".into(), Tensor::vec_i64(&[5]))]).unwrap()[0].1.to_i64s(), vec![-5]);
}

#[test]
fn progress_reports_every_node() {
    let g = small_graph();
    let calls = Cell::new(Vec::new());
    let progress = |done: usize, total: usize| {
        let mut v = calls.take();
        v.push((done, total));
        calls.set(v);
    };
    let opts = RunOptions { progress: Some(&progress), ..RunOptions::default() };
    interp::run_with(&g, &[("x".into(), f32s(&[1, 3], &[0.0; 3]))], &opts).unwrap();
    assert_eq!(calls.take(), vec![(1, 3), (2, 3), (3, 3)]);
}

#[test]
fn results_are_checked_against_declared_types() {
    let mut g = small_graph();
    let y = g.value_by_name("y").unwrap();
    g.value_mut(y).ty = Some(TensorType::fixed(DType::F32, &[1, 4]));
    let x = || vec![("x".to_string(), f32s(&[1, 3], &[0.0; 3]))];
    let err = interp::run(&g, &x()).unwrap_err().to_string();
    assert!(err.contains("add") && err.contains("`y`") && err.contains("dim 1"), "{err}");
    let unchecked = RunOptions { check_types: false, ..RunOptions::default() };
    assert!(interp::run_with(&g, &x(), &unchecked).is_ok());
}

#[test]
fn omitted_optional_outputs_are_not_computed_for_readers() {
    let mut g = Graph::new("ln");
    let x = g.add_input("x", TensorType::fixed(DType::F32, &[2, 4])).unwrap();
    let s = g.add_initializer("scale", f32s(&[4], &[1.0; 4])).unwrap();
    let ln = g
        .add_node(
            "ln",
            Op::LayerNormalization { axis: -1, epsilon: 1e-5, stash_type: DType::F32 },
            vec![Some(x), Some(s)],
            &["y", "", "inv"],
        )
        .unwrap();
    g.add_output(g.node(ln).output(0).unwrap());
    g.add_output(g.node(ln).output(2).unwrap());
    let out = interp::run(&g, &[("x".into(), noise(&[2, 4], 1))]).unwrap();
    assert_eq!(out[1].1.shape(), &[2, 1]);
}

/// A GPT-2-small MLP block and causal attention at sequence length 128,
/// checked at sampled positions against direct f64 arithmetic.
#[test]
fn gpt2_small_sized_block_runs() {
    let (seq, d, ff, heads) = (128usize, 768usize, 3072usize, 12usize);
    let mut g = Graph::new("gpt2_block");
    let x = g.add_input("x", TensorType::fixed(DType::F32, &[1, seq, d])).unwrap();
    let w1 = g.add_initializer("w1", noise(&[d, ff], 2)).unwrap();
    let w2 = g.add_initializer("w2", noise(&[ff, d], 3)).unwrap();
    let h = g.add_node("fc", Op::MatMul, vec![Some(x), Some(w1)], &["h"]).unwrap();
    let h = g.node(h).output(0).unwrap();
    let a = g.add_node("gelu", Op::Gelu { approximate: GeluApproximation::Tanh }, vec![Some(h)], &["a"]).unwrap();
    let a = g.node(a).output(0).unwrap();
    let p = g.add_node("proj", Op::MatMul, vec![Some(a), Some(w2)], &["p"]).unwrap();
    let p = g.node(p).output(0).unwrap();
    let attn = Op::Attention(AttentionAttrs {
        is_causal: true,
        q_num_heads: Some(heads as i64),
        kv_num_heads: Some(heads as i64),
        qk_matmul_output_mode: 0,
        scale: None,
        softcap: 0.0,
        softmax_precision: None,
    });
    let at = g.add_node("attn", attn, vec![Some(x), Some(x), Some(x)], &["att"]).unwrap();
    g.add_output(h);
    g.add_output(p);
    g.add_output(g.node(at).output(0).unwrap());

    let xv = noise(&[1, seq, d], 4);
    let out = interp::run(&g, &[("x".into(), xv.clone())]).unwrap();
    let (xs, w1s) = (xv.to_f64s(), g.value(w1).initializer.as_ref().unwrap().to_f64s());
    let hs = out[0].1.to_f64s();
    assert_eq!(out[1].1.shape(), &[1, seq, d]);
    for &(i, j) in &[(0usize, 0usize), (5, 1000), (127, 3071), (64, 2048)] {
        let want: f64 = (0..d).map(|k| xs[i * d + k] * w1s[k * ff + j]).sum();
        assert!((hs[i * ff + j] - want).abs() < 1e-3 * (1.0 + want.abs()), "h[{i},{j}] = {} vs {want}", hs[i * ff + j]);
    }
    // Causal attention: the first query attends only to itself, so its
    // output is its own value vector.
    let att = out[2].1.to_f64s();
    assert_eq!(out[2].1.shape(), &[1, seq, d]);
    for k in 0..d {
        assert!((att[k] - xs[k]).abs() < 1e-5, "att[0, {k}]");
    }
}
