//! Intra-op parallelism: kernels whose outermost loop is split across the
//! threads of LLVM's OpenMP runtime (libomp).
//!
//! A parallel kernel is three functions:
//!
//! - the **body**, `kN_what.body(ptr b0, ..., ptr bk, i64 begin, i64 end)`,
//!   which the kernel author writes exactly like a plain kernel except that
//!   its outer loop runs over the items `[begin, end)` (see
//!   [`Cg::for_items`]);
//! - the **microtask**, `kN_what.omp(ptr gtid, ptr btid, ptr ctx)`, which
//!   libomp runs on each thread of a team: it takes the thread's static
//!   share of the items from `omp_get_thread_num()` and
//!   `omp_get_num_threads()` and calls the body;
//! - the **launcher**, `kN_what(ptr b0, ..., ptr bk, i32 threads)`, which
//!   the entry calls: with one thread, too few items, or too little work
//!   for a fork to pay, it calls the body on all items directly; otherwise
//!   it stores the buffers in a stack frame and forks a team of
//!   `min(threads, items)` threads with `__kmpc_push_num_threads` +
//!   `__kmpc_fork_call`, as clang lowers `#pragma omp parallel
//!   num_threads(n)`. libomp's workers persist between forks, so a fork
//!   costs microseconds, not a thread creation.
//!
//! The thread count is a run-time value: the entry reads it from the run
//! configuration slot of the buffer table (see [`super::emit_plan`]) and
//! passes it to every launcher, so one compiled module runs on any number
//! of threads.
//!
//! Items are split statically, `[items·t/n, items·(t+1)/n)` for thread `t`
//! of `n`: the kernels parallelized so far have items of equal cost (rows,
//! heads, chunks), except causal attention, whose later query blocks see
//! more keys; contiguous ranges keep each thread's memory contiguous.

use super::Cg;
use crate::error::{BackendError, Result};
use inkwell::attributes::AttributeLoc;
use inkwell::module::Linkage;
use inkwell::values::{BasicMetadataValueEnum, FunctionValue, GlobalValue, IntValue};
use inkwell::{AddressSpace, AtomicOrdering, AtomicRMWBinOp, IntPredicate};

/// Work (roughly: element operations) below which a kernel runs on the
/// calling thread: a fork and join of a warm libomp team costs a few
/// microseconds, the time to stream a few hundred KiB.
pub(crate) const MIN_PARALLEL_WORK: u64 = 1 << 17;

/// The libomp entry points generated code calls, by name. The JIT maps
/// each to its address in this process (see `jit.rs`).
pub(crate) const OMP_SYMBOLS: [&str; 6] = [
    "__kmpc_fork_call",
    "__kmpc_global_thread_num",
    "__kmpc_push_num_threads",
    "omp_get_thread_num",
    "omp_get_num_threads",
    "omp_get_max_threads",
];

/// A kernel whose outer loop is split across threads, while it is being
/// emitted. Made by [`Cg::parallel_kernel_fn`], finished by
/// [`Cg::finish_parallel`].
pub(crate) struct ParallelKernel<'ctx> {
    /// The body: write the kernel here, taking buffers with [`Cg::param`]
    /// as in a plain kernel.
    pub f: FunctionValue<'ctx>,
    name: String,
    params: usize,
    items: usize,
    work: u64,
    /// Serial code the launcher runs before the items (see
    /// [`Cg::parallel_prologue`]).
    prologue: Option<FunctionValue<'ctx>>,
}

impl<'ctx> Cg<'ctx> {
    /// Starts a parallel kernel over `items` independent outer items (rows,
    /// blocks, ...) on `params` buffers, each item costing about
    /// `work_per_item` element operations. The builder is positioned in the
    /// body's entry block; emit the outer loop with [`Cg::for_items`], end
    /// the body with [`Cg::kernel_return`], then call
    /// [`Cg::finish_parallel`] and return its function as the kernel.
    pub(crate) fn parallel_kernel_fn(
        &self,
        name: &str,
        params: usize,
        items: usize,
        work_per_item: usize,
    ) -> ParallelKernel<'ctx> {
        self.parallel_fn(name, params, items, work_per_item, false)
    }

    /// Like [`Cg::parallel_kernel_fn`] for a kernel that can fail on its
    /// data (see [`Cg::checked_kernel_fn`]): the body returns an `i32`
    /// status, and the launcher returns the failure of any thread.
    pub(crate) fn checked_parallel_kernel_fn(
        &self,
        name: &str,
        params: usize,
        items: usize,
        work_per_item: usize,
    ) -> ParallelKernel<'ctx> {
        self.parallel_fn(name, params, items, work_per_item, true)
    }

    fn parallel_fn(
        &self,
        name: &str,
        params: usize,
        items: usize,
        work_per_item: usize,
        checked: bool,
    ) -> ParallelKernel<'ctx> {
        let f = self.new_kernel(&format!("{name}.body"), params, 2, checked);
        // One copy of the body serves the direct call and every thread:
        // copies inlined into their callers could vectorize a reduction
        // differently (its order follows the vector width and interleave)
        // and break the promise that results do not depend on the thread
        // count.
        f.add_attribute(AttributeLoc::Function, self.enum_attr("noinline"));
        if self.lanes >= 16 {
            // LLVM's loop vectorizer stops at 256-bit vectors on most
            // AVX-512 CPUs unless told otherwise; these loops are long and
            // throughput-bound (the softmax's exp pass costs about a fifth
            // less CPU time at 512 bits on Sapphire Rapids).
            f.add_attribute(AttributeLoc::Function, self.ctx.create_string_attribute("prefer-vector-width", "512"));
        }
        ParallelKernel {
            f,
            name: name.to_string(),
            params,
            items,
            work: (items as u64).saturating_mul(work_per_item as u64),
            prologue: None,
        }
    }

    /// Emits serial work that must finish before any item starts (say,
    /// filling a buffer the items read): `emit` writes it into a function
    /// of the kernel's buffers (take them with [`Cg::param`] of the function
    /// it is given); the launcher calls it on the calling thread first. The
    /// builder returns to where it was in the body.
    pub(crate) fn parallel_prologue(
        &self,
        k: &mut ParallelKernel<'ctx>,
        emit: &mut dyn FnMut(FunctionValue<'ctx>) -> Result<()>,
    ) -> Result<()> {
        let ptr = self.ctx.ptr_type(AddressSpace::default());
        let args: Vec<inkwell::types::BasicMetadataTypeEnum> = (0..k.params).map(|_| ptr.into()).collect();
        let f = self.module.add_function(
            &format!("{}.prologue", k.name),
            self.ctx.void_type().fn_type(&args, false),
            Some(Linkage::Internal),
        );
        self.add_target_attrs(f);
        for i in 0..k.params as u32 {
            f.add_attribute(AttributeLoc::Param(i), self.enum_attr("noalias"));
        }
        let here = self.current_block();
        let entry = self.ctx.append_basic_block(f, "entry");
        self.b.position_at_end(entry);
        emit(f)?;
        self.b.build_return(None)?;
        self.b.position_at_end(here);
        k.prologue = Some(f);
        Ok(())
    }

    /// Emits the kernel's outer loop, `for i in begin..end { body(i) }`,
    /// over this thread's share of the items.
    pub(crate) fn for_items(
        &self,
        k: &ParallelKernel<'ctx>,
        body: &mut dyn FnMut(IntValue<'ctx>) -> Result<()>,
    ) -> Result<()> {
        let begin = self.int_param(k.f, k.params)?;
        let end = self.int_param(k.f, k.params + 1)?;
        let count = self.b.build_int_nsw_sub(end, begin, "count")?;
        self.for_range(k.f, count, &mut |i| body(self.add(begin, i)?))
    }

    /// For a kernel whose items are the points of a loop nest over `sizes`
    /// (so `items` is their product): calls `body` at each of this thread's
    /// points with one offset per operand, `base[o] + Σ index·strides[o][level]`.
    /// A point's indices come from its flat number by division, once per
    /// item, so make the items coarse (rows, not elements).
    pub(crate) fn for_items_nest(
        &self,
        k: &ParallelKernel<'ctx>,
        sizes: &[usize],
        strides: &[Vec<i64>],
        base: &[IntValue<'ctx>],
        body: &mut dyn FnMut(&[IntValue<'ctx>]) -> Result<()>,
    ) -> Result<()> {
        self.for_items(k, &mut |item| {
            let mut offsets = base.to_vec();
            let mut rest = item;
            for level in (0..sizes.len()).rev() {
                let index = if level == 0 {
                    rest
                } else {
                    let size = self.i64c(sizes[level] as i64);
                    let index = self.b.build_int_unsigned_rem(rest, size, "index")?;
                    rest = self.b.build_int_unsigned_div(rest, size, "rest")?;
                    index
                };
                for (o, s) in offsets.iter_mut().zip(strides) {
                    *o = self.affine(index, s[level], *o)?;
                }
            }
            body(&offsets)
        })
    }

    fn int_param(&self, f: FunctionValue<'ctx>, i: usize) -> Result<IntValue<'ctx>> {
        f.get_nth_param(i as u32)
            .map(|p| p.into_int_value())
            .ok_or_else(|| BackendError::Llvm(format!("parallel kernel lacks parameter {i}")))
    }

    /// Emits the microtask and the launcher of a finished body and returns
    /// the launcher, the function the entry calls: it takes the kernel's
    /// buffers then the `i32` thread count, and returns what the body does.
    pub(crate) fn finish_parallel(&self, k: ParallelKernel<'ctx>) -> Result<FunctionValue<'ctx>> {
        let ptr = self.ctx.ptr_type(AddressSpace::default());
        let (i32t, i64t) = (self.ctx.i32_type(), self.i64t());
        let checked = k.f.get_type().get_return_type().is_some();
        let forks = k.items >= 2 && k.work >= MIN_PARALLEL_WORK;

        let mut largs: Vec<_> = (0..k.params).map(|_| ptr.into()).collect();
        largs.push(i32t.into());
        let lty = if checked { i32t.fn_type(&largs, false) } else { self.ctx.void_type().fn_type(&largs, false) };
        let launcher = self.module.add_function(&k.name, lty, Some(Linkage::Internal));
        self.add_target_attrs(launcher);
        self.launchers.borrow_mut().push((launcher, forks));
        let entry = self.ctx.append_basic_block(launcher, "entry");
        self.b.position_at_end(entry);
        let buffers: Vec<BasicMetadataValueEnum> =
            (0..k.params).map(|i| self.param(launcher, i as u32).into()).collect();
        if let Some(prologue) = k.prologue {
            self.b.build_call(prologue, &buffers, "")?;
        }
        let call_body = |begin: IntValue<'ctx>, end: IntValue<'ctx>, bufs: &[BasicMetadataValueEnum<'ctx>]| {
            let mut args = bufs.to_vec();
            args.extend([BasicMetadataValueEnum::from(begin), BasicMetadataValueEnum::from(end)]);
            self.b.build_call(k.f, &args, "")
        };
        let ret_of = |call: inkwell::values::CallSiteValue<'ctx>| -> Result<()> {
            if checked {
                let status = call.try_as_basic_value().basic().expect("checked bodies return i32");
                self.b.build_return(Some(&status))?;
            } else {
                self.b.build_return(None)?;
            }
            Ok(())
        };
        let all = self.i64c(k.items as i64);
        if !forks {
            let call = call_body(self.i64c(0), all, &buffers)?;
            ret_of(call)?;
            return Ok(launcher);
        }

        // The frame shared with the team: the buffers, then the status.
        let frame_ty = self.ctx.struct_type(&[ptr.array_type(k.params as u32).into(), i32t.into()], false);

        // The microtask: this thread's share [items·t/n, items·(t+1)/n).
        let mty = self.ctx.void_type().fn_type(&[ptr.into(), ptr.into(), ptr.into()], false);
        let micro = self.module.add_function(&format!("{}.omp", k.name), mty, Some(Linkage::Internal));
        self.add_target_attrs(micro);
        let mentry = self.ctx.append_basic_block(micro, "entry");
        self.b.position_at_end(mentry);
        let frame = micro.get_nth_param(2).expect("the microtask takes the frame").into_pointer_value();
        let tid = self.omp_call("omp_get_thread_num", &[])?;
        let nth = self.omp_call("omp_get_num_threads", &[])?;
        let tid = self.b.build_int_s_extend(tid, i64t, "tid")?;
        let nth = self.b.build_int_s_extend(nth, i64t, "nth")?;
        let share = |t: IntValue<'ctx>| -> Result<IntValue<'ctx>> {
            let scaled = self.b.build_int_nuw_mul(all, t, "scaled")?;
            Ok(self.b.build_int_unsigned_div(scaled, nth, "bound")?)
        };
        let begin = share(tid)?;
        let end = share(self.b.build_int_nuw_add(tid, self.i64c(1), "next")?)?;
        let mut bufs = Vec::with_capacity(k.params);
        for i in 0..k.params {
            let at = unsafe {
                self.b.build_in_bounds_gep(
                    frame_ty,
                    frame,
                    &[i32t.const_zero(), i32t.const_zero(), i32t.const_int(i as u64, false)],
                    "slot",
                )?
            };
            bufs.push(self.b.build_load(ptr, at, "buf")?.into());
        }
        let call = call_body(begin, end, &bufs)?;
        if checked {
            let status = call.try_as_basic_value().basic().expect("checked bodies return i32").into_int_value();
            let at = self.b.build_struct_gep(frame_ty, frame, 1, "status")?;
            // Any failing thread's status wins; they are all "a data check
            // failed in this step".
            self.b.build_atomicrmw(AtomicRMWBinOp::Or, at, status, AtomicOrdering::Monotonic)?;
        }
        self.b.build_return(None)?;

        // The launcher: a direct call for one thread, else a fork.
        self.b.position_at_end(entry);
        let threads =
            launcher.get_nth_param(k.params as u32).expect("launchers take the thread count last").into_int_value();
        let team = {
            let few = self.b.build_int_compare(
                IntPredicate::SLT,
                all,
                self.b.build_int_s_extend(threads, i64t, "t")?,
                "few",
            )?;
            let items32 = i32t.const_int(k.items.min(i32::MAX as usize) as u64, false);
            self.b.build_select(few, items32, threads, "team")?.into_int_value()
        };
        let serial = self.ctx.append_basic_block(launcher, "serial");
        let fork = self.ctx.append_basic_block(launcher, "fork");
        let alone = self.b.build_int_compare(IntPredicate::SLE, team, i32t.const_int(1, false), "alone")?;
        self.b.build_conditional_branch(alone, serial, fork)?;
        self.b.position_at_end(serial);
        let call = call_body(self.i64c(0), all, &buffers)?;
        ret_of(call)?;

        self.b.position_at_end(fork);
        let frame = self.entry_alloca(launcher, frame_ty.into(), "frame")?;
        for (i, b) in buffers.iter().enumerate() {
            let at = unsafe {
                self.b.build_in_bounds_gep(
                    frame_ty,
                    frame,
                    &[i32t.const_zero(), i32t.const_zero(), i32t.const_int(i as u64, false)],
                    "slot",
                )?
            };
            self.b.build_store(at, b.into_pointer_value())?;
        }
        let status_at = self.b.build_struct_gep(frame_ty, frame, 1, "status")?;
        self.b.build_store(status_at, i32t.const_zero())?;
        let ident = self.omp_ident();
        let gtid = self.omp_call("__kmpc_global_thread_num", &[ident.as_pointer_value().into()])?;
        self.omp_call("__kmpc_push_num_threads", &[ident.as_pointer_value().into(), gtid.into(), team.into()])?;
        self.omp_call(
            "__kmpc_fork_call",
            &[
                ident.as_pointer_value().into(),
                i32t.const_int(1, false).into(),
                micro.as_global_value().as_pointer_value().into(),
                frame.into(),
            ],
        )?;
        if checked {
            let status = self.b.build_load(i32t, status_at, "status")?;
            self.b.build_return(Some(&status))?;
        } else {
            self.b.build_return(None)?;
        }
        Ok(launcher)
    }

    /// Whether `f` is a parallel kernel's launcher (which takes the thread
    /// count after its buffers).
    pub(crate) fn is_launcher(&self, f: FunctionValue<'ctx>) -> bool {
        self.launchers.borrow().iter().any(|&(l, _)| l == f)
    }

    /// Whether any launcher of the module may fork.
    pub(crate) fn any_forks(&self) -> bool {
        self.launchers.borrow().iter().any(|&(_, forks)| forks)
    }

    /// Calls a libomp function (declared on first use). Returns its `i32`
    /// result, or zero for the `void` ones.
    pub(crate) fn omp_call(&self, name: &str, args: &[BasicMetadataValueEnum<'ctx>]) -> Result<IntValue<'ctx>> {
        let ptr = self.ctx.ptr_type(AddressSpace::default());
        let (i32t, void) = (self.ctx.i32_type(), self.ctx.void_type());
        let f = match self.module.get_function(name) {
            Some(f) => f,
            None => {
                let ty = match name {
                    "__kmpc_fork_call" => void.fn_type(&[ptr.into(), i32t.into(), ptr.into()], true),
                    "__kmpc_global_thread_num" => i32t.fn_type(&[ptr.into()], false),
                    "__kmpc_push_num_threads" => void.fn_type(&[ptr.into(), i32t.into(), i32t.into()], false),
                    "omp_get_thread_num" | "omp_get_num_threads" | "omp_get_max_threads" => i32t.fn_type(&[], false),
                    other => return Err(BackendError::Llvm(format!("`{other}` is not a libomp function kiln uses"))),
                };
                self.module.add_function(name, ty, Some(Linkage::External))
            }
        };
        let call = self.b.build_call(f, args, "")?;
        Ok(call.try_as_basic_value().basic().map_or(i32t.const_zero(), |v| v.into_int_value()))
    }

    /// The source-location record libomp's `__kmpc_*` calls take
    /// (`ident_t`: reserved, flags = KMP_IDENT_KMPC, reserved, reserved,
    /// psource), shared by the whole module.
    fn omp_ident(&self) -> GlobalValue<'ctx> {
        if let Some(g) = self.module.get_global("kiln.omp.ident") {
            return g;
        }
        let i32t = self.ctx.i32_type();
        let ptr = self.ctx.ptr_type(AddressSpace::default());
        let source = self.ctx.const_string(b";kiln;kernel;0;0;;", true);
        let sg = self.module.add_global(source.get_type(), None, "kiln.omp.source");
        sg.set_initializer(&source);
        sg.set_constant(true);
        sg.set_linkage(Linkage::Private);
        let ty = self.ctx.struct_type(&[i32t.into(), i32t.into(), i32t.into(), i32t.into(), ptr.into()], false);
        let init = ty.const_named_struct(&[
            i32t.const_zero().into(),
            i32t.const_int(2, false).into(),
            i32t.const_zero().into(),
            i32t.const_zero().into(),
            sg.as_pointer_value().into(),
        ]);
        let g = self.module.add_global(ty, None, "kiln.omp.ident");
        g.set_initializer(&init);
        g.set_constant(true);
        g.set_linkage(Linkage::Private);
        g
    }
}
