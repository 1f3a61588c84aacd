//! Intra-op parallelism: each parallel kernel gives the same result on one
//! thread and on several (bitwise: items are split, never the arithmetic of
//! one item), matches the interpreter, forks only when the work is large
//! enough; and the run-time paths around it (thread count read at run time,
//! outputs written in place, the arena kept between runs).

use kiln_backend_llvm::{compile, CompileOptions, SoftmaxAlgorithm};
use kiln_ir::dtype::DType;
use kiln_ir::graph::{Graph, ValueId};
use kiln_ir::op::{BinaryOp, GeluApproximation, Op, ReduceKind, UnaryOp};
use kiln_ir::tensor::Tensor;
use kiln_ir::types::TensorType;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn random(rng: &mut StdRng, shape: &[usize], lo: f64, hi: f64) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
    Tensor::from_f64s(DType::F32, shape, &v)
}

fn input(g: &mut Graph, name: &str, shape: &[usize]) -> ValueId {
    g.add_input(name, TensorType::fixed(DType::F32, shape)).unwrap()
}

fn node(g: &mut Graph, name: &str, op: Op, inputs: &[ValueId]) -> ValueId {
    let id = g.add_node(name, op, inputs.iter().map(|&v| Some(v)).collect(), &[&format!("{name}.out")]).unwrap();
    g.node(id).output(0).unwrap()
}

fn assert_close(got: &Tensor, want: &Tensor, what: &str) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    for (i, (a, b)) in got.to_f64s().iter().zip(want.to_f64s()).enumerate() {
        let ok = (a.is_nan() && b.is_nan()) || a == &b || (a - b).abs() <= 1e-5 + 1e-4 * b.abs();
        assert!(ok, "{what}: element {i} is {a}, interpreter says {b}");
    }
}

/// Bitwise equality (NaN equal to NaN of the same bits).
fn assert_bitwise(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.dtype(), b.dtype(), "{what}: dtype");
    assert_eq!(a.shape(), b.shape(), "{what}: shape");
    let (ra, rb) = (a.to_raw_le(), b.to_raw_le());
    if let Some(i) = ra.iter().zip(&rb).position(|(x, y)| x != y) {
        panic!("{what}: byte {i} differs between thread counts");
    }
}

/// Runs `g` on 1, 2 and 3 threads; checks the results are bitwise equal
/// and match the interpreter, and whether the code forks at all. Returns
/// the optimized IR.
fn check_threads(mut g: Graph, inputs: &[(String, Tensor)], opts: &CompileOptions, forks: bool, what: &str) -> String {
    kiln_ir::infer_types(&mut g).unwrap_or_else(|e| panic!("{what}: inference: {e}"));
    let compiled = compile(&g, opts).unwrap_or_else(|e| panic!("{what}: compile: {e}"));
    let want = kiln_ir::interp::run(&g, inputs).unwrap_or_else(|e| panic!("{what}: interpreter: {e}"));
    let mut results = Vec::new();
    for threads in [1, 2, 3] {
        compiled.set_threads(Some(threads));
        assert_eq!(compiled.threads(), threads);
        let got = compiled.run(inputs).unwrap_or_else(|e| panic!("{what}: run on {threads} threads: {e}"));
        for ((name, a), (_, b)) in got.iter().zip(&want) {
            assert_close(a, b, &format!("{what} / {name} on {threads} threads"));
        }
        results.push(got);
    }
    for (t, got) in results.iter().enumerate().skip(1) {
        for ((name, a), (_, b)) in got.iter().zip(&results[0]) {
            assert_bitwise(a, b, &format!("{what} / {name}: {} threads vs 1", t + 1));
        }
    }
    let spec = compiled.specialization_for(inputs).expect("compiled above");
    assert_eq!(
        spec.ir_unoptimized.contains("call void (ptr, i32, ptr, ...) @__kmpc_fork_call"),
        forks,
        "{what}: forks (expected {forks})"
    );
    spec.ir_optimized.clone()
}

#[test]
fn softmax_rows_split_across_threads() {
    let mut rng = StdRng::seed_from_u64(1);
    // Rows along the last axis, rows strided (axis 1 of 3), an odd count
    // of rows that does not divide evenly, and the two algorithms.
    for (shape, axis) in
        [(vec![67, 2049], -1i64), (vec![5, 300, 97], 1), (vec![3, 131, 1000], -1), (vec![9, 3, 2500], 2)]
    {
        let x = random(&mut rng, &shape, -8.0, 8.0);
        for log in [false, true] {
            for algo in [SoftmaxAlgorithm::TwoPass, SoftmaxAlgorithm::ThreePass, SoftmaxAlgorithm::Online] {
                let mut g = Graph::new("softmax");
                let xv = input(&mut g, "x", &shape);
                let op = if log { Op::LogSoftmax { axis } } else { Op::Softmax { axis } };
                let y = node(&mut g, "sm", op, &[xv]);
                g.add_output(y);
                let opts = CompileOptions { softmax: algo, ..Default::default() };
                let what = format!("{shape:?} axis {axis} log {log} {algo:?}");
                check_threads(g, &[("x".into(), x.clone())], &opts, true, &what);
            }
        }
    }
}

#[test]
fn small_kernels_do_not_fork() {
    let mut rng = StdRng::seed_from_u64(2);
    let x = random(&mut rng, &[4, 33], -3.0, 3.0);
    let mut g = Graph::new("small");
    let xv = input(&mut g, "x", &[4, 33]);
    let y = node(&mut g, "sm", Op::Softmax { axis: -1 }, &[xv]);
    g.add_output(y);
    let ir = check_threads(g, &[("x".into(), x)], &CompileOptions::default(), false, "small softmax");
    assert!(!ir.contains("__kmpc"), "a kernel this small runs on the calling thread");
}

#[test]
fn the_thread_count_is_read_at_run_time() {
    let mut rng = StdRng::seed_from_u64(3);
    let x = random(&mut rng, &[64, 4096], -5.0, 5.0);
    let mut g = Graph::new("softmax");
    let xv = input(&mut g, "x", &[64, 4096]);
    let y = node(&mut g, "sm", Op::Softmax { axis: -1 }, &[xv]);
    g.add_output(y);
    kiln_ir::infer_types(&mut g).unwrap();
    let compiled = compile(&g, &CompileOptions { threads: Some(1), ..Default::default() }).unwrap();
    assert_eq!(compiled.threads(), 1);
    let inputs = [("x".to_string(), x)];
    let one = compiled.run(&inputs).unwrap();
    let before = compiled.specialization_for(&inputs).unwrap();
    compiled.set_threads(Some(2));
    let two = compiled.run(&inputs).unwrap();
    let after = compiled.specialization_for(&inputs).unwrap();
    assert!(std::rc::Rc::ptr_eq(&before, &after), "changing the thread count does not recompile");
    assert_bitwise(&one[0].1, &two[0].1, "1 vs 2 threads");
    compiled.set_threads(Some(0));
    assert_eq!(compiled.threads(), 1, "0 threads counts as 1");
    compiled.set_threads(None);
    assert_eq!(compiled.threads(), kiln_backend_llvm::available_threads());
}

#[test]
fn run_into_writes_outputs_in_place() {
    let mut rng = StdRng::seed_from_u64(4);
    let shape = [32, 1024];
    let mut g = Graph::new("softmax");
    let xv = input(&mut g, "x", &shape);
    let y = node(&mut g, "sm", Op::Softmax { axis: -1 }, &[xv]);
    let z = node(&mut g, "neg", Op::Unary(kiln_ir::op::UnaryOp::Neg), &[y]);
    g.add_output(z);
    kiln_ir::infer_types(&mut g).unwrap();
    let compiled = compile(&g, &CompileOptions::default()).unwrap();
    let mut outputs = Vec::new();
    let mut pointers = Vec::new();
    for run in 0..3 {
        let x = random(&mut rng, &shape, -4.0, 4.0);
        let inputs = [("x".to_string(), x)];
        compiled.run_into(&inputs, &mut outputs).unwrap();
        assert_eq!(outputs.len(), 1);
        let want = compiled.run(&inputs).unwrap();
        assert_bitwise(&outputs[0], &want[0].1, &format!("run {run}"));
        pointers.push(match &outputs[0] {
            Tensor::F32(a) => a.as_ptr() as usize,
            other => panic!("an f32 output, got {}", other.dtype()),
        });
    }
    assert!(pointers.windows(2).all(|w| w[0] == w[1]), "the output is reused: {pointers:?}");
    // A tensor of the wrong shape is replaced, not written past its end.
    let mut wrong = vec![Tensor::from_f64s(DType::F32, &[3], &[0.0; 3]), Tensor::from_f64s(DType::F32, &[1], &[0.0])];
    let x = random(&mut rng, &shape, -4.0, 4.0);
    compiled.run_into(&[("x".to_string(), x)], &mut wrong).unwrap();
    assert_eq!(wrong.len(), 1, "extra entries are dropped");
    assert_eq!(wrong[0].shape(), &shape);
    assert_eq!(compiled.output_names(), vec!["neg.out".to_string()]);
}

#[test]
fn fused_elementwise_loops_split_across_threads() {
    let mut rng = StdRng::seed_from_u64(5);
    // A single flat loop (cut into chunks, the last one partial) and a
    // broadcasting 2-deep nest (split by rows).
    for (xs, ys) in [(vec![300, 1000], vec![300, 1000]), (vec![513, 700], vec![700])] {
        let mut g = Graph::new("fused");
        let x = input(&mut g, "x", &xs);
        let y = input(&mut g, "y", &ys);
        let s = node(&mut g, "add", Op::Binary(BinaryOp::Add), &[x, y]);
        let t = node(&mut g, "tanh", Op::Unary(UnaryOp::Tanh), &[s]);
        let z = node(&mut g, "gelu", Op::Gelu { approximate: GeluApproximation::None }, &[t]);
        g.add_output(z);
        let feed =
            [("x".to_string(), random(&mut rng, &xs, -3.0, 3.0)), ("y".to_string(), random(&mut rng, &ys, -1.0, 1.0))];
        check_threads(g, &feed, &CompileOptions::default(), true, &format!("fused {xs:?} + {ys:?}"));
    }
}

#[test]
fn normalizations_split_rows_across_threads() {
    let mut rng = StdRng::seed_from_u64(6);
    for (shape, axis, rms) in
        [(vec![1000, 257], -1i64, false), (vec![3, 333, 200], -1, true), (vec![9, 40, 500], 1, false)]
    {
        let d: Vec<usize> = shape[(axis.rem_euclid(shape.len() as i64)) as usize..].to_vec();
        let mut g = Graph::new("norm");
        let x = input(&mut g, "x", &shape);
        let sc = input(&mut g, "scale", &d);
        let mut feed = vec![
            ("x".to_string(), random(&mut rng, &shape, -2.0, 2.0)),
            ("scale".to_string(), random(&mut rng, &d, 0.5, 1.5)),
        ];
        let y = if rms {
            node(&mut g, "rms", Op::RMSNormalization { axis, epsilon: 1e-5, stash_type: DType::F32 }, &[x, sc])
        } else {
            let b = input(&mut g, "bias", &d);
            feed.push(("bias".to_string(), random(&mut rng, &d, -1.0, 1.0)));
            node(&mut g, "ln", Op::LayerNormalization { axis, epsilon: 1e-5, stash_type: DType::F32 }, &[x, sc, b])
        };
        g.add_output(y);
        check_threads(g, &feed, &CompileOptions::default(), true, &format!("norm {shape:?} axis {axis} rms {rms}"));
    }
}

#[test]
fn reductions_split_outputs_across_threads() {
    let mut rng = StdRng::seed_from_u64(7);
    let x = random(&mut rng, &[300, 40, 50], 0.1, 2.0);
    for kind in [ReduceKind::Sum, ReduceKind::Max, ReduceKind::LogSumExp, ReduceKind::L2] {
        for axes in [vec![1], vec![-1], vec![0, 2]] {
            let mut g = Graph::new("reduce");
            let xv = input(&mut g, "x", &[300, 40, 50]);
            let op = Op::Reduce { kind, axes: Some(axes.clone()), keepdims: true, noop_with_empty_axes: false };
            let y = node(&mut g, "r", op, &[xv]);
            g.add_output(y);
            check_threads(
                g,
                &[("x".into(), x.clone())],
                &CompileOptions::default(),
                true,
                &format!("{} {axes:?}", kind.name()),
            );
        }
    }
}

#[test]
fn copies_split_across_threads() {
    let mut rng = StdRng::seed_from_u64(8);
    let x = random(&mut rng, &[30, 200, 300], -1.0, 1.0);
    let feed = [("x".to_string(), x)];
    // Transpose.
    let mut g = Graph::new("transpose");
    let xv = input(&mut g, "x", &[30, 200, 300]);
    let y = node(&mut g, "t", Op::Transpose { perm: Some(vec![2, 0, 1]) }, &[xv]);
    g.add_output(y);
    check_threads(g, &feed, &CompileOptions::default(), true, "transpose");
    // Slice with a step.
    let mut g = Graph::new("slice");
    let xv = input(&mut g, "x", &[30, 200, 300]);
    let st = g.add_initializer("starts", Tensor::vec_i64(&[1, 299])).unwrap();
    let en = g.add_initializer("ends", Tensor::vec_i64(&[200, -1000])).unwrap();
    let ax = g.add_initializer("axes", Tensor::vec_i64(&[1, 2])).unwrap();
    let sp = g.add_initializer("steps", Tensor::vec_i64(&[1, -2])).unwrap();
    let id = g.add_node("slice", Op::Slice, vec![Some(xv), Some(st), Some(en), Some(ax), Some(sp)], &["y"]).unwrap();
    g.add_output(g.node(id).output(0).unwrap());
    check_threads(g, &feed, &CompileOptions::default(), true, "slice");
    // A flat slice (contiguous rows): one loop cut into chunks.
    let mut g = Graph::new("slice");
    let xv = input(&mut g, "x", &[30, 200, 300]);
    let st = g.add_initializer("starts", Tensor::vec_i64(&[3])).unwrap();
    let en = g.add_initializer("ends", Tensor::vec_i64(&[29])).unwrap();
    let ax = g.add_initializer("axes", Tensor::vec_i64(&[0])).unwrap();
    let id = g.add_node("slice", Op::Slice, vec![Some(xv), Some(st), Some(en), Some(ax)], &["y"]).unwrap();
    g.add_output(g.node(id).output(0).unwrap());
    check_threads(g, &feed, &CompileOptions::default(), true, "flat slice");
    // Split and Concat along the last axis.
    let mut g = Graph::new("split");
    let xv = input(&mut g, "x", &[30, 200, 300]);
    let sizes = g.add_initializer("sizes", Tensor::vec_i64(&[100, 150, 50])).unwrap();
    let id = g
        .add_node("split", Op::Split { axis: -1, num_outputs: None }, vec![Some(xv), Some(sizes)], &["a", "b", "c"])
        .unwrap();
    let (a, c) = (g.node(id).output(0).unwrap(), g.node(id).output(2).unwrap());
    let b = g.node(id).output(1).unwrap();
    g.add_output(b);
    let cat = node(&mut g, "cat", Op::Concat { axis: -1 }, &[c, a]);
    g.add_output(cat);
    check_threads(g, &feed, &CompileOptions::default(), true, "split and concat");
    // A graph output that is a view of the input: a copy step.
    let mut g = Graph::new("copy");
    let xv = input(&mut g, "x", &[30, 200, 300]);
    let y = node(&mut g, "id", Op::Identity, &[xv]);
    g.add_output(y);
    check_threads(g, &feed, &CompileOptions::default(), true, "copy");
}

#[test]
fn gather_splits_indices_and_reports_bad_ones_from_any_thread() {
    let mut rng = StdRng::seed_from_u64(9);
    let mut g = Graph::new("gather");
    let x = input(&mut g, "x", &[1000, 256]);
    let i = g.add_input("i", TensorType::fixed(DType::I64, &[7, 90])).unwrap();
    let y = node(&mut g, "embed", Op::Gather { axis: 0 }, &[x, i]);
    g.add_output(y);
    let idx: Vec<i64> = (0..630).map(|k| if k % 3 == 0 { -1 - (k % 1000) } else { (k * 7) % 1000 }).collect();
    let feed = [
        ("x".to_string(), random(&mut rng, &[1000, 256], -1.0, 1.0)),
        ("i".to_string(), Tensor::from_i64s(DType::I64, &[7, 90], &idx)),
    ];
    check_threads(g.clone(), &feed, &CompileOptions::default(), true, "gather");
    kiln_ir::infer_types(&mut g).unwrap();
    let compiled = compile(&g, &CompileOptions { threads: Some(2), ..Default::default() }).unwrap();
    // A bad index in the first and in the last thread's share.
    for at in [3, 629] {
        let mut bad = idx.clone();
        bad[at] = 1000;
        let feed = [feed[0].clone(), ("i".to_string(), Tensor::from_i64s(DType::I64, &[7, 90], &bad))];
        let err = compiled.run(&feed).expect_err("index out of range");
        assert!(err.to_string().contains("embed") && err.to_string().contains("index"), "{err}");
    }
}

fn attention_attrs(is_causal: bool) -> kiln_ir::op::AttentionAttrs {
    kiln_ir::op::AttentionAttrs {
        is_causal,
        q_num_heads: None,
        kv_num_heads: None,
        qk_matmul_output_mode: 0,
        scale: None,
        softcap: 0.0,
        softmax_precision: None,
    }
}

#[test]
fn attention_splits_heads_and_query_blocks_across_threads() {
    let mut rng = StdRng::seed_from_u64(10);
    // Grouped-query heads, a sequence that is not a multiple of the query
    // block, causal and not, with a float mask.
    for (causal, masked) in [(false, false), (true, false), (false, true)] {
        let (qs, ks) = ([2usize, 4, 300, 64], [2usize, 2, 300, 64]);
        let mut g = Graph::new("attention");
        let q = input(&mut g, "q", &qs);
        let k = input(&mut g, "k", &ks);
        let v = input(&mut g, "v", &ks);
        let mut ins = vec![Some(q), Some(k), Some(v)];
        let mut feed = vec![
            ("q".to_string(), random(&mut rng, &qs, -1.0, 1.0)),
            ("k".to_string(), random(&mut rng, &ks, -1.0, 1.0)),
            ("v".to_string(), random(&mut rng, &ks, -1.0, 1.0)),
        ];
        if masked {
            ins.push(Some(input(&mut g, "mask", &[300, 300])));
            feed.push(("mask".to_string(), random(&mut rng, &[300, 300], -2.0, 0.0)));
        }
        let id = g.add_node("attn", Op::Attention(attention_attrs(causal)), ins, &["y"]).unwrap();
        g.add_output(g.node(id).output(0).unwrap());
        check_threads(g, &feed, &CompileOptions::default(), true, &format!("attention causal {causal} mask {masked}"));
    }
}

#[test]
fn attention_fills_present_caches_before_the_items_read_them() {
    let mut rng = StdRng::seed_from_u64(11);
    let (qs, ks, past) = ([1usize, 4, 200, 64], [1usize, 4, 200, 64], [1usize, 4, 100, 64]);
    let mut g = Graph::new("attention");
    let names = ["q", "k", "v", "", "past_key", "past_value"];
    let shapes: [&[usize]; 6] = [&qs, &ks, &ks, &[], &past, &past];
    let mut ins = Vec::new();
    let mut feed = Vec::new();
    for (name, shape) in names.iter().zip(shapes) {
        if name.is_empty() {
            ins.push(None);
            continue;
        }
        ins.push(Some(input(&mut g, name, shape)));
        feed.push((name.to_string(), random(&mut rng, shape, -1.0, 1.0)));
    }
    let id =
        g.add_node("attn", Op::Attention(attention_attrs(true)), ins, &["y", "present_key", "present_value"]).unwrap();
    for slot in 0..3 {
        g.add_output(g.node(id).output(slot).unwrap());
    }
    check_threads(g, &feed, &CompileOptions::default(), true, "attention with past caches");
}

#[test]
fn rotary_embedding_splits_positions_across_threads() {
    let mut rng = StdRng::seed_from_u64(12);
    let (xs, cache) = ([2usize, 12, 512, 64], [2usize, 512, 32]);
    for interleaved in [false, true] {
        let mut g = Graph::new("rotary");
        let x = input(&mut g, "x", &xs);
        let cos = input(&mut g, "cos", &cache);
        let sin = input(&mut g, "sin", &cache);
        let op = Op::RotaryEmbedding { interleaved, num_heads: None, rotary_embedding_dim: None };
        let y = node(&mut g, "rope", op, &[x, cos, sin]);
        g.add_output(y);
        let feed = [
            ("x".to_string(), random(&mut rng, &xs, -1.0, 1.0)),
            ("cos".to_string(), random(&mut rng, &cache, -1.0, 1.0)),
            ("sin".to_string(), random(&mut rng, &cache, -1.0, 1.0)),
        ];
        check_threads(g, &feed, &CompileOptions::default(), true, &format!("rotary interleaved {interleaved}"));
    }
}

/// Kernels keep their per-thread scratch on the stack (an Attention block
/// of 512 rows takes about 312 KiB, a packed A block 168 KiB); the C ABI
/// promises that a run needs at most 1 MiB of the calling thread's stack.
/// Both kernels run here on one thread, the caller's, with exactly that.
#[test]
fn a_run_fits_a_one_mebibyte_stack() {
    let mut rng = StdRng::seed_from_u64(12);
    // 16 heads of 512 queries: 16 blocks of the tallest height.
    let qs = [1usize, 16, 512, 64];
    let mut g = Graph::new("stack");
    let q = input(&mut g, "q", &qs);
    let k = input(&mut g, "k", &qs);
    let v = input(&mut g, "v", &qs);
    let id =
        g.add_node("attn", Op::Attention(attention_attrs(false)), vec![Some(q), Some(k), Some(v)], &["y"]).unwrap();
    let y = g.node(id).output(0).unwrap();
    // y's elements as a [256, 2048] A, transposed (so packed on the
    // stack, 168 × 256 at a time), times a weight.
    let flat = g.add_initializer("flat", Tensor::from_f64s(DType::I64, &[2], &[256.0, 2048.0])).unwrap();
    let yt = node(&mut g, "reshape", Op::Reshape { allowzero: false }, &[y, flat]);
    let w = input(&mut g, "w", &[256, 300]);
    let attrs = kiln_ir::op::GemmAttrs { alpha: 1.0, beta: 0.0, trans_a: true, trans_b: false };
    let out = node(&mut g, "gemm", Op::Gemm(attrs), &[yt, w]);
    g.add_output(out);
    kiln_ir::infer_types(&mut g).unwrap();
    let feed = vec![
        ("q".to_string(), random(&mut rng, &qs, -1.0, 1.0)),
        ("k".to_string(), random(&mut rng, &qs, -1.0, 1.0)),
        ("v".to_string(), random(&mut rng, &qs, -1.0, 1.0)),
        ("w".to_string(), random(&mut rng, &[256, 300], -1.0, 1.0)),
    ];
    let want = kiln_ir::interp::run(&g, &feed).unwrap();
    let opts = CompileOptions { threads: Some(1), ..CompileOptions::default() };
    // A compiled graph stays on its thread: compile and run there.
    let got = std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn_scoped(s, || compile(&g, &opts).unwrap().run(&feed).unwrap())
            .unwrap()
            .join()
            .unwrap()
    });
    assert_close(&got[0].1, &want[0].1, "attention + gemm on a 1 MiB stack");
}
