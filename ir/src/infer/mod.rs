//! Shape and dtype inference.
//!
//! [`infer_types`] walks a graph in topological order and gives every value
//! a [`TensorType`]; [`infer_node`] infers one node's outputs from the stored
//! types of its inputs. Each op has one rule, grouped by topic in the
//! submodules; the dispatcher matches every [`Op`] variant without a
//! wildcard, so a new op does not compile until it has a rule (and an
//! [`arity`] entry).
//!
//! Rules check input counts, dtypes, ranks and dims and fail with
//! [`IrError::Node`] naming the node, the op and the offending input by slot
//! and value name.
//!
//! # Symbolic dims
//!
//! Dims are fixed sizes or polynomials over named symbols (see
//! [`crate::dim`]); they flow through every rule: Concat adds (`past+seq`),
//! Reshape divides out `-1` (`batch*seq*768 / 768 = batch*seq`), Flatten
//! multiplies, Slice subtracts. A dim inference cannot derive becomes a fresh
//! symbol `unk__N`, numbered deterministically after the largest `unk__N`
//! already in the graph. The rank is always derived; where it cannot be
//! (a Reshape whose shape input has an unknown length), inference fails
//! naming the node.
//!
//! # Broadcasting and equal dims with symbols
//!
//! Two dims broadcast when equal or when one is 1. Two different fixed
//! sizes are an error. A fixed size other than 1 against a symbol gives the
//! fixed size: the symbol must be 1 or that size at run time. Two different
//! symbolic dims cannot be told apart statically; the result is the one that
//! is not a fresh `unk__N`, or else the left operand's, and the check is left
//! to run time. Dims that must be equal (MatMul's inner dims, Concat's other
//! axes) follow the same policy: an error only when both are fixed and
//! differ, and otherwise the fixed, then the named, then the left dim wins.
//! Symbolic Slice bounds are assumed to lie within the dim, and a Squeeze
//! without axes keeps symbolic dims (they are assumed not to be 1).
//!
//! # Value propagation
//!
//! The contents of small integer values (shape vectors and scalars) are
//! tracked in a side table, so that shapes computed at run time give exact
//! result shapes; see [`shape_value`].
//!
//! # Declared types
//!
//! A value's existing type (declared by the model file) is checked against
//! the inferred one: a different dtype, a different rank or two different
//! fixed sizes is an error. Otherwise the more precise dim is kept per axis:
//! a fixed size over a symbol, a named symbol over a fresh `unk__N`, and the
//! inferred symbol when both are named, because it states how the dim
//! relates to the graph inputs (`past+seq` rather than an exporter's
//! `present_dim_2`).

mod dims;
mod elementwise;
mod linalg;
mod movement;
mod nn;
mod quant;
mod reduce;
pub mod shape_value;

use crate::dim::Dim;
use crate::dtype::DType;
use crate::error::{IrError, Result};
use crate::graph::{Graph, Node, NodeId, ValueId};
use crate::op::Op;
use crate::types::TensorType;
use shape_value::Elems;
use std::collections::HashMap;

/// Prefix of the symbols inference makes up for dims it cannot derive.
pub const FRESH_PREFIX: &str = "unk__";

/// Stands for "no upper bound" in [`arity`].
pub const UNBOUNDED: usize = usize::MAX;

/// Allowed input and output counts of an op: `(min_in, max_in, min_out,
/// max_out)`, as in the newest ONNX opset. Slots below `min_in` (`min_out`)
/// must be present; later ones are optional. [`UNBOUNDED`] means no limit.
pub fn arity(op: &Op) -> (usize, usize, usize, usize) {
    match op {
        Op::MatMul => (2, 2, 1, 1),
        Op::Gemm(_) => (2, 3, 1, 1),
        Op::MatMulInteger => (2, 4, 1, 1),
        Op::QLinearMatMul => (8, 8, 1, 1),
        Op::Unary(_) => (1, 1, 1, 1),
        Op::Binary(_) => (2, 2, 1, 1),
        Op::Variadic(_) => (1, UNBOUNDED, 1, 1),
        Op::Mod { .. } => (2, 2, 1, 1),
        Op::Clip => (1, 3, 1, 1),
        Op::Where => (3, 3, 1, 1),
        Op::Gelu { .. } | Op::LeakyRelu { .. } | Op::Elu { .. } | Op::HardSigmoid { .. } | Op::IsInf { .. } => {
            (1, 1, 1, 1)
        }
        Op::Softmax { .. } | Op::LogSoftmax { .. } => (1, 1, 1, 1),
        Op::LayerNormalization { .. } => (2, 3, 1, 3),
        Op::RMSNormalization { .. } => (2, 2, 1, 1),
        Op::RotaryEmbedding { .. } => (3, 4, 1, 1),
        Op::Attention(_) => (3, 7, 1, 4),
        Op::LinearAttention(_) => (3, 6, 1, 2),
        Op::Reduce { .. } => (1, 2, 1, 1),
        Op::ArgReduce { .. } => (1, 1, 1, 1),
        Op::TopK { .. } => (2, 2, 2, 2),
        Op::CumSum { .. } => (2, 2, 1, 1),
        Op::Transpose { .. } => (1, 1, 1, 1),
        Op::Reshape { .. } => (2, 2, 1, 1),
        Op::Flatten { .. } => (1, 1, 1, 1),
        Op::Squeeze => (1, 2, 1, 1),
        Op::Unsqueeze => (2, 2, 1, 1),
        Op::Concat { .. } => (1, UNBOUNDED, 1, 1),
        Op::Split { .. } => (1, 2, 1, UNBOUNDED),
        Op::Slice => (3, 5, 1, 1),
        Op::Gather { .. } | Op::GatherElements { .. } | Op::GatherND { .. } => (2, 2, 1, 1),
        Op::ScatterND { .. } => (3, 3, 1, 1),
        Op::Expand | Op::Tile => (2, 2, 1, 1),
        Op::Pad { .. } => (2, 4, 1, 1),
        Op::Cast { .. } => (1, 1, 1, 1),
        Op::CastLike { .. } => (2, 2, 1, 1),
        Op::Shape { .. } | Op::Size => (1, 1, 1, 1),
        Op::ConstantOfShape { .. } => (1, 1, 1, 1),
        Op::Range => (3, 3, 1, 1),
        Op::Trilu { .. } => (1, 2, 1, 1),
        Op::Constant { .. } => (0, 0, 1, 1),
        Op::Identity => (1, 1, 1, 1),
        Op::Dropout { .. } => (1, 3, 1, 2),
        Op::OneHot { .. } => (3, 3, 1, 1),
        Op::NonZero => (1, 1, 1, 1),
        Op::SoftmaxCrossEntropyLoss { .. } => (2, 3, 1, 2),
        Op::NegativeLogLikelihoodLoss { .. } => (2, 3, 1, 1),
        Op::CrossEntropy { .. } => (2, 3, 1, 2),
        Op::LinearCrossEntropy { .. } => (3, 5, 1, 1),
        Op::QuantizeLinear { .. } | Op::DequantizeLinear { .. } => (2, 3, 1, 1),
        Op::DynamicQuantizeLinear => (1, 1, 3, 3),
    }
}

/// Gives every value of the graph a type, in topological order.
///
/// Graph inputs must be typed; initializers are typed by their data. A
/// value that already has a type is checked against the inferred one and
/// the more precise of the two is kept (see the module docs).
pub fn infer_types(graph: &mut Graph) -> Result<()> {
    for &v in graph.inputs() {
        let val = graph.value(v);
        if val.ty.is_none() && val.initializer.is_none() {
            return Err(IrError::value(&val.name, "graph input has no type"));
        }
    }
    let initializer_types: Vec<(ValueId, TensorType)> =
        graph.initializers().map(|(v, t)| (v, TensorType::fixed(t.dtype(), t.shape()))).collect();
    for (v, ty) in initializer_types {
        let val = graph.value_mut(v);
        match &val.ty {
            Some(declared) if !compatible(declared, &ty) => {
                return Err(IrError::value(
                    &val.name,
                    format!("initializer data is {ty} but the value is declared {declared}"),
                ));
            }
            _ => val.ty = Some(ty),
        }
    }
    let mut state = State::new(graph);
    for id in graph.topo_order()? {
        let inferred = state.infer(graph, id)?;
        let node = graph.node(id);
        let mut updates = Vec::new();
        for (slot, ty) in inferred.into_iter().enumerate() {
            let (Some(v), Some(ty)) = (node.output(slot), ty) else { continue };
            let val = graph.value(v);
            let merged = match &val.ty {
                None => ty,
                Some(declared) => merge(declared, &ty).ok_or_else(|| {
                    IrError::node(
                        &node.name,
                        node.op.name(),
                        format!("output {slot} `{}` is declared {declared} but inferred {ty}", val.name),
                    )
                })?,
            };
            updates.push((v, merged));
        }
        for (v, ty) in updates {
            graph.value_mut(v).ty = Some(ty);
        }
    }
    Ok(())
}

/// Infers the output types of one node from the stored types of its inputs
/// (one entry per output slot, `None` for an omitted optional output). The
/// contents of small integer inputs are derived by walking back through
/// their producers, so the result matches what [`infer_types`] computes.
pub fn infer_node(graph: &Graph, node: NodeId) -> Result<Vec<Option<TensorType>>> {
    State::new(graph).infer(graph, node)
}

/// True when two types can describe the same tensor: same dtype and rank,
/// and no axis where both sizes are fixed and differ.
pub fn compatible(a: &TensorType, b: &TensorType) -> bool {
    a.dtype == b.dtype && a.rank() == b.rank() && a.shape.iter().zip(&b.shape).all(|(x, y)| !dims::conflict(x, y))
}

/// Merges a declared type with an inferred one, keeping the more precise dim
/// per axis; `None` when they conflict.
fn merge(declared: &TensorType, inferred: &TensorType) -> Option<TensorType> {
    if !compatible(declared, inferred) {
        return None;
    }
    let shape = declared
        .shape
        .iter()
        .zip(&inferred.shape)
        .map(|(d, i)| match (d, i) {
            (Dim::Fixed(_), _) => d.clone(),
            (_, Dim::Fixed(_)) => i.clone(),
            _ if dims::is_fresh(i) => d.clone(),
            _ => i.clone(),
        })
        .collect();
    Some(TensorType::new(declared.dtype, shape))
}

/// Inference state shared by the nodes of one run: the next fresh symbol
/// and the memoized contents of small values.
pub(crate) struct State {
    next_fresh: u64,
    contents: HashMap<ValueId, Option<Elems>>,
}

impl State {
    /// Fresh symbols start after the largest `unk__N` the graph mentions,
    /// so re-running inference never reuses a name with another meaning.
    pub(crate) fn new(graph: &Graph) -> State {
        let mut next_fresh = 0;
        for v in graph.value_ids() {
            if let Some(ty) = &graph.value(v).ty {
                for d in &ty.shape {
                    if let Dim::Sym(p) = d {
                        for s in p.symbols() {
                            if let Some(n) = s.strip_prefix(FRESH_PREFIX).and_then(|n| n.parse::<u64>().ok()) {
                                next_fresh = next_fresh.max(n + 1);
                            }
                        }
                    }
                }
            }
        }
        State { next_fresh, contents: HashMap::new() }
    }

    /// Infers one node: arity, then the op's rule; one type per output slot.
    pub(crate) fn infer(&mut self, graph: &Graph, id: NodeId) -> Result<Vec<Option<TensorType>>> {
        let node = graph.node(id);
        check_arity(node)?;
        let mut cx = Ctx { graph, node, state: self };
        let types = rule(&mut cx)?;
        if types.len() < node.outputs.len() {
            return Err(cx.err(format!("has {} outputs but the op defines only {}", node.outputs.len(), types.len())));
        }
        Ok(node.outputs.iter().zip(types).map(|(o, t)| o.map(|_| t)).collect())
    }

    fn fresh(&mut self) -> Dim {
        let d = Dim::sym(&format!("{FRESH_PREFIX}{}", self.next_fresh));
        self.next_fresh += 1;
        d
    }

    /// The known contents of a small value, computed from its producers on
    /// first use. Walks with an explicit stack: chains can be long.
    pub(crate) fn contents(&mut self, graph: &Graph, v: ValueId) -> Option<Elems> {
        let mut stack = vec![v];
        while let Some(&top) = stack.last() {
            if self.contents.contains_key(&top) {
                stack.pop();
                continue;
            }
            let val = graph.value(top);
            let tracked = val.ty.as_ref().is_some_and(shape_value::is_tracked_type);
            let computed = if let Some(t) = &val.initializer {
                Some(shape_value::from_tensor(t))
            } else if !tracked {
                Some(None)
            } else {
                match val.producer() {
                    None => Some(None),
                    Some((producer, _)) => {
                        let node = graph.node(producer);
                        let pending: Vec<ValueId> =
                            node.inputs.iter().flatten().copied().filter(|i| !self.contents.contains_key(i)).collect();
                        // On a cyclic graph (which only `infer_node` can be
                        // asked about) a value on the stack is unknown.
                        let cyclic: Vec<ValueId> = pending.iter().copied().filter(|p| stack.contains(p)).collect();
                        for c in &cyclic {
                            self.contents.insert(*c, None);
                        }
                        let pending: Vec<ValueId> = pending.into_iter().filter(|p| !cyclic.contains(p)).collect();
                        if pending.is_empty() {
                            let ins: Vec<Option<Elems>> =
                                node.inputs.iter().map(|i| i.and_then(|i| self.contents[&i].clone())).collect();
                            let outs = shape_value::propagate(graph, node, &ins);
                            for (slot, out) in node.outputs.iter().enumerate() {
                                if let Some(o) = out {
                                    let e = outs.get(slot).cloned().flatten();
                                    let checked = check_contents(graph.value(*o).ty.as_ref(), e);
                                    self.contents.insert(*o, checked);
                                }
                            }
                            None
                        } else {
                            stack.extend(pending);
                            continue;
                        }
                    }
                }
            };
            if let Some(c) = computed {
                let c = check_contents(val.ty.as_ref(), c);
                self.contents.insert(top, c);
            }
            // A node's outputs were all inserted above, including `top`.
            stack.pop();
        }
        self.contents.get(&v).cloned().flatten()
    }
}

/// Keeps contents only when they agree with the value's type; a small value
/// whose contents are unknown gets one unknown element per entry, so its
/// length still counts (a Concat of a known and an unknown part is partly
/// known).
fn check_contents(ty: Option<&TensorType>, e: Option<Elems>) -> Option<Elems> {
    let ty = ty.filter(|t| shape_value::is_tracked_type(t))?;
    let len = ty.fixed_len()?;
    match e {
        Some(e) if e.len() == len => Some(e),
        _ => Some(vec![None; len]),
    }
}

/// Checks the node's input and output counts against [`arity`], and that
/// its required slots are present.
pub(crate) fn check_arity(node: &Node) -> Result<()> {
    let (min_in, max_in, min_out, max_out) = arity(&node.op);
    let err = |m: String| IrError::node(&node.name, node.op.name(), m);
    let bound = |n: usize| if n == UNBOUNDED { "any number of".to_string() } else { n.to_string() };
    if node.inputs.len() < min_in || node.inputs.len() > max_in {
        let want = if min_in == max_in { min_in.to_string() } else { format!("{min_in} to {}", bound(max_in)) };
        return Err(err(format!("has {} inputs; the op takes {want}", node.inputs.len())));
    }
    if node.outputs.len() < min_out || node.outputs.len() > max_out {
        let want = if min_out == max_out { min_out.to_string() } else { format!("{min_out} to {}", bound(max_out)) };
        return Err(err(format!("has {} outputs; the op produces {want}", node.outputs.len())));
    }
    if let Some(slot) = (0..min_in).find(|&s| node.input(s).is_none()) {
        return Err(err(format!("required input {slot} is missing")));
    }
    if let Some(slot) = (0..min_out).find(|&s| node.output(s).is_none()) {
        return Err(err(format!("required output {slot} is missing")));
    }
    Ok(())
}

/// One node being inferred: its graph, the node, and the shared state.
pub(crate) struct Ctx<'a> {
    graph: &'a Graph,
    node: &'a Node,
    state: &'a mut State,
}

impl<'a> Ctx<'a> {
    /// An error at this node.
    pub(crate) fn err(&self, message: impl Into<String>) -> IrError {
        IrError::node(&self.node.name, self.node.op.name(), message)
    }

    /// Number of input slots.
    pub(crate) fn num_inputs(&self) -> usize {
        self.node.inputs.len()
    }

    /// Number of output slots.
    pub(crate) fn num_outputs(&self) -> usize {
        self.node.outputs.len()
    }

    /// True when input `slot` is given.
    pub(crate) fn has(&self, slot: usize) -> bool {
        self.node.input(slot).is_some()
    }

    /// "input 1 `k`", for messages.
    pub(crate) fn desc(&self, slot: usize) -> String {
        match self.node.input(slot) {
            Some(v) => format!("input {slot} `{}`", self.graph.value(v).name),
            None => format!("input {slot}"),
        }
    }

    /// The type of a required input.
    pub(crate) fn ty(&self, slot: usize) -> Result<&'a TensorType> {
        self.opt_ty(slot)?.ok_or_else(|| self.err(format!("required input {slot} is missing")))
    }

    /// The type of an optional input; an error when present but untyped.
    pub(crate) fn opt_ty(&self, slot: usize) -> Result<Option<&'a TensorType>> {
        let graph: &'a Graph = self.graph;
        match self.node.input(slot) {
            None => Ok(None),
            Some(v) => match &graph.value(v).ty {
                Some(t) => Ok(Some(t)),
                None => Err(self.err(format!("{} has no type", self.desc(slot)))),
            },
        }
    }

    /// Known contents of a small input (`None` when absent or untracked).
    pub(crate) fn contents(&mut self, slot: usize) -> Option<Elems> {
        let v = self.node.input(slot)?;
        self.state.contents(self.graph, v)
    }

    /// A fresh `unk__N` dim.
    pub(crate) fn fresh(&mut self) -> Dim {
        self.state.fresh()
    }

    /// `n` fresh dims.
    pub(crate) fn fresh_dims(&mut self, n: usize) -> Vec<Dim> {
        (0..n).map(|_| self.fresh()).collect()
    }

    /// The dtype of a required input, checked by `ok`; `what` describes the
    /// accepted types ("a float type").
    pub(crate) fn dtype_in(&self, slot: usize, ok: impl Fn(DType) -> bool, what: &str) -> Result<DType> {
        let t = self.ty(slot)?;
        if ok(t.dtype) {
            Ok(t.dtype)
        } else {
            Err(self.err(format!("{} has type {t}; expected {what}", self.desc(slot))))
        }
    }

    /// Input `b` must have the dtype of input `a`.
    pub(crate) fn same_dtype(&self, a: usize, b: usize) -> Result<()> {
        let (ta, tb) = (self.ty(a)?, self.ty(b)?);
        if ta.dtype == tb.dtype {
            Ok(())
        } else {
            Err(self.err(format!(
                "{} has dtype {} but {} has dtype {}",
                self.desc(b),
                tb.dtype,
                self.desc(a),
                ta.dtype
            )))
        }
    }

    /// Input `slot` must have exactly `rank` dims.
    pub(crate) fn rank_is(&self, slot: usize, rank: usize) -> Result<&'a TensorType> {
        let t = self.ty(slot)?;
        if t.rank() == rank {
            Ok(t)
        } else {
            Err(self.err(format!("{} has shape {t}; expected rank {rank}", self.desc(slot))))
        }
    }

    /// Input `slot` must have at least `rank` dims.
    pub(crate) fn rank_at_least(&self, slot: usize, rank: usize) -> Result<&'a TensorType> {
        let t = self.ty(slot)?;
        if t.rank() >= rank {
            Ok(t)
        } else {
            Err(self.err(format!("{} has shape {t}; expected rank at least {rank}", self.desc(slot))))
        }
    }

    /// Normalizes an axis attribute into `[0, rank)`.
    pub(crate) fn axis(&self, axis: i64, rank: usize) -> Result<usize> {
        normalize_axis(axis, rank).ok_or_else(|| {
            self.err(format!(
                "axis {axis} is out of range for rank {rank} (accepted: {} to {})",
                -(rank as i64),
                rank as i64 - 1
            ))
        })
    }

    /// Normalizes a list of axes into `[0, rank)`, rejecting duplicates.
    pub(crate) fn axes(&self, axes: &[i64], rank: usize) -> Result<Vec<usize>> {
        let mut out = Vec::with_capacity(axes.len());
        for &a in axes {
            let n = self.axis(a, rank)?;
            if out.contains(&n) {
                return Err(self.err(format!("axis {a} is given more than once in {axes:?}")));
            }
            out.push(n);
        }
        Ok(out)
    }

    /// A 0-D or one-element integer input read as a single element of
    /// its contents; `Ok(None)` when its value is unknown.
    pub(crate) fn scalar_input(&mut self, slot: usize, what: &str) -> Result<Option<crate::dim::Poly>> {
        let t = self.ty(slot)?;
        if t.rank() > 1 || t.fixed_len().is_some_and(|n| n != 1) {
            return Err(
                self.err(format!("{} ({what}) has shape {t}; expected a scalar or one element", self.desc(slot)))
            );
        }
        Ok(self.contents(slot).and_then(|e| e.into_iter().next().flatten()))
    }

    /// A 1-D int64 (or, where `allow_i32`, int32) input of integers, e.g.
    /// a shape or axes: returns its length (when known) and its contents.
    pub(crate) fn int_vector(
        &mut self,
        slot: usize,
        what: &str,
        allow_i32: bool,
    ) -> Result<(Option<usize>, Option<Elems>)> {
        let t = self.ty(slot)?;
        let ok = t.dtype == DType::I64 || (allow_i32 && t.dtype == DType::I32);
        if !ok {
            let want = if allow_i32 { "i32 or i64" } else { "i64" };
            return Err(self.err(format!("{} ({what}) has type {t}; expected a 1-D {want} tensor", self.desc(slot))));
        }
        if t.rank() != 1 {
            return Err(self.err(format!("{} ({what}) has shape {t}; expected a 1-D tensor", self.desc(slot))));
        }
        let contents = self.contents(slot);
        let len = t.shape[0].fixed().map(|n| n as usize).or_else(|| contents.as_ref().map(|c| c.len()));
        Ok((len, contents))
    }

    /// Broadcasts the shapes of the given input slots (numpy rules,
    /// symbolic policy in the module docs), naming the inputs on failure.
    pub(crate) fn broadcast(&self, slots: &[usize]) -> Result<Vec<Dim>> {
        let mut out: Vec<Dim> = Vec::new();
        let mut first = None;
        for &slot in slots {
            let t = self.ty(slot)?;
            let shape = &t.shape;
            let rank = out.len().max(shape.len());
            let mut next = Vec::with_capacity(rank);
            for i in 0..rank {
                let a = (i + out.len()).checked_sub(rank).map(|j| &out[j]);
                let b = (i + shape.len()).checked_sub(rank).map(|j| &shape[j]);
                let d = match (a, b) {
                    (Some(a), Some(b)) => dims::broadcast(a, b).ok_or_else(|| {
                        let prev = first.map(|s: usize| self.desc(s)).unwrap_or_default();
                        self.err(format!(
                            "{} has shape {t}, which does not broadcast with {} (broadcast so far {}): dim {} vs {}",
                            self.desc(slot),
                            prev,
                            dims::fmt_shape(&out),
                            b,
                            a
                        ))
                    })?,
                    (Some(a), None) => a.clone(),
                    (None, Some(b)) => b.clone(),
                    (None, None) => unreachable!("index below the larger rank"),
                };
                next.push(d);
            }
            out = next;
            first.get_or_insert(slot);
        }
        Ok(out)
    }
}

/// `axis` in `[-rank, rank)` as an index into `[0, rank)`.
pub(crate) fn normalize_axis(axis: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    (0..r).contains(&a).then_some(a as usize)
}

/// The rule of one node: the type of every output slot the op defines (at
/// least as many as the node has).
fn rule(cx: &mut Ctx) -> Result<Vec<TensorType>> {
    let node: &Node = cx.node;
    match &node.op {
        Op::MatMul => linalg::matmul(cx),
        Op::Gemm(attrs) => linalg::gemm(cx, attrs),
        Op::MatMulInteger => linalg::matmul_integer(cx),
        Op::QLinearMatMul => linalg::qlinear_matmul(cx),
        Op::Unary(u) => elementwise::unary(cx, *u),
        Op::Binary(b) => elementwise::binary(cx, *b),
        Op::Variadic(v) => elementwise::variadic(cx, *v),
        Op::Mod { fmod } => elementwise::modulo(cx, *fmod),
        Op::Clip => elementwise::clip(cx),
        Op::Where => elementwise::where_(cx),
        Op::Gelu { .. } | Op::LeakyRelu { .. } | Op::Elu { .. } | Op::HardSigmoid { .. } => {
            elementwise::float_activation(cx)
        }
        Op::IsInf { .. } => elementwise::is_inf(cx),
        Op::Softmax { axis } | Op::LogSoftmax { axis } => nn::softmax(cx, *axis),
        Op::LayerNormalization { axis, stash_type, .. } => nn::layer_norm(cx, *axis, *stash_type),
        Op::RMSNormalization { axis, .. } => nn::rms_norm(cx, *axis),
        Op::RotaryEmbedding { num_heads, rotary_embedding_dim, .. } => {
            nn::rotary_embedding(cx, *num_heads, *rotary_embedding_dim)
        }
        Op::Attention(attrs) => nn::attention(cx, attrs),
        Op::LinearAttention(attrs) => nn::linear_attention(cx, attrs),
        Op::Reduce { axes, keepdims, noop_with_empty_axes, kind } => {
            reduce::reduce(cx, *kind, axes.as_deref(), *keepdims, *noop_with_empty_axes)
        }
        Op::ArgReduce { axis, keepdims, .. } => reduce::arg_reduce(cx, *axis, *keepdims),
        Op::TopK { axis, .. } => reduce::top_k(cx, *axis),
        Op::CumSum { .. } => reduce::cum_sum(cx),
        Op::Transpose { perm } => movement::transpose(cx, perm.as_deref()),
        Op::Reshape { allowzero } => movement::reshape(cx, *allowzero),
        Op::Flatten { axis } => movement::flatten(cx, *axis),
        Op::Squeeze => movement::squeeze(cx),
        Op::Unsqueeze => movement::unsqueeze(cx),
        Op::Concat { axis } => movement::concat(cx, *axis),
        Op::Split { axis, num_outputs } => movement::split(cx, *axis, *num_outputs),
        Op::Slice => movement::slice(cx),
        Op::Gather { axis } => movement::gather(cx, *axis),
        Op::GatherElements { axis } => movement::gather_elements(cx, *axis),
        Op::GatherND { batch_dims } => movement::gather_nd(cx, *batch_dims),
        Op::ScatterND { reduction } => movement::scatter_nd(cx, reduction),
        Op::Expand => movement::expand(cx),
        Op::Tile => movement::tile(cx),
        Op::Pad { mode } => movement::pad(cx, mode),
        Op::Cast { to, .. } => movement::cast(cx, *to),
        Op::CastLike { .. } => movement::cast_like(cx),
        Op::Shape { start, end } => movement::shape(cx, *start, *end),
        Op::Size => movement::size(cx),
        Op::ConstantOfShape { value } => movement::constant_of_shape(cx, value.as_ref()),
        Op::Range => movement::range(cx),
        Op::Trilu { .. } => movement::trilu(cx),
        Op::Constant { value } => Ok(vec![TensorType::fixed(value.dtype(), value.shape())]),
        Op::Identity => Ok(vec![cx.ty(0)?.clone()]),
        Op::Dropout { .. } => movement::dropout(cx),
        Op::OneHot { axis } => movement::one_hot(cx, *axis),
        Op::NonZero => movement::non_zero(cx),
        Op::SoftmaxCrossEntropyLoss { reduction, .. } => nn::loss(cx, *reduction, true),
        Op::NegativeLogLikelihoodLoss { reduction, .. } => nn::loss(cx, *reduction, false),
        Op::CrossEntropy { reduction, .. } => nn::loss(cx, *reduction, true),
        Op::LinearCrossEntropy { reduction, transpose_weight, .. } => {
            nn::linear_cross_entropy(cx, *reduction, *transpose_weight)
        }
        Op::QuantizeLinear { axis, block_size, output_dtype, .. } => {
            quant::quantize_linear(cx, *axis, *block_size, *output_dtype)
        }
        Op::DequantizeLinear { axis, block_size, output_dtype } => {
            quant::dequantize_linear(cx, *axis, *block_size, *output_dtype)
        }
        Op::DynamicQuantizeLinear => quant::dynamic_quantize_linear(cx),
    }
}
