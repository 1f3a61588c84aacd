//! The packed GEMM against the blocked-loop baseline, in one process and one
//! run, single-threaded (and the packed GEMM on all threads): `cargo run --release -p kiln-backend-llvm --example
//! gemm_speed [M K N ...]` (default 1024 1024 1024, plus a few model
//! shapes). Prints the best of a few runs and GFLOP/s of each kernel. With
//! `KILN_GEMM_IR=FILE`, writes the optimized LLVM IR of the last packed
//! product there (for `llc`/`llvm-mca`).

use kiln_backend_llvm::{compile, CompileOptions, MatMulKernel};
use kiln_ir::dtype::DType;
use kiln_ir::graph::Graph;
use kiln_ir::op::Op;
use kiln_ir::tensor::Tensor;
use kiln_ir::types::TensorType;
use std::time::{Duration, Instant};

fn random(shape: &[usize], seed: u64) -> Tensor {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect();
    Tensor::from_f64s(DType::F32, shape, &v)
}

fn best(runs: usize, mut f: impl FnMut()) -> Duration {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .expect("at least one run")
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("sizes are integers")).collect();
    let shapes: Vec<[usize; 3]> = if args.len() >= 3 {
        args.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect()
    } else {
        vec![[1024, 1024, 1024], [128, 768, 3072], [128, 3072, 768], [4096, 64, 256]]
    };
    for [m, k, n] in shapes {
        let mut g = Graph::new("mm");
        let a = g.add_input("a", TensorType::fixed(DType::F32, &[m, k])).expect("fresh");
        let b = g.add_input("b", TensorType::fixed(DType::F32, &[k, n])).expect("fresh");
        let id = g.add_node("mm", Op::MatMul, vec![Some(a), Some(b)], &["y"]).expect("valid");
        let y = g.node(id).output(0).expect("one output");
        g.add_output(y);
        kiln_ir::infer_types(&mut g).expect("typed");
        let inputs = vec![("a".to_string(), random(&[m, k], 1)), ("b".to_string(), random(&[k, n], 2))];
        let flops = 2.0 * (m * n * k) as f64;
        let mut line = format!("MatMul {m}x{k}x{n}:");
        let mut times = Vec::new();
        for kernel in [MatMulKernel::Packed, MatMulKernel::Blocked] {
            let t0 = Instant::now();
            let opts = CompileOptions { matmul: kernel, threads: Some(1), ..Default::default() };
            let c = compile(&g, &opts).expect("compiles");
            let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
            c.run(&inputs).expect("runs");
            if let (MatMulKernel::Packed, Ok(path)) = (kernel, std::env::var("KILN_GEMM_IR")) {
                let spec = c.specialization_for(&inputs).expect("compiled above");
                std::fs::write(&path, &spec.ir_optimized).expect("the IR file is writable");
            }
            let t = best(5, || {
                c.run(&inputs).expect("runs");
            });
            times.push(t.as_secs_f64());
            line.push_str(&format!(
                "  {kernel:?} {:>8.2} ms {:>6.1} GFLOP/s (compile {compile_ms:.0} ms)",
                t.as_secs_f64() * 1e3,
                flops / t.as_secs_f64() / 1e9
            ));
        }
        line.push_str(&format!("  packed is {:.2}x faster", times[1] / times[0]));
        let all = kiln_backend_llvm::available_threads();
        if all > 1 {
            let c = compile(&g, &CompileOptions { threads: Some(all), ..Default::default() }).expect("compiles");
            c.run(&inputs).expect("runs");
            let t = best(5, || {
                c.run(&inputs).expect("runs");
            });
            line.push_str(&format!(
                "  packed on {all} threads {:>8.2} ms {:>6.1} GFLOP/s",
                t.as_secs_f64() * 1e3,
                flops / t.as_secs_f64() / 1e9
            ));
        }
        println!("{line}");
    }
}
