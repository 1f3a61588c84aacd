//! Per-kernel time, for finding where a compiled graph spends its runs.
//!
//! With [`crate::CompileOptions::profile`] on, the entry function reads the
//! CPU's cycle counter (`llvm.readcyclecounter`: the TSC on x86, the
//! virtual counter on AArch64) before the first kernel and after each one,
//! and adds the difference to that step's counter in a table the caller
//! passes as the last buffer. Cycles, not nanoseconds: the counter costs a
//! few cycles and needs no library call, and callers that want time scale
//! each kernel's share of the cycles by a wall-clock measurement of the
//! same runs (as `kiln bench --profile` does). Off by default, since even
//! cheap counters cost something in graphs of many tiny kernels.

use crate::plan::{Plan, Step};

/// Where one kernel of a compiled graph spent its cycles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelTime {
    /// Execution position of the kernel in its specialization.
    pub step: usize,
    /// The op or ops it runs: `MatMul`, or `Add+Gelu` for a fused
    /// elementwise chain, `Add+LayerNormalization` for a norm that computes
    /// its input's chain, or `copy` for a copy into a graph output.
    pub ops: String,
    /// The graph node it computes (the root of a fused chain, the norm of a
    /// norm with its input's chain); empty for a copy.
    pub node: String,
    /// Cycle-counter ticks summed over every profiled run.
    pub cycles: u64,
    /// Runs of its specialization while profiling.
    pub runs: u64,
}

/// The op label and node name of each step, in step order.
pub(crate) fn step_labels(plan: &Plan) -> Vec<(String, String)> {
    let graph = &plan.graph;
    plan.steps
        .iter()
        .map(|step| match step {
            Step::Node(id) => (graph.node(*id).op.name().to_string(), graph.node(*id).name.clone()),
            Step::Fused { nodes, .. } => {
                let ops: Vec<&str> = nodes.iter().map(|&n| graph.node(n).op.name()).collect();
                let root = nodes.last().map(|&n| graph.node(n).name.clone()).unwrap_or_default();
                (ops.join("+"), root)
            }
            Step::NormPrologue { nodes, norm, .. } => {
                let mut ops: Vec<&str> = nodes.iter().map(|&n| graph.node(n).op.name()).collect();
                ops.push(graph.node(*norm).op.name());
                (ops.join("+"), graph.node(*norm).name.clone())
            }
            Step::Copy { .. } => ("copy".to_string(), String::new()),
        })
        .collect()
}
