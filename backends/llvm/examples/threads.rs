//! Speed-up of the parallel kernels: each case compiled once, then run on 1
//! thread and on N threads (default 2), alternating, into reused outputs;
//! prints the medians, the minimums and the ratios (the figures come from
//! one process, so machine noise hits both alike; on a loaded machine the
//! minimum is the steadier figure). Run with
//! `cargo run --release -p kiln-backend-llvm --example threads [N] [filter]`.

use kiln_backend_llvm::{compile, CompileOptions};
use kiln_ir::dtype::DType;
use kiln_ir::graph::{Graph, ValueId};
use kiln_ir::op::{GeluApproximation, Op, ReduceKind};
use kiln_ir::tensor::Tensor;
use kiln_ir::types::TensorType;
use std::time::Instant;

fn random(shape: &[usize], seed: u64, scale: f64) -> Tensor {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
        })
        .collect();
    Tensor::from_f64s(DType::F32, shape, &v)
}

fn input(g: &mut Graph, name: &str, shape: &[usize]) -> ValueId {
    g.add_input(name, TensorType::fixed(DType::F32, shape)).expect("fresh name")
}

fn node(g: &mut Graph, name: &str, op: Op, inputs: &[ValueId]) -> ValueId {
    let id = g
        .add_node(name, op, inputs.iter().map(|&v| Some(v)).collect(), &[&format!("{name}.out")])
        .expect("well-formed node");
    g.node(id).output(0).expect("one output")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A one-op graph on one `[shape]` input (plus extra inputs `extra`).
fn case(name: &str, shape: &[usize], extra: &[(&str, Vec<usize>)], op: Op) -> (String, Graph, Vec<(String, Tensor)>) {
    let mut g = Graph::new(name);
    let x = input(&mut g, "x", shape);
    let mut ins = vec![x];
    let mut tensors = vec![("x".to_string(), random(shape, 1, 4.0))];
    for (i, (n, s)) in extra.iter().enumerate() {
        ins.push(input(&mut g, n, s));
        tensors.push((n.to_string(), random(s, 2 + i as u64, 1.0)));
    }
    let y = node(&mut g, "op", op, &ins);
    g.add_output(y);
    (name.to_string(), g, tensors)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2);
    let filter = args.get(2).cloned().unwrap_or_default();
    let mut cases = vec![
        case("softmax [1024, 32000]", &[1024, 32000], &[], Op::Softmax { axis: -1 }),
        case("softmax [256, 2048] (in cache)", &[256, 2048], &[], Op::Softmax { axis: -1 }),
        case("logsoftmax [4096, 4096]", &[4096, 4096], &[], Op::LogSoftmax { axis: -1 }),
        case("gelu [4096, 3072]", &[4096, 3072], &[], Op::Gelu { approximate: GeluApproximation::None }),
        case(
            "layernorm [8192, 768]",
            &[8192, 768],
            &[("scale", vec![768]), ("bias", vec![768])],
            Op::LayerNormalization { axis: -1, epsilon: 1e-5, stash_type: DType::F32 },
        ),
        case(
            "rmsnorm [8192, 768]",
            &[8192, 768],
            &[("scale", vec![768])],
            Op::RMSNormalization { axis: -1, epsilon: 1e-5, stash_type: DType::F32 },
        ),
        case(
            "reduce-sum rows [8192, 1024]",
            &[8192, 1024],
            &[],
            Op::Reduce { kind: ReduceKind::Sum, axes: Some(vec![-1]), keepdims: true, noop_with_empty_axes: false },
        ),
        case("transpose [4096, 4096]", &[4096, 4096], &[], Op::Transpose { perm: None }),
    ];
    // Elementwise chain: (x + y) * x, fused into one loop.
    {
        let shape = [4096usize, 4096];
        let mut g = Graph::new("fused");
        let x = input(&mut g, "x", &shape);
        let y = input(&mut g, "y", &shape);
        let s = node(&mut g, "add", Op::Binary(kiln_ir::op::BinaryOp::Add), &[x, y]);
        let p = node(&mut g, "mul", Op::Binary(kiln_ir::op::BinaryOp::Mul), &[s, x]);
        let e = node(&mut g, "tanh", Op::Unary(kiln_ir::op::UnaryOp::Tanh), &[p]);
        g.add_output(e);
        let ins = vec![("x".to_string(), random(&shape, 1, 2.0)), ("y".to_string(), random(&shape, 2, 2.0))];
        cases.push(("fused add-mul-tanh [4096, 4096]".to_string(), g, ins));
    }
    println!(
        "{:<34} {:>10} {:>10} {:>8} {:>10} {:>10} {:>8}",
        "case",
        "1 median",
        format!("{threads} median"),
        "speedup",
        "1 min",
        format!("{threads} min"),
        "speedup"
    );
    for (name, mut g, inputs) in cases {
        if !name.contains(&filter) {
            continue;
        }
        kiln_ir::infer_types(&mut g).expect("the graph is well typed");
        let compiled = compile(&g, &CompileOptions::default()).expect("compiles");
        let mut outputs = Vec::new();
        let (mut one, mut many) = (Vec::new(), Vec::new());
        for round in 0..12 {
            for (t, times) in [(1, &mut one), (threads, &mut many)] {
                compiled.set_threads(Some(t));
                let start = Instant::now();
                compiled.run_into(&inputs, &mut outputs).expect("runs");
                // The first round warms up (pages, libomp's team).
                if round > 0 {
                    times.push(start.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
        let (lo1, lon) = (min(&one), min(&many));
        let (a, b) = (median(one), median(many));
        println!("{name:<34} {a:>8.2}ms {b:>8.2}ms {:>7.2}x {lo1:>8.2}ms {lon:>8.2}ms {:>7.2}x", a / b, lo1 / lon);
    }
}
