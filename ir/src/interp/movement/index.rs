//! Ops driven by index tensors: Gather, GatherElements, GatherND,
//! ScatterND, OneHot, NonZero.

use super::{array, check_alloc, elems, from_vec, prod, same_kind, standard, take_axis, Inputs, Kind};
use crate::tensor::{Element, Tensor};

/// Index values as `i64`; the index inputs of these ops are int32 or int64.
fn index_values(args: &Inputs, t: &Tensor, name: &str) -> Result<Vec<i64>, String> {
    args.int_values(t, name)
}

/// Resolves a possibly negative index against a dimension of size `dim`.
fn resolve(i: i64, dim: usize) -> Option<usize> {
    let j = if i < 0 { i as i128 + dim as i128 } else { i as i128 };
    (0..dim as i128).contains(&j).then_some(j as usize)
}

/// Row-major strides of `shape`, in elements.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

pub(super) fn gather(args: &Inputs, axis: i64) -> Result<Tensor, String> {
    let data = args.get(0, "data")?;
    let indices = args.get(1, "indices")?;
    let ax = args.axis(axis, data.shape().len())?;
    let dim = data.shape()[ax];
    let map = index_values(args, indices, "indices")?
        .into_iter()
        .map(|i| {
            resolve(i, dim)
                .map(Some)
                .ok_or_else(|| args.err(format_args!("index {i} is out of range for axis {ax} of size {dim}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let shape = data.shape();
    let out: Vec<usize> = shape[..ax].iter().chain(indices.shape()).chain(&shape[ax + 1..]).copied().collect();
    check_alloc(args, &out)?;
    Ok(dispatch!(data.dtype(), K => {
        let a = standard(array::<K>(data));
        from_vec::<K>(&out, take_axis(elems(&a), shape, ax, &map, Default::default()))
    }))
}

pub(super) fn gather_elements(args: &Inputs, axis: i64) -> Result<Tensor, String> {
    let data = args.get(0, "data")?;
    let indices = args.get(1, "indices")?;
    let rank = data.shape().len();
    let ax = args.axis(axis, rank)?;
    let (dshape, ishape) = (data.shape(), indices.shape());
    if ishape.len() != rank {
        return Err(args.err(format_args!("`indices` has rank {} but `data` has rank {rank}", ishape.len())));
    }
    if let Some(d) = (0..rank).find(|&d| d != ax && ishape[d] > dshape[d]) {
        return Err(args.err(format_args!("`indices` shape {ishape:?} exceeds `data` shape {dshape:?} on axis {d}")));
    }
    let idx = index_values(args, indices, "indices")?;
    let dstrides = strides(dshape);
    // Walk the index tensor in row-major order with an odometer, keeping the
    // data offset of the non-axis coordinates up to date.
    let mut offsets = Vec::with_capacity(idx.len());
    let mut coord = vec![0usize; rank];
    let mut base = 0usize;
    for &i in &idx {
        let j = resolve(i, dshape[ax])
            .ok_or_else(|| args.err(format_args!("index {i} is out of range for axis {ax} of size {}", dshape[ax])))?;
        offsets.push(base + j * dstrides[ax]);
        for d in (0..rank).rev() {
            coord[d] += 1;
            if d != ax {
                base += dstrides[d];
            }
            if coord[d] < ishape[d] {
                break;
            }
            if d != ax {
                base -= coord[d] * dstrides[d];
            }
            coord[d] = 0;
        }
    }
    Ok(dispatch!(data.dtype(), K => {
        let a = standard(array::<K>(data));
        let src = elems(&a);
        from_vec::<K>(ishape, offsets.iter().map(|&o| src[o]).collect())
    }))
}

/// The layout shared by GatherND and ScatterND: index tuples of length
/// `k` address slices of `slice` elements.
struct TupleIndex {
    /// Data offset (in elements) of the slice each tuple selects, per tuple.
    offsets: Vec<usize>,
    /// Elements per addressed slice.
    slice: usize,
}

/// Resolves the index tuples of `indices` (last axis `k`) against `dshape`,
/// with `batch` leading batch dimensions shared by data and indices.
fn tuple_offsets(args: &Inputs, dshape: &[usize], indices: &Tensor, batch: usize) -> Result<TupleIndex, String> {
    let ishape = indices.shape();
    let k = *ishape.last().ok_or_else(|| args.err("`indices` must have rank 1 or more"))?;
    if batch + k > dshape.len() {
        return Err(args.err(format_args!(
            "index tuples of length {k} (after {batch} batch dimensions) exceed the rank {} of `data`",
            dshape.len()
        )));
    }
    let idx = index_values(args, indices, "indices")?;
    let dstrides = strides(dshape);
    let batch_block = prod(&dshape[batch..]);
    let tuples_per_batch = prod(&ishape[batch..ishape.len() - 1]);
    let count = prod(&ishape[..ishape.len() - 1]);
    let mut offsets = Vec::with_capacity(count);
    for t in 0..count {
        let mut off = (t / tuples_per_batch.max(1)) * batch_block;
        for (j, &i) in idx[t * k..(t + 1) * k].iter().enumerate() {
            let dim = dshape[batch + j];
            let r = resolve(i, dim).ok_or_else(|| {
                args.err(format_args!("index {i} is out of range for axis {} of size {dim}", batch + j))
            })?;
            off += r * dstrides[batch + j];
        }
        offsets.push(off);
    }
    Ok(TupleIndex { offsets, slice: prod(&dshape[batch + k..]) })
}

pub(super) fn gather_nd(args: &Inputs, batch_dims: i64) -> Result<Tensor, String> {
    let data = args.get(0, "data")?;
    let indices = args.get(1, "indices")?;
    let (dshape, ishape) = (data.shape(), indices.shape());
    let b = usize::try_from(batch_dims).ok().filter(|&b| b < dshape.len().min(ishape.len())).ok_or_else(|| {
        args.err(format_args!("batch_dims {batch_dims} must be in [0, min(rank of data, rank of indices) - 1]"))
    })?;
    if dshape[..b] != ishape[..b] {
        return Err(
            args.err(format_args!("the first {b} dimensions of `data` {dshape:?} and `indices` {ishape:?} must match"))
        );
    }
    let tuples = tuple_offsets(args, dshape, indices, b)?;
    let k = ishape[ishape.len() - 1];
    let out: Vec<usize> = ishape[..ishape.len() - 1].iter().chain(&dshape[b + k..]).copied().collect();
    check_alloc(args, &out)?;
    Ok(dispatch!(data.dtype(), K => {
        let a = standard(array::<K>(data));
        let src = elems(&a);
        let mut v = Vec::with_capacity(prod(&out));
        for &o in &tuples.offsets {
            v.extend_from_slice(&src[o..o + tuples.slice]);
        }
        from_vec::<K>(&out, v)
    }))
}

/// How ScatterND combines an update with the existing value.
#[derive(Clone, Copy)]
enum Reduction {
    None,
    Add,
    Mul,
    Max,
    Min,
}

pub(super) fn scatter_nd(args: &Inputs, reduction: &str) -> Result<Tensor, String> {
    let reduction = match reduction {
        "none" => Reduction::None,
        "add" => Reduction::Add,
        "mul" => Reduction::Mul,
        "max" => Reduction::Max,
        "min" => Reduction::Min,
        r => return Err(args.err(format_args!("unknown reduction `{r}` (expected none, add, mul, max or min)"))),
    };
    let data = args.get(0, "data")?;
    let indices = args.get(1, "indices")?;
    let updates = args.get(2, "updates")?;
    if updates.dtype() != data.dtype() {
        return Err(args.err(format_args!("`updates` has type {}, `data` has {}", updates.dtype(), data.dtype())));
    }
    let (dshape, ishape) = (data.shape(), indices.shape());
    let tuples = tuple_offsets(args, dshape, indices, 0)?;
    let k = ishape[ishape.len() - 1];
    let expect: Vec<usize> = ishape[..ishape.len() - 1].iter().chain(&dshape[k..]).copied().collect();
    if updates.shape() != expect.as_slice() {
        return Err(args.err(format_args!(
            "`updates` has shape {:?}, expected {expect:?} (indices {ishape:?}, data {dshape:?})",
            updates.shape()
        )));
    }
    dispatch!(data.dtype(), K => scatter_typed::<K>(args, data, updates, &tuples, reduction))
}

fn scatter_typed<K: Kind>(
    args: &Inputs,
    data: &Tensor,
    updates: &Tensor,
    tuples: &TupleIndex,
    reduction: Reduction,
) -> Result<Tensor, String> {
    let a = standard(array::<K>(data));
    let mut out = elems(&a).to_vec();
    let u = standard(same_kind::<K>(args, updates, "updates")?);
    let upd = elems(&u);
    let float = K::DTYPE.is_float();
    // Floats combine in f64 (exact for add and mul of two narrower floats
    // before the single rounding back); integers and booleans in i64, which
    // then wraps like the narrower type.
    let combine = |old: K::E, new: K::E| -> K::E {
        if float {
            let (x, y) = (old.to_f64(), new.to_f64());
            K::cast_f64(match reduction {
                Reduction::None => y,
                Reduction::Add => x + y,
                Reduction::Mul => x * y,
                Reduction::Max if x.is_nan() || y.is_nan() => f64::NAN,
                Reduction::Max => x.max(y),
                Reduction::Min if x.is_nan() || y.is_nan() => f64::NAN,
                Reduction::Min => x.min(y),
            })
        } else {
            let (x, y) = (old.to_i64(), new.to_i64());
            K::cast_i64(match reduction {
                Reduction::None => y,
                Reduction::Add => x.wrapping_add(y),
                Reduction::Mul => x.wrapping_mul(y),
                Reduction::Max => x.max(y),
                Reduction::Min => x.min(y),
            })
        }
    };
    for (t, &o) in tuples.offsets.iter().enumerate() {
        let src = &upd[t * tuples.slice..(t + 1) * tuples.slice];
        for (dst, &new) in out[o..o + tuples.slice].iter_mut().zip(src) {
            *dst = combine(*dst, new);
        }
    }
    Ok(from_vec::<K>(data.shape(), out))
}

pub(super) fn one_hot(args: &Inputs, axis: i64) -> Result<Tensor, String> {
    let indices = args.get(0, "indices")?;
    let depth_t = args.get(1, "depth")?;
    let values = args.get(2, "values")?;
    if indices.dtype() == crate::dtype::DType::Bool {
        return Err(args.err("`indices` must be numeric, found bool"));
    }
    let depth_f = args.one_f64(depth_t, "depth")?;
    if depth_f.is_nan() || depth_f < 0.0 || depth_f > isize::MAX as f64 {
        return Err(args.err(format_args!("`depth` must be a non-negative count, found {depth_f}")));
    }
    let depth = depth_f as usize;
    if values.len() != 2 {
        return Err(
            args.err(format_args!("`values` must hold [off_value, on_value], found shape {:?}", values.shape()))
        );
    }
    let ishape = indices.shape();
    let ax = args.axis(axis, ishape.len() + 1)?;
    let out: Vec<usize> = ishape[..ax].iter().chain(&[depth]).chain(&ishape[ax..]).copied().collect();
    check_alloc(args, &out)?;
    // Indices in [-depth, -1] count from the end; any other out-of-range
    // index selects no class, so its row is all off_value.
    let idx: Vec<Option<usize>> = indices.to_i64s().into_iter().map(|i| resolve(i, depth)).collect();
    let outer = prod(&ishape[..ax]);
    let inner = prod(&ishape[ax..]);
    Ok(dispatch!(values.dtype(), K => {
        let v = array::<K>(values);
        let mut it = v.iter();
        let off = *it.next().expect("two values");
        let on = *it.next().expect("two values");
        let mut data = Vec::with_capacity(prod(&out));
        for o in 0..outer {
            for d in 0..depth {
                data.extend(idx[o * inner..(o + 1) * inner].iter().map(|&i| if i == Some(d) { on } else { off }));
            }
        }
        from_vec::<K>(&out, data)
    }))
}

pub(super) fn non_zero(args: &Inputs) -> Result<Tensor, String> {
    let x = args.get(0, "X")?;
    // A scalar counts as a one-element vector, as numpy and onnxruntime do.
    let shape: Vec<usize> = if x.shape().is_empty() { vec![1] } else { x.shape().to_vec() };
    let rank = shape.len();
    let st = strides(&shape);
    let hits: Vec<usize> = dispatch!(x.dtype(), K => {
        let a = standard(array::<K>(x));
        elems(&a).iter().enumerate().filter(|(_, v)| v.to_f64() != 0.0).map(|(p, _)| p).collect()
    });
    let n = hits.len();
    let mut coords = vec![0i64; rank * n];
    for (c, &p) in hits.iter().enumerate() {
        for d in 0..rank {
            coords[d * n + c] = ((p / st[d]) % shape[d]) as i64;
        }
    }
    Ok(from_vec::<super::kinds::I64>(&[rank, n], coords))
}
