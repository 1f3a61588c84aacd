//! Cast and CastLike, and the scalar conversions behind them.
//!
//! Conversions follow the ONNX `Cast` rules for kiln's dtypes:
//! - float to float rounds to nearest, ties to even, overflowing to ±inf;
//! - float to integer truncates toward zero; out-of-range values (undefined
//!   in ONNX) saturate and NaN becomes 0, except for the 4-bit targets,
//!   where the truncated value wraps into 4 bits as the ONNX node tests
//!   (`test_cast_FLOAT_to_INT4`: -9 → 7, 8 → -8) require;
//! - integer to integer keeps the low bits (two's complement wrap);
//! - anything to bool is `x != 0` (NaN is true); bool is 0 or 1.
//!
//! Rounding a wide value to `f16`/`bf16` in one step matters: going through
//! `f32` with round-to-nearest first can round twice and land on the wrong
//! neighbour. The conversions below first round to `f32` *to odd*, which
//! keeps enough information for the final round-to-nearest to be exact.

use super::{array, Inputs, Kind};
use crate::dtype::DType;
use crate::tensor::{Element, Tensor};
use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn};

/// `v` rounded to `f32` with round-to-odd: truncate toward zero, then set
/// the last mantissa bit when the result is inexact.
pub(in crate::interp) fn f64_to_f32_odd(v: f64) -> f32 {
    let f = v as f32;
    if f.is_nan() || f as f64 == v {
        return f;
    }
    let mut bits = f.to_bits();
    // `as` rounded to nearest; step back toward zero if it rounded away.
    // On sign-magnitude bits that is a decrement, and it also turns an
    // overflow to infinity into f32::MAX.
    if (f as f64).abs() > v.abs() {
        bits -= 1;
    }
    f32::from_bits(bits | 1)
}

/// `v` rounded to `f32` with round-to-odd.
pub(in crate::interp) fn i64_to_f32_odd(v: i64) -> f32 {
    let f = v as f32;
    // `f` is finite with magnitude at most 2^63, so it converts exactly.
    let back = f as i128;
    if back == v as i128 {
        return f;
    }
    let mut bits = f.to_bits();
    if back.abs() > (v as i128).abs() {
        bits -= 1;
    }
    f32::from_bits(bits | 1)
}

/// `v` correctly rounded to `f16` (to nearest, ties to even).
pub(in crate::interp) fn f64_to_f16(v: f64) -> f16 {
    f16::from_f32(f64_to_f32_odd(v))
}

/// `v` correctly rounded to `bf16` (to nearest, ties to even).
pub(in crate::interp) fn f64_to_bf16(v: f64) -> bf16 {
    bf16::from_f32(f64_to_f32_odd(v))
}

/// The low 4 bits of `v` as a signed 4-bit value in [-8, 7].
pub(in crate::interp) fn wrap_i4(v: i64) -> i8 {
    ((v as i8) << 4) >> 4
}

/// The low 4 bits of `v` as an unsigned 4-bit value in [0, 15].
pub(in crate::interp) fn wrap_u4(v: i64) -> u8 {
    (v as u8) & 0x0f
}

/// Converts `x` to `to` with ONNX `Cast` semantics.
pub(in crate::interp) fn cast_tensor(x: &Tensor, to: DType) -> Tensor {
    if x.dtype() == to {
        return x.clone();
    }
    let from_float = x.dtype().is_float();
    dispatch!(x.dtype(), S => dispatch!(to, D => cast_typed::<S, D>(x, from_float)))
}

fn cast_typed<S: Kind, D: Kind>(x: &Tensor, from_float: bool) -> Tensor {
    let a = array::<S>(x);
    let v: Vec<D::E> = if from_float {
        a.iter().map(|v| D::cast_f64(v.to_f64())).collect()
    } else {
        a.iter().map(|v| D::cast_i64(v.to_i64())).collect()
    };
    D::wrap(ArrayD::from_shape_vec(IxDyn(a.shape()), v).expect("one element per input element").into_shared())
}

pub(super) fn cast_op(args: &Inputs, to: DType) -> Result<Tensor, String> {
    Ok(cast_tensor(args.get(0, "input")?, to))
}
