//! Softmax cross-entropy kernels: `kiln::CrossEntropy`, ONNX
//! `SoftmaxCrossEntropyLoss` (the same with no smoothing or z-loss) and
//! `NegativeLogLikelihoodLoss` (its inputs are already log-probabilities).
//!
//! Per sample, the log-sum-exp of the class row comes from the softmax
//! kernel's first pass (two-pass for f32 unless the three-pass baseline is
//! asked for), and the loss is taken straight from the logits:
//! `w_y·[(1-ε)(lse - x_y) + ζ·lse²] + (ε/C)·Σ_c w_c (lse - x_c)`. The
//! probabilities are never formed; `log_prob` is written only when the
//! node's second output is used. Labels are checked: one outside
//! `[0, C)` that is not the `ignore_index` makes the kernel return its
//! failure status rather than read out of bounds. Sums and the weight
//! total are accumulated in f64, as the interpreter does.

use super::kernels::{lse_three_pass, lse_two_pass, Row};
use super::Cg;
use crate::error::{BackendError, Result};
use crate::plan::{Loc, Plan};
use crate::SoftmaxAlgorithm;
use inkwell::values::{BasicValueEnum, FunctionValue};
use inkwell::IntPredicate;
use kiln_ir::dtype::DType;
use kiln_ir::graph::NodeId;
use kiln_ir::op::{LossReduction, Op};

type BV<'ctx> = BasicValueEnum<'ctx>;

/// Emits the loss kernel of node `id`.
pub(crate) fn cross_entropy<'ctx>(
    cg: &Cg<'ctx>,
    plan: &Plan,
    step: usize,
    id: NodeId,
) -> Result<(FunctionValue<'ctx>, Vec<Loc>)> {
    let node = plan.graph.node(id);
    let err = |m: String| BackendError::node(&node.name, node.op.name(), m);
    let (reduction, ignore_index, eps, zeta, from_logits) = match &node.op {
        Op::CrossEntropy { reduction, ignore_index, label_smoothing, z_loss } => {
            (*reduction, *ignore_index, *label_smoothing as f64, *z_loss as f64, true)
        }
        Op::SoftmaxCrossEntropyLoss { reduction, ignore_index } => (*reduction, *ignore_index, 0.0, 0.0, true),
        Op::NegativeLogLikelihoodLoss { reduction, ignore_index } => (*reduction, *ignore_index, 0.0, 0.0, false),
        other => return Err(err(format!("{} is not a loss op", other.name()))),
    };
    let x = node.input(0).ok_or_else(|| err("input 0 is missing".into()))?;
    let labels = node.input(1).ok_or_else(|| err("input 1 (labels) is missing".into()))?;
    let weight = node.input(2);
    let loss = node.output(0).ok_or_else(|| err("output 0 is missing".into()))?;
    let log_prob = node.output(1).filter(|_| from_logits);
    let xt = plan.ty(x).clone();
    let dtype = xt.dtype;
    if !matches!(dtype, DType::F32 | DType::F64) {
        return Err(BackendError::unsupported(&node.name, node.op.name(), format!("{dtype} inputs")));
    }
    let label_dtype = plan.ty(labels).dtype;
    if !matches!(label_dtype, DType::I32 | DType::I64) {
        return Err(BackendError::unsupported(&node.name, node.op.name(), format!("{label_dtype} labels")));
    }
    if xt.shape.len() < 2 {
        return Err(err(format!("input must be [N, C, ...], found {:?}", xt.shape)));
    }
    let (n, c) = (xt.shape[0], xt.shape[1]);
    let inner: usize = xt.shape[2..].iter().product();
    if plan.ty(labels).len() != n * inner {
        return Err(err(format!("labels have {} elements for {n}×{inner} samples", plan.ty(labels).len())));
    }
    if let Some(w) = weight {
        if plan.ty(w).len() != c || plan.ty(w).dtype != dtype {
            return Err(err(format!("weight must be {dtype}[{c}]")));
        }
    }

    let mut values = vec![loss, x, labels];
    values.extend(weight);
    values.extend(log_prob);
    let f = cg.checked_kernel_fn(&format!("k{step}_{}", node.op.name()), values.len());
    let (lossp, xp, lp) = (cg.param(f, 0), cg.param(f, 1), cg.param(f, 2));
    let wp = weight.map(|_| cg.param(f, 3));
    let lpp = log_prob.map(|_| cg.param(f, 3 + weight.is_some() as u32));
    let ty = cg.compute_type(dtype).map_err(BackendError::Llvm)?;
    let like: BV = ty.into_float_type().const_float(0.0).into();
    let f64t = cg.ctx.f64_type();
    let total = cg.entry_alloca(f, f64t.into(), "total")?;
    let total_w = cg.entry_alloca(f, f64t.into(), "total_w")?;
    cg.b.build_store(total, f64t.const_zero())?;
    cg.b.build_store(total_w, f64t.const_zero())?;
    let to_f64 = |v: BV<'ctx>| -> Result<BV<'ctx>> {
        Ok(if dtype == DType::F64 { v } else { cg.b.build_float_ext(v.into_float_value(), f64t, "wide")?.into() })
    };

    cg.for_n(f, n, &mut |i| {
        cg.for_n(f, inner, &mut |d| {
            let sample = cg.affine(i, inner as i64, d)?;
            let base = cg.affine(i, (c * inner) as i64, d)?;
            let row = Row { base, stride: inner as i64, len: c, dtype };
            let lse = if !from_logits {
                cg.fconst(like, 0.0)
            } else if cg.softmax == SoftmaxAlgorithm::TwoPass && dtype == DType::F32 {
                lse_two_pass(cg, f, xp, &row)?
            } else {
                lse_three_pass(cg, f, xp, &row)?
            };
            if let Some(lpp) = lpp {
                cg.for_n(f, c, &mut |k| {
                    let idx = cg.affine(k, inner as i64, base)?;
                    cg.store(lpp, dtype, idx, cg.fsub(cg.load(xp, dtype, idx)?, lse)?)
                })?;
            }
            let raw = cg.load(lp, label_dtype, sample)?.into_int_value();
            let label = cg.b.build_int_s_extend_or_bit_cast(raw, cg.i64t(), "label")?;
            let counted = cg.ctx.append_basic_block(f, "counted");
            let ignored = cg.ctx.append_basic_block(f, "ignored");
            let done = cg.ctx.append_basic_block(f, "sample.done");
            match ignore_index {
                Some(ig) => {
                    let is_ignored = cg.b.build_int_compare(IntPredicate::EQ, label, cg.i64c(ig), "ignored")?;
                    cg.b.build_conditional_branch(is_ignored, ignored, counted)?;
                }
                None => {
                    cg.b.build_unconditional_branch(counted)?;
                }
            }
            // An ignored sample: loss 0, weight 0.
            cg.b.position_at_end(ignored);
            if reduction == LossReduction::None {
                cg.store(lossp, dtype, sample, cg.fconst(like, 0.0))?;
            }
            cg.b.build_unconditional_branch(done)?;
            // A counted sample: check the label, then the loss.
            cg.b.position_at_end(counted);
            let bad = cg.ctx.append_basic_block(f, "bad_label");
            let good = cg.ctx.append_basic_block(f, "good_label");
            let in_range = cg.b.build_int_compare(IntPredicate::ULT, label, cg.i64c(c as i64), "in_range")?;
            cg.b.build_conditional_branch(in_range, good, bad)?;
            cg.b.position_at_end(bad);
            cg.b.build_return(Some(&cg.ctx.i32_type().const_int(1, false)))?;
            cg.b.position_at_end(good);
            let w = match wp {
                Some(wp) => cg.load(wp, dtype, label)?,
                None => cg.fconst(like, 1.0),
            };
            let x_y = cg.load(xp, dtype, cg.affine(label, inner as i64, base)?)?;
            let nll = cg.fsub(lse, x_y)?;
            let mut per = cg.fmul(nll, cg.fconst(like, 1.0 - eps))?;
            if zeta != 0.0 {
                per = cg.fadd(per, cg.fmul(cg.fmul(lse, lse)?, cg.fconst(like, zeta))?)?;
            }
            let mut value = cg.fmul(w, per)?;
            if eps != 0.0 {
                let smooth = cg.entry_alloca(f, ty, "smooth")?;
                cg.b.build_store(smooth, cg.fconst(like, 0.0))?;
                cg.for_n(f, c, &mut |k| {
                    let xk = cg.load(xp, dtype, cg.affine(k, inner as i64, base)?)?;
                    let wk = match wp {
                        Some(wp) => cg.load(wp, dtype, k)?,
                        None => cg.fconst(like, 1.0),
                    };
                    let cur = cg.b.build_load(ty, smooth, "smooth")?;
                    cg.b.build_store(smooth, cg.fadd_reassoc(cur, cg.fmul(wk, cg.fsub(lse, xk)?)?)?)?;
                    Ok(())
                })?;
                let sv = cg.b.build_load(ty, smooth, "smooth")?;
                value = cg.fadd(value, cg.fmul(sv, cg.fconst(like, eps / c as f64))?)?;
            }
            if reduction == LossReduction::None {
                cg.store(lossp, dtype, sample, value)?;
            } else {
                let t = cg.b.build_load(f64t, total, "t")?;
                cg.b.build_store(total, cg.fadd(t, to_f64(value)?)?)?;
                let tw = cg.b.build_load(f64t, total_w, "tw")?;
                cg.b.build_store(total_w, cg.fadd(tw, to_f64(w)?)?)?;
            }
            cg.b.build_unconditional_branch(done)?;
            cg.b.position_at_end(done);
            Ok(())
        })
    })?;
    if reduction != LossReduction::None {
        let t = cg.b.build_load(f64t, total, "t")?;
        let r = if reduction == LossReduction::Mean { cg.fdiv(t, cg.b.build_load(f64t, total_w, "tw")?)? } else { t };
        let r = if dtype == DType::F64 {
            r
        } else {
            cg.b.build_float_trunc(r.into_float_value(), cg.f32t(), "loss")?.into()
        };
        cg.store(lossp, dtype, cg.i64c(0), r)?;
    }
    cg.kernel_return(f)?;
    Ok((f, values.iter().map(|&v| plan.loc(v)).collect()))
}

/// `kiln::LinearCrossEntropy`: the LM head `x = h·Wᵀ + b` fused with the
/// cross-entropy, never materializing the `N × V` logits.
///
/// The vocabulary is visited in tiles of [`crate::plan::LCE_TILE`] entries
/// (at most the op's `chunk_size`). For each tile, every row computes its
/// tile of logits into a small scratch buffer (dot products along `d`,
/// which vectorize when the head is stored `[V, d]`), and folds it into its
/// running maximum and sum (online log-sum-exp: `s ← s·exp(m - m') +
/// Σ exp(x - m')`). A tile of the head stays in cache while all rows pass
/// over it, so the head is read from memory once. The target logit is an
/// indexed dot product `h_i · W_y + b_y`, taken once per row. Per-row state
/// (four numbers) and the tile live in the step's scratch arena range.
pub(crate) fn linear_cross_entropy<'ctx>(
    cg: &Cg<'ctx>,
    plan: &Plan,
    step: usize,
    id: NodeId,
) -> Result<(FunctionValue<'ctx>, Vec<Loc>)> {
    let node = plan.graph.node(id);
    let err = |m: String| BackendError::node(&node.name, node.op.name(), m);
    let Op::LinearCrossEntropy { reduction, ignore_index, label_smoothing, z_loss, transpose_weight, chunk_size } =
        node.op.clone()
    else {
        return Err(err("not a LinearCrossEntropy node".into()));
    };
    let (eps, zeta) = (label_smoothing as f64, z_loss as f64);
    let input =
        |slot: usize, what: &str| node.input(slot).ok_or_else(|| err(format!("input {slot} ({what}) is missing")));
    let (h, w, labels) = (input(0, "hidden")?, input(1, "weight")?, input(2, "labels")?);
    let (bias, class_w) = (node.input(3), node.input(4));
    let loss = node.output(0).ok_or_else(|| err("output 0 is missing".into()))?;
    let dtype = plan.ty(h).dtype;
    if !matches!(dtype, DType::F32 | DType::F64) {
        return Err(BackendError::unsupported(&node.name, node.op.name(), format!("{dtype} inputs")));
    }
    let label_dtype = plan.ty(labels).dtype;
    if !matches!(label_dtype, DType::I32 | DType::I64) {
        return Err(BackendError::unsupported(&node.name, node.op.name(), format!("{label_dtype} labels")));
    }
    let (hs, ws) = (plan.ty(h).shape.clone(), plan.ty(w).shape.clone());
    if hs.len() != 2 || ws.len() != 2 {
        return Err(err(format!("hidden and weight must be matrices, found {hs:?} and {ws:?}")));
    }
    let (n, d) = (hs[0], hs[1]);
    let (vocab, depth) = if transpose_weight { (ws[0], ws[1]) } else { (ws[1], ws[0]) };
    if depth != d || plan.ty(labels).len() != n {
        return Err(err(format!(
            "shapes do not agree: hidden {hs:?}, weight {ws:?}, labels {:?}",
            plan.ty(labels).shape
        )));
    }
    for v in [bias, class_w].into_iter().flatten() {
        if plan.ty(v).len() != vocab || plan.ty(v).dtype != dtype {
            return Err(err(format!("bias and class weight must be {dtype}[{vocab}]")));
        }
    }
    let tile = crate::plan::LCE_TILE.min(chunk_size.max(1) as usize);
    let scratch_offset = plan.scratch[step].ok_or_else(|| err("no scratch space was planned".into()))?;

    let mut values = vec![loss, h, w, labels];
    values.extend(bias);
    values.extend(class_w);
    let f = cg.checked_kernel_fn(&format!("k{step}_LinearCrossEntropy"), values.len() + 1);
    let (lossp, hp, wp, lp) = (cg.param(f, 0), cg.param(f, 1), cg.param(f, 2), cg.param(f, 3));
    let bp = bias.map(|_| cg.param(f, 4));
    let cwp = class_w.map(|_| cg.param(f, 4 + bias.is_some() as u32));
    let scratch = cg.param(f, values.len() as u32);
    let ty = cg.compute_type(dtype).map_err(BackendError::Llvm)?;
    let like: BV = ty.into_float_type().const_float(0.0).into();
    let f64t = cg.ctx.f64_type();
    let c = |v: f64| cg.fconst(like, v);
    // Scratch layout, in elements: max[n], sum[n], target[n], weighted[n], tile.
    let (m_at, s_at, t_at, ws_at, tile_at) = (0, n as i64, 2 * n as i64, 3 * n as i64, 4 * n as i64);
    let at = |base: i64, i| cg.add(cg.i64c(base), i);
    // W(v, j): row-major [V, d] or [d, V].
    let w_index = |v, j| if transpose_weight { cg.affine(v, d as i64, j) } else { cg.affine(j, vocab as i64, v) };
    let class_weight = |k| -> Result<BV<'ctx>> {
        match cwp {
            Some(p) => cg.load(p, dtype, k),
            None => Ok(c(1.0)),
        }
    };
    let dot = |i, v| -> Result<BV<'ctx>> {
        let acc = cg.entry_alloca(f, ty, "dot")?;
        cg.b.build_store(acc, c(0.0))?;
        let hrow = cg.mul(i, d as i64)?;
        cg.for_n(f, d, &mut |j| {
            let hv = cg.load(hp, dtype, cg.add(hrow, j)?)?;
            let wv = cg.load(wp, dtype, w_index(v, j)?)?;
            let cur = cg.b.build_load(ty, acc, "dot")?;
            cg.b.build_store(acc, cg.fadd_reassoc(cur, cg.fmul(hv, wv)?)?)?;
            Ok(())
        })?;
        let mut r = cg.b.build_load(ty, acc, "dot")?;
        if let Some(bp) = bp {
            r = cg.fadd(r, cg.load(bp, dtype, v)?)?;
        }
        Ok(r)
    };
    // Runs `body` for the rows whose label is not the ignore_index.
    let counted_rows =
        |body: &mut dyn FnMut(inkwell::values::IntValue<'ctx>, inkwell::values::IntValue<'ctx>) -> Result<()>| {
            cg.for_n(f, n, &mut |i| {
                let raw = cg.load(lp, label_dtype, i)?.into_int_value();
                let label = cg.b.build_int_s_extend_or_bit_cast(raw, cg.i64t(), "label")?;
                let Some(ig) = ignore_index else { return body(i, label) };
                let go = cg.ctx.append_basic_block(f, "row");
                let skip = cg.ctx.append_basic_block(f, "row.done");
                let ignored = cg.b.build_int_compare(IntPredicate::EQ, label, cg.i64c(ig), "ignored")?;
                cg.b.build_conditional_branch(ignored, skip, go)?;
                cg.b.position_at_end(go);
                body(i, label)?;
                cg.b.build_unconditional_branch(skip)?;
                cg.b.position_at_end(skip);
                Ok(())
            })
        };

    // Check the labels, take the target logits, reset the row state.
    counted_rows(&mut |i, label| {
        let bad = cg.ctx.append_basic_block(f, "bad_label");
        let good = cg.ctx.append_basic_block(f, "good_label");
        let in_range = cg.b.build_int_compare(IntPredicate::ULT, label, cg.i64c(vocab as i64), "in_range")?;
        cg.b.build_conditional_branch(in_range, good, bad)?;
        cg.b.position_at_end(bad);
        cg.b.build_return(Some(&cg.ctx.i32_type().const_int(1, false)))?;
        cg.b.position_at_end(good);
        cg.store(scratch, dtype, at(t_at, i)?, dot(i, label)?)?;
        cg.store(scratch, dtype, at(m_at, i)?, c(f64::NEG_INFINITY))?;
        cg.store(scratch, dtype, at(s_at, i)?, c(0.0))?;
        cg.store(scratch, dtype, at(ws_at, i)?, c(0.0))
    })?;
    // The vocabulary, tile by tile.
    let tiles = vocab.div_ceil(tile);
    let tmax = cg.entry_alloca(f, ty, "tile_max")?;
    let tsum = cg.entry_alloca(f, ty, "tile_sum")?;
    let twsum = cg.entry_alloca(f, ty, "tile_weighted")?;
    cg.for_n(f, tiles, &mut |t| {
        let v0 = cg.mul(t, tile as i64)?;
        let left = cg.b.build_int_nsw_sub(cg.i64c(vocab as i64), v0, "left")?;
        let short = cg.b.build_int_compare(IntPredicate::SLT, left, cg.i64c(tile as i64), "short")?;
        let tb = cg.b.build_select(short, left, cg.i64c(tile as i64), "tb")?.into_int_value();
        counted_rows(&mut |i, _| {
            cg.b.build_store(tmax, c(f64::NEG_INFINITY))?;
            cg.for_range(f, tb, &mut |k| {
                let x = dot(i, cg.add(v0, k)?)?;
                cg.store(scratch, dtype, at(tile_at, k)?, x)?;
                let cur = cg.b.build_load(ty, tmax, "tmax")?;
                cg.b.build_store(tmax, cg.fmaxnum(cur, x)?)?;
                Ok(())
            })?;
            let m_old = cg.load(scratch, dtype, at(m_at, i)?)?;
            let m_new = cg.fmaxnum(m_old, cg.b.build_load(ty, tmax, "tmax")?)?;
            // Until some logit is finite there is nothing to shift by.
            let finite = cg.fcmp(inkwell::FloatPredicate::ONE, m_new, c(f64::NEG_INFINITY))?;
            let shift = cg.select(finite, m_new, c(0.0))?;
            cg.b.build_store(tsum, c(0.0))?;
            cg.b.build_store(twsum, c(0.0))?;
            cg.for_range(f, tb, &mut |k| {
                let x = cg.load(scratch, dtype, at(tile_at, k)?)?;
                let cur = cg.b.build_load(ty, tsum, "tsum")?;
                cg.b.build_store(tsum, cg.fadd_reassoc(cur, cg.exp(cg.fsub(x, shift)?)?)?)?;
                if eps != 0.0 {
                    let wk = class_weight(cg.add(v0, k)?)?;
                    let cur = cg.b.build_load(ty, twsum, "twsum")?;
                    cg.b.build_store(twsum, cg.fadd_reassoc(cur, cg.fmul(wk, x)?)?)?;
                }
                Ok(())
            })?;
            let s_old = cg.load(scratch, dtype, at(s_at, i)?)?;
            let empty = cg.fcmp(inkwell::FloatPredicate::OEQ, s_old, c(0.0))?;
            let rescale = cg.select(empty, c(0.0), cg.exp(cg.fsub(m_old, shift)?)?)?;
            let s_new = cg.fadd(cg.fmul(s_old, rescale)?, cg.b.build_load(ty, tsum, "tsum")?)?;
            cg.store(scratch, dtype, at(s_at, i)?, s_new)?;
            cg.store(scratch, dtype, at(m_at, i)?, m_new)?;
            if eps != 0.0 {
                let ws = cg.load(scratch, dtype, at(ws_at, i)?)?;
                cg.store(scratch, dtype, at(ws_at, i)?, cg.fadd(ws, cg.b.build_load(ty, twsum, "twsum")?)?)?;
            }
            Ok(())
        })
    })?;
    // Σ_c w_c for the smoothing term.
    let total_class_w = if eps != 0.0 && cwp.is_some() {
        let acc = cg.entry_alloca(f, ty, "class_w")?;
        cg.b.build_store(acc, c(0.0))?;
        cg.for_n(f, vocab, &mut |k| {
            let cur = cg.b.build_load(ty, acc, "cw")?;
            cg.b.build_store(acc, cg.fadd_reassoc(cur, class_weight(k)?)?)?;
            Ok(())
        })?;
        cg.b.build_load(ty, acc, "cw")?
    } else {
        c(vocab as f64)
    };
    // The losses.
    let total = cg.entry_alloca(f, f64t.into(), "total")?;
    let total_w = cg.entry_alloca(f, f64t.into(), "total_w")?;
    cg.b.build_store(total, f64t.const_zero())?;
    cg.b.build_store(total_w, f64t.const_zero())?;
    if reduction == LossReduction::None {
        cg.for_n(f, n, &mut |i| cg.store(lossp, dtype, i, c(0.0)))?;
    }
    let to_f64 = |v: BV<'ctx>| -> Result<BV<'ctx>> {
        Ok(if dtype == DType::F64 { v } else { cg.b.build_float_ext(v.into_float_value(), f64t, "wide")?.into() })
    };
    counted_rows(&mut |i, label| {
        let m = cg.load(scratch, dtype, at(m_at, i)?)?;
        let s = cg.load(scratch, dtype, at(s_at, i)?)?;
        let finite = cg.fcmp(inkwell::FloatPredicate::ONE, m, c(f64::NEG_INFINITY))?;
        let lse = cg.select(finite, cg.fadd(m, cg.intrinsic("llvm.log", &[s])?)?, m)?;
        let target = cg.load(scratch, dtype, at(t_at, i)?)?;
        let wy = class_weight(label)?;
        let mut per = cg.fmul(cg.fsub(lse, target)?, c(1.0 - eps))?;
        if zeta != 0.0 {
            per = cg.fadd(per, cg.fmul(cg.fmul(lse, lse)?, c(zeta))?)?;
        }
        let mut value = cg.fmul(wy, per)?;
        if eps != 0.0 {
            let ws = cg.load(scratch, dtype, at(ws_at, i)?)?;
            let smooth = cg.fsub(cg.fmul(lse, total_class_w)?, ws)?;
            value = cg.fadd(value, cg.fmul(smooth, c(eps / vocab as f64))?)?;
        }
        if reduction == LossReduction::None {
            cg.store(lossp, dtype, i, value)
        } else {
            let t = cg.b.build_load(f64t, total, "t")?;
            cg.b.build_store(total, cg.fadd(t, to_f64(value)?)?)?;
            let tw = cg.b.build_load(f64t, total_w, "tw")?;
            cg.b.build_store(total_w, cg.fadd(tw, to_f64(wy)?)?)?;
            Ok(())
        }
    })?;
    if reduction != LossReduction::None {
        let t = cg.b.build_load(f64t, total, "t")?;
        let r = if reduction == LossReduction::Mean { cg.fdiv(t, cg.b.build_load(f64t, total_w, "tw")?)? } else { t };
        let r = if dtype == DType::F64 {
            r
        } else {
            cg.b.build_float_trunc(r.into_float_value(), cg.f32t(), "loss")?.into()
        };
        cg.store(lossp, dtype, cg.i64c(0), r)?;
    }
    cg.kernel_return(f)?;
    let mut locs: Vec<Loc> = values.iter().map(|&v| plan.loc(v)).collect();
    locs.push(Loc { slot: crate::plan::Slot::Arena, offset: scratch_offset });
    Ok((f, locs))
}
