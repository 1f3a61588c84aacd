//! The graph verifier: structural checks plus agreement of the stored types
//! with re-inference. Passes run it after rewriting; loaders run it after
//! [`crate::infer::infer_types`].

use crate::error::{IrError, Result};
use crate::graph::{Graph, ValueId};
use crate::infer::{self, compatible, State};
use crate::types::TensorType;
use std::collections::BTreeSet;

/// Checks that the graph is well formed:
///
/// - it is acyclic;
/// - graph inputs are listed once, typed, and not produced by a node;
///   initializers are not produced by a node and their type matches their
///   data;
/// - every node has an input and output count its op allows, with its
///   required inputs and outputs present;
/// - every node input is defined (a graph input, an initializer or a node
///   output) and typed, and every node output is typed;
/// - every graph output is defined and typed;
/// - the stored types agree with re-inference (same dtype and rank, no two
///   different fixed sizes).
///
/// Value and node names are unique by construction of [`Graph`].
pub fn verify(graph: &Graph) -> Result<()> {
    let order = graph.topo_order()?;
    let is_input: BTreeSet<ValueId> = graph.inputs().iter().copied().collect();
    if is_input.len() != graph.inputs().len() {
        let mut seen = BTreeSet::new();
        for &v in graph.inputs() {
            if !seen.insert(v) {
                return Err(IrError::value(&graph.value(v).name, "is listed more than once as a graph input"));
            }
        }
    }
    for &v in graph.inputs() {
        let val = graph.value(v);
        if let Some((n, _)) = val.producer() {
            let node = graph.node(n);
            return Err(IrError::value(
                &val.name,
                format!("is a graph input but node `{}` ({}) also produces it", node.name, node.op.name()),
            ));
        }
        if val.ty.is_none() {
            return Err(IrError::value(&val.name, "graph input has no type"));
        }
    }
    for (v, data) in graph.initializers() {
        let val = graph.value(v);
        if let Some((n, _)) = val.producer() {
            let node = graph.node(n);
            return Err(IrError::value(
                &val.name,
                format!("is an initializer but node `{}` ({}) also produces it", node.name, node.op.name()),
            ));
        }
        let data_ty = TensorType::fixed(data.dtype(), data.shape());
        match &val.ty {
            Some(ty) if *ty == data_ty => {}
            Some(ty) => {
                return Err(IrError::value(&val.name, format!("initializer data is {data_ty} but its type is {ty}")));
            }
            None => return Err(IrError::value(&val.name, "initializer has no type")),
        }
    }
    let defined = |v: ValueId| {
        let val = graph.value(v);
        val.producer().is_some() || val.initializer.is_some() || is_input.contains(&v)
    };
    for &id in &order {
        let node = graph.node(id);
        let err = |m: String| IrError::node(&node.name, node.op.name(), m);
        infer::check_arity(node)?;
        for (slot, v) in node.inputs.iter().enumerate() {
            let Some(v) = *v else { continue };
            let val = graph.value(v);
            if !defined(v) {
                return Err(err(format!(
                    "input {slot} `{}` is not defined: no node produces it and it is neither a graph input nor an initializer",
                    val.name
                )));
            }
            if val.ty.is_none() {
                return Err(err(format!("input {slot} `{}` has no type", val.name)));
            }
        }
        for (slot, v) in node.outputs.iter().enumerate() {
            let Some(v) = *v else { continue };
            let val = graph.value(v);
            if is_input.contains(&v) {
                return Err(err(format!("output {slot} `{}` is also a graph input", val.name)));
            }
            if val.ty.is_none() {
                return Err(err(format!("output {slot} `{}` has no type", val.name)));
            }
        }
    }
    for &v in graph.outputs() {
        let val = graph.value(v);
        if !defined(v) {
            return Err(IrError::value(
                &val.name,
                "graph output is not defined: no node produces it and it is neither a graph input nor an initializer",
            ));
        }
        if val.ty.is_none() {
            return Err(IrError::value(&val.name, "graph output has no type"));
        }
    }
    let mut state = State::new(graph);
    for &id in &order {
        let node = graph.node(id);
        let inferred = state.infer(graph, id)?;
        for (slot, ty) in inferred.into_iter().enumerate() {
            let (Some(v), Some(ty)) = (node.output(slot), ty) else { continue };
            let val = graph.value(v);
            let stored = val.ty.as_ref().expect("outputs were checked to be typed");
            if !compatible(stored, &ty) {
                return Err(IrError::node(
                    &node.name,
                    node.op.name(),
                    format!("output {slot} `{}` has type {stored} but inference gives {ty}", val.name),
                ));
            }
        }
    }
    Ok(())
}
