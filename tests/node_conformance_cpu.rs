//! ONNX backend node-test conformance of the CPU backend (`--backend cpu`).
//!
//! Every directory of ONNX's node tests is imported with
//! `kiln_ir::onnx::load_model` and compiled with `kiln_backend_llvm`. A test
//! is *in scope* when the backend lowers all of it: compiling (or
//! specializing to the test's input shapes) failing with
//! `BackendError::Unsupported` makes it a skip, counted by the missing op.
//! Models kiln cannot import are skipped too (`tests/node_conformance.rs`
//! covers the importer). Every in-scope test runs each `test_data_set_*` and
//! compares every output with the reference like the interpreter's
//! conformance test does (same dtype and shape; floats within rtol 1e-3 /
//! atol 1e-5, f16 and bf16 within 1e-2, NaN equal to NaN; integers and
//! booleans exactly).
//!
//! A skipped test the interpreter passes (`kiln_ir::interp::run` matching
//! every data set, as in `tests/node_conformance.rs`) is a failure too,
//! unless [`EXCEPTIONS`] lists it with the reason: every node test the
//! interpreter passes must pass on the CPU backend.
//!
//! `KILN_NODE_TEST_FILTER=text` runs only the tests whose name contains
//! `text` (for working on one op; the full run takes a minute or two).
//!
//! The test fails if any in-scope test fails, prints the counts (with the
//! skips per missing op), and writes one line per test to
//! `target/node_conformance_cpu.txt`.

use kiln_backend_llvm::{compile, BackendError, CompileOptions};
use kiln_ir::graph::Graph;
use kiln_ir::onnx::{load_model, ImportOptions};
use kiln_ir::tensor::Tensor;
use kiln_test_support::{model_dirs, onnx_node_test_dir, python};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

mod node_tests;
use node_tests::{compare, numbered_tensors};

/// Node tests the interpreter passes that the CPU backend does not lower
/// yet, each with the reason. Keep this short: every entry is a gap.
const EXCEPTIONS: &[(&str, &str)] = &[];

enum Outcome {
    Pass,
    Fail(String),
    Skip(String),
}

fn unsupported_reason(e: &BackendError) -> Option<String> {
    match e {
        BackendError::Unsupported { op, reason, .. } => Some(format!("{op}: {reason}")),
        _ => None,
    }
}

fn run_test(dir: &Path) -> Outcome {
    let graph: Graph = match load_model(&dir.join("model.onnx"), ImportOptions::default()) {
        Ok(g) => g,
        Err(e) => return Outcome::Skip(format!("not imported ({e})")),
    };
    let compiled = match compile(&graph, &CompileOptions::default()) {
        Ok(c) => c,
        Err(e) => {
            return match unsupported_reason(&e) {
                Some(r) => {
                    let input_names: Vec<String> =
                        kiln_ir::interp::required_inputs(&graph).iter().map(|&v| graph.value(v).name.clone()).collect();
                    exception_or(dir, &graph, &input_names, r)
                }
                None => Outcome::Fail(format!("compile: {e}")),
            }
        }
    };
    let input_names: Vec<String> =
        kiln_ir::interp::required_inputs(&graph).iter().map(|&v| graph.value(v).name.clone()).collect();
    let outcome = check_data_sets(dir, &input_names, &|named| {
        compiled.run(named).map_err(|e| match unsupported_reason(&e) {
            Some(r) => RunError::Unsupported(r),
            None => RunError::Failed(format!("run: {e}")),
        })
    });
    match outcome {
        Outcome::Skip(r) => exception_or(dir, &graph, &input_names, r),
        other => other,
    }
}

/// Why running a data set failed.
enum RunError {
    /// The backend has no lowering (found while specializing).
    Unsupported(String),
    /// Anything else.
    Failed(String),
}

/// Runs every `test_data_set_*` of `dir` through `run` and compares the
/// outputs with the references.
fn check_data_sets(
    dir: &Path,
    input_names: &[String],
    run: &dyn Fn(&[(String, Tensor)]) -> Result<Vec<(String, Tensor)>, RunError>,
) -> Outcome {
    let mut data_sets: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("test_data_set_")))
            .collect(),
        Err(e) => return Outcome::Fail(e.to_string()),
    };
    data_sets.sort();
    for set in data_sets {
        let set_name = set.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let (inputs, expected) = match (numbered_tensors(&set, "input"), numbered_tensors(&set, "output")) {
            (Ok(i), Ok(o)) => (i, o),
            (Err(e), _) | (_, Err(e)) => return Outcome::Fail(e),
        };
        let named: Vec<(String, Tensor)> = input_names.iter().cloned().zip(inputs).collect();
        let got = match run(&named) {
            Ok(g) => g,
            Err(RunError::Unsupported(r)) => return Outcome::Skip(r),
            Err(RunError::Failed(m)) => return Outcome::Fail(format!("{set_name}: {m}")),
        };
        if got.len() != expected.len() {
            return Outcome::Fail(format!("{set_name}: {} outputs, {} expected", got.len(), expected.len()));
        }
        for ((name, g), want) in got.iter().zip(&expected) {
            if let Err(m) = compare(g, want) {
                return Outcome::Fail(format!("{set_name}: output `{name}`: {m}"));
            }
        }
    }
    Outcome::Pass
}

/// A test the CPU backend skips with `reason`: still a skip when the
/// interpreter does not pass it either or it is a listed exception, a
/// failure otherwise.
fn exception_or(dir: &Path, graph: &Graph, input_names: &[String], reason: String) -> Outcome {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let interp = check_data_sets(dir, input_names, &|named| {
        kiln_ir::interp::run(graph, named).map_err(|e| RunError::Failed(e.to_string()))
    });
    match (interp, EXCEPTIONS.iter().find(|(t, _)| *t == name)) {
        (Outcome::Pass, None) => {
            Outcome::Fail(format!("the interpreter passes it, but the CPU backend has no lowering: {reason}"))
        }
        (Outcome::Pass, Some((_, why))) => Outcome::Skip(format!("{reason} [exception: {why}]")),
        (_, Some(_)) => Outcome::Fail(format!("listed as an exception, but the interpreter fails it ({reason})")),
        _ => Outcome::Skip(reason),
    }
}

#[test]
fn onnx_node_tests_on_the_cpu_backend() {
    let Some(python) = python() else {
        eprintln!("node_conformance_cpu: no Python with onnx found (set KILN_PYTHON); skipping");
        return;
    };
    let mut dirs = model_dirs(&onnx_node_test_dir(&python));
    assert!(dirs.len() > 1000, "expected the full ONNX node test set, found {} tests", dirs.len());
    if let Ok(filter) = std::env::var("KILN_NODE_TEST_FILTER") {
        dirs.retain(|d| d.file_name().is_some_and(|n| n.to_string_lossy().contains(filter.as_str())));
    }
    let start = Instant::now();
    let mut report = String::new();
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    let mut skip_reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for dir in &dirs {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let outcome = match std::panic::catch_unwind(|| run_test(dir)) {
            Ok(Outcome::Pass) if EXCEPTIONS.iter().any(|(t, _)| *t == name) => {
                Outcome::Fail("passes now: remove it from EXCEPTIONS".into())
            }
            Ok(o) => o,
            Err(_) => Outcome::Fail("panicked".into()),
        };
        let line = match outcome {
            Outcome::Pass => {
                passed += 1;
                format!("PASS {name}")
            }
            Outcome::Fail(m) => {
                failed += 1;
                failures.push(format!("{name}: {m}"));
                format!("FAIL {name}: {m}")
            }
            Outcome::Skip(r) => {
                skipped += 1;
                // Count by missing op (the text before the first colon).
                let key = if r.starts_with("not imported") {
                    "not imported".to_string()
                } else {
                    r.split(':').next().unwrap_or(&r).to_string()
                };
                *skip_reasons.entry(key).or_default() += 1;
                format!("SKIP {name}: {r}")
            }
        };
        writeln!(report, "{line}").expect("writing to a String");
    }
    let mut summary = format!(
        "ONNX node tests on --backend cpu: {} total, {} lowered: {passed} passed, {failed} failed; {skipped} skipped ({:.1} s)\n",
        dirs.len(),
        passed + failed,
        start.elapsed().as_secs_f64()
    );
    let mut reasons: Vec<(&String, &usize)> = skip_reasons.iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (reason, count) in &reasons {
        writeln!(summary, "  skipped {count:4}: {reason}").expect("writing to a String");
    }
    let report_path = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the test tmp dir is inside the target dir")
        .join("node_conformance_cpu.txt");
    std::fs::write(&report_path, format!("{summary}\n{report}")).expect("report is writable");
    println!("{summary}full list: {}", report_path.display());
    assert!(
        failures.is_empty(),
        "{} lowered node tests fail on the cpu backend:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// `kiln run --backend cpu` on node tests: a lowered one matches its
/// reference outputs (the CLI compares them and exits 0), an unsupported
/// one fails naming the node and op, and `--target-cpu` needs the cpu
/// backend.
#[test]
fn kiln_run_with_the_cpu_backend() {
    let Some(python) = python() else {
        eprintln!("node_conformance_cpu: no Python with onnx found (set KILN_PYTHON); skipping");
        return;
    };
    let node_dir = onnx_node_test_dir(&python);
    let kiln = |args: &[&std::ffi::OsStr]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kiln")).args(args).output().expect("kiln runs")
    };
    for test in ["test_softmax_axis_1", "test_gemm_all_attributes", "test_matmul_4d"] {
        let dir = node_dir.join(test);
        let o = kiln(&[
            "run".as_ref(),
            dir.join("model.onnx").as_os_str(),
            "--backend".as_ref(),
            "cpu".as_ref(),
            "--inputs".as_ref(),
            dir.join("test_data_set_0").as_os_str(),
        ]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{test}: {out}\n{}", String::from_utf8_lossy(&o.stderr));
        assert!(out.contains("with cpu") && out.contains("compiling") && out.contains("ok"), "{test}: {out}");
    }
    // NonZero of a value computed at run time has a data-dependent shape:
    // the backend cannot lower it, and says so naming the node and op.
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cpu_unsupported");
    std::fs::create_dir_all(&tmp).expect("tmp dir");
    let mut g = Graph::new("nonzero_of_exp");
    let x = g.add_input("x", kiln_ir::types::TensorType::fixed(kiln_ir::dtype::DType::F32, &[3])).expect("fresh name");
    let e = g.add_node("exp", kiln_ir::op::Op::Unary(kiln_ir::op::UnaryOp::Exp), vec![Some(x)], &["e"]).expect("node");
    let e = g.node(e).output(0).expect("one output");
    let nz = g.add_node("where_nonzero", kiln_ir::op::Op::NonZero, vec![Some(e)], &["nz"]).expect("node");
    g.add_output(g.node(nz).output(0).expect("one output"));
    kiln_ir::infer_types(&mut g).expect("the graph types");
    kiln_ir::onnx::save_model(&g, &tmp.join("model.onnx")).expect("model is writable");
    kiln_ir::npy::write_npy(&tmp.join("x.npy"), &Tensor::from_f64s(kiln_ir::dtype::DType::F32, &[3], &[0.0, 1.0, 2.0]))
        .expect("input is writable");
    let model = tmp.join("model.onnx");
    let input = format!("x={}", tmp.join("x.npy").display());
    let o = kiln(&[
        "run".as_ref(),
        model.as_os_str(),
        "--backend".as_ref(),
        "cpu".as_ref(),
        "--input".as_ref(),
        input.as_ref(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("no CPU lowering") && err.contains("NonZero") && err.contains("where_nonzero"), "{err}");
    let o = kiln(&["run".as_ref(), model.as_os_str(), "--target-cpu".as_ref(), "x86-64".as_ref()]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--target-cpu needs --backend cpu"));
}
