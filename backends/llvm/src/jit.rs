//! Target selection, the optimization pipeline and the JIT.

use crate::codegen::{self, Cg, ENTRY};
use crate::error::{BackendError, Result};
use crate::plan::Plan;
use crate::CompileOptions;
use inkwell::context::Context;
use inkwell::execution_engine::ExecutionEngine;
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{CodeModel, InitializationConfig, RelocMode, Target, TargetMachine};
use inkwell::OptimizationLevel;

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
        Some(cpu) => (cpu.clone(), String::new()),
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

/// A JIT-compiled plan. Field order matters: the engine (which owns the
/// module and its machine code) is dropped before the context it lives in.
pub(crate) struct Jitted {
    entry: unsafe extern "C" fn(*const *mut u8) -> i32,
    /// LLVM IR as generated, before optimization.
    pub ir_unoptimized: String,
    /// LLVM IR after the `default<O3>` pipeline.
    pub ir_optimized: String,
    _engine: ExecutionEngine<'static>,
    _context: Box<Context>,
}

impl Jitted {
    /// Calls the compiled entry with the buffer array.
    ///
    /// # Safety
    /// `buffers` must hold one valid pointer per buffer of the plan, each
    /// to at least as many bytes as the plan's types say.
    /// Returns 0, or 1 + the index of the step whose data check failed.
    pub(crate) unsafe fn call(&self, buffers: &[*mut u8]) -> i32 {
        unsafe { (self.entry)(buffers.as_ptr()) }
    }
}

/// Generates, optimizes and JIT-compiles a plan.
pub(crate) fn compile_plan(plan: &Plan, target: &TargetInfo, opts: &CompileOptions) -> Result<Jitted> {
    let context = Box::new(Context::create());
    // SAFETY: the context is boxed (its address is stable) and is dropped
    // after everything that borrows it: `Jitted` declares the engine, which
    // owns the module, before the context.
    let ctx: &'static Context = unsafe { &*(context.as_ref() as *const Context) };
    let mut cg = Cg::new(ctx, &plan.graph.name, &target.cpu, &target.features, target.f32_lanes, opts.softmax);
    cg.matmul = opts.matmul;
    codegen::emit_plan(&cg, plan)?;
    let ir_unoptimized = cg.module.print_to_string().to_string();
    cg.module.verify().map_err(|e| BackendError::Llvm(format!("generated module is invalid: {e}")))?;

    let triple = TargetMachine::get_default_triple();
    let llvm_target = Target::from_triple(&triple).map_err(|e| BackendError::Target(e.to_string()))?;
    let machine = llvm_target
        .create_target_machine(
            &triple,
            &target.cpu,
            &target.features,
            OptimizationLevel::Aggressive,
            RelocMode::Default,
            CodeModel::JITDefault,
        )
        .ok_or_else(|| BackendError::Target(format!("LLVM cannot create a target machine for `{}`", target.cpu)))?;
    cg.module.set_triple(&triple);
    cg.module.set_data_layout(&machine.get_target_data().get_data_layout());
    if opts.optimize {
        cg.module
            .run_passes("default<O3>", &machine, PassBuilderOptions::create())
            .map_err(|e| BackendError::Llvm(format!("optimization failed: {e}")))?;
    }
    let ir_optimized = cg.module.print_to_string().to_string();
    let engine = cg
        .module
        .create_jit_execution_engine(OptimizationLevel::Aggressive)
        .map_err(|e| BackendError::Llvm(format!("cannot create the JIT: {e}")))?;
    // The libomp entry points resolve to the runtime this crate links, not
    // to whatever a symbol search of the process finds (or misses: the
    // linker drops a library nothing references).
    for name in codegen::parallel::OMP_SYMBOLS {
        if let Some(f) = cg.module.get_function(name) {
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
    drop(cg);
    Ok(Jitted { entry, ir_unoptimized, ir_optimized, _engine: engine, _context: context })
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
