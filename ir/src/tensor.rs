//! Dense tensors: the values of initializers, constants and the interpreter.
//!
//! A [`Tensor`] is an enum of `ndarray` arrays, one variant per [`DType`].
//! Arrays are reference counted (`ArcArray`), so cloning a weight is cheap
//! and the interpreter can pass large initializers around without copying.
//! The 4-bit types are held unpacked, one value per byte, and packed only
//! when serialized.

use crate::dtype::DType;
use half::{bf16, f16};
use ndarray::{ArcArray, ArrayD, IxDyn};
use std::fmt;

/// Conversions every element type supports; the interpreter and casts are
/// written once over this trait.
pub trait Element: Copy + Default + PartialOrd + fmt::Debug + Send + Sync + 'static {
    /// The value as `f64` (booleans are 0/1).
    fn to_f64(self) -> f64;
    /// Converts from `f64` the way ONNX `Cast` does: floats round to nearest,
    /// integers truncate toward zero and saturate, NaN becomes 0.
    fn from_f64(v: f64) -> Self;
    /// The value as `i64` (floats truncate toward zero).
    fn to_i64(self) -> i64;
    /// Converts from `i64`, wrapping for integer targets like C casts.
    fn from_i64(v: i64) -> Self;
}

macro_rules! int_element {
    ($($t:ty),*) => {$(
        impl Element for $t {
            fn to_f64(self) -> f64 { self as f64 }
            fn from_f64(v: f64) -> Self { v as $t }
            fn to_i64(self) -> i64 { self as i64 }
            fn from_i64(v: i64) -> Self { v as $t }
        }
    )*};
}
int_element!(i8, u8, i16, i32, i64, u16, u32, u64);

impl Element for f32 {
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_i64(self) -> i64 {
        self as i64
    }
    fn from_i64(v: i64) -> Self {
        v as f32
    }
}

impl Element for f64 {
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_i64(self) -> i64 {
        self as i64
    }
    fn from_i64(v: i64) -> Self {
        v as f64
    }
}

// Wide values reach f16/bf16 through f32 rounded *to odd*, so the final
// round-to-nearest is correct; plain double rounding can land one ulp off.
impl Element for f16 {
    fn to_f64(self) -> f64 {
        self.to_f64()
    }
    fn from_f64(v: f64) -> Self {
        f16::from_f32(f64_to_f32_odd(v))
    }
    fn to_i64(self) -> i64 {
        self.to_f64() as i64
    }
    fn from_i64(v: i64) -> Self {
        f16::from_f32(i64_to_f32_odd(v))
    }
}

impl Element for bf16 {
    fn to_f64(self) -> f64 {
        self.to_f64()
    }
    fn from_f64(v: f64) -> Self {
        bf16::from_f32(f64_to_f32_odd(v))
    }
    fn to_i64(self) -> i64 {
        self.to_f64() as i64
    }
    fn from_i64(v: i64) -> Self {
        bf16::from_f32(i64_to_f32_odd(v))
    }
}

impl Element for bool {
    fn to_f64(self) -> f64 {
        if self {
            1.0
        } else {
            0.0
        }
    }
    fn from_f64(v: f64) -> Self {
        v != 0.0
    }
    fn to_i64(self) -> i64 {
        self as i64
    }
    fn from_i64(v: i64) -> Self {
        v != 0
    }
}

/// `v` rounded to `f32` with round-to-odd: truncate toward zero, then set
/// the last mantissa bit when the result is inexact.
pub fn f64_to_f32_odd(v: f64) -> f32 {
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
pub fn i64_to_f32_odd(v: i64) -> f32 {
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

/// A dense tensor of one of kiln's dtypes.
#[derive(Clone)]
pub enum Tensor {
    /// `f32` elements.
    F32(ArcArray<f32, IxDyn>),
    /// `f64` elements.
    F64(ArcArray<f64, IxDyn>),
    /// `f16` elements.
    F16(ArcArray<f16, IxDyn>),
    /// `bf16` elements.
    BF16(ArcArray<bf16, IxDyn>),
    /// `i8` elements.
    I8(ArcArray<i8, IxDyn>),
    /// `u8` elements.
    U8(ArcArray<u8, IxDyn>),
    /// `i16` elements.
    I16(ArcArray<i16, IxDyn>),
    /// `i32` elements.
    I32(ArcArray<i32, IxDyn>),
    /// `i64` elements.
    I64(ArcArray<i64, IxDyn>),
    /// Booleans.
    Bool(ArcArray<bool, IxDyn>),
    /// Signed 4-bit values, one per byte, each in [-8, 7].
    I4(ArcArray<i8, IxDyn>),
    /// Unsigned 4-bit values, one per byte, each in [0, 15].
    U4(ArcArray<u8, IxDyn>),
}

/// Runs `$body` with `$a` bound to the array inside any variant.
#[macro_export]
macro_rules! for_each_tensor {
    ($t:expr, $a:ident => $body:expr) => {
        match $t {
            $crate::tensor::Tensor::F32($a) => $body,
            $crate::tensor::Tensor::F64($a) => $body,
            $crate::tensor::Tensor::F16($a) => $body,
            $crate::tensor::Tensor::BF16($a) => $body,
            $crate::tensor::Tensor::I8($a) => $body,
            $crate::tensor::Tensor::U8($a) => $body,
            $crate::tensor::Tensor::I16($a) => $body,
            $crate::tensor::Tensor::I32($a) => $body,
            $crate::tensor::Tensor::I64($a) => $body,
            $crate::tensor::Tensor::Bool($a) => $body,
            $crate::tensor::Tensor::I4($a) => $body,
            $crate::tensor::Tensor::U4($a) => $body,
        }
    };
}

/// Builds the variant for `$dtype` from `$make`, an expression generic over
/// the element type `$T` (a type alias bound inside each arm).
#[macro_export]
macro_rules! tensor_of_dtype {
    ($dtype:expr, $T:ident => $make:expr) => {
        match $dtype {
            $crate::dtype::DType::F32 => { type $T = f32; $crate::tensor::Tensor::F32($make) }
            $crate::dtype::DType::F64 => { type $T = f64; $crate::tensor::Tensor::F64($make) }
            $crate::dtype::DType::F16 => { type $T = ::half::f16; $crate::tensor::Tensor::F16($make) }
            $crate::dtype::DType::BF16 => { type $T = ::half::bf16; $crate::tensor::Tensor::BF16($make) }
            $crate::dtype::DType::I8 => { type $T = i8; $crate::tensor::Tensor::I8($make) }
            $crate::dtype::DType::U8 => { type $T = u8; $crate::tensor::Tensor::U8($make) }
            $crate::dtype::DType::I16 => { type $T = i16; $crate::tensor::Tensor::I16($make) }
            $crate::dtype::DType::I32 => { type $T = i32; $crate::tensor::Tensor::I32($make) }
            $crate::dtype::DType::I64 => { type $T = i64; $crate::tensor::Tensor::I64($make) }
            $crate::dtype::DType::Bool => { type $T = bool; $crate::tensor::Tensor::Bool($make) }
            $crate::dtype::DType::I4 => { type $T = i8; $crate::tensor::Tensor::I4($make) }
            $crate::dtype::DType::U4 => { type $T = u8; $crate::tensor::Tensor::U4($make) }
        }
    };
}

impl Tensor {
    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            Tensor::F32(_) => DType::F32,
            Tensor::F64(_) => DType::F64,
            Tensor::F16(_) => DType::F16,
            Tensor::BF16(_) => DType::BF16,
            Tensor::I8(_) => DType::I8,
            Tensor::U8(_) => DType::U8,
            Tensor::I16(_) => DType::I16,
            Tensor::I32(_) => DType::I32,
            Tensor::I64(_) => DType::I64,
            Tensor::Bool(_) => DType::Bool,
            Tensor::I4(_) => DType::I4,
            Tensor::U4(_) => DType::U4,
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        for_each_tensor!(self, a => a.shape())
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        for_each_tensor!(self, a => a.len())
    }

    /// True when it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the elements take when stored as ONNX stores them.
    pub fn storage_bytes(&self) -> usize {
        self.dtype().storage_bytes(self.len())
    }

    /// A tensor of zeros (false for booleans).
    pub fn zeros(dtype: DType, shape: &[usize]) -> Tensor {
        tensor_of_dtype!(dtype, T => ArrayD::<T>::default(IxDyn(shape)).into_shared())
    }

    /// Builds a tensor from `f64` values, converting like ONNX `Cast`.
    /// Panics if `values.len()` does not match the shape.
    pub fn from_f64s(dtype: DType, shape: &[usize], values: &[f64]) -> Tensor {
        let t = tensor_of_dtype!(dtype, T => ArrayD::from_shape_vec(
            IxDyn(shape),
            values.iter().map(|&v| <T as Element>::from_f64(v)).collect(),
        )
        .expect("value count matches shape")
        .into_shared());
        t.wrap_4bit()
    }

    /// Builds a tensor from `i64` values, wrapping for integer targets.
    /// Panics if `values.len()` does not match the shape.
    pub fn from_i64s(dtype: DType, shape: &[usize], values: &[i64]) -> Tensor {
        let t = tensor_of_dtype!(dtype, T => ArrayD::from_shape_vec(
            IxDyn(shape),
            values.iter().map(|&v| <T as Element>::from_i64(v)).collect(),
        )
        .expect("value count matches shape")
        .into_shared());
        t.wrap_4bit()
    }

    /// A scalar `f32`.
    pub fn scalar_f32(v: f32) -> Tensor {
        Tensor::F32(ndarray::arr0(v).into_dyn().into_shared())
    }

    /// A scalar `i64`.
    pub fn scalar_i64(v: i64) -> Tensor {
        Tensor::I64(ndarray::arr0(v).into_dyn().into_shared())
    }

    /// A 1-D `i64` tensor.
    pub fn vec_i64(v: &[i64]) -> Tensor {
        Tensor::I64(ndarray::Array1::from(v.to_vec()).into_dyn().into_shared())
    }

    /// Elements in row-major order as `f64`.
    pub fn to_f64s(&self) -> Vec<f64> {
        for_each_tensor!(self, a => a.iter().map(|v| v.to_f64()).collect())
    }

    /// Elements in row-major order as `i64` (floats truncate).
    pub fn to_i64s(&self) -> Vec<i64> {
        for_each_tensor!(self, a => a.iter().map(|v| v.to_i64()).collect())
    }

    /// Converts to another dtype, with ONNX `Cast` semantics for the common
    /// cases: float sources go through `f64`, integer and boolean sources
    /// through `i64`, and 4-bit targets wrap into their range.
    pub fn cast(&self, to: DType) -> Tensor {
        if self.dtype() == to {
            return self.clone();
        }
        let shape = self.shape().to_vec();
        if self.dtype().is_float() {
            Tensor::from_f64s(to, &shape, &self.to_f64s())
        } else {
            Tensor::from_i64s(to, &shape, &self.to_i64s())
        }
    }

    /// Brings 4-bit values into their range by two's-complement wrapping,
    /// which is what unpacking a stored nibble gives.
    fn wrap_4bit(self) -> Tensor {
        match self {
            Tensor::I4(a) => Tensor::I4(a.mapv(|v| (v << 4) >> 4).into_shared()),
            Tensor::U4(a) => Tensor::U4(a.mapv(|v| v & 0x0f).into_shared()),
            t => t,
        }
    }

    /// Decodes little-endian raw bytes as ONNX `raw_data` stores them (4-bit
    /// types packed two per byte, low nibble first). Errors when the byte
    /// count does not match the shape.
    pub fn from_raw_le(dtype: DType, shape: &[usize], bytes: &[u8]) -> Result<Tensor, String> {
        let count: usize = shape.iter().product();
        let want = dtype.storage_bytes(count);
        if bytes.len() != want {
            return Err(format!(
                "{} bytes of raw data for a {dtype} tensor of shape {shape:?}, which needs {want}",
                bytes.len()
            ));
        }
        let dims = IxDyn(shape);
        macro_rules! le {
            ($t:ty, $n:expr, $conv:expr) => {
                ArrayD::from_shape_vec(
                    dims,
                    bytes
                        .chunks_exact($n)
                        .map(|c| $conv(c.try_into().expect("chunk size")))
                        .collect::<Vec<$t>>(),
                )
                .expect("count matches")
                .into_shared()
            };
        }
        Ok(match dtype {
            DType::F32 => Tensor::F32(le!(f32, 4, f32::from_le_bytes)),
            DType::F64 => Tensor::F64(le!(f64, 8, f64::from_le_bytes)),
            DType::F16 => Tensor::F16(le!(f16, 2, f16::from_le_bytes)),
            DType::BF16 => Tensor::BF16(le!(bf16, 2, bf16::from_le_bytes)),
            DType::I8 => Tensor::I8(le!(i8, 1, i8::from_le_bytes)),
            DType::U8 => Tensor::U8(le!(u8, 1, u8::from_le_bytes)),
            DType::I16 => Tensor::I16(le!(i16, 2, i16::from_le_bytes)),
            DType::I32 => Tensor::I32(le!(i32, 4, i32::from_le_bytes)),
            DType::I64 => Tensor::I64(le!(i64, 8, i64::from_le_bytes)),
            DType::Bool => Tensor::Bool(le!(bool, 1, |b: [u8; 1]| b[0] != 0)),
            DType::I4 | DType::U4 => {
                let nibbles: Vec<i64> = (0..count)
                    .map(|i| ((bytes[i / 2] >> ((i % 2) * 4)) & 0x0f) as i64)
                    .collect();
                Tensor::from_i64s(dtype, shape, &nibbles)
            }
        })
    }

    /// Encodes as little-endian raw bytes, the inverse of [`Tensor::from_raw_le`].
    pub fn to_raw_le(&self) -> Vec<u8> {
        macro_rules! le {
            ($a:expr) => {
                $a.iter().flat_map(|v| v.to_le_bytes()).collect()
            };
        }
        match self {
            Tensor::F32(a) => le!(a),
            Tensor::F64(a) => le!(a),
            Tensor::F16(a) => le!(a),
            Tensor::BF16(a) => le!(a),
            Tensor::I8(a) => le!(a),
            Tensor::U8(a) => le!(a),
            Tensor::I16(a) => le!(a),
            Tensor::I32(a) => le!(a),
            Tensor::I64(a) => le!(a),
            Tensor::Bool(a) => a.iter().map(|&b| b as u8).collect(),
            Tensor::I4(_) | Tensor::U4(_) => {
                let v = self.to_i64s();
                v.chunks(2)
                    .map(|p| (p[0] as u8 & 0x0f) | (p.get(1).map_or(0, |&h| h as u8 & 0x0f) << 4))
                    .collect()
            }
        }
    }

    /// True when dtypes and shapes match and every element is bitwise equal
    /// (so NaN equals NaN). Tests use this for exact round trips.
    pub fn bitwise_eq(&self, other: &Tensor) -> bool {
        self.dtype() == other.dtype() && self.shape() == other.shape() && self.to_raw_le() == other.to_raw_le()
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor<{}>{:?}", self.dtype(), self.shape())?;
        if self.len() <= 16 {
            write!(f, " {:?}", self.to_f64s())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_round_trip_every_dtype() {
        for d in DType::ALL {
            let t = Tensor::from_i64s(d, &[2, 3], &[0, 1, 2, 3, 4, 5]);
            let raw = t.to_raw_le();
            assert_eq!(raw.len(), d.storage_bytes(6));
            let back = Tensor::from_raw_le(d, &[2, 3], &raw).unwrap();
            assert!(t.bitwise_eq(&back), "{d}");
        }
    }

    #[test]
    fn int4_packs_low_nibble_first_and_wraps() {
        let t = Tensor::from_i64s(DType::I4, &[3], &[-1, 7, 9]);
        assert_eq!(t.to_i64s(), vec![-1, 7, -7]);
        assert_eq!(t.to_raw_le(), vec![0x7f, 0x09]);
    }

    #[test]
    fn f64_to_half_rounds_once() {
        // Just above the f16 tie between 1 and 1+2^-10: rounding through f32
        // to nearest would drop the 2^-40 and then round the tie to even (1).
        let v = 1.0 + 2f64.powi(-11) + 2f64.powi(-40);
        assert_eq!(<f16 as Element>::from_f64(v).to_f64(), 1.0 + 2f64.powi(-10));
        let v = 1.0 + 2f64.powi(-8) + 2f64.powi(-40);
        assert_eq!(<bf16 as Element>::from_f64(v).to_f64(), 1.0 + 2f64.powi(-7));
    }

    #[test]
    fn wrong_byte_count_is_an_error() {
        assert!(Tensor::from_raw_le(DType::F32, &[2], &[0; 7]).is_err());
    }
}

impl PartialEq for Tensor {
    /// Bitwise equality; see [`Tensor::bitwise_eq`].
    fn eq(&self, other: &Tensor) -> bool {
        self.bitwise_eq(other)
    }
}
