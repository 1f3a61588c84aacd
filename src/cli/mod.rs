//! Command-line parsing, dispatch and error reporting for the `kiln` binary.
//!
//! Every subcommand returns `anyhow::Result`; an error is printed to stderr as
//! `error: <message>` followed by its causes, and the process exits with 1.
//! Usage errors are clap's (exit code 2).

mod bench;
mod compare;
mod compile;
mod convert;
mod explain;
mod inputs;
mod inspect;
mod optimize;
mod output;
mod pipeline;
mod progress;
mod rules;
mod run;
mod summary;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Compiler passes and operator fusion for transformer graphs.
#[derive(Parser, Debug)]
#[command(
    name = "kiln",
    version,
    about,
    long_about = "Compiler passes and operator fusion for transformer graphs.\n\n\
        Models are read and written by extension: .onnx (ONNX protobuf) or .kiln (kiln's text format).",
    propagate_version = true,
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    Inspect(inspect::InspectArgs),
    Run(run::RunArgs),
    Convert(convert::ConvertArgs),
    Optimize(optimize::OptimizeArgs),
    Explain(explain::ExplainArgs),
    Rules(rules::RulesArgs),
    Bench(bench::BenchArgs),
    Compile(compile::CompileArgs),
}

/// Parses the command line, runs the subcommand and turns its outcome into
/// an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Inspect(args) => inspect::inspect(&args),
        Command::Run(args) => run::run(&args),
        Command::Convert(args) => convert::convert(&args),
        Command::Optimize(args) => optimize::optimize(&args),
        Command::Explain(args) => explain::explain(&args),
        Command::Rules(args) => rules::rules(&args),
        Command::Bench(args) => bench::bench(&args),
        Command::Compile(args) => compile::compile(&args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report_error(&e);
            ExitCode::FAILURE
        }
    }
}

/// Prints an error and its causes to stderr. A cause whose text the message
/// above it already contains is skipped: IrError::Io, for one, both shows
/// and chains its io::Error.
fn report_error(e: &anyhow::Error) {
    let mut text = format!("error: {e}\n");
    let mut previous = e.to_string();
    for cause in e.chain().skip(1) {
        let line = cause.to_string();
        if !previous.contains(&line) {
            text.push_str(&format!("  caused by: {line}\n"));
        }
        previous = line;
    }
    output::write_stderr(&text);
}

/// Loads a model (format by extension), inferring types and verifying it,
/// with a progress bar for large ONNX files.
fn load_model(path: &std::path::Path) -> anyhow::Result<kiln::ir::Graph> {
    use anyhow::Context;
    let bar = progress::Progress::bytes("loading");
    let mut report = |done: u64, total: u64| bar.update(done, total);
    let opts = kiln::ir::onnx::import::ImportOptions { progress: Some(&mut report) };
    let graph = kiln::ir::io::load_with(path, opts).with_context(|| format!("cannot load `{}`", path.display()))?;
    bar.finish();
    Ok(graph)
}
