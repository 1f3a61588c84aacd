//! The tiled forward of `kiln::LinearCrossEntropy` (logits by blocked f64
//! matrix products, one row block × vocabulary chunk at a time): against a
//! dense `N × V` reference over several row blocks with an all-ignored
//! block, non-finite padding rows that must not leak into the loss or the
//! gradients, and extra memory that does not grow with `N` beyond the
//! per-row state, measured by a counting allocator.

use kiln_ir::interp::{self, linear_cross_entropy_grad, LceGradOptions};
use kiln_ir::op::LossReduction;
use kiln_ir::{DType, Op, Tensor};

mod heap_peak;
use heap_peak::peak_bytes;

// ---------------------------------------------------------------- inputs

/// Deterministic pseudo-random values in [-scale, scale).
fn noise(seed: u64, len: usize, scale: f64) -> Vec<f64> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
        })
        .collect()
}

const IGNORE: i64 = -100;

/// Labels in `[0, v)`, with `IGNORE` where `ignored(i)` says.
fn labels(seed: u64, n: usize, v: usize, ignored: impl Fn(usize) -> bool) -> Vec<i64> {
    noise(seed, n, 1.0)
        .iter()
        .enumerate()
        .map(|(i, r)| {
            if ignored(i) {
                IGNORE
            } else {
                (((r + 1.0) / 2.0 * v as f64) as i64).min(v as i64 - 1)
            }
        })
        .collect()
}

fn lce(
    reduction: LossReduction,
    eps: f32,
    zeta: f32,
    transpose_weight: bool,
    chunk_size: i64,
) -> Op {
    Op::LinearCrossEntropy {
        reduction,
        ignore_index: Some(IGNORE),
        label_smoothing: eps,
        z_loss: zeta,
        transpose_weight,
        chunk_size,
    }
}

/// `[V, d]` row-major to `[d, V]` row-major.
fn transposed(head: &[f64], v: usize, d: usize) -> Vec<f64> {
    (0..d * v).map(|at| head[(at % v) * d + at / v]).collect()
}

fn assert_rel_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * w.abs().max(1.0),
            "{what}[{k}]: {g} vs {w}"
        );
    }
}

// ---------------------------------------------------------------- (a) values

/// 600 rows are three forward row blocks (256, 256, 88); rows 256..512, the
/// whole second block, are ignored, and so is every seventh row elsewhere.
#[test]
fn tiled_forward_matches_dense_logits_then_cross_entropy() {
    let (n, d, v) = (600, 16, 300);
    let hidden = noise(1, n * d, 1.0);
    let head = noise(2, v * d, 1.5);
    let bias = noise(3, v, 0.5);
    let class_weight: Vec<f64> = noise(4, v, 0.5).iter().map(|w| w + 1.0).collect();
    let y = labels(5, n, v, |i| (256..512).contains(&i) || i % 7 == 3);
    let logits: Vec<f64> = (0..n * v)
        .map(|at| {
            let (i, k) = (at / v, at % v);
            (0..d)
                .map(|j| hidden[i * d + j] * head[k * d + j])
                .sum::<f64>()
                + bias[k]
        })
        .collect();
    let f64s = |shape: &[usize], values: &[f64]| Some(Tensor::from_f64s(DType::F64, shape, values));
    let labels = Some(Tensor::from_i64s(DType::I64, &[n], &y));
    for reduction in [LossReduction::None, LossReduction::Sum, LossReduction::Mean] {
        for (eps, zeta) in [(0.0, 0.0), (0.1, 1e-3)] {
            let ce = Op::CrossEntropy {
                reduction,
                ignore_index: Some(IGNORE),
                label_smoothing: eps,
                z_loss: zeta,
            };
            let dense = [
                f64s(&[n, v], &logits),
                labels.clone(),
                f64s(&[v], &class_weight),
            ];
            let want = interp::eval_op(&ce, &dense, 1).unwrap()[0].clone().unwrap();
            for transpose in [true, false] {
                let weight = if transpose {
                    f64s(&[v, d], &head)
                } else {
                    f64s(&[d, v], &transposed(&head, v, d))
                };
                for chunk in [1, 128, 300, 4096] {
                    let inputs = [
                        f64s(&[n, d], &hidden),
                        weight.clone(),
                        labels.clone(),
                        f64s(&[v], &bias),
                        f64s(&[v], &class_weight),
                    ];
                    let got =
                        interp::eval_op(&lce(reduction, eps, zeta, transpose, chunk), &inputs, 1)
                            .unwrap()[0]
                            .clone()
                            .unwrap();
                    assert_eq!(got.shape(), want.shape());
                    let what = format!(
                        "{reduction:?} ε={eps} ζ={zeta} transpose={transpose} chunk={chunk}"
                    );
                    assert_rel_close(&got.to_f64s(), &want.to_f64s(), 1e-11, &what);
                }
            }
        }
    }
}

/// Ignored rows are padding: whatever their hidden states hold, even NaN or
/// infinity, the loss and the gradients are those of the same rows zeroed
/// (the matrix products see those rows, so this checks they are kept out).
#[test]
fn non_finite_ignored_rows_do_not_leak() {
    let (n, d, v) = (300, 8, 50);
    let ignored = |i: usize| (256..300).contains(&i) || i % 5 == 0;
    let y = labels(7, n, v, ignored);
    let clean: Vec<f64> = noise(8, n * d, 1.0)
        .iter()
        .enumerate()
        .map(|(at, &x)| if ignored(at / d) { 0.0 } else { x })
        .collect();
    let dirty: Vec<f64> = clean
        .iter()
        .enumerate()
        .map(|(at, &x)| match (ignored(at / d), at % 3) {
            (true, 0) => f64::NAN,
            (true, 1) => f64::INFINITY,
            (true, _) => f64::NEG_INFINITY,
            (false, _) => x,
        })
        .collect();
    let head = noise(9, v * d, 1.5);
    let bias = noise(10, v, 0.5);
    let f32s = |shape: &[usize], values: &[f64]| Some(Tensor::from_f64s(DType::F32, shape, values));
    let inputs = |hidden: &[f64]| {
        [
            f32s(&[n, d], hidden),
            f32s(&[v, d], &head),
            Some(Tensor::from_i64s(DType::I64, &[n], &y)),
            f32s(&[v], &bias),
        ]
    };
    for reduction in [LossReduction::None, LossReduction::Mean] {
        let op = lce(reduction, 0.1, 1e-3, true, 16);
        let grad_loss = match reduction {
            LossReduction::None => Tensor::from_f64s(DType::F32, &[n], &vec![1.0; n]),
            _ => Tensor::from_f64s(DType::F32, &[], &[1.0]),
        };
        let forward = |hidden: &[f64]| {
            interp::eval_op(&op, &inputs(hidden), 1).unwrap()[0]
                .clone()
                .unwrap()
                .to_f64s()
        };
        let want = forward(&clean);
        assert!(want.iter().all(|l| l.is_finite()));
        assert_eq!(forward(&dirty), want, "{reduction:?} loss");
        // Row blocks of 64 (the last one, rows 256..300, all ignored) and of
        // 7 (ignored and counted rows mixed).
        for row_block in [64, 7] {
            let options = LceGradOptions {
                row_block,
                ..LceGradOptions::exact()
            };
            let grad = |hidden: &[f64]| {
                linear_cross_entropy_grad(&op, &inputs(hidden), &grad_loss, &options).unwrap()
            };
            let (want, got) = (grad(&clean), grad(&dirty));
            let what = format!("{reduction:?} row_block={row_block}");
            assert_eq!(got.loss.to_f64s(), want.loss.to_f64s(), "{what} loss");
            assert_eq!(got.d_hidden.to_f64s(), want.d_hidden.to_f64s(), "{what} dH");
            assert_eq!(got.d_weight.to_f64s(), want.d_weight.to_f64s(), "{what} dW");
            assert_eq!(
                got.d_bias.map(|b| b.to_f64s()),
                want.d_bias.map(|b| b.to_f64s()),
                "{what} db"
            );
            assert!(
                got.d_weight.to_f64s().iter().all(|g| g.is_finite()),
                "{what} dW finite"
            );
            let dh = got.d_hidden.to_f64s();
            assert!((0..n)
                .filter(|&i| ignored(i))
                .all(|i| dh[i * d..(i + 1) * d].iter().all(|&g| g == 0.0)));
        }
    }
}

// ---------------------------------------------------------------- (b) memory

/// Bytes the forward may hold per row: the labels as i64 and as the checked
/// `Option<usize>` classes (8 + 16), the online log-sum-exp state (4 f64,
/// 32) and the per-row loss (8), 64 in all, with nothing to spare.
const PER_ROW_BYTES: usize = 64;

/// The forward's peak extra heap at `n` rows of a `d = 64`, `V = 8192`
/// head in chunks of 1024, f32 inputs, without the output.
fn forward_peak(n: usize) -> usize {
    let (d, v) = (64, 8192);
    let hidden = Tensor::from_f64s(DType::F32, &[n, d], &noise(11, n * d, 1.0));
    let weight = Tensor::from_f64s(DType::F32, &[d, v], &noise(12, d * v, 1.0));
    let y = Tensor::from_i64s(DType::I64, &[n], &labels(13, n, v, |i| i % 9 == 4));
    let bias = Tensor::from_f64s(DType::F32, &[v], &noise(14, v, 0.5));
    let inputs = [Some(hidden), Some(weight), Some(y), Some(bias)];
    let op = lce(LossReduction::Mean, 0.1, 1e-4, false, 1024);
    let (loss, peak) = peak_bytes(|| interp::eval_op(&op, &inputs, 1));
    let loss = loss.expect("valid inputs")[0]
        .clone()
        .expect("the loss output");
    assert!(loss.to_f64s()[0].is_finite());
    peak
}

#[test]
fn forward_extra_memory_does_not_grow_with_rows() {
    let (small, large) = (forward_peak(512), forward_peak(4096));
    // What a per-N copy of hidden would add: 4096 × 64 f64s, 2 MiB, against
    // 224 KiB of per-row state for the 3584 extra rows.
    let allowed = (4096 - 512) * PER_ROW_BYTES;
    assert!(
        large <= small + allowed,
        "peak extra {large} bytes at N = 4096 against {small} at N = 512 (allowed growth {allowed})"
    );
    // The fixed part is the tile (256 × 1024 f64, 2 MiB), the head chunk
    // (1024 × 64 f64, 512 KiB) and a row block of hidden (256 × 64 f64,
    // 128 KiB); the N × V logits would be 256 MiB.
    assert!(small < 4 << 20, "peak extra {small} bytes at N = 512");
}
