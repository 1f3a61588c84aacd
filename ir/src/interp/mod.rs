//! The reference interpreter: the oracle that rewrites and backends are
//! checked against. Correctness beats speed, but it must run GPT-2-small-sized
//! graphs in seconds.
//!
//! [`eval_op`] evaluates one op on concrete tensors; [`run`] evaluates a graph.
//! Kernels are grouped by topic in submodules, each with an `eval` entry
//! point that the dispatcher below calls by op.

mod elementwise;
mod linalg;
mod movement;
mod nn;
mod quant;
mod reduce;
mod util;

use crate::op::Op;
use crate::tensor::Tensor;

/// Evaluates one op. `inputs` has `None` for omitted optional inputs;
/// `num_outputs` is how many outputs the node declares (optional trailing
/// outputs may be computed or not; the result has exactly `num_outputs`
/// entries, `None` where an output is not produced).
///
/// Errors are plain messages; the caller wraps them with the node and op.
pub fn eval_op(op: &Op, inputs: &[Option<Tensor>], num_outputs: usize) -> Result<Vec<Option<Tensor>>, String> {
    let mut out = match op {
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
        | Op::IsInf { .. } => elementwise::eval(op, inputs)?,
        Op::MatMul | Op::Gemm(_) | Op::MatMulInteger | Op::QLinearMatMul => linalg::eval(op, inputs)?,
        Op::Reduce { .. } | Op::ArgReduce { .. } | Op::TopK { .. } | Op::CumSum { .. } => reduce::eval(op, inputs)?,
        Op::Softmax { .. }
        | Op::LogSoftmax { .. }
        | Op::LayerNormalization { .. }
        | Op::RMSNormalization { .. }
        | Op::RotaryEmbedding { .. }
        | Op::Attention(_)
        | Op::SoftmaxCrossEntropyLoss { .. }
        | Op::NegativeLogLikelihoodLoss { .. } => nn::eval(op, inputs, num_outputs)?,
        Op::QuantizeLinear { .. } | Op::DequantizeLinear { .. } | Op::DynamicQuantizeLinear => quant::eval(op, inputs)?,
        Op::Transpose { .. }
        | Op::Reshape { .. }
        | Op::Flatten { .. }
        | Op::Squeeze
        | Op::Unsqueeze
        | Op::Concat { .. }
        | Op::Split { .. }
        | Op::Slice
        | Op::Gather { .. }
        | Op::GatherElements { .. }
        | Op::GatherND { .. }
        | Op::ScatterND { .. }
        | Op::Expand
        | Op::Tile
        | Op::Pad { .. }
        | Op::Cast { .. }
        | Op::CastLike { .. }
        | Op::Shape { .. }
        | Op::Size
        | Op::ConstantOfShape { .. }
        | Op::Range
        | Op::Trilu { .. }
        | Op::Constant { .. }
        | Op::Identity
        | Op::Dropout { .. }
        | Op::OneHot { .. }
        | Op::NonZero => movement::eval(op, inputs, num_outputs)?,
    };
    out.resize(num_outputs, None);
    Ok(out)
}
