//! `--threads` on `kiln run` and `kiln bench`, and `kiln bench --softmax`:
//! the CPU backend's results do not depend on the thread count, the bench
//! report says how many threads ran, and the options are refused where
//! they mean nothing. Nothing here asserts how fast anything is.

use serde_json::Value as Json;

mod common;
use common::*;

#[test]
fn run_gives_the_same_outputs_on_one_and_two_threads() {
    let dir = model_dir("gpt2_fused");
    let tmp = tempfile::tempdir().unwrap();
    let mut written = Vec::new();
    for threads in ["1", "2"] {
        let out = tmp.path().join(threads);
        let o = kiln(&[
            &"run",
            &dir.join("model.onnx"),
            &"--backend",
            &"cpu",
            &"--threads",
            &threads,
            &"--inputs",
            &dir.join("test_data_set_0"),
            &"--out",
            &out,
        ]);
        assert_ok(&o, &format!("run on {threads} threads"));
        let mut files: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        assert!(!files.is_empty(), "outputs are written");
        written.push(files.iter().map(|f| std::fs::read(f).unwrap()).collect::<Vec<_>>());
    }
    assert_eq!(written[0], written[1], "the kernels split items, never one item's arithmetic");
}

#[test]
fn threads_and_softmax_are_refused_where_they_mean_nothing() {
    let dir = model_dir("gpt2_fused");
    let model = dir.join("model.onnx");
    let data = dir.join("test_data_set_0");
    assert_user_error(
        &kiln(&[&"run", &model, &"--threads", &"2", &"--inputs", &data]),
        &["--threads needs --backend cpu"],
        "run --threads on the interpreter",
    );
    for bad in ["0", "-1", "x"] {
        let o = kiln(&[&"run", &model, &"--backend", &"cpu", &"--threads", &bad, &"--inputs", &data]);
        assert_eq!(o.status.code(), Some(2), "`--threads {bad}` is a usage error:\n{}", stderr(&o));
    }
    assert_user_error(
        &kiln(&[&"bench", &model, &"--inputs", &data, &"--softmax", &"two-pass"]),
        &["--softmax needs --backend cpu"],
        "bench --softmax on the interpreter",
    );
}

#[test]
fn bench_runs_the_cpu_backend_on_the_threads_asked_for() {
    let dir = model_dir("gpt2_fused");
    for (threads, softmax) in [("1", "three-pass"), ("2", "two-pass")] {
        let o = kiln(&[
            &"bench",
            &dir.join("model.onnx"),
            &"--backend",
            &"cpu",
            &"--inputs",
            &dir.join("test_data_set_0"),
            &"--threads",
            &threads,
            &"--softmax",
            &softmax,
            &"--iterations",
            &"3",
            &"--json",
        ]);
        assert_ok(&o, &format!("bench on {threads} threads"));
        let report: Json = serde_json::from_str(&stdout(&o)).expect("--json prints JSON");
        let want: u64 = threads.parse().unwrap();
        assert_eq!(report["threads"], want);
        assert_eq!(report["threads_used"], want, "the cpu backend uses the threads it is given");
        assert_eq!(report["softmax"], softmax);
        assert_eq!(report["runs_ms"].as_array().map(Vec::len), Some(3));
    }
}
