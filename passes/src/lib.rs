//! Kiln's rewriting passes over the graph IR.
//!
//! The e-graph engine (an `egg` language over kiln's ops, the analysis that
//! carries dtype and symbolic shape, rule sets by topic, the cost model and
//! DAG-aware extraction) and the pass manager land here. The crate depends
//! only on `kiln-ir`, never on LLVM or MLIR, so frontends can use the
//! rewriting without a code generator. It exports nothing yet.

#![warn(missing_docs)]
