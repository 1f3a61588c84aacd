//! Import → export round trip of the example models, checked by ONNX and
//! onnxruntime: every exported model must pass `onnx.checker` with
//! `full_check`, and onnxruntime must compute the reference outputs from it.
//!
//! Python comes from `KILN_PYTHON`, else `<repo>/.venv/bin/python` (see
//! `kiln_test_support::python`); without one the test says so and skips.

use kiln_ir::graph::Graph;
use kiln_ir::onnx::{
    export_opset, load_model, read_tensor_pb, save_model, save_model_with, ExportOptions, ImportOptions,
};
use kiln_test_support::{example_model_dirs, python, repo_root, run_command};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// Checks the model with the ONNX checker (full_check runs shape inference
/// too) and compares onnxruntime's outputs, written by ort_run.py as
/// `<name>.npy`, with the reference `output_K.pb`, K in graph-output order.
const CHECK_AND_COMPARE: &str = r#"
import sys, os, numpy as np, onnx
from onnx import numpy_helper
model_path, data_dir, ort_dir = sys.argv[1:4]
onnx.checker.check_model(model_path, full_check=True)
m = onnx.load(model_path, load_external_data=False)
for k, out in enumerate(m.graph.output):
    ref = onnx.TensorProto()
    with open(os.path.join(data_dir, f"output_{k}.pb"), "rb") as f:
        ref.ParseFromString(f.read())
    want = numpy_helper.to_array(ref)
    got = np.load(os.path.join(ort_dir, out.name.replace("/", "_") + ".npy"))
    assert got.shape == want.shape and got.dtype == want.dtype, (out.name, got.shape, want.shape, got.dtype, want.dtype)
    err = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) if want.size else 0.0
    ok = np.allclose(got, want, rtol=1e-4, atol=1e-5)
    print(f"{out.name}: max abs err {err:.3g} {'ok' if ok else 'MISMATCH'}")
    assert ok, out.name
"#;

fn check_with_onnxruntime(python: &Path, model: &Path, data_dir: &Path, scratch: &Path) -> String {
    let ort_dir = scratch.join("ort");
    run_command(
        Command::new(python)
            .arg(repo_root().join("tests/support/ort_run.py"))
            .arg(model)
            .arg("--inputs")
            .arg(data_dir)
            .arg("--out")
            .arg(&ort_dir),
        &format!("ort_run.py on {}", model.display()),
    );
    run_command(
        Command::new(python).arg("-c").arg(CHECK_AND_COMPARE).arg(model).arg(data_dir).arg(&ort_dir),
        &format!("checker/compare of {}", model.display()),
    )
}

type NodeShape = (kiln_ir::Op, Vec<Option<String>>, Vec<Option<String>>);

/// Nodes by name with their ops and wiring by value name.
fn structure(g: &Graph) -> BTreeMap<String, NodeShape> {
    let name = |v: Option<kiln_ir::ValueId>| v.map(|v| g.value(v).name.clone());
    g.node_ids()
        .into_iter()
        .map(|id| {
            let n = g.node(id);
            (
                n.name.clone(),
                (
                    n.op.clone(),
                    n.inputs.iter().map(|&v| name(v)).collect(),
                    n.outputs.iter().map(|&v| name(v)).collect(),
                ),
            )
        })
        .collect()
}

fn assert_same_graph(a: &Graph, b: &Graph, what: &str) {
    assert_eq!(structure(a), structure(b), "{what}: nodes differ");
    let names = |g: &Graph, vs: &[kiln_ir::ValueId]| vs.iter().map(|&v| g.value(v).name.clone()).collect::<Vec<_>>();
    assert_eq!(names(a, a.inputs()), names(b, b.inputs()), "{what}: graph inputs differ");
    assert_eq!(names(a, a.outputs()), names(b, b.outputs()), "{what}: graph outputs differ");
    let inits =
        |g: &Graph| g.initializers().map(|(v, t)| (g.value(v).name.clone(), t.clone())).collect::<BTreeMap<_, _>>();
    assert_eq!(inits(a), inits(b), "{what}: initializers differ");
    for v in a.value_ids() {
        let name = &a.value(v).name;
        if let Some(w) = b.value_by_name(name) {
            assert_eq!(a.value(v).ty, b.value(w).ty, "{what}: type of `{name}` differs");
        }
    }
}

#[test]
fn example_models_round_trip_through_onnxruntime() {
    let Some(python) = python() else {
        eprintln!("SKIPPED example_models_round_trip_through_onnxruntime: no Python found (set KILN_PYTHON or run `make venv`)");
        return;
    };
    let models = example_model_dirs(Path::new(env!("CARGO_TARGET_TMPDIR"))).expect("generated with the Python found");
    assert!(!models.is_empty(), "no example models found");
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR")).join("onnx-roundtrip");
    let mut report = Vec::new();
    for dir in &models {
        let name = dir.file_name().expect("model dir name").to_string_lossy().into_owned();
        let original = load_model(&dir.join("model.onnx"), ImportOptions::default())
            .unwrap_or_else(|e| panic!("{name}: import failed: {e}"));
        let data_dir = dir.join("test_data_set_0");

        // The reference tensors decode and match the declared output dtypes.
        for (k, &out) in original.outputs().iter().enumerate() {
            let (_, t) = read_tensor_pb(&data_dir.join(format!("output_{k}.pb"))).expect("reference output decodes");
            let ty = original.value(out).ty.as_ref().expect("example outputs are typed");
            assert_eq!((t.dtype(), t.shape().len()), (ty.dtype, ty.rank()), "{name}: output {k}");
        }
        // Exporting must not raise the opset of a model kiln imported.
        assert_eq!(export_opset(&original).unwrap(), original.opset_imports[""], "{name}: opset changed");

        let scratch = tmp.join(&name);
        std::fs::create_dir_all(&scratch).expect("scratch dir");
        let exported = scratch.join("model.onnx");
        save_model(&original, &exported).unwrap_or_else(|e| panic!("{name}: export failed: {e}"));
        assert!(!scratch.join("model.onnx.data").exists(), "{name}: small model got external data");
        let summary = check_with_onnxruntime(&python, &exported, &data_dir, &scratch);
        let again = load_model(&exported, ImportOptions::default()).expect("exported model imports");
        assert_same_graph(&original, &again, &name);
        report.push(format!("{name} (inline): {}", summary.trim().replace('\n', "; ")));

        // The same with every weight in an external data file.
        let ext_dir = scratch.join("external");
        std::fs::create_dir_all(&ext_dir).expect("scratch dir");
        let ext_model = ext_dir.join("model.onnx");
        save_model_with(&original, &ext_model, ExportOptions { external_data_threshold: Some(0) })
            .unwrap_or_else(|e| panic!("{name}: export with external data failed: {e}"));
        let data_len = std::fs::metadata(ext_dir.join("model.onnx.data")).expect("external data file").len();
        assert!(data_len > 0);
        assert!(std::fs::metadata(&ext_model).unwrap().len() < data_len, "{name}: weights stayed inline");
        let summary = check_with_onnxruntime(&python, &ext_model, &data_dir, &ext_dir);
        let mut calls = Vec::new();
        let mut progress = |done: u64, total: u64| calls.push((done, total));
        let again =
            load_model(&ext_model, ImportOptions { progress: Some(&mut progress) }).expect("external model imports");
        assert_same_graph(&original, &again, &format!("{name} (external)"));
        let total = calls.last().expect("progress was reported").1;
        assert!(total > 0 && calls.last().unwrap().0 == total, "{name}: progress {calls:?}");
        assert!(calls.windows(2).all(|w| w[0].0 <= w[1].0), "{name}: progress went backwards");
        report.push(format!("{name} (external): {}", summary.trim().replace('\n', "; ")));
    }
    eprintln!("onnx round trip:\n  {}", report.join("\n  "));
}
