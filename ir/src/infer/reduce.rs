//! Rules for reductions: Reduce*, ArgMax/ArgMin, TopK and CumSum.

use super::shape_value::constants;
use super::Ctx;
use crate::dim::Dim;
use crate::dtype::DType;
use crate::error::Result;
use crate::op::ReduceKind;
use crate::types::TensorType;

pub(crate) fn reduce(
    cx: &mut Ctx,
    kind: ReduceKind,
    attr_axes: Option<&[i64]>,
    keepdims: bool,
    noop_with_empty_axes: bool,
) -> Result<Vec<TensorType>> {
    let t = cx.ty(0)?;
    let dtype = match kind {
        ReduceKind::Max | ReduceKind::Min => {
            cx.dtype_in(0, |d| d.is_numeric() || d == DType::Bool, "a numeric or bool type")?
        }
        _ => cx.dtype_in(0, |d| d.is_numeric(), "a numeric type")?,
    };
    let rank = t.rank();
    let axes: Vec<i64> = match attr_axes {
        Some(a) => {
            if cx.has(1) {
                return Err(cx.err("axes are given both as an attribute and as input 1"));
            }
            a.to_vec()
        }
        None if cx.has(1) => {
            let (len, contents) = cx.int_vector(1, "axes", false)?;
            match contents.as_ref().and_then(constants) {
                Some(a) => a,
                None => {
                    // Which axes is unknown; only the rank may be derivable.
                    let shape = match (keepdims, len) {
                        (true, _) => {
                            t.shape.iter().map(|d| if *d == Dim::Fixed(1) { d.clone() } else { cx.fresh() }).collect()
                        }
                        (false, Some(n)) if n <= rank => cx.fresh_dims(rank - n),
                        (false, _) => {
                            return Err(cx.err(format!(
                                "cannot determine the result rank: the axes {} have unknown values and keepdims=0",
                                cx.desc(1)
                            )))
                        }
                    };
                    return Ok(vec![TensorType::new(dtype, shape)]);
                }
            }
        }
        None => Vec::new(),
    };
    if axes.is_empty() && noop_with_empty_axes {
        return Ok(vec![t.clone()]);
    }
    let reduced: Vec<usize> = if axes.is_empty() { (0..rank).collect() } else { cx.axes(&axes, rank)? };
    let mut shape = Vec::with_capacity(rank);
    for (i, d) in t.shape.iter().enumerate() {
        if !reduced.contains(&i) {
            shape.push(d.clone());
        } else if keepdims {
            shape.push(Dim::Fixed(1));
        }
    }
    Ok(vec![TensorType::new(dtype, shape)])
}

pub(crate) fn arg_reduce(cx: &mut Ctx, axis: i64, keepdims: bool) -> Result<Vec<TensorType>> {
    cx.dtype_in(0, |d| d.is_numeric(), "a numeric type")?;
    let t = cx.ty(0)?;
    let axis = cx.axis(axis, t.rank())?;
    let mut shape = t.shape.clone();
    if keepdims {
        shape[axis] = Dim::Fixed(1);
    } else {
        shape.remove(axis);
    }
    Ok(vec![TensorType::new(DType::I64, shape)])
}

pub(crate) fn top_k(cx: &mut Ctx, axis: i64) -> Result<Vec<TensorType>> {
    cx.dtype_in(0, |d| d.is_numeric(), "a numeric type")?;
    let t = cx.ty(0)?;
    let axis = cx.axis(axis, t.rank())?;
    let (len, contents) = cx.int_vector(1, "k", false)?;
    if len.is_some_and(|n| n != 1) {
        return Err(cx.err(format!("{} (k) has shape {}; expected one element", cx.desc(1), cx.ty(1)?)));
    }
    let k = match contents.and_then(|c| c.into_iter().next().flatten()) {
        Some(p) => match p.as_constant() {
            Some(c) if c < 0 => return Err(cx.err(format!("k = {c} is negative"))),
            Some(c) => Dim::Fixed(c as u64),
            None => Dim::Sym(p),
        },
        None => cx.fresh(),
    };
    if let (Some(kv), Some(n)) = (k.fixed(), t.shape[axis].fixed()) {
        if kv > n {
            return Err(cx.err(format!("k = {kv} exceeds dim {n} of {} ({t}) along axis {axis}", cx.desc(0))));
        }
    }
    let mut shape = t.shape.clone();
    shape[axis] = k;
    Ok(vec![TensorType::new(t.dtype, shape.clone()), TensorType::new(DType::I64, shape)])
}

pub(crate) fn cum_sum(cx: &mut Ctx) -> Result<Vec<TensorType>> {
    cx.dtype_in(0, |d| d.is_numeric(), "a numeric type")?;
    let t = cx.ty(0)?;
    cx.dtype_in(1, |d| matches!(d, DType::I32 | DType::I64), "i32 or i64 (the axis)")?;
    if let Some(axis) = cx.scalar_input(1, "axis")?.and_then(|p| p.as_constant()) {
        cx.axis(axis, t.rank())?;
    }
    Ok(vec![t.clone()])
}
