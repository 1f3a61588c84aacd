//! The packed GEMM behind MatMul and Gemm against kiln's interpreter:
//! edge sizes around the register tile (1, MR ± 1, NR ± 1), K = 1 and K
//! across several packed blocks, transposed operands, batch broadcasting,
//! Gemm's alpha/beta and broadcast C, f64/f16/bf16, the blocked-loop
//! baseline kernel, and MatMulInteger and QLinearMatMul (u8/i8, zero points,
//! scales) exactly.

use kiln_backend_llvm::{compile, CompileOptions, MatMulKernel};
use kiln_ir::dtype::DType;
use kiln_ir::graph::{Graph, ValueId};
use kiln_ir::op::{GemmAttrs, Op};
use kiln_ir::tensor::Tensor;
use kiln_ir::types::TensorType;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn random(rng: &mut StdRng, dtype: DType, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    Tensor::from_f64s(dtype, shape, &v)
}

/// Relative error allowed per unit of K for each dtype: rounding grows
/// with the length of the sums, whose order differs between the kernels.
fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 1e-13,
        DType::F16 => 2e-3,
        DType::BF16 => 1.6e-2,
        DType::I32 | DType::U8 | DType::I8 => 0.0,
        _ => 1e-6,
    }
}

/// Compiles and runs `g` with `opts`, and compares the output with the
/// interpreter's: `|got - want| ≤ tol·(1 + |want|) + tol·k` (inputs are in
/// [-1, 1], so `k` bounds the magnitude of the partial sums).
fn check_with(mut g: Graph, inputs: &[(String, Tensor)], k: usize, opts: &CompileOptions, what: &str) -> String {
    kiln_ir::infer_types(&mut g).unwrap_or_else(|e| panic!("{what}: inference: {e}"));
    let compiled = compile(&g, opts).unwrap_or_else(|e| panic!("{what}: compile: {e}"));
    let got = compiled.run(inputs).unwrap_or_else(|e| panic!("{what}: run: {e}"));
    let want = kiln_ir::interp::run(&g, inputs).unwrap_or_else(|e| panic!("{what}: interpreter: {e}"));
    let (a, b) = (&got[0].1, &want[0].1);
    assert_eq!(a.dtype(), b.dtype(), "{what}: dtype");
    assert_eq!(a.shape(), b.shape(), "{what}: shape");
    let tol = tolerance(a.dtype());
    for (i, (x, y)) in a.to_f64s().iter().zip(b.to_f64s()).enumerate() {
        let bound = tol * (1.0 + y.abs()) + tol * k as f64;
        assert!((x - y).abs() <= bound, "{what}: element {i} is {x}, interpreter says {y}");
    }
    compiled.specialization_for(inputs).expect("compiled above").ir_optimized.clone()
}

fn check(g: Graph, inputs: &[(String, Tensor)], k: usize, what: &str) -> String {
    check_with(g, inputs, k, &CompileOptions::default(), what)
}

fn input(g: &mut Graph, name: &str, dtype: DType, shape: &[usize]) -> ValueId {
    g.add_input(name, TensorType::fixed(dtype, shape)).expect("fresh name")
}

fn matmul_graph(dtype: DType, sa: &[usize], sb: &[usize]) -> Graph {
    let mut g = Graph::new("matmul");
    let (a, b) = (input(&mut g, "a", dtype, sa), input(&mut g, "b", dtype, sb));
    let id = g.add_node("mm", Op::MatMul, vec![Some(a), Some(b)], &["y"]).expect("valid node");
    let y = g.node(id).output(0).expect("one output");
    g.add_output(y);
    g
}

fn run_matmul(rng: &mut StdRng, dtype: DType, sa: &[usize], sb: &[usize], opts: &CompileOptions) -> String {
    let g = matmul_graph(dtype, sa, sb);
    let (a, b) = (random(rng, dtype, sa), random(rng, dtype, sb));
    let k = sa[sa.len() - 1];
    check_with(g, &[("a".into(), a), ("b".into(), b)], k, opts, &format!("{dtype} MatMul {sa:?} x {sb:?}"))
}

#[test]
fn matmul_edges_around_the_register_tile() {
    let mut rng = StdRng::seed_from_u64(11);
    let opts = CompileOptions::default();
    // Rows around MR (14 with AVX-512, 6 otherwise), columns around NR
    // (32 or 16), and depths of one, odd and several packed blocks.
    let ms = [2, 5, 6, 7, 13, 14, 15, 29, 170];
    let ns = [2, 15, 16, 17, 31, 32, 33, 65];
    let ks = [1, 3, 257, 600];
    let mut count = 0;
    for (i, &m) in ms.iter().enumerate() {
        for (j, &n) in ns.iter().enumerate() {
            // Each depth with a varying subset of the shapes keeps the run short.
            let k = ks[(i + j) % ks.len()];
            run_matmul(&mut rng, DType::F32, &[m, k], &[k, n], &opts);
            count += 1;
        }
    }
    assert_eq!(count, ms.len() * ns.len());
}

#[test]
fn matmul_larger_than_one_packed_block() {
    let mut rng = StdRng::seed_from_u64(12);
    let opts = CompileOptions::default();
    // More rows than one A block (168), more columns than one B block
    // (2048), and K across blocks (256) with a ragged last block.
    run_matmul(&mut rng, DType::F32, &[200, 300], &[300, 70], &opts);
    run_matmul(&mut rng, DType::F32, &[9, 40], &[40, 2100], &opts);
    run_matmul(&mut rng, DType::F32, &[64, 1000], &[1000, 48], &opts);
    // Below the parallel threshold: the serial blocked loops (emit_gemm)
    // over two row blocks and two K blocks.
    run_matmul(&mut rng, DType::F32, &[170, 300], &[300, 33], &opts);
}

#[test]
fn matrix_vector_products_and_vectors() {
    let mut rng = StdRng::seed_from_u64(13);
    let opts = CompileOptions::default();
    for (sa, sb) in [
        (vec![1, 37], vec![37, 50]),
        (vec![37], vec![37, 50]),
        (vec![20, 37], vec![37, 1]),
        (vec![20, 37], vec![37]),
        (vec![3, 1, 37], vec![37, 40]),
        (vec![37], vec![37]),
    ] {
        run_matmul(&mut rng, DType::F32, &sa, &sb, &opts);
    }
}

#[test]
fn batched_matmul_broadcasts_like_numpy() {
    let mut rng = StdRng::seed_from_u64(14);
    let opts = CompileOptions::default();
    for (sa, sb) in [
        (vec![2, 1, 15, 9], vec![3, 9, 33]),
        (vec![17, 20], vec![4, 20, 18]),
        (vec![5, 17, 20], vec![20, 18]),
        (vec![2, 3, 16, 64], vec![2, 3, 64, 40]),
        (vec![1, 4, 30, 8], vec![1, 4, 8, 30]),
    ] {
        run_matmul(&mut rng, DType::F32, &sa, &sb, &opts);
    }
}

#[test]
fn gemm_transposes_alpha_beta_and_broadcast_c() {
    let mut rng = StdRng::seed_from_u64(15);
    let (m, k, n) = (19, 300, 35);
    let c_shapes: [&[usize]; 5] = [&[n], &[m, 1], &[1, n], &[m, n], &[]];
    let mut count = 0;
    for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
        for (ci, &cs) in c_shapes.iter().enumerate() {
            let combos = [(1.0f32, 1.0f32), (0.5, -2.0), (1.5, 0.0)];
            {
                let (alpha, beta) = combos[(count + ci) % combos.len()];
                let sa: Vec<usize> = if trans_a { vec![k, m] } else { vec![m, k] };
                let sb: Vec<usize> = if trans_b { vec![n, k] } else { vec![k, n] };
                let mut g = Graph::new("gemm");
                let (av, bv) = (input(&mut g, "a", DType::F32, &sa), input(&mut g, "b", DType::F32, &sb));
                // The last C shape is tried without a C input.
                let with_c = ci + 1 < c_shapes.len();
                let cv = with_c.then(|| input(&mut g, "c", DType::F32, cs));
                let attrs = GemmAttrs { alpha, beta, trans_a, trans_b };
                let id = g.add_node("gemm", Op::Gemm(attrs), vec![Some(av), Some(bv), cv], &["y"]).expect("valid");
                let y = g.node(id).output(0).expect("one output");
                g.add_output(y);
                let mut inputs = vec![
                    ("a".into(), random(&mut rng, DType::F32, &sa)),
                    ("b".into(), random(&mut rng, DType::F32, &sb)),
                ];
                if with_c {
                    inputs.push(("c".into(), random(&mut rng, DType::F32, cs)));
                }
                let what = format!("Gemm tA={trans_a} tB={trans_b} C={cs:?} with_c={with_c} alpha={alpha} beta={beta}");
                check(g, &inputs, k, &what);
                count += 1;
            }
        }
    }
    assert_eq!(count, 20);
}

#[test]
fn f64_f16_and_bf16_products() {
    let mut rng = StdRng::seed_from_u64(16);
    let opts = CompileOptions::default();
    for dtype in [DType::F64, DType::F16, DType::BF16] {
        run_matmul(&mut rng, dtype, &[17, 300], &[300, 33], &opts);
        run_matmul(&mut rng, dtype, &[2, 15, 8], &[8, 70], &opts);
    }
}

#[test]
fn the_blocked_baseline_matches_too() {
    let mut rng = StdRng::seed_from_u64(17);
    let opts = CompileOptions { matmul: MatMulKernel::Blocked, ..CompileOptions::default() };
    let ir = run_matmul(&mut rng, DType::F32, &[30, 70], &[70, 50], &opts);
    assert!(!ir.contains("kiln_gemm_ukr"), "the blocked baseline must not use the packed microkernel");
}

#[test]
fn the_microkernel_is_explicit_vector_fma() {
    let mut rng = StdRng::seed_from_u64(18);
    let opts = CompileOptions::default();
    let lanes = kiln_backend_llvm::compile(&matmul_graph(DType::F32, &[2, 2], &[2, 2]), &opts)
        .expect("compiles")
        .target()
        .f32_lanes;
    let ir = run_matmul(&mut rng, DType::F32, &[64, 64], &[64, 64], &opts);
    assert!(ir.contains("kiln_gemm_ukr_f32"), "no microkernel in the optimized IR");
    let fma = format!("@llvm.fma.v{lanes}f32");
    assert!(ir.contains(&fma), "no {fma} in the optimized IR");
    // Matrix-vector products keep the simple loops.
    let ir = run_matmul(&mut rng, DType::F32, &[1, 64], &[64, 64], &opts);
    assert!(!ir.contains("kiln_gemm_ukr"), "a row-vector product went through the packed kernel");
}

fn random_int(rng: &mut StdRng, dtype: DType, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let (lo, hi) = if dtype == DType::U8 { (0, 256) } else { (-128, 128) };
    let v: Vec<i64> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
    Tensor::from_i64s(dtype, shape, &v)
}

/// The shapes of A's and B's zero points, when present.
type ZeroPointShapes<'a> = (Option<&'a [usize]>, Option<&'a [usize]>);

/// MatMulInteger with optional zero points of the given shapes.
fn run_matmul_integer(
    rng: &mut StdRng,
    (adt, bdt): (DType, DType),
    (sa, sb): (&[usize], &[usize]),
    (za, zb): ZeroPointShapes,
) {
    let mut g = Graph::new("matmulinteger");
    let (a, b) = (input(&mut g, "a", adt, sa), input(&mut g, "b", bdt, sb));
    let mut inputs = vec![("a".to_string(), random_int(rng, adt, sa)), ("b".to_string(), random_int(rng, bdt, sb))];
    let mut operands = vec![Some(a), Some(b)];
    for (name, dtype, shape) in [("a_zero", adt, za), ("b_zero", bdt, zb)] {
        operands.push(shape.map(|s| {
            inputs.push((name.to_string(), random_int(rng, dtype, s)));
            input(&mut g, name, dtype, s)
        }));
    }
    while operands.last() == Some(&None) {
        operands.pop();
    }
    let id = g.add_node("mmi", Op::MatMulInteger, operands, &["y"]).expect("valid node");
    let y = g.node(id).output(0).expect("one output");
    g.add_output(y);
    let what = format!("MatMulInteger {adt}{sa:?} x {bdt}{sb:?}, zero points {za:?} {zb:?}");
    check(g, &inputs, 0, &what);
}

#[test]
fn matmul_integer_all_signs_and_zero_points() {
    let mut rng = StdRng::seed_from_u64(19);
    let mut count = 0;
    for adt in [DType::U8, DType::I8] {
        for bdt in [DType::U8, DType::I8] {
            let (m, k, n) = (15, 301, 33);
            let zero_points: [ZeroPointShapes; 4] =
                [(None, None), (Some(&[]), Some(&[])), (Some(&[m]), Some(&[n])), (None, Some(&[1]))];
            for zp in zero_points {
                run_matmul_integer(&mut rng, (adt, bdt), (&[m, k], &[k, n]), zp);
                count += 1;
            }
        }
    }
    // Batches, vectors, K = 1, a single row.
    let shapes: [(&[usize], &[usize]); 5] =
        [(&[2, 1, 7, 9], &[3, 9, 20]), (&[9], &[9, 20]), (&[7, 9], &[9]), (&[7, 1], &[1, 40]), (&[1, 64], &[64, 64])];
    for (sa, sb) in shapes {
        run_matmul_integer(&mut rng, (DType::U8, DType::I8), (sa, sb), (Some(&[]), None));
        count += 1;
    }
    assert_eq!(count, 21);
}

/// Runs a product on 1, 2 and 3 threads: the results match the
/// interpreter, are bitwise equal across thread counts (items split rows
/// and columns, never the sums), and the kernel forks.
fn check_parallel(mut g: Graph, inputs: &[(String, Tensor)], k: usize, what: &str) {
    kiln_ir::infer_types(&mut g).unwrap_or_else(|e| panic!("{what}: inference: {e}"));
    let compiled = compile(&g, &CompileOptions::default()).unwrap_or_else(|e| panic!("{what}: compile: {e}"));
    let want = kiln_ir::interp::run(&g, inputs).unwrap_or_else(|e| panic!("{what}: interpreter: {e}"));
    let mut first: Option<Vec<u8>> = None;
    for threads in [1, 2, 3] {
        compiled.set_threads(Some(threads));
        let got = compiled.run(inputs).unwrap_or_else(|e| panic!("{what}: run on {threads} threads: {e}"));
        let (a, b) = (&got[0].1, &want[0].1);
        assert_eq!(a.shape(), b.shape(), "{what}: shape");
        for (i, (x, y)) in a.to_f64s().iter().zip(b.to_f64s()).enumerate() {
            let bound = 1e-6 * (1.0 + y.abs()) + 1e-6 * k as f64;
            assert!((x - y).abs() <= bound, "{what} on {threads} threads: element {i} is {x}, interpreter says {y}");
        }
        let raw = a.to_raw_le();
        match &first {
            None => first = Some(raw),
            Some(one) => assert!(one == &raw, "{what}: {threads} threads differ from 1"),
        }
    }
    let spec = compiled.specialization_for(inputs).expect("compiled above");
    assert!(spec.ir_unoptimized.contains("@__kmpc_fork_call"), "{what}: the product does not fork");
}

#[test]
fn large_products_split_across_threads() {
    let mut rng = StdRng::seed_from_u64(20);
    // Several row blocks (MC = 168) with a ragged last one; few rows and
    // many columns (split into column slabs); batches with a broadcast B
    // and with one B per batch entry.
    for (sa, sb) in [
        (vec![400, 130], vec![130, 100]),
        (vec![20, 300], vec![300, 1100]),
        (vec![3, 70, 64], vec![64, 200]),
        (vec![2, 2, 50, 100], vec![2, 1, 100, 130]),
    ] {
        let g = matmul_graph(DType::F32, &sa, &sb);
        let (a, b) = (random(&mut rng, DType::F32, &sa), random(&mut rng, DType::F32, &sb));
        let k = sa[sa.len() - 1];
        check_parallel(g, &[("a".into(), a), ("b".into(), b)], k, &format!("MatMul {sa:?} x {sb:?}"));
    }
    // Gemm with A packed (transposed) or read in place, and C broadcast
    // along either axis or whole: the first K block adds beta·C to each
    // tile, full, tail (200 = 14·14 + 4 rows) and edge (90 = 2·32 + 26
    // columns) alike.
    let (m, k, n) = (200, 300, 90);
    for (trans_a, c_shape) in [(true, vec![n]), (false, vec![m, n]), (false, vec![m, 1])] {
        let sa = if trans_a { [k, m] } else { [m, k] };
        let mut g = Graph::new("gemm");
        let (av, bv, cv) = (
            input(&mut g, "a", DType::F32, &sa),
            input(&mut g, "b", DType::F32, &[n, k]),
            input(&mut g, "c", DType::F32, &c_shape),
        );
        let attrs = GemmAttrs { alpha: 0.5, beta: -1.5, trans_a, trans_b: true };
        let id = g.add_node("gemm", Op::Gemm(attrs), vec![Some(av), Some(bv), Some(cv)], &["y"]).expect("valid");
        let y = g.node(id).output(0).expect("one output");
        g.add_output(y);
        let inputs = [
            ("a".to_string(), random(&mut rng, DType::F32, &sa)),
            ("b".to_string(), random(&mut rng, DType::F32, &[n, k])),
            ("c".to_string(), random(&mut rng, DType::F32, &c_shape)),
        ];
        check_parallel(g, &inputs, k, &format!("Gemm trans_a={trans_a} with C {c_shape:?}"));
    }
}

#[test]
fn constant_weights_are_packed_at_compile_time() {
    let mut rng = StdRng::seed_from_u64(21);
    // One weight read by one MatMul (its unpacked copy is dropped), one
    // shared by two MatMuls, and a transposed Gemm weight with a bias.
    let (m, k, n) = (300, 200, 120);
    let mut g = Graph::new("weights");
    let x = input(&mut g, "x", DType::F32, &[m, k]);
    let w1 = g.add_initializer("w1", random(&mut rng, DType::F32, &[k, n])).expect("fresh name");
    let w2 = g.add_initializer("w2", random(&mut rng, DType::F32, &[n, n])).expect("fresh name");
    let wt = g.add_initializer("wt", random(&mut rng, DType::F32, &[n, n])).expect("fresh name");
    let bias = g.add_initializer("bias", random(&mut rng, DType::F32, &[n])).expect("fresh name");
    let mm = |g: &mut Graph, name: &str, op: Op, ins: Vec<Option<ValueId>>| {
        let id = g.add_node(name, op, ins, &[&format!("{name}.out")]).expect("valid node");
        g.node(id).output(0).expect("one output")
    };
    let h1 = mm(&mut g, "mm1", Op::MatMul, vec![Some(x), Some(w1)]);
    let h2 = mm(&mut g, "mm2", Op::MatMul, vec![Some(h1), Some(w2)]);
    let h3 = mm(&mut g, "mm3", Op::MatMul, vec![Some(h2), Some(w2)]);
    let attrs = GemmAttrs { alpha: 0.25, beta: 1.0, trans_a: false, trans_b: true };
    let y = mm(&mut g, "gemm", Op::Gemm(attrs), vec![Some(h3), Some(wt), Some(bias)]);
    g.add_output(y);
    let inputs = [("x".to_string(), random(&mut rng, DType::F32, &[m, k]))];
    check_parallel(g, &inputs, k * n * n, "chain of constant weights");
}

#[test]
fn wide_constant_weight_is_prepacked_past_the_run_time_cap() {
    // An LM-head-like weight whose packed copy (256 x 66016 f32, 67.6 MB)
    // exceeds what a product packs at run time (64 MiB): packed at compile
    // time instead, it still runs on the threads (and reads B untransposed,
    // row by row, while packing).
    let mut rng = StdRng::seed_from_u64(22);
    let (m, k, n) = (20, 256, 66000);
    let mut g = Graph::new("lm_head");
    let x = input(&mut g, "x", DType::F32, &[m, k]);
    let w = g.add_initializer("w", random(&mut rng, DType::F32, &[k, n])).expect("fresh name");
    let id = g.add_node("lm_head", Op::MatMul, vec![Some(x), Some(w)], &["logits"]).expect("valid node");
    let y = g.node(id).output(0).expect("one output");
    g.add_output(y);
    let inputs = [("x".to_string(), random(&mut rng, DType::F32, &[m, k]))];
    check_parallel(g, &inputs, k, "wide constant weight");
}

#[test]
fn few_rows_split_by_columns_or_rows() {
    // Products of few rows: a BERT MLP projection (128 rows, 384 columns)
    // with A row-major (read in place) splits into 32-column slabs; with A
    // transposed (packed per item) into blocks of 14-row multiples with a
    // short last one; 100 × 200 needs both. Each must fork and give the
    // same result on every thread count.
    let mut rng = StdRng::seed_from_u64(23);
    for (m, k, n, trans_a) in [(128, 1536, 384, false), (128, 1536, 384, true), (100, 1024, 200, false)] {
        let mut g = Graph::new("proj");
        let sa = if trans_a { [k, m] } else { [m, k] };
        let x = input(&mut g, "x", DType::F32, &sa);
        let w = g.add_initializer("w", random(&mut rng, DType::F32, &[k, n])).expect("fresh name");
        let attrs = GemmAttrs { alpha: 1.0, beta: 0.0, trans_a, trans_b: false };
        let id = g.add_node("proj", Op::Gemm(attrs), vec![Some(x), Some(w)], &["y"]).expect("valid node");
        let y = g.node(id).output(0).expect("one output");
        g.add_output(y);
        let inputs = [("x".to_string(), random(&mut rng, DType::F32, &sa))];
        check_parallel(g, &inputs, k, &format!("{m}x{k}x{n} trans_a={trans_a}"));
    }
}

/// Zero points near the middle of the range, so the shifted operands are
/// centred and the products stay moderate.
fn middle_int(rng: &mut StdRng, dtype: DType, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let mid = if dtype == DType::U8 { 128 } else { 0 };
    let v: Vec<i64> = (0..n).map(|_| mid + rng.random_range(-8..=8)).collect();
    Tensor::from_i64s(dtype, shape, &v)
}

fn random_scale(rng: &mut StdRng, dtype: DType, shape: &[usize], (lo, hi): (f64, f64)) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
    Tensor::from_f64s(dtype, shape, &v)
}

#[test]
fn qlinear_matmul_requantizes_like_the_reference() {
    let mut rng = StdRng::seed_from_u64(22);
    let mut count = 0;
    for (adt, bdt, ydt) in
        [(DType::U8, DType::U8, DType::U8), (DType::I8, DType::I8, DType::I8), (DType::U8, DType::I8, DType::I8)]
    {
        for sdt in [DType::F32, DType::F16] {
            for per_axis in [false, true] {
                let (sa, sb): (Vec<usize>, Vec<usize>) =
                    if per_axis { (vec![19, 70], vec![70, 37]) } else { (vec![2, 19, 70], vec![2, 70, 37]) };
                let (m, n) = (sa[sa.len() - 2], sb[sb.len() - 1]);
                let (ra, rb): (Vec<usize>, Vec<usize>) = if per_axis { (vec![m], vec![n]) } else { (vec![], vec![]) };
                let mut g = Graph::new("qlinearmatmul");
                let mut inputs: Vec<(String, Tensor)> = Vec::new();
                let mut add = |g: &mut Graph, name: &str, dtype: DType, shape: &[usize], t: Tensor| {
                    inputs.push((name.to_string(), t));
                    Some(input(g, name, dtype, shape))
                };
                let ops = vec![
                    add(&mut g, "a", adt, &sa, random_int(&mut rng, adt, &sa)),
                    add(&mut g, "a_scale", sdt, &ra, random_scale(&mut rng, sdt, &ra, (0.01, 0.05))),
                    add(&mut g, "a_zero", adt, &ra, middle_int(&mut rng, adt, &ra)),
                    add(&mut g, "b", bdt, &sb, random_int(&mut rng, bdt, &sb)),
                    add(&mut g, "b_scale", sdt, &rb, random_scale(&mut rng, sdt, &rb, (0.01, 0.05))),
                    add(&mut g, "b_zero", bdt, &rb, middle_int(&mut rng, bdt, &rb)),
                    add(&mut g, "y_scale", sdt, &[], random_scale(&mut rng, sdt, &[], (0.5, 2.0))),
                    add(&mut g, "y_zero", ydt, &[], middle_int(&mut rng, ydt, &[])),
                ];
                let id = g.add_node("q", Op::QLinearMatMul, ops, &["y"]).expect("valid node");
                let y = g.node(id).output(0).expect("one output");
                g.add_output(y);
                let what = format!("QLinearMatMul {adt} x {bdt} -> {ydt}, {sdt} scales, per axis {per_axis}");
                // Scales keep most results inside the output range, so the
                // rounding (not only the saturation) is compared.
                let mut typed = g.clone();
                kiln_ir::infer_types(&mut typed).expect("typed");
                let want = kiln_ir::interp::run(&typed, &inputs).expect("interpreter runs");
                let (lo, hi) = if ydt == DType::U8 { (0.0, 255.0) } else { (-128.0, 127.0) };
                let values = want[0].1.to_f64s();
                let inside = values.iter().filter(|&&v| v > lo && v < hi).count();
                assert!(inside * 2 > values.len(), "{what}: only {inside} of {} results unsaturated", values.len());
                check(g, &inputs, 0, &what);
                count += 1;
            }
        }
    }
    assert_eq!(count, 12);
}
