//! The reference interpreter: the oracle that rewrites and backends are
//! checked against. Correctness beats speed, but it must run GPT-2-small-sized
//! graphs in seconds.
//!
//! [`eval_op`] evaluates one op on concrete tensors; [`run`] evaluates a graph.
//! Kernels are grouped by topic in submodules, each with an `eval` entry
//! point that the dispatcher below calls by op.
//!
//! [`run`] checks the caller's inputs against the graph's declared input
//! types, evaluates nodes in [`Graph::topo_order`], drops every intermediate
//! right after its last reader (so a GPT-2-sized graph holds only the live
//! activations), and checks each result against its declared type when
//! there is one: the interpreter is an oracle, so a kernel or a type
//! disagreeing with the graph is reported, not passed on.

mod elementwise;
mod linalg;
mod movement;
mod nn;
mod quant;
mod reduce;
mod util;

use crate::dim::Dim;
use crate::error::{IrError, Result};
use crate::graph::{Graph, ValueId};
use crate::op::Op;
use crate::tensor::Tensor;
use crate::types::TensorType;
use std::collections::BTreeMap;

/// Options for [`run_with`].
pub struct RunOptions<'a> {
    /// Called after each node with (nodes evaluated, total nodes).
    pub progress: Option<&'a dyn Fn(usize, usize)>,
    /// Check every node result against its value's declared type (dtype,
    /// rank, fixed dims, and symbolic dims bound by the inputs). On by
    /// default.
    pub check_types: bool,
}

impl Default for RunOptions<'_> {
    fn default() -> Self {
        RunOptions { progress: None, check_types: true }
    }
}

/// Evaluates `graph` on named input tensors; see [`run_with`].
pub fn run(graph: &Graph, inputs: &[(String, Tensor)]) -> Result<Vec<(String, Tensor)>> {
    run_with(graph, inputs, &RunOptions::default())
}

/// Evaluates `graph` on named input tensors and returns the graph outputs,
/// in graph-output order, named as the graph names them.
///
/// Every graph input without an initializer must be given; an input that
/// has an initializer defaults to it and may be overridden. Names that are
/// not graph inputs, repeated names, and tensors whose dtype, rank or dims
/// contradict the declared input type are [`IrError::Value`] errors; a
/// symbolic dim (`batch`) must take one size across all inputs. A kernel
/// failure is an [`IrError::Node`] naming the node and op.
pub fn run_with(graph: &Graph, inputs: &[(String, Tensor)], opts: &RunOptions) -> Result<Vec<(String, Tensor)>> {
    let mut env: Vec<Option<Tensor>> = vec![None; graph.value_ids().count()];
    for (id, t) in graph.initializers() {
        env[id.index()] = Some(t.clone());
    }
    let mut bindings: BTreeMap<String, i64> = BTreeMap::new();
    bind_inputs(graph, inputs, &mut env, &mut bindings)?;

    // Readers left per value; graph outputs are never freed.
    let mut readers_left: Vec<usize> = graph.value_ids().map(|v| graph.value(v).uses().len()).collect();
    let mut is_output = vec![false; env.len()];
    for &o in graph.outputs() {
        is_output[o.index()] = true;
    }

    let order = graph.topo_order()?;
    let total = order.len();
    for (done, id) in order.into_iter().enumerate() {
        let node = graph.node(id);
        let mut args = Vec::with_capacity(node.inputs.len());
        for v in &node.inputs {
            args.push(match v {
                None => None,
                Some(v) => Some(env[v.index()].clone().ok_or_else(|| {
                    IrError::node(
                        &node.name,
                        node.op.name(),
                        format!(
                            "input `{}` has no value (no producer, initializer or graph input)",
                            graph.value(*v).name
                        ),
                    )
                })?),
            });
        }
        let results = eval_op(&node.op, &args, node.outputs.len())
            .map_err(|message| IrError::node(&node.name, node.op.name(), message))?;
        drop(args);
        for (slot, result) in results.into_iter().enumerate() {
            let Some(v) = node.output(slot) else { continue };
            if let (Some(t), Some(ty), true) = (&result, &graph.value(v).ty, opts.check_types) {
                check_type(t, ty, &bindings).map_err(|m| {
                    IrError::node(&node.name, node.op.name(), format!("output `{}`: {m}", graph.value(v).name))
                })?;
            }
            if readers_left[v.index()] > 0 || is_output[v.index()] {
                env[v.index()] = result;
            }
        }
        for v in node.inputs.iter().flatten() {
            let left = &mut readers_left[v.index()];
            *left = left.saturating_sub(1);
            if *left == 0 && !is_output[v.index()] {
                env[v.index()] = None;
            }
        }
        if let Some(progress) = opts.progress {
            progress(done + 1, total);
        }
    }

    graph
        .outputs()
        .iter()
        .map(|&o| {
            let name = graph.value(o).name.clone();
            match &env[o.index()] {
                Some(t) => Ok((name, t.clone())),
                None => Err(IrError::value(name, "graph output was not computed (an omitted optional output?)")),
            }
        })
        .collect()
}

/// Places the caller's inputs into `env`, checking them against the
/// declared input types and binding symbolic dims.
fn bind_inputs(
    graph: &Graph,
    inputs: &[(String, Tensor)],
    env: &mut [Option<Tensor>],
    bindings: &mut BTreeMap<String, i64>,
) -> Result<()> {
    let mut given = vec![false; env.len()];
    for (name, t) in inputs {
        let v = graph
            .value_by_name(name)
            .filter(|v| graph.inputs().contains(v))
            .ok_or_else(|| IrError::value(name, "is not an input of the graph"))?;
        if std::mem::replace(&mut given[v.index()], true) {
            return Err(IrError::value(name, "is given more than once"));
        }
        if let Some(ty) = &graph.value(v).ty {
            bind_dims(t, ty, bindings).map_err(|m| IrError::value(name, m))?;
        }
        env[v.index()] = Some(t.clone());
    }
    for &v in graph.inputs() {
        if env[v.index()].is_none() {
            return Err(IrError::value(&graph.value(v).name, "graph input is missing"));
        }
    }
    // Dims like `seq+1` can only be checked once every symbol is bound.
    for &v in graph.inputs() {
        if let (Some(ty), Some(t)) = (&graph.value(v).ty, &env[v.index()]) {
            check_type(t, ty, bindings).map_err(|m| IrError::value(&graph.value(v).name, m))?;
        }
    }
    Ok(())
}

/// Binds every dim of `ty` that is a lone symbol to the tensor's size,
/// failing on a size that contradicts an earlier binding or a fixed dim.
fn bind_dims(t: &Tensor, ty: &TensorType, bindings: &mut BTreeMap<String, i64>) -> std::result::Result<(), String> {
    check_dtype_rank(t, ty)?;
    for (i, (d, &n)) in ty.shape.iter().zip(t.shape()).enumerate() {
        let Dim::Sym(p) = d else { continue };
        let symbols = p.symbols();
        let [name] = symbols.as_slice() else { continue };
        if *d != Dim::sym(name) {
            continue;
        }
        let bound = *bindings.entry(name.to_string()).or_insert(n as i64);
        if bound != n as i64 {
            return Err(format!("dim {i} is {n}, but `{name}` is {bound} in another input"));
        }
    }
    Ok(())
}

fn check_dtype_rank(t: &Tensor, ty: &TensorType) -> std::result::Result<(), String> {
    if t.dtype() != ty.dtype {
        return Err(format!("dtype is {}, but {} is declared", t.dtype(), ty));
    }
    if t.shape().len() != ty.rank() {
        return Err(format!("shape {:?} has rank {}, but {} is declared", t.shape(), t.shape().len(), ty));
    }
    Ok(())
}

/// Checks a tensor against a declared type: dtype, rank, and every dim that
/// is fixed or evaluates under `bindings`.
fn check_type(t: &Tensor, ty: &TensorType, bindings: &BTreeMap<String, i64>) -> std::result::Result<(), String> {
    check_dtype_rank(t, ty)?;
    let lookup = |s: &str| bindings.get(s).copied();
    for (i, (d, &n)) in ty.shape.iter().zip(t.shape()).enumerate() {
        if let Some(want) = d.eval(&lookup) {
            if want != n as i64 {
                return Err(format!("shape {:?} differs from the declared {} at dim {i}", t.shape(), ty));
            }
        }
    }
    Ok(())
}

/// The ids of a graph's values that `run` needs from the caller: graph
/// inputs without an initializer.
pub fn required_inputs(graph: &Graph) -> Vec<ValueId> {
    graph.inputs().iter().copied().filter(|&v| graph.value(v).initializer.is_none()).collect()
}

/// Evaluates one op. `inputs` has `None` for omitted optional inputs;
/// `num_outputs` is how many outputs the node declares (optional trailing
/// outputs may be computed or not; the result has exactly `num_outputs`
/// entries, `None` where an output is not produced).
///
/// Errors are plain messages; the caller wraps them with the node and op.
pub fn eval_op(op: &Op, inputs: &[Option<Tensor>], num_outputs: usize) -> Result<Vec<Option<Tensor>>, String> {
    let mut out = match op {
        Op::Unary(_)
        | Op::Binary(_)
        | Op::Variadic(_)
        | Op::Mod { .. }
        | Op::Clip
        | Op::Where
        | Op::Gelu { .. }
        | Op::LeakyRelu { .. }
        | Op::Elu { .. }
        | Op::HardSigmoid { .. }
        | Op::IsInf { .. } => elementwise::eval(op, inputs)?,
        Op::MatMul | Op::Gemm(_) | Op::MatMulInteger | Op::QLinearMatMul => linalg::eval(op, inputs)?,
        Op::Reduce { .. } | Op::ArgReduce { .. } | Op::TopK { .. } | Op::CumSum { .. } => reduce::eval(op, inputs)?,
        Op::Softmax { .. }
        | Op::LogSoftmax { .. }
        | Op::LayerNormalization { .. }
        | Op::RMSNormalization { .. }
        | Op::RotaryEmbedding { .. }
        | Op::Attention(_)
        | Op::LinearAttention(_)
        | Op::SoftmaxCrossEntropyLoss { .. }
        | Op::NegativeLogLikelihoodLoss { .. }
        | Op::CrossEntropy { .. }
        | Op::LinearCrossEntropy { .. } => nn::eval(op, inputs, num_outputs)?,
        Op::QuantizeLinear { .. } | Op::DequantizeLinear { .. } | Op::DynamicQuantizeLinear => quant::eval(op, inputs)?,
        Op::Transpose { .. }
        | Op::Reshape { .. }
        | Op::Flatten { .. }
        | Op::Squeeze
        | Op::Unsqueeze
        | Op::Concat { .. }
        | Op::Split { .. }
        | Op::Slice
        | Op::Gather { .. }
        | Op::GatherElements { .. }
        | Op::GatherND { .. }
        | Op::ScatterND { .. }
        | Op::Expand
        | Op::Tile
        | Op::Pad { .. }
        | Op::Cast { .. }
        | Op::CastLike { .. }
        | Op::Shape { .. }
        | Op::Size
        | Op::ConstantOfShape { .. }
        | Op::Range
        | Op::Trilu { .. }
        | Op::Constant { .. }
        | Op::Identity
        | Op::Dropout { .. }
        | Op::OneHot { .. }
        | Op::NonZero => movement::eval(op, inputs, num_outputs)?,
    };
    out.resize(num_outputs, None);
    Ok(out)
}
