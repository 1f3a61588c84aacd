//! ONNX-23 `Attention` as a flash-attention kernel: the `S × S` score
//! matrix is never formed.
//!
//! For each (batch, query head, block of [`ATTN_BQ`] query rows) the keys
//! and values are visited in tiles of [`ATTN_BK`] positions. Per tile and
//! query row, the scores `q·kᵀ·scale + bias` go to a small scratch tile,
//! and the row's running maximum `m` and sum `l` are updated the online
//! way (Milakov & Gimelshein; FlashAttention): with `m' = max(m, max_j s_j)`,
//! `l ← l·e^(m-m') + Σ_j e^(s_j-m')` and the output accumulator
//! `acc ← acc·e^(m-m') + Σ_j e^(s_j-m')·v_j`. After the last tile the row
//! is `acc / l`. A key/value tile stays in cache while every row of the
//! query block passes over it. The scratch (the per-row `m`, `l`, `acc`
//! and one score tile per row) is `O(ATTN_BQ · (ATTN_BK + Dv))`, whatever
//! the sequence length; see [`crate::plan::attention_scratch_bytes`].
//!
//! Every inner loop is unit-stride over the head dimension or over the
//! tile (the dot products, the exponentials, the accumulator updates), so
//! LLVM's loop vectorizer widens them. With `is_causal`, tiles entirely
//! above the diagonal of a query block are skipped.
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
use crate::plan::{attention_geometry, AttentionGeometry, Loc, Plan, Slot, ATTN_BK, ATTN_BQ};
use inkwell::values::{BasicValueEnum, FunctionValue, IntValue};
use inkwell::{FloatPredicate, IntPredicate};
use kiln_ir::dtype::DType;
use kiln_ir::graph::NodeId;
use kiln_ir::op::Op;

type BV<'ctx> = BasicValueEnum<'ctx>;

/// Largest per-thread scratch (bytes) the kernel keeps on the stack, so
/// that items can run on several threads; past it (value heads of
/// thousands) the kernel runs serially on scratch in the arena.
const ATTN_STACK_SCRATCH: usize = 256 << 10;

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
    let (bq, bk) = (ATTN_BQ.min(geo.q_len).max(1), ATTN_BK.min(geo.kv_len).max(1));
    let q_blocks = geo.q_len.div_ceil(bq);
    let scratch_floats = 2 * bq + bq * bk + bq * geo.v_dim;
    let private = scratch_floats * 4 <= ATTN_STACK_SCRATCH;
    let items = geo.batch * geo.q_heads * q_blocks;
    let work = if private { bq * geo.kv_len * (geo.head_dim + geo.v_dim) * 2 } else { 0 };
    let mut kernel = cg.parallel_kernel_fn(&format!("k{step}_Attention"), values.len() + 1, items, work);
    let f = kernel.f;
    let (yp, qp, mut kp, mut vp) = (cg.param(f, 0), cg.param(f, 1), cg.param(f, 2), cg.param(f, 3));
    let maskp = mask.as_ref().map(|_| cg.param(f, 4));
    let scratch = if private {
        cg.entry_alloca(f, cg.f32t().array_type(scratch_floats as u32).into(), "scratch")?
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
    let (bq, bk) = (ATTN_BQ.min(geo.q_len).max(1), ATTN_BK.min(geo.kv_len).max(1));
    let (d, dv) = (geo.head_dim, geo.v_dim);
    // Scratch layout, in f32 elements: m[bq], l[bq], scores[bq × bk], acc[bq × dv].
    let (m_at, l_at, s_at, acc_at) = (0i64, bq as i64, 2 * bq as i64, (2 * bq + bq * bk) as i64);
    let group = (geo.q_heads / geo.kv_heads) as u64;
    let q_blocks = geo.q_len.div_ceil(bq);
    let k_tiles = geo.kv_len.div_ceil(bk);
    let f32t = cg.f32t();
    let dot = cg.entry_alloca(f, f32t.into(), "dot")?;
    let tmax = cg.entry_alloca(f, f32t.into(), "tile_max")?;
    let psum = cg.entry_alloca(f, f32t.into(), "tile_sum")?;

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
        let mask_base = match mask {
            Some((_, l)) => cg.add(cg.mul(b, l.strides[0])?, cg.mul(h, l.strides[1])?)?,
            None => cg.i64c(0),
        };
        let q0 = cg.mul(qb, bq as i64)?;
        let rows = tail(cg, bq, geo.q_len, q0)?;
        cg.for_range(f, rows, &mut |r| {
            cg.store(scratch, dt, cg.add(cg.i64c(m_at), r)?, ninf)?;
            cg.store(scratch, dt, cg.add(cg.i64c(l_at), r)?, c(0.0))?;
            let acc_row = cg.affine(r, dv as i64, cg.i64c(acc_at))?;
            cg.for_n(f, dv, &mut |e| cg.store(scratch, dt, cg.add(acc_row, e)?, c(0.0)))
        })?;
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
            cg.for_range(f, rows, &mut |r| {
                let i = cg.add(q0, r)?;
                let q_row = cg.affine(i, geo.q.row, q_base)?;
                let s_row = cg.affine(r, bk as i64, cg.i64c(s_at))?;
                cg.b.build_store(tmax, ninf)?;
                cg.for_range(f, cols, &mut |j| {
                    let kj = cg.add(k0, j)?;
                    let k_row = cg.affine(kj, geo.k.row, k_base)?;
                    cg.b.build_store(dot, c(0.0))?;
                    cg.for_n(f, d, &mut |e| {
                        let qv = cg.load(qp, xdt, cg.add(q_row, e)?)?;
                        let kv = cg.load(kp, xdt, cg.add(k_row, e)?)?;
                        let cur = cg.b.build_load(f32t, dot, "dot")?;
                        cg.b.build_store(dot, cg.fadd_reassoc(cur, cg.fmul(qv, kv)?)?)?;
                        Ok(())
                    })?;
                    let mut s = cg.fmul(cg.b.build_load(f32t, dot, "dot")?, c(scale))?;
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
                        let seen = cg.add(i, cg.i64c(geo.past_len as i64))?;
                        let future = cg.b.build_int_compare(IntPredicate::SGT, kj, seen, "future")?;
                        s = cg.select(future.into(), ninf, s)?;
                    }
                    cg.store(scratch, dt, cg.add(s_row, j)?, s)?;
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
                let m_slot = cg.add(cg.i64c(m_at), r)?;
                let l_slot = cg.add(cg.i64c(l_at), r)?;
                let m_old = cg.load(scratch, dt, m_slot)?;
                let m_new = cg.fmaxnum(m_old, cg.b.build_load(f32t, tmax, "tmax")?)?;
                // While every score so far is -inf there is nothing
                // to shift by; shifting by 0 keeps e^(-inf) = 0.
                let finite = cg.fcmp(FloatPredicate::ONE, m_new, ninf)?;
                let shift = cg.select(finite, m_new, c(0.0))?;
                let alpha = cg.exp(cg.fsub(m_old, shift)?)?;
                cg.b.build_store(psum, c(0.0))?;
                cg.for_range(f, cols, &mut |j| {
                    let at = cg.add(s_row, j)?;
                    let p = cg.exp(cg.fsub(cg.load(scratch, dt, at)?, shift)?)?;
                    cg.store(scratch, dt, at, p)?;
                    let cur = cg.b.build_load(f32t, psum, "psum")?;
                    cg.b.build_store(psum, cg.fadd_reassoc(cur, p)?)?;
                    Ok(())
                })?;
                let l_old = cg.load(scratch, dt, l_slot)?;
                let l_new = cg.fadd(cg.fmul(l_old, alpha)?, cg.b.build_load(f32t, psum, "psum")?)?;
                cg.store(scratch, dt, l_slot, l_new)?;
                cg.store(scratch, dt, m_slot, m_new)?;
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
        })?;
        if let Some((qkp, 3)) = scores {
            cg.for_range(f, rows, &mut |r| {
                let row = cg.affine(cg.add(q0, r)?, geo.kv_len as i64, qk_base)?;
                let m = cg.load(scratch, dt, cg.add(cg.i64c(m_at), r)?)?;
                let l = cg.load(scratch, dt, cg.add(cg.i64c(l_at), r)?)?;
                let finite = cg.fcmp(FloatPredicate::ONE, m, ninf)?;
                let shift = cg.select(finite, m, c(0.0))?;
                cg.for_n(f, geo.kv_len, &mut |j| {
                    let at = cg.add(row, j)?;
                    let p = cg.exp(cg.fsub(cg.load(qkp, xdt, at)?, shift)?)?;
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
