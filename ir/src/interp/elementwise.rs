//! Elementwise kernels: unary math, broadcast binary arithmetic and
//! comparisons, the variadic Max/Min/Sum/Mean, Mod, Clip, Where and the
//! parameterized activations.
//!
//! Float functions are evaluated in f64 and rounded once to the tensor's
//! dtype, which is at least as accurate as the ONNX reference computing in
//! the tensor's own precision. Arithmetic (Add to Div, Mod, Max/Min/Sum/
//! Mean, Clip) stays in the element type, as numpy computes it: integers
//! wrap, f32 rounds every operation. It is generic over [`Arith`]; f16/bf16
//! inputs to it are widened to f32 and the results rounded back.

use super::util::{
    broadcast_map2, broadcast_map3, match_numeric, match_numeric2, match_same2, narrow_to, optional, required,
    widen_half, wrap, KResult, Num,
};
use crate::op::{BinaryOp, GeluApproximation, Op, UnaryOp, VariadicOp};
use crate::tensor::{Element, Tensor};
use half::{bf16, f16};
use ndarray::{ArrayD, ArrayViewD};
use std::cell::Cell;

pub(crate) fn eval(op: &Op, inputs: &[Option<Tensor>]) -> KResult<Vec<Option<Tensor>>> {
    let out = match op {
        Op::Unary(u) => unary(*u, required(inputs, 0, "X")?)?,
        Op::Binary(b) => binary(*b, required(inputs, 0, "A")?, required(inputs, 1, "B")?)?,
        Op::Variadic(v) => variadic(*v, inputs)?,
        Op::Mod { fmod } => modulo(*fmod, required(inputs, 0, "A")?, required(inputs, 1, "B")?)?,
        Op::Clip => clip(required(inputs, 0, "input")?, optional(inputs, 1), optional(inputs, 2))?,
        Op::Where => where_(required(inputs, 0, "condition")?, required(inputs, 1, "X")?, required(inputs, 2, "Y")?)?,
        Op::Gelu { approximate } => {
            let approximate = *approximate;
            float_map(required(inputs, 0, "X")?, |x| gelu(x, approximate))?
        }
        Op::LeakyRelu { alpha } => {
            let alpha = *alpha as f64;
            float_map(required(inputs, 0, "X")?, |x| if x >= 0.0 { x } else { alpha * x })?
        }
        Op::Elu { alpha } => {
            let alpha = *alpha as f64;
            float_map(required(inputs, 0, "X")?, |x| if x >= 0.0 { x } else { alpha * x.exp_m1() })?
        }
        Op::HardSigmoid { alpha, beta } => {
            let (alpha, beta) = (*alpha as f64, *beta as f64);
            float_map(required(inputs, 0, "X")?, |x| (alpha * x + beta).clamp(0.0, 1.0))?
        }
        Op::IsInf { detect_negative, detect_positive } => {
            let (neg, pos) = (*detect_negative, *detect_positive);
            float_test(required(inputs, 0, "X")?, |v| v.is_infinite() && ((v > 0.0 && pos) || (v < 0.0 && neg)))?
        }
        other => return Err(format!("{} is not an elementwise op", other.name())),
    };
    Ok(vec![Some(out)])
}

// ---------------------------------------------------------------- float maps

/// Applies `f` (computed in f64) to every element of a float tensor and
/// rounds the result to the tensor's dtype.
pub(crate) fn float_map(x: &Tensor, f: impl Fn(f64) -> f64) -> KResult<Tensor> {
    Ok(match x {
        Tensor::F32(a) => Tensor::F32(a.mapv(|v| f(v as f64) as f32).into_shared()),
        Tensor::F64(a) => Tensor::F64(a.mapv(f).into_shared()),
        Tensor::F16(a) => Tensor::F16(a.mapv(|v| f16::from_f64(f(v.to_f64()))).into_shared()),
        Tensor::BF16(a) => Tensor::BF16(a.mapv(|v| bf16::from_f64(f(v.to_f64()))).into_shared()),
        other => return Err(format!("expects a float tensor, found {}", other.dtype())),
    })
}

/// Evaluates a predicate on every element of a float tensor.
fn float_test(x: &Tensor, f: impl Fn(f64) -> bool) -> KResult<Tensor> {
    Ok(match x {
        Tensor::F32(a) => wrap(a.mapv(|v| f(v as f64))),
        Tensor::F64(a) => wrap(a.mapv(f)),
        Tensor::F16(a) => wrap(a.mapv(|v| f(v.to_f64()))),
        Tensor::BF16(a) => wrap(a.mapv(|v| f(v.to_f64()))),
        other => return Err(format!("expects a float tensor, found {}", other.dtype())),
    })
}

/// The logistic function, without overflow for large |x|.
pub(crate) fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `log(1 + exp(x))` without overflow: `log1p(exp(-|x|)) + max(x, 0)`.
fn softplus(x: f64) -> f64 {
    (-x.abs()).exp().ln_1p() + x.max(0.0)
}

fn gelu(x: f64, approximate: GeluApproximation) -> f64 {
    match approximate {
        GeluApproximation::None => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
        GeluApproximation::Tanh => {
            let k = (2.0 / std::f64::consts::PI).sqrt();
            0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh())
        }
    }
}

// ---------------------------------------------------------------- arithmetic trait

/// Per-element arithmetic beyond [`Num`] for the unary and binary kernels.
trait Arith: Num {
    /// True for the signed types (floats included).
    const SIGNED: bool;
    fn abs_(self) -> Self;
    fn neg_(self) -> Self;
    fn sign_(self) -> Self;
    /// Remainder with the sign of the dividend (C `fmod`); `None` for an
    /// integer zero divisor.
    fn rem_trunc(self, o: Self) -> Option<Self>;
    /// Remainder with the sign of the divisor (Python `%`); `None` for an
    /// integer zero divisor.
    fn rem_floor(self, o: Self) -> Option<Self>;
}

macro_rules! signed_int_arith {
    ($($t:ty),*) => {$(
        impl Arith for $t {
            const SIGNED: bool = true;
            fn abs_(self) -> Self { self.wrapping_abs() }
            fn neg_(self) -> Self { self.wrapping_neg() }
            fn sign_(self) -> Self { self.signum() }
            fn rem_trunc(self, o: Self) -> Option<Self> { if o == 0 { None } else { Some(self.wrapping_rem(o)) } }
            fn rem_floor(self, o: Self) -> Option<Self> {
                let r = self.rem_trunc(o)?;
                Some(if r != 0 && ((r < 0) != (o < 0)) { r.wrapping_add(o) } else { r })
            }
        }
    )*};
}
signed_int_arith!(i8, i16, i32, i64);

impl Arith for u8 {
    const SIGNED: bool = false;
    fn abs_(self) -> Self {
        self
    }
    fn neg_(self) -> Self {
        self.wrapping_neg()
    }
    fn sign_(self) -> Self {
        (self != 0) as u8
    }
    fn rem_trunc(self, o: Self) -> Option<Self> {
        self.checked_rem(o)
    }
    fn rem_floor(self, o: Self) -> Option<Self> {
        self.checked_rem(o)
    }
}

macro_rules! float_arith {
    ($($t:ty),*) => {$(
        impl Arith for $t {
            const SIGNED: bool = true;
            fn abs_(self) -> Self { self.abs() }
            fn neg_(self) -> Self { -self }
            fn sign_(self) -> Self { if self > 0.0 { 1.0 } else if self < 0.0 { -1.0 } else { self } }
            fn rem_trunc(self, o: Self) -> Option<Self> { Some(self % o) }
            fn rem_floor(self, o: Self) -> Option<Self> {
                let r = self % o;
                Some(if r != 0.0 && ((r < 0.0) != (o < 0.0)) { r + o } else { r })
            }
        }
    )*};
}
float_arith!(f32, f64);

// ---------------------------------------------------------------- unary

fn unary(op: UnaryOp, x: &Tensor) -> KResult<Tensor> {
    use UnaryOp as U;
    match op {
        U::Not => match x {
            Tensor::Bool(a) => Ok(wrap(a.mapv(|v| !v))),
            other => Err(format!("Not expects a bool tensor, found {}", other.dtype())),
        },
        U::IsNaN => float_test(x, f64::is_nan),
        U::Abs | U::Neg | U::Sign | U::Relu => {
            let dtype = x.dtype();
            let w = widen_half(x);
            let r = match_numeric!(w.as_ref(), a => int_capable_unary(op, a.view())?,
                else return Err(format!("{} does not accept {dtype}", op.name())));
            Ok(narrow_to(r, dtype))
        }
        U::Sqrt => float_map(x, f64::sqrt),
        U::Reciprocal => float_map(x, |v| 1.0 / v),
        U::Exp => float_map(x, f64::exp),
        U::Log => float_map(x, f64::ln),
        U::Tanh => float_map(x, f64::tanh),
        U::Erf => float_map(x, libm::erf),
        U::Sigmoid => float_map(x, sigmoid),
        U::Softplus => float_map(x, softplus),
        U::Softsign => float_map(x, |v| v / (1.0 + v.abs())),
        U::Floor => float_map(x, f64::floor),
        U::Ceil => float_map(x, f64::ceil),
        U::Round => float_map(x, f64::round_ties_even),
        U::Sin => float_map(x, f64::sin),
        U::Cos => float_map(x, f64::cos),
        U::HardSwish => float_map(x, |v| v * (v / 6.0 + 0.5).clamp(0.0, 1.0)),
    }
}

/// Abs, Neg, Sign and Relu, which ONNX defines for integers too.
fn int_capable_unary<T: Arith>(op: UnaryOp, a: ArrayViewD<'_, T>) -> KResult<Tensor> {
    Ok(wrap(match op {
        UnaryOp::Abs => a.mapv(T::abs_),
        UnaryOp::Neg if T::SIGNED => a.mapv(T::neg_),
        UnaryOp::Sign => a.mapv(T::sign_),
        UnaryOp::Relu => a.mapv(|v| if v > T::zero() || v.is_nan() { v } else { T::zero() }),
        _ => return Err(format!("{} does not accept {}", op.name(), T::DTYPE)),
    }))
}

// ---------------------------------------------------------------- binary

fn binary(op: BinaryOp, a: &Tensor, b: &Tensor) -> KResult<Tensor> {
    use BinaryOp as B;
    match op {
        B::Add | B::Sub | B::Mul | B::Div => {
            let dtype = same_dtype(op.name(), a, b)?;
            let (wa, wb) = (widen_half(a), widen_half(b));
            let r = match_numeric2!(wa.as_ref(), wb.as_ref(), x, y => arith(op, x.view(), y.view())?,
                else return Err(format!("{} does not accept {dtype}", op.name())));
            Ok(narrow_to(r, dtype))
        }
        B::Pow => pow(a, b),
        B::Equal | B::Less | B::LessOrEqual | B::Greater | B::GreaterOrEqual => {
            let dtype = same_dtype(op.name(), a, b)?;
            if dtype == crate::dtype::DType::Bool && op != B::Equal {
                return Err(format!("{} does not accept bool", op.name()));
            }
            match_same2!(a, b, x, y => compare(op, x.view(), y.view()),
                else Err(format!("{} needs inputs of one dtype", op.name())))
        }
        B::And | B::Or | B::Xor => match (a, b) {
            (Tensor::Bool(x), Tensor::Bool(y)) => {
                let f = match op {
                    B::And => |p: bool, q: bool| p & q,
                    B::Or => |p: bool, q: bool| p | q,
                    _ => |p: bool, q: bool| p ^ q,
                };
                Ok(wrap(broadcast_map2(x.view(), y.view(), f)?))
            }
            _ => Err(format!("{} expects bool inputs, found {} and {}", op.name(), a.dtype(), b.dtype())),
        },
    }
}

/// The common dtype of two inputs, or an error naming both.
fn same_dtype(op: &str, a: &Tensor, b: &Tensor) -> KResult<crate::dtype::DType> {
    if a.dtype() != b.dtype() {
        return Err(format!("{op} needs inputs of one dtype, found {} and {}", a.dtype(), b.dtype()));
    }
    Ok(a.dtype())
}

fn arith<T: Arith>(op: BinaryOp, a: ArrayViewD<'_, T>, b: ArrayViewD<'_, T>) -> KResult<Tensor> {
    let r = match op {
        BinaryOp::Add => broadcast_map2(a, b, T::add)?,
        BinaryOp::Sub => broadcast_map2(a, b, T::sub)?,
        BinaryOp::Mul => broadcast_map2(a, b, T::mul)?,
        _ => {
            let by_zero = Cell::new(false);
            let r = broadcast_map2(a, b, |x, y| {
                x.div(y).unwrap_or_else(|| {
                    by_zero.set(true);
                    T::zero()
                })
            })?;
            if by_zero.get() {
                return Err("integer division by zero".into());
            }
            r
        }
    };
    Ok(wrap(r))
}

fn compare<T: Copy + PartialOrd>(op: BinaryOp, a: ArrayViewD<'_, T>, b: ArrayViewD<'_, T>) -> KResult<Tensor> {
    let r = match op {
        BinaryOp::Equal => broadcast_map2(a, b, |x, y| x == y)?,
        BinaryOp::Less => broadcast_map2(a, b, |x, y| x < y)?,
        BinaryOp::LessOrEqual => broadcast_map2(a, b, |x, y| x <= y)?,
        BinaryOp::Greater => broadcast_map2(a, b, |x, y| x > y)?,
        _ => broadcast_map2(a, b, |x, y| x >= y)?,
    };
    Ok(wrap(r))
}

/// `Pow(X, Y)`: the result has X's dtype; Y may be any numeric type. Float
/// bases compute in f64; integer bases with integer exponents use exact
/// wrapping integer powers, as numpy does; integer bases with float
/// exponents compute in f64 and truncate.
fn pow(x: &Tensor, y: &Tensor) -> KResult<Tensor> {
    let (dx, dy) = (x.dtype(), y.dtype());
    if !dx.is_numeric() || !dy.is_numeric() {
        return Err(format!("Pow expects numeric inputs, found {dx} and {dy}"));
    }
    let wy = widen_half(y);
    if dx.is_float() {
        let exp = exponents_f64(wy.as_ref());
        return Ok(match x {
            Tensor::F32(a) => wrap(broadcast_map2(a.view(), exp.view(), |b, e| (b as f64).powf(e) as f32)?),
            Tensor::F64(a) => wrap(broadcast_map2(a.view(), exp.view(), f64::powf)?),
            Tensor::F16(a) => wrap(broadcast_map2(a.view(), exp.view(), |b, e| f16::from_f64(b.to_f64().powf(e)))?),
            Tensor::BF16(a) => wrap(broadcast_map2(a.view(), exp.view(), |b, e| bf16::from_f64(b.to_f64().powf(e)))?),
            _ => return Err(format!("Pow does not accept {dx}")),
        });
    }
    let wx = widen_half(x);
    if dy.is_float() {
        let exp = exponents_f64(wy.as_ref());
        return match_numeric!(wx.as_ref(), a => int_base_float_exp(a.view(), exp.view()),
            else Err(format!("Pow does not accept {dx}")));
    }
    let exp: ArrayD<i64> = match_numeric!(wy.as_ref(), e => e.mapv(|v| v.to_i64()),
        else return Err(format!("Pow does not accept {dy}")));
    match_numeric!(wx.as_ref(), a => int_base_int_exp(a.view(), exp.view()),
        else Err(format!("Pow does not accept {dx}")))
}

fn int_base_float_exp<T: Num>(a: ArrayViewD<'_, T>, e: ArrayViewD<'_, f64>) -> KResult<Tensor> {
    Ok(wrap(broadcast_map2(a, e, |b, e| T::from_f64(b.to_f64().powf(e)))?))
}

fn int_base_int_exp<T: Num>(a: ArrayViewD<'_, T>, e: ArrayViewD<'_, i64>) -> KResult<Tensor> {
    Ok(wrap(broadcast_map2(a, e, |b, e| T::from_i64(int_pow(b.to_i64(), e)))?))
}

fn exponents_f64(y: &Tensor) -> ArrayD<f64> {
    match_numeric!(y, e => e.mapv(|v| v.to_f64()), else ArrayD::from_shape_vec(ndarray::IxDyn(y.shape()), y.to_f64s()).expect("same element count"))
}

/// `base^exp` with wrapping multiplication; a negative exponent gives the
/// truncated reciprocal (0 unless |base| is 1).
fn int_pow(base: i64, exp: i64) -> i64 {
    if exp < 0 {
        return match base {
            1 => 1,
            -1 => {
                if exp % 2 == 0 {
                    1
                } else {
                    -1
                }
            }
            _ => 0,
        };
    }
    let (mut b, mut e, mut r) = (base, exp as u64, 1i64);
    while e > 0 {
        if e & 1 == 1 {
            r = r.wrapping_mul(b);
        }
        b = b.wrapping_mul(b);
        e >>= 1;
    }
    r
}

// ---------------------------------------------------------------- variadic, Mod, Clip, Where

fn variadic(op: VariadicOp, inputs: &[Option<Tensor>]) -> KResult<Tensor> {
    let present: Vec<&Tensor> = inputs.iter().flatten().collect();
    let first = *present.first().ok_or_else(|| format!("{} needs at least one input", op.name()))?;
    let dtype = first.dtype();
    if let Some(t) = present.iter().find(|t| t.dtype() != dtype) {
        return Err(format!("{} needs inputs of one dtype, found {dtype} and {}", op.name(), t.dtype()));
    }
    let widened: Vec<Tensor> = present.iter().map(|t| widen_half(t).into_owned()).collect();
    let r = match_numeric!(&widened[0], a => {
        let mut acc = a.to_owned();
        for t in &widened[1..] {
            let b = super::util::typed_view(t, "input")?;
            acc = match op {
                VariadicOp::Max => broadcast_map2(acc.view(), b, |x, y| x.max_nan(y))?,
                VariadicOp::Min => broadcast_map2(acc.view(), b, |x, y| x.min_nan(y))?,
                VariadicOp::Sum | VariadicOp::Mean => broadcast_map2(acc.view(), b, Num::add)?,
            };
        }
        if op == VariadicOp::Mean {
            let n = Element::from_i64(widened.len() as i64);
            let by_zero = Cell::new(false);
            acc.mapv_inplace(|v| Num::div(v, n).unwrap_or_else(|| { by_zero.set(true); v }));
        }
        wrap(acc)
    }, else return Err(format!("{} does not accept {dtype}", op.name())));
    Ok(narrow_to(r, dtype))
}

/// `Mod`: with `fmod` (and always for floats, as the ONNX reference does)
/// the remainder takes the dividend's sign; otherwise the divisor's.
fn modulo(fmod: bool, a: &Tensor, b: &Tensor) -> KResult<Tensor> {
    let dtype = same_dtype("Mod", a, b)?;
    let (wa, wb) = (widen_half(a), widen_half(b));
    let r = match_numeric2!(wa.as_ref(), wb.as_ref(), x, y => {
        let by_zero = Cell::new(false);
        let trunc = fmod || dtype.is_float();
        let r = broadcast_map2(x.view(), y.view(), |p, q| {
            let r = if trunc { Arith::rem_trunc(p, q) } else { Arith::rem_floor(p, q) };
            r.unwrap_or_else(|| { by_zero.set(true); p })
        })?;
        if by_zero.get() {
            return Err("integer modulo by zero".into());
        }
        wrap(r)
    }, else return Err(format!("Mod does not accept {dtype}")));
    Ok(narrow_to(r, dtype))
}

/// `Clip(input, min?, max?)`: `min(max(x, lo), hi)`, so when `lo > hi`
/// every value becomes `hi`; NaN stays NaN.
fn clip(x: &Tensor, lo: Option<&Tensor>, hi: Option<&Tensor>) -> KResult<Tensor> {
    let dtype = x.dtype();
    let bound = |t: Option<&Tensor>, what: &str| -> KResult<Option<Tensor>> {
        match t {
            None => Ok(None),
            Some(t) if t.dtype() != dtype => Err(format!("Clip {what} is {} but input is {dtype}", t.dtype())),
            Some(t) if t.len() != 1 => Err(format!("Clip {what} must be a scalar, found shape {:?}", t.shape())),
            Some(t) => Ok(Some(widen_half(t).into_owned())),
        }
    };
    let (lo, hi) = (bound(lo, "min")?, bound(hi, "max")?);
    let wx = widen_half(x);
    let r = match_numeric!(wx.as_ref(), a => {
        let first = |t: &Option<Tensor>| -> KResult<_> {
            Ok(match t {
                Some(t) => super::util::typed_view(t, "bound")?.iter().next().copied(),
                None => None,
            })
        };
        let (lo, hi) = (first(&lo)?, first(&hi)?);
        wrap(a.mapv(|v| {
            let v = match lo { Some(l) if v < l => l, _ => v };
            match hi { Some(h) if v > h => h, _ => v }
        }))
    }, else return Err(format!("Clip does not accept {dtype}")));
    Ok(narrow_to(r, dtype))
}

fn where_(cond: &Tensor, x: &Tensor, y: &Tensor) -> KResult<Tensor> {
    let Tensor::Bool(c) = cond else {
        return Err(format!("Where condition must be bool, found {}", cond.dtype()));
    };
    let dtype = same_dtype("Where", x, y)?;
    let r = match_same2!(x, y, a, b => wrap(broadcast_map3(c.view(), a.view(), b.view(), |c, p, q| if c { p } else { q })?),
        else return Err(format!("Where does not accept {dtype}")));
    // The 4-bit variants come back as I8/U8 from `wrap`; restore the tag.
    Ok(if r.dtype() != dtype { r.cast(dtype) } else { r })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;

    fn ints(dtype: DType, v: &[i64]) -> Tensor {
        Tensor::from_i64s(dtype, &[v.len()], v)
    }

    fn floats(dtype: DType, v: &[f64]) -> Tensor {
        Tensor::from_f64s(dtype, &[v.len()], v)
    }

    #[test]
    fn integer_division_truncates_and_rejects_zero() {
        let a = ints(DType::I32, &[7, -7, 7, -7]);
        let b = ints(DType::I32, &[2, 2, -2, -2]);
        assert_eq!(binary(BinaryOp::Div, &a, &b).unwrap().to_i64s(), vec![3, -3, -3, 3]);
        assert!(binary(BinaryOp::Div, &a, &ints(DType::I32, &[0])).unwrap_err().contains("zero"));
        assert!(binary(BinaryOp::Add, &a, &floats(DType::F32, &[1.0])).is_err());
    }

    #[test]
    fn mod_follows_divisor_or_dividend_sign() {
        let a = ints(DType::I64, &[-4, 7, 5]);
        let b = ints(DType::I64, &[3, -3, 3]);
        assert_eq!(modulo(false, &a, &b).unwrap().to_i64s(), vec![2, -2, 2]);
        assert_eq!(modulo(true, &a, &b).unwrap().to_i64s(), vec![-1, 1, 2]);
        let f = modulo(true, &floats(DType::F16, &[-4.5]), &floats(DType::F16, &[2.0])).unwrap();
        assert_eq!((f.dtype(), f.to_f64s()), (DType::F16, vec![-0.5]));
    }

    #[test]
    fn pow_keeps_the_base_dtype() {
        let r = pow(&ints(DType::I64, &[2, 3, 2]), &ints(DType::I32, &[10, 3, -1])).unwrap();
        assert_eq!((r.dtype(), r.to_i64s()), (DType::I64, vec![1024, 27, 0]));
        let r = pow(&ints(DType::I32, &[2, 9]), &floats(DType::F32, &[0.5, 0.5])).unwrap();
        assert_eq!(r.to_i64s(), vec![1, 3]);
        let r = pow(&floats(DType::F32, &[2.0]), &ints(DType::I64, &[3])).unwrap();
        assert_eq!((r.dtype(), r.to_f64s()), (DType::F32, vec![8.0]));
    }

    #[test]
    fn clip_bounds_are_optional_and_max_wins() {
        let x = floats(DType::F32, &[-2.0, 0.5, 3.0, f64::NAN]);
        let r = clip(&x, Some(&Tensor::scalar_f32(0.0)), None).unwrap().to_f64s();
        assert_eq!(r[..3], [0.0, 0.5, 3.0]);
        assert!(r[3].is_nan());
        let r = clip(&x, Some(&Tensor::scalar_f32(2.0)), Some(&Tensor::scalar_f32(1.0))).unwrap().to_f64s();
        assert_eq!(r[..3], [1.0, 1.0, 1.0]);
        let r = clip(&ints(DType::I8, &[-100, 100]), None, Some(&Tensor::from_i64s(DType::I8, &[], &[5]))).unwrap();
        assert_eq!(r.to_i64s(), vec![-100, 5]);
    }

    #[test]
    fn where_broadcasts_three_ways() {
        let c = Tensor::Bool(ndarray::arr2(&[[true], [false]]).into_dyn().into_shared());
        let r = where_(&c, &ints(DType::I64, &[1, 2]), &Tensor::from_i64s(DType::I64, &[], &[0])).unwrap();
        assert_eq!((r.shape().to_vec(), r.to_i64s()), (vec![2, 2], vec![1, 2, 0, 0]));
    }

    #[test]
    fn float_functions_are_stable() {
        let x = floats(DType::F32, &[-1000.0, 1000.0, 0.5, 1.5, 2.5]);
        assert_eq!(unary(UnaryOp::Sigmoid, &x).unwrap().to_f64s()[..2], [0.0, 1.0]);
        assert_eq!(unary(UnaryOp::Softplus, &x).unwrap().to_f64s()[..2], [0.0, 1000.0]);
        assert_eq!(unary(UnaryOp::Round, &x).unwrap().to_f64s()[2..], [0.0, 2.0, 2.0]);
        assert!(
            (unary(UnaryOp::Erf, &floats(DType::F64, &[0.5])).unwrap().to_f64s()[0] - 0.520_499_877_813_046_5).abs()
                < 1e-15
        );
        let g = eval(&Op::Gelu { approximate: GeluApproximation::None }, &[Some(floats(DType::F64, &[1.0]))]).unwrap();
        assert!((g[0].as_ref().unwrap().to_f64s()[0] - 0.841_344_746_068_542_9).abs() < 1e-12);
    }

    #[test]
    fn max_min_propagate_nan_and_mean_divides() {
        let a = Some(floats(DType::F32, &[1.0, f64::NAN]));
        let b = Some(floats(DType::F32, &[2.0, 0.0]));
        let r = variadic(VariadicOp::Max, &[a.clone(), b.clone()]).unwrap().to_f64s();
        assert_eq!(r[0], 2.0);
        assert!(r[1].is_nan());
        assert_eq!(variadic(VariadicOp::Mean, &[b.clone(), b]).unwrap().to_f64s(), vec![2.0, 0.0]);
    }

    #[test]
    fn integer_unary_ops() {
        assert_eq!(unary(UnaryOp::Abs, &ints(DType::I8, &[-128, -3])).unwrap().to_i64s(), vec![-128, 3]);
        assert_eq!(unary(UnaryOp::Sign, &ints(DType::I16, &[-9, 0, 4])).unwrap().to_i64s(), vec![-1, 0, 1]);
        assert!(unary(UnaryOp::Neg, &ints(DType::U8, &[1])).is_err());
        assert!(unary(UnaryOp::Exp, &ints(DType::I32, &[1])).is_err());
    }
}
