//! `sigmoid`: sigmoid attention without normalization.
//!
//! `Y = (σ(s·QKᵀ + M + b) ⊙ C) V` with `b = −log n`, `n` the key length
//! read at run time, `M` the additive mask (booleans as 0 / −∞, so
//! `σ(−∞) = 0` drops a masked key exactly as softmax does) and `C` the 0/1
//! causal matrix when `is_causal`. With no normalization no token competes
//! with the others for weight, which is what keeps attention sinks from
//! forming ("When Attention Sink Emerges"); the bias `−log n` keeps the
//! total weight of a row near one at initialization, as in sigmoid-attention
//! practice. Cost stays quadratic in the sequence length: this kind trades
//! accuracy for a cheaper, sync-free nonlinearity, not for asymptotics.

use super::subgraph::{causal_matrix, scores, Builder, Heads, Site};
use kiln_ir::op::{BinaryOp, UnaryOp};
use kiln_ir::{Result, ValueId};

/// Builds the per-head result `[.., Sq, Dv]`.
pub(crate) fn build(b: &mut Builder, site: &Site, heads: &Heads) -> Result<ValueId> {
    let s = scores(b, site, heads, true)?;
    let n = b.dim_as_float(heads.k, -2, "key_len")?;
    let log_n = b.unary(UnaryOp::Log, n, "log_key_len")?;
    let biased = b.binary(BinaryOp::Sub, s, log_n, "scores.biased")?;
    let mut w = b.unary(UnaryOp::Sigmoid, biased, "weights")?;
    if site.attrs.is_causal {
        let c = causal_matrix(b, s)?;
        w = b.binary(BinaryOp::Mul, w, c, "weights.causal")?;
    }
    b.matmul(w, heads.v, "weighted")
}
