//! `kiln bench`: times a model the way onnxruntime_perf_test and
//! iree-benchmark-module do. Loading, compiling and running are timed apart;
//! the runs are repeated after a warmup and summarized (median, min, max,
//! mean, standard deviation), and the process's peak resident memory is
//! read from `/proc/self/status`.
//!
//! Phases, in order:
//! 1. load: read the model, infer types, verify (what every subcommand does);
//! 2. inputs: read them from `--inputs DIR`, or make seeded random ones of
//!    the declared shapes (symbolic dims from `--dim NAME=VALUE`);
//! 3. compile: the backend's one-time preparation for these inputs;
//! 4. warmup runs (untimed), then the timed runs.
//!
//! Peak memory: the kernel's high-water mark (`VmHWM`) is read after
//! compiling, then reset through `/proc/self/clear_refs`, so that the runs'
//! own peak can be told apart from the load's and the inputs'. The JSON
//! reports both the whole process's peak and the runs' peak above the
//! resident size they started from, which is what onnxruntime comparisons
//! call "peak extra memory".

use super::inputs::{assign_inputs, read_test_data, required_inputs, InputArg, TensorFile};
use super::output::write_stdout;
use super::progress::Progress;
use super::summary::{shape_text, table};
use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use kiln::ir::op::Op;
use kiln::ir::{DType, Dim, Graph, Tensor, ValueId};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The backends `kiln bench` can time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchBackend {
    /// kiln's reference interpreter (single-threaded).
    Interp,
    /// The LLVM CPU backend (backends/llvm).
    Cpu,
}

impl BenchBackend {
    fn name(self) -> &'static str {
        match self {
            BenchBackend::Interp => "interp",
            BenchBackend::Cpu => "cpu",
        }
    }
}

/// Benchmark a model: load, compile and run times, latency statistics and
/// peak memory.
#[derive(Args, Debug)]
#[command(
    long_about = "Benchmark a model like onnxruntime_perf_test or iree-benchmark-module: load it, prepare \
    inputs, compile it for the backend, run it --warmup times untimed and --iterations times timed, and \
    report the per-run latency (median, min, max, mean, standard deviation), the load and compile times \
    apart from the run time, and the peak resident memory (VmHWM, in MB).\n\n\
    Inputs: --inputs DIR reads either the ONNX test-data layout (input_0.pb, input_1.pb, ...) or one \
    NAME.npy per graph input. Without --inputs, kiln makes random inputs of the declared shapes and dtypes \
    from a fixed seed (--seed): floats uniform in [-1, 1); booleans true or false with equal odds; an \
    integer input that is used as indices (through Reshape, Slice, Squeeze, Unsqueeze, Flatten, Transpose, \
    Expand, Identity or Cast) by a Gather gets values in [0, size of the gathered axis) (token ids stay \
    inside the embedding table), and one used as the labels of SoftmaxCrossEntropyLoss, \
    NegativeLogLikelihoodLoss, CrossEntropy or LinearCrossEntropy gets values in [0, number of classes); \
    when several such uses disagree the smallest bound wins; any other integer input gets 0 or 1 (which \
    suits masks and flags). A symbolic dim (batch, seq) needs its size: --dim seq=128.\n\n\
    Compile: for interp, the graph is specialized to the input shapes (input types fixed, types \
    re-inferred, graph verified); for cpu, the backend's code generation.\n\n\
    Threads: --threads T is how many threads the backend may use (default: all available cores). The cpu \
    backend splits its kernels' outer loops (rows, heads, chunks) across T threads of LLVM's OpenMP runtime; \
    the interpreter is single-threaded, records T and reports threads_used 1.\n\n\
    Outputs: the cpu backend's timed runs write into output buffers allocated once and reused by every run \
    (like onnxruntime's IOBinding), and keep their scratch arena between runs.\n\n\
    Softmax: --softmax two-pass|three-pass|online picks the cpu backend's Softmax/LogSoftmax kernel (default \
    two-pass), to compare them.\n\n\
    Profile: --profile (cpu backend) counts the CPU cycles of each kernel over all runs and lists the \
    kernels by their share of the time, with the op(s) and node each computes; ms/run is that share of the \
    mean run time. The counters cost a few cycles per kernel, so profile and time in separate runs.\n\n\
    Memory: peak_rss_mb is the process's peak resident set; run_peak_extra_mb is the runs' peak above the \
    resident size after compiling and making the inputs (the high-water mark is reset through \
    /proc/self/clear_refs before the first warmup run; peak_reset says whether that worked).\n\n\
    Progress is shown on stderr only when it is a terminal.",
    after_help = "Examples:\n  \
    kiln bench model.onnx --dim batch=1 --dim seq=128 --iterations 20\n  \
    kiln bench model.onnx --inputs test_data_set_0 --warmup 2 --iterations 10 --json"
)]
pub struct BenchArgs {
    /// The model: .onnx or .kiln.
    model: PathBuf,
    /// The backend to time.
    #[arg(long, value_enum, default_value_t = BenchBackend::Interp)]
    backend: BenchBackend,
    /// Read inputs from DIR: input_K.pb files (ONNX test-data layout) or NAME.npy per graph input.
    #[arg(long = "inputs", value_name = "DIR")]
    inputs_dir: Option<PathBuf>,
    /// Untimed runs before the timed ones.
    #[arg(long, value_name = "N", default_value_t = 1)]
    warmup: usize,
    /// Timed runs.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = parse_positive)]
    iterations: usize,
    /// Threads the backend may use (default: the available cores).
    #[arg(long, value_name = "T", value_parser = parse_positive)]
    threads: Option<usize>,
    /// The size of a symbolic dim for random inputs; repeatable.
    #[arg(long = "dim", value_name = "NAME=VALUE", value_parser = parse_dim_arg)]
    dims: Vec<(String, u64)>,
    /// Seed of the random inputs.
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
    /// With --backend cpu: the Softmax/LogSoftmax kernel.
    #[arg(long, value_enum, value_name = "ALGORITHM")]
    softmax: Option<SoftmaxChoice>,
    /// With --backend cpu: report where the runs spend their time, per kernel.
    #[arg(long)]
    profile: bool,
    /// Print one JSON object instead of the text report.
    #[arg(long)]
    json: bool,
    /// With --backend cpu: neither read nor write the compile cache ($KILN_CACHE_DIR, else
    /// $XDG_CACHE_HOME/kiln, else ~/.cache/kiln).
    #[arg(long)]
    no_cache: bool,
}

/// `--softmax`: the CPU backend's softmax kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SoftmaxChoice {
    /// Max and sum in one read of each row, then one pass to write.
    TwoPass,
    /// The baseline: max, sum and write in three passes.
    ThreePass,
    /// Two passes, one exponential per element: chunked online normalizer, then a rescale.
    Online,
}

impl SoftmaxChoice {
    fn algorithm(self) -> kiln_backend_llvm::SoftmaxAlgorithm {
        match self {
            SoftmaxChoice::TwoPass => kiln_backend_llvm::SoftmaxAlgorithm::TwoPass,
            SoftmaxChoice::ThreePass => kiln_backend_llvm::SoftmaxAlgorithm::ThreePass,
            SoftmaxChoice::Online => kiln_backend_llvm::SoftmaxAlgorithm::Online,
        }
    }

    fn name(self) -> &'static str {
        match self {
            SoftmaxChoice::TwoPass => "two-pass",
            SoftmaxChoice::ThreePass => "three-pass",
            SoftmaxChoice::Online => "online",
        }
    }
}

fn parse_positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("expected a whole number of at least 1, got `{s}`")),
    }
}

/// clap value parser for `--dim NAME=VALUE`.
pub(super) fn parse_dim_arg(s: &str) -> Result<(String, u64), String> {
    let Some((name, value)) = s.split_once('=') else {
        return Err(format!("expected NAME=VALUE (e.g. seq=128), got `{s}`"));
    };
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("expected NAME=VALUE (e.g. seq=128), got `{s}`"));
    }
    match value.trim().parse::<u64>() {
        Ok(v) if v <= i64::MAX as u64 => Ok((name.to_string(), v)),
        _ => Err(format!("the size of `{name}` must be a non-negative whole number, got `{value}`")),
    }
}

// ---------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------

/// One prepared input and how it was made, for the report.
struct PreparedInput {
    name: String,
    tensor: Tensor,
    /// `random [0, 50257) (Gather `wte` axis 0)` or the file it came from.
    origin: String,
}

/// The inputs of `--inputs DIR`: the test-data layout when the directory
/// has input_K.pb files, else its NAME.npy files by name.
fn inputs_from_dir(graph: &Graph, dir: &Path) -> anyhow::Result<Vec<PreparedInput>> {
    let listing =
        std::fs::read_dir(dir).with_context(|| format!("cannot read the inputs directory `{}`", dir.display()))?;
    let mut npy_files = Vec::new();
    let mut has_pb = false;
    for entry in listing {
        let entry = entry.with_context(|| format!("cannot read the inputs directory `{}`", dir.display()))?;
        let path = entry.path();
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        if file_name.starts_with("input_") && file_name.ends_with(".pb") {
            has_pb = true;
        } else if let Some(stem) = file_name.strip_suffix(".npy") {
            npy_files.push(InputArg { name: stem.to_string(), file: path.clone() });
        }
    }
    // Sorted so that errors (and the report) do not depend on directory order.
    npy_files.sort_by(|a, b| a.name.cmp(&b.name));
    let (from_dir, explicit): (Vec<TensorFile>, Vec<InputArg>) = if has_pb {
        (read_test_data(dir)?.inputs, Vec::new())
    } else if !npy_files.is_empty() {
        (Vec::new(), npy_files)
    } else {
        bail!(
            "{}: no input_K.pb or NAME.npy files (expected the ONNX test-data layout or one NAME.npy per graph input)",
            dir.display()
        );
    };
    let assigned = assign_inputs(graph, from_dir, &explicit)?;
    Ok(assigned
        .into_iter()
        .map(|a| PreparedInput { name: a.name, tensor: a.tensor, origin: a.origin.display().to_string() })
        .collect())
}

/// The symbol of a dim that is exactly one symbol (`seq`, not `seq+1`).
fn plain_symbol(dim: &Dim) -> Option<String> {
    let Dim::Sym(poly) = dim else { return None };
    let symbols = poly.symbols();
    (symbols.len() == 1 && *dim == Dim::sym(&symbols[0])).then(|| symbols[0].to_string())
}

/// Every symbol in the required inputs' declared shapes, in first-seen
/// order without repeats.
fn input_symbols(graph: &Graph) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for v in required_inputs(graph) {
        let Some(ty) = &graph.value(v).ty else { continue };
        for dim in &ty.shape {
            if let Dim::Sym(poly) = dim {
                for s in poly.symbols() {
                    if seen.insert(s.to_string()) {
                        out.push(s.to_string());
                    }
                }
            }
        }
    }
    out
}

/// Checks `--dim` against the model: every name must be a symbol of an
/// input, and, when the inputs come from files, agree with their shapes.
fn check_dims(graph: &Graph, dims: &BTreeMap<String, u64>, files: Option<&[PreparedInput]>) -> anyhow::Result<()> {
    let symbols = input_symbols(graph);
    for name in dims.keys() {
        if !symbols.contains(name) {
            let known = if symbols.is_empty() {
                "the model's inputs have no symbolic dims".to_string()
            } else {
                format!(
                    "its symbolic dims are {}",
                    symbols.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
                )
            };
            bail!("--dim {name}: no input of the model has a dim named `{name}`; {known}");
        }
    }
    let Some(files) = files else { return Ok(()) };
    for input in files {
        let Some(v) = graph.value_by_name(&input.name) else { continue };
        let Some(ty) = &graph.value(v).ty else { continue };
        for (axis, (dim, &size)) in ty.shape.iter().zip(input.tensor.shape()).enumerate() {
            let Some(symbol) = plain_symbol(dim) else { continue };
            if let Some(&wanted) = dims.get(&symbol) {
                if wanted != size as u64 {
                    bail!(
                        "--dim {symbol}={wanted} disagrees with input `{}` from {}: its axis {axis} (`{symbol}`) is {size}",
                        input.name,
                        input.origin
                    );
                }
            }
        }
    }
    Ok(())
}

/// The concrete shape of every required input, from the declared types
/// and `--dim`; an error lists every symbol that has no size.
fn concrete_shapes(graph: &Graph, dims: &BTreeMap<String, u64>) -> anyhow::Result<Vec<(ValueId, Vec<usize>)>> {
    let lookup = |s: &str| dims.get(s).map(|&n| n as i64);
    let mut missing: Vec<(String, String)> = Vec::new();
    let mut shapes = Vec::new();
    for v in required_inputs(graph) {
        let value = graph.value(v);
        let Some(ty) = &value.ty else {
            bail!(
                "input `{}` has no declared type, so kiln cannot make a random one; pass inputs with --inputs DIR",
                value.name
            );
        };
        let mut shape = Vec::with_capacity(ty.rank());
        for (axis, dim) in ty.shape.iter().enumerate() {
            match dim.eval(&lookup) {
                Some(n) if n >= 0 => shape.push(usize::try_from(n).context("dim too large for this machine")?),
                Some(n) => {
                    bail!("input `{}` ({ty}): axis {axis} is `{dim}`, which the --dim sizes make {n}", value.name)
                }
                None => {
                    if let Dim::Sym(poly) = dim {
                        for s in poly.symbols() {
                            if !dims.contains_key(&*s) && !missing.iter().any(|(m, _)| **m == *s) {
                                missing.push((s.to_string(), format!("`{}` ({ty})", value.name)));
                            }
                        }
                    }
                }
            }
        }
        shapes.push((v, shape));
    }
    if !missing.is_empty() {
        let lines: Vec<String> =
            missing.iter().map(|(s, input)| format!("  `{s}` (used by input {input}): --dim {s}=VALUE")).collect();
        bail!(
            "symbolic dim{} without a size; random inputs need one for each:\n{}\n(or pass inputs with --inputs DIR)",
            if missing.len() == 1 { "" } else { "s" },
            lines.join("\n")
        );
    }
    Ok(shapes)
}

/// Ops through which an integer tensor's values reach their reader
/// unchanged (only moved, reshaped or converted), in slot 0.
fn passes_values_through(op: &Op) -> bool {
    matches!(
        op,
        Op::Reshape { .. }
            | Op::Slice
            | Op::Squeeze
            | Op::Unsqueeze
            | Op::Flatten { .. }
            | Op::Transpose { .. }
            | Op::Expand
            | Op::Identity
            | Op::Cast { .. }
    )
}

/// The exclusive upper bound for values of integer input `input`, when it
/// is used as indices: the size of a Gather's gathered axis, or the class
/// count of a loss it labels, with a description of that use. The smallest
/// bound wins when there are several uses.
fn index_bound(graph: &Graph, input: ValueId) -> Option<(u64, String)> {
    let mut best: Option<(u64, String)> = None;
    let mut seen = BTreeSet::new();
    let mut stack = vec![input];
    while let Some(v) = stack.pop() {
        if !seen.insert(v) {
            continue;
        }
        for &(node_id, slot) in graph.value(v).uses() {
            let node = graph.node(node_id);
            let operand_dim = |operand: usize, axis: i64| -> Option<u64> {
                let ty = graph.value(node.input(operand)?).ty.as_ref()?;
                let axis = if axis < 0 { axis + ty.rank() as i64 } else { axis };
                ty.shape.get(usize::try_from(axis).ok()?)?.fixed()
            };
            let found = match (&node.op, slot) {
                (Op::Gather { axis }, 1) => {
                    operand_dim(0, *axis).map(|n| (n, format!("Gather `{}` axis {axis}", node.name)))
                }
                (
                    Op::SoftmaxCrossEntropyLoss { .. } | Op::NegativeLogLikelihoodLoss { .. } | Op::CrossEntropy { .. },
                    1,
                ) => operand_dim(0, 1).map(|n| (n, format!("{} `{}` classes", node.op.name(), node.name))),
                (Op::LinearCrossEntropy { transpose_weight, .. }, 2) => {
                    operand_dim(1, if *transpose_weight { 0 } else { 1 })
                        .map(|n| (n, format!("LinearCrossEntropy `{}` classes", node.name)))
                }
                (op, 0) if passes_values_through(op) => {
                    stack.extend(node.outputs.iter().flatten().copied());
                    None
                }
                _ => None,
            };
            if let Some((bound, why)) = found.filter(|(n, _)| *n > 0) {
                if best.as_ref().is_none_or(|(b, _)| bound < *b) {
                    best = Some((bound, why));
                }
            }
        }
    }
    best
}

/// SplitMix64: a small, fast generator with a fixed stream per seed, so
/// that random inputs are the same on every machine and every run.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1), from the top 24 bits (all an f32 mantissa holds).
    fn symmetric_unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 * (2.0 / (1u64 << 24) as f32) - 1.0
    }

    /// Uniform-enough in [0, bound) by multiply-shift (the bias is below
    /// bound / 2^64, far under anything a benchmark can see).
    fn below(&mut self, bound: u64) -> u64 {
        ((self.next() as u128 * bound as u128) >> 64) as u64
    }
}

/// Random inputs of the declared shapes and dtypes (see the `--help` text
/// for the value ranges). Input K draws from its own stream, seeded by
/// (seed, K), so one input's values do not depend on the others'.
fn random_inputs(graph: &Graph, dims: &BTreeMap<String, u64>, seed: u64) -> anyhow::Result<Vec<PreparedInput>> {
    let shapes = concrete_shapes(graph, dims)?;
    let mut out = Vec::with_capacity(shapes.len());
    for (position, (v, shape)) in shapes.into_iter().enumerate() {
        let value = graph.value(v);
        let dtype = value.ty.as_ref().expect("concrete_shapes refuses untyped inputs").dtype;
        let len = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .with_context(|| format!("input `{}` of shape {} has too many elements", value.name, shape_text(&shape)))?;
        let mut rng = SplitMix64(seed ^ (position as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F));
        let (tensor, range) = if dtype.is_float() {
            let mut bytes = Vec::with_capacity(len * 4);
            for _ in 0..len {
                bytes.extend_from_slice(&rng.symmetric_unit().to_le_bytes());
            }
            let t = Tensor::from_raw_le(DType::F32, &shape, &bytes)
                .map_err(|e| anyhow::anyhow!("cannot make input `{}`: {e}", value.name))?;
            drop(bytes);
            (if dtype == DType::F32 { t } else { t.cast(dtype) }, "uniform [-1, 1)".to_string())
        } else if dtype == DType::Bool {
            let values: Vec<i64> = (0..len).map(|_| (rng.next() >> 63) as i64).collect();
            (Tensor::from_i64s(dtype, &shape, &values), "true/false".to_string())
        } else {
            let (bound, why) = match index_bound(graph, v) {
                Some((bound, why)) => (bound, format!(" ({why})")),
                None => (2, " (not used as indices)".to_string()),
            };
            let values: Vec<i64> = (0..len).map(|_| rng.below(bound) as i64).collect();
            (Tensor::from_i64s(dtype, &shape, &values), format!("[0, {bound}){why}"))
        };
        out.push(PreparedInput { name: value.name.clone(), tensor, origin: format!("random {range}") });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------

/// A model prepared by a backend, ready to run many times.
trait Executable {
    /// One run on the given inputs; returns the number of outputs, which
    /// the executable keeps until [`Executable::release`].
    fn run(&mut self, inputs: &[(String, Tensor)]) -> anyhow::Result<usize>;
    /// Frees what the last run returned, if the backend does not reuse it
    /// (freeing is the caller's cost, not the run's, so it is not timed).
    fn release(&mut self);
    /// The threads it actually uses.
    fn threads_used(&self) -> usize;
    /// What compiling did, in a few words, for the report.
    fn compile_summary(&self) -> &str;
    /// Cycles per kernel over the runs so far, most expensive first; empty
    /// unless compiled to profile.
    fn profile(&self) -> Vec<kiln_backend_llvm::KernelTime> {
        Vec::new()
    }

    /// What the compile cache did (`hit`, `miss`, `off`, `unavailable`);
    /// `None` for a backend without one.
    fn cache(&self) -> Option<&kiln_backend_llvm::CacheUse> {
        None
    }
}

/// The interpreter on a graph specialized to the inputs' shapes.
struct Interpreted {
    graph: Graph,
    /// The last run's outputs.
    outputs: Vec<(String, Tensor)>,
}

impl Executable for Interpreted {
    fn run(&mut self, inputs: &[(String, Tensor)]) -> anyhow::Result<usize> {
        self.outputs = kiln::ir::interp::run(&self.graph, inputs)?;
        Ok(self.outputs.len())
    }

    fn release(&mut self) {
        drop(std::hint::black_box(std::mem::take(&mut self.outputs)));
    }

    fn threads_used(&self) -> usize {
        1
    }

    fn compile_summary(&self) -> &str {
        "input types fixed to the input shapes, types re-inferred, graph verified"
    }
}

/// The interpreter's preparation: every graph input typed with the shape
/// it will be fed, so that inference fixes the symbolic dims throughout
/// and a shape error shows before the timed runs.
fn specialize(mut graph: Graph, inputs: &[(String, Tensor)]) -> anyhow::Result<Graph> {
    for (name, tensor) in inputs {
        let v = graph.value_by_name(name).with_context(|| format!("the model has no input named `{name}`"))?;
        graph.value_mut(v).ty = Some(kiln::ir::TensorType::fixed(tensor.dtype(), tensor.shape()));
    }
    kiln::ir::infer_types(&mut graph).context("type inference with the input shapes failed")?;
    kiln::ir::verify(&graph).context("the graph specialized to the input shapes does not verify")?;
    Ok(graph)
}

/// Compiles `graph` for `backend`, for the shapes of `inputs`, allowing it
/// `threads` threads. Each backend is one arm here, wrapped in an
/// [`Executable`] whose `threads_used` is what it really runs on.
fn compile(
    backend: BenchBackend,
    graph: Graph,
    inputs: &[(String, Tensor)],
    threads: usize,
    softmax: Option<SoftmaxChoice>,
    profile: bool,
    cache_dir: Option<PathBuf>,
) -> anyhow::Result<Box<dyn Executable>> {
    match backend {
        BenchBackend::Interp => Ok(Box::new(Interpreted { graph: specialize(graph, inputs)?, outputs: Vec::new() })),
        BenchBackend::Cpu => {
            let opts = kiln_backend_llvm::CompileOptions {
                threads: Some(threads),
                softmax: softmax.map_or_else(Default::default, SoftmaxChoice::algorithm),
                profile,
                cache_dir,
                ..Default::default()
            };
            let compiled = kiln_backend_llvm::compile(&graph, &opts)?;
            // Compile the specialization for these shapes now, so that the
            // timed runs only run.
            let cache = compiled.specialization_for(inputs)?.cache.clone();
            Ok(Box::new(Jitted { compiled, outputs: Vec::new(), cache }))
        }
    }
}

/// The LLVM CPU backend's JIT-compiled code, specialized to the inputs'
/// shapes, with its outputs allocated by the first run and written in
/// place by the others.
struct Jitted {
    compiled: kiln_backend_llvm::CompiledGraph,
    outputs: Vec<Tensor>,
    cache: kiln_backend_llvm::CacheUse,
}

impl Executable for Jitted {
    fn run(&mut self, inputs: &[(String, Tensor)]) -> anyhow::Result<usize> {
        self.compiled.run_into(inputs, &mut self.outputs)?;
        Ok(self.outputs.len())
    }

    fn release(&mut self) {}

    fn threads_used(&self) -> usize {
        self.compiled.threads()
    }

    fn compile_summary(&self) -> &str {
        match self.cache {
            kiln_backend_llvm::CacheUse::Hit(_) => {
                "specialized to the input shapes; code loaded from the compile cache"
            }
            kiln_backend_llvm::CacheUse::Miss(_) => {
                "lowered to LLVM IR, optimized at O3 for the host CPU, compiled for the input shapes into the cache"
            }
            _ => "lowered to LLVM IR, optimized at O3 for the host CPU, JIT-compiled for the input shapes",
        }
    }

    fn cache(&self) -> Option<&kiln_backend_llvm::CacheUse> {
        Some(&self.cache)
    }

    fn profile(&self) -> Vec<kiln_backend_llvm::KernelTime> {
        self.compiled.profile()
    }
}

/// One kernel's line of the `--profile` report.
struct KernelShare {
    ops: String,
    node: String,
    /// Fraction of all profiled cycles.
    share: f64,
    /// That fraction of the mean run time.
    ms_per_run: f64,
}

/// Each kernel's share of the profiled cycles, scaled to the mean run time
/// (cycles are counted over warmup and timed runs alike, so the shares are
/// the runs' own; the clock-rate conversion comes from the wall clock).
fn kernel_shares(times: &[kiln_backend_llvm::KernelTime], mean_ms: f64) -> Vec<KernelShare> {
    let total: u64 = times.iter().map(|t| t.cycles).sum();
    times
        .iter()
        .map(|t| {
            let share = if total == 0 { 0.0 } else { t.cycles as f64 / total as f64 };
            KernelShare { ops: t.ops.clone(), node: t.node.clone(), share, ms_per_run: share * mean_ms }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Measuring
// ---------------------------------------------------------------------------

/// A `kB` field of /proc/self/status (`VmHWM`, `VmRSS`), in bytes; `None`
/// where there is no procfs (not Linux).
fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    let kb: u64 = line[field.len() + 1..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// Resets the kernel's peak-RSS mark to the current RSS (Linux ≥ 4.0).
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Latency statistics in milliseconds.
struct Stats {
    median: f64,
    min: f64,
    max: f64,
    mean: f64,
    /// Sample standard deviation (n - 1); 0 for one run.
    stddev: f64,
}

fn stats(runs_ms: &[f64]) -> Stats {
    let mut sorted = runs_ms.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
    let mean = sorted.iter().sum::<f64>() / n as f64;
    let stddev =
        if n > 1 { (sorted.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt() } else { 0.0 };
    Stats { median, min: sorted[0], max: sorted[n - 1], mean, stddev }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs `kiln bench`.
pub fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    if args.softmax.is_some() && args.backend != BenchBackend::Cpu {
        bail!("--softmax needs --backend cpu");
    }
    if args.profile && args.backend != BenchBackend::Cpu {
        bail!("--profile needs --backend cpu");
    }
    let mut dims = BTreeMap::new();
    for (name, value) in &args.dims {
        if let Some(previous) = dims.insert(name.clone(), *value) {
            if previous != *value {
                bail!("--dim {name} is given twice, as {previous} and {value}");
            }
        }
    }
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));

    let load_start = Instant::now();
    let graph = super::load_model(&args.model)?;
    let load_time = load_start.elapsed();
    let node_count = graph.node_count();

    let prepared = match &args.inputs_dir {
        Some(dir) => {
            let files = inputs_from_dir(&graph, dir)?;
            check_dims(&graph, &dims, Some(&files))?;
            files
        }
        None => {
            check_dims(&graph, &dims, None)?;
            random_inputs(&graph, &dims, args.seed)?
        }
    };
    let input_rows: Vec<Vec<String>> = prepared
        .iter()
        .map(|p| {
            vec![p.name.clone(), format!("{}{}", p.tensor.dtype(), shape_text(p.tensor.shape())), p.origin.clone()]
        })
        .collect();
    let input_json: Vec<serde_json::Value> = prepared
        .iter()
        .map(|p| {
            serde_json::json!({
                "name": p.name,
                "dtype": p.tensor.dtype().name(),
                "shape": p.tensor.shape(),
                "source": p.origin,
            })
        })
        .collect();
    let inputs: Vec<(String, Tensor)> = prepared.into_iter().map(|p| (p.name, p.tensor)).collect();

    let compile_start = Instant::now();
    if args.no_cache && args.backend != BenchBackend::Cpu {
        bail!("--no-cache needs --backend cpu");
    }
    let cache_dir = if args.no_cache { None } else { kiln_backend_llvm::default_cache_dir() };
    let mut executable = compile(args.backend, graph, &inputs, threads, args.softmax, args.profile, cache_dir)
        .with_context(|| format!("compiling `{}` for {} failed", args.model.display(), args.backend.name()))?;
    let compile_time = compile_start.elapsed();

    let load_peak = proc_status_bytes("VmHWM");
    let peak_reset = reset_peak_rss();
    let baseline = proc_status_bytes("VmRSS");

    let failed = || format!("running `{}` with {} failed", args.model.display(), args.backend.name());
    let bar = Progress::new("warmup", "runs");
    for k in 0..args.warmup {
        executable.run(&inputs).with_context(failed)?;
        executable.release();
        bar.update(k as u64 + 1, args.warmup as u64);
    }
    bar.finish();
    let bar = Progress::new("timing", "runs");
    let mut runs_ms = Vec::with_capacity(args.iterations);
    let mut output_count = 0;
    for k in 0..args.iterations {
        let start = Instant::now();
        output_count = executable.run(&inputs).with_context(failed)?;
        let elapsed = start.elapsed();
        // Freeing the outputs is the caller's cost, not the run's.
        executable.release();
        runs_ms.push(ms(elapsed));
        bar.update(k as u64 + 1, args.iterations as u64);
    }
    bar.finish();

    let run_peak = proc_status_bytes("VmHWM");
    // Without a reset the mark also covers loading and compiling, so the
    // runs' own peak is unknown; report only the whole process's.
    let run_peak = run_peak.filter(|_| peak_reset);
    let process_peak = match (load_peak, run_peak) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b).or_else(|| proc_status_bytes("VmHWM")),
    };
    let extra = match (run_peak, baseline) {
        (Some(p), Some(b)) => Some(p.saturating_sub(b)),
        _ => None,
    };
    let s = stats(&runs_ms);
    let threads_used = executable.threads_used();
    let shares = kernel_shares(&executable.profile(), s.mean);

    if args.json {
        let round3 = |x: f64| (x * 1e3).round() / 1e3;
        let report = serde_json::json!({
            "model": args.model.display().to_string(),
            "backend": args.backend.name(),
            "threads": threads,
            "threads_used": threads_used,
            "softmax": args.softmax.map(SoftmaxChoice::name),
            "nodes": node_count,
            "warmup": args.warmup,
            "iterations": args.iterations,
            "load_ms": round3(ms(load_time)),
            "compile_ms": round3(ms(compile_time)),
            "cache": executable.cache().map(|c| c.label()),
            "median_ms": round3(s.median),
            "min_ms": round3(s.min),
            "max_ms": round3(s.max),
            "mean_ms": round3(s.mean),
            "stddev_ms": round3(s.stddev),
            "runs_ms": runs_ms.iter().map(|&x| round3(x)).collect::<Vec<_>>(),
            "peak_rss_mb": process_peak.map(|b| round3(mb(b))),
            "baseline_rss_mb": baseline.map(|b| round3(mb(b))),
            "run_peak_rss_mb": run_peak.map(|b| round3(mb(b))),
            "run_peak_extra_mb": extra.map(|b| round3(mb(b))),
            "peak_reset": peak_reset,
            "outputs": output_count,
            "seed": args.seed,
            "inputs": input_json,
        });
        let mut report = report;
        if args.profile {
            report["profile"] = shares
                .iter()
                .map(|k| {
                    serde_json::json!({
                        "ops": k.ops,
                        "node": k.node,
                        "share": (k.share * 1e4).round() / 1e4,
                        "ms_per_run": round3(k.ms_per_run),
                    })
                })
                .collect();
        }
        let text = serde_json::to_string_pretty(&report).context("cannot format the JSON report")?;
        write_stdout(&format!("{text}\n"));
        return Ok(());
    }

    let threads_text = if threads_used == threads {
        format!("{threads} thread{}", if threads == 1 { "" } else { "s" })
    } else {
        format!("{threads} thread{} allowed, {threads_used} used", if threads == 1 { "" } else { "s" })
    };
    let mut report = format!(
        "benchmarked {} ({node_count} nodes) with {}, {threads_text}\n",
        args.model.display(),
        args.backend.name()
    );
    if !input_rows.is_empty() {
        report.push_str(&format!("\ninputs ({})\n", input_rows.len()));
        report.push_str(&table(&input_rows, 2));
    }
    let f = |x: f64| format!("{x:.3} ms");
    let mut rows = vec![
        vec!["load".to_string(), f(ms(load_time)), "read, infer types, verify".to_string()],
        vec![
            "compile".to_string(),
            f(ms(compile_time)),
            match executable.cache() {
                Some(c) => format!("{} (compile cache {})", executable.compile_summary(), c.label()),
                None => executable.compile_summary().to_string(),
            },
        ],
        vec!["runs".to_string(), format!("{}", args.iterations), format!("after {} warmup", args.warmup)],
        vec!["median".to_string(), f(s.median), String::new()],
        vec!["min".to_string(), f(s.min), String::new()],
        vec!["max".to_string(), f(s.max), String::new()],
        vec!["mean".to_string(), f(s.mean), format!("stddev {}", f(s.stddev))],
    ];
    if let Some(peak) = process_peak {
        rows.push(vec!["peak RSS".to_string(), format!("{:.1} MB", mb(peak)), "whole process".to_string()]);
    }
    if let (Some(extra), Some(base)) = (extra, baseline) {
        rows.push(vec![
            "run peak".to_string(),
            format!("+{:.1} MB", mb(extra)),
            format!("above the {:.1} MB resident before the runs", mb(base)),
        ]);
    }
    report.push('\n');
    report.push_str(&table(&rows, 2));
    if args.profile {
        const SHOWN: usize = 15;
        let mut rows: Vec<Vec<String>> = shares
            .iter()
            .take(SHOWN)
            .map(|k| vec![format!("{:.1}%", k.share * 100.0), f(k.ms_per_run), k.ops.clone(), k.node.clone()])
            .collect();
        if shares.len() > SHOWN {
            let rest: f64 = shares[SHOWN..].iter().map(|k| k.share).sum();
            rows.push(vec![
                format!("{:.1}%", rest * 100.0),
                f(rest * s.mean),
                format!("{} other kernels", shares.len() - SHOWN),
                String::new(),
            ]);
        }
        report.push_str(&format!("\nprofile ({} kernels, by share of the run time)\n", shares.len()));
        report.push_str(&table(&rows, 2));
    }
    if threads_used != threads {
        report.push_str(&format!(
            "note: the {} backend is single-threaded; --threads {threads} is recorded, not used\n",
            args.backend.name()
        ));
    }
    write_stdout(&report);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dim_args() {
        assert_eq!(parse_dim_arg("seq=128"), Ok(("seq".to_string(), 128)));
        assert!(parse_dim_arg("seq").is_err());
        assert!(parse_dim_arg("=3").is_err());
        assert!(parse_dim_arg("seq=-1").is_err());
        assert!(parse_dim_arg("seq=x").is_err());
        assert!(parse_positive("0").is_err());
        assert_eq!(parse_positive("3"), Ok(3));
    }

    #[test]
    fn statistics() {
        let s = stats(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!((s.median, s.min, s.max, s.mean), (2.5, 1.0, 10.0, 4.0));
        assert!((s.stddev - (((1.0f64 + 9.0 + 4.0 + 36.0) / 3.0).sqrt())).abs() < 1e-12);
        let one = stats(&[5.0]);
        assert_eq!((one.median, one.stddev), (5.0, 0.0));
    }

    #[test]
    fn random_values_stay_in_range() {
        let mut rng = SplitMix64(7);
        for _ in 0..10_000 {
            let x = rng.symmetric_unit();
            assert!((-1.0..1.0).contains(&x), "{x}");
            assert!(rng.below(5) < 5);
        }
        assert_eq!(SplitMix64(1).next(), SplitMix64(1).next());
    }
}
