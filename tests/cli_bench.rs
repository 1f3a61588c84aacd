//! Tests of `kiln bench` on the example models: the JSON report's keys and
//! their consistency, random inputs sized by `--dim` and kept inside the
//! ranges their uses need, inputs read from a directory, and the errors
//! for missing or wrong dims and bad input directories. Nothing here
//! asserts how fast anything is.

use kiln::ir::onnx::import::read_tensor_pb;
use kiln::ir::op::Op;
use kiln::ir::{DType, Tensor};
use serde_json::Value as Json;
use std::path::Path;

mod common;
use common::*;

fn bench_json(args: &[&dyn AsRef<std::ffi::OsStr>], what: &str) -> Json {
    let o = kiln(args);
    assert_ok(&o, what);
    serde_json::from_str(&stdout(&o)).unwrap_or_else(|e| panic!("{what}: --json is not JSON ({e}):\n{}", stdout(&o)))
}

fn number(report: &Json, key: &str) -> f64 {
    report[key].as_f64().unwrap_or_else(|| panic!("`{key}` is a number in {report:#}"))
}

/// The keys every report has, with values that agree with each other and
/// with the command line.
fn check_report(report: &Json, backend: &str, threads: u64, warmup: u64, iterations: u64, what: &str) {
    assert_eq!(report["backend"], backend, "{what}");
    assert_eq!(report["threads"], threads, "{what}");
    assert_eq!(report["warmup"], warmup, "{what}");
    assert_eq!(report["iterations"], iterations, "{what}");
    let runs = report["runs_ms"].as_array().expect("runs_ms is a list");
    assert_eq!(runs.len() as u64, iterations, "{what}: one latency per timed run");
    let (min, median, max) = (number(report, "min_ms"), number(report, "median_ms"), number(report, "max_ms"));
    assert!(0.0 <= min && min <= median && median <= max, "{what}: min <= median <= max in {report:#}");
    let mean = number(report, "mean_ms");
    assert!(min <= mean && mean <= max, "{what}: the mean lies between min and max");
    assert!(number(report, "stddev_ms") >= 0.0);
    for run in runs {
        let run = run.as_f64().expect("a latency");
        assert!(min <= run && run <= max, "{what}: every run lies between min and max");
    }
    assert!(number(report, "load_ms") >= 0.0 && number(report, "compile_ms") >= 0.0, "{what}");
    if backend == "interp" {
        assert_eq!(report["threads_used"], 1, "{what}: the interpreter is single-threaded");
    }
    if cfg!(target_os = "linux") {
        let peak = number(report, "peak_rss_mb");
        assert!(peak > 0.0, "{what}: a peak RSS");
        if report["peak_reset"] == true {
            let base = number(report, "baseline_rss_mb");
            let run_peak = number(report, "run_peak_rss_mb");
            let extra = number(report, "run_peak_extra_mb");
            assert!(run_peak <= peak + 1e-3, "{what}: the runs' peak is within the process's");
            assert!((run_peak - base - extra).abs() < 1e-2, "{what}: extra = run peak - baseline");
        }
    }
}

#[test]
fn json_report_on_every_example_model() {
    let dirs = kiln_test_support::example_model_dirs(Path::new(env!("CARGO_TARGET_TMPDIR")))
        .expect("no example models and no Python to generate them: run `make models`");
    assert!(dirs.len() >= 6, "the six example models");
    for dir in dirs {
        let what = dir.display().to_string();
        let report = bench_json(
            &[
                &"bench",
                &dir.join("model.onnx"),
                &"--inputs",
                &dir.join("test_data_set_0"),
                &"--warmup",
                &"1",
                &"--iterations",
                &"2",
                &"--threads",
                &"3",
                &"--json",
            ],
            &what,
        );
        check_report(&report, "interp", 3, 1, 2, &what);
        let inputs = report["inputs"].as_array().expect("inputs is a list");
        for (k, input) in inputs.iter().enumerate() {
            let source = input["source"].as_str().expect("a source");
            assert!(source.ends_with(&format!("input_{k}.pb")), "{what}: input {k} read from its file: {source}");
        }
        assert!(report["outputs"].as_u64().is_some_and(|n| n >= 1), "{what}: outputs counted");
    }
}

/// The size of the gathered axis of the Gather that reads `input` directly.
fn gather_table_rows(model: &Path, input: &str) -> u64 {
    let graph = kiln::load(model).expect("the example model loads");
    let v = graph.value_by_name(input).expect("the input exists");
    for &(node, slot) in graph.value(v).uses() {
        let node = graph.node(node);
        if let (Op::Gather { axis: 0 }, 1) = (&node.op, slot) {
            let table = graph.value(node.input(0).expect("Gather has data")).ty.as_ref().expect("typed");
            return table.shape[0].fixed().expect("a fixed table size");
        }
    }
    panic!("`{input}` feeds no Gather in {}", model.display());
}

#[test]
fn random_inputs_follow_dims_and_index_ranges() {
    for name in ["gpt2_fused", "gpt2_unfused", "bert_fused"] {
        let model = model_dir(name).join("model.onnx");
        let report = bench_json(
            &[
                &"bench",
                &model,
                &"--dim",
                &"batch=3",
                &"--dim",
                &"seq=5",
                &"--iterations",
                &"2",
                &"--threads",
                &"1",
                &"--json",
            ],
            name,
        );
        check_report(&report, "interp", 1, 1, 2, name);
        let inputs = report["inputs"].as_array().expect("inputs is a list");
        assert!(!inputs.is_empty());
        for input in inputs {
            assert_eq!(input["shape"], serde_json::json!([3, 5]), "{name}: --dim sizes the inputs");
            assert!(input["source"].as_str().is_some_and(|s| s.starts_with("random")), "{name}: {input}");
        }
        // Token ids stay inside the embedding table (the interpreter's
        // Gather would fail otherwise, but the report must also say so).
        let ids = inputs.iter().find(|i| i["name"] == "input_ids").expect("an input_ids input");
        let rows = gather_table_rows(&model, "input_ids");
        let source = ids["source"].as_str().expect("a source");
        assert!(source.contains(&format!("[0, {rows})")) && source.contains("Gather"), "{name}: {source}");
        if name.starts_with("gpt2") {
            let labels = inputs.iter().find(|i| i["name"] == "labels").expect("a labels input");
            let source = labels["source"].as_str().expect("a source");
            assert!(source.contains(&format!("[0, {rows})")) && source.contains("classes"), "{name}: {source}");
        } else {
            let mask = inputs.iter().find(|i| i["name"] == "attention_mask").expect("a mask input");
            assert_eq!(mask["source"], "random [0, 2) (not used as indices)", "{name}");
        }
    }
}

#[test]
fn text_report() {
    let model = model_dir("llama_fused").join("model.onnx");
    let o =
        kiln(&[&"bench", &model, &"--dim", &"batch=1", &"--dim", &"seq=4", &"--iterations", &"3", &"--threads", &"2"]);
    assert_ok(&o, "text report");
    let out = stdout(&o);
    for needle in ["with interp", "load", "compile", "median", "min", "max", "stddev", "after 1 warmup", "input_ids"] {
        assert!(out.contains(needle), "the report mentions `{needle}`:\n{out}");
    }
    assert!(
        out.contains("--threads 2 is recorded, not used"),
        "the interpreter does not pretend to use threads:\n{out}"
    );
    if cfg!(target_os = "linux") {
        assert!(out.contains("peak RSS"), "{out}");
    }
}

#[test]
fn npy_input_directory() {
    let dir = model_dir("gpt2_fused");
    let tmp = tempfile::tempdir().unwrap();
    for (k, name) in ["input_ids", "labels"].iter().enumerate() {
        let (_, t) = read_tensor_pb(&dir.join(format!("test_data_set_0/input_{k}.pb"))).expect("readable input");
        kiln::write_npy(tmp.path().join(format!("{name}.npy")), &t).unwrap();
    }
    let report = bench_json(
        &[
            &"bench",
            &dir.join("model.onnx"),
            &"--inputs",
            &tmp.path(),
            &"--iterations",
            &"1",
            &"--warmup",
            &"0",
            &"--json",
        ],
        "npy dir",
    );
    let threads = report["threads"].as_u64().expect("threads");
    assert!(threads >= 1, "the default thread count is the available cores");
    check_report(&report, "interp", threads, 0, 1, "npy dir");
    let sources: Vec<&str> =
        report["inputs"].as_array().unwrap().iter().map(|i| i["source"].as_str().unwrap()).collect();
    assert!(sources[0].ends_with("input_ids.npy") && sources[1].ends_with("labels.npy"), "{sources:?}");
}

#[test]
fn missing_and_wrong_dims() {
    let model = model_dir("gpt2_fused").join("model.onnx");
    assert_user_error(
        &kiln(&[&"bench", &model, &"--iterations", &"1"]),
        &["symbolic dims without a size", "--dim batch=VALUE", "--dim seq=VALUE", "`input_ids` (i64[batch, seq])"],
        "no dims",
    );
    let o = kiln(&[&"bench", &model, &"--dim", &"batch=2", &"--iterations", &"1"]);
    assert_user_error(&o, &["symbolic dim without a size", "--dim seq=VALUE"], "one dim");
    assert!(!stderr(&o).contains("--dim batch=VALUE"), "batch has a size:\n{}", stderr(&o));
    assert_user_error(
        &kiln(&[&"bench", &model, &"--dim", &"batch=2", &"--dim", &"sequence=4"]),
        &["--dim sequence", "no input of the model has a dim named `sequence`", "`batch`, `seq`"],
        "unknown dim",
    );
    assert_user_error(
        &kiln(&[&"bench", &model, &"--dim", &"batch=2", &"--dim", &"batch=3", &"--dim", &"seq=4"]),
        &["--dim batch is given twice"],
        "dim twice",
    );
    let dir = model_dir("gpt2_fused").join("test_data_set_0");
    let seq = read_tensor_pb(&dir.join("input_0.pb")).unwrap().1.shape()[1];
    let wrong = format!("seq={}", seq + 1);
    assert_user_error(
        &kiln(&[&"bench", &model, &"--inputs", &dir, &"--dim", &wrong]),
        &[&format!("--dim {wrong} disagrees with input `input_ids`"), &format!("is {seq}")],
        "dim against files",
    );
    for bad in ["seq", "seq=-1", "seq=x", "=4"] {
        let o = kiln(&[&"bench", &model, &"--dim", &bad]);
        assert_eq!(o.status.code(), Some(2), "`--dim {bad}` is a usage error:\n{}", stderr(&o));
    }
    let o = kiln(&[&"bench", &model, &"--iterations", &"0"]);
    assert_eq!(o.status.code(), Some(2), "--iterations 0 is a usage error");
}

#[test]
fn bad_input_directories() {
    let model = model_dir("gpt2_fused").join("model.onnx");
    let tmp = tempfile::tempdir().unwrap();

    let missing = tmp.path().join("no_such_dir");
    assert_user_error(&kiln(&[&"bench", &model, &"--inputs", &missing]), &["no_such_dir"], "missing dir");

    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert_user_error(
        &kiln(&[&"bench", &model, &"--inputs", &empty]),
        &["no input_K.pb or NAME.npy files"],
        "empty dir",
    );

    let misnamed = tmp.path().join("misnamed");
    std::fs::create_dir(&misnamed).unwrap();
    kiln::write_npy(misnamed.join("token_ids.npy"), &Tensor::zeros(DType::I64, &[1, 4])).unwrap();
    assert_user_error(
        &kiln(&[&"bench", &model, &"--inputs", &misnamed]),
        &["no input named `token_ids`", "input_ids: i64[batch, seq]"],
        "misnamed npy",
    );

    let wrong_dtype = tmp.path().join("wrong_dtype");
    std::fs::create_dir(&wrong_dtype).unwrap();
    kiln::write_npy(wrong_dtype.join("input_ids.npy"), &Tensor::zeros(DType::F32, &[1, 4])).unwrap();
    kiln::write_npy(wrong_dtype.join("labels.npy"), &Tensor::zeros(DType::I64, &[1, 4])).unwrap();
    assert_user_error(
        &kiln(&[&"bench", &model, &"--inputs", &wrong_dtype]),
        &["input `input_ids` must be i64", "got a f32 tensor"],
        "wrong dtype",
    );

    let one_missing = tmp.path().join("one_missing");
    std::fs::create_dir(&one_missing).unwrap();
    kiln::write_npy(one_missing.join("input_ids.npy"), &Tensor::zeros(DType::I64, &[1, 4])).unwrap();
    assert_user_error(
        &kiln(&[&"bench", &model, &"--inputs", &one_missing]),
        &["missing input `labels`"],
        "one missing",
    );

    let garbage = tmp.path().join("garbage");
    std::fs::create_dir(&garbage).unwrap();
    std::fs::write(garbage.join("input_0.pb"), b"\xff\xff\xff").unwrap();
    assert_user_error(&kiln(&[&"bench", &model, &"--inputs", &garbage]), &["input_0.pb"], "garbage pb");
}

/// `--backend cpu` produces the same report, with the threads it uses.
#[test]
fn cpu_backend_report() {
    let dir = model_dir("gpt2_fused");
    let report = bench_json(
        &[
            &"bench",
            &dir.join("model.onnx"),
            &"--backend",
            &"cpu",
            &"--inputs",
            &dir.join("test_data_set_0"),
            &"--iterations",
            &"2",
            &"--threads",
            &"2",
            &"--json",
        ],
        "cpu",
    );
    check_report(&report, "cpu", 2, 1, 2, "cpu");
    assert_eq!(report["threads_used"], 2, "the cpu backend uses the threads it is given");
    assert!(report.get("profile").is_none(), "no profile without --profile");
}

/// `--profile` lists every kernel with the node it computes; the shares
/// sum to one and scale to the mean run time. The interpreter refuses it.
#[test]
fn cpu_profile_names_each_kernel() {
    let dir = model_dir("gpt2_fused");
    let model = dir.join("model.onnx");
    let data = dir.join("test_data_set_0");
    let common: [&dyn AsRef<std::ffi::OsStr>; 8] =
        [&"bench", &model, &"--backend", &"cpu", &"--inputs", &data, &"--iterations", &"3"];
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = common.to_vec();
    args.extend([&"--profile" as &dyn AsRef<std::ffi::OsStr>, &"--json"]);
    let report = bench_json(&args, "profile json");
    let kernels = report["profile"].as_array().expect("a profile list");
    assert!(!kernels.is_empty());
    let graph = kiln::ir::load(&model).unwrap();
    let total: f64 = kernels.iter().map(|k| k["share"].as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-2, "shares sum to 1, got {total}");
    let ms: f64 = kernels.iter().map(|k| k["ms_per_run"].as_f64().unwrap()).sum();
    let mean = number(&report, "mean_ms");
    assert!((ms - mean).abs() <= 1e-2 * mean + 5e-3, "per-kernel ms sum to the mean run ({ms} vs {mean})");
    for k in kernels {
        let node = k["node"].as_str().unwrap();
        let ops = k["ops"].as_str().unwrap();
        if ops != "copy" {
            let id = graph.node_ids().into_iter().find(|&n| graph.node(n).name == node);
            let id = id.unwrap_or_else(|| panic!("profiled node `{node}` is not in the model"));
            assert!(ops.split('+').any(|op| op == graph.node(id).op.name()), "{ops} at {node}");
        }
    }
    let mut text_args: Vec<&dyn AsRef<std::ffi::OsStr>> = common.to_vec();
    text_args.push(&"--profile");
    let o = kiln(&text_args);
    assert_ok(&o, "profile text");
    assert!(stdout(&o).contains("by share of the run time"), "{}", stdout(&o));
    let o = kiln(&[&"bench", &model, &"--inputs", &data, &"--iterations", &"1", &"--profile"]);
    assert_user_error(&o, &["--profile needs --backend cpu"], "profile on the interpreter");
}

#[test]
fn help_says_how_inputs_are_made() {
    let o = kiln(&[&"bench", &"--help"]);
    assert_ok(&o, "bench --help");
    let help = stdout(&o);
    for needle in [
        "--backend",
        "--inputs <DIR>",
        "--warmup <N>",
        "--iterations <N>",
        "--threads <T>",
        "--dim <NAME=VALUE>",
        "--json",
        "[0, size of the gathered axis)",
        "[-1, 1)",
        "0 or 1",
        "threads_used 1",
        "VmHWM",
    ] {
        assert!(help.contains(needle), "`kiln bench --help` mentions `{needle}`:\n{help}");
    }
}
