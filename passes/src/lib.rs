//! Kiln's rewriting passes over the graph IR, on e-graphs ([`egg`]).
//!
//! A graph is converted into an e-graph ([`convert`]), rewritten to
//! saturation by exact rules grouped by topic ([`rules`]), and the cheapest
//! equivalent graph under a target's cost model ([`cost`]) is extracted
//! back ([`extract`], [`convert`]). [`manager`] runs named passes and
//! `-O0`/`-O1`/`-O2` pipelines with limits and reports what happened:
//!
//! ```
//! use kiln_ir::{Graph, Op, TensorType, DType};
//! use kiln_passes::manager::{optimize, OptLevel, Pipeline};
//!
//! let mut g = Graph::new("g");
//! let x = g.add_input("x", TensorType::fixed(DType::F32, &[2, 3])).unwrap();
//! let t1 = g.add_node("t1", Op::Transpose { perm: None }, vec![Some(x)], &["xt"]).unwrap();
//! let xt = g.node(t1).output(0).unwrap();
//! let t2 = g.add_node("t2", Op::Transpose { perm: None }, vec![Some(xt)], &["y"]).unwrap();
//! g.add_output(g.node(t2).output(0).unwrap());
//!
//! let (out, report) = optimize(&g, &Pipeline::level(OptLevel::O1)).unwrap();
//! assert_eq!(report.fired("transpose-cancel"), 1);
//! assert_eq!(out.node_count(), 1); // an Identity carries the output name `y`
//! ```
//!
//! # The language
//!
//! [`lang::KilnLang`] has one e-node per op application with the op's
//! attributes inside the node ([`lang::OpKey`]: the [`kiln_ir::Op`] plus a
//! canonical hashable key, floats by bits). Graph inputs and initializers
//! are leaves by name, constants are interned in a side table
//! ([`consts`]) and referenced by id, an omitted optional input is an
//! `Absent` leaf, and a multi-output node is a tuple read by `Proj i`.
//!
//! # The analysis
//!
//! [`analysis::TypeAnalysis`] gives every class its dtype and symbolic
//! shape (from kiln-ir's inference, through the one-node adapter in
//! [`typing`]) and, for small constants, the value (from the reference
//! interpreter). Merging classes whose types conflict is a rule bug: it is
//! reported, never silently accepted.
//!
//! # Extraction
//!
//! egg's default extractor minimizes *tree* cost and so duplicates shared
//! work; `LpExtractor` is exact but needs the CBC solver, a C dependency
//! kiln does not take. [`extract::extract_dag`] is a greedy DAG extractor
//! (the algorithm of tensat and extraction-gym's greedy DAG): each class
//! keeps the set of classes its best choice needs and a candidate costs the
//! union of its children's sets, each class counted once, iterated to a
//! fixpoint. It is not optimal (sharing between sibling subgraphs that
//! chose differently is not seen), but it never pays twice for shared
//! work, runs in near-linear time on transformer graphs, and is
//! deterministic.
//!
//! # Exact rules and approximate substitutions
//!
//! Everything run inside saturation is an exact equality (up to floating
//! point reassociation the rule's docs state): a class only ever holds
//! values that are equal. Approximate substitutions (linear, sigmoid,
//! softplus or SOFT attention instead of softmax attention) are not
//! equalities and are not rules: [`approx`] applies them as separate,
//! opt-in graph transformations after extraction, each measured against
//! the exact graph and refused when its error exceeds the caller's bound.
//!
//! # Portable export
//!
//! Fused ops live in the `kiln` ONNX domain; [`portable::to_portable`]
//! lowers them back into standard ONNX ops so that onnxruntime (or any ONNX
//! runtime) can run an optimized graph.
//!
//! The crate depends only on `kiln-ir`, never on LLVM or MLIR.

#![warn(missing_docs)]

pub mod analysis;
pub mod approx;
pub mod consts;
pub mod convert;
pub mod cost;
pub mod extract;
pub mod lang;
pub mod manager;
pub mod portable;
pub mod rules;
pub mod typing;

pub use analysis::{ClassData, ClassType, KilnEGraph, TypeAnalysis};
pub use cost::{CostModel, GraphCost, Target};
pub use lang::KilnLang;
pub use manager::{optimize, Limits, OptLevel, Pass, Pipeline, Report};
