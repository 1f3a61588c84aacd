//! The reference backward of `kiln::LinearCrossEntropy`: gradients of the
//! loss with respect to the hidden states, the head weight and the bias,
//! computed in vocabulary tiles without ever holding the `N × V` logits,
//! with the gradient filtering of Cut Cross-Entropy (Wijmans et al., "Cut
//! Your Losses in Large-Vocabulary Language Models").
//!
//! # Formulas
//!
//! With the logits `x_ik = h_i·W_k + b_k` (`W_k` the head's row for
//! vocabulary entry `k`), `L_i = log Σ_k exp(x_ik)`, the softmax
//! `p_ik = exp(x_ik - L_i)`, the label `y = y_i`, class weights `w` (all ones
//! without a class-weight input), `W_tot = Σ_k w_k`, smoothing `ε` and z-loss
//! `ζ`, the per-row loss of the spec in [`crate::op`],
//! `l_i = w_y·[(1-ε)(L_i - x_iy) + ζ·L_i²] + (ε/V)·(L_i·W_tot - Σ_k w_k x_ik)`,
//! has the logit gradient
//!
//! `u_ik = ∂l_i/∂x_ik = (w_y(1-ε) + 2ζ·w_y·L_i + ε·W_tot/V)·p_ik - w_y(1-ε)·[k = y] - (ε/V)·w_k`.
//!
//! The reduction and the upstream gradient `g` scale each row by
//! `s_i = g_i` (`none`, `g` of shape `[N]`), `s_i = g` (`sum`) or
//! `s_i = g / Σ_j w_{y_j}` (`mean`, the sum over the rows not ignored), and
//! with `G_ik = s_i·u_ik`:
//!
//! - `dH_i = Σ_k G_ik·W_k`,
//! - `dW_k = Σ_i G_ik·h_i` (laid out like the weight, `[V, d]` or `[d, V]`),
//! - `db_k = Σ_i G_ik`.
//!
//! Rows whose label is `ignore_index` have `G_ik = 0`. Labels and class
//! weights are constants: they get no gradient. With `mean` and no counted
//! row the loss is `0/0` (NaN, as the forward reports) while every row's
//! `G` is zero, so the gradients are zero.
//!
//! # Tiles and memory
//!
//! A tile is a block of at most [`LceGradOptions::row_block`] rows by one
//! vocabulary chunk of at most `chunk` entries. The first pass is the
//! forward kernel's online log-sum-exp (shared code, so the loss returned
//! here is the forward's, bit for bit, at the same chunk size). The second
//! pass visits the chunks in order; for each it reads that chunk of the head
//! once, then for each row block widens that block of `hidden` to f64,
//! recomputes the block's logits (the forward's f64 matrix product), forms
//! `u` for the tile, and accumulates `dH += G·W_chunk` and `dW_chunk +=
//! Gᵀ·H_block` (two more f64 matrix products) and `db`. Besides the inputs
//! and the gradients themselves (which are `[N, d]`, `[V, d]` and `[V]`),
//! the working memory is one tile of `u` (`row_block × chunk`), one chunk of
//! the head (`chunk × d`), one row block of `hidden` (`row_block × d`) and
//! a few numbers per row: never `N × V`. All arithmetic is in f64; each
//! gradient is rounded once to the dtype of its input.
//!
//! # Gradient filtering
//!
//! With [`LceGradOptions::skip_threshold`] `τ > 0`, a tile in which every
//! entry satisfies `|u_ik| < τ` is skipped: its contributions to `dH`, `dW`
//! and `db` are not accumulated, exactly as if those `G_ik` were zero.
//! Without class weights, smoothing and z-loss, `u_ik = p_ik - [k = y_i]`,
//! so this is the paper's test that the softmax minus the one-hot target is
//! below `τ` everywhere in the block (the paper's `τ = 2^-12`, the default
//! here, is below bf16's resolution relative to 1). The test is on `u`,
//! before the reduction and upstream scale, so it does not depend on the
//! batch size. The error it introduces is bounded entrywise: for each
//! skipped entry `|G_ik| < |s_i|·τ`, so `|ΔdH_ij| ≤ τ·|s_i|·Σ_{k skipped
//! for i} |W_kj|`, `|ΔdW_kj| ≤ τ·Σ_{i skipped for k} |s_i|·|h_ij|` and
//! `|Δdb_k| ≤ τ·Σ_{i skipped for k} |s_i|`. With `τ = 0` no tile is skipped
//! (the test `|u| < 0` never holds) and the gradient is exact up to f64
//! rounding. A NaN in a tile never compares below `τ`, so it is never
//! filtered away.

use super::nn::{head_rows, hidden_rows, reduce_losses, CrossEntropyParams, LinearInputs, LinearProblem};
use super::util::{optional, required, KResult};
use crate::error::{IrError, Result};
use crate::op::{LossReduction, Op};
use crate::tensor::Tensor;
use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};

/// The paper's filtering threshold, `2^-12`.
pub const DEFAULT_SKIP_THRESHOLD: f32 = 1.0 / 4096.0;

/// Default rows per tile of [`linear_cross_entropy_grad`].
pub const DEFAULT_ROW_BLOCK: usize = 128;

/// The name [`linear_cross_entropy_grad`]'s errors give as the node: it runs
/// outside any graph.
const ERROR_NODE: &str = "linear_cross_entropy_grad";

/// Options of [`linear_cross_entropy_grad`].
#[derive(Clone, Debug, PartialEq)]
pub struct LceGradOptions {
    /// Vocabulary entries per tile; `None` takes the op's `chunk_size`.
    /// Like the forward's chunk, it changes memory and rounding order, not
    /// the value beyond rounding (unless filtering skips tiles, whose
    /// extent it sets).
    pub chunk_size: Option<usize>,
    /// Rows per tile (at least 1). It sets the granularity of the filtering:
    /// a tile is skipped only when all its rows are below the threshold.
    pub row_block: usize,
    /// Skip a tile when every `|∂l_i/∂x_ik|` in it is below this (see the
    /// [module docs](crate::interp::lce_grad)); 0 computes the exact
    /// gradient. Must be finite and
    /// non-negative.
    pub skip_threshold: f32,
}

impl Default for LceGradOptions {
    fn default() -> Self {
        LceGradOptions { chunk_size: None, row_block: DEFAULT_ROW_BLOCK, skip_threshold: DEFAULT_SKIP_THRESHOLD }
    }
}

impl LceGradOptions {
    /// The exact gradient (no filtering) with the op's chunk size.
    pub fn exact() -> Self {
        LceGradOptions { skip_threshold: 0.0, ..LceGradOptions::default() }
    }
}

/// How many tiles the backward visited and how many the filter skipped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LceGradStats {
    /// Tiles (row block × vocabulary chunk) of the second pass.
    pub tiles: usize,
    /// Tiles whose accumulation the threshold skipped.
    pub skipped: usize,
}

/// The result of [`linear_cross_entropy_grad`].
#[derive(Clone, Debug)]
pub struct LinearCrossEntropyGrad {
    /// The forward op's loss output (its shape and dtype), from the same
    /// first pass.
    pub loss: Tensor,
    /// `∂loss/∂hidden`, `[N, d]` in the hidden dtype.
    pub d_hidden: Tensor,
    /// `∂loss/∂weight`, the weight's shape and dtype.
    pub d_weight: Tensor,
    /// `∂loss/∂bias`, `[V]` in the bias dtype, when a bias was given.
    pub d_bias: Option<Tensor>,
    /// Tile counts of the second pass.
    pub stats: LceGradStats,
}

/// The loss and gradients of `kiln::LinearCrossEntropy` (see the
/// [module docs](crate::interp::lce_grad) for the formulas, the tiling and
/// the filtering).
///
/// `op` must be an [`Op::LinearCrossEntropy`]; `inputs` are the op's inputs
/// in its order: `hidden` `[N, d]`, `weight` `[V, d]` or `[d, V]` (as
/// `transpose_weight` says), `labels` `[N]`, optional `bias` `[V]`,
/// optional class `weight` `[V]`. `grad_loss` is the upstream gradient of
/// the loss output: a scalar (shape `[]`) for `mean` and `sum`, `[N]` for
/// `none`. The working memory is a tile of at most `row_block × chunk`
/// values, never `N × V`.
///
/// Errors ([`IrError::Node`], op `LinearCrossEntropy`) for another op, a
/// missing input, non-float hidden/weight/bias/class weight/`grad_loss`,
/// mismatched shapes, a label outside `[0, V)` that is not `ignore_index`,
/// a chunk size or row block of 0, and a negative or non-finite threshold.
pub fn linear_cross_entropy_grad(
    op: &Op,
    inputs: &[Option<Tensor>],
    grad_loss: &Tensor,
    options: &LceGradOptions,
) -> Result<LinearCrossEntropyGrad> {
    grad(op, inputs, grad_loss, options).map_err(|m| IrError::node(ERROR_NODE, op.name(), m))
}

fn grad(
    op: &Op,
    inputs: &[Option<Tensor>],
    grad_loss: &Tensor,
    options: &LceGradOptions,
) -> KResult<LinearCrossEntropyGrad> {
    let &Op::LinearCrossEntropy { reduction, ignore_index, label_smoothing, z_loss, transpose_weight, chunk_size } = op
    else {
        return Err(format!("expected a LinearCrossEntropy op, found {}", op.name()));
    };
    let p =
        CrossEntropyParams { reduction, ignore_index, label_smoothing: label_smoothing as f64, z_loss: z_loss as f64 };
    let t = LinearInputs {
        hidden: required(inputs, 0, "hidden")?,
        weight: required(inputs, 1, "weight")?,
        labels: required(inputs, 2, "labels")?,
        bias: optional(inputs, 3),
        class_weight: optional(inputs, 4),
    };
    let floats = [
        ("hidden", Some(t.hidden)),
        ("weight", Some(t.weight)),
        ("bias", t.bias),
        ("class weight", t.class_weight),
        ("grad_loss", Some(grad_loss)),
    ];
    for (what, tensor) in floats {
        if let Some(tensor) = tensor.filter(|x| !x.dtype().is_float()) {
            return Err(format!("{what} must be a float tensor, found {}", tensor.dtype()));
        }
    }
    let chunk = match options.chunk_size {
        Some(c) => Some(c).filter(|&c| c >= 1),
        None => usize::try_from(chunk_size).ok().filter(|&c| c >= 1),
    }
    .ok_or("chunk_size must be at least 1")?;
    if options.row_block == 0 {
        return Err("row_block must be at least 1".into());
    }
    let tau = options.skip_threshold as f64;
    if !(tau.is_finite() && tau >= 0.0) {
        return Err(format!("skip_threshold must be finite and non-negative, found {tau}"));
    }

    let problem = LinearProblem::new(&t, ignore_index, transpose_weight)?;
    let (n, d, vocab) = (problem.n, problem.d, problem.vocab);
    let upstream_shape: &[usize] = if reduction == LossReduction::None { &[n] } else { &[] };
    if grad_loss.shape() != upstream_shape {
        return Err(format!(
            "grad_loss must have the loss's shape {upstream_shape:?} (reduction {reduction:?}), found {:?}",
            grad_loss.shape()
        ));
    }

    // First pass: the forward's online log-sum-exp, and the loss itself.
    let rows = problem.row_states(t.hidden, t.weight, transpose_weight, chunk, p.label_smoothing);
    let (losses, total_weight) = problem.losses(&rows, &p);
    let loss = reduce_losses(t.hidden.dtype(), reduction, &losses, total_weight);

    let upstream = grad_loss.to_f64s();
    let total_class_weight: f64 = (0..vocab).map(|k| problem.class_weight(k)).sum();
    let smooth = p.label_smoothing / vocab as f64;
    // Per counted row: (label, lse, scale s_i, coefficient of p_ik, target
    // coefficient w_y(1-ε)), the pieces of u_ik and G_ik = s_i·u_ik.
    let row_terms: Vec<Option<RowTerms>> = (0..n)
        .map(|i| {
            problem.classes[i].map(|class| {
                let lse = rows[i].lse();
                let w = problem.class_weight(class);
                let scale = match reduction {
                    LossReduction::None => upstream[i],
                    LossReduction::Sum => upstream[0],
                    LossReduction::Mean => upstream[0] / total_weight,
                };
                let target = w * (1.0 - p.label_smoothing);
                RowTerms {
                    class,
                    lse,
                    scale,
                    softmax_coef: target + 2.0 * p.z_loss * w * lse + smooth * total_class_weight,
                    target_coef: target,
                }
            })
        })
        .collect();

    // Second pass, tile by tile. `tile` holds u, then G, for one row block
    // × chunk; the three products per tile are f64 matrix products.
    let mut d_hidden = vec![0.0; n * d];
    let mut d_head = vec![0.0; vocab * d];
    let mut d_bias = problem.bias.as_ref().map(|_| vec![0.0; vocab]);
    let row_block = options.row_block.min(n.max(1));
    let mut tile = vec![0.0; row_block * chunk.min(vocab)];
    let mut stats = LceGradStats::default();
    for v0 in (0..vocab).step_by(chunk) {
        let v1 = (v0 + chunk).min(vocab);
        let width = v1 - v0;
        let head = head_rows(t.weight, transpose_weight, v0, v1);
        for r0 in (0..n).step_by(row_block) {
            let r1 = (r0 + row_block).min(n);
            let rows = r1 - r0;
            stats.tiles += 1;
            let terms = &row_terms[r0..r1];
            if terms.iter().all(Option::is_none) {
                // An all-zero tile: below any positive threshold, and adding
                // nothing otherwise.
                if tau > 0.0 {
                    stats.skipped += 1;
                }
                continue;
            }
            let mut block = hidden_rows(t.hidden, r0, r1);
            let tile = &mut tile[..rows * width];
            problem.logits_tile(&block, &head, v0, v1, tile);
            for (terms, u) in terms.iter().zip(tile.chunks_exact_mut(width)) {
                let Some(terms) = terms else {
                    u.fill(0.0);
                    continue;
                };
                for (k, x) in u.iter_mut().enumerate() {
                    let prob = (*x - terms.lse).exp();
                    *x = terms.softmax_coef * prob - smooth * problem.class_weight(v0 + k);
                }
                if (v0..v1).contains(&terms.class) {
                    u[terms.class - v0] -= terms.target_coef;
                }
            }
            if tau > 0.0 && tile.iter().all(|u| u.abs() < tau) {
                stats.skipped += 1;
                continue;
            }
            for (r, (terms, g)) in terms.iter().zip(tile.chunks_exact_mut(width)).enumerate() {
                match terms {
                    Some(terms) => g.iter_mut().for_each(|g| *g *= terms.scale),
                    // An ignored row's G is already zero; zeroing its hidden
                    // row too keeps a non-finite value there (padding) out
                    // of dW, where 0·inf would be NaN.
                    None => block[r * d..(r + 1) * d].fill(0.0),
                }
            }
            let g = ArrayView2::from_shape((rows, width), &*tile).expect("the tile is [rows, width]");
            let w = ArrayView2::from_shape((width, d), &head[..]).expect("the head chunk is [width, d]");
            let h = ArrayView2::from_shape((rows, d), &block[..]).expect("the hidden block is [rows, d]");
            let mut dh = ArrayViewMut2::from_shape((rows, d), &mut d_hidden[r0 * d..r1 * d])
                .expect("the dH block is [rows, d]");
            general_mat_mul(1.0, &g, &w, 1.0, &mut dh);
            let mut dw = ArrayViewMut2::from_shape((width, d), &mut d_head[v0 * d..v1 * d])
                .expect("the dW chunk is [width, d]");
            general_mat_mul(1.0, &g.t(), &h, 1.0, &mut dw);
            if let Some(db) = d_bias.as_mut() {
                for g in tile.chunks_exact(width) {
                    for (acc, g) in db[v0..v1].iter_mut().zip(g) {
                        *acc += g;
                    }
                }
            }
        }
    }
    // dH of an ignored row is zero by definition; its G row was zero, but
    // 0·inf in the product with a non-finite head row would have left NaN.
    for (i, class) in problem.classes.iter().enumerate() {
        if class.is_none() {
            d_hidden[i * d..(i + 1) * d].fill(0.0);
        }
    }

    let d_weight = if transpose_weight {
        d_head
    } else {
        // d_head is [V, d]; the weight is stored [d, V].
        (0..d * vocab).map(|at| d_head[(at % vocab) * d + at / vocab]).collect()
    };
    Ok(LinearCrossEntropyGrad {
        loss,
        d_hidden: Tensor::from_f64s(t.hidden.dtype(), &[n, d], &d_hidden),
        d_weight: Tensor::from_f64s(t.weight.dtype(), t.weight.shape(), &d_weight),
        d_bias: d_bias.zip(t.bias).map(|(db, b)| Tensor::from_f64s(b.dtype(), &[vocab], &db)),
        stats,
    })
}

/// What the second pass needs of one counted row.
struct RowTerms {
    /// The row's label.
    class: usize,
    /// `L_i`, the log-sum-exp of the row's logits.
    lse: f64,
    /// `s_i`: the upstream gradient, divided by `Σ w_y` for `mean`.
    scale: f64,
    /// `w_y(1-ε) + 2ζ·w_y·L_i + ε·W_tot/V`, the factor of `p_ik` in `u_ik`.
    softmax_coef: f64,
    /// `w_y(1-ε)`, subtracted at the label.
    target_coef: f64,
}
