//! `kiln compile`: optimizes a model, specializes it to fixed input shapes
//! and writes a self-contained shared library with a C ABI (or the
//! generated module alone, as an object file, assembly or LLVM IR).

use super::output::write_stdout;
use super::pipeline::PipelineArgs;
use super::summary::{byte_size, shape_text, table, thousands};
use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use kiln_backend_llvm::aot;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What `--emit` writes instead of a shared library.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EmitKind {
    /// A position-independent object file of the generated module.
    Obj,
    /// The generated module's assembly.
    Asm,
    /// The generated module's LLVM IR, after optimization.
    #[value(name = "llvm-ir")]
    LlvmIr,
}

/// Compile a model ahead of time into a shared library with a C ABI.
#[derive(Args, Debug)]
#[command(
    long_about = "Compile a model ahead of time into a self-contained shared library with a C ABI.\n\n\
    The model is optimized as by `kiln optimize` (-O2 by default), specialized to fixed input shapes \
    (each symbolic dim needs --dim NAME=VALUE), lowered by the CPU backend's code generator (the same as \
    `kiln run --backend cpu`) and linked with the system C compiler ($CC, else cc) into OUT. The weights are \
    compiled into the library. Every exported symbol starts with the library's name (from OUT: libgpt2.so \
    gives gpt2_create, gpt2_run, ...; --name overrides it), so several libraries load into one process.\n\n\
    --header writes the C header that documents the ABI: NAME_create(&model, num_threads), \
    NAME_run(model, inputs, outputs) on caller-owned buffers, NAME_destroy(model), the tensor descriptors \
    (NAME_num_inputs, NAME_input(i), ...) and NAME_last_error().\n\n\
    --emit obj|asm|llvm-ir writes the generated module alone instead (its entry is NAME_entry(void **buffers); \
    the C ABI is only in the library).",
    after_help = "Examples:\n  \
    kiln compile gpt2.onnx -o libgpt2.so --header gpt2.h --dim batch=1 --dim seq=128\n  \
    kiln compile model.onnx -o model.s --emit asm --target-cpu x86-64-v3\n  \
    kiln compile model.onnx -o libmodel.so -O0"
)]
pub struct CompileArgs {
    /// The model: .onnx or .kiln.
    model: PathBuf,
    /// Where to write the library (or, with --emit, the object, assembly or IR file).
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    output: PathBuf,
    /// Also write the C header of the library's ABI to this file.
    #[arg(long, value_name = "NAME.h")]
    header: Option<PathBuf>,
    /// Write the generated module alone instead of a shared library.
    #[arg(long, value_enum, value_name = "KIND")]
    emit: Option<EmitKind>,
    /// The LLVM CPU name to generate code for (e.g. x86-64-v3, skylake-avx512); the host CPU by default.
    #[arg(long, value_name = "CPU")]
    target_cpu: Option<String>,
    /// The size of a symbolic dim of the inputs; repeatable.
    #[arg(long = "dim", value_name = "NAME=VALUE", value_parser = super::bench::parse_dim_arg)]
    dims: Vec<(String, u64)>,
    /// The symbols' prefix (a C identifier); by default OUT's file name without `lib` and extensions.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    #[command(flatten)]
    pipeline: PipelineArgs,
}

/// The symbol prefix OUT implies: `libgpt2.so` → `gpt2`.
fn name_from_output(output: &Path) -> String {
    let file = output.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = file.split('.').next().unwrap_or_default();
    let stem = stem.strip_prefix("lib").filter(|s| !s.is_empty()).unwrap_or(stem);
    aot::identifier_from(stem)
}

/// `12.3 ms` below a second, `4.56 s` above.
fn seconds_text(s: f64) -> String {
    if s < 1.0 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

/// Runs `kiln compile`.
pub fn compile(args: &CompileArgs) -> anyhow::Result<()> {
    let name = args.name.clone().unwrap_or_else(|| name_from_output(&args.output));
    let mut dims: BTreeMap<String, i64> = BTreeMap::new();
    for (dim, value) in &args.dims {
        if let Some(previous) = dims.insert(dim.clone(), *value as i64) {
            if previous != *value as i64 {
                bail!("--dim {dim} is given twice, as {previous} and {value}");
            }
        }
    }
    let pipeline = args.pipeline.pipeline()?;
    let opts = kiln_backend_llvm::CompileOptions { target_cpu: args.target_cpu.clone(), ..Default::default() };
    let graph = super::load_model(&args.model)?;

    // Unknown --dim names are typos; say so before the optimizer runs.
    let symbols: Vec<String> = graph
        .inputs()
        .iter()
        .filter_map(|&v| graph.value(v).ty.as_ref())
        .flat_map(|ty| ty.shape.iter())
        .filter_map(|d| match d {
            kiln::ir::Dim::Sym(p) => Some(p.symbols().iter().map(|s| s.to_string()).collect::<Vec<_>>()),
            _ => None,
        })
        .flatten()
        .collect();
    for dim in dims.keys() {
        if !symbols.contains(dim) {
            let mut known: Vec<&String> = symbols.iter().collect();
            known.sort();
            known.dedup();
            let known = if known.is_empty() {
                "the model's inputs have no symbolic dims".to_string()
            } else {
                format!(
                    "its symbolic dims are {}",
                    known.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
                )
            };
            bail!("--dim {dim}: no input of the model has a dim named `{dim}`; {known}");
        }
    }
    // Shapes first: a missing --dim should not cost an optimization.
    aot::input_shapes(&graph, &dims).context("the library needs fixed input shapes")?;

    let start = Instant::now();
    let (optimized, report) = kiln::passes::optimize(&graph, &pipeline)
        .with_context(|| format!("optimizing `{}` failed", args.model.display()))?;
    let optimize_seconds = start.elapsed().as_secs_f64();

    let failed = || format!("compiling `{}` failed", args.model.display());
    let start = Instant::now();
    let shapes = aot::input_shapes(&optimized, &dims).context("the library needs fixed input shapes")?;
    let module = aot::prepare(&optimized, &shapes, &opts, &name).with_context(failed)?;
    let (what, emit) = match args.emit {
        None => ("shared library", None),
        Some(EmitKind::Obj) => ("object file", Some(aot::Emit::Object)),
        Some(EmitKind::Asm) => ("assembly", Some(aot::Emit::Assembly)),
        Some(EmitKind::LlvmIr) => ("LLVM IR", Some(aot::Emit::LlvmIr)),
    };
    match emit {
        None => module.write_library(&args.output),
        Some(kind) => module.emit(kind, &args.output),
    }
    .with_context(failed)?;
    let codegen_seconds = start.elapsed().as_secs_f64();
    if let Some(header) = &args.header {
        std::fs::write(header, module.header())
            .with_context(|| format!("cannot write the header `{}`", header.display()))?;
    }

    let size = std::fs::metadata(&args.output).map(|m| m.len()).unwrap_or(0);
    let target = module.target();
    let mut text = format!(
        "compiled {} -> {} ({what}, {}) for {} (CPU {})\n",
        args.model.display(),
        args.output.display(),
        byte_size(size),
        target.triple,
        target.cpu
    );
    let rewrites: usize = report.rewrites.iter().map(|r| r.count).sum();
    let rows = vec![
        vec![
            "optimize".to_string(),
            seconds_text(optimize_seconds),
            format!(
                "{}: {} -> {} nodes, {} rewrite{}",
                report.pipeline,
                thousands(graph.node_count() as u64),
                thousands(optimized.node_count() as u64),
                thousands(rewrites as u64),
                if rewrites == 1 { "" } else { "s" }
            ),
        ],
        vec![
            "codegen".to_string(),
            seconds_text(codegen_seconds),
            format!("specialize, lower, LLVM O3, {}", if emit.is_none() { "object code, link" } else { "write" }),
        ],
    ];
    text.push('\n');
    text.push_str(&table(&rows, 2));
    for (title, descs) in [("inputs", module.inputs()), ("outputs", module.outputs())] {
        text.push_str(&format!("\n{title} ({})\n", descs.len()));
        let rows: Vec<Vec<String>> = descs
            .iter()
            .enumerate()
            .map(|(i, d)| vec![format!("{i}"), d.name.clone(), format!("{}{}", d.dtype, shape_text(&d.shape))])
            .collect();
        text.push_str(&table(&rows, 2));
    }
    text.push_str(&format!(
        "\nconstants {} in the library, arena {} allocated by {name}_create\n",
        byte_size(module.constant_bytes() as u64),
        byte_size(module.arena_bytes() as u64)
    ));
    if emit.is_none() {
        text.push_str(&format!(
            "symbols {name}_create, {name}_run, {name}_set_threads, {name}_destroy, {name}_num_inputs, {name}_input, {name}_num_outputs, \
             {name}_output, {name}_last_error, {name}_target\n"
        ));
    } else {
        text.push_str(&format!("entry {name}_entry(void **buffers); constant table {name}_consts\n"));
    }
    if let Some(header) = &args.header {
        text.push_str(&format!("header {}\n", header.display()));
    }
    write_stdout(&text);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_outputs() {
        assert_eq!(name_from_output(Path::new("out/libgpt2.so")), "gpt2");
        assert_eq!(name_from_output(Path::new("gpt2-small.o")), "gpt2_small");
        assert_eq!(name_from_output(Path::new("lib.so")), "lib");
        assert_eq!(name_from_output(Path::new("3d.s")), "m_3d");
    }
}
