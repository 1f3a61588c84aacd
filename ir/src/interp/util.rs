//! Helpers shared by the interpreter kernels: input access, axis
//! normalization, broadcasting, dtype dispatch, and computing f16/bf16 in
//! f32.
//!
//! Kernels are written once over small traits ([`TensorElem`], [`Num`],
//! [`Real`]) and dispatched on the tensor variant with the macros at the end
//! of this file. Half-precision inputs are widened to f32 for the
//! computation and the results rounded back ([`widen_half`], [`narrow_to`]),
//! which is what the ONNX reference does up to rounding.

use crate::dtype::DType;
use crate::tensor::{Element, Tensor};
use half::{bf16, f16};
use ndarray::{ArrayD, ArrayViewD, IxDyn, Zip};
use std::borrow::Cow;

/// A kernel's result. Errors are plain messages; [`super::run`] wraps them
/// with the node name and op.
pub(crate) type KResult<T> = Result<T, String>;

// ---------------------------------------------------------------- inputs

/// The input at `slot`, which the op requires; `what` names it in the error
/// (e.g. "X", "k").
pub(crate) fn required<'a>(inputs: &'a [Option<Tensor>], slot: usize, what: &str) -> KResult<&'a Tensor> {
    inputs.get(slot).and_then(Option::as_ref).ok_or_else(|| format!("required input {slot} ({what}) is missing"))
}

/// The optional input at `slot`: `None` when omitted or past the end.
pub(crate) fn optional(inputs: &[Option<Tensor>], slot: usize) -> Option<&Tensor> {
    inputs.get(slot).and_then(Option::as_ref)
}

/// The elements of an integer tensor (axes, k, shapes) as `i64`; an error
/// naming `what` for non-integer dtypes.
pub(crate) fn int_values(t: &Tensor, what: &str) -> KResult<Vec<i64>> {
    if t.dtype().is_integer() {
        Ok(t.to_i64s())
    } else {
        Err(format!("{what} must be an integer tensor, found {}", t.dtype()))
    }
}

/// The single element of a one-element integer tensor (a scalar or a 1-D
/// tensor of length 1, as ONNX allows for `k`, `axis` and the like).
pub(crate) fn int_scalar(t: &Tensor, what: &str) -> KResult<i64> {
    let v = int_values(t, what)?;
    match v.as_slice() {
        [x] => Ok(*x),
        _ => Err(format!("{what} must hold exactly one value, found shape {:?}", t.shape())),
    }
}

// ---------------------------------------------------------------- axes

/// Maps an ONNX axis in `[-rank, rank)` to `[0, rank)`.
pub(crate) fn normalize_axis(axis: i64, rank: usize) -> KResult<usize> {
    let r = rank as i64;
    if axis < -r || axis >= r {
        return Err(format!("axis {axis} is out of range for a tensor of rank {rank}"));
    }
    Ok(if axis < 0 { axis + r } else { axis } as usize)
}

/// Normalizes a list of axes, sorted ascending; repeated axes are an error.
pub(crate) fn normalize_axes(axes: &[i64], rank: usize) -> KResult<Vec<usize>> {
    let mut out = axes.iter().map(|&a| normalize_axis(a, rank)).collect::<KResult<Vec<_>>>()?;
    out.sort_unstable();
    if out.windows(2).any(|w| w[0] == w[1]) {
        return Err(format!("axes {axes:?} name an axis more than once"));
    }
    Ok(out)
}

// ---------------------------------------------------------------- broadcasting

/// The numpy broadcast of several shapes: right-aligned, each dim equal or 1.
pub(crate) fn broadcast_shapes(shapes: &[&[usize]]) -> KResult<Vec<usize>> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1usize; rank];
    for s in shapes {
        let offset = rank - s.len();
        for (i, &d) in s.iter().enumerate() {
            let o = &mut out[offset + i];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                return Err(format!("shapes {:?} cannot be broadcast together", shapes));
            }
        }
    }
    Ok(out)
}

/// A view of `a` broadcast to `shape`, or an error naming both shapes.
pub(crate) fn broadcast_to<'b, T>(a: &'b ArrayViewD<'_, T>, shape: &[usize]) -> KResult<ArrayViewD<'b, T>> {
    a.broadcast(IxDyn(shape)).ok_or_else(|| format!("shape {:?} cannot be broadcast to {:?}", a.shape(), shape))
}

/// Applies `f` to pairs of elements of `a` and `b` broadcast together.
pub(crate) fn broadcast_map2<A: Copy, B: Copy, R>(
    a: ArrayViewD<'_, A>,
    b: ArrayViewD<'_, B>,
    f: impl Fn(A, B) -> R,
) -> KResult<ArrayD<R>> {
    if a.shape() == b.shape() {
        return Ok(Zip::from(&a).and(&b).map_collect(|&x, &y| f(x, y)));
    }
    let shape = broadcast_shapes(&[a.shape(), b.shape()])?;
    let av = broadcast_to(&a, &shape)?;
    let bv = broadcast_to(&b, &shape)?;
    Ok(Zip::from(&av).and(&bv).map_collect(|&x, &y| f(x, y)))
}

/// Applies `f` to triples of elements of `a`, `b` and `c` broadcast together.
pub(crate) fn broadcast_map3<A: Copy, B: Copy, C: Copy, R>(
    a: ArrayViewD<'_, A>,
    b: ArrayViewD<'_, B>,
    c: ArrayViewD<'_, C>,
    f: impl Fn(A, B, C) -> R,
) -> KResult<ArrayD<R>> {
    let shape = broadcast_shapes(&[a.shape(), b.shape(), c.shape()])?;
    let av = broadcast_to(&a, &shape)?;
    let bv = broadcast_to(&b, &shape)?;
    let cv = broadcast_to(&c, &shape)?;
    Ok(Zip::from(&av).and(&bv).and(&cv).map_collect(|&x, &y, &z| f(x, y, z)))
}

// ---------------------------------------------------------------- lanes

/// Applies `f` to every lane of `a` along `axis` (each 1-D run of elements
/// that differ only in that coordinate), as a contiguous slice, writing
/// `out_len` results per lane. The result has `a`'s shape with `axis`
/// resized to `out_len`, in standard layout.
///
/// The axis is moved last and the data made contiguous once, so kernels
/// (softmax, cumsum, top-k, arg-reductions) work on plain slices; when
/// `axis` is already last and `a` contiguous nothing is copied.
pub(crate) fn map_lanes<T: Clone, U: Clone + Default>(
    a: ArrayViewD<'_, T>,
    axis: usize,
    out_len: usize,
    mut f: impl FnMut(&[T], &mut [U]) -> KResult<()>,
) -> KResult<ArrayD<U>> {
    let rank = a.ndim();
    let shape = a.shape().to_vec();
    let n = shape[axis];
    let mut perm: Vec<usize> = (0..rank).filter(|&i| i != axis).collect();
    perm.push(axis);
    let outer: usize = perm[..rank - 1].iter().map(|&p| shape[p]).product();
    let moved = a.permuted_axes(IxDyn(&perm));
    let contiguous = moved.as_standard_layout();
    let data = contiguous.as_slice().expect("a standard-layout array is one slice");
    let mut out = vec![U::default(); outer * out_len];
    for i in 0..outer {
        f(&data[i * n..(i + 1) * n], &mut out[i * out_len..(i + 1) * out_len])?;
    }
    let mut moved_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    moved_shape[rank - 1] = out_len;
    let result = ArrayD::from_shape_vec(IxDyn(&moved_shape), out).expect("lane results fill the shape");
    if axis == rank - 1 {
        return Ok(result);
    }
    let mut inverse = vec![0; rank];
    for (i, &p) in perm.iter().enumerate() {
        inverse[p] = i;
    }
    Ok(result.permuted_axes(IxDyn(&inverse)).as_standard_layout().into_owned())
}

// ---------------------------------------------------------------- tensors and arrays

/// An element type that is exactly one [`Tensor`] variant, so kernels can
/// read a typed view from a tensor and wrap a result array back into one.
/// `i8`/`u8` map to `I8`/`U8`, never to the 4-bit variants.
pub(crate) trait TensorElem: Element {
    /// The dtype of the variant holding `Self`.
    const DTYPE: DType;
    /// Wraps an array into its tensor variant.
    fn wrap(a: ArrayD<Self>) -> Tensor;
    /// A view of the tensor's elements if it holds this type.
    fn view(t: &Tensor) -> Option<ArrayViewD<'_, Self>>;
}

macro_rules! tensor_elem {
    ($($t:ty => $v:ident),* $(,)?) => {$(
        impl TensorElem for $t {
            const DTYPE: DType = DType::$v;
            fn wrap(a: ArrayD<Self>) -> Tensor {
                Tensor::$v(a.into_shared())
            }
            fn view(t: &Tensor) -> Option<ArrayViewD<'_, Self>> {
                match t {
                    Tensor::$v(a) => Some(a.view()),
                    _ => None,
                }
            }
        }
    )*};
}
tensor_elem!(f32 => F32, f64 => F64, f16 => F16, bf16 => BF16, i8 => I8, u8 => U8, i16 => I16, i32 => I32,
    i64 => I64, bool => Bool);

/// A typed view of `t`, or an error naming `what` and the dtype found.
pub(crate) fn typed_view<'a, T: TensorElem>(t: &'a Tensor, what: &str) -> KResult<ArrayViewD<'a, T>> {
    T::view(t).ok_or_else(|| format!("{what} must be {}, found {}", T::DTYPE, t.dtype()))
}

/// `t` with f16/bf16 widened to f32 (exactly); other dtypes borrowed as is.
pub(crate) fn widen_half(t: &Tensor) -> Cow<'_, Tensor> {
    match t.dtype() {
        DType::F16 | DType::BF16 => Cow::Owned(t.cast(DType::F32)),
        _ => Cow::Borrowed(t),
    }
}

/// Rounds an f32 result back to `dtype` when that is f16/bf16 (the inverse
/// of [`widen_half`]); any other combination is returned unchanged.
pub(crate) fn narrow_to(t: Tensor, dtype: DType) -> Tensor {
    match (&t, dtype) {
        (Tensor::F32(_), DType::F16 | DType::BF16) => t.cast(dtype),
        _ => t,
    }
}

/// Builds a tensor from an `ArcArray`-compatible owned array of any
/// [`TensorElem`] type.
pub(crate) fn wrap<T: TensorElem>(a: ArrayD<T>) -> Tensor {
    T::wrap(a)
}

// ---------------------------------------------------------------- numeric traits

/// Arithmetic every numeric element type supports, with the semantics ONNX
/// (numpy) gives it: integers wrap on overflow and divide truncating toward
/// zero; floats follow IEEE 754. `max`/`min` propagate NaN.
pub(crate) trait Num: TensorElem + PartialOrd + Copy + Send + Sync + 'static {
    /// True for f32/f64.
    const IS_FLOAT: bool;
    /// Additive identity.
    fn zero() -> Self;
    /// Multiplicative identity.
    fn one() -> Self;
    /// The identity of `max`: -inf for floats, the minimum for integers.
    fn lowest() -> Self;
    /// The identity of `min`: +inf for floats, the maximum for integers.
    fn highest() -> Self;
    /// Wrapping sum.
    fn add(self, o: Self) -> Self;
    /// Wrapping difference.
    fn sub(self, o: Self) -> Self;
    /// Wrapping product.
    fn mul(self, o: Self) -> Self;
    /// Quotient; `None` for an integer division by zero.
    fn div(self, o: Self) -> Option<Self>;
    /// True for NaN.
    fn is_nan(self) -> bool;
    /// The larger value, NaN if either is NaN.
    fn max_nan(self, o: Self) -> Self {
        if self.is_nan() || o.is_nan() {
            if self.is_nan() {
                self
            } else {
                o
            }
        } else if o > self {
            o
        } else {
            self
        }
    }
    /// The smaller value, NaN if either is NaN.
    fn min_nan(self, o: Self) -> Self {
        if self.is_nan() || o.is_nan() {
            if self.is_nan() {
                self
            } else {
                o
            }
        } else if o < self {
            o
        } else {
            self
        }
    }
}

macro_rules! int_num {
    ($($t:ty),*) => {$(
        impl Num for $t {
            const IS_FLOAT: bool = false;
            fn zero() -> Self { 0 }
            fn one() -> Self { 1 }
            fn lowest() -> Self { <$t>::MIN }
            fn highest() -> Self { <$t>::MAX }
            fn add(self, o: Self) -> Self { self.wrapping_add(o) }
            fn sub(self, o: Self) -> Self { self.wrapping_sub(o) }
            fn mul(self, o: Self) -> Self { self.wrapping_mul(o) }
            fn div(self, o: Self) -> Option<Self> { if o == 0 { None } else { Some(self.wrapping_div(o)) } }
            fn is_nan(self) -> bool { false }
        }
    )*};
}
int_num!(i8, u8, i16, i32, i64);

macro_rules! float_num {
    ($($t:ty),*) => {$(
        impl Num for $t {
            const IS_FLOAT: bool = true;
            fn zero() -> Self { 0.0 }
            fn one() -> Self { 1.0 }
            fn lowest() -> Self { <$t>::NEG_INFINITY }
            fn highest() -> Self { <$t>::INFINITY }
            fn add(self, o: Self) -> Self { self + o }
            fn sub(self, o: Self) -> Self { self - o }
            fn mul(self, o: Self) -> Self { self * o }
            fn div(self, o: Self) -> Option<Self> { Some(self / o) }
            fn is_nan(self) -> bool { <$t>::is_nan(self) }
        }
    )*};
}
float_num!(f32, f64);

/// The floating-point compute types f32 and f64, for kernels that run
/// ndarray's float routines (`general_mat_mul`) in the element type.
pub(crate) trait Real:
    Num
    + num_traits::Float
    + ndarray::LinalgScalar
    + ndarray::ScalarOperand
    + std::iter::Sum
    + std::ops::AddAssign
    + std::fmt::Display
{
    /// The constant `v` in this type.
    fn c(v: f64) -> Self;
}

impl Real for f32 {
    fn c(v: f64) -> Self {
        v as f32
    }
}

impl Real for f64 {
    fn c(v: f64) -> Self {
        v
    }
}

// ---------------------------------------------------------------- dispatch macros

/// Matches a tensor of a plain numeric dtype (f32, f64, i8, u8, i16, i32,
/// i64), binding `$a` to its `ArcArray`; any other dtype evaluates `$else`.
/// Widen f16/bf16 with [`widen_half`] first.
macro_rules! match_numeric {
    ($t:expr, $a:ident => $body:expr, else $else:expr) => {
        match $t {
            $crate::tensor::Tensor::F32($a) => $body,
            $crate::tensor::Tensor::F64($a) => $body,
            $crate::tensor::Tensor::I8($a) => $body,
            $crate::tensor::Tensor::U8($a) => $body,
            $crate::tensor::Tensor::I16($a) => $body,
            $crate::tensor::Tensor::I32($a) => $body,
            $crate::tensor::Tensor::I64($a) => $body,
            #[allow(unreachable_patterns)]
            _ => $else,
        }
    };
}
pub(crate) use match_numeric;

/// Matches two tensors of the same plain numeric dtype, binding `$a` and
/// `$b`; mixed or other dtypes evaluate `$else`.
macro_rules! match_numeric2 {
    ($x:expr, $y:expr, $a:ident, $b:ident => $body:expr, else $else:expr) => {
        match ($x, $y) {
            ($crate::tensor::Tensor::F32($a), $crate::tensor::Tensor::F32($b)) => $body,
            ($crate::tensor::Tensor::F64($a), $crate::tensor::Tensor::F64($b)) => $body,
            ($crate::tensor::Tensor::I8($a), $crate::tensor::Tensor::I8($b)) => $body,
            ($crate::tensor::Tensor::U8($a), $crate::tensor::Tensor::U8($b)) => $body,
            ($crate::tensor::Tensor::I16($a), $crate::tensor::Tensor::I16($b)) => $body,
            ($crate::tensor::Tensor::I32($a), $crate::tensor::Tensor::I32($b)) => $body,
            ($crate::tensor::Tensor::I64($a), $crate::tensor::Tensor::I64($b)) => $body,
            _ => $else,
        }
    };
}
pub(crate) use match_numeric2;

/// Matches two tensors of the same dtype, any of kiln's (bool, f16, bf16 and
/// the 4-bit types included), binding `$a` and `$b`; mixed dtypes evaluate
/// `$else`. The 4-bit variants bind `i8`/`u8` arrays.
macro_rules! match_same2 {
    ($x:expr, $y:expr, $a:ident, $b:ident => $body:expr, else $else:expr) => {
        match ($x, $y) {
            ($crate::tensor::Tensor::F32($a), $crate::tensor::Tensor::F32($b)) => $body,
            ($crate::tensor::Tensor::F64($a), $crate::tensor::Tensor::F64($b)) => $body,
            ($crate::tensor::Tensor::F16($a), $crate::tensor::Tensor::F16($b)) => $body,
            ($crate::tensor::Tensor::BF16($a), $crate::tensor::Tensor::BF16($b)) => $body,
            ($crate::tensor::Tensor::I8($a), $crate::tensor::Tensor::I8($b)) => $body,
            ($crate::tensor::Tensor::U8($a), $crate::tensor::Tensor::U8($b)) => $body,
            ($crate::tensor::Tensor::I16($a), $crate::tensor::Tensor::I16($b)) => $body,
            ($crate::tensor::Tensor::I32($a), $crate::tensor::Tensor::I32($b)) => $body,
            ($crate::tensor::Tensor::I64($a), $crate::tensor::Tensor::I64($b)) => $body,
            ($crate::tensor::Tensor::Bool($a), $crate::tensor::Tensor::Bool($b)) => $body,
            ($crate::tensor::Tensor::I4($a), $crate::tensor::Tensor::I4($b)) => $body,
            ($crate::tensor::Tensor::U4($a), $crate::tensor::Tensor::U4($b)) => $body,
            _ => $else,
        }
    };
}
pub(crate) use match_same2;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_normalize_and_reject_duplicates() {
        assert_eq!(normalize_axis(-1, 3), Ok(2));
        assert!(normalize_axis(3, 3).is_err());
        assert!(normalize_axis(0, 0).is_err());
        assert_eq!(normalize_axes(&[-1, 0], 3), Ok(vec![0, 2]));
        assert!(normalize_axes(&[1, -2], 3).is_err());
    }

    #[test]
    fn broadcasting_follows_numpy() {
        assert_eq!(broadcast_shapes(&[&[2, 1, 4], &[3, 1]]), Ok(vec![2, 3, 4]));
        assert_eq!(broadcast_shapes(&[&[0], &[1]]), Ok(vec![0]));
        assert!(broadcast_shapes(&[&[2], &[3]]).is_err());
        assert_eq!(broadcast_shapes(&[]), Ok(vec![]));
    }

    #[test]
    fn halves_widen_and_narrow_exactly() {
        let t = Tensor::from_f64s(DType::F16, &[2], &[1.5, -0.25]);
        let w = widen_half(&t);
        assert_eq!(w.dtype(), DType::F32);
        assert!(narrow_to(w.into_owned(), DType::F16).bitwise_eq(&t));
    }
}
