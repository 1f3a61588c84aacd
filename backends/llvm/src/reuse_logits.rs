//! A loss computed from logits the graph writes anyway.
//!
//! `kiln optimize` fuses an LM head and its loss into `LinearCrossEntropy`,
//! which never writes the N×V logits. When the graph also returns those
//! logits (as exported GPT-2 does: `logits` and `loss` are both outputs),
//! keeping the fusion would run the head's GEMM twice, once for the output
//! and once inside the loss. Before planning, the backend therefore turns
//! such a `LinearCrossEntropy` into `CrossEntropy` over the logits that
//! exist, taken through the same row selection (Slices of leading axes,
//! Reshapes that keep the last axis) that took the loss's hidden states
//! from the head's input. One read of the logits replaces N·V·d
//! multiply-adds, and the loss is the same function of the same numbers.
//!
//! It fires only when a live `MatMul(h, Wᵀ)` (or `MatMul(h, W)` for a
//! `[d, V]` weight) reads the very weight value the loss reads, the loss has
//! no bias, and every op between `h` and the loss's hidden states is such a
//! row selection; otherwise the fused loss stays.

use crate::error::{BackendError, Result};
use kiln_ir::dim::Dim;
use kiln_ir::dtype::DType;
use kiln_ir::graph::{Graph, NodeId, ValueId};
use kiln_ir::op::Op;
use kiln_ir::tensor::Tensor;

/// Rewrites every `LinearCrossEntropy` whose logits the graph already
/// computes; returns how many it rewrote.
pub(crate) fn reuse_materialized_logits(graph: &mut Graph) -> Result<usize> {
    let losses: Vec<NodeId> =
        graph.node_ids().into_iter().filter(|&n| matches!(graph.node(n).op, Op::LinearCrossEntropy { .. })).collect();
    let mut rewritten = 0;
    for id in losses {
        if let Some((logits, chain)) = find_logits(graph, id) {
            rewrite(graph, id, logits, &chain)?;
            rewritten += 1;
        }
    }
    if rewritten > 0 {
        // The loss's own row selection of the hidden states is dead now.
        graph.remove_dead_nodes();
        kiln_ir::infer_types(graph).map_err(|e| BackendError::Llvm(format!("re-typing after reusing logits: {e}")))?;
    }
    Ok(rewritten)
}

/// The logits value a `LinearCrossEntropy` node could read instead, and the
/// row-selecting nodes from the head's input to the loss's hidden states
/// (nearest the loss first).
fn find_logits(graph: &Graph, id: NodeId) -> Option<(ValueId, Vec<NodeId>)> {
    let node = graph.node(id);
    let Op::LinearCrossEntropy { transpose_weight, .. } = node.op else { return None };
    if node.input(3).is_some() {
        return None;
    }
    let (hidden, weight) = (node.input(0)?, node.input(1)?);
    // The head's right operand: the weight itself ([d, V]) or its 2-D
    // transpose ([V, d] stored, as tied embeddings are).
    let operands: Vec<ValueId> = if transpose_weight {
        graph
            .value(weight)
            .uses()
            .iter()
            .filter(|&&(n, _)| match &graph.node(n).op {
                Op::Transpose { perm } => perm.as_deref().is_none_or(|p| p == [1, 0]),
                _ => false,
            })
            .filter_map(|&(n, _)| graph.node(n).output(0))
            .collect()
    } else {
        vec![weight]
    };
    for b in operands {
        for &(m, slot) in graph.value(b).uses() {
            if slot != 1 || !matches!(graph.node(m).op, Op::MatMul) {
                continue;
            }
            let (Some(a), Some(logits)) = (graph.node(m).input(0), graph.node(m).output(0)) else { continue };
            let live = !graph.value(logits).uses().is_empty() || graph.outputs().contains(&logits);
            if !live {
                continue;
            }
            if let Some(chain) = row_selection(graph, a, hidden) {
                return Some((logits, chain));
            }
        }
    }
    None
}

/// The nodes taking `from` to `to` when each only selects or regroups rows
/// (keeps the last axis whole), nearest `to` first; `None` otherwise.
fn row_selection(graph: &Graph, from: ValueId, to: ValueId) -> Option<Vec<NodeId>> {
    const MAX_CHAIN: usize = 8;
    let mut chain = Vec::new();
    let mut v = to;
    while v != from {
        if chain.len() == MAX_CHAIN {
            return None;
        }
        let (p, _) = graph.value(v).producer()?;
        let node = graph.node(p);
        let input = node.input(0)?;
        let rank = graph.value(input).ty.as_ref()?.rank();
        let keeps_last_axis = match &node.op {
            Op::Identity => true,
            Op::Slice => {
                let starts = constant(graph, node.input(1)?)?;
                let axes = match node.input(3) {
                    Some(a) => constant(graph, a)?,
                    None => (0..starts.len() as i64).collect(),
                };
                axes.iter().all(|&a| a != rank as i64 - 1 && a != -1)
            }
            Op::Reshape { .. } => {
                let last = |x: ValueId| graph.value(x).ty.as_ref().and_then(|t| t.shape.last().cloned());
                let target = constant(graph, node.input(1)?)?;
                matches!((last(input), last(v)), (Some(Dim::Fixed(a)), Some(Dim::Fixed(b))) if a == b)
                    && target.last().is_some_and(|&t| t == -1 || t > 0)
            }
            _ => false,
        };
        if !keeps_last_axis {
            return None;
        }
        chain.push(p);
        v = input;
    }
    Some(chain)
}

/// The integer data of a constant value: an initializer or the output of
/// a `Constant` node.
fn constant(graph: &Graph, v: ValueId) -> Option<Vec<i64>> {
    if let Some(t) = &graph.value(v).initializer {
        return Some(t.to_i64s());
    }
    match graph.value(v).producer().map(|(p, _)| &graph.node(p).op) {
        Some(Op::Constant { value }) => Some(value.to_i64s()),
        _ => None,
    }
}

/// Replays `chain` on `logits` and replaces loss node `id` by
/// `CrossEntropy` over the result, producing the same output value.
fn rewrite(graph: &mut Graph, id: NodeId, logits: ValueId, chain: &[NodeId]) -> Result<()> {
    let ir = |e: kiln_ir::IrError| BackendError::Llvm(format!("reusing logits: {e}"));
    let vocab = match graph.value(logits).ty.as_ref().and_then(|t| t.shape.last().cloned()) {
        Some(Dim::Fixed(v)) => v as i64,
        _ => return Err(BackendError::Llvm("reusing logits: the vocabulary size is not static".into())),
    };
    let mut view = logits;
    for &p in chain.iter().rev() {
        let node = graph.node(p).clone();
        let mut inputs = node.inputs.clone();
        inputs[0] = Some(view);
        if let Op::Reshape { .. } = node.op {
            let shape_value = inputs[1].expect("row_selection checked the Reshape's shape input");
            let mut target = constant(graph, shape_value).expect("row_selection checked that it is constant");
            let last = target.len() - 1;
            if target[last] > 0 {
                target[last] = vocab;
            }
            let name = graph.fresh_value_name(&format!("{}.logits_shape", node.name));
            let shape = Tensor::from_i64s(DType::I64, &[target.len()], &target);
            inputs[1] = Some(graph.add_initializer(name, shape).map_err(ir)?);
        }
        let name = graph.fresh_node_name(&format!("{}.logits", node.name));
        let out = graph.fresh_value_name(&format!("{}.logits", node.name));
        let added = graph.add_node(name, node.op.clone(), inputs, &[&out]).map_err(ir)?;
        view = graph.node(added).output(0).expect("the node was added with one output");
    }
    let loss_node = graph.remove_node(id);
    let Op::LinearCrossEntropy { reduction, ignore_index, label_smoothing, z_loss, .. } = loss_node.op else {
        return Err(BackendError::Llvm(format!("reusing logits: `{}` is not a LinearCrossEntropy", loss_node.name)));
    };
    // LinearCrossEntropy(hidden, weight, labels, bias, class_weight) reads
    // its class weights where CrossEntropy(logits, labels, class_weight)
    // does, two slots later.
    let mut inputs = vec![Some(view), loss_node.input(2)];
    if let Some(class_weight) = loss_node.input(4) {
        inputs.push(Some(class_weight));
    }
    let op = Op::CrossEntropy { reduction, ignore_index, label_smoothing, z_loss };
    graph.add_node_with_outputs(loss_node.name.clone(), op, inputs, loss_node.outputs.clone()).map_err(ir)?;
    Ok(())
}
