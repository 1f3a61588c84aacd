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
//! The logits must be 2-D so that the loss's class axis (axis 1) is the
//! matmul's output column axis. When the logits have other consumers (a
//! graph output, say), the e-graph keeps the matmul for them and the loss
//! class gains the fused form; extraction then picks per use.

use super::{node_at, root_of, var_at, AstBuilder, Match, Rule};
use crate::analysis::KilnEGraph;
use crate::lang::{Disc, KilnLang, OpKey};
use egg::{ENodeOrVar, Id, Language, PatternAst};
use kiln_ir::dim::Dim;
use kiln_ir::dtype::DType;
use kiln_ir::op::{Op, DEFAULT_CHUNK_SIZE, KILN_DOMAIN};
use kiln_ir::tensor::Tensor;
use std::sync::Arc;

/// The rules of this module.
pub fn rules() -> Vec<Arc<dyn Rule>> {
    vec![
        Arc::new(LinearCrossEntropyFusion),
        Arc::new(FlattenedHeadFusion),
    ]
}

/// `CrossEntropy(head(h, W[, b]), y[, w]) -> LinearCrossEntropy(h, W, y, b, w)`.
struct LinearCrossEntropyFusion;

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

impl LinearCrossEntropyFusion {
    /// The head nodes in the logits class `x` that the loss can absorb.
    fn heads(&self, egraph: &KilnEGraph, x: Id) -> Vec<HeadMatch> {
        let mut out = Vec::new();
        let Some(logits) = shape_of(egraph, x, 2) else {
            return out;
        };
        for n in egraph[x].nodes.iter() {
            let KilnLang::Op {
                op,
                outputs: 1,
                children,
            } = n
            else {
                continue;
            };
            match op.op() {
                Op::MatMul if children.len() == 2 => {
                    let (h, w) = (children[0], children[1]);
                    let (Some(hs), Some(ws)) = (shape_of(egraph, h, 2), shape_of(egraph, w, 2))
                    else {
                        continue;
                    };
                    // h [N, d] · W [d, V] = logits [N, V].
                    if hs[1] != ws[0] || logits[0] != hs[0] || logits[1] != ws[1] {
                        continue;
                    }
                    out.push(HeadMatch {
                        head: n.clone(),
                        tied: None,
                    });
                    // Tied embeddings: W = Transpose(E), E [V, d].
                    for t in egraph[w].nodes.iter() {
                        let KilnLang::Op {
                            op: top,
                            outputs: 1,
                            children: tk,
                        } = t
                        else {
                            continue;
                        };
                        if !is_2d_swap(top.op())
                            || tk.len() != 1
                            || shape_of(egraph, tk[0], 2).is_none()
                        {
                            continue;
                        }
                        out.push(HeadMatch {
                            head: n.clone(),
                            tied: Some(t.clone()),
                        });
                    }
                }
                Op::Gemm(g) if children.len() >= 2 && children.len() <= 3 => {
                    if g.alpha != 1.0 || g.beta != 1.0 || g.trans_a || !g.trans_b {
                        continue;
                    }
                    let (h, w) = (children[0], children[1]);
                    let (Some(hs), Some(ws)) = (shape_of(egraph, h, 2), shape_of(egraph, w, 2))
                    else {
                        continue;
                    };
                    // h [N, d] · W[V, d]ᵀ = logits [N, V].
                    if hs[1] != ws[1] || logits[0] != hs[0] || logits[1] != ws[0] {
                        continue;
                    }
                    // A broadcast bias other than [V] would not be the
                    // fused op's per-class bias.
                    if let Some(&c) = children.get(2) {
                        if !is_absent(egraph, c) {
                            match shape_of(egraph, c, 1) {
                                Some(bs) if bs[0] == ws[0] => {}
                                _ => continue,
                            }
                        }
                    }
                    out.push(HeadMatch {
                        head: n.clone(),
                        tied: None,
                    });
                }
                _ => {}
            }
        }
        out
    }
}

/// One head under a loss.
struct HeadMatch {
    head: KilnLang,
    /// The `Transpose(E)` node in the weight's class, for tied embeddings.
    tied: Option<KilnLang>,
}

impl Rule for LinearCrossEntropyFusion {
    fn name(&self) -> &'static str {
        "loss-linear-ce"
    }

    fn description(&self) -> &'static str {
        "CrossEntropy(MatMul(h, W) | Gemm(h, W, b, transB), y, w) -> kiln::LinearCrossEntropy(h, W, y, b, w)"
    }

    fn roots(&self) -> Option<Vec<Disc>> {
        Some(vec![Disc::Op(KILN_DOMAIN, "CrossEntropy")])
    }

    fn search(&self, egraph: &KilnEGraph, class: Id, out: &mut Vec<Match>) {
        for root in egraph[class].nodes.iter() {
            let KilnLang::Op {
                op,
                outputs: 1,
                children,
            } = root
            else {
                continue;
            };
            if !matches!(op.op(), Op::CrossEntropy { .. })
                || children.len() < 2
                || children.len() > 3
            {
                continue;
            }
            for hm in self.heads(egraph, children[0]) {
                let mut b = AstBuilder::new();
                let mut head = hm.head.clone();
                let head_kids: Vec<Id> = head.children().to_vec();
                let mut new_kids = Vec::with_capacity(head_kids.len());
                for (i, &c) in head_kids.iter().enumerate() {
                    match &hm.tied {
                        Some(t) if i == 1 => {
                            let e = b.class(t.children()[0]);
                            let mut t = t.clone();
                            t.children_mut().copy_from_slice(&[e]);
                            new_kids.push(b.node(t));
                        }
                        _ => new_kids.push(b.class(c)),
                    }
                }
                head.children_mut().copy_from_slice(&new_kids);
                let hv = b.node(head);
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
        let root = node_at(&m.lhs, root_of(&m.lhs))?;
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
        let head = node_at(&m.lhs, children[0])?;
        let head_kids = head.children();
        let mut b = AstBuilder::continuing(&m.subst);
        let h = b.var(var_at(&m.lhs, head_kids[0])?);
        // The weight slot is a leaf, or (tied embeddings) a Transpose whose
        // leaf is E, which the fused op reads in the [V, d] layout.
        let (w, transpose_weight) = match &m.lhs[head_kids[1]] {
            ENodeOrVar::Var(v) => (b.var(*v), matches!(head.as_op(), Some(Op::Gemm(_)))),
            ENodeOrVar::ENode(t) => (b.var(var_at(&m.lhs, *t.children().first()?)?), true),
        };
        let labels = b.var(var_at(&m.lhs, children[1])?);
        let bias = match head_kids.get(2) {
            Some(&c) => Some(b.var(var_at(&m.lhs, c)?)),
            None => None,
        };
        let class_weight = match children.get(2) {
            Some(&c) => Some(b.var(var_at(&m.lhs, c)?)),
            None => None,
        };
        let mut kids = vec![h, w, labels];
        if bias.is_some() || class_weight.is_some() {
            kids.push(match bias {
                Some(x) => x,
                None => b.node(KilnLang::Absent),
            });
        }
        if let Some(cw) = class_weight {
            kids.push(cw);
        }
        b.node(KilnLang::Op {
            op: OpKey::new(Op::LinearCrossEntropy {
                reduction: *reduction,
                ignore_index: *ignore_index,
                label_smoothing: *label_smoothing,
                z_loss: *z_loss,
                transpose_weight,
                chunk_size: DEFAULT_CHUNK_SIZE,
            }),
            outputs: 1,
            children: kids,
        });
        Some(b.into_ast())
    }
}

/// `CrossEntropy(Reshape([Slice](MatMul(H, W)), [M, V]), y[, w])` ->
/// `LinearCrossEntropy(Reshape([Slice](H), [-1, d]), W, y, _, w)`.
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

/// The `MatMul(H, W)` heads in class `x` whose output is `x`'s type with
/// `H` of rank ≥ 3 and `W` 2-D, each with its `Transpose(E)` weight node
/// when the weight is a tied embedding (`None` alongside for the plain
/// form).
fn batched_heads(egraph: &KilnEGraph, x: Id) -> Vec<(KilnLang, Option<KilnLang>)> {
    let mut out = Vec::new();
    let Some(xt) = egraph[x].data.tensor() else {
        return out;
    };
    let rank = xt.rank();
    if rank < 3 {
        return out;
    }
    for n in egraph[x].nodes.iter() {
        let KilnLang::Op {
            op,
            outputs: 1,
            children,
        } = n
        else {
            continue;
        };
        if !matches!(op.op(), Op::MatMul) || children.len() != 2 {
            continue;
        }
        let (Some(hs), Some(ws)) = (
            shape_of(egraph, children[0], rank),
            shape_of(egraph, children[1], 2),
        ) else {
            continue;
        };
        // H [..., d] · W [d, V] = X [..., V], with H's leading axes X's.
        if hs[rank - 1] != ws[0]
            || xt.shape[rank - 1] != ws[1]
            || hs[..rank - 1] != xt.shape[..rank - 1]
        {
            continue;
        }
        if !matches!(hs[rank - 1], Dim::Fixed(_)) {
            continue;
        }
        out.push((n.clone(), None));
        for t in egraph[children[1]].nodes.iter() {
            let KilnLang::Op {
                op: top,
                outputs: 1,
                children: tk,
            } = t
            else {
                continue;
            };
            if is_2d_swap(top.op()) && tk.len() == 1 && shape_of(egraph, tk[0], 2).is_some() {
                out.push((n.clone(), Some(t.clone())));
            }
        }
    }
    out
}

/// Adds `head` (a MatMul, with `tied` as its weight when given) to `b`,
/// its leaves being fresh class variables; returns its index.
fn add_head(b: &mut AstBuilder, head: &KilnLang, tied: Option<&KilnLang>) -> Id {
    let kids = head.children();
    let h = b.class(kids[0]);
    let w = match tied {
        Some(t) => {
            let e = b.class(t.children()[0]);
            let mut t = t.clone();
            t.children_mut().copy_from_slice(&[e]);
            b.node(t)
        }
        None => b.class(kids[1]),
    };
    let mut head = head.clone();
    head.children_mut().copy_from_slice(&[h, w]);
    b.node(head)
}

impl Rule for FlattenedHeadFusion {
    fn name(&self) -> &'static str {
        "loss-linear-ce-flat"
    }

    fn description(&self) -> &'static str {
        "CrossEntropy(Reshape(Slice?(MatMul(H, W)), [M, V]), y, w) -> kiln::LinearCrossEntropy(Reshape(Slice?(H), [-1, d]), W, y, _, w)"
    }

    fn roots(&self) -> Option<Vec<Disc>> {
        Some(vec![Disc::Op(KILN_DOMAIN, "CrossEntropy")])
    }

    fn search(&self, egraph: &KilnEGraph, class: Id, out: &mut Vec<Match>) {
        for root in egraph[class].nodes.iter() {
            let KilnLang::Op {
                op,
                outputs: 1,
                children,
            } = root
            else {
                continue;
            };
            if !matches!(op.op(), Op::CrossEntropy { .. })
                || children.len() < 2
                || children.len() > 3
            {
                continue;
            }
            let Some(flat) = shape_of(egraph, children[0], 2) else {
                continue;
            };
            for reshape in egraph[children[0]].nodes.iter() {
                let KilnLang::Op {
                    op: rop,
                    outputs: 1,
                    children: rk,
                } = reshape
                else {
                    continue;
                };
                if !matches!(rop.op(), Op::Reshape { .. }) || rk.len() != 2 {
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
                let mut found: Vec<(Option<KilnLang>, KilnLang, Option<KilnLang>)> =
                    batched_heads(egraph, x)
                        .into_iter()
                        .map(|(h, t)| (None, h, t))
                        .collect();
                for sl in egraph[x].nodes.iter() {
                    let KilnLang::Op {
                        op: sop,
                        outputs: 1,
                        children: sk,
                    } = sl
                    else {
                        continue;
                    };
                    if !matches!(sop.op(), Op::Slice) || sk.len() < 4 || is_absent(egraph, sk[3]) {
                        continue;
                    }
                    let Some(axes) = slice_axes(egraph, sk[3], rank) else {
                        continue;
                    };
                    if axes.contains(&(rank - 1)) {
                        continue;
                    }
                    for (h, t) in batched_heads(egraph, sk[0]) {
                        found.push((Some(sl.clone()), h, t));
                    }
                }
                for (slice, head, tied) in found {
                    let mut b = AstBuilder::new();
                    let hv = add_head(&mut b, &head, tied.as_ref());
                    let xv = match &slice {
                        Some(sl) => {
                            let mut kids = vec![hv];
                            for &c in &sl.children()[1..] {
                                kids.push(b.class(c));
                            }
                            let mut sl = sl.clone();
                            sl.children_mut().copy_from_slice(&kids);
                            b.node(sl)
                        }
                        None => hv,
                    };
                    let shape = b.class(rk[1]);
                    let mut r = reshape.clone();
                    r.children_mut().copy_from_slice(&[xv, shape]);
                    let rv = b.node(r);
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
        let root = node_at(&m.lhs, root_of(&m.lhs))?;
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
        let reshape = node_at(&m.lhs, children[0])?;
        let x = node_at(&m.lhs, *reshape.children().first()?)?;
        let (slice, head) = match x.as_op() {
            Some(Op::Slice) => (Some(x), node_at(&m.lhs, *x.children().first()?)?),
            _ => (None, x),
        };
        let hk = head.children();
        let h_var = var_at(&m.lhs, hk[0])?;
        let h_class = *m.subst.get(h_var)?;
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
        let mut rows = b.var(h_var);
        if let Some(sl) = slice {
            let mut kids = vec![rows];
            for &c in &sl.children()[1..] {
                kids.push(b.var(var_at(&m.lhs, c)?));
            }
            let mut sl = sl.clone();
            sl.children_mut().copy_from_slice(&kids);
            rows = b.node(sl);
        }
        let shape = b.node(KilnLang::Const(shape));
        let flat = b.node(KilnLang::op(
            Op::Reshape { allowzero: false },
            vec![rows, shape],
        ));
        let (w, transpose_weight) = match &m.lhs[hk[1]] {
            ENodeOrVar::Var(v) => (b.var(*v), false),
            ENodeOrVar::ENode(t) => (b.var(var_at(&m.lhs, *t.children().first()?)?), true),
        };
        let labels = b.var(var_at(&m.lhs, children[1])?);
        let mut kids = vec![flat, w, labels];
        if let Some(&c) = children.get(2) {
            kids.push(b.node(KilnLang::Absent));
            kids.push(b.var(var_at(&m.lhs, c)?));
        }
        b.node(KilnLang::Op {
            op: OpKey::new(Op::LinearCrossEntropy {
                reduction: *reduction,
                ignore_index: *ignore_index,
                label_smoothing: *label_smoothing,
                z_loss: *z_loss,
                transpose_weight,
                chunk_size: DEFAULT_CHUNK_SIZE,
            }),
            outputs: 1,
            children: kids,
        });
        Some(b.into_ast())
    }
}
