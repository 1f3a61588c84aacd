//! Kernels for data movement, shape ops, casts and tensor generators.
//!
//! Most of these ops only rearrange elements, so they are written once over
//! a [`Kind`] (the element type plus the `Tensor` variant that holds it) and
//! instantiated for every dtype by [`dispatch!`]. Copies go through
//! contiguous row-major slices (`outer × axis × inner` blocks) rather than
//! per-element multi-dimensional indexing, which keeps embedding lookups and
//! head transposes of GPT-2-sized graphs fast.
//!
//! Every kernel returns `Err` with a message that starts with the op name
//! and names the offending input; none panics on bad data.

use super::util;
use crate::dtype::DType;
use crate::op::Op;
use crate::tensor::{Element, Tensor};
use ndarray::{ArcArray, ArrayD, CowArray, IxDyn};
use std::fmt::Display;

/// Runs `$body` with the type alias `$K` bound to the [`Kind`] of `$dtype`.
macro_rules! dispatch {
    ($dtype:expr, $K:ident => $body:expr) => {
        match $dtype {
            $crate::dtype::DType::F32 => {
                type $K = $crate::interp::movement::kinds::F32;
                $body
            }
            $crate::dtype::DType::F64 => {
                type $K = $crate::interp::movement::kinds::F64;
                $body
            }
            $crate::dtype::DType::F16 => {
                type $K = $crate::interp::movement::kinds::F16;
                $body
            }
            $crate::dtype::DType::BF16 => {
                type $K = $crate::interp::movement::kinds::BF16;
                $body
            }
            $crate::dtype::DType::I8 => {
                type $K = $crate::interp::movement::kinds::I8;
                $body
            }
            $crate::dtype::DType::U8 => {
                type $K = $crate::interp::movement::kinds::U8;
                $body
            }
            $crate::dtype::DType::I16 => {
                type $K = $crate::interp::movement::kinds::I16;
                $body
            }
            $crate::dtype::DType::I32 => {
                type $K = $crate::interp::movement::kinds::I32;
                $body
            }
            $crate::dtype::DType::I64 => {
                type $K = $crate::interp::movement::kinds::I64;
                $body
            }
            $crate::dtype::DType::Bool => {
                type $K = $crate::interp::movement::kinds::Bool;
                $body
            }
            $crate::dtype::DType::I4 => {
                type $K = $crate::interp::movement::kinds::I4;
                $body
            }
            $crate::dtype::DType::U4 => {
                type $K = $crate::interp::movement::kinds::U4;
                $body
            }
        }
    };
}

/// [`dispatch!`] for the other kernel modules of the interpreter.
pub(in crate::interp) use dispatch as dispatch_kind;

pub(in crate::interp) mod cast;
mod generate;
mod index;
mod join;
mod shape;

/// Evaluates one data-movement, shape, cast or generator op.
pub(crate) fn eval(op: &Op, inputs: &[Option<Tensor>], num_outputs: usize) -> Result<Vec<Option<Tensor>>, String> {
    let args = Inputs::new(op.name(), inputs);
    let one = |t: Tensor| Ok(vec![Some(t)]);
    match op {
        Op::Transpose { perm } => one(shape::transpose(&args, perm.as_deref())?),
        Op::Reshape { allowzero } => one(shape::reshape(&args, *allowzero)?),
        Op::Flatten { axis } => one(shape::flatten(&args, *axis)?),
        Op::Squeeze => one(shape::squeeze(&args)?),
        Op::Unsqueeze => one(shape::unsqueeze(&args)?),
        Op::Expand => one(shape::expand(&args)?),
        Op::Tile => one(shape::tile(&args)?),
        Op::Shape { start, end } => one(shape::shape_of(&args, *start, *end)?),
        Op::Size => one(shape::size(&args)?),
        Op::Identity => one(args.get(0, "input")?.clone()),
        Op::Concat { axis } => one(join::concat(&args, *axis)?),
        Op::Split { axis, num_outputs: parts } => {
            Ok(join::split(&args, *axis, *parts, num_outputs)?.into_iter().map(Some).collect())
        }
        Op::Slice => one(join::slice(&args)?),
        Op::Pad { mode } => one(join::pad(&args, mode)?),
        Op::Gather { axis } => one(index::gather(&args, *axis)?),
        Op::GatherElements { axis } => one(index::gather_elements(&args, *axis)?),
        Op::GatherND { batch_dims } => one(index::gather_nd(&args, *batch_dims)?),
        Op::ScatterND { reduction } => one(index::scatter_nd(&args, reduction)?),
        Op::OneHot { axis } => one(index::one_hot(&args, *axis)?),
        Op::NonZero => one(index::non_zero(&args)?),
        Op::Cast { to, .. } => one(cast::cast_op(&args, *to)?),
        Op::CastLike { .. } => {
            let target = args.get(1, "target_type")?.dtype();
            one(cast::cast_op(&args, target)?)
        }
        Op::ConstantOfShape { value } => one(generate::constant_of_shape(&args, value.as_ref())?),
        Op::Range => one(generate::range(&args)?),
        Op::Trilu { upper } => one(generate::trilu(&args, *upper)?),
        Op::Constant { value } => one(value.clone()),
        Op::Dropout { .. } => generate::dropout(&args, num_outputs),
        _ => Err(format!("{} is not a data-movement op", op.name())),
    }
}

/// The inputs of one op evaluation, with the op name for error messages.
pub(in crate::interp) struct Inputs<'a> {
    op: &'static str,
    items: &'a [Option<Tensor>],
}

impl<'a> Inputs<'a> {
    /// Wraps the inputs of an op named `op`.
    pub(in crate::interp) fn new(op: &'static str, items: &'a [Option<Tensor>]) -> Inputs<'a> {
        Inputs { op, items }
    }

    /// How many input slots there are, omitted ones included.
    pub(in crate::interp) fn len(&self) -> usize {
        self.items.len()
    }

    /// An error message prefixed with the op name.
    pub(in crate::interp) fn err(&self, msg: impl Display) -> String {
        format!("{}: {msg}", self.op)
    }

    /// A required input.
    pub(in crate::interp) fn get(&self, i: usize, name: &str) -> Result<&'a Tensor, String> {
        self.opt(i).ok_or_else(|| self.err(format_args!("input {i} (`{name}`) is required but missing")))
    }

    /// An optional input; `None` when omitted or beyond the given inputs.
    pub(in crate::interp) fn opt(&self, i: usize) -> Option<&'a Tensor> {
        self.items.get(i).and_then(Option::as_ref)
    }

    /// The elements of an integer input as `i64`.
    pub(in crate::interp) fn ints(&self, i: usize, name: &str) -> Result<Vec<i64>, String> {
        let t = self.get(i, name)?;
        self.int_values(t, name)
    }

    /// The elements of an optional integer input.
    pub(in crate::interp) fn opt_ints(&self, i: usize, name: &str) -> Result<Option<Vec<i64>>, String> {
        self.opt(i).map(|t| self.int_values(t, name)).transpose()
    }

    /// The elements of `t`, which must have an integer dtype.
    pub(in crate::interp) fn int_values(&self, t: &Tensor, name: &str) -> Result<Vec<i64>, String> {
        if !t.dtype().is_integer() {
            return Err(self.err(format_args!("input `{name}` must have an integer type, found {}", t.dtype())));
        }
        Ok(t.to_i64s())
    }

    /// The single integer held by a scalar or one-element input.
    pub(in crate::interp) fn one_int(&self, t: &Tensor, name: &str) -> Result<i64, String> {
        let v = self.int_values(t, name)?;
        match v.as_slice() {
            [x] => Ok(*x),
            _ => Err(self.err(format_args!("input `{name}` must hold exactly one value, found shape {:?}", t.shape()))),
        }
    }

    /// The single value held by a scalar or one-element input, as `f64`.
    pub(in crate::interp) fn one_f64(&self, t: &Tensor, name: &str) -> Result<f64, String> {
        if t.len() != 1 {
            return Err(
                self.err(format_args!("input `{name}` must hold exactly one value, found shape {:?}", t.shape()))
            );
        }
        Ok(t.to_f64s()[0])
    }

    /// Normalizes an axis in `[-rank, rank - 1]` to `[0, rank)`.
    pub(in crate::interp) fn axis(&self, axis: i64, rank: usize) -> Result<usize, String> {
        util::normalize_axis(axis, rank).map_err(|e| self.err(e))
    }
}

/// Normalizes and checks a list of axes for a tensor of rank `rank`.
pub(in crate::interp) fn axes_list(args: &Inputs, axes: &[i64], rank: usize) -> Result<Vec<usize>, String> {
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        let n = args.axis(a, rank)?;
        if out.contains(&n) {
            return Err(args.err(format_args!("axis {a} appears more than once in `axes` {axes:?}")));
        }
        out.push(n);
    }
    Ok(out)
}

/// The element count of `shape`, or `None` when it overflows the address
/// space (a shape no buffer could hold).
pub(in crate::interp) fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).filter(|&n| n <= isize::MAX as usize / 16)
}

/// Converts a dimension read from a shape input into `usize`, rejecting
/// negative values.
pub(in crate::interp) fn dim_from_i64(args: &Inputs, v: i64, what: &str) -> Result<usize, String> {
    usize::try_from(v).map_err(|_| args.err(format_args!("{what} must not be negative, found {v}")))
}

/// Checks that an output of `shape` is addressable before allocating it.
pub(in crate::interp) fn check_alloc(args: &Inputs, shape: &[usize]) -> Result<usize, String> {
    checked_numel(shape).ok_or_else(|| args.err(format_args!("output shape {shape:?} is too large to allocate")))
}

/// An element type together with the `Tensor` variant that stores it. The
/// 4-bit types share their storage types with `I8`/`U8` but are distinct
/// variants, hence a marker type per dtype rather than a trait on the
/// element type.
pub(in crate::interp) trait Kind {
    /// The stored element type.
    type E: Element;
    /// The dtype.
    const DTYPE: DType;
    /// The array inside `t` when `t` is of this kind.
    fn get(t: &Tensor) -> Option<&ArcArray<Self::E, IxDyn>>;
    /// Wraps an array as a tensor of this kind.
    fn wrap(a: ArcArray<Self::E, IxDyn>) -> Tensor;
    /// Converts a value of a floating-point source the way ONNX `Cast`
    /// does (see [`cast`]).
    fn cast_f64(v: f64) -> Self::E;
    /// Converts a value of an integer or boolean source the way ONNX `Cast`
    /// does (see [`cast`]).
    fn cast_i64(v: i64) -> Self::E;
}

/// The marker types, one per dtype.
pub(in crate::interp) mod kinds {
    use super::cast::{f64_to_bf16, f64_to_f16, wrap_i4, wrap_u4};
    use crate::tensor::i64_to_f32_odd;
    use super::Kind;
    use crate::dtype::DType;
    use crate::tensor::Tensor;
    use half::{bf16, f16};
    use ndarray::{ArcArray, IxDyn};

    macro_rules! kind {
        ($($K:ident => $V:ident, $T:ty, $from_f64:expr, $from_i64:expr;)*) => {$(
            #[doc = concat!("The `", stringify!($V), "` kind.")]
            pub(in crate::interp) struct $K;
            impl Kind for $K {
                type E = $T;
                const DTYPE: DType = DType::$V;
                fn get(t: &Tensor) -> Option<&ArcArray<$T, IxDyn>> {
                    match t {
                        Tensor::$V(a) => Some(a),
                        _ => None,
                    }
                }
                fn wrap(a: ArcArray<$T, IxDyn>) -> Tensor {
                    Tensor::$V(a)
                }
                fn cast_f64(v: f64) -> $T {
                    ($from_f64)(v)
                }
                fn cast_i64(v: i64) -> $T {
                    ($from_i64)(v)
                }
            }
        )*};
    }

    // Float-to-integer conversions truncate toward zero; Rust's `as`
    // saturates out-of-range values and maps NaN to 0, which is what kiln
    // chooses where ONNX leaves the result undefined. Integer-to-integer
    // conversions wrap (two's complement), as ONNX specifies.
    kind! {
        F32 => F32, f32, |v: f64| v as f32, |v: i64| v as f32;
        F64 => F64, f64, |v: f64| v, |v: i64| v as f64;
        F16 => F16, f16, f64_to_f16, |v: i64| f16::from_f32(i64_to_f32_odd(v));
        BF16 => BF16, bf16, f64_to_bf16, |v: i64| bf16::from_f32(i64_to_f32_odd(v));
        I8 => I8, i8, |v: f64| v as i8, |v: i64| v as i8;
        U8 => U8, u8, |v: f64| v as u8, |v: i64| v as u8;
        I16 => I16, i16, |v: f64| v as i16, |v: i64| v as i16;
        I32 => I32, i32, |v: f64| v as i32, |v: i64| v as i32;
        I64 => I64, i64, |v: f64| v as i64, |v: i64| v;
        Bool => Bool, bool, |v: f64| v != 0.0, |v: i64| v != 0;
        I4 => I4, i8, |v: f64| wrap_i4(v as i64), wrap_i4;
        U4 => U4, u8, |v: f64| wrap_u4(v as i64), wrap_u4;
    }
}

/// The array of `t`, which the caller dispatched on.
pub(in crate::interp) fn array<K: Kind>(t: &Tensor) -> &ArcArray<K::E, IxDyn> {
    K::get(t).expect("dispatched on this tensor's own dtype")
}

/// The array of `t` when it has kind `K`; an error naming `name` otherwise.
pub(in crate::interp) fn same_kind<'t, K: Kind>(
    args: &Inputs,
    t: &'t Tensor,
    name: &str,
) -> Result<&'t ArcArray<K::E, IxDyn>, String> {
    K::get(t).ok_or_else(|| args.err(format_args!("input `{name}` has type {}, expected {}", t.dtype(), K::DTYPE)))
}

/// `a` in row-major layout, borrowed when it already is.
pub(in crate::interp) fn standard<T: Clone>(a: &ArcArray<T, IxDyn>) -> CowArray<'_, T, IxDyn> {
    a.as_standard_layout()
}

/// The row-major elements of a standard-layout array.
pub(in crate::interp) fn elems<'c, T>(a: &'c CowArray<'_, T, IxDyn>) -> &'c [T] {
    a.as_slice().expect("as_standard_layout gives a contiguous row-major array")
}

/// A tensor of kind `K` from row-major elements.
pub(in crate::interp) fn from_vec<K: Kind>(shape: &[usize], v: Vec<K::E>) -> Tensor {
    K::wrap(ArrayD::from_shape_vec(IxDyn(shape), v).expect("element count matches the computed shape").into_shared())
}

/// Reinterprets `t` with a new shape of the same element count, sharing
/// the buffer when `t` is already row-major.
pub(in crate::interp) fn reshaped(t: &Tensor, shape: &[usize]) -> Tensor {
    dispatch!(t.dtype(), K => {
        let a = array::<K>(t);
        let a = if a.is_standard_layout() { a.clone() } else { a.as_standard_layout().into_owned().into_shared() };
        K::wrap(a.into_shape_with_order(IxDyn(shape)).expect("reshape keeps the element count of a row-major array"))
    })
}

/// The product of `dims`, for the `outer × axis × inner` decompositions.
pub(in crate::interp) fn prod(dims: &[usize]) -> usize {
    dims.iter().product()
}

/// Picks blocks along `axis` of the row-major `data` of shape `shape`:
/// output position `j` on that axis takes input position `map[j]`, or is
/// filled with `fill` where `map[j]` is `None`.
pub(in crate::interp) fn take_axis<T: Copy>(
    data: &[T],
    shape: &[usize],
    axis: usize,
    map: &[Option<usize>],
    fill: T,
) -> Vec<T> {
    let outer = prod(&shape[..axis]);
    let dim = shape[axis];
    let inner = prod(&shape[axis + 1..]);
    let mut out = Vec::with_capacity(outer * map.len() * inner);
    for o in 0..outer {
        let base = o * dim * inner;
        for m in map {
            match m {
                Some(i) => out.extend_from_slice(&data[base + i * inner..base + (i + 1) * inner]),
                None => out.extend(std::iter::repeat_n(fill, inner)),
            }
        }
    }
    out
}
