//! Kernels for linear quantization: QuantizeLinear, DequantizeLinear and
//! DynamicQuantizeLinear.
//!
//! Scales and zero points apply per tensor (one value), per axis (a 1-D
//! tensor as long as the quantized axis) or per block (the input's shape
//! with the quantized axis divided into blocks of `block_size`).
//!
//! Precision follows the ONNX reference implementation (numpy type
//! promotion): `x / scale` is computed in the wider of the two types (f64
//! when either is f64 or `x` is int32, f32 when the types differ) and
//! rounded to that type once, then rounded half to even and saturated to
//! the target's range. Dequantization multiplies in f64 and rounds once to
//! the output type.

use super::movement::{dispatch_kind, elems, from_vec, kinds, standard, Inputs, Kind};
use crate::dtype::DType;
use crate::op::Op;
use crate::tensor::Tensor;

/// Evaluates one quantization op.
pub(crate) fn eval(op: &Op, inputs: &[Option<Tensor>]) -> Result<Vec<Option<Tensor>>, String> {
    let args = Inputs::new(op.name(), inputs);
    match op {
        Op::QuantizeLinear { axis, block_size, output_dtype, .. } => {
            Ok(vec![Some(quantize(&args, *axis, *block_size, *output_dtype)?)])
        }
        Op::DequantizeLinear { axis, block_size, output_dtype } => {
            Ok(vec![Some(dequantize(&args, *axis, *block_size, *output_dtype)?)])
        }
        Op::DynamicQuantizeLinear => dynamic_quantize(&args).map(|v| v.into_iter().map(Some).collect()),
        _ => Err(format!("{} is not a quantization op", op.name())),
    }
}

/// Which scale each element of the input uses. The input is seen as
/// `outer × dim × inner` around the quantized axis.
struct ScaleLayout {
    outer: usize,
    dim: usize,
    inner: usize,
    mode: Mode,
}

#[derive(Clone, Copy)]
enum Mode {
    /// One scale for everything.
    Tensor,
    /// One scale per position on the axis.
    Axis,
    /// One scale per block of `block` positions on the axis, for every
    /// other coordinate; `blocks` blocks on the axis.
    Block { block: usize, blocks: usize },
}

impl ScaleLayout {
    /// Calls `f(element index, scale index)` for every element, in order.
    fn for_each(&self, mut f: impl FnMut(usize, usize)) {
        let mut p = 0;
        for o in 0..self.outer {
            for a in 0..self.dim {
                for i in 0..self.inner {
                    let s = match self.mode {
                        Mode::Tensor => 0,
                        Mode::Axis => a,
                        Mode::Block { block, blocks } => (o * blocks + a / block) * self.inner + i,
                    };
                    f(p, s);
                    p += 1;
                }
            }
        }
    }
}

/// Works out the granularity from the shapes of `x` and `scale` and checks
/// that the zero point, when given, has the scale's shape.
fn scale_layout(
    args: &Inputs,
    x: &Tensor,
    scale: &Tensor,
    zero_point: Option<&Tensor>,
    axis: i64,
    block_size: i64,
) -> Result<ScaleLayout, String> {
    let (xs, ss) = (x.shape(), scale.shape());
    if let Some(zp) = zero_point {
        // A one-element zero point goes with a one-element scale whatever
        // their ranks (the ONNX node tests pair a [1] zero point with a
        // scalar scale).
        let both_single = zp.len() == 1 && scale.len() == 1 && zp.shape().len() <= 1 && ss.len() <= 1;
        if zp.shape() != ss && !both_single {
            return Err(args.err(format_args!(
                "the zero point has shape {:?} but the scale has shape {ss:?}; they must match",
                zp.shape()
            )));
        }
    }
    let per_tensor = ScaleLayout { outer: 1, dim: 1, inner: x.len(), mode: Mode::Tensor };
    if block_size < 0 {
        return Err(args.err(format_args!("block_size must not be negative, found {block_size}")));
    }
    if scale.len() == 1 && ss.len() <= 1 {
        return Ok(per_tensor);
    }
    let ax = args.axis(axis, xs.len())?;
    let (outer, dim, inner) = (xs[..ax].iter().product(), xs[ax], xs[ax + 1..].iter().product());
    if block_size == 0 {
        if ss.len() != 1 || ss[0] != dim {
            return Err(args.err(format_args!(
                "the scale has shape {ss:?}; per-axis quantization on axis {ax} of an input of shape {xs:?} needs [{dim}] \
                 (or a scalar for per-tensor, or block_size for blocked quantization)"
            )));
        }
        return Ok(ScaleLayout { outer, dim, inner, mode: Mode::Axis });
    }
    let block = block_size as usize;
    let blocks = dim.div_ceil(block);
    let expected: Vec<usize> = xs.iter().enumerate().map(|(d, &n)| if d == ax { blocks } else { n }).collect();
    if ss != expected.as_slice() {
        return Err(args.err(format_args!(
            "the scale has shape {ss:?}; blocked quantization of an input of shape {xs:?} on axis {ax} with \
             block_size {block} needs {expected:?}"
        )));
    }
    Ok(ScaleLayout { outer, dim, inner, mode: Mode::Block { block, blocks } })
}

/// The quantized range of a target type.
fn quant_range(dtype: DType) -> Option<(f64, f64)> {
    Some(match dtype {
        DType::U8 => (0.0, 255.0),
        DType::I8 => (-128.0, 127.0),
        DType::I16 => (-32768.0, 32767.0),
        DType::U4 => (0.0, 15.0),
        DType::I4 => (-8.0, 7.0),
        _ => return None,
    })
}

/// The type numpy computes `x / scale` in, as the ONNX reference does.
fn division_type(x: DType, scale: DType) -> DType {
    match (x, scale) {
        (DType::F64, _) | (_, DType::F64) | (DType::I32, _) | (_, DType::I32) => DType::F64,
        (a, b) if a == b => a,
        _ => DType::F32,
    }
}

/// Rounds an exactly computed value to the precision of `dtype`.
fn round_to(v: f64, dtype: DType) -> f64 {
    match dtype {
        DType::F32 => v as f32 as f64,
        DType::F16 => kinds::F16::cast_f64(v).to_f64(),
        DType::BF16 => kinds::BF16::cast_f64(v).to_f64(),
        _ => v,
    }
}

fn quantize(args: &Inputs, axis: i64, block_size: i64, output_dtype: Option<DType>) -> Result<Tensor, String> {
    let x = args.get(0, "x")?;
    let scale = args.get(1, "y_scale")?;
    let zero_point = args.opt(2);
    for (t, name) in [(x, "x"), (scale, "y_scale")] {
        if !(t.dtype().is_float() || t.dtype() == DType::I32) {
            return Err(args.err(format_args!("`{name}` must be a float or int32 tensor, found {}", t.dtype())));
        }
    }
    let out = match (zero_point.map(Tensor::dtype), output_dtype) {
        (Some(z), Some(o)) if z != o => {
            return Err(args.err(format_args!("output_dtype is {o} but `y_zero_point` has type {z}; they must agree")))
        }
        (Some(z), _) => z,
        (None, Some(o)) => o,
        (None, None) => DType::U8,
    };
    let (lo, hi) = quant_range(out)
        .ok_or_else(|| args.err(format_args!("cannot quantize to {out} (supported: u8, i8, i16, u4, i4)")))?;
    let layout = scale_layout(args, x, scale, zero_point, axis, block_size)?;
    let div_type = division_type(x.dtype(), scale.dtype());
    let xv = x.to_f64s();
    let sv = scale.to_f64s();
    let zv = zero_point.map(Tensor::to_f64s);
    let mut q = vec![0i64; xv.len()];
    layout.for_each(|p, s| {
        let zp = zv.as_ref().map_or(0.0, |z| z[s]);
        let scaled = round_to(xv[p] / sv[s], div_type).round_ties_even();
        // NaN saturates to nothing in particular; `as` makes it 0.
        q[p] = (scaled + zp).clamp(lo, hi) as i64;
    });
    Ok(dispatch_kind!(out, K => from_vec::<K>(x.shape(), q.iter().map(|&v| K::cast_i64(v)).collect())))
}

fn dequantize(args: &Inputs, axis: i64, block_size: i64, output_dtype: Option<DType>) -> Result<Tensor, String> {
    let x = args.get(0, "x")?;
    let scale = args.get(1, "x_scale")?;
    let zero_point = args.opt(2);
    if !matches!(x.dtype(), DType::I8 | DType::U8 | DType::I16 | DType::I32 | DType::I4 | DType::U4) {
        return Err(args.err(format_args!("cannot dequantize {} (supported: i8, u8, i16, i32, i4, u4)", x.dtype())));
    }
    if !scale.dtype().is_float() {
        return Err(args.err(format_args!("`x_scale` must be a float tensor, found {}", scale.dtype())));
    }
    if let Some(z) = zero_point {
        if z.dtype() != x.dtype() {
            return Err(args.err(format_args!("`x_zero_point` has type {} but `x` has {}", z.dtype(), x.dtype())));
        }
    }
    let out = output_dtype.unwrap_or(scale.dtype());
    if !out.is_float() {
        return Err(args.err(format_args!("output_dtype must be a float type, found {out}")));
    }
    let layout = scale_layout(args, x, scale, zero_point, axis, block_size)?;
    let xv = x.to_i64s();
    let sv = scale.to_f64s();
    let zv = zero_point.map(Tensor::to_i64s);
    let mut y = vec![0f64; xv.len()];
    layout.for_each(|p, s| {
        let zp = zv.as_ref().map_or(0, |z| z[s]);
        y[p] = (xv[p] - zp) as f64 * sv[s];
    });
    Ok(dispatch_kind!(out, K => from_vec::<K>(x.shape(), y.iter().map(|&v| K::cast_f64(v)).collect())))
}

/// The ONNX reference computation, all in f32: the range is widened to
/// include 0, `scale = range / 255` (1/255 when the range is empty, so an
/// all-zero input quantizes to zeros), `zero_point = round(clamp(-min /
/// scale, 0, 255))`, `y = clamp(round(x / scale) + zero_point, 0, 255)`.
fn dynamic_quantize(args: &Inputs) -> Result<Vec<Tensor>, String> {
    let x = args.get(0, "x")?;
    let a =
        kinds::F32::get(x).ok_or_else(|| args.err(format_args!("`x` must be an f32 tensor, found {}", x.dtype())))?;
    let a = standard(a);
    let data = elems(&a);
    let max = data.iter().copied().fold(0f32, f32::max);
    let min = data.iter().copied().fold(0f32, f32::min);
    let scale = if max == min { 1.0 } else { max - min } / 255f32;
    let zero_point = (0f32 - min / scale).clamp(0.0, 255.0).round_ties_even();
    let y: Vec<u8> =
        data.iter().map(|&v| ((v / scale).round_ties_even() + zero_point).clamp(0.0, 255.0) as u8).collect();
    Ok(vec![
        from_vec::<kinds::U8>(x.shape(), y),
        from_vec::<kinds::F32>(&[], vec![scale]),
        from_vec::<kinds::U8>(&[], vec![zero_point as u8]),
    ])
}
