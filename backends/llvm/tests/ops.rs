//! Each lowered op against kiln's interpreter on random inputs (rtol 1e-4,
//! atol 1e-5), elementwise fusion, the two softmax algorithms, the memory
//! planner, and the errors for unsupported ops and bad inputs.

use kiln_backend_llvm::{compile, BackendError, CompileOptions, SoftmaxAlgorithm, Specialization};
use kiln_ir::dtype::DType;
use kiln_ir::graph::{Graph, ValueId};
use kiln_ir::op::{BinaryOp, GemmAttrs, Op, ReduceKind, UnaryOp, VariadicOp};
use kiln_ir::tensor::Tensor;
use kiln_ir::types::TensorType;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const RTOL: f64 = 1e-4;
const ATOL: f64 = 1e-5;

fn random(rng: &mut StdRng, shape: &[usize], lo: f64, hi: f64) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
    Tensor::from_f64s(DType::F32, shape, &v)
}

fn assert_close(got: &Tensor, want: &Tensor, what: &str) {
    assert_eq!(got.dtype(), want.dtype(), "{what}: dtype");
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    for (i, (a, b)) in got.to_f64s().iter().zip(want.to_f64s()).enumerate() {
        let ok = (a.is_nan() && b.is_nan()) || a == &b || (a - b).abs() <= ATOL + RTOL * b.abs();
        assert!(ok, "{what}: element {i} is {a}, interpreter says {b}");
    }
}

/// Types the graph, runs it on the CPU backend and the interpreter, and
/// compares every output. Returns what it compiled to.
fn check_with(
    mut g: Graph,
    inputs: &[(String, Tensor)],
    opts: &CompileOptions,
    what: &str,
) -> std::rc::Rc<Specialization> {
    kiln_ir::infer_types(&mut g).unwrap_or_else(|e| panic!("{what}: inference: {e}"));
    let compiled = compile(&g, opts).unwrap_or_else(|e| panic!("{what}: compile: {e}"));
    let got = compiled.run(inputs).unwrap_or_else(|e| panic!("{what}: run: {e}"));
    let want = kiln_ir::interp::run(&g, inputs).unwrap_or_else(|e| panic!("{what}: interpreter: {e}"));
    assert_eq!(got.len(), want.len());
    for ((name, a), (_, b)) in got.iter().zip(&want) {
        assert_close(a, b, &format!("{what} / {name}"));
    }
    compiled.specialization_for(inputs).expect("compiled above")
}

fn check(g: Graph, inputs: &[(String, Tensor)], what: &str) -> std::rc::Rc<Specialization> {
    check_with(g, inputs, &CompileOptions::default(), what)
}

fn input(g: &mut Graph, name: &str, shape: &[usize]) -> ValueId {
    g.add_input(name, TensorType::fixed(DType::F32, shape)).unwrap()
}

fn node(g: &mut Graph, name: &str, op: Op, inputs: &[ValueId]) -> ValueId {
    let id = g.add_node(name, op, inputs.iter().map(|&v| Some(v)).collect(), &[&format!("{name}.out")]).unwrap();
    g.node(id).output(0).unwrap()
}

#[test]
fn unary_ops_match_the_interpreter() {
    let mut rng = StdRng::seed_from_u64(1);
    for u in UnaryOp::ALL {
        if u == UnaryOp::Not {
            continue;
        }
        let positive = matches!(u, UnaryOp::Sqrt | UnaryOp::Log);
        let x = if positive { random(&mut rng, &[3, 37], 0.05, 5.0) } else { random(&mut rng, &[3, 37], -4.0, 4.0) };
        let mut g = Graph::new("unary");
        let xv = input(&mut g, "x", &[3, 37]);
        let y = node(&mut g, "op", Op::Unary(u), &[xv]);
        g.add_output(y);
        check(g, &[("x".into(), x)], u.name());
    }
}

#[test]
fn exp_is_accurate_over_the_whole_f32_range() {
    let v: Vec<f64> =
        (-1000..=1000).map(|i| i as f64 * 0.09).chain([-200.0, 200.0, f64::INFINITY, f64::NEG_INFINITY]).collect();
    let x = Tensor::from_f64s(DType::F32, &[v.len()], &v);
    let mut g = Graph::new("exp");
    let xv = input(&mut g, "x", &[v.len()]);
    let y = node(&mut g, "exp", Op::Unary(UnaryOp::Exp), &[xv]);
    g.add_output(y);
    check(g, &[("x".into(), x)], "exp range");
}

#[test]
fn binary_ops_broadcast_like_numpy() {
    let mut rng = StdRng::seed_from_u64(2);
    let cases: [(&[usize], &[usize]); 4] =
        [(&[4, 5], &[4, 5]), (&[2, 3, 5], &[5]), (&[4, 1, 5], &[3, 1]), (&[1], &[6, 2])];
    for op in BinaryOp::ALL {
        if op.is_logical() {
            continue;
        }
        for (sa, sb) in cases {
            let (lo, hi) = if op == BinaryOp::Pow { (0.1, 3.0) } else { (-3.0, 3.0) };
            let a = random(&mut rng, sa, lo, hi);
            let b = if op == BinaryOp::Div { random(&mut rng, sb, 0.5, 3.0) } else { random(&mut rng, sb, -2.0, 2.0) };
            let mut g = Graph::new("binary");
            let av = input(&mut g, "a", sa);
            let bv = input(&mut g, "b", sb);
            let y = node(&mut g, "op", Op::Binary(op), &[av, bv]);
            g.add_output(y);
            check(g, &[("a".into(), a), ("b".into(), b)], &format!("{} {sa:?} {sb:?}", op.name()));
        }
    }
}

#[test]
fn variadic_where_clip_cast_and_activations() {
    let mut rng = StdRng::seed_from_u64(3);
    let x = random(&mut rng, &[5, 8], -3.0, 3.0);
    let y = random(&mut rng, &[8], -3.0, 3.0);
    let ops = [
        Op::Variadic(VariadicOp::Max),
        Op::Variadic(VariadicOp::Min),
        Op::Variadic(VariadicOp::Sum),
        Op::Variadic(VariadicOp::Mean),
    ];
    for op in ops {
        let mut g = Graph::new("variadic");
        let (xv, yv) = (input(&mut g, "x", &[5, 8]), input(&mut g, "y", &[8]));
        let out = node(&mut g, "op", op.clone(), &[xv, yv]);
        g.add_output(out);
        check(g, &[("x".into(), x.clone()), ("y".into(), y.clone())], op.name());
    }
    let unary_like = [
        Op::Gelu { approximate: kiln_ir::op::GeluApproximation::None },
        Op::Gelu { approximate: kiln_ir::op::GeluApproximation::Tanh },
        Op::LeakyRelu { alpha: 0.1 },
        Op::Elu { alpha: 0.7 },
        Op::HardSigmoid { alpha: 0.3, beta: 0.4 },
        Op::Cast { to: DType::I32, saturate: true },
        Op::Cast { to: DType::F64, saturate: true },
        Op::Cast { to: DType::F16, saturate: true },
        Op::Cast { to: DType::Bool, saturate: true },
    ];
    for op in unary_like {
        let mut g = Graph::new("act");
        let xv = input(&mut g, "x", &[5, 8]);
        let out = node(&mut g, "op", op.clone(), &[xv]);
        g.add_output(out);
        check(g, &[("x".into(), x.clone())], &format!("{op:?}"));
    }
    // Where(x > y, x, y) and Clip(x, -1, 0.5) with constant bounds.
    let mut g = Graph::new("where_clip");
    let (xv, yv) = (input(&mut g, "x", &[5, 8]), input(&mut g, "y", &[8]));
    let gt = node(&mut g, "gt", Op::Binary(BinaryOp::Greater), &[xv, yv]);
    let w = node(&mut g, "where", Op::Where, &[gt, xv, yv]);
    let lo = g.add_initializer("lo", Tensor::scalar_f32(-1.0)).unwrap();
    let hi = g.add_initializer("hi", Tensor::scalar_f32(0.5)).unwrap();
    let c = node(&mut g, "clip", Op::Clip, &[w, lo, hi]);
    g.add_output(c);
    check(g, &[("x".into(), x), ("y".into(), y)], "where+clip");
}

#[test]
fn an_elementwise_chain_is_one_loop_without_intermediates() {
    let mut rng = StdRng::seed_from_u64(4);
    let x = random(&mut rng, &[16, 64], -3.0, 3.0);
    let z = random(&mut rng, &[16, 64], -3.0, 3.0);
    let mut g = Graph::new("chain");
    let (xv, zv) = (input(&mut g, "x", &[16, 64]), input(&mut g, "z", &[16, 64]));
    let t = node(&mut g, "tanh", Op::Unary(UnaryOp::Tanh), &[xv]);
    let s = node(&mut g, "sigmoid", Op::Unary(UnaryOp::Sigmoid), &[zv]);
    let m = node(&mut g, "mul", Op::Binary(BinaryOp::Mul), &[t, s]);
    let half = g.add_initializer("half", Tensor::scalar_f32(0.5)).unwrap();
    let h = node(&mut g, "scale", Op::Binary(BinaryOp::Mul), &[m, half]);
    let y = node(&mut g, "add", Op::Binary(BinaryOp::Add), &[h, xv]);
    g.add_output(y);
    let opts = CompileOptions { optimize: false, ..CompileOptions::default() };
    let spec = check_with(g, &[("x".into(), x), ("z".into(), z)], &opts, "chain");
    assert_eq!(spec.kernels.len(), 1, "five elementwise ops fuse into one kernel: {:?}", spec.kernels);
    assert_eq!(spec.arena_bytes, 0, "a fused chain needs no intermediate buffer");
    let loops = spec
        .ir_unoptimized
        .lines()
        .filter(|l| l.starts_with("loop") && l.contains(':') && !l.contains(".exit"))
        .count();
    assert_eq!(loops, 1, "the [16, 64] chain collapses to a single loop:\n{}", spec.ir_unoptimized);
}

#[test]
fn the_optimized_elementwise_loop_is_vectorized() {
    let mut g = Graph::new("vec");
    let (xv, zv) = (input(&mut g, "x", &[4096]), input(&mut g, "z", &[4096]));
    let e = node(&mut g, "exp", Op::Unary(UnaryOp::Exp), &[xv]);
    let y = node(&mut g, "add", Op::Binary(BinaryOp::Add), &[e, zv]);
    g.add_output(y);
    kiln_ir::infer_types(&mut g).unwrap();
    let compiled = compile(&g, &CompileOptions::default()).unwrap();
    let zeros = Tensor::zeros(DType::F32, &[4096]);
    let spec = compiled.specialization_for(&[("x".into(), zeros.clone()), ("z".into(), zeros)]).unwrap();
    assert!(spec.ir_optimized.contains("x float>"), "no vector type in the optimized IR:\n{}", spec.ir_optimized);
}

#[test]
fn matmul_and_gemm_match_the_interpreter() {
    let mut rng = StdRng::seed_from_u64(5);
    let cases: [(&[usize], &[usize]); 6] = [
        (&[7, 9], &[9, 5]),
        (&[2, 3, 17, 33], &[33, 45]),
        (&[2, 1, 5, 7], &[3, 7, 4]),
        (&[9], &[9, 4]),
        (&[3, 9], &[9]),
        (&[5, 300], &[300, 260]),
    ];
    for (sa, sb) in cases {
        let mut g = Graph::new("matmul");
        let (av, bv) = (input(&mut g, "a", sa), input(&mut g, "b", sb));
        let y = node(&mut g, "mm", Op::MatMul, &[av, bv]);
        g.add_output(y);
        let (a, b) = (random(&mut rng, sa, -1.0, 1.0), random(&mut rng, sb, -1.0, 1.0));
        check(g, &[("a".into(), a), ("b".into(), b)], &format!("MatMul {sa:?} {sb:?}"));
    }
    for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
        let (m, k, n) = (6, 11, 13);
        let sa: Vec<usize> = if trans_a { vec![k, m] } else { vec![m, k] };
        let sb: Vec<usize> = if trans_b { vec![n, k] } else { vec![k, n] };
        let mut g = Graph::new("gemm");
        let (av, bv, cv) = (input(&mut g, "a", &sa), input(&mut g, "b", &sb), input(&mut g, "c", &[n]));
        let attrs = GemmAttrs { alpha: 0.5, beta: 2.0, trans_a, trans_b };
        let y = node(&mut g, "gemm", Op::Gemm(attrs), &[av, bv, cv]);
        g.add_output(y);
        let (a, b, c) =
            (random(&mut rng, &sa, -1.0, 1.0), random(&mut rng, &sb, -1.0, 1.0), random(&mut rng, &[n], -1.0, 1.0));
        check(g, &[("a".into(), a), ("b".into(), b), ("c".into(), c)], &format!("Gemm {trans_a} {trans_b}"));
    }
}

/// `stream_min_bytes` settings the softmax tests run under: the default
/// (normal stores at these sizes) and 0 (streaming stores everywhere).
const STREAM_SETTINGS: [usize; 2] = [kiln_backend_llvm::DEFAULT_STREAM_MIN_BYTES, 0];

#[test]
fn softmax_two_pass_and_three_pass_match_the_interpreter() {
    let mut rng = StdRng::seed_from_u64(6);
    for (shape, axis, scale) in
        [(vec![3, 4, 37], -1i64, 5.0), (vec![3, 4, 37], 1, 5.0), (vec![2, 1000], -1, 300.0), (vec![5], 0, 1.0)]
    {
        let x = random(&mut rng, &shape, -scale, scale);
        for log in [false, true] {
            for algo in [SoftmaxAlgorithm::TwoPass, SoftmaxAlgorithm::ThreePass, SoftmaxAlgorithm::Online] {
                let mut g = Graph::new("softmax");
                let xv = input(&mut g, "x", &shape);
                let op = if log { Op::LogSoftmax { axis } } else { Op::Softmax { axis } };
                let y = node(&mut g, "sm", op, &[xv]);
                g.add_output(y);
                for stream_min_bytes in STREAM_SETTINGS {
                    let opts = CompileOptions { softmax: algo, stream_min_bytes, ..CompileOptions::default() };
                    let what = format!("{shape:?} axis {axis} log {log} {algo:?} stream from {stream_min_bytes} B");
                    check_with(g.clone(), &[("x".into(), x.clone())], &opts, &what);
                }
            }
        }
    }
}

#[test]
fn softmax_does_not_overflow_on_huge_logits() {
    // Row 0: huge positive logits; row 1: all far below -1e4 but 1 apart;
    // row 2: in range, with -inf entries.
    let huge: Vec<f64> = (0..50).map(|i| 1e30 + i as f64 * 1e28).chain((0..20).map(|i| -1e30 - i as f64)).collect();
    let tiny: Vec<f64> = (0..70).map(|i| -1e5 + (i % 3) as f64).collect();
    let normal: Vec<f64> =
        (0..70).map(|i| if i % 7 == 0 { f64::NEG_INFINITY } else { (i as f64).sin() * 30.0 }).collect();
    let v: Vec<f64> = huge.into_iter().chain(tiny).chain(normal).collect();
    let x = Tensor::from_f64s(DType::F32, &[3, 70], &v);
    for algo in [SoftmaxAlgorithm::TwoPass, SoftmaxAlgorithm::ThreePass, SoftmaxAlgorithm::Online] {
        let mut g = Graph::new("softmax");
        let xv = input(&mut g, "x", &[3, 70]);
        let y = node(&mut g, "sm", Op::Softmax { axis: -1 }, &[xv]);
        g.add_output(y);
        for stream_min_bytes in STREAM_SETTINGS {
            check_with(
                g.clone(),
                &[("x".into(), x.clone())],
                &CompileOptions { softmax: algo, stream_min_bytes, ..Default::default() },
                &format!("{algo:?} stream from {stream_min_bytes} B"),
            );
        }
    }
}

#[test]
fn softmax_online_chunks_match_the_interpreter() {
    // Row lengths around the online kernel's 1024-element chunk (a chunk
    // plus a tail, exact multiples, a single element, a row long enough to
    // lengthen its chunks) and -inf filling whole leading chunks, so the
    // running maximum starts at -inf and rises chunk by chunk.
    let mut rng = StdRng::seed_from_u64(61);
    for len in [1usize, 17, 1023, 1024, 1025, 2048, 3000, 300_001] {
        let rows = if len > 10_000 { 1 } else { 4 };
        let mut v: Vec<f64> = (0..rows * len).map(|_| rng.random_range(-40.0..40.0)).collect();
        if len > 2 {
            // Row 1: -inf through its first chunk and a half; row 2: rising
            // values, so every chunk raises the running maximum.
            for j in 0..len.min(1536) {
                v[(1 % rows) * len + j] = f64::NEG_INFINITY;
            }
            for j in 0..len {
                v[(2 % rows) * len + j] = j as f64 * 0.05 - 20.0;
            }
        }
        let x = Tensor::from_f64s(DType::F32, &[rows, len], &v);
        for log in [false, true] {
            let mut g = Graph::new("softmax");
            let xv = input(&mut g, "x", &[rows, len]);
            let op = if log { Op::LogSoftmax { axis: -1 } } else { Op::Softmax { axis: -1 } };
            let y = node(&mut g, "sm", op, &[xv]);
            g.add_output(y);
            // Streamed, rows up to 64 Ki elements stage their exponentials
            // on the stack; 300 001 is past that and recomputes them. Rows
            // of odd lengths start unaligned, so the stores peel.
            for stream_min_bytes in STREAM_SETTINGS {
                let opts =
                    CompileOptions { softmax: SoftmaxAlgorithm::Online, stream_min_bytes, ..CompileOptions::default() };
                let what = format!("online len {len} log {log} stream from {stream_min_bytes} B");
                check_with(g.clone(), &[("x".into(), x.clone())], &opts, &what);
            }
        }
    }
    // f64 rows take the same kernel with f64 exponentials.
    let v: Vec<f64> = (0..2 * 1500).map(|_| rng.random_range(-40.0..40.0)).collect();
    let x = Tensor::from_f64s(DType::F64, &[2, 1500], &v);
    let mut g = Graph::new("softmax");
    let xv = g.add_input("x", TensorType::fixed(DType::F64, &[2, 1500])).unwrap();
    let y = node(&mut g, "sm", Op::Softmax { axis: -1 }, &[xv]);
    g.add_output(y);
    let opts = CompileOptions { softmax: SoftmaxAlgorithm::Online, ..CompileOptions::default() };
    check_with(g, &[("x".into(), x)], &opts, "online f64");
}

#[test]
fn exp_is_within_two_ulp_of_the_rounded_exact_value() {
    // A dense sweep of f32 exp's whole finite range, against exp in f64
    // rounded to f32; the distance in units in the last place is the
    // difference of the bit patterns (both results positive).
    let n = 200_003usize;
    let xs: Vec<f64> = (0..n).map(|i| -87.0 + 175.5 * i as f64 / (n - 1) as f64).collect();
    let x = Tensor::from_f64s(DType::F32, &[n], &xs);
    let mut g = Graph::new("exp");
    let xv = input(&mut g, "x", &[n]);
    let y = node(&mut g, "e", Op::Unary(UnaryOp::Exp), &[xv]);
    g.add_output(y);
    kiln_ir::infer_types(&mut g).unwrap();
    let got = compile(&g, &CompileOptions::default()).unwrap().run(&[("x".into(), x.clone())]).unwrap();
    let mut worst = (0u32, 0.0f32);
    for (&xi, yi) in x.to_f64s().iter().zip(got[0].1.to_f64s()) {
        let want = (xi.exp() as f32).to_bits();
        let ulp = want.abs_diff((yi as f32).to_bits());
        if ulp > worst.0 {
            worst = (ulp, xi as f32);
        }
    }
    assert!(worst.0 <= 2, "exp is {} ulp off at x = {}", worst.0, worst.1);
}

#[test]
fn reductions_match_the_interpreter() {
    let mut rng = StdRng::seed_from_u64(7);
    let x = random(&mut rng, &[3, 5, 7], 0.1, 2.0);
    for kind in ReduceKind::ALL {
        for (axes, keepdims) in
            [(Some(vec![-1]), true), (Some(vec![0, 2]), false), (None, false), (Some(vec![1]), false)]
        {
            let mut g = Graph::new("reduce");
            let xv = input(&mut g, "x", &[3, 5, 7]);
            let op = Op::Reduce { kind, axes: axes.clone(), keepdims, noop_with_empty_axes: false };
            let y = node(&mut g, "r", op, &[xv]);
            g.add_output(y);
            check(g, &[("x".into(), x.clone())], &format!("{} {axes:?} {keepdims}", kind.name()));
        }
    }
}

#[test]
fn views_and_transpose() {
    let mut rng = StdRng::seed_from_u64(8);
    let x = random(&mut rng, &[2, 3, 4], -1.0, 1.0);
    let mut g = Graph::new("views");
    let xv = input(&mut g, "x", &[2, 3, 4]);
    let shape = g.add_initializer("shape", Tensor::vec_i64(&[6, 4])).unwrap();
    let r = node(&mut g, "reshape", Op::Reshape { allowzero: false }, &[xv, shape]);
    let t = node(&mut g, "transpose", Op::Transpose { perm: Some(vec![1, 0]) }, &[r]);
    let axes = g.add_initializer("axes", Tensor::vec_i64(&[0])).unwrap();
    let u = node(&mut g, "unsqueeze", Op::Unsqueeze, &[t, axes]);
    let s = node(&mut g, "squeeze", Op::Squeeze, &[u, axes]);
    let e = node(&mut g, "exp", Op::Unary(UnaryOp::Exp), &[s]);
    let f = node(&mut g, "flatten", Op::Flatten { axis: 0 }, &[e]);
    let t3 = node(&mut g, "transpose3", Op::Transpose { perm: Some(vec![2, 0, 1]) }, &[xv]);
    g.add_output(f);
    g.add_output(r);
    g.add_output(t3);
    g.add_output(xv);
    check(g, &[("x".into(), x)], "views");
}

#[test]
fn the_memory_planner_reuses_buffers() {
    let mut rng = StdRng::seed_from_u64(9);
    let mut g = Graph::new("mlp");
    let mut h = input(&mut g, "x", &[8, 32]);
    let mut inputs = vec![("x".to_string(), random(&mut rng, &[8, 32], -1.0, 1.0))];
    for layer in 0..4 {
        let w = input(&mut g, &format!("w{layer}"), &[32, 32]);
        inputs.push((format!("w{layer}"), random(&mut rng, &[32, 32], -0.3, 0.3)));
        let mm = node(&mut g, &format!("mm{layer}"), Op::MatMul, &[h, w]);
        h = node(&mut g, &format!("relu{layer}"), Op::Unary(UnaryOp::Relu), &[mm]);
    }
    g.add_output(h);
    // The blocked MatMul loops need no scratch, so the arena holds only the
    // intermediates (the packed GEMM's packing buffers would add to it).
    let opts = CompileOptions { matmul: kiln_backend_llvm::MatMulKernel::Blocked, ..CompileOptions::default() };
    let spec = check_with(g, &inputs, &opts, "mlp");
    assert!(spec.intermediate_bytes > 0);
    assert!(
        spec.arena_bytes < spec.intermediate_bytes,
        "arena {} B is not smaller than the {} B of intermediates",
        spec.arena_bytes,
        spec.intermediate_bytes
    );
}

#[test]
fn an_op_without_a_lowering_is_an_error_naming_node_and_op() {
    // NonZero of a run-time value has a data-dependent shape.
    let mut g = Graph::new("nonzero");
    let x = input(&mut g, "x", &[2, 5]);
    let e = node(&mut g, "exp", Op::Unary(UnaryOp::Exp), &[x]);
    let y = node(&mut g, "pick_them", Op::NonZero, &[e]);
    g.add_output(y);
    let err = compile(&g, &CompileOptions::default()).err().expect("NonZero of a run-time value has no lowering");
    assert!(matches!(err, BackendError::Unsupported { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("pick_them") && text.contains("NonZero"), "{text}");
}

fn ints(dtype: DType, shape: &[usize], v: &[i64]) -> Tensor {
    Tensor::from_i64s(dtype, shape, v)
}

#[test]
fn selection_ops_match_the_interpreter() {
    let mut rng = StdRng::seed_from_u64(21);
    // Integer data with many ties exercises select_last_index and TopK's
    // stability.
    let data: Vec<i64> = (0..4 * 9).map(|_| rng.random_range(0..4)).collect();
    for dtype in [DType::F32, DType::I32] {
        for (axis, last, max) in [(0i64, false, true), (1, true, false), (-1, true, true)] {
            let mut g = Graph::new("arg");
            let x = g.add_input("x", TensorType::fixed(dtype, &[4, 9])).unwrap();
            let op = Op::ArgReduce { max, axis, keepdims: axis == 0, select_last_index: last };
            let y = node(&mut g, "arg", op, &[x]);
            g.add_output(y);
            check(g, &[("x".into(), ints(dtype, &[4, 9], &data))], &format!("arg {dtype} {axis} {last} {max}"));
        }
        for (k, axis, largest) in [(3i64, 1i64, true), (9, -1, false), (1, 0, true), (0, 1, true)] {
            let mut g = Graph::new("topk");
            let x = g.add_input("x", TensorType::fixed(dtype, &[4, 9])).unwrap();
            let kv = g.add_initializer("k", Tensor::vec_i64(&[k])).unwrap();
            let id = g
                .add_node("top", Op::TopK { axis, largest, sorted: true }, vec![Some(x), Some(kv)], &["v", "i"])
                .unwrap();
            g.add_output(g.node(id).output(0).unwrap());
            g.add_output(g.node(id).output(1).unwrap());
            check(g, &[("x".into(), ints(dtype, &[4, 9], &data))], &format!("topk {dtype} k={k} axis {axis}"));
        }
    }
}

#[test]
fn indexing_ops_match_the_interpreter_on_edge_shapes() {
    let mut rng = StdRng::seed_from_u64(22);
    let x = random(&mut rng, &[3, 4], -1.0, 1.0);
    let feed = [("x".to_string(), x)];
    // Pad: every mode, with a crop (negative pad) on one side.
    for mode in ["constant", "reflect", "edge", "wrap"] {
        let mut g = Graph::new("pad");
        let xv = input(&mut g, "x", &[3, 4]);
        let pads = g.add_initializer("pads", Tensor::vec_i64(&[2, -1, 1, 3])).unwrap();
        let fill = g.add_initializer("fill", Tensor::from_f64s(DType::F32, &[], &[7.5])).unwrap();
        let y = node(&mut g, "pad", Op::Pad { mode: mode.into() }, &[xv, pads, fill]);
        g.add_output(y);
        check(g, &feed, &format!("pad {mode}"));
    }
    // Tile with a zero repeat, Trilu with k beyond the matrix, CumSum
    // reversed and exclusive.
    let mut g = Graph::new("misc");
    let xv = input(&mut g, "x", &[3, 4]);
    let reps = g.add_initializer("reps", Tensor::vec_i64(&[2, 0])).unwrap();
    let t = node(&mut g, "tile", Op::Tile, &[xv, reps]);
    g.add_output(t);
    for (i, (upper, k)) in [(true, 5i64), (false, -1), (true, -2)].into_iter().enumerate() {
        let kv = g.add_initializer(format!("k{i}"), Tensor::scalar_i64(k)).unwrap();
        let y = node(&mut g, &format!("tri{i}"), Op::Trilu { upper }, &[xv, kv]);
        g.add_output(y);
    }
    let axis = g.add_initializer("axis", Tensor::scalar_i64(0)).unwrap();
    let c = node(&mut g, "cumsum", Op::CumSum { exclusive: true, reverse: true }, &[xv, axis]);
    g.add_output(c);
    check(g, &feed, "tile, trilu, cumsum");
    // OneHot with float indices (negative ones wrap) on a middle axis.
    let mut g = Graph::new("onehot");
    let iv = input(&mut g, "i", &[2, 3]);
    let depth = g.add_initializer("depth", Tensor::scalar_i64(4)).unwrap();
    let values = g.add_initializer("values", Tensor::vec_i64(&[-1, 9])).unwrap();
    let y = node(&mut g, "onehot", Op::OneHot { axis: 1 }, &[iv, depth, values]);
    g.add_output(y);
    let idx = Tensor::from_f64s(DType::F32, &[2, 3], &[0.0, 3.0, -1.0, 2.9, -4.0, 7.0]);
    check(g, &[("i".into(), idx)], "onehot");
}

#[test]
fn data_dependent_indices_are_checked() {
    // GatherElements and ScatterND fail naming the node on a bad index.
    let mut g = Graph::new("ge");
    let x = input(&mut g, "x", &[2, 3]);
    let i = g.add_input("i", TensorType::fixed(DType::I64, &[2, 2])).unwrap();
    let y = node(&mut g, "pick", Op::GatherElements { axis: 1 }, &[x, i]);
    g.add_output(y);
    let feed = |v: &[i64]| {
        [("x".to_string(), Tensor::zeros(DType::F32, &[2, 3])), ("i".to_string(), ints(DType::I64, &[2, 2], v))]
    };
    check(g.clone(), &feed(&[0, -3, 2, 1]), "gather elements");
    kiln_ir::infer_types(&mut g).unwrap();
    let compiled = compile(&g, &CompileOptions::default()).unwrap();
    let err = compiled.run(&feed(&[0, 3, 0, 0])).expect_err("index 3 is outside an axis of 3");
    assert!(err.to_string().contains("pick") && err.to_string().contains("index"), "{err}");

    let mut g = Graph::new("scatter");
    let x = input(&mut g, "x", &[4, 2]);
    let i = g.add_input("i", TensorType::fixed(DType::I64, &[3, 1])).unwrap();
    let u = input(&mut g, "u", &[3, 2]);
    let y = node(&mut g, "put", Op::ScatterND { reduction: "add".into() }, &[x, i, u]);
    g.add_output(y);
    let mut rng = StdRng::seed_from_u64(23);
    let feed = |v: &[i64], rng: &mut StdRng| {
        [
            ("x".to_string(), random(rng, &[4, 2], -1.0, 1.0)),
            ("i".to_string(), ints(DType::I64, &[3, 1], v)),
            ("u".to_string(), random(rng, &[3, 2], -1.0, 1.0)),
        ]
    };
    check(g.clone(), &feed(&[1, -1, 1], &mut rng), "scatter nd add (a repeated index accumulates)");
    kiln_ir::infer_types(&mut g).unwrap();
    let compiled = compile(&g, &CompileOptions::default()).unwrap();
    let err = compiled.run(&feed(&[0, -5, 1], &mut rng)).expect_err("index -5 is outside an axis of 4");
    assert!(err.to_string().contains("put") && err.to_string().contains("index"), "{err}");
}

#[test]
fn integer_division_is_defined_and_checks_for_zero() {
    let a = ints(DType::I32, &[6], &[7, -7, 7, -7, i32::MIN as i64, 0]);
    let b = ints(DType::I32, &[6], &[2, 2, -2, -2, -1, 5]);
    for op in [Op::Binary(BinaryOp::Div), Op::Mod { fmod: false }, Op::Mod { fmod: true }] {
        let mut g = Graph::new("div");
        let x = g.add_input("a", TensorType::fixed(DType::I32, &[6])).unwrap();
        let y = g.add_input("b", TensorType::fixed(DType::I32, &[6])).unwrap();
        let r = node(&mut g, "divide", op.clone(), &[x, y]);
        g.add_output(r);
        let name = op.name();
        check(g.clone(), &[("a".into(), a.clone()), ("b".into(), b.clone())], name);
        kiln_ir::infer_types(&mut g).unwrap();
        let compiled = compile(&g, &CompileOptions::default()).unwrap();
        let zero = ints(DType::I32, &[6], &[1, 1, 0, 1, 1, 1]);
        let err = compiled.run(&[("a".into(), a.clone()), ("b".into(), zero)]).expect_err("division by zero");
        assert!(err.to_string().contains("divide") && err.to_string().contains("by zero"), "{name}: {err}");
    }
}

#[test]
fn quantization_matches_the_interpreter() {
    let mut rng = StdRng::seed_from_u64(24);
    let x = random(&mut rng, &[2, 6], -3.0, 3.0);
    // Per tensor, per axis and blocked, to u8, i8 and i4.
    let cases: [(&[usize], DType, i64, i64); 3] =
        [(&[], DType::U8, 1, 0), (&[6], DType::I8, 1, 0), (&[2, 3], DType::I4, 1, 2)];
    for (sshape, zdt, axis, block_size) in cases {
        let n: usize = sshape.iter().product();
        let mut g = Graph::new("quant");
        let xv = input(&mut g, "x", &[2, 6]);
        let scale: Vec<f64> = (0..n).map(|i| 0.02 + 0.01 * i as f64).collect();
        let s = g.add_initializer("s", Tensor::from_f64s(DType::F32, sshape, &scale)).unwrap();
        let zp: Vec<i64> = (0..n).map(|i| i as i64 % 3).collect();
        let z = g.add_initializer("z", ints(zdt, sshape, &zp)).unwrap();
        let q =
            node(&mut g, "q", Op::QuantizeLinear { axis, block_size, saturate: true, output_dtype: None }, &[xv, s, z]);
        let d = node(&mut g, "dq", Op::DequantizeLinear { axis, block_size, output_dtype: None }, &[q, s, z]);
        g.add_output(q);
        g.add_output(d);
        check(g, &[("x".into(), x.clone())], &format!("quantize to {zdt}"));
    }
    let mut g = Graph::new("dyn");
    let xv = input(&mut g, "x", &[2, 6]);
    let id = g.add_node("dq", Op::DynamicQuantizeLinear, vec![Some(xv)], &["y", "s", "z"]).unwrap();
    for i in 0..3 {
        g.add_output(g.node(id).output(i).unwrap());
    }
    check(g, &[("x".into(), x)], "dynamic quantize");
}

#[test]
fn inputs_that_decide_shapes_are_specialized_by_value() {
    // Range of float graph inputs (fractions matter), scaled by the same
    // input used as data: each distinct value compiles its own code.
    let mut g = Graph::new("range");
    let scalar = |g: &mut Graph, name: &str| g.add_input(name, TensorType::fixed(DType::F32, &[])).unwrap();
    let (start, limit, delta) = (scalar(&mut g, "start"), scalar(&mut g, "limit"), scalar(&mut g, "delta"));
    let r = node(&mut g, "range", Op::Range, &[start, limit, delta]);
    let y = node(&mut g, "scale", Op::Binary(BinaryOp::Mul), &[r, limit]);
    g.add_output(y);
    let f = |v: f64| Tensor::from_f64s(DType::F32, &[], &[v]);
    for (a, b, d) in [(0.5, 3.0, 0.75), (0.5, 3.25, 0.75), (2.0, -1.0, -0.5)] {
        let feed = [("start".into(), f(a)), ("limit".into(), f(b)), ("delta".into(), f(d))];
        check(g.clone(), &feed, &format!("range {a} {b} {d}"));
    }
    // An inference-mode Dropout whose mask is read: the mask is all true.
    let mut g = Graph::new("dropout");
    let x = input(&mut g, "x", &[2, 3]);
    let ratio = g.add_input("ratio", TensorType::fixed(DType::F32, &[])).unwrap();
    let training = g.add_input("training", TensorType::fixed(DType::Bool, &[])).unwrap();
    let id = g
        .add_node("drop", Op::Dropout { seed: None }, vec![Some(x), Some(ratio), Some(training)], &["y", "mask"])
        .unwrap();
    let (y, mask) = (g.node(id).output(0).unwrap(), g.node(id).output(1).unwrap());
    let e = node(&mut g, "exp", Op::Unary(UnaryOp::Exp), &[y]);
    g.add_output(e);
    g.add_output(mask);
    let mut rng = StdRng::seed_from_u64(25);
    let x = random(&mut rng, &[2, 3], -1.0, 1.0);
    for (r, t) in [(0.5, false), (0.0, true)] {
        let feed =
            [("x".into(), x.clone()), ("ratio".into(), f(r)), ("training".into(), ints(DType::Bool, &[], &[t as i64]))];
        check(g.clone(), &feed, &format!("dropout ratio {r} training {t}"));
    }
}

#[test]
fn concat_matches_the_interpreter() {
    let mut rng = StdRng::seed_from_u64(13);
    for axis in [0i64, 1, -1] {
        let shapes: [&[usize]; 3] = match axis {
            0 => [&[1, 3, 4], &[2, 3, 4], &[0, 3, 4]],
            1 => [&[2, 1, 4], &[2, 3, 4], &[2, 2, 4]],
            _ => [&[2, 3, 1], &[2, 3, 5], &[2, 3, 2]],
        };
        let mut g = Graph::new("concat");
        let mut ins = Vec::new();
        let mut feed = Vec::new();
        for (i, s) in shapes.iter().enumerate() {
            ins.push(input(&mut g, &format!("x{i}"), s));
            feed.push((format!("x{i}"), random(&mut rng, s, -1.0, 1.0)));
        }
        let y = node(&mut g, "cat", Op::Concat { axis }, &ins);
        let e = node(&mut g, "exp", Op::Unary(UnaryOp::Exp), &[y]);
        g.add_output(e);
        check(g, &feed, &format!("concat axis {axis}"));
    }
}

#[test]
fn bad_inputs_at_run_time_are_errors() {
    let mut g = Graph::new("g");
    let x = g
        .add_input("x", TensorType::new(DType::F32, vec![kiln_ir::Dim::sym("batch"), kiln_ir::Dim::from(3u64)]))
        .unwrap();
    let z = g.add_input("z", TensorType::new(DType::F32, vec![kiln_ir::Dim::sym("batch")])).unwrap();
    let e = node(&mut g, "exp", Op::Unary(UnaryOp::Exp), &[x]);
    g.add_output(e);
    g.add_output(z);
    kiln_ir::infer_types(&mut g).unwrap();
    let compiled = compile(&g, &CompileOptions::default()).unwrap();
    let ok = compiled
        .run(&[("x".into(), Tensor::zeros(DType::F32, &[2, 3])), ("z".into(), Tensor::zeros(DType::F32, &[2]))]);
    assert!(ok.is_ok(), "{ok:?}");
    // A second batch size compiles a second specialization.
    let ok = compiled
        .run(&[("x".into(), Tensor::zeros(DType::F32, &[5, 3])), ("z".into(), Tensor::zeros(DType::F32, &[5]))]);
    assert_eq!(ok.unwrap()[0].1.shape(), &[5, 3]);
    let bad = [
        (vec![("x", Tensor::zeros(DType::F32, &[2, 4])), ("z", Tensor::zeros(DType::F32, &[2]))], "differs"),
        (vec![("x", Tensor::zeros(DType::F32, &[2, 3])), ("z", Tensor::zeros(DType::F32, &[3]))], "batch"),
        (vec![("x", Tensor::zeros(DType::F64, &[2, 3])), ("z", Tensor::zeros(DType::F32, &[2]))], "declared"),
        (vec![("x", Tensor::zeros(DType::F32, &[2, 3, 1])), ("z", Tensor::zeros(DType::F32, &[2]))], "declared"),
        (vec![("x", Tensor::zeros(DType::F32, &[2, 3]))], "missing"),
        (vec![("x", Tensor::zeros(DType::F32, &[2, 3])), ("y", Tensor::zeros(DType::F32, &[2]))], "not an input"),
    ];
    for (inputs, words) in bad {
        let named: Vec<(String, Tensor)> = inputs.into_iter().map(|(n, t)| (n.to_string(), t)).collect();
        let err = compiled.run(&named).expect_err("bad inputs are rejected");
        assert!(matches!(err, BackendError::Value { .. }), "{err:?}");
        assert!(err.to_string().contains(words), "`{err}` does not say `{words}`");
    }
}

fn labels(rng: &mut StdRng, shape: &[usize], classes: i64, ignore: Option<i64>) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<i64> =
        (0..n).map(|k| if k % 4 == 1 { ignore.unwrap_or(0) } else { rng.random_range(0..classes) }).collect();
    Tensor::from_i64s(DType::I64, shape, &v)
}

#[test]
fn cross_entropy_losses_match_the_interpreter() {
    use kiln_ir::op::LossReduction;
    let mut rng = StdRng::seed_from_u64(10);
    for reduction in [LossReduction::None, LossReduction::Sum, LossReduction::Mean] {
        for (ignore_index, eps, zeta, weighted) in
            [(None, 0.0, 0.0, false), (Some(-100), 0.1, 1e-3, true), (Some(2), 0.0, 0.0, true)]
        {
            for (shape, label_shape) in [(vec![6, 37], vec![6]), (vec![3, 5, 4], vec![3, 4])] {
                let c = shape[1];
                let x = random(&mut rng, &shape, -4.0, 4.0);
                let y = labels(&mut rng, &label_shape, c as i64, ignore_index);
                let w = random(&mut rng, &[c], 0.2, 2.0);
                for op in [
                    Op::CrossEntropy { reduction, ignore_index, label_smoothing: eps, z_loss: zeta },
                    Op::SoftmaxCrossEntropyLoss { reduction, ignore_index },
                    Op::NegativeLogLikelihoodLoss { reduction, ignore_index },
                ] {
                    let mut g = Graph::new("ce");
                    let xv = input(&mut g, "x", &shape);
                    let yv = g.add_input("y", TensorType::fixed(DType::I64, &label_shape)).unwrap();
                    let mut ins = vec![Some(xv), Some(yv)];
                    let mut feed = vec![("x".to_string(), x.clone()), ("y".to_string(), y.clone())];
                    if weighted {
                        ins.push(Some(input(&mut g, "w", &[c])));
                        feed.push(("w".into(), w.clone()));
                    }
                    let with_log_prob = !matches!(op, Op::NegativeLogLikelihoodLoss { .. });
                    let outs: &[&str] = if with_log_prob { &["loss", "log_prob"] } else { &["loss"] };
                    let id = g.add_node("loss", op.clone(), ins, outs).unwrap();
                    for slot in 0..outs.len() {
                        g.add_output(g.node(id).output(slot).unwrap());
                    }
                    check(g, &feed, &format!("{op:?} {shape:?} weighted {weighted}"));
                }
            }
        }
    }
}

#[test]
fn a_label_outside_the_classes_is_an_error() {
    let mut g = Graph::new("ce");
    let xv = input(&mut g, "x", &[2, 3]);
    let yv = g.add_input("y", TensorType::fixed(DType::I64, &[2])).unwrap();
    let op = Op::CrossEntropy {
        reduction: kiln_ir::op::LossReduction::Mean,
        ignore_index: None,
        label_smoothing: 0.0,
        z_loss: 0.0,
    };
    let loss = node(&mut g, "the_loss", op, &[xv, yv]);
    g.add_output(loss);
    kiln_ir::infer_types(&mut g).unwrap();
    let compiled = compile(&g, &CompileOptions::default()).unwrap();
    let x = Tensor::zeros(DType::F32, &[2, 3]);
    for bad in [3, -1] {
        let y = Tensor::from_i64s(DType::I64, &[2], &[0, bad]);
        let err = compiled.run(&[("x".into(), x.clone()), ("y".into(), y)]).expect_err("label out of range");
        assert!(err.to_string().contains("the_loss") && err.to_string().contains("label"), "{err}");
    }
}

#[test]
fn linear_cross_entropy_matches_the_interpreter() {
    use kiln_ir::op::LossReduction;
    let mut rng = StdRng::seed_from_u64(11);
    let (n, d, v) = (7, 16, 300);
    for (reduction, ignore_index, eps, zeta, transpose_weight, chunk_size, with_bias, with_class_w) in [
        (LossReduction::Mean, None, 0.0, 0.0, true, 4096, false, false),
        (LossReduction::None, Some(-100), 0.1, 1e-3, true, 64, true, true),
        (LossReduction::Sum, Some(5), 0.05, 0.0, false, 100, true, false),
        (LossReduction::Mean, Some(-1), 0.0, 1e-2, false, 7, false, true),
    ] {
        let mut g = Graph::new("lce");
        let h = input(&mut g, "h", &[n, d]);
        let wshape = if transpose_weight { [v, d] } else { [d, v] };
        let w = input(&mut g, "w", &wshape);
        let y = g.add_input("y", TensorType::fixed(DType::I64, &[n])).unwrap();
        let mut feed = vec![
            ("h".to_string(), random(&mut rng, &[n, d], -1.0, 1.0)),
            ("w".to_string(), random(&mut rng, &wshape, -1.0, 1.0)),
            ("y".to_string(), labels(&mut rng, &[n], v as i64, ignore_index)),
        ];
        let mut ins = vec![Some(h), Some(w), Some(y), None, None];
        if with_bias {
            ins[3] = Some(input(&mut g, "b", &[v]));
            feed.push(("b".into(), random(&mut rng, &[v], -1.0, 1.0)));
        }
        if with_class_w {
            ins[4] = Some(input(&mut g, "cw", &[v]));
            feed.push(("cw".into(), random(&mut rng, &[v], 0.2, 2.0)));
        }
        while ins.last() == Some(&None) {
            ins.pop();
        }
        let op = Op::LinearCrossEntropy {
            reduction,
            ignore_index,
            label_smoothing: eps,
            z_loss: zeta,
            transpose_weight,
            chunk_size,
        };
        let id = g.add_node("lce", op.clone(), ins, &["loss"]).unwrap();
        g.add_output(g.node(id).output(0).unwrap());
        let spec = check(g, &feed, &format!("{op:?}"));
        // The kernel's memory is four numbers per row, one packed tile of
        // the head (at most 256 entries, padded to whole panels) and one
        // tile of logits for at most 96 rows: never N × V.
        let tile = (chunk_size as usize).min(256).next_multiple_of(32);
        let bound = 4 * 4 * n.next_multiple_of(16) + 4 * tile * (d + 96) + 256;
        assert!(spec.arena_bytes <= bound, "arena {} B, over the tile bound {bound} B", spec.arena_bytes);
    }
}

#[test]
fn expand_broadcasts_inside_a_fused_loop() {
    let mut rng = StdRng::seed_from_u64(12);
    let mut g = Graph::new("expand");
    let x = input(&mut g, "x", &[3, 1]);
    let z = input(&mut g, "z", &[2, 3, 4]);
    let shape = g.add_initializer("shape", Tensor::vec_i64(&[2, 1, 4])).unwrap();
    let e = node(&mut g, "expand", Op::Expand, &[x, shape]);
    let y = node(&mut g, "mul", Op::Binary(BinaryOp::Mul), &[e, z]);
    g.add_output(y);
    let feed = [
        ("x".to_string(), random(&mut rng, &[3, 1], -1.0, 1.0)),
        ("z".to_string(), random(&mut rng, &[2, 3, 4], -1.0, 1.0)),
    ];
    let spec = check(g, &feed, "expand");
    assert_eq!(spec.kernels.len(), 1, "{:?}", spec.kernels);
    let mut g = Graph::new("expand_out");
    let x = input(&mut g, "x", &[3, 1]);
    let shape = g.add_initializer("shape", Tensor::vec_i64(&[2, 3, 5])).unwrap();
    let e = node(&mut g, "expand", Op::Expand, &[x, shape]);
    g.add_output(e);
    check(g, &[("x".to_string(), random(&mut rng, &[3, 1], -1.0, 1.0))], "expand as output");
}

#[test]
fn layer_and_rms_normalization_match_the_interpreter() {
    let mut rng = StdRng::seed_from_u64(14);
    let shape = [2, 3, 8];
    for (axis, pshape) in [(-1i64, vec![8]), (1, vec![3, 8]), (1, vec![8])] {
        for rms in [false, true] {
            let mut g = Graph::new("norm");
            let x = input(&mut g, "x", &shape);
            let s = input(&mut g, "s", &pshape);
            let mut feed = vec![
                ("x".to_string(), random(&mut rng, &shape, -2.0, 3.0)),
                ("s".to_string(), random(&mut rng, &pshape, 0.5, 1.5)),
            ];
            let (op, ins, outs): (Op, Vec<Option<ValueId>>, &[&str]) = if rms {
                (Op::RMSNormalization { axis, epsilon: 1e-5, stash_type: DType::F32 }, vec![Some(x), Some(s)], &["y"])
            } else {
                let b = input(&mut g, "b", &pshape);
                feed.push(("b".to_string(), random(&mut rng, &pshape, -1.0, 1.0)));
                let op = Op::LayerNormalization { axis, epsilon: 1e-5, stash_type: DType::F32 };
                (op, vec![Some(x), Some(s), Some(b)], &["y", "mean", "inv_std"])
            };
            let id = g.add_node("norm", op.clone(), ins, outs).unwrap();
            for slot in 0..outs.len() {
                g.add_output(g.node(id).output(slot).unwrap());
            }
            check(g, &feed, &format!("{op:?} scale {pshape:?}"));
        }
    }
}

#[test]
fn gather_matches_the_interpreter_and_checks_indices() {
    let mut rng = StdRng::seed_from_u64(15);
    for (axis, ishape) in [(0i64, vec![2, 3]), (1, vec![4]), (-1, vec![])] {
        let mut g = Graph::new("gather");
        let x = input(&mut g, "x", &[5, 6, 7]);
        let i = g.add_input("i", TensorType::fixed(DType::I64, &ishape)).unwrap();
        let y = node(&mut g, "embed", Op::Gather { axis }, &[x, i]);
        g.add_output(y);
        let n: usize = ishape.iter().product();
        let idx: Vec<i64> = (0..n).map(|k| if k % 2 == 0 { k as i64 % 5 } else { -1 - (k as i64 % 4) }).collect();
        let feed = [
            ("x".to_string(), random(&mut rng, &[5, 6, 7], -1.0, 1.0)),
            ("i".to_string(), Tensor::from_i64s(DType::I64, &ishape, &idx)),
        ];
        check(g, &feed, &format!("gather axis {axis}"));
    }
    let mut g = Graph::new("gather");
    let x = input(&mut g, "x", &[5, 2]);
    let i = g.add_input("i", TensorType::fixed(DType::I64, &[2])).unwrap();
    let y = node(&mut g, "embed", Op::Gather { axis: 0 }, &[x, i]);
    g.add_output(y);
    kiln_ir::infer_types(&mut g).unwrap();
    let compiled = compile(&g, &CompileOptions::default()).unwrap();
    for bad in [5, -6] {
        let feed =
            [("x".to_string(), Tensor::zeros(DType::F32, &[5, 2])), ("i".to_string(), Tensor::vec_i64(&[0, bad]))];
        let err = compiled.run(&feed).expect_err("index out of range");
        assert!(err.to_string().contains("embed") && err.to_string().contains("index"), "{err}");
    }
}

#[test]
fn split_matches_the_interpreter() {
    let mut rng = StdRng::seed_from_u64(16);
    for (axis, sizes) in [(1i64, vec![2, 3, 1]), (-1, vec![4, 3]), (0, vec![1, 1])] {
        let mut g = Graph::new("split");
        let x = input(&mut g, "x", &[2, 6, 7]);
        let s = g.add_initializer("sizes", Tensor::vec_i64(&sizes)).unwrap();
        let names: Vec<String> = (0..sizes.len()).map(|i| format!("y{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let id = g.add_node("split", Op::Split { axis, num_outputs: None }, vec![Some(x), Some(s)], &refs).unwrap();
        for slot in 0..sizes.len() {
            g.add_output(g.node(id).output(slot).unwrap());
        }
        check(g, &[("x".to_string(), random(&mut rng, &[2, 6, 7], -1.0, 1.0))], &format!("split {axis} {sizes:?}"));
    }
}

#[test]
fn slice_matches_the_interpreter() {
    let mut rng = StdRng::seed_from_u64(17);
    type Case<'a> = (&'a [i64], &'a [i64], Option<&'a [i64]>, Option<&'a [i64]>);
    let cases: [Case; 4] = [
        (&[0, 1], &[2, 5], None, None),
        (&[-1], &[-1000], Some(&[2]), Some(&[-2])),
        (&[1, 0], &[1000, -1], Some(&[0, 1]), Some(&[2, 3])),
        (&[3], &[1], Some(&[-1]), None),
    ];
    for (starts, ends, axes, steps) in cases {
        let mut g = Graph::new("slice");
        let x = input(&mut g, "x", &[4, 6, 7]);
        let s = g.add_initializer("starts", Tensor::vec_i64(starts)).unwrap();
        let e = g.add_initializer("ends", Tensor::vec_i64(ends)).unwrap();
        let mut ins = vec![Some(x), Some(s), Some(e)];
        if let Some(a) = axes {
            ins.push(Some(g.add_initializer("axes", Tensor::vec_i64(a)).unwrap()));
        }
        if let Some(st) = steps {
            if ins.len() == 3 {
                ins.push(None);
            }
            ins.push(Some(g.add_initializer("steps", Tensor::vec_i64(st)).unwrap()));
        }
        let id = g.add_node("slice", Op::Slice, ins, &["y"]).unwrap();
        g.add_output(g.node(id).output(0).unwrap());
        let what = format!("slice {starts:?} {ends:?} {axes:?} {steps:?}");
        check(g, &[("x".to_string(), random(&mut rng, &[4, 6, 7], -1.0, 1.0))], &what);
    }
}

/// A Slice that keeps the leading part of its input's storage
/// (`x[:, :-1, :]` of one sequence, or rows `0..k` of a matrix) is a view:
/// no kernel copies it, whether a kernel reads it or it is a graph output.
/// Slices that start elsewhere, step, or cut an inner axis still copy.
#[test]
fn prefix_slices_are_views_and_others_copy() {
    let mut rng = StdRng::seed_from_u64(95);
    // (input shape, starts, ends, axes, steps, is a view)
    let cases: [(&[usize], &[i64], &[i64], &[i64], Option<&[i64]>, bool); 7] = [
        (&[1, 6, 7], &[0], &[-1], &[1], None, true),
        (&[5, 7], &[0], &[3], &[0], None, true),
        (&[1, 1, 6, 7], &[0, 0], &[4, 1000], &[2, 3], Some(&[1, 1]), true),
        (&[1, 6, 7], &[1], &[1000], &[1], None, false),
        (&[2, 6, 7], &[0], &[-1], &[1], None, false),
        (&[1, 6, 7], &[0], &[5], &[2], None, false),
        (&[1, 6, 7], &[0], &[6], &[1], Some(&[2]), false),
    ];
    for (shape, starts, ends, axes, steps, view) in cases {
        for consumed in [false, true] {
            let mut g = Graph::new("slice");
            let x = input(&mut g, "x", shape);
            let s = g.add_initializer("starts", Tensor::vec_i64(starts)).unwrap();
            let e = g.add_initializer("ends", Tensor::vec_i64(ends)).unwrap();
            let a = g.add_initializer("axes", Tensor::vec_i64(axes)).unwrap();
            let mut ins = vec![Some(x), Some(s), Some(e), Some(a)];
            if let Some(st) = steps {
                ins.push(Some(g.add_initializer("steps", Tensor::vec_i64(st)).unwrap()));
            }
            // Through an intermediate (x * 2), so the slice's source is in
            // the arena, then either returned or read by one more kernel.
            let two = g.add_initializer("two", Tensor::scalar_f32(2.0)).unwrap();
            let doubled = node(&mut g, "double", Op::Binary(BinaryOp::Mul), &[x, two]);
            ins[0] = Some(doubled);
            let id = g.add_node("slice", Op::Slice, ins, &["y"]).unwrap();
            let y = g.node(id).output(0).unwrap();
            let out = if consumed { node(&mut g, "neg", Op::Unary(UnaryOp::Neg), &[y]) } else { y };
            g.add_output(out);
            let what =
                format!("slice of {shape:?} {starts:?}..{ends:?} axes {axes:?} steps {steps:?}, read {consumed}");
            let spec = check(g, &[("x".to_string(), random(&mut rng, shape, -1.0, 1.0))], &what);
            let copies = spec.kernels.iter().any(|k| k.contains("Slice") || k.contains("slice"));
            assert_eq!(copies, !view, "{what}: kernels {:?}", spec.kernels);
        }
    }
}
