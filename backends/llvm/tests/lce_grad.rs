//! The CPU backend's LinearCrossEntropy backward
//! (`kiln_backend_llvm::linear_cross_entropy_grad`): against kiln-ir's f64
//! reference (itself checked against a dense unfused gradient) for every
//! attribute combination, against central finite differences of the
//! interpreter's forward, in f32 on sizes that exercise every part of the
//! tile GEMM (full and partial register blocks, `k` blocking), the tile
//! filtering's counts and error bound, and bad inputs.

use kiln_backend_llvm::lce_grad::{LceGradOptions, LinearCrossEntropyGrad};
use kiln_backend_llvm::{linear_cross_entropy_grad, BackendError};
use kiln_ir::interp;
use kiln_ir::op::LossReduction;
use kiln_ir::{DType, Op, Tensor};

/// Deterministic pseudo-random values in [-scale, scale).
fn noise(seed: u64, len: usize, scale: f64) -> Vec<f64> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(0x2545_F491_4F6C_DD1D);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
        })
        .collect()
}

const IGNORE: i64 = -100;

#[derive(Clone, Copy, Debug)]
struct Case {
    n: usize,
    d: usize,
    v: usize,
    reduction: LossReduction,
    ignore: bool,
    class_weight: bool,
    bias: bool,
    eps: f32,
    zeta: f32,
    transpose: bool,
    chunk: i64,
    dtype: DType,
}

impl Case {
    fn small() -> Case {
        Case {
            n: 5,
            d: 4,
            v: 37,
            reduction: LossReduction::Mean,
            ignore: false,
            class_weight: false,
            bias: false,
            eps: 0.0,
            zeta: 0.0,
            transpose: true,
            chunk: 8,
            dtype: DType::F64,
        }
    }

    fn op(&self) -> Op {
        Op::LinearCrossEntropy {
            reduction: self.reduction,
            ignore_index: self.ignore.then_some(IGNORE),
            label_smoothing: self.eps,
            z_loss: self.zeta,
            transpose_weight: self.transpose,
            chunk_size: self.chunk,
        }
    }

    /// Every combination of the attributes on `base`'s sizes.
    fn all(base: Case) -> Vec<Case> {
        let mut cases = Vec::new();
        for reduction in [LossReduction::None, LossReduction::Sum, LossReduction::Mean] {
            for ignore in [false, true] {
                for class_weight in [false, true] {
                    for (eps, zeta) in [(0.0, 0.0), (0.1, 0.0), (0.0, 0.01), (0.15, 0.02)] {
                        for bias in [false, true] {
                            for transpose in [true, false] {
                                cases.push(Case {
                                    reduction,
                                    ignore,
                                    class_weight,
                                    eps,
                                    zeta,
                                    bias,
                                    transpose,
                                    ..base
                                });
                            }
                        }
                    }
                }
            }
        }
        cases
    }
}

/// A problem's values (rounded to the case's dtype), the head as `[V, d]`.
struct Problem {
    case: Case,
    hidden: Vec<f64>,
    head: Vec<f64>,
    labels: Vec<i64>,
    bias: Option<Vec<f64>>,
    class_weight: Option<Vec<f64>>,
    upstream: Vec<f64>,
}

impl Problem {
    fn new(case: Case, seed: u64) -> Problem {
        let Case { n, d, v, dtype, .. } = case;
        let round = |values: Vec<f64>, shape: &[usize]| Tensor::from_f64s(dtype, shape, &values).to_f64s();
        let hidden = round(noise(seed, n * d, 1.0), &[n, d]);
        let head = round(noise(seed + 1, v * d, 3.0 / (d as f64).sqrt()), &[v, d]);
        let labels = noise(seed + 2, n, 1.0)
            .iter()
            .enumerate()
            .map(|(i, r)| {
                if case.ignore && i % 3 == 1 {
                    IGNORE
                } else {
                    (((r + 1.0) / 2.0 * v as f64) as i64).min(v as i64 - 1)
                }
            })
            .collect();
        let bias = case.bias.then(|| round(noise(seed + 3, v, 0.5), &[v]));
        let class_weight =
            case.class_weight.then(|| round(noise(seed + 4, v, 0.5).iter().map(|w| w + 1.0).collect(), &[v]));
        let upstream = match case.reduction {
            LossReduction::None => noise(seed + 5, n, 1.0).iter().map(|g| g + 1.5).collect(),
            _ => vec![0.75],
        };
        Problem { case, hidden, head, labels, bias, class_weight, upstream }
    }

    fn weight_values(&self) -> Vec<f64> {
        let Case { d, v, transpose, .. } = self.case;
        if transpose {
            self.head.clone()
        } else {
            (0..d * v).map(|at| self.head[(at % v) * d + at / v]).collect()
        }
    }

    fn weight_shape(&self) -> Vec<usize> {
        let Case { d, v, transpose, .. } = self.case;
        if transpose {
            vec![v, d]
        } else {
            vec![d, v]
        }
    }

    fn inputs_with(&self, hidden: &[f64], weight: &[f64], bias: Option<&[f64]>) -> Vec<Option<Tensor>> {
        let Case { n, d, v, dtype, .. } = self.case;
        vec![
            Some(Tensor::from_f64s(dtype, &[n, d], hidden)),
            Some(Tensor::from_f64s(dtype, &self.weight_shape(), weight)),
            Some(Tensor::from_i64s(DType::I64, &[n], &self.labels)),
            bias.map(|b| Tensor::from_f64s(dtype, &[v], b)),
            self.class_weight.as_ref().map(|w| Tensor::from_f64s(dtype, &[v], w)),
        ]
    }

    fn inputs(&self) -> Vec<Option<Tensor>> {
        self.inputs_with(&self.hidden, &self.weight_values(), self.bias.as_deref())
    }

    fn grad_loss(&self) -> Tensor {
        match self.case.reduction {
            LossReduction::None => Tensor::from_f64s(self.case.dtype, &[self.case.n], &self.upstream),
            _ => Tensor::from_f64s(self.case.dtype, &[], &self.upstream),
        }
    }

    /// The CPU backend's gradient.
    fn cpu(&self, options: &LceGradOptions) -> LinearCrossEntropyGrad {
        linear_cross_entropy_grad(&self.case.op(), &self.inputs(), &self.grad_loss(), options)
            .unwrap_or_else(|e| panic!("{:?}: {e}", self.case))
    }

    /// kiln-ir's f64 reference gradient.
    fn reference(&self, options: &LceGradOptions) -> LinearCrossEntropyGrad {
        interp::linear_cross_entropy_grad(&self.case.op(), &self.inputs(), &self.grad_loss(), options)
            .unwrap_or_else(|e| panic!("{:?}: reference: {e}", self.case))
    }

    /// `Σ_i g_i·loss_i` (or `g·loss`) through the interpreter's forward.
    fn objective(&self, hidden: &[f64], weight: &[f64], bias: Option<&[f64]>) -> f64 {
        let out = interp::eval_op(&self.case.op(), &self.inputs_with(hidden, weight, bias), 1)
            .unwrap_or_else(|e| panic!("{:?}: {e}", self.case));
        let loss = out[0].as_ref().expect("the loss output").to_f64s();
        loss.iter().zip(&self.upstream).map(|(l, g)| l * g).sum()
    }
}

fn central_differences(x: &[f64], step: f64, f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut probe = x.to_vec();
    (0..x.len())
        .map(|j| {
            probe[j] = x[j] + step;
            let up = f(&probe);
            probe[j] = x[j] - step;
            let down = f(&probe);
            probe[j] = x[j];
            (up - down) / (2.0 * step)
        })
        .collect()
}

/// Elementwise `|got - want| ≤ abs + rel·|want|`.
fn assert_close(got: &[f64], want: &[f64], abs: f64, rel: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (j, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= abs + rel * w.abs(), "{what}[{j}]: got {g}, want {w}");
    }
}

fn max_abs(x: &[f64]) -> f64 {
    x.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// Compares every output of two gradients, the tolerance scaled by each
/// tensor's largest entry.
fn assert_grads_close(got: &LinearCrossEntropyGrad, want: &LinearCrossEntropyGrad, tol: f64, what: &str) {
    let pairs = [
        ("loss", got.loss.to_f64s(), want.loss.to_f64s()),
        ("dH", got.d_hidden.to_f64s(), want.d_hidden.to_f64s()),
        ("dW", got.d_weight.to_f64s(), want.d_weight.to_f64s()),
    ];
    for (name, g, w) in pairs {
        assert_close(&g, &w, tol * max_abs(&w).max(1e-3), tol, &format!("{what} {name}"));
    }
    assert_eq!(got.d_weight.shape(), want.d_weight.shape(), "{what}: dW shape");
    assert_eq!(got.d_hidden.dtype(), want.d_hidden.dtype(), "{what}: dH dtype");
    match (&got.d_bias, &want.d_bias) {
        (Some(g), Some(w)) => {
            let (g, w) = (g.to_f64s(), w.to_f64s());
            assert_close(&g, &w, tol * max_abs(&w).max(1e-3), tol, &format!("{what} db"));
        }
        (None, None) => {}
        _ => panic!("{what}: a bias gradient on one side only"),
    }
}

// ---------------------------------------------------------------- against the reference

#[test]
fn matches_the_reference_for_every_attribute_combination() {
    let mut count = 0;
    for (k, case) in Case::all(Case::small()).into_iter().enumerate() {
        let pb = Problem::new(case, 100 + k as u64);
        let options = LceGradOptions { row_block: 2, ..LceGradOptions::exact() };
        let (got, want) = (pb.cpu(&options), pb.reference(&options));
        assert_grads_close(&got, &want, 1e-10, &format!("{case:?}"));
        assert_eq!(got.stats, want.stats, "{case:?}: same tiling, same tile counts");
        count += 1;
    }
    assert_eq!(count, 192);
}

#[test]
fn matches_the_reference_on_sizes_with_partial_register_blocks() {
    // f64 on AVX-512 blocks 12 rows × 16 columns: 21 rows and d = 37 leave
    // partial row blocks and scalar columns; 300 classes in tiles of 64
    // leave a short last tile.
    let base = Case { n: 21, d: 37, v: 300, chunk: 64, ..Case::small() };
    for (k, case) in Case::all(base).into_iter().enumerate().filter(|(k, _)| k % 13 == 0) {
        let pb = Problem::new(case, 500 + k as u64);
        for row_block in [12, 128] {
            let options = LceGradOptions { row_block, ..LceGradOptions::exact() };
            let (got, want) = (pb.cpu(&options), pb.reference(&options));
            assert_grads_close(&got, &want, 1e-10, &format!("{case:?} row_block {row_block}"));
            assert_eq!(got.stats, want.stats, "{case:?}");
        }
    }
}

#[test]
fn f32_matches_the_reference_within_f32_rounding() {
    // d = 300 takes the GEMM's k blocking (256) on the logit tiles; the
    // default options take the op's chunk capped at 256 and 128-row blocks.
    let sizes = [(70, 40, 300, 100), (12, 300, 70, 4096), (130, 64, 1000, 4096)];
    for (s, &(n, d, v, chunk)) in sizes.iter().enumerate() {
        for (k, case) in Case::all(Case { n, d, v, chunk, dtype: DType::F32, ..Case::small() })
            .into_iter()
            .enumerate()
            .filter(|(k, _)| k % 17 == s)
        {
            let pb = Problem::new(case, 900 + k as u64);
            let got = pb.cpu(&LceGradOptions::exact());
            let want = pb.reference(&LceGradOptions::exact());
            assert_eq!(got.d_hidden.dtype(), DType::F32);
            assert_grads_close(&got, &want, 2e-4, &format!("{case:?}"));
        }
    }
}

// ---------------------------------------------------------------- finite differences

#[test]
fn matches_central_differences_of_the_interpreter_forward() {
    for (k, case) in Case::all(Case::small()).into_iter().enumerate().filter(|(k, _)| k % 8 == 3) {
        let pb = Problem::new(case, 300 + k as u64);
        let grad = pb.cpu(&LceGradOptions::exact());
        let weight = pb.weight_values();
        let bias = pb.bias.clone();
        let step = 1e-5;
        let tol = |what: &str| format!("{case:?} {what}");
        let dh = central_differences(&pb.hidden, step, |h| pb.objective(h, &weight, bias.as_deref()));
        assert_close(&grad.d_hidden.to_f64s(), &dh, 1e-7, 1e-6, &tol("dH"));
        let dw = central_differences(&weight, step, |w| pb.objective(&pb.hidden, w, bias.as_deref()));
        assert_close(&grad.d_weight.to_f64s(), &dw, 1e-7, 1e-6, &tol("dW"));
        if let Some(b) = &bias {
            let db = central_differences(b, step, |b| pb.objective(&pb.hidden, &weight, Some(b)));
            let got = grad.d_bias.as_ref().expect("a bias gradient").to_f64s();
            assert_close(&got, &db, 1e-7, 1e-6, &tol("db"));
        }
    }
}

// ---------------------------------------------------------------- filtering

/// One dominant class (entry 0, by a bias of 30): the first 8 rows are
/// labelled with it, so their softmax is one-hot to within about e^-17;
/// the other 8 are labelled 40, so their tiles at classes 0 and 40 carry
/// gradients near ±1.
fn peaked(reduction: LossReduction, dtype: DType) -> Problem {
    let case = Case { n: 16, d: 8, v: 64, reduction, bias: true, chunk: 8, dtype, ..Case::small() };
    let mut pb = Problem::new(case, 77);
    let bias = pb.bias.as_mut().expect("the case has a bias");
    bias[0] = 30.0;
    for (i, y) in pb.labels.iter_mut().enumerate() {
        *y = if i < 8 { 0 } else { 40 };
    }
    pb
}

#[test]
fn filtering_skips_the_reference_tiles_within_the_documented_bound() {
    for dtype in [DType::F64, DType::F32] {
        for reduction in [LossReduction::None, LossReduction::Sum, LossReduction::Mean] {
            let pb = peaked(reduction, dtype);
            let what = format!("{dtype} {reduction:?}");
            let exact = pb.cpu(&LceGradOptions { row_block: 8, ..LceGradOptions::exact() });
            assert_eq!((exact.stats.tiles, exact.stats.skipped), (16, 0), "{what}");
            let options = LceGradOptions { row_block: 8, ..LceGradOptions::default() };
            let filtered = pb.cpu(&options);
            // Everything but the second block's tiles 0 and 5 (classes 0, 40),
            // as the reference decides.
            assert_eq!((filtered.stats.tiles, filtered.stats.skipped), (16, 14), "{what}");
            assert_eq!(filtered.stats, pb.reference(&options).stats, "{what}");
            assert_eq!(filtered.loss.to_f64s(), exact.loss.to_f64s(), "{what}");

            // |ΔdH_ij| ≤ τ|s_i| Σ_k |W_kj|, |ΔdW_kj| ≤ τ Σ_i |s_i||h_ij|,
            // |Δdb_k| ≤ τ Σ_i |s_i| (plus f32 rounding of the sums).
            let Case { n, d, v, .. } = pb.case;
            let tau = options.skip_threshold as f64;
            let round = if dtype == DType::F32 { 1e-6 } else { 1e-12 };
            let s: Vec<f64> = (0..n)
                .map(|i| match reduction {
                    LossReduction::None => pb.upstream[i],
                    LossReduction::Sum => pb.upstream[0],
                    LossReduction::Mean => pb.upstream[0] / n as f64,
                })
                .collect();
            let (dh, dh0) = (filtered.d_hidden.to_f64s(), exact.d_hidden.to_f64s());
            for i in 0..n {
                for j in 0..d {
                    let bound = tau * s[i].abs() * (0..v).map(|k| pb.head[k * d + j].abs()).sum::<f64>() + round;
                    let err = (dh[i * d + j] - dh0[i * d + j]).abs();
                    assert!(err <= bound, "{what} dH[{i},{j}]: error {err} over bound {bound}");
                }
            }
            let (dw, dw0) = (filtered.d_weight.to_f64s(), exact.d_weight.to_f64s());
            for k in 0..v {
                for j in 0..d {
                    let bound = tau * (0..n).map(|i| s[i].abs() * pb.hidden[i * d + j].abs()).sum::<f64>() + round;
                    let err = (dw[k * d + j] - dw0[k * d + j]).abs();
                    assert!(err <= bound, "{what} dW[{k},{j}]: error {err} over bound {bound}");
                }
            }
            let (db, db0) = (filtered.d_bias.unwrap().to_f64s(), exact.d_bias.unwrap().to_f64s());
            let bias_bound = tau * s.iter().map(|s| s.abs()).sum::<f64>() + round;
            for k in 0..v {
                assert!((db[k] - db0[k]).abs() <= bias_bound, "{what} db[{k}]");
            }
            // The skipped tiles held something, so filtering changed dH.
            assert_ne!(dh, dh0, "{what}");
        }
    }
}

#[test]
fn a_flat_distribution_or_threshold_zero_skips_nothing() {
    let pb = Problem::new(Case { n: 9, d: 3, v: 37, dtype: DType::F32, ..Case::small() }, 5);
    for options in [LceGradOptions::exact(), LceGradOptions::default()] {
        let g = pb.cpu(&LceGradOptions { row_block: 4, chunk_size: Some(8), ..options });
        assert_eq!((g.stats.tiles, g.stats.skipped), (3 * 5, 0), "{options:?}");
    }
}

#[test]
fn mean_over_no_counted_rows_has_zero_gradient() {
    let mut pb = Problem::new(Case { ignore: true, bias: true, ..Case::small() }, 9);
    pb.labels.iter_mut().for_each(|y| *y = IGNORE);
    // A non-finite hidden value in an ignored (padding) row stays out of dW.
    pb.hidden[0] = f64::INFINITY;
    let g = pb.cpu(&LceGradOptions::exact());
    assert!(g.loss.to_f64s()[0].is_nan(), "mean over nothing is 0/0");
    assert!(g.d_hidden.to_f64s().iter().all(|&x| x == 0.0));
    assert!(g.d_weight.to_f64s().iter().all(|&x| x == 0.0));
    assert!(g.d_bias.unwrap().to_f64s().iter().all(|&x| x == 0.0));
}

// ---------------------------------------------------------------- errors

#[test]
fn bad_inputs_are_errors_not_panics() {
    let pb = Problem::new(Case::small(), 1);
    let (op, inputs, grad) = (pb.case.op(), pb.inputs(), pb.grad_loss());
    let expect_err = |op: &Op, inputs: &[Option<Tensor>], grad: &Tensor, options: &LceGradOptions, needle: &str| {
        let e = linear_cross_entropy_grad(op, inputs, grad, options).expect_err(needle);
        let text = e.to_string();
        assert!(text.contains(needle) && text.contains("LinearCrossEntropy"), "{needle}: {text}");
        e
    };
    let exact = LceGradOptions::exact();
    // A label outside [0, V).
    let mut bad = inputs.clone();
    bad[2] = Some(Tensor::from_i64s(DType::I64, &[5], &[0, 1, 37, 2, 3]));
    expect_err(&op, &bad, &grad, &exact, "label");
    // The upstream gradient of another reduction's shape.
    expect_err(&op, &inputs, &Tensor::from_f64s(DType::F64, &[5], &[1.0; 5]), &exact, "grad_loss");
    expect_err(&op, &inputs, &Tensor::from_i64s(DType::I64, &[], &[1]), &exact, "grad_loss");
    // Options.
    expect_err(&op, &inputs, &grad, &LceGradOptions { skip_threshold: -1.0, ..exact.clone() }, "skip_threshold");
    expect_err(&op, &inputs, &grad, &LceGradOptions { skip_threshold: f32::NAN, ..exact.clone() }, "skip_threshold");
    expect_err(&op, &inputs, &grad, &LceGradOptions { row_block: 0, ..exact.clone() }, "row_block");
    expect_err(&op, &inputs, &grad, &LceGradOptions { chunk_size: Some(0), ..exact.clone() }, "chunk_size");
    // Inputs.
    expect_err(&op, &inputs[..2], &grad, &exact, "labels");
    let mut bad = inputs.clone();
    bad[1] = Some(Tensor::from_f64s(DType::F64, &[37, 5], &[0.0; 185]));
    expect_err(&op, &bad, &grad, &exact, "shapes do not agree");
    let mut bad = inputs.clone();
    bad[3] = Some(Tensor::from_f64s(DType::F64, &[36], &[0.0; 36]));
    expect_err(&op, &bad, &grad, &exact, "bias");
    let mut bad = inputs.clone();
    bad[0] = Some(Tensor::from_f64s(DType::F16, &[5, 4], &[0.0; 20]));
    let e = expect_err(&op, &bad, &grad, &exact, "f16");
    assert!(matches!(e, BackendError::Unsupported { .. }), "{e:?}");
    expect_err(&Op::MatMul, &inputs, &grad, &exact, "expected a LinearCrossEntropy op");
}
