//! Softmax under order statistics: a softmax is strictly increasing along
//! its axis, so what only depends on the order of the values along that
//! axis can read the logits instead, and a renormalized top-k of
//! probabilities is a softmax over the top-k logits.
//!
//! - `argmax-softmax`: `ArgMax(Softmax(x, a), a)` -> `ArgMax(x, a)`, and the
//!   same for `ArgMin` and for `LogSoftmax`; `keepdims` and
//!   `select_last_index` are kept as they were. The arg-reduction must run
//!   along the softmax's axis: along another axis the softmax rescales each
//!   slice differently and the order changes.
//! - `topk-softmax-indices`: the indices of `TopK(Softmax(x, a), k, a)` are
//!   those of `TopK(x, k, a)` (largest or smallest, sorted or not, the
//!   attributes kept).
//! - `topk-softmax-renorm`: MoE gating's `p = TopK(Softmax(x, a), k, a)`
//!   values renormalized as `p / ReduceSum(p, [a], keepdims = 1)` equal
//!   `Softmax(TopK(x, k, a).values, a)`: `softmax(x)_i / Σ_{j∈top} softmax(x)_j
//!   = exp(x_i) / Σ_{j∈top} exp(x_j)`, the common normalizer cancelling.
//!   Together with `topk-softmax-indices` the softmax over every expert
//!   goes away.
//!
//! # Ties, collapse and NaN
//!
//! The equalities hold in real arithmetic. In floating point a softmax can
//! map distinct logits to equal probabilities: far below the row's maximum
//! `exp` underflows to exactly 0, and close logits can round to the same
//! probability ("softmax collapse", see "Grokking at the Edge of Numerical
//! Stability"). Where the source graph's answer was decided by such a
//! rounding tie (first index wins for `ArgMax`, or the order of `TopK`'s
//! equal values), the rewritten graph answers for the logits themselves, so
//! the index can differ; with distinct finite logits that stay distinct
//! after the softmax, the results are identical. For `largest = 0` top-k of
//! probabilities that underflowed to 0 the source's renormalization is
//! `0/0 = NaN` while the rewrite gives the finite softmax over the logits.
//! A row with a NaN (or, through `inf - inf`, a `+inf`) logit is all NaN
//! after the softmax, so the source's arg-reduction and top-k see only
//! NaNs while the rewrite sees the other logits too: the rules are exact
//! for finite logits only.

use super::{node_at, reduce_axes, root_of, var_at, AstBuilder, Match, Rule};
use crate::analysis::KilnEGraph;
use crate::lang::{Disc, KilnLang};
use egg::{Id, Language, PatternAst};
use kiln_ir::op::{BinaryOp, Op, ReduceKind};
use std::sync::Arc;

/// The rules of this module.
pub fn rules() -> Vec<Arc<dyn Rule>> {
    vec![
        Arc::new(ArgSoftmax),
        Arc::new(TopKSoftmax { renorm: false }),
        Arc::new(TopKSoftmax { renorm: true }),
    ]
}

/// `axis` normalized for a value of rank `rank`, when in range.
fn normalize(axis: i64, rank: usize) -> Option<usize> {
    let r = i64::try_from(rank).ok()?;
    let a = if axis < 0 { axis + r } else { axis };
    usize::try_from(a).ok().filter(|&a| a < rank)
}

/// The `Softmax` (and, with `log`, `LogSoftmax`) nodes of `class` whose
/// normalized axis is `axis`, with their input class.
fn softmaxes(egraph: &KilnEGraph, class: Id, axis: usize, log: bool) -> Vec<(&KilnLang, Id)> {
    let mut out = Vec::new();
    for n in &egraph[class].nodes {
        let KilnLang::Op {
            op,
            outputs: 1,
            children,
        } = n
        else {
            continue;
        };
        let a = match op.op() {
            Op::Softmax { axis } => *axis,
            Op::LogSoftmax { axis } if log => *axis,
            _ => continue,
        };
        let Some(rank) = egraph[children[0]].data.tensor().map(|t| t.rank()) else {
            continue;
        };
        if normalize(a, rank) == Some(axis) {
            out.push((n, children[0]));
        }
    }
    out
}

/// `node` with its children replaced by AST indices.
fn with_children(node: &KilnLang, kids: &[Id]) -> KilnLang {
    let mut n = node.clone();
    n.children_mut().copy_from_slice(kids);
    n
}

/// `Arg{Max,Min}((Log)Softmax(x, a), a) -> Arg{Max,Min}(x, a)`.
struct ArgSoftmax;

impl Rule for ArgSoftmax {
    fn name(&self) -> &'static str {
        "argmax-softmax"
    }

    fn description(&self) -> &'static str {
        "ArgMax|ArgMin((Log)Softmax(x, axis a), axis a) -> ArgMax|ArgMin(x, axis a) (ties from softmax rounding may resolve differently)"
    }

    fn roots(&self) -> Option<Vec<Disc>> {
        Some(vec![Disc::onnx("ArgMax"), Disc::onnx("ArgMin")])
    }

    fn search(&self, egraph: &KilnEGraph, class: Id, out: &mut Vec<Match>) {
        for root in &egraph[class].nodes {
            let KilnLang::Op {
                op,
                outputs: 1,
                children,
            } = root
            else {
                continue;
            };
            let Op::ArgReduce { axis, .. } = op.op() else {
                continue;
            };
            let Some(rank) = egraph[children[0]].data.tensor().map(|t| t.rank()) else {
                continue;
            };
            let Some(axis) = normalize(*axis, rank) else {
                continue;
            };
            for (sm, x) in softmaxes(egraph, children[0], axis, true) {
                let mut b = AstBuilder::new();
                let xv = b.class(x);
                let sv = b.node(with_children(sm, &[xv]));
                b.node(with_children(root, &[sv]));
                out.push(b.finish());
            }
        }
    }

    fn rewrite(
        &self,
        _egraph: &mut KilnEGraph,
        _eclass: Id,
        m: &Match,
    ) -> Option<PatternAst<KilnLang>> {
        // LHS layout: [x, softmax, arg].
        let root = node_at(&m.lhs, root_of(&m.lhs))?;
        let mut b = AstBuilder::continuing(&m.subst);
        let x = b.var(var_at(&m.lhs, Id::from(0))?);
        b.node(with_children(root, &[x]));
        Some(b.into_ast())
    }
}

/// `topk-softmax-indices` (`renorm: false`): `Proj1(TopK(Softmax(x), k))`
/// -> `Proj1(TopK(x, k))`; `topk-softmax-renorm` (`renorm: true`):
/// `v / ReduceSum(v, [a], keepdims)` with `v = Proj0(TopK(Softmax(x), k))`
/// -> `Softmax(Proj0(TopK(x, k)))`.
struct TopKSoftmax {
    renorm: bool,
}

/// The `TopK` tuple nodes of `class` over a softmax along the same axis:
/// the TopK node, its softmax node, the softmax's input and the axis.
fn topk_over_softmax(
    egraph: &KilnEGraph,
    class: Id,
    log: bool,
) -> Vec<(&KilnLang, &KilnLang, Id, usize)> {
    let mut out = Vec::new();
    for t in &egraph[class].nodes {
        let KilnLang::Op {
            op,
            outputs: 2,
            children,
        } = t
        else {
            continue;
        };
        let Op::TopK { axis, .. } = op.op() else {
            continue;
        };
        if children.len() != 2 {
            continue;
        }
        let Some(rank) = egraph[children[0]].data.tensor().map(|t| t.rank()) else {
            continue;
        };
        let Some(axis) = normalize(*axis, rank) else {
            continue;
        };
        for (sm, x) in softmaxes(egraph, children[0], axis, log) {
            out.push((t, sm, x, axis));
        }
    }
    out
}

/// Adds `TopK(softmax(x), k)` to `b` over fresh leaves; returns the TopK's
/// index.
fn add_topk(b: &mut AstBuilder, topk: &KilnLang, sm: &KilnLang, x: Id) -> Id {
    let xv = b.class(x);
    let sv = b.node(with_children(sm, &[xv]));
    let kv = b.class(topk.children()[1]);
    b.node(with_children(topk, &[sv, kv]))
}

impl Rule for TopKSoftmax {
    fn name(&self) -> &'static str {
        if self.renorm {
            "topk-softmax-renorm"
        } else {
            "topk-softmax-indices"
        }
    }

    fn description(&self) -> &'static str {
        if self.renorm {
            "v / ReduceSum(v, axis a) with v = TopK(Softmax(x, a), k).values -> Softmax(TopK(x, k).values, a) (MoE gating)"
        } else {
            "TopK(Softmax(x, a), k, a).indices -> TopK(x, k, a).indices (ties from softmax rounding may resolve differently)"
        }
    }

    fn roots(&self) -> Option<Vec<Disc>> {
        Some(vec![if self.renorm {
            Disc::onnx("Div")
        } else {
            Disc::Proj
        }])
    }

    fn search(&self, egraph: &KilnEGraph, class: Id, out: &mut Vec<Match>) {
        for root in &egraph[class].nodes {
            if !self.renorm {
                let KilnLang::Proj(1, [t]) = root else {
                    continue;
                };
                for (topk, sm, x, _) in topk_over_softmax(egraph, *t, true) {
                    let mut b = AstBuilder::new();
                    let tv = add_topk(&mut b, topk, sm, x);
                    b.node(KilnLang::Proj(1, [tv]));
                    out.push(b.finish());
                }
                continue;
            }
            let KilnLang::Op {
                op,
                outputs: 1,
                children,
            } = root
            else {
                continue;
            };
            if *op.op() != Op::Binary(BinaryOp::Div) || children.len() != 2 {
                continue;
            }
            let (v, s) = (egraph.find(children[0]), children[1]);
            for sum in &egraph[s].nodes {
                let KilnLang::Op {
                    op: sop,
                    outputs: 1,
                    children: sk,
                } = sum
                else {
                    continue;
                };
                if !matches!(
                    sop.op(),
                    Op::Reduce {
                        kind: ReduceKind::Sum,
                        keepdims: true,
                        ..
                    }
                ) || egraph.find(sk[0]) != v
                {
                    continue;
                }
                let Some(rank) = egraph[v].data.tensor().map(|t| t.rank()) else {
                    continue;
                };
                let Some(axes) = reduce_axes(egraph, sop.op(), sk, rank) else {
                    continue;
                };
                for proj in &egraph[v].nodes {
                    let KilnLang::Proj(0, [t]) = proj else {
                        continue;
                    };
                    for (topk, sm, x, axis) in topk_over_softmax(egraph, *t, false) {
                        if axes != [axis] {
                            continue;
                        }
                        let mut b = AstBuilder::new();
                        let tv = add_topk(&mut b, topk, sm, x);
                        let pv = b.node(KilnLang::Proj(0, [tv]));
                        let rv = b.node_with_first_child(sum, pv);
                        b.node(with_children(root, &[pv, rv]));
                        out.push(b.finish());
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
        // LHS layout: [x, softmax, k, topk, proj, ...].
        let softmax = node_at(&m.lhs, Id::from(1))?;
        let topk = node_at(&m.lhs, Id::from(3))?;
        let mut b = AstBuilder::continuing(&m.subst);
        let x = b.var(var_at(&m.lhs, Id::from(0))?);
        let k = b.var(var_at(&m.lhs, Id::from(2))?);
        let t = b.node(with_children(topk, &[x, k]));
        if self.renorm {
            let values = b.node(KilnLang::Proj(0, [t]));
            b.node(with_children(softmax, &[values]));
        } else {
            b.node(KilnLang::Proj(1, [t]));
        }
        Some(b.into_ast())
    }
}
