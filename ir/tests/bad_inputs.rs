//! Malformed ONNX files: each must be rejected with an error that names what
//! is wrong (the value, node, op, attribute or file), and none may panic.
//! The files are built here from the protobuf types, so each test shows
//! exactly which field is broken.

use kiln_ir::onnx::proto::{
    attribute_proto::AttributeType, tensor_proto::DataLocation, tensor_shape_proto, type_proto, AttributeProto,
    FunctionProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, SparseTensorProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use kiln_ir::onnx::{import_model_bytes, load_model, model_to_bytes, ImportOptions};
use kiln_ir::{Graph, IrError};
use prost::Message;
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------
// Builders
// ---------------------------------------------------------------------------

const FLOAT: i32 = 1;
const INT64: i32 = 7;

fn dims(shape: &[i64]) -> TensorShapeProto {
    TensorShapeProto {
        dim: shape
            .iter()
            .map(|&d| tensor_shape_proto::Dimension {
                value: Some(tensor_shape_proto::dimension::Value::DimValue(d)),
                denotation: None,
            })
            .collect(),
    }
}

fn vi(name: &str, elem_type: i32, shape: &[i64]) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem_type),
                shape: Some(dims(shape)),
            })),
            denotation: None,
        }),
        ..Default::default()
    }
}

fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        name: Some(name.into()),
        op_type: Some(op.into()),
        attribute: attrs,
        ..Default::default()
    }
}

fn attr(name: &str, ty: AttributeType) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(ty as i32), ..Default::default() }
}

fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto { i: Some(v), ..attr(name, AttributeType::Int) }
}

fn attr_string(name: &str, v: &[u8]) -> AttributeProto {
    AttributeProto { s: Some(v.to_vec()), ..attr(name, AttributeType::String) }
}

fn f32_tensor(name: &str, shape: &[i64], values: &[f32]) -> TensorProto {
    TensorProto {
        dims: shape.to_vec(),
        data_type: Some(FLOAT),
        name: Some(name.into()),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

fn opset(domain: &str, version: i64) -> OperatorSetIdProto {
    OperatorSetIdProto { domain: Some(domain.into()), version: Some(version) }
}

/// `y = Relu(x + w)` at opset 21 with a 2x3 weight: the valid model every
/// test breaks in one place.
fn base_model() -> ModelProto {
    ModelProto {
        ir_version: Some(10),
        opset_import: vec![opset("", 21)],
        producer_name: Some("kiln-tests".into()),
        graph: Some(GraphProto {
            name: Some("g".into()),
            node: vec![node("Add", "add", &["x", "w"], &["t"], vec![]), node("Relu", "relu", &["t"], &["y"], vec![])],
            initializer: vec![f32_tensor("w", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])],
            input: vec![vi("x", FLOAT, &[2, 3])],
            output: vec![vi("y", FLOAT, &[2, 3])],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn graph_mut(m: &mut ModelProto) -> &mut GraphProto {
    m.graph.as_mut().expect("base model has a graph")
}

fn import(m: &ModelProto) -> kiln_ir::Result<Graph> {
    import_model_bytes(&m.encode_to_vec(), None, ImportOptions::default())
}

/// The import error's message, which must mention every one of `names`.
fn rejects(m: &ModelProto, names: &[&str]) -> IrError {
    let e = import(m).expect_err("the malformed model must be rejected");
    let text = e.to_string();
    for n in names {
        assert!(text.contains(n), "error `{text}` does not mention `{n}`");
    }
    e
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bad_inputs").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

#[test]
fn the_base_model_is_valid() {
    let g = import(&base_model()).expect("base model imports");
    assert_eq!(g.node_count(), 2);
    assert!(model_to_bytes(&g).is_ok());
}

// ---------------------------------------------------------------------------
// Not a model at all
// ---------------------------------------------------------------------------

#[test]
fn empty_file() {
    let e = import_model_bytes(&[], None, ImportOptions::default()).unwrap_err();
    assert!(matches!(e, IrError::Decode { .. }) && e.to_string().contains("empty"), "{e}");
    let dir = scratch("empty_file");
    let path = dir.join("empty.onnx");
    std::fs::write(&path, b"").unwrap();
    let e = load_model(&path, ImportOptions::default()).unwrap_err().to_string();
    assert!(e.contains("empty.onnx"), "{e}");
}

#[test]
fn missing_file_names_the_path() {
    let e = load_model(Path::new("/nonexistent/kiln/model.onnx"), ImportOptions::default()).unwrap_err();
    assert!(matches!(e, IrError::Io { .. }) && e.to_string().contains("/nonexistent/kiln/model.onnx"), "{e}");
}

#[test]
fn every_truncation_of_a_model_is_rejected() {
    let bytes = base_model().encode_to_vec();
    for cut in 0..bytes.len() {
        assert!(
            import_model_bytes(&bytes[..cut], None, ImportOptions::default()).is_err(),
            "model cut at {cut} of {} bytes was accepted",
            bytes.len()
        );
    }
}

#[test]
fn garbage_bytes() {
    for bytes in [&b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"[..], b"not an onnx model at all", b"\x08"] {
        let e = import_model_bytes(bytes, None, ImportOptions::default()).unwrap_err();
        assert!(matches!(e, IrError::Decode { .. } | IrError::Model(_)), "{e}");
    }
}

#[test]
fn valid_protobuf_that_is_not_a_model() {
    for bytes in [f32_tensor("w", &[2], &[1.0, 2.0]).encode_to_vec(), base_model().graph.unwrap().encode_to_vec()] {
        assert!(import_model_bytes(&bytes, None, ImportOptions::default()).is_err());
    }
}

#[test]
fn model_without_graph() {
    let mut m = base_model();
    m.graph = None;
    rejects(&m, &["no graph"]);
}

#[test]
fn unsupported_ir_versions() {
    for (v, what) in [(None, "does not declare an IR version"), (Some(0), "IR version 0"), (Some(99), "IR version 99")]
    {
        let mut m = base_model();
        m.ir_version = v;
        rejects(&m, &[what]);
    }
}

#[test]
fn opset_import_missing_for_default_domain() {
    let mut m = base_model();
    m.opset_import = vec![opset("com.example", 1)];
    rejects(&m, &["does not import an opset for the default ONNX domain"]);
}

#[test]
fn opset_newer_than_kiln_knows() {
    let mut m = base_model();
    m.opset_import = vec![opset("", 99)];
    rejects(&m, &["opset 99"]);
    m.opset_import = vec![opset("", 21), opset("ai.onnx", 21)];
    rejects(&m, &["imported more than once"]);
}

// ---------------------------------------------------------------------------
// Tensor data
// ---------------------------------------------------------------------------

#[test]
fn initializer_with_string_dtype() {
    let mut m = base_model();
    graph_mut(&mut m).initializer[0].data_type = Some(8);
    rejects(&m, &["`w`", "STRING"]);
}

#[test]
fn initializer_with_unknown_dtype_code() {
    let mut m = base_model();
    graph_mut(&mut m).initializer[0].data_type = Some(999);
    rejects(&m, &["`w`", "999"]);
    graph_mut(&mut m).initializer[0].data_type = None;
    rejects(&m, &["`w`", "UNDEFINED"]);
}

#[test]
fn raw_data_length_mismatch() {
    let mut m = base_model();
    graph_mut(&mut m).initializer[0].raw_data.as_mut().unwrap().truncate(23);
    rejects(&m, &["`w`", "raw_data", "23 bytes"]);
}

#[test]
fn float_data_count_mismatch() {
    let mut m = base_model();
    let w = &mut graph_mut(&mut m).initializer[0];
    w.raw_data = None;
    w.float_data = vec![1.0; 5];
    rejects(&m, &["`w`", "float_data has 5 values", "needs 6"]);
    let w = &mut graph_mut(&mut m).initializer[0];
    w.float_data.clear();
    rejects(&m, &["`w`", "no data"]);
}

#[test]
fn typed_values_out_of_range() {
    let mut m = base_model();
    graph_mut(&mut m).initializer.push(TensorProto {
        dims: vec![2],
        data_type: Some(3), // INT8
        name: Some("q".into()),
        int32_data: vec![5, 300],
        ..Default::default()
    });
    rejects(&m, &["`q`", "300", "out of range"]);
}

#[test]
fn negative_dims() {
    let mut m = base_model();
    graph_mut(&mut m).initializer[0].dims = vec![-2, -3];
    rejects(&m, &["`w`", "negative dimension -2"]);
    let mut m = base_model();
    graph_mut(&mut m).input[0] = vi("x", FLOAT, &[2, -1]);
    rejects(&m, &["`x`", "negative dimension -1"]);
}

#[test]
fn shape_too_large_to_address() {
    let mut m = base_model();
    graph_mut(&mut m).initializer[0].dims = vec![0, 1 << 40, 1 << 40];
    rejects(&m, &["`w`", "addressed"]);
}

#[test]
fn sparse_initializer() {
    let mut m = base_model();
    graph_mut(&mut m).sparse_initializer.push(SparseTensorProto {
        values: Some(f32_tensor("sp", &[1], &[1.0])),
        indices: None,
        dims: vec![4],
    });
    rejects(&m, &["`sp`", "sparse"]);
}

// ---------------------------------------------------------------------------
// External data
// ---------------------------------------------------------------------------

/// The base model with `w` in `location` at `offset`/`length`, saved in a
/// fresh directory; returns the model path.
fn external_model(test: &str, location: &str, offset: u64, length: Option<u64>, data: Option<&[u8]>) -> PathBuf {
    let dir = scratch(test);
    if let Some(bytes) = data {
        std::fs::write(dir.join("weights.bin"), bytes).unwrap();
    }
    let mut m = base_model();
    let w = &mut graph_mut(&mut m).initializer[0];
    w.raw_data = None;
    w.data_location = Some(DataLocation::External as i32);
    let entry = |k: &str, v: String| StringStringEntryProto { key: Some(k.into()), value: Some(v) };
    w.external_data = vec![entry("location", location.into()), entry("offset", offset.to_string())];
    if let Some(l) = length {
        w.external_data.push(entry("length", l.to_string()));
    }
    let path = dir.join("model.onnx");
    std::fs::write(&path, m.encode_to_vec()).unwrap();
    path
}

#[test]
fn external_data_is_read_from_the_model_directory() {
    let mut data = vec![0u8; 8];
    data.extend([1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0].iter().flat_map(|v| v.to_le_bytes()));
    let path = external_model("external_ok", "weights.bin", 8, Some(24), Some(&data));
    let g = load_model(&path, ImportOptions::default()).expect("valid external data");
    let w = g.value(g.value_by_name("w").unwrap()).initializer.as_ref().unwrap().to_f64s();
    assert_eq!(w, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    // The same bytes without a directory to resolve the file against.
    let e = import_model_bytes(&std::fs::read(&path).unwrap(), None, ImportOptions::default()).unwrap_err();
    assert!(e.to_string().contains("weights.bin") && e.to_string().contains("`w`"), "{e}");
}

#[test]
fn external_data_file_missing() {
    let path = external_model("external_missing", "weights.bin", 0, None, None);
    let e = load_model(&path, ImportOptions::default()).unwrap_err().to_string();
    assert!(e.contains("`w`") && e.contains("weights.bin"), "{e}");
}

#[test]
fn external_data_path_escaping_the_model_directory() {
    for location in ["../weights.bin", "sub/../../weights.bin", "/etc/passwd"] {
        let path = external_model("external_escape", location, 0, None, None);
        // A file the location would reach if it were followed.
        std::fs::write(path.parent().unwrap().parent().unwrap().join("weights.bin"), [0u8; 24]).unwrap();
        let e = load_model(&path, ImportOptions::default()).unwrap_err().to_string();
        assert!(e.contains("`w`") && e.contains("escapes the model directory") && e.contains(location), "{e}");
    }
}

#[cfg(unix)]
#[test]
fn external_data_symlink_escaping_the_model_directory() {
    let outside = scratch("external_symlink_target");
    std::fs::write(outside.join("secret.bin"), [0u8; 24]).unwrap();
    let path = external_model("external_symlink", "link.bin", 0, None, None);
    std::os::unix::fs::symlink(outside.join("secret.bin"), path.parent().unwrap().join("link.bin")).unwrap();
    let e = load_model(&path, ImportOptions::default()).unwrap_err().to_string();
    assert!(e.contains("`w`") && e.contains("outside the model directory"), "{e}");
}

#[test]
fn external_data_past_end_of_file() {
    let path = external_model("external_short", "weights.bin", 8, None, Some(&[0u8; 30]));
    let e = load_model(&path, ImportOptions::default()).unwrap_err().to_string();
    assert!(e.contains("`w`") && e.contains("past the end") && e.contains("30 bytes"), "{e}");
    let path = external_model("external_wrong_length", "weights.bin", 0, Some(20), Some(&[0u8; 64]));
    let e = load_model(&path, ImportOptions::default()).unwrap_err().to_string();
    assert!(e.contains("`w`") && e.contains("length 20"), "{e}");
    let path = external_model("external_huge_offset", "weights.bin", u64::MAX - 4, None, Some(&[0u8; 64]));
    let e = load_model(&path, ImportOptions::default()).unwrap_err().to_string();
    assert!(e.contains("past the end"), "{e}");
}

#[test]
fn external_data_without_location() {
    let mut m = base_model();
    let w = &mut graph_mut(&mut m).initializer[0];
    w.raw_data = None;
    w.data_location = Some(DataLocation::External as i32);
    rejects(&m, &["`w`", "no location"]);
}

// ---------------------------------------------------------------------------
// Graph structure
// ---------------------------------------------------------------------------

#[test]
fn dangling_input_name() {
    let mut m = base_model();
    graph_mut(&mut m).node[0].input[1] = "foo".into();
    let e = rejects(&m, &["input 1 `foo` is not defined by any node, input or initializer", "`add`", "Add"]);
    assert!(matches!(e, IrError::Node { .. }));
}

#[test]
fn undefined_graph_output() {
    let mut m = base_model();
    graph_mut(&mut m).output.push(vi("nowhere", FLOAT, &[1]));
    rejects(&m, &["`nowhere`", "graph output is not defined"]);
}

#[test]
fn cycle_imports_but_has_no_order() {
    let mut m = base_model();
    let g = graph_mut(&mut m);
    g.node = vec![
        node("Add", "first", &["x", "u"], &["t"], vec![]),
        node("Relu", "second", &["t"], &["u"], vec![]),
        node("Relu", "relu", &["t"], &["y"], vec![]),
    ];
    let graph = import(&m).expect("cycles are the verifier's to report");
    let e = graph.topo_order().unwrap_err();
    assert!(matches!(e, IrError::Cycle { .. }) && e.to_string().contains("cycle"), "{e}");
    assert!(model_to_bytes(&graph).is_err(), "a cyclic graph cannot be exported");
}

#[test]
fn duplicate_value_definitions() {
    let mut m = base_model();
    graph_mut(&mut m).node.push(node("Relu", "again", &["x"], &["t"], vec![]));
    rejects(&m, &["`again`", "output `t` is already defined by node `add`"]);

    let mut m = base_model();
    graph_mut(&mut m).node[0].output[0] = "x".into();
    rejects(&m, &["`add`", "output `x` is already defined by a graph input"]);

    let mut m = base_model();
    let w = graph_mut(&mut m).initializer[0].clone();
    graph_mut(&mut m).initializer.push(w);
    rejects(&m, &["`w`", "more than one initializer"]);

    let mut m = base_model();
    let x = graph_mut(&mut m).input[0].clone();
    graph_mut(&mut m).input.push(x);
    rejects(&m, &["`x`", "more than once as a graph input"]);
}

#[test]
fn initializer_listed_as_input_with_a_conflicting_type() {
    let mut m = base_model();
    graph_mut(&mut m).input.push(vi("w", FLOAT, &[2, 3]));
    let g = import(&m).expect("an initializer may be listed as an input");
    assert_eq!(g.inputs().len(), 1, "it is an initializer, not an input");
    graph_mut(&mut m).input[1] = vi("w", INT64, &[2, 3]);
    rejects(&m, &["`w`", "declared as graph input"]);
}

#[test]
fn non_tensor_input_type() {
    let mut m = base_model();
    graph_mut(&mut m).input[0].r#type = Some(TypeProto {
        value: Some(type_proto::Value::SequenceType(type_proto::Sequence {
            elem_type: Some(Box::new(vi("e", FLOAT, &[2]).r#type.unwrap())),
        })),
        denotation: None,
    });
    rejects(&m, &["`x`", "sequence type"]);
}

#[test]
fn unsupported_input_element_type() {
    let mut m = base_model();
    graph_mut(&mut m).input[0] = vi("x", 13, &[2, 3]);
    rejects(&m, &["`x`", "UINT64"]);
}

// ---------------------------------------------------------------------------
// Ops and attributes
// ---------------------------------------------------------------------------

#[test]
fn unknown_op() {
    let mut m = base_model();
    graph_mut(&mut m).node[1].op_type = Some("FancyRelu".into());
    match rejects(&m, &["FancyRelu", "`relu`", "opset 21"]) {
        IrError::UnsupportedOp { op_type, domain, node, opset } => {
            assert_eq!((op_type.as_str(), domain.as_str(), node.as_str(), opset), ("FancyRelu", "", "relu", 21));
        }
        e => panic!("wrong error kind: {e}"),
    }
}

#[test]
fn unknown_domain() {
    let mut m = base_model();
    m.opset_import.push(opset("com.example", 3));
    graph_mut(&mut m).node[1].domain = Some("com.example".into());
    match rejects(&m, &["Relu", "com.example", "`relu`", "opset 3"]) {
        IrError::UnsupportedOp { domain, opset, .. } => assert_eq!((domain.as_str(), opset), ("com.example", 3)),
        e => panic!("wrong error kind: {e}"),
    }
}

#[test]
fn model_local_function_call() {
    let mut m = base_model();
    m.opset_import.push(opset("local", 1));
    m.functions.push(FunctionProto { name: Some("MyRelu".into()), domain: Some("local".into()), ..Default::default() });
    let n = &mut graph_mut(&mut m).node[1];
    n.op_type = Some("MyRelu".into());
    n.domain = Some("local".into());
    rejects(&m, &["`relu`", "MyRelu", "model-local function"]);
}

#[test]
fn bad_attribute_type() {
    let mut m = base_model();
    graph_mut(&mut m).node[1] = node("Softmax", "sm", &["t"], &["y"], vec![attr_string("axis", b"last")]);
    let e = rejects(&m, &["`sm`", "Softmax", "axis", "string"]);
    assert!(matches!(e, IrError::Node { .. }));
}

#[test]
fn unsupported_attribute() {
    let mut m = base_model();
    graph_mut(&mut m).node[1].attribute.push(attr_int("alpha", 2));
    rejects(&m, &["`relu`", "Relu", "unsupported attribute", "alpha"]);
}

#[test]
fn graph_valued_attribute() {
    let mut m = base_model();
    let mut a = attr("body", AttributeType::Graph);
    a.g = Some(GraphProto::default());
    graph_mut(&mut m).node[1].attribute.push(a);
    rejects(&m, &["`relu`", "body", "subgraph", "GRAPH"]);
}

#[test]
fn missing_required_attributes() {
    let mut m = base_model();
    graph_mut(&mut m).node[1] = node("Concat", "cat", &["t", "t"], &["y"], vec![]);
    rejects(&m, &["`cat`", "Concat", "`axis` is required"]);
    graph_mut(&mut m).node[1] = node("Cast", "cast", &["t"], &["y"], vec![]);
    rejects(&m, &["`cast`", "Cast", "`to` is required"]);
}

#[test]
fn cast_to_unsupported_type() {
    let mut m = base_model();
    graph_mut(&mut m).node[1] = node("Cast", "cast", &["t"], &["y"], vec![attr_int("to", 8)]);
    rejects(&m, &["`cast`", "STRING"]);
}

#[test]
fn invalid_utf8_string_attribute() {
    let mut m = base_model();
    graph_mut(&mut m).node[1] = node("Gelu", "gelu", &["t"], &["y"], vec![attr_string("approximate", b"\xff\xfe")]);
    rejects(&m, &["`gelu`", "approximate", "UTF-8"]);
}

#[test]
fn attribute_without_name_or_value() {
    let mut m = base_model();
    graph_mut(&mut m).node[1].attribute.push(AttributeProto::default());
    rejects(&m, &["`relu`", "without a name"]);
    let mut m = base_model();
    graph_mut(&mut m).node[1].attribute.push(AttributeProto { name: Some("x".into()), ..Default::default() });
    rejects(&m, &["`relu`", "no type"]);
}

#[test]
fn constant_with_broken_tensor() {
    let mut m = base_model();
    let mut value = f32_tensor("", &[4], &[1.0, 2.0]);
    value.dims = vec![4];
    let a = AttributeProto { t: Some(value), ..attr("value", AttributeType::Tensor) };
    graph_mut(&mut m).node.push(node("Constant", "c", &[], &["k"], vec![a]));
    rejects(&m, &["`c`", "Constant", "attribute `value`", "raw_data"]);

    let mut m = base_model();
    graph_mut(&mut m).node.push(node("Constant", "c", &[], &["k"], vec![attr_string("value_string", b"hi")]));
    rejects(&m, &["`c`", "value_string"]);
}

#[test]
fn attribute_that_became_an_input() {
    let mut m = base_model();
    let axes = AttributeProto { ints: vec![0], ..attr("axes", AttributeType::Ints) };
    graph_mut(&mut m).node[1] = node("Unsqueeze", "unsq", &["t"], &["y"], vec![axes.clone()]);
    rejects(&m, &["`unsq`", "`axes`", "since opset 13 it is input 1"]);
    graph_mut(&mut m).node[1] = node("ReduceMean", "mean", &["t"], &["y"], vec![axes]);
    rejects(&m, &["`mean`", "`axes`", "since opset 18"]);
}

#[test]
fn attribute_newer_than_the_opset() {
    let mut m = base_model();
    m.opset_import = vec![opset("", 13)];
    graph_mut(&mut m).node[1] = node("Shape", "shape", &["t"], &["y"], vec![attr_int("start", 1)]);
    rejects(&m, &["`shape`", "`start`", "opset 15"]);
}

#[test]
fn shape_mismatch_found_by_inference() {
    let mut m = base_model();
    let g = graph_mut(&mut m);
    g.initializer[0] = f32_tensor("w", &[4], &[1.0, 2.0, 3.0, 4.0]);
    // Import does not infer, so the broken Add imports...
    let mut graph = import(&m).expect("import does not check shapes");
    // ...and inference names the node, its op and both shapes.
    let e = kiln_ir::infer_types(&mut graph).unwrap_err().to_string();
    for part in ["`add`", "Add", "[2, 3]", "[4]"] {
        assert!(e.contains(part), "`{e}` does not mention `{part}`");
    }
}

#[test]
fn declared_output_type_contradicting_inference() {
    let mut m = base_model();
    graph_mut(&mut m).output[0] = vi("y", FLOAT, &[3, 2]);
    let mut graph = import(&m).expect("import keeps declared types");
    let e = kiln_ir::infer_types(&mut graph).unwrap_err().to_string();
    assert!(e.contains("`relu`") && e.contains("`y`"), "{e}");
}

// ---------------------------------------------------------------------------
// Fuzzing on stable Rust: mutated real models never panic
// ---------------------------------------------------------------------------

/// A model using most of what the importer reads: every attribute kind,
/// typed and raw tensor data, symbolic dims, value_info and an old opset's
/// attribute-to-input rewrite.
fn rich_model() -> ModelProto {
    let sym = |name: &str| tensor_shape_proto::Dimension {
        value: Some(tensor_shape_proto::dimension::Value::DimParam(name.into())),
        denotation: None,
    };
    let mut x = vi("x", FLOAT, &[]);
    if let Some(type_proto::Value::TensorType(t)) = x.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        t.shape = Some(TensorShapeProto {
            dim: vec![sym("batch"), sym("seq + 1"), tensor_shape_proto::Dimension::default()],
        });
    }
    let ints = |name: &str, v: &[i64]| AttributeProto { ints: v.to_vec(), ..attr(name, AttributeType::Ints) };
    let float = |name: &str, v: f32| AttributeProto { f: Some(v), ..attr(name, AttributeType::Float) };
    let typed_i64 = TensorProto {
        dims: vec![3],
        data_type: Some(INT64),
        name: Some("shape".into()),
        int64_data: vec![0, -1, 4],
        ..Default::default()
    };
    let half = TensorProto {
        dims: vec![2],
        data_type: Some(10),
        name: Some("h".into()),
        int32_data: vec![0x3c00, 0xc000],
        ..Default::default()
    };
    let const_value = AttributeProto { t: Some(f32_tensor("", &[], &[0.5])), ..attr("value", AttributeType::Tensor) };
    ModelProto {
        ir_version: Some(7),
        opset_import: vec![opset("", 11)],
        graph: Some(GraphProto {
            name: Some("rich".into()),
            node: vec![
                node("Unsqueeze", "unsq", &["x"], &["u"], vec![ints("axes", &[0])]),
                node("Squeeze", "sq", &["u"], &["s"], vec![ints("axes", &[0])]),
                node("Constant", "half", &[], &["k"], vec![const_value]),
                node("LeakyRelu", "lrelu", &["s"], &["l"], vec![float("alpha", 0.2)]),
                node("Mul", "mul", &["l", "k"], &["m"], vec![]),
                node("Reshape", "reshape", &["m", "shape"], &["r"], vec![]),
                node("Gelu", "gelu", &["r"], &["g"], vec![attr_string("approximate", b"tanh")]),
                node("ReduceMean", "mean", &["g"], &["y"], vec![ints("axes", &[-1]), attr_int("keepdims", 0)]),
            ],
            initializer: vec![typed_i64, half],
            input: vec![x],
            output: vec![vi("y", FLOAT, &[2, 3])],
            value_info: vec![vi("u", FLOAT, &[1, 2, 3, 4])],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Seeded random mutations (bit flips, byte overwrites, truncations,
/// insertions, duplicated slices) of `seed_bytes`. Import must return, not
/// panic; what imports must also infer, verify, export and re-import
/// without panicking.
fn fuzz(seed_bytes: &[u8], iterations: usize, seed: u64) -> (usize, usize) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut accepted = 0;
    for _ in 0..iterations {
        let mut bytes = seed_bytes.to_vec();
        for _ in 0..rng.random_range(1..=4) {
            let len = bytes.len().max(1);
            let at = rng.random_range(0..len);
            match rng.random_range(0..5) {
                0 => {
                    if let Some(b) = bytes.get_mut(at) {
                        *b ^= 1 << rng.random_range(0..8);
                    }
                }
                1 => {
                    if let Some(b) = bytes.get_mut(at) {
                        *b = rng.random();
                    }
                }
                2 => bytes.truncate(at),
                3 => {
                    let n = rng.random_range(1..=8);
                    let insert: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                    bytes.splice(at.min(bytes.len())..at.min(bytes.len()), insert);
                }
                _ => {
                    let end = (at + rng.random_range(1..=32)).min(bytes.len());
                    let slice = bytes[at.min(end)..end].to_vec();
                    bytes.splice(end..end, slice);
                }
            }
        }
        if let Ok(mut g) = import_model_bytes(&bytes, None, ImportOptions::default()) {
            accepted += 1;
            let _ = g.topo_order();
            if kiln_ir::infer_types(&mut g).is_ok() {
                let _ = kiln_ir::verify(&g);
            }
            if let Ok(out) = model_to_bytes(&g) {
                import_model_bytes(&out, None, ImportOptions::default()).expect("what kiln exports, kiln imports");
            }
        }
    }
    (accepted, iterations)
}

#[test]
fn random_mutations_of_models_never_panic() {
    let rich = rich_model().encode_to_vec();
    let g = import_model_bytes(&rich, None, ImportOptions::default()).expect("the fuzz seed model is valid");
    assert_eq!(g.node_count(), 8);
    let (accepted, total) = fuzz(&rich, 20_000, 1);
    eprintln!("rich model: {accepted} of {total} mutations still import");

    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/models/gen/gpt2_unfused/model.onnx");
    match std::fs::read(&example) {
        Ok(bytes) => {
            let (accepted, total) = fuzz(&bytes, 1000, 2);
            eprintln!("gpt2_unfused: {accepted} of {total} mutations still import");
        }
        Err(_) => eprintln!("example models not generated (`make models`); fuzzed the built-in model only"),
    }
}
