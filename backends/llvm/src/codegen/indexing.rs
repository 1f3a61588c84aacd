//! Kernels that move elements by computed indices: GatherElements,
//! GatherND, ScatterND, Trilu, Pad, Tile, OneHot and CumSum.
//!
//! Sizes, pads, repeats, `k` and axes are compile-time constants (inputs
//! that hold them are initializers, folded values, or graph inputs the
//! backend specializes by value), so the kernels are loop nests with
//! constant bounds. Pad and Tile map every output coordinate to a source
//! coordinate through one small constant table per axis, which keeps the
//! innermost loop a table load and a copy whatever the mode. Indices read
//! from data (GatherElements, GatherND, ScatterND) are checked: one outside
//! its axis makes the kernel return its failure status, which the caller
//! reports naming the node, instead of touching memory out of bounds.

use super::Cg;
use crate::error::{BackendError, Result};
use crate::plan::{elem_bytes, Loc, Plan};
use inkwell::module::Linkage;
use inkwell::types::IntType;
use inkwell::values::{BasicValueEnum, FunctionValue, IntValue, PointerValue};
use inkwell::{AddressSpace, FloatPredicate, IntPredicate};
use kiln_ir::dtype::DType;
use kiln_ir::graph::{Node, NodeId, ValueId};
use kiln_ir::op::Op;

type BV<'ctx> = BasicValueEnum<'ctx>;
type Kernel<'ctx> = (FunctionValue<'ctx>, Vec<Loc>);

// ---------------------------------------------------------------- helpers

/// The integer type of a dtype's width, for copying elements as bits.
pub(crate) fn bits_type<'ctx>(cg: &Cg<'ctx>, dtype: DType) -> Result<IntType<'ctx>> {
    let width = std::num::NonZeroU32::new(8 * elem_bytes(dtype) as u32).expect("lowered dtypes are at least a byte");
    cg.ctx.custom_width_int_type(width).map_err(|e| BackendError::Llvm(e.to_string()))
}

/// Loads element `idx` as raw bits.
pub(crate) fn load_bits<'ctx>(
    cg: &Cg<'ctx>,
    ty: IntType<'ctx>,
    base: PointerValue<'ctx>,
    idx: IntValue<'ctx>,
) -> Result<IntValue<'ctx>> {
    let p = unsafe { cg.b.build_in_bounds_gep(ty, base, &[idx], "p")? };
    Ok(cg.b.build_load(ty, p, "bits")?.into_int_value())
}

/// Stores raw bits at element `idx`.
pub(crate) fn store_bits<'ctx>(
    cg: &Cg<'ctx>,
    ty: IntType<'ctx>,
    base: PointerValue<'ctx>,
    idx: IntValue<'ctx>,
    v: IntValue<'ctx>,
) -> Result<()> {
    let p = unsafe { cg.b.build_in_bounds_gep(ty, base, &[idx], "p")? };
    cg.b.build_store(p, v)?;
    Ok(())
}

/// Nested loops over every coordinate of `shape` (row-major order);
/// `body` gets the per-axis indices.
pub(crate) fn for_each_index<'ctx>(
    cg: &Cg<'ctx>,
    f: FunctionValue<'ctx>,
    shape: &[usize],
    body: &mut dyn FnMut(&[IntValue<'ctx>]) -> Result<()>,
) -> Result<()> {
    fn level<'ctx>(
        cg: &Cg<'ctx>,
        f: FunctionValue<'ctx>,
        shape: &[usize],
        idx: &mut Vec<IntValue<'ctx>>,
        body: &mut dyn FnMut(&[IntValue<'ctx>]) -> Result<()>,
    ) -> Result<()> {
        if idx.len() == shape.len() {
            return body(idx);
        }
        cg.for_n(f, shape[idx.len()], &mut |i| {
            idx.push(i);
            let r = level(cg, f, shape, idx, body);
            idx.pop();
            r
        })
    }
    if shape.contains(&0) {
        return Ok(());
    }
    level(cg, f, shape, &mut Vec::with_capacity(shape.len()), body)
}

/// `Σ idx[a] · strides[a]`.
pub(crate) fn linear<'ctx>(cg: &Cg<'ctx>, idx: &[IntValue<'ctx>], strides: &[i64]) -> Result<IntValue<'ctx>> {
    let mut acc = cg.i64c(0);
    for (&i, &s) in idx.iter().zip(strides) {
        acc = cg.affine(i, s, acc)?;
    }
    Ok(acc)
}

/// Row-major strides.
pub(crate) fn strides_of(shape: &[usize]) -> Vec<i64> {
    super::elementwise::contiguous_strides(shape)
}

/// Branches to a `return 1` block unless `ok`, leaving the builder in the
/// block where `ok` holds. Only for checked kernels.
pub(crate) fn fail_unless<'ctx>(cg: &Cg<'ctx>, f: FunctionValue<'ctx>, ok: IntValue<'ctx>) -> Result<()> {
    let bad = cg.ctx.append_basic_block(f, "bad_index");
    let good = cg.ctx.append_basic_block(f, "good_index");
    cg.b.build_conditional_branch(ok, good, bad)?;
    cg.b.position_at_end(bad);
    cg.b.build_return(Some(&cg.ctx.i32_type().const_int(1, false)))?;
    cg.b.position_at_end(good);
    Ok(())
}

/// Loads index `j` of an integer index buffer as i64, wraps a negative one
/// by `dim` and fails the (checked) kernel when it is outside `[0, dim)`.
fn checked_index<'ctx>(
    cg: &Cg<'ctx>,
    f: FunctionValue<'ctx>,
    ip: PointerValue<'ctx>,
    idt: DType,
    j: IntValue<'ctx>,
    dim: i64,
) -> Result<IntValue<'ctx>> {
    let raw = cg.load(ip, idt, j)?.into_int_value();
    let idx = cg.b.build_int_s_extend_or_bit_cast(raw, cg.i64t(), "idx")?;
    let negative = cg.b.build_int_compare(IntPredicate::SLT, idx, cg.i64c(0), "neg")?;
    let wrapped = cg.b.build_int_add(idx, cg.i64c(dim), "wrapped")?;
    let idx = cg.b.build_select(negative, wrapped, idx, "idx")?.into_int_value();
    let ok = cg.b.build_int_compare(IntPredicate::ULT, idx, cg.i64c(dim), "in_range")?;
    fail_unless(cg, f, ok)?;
    Ok(idx)
}

/// A private constant i64 array in the module.
fn const_table<'ctx>(cg: &Cg<'ctx>, name: &str, values: &[i64]) -> PointerValue<'ctx> {
    let elems: Vec<IntValue> = values.iter().map(|&v| cg.i64c(v)).collect();
    let arr = cg.i64t().const_array(&elems);
    let g = cg.module.add_global(arr.get_type(), Some(AddressSpace::default()), name);
    g.set_initializer(&arr);
    g.set_constant(true);
    g.set_linkage(Linkage::Private);
    g.as_pointer_value()
}

/// The integer values of input `slot` when known at compile time; `None`
/// when the input is absent; an Unsupported error when it is only known at
/// run time.
pub(crate) fn known_ints(plan: &Plan, node: &Node, slot: usize, what: &str) -> Result<Option<Vec<i64>>> {
    match node.input(slot) {
        None => Ok(None),
        Some(v) => match plan.known(v) {
            Some(t) => Ok(Some(t.to_i64s())),
            None => Err(BackendError::unsupported(
                &node.name,
                node.op.name(),
                format!("{what} (input {slot}) is not known at compile time"),
            )),
        },
    }
}

/// `axis` normalized into `0..rank`.
pub(crate) fn norm_axis(node: &Node, axis: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if !(0..r).contains(&a) {
        return Err(BackendError::node(
            &node.name,
            node.op.name(),
            format!("axis {axis} out of range for rank {rank}"),
        ));
    }
    Ok(a as usize)
}

fn index_dtype(node: &Node, dtype: DType) -> Result<()> {
    if matches!(dtype, DType::I32 | DType::I64) {
        Ok(())
    } else {
        Err(BackendError::unsupported(&node.name, node.op.name(), format!("{dtype} indices")))
    }
}

fn io(node: &Node, slot: usize, output: bool) -> Result<ValueId> {
    let v = if output { node.output(slot) } else { node.input(slot) };
    v.ok_or_else(|| {
        BackendError::node(
            &node.name,
            node.op.name(),
            format!("{} {slot} is missing", if output { "output" } else { "input" }),
        )
    })
}

/// Emits the kernel of one of this module's ops.
pub(crate) fn emit<'ctx>(cg: &Cg<'ctx>, plan: &Plan, step: usize, id: NodeId) -> Result<Kernel<'ctx>> {
    let node = plan.graph.node(id);
    match &node.op {
        Op::GatherElements { axis } => gather_elements(cg, plan, step, node, *axis),
        Op::GatherND { batch_dims } => gather_nd(cg, plan, step, node, *batch_dims),
        Op::ScatterND { reduction } => scatter_nd(cg, plan, step, node, reduction),
        Op::Trilu { upper } => trilu(cg, plan, step, node, *upper),
        Op::Pad { mode } => pad(cg, plan, step, node, mode),
        Op::Tile => tile(cg, plan, step, node),
        Op::OneHot { axis } => one_hot(cg, plan, step, node, *axis),
        Op::CumSum { exclusive, reverse } => cum_sum(cg, plan, step, node, *exclusive, *reverse),
        other => Err(BackendError::unsupported(&node.name, other.name(), "not an indexing op")),
    }
}

// ---------------------------------------------------------------- GatherElements

/// `out[i] = data[i with i[axis] replaced by indices[i]]`.
fn gather_elements<'ctx>(cg: &Cg<'ctx>, plan: &Plan, step: usize, node: &Node, axis: i64) -> Result<Kernel<'ctx>> {
    let (data, indices, out) = (io(node, 0, false)?, io(node, 1, false)?, io(node, 0, true)?);
    let dshape = plan.ty(data).shape.clone();
    let ishape = plan.ty(indices).shape.clone();
    let idt = plan.ty(indices).dtype;
    index_dtype(node, idt)?;
    let axis = norm_axis(node, axis, dshape.len())?;
    if ishape.len() != dshape.len() {
        return Err(BackendError::node(&node.name, "GatherElements", "indices and data differ in rank"));
    }
    let bits = bits_type(cg, plan.ty(data).dtype)?;
    let (dstr, istr) = (strides_of(&dshape), strides_of(&ishape));
    let dim = dshape[axis] as i64;
    let f = cg.checked_kernel_fn(&format!("k{step}_gather_elements"), 3);
    let (yp, xp, ip) = (cg.param(f, 0), cg.param(f, 1), cg.param(f, 2));
    for_each_index(cg, f, &ishape, &mut |i| {
        let j = linear(cg, i, &istr)?;
        let idx = checked_index(cg, f, ip, idt, j, dim)?;
        let mut src = cg.mul(idx, dstr[axis])?;
        for (a, &ia) in i.iter().enumerate() {
            if a != axis {
                src = cg.affine(ia, dstr[a], src)?;
            }
        }
        store_bits(cg, bits, yp, j, load_bits(cg, bits, xp, src)?)
    })?;
    cg.kernel_return(f)?;
    Ok((f, vec![plan.loc(out), plan.loc(data), plan.loc(indices)]))
}

// ---------------------------------------------------------------- GatherND / ScatterND

/// The index-tuple geometry shared by GatherND and ScatterND: `batch`
/// leading dims, `tuples` index tuples of length `depth` per batch entry,
/// and `slice` elements behind each tuple.
struct NdGeometry {
    batch: usize,
    tuples: usize,
    depth: usize,
    slice: usize,
    /// Element stride of each tuple component within one batch entry of
    /// the data, and its dim.
    comp: Vec<(i64, i64)>,
    /// Elements of data per batch entry.
    batch_block: usize,
}

fn nd_geometry(node: &Node, dshape: &[usize], ishape: &[usize], batch_dims: usize) -> Result<NdGeometry> {
    let err = |m: String| BackendError::node(&node.name, node.op.name(), m);
    let depth = *ishape.last().ok_or_else(|| err("indices must have rank at least 1".into()))?;
    if batch_dims >= ishape.len() || batch_dims + depth > dshape.len() || dshape[..batch_dims] != ishape[..batch_dims] {
        return Err(err(format!("indices {ishape:?} do not fit data {dshape:?} with batch_dims {batch_dims}")));
    }
    let inner = &dshape[batch_dims..];
    let istr = strides_of(inner);
    Ok(NdGeometry {
        batch: dshape[..batch_dims].iter().product(),
        tuples: ishape[batch_dims..ishape.len() - 1].iter().product(),
        depth,
        slice: dshape[batch_dims + depth..].iter().product(),
        comp: (0..depth).map(|t| (istr[t], inner[t] as i64)).collect(),
        batch_block: inner.iter().product(),
    })
}

/// Element offset (within the data) of index tuple `m` of batch entry
/// `bi`, each component checked against its dim.
fn tuple_offset<'ctx>(
    cg: &Cg<'ctx>,
    f: FunctionValue<'ctx>,
    g: &NdGeometry,
    ip: PointerValue<'ctx>,
    idt: DType,
    bi: IntValue<'ctx>,
    m: IntValue<'ctx>,
) -> Result<IntValue<'ctx>> {
    let tuple = cg.affine(bi, (g.tuples * g.depth) as i64, cg.mul(m, g.depth as i64)?)?;
    let mut off = cg.mul(bi, g.batch_block as i64)?;
    for (t, &(stride, dim)) in g.comp.iter().enumerate() {
        let idx = checked_index(cg, f, ip, idt, cg.add(tuple, cg.i64c(t as i64))?, dim)?;
        off = cg.affine(idx, stride, off)?;
    }
    Ok(off)
}

fn gather_nd<'ctx>(cg: &Cg<'ctx>, plan: &Plan, step: usize, node: &Node, batch_dims: i64) -> Result<Kernel<'ctx>> {
    let (data, indices, out) = (io(node, 0, false)?, io(node, 1, false)?, io(node, 0, true)?);
    let idt = plan.ty(indices).dtype;
    index_dtype(node, idt)?;
    if batch_dims < 0 {
        return Err(BackendError::node(&node.name, "GatherND", "batch_dims is negative"));
    }
    let g = nd_geometry(node, &plan.ty(data).shape, &plan.ty(indices).shape, batch_dims as usize)?;
    let esize = elem_bytes(plan.ty(data).dtype) as i64;
    let f = cg.checked_kernel_fn(&format!("k{step}_gather_nd"), 3);
    let (yp, xp, ip) = (cg.param(f, 0), cg.param(f, 1), cg.param(f, 2));
    let i8t = cg.ctx.i8_type();
    cg.for_n(f, g.batch, &mut |bi| {
        cg.for_n(f, g.tuples, &mut |m| {
            let src_el = tuple_offset(cg, f, &g, ip, idt, bi, m)?;
            if g.slice > 0 {
                let dst_el = cg.mul(cg.affine(bi, g.tuples as i64, m)?, g.slice as i64)?;
                let src = unsafe { cg.b.build_in_bounds_gep(i8t, xp, &[cg.mul(src_el, esize)?], "src")? };
                let dst = unsafe { cg.b.build_in_bounds_gep(i8t, yp, &[cg.mul(dst_el, esize)?], "dst")? };
                cg.b.build_memcpy(dst, 1, src, 1, cg.i64c(g.slice as i64 * esize))?;
            }
            Ok(())
        })
    })?;
    cg.kernel_return(f)?;
    Ok((f, vec![plan.loc(out), plan.loc(data), plan.loc(indices)]))
}

/// How ScatterND/scatter-like updates combine with the existing value.
#[derive(Clone, Copy, PartialEq)]
enum Combine {
    Replace,
    Add,
    Mul,
    Max,
    Min,
}

fn combine<'ctx>(cg: &Cg<'ctx>, how: Combine, dtype: DType, old: BV<'ctx>, new: BV<'ctx>) -> Result<BV<'ctx>> {
    if how == Combine::Replace {
        return Ok(new);
    }
    if dtype.is_float() {
        return match how {
            Combine::Add => cg.fadd(old, new),
            Combine::Mul => cg.fmul(old, new),
            Combine::Max => cg.select(cg.fcmp(FloatPredicate::OGT, new, old)?, new, old),
            _ => cg.select(cg.fcmp(FloatPredicate::OLT, new, old)?, new, old),
        };
    }
    let (a, b) = (old.into_int_value(), new.into_int_value());
    let signed = dtype.is_signed_integer();
    Ok(match how {
        Combine::Add => cg.b.build_int_add(a, b, "add")?.into(),
        Combine::Mul => cg.b.build_int_mul(a, b, "mul")?.into(),
        Combine::Max | Combine::Min => {
            let p = match (how == Combine::Max, signed) {
                (true, true) => IntPredicate::SGT,
                (true, false) => IntPredicate::UGT,
                (false, true) => IntPredicate::SLT,
                (false, false) => IntPredicate::ULT,
            };
            let c = cg.b.build_int_compare(p, b, a, "better")?;
            cg.b.build_select(c, b, a, "pick")?
        }
        Combine::Replace => b.into(),
    })
}

/// A copy of the data, then each update slice written (or combined) at its
/// index tuple, in order.
fn scatter_nd<'ctx>(cg: &Cg<'ctx>, plan: &Plan, step: usize, node: &Node, reduction: &str) -> Result<Kernel<'ctx>> {
    let (data, indices, updates, out) =
        (io(node, 0, false)?, io(node, 1, false)?, io(node, 2, false)?, io(node, 0, true)?);
    let idt = plan.ty(indices).dtype;
    index_dtype(node, idt)?;
    let dtype = plan.ty(data).dtype;
    let how = match reduction {
        "" | "none" => Combine::Replace,
        "add" => Combine::Add,
        "mul" => Combine::Mul,
        "max" => Combine::Max,
        "min" => Combine::Min,
        other => return Err(BackendError::node(&node.name, "ScatterND", format!("unknown reduction `{other}`"))),
    };
    if how != Combine::Replace && (dtype == DType::Bool || cg.compute_type(dtype).is_err()) {
        return Err(BackendError::unsupported(&node.name, "ScatterND", format!("reduction {reduction} on {dtype}")));
    }
    let g = nd_geometry(node, &plan.ty(data).shape, &plan.ty(indices).shape, 0)?;
    let f = cg.checked_kernel_fn(&format!("k{step}_scatter_nd"), 4);
    let (yp, xp, ip, up) = (cg.param(f, 0), cg.param(f, 1), cg.param(f, 2), cg.param(f, 3));
    let bytes = plan.ty(data).bytes();
    if bytes > 0 {
        cg.b.build_memcpy(yp, 1, xp, 1, cg.i64c(bytes as i64))?;
    }
    let zero = cg.i64c(0);
    cg.for_n(f, g.tuples, &mut |m| {
        let off = tuple_offset(cg, f, &g, ip, idt, zero, m)?;
        let from = cg.mul(m, g.slice as i64)?;
        cg.for_n(f, g.slice, &mut |s| {
            let dst = cg.add(off, s)?;
            let new = cg.load(up, dtype, cg.add(from, s)?)?;
            let v = if how == Combine::Replace { new } else { combine(cg, how, dtype, cg.load(yp, dtype, dst)?, new)? };
            cg.store(yp, dtype, dst, v)
        })
    })?;
    cg.kernel_return(f)?;
    Ok((f, vec![plan.loc(out), plan.loc(data), plan.loc(indices), plan.loc(updates)]))
}

// ---------------------------------------------------------------- Trilu

/// Keeps the elements of the last two axes with `col - row >= k` (upper)
/// or `<= k` (lower); the others become zero.
fn trilu<'ctx>(cg: &Cg<'ctx>, plan: &Plan, step: usize, node: &Node, upper: bool) -> Result<Kernel<'ctx>> {
    let (x, out) = (io(node, 0, false)?, io(node, 0, true)?);
    let k = match known_ints(plan, node, 1, "k")? {
        None => 0,
        Some(v) => *v.first().ok_or_else(|| BackendError::node(&node.name, "Trilu", "k is empty"))?,
    };
    let shape = plan.ty(x).shape.clone();
    if shape.len() < 2 {
        return Err(BackendError::node(&node.name, "Trilu", "the input must have rank at least 2"));
    }
    let bits = bits_type(cg, plan.ty(x).dtype)?;
    let (rows, cols) = (shape[shape.len() - 2], shape[shape.len() - 1]);
    let mats: usize = shape[..shape.len() - 2].iter().product();
    let f = cg.kernel_fn(&format!("k{step}_trilu"), 2);
    let (yp, xp) = (cg.param(f, 0), cg.param(f, 1));
    for_each_index(cg, f, &[mats, rows, cols], &mut |i| {
        let at = linear(cg, i, &[(rows * cols) as i64, cols as i64, 1])?;
        let diff = cg.b.build_int_nsw_sub(i[2], i[1], "diff")?;
        let p = if upper { IntPredicate::SGE } else { IntPredicate::SLE };
        let keep = cg.b.build_int_compare(p, diff, cg.i64c(k), "keep")?;
        let v = load_bits(cg, bits, xp, at)?;
        let v = cg.b.build_select(keep, v, bits.const_zero(), "tri")?.into_int_value();
        store_bits(cg, bits, yp, at, v)
    })?;
    cg.b.build_return(None)?;
    Ok((f, vec![plan.loc(out), plan.loc(x)]))
}

// ---------------------------------------------------------------- Pad / Tile

/// Copies `x` into `out` through per-axis source tables: `tables[a][o]` is
/// the source coordinate of output coordinate `o` on axis `a`, or -1 for
/// "the fill value" (read from `fill` when given, else zero).
#[allow(clippy::too_many_arguments)]
fn remap<'ctx>(
    cg: &Cg<'ctx>,
    plan: &Plan,
    step: usize,
    what: &str,
    x: ValueId,
    out: ValueId,
    fill: Option<ValueId>,
    tables: &[Vec<i64>],
) -> Result<Kernel<'ctx>> {
    let dtype = plan.ty(x).dtype;
    let bits = bits_type(cg, dtype)?;
    let oshape = plan.ty(out).shape.clone();
    let istr = strides_of(&plan.ty(x).shape);
    let ostr = strides_of(&oshape);
    let params = 2 + usize::from(fill.is_some());
    let f = cg.kernel_fn(&format!("k{step}_{what}"), params);
    let (yp, xp) = (cg.param(f, 0), cg.param(f, 1));
    let ptrs: Vec<PointerValue> =
        tables.iter().enumerate().map(|(a, t)| const_table(cg, &format!("k{step}_{what}_axis{a}"), t)).collect();
    let needs_fill = tables.iter().flatten().any(|&s| s < 0);
    let fill_bits = match fill {
        Some(_) if needs_fill => load_bits(cg, bits, cg.param(f, 2), cg.i64c(0))?,
        _ => bits.const_zero(),
    };
    let empty_input = plan.ty(x).len() == 0;
    for_each_index(cg, f, &oshape, &mut |o| {
        let at = linear(cg, o, &ostr)?;
        if empty_input {
            return store_bits(cg, bits, yp, at, fill_bits);
        }
        let mut src = cg.i64c(0);
        let mut inside = cg.ctx.bool_type().const_all_ones();
        for (a, &oa) in o.iter().enumerate() {
            let arr = cg.i64t().array_type(tables[a].len() as u32);
            let p = unsafe { cg.b.build_in_bounds_gep(arr, ptrs[a], &[cg.i64c(0), oa], "tab")? };
            let s = cg.b.build_load(cg.i64t(), p, "src")?.into_int_value();
            if tables[a].iter().any(|&v| v < 0) {
                let ok = cg.b.build_int_compare(IntPredicate::SGE, s, cg.i64c(0), "inside")?;
                inside = cg.b.build_and(inside, ok, "inside")?;
                let s = cg.b.build_select(ok, s, cg.i64c(0), "src")?.into_int_value();
                src = cg.affine(s, istr[a], src)?;
            } else {
                src = cg.affine(s, istr[a], src)?;
            }
        }
        let v = load_bits(cg, bits, xp, src)?;
        let v = if needs_fill { cg.b.build_select(inside, v, fill_bits, "pad")?.into_int_value() } else { v };
        store_bits(cg, bits, yp, at, v)
    })?;
    cg.b.build_return(None)?;
    let mut locs = vec![plan.loc(out), plan.loc(x)];
    if let Some(v) = fill {
        locs.push(plan.loc(v));
    }
    Ok((f, locs))
}

/// The source coordinate of output coordinate `o` on an axis whose kept
/// (uncropped) elements are `kept` from `lo` on, padded by `before` in
/// front, or -1 for the constant fill. Negative pads crop first, as in the
/// interpreter; the padding then mirrors, repeats or wraps what is left.
fn pad_source(mode: &str, o: i64, before: i64, lo: i64, kept: i64) -> i64 {
    let rel = o - before;
    let s = if (0..kept).contains(&rel) {
        rel
    } else {
        match mode {
            "edge" => rel.clamp(0, kept - 1),
            "wrap" => rel.rem_euclid(kept),
            "reflect" if kept == 1 => 0,
            "reflect" => {
                let period = 2 * (kept - 1);
                let m = rel.rem_euclid(period);
                if m < kept {
                    m
                } else {
                    period - m
                }
            }
            _ => return -1,
        }
    };
    s + lo
}

fn pad<'ctx>(cg: &Cg<'ctx>, plan: &Plan, step: usize, node: &Node, mode: &str) -> Result<Kernel<'ctx>> {
    let (x, out) = (io(node, 0, false)?, io(node, 0, true)?);
    let err = |m: String| BackendError::node(&node.name, "Pad", m);
    if !matches!(mode, "constant" | "reflect" | "edge" | "wrap") {
        return Err(err(format!("unknown mode `{mode}`")));
    }
    let shape = plan.ty(x).shape.clone();
    let rank = shape.len();
    let pads = known_ints(plan, node, 1, "pads")?.ok_or_else(|| err("pads are missing".into()))?;
    let axes: Vec<usize> = match known_ints(plan, node, 3, "axes")? {
        Some(a) => a.iter().map(|&a| norm_axis(node, a, rank)).collect::<Result<_>>()?,
        None => (0..rank).collect(),
    };
    if pads.len() != 2 * axes.len() {
        return Err(err(format!("{} pads for {} axes", pads.len(), axes.len())));
    }
    let (mut begin, mut end) = (vec![0i64; rank], vec![0i64; rank]);
    for (k, &a) in axes.iter().enumerate() {
        begin[a] = pads[k];
        end[a] = pads[k + axes.len()];
    }
    let oshape = plan.ty(out).shape.clone();
    let mut tables = Vec::with_capacity(rank);
    for a in 0..rank {
        let (d, n) = (shape[a] as i64, oshape[a] as i64);
        if n != d + begin[a] + end[a] {
            return Err(err(format!("output dim {a} is {n}, expected {}", d + begin[a] + end[a])));
        }
        let lo = (-begin[a]).max(0);
        let kept = d - lo - (-end[a]).max(0);
        if kept < 0 {
            return Err(err(format!("pads {} and {} remove more than the {d} elements of axis {a}", begin[a], end[a])));
        }
        if kept == 0 && n > 0 && mode != "constant" {
            return Err(err(format!("cannot {mode}-pad axis {a}: no elements are left to copy")));
        }
        let before = begin[a].max(0);
        tables.push((0..n).map(|o| if kept == 0 { -1 } else { pad_source(mode, o, before, lo, kept) }).collect());
    }
    // An empty constant_value means the default zero.
    let fill = if mode == "constant" { node.input(2).filter(|&v| plan.ty(v).len() == 1) } else { None };
    remap(cg, plan, step, "pad", x, out, fill, &tables)
}

fn tile<'ctx>(cg: &Cg<'ctx>, plan: &Plan, step: usize, node: &Node) -> Result<Kernel<'ctx>> {
    let (x, out) = (io(node, 0, false)?, io(node, 0, true)?);
    let shape = plan.ty(x).shape.clone();
    let oshape = plan.ty(out).shape.clone();
    if oshape.len() != shape.len() {
        return Err(BackendError::node(&node.name, "Tile", "the output rank differs from the input's"));
    }
    let tables: Vec<Vec<i64>> =
        shape.iter().zip(&oshape).map(|(&d, &n)| (0..n as i64).map(|o| o % (d.max(1) as i64)).collect()).collect();
    remap(cg, plan, step, "tile", x, out, None, &tables)
}

// ---------------------------------------------------------------- OneHot

/// `out[.., p, ..] = on` where `indices[..] == p` (negative indices count
/// from `depth`), else `off`.
fn one_hot<'ctx>(cg: &Cg<'ctx>, plan: &Plan, step: usize, node: &Node, axis: i64) -> Result<Kernel<'ctx>> {
    let (indices, values, out) = (io(node, 0, false)?, io(node, 2, false)?, io(node, 0, true)?);
    let oshape = plan.ty(out).shape.clone();
    let axis = norm_axis(node, axis, oshape.len())?;
    let depth = oshape[axis] as i64;
    let idt = plan.ty(indices).dtype;
    let vdt = plan.ty(values).dtype;
    if idt == DType::Bool || cg.compute_type(idt).is_err() {
        return Err(BackendError::unsupported(&node.name, "OneHot", format!("{idt} indices")));
    }
    let istr = strides_of(&plan.ty(indices).shape);
    let ostr = strides_of(&oshape);
    let bits = bits_type(cg, vdt)?;
    let f = cg.kernel_fn(&format!("k{step}_one_hot"), 3);
    let (yp, ip, vp) = (cg.param(f, 0), cg.param(f, 1), cg.param(f, 2));
    let off = load_bits(cg, bits, vp, cg.i64c(0))?;
    let on = load_bits(cg, bits, vp, cg.i64c(1))?;
    for_each_index(cg, f, &oshape, &mut |o| {
        let at = linear(cg, o, &ostr)?;
        let rest: Vec<IntValue> = o.iter().enumerate().filter(|(a, _)| *a != axis).map(|(_, &v)| v).collect();
        let raw = cg.load(ip, idt, linear(cg, &rest, &istr)?)?;
        let idx = if idt.is_float() {
            let v = raw.into_float_value();
            cg.b.build_float_to_signed_int(v, cg.i64t(), "idx")?
        } else if idt.is_signed_integer() {
            cg.b.build_int_s_extend_or_bit_cast(raw.into_int_value(), cg.i64t(), "idx")?
        } else {
            cg.b.build_int_z_extend_or_bit_cast(raw.into_int_value(), cg.i64t(), "idx")?
        };
        let negative = cg.b.build_int_compare(IntPredicate::SLT, idx, cg.i64c(0), "neg")?;
        let wrapped = cg.b.build_int_add(idx, cg.i64c(depth), "wrapped")?;
        let idx = cg.b.build_select(negative, wrapped, idx, "idx")?.into_int_value();
        let hit = cg.b.build_int_compare(IntPredicate::EQ, idx, o[axis], "hit")?;
        let v = cg.b.build_select(hit, on, off, "onehot")?.into_int_value();
        store_bits(cg, bits, yp, at, v)
    })?;
    cg.b.build_return(None)?;
    Ok((f, vec![plan.loc(out), plan.loc(indices), plan.loc(values)]))
}

// ---------------------------------------------------------------- CumSum

/// Running sums along the axis (input 1, a compile-time scalar), from the
/// end when `reverse`, excluding the current element when `exclusive`.
fn cum_sum<'ctx>(
    cg: &Cg<'ctx>,
    plan: &Plan,
    step: usize,
    node: &Node,
    exclusive: bool,
    reverse: bool,
) -> Result<Kernel<'ctx>> {
    let (x, out) = (io(node, 0, false)?, io(node, 0, true)?);
    let dtype = plan.ty(x).dtype;
    if dtype == DType::Bool {
        return Err(BackendError::unsupported(&node.name, "CumSum", "bool tensors"));
    }
    let shape = plan.ty(x).shape.clone();
    let axis = known_ints(plan, node, 1, "axis")?
        .and_then(|a| a.first().copied())
        .ok_or_else(|| BackendError::node(&node.name, "CumSum", "the axis is missing"))?;
    let axis = norm_axis(node, axis, shape.len())?;
    let outer: usize = shape[..axis].iter().product();
    let len = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let ty = cg.compute_type(dtype).map_err(BackendError::Llvm)?;
    let f = cg.kernel_fn(&format!("k{step}_cumsum"), 2);
    let (yp, xp) = (cg.param(f, 0), cg.param(f, 1));
    let acc = cg.entry_alloca(f, ty, "acc")?;
    let zero: BV = if dtype.is_float() {
        ty.into_float_type().const_float(0.0).into()
    } else {
        ty.into_int_type().const_zero().into()
    };
    for_each_index(cg, f, &[outer, inner], &mut |oi| {
        cg.b.build_store(acc, zero)?;
        let base = cg.affine(oi[0], (len * inner) as i64, oi[1])?;
        cg.for_n(f, len, &mut |t| {
            let j = if reverse { cg.b.build_int_nsw_sub(cg.i64c(len as i64 - 1), t, "j")? } else { t };
            let at = cg.affine(j, inner as i64, base)?;
            let v = cg.load(xp, dtype, at)?;
            let cur = cg.b.build_load(ty, acc, "acc")?;
            let next = if dtype.is_float() {
                cg.fadd(cur, v)?
            } else {
                cg.b.build_int_add(cur.into_int_value(), v.into_int_value(), "acc")?.into()
            };
            cg.b.build_store(acc, next)?;
            cg.store(yp, dtype, at, if exclusive { cur } else { next })
        })
    })?;
    cg.b.build_return(None)?;
    Ok((f, vec![plan.loc(out), plan.loc(x)]))
}
