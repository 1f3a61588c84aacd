//! Selection along an axis: ArgMax/ArgMin and TopK.
//!
//! Both walk each row (the axis, with the inner size as its stride) once.
//! ArgMax/ArgMin keep the best value and its position in registers. TopK
//! keeps the k best seen so far sorted in the output row itself (values and
//! indices) and inserts each new element at its rank, shifting the tail:
//! O(n·k) per row, which for the small k of TopK in practice beats sorting
//! the row, needs no scratch, and is stable (among equal values the lower
//! index comes first, as ONNX requires).

use super::indexing::norm_axis;
use super::Cg;
use crate::error::{BackendError, Result};
use crate::plan::{Loc, Plan};
use inkwell::values::{BasicValueEnum, FunctionValue, IntValue};
use inkwell::{FloatPredicate, IntPredicate};
use kiln_ir::dtype::DType;
use kiln_ir::graph::{Node, NodeId};
use kiln_ir::op::Op;

type BV<'ctx> = BasicValueEnum<'ctx>;
type Kernel<'ctx> = (FunctionValue<'ctx>, Vec<Loc>);

/// Emits the kernel of an ArgMax/ArgMin or TopK node.
pub(crate) fn emit<'ctx>(cg: &Cg<'ctx>, plan: &Plan, step: usize, id: NodeId) -> Result<Kernel<'ctx>> {
    let node = plan.graph.node(id);
    match &node.op {
        Op::ArgReduce { max, axis, keepdims: _, select_last_index } => {
            arg_reduce(cg, plan, step, node, *max, *axis, *select_last_index)
        }
        Op::TopK { axis, largest, sorted: _ } => top_k(cg, plan, step, node, *axis, *largest),
        other => Err(BackendError::unsupported(&node.name, other.name(), "not a selection op")),
    }
}

/// `a` ranks strictly before `b`: greater (for a maximum) or smaller.
fn better<'ctx>(cg: &Cg<'ctx>, dtype: DType, max: bool, a: BV<'ctx>, b: BV<'ctx>) -> Result<IntValue<'ctx>> {
    if dtype.is_float() {
        let p = if max { FloatPredicate::OGT } else { FloatPredicate::OLT };
        return Ok(cg.fcmp(p, a, b)?.into_int_value());
    }
    let signed = dtype.is_signed_integer();
    let p = match (max, signed) {
        (true, true) => IntPredicate::SGT,
        (true, false) => IntPredicate::UGT,
        (false, true) => IntPredicate::SLT,
        (false, false) => IntPredicate::ULT,
    };
    Ok(cg.b.build_int_compare(p, a.into_int_value(), b.into_int_value(), "better")?)
}

fn check_dtype(node: &Node, dtype: DType) -> Result<()> {
    if dtype == DType::Bool {
        return Err(BackendError::unsupported(&node.name, node.op.name(), "bool tensors"));
    }
    Ok(())
}

/// Rows of `len` elements along `axis`: `(outer, len, inner)`.
fn rows(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (shape[..axis].iter().product(), shape[axis], shape[axis + 1..].iter().product())
}

fn arg_reduce<'ctx>(
    cg: &Cg<'ctx>,
    plan: &Plan,
    step: usize,
    node: &Node,
    max: bool,
    axis: i64,
    last: bool,
) -> Result<Kernel<'ctx>> {
    let err = |m: &str| BackendError::node(&node.name, node.op.name(), m);
    let x = node.input(0).ok_or_else(|| err("input 0 is missing"))?;
    let out = node.output(0).ok_or_else(|| err("output 0 is missing"))?;
    let dtype = plan.ty(x).dtype;
    check_dtype(node, dtype)?;
    let shape = plan.ty(x).shape.clone();
    let axis = norm_axis(node, axis, shape.len())?;
    let (outer, len, inner) = rows(&shape, axis);
    if len == 0 && outer * inner > 0 {
        return Err(err("the reduced axis is empty"));
    }
    let ty = cg.compute_type(dtype).map_err(BackendError::Llvm)?;
    let f = cg.kernel_fn(&format!("k{step}_{}", if max { "argmax" } else { "argmin" }), 2);
    let (yp, xp) = (cg.param(f, 0), cg.param(f, 1));
    let best = cg.entry_alloca(f, ty, "best")?;
    let at = cg.entry_alloca(f, cg.i64t().into(), "at")?;
    cg.for_n(f, outer, &mut |o| {
        cg.for_n(f, inner, &mut |i| {
            let base = cg.affine(o, (len * inner) as i64, i)?;
            cg.b.build_store(best, cg.load(xp, dtype, base)?)?;
            cg.b.build_store(at, cg.i64c(0))?;
            cg.for_n(f, len, &mut |j| {
                let v = cg.load(xp, dtype, cg.affine(j, inner as i64, base)?)?;
                let cur = cg.b.build_load(ty, best, "best")?;
                // With select_last_index a tie moves the position too.
                let take = if last {
                    let worse = better(cg, dtype, max, cur, v)?;
                    cg.b.build_not(worse, "take")?
                } else {
                    better(cg, dtype, max, v, cur)?
                };
                let nb = cg.b.build_select(take, v, cur, "best")?;
                let cur_at = cg.b.build_load(cg.i64t(), at, "at")?.into_int_value();
                let na = cg.b.build_select(take, j, cur_at, "at")?;
                cg.b.build_store(best, nb)?;
                cg.b.build_store(at, na)?;
                Ok(())
            })?;
            let pos = cg.b.build_load(cg.i64t(), at, "at")?.into_int_value();
            cg.store(yp, DType::I64, cg.affine(o, inner as i64, i)?, pos.into())
        })
    })?;
    cg.b.build_return(None)?;
    Ok((f, vec![plan.loc(out), plan.loc(x)]))
}

fn top_k<'ctx>(cg: &Cg<'ctx>, plan: &Plan, step: usize, node: &Node, axis: i64, largest: bool) -> Result<Kernel<'ctx>> {
    let err = |m: &str| BackendError::node(&node.name, "TopK", m);
    let x = node.input(0).ok_or_else(|| err("input 0 is missing"))?;
    let (values, indices) = (node.output(0), node.output(1));
    let (Some(values), Some(indices)) = (values, indices) else {
        return Err(BackendError::unsupported(&node.name, "TopK", "an omitted output"));
    };
    let dtype = plan.ty(x).dtype;
    check_dtype(node, dtype)?;
    let shape = plan.ty(x).shape.clone();
    let axis = norm_axis(node, axis, shape.len())?;
    let (outer, len, inner) = rows(&shape, axis);
    let k = plan.ty(values).shape[axis];
    if k > len {
        return Err(err("k is larger than the axis"));
    }
    let idt = plan.ty(indices).dtype;
    let f = cg.kernel_fn(&format!("k{step}_topk"), 3);
    let (vp, ip, xp) = (cg.param(f, 0), cg.param(f, 1), cg.param(f, 2));
    let rank_at = cg.entry_alloca(f, cg.i64t().into(), "rank")?;
    let (ki, st) = (k as i64, inner as i64);
    if k > 0 {
        cg.for_n(f, outer, &mut |o| {
            cg.for_n(f, inner, &mut |i| {
                let xbase = cg.affine(o, (len * inner) as i64, i)?;
                let ybase = cg.affine(o, (k * inner) as i64, i)?;
                cg.for_n(f, len, &mut |j| {
                    let v = cg.load(xp, dtype, cg.affine(j, st, xbase)?)?;
                    // Entries kept so far: min(j, k).
                    let small = cg.b.build_int_compare(IntPredicate::SLT, j, cg.i64c(ki), "small")?;
                    let kept = cg.b.build_select(small, j, cg.i64c(ki), "kept")?.into_int_value();
                    // v's rank: the kept entries it does not beat (they are
                    // sorted, so these form a prefix; equal ones came first).
                    cg.b.build_store(rank_at, cg.i64c(0))?;
                    cg.for_range(f, kept, &mut |t| {
                        let e = cg.load(vp, dtype, cg.affine(t, st, ybase)?)?;
                        let beats = better(cg, dtype, largest, v, e)?;
                        let inc = cg.b.build_int_z_extend(cg.b.build_not(beats, "stays")?, cg.i64t(), "inc")?;
                        let r = cg.b.build_load(cg.i64t(), rank_at, "rank")?.into_int_value();
                        cg.b.build_store(rank_at, cg.b.build_int_add(r, inc, "rank")?)?;
                        Ok(())
                    })?;
                    let r = cg.b.build_load(cg.i64t(), rank_at, "rank")?.into_int_value();
                    let enters = cg.b.build_int_compare(IntPredicate::SLT, r, cg.i64c(ki), "enters")?;
                    let insert = cg.ctx.append_basic_block(f, "insert");
                    let done = cg.ctx.append_basic_block(f, "inserted");
                    cg.b.build_conditional_branch(enters, insert, done)?;
                    cg.b.position_at_end(insert);
                    // After the insert min(kept + 1, k) entries are kept;
                    // those from r on move down one place, last first.
                    let grown = cg.b.build_int_nsw_add(kept, cg.i64c(1), "grown")?;
                    let full = cg.b.build_int_compare(IntPredicate::SGT, grown, cg.i64c(ki), "full")?;
                    let now = cg.b.build_select(full, cg.i64c(ki), grown, "now")?.into_int_value();
                    let last = cg.b.build_int_nsw_sub(now, cg.i64c(1), "last")?;
                    let moves = cg.b.build_int_nsw_sub(last, r, "moves")?;
                    cg.for_range(f, moves, &mut |u| {
                        let from = cg.b.build_int_nsw_sub(cg.b.build_int_nsw_sub(last, cg.i64c(1), "p")?, u, "from")?;
                        let to = cg.b.build_int_nsw_add(from, cg.i64c(1), "to")?;
                        let (fa, ta) = (cg.affine(from, st, ybase)?, cg.affine(to, st, ybase)?);
                        cg.store(vp, dtype, ta, cg.load(vp, dtype, fa)?)?;
                        cg.store(ip, idt, ta, cg.load(ip, idt, fa)?)
                    })?;
                    let at = cg.affine(r, st, ybase)?;
                    cg.store(vp, dtype, at, v)?;
                    let jv: BV = if idt == DType::I64 {
                        j.into()
                    } else {
                        cg.b.build_int_truncate(j, cg.ctx.i32_type(), "j")?.into()
                    };
                    cg.store(ip, idt, at, jv)?;
                    cg.b.build_unconditional_branch(done)?;
                    cg.b.position_at_end(done);
                    Ok(())
                })
            })
        })?;
    }
    cg.b.build_return(None)?;
    Ok((f, vec![plan.loc(values), plan.loc(indices), plan.loc(x)]))
}

/// ReduceMax (any) and ReduceMin (all) of a bool tensor: the output starts
/// at the identity and every input element is or-ed (and-ed) into its
/// output element.
pub(crate) fn bool_reduce<'ctx>(cg: &Cg<'ctx>, plan: &Plan, step: usize, id: NodeId) -> Result<Kernel<'ctx>> {
    let node = plan.graph.node(id);
    let err = |m: String| BackendError::node(&node.name, node.op.name(), m);
    let Op::Reduce { kind, axes, noop_with_empty_axes, .. } = &node.op else {
        return Err(err("not a Reduce node".into()));
    };
    let any = matches!(kind, kiln_ir::op::ReduceKind::Max);
    let x = node.input(0).ok_or_else(|| err("input 0 is missing".into()))?;
    let out = node.output(0).ok_or_else(|| err("output 0 is missing".into()))?;
    let shape = plan.ty(x).shape.clone();
    let axes: Option<Vec<i64>> = match (axes, node.input(1)) {
        (Some(a), _) => Some(a.clone()),
        (None, Some(_)) => super::indexing::known_ints(plan, node, 1, "axes")?,
        (None, None) => None,
    };
    let mut reduced = vec![false; shape.len()];
    match axes {
        Some(a) if !a.is_empty() => {
            for ax in a {
                reduced[norm_axis(node, ax, shape.len())?] = true;
            }
        }
        _ if *noop_with_empty_axes => {}
        _ => reduced.iter_mut().for_each(|r| *r = true),
    }
    // Output strides over the input's axes: 0 on reduced ones.
    let kept: Vec<usize> = shape.iter().zip(&reduced).map(|(&d, &r)| if r { 1 } else { d }).collect();
    let ostr: Vec<i64> =
        super::indexing::strides_of(&kept).into_iter().zip(&reduced).map(|(s, &r)| if r { 0 } else { s }).collect();
    let istr = super::indexing::strides_of(&shape);
    let i8t = cg.ctx.i8_type();
    let f = cg.kernel_fn(&format!("k{step}_{}", if any { "any" } else { "all" }), 2);
    let (yp, xp) = (cg.param(f, 0), cg.param(f, 1));
    let init = i8t.const_int(u64::from(!any), false);
    cg.for_n(f, plan.ty(out).len(), &mut |o| super::indexing::store_bits(cg, i8t, yp, o, init))?;
    super::indexing::for_each_index(cg, f, &shape, &mut |i| {
        let at = super::indexing::linear(cg, i, &ostr)?;
        let v = super::indexing::load_bits(cg, i8t, xp, super::indexing::linear(cg, i, &istr)?)?;
        let cur = super::indexing::load_bits(cg, i8t, yp, at)?;
        let r = if any { cg.b.build_or(cur, v, "any")? } else { cg.b.build_and(cur, v, "all")? };
        super::indexing::store_bits(cg, i8t, yp, at, r)
    })?;
    cg.b.build_return(None)?;
    Ok((f, vec![plan.loc(out), plan.loc(x)]))
}
