//! Writing to stdout and stderr without panicking when the reader has gone
//! away (`kiln inspect model.onnx | head`), which `println!` would do.

use std::io::Write;

/// Writes text to stdout; a closed pipe is not an error worth reporting.
pub fn write_stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// Writes text to stderr, ignoring failures (there is nowhere left to report
/// them).
pub fn write_stderr(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes()).and_then(|()| err.flush());
}
