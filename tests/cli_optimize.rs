//! End-to-end tests of `kiln optimize`, `kiln explain` and `kiln rules`.
//!
//! On every example model (examples/models/gen, see tests/cli.rs), the
//! optimized model must compute what the original computes in kiln's
//! interpreter, and its `--portable` form must run in onnxruntime with the
//! reference outputs. Per model, every layer's attention must become one
//! `Attention` and, where the model has a loss, the loss one
//! `kiln.LinearCrossEntropy` (issue 3's acceptance); the forms each rule
//! matches are tested in kiln-passes.

use kiln::ir::onnx::import::read_tensor_pb;
use kiln::ir::op::{Op, UnaryOp};
use kiln::ir::{DType, Graph, Tensor, TensorType};
use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::*;

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-optimize").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("the test temp dir is writable");
    dir
}

fn model_dirs() -> Vec<PathBuf> {
    let dirs = kiln_test_support::example_model_dirs(Path::new(env!("CARGO_TARGET_TMPDIR")))
        .expect("no example models and no Python to generate them: run `make models`");
    assert_eq!(dirs.len(), 6, "gpt2/bert/llama x fused/unfused: {dirs:?}");
    dirs
}

fn read_json(path: &Path) -> Json {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON ({e}):\n{text}", path.display()))
}

/// The outputs `kiln run --out` wrote, in graph-output order.
fn run_outputs(model: &Path, inputs: &Path, out: &Path) -> Vec<Tensor> {
    let o = kiln(&[&"run", &model, &"--inputs", &inputs, &"--out", &out]);
    assert_ok(&o, &format!("kiln run {}", model.display()));
    let graph = kiln::load(model).expect("the model loads");
    graph
        .outputs()
        .iter()
        .map(|&v| {
            let name = &graph.value(v).name;
            kiln::read_npy(out.join(format!("{name}.npy"))).unwrap_or_else(|e| panic!("output {name}: {e}"))
        })
        .collect()
}

/// The keys every `--report` must have, with the JSON types they hold.
fn assert_report_shape(report: &Json, what: &str) {
    for key in ["rewrites", "passes", "errors", "notes"] {
        assert!(report[key].is_array(), "{what}: `{key}` is a list:\n{report:#}");
    }
    for key in ["ops_before", "ops_after", "cost_before", "cost_after"] {
        assert!(report[key].is_object(), "{what}: `{key}` is an object:\n{report:#}");
    }
    for key in ["nodes", "flops", "bytes", "peak_bytes"] {
        assert!(report["cost_before"][key].is_number(), "{what}: cost_before.{key}");
        assert!(report["cost_after"][key].is_number(), "{what}: cost_after.{key}");
    }
    for r in report["rewrites"].as_array().expect("a list") {
        assert!(r["rule"].is_string() && r["nodes"].is_array(), "{what}: rewrite {r}");
    }
    for p in report["passes"].as_array().expect("a list") {
        for key in ["name", "iterations", "egraph_nodes", "egraph_classes", "stop", "limit_hit"] {
            assert!(!p[key].is_null(), "{what}: pass entry has `{key}`: {p}");
        }
    }
    assert!(report["limit_hit"].is_boolean(), "{what}: limit_hit");
}

/// The op histogram of a model file as `kiln inspect --json` counts it.
fn ops_of(model: &Path) -> Json {
    let o = kiln(&[&"inspect", &model, &"--json"]);
    assert_ok(&o, "inspect --json");
    let j: Json = serde_json::from_str(&stdout(&o)).expect("inspect prints JSON");
    j["ops"].clone()
}

#[test]
fn optimized_models_compute_the_same_outputs() {
    for dir in model_dirs() {
        let name = dir.file_name().expect("a directory name").to_string_lossy().into_owned();
        let work = scratch(&format!("same-{name}"));
        let model = dir.join("model.onnx");
        let inputs = dir.join("test_data_set_0");
        let optimized = work.join("optimized.onnx");
        let report = work.join("report.json");
        let o = kiln(&[&"optimize", &model, &"-o", &optimized, &"-O2", &"--report", &report]);
        assert_ok(&o, &format!("optimize {name}"));
        let summary = stdout(&o);
        assert!(summary.contains("FLOPs") && summary.contains("peak memory"), "{name}: costs:\n{summary}");
        assert!(summary.contains("saturation"), "{name}: saturation statistics:\n{summary}");

        let json = read_json(&report);
        assert_report_shape(&json, &name);
        assert_eq!(json["ops_after"], ops_of(&optimized), "{name}: ops_after is the written model's histogram");
        assert_eq!(json["ops_before"], ops_of(&model), "{name}: ops_before is the input's histogram");
        // A language model whose logits are an output as well as the loss's
        // input keeps the logits path when the loss fuses, and says so.
        let graph = kiln::load(&model).expect("the model loads");
        let outputs: Vec<&str> = graph.outputs().iter().map(|&v| graph.value(v).name.as_str()).collect();
        // Every layer's attention (one Softmax each in these models) is one
        // Attention now, and the loss one LinearCrossEntropy.
        let layers = json["ops_before"]["Softmax"].as_u64().expect("the models' attention has a Softmax per layer");
        assert_eq!(json["ops_after"]["Attention"].as_u64(), Some(layers), "{name}: one Attention per layer:\n{json:#}");
        assert!(json["ops_after"].get("Softmax").is_none(), "{name}: no Softmax left:\n{json:#}");
        if outputs.contains(&"loss") {
            assert_eq!(
                json["ops_after"]["kiln.LinearCrossEntropy"].as_u64(),
                Some(1),
                "{name}: the LM head and loss fuse into one LinearCrossEntropy:\n{json:#}"
            );
        }
        let fused_loss = json["ops_after"].get("kiln.LinearCrossEntropy").is_some();
        if fused_loss && outputs.contains(&"logits") {
            assert!(!json["notes"].as_array().expect("a list").is_empty(), "{name}: a note:\n{json:#}");
            assert!(summary.contains("note: "), "{name}: the note in the summary:\n{summary}");
        }

        // `kiln run` compares with the reference outputs itself (and fails
        // when they differ); the original's outputs must match too.
        let want = run_outputs(&model, &inputs, &work.join("original-out"));
        let got = run_outputs(&optimized, &inputs, &work.join("optimized-out"));
        assert_eq!(want.len(), got.len(), "{name}: output count");
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_allclose(g, w, &format!("{name}: output {k}, optimized vs original in kiln run"));
        }
    }
}

#[test]
fn portable_models_run_in_onnxruntime() {
    let Some(python) = kiln_test_support::python() else {
        println!("SKIPPED: no Python with onnxruntime (set KILN_PYTHON)");
        return;
    };
    let script = kiln_test_support::repo_root().join("tests/support/ort_run.py");
    for dir in model_dirs() {
        let name = dir.file_name().expect("a directory name").to_string_lossy().into_owned();
        let work = scratch(&format!("portable-{name}"));
        let portable = work.join("portable.onnx");
        let o = kiln(&[&"optimize", &dir.join("model.onnx"), &"-o", &portable, &"--portable"]);
        assert_ok(&o, &format!("optimize --portable {name}"));
        let ops = ops_of(&portable);
        let ops = ops.as_object().expect("an op histogram");
        assert!(ops.keys().all(|k| !k.starts_with("kiln.")), "{name}: only standard ONNX ops: {ops:?}");

        let inputs = dir.join("test_data_set_0");
        let out = work.join("ort-out");
        kiln_test_support::run_command(
            Command::new(&python).arg(&script).arg(&portable).arg("--inputs").arg(&inputs).arg("--out").arg(&out),
            &format!("onnxruntime on portable {name}"),
        );
        let graph = kiln::load(&portable).expect("the portable model loads");
        for (k, &v) in graph.outputs().iter().enumerate() {
            let output = &graph.value(v).name;
            let got = kiln::read_npy(out.join(format!("{}.npy", output.replace(['/', '\\'], "_"))))
                .unwrap_or_else(|e| panic!("{name}: onnxruntime output {output}: {e}"));
            let (_, want) =
                read_tensor_pb(&inputs.join(format!("output_{k}.pb"))).expect("the reference output is readable");
            assert_allclose(&got, &want, &format!("{name}: `{output}` in onnxruntime vs the reference"));
        }
    }
}

/// `y = Relu(x)`: no rule applies to it.
fn relu_graph() -> Graph {
    let mut g = Graph::new("relu");
    g.opset_imports.insert(String::new(), 23);
    let x = g.add_input("x", TensorType::fixed(DType::F32, &[2, 3])).expect("fresh name");
    let n = g.add_node("relu", Op::Unary(UnaryOp::Relu), vec![Some(x)], &["y"]).expect("valid node");
    g.add_output(g.node(n).output(0).expect("Relu has an output"));
    g
}

#[test]
fn a_graph_no_rule_applies_to_comes_out_unchanged() {
    let work = scratch("unchanged");
    let input = work.join("relu.kiln");
    kiln::save(&relu_graph(), &input).expect("writable");
    // The file as kiln itself writes it (types inferred), to compare bytes with.
    let normalized = work.join("normalized.kiln");
    assert_ok(&kiln(&[&"convert", &input, &normalized]), "convert");
    let output = work.join("out.kiln");
    let report = work.join("report.json");
    let o = kiln(&[&"optimize", &normalized, &"-o", &output, &"--report", &report]);
    assert_ok(&o, "optimize relu");
    assert!(stdout(&o).contains("no rule applied; graph unchanged"), "summary:\n{}", stdout(&o));
    assert_eq!(
        std::fs::read_to_string(&output).expect("written"),
        std::fs::read_to_string(&normalized).expect("written"),
        "byte-identical text"
    );
    let json = read_json(&report);
    assert_report_shape(&json, "relu");
    assert_eq!(json["unchanged"], Json::Bool(true));
    assert_eq!(json["rewrites"], Json::Array(vec![]));
    assert_eq!(json["ops_before"], json["ops_after"]);
}

#[test]
fn a_graph_that_changes_is_not_called_unchanged() {
    // Relu(Identity(x)): identity-elim fires.
    let mut g = relu_graph();
    let x = g.value_by_name("x").expect("x exists");
    let relu = g.node_by_name("relu").expect("relu exists");
    let id = g.add_node("id", Op::Identity, vec![Some(x)], &["x_copy"]).expect("valid node");
    let copy = g.node(id).output(0).expect("Identity has an output");
    g.set_input(relu, 0, Some(copy));
    let work = scratch("changed");
    let input = work.join("in.kiln");
    kiln::save(&g, &input).expect("writable");
    let output = work.join("out.kiln");
    let o = kiln(&[&"optimize", &input, &"-o", &output, &"-O1"]);
    assert_ok(&o, "optimize");
    let summary = stdout(&o);
    assert!(!summary.contains("unchanged"), "{summary}");
    assert!(summary.contains("identity-elim") && summary.contains("at id"), "{summary}");
    assert!(summary.contains("Identity 1 -> 0"), "{summary}");
}

#[test]
fn a_tiny_node_limit_is_reported_as_hit() {
    let dir = &model_dirs()[0];
    let work = scratch("node-limit");
    let report = work.join("report.json");
    let o = kiln(&[
        &"optimize",
        &dir.join("model.onnx"),
        &"-o",
        &work.join("out.onnx"),
        &"--node-limit",
        &"10",
        &"--report",
        &report,
    ]);
    assert_ok(&o, "optimize --node-limit 10");
    let summary = stdout(&o);
    assert!(summary.contains("LIMIT HIT") && summary.contains("node limit"), "summary:\n{summary}");
    assert!(summary.contains("warning: saturation limit hit"), "summary:\n{summary}");
    let json = read_json(&report);
    assert_eq!(json["limit_hit"], Json::Bool(true), "{json:#}");
    let passes = json["passes"].as_array().expect("a list");
    assert!(!passes.is_empty());
    assert!(
        passes.iter().all(|p| p["limit_hit"] == Json::Bool(true) && p["stop"] == "node_limit"),
        "every pass starts above 10 e-nodes: {passes:?}"
    );

    // Without the limit, the same model saturates.
    let o = kiln(&[&"optimize", &dir.join("model.onnx"), &"-o", &work.join("out2.onnx"), &"--report", &report]);
    assert_ok(&o, "optimize");
    assert!(!stdout(&o).contains("LIMIT HIT"), "{}", stdout(&o));
    assert_eq!(read_json(&report)["limit_hit"], Json::Bool(false));
}

#[test]
fn optimize_usage_errors_are_clear() {
    let dir = &model_dirs()[0];
    let model = dir.join("model.onnx");
    let work = scratch("errors");
    let out = work.join("out.onnx");
    assert_user_error(
        &kiln(&[&"optimize", &model, &"-o", &out, &"--passes", &"algebra,fusion"]),
        &["unknown pass `fusion`", "algebra", "loss"],
        "bad pass name",
    );
    assert_user_error(
        &kiln(&[&"optimize", &work.join("missing.onnx"), &"-o", &out]),
        &["missing.onnx"],
        "missing file",
    );
    assert_user_error(&kiln(&[&"optimize", &model, &"-o", &work.join("out.txt")]), &["out.txt"], "bad extension");
    assert_user_error(
        &kiln(&[&"optimize", &model, &"-o", &work.join("no/such/dir/out.onnx")]),
        &["no/such/dir"],
        "missing output directory",
    );
    // Usage errors are clap's: exit status 2.
    let o = kiln(&[&"optimize", &model, &"-o", &out, &"-O3"]);
    assert_eq!(o.status.code(), Some(2), "-O3: {}", stderr(&o));
    let o = kiln(&[&"optimize", &model, &"-o", &out, &"-O1", &"--passes", &"algebra"]);
    assert_eq!(o.status.code(), Some(2), "-O1 with --passes: {}", stderr(&o));
}

#[test]
fn pass_lists_and_levels_choose_the_passes() {
    let dir = &model_dirs()[0];
    let work = scratch("levels");
    let report = work.join("report.json");
    for (args, passes) in [
        (vec!["-O0"], vec![]),
        (vec!["-O1"], vec!["algebra"]),
        (vec!["-O2"], kiln::passes::manager::PASS_NAMES.to_vec()),
        (vec!["--passes", "loss"], vec!["loss"]),
    ] {
        let mut cmd: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"optimize"];
        let model = dir.join("model.onnx");
        let out = work.join("out.kiln");
        cmd.push(&model);
        cmd.push(&"-o");
        cmd.push(&out);
        for a in &args {
            cmd.push(a);
        }
        cmd.push(&"--report");
        cmd.push(&report);
        assert_ok(&kiln(&cmd), &format!("{args:?}"));
        let json = read_json(&report);
        let names: Vec<&str> =
            json["passes"].as_array().expect("a list").iter().map(|p| p["name"].as_str().expect("a name")).collect();
        assert_eq!(names, passes, "{args:?}");
    }
}

#[test]
fn rules_lists_exact_and_approximate_rules() {
    let o = kiln(&[&"rules"]);
    assert_ok(&o, "rules");
    let text = stdout(&o);
    for r in kiln::passes::rules::all_rules() {
        assert!(text.contains(r.name()), "`{}` is listed:\n{text}", r.name());
    }
    let o = kiln(&[&"rules", &"--json"]);
    assert_ok(&o, "rules --json");
    let json: Json = serde_json::from_str(&stdout(&o)).expect("rules --json prints JSON");
    let rules = json.as_array().expect("a list");
    let kinds = kiln::passes::approx::AttentionKind::ALL;
    assert_eq!(rules.len(), kiln::passes::rules::all_rules().len() + kinds.len(), "rules plus substitutions");
    for kind in kinds {
        let name = format!("attention-{kind}");
        let entry = rules.iter().find(|r| r["name"] == name.as_str()).unwrap_or_else(|| panic!("{name} listed"));
        assert_eq!(entry["kind"], "approximate");
    }
    let passes = kiln::passes::manager::PASS_NAMES;
    for r in rules.iter().filter(|r| r["kind"] == "exact") {
        assert!(passes.iter().any(|p| r["pass"] == *p), "an exact rule runs in a pass: {r}");
    }
}

#[test]
fn explain_shows_the_rewrite_chain_of_a_fused_loss() {
    let dir = model_dirs().into_iter().find(|d| d.ends_with("gpt2_unfused")).expect("gpt2_unfused exists");
    let model = dir.join("model.onnx");
    let graph = kiln::load(&model).expect("loads");
    let report_dir = scratch("explain");
    let report = report_dir.join("report.json");
    assert_ok(&kiln(&[&"optimize", &model, &"-o", &report_dir.join("o.onnx"), &"--report", &report]), "optimize");
    let json = read_json(&report);
    // A node where some loss rule fired, as the optimize report says.
    let rewrite = json["rewrites"]
        .as_array()
        .expect("a list")
        .iter()
        .find(|r| r["rule"].as_str().is_some_and(|n| n.starts_with("loss-")))
        .expect("a loss rule fires on gpt2_unfused")
        .clone();
    let node = rewrite["nodes"][0].as_str().expect("a node name").to_string();
    assert!(graph.node_by_name(&node).is_some());
    let o = kiln(&[&"explain", &model, &"--node", &node]);
    assert_ok(&o, "explain");
    let text = stdout(&o);
    assert!(text.contains("rewrite chain"), "{text}");
    assert!(text.contains(rewrite["rule"].as_str().expect("a rule name")), "names the rule:\n{text}");
    assert!(text.contains("kiln.CrossEntropy") || text.contains("kiln.LinearCrossEntropy"), "{text}");

    // A node no rule touches.
    let relu = report_dir.join("relu.kiln");
    kiln::save(&relu_graph(), &relu).expect("writable");
    let o = kiln(&[&"explain", &relu, &"--node", &"relu"]);
    assert_ok(&o, "explain relu");
    assert!(stdout(&o).contains("node relu was not rewritten"), "{}", stdout(&o));

    // An unknown name lists near ones.
    let typo = &node[..node.len() - 1];
    assert_user_error(&kiln(&[&"explain", &model, &"--node", &typo]), &["no node named", &node], "typo");
}

#[test]
fn approximate_attention_is_measured_reported_and_refused_above_max_error() {
    let dir = model_dirs().into_iter().find(|d| d.ends_with("bert_fused")).expect("the bert_fused example");
    let name = "bert_fused";
    let work = scratch("approx");
    let model = dir.join("model.onnx");
    let layers = {
        let o = kiln(&[&"optimize", &model, &"-o", &work.join("exact.onnx")]);
        assert_ok(&o, "exact optimize");
        ops_of(&work.join("exact.onnx"))["Attention"].as_u64().expect("Attention nodes after -O2")
    };
    for kind in ["linear", "sigmoid", "softplus", "soft"] {
        let out = work.join(format!("{kind}.onnx"));
        let report = work.join(format!("{kind}.json"));
        let o = kiln(&[&"optimize", &model, &"-o", &out, &"--attention", &kind, &"--report", &report]);
        assert_ok(&o, &format!("--attention {kind}"));
        let summary = stdout(&o);
        assert!(summary.contains(&format!("attention → {kind}")), "{name} {kind}: the substitution in the summary:\n{summary}");
        assert!(summary.contains("relative L2"), "{name} {kind}: the error in the summary:\n{summary}");
        let json = read_json(&report);
        let a = &json["approximation"];
        assert_eq!(a["kind"], kind);
        assert_eq!(a["replaced"].as_array().map(Vec::len), Some(layers as usize), "{kind}: every layer replaced:\n{a:#}");
        let error = &a["error"];
        let rel = error["rel_l2"].as_f64().expect("a relative L2 error");
        assert!(rel.is_finite() && rel > 0.0, "{kind}: a measured, non-zero error: {error}");
        assert!(error["cosine"].as_f64().is_some_and(|c| c > 0.9 && c <= 1.0 + 1e-9), "{kind}: cosine {error}");
        assert!(a["samples"].as_u64().is_some_and(|n| n >= 1), "{kind}: measured on the model's test data");
        assert!(a["cost_before_at_scaled"]["flops"].as_f64().is_some(), "{kind}: cost at 8S:\n{a:#}");
        assert!(json["ops_after"].get("Attention").is_none(), "{kind}: no exact Attention left:\n{json:#}");
        // The substituted model runs (kiln run compares with nothing here:
        // the reference outputs are the exact model's).
        let run = kiln(&[&"run", &out, &"--inputs", &dir.join("test_data_set_0"), &"--out", &work.join(format!("{kind}-out"))]);
        assert!(!stderr(&run).contains("panicked"), "{kind}: kiln run does not panic:\n{}", stderr(&run));
        assert!(work.join(format!("{kind}-out")).read_dir().is_ok_and(|mut d| d.next().is_some()), "{kind}: outputs written");
    }
    // Above --max-error: exit 1, the measured error named, nothing written.
    let refused = work.join("refused.onnx");
    let o = kiln(&[&"optimize", &model, &"-o", &refused, &"--attention", &"sigmoid", &"--max-error", &"1e-9"]);
    assert_user_error(&o, &["refused --attention sigmoid", "relative L2 output error", "exceeds --max-error"], "max-error refusal");
    assert!(!refused.exists(), "a refused substitution writes nothing");
    // --max-error without --attention is a usage error.
    let o = kiln(&[&"optimize", &model, &"-o", &refused, &"--max-error", &"0.1"]);
    assert_eq!(o.status.code(), Some(2), "clap usage error:\n{}", stderr(&o));
}
