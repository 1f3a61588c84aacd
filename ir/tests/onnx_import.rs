//! Import of every ONNX backend node-test model shipped with the onnx Python
//! package, and export → re-import of each one kiln supports.
//!
//! The node-test directory is `<site-packages>/onnx/backend/test/data/node`
//! of the Python from `KILN_PYTHON`, else `<repo>/.venv/bin/python` (see
//! `kiln_test_support::python`); without one the tests say so and skip.

use kiln_ir::graph::Graph;
use kiln_ir::onnx::{export_opset, import_model_bytes, load_model, model_to_bytes, read_tensor_pb, ImportOptions};
use kiln_ir::IrError;
use kiln_test_support::{model_dirs, onnx_node_test_dir, python, run_command};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn node_test_dir() -> Option<PathBuf> {
    let Some(python) = python() else {
        eprintln!("SKIPPED: no Python found (set KILN_PYTHON or run `make venv`)");
        return None;
    };
    Some(onnx_node_test_dir(&python))
}

type NodeShape = (kiln_ir::Op, Vec<Option<String>>, Vec<Option<String>>);

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
    let inits =
        |g: &Graph| g.initializers().map(|(v, t)| (g.value(v).name.clone(), t.clone())).collect::<BTreeMap<_, _>>();
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
    let dirs = model_dirs(&root);
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
        let mut input_files: Vec<PathBuf> =
            std::fs::read_dir(&data).map(|rd| rd.map(|e| e.expect("dir entry").path()).collect()).unwrap_or_default();
        input_files.sort();
        for f in &input_files {
            let file = f.file_name().expect("file name").to_string_lossy().into_owned();
            match read_tensor_pb(f) {
                Err(e) => failures.push(format!("{test}/{file}: {e}")),
                Ok((_, t)) => {
                    let k = file
                        .strip_prefix("input_")
                        .and_then(|s| s.strip_suffix(".pb"))
                        .and_then(|k| k.parse::<usize>().ok());
                    if let Some(&v) = k.and_then(|k| graph.inputs().get(k)) {
                        let ty = graph.value(v).ty.as_ref().expect("graph inputs are typed");
                        if (ty.dtype, ty.rank()) != (t.dtype(), t.shape().len()) {
                            failures.push(format!(
                                "{test}/{file}: {:?}{:?} for input declared {ty}",
                                t.dtype(),
                                t.shape()
                            ));
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
        exported_files.push(format!(
            "{test}\t{}\t{}\t{}",
            dir.join("model.onnx").display(),
            file.display(),
            data.display()
        ));
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
    eprintln!("    {}", by_count.iter().map(|(op, n)| format!("{op} {n}")).collect::<Vec<_>>().join(", "));
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
            failures.push(format!(
                "exported models fail onnx/onnxruntime checks:\n{stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            ));
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
strict = sys.argv[2:] == ["strict"]
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
    except Exception as e:
        if strict:
            failures.append(f"{test}: onnxruntime cannot run the original: {e}")
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

/// Writes small models in the old forms the importer rewrites (attributes
/// that became inputs, 2-D Softmax, Constant shorthands, ...) with test
/// inputs, one directory per case.
const MAKE_LEGACY_MODELS: &str = r#"
import sys, os, numpy as np, onnx
from onnx import helper, numpy_helper, TensorProto as TP
out = sys.argv[1]
rng = np.random.default_rng(0)
F = TP.FLOAT
def vi(name, shape, ty=F):
    return helper.make_tensor_value_info(name, ty, shape)
def case(name, opset, nodes, inputs, outputs, arrays, sorted_nodes=True):
    g = helper.make_graph(nodes, name, inputs, outputs)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=7)
    if sorted_nodes:
        onnx.checker.check_model(m)
    d = os.path.join(out, name)
    os.makedirs(os.path.join(d, "test_data_set_0"), exist_ok=True)
    onnx.save(m, os.path.join(d, "model.onnx"))
    for k, a in enumerate(arrays):
        onnx.save_tensor(numpy_helper.from_array(a), os.path.join(d, "test_data_set_0", f"input_{k}.pb"))
def r(*shape):
    return rng.standard_normal(shape).astype(np.float32)
N = helper.make_node
case("squeeze_11", 11, [N("Squeeze", ["x"], ["y"], name="sq", axes=[0, 2])], [vi("x", [1, 3, 1, 4])], [vi("y", [3, 4])], [r(1, 3, 1, 4)])
case("unsqueeze_11_negative", 11, [N("Unsqueeze", ["x"], ["y"], name="unsq", axes=[-1])], [vi("x", [3, 4])], [vi("y", [3, 4, 1])], [r(3, 4)])
case("split_11_sizes", 11, [N("Split", ["x"], ["a", "b"], name="split", axis=0, split=[2, 4])], [vi("x", [6, 2])], [vi("a", [2, 2]), vi("b", [4, 2])], [r(6, 2)])
case("split_11_equal", 11, [N("Split", ["x"], ["a", "b", "c"], name="split", axis=1)], [vi("x", [2, 6])], [vi(n, [2, 2]) for n in "abc"], [r(2, 6)])
case("softmax_11_middle_axis", 11, [N("Softmax", ["x"], ["y"], name="sm", axis=1)], [vi("x", [2, 3, 4])], [vi("y", [2, 3, 4])], [r(2, 3, 4)])
case("softmax_11_default_axis_2d", 11, [N("Softmax", ["x"], ["y"], name="sm")], [vi("x", [2, 5])], [vi("y", [2, 5])], [r(2, 5)])
case("logsoftmax_11_last", 11, [N("LogSoftmax", ["x"], ["y"], name="lsm", axis=-1)], [vi("x", [2, 3, 4])], [vi("y", [2, 3, 4])], [r(2, 3, 4)])
case("reducesum_11_axes", 11, [N("ReduceSum", ["x"], ["y"], name="rs", axes=[1], keepdims=0)], [vi("x", [2, 3, 4])], [vi("y", [2, 4])], [r(2, 3, 4)])
case("reducemean_13_axes", 13, [N("ReduceMean", ["x"], ["y"], name="rm", axes=[-1])], [vi("x", [2, 3])], [vi("y", [2, 1])], [r(2, 3)])
case("slice_9", 9, [N("Slice", ["x"], ["y"], name="sl", starts=[0, 1], ends=[2, 3], axes=[0, 1])], [vi("x", [3, 4])], [vi("y", [2, 2])], [r(3, 4)])
case("topk_9", 9, [N("TopK", ["x"], ["v", "i"], name="tk", k=2)], [vi("x", [3, 5])], [vi("v", [3, 2]), vi("i", [3, 2], TP.INT64)], [r(3, 5)])
case("clip_6", 7, [N("Clip", ["x"], ["y"], name="clip", min=-0.5, max=0.5)], [vi("x", [4, 3])], [vi("y", [4, 3])], [r(4, 3)])
case("pad_10", 10, [N("Pad", ["x"], ["y"], name="pad", pads=[0, 1, 0, 1], value=1.5)], [vi("x", [2, 3])], [vi("y", [2, 5])], [r(2, 3)])
case("dropout_10_ratio", 10, [N("Dropout", ["x"], ["y"], name="drop", ratio=0.3)], [vi("x", [2, 3])], [vi("y", [2, 3])], [r(2, 3)])
case("reshape_4_shape_attr", 4, [N("Reshape", ["x"], ["y"], name="rs", shape=[3, 2])], [vi("x", [2, 3])], [vi("y", [3, 2])], [r(2, 3)])
case("constant_12_shorthands", 12, [
    N("Constant", [], ["shape"], name="c_shape", value_ints=[3, 2]),
    N("Constant", [], ["two"], name="c_two", value_float=2.0),
    N("Reshape", ["x", "shape"], ["r"], name="reshape"),
    N("Mul", ["r", "two"], ["y"], name="mul"),
], [vi("x", [2, 3])], [vi("y", [3, 2])], [r(2, 3)])
case("add_6_broadcast", 6, [N("Add", ["a", "b"], ["y"], name="add", broadcast=1)], [vi("a", [2, 3]), vi("b", [3])], [vi("y", [2, 3])], [r(2, 3), r(3)])
case("unsorted_nodes_13", 13, [
    N("Relu", ["t"], ["y"], name="second"),
    N("Neg", ["x"], ["t"], name="first"),
], [vi("x", [2, 3])], [vi("y", [2, 3])], [r(2, 3)], sorted_nodes=False)
"#;

/// Old-opset forms: what the importer makes of them, that they are written
/// back at their own opset, and that onnxruntime computes the same outputs
/// from the export as from the original.
#[test]
fn old_opset_forms_are_normalized_and_written_back() {
    let Some(python) = python() else {
        eprintln!("SKIPPED: no Python found (set KILN_PYTHON or run `make venv`)");
        return;
    };
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR")).join("legacy-forms");
    let _ = std::fs::remove_dir_all(&tmp);
    let models = tmp.join("models");
    run_command(Command::new(&python).arg("-c").arg(MAKE_LEGACY_MODELS).arg(&models), "legacy model generation");

    let load = |case: &str| {
        load_model(&models.join(case).join("model.onnx"), ImportOptions::default())
            .unwrap_or_else(|e| panic!("{case}: {e}"))
    };
    let op_names = |g: &Graph| g.node_ids().into_iter().map(|id| g.node(id).op.name()).collect::<Vec<_>>();
    let init = |g: &Graph, name: &str| {
        g.value(g.value_by_name(name).unwrap_or_else(|| panic!("no value `{name}`")))
            .initializer
            .clone()
            .unwrap_or_else(|| panic!("`{name}` is not an initializer"))
            .to_f64s()
    };

    let g = load("squeeze_11");
    assert_eq!(init(&g, "sq.axes"), vec![0.0, 2.0]);
    let g = load("split_11_sizes");
    assert_eq!(init(&g, "split.split"), vec![2.0, 4.0]);
    let g = load("split_11_equal");
    assert_eq!(g.node(g.node_by_name("split").unwrap()).op, kiln_ir::Op::Split { axis: 1, num_outputs: Some(3) });
    let g = load("softmax_11_middle_axis");
    assert_eq!(op_names(&g), vec!["Flatten", "Softmax", "Shape", "Reshape"]);
    assert_eq!(g.node(g.node_by_name("sm").unwrap()).op, kiln_ir::Op::Softmax { axis: 1 });
    let g = load("softmax_11_default_axis_2d");
    assert_eq!(op_names(&g), vec!["Softmax"]);
    let g = load("reducesum_11_axes");
    assert!(
        matches!(&g.node(g.node_by_name("rs").unwrap()).op, kiln_ir::Op::Reduce { axes: Some(a), keepdims: false, .. } if a == &[1])
    );
    let g = load("topk_9");
    assert_eq!(init(&g, "tk.k"), vec![2.0]);
    let g = load("clip_6");
    assert_eq!((init(&g, "clip.min"), init(&g, "clip.max")), (vec![-0.5], vec![0.5]));
    let g = load("pad_10");
    assert_eq!((init(&g, "pad.pads"), init(&g, "pad.value")), (vec![0.0, 1.0, 0.0, 1.0], vec![1.5]));
    let g = load("dropout_10_ratio");
    assert_eq!(init(&g, "drop.ratio"), vec![0.3f32 as f64]);
    let g = load("constant_12_shorthands");
    assert!(
        matches!(&g.node(g.node_by_name("c_shape").unwrap()).op, kiln_ir::Op::Constant { value } if value.to_i64s() == [3, 2])
    );
    let g = load("add_6_broadcast");
    assert_eq!(op_names(&g), vec!["Add"]);
    let g = load("unsorted_nodes_13");
    let order: Vec<String> = g.topo_order().unwrap().into_iter().map(|id| g.node(id).name.clone()).collect();
    assert_eq!(order, ["first", "second"]);

    // Export each at its own opset and compare with onnxruntime; ReduceMean
    // is also written at opset 18, where its axes become an input.
    let exports = tmp.join("exports");
    std::fs::create_dir_all(&exports).expect("scratch dir");
    let mut cases = Vec::new();
    for dir in model_dirs(&models) {
        let case = dir.file_name().unwrap().to_string_lossy().into_owned();
        let g = load(&case);
        let mut variants = vec![(case.clone(), g.clone())];
        if case == "reducemean_13_axes" {
            let mut g18 = g.clone();
            g18.opset_imports.insert(String::new(), 18);
            variants.push((format!("{case}_as_18"), g18));
        }
        for (name, g) in variants {
            // Numpy-style broadcasting needs opset 7, so the opset-6 Add is
            // the one model written at a newer opset than it came in.
            let want = if case == "add_6_broadcast" { 7 } else { g.opset_imports[""] };
            assert_eq!(export_opset(&g).unwrap(), want, "{name}: export opset");
            let file = exports.join(format!("{name}.onnx"));
            std::fs::write(&file, model_to_bytes(&g).unwrap_or_else(|e| panic!("{name}: {e}"))).unwrap();
            let again = import_model_bytes(&std::fs::read(&file).unwrap(), None, ImportOptions::default()).unwrap();
            if name == "reducemean_13_axes_as_18" {
                // From opset 18 the axes are an input, so they come back as one.
                let rm = again.node(again.node_by_name("rm").unwrap());
                assert!(matches!(rm.op, kiln_ir::Op::Reduce { axes: None, .. }), "{:?}", rm.op);
                assert_eq!(init(&again, "rm.axes"), vec![-1.0]);
            } else {
                let diffs = graph_diff(&g, &again);
                assert!(diffs.is_empty(), "{name}: re-import differs: {diffs:?}");
            }
            if case != "add_6_broadcast" {
                // onnxruntime has no kernels for opset-6 Add.
                cases.push(format!(
                    "{name}\t{}\t{}\t{}",
                    dir.join("model.onnx").display(),
                    file.display(),
                    dir.join("test_data_set_0").display()
                ));
            }
        }
    }
    let list = tmp.join("cases.tsv");
    std::fs::write(&list, cases.join("\n")).unwrap();
    let out =
        Command::new(&python).arg("-c").arg(CHECK_EXPORTS).arg(&list).arg("strict").output().expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("legacy forms: {}", stdout.trim());
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
}
