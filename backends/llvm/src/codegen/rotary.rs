//! ONNX-23 `RotaryEmbedding`.
//!
//! `X` is `[batch, heads, seq, head_dim]`, or `[batch, seq, heads·head_dim]`
//! with the `num_heads` attribute. The caches are `[max_position, rot/2]`
//! indexed by `position_ids [batch, seq]`, or `[batch, seq, rot/2]` read
//! directly without them. The first `rot` features of each head (all of
//! them unless `rotary_embedding_dim` says otherwise) rotate as pairs:
//! split halves `(x_i, x_{i+rot/2})`, or adjacent `(x_2i, x_2i+1)` when
//! `interleaved`; the rest are copied. Per (batch, position) the cache row
//! is found once and shared by every head. A position id outside the
//! caches makes the kernel return its failure status instead of reading
//! out of bounds.

use super::Cg;
use crate::error::{BackendError, Result};
use crate::plan::{Loc, Plan};
use inkwell::values::{BasicValueEnum, FunctionValue};
use inkwell::IntPredicate;
use kiln_ir::dtype::DType;
use kiln_ir::graph::NodeId;
use kiln_ir::op::Op;

/// Emits the RotaryEmbedding kernel of node `id`.
pub(crate) fn rotary_embedding<'ctx>(
    cg: &Cg<'ctx>,
    plan: &Plan,
    step: usize,
    id: NodeId,
) -> Result<(FunctionValue<'ctx>, Vec<Loc>)> {
    let node = plan.graph.node(id);
    let err = |m: String| BackendError::node(&node.name, "RotaryEmbedding", m);
    let Op::RotaryEmbedding { interleaved, num_heads, rotary_embedding_dim } = node.op else {
        return Err(err("not a RotaryEmbedding node".into()));
    };
    let input =
        |slot: usize, what: &str| node.input(slot).ok_or_else(|| err(format!("input {slot} ({what}) is missing")));
    let (x, cos, sin) = (input(0, "X")?, input(1, "cos_cache")?, input(2, "sin_cache")?);
    let positions = node.input(3);
    let y = node.output(0).ok_or_else(|| err("output 0 is missing".into()))?;
    for v in [x, cos, sin, y] {
        let dtype = plan.ty(v).dtype;
        if dtype != DType::F32 {
            return Err(BackendError::unsupported(
                &node.name,
                "RotaryEmbedding",
                format!("{dtype} tensors (value `{}`)", plan.graph.value(v).name),
            ));
        }
    }
    let shape = plan.ty(x).shape.clone();
    let (batch, seq, heads, head_dim, four_d) = match *shape.as_slice() {
        [b, h, s, d] => (b, s, h, d, true),
        [b, s, hidden] => {
            let h = num_heads.ok_or_else(|| err("a 3-D input needs the num_heads attribute".into()))?;
            if h <= 0 || hidden % h as usize != 0 {
                return Err(err(format!("hidden size {hidden} is not a multiple of num_heads {h}")));
            }
            (b, s, h as usize, hidden / h as usize, false)
        }
        _ => return Err(err(format!("X must be 3-D or 4-D, found shape {shape:?}"))),
    };
    let rot = match rotary_embedding_dim {
        Some(r) if r > 0 => r as usize,
        _ => head_dim,
    };
    if rot > head_dim || rot % 2 != 0 {
        return Err(err(format!("rotary_embedding_dim {rot} must be even and at most the head size {head_dim}")));
    }
    let half = rot / 2;
    let cache_shape = plan.ty(cos).shape.clone();
    if plan.ty(sin).shape != cache_shape || cache_shape.last() != Some(&half) {
        return Err(err(format!(
            "cos_cache {cache_shape:?} and sin_cache {:?} must agree and end in rotary_dim / 2 = {half}",
            plan.ty(sin).shape
        )));
    }
    let position_dtype = match positions {
        Some(p) => {
            let t = plan.ty(p);
            if t.shape != [batch, seq] || cache_shape.len() != 2 {
                return Err(err(format!(
                    "position_ids must be [{batch}, {seq}] with 2-D caches, found {:?} and {cache_shape:?}",
                    t.shape
                )));
            }
            if !matches!(t.dtype, DType::I32 | DType::I64) {
                return Err(BackendError::unsupported(
                    &node.name,
                    "RotaryEmbedding",
                    format!("{} position_ids", t.dtype),
                ));
            }
            Some(t.dtype)
        }
        None => {
            if cache_shape != [batch, seq, half] {
                return Err(err(format!(
                    "without position_ids the caches must be [{batch}, {seq}, {half}], found {cache_shape:?}"
                )));
            }
            None
        }
    };
    let max_position = cache_shape[0] as i64;
    // Element strides of X (and Y) between batches, heads and positions.
    let (s_batch, s_head, s_pos) = if four_d {
        ((heads * seq * head_dim) as i64, (seq * head_dim) as i64, head_dim as i64)
    } else {
        ((seq * heads * head_dim) as i64, head_dim as i64, (heads * head_dim) as i64)
    };

    let mut values = vec![y, x, cos, sin];
    values.extend(positions);
    // Threads take the (batch, position) rows; each rotates all its heads.
    let k = cg.checked_parallel_kernel_fn(
        &format!("k{step}_RotaryEmbedding"),
        values.len(),
        batch * seq,
        heads * head_dim * 3,
    );
    let f = k.f;
    let (yp, xp, cp, sp) = (cg.param(f, 0), cg.param(f, 1), cg.param(f, 2), cg.param(f, 3));
    let pp = positions.map(|_| cg.param(f, 4));
    let dt = DType::F32;
    cg.for_items(&k, &mut |flat| {
        let b = cg.b.build_int_unsigned_div(flat, cg.i64c(seq as i64), "batch")?;
        let s = cg.b.build_int_unsigned_rem(flat, cg.i64c(seq as i64), "position")?;
        let row = match (pp, position_dtype) {
            (Some(pp), Some(pd)) => {
                let raw = cg.load(pp, pd, flat)?.into_int_value();
                let id = cg.b.build_int_s_extend_or_bit_cast(raw, cg.i64t(), "position")?;
                let bad = cg.ctx.append_basic_block(f, "bad_position");
                let good = cg.ctx.append_basic_block(f, "position_ok");
                let inside = cg.b.build_int_compare(IntPredicate::ULT, id, cg.i64c(max_position), "inside")?;
                cg.b.build_conditional_branch(inside, good, bad)?;
                cg.b.position_at_end(bad);
                cg.b.build_return(Some(&cg.ctx.i32_type().const_int(1, false)))?;
                cg.b.position_at_end(good);
                id
            }
            _ => flat,
        };
        let cache_row = cg.mul(row, half as i64)?;
        let base = cg.add(cg.mul(b, s_batch)?, cg.mul(s, s_pos)?)?;
        cg.for_n(f, heads, &mut |h| {
            let o = cg.affine(h, s_head, base)?;
            cg.for_n(f, half, &mut |i| {
                let (i1, i2) = if interleaved {
                    (cg.affine(i, 2, o)?, cg.affine(i, 2, cg.add(o, cg.i64c(1))?)?)
                } else {
                    (cg.add(o, i)?, cg.add(o, cg.add(i, cg.i64c(half as i64))?)?)
                };
                let at = cg.add(cache_row, i)?;
                let (c, sn): (BasicValueEnum, BasicValueEnum) = (cg.load(cp, dt, at)?, cg.load(sp, dt, at)?);
                let (x1, x2) = (cg.load(xp, dt, i1)?, cg.load(xp, dt, i2)?);
                cg.store(yp, dt, i1, cg.fsub(cg.fmul(c, x1)?, cg.fmul(sn, x2)?)?)?;
                cg.store(yp, dt, i2, cg.fadd(cg.fmul(sn, x1)?, cg.fmul(c, x2)?)?)
            })?;
            cg.for_n(f, head_dim - rot, &mut |e| {
                let at = cg.add(o, cg.add(e, cg.i64c(rot as i64))?)?;
                cg.store(yp, dt, at, cg.load(xp, dt, at)?)
            })
        })
    })?;
    cg.kernel_return(f)?;
    Ok((cg.finish_parallel(k)?, values.iter().map(|&v| plan.loc(v)).collect()))
}
