//! `kiln run`: evaluates a model on given inputs, writes the outputs as
//! `.npy` files and compares them with reference outputs when there are any.

use super::compare::{compare, Comparison};
use super::inputs::{assign_inputs, parse_input_arg, read_test_data, InputArg, TensorFile};
use super::output::write_stdout;
use super::progress::Progress;
use super::summary::{number, shape_text, table, thousands, value_stats};
use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use kiln::ir::{DType, Graph, Tensor};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where the model is evaluated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// kiln's reference interpreter: slow but the oracle everything else is
    /// checked against.
    Interp,
    /// Native code for this CPU, generated through LLVM and JIT-compiled
    /// (kiln-backend-llvm).
    Cpu,
}

/// Run a model and write (and check) its outputs.
#[derive(Args, Debug)]
#[command(
    long_about = "Run a model on the given inputs, print a summary of each output (dtype, shape, min/max/mean) \
    and optionally write each output as NAME.npy.\n\n\
    Inputs come from --input NAME=FILE (a .npy array or an ONNX TensorProto .pb) and/or --inputs DIR, a \
    directory in the ONNX test-data layout: input_0.pb, input_1.pb, ... feed the graph inputs by position \
    (or by the name stored in the file when it names a graph input); --input overrides the directory.\n\n\
    When DIR also holds output_0.pb, output_1.pb, ..., each output is compared with the one at the same \
    position, the max abs / max rel errors are printed, and kiln exits with status 1 if any element \
    fails the numpy.allclose test |actual - expected| <= atol + rtol * |expected| (NaN matches NaN).",
    after_help = "Examples:\n  \
    kiln run model.onnx --inputs test_data_set_0 --out out/\n  \
    kiln run model.onnx --input input_ids=ids.npy --input labels=labels.npy"
)]
pub struct RunArgs {
    /// The model: .onnx or .kiln.
    model: PathBuf,
    /// The backend that evaluates the model.
    #[arg(long, value_enum, default_value_t = Backend::Interp)]
    backend: Backend,
    /// With --backend cpu: the LLVM CPU name to generate code for (e.g. x86-64-v3, skylake-avx512);
    /// the host CPU by default.
    #[arg(long, value_name = "CPU")]
    target_cpu: Option<String>,
    /// With --backend cpu: threads the kernels may use (default: every core the process may run on).
    #[arg(long, value_name = "T", value_parser = parse_threads)]
    threads: Option<usize>,
    /// With --backend cpu: neither read nor write the compile cache ($KILN_CACHE_DIR, else
    /// $XDG_CACHE_HOME/kiln, else ~/.cache/kiln), which otherwise spares a second run the code generation.
    #[arg(long)]
    no_cache: bool,
    /// Feed graph input NAME from FILE (.npy or .pb); repeatable.
    #[arg(long = "input", value_name = "NAME=FILE", value_parser = parse_input_arg)]
    input: Vec<InputArg>,
    /// Read inputs (and reference outputs) from an ONNX test-data directory.
    #[arg(long = "inputs", value_name = "DIR")]
    inputs_dir: Option<PathBuf>,
    /// Write each graph output to DIR/NAME.npy (characters that cannot be in a file name become `_`).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Relative tolerance for the comparison with reference outputs.
    #[arg(long, value_name = "R", default_value_t = 1e-4, value_parser = parse_tolerance)]
    rtol: f64,
    /// Absolute tolerance for the comparison with reference outputs.
    #[arg(long, value_name = "A", default_value_t = 1e-5, value_parser = parse_tolerance)]
    atol: f64,
}

fn parse_threads(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("expected a whole number of at least 1, got `{s}`")),
    }
}

fn parse_tolerance(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("expected a non-negative number, got `{s}`")),
    }
}

/// A file name for an output: ASCII letters, digits, `.`, `-` and `_` kept,
/// anything else (path separators, `:`, spaces, ...) replaced by `_`, and
/// names that would be special (`.`, `..`, hidden files) prefixed with `_`.
pub fn file_stem_for(name: &str) -> String {
    let mut stem: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' }).collect();
    if stem.is_empty() || stem.starts_with('.') {
        stem.insert(0, '_');
    }
    stem
}

/// Unique `.npy` file names for the outputs, in order: an output listed
/// twice, or two names that sanitize alike, get `_1`, `_2`, ... suffixes.
fn output_file_names(names: &[&str]) -> Vec<String> {
    let mut used = BTreeSet::new();
    names
        .iter()
        .map(|name| {
            let stem = file_stem_for(name);
            let mut candidate = format!("{stem}.npy");
            let mut k = 1;
            while !used.insert(candidate.to_ascii_lowercase()) {
                candidate = format!("{stem}_{k}.npy");
                k += 1;
            }
            candidate
        })
        .collect()
}

/// For the cpu backend: how long compiling took (code generation and JIT,
/// or loading from the compile cache), which is not part of the run time,
/// and what the cache did.
struct CompileInfo {
    time: std::time::Duration,
    cache: kiln_backend_llvm::CacheUse,
}

/// The outputs of a run, and for the cpu backend how compiling went.
type Evaluated = (Vec<(String, Tensor)>, Option<CompileInfo>);

/// Evaluates the graph; for the cpu backend also says how compiling went.
fn evaluate(graph: &Graph, inputs: &[(String, Tensor)], args: &RunArgs) -> anyhow::Result<Evaluated> {
    match args.backend {
        Backend::Cpu => {
            let start = Instant::now();
            let opts = kiln_backend_llvm::CompileOptions {
                target_cpu: args.target_cpu.clone(),
                threads: args.threads,
                cache_dir: if args.no_cache { None } else { kiln_backend_llvm::default_cache_dir() },
                ..Default::default()
            };
            let compiled = kiln_backend_llvm::compile(graph, &opts)?;
            // Specializes to the input shapes and JIT-compiles (or loads
            // from the cache), so the run below measures execution only.
            let cache = compiled.specialization_for(inputs)?.cache.clone();
            let time = start.elapsed();
            Ok((compiled.run(inputs)?, Some(CompileInfo { time, cache })))
        }
        Backend::Interp => {
            let bar = Progress::new("running", "nodes");
            let report = |done: usize, total: usize| bar.update(done as u64, total as u64);
            let opts = kiln::ir::interp::RunOptions { progress: Some(&report), ..Default::default() };
            let outputs = kiln::ir::interp::run_with(graph, inputs, &opts)?;
            bar.finish();
            Ok((outputs, None))
        }
    }
}

/// Runs `kiln run`.
pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    if args.target_cpu.is_some() && args.backend != Backend::Cpu {
        bail!("--target-cpu needs --backend cpu");
    }
    if args.threads.is_some() && args.backend != Backend::Cpu {
        bail!("--threads needs --backend cpu (the interpreter is single-threaded)");
    }
    if args.no_cache && args.backend != Backend::Cpu {
        bail!("--no-cache needs --backend cpu");
    }
    if let Some(out) = &args.out {
        // Fail before the (possibly long) run if the results cannot be written.
        std::fs::create_dir_all(out)
            .with_context(|| format!("cannot create the output directory `{}`", out.display()))?;
    }
    let test_data = args.inputs_dir.as_deref().map(read_test_data).transpose()?;
    let graph = super::load_model(&args.model)?;
    let (dir_inputs, expected): (Vec<TensorFile>, Vec<TensorFile>) = match test_data {
        Some(d) => (d.inputs, d.outputs),
        None => (Vec::new(), Vec::new()),
    };
    if !expected.is_empty() && expected.len() != graph.outputs().len() {
        bail!(
            "{} holds {} reference output{} but the model has {} output{}",
            args.inputs_dir.as_deref().map_or_else(String::new, |d| d.display().to_string()),
            expected.len(),
            if expected.len() == 1 { "" } else { "s" },
            graph.outputs().len(),
            if graph.outputs().len() == 1 { "" } else { "s" }
        );
    }
    let assigned = assign_inputs(&graph, dir_inputs, &args.input)?;
    let mut input_rows = Vec::new();
    let mut inputs = Vec::with_capacity(assigned.len());
    for input in assigned {
        input_rows.push(vec![
            input.name.clone(),
            format!("{}{}", input.tensor.dtype(), shape_text(input.tensor.shape())),
            value_stats(&input.tensor),
            format!("<- {}", input.origin.display()),
        ]);
        inputs.push((input.name, input.tensor));
    }

    let start = Instant::now();
    let (outputs, compile_info) =
        evaluate(&graph, &inputs, args).with_context(|| format!("running `{}` failed", args.model.display()))?;
    let elapsed = start.elapsed() - compile_info.as_ref().map(|c| c.time).unwrap_or_default();

    let mut report = format!(
        "ran {} ({} nodes) with {} in {}{}\n",
        args.model.display(),
        thousands(graph.node_count() as u64),
        args.backend.to_possible_value().expect("no variant is skipped").get_name(),
        duration_text(elapsed),
        compile_info.as_ref().map_or_else(String::new, |c| format!(
            " (after {} compiling, compile cache {})",
            duration_text(c.time),
            c.cache.label()
        ))
    );
    if let Some(kiln_backend_llvm::CacheUse::Unavailable(why)) = compile_info.as_ref().map(|c| &c.cache) {
        report.push_str(&format!("note: the compile cache could not be used: {why}\n"));
    }
    if !input_rows.is_empty() {
        report.push_str(&format!("\ninputs ({})\n", input_rows.len()));
        report.push_str(&table(&input_rows, 2));
    }
    report.push_str(&format!("\noutputs ({})\n", outputs.len()));
    let names: Vec<&str> = outputs.iter().map(|(n, _)| n.as_str()).collect();
    let files = output_file_names(&names);
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for ((name, tensor), file) in outputs.iter().zip(&files) {
        let mut row =
            vec![name.clone(), format!("{}{}", tensor.dtype(), shape_text(tensor.shape())), value_stats(tensor)];
        if let Some(dir) = &args.out {
            let path = dir.join(file);
            // NumPy has no bfloat16: write the exact f32 widening instead.
            let written = if tensor.dtype() == DType::BF16 {
                notes.push(format!("`{name}` is bf16, which NumPy lacks; written as f32"));
                tensor.cast(DType::F32)
            } else {
                tensor.clone()
            };
            kiln::ir::npy::write_npy(&path, &written).with_context(|| format!("cannot write output `{name}`"))?;
            if *file != format!("{name}.npy") {
                notes.push(format!("`{name}` is not a valid file name; written as {file}"));
            }
            row.push(format!("-> {}", path.display()));
        }
        rows.push(row);
    }
    report.push_str(&table(&rows, 2));
    for note in &notes {
        report.push_str(&format!("note: {note}\n"));
    }

    let mut failures = Vec::new();
    if !expected.is_empty() {
        report.push_str(&format!("\ncomparison with reference outputs (rtol {}, atol {})\n", args.rtol, args.atol));
        let mut rows = Vec::new();
        for ((name, tensor), reference) in outputs.iter().zip(&expected) {
            let c = compare(tensor, &reference.tensor, args.rtol, args.atol);
            rows.push(comparison_row(name, &c));
            if !c.passed() {
                failures.push(failure_text(name, &reference.path, &c));
            }
        }
        report.push_str(&table(&rows, 2));
    }
    write_stdout(&report);

    match failures.len() {
        0 => Ok(()),
        1 => bail!("{}", failures[0]),
        n => bail!("{n} outputs do not match their references:\n  {}", failures.join("\n  ")),
    }
}

/// `12.3 ms` below a second, `4.56 s` above.
fn duration_text(d: std::time::Duration) -> String {
    if d.as_secs_f64() < 1.0 {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

fn comparison_row(name: &str, c: &Comparison) -> Vec<String> {
    if let Some(why) = &c.incompatible {
        return vec![name.to_string(), "max abs -".into(), "max rel -".into(), format!("FAIL ({why})")];
    }
    let verdict = if c.passed() {
        "ok".to_string()
    } else {
        format!("FAIL ({} of {} elements)", thousands(c.mismatches as u64), thousands(c.total as u64))
    };
    vec![name.to_string(), format!("max abs {}", number(c.max_abs)), format!("max rel {}", number(c.max_rel)), verdict]
}

fn failure_text(name: &str, reference: &Path, c: &Comparison) -> String {
    if let Some(why) = &c.incompatible {
        return format!("output `{name}` does not match {}: {why}", reference.display());
    }
    let mut text = format!(
        "output `{name}` does not match {}: max abs error {}, max rel error {}; {} of {} elements fail",
        reference.display(),
        number(c.max_abs),
        number(c.max_rel),
        thousands(c.mismatches as u64),
        thousands(c.total as u64),
    );
    if let Some((index, got, want)) = &c.worst {
        text.push_str(&format!(" (worst at {index:?}: got {}, expected {})", number(*got), number(*want)));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_file_names_are_safe_and_unique() {
        assert_eq!(file_stem_for("logits"), "logits");
        assert_eq!(file_stem_for("layers.0/attn:out"), "layers.0_attn_out");
        assert_eq!(file_stem_for(".."), "_..");
        assert_eq!(file_stem_for(""), "_");
        assert_eq!(file_stem_for("a\\b c"), "a_b_c");
        assert_eq!(
            output_file_names(&["a/b", "a:b", "x", "x", "X"]),
            vec!["a_b.npy", "a_b_1.npy", "x.npy", "x_1.npy", "X_2.npy"]
        );
    }

    #[test]
    fn tolerances_must_be_non_negative_numbers() {
        assert_eq!(parse_tolerance("1e-3"), Ok(1e-3));
        assert!(parse_tolerance("-1").is_err());
        assert!(parse_tolerance("nan").is_err());
        assert!(parse_tolerance("x").is_err());
    }
}
