//! `linear`: kernelized linear attention (Katharopoulos et al.) with the
//! feature map `φ(x) = elu(x) + 1`.
//!
//! ```text
//! y_i = φ(q_i)ᵀ (Σ_j φ(k_j) v_jᵀ) / (φ(q_i) · Σ_j φ(k_j))
//! ```
//!
//! with the sums over all keys, or over `j <= i` when causal, where they
//! become prefix sums (CumSum over the sequence of the outer products
//! `φ(k_j) v_jᵀ`, `[.., S, D, Dv]`, and of `φ(k_j)`). Work and memory are
//! linear in the sequence length. Q and K are multiplied by `√s` before `φ`
//! (the node's scale split between them, as ONNX applies it), so the
//! feature map sees inputs of the size softmax's exponent saw.
//!
//! Masks: a kernel feature map cannot add a bias to a score, but a bias
//! that depends only on the key (a key-padding mask `[.., 1, Skv]`) is a
//! per-key weight `exp(M_j)` on `φ(k_j)`, which keeps the factorization;
//! booleans give weights 1 and 0. A mask that differs between query rows
//! has no linear form: such nodes are left exact (the report says so).
//!
//! With [`super::LinearForm::LinearAttentionOp`], causal self-attention
//! without a mask is written with ONNX-27 `LinearAttention` (update rule
//! `linear`): one op for the numerator and one, over a value of ones, for
//! the normalizer. Its recurrent state is `[B, Hkv, D, Dv]` instead of the
//! decomposed form's `[.., S, D, Dv]` prefix sums, so peak memory no longer
//! grows with `S` for the state.

use super::subgraph::{Builder, Heads, Site, Skip};
use kiln_ir::op::{BinaryOp, LinearAttentionAttrs, Op, ReduceKind, UnaryOp};
use kiln_ir::tensor::Tensor;
use kiln_ir::{Result, ValueId};

/// `elu(√s·x) + 1`.
fn feature_map(b: &mut Builder, x: ValueId, scale: f64, hint: &str) -> Result<ValueId> {
    let scaled = b.scale(x, scale.sqrt(), &format!("{hint}.scaled"))?;
    let elu = b.op(Op::Elu { alpha: 1.0 }, &[scaled], &format!("{hint}.elu"))?;
    let one = b.scalar(1.0, &format!("{hint}.one"))?;
    b.binary(BinaryOp::Add, elu, one, hint)
}

/// Says why the linear form cannot replace this node, if it cannot.
pub(crate) fn check(site: &Site, heads_mask_key_only: bool) -> Option<Skip> {
    if site.attrs.is_causal && !site.self_attention() {
        return Some(format!(
            "causal with query length {} and key length {}: the prefix-sum form needs them provably equal",
            site.q_len, site.kv_len
        ));
    }
    if site.mask.is_some() && !heads_mask_key_only {
        return Some(
            "attn_mask varies between query rows; linear attention can only weight keys".into(),
        );
    }
    None
}

/// Builds the per-head result `[.., Sq, Dv]` with standard ops.
pub(crate) fn build(b: &mut Builder, site: &Site, heads: &Heads) -> Result<ValueId> {
    let fq = feature_map(b, heads.q, site.scale, "phi_q")?;
    let mut fk = feature_map(b, heads.k, site.scale, "phi_k")?;
    if let Some(m) = heads.mask {
        // [.., 1, Skv] → [.., Skv, 1]: one weight per key row of φ(K).
        let mask_rank = heads.mask_rank;
        let weights = b.unary(UnaryOp::Exp, m, "key_weights")?;
        let per_key = if mask_rank >= 2 {
            b.swap_last(weights, mask_rank, "key_weights.rows")?
        } else {
            weights
        };
        fk = b.binary(BinaryOp::Mul, fk, per_key, "phi_k.masked")?;
    }
    let r = heads.rank as i64;
    let (num, den) = if site.attrs.is_causal {
        let k_col = b.unsqueeze(fk, &[r], "phi_k.col")?;
        let v_row = b.unsqueeze(heads.v, &[r - 1], "v.row")?;
        let outer = b.binary(BinaryOp::Mul, k_col, v_row, "kv")?;
        let state = b.cumsum(outer, -3, "kv.prefix")?;
        let q_row = b.unsqueeze(fq, &[r - 1], "phi_q.row")?;
        let read = b.matmul(q_row, state, "num.rows")?;
        let num = b.squeeze(read, &[-2], "num")?;
        let z = b.cumsum(fk, -2, "phi_k.prefix")?;
        let qz = b.binary(BinaryOp::Mul, fq, z, "qz")?;
        (num, b.reduce(ReduceKind::Sum, qz, &[-1], "den")?)
    } else {
        let kt = b.swap_last(fk, heads.rank, "phi_k.t")?;
        let state = b.matmul(kt, heads.v, "kv")?;
        let num = b.matmul(fq, state, "num")?;
        let z = b.reduce(ReduceKind::Sum, fk, &[-2], "phi_k.sum")?;
        let qz = b.binary(BinaryOp::Mul, fq, z, "qz")?;
        (num, b.reduce(ReduceKind::Sum, qz, &[-1], "den")?)
    };
    b.binary(BinaryOp::Div, num, den, "normalized")
}

/// Whether the causal form can be written with `LinearAttention`: causal
/// self-attention without a mask (the op has no per-key weights).
pub(crate) fn fits_linear_attention_op(site: &Site) -> bool {
    site.attrs.is_causal && site.self_attention() && site.mask.is_none()
}

/// The causal form with two ONNX-27 `LinearAttention` ops (update rule
/// `linear`, scale 1, which cancels in the ratio anyway): the numerator
/// over V and the normalizer over a `[B, T, Hkv]` value of ones (value
/// head size 1). Works in the op's packed 3-D layout, so 4-D inputs are
/// packed first and Y unpacked at the end.
pub(crate) fn emit_linear_attention_op(b: &mut Builder, site: &Site) -> Result<()> {
    let pack = |b: &mut Builder, x: ValueId, hint: &str| -> Result<ValueId> {
        if site.three_d {
            return Ok(x);
        }
        let t = b.transpose(x, &[0, 2, 1, 3], &format!("{hint}.tokens"))?;
        b.reshape(t, &[0, 0, -1], &format!("{hint}.packed"))
    };
    let q = pack(b, site.q, "q")?;
    let k = pack(b, site.k, "k")?;
    let v = pack(b, site.v, "v")?;
    let fq = feature_map(b, q, site.scale, "phi_q")?;
    let fk = feature_map(b, k, site.scale, "phi_k")?;
    let attrs = LinearAttentionAttrs {
        q_num_heads: site.q_heads,
        kv_num_heads: site.kv_heads,
        scale: Some(1.0),
        update_rule: kiln_ir::op::LinearUpdateRule::Linear,
        chunk_size: kiln_ir::op::DEFAULT_LINEAR_ATTENTION_CHUNK,
    };
    let num = b.op_multi(
        Op::LinearAttention(attrs),
        vec![Some(fq), Some(fk), Some(v)],
        "num",
        2,
    )?;
    // Ones of shape [B, T, Hkv]: K's first two dims and the head count.
    let bt = b.op(
        Op::Shape {
            start: 0,
            end: Some(2),
        },
        &[k],
        "ones.bt",
    )?;
    let h = b.ints(&[site.kv_heads], "ones.h")?;
    let shape = b.op(Op::Concat { axis: 0 }, &[bt, h], "ones.shape")?;
    let one = Tensor::from_f64s(site.dtype, &[1], &[1.0]);
    let ones = b.op(Op::ConstantOfShape { value: Some(one) }, &[shape], "ones")?;
    let den = b.op_multi(
        Op::LinearAttention(attrs),
        vec![Some(fq), Some(fk), Some(ones)],
        "den",
        2,
    )?;
    let num_heads = b.reshape(num, &[0, 0, site.q_heads, -1], "num.heads")?;
    let den_col = b.unsqueeze(den, &[-1], "den.col")?;
    let y = b.binary(BinaryOp::Div, num_heads, den_col, "normalized")?;
    if site.three_d {
        let s = b.ints(&[0, 0, -1], "y.shape")?;
        b.finish(Op::Reshape { allowzero: false }, &[y, s], "y")?;
    } else {
        let t = b.transpose(y, &[0, 2, 1, 3], "y.heads")?;
        b.finish(Op::Identity, &[t], "y")?;
    }
    Ok(())
}
