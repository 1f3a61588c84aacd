//! ONNX-27 `LinearAttention`: the recurrent form, token by token.
//!
//! `query`, `key` and `value` are packed `[B, T, H·D]`; the state is
//! `[B, Hkv, Dk, Dv]`, from `past_state` or zero. Per token and key/value
//! head the state decays by `exp(decay)` (gated rules, per key dim or per
//! head), the value is replaced by `beta · (v - Sᵀk)` (delta rules), and
//! `k vᵀ` is added; every query head of the group then reads
//! `scale · qᵀS`. The state lives in the step's f32 scratch (so f16 models
//! do not round it every token) and is written to `present_state` at the
//! end.

use super::indexing::for_each_index;
use super::Cg;
use crate::error::{BackendError, Result};
use crate::plan::{Loc, Plan, Slot};
use inkwell::values::{BasicValueEnum, FunctionValue};
use kiln_ir::dtype::DType;
use kiln_ir::graph::NodeId;
use kiln_ir::op::Op;

type BV<'ctx> = BasicValueEnum<'ctx>;

/// The sizes of a LinearAttention node: batch, tokens, query heads,
/// key/value heads, key dim and value dim.
pub(crate) fn geometry(plan_types: &[Option<crate::plan::Shaped>], node: &kiln_ir::graph::Node) -> Option<[usize; 6]> {
    let Op::LinearAttention(a) = &node.op else { return None };
    let shape = |slot: usize| node.input(slot).and_then(|v| plan_types[v.index()].as_ref()).map(|t| t.shape.clone());
    let (q, v) = (shape(0)?, shape(2)?);
    let (hq, hkv) = (usize::try_from(a.q_num_heads).ok()?, usize::try_from(a.kv_num_heads).ok()?);
    if q.len() != 3 || v.len() != 3 || hq == 0 || hkv == 0 || q[2] % hq != 0 || v[2] % hkv != 0 {
        return None;
    }
    Some([q[0], q[1], hq, hkv, q[2] / hq, v[2] / hkv])
}

/// Scratch bytes of the kernel: the f32 state and one value row.
pub(crate) fn scratch_bytes(g: [usize; 6]) -> usize {
    let [b, _, _, hkv, dk, dv] = g;
    (b * hkv * dk * dv + dv) * 4
}

/// Emits the kernel of LinearAttention node `id`.
pub(crate) fn linear_attention<'ctx>(
    cg: &Cg<'ctx>,
    plan: &Plan,
    step: usize,
    id: NodeId,
) -> Result<(FunctionValue<'ctx>, Vec<Loc>)> {
    let node = plan.graph.node(id);
    let err = |m: String| BackendError::node(&node.name, "LinearAttention", m);
    let Op::LinearAttention(attrs) = &node.op else { return Err(err("not a LinearAttention node".into())) };
    let [batch, steps, hq, hkv, dk, dv] = geometry(&plan.types, node)
        .ok_or_else(|| err("query/value must be [B, T, H·D] with heads dividing the packed size".into()))?;
    if hq % hkv != 0 {
        return Err(err(format!("{hq} query heads cannot share {hkv} key/value heads")));
    }
    let input = |slot: usize| node.input(slot);
    let (q, k, v) = (
        input(0).ok_or_else(|| err("query is missing".into()))?,
        input(1).ok_or_else(|| err("key is missing".into()))?,
        input(2).ok_or_else(|| err("value is missing".into()))?,
    );
    if plan.ty(k).shape != [batch, steps, hkv * dk] || plan.ty(v).shape[..2] != [batch, steps] {
        return Err(err("key and value do not match the query".into()));
    }
    let (past, decay, beta) = (input(3), input(4), input(5));
    let rule = attrs.update_rule;
    if rule.is_gated() != decay.is_some() || rule.is_delta() != beta.is_some() {
        return Err(err(format!("update_rule {} does not match the decay/beta inputs", rule.name())));
    }
    let decay_per_dim = match decay.map(|d| plan.ty(d).shape.clone()) {
        None => false,
        Some(s) if s == [batch, steps, hkv * dk] => true,
        Some(s) if s == [batch, steps, hkv] => false,
        Some(s) => return Err(err(format!("decay has shape {s:?}"))),
    };
    let beta_per_head = match beta.map(|b| plan.ty(b).shape.clone()) {
        None => false,
        Some(s) if s == [batch, steps, hkv] => true,
        Some(s) if s == [batch, steps, 1] => false,
        Some(s) => return Err(err(format!("beta has shape {s:?}"))),
    };
    if let Some(p) = past {
        if plan.ty(p).shape != [batch, hkv, dk, dv] {
            return Err(err(format!("past_state has shape {:?}", plan.ty(p).shape)));
        }
    }
    let out = node.output(0).ok_or_else(|| err("output 0 is missing".into()))?;
    let present = node.output(1);
    for val in [Some(q), Some(k), Some(v), past, decay, beta, Some(out), present].into_iter().flatten() {
        if !plan.ty(val).dtype.is_float() {
            return Err(BackendError::unsupported(
                &node.name,
                "LinearAttention",
                format!("{} tensors", plan.ty(val).dtype),
            ));
        }
    }
    let scratch_offset = plan.scratch[step].ok_or_else(|| err("no scratch space was planned".into()))?;
    let scale = attrs.scale.map_or(1.0 / (dk as f64).sqrt(), |s| s as f64);

    let mut values = vec![out, q, k, v];
    values.extend(past);
    values.extend(decay);
    values.extend(beta);
    values.extend(present);
    let f = cg.kernel_fn(&format!("k{step}_linear_attention"), values.len() + 1);
    let mut next = 0u32;
    let mut take = || {
        next += 1;
        cg.param(f, next - 1)
    };
    let (yp, qp, kp, vp) = (take(), take(), take(), take());
    let pp = past.map(|_| take());
    let dp = decay.map(|_| take());
    let bp = beta.map(|_| take());
    let sp_out = present.map(|_| take());
    let scratch = take();
    let ty = |v: kiln_ir::graph::ValueId| plan.ty(v).dtype;
    let f32t = cg.f32t();
    let zero: BV = f32t.const_float(0.0).into();
    let state_len = batch * hkv * dk * dv;
    let vt0 = state_len as i64;
    // State index of (b, h, i, m).
    let st = |b: i64, h: i64, i: i64| -> i64 { ((b * hkv as i64 + h) * dk as i64 + i) * dv as i64 };
    for_each_index(cg, f, &[state_len], &mut |i| {
        let init = match (pp, past) {
            (Some(p), Some(pv)) => cg.load(p, ty(pv), i[0])?,
            _ => zero,
        };
        cg.store(scratch, DType::F32, i[0], init)
    })?;
    let acc = cg.entry_alloca(f, f32t.into(), "acc")?;
    let c = |x: f64| cg.fconst(zero, x);
    for_each_index(cg, f, &[batch, steps], &mut |bt| {
        let (b, t) = (bt[0], bt[1]);
        let row = |width: usize| cg.affine(b, (steps * width) as i64, cg.mul(t, width as i64)?);
        let (krow, vrow, qrow) = (row(hkv * dk)?, row(hkv * dv)?, row(hq * dk)?);
        let yrow = row(hq * dv)?;
        let sbase = cg.mul(b, st(1, 0, 0))?;
        for h in 0..hkv as i64 {
            let hbase = cg.add(sbase, cg.i64c(st(0, h, 0)))?;
            if let (Some(dp), Some(d)) = (dp, decay) {
                let width = if decay_per_dim { hkv * dk } else { hkv };
                let drow = row(width)?;
                cg.for_n(f, dk, &mut |i| {
                    let at = if decay_per_dim {
                        cg.add(drow, cg.affine(i, 1, cg.i64c(h * dk as i64))?)?
                    } else {
                        cg.add(drow, cg.i64c(h))?
                    };
                    let factor = cg.exp(widen32(cg, cg.load(dp, ty(d), at)?)?)?;
                    let ibase = cg.affine(i, dv as i64, hbase)?;
                    cg.for_n(f, dv, &mut |m| {
                        let sa = cg.add(ibase, m)?;
                        let s = cg.load(scratch, DType::F32, sa)?;
                        cg.store(scratch, DType::F32, sa, cg.fmul(s, factor)?)
                    })
                })?;
            }
            cg.for_n(f, dv, &mut |m| {
                let x = widen32(cg, cg.load(vp, ty(v), cg.add(vrow, cg.affine(m, 1, cg.i64c(h * dv as i64))?)?)?)?;
                cg.store(scratch, DType::F32, cg.affine(m, 1, cg.i64c(vt0))?, x)
            })?;
            let kat = |i| cg.add(krow, cg.affine(i, 1, cg.i64c(h * dk as i64))?);
            if let (Some(bp), Some(bv)) = (bp, beta) {
                let width = if beta_per_head { hkv } else { 1 };
                let at = cg.add(row(width)?, cg.i64c(if beta_per_head { h } else { 0 }))?;
                let rate = widen32(cg, cg.load(bp, ty(bv), at)?)?;
                cg.for_n(f, dv, &mut |m| {
                    cg.b.build_store(acc, zero)?;
                    cg.for_n(f, dk, &mut |i| {
                        let s = cg.load(scratch, DType::F32, cg.add(cg.affine(i, dv as i64, hbase)?, m)?)?;
                        let kv = widen32(cg, cg.load(kp, ty(k), kat(i)?)?)?;
                        let cur = cg.b.build_load(f32t, acc, "acc")?;
                        cg.b.build_store(acc, cg.fadd_reassoc(cur, cg.fmul(s, kv)?)?)?;
                        Ok(())
                    })?;
                    let retrieved = cg.b.build_load(f32t, acc, "acc")?;
                    let vat = cg.affine(m, 1, cg.i64c(vt0))?;
                    let x = cg.load(scratch, DType::F32, vat)?;
                    cg.store(scratch, DType::F32, vat, cg.fmul(rate, cg.fsub(x, retrieved)?)?)
                })?;
            }
            cg.for_n(f, dk, &mut |i| {
                let ki = widen32(cg, cg.load(kp, ty(k), kat(i)?)?)?;
                let ibase = cg.affine(i, dv as i64, hbase)?;
                cg.for_n(f, dv, &mut |m| {
                    let sa = cg.add(ibase, m)?;
                    let x = cg.load(scratch, DType::F32, cg.affine(m, 1, cg.i64c(vt0))?)?;
                    let s = cg.load(scratch, DType::F32, sa)?;
                    cg.store(scratch, DType::F32, sa, cg.fadd(s, cg.fmul(ki, x)?)?)
                })
            })?;
        }
        let group = (hq / hkv) as i64;
        for h in 0..hq as i64 {
            let hbase = cg.add(sbase, cg.i64c(st(0, h / group, 0)))?;
            cg.for_n(f, dv, &mut |m| {
                cg.b.build_store(acc, zero)?;
                cg.for_n(f, dk, &mut |i| {
                    let qv = widen32(cg, cg.load(qp, ty(q), cg.add(qrow, cg.affine(i, 1, cg.i64c(h * dk as i64))?)?)?)?;
                    let s = cg.load(scratch, DType::F32, cg.add(cg.affine(i, dv as i64, hbase)?, m)?)?;
                    let cur = cg.b.build_load(f32t, acc, "acc")?;
                    cg.b.build_store(acc, cg.fadd_reassoc(cur, cg.fmul(qv, s)?)?)?;
                    Ok(())
                })?;
                let read = cg.fmul(cg.b.build_load(f32t, acc, "acc")?, c(scale))?;
                let at = cg.add(yrow, cg.affine(m, 1, cg.i64c(h * dv as i64))?)?;
                cg.store(yp, ty(out), at, narrow(cg, read, ty(out))?)
            })?;
        }
        Ok(())
    })?;
    if let (Some(sp), Some(pv)) = (sp_out, present) {
        for_each_index(cg, f, &[state_len], &mut |i| {
            let s = cg.load(scratch, DType::F32, i[0])?;
            cg.store(sp, ty(pv), i[0], narrow(cg, s, ty(pv))?)
        })?;
    }
    cg.b.build_return(None)?;
    let mut locs: Vec<Loc> = values.iter().map(|&v| plan.loc(v)).collect();
    locs.push(Loc { slot: Slot::Arena, offset: scratch_offset });
    Ok((f, locs))
}

/// A loaded float (f32 compute type, or f64) as f32.
fn widen32<'ctx>(cg: &Cg<'ctx>, v: BV<'ctx>) -> Result<BV<'ctx>> {
    let x = v.into_float_value();
    if x.get_type() == cg.f32t() {
        return Ok(v);
    }
    Ok(cg.b.build_float_trunc(x, cg.f32t(), "f32")?.into())
}

/// An f32 result in the compute type of `dtype` (f64 widens).
fn narrow<'ctx>(cg: &Cg<'ctx>, v: BV<'ctx>, dtype: DType) -> Result<BV<'ctx>> {
    if dtype == DType::F64 {
        return Ok(cg.b.build_float_ext(v.into_float_value(), cg.ctx.f64_type(), "f64")?.into());
    }
    Ok(v)
}
