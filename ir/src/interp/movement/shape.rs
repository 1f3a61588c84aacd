//! Ops that change a tensor's shape: Transpose, Reshape, Flatten, Squeeze,
//! Unsqueeze, Expand, Tile, and the shape queries Shape and Size.

use super::{array, axes_list, check_alloc, dim_from_i64, elems, from_vec, prod, reshaped, standard, Inputs, Kind};
use crate::tensor::Tensor;
use ndarray::IxDyn;

pub(super) fn transpose(args: &Inputs, perm: Option<&[i64]>) -> Result<Tensor, String> {
    let x = args.get(0, "data")?;
    let rank = x.shape().len();
    let perm: Vec<usize> = match perm {
        None => (0..rank).rev().collect(),
        Some(p) => {
            let mut seen = vec![false; rank];
            let valid = p.len() == rank
                && p.iter().all(|&a| {
                    let ok = usize::try_from(a).is_ok_and(|a| a < rank && !seen[a]);
                    if ok {
                        seen[a as usize] = true;
                    }
                    ok
                });
            if !valid {
                return Err(args.err(format_args!("perm {p:?} is not a permutation of the {rank} axes of `data`")));
            }
            p.iter().map(|&a| a as usize).collect()
        }
    };
    if perm.iter().enumerate().all(|(i, &a)| i == a) {
        return Ok(x.clone());
    }
    Ok(dispatch!(x.dtype(), K => {
        let a = array::<K>(x).view().permuted_axes(IxDyn(&perm));
        K::wrap(a.as_standard_layout().into_owned().into_shared())
    }))
}

pub(super) fn reshape(args: &Inputs, allowzero: bool) -> Result<Tensor, String> {
    let x = args.get(0, "data")?;
    let spec = args.ints(1, "shape")?;
    let in_shape = x.shape();
    let total = x.len();
    let fail = |why: &str| {
        args.err(format_args!("cannot reshape {total} elements of shape {in_shape:?} into {spec:?}: {why}"))
    };
    let mut out = Vec::with_capacity(spec.len());
    let mut infer_at = None;
    for (i, &d) in spec.iter().enumerate() {
        match d {
            -1 if infer_at.is_some() => return Err(fail("more than one -1")),
            -1 => {
                infer_at = Some(i);
                out.push(1);
            }
            0 if !allowzero => match in_shape.get(i) {
                Some(&copied) => out.push(copied),
                None => return Err(fail(&format!("0 at position {i} copies a dimension the input does not have"))),
            },
            d if d < 0 => return Err(fail(&format!("invalid dimension {d}"))),
            d => out.push(usize::try_from(d).map_err(|_| fail("dimension too large"))?),
        }
    }
    let known = super::checked_numel(&out).ok_or_else(|| fail("the shape is too large"))?;
    if let Some(i) = infer_at {
        if known == 0 || total % known != 0 {
            return Err(fail("the -1 dimension cannot be inferred"));
        }
        out[i] = total / known;
    } else if known != total {
        return Err(fail("element counts differ"));
    }
    Ok(reshaped(x, &out))
}

pub(super) fn flatten(args: &Inputs, axis: i64) -> Result<Tensor, String> {
    let x = args.get(0, "input")?;
    let rank = x.shape().len();
    // Flatten accepts axis == rank (everything in the first dimension).
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    if !(0..=rank as i64).contains(&a) {
        return Err(args.err(format_args!("axis {axis} is out of range for rank {rank} (accepted: [-{rank}, {rank}])")));
    }
    let (head, tail) = x.shape().split_at(a as usize);
    let shape = [prod(head), prod(tail)];
    Ok(reshaped(x, &shape))
}

pub(super) fn squeeze(args: &Inputs) -> Result<Tensor, String> {
    let x = args.get(0, "data")?;
    let shape = x.shape();
    let drop: Vec<usize> = match args.opt_ints(1, "axes")? {
        None => (0..shape.len()).filter(|&i| shape[i] == 1).collect(),
        Some(axes) => {
            let axes = axes_list(args, &axes, shape.len())?;
            if let Some(&bad) = axes.iter().find(|&&a| shape[a] != 1) {
                return Err(args.err(format_args!(
                    "cannot squeeze axis {bad} of `data` with shape {shape:?}: its size is {}, not 1",
                    shape[bad]
                )));
            }
            axes
        }
    };
    let out: Vec<usize> = (0..shape.len()).filter(|i| !drop.contains(i)).map(|i| shape[i]).collect();
    Ok(reshaped(x, &out))
}

pub(super) fn unsqueeze(args: &Inputs) -> Result<Tensor, String> {
    let x = args.get(0, "data")?;
    let axes = args.ints(1, "axes")?;
    let out_rank = x.shape().len() + axes.len();
    let axes = axes_list(args, &axes, out_rank)?;
    let mut rest = x.shape().iter();
    let out: Vec<usize> =
        (0..out_rank).map(|i| if axes.contains(&i) { 1 } else { *rest.next().expect("rank adds up") }).collect();
    Ok(reshaped(x, &out))
}

pub(super) fn expand(args: &Inputs) -> Result<Tensor, String> {
    let x = args.get(0, "input")?;
    let spec = args.ints(1, "shape")?;
    let target =
        spec.iter().map(|&d| dim_from_i64(args, d, "a dimension of `shape`")).collect::<Result<Vec<_>, _>>()?;
    let out = super::util::broadcast_shapes(&[x.shape(), &target]).map_err(|_| {
        args.err(format_args!("`input` of shape {:?} cannot be broadcast with `shape` {spec:?}", x.shape()))
    })?;
    check_alloc(args, &out)?;
    if out == x.shape() {
        return Ok(x.clone());
    }
    Ok(dispatch!(x.dtype(), K => {
        let view = array::<K>(x).broadcast(IxDyn(&out)).expect("broadcast_shapes checked compatibility");
        K::wrap(view.as_standard_layout().into_owned().into_shared())
    }))
}

pub(super) fn tile(args: &Inputs) -> Result<Tensor, String> {
    let x = args.get(0, "input")?;
    let repeats = args.ints(1, "repeats")?;
    let shape = x.shape().to_vec();
    if repeats.len() != shape.len() {
        return Err(args.err(format_args!(
            "`repeats` has {} values but `input` has rank {}",
            repeats.len(),
            shape.len()
        )));
    }
    let reps = repeats.iter().map(|&r| dim_from_i64(args, r, "a value of `repeats`")).collect::<Result<Vec<_>, _>>()?;
    let out: Vec<usize> = shape.iter().zip(&reps).map(|(d, r)| d.saturating_mul(*r)).collect();
    check_alloc(args, &out)?;
    Ok(dispatch!(x.dtype(), K => tile_typed::<K>(x, &reps)))
}

/// Tiles one axis at a time from the last: each step repeats the blocks of
/// `dim × inner` elements under every outer index.
fn tile_typed<K: Kind>(x: &Tensor, reps: &[usize]) -> Tensor {
    let a = standard(array::<K>(x));
    let mut data: Vec<K::E> = elems(&a).to_vec();
    let mut shape = x.shape().to_vec();
    for axis in (0..shape.len()).rev() {
        if reps[axis] == 1 {
            continue;
        }
        let block = shape[axis] * prod(&shape[axis + 1..]);
        let outer = prod(&shape[..axis]);
        let mut next = Vec::with_capacity(outer * block * reps[axis]);
        for o in 0..outer {
            let chunk = &data[o * block..(o + 1) * block];
            for _ in 0..reps[axis] {
                next.extend_from_slice(chunk);
            }
        }
        data = next;
        shape[axis] *= reps[axis];
    }
    from_vec::<K>(&shape, data)
}

pub(super) fn shape_of(args: &Inputs, start: i64, end: Option<i64>) -> Result<Tensor, String> {
    let x = args.get(0, "data")?;
    let rank = x.shape().len() as i64;
    let clamp = |v: i64| (if v < 0 { v + rank } else { v }).clamp(0, rank) as usize;
    let (s, e) = (clamp(start), clamp(end.unwrap_or(rank)));
    let dims: Vec<i64> = if s < e { x.shape()[s..e].iter().map(|&d| d as i64).collect() } else { Vec::new() };
    Ok(Tensor::vec_i64(&dims))
}

pub(super) fn size(args: &Inputs) -> Result<Tensor, String> {
    let x = args.get(0, "data")?;
    Ok(Tensor::scalar_i64(x.len() as i64))
}
