//! Reading ONNX models into kiln's IR.
//!
//! [`load_model`] and [`import_model_bytes`] decode a `ModelProto` and build a
//! [`Graph`]:
//!
//! - Initializers become values with data, decoded from `raw_data`, the typed
//!   fields, or an external data file next to the model. A graph input that is
//!   also an initializer (how models before IR version 4 declared weights, and
//!   how some exporters mark overridable defaults) is treated as an
//!   initializer only: it is not a graph input of the IR graph.
//! - Value types come from the graph's inputs, outputs and `value_info`; every
//!   other value's type is `None` until type inference runs. A dim with a
//!   `dim_param` becomes a symbol, one with neither value nor param a fresh
//!   symbol `unk__N`, and a missing shape leaves the type unknown.
//! - Nodes may appear in any order; cycles are not an import error but are
//!   reported by [`Graph::topo_order`] and the verifier.
//! - Ops from older opsets are rewritten into the IR's form, which is the
//!   newest opset's: attributes that later became inputs (Squeeze `axes`
//!   before 13, Split `split` before 13, Slice before 10, Clip before 11, ...)
//!   become initializers named `<node>.<attribute>`; Reduce `axes` given as
//!   an attribute stays the op's attribute; Softmax and LogSoftmax before 13,
//!   which flattened their input to 2-D at `axis`, become
//!   Flatten → Softmax → Reshape unless the axis is known to be the last.
//!   Constant's `value_float`/`value_ints`/... forms become tensors.
//!
//! Errors name what is wrong: the value for data problems, the node and op
//! for attribute and wiring problems, and op, domain, node and opset for ops
//! kiln does not have.

use crate::attr::{Attr, AttrBag, AttrError};
use crate::dim::Dim;
use crate::dtype::DType;
use crate::error::{IrError, Result};
use crate::graph::{Graph, ValueId};
use crate::onnx::external::{ExternalLocation, ExternalReader};
use crate::onnx::forms::{self, MovedKind};
use crate::onnx::proto::{
    self, attribute_proto::AttributeType, tensor_proto::DataLocation, tensor_shape_proto::dimension, type_proto,
};
use crate::op::{Op, KILN_DOMAIN, ONNX_DOMAIN};
use crate::tensor::Tensor;
use crate::types::TensorType;
use half::{bf16, f16};
use ndarray::{ArcArray, ArrayD, IxDyn};
use prost::Message;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Options for importing a model.
#[derive(Default)]
pub struct ImportOptions<'a> {
    /// Called as tensor data is decoded with (bytes decoded so far, total
    /// bytes of initializer data), so a front end can show a bar while a
    /// multi-gigabyte model loads. The last call has `done == total`.
    pub progress: Option<&'a mut dyn FnMut(u64, u64)>,
}

/// Reads an ONNX model file. External data is resolved relative to the
/// file's directory.
pub fn load_model(path: &Path, opts: ImportOptions) -> Result<Graph> {
    // The file's bytes are dropped once decoded, so a large model is not
    // held three times (file, message, tensors) while its weights decode.
    let model = {
        let bytes = std::fs::read(path).map_err(|source| IrError::Io { path: path.to_path_buf(), source })?;
        decode_model(&bytes, &path.display().to_string())?
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    import(model, Some(dir), opts)
}

/// Imports a serialized `ModelProto`. `base_dir` is the directory external
/// data locations are relative to; with `None`, a model that keeps data in
/// external files is an error.
pub fn import_model_bytes(bytes: &[u8], base_dir: Option<&Path>, opts: ImportOptions) -> Result<Graph> {
    import(decode_model(bytes, "model")?, base_dir, opts)
}

/// Reads a file holding one serialized `TensorProto`, as the ONNX test data
/// directories (`test_data_set_N/input_K.pb`) do. Returns the tensor's name
/// (empty when it has none) and its value.
pub fn read_tensor_pb(path: &Path) -> Result<(String, Tensor)> {
    let bytes = std::fs::read(path).map_err(|source| IrError::Io { path: path.to_path_buf(), source })?;
    let what = path.display().to_string();
    let t = proto::TensorProto::decode(bytes.as_slice())
        .map_err(|e| IrError::Decode { what: what.clone(), message: e.to_string() })?;
    let name = t.name.clone().unwrap_or_default();
    let label = if name.is_empty() { what } else { name.clone() };
    let mut external = ExternalReader::new(path.parent());
    Ok((name, decode_tensor(&t, &label, &mut external)?))
}

/// Decodes a `TensorProto`, reading external data relative to `base_dir`.
/// Errors name the tensor (or say it is unnamed).
pub fn tensor_from_proto(t: &proto::TensorProto, base_dir: Option<&Path>) -> Result<Tensor> {
    let label = match t.name.as_deref() {
        Some(n) if !n.is_empty() => n,
        _ => "<unnamed tensor>",
    };
    decode_tensor(t, label, &mut ExternalReader::new(base_dir))
}

// ---------------------------------------------------------------------------
// Tensors
// ---------------------------------------------------------------------------

/// The shape as sizes, with its element count and the bytes ONNX stores the
/// elements in. Rejects negative dims and shapes too large to address, before
/// anything is allocated.
fn checked_shape(name: &str, dims: &[i64], dtype: DType) -> Result<(Vec<usize>, usize, usize)> {
    let mut shape = Vec::with_capacity(dims.len());
    let mut count: usize = 1;
    let mut nonzero: usize = 1;
    let too_large = || IrError::value(name, format!("shape {dims:?} has more elements than can be addressed"));
    for &d in dims {
        if d < 0 {
            return Err(IrError::value(name, format!("negative dimension {d} in shape {dims:?}")));
        }
        let d = usize::try_from(d).map_err(|_| too_large())?;
        count = count.checked_mul(d).ok_or_else(too_large)?;
        // ndarray requires the product of the non-zero axis lengths to fit in
        // isize even when another axis is zero.
        if d != 0 {
            nonzero = nonzero.checked_mul(d).filter(|&n| n <= isize::MAX as usize).ok_or_else(too_large)?;
        }
        shape.push(d);
    }
    let bytes = count.checked_mul(dtype.bit_width()).ok_or_else(too_large)?.div_ceil(8);
    Ok((shape, count, bytes))
}

fn array<T: Clone>(name: &str, shape: &[usize], values: Vec<T>) -> Result<ArcArray<T, IxDyn>> {
    ArrayD::from_shape_vec(IxDyn(shape), values)
        .map(|a| a.into_shared())
        .map_err(|e| IrError::value(name, format!("cannot build a tensor of shape {shape:?}: {e}")))
}

fn dtype_of(name: &str, code: Option<i32>) -> Result<DType> {
    let code = code.unwrap_or(0);
    if code == 0 {
        return Err(IrError::value(name, "tensor has no element type (UNDEFINED)"));
    }
    DType::from_onnx_code(code).ok_or_else(|| {
        IrError::value(
            name,
            format!("element type {} (code {code}) is not supported by kiln", DType::onnx_code_name(code)),
        )
    })
}

/// Which typed field holds a dtype's values when `raw_data` is absent.
fn typed_field(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "float_data",
        DType::F64 => "double_data",
        DType::I64 => "int64_data",
        _ => "int32_data",
    }
}

fn typed_field_lens(t: &proto::TensorProto) -> [(&'static str, usize); 6] {
    [
        ("float_data", t.float_data.len()),
        ("int32_data", t.int32_data.len()),
        ("string_data", t.string_data.len()),
        ("int64_data", t.int64_data.len()),
        ("double_data", t.double_data.len()),
        ("uint64_data", t.uint64_data.len()),
    ]
}

/// Decodes a tensor; `name` labels errors.
fn decode_tensor(t: &proto::TensorProto, name: &str, external: &mut ExternalReader) -> Result<Tensor> {
    let dtype = dtype_of(name, t.data_type)?;
    if t.segment.is_some() {
        return Err(IrError::value(name, "segmented tensors (TensorProto.segment) are not supported"));
    }
    let (shape, count, nbytes) = checked_shape(name, &t.dims, dtype)?;
    let typed = typed_field_lens(t);
    let location = t.data_location.unwrap_or(0);
    if location == DataLocation::External as i32 {
        if t.raw_data.is_some() || typed.iter().any(|(_, n)| *n > 0) {
            return Err(IrError::value(name, "data is marked EXTERNAL but the tensor also holds data inline"));
        }
        let loc = ExternalLocation::parse(name, &t.external_data)?;
        let bytes = external.read(name, &loc, nbytes)?;
        return Tensor::from_raw_le(dtype, &shape, &bytes).map_err(|m| IrError::value(name, m));
    }
    if location != DataLocation::Default as i32 {
        return Err(IrError::value(name, format!("unknown data_location {location}")));
    }
    if let Some(raw) = &t.raw_data {
        if let Some((field, _)) = typed.iter().find(|(_, n)| *n > 0) {
            return Err(IrError::value(name, format!("tensor has both raw_data and {field}")));
        }
        return Tensor::from_raw_le(dtype, &shape, raw).map_err(|m| IrError::value(name, format!("raw_data: {m}")));
    }
    let field = typed_field(dtype);
    if let Some((other, _)) = typed.iter().find(|(f, n)| *n > 0 && *f != field) {
        return Err(IrError::value(
            name,
            format!(
                "values are in {other}, which is not the field for {} tensors ({field})",
                DType::onnx_code_name(dtype.onnx_code())
            ),
        ));
    }
    // 4-bit values are packed two per int32_data entry.
    let want = if matches!(dtype, DType::I4 | DType::U4) { count.div_ceil(2) } else { count };
    let have = typed.iter().find(|(f, _)| *f == field).map_or(0, |(_, n)| *n);
    if have != want {
        return Err(IrError::value(
            name,
            format!(
                "{field} has {have} values but a {dtype} tensor of shape {shape:?} needs {want}{}",
                if have == 0 { " (the tensor has no data)" } else { "" }
            ),
        ));
    }
    let ints = &t.int32_data;
    let narrow = |lo: i64, hi: i64| -> Result<()> {
        match ints.iter().find(|&&v| (v as i64) < lo || (v as i64) > hi) {
            Some(v) => Err(IrError::value(
                name,
                format!("int32_data value {v} is out of range for a {dtype} tensor ({lo}..={hi})"),
            )),
            None => Ok(()),
        }
    };
    Ok(match dtype {
        DType::F32 => Tensor::F32(array(name, &shape, t.float_data.clone())?),
        DType::F64 => Tensor::F64(array(name, &shape, t.double_data.clone())?),
        DType::I64 => Tensor::I64(array(name, &shape, t.int64_data.clone())?),
        DType::I32 => Tensor::I32(array(name, &shape, ints.clone())?),
        DType::I16 => {
            narrow(i16::MIN.into(), i16::MAX.into())?;
            Tensor::I16(array(name, &shape, ints.iter().map(|&v| v as i16).collect())?)
        }
        DType::I8 => {
            narrow(i8::MIN.into(), i8::MAX.into())?;
            Tensor::I8(array(name, &shape, ints.iter().map(|&v| v as i8).collect())?)
        }
        DType::U8 => {
            narrow(0, u8::MAX.into())?;
            Tensor::U8(array(name, &shape, ints.iter().map(|&v| v as u8).collect())?)
        }
        DType::Bool => {
            narrow(0, 1)?;
            Tensor::Bool(array(name, &shape, ints.iter().map(|&v| v != 0).collect())?)
        }
        // Half floats are stored as their bit patterns; accept them zero- or
        // sign-extended, as writers differ.
        DType::F16 => {
            narrow(i16::MIN.into(), u16::MAX.into())?;
            Tensor::F16(array(name, &shape, ints.iter().map(|&v| f16::from_bits(v as u16)).collect())?)
        }
        DType::BF16 => {
            narrow(i16::MIN.into(), u16::MAX.into())?;
            Tensor::BF16(array(name, &shape, ints.iter().map(|&v| bf16::from_bits(v as u16)).collect())?)
        }
        DType::I4 | DType::U4 => {
            narrow(0, u8::MAX.into())?;
            let packed: Vec<u8> = ints.iter().map(|&v| v as u8).collect();
            Tensor::from_raw_le(dtype, &shape, &packed).map_err(|m| IrError::value(name, m))?
        }
    })
}

/// Bytes a tensor's data will take once decoded, for progress totals;
/// 0 when its type or shape is invalid (decoding reports that).
fn expected_bytes(t: &proto::TensorProto) -> u64 {
    dtype_of("", t.data_type)
        .ok()
        .and_then(|d| checked_shape("", &t.dims, d).ok())
        .map_or(0, |(_, _, bytes)| bytes as u64)
}

// ---------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------

/// Hands out `unk__N` symbols for dims with neither a value nor a name,
/// skipping names the model itself uses.
struct DimNamer {
    taken: BTreeSet<String>,
    next: usize,
}

impl DimNamer {
    fn fresh(&mut self) -> Dim {
        loop {
            let name = format!("unk__{}", self.next);
            self.next += 1;
            if self.taken.insert(name.clone()) {
                return Dim::sym(&name);
            }
        }
    }
}

fn collect_dim_params(infos: &[&proto::ValueInfoProto], out: &mut BTreeSet<String>) {
    for vi in infos {
        if let Some(type_proto::Value::TensorType(t)) = vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            for d in t.shape.iter().flat_map(|s| &s.dim) {
                if let Some(dimension::Value::DimParam(p)) = &d.value {
                    out.insert(p.clone());
                }
            }
        }
    }
}

/// A `dim_param` as a dim. Expressions such as `seq + 1` or `2*seq` become
/// polynomials, so they compare equal to what inference derives; anything
/// else is one opaque symbol named exactly as in the file.
fn dim_from_param(param: &str) -> Dim {
    // Short expressions with few digits only: the parser recurses on
    // parentheses, and dim arithmetic is i64, so an adversarial name must
    // not be able to exhaust the stack or overflow a coefficient.
    let digits = param.bytes().filter(u8::is_ascii_digit).count();
    if param.contains(['+', '*', '/', '(', ')']) && param.len() <= 256 && digits <= 18 {
        if let Ok(d) = Dim::parse(param) {
            return d;
        }
    }
    Dim::sym(param)
}

/// The product of dims when it is safe to form: fixed sizes whose product
/// fits, times plain symbols. `None` otherwise (the caller leaves the type
/// to inference).
fn dims_product(dims: &[Dim]) -> Option<Dim> {
    let mut fixed: u64 = 1;
    let mut symbols = Vec::new();
    for d in dims {
        match d {
            Dim::Fixed(n) => fixed = fixed.checked_mul(*n).filter(|&p| p <= i64::MAX as u64)?,
            Dim::Sym(p) => {
                let name = p.to_string();
                if *d != Dim::sym(&name) {
                    return None;
                }
                symbols.push(name);
            }
        }
    }
    Some(symbols.iter().fold(Dim::Fixed(fixed), |acc, s| acc.mul(&Dim::sym(s))))
}

struct Importer<'p> {
    graph: Graph,
    opset: i64,
    external: ExternalReader,
    progress: Option<&'p mut dyn FnMut(u64, u64)>,
    done: u64,
    total: u64,
    dims: DimNamer,
    node_names: BTreeSet<String>,
    local_functions: BTreeSet<(String, String)>,
}

/// The canonical name of a domain whose ops kiln defines: `""` for ONNX's
/// default domain (also spelt `ai.onnx`). Kiln's own domain joins this list
/// when its fused ops get ONNX names.
fn known_domain(domain: &str) -> Option<&'static str> {
    match domain {
        "" | "ai.onnx" => Some(ONNX_DOMAIN),
        KILN_DOMAIN => Some(KILN_DOMAIN),
        _ => None,
    }
}

fn decode_model(bytes: &[u8], what: &str) -> Result<proto::ModelProto> {
    if bytes.is_empty() {
        return Err(IrError::Decode { what: what.to_string(), message: "the file is empty".into() });
    }
    proto::ModelProto::decode(bytes).map_err(|e| IrError::Decode { what: what.to_string(), message: e.to_string() })
}

fn import(model: proto::ModelProto, base_dir: Option<&Path>, opts: ImportOptions) -> Result<Graph> {
    let mut imp = Importer {
        graph: Graph::new(""),
        opset: 0,
        external: ExternalReader::new(base_dir),
        progress: opts.progress,
        done: 0,
        total: 0,
        dims: DimNamer { taken: BTreeSet::new(), next: 0 },
        node_names: BTreeSet::new(),
        local_functions: BTreeSet::new(),
    };
    imp.model(model)?;
    Ok(imp.graph)
}

impl Importer<'_> {
    fn model(&mut self, mut model: proto::ModelProto) -> Result<()> {
        match model.ir_version {
            None => return Err(IrError::Model("model does not declare an IR version".into())),
            Some(v) if !(forms::MIN_IR_VERSION..=forms::MAX_IR_VERSION).contains(&v) => {
                return Err(IrError::Model(format!(
                    "IR version {v} is not supported (kiln reads IR versions {} to {})",
                    forms::MIN_IR_VERSION,
                    forms::MAX_IR_VERSION
                )))
            }
            Some(_) => {}
        }
        self.opsets(&model.opset_import)?;
        for f in &model.functions {
            self.local_functions.insert((f.domain.clone().unwrap_or_default(), f.name.clone().unwrap_or_default()));
        }
        let mut graph = model.graph.take().ok_or_else(|| IrError::Model("model has no graph".into()))?;
        self.graph.name = graph.name.clone().unwrap_or_default();
        // Unsupported ops first: telling the user before decoding gigabytes
        // of weights is kinder, and it is the most useful error, even for a
        // model that uses only other domains and so imports no default opset.
        let names = self.node_names_for(&graph.node);
        for (node, name) in graph.node.iter().zip(&names) {
            self.check_supported(node, name)?;
        }
        self.require_default_opset()?;
        self.graph_body(&mut graph, &names)
    }

    fn opsets(&mut self, imports: &[proto::OperatorSetIdProto]) -> Result<()> {
        for o in imports {
            let written = o.domain.as_deref().unwrap_or("");
            let domain = known_domain(written).unwrap_or(written).to_string();
            let version = o.version.unwrap_or(0);
            if version < 1 {
                return Err(IrError::Model(format!(
                    "opset import for domain `{written}` has invalid version {version}"
                )));
            }
            if self.graph.opset_imports.insert(domain, version).is_some() {
                return Err(IrError::Model(format!("domain `{written}` is imported more than once")));
            }
        }
        Ok(())
    }

    fn require_default_opset(&mut self) -> Result<()> {
        self.opset = *self.graph.opset_imports.get(ONNX_DOMAIN).ok_or_else(|| {
            IrError::Model("model does not import an opset for the default ONNX domain (`ai.onnx`)".into())
        })?;
        if self.opset > forms::MAX_OPSET {
            return Err(IrError::Model(format!(
                "default-domain opset {} is newer than the newest kiln supports ({})",
                self.opset,
                forms::MAX_OPSET
            )));
        }
        Ok(())
    }

    fn report_progress(&mut self) {
        if let Some(p) = self.progress.as_mut() {
            p(self.done, self.total);
        }
    }

    fn graph_body(&mut self, g: &mut proto::GraphProto, names: &[String]) -> Result<()> {
        if let Some(s) = g.sparse_initializer.first() {
            let name = s.values.as_ref().and_then(|v| v.name.clone()).unwrap_or_default();
            return Err(IrError::value(name, "sparse initializers are not supported"));
        }

        let infos: Vec<&proto::ValueInfoProto> = g.input.iter().chain(&g.output).chain(&g.value_info).collect();
        collect_dim_params(&infos, &mut self.dims.taken);

        let mut input_types: BTreeMap<String, Option<TensorType>> = BTreeMap::new();
        for vi in &g.input {
            let name = vi.name.clone().unwrap_or_default();
            let ty = self.value_type(&name, vi.r#type.as_ref())?;
            input_types.insert(name, ty);
        }
        // Declared types of node outputs: graph outputs first, as they are
        // what a model promises, then value_info.
        let mut declared: BTreeMap<String, Option<TensorType>> = BTreeMap::new();
        for vi in g.output.iter().chain(&g.value_info) {
            let name = vi.name.clone().unwrap_or_default();
            if name.is_empty() || declared.contains_key(&name) {
                continue;
            }
            let ty = self.value_type(&name, vi.r#type.as_ref())?;
            declared.insert(name, ty);
        }

        // Where each name is defined, for duplicate-definition messages.
        let mut defined: BTreeMap<String, String> = BTreeMap::new();

        self.total = g.initializer.iter().map(expected_bytes).fold(0, u64::saturating_add);
        self.report_progress();
        // Each initializer's message is dropped as soon as it is decoded, so
        // the encoded and decoded copies of the weights never both exist in
        // full.
        for t in std::mem::take(&mut g.initializer) {
            let t = &t;
            let name = t.name.clone().unwrap_or_default();
            if name.is_empty() {
                return Err(IrError::Model("an initializer has no name".into()));
            }
            if defined.contains_key(&name) {
                return Err(IrError::value(name, "is defined by more than one initializer"));
            }
            let data = decode_tensor(t, &name, &mut self.external)?;
            if let Some(Some(declared_ty)) = input_types.get(&name) {
                let actual = TensorType::fixed(data.dtype(), data.shape());
                if !compatible(declared_ty, &actual) {
                    return Err(IrError::value(
                        &name,
                        format!("is declared as graph input of type {declared_ty} but its initializer is {actual}"),
                    ));
                }
            }
            self.graph.add_initializer(name.clone(), data)?;
            defined.insert(name, "an initializer".into());
            self.done = self.done.saturating_add(expected_bytes(t));
            self.report_progress();
        }

        let mut inputs = Vec::new();
        for vi in &g.input {
            let name = vi.name.clone().unwrap_or_default();
            if name.is_empty() {
                return Err(IrError::Model("a graph input has no name".into()));
            }
            if let Some(v) = self.graph.value_by_name(&name) {
                if self.graph.value(v).initializer.is_some() {
                    continue;
                }
                return Err(IrError::value(name, "is listed more than once as a graph input"));
            }
            let ty = input_types.get(&name).cloned().flatten();
            if ty.is_none() {
                return Err(IrError::value(name, "graph input has no tensor type (element type and shape)"));
            }
            inputs.push(self.graph.add_value(name.clone(), ty)?);
            defined.insert(name, "a graph input".into());
        }
        self.graph.set_inputs(inputs);

        // Every node output exists before any node is added, so nodes may
        // read values that nodes later in the file produce.
        let mut outputs_of: Vec<Vec<Option<ValueId>>> = Vec::with_capacity(g.node.len());
        for (node, name) in g.node.iter().zip(names) {
            let mut outs = Vec::with_capacity(node.output.len());
            for out in &node.output {
                if out.is_empty() {
                    outs.push(None);
                    continue;
                }
                if let Some(by) = defined.get(out) {
                    return Err(IrError::node(
                        name,
                        op_type_of(node),
                        format!("output `{out}` is already defined by {by}"),
                    ));
                }
                let ty = declared.get(out).cloned().flatten();
                outs.push(Some(self.graph.add_value(out.clone(), ty)?));
                defined.insert(out.clone(), format!("node `{name}`"));
            }
            // Omitted trailing outputs are the same as absent ones.
            while outs.last().is_some_and(Option::is_none) {
                outs.pop();
            }
            outputs_of.push(outs);
        }

        for ((node, name), outputs) in g.node.iter().zip(names).zip(outputs_of) {
            self.node(node, name, outputs)?;
        }

        for vi in &g.output {
            let name = vi.name.clone().unwrap_or_default();
            let v = self.graph.value_by_name(&name).ok_or_else(|| {
                IrError::value(&name, "graph output is not defined by any node, input or initializer")
            })?;
            // An output that is a graph input or initializer keeps that
            // value's type; check the declaration agrees with it.
            if let (Some(Some(d)), Some(have)) = (declared.get(&name), self.graph.value(v).ty.as_ref()) {
                if !compatible(d, have) {
                    return Err(IrError::value(
                        &name,
                        format!("graph output is declared as {d} but the value is {have}"),
                    ));
                }
            }
            self.graph.add_output(v);
        }
        self.done = self.total;
        self.report_progress();
        Ok(())
    }

    /// Unique node names: the file's, or `<op>_<index>` for unnamed nodes,
    /// with `.N` suffixes on repeats. Known before any node is built, so the
    /// names of values generated for a node are stable.
    fn node_names_for(&mut self, nodes: &[proto::NodeProto]) -> Vec<String> {
        let mut names = Vec::with_capacity(nodes.len());
        for (i, n) in nodes.iter().enumerate() {
            let base = match n.name.as_deref() {
                Some(s) if !s.is_empty() => s.to_string(),
                _ => format!("{}_{i}", op_type_of(n)),
            };
            let mut name = base.clone();
            let mut k = 1;
            while !self.node_names.insert(name.clone()) {
                name = format!("{base}.{k}");
                k += 1;
            }
            names.push(name);
        }
        names
    }

    fn fresh_node_name(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut k = 1;
        while !self.node_names.insert(name.clone()) {
            name = format!("{base}.{k}");
            k += 1;
        }
        name
    }

    fn check_supported(&self, node: &proto::NodeProto, name: &str) -> Result<()> {
        let op_type = op_type_of(node);
        if op_type.is_empty() {
            return Err(IrError::node(name, "", "node has no op type"));
        }
        let written = node.domain.as_deref().unwrap_or("");
        if self.local_functions.contains(&(written.to_string(), op_type.to_string())) {
            return Err(IrError::node(
                name,
                op_type,
                format!(
                    "calls the model-local function `{op_type}` (domain `{written}`); kiln does not expand model-local functions"
                ),
            ));
        }
        let unsupported = || IrError::UnsupportedOp {
            op_type: op_type.to_string(),
            domain: written.to_string(),
            node: name.to_string(),
            opset: self.graph.opset_imports.get(known_domain(written).unwrap_or(written)).copied().unwrap_or(0),
        };
        let Some(domain) = known_domain(written) else {
            return Err(unsupported());
        };
        // Every known op builds from an empty attribute set or fails for a
        // missing attribute; only an unknown one says UnknownOp.
        match Op::from_attrs(op_type, domain, AttrBag::default()) {
            Err(AttrError::UnknownOp) => Err(unsupported()),
            _ => Ok(()),
        }
    }

    /// The type a `ValueInfoProto` declares; `None` when it declares no
    /// element type or no shape.
    fn value_type(&mut self, name: &str, tp: Option<&proto::TypeProto>) -> Result<Option<TensorType>> {
        let Some(value) = tp.and_then(|t| t.value.as_ref()) else {
            return Ok(None);
        };
        let kind = match value {
            type_proto::Value::TensorType(t) => {
                let code = t.elem_type.unwrap_or(0);
                if code == 0 {
                    return Ok(None);
                }
                let dtype = DType::from_onnx_code(code).ok_or_else(|| {
                    IrError::value(
                        name,
                        format!("element type {} (code {code}) is not supported by kiln", DType::onnx_code_name(code)),
                    )
                })?;
                let Some(shape) = &t.shape else {
                    return Ok(None);
                };
                let mut dims = Vec::with_capacity(shape.dim.len());
                for d in &shape.dim {
                    dims.push(match &d.value {
                        Some(dimension::Value::DimValue(v)) if *v >= 0 => Dim::Fixed(*v as u64),
                        Some(dimension::Value::DimValue(v)) => {
                            return Err(IrError::value(name, format!("declared shape has negative dimension {v}")))
                        }
                        Some(dimension::Value::DimParam(p)) if !p.is_empty() => dim_from_param(p),
                        _ => self.dims.fresh(),
                    });
                }
                return Ok(Some(TensorType::new(dtype, dims)));
            }
            type_proto::Value::SequenceType(_) => "a sequence",
            type_proto::Value::MapType(_) => "a map",
            type_proto::Value::OptionalType(_) => "an optional",
            type_proto::Value::SparseTensorType(_) => "a sparse tensor",
            type_proto::Value::OpaqueType(_) => "an opaque",
        };
        Err(IrError::value(name, format!("has {kind} type; kiln supports only dense tensors")))
    }

    // ---- nodes ----

    fn node(&mut self, node: &proto::NodeProto, name: &str, outputs: Vec<Option<ValueId>>) -> Result<()> {
        let op_type = op_type_of(node);
        let mut inputs = Vec::with_capacity(node.input.len());
        for (slot, input) in node.input.iter().enumerate() {
            if input.is_empty() {
                inputs.push(None);
                continue;
            }
            let v = self.graph.value_by_name(input).ok_or_else(|| {
                IrError::node(
                    name,
                    op_type,
                    format!("input {slot} `{input}` is not defined by any node, input or initializer"),
                )
            })?;
            inputs.push(Some(v));
        }
        // Omitted trailing inputs are the same as absent ones.
        while inputs.last().is_some_and(Option::is_none) {
            inputs.pop();
        }
        let mut attrs = Vec::with_capacity(node.attribute.len());
        for a in &node.attribute {
            let (attr_name, value) = self.attribute(a, name, op_type)?;
            if attrs.iter().any(|(n, _): &(String, Attr)| *n == attr_name) {
                return Err(IrError::node(name, op_type, format!("attribute `{attr_name}` is given more than once")));
            }
            attrs.push((attr_name, value));
        }
        // check_supported ran on every node, so the domain is known.
        let domain = known_domain(node.domain.as_deref().unwrap_or("")).unwrap_or(ONNX_DOMAIN);
        let mut n = PendingNode { name: name.to_string(), op_type: op_type.to_string(), inputs, outputs, attrs };
        if domain == ONNX_DOMAIN && self.onnx_node_form(&mut n)? {
            return Ok(());
        }
        let op = Op::from_attrs(&n.op_type, domain, AttrBag::new(n.attrs)).map_err(|e| match e {
            AttrError::UnknownOp => IrError::UnsupportedOp {
                op_type: n.op_type.clone(),
                domain: domain.to_string(),
                node: n.name.clone(),
                opset: self.opset,
            },
            AttrError::Invalid(m) => IrError::node(&n.name, &n.op_type, m),
        })?;
        self.graph.add_node_with_outputs(n.name, op, n.inputs, n.outputs)?;
        Ok(())
    }

    fn attribute(&mut self, a: &proto::AttributeProto, node: &str, op_type: &str) -> Result<(String, Attr)> {
        let name = a.name.clone().unwrap_or_default();
        let err = |m: String| IrError::node(node, op_type, m);
        if name.is_empty() {
            return Err(err("has an attribute without a name".into()));
        }
        if let Some(r) = &a.ref_attr_name {
            return Err(err(format!(
                "attribute `{name}` refers to function attribute `{r}`; references are only valid inside functions"
            )));
        }
        let ty = match a.r#type {
            Some(code) => AttributeType::try_from(code)
                .map_err(|_| err(format!("attribute `{name}` has unknown attribute type {code}")))?,
            None => {
                implied_attribute_type(a).ok_or_else(|| err(format!("attribute `{name}` has no type and no value")))?
            }
        };
        let value = match ty {
            AttributeType::Int => Attr::Int(a.i.unwrap_or(0)),
            AttributeType::Float => Attr::Float(a.f.unwrap_or(0.0)),
            AttributeType::Ints => Attr::Ints(a.ints.clone()),
            AttributeType::Floats => Attr::Floats(a.floats.clone()),
            AttributeType::String => {
                let bytes = a.s.clone().unwrap_or_default();
                Attr::String(
                    String::from_utf8(bytes)
                        .map_err(|_| err(format!("string attribute `{name}` is not valid UTF-8")))?,
                )
            }
            AttributeType::Tensor => {
                let t = a.t.as_ref().ok_or_else(|| err(format!("tensor attribute `{name}` has no tensor")))?;
                let label = format!("{node}.{name}");
                Attr::Tensor(decode_tensor(t, &label, &mut self.external).map_err(|e| match e {
                    IrError::Value { message, .. } => err(format!("attribute `{name}`: {message}")),
                    other => other,
                })?)
            }
            AttributeType::Undefined => return Err(err(format!("attribute `{name}` has type UNDEFINED"))),
            other => {
                let (what, onnx_name) = match other {
                    AttributeType::Graph => ("a subgraph (control flow is not supported)", "GRAPH"),
                    AttributeType::Graphs => ("a list of subgraphs (control flow is not supported)", "GRAPHS"),
                    AttributeType::SparseTensor => ("a sparse tensor", "SPARSE_TENSOR"),
                    AttributeType::SparseTensors => ("a list of sparse tensors", "SPARSE_TENSORS"),
                    AttributeType::TypeProto => ("a type", "TYPE_PROTO"),
                    AttributeType::TypeProtos => ("a list of types", "TYPE_PROTOS"),
                    AttributeType::Strings => ("a list of strings", "STRINGS"),
                    _ => ("a list of tensors", "TENSORS"),
                };
                return Err(err(format!("attribute `{name}` is {what} ({onnx_name}); no kiln op takes one")));
            }
        };
        Ok((name, value))
    }

    /// Rewrites a default-domain node from its opset's form into the IR's.
    /// Returns true when it added the node(s) itself.
    fn onnx_node_form(&mut self, n: &mut PendingNode) -> Result<bool> {
        let opset = self.opset;
        let op_type = n.op_type.clone();
        let node_name = n.name.clone();
        let err = |m: String| IrError::node(&node_name, &op_type, m);

        if let Some((_, since, why)) =
            forms::UNCONVERTED_FORMS.iter().find(|(o, since, _)| *o == op_type && opset < *since)
        {
            return Err(err(format!(
                "{op_type} at opset {opset} uses its form before opset {since} ({why}), which kiln does not convert"
            )));
        }
        // Legacy attributes with no effect under the IR's semantics.
        if opset < 7 {
            n.remove_attr("consumed_inputs");
            if forms::LEGACY_BROADCAST_OPS.contains(&op_type.as_str()) {
                if n.has_attr("axis") {
                    return Err(err(format!(
                        "legacy broadcasting with an `axis` attribute (opset {opset}) is not supported"
                    )));
                }
                n.remove_attr("broadcast");
            }
            if op_type == "Gemm" {
                n.remove_attr("broadcast");
            }
            if op_type == "Dropout" {
                n.remove_attr("is_test");
            }
        }
        for (attr, _) in &n.attrs {
            if let Some(since) = forms::attr_since(&op_type, attr) {
                if opset < since {
                    return Err(err(format!(
                        "attribute `{attr}` was added to {op_type} in opset {since}, but the model imports opset {opset}"
                    )));
                }
            }
        }
        for m in forms::moved_attrs(&op_type) {
            if opset >= m.input_since {
                if n.has_attr(m.attr) {
                    return Err(err(format!(
                        "attribute `{}` is not valid at opset {opset}: since opset {} it is input {}",
                        m.attr, m.input_since, m.slot
                    )));
                }
                continue;
            }
            let Some(value) = n.remove_attr(m.attr) else { continue };
            if n.inputs.get(m.slot).copied().flatten().is_some() {
                return Err(err(format!("`{}` is given both as attribute and as input {}", m.attr, m.slot)));
            }
            let tensor = self.moved_attr_tensor(n, m.attr, m.kind, &value)?;
            let value_name = self.graph.fresh_value_name(&format!("{}.{}", n.name, m.attr));
            let v = self.graph.add_initializer(value_name, tensor)?;
            if n.inputs.len() <= m.slot {
                n.inputs.resize(m.slot + 1, None);
            }
            n.inputs[m.slot] = Some(v);
        }
        if op_type.starts_with("Reduce") && n.has_attr("axes") && opset >= forms::reduce_axes_input_since(&op_type) {
            return Err(err(format!(
                "attribute `axes` is not valid at opset {opset}: since opset {} it is input 1",
                forms::reduce_axes_input_since(&op_type)
            )));
        }
        match op_type.as_str() {
            // Before 18 a Split without sizes splits into as many equal parts
            // as it has outputs; the IR says so with num_outputs.
            "Split" if opset < 18 && n.inputs.get(1).copied().flatten().is_none() => {
                n.attrs.push(("num_outputs".into(), Attr::Int(n.outputs.len() as i64)));
            }
            "Concat" if opset < 4 && !n.has_attr("axis") => n.attrs.push(("axis".into(), Attr::Int(1))),
            "Constant" => self.constant_value(n)?,
            "Softmax" | "LogSoftmax" if opset < 13 => return self.old_softmax(n),
            _ => {}
        }
        Ok(false)
    }

    fn moved_attr_tensor(&self, n: &PendingNode, attr: &str, kind: MovedKind, value: &Attr) -> Result<Tensor> {
        let err = |m: String| IrError::node(&n.name, &n.op_type, m);
        let wrong = || err(format!("attribute `{attr}` has the wrong kind ({})", value.kind()));
        match kind {
            MovedKind::Ints => match value {
                Attr::Ints(v) => Ok(Tensor::vec_i64(v)),
                _ => Err(wrong()),
            },
            MovedKind::IntAsVector => match value {
                Attr::Int(v) => Ok(Tensor::vec_i64(&[*v])),
                _ => Err(wrong()),
            },
            MovedKind::F32Scalar | MovedKind::ScalarLikeInput => {
                let v = match value {
                    Attr::Float(f) => *f as f64,
                    Attr::Int(i) => *i as f64,
                    _ => return Err(wrong()),
                };
                if kind == MovedKind::F32Scalar {
                    return Ok(Tensor::scalar_f32(v as f32));
                }
                let x = n.inputs.first().copied().flatten();
                let dtype = x.and_then(|x| self.graph.value(x).ty.as_ref()).map(|t| t.dtype).ok_or_else(|| {
                    err(format!(
                        "attribute `{attr}` must become an input of the data's element type, but the model does not declare the type of input 0"
                    ))
                })?;
                Ok(Tensor::from_f64s(dtype, &[], &[v]))
            }
        }
    }

    /// Constant's shorthand attributes become its `value` tensor.
    fn constant_value(&self, n: &mut PendingNode) -> Result<()> {
        let err = |m: String| IrError::node(&n.name, &n.op_type, m);
        for unsupported in ["value_string", "value_strings", "sparse_value"] {
            if n.has_attr(unsupported) {
                return Err(err(format!(
                    "Constant with `{unsupported}` is not supported (no string or sparse tensors)"
                )));
            }
        }
        let mut value = None;
        for (name, a) in std::mem::take(&mut n.attrs) {
            let t = match (name.as_str(), &a) {
                ("value_float", Attr::Float(f)) => Tensor::scalar_f32(*f),
                ("value_floats", Attr::Floats(f)) => {
                    Tensor::F32(ndarray::Array1::from(f.clone()).into_dyn().into_shared())
                }
                ("value_int", Attr::Int(i)) => Tensor::scalar_i64(*i),
                ("value_ints", Attr::Ints(i)) => Tensor::vec_i64(i),
                ("value_float" | "value_floats" | "value_int" | "value_ints", _) => {
                    return Err(err(format!("attribute `{name}` has the wrong kind ({})", a.kind())))
                }
                _ => {
                    n.attrs.push((name, a));
                    continue;
                }
            };
            if value.replace(t).is_some() || n.has_attr("value") {
                return Err(err("Constant must have exactly one value attribute".into()));
            }
        }
        if let Some(t) = value {
            if n.has_attr("value") {
                return Err(err("Constant must have exactly one value attribute".into()));
            }
            n.attrs.push(("value".into(), Attr::Tensor(t)));
        }
        Ok(())
    }

    /// Softmax and LogSoftmax before opset 13 flatten the input to 2-D at
    /// `axis` (default 1) and normalize each row. That equals the IR's
    /// softmax along `axis` only when `axis` is the last axis; otherwise the
    /// node becomes Flatten → Softmax(axis 1) → Reshape to the input's shape.
    fn old_softmax(&mut self, n: &mut PendingNode) -> Result<bool> {
        let axis = match n.remove_attr("axis") {
            None => 1,
            Some(Attr::Int(a)) => a,
            Some(a) => {
                return Err(IrError::node(
                    &n.name,
                    &n.op_type,
                    format!("attribute `axis` must be an int, found {}", a.kind()),
                ))
            }
        };
        if let Some((extra, _)) = n.attrs.first() {
            return Err(IrError::node(&n.name, &n.op_type, format!("unsupported attribute(s): {extra}")));
        }
        let x = n.inputs.first().copied().flatten();
        let rank = x.and_then(|x| self.graph.value(x).ty.as_ref()).map(|t| t.rank() as i64);
        let last = axis == -1 || rank.is_some_and(|r| axis == r - 1 || axis + r == r - 1);
        let make = |axis| if n.op_type == "Softmax" { Op::Softmax { axis } } else { Op::LogSoftmax { axis } };
        if last || x.is_none() || n.inputs.len() != 1 || n.outputs.len() != 1 {
            // Wrong arity is left for the verifier to report with the rest.
            let op = make(axis);
            self.graph.add_node_with_outputs(n.name.clone(), op, n.inputs.clone(), n.outputs.clone())?;
            return Ok(true);
        }
        let x = x.expect("checked above");
        // With the input's type known, the new values' types follow; that
        // lets the graph be written back at its own opset before inference.
        let x_ty = self.graph.value(x).ty.clone();
        let flat_ty = x_ty.as_ref().and_then(|t| {
            let r = t.rank() as i64;
            let split = usize::try_from(if axis < 0 { axis + r } else { axis }).ok().filter(|&a| a <= t.rank())?;
            Some(TensorType::new(t.dtype, vec![dims_product(&t.shape[..split])?, dims_product(&t.shape[split..])?]))
        });
        let shape_ty = x_ty.as_ref().map(|t| TensorType::fixed(DType::I64, &[t.rank()]));
        let flat = self.graph.add_value(self.graph.fresh_value_name(&format!("{}.flat", n.name)), flat_ty.clone())?;
        let rows = self.graph.add_value(self.graph.fresh_value_name(&format!("{}.rows", n.name)), flat_ty)?;
        let shape = self.graph.add_value(self.graph.fresh_value_name(&format!("{}.shape", n.name)), shape_ty)?;
        let flatten_name = self.fresh_node_name(&format!("{}.flatten", n.name));
        let shape_name = self.fresh_node_name(&format!("{}.shape", n.name));
        let reshape_name = self.fresh_node_name(&format!("{}.reshape", n.name));
        self.graph.add_node_with_outputs(flatten_name, Op::Flatten { axis }, vec![Some(x)], vec![Some(flat)])?;
        self.graph.add_node_with_outputs(n.name.clone(), make(1), vec![Some(flat)], vec![Some(rows)])?;
        self.graph.add_node_with_outputs(
            shape_name,
            Op::Shape { start: 0, end: None },
            vec![Some(x)],
            vec![Some(shape)],
        )?;
        self.graph.add_node_with_outputs(
            reshape_name,
            Op::Reshape { allowzero: false },
            vec![Some(rows), Some(shape)],
            n.outputs.clone(),
        )?;
        Ok(true)
    }
}

/// A node between its protobuf and its IR op.
struct PendingNode {
    name: String,
    op_type: String,
    inputs: Vec<Option<ValueId>>,
    outputs: Vec<Option<ValueId>>,
    attrs: Vec<(String, Attr)>,
}

impl PendingNode {
    fn has_attr(&self, name: &str) -> bool {
        self.attrs.iter().any(|(n, _)| n == name)
    }

    fn remove_attr(&mut self, name: &str) -> Option<Attr> {
        let i = self.attrs.iter().position(|(n, _)| n == name)?;
        Some(self.attrs.remove(i).1)
    }
}

fn op_type_of(node: &proto::NodeProto) -> &str {
    node.op_type.as_deref().unwrap_or("")
}

/// The type of an attribute written without one (IR version 1 files), from
/// the field that holds its value.
fn implied_attribute_type(a: &proto::AttributeProto) -> Option<AttributeType> {
    Some(if a.t.is_some() {
        AttributeType::Tensor
    } else if a.g.is_some() {
        AttributeType::Graph
    } else if a.s.is_some() {
        AttributeType::String
    } else if !a.floats.is_empty() {
        AttributeType::Floats
    } else if !a.ints.is_empty() {
        AttributeType::Ints
    } else if a.f.is_some() {
        AttributeType::Float
    } else if a.i.is_some() {
        AttributeType::Int
    } else {
        return None;
    })
}

/// Same dtype and rank, and dims equal wherever both are fixed.
fn compatible(a: &TensorType, b: &TensorType) -> bool {
    a.dtype == b.dtype
        && a.rank() == b.rank()
        && a.shape.iter().zip(&b.shape).all(|(x, y)| match (x.fixed(), y.fixed()) {
            (Some(x), Some(y)) => x == y,
            _ => true,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(dims: &[i64], code: i32) -> proto::TensorProto {
        proto::TensorProto { dims: dims.to_vec(), data_type: Some(code), name: Some("t".into()), ..Default::default() }
    }

    #[test]
    fn typed_fields_decode() {
        let mut t = tensor(&[2], DType::F16.onnx_code());
        t.int32_data = vec![f16::from_f32(1.5).to_bits() as i32, f16::from_f32(-2.0).to_bits() as i32];
        assert_eq!(tensor_from_proto(&t, None).unwrap().to_f64s(), vec![1.5, -2.0]);

        let mut t = tensor(&[3], DType::I4.onnx_code());
        t.int32_data = vec![0x7f, 0x09];
        assert_eq!(tensor_from_proto(&t, None).unwrap().to_i64s(), vec![-1, 7, -7]);

        let mut t = tensor(&[2], DType::Bool.onnx_code());
        t.int32_data = vec![1, 0];
        assert_eq!(tensor_from_proto(&t, None).unwrap().to_i64s(), vec![1, 0]);

        let mut t = tensor(&[], DType::F64.onnx_code());
        t.double_data = vec![0.25];
        let v = tensor_from_proto(&t, None).unwrap();
        assert_eq!((v.shape(), v.to_f64s()), (&[][..], vec![0.25]));
    }

    #[test]
    fn data_problems_name_the_tensor() {
        let mut t = tensor(&[2, 2], 1);
        t.float_data = vec![1.0; 3];
        let e = tensor_from_proto(&t, None).unwrap_err().to_string();
        assert!(e.contains("`t`") && e.contains("float_data has 3 values"), "{e}");

        let mut t = tensor(&[2], DType::I8.onnx_code());
        t.int32_data = vec![1, 200];
        assert!(tensor_from_proto(&t, None).unwrap_err().to_string().contains("out of range"));

        let mut t = tensor(&[2], 1);
        t.int64_data = vec![1, 2];
        assert!(tensor_from_proto(&t, None).unwrap_err().to_string().contains("int64_data"));

        let t = tensor(&[0, 1 << 62, 4], 1);
        assert!(tensor_from_proto(&t, None).unwrap_err().to_string().contains("addressed"));

        let t = tensor(&[2], 13);
        let e = tensor_from_proto(&t, None).unwrap_err().to_string();
        assert!(e.contains("UINT64") && e.contains("`t`"), "{e}");
    }

    #[test]
    fn dim_params_with_arithmetic_become_polynomials() {
        assert_eq!(dim_from_param("seq + 1"), Dim::sym("seq").add(&Dim::Fixed(1)));
        assert_eq!(dim_from_param("batch-size"), Dim::sym("batch-size"));
        let deep = format!("{}seq{}", "(".repeat(10_000), ")".repeat(10_000));
        assert_eq!(dim_from_param(&deep), Dim::sym(&deep));
        let huge = "999999999999*999999999999*seq";
        assert_eq!(dim_from_param(huge), Dim::sym(huge));
    }

    #[test]
    fn flattened_dims_only_when_safe() {
        let seq = Dim::sym("seq");
        assert_eq!(dims_product(&[Dim::Fixed(2), seq.clone(), Dim::Fixed(3)]), Some(Dim::Fixed(6).mul(&seq)));
        assert_eq!(dims_product(&[]), Some(Dim::Fixed(1)));
        assert_eq!(dims_product(&[Dim::Fixed(1 << 40), Dim::Fixed(1 << 40)]), None);
        assert_eq!(dims_product(&[seq.add(&Dim::Fixed(1))]), None);
    }
}
