//! LLVM IR generation for a [`Plan`].
//!
//! The module has one entry function, `kiln_entry(ptr %buffers)`, that takes
//! an array of buffer pointers (graph inputs, graph outputs, constants, then
//! the scratch arena, in that order) and calls one internal function per
//! kernel. Kernel functions take one `noalias` pointer per buffer they touch;
//! the memory plan guarantees that a kernel's output never overlaps its
//! inputs, so the promise holds, and it is what lets LLVM vectorize without
//! run-time overlap checks. Every shape is a compile-time constant, so loop
//! bounds and strides are constants too.
//!
//! Loops are plain counted loops over `i64` induction variables, written so
//! LLVM's loop vectorizer can widen them for the target CPU: unit-stride
//! innermost loops, reductions through `reassoc`-flagged adds, and math
//! functions (exp, erf, tanh) as branch-free polynomials rather than libm
//! calls. The softmax kernels that keep per-lane state (the two-pass
//! algorithm) are written with explicit vector types instead.
//!
//! # Buffer table
//!
//! `kiln_entry(ptr %buffers)` reads `buffer_count` pointers: the graph
//! inputs, the graph outputs, the constants, the scratch arena, and last
//! the **run configuration**, a pointer to one `int32_t`: the number of
//! threads kernels may use. A value of 0 or less means libomp's default
//! (`omp_get_max_threads()`, i.e. `OMP_NUM_THREADS` or all cores).
//!
//! # Parallel kernels
//!
//! A kernel whose outer loop has independent items (rows, blocks of an
//! elementwise loop, heads) is made parallel by changing only how that loop
//! is emitted (see `parallel.rs` for the machinery):
//!
//! ```ignore
//! // Before: a serial kernel.
//! let f = cg.kernel_fn(&format!("k{step}_softmax"), 2);
//! let (yp, xp) = (cg.param(f, 0), cg.param(f, 1));
//! cg.for_n(f, rows, &mut |r| row_kernel(r))?;
//! cg.b.build_return(None)?;
//! Ok((f, locs))
//!
//! // After: the same body over this thread's rows, plus a launcher.
//! let k = cg.parallel_kernel_fn(&format!("k{step}_softmax"), 2, rows, row_len);
//! let f = k.f;
//! let (yp, xp) = (cg.param(f, 0), cg.param(f, 1));
//! cg.for_items(&k, &mut |r| row_kernel(r))?;
//! cg.kernel_return(f)?;
//! Ok((cg.finish_parallel(k)?, locs))
//! ```
//!
//! `parallel_kernel_fn(name, params, items, work_per_item)` takes the
//! number of outer items and a rough cost of one (element operations): a
//! kernel with less than [`parallel::MIN_PARALLEL_WORK`] in all, or one
//! item, never forks. `checked_parallel_kernel_fn` is the variant for
//! kernels that fail on bad data. Items are split statically into
//! contiguous ranges, one per thread, so a kernel must write disjoint
//! memory per item and must not depend on the order items run in; results
//! equal the serial ones bitwise as long as each item's arithmetic does not
//! depend on the split (reductions across items must not be parallelized
//! this way).

mod attention;
mod elementwise;
pub(crate) mod gemm;
mod indexing;
mod kernels;
mod lce;
mod linear_attention;
mod loss;
mod math;
pub(crate) mod parallel;
mod quant;
mod rotary;
mod select;

use crate::error::{BackendError, Result};
use crate::plan::{Loc, Plan, Slot, Step};
use crate::{MatMulKernel, SoftmaxAlgorithm};
use inkwell::attributes::{Attribute, AttributeLoc};
use inkwell::basic_block::BasicBlock;
use inkwell::builder::Builder;
use inkwell::context::Context;
use inkwell::module::{Linkage, Module};
use inkwell::types::{BasicType, BasicTypeEnum, FloatType, IntType};
use inkwell::values::{BasicMetadataValueEnum, BasicValue, BasicValueEnum, FunctionValue, IntValue, PointerValue};
use inkwell::AddressSpace;
use kiln_ir::dtype::DType;
use std::cell::{Cell, RefCell};

pub(crate) use lce::{
    backward_buffer_count, backward_scratch, emit_backward_module, forward_scratch_bytes, problem_of, Problem,
    ProblemError,
};
pub(crate) use linear_attention::{geometry as linear_attention_geometry, scratch_bytes as linear_attention_scratch};

/// The name of the generated entry function.
pub(crate) const ENTRY: &str = "kiln_entry";

/// Code-generation state for one module.
pub(crate) struct Cg<'ctx> {
    pub ctx: &'ctx Context,
    pub module: Module<'ctx>,
    pub b: Builder<'ctx>,
    /// `target-cpu` and `target-features` for every function.
    cpu: String,
    features: String,
    /// f32 lanes of the explicit-vector kernels.
    pub lanes: u32,
    pub softmax: SoftmaxAlgorithm,
    /// The MatMul/Gemm kernel (set after construction; packed by default).
    pub matmul: MatMulKernel,
    /// See [`crate::CompileOptions::stream_min_bytes`].
    pub stream_min_bytes: usize,
    /// Whether the target has AVX512DQ (`vreduceps`), set after
    /// construction like `matmul`.
    pub avx512dq: bool,
    loops: Cell<usize>,
    /// While emitting a checked fused kernel: an `i1` slot that integer
    /// division sets when a divisor is zero (the kernel then fails).
    pub fault: Cell<Option<PointerValue<'ctx>>>,
    /// The launchers of parallel kernels, which the entry passes the
    /// thread count to.
    /// (launcher, whether it may fork).
    launchers: RefCell<Vec<(FunctionValue<'ctx>, bool)>>,
}

/// A value in a register with the kiln dtype it stands for. Floats narrower
/// than f32 are computed in f32; booleans are `i1`.
pub(crate) type Val<'ctx> = (BasicValueEnum<'ctx>, DType);

impl<'ctx> Cg<'ctx> {
    pub(crate) fn new(
        ctx: &'ctx Context,
        name: &str,
        cpu: &str,
        features: &str,
        lanes: u32,
        softmax: SoftmaxAlgorithm,
    ) -> Cg<'ctx> {
        Cg {
            ctx,
            module: ctx.create_module(name),
            b: ctx.create_builder(),
            cpu: cpu.to_string(),
            features: features.to_string(),
            lanes,
            softmax,
            matmul: MatMulKernel::default(),
            stream_min_bytes: crate::DEFAULT_STREAM_MIN_BYTES,
            avx512dq: false,
            loops: Cell::new(0),
            fault: Cell::new(None),
            launchers: RefCell::new(Vec::new()),
        }
    }

    // ---------------------------------------------------------------- types

    pub(crate) fn i64t(&self) -> IntType<'ctx> {
        self.ctx.i64_type()
    }

    pub(crate) fn f32t(&self) -> FloatType<'ctx> {
        self.ctx.f32_type()
    }

    pub(crate) fn i64c(&self, v: i64) -> IntValue<'ctx> {
        self.i64t().const_int(v as u64, true)
    }

    /// The in-memory type of an element.
    pub(crate) fn storage_type(&self, dtype: DType) -> Result<BasicTypeEnum<'ctx>, String> {
        Ok(match dtype {
            DType::F32 => self.ctx.f32_type().into(),
            DType::F64 => self.ctx.f64_type().into(),
            DType::F16 => self.ctx.f16_type().into(),
            // bf16 is converted by hand (see `bf16_to_f32`): LLVM lowers
            // float <-> bfloat to libcalls the JIT cannot always resolve.
            DType::BF16 => self.ctx.i16_type().into(),
            // 4-bit values are held unpacked, one per byte, as kiln's
            // tensors hold them.
            DType::I8 | DType::U8 | DType::Bool | DType::I4 | DType::U4 => self.ctx.i8_type().into(),
            DType::I16 => self.ctx.i16_type().into(),
            DType::I32 => self.ctx.i32_type().into(),
            DType::I64 => self.ctx.i64_type().into(),
        })
    }

    /// The in-register type a dtype is computed in.
    pub(crate) fn compute_type(&self, dtype: DType) -> Result<BasicTypeEnum<'ctx>, String> {
        Ok(match dtype {
            DType::F16 | DType::BF16 => self.ctx.f32_type().into(),
            DType::Bool => self.ctx.bool_type().into(),
            d => self.storage_type(d)?,
        })
    }

    // ---------------------------------------------------------------- functions

    fn add_target_attrs(&self, f: FunctionValue<'ctx>) {
        f.add_attribute(AttributeLoc::Function, self.ctx.create_string_attribute("target-cpu", &self.cpu));
        if !self.features.is_empty() {
            f.add_attribute(
                AttributeLoc::Function,
                self.ctx.create_string_attribute("target-features", &self.features),
            );
        }
        f.add_attribute(AttributeLoc::Function, self.enum_attr("nounwind"));
    }

    fn enum_attr(&self, name: &str) -> Attribute {
        self.ctx.create_enum_attribute(Attribute::get_named_enum_kind_id(name), 0)
    }

    /// An internal kernel function taking `params` non-aliasing pointers,
    /// with the builder positioned in its entry block.
    pub(crate) fn kernel_fn(&self, name: &str, params: usize) -> FunctionValue<'ctx> {
        self.new_kernel(name, params, 0, false)
    }

    /// Like [`Cg::kernel_fn`], for a kernel that can fail on its data: it
    /// returns an `i32`, 0 on success (see [`Cg::kernel_return`]).
    pub(crate) fn checked_kernel_fn(&self, name: &str, params: usize) -> FunctionValue<'ctx> {
        self.new_kernel(name, params, 0, true)
    }

    /// The function every kernel kind starts from: `params` non-aliasing
    /// pointers, then `trailing_i64` integer parameters (a parallel body's
    /// item range), returning `i32` when `checked`, else nothing; internal,
    /// with the target's attributes, and the builder in its entry block.
    pub(crate) fn new_kernel(
        &self,
        name: &str,
        params: usize,
        trailing_i64: usize,
        checked: bool,
    ) -> FunctionValue<'ctx> {
        let ptr = self.ctx.ptr_type(AddressSpace::default());
        let mut args: Vec<inkwell::types::BasicMetadataTypeEnum> = (0..params).map(|_| ptr.into()).collect();
        args.extend((0..trailing_i64).map(|_| inkwell::types::BasicMetadataTypeEnum::from(self.i64t())));
        let ty = if checked {
            self.ctx.i32_type().fn_type(&args, false)
        } else {
            self.ctx.void_type().fn_type(&args, false)
        };
        let f = self.module.add_function(name, ty, Some(Linkage::Internal));
        self.add_target_attrs(f);
        for i in 0..params as u32 {
            f.add_attribute(AttributeLoc::Param(i), self.enum_attr("noalias"));
        }
        let entry = self.ctx.append_basic_block(f, "entry");
        self.b.position_at_end(entry);
        f
    }

    /// Returns from a kernel: `ret void`, or `ret i32 0` from a checked one.
    pub(crate) fn kernel_return(&self, f: FunctionValue<'ctx>) -> Result<()> {
        if f.get_type().get_return_type().is_some() {
            self.b.build_return(Some(&self.ctx.i32_type().const_zero()))?;
        } else {
            self.b.build_return(None)?;
        }
        Ok(())
    }

    pub(crate) fn param(&self, f: FunctionValue<'ctx>, i: u32) -> PointerValue<'ctx> {
        f.get_nth_param(i).expect("kernel functions are created with one parameter per buffer").into_pointer_value()
    }

    /// A stack slot in the function's entry block (so `mem2reg` promotes it).
    pub(crate) fn entry_alloca(
        &self,
        f: FunctionValue<'ctx>,
        ty: BasicTypeEnum<'ctx>,
        name: &str,
    ) -> Result<PointerValue<'ctx>> {
        let entry = f.get_first_basic_block().expect("kernel functions have an entry block");
        let here = self.b.get_insert_block();
        match entry.get_first_instruction() {
            Some(first) => self.b.position_before(&first),
            None => self.b.position_at_end(entry),
        }
        let slot = self.b.build_alloca(ty, name)?;
        if let Some(block) = here {
            self.b.position_at_end(block);
        }
        Ok(slot)
    }

    // ---------------------------------------------------------------- loops

    /// Emits `if cond { then() } else { otherwise() }` in blocks named
    /// `name`, `name.else` and `name.done`, and leaves the builder in the
    /// last. Both arms must fall through (end in no terminator of their
    /// own).
    pub(crate) fn if_else(
        &self,
        f: FunctionValue<'ctx>,
        cond: IntValue<'ctx>,
        name: &str,
        then: &mut dyn FnMut() -> Result<()>,
        otherwise: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        let yes = self.ctx.append_basic_block(f, name);
        let no = self.ctx.append_basic_block(f, &format!("{name}.else"));
        let done = self.ctx.append_basic_block(f, &format!("{name}.done"));
        self.b.build_conditional_branch(cond, yes, no)?;
        self.b.position_at_end(yes);
        then()?;
        self.b.build_unconditional_branch(done)?;
        self.b.position_at_end(no);
        otherwise()?;
        self.b.build_unconditional_branch(done)?;
        self.b.position_at_end(done);
        Ok(())
    }

    /// Emits `if cond { then() }` (an [`Cg::if_else`] with nothing in the
    /// else block, which LLVM removes); `then` must fall through.
    pub(crate) fn if_then(
        &self,
        f: FunctionValue<'ctx>,
        cond: IntValue<'ctx>,
        name: &str,
        then: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        self.if_else(f, cond, name, then, &mut || Ok(()))
    }

    /// Emits `for i in 0..n { body(i) }`. Constant trip counts of zero emit
    /// nothing; other constant counts need no entry test. The loop's first
    /// block is named `loopN`, which tests use to count loops.
    pub(crate) fn for_range(
        &self,
        f: FunctionValue<'ctx>,
        n: IntValue<'ctx>,
        body: &mut dyn FnMut(IntValue<'ctx>) -> Result<()>,
    ) -> Result<()> {
        let constant = n.get_zero_extended_constant();
        if constant == Some(0) {
            return Ok(());
        }
        let k = self.loops.get();
        self.loops.set(k + 1);
        let pre = self.current_block();
        let head = self.ctx.append_basic_block(f, &format!("loop{k}"));
        let exit = self.ctx.append_basic_block(f, &format!("loop{k}.exit"));
        if constant.is_none() {
            let nonempty = self.b.build_int_compare(inkwell::IntPredicate::SGT, n, self.i64c(0), "nonempty")?;
            self.b.build_conditional_branch(nonempty, head, exit)?;
        } else {
            self.b.build_unconditional_branch(head)?;
        }
        self.b.position_at_end(head);
        let phi = self.b.build_phi(self.i64t(), "i")?;
        phi.add_incoming(&[(&self.i64c(0), pre)]);
        let i = phi.as_basic_value().into_int_value();
        body(i)?;
        let next = self.b.build_int_nsw_add(i, self.i64c(1), "i.next")?;
        let latch = self.current_block();
        phi.add_incoming(&[(&next, latch)]);
        let more = self.b.build_int_compare(inkwell::IntPredicate::SLT, next, n, "more")?;
        self.b.build_conditional_branch(more, head, exit)?;
        self.b.position_at_end(exit);
        Ok(())
    }

    /// `for i in 0..n` with a compile-time count.
    pub(crate) fn for_n(
        &self,
        f: FunctionValue<'ctx>,
        n: usize,
        body: &mut dyn FnMut(IntValue<'ctx>) -> Result<()>,
    ) -> Result<()> {
        self.for_range(f, self.i64c(n as i64), body)
    }

    pub(crate) fn current_block(&self) -> BasicBlock<'ctx> {
        self.b.get_insert_block().expect("the builder is always positioned while emitting")
    }

    // ---------------------------------------------------------------- memory

    /// `i * k + c` folded at compile time where possible.
    pub(crate) fn affine(&self, i: IntValue<'ctx>, k: i64, c: IntValue<'ctx>) -> Result<IntValue<'ctx>> {
        let scaled = match k {
            0 => return Ok(c),
            1 => i,
            _ => self.b.build_int_nsw_mul(i, self.i64c(k), "scaled")?,
        };
        if c.get_zero_extended_constant() == Some(0) {
            return Ok(scaled);
        }
        Ok(self.b.build_int_nsw_add(scaled, c, "idx")?)
    }

    pub(crate) fn add(&self, a: IntValue<'ctx>, b: IntValue<'ctx>) -> Result<IntValue<'ctx>> {
        if b.get_zero_extended_constant() == Some(0) {
            return Ok(a);
        }
        if a.get_zero_extended_constant() == Some(0) {
            return Ok(b);
        }
        Ok(self.b.build_int_nsw_add(a, b, "sum")?)
    }

    pub(crate) fn mul(&self, a: IntValue<'ctx>, k: i64) -> Result<IntValue<'ctx>> {
        self.affine(a, k, self.i64c(0))
    }

    /// Address of element `idx` of a `dtype` buffer.
    pub(crate) fn elem_ptr(
        &self,
        base: PointerValue<'ctx>,
        dtype: DType,
        idx: IntValue<'ctx>,
    ) -> Result<PointerValue<'ctx>> {
        let ty = self.storage_type(dtype).map_err(BackendError::Llvm)?;
        // In bounds: every index a kernel computes lies inside its buffer.
        Ok(unsafe { self.b.build_in_bounds_gep(ty, base, &[idx], "p")? })
    }

    /// Loads element `idx` and widens it to its compute type.
    pub(crate) fn load(
        &self,
        base: PointerValue<'ctx>,
        dtype: DType,
        idx: IntValue<'ctx>,
    ) -> Result<BasicValueEnum<'ctx>> {
        let p = self.elem_ptr(base, dtype, idx)?;
        let ty = self.storage_type(dtype).map_err(BackendError::Llvm)?;
        let raw = self.b.build_load(ty, p, "v")?;
        Ok(match dtype {
            DType::F16 => self.b.build_float_ext(raw.into_float_value(), self.f32t(), "wide")?.into(),
            DType::BF16 => self.bf16_to_f32(raw.into_int_value())?,
            DType::Bool => self
                .b
                .build_int_compare(
                    inkwell::IntPredicate::NE,
                    raw.into_int_value(),
                    self.ctx.i8_type().const_zero(),
                    "b",
                )?
                .into(),
            _ => raw,
        })
    }

    /// Narrows a computed value to its storage type and stores it.
    pub(crate) fn store(
        &self,
        base: PointerValue<'ctx>,
        dtype: DType,
        idx: IntValue<'ctx>,
        v: BasicValueEnum<'ctx>,
    ) -> Result<()> {
        let p = self.elem_ptr(base, dtype, idx)?;
        let stored: BasicValueEnum = match dtype {
            DType::F16 => self.b.build_float_trunc(v.into_float_value(), self.ctx.f16_type(), "narrow")?.into(),
            DType::BF16 => self.f32_to_bf16(v.into_float_value())?.into(),
            DType::Bool => self.b.build_int_z_extend(v.into_int_value(), self.ctx.i8_type(), "byte")?.into(),
            _ => v,
        };
        self.b.build_store(p, stored)?;
        Ok(())
    }

    /// Widens bf16 bits to f32 (exact: bf16 is the top half of an f32).
    pub(crate) fn bf16_to_f32(&self, bits: IntValue<'ctx>) -> Result<BasicValueEnum<'ctx>> {
        let i32t = self.ctx.i32_type();
        let wide = self.b.build_int_z_extend(bits, i32t, "bf16")?;
        let shifted = self.b.build_left_shift(wide, i32t.const_int(16, false), "bits")?;
        Ok(self.b.build_bit_cast(shifted, self.f32t(), "wide")?)
    }

    /// Rounds f32 to bf16 bits, to nearest with ties to even; NaN stays a
    /// (quiet) NaN.
    pub(crate) fn f32_to_bf16(&self, v: inkwell::values::FloatValue<'ctx>) -> Result<IntValue<'ctx>> {
        let i32t = self.ctx.i32_type();
        let bits = self.b.build_bit_cast(v, i32t, "bits")?.into_int_value();
        let c = |k: u64| i32t.const_int(k, false);
        let lsb = self.b.build_and(self.b.build_right_shift(bits, c(16), false, "hi")?, c(1), "lsb")?;
        let bias = self.b.build_int_add(c(0x7fff), lsb, "bias")?;
        let rounded = self.b.build_right_shift(self.b.build_int_add(bits, bias, "r")?, c(16), false, "r")?;
        let quiet = self.b.build_or(self.b.build_right_shift(bits, c(16), false, "q")?, c(0x40), "qnan")?;
        let nan = self.b.build_float_compare(inkwell::FloatPredicate::UNO, v, v, "nan")?;
        let r = self.b.build_select(nan, quiet, rounded, "bf16")?.into_int_value();
        Ok(self.b.build_int_truncate(r, self.ctx.i16_type(), "bf16")?)
    }

    /// Calls an (overloaded) LLVM intrinsic on values of one type.
    pub(crate) fn intrinsic(&self, name: &str, args: &[BasicValueEnum<'ctx>]) -> Result<BasicValueEnum<'ctx>> {
        let intr = inkwell::intrinsics::Intrinsic::find(name)
            .ok_or_else(|| BackendError::Llvm(format!("LLVM has no intrinsic `{name}`")))?;
        let tys: Vec<BasicTypeEnum> = if intr.is_overloaded() { vec![args[0].get_type()] } else { Vec::new() };
        let f = intr
            .get_declaration(&self.module, &tys)
            .ok_or_else(|| BackendError::Llvm(format!("cannot declare `{name}` for {:?}", tys)))?;
        let margs: Vec<BasicMetadataValueEnum> = args.iter().map(|&a| a.into()).collect();
        self.b
            .build_call(f, &margs, name)?
            .try_as_basic_value()
            .basic()
            .ok_or_else(|| BackendError::Llvm(format!("`{name}` returns no value")))
    }

    /// A vector of `vty` f32 lanes from element `idx` of `base`, promising
    /// only element alignment (rows start anywhere).
    pub(crate) fn load_f32_vector(
        &self,
        vty: inkwell::types::VectorType<'ctx>,
        base: PointerValue<'ctx>,
        idx: IntValue<'ctx>,
    ) -> Result<BasicValueEnum<'ctx>> {
        let v = self.b.build_load(vty, self.elem_ptr(base, DType::F32, idx)?, "xv")?;
        if let Some(inst) = v.as_instruction_value() {
            inst.set_alignment(4).map_err(|e| BackendError::Llvm(e.to_string()))?;
        }
        Ok(v)
    }

    /// Whether the module is for x86-64 (its fences and AVX-512 intrinsics).
    pub(crate) fn targets_x86_64(&self) -> bool {
        self.module.get_triple().as_str().to_string_lossy().starts_with("x86_64")
    }

    /// A prefetch of the cache line at `p` for reading, into every cache
    /// level. `p` may point anywhere (past a buffer's end included): a
    /// prefetch never faults.
    pub(crate) fn prefetch_read(&self, p: PointerValue<'ctx>) -> Result<()> {
        self.prefetch(p, 3)
    }

    /// Prefetches the cache line at `p` for reading into L2, not L1
    /// (`prefetcht1` on x86): data needed after what L1 now holds.
    pub(crate) fn prefetch_read_l2(&self, p: PointerValue<'ctx>) -> Result<()> {
        self.prefetch(p, 2)
    }

    /// `llvm.prefetch` for reading with a locality from 0 (none) to 3 (keep
    /// in every level).
    fn prefetch(&self, p: PointerValue<'ctx>, locality: u64) -> Result<()> {
        let f = inkwell::intrinsics::Intrinsic::find("llvm.prefetch")
            .and_then(|i| i.get_declaration(&self.module, &[p.get_type().into()]))
            .ok_or_else(|| BackendError::Llvm("cannot declare llvm.prefetch".into()))?;
        let i32t = self.ctx.i32_type();
        // read (0), locality, data cache (1)
        let args = [
            p.into(),
            i32t.const_zero().into(),
            i32t.const_int(locality, false).into(),
            i32t.const_int(1, false).into(),
        ];
        self.b.build_call(f, &args, "")?;
        Ok(())
    }

    /// Calls an intrinsic that takes no operands and returns nothing (a fence).
    pub(crate) fn call_void_intrinsic(&self, name: &str) -> Result<()> {
        let intr = inkwell::intrinsics::Intrinsic::find(name)
            .ok_or_else(|| BackendError::Llvm(format!("LLVM has no intrinsic `{name}`")))?;
        let f = intr
            .get_declaration(&self.module, &[])
            .ok_or_else(|| BackendError::Llvm(format!("cannot declare `{name}`")))?;
        self.b.build_call(f, &[], "")?;
        Ok(())
    }

    /// Calls a C library function (libm) `name` of one argument type.
    pub(crate) fn libcall(&self, name: &str, args: &[BasicValueEnum<'ctx>]) -> Result<BasicValueEnum<'ctx>> {
        let ty = args[0].get_type();
        let f = self.module.get_function(name).unwrap_or_else(|| {
            let params: Vec<_> = args.iter().map(|a| a.get_type().into()).collect();
            self.module.add_function(name, ty.fn_type(&params, false), Some(Linkage::External))
        });
        let margs: Vec<BasicMetadataValueEnum> = args.iter().map(|&a| a.into()).collect();
        self.b
            .build_call(f, &margs, name)?
            .try_as_basic_value()
            .basic()
            .ok_or_else(|| BackendError::Llvm(format!("`{name}` returns no value")))
    }
}

/// Emits the whole module for a plan: one kernel per step and the entry.
pub(crate) fn emit_plan(cg: &Cg<'_>, plan: &Plan) -> Result<()> {
    let mut kernels = Vec::with_capacity(plan.steps.len());
    for (s, step) in plan.steps.iter().enumerate() {
        let (f, args) = match step {
            Step::Fused { nodes, out } => elementwise::emit_fused(cg, plan, s, nodes, *out)?,
            Step::Node(id) => kernels::emit_node(cg, plan, s, *id)?,
            Step::NormPrologue { nodes, norm, write_x } => {
                kernels::emit_norm_with_prologue(cg, plan, s, nodes, *norm, *write_x)?
            }
            Step::Copy { from, output } => kernels::emit_copy(cg, plan, s, *from, *output)?,
        };
        kernels.push((f, args));
    }
    // The entry function: resolve each kernel's buffers and call it. It
    // returns 0, or 1 + the index of a step whose data check failed.
    let ptr = cg.ctx.ptr_type(AddressSpace::default());
    let i32t = cg.ctx.i32_type();
    let entry = cg.module.add_function(ENTRY, i32t.fn_type(&[ptr.into()], false), None);
    cg.add_target_attrs(entry);
    let block = cg.ctx.append_basic_block(entry, "entry");
    cg.b.position_at_end(block);
    let buffers = entry.get_nth_param(0).expect("the entry takes the buffer array").into_pointer_value();
    let (n_in, n_out, n_const) = (plan.graph.inputs().len(), plan.graph.outputs().len(), plan.consts.len());
    let slot_index = |slot: Slot| match slot {
        Slot::Input(i) => i,
        Slot::Output(i) => n_in + i,
        Slot::Const(i) => n_in + n_out + i,
        Slot::Arena => n_in + n_out + n_const,
    };
    // The thread count from the run configuration; 0 or less is libomp's
    // default.
    let threads = {
        let at =
            unsafe { cg.b.build_in_bounds_gep(ptr, buffers, &[cg.i64c((n_in + n_out + n_const + 1) as i64)], "slot")? };
        let config = cg.b.build_load(ptr, at, "config")?.into_pointer_value();
        let asked = cg.b.build_load(i32t, config, "threads")?.into_int_value();
        if cg.any_forks() {
            let default = cg.omp_call("omp_get_max_threads", &[])?;
            let given = cg.b.build_int_compare(inkwell::IntPredicate::SGT, asked, i32t.const_zero(), "given")?;
            cg.b.build_select(given, asked, default, "threads")?.into_int_value()
        } else {
            asked
        }
    };
    // Per-step cycle counters: read the counter once before the first
    // kernel and after each, so a step's ticks include its call overhead
    // and data checks but nothing of its neighbours.
    let profile = if plan.profile {
        let at =
            unsafe { cg.b.build_in_bounds_gep(ptr, buffers, &[cg.i64c((n_in + n_out + n_const + 2) as i64)], "slot")? };
        let table = cg.b.build_load(ptr, at, "profile")?.into_pointer_value();
        let start = cg.intrinsic("llvm.readcyclecounter", &[])?.into_int_value();
        let last = cg.entry_alloca(entry, cg.i64t().into(), "last_tick")?;
        cg.b.build_store(last, start)?;
        Some((table, last))
    } else {
        None
    };
    for (step, (f, args)) in kernels.into_iter().enumerate() {
        let mut call_args: Vec<BasicMetadataValueEnum> = Vec::with_capacity(args.len());
        for loc in args {
            let Loc { slot, offset } = loc;
            let at = unsafe { cg.b.build_in_bounds_gep(ptr, buffers, &[cg.i64c(slot_index(slot) as i64)], "slot")? };
            let base = cg.b.build_load(ptr, at, "buf")?.into_pointer_value();
            let p = if offset == 0 {
                base
            } else {
                unsafe { cg.b.build_in_bounds_gep(cg.ctx.i8_type(), base, &[cg.i64c(offset as i64)], "at")? }
            };
            call_args.push(p.into());
        }
        if cg.is_launcher(f) {
            call_args.push(threads.into());
        }
        let call = cg.b.build_call(f, &call_args, "")?;
        if let Some((table, last)) = profile {
            let now = cg.intrinsic("llvm.readcyclecounter", &[])?.into_int_value();
            let before = cg.b.build_load(cg.i64t(), last, "before")?.into_int_value();
            let spent = cg.b.build_int_sub(now, before, "spent")?;
            let counter = cg.elem_ptr(table, DType::I64, cg.i64c(step as i64))?;
            let sum = cg.b.build_load(cg.i64t(), counter, "cycles")?.into_int_value();
            cg.b.build_store(counter, cg.b.build_int_add(sum, spent, "cycles")?)?;
            cg.b.build_store(last, now)?;
        }
        if f.get_type().get_return_type().is_some() {
            let status = call.try_as_basic_value().basic().expect("checked kernels return i32").into_int_value();
            let failed = cg.b.build_int_compare(inkwell::IntPredicate::NE, status, i32t.const_zero(), "failed")?;
            let bail = cg.ctx.append_basic_block(entry, "fail");
            let next = cg.ctx.append_basic_block(entry, "next");
            cg.b.build_conditional_branch(failed, bail, next)?;
            cg.b.position_at_end(bail);
            cg.b.build_return(Some(&i32t.const_int(step as u64 + 1, false)))?;
            cg.b.position_at_end(next);
        }
    }
    cg.b.build_return(Some(&i32t.const_zero()))?;
    Ok(())
}

/// Number of buffer pointers `kiln_entry` expects for a plan: inputs,
/// outputs, constants, the arena, the run configuration and, when the plan
/// is profiled, the per-step cycle counters.
pub(crate) fn buffer_count(plan: &Plan) -> usize {
    plan.graph.inputs().len() + plan.graph.outputs().len() + plan.consts.len() + 2 + usize::from(plan.profile)
}
