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
            } else if cg.softmax != SoftmaxAlgorithm::ThreePass && dtype == DType::F32 {
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
/// cross-entropy, never materializing the `N × V` logits. The kernel lives
/// in [`super::lce`] (vocabulary tiles of logits computed by a
/// register-blocked tile GEMM, online log-sum-exp per row).
pub(crate) fn linear_cross_entropy<'ctx>(
    cg: &Cg<'ctx>,
    plan: &Plan,
    step: usize,
    id: NodeId,
) -> Result<(FunctionValue<'ctx>, Vec<Loc>)> {
    super::lce::forward(cg, plan, step, id)
}
