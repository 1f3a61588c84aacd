//! Reductions: the Reduce* family, ArgMax/ArgMin, TopK and CumSum.
//!
//! Float reductions accumulate in f64 and round once, so ReduceSum of a
//! large f32 tensor is as accurate as its dtype allows. Integer Sum, Prod,
//! Max, Min, L1 and SumSquare stay in the element type (wrapping, like
//! numpy); the other integer reductions go through f64 and truncate.

use super::util::{
    int_scalar, int_values, map_lanes, match_numeric, narrow_to, normalize_axes, normalize_axis, optional, required,
    widen_half, wrap, KResult, Num,
};
use crate::op::{Op, ReduceKind};
use crate::tensor::Tensor;
use ndarray::{ArrayD, ArrayViewD, IxDyn};
use std::cmp::Ordering;

pub(crate) fn eval(op: &Op, inputs: &[Option<Tensor>]) -> KResult<Vec<Option<Tensor>>> {
    match op {
        Op::Reduce { kind, axes, keepdims, noop_with_empty_axes } => {
            let x = required(inputs, 0, "data")?;
            // The attribute wins (older opsets); else the optional input.
            let axes = match (axes, optional(inputs, 1)) {
                (Some(a), _) => a.clone(),
                (None, Some(t)) => int_values(t, "axes")?,
                (None, None) => Vec::new(),
            };
            if axes.is_empty() && *noop_with_empty_axes {
                return Ok(vec![Some(x.clone())]);
            }
            let axes =
                if axes.is_empty() { (0..x.shape().len()).collect() } else { normalize_axes(&axes, x.shape().len())? };
            Ok(vec![Some(reduce(*kind, x, &axes, *keepdims)?)])
        }
        Op::ArgReduce { max, axis, keepdims, select_last_index } => {
            let x = required(inputs, 0, "data")?;
            Ok(vec![Some(arg_reduce(x, *max, *axis, *keepdims, *select_last_index)?)])
        }
        Op::TopK { axis, largest, sorted: _ } => {
            // Unsorted output is allowed to be in any order; sorted is one.
            let x = required(inputs, 0, "X")?;
            let k = int_scalar(required(inputs, 1, "K")?, "K")?;
            let (values, indices) = top_k(x, k, *axis, *largest)?;
            Ok(vec![Some(values), Some(indices)])
        }
        Op::CumSum { exclusive, reverse } => {
            let x = required(inputs, 0, "x")?;
            let axis = int_scalar(required(inputs, 1, "axis")?, "axis")?;
            Ok(vec![Some(cumsum(x, axis, *exclusive, *reverse)?)])
        }
        other => Err(format!("{} is not a reduction", other.name())),
    }
}

// ---------------------------------------------------------------- Reduce*

/// Reduces `x` over `axes` (normalized, sorted).
pub(crate) fn reduce(kind: ReduceKind, x: &Tensor, axes: &[usize], keepdims: bool) -> KResult<Tensor> {
    let dtype = x.dtype();
    if let Tensor::Bool(a) = x {
        // Max and Min of booleans are any and all.
        let any = match kind {
            ReduceKind::Max => true,
            ReduceKind::Min => false,
            _ => return Err(format!("{} does not accept bool", kind.name())),
        };
        return Ok(wrap(reduce_array(a.view(), axes, keepdims, |lane| {
            if any {
                lane.iter().any(|&b| b)
            } else {
                lane.iter().all(|&b| b)
            }
        })));
    }
    let w = widen_half(x);
    let r = match_numeric!(w.as_ref(), a => wrap(reduce_array(a.view(), axes, keepdims, |lane| reduce_lane(kind, lane))),
        else return Err(format!("{} does not accept {dtype}", kind.name())));
    Ok(narrow_to(r, dtype))
}

/// Applies `f` to the elements of every reduction group. The reduced axes
/// are moved last and the data made contiguous so each group is a slice.
fn reduce_array<T: Clone, U>(a: ArrayViewD<'_, T>, axes: &[usize], keepdims: bool, f: impl Fn(&[T]) -> U) -> ArrayD<U> {
    let shape = a.shape().to_vec();
    let rank = shape.len();
    let kept: Vec<usize> = (0..rank).filter(|i| !axes.contains(i)).collect();
    let perm: Vec<usize> = kept.iter().chain(axes.iter()).copied().collect();
    let group: usize = axes.iter().map(|&i| shape[i]).product();
    let outer: usize = kept.iter().map(|&i| shape[i]).product();
    let moved = a.permuted_axes(IxDyn(&perm));
    let contiguous = moved.as_standard_layout();
    let data = contiguous.as_slice().expect("a standard-layout array is one slice");
    let values: Vec<U> = (0..outer).map(|i| f(&data[i * group..(i + 1) * group])).collect();
    let out_shape: Vec<usize> = if keepdims {
        (0..rank).map(|i| if axes.contains(&i) { 1 } else { shape[i] }).collect()
    } else {
        kept.iter().map(|&i| shape[i]).collect()
    };
    ArrayD::from_shape_vec(IxDyn(&out_shape), values).expect("one value per kept position")
}

fn reduce_lane<T: Num>(kind: ReduceKind, lane: &[T]) -> T {
    use ReduceKind as K;
    if !T::IS_FLOAT {
        match kind {
            K::Sum => return lane.iter().fold(T::zero(), |s, &v| s.add(v)),
            K::Prod => return lane.iter().fold(T::one(), |s, &v| s.mul(v)),
            K::Max => return lane.iter().fold(T::lowest(), |s, &v| s.max_nan(v)),
            K::Min => return lane.iter().fold(T::highest(), |s, &v| s.min_nan(v)),
            K::L1 => {
                return lane.iter().fold(T::zero(), |s, &v| s.add(if v < T::zero() { T::zero().sub(v) } else { v }))
            }
            K::SumSquare => return lane.iter().fold(T::zero(), |s, &v| s.add(v.mul(v))),
            K::Mean | K::L2 | K::LogSum | K::LogSumExp => {}
        }
    }
    let values = lane.iter().map(|v| v.to_f64());
    let r = match kind {
        K::Sum => values.sum(),
        K::Mean => values.sum::<f64>() / lane.len() as f64,
        K::Prod => values.product(),
        K::Max => values.fold(f64::NEG_INFINITY, nan_max),
        K::Min => values.fold(f64::INFINITY, nan_min),
        K::L1 => values.map(f64::abs).sum(),
        K::L2 => values.map(|v| v * v).sum::<f64>().sqrt(),
        K::SumSquare => values.map(|v| v * v).sum(),
        K::LogSum => values.sum::<f64>().ln(),
        K::LogSumExp => {
            let m = lane.iter().map(|v| v.to_f64()).fold(f64::NEG_INFINITY, nan_max);
            if m.is_infinite() {
                // All -inf (or empty): log(0). All +inf stays +inf.
                m
            } else {
                m + values.map(|v| (v - m).exp()).sum::<f64>().ln()
            }
        }
    };
    T::from_f64(r)
}

fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

fn nan_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

// ---------------------------------------------------------------- ArgMax / ArgMin

fn arg_reduce(x: &Tensor, max: bool, axis: i64, keepdims: bool, last: bool) -> KResult<Tensor> {
    let axis = normalize_axis(axis, x.shape().len())?;
    if x.shape()[axis] == 0 {
        return Err(format!("cannot take Arg{} over axis {axis} of size 0", if max { "Max" } else { "Min" }));
    }
    let w = widen_half(x);
    let idx: ArrayD<i64> = match_numeric!(w.as_ref(), a => map_lanes(a.view(), axis, 1, |lane, out| {
        out[0] = arg_best(lane, max, last) as i64;
        Ok(())
    })?, else return Err(format!("Arg{} does not accept {}", if max { "Max" } else { "Min" }, x.dtype())));
    let idx = if keepdims { idx } else { idx.index_axis_move(ndarray::Axis(axis), 0) };
    Ok(wrap(idx))
}

/// The index of the largest (`max`) or smallest element; ties go to the
/// first index unless `last`. NaN counts as the extreme, first NaN wins,
/// as in numpy.
fn arg_best<T: Num>(lane: &[T], max: bool, last: bool) -> usize {
    let mut best = 0;
    for (i, &v) in lane.iter().enumerate().skip(1) {
        let b = lane[best];
        if b.is_nan() {
            break;
        }
        let better = if v.is_nan() {
            true
        } else if max {
            v > b || (last && v == b)
        } else {
            v < b || (last && v == b)
        };
        if better {
            best = i;
        }
    }
    best
}

// ---------------------------------------------------------------- TopK

/// The `k` largest (or smallest) elements along `axis`, sorted, and their
/// indices. Equal values keep their original order (lower index first);
/// NaN sorts above every number.
pub(crate) fn top_k(x: &Tensor, k: i64, axis: i64, largest: bool) -> KResult<(Tensor, Tensor)> {
    let dtype = x.dtype();
    let axis = normalize_axis(axis, x.shape().len())?;
    let n = x.shape()[axis];
    if k < 0 || k as usize > n {
        return Err(format!("K = {k} is out of range for axis {axis} of size {n}"));
    }
    let k = k as usize;
    let w = widen_half(x);
    let (values, indices) = match_numeric!(w.as_ref(), a => {
        let pairs = map_lanes(a.view(), axis, k, |lane, out| {
            let mut idx: Vec<usize> = (0..lane.len()).collect();
            // A stable sort keeps equal values in index order.
            idx.sort_by(|&i, &j| {
                let o = total_cmp(lane[i], lane[j]);
                if largest { o.reverse() } else { o }
            });
            for (o, &i) in out.iter_mut().zip(&idx) {
                *o = (lane[i], i as i64);
            }
            Ok(())
        })?;
        (wrap(pairs.mapv(|p| p.0)), wrap(pairs.mapv(|p| p.1)))
    }, else return Err(format!("TopK does not accept {dtype}")));
    Ok((narrow_to(values, dtype), indices))
}

/// A total order on numeric values with NaN above everything.
fn total_cmp<T: Num>(a: T, b: T) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

// ---------------------------------------------------------------- CumSum

fn cumsum(x: &Tensor, axis: i64, exclusive: bool, reverse: bool) -> KResult<Tensor> {
    let dtype = x.dtype();
    let axis = normalize_axis(axis, x.shape().len())?;
    let n = x.shape()[axis];
    let w = widen_half(x);
    let r = match_numeric!(w.as_ref(), a => wrap(map_lanes(a.view(), axis, n, |lane, out| {
        let mut acc = Num::zero();
        let order: Box<dyn Iterator<Item = usize>> = if reverse { Box::new((0..n).rev()) } else { Box::new(0..n) };
        for i in order {
            if exclusive {
                out[i] = acc;
                acc = Num::add(acc, lane[i]);
            } else {
                acc = Num::add(acc, lane[i]);
                out[i] = acc;
            }
        }
        Ok(())
    })?), else return Err(format!("CumSum does not accept {dtype}")));
    Ok(narrow_to(r, dtype))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;

    fn t(shape: &[usize], v: &[f64]) -> Tensor {
        Tensor::from_f64s(DType::F32, shape, v)
    }

    #[test]
    fn reduce_sum_middle_axis_keepdims() {
        let x = t(&[2, 3, 2], &(0..12).map(|v| v as f64).collect::<Vec<_>>());
        let r = reduce(ReduceKind::Sum, &x, &[1], true).unwrap();
        assert_eq!(r.shape(), &[2, 1, 2]);
        assert_eq!(r.to_f64s(), vec![6.0, 9.0, 24.0, 27.0]);
    }

    #[test]
    fn empty_reductions_give_identities() {
        let x = t(&[2, 0], &[]);
        assert_eq!(reduce(ReduceKind::Max, &x, &[1], false).unwrap().to_f64s(), vec![f64::NEG_INFINITY; 2]);
        assert_eq!(reduce(ReduceKind::Prod, &x, &[1], false).unwrap().to_f64s(), vec![1.0; 2]);
        assert_eq!(reduce(ReduceKind::LogSumExp, &x, &[1], false).unwrap().to_f64s(), vec![f64::NEG_INFINITY; 2]);
    }

    #[test]
    fn max_propagates_nan() {
        let x = t(&[3], &[1.0, f64::NAN, 2.0]);
        assert!(reduce(ReduceKind::Max, &x, &[0], false).unwrap().to_f64s()[0].is_nan());
    }

    #[test]
    fn argmax_ties_and_last_index() {
        let x = t(&[4], &[1.0, 3.0, 3.0, 0.0]);
        assert_eq!(arg_reduce(&x, true, 0, false, false).unwrap().to_i64s(), vec![1]);
        assert_eq!(arg_reduce(&x, true, 0, false, true).unwrap().to_i64s(), vec![2]);
        assert_eq!(arg_reduce(&x, false, -1, true, false).unwrap().shape(), &[1]);
    }

    #[test]
    fn topk_is_stable_on_ties() {
        let x = t(&[2, 3], &[1.0, 2.0, 2.0, 5.0, 5.0, 1.0]);
        let (v, i) = top_k(&x, 2, -1, true).unwrap();
        assert_eq!(v.to_f64s(), vec![2.0, 2.0, 5.0, 5.0]);
        assert_eq!(i.to_i64s(), vec![1, 2, 0, 1]);
        let (v, i) = top_k(&x, 1, 0, false).unwrap();
        assert_eq!(v.to_f64s(), vec![1.0, 2.0, 1.0]);
        assert_eq!(i.to_i64s(), vec![0, 0, 1]);
    }

    #[test]
    fn cumsum_modes() {
        let x = Tensor::from_i64s(DType::I32, &[4], &[1, 2, 3, 4]);
        assert_eq!(cumsum(&x, 0, false, false).unwrap().to_i64s(), vec![1, 3, 6, 10]);
        assert_eq!(cumsum(&x, 0, true, false).unwrap().to_i64s(), vec![0, 1, 3, 6]);
        assert_eq!(cumsum(&x, 0, false, true).unwrap().to_i64s(), vec![10, 9, 7, 4]);
        assert_eq!(cumsum(&x, -1, true, true).unwrap().to_i64s(), vec![9, 7, 4, 0]);
    }
}
