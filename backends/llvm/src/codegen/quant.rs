//! Linear quantization: QuantizeLinear, DequantizeLinear and
//! DynamicQuantizeLinear, per tensor, per axis or per block.
//!
//! The arithmetic follows kiln's interpreter (and the ONNX reference):
//! `x / scale` is computed in f32, or in f64 when either side is f64 or
//! i32, rounded half to even, shifted by the zero point and saturated to
//! the target's range; dequantization computes `(x - zero_point) · scale`
//! in f64 (exact for kiln's narrow integers) and rounds once to the output
//! type. The scale index of an element is its position on the axis (per
//! axis) or its block (blocked), computed from the loop indices.

use super::indexing::{for_each_index, norm_axis};
use super::Cg;
use crate::error::{BackendError, Result};
use crate::plan::{Loc, Plan};
use inkwell::values::{BasicValueEnum, FloatValue, FunctionValue, IntValue, PointerValue};
use inkwell::FloatPredicate;
use kiln_ir::dtype::DType;
use kiln_ir::graph::{Node, NodeId, ValueId};
use kiln_ir::op::Op;

type BV<'ctx> = BasicValueEnum<'ctx>;
type Kernel<'ctx> = (FunctionValue<'ctx>, Vec<Loc>);

/// Emits the kernel of a quantization node.
pub(crate) fn emit<'ctx>(cg: &Cg<'ctx>, plan: &Plan, step: usize, id: NodeId) -> Result<Kernel<'ctx>> {
    let node = plan.graph.node(id);
    match &node.op {
        Op::QuantizeLinear { axis, block_size, .. } => linear(cg, plan, step, node, *axis, *block_size, true),
        Op::DequantizeLinear { axis, block_size, .. } => linear(cg, plan, step, node, *axis, *block_size, false),
        Op::DynamicQuantizeLinear => dynamic(cg, plan, step, node),
        other => Err(BackendError::unsupported(&node.name, other.name(), "not a quantization op")),
    }
}

/// The quantized range of a target type.
fn range(dtype: DType) -> Option<(f64, f64)> {
    Some(match dtype {
        DType::U8 => (0.0, 255.0),
        DType::I8 => (-128.0, 127.0),
        DType::I16 => (-32768.0, 32767.0),
        DType::U4 => (0.0, 15.0),
        DType::I4 => (-8.0, 7.0),
        _ => return None,
    })
}

/// How elements map to scales: the loop is `[outer, dim, inner]` and the
/// scale index is `0`, `a`, or `(o·blocks + a/block)·inner + i`.
enum Layout {
    Tensor,
    Axis,
    Block { block: usize, blocks: usize },
}

fn layout(node: &Node, xs: &[usize], ss: &[usize], axis: i64, block_size: i64) -> Result<(Layout, [usize; 3])> {
    let err = |m: String| BackendError::node(&node.name, node.op.name(), m);
    let total: usize = xs.iter().product();
    if ss.iter().product::<usize>() == 1 && ss.len() <= 1 {
        return Ok((Layout::Tensor, [1, 1, total]));
    }
    let ax = norm_axis(node, axis, xs.len())?;
    let dims = [xs[..ax].iter().product(), xs[ax], xs[ax + 1..].iter().product()];
    if block_size <= 0 {
        if ss != [xs[ax]] {
            return Err(err(format!("the scale has shape {ss:?}; per-axis scales on axis {ax} need [{}]", xs[ax])));
        }
        return Ok((Layout::Axis, dims));
    }
    let block = block_size as usize;
    let blocks = xs[ax].div_ceil(block);
    let expected: Vec<usize> = xs.iter().enumerate().map(|(d, &n)| if d == ax { blocks } else { n }).collect();
    if ss != expected.as_slice() {
        return Err(err(format!("the scale has shape {ss:?}; blocked scales need {expected:?}")));
    }
    Ok((Layout::Block { block, blocks }, dims))
}

fn scale_index<'ctx>(cg: &Cg<'ctx>, l: &Layout, inner: usize, idx: &[IntValue<'ctx>]) -> Result<IntValue<'ctx>> {
    Ok(match l {
        Layout::Tensor => cg.i64c(0),
        Layout::Axis => idx[1],
        Layout::Block { block, blocks } => {
            let b = cg.b.build_int_unsigned_div(idx[1], cg.i64c(*block as i64), "blk")?;
            let row = cg.affine(idx[0], *blocks as i64, b)?;
            cg.affine(row, inner as i64, idx[2])?
        }
    })
}

/// Widens a loaded value (float or integer of `dtype`) to f64.
fn to_f64<'ctx>(cg: &Cg<'ctx>, v: BV<'ctx>, dtype: DType) -> Result<FloatValue<'ctx>> {
    let f64t = cg.ctx.f64_type();
    Ok(if dtype.is_float() {
        widen(cg, v.into_float_value())?
    } else if matches!(dtype, DType::U8 | DType::U4) {
        cg.b.build_unsigned_int_to_float(v.into_int_value(), f64t, "wide")?
    } else {
        cg.b.build_signed_int_to_float(v.into_int_value(), f64t, "wide")?
    })
}

/// Widens a float to f64, or keeps an f64.
fn widen<'ctx>(cg: &Cg<'ctx>, v: FloatValue<'ctx>) -> Result<FloatValue<'ctx>> {
    let f64t = cg.ctx.f64_type();
    if v.get_type() == f64t {
        return Ok(v);
    }
    Ok(cg.b.build_float_ext(v, f64t, "wide")?)
}

/// Rounds half to even, adds the zero point, saturates to `[lo, hi]` and
/// converts to the integer storage of `out`.
fn saturate<'ctx>(cg: &Cg<'ctx>, q: FloatValue<'ctx>, zp: FloatValue<'ctx>, out: DType) -> Result<BV<'ctx>> {
    let (lo, hi) = range(out).expect("checked by the caller");
    let r = cg.intrinsic("llvm.roundeven", &[q.into()])?;
    let shifted = cg.fadd(r, zp.into())?;
    let lo_v = cg.fconst(shifted, lo);
    let hi_v = cg.fconst(shifted, hi);
    // NaN (undefined in ONNX) saturates to lo here rather than poisoning.
    let below = cg.fcmp(FloatPredicate::UGE, shifted, lo_v)?;
    let c = cg.select(below, shifted, lo_v)?;
    let above = cg.fcmp(FloatPredicate::OGT, c, hi_v)?;
    let c = cg.select(above, hi_v, c)?;
    let ty = cg.compute_type(out).map_err(BackendError::Llvm)?.into_int_type();
    Ok(cg.b.build_float_to_signed_int(c.into_float_value(), ty, "q")?.into())
}

#[allow(clippy::too_many_arguments)]
fn linear<'ctx>(
    cg: &Cg<'ctx>,
    plan: &Plan,
    step: usize,
    node: &Node,
    axis: i64,
    block_size: i64,
    quantize: bool,
) -> Result<Kernel<'ctx>> {
    let err = |m: &str| BackendError::node(&node.name, node.op.name(), m);
    let unsupported = |m: String| BackendError::unsupported(&node.name, node.op.name(), m);
    let x = node.input(0).ok_or_else(|| err("input 0 is missing"))?;
    let scale = node.input(1).ok_or_else(|| err("the scale is missing"))?;
    let zp = node.input(2);
    let y = node.output(0).ok_or_else(|| err("output 0 is missing"))?;
    let (xdt, sdt, ydt) = (plan.ty(x).dtype, plan.ty(scale).dtype, plan.ty(y).dtype);
    if quantize {
        if range(ydt).is_none() || !(xdt.is_float() || xdt == DType::I32) || !(sdt.is_float() || sdt == DType::I32) {
            return Err(unsupported(format!("quantizing {xdt} with {sdt} scales to {ydt}")));
        }
    } else if xdt.is_float() || xdt == DType::Bool || !sdt.is_float() || !ydt.is_float() {
        return Err(unsupported(format!("dequantizing {xdt} with {sdt} scales to {ydt}")));
    }
    let xs = plan.ty(x).shape.clone();
    let (l, [outer, dim, inner]) = layout(node, &xs, &plan.ty(scale).shape, axis, block_size)?;
    let zdt = zp.map(|z| plan.ty(z).dtype);
    let mut values: Vec<ValueId> = vec![y, x, scale];
    values.extend(zp);
    let name = if quantize { "quantize" } else { "dequantize" };
    let f = cg.kernel_fn(&format!("k{step}_{name}"), values.len());
    let (yp, xp, sp) = (cg.param(f, 0), cg.param(f, 1), cg.param(f, 2));
    let zpp: Option<PointerValue> = zp.map(|_| cg.param(f, 3));
    // f64 when numpy would divide in f64 (an f64 or i32 side).
    let div_f64 = matches!(xdt, DType::F64 | DType::I32) || matches!(sdt, DType::F64 | DType::I32);
    let div_f32 = !div_f64 && xdt.is_float() && sdt.is_float();
    let f64zero = cg.ctx.f64_type().const_float(0.0);
    for_each_index(cg, f, &[outer, dim, inner], &mut |idx| {
        let at = cg.affine(idx[0], (dim * inner) as i64, cg.affine(idx[1], inner as i64, idx[2])?)?;
        let si = scale_index(cg, &l, inner, idx)?;
        let s = cg.load(sp, sdt, si)?;
        let z = match (zpp, zdt) {
            (Some(p), Some(d)) => to_f64(cg, cg.load(p, d, si)?, d)?,
            _ => f64zero,
        };
        let v = cg.load(xp, xdt, at)?;
        if quantize {
            // Same-type f16/bf16 division happens in f32 here and the
            // interpreter rounds it to the input type; f32 covers both.
            let q = if div_f32 {
                let (a, b) = (v.into_float_value(), s.into_float_value());
                widen(cg, cg.fdiv(a.into(), b.into())?.into_float_value())?
            } else {
                let (a, b) = (to_f64(cg, v, xdt)?, to_f64(cg, s, sdt)?);
                cg.fdiv(a.into(), b.into())?.into_float_value()
            };
            let q = if div_f32 && matches!(xdt, DType::F16 | DType::BF16) && xdt == sdt {
                round_half_type(cg, q, xdt)?
            } else {
                q
            };
            cg.store(yp, ydt, at, saturate(cg, q, z, ydt)?)
        } else {
            let d = cg.b.build_float_sub(to_f64(cg, v, xdt)?, z, "d")?;
            let r = cg.b.build_float_mul(d, to_f64(cg, s, sdt)?, "y")?;
            // One rounding from the exact f64 result to the output type.
            let r = match ydt {
                DType::F64 => r,
                DType::F16 => {
                    cg.b.build_float_ext(cg.b.build_float_trunc(r, cg.ctx.f16_type(), "y")?, cg.f32t(), "y")?
                }
                DType::BF16 => {
                    let odd = round_to_odd_f32(cg, r)?;
                    let bits = cg.f32_to_bf16(odd)?;
                    cg.bf16_to_f32(bits)?.into_float_value()
                }
                _ => cg.b.build_float_trunc(r, cg.f32t(), "y")?,
            };
            cg.store(yp, ydt, at, r.into())
        }
    })?;
    cg.b.build_return(None)?;
    Ok((f, values.iter().map(|&v| plan.loc(v)).collect()))
}

/// Narrows f64 to f32 rounding to odd (truncate, then set the lowest bit
/// when inexact), so a second rounding to bf16 is correct.
fn round_to_odd_f32<'ctx>(cg: &Cg<'ctx>, v: FloatValue<'ctx>) -> Result<FloatValue<'ctx>> {
    let near = cg.b.build_float_trunc(v, cg.f32t(), "near")?;
    let back = cg.b.build_float_ext(near, cg.ctx.f64_type(), "back")?;
    let exact = cg.b.build_float_compare(FloatPredicate::UEQ, back, v, "exact")?;
    let i32t = cg.ctx.i32_type();
    let bits = cg.b.build_bit_cast(near, i32t, "bits")?.into_int_value();
    // Toward zero when rounding went away from zero, then force the lsb.
    let away = cg.b.build_float_compare(
        FloatPredicate::OGT,
        cg.intrinsic("llvm.fabs", &[back.into()])?.into_float_value(),
        cg.intrinsic("llvm.fabs", &[v.into()])?.into_float_value(),
        "away",
    )?;
    let down = cg.b.build_int_sub(bits, cg.b.build_int_z_extend(away, i32t, "a")?, "down")?;
    let odd = cg.b.build_or(down, i32t.const_int(1, false), "odd")?;
    let pick = cg.b.build_select(exact, bits, odd, "pick")?.into_int_value();
    Ok(cg.b.build_bit_cast(pick, cg.f32t(), "odd")?.into_float_value())
}

/// Rounds an f64 holding an f32 quotient to f16/bf16 precision, as the
/// interpreter does for a division in that type.
fn round_half_type<'ctx>(cg: &Cg<'ctx>, q: FloatValue<'ctx>, dtype: DType) -> Result<FloatValue<'ctx>> {
    let narrow = cg.b.build_float_trunc(q, cg.f32t(), "q32")?;
    let rounded = if dtype == DType::BF16 {
        let bits = cg.f32_to_bf16(narrow)?;
        cg.bf16_to_f32(bits)?.into_float_value()
    } else {
        let h = cg.b.build_float_trunc(narrow, cg.ctx.f16_type(), "q16")?;
        cg.b.build_float_ext(h, cg.f32t(), "q32")?
    };
    widen(cg, rounded)
}

/// DynamicQuantizeLinear on f32: one pass for the range (widened to hold
/// 0), the scale and zero point from it, one pass to quantize to u8.
fn dynamic<'ctx>(cg: &Cg<'ctx>, plan: &Plan, step: usize, node: &Node) -> Result<Kernel<'ctx>> {
    let err = |m: &str| BackendError::node(&node.name, "DynamicQuantizeLinear", m);
    let x = node.input(0).ok_or_else(|| err("input 0 is missing"))?;
    let outs: Vec<ValueId> =
        (0..3).map(|i| node.output(i).ok_or_else(|| err("an output is missing"))).collect::<Result<_>>()?;
    if plan.ty(x).dtype != DType::F32 {
        return Err(BackendError::unsupported(
            &node.name,
            "DynamicQuantizeLinear",
            format!("{} input", plan.ty(x).dtype),
        ));
    }
    let n = plan.ty(x).len();
    let f = cg.kernel_fn(&format!("k{step}_dynamic_quantize"), 4);
    let (yp, sp, zp, xp) = (cg.param(f, 0), cg.param(f, 1), cg.param(f, 2), cg.param(f, 3));
    let f32t = cg.f32t();
    let zero: BV = f32t.const_float(0.0).into();
    let (lo, hi) = (cg.entry_alloca(f, f32t.into(), "lo")?, cg.entry_alloca(f, f32t.into(), "hi")?);
    cg.b.build_store(lo, zero)?;
    cg.b.build_store(hi, zero)?;
    cg.for_n(f, n, &mut |i| {
        let v = cg.load(xp, DType::F32, i)?;
        let (l, h) = (cg.b.build_load(f32t, lo, "lo")?, cg.b.build_load(f32t, hi, "hi")?);
        // f32::max/min ignore NaN, as the interpreter's fold does.
        cg.b.build_store(lo, cg.intrinsic("llvm.minnum", &[l, v])?)?;
        cg.b.build_store(hi, cg.fmaxnum(h, v)?)?;
        Ok(())
    })?;
    let (l, h) = (cg.b.build_load(f32t, lo, "lo")?, cg.b.build_load(f32t, hi, "hi")?);
    let same = cg.fcmp(FloatPredicate::OEQ, h, l)?;
    let span = cg.select(same, cg.fconst(h, 1.0), cg.fsub(h, l)?)?;
    let scale = cg.fdiv(span, cg.fconst(h, 255.0))?;
    let zf = cg.fsub(zero, cg.fdiv(l, scale)?)?;
    let zc = cg.intrinsic("llvm.minnum", &[cg.fmaxnum(zf, cg.fconst(h, 0.0))?, cg.fconst(h, 255.0)])?;
    let zr = cg.intrinsic("llvm.roundeven", &[zc])?;
    cg.store(sp, DType::F32, cg.i64c(0), scale)?;
    let zi = cg.b.build_float_to_unsigned_int(zr.into_float_value(), cg.ctx.i8_type(), "zp")?;
    cg.store(zp, DType::U8, cg.i64c(0), zi.into())?;
    cg.for_n(f, n, &mut |i| {
        let v = cg.load(xp, DType::F32, i)?;
        let q = cg.fadd(cg.intrinsic("llvm.roundeven", &[cg.fdiv(v, scale)?])?, zr)?;
        let c = cg.intrinsic("llvm.minnum", &[cg.fmaxnum(q, cg.fconst(q, 0.0))?, cg.fconst(q, 255.0)])?;
        let b = cg.b.build_float_to_unsigned_int(c.into_float_value(), cg.ctx.i8_type(), "y")?;
        cg.store(yp, DType::U8, i, b.into())
    })?;
    cg.b.build_return(None)?;
    Ok((f, vec![plan.loc(outs[0]), plan.loc(outs[1]), plan.loc(outs[2]), plan.loc(x)]))
}
