//! Rules for shape and data-movement ops: Reshape, Transpose, Concat,
//! Slice, Gather, Expand, Pad, Cast, Shape, Range and friends. Most read
//! shapes, axes or sizes from small integer inputs, whose contents come from
//! value propagation ([`super::shape_value`]).

use super::dims::{self, poly, poly_add, poly_floor_div, poly_sub};
use super::shape_value::{constants, fixed_slice, range_len, shape_range, Elems};
use super::Ctx;
use crate::dim::{Dim, Poly};
use crate::dtype::DType;
use crate::error::Result;
use crate::tensor::Tensor;
use crate::types::TensorType;

/// Start and end values at least this large (or this negative) are read as
/// "to the end" ("from the start"): exporters write `INT_MAX` or `i64::MAX`,
/// and a symbolic dim cannot be compared with them.
const OPEN_BOUND: i64 = (1 << 31) - 1;

fn is_index_type(d: DType) -> bool {
    matches!(d, DType::I32 | DType::I64)
}

/// Shows tracked contents: `[batch, seq, -1, ?]`.
fn fmt_elems(e: &Elems) -> String {
    let parts: Vec<String> = e.iter().map(|p| p.as_ref().map_or("?".to_string(), |p| p.to_string())).collect();
    format!("[{}]", parts.join(", "))
}

/// A size read from a tracked element: a constant must be non-negative; an
/// unknown element becomes a fresh symbol.
fn elem_dim(cx: &mut Ctx, e: &Option<Poly>, what: &str) -> Result<Dim> {
    match e {
        None => Ok(cx.fresh()),
        Some(p) => match p.as_constant() {
            Some(c) if c < 0 => Err(cx.err(format!("{what} {c} is negative"))),
            Some(c) => Ok(Dim::Fixed(c as u64)),
            None => Ok(Dim::Sym(p.clone())),
        },
    }
}

/// The contents of an integer vector input, or all unknown when only its
/// length is known; an error naming the input when even the length is not.
fn vector_elems(cx: &mut Ctx, slot: usize, what: &str, allow_i32: bool) -> Result<Elems> {
    let (len, contents) = cx.int_vector(slot, what, allow_i32)?;
    match (len, contents) {
        (Some(n), Some(c)) if c.len() == n => Ok(c),
        (Some(n), _) => Ok(vec![None; n]),
        (None, _) => Err(cx.err(format!(
            "cannot determine the result rank: {} ({what}) has shape {}, of unknown length",
            cx.desc(slot),
            cx.ty(slot)?
        ))),
    }
}

pub(crate) fn transpose(cx: &mut Ctx, perm: Option<&[i64]>) -> Result<Vec<TensorType>> {
    let t = cx.ty(0)?;
    let rank = t.rank();
    let perm: Vec<usize> = match perm {
        None => (0..rank).rev().collect(),
        Some(p) => {
            if p.len() != rank {
                return Err(cx.err(format!("perm {p:?} has {} entries but {} has rank {rank}", p.len(), cx.desc(0))));
            }
            cx.axes(p, rank)?
        }
    };
    Ok(vec![TensorType::new(t.dtype, perm.iter().map(|&i| t.shape[i].clone()).collect())])
}

pub(crate) fn reshape(cx: &mut Ctx, allowzero: bool) -> Result<Vec<TensorType>> {
    let t = cx.ty(0)?;
    let target = vector_elems(cx, 1, "shape", false)?;
    let mut out = Vec::with_capacity(target.len());
    let mut infer_at = None;
    let mut has_zero = false;
    let mut has_unknown = false;
    for (i, e) in target.iter().enumerate() {
        let d = match e.as_ref().map(|p| (p, p.as_constant())) {
            None => {
                has_unknown = true;
                cx.fresh()
            }
            Some((p, None)) => Dim::Sym(p.clone()),
            Some((_, Some(-1))) => {
                if infer_at.is_some() {
                    return Err(cx.err(format!("shape {} has more than one -1", fmt_elems(&target))));
                }
                infer_at = Some(i);
                Dim::Fixed(1)
            }
            Some((_, Some(0))) if !allowzero => {
                has_zero = true;
                t.shape.get(i).cloned().ok_or_else(|| {
                    cx.err(format!(
                        "shape {} copies dim {i} (a 0) but {} has rank {}",
                        fmt_elems(&target),
                        cx.desc(0),
                        t.rank()
                    ))
                })?
            }
            Some((_, Some(c))) if c < -1 => {
                return Err(cx.err(format!("shape {} has the invalid entry {c}", fmt_elems(&target))));
            }
            Some((_, Some(c))) => {
                has_zero |= c == 0;
                Dim::Fixed(c as u64)
            }
        };
        out.push(d);
    }
    if allowzero && has_zero && infer_at.is_some() {
        return Err(cx.err(format!("shape {} has both 0 and -1 with allowzero=1", fmt_elems(&target))));
    }
    let total = dims::product(&t.shape);
    match infer_at {
        Some(i) => {
            let others = dims::product(out.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, d)| d));
            out[i] = match (total, others) {
                (Some(total), Some(others)) if !has_unknown => {
                    if others == Dim::Fixed(0) {
                        return Err(cx.err(format!(
                            "cannot infer the -1 in shape {}: the other dims multiply to 0",
                            fmt_elems(&target)
                        )));
                    }
                    if let (Some(a), Some(b)) = (total.fixed(), others.fixed()) {
                        if a % b != 0 {
                            return Err(cx.err(format!(
                                "cannot reshape {} ({t}, {a} elements) to {}: {a} is not a multiple of {b}",
                                cx.desc(0),
                                fmt_elems(&target)
                            )));
                        }
                    }
                    match dims::floor_div(&total, &others) {
                        Some(d) => d,
                        None => cx.fresh(),
                    }
                }
                _ => cx.fresh(),
            };
        }
        None => {
            if let (Some(a), Some(b)) = (total.and_then(|d| d.fixed()), dims::product(&out).and_then(|d| d.fixed())) {
                if a != b {
                    return Err(cx.err(format!(
                        "cannot reshape {} ({t}, {a} elements) to {} ({b} elements)",
                        cx.desc(0),
                        dims::fmt_shape(&out)
                    )));
                }
            }
        }
    }
    Ok(vec![TensorType::new(t.dtype, out)])
}

pub(crate) fn flatten(cx: &mut Ctx, axis: i64) -> Result<Vec<TensorType>> {
    let t = cx.ty(0)?;
    let r = t.rank() as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if !(0..=r).contains(&a) {
        return Err(cx.err(format!("axis {axis} is out of range for rank {r} (accepted: {} to {r})", -r)));
    }
    let (head, tail) = t.shape.split_at(a as usize);
    let outer = match dims::product(head) {
        Some(d) => d,
        None => cx.fresh(),
    };
    let inner = match dims::product(tail) {
        Some(d) => d,
        None => cx.fresh(),
    };
    Ok(vec![TensorType::new(t.dtype, vec![outer, inner])])
}

pub(crate) fn squeeze(cx: &mut Ctx) -> Result<Vec<TensorType>> {
    let t = cx.ty(0)?;
    let rank = t.rank();
    if !cx.has(1) {
        let shape = t.shape.iter().filter(|d| **d != Dim::Fixed(1)).cloned().collect();
        return Ok(vec![TensorType::new(t.dtype, shape)]);
    }
    let axes = vector_elems(cx, 1, "axes", false)?;
    let Some(axes) = constants(&axes) else {
        if axes.len() > rank {
            return Err(cx.err(format!("{} lists {} axes but {} has rank {rank}", cx.desc(1), axes.len(), cx.desc(0))));
        }
        let shape = cx.fresh_dims(rank - axes.len());
        return Ok(vec![TensorType::new(t.dtype, shape)]);
    };
    let axes = cx.axes(&axes, rank)?;
    for &a in &axes {
        if let Some(n) = t.shape[a].fixed().filter(|&n| n != 1) {
            return Err(cx.err(format!("cannot squeeze axis {a} of {} ({t}): its size is {n}", cx.desc(0))));
        }
    }
    let shape = t.shape.iter().enumerate().filter(|(i, _)| !axes.contains(i)).map(|(_, d)| d.clone()).collect();
    Ok(vec![TensorType::new(t.dtype, shape)])
}

pub(crate) fn unsqueeze(cx: &mut Ctx) -> Result<Vec<TensorType>> {
    let t = cx.ty(0)?;
    let axes = vector_elems(cx, 1, "axes", false)?;
    let out_rank = t.rank() + axes.len();
    let Some(axes) = constants(&axes) else {
        return Ok(vec![TensorType::new(t.dtype, cx.fresh_dims(out_rank))]);
    };
    let axes = cx.axes(&axes, out_rank)?;
    let mut rest = t.shape.iter();
    let shape = (0..out_rank)
        .map(|i| {
            if axes.contains(&i) {
                Dim::Fixed(1)
            } else {
                rest.next().cloned().expect("out_rank counts every input dim")
            }
        })
        .collect();
    Ok(vec![TensorType::new(t.dtype, shape)])
}

pub(crate) fn concat(cx: &mut Ctx, axis: i64) -> Result<Vec<TensorType>> {
    let t0 = cx.ty(0)?;
    let rank = t0.rank();
    if rank == 0 {
        return Err(cx.err(format!("{} is a scalar; Concat needs rank 1 or more", cx.desc(0))));
    }
    let axis = cx.axis(axis, rank)?;
    let mut shape = t0.shape.clone();
    let mut sum = Some(t0.shape[axis].clone());
    for slot in 1..cx.num_inputs() {
        let t = cx.ty(slot)?;
        cx.same_dtype(0, slot)?;
        if t.rank() != rank {
            return Err(cx.err(format!("{} has shape {t} but {} has rank {rank}", cx.desc(slot), cx.desc(0))));
        }
        for (i, (merged, d)) in shape.iter_mut().zip(&t.shape).enumerate() {
            if i == axis {
                sum = sum.and_then(|s| dims::add(&s, d));
                continue;
            }
            *merged = dims::unify(merged, d).ok_or_else(|| {
                cx.err(format!("{} has shape {t} but {} has dim {merged} on axis {i}", cx.desc(slot), cx.desc(0)))
            })?;
        }
    }
    shape[axis] = match sum {
        Some(d) => d,
        None => cx.fresh(),
    };
    Ok(vec![TensorType::new(t0.dtype, shape)])
}

pub(crate) fn split(cx: &mut Ctx, axis: i64, num_outputs: Option<i64>) -> Result<Vec<TensorType>> {
    let t = cx.ty(0)?;
    let axis = cx.axis(axis, t.rank())?;
    let n = cx.num_outputs();
    let d = t.shape[axis].clone();
    let sizes: Vec<Dim> = if cx.has(1) {
        if num_outputs.is_some() {
            return Err(cx.err("both the split input and the num_outputs attribute are given"));
        }
        let split = vector_elems(cx, 1, "split", false)?;
        if split.len() != n {
            return Err(cx.err(format!("{} has {} sizes but the node has {n} outputs", cx.desc(1), split.len())));
        }
        let sizes = split.iter().map(|e| elem_dim(cx, e, "split size")).collect::<Result<Vec<_>>>()?;
        if let (Some(total), Some(n_fixed)) = (sum_fixed(&sizes), d.fixed()) {
            if total != n_fixed {
                return Err(cx.err(format!(
                    "split sizes {} add up to {total} but axis {axis} of {} ({t}) has size {n_fixed}",
                    dims::fmt_shape(&sizes),
                    cx.desc(0)
                )));
            }
        }
        sizes
    } else if let Some(k) = num_outputs {
        if k < 1 || k as usize != n {
            return Err(cx.err(format!("num_outputs is {k} but the node has {n} outputs")));
        }
        let chunk = dims::ceil_div_const(&d, n as u64).ok_or_else(|| cx.err("split size overflows"))?;
        let used = dims::mul(&chunk, &Dim::Fixed(n as u64 - 1));
        let last = match used.and_then(|u| dims::sub(&d, &u)) {
            Some(l) => l,
            None if d.fixed().is_some() => {
                return Err(
                    cx.err(format!("axis {axis} of {} ({t}) cannot be split into {n} parts of {chunk}", cx.desc(0)))
                )
            }
            None => cx.fresh(),
        };
        let mut sizes = vec![chunk; n - 1];
        sizes.push(last);
        sizes
    } else {
        if let Some(size) = d.fixed() {
            if size % n as u64 != 0 {
                return Err(cx.err(format!(
                    "axis {axis} of {} ({t}) has size {size}, which does not split evenly into {n} outputs",
                    cx.desc(0)
                )));
            }
        }
        let chunk = match dims::floor_div(&d, &Dim::Fixed(n as u64)) {
            Some(c) => c,
            None => cx.fresh(),
        };
        vec![chunk; n]
    };
    Ok(sizes
        .into_iter()
        .map(|s| {
            let mut shape = t.shape.clone();
            shape[axis] = s;
            TensorType::new(t.dtype, shape)
        })
        .collect())
}

/// Sum of sizes when all are fixed.
fn sum_fixed(sizes: &[Dim]) -> Option<u64> {
    sizes.iter().try_fold(0u64, |acc, d| acc.checked_add(d.fixed()?))
}

pub(crate) fn slice(cx: &mut Ctx) -> Result<Vec<TensorType>> {
    let t = cx.ty(0)?;
    let rank = t.rank();
    let starts = vector_elems(cx, 1, "starts", true)?;
    let ends = vector_elems(cx, 2, "ends", true)?;
    cx.same_dtype(1, 2)?;
    if starts.len() != ends.len() {
        return Err(cx.err(format!(
            "{} has {} entries but {} has {}",
            cx.desc(2),
            ends.len(),
            cx.desc(1),
            starts.len()
        )));
    }
    let n = starts.len();
    let axes: Option<Vec<usize>> = if cx.has(3) {
        cx.same_dtype(1, 3)?;
        let a = vector_elems(cx, 3, "axes", true)?;
        if a.len() != n {
            return Err(cx.err(format!("{} has {} entries but {} has {n}", cx.desc(3), a.len(), cx.desc(1))));
        }
        match constants(&a) {
            Some(a) => Some(cx.axes(&a, rank)?),
            None => None,
        }
    } else {
        if n > rank {
            return Err(cx.err(format!("{} has {n} entries but {} has rank {rank}", cx.desc(1), cx.desc(0))));
        }
        Some((0..n).collect())
    };
    let steps: Elems = if cx.has(4) {
        cx.same_dtype(1, 4)?;
        let s = vector_elems(cx, 4, "steps", true)?;
        if s.len() != n {
            return Err(cx.err(format!("{} has {} entries but {} has {n}", cx.desc(4), s.len(), cx.desc(1))));
        }
        s
    } else {
        vec![Some(Poly::constant(1)); n]
    };
    let Some(axes) = axes else {
        // Unknown axes: any dim may be sliced.
        return Ok(vec![TensorType::new(t.dtype, cx.fresh_dims(rank))]);
    };
    let mut shape = t.shape.clone();
    for (j, &axis) in axes.iter().enumerate() {
        if steps[j].as_ref().and_then(|p| p.as_constant()) == Some(0) {
            return Err(cx.err(format!("step {j} of {} is 0", cx.desc(4))));
        }
        shape[axis] = match slice_dim(&t.shape[axis], &starts[j], &ends[j], &steps[j]) {
            Some(d) => d,
            None => cx.fresh(),
        };
    }
    Ok(vec![TensorType::new(t.dtype, shape)])
}

/// Length of a slice of `d` (see the module docs of [`crate::infer`] for the
/// assumptions on symbolic bounds); `None` when it cannot be derived.
fn slice_dim(d: &Dim, start: &Option<Poly>, end: &Option<Poly>, step: &Option<Poly>) -> Option<Dim> {
    let (start, end) = (start.as_ref()?, end.as_ref()?);
    let step = step.as_ref()?.as_constant()?;
    if let (Some(n), Some(s), Some(e)) = (d.fixed(), start.as_constant(), end.as_constant()) {
        let (_, len) = fixed_slice(i64::try_from(n).ok()?, s, e, step)?;
        return Some(Dim::Fixed(len as u64));
    }
    let dp = poly(d);
    let one = Poly::constant(1);
    // Bounds relative to the dim, assuming symbolic ones are in range.
    let bound = |p: &Poly, past_end: Poly, before_start: Poly| -> Option<Poly> {
        match p.as_constant() {
            Some(c) if c >= OPEN_BOUND => Some(past_end),
            Some(c) if c <= -OPEN_BOUND => Some(before_start),
            Some(c) if c < 0 => poly_add(&dp, p),
            _ => Some(p.clone()),
        }
    };
    let span = if step > 0 {
        let s = bound(start, dp.clone(), Poly::constant(0))?;
        let e = bound(end, dp.clone(), Poly::constant(0))?;
        poly_sub(&e, &s)?
    } else {
        let last = poly_sub(&dp, &one)?;
        let s = bound(start, last.clone(), Poly::constant(0))?;
        let e = bound(end, last, Poly::constant(-1))?;
        poly_sub(&s, &e)?
    };
    if span.as_constant().is_some_and(|c| c <= 0) {
        return Some(Dim::Fixed(0));
    }
    let k = i64::try_from(step.unsigned_abs()).ok()?;
    let len =
        if k == 1 { span } else { poly_floor_div(&poly_add(&span, &Poly::constant(k - 1))?, &Poly::constant(k))? };
    let len = Dim::from_poly(len)?;
    // With a fixed dim, a length beyond it means a bound was out of range.
    match (len.fixed(), d.fixed()) {
        (Some(l), Some(n)) if l > n => Some(Dim::Fixed(n)),
        _ => Some(len),
    }
}

pub(crate) fn gather(cx: &mut Ctx, axis: i64) -> Result<Vec<TensorType>> {
    let t = cx.ty(0)?;
    let idx = cx.ty(1)?;
    cx.dtype_in(1, is_index_type, "i32 or i64 (indices)")?;
    if t.rank() == 0 {
        return Err(cx.err(format!("{} is a scalar; Gather needs rank 1 or more", cx.desc(0))));
    }
    let a = cx.axis(axis, t.rank())?;
    if let (Some(n), Some(values)) = (t.shape[a].fixed(), cx.contents(1).as_ref().and_then(constants)) {
        if let Some(bad) = values.iter().find(|&&i| i >= n as i64 || i < -(n as i64)) {
            return Err(cx.err(format!(
                "index {bad} in {} is out of range for axis {a} of {} ({t})",
                cx.desc(1),
                cx.desc(0)
            )));
        }
    }
    let mut shape: Vec<Dim> = t.shape[..a].to_vec();
    shape.extend(idx.shape.iter().cloned());
    shape.extend(t.shape[a + 1..].iter().cloned());
    Ok(vec![TensorType::new(t.dtype, shape)])
}

pub(crate) fn gather_elements(cx: &mut Ctx, axis: i64) -> Result<Vec<TensorType>> {
    let t = cx.ty(0)?;
    let idx = cx.ty(1)?;
    cx.dtype_in(1, is_index_type, "i32 or i64 (indices)")?;
    if idx.rank() != t.rank() {
        return Err(cx.err(format!("{} has shape {idx} but {} has rank {}", cx.desc(1), cx.desc(0), t.rank())));
    }
    cx.axis(axis, t.rank())?;
    Ok(vec![TensorType::new(t.dtype, idx.shape.clone())])
}

/// Checks GatherND/ScatterND operands; returns `b` and the index tuple
/// length `k`.
fn nd_index(cx: &Ctx, batch_dims: i64) -> Result<(usize, usize)> {
    let t = cx.ty(0)?;
    let idx = cx.ty(1)?;
    cx.dtype_in(1, |d| d == DType::I64, "i64 (indices)")?;
    let (r, q) = (t.rank(), idx.rank());
    if r == 0 || q == 0 {
        return Err(cx.err(format!("{} ({t}) and {} ({idx}) must both have rank 1 or more", cx.desc(0), cx.desc(1))));
    }
    let b = usize::try_from(batch_dims)
        .ok()
        .filter(|&b| b < r.min(q))
        .ok_or_else(|| cx.err(format!("batch_dims {batch_dims} must be in [0, {}) for ranks {r} and {q}", r.min(q))))?;
    let k = idx.shape[q - 1].fixed().ok_or_else(|| {
        cx.err(format!("cannot determine the result rank: the last dim of {} ({idx}) is not known", cx.desc(1)))
    })? as usize;
    if k < 1 || k > r - b {
        return Err(cx.err(format!(
            "{} ({idx}) indexes {k} dims but {} ({t}) has {} after the batch dims",
            cx.desc(1),
            cx.desc(0),
            r - b
        )));
    }
    for i in 0..b {
        if dims::conflict(&t.shape[i], &idx.shape[i]) {
            return Err(cx.err(format!("batch dim {i} of {} ({idx}) differs from {} ({t})", cx.desc(1), cx.desc(0))));
        }
    }
    Ok((b, k))
}

pub(crate) fn gather_nd(cx: &mut Ctx, batch_dims: i64) -> Result<Vec<TensorType>> {
    let (b, k) = nd_index(cx, batch_dims)?;
    let (t, idx) = (cx.ty(0)?, cx.ty(1)?);
    let mut shape = Vec::new();
    for i in 0..b {
        shape.push(dims::unify(&t.shape[i], &idx.shape[i]).expect("checked by nd_index"));
    }
    shape.extend(idx.shape[b..idx.rank() - 1].iter().cloned());
    shape.extend(t.shape[b + k..].iter().cloned());
    Ok(vec![TensorType::new(t.dtype, shape)])
}

pub(crate) fn scatter_nd(cx: &mut Ctx, reduction: &str) -> Result<Vec<TensorType>> {
    if !matches!(reduction, "none" | "add" | "mul" | "max" | "min") {
        return Err(cx.err(format!("reduction must be none, add, mul, max or min, found `{reduction}`")));
    }
    let (_, k) = nd_index(cx, 0)?;
    cx.same_dtype(0, 2)?;
    let (t, idx, upd) = (cx.ty(0)?, cx.ty(1)?, cx.ty(2)?);
    let mut want: Vec<Dim> = idx.shape[..idx.rank() - 1].to_vec();
    want.extend(t.shape[k..].iter().cloned());
    let ok = upd.rank() == want.len() && upd.shape.iter().zip(&want).all(|(a, b)| !dims::conflict(a, b));
    if !ok {
        return Err(cx.err(format!(
            "{} has shape {upd}; expected {} from {} and {}",
            cx.desc(2),
            dims::fmt_shape(&want),
            cx.desc(1),
            cx.desc(0)
        )));
    }
    Ok(vec![t.clone()])
}

pub(crate) fn expand(cx: &mut Ctx) -> Result<Vec<TensorType>> {
    let t = cx.ty(0)?;
    let target_elems = vector_elems(cx, 1, "shape", false)?;
    let target = target_elems.iter().map(|e| elem_dim(cx, e, "target dim")).collect::<Result<Vec<_>>>()?;
    let rank = t.rank().max(target.len());
    let mut shape = Vec::with_capacity(rank);
    for i in 0..rank {
        let a = (i + t.rank()).checked_sub(rank).map(|j| &t.shape[j]);
        let b = (i + target.len()).checked_sub(rank).map(|j| &target[j]);
        shape.push(match (a, b) {
            (Some(a), Some(b)) => dims::broadcast(a, b).ok_or_else(|| {
                cx.err(format!(
                    "cannot expand {} ({t}) to shape {}: dim {a} vs {b}",
                    cx.desc(0),
                    fmt_elems(&target_elems)
                ))
            })?,
            (Some(a), None) => a.clone(),
            (None, Some(b)) => b.clone(),
            (None, None) => unreachable!("index below the larger rank"),
        });
    }
    Ok(vec![TensorType::new(t.dtype, shape)])
}

pub(crate) fn tile(cx: &mut Ctx) -> Result<Vec<TensorType>> {
    let t = cx.ty(0)?;
    let repeats = vector_elems(cx, 1, "repeats", false)?;
    if repeats.len() != t.rank() {
        return Err(cx.err(format!(
            "{} has {} entries but {} has rank {}",
            cx.desc(1),
            repeats.len(),
            cx.desc(0),
            t.rank()
        )));
    }
    let mut shape = Vec::with_capacity(t.rank());
    for (d, r) in t.shape.iter().zip(&repeats) {
        let r = elem_dim(cx, r, "repeat count")?;
        shape.push(match dims::mul(d, &r) {
            Some(x) => x,
            None => cx.fresh(),
        });
    }
    Ok(vec![TensorType::new(t.dtype, shape)])
}

pub(crate) fn pad(cx: &mut Ctx, mode: &str) -> Result<Vec<TensorType>> {
    if !matches!(mode, "constant" | "reflect" | "edge" | "wrap") {
        return Err(cx.err(format!("mode must be constant, reflect, edge or wrap, found `{mode}`")));
    }
    let t = cx.ty(0)?;
    let rank = t.rank();
    let pads = vector_elems(cx, 1, "pads", false)?;
    if let Some(c) = cx.opt_ty(2)? {
        cx.same_dtype(0, 2)?;
        if c.rank() > 1 || c.fixed_len().is_some_and(|n| n != 1) {
            return Err(cx.err(format!("{} (constant_value) has shape {c}; expected a scalar", cx.desc(2))));
        }
    }
    let axes: Option<Vec<usize>> = if cx.has(3) {
        let a = vector_elems(cx, 3, "axes", true)?;
        match constants(&a) {
            Some(a) => Some(cx.axes(&a, rank)?),
            None => {
                if pads.len() != 2 * a.len() {
                    return Err(cx.err(format!("{} has {} entries; expected {}", cx.desc(1), pads.len(), 2 * a.len())));
                }
                None
            }
        }
    } else {
        Some((0..rank).collect())
    };
    let Some(axes) = axes else {
        return Ok(vec![TensorType::new(t.dtype, cx.fresh_dims(rank))]);
    };
    let n = axes.len();
    if pads.len() != 2 * n {
        return Err(cx.err(format!(
            "{} has {} entries; expected {} (begin and end for {n} axes)",
            cx.desc(1),
            pads.len(),
            2 * n
        )));
    }
    let mut shape = t.shape.clone();
    for (j, &axis) in axes.iter().enumerate() {
        let d = &t.shape[axis];
        let padded = match (&pads[j], &pads[j + n]) {
            (Some(b), Some(e)) => poly_add(b, e).and_then(|s| poly_add(&poly(d), &s)),
            _ => None,
        };
        shape[axis] = match padded {
            Some(p) if p.as_constant().is_some_and(|c| c < 0) => {
                return Err(cx.err(format!(
                    "pads {} remove more than axis {axis} of {} ({t}) holds",
                    fmt_elems(&pads),
                    cx.desc(0)
                )))
            }
            Some(p) => Dim::from_poly(p).expect("non-negative"),
            None => cx.fresh(),
        };
    }
    Ok(vec![TensorType::new(t.dtype, shape)])
}

pub(crate) fn cast(cx: &mut Ctx, to: DType) -> Result<Vec<TensorType>> {
    Ok(vec![TensorType::new(to, cx.ty(0)?.shape.clone())])
}

pub(crate) fn cast_like(cx: &mut Ctx) -> Result<Vec<TensorType>> {
    Ok(vec![TensorType::new(cx.ty(1)?.dtype, cx.ty(0)?.shape.clone())])
}

pub(crate) fn shape(cx: &mut Ctx, start: i64, end: Option<i64>) -> Result<Vec<TensorType>> {
    let t = cx.ty(0)?;
    let (s, e) = shape_range(t.rank(), start, end);
    Ok(vec![TensorType::fixed(DType::I64, &[e - s])])
}

pub(crate) fn size(cx: &mut Ctx) -> Result<Vec<TensorType>> {
    cx.ty(0)?;
    Ok(vec![TensorType::scalar(DType::I64)])
}

pub(crate) fn constant_of_shape(cx: &mut Ctx, value: Option<&Tensor>) -> Result<Vec<TensorType>> {
    let dtype = match value {
        Some(v) if v.len() != 1 => {
            return Err(cx.err(format!("the value attribute has {} elements; expected one", v.len())));
        }
        Some(v) => v.dtype(),
        None => DType::F32,
    };
    let target = vector_elems(cx, 0, "shape", false)?;
    let shape = target.iter().map(|e| elem_dim(cx, e, "dim")).collect::<Result<Vec<_>>>()?;
    Ok(vec![TensorType::new(dtype, shape)])
}

pub(crate) fn range(cx: &mut Ctx) -> Result<Vec<TensorType>> {
    let dtype = cx.dtype_in(
        0,
        |d| d.is_float() || matches!(d, DType::I16 | DType::I32 | DType::I64),
        "a float, i16, i32 or i64 type",
    )?;
    cx.same_dtype(0, 1)?;
    cx.same_dtype(0, 2)?;
    let start = cx.scalar_input(0, "start")?;
    let limit = cx.scalar_input(1, "limit")?;
    let delta = cx.scalar_input(2, "delta")?;
    let consts = (
        start.as_ref().and_then(|p| p.as_constant()),
        limit.as_ref().and_then(|p| p.as_constant()),
        delta.as_ref().and_then(|p| p.as_constant()),
    );
    let len = match consts {
        (_, _, Some(0)) => return Err(cx.err(format!("{} (delta) is 0", cx.desc(2)))),
        (Some(s), Some(l), Some(d)) => range_len(s, l, d).map(|n| Dim::Fixed(n as u64)),
        (_, _, Some(d)) if d > 0 => match (&start, &limit) {
            (Some(s), Some(l)) => poly_sub(l, s).and_then(|span| {
                if span.as_constant().is_some_and(|c| c <= 0) {
                    return Some(Dim::Fixed(0));
                }
                let n = if d == 1 {
                    span
                } else {
                    poly_floor_div(&poly_add(&span, &Poly::constant(d - 1))?, &Poly::constant(d))?
                };
                Dim::from_poly(n)
            }),
            _ => None,
        },
        _ => None,
    };
    let len = match len {
        Some(l) => l,
        None => cx.fresh(),
    };
    Ok(vec![TensorType::new(dtype, vec![len])])
}

pub(crate) fn trilu(cx: &mut Ctx) -> Result<Vec<TensorType>> {
    let t = cx.rank_at_least(0, 2)?;
    if cx.has(1) {
        cx.dtype_in(1, |d| d == DType::I64, "i64 (k)")?;
        cx.scalar_input(1, "k")?;
    }
    Ok(vec![t.clone()])
}

pub(crate) fn dropout(cx: &mut Ctx) -> Result<Vec<TensorType>> {
    let t = cx.ty(0)?;
    cx.dtype_in(0, |d| d.is_float(), "a float type")?;
    if cx.has(1) {
        cx.dtype_in(1, |d| d.is_float(), "a float type (ratio)")?;
        cx.scalar_input(1, "ratio")?;
    }
    if cx.has(2) {
        cx.dtype_in(2, |d| d == DType::Bool, "bool (training_mode)")?;
        cx.scalar_input(2, "training_mode")?;
    }
    Ok(vec![t.clone(), TensorType::new(DType::Bool, t.shape.clone())])
}

pub(crate) fn one_hot(cx: &mut Ctx, axis: i64) -> Result<Vec<TensorType>> {
    let idx = cx.ty(0)?;
    cx.dtype_in(0, |d| d.is_numeric(), "a numeric type (indices)")?;
    cx.dtype_in(1, |d| d.is_numeric(), "a numeric type (depth)")?;
    let values = cx.rank_is(2, 1)?;
    if values.shape[0].fixed().is_some_and(|n| n != 2) {
        return Err(cx.err(format!("{} has shape {values}; expected [off, on], two elements", cx.desc(2))));
    }
    let r = idx.rank() as i64;
    let a = if axis < 0 { axis + r + 1 } else { axis };
    if !(0..=r).contains(&a) {
        return Err(cx.err(format!("axis {axis} is out of range for rank {} (accepted: {} to {r})", r + 1, -(r + 1))));
    }
    let depth = cx.scalar_input(1, "depth")?;
    let depth = elem_dim(cx, &depth, "depth")?;
    let mut shape = idx.shape.clone();
    shape.insert(a as usize, depth);
    Ok(vec![TensorType::new(values.dtype, shape)])
}

pub(crate) fn non_zero(cx: &mut Ctx) -> Result<Vec<TensorType>> {
    let t = cx.ty(0)?;
    let count = cx.fresh();
    Ok(vec![TensorType::new(DType::I64, vec![Dim::Fixed(t.rank() as u64), count])])
}
