//! Rules for matrix products: MatMul, Gemm and their integer and quantized
//! forms.

use super::{dims, Ctx};
use crate::dim::Dim;
use crate::dtype::DType;
use crate::error::Result;
use crate::op::GemmAttrs;
use crate::types::TensorType;

fn is_8bit(d: DType) -> bool {
    matches!(d, DType::I8 | DType::U8)
}

/// Numpy matmul shape of inputs `a` and `b`: 1-D operands are promoted and
/// the promoted axis dropped again; batch dims broadcast.
fn matmul_shape(cx: &Ctx, a: usize, b: usize) -> Result<Vec<Dim>> {
    let (ta, tb) = (cx.ty(a)?, cx.ty(b)?);
    for (slot, t) in [(a, ta), (b, tb)] {
        if t.rank() == 0 {
            return Err(cx.err(format!("{} is a scalar ({t}); matrix products need rank 1 or more", cx.desc(slot))));
        }
    }
    let a_shape: Vec<Dim> = if ta.rank() == 1 { vec![Dim::Fixed(1), ta.shape[0].clone()] } else { ta.shape.clone() };
    let b_shape: Vec<Dim> = if tb.rank() == 1 { vec![tb.shape[0].clone(), Dim::Fixed(1)] } else { tb.shape.clone() };
    let (ra, rb) = (a_shape.len(), b_shape.len());
    let k_a = &a_shape[ra - 1];
    let k_b = &b_shape[rb - 2];
    if dims::conflict(k_a, k_b) {
        return Err(cx.err(format!("{} has shape {tb} but {} has inner dim {k_a}", cx.desc(b), cx.desc(a))));
    }
    let (batch_a, batch_b) = (&a_shape[..ra - 2], &b_shape[..rb - 2]);
    let rank = batch_a.len().max(batch_b.len());
    let mut out = Vec::with_capacity(rank + 2);
    for i in 0..rank {
        let da = (i + batch_a.len()).checked_sub(rank).map(|j| &batch_a[j]);
        let db = (i + batch_b.len()).checked_sub(rank).map(|j| &batch_b[j]);
        out.push(match (da, db) {
            (Some(x), Some(y)) => dims::broadcast(x, y).ok_or_else(|| {
                cx.err(format!(
                    "batch dims of {} ({ta}) and {} ({tb}) do not broadcast: {x} vs {y}",
                    cx.desc(a),
                    cx.desc(b)
                ))
            })?,
            (Some(x), None) | (None, Some(x)) => x.clone(),
            (None, None) => unreachable!("index below the larger batch rank"),
        });
    }
    if ta.rank() > 1 {
        out.push(a_shape[ra - 2].clone());
    }
    if tb.rank() > 1 {
        out.push(b_shape[rb - 1].clone());
    }
    Ok(out)
}

pub(crate) fn matmul(cx: &mut Ctx) -> Result<Vec<TensorType>> {
    let dtype = cx.dtype_in(0, |d| d.is_float() || matches!(d, DType::I32 | DType::I64), "a float, i32 or i64 type")?;
    cx.same_dtype(0, 1)?;
    Ok(vec![TensorType::new(dtype, matmul_shape(cx, 0, 1)?)])
}

pub(crate) fn gemm(cx: &mut Ctx, attrs: &GemmAttrs) -> Result<Vec<TensorType>> {
    let dtype = cx.dtype_in(0, |d| d.is_float() || matches!(d, DType::I32 | DType::I64), "a float, i32 or i64 type")?;
    cx.same_dtype(0, 1)?;
    let ta = cx.rank_is(0, 2)?;
    let tb = cx.rank_is(1, 2)?;
    let (m, k_a) = if attrs.trans_a { (&ta.shape[1], &ta.shape[0]) } else { (&ta.shape[0], &ta.shape[1]) };
    let (k_b, n) = if attrs.trans_b { (&tb.shape[1], &tb.shape[0]) } else { (&tb.shape[0], &tb.shape[1]) };
    if dims::conflict(k_a, k_b) {
        return Err(cx.err(format!(
            "{} has shape {tb} (transB={}) but {} has inner dim {k_a} (transA={})",
            cx.desc(1),
            attrs.trans_b as u8,
            cx.desc(0),
            attrs.trans_a as u8
        )));
    }
    let out = vec![m.clone(), n.clone()];
    if let Some(tc) = cx.opt_ty(2)? {
        cx.same_dtype(0, 2)?;
        // C broadcasts one way, to [M, N].
        let ok = tc.rank() <= 2
            && tc.shape.iter().rev().zip(out.iter().rev()).all(|(c, o)| *c == Dim::Fixed(1) || !dims::conflict(c, o));
        if !ok {
            return Err(cx.err(format!(
                "{} has shape {tc}, which does not broadcast to the result shape {}",
                cx.desc(2),
                dims::fmt_shape(&out)
            )));
        }
    }
    Ok(vec![TensorType::new(dtype, out)])
}

pub(crate) fn matmul_integer(cx: &mut Ctx) -> Result<Vec<TensorType>> {
    cx.dtype_in(0, is_8bit, "i8 or u8")?;
    cx.dtype_in(1, is_8bit, "i8 or u8")?;
    for (zp, of) in [(2, 0), (3, 1)] {
        if cx.has(zp) {
            cx.same_dtype(of, zp)?;
        }
    }
    Ok(vec![TensorType::new(DType::I32, matmul_shape(cx, 0, 1)?)])
}

pub(crate) fn qlinear_matmul(cx: &mut Ctx) -> Result<Vec<TensorType>> {
    cx.dtype_in(0, is_8bit, "i8 or u8")?;
    cx.dtype_in(3, is_8bit, "i8 or u8")?;
    cx.same_dtype(0, 2)?;
    cx.same_dtype(3, 5)?;
    cx.dtype_in(1, |d| d.is_float(), "a float type (scale)")?;
    cx.same_dtype(1, 4)?;
    cx.same_dtype(1, 6)?;
    let out = cx.dtype_in(7, is_8bit, "i8 or u8 (the output zero point decides the result type)")?;
    Ok(vec![TensorType::new(out, matmul_shape(cx, 0, 3)?)])
}
