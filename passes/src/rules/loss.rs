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
//!
//! - `loss-zloss-fold`: PaLM's auxiliary z-loss added to a `CrossEntropy`
//!   becomes the op's `z_loss` attribute. The graph computes
//!   `CE(x, y) + c · R(lse²)` (either operand order; `c ·` on either side,
//!   or absent for `c = 1`), where `lse` is `ReduceLogSumExp(x)` or
//!   `Log(ReduceSum(Exp(x)))` over the class axis 1 of the *same* logits
//!   `x`, the square is `Pow(lse, 2)` or `Mul(lse, lse)`, and `R` matches
//!   the loss's reduction: `ReduceMean` over every axis for `mean`,
//!   `ReduceSum` over every axis for `sum`, nothing for `none`. The sum
//!   must have the loss's type (no broadcasting). By the op's spec the
//!   z-term of sample `i` is `w_{y_i}·ζ·lse_i²` and `mean` divides by
//!   `Σ w_{y_i}` over the samples not ignored, so the fold is exact only
//!   without a class weight input and without `ignore_index` (with either,
//!   the graph's plain mean of `lse²` over every sample is a different
//!   number); the rule requires both absent. `c` must be a one-element
//!   constant that an `f32` holds exactly; it is added to the op's existing
//!   `z_loss`. Not matched: a coefficient computed at run time, `lse` in
//!   the max-shifted form `m + log Σ exp(x - m)`, and a coefficient inside
//!   the mean (`mean(c · lse²)`).

use super::{node_at, reduce_axes, root_of, var_at, AstBuilder, Match, Rule};
use crate::analysis::KilnEGraph;
use crate::lang::{Disc, KilnLang, OpKey};
use egg::{Id, Language, PatternAst};
use kiln_ir::op::{BinaryOp, LossReduction, Op, ReduceKind, UnaryOp};
use kiln_ir::types::TensorType;
use std::sync::Arc;

/// The rules of this module.
///
/// The LM-head fusion of [`super::loss_linear`] runs in the same pass, so
/// a loss fused into `CrossEntropy` (and its z-loss) can absorb its
/// head matmul; the softmax rules of [`super::softmax`] run there too.
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
    rules.push(Arc::new(ZLossFold));
    rules.extend(super::loss_linear::rules());
    rules.extend(super::softmax::rules());
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

/// `CE(x, y) + c · R(lse(x)²)` -> `CE{z_loss += c}(x, y)`; see the module
/// docs for the accepted forms and why class weights and `ignore_index`
/// rule it out.
struct ZLossFold;

/// A one-element constant class and its value.
fn scalar_constant(egraph: &KilnEGraph, class: Id) -> Option<f64> {
    let t = egraph.analysis.constant(&egraph[class].data)?;
    let v = t.to_f64s();
    (v.len() == 1).then(|| v[0])
}

/// The single-output op nodes of `class` with their op and children.
fn op_nodes(egraph: &KilnEGraph, class: Id) -> impl Iterator<Item = (&KilnLang, &Op, &[Id])> + '_ {
    egraph[class].nodes.iter().filter_map(|n| match n {
        KilnLang::Op {
            op,
            outputs: 1,
            children,
        } => Some((n, op.op(), children.as_slice())),
        _ => None,
    })
}

/// The coefficient forms of a z-term class: `Mul(c, Z)` or `Mul(Z, c)`
/// with the Mul node and the constant's slot, or `Z` itself (`c = 1`),
/// each with the class of `Z`, which must have the loss's type `ty`.
fn coefficient_forms<'a>(
    egraph: &'a KilnEGraph,
    term: Id,
    ty: &TensorType,
) -> Vec<(Option<(&'a KilnLang, usize)>, Id)> {
    let mut out = Vec::new();
    if egraph[term].data.tensor() == Some(ty) {
        out.push((None, term));
    }
    for (mul, op, kids) in op_nodes(egraph, term) {
        if *op != Op::Binary(BinaryOp::Mul) || kids.len() != 2 {
            continue;
        }
        for slot in 0..2 {
            let exact_in_f32 =
                scalar_constant(egraph, kids[slot]).is_some_and(|c| (c as f32) as f64 == c);
            if exact_in_f32 && egraph[kids[1 - slot]].data.tensor() == Some(ty) {
                out.push((Some((mul, slot)), kids[1 - slot]));
            }
        }
    }
    out
}

/// The reductions of the squares in class `z` that match the loss's
/// `reduction` (`ReduceMean` or `ReduceSum` over every axis, or none),
/// each with the class of the squares.
fn reduction_forms(
    egraph: &KilnEGraph,
    z: Id,
    reduction: LossReduction,
) -> Vec<(Option<&KilnLang>, Id)> {
    let kind = match reduction {
        LossReduction::None => return vec![(None, z)],
        LossReduction::Mean => ReduceKind::Mean,
        LossReduction::Sum => ReduceKind::Sum,
    };
    let mut out = Vec::new();
    for (r, op, kids) in op_nodes(egraph, z) {
        if !matches!(op, Op::Reduce { kind: k, .. } if *k == kind) {
            continue;
        }
        let Some(rank) = egraph[kids[0]].data.tensor().map(|t| t.rank()) else {
            continue;
        };
        if reduce_axes(egraph, op, kids, rank) == Some((0..rank).collect()) {
            out.push((Some(r), kids[0]));
        }
    }
    out
}

/// The squares in class `sq`, `Pow(l, 2)` or `Mul(l, l)`, each with the
/// class of `l`.
fn square_forms(egraph: &KilnEGraph, sq: Id) -> Vec<(&KilnLang, Id)> {
    op_nodes(egraph, sq)
        .filter(|(_, op, kids)| match op {
            Op::Binary(BinaryOp::Mul) => egraph.find(kids[1]) == egraph.find(kids[0]),
            Op::Binary(BinaryOp::Pow) => scalar_constant(egraph, kids[1]) == Some(2.0),
            _ => false,
        })
        .map(|(n, _, kids)| (n, kids[0]))
        .collect()
}

/// The ways class `lse` is the log-sum-exp of `x` over axis 1, each as
/// the chain of nodes from `x` up (`[ReduceLogSumExp]` or
/// `[Exp, ReduceSum, Log]`), every node reading the one before it.
fn lse_forms(egraph: &KilnEGraph, lse: Id, x: Id) -> Vec<Vec<&KilnLang>> {
    let x = egraph.find(x);
    let Some(rank) = egraph[x].data.tensor().map(|t| t.rank()) else {
        return Vec::new();
    };
    let class_axis =
        |op: &Op, kids: &[Id]| reduce_axes(egraph, op, kids, rank).as_deref() == Some(&[1][..]);
    let mut out = Vec::new();
    for (n, op, kids) in op_nodes(egraph, lse) {
        match op {
            Op::Reduce {
                kind: ReduceKind::LogSumExp,
                ..
            } if egraph.find(kids[0]) == x && class_axis(op, kids) => {
                out.push(vec![n]);
            }
            Op::Unary(UnaryOp::Log) => {
                for (sum, sop, sk) in op_nodes(egraph, kids[0]) {
                    if !matches!(
                        sop,
                        Op::Reduce {
                            kind: ReduceKind::Sum,
                            ..
                        }
                    ) || !class_axis(sop, sk)
                    {
                        continue;
                    }
                    for (exp, eop, ek) in op_nodes(egraph, sk[0]) {
                        if *eop == Op::Unary(UnaryOp::Exp) && egraph.find(ek[0]) == x {
                            out.push(vec![exp, sum, n]);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// The pieces of one z-loss match, from the root down.
struct ZLossParts<'a> {
    add: &'a KilnLang,
    /// The slot of the loss in the Add.
    loss_slot: usize,
    ce: &'a KilnLang,
    mul: Option<(&'a KilnLang, usize)>,
    reduce: Option<&'a KilnLang>,
    square: &'a KilnLang,
    lse: Vec<&'a KilnLang>,
}

impl ZLossParts<'_> {
    /// The match's left-hand side, laid out as [`ZLossFold`]'s rewrite
    /// reads it: `[x, y, CE(x, y), lse..., square, R?, Mul?, Add]`.
    fn build(&self) -> Match {
        let mut b = AstBuilder::new();
        let ck = self.ce.children();
        let xv = b.class(ck[0]);
        let yv = b.class(ck[1]);
        let cev = b.node(with_children(self.ce, &[xv, yv]));
        let mut at = xv;
        for n in &self.lse {
            at = b.node_with_first_child(n, at);
        }
        let second = match self.square.as_op() {
            Some(Op::Binary(BinaryOp::Mul)) => at,
            _ => b.class(self.square.children()[1]),
        };
        let mut zv = b.node(with_children(self.square, &[at, second]));
        if let Some(r) = self.reduce {
            zv = b.node_with_first_child(r, zv);
        }
        if let Some((m, cslot)) = self.mul {
            let cv = b.class(m.children()[cslot]);
            let mut kids = [cv, cv];
            kids[1 - cslot] = zv;
            zv = b.node(with_children(m, &kids));
        }
        let mut kids = [cev, cev];
        kids[1 - self.loss_slot] = zv;
        b.node(with_children(self.add, &kids));
        b.finish()
    }
}

/// `node` with its children replaced by AST indices.
fn with_children(node: &KilnLang, kids: &[Id]) -> KilnLang {
    let mut n = node.clone();
    n.children_mut().copy_from_slice(kids);
    n
}

impl Rule for ZLossFold {
    fn name(&self) -> &'static str {
        "loss-zloss-fold"
    }

    fn description(&self) -> &'static str {
        "CrossEntropy(x, y) + c * mean|sum(logsumexp(x, class axis)^2) -> kiln::CrossEntropy{z_loss = c}(x, y)"
    }

    fn roots(&self) -> Option<Vec<Disc>> {
        Some(vec![Disc::onnx("Add")])
    }

    fn search(&self, egraph: &KilnEGraph, class: Id, out: &mut Vec<Match>) {
        let Some(total_ty) = egraph[class].data.tensor() else {
            return;
        };
        for (add, aop, ak) in op_nodes(egraph, class) {
            if *aop != Op::Binary(BinaryOp::Add) || ak.len() != 2 {
                continue;
            }
            for loss_slot in 0..2 {
                let (loss, term) = (ak[loss_slot], ak[1 - loss_slot]);
                if egraph[loss].data.tensor() != Some(total_ty) {
                    continue;
                }
                for (ce, cop, ck) in op_nodes(egraph, loss) {
                    // No class weight and no ignore_index: see the module docs.
                    let Op::CrossEntropy {
                        reduction,
                        ignore_index: None,
                        ..
                    } = cop
                    else {
                        continue;
                    };
                    if ck.len() != 2 {
                        continue;
                    }
                    for (mul, z) in coefficient_forms(egraph, term, total_ty) {
                        for (reduce, sq) in reduction_forms(egraph, z, *reduction) {
                            for (square, l) in square_forms(egraph, sq) {
                                for lse in lse_forms(egraph, l, ck[0]) {
                                    let parts = ZLossParts {
                                        add,
                                        loss_slot,
                                        ce,
                                        mul,
                                        reduce,
                                        square,
                                        lse,
                                    };
                                    out.push(parts.build());
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn rewrite(
        &self,
        egraph: &mut KilnEGraph,
        _eclass: Id,
        m: &Match,
    ) -> Option<PatternAst<KilnLang>> {
        // LHS layout: [x, y, CE(x, y), lse..., square, R?, Mul?, Add].
        let add = node_at(&m.lhs, root_of(&m.lhs))?;
        let ce_index = Id::from(2);
        let Some(Op::CrossEntropy {
            reduction,
            ignore_index,
            label_smoothing,
            z_loss,
        }) = node_at(&m.lhs, ce_index)?.as_op()
        else {
            return None;
        };
        let term = add.children().iter().copied().find(|&c| c != ce_index)?;
        // A coefficient Mul has the constant as a leaf; a term without one
        // (c = 1) is the square or its reduction, whose children are nodes
        // (or, for Pow, a leaf under the square, not here).
        let term_node = node_at(&m.lhs, term)?;
        let coefficient_leaf = match term_node.as_op() {
            Some(Op::Binary(BinaryOp::Mul)) => {
                term_node.children().iter().find_map(|&c| var_at(&m.lhs, c))
            }
            _ => None,
        };
        let coefficient = match coefficient_leaf {
            Some(c) => scalar_constant(egraph, *m.subst.get(c)?)? as f32,
            None => 1.0,
        };
        let mut b = AstBuilder::continuing(&m.subst);
        let x = b.var(var_at(&m.lhs, Id::from(0))?);
        let y = b.var(var_at(&m.lhs, Id::from(1))?);
        b.node(KilnLang::Op {
            op: OpKey::new(Op::CrossEntropy {
                reduction: *reduction,
                ignore_index: *ignore_index,
                label_smoothing: *label_smoothing,
                z_loss: z_loss + coefficient,
            }),
            outputs: 1,
            children: vec![x, y],
        });
        Some(b.into_ast())
    }
}
