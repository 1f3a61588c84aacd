//! Rules for the neural-network ops: softmax, normalizations, rotary
//! embedding, attention and the losses.

use super::{dims, Ctx};
use crate::dim::Dim;
use crate::dtype::DType;
use crate::error::Result;
use crate::op::{AttentionAttrs, LinearAttentionAttrs, LossReduction};
use crate::types::TensorType;

fn is_float(d: DType) -> bool {
    d.is_float()
}

pub(crate) fn softmax(cx: &mut Ctx, axis: i64) -> Result<Vec<TensorType>> {
    cx.dtype_in(0, is_float, "a float type")?;
    let t = cx.ty(0)?;
    cx.axis(axis, t.rank())?;
    Ok(vec![t.clone()])
}

/// Checks that input `slot` broadcasts to the normalized dims `x[axis..]`
/// of input 0.
fn check_norm_param(cx: &Ctx, slot: usize, axis: usize) -> Result<()> {
    let x = cx.ty(0)?;
    let p = cx.ty(slot)?;
    let normalized = &x.shape[axis..];
    let ok = p.rank() <= normalized.len()
        && p.shape.iter().rev().zip(normalized.iter().rev()).all(|(a, b)| *a == Dim::Fixed(1) || !dims::conflict(a, b));
    if ok {
        Ok(())
    } else {
        Err(cx.err(format!(
            "{} has shape {p}, which does not broadcast to the normalized dims {} of {} ({x})",
            cx.desc(slot),
            dims::fmt_shape(normalized),
            cx.desc(0)
        )))
    }
}

pub(crate) fn layer_norm(cx: &mut Ctx, axis: i64, stash_type: DType) -> Result<Vec<TensorType>> {
    cx.dtype_in(0, is_float, "a float type")?;
    let x = cx.ty(0)?;
    let axis = cx.axis(axis, x.rank())?;
    if !stash_type.is_float() {
        return Err(cx.err(format!("stash_type {stash_type} is not a float type")));
    }
    for slot in [1, 2] {
        if cx.has(slot) {
            cx.same_dtype(0, slot)?;
            check_norm_param(cx, slot, axis)?;
        }
    }
    let mut stats = x.shape[..axis].to_vec();
    stats.resize(x.rank(), Dim::Fixed(1));
    let stats = TensorType::new(stash_type, stats);
    Ok(vec![x.clone(), stats.clone(), stats])
}

pub(crate) fn rms_norm(cx: &mut Ctx, axis: i64) -> Result<Vec<TensorType>> {
    cx.dtype_in(0, is_float, "a float type")?;
    let scale = cx.dtype_in(1, is_float, "a float type")?;
    let x = cx.ty(0)?;
    let axis = cx.axis(axis, x.rank())?;
    check_norm_param(cx, 1, axis)?;
    Ok(vec![TensorType::new(scale, x.shape.clone())])
}

/// `total / parts` for a head split, checked when both are fixed.
fn per_head(cx: &Ctx, total: &Dim, parts: i64, what: &str, slot: usize) -> Result<Dim> {
    if parts <= 0 {
        return Err(cx.err(format!("{what} is {parts}; expected a positive count")));
    }
    if let Some(n) = total.fixed() {
        if n % parts as u64 != 0 {
            return Err(
                cx.err(format!("{} has hidden size {n}, which is not a multiple of {what} = {parts}", cx.desc(slot)))
            );
        }
    }
    dims::floor_div(total, &Dim::Fixed(parts as u64)).ok_or_else(|| cx.err("head size overflows"))
}

pub(crate) fn rotary_embedding(
    cx: &mut Ctx,
    num_heads: Option<i64>,
    rotary_dim: Option<i64>,
) -> Result<Vec<TensorType>> {
    cx.dtype_in(0, is_float, "a float type")?;
    cx.same_dtype(0, 1)?;
    cx.same_dtype(0, 2)?;
    let x = cx.ty(0)?;
    let (batch, seq, head) = match x.rank() {
        4 => (&x.shape[0], &x.shape[2], x.shape[3].clone()),
        3 => {
            let n = num_heads
                .ok_or_else(|| cx.err(format!("{} is 3-D ({x}) so the num_heads attribute is required", cx.desc(0))))?;
            (&x.shape[0], &x.shape[1], per_head(cx, &x.shape[2], n, "num_heads", 0)?)
        }
        _ => return Err(cx.err(format!("{} has shape {x}; expected rank 3 or 4", cx.desc(0)))),
    };
    let rot = match rotary_dim {
        Some(r) if r <= 0 || r % 2 != 0 => {
            return Err(cx.err(format!("rotary_embedding_dim {r} must be positive and even")));
        }
        Some(r) => Dim::Fixed(r as u64),
        None => head.clone(),
    };
    if let (Some(r), Some(h)) = (rot.fixed(), head.fixed()) {
        if r > h || r % 2 != 0 {
            return Err(cx.err(format!("the rotated size {r} must be even and at most the head size {h}")));
        }
    }
    let half = dims::floor_div(&rot, &Dim::Fixed(2)).ok_or_else(|| cx.err("rotary size overflows"))?;
    let cos = cx.ty(1)?;
    let sin = cx.ty(2)?;
    let expected: Vec<Option<&Dim>> = if cx.has(3) {
        let pos = cx.rank_is(3, 2)?;
        cx.dtype_in(3, |d| d == DType::I64, "i64 (position ids)")?;
        for (i, want) in [batch, seq].into_iter().enumerate() {
            if dims::conflict(&pos.shape[i], want) {
                return Err(cx.err(format!(
                    "{} has shape {pos}; expected [batch, seq] of {} ({x})",
                    cx.desc(3),
                    cx.desc(0)
                )));
            }
        }
        vec![None, Some(&half)]
    } else {
        vec![Some(batch), Some(seq), Some(&half)]
    };
    for (slot, cache) in [(1, cos), (2, sin)] {
        let ok = cache.rank() == expected.len()
            && cache.shape.iter().zip(&expected).all(|(a, b)| b.is_none_or(|b| !dims::conflict(a, b)));
        if !ok {
            let want: Vec<String> =
                expected.iter().map(|d| d.map_or("max_position".into(), |d| d.to_string())).collect();
            return Err(cx.err(format!(
                "{} has shape {cache}; expected [{}] for {} ({x})",
                cx.desc(slot),
                want.join(", "),
                cx.desc(0)
            )));
        }
    }
    Ok(vec![x.clone()])
}

/// Unifies a dim two inputs must agree on, naming both on conflict.
fn agree(cx: &Ctx, what: &str, a: (usize, &Dim), b: (usize, &Dim)) -> Result<Dim> {
    dims::unify(a.1, b.1)
        .ok_or_else(|| cx.err(format!("{what}: {} has {} but {} has {}", cx.desc(b.0), b.1, cx.desc(a.0), a.1)))
}

/// ONNX-27 `LinearAttention`: packed `[B, T, H·D]` query, key and value;
/// the state `[B, Hkv, Dk, Dv]` takes past_state's type, else the query's.
pub(crate) fn linear_attention(cx: &mut Ctx, attrs: &LinearAttentionAttrs) -> Result<Vec<TensorType>> {
    let t = cx.dtype_in(0, is_float, "a float type")?;
    cx.same_dtype(0, 1)?;
    cx.same_dtype(0, 2)?;
    let q = cx.rank_is(0, 3)?;
    let k = cx.rank_is(1, 3)?;
    let v = cx.rank_is(2, 3)?;
    if attrs.q_num_heads % attrs.kv_num_heads != 0 {
        return Err(cx.err(format!(
            "q_num_heads {} is not a multiple of kv_num_heads {}",
            attrs.q_num_heads, attrs.kv_num_heads
        )));
    }
    let batch = agree(cx, "batch size", (0, &q.shape[0]), (1, &k.shape[0]))?;
    let batch = agree(cx, "batch size", (0, &batch), (2, &v.shape[0]))?;
    let seq = agree(cx, "sequence length", (0, &q.shape[1]), (1, &k.shape[1]))?;
    let seq = agree(cx, "sequence length", (0, &seq), (2, &v.shape[1]))?;
    let dk = per_head(cx, &q.shape[2], attrs.q_num_heads, "q_num_heads", 0)?;
    let kdk = per_head(cx, &k.shape[2], attrs.kv_num_heads, "kv_num_heads", 1)?;
    let dk = agree(cx, "key head size", (0, &dk), (1, &kdk))?;
    let dv = per_head(cx, &v.shape[2], attrs.kv_num_heads, "kv_num_heads", 2)?;
    let kv_heads = Dim::Fixed(attrs.kv_num_heads as u64);
    let state = vec![batch.clone(), kv_heads, dk, dv.clone()];
    let state_type = match cx.opt_ty(3)? {
        Some(p) => {
            cx.dtype_in(3, is_float, "a float type")?;
            if p.rank() != 4 || p.shape.iter().zip(&state).any(|(a, b)| dims::conflict(a, b)) {
                return Err(cx.err(format!("{} has shape {p}; expected {}", cx.desc(3), dims::fmt_shape(&state))));
            }
            p.dtype
        }
        None => t,
    };
    for slot in [4, 5] {
        if let Some(g) = cx.opt_ty(slot)? {
            cx.same_dtype(0, slot)?;
            if g.rank() != 3 {
                return Err(cx.err(format!("{} has shape {g}; expected rank 3", cx.desc(slot))));
            }
        }
    }
    if attrs.update_rule.is_gated() && !cx.has(4) {
        return Err(cx.err(format!("update_rule {} needs the decay input", attrs.update_rule.name())));
    }
    if attrs.update_rule.is_delta() && !cx.has(5) {
        return Err(cx.err(format!("update_rule {} needs the beta input", attrs.update_rule.name())));
    }
    let hidden = dims::mul(&Dim::Fixed(attrs.q_num_heads as u64), &dv).ok_or_else(|| cx.err("output size overflows"))?;
    Ok(vec![TensorType::new(t, vec![batch, seq, hidden]), TensorType::new(state_type, state)])
}

pub(crate) fn attention(cx: &mut Ctx, attrs: &AttentionAttrs) -> Result<Vec<TensorType>> {
    let t1 = cx.dtype_in(0, is_float, "a float type")?;
    cx.same_dtype(0, 1)?;
    let t2 = cx.dtype_in(2, is_float, "a float type")?;
    let (q, k, v) = (cx.ty(0)?, cx.ty(1)?, cx.ty(2)?);
    let rank = q.rank();
    if rank != 3 && rank != 4 {
        return Err(cx.err(format!("{} has shape {q}; expected rank 3 or 4", cx.desc(0))));
    }
    for slot in [1, 2] {
        if cx.ty(slot)?.rank() != rank {
            return Err(cx.err(format!(
                "{} has shape {}; expected rank {rank} like {}",
                cx.desc(slot),
                cx.ty(slot)?,
                cx.desc(0)
            )));
        }
    }
    // [batch, heads, seq, head_size] of Q, K and V.
    let split = |t: &TensorType, heads: Option<i64>, what: &str, slot: usize| -> Result<[Dim; 4]> {
        if rank == 4 {
            return Ok([t.shape[0].clone(), t.shape[1].clone(), t.shape[2].clone(), t.shape[3].clone()]);
        }
        let n = heads.ok_or_else(|| cx.err(format!("{} is 3-D so the {what} attribute is required", cx.desc(slot))))?;
        let size = per_head(cx, &t.shape[2], n, what, slot)?;
        Ok([t.shape[0].clone(), Dim::Fixed(n as u64), t.shape[1].clone(), size])
    };
    let [qb, qh, qs, qd] = split(q, attrs.q_num_heads, "q_num_heads", 0)?;
    let [kb, kh, ks, kd] = split(k, attrs.kv_num_heads, "kv_num_heads", 1)?;
    let [vb, vh, vs, vd] = split(v, attrs.kv_num_heads, "kv_num_heads", 2)?;
    let batch = agree(cx, "batch size", (0, &qb), (1, &kb))?;
    let batch = agree(cx, "batch size", (0, &batch), (2, &vb))?;
    let head_size = agree(cx, "head size", (0, &qd), (1, &kd))?;
    let kv_heads = agree(cx, "kv heads", (1, &kh), (2, &vh))?;
    let kv_seq = agree(cx, "kv sequence length", (1, &ks), (2, &vs))?;
    if let (Some(a), Some(b)) = (qh.fixed(), kv_heads.fixed()) {
        if b == 0 || a % b != 0 {
            return Err(cx.err(format!("{a} query heads are not a multiple of {b} key/value heads")));
        }
    }
    let total = match (cx.opt_ty(4)?, cx.opt_ty(5)?) {
        (None, None) => kv_seq.clone(),
        (Some(pk), Some(pv)) => {
            cx.same_dtype(0, 4)?;
            cx.same_dtype(2, 5)?;
            let want_k = [&batch, &kv_heads, &pk.shape.get(2).cloned().unwrap_or(Dim::Fixed(0)), &head_size];
            let want_v = [&batch, &kv_heads, &pv.shape.get(2).cloned().unwrap_or(Dim::Fixed(0)), &vd];
            for (slot, t, want) in [(4, pk, want_k), (5, pv, want_v)] {
                if t.rank() != 4 || t.shape.iter().zip(want).any(|(a, b)| dims::conflict(a, b)) {
                    let shown: Vec<Dim> = want.iter().map(|d| (*d).clone()).collect();
                    return Err(cx.err(format!(
                        "{} has shape {t}; expected {}",
                        cx.desc(slot),
                        dims::fmt_shape(&shown)
                    )));
                }
            }
            let past = agree(cx, "past sequence length", (4, &pk.shape[2]), (5, &pv.shape[2]))?;
            dims::add(&past, &kv_seq).ok_or_else(|| cx.err("total sequence length overflows"))?
        }
        _ => return Err(cx.err("past_key and past_value must be given together")),
    };
    if let Some(m) = cx.opt_ty(3)? {
        if m.dtype != DType::Bool && m.dtype != t1 {
            return Err(cx.err(format!("{} (attn_mask) has type {m}; expected bool or {t1}", cx.desc(3))));
        }
        let full = [&batch, &qh, &qs, &total];
        let ok = (2..=4).contains(&m.rank())
            && m.shape.iter().rev().zip(full.iter().rev()).enumerate().all(|(i, (a, b))| {
                if i == 0 {
                    // The last dim may be shorter: it is padded with -inf.
                    !matches!((a.fixed(), b.fixed()), (Some(x), Some(y)) if x > y && x != 1)
                } else {
                    *a == Dim::Fixed(1) || !dims::conflict(a, b)
                }
            });
        if !ok {
            let shown: Vec<Dim> = full.iter().map(|d| (*d).clone()).collect();
            return Err(cx.err(format!(
                "{} (attn_mask) has shape {m}, which does not broadcast to {}",
                cx.desc(3),
                dims::fmt_shape(&shown)
            )));
        }
    }
    if cx.has(6) {
        let n = cx.rank_is(6, 1)?;
        cx.dtype_in(6, |d| d == DType::I64, "i64 (nonpad_kv_seqlen)")?;
        if dims::conflict(&n.shape[0], &batch) {
            return Err(cx.err(format!("{} has shape {n}; expected [{batch}]", cx.desc(6))));
        }
    }
    let y = if rank == 4 {
        vec![batch.clone(), qh.clone(), qs.clone(), vd.clone()]
    } else {
        let hidden = dims::mul(&qh, &vd).ok_or_else(|| cx.err("output size overflows"))?;
        vec![batch.clone(), qs.clone(), hidden]
    };
    Ok(vec![
        TensorType::new(t1, y),
        TensorType::new(t1, vec![batch.clone(), kv_heads.clone(), total.clone(), head_size]),
        TensorType::new(t2, vec![batch.clone(), kv_heads, total.clone(), vd]),
        TensorType::new(t1, vec![batch, qh, qs, total]),
    ])
}

pub(crate) fn loss(cx: &mut Ctx, reduction: LossReduction, with_log_prob: bool) -> Result<Vec<TensorType>> {
    let dtype = cx.dtype_in(0, is_float, "a float type")?;
    let scores = cx.rank_at_least(0, 2)?;
    let labels = cx.ty(1)?;
    cx.dtype_in(1, |d| matches!(d, DType::I32 | DType::I64), "i32 or i64 (labels)")?;
    // Labels have the scores' shape without the class axis.
    let mut per_sample: Vec<Dim> = scores.shape.clone();
    per_sample.remove(1);
    let ok =
        labels.rank() == per_sample.len() && labels.shape.iter().zip(&per_sample).all(|(a, b)| !dims::conflict(a, b));
    if !ok {
        return Err(cx.err(format!(
            "{} has shape {labels}; expected {} (the shape of {} without the class axis)",
            cx.desc(1),
            dims::fmt_shape(&per_sample),
            cx.desc(0)
        )));
    }
    let per_sample: Vec<Dim> =
        labels.shape.iter().zip(&per_sample).map(|(a, b)| dims::unify(a, b).expect("checked above")).collect();
    if cx.has(2) {
        cx.same_dtype(0, 2)?;
        let w = cx.rank_is(2, 1)?;
        if dims::conflict(&w.shape[0], &scores.shape[1]) {
            return Err(cx.err(format!(
                "{} has shape {w}; expected one weight per class ({})",
                cx.desc(2),
                scores.shape[1]
            )));
        }
    }
    let out = match reduction {
        LossReduction::None => TensorType::new(dtype, per_sample),
        LossReduction::Sum | LossReduction::Mean => TensorType::scalar(dtype),
    };
    let mut types = vec![out];
    if with_log_prob {
        types.push(scores.clone());
    }
    Ok(types)
}

/// `kiln::LinearCrossEntropy`: hidden `[N, d]`, weight `[V, d]` or `[d, V]`,
/// labels `[N]`, optional bias and class weight `[V]`.
pub(crate) fn linear_cross_entropy(
    cx: &mut Ctx,
    reduction: LossReduction,
    transpose_weight: bool,
) -> Result<Vec<TensorType>> {
    let dtype = cx.dtype_in(0, is_float, "a float type")?;
    let hidden = cx.rank_is(0, 2)?;
    cx.same_dtype(0, 1)?;
    let weight = cx.rank_is(1, 2)?;
    let (vocab, depth) =
        if transpose_weight { (&weight.shape[0], &weight.shape[1]) } else { (&weight.shape[1], &weight.shape[0]) };
    if dims::conflict(depth, &hidden.shape[1]) {
        return Err(cx.err(format!(
            "{} has shape {weight}; its hidden size {depth} does not match {} ({})",
            cx.desc(1),
            cx.desc(0),
            hidden.shape[1]
        )));
    }
    cx.dtype_in(2, |d| matches!(d, DType::I32 | DType::I64), "i32 or i64 (labels)")?;
    let labels = cx.rank_is(2, 1)?;
    let rows = dims::unify(&labels.shape[0], &hidden.shape[0]).ok_or_else(|| {
        cx.err(format!("{} has shape {labels}; expected one label per row of {} ({})", cx.desc(2), cx.desc(0), hidden.shape[0]))
    })?;
    for slot in [3, 4] {
        if cx.has(slot) {
            cx.same_dtype(0, slot)?;
            let v = cx.rank_is(slot, 1)?;
            if dims::conflict(&v.shape[0], vocab) {
                return Err(cx.err(format!("{} has shape {v}; expected one entry per vocabulary entry ({vocab})", cx.desc(slot))));
            }
        }
    }
    Ok(vec![match reduction {
        LossReduction::None => TensorType::new(dtype, vec![rows]),
        LossReduction::Sum | LossReduction::Mean => TensorType::scalar(dtype),
    }])
}
