//! `kiln convert`: between ONNX and kiln's text format.

use super::output::write_stdout;
use anyhow::Context;
use clap::Args;
use kiln::ir::io::ModelFormat;
use std::path::PathBuf;

/// Convert a model between .onnx and .kiln.
#[derive(Args, Debug)]
#[command(long_about = "Convert a model between ONNX (.onnx) and kiln's text format (.kiln), in either \
    direction; the formats are chosen by extension, so .onnx -> .onnx and .kiln -> .kiln also work \
    (they normalize the model: old-opset forms rewritten, types inferred and recorded).\n\n\
    The input is loaded as `kiln run` loads it (types inferred, graph verified), so only models kiln \
    accepts are written.")]
pub struct ConvertArgs {
    /// The model to read: .onnx or .kiln.
    input: PathBuf,
    /// The file to write: .onnx or .kiln (overwritten if it exists).
    output: PathBuf,
}

fn format_name(format: ModelFormat) -> &'static str {
    match format {
        ModelFormat::Onnx => "ONNX",
        ModelFormat::Text => "kiln text",
    }
}

/// Runs `kiln convert`.
pub fn convert(args: &ConvertArgs) -> anyhow::Result<()> {
    // Check the output name first so a typo does not cost a long load.
    let to = ModelFormat::from_path(&args.output)?;
    let from = ModelFormat::from_path(&args.input)?;
    let graph = super::load_model(&args.input)?;
    kiln::ir::io::save(&graph, &args.output).with_context(|| format!("cannot write `{}`", args.output.display()))?;
    write_stdout(&format!(
        "converted {} ({}) -> {} ({}), {} nodes\n",
        args.input.display(),
        format_name(from),
        args.output.display(),
        format_name(to),
        super::summary::thousands(graph.node_count() as u64)
    ));
    Ok(())
}
