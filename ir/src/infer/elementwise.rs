//! Rules for elementwise ops: unary, binary and variadic broadcasts, Mod,
//! Clip, Where and the float activations.

use super::Ctx;
use crate::dtype::DType;
use crate::error::Result;
use crate::op::{BinaryOp, UnaryOp, VariadicOp};
use crate::types::TensorType;

fn is_float(d: DType) -> bool {
    d.is_float()
}

fn is_numeric(d: DType) -> bool {
    d.is_numeric()
}

fn is_bool(d: DType) -> bool {
    d == DType::Bool
}

pub(crate) fn unary(cx: &mut Ctx, op: UnaryOp) -> Result<Vec<TensorType>> {
    let t = cx.ty(0)?;
    let out_dtype = match op {
        UnaryOp::Not => cx.dtype_in(0, is_bool, "bool")?,
        UnaryOp::IsNaN => {
            cx.dtype_in(0, is_float, "a float type")?;
            DType::Bool
        }
        UnaryOp::Abs | UnaryOp::Neg | UnaryOp::Sign | UnaryOp::Erf => cx.dtype_in(0, is_numeric, "a numeric type")?,
        UnaryOp::Relu => cx.dtype_in(0, |d| d.is_float() || d.is_signed_integer(), "a float or signed integer type")?,
        UnaryOp::Sqrt
        | UnaryOp::Reciprocal
        | UnaryOp::Exp
        | UnaryOp::Log
        | UnaryOp::Tanh
        | UnaryOp::Sigmoid
        | UnaryOp::Softplus
        | UnaryOp::Softsign
        | UnaryOp::Floor
        | UnaryOp::Ceil
        | UnaryOp::Round
        | UnaryOp::Sin
        | UnaryOp::Cos
        | UnaryOp::HardSwish => cx.dtype_in(0, is_float, "a float type")?,
    };
    Ok(vec![TensorType::new(out_dtype, t.shape.clone())])
}

pub(crate) fn binary(cx: &mut Ctx, op: BinaryOp) -> Result<Vec<TensorType>> {
    let out_dtype = match op {
        BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div => {
            cx.dtype_in(0, is_numeric, "a numeric type")?;
            cx.same_dtype(0, 1)?;
            cx.ty(0)?.dtype
        }
        BinaryOp::Pow => {
            cx.dtype_in(1, is_numeric, "a numeric type")?;
            cx.dtype_in(0, |d| d.is_float() || d == DType::I32 || d == DType::I64, "a float, i32 or i64 type")?
        }
        BinaryOp::Equal => {
            cx.dtype_in(0, |d| d.is_numeric() || d == DType::Bool, "a numeric or bool type")?;
            cx.same_dtype(0, 1)?;
            DType::Bool
        }
        BinaryOp::Less | BinaryOp::LessOrEqual | BinaryOp::Greater | BinaryOp::GreaterOrEqual => {
            cx.dtype_in(0, is_numeric, "a numeric type")?;
            cx.same_dtype(0, 1)?;
            DType::Bool
        }
        BinaryOp::And | BinaryOp::Or | BinaryOp::Xor => {
            cx.dtype_in(0, is_bool, "bool")?;
            cx.dtype_in(1, is_bool, "bool")?;
            DType::Bool
        }
    };
    let shape = cx.broadcast(&[0, 1])?;
    Ok(vec![TensorType::new(out_dtype, shape)])
}

pub(crate) fn variadic(cx: &mut Ctx, op: VariadicOp) -> Result<Vec<TensorType>> {
    let n = cx.num_inputs();
    let slots: Vec<usize> = (0..n).collect();
    let dtype = match op {
        VariadicOp::Mean => cx.dtype_in(0, is_float, "a float type")?,
        _ => cx.dtype_in(0, is_numeric, "a numeric type")?,
    };
    for s in 1..n {
        cx.same_dtype(0, s)?;
    }
    let shape = cx.broadcast(&slots)?;
    Ok(vec![TensorType::new(dtype, shape)])
}

pub(crate) fn modulo(cx: &mut Ctx, fmod: bool) -> Result<Vec<TensorType>> {
    let dtype = cx.dtype_in(0, is_numeric, "a numeric type")?;
    cx.same_dtype(0, 1)?;
    if dtype.is_float() && !fmod {
        return Err(cx.err(format!(
            "{} is {dtype}: floating-point Mod needs fmod=1 (ONNX defines integer semantics only for fmod=0)",
            cx.desc(0)
        )));
    }
    let shape = cx.broadcast(&[0, 1])?;
    Ok(vec![TensorType::new(dtype, shape)])
}

pub(crate) fn clip(cx: &mut Ctx) -> Result<Vec<TensorType>> {
    let t = cx.ty(0)?;
    cx.dtype_in(0, is_numeric, "a numeric type")?;
    for slot in [1, 2] {
        if let Some(b) = cx.opt_ty(slot)? {
            cx.same_dtype(0, slot)?;
            if b.rank() > 1 || b.fixed_len().is_some_and(|n| n != 1) {
                let which = if slot == 1 { "min" } else { "max" };
                return Err(cx.err(format!("{} ({which}) has shape {b}; expected a scalar", cx.desc(slot))));
            }
        }
    }
    Ok(vec![t.clone()])
}

pub(crate) fn where_(cx: &mut Ctx) -> Result<Vec<TensorType>> {
    cx.dtype_in(0, is_bool, "bool (the condition)")?;
    cx.same_dtype(1, 2)?;
    let dtype = cx.ty(1)?.dtype;
    let shape = cx.broadcast(&[0, 1, 2])?;
    Ok(vec![TensorType::new(dtype, shape)])
}

/// Gelu, LeakyRelu, Elu, HardSigmoid: float in, same type out.
pub(crate) fn float_activation(cx: &mut Ctx) -> Result<Vec<TensorType>> {
    cx.dtype_in(0, is_float, "a float type")?;
    Ok(vec![cx.ty(0)?.clone()])
}

pub(crate) fn is_inf(cx: &mut Ctx) -> Result<Vec<TensorType>> {
    cx.dtype_in(0, is_float, "a float type")?;
    Ok(vec![TensorType::new(DType::Bool, cx.ty(0)?.shape.clone())])
}
