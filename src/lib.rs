//! Kiln: compiler passes and operator fusion for transformer graphs.
//!
//! This crate is the front door: it re-exports the graph IR as [`ir`] and
//! the rewriting passes as [`passes`], and offers the handful of calls most
//! programs need.
//!
//! ```no_run
//! # fn main() -> kiln::Result<()> {
//! // Load an ONNX model (or a `.kiln` text file): types are inferred and the
//! // graph verified.
//! let graph = kiln::load("model.onnx")?;
//!
//! // Evaluate it with the reference interpreter on NumPy inputs.
//! let ids = kiln::read_npy("input_ids.npy")?;
//! let outputs = kiln::run(&graph, &[("input_ids".to_string(), ids)])?;
//! for (name, tensor) in &outputs {
//!     kiln::write_npy(format!("{name}.npy"), tensor)?;
//! }
//!
//! // Fuse and clean up with the e-graph passes (-O2), then write it back out
//! // in kiln's text format.
//! let (optimized, report) = kiln::optimize(&graph, kiln::passes::OptLevel::O2)?;
//! println!("{report}");
//! kiln::save(&optimized, "model.kiln")?;
//! # Ok(())
//! # }
//! ```
//!
//! To run it compiled for this CPU instead, `kiln::cpu::compile(&graph,
//! &Default::default())?.run(&inputs)?` (see [`cpu`]).
//!
//! The `kiln` binary wraps the same calls: `kiln inspect`, `kiln run`,
//! `kiln convert` and `kiln optimize`, plus `kiln rules` (the rewrite rules)
//! and `kiln explain` (the rewrites that produced a node).

#![warn(missing_docs)]

use std::path::Path;

/// The LLVM CPU backend: [`cpu::compile`] a graph and run it
/// (JIT, shape-specialized, threaded), [`cpu::aot`] for shared libraries
/// with a C ABI, and [`cpu::linear_cross_entropy_grad`], the compiled
/// LinearCrossEntropy backward (same arguments and results as the
/// reference [`linear_cross_entropy_grad`]).
pub use kiln_backend_llvm as cpu;
pub use kiln_ir as ir;
pub use kiln_passes as passes;

pub use kiln_ir::{DType, Dim, Graph, IrError, Result, Tensor, TensorType};
// The reference backward of `kiln::LinearCrossEntropy` (see
// `ir::interp::linear_cross_entropy_grad`), for training-side callers.
pub use kiln_ir::interp::{linear_cross_entropy_grad, LceGradOptions, LceGradStats, LinearCrossEntropyGrad};

/// Reads a graph from a `.onnx` or `.kiln` file, infers every value's type
/// and verifies it. See [`ir::io::load`].
pub fn load(path: impl AsRef<Path>) -> Result<Graph> {
    kiln_ir::io::load(path)
}

/// Writes a graph as `.onnx` or `.kiln`, by the path's extension. See
/// [`ir::io::save`].
pub fn save(graph: &Graph, path: impl AsRef<Path>) -> Result<()> {
    kiln_ir::io::save(graph, path)
}

/// Evaluates a graph with the reference interpreter. `inputs` are
/// `(graph input name, tensor)` pairs; the result has one entry per graph
/// output, in order. See [`ir::interp::run`].
pub fn run(graph: &Graph, inputs: &[(String, Tensor)]) -> Result<Vec<(String, Tensor)>> {
    kiln_ir::interp::run(graph, inputs)
}

/// Optimizes a graph with the passes of an optimization level, default
/// limits and the CPU cost model; the report says what fired where and
/// what it cost. See [`passes::manager::optimize`] for pipelines of chosen
/// passes and limits.
pub fn optimize(graph: &Graph, level: passes::OptLevel) -> Result<(Graph, passes::Report)> {
    kiln_passes::optimize(graph, &kiln_passes::Pipeline::level(level))
}

/// A copy of a graph with kiln-domain ops lowered into standard ONNX ops,
/// so that other ONNX runtimes run it. See [`passes::portable`].
pub fn to_portable(graph: &Graph) -> Result<Graph> {
    kiln_passes::portable::to_portable(graph)
}

/// Reads a NumPy `.npy` file. See [`ir::npy`] for the supported dtypes.
pub fn read_npy(path: impl AsRef<Path>) -> Result<Tensor> {
    kiln_ir::npy::read_npy(path.as_ref())
}

/// Writes a tensor as a NumPy `.npy` file (`bf16` tensors are refused; cast
/// them to `f32`). See [`ir::npy`].
pub fn write_npy(path: impl AsRef<Path>, tensor: &Tensor) -> Result<()> {
    kiln_ir::npy::write_npy(path.as_ref(), tensor)
}
