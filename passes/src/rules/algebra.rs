//! Algebraic clean-up rules, grouped by topic: data movement (transpose and
//! reshape folding), pass-through elimination (Identity, inference-mode
//! Dropout, same-type Cast) and constant folding.
//!
//! Every right-hand side has no more nodes than its left-hand side and does
//! no more work. CSE needs no rule (hash-consing merges equal nodes), and
//! DCE none either (extraction starts from the graph outputs).

use super::{node_at, root_of, var_at, AstBuilder, Match, Rule};
use crate::analysis::KilnEGraph;
use crate::lang::{Disc, KilnLang};
use egg::{Id, Language, PatternAst};
use kiln_ir::dim::Dim;
use kiln_ir::op::Op;
use kiln_ir::types::TensorType;
use std::sync::Arc;

/// The rules of this module.
pub fn rules() -> Vec<Arc<dyn Rule>> {
    vec![
        Arc::new(TransposePair { cancel: true }),
        Arc::new(TransposePair { cancel: false }),
        Arc::new(ReshapeFold),
        Arc::new(ReshapeNoop),
        Arc::new(IdentityElim),
        Arc::new(DropoutElim),
        Arc::new(CastElim),
        Arc::new(ConstantFold),
    ]
}

/// The single-output nodes of `class` with op type `name` (ONNX domain),
/// with their op and children.
fn ops<'a>(
    egraph: &'a KilnEGraph,
    class: Id,
    name: &'static str,
) -> impl Iterator<Item = (&'a KilnLang, &'a Op, &'a [Id])> + 'a {
    egraph[class].nodes.iter().filter_map(move |n| match n {
        KilnLang::Op {
            op,
            outputs: 1,
            children,
        } if op.name() == name && op.domain().is_empty() => Some((n, op.op(), children.as_slice())),
        _ => None,
    })
}

/// The tensor type of a class, if it is a value.
fn ty(egraph: &KilnEGraph, class: Id) -> Option<&TensorType> {
    egraph[class].data.tensor()
}

/// A node with its children replaced by AST indices.
fn with_children(n: &KilnLang, children: &[Id]) -> KilnLang {
    let mut n = n.clone();
    n.children_mut().copy_from_slice(children);
    n
}

/// Builds the LHS of a one-node match: `node` over fresh variables.
fn one_node_match(node: &KilnLang) -> Match {
    let mut b = AstBuilder::new();
    let leaves: Vec<Id> = node.children().iter().map(|&c| b.class(c)).collect();
    b.node(with_children(node, &leaves));
    b.finish()
}

/// A right-hand side that is just the class bound to the variable at `lhs`
/// index `i`.
fn rhs_var(m: &Match, i: Id) -> Option<PatternAst<crate::lang::KilnLang>> {
    let v = var_at(&m.lhs, i)?;
    let mut b = AstBuilder::continuing(&m.subst);
    b.var(v);
    Some(b.into_ast())
}

// ---- data movement ----

/// The permutation of a Transpose on a value of rank `rank`, checked.
fn perm_of(op: &Op, rank: usize) -> Option<Vec<usize>> {
    let Op::Transpose { perm } = op else {
        return None;
    };
    let p: Vec<usize> = match perm {
        None => (0..rank).rev().collect(),
        Some(p) => p
            .iter()
            .map(|&a| usize::try_from(a).ok())
            .collect::<Option<_>>()?,
    };
    let mut seen = vec![false; rank];
    for &a in &p {
        if a >= rank || std::mem::replace(&mut seen[a], true) {
            return None;
        }
    }
    (p.len() == rank).then_some(p)
}

/// `Transpose(q)(x)` with `q[i] = p1[p2[i]]` is `Transpose(p2)(Transpose(p1)(x))`;
/// when `q` is the identity the pair cancels. Two rules share this code:
/// `transpose-cancel` (identity only) and `transpose-fold` (the others), so
/// a report tells the two apart and each can be tested not to fire.
struct TransposePair {
    cancel: bool,
}

impl TransposePair {
    /// The composed permutation of a match, from the LHS and x's rank.
    fn composed(egraph: &KilnEGraph, m: &Match) -> Option<Vec<usize>> {
        let x = *m.subst.get(var_at(&m.lhs, Id::from(0))?)?;
        let rank = ty(egraph, x)?.rank();
        let p1 = perm_of(node_at(&m.lhs, Id::from(1))?.as_op()?, rank)?;
        let p2 = perm_of(node_at(&m.lhs, Id::from(2))?.as_op()?, rank)?;
        Some(p2.iter().map(|&i| p1[i]).collect())
    }
}

impl Rule for TransposePair {
    fn name(&self) -> &'static str {
        if self.cancel {
            "transpose-cancel"
        } else {
            "transpose-fold"
        }
    }

    fn description(&self) -> &'static str {
        if self.cancel {
            "Transpose(p2)(Transpose(p1)(x)) -> x when the permutations compose to the identity"
        } else {
            "Transpose(p2)(Transpose(p1)(x)) -> Transpose(p1 . p2)(x)"
        }
    }

    fn roots(&self) -> Option<Vec<Disc>> {
        Some(vec![Disc::onnx("Transpose")])
    }

    fn search(&self, egraph: &KilnEGraph, class: Id, out: &mut Vec<Match>) {
        for (outer, _, oc) in ops(egraph, class, "Transpose") {
            for (inner, _, ic) in ops(egraph, oc[0], "Transpose") {
                let mut b = AstBuilder::new();
                let x = b.class(ic[0]);
                let i = b.node(with_children(inner, &[x]));
                b.node(with_children(outer, &[i]));
                let m = b.finish();
                let Some(q) = TransposePair::composed(egraph, &m) else {
                    continue;
                };
                let identity = q.iter().enumerate().all(|(i, &a)| i == a);
                if identity == self.cancel {
                    out.push(m);
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
        let q = TransposePair::composed(egraph, m)?;
        if self.cancel {
            return rhs_var(m, Id::from(0));
        }
        let mut b = AstBuilder::continuing(&m.subst);
        let x = b.var(var_at(&m.lhs, Id::from(0))?);
        let perm = Some(q.iter().map(|&a| a as i64).collect());
        b.node(KilnLang::op(Op::Transpose { perm }, vec![x]));
        Some(b.into_ast())
    }
}

/// `Reshape(Reshape(x, s1), s2)` -> `Reshape(x, s2)` when `s2` is a known
/// constant that does not copy dims from its input (no 0 entry, or
/// `allowzero`): only then does it mean the same applied to `x`, since `-1`
/// is solved from the element count, which the inner reshape keeps.
struct ReshapeFold;

impl Rule for ReshapeFold {
    fn name(&self) -> &'static str {
        "reshape-fold"
    }

    fn description(&self) -> &'static str {
        "Reshape(Reshape(x, s1), s2) -> Reshape(x, s2) when s2 is constant and copies no input dim"
    }

    fn roots(&self) -> Option<Vec<Disc>> {
        Some(vec![Disc::onnx("Reshape")])
    }

    fn search(&self, egraph: &KilnEGraph, class: Id, out: &mut Vec<Match>) {
        for (outer, op, oc) in ops(egraph, class, "Reshape") {
            let Op::Reshape { allowzero } = op else {
                continue;
            };
            let Some(s2) = egraph.analysis.constant(&egraph[oc[1]].data) else {
                continue;
            };
            if !allowzero && s2.to_i64s().contains(&0) {
                continue;
            }
            for (inner, _, ic) in ops(egraph, oc[0], "Reshape") {
                let mut b = AstBuilder::new();
                let x = b.class(ic[0]);
                let s1 = b.class(ic[1]);
                let i = b.node(with_children(inner, &[x, s1]));
                let s2 = b.class(oc[1]);
                b.node(with_children(outer, &[i, s2]));
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
        // LHS layout: [x, s1, inner, s2, outer].
        let outer = node_at(&m.lhs, root_of(&m.lhs))?;
        let mut b = AstBuilder::continuing(&m.subst);
        let x = b.var(var_at(&m.lhs, Id::from(0))?);
        let s2 = b.var(var_at(&m.lhs, Id::from(3))?);
        b.node(with_children(outer, &[x, s2]));
        Some(b.into_ast())
    }
}

/// True when the type says exactly which size each axis has at run time:
/// fixed sizes and named symbols, not fresh `unk__N` unknowns.
fn definite(t: &TensorType) -> bool {
    t.shape.iter().all(|d| match d {
        Dim::Fixed(_) => true,
        Dim::Sym(p) => p
            .symbols()
            .iter()
            .all(|s| !s.starts_with(kiln_ir::infer::FRESH_PREFIX)),
    })
}

/// `Reshape(x, s)` -> `x` when the result has x's type: a reshape never
/// reorders elements, so with the same shape it is the identity.
struct ReshapeNoop;

impl Rule for ReshapeNoop {
    fn name(&self) -> &'static str {
        "reshape-noop"
    }

    fn description(&self) -> &'static str {
        "Reshape(x, s) -> x when the result has the same shape as x"
    }

    fn roots(&self) -> Option<Vec<Disc>> {
        Some(vec![Disc::onnx("Reshape")])
    }

    fn search(&self, egraph: &KilnEGraph, class: Id, out: &mut Vec<Match>) {
        let Some(out_ty) = ty(egraph, class) else {
            return;
        };
        for (node, _, c) in ops(egraph, class, "Reshape") {
            if ty(egraph, c[0]) == Some(out_ty)
                && definite(out_ty)
                && egraph.find(c[0]) != egraph.find(class)
            {
                out.push(one_node_match(node));
            }
        }
    }

    fn rewrite(
        &self,
        _egraph: &mut KilnEGraph,
        _eclass: Id,
        m: &Match,
    ) -> Option<PatternAst<KilnLang>> {
        rhs_var(m, Id::from(0))
    }
}

// ---- pass-through elimination ----

/// `Identity(x)` -> `x`.
struct IdentityElim;

impl Rule for IdentityElim {
    fn name(&self) -> &'static str {
        "identity-elim"
    }

    fn description(&self) -> &'static str {
        "Identity(x) -> x"
    }

    fn roots(&self) -> Option<Vec<Disc>> {
        Some(vec![Disc::onnx("Identity")])
    }

    fn search(&self, egraph: &KilnEGraph, class: Id, out: &mut Vec<Match>) {
        for (node, _, c) in ops(egraph, class, "Identity") {
            if egraph.find(c[0]) != egraph.find(class) {
                out.push(one_node_match(node));
            }
        }
    }

    fn rewrite(
        &self,
        _egraph: &mut KilnEGraph,
        _eclass: Id,
        m: &Match,
    ) -> Option<PatternAst<KilnLang>> {
        rhs_var(m, Id::from(0))
    }
}

/// True when a Dropout with these ratio and training-mode inputs passes its
/// input through: training mode absent or constant false, or ratio constant 0.
fn dropout_is_identity(egraph: &KilnEGraph, children: &[Id]) -> bool {
    let constant = |slot: usize| {
        children.get(slot).and_then(|&c| {
            egraph
                .analysis
                .constant(&egraph[c].data)
                .map(|t| t.to_f64s())
        })
    };
    let absent = |slot: usize| {
        children
            .get(slot)
            .is_none_or(|&c| matches!(egraph[c].data.ty, crate::analysis::ClassType::Absent))
    };
    let inference = absent(2) || constant(2).is_some_and(|v| v.iter().all(|&b| b == 0.0));
    let zero_ratio = constant(1).is_some_and(|v| v.iter().all(|&r| r == 0.0));
    inference || zero_ratio
}

/// Dropout in inference mode -> its input (output 0; the mask is left alone).
struct DropoutElim;

impl Rule for DropoutElim {
    fn name(&self) -> &'static str {
        "dropout-elim"
    }

    fn description(&self) -> &'static str {
        "Dropout(x) -> x when training mode is off (or the ratio is 0)"
    }

    fn roots(&self) -> Option<Vec<Disc>> {
        Some(vec![Disc::onnx("Dropout"), Disc::Proj])
    }

    fn search(&self, egraph: &KilnEGraph, class: Id, out: &mut Vec<Match>) {
        for node in &egraph[class].nodes {
            match node {
                KilnLang::Op {
                    op,
                    outputs: 1,
                    children,
                } if matches!(op.op(), Op::Dropout { .. })
                    && dropout_is_identity(egraph, children)
                    && egraph.find(children[0]) != egraph.find(class) =>
                {
                    out.push(one_node_match(node));
                }
                KilnLang::Proj(0, [t]) => {
                    for inner in &egraph[*t].nodes {
                        let KilnLang::Op { op, children, .. } = inner else {
                            continue;
                        };
                        if !matches!(op.op(), Op::Dropout { .. })
                            || !dropout_is_identity(egraph, children)
                        {
                            continue;
                        }
                        if egraph.find(children[0]) == egraph.find(class) {
                            continue;
                        }
                        let mut b = AstBuilder::new();
                        let leaves: Vec<Id> = children.iter().map(|&c| b.class(c)).collect();
                        let d = b.node(with_children(inner, &leaves));
                        b.node(KilnLang::Proj(0, [d]));
                        out.push(b.finish());
                    }
                }
                _ => {}
            }
        }
    }

    fn rewrite(
        &self,
        _egraph: &mut KilnEGraph,
        _eclass: Id,
        m: &Match,
    ) -> Option<PatternAst<KilnLang>> {
        // Both LHS forms start with the data input's variable.
        rhs_var(m, Id::from(0))
    }
}

/// `Cast(to)(x)` -> `x` when x already has type `to`; `CastLike(x, y)` -> `x`
/// when x and y have the same dtype.
struct CastElim;

impl Rule for CastElim {
    fn name(&self) -> &'static str {
        "cast-elim"
    }

    fn description(&self) -> &'static str {
        "Cast(x) -> x and CastLike(x, y) -> x when x already has the target dtype"
    }

    fn roots(&self) -> Option<Vec<Disc>> {
        Some(vec![Disc::onnx("Cast"), Disc::onnx("CastLike")])
    }

    fn search(&self, egraph: &KilnEGraph, class: Id, out: &mut Vec<Match>) {
        for node in &egraph[class].nodes {
            let KilnLang::Op {
                op,
                outputs: 1,
                children,
            } = node
            else {
                continue;
            };
            let Some(x) = ty(egraph, children[0]) else {
                continue;
            };
            let target = match op.op() {
                Op::Cast { to, .. } => Some(*to),
                Op::CastLike { .. } => children
                    .get(1)
                    .and_then(|&c| ty(egraph, c))
                    .map(|t| t.dtype),
                _ => None,
            };
            if target == Some(x.dtype) && egraph.find(children[0]) != egraph.find(class) {
                out.push(one_node_match(node));
            }
        }
    }

    fn rewrite(
        &self,
        _egraph: &mut KilnEGraph,
        _eclass: Id,
        m: &Match,
    ) -> Option<PatternAst<KilnLang>> {
        rhs_var(m, Id::from(0))
    }
}

// ---- constants ----

/// A class whose value the analysis computed (a small constant: `Shape` of
/// a static value, arithmetic on constants, ...) -> that constant.
struct ConstantFold;

impl Rule for ConstantFold {
    fn name(&self) -> &'static str {
        "constant-fold"
    }

    fn description(&self) -> &'static str {
        "a node whose inputs are small constants (or Shape/Size of a static value) -> Constant"
    }

    fn roots(&self) -> Option<Vec<Disc>> {
        None
    }

    fn search(&self, egraph: &KilnEGraph, class: Id, out: &mut Vec<Match>) {
        let eclass = &egraph[class];
        if eclass.data.constant.is_none() {
            return;
        }
        // Leaves already are the value; a class with a Const is folded.
        if eclass
            .nodes
            .iter()
            .any(|n| !matches!(n, KilnLang::Op { .. }))
        {
            return;
        }
        if let Some(node) = eclass.nodes.first() {
            out.push(one_node_match(node));
        }
    }

    fn rewrite(
        &self,
        egraph: &mut KilnEGraph,
        eclass: Id,
        _m: &Match,
    ) -> Option<PatternAst<KilnLang>> {
        let c = egraph[eclass].data.constant?;
        let mut b = AstBuilder::new();
        b.node(KilnLang::Const(c));
        Some(b.into_ast())
    }
}
