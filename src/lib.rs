//! Kiln: compiler passes and operator fusion for transformer graphs.
pub use kiln_ir as ir;
