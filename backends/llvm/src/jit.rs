//! Target selection, the optimization pipeline and the JIT.

use crate::codegen::{self, Cg, ENTRY};
use crate::error::{BackendError, Result};
use crate::plan::Plan;
use crate::CompileOptions;
use inkwell::context::Context;
use inkwell::execution_engine::ExecutionEngine;
use inkwell::module::Module;
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{CodeModel, InitializationConfig, RelocMode, Target, TargetMachine};
use inkwell::OptimizationLevel;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The CPU and features code is generated for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetInfo {
    /// LLVM target triple.
    pub triple: String,
    /// CPU name (`znver4`, `skylake-avx512`, `neoverse-v1`, ...).
    pub cpu: String,
    /// LLVM feature string (`+avx2,+fma,...`); empty when the CPU name
    /// implies the features.
    pub features: String,
    /// f32 lanes of one SIMD register, used by the explicit-vector kernels.
    pub f32_lanes: u32,
}

/// Picks the target: the host CPU and its features, unless `opts` names a
/// CPU (then its default features, plus `opts.target_features`).
pub(crate) fn target_info(opts: &CompileOptions) -> Result<TargetInfo> {
    Target::initialize_native(&InitializationConfig::default()).map_err(BackendError::Target)?;
    let triple = TargetMachine::get_default_triple();
    let (cpu, mut features) = match &opts.target_cpu {
        Some(cpu) => {
            check_cpu_name(&triple.as_str().to_string_lossy(), cpu)?;
            (cpu.clone(), String::new())
        }
        None => (TargetMachine::get_host_cpu_name().to_string(), TargetMachine::get_host_cpu_features().to_string()),
    };
    if let Some(extra) = &opts.target_features {
        if !features.is_empty() {
            features.push(',');
        }
        features.push_str(extra);
    }
    let target = Target::from_triple(&triple).map_err(|e| BackendError::Target(format!("{}: {e}", triple)))?;
    let machine = target
        .create_target_machine(
            &triple,
            &cpu,
            &features,
            OptimizationLevel::Aggressive,
            RelocMode::Default,
            CodeModel::JITDefault,
        )
        .ok_or_else(|| BackendError::Target(format!("LLVM cannot create a target machine for {} / `{cpu}`", triple)))?;
    let has = |f: &str| {
        let fs = machine.get_feature_string().to_string_lossy().into_owned();
        fs.split(',').any(|x| x == format!("+{f}"))
    };
    let name = machine.get_cpu().to_string();
    let f32_lanes = if has("avx512f") || cpu_implies(&name, "avx512") {
        16
    } else if has("avx") || has("avx2") || cpu_implies(&name, "avx") {
        8
    } else {
        4
    };
    Ok(TargetInfo { triple: triple.as_str().to_string_lossy().into_owned(), cpu, features, f32_lanes })
}

extern "C" {
    /// cpp/cpu_names.cpp: 1 when `cpu` is a processor of `triple`'s target,
    /// 0 when not, -1 when the target is unknown; the target's processor
    /// names (comma-separated, truncated to `cap`) into `names`.
    fn kiln_llvm_cpu_check(
        triple: *const std::ffi::c_char,
        cpu: *const std::ffi::c_char,
        names: *mut std::ffi::c_char,
        cap: usize,
    ) -> i32;
    /// cpp/cpu_names.cpp: the features of `cpu` plus `features`
    /// (comma-separated, truncated to `cap`) into `out`; -1 when the target
    /// is unknown.
    fn kiln_llvm_cpu_features(
        triple: *const std::ffi::c_char,
        cpu: *const std::ffi::c_char,
        features: *const std::ffi::c_char,
        out: *mut std::ffi::c_char,
        cap: usize,
    ) -> i32;
}

/// The LLVM features code for `target` may use: the CPU's own and the
/// explicit ones (LLVM's names: `avx2`, `avx512f`, ...), sorted.
pub(crate) fn enabled_features(target: &TargetInfo) -> Result<Vec<String>> {
    let c = |s: &str| std::ffi::CString::new(s).map_err(|_| BackendError::Target(format!("`{s}` contains a NUL byte")));
    let (triple, cpu, features) = (c(&target.triple)?, c(&target.cpu)?, c(&target.features)?);
    let mut out = vec![0u8; 1 << 16];
    // SAFETY: NUL-terminated strings and a buffer of the given capacity;
    // the shim writes at most `cap` bytes, NUL-terminated.
    let status = unsafe {
        kiln_llvm_cpu_features(triple.as_ptr(), cpu.as_ptr(), features.as_ptr(), out.as_mut_ptr().cast(), out.len())
    };
    if status != 0 {
        return Err(BackendError::Target(format!("LLVM has no target registered for {}", target.triple)));
    }
    let list = std::ffi::CStr::from_bytes_until_nul(&out).map(|c| c.to_string_lossy().into_owned()).unwrap_or_default();
    let mut names: Vec<String> = list.split(',').filter(|n| !n.is_empty()).map(str::to_string).collect();
    names.sort();
    Ok(names)
}

/// Rejects a CPU name LLVM does not know for the triple. LLVM itself would
/// only warn on stderr and generate code for a generic CPU.
fn check_cpu_name(triple: &str, cpu: &str) -> Result<()> {
    let unknown = || BackendError::Target(format!("unknown CPU `{cpu}` for {triple}"));
    let c_triple = std::ffi::CString::new(triple).map_err(|_| unknown())?;
    let c_cpu = std::ffi::CString::new(cpu).map_err(|_| unknown())?;
    let mut names = vec![0u8; 1 << 14];
    // SAFETY: NUL-terminated strings and a buffer of the given capacity;
    // the shim writes at most `cap` bytes, NUL-terminated.
    let known =
        unsafe { kiln_llvm_cpu_check(c_triple.as_ptr(), c_cpu.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    match known {
        1 => Ok(()),
        0 => {
            let list = std::ffi::CStr::from_bytes_until_nul(&names)
                .map(|c| c.to_string_lossy().into_owned())
                .unwrap_or_default();
            let all: Vec<&str> = list.split(',').filter(|n| !n.is_empty()).collect();
            // Names sharing the first letters are the likely intent; else a few well-known ones.
            let stem: String = cpu.chars().take(3).collect::<String>().to_ascii_lowercase();
            let mut similar: Vec<&str> =
                all.iter().copied().filter(|n| !stem.is_empty() && n.starts_with(&stem)).collect();
            if similar.is_empty() {
                similar = all
                    .iter()
                    .copied()
                    .filter(|n| {
                        ["x86-64-v3", "x86-64-v4", "skylake-avx512", "znver4", "neoverse-v1", "apple-m1", "generic"]
                            .contains(n)
                    })
                    .collect();
            }
            similar.truncate(12);
            Err(BackendError::Target(format!(
                "unknown CPU `{cpu}`: LLVM has no such processor for {triple} ({} known{}{})",
                all.len(),
                if similar.is_empty() { "" } else { ", e.g. " },
                similar.join(", ")
            )))
        }
        _ => Err(BackendError::Target(format!("LLVM has no target registered for {triple}"))),
    }
}

/// Rough check for a named CPU without an explicit feature string.
fn cpu_implies(cpu: &str, what: &str) -> bool {
    let avx512 = [
        "skylake-avx512",
        "cascadelake",
        "cooperlake",
        "icelake",
        "tigerlake",
        "sapphirerapids",
        "znver4",
        "znver5",
        "graniterapids",
        "emeraldrapids",
    ];
    let avx = [
        "sandybridge",
        "ivybridge",
        "haswell",
        "broadwell",
        "skylake",
        "alderlake",
        "raptorlake",
        "znver1",
        "znver2",
        "znver3",
        "x86-64-v3",
    ];
    match what {
        "avx512" => avx512.iter().any(|c| cpu.starts_with(c)) || cpu == "x86-64-v4",
        _ => avx.iter().any(|c| cpu.starts_with(c)) || cpu_implies(cpu, "avx512"),
    }
}

/// Creates the LLVM target machine for `target`. The JIT uses the default
/// relocation model; a shared library (ahead of time, or the compile cache)
/// needs position-independent code.
pub(crate) fn target_machine(target: &TargetInfo, reloc: RelocMode, code_model: CodeModel) -> Result<TargetMachine> {
    let triple = TargetMachine::get_default_triple();
    let llvm_target = Target::from_triple(&triple).map_err(|e| BackendError::Target(e.to_string()))?;
    llvm_target
        .create_target_machine(&triple, &target.cpu, &target.features, OptimizationLevel::Aggressive, reloc, code_model)
        .ok_or_else(|| BackendError::Target(format!("LLVM cannot create a target machine for `{}`", target.cpu)))
}

/// A plan's module, generated and optimized, before the last step (JIT,
/// object or assembly file, or IR text). Field order matters: the module
/// is dropped before the context it lives in.
pub(crate) struct Generated {
    /// The module: `kiln_entry` and one internal function per kernel.
    pub module: Module<'static>,
    /// The machine it was optimized for.
    pub machine: TargetMachine,
    /// LLVM IR as generated, before optimization.
    pub ir_unoptimized: String,
    /// LLVM IR after the `default<O3>` pipeline (equal to the above without it).
    pub ir_optimized: String,
    context: Box<Context>,
}

impl Generated {
    /// The context the module lives in, for adding to it (constants, tables).
    pub(crate) fn context(&self) -> &'static Context {
        // SAFETY: the context is boxed (its address is stable) and lives as
        // long as `self`; callers only build values inside `self.module`,
        // which `self` drops before the context.
        unsafe { &*(self.context.as_ref() as *const Context) }
    }
}

/// Code generation and optimization, shared by the JIT and ahead-of-time
/// compilation: emits the plan's module, verifies it and runs `default<O3>`
/// (when `opts.optimize`) for a machine with relocation model `reloc`.
pub(crate) fn generate(plan: &Plan, target: &TargetInfo, opts: &CompileOptions, reloc: RelocMode) -> Result<Generated> {
    generate_module(&plan.graph.name, target, opts, reloc, &|cg| codegen::emit_plan(cg, plan))
}

/// Like [`generate`], for any module `emit` writes.
pub(crate) fn generate_module(
    name: &str,
    target: &TargetInfo,
    opts: &CompileOptions,
    reloc: RelocMode,
    emit: &dyn Fn(&Cg<'static>) -> Result<()>,
) -> Result<Generated> {
    CODEGEN_RUNS.fetch_add(1, Ordering::Relaxed);
    let context = Box::new(Context::create());
    // SAFETY: the context is boxed (its address is stable) and is dropped
    // after everything that borrows it: `Generated` declares the module
    // before the context, and `Cg` (with its builder) is dropped below.
    let ctx: &'static Context = unsafe { &*(context.as_ref() as *const Context) };
    let mut cg = Cg::new(ctx, name, &target.cpu, &target.features, target.f32_lanes, opts.softmax);
    cg.matmul = opts.matmul;
    cg.stream_min_bytes = opts.stream_min_bytes;
    cg.avx512dq = target.f32_lanes == 16 && enabled_features(target)?.iter().any(|f| f == "avx512dq");
    // Kernels pick target-specific instructions (fences) from the triple.
    cg.module.set_triple(&inkwell::targets::TargetTriple::create(&target.triple));
    emit(&cg)?;
    let ir_unoptimized = cg.module.print_to_string().to_string();
    cg.module.verify().map_err(|e| BackendError::Llvm(format!("generated module is invalid: {e}")))?;

    let code_model = if reloc == RelocMode::PIC { CodeModel::Default } else { CodeModel::JITDefault };
    let machine = target_machine(target, reloc, code_model)?;
    cg.module.set_triple(&machine.get_triple());
    cg.module.set_data_layout(&machine.get_target_data().get_data_layout());
    if opts.optimize {
        cg.module
            .run_passes("default<O3>", &machine, PassBuilderOptions::create())
            .map_err(|e| BackendError::Llvm(format!("optimization failed: {e}")))?;
    }
    let ir_optimized = cg.module.print_to_string().to_string();
    let Cg { module, .. } = cg;
    Ok(Generated { module, machine, ir_unoptimized, ir_optimized, context })
}

/// How many times [`generate`] ran in this process: tests use it to show
/// that a compile-cache hit skips code generation.
static CODEGEN_RUNS: AtomicUsize = AtomicUsize::new(0);

/// The number of modules this process has generated (every JIT
/// compilation and every library written counts one; a compile-cache hit
/// counts none).
pub fn codegen_runs() -> usize {
    CODEGEN_RUNS.load(Ordering::Relaxed)
}

/// What keeps a compiled entry's machine code alive: the JIT engine (and
/// the context its module lives in), or a shared library loaded from the
/// compile cache.
enum Backing {
    /// Field order matters: the engine, which owns the module and its
    /// machine code, is dropped before the context.
    Jit { _engine: ExecutionEngine<'static>, _context: Box<Context> },
    /// Unloaded (`dlclose`) when dropped, after the last call.
    Library { _library: crate::cache::Library },
}

/// A compiled plan's entry point, JIT-compiled or loaded from a library.
pub(crate) struct Jitted {
    entry: unsafe extern "C" fn(*const *mut u8) -> i32,
    /// LLVM IR as generated, before optimization (empty when loaded from
    /// the cache).
    pub ir_unoptimized: String,
    /// LLVM IR after the `default<O3>` pipeline (empty when loaded from
    /// the cache).
    pub ir_optimized: String,
    _backing: Backing,
}

impl Jitted {
    /// Calls the compiled entry with the buffer array.
    ///
    /// # Safety
    /// `buffers` must hold one valid pointer per buffer of the plan, each
    /// to at least as many bytes as the plan's types say, and last a
    /// pointer to the run configuration (an `i32` thread count).
    /// Returns 0, or 1 + the index of the step whose data check failed.
    pub(crate) unsafe fn call(&self, buffers: &[*mut u8]) -> i32 {
        unsafe { (self.entry)(buffers.as_ptr()) }
    }

    /// The same entry, with the IR it was generated from (for a library
    /// just written to the cache).
    pub(crate) fn with_ir(self, ir_unoptimized: String, ir_optimized: String) -> Jitted {
        Jitted { ir_unoptimized, ir_optimized, ..self }
    }

    /// An entry found in a library loaded from the compile cache.
    pub(crate) fn from_library(
        library: crate::cache::Library,
        entry: unsafe extern "C" fn(*const *mut u8) -> i32,
    ) -> Jitted {
        Jitted {
            entry,
            ir_unoptimized: String::new(),
            ir_optimized: String::new(),
            _backing: Backing::Library { _library: library },
        }
    }
}

/// Generates, optimizes and JIT-compiles a plan.
pub(crate) fn compile_plan(plan: &Plan, target: &TargetInfo, opts: &CompileOptions) -> Result<Jitted> {
    jit(generate(plan, target, opts, RelocMode::Default)?)
}

/// Generates a module with `emit` (which must define `kiln_entry`), then
/// optimizes and JIT-compiles it: the path of stand-alone kernels such as
/// the LinearCrossEntropy backward.
pub(crate) fn compile_module(
    name: &str,
    target: &TargetInfo,
    opts: &CompileOptions,
    emit: &dyn Fn(&Cg<'static>) -> Result<()>,
) -> Result<Jitted> {
    jit(generate_module(name, target, opts, RelocMode::Default, emit)?)
}

/// The JIT as the last step after [`generate`].
pub(crate) fn jit(generated: Generated) -> Result<Jitted> {
    let Generated { module, machine, ir_unoptimized, ir_optimized, context } = generated;
    drop(machine);
    let engine = module
        .create_jit_execution_engine(OptimizationLevel::Aggressive)
        .map_err(|e| BackendError::Llvm(format!("cannot create the JIT: {e}")))?;
    // The libomp entry points resolve to the runtime this crate links, not
    // to whatever a symbol search of the process finds (or misses: the
    // linker drops a library nothing references).
    for name in codegen::parallel::OMP_SYMBOLS {
        if let Some(f) = module.get_function(name) {
            let address = omp::address(name)
                .ok_or_else(|| BackendError::Llvm(format!("no address for the libomp function `{name}`")))?;
            engine.add_global_mapping(&f, address);
        }
    }
    let address = engine
        .get_function_address(ENTRY)
        .map_err(|e| BackendError::Llvm(format!("the JIT did not produce `{ENTRY}`: {e}")))?;
    // SAFETY: `kiln_entry` is generated with exactly this signature.
    let entry: unsafe extern "C" fn(*const *mut u8) -> i32 = unsafe { std::mem::transmute(address) };
    Ok(Jitted { entry, ir_unoptimized, ir_optimized, _backing: Backing::Jit { _engine: engine, _context: context } })
}

/// The libomp functions generated code calls, linked by `build.rs`.
mod omp {
    use std::ffi::c_void;

    extern "C" {
        fn __kmpc_fork_call(loc: *mut c_void, argc: i32, microtask: *mut c_void, ...);
        fn __kmpc_global_thread_num(loc: *mut c_void) -> i32;
        fn __kmpc_push_num_threads(loc: *mut c_void, gtid: i32, num_threads: i32);
        fn omp_get_thread_num() -> i32;
        fn omp_get_num_threads() -> i32;
        fn omp_get_max_threads() -> i32;
    }

    /// The address of one of [`crate::codegen::parallel::OMP_SYMBOLS`].
    pub(super) fn address(name: &str) -> Option<usize> {
        Some(match name {
            "__kmpc_fork_call" => __kmpc_fork_call as *const () as usize,
            "__kmpc_global_thread_num" => __kmpc_global_thread_num as *const () as usize,
            "__kmpc_push_num_threads" => __kmpc_push_num_threads as *const () as usize,
            "omp_get_thread_num" => omp_get_thread_num as *const () as usize,
            "omp_get_num_threads" => omp_get_num_threads as *const () as usize,
            "omp_get_max_threads" => omp_get_max_threads as *const () as usize,
            _ => return None,
        })
    }
}
