//! Kiln's graph passes. The e-graph rewriting engine lands here; for now the
//! crate holds the graph clean-up passes the CLI and tests use.

#![warn(missing_docs)]
