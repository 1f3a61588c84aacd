//! Kernels of single nodes: MatMul/Gemm, Softmax/LogSoftmax, Reduce*,
//! Transpose, and the copy into a graph output.

use super::elementwise::{broadcast_strides, collapse, contiguous_strides};
use super::gemm::{self, GemmDims, GemmOperand, GemmSpec};
use super::{Cg, Val};
use crate::error::{BackendError, Result};
use crate::plan::{elem_bytes, slice_geometry, Loc, Plan, SliceGeometry};
use crate::SoftmaxAlgorithm;
use inkwell::values::{BasicValueEnum, FunctionValue, IntValue, PointerValue};
use inkwell::FloatPredicate;
use kiln_ir::dtype::DType;
use kiln_ir::graph::{NodeId, ValueId};
use kiln_ir::op::{GemmAttrs, Op, ReduceKind};
use std::collections::BTreeMap;

type BV<'ctx> = BasicValueEnum<'ctx>;
type Kernel<'ctx> = (FunctionValue<'ctx>, Vec<Loc>);

/// Columns of C per block of the MatMul kernel: a 1 KiB row segment of C
/// stays in L1 while a block of B rows streams through.
const MATMUL_NB: i64 = 256;
/// Rows of B per block: with `MATMUL_NB`, a 128 KiB tile of B that stays in L2
/// while every row of A passes over it.
const MATMUL_KB: i64 = 128;

/// Emits the kernel of one node.
pub(crate) fn emit_node<'ctx>(cg: &Cg<'ctx>, plan: &Plan, step: usize, id: NodeId) -> Result<Kernel<'ctx>> {
    let node = plan.graph.node(id);
    let unsupported = |m: String| BackendError::unsupported(&node.name, node.op.name(), m);
    let input = |slot: usize| {
        node.input(slot)
            .ok_or_else(|| BackendError::node(&node.name, node.op.name(), format!("input {slot} is missing")))
    };
    let output = node.output(0).ok_or_else(|| BackendError::node(&node.name, node.op.name(), "output 0 is missing"))?;
    let dtype = plan.ty(output).dtype;
    match &node.op {
        Op::MatMul | Op::Gemm(_) => {
            if !matches!(dtype, DType::F32 | DType::F64 | DType::F16 | DType::BF16) {
                return Err(unsupported(format!("{} on {dtype}", node.op.name())));
            }
            let gemm = match &node.op {
                Op::Gemm(g) => *g,
                _ => GemmAttrs { alpha: 1.0, beta: 0.0, trans_a: false, trans_b: false },
            };
            let c_in = if matches!(node.op, Op::Gemm(_)) { node.input(2) } else { None };
            let packed_b = plan.packed_b.get(&id).copied();
            matmul(cg, plan, step, &node.name, input(0)?, input(1)?, c_in, output, gemm, packed_b)
        }
        Op::Softmax { axis } | Op::LogSoftmax { axis } => {
            if !dtype.is_float() {
                return Err(unsupported(format!("{} on {dtype}", node.op.name())));
            }
            let log = matches!(node.op, Op::LogSoftmax { .. });
            softmax(cg, plan, step, input(0)?, output, *axis, log)
        }
        Op::Reduce { kind: ReduceKind::Max | ReduceKind::Min, .. }
            if node.input(0).is_some_and(|x| plan.ty(x).dtype == DType::Bool) =>
        {
            super::select::bool_reduce(cg, plan, step, id)
        }
        Op::Reduce { kind, axes, keepdims: _, noop_with_empty_axes } => {
            let x = input(0)?;
            if !matches!(plan.ty(x).dtype, DType::F32 | DType::F64) {
                return Err(unsupported(format!("{} on {}", node.op.name(), plan.ty(x).dtype)));
            }
            let rank = plan.ty(x).shape.len() as i64;
            let axes: Option<Vec<i64>> = match (axes, node.input(1)) {
                (Some(a), _) => Some(a.clone()),
                (None, Some(v)) => match plan.known(v) {
                    Some(t) => Some(t.to_i64s()),
                    None => return Err(unsupported("axes that are not known at compile time".into())),
                },
                (None, None) => None,
            };
            let mut reduced = vec![false; rank as usize];
            match axes {
                Some(a) if !a.is_empty() => {
                    for ax in a {
                        let ax = if ax < 0 { ax + rank } else { ax };
                        if !(0..rank).contains(&ax) {
                            return Err(BackendError::node(
                                &node.name,
                                node.op.name(),
                                format!("axis {ax} out of range for rank {rank}"),
                            ));
                        }
                        reduced[ax as usize] = true;
                    }
                }
                _ if *noop_with_empty_axes => {}
                _ => reduced.iter_mut().for_each(|r| *r = true),
            }
            reduce(cg, plan, step, *kind, x, output, &reduced)
        }
        Op::Transpose { perm } => {
            let x = input(0)?;
            let rank = plan.ty(x).shape.len();
            let perm: Vec<usize> = match perm {
                Some(p) => p.iter().map(|&a| if a < 0 { (a + rank as i64) as usize } else { a as usize }).collect(),
                None => (0..rank).rev().collect(),
            };
            transpose(cg, plan, step, x, output, &perm)
        }
        Op::CrossEntropy { .. } | Op::SoftmaxCrossEntropyLoss { .. } | Op::NegativeLogLikelihoodLoss { .. } => {
            super::loss::cross_entropy(cg, plan, step, id)
        }
        Op::LinearCrossEntropy { .. } => super::loss::linear_cross_entropy(cg, plan, step, id),
        Op::Attention(_) => super::attention::attention(cg, plan, step, id),
        Op::RotaryEmbedding { .. } => super::rotary::rotary_embedding(cg, plan, step, id),
        Op::LayerNormalization { .. } | Op::RMSNormalization { .. } => {
            let args = norm_args(cg, plan, id)?;
            normalize(cg, plan, step, input(0)?, args, None)
        }
        Op::Split { axis, .. } => {
            let outputs: Vec<Option<ValueId>> = node.outputs.clone();
            split(cg, plan, step, input(0)?, &outputs, *axis)
        }
        Op::Slice => {
            let param = |slot: usize| -> Result<Option<Vec<i64>>> {
                match node.input(slot) {
                    None => Ok(None),
                    Some(v) => match plan.known(v) {
                        Some(t) => Ok(Some(t.to_i64s())),
                        None => Err(unsupported(format!("input {slot} is not known at compile time"))),
                    },
                }
            };
            let starts = param(1)?.ok_or_else(|| BackendError::node(&node.name, "Slice", "starts are missing"))?;
            let ends = param(2)?.ok_or_else(|| BackendError::node(&node.name, "Slice", "ends are missing"))?;
            let (axes, steps) = (param(3)?, param(4)?);
            slice(cg, plan, step, input(0)?, output, &starts, &ends, axes.as_deref(), steps.as_deref()).map_err(|e| {
                match e {
                    BackendError::Node { message, .. } => BackendError::node(&node.name, "Slice", message),
                    other => other,
                }
            })
        }
        Op::Gather { axis } => gather(cg, plan, step, input(0)?, input(1)?, output, *axis),
        Op::QLinearMatMul => qlinear_matmul(cg, plan, step, id),
        Op::MatMulInteger => {
            matmul_integer(cg, plan, step, &node.name, input(0)?, input(1)?, node.input(2), node.input(3), output)
        }
        Op::Concat { axis } => {
            let inputs: Vec<ValueId> = node.inputs.iter().flatten().copied().collect();
            concat(cg, plan, step, &inputs, output, *axis)
        }
        Op::GatherElements { .. }
        | Op::GatherND { .. }
        | Op::ScatterND { .. }
        | Op::Trilu { .. }
        | Op::Pad { .. }
        | Op::Tile
        | Op::OneHot { .. }
        | Op::CumSum { .. } => super::indexing::emit(cg, plan, step, id),
        Op::ArgReduce { .. } | Op::TopK { .. } => super::select::emit(cg, plan, step, id),
        Op::LinearAttention(_) => super::linear_attention::linear_attention(cg, plan, step, id),
        Op::QuantizeLinear { .. } | Op::DequantizeLinear { .. } | Op::DynamicQuantizeLinear => {
            super::quant::emit(cg, plan, step, id)
        }
        other => Err(unsupported(format!("{} has no CPU kernel yet", other.name()))),
    }
}

/// Bytes per item of a parallel copy into a graph output.
const COPY_PIECE_BYTES: usize = 1 << 18;

/// Copies a value into graph output `output`.
pub(crate) fn emit_copy<'ctx>(
    cg: &Cg<'ctx>,
    plan: &Plan,
    step: usize,
    from: ValueId,
    output: usize,
) -> Result<Kernel<'ctx>> {
    // Large copies are cut into pieces the threads share.
    let bytes = plan.ty(from).bytes();
    let items = bytes.div_ceil(COPY_PIECE_BYTES);
    let k = cg.parallel_kernel_fn(&format!("k{step}_copy"), 2, items, COPY_PIECE_BYTES / 4);
    let f = k.f;
    if bytes > 0 {
        let (yp, xp) = (cg.param(f, 0), cg.param(f, 1));
        cg.for_items(&k, &mut |i| {
            let first = cg.mul(i, COPY_PIECE_BYTES as i64)?;
            let len = super::elementwise::min_left(cg, COPY_PIECE_BYTES as i64, bytes as i64, first)?;
            let src = unsafe { cg.b.build_in_bounds_gep(cg.ctx.i8_type(), xp, &[first], "src")? };
            let dst = unsafe { cg.b.build_in_bounds_gep(cg.ctx.i8_type(), yp, &[first], "dst")? };
            cg.b.build_memcpy(dst, 1, src, 1, len)?;
            Ok(())
        })?;
    }
    cg.kernel_return(f)?;
    let f = cg.finish_parallel(k)?;
    let out_loc = Loc { slot: crate::plan::Slot::Output(output), offset: 0 };
    Ok((f, vec![out_loc, plan.loc(from)]))
}

/// Emits nested loops over `sizes`, carrying one offset per operand (each
/// with its strides), and calls `body` with the offsets at each point.
fn nest<'ctx>(
    cg: &Cg<'ctx>,
    f: FunctionValue<'ctx>,
    sizes: &[usize],
    strides: &[Vec<i64>],
    offsets: Vec<IntValue<'ctx>>,
    body: &mut dyn FnMut(&[IntValue<'ctx>]) -> Result<()>,
) -> Result<()> {
    let Some((&n, rest)) = sizes.split_first() else { return body(&offsets) };
    let level = strides.first().map_or(0, |s| s.len() - sizes.len());
    cg.for_n(f, n, &mut |i| {
        let next: Vec<IntValue> =
            offsets.iter().zip(strides).map(|(&o, s)| cg.affine(i, s[level], o)).collect::<Result<_>>()?;
        nest(cg, f, rest, strides, next, body)
    })
}

// ---------------------------------------------------------------- MatMul / Gemm

/// MatMul (numpy batching and broadcasting, 1-D operands promoted) and
/// Gemm (transposes, alpha, beta and a broadcast C). Matrix products run on
/// the packed GEMM of [`super::gemm`]; matrix-vector products (one row or
/// one column) and [`crate::MatMulKernel::Blocked`] use [`matmul_loops`].
#[allow(clippy::too_many_arguments)]
fn matmul<'ctx>(
    cg: &Cg<'ctx>,
    plan: &Plan,
    step: usize,
    name: &str,
    a: ValueId,
    b: ValueId,
    c_in: Option<ValueId>,
    out: ValueId,
    gemm: GemmAttrs,
    packed_b: Option<usize>,
) -> Result<Kernel<'ctx>> {
    let dtype = plan.ty(out).dtype;
    let (ash, bsh) = (plan.ty(a).shape.clone(), plan.ty(b).shape.clone());
    let err = |m: &str| BackendError::node(name, "MatMul", m);
    if ash.is_empty() || bsh.is_empty() {
        return Err(err("MatMul of a scalar"));
    }
    let dims = gemm::matmul_dims(&ash, &bsh, gemm.trans_a, gemm.trans_b)
        .ok_or_else(|| err(&format!("inner dimensions differ: {ash:?} and {bsh:?}")))?;
    if !gemm::uses_packed(dims, dtype, cg.matmul) {
        return matmul_loops(cg, plan, step, name, a, b, c_in, out, gemm);
    }
    let GemmDims { m, n, k } = dims;
    let (sizes, strides) = batch_strides(&ash, &bsh, dims);
    let mut values = vec![out, a, b];
    let has_c = c_in.is_some() && gemm.beta != 0.0;
    if let (true, Some(c)) = (has_c, c_in) {
        values.push(c);
    }
    let scratch = plan.scratch[step].ok_or_else(|| err("no scratch space was planned"))?;
    let (batches, b_batches) = gemm::batch_counts(&ash, &bsh);
    let a_in_place = gemm::reads_a_in_place(plan.ty(a).dtype, dtype, !gemm.trans_a);
    if let Some(split) = gemm::parallel_split(dims, dtype, batches, b_batches, packed_b.is_some(), a_in_place) {
        let par = ParallelMatMul { dims, split, b_batches, has_c, c_in, gemm, packed_b };
        return matmul_parallel(cg, plan, step, &values, (sizes, strides), par, scratch);
    }
    let f = cg.kernel_fn(&format!("k{step}_matmul"), values.len() + 1);
    let (cp, ap, bp) = (cg.param(f, 0), cg.param(f, 1), cg.param(f, 2));
    let sp = cg.param(f, values.len() as u32);
    let (sa_i, sa_k) = if gemm.trans_a { (1, m as i64) } else { (k as i64, 1) };
    let (sb_k, sb_j) = if gemm.trans_b { (1, k as i64) } else { (n as i64, 1) };
    let (adt, bdt) = (plan.ty(a).dtype, plan.ty(b).dtype);
    if m * n > 0 {
        let init = gemm_init(plan, cg.param(f, 3), c_in.filter(|_| has_c), gemm.beta, (m, n));
        let zero = cg.i64c(0);
        nest(cg, f, &sizes, &strides, vec![zero; 3], &mut |off| {
            let spec = GemmSpec {
                m: cg.i64c(m as i64),
                n: cg.i64c(n as i64),
                k: cg.i64c(k as i64),
                max: dims,
                a: GemmOperand { ptr: cg.elem_ptr(ap, adt, off[1])?, dtype: adt, strides: (sa_i, sa_k) },
                b: GemmOperand { ptr: cg.elem_ptr(bp, bdt, off[2])?, dtype: bdt, strides: (sb_k, sb_j) },
                c: cg.elem_ptr(cp, dtype, off[0])?,
                c_dtype: dtype,
                ldc: n as i64,
                alpha: gemm.alpha as f64,
                accumulate: false,
                init,
                scratch: sp,
            };
            gemm::emit_gemm(cg, f, &spec)
        })?;
    }
    cg.b.build_return(None)?;
    let mut locs: Vec<Loc> = values.iter().map(|&v| plan.loc(v)).collect();
    locs.push(Loc { slot: crate::plan::Slot::Arena, offset: scratch });
    Ok((f, locs))
}

/// MatMulInteger: `(A - a_zero_point)·(B - b_zero_point)` of u8/i8
/// matrices in i32 (numpy batching and broadcasting), on the packed GEMM
/// with the zero points subtracted while packing. Zero points are per
/// tensor, per row of A or per column of B.
#[allow(clippy::too_many_arguments)]
fn matmul_integer<'ctx>(
    cg: &Cg<'ctx>,
    plan: &Plan,
    step: usize,
    name: &str,
    a: ValueId,
    b: ValueId,
    a_zero: Option<ValueId>,
    b_zero: Option<ValueId>,
    out: ValueId,
) -> Result<Kernel<'ctx>> {
    let (adt, bdt, odt) = (plan.ty(a).dtype, plan.ty(b).dtype, plan.ty(out).dtype);
    let unsupported = |m: String| BackendError::unsupported(name, "MatMulInteger", m);
    let err = |m: String| BackendError::node(name, "MatMulInteger", m);
    if ![adt, bdt].iter().all(|d| matches!(d, DType::U8 | DType::I8)) || odt != DType::I32 {
        return Err(unsupported(format!("{odt} = {adt} x {bdt} (u8/i8 operands, i32 result)")));
    }
    let (ash, bsh) = (plan.ty(a).shape.clone(), plan.ty(b).shape.clone());
    if ash.is_empty() || bsh.is_empty() {
        return Err(err("MatMulInteger of a scalar".into()));
    }
    let dims = gemm::matmul_dims(&ash, &bsh, false, false)
        .ok_or_else(|| err(format!("inner dimensions differ: {ash:?} and {bsh:?}")))?;
    // Whether each zero point is per tensor (false) or per row/column (true).
    let per_index = |zp: ValueId, dtype: DType, len: usize, what: &str| -> Result<bool> {
        let t = plan.ty(zp);
        if t.dtype != dtype {
            return Err(err(format!("{what} zero point is {} but {what} is {dtype}", t.dtype)));
        }
        match t.len() {
            1 => Ok(false),
            l if l == len && t.shape.len() == 1 => Ok(true),
            _ => Err(unsupported(format!(
                "a {what} zero point of shape {:?} (per tensor or one per {} supported)",
                t.shape,
                if what == "A" { "row of A" } else { "column of B" }
            ))),
        }
    };
    let a_per = a_zero.map(|z| per_index(z, adt, dims.m, "A")).transpose()?;
    let b_per = b_zero.map(|z| per_index(z, bdt, dims.n, "B")).transpose()?;
    let GemmDims { m, n, k } = dims;
    let (sizes, strides) = batch_strides(&ash, &bsh, dims);
    let mut values = vec![out, a, b];
    values.extend(a_zero);
    values.extend(b_zero);
    let scratch = plan.scratch[step].ok_or_else(|| err("no scratch space was planned".into()))?;
    let f = cg.kernel_fn(&format!("k{step}_matmulinteger"), values.len() + 1);
    let (cp, ap, bp) = (cg.param(f, 0), cg.param(f, 1), cg.param(f, 2));
    let sp = cg.param(f, values.len() as u32);
    let zero_point = |per: Option<bool>, param: u32, dtype: DType| {
        per.map(|per| {
            let p = cg.param(f, param);
            if per {
                gemm::ZeroPoint::PerIndex(p, dtype)
            } else {
                gemm::ZeroPoint::Scalar(p, dtype)
            }
        })
    };
    let a_zp = zero_point(a_per, 3, adt);
    let b_zp = zero_point(b_per, 3 + a_zero.is_some() as u32, bdt);
    if m * n > 0 {
        nest(cg, f, &sizes, &strides, vec![cg.i64c(0); 3], &mut |off| {
            let spec = GemmSpec {
                m: cg.i64c(m as i64),
                n: cg.i64c(n as i64),
                k: cg.i64c(k as i64),
                max: dims,
                a: GemmOperand { ptr: cg.elem_ptr(ap, adt, off[1])?, dtype: adt, strides: (k as i64, 1) },
                b: GemmOperand { ptr: cg.elem_ptr(bp, bdt, off[2])?, dtype: bdt, strides: (n as i64, 1) },
                c: cg.elem_ptr(cp, odt, off[0])?,
                c_dtype: odt,
                ldc: n as i64,
                alpha: 1.0,
                accumulate: false,
                init: None,
                scratch: sp,
            };
            gemm::emit_gemm_i32(cg, f, &spec, a_zp, b_zp)
        })?;
    }
    cg.b.build_return(None)?;
    let mut locs: Vec<Loc> = values.iter().map(|&v| plan.loc(v)).collect();
    locs.push(Loc { slot: crate::plan::Slot::Arena, offset: scratch });
    Ok((f, locs))
}

/// Gemm's `beta·C_in` as the product's initial value, `C_in` (broadcast
/// to `m × n`) being the buffer `ptr`; `None` without a C input.
fn gemm_init<'ctx>(
    plan: &Plan,
    ptr: PointerValue<'ctx>,
    c_in: Option<ValueId>,
    beta: f32,
    (m, n): (usize, usize),
) -> Option<gemm::GemmInit<'ctx>> {
    let c = c_in?;
    let strides = broadcast_strides(&plan.ty(c).shape, &[m, n]);
    Some(gemm::GemmInit { ptr, dtype: plan.ty(c).dtype, strides: (strides[0], strides[1]), beta: beta as f64 })
}

/// A MatMul/Gemm split across threads (see [`gemm::ParallelSplit`]).
struct ParallelMatMul {
    dims: GemmDims,
    split: gemm::ParallelSplit,
    b_batches: usize,
    has_c: bool,
    c_in: Option<ValueId>,
    gemm: GemmAttrs,
    /// The constant holding B packed at compile time, if it was.
    packed_b: Option<usize>,
}

/// The parallel MatMul/Gemm: a serial prologue packs every B matrix whole
/// into the scratch, unless B was packed at compile time (a constant); the
/// items (batch entry, block of rows, slab of columns) then run the macro
/// kernel on the threads, each packing its A block on its own stack unless
/// the microkernel reads A in place, and adding Gemm's `beta·C_in` to its
/// tiles in their first K block.
fn matmul_parallel<'ctx>(
    cg: &Cg<'ctx>,
    plan: &Plan,
    step: usize,
    values: &[ValueId],
    (sizes, strides): (Vec<usize>, Vec<Vec<i64>>),
    par: ParallelMatMul,
    scratch: usize,
) -> Result<Kernel<'ctx>> {
    let GemmDims { m, n, k } = par.dims;
    let (out, a, b) = (values[0], values[1], values[2]);
    let (dtype, adt, bdt) = (plan.ty(out).dtype, plan.ty(a).dtype, plan.ty(b).dtype);
    let split = par.split;
    let items = sizes.iter().product::<usize>() * split.row_blocks * split.slabs;
    let work = (m.min(split.row_block) * split.slab.min(n) * k.max(1)).max(1);
    let params = values.len() + 1 + par.packed_b.is_some() as usize;
    let mut kernel = cg.parallel_kernel_fn(&format!("k{step}_matmul"), params, items, work);
    let f = kernel.f;
    let (sa_i, sa_k) = if par.gemm.trans_a { (1, m as i64) } else { (k as i64, 1) };
    let (sb_k, sb_j) = if par.gemm.trans_b { (1, k as i64) } else { (n as i64, 1) };
    let per_b = gemm::packed_b_elems(cg, dtype, par.dims) as i64;
    let scratch_param = values.len() as u32;
    let prologue = &mut |pf| {
        let (bp, sp) = (cg.param(pf, 2), cg.param(pf, scratch_param));
        cg.for_n(pf, par.b_batches, &mut |bb| {
            let operand = GemmOperand {
                ptr: cg.elem_ptr(bp, bdt, cg.mul(bb, (k * n) as i64)?)?,
                dtype: bdt,
                strides: (sb_k, sb_j),
            };
            let dst = cg.elem_ptr(sp, dtype, cg.mul(bb, per_b)?)?;
            gemm::pack_b_whole(cg, pf, &operand, dtype, par.dims, dst)
        })
    };
    if par.packed_b.is_none() {
        cg.parallel_prologue(&mut kernel, prologue)?;
    }
    let (cp, ap, sp) = (cg.param(f, 0), cg.param(f, 1), cg.param(f, scratch_param));
    // Packed B: the compile-time constant, or the prologue's in the scratch.
    let packed = if par.packed_b.is_some() { cg.param(f, scratch_param + 1) } else { sp };
    // Items: the batch nest, then row blocks, then column slabs; the two
    // extra operands carry the row block and slab numbers.
    let mut item_sizes = sizes.clone();
    item_sizes.extend([split.row_blocks, split.slabs]);
    let mut item_strides: Vec<Vec<i64>> = strides.iter().map(|s| [s.as_slice(), &[0, 0]].concat()).collect();
    item_strides.push([vec![0; sizes.len()], vec![1, 0]].concat());
    item_strides.push([vec![0; sizes.len()], vec![0, 1]].concat());
    let zero = cg.i64c(0);
    cg.for_items_nest(&kernel, &item_sizes, &item_strides, &[zero; 5], &mut |o| {
        let ic = cg.mul(o[3], split.row_block as i64)?;
        let rows_left = cg.b.build_int_nsw_sub(cg.i64c(m as i64), ic, "rows_left")?;
        let mc = cg.b.build_select(
            cg.b.build_int_compare(inkwell::IntPredicate::SLT, rows_left, cg.i64c(split.row_block as i64), "short")?,
            rows_left,
            cg.i64c(split.row_block as i64),
            "mc",
        )?;
        let jc = cg.mul(o[4], split.slab as i64)?;
        let cols_left = cg.b.build_int_nsw_sub(cg.i64c(n as i64), jc, "cols_left")?;
        let nc = cg.b.build_select(
            cg.b.build_int_compare(inkwell::IntPredicate::SLT, cols_left, cg.i64c(split.slab as i64), "narrow")?,
            cols_left,
            cg.i64c(split.slab as i64),
            "nc",
        )?;
        // The B matrix of this batch entry, by number.
        let b_index = if par.b_batches > 1 {
            cg.b.build_int_unsigned_div(o[2], cg.i64c((k * n) as i64), "b_index")?
        } else {
            zero
        };
        let spec = GemmSpec {
            m: cg.i64c(m as i64),
            n: cg.i64c(n as i64),
            k: cg.i64c(k as i64),
            max: par.dims,
            a: GemmOperand { ptr: cg.elem_ptr(ap, adt, o[1])?, dtype: adt, strides: (sa_i, sa_k) },
            b: GemmOperand { ptr: cg.elem_ptr(sp, dtype, zero)?, dtype: bdt, strides: (sb_k, sb_j) },
            c: cg.elem_ptr(cp, dtype, o[0])?,
            c_dtype: dtype,
            ldc: n as i64,
            alpha: par.gemm.alpha as f64,
            accumulate: false,
            init: gemm_init(plan, cg.param(f, 3), par.c_in.filter(|_| par.has_c), par.gemm.beta, (m, n)),
            scratch: sp,
        };
        let pb = cg.elem_ptr(packed, dtype, cg.mul(b_index, per_b)?)?;
        gemm::emit_gemm_packed_b(
            cg,
            f,
            &spec,
            pb,
            (ic, mc.into_int_value()),
            (jc, nc.into_int_value()),
            split.row_block,
        )
    })?;
    cg.kernel_return(f)?;
    let mut locs: Vec<Loc> = values.iter().map(|&v| plan.loc(v)).collect();
    locs.push(Loc { slot: crate::plan::Slot::Arena, offset: scratch });
    if let Some(ci) = par.packed_b {
        locs.push(Loc { slot: crate::plan::Slot::Const(ci), offset: 0 });
    }
    Ok((cg.finish_parallel(kernel)?, locs))
}

/// QLinearMatMul: the i32 product `(a - a_zero)·(b - b_zero)` of each
/// batch entry (on the integer GEMM, into the step's scratch), then
/// requantized as the ONNX reference does: times the multiplier
/// `round(round(a_scale·b_scale) / y_scale)` (rounded to the scales' dtype,
/// per row of a and column of b or per tensor), rounded half to even,
/// plus `y_zero_point`, saturated to u8/i8.
fn qlinear_matmul<'ctx>(cg: &Cg<'ctx>, plan: &Plan, step: usize, id: NodeId) -> Result<Kernel<'ctx>> {
    let node = plan.graph.node(id);
    let name = node.name.as_str();
    let unsupported = |m: String| BackendError::unsupported(name, "QLinearMatMul", m);
    let err = |m: String| BackendError::node(name, "QLinearMatMul", m);
    let input = |slot: usize, what: &str| node.input(slot).ok_or_else(|| err(format!("{what} is missing")));
    let (a, a_scale, b, b_scale, y_scale) =
        (input(0, "a")?, input(1, "a_scale")?, input(3, "b")?, input(4, "b_scale")?, input(6, "y_scale")?);
    let (a_zero, b_zero, y_zero) = (node.input(2), node.input(5), node.input(7));
    let out = node.output(0).ok_or_else(|| err("the output is missing".into()))?;
    let (adt, bdt, odt) = (plan.ty(a).dtype, plan.ty(b).dtype, plan.ty(out).dtype);
    if ![adt, bdt, odt].iter().all(|d| matches!(d, DType::U8 | DType::I8)) {
        return Err(unsupported(format!("{odt} = {adt} x {bdt} (u8/i8 only)")));
    }
    let sdt = plan.ty(a_scale).dtype;
    for s in [a_scale, b_scale, y_scale] {
        if !matches!(plan.ty(s).dtype, DType::F32 | DType::F16) {
            return Err(unsupported(format!("{} scales (f32 and f16 supported)", plan.ty(s).dtype)));
        }
    }
    let (ash, bsh) = (plan.ty(a).shape.clone(), plan.ty(b).shape.clone());
    if ash.len() < 2 || bsh.len() < 2 {
        return Err(unsupported("1-D operands".into()));
    }
    let dims = gemm::matmul_dims(&ash, &bsh, false, false)
        .ok_or_else(|| err(format!("inner dimensions differ: {ash:?} and {bsh:?}")))?;
    let GemmDims { m, n, k } = dims;
    // Per tensor (false) or per row of a / column of b (true).
    let per = |v: ValueId, len: usize, what: &str| -> Result<bool> {
        let t = plan.ty(v);
        match t.len() {
            1 => Ok(false),
            l if l == len && t.shape.len() == 1 => Ok(true),
            _ => Err(unsupported(format!("{what} of shape {:?} (per tensor or per axis)", t.shape))),
        }
    };
    let a_scale_per = per(a_scale, m, "a_scale")?;
    let b_scale_per = per(b_scale, n, "b_scale")?;
    if plan.ty(y_scale).len() != 1 || y_zero.is_some_and(|z| plan.ty(z).len() != 1) {
        return Err(err("y_scale and y_zero_point must be scalars".into()));
    }
    for (z, dt, what) in [(a_zero, adt, "a"), (b_zero, bdt, "b"), (y_zero, odt, "y")] {
        if let Some(z) = z {
            if plan.ty(z).dtype != dt {
                return Err(err(format!("{what} zero point is {} but {what} is {dt}", plan.ty(z).dtype)));
            }
        }
    }
    let a_zero_per = a_zero.map(|z| per(z, m, "a_zero_point")).transpose()?;
    let b_zero_per = b_zero.map(|z| per(z, n, "b_zero_point")).transpose()?;
    let (sizes, strides) = batch_strides(&ash, &bsh, dims);
    let mut values = vec![out, a, a_scale, b, b_scale, y_scale];
    let (az_at, bz_at) = (values.len() as u32, values.len() as u32 + a_zero.is_some() as u32);
    values.extend(a_zero);
    values.extend(b_zero);
    let yz_at = values.len() as u32;
    values.extend(y_zero);
    let scratch = plan.scratch[step].ok_or_else(|| err("no scratch space was planned".into()))?;
    let f = cg.kernel_fn(&format!("k{step}_qlinearmatmul"), values.len() + 1);
    let p = |i: u32| cg.param(f, i);
    let sp = p(values.len() as u32);
    // Scratch: the i32 product of one batch entry, then the GEMM's blocks.
    let product_bytes = (m * n * 4).div_ceil(64) * 64;
    let gemm_scratch =
        unsafe { cg.b.build_in_bounds_gep(cg.ctx.i8_type(), sp, &[cg.i64c(product_bytes as i64)], "gemm")? };
    let zero_point = |per: Option<bool>, at: u32, dtype: DType| {
        per.map(|per| if per { gemm::ZeroPoint::PerIndex(p(at), dtype) } else { gemm::ZeroPoint::Scalar(p(at), dtype) })
    };
    let (a_zp, b_zp) = (zero_point(a_zero_per, az_at, adt), zero_point(b_zero_per, bz_at, bdt));
    let f64t = cg.ctx.f64_type();
    // A scale as f64, rounded to the scales' dtype first where the
    // reference rounds (the scales are exact in it already).
    let wide =
        |v: BV<'ctx>| -> Result<BV<'ctx>> { Ok(cg.b.build_float_ext(v.into_float_value(), f64t, "wide")?.into()) };
    let round_to_scale = |v: BV<'ctx>| -> Result<BV<'ctx>> {
        let narrow = match sdt {
            DType::F16 => cg.ctx.f16_type(),
            _ => cg.f32t(),
        };
        let t = cg.b.build_float_trunc(v.into_float_value(), narrow, "scale")?;
        Ok(cg.b.build_float_ext(t, f64t, "scale")?.into())
    };
    let (lo, hi) = if odt == DType::U8 { (0.0, 255.0) } else { (-128.0, 127.0) };
    if m * n > 0 {
        nest(cg, f, &sizes, &strides, vec![cg.i64c(0); 3], &mut |off| {
            let spec = GemmSpec {
                m: cg.i64c(m as i64),
                n: cg.i64c(n as i64),
                k: cg.i64c(k as i64),
                max: dims,
                a: GemmOperand { ptr: cg.elem_ptr(p(1), adt, off[1])?, dtype: adt, strides: (k as i64, 1) },
                b: GemmOperand { ptr: cg.elem_ptr(p(3), bdt, off[2])?, dtype: bdt, strides: (n as i64, 1) },
                c: sp,
                c_dtype: DType::I32,
                ldc: n as i64,
                alpha: 1.0,
                accumulate: false,
                init: None,
                scratch: gemm_scratch,
            };
            gemm::emit_gemm_i32(cg, f, &spec, a_zp, b_zp)?;
            let ys = wide(cg.load(p(5), plan.ty(y_scale).dtype, cg.i64c(0))?)?;
            let yz = match y_zero {
                Some(_) => {
                    let z = cg.load(p(yz_at), odt, cg.i64c(0))?.into_int_value();
                    let z = if odt == DType::U8 {
                        cg.b.build_unsigned_int_to_float(z, f64t, "yz")?
                    } else {
                        cg.b.build_signed_int_to_float(z, f64t, "yz")?
                    };
                    z.into()
                }
                None => f64t.const_zero().into(),
            };
            cg.for_n(f, m, &mut |i| {
                let as_ = wide(cg.load(p(2), sdt, if a_scale_per { i } else { cg.i64c(0) })?)?;
                cg.for_n(f, n, &mut |j| {
                    let bs = wide(cg.load(p(4), plan.ty(b_scale).dtype, if b_scale_per { j } else { cg.i64c(0) })?)?;
                    let scale = round_to_scale(cg.fdiv(round_to_scale(cg.fmul(as_, bs)?)?, ys)?)?;
                    let c = cg.load(sp, DType::I32, cg.affine(i, n as i64, j)?)?.into_int_value();
                    let c = cg.b.build_signed_int_to_float(c, f64t, "c")?.into();
                    let y = cg.fadd(cg.intrinsic("llvm.roundeven", &[cg.fmul(c, scale)?])?, yz)?;
                    let y = cg.fmaxnum(y, f64t.const_float(lo).into())?;
                    let y =
                        cg.b.build_float_compare(
                            inkwell::FloatPredicate::OGT,
                            y.into_float_value(),
                            f64t.const_float(hi),
                            "over",
                        )
                        .and_then(|over| cg.b.build_select(over, f64t.const_float(hi), y.into_float_value(), "y"))?;
                    let q = cg.b.build_float_to_signed_int(y.into_float_value(), cg.ctx.i32_type(), "q")?;
                    let q = cg.b.build_int_truncate(q, cg.ctx.i8_type(), "q8")?;
                    cg.store(p(0), odt, cg.add(off[0], cg.affine(i, n as i64, j)?)?, q.into())
                })
            })
        })?;
    }
    cg.b.build_return(None)?;
    let mut locs: Vec<Loc> = values.iter().map(|&v| plan.loc(v)).collect();
    locs.push(Loc { slot: crate::plan::Slot::Arena, offset: scratch });
    Ok((f, locs))
}

/// The batch loop of a MatMul: the (collapsed) batch sizes and, per
/// operand (C, A, B), the element stride of each batch axis, with numpy
/// broadcasting of the batch dims.
fn batch_strides(ash: &[usize], bsh: &[usize], dims: GemmDims) -> (Vec<usize>, Vec<Vec<i64>>) {
    let GemmDims { m, n, k } = dims;
    let a_batch: &[usize] = if ash.len() > 2 { &ash[..ash.len() - 2] } else { &[] };
    let b_batch: &[usize] = if bsh.len() > 2 { &bsh[..bsh.len() - 2] } else { &[] };
    let batch_rank = a_batch.len().max(b_batch.len());
    let mut out_batch = vec![1usize; batch_rank];
    for (i, d) in out_batch.iter_mut().enumerate() {
        let da = if i + a_batch.len() >= batch_rank { a_batch[i + a_batch.len() - batch_rank] } else { 1 };
        let db = if i + b_batch.len() >= batch_rank { b_batch[i + b_batch.len() - batch_rank] } else { 1 };
        *d = da.max(db);
    }
    let scale = |s: Vec<i64>, by: usize| s.into_iter().map(|x| x * by as i64).collect::<Vec<_>>();
    let strides = vec![
        scale(contiguous_strides(&out_batch), m * n),
        scale(broadcast_strides(a_batch, &out_batch), m * k),
        scale(broadcast_strides(b_batch, &out_batch), k * n),
    ];
    collapse(&out_batch, &strides)
}

/// The simple MatMul/Gemm loops (f32 and f64): i-k-j order blocked over j
/// and k when B's rows are contiguous, a dot product per element when B is
/// transposed. Used for matrix-vector products, and for every product with
/// [`crate::MatMulKernel::Blocked`] (the baseline the packed GEMM is measured
/// against).
#[allow(clippy::too_many_arguments)]
fn matmul_loops<'ctx>(
    cg: &Cg<'ctx>,
    plan: &Plan,
    step: usize,
    name: &str,
    a: ValueId,
    b: ValueId,
    c_in: Option<ValueId>,
    out: ValueId,
    gemm: GemmAttrs,
) -> Result<Kernel<'ctx>> {
    let dtype = plan.ty(out).dtype;
    let (ash, bsh) = (plan.ty(a).shape.clone(), plan.ty(b).shape.clone());
    let dims = gemm::matmul_dims(&ash, &bsh, gemm.trans_a, gemm.trans_b)
        .ok_or_else(|| BackendError::node(name, "MatMul", format!("inner dimensions differ: {ash:?} and {bsh:?}")))?;
    let GemmDims { m, n, k } = dims;
    let (sizes, strides) = batch_strides(&ash, &bsh, dims);
    let mut values = vec![out, a, b];
    let has_c = c_in.is_some() && gemm.beta != 0.0;
    if let (true, Some(c)) = (has_c, c_in) {
        values.push(c);
    }
    let f = cg.kernel_fn(&format!("k{step}_matmul"), values.len());
    let (cp, ap, bp) = (cg.param(f, 0), cg.param(f, 1), cg.param(f, 2));
    // Element strides of A(i, k) and B(k, j) within one matrix.
    let (sa_i, sa_k) = if gemm.trans_a { (1, m as i64) } else { (k as i64, 1) };
    let (sb_k, sb_j) = if gemm.trans_b { (1, k as i64) } else { (n as i64, 1) };
    let zero = cg.i64c(0);
    let elem_ty = cg.compute_type(dtype).map_err(BackendError::Llvm)?;
    let fzero = cg.fconst(elem_ty.into_float_type().const_float(0.0).into(), 0.0);
    if m * n > 0 {
        nest(cg, f, &sizes, &strides, vec![zero; 3], &mut |off| {
            let (co, ao, bo) = (off[0], off[1], off[2]);
            if sb_j == 1 {
                // i-k-j order, blocked over j and k: the innermost loop runs
                // along rows of B and C, which the loop vectorizer widens.
                let nblocks = (n as i64 + MATMUL_NB - 1) / MATMUL_NB;
                cg.for_n(f, nblocks as usize, &mut |jb| {
                    let j0 = cg.mul(jb, MATMUL_NB)?;
                    let nb = min_const(cg, MATMUL_NB, n as i64, j0)?;
                    cg.for_n(f, m, &mut |i| {
                        let row = cg.add(cg.affine(i, n as i64, co)?, j0)?;
                        cg.for_range(f, nb, &mut |j| cg.store(cp, dtype, cg.add(row, j)?, fzero))
                    })?;
                    let kblocks = (k as i64 + MATMUL_KB - 1) / MATMUL_KB;
                    cg.for_n(f, kblocks as usize, &mut |kblk| {
                        let k0 = cg.mul(kblk, MATMUL_KB)?;
                        let kn = min_const(cg, MATMUL_KB, k as i64, k0)?;
                        cg.for_n(f, m, &mut |i| {
                            let crow = cg.add(cg.affine(i, n as i64, co)?, j0)?;
                            let arow = cg.affine(i, sa_i, ao)?;
                            cg.for_range(f, kn, &mut |kk| {
                                let kidx = cg.add(k0, kk)?;
                                let av = cg.load(ap, dtype, cg.affine(kidx, sa_k, arow)?)?;
                                let brow = cg.add(cg.affine(kidx, sb_k, bo)?, j0)?;
                                cg.for_range(f, nb, &mut |j| {
                                    let ci = cg.add(crow, j)?;
                                    let prod = cg.fmul(av, cg.load(bp, dtype, cg.add(brow, j)?)?)?;
                                    let sum = cg.fadd_reassoc(cg.load(cp, dtype, ci)?, prod)?;
                                    cg.store(cp, dtype, ci, sum)
                                })
                            })
                        })
                    })
                })
            } else {
                // B is transposed: a dot product along k per output element.
                let acc = cg.entry_alloca(f, elem_ty, "acc")?;
                cg.for_n(f, m, &mut |i| {
                    let arow = cg.affine(i, sa_i, ao)?;
                    cg.for_n(f, n, &mut |j| {
                        let bcol = cg.affine(j, sb_j, bo)?;
                        cg.b.build_store(acc, fzero)?;
                        cg.for_n(f, k, &mut |kk| {
                            let av = cg.load(ap, dtype, cg.affine(kk, sa_k, arow)?)?;
                            let bv = cg.load(bp, dtype, cg.affine(kk, sb_k, bcol)?)?;
                            let cur = cg.b.build_load(elem_ty, acc, "acc")?;
                            cg.b.build_store(acc, cg.fadd_reassoc(cur, cg.fmul(av, bv)?)?)?;
                            Ok(())
                        })?;
                        let v = cg.b.build_load(elem_ty, acc, "acc")?;
                        cg.store(cp, dtype, cg.affine(i, n as i64, cg.affine(j, 1, co)?)?, v)
                    })
                })
            }
        })?;
        // Gemm's epilogue: C = alpha·AB + beta·C_in.
        if gemm.alpha != 1.0 || has_c {
            let cstrides = if has_c {
                let csh = plan.ty(values[3]).shape.clone();
                broadcast_strides(&csh, &[m, n])
            } else {
                vec![0, 0]
            };
            let cinp = if has_c { Some(cg.param(f, 3)) } else { None };
            cg.for_n(f, m, &mut |i| {
                cg.for_n(f, n, &mut |j| {
                    let idx = cg.affine(i, n as i64, j)?;
                    let mut v = cg.fmul(cg.load(cp, dtype, idx)?, cg.fconst(fzero, gemm.alpha as f64))?;
                    if let Some(cinp) = cinp {
                        let cidx = cg.add(cg.mul(i, cstrides[0])?, cg.mul(j, cstrides[1])?)?;
                        let cv = cg.load(cinp, plan.ty(values[3]).dtype, cidx)?;
                        v = cg.fadd(v, cg.fmul(cv, cg.fconst(fzero, gemm.beta as f64))?)?;
                    }
                    cg.store(cp, dtype, idx, v)
                })
            })?;
        }
    }
    cg.b.build_return(None)?;
    Ok((f, values.iter().map(|&v| plan.loc(v)).collect()))
}

/// `min(block, total - start)` as an i64 value.
fn min_const<'ctx>(cg: &Cg<'ctx>, block: i64, total: i64, start: IntValue<'ctx>) -> Result<IntValue<'ctx>> {
    if total <= block {
        return Ok(cg.i64c(total));
    }
    let left = cg.b.build_int_nsw_sub(cg.i64c(total), start, "left")?;
    let small = cg.b.build_int_compare(inkwell::IntPredicate::SLT, left, cg.i64c(block), "tail")?;
    Ok(cg.b.build_select(small, left, cg.i64c(block), "nb")?.into_int_value())
}

// ---------------------------------------------------------------- Softmax

/// Softmax or LogSoftmax along `axis`, as rows of length `len` with
/// `stride` between elements.
fn softmax<'ctx>(
    cg: &Cg<'ctx>,
    plan: &Plan,
    step: usize,
    x: ValueId,
    out: ValueId,
    axis: i64,
    log: bool,
) -> Result<Kernel<'ctx>> {
    let shape = plan.ty(x).shape.clone();
    let dtype = plan.ty(x).dtype;
    let rank = shape.len() as i64;
    let axis = if axis < 0 { axis + rank } else { axis };
    let name = format!("k{step}_{}", if log { "logsoftmax" } else { "softmax" });
    if rank == 0 || !(0..rank).contains(&axis) {
        // A scalar is its own row of one element.
        if rank == 0 {
            let f = cg.kernel_fn(&name, 2);
            let yp = cg.param(f, 0);
            let one = if log { 0.0 } else { 1.0 };
            let t = cg.compute_type(dtype).map_err(BackendError::Llvm)?.into_float_type().const_float(one);
            cg.store(yp, dtype, cg.i64c(0), t.into())?;
            cg.b.build_return(None)?;
            return Ok((f, vec![plan.loc(out), plan.loc(x)]));
        }
        return Err(BackendError::node("", "Softmax", format!("axis {axis} out of range for rank {rank}")));
    }
    let axis = axis as usize;
    let outer: usize = shape[..axis].iter().product();
    let len = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    // LogSoftmax's second pass, x - lse, has no exponential: the paper's
    // first pass (one read, cheaper range reduction than a full exp) is the
    // fastest under the online kernel too.
    let online = cg.softmax == SoftmaxAlgorithm::Online && !log;
    let two_pass = (cg.softmax == SoftmaxAlgorithm::TwoPass || (cg.softmax == SoftmaxAlgorithm::Online && log))
        && dtype == DType::F32;
    // Rows are independent: each thread takes a contiguous range of them.
    // A row's arithmetic does not depend on the split, so results are the
    // same on any number of threads.
    let rows = if len > 0 { outer * inner } else { 0 };
    // Every kernel's last pass writes each element once, from the input
    // alone, so a large contiguous output can be streamed.
    let stream = inner == 1 && dtype == DType::F32 && cg.lanes > 1 && plan.ty(out).len() * 4 >= cg.stream_min_bytes;
    let k = cg.parallel_kernel_fn(&name, 2, rows, len * 3);
    let f = k.f;
    let (yp, xp) = (cg.param(f, 0), cg.param(f, 1));
    cg.for_items(&k, &mut |r| {
        let base = if inner == 1 {
            cg.mul(r, len as i64)?
        } else {
            let o = cg.b.build_int_unsigned_div(r, cg.i64c(inner as i64), "outer")?;
            let c = cg.b.build_int_unsigned_rem(r, cg.i64c(inner as i64), "inner")?;
            cg.affine(o, (len * inner) as i64, c)?
        };
        let row = Row { base, stride: inner as i64, len, dtype };
        if online {
            return softmax_online_row(cg, f, xp, yp, &row, stream);
        }
        let lse = if two_pass { lse_two_pass(cg, f, xp, &row)? } else { lse_three_pass(cg, f, xp, &row)? };
        // The last pass: y = exp(x - lse) or x - lse.
        if stream {
            stream_f32(cg, f, (xp, row.base), (yp, row.base), len, &|x| {
                // x ≤ max ≤ lse, so d ≤ 0.
                let d = cg.fsub(x, cg.splat_like(x, lse)?)?;
                if log {
                    Ok(d)
                } else {
                    cg.exp_nonpositive(d)
                }
            })?;
            return stream_fence(cg);
        }
        cg.for_n(f, len, &mut |j| {
            let idx = cg.affine(j, row.stride, row.base)?;
            let d = cg.fsub(cg.load(xp, dtype, idx)?, lse)?;
            let y = if log { d } else { cg.exp_nonpositive(d)? };
            cg.store(yp, dtype, idx, y)
        })
    })?;
    cg.kernel_return(f)?;
    Ok((cg.finish_parallel(k)?, vec![plan.loc(out), plan.loc(x)]))
}

/// Writes `dst[dst_base + j] = value(src[src_base + j])` for `j` in
/// `0..len` (f32, contiguous) with non-temporal vector stores. `value` is
/// called on a vector and on a scalar. Scalar stores run until the output
/// is aligned to the vector width (streaming stores need it), then whole
/// vectors, then the tail. Callers end the kernel's streaming with
/// [`stream_fence`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn stream_f32<'ctx>(
    cg: &Cg<'ctx>,
    f: FunctionValue<'ctx>,
    (src, src_base): (PointerValue<'ctx>, IntValue<'ctx>),
    (dst, dst_base): (PointerValue<'ctx>, IntValue<'ctx>),
    len: usize,
    value: &dyn Fn(BV<'ctx>) -> Result<BV<'ctx>>,
) -> Result<()> {
    let lanes = cg.lanes.max(1) as i64;
    let vty = cg.f32t().vec_type(lanes as u32);
    let first = cg.elem_ptr(dst, DType::F32, dst_base)?;
    let addr = cg.b.build_ptr_to_int(first, cg.i64t(), "addr")?;
    let elems = cg.b.build_right_shift(addr, cg.i64c(2), false, "elems")?;
    let misaligned = cg.b.build_and(elems, cg.i64c(lanes - 1), "mis")?;
    let head = cg.b.build_and(cg.b.build_int_sub(cg.i64c(lanes), misaligned, "gap")?, cg.i64c(lanes - 1), "head")?;
    let len_c = cg.i64c(len as i64);
    let fits = cg.b.build_int_compare(inkwell::IntPredicate::ULT, head, len_c, "fits")?;
    let head = cg.b.build_select(fits, head, len_c, "head")?.into_int_value();
    let vectors = cg.b.build_int_unsigned_div(cg.b.build_int_sub(len_c, head, "rest")?, cg.i64c(lanes), "vectors")?;
    let scalar = |j: IntValue<'ctx>| -> Result<()> {
        let v = value(cg.load(src, DType::F32, cg.add(j, src_base)?)?)?;
        cg.store(dst, DType::F32, cg.add(j, dst_base)?, v)
    };
    cg.for_range(f, head, &mut |j| scalar(j))?;
    cg.for_range(f, vectors, &mut |v| {
        let j = cg.affine(v, lanes, head)?;
        let x = cg.load_f32_vector(vty, src, cg.add(j, src_base)?)?;
        let st = cg.b.build_store(cg.elem_ptr(dst, DType::F32, cg.add(j, dst_base)?)?, value(x)?)?;
        st.set_alignment(lanes as u32 * 4).map_err(|e| BackendError::Llvm(e.to_string()))?;
        let one = cg.ctx.i32_type().const_int(1, false);
        let node = cg.ctx.metadata_node(&[one.into()]);
        st.set_metadata(node, cg.ctx.get_kind_id("nontemporal")).map_err(|e| BackendError::Llvm(e.to_string()))?;
        Ok(())
    })?;
    let done = cg.add(head, cg.mul(vectors, lanes)?)?;
    let tail = cg.b.build_int_sub(len_c, done, "tail")?;
    cg.for_range(f, tail, &mut |t| scalar(cg.add(t, done)?))
}

/// Orders the streaming stores before whatever publishes the kernel's
/// completion: on x86 they are weakly ordered, even against later stores
/// of the same thread.
pub(crate) fn stream_fence(cg: &Cg<'_>) -> Result<()> {
    if cg.targets_x86_64() {
        cg.call_void_intrinsic("llvm.x86.sse.sfence")?;
    }
    Ok(())
}

/// One softmax row.
pub(crate) struct Row<'ctx> {
    pub base: IntValue<'ctx>,
    pub stride: i64,
    pub len: usize,
    pub dtype: DType,
}

/// The three-pass baseline's first two passes: the row maximum, then the
/// sum of `exp(x - max)`. Returns `lse = max + log(sum)`.
pub(crate) fn lse_three_pass<'ctx>(
    cg: &Cg<'ctx>,
    f: FunctionValue<'ctx>,
    xp: PointerValue<'ctx>,
    row: &Row<'ctx>,
) -> Result<BV<'ctx>> {
    let ty = cg.compute_type(row.dtype).map_err(BackendError::Llvm)?;
    let like: BV = ty.into_float_type().const_float(0.0).into();
    let m = cg.entry_alloca(f, ty, "max")?;
    let s = cg.entry_alloca(f, ty, "sum")?;
    if row.stride == 1 && row.dtype == DType::F32 && cg.lanes > 1 {
        cg.b.build_store(m, max_ignoring_nan_f32(cg, f, xp, row.base, row.len)?)?;
    } else {
        cg.b.build_store(m, cg.fconst(like, f64::NEG_INFINITY))?;
        cg.for_n(f, row.len, &mut |j| {
            let v = cg.load(xp, row.dtype, cg.affine(j, row.stride, row.base)?)?;
            let cur = cg.b.build_load(ty, m, "m")?;
            cg.b.build_store(m, cg.fmaxnum(cur, v)?)?;
            Ok(())
        })?;
    }
    let mv = cg.b.build_load(ty, m, "m")?;
    cg.b.build_store(s, cg.fconst(like, 0.0))?;
    cg.for_n(f, row.len, &mut |j| {
        let v = cg.load(xp, row.dtype, cg.affine(j, row.stride, row.base)?)?;
        let e = cg.exp_nonpositive(cg.fsub(v, mv)?)?;
        let cur = cg.b.build_load(ty, s, "s")?;
        cg.b.build_store(s, cg.fadd_reassoc(cur, e)?)?;
        Ok(())
    })?;
    let sv = cg.b.build_load(ty, s, "s")?;
    cg.fadd(mv, cg.intrinsic("llvm.log", &[sv])?)
}

/// Elements per chunk of the online kernel: 4 KB of f32, so a chunk read
/// twice (its maximum, then its exponentials) stays in L1.
const ONLINE_CHUNK: usize = 1024;
/// Longest row (bytes of f32) whose exponentials the streaming online
/// kernel stages in a buffer on each thread's stack; the Attention kernel
/// keeps the same budget.
const ONLINE_STACK_ROW_BYTES: usize = 256 << 10;
/// At most this many chunks per row: their reference maxima live on the
/// stack, so longer rows take longer chunks.
const ONLINE_MAX_CHUNKS: usize = 256;

/// One Softmax row of the online (chunked) kernel: one exponential per
/// element and two passes over memory. Pass 1 walks the row in L1-sized
/// chunks: the chunk's maximum folds into the running maximum `M`, the
/// chunk's `exp(x - M)` go to `y` while their sum rescales into the running
/// sum `S` (Milakov & Gimelshein's online normalizer, per chunk rather than
/// per element so the chunk loops vectorize). Pass 2 scales each chunk of
/// `y` by `exp(M_chunk - M) / S`. `-inf` elements are exact zeros; a row of
/// only `-inf` gives NaN like the other kernels.
///
/// With `stream` (a large contiguous output) `y` is written once, by
/// streaming stores, so its lines are never read from memory: pass 1 puts
/// the exponentials in a private row buffer on the stack (it stays in L2)
/// and pass 2 streams the scaled buffer out. A row too long for the stack
/// has pass 2 compute `exp(x - M) / S` afresh instead.
fn softmax_online_row<'ctx>(
    cg: &Cg<'ctx>,
    f: FunctionValue<'ctx>,
    xp: PointerValue<'ctx>,
    yp: PointerValue<'ctx>,
    row: &Row<'ctx>,
    stream: bool,
) -> Result<()> {
    let ty = cg.compute_type(row.dtype).map_err(BackendError::Llvm)?;
    let like: BV = ty.into_float_type().const_float(0.0).into();
    let contiguous_f32 = row.stride == 1 && row.dtype == DType::F32 && cg.lanes > 1;
    let chunk = ONLINE_CHUNK.max(row.len.div_ceil(ONLINE_MAX_CHUNKS));
    let full = row.len / chunk;
    let tail = row.len - full * chunk;
    let nchunks = full + usize::from(tail > 0);
    let refs = cg.entry_alloca(f, ty.into_float_type().array_type(nchunks as u32).into(), "chunk_ref")?;
    let staging = if stream && row.len * 4 <= ONLINE_STACK_ROW_BYTES {
        Some(cg.entry_alloca(f, cg.f32t().array_type(row.len as u32).into(), "row_exp")?)
    } else {
        None
    };
    let m = cg.entry_alloca(f, ty, "max")?;
    let s = cg.entry_alloca(f, ty, "sum")?;
    let cm = cg.entry_alloca(f, ty, "chunk_max")?;
    let cs = cg.entry_alloca(f, ty, "chunk_sum")?;
    cg.b.build_store(m, cg.fconst(like, f64::NEG_INFINITY))?;
    cg.b.build_store(s, cg.fconst(like, 0.0))?;
    let ref_ptr = |c: IntValue<'ctx>| -> Result<PointerValue<'ctx>> {
        // SAFETY: `c` < `nchunks`, the array's length.
        Ok(unsafe { cg.b.build_in_bounds_gep(ty, refs, &[c], "ref")? })
    };
    let pass1 = |c: IntValue<'ctx>, n: usize| -> Result<()> {
        let start = cg.mul(c, (chunk as i64) * row.stride)?;
        let start = cg.add(start, row.base)?;
        if contiguous_f32 {
            cg.b.build_store(cm, max_ignoring_nan_f32(cg, f, xp, start, n)?)?;
        } else {
            cg.b.build_store(cm, cg.fconst(like, f64::NEG_INFINITY))?;
            cg.for_n(f, n, &mut |j| {
                let v = cg.load(xp, row.dtype, cg.affine(j, row.stride, start)?)?;
                let cur = cg.b.build_load(ty, cm, "cm")?;
                cg.b.build_store(cm, cg.fmaxnum(cur, v)?)?;
                Ok(())
            })?;
        }
        let old = cg.b.build_load(ty, m, "m")?;
        let new = cg.fmaxnum(old, cg.b.build_load(ty, cm, "cm")?)?;
        cg.b.build_store(m, new)?;
        // While every element so far is -inf, 0 is the reference, so
        // `-inf - ref` is -inf (its exponential 0), not NaN.
        let none = cg.fcmp(FloatPredicate::OEQ, new, cg.fconst(like, f64::NEG_INFINITY))?;
        let reference = cg.select(none, cg.fconst(like, 0.0), new)?;
        cg.b.build_store(ref_ptr(c)?, reference)?;
        cg.b.build_store(cs, cg.fconst(like, 0.0))?;
        cg.for_n(f, n, &mut |j| {
            let idx = cg.affine(j, row.stride, start)?;
            // x ≤ reference, the maximum so far (NaN passes through).
            let e = cg.exp_nonpositive(cg.fsub(cg.load(xp, row.dtype, idx)?, reference)?)?;
            match staging {
                Some(buf) => cg.store(buf, DType::F32, cg.affine(c, chunk as i64, j)?, e)?,
                None if !stream => cg.store(yp, row.dtype, idx, e)?,
                None => {}
            }
            let cur = cg.b.build_load(ty, cs, "cs")?;
            cg.b.build_store(cs, cg.fadd_reassoc(cur, e)?)?;
            Ok(())
        })?;
        // exp(-inf - ref) = 0 drops the empty sum of an all -inf prefix.
        let rescale = cg.exp_nonpositive(cg.fsub(old, reference)?)?;
        let sum = cg.fadd(cg.fmul(cg.b.build_load(ty, s, "s")?, rescale)?, cg.b.build_load(ty, cs, "cs")?)?;
        cg.b.build_store(s, sum)?;
        Ok(())
    };
    cg.for_n(f, full, &mut |c| pass1(c, chunk))?;
    if tail > 0 {
        pass1(cg.i64c(full as i64), tail)?;
    }
    let last = cg.b.build_load(ty, ref_ptr(cg.i64c(nchunks as i64 - 1))?, "ref_last")?;
    let sum = cg.b.build_load(ty, s, "s")?;
    let inv = cg.fdiv(cg.fconst(like, 1.0), sum)?;
    if stream && staging.is_none() {
        stream_f32(cg, f, (xp, row.base), (yp, row.base), row.len, &|x| {
            let e = cg.exp_nonpositive(cg.fsub(x, cg.splat_like(x, last)?)?)?;
            cg.fmul(e, cg.splat_like(x, inv)?)
        })?;
        return stream_fence(cg);
    }
    let pass2 = |c: IntValue<'ctx>, n: usize| -> Result<()> {
        let start = cg.add(cg.mul(c, (chunk as i64) * row.stride)?, row.base)?;
        let reference = cg.b.build_load(ty, ref_ptr(c)?, "ref")?;
        let scale = cg.fmul(cg.exp_nonpositive(cg.fsub(reference, last)?)?, inv)?;
        if let Some(buf) = staging {
            let from = cg.mul(c, chunk as i64)?;
            return stream_f32(cg, f, (buf, from), (yp, start), n, &|e| cg.fmul(e, cg.splat_like(e, scale)?));
        }
        cg.for_n(f, n, &mut |j| {
            let idx = cg.affine(j, row.stride, start)?;
            cg.store(yp, row.dtype, idx, cg.fmul(cg.load(yp, row.dtype, idx)?, scale)?)
        })
    };
    cg.for_n(f, full, &mut |c| pass2(c, chunk))?;
    if tail > 0 {
        pass2(cg.i64c(full as i64), tail)?;
    }
    if staging.is_some() {
        stream_fence(cg)?;
    }
    Ok(())
}

/// Vector accumulators of [`max_ignoring_nan_f32`]: enough independent
/// compare-selects to cover the latency of each.
const MAX_ACCUMULATORS: usize = 4;

/// The maximum of `x[start..start + n]` (f32, contiguous), ignoring NaN
/// (`-inf` when empty or all NaN). Softmax needs no NaN from it: a NaN
/// element poisons the row's sum anyway. So the accumulator update is
/// `v > acc ? v : acc`, which keeps a non-NaN accumulator and is one
/// `maxps` on x86, where `maxnum` costs a compare and a blend more.
fn max_ignoring_nan_f32<'ctx>(
    cg: &Cg<'ctx>,
    f: FunctionValue<'ctx>,
    xp: PointerValue<'ctx>,
    start: IntValue<'ctx>,
    n: usize,
) -> Result<BV<'ctx>> {
    let lanes = cg.lanes.max(1) as usize;
    let vty = cg.f32t().vec_type(lanes as u32);
    let neg_inf: BV = cg.fconst(vty.const_zero().into(), f64::NEG_INFINITY);
    let keep_max = |acc: BV<'ctx>, v: BV<'ctx>| cg.fmax_ignoring_nan(acc, v);
    let group = lanes * MAX_ACCUMULATORS;
    let accs: Vec<PointerValue> =
        (0..MAX_ACCUMULATORS).map(|_| cg.entry_alloca(f, vty.into(), "max_acc")).collect::<Result<_>>()?;
    for &a in &accs {
        cg.b.build_store(a, neg_inf)?;
    }
    let load_vec = |idx: IntValue<'ctx>| cg.load_f32_vector(vty, xp, idx);
    cg.for_n(f, n / group, &mut |g| {
        let first = cg.affine(g, group as i64, start)?;
        // The softmax kernels' maximum is the pass that reads the row from
        // memory: prefetch ahead, one cache line per vector.
        for a in 0..MAX_ACCUMULATORS {
            let ahead = cg.add(first, cg.i64c(ROW_PREFETCH_ELEMS + (a * lanes) as i64))?;
            // SAFETY: only prefetched.
            cg.prefetch_read(unsafe { cg.b.build_gep(cg.f32t(), xp, &[ahead], "x_ahead")? })?;
        }
        for (a, &acc) in accs.iter().enumerate() {
            let v = load_vec(cg.add(first, cg.i64c((a * lanes) as i64))?)?;
            cg.b.build_store(acc, keep_max(cg.b.build_load(vty, acc, "acc")?, v)?)?;
        }
        Ok(())
    })?;
    let done = n / group * group;
    let after = cg.add(start, cg.i64c(done as i64))?;
    cg.for_n(f, (n - done) / lanes, &mut |v| {
        let x = load_vec(cg.affine(v, lanes as i64, after)?)?;
        cg.b.build_store(accs[0], keep_max(cg.b.build_load(vty, accs[0], "acc")?, x)?)?;
        Ok(())
    })?;
    let mut acc = cg.b.build_load(vty, accs[0], "acc")?;
    for &a in &accs[1..] {
        acc = keep_max(acc, cg.b.build_load(vty, a, "acc")?)?;
    }
    // No lane is NaN, so the reduction's NaN rule does not matter.
    let reduce = inkwell::intrinsics::Intrinsic::find("llvm.vector.reduce.fmax")
        .and_then(|i| i.get_declaration(&cg.module, &[vty.into()]))
        .ok_or_else(|| BackendError::Llvm("cannot declare llvm.vector.reduce.fmax".into()))?;
    let mut m =
        cg.b.build_call(reduce, &[acc.into()], "row_max")?
            .try_as_basic_value()
            .basic()
            .ok_or_else(|| BackendError::Llvm("llvm.vector.reduce.fmax returns no value".into()))?;
    let slot = cg.entry_alloca(f, cg.f32t().into(), "max_tail")?;
    cg.b.build_store(slot, m)?;
    let tail_start = done + (n - done) / lanes * lanes;
    cg.for_n(f, n - tail_start, &mut |t| {
        let idx = cg.add(t, cg.add(start, cg.i64c(tail_start as i64))?)?;
        let v = cg.load(xp, DType::F32, idx)?;
        cg.b.build_store(slot, keep_max(cg.b.build_load(cg.f32t(), slot, "m")?, v)?)?;
        Ok(())
    })?;
    m = cg.b.build_load(cg.f32t(), slot, "m")?;
    Ok(m)
}

/// How far ahead (f32 elements) the passes that read a softmax row from
/// memory prefetch it.
const ROW_PREFETCH_ELEMS: i64 = 512;

/// Inputs whose magnitude the two-pass range reduction handles exactly:
/// `n = rint(x·log2 e)` stays below 2^15, so `n·LN2_HI` is exact.
const TWO_PASS_LIMIT: f64 = 2.0e4;
/// Rows whose maximum lies within ±this use the two-pass result; others
/// (astronomically large or small logits) take the three-pass path, which
/// subtracts the maximum first. Elements below -`TWO_PASS_LIMIT` are then
/// at least 1e4 below the maximum and contribute nothing in f32.
const TWO_PASS_ROW_MAX: f64 = 1.0e4;

/// The two-pass algorithm's first pass (f32): one read of the row keeps,
/// per SIMD lane, the sum of `exp(x)` as a pair (`n`, `s`) meaning
/// `s · 2^n`. Each element's `exp(x) = p · 2^k` comes from the range
/// reduction alone (no final scaling), and adding it rescales by powers of
/// two: `n' = max(n, k)`, `s' = s · 2^(n - n') + p · 2^(k - n')`, so no
/// intermediate overflows. The same pass keeps the row maximum; a row whose
/// maximum is outside ±1e4 (beyond the exact range of the reduction) is
/// redone by the three-pass path. Returns `lse = n·ln2 + log(s)` after
/// combining the lanes.
pub(crate) fn lse_two_pass<'ctx>(
    cg: &Cg<'ctx>,
    f: FunctionValue<'ctx>,
    xp: PointerValue<'ctx>,
    row: &Row<'ctx>,
) -> Result<BV<'ctx>> {
    let lanes = if row.stride == 1 { cg.lanes.max(1) as usize } else { 1 };
    let f32t = cg.f32t();
    let vty = f32t.vec_type(lanes as u32);
    let splat = |v: f64| -> BV { cg.fconst(vty.const_zero().into(), v) };
    let scalar = |v: f64| -> BV { f32t.const_float(v).into() };
    // Inputs below the limit contribute nothing next to an in-range maximum;
    // clamping keeps the range reduction finite for -inf. NaN passes (the
    // compare is false) and poisons the sum, as it should.
    let clamp = |x: BV<'ctx>, lo: BV<'ctx>| -> Result<BV<'ctx>> {
        let below = cg.fcmp(FloatPredicate::OLT, x, lo)?;
        cg.select(below, lo, x)
    };
    // `n` and `m` start at -inf and never become NaN: the maxima need not
    // keep NaN (a NaN element poisons `s` instead).
    let update = |n: BV<'ctx>, s: BV<'ctx>, m: BV<'ctx>, x: BV<'ctx>, lo: BV<'ctx>| -> Result<[BV<'ctx>; 3]> {
        let (k, p) = cg.exp_split_short(clamp(x, lo)?)?;
        let n2 = cg.fmax_ignoring_nan(n, k)?;
        let s_old = cg.scale_pow2_nonpos(s, cg.fsub(n, n2)?)?;
        let s_new = cg.scale_pow2_nonpos(p, cg.fsub(k, n2)?)?;
        Ok([n2, cg.fadd(s_old, s_new)?, cg.fmax_ignoring_nan(m, x)?])
    };

    let chunks = row.len / lanes;
    let vacc: Vec<PointerValue> =
        ["n", "s", "m"].iter().map(|name| cg.entry_alloca(f, vty.into(), name)).collect::<Result<_>>()?;
    for (slot, init) in vacc.iter().zip([f64::NEG_INFINITY, 0.0, f64::NEG_INFINITY]) {
        cg.b.build_store(*slot, splat(init))?;
    }
    cg.for_n(f, chunks, &mut |c| {
        let idx = cg.affine(c, lanes as i64 * row.stride, row.base)?;
        if row.stride == 1 {
            // This pass is the one that reads the row from memory.
            let ahead = cg.add(idx, cg.i64c(ROW_PREFETCH_ELEMS))?;
            // SAFETY: only prefetched.
            cg.prefetch_read(unsafe { cg.b.build_gep(f32t, xp, &[ahead], "x_ahead")? })?;
        }
        let x = cg.load_f32_vector(vty, xp, idx)?;
        let cur: Vec<BV> = vacc.iter().map(|&a| cg.b.build_load(vty, a, "acc")).collect::<Result<_, _>>()?;
        let next = update(cur[0], cur[1], cur[2], x, splat(-TWO_PASS_LIMIT))?;
        for (slot, v) in vacc.iter().zip(next) {
            cg.b.build_store(*slot, v)?;
        }
        Ok(())
    })?;
    // The tail, one element at a time, into scalar accumulators.
    let sacc: Vec<PointerValue> =
        ["nt", "st", "mt"].iter().map(|name| cg.entry_alloca(f, f32t.into(), name)).collect::<Result<_>>()?;
    for (slot, init) in sacc.iter().zip([f64::NEG_INFINITY, 0.0, f64::NEG_INFINITY]) {
        cg.b.build_store(*slot, scalar(init))?;
    }
    cg.for_n(f, row.len - chunks * lanes, &mut |t| {
        let j = cg.add(t, cg.i64c((chunks * lanes) as i64))?;
        let x = cg.load(xp, DType::F32, cg.affine(j, row.stride, row.base)?)?;
        let cur: Vec<BV> = sacc.iter().map(|&a| cg.b.build_load(f32t, a, "acc")).collect::<Result<_, _>>()?;
        let next = update(cur[0], cur[1], cur[2], x, scalar(-TWO_PASS_LIMIT))?;
        for (slot, v) in sacc.iter().zip(next) {
            cg.b.build_store(*slot, v)?;
        }
        Ok(())
    })?;
    // Combine the lanes and the tail: n = max n_l, s = Σ s_l · 2^(n_l - n).
    let vecs: Vec<_> = vacc
        .iter()
        .map(|&a| cg.b.build_load(vty, a, "acc").map(|v| v.into_vector_value()))
        .collect::<Result<_, _>>()?;
    let mut parts: Vec<[BV; 3]> = Vec::with_capacity(lanes + 1);
    for l in 0..lanes {
        let li = cg.ctx.i32_type().const_int(l as u64, false);
        let mut part = [scalar(0.0); 3];
        for (p, v) in part.iter_mut().zip(&vecs) {
            *p = cg.b.build_extract_element(*v, li, "lane")?;
        }
        parts.push(part);
    }
    let mut tail = [scalar(0.0); 3];
    for (p, a) in tail.iter_mut().zip(&sacc) {
        *p = cg.b.build_load(f32t, *a, "acc")?;
    }
    parts.push(tail);
    let (mut n_all, mut m_all) = (parts[0][0], parts[0][2]);
    for part in &parts[1..] {
        n_all = cg.fmaxnum(n_all, part[0])?;
        m_all = cg.fmaxnum(m_all, part[2])?;
    }
    let mut s_all = scalar(0.0);
    for part in &parts {
        s_all = cg.fadd(s_all, cg.scale_pow2_nonpos(part[1], cg.fsub(part[0], n_all)?)?)?;
    }
    let n_ln2 = cg.fmul(n_all, scalar(std::f64::consts::LN_2))?;
    let fast = cg.fadd(n_ln2, cg.intrinsic("llvm.log", &[s_all])?)?;

    // Out-of-range rows (rare) take the three-pass path.
    let lse = cg.entry_alloca(f, f32t.into(), "lse")?;
    cg.b.build_store(lse, fast)?;
    let above = cg.fcmp(FloatPredicate::OGT, m_all, scalar(TWO_PASS_ROW_MAX))?;
    let below = cg.fcmp(FloatPredicate::OLT, m_all, scalar(-TWO_PASS_ROW_MAX))?;
    let out_of_range = cg.b.build_or(above.into_int_value(), below.into_int_value(), "out_of_range")?;
    let slow = cg.ctx.append_basic_block(f, "lse.slow");
    let done = cg.ctx.append_basic_block(f, "lse.done");
    cg.b.build_conditional_branch(out_of_range, slow, done)?;
    cg.b.position_at_end(slow);
    let exact = lse_three_pass(cg, f, xp, row)?;
    cg.b.build_store(lse, exact)?;
    cg.b.build_unconditional_branch(done)?;
    cg.b.position_at_end(done);
    Ok(cg.b.build_load(f32t, lse, "lse")?)
}

// ---------------------------------------------------------------- Reduce

fn reduce<'ctx>(
    cg: &Cg<'ctx>,
    plan: &Plan,
    step: usize,
    kind: ReduceKind,
    x: ValueId,
    out: ValueId,
    reduced: &[bool],
) -> Result<Kernel<'ctx>> {
    let shape = plan.ty(x).shape.clone();
    let dtype = plan.ty(x).dtype;
    let in_strides = contiguous_strides(&shape);
    let kept_sizes: Vec<usize> = shape.iter().zip(reduced).filter(|(_, &r)| !r).map(|(&d, _)| d).collect();
    let kept_in: Vec<i64> = in_strides.iter().zip(reduced).filter(|(_, &r)| !r).map(|(&s, _)| s).collect();
    let red_sizes: Vec<usize> = shape.iter().zip(reduced).filter(|(_, &r)| r).map(|(&d, _)| d).collect();
    let red_in: Vec<i64> = in_strides.iter().zip(reduced).filter(|(_, &r)| r).map(|(&s, _)| s).collect();
    let count: usize = red_sizes.iter().product();
    let (ksizes, kstrides) = collapse(&kept_sizes, &[contiguous_strides(&kept_sizes), kept_in]);
    let (rsizes, rstrides) = collapse(&red_sizes, &[red_in]);

    let total: usize = plan.ty(out).len();
    // Each output element is one item: its reduction runs on one thread,
    // in the serial order. (A reduction to one element stays serial.)
    let k = cg.parallel_kernel_fn(&format!("k{step}_{}", kind.name()), 2, total, count.max(1));
    let f = k.f;
    let (yp, xp) = (cg.param(f, 0), cg.param(f, 1));
    let ty = cg.compute_type(dtype).map_err(BackendError::Llvm)?;
    let like: BV = ty.into_float_type().const_float(0.0).into();
    let acc = cg.entry_alloca(f, ty, "acc")?;
    let mx = cg.entry_alloca(f, ty, "mx")?;
    let init = match kind {
        ReduceKind::Max => f64::NEG_INFINITY,
        ReduceKind::Min => f64::INFINITY,
        ReduceKind::Prod => 1.0,
        _ => 0.0,
    };
    if total > 0 {
        cg.for_items_nest(&k, &ksizes, &kstrides, &[cg.i64c(0); 2], &mut |koff| {
            let (yo, xo) = (koff[0], koff[1]);
            // LogSumExp subtracts the maximum first so exp cannot overflow.
            let shift = if kind == ReduceKind::LogSumExp {
                cg.b.build_store(mx, cg.fconst(like, f64::NEG_INFINITY))?;
                nest(cg, f, &rsizes, &rstrides, vec![xo], &mut |r| {
                    let v = cg.load(xp, dtype, r[0])?;
                    let cur = cg.b.build_load(ty, mx, "m")?;
                    cg.b.build_store(mx, cg.intrinsic("llvm.maximum", &[cur, v])?)?;
                    Ok(())
                })?;
                let m = cg.b.build_load(ty, mx, "m")?;
                // An all -inf row has no finite maximum; shift by 0 instead.
                let finite = cg.fcmp(FloatPredicate::ONE, m, cg.fconst(like, f64::NEG_INFINITY))?;
                Some(cg.select(finite, m, cg.fconst(like, 0.0))?)
            } else {
                None
            };
            cg.b.build_store(acc, cg.fconst(like, init))?;
            nest(cg, f, &rsizes, &rstrides, vec![xo], &mut |r| {
                let v = cg.load(xp, dtype, r[0])?;
                let cur = cg.b.build_load(ty, acc, "acc")?;
                let next = match kind {
                    ReduceKind::Sum | ReduceKind::Mean | ReduceKind::LogSum => cg.fadd_reassoc(cur, v)?,
                    ReduceKind::Max => cg.intrinsic("llvm.maximum", &[cur, v])?,
                    ReduceKind::Min => cg.intrinsic("llvm.minimum", &[cur, v])?,
                    ReduceKind::Prod => cg.fmul(cur, v)?,
                    ReduceKind::SumSquare | ReduceKind::L2 => cg.fadd_reassoc(cur, cg.fmul(v, v)?)?,
                    ReduceKind::L1 => cg.fadd_reassoc(cur, cg.intrinsic("llvm.fabs", &[v])?)?,
                    ReduceKind::LogSumExp => {
                        let m = shift.expect("LogSumExp computes its shift first");
                        cg.fadd_reassoc(cur, cg.exp_nonpositive(cg.fsub(v, m)?)?)?
                    }
                };
                cg.b.build_store(acc, next)?;
                Ok(())
            })?;
            let a = cg.b.build_load(ty, acc, "acc")?;
            let y = match kind {
                ReduceKind::Mean => cg.fdiv(a, cg.fconst(like, count as f64))?,
                ReduceKind::L2 => cg.intrinsic("llvm.sqrt", &[a])?,
                ReduceKind::LogSum => cg.intrinsic("llvm.log", &[a])?,
                ReduceKind::LogSumExp => cg.fadd(shift.expect("computed above"), cg.intrinsic("llvm.log", &[a])?)?,
                _ => a,
            };
            cg.store(yp, dtype, yo, y)
        })?;
    }
    cg.kernel_return(f)?;
    Ok((cg.finish_parallel(k)?, vec![plan.loc(out), plan.loc(x)]))
}

// ---------------------------------------------------------------- LayerNorm / RMSNorm

/// What [`normalize`] computes.
struct Norm {
    axis: i64,
    epsilon: f64,
    /// RMSNormalization (`x / sqrt(mean(x²) + ε) · scale`) rather than
    /// LayerNormalization (`(x - mean) / sqrt(var + ε) · scale + bias`).
    rms: bool,
}

/// A norm node's operands besides X, checked.
struct NormArgs {
    scale: ValueId,
    bias: Option<ValueId>,
    out: ValueId,
    /// LayerNormalization's optional mean and inverse standard deviation.
    stats: (Option<ValueId>, Option<ValueId>),
    norm: Norm,
}

fn norm_args(cg: &Cg<'_>, plan: &Plan, id: NodeId) -> Result<NormArgs> {
    let node = plan.graph.node(id);
    let err = |m: String| BackendError::node(&node.name, node.op.name(), m);
    let (Op::LayerNormalization { axis, epsilon, stash_type } | Op::RMSNormalization { axis, epsilon, stash_type }) =
        &node.op
    else {
        return Err(err("not a normalization".into()));
    };
    let out = node.output(0).ok_or_else(|| err("output 0 is missing".into()))?;
    let scale = node.input(1).ok_or_else(|| err("input 1 (scale) is missing".into()))?;
    let dtype = plan.ty(out).dtype;
    if !dtype.is_float() {
        return Err(BackendError::unsupported(&node.name, node.op.name(), format!("{} on {dtype}", node.op.name())));
    }
    let rms = matches!(node.op, Op::RMSNormalization { .. });
    let bias = if rms { None } else { node.input(2) };
    let stats = if rms { (None, None) } else { (node.output(1), node.output(2)) };
    for s in [stats.0, stats.1].into_iter().flatten() {
        let sd = plan.ty(s).dtype;
        if cg.compute_type(sd).ok() != cg.compute_type(dtype).ok() || sd != *stash_type && sd != dtype {
            return Err(BackendError::unsupported(
                &node.name,
                node.op.name(),
                format!("statistics in {sd} for {dtype} inputs"),
            ));
        }
    }
    Ok(NormArgs { scale, bias, out, stats, norm: Norm { axis: *axis, epsilon: *epsilon as f64, rms } })
}

/// The fused elementwise group a norm kernel computes as it reads X (see
/// [`crate::plan::Step::NormPrologue`]).
struct Prologue<'a, 'ctx> {
    nodes: &'a [NodeId],
    /// The group's operands read from buffers, in parameter order.
    leaves: Vec<ValueId>,
    /// Its single-element constants, as immediates.
    scalars: BTreeMap<ValueId, Val<'ctx>>,
    /// Whether X is also stored (another step or the caller reads it).
    write_x: bool,
}

/// The kernel of a norm whose input X is computed by the fused group
/// `nodes` (a [`crate::plan::Step::NormPrologue`]).
pub(crate) fn emit_norm_with_prologue<'ctx>(
    cg: &Cg<'ctx>,
    plan: &Plan,
    step: usize,
    nodes: &[NodeId],
    norm: NodeId,
    write_x: bool,
) -> Result<Kernel<'ctx>> {
    let x = crate::plan::norm_prologue_x(&plan.graph, norm);
    let (leaves, scalars) = super::elementwise::group_leaves(cg, plan, nodes, x)?;
    let args = norm_args(cg, plan, norm)?;
    normalize(cg, plan, step, x, args, Some(Prologue { nodes, leaves, scalars, write_x }))
}

/// Normalization over the trailing axes from `axis`, one row at a time:
/// the mean, then the variance around it (two passes, as the interpreter
/// computes it, which is stabler than E[x²] - E[x]²), then the output.
/// Scale and bias broadcast against the whole input.
///
/// With a prologue, X is not read but computed: the first pass evaluates
/// the group per element into a row buffer on the stack (and into X's
/// buffer when it is written), summing as it goes, and the later passes
/// read the row buffer, which is still in L1. The arithmetic of the norm is
/// the same either way, so the results are equal bit for bit.
fn normalize<'ctx>(
    cg: &Cg<'ctx>,
    plan: &Plan,
    step: usize,
    x: ValueId,
    args: NormArgs,
    prologue: Option<Prologue<'_, 'ctx>>,
) -> Result<Kernel<'ctx>> {
    let NormArgs { scale, bias, out, stats, norm } = args;
    let shape = plan.ty(x).shape.clone();
    let dtype = plan.ty(x).dtype;
    let rank = shape.len() as i64;
    let axis = if norm.axis < 0 { norm.axis + rank } else { norm.axis };
    if !(0..rank).contains(&axis) {
        return Err(BackendError::node("", "LayerNormalization", format!("axis {axis} out of range for rank {rank}")));
    }
    let axis = axis as usize;
    let cols: usize = shape[axis..].iter().product();
    let leaves: &[ValueId] = prologue.as_ref().map_or(&[], |p| &p.leaves);
    // Operands of the loop nests: X, scale, bias, the prologue's leaves,
    // then the row buffer (X's offset within the row).
    let xs = contiguous_strides(&shape);
    let mut operands = vec![xs.clone(), broadcast_strides(&plan.ty(scale).shape, &shape)];
    operands.push(bias.map_or_else(|| vec![0; shape.len()], |b| broadcast_strides(&plan.ty(b).shape, &shape)));
    operands.extend(leaves.iter().map(|&v| broadcast_strides(&plan.ty(v).shape, &shape)));
    let (outer, inner): (Vec<Vec<i64>>, Vec<Vec<i64>>) =
        operands.iter().map(|v| (v[..axis].to_vec(), v[axis..].to_vec())).unzip();
    let mut outer = outer;
    outer.push(contiguous_strides(&shape[..axis]));
    let mut inner = inner;
    inner.push(xs[axis..].to_vec());
    let (osizes, ostrides) = collapse(&shape[..axis], &outer);
    let (isizes, istrides) = collapse(&shape[axis..], &inner);
    let row_at = 3 + leaves.len();

    let mut values = vec![out];
    let reads_x = prologue.is_none();
    let writes_x = prologue.as_ref().is_some_and(|p| p.write_x);
    if reads_x || writes_x {
        values.push(x);
    }
    values.push(scale);
    values.extend(bias);
    let (mean_out, inv_out) = stats;
    values.extend(mean_out);
    values.extend(inv_out);
    values.extend(leaves);
    // Rows are the items: each is normalized on one thread, as serially.
    let rows: usize = if cols > 0 { shape[..axis].iter().product() } else { 0 };
    let kind = if norm.rms { "rmsnorm" } else { "layernorm" };
    let name = match &prologue {
        Some(_) => format!("k{step}_fused_{kind}"),
        None => format!("k{step}_{kind}"),
    };
    let work = cols * (4 + prologue.as_ref().map_or(0, |p| p.nodes.len()));
    let k = cg.parallel_kernel_fn(&name, values.len(), rows, work);
    let f = k.f;
    let mut next = 0;
    let mut take = |present: bool| {
        present.then(|| {
            next += 1;
            cg.param(f, next - 1)
        })
    };
    let yp = take(true).expect("the output is always a parameter");
    let xp = take(reads_x || writes_x);
    let sp = take(true).expect("the scale is always a parameter");
    let bp = take(bias.is_some());
    let mp = take(mean_out.is_some());
    let ip = take(inv_out.is_some());
    let leaf_ptrs: Vec<PointerValue> = leaves.iter().map(|_| take(true).expect("every leaf is a parameter")).collect();
    let (sdt, bdt) = (plan.ty(scale).dtype, bias.map(|b| plan.ty(b).dtype));
    let ty = cg.compute_type(dtype).map_err(BackendError::Llvm)?;
    let like: BV = ty.into_float_type().const_float(0.0).into();
    let c = |v: f64| cg.fconst(like, v);
    let acc = cg.entry_alloca(f, ty, "acc")?;
    let row = match &prologue {
        Some(_) => Some(cg.entry_alloca(f, ty.into_float_type().array_type(cols as u32).into(), "row")?),
        None => None,
    };
    // X at a point of the inner nest: from the row buffer or X's buffer.
    let load_x = |i: &[IntValue<'ctx>]| -> Result<BV<'ctx>> {
        match (row, xp) {
            (Some(row), _) => cg.load(row, dtype, i[row_at]),
            (None, Some(xp)) => cg.load(xp, dtype, i[0]),
            (None, None) => Err(BackendError::Llvm("a norm kernel without its input".into())),
        }
    };
    if plan.ty(x).len() > 0 {
        let zero = cg.i64c(0);
        cg.for_items_nest(&k, &osizes, &ostrides, &vec![zero; outer.len()], &mut |o| {
            let r = o[outer.len() - 1];
            let mut base: Vec<IntValue> = o[..outer.len() - 1].to_vec();
            base.push(zero);
            let accumulate = |v: BV<'ctx>| -> Result<()> {
                let cur = cg.b.build_load(ty, acc, "acc")?;
                cg.b.build_store(acc, cg.fadd_reassoc(cur, v)?)?;
                Ok(())
            };
            let sum_over = |term: &dyn Fn(BV<'ctx>) -> Result<BV<'ctx>>| -> Result<BV<'ctx>> {
                cg.b.build_store(acc, c(0.0))?;
                nest(cg, f, &isizes, &istrides, base.clone(), &mut |i| accumulate(term(load_x(i)?)?))?;
                Ok(cg.b.build_load(ty, acc, "acc")?)
            };
            let inv_n = c(1.0 / cols as f64);
            // The prologue computes X and sums it (or, for RMS, its
            // squares) in the same pass.
            let first_sum = match (&prologue, row) {
                (Some(p), Some(row)) => {
                    cg.b.build_store(acc, c(0.0))?;
                    nest(cg, f, &isizes, &istrides, base.clone(), &mut |i| {
                        let mut vals = p.scalars.clone();
                        for (l, (&v, &ptr)) in p.leaves.iter().zip(&leaf_ptrs).enumerate() {
                            let dt = plan.ty(v).dtype;
                            vals.insert(v, (cg.load(ptr, dt, i[3 + l])?, dt));
                        }
                        let v = super::elementwise::eval_group(cg, plan, p.nodes, &mut vals)?;
                        cg.store(row, dtype, i[row_at], v)?;
                        if let (true, Some(xp)) = (p.write_x, xp) {
                            cg.store(xp, dtype, i[0], v)?;
                        }
                        accumulate(if norm.rms { cg.fmul(v, v)? } else { v })
                    })?;
                    Some(cg.b.build_load(ty, acc, "acc")?)
                }
                _ => None,
            };
            let (mean, var) = if norm.rms {
                let squares = match first_sum {
                    Some(s) => s,
                    None => sum_over(&|v| cg.fmul(v, v))?,
                };
                (c(0.0), cg.fmul(squares, inv_n)?)
            } else {
                let sum = match first_sum {
                    Some(s) => s,
                    None => sum_over(&|v| Ok(v))?,
                };
                let mean = cg.fmul(sum, inv_n)?;
                let var = cg.fmul(
                    sum_over(&|v| {
                        let d = cg.fsub(v, mean)?;
                        cg.fmul(d, d)
                    })?,
                    inv_n,
                )?;
                (mean, var)
            };
            let inv = cg.fdiv(c(1.0), cg.intrinsic("llvm.sqrt", &[cg.fadd(var, c(norm.epsilon))?])?)?;
            nest(cg, f, &isizes, &istrides, base.clone(), &mut |i| {
                let d = if norm.rms { load_x(i)? } else { cg.fsub(load_x(i)?, mean)? };
                let mut y = cg.fmul(cg.fmul(d, inv)?, cg.load(sp, sdt, i[1])?)?;
                if let (Some(bp), Some(bdt)) = (bp, bdt) {
                    y = cg.fadd(y, cg.load(bp, bdt, i[2])?)?;
                }
                cg.store(yp, dtype, i[0], y)
            })?;
            if let (Some(mp), Some(m)) = (mp, mean_out) {
                cg.store(mp, plan.ty(m).dtype, r, mean)?;
            }
            if let (Some(ip), Some(v)) = (ip, inv_out) {
                cg.store(ip, plan.ty(v).dtype, r, inv)?;
            }
            Ok(())
        })?;
    }
    cg.kernel_return(f)?;
    Ok((cg.finish_parallel(k)?, values.iter().map(|&v| plan.loc(v)).collect()))
}

// ---------------------------------------------------------------- Slice

/// Slice with compile-time starts, ends, axes and steps (ONNX clamping),
/// as a strided copy: output axis `a` reads input index `start_a + i·step_a`.
#[allow(clippy::too_many_arguments)]
fn slice<'ctx>(
    cg: &Cg<'ctx>,
    plan: &Plan,
    step: usize,
    x: ValueId,
    out: ValueId,
    starts: &[i64],
    ends: &[i64],
    axes: Option<&[i64]>,
    steps: Option<&[i64]>,
) -> Result<Kernel<'ctx>> {
    let shape = plan.ty(x).shape.clone();
    let err = |m: String| BackendError::node("", "Slice", m);
    let SliceGeometry { first, steps: stride_mul, lens } =
        slice_geometry(&shape, starts, ends, axes, steps).map_err(err)?;
    let out_shape = plan.ty(out).shape.clone();
    if lens.iter().map(|&l| l as usize).ne(out_shape.iter().copied()) {
        return Err(err(format!("computed shape {lens:?} differs from the inferred {out_shape:?}")));
    }
    let in_strides = contiguous_strides(&shape);
    let src: Vec<i64> = in_strides.iter().zip(&stride_mul).map(|(s, m)| s * m).collect();
    let base: i64 = in_strides.iter().zip(&first).map(|(s, f)| s * f).sum();
    let (sizes, strides) = collapse(&out_shape, &[contiguous_strides(&out_shape), src]);
    let f = strided_copy(cg, &format!("k{step}_slice"), plan.ty(x).dtype, &sizes, &strides, base)?;
    Ok((f, vec![plan.loc(out), plan.loc(x)]))
}

/// Elements per item when a strided copy is one flat loop, cut into
/// chunks for the threads.
const COPY_CHUNK: usize = 16384;

/// A kernel `(ptr y, ptr x)` copying the elements of a loop nest:
/// `y[offset 0] = x[base + offset 1]` at every point, raw bits of `dtype`.
/// Threads take the points of all axes but the innermost (or chunks of a
/// single flat loop).
fn strided_copy<'ctx>(
    cg: &Cg<'ctx>,
    name: &str,
    dtype: DType,
    sizes: &[usize],
    strides: &[Vec<i64>],
    base: i64,
) -> Result<FunctionValue<'ctx>> {
    let total: usize = sizes.iter().product();
    let flat = sizes.len() == 1;
    let (outer, inner): (&[usize], usize) = match sizes.split_last() {
        Some((_, _)) if flat => (&[], COPY_CHUNK.min(total)),
        Some((&last, rest)) => (rest, last),
        None => (&[], 1),
    };
    let items = if flat { total.div_ceil(COPY_CHUNK) } else { outer.iter().product() };
    let k = cg.parallel_kernel_fn(name, 2, if total > 0 { items } else { 0 }, inner);
    let f = k.f;
    let (yp, xp) = (cg.param(f, 0), cg.param(f, 1));
    if total > 0 {
        // Copy the raw bits: the element type does not matter.
        let bits = cg
            .ctx
            .custom_width_int_type(
                std::num::NonZeroU32::new(8 * elem_bytes(dtype) as u32).expect("lowered dtypes are at least a byte"),
            )
            .map_err(|e| BackendError::Llvm(e.to_string()))?;
        let copy = |dst_at: IntValue<'ctx>, src_at: IntValue<'ctx>| -> Result<()> {
            let src = unsafe { cg.b.build_in_bounds_gep(bits, xp, &[src_at], "src")? };
            let dst = unsafe { cg.b.build_in_bounds_gep(bits, yp, &[dst_at], "dst")? };
            let v = cg.b.build_load(bits, src, "v")?;
            cg.b.build_store(dst, v)?;
            Ok(())
        };
        let zero = cg.i64c(0);
        if flat {
            let (sy, sx) = (strides[0][0], strides[1][0]);
            cg.for_items(&k, &mut |item| {
                let first = cg.mul(item, COPY_CHUNK as i64)?;
                let len = super::elementwise::min_left(cg, COPY_CHUNK as i64, total as i64, first)?;
                cg.for_range(f, len, &mut |j| {
                    let at = cg.add(first, j)?;
                    copy(cg.mul(at, sy)?, cg.affine(at, sx, cg.i64c(base))?)
                })
            })?;
        } else if sizes.is_empty() {
            cg.for_items(&k, &mut |_| copy(zero, cg.i64c(base)))?;
        } else {
            let level = sizes.len() - 1;
            cg.for_items_nest(&k, outer, strides, &[zero, cg.i64c(base)], &mut |off| {
                cg.for_n(f, inner, &mut |j| {
                    copy(cg.affine(j, strides[0][level], off[0])?, cg.affine(j, strides[1][level], off[1])?)
                })
            })?;
        }
    }
    cg.kernel_return(f)?;
    cg.finish_parallel(k)
}

// ---------------------------------------------------------------- Split

/// Split along `axis` into the outputs' sizes (inference has already
/// resolved them from the sizes input or `num_outputs`): one contiguous
/// copy per output per outer index.
fn split<'ctx>(
    cg: &Cg<'ctx>,
    plan: &Plan,
    step: usize,
    x: ValueId,
    outputs: &[Option<ValueId>],
    axis: i64,
) -> Result<Kernel<'ctx>> {
    let shape = plan.ty(x).shape.clone();
    let rank = shape.len() as i64;
    let axis = if axis < 0 { axis + rank } else { axis };
    if !(0..rank).contains(&axis) {
        return Err(BackendError::node("", "Split", format!("axis {axis} out of range for rank {rank}")));
    }
    let axis = axis as usize;
    let esize = elem_bytes(plan.ty(x).dtype) as i64;
    let outer: usize = shape[..axis].iter().product();
    let inner: i64 = shape[axis + 1..].iter().product::<usize>() as i64 * esize;
    let in_row = shape[axis] as i64 * inner;
    let present: Vec<ValueId> = outputs.iter().flatten().copied().collect();
    if outputs.iter().skip_while(|o| o.is_some()).any(Option::is_some) {
        return Err(BackendError::unsupported("", "Split", "an omitted output before a present one"));
    }
    // Threads take the outer indices; each copies its row into every output.
    let k = cg.parallel_kernel_fn(&format!("k{step}_split"), 1 + present.len(), outer, in_row as usize / 4);
    let f = k.f;
    let xp = cg.param(f, 0);
    let mut pieces = Vec::with_capacity(present.len());
    let mut at = 0i64;
    // Omitted outputs come last (checked above), so the present ones are
    // parameters 1, 2, ... in order.
    for (param, v) in (1u32..).zip(&present) {
        let out_row = plan.ty(*v).shape.get(axis).copied().unwrap_or(0) as i64 * inner;
        if out_row > 0 {
            pieces.push((cg.param(f, param), at, out_row));
        }
        at += out_row;
    }
    if at > in_row {
        return Err(BackendError::node("", "Split", "outputs are larger than the input along the axis"));
    }
    if !pieces.is_empty() {
        cg.for_items(&k, &mut |i| {
            for &(yp, offset, out_row) in &pieces {
                let src_at = cg.affine(i, in_row, cg.i64c(offset))?;
                let src = unsafe { cg.b.build_in_bounds_gep(cg.ctx.i8_type(), xp, &[src_at], "src")? };
                let dst = unsafe { cg.b.build_in_bounds_gep(cg.ctx.i8_type(), yp, &[cg.mul(i, out_row)?], "dst")? };
                cg.b.build_memcpy(dst, 1, src, 1, cg.i64c(out_row))?;
            }
            Ok(())
        })?;
    }
    cg.kernel_return(f)?;
    let f = cg.finish_parallel(k)?;
    let mut locs = vec![plan.loc(x)];
    locs.extend(present.iter().map(|&v| plan.loc(v)));
    Ok((f, locs))
}

// ---------------------------------------------------------------- Gather

/// Gather along `axis`: for each index, one contiguous copy of the slice
/// behind it. Negative indices count from the end; an index outside the
/// axis makes the kernel fail (a checked kernel) instead of reading out of
/// bounds.
fn gather<'ctx>(
    cg: &Cg<'ctx>,
    plan: &Plan,
    step: usize,
    data: ValueId,
    indices: ValueId,
    out: ValueId,
    axis: i64,
) -> Result<Kernel<'ctx>> {
    let shape = plan.ty(data).shape.clone();
    let rank = shape.len() as i64;
    let axis = if axis < 0 { axis + rank } else { axis };
    if !(0..rank).contains(&axis) {
        return Err(BackendError::node("", "Gather", format!("axis {axis} out of range for rank {rank}")));
    }
    let axis = axis as usize;
    let idt = plan.ty(indices).dtype;
    if !matches!(idt, DType::I32 | DType::I64) {
        return Err(BackendError::unsupported("", "Gather", format!("{idt} indices")));
    }
    let esize = elem_bytes(plan.ty(data).dtype) as i64;
    let outer: usize = shape[..axis].iter().product();
    let dim = shape[axis] as i64;
    let block = shape[axis + 1..].iter().product::<usize>() as i64 * esize;
    let count = plan.ty(indices).len();
    // Threads take the indices: each copies the slices behind its own.
    let items = if plan.ty(out).len() > 0 || dim == 0 { count } else { 0 };
    let k = cg.checked_parallel_kernel_fn(&format!("k{step}_gather"), 3, items, outer * block as usize / 4 + 1);
    let f = k.f;
    let (yp, xp, ip) = (cg.param(f, 0), cg.param(f, 1), cg.param(f, 2));
    if items > 0 {
        cg.for_items(&k, &mut |j| {
            let raw = cg.load(ip, idt, j)?.into_int_value();
            let idx = cg.b.build_int_s_extend_or_bit_cast(raw, cg.i64t(), "idx")?;
            let negative = cg.b.build_int_compare(inkwell::IntPredicate::SLT, idx, cg.i64c(0), "neg")?;
            let wrapped = cg.b.build_int_add(idx, cg.i64c(dim), "wrapped")?;
            let idx = cg.b.build_select(negative, wrapped, idx, "idx")?.into_int_value();
            let ok = cg.b.build_int_compare(inkwell::IntPredicate::ULT, idx, cg.i64c(dim), "in_range")?;
            let bad = cg.ctx.append_basic_block(f, "bad_index");
            let good = cg.ctx.append_basic_block(f, "good_index");
            cg.b.build_conditional_branch(ok, good, bad)?;
            cg.b.position_at_end(bad);
            cg.b.build_return(Some(&cg.ctx.i32_type().const_int(1, false)))?;
            cg.b.position_at_end(good);
            if block > 0 {
                cg.for_n(f, outer, &mut |o| {
                    let src_at = cg.affine(o, dim * block, cg.mul(idx, block)?)?;
                    let dst_at = cg.affine(o, count as i64 * block, cg.mul(j, block)?)?;
                    let src = unsafe { cg.b.build_in_bounds_gep(cg.ctx.i8_type(), xp, &[src_at], "src")? };
                    let dst = unsafe { cg.b.build_in_bounds_gep(cg.ctx.i8_type(), yp, &[dst_at], "dst")? };
                    cg.b.build_memcpy(dst, 1, src, 1, cg.i64c(block))?;
                    Ok(())
                })?;
            }
            Ok(())
        })?;
    }
    cg.kernel_return(f)?;
    Ok((cg.finish_parallel(k)?, vec![plan.loc(out), plan.loc(data), plan.loc(indices)]))
}

// ---------------------------------------------------------------- Concat

/// Concat along `axis`: seen as `[outer, len·inner]` blocks, each input
/// block is one contiguous copy into its place in the output row.
fn concat<'ctx>(
    cg: &Cg<'ctx>,
    plan: &Plan,
    step: usize,
    inputs: &[ValueId],
    out: ValueId,
    axis: i64,
) -> Result<Kernel<'ctx>> {
    let out_shape = plan.ty(out).shape.clone();
    let rank = out_shape.len() as i64;
    let axis = if axis < 0 { axis + rank } else { axis };
    if !(0..rank).contains(&axis) {
        return Err(BackendError::node("", "Concat", format!("axis {axis} out of range for rank {rank}")));
    }
    let axis = axis as usize;
    let esize = elem_bytes(plan.ty(out).dtype) as i64;
    let outer: usize = out_shape[..axis].iter().product();
    let inner: i64 = out_shape[axis + 1..].iter().product::<usize>() as i64;
    let out_row = out_shape[axis] as i64 * inner * esize;
    // Threads take the outer indices; each assembles its output row.
    let k = cg.parallel_kernel_fn(&format!("k{step}_concat"), 1 + inputs.len(), outer, out_row as usize / 4);
    let f = k.f;
    let yp = cg.param(f, 0);
    let mut pieces = Vec::with_capacity(inputs.len());
    let mut at = 0i64;
    for (j, &x) in inputs.iter().enumerate() {
        let in_row = plan.ty(x).shape.get(axis).copied().unwrap_or(0) as i64 * inner * esize;
        if in_row > 0 {
            pieces.push((cg.param(f, 1 + j as u32), at, in_row));
        }
        at += in_row;
    }
    if !pieces.is_empty() {
        cg.for_items(&k, &mut |o| {
            for &(xp, offset, in_row) in &pieces {
                let src = unsafe { cg.b.build_in_bounds_gep(cg.ctx.i8_type(), xp, &[cg.mul(o, in_row)?], "src")? };
                let dst_at = cg.affine(o, out_row, cg.i64c(offset))?;
                let dst = unsafe { cg.b.build_in_bounds_gep(cg.ctx.i8_type(), yp, &[dst_at], "dst")? };
                cg.b.build_memcpy(dst, 1, src, 1, cg.i64c(in_row))?;
            }
            Ok(())
        })?;
    }
    cg.kernel_return(f)?;
    let f = cg.finish_parallel(k)?;
    let mut locs = vec![plan.loc(out)];
    locs.extend(inputs.iter().map(|&v| plan.loc(v)));
    Ok((f, locs))
}

// ---------------------------------------------------------------- Transpose

fn transpose<'ctx>(
    cg: &Cg<'ctx>,
    plan: &Plan,
    step: usize,
    x: ValueId,
    out: ValueId,
    perm: &[usize],
) -> Result<Kernel<'ctx>> {
    let in_shape = plan.ty(x).shape.clone();
    let out_shape = plan.ty(out).shape.clone();
    let in_strides = contiguous_strides(&in_shape);
    let src: Vec<i64> = perm.iter().map(|&p| in_strides.get(p).copied().unwrap_or(0)).collect();
    let (sizes, strides) = collapse(&out_shape, &[contiguous_strides(&out_shape), src]);
    let f = strided_copy(cg, &format!("k{step}_transpose"), plan.ty(x).dtype, &sizes, &strides, 0)?;
    Ok((f, vec![plan.loc(out), plan.loc(x)]))
}
