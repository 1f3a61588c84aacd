//! What the CLI tests share: running the `kiln` binary, reading what it
//! printed, the usual assertions on it, and the example models.
//!
//! Each test binary uses a different part of this module.
#![allow(dead_code)]

use kiln::ir::Tensor;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The example models' directory (examples/models/gen, or generated into
/// the target's temp dir when `make models` has not run).
pub fn models_dir() -> PathBuf {
    kiln_test_support::example_models_dir(Path::new(env!("CARGO_TARGET_TMPDIR")))
        .expect("no example models and no Python to generate them: run `make models`")
}

/// One example model's directory (`gpt2_fused`, ...), checked to exist.
pub fn model_dir(name: &str) -> PathBuf {
    let path = models_dir().join(name);
    assert!(path.join("model.onnx").is_file(), "{} is missing; run `make models`", path.display());
    path
}

/// Runs the `kiln` binary with `args` and waits for it.
pub fn kiln(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    for a in args {
        cmd.arg(a);
    }
    cmd.output().expect("the kiln binary starts")
}

/// What it printed on stdout.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// What it printed on stderr.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts success with a quiet stderr (no progress bars off a terminal).
pub fn assert_ok(o: &Output, what: &str) {
    assert!(o.status.success(), "{what}: exit {:?}\nstdout:\n{}\nstderr:\n{}", o.status.code(), stdout(o), stderr(o));
    assert_eq!(stderr(o), "", "{what}: nothing on stderr when it is not a terminal");
}

/// Asserts a user error: exit code 1, `error:` on stderr mentioning every
/// one of `needles`, and no panic.
pub fn assert_user_error(o: &Output, needles: &[&str], what: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "{what}: exit status\nstdout:\n{}\nstderr:\n{err}", stdout(o));
    assert!(err.starts_with("error: "), "{what}: stderr starts with `error: `:\n{err}");
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "{what}: no panic:\n{err}");
    for n in needles {
        assert!(err.contains(n), "{what}: stderr mentions `{n}`:\n{err}");
    }
}

/// numpy.allclose(actual, expected, rtol=1e-4, atol=1e-5), NaN matching NaN.
pub fn assert_allclose(actual: &Tensor, expected: &Tensor, what: &str) {
    assert_eq!(actual.dtype(), expected.dtype(), "{what}: dtype");
    assert_eq!(actual.shape(), expected.shape(), "{what}: shape");
    for (i, (a, e)) in actual.to_f64s().into_iter().zip(expected.to_f64s()).enumerate() {
        let ok = a == e || (a.is_nan() && e.is_nan()) || (a - e).abs() <= 1e-5 + 1e-4 * e.abs();
        assert!(ok, "{what}: element {i}: got {a}, expected {e}");
    }
}
