//! Algebraic clean-up rules, grouped by topic: data movement (transpose and
//! reshape folding), pass-through elimination (Identity, inference-mode
//! Dropout, same-type Cast), constant folding, and two targeted matmul
//! rules: moving a constant scale into the weight (`scale-into-weight`)
//! and reassociating a chain of three matmuls where that saves FLOPs
//! (`matmul-reassoc`).
//!
//! Every right-hand side has no more nodes than its left-hand side and does
//! no more work. CSE needs no rule (hash-consing merges equal nodes), and
//! DCE none either (extraction starts from the graph outputs).
//!
//! There is no blanket associativity: `matmul-reassoc` fires only on fully
//! known shapes and only in the direction that strictly lowers FLOPs, so
//! it cannot undo itself and a chain of `n` matmuls does not grow every
//! bracketing; extraction then weighs the result with the whole cost model
//! (bytes and memory too) against the original, both being in the class.

use super::{lhs_classes, node_at, root_of, var_at, AstBuilder, Match, Rule, RuleContext};
use crate::analysis::KilnEGraph;
use crate::lang::{Disc, KilnLang};
use egg::{Id, Language, PatternAst};
use kiln_ir::dim::Dim;
use kiln_ir::op::{BinaryOp, Op};
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
        Arc::new(ScaleIntoWeight),
        Arc::new(MatMulReassoc),
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

// ---- matmul ----

/// True when the class's value is known before the graph runs: a weight,
/// an interned constant, or a value the analysis computed.
fn is_constant(egraph: &KilnEGraph, class: Id) -> bool {
    egraph[class].data.constant.is_some()
        || egraph[class]
            .nodes
            .iter()
            .any(|n| matches!(n, KilnLang::Weight(_) | KilnLang::Const(_)))
}

/// The element count of a fully static type.
fn elements(t: &TensorType) -> Option<usize> {
    t.fixed_len()
}

/// `Mul(MatMul(x, W) [+ b], c)` (either operand order) or
/// `Div(MatMul(x, W) [+ b], c)` -> `MatMul(x, W ∘ c) [+ b ∘ c]` with `∘` the
/// same Mul or Div, for a constant 2-D weight `W`, a constant bias `b` and
/// a constant `c` that is one element or one per output column (`[N]`):
/// `(x·W)·c = x·(W·c)` column by column, and `(x·W + b)·c = x·(W·c) + b·c`.
/// `c` must be finite, and non-zero for Div. The scaled weight (and bias)
/// is a node over constants only, which the analysis folds into the new
/// weight when it is within the fold limit (`Pipeline::fold_limit`; then
/// `constant-fold` replaces it); the rule fires only then, or when the
/// scaling of `W` (and `b`) touches no more elements than the scaling of
/// the product it replaces. It does not fire where the unscaled product
/// (or, with a bias, the unscaled sum) has another use, in the graph or as
/// a graph output: that use keeps the matmul, and a second matmul with the
/// new weight would cost more than the scaling it saves (the greedy DAG
/// extractor cannot see that sharing across classes, so the rule does not
/// offer the choice). Exact up to the rounding of the scaled weights.
struct ScaleIntoWeight;

/// One way a scaled product is built: the MatMul node, the bias Add with
/// the slot the MatMul is in, if any.
struct ScaledProduct<'a> {
    matmul: &'a KilnLang,
    add: Option<(&'a KilnLang, usize)>,
}

impl ScaleIntoWeight {
    /// The products in class `prod` whose weight (and bias) are constant.
    fn products<'a>(egraph: &'a KilnEGraph, prod: Id) -> Vec<ScaledProduct<'a>> {
        let mut out = Vec::new();
        let matmuls = |class: Id| {
            ops(egraph, class, "MatMul")
                .filter(move |(_, _, c)| {
                    c.len() == 2
                        && is_constant(egraph, c[1])
                        && ty(egraph, c[1]).is_some_and(|t| t.rank() == 2)
                        && ty(egraph, c[0]).is_some_and(|t| t.rank() >= 2)
                })
                .map(|(n, _, _)| n)
        };
        for m in matmuls(prod) {
            out.push(ScaledProduct {
                matmul: m,
                add: None,
            });
        }
        let prod_ty = ty(egraph, prod);
        for (add, op, kids) in ops(egraph, prod, "Add") {
            if *op != Op::Binary(BinaryOp::Add) || kids.len() != 2 {
                continue;
            }
            for slot in 0..2 {
                let (mm, bias) = (kids[slot], kids[1 - slot]);
                // The bias must not widen the product, or the scaled form
                // would scale a broadcast copy of it.
                if !is_constant(egraph, bias) || ty(egraph, mm) != prod_ty {
                    continue;
                }
                for m in matmuls(mm) {
                    out.push(ScaledProduct {
                        matmul: m,
                        add: Some((add, slot)),
                    });
                }
            }
        }
        out
    }

    /// True when `c` is a finite constant (non-zero for Div) of one
    /// element, or one per column of the product `out_ty`, and the whole
    /// rewrite is worth it (see the rule's docs).
    fn applies(
        egraph: &KilnEGraph,
        div: bool,
        c: Id,
        out_ty: &TensorType,
        p: &ScaledProduct,
    ) -> bool {
        let Some(cv) = egraph.analysis.constant(&egraph[c].data) else {
            return false;
        };
        let Some(ct) = ty(egraph, c) else {
            return false;
        };
        let values = cv.to_f64s();
        if values.iter().any(|v| !v.is_finite() || (div && *v == 0.0)) {
            return false;
        }
        let columns = out_ty.shape.last();
        let per_column = ct.rank() == 1 && ct.shape.first() == columns;
        let scalar = values.len() == 1 && ct.rank() <= out_ty.rank();
        if !(scalar || per_column) {
            return false;
        }
        let w = p.matmul.children()[1];
        let mut scaled = vec![w];
        if let Some((add, slot)) = p.add {
            scaled.push(add.children()[1 - slot]);
        }
        // Each scaled constant must keep its shape under the scaling.
        if scaled.iter().any(|&k| {
            ty(egraph, k)
                .is_none_or(|t| t.rank() < ct.rank() || (per_column && t.shape.last() != columns))
        }) {
            return false;
        }
        let folds = scaled.iter().all(|&k| egraph[k].data.constant.is_some());
        let small = scaled
            .iter()
            .map(|&k| ty(egraph, k).and_then(elements))
            .sum::<Option<usize>>()
            .zip(elements(out_ty))
            .is_some_and(|(scaled, out)| scaled <= out);
        folds || small
    }
}

impl Rule for ScaleIntoWeight {
    fn name(&self) -> &'static str {
        "scale-into-weight"
    }

    fn description(&self) -> &'static str {
        "Mul|Div(MatMul(x, W) [+ b], c) with W, b, c constant -> MatMul(x, W*c) [+ b*c] (the new weight folds)"
    }

    fn roots(&self) -> Option<Vec<Disc>> {
        Some(vec![Disc::onnx("Mul"), Disc::onnx("Div")])
    }

    fn search(&self, egraph: &KilnEGraph, class: Id, out: &mut Vec<Match>) {
        let Some(out_ty) = ty(egraph, class) else {
            return;
        };
        for root in &egraph[class].nodes {
            let KilnLang::Op {
                op,
                outputs: 1,
                children,
            } = root
            else {
                continue;
            };
            let div = match op.op() {
                Op::Binary(BinaryOp::Mul) => false,
                Op::Binary(BinaryOp::Div) => true,
                _ => continue,
            };
            if children.len() != 2 || !out_ty.dtype.is_float() {
                continue;
            }
            let slots: &[usize] = if div { &[0] } else { &[0, 1] };
            for &slot in slots {
                let (prod, c) = (children[slot], children[1 - slot]);
                if ty(egraph, prod) != Some(out_ty) {
                    continue;
                }
                for p in Self::products(egraph, prod) {
                    if !Self::applies(egraph, div, c, out_ty, &p) {
                        continue;
                    }
                    let mut b = AstBuilder::new();
                    let mk: Vec<Id> = p.matmul.children().iter().map(|&k| b.class(k)).collect();
                    let mut pv = b.node(with_children(p.matmul, &mk));
                    if let Some((add, s)) = p.add {
                        let bias = b.class(add.children()[1 - s]);
                        let kids = if s == 0 { [pv, bias] } else { [bias, pv] };
                        pv = b.node(with_children(add, &kids));
                    }
                    let cv = b.class(c);
                    let kids = if slot == 0 { [pv, cv] } else { [cv, pv] };
                    b.node(with_children(root, &kids));
                    out.push(b.finish());
                }
            }
        }
    }

    fn check(&self, egraph: &KilnEGraph, eclass: Id, m: &Match, ctx: &RuleContext) -> bool {
        // The unscaled values: the product (entry 2) and, with a bias, the
        // sum (entry 4); each may only feed the next step of the match.
        let classes = lhs_classes(egraph, m);
        let class_of = |i: usize| classes.get(i).copied().flatten();
        let root = Some(egraph.find(eclass));
        let biased = node_at(&m.lhs, Id::from(4))
            .is_some_and(|n| n.as_op() == Some(&Op::Binary(BinaryOp::Add)));
        // Each unscaled value with the one class allowed to read it.
        let values = if biased {
            vec![(class_of(2), class_of(4)), (class_of(4), root)]
        } else {
            vec![(class_of(2), root)]
        };
        for (value, user) in values {
            let (Some(value), Some(user)) = (value, user) else {
                return false;
            };
            if !ctx.outputs_in(egraph, value).is_empty()
                || egraph[value].parents().any(|p| egraph.find(p) != user)
            {
                return false;
            }
        }
        true
    }

    fn rewrite(
        &self,
        _egraph: &mut KilnEGraph,
        _eclass: Id,
        m: &Match,
    ) -> Option<PatternAst<KilnLang>> {
        // LHS layout: [x, W, MatMul, (b, Add)?, c, root].
        let root = node_at(&m.lhs, root_of(&m.lhs))?;
        let scale = KilnLang::op(root.as_op()?.clone(), vec![Id::from(0), Id::from(0)]);
        let mut b = AstBuilder::continuing(&m.subst);
        let x = b.var(var_at(&m.lhs, Id::from(0))?);
        let w = b.var(var_at(&m.lhs, Id::from(1))?);
        let c_index = root
            .children()
            .iter()
            .copied()
            .find(|&k| var_at(&m.lhs, k).is_some())?;
        let c = b.var(var_at(&m.lhs, c_index)?);
        let w2 = b.node(with_children(&scale, &[w, c]));
        let matmul = node_at(&m.lhs, Id::from(2))?;
        let product = b.node(with_children(matmul, &[x, w2]));
        // With a bias the Add (entry 4) is the new root, over the scaled bias.
        if let Some(add) =
            node_at(&m.lhs, Id::from(4)).filter(|n| n.as_op() == Some(&Op::Binary(BinaryOp::Add)))
        {
            let bias = b.var(var_at(&m.lhs, Id::from(3))?);
            let bias2 = b.node(with_children(&scale, &[bias, c]));
            let kids = if add.children()[0] == Id::from(2) {
                [product, bias2]
            } else {
                [bias2, product]
            };
            b.node(with_children(add, &kids));
        }
        Some(b.into_ast())
    }
}

/// `MatMul(MatMul(A, B), C)` <-> `MatMul(A, MatMul(B, C))` with `B` and `C`
/// 2-D and every shape fully known, in whichever direction has strictly
/// fewer FLOPs (`A` `[..., M, K]`, `B` `[K, N]`, `C` `[N, P]`, batch `β`:
/// `(AB)C` costs `2β·M·N·(K + P)`, `A(BC)` costs `2·K·N·P + 2β·M·K·P`).
/// Exact up to the rounding of the reordered sums.
struct MatMulReassoc;

/// `(β, M, K)` of a static `[..., M, K]` type, and `(K, N)` of a static 2-D one.
fn static_dims(t: &TensorType) -> Option<Vec<u64>> {
    (t.rank() >= 2).then_some(())?;
    t.shape.iter().map(|d| d.fixed()).collect()
}

/// FLOPs of `(AB)C` and of `A(BC)` for static `A`, `B`, `C`; `None` unless
/// `B` and `C` are 2-D and the inner dims agree.
fn chain_flops(a: &TensorType, b: &TensorType, c: &TensorType) -> Option<(u128, u128)> {
    let (a, b, c) = (static_dims(a)?, static_dims(b)?, static_dims(c)?);
    if b.len() != 2 || c.len() != 2 {
        return None;
    }
    let (m, k) = (a[a.len() - 2] as u128, a[a.len() - 1] as u128);
    let batch: u128 = a[..a.len() - 2].iter().map(|&d| d as u128).product();
    let (n, p) = (b[1] as u128, c[1] as u128);
    if b[0] as u128 != k || c[0] as u128 != n {
        return None;
    }
    let left = 2 * batch * m * n * (k + p);
    let right = 2 * k * n * p + 2 * batch * m * k * p;
    Some((left, right))
}

impl Rule for MatMulReassoc {
    fn name(&self) -> &'static str {
        "matmul-reassoc"
    }

    fn description(&self) -> &'static str {
        "MatMul(MatMul(A, B), C) <-> MatMul(A, MatMul(B, C)) for 2-D B, C and static shapes, only towards fewer FLOPs"
    }

    fn roots(&self) -> Option<Vec<Disc>> {
        Some(vec![Disc::onnx("MatMul")])
    }

    fn search(&self, egraph: &KilnEGraph, class: Id, out: &mut Vec<Match>) {
        for (outer, _, oc) in ops(egraph, class, "MatMul") {
            if oc.len() != 2 {
                continue;
            }
            // (AB)C -> A(BC).
            for (inner, _, ic) in ops(egraph, oc[0], "MatMul") {
                let (Some(a), Some(bt), Some(c)) =
                    (ty(egraph, ic[0]), ty(egraph, ic[1]), ty(egraph, oc[1]))
                else {
                    continue;
                };
                if chain_flops(a, bt, c).is_some_and(|(left, right)| right < left) {
                    let mut b = AstBuilder::new();
                    let (av, bv) = (b.class(ic[0]), b.class(ic[1]));
                    let iv = b.node(with_children(inner, &[av, bv]));
                    let cv = b.class(oc[1]);
                    b.node(with_children(outer, &[iv, cv]));
                    out.push(b.finish());
                }
            }
            // A(BC) -> (AB)C.
            for (inner, _, ic) in ops(egraph, oc[1], "MatMul") {
                let (Some(a), Some(bt), Some(c)) =
                    (ty(egraph, oc[0]), ty(egraph, ic[0]), ty(egraph, ic[1]))
                else {
                    continue;
                };
                if chain_flops(a, bt, c).is_some_and(|(left, right)| left < right) {
                    let mut b = AstBuilder::new();
                    let av = b.class(oc[0]);
                    let (bv, cv) = (b.class(ic[0]), b.class(ic[1]));
                    let iv = b.node(with_children(inner, &[bv, cv]));
                    b.node(with_children(outer, &[av, iv]));
                    out.push(b.finish());
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
        // LHS layouts: [A, B, AB, C, (AB)C] or [A, B, C, BC, A(BC)].
        let root = node_at(&m.lhs, root_of(&m.lhs))?;
        let left_nested = node_at(&m.lhs, Id::from(2)).is_some();
        let (a, bv, c) = if left_nested {
            (Id::from(0), Id::from(1), Id::from(3))
        } else {
            (Id::from(0), Id::from(1), Id::from(2))
        };
        let mut b = AstBuilder::continuing(&m.subst);
        let (a, bv, c) = (
            b.var(var_at(&m.lhs, a)?),
            b.var(var_at(&m.lhs, bv)?),
            b.var(var_at(&m.lhs, c)?),
        );
        if left_nested {
            let bc = b.node(with_children(root, &[bv, c]));
            b.node(with_children(root, &[a, bc]));
        } else {
            let ab = b.node(with_children(root, &[a, bv]));
            b.node(with_children(root, &[ab, c]));
        }
        Some(b.into_ast())
    }
}
