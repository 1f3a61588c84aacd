//! Ops that make new tensors: ConstantOfShape, Range, Trilu, Dropout.

use super::{array, check_alloc, dim_from_i64, elems, from_vec, prod, same_kind, standard, Inputs, Kind};
use crate::dtype::DType;
use crate::tensor::Tensor;
use ndarray::{ArrayD, IxDyn};

pub(super) fn constant_of_shape(args: &Inputs, value: Option<&Tensor>) -> Result<Tensor, String> {
    let dims = args.ints(0, "input")?;
    let shape = dims.iter().map(|&d| dim_from_i64(args, d, "a dimension of `input`")).collect::<Result<Vec<_>, _>>()?;
    check_alloc(args, &shape)?;
    let value = match value {
        Some(v) if v.len() != 1 => {
            return Err(
                args.err(format_args!("attribute `value` must hold exactly one element, found shape {:?}", v.shape()))
            )
        }
        Some(v) => v.clone(),
        None => Tensor::scalar_f32(0.0),
    };
    Ok(dispatch!(value.dtype(), K => {
        let v = *array::<K>(&value).iter().next().expect("checked one element");
        K::wrap(ArrayD::from_elem(IxDyn(&shape), v).into_shared())
    }))
}

pub(super) fn range(args: &Inputs) -> Result<Tensor, String> {
    let start = args.get(0, "start")?;
    let limit = args.get(1, "limit")?;
    let delta = args.get(2, "delta")?;
    let dtype = start.dtype();
    for (t, name) in [(limit, "limit"), (delta, "delta")] {
        if t.dtype() != dtype {
            return Err(args.err(format_args!("`{name}` has type {}, `start` has {dtype}", t.dtype())));
        }
    }
    if !matches!(dtype, DType::F32 | DType::F64 | DType::F16 | DType::BF16 | DType::I16 | DType::I32 | DType::I64) {
        return Err(args.err(format_args!(
            "type {dtype} is not supported (float, double, float16, bfloat16, int16, int32, int64 are)"
        )));
    }
    if dtype.is_float() {
        let (s, l, d) = (args.one_f64(start, "start")?, args.one_f64(limit, "limit")?, args.one_f64(delta, "delta")?);
        if d == 0.0 {
            return Err(args.err("`delta` is 0"));
        }
        if !(s.is_finite() && l.is_finite() && d.is_finite()) {
            return Err(args.err(format_args!("start {s}, limit {l} and delta {d} must be finite")));
        }
        let count = ((l - s) / d).ceil().max(0.0);
        if count > isize::MAX as f64 {
            return Err(args.err(format_args!("start {s}, limit {l} and delta {d} give too many elements")));
        }
        let n = count as usize;
        check_alloc(args, &[n])?;
        // Each element is computed from the start rather than accumulated,
        // so rounding does not drift along the sequence.
        Ok(dispatch!(dtype, K => from_vec::<K>(&[n], (0..n).map(|i| K::cast_f64(s + i as f64 * d)).collect())))
    } else {
        let (s, l, d) = (args.one_int(start, "start")?, args.one_int(limit, "limit")?, args.one_int(delta, "delta")?);
        if d == 0 {
            return Err(args.err("`delta` is 0"));
        }
        let (s, l, d) = (s as i128, l as i128, d as i128);
        let count = if d > 0 && l > s {
            (l - s + d - 1) / d
        } else if d < 0 && l < s {
            (s - l - d - 1) / -d
        } else {
            0
        };
        let n = usize::try_from(count).map_err(|_| args.err("the range has too many elements"))?;
        check_alloc(args, &[n])?;
        // Every element lies between start and limit, so fits the type.
        Ok(
            dispatch!(dtype, K => from_vec::<K>(&[n], (0..n).map(|i| K::cast_i64((s + i as i128 * d) as i64)).collect())),
        )
    }
}

pub(super) fn trilu(args: &Inputs, upper: bool) -> Result<Tensor, String> {
    let x = args.get(0, "input")?;
    let k = match args.opt(1) {
        Some(t) => args.one_int(t, "k")?,
        None => 0,
    };
    let rank = x.shape().len();
    if rank < 2 {
        return Err(args.err(format_args!("`input` must have rank 2 or more, found shape {:?}", x.shape())));
    }
    let (rows, cols) = (x.shape()[rank - 2], x.shape()[rank - 1]);
    Ok(dispatch!(x.dtype(), K => {
        let a = standard(array::<K>(x));
        let mut data = elems(&a).to_vec();
        let k = k as i128;
        for (p, v) in data.iter_mut().enumerate() {
            let (i, j) = (((p / cols) % rows) as i128, (p % cols) as i128);
            let keep = if upper { j - i >= k } else { j - i <= k };
            if !keep {
                *v = Default::default();
            }
        }
        from_vec::<K>(x.shape(), data)
    }))
}

pub(super) fn dropout(args: &Inputs, num_outputs: usize) -> Result<Vec<Option<Tensor>>, String> {
    let x = args.get(0, "data")?;
    let ratio = match args.opt(1) {
        Some(t) => {
            if !t.dtype().is_float() {
                return Err(args.err(format_args!("`ratio` must be a float, found type {}", t.dtype())));
            }
            args.one_f64(t, "ratio")?
        }
        None => 0.5,
    };
    if !(0.0..1.0).contains(&ratio) {
        return Err(args.err(format_args!("`ratio` must be in [0, 1), found {ratio}")));
    }
    let training = match args.opt(2) {
        Some(t) => {
            same_kind::<super::kinds::Bool>(args, t, "training_mode")?;
            args.one_f64(t, "training_mode")? != 0.0
        }
        None => false,
    };
    if training && ratio > 0.0 {
        return Err(args.err(
            "training-mode dropout is not supported (the interpreter has no random generator); run in inference mode",
        ));
    }
    let mut out = vec![Some(x.clone())];
    if num_outputs >= 2 {
        let shape = x.shape();
        out.push(Some(from_vec::<super::kinds::Bool>(shape, vec![true; prod(shape)])));
    }
    Ok(out)
}
