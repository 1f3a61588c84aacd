//! Ops that join, cut or extend tensors along axes: Concat, Split, Slice,
//! Pad.

use super::{
    array, axes_list, check_alloc, dim_from_i64, elems, from_vec, prod, same_kind, standard, take_axis, Inputs, Kind,
};
use crate::tensor::Tensor;
use ndarray::{Axis, Slice};

pub(super) fn concat(args: &Inputs, axis: i64) -> Result<Tensor, String> {
    if args.len() == 0 {
        return Err(args.err("needs at least one input"));
    }
    let parts = (0..args.len()).map(|i| args.get(i, "inputs")).collect::<Result<Vec<_>, _>>()?;
    let first = parts[0];
    let rank = first.shape().len();
    if rank == 0 {
        return Err(args.err("cannot concatenate scalars (inputs must have rank 1 or more)"));
    }
    let ax = args.axis(axis, rank)?;
    let mut out = first.shape().to_vec();
    out[ax] = 0;
    for (i, t) in parts.iter().enumerate() {
        if t.dtype() != first.dtype() {
            return Err(args.err(format_args!("input {i} has type {}, input 0 has {}", t.dtype(), first.dtype())));
        }
        let compatible = t.shape().len() == rank
            && t.shape().iter().zip(first.shape()).enumerate().all(|(d, (a, b))| d == ax || a == b);
        if !compatible {
            return Err(args.err(format_args!(
                "input {i} has shape {:?}, which does not match input 0's shape {:?} outside axis {ax}",
                t.shape(),
                first.shape()
            )));
        }
        out[ax] += t.shape()[ax];
    }
    check_alloc(args, &out)?;
    dispatch!(first.dtype(), K => concat_typed::<K>(args, &parts, ax, &out))
}

fn concat_typed<K: Kind>(args: &Inputs, parts: &[&Tensor], axis: usize, out: &[usize]) -> Result<Tensor, String> {
    let arrays =
        parts.iter().map(|t| same_kind::<K>(args, t, "inputs").map(standard)).collect::<Result<Vec<_>, _>>()?;
    let outer = prod(&out[..axis]);
    let inner = prod(&out[axis + 1..]);
    let mut data = Vec::with_capacity(prod(out));
    for o in 0..outer {
        for a in &arrays {
            let block = a.shape()[axis] * inner;
            data.extend_from_slice(&elems(a)[o * block..(o + 1) * block]);
        }
    }
    Ok(from_vec::<K>(out, data))
}

pub(super) fn split(args: &Inputs, axis: i64, parts: Option<i64>, num_outputs: usize) -> Result<Vec<Tensor>, String> {
    let x = args.get(0, "input")?;
    let ax = args.axis(axis, x.shape().len())?;
    let dim = x.shape()[ax];
    let sizes: Vec<usize> = match args.opt_ints(1, "split")? {
        Some(split) => {
            if parts.is_some() {
                return Err(args.err("the `split` input and the `num_outputs` attribute cannot both be given"));
            }
            if split.len() != num_outputs {
                return Err(
                    args.err(format_args!("`split` has {} sizes but the node has {num_outputs} outputs", split.len()))
                );
            }
            let sizes =
                split.iter().map(|&s| dim_from_i64(args, s, "a size in `split`")).collect::<Result<Vec<_>, _>>()?;
            if sizes.iter().try_fold(0usize, |acc, &s| acc.checked_add(s)) != Some(dim) {
                return Err(
                    args.err(format_args!("`split` sizes {split:?} do not add up to {dim}, the size of axis {ax}"))
                );
            }
            sizes
        }
        None => {
            let n = match parts {
                Some(p) if p as u64 != num_outputs as u64 => {
                    return Err(args.err(format_args!("num_outputs is {p} but the node has {num_outputs} outputs")))
                }
                _ => num_outputs,
            };
            if n == 0 {
                return Err(args.err("needs at least one output"));
            }
            // Chunks of ceil(dim / n), the last one taking what is left.
            let chunk = dim.div_ceil(n);
            let rest = dim as i128 - chunk as i128 * (n as i128 - 1);
            if rest < 0 {
                return Err(args.err(format_args!(
                    "axis {ax} of size {dim} cannot be split into {n} chunks of {chunk} with a smaller last one"
                )));
            }
            let mut sizes = vec![chunk; n - 1];
            sizes.push(rest as usize);
            sizes
        }
    };
    let mut offset = 0;
    let mut out = Vec::with_capacity(sizes.len());
    for size in sizes {
        let range = Slice::from(offset..offset + size);
        offset += size;
        out.push(dispatch!(x.dtype(), K => {
            let part = array::<K>(x).view().slice_axis(Axis(ax), range).as_standard_layout().into_owned();
            K::wrap(part.into_shared())
        }));
    }
    Ok(out)
}

/// The elements one axis of a Slice selects: the first index, how many, and
/// the step. Clamping follows ONNX: starts and ends are first shifted by the
/// dimension when negative, then clamped to `[0, dim]` for positive steps
/// and to `[0, dim - 1]` (starts) and `[-1, dim - 1]` (ends) for negative ones.
fn slice_axis_range(start: i64, end: i64, step: i64, dim: usize) -> (i128, i128, i128) {
    let (start, end, step, dim) = (start as i128, end as i128, step as i128, dim as i128);
    let shift = |v: i128| if v < 0 { v + dim } else { v };
    if step > 0 {
        let s = shift(start).clamp(0, dim);
        let e = shift(end).clamp(0, dim);
        let count = if e > s { (e - s + step - 1) / step } else { 0 };
        (s, count, step)
    } else {
        if dim == 0 {
            return (0, 0, step);
        }
        let s = shift(start).clamp(0, dim - 1);
        let e = shift(end).clamp(-1, dim - 1);
        let count = if s > e { (s - e - step - 1) / -step } else { 0 };
        (s, count, step)
    }
}

pub(super) fn slice(args: &Inputs) -> Result<Tensor, String> {
    let x = args.get(0, "data")?;
    let starts = args.ints(1, "starts")?;
    let ends = args.ints(2, "ends")?;
    let rank = x.shape().len();
    let n = starts.len();
    if ends.len() != n {
        return Err(args.err(format_args!("`starts` has {n} values but `ends` has {}", ends.len())));
    }
    let axes = match args.opt_ints(3, "axes")? {
        Some(a) if a.len() != n => {
            return Err(args.err(format_args!("`starts` has {n} values but `axes` has {}", a.len())))
        }
        Some(a) => axes_list(args, &a, rank)?,
        None if n > rank => return Err(args.err(format_args!("`starts` has {n} values but `data` has rank {rank}"))),
        None => (0..n).collect(),
    };
    let steps = args.opt_ints(4, "steps")?.unwrap_or_else(|| vec![1; n]);
    if steps.len() != n {
        return Err(args.err(format_args!("`starts` has {n} values but `steps` has {}", steps.len())));
    }
    let mut slices = vec![Slice::from(..); rank];
    for i in 0..n {
        if steps[i] == 0 {
            return Err(args.err(format_args!("`steps` value {i} is 0; steps must be non-zero")));
        }
        let dim = x.shape()[axes[i]];
        let (first, count, step) = slice_axis_range(starts[i], ends[i], steps[i], dim);
        // Every bound below lies in [-1, dim] or is a step, so it fits isize.
        slices[axes[i]] = if count == 0 {
            Slice::new(0, Some(0), 1)
        } else if step > 0 {
            Slice::new(first as isize, Some((first + (count - 1) * step + 1) as isize), step as isize)
        } else {
            let last = first + (count - 1) * step;
            Slice::new(last as isize, Some((first + 1) as isize), step as isize)
        };
    }
    Ok(dispatch!(x.dtype(), K => {
        let view = array::<K>(x).view();
        let part = view.slice_each_axis(|d| slices[d.axis.index()]);
        K::wrap(part.as_standard_layout().into_owned().into_shared())
    }))
}

/// Pad modes.
#[derive(Clone, Copy, PartialEq)]
enum PadMode {
    Constant,
    Reflect,
    Edge,
    Wrap,
}

pub(super) fn pad(args: &Inputs, mode: &str) -> Result<Tensor, String> {
    let mode = match mode {
        "constant" => PadMode::Constant,
        "reflect" => PadMode::Reflect,
        "edge" => PadMode::Edge,
        "wrap" => PadMode::Wrap,
        _ => return Err(args.err(format_args!("unknown mode `{mode}` (expected constant, reflect, edge or wrap)"))),
    };
    let x = args.get(0, "data")?;
    let pads = args.ints(1, "pads")?;
    let rank = x.shape().len();
    let axes = match args.opt_ints(3, "axes")? {
        Some(a) => axes_list(args, &a, rank)?,
        None => (0..rank).collect(),
    };
    if pads.len() != 2 * axes.len() {
        return Err(args.err(format_args!(
            "`pads` has {} values but {} are needed (begin and end for each of {} axes)",
            pads.len(),
            2 * axes.len(),
            axes.len()
        )));
    }
    if let Some(v) = args.opt(2) {
        if v.dtype() != x.dtype() {
            return Err(args.err(format_args!("`constant_value` has type {}, `data` has {}", v.dtype(), x.dtype())));
        }
        if v.len() > 1 {
            return Err(args.err(format_args!("`constant_value` must be a scalar, found shape {:?}", v.shape())));
        }
    }
    // One index map per padded axis: output position -> input position, or
    // None for the constant.
    let mut maps: Vec<(usize, Vec<Option<usize>>)> = Vec::new();
    let mut out_shape = x.shape().to_vec();
    for (i, &ax) in axes.iter().enumerate() {
        let (begin, end) = (pads[i] as i128, pads[axes.len() + i] as i128);
        if begin == 0 && end == 0 {
            continue;
        }
        let dim = x.shape()[ax] as i128;
        // Negative pads crop first; the positive ones then pad what is left.
        let lo = (-begin).max(0);
        let kept = dim - lo - (-end).max(0);
        let out_dim = dim + begin + end;
        if kept < 0 || out_dim < 0 {
            return Err(
                args.err(format_args!("pads {begin} and {end} remove more than the {dim} elements of axis {ax}"))
            );
        }
        if kept == 0 && out_dim > 0 && mode != PadMode::Constant {
            return Err(args.err(format_args!("cannot pad axis {ax} in this mode: no elements are left to copy")));
        }
        check_alloc(args, &[out_dim.min(usize::MAX as i128) as usize])?;
        let before = begin.max(0);
        let map = (0..out_dim)
            .map(|o| {
                let rel = o - before;
                let src = if (0..kept).contains(&rel) {
                    Some(rel)
                } else {
                    match mode {
                        PadMode::Constant => None,
                        PadMode::Edge => Some(rel.clamp(0, kept - 1)),
                        PadMode::Wrap => Some(rel.rem_euclid(kept)),
                        PadMode::Reflect if kept == 1 => Some(0),
                        PadMode::Reflect => {
                            let period = 2 * (kept - 1);
                            let m = rel.rem_euclid(period);
                            Some(if m < kept { m } else { period - m })
                        }
                    }
                };
                src.map(|s| (s + lo) as usize)
            })
            .collect();
        out_shape[ax] = out_dim as usize;
        maps.push((ax, map));
    }
    check_alloc(args, &out_shape)?;
    if maps.is_empty() {
        return Ok(x.clone());
    }
    dispatch!(x.dtype(), K => {
        let fill = match args.opt(2) {
            Some(v) => same_kind::<K>(args, v, "constant_value")?.iter().next().copied().unwrap_or_default(),
            None => Default::default(),
        };
        let a = standard(array::<K>(x));
        let mut shape = x.shape().to_vec();
        let mut data = elems(&a).to_vec();
        for (ax, map) in &maps {
            data = take_axis(&data, &shape, *ax, map, fill);
            shape[*ax] = map.len();
        }
        Ok(from_vec::<K>(&shape, data))
    })
}
