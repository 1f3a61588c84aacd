//! From a graph and concrete input shapes to an execution plan: shape
//! specialization, compile-time folding, kernel formation (elementwise
//! fusion, views) and the memory plan.
//!
//! 1. **Specialization.** The graph is rebuilt with every graph input typed
//!    by the shape it is run with. Nodes whose inputs are all known at
//!    compile time (initializers, `Constant`, and `Shape`/`Size`, which only
//!    need static shapes) are evaluated once with kiln's interpreter and
//!    their results become initializers of the rebuilt graph, so shape
//!    arithmetic (`Shape → Gather → Concat → Reshape`) costs nothing at run
//!    time. Type inference on the rebuilt graph then gives every remaining
//!    value a static shape.
//! 2. **Kernels.** Each remaining node becomes a [`Step`], except views
//!    (`Reshape`, `Flatten`, `Squeeze`, `Unsqueeze`, `Identity`, inference
//!    `Dropout`), which alias their input's storage, and elementwise nodes
//!    fused into a consumer: an elementwise producer joins its consumer's
//!    group when every reader of its result is in that group, the result has
//!    the group's output shape and is not a graph output. A group computes
//!    its whole expression per element in one loop nest and writes only the
//!    root's result.
//! 3. **Memory.** Graph inputs, outputs and constants live in buffers the
//!    caller passes; every other result gets a range of one scratch arena.
//!    Ranges are reused by liveness: walking the steps in order, a step's
//!    results are placed first (best fit among free ranges, else at the end
//!    of the arena), then every buffer whose last reader was this step is
//!    released. A result is never placed over a buffer its own step reads,
//!    so kernels may assume their output aliases none of their inputs.

use crate::error::{BackendError, Result};
use crate::MatMulKernel;
use kiln_ir::dtype::DType;
use kiln_ir::graph::{Graph, NodeId, ValueId};
use kiln_ir::op::Op;
use kiln_ir::tensor::Tensor;
use kiln_ir::types::TensorType;
use std::collections::{BTreeMap, BTreeSet};

/// Byte alignment of arena ranges: a cache line, which also covers any
/// SIMD register width.
pub(crate) const ALIGN: usize = 64;

/// Which caller-provided buffer holds a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    /// The i-th graph input.
    Input(usize),
    /// The i-th graph output.
    Output(usize),
    /// The i-th constant of [`Plan::consts`].
    Const(usize),
    /// The scratch arena.
    Arena,
}

/// Where a value's elements are: a buffer and a byte offset into it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Loc {
    /// The buffer.
    pub slot: Slot,
    /// Byte offset of the first element.
    pub offset: usize,
}

/// One kernel of the plan, in execution order.
#[derive(Clone, Debug)]
pub(crate) enum Step {
    /// A fused elementwise group: `nodes` in topological order, the last one
    /// the root whose result `out` is written.
    Fused { nodes: Vec<NodeId>, out: ValueId },
    /// One node with its own kernel.
    Node(NodeId),
    /// A LayerNormalization or RMSNormalization node `norm` whose input X is
    /// the result of the fused elementwise group `nodes` (X is the root's
    /// result): the norm kernel computes the group while it reads each row,
    /// so X is written only when `write_x` (X is a graph output or another
    /// step reads it, as pre-LN transformers reuse the residual sum).
    NormPrologue { nodes: Vec<NodeId>, norm: NodeId, write_x: bool },
    /// Copies a value into graph output `output` (a graph output that is a
    /// graph input, a constant, another output, or a view of one of those).
    Copy { from: ValueId, output: usize },
}

/// The static type of a value after specialization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Shaped {
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl Shaped {
    pub(crate) fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.len() * elem_bytes(self.dtype)
    }
}

/// Bytes per element in memory (4-bit types are held one per byte).
pub(crate) fn elem_bytes(dtype: DType) -> usize {
    match dtype {
        DType::I4 | DType::U4 => 1,
        d => d.bit_width() / 8,
    }
}

/// A graph specialized to concrete input shapes, with its kernels and
/// memory plan.
pub(crate) struct Plan {
    /// The rebuilt graph: folded values are initializers, every value typed.
    pub graph: Graph,
    /// Static types, indexed by value id of `graph`.
    pub types: Vec<Option<Shaped>>,
    /// Kernels in execution order.
    pub steps: Vec<Step>,
    /// Storage of each value (views share their source's storage).
    pub loc: Vec<Option<Loc>>,
    /// Data of the [`Slot::Const`] buffers.
    pub consts: Vec<Tensor>,
    /// Arena size in bytes.
    pub arena_bytes: usize,
    /// Per step, the arena offset of its private scratch space, if it needs
    /// any (see [`scratch_bytes`]); live only during the step.
    pub scratch: Vec<Option<usize>>,
    /// MatMul/Gemm nodes whose constant B was packed at compile time for
    /// the target (see `codegen::gemm::prepack_b`), with the index in
    /// [`Plan::consts`] of the packed copy.
    pub packed_b: BTreeMap<NodeId, usize>,
    /// Count cycles per step (see [`crate::profile`]): the entry then takes
    /// one more buffer, a `u64` counter per step.
    pub profile: bool,
}

impl Plan {
    /// The static type of a value.
    pub(crate) fn ty(&self, v: ValueId) -> &Shaped {
        self.types[v.index()].as_ref().expect("every value of a plan is typed (checked by `specialize`)")
    }

    /// A value's data when it is known at compile time (initializers and
    /// folded results), for inlining small constants into code.
    pub(crate) fn known(&self, v: ValueId) -> Option<&Tensor> {
        self.graph.value(v).initializer.as_ref()
    }

    /// The storage of a value.
    pub(crate) fn loc(&self, v: ValueId) -> Loc {
        self.loc[v.index()].expect("every value a kernel touches has storage (assigned by `plan_memory`)")
    }
}

/// The ops whose results alias their first input's storage.
pub(crate) fn is_view(op: &Op) -> bool {
    matches!(
        op,
        Op::Reshape { .. } | Op::Flatten { .. } | Op::Squeeze | Op::Unsqueeze | Op::Identity | Op::Dropout { .. }
    )
}

/// What a Slice selects along each axis of its input: the first index, the
/// step and the count (axes it does not name: 0, 1 and the whole axis).
pub(crate) struct SliceGeometry {
    pub first: Vec<i64>,
    pub steps: Vec<i64>,
    pub lens: Vec<i64>,
}

/// The geometry of a Slice of `shape` with the given (constant) inputs.
/// Bounds are clamped as ONNX says: starts and ends are first shifted by
/// the dimension when negative, then clamped to `[0, dim]` for positive
/// steps and to `[0, dim - 1]` (starts) and `[-1, dim - 1]` (ends) for
/// negative ones.
pub(crate) fn slice_geometry(
    shape: &[usize],
    starts: &[i64],
    ends: &[i64],
    axes: Option<&[i64]>,
    steps: Option<&[i64]>,
) -> std::result::Result<SliceGeometry, String> {
    let rank = shape.len() as i64;
    let default_axes: Vec<i64> = (0..starts.len() as i64).collect();
    let axes = axes.unwrap_or(&default_axes);
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.is_some_and(|s| s.len() != starts.len()) {
        return Err("starts, ends, axes and steps differ in length".into());
    }
    let mut g = SliceGeometry {
        first: vec![0; shape.len()],
        steps: vec![1; shape.len()],
        lens: shape.iter().map(|&d| d as i64).collect(),
    };
    for (k, &a) in axes.iter().enumerate() {
        let a = if a < 0 { a + rank } else { a };
        if !(0..rank).contains(&a) {
            return Err(format!("axis {a} out of range for rank {rank}"));
        }
        let (a, d) = (a as usize, shape[a as usize] as i64);
        let st = steps.map_or(1, |s| s[k]);
        if st == 0 {
            return Err("a step is 0".into());
        }
        let norm = |v: i64| if v < 0 { v.saturating_add(d) } else { v };
        let (s, e) = if st > 0 {
            (norm(starts[k]).clamp(0, d), norm(ends[k]).clamp(0, d))
        } else {
            (norm(starts[k]).clamp(0, d - 1), norm(ends[k]).clamp(-1, d - 1))
        };
        let len = if st > 0 { (e - s + st - 1).div_euclid(st) } else { (s - e + (-st) - 1).div_euclid(-st) };
        g.first[a] = s;
        g.steps[a] = st;
        g.lens[a] = len.max(0);
    }
    Ok(g)
}

/// Whether `node` is a `Slice` whose result is the leading part of its
/// input's storage, so that it can alias it like a view: unit steps, every
/// start 0, and (row-major) the first axis it shortens has only size-1
/// axes before it and whole axes after it, as `logits[:, :-1, :]` of one
/// sequence. The slice's bounds must be constants.
pub(crate) fn is_prefix_slice(graph: &Graph, types: &[Option<Shaped>], node: &kiln_ir::graph::Node) -> bool {
    if !matches!(node.op, Op::Slice) {
        return false;
    }
    let Some(full) = node.input(0).and_then(|v| types[v.index()].as_ref()).map(|t| t.shape.clone()) else {
        return false;
    };
    let constant =
        |slot: usize| node.input(slot).and_then(|v| graph.value(v).initializer.as_ref()).map(|t| t.to_i64s());
    let (Some(starts), Some(ends)) = (constant(1), constant(2)) else { return false };
    let (axes, steps) = (constant(3), constant(4));
    if (node.input(3).is_some() && axes.is_none()) || (node.input(4).is_some() && steps.is_none()) {
        return false;
    }
    let Ok(g) = slice_geometry(&full, &starts, &ends, axes.as_deref(), steps.as_deref()) else { return false };
    if g.first.iter().any(|&f| f != 0) || g.steps.iter().any(|&s| s != 1) {
        return false;
    }
    let part: Vec<usize> = g.lens.iter().map(|&l| l as usize).collect();
    match full.iter().zip(&part).position(|(a, b)| a != b) {
        None => true,
        Some(first) => full[..first].iter().all(|&d| d == 1) && full[first + 1..] == part[first + 1..],
    }
}

/// The ops that can join a fused elementwise loop.
pub(crate) fn is_elementwise(op: &Op) -> bool {
    matches!(
        op,
        Op::Unary(_)
            | Op::Binary(_)
            | Op::Variadic(_)
            | Op::Mod { .. }
            | Op::Clip
            | Op::Where
            | Op::Gelu { .. }
            | Op::LeakyRelu { .. }
            | Op::Elu { .. }
            | Op::HardSigmoid { .. }
            | Op::IsInf { .. }
            | Op::Cast { .. }
            | Op::CastLike { .. }
            | Op::Expand
    )
}

/// The ops with a kernel of their own.
pub(crate) fn has_kernel(op: &Op) -> bool {
    matches!(
        op,
        Op::MatMul
            | Op::Gemm(_)
            | Op::MatMulInteger
            | Op::QLinearMatMul
            | Op::Softmax { .. }
            | Op::LogSoftmax { .. }
            | Op::Reduce { .. }
            | Op::Transpose { .. }
            | Op::Concat { .. }
            | Op::Split { .. }
            | Op::Slice
            | Op::Gather { .. }
            | Op::LayerNormalization { .. }
            | Op::RMSNormalization { .. }
            | Op::CrossEntropy { .. }
            | Op::SoftmaxCrossEntropyLoss { .. }
            | Op::NegativeLogLikelihoodLoss { .. }
            | Op::LinearCrossEntropy { .. }
            | Op::Attention(_)
            | Op::RotaryEmbedding { .. }
            | Op::GatherElements { .. }
            | Op::GatherND { .. }
            | Op::ScatterND { .. }
            | Op::Trilu { .. }
            | Op::Pad { .. }
            | Op::Tile
            | Op::OneHot { .. }
            | Op::CumSum { .. }
            | Op::ArgReduce { .. }
            | Op::TopK { .. }
            | Op::QuantizeLinear { .. }
            | Op::DequantizeLinear { .. }
            | Op::DynamicQuantizeLinear
            | Op::LinearAttention(_)
    )
}

/// Vocabulary entries per tile of the LinearCrossEntropy kernel (at most
/// the op's `chunk_size`): a tile of a 768-wide f32 head is 768 KiB, which
/// stays in L2 while every row passes over it.
pub(crate) const LCE_TILE: usize = 256;

/// Bytes of scratch a step's kernel needs beside its inputs and outputs:
/// LinearCrossEntropy keeps four numbers per row (running max, running
/// sum, target logit, weighted logit sum), one packed tile of the head and
/// one tile of logits (see `codegen::lce`).
pub(crate) fn scratch_bytes(graph: &Graph, types: &[Option<Shaped>], step: &Step, matmul: MatMulKernel) -> usize {
    let Step::Node(id) = step else { return 0 };
    let node = graph.node(*id);
    match &node.op {
        Op::LinearCrossEntropy { chunk_size, .. } => {
            let hidden = node.input(0).and_then(|h| types[h.index()].as_ref());
            match hidden.map(|t| (t.dtype, t.shape.as_slice())) {
                Some((dtype, &[n, d])) => crate::codegen::forward_scratch_bytes(dtype, n, d, *chunk_size),
                _ => 0,
            }
        }
        Op::Attention(_) => attention_geometry(graph, types, *id).map_or(0, |g| attention_scratch_bytes(&g)),
        Op::LinearAttention(_) => {
            crate::codegen::linear_attention_geometry(types, node).map_or(0, crate::codegen::linear_attention_scratch)
        }
        Op::QLinearMatMul => {
            let ty = |slot: usize| node.input(slot).and_then(|v| types[v.index()].as_ref());
            let (Some(a), Some(b)) = (ty(0), ty(3)) else { return 0 };
            crate::codegen::gemm::matmul_dims(&a.shape, &b.shape, false, false).map_or(0, |dims| {
                (dims.m * dims.n * 4).div_ceil(64) * 64 + crate::codegen::gemm::scratch_bytes(DType::I32, dims)
            })
        }
        Op::MatMul | Op::Gemm(_) | Op::MatMulInteger => {
            let ty = |slot: usize| node.input(slot).and_then(|v| types[v.index()].as_ref());
            let out = node.output(0).and_then(|v| types[v.index()].as_ref());
            let (Some(a), Some(b), Some(out)) = (ty(0), ty(1), out) else { return 0 };
            use crate::codegen::gemm;
            match &node.op {
                Op::MatMulInteger => gemm::matmul_dims(&a.shape, &b.shape, false, false)
                    .map_or(0, |dims| gemm::scratch_bytes(DType::I32, dims)),
                Op::Gemm(g) => {
                    gemm::matmul_scratch_bytes(&a.shape, &b.shape, out.dtype, (g.trans_a, g.trans_b), matmul)
                }
                _ => gemm::matmul_scratch_bytes(&a.shape, &b.shape, out.dtype, (false, false), matmul),
            }
        }
        _ => 0,
    }
}

/// Query rows per block of the Attention kernel, at most: each key tile is
/// packed once per block, and that packing is what a taller block saves.
pub(crate) const ATTN_BQ_MAX: usize = 512;
/// Query rows per block, at least (where the sequence is that long).
pub(crate) const ATTN_BQ_MIN: usize = 64;
/// Largest per-thread scratch (bytes) the Attention kernel keeps on the
/// stack, so that items can run on several threads; past it (value heads
/// of thousands) the kernel runs serially on scratch in the arena. 512 KiB
/// holds a 512-row block of a 64-wide head (measured at S = 4096: 2% faster
/// than 256 rows, each key tile being packed half as often), well inside
/// libomp's 4 MiB worker stacks and a Rust thread's 2 MiB.
pub(crate) const ATTN_STACK_SCRATCH: usize = 512 << 10;
/// Blocks the Attention kernel keeps, at least, for the threads to share,
/// where shorter blocks can make them.
const ATTN_MIN_ITEMS: usize = 16;
/// Key/value positions per tile of the Attention kernel: a 64-position
/// tile of a 64-wide head is 16 KiB of K and as much of V, which stay in
/// L1/L2 while every row of the query block passes over them.
pub(crate) const ATTN_BK: usize = 64;

/// Element strides of one operand of Attention: between batches, between
/// heads and between sequence positions (the head dimension is unit-stride
/// in both the 4-D `[B, H, S, D]` and the 3-D `[B, S, H·D]` layout).
#[derive(Clone, Copy, Debug)]
pub(crate) struct AttentionStrides {
    pub batch: i64,
    pub head: i64,
    pub row: i64,
}

/// The sizes and layouts of an Attention node's Q, K, V and output.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AttentionGeometry {
    pub batch: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
    pub q_len: usize,
    /// Keys seen by each query: the past cache's and the new ones.
    pub kv_len: usize,
    /// Positions in the past key/value caches (0 without them).
    pub past_len: usize,
    pub head_dim: usize,
    pub v_dim: usize,
    pub q: AttentionStrides,
    pub k: AttentionStrides,
    pub v: AttentionStrides,
    pub y: AttentionStrides,
}

/// Reads the geometry of Attention node `id` from the static types,
/// checking that Q, K and V agree.
pub(crate) fn attention_geometry(
    graph: &Graph,
    types: &[Option<Shaped>],
    id: NodeId,
) -> std::result::Result<AttentionGeometry, String> {
    let node = graph.node(id);
    let Op::Attention(attrs) = &node.op else { return Err("not an Attention node".into()) };
    let shape = |slot: usize, what: &str| {
        node.input(slot)
            .and_then(|v| types[v.index()].as_ref())
            .map(|t| t.shape.clone())
            .ok_or_else(|| format!("{what} is missing or has no static shape"))
    };
    let (qs, ks, vs) = (shape(0, "Q")?, shape(1, "K")?, shape(2, "V")?);
    if ks.len() != qs.len() || vs.len() != qs.len() {
        return Err(format!("Q, K and V must have one rank, found {qs:?}, {ks:?} and {vs:?}"));
    }
    // (batch, heads, seq, dim, strides) of one operand.
    let split = |s: &[usize], heads: Option<i64>, what: &str| match *s {
        [b, h, n, d] => Ok((b, h, n, d, strides_4d(h, n, d))),
        [b, n, hidden] => {
            let h = heads.ok_or_else(|| format!("a 3-D {what} needs the q_num_heads/kv_num_heads attribute"))?;
            if h <= 0 || hidden % h as usize != 0 {
                return Err(format!("{what} hidden size {hidden} is not a multiple of {h} heads"));
            }
            let (h, d) = (h as usize, hidden / h as usize);
            Ok((b, h, n, d, strides_3d(h, n, d)))
        }
        _ => Err(format!("{what} must be 3-D or 4-D, found {s:?}")),
    };
    let (batch, q_heads, q_len, head_dim, q) = split(&qs, attrs.q_num_heads, "Q")?;
    let (kb, kv_heads, kv_len, kd, k) = split(&ks, attrs.kv_num_heads, "K")?;
    let (vb, vh, vn, v_dim, v) = split(&vs, attrs.kv_num_heads, "V")?;
    if kb != batch || vb != batch || kd != head_dim || vh != kv_heads || vn != kv_len {
        return Err(format!("inconsistent Q {qs:?}, K {ks:?} and V {vs:?}"));
    }
    if kv_heads == 0 || q_heads % kv_heads != 0 {
        return Err(format!("{q_heads} query heads cannot share {kv_heads} key/value heads"));
    }
    let past_len = match (node.input(4), node.input(5)) {
        (Some(_), Some(_)) => {
            let (pk, pv) = (shape(4, "past_key")?, shape(5, "past_value")?);
            let p = pk.get(2).copied().unwrap_or(0);
            if pk != [batch, kv_heads, p, head_dim] || pv != [batch, kv_heads, p, v_dim] {
                return Err(format!(
                    "past_key {pk:?} and past_value {pv:?} must be [{batch}, {kv_heads}, past, {head_dim} / {v_dim}]"
                ));
            }
            p
        }
        _ => 0,
    };
    let y = if qs.len() == 4 { strides_4d(q_heads, q_len, v_dim) } else { strides_3d(q_heads, q_len, v_dim) };
    Ok(AttentionGeometry {
        batch,
        q_heads,
        kv_heads,
        q_len,
        kv_len: past_len + kv_len,
        past_len,
        head_dim,
        v_dim,
        q,
        k,
        v,
        y,
    })
}

fn strides_4d(heads: usize, seq: usize, dim: usize) -> AttentionStrides {
    AttentionStrides { batch: (heads * seq * dim) as i64, head: (seq * dim) as i64, row: dim as i64 }
}

fn strides_3d(heads: usize, seq: usize, dim: usize) -> AttentionStrides {
    AttentionStrides { batch: (seq * heads * dim) as i64, head: dim as i64, row: (heads * dim) as i64 }
}

/// Scratch of the Attention kernel, in bytes: per query row of a block its
/// running maximum and sum, one tile of scores and the output accumulator,
/// all f32. Independent of the sequence lengths beyond the tile sizes.
pub(crate) fn attention_scratch_bytes(g: &AttentionGeometry) -> usize {
    attention_scratch_floats(g) * 4
}

/// Width of a score row and of a packed key tile in the Attention
/// kernel's scratch: the tile rounded up to 16 floats, a whole number of
/// SIMD vectors on every supported target (4, 8 or 16 f32 lanes).
pub(crate) fn attention_tile_stride(kv_len: usize) -> usize {
    ATTN_BK.min(kv_len).max(1).next_multiple_of(16)
}

/// Lanes of the Attention kernel's per-row running sums, the widest f32
/// vector (AVX-512): the vector path keeps a row's sum lane-wise across
/// tiles and reduces it once.
pub(crate) const ATTN_SUM_LANES: usize = 16;

/// f32 elements of the Attention kernel's scratch: per query row of a
/// block its max, sum, rescale factor, tile maximum and lane-wise sum, a
/// score row and an output accumulator, plus one key tile packed
/// transposed and one value tile copied (64-byte aligned, where the
/// caller's V rows need not be).
pub(crate) fn attention_scratch_floats(g: &AttentionGeometry) -> usize {
    scratch_floats_for_rows(g, attention_block_rows(g))
}

fn scratch_floats_for_rows(g: &AttentionGeometry, bq: usize) -> usize {
    let stride = attention_tile_stride(g.kv_len);
    (4 + ATTN_SUM_LANES) * bq + bq * stride + bq * g.v_dim + g.head_dim * stride + stride * g.v_dim
}

/// Query rows per block of the Attention kernel: [`ATTN_BQ_MAX`], halved
/// (down to [`ATTN_BQ_MIN`]) while the block's scratch would not fit the
/// stack budget or there would be fewer than [`ATTN_MIN_ITEMS`] blocks.
pub(crate) fn attention_block_rows(g: &AttentionGeometry) -> usize {
    let mut bq = ATTN_BQ_MAX;
    while bq > ATTN_BQ_MIN {
        let items = g.batch * g.q_heads * g.q_len.div_ceil(bq);
        if scratch_floats_for_rows(g, bq) * 4 <= ATTN_STACK_SCRATCH && items >= ATTN_MIN_ITEMS {
            break;
        }
        bq /= 2;
    }
    bq.min(g.q_len).max(1)
}

/// Ops that are evaluated at compile time once their inputs are known, and
/// have no run-time lowering otherwise.
fn folds_from_shapes(op: &Op) -> bool {
    matches!(op, Op::Shape { .. } | Op::Size)
}

/// Which values of `graph` are known at compile time for any input shapes:
/// initializers that are not graph inputs, results of `Shape`/`Size`, and
/// results of nodes whose inputs are all known. Returns one flag per node.
pub(crate) fn foldable_nodes(graph: &Graph) -> Result<BTreeMap<NodeId, bool>> {
    let mut known = vec![false; graph.value_ids().count()];
    for (v, _) in graph.initializers() {
        known[v.index()] = !graph.inputs().contains(&v);
    }
    // Shape inputs are specialized by value, so they are constants too.
    for (&v, by_value) in graph.inputs().iter().zip(shape_inputs(graph)) {
        known[v.index()] |= by_value;
    }
    let mut out = BTreeMap::new();
    for id in graph.topo_order()? {
        let node = graph.node(id);
        let foldable = folds_from_shapes(&node.op) || node.inputs.iter().flatten().all(|v| known[v.index()]);
        if foldable {
            for v in node.outputs.iter().flatten() {
                known[v.index()] = true;
            }
        }
        out.insert(id, foldable);
    }
    Ok(out)
}

/// Flags the graph inputs whose values decide shapes, sizes or axes (Reshape's
/// and Expand's shape, Split's sizes, Slice's starts/ends/axes/steps,
/// Squeeze/Unsqueeze/Reduce axes, Pad's pads and axes, Tile's repeats,
/// TopK's k, OneHot's depth, Trilu's k, CumSum's axis), or that decide an
/// output shape by their values (Range's bounds, ConstantOfShape's shape,
/// NonZero's input): code is specialized to their values as well as to the
/// input shapes, the way it is to shapes, and nodes reading only such
/// inputs fold at compile time. An input read in such a slot directly
/// always qualifies; one that only reaches a shape through other nodes
/// (shape arithmetic) qualifies when it is small
/// ([`MAX_INDIRECT_SHAPE_INPUT`] elements), so a data tensor is never made
/// a compile-time constant by accident.
pub(crate) fn shape_inputs(graph: &Graph) -> Vec<bool> {
    let mut memo: BTreeMap<ValueId, bool> = BTreeMap::new();
    graph
        .inputs()
        .iter()
        .map(|&v| {
            let direct = graph.value(v).uses().iter().any(|&(n, slot)| reads_as_shape(graph, n, slot, v));
            let small = graph
                .value(v)
                .ty
                .as_ref()
                .and_then(|t| t.fixed_shape())
                .is_some_and(|s| s.iter().product::<usize>() <= MAX_INDIRECT_SHAPE_INPUT);
            direct || (small && decides_shape(graph, v, &mut memo))
        })
        .collect()
}

/// Elements of the largest graph input specialized by value because its
/// value reaches a shape through other nodes.
pub(crate) const MAX_INDIRECT_SHAPE_INPUT: usize = 64;

/// Whether `node` reads input `slot` (holding `v`) as a shape, size, axis
/// or count, i.e. its value decides the node's output shape.
fn reads_as_shape(graph: &Graph, n: NodeId, slot: usize, v: ValueId) -> bool {
    match graph.node(n).op {
        Op::Reshape { .. } | Op::Squeeze | Op::Unsqueeze | Op::Reduce { .. } | Op::Expand | Op::Split { .. } => {
            slot == 1
        }
        Op::Slice => (1..=4).contains(&slot),
        Op::Pad { .. } => slot == 1 || slot == 3,
        Op::Tile | Op::TopK { .. } | Op::OneHot { .. } | Op::Trilu { .. } | Op::CumSum { .. } => slot == 1,
        Op::Range => slot <= 2,
        Op::ConstantOfShape { .. } => slot == 0,
        // NonZero's result size depends on all of its input's data: worth
        // specializing to a graph input fed straight in (a mask given as
        // data), not to whatever computes it.
        Op::NonZero => slot == 0 && graph.inputs().contains(&v),
        Op::Dropout { .. } => slot == 1 || slot == 2,
        _ => false,
    }
}

/// Whether a value's data decides a shape: some reader takes it in a shape
/// slot, directly or through nodes (like the `Cast`/`Sub`/`Concat` of shape
/// arithmetic) whose results do. Such a value must be known to give the
/// graph static shapes, so code is specialized to it; readers that also
/// use it as data then see it as a constant.
fn decides_shape(graph: &Graph, v: ValueId, memo: &mut BTreeMap<ValueId, bool>) -> bool {
    if let Some(&known) = memo.get(&v) {
        return known;
    }
    // Provisional answer; the graph is acyclic, so it is never read back.
    memo.insert(v, false);
    let decides = graph.value(v).uses().iter().any(|&(n, slot)| {
        // Shape and Size read only the shape, which is specialized anyway.
        if matches!(graph.node(n).op, Op::Shape { .. } | Op::Size) {
            return false;
        }
        reads_as_shape(graph, n, slot, v)
            || graph.node(n).outputs.iter().flatten().any(|&o| decides_shape(graph, o, memo))
    });
    memo.insert(v, decides);
    decides
}

/// Checks that every node that is not folded at compile time has a
/// lowering, naming the first one that has none.
pub(crate) fn check_lowerable(graph: &Graph) -> Result<()> {
    let foldable = foldable_nodes(graph)?;
    for (id, folds) in foldable {
        let node = graph.node(id);
        if !(folds || is_view(&node.op) || is_elementwise(&node.op) || has_kernel(&node.op)) {
            return Err(BackendError::unsupported(&node.name, node.op.name(), "the op has no CPU kernel yet"));
        }
    }
    Ok(())
}

/// Rebuilds `graph` for concrete input types (one per graph input, in
/// order), folding what is known at compile time, and infers every type.
/// Inputs given a value in `input_values` (shape inputs, see
/// [`shape_inputs`]) become constants of the rebuilt graph rather than
/// inputs.
pub(crate) fn specialize(graph: &Graph, input_types: &[Shaped], input_values: &[Option<Tensor>]) -> Result<Graph> {
    let mut g = Graph::new(&graph.name);
    g.opset_imports = graph.opset_imports.clone();
    let mut map: BTreeMap<ValueId, ValueId> = BTreeMap::new();
    for ((&v, ty), value) in graph.inputs().iter().zip(input_types).zip(input_values) {
        let val = graph.value(v);
        let nv = match value {
            Some(t) => g.add_initializer(&val.name, t.clone())?,
            None => g.add_input(&val.name, TensorType::fixed(ty.dtype, &ty.shape))?,
        };
        map.insert(v, nv);
    }
    for (v, t) in graph.initializers() {
        if let std::collections::btree_map::Entry::Vacant(slot) = map.entry(v) {
            slot.insert(g.add_initializer(&graph.value(v).name, t.clone())?);
        }
    }
    let foldable = foldable_nodes(graph)?;
    for id in graph.topo_order()? {
        let node = graph.node(id);
        if foldable[&id] {
            let results = fold(graph, &g, &map, id)?;
            for (slot, t) in results.into_iter().enumerate() {
                let (Some(v), Some(t)) = (node.output(slot), t) else { continue };
                let nv = g.add_initializer(&graph.value(v).name, t)?;
                map.insert(v, nv);
            }
            continue;
        }
        if matches!(node.op, Op::Dropout { .. }) && specialize_dropout(graph, &mut g, &mut map, id)? {
            continue;
        }
        let inputs: Vec<Option<ValueId>> = node
            .inputs
            .iter()
            .map(|v| {
                v.map(|v| {
                    map.get(&v).copied().ok_or_else(|| {
                        BackendError::node(
                            &node.name,
                            node.op.name(),
                            format!("input `{}` has no producer, initializer or graph input", graph.value(v).name),
                        )
                    })
                })
                .transpose()
            })
            .collect::<Result<_>>()?;
        let names: Vec<String> =
            node.outputs.iter().map(|o| o.map(|v| graph.value(v).name.clone()).unwrap_or_default()).collect();
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let nid = g.add_node(&node.name, node.op.clone(), inputs, &name_refs)?;
        // Type the results now: a later `Shape` of them folds from these.
        let inferred = kiln_ir::infer_node(&g, nid)?;
        for (slot, ty) in inferred.into_iter().enumerate() {
            if let (Some(v), Some(ty)) = (g.node(nid).output(slot), ty) {
                g.value_mut(v).ty = Some(ty);
            }
        }
        for (slot, v) in node.outputs.iter().enumerate() {
            if let (Some(v), Some(nv)) = (v, g.node(nid).output(slot)) {
                map.insert(*v, nv);
            }
        }
    }
    for &o in graph.outputs() {
        let nv = map
            .get(&o)
            .copied()
            .ok_or_else(|| BackendError::value(&graph.value(o).name, "graph output is not computed by any node"))?;
        g.add_output(nv);
    }
    kiln_ir::infer_types(&mut g)?;
    Ok(g)
}

/// Rebuilds a Dropout that is an identity for these inputs (inference
/// mode, or a ratio of 0) as a plain view of its data, its mask output (all
/// true) a constant. Returns false, changing nothing, when the ratio or the
/// mode is not known at compile time or the node really drops.
fn specialize_dropout(graph: &Graph, g: &mut Graph, map: &mut BTreeMap<ValueId, ValueId>, id: NodeId) -> Result<bool> {
    let node = graph.node(id);
    let known =
        |slot: usize| node.input(slot).and_then(|v| map.get(&v)).and_then(|nv| g.value(*nv).initializer.clone());
    let training = match (node.input(2), known(2)) {
        (None, _) => false,
        (Some(_), Some(t)) => t.to_f64s().iter().any(|&x| x != 0.0),
        (Some(_), None) => return Ok(false),
    };
    let ratio = match (node.input(1), known(1)) {
        (None, _) => 0.5,
        (Some(_), Some(t)) => t.to_f64s().first().copied().unwrap_or(0.5),
        (Some(_), None) => return Ok(false),
    };
    let (Some(x), Some(y)) = (node.input(0), node.output(0)) else { return Ok(false) };
    let Some(&nx) = map.get(&x) else { return Ok(false) };
    if training && ratio != 0.0 {
        return Ok(false);
    }
    if let Some(mask) = node.output(1) {
        let shape = g.ty(nx)?.fixed_shape().ok_or_else(|| {
            BackendError::node(&node.name, "Dropout", "the data has no static shape, so neither has the mask")
        })?;
        let ones = vec![1i64; shape.iter().product()];
        let nv = g.add_initializer(&graph.value(mask).name, Tensor::from_i64s(DType::Bool, &shape, &ones))?;
        map.insert(mask, nv);
    }
    let name = graph.value(y).name.clone();
    let nid = g.add_node(&node.name, node.op.clone(), vec![Some(nx)], &[name.as_str()])?;
    let inferred = kiln_ir::infer_node(g, nid)?;
    let ny = g.node(nid).output(0).expect("the node was added with one output");
    if let Some(Some(ty)) = inferred.into_iter().next() {
        g.value_mut(ny).ty = Some(ty);
    }
    map.insert(y, ny);
    Ok(true)
}

/// Evaluates a foldable node of `graph` whose inputs are in `g` (the graph
/// being rebuilt) as initializers or typed graph inputs.
fn fold(graph: &Graph, g: &Graph, map: &BTreeMap<ValueId, ValueId>, id: NodeId) -> Result<Vec<Option<Tensor>>> {
    let node = graph.node(id);
    let err = |m: String| BackendError::node(&node.name, node.op.name(), m);
    let input_ty = |slot: usize| -> Result<Vec<usize>> {
        let v = node.input(slot).ok_or_else(|| err("input 0 is missing".into()))?;
        let nv = map.get(&v).ok_or_else(|| err(format!("input `{}` is not defined", graph.value(v).name)))?;
        g.ty(*nv)?.fixed_shape().ok_or_else(|| err(format!("input `{}` has no static shape", graph.value(v).name)))
    };
    match &node.op {
        Op::Shape { start, end } => {
            let shape = input_ty(0)?;
            let rank = shape.len() as i64;
            let clamp = |i: i64| if i < 0 { (i + rank).clamp(0, rank) } else { i.min(rank) } as usize;
            let (s, e) = (clamp(*start), clamp(end.unwrap_or(rank)));
            let dims: Vec<i64> = shape[s..e.max(s)].iter().map(|&d| d as i64).collect();
            Ok(vec![Some(Tensor::vec_i64(&dims))])
        }
        Op::Size => Ok(vec![Some(Tensor::scalar_i64(input_ty(0)?.iter().product::<usize>() as i64))]),
        op => {
            let args: Vec<Option<Tensor>> = node
                .inputs
                .iter()
                .map(|v| v.and_then(|v| map.get(&v)).and_then(|nv| g.value(*nv).initializer.clone()))
                .collect();
            kiln_ir::interp::eval_op(op, &args, node.outputs.len()).map_err(err)
        }
    }
}

/// Plans kernels and memory for a specialized graph; `matmul` is the
/// MatMul/Gemm kernel code will be generated with (its scratch differs).
pub(crate) fn plan(graph: Graph, matmul: MatMulKernel) -> Result<Plan> {
    let count = graph.value_ids().count();
    let mut types: Vec<Option<Shaped>> = vec![None; count];
    for v in graph.value_ids() {
        if let Some(ty) = &graph.value(v).ty {
            if let Some(shape) = ty.fixed_shape() {
                types[v.index()] = Some(Shaped { dtype: ty.dtype, shape });
            }
        }
    }
    let order = graph.topo_order()?;
    for &id in &order {
        let node = graph.node(id);
        for v in node.inputs.iter().chain(&node.outputs).flatten() {
            if types[v.index()].is_none() {
                let ty = graph.value(*v).ty.as_ref().map_or_else(|| "unknown".to_string(), |t| t.to_string());
                return Err(BackendError::node(
                    &node.name,
                    node.op.name(),
                    format!(
                        "value `{}` has type {ty}, which is not static for these input shapes",
                        graph.value(*v).name
                    ),
                ));
            }
        }
    }
    for &o in graph.outputs() {
        if types[o.index()].is_none() {
            return Err(BackendError::value(&graph.value(o).name, "graph output has no static type"));
        }
    }

    // Views alias the storage of their source.
    let mut root: Vec<ValueId> = graph.value_ids().collect();
    let mut is_output = vec![false; count];
    for &o in graph.outputs() {
        is_output[o.index()] = true;
    }
    let mut prefix_slices = BTreeSet::new();
    for &id in &order {
        let node = graph.node(id);
        let prefix = is_prefix_slice(&graph, &types, node);
        if is_view(&node.op) || prefix {
            if prefix {
                prefix_slices.insert(id);
            } else {
                check_view(&graph, id)?;
            }
            if let (Some(src), Some(dst)) = (node.input(0), node.output(0)) {
                root[dst.index()] = root[src.index()];
            }
        }
    }

    let steps = form_steps(&graph, &order, &types, &is_output, &prefix_slices)?;
    let steps = fuse_norm_prologues(&graph, &types, steps, &root, &is_output);
    let mut plan = Plan {
        graph,
        types,
        steps,
        loc: vec![None; count],
        consts: Vec::new(),
        arena_bytes: 0,
        scratch: Vec::new(),
        packed_b: BTreeMap::new(),
        profile: false,
    };
    plan_memory(&mut plan, &root, matmul)?;
    Ok(plan)
}

/// Rejects view nodes that do more than alias (training-mode Dropout, or
/// a Dropout whose mask is read).
fn check_view(graph: &Graph, id: NodeId) -> Result<()> {
    let node = graph.node(id);
    if let Op::Dropout { .. } = node.op {
        let training = node.input(2).and_then(|v| graph.value(v).initializer.as_ref()).map(|t| t.to_i64s());
        match (node.input(2), training) {
            (None, _) => {}
            (Some(_), Some(t)) if t.iter().all(|&x| x == 0) => {}
            _ => {
                return Err(BackendError::unsupported(
                    &node.name,
                    "Dropout",
                    "training mode (or a training_mode not known at compile time)",
                ))
            }
        }
        if let Some(mask) = node.output(1) {
            if !graph.value(mask).uses().is_empty() || graph.outputs().contains(&mask) {
                return Err(BackendError::unsupported(&node.name, "Dropout", "the mask output is used"));
            }
        }
    }
    Ok(())
}

/// Groups elementwise nodes and lists the kernels in execution order.
fn form_steps(
    graph: &Graph,
    order: &[NodeId],
    types: &[Option<Shaped>],
    is_output: &[bool],
    prefix_slices: &BTreeSet<NodeId>,
) -> Result<Vec<Step>> {
    let position: BTreeMap<NodeId, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let mut group_of: BTreeMap<NodeId, NodeId> = BTreeMap::new();
    // Roots are chosen consumers-first, so each group grows backwards from
    // the node that materializes its result.
    for &root in order.iter().rev() {
        let node = graph.node(root);
        if !is_elementwise(&node.op) || group_of.contains_key(&root) {
            continue;
        }
        let Some(root_out) = node.output(0) else { continue };
        let root_shape = types[root_out.index()].as_ref().map(|t| t.shape.clone());
        group_of.insert(root, root);
        let mut members: BTreeSet<NodeId> = BTreeSet::from([root]);
        // Joining one producer can make another eligible (a diamond), so
        // repeat until nothing joins.
        loop {
            let mut joined = false;
            for m in members.clone() {
                for v in graph.node(m).inputs.iter().flatten() {
                    let Some((p, _)) = graph.value(*v).producer() else { continue };
                    if members.contains(&p) || group_of.contains_key(&p) {
                        continue;
                    }
                    let pnode = graph.node(p);
                    let single_output = pnode.outputs.iter().flatten().count() == 1 && pnode.output(0) == Some(*v);
                    let eligible = is_elementwise(&pnode.op)
                        && single_output
                        && !is_output[v.index()]
                        && types[v.index()].as_ref().map(|t| t.shape.clone()) == root_shape
                        && graph.value(*v).uses().iter().all(|(reader, _)| members.contains(reader));
                    if eligible {
                        members.insert(p);
                        group_of.insert(p, root);
                        joined = true;
                    }
                }
            }
            if !joined {
                break;
            }
        }
    }
    let mut steps = Vec::new();
    for &id in order {
        let node = graph.node(id);
        if is_view(&node.op) || prefix_slices.contains(&id) {
            continue;
        }
        if is_elementwise(&node.op) {
            if group_of.get(&id) != Some(&id) {
                continue;
            }
            let mut nodes: Vec<NodeId> = group_of.iter().filter(|(_, &r)| r == id).map(|(&n, _)| n).collect();
            nodes.sort_by_key(|n| position[n]);
            let out = node.output(0).expect("a group root has an output (checked when forming groups)");
            steps.push(Step::Fused { nodes, out });
        } else if has_kernel(&node.op) {
            steps.push(Step::Node(id));
        } else {
            return Err(BackendError::unsupported(&node.name, node.op.name(), "the op has no CPU kernel yet"));
        }
    }
    Ok(steps)
}

/// The inputs an elementwise node computes on: all of them, except for
/// Expand, whose second input is the target shape (a compile-time constant).
pub(crate) fn data_inputs(node: &kiln_ir::graph::Node) -> &[Option<ValueId>] {
    match node.op {
        Op::Expand => &node.inputs[..node.inputs.len().min(1)],
        _ => &node.inputs,
    }
}

/// The values a step reads and writes.
pub(crate) fn step_io(graph: &Graph, step: &Step) -> (Vec<ValueId>, Vec<ValueId>) {
    match step {
        Step::Fused { nodes, out } => {
            let produced: BTreeSet<ValueId> = nodes.iter().filter_map(|&n| graph.node(n).output(0)).collect();
            let mut reads: Vec<ValueId> = Vec::new();
            for &n in nodes {
                for v in data_inputs(graph.node(n)).iter().flatten() {
                    if !produced.contains(v) && !reads.contains(v) {
                        reads.push(*v);
                    }
                }
            }
            (reads, vec![*out])
        }
        Step::Node(id) => {
            let node = graph.node(*id);
            (node.inputs.iter().flatten().copied().collect(), node.outputs.iter().flatten().copied().collect())
        }
        Step::NormPrologue { nodes, norm, write_x } => {
            let x = norm_prologue_x(graph, *norm);
            let (mut reads, _) = step_io(graph, &Step::Fused { nodes: nodes.clone(), out: x });
            let node = graph.node(*norm);
            for v in node.inputs.iter().skip(1).flatten() {
                if !reads.contains(v) {
                    reads.push(*v);
                }
            }
            let mut writes: Vec<ValueId> = node.outputs.iter().flatten().copied().collect();
            if *write_x {
                writes.push(x);
            }
            (reads, writes)
        }
        Step::Copy { from, .. } => (vec![*from], Vec::new()),
    }
}

/// The value a [`Step::NormPrologue`] computes in its prologue: the norm's
/// input X, which is the group root's result.
pub(crate) fn norm_prologue_x(graph: &Graph, norm: NodeId) -> ValueId {
    graph.node(norm).input(0).expect("a norm with a prologue has its input X (checked when fusing)")
}

/// Longest normalized row (elements) a norm kernel with a prologue keeps in
/// its stack row buffer: 64 KiB of f32, well inside a worker thread's stack.
pub(crate) const NORM_ROW_MAX: usize = 16384;

/// Moves fused elementwise groups into the LayerNormalization or
/// RMSNormalization kernel that reads their result (see
/// [`Step::NormPrologue`]). A group joins when:
/// - the norm's input X is the group's result itself (not a view of it),
///   in f32 or f64 (narrower floats would round X between the two), and the
///   norm runs over the last axis only, in rows of at most [`NORM_ROW_MAX`];
/// - every buffered operand of the group covers whole rows (its last axis
///   is not broadcast), so a row of X is computed from rows of its operands;
/// - the group cannot fail (no integer division);
/// - no step between the group and the norm reads X, since X is now
///   computed at the norm's position; later readers and a graph output
///   make the kernel write X as well.
fn fuse_norm_prologues(
    graph: &Graph,
    types: &[Option<Shaped>],
    steps: Vec<Step>,
    root: &[ValueId],
    is_output: &[bool],
) -> Vec<Step> {
    let reads_x = |step: &Step, x: ValueId| step_io(graph, step).0.iter().any(|v| root[v.index()] == x);
    // Norm step → (group step, group nodes).
    let mut joined: BTreeMap<usize, (usize, Vec<NodeId>)> = BTreeMap::new();
    for (j, step) in steps.iter().enumerate() {
        let Step::Node(norm) = step else { continue };
        let node = graph.node(*norm);
        let axis = match node.op {
            Op::LayerNormalization { axis, .. } | Op::RMSNormalization { axis, .. } => axis,
            _ => continue,
        };
        let Some(x) = node.input(0) else { continue };
        let Some(ty) = types[x.index()].as_ref() else { continue };
        let rank = ty.shape.len() as i64;
        let cols = ty.shape.last().copied().unwrap_or(0);
        let last_axis = axis == rank - 1 || axis == -1;
        if !matches!(ty.dtype, DType::F32 | DType::F64) || rank == 0 || !last_axis || cols == 0 || cols > NORM_ROW_MAX {
            continue;
        }
        if node.inputs.iter().skip(1).flatten().any(|v| root[v.index()] == x) {
            continue;
        }
        let Some(i) = steps[..j].iter().position(|s| matches!(s, Step::Fused { out, .. } if *out == x)) else {
            continue;
        };
        let Step::Fused { nodes, .. } = &steps[i] else { continue };
        let divides = nodes.iter().any(|&n| {
            let n = graph.node(n);
            matches!(n.op, Op::Mod { .. } | Op::Binary(kiln_ir::op::BinaryOp::Div))
                && n.input(0).is_some_and(|v| types[v.index()].as_ref().is_none_or(|t| !t.dtype.is_float()))
        });
        let (leaves, _) = step_io(graph, &steps[i]);
        let whole_rows = leaves.iter().all(|v| {
            let Some(t) = types[v.index()].as_ref() else { return false };
            let one_constant = t.len() == 1 && graph.value(*v).initializer.is_some();
            one_constant || (t.shape.len() <= ty.shape.len() && t.shape.last() == Some(&cols))
        });
        if divides || !whole_rows || steps[i + 1..j].iter().any(|s| reads_x(s, x)) {
            continue;
        }
        joined.insert(j, (i, nodes.clone()));
    }
    let groups: BTreeSet<usize> = joined.values().map(|(i, _)| *i).collect();
    let mut out = Vec::with_capacity(steps.len() - groups.len());
    for (j, step) in steps.iter().enumerate() {
        if groups.contains(&j) {
            continue;
        }
        let (Some((_, nodes)), Step::Node(norm)) = (joined.get(&j), step) else {
            out.push(step.clone());
            continue;
        };
        let x = norm_prologue_x(graph, *norm);
        let output_view = graph.outputs().iter().any(|o| root[o.index()] == x) || is_output[x.index()];
        let write_x = output_view || steps[j + 1..].iter().any(|s| reads_x(s, x));
        out.push(Step::NormPrologue { nodes: nodes.clone(), norm: *norm, write_x });
    }
    out
}

/// Assigns storage to every value: inputs, constants, outputs, and arena
/// ranges reused by liveness.
fn plan_memory(plan: &mut Plan, root: &[ValueId], matmul: MatMulKernel) -> Result<()> {
    let graph = &plan.graph;
    let count = root.len();
    let mut loc: Vec<Option<Loc>> = vec![None; count];
    for (i, &v) in graph.inputs().iter().enumerate() {
        loc[v.index()] = Some(Loc { slot: Slot::Input(i), offset: 0 });
    }
    // Constants that some step reads, or that a graph output shows.
    let mut consts = Vec::new();
    let mut const_needed = vec![false; count];
    for step in &plan.steps {
        for v in step_io(graph, step).0 {
            const_needed[root[v.index()].index()] = true;
        }
    }
    for &o in graph.outputs() {
        const_needed[root[o.index()].index()] = true;
    }
    for (v, t) in graph.initializers() {
        if loc[v.index()].is_none() && const_needed[v.index()] {
            loc[v.index()] = Some(Loc { slot: Slot::Const(consts.len()), offset: 0 });
            consts.push(t.clone());
        }
    }
    // Graph outputs: the producing kernel writes straight into the output
    // buffer when it can; otherwise a copy step fills it.
    let mut copies = Vec::new();
    for (i, &o) in graph.outputs().iter().enumerate() {
        let r = root[o.index()];
        // A prefix Slice's source is larger than the output buffer it
        // would be written into: it stays in the arena, and a copy step
        // fills the output.
        let bytes = |v: ValueId| plan.types[v.index()].as_ref().map_or(0, Shaped::bytes);
        if loc[r.index()].is_none() && bytes(r) == bytes(o) {
            loc[r.index()] = Some(Loc { slot: Slot::Output(i), offset: 0 });
        } else {
            copies.push(Step::Copy { from: o, output: i });
        }
    }
    plan.steps.extend(copies);

    // Liveness of arena buffers, by root.
    let mut last_use: Vec<Option<usize>> = vec![None; count];
    for (s, step) in plan.steps.iter().enumerate() {
        for v in step_io(graph, step).0 {
            last_use[root[v.index()].index()] = Some(s);
        }
    }
    let mut arena = Arena::default();
    let mut placed: Vec<Option<(usize, usize)>> = vec![None; count];
    let mut scratch = vec![None; plan.steps.len()];
    for (s, step) in plan.steps.iter().enumerate() {
        let (_, writes) = step_io(graph, step);
        let scratch_need = scratch_bytes(graph, &plan.types, step, matmul);
        if scratch_need > 0 {
            scratch[s] = Some(arena.alloc(scratch_need));
        }
        for v in &writes {
            let r = root[v.index()];
            if loc[r.index()].is_some() || placed[r.index()].is_some() {
                continue;
            }
            let bytes = plan.types[r.index()].as_ref().map_or(0, Shaped::bytes);
            let offset = arena.alloc(bytes);
            placed[r.index()] = Some((offset, bytes));
            loc[r.index()] = Some(Loc { slot: Slot::Arena, offset });
        }
        for r in 0..count {
            if let Some((offset, bytes)) = placed[r] {
                let dead = match last_use[r] {
                    Some(last) => last == s,
                    // Written but never read: free right after its step.
                    None => writes.iter().any(|w| root[w.index()].index() == r),
                };
                if dead {
                    arena.free(offset, bytes);
                }
            }
        }
        if let Some(offset) = scratch[s] {
            arena.free(offset, scratch_need);
        }
    }
    plan.scratch = scratch;
    for v in 0..count {
        if loc[v].is_none() && root[v] != ValueId(v as u32) {
            loc[v] = loc[root[v].index()];
        }
    }
    plan.loc = loc;
    plan.consts = consts;
    plan.arena_bytes = arena.size;
    Ok(())
}

/// A first-fit-by-size allocator over byte ranges of one arena.
#[derive(Default)]
struct Arena {
    size: usize,
    /// Free ranges (offset → bytes), coalesced.
    free: BTreeMap<usize, usize>,
}

impl Arena {
    fn alloc(&mut self, bytes: usize) -> usize {
        let need = bytes.div_ceil(ALIGN).max(1) * ALIGN;
        let best = self.free.iter().filter(|(_, &len)| len >= need).min_by_key(|(&off, &len)| (len, off));
        if let Some((&off, &len)) = best {
            self.free.remove(&off);
            if len > need {
                self.free.insert(off + need, len - need);
            }
            return off;
        }
        // Grow, absorbing a free range that ends the arena.
        if let Some((&off, &len)) = self.free.iter().next_back() {
            if off + len == self.size {
                self.free.remove(&off);
                self.size = off + need;
                return off;
            }
        }
        let off = self.size;
        self.size += need;
        off
    }

    fn free(&mut self, offset: usize, bytes: usize) {
        let mut off = offset;
        let mut len = bytes.div_ceil(ALIGN).max(1) * ALIGN;
        if let Some((&prev, &plen)) = self.free.range(..off).next_back() {
            if prev + plen == off {
                self.free.remove(&prev);
                off = prev;
                len += plen;
            }
        }
        if let Some(&next_len) = self.free.get(&(off + len)) {
            self.free.remove(&(off + len));
            len += next_len;
        }
        self.free.insert(off, len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arena_reuses_and_coalesces_freed_ranges() {
        let mut a = Arena::default();
        let x = a.alloc(100);
        let y = a.alloc(64);
        assert_eq!((x, y), (0, 128));
        a.free(x, 100);
        let z = a.alloc(60);
        assert_eq!(z, 0, "a freed range is reused");
        a.free(z, 60);
        a.free(y, 64);
        assert_eq!(a.alloc(192), 0, "adjacent free ranges coalesce");
        assert_eq!(a.size, 192);
    }
}
