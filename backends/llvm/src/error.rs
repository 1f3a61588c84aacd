//! The backend's error type.

use kiln_ir::IrError;

/// Everything that can go wrong while compiling or running a graph on the
/// CPU backend. Each variant names what a user needs to find the problem:
/// the node and its op, the value, or the target.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The graph uses an op (or an op on a dtype, or with an attribute
    /// value) that this backend has no lowering for.
    #[error("node `{node}` ({op}): no CPU lowering: {reason}")]
    Unsupported {
        /// Node name.
        node: String,
        /// Op type.
        op: String,
        /// What exactly is missing.
        reason: String,
    },
    /// Something wrong at one node while planning or generating code for it,
    /// for example a shape that is not static after specialization.
    #[error("node `{node}` ({op}): {message}")]
    Node {
        /// Node name.
        node: String,
        /// Op type.
        op: String,
        /// What is wrong.
        message: String,
    },
    /// A run-time input (or a graph value) that does not fit the graph:
    /// unknown name, missing input, wrong dtype, rank or dims.
    #[error("value `{value}`: {message}")]
    Value {
        /// Value name.
        value: String,
        /// What is wrong.
        message: String,
    },
    /// The code-generation target: an unknown triple or CPU, or a target
    /// machine LLVM cannot create.
    #[error("target: {0}")]
    Target(String),
    /// LLVM rejected the generated module or failed while optimizing or
    /// JIT-compiling it. This is a bug in the backend, reported with LLVM's
    /// message rather than a crash.
    #[error("LLVM: {0}")]
    Llvm(String),
    /// An error from kiln's IR: type inference while specializing shapes, or
    /// constant folding through the interpreter.
    #[error(transparent)]
    Ir(#[from] IrError),
}

impl BackendError {
    /// A [`BackendError::Unsupported`] error.
    pub fn unsupported(node: impl Into<String>, op: impl Into<String>, reason: impl Into<String>) -> BackendError {
        BackendError::Unsupported { node: node.into(), op: op.into(), reason: reason.into() }
    }

    /// A [`BackendError::Node`] error.
    pub fn node(node: impl Into<String>, op: impl Into<String>, message: impl Into<String>) -> BackendError {
        BackendError::Node { node: node.into(), op: op.into(), message: message.into() }
    }

    /// A [`BackendError::Value`] error.
    pub fn value(value: impl Into<String>, message: impl Into<String>) -> BackendError {
        BackendError::Value { value: value.into(), message: message.into() }
    }
}

impl From<inkwell::builder::BuilderError> for BackendError {
    fn from(e: inkwell::builder::BuilderError) -> BackendError {
        BackendError::Llvm(format!("IR builder: {e}"))
    }
}

/// Result alias for the backend.
pub type Result<T, E = BackendError> = std::result::Result<T, E>;
