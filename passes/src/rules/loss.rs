//! Loss fusion: the softmax-then-negative-log-likelihood shapes exporters
//! emit become kiln's one numerically stable `CrossEntropy` (log-sum-exp
//! form, spec in `kiln_ir::op`).
//!
//! - `loss-sce`: ONNX `SoftmaxCrossEntropyLoss` is `CrossEntropy` with the
//!   same reduction and ignore_index (and its `log_prob` output, when used).
//! - `loss-logsoftmax-nll`: `NegativeLogLikelihoodLoss(LogSoftmax(x), y[, w])`.
//! - `loss-softmax-log-nll`: `NegativeLogLikelihoodLoss(Log(Softmax(x)), y[, w])`;
//!   the fused form is exact where the unfused one takes the log of an
//!   underflowed probability.
//!
//! The softmax must run over the class axis (axis 1 of `[N, C, ...]`), or
//! the NLL would read a distribution over some other axis. When the
//! (Log)Softmax has other consumers, the e-graph keeps it for them: the
//! rules add an equal form of the loss and never remove anything.

use super::{node_at, root_of, var_at, AstBuilder, Match, Rule};
use crate::analysis::KilnEGraph;
use crate::lang::{Disc, KilnLang};
use egg::{Id, Language, PatternAst};
use kiln_ir::op::{LossReduction, Op, UnaryOp};
use std::sync::Arc;

/// The rules of this module.
/// The LM-head fusion of [`super::loss_linear`] runs in the same pass, so
/// a loss fused into `CrossEntropy` can absorb its head matmul.
pub fn rules() -> Vec<Arc<dyn Rule>> {
    let mut rules: Vec<Arc<dyn Rule>> = vec![
        Arc::new(LossFusion {
            source: Source::SoftmaxCrossEntropy,
        }),
        Arc::new(LossFusion {
            source: Source::LogSoftmax,
        }),
        Arc::new(LossFusion {
            source: Source::SoftmaxLog,
        }),
    ];
    rules.extend(super::loss_linear::rules());
    rules
}

/// Which unfused form a [`LossFusion`] rule matches.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    /// `SoftmaxCrossEntropyLoss(x, y[, w])`.
    SoftmaxCrossEntropy,
    /// `NegativeLogLikelihoodLoss(LogSoftmax(x), y[, w])`.
    LogSoftmax,
    /// `NegativeLogLikelihoodLoss(Log(Softmax(x)), y[, w])`.
    SoftmaxLog,
}

/// One rule per [`Source`]; the three share the rewrite, which keeps the
/// loss node's slots after the first and replaces its scores by `x`.
struct LossFusion {
    source: Source,
}

/// The fused op for a loss with these attributes.
fn cross_entropy(reduction: LossReduction, ignore_index: Option<i64>) -> Op {
    Op::CrossEntropy {
        reduction,
        ignore_index,
        label_smoothing: 0.0,
        z_loss: 0.0,
    }
}

/// True when `axis` names axis 1 of a value of rank `rank` (the class axis
/// of `[N, C, ...]`).
fn is_class_axis(axis: i64, rank: usize) -> bool {
    let Ok(rank) = i64::try_from(rank) else {
        return false;
    };
    rank >= 2 && (axis == 1 || axis == 1 - rank)
}

/// The single-output nodes of `class` with ONNX op type `name`.
fn onnx_nodes<'a>(
    egraph: &'a KilnEGraph,
    class: Id,
    name: &'static str,
) -> impl Iterator<Item = &'a KilnLang> + 'a {
    egraph[class].nodes.iter().filter(move |n| {
        matches!(n, KilnLang::Op { op, outputs: 1, .. } if op.name() == name && op.domain().is_empty())
    })
}

/// The softmax-like node (`LogSoftmax` or `Softmax`) over the class axis in
/// `class`, with its input class.
fn class_axis_softmax<'a>(
    egraph: &'a KilnEGraph,
    class: Id,
    name: &'static str,
) -> impl Iterator<Item = (&'a KilnLang, Id)> + 'a {
    onnx_nodes(egraph, class, name).filter_map(move |n| {
        let axis = match n.as_op()? {
            Op::LogSoftmax { axis } | Op::Softmax { axis } => *axis,
            _ => return None,
        };
        let x = *n.children().first()?;
        let rank = egraph[x].data.tensor()?.rank();
        is_class_axis(axis, rank).then_some((n, x))
    })
}

impl Rule for LossFusion {
    fn name(&self) -> &'static str {
        match self.source {
            Source::SoftmaxCrossEntropy => "loss-sce",
            Source::LogSoftmax => "loss-logsoftmax-nll",
            Source::SoftmaxLog => "loss-softmax-log-nll",
        }
    }

    fn description(&self) -> &'static str {
        match self.source {
            Source::SoftmaxCrossEntropy => "SoftmaxCrossEntropyLoss(x, y, w) -> kiln::CrossEntropy(x, y, w)",
            Source::LogSoftmax => {
                "NegativeLogLikelihoodLoss(LogSoftmax(x, class axis), y, w) -> kiln::CrossEntropy(x, y, w)"
            }
            Source::SoftmaxLog => {
                "NegativeLogLikelihoodLoss(Log(Softmax(x, class axis)), y, w) -> kiln::CrossEntropy(x, y, w)"
            }
        }
    }

    fn roots(&self) -> Option<Vec<Disc>> {
        Some(vec![Disc::onnx(match self.source {
            Source::SoftmaxCrossEntropy => "SoftmaxCrossEntropyLoss",
            Source::LogSoftmax | Source::SoftmaxLog => "NegativeLogLikelihoodLoss",
        })])
    }

    fn search(&self, egraph: &KilnEGraph, class: Id, out: &mut Vec<Match>) {
        let root_name = match self.source {
            Source::SoftmaxCrossEntropy => "SoftmaxCrossEntropyLoss",
            Source::LogSoftmax | Source::SoftmaxLog => "NegativeLogLikelihoodLoss",
        };
        for root in egraph[class].nodes.iter() {
            let KilnLang::Op {
                op,
                outputs,
                children,
            } = root
            else {
                continue;
            };
            if op.name() != root_name || !op.domain().is_empty() || children.len() < 2 {
                continue;
            }
            match self.source {
                Source::SoftmaxCrossEntropy => {
                    // The scores must have a class axis; the log_prob output
                    // (a second slot) is the same in the fused op.
                    let Some(t) = egraph[children[0]].data.tensor() else {
                        continue;
                    };
                    if t.rank() < 2 || *outputs > 2 {
                        continue;
                    }
                    let mut b = AstBuilder::new();
                    let leaves: Vec<Id> = children.iter().map(|&c| b.class(c)).collect();
                    let mut n = root.clone();
                    n.children_mut().copy_from_slice(&leaves);
                    b.node(n);
                    out.push(b.finish());
                }
                Source::LogSoftmax => {
                    if *outputs != 1 {
                        continue;
                    }
                    for (ls, x) in class_axis_softmax(egraph, children[0], "LogSoftmax") {
                        let mut b = AstBuilder::new();
                        let xv = b.class(x);
                        let mut l = ls.clone();
                        l.children_mut().copy_from_slice(&[xv]);
                        let lv = b.node(l);
                        b.node_with_first_child(root, lv);
                        out.push(b.finish());
                    }
                }
                Source::SoftmaxLog => {
                    if *outputs != 1 {
                        continue;
                    }
                    let logs = onnx_nodes(egraph, children[0], "Log")
                        .filter(|n| n.as_op() == Some(&Op::Unary(UnaryOp::Log)));
                    for log in logs {
                        let Some(&p) = log.children().first() else {
                            continue;
                        };
                        for (sm, x) in class_axis_softmax(egraph, p, "Softmax") {
                            let mut b = AstBuilder::new();
                            let xv = b.class(x);
                            let mut s = sm.clone();
                            s.children_mut().copy_from_slice(&[xv]);
                            let sv = b.node(s);
                            let mut l = log.clone();
                            l.children_mut().copy_from_slice(&[sv]);
                            let lv = b.node(l);
                            b.node_with_first_child(root, lv);
                            out.push(b.finish());
                        }
                    }
                }
            }
        }
    }

    fn rewrite(
        &self,
        _egraph: &mut KilnEGraph,
        _eclass: Id,
        m: &Match,
    ) -> Option<PatternAst<KilnLang>> {
        // LHS layout: [x, (softmax nodes...), rest..., root]; x is entry 0
        // for every source, and the root's children after the first are the
        // labels and weight leaves.
        let root = node_at(&m.lhs, root_of(&m.lhs))?;
        let KilnLang::Op {
            op,
            outputs,
            children,
        } = root
        else {
            return None;
        };
        let (reduction, ignore_index) = match op.op() {
            Op::SoftmaxCrossEntropyLoss {
                reduction,
                ignore_index,
            }
            | Op::NegativeLogLikelihoodLoss {
                reduction,
                ignore_index,
            } => (*reduction, *ignore_index),
            _ => return None,
        };
        let mut b = AstBuilder::continuing(&m.subst);
        let x = b.var(var_at(&m.lhs, Id::from(0))?);
        let mut kids = vec![x];
        for &c in &children[1..] {
            kids.push(b.var(var_at(&m.lhs, c)?));
        }
        b.node(KilnLang::Op {
            op: crate::lang::OpKey::new(cross_entropy(reduction, ignore_index)),
            outputs: *outputs,
            children: kids,
        });
        Some(b.into_ast())
    }
}
