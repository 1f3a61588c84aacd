//! The dataflow graph.
//!
//! Nodes are ops in a petgraph `StableDiGraph`; an edge runs from the node
//! that produces a value to each node that reads it and carries the value's
//! id. Values (graph inputs, initializers, node results) live in a side table
//! indexed by [`ValueId`], each with a unique name, an optional static type,
//! its producer and its uses. The graph keeps edges and use lists consistent
//! itself: mutate it only through its methods.
//!
//! Iteration is deterministic: nodes come in insertion order and
//! [`Graph::topo_order`] breaks ties by insertion order, so printing or
//! exporting the same graph twice gives the same bytes.

use crate::error::{IrError, Result};
use crate::op::Op;
use crate::tensor::Tensor;
use crate::types::TensorType;
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

/// Identifies a node.
pub type NodeId = NodeIndex<u32>;

/// Identifies a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);

impl ValueId {
    /// The index into the value table.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A value: a graph input, an initializer or a node output.
#[derive(Clone, Debug)]
pub struct Value {
    /// Unique name.
    pub name: String,
    /// Static type, once known.
    pub ty: Option<TensorType>,
    /// Constant data for initializers.
    pub initializer: Option<Tensor>,
    producer: Option<(NodeId, usize)>,
    uses: Vec<(NodeId, usize)>,
}

impl Value {
    /// The node and output slot that produce it, if any.
    pub fn producer(&self) -> Option<(NodeId, usize)> {
        self.producer
    }

    /// Every (node, input slot) that reads it.
    pub fn uses(&self) -> &[(NodeId, usize)] {
        &self.uses
    }
}

/// An op applied to values.
#[derive(Clone, Debug)]
pub struct Node {
    /// Node name; unique within the graph.
    pub name: String,
    /// The operator and its attributes.
    pub op: Op,
    /// Inputs; `None` for an omitted optional input.
    pub inputs: Vec<Option<ValueId>>,
    /// Outputs; `None` for an omitted optional output.
    pub outputs: Vec<Option<ValueId>>,
}

impl Node {
    /// The input at `slot`, if present.
    pub fn input(&self, slot: usize) -> Option<ValueId> {
        self.inputs.get(slot).copied().flatten()
    }

    /// The output at `slot`, if present.
    pub fn output(&self, slot: usize) -> Option<ValueId> {
        self.outputs.get(slot).copied().flatten()
    }
}

/// A dataflow graph of ops over values, with its inputs, outputs and
/// initializers.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    /// Graph name.
    pub name: String,
    /// Opset version per domain (`""` is ONNX's default domain).
    pub opset_imports: BTreeMap<String, i64>,
    dag: StableDiGraph<Node, ValueId>,
    values: Vec<Value>,
    names: HashMap<String, ValueId>,
    node_names: HashMap<String, NodeId>,
    inputs: Vec<ValueId>,
    outputs: Vec<ValueId>,
}

impl Graph {
    /// An empty graph.
    pub fn new(name: impl Into<String>) -> Graph {
        Graph { name: name.into(), ..Graph::default() }
    }

    // ---- values ----

    /// Creates a value with no producer. Names must be unique.
    pub fn add_value(&mut self, name: impl Into<String>, ty: Option<TensorType>) -> Result<ValueId> {
        let name = name.into();
        if name.is_empty() {
            return Err(IrError::Model("a value has an empty name".into()));
        }
        if self.names.contains_key(&name) {
            return Err(IrError::value(name, "defined more than once"));
        }
        let id = ValueId(self.values.len() as u32);
        self.names.insert(name.clone(), id);
        self.values.push(Value { name, ty, initializer: None, producer: None, uses: Vec::new() });
        Ok(id)
    }

    /// A name not yet used by any value, built from `base`.
    pub fn fresh_value_name(&self, base: &str) -> String {
        if !self.names.contains_key(base) {
            return base.to_string();
        }
        (1..).map(|i| format!("{base}.{i}")).find(|n| !self.names.contains_key(n)).expect("some name is free")
    }

    /// A node name not yet used, built from `base`.
    pub fn fresh_node_name(&self, base: &str) -> String {
        if !self.node_names.contains_key(base) {
            return base.to_string();
        }
        (1..).map(|i| format!("{base}.{i}")).find(|n| !self.node_names.contains_key(n)).expect("some name is free")
    }

    /// Declares a graph input.
    pub fn add_input(&mut self, name: impl Into<String>, ty: TensorType) -> Result<ValueId> {
        let id = self.add_value(name, Some(ty))?;
        self.inputs.push(id);
        Ok(id)
    }

    /// Adds a constant weight.
    pub fn add_initializer(&mut self, name: impl Into<String>, data: Tensor) -> Result<ValueId> {
        let ty = TensorType::fixed(data.dtype(), data.shape());
        let id = self.add_value(name, Some(ty))?;
        self.values[id.index()].initializer = Some(data);
        Ok(id)
    }

    /// Marks a value as a graph output (it may be listed more than once).
    pub fn add_output(&mut self, v: ValueId) {
        self.outputs.push(v);
    }

    /// Replaces the list of graph outputs.
    pub fn set_outputs(&mut self, outputs: Vec<ValueId>) {
        self.outputs = outputs;
    }

    /// Replaces the list of graph inputs.
    pub fn set_inputs(&mut self, inputs: Vec<ValueId>) {
        self.inputs = inputs;
    }

    /// Graph inputs, in order.
    pub fn inputs(&self) -> &[ValueId] {
        &self.inputs
    }

    /// Graph outputs, in order.
    pub fn outputs(&self) -> &[ValueId] {
        &self.outputs
    }

    /// A value.
    pub fn value(&self, v: ValueId) -> &Value {
        &self.values[v.index()]
    }

    /// A value, to set its type or initializer.
    pub fn value_mut(&mut self, v: ValueId) -> &mut Value {
        &mut self.values[v.index()]
    }

    /// The value with this name.
    pub fn value_by_name(&self, name: &str) -> Option<ValueId> {
        self.names.get(name).copied()
    }

    /// Every value id, in creation order.
    pub fn value_ids(&self) -> impl Iterator<Item = ValueId> + '_ {
        (0..self.values.len() as u32).map(ValueId)
    }

    /// The values that carry initializer data, in creation order.
    pub fn initializers(&self) -> impl Iterator<Item = (ValueId, &Tensor)> + '_ {
        self.values.iter().enumerate().filter_map(|(i, v)| v.initializer.as_ref().map(|t| (ValueId(i as u32), t)))
    }

    /// Renames a value. Fails if the new name is taken.
    pub fn rename_value(&mut self, v: ValueId, name: impl Into<String>) -> Result<()> {
        let name = name.into();
        if self.names.contains_key(&name) {
            return Err(IrError::value(name, "defined more than once"));
        }
        let old = std::mem::replace(&mut self.values[v.index()].name, name.clone());
        self.names.remove(&old);
        self.names.insert(name, v);
        Ok(())
    }

    /// The static type of a value; an error naming it when unknown.
    pub fn ty(&self, v: ValueId) -> Result<&TensorType> {
        let val = self.value(v);
        val.ty.as_ref().ok_or_else(|| IrError::value(&val.name, "type is not known (run type inference first)"))
    }

    // ---- nodes ----

    /// Adds a node whose outputs are new values with the given names
    /// (an empty name is an omitted optional output).
    pub fn add_node(
        &mut self,
        name: impl Into<String>,
        op: Op,
        inputs: Vec<Option<ValueId>>,
        output_names: &[&str],
    ) -> Result<NodeId> {
        let outputs = output_names
            .iter()
            .map(|n| if n.is_empty() { Ok(None) } else { self.add_value(*n, None).map(Some) })
            .collect::<Result<Vec<_>>>()?;
        self.add_node_with_outputs(name, op, inputs, outputs)
    }

    /// Adds a node that produces existing values, which must have no
    /// producer yet. This is how importers add nodes whose outputs were
    /// referenced before they were defined.
    pub fn add_node_with_outputs(
        &mut self,
        name: impl Into<String>,
        op: Op,
        inputs: Vec<Option<ValueId>>,
        outputs: Vec<Option<ValueId>>,
    ) -> Result<NodeId> {
        let mut name = name.into();
        if name.is_empty() {
            name = self.fresh_node_name(&format!("{}_{}", op.name(), self.dag.node_count()));
        }
        if self.node_names.contains_key(&name) {
            name = self.fresh_node_name(&name);
        }
        for &v in inputs.iter().flatten() {
            if v.index() >= self.values.len() {
                return Err(IrError::node(&name, op.name(), format!("input value {} does not exist", v.0)));
            }
        }
        for &v in outputs.iter().flatten() {
            let val = &self.values[v.index()];
            if val.producer.is_some() || val.initializer.is_some() || self.inputs.contains(&v) {
                return Err(IrError::node(&name, op.name(), format!("output `{}` is already defined", val.name)));
            }
        }
        let id = self.dag.add_node(Node { name: name.clone(), op, inputs: inputs.clone(), outputs: outputs.clone() });
        self.node_names.insert(name, id);
        for (slot, v) in outputs.iter().enumerate() {
            if let Some(v) = v {
                self.values[v.index()].producer = Some((id, slot));
            }
        }
        for (slot, v) in inputs.iter().enumerate() {
            if let Some(v) = v {
                self.link(*v, id, slot);
            }
        }
        // Consumers added earlier (importers may add a reader before its
        // writer) get their edges now.
        for v in outputs.iter().flatten() {
            let uses = self.values[v.index()].uses.clone();
            for (consumer, _) in uses {
                self.dag.add_edge(id, consumer, *v);
            }
        }
        Ok(id)
    }

    fn link(&mut self, v: ValueId, consumer: NodeId, slot: usize) {
        self.values[v.index()].uses.push((consumer, slot));
        if let Some((producer, _)) = self.values[v.index()].producer {
            self.dag.add_edge(producer, consumer, v);
        }
    }

    fn unlink(&mut self, v: ValueId, consumer: NodeId, slot: usize) {
        let uses = &mut self.values[v.index()].uses;
        if let Some(i) = uses.iter().position(|&u| u == (consumer, slot)) {
            uses.remove(i);
        }
        if let Some((producer, _)) = self.values[v.index()].producer {
            let edge = self
                .dag
                .edges_connecting(producer, consumer)
                .find(|e| *e.weight() == v)
                .map(|e| e.id());
            if let Some(e) = edge {
                self.dag.remove_edge(e);
            }
        }
    }

    /// A node.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.dag[id]
    }

    /// The node's op, to change attributes in place.
    pub fn op_mut(&mut self, id: NodeId) -> &mut Op {
        &mut self.dag[id].op
    }

    /// True if the id names a live node.
    pub fn contains_node(&self, id: NodeId) -> bool {
        self.dag.contains_node(id)
    }

    /// The node with this name.
    pub fn node_by_name(&self, name: &str) -> Option<NodeId> {
        self.node_names.get(name).copied()
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.dag.node_count()
    }

    /// Node ids in insertion order.
    pub fn node_ids(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self.dag.node_indices().collect();
        ids.sort();
        ids
    }

    /// Points input `slot` of `node` at another value (or none).
    pub fn set_input(&mut self, node: NodeId, slot: usize, v: Option<ValueId>) {
        if let Some(old) = self.dag[node].input(slot) {
            self.unlink(old, node, slot);
        }
        let n = &mut self.dag[node];
        if n.inputs.len() <= slot {
            n.inputs.resize(slot + 1, None);
        }
        n.inputs[slot] = v;
        if let Some(v) = v {
            self.link(v, node, slot);
        }
    }

    /// Makes every reader of `old` (and the graph outputs) read `new`.
    pub fn replace_all_uses(&mut self, old: ValueId, new: ValueId) {
        for (node, slot) in self.values[old.index()].uses.clone() {
            self.set_input(node, slot, Some(new));
        }
        for o in &mut self.outputs {
            if *o == old {
                *o = new;
            }
        }
    }

    /// Removes a node. Its outputs stay in the value table without a
    /// producer; readers of them are left dangling for the verifier to report.
    pub fn remove_node(&mut self, id: NodeId) -> Node {
        let inputs = self.dag[id].inputs.clone();
        for (slot, v) in inputs.iter().enumerate() {
            if let Some(v) = v {
                self.unlink(*v, id, slot);
            }
        }
        let node = self.dag.remove_node(id).expect("node exists");
        for v in node.outputs.iter().flatten() {
            self.values[v.index()].producer = None;
        }
        self.node_names.remove(&node.name);
        node
    }

    /// Nodes that read an output of `id`, deduplicated, in id order.
    pub fn successors(&self, id: NodeId) -> Vec<NodeId> {
        let mut s: Vec<NodeId> = self.dag.neighbors_directed(id, Direction::Outgoing).collect();
        s.sort();
        s.dedup();
        s
    }

    /// Nodes in a topological order that prefers insertion order, so a graph
    /// imported in order keeps it. Fails on a cycle, naming a node on it.
    pub fn topo_order(&self) -> Result<Vec<NodeId>> {
        let mut indegree: HashMap<NodeId, usize> = HashMap::new();
        for id in self.dag.node_indices() {
            indegree.insert(id, self.dag.neighbors_directed(id, Direction::Incoming).count());
        }
        // Min-heap on node index.
        let mut ready: BinaryHeap<std::cmp::Reverse<NodeId>> =
            indegree.iter().filter(|(_, &d)| d == 0).map(|(&n, _)| std::cmp::Reverse(n)).collect();
        let mut order = Vec::with_capacity(indegree.len());
        while let Some(std::cmp::Reverse(n)) = ready.pop() {
            order.push(n);
            for e in self.dag.edges_directed(n, Direction::Outgoing) {
                let d = indegree.get_mut(&e.target()).expect("known node");
                *d -= 1;
                if *d == 0 {
                    ready.push(std::cmp::Reverse(e.target()));
                }
            }
        }
        if order.len() != indegree.len() {
            let stuck = indegree.iter().filter(|(_, &d)| d > 0).map(|(&n, _)| n).min().expect("a node is stuck");
            let node = &self.dag[stuck];
            return Err(IrError::Cycle { node: node.name.clone(), op: node.op.name().to_string() });
        }
        Ok(order)
    }

    /// The underlying petgraph graph, for analyses that want it.
    pub fn dag(&self) -> &StableDiGraph<Node, ValueId> {
        &self.dag
    }

    /// Removes nodes none of whose outputs reach a graph output, and
    /// initializers nothing reads. Returns how many nodes were removed.
    pub fn remove_dead_nodes(&mut self) -> usize {
        let mut live = vec![false; self.values.len()];
        let mut stack: Vec<ValueId> = self.outputs.clone();
        let mut live_nodes = std::collections::HashSet::new();
        while let Some(v) = stack.pop() {
            if std::mem::replace(&mut live[v.index()], true) {
                continue;
            }
            if let Some((n, _)) = self.values[v.index()].producer {
                if live_nodes.insert(n) {
                    stack.extend(self.dag[n].inputs.iter().flatten().copied());
                }
            }
        }
        let dead: Vec<NodeId> = self.node_ids().into_iter().filter(|n| !live_nodes.contains(n)).collect();
        for &n in &dead {
            self.remove_node(n);
        }
        for (i, v) in self.values.iter_mut().enumerate() {
            if v.initializer.is_some() && v.uses.is_empty() && !live[i] {
                v.initializer = None;
            }
        }
        dead.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::op::{BinaryOp, UnaryOp};

    fn small() -> (Graph, ValueId, NodeId, NodeId) {
        let mut g = Graph::new("g");
        let x = g.add_input("x", TensorType::fixed(DType::F32, &[2])).unwrap();
        let a = g.add_node("a", Op::Unary(UnaryOp::Exp), vec![Some(x)], &["ea"]).unwrap();
        let ea = g.node(a).output(0).unwrap();
        let b = g.add_node("b", Op::Binary(BinaryOp::Add), vec![Some(ea), Some(x)], &["y"]).unwrap();
        g.add_output(g.node(b).output(0).unwrap());
        (g, x, a, b)
    }

    #[test]
    fn topo_order_and_uses() {
        let (g, x, a, b) = small();
        assert_eq!(g.topo_order().unwrap(), vec![a, b]);
        assert_eq!(g.value(x).uses().len(), 2);
        assert_eq!(g.successors(a), vec![b]);
    }

    #[test]
    fn out_of_order_definition_gets_edges() {
        let mut g = Graph::new("g");
        let x = g.add_input("x", TensorType::fixed(DType::F32, &[2])).unwrap();
        let t = g.add_value("t", None).unwrap();
        let reader = g.add_node("reader", Op::Unary(UnaryOp::Neg), vec![Some(t)], &["y"]).unwrap();
        let writer = g.add_node_with_outputs("writer", Op::Unary(UnaryOp::Exp), vec![Some(x)], vec![Some(t)]).unwrap();
        assert_eq!(g.topo_order().unwrap(), vec![writer, reader]);
    }

    #[test]
    fn cycle_is_reported_with_the_node() {
        let mut g = Graph::new("g");
        let t = g.add_value("t", None).unwrap();
        let u = g.add_value("u", None).unwrap();
        g.add_node_with_outputs("first", Op::Unary(UnaryOp::Exp), vec![Some(u)], vec![Some(t)]).unwrap();
        g.add_node_with_outputs("second", Op::Unary(UnaryOp::Exp), vec![Some(t)], vec![Some(u)]).unwrap();
        let err = g.topo_order().unwrap_err().to_string();
        assert!(err.contains("cycle") && err.contains("first"), "{err}");
    }

    #[test]
    fn replace_and_remove_keep_edges_consistent() {
        let (mut g, x, a, b) = small();
        g.replace_all_uses(g.node(a).output(0).unwrap(), x);
        assert!(g.successors(a).is_empty());
        assert_eq!(g.remove_dead_nodes(), 1);
        assert_eq!(g.topo_order().unwrap(), vec![b]);
        assert_eq!(g.value(x).uses().len(), 2);
    }
}
