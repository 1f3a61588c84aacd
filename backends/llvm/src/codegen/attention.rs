//! ONNX-23 `Attention` as a flash-attention kernel: the `S × S` score
//! matrix is never formed.
//!
//! For each (batch, query head, block of query rows, see
//! [`crate::plan::attention_block_rows`]) the keys
//! and values are visited in tiles of [`ATTN_BK`] positions. Per tile and
//! query row, the scores `q·kᵀ·scale + bias` go to a small scratch tile,
//! and the row's running maximum `m` and sum `l` are updated the online
//! way (Milakov & Gimelshein; FlashAttention): with `m' = max(m, max_j s_j)`,
//! `l ← l·e^(m-m') + Σ_j e^(s_j-m')` and the output accumulator
//! `acc ← acc·e^(m-m') + Σ_j e^(s_j-m')·v_j`. After the last tile the row
//! is `acc / l`. A key/value tile stays in cache while every row of the
//! query block passes over it. The scratch (the per-row `m`, `l`, `acc`
//! and one score tile per row, and a packed key tile) is
//! `O(BQ · (ATTN_BK + Dv) + D · ATTN_BK)`, whatever
//! the sequence length; see [`crate::plan::attention_scratch_bytes`].
//!
//! The inner loops are explicit vectors of the target's f32 lanes. Each
//! key tile is packed transposed (`kt[e][j]`, widened to f32), so the
//! scores of a group of query rows are a register-blocked micro-GEMM: per
//! head-dimension element one broadcast Q value per row times the packed
//! row's vectors along the keys, into `rows × tile/lanes` accumulators.
//! Scaling, causal/padding masking, the tile max and the exponentials run
//! on whole vectors of a score row, softcap included (with a float/bool
//! mask or the scores output, that step is a per-element loop).
//! `acc ← acc·alpha + P·V` is a second micro-GEMM with the accumulator
//! rows in registers and V rows as vectors along `Dv` (f32 with `Dv` a
//! whole number of vectors; otherwise an element loop). With `is_causal`,
//! tiles entirely above the diagonal of a query block are skipped.
//!
//! Attention with `Dv` a whole number of vectors and no softcap, whose
//! mask (if any) is read by whole vectors, runs each tile a group of rows
//! at a time (f16/bf16 widened as the tiles are packed):
//! scores, exponentials and `P·V` back to back, with the online softmax's
//! rescale done lazily (only when a score passes the row's shift by 2^16)
//! and base-2 exponentials; see `Tiles::lazy_tile`. The value tile is copied
//! into the aligned scratch first, so that no vector load of it straddles
//! two cache lines.
//!
//! With past key/value caches (or when the `present_key`/`present_value`
//! outputs are asked for) the kernel first writes the present caches, the
//! past rows followed by the new keys and values, and attends over them;
//! causal query `i` then sees keys up to `i + past`.
//!
//! The optional `qk_matmul_output` (`[B, Hq, S, S_kv]`, O(S²) because the
//! caller asks for it) is written as the scores are computed: the scaled
//! (and softcapped) scores for modes 0 and 1, with the mask for mode 2,
//! and for mode 3 the probabilities, normalized by the row's final max and
//! sum after the last tile, following kiln's interpreter.
//!
//! `nonpad_kv_seqlen` masks the keys at or past each batch's length. f16
//! and bf16 tensors are widened to f32 as they are loaded; the running
//! state and the scratch are f32.
//!
//! A positive `softcap` bounds each score to `cap·tanh(s/cap)` before the
//! mask is applied, as in the ONNX reference.
//!
//! A query row whose every key is masked has `l = 0` and comes out NaN, as
//! it does in the interpreter and the ONNX reference (softmax of all -inf).

use super::parallel::ParallelKernel;
use super::Cg;
use crate::error::{BackendError, Result};
use crate::plan::{
    attention_block_rows, attention_geometry, attention_tile_stride, AttentionGeometry, Loc, Plan, Slot, ATTN_BK,
    ATTN_STACK_SCRATCH, ATTN_SUM_LANES,
};
use inkwell::types::VectorType;
use inkwell::values::{BasicValue, BasicValueEnum, FunctionValue, IntValue, PointerValue};
use inkwell::{FloatPredicate, IntPredicate};
use kiln_ir::dtype::DType;
use kiln_ir::graph::NodeId;
use kiln_ir::op::Op;
use std::f64::consts::LOG2_E;

type BV<'ctx> = BasicValueEnum<'ctx>;

/// How the mask (input 3) is read: element strides of its batch, head and
/// query axes after broadcasting (0 where it broadcasts), and its width
/// along the keys (keys at or past the width are masked out, as the ONNX
/// reference pads a short mask with -inf).
struct MaskLayout {
    dtype: DType,
    strides: [i64; 3],
    width: usize,
}

/// Emits the Attention kernel of node `id`. Rejects, as unsupported, what
/// the kernel does not do: past caches without the present outputs, and
/// element types other than f32, f16 and bf16.
pub(crate) fn attention<'ctx>(
    cg: &Cg<'ctx>,
    plan: &Plan,
    step: usize,
    id: NodeId,
) -> Result<(FunctionValue<'ctx>, Vec<Loc>)> {
    let node = plan.graph.node(id);
    let unsupported = |m: &str| BackendError::unsupported(&node.name, "Attention", m);
    let err = |m: String| BackendError::node(&node.name, "Attention", m);
    let Op::Attention(attrs) = &node.op else { return Err(err("not an Attention node".into())) };
    let nonpad = node.input(6);
    if let Some(lens) = nonpad {
        let t = plan.ty(lens);
        if t.dtype != DType::I64
            || t.len() != plan.ty(node.input(0).ok_or_else(|| err("Q is missing".into()))?).shape[0]
        {
            return Err(err(format!("nonpad_kv_seqlen must be int64[batch], found {}{:?}", t.dtype, t.shape)));
        }
    }
    let qk_out = node.output(3);
    if qk_out.is_some() && !(0..=3).contains(&attrs.qk_matmul_output_mode) {
        return Err(err(format!("qk_matmul_output_mode must be 0 to 3, found {}", attrs.qk_matmul_output_mode)));
    }
    let past = match (node.input(4), node.input(5)) {
        (None, None) => None,
        (Some(pk), Some(pv)) => Some((pk, pv)),
        _ => return Err(unsupported("only one of past_key and past_value")),
    };
    let present = match (node.output(1), node.output(2)) {
        (None, None) => None,
        (Some(pk), Some(pv)) => Some((pk, pv)),
        _ => return Err(unsupported("only one of present_key and present_value")),
    };
    if past.is_some() && present.is_none() {
        return Err(unsupported("past_key/past_value without the present_key/present_value outputs"));
    }
    // The softmax runs in f32, which is at least the asked-for precision
    // unless that is double.
    if attrs.softmax_precision == Some(DType::F64) {
        return Err(unsupported("a double softmax_precision"));
    }
    let geo = attention_geometry(&plan.graph, &plan.types, id).map_err(err)?;
    let (q, k, v) = (node.inputs[0], node.inputs[1], node.inputs[2]);
    let (Some(q), Some(k), Some(v)) = (q, k, v) else { return Err(err("Q, K and V are required".into())) };
    let y = node.output(0).ok_or_else(|| err("output 0 is missing".into()))?;
    let caches = past.into_iter().chain(present).flat_map(|(a, b)| [a, b]);
    // Narrow floats are widened to f32 on load and rounded on store.
    let xdt = plan.ty(q).dtype;
    for x in [q, k, v, y].into_iter().chain(caches).chain(qk_out) {
        let dtype = plan.ty(x).dtype;
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) || dtype != xdt {
            return Err(unsupported(&format!("{dtype} tensors (value `{}`)", plan.graph.value(x).name)));
        }
    }
    let mask = match node.input(3) {
        None => None,
        Some(m) => Some((
            m,
            mask_layout(&plan.ty(m).shape, plan.ty(m).dtype, &geo).map_err(|e| match e {
                MaskError::Dtype(d) => unsupported(&format!("a {d} attn_mask")),
                MaskError::Shape(s) => err(s),
            })?,
        )),
    };
    let scratch_offset = plan.scratch[step].ok_or_else(|| err("no scratch space was planned".into()))?;
    let scale = attrs.scale.map_or(1.0 / (geo.head_dim as f64).sqrt(), f64::from);

    let mut values = vec![y, q, k, v];
    values.extend(mask.as_ref().map(|(m, _)| *m));
    let past_at = values.len() as u32;
    values.extend(past.into_iter().flat_map(|(a, b)| [a, b]));
    let present_at = values.len() as u32;
    values.extend(present.into_iter().flat_map(|(a, b)| [a, b]));
    let qk_at = values.len() as u32;
    values.extend(qk_out);
    let nonpad_at = values.len() as u32;
    values.extend(nonpad);
    // Threads take (batch, query head, block of query rows) items, each
    // with a private scratch on its stack when that is small (it is unless
    // the value head is huge); otherwise the kernel stays serial on the
    // planned scratch in the arena.
    let bq = attention_block_rows(&geo);
    let q_blocks = geo.q_len.div_ceil(bq);
    let scratch_floats = crate::plan::attention_scratch_floats(&geo);
    let private = scratch_floats * 4 <= ATTN_STACK_SCRATCH;
    let items = geo.batch * geo.q_heads * q_blocks;
    let work = if private { bq * geo.kv_len * (geo.head_dim + geo.v_dim) * 2 } else { 0 };
    let mut kernel = cg.parallel_kernel_fn(&format!("k{step}_Attention"), values.len() + 1, items, work);
    let f = kernel.f;
    let (yp, qp, mut kp, mut vp) = (cg.param(f, 0), cg.param(f, 1), cg.param(f, 2), cg.param(f, 3));
    let maskp = mask.as_ref().map(|_| cg.param(f, 4));
    let scratch = if private {
        let slot = cg.entry_alloca(f, cg.f32t().array_type(scratch_floats as u32).into(), "scratch")?;
        // Whole vectors in it stay within one cache line (the arena's
        // planned offsets are 64-byte aligned too).
        if let Some(inst) = slot.as_instruction() {
            inst.set_alignment(64).map_err(|e| BackendError::Llvm(e.to_string()))?;
        }
        slot
    } else {
        cg.param(f, values.len() as u32)
    };
    let mut geo = geo;
    if present.is_some() {
        // The present caches are the past ones followed by the new keys and
        // values, 4-D; fill them (before any item reads them), then attend
        // over them.
        let total = geo.kv_len;
        let new_len = total - geo.past_len;
        let k_cache = crate::plan::AttentionStrides {
            batch: (geo.kv_heads * total * geo.head_dim) as i64,
            head: (total * geo.head_dim) as i64,
            row: geo.head_dim as i64,
        };
        let v_cache = crate::plan::AttentionStrides {
            batch: (geo.kv_heads * total * geo.v_dim) as i64,
            head: (total * geo.v_dim) as i64,
            row: geo.v_dim as i64,
        };
        let fill = &mut |f: FunctionValue<'ctx>| -> Result<()> {
            let past_ptrs = past.map(|_| (cg.param(f, past_at), cg.param(f, past_at + 1)));
            let (pk, pv) = (cg.param(f, present_at), cg.param(f, present_at + 1));
            let (kp, vp) = (cg.param(f, 2), cg.param(f, 3));
            for (cache, past_p, new_p, new_strides, dim) in [
                (pk, past_ptrs.map(|p| p.0), kp, geo.k, geo.head_dim),
                (pv, past_ptrs.map(|p| p.1), vp, geo.v, geo.v_dim),
            ] {
                cg.for_n(f, geo.batch, &mut |b| {
                    cg.for_n(f, geo.kv_heads, &mut |h| {
                        let bh = cg.affine(b, geo.kv_heads as i64, h)?;
                        let cache_base = cg.mul(bh, (total * dim) as i64)?;
                        if let Some(past_p) = past_p {
                            let past_base = cg.mul(bh, (geo.past_len * dim) as i64)?;
                            // Past rows are contiguous in both: one run of past_len·dim.
                            cg.for_n(f, geo.past_len * dim, &mut |e| {
                                let x = cg.load(past_p, xdt, cg.add(past_base, e)?)?;
                                cg.store(cache, xdt, cg.add(cache_base, e)?, x)
                            })?;
                        }
                        let new_base = cg.add(cg.mul(b, new_strides.batch)?, cg.mul(h, new_strides.head)?)?;
                        let cache_new = cg.add(cache_base, cg.i64c((geo.past_len * dim) as i64))?;
                        cg.for_n(f, new_len, &mut |r| {
                            let from = cg.affine(r, new_strides.row, new_base)?;
                            let to = cg.affine(r, dim as i64, cache_new)?;
                            cg.for_n(f, dim, &mut |e| {
                                let x = cg.load(new_p, xdt, cg.add(from, e)?)?;
                                cg.store(cache, xdt, cg.add(to, e)?, x)
                            })
                        })
                    })
                })?;
            }
            Ok(())
        };
        cg.parallel_prologue(&mut kernel, fill)?;
        (kp, vp) = (cg.param(f, present_at), cg.param(f, present_at + 1));
        geo.k = k_cache;
        geo.v = v_cache;
    }
    let softcap = (attrs.softcap > 0.0).then_some(f64::from(attrs.softcap));
    let scores = qk_out.map(|_| (cg.param(f, qk_at), attrs.qk_matmul_output_mode));
    let lens = nonpad.map(|_| cg.param(f, nonpad_at));
    emit_body(
        cg,
        &kernel,
        xdt,
        lens,
        &geo,
        scale,
        softcap,
        attrs.is_causal,
        [yp, qp, kp, vp],
        maskp.zip(mask.as_ref().map(|(_, l)| l)),
        scores,
        scratch,
    )?;
    cg.kernel_return(f)?;
    let mut locs: Vec<Loc> = values.iter().map(|&v| plan.loc(v)).collect();
    locs.push(Loc { slot: Slot::Arena, offset: scratch_offset });
    Ok((cg.finish_parallel(kernel)?, locs))
}

enum MaskError {
    Dtype(DType),
    Shape(String),
}

/// Broadcasts a mask of `shape` to `[batch, q_heads, q_len, ..]`,
/// right-aligned as numpy does; its last axis runs along the keys.
fn mask_layout(shape: &[usize], dtype: DType, geo: &AttentionGeometry) -> Result<MaskLayout, MaskError> {
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16 | DType::Bool) {
        return Err(MaskError::Dtype(dtype));
    }
    let target = [geo.batch, geo.q_heads, geo.q_len];
    let width = shape.last().copied().unwrap_or(0);
    if shape.is_empty() || shape.len() > 4 || width > geo.kv_len || width == 0 {
        return Err(MaskError::Shape(format!(
            "attn_mask of shape {shape:?} does not fit scores [{}, {}, {}, {}]",
            geo.batch, geo.q_heads, geo.q_len, geo.kv_len
        )));
    }
    let mut dims = [1usize; 3];
    let lead = &shape[..shape.len() - 1];
    dims[3 - lead.len()..].copy_from_slice(lead);
    let mut strides = [0i64; 3];
    let mut stride = width as i64;
    for axis in (0..3).rev() {
        strides[axis] = match (dims[axis], target[axis]) {
            (d, t) if d == t && d != 1 => stride,
            (1, _) => 0,
            _ => {
                return Err(MaskError::Shape(format!(
                    "attn_mask of shape {shape:?} does not broadcast to [{}, {}, {}, ..]",
                    geo.batch, geo.q_heads, geo.q_len
                )))
            }
        };
        stride *= dims[axis] as i64;
    }
    Ok(MaskLayout { dtype, strides, width })
}

/// `min(block, total - start)`.
fn tail<'ctx>(cg: &Cg<'ctx>, block: usize, total: usize, start: IntValue<'ctx>) -> Result<IntValue<'ctx>> {
    if total <= block {
        return Ok(cg.i64c(total as i64));
    }
    let left = cg.b.build_int_nsw_sub(cg.i64c(total as i64), start, "left")?;
    let short = cg.b.build_int_compare(IntPredicate::SLT, left, cg.i64c(block as i64), "short")?;
    Ok(cg.b.build_select(short, left, cg.i64c(block as i64), "count")?.into_int_value())
}

/// Explicit-vector helpers of the f32 fast path: `lanes`-wide loads and
/// stores (element-aligned: rows and tiles start anywhere), splats and
/// lane reductions.
struct Vec32<'a, 'ctx> {
    cg: &'a Cg<'ctx>,
    lanes: usize,
    vty: inkwell::types::VectorType<'ctx>,
}

impl<'ctx> Vec32<'_, 'ctx> {
    fn load(&self, base: PointerValue<'ctx>, idx: IntValue<'ctx>) -> Result<BV<'ctx>> {
        self.cg.load_f32_vector(self.vty, base, idx)
    }

    fn store(&self, base: PointerValue<'ctx>, idx: IntValue<'ctx>, v: BV<'ctx>) -> Result<()> {
        let p = self.cg.elem_ptr(base, DType::F32, idx)?;
        let st = self.cg.b.build_store(p, v)?;
        st.set_alignment(4).map_err(|e| BackendError::Llvm(e.to_string()))?;
        Ok(())
    }

    fn splat(&self, x: BV<'ctx>) -> Result<BV<'ctx>> {
        self.cg.splat(self.vty, x)
    }

    /// Key positions `first + 0 .. first + lanes` as an i64 vector.
    fn positions(&self, first: IntValue<'ctx>) -> Result<inkwell::values::VectorValue<'ctx>> {
        let i64t = self.cg.i64t();
        let ivty = i64t.vec_type(self.lanes as u32);
        let one = self.cg.b.build_insert_element(ivty.get_poison(), first, self.cg.ctx.i32_type().const_zero(), "k")?;
        let mask = self.cg.ctx.i32_type().vec_type(self.lanes as u32).const_zero();
        let base = self.cg.b.build_shuffle_vector(one, ivty.get_poison(), mask, "k_splat")?;
        let iota: Vec<IntValue> = (0..self.lanes as u64).map(|l| i64t.const_int(l, false)).collect();
        Ok(self.cg.b.build_int_add(base, VectorType::const_vector(&iota), "keys")?)
    }

    fn splat_i64(&self, x: IntValue<'ctx>) -> Result<inkwell::values::VectorValue<'ctx>> {
        let ivty = self.cg.i64t().vec_type(self.lanes as u32);
        let one = self.cg.b.build_insert_element(ivty.get_poison(), x, self.cg.ctx.i32_type().const_zero(), "x")?;
        let mask = self.cg.ctx.i32_type().vec_type(self.lanes as u32).const_zero();
        Ok(self.cg.b.build_shuffle_vector(one, ivty.get_poison(), mask, "splat")?)
    }

    /// Combines the lanes of each of `rows` (a power of two of them, at
    /// most `lanes`) with `op`, into one `<rows × f32>` vector: pairs of
    /// vectors are halved into one (each half of a vector's lanes one row's
    /// partial results), then the lanes within each row's group, by
    /// swapping neighbours. For 4 rows of 16 lanes that is 13 shuffles and
    /// combines where reducing each row alone takes 32.
    fn reduce_rows(
        &self,
        mut rows: Vec<BV<'ctx>>,
        op: &dyn Fn(BV<'ctx>, BV<'ctx>) -> Result<BV<'ctx>>,
    ) -> Result<BV<'ctx>> {
        let i32t = self.cg.ctx.i32_type();
        let n = self.lanes;
        let count = rows.len();
        let shuffle = |a: BV<'ctx>, b: BV<'ctx>, idx: &[usize]| -> Result<BV<'ctx>> {
            let idx: Vec<IntValue> = idx.iter().map(|&i| i32t.const_int(i as u64, false)).collect();
            Ok(self
                .cg
                .b
                .build_shuffle_vector(
                    a.into_vector_value(),
                    b.into_vector_value(),
                    VectorType::const_vector(&idx),
                    "r",
                )?
                .into())
        };
        // Each vector holds `groups` rows of `width` lanes.
        let (mut groups, mut width) = (1, n);
        while rows.len() > 1 {
            let half = width / 2;
            // Lane l of the result: group g = l / half of the pair (a's
            // groups first), element e = l % half of that group's half.
            let pick = |second_half: bool| -> Vec<usize> {
                (0..n)
                    .map(|l| {
                        let (g, e) = (l / half, l % half);
                        let (src, g) = if g < groups { (0, g) } else { (n, g - groups) };
                        src + g * width + e + if second_half { half } else { 0 }
                    })
                    .collect()
            };
            let (lo, hi) = (pick(false), pick(true));
            rows = rows
                .chunks(2)
                .map(|pair| op(shuffle(pair[0], pair[1], &lo)?, shuffle(pair[0], pair[1], &hi)?))
                .collect::<Result<_>>()?;
            groups *= 2;
            width = half;
        }
        let mut v = rows[0];
        let mut s = width / 2;
        while s >= 1 {
            let swapped: Vec<usize> = (0..n).map(|l| l ^ s).collect();
            v = op(v, shuffle(v, v, &swapped)?)?;
            s /= 2;
        }
        let firsts: Vec<usize> = (0..count).map(|g| g * width).collect();
        shuffle(v, v, &firsts)
    }

    /// Combines the lanes of `v` with `op` by halving (log2(lanes) steps
    /// instead of a serial chain: this runs once per row and tile); the
    /// order is fixed, so results are deterministic.
    fn reduce(&self, v: BV<'ctx>, op: &dyn Fn(BV<'ctx>, BV<'ctx>) -> Result<BV<'ctx>>) -> Result<BV<'ctx>> {
        let i32t = self.cg.ctx.i32_type();
        let mut v = v.into_vector_value();
        let mut width = self.lanes;
        while width > 1 {
            width /= 2;
            let half = |from: usize| -> Result<BV<'ctx>> {
                let idx: Vec<IntValue> = (from..from + width).map(|l| i32t.const_int(l as u64, false)).collect();
                Ok(self
                    .cg
                    .b
                    .build_shuffle_vector(v, v.get_type().get_poison(), VectorType::const_vector(&idx), "half")?
                    .into())
            };
            let (lo, hi) = (half(0)?, half(width)?);
            v = match op(lo, hi)? {
                BV::VectorValue(x) => x,
                other => return Ok(other),
            };
        }
        Ok(self.cg.b.build_extract_element(v, i32t.const_zero(), "lane")?)
    }
}

#[allow(clippy::too_many_arguments)]
fn emit_body<'ctx>(
    cg: &Cg<'ctx>,
    kernel: &ParallelKernel<'ctx>,
    xdt: DType,
    lens: Option<inkwell::values::PointerValue<'ctx>>,
    geo: &AttentionGeometry,
    scale: f64,
    softcap: Option<f64>,
    causal: bool,
    [yp, qp, kp, vp]: [inkwell::values::PointerValue<'ctx>; 4],
    mask: Option<(inkwell::values::PointerValue<'ctx>, &MaskLayout)>,
    scores: Option<(inkwell::values::PointerValue<'ctx>, i64)>,
    scratch: inkwell::values::PointerValue<'ctx>,
) -> Result<()> {
    let f = kernel.f;
    let dt = DType::F32;
    let like: BV = cg.f32t().const_float(0.0).into();
    let c = |v: f64| cg.fconst(like, v);
    let ninf = c(f64::NEG_INFINITY);
    let (bq, bk) = (attention_block_rows(geo), ATTN_BK.min(geo.kv_len).max(1));
    let (d, dv) = (geo.head_dim, geo.v_dim);
    // Scratch layout, in f32 elements: m[bq], l[bq], scores[bq × sbk],
    // acc[bq × dv], alpha[bq], tile maxima[bq], packed key tile
    // kt[d × sbk], lane-wise sums lsum[bq × ATTN_SUM_LANES], value tile
    // vt[sbk × dv] (see `plan::attention_scratch_floats`). Every offset is
    // a multiple of 16 floats (bq is), so vectors there are 64-byte
    // aligned.
    let sbk = attention_tile_stride(geo.kv_len);
    let (m_at, l_at, s_at) = (0i64, bq as i64, 2 * bq as i64);
    let acc_at = s_at + (bq * sbk) as i64;
    let alpha_at = acc_at + (bq * dv) as i64;
    let tmax_at = alpha_at + bq as i64;
    let kt_at = tmax_at + bq as i64;
    let lsum_at = kt_at + (d * sbk) as i64;
    let vt_at = lsum_at + (bq * ATTN_SUM_LANES) as i64;
    let layout = ScratchLayout {
        m: m_at,
        s: s_at,
        acc: acc_at,
        alpha: alpha_at,
        tmax: tmax_at,
        kt: kt_at,
        lsum: lsum_at,
        vt: vt_at,
    };
    let group = (geo.q_heads / geo.kv_heads) as u64;
    let q_blocks = geo.q_len.div_ceil(bq);
    let k_tiles = geo.kv_len.div_ceil(bk);
    let f32t = cg.f32t();
    let tmax = cg.entry_alloca(f, f32t.into(), "tile_max")?;
    let psum = cg.entry_alloca(f, f32t.into(), "tile_sum")?;
    // f32 tensors take the register-blocked vector path; narrow floats are
    // widened element by element (the scores still use packed tiles).
    let lanes = cg.lanes.max(1) as usize;
    let vecs = Vec32 { cg, lanes, vty: f32t.vec_type(lanes as u32) };
    let vector = lanes > 1 && lanes <= ATTN_SUM_LANES && sbk.is_multiple_of(lanes);
    let nv = sbk / lanes;
    // Query rows per micro-kernel call: enough accumulators to hide the
    // FMA latency, few enough to stay in registers (at most 16 vectors).
    let qk_rows = (16 / nv.max(1)).clamp(1, 4);
    let nvd = dv / lanes;
    // The value tile is copied (and widened) to f32 before the P·V
    // micro-GEMM, so any element type takes it.
    let pv_vector = vector && dv % lanes == 0 && nvd <= 16;
    let pv_rows = (16 / nvd.max(1)).clamp(1, 4);
    let pool_len = if vector { (qk_rows * nv).max(if pv_vector { pv_rows * nvd } else { 0 }) } else { 0 };
    let pool: Vec<PointerValue> =
        (0..pool_len).map(|_| cg.entry_alloca(f, vecs.vty.into(), "acc")).collect::<Result<_>>()?;
    // Columns past the last key exist in a short tile; they must not count.
    let ragged = geo.kv_len % sbk != 0;
    // A mask goes through the vector path when a tile's vector of keys is
    // one contiguous load of it: f32 (added) or bool (selecting), as wide
    // as the keys, and no short tile whose vector would read past a row.
    let vector_mask =
        mask.is_none_or(|(_, l)| matches!(l.dtype, DType::F32 | DType::Bool) && l.width >= geo.kv_len && !ragged);
    let vector_post = vector && vector_mask && scores.is_none();
    // The vector micro-GEMM stores the scores already scaled. When nothing
    // else edits them (no cap, mask, causal or padding limit, no short
    // tile) it also leaves each row's tile maximum, computed in registers,
    // and the per-row pass over the scores has nothing left to do.
    let premax = vector_post && softcap.is_none() && mask.is_none() && !ragged && lens.is_none() && !causal;
    // Attention whose scores nothing edits but masks, padding, a causal
    // limit or a short tile takes the lazily rescaled tiles of
    // [`Tiles::lazy_tile`]; the rest (softcap, the scores output, masks
    // not read by whole vectors) the general steps below.
    let lazy = vector_post && softcap.is_none() && pv_vector;
    let lazy_rows = qk_rows.min(pv_rows);

    // One item is one (batch, query head, query block).
    let per_batch = cg.i64c((geo.q_heads * q_blocks) as i64);
    cg.for_items(kernel, &mut |item| {
        let b = cg.b.build_int_unsigned_div(item, per_batch, "batch")?;
        let in_batch = cg.b.build_int_unsigned_rem(item, per_batch, "in_batch")?;
        let h = cg.b.build_int_unsigned_div(in_batch, cg.i64c(q_blocks as i64), "head")?;
        let qb = cg.b.build_int_unsigned_rem(in_batch, cg.i64c(q_blocks as i64), "q_block")?;
        // Keys at or past the batch's nonpad_kv_seqlen are padding.
        let valid = match lens {
            Some(lp) => {
                let n = cg.load(lp, DType::I64, b)?.into_int_value();
                let below = cg.b.build_int_compare(IntPredicate::SLT, n, cg.i64c(0), "neg")?;
                Some(cg.b.build_select(below, cg.i64c(0), n, "valid")?.into_int_value())
            }
            None => None,
        };
        let kh = cg.b.build_int_unsigned_div(h, cg.i64t().const_int(group, false), "kv_head")?;
        let q_base = cg.add(cg.mul(b, geo.q.batch)?, cg.mul(h, geo.q.head)?)?;
        let y_base = cg.add(cg.mul(b, geo.y.batch)?, cg.mul(h, geo.y.head)?)?;
        let k_base = cg.add(cg.mul(b, geo.k.batch)?, cg.mul(kh, geo.k.head)?)?;
        let v_base = cg.add(cg.mul(b, geo.v.batch)?, cg.mul(kh, geo.v.head)?)?;
        let qk_base = cg.mul(cg.affine(b, geo.q_heads as i64, h)?, (geo.q_len * geo.kv_len) as i64)?;
        let steps = Tiles {
            cg,
            f,
            vecs: &vecs,
            pool: &pool,
            scratch,
            at: layout,
            geo,
            xdt,
            sbk,
            bk,
            q: (qp, q_base),
            k: (kp, k_base),
            v: (vp, v_base),
        };
        let mask_base = match mask {
            Some((_, l)) => cg.add(cg.mul(b, l.strides[0])?, cg.mul(h, l.strides[1])?)?,
            None => cg.i64c(0),
        };
        let q0 = cg.mul(qb, bq as i64)?;
        let rows = tail(cg, bq, geo.q_len, q0)?;
        cg.for_range(f, rows, &mut |r| {
            cg.store(scratch, dt, cg.add(cg.i64c(m_at), r)?, ninf)?;
            cg.store(scratch, dt, cg.add(cg.i64c(l_at), r)?, c(0.0))?;
            if vector {
                let l_row = cg.affine(r, ATTN_SUM_LANES as i64, cg.i64c(lsum_at))?;
                vecs.store(scratch, l_row, vecs.splat(c(0.0))?)?;
            }
            let acc_row = cg.affine(r, dv as i64, cg.i64c(acc_at))?;
            cg.for_n(f, dv, &mut |e| cg.store(scratch, dt, cg.add(acc_row, e)?, c(0.0)))
        })?;
        if vector && ragged {
            // The packed tile's columns past a short tile's keys are read
            // by whole vectors; zeros keep their (ignored) scores finite.
            cg.for_n(f, d * sbk, &mut |e| cg.store(scratch, dt, cg.add(cg.i64c(kt_at), e)?, c(0.0)))?;
        }
        // Causal: the block's last row sees keys up to its own index
        // (plus the past), so later tiles hold nothing it may see,
        // unless the scores are an output.
        let tiles = if causal && scores.is_none() {
            let last_row = cg.add(cg.b.build_int_nsw_add(q0, rows, "end")?, cg.i64c(geo.past_len as i64))?;
            let needed = cg.b.build_int_signed_div(
                cg.b.build_int_nsw_add(last_row, cg.i64c(bk as i64 - 1), "up")?,
                cg.i64c(bk as i64),
                "needed",
            )?;
            let fewer = cg.b.build_int_compare(IntPredicate::SLT, needed, cg.i64c(k_tiles as i64), "fewer")?;
            cg.b.build_select(fewer, needed, cg.i64c(k_tiles as i64), "tiles")?.into_int_value()
        } else {
            cg.i64c(k_tiles as i64)
        };
        cg.for_range(f, tiles, &mut |t| {
            let k0 = cg.mul(t, bk as i64)?;
            let cols = tail(cg, bk, geo.kv_len, k0)?;
            // The mask, padding, causal limit and a short tile's missing
            // keys, applied to the vector `ch` of block row `r`'s scores
            // (`mask_scale` brings an additive mask to the scores' units).
            let edits = mask.is_some() || ragged || valid.is_some() || causal;
            let edit_scores = |r: IntValue<'ctx>, ch: usize, x: BV<'ctx>, mask_scale: f64| -> Result<BV<'ctx>> {
                let i = cg.add(q0, r)?;
                let vninf = vecs.splat(ninf)?;
                let mut s = x;
                if let Some((mp, layout)) = mask {
                    let key = cg.add(k0, cg.i64c((ch * lanes) as i64))?;
                    let at = cg.add(cg.affine(i, layout.strides[2], mask_base)?, key)?;
                    s = if layout.dtype == DType::Bool {
                        let bytes = cg.ctx.i8_type().vec_type(lanes as u32);
                        let raw = cg.b.build_load(bytes, cg.elem_ptr(mp, DType::Bool, at)?, "mask")?;
                        if let Some(inst) = raw.as_instruction_value() {
                            inst.set_alignment(1).map_err(|e| BackendError::Llvm(e.to_string()))?;
                        }
                        let keep = cg.b.build_int_compare(
                            IntPredicate::NE,
                            raw.into_vector_value(),
                            bytes.const_zero(),
                            "keep",
                        )?;
                        cg.select(keep.into(), s, vninf)?
                    } else if mask_scale == 1.0 {
                        cg.fadd(s, vecs.load(mp, at)?)?
                    } else {
                        cg.fmuladd(vecs.load(mp, at)?, vecs.splat(c(mask_scale))?, s)?
                    };
                }
                if ragged || valid.is_some() || causal {
                    let keys = vecs.positions(cg.add(k0, cg.i64c((ch * lanes) as i64))?)?;
                    let mut limits = Vec::new();
                    if ragged {
                        limits.push((IntPredicate::SGE, vecs.splat_i64(cg.i64c(geo.kv_len as i64))?));
                    }
                    if let Some(valid) = valid {
                        limits.push((IntPredicate::SGE, vecs.splat_i64(valid)?));
                    }
                    if causal {
                        let seen = cg.add(i, cg.i64c(geo.past_len as i64))?;
                        limits.push((IntPredicate::SGT, vecs.splat_i64(seen)?));
                    }
                    for (pred, limit) in limits {
                        let out = cg.b.build_int_compare(pred, keys, limit, "out")?;
                        s = cg.select(out.into(), vninf, s)?;
                    }
                }
                Ok(s)
            };
            if lazy {
                steps.pack_key_tile(k0, cols)?;
                steps.pack_value_tile(k0, cols)?;
                let next_first = cg.add(k0, cg.i64c(bk as i64))?;
                let edit = |r: IntValue<'ctx>, ch: usize, x: BV<'ctx>| edit_scores(r, ch, x, LOG2_E);
                let pass = |edit: Option<&dyn Fn(IntValue<'ctx>, usize, BV<'ctx>) -> Result<BV<'ctx>>>| {
                    steps.lazy_tile([lazy_rows, nv, nvd], scale, q0, rows, cols, edit, next_first)
                };
                if !edits {
                    return pass(None);
                }
                if mask.is_some() || valid.is_some() {
                    return pass(Some(&edit));
                }
                // Only a tile the causal diagonal or the end of the keys
                // cuts needs the edits (a fifth of a long causal
                // sequence's); the others take a copy without them.
                let mut cut = cg.ctx.bool_type().const_zero();
                if ragged {
                    let end = cg.add(k0, cg.i64c(sbk as i64))?;
                    let past_end =
                        cg.b.build_int_compare(IntPredicate::SGT, end, cg.i64c(geo.kv_len as i64), "short")?;
                    cut = cg.b.build_or(cut, past_end, "cut")?;
                }
                if causal {
                    let last_key = cg.add(k0, cg.b.build_int_nsw_sub(cols, cg.i64c(1), "last")?)?;
                    let first_seen = cg.add(q0, cg.i64c(geo.past_len as i64))?;
                    let diagonal = cg.b.build_int_compare(IntPredicate::SGT, last_key, first_seen, "diagonal")?;
                    cut = cg.b.build_or(cut, diagonal, "cut")?;
                }
                return cg.if_else(f, cut, "tile_edited", &mut || pass(Some(&edit)), &mut || pass(None));
            }
            // Raw scores q·kᵀ of the tile into the score rows.
            if vector {
                steps.scores(qk_rows, nv, scale, premax, q0, rows, k0, cols)?;
            } else {
                cg.for_range(f, rows, &mut |r| {
                    let q_row = cg.affine(cg.add(q0, r)?, geo.q.row, q_base)?;
                    let s_row = cg.affine(r, sbk as i64, cg.i64c(s_at))?;
                    cg.for_range(f, cols, &mut |j| {
                        let k_row = cg.affine(cg.add(k0, j)?, geo.k.row, k_base)?;
                        cg.b.build_store(psum, c(0.0))?;
                        cg.for_n(f, d, &mut |e| {
                            let qv = cg.load(qp, xdt, cg.add(q_row, e)?)?;
                            let kv = cg.load(kp, xdt, cg.add(k_row, e)?)?;
                            let cur = cg.b.build_load(f32t, psum, "dot")?;
                            cg.b.build_store(psum, cg.fadd_reassoc(cur, cg.fmul(qv, kv)?)?)?;
                            Ok(())
                        })?;
                        cg.store(scratch, dt, cg.add(s_row, j)?, cg.b.build_load(f32t, psum, "dot")?)
                    })
                })?;
            }
            // Per row: scale, cap and mask the scores, and take the tile's
            // maximum (the micro-GEMM left it when nothing edits them).
            cg.for_range(f, if premax { cg.i64c(0) } else { rows }, &mut |r| {
                let i = cg.add(q0, r)?;
                let s_row = cg.affine(r, sbk as i64, cg.i64c(s_at))?;
                let seen = cg.add(i, cg.i64c(geo.past_len as i64))?;
                let tile_max = if vector_post {
                    let mut vmax = vecs.splat(ninf)?;
                    for ch in 0..nv {
                        let at = cg.add(s_row, cg.i64c((ch * lanes) as i64))?;
                        // The micro-GEMM stored them scaled.
                        let mut s = vecs.load(scratch, at)?;
                        if let Some(cap) = softcap {
                            s = cg.fmul(cg.tanh(cg.fmul(s, vecs.splat(c(1.0 / cap))?)?)?, vecs.splat(c(cap))?)?;
                        }
                        s = edit_scores(r, ch, s, 1.0)?;
                        vecs.store(scratch, at, s)?;
                        vmax = cg.fmax_ignoring_nan(vmax, s)?;
                    }
                    vecs.reduce(vmax, &|a, b| cg.fmax_ignoring_nan(a, b))?
                } else {
                    cg.b.build_store(tmax, ninf)?;
                    cg.for_range(f, cols, &mut |j| {
                        let kj = cg.add(k0, j)?;
                        let at = cg.add(s_row, j)?;
                        let raw = cg.load(scratch, dt, at)?;
                        let mut s = if vector { raw } else { cg.fmul(raw, c(scale))? };
                        if let Some(cap) = softcap {
                            s = cg.fmul(cg.tanh(cg.fmul(s, c(1.0 / cap))?)?, c(cap))?;
                        }
                        let unbiased = s;
                        if let Some((mp, layout)) = mask {
                            // A key past a short mask's width is masked; its
                            // load index is clamped to stay in bounds.
                            let inside =
                                cg.b.build_int_compare(IntPredicate::SLT, kj, cg.i64c(layout.width as i64), "in_mask")?;
                            let col = if layout.width < geo.kv_len {
                                cg.b.build_select(inside, kj, cg.i64c(layout.width as i64 - 1), "col")?.into_int_value()
                            } else {
                                kj
                            };
                            let at = cg.add(cg.affine(i, layout.strides[2], mask_base)?, col)?;
                            let mv = cg.load(mp, layout.dtype, at)?;
                            s = if layout.dtype == DType::Bool { cg.select(mv, s, ninf)? } else { cg.fadd(s, mv)? };
                            if layout.width < geo.kv_len {
                                s = cg.select(inside.into(), s, ninf)?;
                            }
                        }
                        if let Some(valid) = valid {
                            let pad = cg.b.build_int_compare(IntPredicate::SGE, kj, valid, "pad")?;
                            s = cg.select(pad.into(), ninf, s)?;
                        }
                        if causal {
                            let future = cg.b.build_int_compare(IntPredicate::SGT, kj, seen, "future")?;
                            s = cg.select(future.into(), ninf, s)?;
                        }
                        cg.store(scratch, dt, at, s)?;
                        if let Some((qkp, mode)) = scores {
                            // Modes 2 and 3 start from the biased scores (3 is
                            // normalized once the row's max and sum are final).
                            let at = cg.add(cg.affine(i, geo.kv_len as i64, qk_base)?, kj)?;
                            cg.store(qkp, xdt, at, if mode >= 2 { s } else { unbiased })?;
                        }
                        let cur = cg.b.build_load(f32t, tmax, "tmax")?;
                        cg.b.build_store(tmax, cg.fmaxnum(cur, s)?)?;
                        Ok(())
                    })?;
                    cg.b.build_load(f32t, tmax, "tmax")?
                };
                cg.store(scratch, dt, cg.add(cg.i64c(tmax_at), r)?, tile_max)
            })?;
            // The rows' running maxima and rescale factors, a vector of
            // rows at a time.
            update_row_maxima(cg, f, &vecs, rows, [m_at, tmax_at, alpha_at], scratch)?;
            // Per row: the tile's exponentials and the running sum.
            cg.for_range(f, rows, &mut |r| {
                let s_row = cg.affine(r, sbk as i64, cg.i64c(s_at))?;
                let l_slot = cg.add(cg.i64c(l_at), r)?;
                let shift = cg.load(scratch, dt, cg.add(cg.i64c(tmax_at), r)?)?;
                let alpha = cg.load(scratch, dt, cg.add(cg.i64c(alpha_at), r)?)?;
                let tile_sum = if vector {
                    let vshift = vecs.splat(shift)?;
                    let mut vsum = vecs.splat(c(0.0))?;
                    for ch in 0..nv {
                        let at = cg.add(s_row, cg.i64c((ch * lanes) as i64))?;
                        let mut p = cg.exp_nonpositive(cg.fsub(vecs.load(scratch, at)?, vshift)?)?;
                        if ragged {
                            // Columns past the tile's keys hold stale scores.
                            let keys = vecs.positions(cg.add(k0, cg.i64c((ch * lanes) as i64))?)?;
                            let limit = vecs.splat_i64(cg.i64c(geo.kv_len as i64))?;
                            let inside = cg.b.build_int_compare(IntPredicate::SLT, keys, limit, "inside")?;
                            p = cg.select(inside.into(), p, vecs.splat(c(0.0))?)?;
                        }
                        vecs.store(scratch, at, p)?;
                        vsum = cg.fadd(vsum, p)?;
                    }
                    // The running sum stays lane-wise, `l ← l·alpha + Σ p`
                    // per lane, and is reduced once after the last tile.
                    let l_row = cg.affine(r, ATTN_SUM_LANES as i64, cg.i64c(lsum_at))?;
                    let l_new = cg.fmuladd(vecs.load(scratch, l_row)?, vecs.splat(alpha)?, vsum)?;
                    return vecs.store(scratch, l_row, l_new);
                } else {
                    cg.b.build_store(psum, c(0.0))?;
                    cg.for_range(f, cols, &mut |j| {
                        let at = cg.add(s_row, j)?;
                        let p = cg.exp_nonpositive(cg.fsub(cg.load(scratch, dt, at)?, shift)?)?;
                        cg.store(scratch, dt, at, p)?;
                        let cur = cg.b.build_load(f32t, psum, "psum")?;
                        cg.b.build_store(psum, cg.fadd_reassoc(cur, p)?)?;
                        Ok(())
                    })?;
                    cg.b.build_load(f32t, psum, "psum")?
                };
                let l_old = cg.load(scratch, dt, l_slot)?;
                let l_new = cg.fadd(cg.fmul(l_old, alpha)?, tile_sum)?;
                cg.store(scratch, dt, l_slot, l_new)
            })?;
            // acc ← acc·alpha + P·V_tile.
            if pv_vector {
                steps.pv(pv_rows, nvd, rows, k0, cols)
            } else {
                cg.for_range(f, rows, &mut |r| {
                    let s_row = cg.affine(r, sbk as i64, cg.i64c(s_at))?;
                    let alpha = cg.load(scratch, dt, cg.add(cg.i64c(alpha_at), r)?)?;
                    let acc_row = cg.affine(r, dv as i64, cg.i64c(acc_at))?;
                    cg.for_n(f, dv, &mut |e| {
                        let at = cg.add(acc_row, e)?;
                        cg.store(scratch, dt, at, cg.fmul(cg.load(scratch, dt, at)?, alpha)?)
                    })?;
                    cg.for_range(f, cols, &mut |j| {
                        let p = cg.load(scratch, dt, cg.add(s_row, j)?)?;
                        let v_row = cg.affine(cg.add(k0, j)?, geo.v.row, v_base)?;
                        cg.for_n(f, dv, &mut |e| {
                            let at = cg.add(acc_row, e)?;
                            let vv = cg.load(vp, xdt, cg.add(v_row, e)?)?;
                            cg.store(scratch, dt, at, cg.fadd(cg.load(scratch, dt, at)?, cg.fmul(p, vv)?)?)
                        })
                    })
                })
            }
        })?;
        if vector {
            cg.for_range(f, rows, &mut |r| {
                let lanes_sum = vecs.load(scratch, cg.affine(r, ATTN_SUM_LANES as i64, cg.i64c(lsum_at))?)?;
                cg.store(scratch, dt, cg.add(cg.i64c(l_at), r)?, vecs.reduce(lanes_sum, &|a, b| cg.fadd(a, b))?)
            })?;
        }
        if let Some((qkp, 3)) = scores {
            cg.for_range(f, rows, &mut |r| {
                let row = cg.affine(cg.add(q0, r)?, geo.kv_len as i64, qk_base)?;
                let m = cg.load(scratch, dt, cg.add(cg.i64c(m_at), r)?)?;
                let l = cg.load(scratch, dt, cg.add(cg.i64c(l_at), r)?)?;
                let finite = cg.fcmp(FloatPredicate::ONE, m, ninf)?;
                let shift = cg.select(finite, m, c(0.0))?;
                cg.for_n(f, geo.kv_len, &mut |j| {
                    let at = cg.add(row, j)?;
                    let p = cg.exp_nonpositive(cg.fsub(cg.load(qkp, xdt, at)?, shift)?)?;
                    cg.store(qkp, xdt, at, cg.fdiv(p, l)?)
                })
            })?;
        }
        cg.for_range(f, rows, &mut |r| {
            let i = cg.add(q0, r)?;
            let y_row = cg.affine(i, geo.y.row, y_base)?;
            let acc_row = cg.affine(r, dv as i64, cg.i64c(acc_at))?;
            let l = cg.load(scratch, dt, cg.add(cg.i64c(l_at), r)?)?;
            cg.for_n(f, dv, &mut |e| {
                let a = cg.load(scratch, dt, cg.add(acc_row, e)?)?;
                cg.store(yp, xdt, cg.add(y_row, e)?, cg.fdiv(a, l)?)
            })
        })
    })
}

/// The online-softmax step of every row of a block for one tile, with the
/// tile maxima in `tmax[r]`: `m ← max(m, tmax)`, `alpha = e^(m_old - m)`,
/// and the shift the tile's exponentials subtract (`m`, or 0 while every
/// score so far is -inf, which keeps e^(-inf) = 0) in place of `tmax`.
/// Vectors of `lanes` rows, then single rows: one vector exponential
/// serves `lanes` rows, where a scalar one per row cost as much as a
/// vector of the tile's.
fn update_row_maxima<'ctx>(
    cg: &Cg<'ctx>,
    f: FunctionValue<'ctx>,
    vecs: &Vec32<'_, 'ctx>,
    rows: IntValue<'ctx>,
    [m_at, tmax_at, alpha_at]: [i64; 3],
    scratch: PointerValue<'ctx>,
) -> Result<()> {
    let lanes = if vecs.lanes > 1 { vecs.lanes } else { 1 };
    for_row_blocks(cg, f, rows, lanes, &mut |r0, count| {
        let load = |at: i64| -> Result<BV<'ctx>> {
            let idx = cg.add(cg.i64c(at), r0)?;
            if count > 1 {
                vecs.load(scratch, idx)
            } else {
                cg.load(scratch, DType::F32, idx)
            }
        };
        let store = |at: i64, v: BV<'ctx>| -> Result<()> {
            let idx = cg.add(cg.i64c(at), r0)?;
            if count > 1 {
                vecs.store(scratch, idx, v)
            } else {
                cg.store(scratch, DType::F32, idx, v)
            }
        };
        let m_old = load(m_at)?;
        let m_new = cg.fmaxnum(m_old, load(tmax_at)?)?;
        let finite = cg.fcmp(FloatPredicate::ONE, m_new, cg.fconst(m_new, f64::NEG_INFINITY))?;
        let shift = cg.select(finite, m_new, cg.fconst(m_new, 0.0))?;
        // m_old ≤ m_new, and every score ≤ the tile max ≤ m_new: the
        // exponents here and of the tile are ≤ 0.
        let alpha = cg.exp_nonpositive(cg.fsub(m_old, shift)?)?;
        store(m_at, m_new)?;
        store(alpha_at, alpha)?;
        store(tmax_at, shift)
    })
}

/// How far, in powers of two, the lazily rescaled tiles let a score pass
/// its row's shift before the shift is raised: their exponentials are then
/// at most 2^16, and the sums and accumulators stay far from f32's range
/// for any value magnitude below 2^100.
const LAZY_RESCALE_LOG2: f64 = 16.0;

/// Offsets (f32 elements) of the scratch regions the vector steps use;
/// see `emit_body` for the whole layout.
#[derive(Clone, Copy)]
struct ScratchLayout {
    /// Per row, the running maximum (eager) or the shift the
    /// exponentials subtract, in log2 units (lazy).
    m: i64,
    /// A score row per block row (eager); the group's probabilities in its
    /// first rows (lazy).
    s: i64,
    /// An output accumulator row per block row.
    acc: i64,
    /// Per row, the eager step's rescale factor.
    alpha: i64,
    /// Per row, the eager step's tile maximum.
    tmax: i64,
    /// The packed key tile, `kt[e × sbk + j]`.
    kt: i64,
    /// Per row, the lane-wise running sums.
    lsum: i64,
    /// The copied value tile, `vt[j × dv + e]`.
    vt: i64,
}

/// What the vector steps of one (batch, head, query block) item share:
/// the builder and kernel function, the vector helpers and accumulator
/// slots, the scratch and its layout, the geometry, and Q, K and V with
/// the item's element offsets into them.
struct Tiles<'a, 'ctx> {
    cg: &'a Cg<'ctx>,
    f: FunctionValue<'ctx>,
    vecs: &'a Vec32<'a, 'ctx>,
    /// Accumulator slots of the micro-GEMMs (registers after mem2reg).
    pool: &'a [PointerValue<'ctx>],
    scratch: PointerValue<'ctx>,
    at: ScratchLayout,
    geo: &'a AttentionGeometry,
    /// Element type of Q, K and V (widened to f32 as they are loaded).
    xdt: DType,
    /// Width of a score row and of a packed key tile.
    sbk: usize,
    /// Keys per tile.
    bk: usize,
    q: (PointerValue<'ctx>, IntValue<'ctx>),
    k: (PointerValue<'ctx>, IntValue<'ctx>),
    v: (PointerValue<'ctx>, IntValue<'ctx>),
}

impl<'ctx> Tiles<'_, 'ctx> {
    /// One key tile of a block of attention (`dv` whole vectors, no
    /// softcap), a group of `group_rows` query rows at a time: the scores'
    /// micro-GEMM, their exponentials straight from its registers, and the
    /// `P·V` micro-GEMM. The tile's keys and values are packed already;
    /// `edit` (the mask, padding, causal limit and a short tile's missing
    /// keys, on a vector of a block row's scores in log2 units) applies to
    /// every score vector, and each group hints a row of the tile from key
    /// `next_first` on into L2 ([`Tiles::hint_next_tile`]).
    ///
    /// The softmax is the online one with the rescaling done lazily (as
    /// FlashAttention-4 does on GPUs): a row's shift `m` is only raised
    /// when a score passes it by more than [`LAZY_RESCALE_LOG2`]. A shift
    /// below the row's running maximum changes nothing in `acc / l`
    /// (softmax does not depend on it) while nothing overflows, so most
    /// tiles take the fast branch: `p = 2^(s·scale·log2 e - m)` in one FMA
    /// and [`Cg::exp2_bounded`], added to the sums and to `acc` with no
    /// rescale of either and no per-row maximum. Where a score of the group
    /// is too large, or `m` is still -inf (the first tile), or a score is
    /// NaN, the slow branch takes the rows' exact maxima as new shifts and
    /// rescales their sums and accumulators, as the eager kernel does every
    /// tile. The shift is a score the row has seen, so the largest term is
    /// never below 1 and no row's sum underflows.
    fn lazy_tile(
        &self,
        [group_rows, nv, nvd]: [usize; 3],
        scale: f64,
        q0: IntValue<'ctx>,
        rows: IntValue<'ctx>,
        cols: IntValue<'ctx>,
        edit: Option<&dyn Fn(IntValue<'ctx>, usize, BV<'ctx>) -> Result<BV<'ctx>>>,
        next_first: IntValue<'ctx>,
    ) -> Result<()> {
        let (cg, vecs, scratch, at) = (self.cg, self.vecs, self.scratch, self.at);
        let (lanes, dt) = (vecs.lanes, DType::F32);
        let c = |v: f64| -> BV<'ctx> { cg.f32t().const_float(v).into() };
        let log2_scale = vecs.splat(c(scale * LOG2_E))?;
        let edited = |row: IntValue<'ctx>, ch: usize, x: BV<'ctx>| match edit {
            Some(edit) => edit(row, ch, x),
            None => Ok(x),
        };
        let threshold = vecs.splat(c(LAZY_RESCALE_LOG2))?;
        for_row_blocks(cg, self.f, rows, group_rows, &mut |r0, count| {
            self.hint_next_tile(next_first, cg.b.build_int_unsigned_div(r0, cg.i64c(group_rows as i64), "group")?)?;
            let acc = &self.pool[..count * nv];
            let q_rows = self.query_rows(cg.add(q0, r0)?, count)?;
            self.score_micro_gemm(acc, nv, &q_rows)?;
            let row_at = |base: i64, r: usize| -> Result<IntValue<'ctx>> {
                cg.add(cg.i64c(base), cg.add(r0, cg.i64c(r as i64))?)
            };
            let shifts: Vec<BV> = (0..count).map(|r| cg.load(scratch, dt, row_at(at.m, r)?)).collect::<Result<_>>()?;
            let mut exponents = Vec::new();
            for (r, shift) in shifts.iter().enumerate() {
                let neg_shift = vecs.splat(cg.fneg(*shift)?)?;
                let row = cg.add(r0, cg.i64c(r as i64))?;
                for ch in 0..nv {
                    let s = cg.b.build_load(vecs.vty, acc[r * nv + ch], "score")?;
                    exponents.push(edited(row, ch, cg.fmuladd(s, log2_scale, neg_shift)?)?);
                }
            }
            // A tree, not a chain: the branch waits on its depth.
            let mut level = exponents.clone();
            while level.len() > 1 {
                let mut next = Vec::with_capacity(level.len().div_ceil(2));
                for pair in level.chunks(2) {
                    next.push(if let [a, b] = pair { cg.fmax_ignoring_nan(*a, *b)? } else { pair[0] });
                }
                level = next;
            }
            let top =
                *level.first().ok_or_else(|| BackendError::Llvm("an attention row group without scores".into()))?;
            // Unordered: a NaN (from a shift of -inf) takes the slow branch.
            let over = cg.fcmp(FloatPredicate::UGT, top, threshold)?;
            let any_over = cg.intrinsic("llvm.vector.reduce.or", &[over])?.into_int_value();

            // Probabilities of row `r` from its exponents, into its score
            // row and (with the rescale factor `alpha`, if any) its sums.
            let finish_row = |r: usize, ts: &[BV<'ctx>], alpha: Option<BV<'ctx>>| -> Result<()> {
                let row = cg.add(r0, cg.i64c(r as i64))?;
                // The group's probabilities sit at the start of the score
                // rows, where each group rewrites the same lines: they stay
                // in L1, where a row per block row would stream through L2.
                let s_row = cg.i64c(at.s + (r * self.sbk) as i64);
                let mut vsum: Option<BV> = None;
                for (ch, t) in ts.iter().enumerate() {
                    let p = cg.exp2_bounded(*t)?;
                    vecs.store(scratch, cg.add(s_row, cg.i64c((ch * lanes) as i64))?, p)?;
                    vsum = Some(match vsum {
                        None => p,
                        Some(v) => cg.fadd(v, p)?,
                    });
                }
                let vsum = vsum.ok_or_else(|| BackendError::Llvm("an attention tile without key vectors".into()))?;
                let l_row = cg.affine(row, ATTN_SUM_LANES as i64, cg.i64c(at.lsum))?;
                let old = vecs.load(scratch, l_row)?;
                let new = match alpha {
                    Some(alpha) => cg.fmuladd(old, vecs.splat(alpha)?, vsum)?,
                    None => cg.fadd(old, vsum)?,
                };
                vecs.store(scratch, l_row, new)
            };

            // The slow branch computes the raw scores again (the shift may
            // be -inf, so they cannot be had back from the exponents):
            // keeping them alive past the branch would cost the fast one
            // register copies and spills on every tile, for a branch taken
            // on few.
            let mut rescale = || -> Result<()> {
                self.score_micro_gemm(acc, nv, &q_rows)?;
                for (r, &m_old) in shifts.iter().enumerate() {
                    let row = cg.add(r0, cg.i64c(r as i64))?;
                    let scaled: Vec<BV> = acc[r * nv..(r + 1) * nv]
                        .iter()
                        .enumerate()
                        .map(|(ch, &slot)| {
                            edited(row, ch, cg.fmul(cg.b.build_load(vecs.vty, slot, "score")?, log2_scale)?)
                        })
                        .collect::<Result<_>>()?;
                    let mut vmax = scaled[0];
                    for &u in &scaled[1..] {
                        vmax = cg.fmax_ignoring_nan(vmax, u)?;
                    }
                    let tile_max = vecs.reduce(vmax, &|a, b| cg.fmax_ignoring_nan(a, b))?;
                    let m_new = cg.fmaxnum(m_old, tile_max)?;
                    // While every score so far is -inf the shift is 0, which
                    // keeps 2^(-inf) = 0.
                    let finite = cg.fcmp(FloatPredicate::ONE, m_new, c(f64::NEG_INFINITY))?;
                    let shift = cg.select(finite, m_new, c(0.0))?;
                    let same = cg.fcmp(FloatPredicate::OEQ, m_old, m_new)?;
                    let alpha = cg.select(same, c(1.0), cg.exp2_bounded(cg.fsub(m_old, shift)?)?)?;
                    cg.store(scratch, dt, row_at(at.m, r)?, m_new)?;
                    let vshift = vecs.splat(shift)?;
                    let ts: Vec<BV> = scaled.iter().map(|&u| cg.fsub(u, vshift)).collect::<Result<_>>()?;
                    finish_row(r, &ts, Some(alpha))?;
                    let acc_row = cg.affine(row, self.geo.v_dim as i64, cg.i64c(at.acc))?;
                    let valpha = vecs.splat(alpha)?;
                    for ch in 0..nvd {
                        let idx = cg.add(acc_row, cg.i64c((ch * lanes) as i64))?;
                        vecs.store(scratch, idx, cg.fmul(vecs.load(scratch, idx)?, valpha)?)?;
                    }
                }
                Ok(())
            };
            let mut fast = || -> Result<()> {
                for r in 0..count {
                    finish_row(r, &exponents[r * nv..(r + 1) * nv], None)?;
                }
                Ok(())
            };
            cg.if_else(self.f, any_over, "lazy_rescale", &mut rescale, &mut fast)?;
            self.pv_micro_gemm(&self.pool[..count * nvd], nvd, cg.i64c(at.s), false, r0, cols)
        })
    }

    /// Raw scores of one tile with vectors along the keys: the tile's keys
    /// are packed transposed ([`Tiles::pack_key_tile`]), then each group of
    /// `qk_rows` query rows runs [`Tiles::score_micro_gemm`] and stores its
    /// scores scaled (and, with `keep_maxima`, each row's tile maximum).
    #[allow(clippy::too_many_arguments)]
    fn scores(
        &self,
        qk_rows: usize,
        nv: usize,
        scale: f64,
        keep_maxima: bool,
        q0: IntValue<'ctx>,
        rows: IntValue<'ctx>,
        k0: IntValue<'ctx>,
        cols: IntValue<'ctx>,
    ) -> Result<()> {
        let (cg, vecs, scratch) = (self.cg, self.vecs, self.scratch);
        let lanes = vecs.lanes;
        self.pack_key_tile(k0, cols)?;
        for_row_blocks(cg, self.f, rows, qk_rows, &mut |r0, count| {
            let acc = &self.pool[..count * nv];
            let q_rows = self.query_rows(cg.add(q0, r0)?, count)?;
            self.score_micro_gemm(acc, nv, &q_rows)?;
            let vscale = vecs.splat(cg.f32t().const_float(scale).into())?;
            let mut row_max = Vec::with_capacity(count);
            for r in 0..count {
                let row = cg.add(r0, cg.i64c(r as i64))?;
                let s_row = cg.affine(row, self.sbk as i64, cg.i64c(self.at.s))?;
                let mut vmax: Option<BV> = None;
                for ch in 0..nv {
                    let v = cg.fmul(cg.b.build_load(vecs.vty, acc[r * nv + ch], "acc")?, vscale)?;
                    vecs.store(scratch, cg.add(s_row, cg.i64c((ch * lanes) as i64))?, v)?;
                    vmax = Some(match vmax {
                        None => v,
                        Some(m) => cg.fmax_ignoring_nan(m, v)?,
                    });
                }
                row_max.extend(vmax);
            }
            if keep_maxima {
                let max = |a, b| cg.fmax_ignoring_nan(a, b);
                let first = cg.add(cg.i64c(self.at.tmax), r0)?;
                if count > 1 && count.is_power_of_two() && count <= lanes && row_max.len() == count {
                    // The group's maxima side by side, stored at once.
                    let maxima = vecs.reduce_rows(row_max, &max)?;
                    let st = cg.b.build_store(cg.elem_ptr(scratch, DType::F32, first)?, maxima)?;
                    st.set_alignment(4).map_err(|e| BackendError::Llvm(e.to_string()))?;
                } else {
                    for (r, m) in row_max.into_iter().enumerate() {
                        let m = vecs.reduce(m, &max)?;
                        cg.store(scratch, DType::F32, cg.add(first, cg.i64c(r as i64))?, m)?;
                    }
                }
            }
            Ok(())
        })
    }

    /// `acc ← acc·alpha + P·V_tile` for f32 values with `dv` a whole
    /// number (`nvd`) of vectors: the value tile copied, then a group of
    /// `pv_rows` rows at a time ([`Tiles::pv_micro_gemm`]).
    fn pv(
        &self,
        pv_rows: usize,
        nvd: usize,
        rows: IntValue<'ctx>,
        k0: IntValue<'ctx>,
        cols: IntValue<'ctx>,
    ) -> Result<()> {
        let cg = self.cg;
        self.pack_value_tile(k0, cols)?;
        for_row_blocks(cg, self.f, rows, pv_rows, &mut |r0, count| {
            let p_first = cg.affine(r0, self.sbk as i64, cg.i64c(self.at.s))?;
            self.pv_micro_gemm(&self.pool[..count * nvd], nvd, p_first, true, r0, cols)
        })
    }

    /// Hints key and value row `next_first + group mod bk` (the last key
    /// past the end) into L2: the groups of a block spread the next tile's
    /// rows among them, so that packing it finds them there rather than in
    /// L3.
    fn hint_next_tile(&self, next_first: IntValue<'ctx>, group: IntValue<'ctx>) -> Result<()> {
        let (cg, geo) = (self.cg, self.geo);
        let j = cg.b.build_int_unsigned_rem(group, cg.i64c(self.bk as i64), "next_row")?;
        let row = cg.add(next_first, j)?;
        let last = cg.i64c(geo.kv_len as i64 - 1);
        let past = cg.b.build_int_compare(IntPredicate::SGT, row, last, "past_end")?;
        let row = cg.b.build_select(past, last, row, "row")?.into_int_value();
        let per_line = 64 / self.xdt.storage_bytes(1).max(1);
        for ((p, base), stride, dim) in [(self.k, geo.k.row, geo.head_dim), (self.v, geo.v.row, geo.v_dim)] {
            let first = cg.affine(row, stride, base)?;
            for line in (0..dim).step_by(per_line) {
                cg.prefetch_read_l2(cg.elem_ptr(p, self.xdt, cg.add(first, cg.i64c(line as i64))?)?)?;
            }
        }
        Ok(())
    }

    /// Element offsets of the Q rows `first .. first + count` of the item.
    fn query_rows(&self, first: IntValue<'ctx>, count: usize) -> Result<Vec<IntValue<'ctx>>> {
        let cg = self.cg;
        (0..count).map(|r| cg.affine(cg.add(first, cg.i64c(r as i64))?, self.geo.q.row, self.q.1)).collect()
    }

    /// Packs the tile's keys transposed into the scratch, `kt[e × sbk + j]`
    /// widened to f32, so that a score micro-GEMM reads whole vectors of
    /// keys.
    fn pack_key_tile(&self, k0: IntValue<'ctx>, cols: IntValue<'ctx>) -> Result<()> {
        let (cg, (kp, k_base)) = (self.cg, self.k);
        cg.for_range(self.f, cols, &mut |j| {
            let k_row = cg.affine(cg.add(k0, j)?, self.geo.k.row, k_base)?;
            let to = cg.add(cg.i64c(self.at.kt), j)?;
            cg.for_n(self.f, self.geo.head_dim, &mut |e| {
                let x = cg.load(kp, self.xdt, cg.add(k_row, e)?)?;
                cg.store(self.scratch, DType::F32, cg.affine(e, self.sbk as i64, to)?, x)
            })
        })
    }

    /// Copies the tile's value rows (`dv` whole vectors) into the scratch
    /// as f32, row after row: the caller's V rows start wherever its
    /// allocator put them (16-byte aligned, as a rule), so each of the
    /// `P·V` micro-GEMM's vector loads from them would straddle two cache
    /// lines; from the copy none does, and f16/bf16 values are widened
    /// once per tile instead of once per query row.
    fn pack_value_tile(&self, k0: IntValue<'ctx>, cols: IntValue<'ctx>) -> Result<()> {
        let (cg, vecs, (vp, v_base)) = (self.cg, self.vecs, self.v);
        let (lanes, dv) = (vecs.lanes, self.geo.v_dim);
        cg.for_range(self.f, cols, &mut |j| {
            let from = cg.affine(cg.add(k0, j)?, self.geo.v.row, v_base)?;
            let to = cg.affine(j, dv as i64, cg.i64c(self.at.vt))?;
            if self.xdt != DType::F32 {
                return cg.for_n(self.f, dv, &mut |e| {
                    let x = cg.load(vp, self.xdt, cg.add(from, e)?)?;
                    cg.store(self.scratch, DType::F32, cg.add(to, e)?, x)
                });
            }
            for ch in 0..dv / lanes {
                let off = cg.i64c((ch * lanes) as i64);
                vecs.store(self.scratch, cg.add(to, off)?, vecs.load(vp, cg.add(from, off)?)?)?;
            }
            Ok(())
        })
    }

    /// The raw scores `q·kᵀ` of the query rows at `q_rows` against the
    /// packed key tile, into `acc` (`q_rows.len() × nv` vector slots, row
    /// major): per head-dimension element one broadcast Q value per row
    /// times the packed row's `nv` vectors, a register-blocked micro-GEMM
    /// as in `gemm.rs`.
    fn score_micro_gemm(&self, acc: &[PointerValue<'ctx>], nv: usize, q_rows: &[IntValue<'ctx>]) -> Result<()> {
        let (cg, vecs, qp) = (self.cg, self.vecs, self.q.0);
        let lanes = vecs.lanes;
        let zero = vecs.splat(cg.f32t().const_float(0.0).into())?;
        for slot in acc {
            cg.b.build_store(*slot, zero)?;
        }
        cg.for_n(self.f, self.geo.head_dim, &mut |e| {
            let kt_row = cg.affine(e, self.sbk as i64, cg.i64c(self.at.kt))?;
            let ks: Vec<BV> = (0..nv)
                .map(|ch| vecs.load(self.scratch, cg.add(kt_row, cg.i64c((ch * lanes) as i64))?))
                .collect::<Result<_>>()?;
            for (r, q_row) in q_rows.iter().enumerate() {
                let qs = vecs.splat(cg.load(qp, self.xdt, cg.add(*q_row, e)?)?)?;
                for (ch, kv) in ks.iter().enumerate() {
                    let slot = acc[r * nv + ch];
                    let cur = cg.b.build_load(vecs.vty, slot, "acc")?;
                    cg.b.build_store(slot, cg.intrinsic("llvm.fma", &[qs, *kv, cur])?)?;
                }
            }
            Ok(())
        })
    }

    /// `acc ← acc·alpha + P·V_tile` for the `acc.len() / nvd` rows from
    /// `r0`, their probabilities from `p_first` on (a score row apart), the
    /// accumulator rows rescaled by the eager step's factors on the way in
    /// when `rescale`: they hold their accumulator rows in registers while
    /// the copied value rows stream past, one broadcast probability per row
    /// and key.
    fn pv_micro_gemm(
        &self,
        acc: &[PointerValue<'ctx>],
        nvd: usize,
        p_first: IntValue<'ctx>,
        rescale: bool,
        r0: IntValue<'ctx>,
        cols: IntValue<'ctx>,
    ) -> Result<()> {
        let (cg, vecs, scratch, at) = (self.cg, self.vecs, self.scratch, self.at);
        let (lanes, dv) = (vecs.lanes, self.geo.v_dim);
        let count = acc.len() / nvd;
        let mut p_rows = Vec::with_capacity(count);
        for r in 0..count {
            let row = cg.add(r0, cg.i64c(r as i64))?;
            let alpha = match rescale {
                true => Some(vecs.splat(cg.load(scratch, DType::F32, cg.add(cg.i64c(at.alpha), row)?)?)?),
                false => None,
            };
            let acc_row = cg.affine(row, dv as i64, cg.i64c(at.acc))?;
            for ch in 0..nvd {
                let old = vecs.load(scratch, cg.add(acc_row, cg.i64c((ch * lanes) as i64))?)?;
                let old = match alpha {
                    Some(alpha) => cg.fmul(old, alpha)?,
                    None => old,
                };
                cg.b.build_store(acc[r * nvd + ch], old)?;
            }
            p_rows.push(cg.add(p_first, cg.i64c((r * self.sbk) as i64))?);
        }
        cg.for_range(self.f, cols, &mut |j| {
            let v_row = cg.affine(j, dv as i64, cg.i64c(at.vt))?;
            let vs: Vec<BV> = (0..nvd)
                .map(|ch| vecs.load(scratch, cg.add(v_row, cg.i64c((ch * lanes) as i64))?))
                .collect::<Result<_>>()?;
            for (r, p_row) in p_rows.iter().enumerate() {
                let p = vecs.splat(cg.load(scratch, DType::F32, cg.add(*p_row, j)?)?)?;
                for (ch, vv) in vs.iter().enumerate() {
                    let slot = acc[r * nvd + ch];
                    let cur = cg.b.build_load(vecs.vty, slot, "acc")?;
                    cg.b.build_store(slot, cg.intrinsic("llvm.fma", &[p, *vv, cur])?)?;
                }
            }
            Ok(())
        })?;
        for r in 0..count {
            let row = cg.add(r0, cg.i64c(r as i64))?;
            let acc_row = cg.affine(row, dv as i64, cg.i64c(at.acc))?;
            for ch in 0..nvd {
                let v = cg.b.build_load(vecs.vty, acc[r * nvd + ch], "acc")?;
                vecs.store(scratch, cg.add(acc_row, cg.i64c((ch * lanes) as i64))?, v)?;
            }
        }
        Ok(())
    }
}

/// Splits `rows` (run time) into groups of `block` and a tail of single
/// rows, calling `body(first_row, rows_in_call)` with a compile-time count.
fn for_row_blocks<'ctx>(
    cg: &Cg<'ctx>,
    f: FunctionValue<'ctx>,
    rows: IntValue<'ctx>,
    block: usize,
    body: &mut dyn FnMut(IntValue<'ctx>, usize) -> Result<()>,
) -> Result<()> {
    let groups = cg.b.build_int_unsigned_div(rows, cg.i64c(block as i64), "groups")?;
    cg.for_range(f, groups, &mut |g| body(cg.mul(g, block as i64)?, block))?;
    if block > 1 {
        let done = cg.mul(groups, block as i64)?;
        let left = cg.b.build_int_nsw_sub(rows, done, "left")?;
        cg.for_range(f, left, &mut |t| body(cg.add(done, t)?, 1))?;
    }
    Ok(())
}
