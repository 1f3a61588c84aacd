//! `kiln explain`: the chain of rewrites that produced a node.

use super::output::write_stdout;
use super::pipeline::PipelineArgs;
use anyhow::bail;
use clap::Args;
use kiln::ir::Graph;
use std::path::PathBuf;

/// Show the chain of rewrites (egg explanations) that produced a node.
#[derive(Args, Debug)]
#[command(
    long_about = "Optimize a model as `kiln optimize` would, with egg's explanations on, and show how the \
    value of node NAME (its first output) became what the optimized graph computes: each rule \
    application between the node's original term and the term extracted for it, in order, with the \
    subterm before and after. Terms are printed two levels deep in e-graph notation (`input:x`, \
    `weight:w`, `const#3`, ops with their attributes). Only that node's e-class is explained.",
    after_help = "Examples:\n  \
    kiln explain model.onnx --node loss.nll\n  \
    kiln explain model.onnx --node layers.0.attn/Softmax -O1"
)]
pub struct ExplainArgs {
    /// The model: .onnx or .kiln.
    model: PathBuf,
    /// The node to explain (a node name of the input model).
    #[arg(long, value_name = "NAME")]
    node: String,
    #[command(flatten)]
    pipeline: PipelineArgs,
}

/// Levenshtein distance between two strings, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// Up to five node names close to `name`: those containing it (or
/// contained in it) first, then by edit distance, ties by name.
pub fn near_names(graph: &Graph, name: &str) -> Vec<String> {
    let lower = name.to_lowercase();
    let mut scored: Vec<(usize, String)> = graph
        .node_ids()
        .into_iter()
        .map(|id| graph.node(id).name.clone())
        .filter_map(|n| {
            let l = n.to_lowercase();
            let score = if !lower.is_empty() && (l.contains(&lower) || lower.contains(&l)) {
                0
            } else {
                let d = edit_distance(&lower, &l);
                if d > (lower.chars().count() / 2).max(3) {
                    return None;
                }
                d
            };
            Some((score, n))
        })
        .collect();
    scored.sort();
    scored.into_iter().take(5).map(|(_, n)| n).collect()
}

/// Runs `kiln explain`.
pub fn explain(args: &ExplainArgs) -> anyhow::Result<()> {
    let pipeline = args.pipeline.pipeline()?;
    let graph = super::load_model(&args.model)?;
    let Some(id) = graph.node_by_name(&args.node) else {
        let near = near_names(&graph, &args.node);
        if near.is_empty() {
            bail!(
                "`{}` has no node named `{}` (`kiln inspect` shows the model; node names are those of the file)",
                args.model.display(),
                args.node
            );
        }
        bail!("`{}` has no node named `{}`; near names: {}", args.model.display(), args.node, near.join(", "));
    };
    let op = graph.node(id).op.name();
    let e = kiln::passes::manager::explain_node(&graph, &pipeline, &args.node)?;

    let mut out = format!("node `{}` ({op}), output `{}`, with {}\n", e.node, e.value, pipeline.name);
    let limited: Vec<String> =
        e.passes.iter().filter(|p| p.stop.is_limit()).map(|p| format!("{} ({})", p.name, p.stop)).collect();
    if !limited.is_empty() {
        out.push_str(&format!(
            "warning: saturation limit hit in pass {}; the chain may be incomplete\n",
            limited.join(", ")
        ));
    }
    out.push_str(&format!("  original:  {}\n", e.original));
    if !e.live {
        out.push_str(
            "the optimized graph no longer computes this value: a fused op absorbed it (explain its readers)\n",
        );
    }
    if !e.rewritten {
        out.push_str(&format!("node {} was not rewritten\n", e.node));
        if !e.steps.is_empty() {
            out.push_str(&format!(
                "its inputs were ({} step{}):\n",
                e.steps.len(),
                if e.steps.len() == 1 { "" } else { "s" }
            ));
        }
    } else {
        out.push_str(&format!("  optimized: {}\n", e.result));
        out.push_str(&format!(
            "rewrite chain ({} step{}):\n",
            e.steps.len(),
            if e.steps.len() == 1 { "" } else { "s" }
        ));
    }
    for (k, s) in e.steps.iter().enumerate() {
        let direction = if s.reverse { " (right to left)" } else { "" };
        out.push_str(&format!("  {}. {}{direction}\n       {}\n    -> {}\n", k + 1, s.rule, s.before, s.after));
    }
    write_stdout(&out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }
}
