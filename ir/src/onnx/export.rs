//! Writing kiln graphs as ONNX models.
//!
//! The exporter picks the default-domain opset as the graph's own
//! (`opset_imports[""]`, 13 when absent) raised to what every node needs, and
//! writes each op in that opset's form: an IR input that was an attribute in
//! that opset is folded back into the attribute when it is an initializer
//! (Squeeze `axes` before 13, Dropout `ratio` before 12, ...), Reduce `axes`
//! is an attribute below opset 18 (13 for ReduceSum) and an initializer input
//! from there on, and Split states `num_outputs` from 18. An op that cannot
//! be written at the chosen opset raises it; nothing is ever silently changed
//! in meaning.
//!
//! Graph inputs and outputs must have types (run type inference first);
//! other values' known types are written as `value_info`. Initializers are
//! `raw_data` (4-bit types packed), or, when their total size is over the
//! threshold, a file `<model file name>.data` next to the model with each
//! tensor at an offset aligned to
//! [`EXTERNAL_DATA_ALIGNMENT`](crate::onnx::external::EXTERNAL_DATA_ALIGNMENT).

use crate::attr::Attr;
use crate::dim::Dim;
use crate::error::{IrError, Result};
use crate::graph::{Graph, NodeId, ValueId};
use crate::onnx::external::ExternalWriter;
use crate::onnx::forms::{self, MovedKind};
use crate::onnx::proto::{
    self, attribute_proto::AttributeType, tensor_proto::DataLocation, tensor_shape_proto, type_proto,
};
use crate::op::{BinaryOp, Op, UnaryOp, ONNX_DOMAIN};
use crate::tensor::Tensor;
use crate::types::TensorType;
use prost::Message;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Total initializer bytes above which [`save_model`] moves weights to an
/// external data file. Protobuf messages cannot exceed 2 GiB; this leaves
/// room for the graph itself.
pub const DEFAULT_EXTERNAL_DATA_THRESHOLD: usize = 2_000_000_000;

/// Initializers smaller than this stay inline even when the others go to the
/// external data file: shapes, axes and scalars are more useful in the model
/// itself, and tools can read them without the data file.
const EXTERNAL_MIN_TENSOR_BYTES: usize = 1024;

/// The default-domain opset for graphs that do not say which they follow:
/// the oldest whose op forms match the IR's for most ops.
const DEFAULT_OPSET: i64 = 13;

/// Options for [`save_model_with`].
#[derive(Clone, Debug, Default)]
pub struct ExportOptions {
    /// Move initializers to `<model file name>.data` when their total size
    /// exceeds this many bytes; [`DEFAULT_EXTERNAL_DATA_THRESHOLD`] when
    /// `None`. `Some(0)` externalizes every initializer of at least 1 KiB.
    pub external_data_threshold: Option<usize>,
}

/// Serializes a graph as an ONNX model with all weights inline. Fails for
/// models over the 2 GiB protobuf limit; use [`save_model`] for those.
pub fn model_to_bytes(graph: &Graph) -> Result<Vec<u8>> {
    let model = build_model(graph, &mut |name, t| Ok(tensor_to_proto(name, t)))?;
    check_size(&model)?;
    Ok(model.encode_to_vec())
}

/// Writes a graph as an ONNX model file, with an external data file when the
/// weights exceed [`DEFAULT_EXTERNAL_DATA_THRESHOLD`].
pub fn save_model(graph: &Graph, path: &Path) -> Result<()> {
    save_model_with(graph, path, ExportOptions::default())
}

/// Writes a graph as an ONNX model file with the given options.
pub fn save_model_with(graph: &Graph, path: &Path, opts: ExportOptions) -> Result<()> {
    let threshold = opts.external_data_threshold.unwrap_or(DEFAULT_EXTERNAL_DATA_THRESHOLD);
    let total: usize = graph.initializers().map(|(_, t)| t.storage_bytes()).sum();
    let model = if total > threshold {
        let file_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| IrError::Model(format!("cannot name an external data file after `{}`", path.display())))?;
        let location = format!("{file_name}.data");
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let mut writer = ExternalWriter::create(dir, &location)?;
        let model = build_model(graph, &mut |name, t| {
            if t.storage_bytes() < EXTERNAL_MIN_TENSOR_BYTES {
                return Ok(tensor_to_proto(name, t));
            }
            let loc = writer.append(&t.to_raw_le())?;
            let mut p = tensor_to_proto(name, t);
            p.raw_data = None;
            p.data_location = Some(DataLocation::External as i32);
            p.external_data = loc.to_entries();
            Ok(p)
        })?;
        writer.finish()?;
        model
    } else {
        build_model(graph, &mut |name, t| Ok(tensor_to_proto(name, t)))?
    };
    check_size(&model)?;
    std::fs::write(path, model.encode_to_vec()).map_err(|source| IrError::Io { path: path.to_path_buf(), source })
}

/// A tensor as a `TensorProto` with `raw_data`.
pub fn tensor_to_proto(name: &str, t: &Tensor) -> proto::TensorProto {
    proto::TensorProto {
        dims: t.shape().iter().map(|&d| d as i64).collect(),
        data_type: Some(t.dtype().onnx_code()),
        name: (!name.is_empty()).then(|| name.to_string()),
        raw_data: Some(t.to_raw_le()),
        ..Default::default()
    }
}

/// Writes one tensor as a serialized `TensorProto` file, the format of the
/// ONNX test data directories.
pub fn write_tensor_pb(path: &Path, name: &str, t: &Tensor) -> Result<()> {
    std::fs::write(path, tensor_to_proto(name, t).encode_to_vec())
        .map_err(|source| IrError::Io { path: path.to_path_buf(), source })
}

fn check_size(model: &proto::ModelProto) -> Result<()> {
    let len = model.encoded_len();
    if len > i32::MAX as usize {
        return Err(IrError::Model(format!(
            "the model is {len} bytes, over the 2 GiB protobuf limit; save it with external data (save_model_with)"
        )));
    }
    Ok(())
}

/// The default-domain opset the exporter writes for this graph: the graph's
/// own, raised to the newest that any node needs.
pub fn export_opset(graph: &Graph) -> Result<i64> {
    let mut opset = graph.opset_imports.get(ONNX_DOMAIN).copied().unwrap_or(DEFAULT_OPSET);
    loop {
        if opset > forms::MAX_OPSET {
            return Err(IrError::Model(format!(
                "the graph needs default-domain opset {opset}, newer than the newest kiln writes ({})",
                forms::MAX_OPSET
            )));
        }
        let mut need = opset;
        for id in graph.node_ids() {
            match node_form(graph, id, opset) {
                Ok(_) => {}
                Err(FormError::NeedOpset(v)) if v > opset => need = need.max(v),
                Err(FormError::NeedOpset(v)) => {
                    let node = graph.node(id);
                    return Err(IrError::node(
                        &node.name,
                        node.op.name(),
                        format!("cannot be written at opset {opset} (asks for {v})"),
                    ));
                }
                Err(FormError::Ir(e)) => return Err(e),
            }
        }
        if need == opset {
            return Ok(opset);
        }
        opset = need;
    }
}

// ---------------------------------------------------------------------------
// Per-opset node forms
// ---------------------------------------------------------------------------

enum FormError {
    /// The node cannot be written below this opset.
    NeedOpset(i64),
    /// The node cannot be written at all.
    Ir(IrError),
}

impl From<IrError> for FormError {
    fn from(e: IrError) -> FormError {
        FormError::Ir(e)
    }
}

/// One input of a node as written.
enum FormInput {
    Absent,
    Value(ValueId),
    /// A new initializer, named after `base`.
    New {
        base: String,
        tensor: Tensor,
    },
}

/// A node as ONNX at one opset sees it.
struct NodeForm {
    inputs: Vec<FormInput>,
    attrs: Vec<(String, Attr)>,
    /// Initializers this node reads only through attributes at this opset.
    folded: Vec<ValueId>,
}

/// The first default-domain opset where an op's ONNX form can express the
/// IR op, before the per-node rules in [`node_form`].
fn op_min_opset(op: &Op) -> i64 {
    match op {
        Op::MatMul => 1,
        Op::Gemm(_) => 7,
        Op::MatMulInteger | Op::QLinearMatMul => 10,
        Op::Unary(u) => match u {
            UnaryOp::Erf | UnaryOp::Sign | UnaryOp::IsNaN => 9,
            UnaryOp::Sin | UnaryOp::Cos => 7,
            UnaryOp::Round => 11,
            UnaryOp::HardSwish => 14,
            _ => 1,
        },
        // Numpy broadcasting arrived in opset 7 (8 for the variadic ops).
        Op::Binary(b) => match b {
            BinaryOp::LessOrEqual | BinaryOp::GreaterOrEqual => 12,
            _ => 7,
        },
        Op::Variadic(_) => 8,
        Op::Mod { .. } => 10,
        Op::Clip => 6,
        Op::Where => 9,
        Op::Gelu { .. } => 20,
        Op::LeakyRelu { .. } | Op::Elu { .. } | Op::HardSigmoid { .. } => 6,
        Op::IsInf { .. } => 10,
        Op::Softmax { .. } | Op::LogSoftmax { .. } => 1,
        Op::LayerNormalization { .. } => 17,
        Op::RMSNormalization { .. } | Op::RotaryEmbedding { .. } | Op::Attention(_) => 23,
        Op::LinearAttention(_) => 27,
        Op::Reduce { .. } | Op::ArgReduce { .. } | Op::TopK { .. } => 1,
        Op::CumSum { .. } => 11,
        Op::Transpose { .. } | Op::Reshape { .. } | Op::Flatten { .. } => 1,
        Op::Squeeze | Op::Unsqueeze => 1,
        Op::Concat { .. } => 4,
        Op::Split { .. } => 2,
        Op::Slice | Op::Gather { .. } => 1,
        Op::GatherElements { .. } | Op::GatherND { .. } | Op::ScatterND { .. } => 11,
        Op::Expand => 8,
        Op::Tile => 6,
        Op::Pad { .. } => 2,
        Op::Cast { .. } => 6,
        Op::CastLike { .. } => 15,
        Op::Shape { .. } | Op::Size => 1,
        Op::ConstantOfShape { .. } => 9,
        Op::Range => 11,
        Op::Trilu { .. } => 14,
        Op::Constant { .. } | Op::Identity => 1,
        Op::Dropout { .. } => 7,
        Op::OneHot { .. } | Op::NonZero => 9,
        Op::SoftmaxCrossEntropyLoss { .. } | Op::NegativeLogLikelihoodLoss { .. } => 12,
        // kiln-domain ops carry no default-domain requirement of their own.
        Op::CrossEntropy { .. } | Op::LinearCrossEntropy { .. } => 1,
        Op::QuantizeLinear { .. } | Op::DequantizeLinear { .. } => 10,
        Op::DynamicQuantizeLinear => 11,
    }
}

/// Ops whose `axis`/`axes` accept negative values only from opset 11.
const NEGATIVE_AXES_SINCE_11: &[&str] = &[
    "Flatten",
    "Concat",
    "Squeeze",
    "Unsqueeze",
    "Split",
    "Slice",
    "Gather",
    "ArgMax",
    "ArgMin",
    "TopK",
    "OneHot",
    "ReduceSum",
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
    "Softmax",
    "LogSoftmax",
];

/// An initializer's data as an attribute of the given kind, when it has the
/// right type and size.
fn fold(graph: &Graph, v: ValueId, kind: MovedKind) -> Option<Attr> {
    let t = graph.value(v).initializer.as_ref()?;
    let is_int = t.dtype().is_integer();
    match kind {
        MovedKind::Ints if is_int && t.shape().len() <= 1 => Some(Attr::Ints(t.to_i64s())),
        MovedKind::IntAsVector if is_int && t.len() == 1 => Some(Attr::Int(t.to_i64s()[0])),
        MovedKind::F32Scalar | MovedKind::ScalarLikeInput if t.dtype().is_float() && t.len() == 1 => {
            Some(Attr::Float(t.to_f64s()[0] as f32))
        }
        _ => None,
    }
}

fn remove_attr(attrs: &mut Vec<(String, Attr)>, name: &str) -> Option<Attr> {
    let i = attrs.iter().position(|(n, _)| n == name)?;
    Some(attrs.remove(i).1)
}

/// How node `id` is written at `opset`, or the opset it needs.
fn node_form(graph: &Graph, id: NodeId, opset: i64) -> Result<NodeForm, FormError> {
    let node = graph.node(id);
    let op = &node.op;
    let op_type = op.name();
    let need = |v: i64| if opset < v { Err(FormError::NeedOpset(v)) } else { Ok(()) };
    let invalid = |m: String| FormError::Ir(IrError::node(&node.name, op_type, m));

    let mut attrs: Vec<(String, Attr)> = op.attrs().into_iter().map(|(n, a)| (n.to_string(), a)).collect();
    let mut inputs: Vec<FormInput> =
        node.inputs.iter().map(|i| i.map_or(FormInput::Absent, FormInput::Value)).collect();
    let mut folded = Vec::new();
    if op.domain() != ONNX_DOMAIN {
        return Ok(NodeForm { inputs, attrs, folded });
    }
    need(op_min_opset(op))?;

    // `saturate` only affects float8 conversions, which kiln's types never
    // do, so older opsets simply omit it.
    if opset < 19 {
        remove_attr(&mut attrs, "saturate");
    }
    for (name, _) in &attrs {
        if name == "num_outputs" {
            continue; // Split's own rule below
        }
        if let Some(since) = forms::attr_since(op_type, name) {
            need(since)?;
        }
    }

    match op {
        Op::Reduce { axes, noop_with_empty_axes, .. } => {
            let since = forms::reduce_axes_input_since(op_type);
            if *noop_with_empty_axes {
                need(since)?;
            }
            if opset >= since {
                if let Some(axes) = axes {
                    remove_attr(&mut attrs, "axes");
                    if node.input(1).is_some() {
                        return Err(invalid("has axes both as attribute and as input 1".into()));
                    }
                    inputs.resize_with(inputs.len().max(2), || FormInput::Absent);
                    inputs[1] = FormInput::New { base: format!("{}.axes", node.name), tensor: Tensor::vec_i64(axes) };
                }
            } else if let Some(v) = node.input(1) {
                match fold(graph, v, MovedKind::Ints) {
                    Some(a) if axes.is_none() => {
                        attrs.push(("axes".into(), a));
                        inputs[1] = FormInput::Absent;
                        folded.push(v);
                    }
                    _ => need(since)?,
                }
            }
        }
        Op::Split { axis, num_outputs } => {
            let parts = node.outputs.len() as i64;
            if let Some(n) = num_outputs {
                if *n != parts {
                    return Err(invalid(format!("num_outputs is {n} but the node has {parts} outputs")));
                }
            }
            if opset < 18 {
                remove_attr(&mut attrs, "num_outputs");
                // Before 18, a Split without sizes must divide evenly.
                if node.input(1).is_none() && num_outputs.is_some() {
                    let dim = node.input(0).and_then(|x| graph.value(x).ty.clone()).and_then(|t| {
                        let r = t.rank() as i64;
                        let a = if *axis < 0 { axis + r } else { *axis };
                        usize::try_from(a).ok().and_then(|a| t.shape.get(a).and_then(Dim::fixed))
                    });
                    if dim.is_some_and(|d| parts > 0 && d % parts as u64 != 0) {
                        need(18)?;
                    }
                }
            } else if node.input(1).is_none() && num_outputs.is_none() {
                attrs.push(("num_outputs".into(), Attr::Int(parts)));
            }
        }
        Op::Softmax { axis } | Op::LogSoftmax { axis } if opset < 13 => {
            // Older Softmax flattens at `axis`; that agrees with the IR only
            // when `axis` is the last axis, which needs the rank.
            let rank = node.input(0).and_then(|x| graph.value(x).ty.as_ref()).map(|t| t.rank() as i64);
            match rank {
                Some(r) if r > 0 && (*axis == r - 1 || *axis == -1) => {
                    // Always explicit: the old default axis is 1, not -1.
                    // Negative axes are valid from opset 11.
                    remove_attr(&mut attrs, "axis");
                    attrs.push(("axis".into(), Attr::Int(if opset >= 11 { *axis } else { r - 1 })));
                }
                _ => need(13)?,
            }
        }
        Op::ScatterND { reduction } if reduction == "max" || reduction == "min" => need(18)?,
        Op::Pad { mode } => {
            if mode == "wrap" {
                need(19)?;
            }
            if node.input(3).is_some() {
                need(18)?;
            }
        }
        Op::Attention(_) if node.input(6).is_some() => need(24)?,
        Op::Gemm(_) if node.input(2).is_none() => need(11)?,
        Op::Slice if node.input(4).is_some() => need(10)?,
        Op::Dropout { .. } if node.input(2).is_some() => need(12)?,
        _ => {}
    }

    for m in forms::moved_attrs(op_type) {
        if opset >= m.input_since {
            continue;
        }
        let Some(v) = node.input(m.slot) else { continue };
        match fold(graph, v, m.kind) {
            Some(a) => {
                attrs.push((m.attr.to_string(), a));
                inputs[m.slot] = FormInput::Absent;
                folded.push(v);
            }
            None => need(m.input_since)?,
        }
    }

    if opset < 11 && NEGATIVE_AXES_SINCE_11.contains(&op_type) {
        let negative = attrs.iter().any(|(n, a)| {
            (n == "axis" || n == "axes")
                && match a {
                    Attr::Int(v) => *v < 0,
                    Attr::Ints(v) => v.iter().any(|&x| x < 0),
                    _ => false,
                }
        });
        if negative {
            need(11)?;
        }
    }
    while matches!(inputs.last(), Some(FormInput::Absent)) {
        inputs.pop();
    }
    Ok(NodeForm { inputs, attrs, folded })
}

// ---------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------

fn dim_proto(d: &Dim) -> tensor_shape_proto::Dimension {
    let value = match d {
        Dim::Fixed(n) => tensor_shape_proto::dimension::Value::DimValue(*n as i64),
        Dim::Sym(p) => tensor_shape_proto::dimension::Value::DimParam(p.to_string()),
    };
    tensor_shape_proto::Dimension { value: Some(value), denotation: None }
}

fn value_info(name: &str, ty: &TensorType) -> proto::ValueInfoProto {
    proto::ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(proto::TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(ty.dtype.onnx_code()),
                shape: Some(proto::TensorShapeProto { dim: ty.shape.iter().map(dim_proto).collect() }),
            })),
            denotation: None,
        }),
        ..Default::default()
    }
}

fn attr_to_proto(name: &str, a: &Attr) -> proto::AttributeProto {
    let mut p = proto::AttributeProto { name: Some(name.to_string()), ..Default::default() };
    let ty = match a {
        Attr::Int(v) => {
            p.i = Some(*v);
            AttributeType::Int
        }
        Attr::DType(d) => {
            p.i = Some(d.onnx_code() as i64);
            AttributeType::Int
        }
        Attr::Float(v) => {
            p.f = Some(*v);
            AttributeType::Float
        }
        Attr::String(s) => {
            p.s = Some(s.as_bytes().to_vec());
            AttributeType::String
        }
        Attr::Ints(v) => {
            p.ints = v.clone();
            AttributeType::Ints
        }
        Attr::Floats(v) => {
            p.floats = v.clone();
            AttributeType::Floats
        }
        Attr::Tensor(t) => {
            p.t = Some(tensor_to_proto("", t));
            AttributeType::Tensor
        }
    };
    p.r#type = Some(ty as i32);
    p
}

/// Value names for new initializers, unique against the graph's.
struct Names<'g> {
    graph: &'g Graph,
    taken: BTreeSet<String>,
}

impl Names<'_> {
    fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut k = 1;
        while self.graph.value_by_name(&name).is_some() || !self.taken.insert(name.clone()) {
            name = format!("{base}.{k}");
            k += 1;
        }
        name
    }
}

type TensorSink<'a> = dyn FnMut(&str, &Tensor) -> Result<proto::TensorProto> + 'a;

fn build_model(graph: &Graph, sink: &mut TensorSink<'_>) -> Result<proto::ModelProto> {
    let opset = export_opset(graph)?;
    let order = graph.topo_order()?;
    let is_input: BTreeSet<ValueId> = graph.inputs().iter().copied().collect();
    let is_output: BTreeSet<ValueId> = graph.outputs().iter().copied().collect();
    let mut names = Names { graph, taken: BTreeSet::new() };
    let mut nodes = Vec::with_capacity(order.len());
    let mut new_initializers = Vec::new();
    let mut folded_uses: BTreeMap<ValueId, usize> = BTreeMap::new();

    for id in order {
        let node = graph.node(id);
        let form = match node_form(graph, id, opset) {
            Ok(f) => f,
            Err(FormError::Ir(e)) => return Err(e),
            Err(FormError::NeedOpset(v)) => {
                return Err(IrError::node(
                    &node.name,
                    node.op.name(),
                    format!("cannot be written at opset {opset} (needs {v})"),
                ))
            }
        };
        for v in &form.folded {
            *folded_uses.entry(*v).or_default() += 1;
        }
        let mut input_names = Vec::with_capacity(form.inputs.len());
        for (slot, input) in form.inputs.into_iter().enumerate() {
            input_names.push(match input {
                FormInput::Absent => String::new(),
                FormInput::Value(v) => {
                    let val = graph.value(v);
                    if val.producer().is_none() && val.initializer.is_none() && !is_input.contains(&v) {
                        return Err(IrError::node(
                            &node.name,
                            node.op.name(),
                            format!("input {slot} `{}` is not defined by any node, input or initializer", val.name),
                        ));
                    }
                    val.name.clone()
                }
                FormInput::New { base, tensor } => {
                    let name = names.fresh(&base);
                    new_initializers.push(sink(&name, &tensor)?);
                    name
                }
            });
        }
        let mut output_names: Vec<String> =
            node.outputs.iter().map(|o| o.map_or_else(String::new, |v| graph.value(v).name.clone())).collect();
        while output_names.last().is_some_and(String::is_empty) {
            output_names.pop();
        }
        nodes.push(proto::NodeProto {
            input: input_names,
            output: output_names,
            name: Some(node.name.clone()),
            op_type: Some(node.op.name().to_string()),
            domain: (!node.op.domain().is_empty()).then(|| node.op.domain().to_string()),
            attribute: form.attrs.iter().map(|(n, a)| attr_to_proto(n, a)).collect(),
            ..Default::default()
        });
    }

    let mut initializers = Vec::new();
    for (v, t) in graph.initializers() {
        let val = graph.value(v);
        let all_folded = folded_uses.get(&v).is_some_and(|&n| n == val.uses().len());
        if all_folded && !is_output.contains(&v) {
            continue;
        }
        initializers.push(sink(&val.name, t)?);
    }
    initializers.extend(new_initializers);

    let typed = |v: ValueId, what: &str| -> Result<proto::ValueInfoProto> {
        let val = graph.value(v);
        let ty = val.ty.as_ref().ok_or_else(|| {
            IrError::value(
                &val.name,
                format!("{what} has no type; run type inference (kiln_ir::infer::infer_types) before exporting"),
            )
        })?;
        Ok(value_info(&val.name, ty))
    };
    let inputs = graph.inputs().iter().map(|&v| typed(v, "graph input")).collect::<Result<Vec<_>>>()?;
    let outputs = graph.outputs().iter().map(|&v| typed(v, "graph output")).collect::<Result<Vec<_>>>()?;
    let value_infos = graph
        .value_ids()
        .filter(|v| !is_output.contains(v) && graph.value(*v).producer().is_some())
        .filter_map(|v| graph.value(v).ty.as_ref().map(|ty| value_info(&graph.value(v).name, ty)))
        .collect();

    // Every domain a node uses needs an opset import; kiln's own ops have
    // one version so far.
    let mut domains: BTreeMap<String, i64> = graph.opset_imports.clone();
    for id in graph.node_ids() {
        domains.entry(graph.node(id).op.domain().to_string()).or_insert(1);
    }
    domains.insert(ONNX_DOMAIN.to_string(), opset);
    let opset_import = domains
        .into_iter()
        .map(|(domain, version)| proto::OperatorSetIdProto { domain: Some(domain), version: Some(version) })
        .collect();
    Ok(proto::ModelProto {
        ir_version: Some(forms::ir_version_for_opset(opset)),
        opset_import,
        producer_name: Some("kiln".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        graph: Some(proto::GraphProto {
            node: nodes,
            name: Some(if graph.name.is_empty() { "main".to_string() } else { graph.name.clone() }),
            initializer: initializers,
            input: inputs,
            output: outputs,
            value_info: value_infos,
            ..Default::default()
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::onnx::import::{import_model_bytes, tensor_from_proto, ImportOptions};
    use crate::op::ReduceKind;

    #[test]
    fn every_dtype_survives_a_tensor_proto() {
        for d in DType::ALL {
            // Odd length, so the packed 4-bit types end in half a byte.
            let t = Tensor::from_i64s(d, &[3], &[1, 0, -3]);
            let back = tensor_from_proto(&tensor_to_proto("t", &t), None).unwrap();
            assert!(t.bitwise_eq(&back), "{d}");
        }
    }

    fn graph_with(op: Op, opset: Option<i64>) -> Graph {
        let mut g = Graph::new("g");
        if let Some(v) = opset {
            g.opset_imports.insert(String::new(), v);
        }
        let x = g.add_input("x", TensorType::fixed(DType::F32, &[2, 6])).unwrap();
        let n = g.add_node("n", op, vec![Some(x)], &["y"]).unwrap();
        let y = g.node(n).output(0).unwrap();
        g.value_mut(y).ty = Some(TensorType::fixed(DType::F32, &[2]));
        g.add_output(y);
        g
    }

    #[test]
    fn opset_rises_to_what_the_ops_need() {
        let gelu = Op::Gelu { approximate: crate::op::GeluApproximation::None };
        assert_eq!(export_opset(&graph_with(gelu.clone(), None)).unwrap(), 20);
        assert_eq!(export_opset(&graph_with(gelu, Some(23))).unwrap(), 23);
        let too_new = graph_with(Op::Unary(UnaryOp::Relu), Some(forms::MAX_OPSET + 1));
        assert!(export_opset(&too_new).unwrap_err().to_string().contains("newer than"));
    }

    #[test]
    fn reduce_axes_follow_the_opset() {
        let mean =
            Op::Reduce { kind: ReduceKind::Mean, axes: Some(vec![1]), keepdims: false, noop_with_empty_axes: false };
        for (opset, as_input) in [(17, false), (18, true)] {
            let g = graph_with(mean.clone(), Some(opset));
            let m = proto::ModelProto::decode(model_to_bytes(&g).unwrap().as_slice()).unwrap();
            let graph = m.graph.unwrap();
            let node = &graph.node[0];
            assert_eq!(node.input.len() == 2, as_input, "opset {opset}");
            assert_eq!(node.attribute.iter().any(|a| a.name.as_deref() == Some("axes")), !as_input);
            if as_input {
                assert_eq!(node.input[1], "n.axes");
                assert_eq!(graph.initializer[0].name.as_deref(), Some("n.axes"));
            }
        }
    }

    #[test]
    fn split_states_num_outputs_from_18() {
        let mut g = Graph::new("g");
        let x = g.add_input("x", TensorType::fixed(DType::F32, &[2, 6])).unwrap();
        let n = g.add_node("s", Op::Split { axis: 1, num_outputs: Some(2) }, vec![Some(x)], &["a", "b"]).unwrap();
        for v in g.node(n).outputs.clone().into_iter().flatten() {
            g.value_mut(v).ty = Some(TensorType::fixed(DType::F32, &[2, 3]));
            g.add_output(v);
        }
        for (opset, stated) in [(13, false), (18, true)] {
            g.opset_imports.insert(String::new(), opset);
            let bytes = model_to_bytes(&g).unwrap();
            let m = proto::ModelProto::decode(bytes.as_slice()).unwrap();
            let has = m.graph.unwrap().node[0].attribute.iter().any(|a| a.name.as_deref() == Some("num_outputs"));
            assert_eq!(has, stated, "opset {opset}");
            let back = import_model_bytes(&bytes, None, ImportOptions::default()).unwrap();
            assert_eq!(back.node(back.node_by_name("s").unwrap()).op, g.node(n).op, "opset {opset}");
        }
        // An uneven split cannot be written before 18.
        g.opset_imports.insert(String::new(), 13);
        let x_ty = &mut g.value_mut(x).ty;
        *x_ty = Some(TensorType::fixed(DType::F32, &[2, 7]));
        assert_eq!(export_opset(&g).unwrap(), 18);
    }

    #[test]
    fn untyped_outputs_ask_for_type_inference() {
        let mut g = graph_with(Op::Unary(UnaryOp::Relu), Some(21));
        let y = g.outputs()[0];
        g.value_mut(y).ty = None;
        let e = model_to_bytes(&g).unwrap_err().to_string();
        assert!(e.contains("`y`") && e.contains("type inference"), "{e}");
    }

    #[test]
    fn cross_entropy_round_trips_in_the_kiln_domain() {
        use crate::op::{LossReduction, KILN_DOMAIN};
        let mut g = Graph::new("g");
        let x = g.add_input("logits", TensorType::fixed(DType::F32, &[4, 5])).unwrap();
        let y = g.add_input("labels", TensorType::fixed(DType::I64, &[4])).unwrap();
        let w = g.add_input("weight", TensorType::fixed(DType::F32, &[5])).unwrap();
        let op =
            Op::CrossEntropy { reduction: LossReduction::Sum, ignore_index: Some(-100), label_smoothing: 0.1, z_loss: 1e-4 };
        let n = g.add_node("ce", op.clone(), vec![Some(x), Some(y), Some(w)], &["loss", "log_prob"]).unwrap();
        for v in g.node(n).outputs.clone().into_iter().flatten() {
            g.add_output(v);
        }
        crate::infer::infer_types(&mut g).unwrap();
        let bytes = model_to_bytes(&g).unwrap();
        let m = proto::ModelProto::decode(bytes.as_slice()).unwrap();
        let kiln = m.opset_import.iter().find(|o| o.domain.as_deref() == Some(KILN_DOMAIN));
        assert_eq!(kiln.and_then(|o| o.version), Some(1));
        let graph = m.graph.unwrap();
        assert_eq!(graph.node[0].domain.as_deref(), Some(KILN_DOMAIN));
        assert_eq!(graph.node[0].op_type.as_deref(), Some("CrossEntropy"));
        let back = import_model_bytes(&bytes, None, ImportOptions::default()).unwrap();
        assert_eq!(back.node(back.node_by_name("ce").unwrap()).op, op);
        assert_eq!(back.opset_imports.get(KILN_DOMAIN), Some(&1));

        let text = crate::text::print_graph(&g);
        assert!(text.contains("kiln::CrossEntropy"), "{text}");
        let reparsed = crate::text::parse_graph(&text).unwrap();
        assert_eq!(reparsed.node(reparsed.node_by_name("ce").unwrap()).op, op);
        assert_eq!(crate::text::print_graph(&reparsed), text);

        let logits: Vec<f64> = (0..20).map(|v| v as f64 * 0.3).collect();
        let inputs = vec![
            ("logits".to_string(), Tensor::from_f64s(DType::F32, &[4, 5], &logits)),
            ("labels".to_string(), Tensor::from_i64s(DType::I64, &[4], &[0, -100, 4, 2])),
            ("weight".to_string(), Tensor::from_f64s(DType::F32, &[5], &[1.0, 2.0, 0.5, 1.0, 1.5])),
        ];
        let want = crate::interp::run(&g, &inputs).unwrap();
        let got = crate::interp::run(&back, &inputs).unwrap();
        for ((want_name, want_t), (got_name, got_t)) in want.iter().zip(&got) {
            assert_eq!(want_name, got_name);
            assert!(want_t.bitwise_eq(got_t), "{want_name}");
        }
    }

    #[test]
    fn linear_cross_entropy_types_runs_and_round_trips() {
        let fused = r#"graph "g" {
  input %h: f32[5, 3]
  input %w: f32[7, 3]
  input %y: i64[5]
  input %b: f32[7]
  %loss = kiln::LinearCrossEntropy(%h, %w, %y, %b) {reduction = "none", chunk_size = 2} @lce
  output %loss
}"#;
        let unfused = r#"graph "g" {
  input %h: f32[5, 3]
  input %w: f32[7, 3]
  input %y: i64[5]
  input %b: f32[7]
  %wt = Transpose(%w) {perm = [1, 0]} @t
  %mm = MatMul(%h, %wt) @mm
  %x = Add(%mm, %b) @add
  %loss = kiln::CrossEntropy(%x, %y) {reduction = "none"} @ce
  output %loss
}"#;
        let mut g = crate::text::parse_graph(fused).unwrap();
        crate::infer::infer_types(&mut g).unwrap();
        let mut reference = crate::text::parse_graph(unfused).unwrap();
        crate::infer::infer_types(&mut reference).unwrap();
        let loss = g.value(g.outputs()[0]).ty.clone().unwrap();
        assert_eq!(loss, TensorType::fixed(DType::F32, &[5]));

        let bytes = model_to_bytes(&g).unwrap();
        let back = import_model_bytes(&bytes, None, ImportOptions::default()).unwrap();
        let lce = back.node_by_name("lce").unwrap();
        assert_eq!(back.node(lce).op, g.node(g.node_by_name("lce").unwrap()).op);

        let values = |n: usize, scale: f64| (0..n).map(|k| ((k * 7 % 11) as f64 - 5.0) * scale).collect::<Vec<_>>();
        let inputs = vec![
            ("h".to_string(), Tensor::from_f64s(DType::F32, &[5, 3], &values(15, 0.25))),
            ("w".to_string(), Tensor::from_f64s(DType::F32, &[7, 3], &values(21, 0.125))),
            ("y".to_string(), Tensor::from_i64s(DType::I64, &[5], &[0, 6, 3, 3, 1])),
            ("b".to_string(), Tensor::from_f64s(DType::F32, &[7], &values(7, 0.5))),
        ];
        let want = crate::interp::run(&reference, &inputs).unwrap()[0].1.to_f64s();
        for graph in [&g, &back] {
            let got = crate::interp::run(graph, &inputs).unwrap()[0].1.to_f64s();
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-5 * b.abs().max(1e-6), "{got:?} vs {want:?}");
            }
        }

        let mut bad = crate::text::parse_graph(&fused.replace("f32[7, 3]", "f32[7, 4]")).unwrap();
        let e = crate::infer::infer_types(&mut bad).unwrap_err().to_string();
        assert!(e.contains("hidden size"), "{e}");
    }
}
