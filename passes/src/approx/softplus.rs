//! `softplus`: length-scaled softplus attention with l1 normalization
//! (LSSA, "Softplus Attention with Re-weighting").
//!
//! The seed decomposes softmax into a positive map (`exp`) and an
//! l1 normalization, keeps the normalization, replaces `exp` by softplus
//! and multiplies the scores by a length-dependent factor derived from
//! entropy invariance. kiln implements, per query row `i`:
//!
//! ```text
//! λ_i  = log(n_i) / log(n_ref)
//! w_ij = softplus(λ_i · s · q_i·k_j + M_ij) · C_ij
//! y_i  = Σ_j w_ij v_j / Σ_j w_ij
//! ```
//!
//! `n_i` is the number of keys row `i` may see: `i + 1` when causal (the
//! row sums of the causal matrix `C`), the key length otherwise, read at run
//! time so the factor follows the sequence length. `n_ref` is the reference
//! length ([`super::ApproxOptions::softplus_reference_len`], by default the
//! model's own sequence length), so at the length the model was typed for
//! the factor is 1 and it grows like `log n` beyond it, which is the
//! entropy-invariant scaling (`log_{n_ref} n`). The mask is added after the
//! scaling (a causal first row has `λ = 0`, and `0·(−∞)` would be NaN);
//! `softplus(−∞) = 0`, so masked keys drop out of both sums. The
//! re-weighting stage of the paper (a power sharpening of the weights) is
//! not applied.

use super::subgraph::{causal_matrix, scores, Builder, Heads, Site};
use kiln_ir::op::{BinaryOp, ReduceKind, UnaryOp};
use kiln_ir::{Result, ValueId};

/// Builds the per-head result `[.., Sq, Dv]`.
pub(crate) fn build(
    b: &mut Builder,
    site: &Site,
    heads: &Heads,
    reference_len: f64,
) -> Result<ValueId> {
    let s = scores(b, site, heads, false)?;
    let causal = if site.attrs.is_causal {
        Some(causal_matrix(b, s)?)
    } else {
        None
    };
    let visible = match causal {
        Some(c) => b.reduce(ReduceKind::Sum, c, &[-1], "visible")?,
        None => b.dim_as_float(heads.k, -2, "visible")?,
    };
    let log_n = b.unary(UnaryOp::Log, visible, "log_visible")?;
    let lambda = b.scale(log_n, 1.0 / reference_len.ln(), "length_scale")?;
    let mut scaled = b.binary(BinaryOp::Mul, s, lambda, "scores.length_scaled")?;
    if let Some(m) = heads.mask {
        scaled = b.binary(BinaryOp::Add, scaled, m, "scores.masked")?;
    }
    let mut w = b.unary(UnaryOp::Softplus, scaled, "weights")?;
    if let Some(c) = causal {
        w = b.binary(BinaryOp::Mul, w, c, "weights.causal")?;
    }
    let total = b.reduce(ReduceKind::Sum, w, &[-1], "weights.l1")?;
    let num = b.matmul(w, heads.v, "weighted")?;
    b.binary(BinaryOp::Div, num, total, "normalized")
}
