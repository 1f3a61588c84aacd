//! Neural-network kernels: Softmax and LogSoftmax, LayerNormalization and
//! RMSNormalization, RotaryEmbedding, Attention, LinearAttention, and the
//! losses.
//!
//! These compute in f64 whatever the input precision and round once to the
//! output dtype: the statistics (means, variances, softmax sums) are where
//! low-precision accumulation hurts, and the interpreter is the oracle other
//! implementations are judged against. `stash_type` and `softmax_precision`
//! therefore only pick the dtype of the statistics outputs, never a lower
//! working precision.

use super::util::{int_values, map_lanes, normalize_axis, optional, required, KResult};
use crate::dtype::DType;
use crate::op::{AttentionAttrs, LinearAttentionAttrs, LossReduction, Op};
use crate::tensor::Tensor;
use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array4, ArrayD, ArrayView2, ArrayViewMut2, Axis, IxDyn};

pub(crate) fn eval(op: &Op, inputs: &[Option<Tensor>], num_outputs: usize) -> KResult<Vec<Option<Tensor>>> {
    match op {
        Op::Softmax { axis } => Ok(vec![Some(softmax(required(inputs, 0, "input")?, *axis, false)?)]),
        Op::LogSoftmax { axis } => Ok(vec![Some(softmax(required(inputs, 0, "input")?, *axis, true)?)]),
        Op::LayerNormalization { axis, epsilon, stash_type } => {
            let x = required(inputs, 0, "X")?;
            let scale = required(inputs, 1, "Scale")?;
            let (y, mean, inv_std) = layer_norm(x, scale, optional(inputs, 2), *axis, *epsilon as f64, *stash_type)?;
            Ok(vec![Some(y), Some(mean), Some(inv_std)])
        }
        Op::RMSNormalization { axis, epsilon, stash_type: _ } => {
            let x = required(inputs, 0, "X")?;
            let scale = required(inputs, 1, "scale")?;
            Ok(vec![Some(rms_norm(x, scale, *axis, *epsilon as f64)?)])
        }
        Op::RotaryEmbedding { interleaved, num_heads, rotary_embedding_dim } => Ok(vec![Some(rotary(
            required(inputs, 0, "X")?,
            required(inputs, 1, "cos_cache")?,
            required(inputs, 2, "sin_cache")?,
            optional(inputs, 3),
            *interleaved,
            *num_heads,
            *rotary_embedding_dim,
        )?)]),
        Op::Attention(attrs) => attention(attrs, inputs, num_outputs),
        Op::LinearAttention(attrs) => linear_attention(attrs, inputs),
        Op::SoftmaxCrossEntropyLoss { reduction, ignore_index } => {
            let x = required(inputs, 0, "scores")?;
            let log_prob = softmax(x, 1, true)?;
            let loss = nll(&log_prob, required(inputs, 1, "labels")?, optional(inputs, 2), *reduction, *ignore_index)?;
            Ok(vec![Some(loss), (num_outputs > 1).then_some(log_prob)])
        }
        Op::NegativeLogLikelihoodLoss { reduction, ignore_index } => Ok(vec![Some(nll(
            required(inputs, 0, "input")?,
            required(inputs, 1, "target")?,
            optional(inputs, 2),
            *reduction,
            *ignore_index,
        )?)]),
        Op::CrossEntropy { reduction, ignore_index, label_smoothing, z_loss } => {
            let (loss, log_prob) = cross_entropy(
                required(inputs, 0, "logits")?,
                required(inputs, 1, "labels")?,
                optional(inputs, 2),
                CrossEntropyParams {
                    reduction: *reduction,
                    ignore_index: *ignore_index,
                    label_smoothing: *label_smoothing as f64,
                    z_loss: *z_loss as f64,
                },
                num_outputs > 1,
            )?;
            Ok(vec![Some(loss), log_prob])
        }
        Op::LinearCrossEntropy {
            reduction,
            ignore_index,
            label_smoothing,
            z_loss,
            transpose_weight,
            chunk_size,
        } => Ok(vec![Some(linear_cross_entropy(
            LinearInputs {
                hidden: required(inputs, 0, "hidden")?,
                weight: required(inputs, 1, "weight")?,
                labels: required(inputs, 2, "labels")?,
                bias: optional(inputs, 3),
                class_weight: optional(inputs, 4),
            },
            CrossEntropyParams {
                reduction: *reduction,
                ignore_index: *ignore_index,
                label_smoothing: *label_smoothing as f64,
                z_loss: *z_loss as f64,
            },
            *transpose_weight,
            usize::try_from(*chunk_size).ok().filter(|&c| c >= 1).ok_or("chunk_size must be at least 1")?,
        )?)]),
        other => Err(format!("{} is not a neural-network op", other.name())),
    }
}

// ---------------------------------------------------------------- f64 views

/// The elements of a float tensor as an f64 array of the same shape.
fn to_f64_array(t: &Tensor, what: &str) -> KResult<ArrayD<f64>> {
    if !t.dtype().is_float() {
        return Err(format!("{what} must be a float tensor, found {}", t.dtype()));
    }
    Ok(ArrayD::from_shape_vec(IxDyn(t.shape()), t.to_f64s()).expect("value count matches shape"))
}

/// An f64 array rounded to `dtype`.
fn from_f64_array(dtype: DType, a: &ArrayD<f64>) -> Tensor {
    let values: Vec<f64> = a.iter().copied().collect();
    Tensor::from_f64s(dtype, a.shape(), &values)
}

/// The dtype of LayerNormalization's Mean and InvStdDev outputs: the stash
/// type, which must be a float type.
fn stash_dtype(stash: DType) -> KResult<DType> {
    if stash.is_float() {
        Ok(stash)
    } else {
        Err(format!("stash_type must be a float type, found {stash}"))
    }
}

// ---------------------------------------------------------------- softmax

/// Softmax (or its log) along one axis, stable by subtracting the maximum.
/// A lane of all -inf gives NaN, as in the ONNX reference.
fn softmax(x: &Tensor, axis: i64, log: bool) -> KResult<Tensor> {
    let a = to_f64_array(x, "input")?;
    let axis = normalize_axis(axis, a.ndim())?;
    let n = a.shape()[axis];
    let r = map_lanes(a.view(), axis, n, |lane, out| {
        softmax_lane(lane, out, log);
        Ok(())
    })?;
    Ok(from_f64_array(x.dtype(), &r))
}

fn softmax_lane(lane: &[f64], out: &mut [f64], log: bool) {
    let m = lane.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = lane.iter().map(|&v| (v - m).exp()).sum();
    if log {
        let lse = sum.ln();
        for (o, &v) in out.iter_mut().zip(lane) {
            *o = v - m - lse;
        }
    } else {
        for (o, &v) in out.iter_mut().zip(lane) {
            *o = (v - m).exp() / sum;
        }
    }
}

// ---------------------------------------------------------------- normalization

/// A per-element parameter (scale or bias) of a normalization over the
/// trailing axes from `axis`: broadcast to those axes when it fits them (one
/// value per column, shared by every row), else to the whole input.
struct RowParam {
    values: Vec<f64>,
    per_row: bool,
}

impl RowParam {
    fn new(p: &Tensor, x_shape: &[usize], axis: usize, what: &str) -> KResult<RowParam> {
        let a = to_f64_array(p, what)?;
        if let Some(b) = a.broadcast(IxDyn(&x_shape[axis..])) {
            return Ok(RowParam { values: b.iter().copied().collect(), per_row: false });
        }
        let b = a
            .broadcast(IxDyn(x_shape))
            .ok_or_else(|| format!("{what} of shape {:?} does not broadcast to {:?}", p.shape(), x_shape))?;
        Ok(RowParam { values: b.iter().copied().collect(), per_row: true })
    }

    fn get(&self, row: usize, col: usize, cols: usize) -> f64 {
        if self.per_row {
            self.values[row * cols + col]
        } else {
            self.values[col]
        }
    }
}

/// Rows (the product of the leading axes) and columns (the normalized
/// trailing axes) of a normalization from `axis`.
fn rows_cols(shape: &[usize], axis: usize) -> (usize, usize) {
    (shape[..axis].iter().product(), shape[axis..].iter().product())
}

/// `LayerNormalization`: Y, Mean and InvStdDev (the last two shaped like X
/// with the normalized axes set to 1, in the stash type).
fn layer_norm(
    x: &Tensor,
    scale: &Tensor,
    bias: Option<&Tensor>,
    axis: i64,
    epsilon: f64,
    stash: DType,
) -> KResult<(Tensor, Tensor, Tensor)> {
    let shape = x.shape().to_vec();
    let axis = normalize_axis(axis, shape.len())?;
    let (rows, cols) = rows_cols(&shape, axis);
    let xs = to_f64_array(x, "X")?;
    let xs = xs.as_slice().expect("a fresh array is contiguous");
    let w = RowParam::new(scale, &shape, axis, "Scale")?;
    let b = bias.map(|b| RowParam::new(b, &shape, axis, "B")).transpose()?;
    let mut y = vec![0.0; xs.len()];
    let mut means = vec![0.0; rows];
    let mut inv_stds = vec![0.0; rows];
    for r in 0..rows {
        let row = &xs[r * cols..(r + 1) * cols];
        let mean = row.iter().sum::<f64>() / cols as f64;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / cols as f64;
        let inv_std = 1.0 / (var + epsilon).sqrt();
        for (c, &v) in row.iter().enumerate() {
            let mut o = (v - mean) * inv_std * w.get(r, c, cols);
            if let Some(b) = &b {
                o += b.get(r, c, cols);
            }
            y[r * cols + c] = o;
        }
        means[r] = mean;
        inv_stds[r] = inv_std;
    }
    let stat_shape: Vec<usize> = shape.iter().enumerate().map(|(i, &d)| if i < axis { d } else { 1 }).collect();
    let stat = stash_dtype(stash)?;
    Ok((
        Tensor::from_f64s(x.dtype(), &shape, &y),
        Tensor::from_f64s(stat, &stat_shape, &means),
        Tensor::from_f64s(stat, &stat_shape, &inv_stds),
    ))
}

/// `RMSNormalization`: `X / sqrt(mean(X²) + epsilon) * scale` over the
/// trailing axes from `axis`.
fn rms_norm(x: &Tensor, scale: &Tensor, axis: i64, epsilon: f64) -> KResult<Tensor> {
    let shape = x.shape().to_vec();
    let axis = normalize_axis(axis, shape.len())?;
    let (rows, cols) = rows_cols(&shape, axis);
    let xs = to_f64_array(x, "X")?;
    let xs = xs.as_slice().expect("a fresh array is contiguous");
    let w = RowParam::new(scale, &shape, axis, "scale")?;
    let mut y = vec![0.0; xs.len()];
    for r in 0..rows {
        let row = &xs[r * cols..(r + 1) * cols];
        let inv_rms = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / cols as f64 + epsilon).sqrt();
        for (c, &v) in row.iter().enumerate() {
            y[r * cols + c] = v * inv_rms * w.get(r, c, cols);
        }
    }
    Ok(Tensor::from_f64s(x.dtype(), &shape, &y))
}

// ---------------------------------------------------------------- rotary embedding

/// `RotaryEmbedding` (ONNX 23). X is `[batch, heads, seq, head_dim]` or
/// `[batch, seq, heads * head_dim]` (with `num_heads`). The caches are
/// `[max_position, rot/2]` indexed by `position_ids [batch, seq]`, or
/// `[batch, seq, rot/2]` used directly when there are no position ids. The
/// first `rot` features of each head rotate, as split halves or, when
/// `interleaved`, as adjacent pairs; the rest pass through.
fn rotary(
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    position_ids: Option<&Tensor>,
    interleaved: bool,
    num_heads: Option<i64>,
    rotary_dim: Option<i64>,
) -> KResult<Tensor> {
    let shape = x.shape().to_vec();
    // (batch, seq, heads, head_dim) and the flat offset of (b, s, h, 0).
    let (batch, seq, heads, head_dim, four_d) = match *shape.as_slice() {
        [b, h, s, d] => (b, s, h, d, true),
        [b, s, hidden] => {
            let h = num_heads.ok_or("a 3-D input needs the num_heads attribute")?;
            if h <= 0 || hidden % h as usize != 0 {
                return Err(format!("hidden size {hidden} is not a multiple of num_heads {h}"));
            }
            (b, s, h as usize, hidden / h as usize, false)
        }
        _ => return Err(format!("X must be 3-D or 4-D, found shape {shape:?}")),
    };
    let rot = match rotary_dim {
        Some(r) if r > 0 => r as usize,
        _ => head_dim,
    };
    if rot > head_dim || rot % 2 != 0 {
        return Err(format!("rotary_embedding_dim {rot} must be even and at most the head size {head_dim}"));
    }
    let half = rot / 2;
    let xs = to_f64_array(x, "X")?;
    let xs = xs.as_slice().expect("a fresh array is contiguous");
    let cos_v = cos.to_f64s();
    let sin_v = sin.to_f64s();
    if cos.shape() != sin.shape() {
        return Err(format!("cos_cache {:?} and sin_cache {:?} differ in shape", cos.shape(), sin.shape()));
    }
    if cos.shape().last() != Some(&half) {
        return Err(format!("the caches' last dimension must be rotary_dim / 2 = {half}, found {:?}", cos.shape()));
    }
    // Row of the caches for (b, s).
    let cache_row: Box<dyn Fn(usize, usize) -> KResult<usize>> = match position_ids {
        Some(p) => {
            if p.shape() != [batch, seq] {
                return Err(format!("position_ids must be [{batch}, {seq}], found {:?}", p.shape()));
            }
            if cos.shape().len() != 2 {
                return Err(format!("with position_ids the caches must be 2-D, found {:?}", cos.shape()));
            }
            let ids = int_values(p, "position_ids")?;
            let max_pos = cos.shape()[0];
            Box::new(move |b, s| {
                let id = ids[b * seq + s];
                usize::try_from(id)
                    .ok()
                    .filter(|&i| i < max_pos)
                    .ok_or_else(|| format!("position id {id} is outside the cache of {max_pos} positions"))
            })
        }
        None => {
            if cos.shape() != [batch, seq, half] {
                return Err(format!(
                    "without position_ids the caches must be [{batch}, {seq}, {half}], found {:?}",
                    cos.shape()
                ));
            }
            Box::new(move |b, s| Ok(b * seq + s))
        }
    };
    let offset = |b: usize, s: usize, h: usize| {
        if four_d {
            ((b * heads + h) * seq + s) * head_dim
        } else {
            (b * seq + s) * heads * head_dim + h * head_dim
        }
    };
    let mut y = xs.to_vec();
    for b in 0..batch {
        for s in 0..seq {
            let row = cache_row(b, s)? * half;
            let (c, sn) = (&cos_v[row..row + half], &sin_v[row..row + half]);
            for h in 0..heads {
                let o = offset(b, s, h);
                let src = &xs[o..o + rot];
                let dst = &mut y[o..o + rot];
                for i in 0..half {
                    let (i1, i2) = if interleaved { (2 * i, 2 * i + 1) } else { (i, i + half) };
                    let (x1, x2) = (src[i1], src[i2]);
                    dst[i1] = c[i] * x1 - sn[i] * x2;
                    dst[i2] = sn[i] * x1 + c[i] * x2;
                }
            }
        }
    }
    Ok(Tensor::from_f64s(x.dtype(), &shape, &y))
}

// ---------------------------------------------------------------- attention

/// Q, K or V as `[batch, heads, seq, head_dim]`; 3-D inputs
/// `[batch, seq, heads * head_dim]` are split into `heads`.
fn to_heads(t: &Tensor, heads: Option<i64>, what: &str) -> KResult<Array4<f64>> {
    let a = to_f64_array(t, what)?;
    match a.ndim() {
        4 => Ok(a.into_dimensionality().expect("rank checked")),
        3 => {
            let heads = heads.ok_or_else(|| format!("a 3-D {what} needs the q_num_heads/kv_num_heads attribute"))?;
            let (b, s, hidden) = (a.shape()[0], a.shape()[1], a.shape()[2]);
            if heads <= 0 || hidden % heads as usize != 0 {
                return Err(format!("{what} hidden size {hidden} is not a multiple of {heads} heads"));
            }
            let h = heads as usize;
            let split = a.into_shape_with_order((b, s, h, hidden / h)).map_err(|e| e.to_string())?;
            Ok(split.permuted_axes([0, 2, 1, 3]).as_standard_layout().into_owned())
        }
        r => Err(format!("{what} must be 3-D or 4-D, found rank {r}")),
    }
}

/// Concatenates a past cache `[batch, heads, past, dim]` before the new
/// keys or values along the sequence axis.
fn with_past(past: Option<&Tensor>, new: Array4<f64>, what: &str) -> KResult<Array4<f64>> {
    let Some(p) = past else { return Ok(new) };
    let p = to_f64_array(p, what)?;
    let p: Array4<f64> = p.into_dimensionality().map_err(|_| format!("{what} must be 4-D"))?;
    ndarray::concatenate(Axis(2), &[p.view(), new.view()])
        .map_err(|_| format!("{what} of shape {:?} does not fit the new values {:?}", p.shape(), new.shape()))
}

/// `Attention` (ONNX 23/24), following the ONNX reference: scores
/// `(Q·√scale)(K·√scale)ᵀ`, softcap, then the bias from the mask (bool:
/// false → -inf; float: added; shorter masks padded with -inf), the causal
/// mask aligned so query i sees keys `j <= i + past`, and the padding mask
/// from `nonpad_kv_seqlen`; softmax over keys, times V. Query heads share
/// key/value heads in groups (GQA). Outputs Y, present_key, present_value
/// and the scores at the point `qk_matmul_output_mode` selects.
fn attention(attrs: &AttentionAttrs, inputs: &[Option<Tensor>], num_outputs: usize) -> KResult<Vec<Option<Tensor>>> {
    let q_t = required(inputs, 0, "Q")?;
    let k_t = required(inputs, 1, "K")?;
    let v_t = required(inputs, 2, "V")?;
    let three_d = q_t.shape().len() == 3;
    if k_t.shape().len() != q_t.shape().len() || v_t.shape().len() != q_t.shape().len() {
        return Err(format!(
            "Q, K and V must have one rank, found {:?}, {:?} and {:?}",
            q_t.shape(),
            k_t.shape(),
            v_t.shape()
        ));
    }
    let q = to_heads(q_t, attrs.q_num_heads, "Q")?;
    let k = to_heads(k_t, attrs.kv_num_heads, "K")?;
    let v = to_heads(v_t, attrs.kv_num_heads, "V")?;
    let past_key = optional(inputs, 4);
    let past_len = past_key.map_or(0, |p| p.shape().get(2).copied().unwrap_or(0));
    let k = with_past(past_key, k, "past_key")?;
    let v = with_past(optional(inputs, 5), v, "past_value")?;
    let (batch, q_heads, q_len, head_dim) = q.dim();
    let (kb, kv_heads, kv_len, k_dim) = k.dim();
    let (vb, v_heads, v_len, v_dim) = v.dim();
    if kb != batch || vb != batch || k_dim != head_dim || v_heads != kv_heads || v_len != kv_len {
        return Err(format!(
            "inconsistent Q {:?}, K {:?} and V {:?} (after the past caches)",
            q.shape(),
            k.shape(),
            v.shape()
        ));
    }
    if kv_heads == 0 || q_heads % kv_heads != 0 {
        return Err(format!("{q_heads} query heads cannot share {kv_heads} key/value heads"));
    }
    let group = q_heads / kv_heads;
    let scale = attrs.scale.map_or(1.0 / (head_dim as f64).sqrt(), |s| s as f64).sqrt();

    let bias = attention_bias(attrs, inputs, [batch, q_heads, q_len, kv_len], past_len)?;
    let mut y = Array4::<f64>::zeros((batch, q_heads, q_len, v_dim));
    let mut qk_out = Array4::<f64>::zeros((batch, q_heads, q_len, kv_len));
    let mut scores = vec![0.0; kv_len];
    let mut probs = vec![0.0; kv_len];
    for b in 0..batch {
        for h in 0..q_heads {
            let kh = h / group;
            let (qm, km, vm) = (q.slice(s![b, h, .., ..]), k.slice(s![b, kh, .., ..]), v.slice(s![b, kh, .., ..]));
            for i in 0..q_len {
                let qi = qm.row(i);
                for (j, sc) in scores.iter_mut().enumerate() {
                    let dot: f64 = qi.iter().zip(km.row(j)).map(|(&a, &c)| (a * scale) * (c * scale)).sum();
                    *sc = if attrs.softcap > 0.0 {
                        let cap = attrs.softcap as f64;
                        cap * (dot / cap).tanh()
                    } else {
                        dot
                    };
                }
                for j in 0..kv_len {
                    let biased = scores[j] + bias[[b, h, i, j]];
                    probs[j] = biased;
                    qk_out[[b, h, i, j]] = match attrs.qk_matmul_output_mode {
                        2 => biased,
                        _ => scores[j],
                    };
                }
                let lane = probs.clone();
                softmax_lane(&lane, &mut probs, false);
                if attrs.qk_matmul_output_mode == 3 {
                    for j in 0..kv_len {
                        qk_out[[b, h, i, j]] = probs[j];
                    }
                }
                let mut yi = y.slice_mut(s![b, h, i, ..]);
                for (j, &p) in probs.iter().enumerate() {
                    if p != 0.0 {
                        yi.scaled_add(p, &vm.row(j));
                    }
                }
            }
        }
    }
    let dtype = q_t.dtype();
    let y = if three_d {
        y.permuted_axes([0, 2, 1, 3])
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order(IxDyn(&[batch, q_len, q_heads * v_dim]))
            .map_err(|e| e.to_string())?
    } else {
        y.into_dyn()
    };
    let mut out = vec![Some(from_f64_array(dtype, &y))];
    if num_outputs > 1 {
        out.push(Some(from_f64_array(k_t.dtype(), &k.into_dyn())));
    }
    if num_outputs > 2 {
        out.push(Some(from_f64_array(v_t.dtype(), &v.into_dyn())));
    }
    if num_outputs > 3 {
        if !(0..=3).contains(&attrs.qk_matmul_output_mode) {
            return Err(format!("qk_matmul_output_mode must be 0 to 3, found {}", attrs.qk_matmul_output_mode));
        }
        out.push(Some(from_f64_array(dtype, &qk_out.into_dyn())));
    }
    Ok(out)
}

/// ONNX-27 `LinearAttention`: the recurrence of the op's spec run token by
/// token, in f64. Query head `h` reads the state of key/value head
/// `h / (q_num_heads / kv_num_heads)`.
fn linear_attention(attrs: &LinearAttentionAttrs, inputs: &[Option<Tensor>]) -> KResult<Vec<Option<Tensor>>> {
    let q_t = required(inputs, 0, "query")?;
    let k_t = required(inputs, 1, "key")?;
    let v_t = required(inputs, 2, "value")?;
    let (q, k, v) = (to_f64_array(q_t, "query")?, to_f64_array(k_t, "key")?, to_f64_array(v_t, "value")?);
    if q.ndim() != 3 || k.ndim() != 3 || v.ndim() != 3 {
        return Err(format!(
            "query, key and value must be rank 3 (B, T, H*D), found {:?}, {:?} and {:?}",
            q.shape(),
            k.shape(),
            v.shape()
        ));
    }
    let (hq, hkv) = (attrs.q_num_heads, attrs.kv_num_heads);
    if hq <= 0 || hkv <= 0 || hq % hkv != 0 {
        return Err(format!("q_num_heads {hq} must be a positive multiple of kv_num_heads {hkv}"));
    }
    let (hq, hkv) = (hq as usize, hkv as usize);
    let (batch, steps) = (q.shape()[0], q.shape()[1]);
    if q.shape()[2] % hq != 0 || k.shape()[2] % hkv != 0 || v.shape()[2] % hkv != 0 {
        return Err(format!(
            "packed sizes {}, {} and {} do not split into {hq}, {hkv} and {hkv} heads",
            q.shape()[2],
            k.shape()[2],
            v.shape()[2]
        ));
    }
    let (dk, dv) = (q.shape()[2] / hq, v.shape()[2] / hkv);
    if k.shape() != [batch, steps, hkv * dk] || v.shape()[..2] != [batch, steps] {
        return Err(format!("key {:?} and value {:?} do not match query {:?}", k.shape(), v.shape(), q.shape()));
    }
    let rule = attrs.update_rule;
    let decay = optional(inputs, 4).map(|t| to_f64_array(t, "decay")).transpose()?;
    let beta = optional(inputs, 5).map(|t| to_f64_array(t, "beta")).transpose()?;
    if rule.is_gated() != decay.is_some() {
        return Err(format!("update_rule {} {} the decay input", rule.name(), if rule.is_gated() { "needs" } else { "forbids" }));
    }
    if rule.is_delta() != beta.is_some() {
        return Err(format!("update_rule {} {} the beta input", rule.name(), if rule.is_delta() { "needs" } else { "forbids" }));
    }
    // Decay per key dim (last axis Hkv*dk) or per head (Hkv); beta per head or shared (1).
    let decay_per_dim = match &decay {
        Some(d) if d.ndim() == 3 && d.shape()[..2] == [batch, steps] && d.shape()[2] == hkv * dk => true,
        Some(d) if d.ndim() == 3 && d.shape()[..2] == [batch, steps] && d.shape()[2] == hkv => false,
        Some(d) => return Err(format!("decay has shape {:?}; expected [{batch}, {steps}, {hkv} or {}]", d.shape(), hkv * dk)),
        None => false,
    };
    let beta_per_head = match &beta {
        Some(b) if b.ndim() == 3 && b.shape()[..2] == [batch, steps] && b.shape()[2] == hkv => true,
        Some(b) if b.ndim() == 3 && b.shape()[..2] == [batch, steps] && b.shape()[2] == 1 => false,
        Some(b) => return Err(format!("beta has shape {:?}; expected [{batch}, {steps}, {hkv} or 1]", b.shape())),
        None => false,
    };
    let mut state = match optional(inputs, 3) {
        Some(p) => {
            let p = to_f64_array(p, "past_state")?;
            if p.shape() != [batch, hkv, dk, dv] {
                return Err(format!("past_state has shape {:?}; expected {:?}", p.shape(), [batch, hkv, dk, dv]));
            }
            p.into_dimensionality::<ndarray::Ix4>().map_err(|e| e.to_string())?
        }
        None => Array4::<f64>::zeros((batch, hkv, dk, dv)),
    };
    let state_dtype = optional(inputs, 3).map_or(q_t.dtype(), |p| p.dtype());
    let scale = attrs.scale.map_or(1.0 / (dk as f64).sqrt(), |s| s as f64);
    let group = hq / hkv;
    let mut out = ArrayD::<f64>::zeros(IxDyn(&[batch, steps, hq * dv]));
    let mut vt = vec![0.0; dv];
    for b in 0..batch {
        for t in 0..steps {
            for h in 0..hkv {
                let kt = |i: usize| k[[b, t, h * dk + i]];
                if let Some(d) = &decay {
                    for i in 0..dk {
                        let g = if decay_per_dim { d[[b, t, h * dk + i]] } else { d[[b, t, h]] };
                        let factor = g.exp();
                        state.slice_mut(s![b, h, i, ..]).mapv_inplace(|x| x * factor);
                    }
                }
                for (m, x) in vt.iter_mut().enumerate() {
                    *x = v[[b, t, h * dv + m]];
                }
                if let Some(be) = &beta {
                    let rate = if beta_per_head { be[[b, t, h]] } else { be[[b, t, 0]] };
                    for (m, x) in vt.iter_mut().enumerate() {
                        let retrieved: f64 = (0..dk).map(|i| state[[b, h, i, m]] * kt(i)).sum();
                        *x = rate * (*x - retrieved);
                    }
                }
                for i in 0..dk {
                    let ki = kt(i);
                    for (m, &x) in vt.iter().enumerate() {
                        state[[b, h, i, m]] += ki * x;
                    }
                }
            }
            for h in 0..hq {
                let kh = h / group;
                for m in 0..dv {
                    let read: f64 = (0..dk).map(|i| q[[b, t, h * dk + i]] * state[[b, kh, i, m]]).sum();
                    out[[b, t, h * dv + m]] = scale * read;
                }
            }
        }
    }
    Ok(vec![Some(from_f64_array(q_t.dtype(), &out)), Some(from_f64_array(state_dtype, &state.into_dyn()))])
}

/// The additive bias `[batch, heads, q_len, kv_len]` from the optional mask
/// (input 3), the causal flag and `nonpad_kv_seqlen` (input 6).
fn attention_bias(
    attrs: &AttentionAttrs,
    inputs: &[Option<Tensor>],
    dims: [usize; 4],
    past_len: usize,
) -> KResult<Array4<f64>> {
    let [batch, _, q_len, kv_len] = dims;
    let mut bias = Array4::<f64>::zeros(dims);
    if let Some(mask) = optional(inputs, 3) {
        let m: ArrayD<f64> = match mask {
            Tensor::Bool(a) => a.mapv(|keep| if keep { 0.0 } else { f64::NEG_INFINITY }),
            t => to_f64_array(t, "attn_mask")?,
        };
        let width = m.shape().last().copied().unwrap_or(0);
        if m.ndim() == 0 || m.ndim() > 4 || width > kv_len {
            return Err(format!("attn_mask of shape {:?} does not fit scores [.., {q_len}, {kv_len}]", mask.shape()));
        }
        // Keys past the mask's width are masked out, as the reference pads.
        let mut padded_shape = m.shape().to_vec();
        *padded_shape.last_mut().expect("rank >= 1") = kv_len;
        let mut padded = ArrayD::from_elem(IxDyn(&padded_shape), f64::NEG_INFINITY);
        padded.slice_axis_mut(Axis(m.ndim() - 1), (0..width).into()).assign(&m);
        let view = padded
            .broadcast(IxDyn(&dims))
            .ok_or_else(|| format!("attn_mask of shape {:?} does not broadcast to {dims:?}", mask.shape()))?;
        bias.assign(&view.into_dimensionality::<ndarray::Ix4>().expect("rank 4"));
    }
    if attrs.is_causal {
        for i in 0..q_len {
            for j in (i + past_len + 1).min(kv_len)..kv_len {
                bias.slice_mut(s![.., .., i, j]).fill(f64::NEG_INFINITY);
            }
        }
    }
    if let Some(lens) = optional(inputs, 6) {
        let lens = int_values(lens, "nonpad_kv_seqlen")?;
        if lens.len() != batch {
            return Err(format!("nonpad_kv_seqlen has {} entries for a batch of {batch}", lens.len()));
        }
        for (b, &len) in lens.iter().enumerate() {
            let start = usize::try_from(len.max(0)).unwrap_or(0).min(kv_len);
            bias.slice_mut(s![b, .., .., start..]).fill(f64::NEG_INFINITY);
        }
    }
    Ok(bias)
}

// ---------------------------------------------------------------- losses

/// Negative log-likelihood of `log_prob [N, C, d1..]` at `target [N, d1..]`,
/// weighted by `weight[target]` (1 without weights); targets equal to
/// `ignore_index` contribute 0 with weight 0. `mean` divides by the total
/// weight of the counted targets.
fn nll(
    log_prob: &Tensor,
    target: &Tensor,
    weight: Option<&Tensor>,
    reduction: LossReduction,
    ignore_index: Option<i64>,
) -> KResult<Tensor> {
    let x = to_f64_array(log_prob, "input")?;
    if x.ndim() < 2 {
        return Err(format!("input must be [N, C, ...], found shape {:?}", x.shape()));
    }
    let (n, c) = (x.shape()[0], x.shape()[1]);
    let inner: usize = x.shape()[2..].iter().product();
    let expected: Vec<usize> = [n].into_iter().chain(x.shape()[2..].iter().copied()).collect();
    if target.shape() != expected.as_slice() {
        return Err(format!("target must have shape {expected:?}, found {:?}", target.shape()));
    }
    let labels = int_values(target, "target")?;
    let weights = weight.map(|w| w.to_f64s());
    if let Some(w) = &weights {
        if w.len() != c {
            return Err(format!("weight must have C = {c} elements, found {}", w.len()));
        }
    }
    let xs = x.as_slice().expect("a fresh array is contiguous");
    let mut losses = vec![0.0; labels.len()];
    let mut total_weight = 0.0;
    for i in 0..n {
        for d in 0..inner {
            let at = i * inner + d;
            let label = labels[at];
            if Some(label) == ignore_index {
                continue;
            }
            let class = usize::try_from(label)
                .ok()
                .filter(|&l| l < c)
                .ok_or_else(|| format!("target {label} is outside the {c} classes"))?;
            let w = weights.as_ref().map_or(1.0, |w| w[class]);
            losses[at] = -xs[(i * c + class) * inner + d] * w;
            total_weight += w;
        }
    }
    let dtype = log_prob.dtype();
    Ok(match reduction {
        LossReduction::None => Tensor::from_f64s(dtype, target.shape(), &losses),
        LossReduction::Sum => Tensor::from_f64s(dtype, &[], &[losses.iter().sum()]),
        LossReduction::Mean => Tensor::from_f64s(dtype, &[], &[losses.iter().sum::<f64>() / total_weight]),
    })
}

/// The attributes of `kiln::CrossEntropy` in the precision the kernel
/// works in.
pub(super) struct CrossEntropyParams {
    pub(super) reduction: LossReduction,
    pub(super) ignore_index: Option<i64>,
    pub(super) label_smoothing: f64,
    pub(super) z_loss: f64,
}

/// `kiln::CrossEntropy` (spec in [`crate::op`]): per sample, one max pass
/// and one exp-sum pass over the classes in f64, then the loss straight
/// from the logits and the log-sum-exp. `log_prob` is only materialized
/// when asked for, since the whole point of the op is not to need it.
fn cross_entropy(
    logits: &Tensor,
    labels: &Tensor,
    weight: Option<&Tensor>,
    p: CrossEntropyParams,
    with_log_prob: bool,
) -> KResult<(Tensor, Option<Tensor>)> {
    let x = to_f64_array(logits, "logits")?;
    if x.ndim() < 2 {
        return Err(format!("logits must be [N, C, ...], found shape {:?}", x.shape()));
    }
    let (n, c) = (x.shape()[0], x.shape()[1]);
    let inner: usize = x.shape()[2..].iter().product();
    let expected: Vec<usize> = [n].into_iter().chain(x.shape()[2..].iter().copied()).collect();
    if labels.shape() != expected.as_slice() {
        return Err(format!("labels must have shape {expected:?}, found {:?}", labels.shape()));
    }
    let label_values = int_values(labels, "labels")?;
    let weights = weight.map(|w| w.to_f64s());
    if let Some(w) = &weights {
        if w.len() != c {
            return Err(format!("weight must have C = {c} elements, found {}", w.len()));
        }
    }
    let xs = x.as_slice().expect("a fresh array is contiguous");
    let class_weight = |k: usize| weights.as_ref().map_or(1.0, |w| w[k]);
    let mut losses = vec![0.0; label_values.len()];
    let mut log_prob = with_log_prob.then(|| vec![0.0; xs.len()]);
    let mut total_weight = 0.0;
    for i in 0..n {
        for d in 0..inner {
            let at = i * inner + d;
            let logit = |k: usize| xs[(i * c + k) * inner + d];
            let max = (0..c).map(logit).fold(f64::NEG_INFINITY, f64::max);
            // An all -inf row has no finite max to subtract; its sum is then 0
            // and the lse -inf, as the plain formula gives.
            let shift = if max.is_finite() { max } else { 0.0 };
            let lse = shift + (0..c).map(|k| (logit(k) - shift).exp()).sum::<f64>().ln();
            if let Some(lp) = log_prob.as_mut() {
                for k in 0..c {
                    lp[(i * c + k) * inner + d] = logit(k) - lse;
                }
            }
            let label = label_values[at];
            if Some(label) == p.ignore_index {
                continue;
            }
            let class = usize::try_from(label)
                .ok()
                .filter(|&l| l < c)
                .ok_or_else(|| format!("label {label} is outside the {c} classes"))?;
            let w = class_weight(class);
            let mut loss = w * ((1.0 - p.label_smoothing) * (lse - logit(class)) + p.z_loss * lse * lse);
            if p.label_smoothing != 0.0 {
                let smooth: f64 = (0..c).map(|k| class_weight(k) * (lse - logit(k))).sum();
                loss += p.label_smoothing / c as f64 * smooth;
            }
            losses[at] = loss;
            total_weight += w;
        }
    }
    let dtype = logits.dtype();
    let loss = match p.reduction {
        LossReduction::None => Tensor::from_f64s(dtype, labels.shape(), &losses),
        LossReduction::Sum => Tensor::from_f64s(dtype, &[], &[losses.iter().sum()]),
        LossReduction::Mean => Tensor::from_f64s(dtype, &[], &[losses.iter().sum::<f64>() / total_weight]),
    };
    Ok((loss, log_prob.map(|lp| Tensor::from_f64s(dtype, logits.shape(), &lp))))
}

/// The tensors of `kiln::LinearCrossEntropy`.
pub(super) struct LinearInputs<'a> {
    pub(super) hidden: &'a Tensor,
    pub(super) weight: &'a Tensor,
    pub(super) labels: &'a Tensor,
    pub(super) bias: Option<&'a Tensor>,
    pub(super) class_weight: Option<&'a Tensor>,
}

/// Rows `v0..v1` of the head as `[v1 - v0, d]` f64, row-major, read
/// straight from the weight so the whole head is never copied to f64.
pub(super) fn head_rows(weight: &Tensor, transpose_weight: bool, v0: usize, v1: usize) -> Vec<f64> {
    use crate::tensor::Element;
    crate::for_each_tensor!(weight, a => if transpose_weight {
        a.slice(s![v0..v1, ..]).iter().map(|v| v.to_f64()).collect()
    } else {
        a.slice(s![.., v0..v1]).t().iter().map(|v| v.to_f64()).collect()
    })
}

/// Rows `r0..r1` of `hidden` (`[N, d]`) as `[r1 - r0, d]` f64, row-major:
/// the kernels widen one row block at a time, so their memory does not grow
/// with `N`.
pub(super) fn hidden_rows(hidden: &Tensor, r0: usize, r1: usize) -> Vec<f64> {
    use crate::tensor::Element;
    crate::for_each_tensor!(hidden, a => a.slice(s![r0..r1, ..]).iter().map(|v| v.to_f64()).collect())
}

/// Rows per logit tile of the forward pass. A tile is `FORWARD_ROW_BLOCK ×
/// chunk` f64 (8 MiB at the default chunk of 4096) next to the chunk of the
/// head (`chunk × d`) and the row block of `hidden` (`FORWARD_ROW_BLOCK ×
/// d`); 256 rows is enough for the matrix product to run at its blocked
/// kernel's speed while keeping the tile small.
pub(super) const FORWARD_ROW_BLOCK: usize = 256;

/// Per-row state of the online log-sum-exp over the vocabulary.
#[derive(Clone, Copy)]
pub(super) struct RowState {
    /// Largest logit so far.
    max: f64,
    /// Σ exp(x - max) over the logits so far.
    sum: f64,
    /// The label's logit, once its chunk was seen.
    target: f64,
    /// Σ_c w_c x_c, for label smoothing.
    weighted_logits: f64,
}

impl RowState {
    /// `log Σ_c exp(x_c)` of the logits folded in so far.
    pub(super) fn lse(&self) -> f64 {
        if self.max.is_finite() {
            self.max + self.sum.ln()
        } else {
            self.max
        }
    }
}

/// The checked form of `kiln::LinearCrossEntropy`'s inputs, shared by the
/// forward kernel and its gradient ([`super::lce_grad`]). Only per-row and
/// per-class vectors are converted; `hidden` and the head stay in their
/// tensors and are widened a block at a time ([`hidden_rows`],
/// [`head_rows`]).
pub(super) struct LinearProblem {
    /// Rows of `hidden` (samples).
    pub(super) n: usize,
    /// Hidden size.
    pub(super) d: usize,
    /// Vocabulary size.
    pub(super) vocab: usize,
    /// Each row's label, `None` for a row whose label is `ignore_index`.
    pub(super) classes: Vec<Option<usize>>,
    /// The bias `[vocab]`, when given.
    pub(super) bias: Option<Vec<f64>>,
    /// The class weights `[vocab]`, when given.
    pub(super) class_weight: Option<Vec<f64>>,
}

impl LinearProblem {
    /// Checks the shapes and labels of `t` (spec in [`crate::op`]) and
    /// converts the per-class vectors to f64; `hidden` and the head stay in
    /// their tensors.
    pub(super) fn new(t: &LinearInputs, ignore_index: Option<i64>, transpose_weight: bool) -> KResult<LinearProblem> {
        let (hs, ws) = (t.hidden.shape(), t.weight.shape());
        if hs.len() != 2 || ws.len() != 2 {
            return Err(format!("hidden and weight must be matrices, found shapes {hs:?} and {ws:?}"));
        }
        let (n, d) = (hs[0], hs[1]);
        let (vocab, depth) = if transpose_weight { (ws[0], ws[1]) } else { (ws[1], ws[0]) };
        if depth != d {
            return Err(format!("weight of shape {ws:?} does not match hidden size {d}"));
        }
        if t.labels.shape() != [n] {
            return Err(format!("labels must have shape [{n}], found {:?}", t.labels.shape()));
        }
        let labels = int_values(t.labels, "labels")?;
        let per_vocab = |v: Option<&Tensor>, what: &str| -> KResult<Option<Vec<f64>>> {
            match v {
                Some(v) if v.shape() != [vocab] => {
                    Err(format!("{what} must have shape [{vocab}], found {:?}", v.shape()))
                }
                v => Ok(v.map(Tensor::to_f64s)),
            }
        };
        let bias = per_vocab(t.bias, "bias")?;
        let class_weight = per_vocab(t.class_weight, "class weight")?;
        let mut classes = Vec::with_capacity(n);
        for &label in &labels {
            classes.push(if Some(label) == ignore_index {
                None
            } else {
                Some(
                    usize::try_from(label)
                        .ok()
                        .filter(|&l| l < vocab)
                        .ok_or_else(|| format!("label {label} is outside the {vocab} classes"))?,
                )
            });
        }
        Ok(LinearProblem { n, d, vocab, classes, bias, class_weight })
    }

    /// The class weight of vocabulary entry `k` (1 without class weights).
    pub(super) fn class_weight(&self, k: usize) -> f64 {
        self.class_weight.as_ref().map_or(1.0, |w| w[k])
    }

    /// The logit tile `x_ik` for the rows of `hidden_block` (`[rows, d]`, as
    /// [`hidden_rows`] gives them) and the vocabulary entries `v0..v1`, from
    /// those entries' head rows `head` (`[v1 - v0, d]`, as [`head_rows`]
    /// gives them) and the bias, into `tile` (`[rows, v1 - v0]`, row-major).
    ///
    /// The product is one f64 matrix product (matrixmultiply's blocked
    /// dgemm through ndarray). f64 rather than f32: each logit is then the
    /// dot product of the widened inputs accumulated in f64, as accurate
    /// as the scalar f64 loop it replaces and more accurate than the
    /// unfused `MatMul`'s f32 logits, so the online log-sum-exp, which
    /// accumulates in f64, gets f64 inputs. It costs about twice an f32
    /// product, and the logits never need rounding to the input dtype.
    pub(super) fn logits_tile(&self, hidden_block: &[f64], head: &[f64], v0: usize, v1: usize, tile: &mut [f64]) {
        let (d, width) = (self.d, v1 - v0);
        let rows = tile.len().checked_div(width).unwrap_or(0);
        let h = ArrayView2::from_shape((rows, d), hidden_block).expect("hidden_block is [rows, d] by construction");
        let w = ArrayView2::from_shape((width, d), head).expect("head is [width, d] by construction");
        let mut x = ArrayViewMut2::from_shape((rows, width), tile).expect("tile is [rows, width] by construction");
        general_mat_mul(1.0, &h, &w.t(), 0.0, &mut x);
        if let Some(bias) = &self.bias {
            let bias = &bias[v0..v0 + width];
            for mut row in x.rows_mut() {
                for (x, b) in row.iter_mut().zip(bias) {
                    *x += b;
                }
            }
        }
    }

    /// The forward pass over the vocabulary in chunks of `chunk` entries
    /// and the rows in blocks of [`FORWARD_ROW_BLOCK`]: each tile's logits
    /// come from one matrix product ([`Self::logits_tile`]) and fold into
    /// each row's online log-sum-exp. Ignored rows keep their start state.
    pub(super) fn row_states(
        &self,
        hidden: &Tensor,
        weight: &Tensor,
        transpose_weight: bool,
        chunk: usize,
        label_smoothing: f64,
    ) -> Vec<RowState> {
        let start = RowState { max: f64::NEG_INFINITY, sum: 0.0, target: 0.0, weighted_logits: 0.0 };
        let mut rows = vec![start; self.n];
        let row_block = FORWARD_ROW_BLOCK.min(self.n.max(1));
        let mut tile = vec![0.0; row_block * chunk.min(self.vocab)];
        for v0 in (0..self.vocab).step_by(chunk) {
            let v1 = (v0 + chunk).min(self.vocab);
            let width = v1 - v0;
            let head = head_rows(weight, transpose_weight, v0, v1);
            for r0 in (0..self.n).step_by(row_block) {
                let r1 = (r0 + row_block).min(self.n);
                // A block of ignored rows has nothing to fold in.
                if self.classes[r0..r1].iter().all(Option::is_none) {
                    continue;
                }
                let block = hidden_rows(hidden, r0, r1);
                let tile = &mut tile[..(r1 - r0) * width];
                self.logits_tile(&block, &head, v0, v1, tile);
                for ((class, row), logits) in
                    self.classes[r0..r1].iter().zip(&mut rows[r0..r1]).zip(tile.chunks_exact(width))
                {
                    let Some(class) = *class else {
                        continue;
                    };
                    let chunk_max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let max = row.max.max(chunk_max);
                    // Until some logit is finite there is nothing to rescale by.
                    if max.is_finite() {
                        let rescale = if row.sum == 0.0 { 0.0 } else { (row.max - max).exp() };
                        row.sum = row.sum * rescale + logits.iter().map(|x| (x - max).exp()).sum::<f64>();
                        row.max = max;
                    }
                    if (v0..v1).contains(&class) {
                        row.target = logits[class - v0];
                    }
                    if label_smoothing != 0.0 {
                        row.weighted_logits +=
                            logits.iter().enumerate().map(|(k, x)| self.class_weight(v0 + k) * x).sum::<f64>();
                    }
                }
            }
        }
        rows
    }

    /// Each row's loss `l_i` (0 for ignored rows) and the mean's divisor
    /// `Σ_i w_{y_i}` over the counted rows.
    pub(super) fn losses(&self, rows: &[RowState], p: &CrossEntropyParams) -> (Vec<f64>, f64) {
        let total_class_weight: f64 = (0..self.vocab).map(|k| self.class_weight(k)).sum();
        let mut losses = vec![0.0; self.n];
        let mut total_weight = 0.0;
        for (i, row) in rows.iter().enumerate() {
            let Some(class) = self.classes[i] else {
                continue;
            };
            let lse = row.lse();
            let w = self.class_weight(class);
            let mut loss = w * ((1.0 - p.label_smoothing) * (lse - row.target) + p.z_loss * lse * lse);
            if p.label_smoothing != 0.0 {
                loss += p.label_smoothing / self.vocab as f64 * (lse * total_class_weight - row.weighted_logits);
            }
            losses[i] = loss;
            total_weight += w;
        }
        (losses, total_weight)
    }
}

/// The loss output of `kiln::LinearCrossEntropy` from the per-row losses.
pub(super) fn reduce_losses(dtype: DType, reduction: LossReduction, losses: &[f64], total_weight: f64) -> Tensor {
    match reduction {
        LossReduction::None => Tensor::from_f64s(dtype, &[losses.len()], losses),
        LossReduction::Sum => Tensor::from_f64s(dtype, &[], &[losses.iter().sum()]),
        LossReduction::Mean => Tensor::from_f64s(dtype, &[], &[losses.iter().sum::<f64>() / total_weight]),
    }
}

/// `kiln::LinearCrossEntropy` (spec in [`crate::op`]): the logits are
/// computed one tile of [`FORWARD_ROW_BLOCK`] rows × `chunk` vocabulary
/// entries at a time by an f64 matrix product and fold into each row's
/// online log-sum-exp, so the extra memory is one row block of `hidden` and
/// one chunk of the head in f64, one tile of logits and a few numbers per
/// row: it does not grow with `N` beyond the per-row state, and is never
/// `N × V`.
fn linear_cross_entropy(
    t: LinearInputs,
    p: CrossEntropyParams,
    transpose_weight: bool,
    chunk: usize,
) -> KResult<Tensor> {
    let problem = LinearProblem::new(&t, p.ignore_index, transpose_weight)?;
    let rows = problem.row_states(t.hidden, t.weight, transpose_weight, chunk, p.label_smoothing);
    let (losses, total_weight) = problem.losses(&rows, &p);
    Ok(reduce_losses(t.hidden.dtype(), p.reduction, &losses, total_weight))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32s(shape: &[usize], v: &[f64]) -> Tensor {
        Tensor::from_f64s(DType::F32, shape, v)
    }

    #[test]
    fn softmax_is_stable_and_axis_aware() {
        let x = f32s(&[2, 2], &[1000.0, 1000.0, 0.0, 1.0]);
        let r = softmax(&x, 0, false).unwrap().to_f64s();
        assert_eq!(r[0], 1.0);
        assert!((r[1] - 1.0).abs() < 1e-6);
        let l = softmax(&x, -1, true).unwrap().to_f64s();
        assert!((l[0] - (0.5f64).ln()).abs() < 1e-6);
    }

    #[test]
    fn layer_norm_statistics_shapes() {
        let x = f32s(&[2, 2], &[1.0, 3.0, 2.0, 2.0]);
        let one = f32s(&[2], &[1.0, 1.0]);
        let (y, mean, inv) = layer_norm(&x, &one, None, -1, 0.0, DType::F32).unwrap();
        assert_eq!(mean.shape(), &[2, 1]);
        assert_eq!(mean.to_f64s(), vec![2.0, 2.0]);
        assert_eq!(y.to_f64s()[..2], [-1.0, 1.0]);
        assert!(inv.to_f64s()[1].is_infinite());
    }

    #[test]
    fn nll_mean_counts_only_unignored_weight() {
        let lp = f32s(&[3, 2], &[-1.0, -2.0, -3.0, -4.0, -5.0, -6.0]);
        let target = Tensor::from_i64s(DType::I64, &[3], &[0, 1, 1]);
        let r = nll(&lp, &target, None, LossReduction::Mean, Some(1)).unwrap();
        assert_eq!(r.to_f64s(), vec![1.0]);
        let bad = Tensor::from_i64s(DType::I64, &[3], &[0, 2, 1]);
        assert!(nll(&lp, &bad, None, LossReduction::Sum, None).is_err());
    }

    /// Deterministic pseudo-random values in [-scale, scale) (an LCG, so the
    /// test needs no RNG state shared with other tests).
    fn noise(seed: u64, len: usize, scale: f64) -> Vec<f64> {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    fn labels(seed: u64, shape: &[usize], classes: usize, ignore: Option<i64>) -> Tensor {
        let len: usize = shape.iter().product();
        let v: Vec<i64> = noise(seed, len, 1.0)
            .iter()
            .enumerate()
            .map(|(k, r)| match ignore {
                // Every third sample is ignored, so ignore_index always matters.
                Some(ig) if k % 3 == 1 => ig,
                _ => (((r + 1.0) / 2.0 * classes as f64) as i64).min(classes as i64 - 1),
            })
            .collect();
        Tensor::from_i64s(DType::I64, shape, &v)
    }

    fn rel_close(a: &[f64], b: &[f64], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-5 * y.abs().max(1e-6), "{what}: {x} vs {y}");
        }
    }

    fn plain(reduction: LossReduction, ignore_index: Option<i64>) -> CrossEntropyParams {
        CrossEntropyParams { reduction, ignore_index, label_smoothing: 0.0, z_loss: 0.0 }
    }

    #[test]
    fn cross_entropy_equals_softmax_cross_entropy_loss() {
        let shapes: [&[usize]; 3] = [&[5, 7], &[3, 4, 2], &[2, 6, 3, 2]];
        for (si, shape) in shapes.into_iter().enumerate() {
            let c = shape[1];
            let x = f32s(shape, &noise(si as u64, shape.iter().product(), 8.0));
            let label_shape: Vec<usize> = [shape[0]].into_iter().chain(shape[2..].iter().copied()).collect();
            let w = f32s(&[c], &noise(100 + si as u64, c, 1.0).iter().map(|v| v + 1.5).collect::<Vec<_>>());
            for reduction in [LossReduction::None, LossReduction::Sum, LossReduction::Mean] {
                for ignore_index in [None, Some(-100), Some(1)] {
                    let y = labels(7 + si as u64, &label_shape, c, ignore_index);
                    for weight in [None, Some(&w)] {
                        let what = format!("{shape:?} {reduction:?} {ignore_index:?} weighted={}", weight.is_some());
                        let sce = Op::SoftmaxCrossEntropyLoss { reduction, ignore_index };
                        let inputs = [Some(x.clone()), Some(y.clone()), weight.cloned()];
                        let want = eval(&sce, &inputs, 2).unwrap();
                        let ce = Op::CrossEntropy { reduction, ignore_index, label_smoothing: 0.0, z_loss: 0.0 };
                        let got = eval(&ce, &inputs, 2).unwrap();
                        for k in 0..2 {
                            let (g, w) = (got[k].as_ref().unwrap(), want[k].as_ref().unwrap());
                            assert_eq!(g.shape(), w.shape(), "{what}");
                            assert_eq!(g.dtype(), w.dtype(), "{what}");
                            rel_close(&g.to_f64s(), &w.to_f64s(), &what);
                        }
                        let (loss_only, lp) = cross_entropy(&x, &y, weight, plain(reduction, ignore_index), false).unwrap();
                        assert!(lp.is_none());
                        rel_close(&loss_only.to_f64s(), &want[0].as_ref().unwrap().to_f64s(), &what);
                    }
                }
            }
        }
    }

    /// The spec's formula written directly, with the softmax formed
    /// explicitly (fine at these magnitudes).
    fn direct(x: &[f64], y: &[i64], w: Option<&[f64]>, n: usize, c: usize, eps: f64, zeta: f64) -> (Vec<f64>, f64) {
        let wt = |k: usize| w.map_or(1.0, |w| w[k]);
        let mut losses = Vec::new();
        let mut total = 0.0;
        for i in 0..n {
            let row = &x[i * c..(i + 1) * c];
            let z: f64 = row.iter().map(|v| v.exp()).sum();
            let log_p: Vec<f64> = row.iter().map(|v| (v.exp() / z).ln()).collect();
            let t = y[i] as usize;
            let smooth: f64 = (0..c).map(|k| -wt(k) * log_p[k]).sum::<f64>() / c as f64;
            losses.push(wt(t) * ((1.0 - eps) * -log_p[t] + zeta * z.ln() * z.ln()) + eps * smooth);
            total += wt(t);
        }
        (losses, total)
    }

    #[test]
    fn label_smoothing_and_z_loss_follow_the_formula() {
        let (n, c) = (6, 5);
        let xv = noise(3, n * c, 4.0);
        let x = f32s(&[n, c], &xv);
        // Compare against the f32-rounded logits the kernel sees.
        let xv = x.to_f64s();
        let y = labels(4, &[n], c, None);
        let yv = int_values(&y, "labels").unwrap();
        let wv: Vec<f64> = noise(5, c, 0.5).iter().map(|v| v + 1.0).collect();
        let w = f32s(&[c], &wv);
        let wv = w.to_f64s();
        for (eps, zeta) in [(0.1, 0.0), (0.0, 1e-2), (0.2, 3e-3)] {
            for weight in [None, Some(&w)] {
                let (losses, total) = direct(&xv, &yv, weight.map(|_| wv.as_slice()), n, c, eps, zeta);
                let what = format!("ε={eps} ζ={zeta} weighted={}", weight.is_some());
                let run = |reduction| {
                    let p = CrossEntropyParams { reduction, ignore_index: None, label_smoothing: eps, z_loss: zeta };
                    cross_entropy(&x, &y, weight, p, false).unwrap().0.to_f64s()
                };
                rel_close(&run(LossReduction::None), &losses, &what);
                rel_close(&run(LossReduction::Sum), &[losses.iter().sum()], &what);
                rel_close(&run(LossReduction::Mean), &[losses.iter().sum::<f64>() / total], &what);
            }
        }
    }

    #[test]
    fn cross_entropy_is_stable_on_huge_logits() {
        let x = f32s(&[2, 3], &[1e30, 0.0, -1e30, 5e3, 5e3, 0.0]);
        let y = Tensor::from_i64s(DType::I64, &[2], &[0, 1]);
        let (loss, lp) = cross_entropy(&x, &y, None, plain(LossReduction::None, None), true).unwrap();
        let loss = loss.to_f64s();
        assert_eq!(loss[0], 0.0);
        assert!((loss[1] - 2f64.ln()).abs() < 1e-6, "{loss:?}");
        assert!(lp.unwrap().to_f64s().iter().all(|v| !v.is_nan()));
        let bad = Tensor::from_i64s(DType::I64, &[2], &[0, 3]);
        assert!(cross_entropy(&x, &bad, None, plain(LossReduction::Sum, None), false).is_err());
    }

    #[test]
    fn linear_cross_entropy_equals_matmul_then_cross_entropy() {
        let (n, d, v) = (7, 4, 11);
        let h = f32s(&[n, d], &noise(21, n * d, 1.5));
        let w_vd = f32s(&[v, d], &noise(22, v * d, 1.5));
        let bias = f32s(&[v], &noise(23, v, 0.5));
        let cw = f32s(&[v], &noise(24, v, 0.5).iter().map(|x| x + 1.0).collect::<Vec<_>>());
        // The [d, V] layout of the same head.
        let wv = w_vd.to_f64s();
        let w_dv: Vec<f64> = (0..d * v).map(|at| wv[(at % v) * d + at / v]).collect();
        let w_dv = Tensor::from_f64s(DType::F32, &[d, v], &w_dv);
        // Reference logits in f64, rounded to f32 once like a MatMul + Add.
        let (hv, bv) = (h.to_f64s(), bias.to_f64s());
        let logits: Vec<f64> = (0..n * v)
            .map(|at| {
                let (i, k) = (at / v, at % v);
                (0..d).map(|j| hv[i * d + j] * wv[k * d + j]).sum::<f64>() + bv[k]
            })
            .collect();
        let logits = Tensor::from_f64s(DType::F64, &[n, v], &logits);
        for ignore_index in [None, Some(2)] {
            let y = labels(25, &[n], v, ignore_index);
            for (eps, zeta) in [(0.0, 0.0), (0.1, 1e-3)] {
                for reduction in [LossReduction::None, LossReduction::Sum, LossReduction::Mean] {
                    let params = || CrossEntropyParams { reduction, ignore_index, label_smoothing: eps, z_loss: zeta };
                    let (want, _) = cross_entropy(&logits, &y, Some(&cw.cast(DType::F64)), params(), false).unwrap();
                    for (weight, transpose) in [(&w_vd, true), (&w_dv, false)] {
                        for chunk in [1, 3, 11, 64] {
                            let got = linear_cross_entropy(
                                LinearInputs {
                                    hidden: &h,
                                    weight,
                                    labels: &y,
                                    bias: Some(&bias),
                                    class_weight: Some(&cw),
                                },
                                params(),
                                transpose,
                                chunk,
                            )
                            .unwrap();
                            let what = format!("{reduction:?} {ignore_index:?} ε={eps} chunk={chunk} t={transpose}");
                            rel_close(&got.to_f64s(), &want.to_f64s(), &what);
                        }
                    }
                }
            }
        }
    }
}
