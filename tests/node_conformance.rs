//! ONNX backend node-test conformance of the reference interpreter.
//!
//! Every directory of ONNX's node tests (`onnx/backend/test/data/node`) is
//! classified from its model file:
//!
//! - skipped when a node uses an op kiln does not have ("op X not
//!   supported"), or a value, initializer or constant has a type kiln cannot
//!   hold (an element type outside kiln's dtypes, a sequence, an optional);
//! - otherwise *supported*: the model is imported with
//!   `kiln_ir::onnx::load_model`, every `test_data_set_*` is run through
//!   `kiln_ir::interp::run`, and every output is compared with the reference
//!   (same dtype and shape; floats within rtol 1e-3 / atol 1e-5, f16 and
//!   bf16 within 1e-2, NaN equal to NaN; integers and booleans exactly).
//!
//! The test fails if any supported test fails. It prints passed / failed /
//! skipped counts with the skip reasons, and writes one line per test to
//! `target/node_conformance.txt`.
//!
//! Python (for the location of the onnx package) comes from `KILN_PYTHON`,
//! else `<repo>/.venv/bin/python` (see `kiln_test_support::python`);
//! without one the test says so and does nothing. Run it with `--release`:
//! the ~1700 tests then take seconds.

use kiln_ir::attr::{AttrBag, AttrError};
use kiln_ir::dtype::DType;
use kiln_ir::interp;
use kiln_ir::onnx::proto::{type_proto, GraphProto, ModelProto, TypeProto};
use kiln_ir::onnx::{load_model, ImportOptions};
use kiln_ir::op::Op;
use kiln_ir::tensor::Tensor;
use kiln_test_support::{model_dirs, onnx_node_test_dir, python};
use prost::Message;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

mod node_tests;
use node_tests::{compare, numbered_tensors};

/// Tests whose reference data we consider wrong, each with the reason. A
/// listed test is reported but does not fail the run. Keep this empty
/// unless the ONNX data itself is at fault.
const KNOWN_DIFFERENCES: &[(&str, &str)] = &[
    ("test_training_dropout", RANDOM_DROPOUT),
    ("test_training_dropout_default", RANDOM_DROPOUT),
    ("test_training_dropout_default_mask", RANDOM_DROPOUT),
    ("test_training_dropout_mask", RANDOM_DROPOUT),
];

const RANDOM_DROPOUT: &str = "the expected mask is numpy's random stream after np.random.seed(0); ONNX does not \
    specify Dropout's random numbers, so no other implementation can reproduce it";

// ---------------------------------------------------------------- classification

/// Why a model is out of scope, or `None` when kiln supports all of it.
fn skip_reason(model: &ModelProto) -> Option<String> {
    let graph = model.graph.as_ref()?;
    let mut unknown_ops = BTreeSet::new();
    let mut bad_types = BTreeSet::new();
    scan_graph(graph, &mut unknown_ops, &mut bad_types);
    if !unknown_ops.is_empty() {
        let ops: Vec<String> = unknown_ops.into_iter().collect();
        return Some(format!("op {} not supported", ops.join(", ")));
    }
    if !bad_types.is_empty() {
        let types: Vec<String> = bad_types.into_iter().collect();
        return Some(format!("type {} not supported", types.join(", ")));
    }
    None
}

fn scan_graph(g: &GraphProto, unknown_ops: &mut BTreeSet<String>, bad_types: &mut BTreeSet<String>) {
    for n in &g.node {
        let op_type = n.op_type.clone().unwrap_or_default();
        let domain = n.domain.clone().unwrap_or_default();
        if let Err(AttrError::UnknownOp) = Op::from_attrs(&op_type, &domain, AttrBag::default()) {
            unknown_ops.insert(if domain.is_empty() || domain == "ai.onnx" {
                op_type
            } else {
                format!("{domain}.{op_type}")
            });
        }
        for a in &n.attribute {
            if let Some(t) = &a.t {
                check_elem_type(t.data_type.unwrap_or(0), bad_types);
            }
            for sub in a.g.iter().chain(&a.graphs) {
                scan_graph(sub, unknown_ops, bad_types);
            }
        }
    }
    for v in g.input.iter().chain(&g.output).chain(&g.value_info) {
        if let Some(t) = &v.r#type {
            check_type(t, bad_types);
        }
    }
    for t in &g.initializer {
        check_elem_type(t.data_type.unwrap_or(0), bad_types);
    }
}

fn check_type(t: &TypeProto, bad_types: &mut BTreeSet<String>) {
    match &t.value {
        Some(type_proto::Value::TensorType(tt)) => check_elem_type(tt.elem_type.unwrap_or(0), bad_types),
        Some(type_proto::Value::SequenceType(_)) => {
            bad_types.insert("sequence".into());
        }
        Some(type_proto::Value::MapType(_)) => {
            bad_types.insert("map".into());
        }
        Some(type_proto::Value::OptionalType(_)) => {
            bad_types.insert("optional".into());
        }
        Some(type_proto::Value::SparseTensorType(_)) => {
            bad_types.insert("sparse tensor".into());
        }
        Some(type_proto::Value::OpaqueType(_)) => {
            bad_types.insert("opaque".into());
        }
        None => {}
    }
}

fn check_elem_type(code: i32, bad_types: &mut BTreeSet<String>) {
    if DType::from_onnx_code(code).is_none() {
        bad_types.insert(DType::onnx_code_name(code).to_string());
    }
}

// ---------------------------------------------------------------- running

/// Runs every data set of one supported test; `Err` says what went wrong.
fn run_test(dir: &Path, model: &ModelProto) -> Result<(), String> {
    let graph = load_model(&dir.join("model.onnx"), ImportOptions::default()).map_err(|e| format!("import: {e}"))?;
    let proto_graph = model.graph.as_ref().ok_or("model has no graph")?;
    let initializer_names: BTreeSet<&str> = proto_graph.initializer.iter().filter_map(|t| t.name.as_deref()).collect();
    // Test data inputs follow the model's inputs that are not initializers.
    let input_names: Vec<String> = proto_graph
        .input
        .iter()
        .filter_map(|v| v.name.clone())
        .filter(|n| !initializer_names.contains(n.as_str()))
        .collect();
    let mut data_sets: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("test_data_set_")))
        .collect();
    data_sets.sort();
    if data_sets.is_empty() {
        return Err("no test_data_set_* directory".into());
    }
    for set in data_sets {
        let set_name = set.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let inputs = numbered_tensors(&set, "input")?;
        if inputs.len() > input_names.len() {
            return Err(format!("{set_name}: {} inputs for {} graph inputs", inputs.len(), input_names.len()));
        }
        let named: Vec<(String, Tensor)> = input_names.iter().cloned().zip(inputs).collect();
        let expected = numbered_tensors(&set, "output")?;
        let got = interp::run(&graph, &named).map_err(|e| format!("{set_name}: run: {e}"))?;
        if got.len() != expected.len() {
            return Err(format!("{set_name}: {} outputs, {} expected", got.len(), expected.len()));
        }
        for ((name, g), want) in got.iter().zip(&expected) {
            compare(g, want).map_err(|m| format!("{set_name}: output `{name}`: {m}"))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- the test

enum Outcome {
    Pass,
    Fail(String),
    Known(String),
    Skip(String),
}

#[test]
fn onnx_node_tests() {
    let Some(python) = python() else {
        eprintln!("node_conformance: no Python with onnx found (set KILN_PYTHON); skipping");
        return;
    };
    let dirs = model_dirs(&onnx_node_test_dir(&python));
    assert!(dirs.len() > 1000, "expected the full ONNX node test set, found {} tests", dirs.len());

    let known: BTreeMap<&str, &str> = KNOWN_DIFFERENCES.iter().copied().collect();
    let start = Instant::now();
    let mut results: Vec<(String, Outcome)> = Vec::new();
    for dir in &dirs {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let bytes = std::fs::read(dir.join("model.onnx")).expect("model file is readable");
        let outcome = match ModelProto::decode(bytes.as_slice()) {
            Err(e) => Outcome::Fail(format!("model does not decode: {e}")),
            Ok(model) => match skip_reason(&model) {
                Some(reason) => Outcome::Skip(reason),
                None => {
                    // A panicking kernel must not hide the rest of the report.
                    let r = std::panic::catch_unwind(|| run_test(dir, &model))
                        .unwrap_or_else(|p| Err(format!("panicked: {}", panic_message(&p))));
                    match (r, known.get(name.as_str())) {
                        (Ok(()), _) => Outcome::Pass,
                        (Err(e), Some(why)) => Outcome::Known(format!("{e} [known difference: {why}]")),
                        (Err(e), None) => Outcome::Fail(e),
                    }
                }
            },
        };
        results.push((name, outcome));
    }
    let elapsed = start.elapsed();

    let mut report = String::new();
    let (mut passed, mut failed, mut known_count) = (0, 0, 0);
    // Skips counted per missing op or type: a test needing two missing ops
    // counts under both.
    let mut skipped: BTreeMap<String, usize> = BTreeMap::new();
    let mut skipped_total = 0;
    for (name, outcome) in &results {
        let line = match outcome {
            Outcome::Pass => {
                passed += 1;
                format!("PASS {name}")
            }
            Outcome::Fail(m) => {
                failed += 1;
                format!("FAIL {name}: {m}")
            }
            Outcome::Known(m) => {
                known_count += 1;
                format!("KNOWN {name}: {m}")
            }
            Outcome::Skip(r) => {
                skipped_total += 1;
                for key in skip_keys(r) {
                    *skipped.entry(key).or_default() += 1;
                }
                format!("SKIP {name}: {r}")
            }
        };
        writeln!(report, "{line}").expect("writing to a String");
    }
    let mut summary = format!(
        "ONNX node tests: {} total, {} supported: {passed} passed, {failed} failed, {known_count} known differences; \
         {skipped_total} skipped ({:.1} s)\n",
        results.len(),
        passed + failed + known_count,
        elapsed.as_secs_f64()
    );
    let mut reasons: Vec<(&String, &usize)> = skipped.iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (reason, count) in reasons {
        writeln!(summary, "  skipped {count:4}: {reason}").expect("writing to a String");
    }
    let report_path = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the test tmp dir is inside the target dir")
        .join("node_conformance.txt");
    std::fs::write(&report_path, format!("{summary}\n{report}")).expect("report is writable");
    println!("{summary}full list: {}", report_path.display());
    let failures: Vec<&str> = report.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(failures.is_empty(), "{} supported node tests fail:\n{}", failures.len(), failures.join("\n"));
}

/// "op A, B not supported" → ["op A not supported", "op B not supported"].
fn skip_keys(reason: &str) -> Vec<String> {
    for kind in ["op", "type"] {
        if let Some(list) = reason.strip_prefix(&format!("{kind} ")).and_then(|r| r.strip_suffix(" not supported")) {
            return list.split(", ").map(|item| format!("{kind} {item} not supported")).collect();
        }
    }
    vec![reason.to_string()]
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

#[test]
fn comparison_catches_differences() {
    let f = |v: &[f64]| Tensor::from_f64s(DType::F32, &[v.len()], v);
    let want = f(&[1.0, f64::NAN, f64::INFINITY, 0.0]);
    assert!(compare(&want.clone(), &want).is_ok());
    assert!(compare(&f(&[1.0005, f64::NAN, f64::INFINITY, 5e-6]), &want).is_ok());
    assert!(compare(&f(&[1.01, f64::NAN, f64::INFINITY, 0.0]), &want).is_err());
    assert!(compare(&f(&[1.0, 0.0, f64::INFINITY, 0.0]), &want).is_err());
    assert!(compare(&f(&[1.0, f64::NAN, f64::NEG_INFINITY, 0.0]), &want).is_err());
    assert!(compare(&f(&[1.0, f64::NAN, f64::INFINITY]), &want).is_err());
    assert!(compare(&Tensor::from_f64s(DType::F64, &[4], &[1.0, f64::NAN, f64::INFINITY, 0.0]), &want).is_err());
    let ints = Tensor::vec_i64(&[1, 2]);
    assert!(compare(&ints, &Tensor::vec_i64(&[1, 2])).is_ok());
    assert!(compare(&ints, &Tensor::vec_i64(&[1, 3])).is_err());
    assert_eq!(skip_keys("op A, B not supported"), ["op A not supported", "op B not supported"]);
}
