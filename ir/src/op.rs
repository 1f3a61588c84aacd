//! Operators and their typed attributes.
//!
//! [`Op`] is one enum over every operator kiln knows. Attributes are typed
//! fields, never strings to parse. Each op maps to and from the generic
//! [`Attr`] view in one place ([`Op::attrs`] and [`Op::from_attrs`]), which is
//! all the text format and ONNX need, so adding an op means: a variant here,
//! its two attribute arms, its shape rule in [`crate::infer`] and its kernel
//! in [`crate::interp`].
//!
//! The semantics of every ONNX-domain op are those of the newest ONNX opset
//! that kiln supports; the importer normalizes older forms (for example
//! Reduce axes given as an attribute) into these.
//!
//! # kiln domain ops
//!
//! Fused ops that no ONNX op expresses live in the `kiln` domain
//! ([`KILN_DOMAIN`], version 1); the exporter writes them with an opset
//! import `kiln = 1` and the importer reads them back.
//!
//! ## `kiln::CrossEntropy`
//!
//! Softmax cross-entropy in log-sum-exp form, which never forms the
//! probabilities, so it neither overflows on large logits nor takes the log
//! of an underflowed zero.
//!
//! - Inputs: `logits` `[N, C]` or `[N, C, d1, ...]` (float, class axis 1),
//!   `labels` `[N]` or `[N, d1, ...]` (i32 or i64), optional `weight` `[C]`
//!   (the logits' dtype).
//! - Outputs: `loss` (`[N, d1, ...]` for reduction `none`, else a scalar) and
//!   optionally `log_prob` (the logits' shape).
//! - Attributes: `reduction` (`none`, `sum`, `mean`; default `mean`),
//!   `ignore_index` (int, optional), `label_smoothing` (float ε, default 0),
//!   `z_loss` (float ζ, default 0).
//! - Formula, per sample `i` (a row of the class axis) with label `y`:
//!   `lse_i = log Σ_c exp(x_ic)`, computed as `m + log Σ_c exp(x_ic - m)`
//!   with `m = max_c x_ic`; `log_prob_ic = x_ic - lse_i`;
//!   `l_i = w_y·[(1-ε)(lse_i - x_iy) + ζ·lse_i²] + (ε/C)·Σ_c w_c (lse_i - x_ic)`,
//!   where `w` is all ones without a weight input. A sample whose label is
//!   `ignore_index` has `l_i = 0` and counts with weight 0. `sum` adds the
//!   `l_i`; `mean` divides that sum by `Σ_i w_{y_i}` over the counted samples.
//!   The smoothing term follows PyTorch's `cross_entropy(label_smoothing=ε)`;
//!   the z-loss term is PaLM's `ζ·log²Z`, so with `ε = ζ = 0` the op equals
//!   ONNX `SoftmaxCrossEntropyLoss`.
//!
//! ## `kiln::LinearCrossEntropy`
//!
//! An LM head fused with `CrossEntropy`: the logits `x = h·Wᵀ + b` (or
//! `h·W + b`) are never formed whole. Implementations work in vocabulary
//! chunks with an online log-sum-exp, so memory is `N × chunk_size`, not
//! `N × V`.
//!
//! - Inputs: `hidden` `[N, d]`, `weight` `[V, d]` (with `transpose_weight`,
//!   the default, as `nn.Linear` and tied embeddings store it) or `[d, V]`,
//!   `labels` `[N]` (i32 or i64), optional `bias` `[V]`, optional class
//!   `weight` `[V]` (the float inputs share one dtype).
//! - Outputs: `loss` (`[N]` for reduction `none`, else a scalar).
//! - Attributes: those of `CrossEntropy` (`reduction`, `ignore_index`,
//!   `label_smoothing`, `z_loss`), plus `transpose_weight` (int 0/1, default
//!   1) and `chunk_size` (int ≥ 1, default 4096; it changes memory and
//!   rounding order, never the value beyond rounding).
//! - Formula: `CrossEntropy(x, labels, class weight)` with `x` as above.

use crate::attr::{Attr, AttrBag, AttrError};
use crate::dtype::DType;
use crate::tensor::Tensor;

/// The ONNX default domain.
pub const ONNX_DOMAIN: &str = "";
/// The domain of kiln's own fused ops.
pub const KILN_DOMAIN: &str = "kiln";

/// Elementwise ops with one input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(missing_docs)]
pub enum UnaryOp {
    Abs,
    Neg,
    Sqrt,
    Reciprocal,
    Exp,
    Log,
    Tanh,
    Erf,
    Sigmoid,
    Softplus,
    Softsign,
    Relu,
    Not,
    Floor,
    Ceil,
    Round,
    Sign,
    Sin,
    Cos,
    IsNaN,
    HardSwish,
}

impl UnaryOp {
    /// Every unary op.
    pub const ALL: [UnaryOp; 21] = [
        UnaryOp::Abs,
        UnaryOp::Neg,
        UnaryOp::Sqrt,
        UnaryOp::Reciprocal,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Tanh,
        UnaryOp::Erf,
        UnaryOp::Sigmoid,
        UnaryOp::Softplus,
        UnaryOp::Softsign,
        UnaryOp::Relu,
        UnaryOp::Not,
        UnaryOp::Floor,
        UnaryOp::Ceil,
        UnaryOp::Round,
        UnaryOp::Sign,
        UnaryOp::Sin,
        UnaryOp::Cos,
        UnaryOp::IsNaN,
        UnaryOp::HardSwish,
    ];

    /// The ONNX op type.
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Abs => "Abs",
            UnaryOp::Neg => "Neg",
            UnaryOp::Sqrt => "Sqrt",
            UnaryOp::Reciprocal => "Reciprocal",
            UnaryOp::Exp => "Exp",
            UnaryOp::Log => "Log",
            UnaryOp::Tanh => "Tanh",
            UnaryOp::Erf => "Erf",
            UnaryOp::Sigmoid => "Sigmoid",
            UnaryOp::Softplus => "Softplus",
            UnaryOp::Softsign => "Softsign",
            UnaryOp::Relu => "Relu",
            UnaryOp::Not => "Not",
            UnaryOp::Floor => "Floor",
            UnaryOp::Ceil => "Ceil",
            UnaryOp::Round => "Round",
            UnaryOp::Sign => "Sign",
            UnaryOp::Sin => "Sin",
            UnaryOp::Cos => "Cos",
            UnaryOp::IsNaN => "IsNaN",
            UnaryOp::HardSwish => "HardSwish",
        }
    }
}

/// Elementwise ops with two broadcast inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(missing_docs)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Equal,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
    And,
    Or,
    Xor,
}

impl BinaryOp {
    /// Every binary op.
    pub const ALL: [BinaryOp; 13] = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Pow,
        BinaryOp::Equal,
        BinaryOp::Less,
        BinaryOp::LessOrEqual,
        BinaryOp::Greater,
        BinaryOp::GreaterOrEqual,
        BinaryOp::And,
        BinaryOp::Or,
        BinaryOp::Xor,
    ];

    /// The ONNX op type.
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "Add",
            BinaryOp::Sub => "Sub",
            BinaryOp::Mul => "Mul",
            BinaryOp::Div => "Div",
            BinaryOp::Pow => "Pow",
            BinaryOp::Equal => "Equal",
            BinaryOp::Less => "Less",
            BinaryOp::LessOrEqual => "LessOrEqual",
            BinaryOp::Greater => "Greater",
            BinaryOp::GreaterOrEqual => "GreaterOrEqual",
            BinaryOp::And => "And",
            BinaryOp::Or => "Or",
            BinaryOp::Xor => "Xor",
        }
    }

    /// True for the ops whose result is boolean.
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinaryOp::Equal | BinaryOp::Less | BinaryOp::LessOrEqual | BinaryOp::Greater | BinaryOp::GreaterOrEqual
        )
    }

    /// True for the boolean logic ops.
    pub fn is_logical(self) -> bool {
        matches!(self, BinaryOp::And | BinaryOp::Or | BinaryOp::Xor)
    }
}

/// Elementwise ops over any number of broadcast inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(missing_docs)]
pub enum VariadicOp {
    Max,
    Min,
    Sum,
    Mean,
}

impl VariadicOp {
    /// Every variadic op.
    pub const ALL: [VariadicOp; 4] = [VariadicOp::Max, VariadicOp::Min, VariadicOp::Sum, VariadicOp::Mean];

    /// The ONNX op type.
    pub fn name(self) -> &'static str {
        match self {
            VariadicOp::Max => "Max",
            VariadicOp::Min => "Min",
            VariadicOp::Sum => "Sum",
            VariadicOp::Mean => "Mean",
        }
    }
}

/// The Reduce* family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(missing_docs)]
pub enum ReduceKind {
    Sum,
    Mean,
    Max,
    Min,
    Prod,
    L1,
    L2,
    LogSum,
    LogSumExp,
    SumSquare,
}

impl ReduceKind {
    /// Every reduction.
    pub const ALL: [ReduceKind; 10] = [
        ReduceKind::Sum,
        ReduceKind::Mean,
        ReduceKind::Max,
        ReduceKind::Min,
        ReduceKind::Prod,
        ReduceKind::L1,
        ReduceKind::L2,
        ReduceKind::LogSum,
        ReduceKind::LogSumExp,
        ReduceKind::SumSquare,
    ];

    /// The ONNX op type.
    pub fn name(self) -> &'static str {
        match self {
            ReduceKind::Sum => "ReduceSum",
            ReduceKind::Mean => "ReduceMean",
            ReduceKind::Max => "ReduceMax",
            ReduceKind::Min => "ReduceMin",
            ReduceKind::Prod => "ReduceProd",
            ReduceKind::L1 => "ReduceL1",
            ReduceKind::L2 => "ReduceL2",
            ReduceKind::LogSum => "ReduceLogSum",
            ReduceKind::LogSumExp => "ReduceLogSumExp",
            ReduceKind::SumSquare => "ReduceSumSquare",
        }
    }
}

/// Default vocabulary chunk of [`Op::LinearCrossEntropy`]: 4096 entries
/// keep a chunk of logits for 4096 rows at 64 MiB in f32.
pub const DEFAULT_CHUNK_SIZE: i64 = 4096;

/// How a loss op combines per-element losses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LossReduction {
    /// No reduction: one loss per sample.
    None,
    /// Sum of the losses.
    Sum,
    /// Weighted mean over the samples that are not ignored.
    Mean,
}

impl LossReduction {
    fn name(self) -> &'static str {
        match self {
            LossReduction::None => "none",
            LossReduction::Sum => "sum",
            LossReduction::Mean => "mean",
        }
    }

    fn parse(s: &str) -> Result<LossReduction, AttrError> {
        match s {
            "none" => Ok(LossReduction::None),
            "sum" => Ok(LossReduction::Sum),
            "mean" => Ok(LossReduction::Mean),
            _ => Err(AttrError::Invalid(format!("reduction must be none, sum or mean, found `{s}`"))),
        }
    }
}

/// `Gelu`'s approximation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GeluApproximation {
    /// The exact form, `x * Φ(x)` with erf.
    None,
    /// The tanh approximation.
    Tanh,
}

/// `Gemm` attributes: `alpha * op(A) @ op(B) + beta * C`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GemmAttrs {
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of C.
    pub beta: f32,
    /// Transpose A first.
    pub trans_a: bool,
    /// Transpose B first.
    pub trans_b: bool,
}

/// Attributes of ONNX-23 `Attention`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionAttrs {
    /// Apply a causal (lower-triangular) mask.
    pub is_causal: bool,
    /// Number of query heads when Q is given as 3-D `[batch, seq, heads*dim]`.
    pub q_num_heads: Option<i64>,
    /// Number of key/value heads when K and V are 3-D.
    pub kv_num_heads: Option<i64>,
    /// Which intermediate the optional fourth output holds (0: QK, 1: after
    /// mask, 2: after softcap, 3: after softmax).
    pub qk_matmul_output_mode: i64,
    /// Scale of QKᵀ; `1/sqrt(head_dim)` when absent.
    pub scale: Option<f32>,
    /// Softcap `c * tanh(x / c)` on the scores; 0 disables it.
    pub softcap: f32,
    /// Precision of the softmax, as an ONNX type code; the input type when absent.
    pub softmax_precision: Option<DType>,
}

/// Default `chunk_size` of [`Op::LinearAttention`] (ONNX's).
pub const DEFAULT_LINEAR_ATTENTION_CHUNK: i64 = 64;

/// The recurrence of ONNX-27 `LinearAttention`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LinearUpdateRule {
    /// `S_t = S_{t-1} + k_t ⊗ v_t`.
    Linear,
    /// `S_t = exp(g_t) ⊙ S_{t-1} + k_t ⊗ v_t`.
    Gated,
    /// `S_t = S_{t-1} + β_t k_t ⊗ (v_t − S_{t-1}ᵀ k_t)`.
    Delta,
    /// `S_t = exp(g_t) S_{t-1} + β_t k_t ⊗ (v_t − exp(g_t) S_{t-1}ᵀ k_t)`.
    GatedDelta,
}

impl LinearUpdateRule {
    /// The ONNX attribute value.
    pub fn name(self) -> &'static str {
        match self {
            LinearUpdateRule::Linear => "linear",
            LinearUpdateRule::Gated => "gated",
            LinearUpdateRule::Delta => "delta",
            LinearUpdateRule::GatedDelta => "gated_delta",
        }
    }

    fn parse(s: &str) -> Result<LinearUpdateRule, AttrError> {
        [LinearUpdateRule::Linear, LinearUpdateRule::Gated, LinearUpdateRule::Delta, LinearUpdateRule::GatedDelta]
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| {
                AttrError::Invalid(format!("update_rule must be linear, gated, delta or gated_delta, found `{s}`"))
            })
    }

    /// The rule reads the `decay` input.
    pub fn is_gated(self) -> bool {
        matches!(self, LinearUpdateRule::Gated | LinearUpdateRule::GatedDelta)
    }

    /// The rule reads the `beta` input.
    pub fn is_delta(self) -> bool {
        matches!(self, LinearUpdateRule::Delta | LinearUpdateRule::GatedDelta)
    }
}

/// Attributes of ONNX-27 `LinearAttention`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinearAttentionAttrs {
    /// Query heads packed in the last axis of `query`.
    pub q_num_heads: i64,
    /// Key/value heads packed in the last axis of `key` and `value`.
    pub kv_num_heads: i64,
    /// Output scale; `1/sqrt(d_k)` when absent (ONNX writes 0 for that).
    pub scale: Option<f32>,
    /// The recurrence.
    pub update_rule: LinearUpdateRule,
    /// Chunk size of chunk-parallel implementations; never changes the value.
    pub chunk_size: i64,
}

/// A tensor operator with its attributes.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    // ---- tensor algebra ----
    /// Numpy-style matrix product with batch broadcasting.
    MatMul,
    /// General matrix multiply on 2-D inputs.
    Gemm(GemmAttrs),
    /// Integer matrix product with zero points, i32 result.
    MatMulInteger,
    /// Quantized matrix product with scales and zero points.
    QLinearMatMul,

    // ---- elementwise ----
    /// One-input elementwise op.
    Unary(UnaryOp),
    /// Two-input broadcast elementwise op.
    Binary(BinaryOp),
    /// N-input broadcast elementwise op.
    Variadic(VariadicOp),
    /// `Mod`; `fmod` selects C semantics (sign of the dividend).
    Mod {
        /// C `fmod` semantics instead of Python's.
        fmod: bool,
    },
    /// Clamp between optional min and max inputs.
    Clip,
    /// Select from two inputs by a boolean condition.
    Where,
    /// Gaussian error linear unit.
    Gelu {
        /// Exact or tanh form.
        approximate: GeluApproximation,
    },
    /// `x if x >= 0 else alpha * x`.
    LeakyRelu {
        /// Negative slope.
        alpha: f32,
    },
    /// `x if x >= 0 else alpha * (exp(x) - 1)`.
    Elu {
        /// Scale of the negative part.
        alpha: f32,
    },
    /// `max(0, min(1, alpha * x + beta))`.
    HardSigmoid {
        /// Slope.
        alpha: f32,
        /// Offset.
        beta: f32,
    },
    /// Infinity test.
    IsInf {
        /// Report -inf.
        detect_negative: bool,
        /// Report +inf.
        detect_positive: bool,
    },

    // ---- normalization, softmax, attention ----
    /// Softmax along one axis.
    Softmax {
        /// The axis.
        axis: i64,
    },
    /// Log of softmax along one axis.
    LogSoftmax {
        /// The axis.
        axis: i64,
    },
    /// Layer normalization over the trailing axes from `axis`.
    LayerNormalization {
        /// First normalized axis.
        axis: i64,
        /// Added to the variance.
        epsilon: f32,
        /// Type the statistics are computed in.
        stash_type: DType,
    },
    /// Root-mean-square normalization over the trailing axes from `axis`.
    RMSNormalization {
        /// First normalized axis.
        axis: i64,
        /// Added to the mean square.
        epsilon: f32,
        /// Type the statistics are computed in.
        stash_type: DType,
    },
    /// Rotary position embedding (ONNX 23).
    RotaryEmbedding {
        /// Pairs are adjacent (`x0,x1`) instead of split halves.
        interleaved: bool,
        /// Heads, when the input is 3-D.
        num_heads: Option<i64>,
        /// Rotate only the first this many features; all when absent.
        rotary_embedding_dim: Option<i64>,
    },
    /// Scaled dot-product attention (ONNX 23).
    Attention(AttentionAttrs),
    /// Recurrent linear attention (ONNX 27): `query`, `key`, `value`
    /// packed `[B, T, H·D]`, optional `past_state [B, Hkv, Dk, Dv]`, `decay`
    /// and `beta`; outputs the packed output and `present_state`.
    LinearAttention(LinearAttentionAttrs),

    // ---- reductions ----
    /// A Reduce* op. Axes come from the attribute when set, else from the
    /// optional second input; none means all axes.
    Reduce {
        /// Which reduction.
        kind: ReduceKind,
        /// Axes, when known at import time.
        axes: Option<Vec<i64>>,
        /// Keep reduced axes with size 1.
        keepdims: bool,
        /// With no axes, do nothing instead of reducing everything.
        noop_with_empty_axes: bool,
    },
    /// Index of the maximum (`max: true`) or minimum along an axis.
    ArgReduce {
        /// ArgMax when true, ArgMin when false.
        max: bool,
        /// The axis.
        axis: i64,
        /// Keep the reduced axis with size 1.
        keepdims: bool,
        /// On ties, the last index rather than the first.
        select_last_index: bool,
    },
    /// The k largest or smallest values along an axis, and their indices.
    TopK {
        /// The axis.
        axis: i64,
        /// Largest (true) or smallest.
        largest: bool,
        /// Return in sorted order.
        sorted: bool,
    },
    /// Cumulative sum along an axis given as an input.
    CumSum {
        /// Exclude the current element.
        exclusive: bool,
        /// Sum from the end.
        reverse: bool,
    },

    // ---- shapes and data movement ----
    /// Permute axes; reverse them when `perm` is absent.
    Transpose {
        /// The permutation.
        perm: Option<Vec<i64>>,
    },
    /// Reshape to the shape given as an input.
    Reshape {
        /// A 0 in the shape means zero, not "copy this dim".
        allowzero: bool,
    },
    /// Collapse to 2-D at `axis`.
    Flatten {
        /// Split point.
        axis: i64,
    },
    /// Remove size-1 axes (axes as an optional input).
    Squeeze,
    /// Insert size-1 axes (axes as an input).
    Unsqueeze,
    /// Join along an axis.
    Concat {
        /// The axis.
        axis: i64,
    },
    /// Split along an axis, by sizes given as an optional input or into
    /// `num_outputs` near-equal parts.
    Split {
        /// The axis.
        axis: i64,
        /// Number of outputs when sizes are not given.
        num_outputs: Option<i64>,
    },
    /// Slice by starts, ends, axes and steps inputs.
    Slice,
    /// Gather slices along an axis by indices.
    Gather {
        /// The axis.
        axis: i64,
    },
    /// Gather elements along an axis by an index tensor of the same rank.
    GatherElements {
        /// The axis.
        axis: i64,
    },
    /// Gather slices by index tuples.
    GatherND {
        /// Leading batch dimensions.
        batch_dims: i64,
    },
    /// Write updates at index tuples.
    ScatterND {
        /// How updates combine with existing values: none, add, mul, max, min.
        reduction: String,
    },
    /// Broadcast to a shape given as an input.
    Expand,
    /// Repeat by counts given as an input.
    Tile,
    /// Pad with a constant, or by reflection or edge copy.
    Pad {
        /// constant, reflect, edge or wrap.
        mode: String,
    },
    /// Convert element type.
    Cast {
        /// Target type.
        to: DType,
        /// Saturate float8 conversions (no effect on kiln's types).
        saturate: bool,
    },
    /// Convert to the element type of a second input.
    CastLike {
        /// Saturate float8 conversions (no effect on kiln's types).
        saturate: bool,
    },
    /// The shape as an i64 vector, optionally a slice of it.
    Shape {
        /// First axis.
        start: i64,
        /// One past the last axis; the rank when absent.
        end: Option<i64>,
    },
    /// The element count as an i64 scalar.
    Size,
    /// A tensor of the shape given as an input, filled with a value.
    ConstantOfShape {
        /// One-element fill value; f32 zero when absent.
        value: Option<Tensor>,
    },
    /// `start, start+delta, ...` below `limit`.
    Range,
    /// Upper or lower triangle of the last two axes.
    Trilu {
        /// Keep the upper triangle.
        upper: bool,
    },
    /// A constant tensor.
    Constant {
        /// The value.
        value: Tensor,
    },
    /// Pass-through.
    Identity,
    /// Dropout; at inference an identity with an all-true mask.
    Dropout {
        /// Random seed, when set.
        seed: Option<i64>,
    },
    /// One-hot encoding along an axis.
    OneHot {
        /// The axis of the new dimension.
        axis: i64,
    },
    /// Indices of non-zero elements.
    NonZero,

    // ---- losses ----
    /// Softmax followed by negative log-likelihood.
    SoftmaxCrossEntropyLoss {
        /// Combination of the per-sample losses.
        reduction: LossReduction,
        /// Label value to skip.
        ignore_index: Option<i64>,
    },
    /// Negative log-likelihood of log-probabilities.
    NegativeLogLikelihoodLoss {
        /// Combination of the per-sample losses.
        reduction: LossReduction,
        /// Label value to skip.
        ignore_index: Option<i64>,
    },
    /// kiln's fused, numerically stable softmax cross-entropy; see the
    /// module docs ("kiln domain ops") for its spec.
    CrossEntropy {
        /// Combination of the per-sample losses.
        reduction: LossReduction,
        /// Label value to skip.
        ignore_index: Option<i64>,
        /// Weight ε of the uniform target mixed into the one-hot one.
        label_smoothing: f32,
        /// Weight of the PaLM z-loss term `log²Z` per sample.
        z_loss: f32,
    },
    /// kiln's LM head fused with [`Op::CrossEntropy`], computed in
    /// vocabulary chunks; see the module docs ("kiln domain ops").
    LinearCrossEntropy {
        /// Combination of the per-sample losses.
        reduction: LossReduction,
        /// Label value to skip.
        ignore_index: Option<i64>,
        /// Weight ε of the uniform target mixed into the one-hot one.
        label_smoothing: f32,
        /// Weight of the PaLM z-loss term `log²Z` per sample.
        z_loss: f32,
        /// The head weight is `[V, d]` (true) rather than `[d, V]`.
        transpose_weight: bool,
        /// Vocabulary entries per chunk.
        chunk_size: i64,
    },

    // ---- quantization ----
    /// `saturate(round(x / scale) + zero_point)`, per tensor, axis or block.
    QuantizeLinear {
        /// Axis of per-axis scales.
        axis: i64,
        /// Block size of blocked scales; 0 for none.
        block_size: i64,
        /// Saturate float8 conversions (no effect on kiln's types).
        saturate: bool,
        /// Result type when there is no zero point to take it from.
        output_dtype: Option<DType>,
    },
    /// `(x - zero_point) * scale`, per tensor, axis or block.
    DequantizeLinear {
        /// Axis of per-axis scales.
        axis: i64,
        /// Block size of blocked scales; 0 for none.
        block_size: i64,
        /// Result type; the scale's when absent.
        output_dtype: Option<DType>,
    },
    /// Quantize to u8 with a scale and zero point computed from the data.
    DynamicQuantizeLinear,
}

fn flag(v: bool) -> Attr {
    Attr::Int(v as i64)
}

impl Op {
    /// The op type, as ONNX (or kiln's domain) names it.
    pub fn name(&self) -> &'static str {
        match self {
            Op::MatMul => "MatMul",
            Op::Gemm(_) => "Gemm",
            Op::MatMulInteger => "MatMulInteger",
            Op::QLinearMatMul => "QLinearMatMul",
            Op::Unary(u) => u.name(),
            Op::Binary(b) => b.name(),
            Op::Variadic(v) => v.name(),
            Op::Mod { .. } => "Mod",
            Op::Clip => "Clip",
            Op::Where => "Where",
            Op::Gelu { .. } => "Gelu",
            Op::LeakyRelu { .. } => "LeakyRelu",
            Op::Elu { .. } => "Elu",
            Op::HardSigmoid { .. } => "HardSigmoid",
            Op::IsInf { .. } => "IsInf",
            Op::Softmax { .. } => "Softmax",
            Op::LogSoftmax { .. } => "LogSoftmax",
            Op::LayerNormalization { .. } => "LayerNormalization",
            Op::RMSNormalization { .. } => "RMSNormalization",
            Op::RotaryEmbedding { .. } => "RotaryEmbedding",
            Op::Attention(_) => "Attention",
            Op::LinearAttention(_) => "LinearAttention",
            Op::Reduce { kind, .. } => kind.name(),
            Op::ArgReduce { max: true, .. } => "ArgMax",
            Op::ArgReduce { max: false, .. } => "ArgMin",
            Op::TopK { .. } => "TopK",
            Op::CumSum { .. } => "CumSum",
            Op::Transpose { .. } => "Transpose",
            Op::Reshape { .. } => "Reshape",
            Op::Flatten { .. } => "Flatten",
            Op::Squeeze => "Squeeze",
            Op::Unsqueeze => "Unsqueeze",
            Op::Concat { .. } => "Concat",
            Op::Split { .. } => "Split",
            Op::Slice => "Slice",
            Op::Gather { .. } => "Gather",
            Op::GatherElements { .. } => "GatherElements",
            Op::GatherND { .. } => "GatherND",
            Op::ScatterND { .. } => "ScatterND",
            Op::Expand => "Expand",
            Op::Tile => "Tile",
            Op::Pad { .. } => "Pad",
            Op::Cast { .. } => "Cast",
            Op::CastLike { .. } => "CastLike",
            Op::Shape { .. } => "Shape",
            Op::Size => "Size",
            Op::ConstantOfShape { .. } => "ConstantOfShape",
            Op::Range => "Range",
            Op::Trilu { .. } => "Trilu",
            Op::Constant { .. } => "Constant",
            Op::Identity => "Identity",
            Op::Dropout { .. } => "Dropout",
            Op::OneHot { .. } => "OneHot",
            Op::NonZero => "NonZero",
            Op::SoftmaxCrossEntropyLoss { .. } => "SoftmaxCrossEntropyLoss",
            Op::NegativeLogLikelihoodLoss { .. } => "NegativeLogLikelihoodLoss",
            Op::CrossEntropy { .. } => "CrossEntropy",
            Op::LinearCrossEntropy { .. } => "LinearCrossEntropy",
            Op::QuantizeLinear { .. } => "QuantizeLinear",
            Op::DequantizeLinear { .. } => "DequantizeLinear",
            Op::DynamicQuantizeLinear => "DynamicQuantizeLinear",
        }
    }

    /// The domain: [`ONNX_DOMAIN`] or [`KILN_DOMAIN`].
    pub fn domain(&self) -> &'static str {
        match self {
            Op::CrossEntropy { .. } | Op::LinearCrossEntropy { .. } => KILN_DOMAIN,
            _ => ONNX_DOMAIN,
        }
    }

    /// The attributes that differ from their defaults, in a fixed order.
    /// Defaults are the newest ONNX opset's, so an absent attribute means
    /// the same to every reader.
    pub fn attrs(&self) -> Vec<(&'static str, Attr)> {
        let mut a: Vec<(&'static str, Attr)> = Vec::new();
        match self {
            Op::Gemm(g) => {
                if g.alpha != 1.0 {
                    a.push(("alpha", Attr::Float(g.alpha)));
                }
                if g.beta != 1.0 {
                    a.push(("beta", Attr::Float(g.beta)));
                }
                if g.trans_a {
                    a.push(("transA", flag(true)));
                }
                if g.trans_b {
                    a.push(("transB", flag(true)));
                }
            }
            Op::Mod { fmod } => {
                if *fmod {
                    a.push(("fmod", flag(true)));
                }
            }
            Op::Gelu { approximate } => {
                if *approximate == GeluApproximation::Tanh {
                    a.push(("approximate", Attr::String("tanh".into())));
                }
            }
            Op::LeakyRelu { alpha } => {
                if *alpha != 0.01 {
                    a.push(("alpha", Attr::Float(*alpha)));
                }
            }
            Op::Elu { alpha } => {
                if *alpha != 1.0 {
                    a.push(("alpha", Attr::Float(*alpha)));
                }
            }
            Op::HardSigmoid { alpha, beta } => {
                if *alpha != 0.2 {
                    a.push(("alpha", Attr::Float(*alpha)));
                }
                if *beta != 0.5 {
                    a.push(("beta", Attr::Float(*beta)));
                }
            }
            Op::IsInf { detect_negative, detect_positive } => {
                if !detect_negative {
                    a.push(("detect_negative", flag(false)));
                }
                if !detect_positive {
                    a.push(("detect_positive", flag(false)));
                }
            }
            Op::Softmax { axis } | Op::LogSoftmax { axis } => {
                if *axis != -1 {
                    a.push(("axis", Attr::Int(*axis)));
                }
            }
            Op::LayerNormalization { axis, epsilon, stash_type }
            | Op::RMSNormalization { axis, epsilon, stash_type } => {
                if *axis != -1 {
                    a.push(("axis", Attr::Int(*axis)));
                }
                if *epsilon != 1e-5 {
                    a.push(("epsilon", Attr::Float(*epsilon)));
                }
                if *stash_type != DType::F32 {
                    a.push(("stash_type", Attr::DType(*stash_type)));
                }
            }
            Op::RotaryEmbedding { interleaved, num_heads, rotary_embedding_dim } => {
                if *interleaved {
                    a.push(("interleaved", flag(true)));
                }
                if let Some(n) = num_heads {
                    a.push(("num_heads", Attr::Int(*n)));
                }
                if let Some(n) = rotary_embedding_dim {
                    a.push(("rotary_embedding_dim", Attr::Int(*n)));
                }
            }
            Op::Attention(at) => {
                if at.is_causal {
                    a.push(("is_causal", flag(true)));
                }
                if let Some(n) = at.kv_num_heads {
                    a.push(("kv_num_heads", Attr::Int(n)));
                }
                if let Some(n) = at.q_num_heads {
                    a.push(("q_num_heads", Attr::Int(n)));
                }
                if at.qk_matmul_output_mode != 0 {
                    a.push(("qk_matmul_output_mode", Attr::Int(at.qk_matmul_output_mode)));
                }
                if let Some(s) = at.scale {
                    a.push(("scale", Attr::Float(s)));
                }
                if at.softcap != 0.0 {
                    a.push(("softcap", Attr::Float(at.softcap)));
                }
                if let Some(p) = at.softmax_precision {
                    a.push(("softmax_precision", Attr::DType(p)));
                }
            }
            Op::LinearAttention(la) => {
                a.push(("q_num_heads", Attr::Int(la.q_num_heads)));
                a.push(("kv_num_heads", Attr::Int(la.kv_num_heads)));
                if let Some(s) = la.scale {
                    a.push(("scale", Attr::Float(s)));
                }
                if la.update_rule != LinearUpdateRule::GatedDelta {
                    a.push(("update_rule", Attr::String(la.update_rule.name().into())));
                }
                if la.chunk_size != DEFAULT_LINEAR_ATTENTION_CHUNK {
                    a.push(("chunk_size", Attr::Int(la.chunk_size)));
                }
            }
            Op::Reduce { axes, keepdims, noop_with_empty_axes, .. } => {
                if let Some(ax) = axes {
                    a.push(("axes", Attr::Ints(ax.clone())));
                }
                if !keepdims {
                    a.push(("keepdims", flag(false)));
                }
                if *noop_with_empty_axes {
                    a.push(("noop_with_empty_axes", flag(true)));
                }
            }
            Op::ArgReduce { axis, keepdims, select_last_index, .. } => {
                if *axis != 0 {
                    a.push(("axis", Attr::Int(*axis)));
                }
                if !keepdims {
                    a.push(("keepdims", flag(false)));
                }
                if *select_last_index {
                    a.push(("select_last_index", flag(true)));
                }
            }
            Op::TopK { axis, largest, sorted } => {
                if *axis != -1 {
                    a.push(("axis", Attr::Int(*axis)));
                }
                if !largest {
                    a.push(("largest", flag(false)));
                }
                if !sorted {
                    a.push(("sorted", flag(false)));
                }
            }
            Op::CumSum { exclusive, reverse } => {
                if *exclusive {
                    a.push(("exclusive", flag(true)));
                }
                if *reverse {
                    a.push(("reverse", flag(true)));
                }
            }
            Op::Transpose { perm } => {
                if let Some(p) = perm {
                    a.push(("perm", Attr::Ints(p.clone())));
                }
            }
            Op::Reshape { allowzero } => {
                if *allowzero {
                    a.push(("allowzero", flag(true)));
                }
            }
            Op::Flatten { axis } => {
                if *axis != 1 {
                    a.push(("axis", Attr::Int(*axis)));
                }
            }
            Op::Concat { axis } => a.push(("axis", Attr::Int(*axis))),
            Op::Split { axis, num_outputs } => {
                if *axis != 0 {
                    a.push(("axis", Attr::Int(*axis)));
                }
                if let Some(n) = num_outputs {
                    a.push(("num_outputs", Attr::Int(*n)));
                }
            }
            Op::Gather { axis } | Op::GatherElements { axis } => {
                if *axis != 0 {
                    a.push(("axis", Attr::Int(*axis)));
                }
            }
            Op::GatherND { batch_dims } => {
                if *batch_dims != 0 {
                    a.push(("batch_dims", Attr::Int(*batch_dims)));
                }
            }
            Op::ScatterND { reduction } => {
                if reduction != "none" {
                    a.push(("reduction", Attr::String(reduction.clone())));
                }
            }
            Op::Pad { mode } => {
                if mode != "constant" {
                    a.push(("mode", Attr::String(mode.clone())));
                }
            }
            Op::Cast { to, saturate } => {
                a.push(("to", Attr::DType(*to)));
                if !saturate {
                    a.push(("saturate", flag(false)));
                }
            }
            Op::CastLike { saturate } => {
                if !saturate {
                    a.push(("saturate", flag(false)));
                }
            }
            Op::Shape { start, end } => {
                if *start != 0 {
                    a.push(("start", Attr::Int(*start)));
                }
                if let Some(e) = end {
                    a.push(("end", Attr::Int(*e)));
                }
            }
            Op::ConstantOfShape { value } => {
                if let Some(v) = value {
                    a.push(("value", Attr::Tensor(v.clone())));
                }
            }
            Op::Trilu { upper } => {
                if !upper {
                    a.push(("upper", flag(false)));
                }
            }
            Op::Constant { value } => a.push(("value", Attr::Tensor(value.clone()))),
            Op::Dropout { seed } => {
                if let Some(s) = seed {
                    a.push(("seed", Attr::Int(*s)));
                }
            }
            Op::OneHot { axis } => {
                if *axis != -1 {
                    a.push(("axis", Attr::Int(*axis)));
                }
            }
            Op::SoftmaxCrossEntropyLoss { reduction, ignore_index }
            | Op::NegativeLogLikelihoodLoss { reduction, ignore_index } => {
                if *reduction != LossReduction::Mean {
                    a.push(("reduction", Attr::String(reduction.name().into())));
                }
                if let Some(i) = ignore_index {
                    a.push(("ignore_index", Attr::Int(*i)));
                }
            }
            Op::LinearCrossEntropy {
                reduction,
                ignore_index,
                label_smoothing,
                z_loss,
                transpose_weight,
                chunk_size,
            } => {
                let loss = Op::CrossEntropy {
                    reduction: *reduction,
                    ignore_index: *ignore_index,
                    label_smoothing: *label_smoothing,
                    z_loss: *z_loss,
                };
                a = loss.attrs();
                if !transpose_weight {
                    a.push(("transpose_weight", flag(false)));
                }
                if *chunk_size != DEFAULT_CHUNK_SIZE {
                    a.push(("chunk_size", Attr::Int(*chunk_size)));
                }
            }
            Op::CrossEntropy { reduction, ignore_index, label_smoothing, z_loss } => {
                if *reduction != LossReduction::Mean {
                    a.push(("reduction", Attr::String(reduction.name().into())));
                }
                if let Some(i) = ignore_index {
                    a.push(("ignore_index", Attr::Int(*i)));
                }
                // Bit comparison keeps -0.0 (and NaN) printed, so reparsing
                // gives back the same bits.
                if label_smoothing.to_bits() != 0 {
                    a.push(("label_smoothing", Attr::Float(*label_smoothing)));
                }
                if z_loss.to_bits() != 0 {
                    a.push(("z_loss", Attr::Float(*z_loss)));
                }
            }
            Op::QuantizeLinear { axis, block_size, saturate, output_dtype } => {
                if *axis != 1 {
                    a.push(("axis", Attr::Int(*axis)));
                }
                if *block_size != 0 {
                    a.push(("block_size", Attr::Int(*block_size)));
                }
                if !saturate {
                    a.push(("saturate", flag(false)));
                }
                if let Some(d) = output_dtype {
                    a.push(("output_dtype", Attr::DType(*d)));
                }
            }
            Op::DequantizeLinear { axis, block_size, output_dtype } => {
                if *axis != 1 {
                    a.push(("axis", Attr::Int(*axis)));
                }
                if *block_size != 0 {
                    a.push(("block_size", Attr::Int(*block_size)));
                }
                if let Some(d) = output_dtype {
                    a.push(("output_dtype", Attr::DType(*d)));
                }
            }
            Op::MatMul
            | Op::MatMulInteger
            | Op::QLinearMatMul
            | Op::Unary(_)
            | Op::Binary(_)
            | Op::Variadic(_)
            | Op::Clip
            | Op::Where
            | Op::Squeeze
            | Op::Unsqueeze
            | Op::Slice
            | Op::Expand
            | Op::Tile
            | Op::Size
            | Op::Range
            | Op::Identity
            | Op::NonZero
            | Op::DynamicQuantizeLinear => {}
        }
        a
    }

    /// Builds an op from its type, domain and attributes. Unknown attributes
    /// are an error; missing ones take the defaults of [`Op::attrs`].
    pub fn from_attrs(op_type: &str, domain: &str, mut b: AttrBag) -> Result<Op, AttrError> {
        if domain == KILN_DOMAIN {
            let op = match op_type {
                "CrossEntropy" => Op::CrossEntropy {
                    reduction: LossReduction::parse(b.opt_string("reduction")?.as_deref().unwrap_or("mean"))?,
                    ignore_index: b.opt_int("ignore_index")?,
                    label_smoothing: b.float("label_smoothing", 0.0)?,
                    z_loss: b.float("z_loss", 0.0)?,
                },
                "LinearCrossEntropy" => Op::LinearCrossEntropy {
                    reduction: LossReduction::parse(b.opt_string("reduction")?.as_deref().unwrap_or("mean"))?,
                    ignore_index: b.opt_int("ignore_index")?,
                    label_smoothing: b.float("label_smoothing", 0.0)?,
                    z_loss: b.float("z_loss", 0.0)?,
                    transpose_weight: b.flag("transpose_weight", true)?,
                    chunk_size: match b.int("chunk_size", DEFAULT_CHUNK_SIZE)? {
                        c if c >= 1 => c,
                        c => return Err(AttrError::Invalid(format!("chunk_size must be at least 1, found {c}"))),
                    },
                },
                _ => return Err(AttrError::UnknownOp),
            };
            b.finish()?;
            return Ok(op);
        }
        if !(domain.is_empty() || domain == "ai.onnx") {
            return Err(AttrError::UnknownOp);
        }
        let op = if let Some(u) = UnaryOp::ALL.into_iter().find(|u| u.name() == op_type) {
            Op::Unary(u)
        } else if let Some(k) = BinaryOp::ALL.into_iter().find(|k| k.name() == op_type) {
            Op::Binary(k)
        } else if let Some(v) = VariadicOp::ALL.into_iter().find(|v| v.name() == op_type) {
            Op::Variadic(v)
        } else if let Some(kind) = ReduceKind::ALL.into_iter().find(|k| k.name() == op_type) {
            Op::Reduce {
                kind,
                axes: b.opt_ints("axes")?,
                keepdims: b.flag("keepdims", true)?,
                noop_with_empty_axes: b.flag("noop_with_empty_axes", false)?,
            }
        } else {
            match op_type {
                "MatMul" => Op::MatMul,
                "Gemm" => Op::Gemm(GemmAttrs {
                    alpha: b.float("alpha", 1.0)?,
                    beta: b.float("beta", 1.0)?,
                    trans_a: b.flag("transA", false)?,
                    trans_b: b.flag("transB", false)?,
                }),
                "MatMulInteger" => Op::MatMulInteger,
                "QLinearMatMul" => Op::QLinearMatMul,
                "Mod" => Op::Mod { fmod: b.flag("fmod", false)? },
                "Clip" => Op::Clip,
                "Where" => Op::Where,
                "Gelu" => Op::Gelu {
                    approximate: match b.opt_string("approximate")?.as_deref() {
                        None | Some("none") => GeluApproximation::None,
                        Some("tanh") => GeluApproximation::Tanh,
                        Some(s) => {
                            return Err(AttrError::Invalid(format!(
                                "attribute `approximate` must be none or tanh, found `{s}`"
                            )))
                        }
                    },
                },
                "LeakyRelu" => Op::LeakyRelu { alpha: b.float("alpha", 0.01)? },
                "Elu" => Op::Elu { alpha: b.float("alpha", 1.0)? },
                "HardSigmoid" => Op::HardSigmoid { alpha: b.float("alpha", 0.2)?, beta: b.float("beta", 0.5)? },
                "IsInf" => Op::IsInf {
                    detect_negative: b.flag("detect_negative", true)?,
                    detect_positive: b.flag("detect_positive", true)?,
                },
                "Softmax" => Op::Softmax { axis: b.int("axis", -1)? },
                "LogSoftmax" => Op::LogSoftmax { axis: b.int("axis", -1)? },
                "LayerNormalization" => Op::LayerNormalization {
                    axis: b.int("axis", -1)?,
                    epsilon: b.float("epsilon", 1e-5)?,
                    stash_type: b.opt_dtype("stash_type")?.unwrap_or(DType::F32),
                },
                "RMSNormalization" => Op::RMSNormalization {
                    axis: b.int("axis", -1)?,
                    epsilon: b.float("epsilon", 1e-5)?,
                    stash_type: b.opt_dtype("stash_type")?.unwrap_or(DType::F32),
                },
                "RotaryEmbedding" => Op::RotaryEmbedding {
                    interleaved: b.flag("interleaved", false)?,
                    num_heads: b.opt_int("num_heads")?,
                    rotary_embedding_dim: b.opt_int("rotary_embedding_dim")?.filter(|&d| d != 0),
                },
                "Attention" => Op::Attention(AttentionAttrs {
                    is_causal: b.flag("is_causal", false)?,
                    kv_num_heads: b.opt_int("kv_num_heads")?,
                    q_num_heads: b.opt_int("q_num_heads")?,
                    qk_matmul_output_mode: b.int("qk_matmul_output_mode", 0)?,
                    scale: b.opt_float("scale")?,
                    softcap: b.float("softcap", 0.0)?,
                    softmax_precision: b.opt_dtype("softmax_precision")?,
                }),
                "LinearAttention" => {
                    let required = |b: &mut AttrBag, name: &str| -> Result<i64, AttrError> {
                        match b.opt_int(name)? {
                            Some(n) if n >= 1 => Ok(n),
                            Some(n) => Err(AttrError::Invalid(format!("attribute `{name}` must be positive, found {n}"))),
                            None => Err(AttrError::Invalid(format!("attribute `{name}` is required"))),
                        }
                    };
                    Op::LinearAttention(LinearAttentionAttrs {
                        q_num_heads: required(&mut b, "q_num_heads")?,
                        kv_num_heads: required(&mut b, "kv_num_heads")?,
                        // ONNX's default 0.0 means "derive from the head size".
                        scale: b.opt_float("scale")?.filter(|&s| s != 0.0),
                        update_rule: LinearUpdateRule::parse(
                            b.opt_string("update_rule")?.as_deref().unwrap_or("gated_delta"),
                        )?,
                        chunk_size: b.int("chunk_size", DEFAULT_LINEAR_ATTENTION_CHUNK)?,
                    })
                }
                "ArgMax" | "ArgMin" => Op::ArgReduce {
                    max: op_type == "ArgMax",
                    axis: b.int("axis", 0)?,
                    keepdims: b.flag("keepdims", true)?,
                    select_last_index: b.flag("select_last_index", false)?,
                },
                "TopK" => Op::TopK {
                    axis: b.int("axis", -1)?,
                    largest: b.flag("largest", true)?,
                    sorted: b.flag("sorted", true)?,
                },
                "CumSum" => Op::CumSum { exclusive: b.flag("exclusive", false)?, reverse: b.flag("reverse", false)? },
                "Transpose" => Op::Transpose { perm: b.opt_ints("perm")? },
                "Reshape" => Op::Reshape { allowzero: b.flag("allowzero", false)? },
                "Flatten" => Op::Flatten { axis: b.int("axis", 1)? },
                "Squeeze" => Op::Squeeze,
                "Unsqueeze" => Op::Unsqueeze,
                "Concat" => Op::Concat {
                    axis: b
                        .opt_int("axis")?
                        .ok_or_else(|| AttrError::Invalid("attribute `axis` is required".into()))?,
                },
                "Split" => Op::Split { axis: b.int("axis", 0)?, num_outputs: b.opt_int("num_outputs")? },
                "Slice" => Op::Slice,
                "Gather" => Op::Gather { axis: b.int("axis", 0)? },
                "GatherElements" => Op::GatherElements { axis: b.int("axis", 0)? },
                "GatherND" => Op::GatherND { batch_dims: b.int("batch_dims", 0)? },
                "ScatterND" => Op::ScatterND { reduction: b.opt_string("reduction")?.unwrap_or_else(|| "none".into()) },
                "Expand" => Op::Expand,
                "Tile" => Op::Tile,
                "Pad" => Op::Pad { mode: b.opt_string("mode")?.unwrap_or_else(|| "constant".into()) },
                "Cast" => Op::Cast {
                    to: b
                        .opt_dtype("to")?
                        .ok_or_else(|| AttrError::Invalid("attribute `to` is required".into()))?,
                    saturate: b.flag("saturate", true)?,
                },
                "CastLike" => Op::CastLike { saturate: b.flag("saturate", true)? },
                "Shape" => Op::Shape { start: b.int("start", 0)?, end: b.opt_int("end")? },
                "Size" => Op::Size,
                "ConstantOfShape" => Op::ConstantOfShape { value: b.opt_tensor("value")? },
                "Range" => Op::Range,
                "Trilu" => Op::Trilu { upper: b.flag("upper", true)? },
                "Constant" => Op::Constant {
                    value: b
                        .opt_tensor("value")?
                        .ok_or_else(|| AttrError::Invalid("attribute `value` is required".into()))?,
                },
                "Identity" => Op::Identity,
                "Dropout" => Op::Dropout { seed: b.opt_int("seed")? },
                "OneHot" => Op::OneHot { axis: b.int("axis", -1)? },
                "NonZero" => Op::NonZero,
                "SoftmaxCrossEntropyLoss" | "NegativeLogLikelihoodLoss" => {
                    let reduction = LossReduction::parse(b.opt_string("reduction")?.as_deref().unwrap_or("mean"))?;
                    let ignore_index = b.opt_int("ignore_index")?;
                    if op_type == "SoftmaxCrossEntropyLoss" {
                        Op::SoftmaxCrossEntropyLoss { reduction, ignore_index }
                    } else {
                        Op::NegativeLogLikelihoodLoss { reduction, ignore_index }
                    }
                }
                "QuantizeLinear" => Op::QuantizeLinear {
                    axis: b.int("axis", 1)?,
                    block_size: b.int("block_size", 0)?,
                    saturate: b.flag("saturate", true)?,
                    output_dtype: b.opt_dtype("output_dtype")?,
                },
                "DequantizeLinear" => Op::DequantizeLinear {
                    axis: b.int("axis", 1)?,
                    block_size: b.int("block_size", 0)?,
                    output_dtype: b.opt_dtype("output_dtype")?,
                },
                "DynamicQuantizeLinear" => Op::DynamicQuantizeLinear,
                _ => return Err(AttrError::UnknownOp),
            }
        };
        b.finish()?;
        Ok(op)
    }

    /// Rebuilds an op from its own attributes; used by tests to check that
    /// [`Op::attrs`] and [`Op::from_attrs`] agree.
    pub fn reparse(&self) -> Result<Op, AttrError> {
        let entries = self.attrs().into_iter().map(|(n, a)| (n.to_string(), a)).collect();
        Op::from_attrs(self.name(), self.domain(), AttrBag::new(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs_round_trip_for_non_default_values() {
        let ops = vec![
            Op::Gemm(GemmAttrs { alpha: 0.5, beta: 2.0, trans_a: true, trans_b: true }),
            Op::Softmax { axis: 1 },
            Op::LayerNormalization { axis: -2, epsilon: 1e-6, stash_type: DType::F64 },
            Op::Attention(AttentionAttrs {
                is_causal: true,
                q_num_heads: Some(12),
                kv_num_heads: Some(4),
                qk_matmul_output_mode: 1,
                scale: Some(0.125),
                softcap: 30.0,
                softmax_precision: Some(DType::F32),
            }),
            Op::Reduce { kind: ReduceKind::LogSumExp, axes: Some(vec![-1]), keepdims: false, noop_with_empty_axes: true },
            Op::Cast { to: DType::BF16, saturate: true },
            Op::SoftmaxCrossEntropyLoss { reduction: LossReduction::Sum, ignore_index: Some(-100) },
            Op::CrossEntropy {
                reduction: LossReduction::None,
                ignore_index: Some(-100),
                label_smoothing: 0.1,
                z_loss: 1e-4,
            },
            Op::CrossEntropy { reduction: LossReduction::Mean, ignore_index: None, label_smoothing: 0.0, z_loss: 0.0 },
            Op::LinearCrossEntropy {
                reduction: LossReduction::Sum,
                ignore_index: Some(-1),
                label_smoothing: 0.05,
                z_loss: 0.0,
                transpose_weight: false,
                chunk_size: 128,
            },
            Op::Constant { value: Tensor::vec_i64(&[1, 2, 3]) },
            Op::Gelu { approximate: GeluApproximation::Tanh },
            Op::LinearAttention(LinearAttentionAttrs {
                q_num_heads: 4,
                kv_num_heads: 2,
                scale: Some(0.5),
                update_rule: LinearUpdateRule::Linear,
                chunk_size: 16,
            }),
            Op::LinearAttention(LinearAttentionAttrs {
                q_num_heads: 1,
                kv_num_heads: 1,
                scale: None,
                update_rule: LinearUpdateRule::GatedDelta,
                chunk_size: DEFAULT_LINEAR_ATTENTION_CHUNK,
            }),
        ];
        for op in ops {
            assert_eq!(op.reparse().as_ref(), Ok(&op), "{}", op.name());
        }
    }

    #[test]
    fn unknown_attribute_is_rejected() {
        let bag = AttrBag::new(vec![("axiz".into(), Attr::Int(1))]);
        let err = Op::from_attrs("Softmax", "", bag).unwrap_err();
        assert!(err.to_string().contains("axiz"), "{err}");
        assert_eq!(Op::from_attrs("Conv9", "", AttrBag::default()), Err(AttrError::UnknownOp));
    }

    #[test]
    fn cross_entropy_is_a_kiln_domain_op() {
        let op = Op::from_attrs("CrossEntropy", KILN_DOMAIN, AttrBag::default()).unwrap();
        assert_eq!(op.domain(), KILN_DOMAIN);
        assert_eq!(Op::from_attrs("CrossEntropy", "", AttrBag::default()), Err(AttrError::UnknownOp));
        assert_eq!(Op::from_attrs("Softmax", KILN_DOMAIN, AttrBag::default()), Err(AttrError::UnknownOp));
    }
}
