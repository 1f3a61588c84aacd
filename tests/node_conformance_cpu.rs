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
//! The test fails if any in-scope test fails, prints the counts, and writes
//! one line per test to `target/node_conformance_cpu.txt`.

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
                Some(r) => Outcome::Skip(r),
                None => Outcome::Fail(format!("compile: {e}")),
            }
        }
    };
    let input_names: Vec<String> =
        kiln_ir::interp::required_inputs(&graph).iter().map(|&v| graph.value(v).name.clone()).collect();
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
        let got = match compiled.run(&named) {
            Ok(g) => g,
            Err(e) => {
                return match unsupported_reason(&e) {
                    Some(r) => Outcome::Skip(r),
                    None => Outcome::Fail(format!("{set_name}: run: {e}")),
                }
            }
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

#[test]
fn onnx_node_tests_on_the_cpu_backend() {
    let Some(python) = python() else {
        eprintln!("node_conformance_cpu: no Python with onnx found (set KILN_PYTHON); skipping");
        return;
    };
    let dirs = model_dirs(&onnx_node_test_dir(&python));
    assert!(dirs.len() > 1000, "expected the full ONNX node test set, found {} tests", dirs.len());
    let start = Instant::now();
    let mut report = String::new();
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    let mut skip_reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for dir in &dirs {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let outcome = std::panic::catch_unwind(|| run_test(dir)).unwrap_or_else(|_| Outcome::Fail("panicked".into()));
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
    let dir = node_dir.join("test_linear_attention_linear");
    let o = kiln(&[
        "run".as_ref(),
        dir.join("model.onnx").as_os_str(),
        "--backend".as_ref(),
        "cpu".as_ref(),
        "--inputs".as_ref(),
        dir.join("test_data_set_0").as_os_str(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("no CPU lowering") && err.contains("LinearAttention"), "{err}");
    let o = kiln(&["run".as_ref(), dir.join("model.onnx").as_os_str(), "--target-cpu".as_ref(), "x86-64".as_ref()]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--target-cpu needs --backend cpu"));
}
