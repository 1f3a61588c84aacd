//! The reference backward of `kiln::LinearCrossEntropy`
//! (`interp::linear_cross_entropy_grad`): against central finite
//! differences of the forward op for every attribute combination, against
//! a dense `N × V` reference whose logit gradient is itself checked against
//! finite differences of the unfused `CrossEntropy` op, the gradient
//! filtering's error bound and tile counts, bad inputs, and its working
//! memory measured by a counting allocator.

use kiln_ir::interp::{self, linear_cross_entropy_grad, LceGradOptions, LinearCrossEntropyGrad};
use kiln_ir::op::LossReduction;
use kiln_ir::{DType, IrError, Op, Tensor};

mod heap_peak;
use heap_peak::peak_bytes;

// ---------------------------------------------------------------- inputs

/// Deterministic pseudo-random values in [-scale, scale).
fn noise(seed: u64, len: usize, scale: f64) -> Vec<f64> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
        })
        .collect()
}

const IGNORE: i64 = -100;

/// One attribute combination and problem size.
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

    /// Every combination of the attributes on the small problem.
    fn all_small() -> Vec<Case> {
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
                                    ..Case::small()
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

/// A problem's tensors, as row-major f64 (after rounding to the case's
/// dtype) and as the op's inputs.
struct Problem {
    case: Case,
    hidden: Vec<f64>,
    /// The head as `[V, d]`, whatever the layout of the weight input.
    head: Vec<f64>,
    labels: Vec<i64>,
    bias: Option<Vec<f64>>,
    class_weight: Option<Vec<f64>>,
    /// The upstream gradient: `[N]` for `none`, one value otherwise.
    upstream: Vec<f64>,
}

impl Problem {
    fn new(case: Case, seed: u64) -> Problem {
        let Case { n, d, v, dtype, .. } = case;
        let round = |values: Vec<f64>, shape: &[usize]| Tensor::from_f64s(dtype, shape, &values).to_f64s();
        let hidden = round(noise(seed, n * d, 1.0), &[n, d]);
        let head = round(noise(seed + 1, v * d, 1.5), &[v, d]);
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

    /// The weight input's values in its layout.
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

    /// The op's inputs, with `hidden`, the weight (in its layout) and the
    /// bias given explicitly so finite differences can perturb them.
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

    fn grad(&self, options: &LceGradOptions) -> LinearCrossEntropyGrad {
        linear_cross_entropy_grad(&self.case.op(), &self.inputs(), &self.grad_loss(), options)
            .unwrap_or_else(|e| panic!("{:?}: {e}", self.case))
    }

    /// `Σ_i g_i·loss_i` (or `g·loss`) through the forward op, whose
    /// gradient is what the backward computes.
    fn objective(&self, hidden: &[f64], weight: &[f64], bias: Option<&[f64]>) -> f64 {
        let out = interp::eval_op(&self.case.op(), &self.inputs_with(hidden, weight, bias), 1)
            .unwrap_or_else(|e| panic!("{:?}: {e}", self.case));
        let loss = out[0].as_ref().expect("the loss output").to_f64s();
        loss.iter().zip(&self.upstream).map(|(l, g)| l * g).sum()
    }
}

/// Central differences of `f` at every element of `x`.
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

fn assert_close(got: &[f64], want: &[f64], abs: f64, rel: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (j, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= abs + rel * w.abs(), "{what}[{j}]: got {g}, want {w}");
    }
}

fn tiles(n: usize, row_block: usize, v: usize, chunk: usize) -> usize {
    n.div_ceil(row_block.min(n)) * v.div_ceil(chunk)
}

// ---------------------------------------------------------------- (a) finite differences

#[test]
fn matches_central_differences_of_the_forward_for_every_attribute_combination() {
    let cases = Case::all_small();
    assert_eq!(cases.len(), 192);
    for (ci, case) in cases.into_iter().enumerate() {
        let pb = Problem::new(case, 10 + ci as u64);
        // Tiles that divide neither the rows nor the vocabulary; the chunk
        // defaults to the op's 8 on every other case.
        let options = LceGradOptions { chunk_size: (ci % 2 == 1).then_some(5), row_block: 2, skip_threshold: 0.0 };
        let g = pb.grad(&options);
        let chunk = options.chunk_size.unwrap_or(8);
        assert_eq!(g.stats.tiles, tiles(5, 2, 37, chunk), "{case:?}");
        assert_eq!(g.stats.skipped, 0, "{case:?}: threshold 0 skips nothing");
        // The loss is the forward's.
        let forward = interp::eval_op(&case.op(), &pb.inputs(), 1).unwrap()[0].clone().unwrap();
        assert_eq!(g.loss.shape(), forward.shape(), "{case:?}");
        assert_close(&g.loss.to_f64s(), &forward.to_f64s(), 0.0, 1e-12, &format!("{case:?} loss"));

        let (weight, bias) = (pb.weight_values(), pb.bias.clone());
        let step = 1e-6;
        let what = format!("{case:?}");
        let fd_h = central_differences(&pb.hidden, step, |h| pb.objective(h, &weight, bias.as_deref()));
        assert_close(&g.d_hidden.to_f64s(), &fd_h, 1e-7, 1e-6, &format!("{what} d_hidden"));
        let fd_w = central_differences(&weight, step, |w| pb.objective(&pb.hidden, w, bias.as_deref()));
        assert_eq!(g.d_weight.shape(), pb.weight_shape().as_slice());
        assert_close(&g.d_weight.to_f64s(), &fd_w, 1e-7, 1e-6, &format!("{what} d_weight"));
        match &bias {
            Some(b) => {
                let fd_b = central_differences(b, step, |b| pb.objective(&pb.hidden, &weight, Some(b)));
                let db = g.d_bias.as_ref().expect("a bias was given");
                assert_close(&db.to_f64s(), &fd_b, 1e-7, 1e-6, &format!("{what} d_bias"));
            }
            None => assert!(g.d_bias.is_none(), "{what}"),
        }
        // Ignored rows get no gradient.
        let dh = g.d_hidden.to_f64s();
        for (i, &label) in pb.labels.iter().enumerate() {
            if label == IGNORE {
                assert!(dh[i * 4..(i + 1) * 4].iter().all(|&x| x == 0.0), "{what}: ignored row {i}");
            }
        }
    }
}

// ---------------------------------------------------------------- (b) dense reference

/// The obviously correct dense form: all `N × V` logits, the softmax, and
/// `∂l_i/∂x_ik` written term by term from the spec's loss formula.
struct Dense {
    logits: Vec<f64>,
    /// `∂(Σ_i s_i l_i)/∂x_ik` with the reduction's row scale `s_i`.
    d_logits: Vec<f64>,
    d_hidden: Vec<f64>,
    /// `[V, d]`.
    d_head: Vec<f64>,
    d_bias: Vec<f64>,
}

fn dense(pb: &Problem) -> Dense {
    let Case { n, d, v, .. } = pb.case;
    let (eps, zeta) = (pb.case.eps as f64, pb.case.zeta as f64);
    let wt = |k: usize| pb.class_weight.as_ref().map_or(1.0, |w| w[k]);
    let mut logits = vec![0.0; n * v];
    for i in 0..n {
        for k in 0..v {
            let dot: f64 = (0..d).map(|j| pb.hidden[i * d + j] * pb.head[k * d + j]).sum();
            logits[i * v + k] = dot + pb.bias.as_ref().map_or(0.0, |b| b[k]);
        }
    }
    let counted: Vec<bool> = pb.labels.iter().map(|&y| y != IGNORE || !pb.case.ignore).collect();
    let total_weight: f64 = (0..n).filter(|&i| counted[i]).map(|i| wt(pb.labels[i] as usize)).sum();
    let mut d_logits = vec![0.0; n * v];
    for i in (0..n).filter(|&i| counted[i]) {
        let row = &logits[i * v..(i + 1) * v];
        let z: f64 = row.iter().map(|x| x.exp()).sum();
        let lse = z.ln();
        let p: Vec<f64> = row.iter().map(|x| x.exp() / z).collect();
        let y = pb.labels[i] as usize;
        let scale = match pb.case.reduction {
            LossReduction::None => pb.upstream[i],
            LossReduction::Sum => pb.upstream[0],
            LossReduction::Mean => pb.upstream[0] / total_weight,
        };
        for k in 0..v {
            let onehot = if k == y { 1.0 } else { 0.0 };
            // w_y(1-ε)(lse - x_y): d lse/dx_k = p_k, d x_y/dx_k = [k = y].
            let ce = wt(y) * (1.0 - eps) * (p[k] - onehot);
            // w_y ζ lse².
            let z_term = wt(y) * zeta * 2.0 * lse * p[k];
            // (ε/V) Σ_c w_c (lse - x_c).
            let smooth: f64 = (0..v).map(|c| wt(c) * (p[k] - if c == k { 1.0 } else { 0.0 })).sum::<f64>();
            d_logits[i * v + k] = scale * (ce + z_term + eps / v as f64 * smooth);
        }
    }
    let mut d_hidden = vec![0.0; n * d];
    let mut d_head = vec![0.0; v * d];
    let mut d_bias = vec![0.0; v];
    for i in 0..n {
        for k in 0..v {
            let g = d_logits[i * v + k];
            for j in 0..d {
                d_hidden[i * d + j] += g * pb.head[k * d + j];
                d_head[k * d + j] += g * pb.hidden[i * d + j];
            }
            d_bias[k] += g;
        }
    }
    Dense { logits, d_logits, d_hidden, d_head, d_bias }
}

#[test]
fn matches_a_dense_reference_checked_against_the_unfused_interpreter() {
    let mut cases = Case::all_small();
    // A larger case in f32, so the outputs' rounding is covered too.
    cases.push(Case {
        n: 9,
        d: 6,
        v: 53,
        ignore: true,
        class_weight: true,
        bias: true,
        eps: 0.05,
        zeta: 1e-3,
        chunk: 7,
        dtype: DType::F32,
        ..Case::small()
    });
    for (ci, case) in cases.into_iter().enumerate() {
        let pb = Problem::new(case, 500 + ci as u64);
        let Case { n, v, d, .. } = case;
        let reference = dense(&pb);
        let what = format!("{case:?}");

        // The dense logit gradient against finite differences of the
        // unfused graph's loss op, kiln::CrossEntropy on the dense logits.
        let ce = Op::CrossEntropy {
            reduction: case.reduction,
            ignore_index: case.ignore.then_some(IGNORE),
            label_smoothing: case.eps,
            z_loss: case.zeta,
        };
        let unfused = |x: &[f64]| {
            let inputs = [
                Some(Tensor::from_f64s(DType::F64, &[n, v], x)),
                Some(Tensor::from_i64s(DType::I64, &[n], &pb.labels)),
                pb.class_weight.as_ref().map(|w| Tensor::from_f64s(DType::F64, &[v], w)),
            ];
            let loss = interp::eval_op(&ce, &inputs, 1).unwrap()[0].clone().unwrap().to_f64s();
            loss.iter().zip(&pb.upstream).map(|(l, g)| l * g).sum::<f64>()
        };
        let fd = central_differences(&reference.logits, 1e-6, unfused);
        assert_close(&reference.d_logits, &fd, 1e-7, 1e-6, &format!("{what} dense d_logits"));

        let g = pb.grad(&LceGradOptions { chunk_size: None, row_block: 3, skip_threshold: 0.0 });
        // f64 inputs agree to rounding; f32 outputs are rounded once.
        let (abs, rel) = if case.dtype == DType::F64 { (1e-13, 1e-11) } else { (1e-7, 1e-6) };
        assert_close(&g.d_hidden.to_f64s(), &reference.d_hidden, abs, rel, &format!("{what} d_hidden"));
        let d_weight = g.d_weight.to_f64s();
        let d_head: Vec<f64> =
            if case.transpose { d_weight } else { (0..v * d).map(|at| d_weight[(at % d) * v + at / d]).collect() };
        assert_close(&d_head, &reference.d_head, abs, rel, &format!("{what} d_weight"));
        if let Some(db) = &g.d_bias {
            assert_eq!(db.dtype(), case.dtype);
            assert_close(&db.to_f64s(), &reference.d_bias, abs, rel, &format!("{what} d_bias"));
        }
        assert_eq!(g.d_hidden.dtype(), case.dtype);
        assert_eq!(g.d_weight.dtype(), case.dtype);
    }
}

// ---------------------------------------------------------------- (c) filtering

/// Rows whose logits have one dominant class (entry 0, by a bias of 30,
/// against logits of at most about 12 in magnitude otherwise): the first
/// block of rows is labelled with it, so its softmax is the one-hot target
/// to within about e^-17; the second block is labelled 40, so its tiles at
/// classes 0 and 40 carry gradients near ±1.
fn peaked(reduction: LossReduction) -> Problem {
    let case = Case { n: 16, d: 8, v: 64, reduction, bias: true, chunk: 8, ..Case::small() };
    let mut pb = Problem::new(case, 77);
    let bias = pb.bias.as_mut().expect("the case has a bias");
    bias[0] = 30.0;
    for (i, y) in pb.labels.iter_mut().enumerate() {
        *y = if i < 8 { 0 } else { 40 };
    }
    pb
}

#[test]
fn filtering_skips_negligible_tiles_within_the_documented_bound() {
    for reduction in [LossReduction::None, LossReduction::Sum, LossReduction::Mean] {
        let pb = peaked(reduction);
        let exact = pb.grad(&LceGradOptions { row_block: 8, ..LceGradOptions::exact() });
        assert_eq!(exact.stats.tiles, 16);
        assert_eq!(exact.stats.skipped, 0);
        let tau = interp::DEFAULT_SKIP_THRESHOLD;
        let filtered = pb.grad(&LceGradOptions { row_block: 8, ..LceGradOptions::default() });
        assert_eq!(filtered.stats.tiles, 16);
        // Everything but the second block's chunks 0 and 5 (classes 0, 40).
        assert_eq!(filtered.stats.skipped, 14, "{reduction:?}");
        assert_eq!(filtered.loss.to_f64s(), exact.loss.to_f64s());

        // The bound of the docs, with every k (resp. i) counted as skipped:
        // |ΔdH_ij| ≤ τ|s_i| Σ_k |W_kj|, |ΔdW_kj| ≤ τ Σ_i |s_i||h_ij|,
        // |Δdb_k| ≤ τ Σ_i |s_i|.
        let Case { n, d, v, .. } = pb.case;
        let tau = tau as f64;
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
                let bound = tau * s[i].abs() * (0..v).map(|k| pb.head[k * d + j].abs()).sum::<f64>();
                let err = (dh[i * d + j] - dh0[i * d + j]).abs();
                assert!(err <= bound, "{reduction:?} dH[{i},{j}]: error {err} over bound {bound}");
            }
        }
        let (dw, dw0) = (filtered.d_weight.to_f64s(), exact.d_weight.to_f64s());
        for k in 0..v {
            for j in 0..d {
                let bound = tau * (0..n).map(|i| s[i].abs() * pb.hidden[i * d + j].abs()).sum::<f64>();
                let err = (dw[k * d + j] - dw0[k * d + j]).abs();
                assert!(err <= bound, "{reduction:?} dW[{k},{j}]: error {err} over bound {bound}");
            }
        }
        let (db, db0) = (filtered.d_bias.unwrap().to_f64s(), exact.d_bias.unwrap().to_f64s());
        let bias_bound = tau * s.iter().map(|s| s.abs()).sum::<f64>();
        for k in 0..v {
            assert!((db[k] - db0[k]).abs() <= bias_bound, "{reduction:?} db[{k}]");
        }
        // The skipped tiles did hold something (their softmax is e^-17-ish,
        // not zero), so the filtered gradient is an approximation, and a
        // close one.
        assert_ne!(dh, dh0, "{reduction:?}");
        let norm = |x: &[f64]| x.iter().map(|x| x * x).sum::<f64>().sqrt();
        let diff: Vec<f64> = dh.iter().zip(&dh0).map(|(a, b)| a - b).collect();
        assert!(norm(&diff) <= 1e-6 * norm(&dh0), "{reduction:?}: relative error {}", norm(&diff) / norm(&dh0));
    }
}

#[test]
fn filtering_skips_nothing_on_a_flat_distribution_or_with_threshold_zero() {
    // Logits within about ±1.3, so every softmax entry is near 1/37, far
    // above 2^-12: nothing to skip, even in one-entry tiles.
    let mut pb = Problem::new(Case { class_weight: true, bias: true, ..Case::small() }, 3);
    pb.hidden.iter_mut().for_each(|h| *h *= 0.2);
    let filtered = pb.grad(&LceGradOptions { row_block: 1, chunk_size: Some(1), ..LceGradOptions::default() });
    assert_eq!(filtered.stats.tiles, 5 * 37);
    assert_eq!(filtered.stats.skipped, 0);
    let exact = pb.grad(&LceGradOptions { row_block: 1, chunk_size: Some(1), ..LceGradOptions::exact() });
    assert!(filtered.d_hidden.bitwise_eq(&exact.d_hidden));
    assert!(filtered.d_weight.bitwise_eq(&exact.d_weight));
    // A threshold of 0 keeps even the peaked problem's negligible tiles.
    let peaked = peaked(LossReduction::Sum);
    let g = peaked.grad(&LceGradOptions { row_block: 8, ..LceGradOptions::exact() });
    assert_eq!((g.stats.tiles, g.stats.skipped), (16, 0));
    // A huge threshold skips every tile, leaving zero gradients.
    let all = peaked.grad(&LceGradOptions { row_block: 8, skip_threshold: 10.0, ..LceGradOptions::default() });
    assert_eq!(all.stats.skipped, 16);
    assert!(all.d_hidden.to_f64s().iter().all(|&x| x == 0.0));
}

#[test]
fn mean_over_no_counted_rows_has_zero_gradient() {
    let mut pb = Problem::new(Case { ignore: true, ..Case::small() }, 9);
    pb.labels = vec![IGNORE; 5];
    let g = pb.grad(&LceGradOptions::exact());
    assert!(g.loss.to_f64s()[0].is_nan(), "0/0, as the forward gives");
    assert!(g.d_hidden.to_f64s().iter().chain(&g.d_weight.to_f64s()).all(|&x| x == 0.0));
}

// ---------------------------------------------------------------- (d) bad inputs

/// What is wrong, then the call's op, inputs, upstream gradient and options.
type BadCase = (&'static str, Op, Vec<Option<Tensor>>, Tensor, LceGradOptions);

#[test]
fn bad_inputs_are_errors_not_panics() {
    let pb = Problem::new(Case { bias: true, class_weight: true, ..Case::small() }, 4);
    let op = pb.case.op();
    let good = pb.inputs();
    let scalar = pb.grad_loss();
    let exact = LceGradOptions::exact();
    let f = |shape: &[usize]| Tensor::from_f64s(DType::F64, shape, &vec![0.5; shape.iter().product()]);
    let labels = |v: &[i64]| Tensor::from_i64s(DType::I64, &[5], v);
    let with = |slot: usize, t: Option<Tensor>| {
        let mut inputs = good.clone();
        inputs[slot] = t;
        inputs
    };
    let none_op = Op::LinearCrossEntropy {
        reduction: LossReduction::None,
        ignore_index: None,
        label_smoothing: 0.0,
        z_loss: 0.0,
        transpose_weight: true,
        chunk_size: 8,
    };
    let zero_chunk_op = Op::LinearCrossEntropy {
        reduction: LossReduction::None,
        ignore_index: None,
        label_smoothing: 0.0,
        z_loss: 0.0,
        transpose_weight: true,
        chunk_size: 0,
    };
    let bad: Vec<BadCase> = vec![
        ("another op", Op::MatMul, good.clone(), scalar.clone(), exact.clone()),
        ("missing weight", op.clone(), with(1, None), scalar.clone(), exact.clone()),
        ("missing inputs", op.clone(), vec![], scalar.clone(), exact.clone()),
        ("3-D hidden", op.clone(), with(0, Some(f(&[5, 4, 1]))), scalar.clone(), exact.clone()),
        ("hidden size", op.clone(), with(1, Some(f(&[37, 3]))), scalar.clone(), exact.clone()),
        (
            "label count",
            op.clone(),
            with(2, Some(Tensor::from_i64s(DType::I64, &[4], &[0; 4]))),
            scalar.clone(),
            exact.clone(),
        ),
        ("label too big", op.clone(), with(2, Some(labels(&[0, 1, 37, 2, 3]))), scalar.clone(), exact.clone()),
        ("negative label", op.clone(), with(2, Some(labels(&[0, -1, 2, 2, 3]))), scalar.clone(), exact.clone()),
        (
            "ignore value without ignore_index",
            op.clone(),
            with(2, Some(labels(&[0, IGNORE, 2, 2, 3]))),
            scalar.clone(),
            exact.clone(),
        ),
        ("float labels", op.clone(), with(2, Some(f(&[5]))), scalar.clone(), exact.clone()),
        (
            "integer hidden",
            op.clone(),
            with(0, Some(Tensor::from_i64s(DType::I64, &[5, 4], &[1; 20]))),
            scalar.clone(),
            exact.clone(),
        ),
        ("bias shape", op.clone(), with(3, Some(f(&[36]))), scalar.clone(), exact.clone()),
        ("class weight shape", op.clone(), with(4, Some(f(&[37, 1]))), scalar.clone(), exact.clone()),
        ("[N] upstream for mean", op.clone(), good.clone(), f(&[5]), exact.clone()),
        ("[1] upstream for mean", op.clone(), good.clone(), f(&[1]), exact.clone()),
        ("scalar upstream for none", none_op.clone(), good.clone(), scalar.clone(), exact.clone()),
        ("integer upstream", op.clone(), good.clone(), Tensor::scalar_i64(1), exact.clone()),
        ("chunk 0", op.clone(), good.clone(), scalar.clone(), LceGradOptions { chunk_size: Some(0), ..exact.clone() }),
        ("op chunk 0", zero_chunk_op, good.clone(), f(&[5]), exact.clone()),
        ("row block 0", op.clone(), good.clone(), scalar.clone(), LceGradOptions { row_block: 0, ..exact.clone() }),
        (
            "negative threshold",
            op.clone(),
            good.clone(),
            scalar.clone(),
            LceGradOptions { skip_threshold: -1e-3, ..exact.clone() },
        ),
        (
            "NaN threshold",
            op.clone(),
            good.clone(),
            scalar.clone(),
            LceGradOptions { skip_threshold: f32::NAN, ..exact.clone() },
        ),
    ];
    for (what, op, inputs, grad_loss, options) in bad {
        match linear_cross_entropy_grad(&op, &inputs, &grad_loss, &options) {
            Err(IrError::Node { op: op_name, message, .. }) => {
                assert_eq!(op_name, op.name(), "{what}");
                assert!(!message.is_empty(), "{what}");
            }
            Err(other) => panic!("{what}: expected a node error, got {other}"),
            Ok(_) => panic!("{what}: accepted"),
        }
    }
    // The same inputs, fixed, are accepted.
    assert!(linear_cross_entropy_grad(&op, &good, &scalar, &exact).is_ok());
    assert!(linear_cross_entropy_grad(&none_op, &good[..3], &f(&[5]), &exact).is_ok());
}

// ---------------------------------------------------------------- (e) memory

#[test]
fn working_memory_stays_far_below_n_by_v() {
    let case = Case {
        n: 512,
        d: 4,
        v: 8192,
        reduction: LossReduction::Sum,
        bias: true,
        chunk: 64,
        dtype: DType::F32,
        ..Case::small()
    };
    let pb = Problem::new(case, 11);
    let (inputs, grad_loss) = (pb.inputs(), pb.grad_loss());
    let logits_bytes = case.n * case.v * std::mem::size_of::<f64>();
    // The tracker sees a dense N × V buffer, so the bound below can fail.
    let (buffer, dense_peak) = peak_bytes(|| vec![0.0f64; case.n * case.v]);
    assert!(dense_peak >= logits_bytes);
    drop(buffer);
    let options = LceGradOptions { row_block: 32, ..LceGradOptions::exact() };
    let (g, peak) = peak_bytes(|| linear_cross_entropy_grad(&case.op(), &inputs, &grad_loss, &options));
    let g = g.expect("valid inputs");
    assert_eq!(g.stats.tiles, (512 / 32) * (8192 / 64));
    // What the call must hold: the f64 copies of hidden and of dW/dH/db
    // and the outputs, about 0.6 MiB here, against 32 MiB of logits.
    assert!(peak < logits_bytes / 16, "peak {peak} bytes against {logits_bytes} for the logits");
}
