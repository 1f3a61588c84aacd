//! Partial value propagation for small integer tensors.
//!
//! Exported graphs often compute shapes at run time: `Shape → Gather →
//! Unsqueeze → Concat → Reshape`, `Shape → Slice`, `Range` up to a length read
//! from a shape, `Where(Equal(shape, -1), ones, shape) → Expand`. To give such
//! Reshapes and Expands exact (possibly symbolic) result shapes, inference
//! tracks the contents of every 0-D or 1-D value with at most
//! [`MAX_TRACKED`] elements as one optional polynomial per element: a
//! constant, a polynomial over dim symbols (`batch`, `seq+past`), or unknown.
//!
//! Integer arithmetic on symbolic elements assumes they are non-negative
//! sizes, so integer `Div` of polynomials is floor division (ONNX truncates,
//! which agrees on non-negative operands). Comparisons are decided only when
//! provable: equal polynomials, a constant difference, or a size against a
//! negative constant.

use super::dims::{is_nonneg, poly_add, poly_floor_div, poly_mul, poly_neg, poly_sub};
use crate::dim::Poly;
use crate::dtype::DType;
use crate::graph::{Graph, Node};
use crate::op::{BinaryOp, Op, ReduceKind, UnaryOp, VariadicOp};
use crate::tensor::Tensor;
use crate::types::TensorType;

/// Values with more elements than this are not tracked: shape vectors are
/// short, and tracking big tensors would cost memory for nothing.
pub const MAX_TRACKED: usize = 64;

/// Known contents of a small value, row-major; `None` where an element is
/// unknown. The rank (0 or 1) comes from the value's type.
pub(crate) type Elems = Vec<Option<Poly>>;

/// True when values of this type are tracked.
pub(crate) fn is_tracked_type(ty: &TensorType) -> bool {
    ty.rank() <= 1 && ty.fixed_len().is_some_and(|n| n <= MAX_TRACKED)
}

/// Contents of a constant tensor. Float elements are kept only when they
/// are exact integers, since tracking exists for shape arithmetic.
pub(crate) fn from_tensor(t: &Tensor) -> Option<Elems> {
    if t.shape().len() > 1 || t.len() > MAX_TRACKED {
        return None;
    }
    if t.dtype().is_float() {
        Some(
            t.to_f64s()
                .into_iter()
                .map(|v| (v.fract() == 0.0 && v.abs() < 9.0e15).then(|| Poly::constant(v as i64)))
                .collect(),
        )
    } else {
        Some(t.to_i64s().into_iter().map(|v| Some(Poly::constant(v))).collect())
    }
}

/// The elements as constants, when all are known constants.
pub(crate) fn constants(e: &Elems) -> Option<Vec<i64>> {
    e.iter().map(|p| p.as_ref().and_then(|p| p.as_constant())).collect()
}

/// Computes what can be known of a node's outputs from its inputs'
/// contents (`ins`, one per input slot) and the stored types. One entry per
/// output slot; the caller checks lengths against the output types.
pub(crate) fn propagate(g: &Graph, node: &Node, ins: &[Option<Elems>]) -> Vec<Option<Elems>> {
    let n_out = node.outputs.len();
    if let Op::Split { .. } = node.op {
        return split(ins.first().cloned().flatten(), node, g);
    }
    let mut out = vec![None; n_out];
    if n_out > 0 {
        out[0] = first_output(g, node, ins);
    }
    out
}

/// The contents of output 0.
fn first_output(g: &Graph, node: &Node, ins: &[Option<Elems>]) -> Option<Elems> {
    let input = |slot: usize| ins.get(slot).cloned().flatten();
    let in_ty = |slot: usize| node.input(slot).and_then(|v| g.value(v).ty.as_ref());
    let out_ty = |slot: usize| node.output(slot).and_then(|v| g.value(v).ty.as_ref());
    let out_dtype = out_ty(0).map(|t| t.dtype).or_else(|| in_ty(0).map(|t| t.dtype));
    let first = match &node.op {
        Op::Constant { value } => from_tensor(value),
        Op::Shape { start, end } => in_ty(0).map(|t| {
            let (s, e) = shape_range(t.rank(), *start, *end);
            t.shape[s..e].iter().map(|d| Some(d.to_poly())).collect()
        }),
        Op::Size => in_ty(0).and_then(|t| super::dims::product(&t.shape)).map(|d| vec![Some(d.to_poly())]),
        Op::Identity | Op::Unsqueeze | Op::Squeeze | Op::Reshape { .. } | Op::Dropout { .. } => input(0),
        Op::Cast { to, .. } => input(0).map(|e| cast(e, *to)),
        Op::CastLike { .. } => match (input(0), in_ty(1)) {
            (Some(e), Some(t)) => Some(cast(e, t.dtype)),
            _ => None,
        },
        Op::Concat { .. } => {
            let mut all = Vec::new();
            for slot in 0..node.inputs.len() {
                all.extend(input(slot)?);
            }
            (all.len() <= MAX_TRACKED).then_some(all)
        }
        Op::Gather { axis } => gather(input(0), input(1), *axis),
        Op::Slice => slice(input(0), input(1), input(2), input(3), input(4)),
        Op::Binary(b) => match (input(0), input(1)) {
            (Some(a), Some(c)) => {
                let float = in_ty(0).is_some_and(|t| t.dtype.is_float());
                zip2(&a, &c, |x, y| binary(*b, x, y, float))
            }
            _ => None,
        },
        Op::Mod { fmod } => match (input(0), input(1)) {
            (Some(a), Some(c)) => zip2(&a, &c, |x, y| {
                let (x, y) = (x?.as_constant()?, y?.as_constant()?);
                let r = x.checked_rem(y)?;
                // Without fmod the result takes the divisor's sign (Python's %).
                let r = if !*fmod && r != 0 && (r < 0) != (y < 0) { r + y } else { r };
                Some(Poly::constant(r))
            }),
            _ => None,
        },
        Op::Unary(u) => input(0).map(|e| e.into_iter().map(|x| unary(*u, x?)).collect()),
        Op::Variadic(v) => {
            let mut acc = input(0)?;
            for slot in 1..node.inputs.len() {
                acc = zip2(&acc, &input(slot)?, |x, y| variadic(*v, x?, y?))?;
            }
            match v {
                VariadicOp::Mean if node.inputs.len() > 1 => None,
                _ => Some(acc),
            }
        }
        Op::Where => where_(input(0), input(1), input(2)),
        Op::ConstantOfShape { value } => constant_of_shape(input(0), value.as_ref()),
        Op::Range => range(input(0), input(1), input(2)),
        Op::Reduce { kind, axes, noop_with_empty_axes, .. } => {
            reduce(*kind, input(0), axes.as_deref(), input(1), *noop_with_empty_axes)
        }
        _ => None,
    };
    // Booleans are tracked as 0/1 whatever produced them.
    first.map(|e| match out_dtype {
        Some(DType::Bool) => e.into_iter().map(|x| x.and_then(|p| truthy(&p).map(Poly::constant))).collect(),
        _ => e,
    })
}

/// Normalized `[start, end)` of a `Shape` op over a shape of `rank` dims.
pub(crate) fn shape_range(rank: usize, start: i64, end: Option<i64>) -> (usize, usize) {
    let r = rank as i64;
    let norm = |v: i64| if v < 0 { (v + r).max(0) } else { v.min(r) } as usize;
    let s = norm(start);
    let e = norm(end.unwrap_or(r));
    (s, e.max(s))
}

/// 0/1 for a known boolean-ish constant.
fn truthy(p: &Poly) -> Option<i64> {
    p.as_constant().map(|c| (c != 0) as i64)
}

fn cast(e: Elems, to: DType) -> Elems {
    e.into_iter()
        .map(|x| {
            let x = x?;
            match (to, x.as_constant()) {
                (DType::Bool, Some(c)) => Some(Poly::constant((c != 0) as i64)),
                (DType::Bool, None) => None,
                (_, Some(c)) if !fits(to, c) => None,
                _ => Some(x),
            }
        })
        .collect()
}

/// True when `c` is representable in `dtype` (casting keeps it unchanged).
fn fits(dtype: DType, c: i64) -> bool {
    match dtype {
        DType::I8 => i8::try_from(c).is_ok(),
        DType::U8 => u8::try_from(c).is_ok(),
        DType::I16 => i16::try_from(c).is_ok(),
        DType::I32 => i32::try_from(c).is_ok(),
        DType::I4 => (-8..=7).contains(&c),
        DType::U4 => (0..=15).contains(&c),
        DType::I64 => true,
        DType::F16 | DType::BF16 => c.unsigned_abs() <= 256,
        DType::F32 => c.unsigned_abs() <= 1 << 24,
        DType::F64 => c.unsigned_abs() <= 1 << 53,
        DType::Bool => c == 0 || c == 1,
    }
}

fn gather(data: Option<Elems>, indices: Option<Elems>, axis: i64) -> Option<Elems> {
    let (data, indices) = (data?, indices?);
    if axis != 0 && axis != -1 {
        return None;
    }
    let n = data.len() as i64;
    Some(
        indices
            .into_iter()
            .map(|i| {
                let i = i?.as_constant()?;
                let i = if i < 0 { i + n } else { i };
                if (0..n).contains(&i) {
                    data[i as usize].clone()
                } else {
                    None
                }
            })
            .collect(),
    )
}

fn slice(
    data: Option<Elems>,
    starts: Option<Elems>,
    ends: Option<Elems>,
    axes: Option<Elems>,
    steps: Option<Elems>,
) -> Option<Elems> {
    let data = data?;
    let starts = constants(&starts?)?;
    let ends = constants(&ends?)?;
    if starts.len() != 1 || ends.len() != 1 {
        return None;
    }
    if let Some(axes) = axes {
        let axes = constants(&axes)?;
        if axes != [0] && axes != [-1] {
            return None;
        }
    }
    let step = match steps {
        Some(s) => *constants(&s)?.first()?,
        None => 1,
    };
    let (start, len) = fixed_slice(data.len() as i64, starts[0], ends[0], step)?;
    Some((0..len).map(|i| data[(start + i * step) as usize].clone()).collect())
}

/// ONNX Slice on one axis of fixed length `n`: the first index and the
/// number of elements taken. `None` for a zero step.
pub(crate) fn fixed_slice(n: i64, start: i64, end: i64, step: i64) -> Option<(i64, i64)> {
    if step == 0 {
        return None;
    }
    if n <= 0 {
        return Some((0, 0));
    }
    let (n, start, end, step) = (n as i128, start as i128, end as i128, step as i128);
    let norm = |v: i128| if v < 0 { v + n } else { v };
    let (s, e) = if step > 0 {
        (norm(start).clamp(0, n), norm(end).clamp(0, n))
    } else {
        (norm(start).clamp(0, n - 1), norm(end).clamp(-1, n - 1))
    };
    let len = if step > 0 { (e - s + step - 1) / step } else { (s - e + (-step) - 1) / (-step) };
    Some((s as i64, len.max(0) as i64))
}

/// Applies `f` elementwise with length-1 broadcasting.
fn zip2(a: &Elems, b: &Elems, f: impl Fn(Option<&Poly>, Option<&Poly>) -> Option<Poly>) -> Option<Elems> {
    let n = match (a.len(), b.len()) {
        (x, y) if x == y => x,
        (1, y) => y,
        (x, 1) => x,
        _ => return None,
    };
    fn at(e: &Elems, i: usize) -> Option<&Poly> {
        if e.len() == 1 {
            e[0].as_ref()
        } else {
            e[i].as_ref()
        }
    }
    Some((0..n).map(|i| f(at(a, i), at(b, i))).collect())
}

fn binary(op: BinaryOp, a: Option<&Poly>, b: Option<&Poly>, float: bool) -> Option<Poly> {
    let (a, b) = (a?, b?);
    let bool_poly = |v: bool| Some(Poly::constant(v as i64));
    match op {
        BinaryOp::Add => poly_add(a, b),
        BinaryOp::Sub => poly_sub(a, b),
        BinaryOp::Mul => poly_mul(a, b),
        BinaryOp::Div => match (a.as_constant(), b.as_constant()) {
            (_, Some(0)) => None,
            (Some(x), Some(y)) if float => (x.checked_rem(y)? == 0).then(|| Poly::constant(x / y)),
            (Some(x), Some(y)) => x.checked_div(y).map(Poly::constant),
            _ if float => {
                let q = poly_floor_div(a, b)?;
                (poly_mul(&q, b)? == *a).then_some(q)
            }
            _ => poly_floor_div(a, b),
        },
        BinaryOp::Pow => {
            let (x, y) = (a.as_constant()?, b.as_constant()?);
            let y = u32::try_from(y).ok()?;
            x.checked_pow(y).map(Poly::constant)
        }
        BinaryOp::Equal => bool_poly(compare(a, b)? == std::cmp::Ordering::Equal),
        BinaryOp::Less => bool_poly(compare(a, b)? == std::cmp::Ordering::Less),
        BinaryOp::Greater => bool_poly(compare(a, b)? == std::cmp::Ordering::Greater),
        BinaryOp::LessOrEqual => bool_poly(compare(a, b)? != std::cmp::Ordering::Greater),
        BinaryOp::GreaterOrEqual => bool_poly(compare(a, b)? != std::cmp::Ordering::Less),
        BinaryOp::And => bool_poly(truthy(a)? == 1 && truthy(b)? == 1),
        BinaryOp::Or => bool_poly(truthy(a)? == 1 || truthy(b)? == 1),
        BinaryOp::Xor => bool_poly(truthy(a)? != truthy(b)?),
    }
}

/// Orders two elements when provable: equal polynomials, a constant
/// difference, or a size (non-negative polynomial) against a negative
/// constant.
fn compare(a: &Poly, b: &Poly) -> Option<std::cmp::Ordering> {
    use std::cmp::Ordering;
    if a == b {
        return Some(Ordering::Equal);
    }
    if let Some(d) = poly_sub(a, b).and_then(|d| d.as_constant()) {
        return Some(d.cmp(&0));
    }
    match (a.as_constant(), b.as_constant()) {
        (None, Some(c)) if c < 0 && is_nonneg(a) => Some(Ordering::Greater),
        (Some(c), None) if c < 0 && is_nonneg(b) => Some(Ordering::Less),
        _ => None,
    }
}

fn unary(op: UnaryOp, x: Poly) -> Option<Poly> {
    match op {
        UnaryOp::Neg => poly_neg(&x),
        // Tracked elements are integers, so rounding keeps them.
        UnaryOp::Floor | UnaryOp::Ceil | UnaryOp::Round => Some(x),
        UnaryOp::Abs => match x.as_constant() {
            Some(c) => c.checked_abs().map(Poly::constant),
            None => is_nonneg(&x).then_some(x),
        },
        UnaryOp::Relu => match x.as_constant() {
            Some(c) => Some(Poly::constant(c.max(0))),
            None => is_nonneg(&x).then_some(x),
        },
        UnaryOp::Sign => x.as_constant().map(|c| Poly::constant(c.signum())),
        UnaryOp::Not => truthy(&x).map(|c| Poly::constant(1 - c)),
        _ => None,
    }
}

fn variadic(op: VariadicOp, a: &Poly, b: &Poly) -> Option<Poly> {
    use std::cmp::Ordering;
    match op {
        VariadicOp::Sum | VariadicOp::Mean => poly_add(a, b),
        VariadicOp::Max => match compare(a, b)? {
            Ordering::Less => Some(b.clone()),
            _ => Some(a.clone()),
        },
        VariadicOp::Min => match compare(a, b)? {
            Ordering::Greater => Some(b.clone()),
            _ => Some(a.clone()),
        },
    }
}

fn where_(cond: Option<Elems>, x: Option<Elems>, y: Option<Elems>) -> Option<Elems> {
    let (cond, x, y) = (cond?, x?, y?);
    let n = [cond.len(), x.len(), y.len()].into_iter().max()?;
    for len in [cond.len(), x.len(), y.len()] {
        if len != n && len != 1 {
            return None;
        }
    }
    let at = |e: &Elems, i: usize| if e.len() == 1 { e[0].clone() } else { e[i].clone() };
    Some(
        (0..n)
            .map(|i| match at(&cond, i).as_ref().and_then(truthy) {
                Some(1) => at(&x, i),
                Some(_) => at(&y, i),
                None => {
                    let (a, b) = (at(&x, i), at(&y, i));
                    if a == b {
                        a
                    } else {
                        None
                    }
                }
            })
            .collect(),
    )
}

fn constant_of_shape(shape: Option<Elems>, value: Option<&Tensor>) -> Option<Elems> {
    let shape = constants(&shape?)?;
    let fill = match value {
        Some(t) => from_tensor(t)?.first().cloned()?,
        None => Some(Poly::constant(0)),
    };
    let len = match shape.as_slice() {
        [] => 1,
        [n] => usize::try_from(*n).ok()?,
        _ => return None,
    };
    (len <= MAX_TRACKED).then(|| vec![fill; len])
}

fn range(start: Option<Elems>, limit: Option<Elems>, delta: Option<Elems>) -> Option<Elems> {
    let scalar = |e: Option<Elems>| -> Option<i64> {
        let e = e?;
        match e.as_slice() {
            [Some(p)] => p.as_constant(),
            _ => None,
        }
    };
    let (s, l, d) = (scalar(start)?, scalar(limit)?, scalar(delta)?);
    let n = range_len(s, l, d)?;
    if n > MAX_TRACKED as i64 {
        return None;
    }
    Some((0..n).map(|i| Some(Poly::constant(s + i * d))).collect())
}

/// `max(ceil((limit - start) / delta), 0)`; `None` for a zero delta.
pub(crate) fn range_len(start: i64, limit: i64, delta: i64) -> Option<i64> {
    if delta == 0 {
        return None;
    }
    let (s, l, d) = (start as i128, limit as i128, delta as i128);
    let span = l - s;
    let n = if d > 0 { (span + d - 1).div_euclid(d) } else { (-span + (-d) - 1).div_euclid(-d) };
    i64::try_from(n.max(0)).ok()
}

fn reduce(
    kind: ReduceKind,
    data: Option<Elems>,
    attr_axes: Option<&[i64]>,
    input_axes: Option<Elems>,
    noop_with_empty_axes: bool,
) -> Option<Elems> {
    let data = data?;
    let axes = match (attr_axes, input_axes) {
        (Some(a), _) => a.to_vec(),
        (None, Some(e)) => constants(&e)?,
        (None, None) => Vec::new(),
    };
    if axes.is_empty() && noop_with_empty_axes {
        return Some(data);
    }
    if !(axes.is_empty() || axes == [0] || axes == [-1]) {
        return None;
    }
    let mut it = data.into_iter();
    let mut acc = it.next()??;
    for x in it {
        let x = x?;
        acc = match kind {
            ReduceKind::Sum => poly_add(&acc, &x)?,
            ReduceKind::Prod => poly_mul(&acc, &x)?,
            ReduceKind::Max => variadic(VariadicOp::Max, &acc, &x)?,
            ReduceKind::Min => variadic(VariadicOp::Min, &acc, &x)?,
            _ => return None,
        };
    }
    match kind {
        ReduceKind::Sum | ReduceKind::Prod | ReduceKind::Max | ReduceKind::Min => Some(vec![Some(acc)]),
        _ => None,
    }
}

fn split(data: Option<Elems>, node: &Node, g: &Graph) -> Vec<Option<Elems>> {
    let n_out = node.outputs.len();
    let Some(data) = data else { return vec![None; n_out] };
    let mut out = Vec::with_capacity(n_out);
    let mut at = 0usize;
    for slot in 0..n_out {
        let len = node
            .output(slot)
            .and_then(|v| g.value(v).ty.as_ref())
            .filter(|t| t.rank() == 1)
            .and_then(|t| t.fixed_len());
        match len {
            Some(len) if at + len <= data.len() => {
                out.push(Some(data[at..at + len].to_vec()));
                at += len;
            }
            _ => return vec![None; n_out],
        }
    }
    out
}
