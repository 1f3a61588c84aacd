//! Graph → e-graph and back.
//!
//! [`to_egraph`] adds every node of a typed graph in topological order.
//! Graph inputs become [`KilnLang::Input`] leaves and initializers
//! [`KilnLang::Weight`] leaves (an initializer that is also listed as a
//! graph input is an input: callers may override it); `Constant` nodes
//! become interned [`KilnLang::Const`] leaves. Hash-consing merges equal
//! nodes on the way in, which is CSE. The types already in the graph seed
//! the analysis, so the e-graph starts as precise as the graph's inference.
//!
//! [`to_graph`] rebuilds a graph from an [`Extraction`]: one node per chosen
//! class, so shared subgraphs stay shared, and only what the outputs need,
//! which is DCE. It keeps the interface and the names: the same graph
//! inputs in the same order (used or not), the used initializers in their
//! original order, the outputs under their names (an `Identity` carries an
//! output name when the output's value is an input, a weight, or another
//! output's value). A chosen node that was in the source keeps its name, a
//! new node takes the name of the source node it replaces where that one is
//! gone, and values keep their source names where their class had one.
//! Nodes come out in source order, new ones right after their last input.

use crate::analysis::{ClassType, KilnEGraph, TypeAnalysis};
use crate::extract::Extraction;
use crate::lang::{KilnLang, Name, OpKey};
use crate::typing::FreshSymbols;
use egg::{Id, Language};
use kiln_ir::error::{IrError, Result};
use kiln_ir::graph::{Graph, ValueId};
use kiln_ir::op::Op;
use kiln_ir::tensor::Tensor;
use kiln_ir::types::TensorType;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

/// What the conversion remembers of the source graph, to rebuild a graph
/// with the same interface and names.
#[derive(Clone, Debug)]
pub struct SourceInfo {
    name: String,
    opset_imports: BTreeMap<String, i64>,
    /// Graph inputs in order: name, type, initializer data if it has one.
    inputs: Vec<(Name, TensorType, Option<Tensor>)>,
    /// Initializers that are not inputs, in creation order.
    initializers: Vec<(Name, Tensor)>,
    /// Graph outputs in order: name, class.
    outputs: Vec<(String, Id)>,
    /// Node outputs in creation order: value name, class, producing node.
    values: Vec<(String, Id, usize)>,
    /// Source nodes in topological order: name and e-node as added.
    nodes: Vec<(String, KilnLang)>,
}

impl SourceInfo {
    /// The class of each graph output, in order.
    pub fn roots(&self) -> Vec<Id> {
        self.outputs.iter().map(|(_, id)| *id).collect()
    }

    /// The outputs of source node `node` as `(value name, id)` in output
    /// order, each id the e-node as conversion added it (not canonicalized,
    /// so egg's explanations start from the source term); empty when there
    /// is no such node.
    pub fn node_outputs(&self, node: &str) -> Vec<(String, Id)> {
        let Some(index) = self.nodes.iter().position(|(n, _)| n == node) else {
            return Vec::new();
        };
        self.values
            .iter()
            .filter(|(_, _, i)| *i == index)
            .map(|(name, id, _)| (name.clone(), *id))
            .collect()
    }

    /// Names of the source nodes whose outputs are in `class` (canonical
    /// ids compared through `egraph`), in source order: where a rewrite of
    /// that class happened, in the user's terms.
    pub fn node_names_in(&self, egraph: &KilnEGraph, class: Id) -> Vec<String> {
        let class = egraph.find(class);
        let mut names: Vec<&str> = Vec::new();
        for (_, id, node) in &self.values {
            if egraph.find(*id) == class {
                let n = self.nodes[*node].0.as_str();
                if !names.contains(&n) {
                    names.push(n);
                }
            }
        }
        for (name, enode) in &self.nodes {
            if enode.is_tuple() || matches!(enode, KilnLang::Const(_)) {
                // Tuple classes and constants are not in `values` as such.
                if let Some(id) = egraph.lookup(enode.clone()) {
                    if egraph.find(id) == class && !names.contains(&name.as_str()) {
                        names.push(name);
                    }
                }
            }
        }
        names.into_iter().map(String::from).collect()
    }
}

/// A graph as an e-graph, with what is needed to convert back.
#[derive(Debug)]
pub struct Converted {
    /// The e-graph (rebuilt).
    pub egraph: KilnEGraph,
    /// The source graph's interface and names.
    pub source: SourceInfo,
}

/// Bool initializers up to this many elements (a 4096 x 4096 mask) are
/// tracked as constants whatever the fold limit.
pub const MASK_BUFFER_LIMIT: usize = 1 << 24;

/// Converts a typed graph (every value used has a type; run
/// [`kiln_ir::infer_types`] first) into an e-graph with the given analysis
/// settings. Explanations are recorded when `explanations` is set.
pub fn to_egraph(
    graph: &Graph,
    mut analysis: TypeAnalysis,
    explanations: bool,
) -> Result<Converted> {
    let all_types: Vec<&TensorType> = graph
        .value_ids()
        .filter_map(|v| graph.value(v).ty.as_ref())
        .collect();
    analysis.fresh = FreshSymbols::after(all_types);
    let is_input: BTreeSet<ValueId> = graph.inputs().iter().copied().collect();
    let mut inputs = Vec::new();
    for &v in graph.inputs() {
        let val = graph.value(v);
        let ty = graph.ty(v)?.clone();
        let name: Name = val.name.as_str().into();
        analysis.inputs.insert(name.clone(), ty.clone());
        inputs.push((name, ty, val.initializer.clone()));
    }
    let mut initializers = Vec::new();
    for (v, t) in graph.initializers() {
        if is_input.contains(&v) {
            continue;
        }
        let name: Name = graph.value(v).name.as_str().into();
        let ty = TensorType::fixed(t.dtype(), t.shape());
        // Bool buffers are masks, not weights: the attention rules read
        // them (GPT-2's causal `bias` is 1024 x 1024), and folding never
        // materializes a large result from them (it checks the output size).
        let mask = t.dtype() == kiln_ir::dtype::DType::Bool && t.len() <= MASK_BUFFER_LIMIT;
        let small = (t.len() <= analysis.fold_limit || mask).then(|| analysis.consts.intern(t));
        analysis.weights.insert(name.clone(), (ty, small));
        initializers.push((name, t.clone()));
    }

    let mut egraph = KilnEGraph::new(analysis);
    if explanations {
        egraph = egraph.with_explanations_enabled();
    }
    let mut class_of: HashMap<ValueId, Id> = HashMap::new();
    for (&v, (name, _, _)) in graph.inputs().iter().zip(&inputs) {
        class_of.insert(v, egraph.add(KilnLang::Input(name.clone())));
    }
    for (v, _) in graph.initializers() {
        if !is_input.contains(&v) {
            class_of.insert(
                v,
                egraph.add(KilnLang::Weight(graph.value(v).name.as_str().into())),
            );
        }
    }
    let mut absent = None;
    let mut values = Vec::new();
    let mut nodes = Vec::new();
    for id in graph.topo_order()? {
        let node = graph.node(id);
        let err = |m: String| IrError::node(&node.name, node.op.name(), m);
        let enode = match &node.op {
            Op::Constant { value } => KilnLang::Const(egraph.analysis.consts.intern(value)),
            op => {
                let mut children = Vec::with_capacity(node.inputs.len());
                for (slot, v) in node.inputs.iter().enumerate() {
                    children.push(match v {
                        None => *absent.get_or_insert_with(|| egraph.add(KilnLang::Absent)),
                        Some(v) => *class_of.get(v).ok_or_else(|| {
                            err(format!(
                                "input {slot} `{}` is not defined",
                                graph.value(*v).name
                            ))
                        })?,
                    });
                }
                let outputs = u32::try_from(node.outputs.len())
                    .map_err(|_| err("too many outputs".into()))?;
                KilnLang::Op {
                    op: OpKey::new(op.clone()),
                    outputs,
                    children,
                }
            }
        };
        // The graph's own types for this node's outputs seed the analysis.
        let mut seed = Vec::with_capacity(node.outputs.len());
        for v in &node.outputs {
            seed.push(match v {
                Some(v) => Some(graph.ty(*v)?.clone()),
                None => None,
            });
        }
        egraph.analysis.seed = Some(seed);
        let class = egraph.add(enode.clone());
        egraph.analysis.seed = None;
        let node_index = nodes.len();
        nodes.push((node.name.clone(), enode.clone()));
        if enode.is_tuple() {
            for (slot, v) in node.outputs.iter().enumerate() {
                if let Some(v) = v {
                    egraph.analysis.seed = Some(vec![Some(graph.ty(*v)?.clone())]);
                    let p = egraph.add(KilnLang::Proj(slot as u32, [class]));
                    egraph.analysis.seed = None;
                    class_of.insert(*v, p);
                    values.push((graph.value(*v).name.clone(), p, node_index));
                }
            }
        } else if let Some(v) = node.output(0) {
            class_of.insert(v, class);
            values.push((graph.value(v).name.clone(), class, node_index));
        }
    }
    let mut outputs = Vec::new();
    for &v in graph.outputs() {
        let val = graph.value(v);
        let class = *class_of.get(&v).ok_or_else(|| {
            IrError::value(
                &val.name,
                "graph output is not defined by any node, input or initializer",
            )
        })?;
        outputs.push((val.name.clone(), class));
    }
    egraph.analysis.outputs = outputs.iter().map(|(_, c)| *c).collect();
    egraph.rebuild();
    if let Some(e) = egraph.analysis.errors.first() {
        return Err(IrError::Model(format!("e-graph conversion: {e}")));
    }
    let source = SourceInfo {
        name: graph.name.clone(),
        opset_imports: graph.opset_imports.clone(),
        inputs,
        initializers,
        outputs,
        values,
        nodes,
    };
    Ok(Converted { egraph, source })
}

/// Emission priority: source position (or that of the latest source input
/// for a new node), source nodes before new ones, then discovery order.
type EmitKey = (i64, u8, usize);

/// How a chosen class appears in the rebuilt graph.
#[derive(Clone, Copy, Debug)]
enum Emit {
    /// A graph input or initializer value.
    Leaf(ValueId),
    /// Omitted optional input.
    Absent,
    /// An output of the node emitted for this tuple class.
    Slot(Id),
    /// The single output of its own node.
    Own,
}

/// Rebuilds a graph from the chosen nodes (see the module docs).
pub fn to_graph(
    egraph: &KilnEGraph,
    source: &SourceInfo,
    extraction: &Extraction,
) -> Result<Graph> {
    let find = |id: Id| egraph.find(id);
    let choice = |class: Id| {
        extraction
            .choice(find(class))
            .ok_or_else(|| IrError::Model(format!("extraction has no choice for e-class {class}")))
    };

    // Reachable classes in depth-first post-order from the outputs.
    let mut post: Vec<Id> = Vec::new();
    let mut seen: BTreeSet<Id> = BTreeSet::new();
    for (_, root) in &source.outputs {
        let root = find(*root);
        if !seen.insert(root) {
            continue;
        }
        let mut stack = vec![(root, false)];
        while let Some((c, done)) = stack.pop() {
            if done {
                post.push(c);
                continue;
            }
            stack.push((c, true));
            for &child in choice(c)?.children().iter().rev() {
                let child = find(child);
                if seen.insert(child) {
                    stack.push((child, false));
                }
            }
        }
    }

    // Source node of each chosen node that is unchanged from the source.
    // Hashed, not ordered: it is only looked up, never iterated, and an
    // ordered map's comparisons of same-op nodes (op name, attributes,
    // children) were a fifth of `-O2`'s time on a 48-layer GPT-2.
    let mut original: HashMap<KilnLang, usize> = HashMap::new();
    for (i, (_, enode)) in source.nodes.iter().enumerate() {
        original
            .entry(enode.clone().map_children(find))
            .or_insert(i);
    }
    let origin = |class: Id| -> Result<Option<usize>> {
        Ok(original
            .get(&choice(class)?.clone().map_children(find))
            .copied())
    };

    // Which tuple slots are read.
    let mut read_slots: BTreeMap<Id, BTreeMap<usize, Id>> = BTreeMap::new();
    for &c in &post {
        if let KilnLang::Proj(i, [t]) = choice(c)? {
            read_slots
                .entry(find(*t))
                .or_default()
                .insert(*i as usize, c);
        }
    }

    let mut g = Graph::new(source.name.clone());
    g.opset_imports = source.opset_imports.clone();
    let mut taken: BTreeSet<String> = BTreeSet::new();
    let mut emit: HashMap<Id, Emit> = HashMap::new();
    let mut values: HashMap<Id, ValueId> = HashMap::new();
    for (name, ty, init) in &source.inputs {
        let v = g.add_input(name.to_string(), ty.clone())?;
        if let Some(t) = init {
            g.value_mut(v).initializer = Some(t.clone());
        }
        taken.insert(name.to_string());
    }
    let used_weights: BTreeSet<&str> = post
        .iter()
        .filter_map(|&c| match choice(c) {
            Ok(KilnLang::Weight(n)) => Some(&**n),
            _ => None,
        })
        .collect();
    for (name, t) in &source.initializers {
        if used_weights.contains(&**name) {
            g.add_initializer(name.to_string(), t.clone())?;
            taken.insert(name.to_string());
        }
    }
    for &c in &post {
        let e = match choice(c)? {
            KilnLang::Input(n) | KilnLang::Weight(n) => {
                Emit::Leaf(g.value_by_name(n).ok_or_else(|| {
                    IrError::value(
                        n.to_string(),
                        "input or initializer is missing from the source",
                    )
                })?)
            }
            KilnLang::Absent => Emit::Absent,
            KilnLang::Proj(_, [t]) => Emit::Slot(find(*t)),
            KilnLang::Const(_) | KilnLang::Op { .. } => Emit::Own,
        };
        emit.insert(c, e);
    }
    for (name, _) in &source.outputs {
        taken.insert(name.clone());
    }

    // Value names. The first output reading a node-made value names it.
    let mut value_name: HashMap<Id, String> = HashMap::new();
    let mut claimed: BTreeSet<Id> = BTreeSet::new();
    for (name, root) in &source.outputs {
        let root = find(*root);
        let makes_value =
            matches!(emit[&root], Emit::Own | Emit::Slot(_)) && !choice(root)?.is_tuple();
        if makes_value && claimed.insert(root) {
            value_name.insert(root, name.clone());
        }
    }
    for (name, class, _) in &source.values {
        let class = find(*class);
        if emit.contains_key(&class) && !value_name.contains_key(&class) && !taken.contains(name) {
            value_name.insert(class, name.clone());
            taken.insert(name.clone());
        }
    }

    // Node names: unchanged source nodes keep theirs first, then new nodes
    // take the name of a source node of their class that did not survive.
    let emitted: Vec<Id> = post
        .iter()
        .copied()
        .filter(|c| matches!(emit[c], Emit::Own))
        .collect();
    let mut node_name: HashMap<Id, String> = HashMap::new();
    let mut taken_nodes: BTreeSet<String> = BTreeSet::new();
    for &c in &emitted {
        if let Some(i) = origin(c)? {
            let n = &source.nodes[i].0;
            if taken_nodes.insert(n.clone()) {
                node_name.insert(c, n.clone());
            }
        }
    }
    let mut replaced_by_class: HashMap<Id, Vec<usize>> = HashMap::new();
    for (_, class, node) in &source.values {
        replaced_by_class
            .entry(find(*class))
            .or_default()
            .push(*node);
    }
    for (i, (_, enode)) in source.nodes.iter().enumerate() {
        if enode.is_tuple() || matches!(enode, KilnLang::Const(_)) {
            if let Some(id) = egraph.lookup(enode.clone()) {
                replaced_by_class.entry(find(id)).or_default().push(i);
            }
        }
    }
    for &c in &emitted {
        if node_name.contains_key(&c) {
            continue;
        }
        let reuse = replaced_by_class
            .get(&c)
            .into_iter()
            .flatten()
            .map(|&i| &source.nodes[i].0)
            .find(|n| !taken_nodes.contains(*n))
            .cloned();
        if let Some(n) = reuse {
            taken_nodes.insert(n.clone());
            node_name.insert(c, n);
        }
    }
    // Fresh names must not collide with any name a later node keeps.
    let fresh_node = |base: &str, taken_nodes: &mut BTreeSet<String>| -> String {
        let mut k = 0usize;
        loop {
            let n = format!("{base}_{k}");
            if !taken_nodes.contains(&n) {
                taken_nodes.insert(n.clone());
                return n;
            }
            k += 1;
        }
    };
    for &c in &emitted {
        if let std::collections::hash_map::Entry::Vacant(slot) = node_name.entry(c) {
            let base = match choice(c)? {
                KilnLang::Op { op, .. } => op.name().to_string(),
                _ => "Constant".to_string(),
            };
            slot.insert(fresh_node(&base, &mut taken_nodes));
        }
    }
    let fresh_value = |base: &str, taken: &mut BTreeSet<String>| -> String {
        let mut k = 0usize;
        loop {
            let n = if k == 0 {
                base.to_string()
            } else {
                format!("{base}.{k}")
            };
            if !taken.contains(&n) {
                taken.insert(n.clone());
                return n;
            }
            k += 1;
        }
    };

    // Emission order: Kahn's algorithm preferring source order; a new node
    // sorts right after the latest source node among its inputs.
    let node_class = |c: Id| -> Option<Id> {
        match emit.get(&c)? {
            Emit::Own => Some(c),
            Emit::Slot(t) => Some(*t),
            _ => None,
        }
    };
    let source_index: HashMap<&str, usize> = source
        .nodes
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (n.as_str(), i))
        .collect();
    let mut key: HashMap<Id, EmitKey> = HashMap::new();
    let mut deps: HashMap<Id, BTreeSet<Id>> = HashMap::new();
    for (pos, &c) in emitted.iter().enumerate() {
        let d: BTreeSet<Id> = choice(c)?
            .children()
            .iter()
            .filter_map(|&ch| node_class(find(ch)))
            .collect();
        // A new node that took the name of the source node it replaces
        // takes its place too.
        let k = match origin(c)?.or_else(|| source_index.get(node_name[&c].as_str()).copied()) {
            Some(i) => (i as i64, 0, pos),
            None => (
                d.iter()
                    .map(|p| key.get(p).map_or(-1, |k| k.0))
                    .max()
                    .unwrap_or(-1),
                1,
                pos,
            ),
        };
        key.insert(c, k);
        deps.insert(c, d);
    }
    let mut users: HashMap<Id, Vec<Id>> = HashMap::new();
    let mut missing: HashMap<Id, usize> = HashMap::new();
    for &c in &emitted {
        missing.insert(c, deps[&c].len());
        for &d in &deps[&c] {
            users.entry(d).or_default().push(c);
        }
    }
    let mut ready: BinaryHeap<Reverse<(EmitKey, Id)>> = emitted
        .iter()
        .filter(|c| missing[c] == 0)
        .map(|&c| Reverse((key[&c], c)))
        .collect();
    let class_type = |c: Id| egraph[c].data.ty.clone();
    let mut done = 0usize;
    while let Some(Reverse((_, c))) = ready.pop() {
        done += 1;
        let node = choice(c)?;
        let name = node_name[&c].clone();
        match node {
            KilnLang::Const(id) => {
                let out = value_name
                    .get(&c)
                    .cloned()
                    .unwrap_or_else(|| fresh_value(&name, &mut taken));
                let value = egraph.analysis.consts.get(*id).clone();
                let nid = g.add_node(name, Op::Constant { value }, vec![], &[out.as_str()])?;
                let v = g.node(nid).output(0).expect("Constant has its output");
                g.value_mut(v).ty = class_type(c).tensor().cloned();
                values.insert(c, v);
            }
            KilnLang::Op {
                op,
                outputs,
                children,
            } => {
                let mut inputs = Vec::with_capacity(children.len());
                for &ch in children {
                    let ch = find(ch);
                    inputs.push(match emit[&ch] {
                        Emit::Leaf(v) => Some(v),
                        Emit::Absent => None,
                        Emit::Own | Emit::Slot(_) => Some(*values.get(&ch).ok_or_else(|| {
                            IrError::node(
                                &name,
                                op.name(),
                                "an input was not emitted before its reader",
                            )
                        })?),
                    });
                }
                let n_out = *outputs as usize;
                let (_, _, min_out, _) = kiln_ir::infer::arity(op.op());
                let read = read_slots.get(&c);
                let mut out_names: Vec<String> = Vec::with_capacity(n_out);
                for slot in 0..n_out {
                    let proj = if n_out == 1 {
                        Some(c)
                    } else {
                        read.and_then(|r| r.get(&slot).copied())
                    };
                    // Split's outputs define its sizes; required ones must exist.
                    let keep =
                        proj.is_some() || slot < min_out || matches!(op.op(), Op::Split { .. });
                    out_names.push(if !keep {
                        String::new()
                    } else if let Some(n) = proj.and_then(|p| value_name.get(&p)) {
                        n.clone()
                    } else {
                        fresh_value(&format!("{name}_out{slot}"), &mut taken)
                    });
                }
                let refs: Vec<&str> = out_names.iter().map(String::as_str).collect();
                let nid = g.add_node(name.clone(), op.op().clone(), inputs, &refs)?;
                let slot_types: Vec<Option<TensorType>> = match class_type(c) {
                    ClassType::Tensor(t) => vec![Some(t)],
                    ClassType::Tuple(ts) => ts.into_iter().map(Some).collect(),
                    _ => vec![None; n_out],
                };
                for slot in 0..n_out {
                    if let Some(v) = g.node(nid).output(slot) {
                        g.value_mut(v).ty = slot_types.get(slot).cloned().flatten();
                        let class = if n_out == 1 {
                            Some(c)
                        } else {
                            read.and_then(|r| r.get(&slot).copied())
                        };
                        if let Some(class) = class {
                            values.insert(class, v);
                        }
                    }
                }
            }
            other => {
                return Err(IrError::Model(format!(
                    "e-node {other} cannot be emitted as a graph node"
                )));
            }
        }
        for &u in users.get(&c).into_iter().flatten() {
            let m = missing.get_mut(&u).expect("every user is emitted");
            *m -= 1;
            if *m == 0 {
                ready.push(Reverse((key[&u], u)));
            }
        }
    }
    if done < emitted.len() {
        return Err(IrError::Model("the extracted graph has a cycle".into()));
    }

    // Outputs; an Identity carries a name the value could not take.
    let mut outs = Vec::with_capacity(source.outputs.len());
    for (name, root) in &source.outputs {
        let root = find(*root);
        let v = match emit[&root] {
            Emit::Leaf(v) => Some(v),
            Emit::Own | Emit::Slot(_) => values.get(&root).copied(),
            Emit::Absent => None,
        }
        .ok_or_else(|| IrError::value(name, "graph output has no value after extraction"))?;
        let v = if g.value(v).name == *name {
            v
        } else {
            let producer = source
                .values
                .iter()
                .find(|(n, _, _)| n == name)
                .map(|(_, _, i)| source.nodes[*i].0.clone())
                .filter(|n| !taken_nodes.contains(n));
            let node = match producer {
                Some(n) => {
                    taken_nodes.insert(n.clone());
                    n
                }
                None => fresh_node("Identity", &mut taken_nodes),
            };
            let nid = g.add_node(node, Op::Identity, vec![Some(v)], &[name.as_str()])?;
            let out = g.node(nid).output(0).expect("Identity has its output");
            g.value_mut(out).ty = g.value(v).ty.clone();
            out
        };
        outs.push(v);
    }
    g.set_outputs(outs);
    Ok(g)
}
