//! Rules for quantization: QuantizeLinear, DequantizeLinear (per tensor,
//! per axis and blocked) and DynamicQuantizeLinear.

use super::{dims, Ctx};
use crate::dim::Dim;
use crate::dtype::DType;
use crate::error::Result;
use crate::types::TensorType;

/// The integer types kiln quantizes to.
fn is_quantized(d: DType) -> bool {
    matches!(d, DType::I8 | DType::U8 | DType::I16 | DType::I4 | DType::U4)
}

/// Checks the scale (input 1) and zero point (input 2) shapes against the
/// data (input 0): a scalar for per-tensor, a vector along `axis` for
/// per-axis, or the data's shape with `ceil(d / block_size)` along `axis`
/// for blocked quantization.
fn check_params(cx: &Ctx, axis: i64, block_size: i64) -> Result<()> {
    let x = cx.ty(0)?;
    let s = cx.ty(1)?;
    if block_size < 0 {
        return Err(cx.err(format!("block_size {block_size} is negative")));
    }
    let per_tensor = s.rank() == 0 || (s.rank() == 1 && s.shape[0] == Dim::Fixed(1));
    if block_size > 0 {
        let a = cx.axis(axis, x.rank())?;
        let ok = s.rank() == x.rank()
            && s.shape.iter().zip(&x.shape).enumerate().all(|(i, (sd, xd))| {
                if i != a {
                    return !dims::conflict(sd, xd);
                }
                match (sd.fixed(), xd.fixed()) {
                    (Some(sn), Some(xn)) => sn == xn.div_ceil(block_size as u64),
                    _ => true,
                }
            });
        if !ok {
            return Err(cx.err(format!(
                "{} (scale) has shape {s}; blocked quantization of {} ({x}) with block_size {block_size} along axis {a} needs the data shape with ceil(dim / {block_size}) on that axis",
                cx.desc(1),
                cx.desc(0)
            )));
        }
    } else if !per_tensor {
        if s.rank() != 1 {
            return Err(cx.err(format!(
                "{} (scale) has shape {s}; expected a scalar, or a vector for per-axis quantization (or set block_size)",
                cx.desc(1)
            )));
        }
        let a = cx.axis(axis, x.rank())?;
        if dims::conflict(&s.shape[0], &x.shape[a]) {
            return Err(cx.err(format!(
                "{} (scale) has shape {s} but axis {a} of {} ({x}) has size {}",
                cx.desc(1),
                cx.desc(0),
                x.shape[a]
            )));
        }
    }
    if let Some(zp) = cx.opt_ty(2)? {
        // A scalar and a one-element vector both mean per-tensor.
        let zp_per_tensor = zp.rank() == 0 || (zp.rank() == 1 && zp.shape[0] == Dim::Fixed(1));
        let ok = (per_tensor && zp_per_tensor && block_size == 0)
            || (zp.rank() == s.rank() && zp.shape.iter().zip(&s.shape).all(|(a, b)| !dims::conflict(a, b)));
        if !ok {
            return Err(cx.err(format!(
                "{} (zero point) has shape {zp} but {} (scale) has {s}",
                cx.desc(2),
                cx.desc(1)
            )));
        }
    }
    Ok(())
}

pub(crate) fn quantize_linear(
    cx: &mut Ctx,
    axis: i64,
    block_size: i64,
    output_dtype: Option<DType>,
) -> Result<Vec<TensorType>> {
    cx.dtype_in(0, |d| d.is_float() || d == DType::I32, "a float type or i32")?;
    cx.dtype_in(1, |d| d.is_float() || d == DType::I32, "a float type or i32 (scale)")?;
    let out = match (cx.opt_ty(2)?, output_dtype) {
        (Some(zp), Some(o)) if zp.dtype != o => {
            return Err(cx.err(format!(
                "output_dtype {o} disagrees with {} (zero point) of type {}",
                cx.desc(2),
                zp.dtype
            )));
        }
        (Some(zp), _) => zp.dtype,
        (None, Some(o)) => o,
        (None, None) => DType::U8,
    };
    if !is_quantized(out) {
        return Err(cx.err(format!("cannot quantize to {out}; expected i8, u8, i16, i4 or u4")));
    }
    check_params(cx, axis, block_size)?;
    Ok(vec![TensorType::new(out, cx.ty(0)?.shape.clone())])
}

pub(crate) fn dequantize_linear(
    cx: &mut Ctx,
    axis: i64,
    block_size: i64,
    output_dtype: Option<DType>,
) -> Result<Vec<TensorType>> {
    cx.dtype_in(0, |d| is_quantized(d) || d == DType::I32, "i8, u8, i16, i32, i4 or u4")?;
    let scale = cx.dtype_in(1, |d| d.is_float(), "a float type (scale)")?;
    if cx.has(2) {
        cx.same_dtype(0, 2)?;
    }
    let out = output_dtype.unwrap_or(scale);
    if !out.is_float() {
        return Err(cx.err(format!("output_dtype {out} is not a float type")));
    }
    check_params(cx, axis, block_size)?;
    Ok(vec![TensorType::new(out, cx.ty(0)?.shape.clone())])
}

pub(crate) fn dynamic_quantize_linear(cx: &mut Ctx) -> Result<Vec<TensorType>> {
    cx.dtype_in(0, |d| d == DType::F32, "f32")?;
    Ok(vec![
        TensorType::new(DType::U8, cx.ty(0)?.shape.clone()),
        TensorType::scalar(DType::F32),
        TensorType::scalar(DType::U8),
    ])
}
