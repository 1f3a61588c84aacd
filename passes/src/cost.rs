//! The cost model: FLOPs, bytes moved and memory per node, weighted per
//! target.
//!
//! A node's [`NodeCost`] is computed from the static types of its inputs
//! and outputs: floating-point operations (a matmul is `2·M·N·K`, an
//! elementwise op a small per-element count, data movement none), bytes
//! read plus bytes written (views such as Reshape move nothing), and the
//! bytes it allocates. Symbolic dims are evaluated with the model's
//! [`CostModel::bindings`]; a symbol without a binding counts as
//! [`DEFAULT_SYMBOL_SIZE`].
//!
//! A [`Target`] turns a node cost into estimated nanoseconds:
//!
//! ```text
//! cost = ns_per_node + flops·ns_per_flop + bytes·ns_per_byte + allocated·ns_per_allocated_byte
//! ```
//!
//! - [`Target::CPU`]: one core, 50 GFLOP/s with SIMD (0.02 ns per FLOP),
//!   10 GB/s of memory bandwidth (0.1 ns per byte), 1 µs of dispatch per
//!   node, and a memory-pressure term of 0.01 ns per allocated byte (a tenth
//!   of moving it), which breaks ties towards graphs with less live memory.
//! - [`Target::GPU`]: 50 TFLOP/s, 2 TB/s, 5 µs of launch per node (kernel
//!   launches dominate small ops, which is what makes fusion pay), and
//!   0.0001 ns per allocated byte.
//!
//! Leaves cost nothing (inputs and weights exist already); a constant costs
//! its bytes once, which is always less than any node that computes it, so
//! folding wins.
//!
//! Peak live memory is a property of a whole schedule, not of one node;
//! [`CostModel::graph_cost`] measures it on a graph by running the nodes in
//! topological order and freeing each value after its last reader. Weights
//! are reported apart, since every schedule holds all of them.

use crate::analysis::{ClassType, KilnEGraph};
use crate::lang::KilnLang;
use egg::Id;
use kiln_ir::dim::Dim;
use kiln_ir::graph::Graph;
use kiln_ir::op::{BinaryOp, Op, ReduceKind, UnaryOp};
use kiln_ir::types::TensorType;
use std::collections::{BTreeMap, HashMap};

/// What an unbound symbolic dim counts as.
pub const DEFAULT_SYMBOL_SIZE: i64 = 128;

/// Weights that turn FLOPs, bytes and allocation into nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Target {
    /// Name for reports.
    pub name: &'static str,
    /// Fixed cost of running one node (dispatch or kernel launch).
    pub ns_per_node: f64,
    /// Time per floating-point operation.
    pub ns_per_flop: f64,
    /// Time per byte read or written.
    pub ns_per_byte: f64,
    /// Penalty per byte a node allocates.
    pub ns_per_allocated_byte: f64,
}

impl Target {
    /// One CPU core (see the module docs for the numbers).
    pub const CPU: Target = Target {
        name: "cpu",
        ns_per_node: 1000.0,
        ns_per_flop: 0.02,
        ns_per_byte: 0.1,
        ns_per_allocated_byte: 0.01,
    };

    /// A data-center GPU (see the module docs for the numbers).
    pub const GPU: Target = Target {
        name: "gpu",
        ns_per_node: 5000.0,
        ns_per_flop: 0.00002,
        ns_per_byte: 0.0005,
        ns_per_allocated_byte: 0.0001,
    };
}

/// The work of one node.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NodeCost {
    /// Floating-point (or integer arithmetic) operations.
    pub flops: f64,
    /// Bytes read and written.
    pub bytes: f64,
    /// Bytes of new buffers (outputs that are not views).
    pub allocated: f64,
}

/// Totals over a graph.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GraphCost {
    /// Number of nodes.
    pub nodes: usize,
    /// Sum of node FLOPs.
    pub flops: f64,
    /// Sum of bytes moved.
    pub bytes: f64,
    /// Peak bytes of live activations (graph inputs and node outputs) over
    /// a topological schedule that frees values after their last reader.
    pub peak_bytes: f64,
    /// Bytes of initializers.
    pub weight_bytes: f64,
    /// The target's estimate of the total, in nanoseconds.
    pub time_ns: f64,
}

/// A target plus the sizes of symbolic dims.
#[derive(Clone, Debug)]
pub struct CostModel {
    /// The weights.
    pub target: Target,
    /// Sizes of named symbols (`batch`, `seq`).
    pub bindings: BTreeMap<String, i64>,
}

impl Default for CostModel {
    fn default() -> CostModel {
        CostModel::new(Target::CPU)
    }
}

/// Ops that only reinterpret their input's buffer.
fn is_view(op: &Op) -> bool {
    matches!(
        op,
        Op::Reshape { .. } | Op::Flatten { .. } | Op::Squeeze | Op::Unsqueeze | Op::Identity
    )
}

/// Per-element operation counts of elementwise ops: 1 for simple
/// arithmetic, 4 for division, 8 for transcendental functions.
fn unary_flops(u: UnaryOp) -> f64 {
    match u {
        UnaryOp::Abs
        | UnaryOp::Neg
        | UnaryOp::Relu
        | UnaryOp::Not
        | UnaryOp::Floor
        | UnaryOp::Ceil
        | UnaryOp::Round
        | UnaryOp::Sign
        | UnaryOp::IsNaN => 1.0,
        UnaryOp::Reciprocal | UnaryOp::Sqrt | UnaryOp::Softsign | UnaryOp::HardSwish => 4.0,
        UnaryOp::Exp
        | UnaryOp::Log
        | UnaryOp::Tanh
        | UnaryOp::Erf
        | UnaryOp::Sigmoid
        | UnaryOp::Softplus
        | UnaryOp::Sin
        | UnaryOp::Cos => 8.0,
    }
}

impl CostModel {
    /// A model for `target` with no symbol bindings.
    pub fn new(target: Target) -> CostModel {
        CostModel {
            target,
            bindings: BTreeMap::new(),
        }
    }

    /// Binds a symbol's size.
    pub fn bind(mut self, symbol: &str, size: i64) -> CostModel {
        self.bindings.insert(symbol.to_string(), size);
        self
    }

    /// A dim's size under the bindings.
    pub fn dim(&self, d: &Dim) -> f64 {
        let b = |s: &str| Some(self.bindings.get(s).copied().unwrap_or(DEFAULT_SYMBOL_SIZE));
        d.eval(&b)
            .map_or(DEFAULT_SYMBOL_SIZE as f64, |v| v.max(0) as f64)
    }

    /// Element count of a type.
    pub fn elems(&self, t: &TensorType) -> f64 {
        t.shape.iter().map(|d| self.dim(d)).product()
    }

    /// Storage bytes of a type.
    pub fn bytes(&self, t: &TensorType) -> f64 {
        self.elems(t) * t.dtype.bit_width() as f64 / 8.0
    }

    /// The work of `op` with these input types (`None` for omitted inputs)
    /// and output types.
    pub fn op_cost(
        &self,
        op: &Op,
        inputs: &[Option<&TensorType>],
        outputs: &[&TensorType],
    ) -> NodeCost {
        let in_bytes: f64 = inputs.iter().flatten().map(|t| self.bytes(t)).sum();
        let out_bytes: f64 = outputs.iter().map(|t| self.bytes(t)).sum();
        let out_elems = outputs.first().map_or(0.0, |t| self.elems(t));
        let in0 = inputs.first().copied().flatten();
        let in_elems = in0.map_or(0.0, |t| self.elems(t));
        if is_view(op) {
            return NodeCost::default();
        }
        let per_out = |k: f64| k * out_elems;
        let flops = match op {
            Op::MatMul | Op::MatMulInteger | Op::QLinearMatMul => {
                // K is A's last dim; each output element is a K-long dot product.
                let k = in0
                    .and_then(|t| t.shape.last())
                    .map_or(1.0, |d| self.dim(d));
                2.0 * out_elems * k
            }
            Op::Gemm(g) => {
                let k = in0
                    .and_then(|t| {
                        if g.trans_a {
                            t.shape.first()
                        } else {
                            t.shape.last()
                        }
                    })
                    .map_or(1.0, |d| self.dim(d));
                2.0 * out_elems * k + out_elems
            }
            Op::Unary(u) => per_out(unary_flops(*u)),
            Op::Binary(BinaryOp::Pow) => per_out(8.0),
            Op::Binary(BinaryOp::Div) => per_out(4.0),
            Op::Binary(_) | Op::Where | Op::IsInf { .. } => per_out(1.0),
            Op::Variadic(_) => per_out((inputs.len().max(2) - 1) as f64),
            Op::Mod { .. } | Op::Clip | Op::LeakyRelu { .. } => per_out(2.0),
            Op::HardSigmoid { .. } => per_out(3.0),
            Op::Elu { .. } => per_out(8.0),
            Op::Gelu { .. } => per_out(12.0),
            // max, subtract, exp, sum, divide.
            Op::Softmax { .. } | Op::LogSoftmax { .. } => 12.0 * in_elems,
            Op::LayerNormalization { .. } => 8.0 * in_elems,
            Op::RMSNormalization { .. } => 6.0 * in_elems,
            Op::RotaryEmbedding { .. } => 4.0 * in_elems,
            Op::Attention(a) => self.attention_flops(a, inputs, outputs),
            Op::LinearAttention(a) => self.linear_attention_flops(a, inputs),
            Op::Reduce {
                kind: ReduceKind::LogSumExp | ReduceKind::LogSum,
                ..
            } => 9.0 * in_elems,
            Op::Reduce { .. } | Op::ArgReduce { .. } | Op::CumSum { .. } => in_elems,
            Op::TopK { .. } => 2.0 * in_elems,
            Op::SoftmaxCrossEntropyLoss { .. } => 12.0 * in_elems,
            // One log-sum-exp pass (max, subtract, exp, sum); unlike
            // SoftmaxCrossEntropyLoss it never normalizes the whole row.
            Op::CrossEntropy { .. } => 9.0 * in_elems,
            // The head's N×V dot products of length d (2·N·V·d, the weight
            // holding V·d elements) plus the log-sum-exp over the N×V logits.
            Op::LinearCrossEntropy { .. } => {
                let head = inputs.get(1).copied().flatten().map_or(0.0, |t| self.elems(t));
                let (rows, depth) = in0
                    .map(|t| {
                        let at = |i: usize| t.shape.get(i).map_or(1.0, |d| self.dim(d));
                        (at(0), at(1))
                    })
                    .unwrap_or((1.0, 1.0));
                let logits = rows * head / depth.max(1.0);
                2.0 * rows * head + 9.0 * logits
            }
            Op::NegativeLogLikelihoodLoss { .. } => per_out(1.0),
            Op::QuantizeLinear { .. } | Op::DequantizeLinear { .. } | Op::DynamicQuantizeLinear => {
                4.0 * in_elems
            }
            _ => 0.0,
        };
        let bytes = match op {
            // Metadata only: nothing of the input is read.
            Op::Shape { .. } | Op::Size => out_bytes,
            // Only the selected part of the table is read.
            Op::Gather { .. } | Op::GatherElements { .. } | Op::GatherND { .. } | Op::Slice => {
                let idx: f64 = inputs.iter().skip(1).flatten().map(|t| self.bytes(t)).sum();
                idx + 2.0 * out_bytes
            }
            _ => in_bytes + out_bytes,
        };
        NodeCost {
            flops,
            bytes,
            allocated: out_bytes,
        }
    }

    /// Attention: `QKᵀ` and `PV` products plus the softmax over scores.
    fn attention_flops(
        &self,
        a: &kiln_ir::op::AttentionAttrs,
        inputs: &[Option<&TensorType>],
        outputs: &[&TensorType],
    ) -> f64 {
        let (Some(Some(q)), Some(Some(k))) = (inputs.first(), inputs.get(1)) else {
            return 0.0;
        };
        let Some(y) = outputs.first() else { return 0.0 };
        // Q is [batch, heads, q_len, head_dim] or [batch, q_len, heads*head_dim].
        let (kv_len, head_dim) = match (q.rank(), k.rank()) {
            (4, 4) => (self.dim(&k.shape[2]), self.dim(&q.shape[3])),
            (3, 3) => (
                self.dim(&k.shape[1]),
                self.dim(&q.shape[2]) / a.q_num_heads.unwrap_or(1).max(1) as f64,
            ),
            _ => return 0.0,
        };
        // One score per (batch, head, query, key).
        let rows = self.elems(q) / head_dim.max(1.0);
        let scores = rows * kv_len;
        let v_head_dim = self.elems(y) / rows.max(1.0);
        2.0 * scores * head_dim + 2.0 * scores * v_head_dim + 12.0 * scores
    }

    /// ONNX-27 `LinearAttention` over `[batch, seq, heads*dim]` inputs: per
    /// token, a `Dk×Dv` state update per key/value head and a read-out of
    /// that state per query head, each `2·Dk·Dv`; nothing grows with S².
    fn linear_attention_flops(
        &self,
        a: &kiln_ir::op::LinearAttentionAttrs,
        inputs: &[Option<&TensorType>],
    ) -> f64 {
        let (Some(Some(q)), Some(Some(v))) = (inputs.first(), inputs.get(2)) else {
            return 0.0;
        };
        let last = |t: &TensorType| t.shape.last().map_or(1.0, |d| self.dim(d));
        let key_dim = last(q) / a.q_num_heads.max(1) as f64;
        let value_dim = last(v) / a.kv_num_heads.max(1) as f64;
        2.0 * self.elems(v) * key_dim + 2.0 * self.elems(q) * value_dim
    }

    /// Nanoseconds for a node cost on the target.
    pub fn weigh(&self, c: &NodeCost) -> f64 {
        let t = &self.target;
        t.ns_per_node
            + c.flops * t.ns_per_flop
            + c.bytes * t.ns_per_byte
            + c.allocated * t.ns_per_allocated_byte
    }

    /// The cost of an e-node of class `class`, for extraction. Leaves and
    /// projections are free, a constant costs writing its bytes, an op its
    /// weighted [`NodeCost`]; untyped classes cost infinity.
    pub fn enode_cost(&self, egraph: &KilnEGraph, class: Id, node: &KilnLang) -> f64 {
        match node {
            KilnLang::Input(_) | KilnLang::Weight(_) | KilnLang::Absent | KilnLang::Proj(..) => 0.0,
            KilnLang::Const(c) => {
                egraph.analysis.consts.get(*c).storage_bytes() as f64 * self.target.ns_per_byte
            }
            KilnLang::Op { op, children, .. } => {
                let mut inputs = Vec::with_capacity(children.len());
                for &c in children {
                    match &egraph[c].data.ty {
                        ClassType::Tensor(t) => inputs.push(Some(t)),
                        ClassType::Absent => inputs.push(None),
                        _ => return f64::INFINITY,
                    }
                }
                let outputs: Vec<&TensorType> = match &egraph[class].data.ty {
                    ClassType::Tensor(t) => vec![t],
                    ClassType::Tuple(ts) => ts.iter().collect(),
                    _ => return f64::INFINITY,
                };
                self.weigh(&self.op_cost(op.op(), &inputs, &outputs))
            }
        }
    }

    /// FLOPs, bytes, peak live memory and estimated time of a typed graph.
    /// Nodes with an untyped value are counted as nodes but not as work.
    pub fn graph_cost(&self, graph: &Graph) -> GraphCost {
        let mut total = GraphCost::default();
        for (_, t) in graph.initializers() {
            total.weight_bytes += t.storage_bytes() as f64;
        }
        let Ok(order) = graph.topo_order() else {
            return total;
        };
        let ty = |v: kiln_ir::ValueId| graph.value(v).ty.as_ref();
        // Views alias their input: the buffer lives until the view's last reader.
        let mut root: HashMap<kiln_ir::ValueId, kiln_ir::ValueId> = HashMap::new();
        let mut last_use: HashMap<kiln_ir::ValueId, usize> = HashMap::new();
        let outputs: Vec<kiln_ir::ValueId> = graph.outputs().to_vec();
        let buffer = |root: &HashMap<_, _>, v| *root.get(&v).unwrap_or(&v);
        for (step, &id) in order.iter().enumerate() {
            let node = graph.node(id);
            if is_view(&node.op) {
                if let (Some(i), Some(o)) = (node.input(0), node.output(0)) {
                    let r = buffer(&root, i);
                    root.insert(o, r);
                }
            }
            for &v in node.inputs.iter().flatten() {
                last_use.insert(buffer(&root, v), step);
            }
        }
        for &v in &outputs {
            last_use.insert(buffer(&root, v), usize::MAX);
        }
        let is_weight = |v: kiln_ir::ValueId| graph.value(v).initializer.is_some();
        let mut live = 0.0f64;
        let mut sizes: HashMap<kiln_ir::ValueId, f64> = HashMap::new();
        for &v in graph.inputs() {
            if !is_weight(v) {
                let b = ty(v).map_or(0.0, |t| self.bytes(t));
                live += b;
                sizes.insert(v, b);
            }
        }
        total.peak_bytes = live;
        let mut frees: BTreeMap<usize, Vec<kiln_ir::ValueId>> = BTreeMap::new();
        for (&v, &s) in &last_use {
            frees.entry(s).or_default().push(v);
        }
        for (step, &id) in order.iter().enumerate() {
            let node = graph.node(id);
            total.nodes += 1;
            let inputs: Vec<Option<&TensorType>> =
                node.inputs.iter().map(|v| v.and_then(ty)).collect();
            let outs: Option<Vec<&TensorType>> =
                node.outputs.iter().flatten().map(|&v| ty(v)).collect();
            let cost = match outs {
                Some(outs) => self.op_cost(&node.op, &inputs, &outs),
                None => NodeCost::default(),
            };
            total.flops += cost.flops;
            total.bytes += cost.bytes;
            total.time_ns += self.weigh(&cost);
            if !is_view(&node.op) {
                for &v in node.outputs.iter().flatten() {
                    let b = ty(v).map_or(0.0, |t| self.bytes(t));
                    live += b;
                    sizes.insert(v, b);
                }
            }
            total.peak_bytes = total.peak_bytes.max(live);
            for v in frees.get(&step).into_iter().flatten() {
                if let Some(b) = sizes.remove(v) {
                    live -= b;
                }
            }
            // Outputs nobody reads are freed at once (unless graph outputs).
            for &v in node.outputs.iter().flatten() {
                if !last_use.contains_key(&v) && !root.contains_key(&v) {
                    if let Some(b) = sizes.remove(&v) {
                        live -= b;
                    }
                }
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_ir::dtype::DType;

    #[test]
    fn matmul_flops_and_symbols() {
        let m = CostModel::new(Target::CPU).bind("seq", 10);
        let a = TensorType::new(DType::F32, vec![Dim::sym("seq"), Dim::Fixed(4)]);
        let b = TensorType::fixed(DType::F32, &[4, 3]);
        let y = TensorType::new(DType::F32, vec![Dim::sym("seq"), Dim::Fixed(3)]);
        let c = m.op_cost(&Op::MatMul, &[Some(&a), Some(&b)], &[&y]);
        assert_eq!(c.flops, 2.0 * 10.0 * 3.0 * 4.0);
        assert_eq!(c.bytes, (40.0 + 12.0 + 30.0) * 4.0);
        let unbound = CostModel::new(Target::CPU);
        assert_eq!(unbound.elems(&a), (DEFAULT_SYMBOL_SIZE * 4) as f64);
    }

    #[test]
    fn views_are_free_and_constants_beat_their_computation() {
        let m = CostModel::default();
        let x = TensorType::fixed(DType::F32, &[2, 3]);
        let y = TensorType::fixed(DType::F32, &[6]);
        assert_eq!(
            m.op_cost(&Op::Reshape { allowzero: false }, &[Some(&x), None], &[&y]),
            NodeCost::default()
        );
        let shape = TensorType::fixed(DType::I64, &[2]);
        let op = m.weigh(&m.op_cost(
            &Op::Shape {
                start: 0,
                end: None,
            },
            &[Some(&x)],
            &[&shape],
        ));
        assert!(16.0 * m.target.ns_per_byte < op);
    }
}
