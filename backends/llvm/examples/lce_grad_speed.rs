//! Times the LinearCrossEntropy backward on the CPU backend against
//! kiln-ir's f64 reference, on one LM-head-shaped problem, with and
//! without Cut Cross-Entropy's tile filtering.
//!
//! ```sh
//! cargo run --release -p kiln-backend-llvm --example lce_grad_speed -- [N] [d] [V]
//! ```
//!
//! Defaults: N=512, d=768, V=50257 (f32, `[V, d]` head, mean reduction).
//! The first CPU call includes the JIT compile; it is reported apart.

use kiln_backend_llvm::lce_grad::LceGradOptions;
use kiln_ir::op::{LossReduction, Op};
use kiln_ir::{DType, Tensor};
use std::time::Instant;

fn noise(seed: u64, len: usize, scale: f64) -> Vec<f64> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (n, d, v) = (
        args.first().copied().unwrap_or(512),
        args.get(1).copied().unwrap_or(768),
        args.get(2).copied().unwrap_or(50257),
    );
    let op = Op::LinearCrossEntropy {
        reduction: LossReduction::Mean,
        ignore_index: Some(-100),
        label_smoothing: 0.0,
        z_loss: 0.0,
        transpose_weight: true,
        chunk_size: kiln_ir::op::DEFAULT_CHUNK_SIZE,
    };
    let labels: Vec<i64> =
        noise(3, n, 1.0).iter().map(|r| (((r + 1.0) / 2.0 * v as f64) as i64).min(v as i64 - 1)).collect();
    let inputs = vec![
        Some(Tensor::from_f64s(DType::F32, &[n, d], &noise(1, n * d, 1.0))),
        Some(Tensor::from_f64s(DType::F32, &[v, d], &noise(2, v * d, 0.05))),
        Some(Tensor::from_i64s(DType::I64, &[n], &labels)),
    ];
    let grad = Tensor::from_f64s(DType::F32, &[], &[1.0]);
    println!("LinearCrossEntropy backward, N={n} d={d} V={v}, f32");
    for (what, options) in [("exact", LceGradOptions::exact()), ("filtered (2^-12)", LceGradOptions::default())] {
        let start = Instant::now();
        let first = kiln_backend_llvm::linear_cross_entropy_grad(&op, &inputs, &grad, &options).expect("backward");
        let first_s = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let g = kiln_backend_llvm::linear_cross_entropy_grad(&op, &inputs, &grad, &options).expect("backward");
        let run_s = start.elapsed().as_secs_f64();
        println!(
            "  cpu {what}: {:.3} s (first call with compile {:.3} s), tiles {} skipped {}, loss {}",
            run_s,
            first_s,
            g.stats.tiles,
            g.stats.skipped,
            first.loss.to_f64s()[0]
        );
        let start = Instant::now();
        let r = kiln_ir::interp::linear_cross_entropy_grad(&op, &inputs, &grad, &options).expect("reference");
        let ref_s = start.elapsed().as_secs_f64();
        let err = g.d_hidden.to_f64s().iter().zip(r.d_hidden.to_f64s()).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        println!(
            "  reference (f64 interpreter) {what}: {ref_s:.3} s; cpu/reference {:.3}; max |ΔdH| {err:.2e}",
            run_s / ref_s
        );
    }
}
