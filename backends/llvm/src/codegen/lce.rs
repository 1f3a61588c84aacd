//! `kiln::LinearCrossEntropy` on the CPU: the forward kernel of the graph
//! op and the backward kernel behind [`crate::linear_cross_entropy_grad`],
//! both built on one register-blocked tile GEMM.
//!
//! # The tile GEMM
//!
//! [`emit_gemm`] emits `C (+)= A·B` for compile-time sizes, with explicit
//! vectors of the target's width: a microkernel keeps an `MR × NR` block of
//! `C` in registers (`NR` two vectors wide), and per step along `k` loads
//! two vectors of `B`, broadcasts `MR` elements of `A` and issues `2·MR`
//! fused multiply-adds. `k` is blocked by [`KC`] so the `KC × NR` slice of
//! `B` a microkernel walks stays in L1 while every row block of `A` passes
//! over it. `A` may be strided either way (the backward multiplies by a
//! transposed tile); `B` is read as `NR`-column panels, either packed
//! (`[panel][k][NR]`) or straight from a row-major matrix. Columns past the
//! last full panel take a scalar loop.
//!
//! # Forward
//!
//! The vocabulary is walked in tiles of `vt` entries (at most the op's
//! `chunk_size`, [`crate::plan::LCE_TILE`] by default). Each tile of the
//! head is packed once into `NR`-wide panels, zero-padded to whole panels;
//! then for each block of [`FORWARD_ROWS`] rows the GEMM writes the block's
//! logits for the tile into a small scratch tile, and each row folds it
//! into its running maximum and sum (online log-sum-exp:
//! `s ← s·exp(m - m') + Σ exp(x - m')`), picks its target logit out of the
//! tile when its label falls in it, and adds `Σ w_k x_k` for label
//! smoothing. The scratch is a packed tile, one logit tile and four
//! numbers per row, never `N × V` (or even `N × vt`).
//!
//! Rows are split across threads in groups of whole row blocks (at most
//! [`MAX_THREAD_SLOTS`] groups): each thread walks every vocabulary tile
//! for its own rows, packing the head into its own slot, so the threads
//! share nothing but read-only inputs and write disjoint rows of state. A
//! row's arithmetic does not depend on the split, and the losses are
//! summed afterwards on one thread in row order, so the result is bitwise
//! the same on any number of threads. On one thread the head is packed
//! once and read from memory once.
//!
//! # Backward
//!
//! The gradient formulas are those of `kiln_ir::interp::lce_grad`: with
//! `p = softmax(x)`, `u_ik = c_i·p_ik - (ε/V)·w_k - t_i·[k = y_i]` and
//! `G = s_i·u`, `dH = G·W`, `dW = Gᵀ·H`, `db = Σ_i G`. The kernel first
//! runs the forward (so it also returns the loss), turns each row's state
//! into `(lse_i, c_i, t_i, s_i)`, then visits the vocabulary tiles; per
//! tile it packs the head, and per block of `row_block` rows recomputes the
//! logit tile with the GEMM, forms `G` in place, and unless every `|u|` of
//! the block is below the threshold (Cut Cross-Entropy's filtering; NaN is
//! never below it) accumulates `dH += G·W_tile` and `dW_tile += Gᵀ·H_block`
//! (two more tile GEMMs) and `db`. The hidden block is copied with ignored
//! rows zeroed, so a non-finite padding row cannot reach `dW` through
//! `0·inf`.

use super::Cg;
use crate::error::{BackendError, Result};
use crate::plan::{Loc, Plan, Slot};
use inkwell::types::{BasicTypeEnum, VectorType};
use inkwell::values::{BasicValue, BasicValueEnum, FunctionValue, IntValue, PointerValue};
use inkwell::{FloatPredicate, IntPredicate};
use kiln_ir::dtype::DType;
use kiln_ir::graph::NodeId;
use kiln_ir::op::{LossReduction, Op};

type BV<'ctx> = BasicValueEnum<'ctx>;

/// Steps along `k` per microkernel call: a `KC × NR` slice of a packed f32
/// panel (32 KiB with 32 columns) fits next to the `A` rows in L1.
const KC: usize = 256;

/// Rows per logit tile of the forward kernel (a multiple of every `MR`).
pub(crate) const FORWARD_ROWS: usize = 96;

/// Columns every packed head tile is padded to a multiple of: a multiple
/// of every microkernel width `NR` (two vectors of at most 64 bytes).
const PANEL_PAD: usize = 32;

/// Elements of scratch a section is rounded up to, so every section starts
/// 64-byte aligned for f32 and f64 alike.
const SECTION_ALIGN: usize = 16;

fn round_up(x: usize, to: usize) -> usize {
    x.div_ceil(to) * to
}

fn elem_bytes(dtype: DType) -> usize {
    if dtype == DType::F64 {
        8
    } else {
        4
    }
}

/// The padded width of a vocabulary tile of `vt` entries.
fn padded_tile(vt: usize) -> usize {
    round_up(vt.max(1), PANEL_PAD)
}

/// Element offsets of the forward kernel's scratch sections.
struct ForwardScratch {
    /// Running max, sum, target logit and weighted logit sum: `n` each.
    state: [usize; 4],
    /// One packed head tile (`vt_pad × d`) per thread slot.
    packed: usize,
    packed_len: usize,
    /// One logit tile (`rows × vt_pad`) per thread slot.
    tile: usize,
    tile_len: usize,
    /// Total elements.
    total: usize,
}

fn forward_scratch(n: usize, d: usize, vt: usize, rows: usize, slots: usize) -> ForwardScratch {
    let vt_pad = padded_tile(vt);
    let state_len = round_up(n, SECTION_ALIGN);
    let state = [0, state_len, 2 * state_len, 3 * state_len];
    let packed = 4 * state_len;
    let packed_len = round_up(vt_pad * d, SECTION_ALIGN);
    let tile = packed + slots * packed_len;
    let tile_len = round_up(rows * vt_pad, SECTION_ALIGN);
    let total = tile + slots * tile_len;
    ForwardScratch { state, packed, packed_len, tile, tile_len, total }
}

/// At most this many threads share the forward kernel's rows: each needs a
/// slot of its own (a packed head tile and a logit tile, under 1 MiB for a
/// 768-wide f32 head), and only the slots of running threads are touched.
const MAX_THREAD_SLOTS: usize = 16;

/// How the forward kernel splits `n` rows across threads: `(groups,
/// blocks per group)`, where a group is the parallel item, a run of whole
/// [`FORWARD_ROWS`]-row blocks, and the number of groups is the number of
/// thread slots.
fn forward_groups(n: usize) -> (usize, usize) {
    let blocks = n.div_ceil(FORWARD_ROWS).max(1);
    let per_group = blocks.div_ceil(blocks.min(MAX_THREAD_SLOTS));
    (blocks.div_ceil(per_group), per_group)
}

/// Vocabulary entries per tile for an op's `chunk_size`.
pub(crate) fn forward_tile(chunk_size: i64) -> usize {
    crate::plan::LCE_TILE.min(chunk_size.max(1) as usize)
}

/// Scratch bytes of the forward kernel for `hidden [n, d]` of `dtype`.
pub(crate) fn forward_scratch_bytes(dtype: DType, n: usize, d: usize, chunk_size: i64) -> usize {
    let slots = forward_groups(n).0;
    forward_scratch(n, d, forward_tile(chunk_size), FORWARD_ROWS.min(n.max(1)), slots).total * elem_bytes(dtype)
}

// ------------------------------------------------------------------ GEMM

/// Register blocking for a dtype on the target: `(vector lanes, MR, NR)`.
fn blocking(cg: &Cg<'_>, dtype: DType) -> (usize, usize, usize) {
    let vl = (cg.lanes as usize * 4 / elem_bytes(dtype)).max(1);
    // 32 vector registers (AVX-512) hold 12×2 accumulators with room for
    // the two B vectors and a broadcast; 16 (AVX2, SSE) hold 6×2.
    let mr = if cg.lanes >= 16 { 12 } else { 6 };
    (vl, mr, 2 * vl)
}

/// One `C (+)= A·B` with compile-time sizes. Offsets are in elements.
///
/// `A(i, p)` is at `a_off + i·a_rs + p·a_ks`; `B(p, j)` at
/// `b_off + (j / NR)·b_ps + p·b_ks + j % NR` (a packed panel layout has
/// `b_ks = NR`, `b_ps = k·NR`; a row-major matrix `b_ks = ld`, `b_ps =
/// NR`); `C(i, j)` at `c_off + i·c_rs + j`.
struct Gemm<'ctx> {
    dtype: DType,
    m: usize,
    n: usize,
    k: usize,
    a: PointerValue<'ctx>,
    a_off: IntValue<'ctx>,
    a_rs: i64,
    a_ks: i64,
    b: PointerValue<'ctx>,
    b_off: IntValue<'ctx>,
    b_ks: i64,
    b_ps: i64,
    c: PointerValue<'ctx>,
    c_off: IntValue<'ctx>,
    c_rs: i64,
    /// Add to `C` rather than overwrite it.
    accumulate: bool,
}

fn vec_type<'ctx>(cg: &Cg<'ctx>, dtype: DType, lanes: usize) -> VectorType<'ctx> {
    if dtype == DType::F64 {
        cg.ctx.f64_type().vec_type(lanes as u32)
    } else {
        cg.f32t().vec_type(lanes as u32)
    }
}

/// Loads `lanes` consecutive elements starting at element `idx`.
fn load_vec<'ctx>(
    cg: &Cg<'ctx>,
    p: PointerValue<'ctx>,
    dtype: DType,
    vty: VectorType<'ctx>,
    idx: IntValue<'ctx>,
) -> Result<BV<'ctx>> {
    let at = cg.elem_ptr(p, dtype, idx)?;
    let v = cg.b.build_load(vty, at, "vec")?;
    if let Some(inst) = v.as_instruction_value() {
        inst.set_alignment(elem_bytes(dtype) as u32).map_err(|e| BackendError::Llvm(e.to_string()))?;
    }
    Ok(v)
}

fn store_vec<'ctx>(cg: &Cg<'ctx>, p: PointerValue<'ctx>, dtype: DType, idx: IntValue<'ctx>, v: BV<'ctx>) -> Result<()> {
    let at = cg.elem_ptr(p, dtype, idx)?;
    let st = cg.b.build_store(at, v)?;
    st.set_alignment(elem_bytes(dtype) as u32).map_err(|e| BackendError::Llvm(e.to_string()))?;
    Ok(())
}

fn splat<'ctx>(cg: &Cg<'ctx>, vty: VectorType<'ctx>, x: BV<'ctx>) -> Result<BV<'ctx>> {
    cg.splat(vty, x)
}

/// Emits `g` into function `f` at the builder's position.
fn emit_gemm<'ctx>(cg: &Cg<'ctx>, f: FunctionValue<'ctx>, g: &Gemm<'ctx>) -> Result<()> {
    if g.m == 0 || g.n == 0 {
        return Ok(());
    }
    let (vl, mr, nr) = blocking(cg, g.dtype);
    let vty = vec_type(cg, g.dtype, vl);
    let panels = g.n / nr;
    if g.k == 0 {
        // An empty sum: C is zero, or unchanged when accumulating.
        if !g.accumulate {
            cg.for_n(f, g.m, &mut |i| {
                let row = cg.affine(i, g.c_rs, g.c_off)?;
                cg.for_n(f, g.n, &mut |j| cg.store(g.c, g.dtype, cg.add(row, j)?, scalar_zero(cg, g.dtype)))
            })?;
        }
        return Ok(());
    }
    if panels > 0 {
        let kfull = g.k / KC;
        let krem = g.k % KC;
        let kblock = |k0: IntValue<'ctx>, kc: usize, first: bool| -> Result<()> {
            let accumulate = g.accumulate || !first;
            cg.for_n(f, panels, &mut |p| {
                let mfull = g.m / mr;
                if mfull > 0 {
                    cg.for_n(f, mfull, &mut |ib| {
                        microkernel(cg, f, g, vty, mr, cg.mul(ib, mr as i64)?, p, k0, kc, accumulate)
                    })?;
                }
                let mrem = g.m % mr;
                if mrem > 0 {
                    microkernel(cg, f, g, vty, mrem, cg.i64c((mfull * mr) as i64), p, k0, kc, accumulate)?;
                }
                Ok(())
            })
        };
        if kfull > 0 {
            // The first block overwrites C (unless accumulating); the rest add.
            kblock(cg.i64c(0), KC, true)?;
            if kfull > 1 {
                cg.for_n(f, kfull - 1, &mut |kb| kblock(cg.mul(cg.add(kb, cg.i64c(1))?, KC as i64)?, KC, false))?;
            }
        }
        if krem > 0 {
            kblock(cg.i64c((kfull * KC) as i64), krem, kfull == 0)?;
        }
    }
    // Columns past the last full panel.
    let rest = g.n - panels * nr;
    if rest > 0 {
        let ty = cg.compute_type(g.dtype).map_err(BackendError::Llvm)?;
        let acc = cg.entry_alloca(f, ty, "gemm_acc")?;
        let j0 = panels * nr;
        cg.for_n(f, g.m, &mut |i| {
            let arow = cg.affine(i, g.a_rs, g.a_off)?;
            let crow = cg.affine(i, g.c_rs, g.c_off)?;
            cg.for_n(f, rest, &mut |jj| {
                let cidx = cg.add(crow, cg.add(cg.i64c(j0 as i64), jj)?)?;
                let init = if g.accumulate { cg.load(g.c, g.dtype, cidx)? } else { scalar_zero(cg, g.dtype) };
                cg.b.build_store(acc, init)?;
                let bcol = cg.add(cg.add(cg.i64c(panels as i64 * g.b_ps), jj)?, g.b_off)?;
                cg.for_n(f, g.k, &mut |p| {
                    let av = cg.load(g.a, g.dtype, cg.affine(p, g.a_ks, arow)?)?;
                    let bv = cg.load(g.b, g.dtype, cg.affine(p, g.b_ks, bcol)?)?;
                    let cur = cg.b.build_load(ty, acc, "acc")?;
                    cg.b.build_store(acc, cg.fadd_reassoc(cur, cg.fmul(av, bv)?)?)?;
                    Ok(())
                })?;
                let v = cg.b.build_load(ty, acc, "acc")?;
                cg.store(g.c, g.dtype, cidx, v)
            })
        })?;
    }
    Ok(())
}

fn scalar_zero<'ctx>(cg: &Cg<'ctx>, dtype: DType) -> BV<'ctx> {
    if dtype == DType::F64 {
        cg.ctx.f64_type().const_zero().into()
    } else {
        cg.f32t().const_zero().into()
    }
}

/// `C[i0.., panel p] (+)= A[i0.., k0..k0+kc] · B[k0..k0+kc, panel p]` for
/// `mr` rows, the accumulators in registers (loop-carried SSA values).
#[allow(clippy::too_many_arguments)]
fn microkernel<'ctx>(
    cg: &Cg<'ctx>,
    f: FunctionValue<'ctx>,
    g: &Gemm<'ctx>,
    vty: VectorType<'ctx>,
    mr: usize,
    i0: IntValue<'ctx>,
    p: IntValue<'ctx>,
    k0: IntValue<'ctx>,
    kc: usize,
    accumulate: bool,
) -> Result<()> {
    let vl = vty.get_size() as usize;
    let nr = 2 * vl;
    let zero: BV = vty.const_zero().into();
    // C(i0 + i, p·NR + v·VL) for each accumulator.
    let c_at = |i: usize, v: usize| -> Result<IntValue<'ctx>> {
        let row = cg.affine(cg.add(i0, cg.i64c(i as i64))?, g.c_rs, g.c_off)?;
        cg.add(cg.affine(p, nr as i64, row)?, cg.i64c((v * vl) as i64))
    };
    let mut init = Vec::with_capacity(2 * mr);
    for i in 0..mr {
        for v in 0..2 {
            init.push(if accumulate { load_vec(cg, g.c, g.dtype, vty, c_at(i, v)?)? } else { zero });
        }
    }
    // A(i0 + i, k0 + kk) = a_row(i) + kk·a_ks; B(k0 + kk, p, v) = b_base + kk·b_ks + v·VL.
    let a_base = cg.add(cg.affine(i0, g.a_rs, g.a_off)?, cg.mul(k0, g.a_ks)?)?;
    let b_base = cg.add(cg.affine(p, g.b_ps, g.b_off)?, cg.mul(k0, g.b_ks)?)?;

    let pre = cg.current_block();
    let head = cg.ctx.append_basic_block(f, "mk");
    let exit = cg.ctx.append_basic_block(f, "mk.exit");
    cg.b.build_unconditional_branch(head)?;
    cg.b.position_at_end(head);
    let kphi = cg.b.build_phi(cg.i64t(), "kk")?;
    kphi.add_incoming(&[(&cg.i64c(0), pre)]);
    let kk = kphi.as_basic_value().into_int_value();
    let mut phis = Vec::with_capacity(init.len());
    for v in &init {
        let phi = cg.b.build_phi(vty, "acc")?;
        phi.add_incoming(&[(v as &dyn BasicValue, pre)]);
        phis.push(phi);
    }
    let brow = cg.affine(kk, g.b_ks, b_base)?;
    let b0 = load_vec(cg, g.b, g.dtype, vty, brow)?;
    let b1 = load_vec(cg, g.b, g.dtype, vty, cg.add(brow, cg.i64c(vl as i64))?)?;
    let acol = cg.affine(kk, g.a_ks, a_base)?;
    let mut next = Vec::with_capacity(init.len());
    for i in 0..mr {
        let a = cg.load(g.a, g.dtype, cg.add(acol, cg.i64c(i as i64 * g.a_rs))?)?;
        let a = splat(cg, vty, a)?;
        for (v, b) in [b0, b1].into_iter().enumerate() {
            let acc = phis[2 * i + v].as_basic_value();
            next.push(cg.intrinsic("llvm.fma", &[a, b, acc])?);
        }
    }
    let knext = cg.b.build_int_nsw_add(kk, cg.i64c(1), "kk.next")?;
    let latch = cg.current_block();
    kphi.add_incoming(&[(&knext, latch)]);
    for (phi, v) in phis.iter().zip(&next) {
        phi.add_incoming(&[(v as &dyn BasicValue, latch)]);
    }
    let more = cg.b.build_int_compare(IntPredicate::SLT, knext, cg.i64c(kc as i64), "more")?;
    cg.b.build_conditional_branch(more, head, exit)?;
    cg.b.position_at_end(exit);
    for i in 0..mr {
        for v in 0..2 {
            store_vec(cg, g.c, g.dtype, c_at(i, v)?, next[2 * i + v])?;
        }
    }
    Ok(())
}

/// Runs `body(start, len)` over `0..total` in blocks of `block`: a loop
/// over the full blocks, then the last short block emitted on its own, so
/// every block's length is a compile-time constant.
fn for_blocks<'ctx>(
    cg: &Cg<'ctx>,
    f: FunctionValue<'ctx>,
    total: usize,
    block: usize,
    body: &mut dyn FnMut(IntValue<'ctx>, usize) -> Result<()>,
) -> Result<()> {
    let block = block.max(1);
    let full = total / block;
    if full > 0 {
        cg.for_n(f, full, &mut |b| body(cg.mul(b, block as i64)?, block))?;
    }
    if total % block > 0 {
        body(cg.i64c((full * block) as i64), total % block)?;
    }
    Ok(())
}

// ------------------------------------------------------------------ shared pieces

/// Visits blocks of rows: `blocks(body)` calls `body(first row, rows)` for
/// each, `rows` a compile-time constant.
type RowBlocks<'a, 'ctx> = &'a dyn Fn(&mut dyn FnMut(IntValue<'ctx>, usize) -> Result<()>) -> Result<()>;

/// The problem of one LinearCrossEntropy, as the kernels see it.
#[derive(Clone, Debug)]
pub(crate) struct Problem {
    pub dtype: DType,
    pub label_dtype: DType,
    pub n: usize,
    pub d: usize,
    pub vocab: usize,
    pub transpose_weight: bool,
    pub reduction: LossReduction,
    pub ignore_index: Option<i64>,
    pub eps: f64,
    pub zeta: f64,
    pub has_bias: bool,
    pub has_class_weight: bool,
    /// Vocabulary entries per tile.
    pub vt: usize,
}

/// Pointers to the kernels' inputs.
#[derive(Clone, Copy)]
struct Inputs<'ctx> {
    h: PointerValue<'ctx>,
    w: PointerValue<'ctx>,
    labels: PointerValue<'ctx>,
    bias: Option<PointerValue<'ctx>>,
    class_w: Option<PointerValue<'ctx>>,
}

struct Emitter<'a, 'ctx> {
    cg: &'a Cg<'ctx>,
    f: FunctionValue<'ctx>,
    p: &'a Problem,
    x: Inputs<'ctx>,
    scratch: PointerValue<'ctx>,
    like: BV<'ctx>,
    ty: BasicTypeEnum<'ctx>,
}

impl<'ctx> Emitter<'_, 'ctx> {
    fn c(&self, v: f64) -> BV<'ctx> {
        self.cg.fconst(self.like, v)
    }

    fn at(&self, base: usize, i: IntValue<'ctx>) -> Result<IntValue<'ctx>> {
        self.cg.add(self.cg.i64c(base as i64), i)
    }

    fn label(&self, i: IntValue<'ctx>) -> Result<IntValue<'ctx>> {
        let raw = self.cg.load(self.x.labels, self.p.label_dtype, i)?.into_int_value();
        Ok(self.cg.b.build_int_s_extend_or_bit_cast(raw, self.cg.i64t(), "label")?)
    }

    fn class_weight(&self, k: IntValue<'ctx>) -> Result<BV<'ctx>> {
        match self.x.class_w {
            Some(p) => self.cg.load(p, self.p.dtype, k),
            None => Ok(self.c(1.0)),
        }
    }

    /// `x + b[k]`, or `x` without a bias.
    fn biased(&self, x: BV<'ctx>, k: IntValue<'ctx>) -> Result<BV<'ctx>> {
        match self.x.bias {
            Some(b) => self.cg.fadd(x, self.cg.load(b, self.p.dtype, k)?),
            None => Ok(x),
        }
    }

    /// Runs `counted` for a row whose label is not the ignore_index and
    /// `ignored` otherwise.
    fn by_row(
        &self,
        i: IntValue<'ctx>,
        counted: &mut dyn FnMut(IntValue<'ctx>) -> Result<()>,
        ignored: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        let cg = self.cg;
        let label = self.label(i)?;
        let Some(ig) = self.p.ignore_index else { return counted(label) };
        let is_ignored = cg.b.build_int_compare(IntPredicate::EQ, label, cg.i64c(ig), "ignored")?;
        cg.if_else(self.f, is_ignored, "row.ignored", ignored, &mut || counted(label))
    }

    /// `W(v, j)` as an element index of the weight.
    fn w_index(&self, v: IntValue<'ctx>, j: IntValue<'ctx>) -> Result<IntValue<'ctx>> {
        if self.p.transpose_weight {
            self.cg.affine(v, self.p.d as i64, j)
        } else {
            self.cg.affine(j, self.p.vocab as i64, v)
        }
    }

    /// Packs head entries `v0..v0+width` as `NR`-wide panels `[panel][d][NR]`
    /// at scratch element `at`, zero past `width` up to a whole panel.
    fn pack_head(&self, at: IntValue<'ctx>, v0: IntValue<'ctx>, width: usize) -> Result<()> {
        let (cg, f, d, dtype) = (self.cg, self.f, self.p.d, self.p.dtype);
        let (_, _, nr) = blocking(cg, dtype);
        let full = width / nr;
        let panel = |pnl: IntValue<'ctx>, cols: usize| -> Result<()> {
            let base = cg.affine(pnl, (d * nr) as i64, at)?;
            let v_base = cg.add(v0, cg.mul(pnl, nr as i64)?)?;
            if self.p.transpose_weight {
                // Rows of W are contiguous along d: read them in order.
                cg.for_n(f, cols, &mut |jj| {
                    let v = cg.add(v_base, jj)?;
                    cg.for_n(f, d, &mut |j| {
                        let x = cg.load(self.x.w, dtype, self.w_index(v, j)?)?;
                        cg.store(self.scratch, dtype, cg.add(cg.affine(j, nr as i64, base)?, jj)?, x)
                    })
                })?;
            } else {
                cg.for_n(f, d, &mut |j| {
                    let dst = cg.affine(j, nr as i64, base)?;
                    cg.for_n(f, cols, &mut |jj| {
                        let x = cg.load(self.x.w, dtype, self.w_index(cg.add(v_base, jj)?, j)?)?;
                        cg.store(self.scratch, dtype, cg.add(dst, jj)?, x)
                    })
                })?;
            }
            if cols < nr {
                cg.for_n(f, d, &mut |j| {
                    let dst = cg.add(cg.affine(j, nr as i64, base)?, cg.i64c(cols as i64))?;
                    cg.for_n(f, nr - cols, &mut |jj| cg.store(self.scratch, dtype, cg.add(dst, jj)?, self.c(0.0)))
                })?;
            }
            Ok(())
        };
        if full > 0 {
            cg.for_n(f, full, &mut |pnl| panel(pnl, nr))?;
        }
        if width % nr > 0 {
            panel(cg.i64c(full as i64), width % nr)?;
        }
        Ok(())
    }

    /// The GEMM writing the logits (without bias) of `rows` hidden rows
    /// (from `a`, row stride `d`) against the packed tile at `packed` into
    /// the scratch tile at `tile` (row stride `vt_pad`).
    #[allow(clippy::too_many_arguments)]
    fn logits_tile(
        &self,
        a: PointerValue<'ctx>,
        a_off: IntValue<'ctx>,
        rows: usize,
        width: usize,
        packed: IntValue<'ctx>,
        tile: IntValue<'ctx>,
    ) -> Result<()> {
        let (_, _, nr) = blocking(self.cg, self.p.dtype);
        let d = self.p.d;
        emit_gemm(
            self.cg,
            self.f,
            &Gemm {
                dtype: self.p.dtype,
                m: rows,
                n: round_up(width, nr),
                k: d,
                a,
                a_off,
                a_rs: d as i64,
                a_ks: 1,
                b: self.scratch,
                b_off: packed,
                b_ks: nr as i64,
                b_ps: (d * nr) as i64,
                c: self.scratch,
                c_off: tile,
                c_rs: padded_tile(self.p.vt) as i64,
                accumulate: false,
            },
        )
    }

    /// The forward: checks the labels, then walks the vocabulary tiles and
    /// leaves per row (max, sum, target logit, weighted logit sum) in the
    /// scratch sections `st`, for the rows of the blocks `blocks` visits
    /// (`blocks(body)` calls `body(first row, rows)` per block). Returns 1
    /// from the function on a bad label.
    fn forward_state(
        &self,
        st: [usize; 4],
        packed: IntValue<'ctx>,
        tile: IntValue<'ctx>,
        blocks: RowBlocks<'_, 'ctx>,
    ) -> Result<()> {
        let (cg, f, p) = (self.cg, self.f, self.p);
        let (dtype, ty) = (p.dtype, self.ty);
        let [m_at, s_at, t_at, ws_at] = st;
        let vt_pad = padded_tile(p.vt);
        blocks(&mut |r0, rows| {
            cg.for_n(f, rows, &mut |r| {
                let i = cg.add(r0, r)?;
                self.by_row(
                    i,
                    &mut |label| {
                        let bad = cg.ctx.append_basic_block(f, "bad_label");
                        let good = cg.ctx.append_basic_block(f, "good_label");
                        let ok =
                            cg.b.build_int_compare(IntPredicate::ULT, label, cg.i64c(p.vocab as i64), "in_range")?;
                        cg.b.build_conditional_branch(ok, good, bad)?;
                        cg.b.position_at_end(bad);
                        cg.b.build_return(Some(&cg.ctx.i32_type().const_int(1, false)))?;
                        cg.b.position_at_end(good);
                        Ok(())
                    },
                    &mut || Ok(()),
                )?;
                cg.store(self.scratch, dtype, self.at(m_at, i)?, self.c(f64::NEG_INFINITY))?;
                cg.store(self.scratch, dtype, self.at(s_at, i)?, self.c(0.0))?;
                cg.store(self.scratch, dtype, self.at(t_at, i)?, self.c(0.0))?;
                cg.store(self.scratch, dtype, self.at(ws_at, i)?, self.c(0.0))
            })
        })?;
        let tmax = cg.entry_alloca(f, ty, "tile_max")?;
        let tsum = cg.entry_alloca(f, ty, "tile_sum")?;
        let twsum = cg.entry_alloca(f, ty, "tile_weighted")?;
        for_blocks(cg, f, p.vocab, p.vt, &mut |v0, width| {
            self.pack_head(packed, v0, width)?;
            blocks(&mut |r0, rows| {
                self.logits_tile(self.x.h, cg.mul(r0, p.d as i64)?, rows, width, packed, tile)?;
                cg.for_n(f, rows, &mut |r| {
                    let i = cg.add(r0, r)?;
                    let trow = cg.affine(r, vt_pad as i64, tile)?;
                    let x_at = |k: IntValue<'ctx>| -> Result<BV<'ctx>> {
                        self.biased(cg.load(self.scratch, dtype, cg.add(trow, k)?)?, cg.add(v0, k)?)
                    };
                    self.by_row(
                        i,
                        &mut |label| {
                            cg.b.build_store(tmax, self.c(f64::NEG_INFINITY))?;
                            cg.for_n(f, width, &mut |k| {
                                let cur = cg.b.build_load(ty, tmax, "tmax")?;
                                cg.b.build_store(tmax, cg.fmaxnum(cur, x_at(k)?)?)?;
                                Ok(())
                            })?;
                            let m_old = cg.load(self.scratch, dtype, self.at(m_at, i)?)?;
                            let m_new = cg.fmaxnum(m_old, cg.b.build_load(ty, tmax, "tmax")?)?;
                            // Until some logit is finite there is nothing to shift by.
                            let finite = cg.fcmp(FloatPredicate::ONE, m_new, self.c(f64::NEG_INFINITY))?;
                            let shift = cg.select(finite, m_new, self.c(0.0))?;
                            cg.b.build_store(tsum, self.c(0.0))?;
                            cg.b.build_store(twsum, self.c(0.0))?;
                            cg.for_n(f, width, &mut |k| {
                                let x = x_at(k)?;
                                let cur = cg.b.build_load(ty, tsum, "tsum")?;
                                cg.b.build_store(tsum, cg.fadd_reassoc(cur, cg.exp_nonpositive(cg.fsub(x, shift)?)?)?)?;
                                if p.eps != 0.0 {
                                    let wk = self.class_weight(cg.add(v0, k)?)?;
                                    let cur = cg.b.build_load(ty, twsum, "twsum")?;
                                    cg.b.build_store(twsum, cg.fadd_reassoc(cur, cg.fmul(wk, x)?)?)?;
                                }
                                Ok(())
                            })?;
                            let s_old = cg.load(self.scratch, dtype, self.at(s_at, i)?)?;
                            let empty = cg.fcmp(FloatPredicate::OEQ, s_old, self.c(0.0))?;
                            let rescale = cg.select(empty, self.c(0.0), cg.exp_nonpositive(cg.fsub(m_old, shift)?)?)?;
                            let s_new = cg.fadd(cg.fmul(s_old, rescale)?, cg.b.build_load(ty, tsum, "tsum")?)?;
                            cg.store(self.scratch, dtype, self.at(s_at, i)?, s_new)?;
                            cg.store(self.scratch, dtype, self.at(m_at, i)?, m_new)?;
                            if p.eps != 0.0 {
                                let ws = cg.load(self.scratch, dtype, self.at(ws_at, i)?)?;
                                let sum = cg.fadd(ws, cg.b.build_load(ty, twsum, "twsum")?)?;
                                cg.store(self.scratch, dtype, self.at(ws_at, i)?, sum)?;
                            }
                            // The target logit, when the label is in this tile:
                            // the indexed element of the tile's product.
                            let rel = cg.b.build_int_nsw_sub(label, v0, "rel")?;
                            let inside =
                                cg.b.build_int_compare(IntPredicate::ULT, rel, cg.i64c(width as i64), "inside")?;
                            cg.if_then(f, inside, "target", &mut || {
                                cg.store(self.scratch, dtype, self.at(t_at, i)?, x_at(rel)?)
                            })
                        },
                        &mut || Ok(()),
                    )
                })
            })
        })
    }

    /// `Σ_k w_k` (V without class weights).
    fn total_class_weight(&self) -> Result<BV<'ctx>> {
        let cg = self.cg;
        if self.x.class_w.is_none() {
            return Ok(self.c(self.p.vocab as f64));
        }
        let acc = cg.entry_alloca(self.f, self.ty, "class_w")?;
        cg.b.build_store(acc, self.c(0.0))?;
        cg.for_n(self.f, self.p.vocab, &mut |k| {
            let cur = cg.b.build_load(self.ty, acc, "cw")?;
            cg.b.build_store(acc, cg.fadd_reassoc(cur, self.class_weight(k)?)?)?;
            Ok(())
        })?;
        Ok(cg.b.build_load(self.ty, acc, "cw")?)
    }

    /// `lse` of row `i` from its state.
    fn lse(&self, st: [usize; 4], i: IntValue<'ctx>) -> Result<BV<'ctx>> {
        let cg = self.cg;
        let m = cg.load(self.scratch, self.p.dtype, self.at(st[0], i)?)?;
        let s = cg.load(self.scratch, self.p.dtype, self.at(st[1], i)?)?;
        let finite = cg.fcmp(FloatPredicate::ONE, m, self.c(f64::NEG_INFINITY))?;
        cg.select(finite, cg.fadd(m, cg.intrinsic("llvm.log", &[s])?)?, m)
    }

    /// Writes the loss output from the row states; returns the f64 slot of
    /// `Σ w_y` over the counted rows (the `mean` denominator).
    fn losses(&self, st: [usize; 4], lossp: PointerValue<'ctx>) -> Result<PointerValue<'ctx>> {
        let (cg, f, p) = (self.cg, self.f, self.p);
        let dtype = p.dtype;
        let f64t = cg.ctx.f64_type();
        let total = cg.entry_alloca(f, f64t.into(), "total")?;
        let total_w = cg.entry_alloca(f, f64t.into(), "total_w")?;
        cg.b.build_store(total, f64t.const_zero())?;
        cg.b.build_store(total_w, f64t.const_zero())?;
        let total_class_w = if p.eps != 0.0 { self.total_class_weight()? } else { self.c(p.vocab as f64) };
        let to_f64 = |v: BV<'ctx>| -> Result<BV<'ctx>> {
            Ok(if dtype == DType::F64 { v } else { cg.b.build_float_ext(v.into_float_value(), f64t, "wide")?.into() })
        };
        cg.for_n(f, p.n, &mut |i| {
            self.by_row(
                i,
                &mut |label| {
                    let lse = self.lse(st, i)?;
                    let target = cg.load(self.scratch, dtype, self.at(st[2], i)?)?;
                    let wy = self.class_weight(label)?;
                    let mut per = cg.fmul(cg.fsub(lse, target)?, self.c(1.0 - p.eps))?;
                    if p.zeta != 0.0 {
                        per = cg.fadd(per, cg.fmul(cg.fmul(lse, lse)?, self.c(p.zeta))?)?;
                    }
                    let mut value = cg.fmul(wy, per)?;
                    if p.eps != 0.0 {
                        let ws = cg.load(self.scratch, dtype, self.at(st[3], i)?)?;
                        let smooth = cg.fsub(cg.fmul(lse, total_class_w)?, ws)?;
                        value = cg.fadd(value, cg.fmul(smooth, self.c(p.eps / p.vocab as f64))?)?;
                    }
                    if p.reduction == LossReduction::None {
                        cg.store(lossp, dtype, i, value)
                    } else {
                        let t = cg.b.build_load(f64t, total, "t")?;
                        cg.b.build_store(total, cg.fadd(t, to_f64(value)?)?)?;
                        let tw = cg.b.build_load(f64t, total_w, "tw")?;
                        cg.b.build_store(total_w, cg.fadd(tw, to_f64(wy)?)?)?;
                        Ok(())
                    }
                },
                &mut || {
                    if p.reduction == LossReduction::None {
                        cg.store(lossp, dtype, i, self.c(0.0))?;
                    }
                    Ok(())
                },
            )
        })?;
        if p.reduction != LossReduction::None {
            let t = cg.b.build_load(f64t, total, "t")?;
            let r =
                if p.reduction == LossReduction::Mean { cg.fdiv(t, cg.b.build_load(f64t, total_w, "tw")?)? } else { t };
            let r = if dtype == DType::F64 {
                r
            } else {
                cg.b.build_float_trunc(r.into_float_value(), cg.f32t(), "loss")?.into()
            };
            cg.store(lossp, dtype, cg.i64c(0), r)?;
        }
        Ok(total_w)
    }
}

fn make_emitter<'a, 'ctx>(
    cg: &'a Cg<'ctx>,
    f: FunctionValue<'ctx>,
    p: &'a Problem,
    x: Inputs<'ctx>,
    scratch: PointerValue<'ctx>,
) -> Result<Emitter<'a, 'ctx>> {
    let ty = cg.compute_type(p.dtype).map_err(BackendError::Llvm)?;
    let like: BV = ty.into_float_type().const_float(0.0).into();
    Ok(Emitter { cg, f, p, x, scratch, like, ty })
}

// ------------------------------------------------------------------ forward (graph op)

/// The forward kernel of graph node `id` (see the module docs).
pub(crate) fn forward<'ctx>(
    cg: &Cg<'ctx>,
    plan: &Plan,
    step: usize,
    id: NodeId,
) -> Result<(FunctionValue<'ctx>, Vec<Loc>)> {
    let node = plan.graph.node(id);
    let err = |m: String| BackendError::node(&node.name, node.op.name(), m);
    let input =
        |slot: usize, what: &str| node.input(slot).ok_or_else(|| err(format!("input {slot} ({what}) is missing")));
    let (h, w, labels) = (input(0, "hidden")?, input(1, "weight")?, input(2, "labels")?);
    let (bias, class_w) = (node.input(3), node.input(4));
    let loss = node.output(0).ok_or_else(|| err("output 0 is missing".into()))?;
    let ty_of = |v: Option<kiln_ir::graph::ValueId>| v.map(|v| (plan.ty(v).dtype, plan.ty(v).shape.clone()));
    let problem = problem_of(
        &node.op,
        (plan.ty(h).dtype, &plan.ty(h).shape),
        (plan.ty(w).dtype, &plan.ty(w).shape),
        (plan.ty(labels).dtype, &plan.ty(labels).shape),
        ty_of(bias).as_ref().map(|(d, s)| (*d, s.as_slice())),
        ty_of(class_w).as_ref().map(|(d, s)| (*d, s.as_slice())),
        None,
    )
    .map_err(|e| match e {
        ProblemError::Unsupported(m) => BackendError::unsupported(&node.name, node.op.name(), m),
        ProblemError::Invalid(m) => err(m),
    })?;
    let scratch_offset = plan.scratch[step].ok_or_else(|| err("no scratch space was planned".into()))?;
    let (n, d) = (problem.n, problem.d);
    let rows = FORWARD_ROWS.min(n.max(1));
    let (groups, per_group) = forward_groups(n);
    let layout = forward_scratch(n, d, problem.vt, rows, groups);
    let planned = forward_scratch_bytes(problem.dtype, n, d, node_chunk(&node.op));
    if layout.total * elem_bytes(problem.dtype) > planned {
        return Err(err("the planned scratch space is too small".into()));
    }

    let mut values = vec![loss, h, w, labels];
    values.extend(bias);
    values.extend(class_w);
    let params = values.len() + 1;
    let inputs_of = |f: FunctionValue<'ctx>| Inputs {
        h: cg.param(f, 1),
        w: cg.param(f, 2),
        labels: cg.param(f, 3),
        bias: bias.map(|_| cg.param(f, 4)),
        class_w: class_w.map(|_| cg.param(f, 4 + bias.is_some() as u32)),
    };
    let name = format!("k{step}_LinearCrossEntropy");

    // The row states, in parallel over groups of row blocks: each thread
    // packs the head tiles into its own slot and runs its rows over them.
    let work = per_group * rows * problem.vocab * d * 2;
    let k = cg.checked_parallel_kernel_fn(&format!("{name}.rows"), params, groups, work);
    let f = k.f;
    let e = make_emitter(cg, f, &problem, inputs_of(f), cg.param(f, values.len() as u32))?;
    let param_int = |i: usize| -> Result<IntValue<'ctx>> {
        f.get_nth_param(i as u32)
            .map(|v| v.into_int_value())
            .ok_or_else(|| BackendError::Llvm("the parallel body lacks its item range".into()))
    };
    let (begin, end) = (param_int(params)?, param_int(params + 1)?);
    // A thread's first item is its slot: the launcher gives every thread
    // at least one item, so first items are distinct and below `groups`
    // (and 0 when the body runs alone).
    let slot = begin;
    let packed = cg.affine(slot, layout.packed_len as i64, cg.i64c(layout.packed as i64))?;
    let tile = cg.affine(slot, layout.tile_len as i64, cg.i64c(layout.tile as i64))?;
    let nblocks = n.div_ceil(FORWARD_ROWS).max(1);
    let first = cg.mul(begin, per_group as i64)?;
    let stop = {
        let s = cg.mul(end, per_group as i64)?;
        let over = cg.b.build_int_compare(IntPredicate::SGT, s, cg.i64c(nblocks as i64), "over")?;
        cg.b.build_select(over, cg.i64c(nblocks as i64), s, "stop")?.into_int_value()
    };
    let count = cg.b.build_int_nsw_sub(stop, first, "blocks")?;
    let tail = n % FORWARD_ROWS;
    let blocks = |body: &mut dyn FnMut(IntValue<'ctx>, usize) -> Result<()>| -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        if nblocks == 1 {
            return body(cg.i64c(0), n);
        }
        cg.for_range(f, count, &mut |b| {
            let blk = cg.add(first, b)?;
            let r0 = cg.mul(blk, FORWARD_ROWS as i64)?;
            if tail == 0 {
                return body(r0, FORWARD_ROWS);
            }
            let last = cg.b.build_int_compare(IntPredicate::EQ, blk, cg.i64c(nblocks as i64 - 1), "last")?;
            let short = cg.ctx.append_basic_block(f, "rows.short");
            let full = cg.ctx.append_basic_block(f, "rows.full");
            let done = cg.ctx.append_basic_block(f, "rows.done");
            cg.b.build_conditional_branch(last, short, full)?;
            cg.b.position_at_end(short);
            body(r0, tail)?;
            cg.b.build_unconditional_branch(done)?;
            cg.b.position_at_end(full);
            body(r0, FORWARD_ROWS)?;
            cg.b.build_unconditional_branch(done)?;
            cg.b.position_at_end(done);
            Ok(())
        })
    };
    e.forward_state(layout.state, packed, tile, &blocks)?;
    cg.kernel_return(f)?;
    let launcher = cg.finish_parallel(k)?;
    let forks = cg.launchers.borrow().iter().any(|&(l, forks)| l == launcher && forks);

    // The losses, serially (a fixed summation order).
    let lf = cg.kernel_fn(&format!("{name}.loss"), params);
    let e = make_emitter(cg, lf, &problem, inputs_of(lf), cg.param(lf, values.len() as u32))?;
    e.losses(layout.state, cg.param(lf, 0))?;
    cg.b.build_return(None)?;

    // The step's kernel: the rows, then (if no label was bad) the losses.
    let ptr = cg.ctx.ptr_type(inkwell::AddressSpace::default());
    let i32t = cg.ctx.i32_type();
    let mut arg_types: Vec<inkwell::types::BasicMetadataTypeEnum> = (0..params).map(|_| ptr.into()).collect();
    arg_types.push(i32t.into());
    let kf = cg.module.add_function(&name, i32t.fn_type(&arg_types, false), Some(inkwell::module::Linkage::Internal));
    cg.add_target_attrs(kf);
    cg.b.position_at_end(cg.ctx.append_basic_block(kf, "entry"));
    let args: Vec<inkwell::values::BasicMetadataValueEnum> =
        (0..=params as u32).map(|i| kf.get_nth_param(i).expect("declared above").into()).collect();
    let status = cg.b.build_call(launcher, &args, "status")?;
    let status = status.try_as_basic_value().basic().expect("checked launchers return i32").into_int_value();
    let failed = cg.b.build_int_compare(IntPredicate::NE, status, i32t.const_zero(), "failed")?;
    let bail = cg.ctx.append_basic_block(kf, "bad_label");
    let go = cg.ctx.append_basic_block(kf, "losses");
    cg.b.build_conditional_branch(failed, bail, go)?;
    cg.b.position_at_end(bail);
    cg.b.build_return(Some(&status))?;
    cg.b.position_at_end(go);
    cg.b.build_call(lf, &args[..params], "")?;
    cg.b.build_return(Some(&i32t.const_zero()))?;
    // The entry passes launchers the thread count.
    cg.launchers.borrow_mut().push((kf, forks));
    let mut locs: Vec<Loc> = values.iter().map(|&v| plan.loc(v)).collect();
    locs.push(Loc { slot: Slot::Arena, offset: scratch_offset });
    Ok((kf, locs))
}

fn node_chunk(op: &Op) -> i64 {
    match op {
        Op::LinearCrossEntropy { chunk_size, .. } => *chunk_size,
        _ => kiln_ir::op::DEFAULT_CHUNK_SIZE,
    }
}

/// Why a problem cannot be built.
pub(crate) enum ProblemError {
    /// A dtype the kernels do not handle.
    Unsupported(String),
    /// Inputs that do not fit the op.
    Invalid(String),
}

/// Checks an op and its input types and describes the problem. `vt`
/// overrides the vocabulary tile (else the forward's default for the op's
/// chunk size).
pub(crate) fn problem_of(
    op: &Op,
    h: (DType, &[usize]),
    w: (DType, &[usize]),
    labels: (DType, &[usize]),
    bias: Option<(DType, &[usize])>,
    class_w: Option<(DType, &[usize])>,
    vt: Option<usize>,
) -> Result<Problem, ProblemError> {
    let Op::LinearCrossEntropy { reduction, ignore_index, label_smoothing, z_loss, transpose_weight, chunk_size } =
        op.clone()
    else {
        return Err(ProblemError::Invalid(format!("expected a LinearCrossEntropy op, found {}", op.name())));
    };
    let dtype = h.0;
    if !matches!(dtype, DType::F32 | DType::F64) {
        return Err(ProblemError::Unsupported(format!("{dtype} inputs")));
    }
    if !matches!(labels.0, DType::I32 | DType::I64) {
        return Err(ProblemError::Unsupported(format!("{} labels", labels.0)));
    }
    if h.1.len() != 2 || w.1.len() != 2 {
        return Err(ProblemError::Invalid(format!(
            "hidden and weight must be matrices, found {:?} and {:?}",
            h.1, w.1
        )));
    }
    if w.0 != dtype {
        return Err(ProblemError::Invalid(format!("weight must be {dtype} like hidden, found {}", w.0)));
    }
    let (n, d) = (h.1[0], h.1[1]);
    let (vocab, depth) = if transpose_weight { (w.1[0], w.1[1]) } else { (w.1[1], w.1[0]) };
    let label_len: usize = labels.1.iter().product();
    if depth != d || labels.1.len() != 1 || label_len != n {
        return Err(ProblemError::Invalid(format!(
            "shapes do not agree: hidden {:?}, weight {:?}, labels {:?}",
            h.1, w.1, labels.1
        )));
    }
    for (what, v) in [("bias", bias), ("class weight", class_w)] {
        if let Some((dt, shape)) = v {
            if dt != dtype || shape != [vocab] {
                return Err(ProblemError::Invalid(format!("{what} must be {dtype}[{vocab}], found {dt}{shape:?}")));
            }
        }
    }
    Ok(Problem {
        dtype,
        label_dtype: labels.0,
        n,
        d,
        vocab,
        transpose_weight,
        reduction,
        ignore_index,
        eps: label_smoothing as f64,
        zeta: z_loss as f64,
        has_bias: bias.is_some(),
        has_class_weight: class_w.is_some(),
        vt: vt.unwrap_or_else(|| forward_tile(chunk_size)).max(1),
    })
}

// ------------------------------------------------------------------ backward

/// Element offsets of the backward kernel's scratch sections.
pub(crate) struct BackwardScratch {
    state: [usize; 4],
    packed: usize,
    /// The head tile as `[vt][d]` rows, for `[d, V]` weights only.
    head_rows: Option<usize>,
    tile: usize,
    hidden: usize,
    /// The `dW` tile as `[vt][d]`, for `[d, V]` weights only.
    dw_tile: Option<usize>,
    /// Total elements.
    pub total: usize,
}

/// The backward kernel's scratch for a problem and a row block.
pub(crate) fn backward_scratch(p: &Problem, row_block: usize) -> BackwardScratch {
    let vt_pad = padded_tile(p.vt);
    let rows = row_block.max(FORWARD_ROWS).min(p.n.max(1));
    let sec = |len: usize| round_up(len, SECTION_ALIGN);
    let state_len = sec(p.n);
    let state = [0, state_len, 2 * state_len, 3 * state_len];
    let mut at = 4 * state_len;
    let mut take = |len: usize| {
        let here = at;
        at += sec(len);
        here
    };
    let packed = take(vt_pad * p.d);
    let head_rows = (!p.transpose_weight).then(|| take(vt_pad * p.d));
    let tile = take(rows * vt_pad);
    let hidden = take(rows * p.d);
    let dw_tile = (!p.transpose_weight).then(|| take(vt_pad * p.d));
    BackwardScratch { state, packed, head_rows, tile, hidden, dw_tile, total: at }
}

/// The buffers of the backward entry, in order: loss, dH, dW, [db], stats
/// (two i64: tiles, skipped), hidden, weight, labels, [bias], [class
/// weight], upstream gradient (`[N]` for `none`, else one element), scratch.
pub(crate) fn backward_buffer_count(p: &Problem) -> usize {
    9 + 2 * p.has_bias as usize + p.has_class_weight as usize
}

/// Emits the backward kernel and a `kiln_entry(ptr buffers)` calling it.
pub(crate) fn emit_backward_module(cg: &Cg<'_>, p: &Problem, row_block: usize, threshold: f64) -> Result<()> {
    let count = backward_buffer_count(p);
    let f = cg.checked_kernel_fn("k0_LinearCrossEntropyGrad", count);
    backward_body(cg, f, p, row_block, threshold)?;
    // The entry: load each buffer pointer and call the kernel.
    let ptr = cg.ctx.ptr_type(inkwell::AddressSpace::default());
    let i32t = cg.ctx.i32_type();
    let entry = cg.module.add_function(super::ENTRY, i32t.fn_type(&[ptr.into()], false), None);
    cg.add_target_attrs(entry);
    let block = cg.ctx.append_basic_block(entry, "entry");
    cg.b.position_at_end(block);
    let buffers = entry.get_nth_param(0).expect("the entry takes the buffer array").into_pointer_value();
    let mut args = Vec::with_capacity(count);
    for i in 0..count {
        let at = unsafe { cg.b.build_in_bounds_gep(ptr, buffers, &[cg.i64c(i as i64)], "slot")? };
        args.push(cg.b.build_load(ptr, at, "buf")?.into());
    }
    let status = cg.b.build_call(f, &args, "status")?;
    let status = status.try_as_basic_value().basic().expect("checked kernels return i32");
    cg.b.build_return(Some(&status))?;
    Ok(())
}

fn backward_body<'ctx>(
    cg: &Cg<'ctx>,
    f: FunctionValue<'ctx>,
    p: &Problem,
    row_block: usize,
    threshold: f64,
) -> Result<()> {
    let (dtype, n, d, vocab) = (p.dtype, p.n, p.d, p.vocab);
    let mut next = 0u32;
    let mut param = || {
        next += 1;
        cg.param(f, next - 1)
    };
    let lossp = param();
    let dhp = param();
    let dwp = param();
    let dbp = p.has_bias.then(&mut param);
    let statsp = param();
    let h = param();
    let w = param();
    let labels = param();
    let bias = p.has_bias.then(&mut param);
    let class_w = p.has_class_weight.then(&mut param);
    let gradp = param();
    let scratch = param();
    let e = make_emitter(cg, f, p, Inputs { h, w, labels, bias, class_w }, scratch)?;
    let layout = backward_scratch(p, row_block);
    let vt_pad = padded_tile(p.vt);
    let rows_per_block = row_block.max(1).min(n.max(1));
    let i64t = cg.i64t();

    // The forward: row states and the loss.
    let fwd_rows = FORWARD_ROWS.min(n.max(1));
    let all_rows = |body: &mut dyn FnMut(IntValue<'ctx>, usize) -> Result<()>| for_blocks(cg, f, n, fwd_rows, body);
    e.forward_state(layout.state, cg.i64c(layout.packed as i64), cg.i64c(layout.tile as i64), &all_rows)?;
    let total_w = e.losses(layout.state, lossp)?;

    // Per counted row: lse, the softmax coefficient c_i, the target
    // coefficient t_i and the scale s_i, over the forward's state.
    let total_class_w = if p.eps != 0.0 { e.total_class_weight()? } else { e.c(vocab as f64) };
    let f64t = cg.ctx.f64_type();
    let upstream = |i: IntValue<'ctx>| -> Result<BV<'ctx>> {
        let g = cg.load(gradp, dtype, if p.reduction == LossReduction::None { i } else { cg.i64c(0) })?;
        if p.reduction != LossReduction::Mean {
            return Ok(g);
        }
        let tw = cg.b.build_load(f64t, total_w, "tw")?;
        let tw = if dtype == DType::F64 {
            tw
        } else {
            cg.b.build_float_trunc(tw.into_float_value(), cg.f32t(), "tw")?.into()
        };
        cg.fdiv(g, tw)
    };
    let [lse_at, coef_at, tcoef_at, scale_at] = layout.state;
    cg.for_n(f, n, &mut |i| {
        e.by_row(
            i,
            &mut |label| {
                let lse = e.lse(layout.state, i)?;
                let wy = e.class_weight(label)?;
                let target = cg.fmul(wy, e.c(1.0 - p.eps))?;
                let mut coef = target;
                if p.zeta != 0.0 {
                    coef = cg.fadd(coef, cg.fmul(cg.fmul(wy, lse)?, e.c(2.0 * p.zeta))?)?;
                }
                if p.eps != 0.0 {
                    coef = cg.fadd(coef, cg.fmul(total_class_w, e.c(p.eps / vocab as f64))?)?;
                }
                let scale = upstream(i)?;
                cg.store(scratch, dtype, e.at(lse_at, i)?, lse)?;
                cg.store(scratch, dtype, e.at(coef_at, i)?, coef)?;
                cg.store(scratch, dtype, e.at(tcoef_at, i)?, target)?;
                cg.store(scratch, dtype, e.at(scale_at, i)?, scale)
            },
            &mut || Ok(()),
        )
    })?;

    // Zero the gradients; the tiles accumulate into them.
    let zero = e.c(0.0);
    cg.for_n(f, n * d, &mut |k| cg.store(dhp, dtype, k, zero))?;
    if p.transpose_weight {
        cg.for_n(f, vocab * d, &mut |k| cg.store(dwp, dtype, k, zero))?;
    }
    if let Some(dbp) = dbp {
        cg.for_n(f, vocab, &mut |k| cg.store(dbp, dtype, k, zero))?;
    }
    let tiles = cg.entry_alloca(f, i64t.into(), "tiles")?;
    let skipped = cg.entry_alloca(f, i64t.into(), "skipped")?;
    cg.b.build_store(tiles, cg.i64c(0))?;
    cg.b.build_store(skipped, cg.i64c(0))?;
    let over = cg.entry_alloca(f, cg.ctx.i8_type().into(), "over")?;
    let i8t = cg.ctx.i8_type();
    let smooth = p.eps / vocab as f64;

    for_blocks(cg, f, vocab, p.vt, &mut |v0, width| {
        e.pack_head(cg.i64c(layout.packed as i64), v0, width)?;
        if let (Some(rows_at), Some(dw_at)) = (layout.head_rows, layout.dw_tile) {
            // The [d, V] head's tile as rows, and a zero dW tile.
            cg.for_n(f, width, &mut |v| {
                let dst = cg.affine(v, d as i64, cg.i64c(rows_at as i64))?;
                let vv = cg.add(v0, v)?;
                cg.for_n(f, d, &mut |j| {
                    cg.store(scratch, dtype, cg.add(dst, j)?, cg.load(w, dtype, e.w_index(vv, j)?)?)
                })
            })?;
            cg.for_n(f, width * d, &mut |k| cg.store(scratch, dtype, cg.add(cg.i64c(dw_at as i64), k)?, zero))?;
        }
        for_blocks(cg, f, n, rows_per_block, &mut |r0, rows| {
            let counter = cg.b.build_load(i64t, tiles, "tiles")?.into_int_value();
            cg.b.build_store(tiles, cg.add(counter, cg.i64c(1))?)?;
            // The hidden block, ignored rows zeroed.
            cg.for_n(f, rows, &mut |r| {
                let i = cg.add(r0, r)?;
                let dst = cg.affine(r, d as i64, cg.i64c(layout.hidden as i64))?;
                let src = cg.mul(i, d as i64)?;
                e.by_row(
                    i,
                    &mut |_| {
                        cg.for_n(f, d, &mut |j| {
                            cg.store(scratch, dtype, cg.add(dst, j)?, cg.load(h, dtype, cg.add(src, j)?)?)
                        })
                    },
                    &mut || cg.for_n(f, d, &mut |j| cg.store(scratch, dtype, cg.add(dst, j)?, zero)),
                )
            })?;
            let (packed, tile) = (cg.i64c(layout.packed as i64), cg.i64c(layout.tile as i64));
            e.logits_tile(scratch, cg.i64c(layout.hidden as i64), rows, width, packed, tile)?;
            // u in place, then G = s·u; `over` records an |u| not below τ.
            cg.b.build_store(over, i8t.const_zero())?;
            cg.for_n(f, rows, &mut |r| {
                let i = cg.add(r0, r)?;
                let trow = cg.affine(r, vt_pad as i64, cg.i64c(layout.tile as i64))?;
                e.by_row(
                    i,
                    &mut |label| {
                        let lse = cg.load(scratch, dtype, e.at(lse_at, i)?)?;
                        let coef = cg.load(scratch, dtype, e.at(coef_at, i)?)?;
                        cg.for_n(f, width, &mut |k| {
                            let idx = cg.add(trow, k)?;
                            let x = e.biased(cg.load(scratch, dtype, idx)?, cg.add(v0, k)?)?;
                            // x ≤ lse up to the rounding of the recomputed logit.
                            let mut u = cg.fmul(coef, cg.exp_nonpositive(cg.fsub(x, lse)?)?)?;
                            if p.eps != 0.0 {
                                let wk = e.class_weight(cg.add(v0, k)?)?;
                                u = cg.fsub(u, cg.fmul(wk, e.c(smooth))?)?;
                            }
                            cg.store(scratch, dtype, idx, u)
                        })?;
                        let rel = cg.b.build_int_nsw_sub(label, v0, "rel")?;
                        let inside = cg.b.build_int_compare(IntPredicate::ULT, rel, cg.i64c(width as i64), "inside")?;
                        cg.if_then(f, inside, "target", &mut || {
                            let idx = cg.add(trow, rel)?;
                            let tcoef = cg.load(scratch, dtype, e.at(tcoef_at, i)?)?;
                            cg.store(scratch, dtype, idx, cg.fsub(cg.load(scratch, dtype, idx)?, tcoef)?)
                        })?;
                        let scale = cg.load(scratch, dtype, e.at(scale_at, i)?)?;
                        let tau = e.c(threshold);
                        cg.for_n(f, width, &mut |k| {
                            let idx = cg.add(trow, k)?;
                            let u = cg.load(scratch, dtype, idx)?;
                            if threshold > 0.0 {
                                // Unordered: a NaN counts as not below τ.
                                let au = cg.intrinsic("llvm.fabs", &[u])?;
                                let big = cg.fcmp(FloatPredicate::UGE, au, tau)?.into_int_value();
                                let big = cg.b.build_int_z_extend(big, i8t, "big")?;
                                let cur = cg.b.build_load(i8t, over, "over")?.into_int_value();
                                cg.b.build_store(over, cg.b.build_or(cur, big, "over")?)?;
                            }
                            cg.store(scratch, dtype, idx, cg.fmul(u, scale)?)
                        })
                    },
                    &mut || cg.for_n(f, width, &mut |k| cg.store(scratch, dtype, cg.add(trow, k)?, zero)),
                )
            })?;
            let accumulate = cg.ctx.append_basic_block(f, "accumulate");
            let skip = cg.ctx.append_basic_block(f, "skip");
            let done = cg.ctx.append_basic_block(f, "tile.done");
            if threshold > 0.0 {
                let o = cg.b.build_load(i8t, over, "over")?.into_int_value();
                let any = cg.b.build_int_compare(IntPredicate::NE, o, i8t.const_zero(), "any")?;
                cg.b.build_conditional_branch(any, accumulate, skip)?;
            } else {
                cg.b.build_unconditional_branch(accumulate)?;
            }
            cg.b.position_at_end(skip);
            let s = cg.b.build_load(i64t, skipped, "skipped")?.into_int_value();
            cg.b.build_store(skipped, cg.add(s, cg.i64c(1))?)?;
            cg.b.build_unconditional_branch(done)?;
            cg.b.position_at_end(accumulate);
            let (_, _, nr) = blocking(cg, dtype);
            // dH[block] += G · W_tile.
            let (head, head_off) = match layout.head_rows {
                Some(at) => (scratch, cg.i64c(at as i64)),
                None => (w, cg.mul(v0, d as i64)?),
            };
            emit_gemm(
                cg,
                f,
                &Gemm {
                    dtype,
                    m: rows,
                    n: d,
                    k: width,
                    a: scratch,
                    a_off: cg.i64c(layout.tile as i64),
                    a_rs: vt_pad as i64,
                    a_ks: 1,
                    b: head,
                    b_off: head_off,
                    b_ks: d as i64,
                    b_ps: nr as i64,
                    c: dhp,
                    c_off: cg.mul(r0, d as i64)?,
                    c_rs: d as i64,
                    accumulate: true,
                },
            )?;
            // dW_tile += Gᵀ · H_block.
            let (dw, dw_off) = match layout.dw_tile {
                Some(at) => (scratch, cg.i64c(at as i64)),
                None => (dwp, cg.mul(v0, d as i64)?),
            };
            emit_gemm(
                cg,
                f,
                &Gemm {
                    dtype,
                    m: width,
                    n: d,
                    k: rows,
                    a: scratch,
                    a_off: cg.i64c(layout.tile as i64),
                    a_rs: 1,
                    a_ks: vt_pad as i64,
                    b: scratch,
                    b_off: cg.i64c(layout.hidden as i64),
                    b_ks: d as i64,
                    b_ps: nr as i64,
                    c: dw,
                    c_off: dw_off,
                    c_rs: d as i64,
                    accumulate: true,
                },
            )?;
            if let Some(dbp) = dbp {
                cg.for_n(f, rows, &mut |r| {
                    let trow = cg.affine(r, vt_pad as i64, cg.i64c(layout.tile as i64))?;
                    cg.for_n(f, width, &mut |k| {
                        let at = cg.add(v0, k)?;
                        let g = cg.load(scratch, dtype, cg.add(trow, k)?)?;
                        cg.store(dbp, dtype, at, cg.fadd(cg.load(dbp, dtype, at)?, g)?)
                    })
                })?;
            }
            cg.b.build_unconditional_branch(done)?;
            cg.b.position_at_end(done);
            Ok(())
        })?;
        if let Some(dw_at) = layout.dw_tile {
            // The dW tile into the [d, V] gradient.
            cg.for_n(f, d, &mut |j| {
                cg.for_n(f, width, &mut |v| {
                    let x = cg.load(scratch, dtype, cg.add(cg.affine(v, d as i64, cg.i64c(dw_at as i64))?, j)?)?;
                    cg.store(dwp, dtype, e.w_index(cg.add(v0, v)?, j)?, x)
                })
            })?;
        }
        Ok(())
    })?;
    // An ignored row's dH is zero by definition (its G row was zero, but a
    // non-finite head entry would have left 0·inf = NaN).
    cg.for_n(f, n, &mut |i| {
        e.by_row(i, &mut |_| Ok(()), &mut || {
            cg.for_n(f, d, &mut |j| cg.store(dhp, dtype, cg.affine(i, d as i64, j)?, zero))
        })
    })?;
    let t = cg.b.build_load(i64t, tiles, "tiles")?;
    cg.store(statsp, DType::I64, cg.i64c(0), t)?;
    let s = cg.b.build_load(i64t, skipped, "skipped")?;
    cg.store(statsp, DType::I64, cg.i64c(1), s)?;
    cg.kernel_return(f)?;
    Ok(())
}
