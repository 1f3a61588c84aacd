//! Intra-op parallelism: each parallel kernel gives the same result on one
//! thread and on several (bitwise: items are split, never the arithmetic of
//! one item), matches the interpreter, forks only when the work is large
//! enough; and the run-time paths around it (thread count read at run time,
//! outputs written in place, the arena kept between runs).

use kiln_backend_llvm::{compile, CompileOptions, SoftmaxAlgorithm};
use kiln_ir::dtype::DType;
use kiln_ir::graph::{Graph, ValueId};
use kiln_ir::op::Op;
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
    for (shape, axis) in [(vec![67, 2049], -1i64), (vec![5, 300, 97], 1), (vec![3, 131, 1000], -1)] {
        let x = random(&mut rng, &shape, -8.0, 8.0);
        for log in [false, true] {
            for algo in [SoftmaxAlgorithm::TwoPass, SoftmaxAlgorithm::ThreePass] {
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
