//! The packed, register-blocked GEMM: `C = alpha·A·B (+ C)`, the kernel
//! behind MatMul and Gemm, and callable from other kernels through
//! [`emit_gemm`].
//!
//! # Design (GotoBLAS/BLIS)
//!
//! - **Microkernel.** An `MR × NR` tile of C lives in registers as
//!   `MR · NR/L` vectors of `L` lanes (`L` = the target's SIMD width for the
//!   element type). Each step along k loads `NR/L` vectors of a packed B
//!   row, broadcasts `MR` packed A values and issues `MR · NR/L` `llvm.fma`s:
//!   a rank-1 update. With AVX-512 the tile is 14 × 32 (28 accumulators of
//!   the 32 zmm registers); with 8 lanes (AVX2, 16 ymm registers) 6 × 16;
//!   with 4 (NEON, SSE) 6 × 8. The microkernel is one internal LLVM
//!   function per element type and tile, `kiln_gemm_ukr_<ty>_<MR>x<NR>`.
//! - **Packing.** For each `KC × NC` block of B (`NC` columns, `KC` depth),
//!   B is copied into `NR`-wide panels, each `KC` rows of `NR` contiguous
//!   values; for each `MC × KC` block of A, A is copied into `MR`-row panels,
//!   each `KC` columns of `MR` contiguous values. The microkernel then
//!   streams both with unit stride, whatever the layout of the operands
//!   (transposed, strided, narrower dtypes: packing reads any strides and
//!   widens f16/bf16 to f32). Panels past the edge of the matrix are padded
//!   with zeros, so the microkernel always computes a full tile. Row-major
//!   f32 A is not packed: the microkernel broadcasts from its `MR` rows in
//!   place ([`ALayout::Rows`]), and the last partial row panel takes the
//!   tail microkernel, so no row past A is read.
//! - **Loops.** `NC → KC → MC → NR → MR`: a packed B block (`KC × NC`, up
//!   to 2 MiB of f32) stays in L2/L3, a packed A block (`MC × KC`, 168 KiB)
//!   in L2, and one `KC × NR` B panel (32 KiB) in L1 while the A panels of
//!   the block pass over it.
//! - **Edges.** A tile that is cut by the edge of C (or whose C dtype is
//!   not the compute type) goes through a small stack tile that is then
//!   added or copied into C element by element.
//! - **Accumulation.** The first KC block stores `alpha·AB` (or adds it to
//!   C when the caller asks to accumulate); later blocks add. Outputs whose
//!   dtype is narrower than the compute type (f16, bf16) are not blocked
//!   over K, so each element is rounded once.
//! - **Threads.** A large f32 product ([`parallel_split`]) packs all of B
//!   once ([`pack_b_whole`]; at compile time for a constant B, see
//!   [`prepack_plan`], otherwise in a serial prologue), then splits into
//!   items of rows × a slab of columns per batch entry, each packing its A
//!   block on its thread's stack unless it reads A in place
//!   ([`emit_gemm_packed_b`]). Items never split a sum, so results do not
//!   depend on the thread count.
//! - **Gemm's C.** `beta·C_in` ([`GemmInit`]) is written into each tile of
//!   C by the first K block just before the microkernel adds to it, while
//!   the tile is in cache, instead of by a pass over all of C first.
//! - **Integers.** [`emit_gemm_i32`] runs the same loops on i32 (u8/i8
//!   operands widened and shifted by their zero points while packing,
//!   `mul` + `add` in the microkernel, wrapping like ONNX's reference):
//!   MatMulInteger and QLinearMatMul. A VNNI (`vpdpbusd`) microkernel is
//!   future work.
//!
//! # Calling it from another kernel
//!
//! ```ignore
//! // logits[r, v] = Σ_j H[row0 + r, j] · W[v0 + v, j] for a tile of rows
//! // and vocabulary entries (W is [V, d]: B(k, n) = W[n, k]).
//! gemm::emit_gemm(cg, f, &GemmSpec {
//!     m: rows, n: tile_len, k: cg.i64c(d as i64),          // run-time m, n are fine
//!     max: GemmDims { m: ROWS, n: TILE, k: d },           // bounds: size the scratch
//!     a: GemmOperand { ptr: h_at_row0, dtype: DType::F32, strides: (d as i64, 1) },
//!     b: GemmOperand { ptr: w_at_v0, dtype: DType::F32, strides: (1, d as i64) },
//!     c: tile_ptr, c_dtype: DType::F32, ldc: TILE as i64,
//!     alpha: 1.0, accumulate: false, init: None,
//!     scratch,                                            // gemm::scratch_bytes(F32, max) bytes, 64-aligned
//! })?;
//! ```

use super::Cg;
use crate::error::{BackendError, Result};
use crate::plan::{Loc, Plan, Slot, Step};
use crate::MatMulKernel;
use inkwell::attributes::AttributeLoc;
use inkwell::module::Linkage;
use inkwell::types::{BasicType, BasicTypeEnum, VectorType};
use inkwell::values::{BasicValue, BasicValueEnum, FunctionValue, IntValue, PointerValue};
use inkwell::{AddressSpace, IntPredicate};
use kiln_ir::dtype::DType;
use kiln_ir::op::Op;
use kiln_ir::tensor::Tensor;

type BV<'ctx> = BasicValueEnum<'ctx>;

/// How many k rows ahead the microkernel prefetches packed B.
const B_PREFETCH_ROWS: usize = 32;
/// Rows of A per packed block (a multiple of every `MR` below would waste
/// nothing; 168 = 12 · 14 = 28 · 6).
pub(crate) const MC: usize = 168;
/// Depth of a packed block: a `KC × 32` f32 B panel is 32 KiB, in L1.
const KC: usize = 256;
/// Columns of B per packed block: a `KC × NC` f32 block is 2 MiB.
const NC: usize = 2048;
/// The register tiles (`MR`, vectors per row) by f32 SIMD width: 32
/// vector registers with AVX-512 (28 accumulators, 2 B vectors, 1
/// broadcast), 16 otherwise (12 accumulators). Scratch is sized for all of
/// them, before the target is known.
const TILES: [(usize, usize, usize); 3] = [(16, 14, 2), (8, 6, 2), (4, 6, 2)];

/// Sizes of one product, the bounds that scratch is sized for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GemmDims {
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

/// One operand of a product: `X(r, c)` is element `r·strides.0 + c·strides.1`
/// of `ptr` (for A, `r` is the row of C and `c` the position along k; for
/// B, `r` is along k and `c` the column of C). Any strides work; packing is
/// fastest when one of them is 1.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GemmOperand<'ctx> {
    pub ptr: PointerValue<'ctx>,
    pub dtype: DType,
    pub strides: (i64, i64),
}

/// One product `C = alpha·A·B`, or `C += alpha·A·B` with `accumulate`, for
/// [`emit_gemm`].
///
/// - `m`, `n`, `k` may be run-time values (e.g. the last tile of a loop);
///   they must not exceed `max`, which sizes the blocks and the scratch.
/// - C is row-major with unit column stride and `ldc` elements between rows;
///   it must not overlap A, B or `scratch`.
/// - All three dtypes must compute in one float type: f32 (f32, f16, bf16)
///   or f64.
/// - `scratch` points to [`scratch_bytes`]`(c_dtype, max)` bytes, 64-byte
///   aligned, that the product may overwrite.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GemmSpec<'ctx> {
    pub m: IntValue<'ctx>,
    pub n: IntValue<'ctx>,
    pub k: IntValue<'ctx>,
    pub max: GemmDims,
    pub a: GemmOperand<'ctx>,
    pub b: GemmOperand<'ctx>,
    pub c: PointerValue<'ctx>,
    pub c_dtype: DType,
    pub ldc: i64,
    pub alpha: f64,
    pub accumulate: bool,
    /// Gemm's `beta·C_in`, which the first K block adds to each tile of C
    /// while it is in cache (instead of a pass writing it into C first);
    /// only without `accumulate`.
    pub init: Option<GemmInit<'ctx>>,
    pub scratch: PointerValue<'ctx>,
}

/// The initial value `beta·C_in` of a Gemm's output: element `(r, c)` of
/// C starts as `beta · C_in[r·strides.0 + c·strides.1]` (strides 0 along a
/// broadcast axis).
#[derive(Clone, Copy, Debug)]
pub(crate) struct GemmInit<'ctx> {
    pub ptr: PointerValue<'ctx>,
    pub dtype: DType,
    pub strides: (i64, i64),
    pub beta: f64,
}

impl<'ctx> GemmInit<'ctx> {
    /// `beta · C_in(row, col)` in the compute type `ty`.
    fn value(
        &self,
        cg: &Cg<'ctx>,
        ty: BasicTypeEnum<'ctx>,
        row: IntValue<'ctx>,
        col: IntValue<'ctx>,
    ) -> Result<BV<'ctx>> {
        let idx = cg.add(cg.mul(row, self.strides.0)?, cg.mul(col, self.strides.1)?)?;
        let v = cg.load(self.ptr, self.dtype, idx)?;
        if self.beta == 1.0 {
            return Ok(v);
        }
        cg.fmul(v, cg.fconst(ty.into_float_type().const_float(0.0).into(), self.beta))
    }
}

/// True for dtypes the packed GEMM computes in f64 rather than f32.
fn is_wide(dtype: DType) -> bool {
    dtype == DType::F64
}

/// Element bytes of the packed buffers for an output dtype.
fn packed_bytes(c_dtype: DType) -> usize {
    if is_wide(c_dtype) {
        8
    } else {
        4
    }
}

/// True when partial sums may be accumulated in C itself: C holds the
/// compute type exactly.
fn c_is_native(c_dtype: DType) -> bool {
    matches!(c_dtype, DType::F32 | DType::F64 | DType::I32)
}

/// The depth of the packed blocks for a product.
fn kc_for(c_dtype: DType, max: GemmDims) -> usize {
    if c_is_native(c_dtype) { KC.min(max.k) } else { max.k }.max(1)
}

/// Rounds `x` up to a multiple of `to`.
fn round_up(x: usize, to: usize) -> usize {
    x.div_ceil(to) * to
}

/// Bytes of scratch [`emit_gemm`] needs for products up to `max` with
/// output dtype `c_dtype`, on any target (the largest over the tiles of
/// [`TILES`]).
pub(crate) fn scratch_bytes(c_dtype: DType, max: GemmDims) -> usize {
    let wide = is_wide(c_dtype);
    TILES
        .iter()
        .map(|&(f32_lanes, mr, vecs)| {
            let tile = Tile { mr, vecs, lanes: lanes_of(f32_lanes, wide) };
            let (a, b) = pack_sizes(c_dtype, max, tile.mr, tile.nr());
            round_up(a, 64) + b
        })
        .max()
        .unwrap_or(0)
}

/// Bytes of the packed A block (`mr`-row panels) and B block (`nr`-wide
/// panels) for products up to `max`.
fn pack_sizes(c_dtype: DType, max: GemmDims, mr: usize, nr: usize) -> (usize, usize) {
    let kc = kc_for(c_dtype, max);
    let rows = MC.min(round_up(max.m.max(1), mr));
    let cols = NC.min(round_up(max.n.max(1), nr));
    let e = packed_bytes(c_dtype);
    (rows * kc * e, kc * cols * e)
}

/// Lanes of the element type for an f32 SIMD width.
fn lanes_of(f32_lanes: usize, wide: bool) -> usize {
    if wide {
        (f32_lanes / 2).max(1)
    } else {
        f32_lanes
    }
}

/// The register tile for a target: rows, vectors per row and lanes.
#[derive(Clone, Copy, Debug)]
struct Tile {
    mr: usize,
    vecs: usize,
    lanes: usize,
}

impl Tile {
    fn nr(&self) -> usize {
        self.vecs * self.lanes
    }
}

/// How a microkernel reads its A operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ALayout {
    /// Packed `MR`-row panels: `MR` consecutive values per step along k.
    Packed,
    /// A itself, row-major f32 with this many elements between rows: no
    /// packing pass, the microkernel broadcasts from `MR` rows at once.
    Rows(i64),
}

impl ALayout {
    /// Elements between consecutive steps along k, and between rows.
    fn strides(self, mr: usize) -> (i64, i64) {
        match self {
            ALayout::Packed => (mr as i64, 1),
            ALayout::Rows(lda) => (1, lda),
        }
    }
}

/// How a product reads A: in place when it is row-major f32, packed
/// otherwise. Reading in place skips the packing pass, which for the
/// few-hundred-row products of an encoder costs a tenth of the product;
/// measured, it is faster even where A's rows are 4 KiB apart and share
/// L1 sets (1024³: 13.3 → 12.5 ms), as the B panel the microkernel keeps
/// in L1 is prefetched anyway.
fn a_layout_for(a: &GemmOperand<'_>, c_dtype: DType) -> ALayout {
    let (si, sk) = a.strides;
    if reads_a_in_place(a.dtype, c_dtype, sk == 1) && si > 0 {
        ALayout::Rows(si)
    } else {
        ALayout::Packed
    }
}

/// Whether the microkernel reads an A of `a_dtype` in place (see
/// [`ALayout::Rows`]) for a product into `c_dtype`, when A's rows are
/// contiguous (`row_major`): f32 into f32 only, as packing is also where
/// narrower types are widened.
pub(crate) fn reads_a_in_place(a_dtype: DType, c_dtype: DType, row_major: bool) -> bool {
    a_dtype == DType::F32 && c_dtype == DType::F32 && row_major
}

fn tile_for(cg: &Cg<'_>, wide: bool) -> Tile {
    let f32_lanes = cg.lanes.max(1) as usize;
    // The widest entry the target reaches (entries are by decreasing width).
    let &(_, mr, vecs) = TILES.iter().find(|t| f32_lanes >= t.0).unwrap_or(&TILES[TILES.len() - 1]);
    Tile { mr, vecs, lanes: lanes_of(f32_lanes, wide) }
}

/// `min(a, b)` (folded when both are constants).
fn min<'ctx>(cg: &Cg<'ctx>, a: IntValue<'ctx>, b: IntValue<'ctx>) -> Result<IntValue<'ctx>> {
    if let (Some(x), Some(y)) = (a.get_sign_extended_constant(), b.get_sign_extended_constant()) {
        return Ok(cg.i64c(x.min(y)));
    }
    let lt = cg.b.build_int_compare(IntPredicate::SLT, a, b, "lt")?;
    Ok(cg.b.build_select(lt, a, b, "min")?.into_int_value())
}

/// `ceil(a / by)` for `a ≥ 0` (folded for constants).
fn ceil_div<'ctx>(cg: &Cg<'ctx>, a: IntValue<'ctx>, by: usize) -> Result<IntValue<'ctx>> {
    if let Some(x) = a.get_sign_extended_constant() {
        return Ok(cg.i64c((x.max(0) + by as i64 - 1) / by as i64));
    }
    let up = cg.b.build_int_nsw_add(a, cg.i64c(by as i64 - 1), "up")?;
    Ok(cg.b.build_int_signed_div(up, cg.i64c(by as i64), "blocks")?)
}

fn sub<'ctx>(cg: &Cg<'ctx>, a: IntValue<'ctx>, b: IntValue<'ctx>) -> Result<IntValue<'ctx>> {
    if b.get_zero_extended_constant() == Some(0) {
        return Ok(a);
    }
    Ok(cg.b.build_int_nsw_sub(a, b, "diff")?)
}

/// Product of two run-time values.
fn mul_v<'ctx>(cg: &Cg<'ctx>, a: IntValue<'ctx>, b: IntValue<'ctx>) -> Result<IntValue<'ctx>> {
    if let Some(x) = b.get_sign_extended_constant() {
        return cg.mul(a, x);
    }
    if let Some(x) = a.get_sign_extended_constant() {
        return cg.mul(b, x);
    }
    Ok(cg.b.build_int_nsw_mul(a, b, "prod")?)
}

/// The element type the packed blocks and the microkernel compute in.
#[derive(Clone, Copy, Debug)]
struct Elem<'ctx> {
    ty: BasicTypeEnum<'ctx>,
    /// i32 (integer products) rather than a float.
    int: bool,
    bytes: usize,
}

impl<'ctx> Elem<'ctx> {
    fn of(cg: &Cg<'ctx>, c_dtype: DType) -> Elem<'ctx> {
        match c_dtype {
            DType::F64 => Elem { ty: cg.ctx.f64_type().into(), int: false, bytes: 8 },
            DType::I32 => Elem { ty: cg.ctx.i32_type().into(), int: true, bytes: 4 },
            _ => Elem { ty: cg.f32t().into(), int: false, bytes: 4 },
        }
    }

    fn vec(&self, lanes: usize) -> VectorType<'ctx> {
        match self.ty {
            BasicTypeEnum::FloatType(t) => t.vec_type(lanes as u32),
            BasicTypeEnum::IntType(t) => t.vec_type(lanes as u32),
            other => unreachable!("GEMM elements are f32, f64 or i32, not {other:?}"),
        }
    }

    fn name(&self) -> &'static str {
        match (self.int, self.bytes) {
            (true, _) => "i32",
            (false, 8) => "f64",
            _ => "f32",
        }
    }

    /// `a + b` of two (vector) values of this element type.
    fn add(&self, cg: &Cg<'ctx>, a: BV<'ctx>, b: BV<'ctx>) -> Result<BV<'ctx>> {
        if !self.int {
            return cg.fadd(a, b);
        }
        Ok(match (a, b) {
            (BV::VectorValue(x), BV::VectorValue(y)) => cg.b.build_int_add(x, y, "add")?.into(),
            _ => cg.b.build_int_add(a.into_int_value(), b.into_int_value(), "add")?.into(),
        })
    }

    /// `acc + x·y` of vectors of this element type (`llvm.fma` for floats).
    fn mul_add(&self, cg: &Cg<'ctx>, x: BV<'ctx>, y: BV<'ctx>, acc: BV<'ctx>) -> Result<BV<'ctx>> {
        if !self.int {
            return cg.intrinsic("llvm.fma", &[x, y, acc]);
        }
        let p = cg.b.build_int_mul(x.into_vector_value(), y.into_vector_value(), "prod")?;
        Ok(cg.b.build_int_add(p, acc.into_vector_value(), "acc")?.into())
    }
}

/// A zero point subtracted from an integer operand while it is packed.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ZeroPoint<'ctx> {
    /// One value for the whole operand, at element 0 of the pointer.
    Scalar(PointerValue<'ctx>, DType),
    /// One value per row of A (per column of B), indexed by the row
    /// (column) of the product.
    PerIndex(PointerValue<'ctx>, DType),
}

/// How packing converts a loaded element: widening floats (done by
/// `Cg::load`) or, for integer products, extending to i32 and subtracting
/// the zero point of its row (A) or column (B).
#[derive(Clone, Copy)]
enum Convert<'ctx> {
    Float,
    Int { dtype: DType, zero: Option<ZeroPoint<'ctx>> },
}

impl<'ctx> Convert<'ctx> {
    /// The packed value of raw element `v` at row/column `at`.
    fn apply(&self, cg: &Cg<'ctx>, v: BV<'ctx>, at: IntValue<'ctx>) -> Result<BV<'ctx>> {
        let Convert::Int { dtype, zero } = *self else { return Ok(v) };
        let i32t = cg.ctx.i32_type();
        let wide = |x: BV<'ctx>, dtype: DType| -> Result<IntValue<'ctx>> {
            let x = x.into_int_value();
            Ok(if dtype == DType::U8 {
                cg.b.build_int_z_extend(x, i32t, "u8")?
            } else {
                cg.b.build_int_s_extend(x, i32t, "i8")?
            })
        };
        let v = wide(v, dtype)?;
        let Some(zp) = zero else { return Ok(v.into()) };
        let (ptr, zdt, idx) = match zp {
            ZeroPoint::Scalar(p, d) => (p, d, cg.i64c(0)),
            ZeroPoint::PerIndex(p, d) => (p, d, at),
        };
        let z = wide(cg.load(ptr, zdt, idx)?, zdt)?;
        Ok(cg.b.build_int_sub(v, z, "shifted")?.into())
    }
}

/// Address of element `idx` of a buffer of `ty` elements.
fn gep<'ctx>(
    cg: &Cg<'ctx>,
    ty: BasicTypeEnum<'ctx>,
    base: PointerValue<'ctx>,
    idx: IntValue<'ctx>,
) -> Result<PointerValue<'ctx>> {
    // In bounds: indices stay within the packed blocks and the operands.
    Ok(unsafe { cg.b.build_in_bounds_gep(ty, base, &[idx], "p")? })
}

/// Emits `C = alpha·A·B` (or `C += alpha·A·B`) into function `f` at the
/// builder's position; see [`GemmSpec`] for the contract. The builder ends
/// positioned after the product.
pub(crate) fn emit_gemm<'ctx>(cg: &Cg<'ctx>, f: FunctionValue<'ctx>, spec: &GemmSpec<'ctx>) -> Result<()> {
    let wide = is_wide(spec.c_dtype);
    for d in [spec.a.dtype, spec.b.dtype] {
        if !matches!(d, DType::F32 | DType::F64 | DType::F16 | DType::BF16) || is_wide(d) != wide {
            return Err(BackendError::Llvm(format!(
                "the packed GEMM computes {} outputs from f32-like or f64 operands, not {d}",
                spec.c_dtype
            )));
        }
    }
    emit_product(cg, f, spec, Convert::Float, Convert::Float)
}

/// Emits the integer product `C = (A - a_zero)·(B - b_zero)` (or `C +=`)
/// with u8/i8 operands and an i32 C, accumulated in i32 with wrapping
/// arithmetic (as ONNX MatMulInteger and numpy). `spec.alpha` must be 1.
/// A's zero point is per tensor or per row of the product, B's per tensor
/// or per column.
pub(crate) fn emit_gemm_i32<'ctx>(
    cg: &Cg<'ctx>,
    f: FunctionValue<'ctx>,
    spec: &GemmSpec<'ctx>,
    a_zero: Option<ZeroPoint<'ctx>>,
    b_zero: Option<ZeroPoint<'ctx>>,
) -> Result<()> {
    let ints = [spec.a.dtype, spec.b.dtype].iter().all(|d| matches!(d, DType::U8 | DType::I8));
    if !ints || spec.c_dtype != DType::I32 || spec.alpha != 1.0 {
        return Err(BackendError::Llvm(format!(
            "the integer GEMM computes i32 = u8/i8 x u8/i8 with alpha 1, not {} = {} x {} with alpha {}",
            spec.c_dtype, spec.a.dtype, spec.b.dtype, spec.alpha
        )));
    }
    let conv_a = Convert::Int { dtype: spec.a.dtype, zero: a_zero };
    let conv_b = Convert::Int { dtype: spec.b.dtype, zero: b_zero };
    emit_product(cg, f, spec, conv_a, conv_b)
}

fn emit_product<'ctx>(
    cg: &Cg<'ctx>,
    f: FunctionValue<'ctx>,
    spec: &GemmSpec<'ctx>,
    conv_a: Convert<'ctx>,
    conv_b: Convert<'ctx>,
) -> Result<()> {
    let wide = is_wide(spec.c_dtype);
    let ety = Elem::of(cg, spec.c_dtype);
    let ty = ety.ty;
    let tile = tile_for(cg, wide);
    let (mr, nr) = (tile.mr, tile.nr());
    if !MC.is_multiple_of(mr) || !NC.is_multiple_of(nr) {
        return Err(BackendError::Llvm(format!("a {mr}x{nr} GEMM tile does not fit the scratch sizing")));
    }
    let kc_max = kc_for(spec.c_dtype, spec.max);
    let (mc_max, nc_max) = (MC, NC);
    let (a_bytes, _) = pack_sizes(spec.c_dtype, spec.max, mr, nr);
    let pa = spec.scratch;
    let pb = unsafe {
        cg.b.build_in_bounds_gep(cg.ctx.i8_type(), spec.scratch, &[cg.i64c(round_up(a_bytes, 64) as i64)], "packed_b")?
    };
    // A is read in place only with all of its rows known: the partial row
    // panel must be the last one, with the tail kernel's rows.
    let a_layout = if spec.m.get_sign_extended_constant() == Some(spec.max.m as i64) {
        a_layout_for(&spec.a, spec.c_dtype)
    } else {
        ALayout::Packed
    };
    let mk = Macro::new(cg, f, spec, a_layout)?;
    let i1 = cg.ctx.bool_type();

    // Without accumulation, a product with k = 0 still runs one (empty)
    // block so that C is written (with zeros).
    let k_blocks = {
        let blocks = ceil_div(cg, spec.k, kc_max)?;
        match (spec.accumulate, blocks.get_sign_extended_constant()) {
            (true, _) => blocks,
            (false, Some(b)) => cg.i64c(b.max(1)),
            (false, None) => {
                let some = cg.b.build_int_compare(IntPredicate::SGT, blocks, cg.i64c(1), "blocks.gt1")?;
                cg.b.build_select(some, blocks, cg.i64c(1), "kblocks")?.into_int_value()
            }
        }
    };

    cg.for_range(f, ceil_div(cg, spec.n, nc_max)?, &mut |jc_i| {
        let jc = cg.mul(jc_i, nc_max as i64)?;
        let nc = min(cg, cg.i64c(nc_max as i64), sub(cg, spec.n, jc)?)?;
        cg.for_range(f, k_blocks, &mut |pc_i| {
            let pc = cg.mul(pc_i, kc_max as i64)?;
            let kc = min(cg, cg.i64c(kc_max as i64), sub(cg, spec.k, pc)?)?;
            pack_b(cg, f, ty, &spec.b, conv_b, pb, pc, jc, kc, nc, nr)?;
            let add = if spec.accumulate {
                i1.const_int(1, false)
            } else {
                cg.b.build_int_compare(IntPredicate::SGT, pc_i, cg.i64c(0), "add")?
            };
            cg.for_range(f, ceil_div(cg, spec.m, mc_max)?, &mut |ic_i| {
                let ic = cg.mul(ic_i, mc_max as i64)?;
                let mc = min(cg, cg.i64c(mc_max as i64), sub(cg, spec.m, ic)?)?;
                let a_block = a_block(cg, f, ty, a_layout, (&spec.a, conv_a), Some(pa), (ic, pc), (mc, kc), mr)?;
                macro_kernel(cg, f, &mk, a_block, pb, (ic, jc), (mc, nc), kc, add)
            })
        })
    })
}

// ---------------------------------------------------------------- threads

/// Items a parallel product is split into when its row blocks are fewer
/// (so that up to this many threads find work).
const TARGET_ITEMS: usize = 8;
/// Rows per item, when split finer than `MC`, are a multiple of this (the
/// AVX-512 register tile's rows).
const ROW_BLOCK_ALIGN: usize = 14;
/// Columns per item are a multiple of this, itself a multiple of every `NR`.
const SLAB_ALIGN: usize = 64;
/// Fewest columns per item when A is packed: each item packs its A block
/// again, one copy per multiply-add of `slab` (scalar copies against 32
/// multiply-adds a cycle), so narrow slabs would spend more time packing
/// than computing.
const SLAB_MIN: usize = 512;
/// Bytes of an item's block of C that stays in L2 (2 MiB per core on the
/// machines measured) beside the packed B panels it reads.
const C_BLOCK_BYTES: usize = 512 << 10;
/// Columns per item when A is read in place (nothing is repacked per
/// item) are a multiple of this, itself a multiple of every `NR`.
const SLAB_ALIGN_IN_PLACE: usize = 32;
/// Largest packed copy of B (all batches) a parallel product makes at run
/// time; past it the product runs serially, blocked over NC.
const PACKED_B_LIMIT: usize = 64 << 20;
/// Largest B packed at compile time (a constant weight): it costs no run
/// time memory beyond the constant itself, and saves repacking B on every
/// run, which for a wide weight (an LM head, 768 × 50257: 154 MB) is a
/// full extra pass over it, so the cap only bounds the compiled artifact.
const PREPACKED_B_LIMIT: usize = 1 << 30;
/// Largest packed A block kept on a thread's stack.
const A_STACK_LIMIT: usize = 256 << 10;
/// Smallest product (multiply-adds) worth splitting.
const MIN_PARALLEL_MACS: usize = 1 << 21;

/// How a product is split across threads: a serial prologue packs all of B
/// once into scratch ([`pack_b_whole`]); then each item, a block of
/// `row_block` rows times a slab of `slab` columns of one batch entry, packs
/// its own A block on its stack and runs the macro kernel
/// ([`emit_gemm_packed_b`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ParallelSplit {
    /// Rows per item: `MC`, or fewer when a product of few rows and few
    /// columns would otherwise make too few items.
    pub row_block: usize,
    pub row_blocks: usize,
    pub slab: usize,
    pub slabs: usize,
}

/// The number of output batch entries and of distinct B matrices of a
/// MatMul with operand shapes `a` and `b`.
pub(crate) fn batch_counts(a: &[usize], b: &[usize]) -> (usize, usize) {
    let batch = |s: &[usize]| if s.len() > 2 { s[..s.len() - 2].to_vec() } else { Vec::new() };
    let (ab, bb) = (batch(a), batch(b));
    let rank = ab.len().max(bb.len());
    let at = |v: &[usize], i: usize| if i + v.len() >= rank { v[i + v.len() - rank] } else { 1 };
    let out: usize = (0..rank).map(|i| at(&ab, i).max(at(&bb, i))).product();
    (out, bb.iter().product())
}

/// The split of a product on threads, or `None` when it runs serially
/// (small, not f32, or B too large to pack whole: the cap is higher when
/// `b_prepacked`, B packed at compile time). `a_in_place`: A is row-major
/// f32, which the microkernel reads without packing (see [`ALayout`]).
///
/// A product of few rows (an encoder's 128 tokens) is split by columns:
/// each thread then reads its own part of the weight B, where splitting
/// rows would have every thread stream all of it, and `NR`-wide slabs
/// split evenly where blocks of `MR` rows cannot (128 = 9·14 + 2).
pub(crate) fn parallel_split(
    dims: GemmDims,
    c_dtype: DType,
    batches: usize,
    b_batches: usize,
    b_prepacked: bool,
    a_in_place: bool,
) -> Option<ParallelSplit> {
    let GemmDims { m, n, k } = dims;
    let kc = kc_for(c_dtype, dims);
    let small = batches.saturating_mul(m).saturating_mul(n).saturating_mul(k) < MIN_PARALLEL_MACS;
    if c_dtype != DType::F32 || small || m == 0 || n == 0 || MC * kc * 4 > A_STACK_LIMIT {
        return None;
    }
    let limit = if b_prepacked { PREPACKED_B_LIMIT } else { PACKED_B_LIMIT };
    if packed_b_bytes(c_dtype, dims, b_batches) > limit {
        return None;
    }
    let row_items = batches * m.div_ceil(MC);
    let wanted = if row_items >= TARGET_ITEMS { 1 } else { TARGET_ITEMS.div_ceil(row_items) };
    // The widest slab whose block of C (at most MC rows) stays in L2
    // across the item's KC passes: an LM head's logits (128 × 50257) would
    // otherwise be read back from memory once per pass.
    let l2_cols = C_BLOCK_BYTES / (4 * m.min(MC));
    let slab = if wanted == 1 && n <= l2_cols {
        n
    } else if a_in_place {
        // At least `wanted` slabs (rounding the width down), so that
        // two, three or four threads get equal shares of a few hundred
        // columns.
        (n / wanted).min(l2_cols) / SLAB_ALIGN_IN_PLACE * SLAB_ALIGN_IN_PLACE
    } else {
        let slabs = wanted.min(n / SLAB_MIN).max(n.div_ceil(l2_cols.max(SLAB_MIN))).max(1);
        round_up(n.div_ceil(slabs), SLAB_ALIGN)
    }
    .max(SLAB_ALIGN_IN_PLACE);
    let slabs = n.div_ceil(slab);
    // Still too few items (with A packed, a 128 × 384 output is one block
    // of MC rows and one slab): split the rows finer. Unlike narrower slabs this packs
    // nothing twice, as each item packs only its own rows of A; blocks stay
    // a multiple of the widest register tile.
    let row_block = if batches * m.div_ceil(MC) * slabs >= TARGET_ITEMS {
        MC
    } else {
        let wanted_rows = TARGET_ITEMS.div_ceil(batches * slabs);
        round_up(m.div_ceil(wanted_rows), ROW_BLOCK_ALIGN).clamp(ROW_BLOCK_ALIGN, MC)
    };
    Some(ParallelSplit { row_block, row_blocks: m.div_ceil(row_block), slab, slabs })
}

/// Bytes of scratch of a MatMul/Gemm with operand shapes `a` and `b`,
/// output dtype `c_dtype` and kernel choice `kernel`: B packed whole for a
/// parallel product, the packed blocks for a serial one, none for the
/// simple loops.
pub(crate) fn matmul_scratch_bytes(
    a: &[usize],
    b: &[usize],
    c_dtype: DType,
    (trans_a, trans_b): (bool, bool),
    kernel: MatMulKernel,
) -> usize {
    let Some(dims) = matmul_dims(a, b, trans_a, trans_b) else { return 0 };
    if !uses_packed(dims, c_dtype, kernel) {
        return 0;
    }
    let (batches, b_batches) = batch_counts(a, b);
    // Planned before constants are packed: a product that only runs in
    // parallel with a prepacked B gets the serial scratch, which its
    // parallel kernel then leaves unused.
    match parallel_split(dims, c_dtype, batches, b_batches, false, false) {
        Some(_) => packed_b_bytes(c_dtype, dims, b_batches),
        None => scratch_bytes(c_dtype, dims),
    }
}

/// Packs, for a target of `f32_lanes`, the constant f32 B of every
/// MatMul/Gemm of `plan` that runs as a parallel product, once, into a new
/// constant (recorded in [`Plan::packed_b`]): its kernel then skips
/// packing B at run time (the scratch planned for it stays untouched). The
/// unpacked constant is dropped when nothing else reads it.
pub(crate) fn prepack_plan(plan: &mut Plan, f32_lanes: u32, kernel: MatMulKernel) {
    for s in 0..plan.steps.len() {
        let Step::Node(id) = plan.steps[s] else { continue };
        let node = plan.graph.node(id);
        let trans_b = match &node.op {
            Op::Gemm(g) => g.trans_b,
            Op::MatMul => false,
            _ => continue,
        };
        let trans_a = matches!(&node.op, Op::Gemm(g) if g.trans_a);
        let (Some(a), Some(b), Some(out)) = (node.input(0), node.input(1), node.output(0)) else { continue };
        let (ash, bsh) = (&plan.ty(a).shape, &plan.ty(b).shape);
        let (c_dtype, b_dtype) = (plan.ty(out).dtype, plan.ty(b).dtype);
        let Some(dims) = matmul_dims(ash, bsh, trans_a, trans_b) else { continue };
        let (batches, b_batches) = batch_counts(ash, bsh);
        let parallel = uses_packed(dims, c_dtype, kernel)
            && parallel_split(dims, c_dtype, batches, b_batches, true, false).is_some();
        if !parallel || c_dtype != DType::F32 || b_dtype != DType::F32 || plan.known(b).is_none() {
            continue;
        }
        let Some(Loc { slot: Slot::Const(ci), offset: 0 }) = plan.loc[b.index()] else { continue };
        let Some(packed) = prepack_b(&plan.consts[ci], dims, trans_b, b_batches, f32_lanes) else { continue };
        plan.consts.push(packed);
        plan.packed_b.insert(id, plan.consts.len() - 1);
        let only_reader = plan.graph.value(b).uses().len() == 1
            && !plan.graph.outputs().contains(&b)
            && plan.loc.iter().enumerate().all(|(v, l)| v == b.index() || l.is_none_or(|l| l.slot != Slot::Const(ci)));
        if only_reader {
            plan.consts[ci] = Tensor::zeros(DType::F32, &[0]);
        }
    }
}

/// B (`b_batches` matrices of `dims.k × dims.n`, read with `trans_b`)
/// packed as [`pack_b_whole`] lays it out for a target of `f32_lanes`, as
/// a flat f32 tensor; `None` unless `b` is a row-major f32 tensor of that
/// size.
pub(crate) fn prepack_b(b: &Tensor, dims: GemmDims, trans_b: bool, b_batches: usize, f32_lanes: u32) -> Option<Tensor> {
    let Tensor::F32(data) = b else { return None };
    let src = data.as_slice()?;
    let GemmDims { m: _, n, k } = dims;
    if src.len() != b_batches * k * n {
        return None;
    }
    let &(_, mr, vecs) = TILES.iter().find(|t| f32_lanes as usize >= t.0).unwrap_or(&TILES[TILES.len() - 1]);
    let nr = Tile { mr, vecs, lanes: lanes_of(f32_lanes as usize, false) }.nr();
    let kc_max = kc_for(DType::F32, dims);
    let width = round_up(n.max(1), nr);
    let mut out = vec![0f32; b_batches * k * width];
    for (bb, dst) in out.chunks_exact_mut((k * width).max(1)).enumerate().take(b_batches) {
        let matrix = &src[bb * k * n..(bb + 1) * k * n];
        let at = |kk: usize, j: usize| if trans_b { matrix[j * k + kk] } else { matrix[kk * n + j] };
        for pc in (0..k).step_by(kc_max) {
            let kc = kc_max.min(k - pc);
            let block = pc * width;
            let mut put = |kk: usize, j: usize| dst[block + (j / nr) * nr * kc + kk * nr + j % nr] = at(pc + kk, j);
            // Read B along its rows (a wide weight is hundreds of MB).
            if trans_b {
                (0..n).for_each(|j| (0..kc).for_each(|kk| put(kk, j)));
            } else {
                (0..kc).for_each(|kk| (0..n).for_each(|j| put(kk, j)));
            }
        }
    }
    let shape = [out.len()];
    Some(Tensor::F32(
        ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&shape), out)
            .expect("the element count matches the shape")
            .into_shared(),
    ))
}

/// Bytes of B packed whole ([`pack_b_whole`]) for `b_batches` matrices, on
/// any target.
pub(crate) fn packed_b_bytes(c_dtype: DType, dims: GemmDims, b_batches: usize) -> usize {
    let widest = TILES
        .iter()
        .map(|&(f32_lanes, mr, vecs)| Tile { mr, vecs, lanes: lanes_of(f32_lanes, is_wide(c_dtype)) }.nr())
        .map(|nr| round_up(dims.n.max(1), nr))
        .max()
        .unwrap_or(dims.n);
    b_batches * dims.k * widest * packed_bytes(c_dtype)
}

/// Elements of one B matrix packed whole on this target.
pub(crate) fn packed_b_elems(cg: &Cg<'_>, c_dtype: DType, dims: GemmDims) -> usize {
    let nr = tile_for(cg, is_wide(c_dtype)).nr();
    dims.k * round_up(dims.n.max(1), nr)
}

/// Packs all of B (`dims.k × dims.n`) into `dst`: the KC blocks one after
/// another, each as `NR`-wide panels across the whole width.
pub(crate) fn pack_b_whole<'ctx>(
    cg: &Cg<'ctx>,
    f: FunctionValue<'ctx>,
    b: &GemmOperand<'ctx>,
    c_dtype: DType,
    dims: GemmDims,
    dst: PointerValue<'ctx>,
) -> Result<()> {
    let ety = Elem::of(cg, c_dtype);
    let nr = tile_for(cg, is_wide(c_dtype)).nr();
    let kc_max = kc_for(c_dtype, dims);
    let width = round_up(dims.n.max(1), nr) as i64;
    cg.for_n(f, dims.k.div_ceil(kc_max), &mut |pc_i| {
        let pc = cg.mul(pc_i, kc_max as i64)?;
        let kc = min(cg, cg.i64c(kc_max as i64), sub(cg, cg.i64c(dims.k as i64), pc)?)?;
        let block = gep(cg, ety.ty, dst, cg.mul(pc, width)?)?;
        pack_b(cg, f, ety.ty, b, Convert::Float, block, pc, cg.i64c(0), kc, cg.i64c(dims.n as i64), nr)
    })
}

/// Emits rows `[ic, ic + mc)` and columns `[jc, jc + nc)` of the product of
/// `spec` (whose `m`, `n`, `k` must be the constants `spec.max`), with B
/// already packed whole at `pb` by [`pack_b_whole`]; A's block is packed on
/// the stack unless the microkernel can read it in place. Every item's
/// row block but the last is `row_block` rows. `spec.scratch` is not used.
pub(crate) fn emit_gemm_packed_b<'ctx>(
    cg: &Cg<'ctx>,
    f: FunctionValue<'ctx>,
    spec: &GemmSpec<'ctx>,
    pb: PointerValue<'ctx>,
    (ic, mc): (IntValue<'ctx>, IntValue<'ctx>),
    (jc, nc): (IntValue<'ctx>, IntValue<'ctx>),
    row_block: usize,
) -> Result<()> {
    let ety = Elem::of(cg, spec.c_dtype);
    let ty = ety.ty;
    let tile = tile_for(cg, is_wide(spec.c_dtype));
    let (mr, nr) = (tile.mr, tile.nr());
    let kc_max = kc_for(spec.c_dtype, spec.max);
    let width = round_up(spec.max.n.max(1), nr) as i64;
    let a_layout = if row_block.is_multiple_of(mr) { a_layout_for(&spec.a, spec.c_dtype) } else { ALayout::Packed };
    let pa = if a_layout == ALayout::Packed {
        let (a_bytes, _) = pack_sizes(spec.c_dtype, spec.max, mr, nr);
        let pa = cg.entry_alloca(f, ty.array_type((a_bytes / ety.bytes).max(1) as u32).into(), "packed_a")?;
        set_align(pa.as_basic_value_enum(), 64)?;
        Some(pa)
    } else {
        None
    };
    let mk = Macro::new(cg, f, spec, a_layout)?;
    let k_blocks = if spec.accumulate { spec.max.k.div_ceil(kc_max) } else { spec.max.k.div_ceil(kc_max).max(1) };
    cg.for_n(f, k_blocks, &mut |pc_i| {
        let pc = cg.mul(pc_i, kc_max as i64)?;
        let kc = min(cg, cg.i64c(kc_max as i64), sub(cg, spec.k, pc)?)?;
        let a_block = a_block(cg, f, ty, a_layout, (&spec.a, Convert::Float), pa, (ic, pc), (mc, kc), mr)?;
        let add = if spec.accumulate {
            cg.ctx.bool_type().const_int(1, false)
        } else {
            cg.b.build_int_compare(IntPredicate::SGT, pc_i, cg.i64c(0), "add")?
        };
        // The panel of column `jc` in this KC block.
        let block = cg.mul(pc, width)?;
        let b_panels = gep(cg, ty, pb, cg.add(block, mul_v(cg, jc, kc)?)?)?;
        macro_kernel(cg, f, &mk, a_block, b_panels, (ic, jc), (mc, nc), kc, add)
    })
}

/// What the macro kernel needs besides the blocks.
struct Macro<'ctx> {
    ety: Elem<'ctx>,
    tile: Tile,
    /// How the microkernels read the A block.
    a_layout: ALayout,
    ukr: FunctionValue<'ctx>,
    /// The microkernel of the last row panel when `m` is not a multiple of
    /// `MR`, with its row count (see [`tail_microkernel`]).
    tail: Option<(usize, FunctionValue<'ctx>)>,
    /// An `MR × NR` stack tile for edge tiles.
    tile_buf: PointerValue<'ctx>,
    alpha: BV<'ctx>,
    c: PointerValue<'ctx>,
    c_dtype: DType,
    ldc: i64,
    /// What the first K block adds to C (see [`GemmSpec::init`]).
    init: Option<GemmInit<'ctx>>,
}

impl<'ctx> Macro<'ctx> {
    /// The microkernels (A read as `a_layout`), the edge tile in `f`'s
    /// frame and the constants for the products of `spec`.
    fn new(cg: &Cg<'ctx>, f: FunctionValue<'ctx>, spec: &GemmSpec<'ctx>, a_layout: ALayout) -> Result<Self> {
        let ety = Elem::of(cg, spec.c_dtype);
        let tile = tile_for(cg, is_wide(spec.c_dtype));
        let ukr = microkernel(cg, ety, tile, tile.mr, a_layout)?;
        let tail = tail_microkernel(cg, ety, tile, spec.max.m, a_layout)?;
        let tile_buf = cg.entry_alloca(f, ety.ty.array_type((tile.mr * tile.nr()) as u32).into(), "c_tile")?;
        set_align(tile_buf.as_basic_value_enum(), 64)?;
        let alpha: BV = match ety.ty {
            BasicTypeEnum::FloatType(t) => t.const_float(spec.alpha).into(),
            _ => cg.ctx.i32_type().const_int(1, false).into(),
        };
        Ok(Macro {
            ety,
            tile,
            a_layout,
            ukr,
            tail,
            tile_buf,
            alpha,
            c: spec.c,
            c_dtype: spec.c_dtype,
            ldc: spec.ldc,
            init: spec.init,
        })
    }
}

/// Computes the `mc × nc` block of C at (`ic`, `jc`) from a packed A block
/// (`pa`, `MR`-row panels of depth `kc`) and packed B panels (`pb`, the
/// panel of column `jc` first, `NR · kc` elements apart): `NR` panels outer
/// (one stays in L1), `MR` panels inner. Full tiles of a native C go
/// straight to C; edge tiles (and narrow outputs) through the stack tile.
#[allow(clippy::too_many_arguments)]
fn macro_kernel<'ctx>(
    cg: &Cg<'ctx>,
    f: FunctionValue<'ctx>,
    mk: &Macro<'ctx>,
    pa: PointerValue<'ctx>,
    pb: PointerValue<'ctx>,
    (ic, jc): (IntValue<'ctx>, IntValue<'ctx>),
    (mc, nc): (IntValue<'ctx>, IntValue<'ctx>),
    kc: IntValue<'ctx>,
    add: IntValue<'ctx>,
) -> Result<()> {
    let (mr, nr) = (mk.tile.mr, mk.tile.nr());
    let (ty, ety) = (mk.ety.ty, mk.ety);
    let i1 = cg.ctx.bool_type();
    let native = c_is_native(mk.c_dtype);
    cg.for_range(f, ceil_div(cg, nc, nr)?, &mut |jr| {
        let j0 = cg.mul(jr, nr as i64)?;
        let cols = min(cg, cg.i64c(nr as i64), sub(cg, nc, j0)?)?;
        let b_panel = gep(cg, ty, pb, mul_v(cg, cg.mul(jr, nr as i64)?, kc)?)?;
        cg.for_range(f, ceil_div(cg, mc, mr)?, &mut |ir| {
            let i0 = cg.mul(ir, mr as i64)?;
            let rows = min(cg, cg.i64c(mr as i64), sub(cg, mc, i0)?)?;
            let a_panel = match mk.a_layout {
                ALayout::Packed => gep(cg, ty, pa, mul_v(cg, cg.mul(ir, mr as i64)?, kc)?)?,
                ALayout::Rows(lda) => gep(cg, ty, pa, cg.mul(ir, (mr as i64) * lda)?)?,
            };
            let c_at = cg.affine(cg.add(ic, i0)?, mk.ldc, cg.add(jc, j0)?)?;
            let call = |ukr: FunctionValue<'ctx>,
                        c: PointerValue<'ctx>,
                        ldc: IntValue<'ctx>,
                        add: IntValue<'ctx>|
             -> Result<()> {
                let args =
                    [kc.into(), a_panel.into(), b_panel.into(), c.into(), ldc.into(), add.into(), mk.alpha.into()];
                cg.b.build_call(ukr, &args, "")?;
                Ok(())
            };
            let via_tile = |cg: &Cg<'ctx>| -> Result<()> {
                let tile_ldc = cg.i64c(nr as i64);
                match (mk.a_layout, mk.tail) {
                    // A read in place has no rows past the product's: the
                    // last, partial row panel (the only one, as row blocks
                    // are then a multiple of MR) takes the tail kernel.
                    (ALayout::Rows(_), Some((tail_rows, tail_ukr))) => {
                        let is_tail =
                            cg.b.build_int_compare(IntPredicate::EQ, rows, cg.i64c(tail_rows as i64), "tail_rows")?;
                        cg.if_else(
                            f,
                            is_tail,
                            "tile.tail_rows",
                            &mut || call(tail_ukr, mk.tile_buf, tile_ldc, i1.const_zero()),
                            &mut || call(mk.ukr, mk.tile_buf, tile_ldc, i1.const_zero()),
                        )?;
                    }
                    _ => call(mk.ukr, mk.tile_buf, tile_ldc, i1.const_zero())?,
                }
                cg.for_range(f, rows, &mut |r| {
                    let c_row = cg.affine(r, mk.ldc, c_at)?;
                    let t_row = cg.mul(r, nr as i64)?;
                    cg.for_range(f, cols, &mut |j| {
                        let v = cg.b.build_load(ty, gep(cg, ty, mk.tile_buf, cg.add(t_row, j)?)?, "t")?;
                        let idx = cg.add(c_row, j)?;
                        let sum = match mk.init {
                            None => select_add(cg, ety, add, mk.c, mk.c_dtype, idx, v)?,
                            Some(init) => {
                                let old = cg.load(mk.c, mk.c_dtype, idx)?;
                                let row = cg.add(cg.add(ic, i0)?, r)?;
                                let first = init.value(cg, ty, row, cg.add(cg.add(jc, j0)?, j)?)?;
                                ety.add(cg, cg.b.build_select(add, old, first, "base")?, v)?
                            }
                        };
                        cg.store(mk.c, mk.c_dtype, idx, sum)
                    })
                })
            };
            if !native {
                return via_tile(cg);
            }
            let full_rows = cg.b.build_int_compare(IntPredicate::EQ, rows, cg.i64c(mr as i64), "full_rows")?;
            let full_cols = cg.b.build_int_compare(IntPredicate::EQ, cols, cg.i64c(nr as i64), "full_cols")?;
            let full = cg.b.build_and(full_rows, full_cols, "full")?;
            let c_ptr = cg.elem_ptr(mk.c, mk.c_dtype, c_at)?;
            // A tile straight to C; with an initial value, the first K
            // block writes it into the tile (in cache now) and the
            // microkernel adds to it.
            let direct_call = |ukr: FunctionValue<'ctx>, tile_rows: usize| -> Result<()> {
                let Some(init) = mk.init else { return call(ukr, c_ptr, cg.i64c(mk.ldc), add) };
                let first_block = cg.b.build_not(add, "first_block")?;
                cg.if_then(f, first_block, "tile.init", &mut || {
                    cg.for_n(f, tile_rows, &mut |r| {
                        let row = cg.add(cg.add(ic, i0)?, r)?;
                        let c_row = cg.affine(r, mk.ldc, c_at)?;
                        cg.for_n(f, nr, &mut |j| {
                            let first = init.value(cg, ty, row, cg.add(cg.add(jc, j0)?, j)?)?;
                            cg.store(mk.c, mk.c_dtype, cg.add(c_row, j)?, first)
                        })
                    })
                })?;
                call(ukr, c_ptr, cg.i64c(mk.ldc), i1.const_int(1, false))
            };
            let mut edge = || -> Result<()> {
                let Some((tail_rows, tail_ukr)) = mk.tail else { return via_tile(cg) };
                // The last row panel, full width: its own microkernel,
                // straight to C.
                let is_tail = cg.b.build_int_compare(IntPredicate::EQ, rows, cg.i64c(tail_rows as i64), "tail_rows")?;
                let tail_direct = cg.b.build_and(is_tail, full_cols, "tail_direct")?;
                cg.if_else(f, tail_direct, "tile.tail", &mut || direct_call(tail_ukr, tail_rows), &mut || via_tile(cg))
            };
            cg.if_else(f, full, "tile.direct", &mut || direct_call(mk.ukr, mr), &mut edge)
        })
    })
}

/// `C[idx] + v` when `add` is set, else `v`, in the compute type.
fn select_add<'ctx>(
    cg: &Cg<'ctx>,
    ety: Elem<'ctx>,
    add: IntValue<'ctx>,
    c: PointerValue<'ctx>,
    c_dtype: DType,
    idx: IntValue<'ctx>,
    v: BV<'ctx>,
) -> Result<BV<'ctx>> {
    match add.get_zero_extended_constant() {
        Some(0) => Ok(v),
        Some(_) => ety.add(cg, cg.load(c, c_dtype, idx)?, v),
        None => {
            // Loading C unconditionally is safe (the element is in C) and
            // keeps the loop branch-free.
            let old = cg.load(c, c_dtype, idx)?;
            let sum = ety.add(cg, old, v)?;
            Ok(cg.b.build_select(add, sum, v, "acc")?)
        }
    }
}

/// Packs the `kc × nc` block of B at (`pc`, `jc`) into `NR`-wide panels:
/// panel `p` holds, for each `kk`, the values `B(pc + kk, jc + p·NR + j)`
/// for `j < NR`, zero past the block's last column.
#[allow(clippy::too_many_arguments)]
fn pack_b<'ctx>(
    cg: &Cg<'ctx>,
    f: FunctionValue<'ctx>,
    ty: BasicTypeEnum<'ctx>,
    b: &GemmOperand<'ctx>,
    conv: Convert<'ctx>,
    dst: PointerValue<'ctx>,
    pc: IntValue<'ctx>,
    jc: IntValue<'ctx>,
    kc: IntValue<'ctx>,
    nc: IntValue<'ctx>,
    nr: usize,
) -> Result<()> {
    let (sk, sn) = b.strides;
    let zero: BV = ty.const_zero();
    cg.for_range(f, ceil_div(cg, nc, nr)?, &mut |p| {
        let j0 = cg.add(jc, cg.mul(p, nr as i64)?)?;
        let cols = min(cg, cg.i64c(nr as i64), sub(cg, nc, cg.mul(p, nr as i64)?)?)?;
        let panel = mul_v(cg, cg.mul(p, nr as i64)?, kc)?;
        let src0 = cg.add(cg.mul(pc, sk)?, cg.mul(j0, sn)?)?;
        if sn == 1 || sk != 1 {
            // Rows of the panel are (strided) runs of B's rows.
            cg.for_range(f, kc, &mut |kk| {
                let src = cg.affine(kk, sk, src0)?;
                let out = cg.affine(kk, nr as i64, panel)?;
                copy_padded(
                    cg,
                    f,
                    cols,
                    nr,
                    &mut |j| {
                        let v = cg.load(b.ptr, b.dtype, cg.affine(j, sn, src)?)?;
                        let v = conv.apply(cg, v, cg.add(j0, j)?)?;
                        cg.b.build_store(gep(cg, ty, dst, cg.add(out, j)?)?, v)?;
                        Ok(())
                    },
                    &mut |j| {
                        cg.b.build_store(gep(cg, ty, dst, cg.add(out, j)?)?, zero)?;
                        Ok(())
                    },
                )
            })
        } else {
            // B is transposed (unit stride along k): read along k.
            cg.for_range(f, cols, &mut |j| {
                let src = cg.affine(j, sn, src0)?;
                let out = cg.add(panel, j)?;
                cg.for_range(f, kc, &mut |kk| {
                    let v = conv.apply(cg, cg.load(b.ptr, b.dtype, cg.add(src, kk)?)?, cg.add(j0, j)?)?;
                    cg.b.build_store(gep(cg, ty, dst, cg.affine(kk, nr as i64, out)?)?, v)?;
                    Ok(())
                })
            })?;
            cg.for_range(f, sub(cg, cg.i64c(nr as i64), cols)?, &mut |t| {
                let out = cg.add(panel, cg.add(cols, t)?)?;
                cg.for_range(f, kc, &mut |kk| {
                    cg.b.build_store(gep(cg, ty, dst, cg.affine(kk, nr as i64, out)?)?, zero)?;
                    Ok(())
                })
            })
        }
    })
}

/// The A block at (`ic`, `pc`) as the microkernels of `layout` read it:
/// packed into `packed` (which a packed layout needs), or in place.
#[allow(clippy::too_many_arguments)]
fn a_block<'ctx>(
    cg: &Cg<'ctx>,
    f: FunctionValue<'ctx>,
    ty: BasicTypeEnum<'ctx>,
    layout: ALayout,
    (a, conv): (&GemmOperand<'ctx>, Convert<'ctx>),
    packed: Option<PointerValue<'ctx>>,
    (ic, pc): (IntValue<'ctx>, IntValue<'ctx>),
    (mc, kc): (IntValue<'ctx>, IntValue<'ctx>),
    mr: usize,
) -> Result<PointerValue<'ctx>> {
    match (layout, packed) {
        (ALayout::Rows(lda), _) => gep(cg, ty, a.ptr, cg.add(cg.mul(ic, lda)?, pc)?),
        (ALayout::Packed, Some(dst)) => {
            pack_a(cg, f, ty, a, conv, dst, ic, pc, mc, kc, mr)?;
            Ok(dst)
        }
        (ALayout::Packed, None) => Err(BackendError::Llvm("a packed A block needs a buffer to pack into".into())),
    }
}

/// Packs the `mc × kc` block of A at (`ic`, `pc`) into `MR`-row panels:
/// panel `p` holds, for each `kk`, the values `A(ic + p·MR + r, pc + kk)`
/// for `r < MR`, zero past the block's last row.
#[allow(clippy::too_many_arguments)]
fn pack_a<'ctx>(
    cg: &Cg<'ctx>,
    f: FunctionValue<'ctx>,
    ty: BasicTypeEnum<'ctx>,
    a: &GemmOperand<'ctx>,
    conv: Convert<'ctx>,
    dst: PointerValue<'ctx>,
    ic: IntValue<'ctx>,
    pc: IntValue<'ctx>,
    mc: IntValue<'ctx>,
    kc: IntValue<'ctx>,
    mr: usize,
) -> Result<()> {
    let (si, sk) = a.strides;
    let zero: BV = ty.const_zero();
    cg.for_range(f, ceil_div(cg, mc, mr)?, &mut |p| {
        let i0 = cg.add(ic, cg.mul(p, mr as i64)?)?;
        let rows = min(cg, cg.i64c(mr as i64), sub(cg, mc, cg.mul(p, mr as i64)?)?)?;
        let panel = mul_v(cg, cg.mul(p, mr as i64)?, kc)?;
        let src0 = cg.add(cg.mul(i0, si)?, cg.mul(pc, sk)?)?;
        if sk == 1 && si != 1 {
            // Row-major A: read each row along k, write with stride MR.
            cg.for_range(f, rows, &mut |r| {
                let src = cg.affine(r, si, src0)?;
                let out = cg.add(panel, r)?;
                cg.for_range(f, kc, &mut |kk| {
                    let v = conv.apply(cg, cg.load(a.ptr, a.dtype, cg.add(src, kk)?)?, cg.add(i0, r)?)?;
                    cg.b.build_store(gep(cg, ty, dst, cg.affine(kk, mr as i64, out)?)?, v)?;
                    Ok(())
                })
            })?;
            cg.for_range(f, sub(cg, cg.i64c(mr as i64), rows)?, &mut |t| {
                let out = cg.add(panel, cg.add(rows, t)?)?;
                cg.for_range(f, kc, &mut |kk| {
                    cg.b.build_store(gep(cg, ty, dst, cg.affine(kk, mr as i64, out)?)?, zero)?;
                    Ok(())
                })
            })
        } else {
            // Transposed A (unit stride along rows) or general strides.
            cg.for_range(f, kc, &mut |kk| {
                let src = cg.affine(kk, sk, src0)?;
                let out = cg.affine(kk, mr as i64, panel)?;
                copy_padded(
                    cg,
                    f,
                    rows,
                    mr,
                    &mut |r| {
                        let v = cg.load(a.ptr, a.dtype, cg.affine(r, si, src)?)?;
                        let v = conv.apply(cg, v, cg.add(i0, r)?)?;
                        cg.b.build_store(gep(cg, ty, dst, cg.add(out, r)?)?, v)?;
                        Ok(())
                    },
                    &mut |r| {
                        cg.b.build_store(gep(cg, ty, dst, cg.add(out, r)?)?, zero)?;
                        Ok(())
                    },
                )
            })
        }
    })
}

/// `copy(j)` for `j < valid`, then `pad(j)` for `valid ≤ j < width`. A full
/// run (`valid == width`, the common case) is a loop of constant length,
/// which LLVM turns into vector moves.
fn copy_padded<'ctx>(
    cg: &Cg<'ctx>,
    f: FunctionValue<'ctx>,
    valid: IntValue<'ctx>,
    width: usize,
    copy: &mut dyn FnMut(IntValue<'ctx>) -> Result<()>,
    pad: &mut dyn FnMut(IntValue<'ctx>) -> Result<()>,
) -> Result<()> {
    if valid.get_sign_extended_constant() == Some(width as i64) {
        return cg.for_n(f, width, copy);
    }
    let full = cg.b.build_int_compare(IntPredicate::EQ, valid, cg.i64c(width as i64), "full")?;
    let fast = cg.ctx.append_basic_block(f, "pack.full");
    let slow = cg.ctx.append_basic_block(f, "pack.edge");
    let done = cg.ctx.append_basic_block(f, "pack.done");
    cg.b.build_conditional_branch(full, fast, slow)?;
    cg.b.position_at_end(fast);
    cg.for_n(f, width, copy)?;
    cg.b.build_unconditional_branch(done)?;
    cg.b.position_at_end(slow);
    cg.for_range(f, valid, copy)?;
    cg.for_range(f, sub(cg, cg.i64c(width as i64), valid)?, &mut |t| pad(cg.add(valid, t)?))?;
    cg.b.build_unconditional_branch(done)?;
    cg.b.position_at_end(done);
    Ok(())
}

/// The microkernel for one element type and tile (emitted once per module):
/// `ukr(i64 kc, ptr a, ptr b, ptr c, i64 ldc, i1 add, T alpha)` computes
/// `acc = Σ_kk a[kk·MR + r] · b[kk·NR + j]` over `kk < kc` (`a[r·lda + kk]`
/// with A in place, [`ALayout::Rows`]) and stores
/// `c[r·ldc + j] = alpha·acc` (`+ c[...]` when `add`), for the whole
/// `MR × NR` tile. With `rows < MR` it computes and stores only the first
/// `rows` rows of the tile (a packed A panel keeps its `MR` stride): the last
/// panel of a product whose `m` is not a multiple of `MR` then costs its
/// own rows, not a whole tile's.
fn microkernel<'ctx>(
    cg: &Cg<'ctx>,
    ety: Elem<'ctx>,
    tile: Tile,
    rows: usize,
    a_layout: ALayout,
) -> Result<FunctionValue<'ctx>> {
    let ty = ety.ty;
    let tname = ety.name();
    let mut name = if rows == tile.mr {
        format!("kiln_gemm_ukr_{tname}_{}x{}", tile.mr, tile.nr())
    } else {
        format!("kiln_gemm_ukr_{tname}_{rows}of{}x{}", tile.mr, tile.nr())
    };
    if let ALayout::Rows(lda) = a_layout {
        name.push_str(&format!("_lda{lda}"));
    }
    if let Some(f) = cg.module.get_function(&name) {
        return Ok(f);
    }
    let ptr = cg.ctx.ptr_type(AddressSpace::default());
    let (i64t, i1) = (cg.i64t(), cg.ctx.bool_type());
    let fn_ty = cg
        .ctx
        .void_type()
        .fn_type(&[i64t.into(), ptr.into(), ptr.into(), ptr.into(), i64t.into(), i1.into(), ty.into()], false);
    let f = cg.module.add_function(&name, fn_ty, Some(Linkage::Internal));
    cg.add_target_attrs(f);
    for i in 1..=3 {
        f.add_attribute(AttributeLoc::Param(i), cg.enum_attr("noalias"));
    }
    let here = cg.b.get_insert_block();
    let entry = cg.ctx.append_basic_block(f, "entry");
    cg.b.position_at_end(entry);
    let param = |i: u32| f.get_nth_param(i).expect("the microkernel is declared with seven parameters");
    let kc = param(0).into_int_value();
    let (a, b, c) = (param(1).into_pointer_value(), param(2).into_pointer_value(), param(3).into_pointer_value());
    let ldc = param(4).into_int_value();
    let add = param(5).into_int_value();
    let alpha = param(6);
    let (mr, vecs, lanes) = (tile.mr, tile.vecs, tile.lanes);
    let nr = tile.nr();
    let vty = ety.vec(lanes);
    let vzero: BV = vty.const_zero().into();
    let splat = |x: BV<'ctx>| cg.splat(vty, x);
    let esize = ety.bytes;
    // Accumulators in stack slots, which SROA promotes to registers.
    let mut acc = Vec::with_capacity(rows * vecs);
    for r in 0..rows {
        for v in 0..vecs {
            let slot = cg.entry_alloca(f, vty.into(), &format!("acc{r}_{v}"))?;
            cg.b.build_store(slot, vzero)?;
            acc.push(slot);
        }
    }
    let next_panel = cg.mul(kc, nr as i64)?;
    cg.for_range(f, kc, &mut |kk| {
        let b_row = cg.mul(kk, nr as i64)?;
        // The first row panel to meet a B panel finds it in L3 or memory
        // (weights are read once per run): prefetch B_PREFETCH_ROWS rows
        // ahead, every cache line of the row. Later passes hit L1.
        let ahead = cg.add(b_row, cg.i64c((B_PREFETCH_ROWS * nr) as i64))?;
        // The same row of the next panel, into L2: the macro kernel's next
        // B panel then streams from memory while this one is computed,
        // instead of stalling its first row panel (an LM head's weight is
        // read once, from memory, at 2 bytes a multiply-add).
        let next = cg.add(b_row, next_panel)?;
        for line in 0..(nr * esize).div_ceil(64) {
            // Past the panel's end near its last rows: a plain (not
            // in-bounds) address, which a prefetch may point anywhere.
            let at = cg.add(ahead, cg.i64c((line * 64 / esize) as i64))?;
            // SAFETY: the address is only prefetched, never dereferenced.
            cg.prefetch_read(unsafe { cg.b.build_gep(ty, b, &[at], "b_ahead")? })?;
            let at = cg.add(next, cg.i64c((line * 64 / esize) as i64))?;
            // SAFETY: as above.
            cg.prefetch_read_l2(unsafe { cg.b.build_gep(ty, b, &[at], "b_next")? })?;
        }
        let mut bv = Vec::with_capacity(vecs);
        for v in 0..vecs {
            let p = gep(cg, ty, b, cg.add(b_row, cg.i64c((v * lanes) as i64))?)?;
            let x = cg.b.build_load(vty, p, "b")?;
            // Packed B is 64-byte aligned in the arena but not in a constant
            // packed at compile time (a Vec), so promise only element alignment.
            set_align(x, esize)?;
            bv.push(x);
        }
        let (a_k, a_r) = a_layout.strides(mr);
        let a_row = cg.mul(kk, a_k)?;
        for r in 0..rows {
            let x = cg.b.build_load(ty, gep(cg, ty, a, cg.add(a_row, cg.i64c(r as i64 * a_r))?)?, "a")?;
            let xs = splat(x)?;
            for v in 0..vecs {
                let slot = acc[r * vecs + v];
                let cur = cg.b.build_load(vty, slot, "acc")?;
                let next = ety.mul_add(cg, xs, bv[v], cur)?;
                cg.b.build_store(slot, next)?;
            }
        }
        Ok(())
    })?;
    let alpha_v = splat(alpha)?;
    let store_block = |adding: bool| -> Result<()> {
        for r in 0..rows {
            let row = cg.mul(ldc, r as i64)?;
            for v in 0..vecs {
                let p = gep(cg, ty, c, cg.add(row, cg.i64c((v * lanes) as i64))?)?;
                let sum = cg.b.build_load(vty, acc[r * vecs + v], "acc")?;
                let out = if adding {
                    let old = cg.b.build_load(vty, p, "c")?;
                    set_align(old, esize)?;
                    if ety.int {
                        ety.add(cg, sum, old)?
                    } else {
                        cg.intrinsic("llvm.fma", &[sum, alpha_v, old])?
                    }
                } else if ety.int {
                    sum
                } else {
                    cg.fmul(sum, alpha_v)?
                };
                let st = cg.b.build_store(p, out)?;
                st.set_alignment(esize as u32).map_err(|e| BackendError::Llvm(e.to_string()))?;
            }
        }
        Ok(())
    };
    cg.if_else(f, add, "store.add", &mut || store_block(true), &mut || store_block(false))?;
    cg.b.build_return(None)?;
    if let Some(block) = here {
        cg.b.position_at_end(block);
    }
    Ok(f)
}

/// The microkernel for the last row panel of a product with `m` rows, when
/// `m` is not a multiple of the tile's `MR`: with row blocks a multiple of
/// `MR`, that panel is the only partial one and has `m mod MR` rows.
fn tail_microkernel<'ctx>(
    cg: &Cg<'ctx>,
    ety: Elem<'ctx>,
    tile: Tile,
    m: usize,
    a_layout: ALayout,
) -> Result<Option<(usize, FunctionValue<'ctx>)>> {
    let rows = m % tile.mr;
    if rows == 0 {
        return Ok(None);
    }
    Ok(Some((rows, microkernel(cg, ety, tile, rows, a_layout)?)))
}

fn set_align(v: BV<'_>, bytes: usize) -> Result<()> {
    if let Some(inst) = v.as_instruction_value() {
        inst.set_alignment(bytes as u32).map_err(|e| BackendError::Llvm(e.to_string()))?;
    }
    Ok(())
}

/// The matrix sizes of a MatMul or Gemm with operand shapes `a` and `b`
/// (1-D operands promoted as numpy does), or `None` when they do not
/// multiply.
pub(crate) fn matmul_dims(a: &[usize], b: &[usize], trans_a: bool, trans_b: bool) -> Option<GemmDims> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let a2: Vec<usize> = if a.len() == 1 { vec![1, a[0]] } else { a.to_vec() };
    let b2: Vec<usize> = if b.len() == 1 { vec![b[0], 1] } else { b.to_vec() };
    let (ar, br) = (a2.len(), b2.len());
    let (m, k) = if trans_a { (a2[ar - 1], a2[ar - 2]) } else { (a2[ar - 2], a2[ar - 1]) };
    let (kb, n) = if trans_b { (b2[br - 1], b2[br - 2]) } else { (b2[br - 2], b2[br - 1]) };
    (k == kb).then_some(GemmDims { m, n, k })
}

/// True when MatMul/Gemm with these sizes and output dtype runs on the
/// packed GEMM with kernel choice `kernel`: products with a single row or
/// column are matrix-vector products, for which the simple loops are
/// faster, and [`MatMulKernel::Blocked`] asks for the loops; f16 and bf16
/// always take the packed path, which widens them while packing.
pub(crate) fn uses_packed(dims: GemmDims, dtype: DType, kernel: MatMulKernel) -> bool {
    match dtype {
        DType::F16 | DType::BF16 => true,
        DType::F32 | DType::F64 => kernel == MatMulKernel::Packed && dims.m > 1 && dims.n > 1,
        _ => false,
    }
}
