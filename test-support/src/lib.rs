//! Plumbing shared by kiln's integration tests.
//!
//! The tests that check kiln against the `onnx` package, onnxruntime and the
//! example models all need the same few things: the repository root, the
//! Python to ask, the ONNX backend node tests that come with that Python's
//! `onnx` package, the example models of `examples/models/make_models.py`,
//! and a way to run a helper command. This crate finds them one way for every
//! test.
//!
//! A test that finds no Python cannot check anything against ONNX, so
//! [`python`] returns `None` and the test prints a `SKIPPED` line. Under CI
//! (the `CI` environment variable is set) a silent skip would hide a broken
//! setup, so [`python`] panics there instead.
//!
//! The crate depends on no kiln crate, so that kiln-ir's own tests can use it
//! without a dependency cycle.

#![warn(missing_docs)]

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Where `make models` writes the example models, relative to the repository root.
const EXAMPLE_MODELS: &str = "examples/models/gen";

/// The generator of the example models, relative to the repository root.
const MAKE_MODELS: &str = "examples/models/make_models.py";

/// The file that `make models` (and [`example_models_dir`]) writes once every
/// model of a set is written; a directory without it may hold half a set.
const STAMP: &str = ".stamp";

/// The root of the kiln repository (the workspace root).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("test-support/ is a directory inside the repository")
}

/// The Python the tests use (it should have onnx, onnxruntime and NumPy):
/// `KILN_PYTHON` if set (it must exist), else `<repo>/.venv/bin/python` (what
/// `make venv` creates) if it exists.
///
/// Returns `None` when there is neither, so that the caller can print a
/// `SKIPPED` line.
///
/// # Panics
///
/// When `KILN_PYTHON` names a file that does not exist, and when no Python is
/// found under CI (`CI` set): CI runs `make test`, which sets `KILN_PYTHON`,
/// and a CI run must never skip silently.
pub fn python() -> Option<PathBuf> {
    choose_python(
        std::env::var_os("KILN_PYTHON"),
        repo_root().join(".venv/bin/python"),
        under_ci(),
    )
}

/// [`python`]'s choice, given what it reads from the environment.
fn choose_python(
    kiln_python: Option<OsString>,
    venv_python: PathBuf,
    under_ci: bool,
) -> Option<PathBuf> {
    if let Some(p) = kiln_python.filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.exists(),
            "KILN_PYTHON is set to {} but that does not exist",
            p.display()
        );
        return Some(p);
    }
    if venv_python.exists() {
        return Some(venv_python);
    }
    assert!(
        !under_ci,
        "CI is set but no Python was found: set KILN_PYTHON (`make test` does) or create {} with `make venv`",
        venv_python.display()
    );
    None
}

/// Whether this is a CI run: `CI` is set to something other than empty,
/// `false` or `0`.
fn under_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// `<site-packages>/onnx/backend/test/data/node` of `python`: the ONNX backend
/// node tests, one directory per test with `model.onnx` and
/// `test_data_set_*/{input,output}_K.pb`.
///
/// # Panics
///
/// When `python` cannot import onnx or its onnx package has no node tests.
pub fn onnx_node_test_dir(python: &Path) -> PathBuf {
    let onnx_dir = run_command(
        Command::new(python).args([
            "-c",
            "import onnx, os; print(os.path.dirname(onnx.__file__))",
        ]),
        &format!("locating the onnx package of {}", python.display()),
    );
    let dir = Path::new(onnx_dir.trim()).join("backend/test/data/node");
    assert!(
        dir.is_dir(),
        "the onnx package of {} has no node tests at {}",
        python.display(),
        dir.display()
    );
    dir
}

/// The subdirectories of `parent` that hold a `model.onnx`, sorted by path,
/// dot-named entries (such as a `.stamp` or a half-written set) skipped: the
/// layout of both the ONNX node tests and the example models.
///
/// # Panics
///
/// When `parent` cannot be listed.
pub fn model_dirs(parent: &Path) -> Vec<PathBuf> {
    let cannot_list = |e: std::io::Error| -> ! { panic!("cannot list {}: {e}", parent.display()) };
    let mut dirs: Vec<PathBuf> = fs::read_dir(parent)
        .unwrap_or_else(|e| cannot_list(e))
        .map(|entry| entry.unwrap_or_else(|e| cannot_list(e)).path())
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .filter(|p| p.join("model.onnx").is_file())
        .collect();
    dirs.sort();
    dirs
}

/// The directory of the example models: `examples/models/gen` when
/// `make models` has written it, else a set generated with
/// `examples/models/make_models.py` into `scratch/example-models` (once per
/// test process, reused while newer than the script). Tests pass
/// `env!("CARGO_TARGET_TMPDIR")` as `scratch`.
///
/// Returns `None` when the models have to be generated and [`python`] finds
/// no Python to do it.
///
/// # Panics
///
/// When generating the models fails, and as [`python`] does.
pub fn example_models_dir(scratch: &Path) -> Option<PathBuf> {
    let made = repo_root().join(EXAMPLE_MODELS);
    if made.join(STAMP).is_file() {
        return Some(made);
    }
    // Tests of one binary run in parallel threads; only one of them generates.
    static GENERATED: OnceLock<PathBuf> = OnceLock::new();
    if let Some(dir) = GENERATED.get() {
        return Some(dir.clone());
    }
    let python = python()?;
    Some(
        GENERATED
            .get_or_init(|| generate_example_models(&python, scratch))
            .clone(),
    )
}

/// The example model directories (each with `model.onnx` and
/// `test_data_set_0`), sorted: [`model_dirs`] of [`example_models_dir`].
///
/// Returns `None` when the models have to be generated and there is no
/// Python to do it.
///
/// # Panics
///
/// As [`example_models_dir`] and [`model_dirs`] do.
pub fn example_model_dirs(scratch: &Path) -> Option<Vec<PathBuf>> {
    example_models_dir(scratch).map(|dir| model_dirs(&dir))
}

/// Runs make_models.py into `scratch/example-models` unless a complete set
/// newer than the script is already there.
fn generate_example_models(python: &Path, scratch: &Path) -> PathBuf {
    let script = repo_root().join(MAKE_MODELS);
    let out = scratch.join("example-models");
    if modified_after(&out.join(STAMP), &script) {
        return out;
    }
    // Generated beside `out` and moved into place, so that `out` never holds
    // half a set, even when a run is interrupted.
    let staging = scratch.join(format!("example-models.{}.partial", std::process::id()));
    remove_dir_if_present(&staging);
    run_command(
        Command::new(python).arg(&script).arg("--out").arg(&staging),
        MAKE_MODELS,
    );
    fs::write(staging.join(STAMP), "")
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", staging.join(STAMP).display()));
    remove_dir_if_present(&out);
    fs::rename(&staging, &out).unwrap_or_else(|e| {
        panic!(
            "cannot move {} to {}: {e}",
            staging.display(),
            out.display()
        )
    });
    out
}

/// Whether `file` exists and was modified no earlier than `than`.
fn modified_after(file: &Path, than: &Path) -> bool {
    let modified = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    matches!((modified(file), modified(than)), (Some(f), Some(t)) if f >= t)
}

/// Removes `dir` and everything in it; a missing `dir` is fine.
fn remove_dir_if_present(dir: &Path) {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            panic!("cannot remove {}: {e}", dir.display())
        }
        _ => {}
    }
}

/// Runs `cmd` and returns its stdout.
///
/// # Panics
///
/// When the command cannot start or exits unsuccessfully; the message names
/// it as `what` and carries its stdout and stderr.
pub fn run_command(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "{what}: cannot start {}: {e}",
            Path::new(cmd.get_program()).display()
        )
    });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system temp dir, unique to this process and `name`.
    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("kiln-test-support-{}-{name}", std::process::id()));
        remove_dir_if_present(&dir);
        fs::create_dir_all(&dir).expect("temp dir is writable");
        dir
    }

    #[test]
    fn kiln_python_wins_over_the_venv() {
        let dir = scratch("kiln-python");
        let (chosen, venv) = (dir.join("chosen"), dir.join("venv"));
        fs::write(&chosen, "").unwrap();
        fs::write(&venv, "").unwrap();
        assert_eq!(
            choose_python(Some(chosen.clone().into()), venv.clone(), false),
            Some(chosen)
        );
        // Empty counts as unset.
        assert_eq!(
            choose_python(Some(OsString::new()), venv.clone(), false),
            Some(venv)
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    #[should_panic(expected = "KILN_PYTHON is set to /nonexistent/python but that does not exist")]
    fn missing_kiln_python_panics() {
        choose_python(
            Some("/nonexistent/python".into()),
            PathBuf::from("/nonexistent/venv"),
            false,
        );
    }

    #[test]
    fn no_python_outside_ci_is_none() {
        assert_eq!(
            choose_python(None, PathBuf::from("/nonexistent/venv"), false),
            None
        );
    }

    #[test]
    #[should_panic(expected = "CI is set but no Python was found")]
    fn no_python_under_ci_panics() {
        choose_python(None, PathBuf::from("/nonexistent/venv"), true);
    }

    #[test]
    fn model_dirs_are_sorted_and_skip_dot_names_and_dirs_without_a_model() {
        let dir = scratch("model-dirs");
        for name in ["b", "a", ".partial", "no_model"] {
            fs::create_dir(dir.join(name)).unwrap();
            if name != "no_model" {
                fs::write(dir.join(name).join("model.onnx"), "").unwrap();
            }
        }
        fs::write(dir.join(STAMP), "").unwrap();
        assert_eq!(model_dirs(&dir), vec![dir.join("a"), dir.join("b")]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn run_command_returns_stdout() {
        assert_eq!(
            run_command(
                Command::new("sh").args(["-c", "echo out; echo err >&2"]),
                "echo"
            ),
            "out\n"
        );
    }

    #[test]
    #[should_panic(expected = "stderr says why")]
    fn failing_command_panics_with_its_stderr() {
        run_command(
            Command::new("sh").args(["-c", "echo stderr says why >&2; exit 3"]),
            "failing sh",
        );
    }
}
