//! Attention fusion: the scaled dot-product attention exporters spell out
//! becomes one ONNX-23 `Attention` (4-D `[batch, heads, seq, head_dim]`
//! inputs), which the backends run with an online softmax and never
//! materialize the `S × S` scores.
//!
//! - `attention-sdpa` matches `MatMul(Softmax(S, axis = -1), V)` where the
//!   scores `S` are `QKᵀ` (a `MatMul` of rank-4 values) with, in this order
//!   from the inside out: optional positive scalar scales on `Q`, on `Kᵀ`
//!   and on `K` under its transpose (`Mul` or `Div` by a constant; HF puts
//!   `√scale` on both), an optional scale on the scores, and an optional
//!   mask: `Add(S, M)` with a float mask `M`, `Where(C, S, L)` with a bool
//!   keep-mask `C`, or `Where(C, L, S)` with a bool drop-mask, `L` a
//!   scalar at most [`LARGE_NEGATIVE`]. It becomes
//!   `Attention{scale = product of the scales}(Q, K, V[, mask])`, where `K`
//!   is `Kᵀ`'s transpose folded into the permutation that produced it
//!   (`Transpose{0,2,3,1}(x)` gives `K = Transpose{0,2,1,3}(x)`, and
//!   `Transpose{0,1,3,2}(k)` gives `K = k`). Keys with one head and
//!   queries with several are multi-query attention, which `Attention`
//!   broadcasts the same way.
//! - `attention-causal` replaces the mask of an `Attention` whose query and
//!   key lengths are the same `S` by `is_causal = 1` when the mask is
//!   provably the lower-triangular causal mask of that `S`: a constant
//!   (for example a sliced GPT-2 `bias` buffer), `Trilu` of ones, or a
//!   comparison of `Range(0, S, 1)` positions, through `Cast`, `Not`,
//!   `Equal(·, 0)`, `Unsqueeze` of leading axes, `Slice` from the origin,
//!   and the additive forms `Where(keep, 0, L)`, `Where(drop, L, 0)` and
//!   `Mul(Cast(drop), L)`.
//! - `attention-gqa` gives `Attention` the unrepeated keys and values of
//!   grouped-query attention: `Reshape(Expand|Tile(Unsqueeze(K0, 2)))`
//!   that repeats each of `K0`'s heads `n` times in place (the `repeat_kv`
//!   of HF LLaMA), and `Expand`/`Tile` of a one-head `K0` (multi-query). The
//!   fused op groups query heads onto key/value heads the same way
//!   (`kv_head = head / n`). A `Tile` of the head axis of several heads
//!   interleaves the groups differently and is left alone.
//!
//! # Exactness
//!
//! The rewrites are equalities up to floating-point reassociation (the
//! scale is applied as `√scale` to both `Q` and `K`), with one stated
//! assumption: a masked score is replaced by `L ≤ -10⁴` (or gets `L`
//! added), so its softmax weight is `exp(L - max) = 0` in any working
//! precision as long as the unmasked scores are far above `L` and every
//! row keeps at least one key. `Attention` uses `-∞` there, which gives
//! the same result. A row whose keys are all masked (a fully padded query
//! under a key mask) is the one case that differs: the unfused graph
//! spreads its weight uniformly or over the raw scores, `Attention`
//! produces NaN or the unmasked softmax; causal masks never mask a whole
//! row.
//!
//! # What does not fuse
//!
//! A softmax over another axis, a product whose attention weights multiply
//! `V` from the wrong side, inputs whose batch axes broadcast (Attention
//! needs one batch size), a query with fewer heads than the keys. When the
//! attention probabilities, the masked or scaled scores, or the raw
//! scores are also read elsewhere (a graph output, another node), the
//! rule does not fire: the unfused path has to be computed for that reader
//! anyway, and the fused op would only add a second computation. (A mask
//! with an offset diagonal, an upper-triangular mask or one over another
//! length stays an explicit `attn_mask`.)

use super::{node_at, root_of, var_at, AstBuilder, Match, Rule};
use crate::analysis::KilnEGraph;
use crate::lang::{Disc, KilnLang};
use egg::{ENodeOrVar, Id, Language, PatternAst, Var};
use kiln_ir::dim::Dim;
use kiln_ir::dtype::DType;
use kiln_ir::op::{AttentionAttrs, BinaryOp, Op, UnaryOp};
use kiln_ir::tensor::Tensor;
use kiln_ir::types::TensorType;
use std::sync::Arc;

/// A masked score must be at most this (or get at least this much
/// subtracted) for masking by value to be the same as masking by `-∞`:
/// `exp(-10⁴)` is zero in `f32` and `f64` alike.
pub const LARGE_NEGATIVE: f64 = -1e4;

/// How deep the causal-mask proof looks through `Cast`, `Not`,
/// `Unsqueeze` and friends.
const MASK_DEPTH: usize = 8;

/// The rules of this module.
pub fn rules() -> Vec<Arc<dyn Rule>> {
    vec![
        Arc::new(SdpaFusion),
        Arc::new(CausalMask),
        Arc::new(UnrepeatKv),
    ]
}

// ---- e-graph helpers ----

/// The tensor type of a class, if it is a value.
fn ty(egraph: &KilnEGraph, class: Id) -> Option<&TensorType> {
    egraph[class].data.tensor()
}

/// The value of a class, when it is a tracked constant.
fn constant(egraph: &KilnEGraph, class: Id) -> Option<&Tensor> {
    egraph.analysis.constant(&egraph[class].data)
}

/// The one element of a one-element constant class.
fn scalar(egraph: &KilnEGraph, class: Id) -> Option<f64> {
    let t = constant(egraph, class)?;
    (t.len() == 1)
        .then(|| t.to_f64s().first().copied())
        .flatten()
}

/// True when `class` is the omitted-input marker.
fn is_absent(egraph: &KilnEGraph, class: Id) -> bool {
    egraph[class]
        .nodes
        .iter()
        .any(|n| matches!(n, KilnLang::Absent))
}

/// The single-output ONNX-domain op nodes of a class, with op and children.
fn ops(egraph: &KilnEGraph, class: Id) -> impl Iterator<Item = (&KilnLang, &Op, &[Id])> + '_ {
    egraph[class].nodes.iter().filter_map(|n| match n {
        KilnLang::Op {
            op,
            outputs: 1,
            children,
        } if op.domain().is_empty() => Some((n, op.op(), children.as_slice())),
        _ => None,
    })
}

/// A node with its children replaced by AST indices.
fn with_children(n: &KilnLang, children: &[Id]) -> KilnLang {
    let mut n = n.clone();
    n.children_mut().copy_from_slice(children);
    n
}

/// `axis` normalized to `0..rank`.
fn norm_axis(axis: i64, rank: usize) -> Option<usize> {
    let r = i64::try_from(rank).ok()?;
    let a = if axis < 0 { axis + r } else { axis };
    (0..r)
        .contains(&a)
        .then(|| usize::try_from(a).ok())
        .flatten()
}

/// The constant axes of a class (an `axes` input), normalized to `rank`.
fn const_axes(egraph: &KilnEGraph, class: Id, rank: usize) -> Option<Vec<usize>> {
    constant(egraph, class)?
        .to_i64s()
        .into_iter()
        .map(|a| norm_axis(a, rank))
        .collect()
}

/// True when nothing but class `consumer` reads class `class` and it is
/// not a graph output: fusing it away then removes it from the graph.
fn only_read_by(egraph: &KilnEGraph, class: Id, consumer: Id) -> bool {
    let class = egraph.find(class);
    let consumer = egraph.find(consumer);
    if egraph
        .analysis
        .outputs
        .iter()
        .any(|&o| egraph.find(o) == class)
    {
        return false;
    }
    egraph[class].parents().all(|p| egraph.find(p) == consumer)
}

/// A `Mul`/`Div` by a positive finite one-element constant, as (slot of
/// the scaled operand, factor it multiplies by). The constant's rank must
/// not exceed the operand's, so the result has the operand's type.
fn scale_split(egraph: &KilnEGraph, op: &Op, children: &[Id]) -> Option<(usize, f64)> {
    let [a, b] = children else {
        return None;
    };
    let factor = |operand: Id, c: Id| -> Option<f64> {
        let v = scalar(egraph, c)?;
        let (ot, ct) = (ty(egraph, operand)?, ty(egraph, c)?);
        let ok = v.is_finite() && v > 0.0 && ct.rank() <= ot.rank() && ct.dtype == ot.dtype;
        ok.then_some(v)
    };
    match op {
        Op::Binary(BinaryOp::Mul) => factor(*a, *b)
            .map(|f| (0, f))
            .or_else(|| factor(*b, *a).map(|f| (1, f))),
        Op::Binary(BinaryOp::Div) => factor(*a, *b).map(|f| (0, 1.0 / f)),
        _ => None,
    }
}

/// The first scale node of a class (see [`scale_split`]), with the slot
/// of its operand.
fn scale_node(egraph: &KilnEGraph, class: Id) -> Option<(&KilnLang, usize)> {
    ops(egraph, class).find_map(|(n, op, kids)| scale_split(egraph, op, kids).map(|(s, _)| (n, s)))
}

/// The permutation of a rank-4 Transpose.
fn perm4(op: &Op) -> Option<[usize; 4]> {
    let Op::Transpose { perm } = op else {
        return None;
    };
    let p: Vec<usize> = match perm {
        None => vec![3, 2, 1, 0],
        Some(p) => p
            .iter()
            .map(|&a| usize::try_from(a).ok())
            .collect::<Option<_>>()?,
    };
    let p: [usize; 4] = p.try_into().ok()?;
    let mut seen = [false; 4];
    for &a in &p {
        if a >= 4 || std::mem::replace(&mut seen[a], true) {
            return None;
        }
    }
    Some(p)
}

// ---- attention-sdpa ----

/// `MatMul(Softmax(mask(scale(MatMul(Q, Kᵀ)))), V)` -> `Attention(Q, K, V[, mask])`.
struct SdpaFusion;

/// How the mask is applied to the scores.
#[derive(Clone, Copy)]
enum MaskNode<'a> {
    /// `Add` with the scores in this slot; the other is an additive mask.
    Add(&'a KilnLang, usize),
    /// `Where(C, S, L)`: C keeps.
    WhereKeep(&'a KilnLang),
    /// `Where(C, L, S)`: C drops.
    WhereDrop(&'a KilnLang),
}

impl MaskNode<'_> {
    fn node(&self) -> &KilnLang {
        match self {
            MaskNode::Add(n, _) | MaskNode::WhereKeep(n) | MaskNode::WhereDrop(n) => n,
        }
    }

    /// The slot of the scores.
    fn scores_slot(&self) -> usize {
        match self {
            MaskNode::Add(_, s) => *s,
            MaskNode::WhereKeep(_) => 1,
            MaskNode::WhereDrop(_) => 2,
        }
    }
}

/// The parts of one match found by the search.
struct Found<'a> {
    root: &'a KilnLang,
    softmax: &'a KilnLang,
    mask: Option<MaskNode<'a>>,
    /// The scale on the scores, with its operand slot.
    scale: Option<(&'a KilnLang, usize)>,
    /// `MatMul(Q', Kᵀ')`.
    scores: &'a KilnLang,
    q_scale: Option<(&'a KilnLang, usize)>,
    kt_scale: Option<(&'a KilnLang, usize)>,
    kt_transpose: Option<&'a KilnLang>,
    k_scale: Option<(&'a KilnLang, usize)>,
}

/// The masks applied to the scores class `s` (plus "no mask"), each with
/// the class of the scores under it.
fn masks(egraph: &KilnEGraph, s: Id) -> Vec<(Option<MaskNode<'_>>, Id)> {
    let mut out = vec![(None, s)];
    let Some(st) = ty(egraph, s) else {
        return out;
    };
    for (n, op, kids) in ops(egraph, s) {
        match op {
            Op::Binary(BinaryOp::Add) if kids.len() == 2 => {
                for (slot, &under) in kids.iter().enumerate() {
                    out.push((Some(MaskNode::Add(n, slot)), under));
                }
            }
            Op::Where if kids.len() == 3 => {
                let large = |c: Id| scalar(egraph, c).is_some_and(|v| v <= LARGE_NEGATIVE);
                if large(kids[2]) && ty(egraph, kids[1]) == Some(st) {
                    out.push((Some(MaskNode::WhereKeep(n)), kids[1]));
                }
                if large(kids[1]) && ty(egraph, kids[2]) == Some(st) {
                    out.push((Some(MaskNode::WhereDrop(n)), kids[2]));
                }
            }
            _ => {}
        }
    }
    out
}

/// True when a mask of type `m` can be Attention's `attn_mask` for scores
/// of type `scores`: rank 2 to 4, the key axis exactly (a shorter one is
/// padded with -∞, not broadcast), and the other axes 1 or the scores'.
fn mask_fits(m: &TensorType, scores: &TensorType) -> bool {
    let r = m.rank();
    if !(2..=4).contains(&r) || scores.rank() != 4 {
        return false;
    }
    m.shape
        .iter()
        .rev()
        .zip(scores.shape.iter().rev())
        .enumerate()
        .all(|(i, (a, b))| a == b || (i > 0 && *a == Dim::Fixed(1)))
}

impl SdpaFusion {
    /// Checks the shapes and dtypes of a candidate and the single use of
    /// its interior values.
    fn valid(&self, egraph: &KilnEGraph, class: Id, f: &Found) -> Option<()> {
        let (p, v) = (f.root.children()[0], f.root.children()[1]);
        let s = f.softmax.children()[0];
        let [qs, kts] = f.scores.children() else {
            return None;
        };
        let (q, kt, vt) = (ty(egraph, *qs)?, ty(egraph, *kts)?, ty(egraph, v)?);
        if q.rank() != 4 || kt.rank() != 4 || vt.rank() != 4 || !q.dtype.is_float() {
            return None;
        }
        if kt.dtype != q.dtype || vt.dtype != q.dtype {
            return None;
        }
        let (b, h, d) = (&q.shape[0], &q.shape[1], &q.shape[3]);
        let (kh, kd, ks) = (&kt.shape[1], &kt.shape[2], &kt.shape[3]);
        // One batch size, K and V with the same heads (all of Q's or one).
        let heads_ok = kh == h || *kh == Dim::Fixed(1);
        if kt.shape[0] != *b || vt.shape[0] != *b || kd != d || !heads_ok {
            return None;
        }
        if vt.shape[1] != *kh || vt.shape[2] != *ks {
            return None;
        }
        let scores_ty = ty(egraph, s)?;
        if let Some(m) = f.mask {
            let kids = m.node().children();
            let mask_class = match m {
                MaskNode::Add(_, slot) => kids[1 - slot],
                MaskNode::WhereKeep(_) | MaskNode::WhereDrop(_) => kids[0],
            };
            let mt = ty(egraph, mask_class)?;
            let dtype_ok = match m {
                MaskNode::Add(..) => mt.dtype == q.dtype,
                _ => mt.dtype == DType::Bool,
            };
            // The mask must not broadcast the scores up.
            let under = ty(egraph, kids[m.scores_slot()])?;
            if !dtype_ok || under != scores_ty || !mask_fits(mt, scores_ty) {
                return None;
            }
        }
        // Interior values: probabilities, masked, scaled and raw scores.
        let mut chain = vec![(p, class), (s, p)];
        let mut top = s;
        if let Some(m) = f.mask {
            let under = m.node().children()[m.scores_slot()];
            chain.push((under, top));
            top = under;
        }
        if let Some((n, slot)) = f.scale {
            chain.push((n.children()[slot], top));
        }
        chain
            .iter()
            .all(|&(c, by)| only_read_by(egraph, c, by))
            .then_some(())
    }

    /// Every candidate rooted at the MatMul node `root`.
    fn candidates<'a>(&self, egraph: &'a KilnEGraph, root: &'a KilnLang) -> Vec<Found<'a>> {
        let mut out = Vec::new();
        let [p, _v] = root.children() else {
            return out;
        };
        for (sm, op, sk) in ops(egraph, *p) {
            let Op::Softmax { axis } = op else {
                continue;
            };
            let Some(pt) = ty(egraph, *p) else {
                continue;
            };
            if pt.rank() != 4 || norm_axis(*axis, 4) != Some(3) || sk.len() != 1 {
                continue;
            }
            for (mask, under) in masks(egraph, sk[0]) {
                let mut scaled: Vec<(Option<(&KilnLang, usize)>, Id)> = vec![(None, under)];
                if let Some((n, slot)) = scale_node(egraph, under) {
                    scaled.push((Some((n, slot)), n.children()[slot]));
                }
                for (scale, raw) in scaled {
                    for (mm, mop, mk) in ops(egraph, raw) {
                        if !matches!(mop, Op::MatMul) || mk.len() != 2 {
                            continue;
                        }
                        let q_scale = scale_node(egraph, mk[0]);
                        let kt_scale = scale_node(egraph, mk[1]);
                        let kt = kt_scale.map_or(mk[1], |(n, s)| n.children()[s]);
                        let kt_transpose = ops(egraph, kt)
                            .find(|(_, op, _)| perm4(op).is_some())
                            .map(|(n, _, _)| n);
                        let k_scale =
                            kt_transpose.and_then(|t| scale_node(egraph, t.children()[0]));
                        out.push(Found {
                            root,
                            softmax: sm,
                            mask,
                            scale,
                            scores: mm,
                            q_scale,
                            kt_scale,
                            kt_transpose,
                            k_scale,
                        });
                    }
                }
            }
        }
        out
    }

    /// The left-hand side of a candidate.
    fn lhs(&self, f: &Found) -> Option<Match> {
        let mut b = AstBuilder::new();
        let scaled = |b: &mut AstBuilder, sc: Option<(&KilnLang, usize)>, class: Id| -> Id {
            match sc {
                Some((n, slot)) => {
                    let kids = n.children();
                    let inner = b.class(kids[slot]);
                    let c = b.class(kids[1 - slot]);
                    let mut k = [inner, inner];
                    k[1 - slot] = c;
                    b.node(with_children(n, &k))
                }
                None => b.class(class),
            }
        };
        let [qs, kts] = f.scores.children() else {
            return None;
        };
        let q = scaled(&mut b, f.q_scale, *qs);
        let kt_inner = f.kt_scale.map_or(*kts, |(n, s)| n.children()[s]);
        let kt = match f.kt_transpose {
            Some(t) => {
                let x = scaled(&mut b, f.k_scale, t.children()[0]);
                b.node(with_children(t, &[x]))
            }
            None => b.class(kt_inner),
        };
        let kt = match f.kt_scale {
            Some((n, slot)) => {
                let c = b.class(n.children()[1 - slot]);
                let mut k = [kt, kt];
                k[1 - slot] = c;
                b.node(with_children(n, &k))
            }
            None => kt,
        };
        let mut s = b.node(with_children(f.scores, &[q, kt]));
        if let Some((n, slot)) = f.scale {
            let c = b.class(n.children()[1 - slot]);
            let mut k = [s, s];
            k[1 - slot] = c;
            s = b.node(with_children(n, &k));
        }
        if let Some(m) = f.mask {
            let n = m.node();
            let slot = m.scores_slot();
            let mut kids = Vec::with_capacity(n.children().len());
            for (i, &c) in n.children().iter().enumerate() {
                kids.push(if i == slot { s } else { b.class(c) });
            }
            s = b.node(with_children(n, &kids));
        }
        let p = b.node(with_children(f.softmax, &[s]));
        let v = b.class(f.root.children()[1]);
        b.node(with_children(f.root, &[p, v]));
        Some(b.finish())
    }
}

/// What the rewrite reads back from a left-hand side.
struct Plan {
    q: Var,
    k: KeyForm,
    v: Var,
    mask: Option<(Var, bool)>,
    scale: f64,
}

/// Where `K` comes from.
enum KeyForm {
    /// `Kᵀ` itself: `K = Transpose{0,1,3,2}(Kᵀ)`.
    Swap(Var),
    /// `Kᵀ = Transpose{perm}(x)`: `K = Transpose{perm with its last two
    /// entries swapped}(x)`, or `x` when that is the identity.
    Permuted(Var, [usize; 4]),
}

/// Reads a scale node of the AST: (the AST index of its operand, factor).
fn parse_scale(egraph: &KilnEGraph, m: &Match, n: &KilnLang) -> Option<(Id, f64)> {
    let kids = n.children();
    let class = |i: Id| -> Option<Id> { m.subst.get(var_at(&m.lhs, i)?).copied() };
    let op = n.as_op()?;
    // An operand that is a node of the match is the scaled value; with two
    // leaves, the same test as the search decides.
    let slot = match (node_at(&m.lhs, kids[0]), node_at(&m.lhs, kids[1])) {
        (Some(_), None) => 0,
        (None, Some(_)) => 1,
        (None, None) => scale_split(egraph, op, &[class(kids[0])?, class(kids[1])?])?.0,
        (Some(_), Some(_)) => return None,
    };
    let c = scalar(egraph, class(kids[1 - slot])?)?;
    let f = match op {
        Op::Binary(BinaryOp::Mul) => c,
        Op::Binary(BinaryOp::Div) => 1.0 / c,
        _ => return None,
    };
    Some((kids[slot], f))
}

impl Plan {
    fn parse(egraph: &KilnEGraph, m: &Match) -> Option<Plan> {
        let root = node_at(&m.lhs, root_of(&m.lhs))?;
        let [p, v] = root.children() else {
            return None;
        };
        let v = var_at(&m.lhs, *v)?;
        let sm = node_at(&m.lhs, *p)?;
        let mut s = *sm.children().first()?;
        let mut scale = 1.0f64;
        let mut mask = None;
        let sn = node_at(&m.lhs, s)?;
        match sn.as_op()? {
            Op::Binary(BinaryOp::Add) => {
                let kids = sn.children();
                let slot = if node_at(&m.lhs, kids[0]).is_some() {
                    0
                } else {
                    1
                };
                mask = Some((var_at(&m.lhs, kids[1 - slot])?, false));
                s = kids[slot];
            }
            Op::Where => {
                let kids = sn.children();
                let drop = node_at(&m.lhs, kids[1]).is_none();
                mask = Some((var_at(&m.lhs, kids[0])?, drop));
                s = kids[if drop { 2 } else { 1 }];
            }
            _ => {}
        }
        let mut sn = node_at(&m.lhs, s)?;
        if !matches!(sn.as_op()?, Op::MatMul) {
            let (inner, f) = parse_scale(egraph, m, sn)?;
            scale *= f;
            sn = node_at(&m.lhs, inner)?;
        }
        let [qs, kts] = sn.children() else {
            return None;
        };
        let q = match node_at(&m.lhs, *qs) {
            Some(n) => {
                let (inner, f) = parse_scale(egraph, m, n)?;
                scale *= f;
                var_at(&m.lhs, inner)?
            }
            None => var_at(&m.lhs, *qs)?,
        };
        let mut kt = *kts;
        if let Some(n) = node_at(&m.lhs, kt) {
            if !matches!(n.as_op()?, Op::Transpose { .. }) {
                let (inner, f) = parse_scale(egraph, m, n)?;
                scale *= f;
                kt = inner;
            }
        }
        let k = match node_at(&m.lhs, kt) {
            None => KeyForm::Swap(var_at(&m.lhs, kt)?),
            Some(t) => {
                let perm = perm4(t.as_op()?)?;
                let x = *t.children().first()?;
                let x = match node_at(&m.lhs, x) {
                    Some(n) => {
                        let (inner, f) = parse_scale(egraph, m, n)?;
                        scale *= f;
                        var_at(&m.lhs, inner)?
                    }
                    None => var_at(&m.lhs, x)?,
                };
                KeyForm::Permuted(x, perm)
            }
        };
        Some(Plan {
            q,
            k,
            v,
            mask,
            scale,
        })
    }
}

/// `Attention` attributes for a fused 4-D attention.
fn attention_op(scale: Option<f32>, is_causal: bool) -> Op {
    Op::Attention(AttentionAttrs {
        is_causal,
        q_num_heads: None,
        kv_num_heads: None,
        qk_matmul_output_mode: 0,
        scale,
        softcap: 0.0,
        softmax_precision: None,
    })
}

impl Rule for SdpaFusion {
    fn name(&self) -> &'static str {
        "attention-sdpa"
    }

    fn description(&self) -> &'static str {
        "MatMul(Softmax(mask(scale(MatMul(Q, K^T))), axis=-1), V) -> Attention(Q, K, V, mask) {scale}"
    }

    fn roots(&self) -> Option<Vec<Disc>> {
        Some(vec![Disc::onnx("MatMul")])
    }

    fn search(&self, egraph: &KilnEGraph, class: Id, out: &mut Vec<Match>) {
        for (root, op, kids) in ops(egraph, class) {
            if !matches!(op, Op::MatMul) || kids.len() != 2 {
                continue;
            }
            for f in self.candidates(egraph, root) {
                if self.valid(egraph, class, &f).is_some() {
                    out.extend(self.lhs(&f));
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
        let plan = Plan::parse(egraph, m)?;
        // The attribute is f32; a factor that does not survive the cast
        // (0 or infinite) would change the result.
        let scale = plan.scale as f32;
        if !scale.is_finite() || scale <= 0.0 {
            return None;
        }
        let mut b = AstBuilder::continuing(&m.subst);
        let q = b.var(plan.q);
        let k = match plan.k {
            KeyForm::Swap(kt) => {
                let kt = b.var(kt);
                b.node(KilnLang::op(
                    Op::Transpose {
                        perm: Some(vec![0, 1, 3, 2]),
                    },
                    vec![kt],
                ))
            }
            KeyForm::Permuted(x, p) => {
                let x = b.var(x);
                let perm = [p[0], p[1], p[3], p[2]];
                if perm == [0, 1, 2, 3] {
                    x
                } else {
                    let perm = Some(perm.iter().map(|&a| a as i64).collect());
                    b.node(KilnLang::op(Op::Transpose { perm }, vec![x]))
                }
            }
        };
        let v = b.var(plan.v);
        let mut kids = vec![q, k, v];
        match plan.mask {
            Some((mv, false)) => kids.push(b.var(mv)),
            Some((mv, true)) => {
                let c = b.var(mv);
                kids.push(b.node(KilnLang::op(Op::Unary(UnaryOp::Not), vec![c])));
            }
            None => {}
        }
        b.node(KilnLang::op(attention_op(Some(scale), false), kids));
        Some(b.into_ast())
    }
}

// ---- attention-causal ----

/// `Attention(Q, K, V, causal mask)` -> `Attention{is_causal}(Q, K, V)`.
struct CausalMask;

/// Which triangle of the last two axes (row `i`, column `j`) a mask marks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tri {
    /// `j <= i`: the keys a causal query may see.
    Lower,
    /// `j > i`: the keys it may not.
    Upper,
}

impl Tri {
    fn holds(self, i: usize, j: usize) -> bool {
        match self {
            Tri::Lower => j <= i,
            Tri::Upper => j > i,
        }
    }

    fn flip(self) -> Tri {
        match self {
            Tri::Lower => Tri::Upper,
            Tri::Upper => Tri::Lower,
        }
    }
}

/// A value over the `[S, S]` grid (leading axes of size 1) that the causal
/// proof looks for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Pattern {
    /// Bool, true exactly on the triangle.
    Bool(Tri),
    /// Numeric, nonzero exactly on the triangle; exactly 1 there when
    /// `unit`.
    Indicator(Tri, bool),
    /// Float, 0 on the lower triangle and at most [`LARGE_NEGATIVE`] above
    /// it: the additive causal mask.
    Additive,
}

/// True when the constant `t` has `want` over its last two axes, for every
/// index of the leading ones.
fn const_has(t: &Tensor, want: Pattern) -> bool {
    let shape = t.shape();
    let r = shape.len();
    if r < 2 {
        return false;
    }
    let (rows, cols) = (shape[r - 2], shape[r - 1]);
    if rows == 0 || cols == 0 {
        return false;
    }
    let is_bool = t.dtype() == DType::Bool;
    match want {
        Pattern::Bool(_) if !is_bool => return false,
        Pattern::Indicator(..) if is_bool => return false,
        Pattern::Additive if !t.dtype().is_float() => return false,
        _ => {}
    }
    let ok = |i: usize, j: usize, v: f64| match want {
        Pattern::Bool(tri) => (v != 0.0) == tri.holds(i, j),
        Pattern::Indicator(tri, unit) => {
            if tri.holds(i, j) {
                v != 0.0 && (!unit || v == 1.0)
            } else {
                v == 0.0
            }
        }
        Pattern::Additive => {
            if Tri::Lower.holds(i, j) {
                v == 0.0
            } else {
                v <= LARGE_NEGATIVE
            }
        }
    };
    // Row by row; bools as bytes, so a 1024 x 1024 causal buffer is
    // checked without widening a million values to f64.
    if is_bool {
        let bytes = t.to_raw_le();
        bytes.chunks(cols).enumerate().all(|(r, row)| {
            let i = r % rows;
            row.iter().enumerate().all(|(j, &b)| ok(i, j, f64::from(b)))
        })
    } else {
        let values = t.to_f64s();
        values.chunks(cols).enumerate().all(|(r, row)| {
            let i = r % rows;
            row.iter().enumerate().all(|(j, &v)| ok(i, j, v))
        })
    }
}

/// Positions along an axis: `Unsqueeze(Range(0, n, 1), axes)` of rank 2.
/// Returns 0 for a column `[S, 1]` (the row index `i`) and 1 for a row
/// `[1, S]` (the column index `j`).
fn position_axis(egraph: &KilnEGraph, class: Id, s: &Dim) -> Option<usize> {
    let t = ty(egraph, class)?;
    let along = if t.shape == [s.clone(), Dim::Fixed(1)] {
        0
    } else if t.shape == [Dim::Fixed(1), s.clone()] {
        1
    } else {
        return None;
    };
    let is_positions = ops(egraph, class).any(|(_, op, kids)| {
        if !matches!(op, Op::Unsqueeze) || kids.len() != 2 {
            return false;
        }
        // The new axis is the one that is not `along`.
        if const_axes(egraph, kids[1], 2) != Some(vec![1 - along]) {
            return false;
        }
        ops(egraph, kids[0]).any(|(_, rop, rk)| {
            matches!(rop, Op::Range)
                && rk.len() == 3
                && scalar(egraph, rk[0]) == Some(0.0)
                && scalar(egraph, rk[2]) == Some(1.0)
        })
    });
    is_positions.then_some(along)
}

/// True when every element of `class` is nonzero (a constant, or
/// `ConstantOfShape` of a nonzero value); with `unit`, exactly 1.
fn all_nonzero(egraph: &KilnEGraph, class: Id, unit: bool) -> bool {
    let ok =
        |vals: Vec<f64>| !vals.is_empty() && vals.iter().all(|&v| v != 0.0 && (!unit || v == 1.0));
    if let Some(t) = constant(egraph, class) {
        return ok(t.to_f64s());
    }
    ops(egraph, class).any(|(_, op, _)| match op {
        Op::ConstantOfShape { value: Some(v) } => v.len() == 1 && ok(v.to_f64s()),
        _ => false,
    })
}

/// True when class `class` provably has `want` over an `[S, S]` grid
/// (with leading axes of size 1).
fn has_pattern(egraph: &KilnEGraph, class: Id, want: Pattern, s: &Dim, depth: usize) -> bool {
    let Some(t) = ty(egraph, class) else {
        return false;
    };
    let r = t.rank();
    if r < 2
        || t.shape[r - 2] != *s
        || t.shape[r - 1] != *s
        || t.shape[..r - 2].iter().any(|d| *d != Dim::Fixed(1))
    {
        return false;
    }
    let dtype_ok = match want {
        Pattern::Bool(_) => t.dtype == DType::Bool,
        Pattern::Indicator(..) => t.dtype != DType::Bool,
        Pattern::Additive => t.dtype.is_float(),
    };
    if !dtype_ok {
        return false;
    }
    if let Some(c) = constant(egraph, class) {
        return const_has(c, want);
    }
    if depth == 0 {
        return false;
    }
    let d = depth - 1;
    ops(egraph, class).any(|(_, op, kids)| match (op, want) {
        (Op::Cast { to, .. }, _) if kids.len() == 1 => {
            let x = kids[0];
            match want {
                Pattern::Bool(tri) if *to == DType::Bool => {
                    has_pattern(egraph, x, Pattern::Bool(tri), s, d)
                        || has_pattern(egraph, x, Pattern::Indicator(tri, false), s, d)
                }
                // 0/1 survive any numeric cast; other nonzeros may not.
                Pattern::Indicator(tri, _) => {
                    has_pattern(egraph, x, Pattern::Bool(tri), s, d)
                        || has_pattern(egraph, x, Pattern::Indicator(tri, true), s, d)
                }
                _ => false,
            }
        }
        (Op::Unary(UnaryOp::Not), Pattern::Bool(tri)) if kids.len() == 1 => {
            has_pattern(egraph, kids[0], Pattern::Bool(tri.flip()), s, d)
        }
        (Op::Trilu { upper }, Pattern::Bool(tri) | Pattern::Indicator(tri, _)) => {
            let k = match kids.get(1) {
                None => 0.0,
                Some(&c) if is_absent(egraph, c) => 0.0,
                Some(&c) => match scalar(egraph, c) {
                    Some(k) => k,
                    None => return false,
                },
            };
            // tril(k=0) keeps j <= i; triu(k=1) keeps j > i.
            let made = match (upper, k) {
                (false, 0.0) => Tri::Lower,
                (true, 1.0) => Tri::Upper,
                _ => return false,
            };
            let unit = matches!(want, Pattern::Indicator(_, true));
            made == tri && all_nonzero(egraph, kids[0], unit)
        }
        // torch.onnx's causal mask: Equal(Trilu(ones), 0) marks the future.
        (Op::Binary(BinaryOp::Equal), Pattern::Bool(tri)) if kids.len() == 2 => {
            (0..2).any(|slot| {
                scalar(egraph, kids[1 - slot]) == Some(0.0)
                    && has_pattern(
                        egraph,
                        kids[slot],
                        Pattern::Indicator(tri.flip(), false),
                        s,
                        d,
                    )
            })
        }
        (Op::Binary(cmp), Pattern::Bool(tri)) if kids.len() == 2 => {
            let (Some(a), Some(b)) = (
                position_axis(egraph, kids[0], s),
                position_axis(egraph, kids[1], s),
            ) else {
                return false;
            };
            // a and b are 0 for the row index i, 1 for the column index j.
            let made = match (cmp, a, b) {
                (BinaryOp::LessOrEqual, 1, 0) | (BinaryOp::GreaterOrEqual, 0, 1) => Tri::Lower,
                (BinaryOp::Less, 0, 1) | (BinaryOp::Greater, 1, 0) => Tri::Upper,
                _ => return false,
            };
            made == tri
        }
        (Op::Where, Pattern::Additive) if kids.len() == 3 => {
            let (x, y) = (scalar(egraph, kids[1]), scalar(egraph, kids[2]));
            let (Some(x), Some(y)) = (x, y) else {
                return false;
            };
            let large = |v: f64| v <= LARGE_NEGATIVE;
            (x == 0.0 && large(y) && has_pattern(egraph, kids[0], Pattern::Bool(Tri::Lower), s, d))
                || (large(x)
                    && y == 0.0
                    && has_pattern(egraph, kids[0], Pattern::Bool(Tri::Upper), s, d))
        }
        (Op::Binary(BinaryOp::Mul), Pattern::Additive) if kids.len() == 2 => (0..2).any(|slot| {
            scalar(egraph, kids[1 - slot]).is_some_and(|c| c <= LARGE_NEGATIVE)
                && has_pattern(
                    egraph,
                    kids[slot],
                    Pattern::Indicator(Tri::Upper, true),
                    s,
                    d,
                )
        }),
        (Op::Unsqueeze, _) if kids.len() == 2 => {
            // New axes in front of the last two keep the grid as it is.
            const_axes(egraph, kids[1], r).is_some_and(|axes| axes.iter().all(|&a| a + 2 < r))
                && has_pattern(egraph, kids[0], want, s, d)
        }
        (Op::Slice, _) if kids.len() >= 3 => slice_has(egraph, kids, want),
        _ => false,
    })
}

/// `Slice(C, starts, ends, axes, steps)` of a constant with `want`, cut
/// from the origin of its last two axes (the GPT-2 `bias[:, :, :S, :S]`):
/// the corner of a triangular constant is the same triangle.
fn slice_has(egraph: &KilnEGraph, kids: &[Id], want: Pattern) -> bool {
    let Some(c) = constant(egraph, kids[0]) else {
        return false;
    };
    let r = c.shape().len();
    if r < 2 {
        return false;
    }
    let Some(starts) = constant(egraph, kids[1]).map(Tensor::to_i64s) else {
        return false;
    };
    let axes = match kids.get(3) {
        Some(&a) if !is_absent(egraph, a) => match const_axes(egraph, a, r) {
            Some(a) => a,
            None => return false,
        },
        _ => (0..starts.len()).collect(),
    };
    if let Some(&st) = kids.get(4) {
        if !is_absent(egraph, st)
            && constant(egraph, st).is_none_or(|t| t.to_i64s().iter().any(|&x| x != 1))
        {
            return false;
        }
    }
    let mut sorted = axes.clone();
    sorted.sort_unstable();
    // The cheap checks first: the constant may have a million elements.
    sorted == [r - 2, r - 1]
        && starts.len() == 2
        && starts.iter().all(|&x| x == 0)
        && const_has(c, want)
}

impl Rule for CausalMask {
    fn name(&self) -> &'static str {
        "attention-causal"
    }

    fn description(&self) -> &'static str {
        "Attention(Q, K, V, lower-triangular mask over S x S) -> Attention(Q, K, V) {is_causal=1}"
    }

    fn roots(&self) -> Option<Vec<Disc>> {
        Some(vec![Disc::onnx("Attention")])
    }

    fn search(&self, egraph: &KilnEGraph, class: Id, out: &mut Vec<Match>) {
        for (n, op, kids) in ops(egraph, class) {
            let Op::Attention(a) = op else {
                continue;
            };
            // Past caches shift the diagonal; nonpad lengths add a mask.
            if a.is_causal || kids.len() < 4 || kids[4..].iter().any(|&c| !is_absent(egraph, c)) {
                continue;
            }
            let (Some(q), Some(k), Some(m)) = (
                ty(egraph, kids[0]),
                ty(egraph, kids[1]),
                ty(egraph, kids[3]),
            ) else {
                continue;
            };
            let seq_axis = match q.rank() {
                4 => 2,
                3 => 1,
                _ => continue,
            };
            if k.rank() != q.rank() || q.shape[seq_axis] != k.shape[seq_axis] {
                continue;
            }
            let want = if m.dtype == DType::Bool {
                Pattern::Bool(Tri::Lower)
            } else {
                Pattern::Additive
            };
            if !has_pattern(egraph, kids[3], want, &q.shape[seq_axis], MASK_DEPTH) {
                continue;
            }
            // Once the causal form is in the class there is nothing left
            // to prove (and the proof may read a large buffer).
            let causal = KilnLang::op(
                Op::Attention(AttentionAttrs {
                    is_causal: true,
                    ..*a
                }),
                kids[..3].to_vec(),
            );
            if egraph
                .lookup(causal)
                .is_some_and(|c| egraph.find(c) == egraph.find(class))
            {
                continue;
            }
            let mut b = AstBuilder::new();
            let leaves: Vec<Id> = kids.iter().map(|&c| b.class(c)).collect();
            b.node(with_children(n, &leaves));
            out.push(b.finish());
        }
    }

    fn rewrite(
        &self,
        _egraph: &mut KilnEGraph,
        _eclass: Id,
        m: &Match,
    ) -> Option<PatternAst<KilnLang>> {
        let root = node_at(&m.lhs, root_of(&m.lhs))?;
        let Some(Op::Attention(a)) = root.as_op() else {
            return None;
        };
        let mut b = AstBuilder::continuing(&m.subst);
        let mut kids = Vec::with_capacity(3);
        for &c in root.children().get(..3)? {
            kids.push(b.var(var_at(&m.lhs, c)?));
        }
        let attrs = AttentionAttrs {
            is_causal: true,
            ..*a
        };
        b.node(KilnLang::op(Op::Attention(attrs), kids));
        Some(b.into_ast())
    }
}

// ---- attention-gqa ----

/// `Attention(Q, repeat(K0), repeat(V0), ...)` -> `Attention(Q, K0, V0, ...)`.
struct UnrepeatKv;

/// The repeat of a class of type `[B, H, S, D]` from a `K0` of type
/// `[B, KV, S, D]`: the chain of nodes from the outside in, and `K0`.
fn repeats(egraph: &KilnEGraph, class: Id) -> Vec<(Vec<&KilnLang>, Id)> {
    let mut out = Vec::new();
    let Some(x) = ty(egraph, class) else {
        return out;
    };
    if x.rank() != 4 {
        return out;
    }
    // Same batch, sequence and head size as the repeated value.
    let same_outer = |k0: &TensorType| {
        k0.rank() == 4 && k0.shape[0] == x.shape[0] && k0.shape[2..] == x.shape[2..]
    };
    for (n, op, kids) in ops(egraph, class) {
        match op {
            // Multi-query: one head broadcast to all.
            Op::Expand | Op::Tile
                if kids.len() == 2
                    && ty(egraph, kids[0])
                        .is_some_and(|k0| same_outer(k0) && k0.shape[1] == Dim::Fixed(1)) =>
            {
                out.push((vec![n], kids[0]));
            }
            // repeat_kv: [B, KV, S, D] -> [B, KV, 1, S, D] -> [B, KV, n, S, D] -> [B, KV*n, S, D].
            Op::Reshape { .. } if kids.len() == 2 => {
                for (e, eop, ek) in ops(egraph, kids[0]) {
                    if !matches!(eop, Op::Expand | Op::Tile) || ek.len() != 2 {
                        continue;
                    }
                    let Some(et) = ty(egraph, kids[0]) else {
                        continue;
                    };
                    for (u, uop, uk) in ops(egraph, ek[0]) {
                        if !matches!(uop, Op::Unsqueeze) || uk.len() != 2 {
                            continue;
                        }
                        if const_axes(egraph, uk[1], 5) != Some(vec![2]) {
                            continue;
                        }
                        let Some(k0) = ty(egraph, uk[0]) else {
                            continue;
                        };
                        if !same_outer(k0) || et.rank() != 5 {
                            continue;
                        }
                        let (Some(kv), Some(rep), Some(h)) =
                            (k0.shape[1].fixed(), et.shape[2].fixed(), x.shape[1].fixed())
                        else {
                            continue;
                        };
                        let dims_kept = et.shape[0] == k0.shape[0]
                            && et.shape[1] == k0.shape[1]
                            && et.shape[3..] == k0.shape[2..];
                        if dims_kept && kv * rep == h {
                            out.push((vec![n, e, u], uk[0]));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Adds the chain of a repeat to the builder: each node over the next one
/// in its first slot, leaves elsewhere.
fn repeat_ast(b: &mut AstBuilder, chain: &[&KilnLang], k0: Id) -> Id {
    let mut inner = b.class(k0);
    for n in chain.iter().rev() {
        let mut kids = vec![inner];
        kids.extend(n.children()[1..].iter().map(|&c| b.class(c)));
        inner = b.node(with_children(n, &kids));
    }
    inner
}

/// The leaf under a chain built by [`repeat_ast`].
fn repeat_source(lhs: &PatternAst<KilnLang>, mut i: Id) -> Option<Var> {
    loop {
        match &lhs[i] {
            ENodeOrVar::Var(v) => return Some(*v),
            ENodeOrVar::ENode(n) => i = *n.children().first()?,
        }
    }
}

impl Rule for UnrepeatKv {
    fn name(&self) -> &'static str {
        "attention-gqa"
    }

    fn description(&self) -> &'static str {
        "Attention(Q, repeat_kv(K), repeat_kv(V), ...) -> Attention(Q, K, V, ...) (grouped-/multi-query)"
    }

    fn roots(&self) -> Option<Vec<Disc>> {
        Some(vec![Disc::onnx("Attention")])
    }

    fn search(&self, egraph: &KilnEGraph, class: Id, out: &mut Vec<Match>) {
        for (n, op, kids) in ops(egraph, class) {
            let Op::Attention(a) = op else {
                continue;
            };
            // Only 4-D inputs: 3-D ones name their heads in attributes.
            if kids.len() < 3 || a.kv_num_heads.is_some() {
                continue;
            }
            let Some(q) = ty(egraph, kids[0]) else {
                continue;
            };
            if q.rank() != 4 {
                continue;
            }
            for (kc, k0) in repeats(egraph, kids[1]) {
                for (vc, v0) in repeats(egraph, kids[2]) {
                    let (Some(kt), Some(vt)) = (ty(egraph, k0), ty(egraph, v0)) else {
                        continue;
                    };
                    // K and V must keep one head count.
                    if kt.shape[1] != vt.shape[1] {
                        continue;
                    }
                    let mut b = AstBuilder::new();
                    let qv = b.class(kids[0]);
                    let kv = repeat_ast(&mut b, &kc, k0);
                    let vv = repeat_ast(&mut b, &vc, v0);
                    let mut leaves = vec![qv, kv, vv];
                    leaves.extend(kids[3..].iter().map(|&c| b.class(c)));
                    b.node(with_children(n, &leaves));
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
        let root = node_at(&m.lhs, root_of(&m.lhs))?;
        let kids = root.children();
        let mut b = AstBuilder::continuing(&m.subst);
        let mut new = Vec::with_capacity(kids.len());
        for (slot, &c) in kids.iter().enumerate() {
            new.push(match slot {
                1 | 2 => b.var(repeat_source(&m.lhs, c)?),
                _ => b.var(var_at(&m.lhs, c)?),
            });
        }
        b.node(with_children(root, &new));
        Some(b.into_ast())
    }
}
