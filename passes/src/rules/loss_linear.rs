//! LM-head fusion: a `kiln::CrossEntropy` whose logits come straight from a
//! head matmul becomes one `kiln::LinearCrossEntropy`, which works in
//! vocabulary chunks and never forms the `N × V` logits.
//!
//! - `loss-linear-ce` matches `CrossEntropy(MatMul(h, W), y[, w])` with
//!   `h` `[N, d]` and `W` `[d, V]` (weight layout `[d, V]`), or
//!   `W = Transpose(E)` with `E` `[V, d]` (tied embeddings: `E` is used
//!   directly with the `[V, d]` layout), and `CrossEntropy(Gemm(h, W, b), y[, w])`
//!   with `transB = 1` (`W` `[V, d]`), `alpha = beta = 1` and an optional
//!   bias of shape exactly `[V]`.
//!
//! - `loss-linear-ce-flat` matches the shapes real exports have:
//!   `CrossEntropy(Reshape(X, [M, V]), y[, w])` where `X` is `MatMul(H, W)`
//!   (or `MatMul(H, Transpose(E))`) with `H` `[..., d]` of rank ≥ 3, or
//!   `Slice(MatMul(H, W), starts, ends, axes[, steps])` slicing only axes
//!   before the vocabulary axis (the shift `logits[:, :-1]`). It becomes
//!   `LinearCrossEntropy(Reshape(H', [-1, d]), W, y, _, w)` where `H'` is
//!   `H`, or `H` sliced the same way: a slice of rows of the logits is the
//!   head applied to that slice of rows, and merging the leading axes of
//!   the logits merges the same rows of `H`.
//!
//! Both rules also take a head with a per-class bias added after the
//! matmul, `Add(MatMul(h, W), b)` (either operand order) with `b` of shape
//! exactly `[V]`, broadcast over the rows, which becomes the fused op's
//! bias input. `loss-linear-ce-flat` also takes the `Gemm` head under the
//! shift: `X = Reshape(Gemm(Reshape(H, [M, d]), W, b), [..., V])`, where
//! the inner Reshape flattens `H` `[..., d]` (the leading axes of `X`) into
//! rows; the Gemm has `transB = 1`, `alpha = beta = 1` and a bias `[V]` or
//! none, as for `loss-linear-ce`.
//!
//! The logits must be 2-D so that the loss's class axis (axis 1) is the
//! matmul's output column axis. When the logits have other consumers (a
//! graph output, say), the e-graph keeps the matmul for them and the loss
//! class gains the fused form; extraction then picks per use. When the
//! logits (or their shifted or flattened view) are a graph output, the
//! rules add a note to the report saying that the head's path is kept.

use super::{lhs_classes, node_at, root_of, var_at, AstBuilder, Match, Rule, RuleContext};
use crate::analysis::KilnEGraph;
use crate::lang::{Disc, KilnLang, OpKey};
use egg::{ENodeOrVar, Id, Language, PatternAst, Var};
use kiln_ir::dim::Dim;
use kiln_ir::dtype::DType;
use kiln_ir::op::{BinaryOp, LossReduction, Op, DEFAULT_CHUNK_SIZE, KILN_DOMAIN};
use kiln_ir::tensor::Tensor;
use std::sync::Arc;

/// The rules of this module.
pub fn rules() -> Vec<Arc<dyn Rule>> {
    vec![
        Arc::new(LinearCrossEntropyFusion),
        Arc::new(FlattenedHeadFusion),
    ]
}

/// The shape of a class, when it is a tensor of rank `rank`.
fn shape_of(egraph: &KilnEGraph, class: Id, rank: usize) -> Option<&[Dim]> {
    let t = egraph[class].data.tensor()?;
    (t.rank() == rank).then_some(t.shape.as_slice())
}

/// True for a `Transpose` that swaps the two axes of a 2-D value.
fn is_2d_swap(op: &Op) -> bool {
    match op {
        Op::Transpose { perm: None } => true,
        Op::Transpose { perm: Some(p) } => p.as_slice() == [1, 0],
        _ => false,
    }
}

/// True when `class` is the omitted-input marker.
fn is_absent(egraph: &KilnEGraph, class: Id) -> bool {
    egraph[class]
        .nodes
        .iter()
        .any(|n| matches!(n, KilnLang::Absent))
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

/// A head the loss can absorb, as the e-nodes a match copies into its
/// left-hand side.
#[derive(Clone)]
enum Head {
    /// `MatMul(h, W)`, or with `tied` `MatMul(h, Transpose(E))`.
    MatMul {
        node: KilnLang,
        tied: Option<KilnLang>,
    },
    /// `Add(head, b)` with the `MatMul` head in slot `slot` and `b` `[V]`.
    Biased {
        add: KilnLang,
        slot: usize,
        matmul: Box<Head>,
    },
    /// `Gemm(h, W[, b])` with `transB = 1`, `alpha = beta = 1`.
    Gemm { node: KilnLang },
    /// `Reshape(Gemm(Reshape(H, s1), W[, b]), s2)`: a Gemm head on the rows
    /// of `H` `[..., d]`, unflattened back to `H`'s leading axes.
    Unflattened {
        outer: KilnLang,
        gemm: KilnLang,
        inner: KilnLang,
    },
}

/// The `MatMul(h, W)` heads in class `x` (of rank ≥ 2): `W` 2-D
/// `[d, V]`, `h` `[..., d]` with `x`'s leading axes. Each plain head comes
/// with its tied form too when the weight's class holds `Transpose(E)`.
fn matmul_heads(egraph: &KilnEGraph, x: Id) -> Vec<Head> {
    let mut out = Vec::new();
    let Some(xt) = egraph[x].data.tensor() else {
        return out;
    };
    let rank = xt.rank();
    if rank < 2 {
        return out;
    }
    for (n, op, kids) in op_nodes(egraph, x) {
        if !matches!(op, Op::MatMul) || kids.len() != 2 {
            continue;
        }
        let (Some(hs), Some(ws)) = (
            shape_of(egraph, kids[0], rank),
            shape_of(egraph, kids[1], 2),
        ) else {
            continue;
        };
        if hs[rank - 1] != ws[0]
            || xt.shape[rank - 1] != ws[1]
            || hs[..rank - 1] != xt.shape[..rank - 1]
        {
            continue;
        }
        out.push(Head::MatMul {
            node: n.clone(),
            tied: None,
        });
        for (t, top, tk) in op_nodes(egraph, kids[1]) {
            if is_2d_swap(top) && tk.len() == 1 && shape_of(egraph, tk[0], 2).is_some() {
                out.push(Head::MatMul {
                    node: n.clone(),
                    tied: Some(t.clone()),
                });
            }
        }
    }
    out
}

/// The `Add(MatMul head, b)` heads in class `x`, with `b` of shape exactly
/// `[V]` (a per-class bias broadcast over the rows) and the sum of `x`'s
/// type (the bias does not broadcast the product any wider).
fn biased_heads(egraph: &KilnEGraph, x: Id) -> Vec<Head> {
    let mut out = Vec::new();
    let Some(xt) = egraph[x].data.tensor() else {
        return out;
    };
    let Some(vocab) = xt.shape.last() else {
        return out;
    };
    for (n, op, kids) in op_nodes(egraph, x) {
        if !matches!(op, Op::Binary(BinaryOp::Add)) || kids.len() != 2 {
            continue;
        }
        for slot in 0..2 {
            let (prod, bias) = (kids[slot], kids[1 - slot]);
            if egraph[prod].data.tensor() != Some(xt)
                || shape_of(egraph, bias, 1) != Some(std::slice::from_ref(vocab))
            {
                continue;
            }
            for m in matmul_heads(egraph, prod) {
                out.push(Head::Biased {
                    add: n.clone(),
                    slot,
                    matmul: Box::new(m),
                });
            }
        }
    }
    out
}

/// The `Gemm` heads in the 2-D class `x`: `h` `[N, d]`, `W` `[V, d]` with
/// `transB = 1`, `alpha = beta = 1`, and a bias `[V]` or none.
fn gemm_heads(egraph: &KilnEGraph, x: Id) -> Vec<Head> {
    let mut out = Vec::new();
    let Some(logits) = shape_of(egraph, x, 2) else {
        return out;
    };
    for (n, op, kids) in op_nodes(egraph, x) {
        let Op::Gemm(g) = op else {
            continue;
        };
        if kids.len() < 2
            || kids.len() > 3
            || g.alpha != 1.0
            || g.beta != 1.0
            || g.trans_a
            || !g.trans_b
        {
            continue;
        }
        let (Some(hs), Some(ws)) = (shape_of(egraph, kids[0], 2), shape_of(egraph, kids[1], 2))
        else {
            continue;
        };
        // h [N, d] · W[V, d]ᵀ = logits [N, V].
        if hs[1] != ws[1] || logits[0] != hs[0] || logits[1] != ws[0] {
            continue;
        }
        // A broadcast bias other than [V] would not be the fused op's
        // per-class bias.
        if let Some(&c) = kids.get(2) {
            if !is_absent(egraph, c) && shape_of(egraph, c, 1) != Some(&ws[..1]) {
                continue;
            }
        }
        out.push(Head::Gemm { node: n.clone() });
    }
    out
}

/// The `Reshape(Gemm(Reshape(H, s1), W[, b]), s2)` heads in class `x` (of
/// rank ≥ 3): `H` has `x`'s leading axes and the Gemm's depth, so the
/// inner Reshape flattens exactly `H`'s rows and the outer one restores
/// them.
fn unflattened_heads(egraph: &KilnEGraph, x: Id) -> Vec<Head> {
    let mut out = Vec::new();
    let Some(xt) = egraph[x].data.tensor() else {
        return out;
    };
    let rank = xt.rank();
    if rank < 3 {
        return out;
    }
    for (outer, op, kids) in op_nodes(egraph, x) {
        if !matches!(op, Op::Reshape { .. }) || kids.len() != 2 {
            continue;
        }
        let Some(flat) = shape_of(egraph, kids[0], 2) else {
            continue;
        };
        if xt.shape.last() != Some(&flat[1]) {
            continue;
        }
        for gemm in gemm_heads(egraph, kids[0]) {
            let Head::Gemm { node: gemm } = gemm else {
                continue;
            };
            let rows = gemm.children()[0];
            let Some(depth) = shape_of(egraph, rows, 2).map(|s| s[1].clone()) else {
                continue;
            };
            for (inner, iop, ik) in op_nodes(egraph, rows) {
                if !matches!(iop, Op::Reshape { .. }) || ik.len() != 2 {
                    continue;
                }
                let Some(hs) = shape_of(egraph, ik[0], rank) else {
                    continue;
                };
                if hs[rank - 1] != depth || hs[..rank - 1] != xt.shape[..rank - 1] {
                    continue;
                }
                out.push(Head::Unflattened {
                    outer: outer.clone(),
                    gemm: gemm.clone(),
                    inner: inner.clone(),
                });
            }
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

/// Adds `head` to `b`, its leaves being fresh class variables; returns
/// its index.
fn add_head(b: &mut AstBuilder, head: &Head) -> Id {
    match head {
        Head::MatMul { node, tied } => {
            let kids = node.children();
            let h = b.class(kids[0]);
            let w = match tied {
                Some(t) => {
                    let e = b.class(t.children()[0]);
                    b.node(with_children(t, &[e]))
                }
                None => b.class(kids[1]),
            };
            b.node(with_children(node, &[h, w]))
        }
        Head::Biased { add, slot, matmul } => {
            let m = add_head(b, matmul);
            let bias = b.class(add.children()[1 - slot]);
            let kids = if *slot == 0 { [m, bias] } else { [bias, m] };
            b.node(with_children(add, &kids))
        }
        Head::Gemm { node } => {
            let kids: Vec<Id> = node.children().iter().map(|&c| b.class(c)).collect();
            b.node(with_children(node, &kids))
        }
        Head::Unflattened { outer, gemm, inner } => {
            let ik: Vec<Id> = inner.children().iter().map(|&c| b.class(c)).collect();
            let rows = b.node(with_children(inner, &ik));
            let mut gk = vec![rows];
            gk.extend(gemm.children()[1..].iter().map(|&c| b.class(c)));
            let g = b.node(with_children(gemm, &gk));
            let s2 = b.class(outer.children()[1]);
            b.node(with_children(outer, &[g, s2]))
        }
    }
}

/// The inputs of the fused op read off a head in a match's left-hand side.
struct HeadParts {
    /// The hidden states: `h` of a 2-D head, `H` of an unflattened one.
    h: Var,
    /// The weight (`E` for tied embeddings).
    w: Var,
    /// The weight is `[V, d]`.
    transpose_weight: bool,
    /// The per-class bias (possibly the class of an omitted Gemm input).
    bias: Option<Var>,
}

/// Decodes the head at index `i` of `lhs` (as built by [`add_head`]).
fn decode_head(lhs: &PatternAst<KilnLang>, i: Id) -> Option<HeadParts> {
    let node = node_at(lhs, i)?;
    let kids = node.children();
    match node.as_op()? {
        Op::MatMul => {
            let (w, transpose_weight) = match &lhs[kids[1]] {
                ENodeOrVar::Var(v) => (*v, false),
                ENodeOrVar::ENode(t) => (var_at(lhs, *t.children().first()?)?, true),
            };
            Some(HeadParts {
                h: var_at(lhs, kids[0])?,
                w,
                transpose_weight,
                bias: None,
            })
        }
        Op::Binary(BinaryOp::Add) => {
            let slot = if node_at(lhs, kids[0]).is_some() {
                0
            } else {
                1
            };
            let parts = decode_head(lhs, kids[slot])?;
            Some(HeadParts {
                bias: Some(var_at(lhs, kids[1 - slot])?),
                ..parts
            })
        }
        Op::Gemm(_) => {
            // The rows are a leaf, or (under the shift) the Reshape that
            // flattens H, which the fused form reads instead.
            let h = match &lhs[kids[0]] {
                ENodeOrVar::Var(v) => *v,
                ENodeOrVar::ENode(inner) => var_at(lhs, *inner.children().first()?)?,
            };
            Some(HeadParts {
                h,
                w: var_at(lhs, kids[1])?,
                transpose_weight: true,
                bias: match kids.get(2) {
                    Some(&c) => Some(var_at(lhs, c)?),
                    None => None,
                },
            })
        }
        Op::Reshape { .. } => decode_head(lhs, kids[0]),
        _ => None,
    }
}

/// The attributes of a `CrossEntropy` root.
struct LossAttrs {
    reduction: LossReduction,
    ignore_index: Option<i64>,
    label_smoothing: f32,
    z_loss: f32,
}

/// The `CrossEntropy` root of a match, with its attributes and children.
fn loss_root(lhs: &PatternAst<KilnLang>) -> Option<(LossAttrs, &[Id])> {
    let root = node_at(lhs, root_of(lhs))?;
    let KilnLang::Op { op, children, .. } = root else {
        return None;
    };
    let Op::CrossEntropy {
        reduction,
        ignore_index,
        label_smoothing,
        z_loss,
    } = op.op()
    else {
        return None;
    };
    let attrs = LossAttrs {
        reduction: *reduction,
        ignore_index: *ignore_index,
        label_smoothing: *label_smoothing,
        z_loss: *z_loss,
    };
    Some((attrs, children))
}

/// The `CrossEntropy` e-nodes of `class` with two or three inputs.
fn loss_nodes(egraph: &KilnEGraph, class: Id) -> impl Iterator<Item = (&KilnLang, &[Id])> + '_ {
    op_nodes(egraph, class)
        .filter(|(_, op, kids)| {
            matches!(op, Op::CrossEntropy { .. }) && (2..=3).contains(&kids.len())
        })
        .map(|(n, _, kids)| (n, kids))
}

/// Builds `LinearCrossEntropy(rows, W, y, b, w)` over `b`'s subst, with
/// the bias slot omitted where there is neither bias nor class weight.
fn fused(
    b: &mut AstBuilder,
    attrs: &LossAttrs,
    rows: Id,
    parts: &HeadParts,
    labels: Var,
    class_weight: Option<Var>,
) -> Id {
    let w = b.var(parts.w);
    let labels = b.var(labels);
    let mut kids = vec![rows, w, labels];
    if parts.bias.is_some() || class_weight.is_some() {
        kids.push(match parts.bias {
            Some(v) => b.var(v),
            None => b.node(KilnLang::Absent),
        });
    }
    if let Some(cw) = class_weight {
        kids.push(b.var(cw));
    }
    b.node(KilnLang::Op {
        op: OpKey::new(Op::LinearCrossEntropy {
            reduction: attrs.reduction,
            ignore_index: attrs.ignore_index,
            label_smoothing: attrs.label_smoothing,
            z_loss: attrs.z_loss,
            transpose_weight: parts.transpose_weight,
            chunk_size: DEFAULT_CHUNK_SIZE,
        }),
        outputs: 1,
        children: kids,
    })
}

/// The report's notes for a fused head: one per graph output among the
/// values on the path from the loss's input down to the head's product
/// (the logits, and their shifted or flattened views), which extraction
/// keeps computing beside the fused op.
fn kept_logits_notes(egraph: &KilnEGraph, m: &Match, ctx: &RuleContext) -> Vec<String> {
    let classes = lhs_classes(egraph, m);
    let Some(root) = node_at(&m.lhs, root_of(&m.lhs)) else {
        return Vec::new();
    };
    let mut path = Vec::new();
    let mut at = root.children().first().copied();
    let mut head_op = "MatMul";
    while let Some(i) = at {
        let Some(n) = node_at(&m.lhs, i) else {
            break;
        };
        path.push(i);
        at = match n.as_op() {
            Some(Op::Reshape { .. }) | Some(Op::Slice) => n.children().first().copied(),
            Some(Op::Binary(BinaryOp::Add)) => n
                .children()
                .iter()
                .copied()
                .find(|&c| node_at(&m.lhs, c).is_some()),
            Some(op) => {
                head_op = op.name();
                None
            }
            None => None,
        };
    }
    let mut notes = Vec::new();
    for i in path {
        let Some(class) = classes.get(usize::from(i)).copied().flatten() else {
            continue;
        };
        for name in ctx.outputs_in(egraph, class) {
            notes.push(format!(
                "logits `{name}` are a graph output: kept the {head_op} path beside LinearCrossEntropy"
            ));
        }
    }
    notes
}

/// `CrossEntropy(head(h, W[, b]), y[, w]) -> LinearCrossEntropy(h, W, y, b, w)`.
struct LinearCrossEntropyFusion;

impl Rule for LinearCrossEntropyFusion {
    fn name(&self) -> &'static str {
        "loss-linear-ce"
    }

    fn description(&self) -> &'static str {
        "CrossEntropy(MatMul(h, W) [+ b] | Gemm(h, W, b, transB), y, w) -> kiln::LinearCrossEntropy(h, W, y, b, w)"
    }

    fn roots(&self) -> Option<Vec<Disc>> {
        Some(vec![Disc::Op(KILN_DOMAIN, "CrossEntropy")])
    }

    fn search(&self, egraph: &KilnEGraph, class: Id, out: &mut Vec<Match>) {
        for (root, children) in loss_nodes(egraph, class) {
            let x = children[0];
            if shape_of(egraph, x, 2).is_none() {
                continue;
            }
            let mut heads = matmul_heads(egraph, x);
            heads.extend(biased_heads(egraph, x));
            heads.extend(gemm_heads(egraph, x));
            for head in heads {
                let mut b = AstBuilder::new();
                let hv = add_head(&mut b, &head);
                b.node_with_first_child(root, hv);
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
        let (attrs, children) = loss_root(&m.lhs)?;
        let parts = decode_head(&m.lhs, children[0])?;
        let labels = var_at(&m.lhs, children[1])?;
        let class_weight = match children.get(2) {
            Some(&c) => Some(var_at(&m.lhs, c)?),
            None => None,
        };
        let mut b = AstBuilder::continuing(&m.subst);
        let rows = b.var(parts.h);
        fused(&mut b, &attrs, rows, &parts, labels, class_weight);
        Some(b.into_ast())
    }

    fn notes(&self, egraph: &KilnEGraph, _eclass: Id, m: &Match, ctx: &RuleContext) -> Vec<String> {
        kept_logits_notes(egraph, m, ctx)
    }
}

/// `CrossEntropy(Reshape([Slice](head(H, W[, b])), [M, V]), y[, w])` ->
/// `LinearCrossEntropy(Reshape([Slice](H), [-1, d]), W, y, b, w)`.
struct FlattenedHeadFusion;

/// The axes input of a Slice as constants normalized to `rank`, when they
/// are all known and in range.
fn slice_axes(egraph: &KilnEGraph, axes: Id, rank: usize) -> Option<Vec<usize>> {
    let t = egraph.analysis.constant(&egraph[axes].data)?;
    let rank = i64::try_from(rank).ok()?;
    t.to_i64s()
        .into_iter()
        .map(|a| {
            let a = if a < 0 { a + rank } else { a };
            (0..rank)
                .contains(&a)
                .then(|| usize::try_from(a).ok())
                .flatten()
        })
        .collect()
}

/// The heads in class `x` (rank ≥ 3) the flattened form can absorb.
fn batched_heads(egraph: &KilnEGraph, x: Id) -> Vec<Head> {
    if egraph[x].data.tensor().is_none_or(|t| t.rank() < 3) {
        return Vec::new();
    }
    let mut heads = matmul_heads(egraph, x);
    heads.extend(biased_heads(egraph, x));
    heads.extend(unflattened_heads(egraph, x));
    heads
}

impl Rule for FlattenedHeadFusion {
    fn name(&self) -> &'static str {
        "loss-linear-ce-flat"
    }

    fn description(&self) -> &'static str {
        "CrossEntropy(Reshape(Slice?(MatMul(H, W) [+ b] | Reshape(Gemm(Reshape(H), W, b))), [M, V]), y, w) -> kiln::LinearCrossEntropy(Reshape(Slice?(H), [-1, d]), W, y, b, w)"
    }

    fn roots(&self) -> Option<Vec<Disc>> {
        Some(vec![Disc::Op(KILN_DOMAIN, "CrossEntropy")])
    }

    fn search(&self, egraph: &KilnEGraph, class: Id, out: &mut Vec<Match>) {
        for (root, children) in loss_nodes(egraph, class) {
            let Some(flat) = shape_of(egraph, children[0], 2) else {
                continue;
            };
            for (reshape, rop, rk) in op_nodes(egraph, children[0]) {
                if !matches!(rop, Op::Reshape { .. }) || rk.len() != 2 {
                    continue;
                }
                let x = rk[0];
                let Some(xt) = egraph[x].data.tensor() else {
                    continue;
                };
                // Merging leading axes only: the class axis of the flat
                // logits is the vocabulary axis of X.
                if xt.rank() < 3 || xt.shape.last() != Some(&flat[1]) {
                    continue;
                }
                let rank = xt.rank();
                // Direct heads, and heads under a Slice of the leading axes.
                let mut found: Vec<(Option<KilnLang>, Head)> = batched_heads(egraph, x)
                    .into_iter()
                    .map(|h| (None, h))
                    .collect();
                for (sl, sop, sk) in op_nodes(egraph, x) {
                    if !matches!(sop, Op::Slice) || sk.len() < 4 || is_absent(egraph, sk[3]) {
                        continue;
                    }
                    let Some(axes) = slice_axes(egraph, sk[3], rank) else {
                        continue;
                    };
                    if axes.contains(&(rank - 1)) {
                        continue;
                    }
                    for h in batched_heads(egraph, sk[0]) {
                        found.push((Some(sl.clone()), h));
                    }
                }
                for (slice, head) in found {
                    let mut b = AstBuilder::new();
                    let hv = add_head(&mut b, &head);
                    let xv = match &slice {
                        Some(sl) => {
                            let mut kids = vec![hv];
                            kids.extend(sl.children()[1..].iter().map(|&c| b.class(c)));
                            b.node(with_children(sl, &kids))
                        }
                        None => hv,
                    };
                    let shape = b.class(rk[1]);
                    let rv = b.node(with_children(reshape, &[xv, shape]));
                    b.node_with_first_child(root, rv);
                    out.push(b.finish());
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
        let (attrs, children) = loss_root(&m.lhs)?;
        let reshape = node_at(&m.lhs, children[0])?;
        let x_index = *reshape.children().first()?;
        let x = node_at(&m.lhs, x_index)?;
        let (slice, head_index) = match x.as_op() {
            Some(Op::Slice) => (Some(x), *x.children().first()?),
            _ => (None, x_index),
        };
        let parts = decode_head(&m.lhs, head_index)?;
        let h_class = *m.subst.get(parts.h)?;
        let depth = match egraph[h_class].data.tensor()?.shape.last()? {
            Dim::Fixed(d) => i64::try_from(*d).ok()?,
            Dim::Sym(_) => return None,
        };
        let shape =
            egraph
                .analysis
                .consts
                .intern(&Tensor::from_i64s(DType::I64, &[2], &[-1, depth]));
        let mut b = AstBuilder::continuing(&m.subst);
        let mut rows = b.var(parts.h);
        if let Some(sl) = slice {
            let mut kids = vec![rows];
            for &c in &sl.children()[1..] {
                kids.push(b.var(var_at(&m.lhs, c)?));
            }
            rows = b.node(with_children(sl, &kids));
        }
        let shape = b.node(KilnLang::Const(shape));
        let flat = b.node(KilnLang::op(
            Op::Reshape { allowzero: false },
            vec![rows, shape],
        ));
        let labels = var_at(&m.lhs, children[1])?;
        let class_weight = match children.get(2) {
            Some(&c) => Some(var_at(&m.lhs, c)?),
            None => None,
        };
        fused(&mut b, &attrs, flat, &parts, labels, class_weight);
        Some(b.into_ast())
    }

    fn notes(&self, egraph: &KilnEGraph, _eclass: Id, m: &Match, ctx: &RuleContext) -> Vec<String> {
        kept_logits_notes(egraph, m, ctx)
    }
}
