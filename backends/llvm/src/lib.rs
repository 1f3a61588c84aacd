//! Kiln's CPU backend: lowers a kiln graph to LLVM IR, optimizes it for
//! the host CPU (or `--target-cpu`) and runs it through LLVM's JIT.
//!
//! ```no_run
//! # fn demo(graph: &kiln_ir::Graph, inputs: &[(String, kiln_ir::Tensor)]) -> kiln_backend_llvm::Result<()> {
//! let compiled = kiln_backend_llvm::compile(graph, &kiln_backend_llvm::CompileOptions::default())?;
//! let outputs = compiled.run(inputs)?;
//! # Ok(()) }
//! ```
//!
//! # Design
//!
//! - **Specialization per shape.** Code is generated for concrete shapes:
//!   [`compile`] checks that every op can be lowered, and each distinct set
//!   of input shapes seen by [`CompiledGraph::run`] is planned, generated
//!   and JIT-compiled once, then cached. Static graphs are compiled by
//!   [`compile`] itself. With every shape a compile-time constant, loop
//!   bounds and strides are constants and LLVM optimizes each kernel for its
//!   exact size.
//! - **Compile-time folding.** `Shape`, `Size`, `Constant` and every node
//!   whose inputs are all known are evaluated once by kiln's interpreter
//!   while specializing, so shape computations cost nothing at run time.
//!   Graph inputs whose values decide a shape (a Reshape or Expand shape,
//!   Slice/Pad/Tile/TopK/OneHot/Trilu/CumSum parameters, Range bounds,
//!   ConstantOfShape's shape, a NonZero input fed straight in, Dropout's
//!   ratio and mode, also through shape arithmetic) are specialized by
//!   value like shapes, so `Range`, `ConstantOfShape` and `NonZero` of them
//!   fold, and an inference-mode Dropout's mask is a constant.
//! - **Kernels.** Chains of elementwise ops (with numpy broadcasting, Cast,
//!   Where, Clip and the activations) fuse into one loop nest without
//!   intermediate buffers; views (`Reshape`, `Flatten`, `Squeeze`,
//!   `Unsqueeze`, `Identity`, inference `Dropout`) cost nothing; MatMul/Gemm,
//!   Softmax/LogSoftmax, Reduce*, Transpose, the cross-entropy losses,
//!   kiln's fused LinearCrossEntropy, RotaryEmbedding, ONNX `Attention` and
//!   `LinearAttention`, ArgMax/ArgMin and TopK, the indexing ops (Gather*,
//!   ScatterND, Pad, Tile, Trilu, OneHot, CumSum) and the quantization ops
//!   have kernels of their own. Integer Div/Mod and every kernel that reads
//!   indices from data check them: a zero divisor or an index outside its
//!   axis is an error naming the node, never a crash or a wrong answer.
//!   i4/u4 tensors are held one value per byte, as kiln's tensors hold
//!   them. See [`lowered_ops`] for the list.
//! - **LinearCrossEntropy.** The LM head and its loss walk the vocabulary
//!   in tiles: a register-blocked GEMM (explicit vectors, `MR × 2` vector
//!   accumulators, packed head panels) writes one tile of logits for a
//!   block of rows, which an online log-sum-exp folds away, so the `N × V`
//!   logits never exist; threads split the rows. The backward
//!   ([`linear_cross_entropy_grad`], single-threaded)
//!   recomputes the tiles and accumulates `dH`, `dW` and `db` with the same
//!   GEMM, skipping tiles whose softmax gradient is below a threshold (Cut
//!   Cross-Entropy).
//! - **Flash attention.** `Attention` (4-D or 3-D, causal, float or bool
//!   masks, grouped-query heads, softcap, past/present key-value caches)
//!   walks K/V in tiles per block of query rows with an online softmax
//!   (running max and sum per row, the output accumulator rescaled as the
//!   max grows), so the score matrix is never formed: its scratch is a few
//!   tiles, whatever the sequence length. Also `nonpad_kv_seqlen`, the
//!   scores output and f16/bf16 (computed in f32).
//! - **Memory.** One generated function takes an array of buffer pointers:
//!   the inputs, the outputs, the constants and one scratch arena in which
//!   a liveness-based planner reuses ranges between intermediates.
//! - **Vectorization.** Kernels are written as unit-stride counted loops
//!   with `noalias` buffers, exp/erf/tanh as branch-free polynomials, and
//!   reassociable reductions, and LLVM's `default<O3>` pipeline vectorizes
//!   them for the target machine (host CPU name and features by default).
//!   The two-pass softmax keeps per-lane state and is written with explicit
//!   vector types of the target's width.
//!
//! - **Threads.** Kernels with independent outer items (softmax rows, ...)
//!   split them across the threads of LLVM's OpenMP runtime (libomp); the
//!   count is read at run time ([`CompileOptions::threads`],
//!   [`CompiledGraph::set_threads`]), so one compiled graph runs on any
//!   number of threads. Small kernels run on the calling thread.
//! - **Run-time overheads.** Each specialization keeps its scratch arena
//!   across runs, and [`CompiledGraph::run_into`] writes into output
//!   tensors the caller reuses, so repeated runs allocate nothing.
//! - **Ahead of time, and the compile cache.** [`aot`] writes the same
//!   code as a self-contained shared library with a C ABI (`kiln
//!   compile`). With [`CompileOptions::cache_dir`] each specialization's
//!   code is also kept on disk as a library keyed by a hash of the plan,
//!   the target and the options, so a later process loads it instead of
//!   generating code again ([`Specialization::cache`]).
//!
//! An op without a lowering is a [`BackendError::Unsupported`] naming the
//! node and op; a run-time input of the wrong dtype or shape is a
//! [`BackendError::Value`].

#![warn(missing_docs)]

pub mod aot;
mod cache;
mod codegen;
pub mod error;
mod jit;
pub mod lce_grad;
mod plan;
pub mod profile;
mod reuse_logits;

pub use cache::{default_dir as default_cache_dir, CacheUse};
pub use error::{BackendError, Result};
pub use jit::{codegen_runs, TargetInfo};
pub use lce_grad::{linear_cross_entropy_grad, linear_cross_entropy_grad_with};
pub use profile::KernelTime;

use kiln_ir::dim::Dim;
use kiln_ir::dtype::DType;
use kiln_ir::graph::Graph;
use kiln_ir::tensor::Tensor;
use plan::{Shaped, Slot, ALIGN};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

/// Which softmax kernel Softmax and LogSoftmax use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SoftmaxAlgorithm {
    /// Two reads of each row (Dukhan & Ablavatski, "The Two-Pass Softmax
    /// Algorithm"): the first computes the log-sum-exp with per-lane
    /// (mantissa, exponent) accumulators, scaled by `vscalefps` on
    /// AVX-512, the second writes the result. Used for f32; f64 falls back
    /// to the three-pass kernel. The default: its one pass that reads the
    /// row from memory does all the reduction work while the row streams
    /// in (prefetched), which beats the other kernels in and out of cache.
    #[default]
    TwoPass,
    /// The classic baseline: a pass for the maximum, one for the sum of
    /// exponentials, one to write the result.
    ThreePass,
    /// Two passes and one exponential per element: the first walks each
    /// row in L1-sized chunks, writing `exp(x - M)` against the running
    /// maximum `M` and keeping a running, rescaled sum (online normalizer);
    /// the second rescales each chunk. Two passes over memory like
    /// [`SoftmaxAlgorithm::TwoPass`] and half its exponentials, but its
    /// first pass over memory only finds chunk maxima. LogSoftmax (whose
    /// second pass has no exponential) takes the two-pass first pass;
    /// f64 takes the three-pass one.
    Online,
}

/// Which kernel MatMul and Gemm use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MatMulKernel {
    /// The packed, register-blocked GEMM (GotoBLAS/BLIS design): B and A
    /// packed into panels per cache block, an `MR × NR` tile of C kept in
    /// vector registers by an explicit-vector FMA microkernel. Matrix-vector
    /// products keep the simple loops.
    #[default]
    Packed,
    /// The baseline: i-k-j loops blocked over j and k, vectorized by LLVM
    /// (f32 and f64; f16/bf16 always take the packed kernel).
    Blocked,
}

/// Options for [`compile`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileOptions {
    /// LLVM CPU name to generate code for (`skylake-avx512`, `znver3`,
    /// `x86-64-v3`, ...); the host CPU and its features when `None`. Code
    /// for a CPU the host cannot execute faults when run.
    pub target_cpu: Option<String>,
    /// Extra LLVM target features (`+avx2,-avx512f`), added to the CPU's.
    pub target_features: Option<String>,
    /// The softmax kernel.
    pub softmax: SoftmaxAlgorithm,
    /// The MatMul/Gemm kernel.
    pub matmul: MatMulKernel,
    /// Kernels that write each output element once (the softmax kernels)
    /// use non-temporal (streaming) stores for contiguous f32 outputs of
    /// at least this many bytes, which by then have left the cache before
    /// their reader comes. Default 64 MiB; 0 streams every such output
    /// (tests use it to reach the streaming code on small tensors).
    pub stream_min_bytes: usize,
    /// Run LLVM's `default<O3>` pipeline (on by default; off only to look
    /// at or test unoptimized code).
    pub optimize: bool,
    /// Threads the kernels may use; `None` (the default) is every core
    /// the process may run on. Only the starting value: the count is read
    /// at run time, see [`CompiledGraph::set_threads`].
    pub threads: Option<usize>,
    /// Count the cycles each kernel takes, for [`CompiledGraph::profile`]
    /// (off by default; see [`profile`]).
    pub profile: bool,
    /// The compile cache's directory (see [`default_cache_dir`]); `None`
    /// (the default) JIT-compiles every specialization.
    pub cache_dir: Option<std::path::PathBuf>,
}

/// The default of [`CompileOptions::stream_min_bytes`]: 64 MiB, past the
/// caches a core can count on, so a normal store would first read each
/// output line from memory and evict input the kernel still needs.
pub const DEFAULT_STREAM_MIN_BYTES: usize = 64 << 20;

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            target_cpu: None,
            target_features: None,
            softmax: SoftmaxAlgorithm::TwoPass,
            matmul: MatMulKernel::Packed,
            stream_min_bytes: DEFAULT_STREAM_MIN_BYTES,
            optimize: true,
            threads: None,
            profile: false,
            cache_dir: None,
        }
    }
}

/// The ONNX and kiln op types this backend lowers (ops it only folds at
/// compile time, like `Shape` and `Constant`, are not listed). Some are
/// lowered only for some dtypes; the error says so.
pub fn lowered_ops() -> Vec<&'static str> {
    use kiln_ir::op::{BinaryOp, LossReduction, Op, UnaryOp, VariadicOp};
    let mut ops: Vec<&'static str> = Vec::new();
    ops.extend(UnaryOp::ALL.iter().map(|u| u.name()));
    ops.extend(BinaryOp::ALL.iter().map(|b| b.name()));
    ops.extend(VariadicOp::ALL.iter().map(|v| v.name()));
    ops.extend(kiln_ir::op::ReduceKind::ALL.iter().map(|k| k.name()));
    for op in [
        Op::Clip,
        Op::Where,
        Op::Expand,
        Op::Concat { axis: 0 },
        Op::Gather { axis: 0 },
        Op::Split { axis: 0, num_outputs: None },
        Op::Slice,
        Op::LayerNormalization { axis: -1, epsilon: 1e-5, stash_type: DType::F32 },
        Op::RMSNormalization { axis: -1, epsilon: 1e-5, stash_type: DType::F32 },
        Op::MatMul,
        Op::MatMulInteger,
        Op::QLinearMatMul,
        Op::Squeeze,
        Op::Unsqueeze,
        Op::Identity,
        Op::Softmax { axis: -1 },
        Op::LogSoftmax { axis: -1 },
        Op::Transpose { perm: None },
        Op::Reshape { allowzero: false },
        Op::Flatten { axis: 1 },
        Op::Dropout { seed: None },
        Op::Cast { to: DType::F32, saturate: true },
        Op::Mod { fmod: false },
        Op::ArgReduce { max: true, axis: 0, keepdims: true, select_last_index: false },
        Op::ArgReduce { max: false, axis: 0, keepdims: true, select_last_index: false },
        Op::TopK { axis: -1, largest: true, sorted: true },
        Op::CumSum { exclusive: false, reverse: false },
        Op::GatherElements { axis: 0 },
        Op::GatherND { batch_dims: 0 },
        Op::ScatterND { reduction: String::new() },
        Op::Trilu { upper: true },
        Op::Pad { mode: String::new() },
        Op::Tile,
        Op::OneHot { axis: -1 },
        Op::QuantizeLinear { axis: 1, block_size: 0, saturate: true, output_dtype: None },
        Op::DequantizeLinear { axis: 1, block_size: 0, output_dtype: None },
        Op::DynamicQuantizeLinear,
        Op::LinearAttention(kiln_ir::op::LinearAttentionAttrs {
            q_num_heads: 1,
            kv_num_heads: 1,
            scale: None,
            update_rule: kiln_ir::op::LinearUpdateRule::Linear,
            chunk_size: 64,
        }),
        Op::CastLike { saturate: true },
        Op::Gelu { approximate: kiln_ir::op::GeluApproximation::None },
        Op::LeakyRelu { alpha: 0.01 },
        Op::Elu { alpha: 1.0 },
        Op::HardSigmoid { alpha: 0.2, beta: 0.5 },
        Op::IsInf { detect_negative: true, detect_positive: true },
        Op::Attention(kiln_ir::op::AttentionAttrs {
            is_causal: false,
            q_num_heads: None,
            kv_num_heads: None,
            qk_matmul_output_mode: 0,
            scale: None,
            softcap: 0.0,
            softmax_precision: None,
        }),
        Op::RotaryEmbedding { interleaved: false, num_heads: None, rotary_embedding_dim: None },
        Op::Gemm(kiln_ir::op::GemmAttrs { alpha: 1.0, beta: 1.0, trans_a: false, trans_b: false }),
        Op::SoftmaxCrossEntropyLoss { reduction: LossReduction::Mean, ignore_index: None },
        Op::NegativeLogLikelihoodLoss { reduction: LossReduction::Mean, ignore_index: None },
        Op::CrossEntropy { reduction: LossReduction::Mean, ignore_index: None, label_smoothing: 0.0, z_loss: 0.0 },
        Op::LinearCrossEntropy {
            reduction: LossReduction::Mean,
            ignore_index: None,
            label_smoothing: 0.0,
            z_loss: 0.0,
            transpose_weight: true,
            chunk_size: kiln_ir::op::DEFAULT_CHUNK_SIZE,
        },
    ] {
        ops.push(op.name());
    }
    ops.sort_unstable();
    ops
}

/// What one specialization compiled to, for tests and diagnostics.
#[derive(Clone, Debug)]
pub struct Specialization {
    /// Kernel functions in execution order (names `k<step>_<what>`).
    pub kernels: Vec<String>,
    /// Bytes of the scratch arena shared by all intermediates.
    pub arena_bytes: usize,
    /// Sum of the sizes of all intermediates, which the arena would need
    /// without reuse.
    pub intermediate_bytes: usize,
    /// The generated LLVM IR before optimization.
    pub ir_unoptimized: String,
    /// The LLVM IR after `default<O3>` (equal to the above without it).
    pub ir_optimized: String,
    /// Whether the code came from the compile cache. On a hit no code was
    /// generated, so `kernels` and the IR texts are empty.
    pub cache: CacheUse,
}

struct Compiled {
    plan: plan::Plan,
    jit: jit::Jitted,
    info: Rc<Specialization>,
    /// The scratch arena, kept between runs so that a run does not fault
    /// in fresh pages (taken out while a run uses it).
    arena: RefCell<Option<Vec<u8>>>,
    /// The plan's constants, each at an [`ALIGN`]-byte boundary (see
    /// [`ConstBlock`]).
    consts: ConstBlock,
    /// Per step, cycles summed over the profiled runs (empty unless the
    /// plan is profiled), and the number of those runs.
    cycles: RefCell<Vec<u64>>,
    profiled_runs: Cell<u64>,
}

/// The constants of a plan in one block, each starting at an [`ALIGN`]-byte
/// boundary. Kernels load constant weights (the GEMM's B packed at compile
/// time above all) by whole vectors; from a tensor's own allocation, which
/// the allocator aligns to 16 bytes, every 64-byte load would straddle two
/// cache lines. The tensors are moved in, not copied, so the weights are
/// held once.
struct ConstBlock {
    /// `ALIGN` spare bytes in front: the block starts at the first aligned
    /// address (the vector is never resized, so it does not move).
    bytes: Vec<u8>,
    offsets: Vec<usize>,
}

impl ConstBlock {
    /// Moves the bytes of `consts` into a new block, leaving empty tensors.
    fn take(consts: &mut [Tensor]) -> ConstBlock {
        // The kernels' view of a tensor: its elements in memory order, as
        // the run passed them before (the plan made every constant
        // standard-layout).
        fn memory(t: &Tensor) -> &[u8] {
            kiln_ir::for_each_tensor!(t, a => {
                let s = a.as_slice_memory_order().expect("plan constants are contiguous");
                // SAFETY: any initialized elements are readable as bytes.
                unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), std::mem::size_of_val(s)) }
            })
        }
        let mut offsets = Vec::with_capacity(consts.len());
        let mut total = 0usize;
        for t in consts.iter() {
            offsets.push(total);
            total += memory(t).len().next_multiple_of(ALIGN);
        }
        let mut bytes = vec![0u8; total + ALIGN];
        let start = bytes.as_ptr().align_offset(ALIGN);
        for (t, &offset) in consts.iter_mut().zip(&offsets) {
            let t = std::mem::replace(t, Tensor::zeros(t.dtype(), &[0]));
            let raw = memory(&t);
            bytes[start + offset..start + offset + raw.len()].copy_from_slice(raw);
        }
        ConstBlock { bytes, offsets }
    }

    /// Pointers to the constants, in plan order.
    fn pointers(&self) -> impl Iterator<Item = *mut u8> + '_ {
        let base = self.bytes.as_ptr();
        let start = base.align_offset(ALIGN);
        // SAFETY: `start + offset` is inside the block (see `take`).
        self.offsets.iter().map(move |&o| unsafe { base.add(start + o) as *mut u8 })
    }
}

/// A graph ready to run on the CPU: its lowering checked, and its code
/// generated per set of input shapes (cached). Not `Send`: LLVM's context
/// stays on the thread that made it.
pub struct CompiledGraph {
    graph: Graph,
    opts: CompileOptions,
    target: TargetInfo,
    /// Per graph input: read only as a shape or axes, so specialized by value.
    shape_inputs: Vec<bool>,
    cache: RefCell<BTreeMap<Vec<InputKey>, Rc<Compiled>>>,
    /// Threads the kernels may use, at least 1.
    threads: Cell<usize>,
}

/// Every core the process may run on (its affinity mask and cgroup quota
/// allowing), like onnxruntime's default intra-op thread count.
pub fn available_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// What a specialization depends on, per graph input: dtype, shape, and the
/// value (raw little-endian bytes) of a shape input.
type InputKey = (DType, Vec<usize>, Option<Vec<u8>>);

/// Checks that `graph` (typed, e.g. by [`kiln_ir::infer_types`]) can be
/// lowered and picks the target; compiles it right away when every graph
/// input has a static shape.
pub fn compile(graph: &Graph, opts: &CompileOptions) -> Result<CompiledGraph> {
    let mut graph = graph.clone();
    reuse_logits::reuse_materialized_logits(&mut graph)?;
    let graph = &graph;
    plan::check_lowerable(graph)?;
    let target = jit::target_info(opts)?;
    let shape_inputs = plan::shape_inputs(graph);
    let compiled = CompiledGraph {
        graph: graph.clone(),
        opts: opts.clone(),
        target,
        shape_inputs: shape_inputs.clone(),
        cache: RefCell::new(BTreeMap::new()),
        threads: Cell::new(opts.threads.unwrap_or_else(available_threads).max(1)),
    };
    let static_inputs: Option<Vec<InputKey>> = graph
        .inputs()
        .iter()
        .zip(&shape_inputs)
        .map(|(&v, &by_value)| {
            if by_value {
                return None;
            }
            graph.value(v).ty.as_ref().and_then(|t| t.fixed_shape().map(|s| (t.dtype, s, None)))
        })
        .collect();
    if let Some(key) = static_inputs {
        compiled.specialization(key)?;
    }
    Ok(compiled)
}

impl CompiledGraph {
    /// The graph this backend compiles: the caller's graph after the
    /// backend's own graph-level simplifications (see `reuse_logits`: a
    /// `LinearCrossEntropy` whose logits the graph also returns reads
    /// them instead of recomputing them).
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The target code is generated for.
    pub fn target(&self) -> &TargetInfo {
        &self.target
    }

    /// Runs the graph on named inputs and returns the graph outputs in
    /// order, named as the graph names them. Inputs with an initializer
    /// may be omitted. Unknown or repeated names, missing inputs, and
    /// tensors whose dtype, rank or dims contradict the declared input
    /// types (a symbolic dim must take one size across inputs) are
    /// [`BackendError::Value`] errors.
    pub fn run(&self, inputs: &[(String, Tensor)]) -> Result<Vec<(String, Tensor)>> {
        let mut outputs = Vec::new();
        self.run_into(inputs, &mut outputs)?;
        Ok(self.output_names().into_iter().zip(outputs).collect())
    }

    /// Runs the graph like [`CompiledGraph::run`], writing the outputs, in
    /// graph order, into `outputs`. A tensor already there with the output's
    /// dtype and shape, contiguous, is written in place (copied first only
    /// if another tensor shares its storage); any other entry is replaced
    /// by a new tensor, and the vector takes the number of outputs. Passing
    /// the same vector to every run makes repeated runs allocation-free,
    /// like onnxruntime's IOBinding.
    pub fn run_into(&self, inputs: &[(String, Tensor)], outputs: &mut Vec<Tensor>) -> Result<()> {
        let ordered = self.bind_inputs(inputs)?;
        let compiled = self.specialization(self.key(&ordered))?;
        let runtime: Vec<Tensor> =
            ordered.into_iter().zip(&self.shape_inputs).filter(|(_, &by_value)| !by_value).map(|(t, _)| t).collect();
        execute(&compiled, &runtime, outputs, self.threads.get())
    }

    /// The names of the graph outputs, in order.
    pub fn output_names(&self) -> Vec<String> {
        self.graph.outputs().iter().map(|&o| self.graph.value(o).name.clone()).collect()
    }

    /// Sets the threads the kernels may use from the next run on (`None`:
    /// every core the process may run on; 0 counts as 1). Nothing is
    /// recompiled: generated code reads the count at run time.
    pub fn set_threads(&self, threads: Option<usize>) {
        self.threads.set(threads.unwrap_or_else(available_threads).max(1));
    }

    /// The threads the kernels may use.
    pub fn threads(&self) -> usize {
        self.threads.get()
    }

    /// Where the profiled runs spent their cycles, per kernel of every
    /// specialization run so far, most expensive first (ties in step
    /// order). Empty unless compiled with [`CompileOptions::profile`].
    pub fn profile(&self) -> Vec<KernelTime> {
        let mut times = Vec::new();
        for compiled in self.cache.borrow().values() {
            let runs = compiled.profiled_runs.get();
            let cycles = compiled.cycles.borrow();
            if runs == 0 || cycles.is_empty() {
                continue;
            }
            for (step, ((ops, node), &c)) in
                profile::step_labels(&compiled.plan).into_iter().zip(cycles.iter()).enumerate()
            {
                times.push(KernelTime { step, ops, node, cycles: c, runs });
            }
        }
        times.sort_by(|a, b| b.cycles.cmp(&a.cycles).then(a.step.cmp(&b.step)));
        times
    }

    /// What the graph compiles to for these inputs (compiling it if needed).
    pub fn specialization_for(&self, inputs: &[(String, Tensor)]) -> Result<Rc<Specialization>> {
        let ordered = self.bind_inputs(inputs)?;
        Ok(self.specialization(self.key(&ordered))?.info.clone())
    }

    fn key(&self, ordered: &[Tensor]) -> Vec<InputKey> {
        ordered
            .iter()
            .zip(&self.shape_inputs)
            .map(|(t, &by_value)| (t.dtype(), t.shape().to_vec(), by_value.then(|| t.to_raw_le())))
            .collect()
    }

    fn specialization(&self, key: Vec<InputKey>) -> Result<Rc<Compiled>> {
        if let Some(c) = self.cache.borrow().get(&key) {
            return Ok(c.clone());
        }
        let types: Vec<Shaped> = key.iter().map(|(d, s, _)| Shaped { dtype: *d, shape: s.clone() }).collect();
        let values: Vec<Option<Tensor>> = key
            .iter()
            .map(|(d, s, v)| {
                v.as_ref()
                    .map(|v| Tensor::from_raw_le(*d, s, v).map_err(|m| BackendError::Llvm(format!("shape input: {m}"))))
                    .transpose()
            })
            .collect::<Result<_>>()?;
        let specialized = plan::specialize(&self.graph, &types, &values)?;
        let mut plan = plan::plan(specialized, self.opts.matmul)?;
        plan.profile = self.opts.profile;
        for t in &mut plan.consts {
            *t = standard_layout(t);
        }
        codegen::gemm::prepack_plan(&mut plan, self.target.f32_lanes, self.opts.matmul);
        let (jit, cache) = cache::compile(&plan, &self.target, &self.opts)?;
        let intermediate_bytes = plan
            .loc
            .iter()
            .enumerate()
            .filter(|(i, l)| {
                l.is_some_and(|l| l.slot == Slot::Arena)
                    && plan.graph.value(kiln_ir::graph::ValueId(*i as u32)).producer().is_some()
            })
            .map(|(i, _)| plan.types[i].as_ref().map_or(0, Shaped::bytes))
            .sum();
        let kernels = kernel_names(&jit.ir_unoptimized);
        let info = Rc::new(Specialization {
            kernels,
            arena_bytes: plan.arena_bytes,
            intermediate_bytes,
            ir_unoptimized: jit.ir_unoptimized.clone(),
            ir_optimized: jit.ir_optimized.clone(),
            cache,
        });
        let cycles = RefCell::new(if plan.profile { vec![0; plan.steps.len()] } else { Vec::new() });
        let consts = ConstBlock::take(&mut plan.consts);
        let compiled = Rc::new(Compiled {
            plan,
            jit,
            info,
            arena: RefCell::new(None),
            consts,
            cycles,
            profiled_runs: Cell::new(0),
        });
        self.cache.borrow_mut().insert(key, compiled.clone());
        Ok(compiled)
    }

    /// The tensors for every graph input, in graph order, after checking
    /// them against the declared types.
    fn bind_inputs(&self, inputs: &[(String, Tensor)]) -> Result<Vec<Tensor>> {
        let graph = &self.graph;
        let mut given: Vec<Option<Tensor>> = vec![None; graph.inputs().len()];
        for (name, t) in inputs {
            let pos = graph
                .inputs()
                .iter()
                .position(|&v| graph.value(v).name == *name)
                .ok_or_else(|| BackendError::value(name, "is not an input of the graph"))?;
            if given[pos].replace(t.clone()).is_some() {
                return Err(BackendError::value(name, "is given more than once"));
            }
        }
        let mut bindings: BTreeMap<String, i64> = BTreeMap::new();
        let mut out = Vec::with_capacity(given.len());
        for (slot, &v) in graph.inputs().iter().enumerate() {
            let val = graph.value(v);
            let t = match given[slot].take().or_else(|| val.initializer.clone()) {
                Some(t) => t,
                None => return Err(BackendError::value(&val.name, "graph input is missing")),
            };
            if let Some(ty) = &val.ty {
                if t.dtype() != ty.dtype || t.shape().len() != ty.rank() {
                    return Err(BackendError::value(
                        &val.name,
                        format!("got {}{:?}, but {ty} is declared", t.dtype(), t.shape()),
                    ));
                }
                for (i, (d, &n)) in ty.shape.iter().zip(t.shape()).enumerate() {
                    if let Dim::Sym(p) = d {
                        if let [name] = p.symbols().as_slice() {
                            if *d == Dim::sym(name) {
                                let bound = *bindings.entry(name.to_string()).or_insert(n as i64);
                                if bound != n as i64 {
                                    return Err(BackendError::value(
                                        &val.name,
                                        format!("dim {i} is {n}, but `{name}` is {bound} in another input"),
                                    ));
                                }
                            }
                        }
                    }
                }
            }
            out.push(standard_layout(&t));
        }
        // Dims like `seq+1` are checked once every symbol is bound.
        for (&v, t) in graph.inputs().iter().zip(&out) {
            if let Some(ty) = &graph.value(v).ty {
                let lookup = |s: &str| bindings.get(s).copied();
                for (i, (d, &n)) in ty.shape.iter().zip(t.shape()).enumerate() {
                    if let Some(want) = d.eval(&lookup) {
                        if want != n as i64 {
                            return Err(BackendError::value(
                                &graph.value(v).name,
                                format!("shape {:?} differs from the declared {ty} at dim {i}", t.shape()),
                            ));
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The kernel functions of a module, in definition order: the functions
/// the entry calls, not a parallel kernel's body and microtask.
fn kernel_names(ir: &str) -> Vec<String> {
    ir.lines()
        .filter(|l| l.starts_with("define internal"))
        .filter_map(|l| l.split('@').nth(1).and_then(|r| r.split('(').next()).map(str::to_string))
        .filter(|name| ![".body", ".omp", ".prologue"].iter().any(|part| name.ends_with(part)))
        .collect()
}

/// `t` with its elements contiguous in row-major order (a copy only when
/// they are not).
fn standard_layout(t: &Tensor) -> Tensor {
    if kiln_ir::for_each_tensor!(t, a => a.is_standard_layout()) {
        return t.clone();
    }
    // Raw bytes come out in logical (row-major) order.
    Tensor::from_raw_le(t.dtype(), t.shape(), &t.to_raw_le())
        .expect("a tensor's own raw bytes match its dtype and shape")
}

/// A zero tensor from a zeroed allocation (`calloc`): the kernels overwrite
/// every element, so filling the memory element by element first would
/// only cost time.
fn zeroed(dtype: DType, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    kiln_ir::tensor_of_dtype!(dtype, T => ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(shape), vec![T::default(); n])
        .expect("the element count matches the shape")
        .into_shared())
}

/// Runs a compiled specialization on inputs in graph order, into
/// `outputs` (reused where they fit, see [`CompiledGraph::run_into`]), on
/// at most `threads` threads.
fn execute(c: &Compiled, inputs: &[Tensor], outputs: &mut Vec<Tensor>, threads: usize) -> Result<()> {
    let plan = &c.plan;
    let graph = &plan.graph;
    outputs.truncate(graph.outputs().len());
    for (i, &o) in graph.outputs().iter().enumerate() {
        let ty = plan.ty(o);
        let fits = outputs.get(i).is_some_and(|t| {
            t.dtype() == ty.dtype
                && t.shape() == ty.shape.as_slice()
                && kiln_ir::for_each_tensor!(t, a => a.is_standard_layout())
        });
        if !fits {
            let fresh = zeroed(ty.dtype, &ty.shape);
            match outputs.get_mut(i) {
                Some(slot) => *slot = fresh,
                None => outputs.push(fresh),
            }
        }
    }
    // Taken out of its cell for the run; a nested run (which a single
    // thread cannot start) would find it empty and allocate its own.
    let mut arena = c.arena.borrow_mut().take().unwrap_or_else(|| vec![0u8; plan.arena_bytes + ALIGN]);
    let arena_ptr = {
        let p = arena.as_mut_ptr();
        // SAFETY: the offset is below ALIGN and the vector has ALIGN spare bytes.
        unsafe { p.add(p.align_offset(ALIGN)) }
    };
    let mut config: i32 = i32::try_from(threads).unwrap_or(i32::MAX);
    let mut buffers: Vec<*mut u8> = Vec::with_capacity(codegen::buffer_count(plan));
    for t in inputs {
        buffers.push(kiln_ir::for_each_tensor!(t, a => a.as_ptr() as *mut u8));
    }
    for t in outputs.iter_mut() {
        buffers.push(kiln_ir::for_each_tensor!(t, a => a.as_mut_ptr().cast::<u8>()));
    }
    buffers.extend(c.consts.pointers());
    buffers.push(arena_ptr);
    buffers.push((&mut config as *mut i32).cast::<u8>());
    let mut cycles = c.cycles.borrow_mut();
    if plan.profile {
        buffers.push(cycles.as_mut_ptr().cast::<u8>());
    }
    // SAFETY: every buffer is contiguous and as large as the plan's types
    // (inputs were checked against the specialization's shapes, outputs
    // were checked or allocated from the plan, the arena is the plan's
    // size), then come the run configuration and, when profiled, one u64
    // counter per step; kernels write only outputs and the arena, the entry
    // only the counters.
    let status = unsafe { c.jit.call(&buffers) };
    drop(cycles);
    // A failed run's steps before the failure stay counted, but the run
    // does not: per-run figures are for the runs that completed.
    if plan.profile && status == 0 {
        c.profiled_runs.set(c.profiled_runs.get() + 1);
    }
    *c.arena.borrow_mut() = Some(arena);
    if status != 0 {
        return Err(aot::step_failure(plan, status as usize - 1));
    }
    Ok(())
}
