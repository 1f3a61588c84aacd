//! Import of every ONNX backend node-test model shipped with the onnx Python
//! package, and export → re-import of each one kiln supports.
//!
//! The node-test directory is `<site-packages>/onnx/backend/test/data/node`
//! of the Python from `KILN_PYTHON`, else `<repo>/.venv/bin/python`, else
//! `/tmp/probe-venv/bin/python`; without one the tests say so and skip.

use kiln_ir::graph::Graph;
use kiln_ir::onnx::{
    export_opset, import_model_bytes, load_model, model_to_bytes, read_tensor_pb, ImportOptions,
};
use kiln_ir::IrError;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("ir/ is inside the repo").to_path_buf()
}

fn python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KILN_PYTHON").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.exists(), "KILN_PYTHON is set to {} but that does not exist", p.display());
        return Some(p);
    }
    [repo_root().join(".venv/bin/python"), PathBuf::from("/tmp/probe-venv/bin/python")].into_iter().find(|p| p.exists())
}

fn node_test_dir() -> Option<PathBuf> {
    let Some(python) = python() else {
        eprintln!("SKIPPED: no Python found (set KILN_PYTHON or run `make venv`)");
        return None;
    };
    let out = Command::new(&python)
        .args(["-c", "import onnx, os; print(os.path.dirname(onnx.__file__))"])
        .output()
        .expect("python runs");
    assert!(out.status.success(), "{} cannot import onnx: {}", python.display(), String::from_utf8_lossy(&out.stderr));
    let dir = PathBuf::from(String::from_utf8(out.stdout).expect("utf-8 path").trim()).join("backend/test/data/node");
    assert!(dir.is_dir(), "no node tests at {}", dir.display());
    Some(dir)
}

fn test_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .expect("node test dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.join("model.onnx").exists())
        .collect();
    dirs.sort();
    dirs
}

type NodeShape = (kiln_ir::Op, Vec<Option<String>>, Vec<Option<String>>);

fn structure(g: &Graph) -> BTreeMap<String, NodeShape> {
    let name = |v: Option<kiln_ir::ValueId>| v.map(|v| g.value(v).name.clone());
    g.node_ids()
        .into_iter()
        .map(|id| {
            let n = g.node(id);
            (n.name.clone(), (n.op.clone(), n.inputs.iter().map(|&v| name(v)).collect(), n.outputs.iter().map(|&v| name(v)).collect()))
        })
        .collect()
}

/// Differences between two graphs' nodes, inputs, outputs, initializers and
/// declared types, as text (empty when they agree).
fn graph_diff(a: &Graph, b: &Graph) -> Vec<String> {
    let mut diffs = Vec::new();
    let (sa, sb) = (structure(a), structure(b));
    for (name, shape) in &sa {
        match sb.get(name) {
            None => diffs.push(format!("node `{name}` missing after re-import")),
            Some(other) if other != shape => diffs.push(format!("node `{name}`: {shape:?} became {other:?}")),
            _ => {}
        }
    }
    for name in sb.keys().filter(|n| !sa.contains_key(*n)) {
        diffs.push(format!("node `{name}` appeared after re-import"));
    }
    let names = |g: &Graph, vs: &[kiln_ir::ValueId]| vs.iter().map(|&v| g.value(v).name.clone()).collect::<Vec<_>>();
    if names(a, a.inputs()) != names(b, b.inputs()) {
        diffs.push("graph inputs differ".into());
    }
    if names(a, a.outputs()) != names(b, b.outputs()) {
        diffs.push("graph outputs differ".into());
    }
    let inits = |g: &Graph| g.initializers().map(|(v, t)| (g.value(v).name.clone(), t.clone())).collect::<BTreeMap<_, _>>();
    if inits(a) != inits(b) {
        diffs.push("initializers differ".into());
    }
    for v in a.value_ids() {
        let val = a.value(v);
        if let Some(w) = b.value_by_name(&val.name) {
            if val.ty.is_some() && val.ty != b.value(w).ty {
                diffs.push(format!("type of `{}`: {:?} became {:?}", val.name, val.ty, b.value(w).ty));
            }
        }
    }
    diffs
}

#[test]
fn node_test_models_import_and_round_trip() {
    let Some(root) = node_test_dir() else { return };
    let dirs = test_dirs(&root);
    let mut imported = 0;
    let mut unsupported_ops: BTreeMap<String, usize> = BTreeMap::new();
    let mut unsupported_models = 0;
    let mut other_errors: Vec<(String, String)> = Vec::new();
    let mut exported = 0;
    let mut untyped_outputs = 0;
    let mut opset_raised = 0;
    let mut failures: Vec<String> = Vec::new();
    let export_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("node-test-exports");
    std::fs::create_dir_all(&export_dir).expect("scratch dir");
    let mut exported_files: Vec<String> = Vec::new();

    for dir in &dirs {
        let test = dir.file_name().expect("dir name").to_string_lossy().into_owned();
        let graph = match load_model(&dir.join("model.onnx"), ImportOptions::default()) {
            Ok(g) => g,
            Err(IrError::UnsupportedOp { op_type, domain, node, opset }) => {
                assert!(!node.is_empty() && opset > 0, "{test}: unsupported op `{op_type}` without node/opset");
                let key = if domain.is_empty() { op_type } else { format!("{domain}.{op_type}") };
                *unsupported_ops.entry(key).or_default() += 1;
                unsupported_models += 1;
                continue;
            }
            Err(e @ (IrError::Decode { .. } | IrError::Io { .. })) => {
                failures.push(format!("{test}: valid file rejected: {e}"));
                continue;
            }
            Err(e) => {
                let cause = match &e {
                    IrError::Value { message, .. } | IrError::Node { message, .. } => message.clone(),
                    other => other.to_string(),
                };
                other_errors.push((test, cause));
                continue;
            }
        };
        imported += 1;

        // The test data decodes and agrees with the declared input types.
        let data = dir.join("test_data_set_0");
        let mut input_files: Vec<PathBuf> = std::fs::read_dir(&data)
            .map(|rd| rd.map(|e| e.expect("dir entry").path()).collect())
            .unwrap_or_default();
        input_files.sort();
        for f in &input_files {
            let file = f.file_name().expect("file name").to_string_lossy().into_owned();
            match read_tensor_pb(f) {
                Err(e) => failures.push(format!("{test}/{file}: {e}")),
                Ok((_, t)) => {
                    let k = file.strip_prefix("input_").and_then(|s| s.strip_suffix(".pb")).and_then(|k| k.parse::<usize>().ok());
                    if let Some(&v) = k.and_then(|k| graph.inputs().get(k)) {
                        let ty = graph.value(v).ty.as_ref().expect("graph inputs are typed");
                        if (ty.dtype, ty.rank()) != (t.dtype(), t.shape().len()) {
                            failures.push(format!("{test}/{file}: {:?}{:?} for input declared {ty}", t.dtype(), t.shape()));
                        }
                    }
                }
            }
        }

        // Export needs types on the graph outputs; some node tests leave them
        // out, and filling them is type inference's job.
        if graph.outputs().iter().any(|&v| graph.value(v).ty.is_none()) {
            untyped_outputs += 1;
            continue;
        }
        let bytes = match model_to_bytes(&graph) {
            Ok(b) => b,
            Err(e) => {
                failures.push(format!("{test}: export failed: {e}"));
                continue;
            }
        };
        exported += 1;
        let file = export_dir.join(format!("{test}.onnx"));
        std::fs::write(&file, &bytes).expect("write exported model");
        exported_files.push(format!("{test}\t{}\t{}\t{}", dir.join("model.onnx").display(), file.display(), data.display()));
        if export_opset(&graph).expect("exported") != graph.opset_imports[""] {
            opset_raised += 1;
        }
        match import_model_bytes(&bytes, Some(dir), ImportOptions::default()) {
            Err(e) => failures.push(format!("{test}: re-import failed: {e}")),
            Ok(again) => {
                let diffs = graph_diff(&graph, &again);
                if !diffs.is_empty() {
                    failures.push(format!("{test}: re-import differs: {}", diffs.join("; ")));
                }
            }
        }
    }

    let mut by_count: Vec<(&String, &usize)> = unsupported_ops.iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    eprintln!("ONNX node tests: {} models", dirs.len());
    eprintln!("  imported: {imported}");
    eprintln!("  unsupported op: {unsupported_models} models, {} op types", unsupported_ops.len());
    eprintln!(
        "    {}",
        by_count.iter().map(|(op, n)| format!("{op} {n}")).collect::<Vec<_>>().join(", ")
    );
    eprintln!("  other import errors: {} models", other_errors.len());
    let mut causes: BTreeMap<String, usize> = BTreeMap::new();
    for (_, cause) in &other_errors {
        *causes.entry(cause.clone()).or_default() += 1;
    }
    for (cause, n) in &causes {
        eprintln!("    {n} x {cause}");
    }
    eprintln!("  exported and re-imported: {exported} (opset raised for {opset_raised}); skipped for untyped outputs: {untyped_outputs}");

    // Whatever kiln does not import must be for a reason it states: an op,
    // element type or value kind it does not support.
    for (test, cause) in &other_errors {
        if !(cause.contains("not supported") || cause.contains("supports only")) {
            failures.push(format!("{test}: unexpected import error: {cause}"));
        }
    }
    if failures.is_empty() {
        let list = export_dir.join("cases.tsv");
        std::fs::write(&list, exported_files.join("\n")).expect("write case list");
        let python = python().expect("found above");
        let out = Command::new(&python).arg("-c").arg(CHECK_EXPORTS).arg(&list).output().expect("python runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        eprintln!("  {}", stdout.trim().replace('\n', "\n  "));
        if !out.status.success() {
            failures.push(format!("exported models fail onnx/onnxruntime checks:\n{stdout}{}", String::from_utf8_lossy(&out.stderr)));
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    assert!(imported > 0 && exported > 0, "nothing imported");
    assert_eq!(imported + unsupported_models + other_errors.len(), dirs.len());
}

/// For each exported node-test model: `onnx.checker` with `full_check`,
/// then, when onnxruntime can run the original, the export must give the
/// same outputs on the test inputs.
const CHECK_EXPORTS: &str = r#"
import sys, os, re, numpy as np, onnx, onnxruntime as ort
from onnx import numpy_helper
cases = [l.split("\t") for l in open(sys.argv[1]).read().splitlines() if l]
so = ort.SessionOptions()
so.log_severity_level = 3
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
so.intra_op_num_threads = 1
checked = compared = ort_cannot_run_original = 0
failures = []
for test, original, exported, data in cases:
    try:
        onnx.checker.check_model(exported, full_check=True)
    except Exception as e:
        failures.append(f"{test}: checker: {e}")
        continue
    checked += 1
    files = sorted((int(m.group(1)), f) for f in os.listdir(data) if (m := re.match(r"input_(\d+)\.pb$", f)))
    arrays = []
    for _, f in files:
        t = onnx.TensorProto()
        t.ParseFromString(open(os.path.join(data, f), "rb").read())
        arrays.append(numpy_helper.to_array(t))
    try:
        s0 = ort.InferenceSession(original, so, providers=["CPUExecutionProvider"])
        want = s0.run(None, {i.name: a for i, a in zip(s0.get_inputs(), arrays)})
    except Exception:
        ort_cannot_run_original += 1
        continue
    try:
        s1 = ort.InferenceSession(exported, so, providers=["CPUExecutionProvider"])
        got = s1.run(None, {i.name: a for i, a in zip(s1.get_inputs(), arrays)})
    except Exception as e:
        failures.append(f"{test}: onnxruntime runs the original but not the export: {e}")
        continue
    for k, (w, g) in enumerate(zip(want, got)):
        w, g = np.asarray(w), np.asarray(g)
        same = w.shape == g.shape and w.dtype == g.dtype and (
            np.array_equal(w, g, equal_nan=w.dtype.kind in "fc"))
        if not same:
            failures.append(f"{test}: output {k} differs between the original and the export")
    compared += 1
print(f"onnx.checker(full_check) passed: {checked}/{len(cases)}; onnxruntime outputs identical: {compared} "
      f"(original not runnable by onnxruntime: {ort_cannot_run_original})")
for f in failures:
    print("FAIL", f)
sys.exit(1 if failures else 0)
"#;
