//! End-to-end tests of the `kiln` binary on the example models.
//!
//! The models come from `make models` (examples/models/gen/NAME/model.onnx
//! plus test_data_set_0 with inputs and onnxruntime's outputs; without them
//! the tests generate a set into their temp dir). Python (for independent
//! checks with the `onnx` package and NumPy) is found through `KILN_PYTHON`,
//! then `<repo>/.venv/bin/python` (see `kiln_test_support::python`).

use kiln::ir::onnx::export::write_tensor_pb;
use kiln::ir::onnx::import::read_tensor_pb;
use kiln::ir::op::{Op, UnaryOp};
use kiln::ir::{DType, Dim, Graph, Tensor, TensorType};
use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::*;

const MODEL_NAMES: [&str; 6] =
    ["gpt2_fused", "gpt2_unfused", "bert_fused", "bert_unfused", "llama_fused", "llama_unfused"];

/// Every example model directory, after checking that all of
/// make_models.py's models are there.
fn model_dirs() -> Vec<PathBuf> {
    let dir = models_dir();
    let dirs = kiln_test_support::model_dirs(&dir);
    for name in MODEL_NAMES {
        assert!(
            dir.join(name).join("model.onnx").is_file(),
            "{name} is missing from {}; run `make models`",
            dir.display()
        );
    }
    dirs
}

fn run_python(script: &str, args: &[&Path]) -> String {
    let python =
        kiln_test_support::python().expect("no Python with onnx and numpy: set KILN_PYTHON or run `make venv`");
    kiln_test_support::run_command(Command::new(python).arg("-c").arg(script).args(args), "python")
}

/// Graph inputs (minus initializers), outputs, op histogram and initializer
/// element count, as the `onnx` package sees the file.
fn onnx_facts(model: &Path) -> Json {
    let script = r#"
import collections, json, sys
import numpy as np
import onnx
from onnx import numpy_helper
g = onnx.load(sys.argv[1]).graph
inits = {t.name for t in g.initializer}
print(json.dumps({
    "inputs": [i.name for i in g.input if i.name not in inits],
    "outputs": [o.name for o in g.output],
    "ops": collections.Counter(n.op_type for n in g.node),
    "params": sum(int(np.prod(t.dims)) for t in g.initializer),
    "bytes": sum(numpy_helper.to_array(t).nbytes for t in g.initializer),
}))
"#;
    serde_json::from_str(&run_python(script, &[model])).expect("python prints JSON")
}

fn inspect_json(model: &Path) -> Json {
    let o = kiln(&[&"inspect", &model, &"--json"]);
    assert_ok(&o, "inspect --json");
    serde_json::from_str(&stdout(&o)).unwrap_or_else(|e| panic!("inspect --json is not JSON ({e}):\n{}", stdout(&o)))
}

fn names(list: &Json) -> Vec<String> {
    list.as_array().expect("a list").iter().map(|v| v["name"].as_str().expect("a name").to_string()).collect()
}

fn test_data(model_dir: &Path) -> PathBuf {
    model_dir.join("test_data_set_0")
}

/// The `K`-th reference output of a model's test data.
fn reference_output(model_dir: &Path, k: usize) -> Tensor {
    read_tensor_pb(&test_data(model_dir).join(format!("output_{k}.pb"))).expect("readable reference").1
}

fn reference_input(model_dir: &Path, k: usize) -> Tensor {
    read_tensor_pb(&test_data(model_dir).join(format!("input_{k}.pb"))).expect("readable input").1
}

fn count_pb(dir: &Path, prefix: &str) -> usize {
    (0..).take_while(|k| dir.join(format!("{prefix}{k}.pb")).is_file()).count()
}

// ---------------------------------------------------------------- inspect

#[test]
fn inspect_json_matches_the_onnx_files() {
    for dir in model_dirs() {
        let path = dir.join("model.onnx");
        let name = dir.file_name().and_then(|n| n.to_str()).expect("utf-8 name").to_string();
        let got = inspect_json(&path);
        let want = onnx_facts(&path);
        assert_eq!(names(&got["inputs"]), names_of(&want["inputs"]), "{name}: inputs");
        assert_eq!(names(&got["outputs"]), names_of(&want["outputs"]), "{name}: outputs");
        assert_eq!(got["ops"], want["ops"], "{name}: op histogram");
        let ops_total: u64 = got["ops"].as_object().expect("ops object").values().map(|v| v.as_u64().unwrap()).sum();
        assert_eq!(Some(ops_total), got["nodes"].as_u64(), "{name}: the histogram counts every node");
        // Old-opset attributes that became inputs add (tiny) initializers.
        let params = got["parameters"]["count"].as_u64().expect("parameter count");
        let onnx_params = want["params"].as_u64().expect("onnx parameter count");
        let bytes = got["parameters"]["bytes"].as_u64().expect("parameter bytes");
        let onnx_bytes = want["bytes"].as_u64().expect("onnx parameter bytes");
        if name.ends_with("_fused") {
            assert_eq!((params, bytes), (onnx_params, onnx_bytes), "{name}: parameter count and bytes");
        } else {
            assert!(params >= onnx_params && params < onnx_params + 1000, "{name}: {params} vs {onnx_params}");
            assert!(bytes >= onnx_bytes && bytes < onnx_bytes + 8000, "{name}: {bytes} vs {onnx_bytes} bytes");
        }
        for input in got["inputs"].as_array().unwrap() {
            assert_eq!(input["dtype"], "i64", "{name}: token inputs");
            assert_eq!(input["shape"], serde_json::json!(["batch", "seq"]), "{name}: symbolic shape");
        }
        assert!(got["opsets"]["ai.onnx"].as_i64().is_some(), "{name}: default-domain opset");
    }
}

fn names_of(list: &Json) -> Vec<String> {
    list.as_array().expect("a list").iter().map(|v| v.as_str().expect("a string").to_string()).collect()
}

#[test]
fn inspect_reports_fused_ops_and_symbolic_shapes() {
    let gpt2 = inspect_json(&model_dir("gpt2_fused").join("model.onnx"));
    for op in ["LayerNormalization", "Gelu", "Gemm", "SoftmaxCrossEntropyLoss", "MatMul"] {
        assert!(gpt2["ops"][op].as_u64().is_some_and(|n| n > 0), "gpt2_fused uses {op}: {}", gpt2["ops"]);
    }
    assert_eq!(gpt2["outputs"][1]["name"], "logits");
    assert_eq!(gpt2["outputs"][1]["shape"], serde_json::json!(["batch", "seq", 256]));
    assert_eq!(gpt2["outputs"][0]["shape"], serde_json::json!([]));
    let llama = inspect_json(&model_dir("llama_fused").join("model.onnx"));
    for op in ["RMSNormalization", "RotaryEmbedding"] {
        assert!(llama["ops"][op].as_u64().is_some(), "llama_fused uses {op}");
    }
    let unfused = inspect_json(&model_dir("gpt2_unfused").join("model.onnx"));
    assert!(unfused["ops"].get("LayerNormalization").is_none(), "unfused GPT-2 spells out layer norm");
    assert!(unfused["ops"]["ReduceMean"].as_u64().is_some());
}

#[test]
fn inspect_text_output() {
    let o = kiln(&[&"inspect", &model_dir("gpt2_fused").join("model.onnx")]);
    assert_ok(&o, "inspect");
    let text = stdout(&o);
    for needle in ["graph", "parameters", "input_ids", "i64", "[batch, seq]", "logits", "[batch, seq, 256]", "ops ("] {
        assert!(text.contains(needle), "inspect output mentions `{needle}`:\n{text}");
    }
    // The histogram is sorted by count, most frequent first.
    let counts: Vec<u64> = text
        .split("\nops (")
        .nth(1)
        .expect("an ops section")
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1).and_then(|c| c.parse().ok()))
        .collect();
    assert!(counts.len() > 5, "{text}");
    assert!(counts.windows(2).all(|w| w[0] >= w[1]), "sorted by count: {counts:?}");
}

// ---------------------------------------------------------------- run

#[test]
fn every_example_model_matches_onnxruntime() {
    for dir in model_dirs() {
        let name = dir.file_name().and_then(|n| n.to_str()).expect("utf-8 name").to_string();
        let out = tempfile::tempdir().expect("temp dir");
        let o = kiln(&[&"run", &dir.join("model.onnx"), &"--inputs", &test_data(&dir), &"--out", &out.path()]);
        assert_ok(&o, &name);
        let text = stdout(&o);
        let outputs = names(&inspect_json(&dir.join("model.onnx"))["outputs"]);
        assert_eq!(outputs.len(), count_pb(&test_data(&dir), "output_"), "{name}: one reference per output");
        // The CLI compared every output with onnxruntime's...
        let comparison = text.split("comparison with reference outputs").nth(1).unwrap_or_else(|| {
            panic!("{name}: the run compares with the reference outputs:\n{text}");
        });
        assert_eq!(
            comparison.lines().filter(|l| l.trim_end().ends_with(" ok")).count(),
            outputs.len(),
            "{name}:\n{text}"
        );
        // ...and the files it wrote match them too, checked here on our own.
        for (k, output) in outputs.iter().enumerate() {
            let file = out.path().join(format!("{output}.npy"));
            let got = kiln::read_npy(&file).unwrap_or_else(|e| panic!("{name}: {}: {e}", file.display()));
            assert_allclose(&got, &reference_output(&dir, k), &format!("{name}: {output}"));
        }
        let written = std::fs::read_dir(out.path()).unwrap().count();
        assert_eq!(written, outputs.len(), "{name}: one .npy per output");
    }
}

#[test]
fn numpy_reads_the_written_outputs() {
    let dir = model_dir("bert_fused");
    let out = tempfile::tempdir().unwrap();
    assert_ok(
        &kiln(&[&"run", &dir.join("model.onnx"), &"--inputs", &test_data(&dir), &"--out", &out.path()]),
        "run bert_fused",
    );
    let script = r#"
import sys, numpy as np, onnx
from onnx import numpy_helper
model, data, out = sys.argv[1:4]
g = onnx.load(model).graph
for k, o in enumerate(g.output):
    got = np.load(f"{out}/{o.name}.npy")
    t = onnx.TensorProto()
    t.ParseFromString(open(f"{data}/output_{k}.pb", "rb").read())
    want = numpy_helper.to_array(t)
    assert got.dtype == want.dtype and got.shape == want.shape, (o.name, got.dtype, got.shape, want.shape)
    assert np.allclose(got, want, rtol=1e-4, atol=1e-5), o.name
    print(o.name, got.dtype, got.shape)
"#;
    let printed = run_python(script, &[&dir.join("model.onnx"), &test_data(&dir), out.path()]);
    assert_eq!(printed.lines().count(), 2, "{printed}");
}

#[test]
fn reads_what_numpy_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let script = r#"
import sys, numpy as np
d = sys.argv[1]
a = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7
np.save(f"{d}/f4.npy", a)
np.save(f"{d}/f8_big.npy", a.astype(">f8"))
np.save(f"{d}/i2_fortran.npy", np.asfortranarray(np.arange(-6, 6, dtype=np.int16).reshape(3, 4)))
np.save(f"{d}/f2.npy", a.astype(np.float16))
np.save(f"{d}/b1.npy", a > 1)
np.save(f"{d}/u1.npy", np.arange(5, dtype=np.uint8))
np.save(f"{d}/i8_scalar.npy", np.int64(-3))
np.save(f"{d}/empty.npy", np.zeros((0, 3), dtype=np.int32))
"#;
    run_python(script, &[tmp.path()]);
    let read = |f: &str| kiln::read_npy(tmp.path().join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
    let expect: Vec<f64> = (0..24).map(|i| (i as f32 / 7.0) as f64).collect();
    let f4 = read("f4.npy");
    assert_eq!((f4.dtype(), f4.shape()), (DType::F32, &[2usize, 3, 4][..]));
    assert_eq!(f4.to_f64s(), expect);
    let f8 = read("f8_big.npy");
    assert_eq!((f8.dtype(), f8.to_f64s()), (DType::F64, expect.clone()));
    let fo = read("i2_fortran.npy");
    assert_eq!((fo.dtype(), fo.shape()), (DType::I16, &[3usize, 4][..]));
    assert_eq!(fo.to_i64s(), (-6..6).collect::<Vec<i64>>());
    let f2 = read("f2.npy");
    assert_eq!(f2.dtype(), DType::F16);
    assert!(f2.to_f64s().iter().zip(&expect).all(|(a, b)| (a - b).abs() < 2e-3));
    let b1 = read("b1.npy");
    assert_eq!(b1.dtype(), DType::Bool);
    assert_eq!(b1.to_i64s().iter().sum::<i64>(), expect.iter().filter(|&&v| v > 1.0).count() as i64);
    assert_eq!(read("u1.npy").to_i64s(), vec![0, 1, 2, 3, 4]);
    let s = read("i8_scalar.npy");
    assert_eq!((s.dtype(), s.shape().len(), s.to_i64s()), (DType::I64, 0, vec![-3]));
    assert_eq!(read("empty.npy").shape(), &[0, 3]);
}

#[test]
fn perturbed_reference_fails_and_tolerances_apply() {
    let dir = model_dir("gpt2_fused");
    let data = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(test_data(&dir)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), data.path().join(entry.file_name())).unwrap();
    }
    // Nudge one logit by far more than rtol * |x| + atol.
    let logits = reference_output(&dir, 1);
    let mut values = logits.to_f64s();
    values[17] += 0.01 + 0.01 * values[17].abs();
    let perturbed = Tensor::from_f64s(DType::F32, logits.shape(), &values);
    write_tensor_pb(&data.path().join("output_1.pb"), "logits", &perturbed).unwrap();

    let model_path = dir.join("model.onnx");
    let o = kiln(&[&"run", &model_path, &"--inputs", &data.path()]);
    assert_user_error(&o, &["output `logits` does not match", "output_1.pb", "max abs error", "1 of"], "perturbed");
    assert!(stdout(&o).contains("FAIL"), "the comparison table shows the failure:\n{}", stdout(&o));
    assert!(!stderr(&o).contains("`loss`"), "only the perturbed output fails:\n{}", stderr(&o));

    // A loose enough tolerance accepts it.
    assert_ok(&kiln(&[&"run", &model_path, &"--inputs", &data.path(), &"--atol", &"0.1"]), "loose atol");
    assert_ok(&kiln(&[&"run", &model_path, &"--inputs", &data.path(), &"--rtol", &"0.1", &"--atol", &"0.02"]), "rtol");

    // A reference of the wrong shape is reported as such.
    write_tensor_pb(&data.path().join("output_0.pb"), "loss", &Tensor::zeros(DType::F32, &[2])).unwrap();
    let o = kiln(&[&"run", &model_path, &"--inputs", &data.path(), &"--atol", &"0.1"]);
    assert_user_error(&o, &["output `loss`", "got f32[], expected f32[2]"], "wrong reference shape");
}

#[test]
fn inputs_from_npy_files() {
    let dir = model_dir("gpt2_fused");
    let tmp = tempfile::tempdir().unwrap();
    let ids = tmp.path().join("ids.npy");
    let labels = tmp.path().join("labels.npy");
    kiln::write_npy(&ids, &reference_input(&dir, 0)).unwrap();
    kiln::write_npy(&labels, &reference_input(&dir, 1)).unwrap();
    let out = tmp.path().join("out");
    let model_path = dir.join("model.onnx");
    let ids_arg = format!("input_ids={}", ids.display());
    let labels_arg = format!("labels={}", labels.display());
    let o = kiln(&[&"run", &model_path, &"--input", &ids_arg, &"--input", &labels_arg, &"--out", &out]);
    assert_ok(&o, "run with --input");
    let text = stdout(&o);
    assert!(text.contains("logits") && text.contains("f32[") && text.contains("mean"), "{text}");
    assert!(!text.contains("comparison"), "nothing to compare with:\n{text}");
    assert_allclose(&kiln::read_npy(out.join("logits.npy")).unwrap(), &reference_output(&dir, 1), "logits");
    assert_allclose(&kiln::read_npy(out.join("loss.npy")).unwrap(), &reference_output(&dir, 0), "loss");

    // .pb files work with --input too, and --input overrides the directory.
    let pb_arg = format!("labels={}", test_data(&dir).join("input_1.pb").display());
    assert_ok(&kiln(&[&"run", &model_path, &"--input", &ids_arg, &"--input", &pb_arg]), "--input .pb");
    let o = kiln(&[&"run", &model_path, &"--inputs", &test_data(&dir), &"--input", &labels_arg]);
    assert_ok(&o, "--input over --inputs");
}

#[test]
fn output_names_that_are_not_file_names() {
    let mut g = Graph::new("names");
    g.opset_imports.insert(String::new(), 23);
    let x = g.add_input("x", TensorType::new(DType::F32, vec![Dim::sym("n")])).unwrap();
    let node = g.add_node("neg", Op::Unary(UnaryOp::Neg), vec![Some(x)], &["scores/layer:0"]).unwrap();
    g.add_output(g.node(node).output(0).unwrap());
    kiln::ir::infer_types(&mut g).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let model_path = tmp.path().join("names.kiln");
    kiln::save(&g, &model_path).unwrap();
    let input = tmp.path().join("x.npy");
    kiln::write_npy(&input, &Tensor::from_f64s(DType::F32, &[3], &[1.0, -2.0, 3.5])).unwrap();
    let out = tmp.path().join("out");
    let x_arg = format!("x={}", input.display());
    let o = kiln(&[&"run", &model_path, &"--input", &x_arg, &"--out", &out]);
    assert_ok(&o, "run");
    assert!(stdout(&o).contains("written as scores_layer_0.npy"), "says so:\n{}", stdout(&o));
    let got = kiln::read_npy(out.join("scores_layer_0.npy")).unwrap();
    assert_eq!(got.to_f64s(), vec![-1.0, 2.0, -3.5]);
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1, "nothing written outside the file");
}

// ---------------------------------------------------------------- convert

#[test]
fn convert_round_trips_and_still_matches() {
    for name in ["gpt2_fused", "llama_unfused"] {
        let dir = model_dir(name);
        let tmp = tempfile::tempdir().unwrap();
        let text = tmp.path().join("model.kiln");
        let back = tmp.path().join("model.onnx");
        let again = tmp.path().join("again.kiln");
        let copy = tmp.path().join("copy.onnx");
        assert_ok(&kiln(&[&"convert", &dir.join("model.onnx"), &text]), "onnx -> kiln");
        assert_ok(&kiln(&[&"convert", &text, &back]), "kiln -> onnx");
        assert_ok(&kiln(&[&"convert", &text, &again]), "kiln -> kiln");
        assert_ok(&kiln(&[&"convert", &back, &copy]), "onnx -> onnx");
        assert_eq!(
            std::fs::read_to_string(&text).unwrap(),
            std::fs::read_to_string(&again).unwrap(),
            "{name}: printing is deterministic and parse/print is stable"
        );
        for converted in [&text, &back, &copy] {
            let o = kiln(&[&"run", converted, &"--inputs", &test_data(&dir)]);
            assert_ok(&o, &format!("{name}: run {}", converted.display()));
            assert!(stdout(&o).contains("comparison with reference outputs"));
        }
        // onnxruntime's view of the converted model agrees with the original.
        let original = onnx_facts(&dir.join("model.onnx"));
        let converted = onnx_facts(&back);
        assert_eq!(original["inputs"], converted["inputs"], "{name}");
        assert_eq!(original["outputs"], converted["outputs"], "{name}");
    }
}

// ---------------------------------------------------------------- errors

#[test]
fn model_file_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope.onnx");
    assert_user_error(&kiln(&[&"inspect", &missing]), &["nope.onnx"], "missing file");
    assert_user_error(&kiln(&[&"run", &missing]), &["nope.onnx"], "run missing file");

    let txt = tmp.path().join("model.txt");
    std::fs::write(&txt, "hello").unwrap();
    assert_user_error(&kiln(&[&"inspect", &txt]), &["unknown model file extension", ".onnx", ".kiln"], "extension");

    let garbage = tmp.path().join("garbage.onnx");
    std::fs::write(&garbage, (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect::<Vec<u8>>())
        .unwrap();
    assert_user_error(&kiln(&[&"inspect", &garbage]), &["garbage.onnx"], "garbage onnx");
    assert_user_error(&kiln(&[&"run", &garbage]), &["garbage.onnx"], "run garbage onnx");

    let bad_text = tmp.path().join("bad.kiln");
    std::fs::write(&bad_text, "graph ??? {\n  this is not kiln\n").unwrap();
    assert_user_error(&kiln(&[&"inspect", &bad_text]), &["bad.kiln", "line"], "garbage kiln");

    let out = tmp.path().join("out.xyz");
    let model_path = model_dir("gpt2_fused").join("model.onnx");
    assert_user_error(&kiln(&[&"convert", &model_path, &out]), &["out.xyz", "unknown model file extension"], "convert");
    assert!(!out.exists());
}

#[test]
fn input_errors() {
    let dir = model_dir("gpt2_fused");
    let model_path = dir.join("model.onnx");
    let tmp = tempfile::tempdir().unwrap();
    let ids = tmp.path().join("ids.npy");
    kiln::write_npy(&ids, &reference_input(&dir, 0)).unwrap();
    let ids_arg = format!("input_ids={}", ids.display());

    // Nothing at all, then one of two.
    assert_user_error(
        &kiln(&[&"run", &model_path]),
        &["missing inputs", "`input_ids` (i64[batch, seq])", "`labels`"],
        "none",
    );
    assert_user_error(
        &kiln(&[&"run", &model_path, &"--input", &ids_arg]),
        &["missing input `labels` (i64[batch, seq])", "--input NAME=FILE"],
        "one missing",
    );

    // Wrong dtype.
    let float_ids = tmp.path().join("float_ids.npy");
    kiln::write_npy(&float_ids, &reference_input(&dir, 0).cast(DType::F32)).unwrap();
    let o = kiln(&[
        &"run",
        &model_path,
        &"--inputs",
        &test_data(&dir),
        &"--input",
        &format!("labels={}", float_ids.display()),
    ]);
    assert_user_error(&o, &["input `labels` must be i64", "got a f32 tensor", "float_ids.npy"], "dtype");

    // Wrong rank, and a `seq` that disagrees with the other input's.
    let ids_t = reference_input(&dir, 0);
    let (batch, seq) = (ids_t.shape()[0], ids_t.shape()[1]);
    let flat = tmp.path().join("flat.npy");
    kiln::write_npy(&flat, &Tensor::zeros(DType::I64, &[batch * seq])).unwrap();
    let o = kiln(&[&"run", &model_path, &"--input", &ids_arg, &"--input", &format!("labels={}", flat.display())]);
    assert_user_error(&o, &["input `labels` must be i64[batch, seq] (rank 2)", "rank-1"], "rank");
    let longer = tmp.path().join("longer.npy");
    kiln::write_npy(&longer, &Tensor::zeros(DType::I64, &[batch, seq + 1])).unwrap();
    let o = kiln(&[&"run", &model_path, &"--input", &ids_arg, &"--input", &format!("labels={}", longer.display())]);
    assert_user_error(&o, &["`seq`", &format!("set to {seq}")], "seq mismatch");

    // Unknown input names, unreadable files.
    let o = kiln(&[&"run", &model_path, &"--input", &format!("input_idz={}", ids.display())]);
    assert_user_error(&o, &["no input named `input_idz`", "input_ids: i64[batch, seq]"], "unknown name");
    let bad_npy = tmp.path().join("bad.npy");
    std::fs::write(&bad_npy, b"\x93NUMPY\x01\x00\x10\x00{'descr': '<i8'").unwrap();
    let o = kiln(&[&"run", &model_path, &"--input", &format!("input_ids={}", bad_npy.display())]);
    assert_user_error(&o, &["bad.npy", "not a valid .npy file"], "malformed npy");
    let o = kiln(&[&"run", &model_path, &"--input", &format!("input_ids={}", tmp.path().join("x.csv").display())]);
    assert_user_error(&o, &["x.csv", "unknown tensor file extension"], "input extension");
    let o = kiln(&[&"run", &model_path, &"--inputs", &tmp.path().join("no_such_dir")]);
    assert_user_error(&o, &["no_such_dir"], "missing test-data dir");
}

#[test]
fn usage_errors_and_help() {
    let model_path = model_dir("gpt2_fused").join("model.onnx");
    let o = kiln(&[&"run", &model_path, &"--backend", &"llvm"]);
    assert_eq!(o.status.code(), Some(2), "usage errors exit with 2");
    assert!(stderr(&o).contains("possible values: interp"), "{}", stderr(&o));
    let o = kiln(&[&"run", &model_path, &"--rtol", &"-1"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(kiln(&[&"frobnicate"]).status.code(), Some(2));
    assert_eq!(kiln(&[]).status.code(), Some(2), "no subcommand prints help and fails");

    let o = kiln(&[&"--version"]);
    assert_ok(&o, "--version");
    assert_eq!(stdout(&o).trim(), format!("kiln {}", env!("CARGO_PKG_VERSION")));
    for (sub, needles) in [
        ("inspect", &["--json", "MODEL"][..]),
        (
            "run",
            &["--backend", "--input <NAME=FILE>", "--inputs <DIR>", "--out <DIR>", "--rtol", "--atol", "allclose"][..],
        ),
        ("convert", &[".onnx", ".kiln"][..]),
    ] {
        let o = kiln(&[&sub, &"--help"]);
        assert_ok(&o, sub);
        for n in needles {
            assert!(stdout(&o).contains(n), "`kiln {sub} --help` mentions {n}:\n{}", stdout(&o));
        }
    }
}
