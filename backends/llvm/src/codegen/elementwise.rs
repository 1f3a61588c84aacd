//! Fused elementwise kernels: one loop nest over the group's output shape
//! that computes every member op per element in registers.
//!
//! Operands broadcast numpy-style: each leaf has a stride per output axis
//! (0 where it broadcasts). Axes of size 1 are dropped and adjacent axes
//! that are contiguous for every operand are merged, so `x[64,768] +
//! bias[768]` is a 2-deep nest whose inner loop is unit-stride for `x` and
//! the output and unit-stride for `bias`, and `x + y` of equal shapes is a
//! single loop. Single-element constants are inlined as immediates.

use super::{Cg, Val};
use crate::error::{BackendError, Result};
use crate::plan::{step_io, Loc, Plan};
use inkwell::values::{BasicValueEnum, FunctionValue, IntValue, PointerValue};
use inkwell::{FloatPredicate, IntPredicate};
use kiln_ir::dtype::DType;
use kiln_ir::graph::{NodeId, ValueId};
use kiln_ir::op::{BinaryOp, GeluApproximation, Op, UnaryOp, VariadicOp};
use std::collections::BTreeMap;

type BV<'ctx> = BasicValueEnum<'ctx>;

/// How a leaf reaches the loop body.
enum Leaf<'ctx> {
    /// A buffer (its strides are per operand in the loop nest).
    Buffer { ptr: PointerValue<'ctx>, dtype: DType },
    /// A single-element constant, inlined.
    Scalar(Val<'ctx>),
}

/// Row-major strides of `shape`.
pub(crate) fn contiguous_strides(shape: &[usize]) -> Vec<i64> {
    let mut s = vec![0i64; shape.len()];
    let mut acc = 1i64;
    for i in (0..shape.len()).rev() {
        s[i] = acc;
        acc *= shape[i] as i64;
    }
    s
}

/// Strides of `shape` broadcast to `out` (right-aligned; 0 where broadcast).
pub(crate) fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<i64> {
    let own = contiguous_strides(shape);
    let lead = out.len() - shape.len();
    (0..out.len()).map(|i| if i < lead || shape[i - lead] == 1 { 0 } else { own[i - lead] }).collect()
}

/// Drops size-1 axes and merges adjacent axes contiguous for every operand.
/// Returns the loop sizes and, per operand, its strides.
pub(crate) fn collapse(sizes: &[usize], strides: &[Vec<i64>]) -> (Vec<usize>, Vec<Vec<i64>>) {
    let mut out_sizes: Vec<usize> = Vec::new();
    let mut out_strides: Vec<Vec<i64>> = vec![Vec::new(); strides.len()];
    for (axis, &n) in sizes.iter().enumerate() {
        if n == 1 {
            continue;
        }
        let mergeable = !out_sizes.is_empty()
            && strides.iter().zip(&out_strides).all(|(s, o)| *o.last().expect("non-empty") == s[axis] * n as i64);
        if mergeable {
            *out_sizes.last_mut().expect("non-empty") *= n;
            for (s, o) in strides.iter().zip(out_strides.iter_mut()) {
                *o.last_mut().expect("non-empty") = s[axis];
            }
        } else {
            out_sizes.push(n);
            for (s, o) in strides.iter().zip(out_strides.iter_mut()) {
                o.push(s[axis]);
            }
        }
    }
    (out_sizes, out_strides)
}

/// Emits the kernel of a fused group; returns it with the buffers it takes.
pub(crate) fn emit_fused<'ctx>(
    cg: &Cg<'ctx>,
    plan: &Plan,
    step: usize,
    nodes: &[NodeId],
    out: ValueId,
) -> Result<(FunctionValue<'ctx>, Vec<Loc>)> {
    let graph = &plan.graph;
    let (reads, _) = step_io(graph, &crate::plan::Step::Fused { nodes: nodes.to_vec(), out });
    let out_ty = plan.ty(out).clone();
    let buffered: Vec<ValueId> = reads.iter().copied().filter(|&v| inline_scalar(plan, v).is_none()).collect();
    let root = graph.node(*nodes.last().expect("a group has a root"));
    // Integer division can fail on its data (a zero divisor): such a group
    // is a checked kernel that records the fault and returns it.
    let divides = nodes.iter().any(|&n| {
        let node = graph.node(n);
        matches!(node.op, Op::Mod { .. } | Op::Binary(BinaryOp::Div))
            && node.input(0).is_some_and(|v| !plan.ty(v).dtype.is_float())
    });

    let mut strides = vec![contiguous_strides(&out_ty.shape)];
    for &v in &buffered {
        strides.push(broadcast_strides(&plan.ty(v).shape, &out_ty.shape));
    }
    let (sizes, strides) = collapse(&out_ty.shape, &strides);
    // Threads take the outermost loop's iterations; a single flat loop is
    // cut into chunks first. Either way each element is computed exactly as
    // on one thread.
    let total = out_ty.len();
    let (items, chunk) = match sizes.as_slice() {
        [] => (usize::from(total > 0), None),
        [n] => (n.div_ceil(ELEMENTWISE_CHUNK), Some(ELEMENTWISE_CHUNK)),
        [n, ..] => (*n, None),
    };
    let per_item = total.checked_div(items).unwrap_or(0);
    let name = format!("k{step}_fused_{}", root.op.name());
    let k = if divides {
        cg.checked_parallel_kernel_fn(&name, 1 + buffered.len(), items, per_item * nodes.len())
    } else {
        cg.parallel_kernel_fn(&name, 1 + buffered.len(), items, per_item * nodes.len())
    };
    let f = k.f;
    if divides {
        let slot = cg.entry_alloca(f, cg.ctx.bool_type().into(), "fault")?;
        cg.b.build_store(slot, cg.ctx.bool_type().const_zero())?;
        cg.fault.set(Some(slot));
    }
    let out_ptr = cg.param(f, 0);
    let mut leaves: BTreeMap<ValueId, Leaf> = BTreeMap::new();
    for (i, &v) in buffered.iter().enumerate() {
        let ptr = cg.param(f, 1 + i as u32);
        leaves.insert(v, Leaf::Buffer { ptr, dtype: plan.ty(v).dtype });
    }
    for &v in &reads {
        if let Some(t) = inline_scalar(plan, v) {
            let val = scalar_const(cg, t).map_err(|m| node_err(plan, nodes, &m))?;
            leaves.insert(v, Leaf::Scalar(val));
        }
    }

    if total > 0 {
        let zero = cg.i64c(0);
        let at = |i: IntValue<'ctx>| -> Result<Vec<IntValue<'ctx>>> {
            strides.iter().map(|s| cg.affine(i, s[0], zero)).collect()
        };
        cg.for_items(&k, &mut |item| match (sizes.len(), chunk) {
            (0, _) => emit_level(
                cg,
                plan,
                f,
                nodes,
                out,
                out_ptr,
                &sizes,
                &strides,
                &leaves,
                &buffered,
                0,
                vec![zero; 1 + buffered.len()],
            ),
            (_, Some(chunk)) => {
                let first = cg.mul(item, chunk as i64)?;
                let len = min_left(cg, chunk as i64, total as i64, first)?;
                cg.for_range(f, len, &mut |j| {
                    let offsets = at(cg.add(first, j)?)?;
                    emit_level(cg, plan, f, nodes, out, out_ptr, &sizes, &strides, &leaves, &buffered, 1, offsets)
                })
            }
            (_, None) => {
                let offsets = at(item)?;
                emit_level(cg, plan, f, nodes, out, out_ptr, &sizes, &strides, &leaves, &buffered, 1, offsets)
            }
        })?;
    }
    match cg.fault.take() {
        Some(slot) => {
            let failed = cg.b.build_load(cg.ctx.bool_type(), slot, "fault")?.into_int_value();
            let status = cg.b.build_int_z_extend(failed, cg.ctx.i32_type(), "status")?;
            cg.b.build_return(Some(&status))?;
        }
        None => cg.kernel_return(f)?,
    }
    let mut locs = vec![plan.loc(out)];
    locs.extend(buffered.iter().map(|&v| plan.loc(v)));
    Ok((cg.finish_parallel(k)?, locs))
}

/// Elements per chunk when a fused kernel's single flat loop is split
/// across threads: 64 KiB of f32 per operand, long enough that the
/// vectorized loop's entry and tail cost nothing next to it.
const ELEMENTWISE_CHUNK: usize = 16384;

/// `min(block, total - start)` as an i64 value; `block` when it divides
/// `total` (every chunk is full).
pub(crate) fn min_left<'ctx>(cg: &Cg<'ctx>, block: i64, total: i64, start: IntValue<'ctx>) -> Result<IntValue<'ctx>> {
    if total <= block {
        return Ok(cg.i64c(total));
    }
    if total % block == 0 {
        return Ok(cg.i64c(block));
    }
    let left = cg.b.build_int_nsw_sub(cg.i64c(total), start, "left")?;
    let small = cg.b.build_int_compare(IntPredicate::SLT, left, cg.i64c(block), "tail")?;
    Ok(cg.b.build_select(small, left, cg.i64c(block), "n")?.into_int_value())
}

fn node_err(plan: &Plan, nodes: &[NodeId], message: &str) -> BackendError {
    let n = plan.graph.node(*nodes.last().expect("a group has a root"));
    BackendError::node(&n.name, n.op.name(), message)
}

/// The data of a one-element compile-time constant.
fn inline_scalar(plan: &Plan, v: ValueId) -> Option<&kiln_ir::tensor::Tensor> {
    plan.known(v).filter(|t| t.len() == 1 && !matches!(t.dtype(), DType::I4 | DType::U4))
}

fn scalar_const<'ctx>(cg: &Cg<'ctx>, t: &kiln_ir::tensor::Tensor) -> Result<Val<'ctx>, String> {
    let dtype = t.dtype();
    let ty = cg.compute_type(dtype)?;
    let v: BV = if dtype.is_float() {
        ty.into_float_type().const_float(t.to_f64s()[0]).into()
    } else {
        ty.into_int_type().const_int(t.to_i64s()[0] as u64, true).into()
    };
    Ok((v, dtype))
}

#[allow(clippy::too_many_arguments)]
fn emit_level<'ctx>(
    cg: &Cg<'ctx>,
    plan: &Plan,
    f: FunctionValue<'ctx>,
    nodes: &[NodeId],
    out: ValueId,
    out_ptr: PointerValue<'ctx>,
    sizes: &[usize],
    strides: &[Vec<i64>],
    leaves: &BTreeMap<ValueId, Leaf<'ctx>>,
    buffered: &[ValueId],
    level: usize,
    offsets: Vec<IntValue<'ctx>>,
) -> Result<()> {
    if level == sizes.len() {
        // One element: evaluate the group at these offsets.
        let mut vals: BTreeMap<ValueId, Val> = BTreeMap::new();
        for (i, &v) in buffered.iter().enumerate() {
            if let Some(Leaf::Buffer { ptr, dtype, .. }) = leaves.get(&v) {
                vals.insert(v, (cg.load(*ptr, *dtype, offsets[1 + i])?, *dtype));
            }
        }
        for (v, leaf) in leaves {
            if let Leaf::Scalar(val) = leaf {
                vals.insert(*v, *val);
            }
        }
        for &n in nodes {
            let node = plan.graph.node(n);
            let args: Vec<Option<Val>> =
                crate::plan::data_inputs(node).iter().map(|v| v.and_then(|v| vals.get(&v).copied())).collect();
            let o = node.output(0).expect("elementwise nodes have an output");
            let dtype = plan.ty(o).dtype;
            let r = emit_op(cg, &node.op, &args, dtype).map_err(|e| match e {
                OpError::Unsupported(m) => BackendError::unsupported(&node.name, node.op.name(), m),
                OpError::Backend(b) => b,
            })?;
            vals.insert(o, (r, dtype));
        }
        let (v, _) = vals[&out];
        return cg.store(out_ptr, plan.ty(out).dtype, offsets[0], v);
    }
    cg.for_n(f, sizes[level], &mut |i| {
        let next: Vec<IntValue> =
            offsets.iter().zip(strides).map(|(&o, s)| cg.affine(i, s[level], o)).collect::<Result<_>>()?;
        emit_level(cg, plan, f, nodes, out, out_ptr, sizes, strides, leaves, buffered, level + 1, next)
    })
}

/// Why an op could not be emitted.
pub(crate) enum OpError {
    /// No lowering for this op/dtype combination.
    Unsupported(String),
    /// LLVM failed.
    Backend(BackendError),
}

impl From<BackendError> for OpError {
    fn from(e: BackendError) -> OpError {
        OpError::Backend(e)
    }
}

impl From<inkwell::builder::BuilderError> for OpError {
    fn from(e: inkwell::builder::BuilderError) -> OpError {
        OpError::Backend(e.into())
    }
}

fn unsupported<T>(m: impl Into<String>) -> Result<T, OpError> {
    Err(OpError::Unsupported(m.into()))
}

/// Emits one elementwise op on register values; `out` is its result dtype.
pub(crate) fn emit_op<'ctx>(
    cg: &Cg<'ctx>,
    op: &Op,
    args: &[Option<Val<'ctx>>],
    out: DType,
) -> Result<BV<'ctx>, OpError> {
    let arg = |i: usize| -> Result<Val<'ctx>, OpError> {
        args.get(i).copied().flatten().ok_or_else(|| OpError::Unsupported(format!("input {i} is missing")))
    };
    match op {
        Op::Unary(u) => unary(cg, *u, arg(0)?),
        Op::Binary(b) => binary(cg, *b, arg(0)?, arg(1)?),
        Op::Variadic(v) => {
            let xs: Vec<Val> = args.iter().flatten().copied().collect();
            let Some(&first) = xs.first() else { return unsupported("no inputs") };
            let mut acc = first.0;
            for x in &xs[1..] {
                acc = match v {
                    VariadicOp::Sum | VariadicOp::Mean => arith(cg, BinaryOp::Add, (acc, first.1), *x)?,
                    VariadicOp::Max => minmax(cg, true, (acc, first.1), *x)?,
                    VariadicOp::Min => minmax(cg, false, (acc, first.1), *x)?,
                };
            }
            if *v == VariadicOp::Mean {
                if !first.1.is_float() {
                    return unsupported(format!("Mean of {}", first.1));
                }
                acc = cg.fdiv(acc, cg.fconst(acc, xs.len() as f64))?;
            }
            Ok(acc)
        }
        Op::Mod { fmod } => modulo(cg, *fmod, arg(0)?, arg(1)?),
        Op::Clip => {
            let x = arg(0)?;
            let mut r = x.0;
            if let Some(lo) = args.get(1).copied().flatten() {
                r = clamp_side(cg, (r, x.1), lo, true)?;
            }
            if let Some(hi) = args.get(2).copied().flatten() {
                r = clamp_side(cg, (r, x.1), hi, false)?;
            }
            Ok(r)
        }
        Op::Where => Ok(cg.select(arg(0)?.0, arg(1)?.0, arg(2)?.0)?),
        // The broadcast is in the loop nest's strides.
        Op::Expand => Ok(arg(0)?.0),
        Op::Cast { to, .. } => cast(cg, arg(0)?, *to),
        Op::CastLike { .. } => cast(cg, arg(0)?, out),
        Op::Gelu { approximate } => {
            let x = float_arg(arg(0)?)?;
            let inner = match approximate {
                GeluApproximation::None => cg.erf(cg.fmul(x, cg.fconst(x, std::f64::consts::FRAC_1_SQRT_2))?)?,
                GeluApproximation::Tanh => {
                    let k = (2.0 / std::f64::consts::PI).sqrt();
                    let x3 = cg.fmul(cg.fmul(x, x)?, x)?;
                    let u = cg.fmul(cg.fadd(x, cg.fmul(x3, cg.fconst(x, 0.044715))?)?, cg.fconst(x, k))?;
                    cg.tanh(u)?
                }
            };
            let half_x = cg.fmul(x, cg.fconst(x, 0.5))?;
            Ok(cg.fmul(half_x, cg.fadd(cg.fconst(x, 1.0), inner)?)?)
        }
        Op::LeakyRelu { alpha } => {
            let x = float_arg(arg(0)?)?;
            let neg = cg.fcmp(FloatPredicate::OLT, x, cg.fconst(x, 0.0))?;
            Ok(cg.select(neg, cg.fmul(x, cg.fconst(x, *alpha as f64))?, x)?)
        }
        Op::Elu { alpha } => {
            let x = float_arg(arg(0)?)?;
            let neg = cg.fcmp(FloatPredicate::OLT, x, cg.fconst(x, 0.0))?;
            let em1 = cg.fsub(cg.exp(x)?, cg.fconst(x, 1.0))?;
            Ok(cg.select(neg, cg.fmul(em1, cg.fconst(x, *alpha as f64))?, x)?)
        }
        Op::HardSigmoid { alpha, beta } => {
            let x = float_arg(arg(0)?)?;
            let y = cg.fadd(cg.fmul(x, cg.fconst(x, *alpha as f64))?, cg.fconst(x, *beta as f64))?;
            Ok(clamp01(cg, y)?)
        }
        Op::IsInf { detect_negative, detect_positive } => {
            let x = float_arg(arg(0)?)?;
            let pos = cg.fcmp(FloatPredicate::OEQ, x, cg.fconst(x, f64::INFINITY))?;
            let neg = cg.fcmp(FloatPredicate::OEQ, x, cg.fconst(x, f64::NEG_INFINITY))?;
            let f = cg.ctx.bool_type().const_zero();
            let pos = if *detect_positive { pos.into_int_value() } else { f };
            let neg = if *detect_negative { neg.into_int_value() } else { f };
            Ok(cg.b.build_or(pos, neg, "isinf")?.into())
        }
        other => unsupported(format!("{} is not an elementwise op", other.name())),
    }
}

fn float_arg(x: Val<'_>) -> Result<BV<'_>, OpError> {
    if x.1.is_float() {
        Ok(x.0)
    } else {
        unsupported(format!("expects a float input, found {}", x.1))
    }
}

fn clamp01<'ctx>(cg: &Cg<'ctx>, y: BV<'ctx>) -> Result<BV<'ctx>> {
    let lo = cg.fmaxnum(y, cg.fconst(y, 0.0))?;
    cg.intrinsic("llvm.minnum", &[lo, cg.fconst(y, 1.0)])
}

fn unary<'ctx>(cg: &Cg<'ctx>, u: UnaryOp, x: Val<'ctx>) -> Result<BV<'ctx>, OpError> {
    let (v, dt) = x;
    if dt == DType::Bool {
        return match u {
            UnaryOp::Not => Ok(cg.b.build_not(v.into_int_value(), "not")?.into()),
            _ => unsupported(format!("{} of bool", u.name())),
        };
    }
    if !dt.is_float() {
        let i = v.into_int_value();
        let zero = i.get_type().const_zero();
        let is_neg = cg.b.build_int_compare(IntPredicate::SLT, i, zero, "neg")?;
        let signed = dt.is_signed_integer();
        return Ok(match u {
            UnaryOp::Neg => cg.b.build_int_sub(zero, i, "neg")?.into(),
            UnaryOp::Abs if signed => cg.b.build_select(is_neg, cg.b.build_int_sub(zero, i, "neg")?, i, "abs")?,
            UnaryOp::Abs => v,
            UnaryOp::Relu if signed => cg.b.build_select(is_neg, zero, i, "relu")?,
            UnaryOp::Relu => v,
            UnaryOp::Sign => {
                let one = i.get_type().const_int(1, false);
                let pos = cg.b.build_int_compare(IntPredicate::NE, i, zero, "nz")?;
                let mag = cg.b.build_select(pos, one, zero, "mag")?.into_int_value();
                if signed {
                    cg.b.build_select(is_neg, i.get_type().const_all_ones(), mag, "sign")?
                } else {
                    mag.into()
                }
            }
            _ => return unsupported(format!("{} of {dt}", u.name())),
        });
    }
    let c = |k: f64| cg.fconst(v, k);
    Ok(match u {
        UnaryOp::Abs => cg.intrinsic("llvm.fabs", &[v])?,
        UnaryOp::Neg => cg.fneg(v)?,
        UnaryOp::Sqrt => cg.intrinsic("llvm.sqrt", &[v])?,
        UnaryOp::Reciprocal => cg.fdiv(c(1.0), v)?,
        UnaryOp::Exp => cg.exp(v)?,
        UnaryOp::Log => cg.intrinsic("llvm.log", &[v])?,
        UnaryOp::Tanh => cg.tanh(v)?,
        UnaryOp::Erf => cg.erf(v)?,
        UnaryOp::Sigmoid => cg.sigmoid(v)?,
        UnaryOp::Softplus => {
            // max(x, 0) + log(1 + exp(-|x|)) never overflows.
            let ax = cg.intrinsic("llvm.fabs", &[v])?;
            let l = cg.intrinsic("llvm.log", &[cg.fadd(c(1.0), cg.exp(cg.fneg(ax)?)?)?])?;
            let pos = cg.fcmp(FloatPredicate::OGT, v, c(0.0))?;
            cg.fadd(cg.select(pos, v, c(0.0))?, l)?
        }
        UnaryOp::Softsign => cg.fdiv(v, cg.fadd(c(1.0), cg.intrinsic("llvm.fabs", &[v])?)?)?,
        UnaryOp::Relu => {
            let neg = cg.fcmp(FloatPredicate::OLT, v, c(0.0))?;
            cg.select(neg, c(0.0), v)?
        }
        UnaryOp::Floor => cg.intrinsic("llvm.floor", &[v])?,
        UnaryOp::Ceil => cg.intrinsic("llvm.ceil", &[v])?,
        UnaryOp::Round => cg.intrinsic("llvm.roundeven", &[v])?,
        UnaryOp::Sign => {
            let pos = cg.fcmp(FloatPredicate::OGT, v, c(0.0))?;
            let neg = cg.fcmp(FloatPredicate::OLT, v, c(0.0))?;
            cg.select(pos, c(1.0), cg.select(neg, c(-1.0), v)?)?
        }
        UnaryOp::Sin => cg.intrinsic("llvm.sin", &[v])?,
        UnaryOp::Cos => cg.intrinsic("llvm.cos", &[v])?,
        UnaryOp::IsNaN => cg.fcmp(FloatPredicate::UNO, v, v)?,
        UnaryOp::HardSwish => {
            let y = cg.fadd(cg.fmul(v, c(1.0 / 6.0))?, c(0.5))?;
            cg.fmul(v, clamp01(cg, y)?)?
        }
        UnaryOp::Not => return unsupported(format!("Not of {dt}")),
    })
}

fn binary<'ctx>(cg: &Cg<'ctx>, op: BinaryOp, a: Val<'ctx>, b: Val<'ctx>) -> Result<BV<'ctx>, OpError> {
    if op.is_logical() {
        let (x, y) = (a.0.into_int_value(), b.0.into_int_value());
        return Ok(match op {
            BinaryOp::And => cg.b.build_and(x, y, "and")?,
            BinaryOp::Or => cg.b.build_or(x, y, "or")?,
            _ => cg.b.build_xor(x, y, "xor")?,
        }
        .into());
    }
    if op.is_comparison() {
        return compare(cg, op, a, b);
    }
    if op == BinaryOp::Pow {
        if !a.1.is_float() {
            return int_pow(cg, a, b);
        }
        // The exponent may have another type; Pow computes in the base's.
        let e = if b.1.is_float() {
            if b.0.get_type() == a.0.get_type() {
                b.0
            } else {
                cg.b.build_float_cast(b.0.into_float_value(), a.0.get_type().into_float_type(), "e")?.into()
            }
        } else {
            cg.b.build_signed_int_to_float(b.0.into_int_value(), a.0.get_type().into_float_type(), "e")?.into()
        };
        return Ok(cg.intrinsic("llvm.pow", &[a.0, e])?);
    }
    arith(cg, op, a, b)
}

fn arith<'ctx>(cg: &Cg<'ctx>, op: BinaryOp, a: Val<'ctx>, b: Val<'ctx>) -> Result<BV<'ctx>, OpError> {
    if a.1.is_float() {
        return Ok(match op {
            BinaryOp::Add => cg.fadd(a.0, b.0)?,
            BinaryOp::Sub => cg.fsub(a.0, b.0)?,
            BinaryOp::Mul => cg.fmul(a.0, b.0)?,
            BinaryOp::Div => cg.fdiv(a.0, b.0)?,
            _ => return unsupported(format!("{} of {}", op.name(), a.1)),
        });
    }
    if a.1 == DType::Bool {
        return unsupported(format!("{} of bool", op.name()));
    }
    let (x, y) = (a.0.into_int_value(), b.0.into_int_value());
    Ok(match op {
        BinaryOp::Add => cg.b.build_int_add(x, y, "add")?.into(),
        BinaryOp::Sub => cg.b.build_int_sub(x, y, "sub")?.into(),
        BinaryOp::Mul => cg.b.build_int_mul(x, y, "mul")?.into(),
        BinaryOp::Div => int_divide(cg, a.1, x, y, false, false)?.into(),
        _ => return unsupported(format!("{} of {}", op.name(), a.1)),
    })
}

/// Integer `x / y` (truncating) or remainder, with the two cases LLVM
/// leaves undefined made defined: a zero divisor sets the kernel's fault
/// flag (and divides by 1 instead), and `MIN / -1` wraps to `MIN` (its
/// remainder is 0). `floor` makes the remainder take the divisor's sign.
fn int_divide<'ctx>(
    cg: &Cg<'ctx>,
    dtype: DType,
    x: IntValue<'ctx>,
    y: IntValue<'ctx>,
    rem: bool,
    floor: bool,
) -> Result<IntValue<'ctx>, OpError> {
    let ty = x.get_type();
    let zero = ty.const_zero();
    let is_zero = cg.b.build_int_compare(IntPredicate::EQ, y, zero, "div0")?;
    if let Some(slot) = cg.fault.get() {
        let seen = cg.b.build_load(cg.ctx.bool_type(), slot, "fault")?.into_int_value();
        cg.b.build_store(slot, cg.b.build_or(seen, is_zero, "fault")?)?;
    }
    let signed = dtype.is_signed_integer();
    let minus_one = cg.b.build_int_compare(IntPredicate::EQ, y, ty.const_all_ones(), "m1")?;
    let special = if signed { cg.b.build_or(is_zero, minus_one, "special")? } else { is_zero };
    let safe = cg.b.build_select(special, ty.const_int(1, false), y, "safe")?.into_int_value();
    let r = match (rem, signed) {
        (false, true) => cg.b.build_int_signed_div(x, safe, "div")?,
        (false, false) => cg.b.build_int_unsigned_div(x, safe, "div")?,
        (true, true) => cg.b.build_int_signed_rem(x, safe, "rem")?,
        (true, false) => cg.b.build_int_unsigned_rem(x, safe, "rem")?,
    };
    if !signed {
        return Ok(r);
    }
    // y == -1: x / -1 = -x (wrapping), x % -1 = 0.
    let by_m1 = if rem { zero } else { cg.b.build_int_sub(zero, x, "negx")? };
    let r = cg.b.build_select(minus_one, by_m1, r, "r")?.into_int_value();
    if !(rem && floor) {
        return Ok(r);
    }
    let nonzero = cg.b.build_int_compare(IntPredicate::NE, r, zero, "nz")?;
    let differ = cg.b.build_int_compare(IntPredicate::SLT, cg.b.build_xor(r, y, "sx")?, zero, "differ")?;
    let fix = cg.b.build_and(nonzero, differ, "fix")?;
    let adjusted = cg.b.build_int_add(r, y, "adj")?;
    Ok(cg.b.build_select(fix, adjusted, r, "mod")?.into_int_value())
}

/// `Mod`: floats (always) and `fmod` take the dividend's sign, integers
/// otherwise the divisor's.
fn modulo<'ctx>(cg: &Cg<'ctx>, fmod: bool, a: Val<'ctx>, b: Val<'ctx>) -> Result<BV<'ctx>, OpError> {
    if a.1.is_float() {
        return Ok(match (a.0, b.0) {
            (BV::FloatValue(x), BV::FloatValue(y)) => cg.b.build_float_rem(x, y, "fmod")?.into(),
            _ => return unsupported("Mod of vectors"),
        });
    }
    if a.1 == DType::Bool {
        return unsupported("Mod of bool");
    }
    Ok(int_divide(cg, a.1, a.0.into_int_value(), b.0.into_int_value(), true, !fmod)?.into())
}

/// Pow with an integer base: a float exponent computes in f64 and
/// converts back (truncating, saturating); an integer one multiplies with
/// wrapping, square-and-multiply over the exponent's 64 bits; a negative
/// one gives the truncated reciprocal (0 unless the base is ±1).
fn int_pow<'ctx>(cg: &Cg<'ctx>, a: Val<'ctx>, b: Val<'ctx>) -> Result<BV<'ctx>, OpError> {
    if a.1 == DType::Bool || b.1 == DType::Bool {
        return unsupported("Pow of bool");
    }
    let x = a.0.into_int_value();
    let ty = x.get_type();
    let i64t = cg.i64t();
    let unsigned = matches!(a.1, DType::U8 | DType::U4);
    let wide = if unsigned {
        cg.b.build_int_z_extend_or_bit_cast(x, i64t, "base")?
    } else {
        cg.b.build_int_s_extend_or_bit_cast(x, i64t, "base")?
    };
    if b.1.is_float() {
        let f64t = cg.ctx.f64_type();
        let base = cg.b.build_signed_int_to_float(wide, f64t, "base")?;
        let e = b.0.into_float_value();
        let e = if e.get_type() == f64t { e } else { cg.b.build_float_ext(e, f64t, "e")? };
        let p = cg.intrinsic("llvm.pow", &[base.into(), e.into()])?;
        let sat = cast(cg, (p, DType::F64), a.1)?;
        return Ok(sat);
    }
    let e = b.0.into_int_value();
    let e = if matches!(b.1, DType::U8 | DType::U4) {
        cg.b.build_int_z_extend_or_bit_cast(e, i64t, "e")?
    } else {
        cg.b.build_int_s_extend_or_bit_cast(e, i64t, "e")?
    };
    let one = i64t.const_int(1, false);
    let (mut result, mut base) = (one, wide);
    for bit in 0..63 {
        let set = cg.b.build_and(cg.b.build_right_shift(e, i64t.const_int(bit, false), false, "b")?, one, "bit")?;
        let set = cg.b.build_int_compare(IntPredicate::NE, set, i64t.const_zero(), "set")?;
        let times = cg.b.build_int_mul(result, base, "times")?;
        result = cg.b.build_select(set, times, result, "acc")?.into_int_value();
        base = cg.b.build_int_mul(base, base, "sq")?;
    }
    let negative = cg.b.build_int_compare(IntPredicate::SLT, e, i64t.const_zero(), "neg")?;
    let is_one = cg.b.build_int_compare(IntPredicate::EQ, wide, one, "one")?;
    let is_m1 = cg.b.build_int_compare(IntPredicate::EQ, wide, i64t.const_all_ones(), "m1")?;
    let odd = cg.b.build_int_compare(IntPredicate::NE, cg.b.build_and(e, one, "odd")?, i64t.const_zero(), "odd")?;
    let m1_pow = cg.b.build_select(odd, i64t.const_all_ones(), one, "m1pow")?.into_int_value();
    let recip = cg.b.build_select(is_m1, m1_pow, i64t.const_zero(), "recip")?.into_int_value();
    let recip = cg.b.build_select(is_one, one, recip, "recip")?.into_int_value();
    let r = cg.b.build_select(negative, recip, result, "pow")?.into_int_value();
    Ok(cg.b.build_int_truncate_or_bit_cast(r, ty, "pow")?.into())
}

fn compare<'ctx>(cg: &Cg<'ctx>, op: BinaryOp, a: Val<'ctx>, b: Val<'ctx>) -> Result<BV<'ctx>, OpError> {
    if a.1.is_float() {
        let p = match op {
            BinaryOp::Equal => FloatPredicate::OEQ,
            BinaryOp::Less => FloatPredicate::OLT,
            BinaryOp::LessOrEqual => FloatPredicate::OLE,
            BinaryOp::Greater => FloatPredicate::OGT,
            _ => FloatPredicate::OGE,
        };
        return Ok(cg.fcmp(p, a.0, b.0)?);
    }
    let signed = a.1.is_signed_integer();
    let p = match (op, signed) {
        (BinaryOp::Equal, _) => IntPredicate::EQ,
        (BinaryOp::Less, true) => IntPredicate::SLT,
        (BinaryOp::Less, false) => IntPredicate::ULT,
        (BinaryOp::LessOrEqual, true) => IntPredicate::SLE,
        (BinaryOp::LessOrEqual, false) => IntPredicate::ULE,
        (BinaryOp::Greater, true) => IntPredicate::SGT,
        (BinaryOp::Greater, false) => IntPredicate::UGT,
        (_, true) => IntPredicate::SGE,
        (_, false) => IntPredicate::UGE,
    };
    Ok(cg.b.build_int_compare(p, a.0.into_int_value(), b.0.into_int_value(), "cmp")?.into())
}

/// max or min; floats propagate NaN like numpy's `maximum`.
fn minmax<'ctx>(cg: &Cg<'ctx>, max: bool, a: Val<'ctx>, b: Val<'ctx>) -> Result<BV<'ctx>, OpError> {
    if a.1.is_float() {
        return Ok(cg.intrinsic(if max { "llvm.maximum" } else { "llvm.minimum" }, &[a.0, b.0])?);
    }
    let signed = a.1.is_signed_integer() || a.1 == DType::Bool;
    let p = match (max, signed) {
        (true, true) => IntPredicate::SGT,
        (true, false) => IntPredicate::UGT,
        (false, true) => IntPredicate::SLT,
        (false, false) => IntPredicate::ULT,
    };
    let (x, y) = (a.0.into_int_value(), b.0.into_int_value());
    let c = cg.b.build_int_compare(p, x, y, "mm")?;
    Ok(cg.b.build_select(c, x, y, "mm")?)
}

/// One side of Clip: `x < lo ? lo : x` (or `x > hi ? hi : x`); NaN passes.
fn clamp_side<'ctx>(cg: &Cg<'ctx>, x: Val<'ctx>, bound: Val<'ctx>, lower: bool) -> Result<BV<'ctx>, OpError> {
    let c = if x.1.is_float() {
        cg.fcmp(if lower { FloatPredicate::OLT } else { FloatPredicate::OGT }, x.0, bound.0)?
    } else {
        let signed = x.1.is_signed_integer();
        let p = match (lower, signed) {
            (true, true) => IntPredicate::SLT,
            (true, false) => IntPredicate::ULT,
            (false, true) => IntPredicate::SGT,
            (false, false) => IntPredicate::UGT,
        };
        cg.b.build_int_compare(p, x.0.into_int_value(), bound.0.into_int_value(), "clip")?.into()
    };
    Ok(cg.select(c, bound.0, x.0)?)
}

/// ONNX Cast between compute types: floats round to nearest, float to
/// integer truncates and saturates (NaN → 0, as the interpreter does),
/// integers wrap, anything to bool is `!= 0`.
fn cast<'ctx>(cg: &Cg<'ctx>, x: Val<'ctx>, to: DType) -> Result<BV<'ctx>, OpError> {
    let (v, from) = x;
    let to_ty = cg.compute_type(to).map_err(OpError::Unsupported)?;
    if from == to {
        return Ok(v);
    }
    if to == DType::Bool {
        return Ok(if from.is_float() {
            cg.fcmp(FloatPredicate::UNE, v, cg.fconst(v, 0.0))?
        } else {
            let i = v.into_int_value();
            cg.b.build_int_compare(IntPredicate::NE, i, i.get_type().const_zero(), "nz")?.into()
        });
    }
    if from == DType::F64 && to == DType::F16 {
        // One rounding, straight from f64 (through f32 it could round twice).
        let h = cg.b.build_float_trunc(v.into_float_value(), cg.ctx.f16_type(), "narrow")?;
        return Ok(cg.b.build_float_ext(h, cg.f32t(), "wide")?.into());
    }
    if from == DType::F64 && to == DType::BF16 {
        return unsupported(format!("Cast from {from} to {to}"));
    }
    if matches!(to, DType::I4 | DType::U4) {
        // Truncate (saturating) to i64 or keep the integer, then wrap into
        // four bits, as the interpreter and ONNX's tests do.
        let wide = cast(cg, x, DType::I64)?;
        let byte = cg.b.build_int_truncate(wide.into_int_value(), cg.ctx.i8_type(), "byte")?;
        let four = cg.ctx.i8_type().const_int(4, false);
        return Ok(if to == DType::I4 {
            cg.b.build_right_shift(cg.b.build_left_shift(byte, four, "hi")?, four, true, "i4")?.into()
        } else {
            cg.b.build_and(byte, cg.ctx.i8_type().const_int(0x0f, false), "u4")?.into()
        });
    }
    if from.is_float() {
        if to.is_float() {
            if to == DType::BF16 {
                // Round now, as the interpreter does, so later ops in the
                // group see the rounded value.
                let bits = cg.f32_to_bf16(v.into_float_value())?;
                return Ok(cg.bf16_to_f32(bits)?);
            }
            if to == DType::F16 {
                let st = cg.storage_type(to).map_err(OpError::Unsupported)?.into_float_type();
                let narrow = cg.b.build_float_cast(v.into_float_value(), st, "narrow")?;
                return Ok(cg.b.build_float_ext(narrow, cg.f32t(), "wide")?.into());
            }
            return Ok(cg.b.build_float_cast(v.into_float_value(), to_ty.into_float_type(), "fcast")?.into());
        }
        let name = if to == DType::U8 { "llvm.fptoui.sat" } else { "llvm.fptosi.sat" };
        let intr = inkwell::intrinsics::Intrinsic::find(name)
            .ok_or_else(|| OpError::Backend(BackendError::Llvm(format!("no intrinsic {name}"))))?;
        let f = intr
            .get_declaration(&cg.module, &[to_ty, v.get_type()])
            .ok_or_else(|| OpError::Backend(BackendError::Llvm(format!("cannot declare {name}"))))?;
        let r = cg.b.build_call(f, &[v.into()], "sat")?.try_as_basic_value().basic();
        return r.ok_or_else(|| OpError::Backend(BackendError::Llvm(format!("{name} returns nothing"))));
    }
    let i = v.into_int_value();
    let unsigned_src = matches!(from, DType::U8 | DType::U4 | DType::Bool);
    if to.is_float() {
        let ft = to_ty.into_float_type();
        return Ok(if unsigned_src {
            cg.b.build_unsigned_int_to_float(i, ft, "itof")?.into()
        } else {
            cg.b.build_signed_int_to_float(i, ft, "itof")?.into()
        });
    }
    let it = to_ty.into_int_type();
    let (wf, wt) = (i.get_type().get_bit_width(), it.get_bit_width());
    Ok(if wt < wf {
        cg.b.build_int_truncate(i, it, "trunc")?.into()
    } else if wt > wf && unsigned_src {
        cg.b.build_int_z_extend(i, it, "zext")?.into()
    } else if wt > wf {
        cg.b.build_int_s_extend(i, it, "sext")?.into()
    } else {
        v
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_and_collapsing() {
        assert_eq!(broadcast_strides(&[768], &[64, 768]), vec![0, 1]);
        assert_eq!(broadcast_strides(&[64, 1], &[64, 768]), vec![1, 0]);
        let (sizes, strides) = collapse(&[2, 3, 4], &[vec![12, 4, 1], vec![12, 4, 1]]);
        assert_eq!((sizes, strides), (vec![24], vec![vec![1], vec![1]]));
        let (sizes, strides) = collapse(&[64, 1, 768], &[vec![768, 768, 1], vec![0, 0, 1]]);
        assert_eq!((sizes, strides), (vec![64, 768], vec![vec![768, 1], vec![0, 1]]));
    }
}
