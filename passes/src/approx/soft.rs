//! `soft`: SOFT, softmax-free attention with a Gaussian kernel,
//! approximated in low rank by Nyström with landmarks and a Newton–Schulz
//! pseudo-inverse.
//!
//! SOFT replaces the softmax of dot products by the Gaussian kernel
//! `G(q, k) = exp(−‖q − k‖² / (2√d))`; kiln uses the node's scale `s`
//! (`1/√d` by default, which is exactly SOFT's kernel):
//! `G(q, k) = exp(−s/2 · ‖q − k‖²)`. SOFT ties Q = K (one shared
//! projection), so the kernel matrix is symmetric positive semi-definite
//! and its landmarks come from that one set of tokens. A fused Attention
//! node has separate Q and K; kiln takes the landmarks `K̃` from the keys
//! and uses the Nyström approximation of the kernel between any two
//! points, `G(Q, K) ≈ G(Q, K̃) · G(K̃, K̃)⁺ · G(K̃, K)`, which is the
//! projection onto the span of the landmarks' kernel features; the
//! Gaussian kernel is positive definite over all points, so this is
//! well-defined for Q ≠ K and reduces to SOFT's form when Q = K.
//!
//! - Landmarks: `m` segment means of the keys. Key `j` of `n` belongs to
//!   segment `⌊j·m / n⌋`; the averaging matrix is built at run time from
//!   Range/Equal, so any `n >= m` works (segments differ in length by at
//!   most one). `m` is [`super::ApproxOptions::landmarks`], capped at the
//!   key length when that is static.
//! - `G(K̃, K̃)⁺` by Newton–Schulz: `X₀ = A / (‖A‖₁‖A‖∞)` (A is symmetric,
//!   so `Aᵀ = A`), `X ← 2X − X·A·X`, for
//!   [`super::ApproxOptions::newton_schulz_iterations`] steps; this
//!   converges to the Moore–Penrose inverse for any `A`.
//! - Product order `G(Q,K̃)·(X·(G(K̃,K)·V))`: every intermediate is
//!   `[.., n, m]`, `[.., m, m]` or `[.., m, Dv]`, linear in `n`.
//! - Normalization: plain SOFT (`Y = Ĝ V`) is not row-stochastic, so as a
//!   stand-in for softmax attention kiln divides each row by its sum
//!   computed with the same factors (`Ĝ·1`), unless
//!   [`super::ApproxOptions::soft_normalize`] is off. A row-normalized
//!   Gaussian kernel is `softmax_j(s·q·k_j − s/2·‖k_j‖²)`: softmax with a
//!   key-norm penalty, so it matches softmax exactly when keys have equal
//!   norms.
//! - Masks: a key-padding mask weights the columns of `G(K̃, K)` by
//!   `exp(M_j)`; row-varying masks are refused. Causal attention is refused:
//!   segment-mean landmarks average over future keys, so every output would
//!   depend on tokens after it.

use super::subgraph::{Builder, Heads, Site, Skip};
use kiln_ir::dtype::DType;
use kiln_ir::op::{BinaryOp, Op, ReduceKind, UnaryOp, VariadicOp};
use kiln_ir::tensor::Tensor;
use kiln_ir::{Result, ValueId};

/// Says why SOFT cannot replace this node, if it cannot.
pub(crate) fn check(site: &Site, mask_key_only: bool) -> Option<Skip> {
    if site.attrs.is_causal {
        return Some("causal: SOFT's segment-mean landmarks average over future keys".into());
    }
    if site.mask.is_some() && !mask_key_only {
        return Some("attn_mask varies between query rows; SOFT can only weight keys".into());
    }
    None
}

/// `exp(−s/2 · ‖a_i − b_j‖²)` for `a [.., Na, D]`, `b [.., Nb, D]`.
fn gaussian(
    b: &mut Builder,
    x: ValueId,
    y: ValueId,
    rank: usize,
    scale: f64,
    hint: &str,
) -> Result<ValueId> {
    let yt = b.swap_last(y, rank, &format!("{hint}.bt"))?;
    let dot = b.matmul(x, yt, &format!("{hint}.dot"))?;
    let xx = b.binary(BinaryOp::Mul, x, x, &format!("{hint}.a2"))?;
    let xn = b.reduce(ReduceKind::Sum, xx, &[-1], &format!("{hint}.a_norm"))?;
    let yy = b.binary(BinaryOp::Mul, y, y, &format!("{hint}.b2"))?;
    let yn = b.reduce(ReduceKind::Sum, yy, &[-1], &format!("{hint}.b_norm"))?;
    let ynt = b.swap_last(yn, rank, &format!("{hint}.b_norm.t"))?;
    // ‖a‖² + ‖b‖² − 2a·b, then times −s/2.
    let two_dot = b.scale(dot, 2.0, &format!("{hint}.dot2"))?;
    let sum = b.binary(BinaryOp::Add, xn, ynt, &format!("{hint}.norms"))?;
    let d2 = b.binary(BinaryOp::Sub, sum, two_dot, &format!("{hint}.dist2"))?;
    let e = b.scale(d2, -scale / 2.0, &format!("{hint}.exponent"))?;
    b.unary(UnaryOp::Exp, e, hint)
}

/// The `[m, n]` segment-averaging matrix for the `n` keys of `k`.
fn landmark_pool(b: &mut Builder, k: ValueId, m: usize) -> Result<ValueId> {
    let n_vec = b.op(
        Op::Shape {
            start: -2,
            end: Some(-1),
        },
        &[k],
        "landmarks.n",
    )?;
    let n = b.squeeze(n_vec, &[0], "landmarks.n.scalar")?;
    let zero = b.constant(Tensor::scalar_i64(0), "landmarks.zero")?;
    let one = b.constant(Tensor::scalar_i64(1), "landmarks.one")?;
    let j = b.op(Op::Range, &[zero, n, one], "landmarks.j")?;
    let m_const = b.constant(Tensor::scalar_i64(m as i64), "landmarks.m")?;
    let jm = b.binary(BinaryOp::Mul, j, m_const, "landmarks.jm")?;
    // Integer division rounds toward zero, which is the floor for j >= 0.
    let seg = b.binary(BinaryOp::Div, jm, n, "landmarks.segment")?;
    let seg_row = b.unsqueeze(seg, &[0], "landmarks.segment.row")?;
    let ids: Vec<i64> = (0..m as i64).collect();
    let ids = b.constant(
        Tensor::from_i64s(DType::I64, &[m, 1], &ids),
        "landmarks.ids",
    )?;
    let member = b.binary(BinaryOp::Equal, seg_row, ids, "landmarks.member")?;
    let dtype = b.dtype;
    let member = b.op(
        Op::Cast {
            to: dtype,
            saturate: true,
        },
        &[member],
        "landmarks.member.f",
    )?;
    let count = b.reduce(ReduceKind::Sum, member, &[-1], "landmarks.count")?;
    // An empty segment (fewer keys than landmarks) averages nothing
    // instead of dividing by zero; its landmark is the zero vector.
    let floor = b.scalar(1.0, "landmarks.count.min")?;
    let count = b.op(
        Op::Variadic(VariadicOp::Max),
        &[count, floor],
        "landmarks.count.safe",
    )?;
    b.binary(BinaryOp::Div, member, count, "landmarks.pool")
}

/// Newton–Schulz iterations towards `a⁺` for symmetric `a [.., m, m]`.
fn pseudo_inverse(b: &mut Builder, a: ValueId, iterations: usize) -> Result<ValueId> {
    let row_sums = b.reduce(ReduceKind::Sum, a, &[-1], "pinv.row_l1")?;
    let inf_norm = b.reduce(ReduceKind::Max, row_sums, &[-2], "pinv.norm")?;
    let norm2 = b.binary(BinaryOp::Mul, inf_norm, inf_norm, "pinv.norm2")?;
    let mut x = b.binary(BinaryOp::Div, a, norm2, "pinv.x0")?;
    for i in 1..=iterations {
        let ax = b.matmul(a, x, &format!("pinv.ax{i}"))?;
        let xax = b.matmul(x, ax, &format!("pinv.xax{i}"))?;
        let two_x = b.scale(x, 2.0, &format!("pinv.2x{i}"))?;
        x = b.binary(BinaryOp::Sub, two_x, xax, &format!("pinv.x{i}"))?;
    }
    Ok(x)
}

/// Builds the per-head result `[.., Sq, Dv]`.
pub(crate) fn build(
    b: &mut Builder,
    site: &Site,
    heads: &Heads,
    landmarks: usize,
    iterations: usize,
    normalize: bool,
) -> Result<ValueId> {
    let m = match site.kv_len.fixed() {
        Some(n) => landmarks.min(n.max(1) as usize),
        None => landmarks,
    };
    let pool = landmark_pool(b, heads.k, m)?;
    let kl = b.matmul(pool, heads.k, "landmarks")?;
    let r = heads.rank;
    let g_ql = gaussian(b, heads.q, kl, r, site.scale, "kernel_q_l")?;
    let g_ll = gaussian(b, kl, kl, r, site.scale, "kernel_l_l")?;
    let mut g_lk = gaussian(b, kl, heads.k, r, site.scale, "kernel_l_k")?;
    if let Some(mask) = heads.mask {
        let w = b.unary(UnaryOp::Exp, mask, "key_weights")?;
        g_lk = b.binary(BinaryOp::Mul, g_lk, w, "kernel_l_k.masked")?;
    }
    let pinv = pseudo_inverse(b, g_ll, iterations)?;
    let lv = b.matmul(g_lk, heads.v, "landmark_values")?;
    let plv = b.matmul(pinv, lv, "landmark_values.pinv")?;
    let num = b.matmul(g_ql, plv, "num")?;
    if !normalize {
        return Ok(num);
    }
    let lsum = b.reduce(ReduceKind::Sum, g_lk, &[-1], "landmark_mass")?;
    let psum = b.matmul(pinv, lsum, "landmark_mass.pinv")?;
    let den = b.matmul(g_ql, psum, "den")?;
    b.binary(BinaryOp::Div, num, den, "normalized")
}
