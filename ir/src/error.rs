//! The IR crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in kiln's IR: reading and writing models,
/// inference, verification, parsing the text format and interpretation.
/// Each variant carries what a user needs to find the problem: the file,
/// the node and its op, the value, or the line and column.
#[derive(Debug, thiserror::Error)]
pub enum IrError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Bytes that are not a valid protobuf message of the expected kind.
    #[error("{what} is not a valid ONNX protobuf ({message})")]
    Decode {
        /// What was being decoded, e.g. the file name.
        what: String,
        /// The decoder's message.
        message: String,
    },
    /// A model uses an op kiln has no definition for.
    #[error("unsupported op `{op_type}` (domain `{domain}`, opset {opset}) at node `{node}`")]
    UnsupportedOp {
        /// ONNX op type.
        op_type: String,
        /// ONNX domain; empty for the default domain.
        domain: String,
        /// Node name.
        node: String,
        /// The model's opset version for that domain.
        opset: i64,
    },
    /// Something wrong at one node: attributes, types, shapes, or a failure
    /// while interpreting it.
    #[error("node `{node}` ({op}): {message}")]
    Node {
        /// Node name.
        node: String,
        /// Op type.
        op: String,
        /// What is wrong.
        message: String,
    },
    /// Something wrong with one value: an initializer, an input, an output.
    #[error("value `{value}`: {message}")]
    Value {
        /// Value name.
        value: String,
        /// What is wrong.
        message: String,
    },
    /// The graph has a cycle.
    #[error("graph has a cycle through node `{node}` ({op})")]
    Cycle {
        /// A node on the cycle.
        node: String,
        /// Its op type.
        op: String,
    },
    /// A model-level problem: missing graph, unsupported IR or opset version,
    /// duplicate names.
    #[error("{0}")]
    Model(String),
    /// The text format could not be parsed.
    #[error("line {line}, column {column}: {message}")]
    Parse {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What was expected or wrong.
        message: String,
    },
}

impl IrError {
    /// A [`IrError::Node`] error.
    pub fn node(node: impl Into<String>, op: impl Into<String>, message: impl Into<String>) -> IrError {
        IrError::Node { node: node.into(), op: op.into(), message: message.into() }
    }

    /// A [`IrError::Value`] error.
    pub fn value(value: impl Into<String>, message: impl Into<String>) -> IrError {
        IrError::Value { value: value.into(), message: message.into() }
    }
}

/// Result alias for the IR crate.
pub type Result<T, E = IrError> = std::result::Result<T, E>;
