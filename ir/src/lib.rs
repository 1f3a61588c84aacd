//! Kiln's graph IR.
//!
//! - [`dtype`], [`dim`], [`types`]: element types and symbolic shapes;
//! - [`tensor`]: dense tensor values;
//! - [`op`], [`attr`]: operators with typed attributes;
//! - [`graph`]: the dataflow graph on petgraph;
//! - [`infer`], [`mod@verify`]: shape and dtype inference, and the verifier;
//! - [`onnx`]: reading and writing ONNX models;
//! - [`text`]: the readable `.kiln` text format.
//!
//! Nothing here depends on LLVM or MLIR, so frontends can use the IR and the
//! rewriting passes without a code generator.

#![warn(missing_docs)]

pub mod attr;
pub mod dim;
pub mod dtype;
pub mod error;
pub mod graph;
pub mod infer;
pub mod interp;
pub mod onnx;
pub mod op;
pub mod tensor;
pub mod text;
pub mod types;
pub mod verify;

pub use attr::{Attr, AttrBag, AttrError};
pub use dim::Dim;
pub use dtype::DType;
pub use error::{IrError, Result};
pub use graph::{Graph, Node, NodeId, Value, ValueId};
pub use infer::{infer_node, infer_types};
pub use op::Op;
pub use tensor::Tensor;
pub use text::{parse_graph, print_graph};
pub use types::TensorType;
pub use verify::verify;
