//! Matrix products: MatMul (numpy semantics), Gemm, MatMulInteger and
//! QLinearMatMul.
//!
//! Float products run through ndarray's `general_mat_mul` (matrixmultiply's
//! blocked kernels) one 2-D matrix per batch entry, which is what keeps a
//! GPT-2-small graph in seconds; f16/bf16 are widened to f32 for the product
//! and rounded once. Integer products use a plain loop with wrapping
//! arithmetic, as numpy does.

use super::util::{
    broadcast_shapes, match_numeric2, narrow_to, optional, required, typed_view, widen_half, wrap, KResult, Num,
};
use crate::dtype::DType;
use crate::op::{GemmAttrs, Op};
use crate::tensor::Tensor;
use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayD, ArrayView2, ArrayViewD, ArrayViewMut2, Axis, Ix2, IxDyn};

pub(crate) fn eval(op: &Op, inputs: &[Option<Tensor>]) -> KResult<Vec<Option<Tensor>>> {
    let out = match op {
        Op::MatMul => matmul(required(inputs, 0, "A")?, required(inputs, 1, "B")?)?,
        Op::Gemm(attrs) => gemm(attrs, required(inputs, 0, "A")?, required(inputs, 1, "B")?, optional(inputs, 2))?,
        Op::MatMulInteger => matmul_integer(
            required(inputs, 0, "A")?,
            required(inputs, 1, "B")?,
            optional(inputs, 2),
            optional(inputs, 3),
        )?,
        Op::QLinearMatMul => qlinear_matmul(inputs)?,
        other => return Err(format!("{} is not a matrix product", other.name())),
    };
    Ok(vec![Some(out)])
}

// ---------------------------------------------------------------- MatMul

/// Numpy `matmul` on tensors of one dtype.
pub(crate) fn matmul(a: &Tensor, b: &Tensor) -> KResult<Tensor> {
    let dtype = a.dtype();
    if b.dtype() != dtype {
        return Err(format!("MatMul needs inputs of one dtype, found {dtype} and {}", b.dtype()));
    }
    let (wa, wb) = (widen_half(a), widen_half(b));
    let r = match (wa.as_ref(), wb.as_ref()) {
        (Tensor::F32(x), Tensor::F32(y)) => wrap(batched_matmul(x.view(), y.view(), float_mm::<f32>)?),
        (Tensor::F64(x), Tensor::F64(y)) => wrap(batched_matmul(x.view(), y.view(), float_mm::<f64>)?),
        _ => match_numeric2!(wa.as_ref(), wb.as_ref(), x, y => wrap(batched_matmul(x.view(), y.view(), int_mm)?),
            else return Err(format!("MatMul does not accept {dtype}"))),
    };
    Ok(narrow_to(r, dtype))
}

fn float_mm<T: ndarray::LinalgScalar>(a: ArrayView2<'_, T>, b: ArrayView2<'_, T>, mut c: ArrayViewMut2<'_, T>) {
    general_mat_mul(T::one(), &a, &b, T::zero(), &mut c);
}

/// `c = a @ b` with wrapping integer arithmetic.
fn int_mm<T: Num>(a: ArrayView2<'_, T>, b: ArrayView2<'_, T>, mut c: ArrayViewMut2<'_, T>) {
    let (m, k) = a.dim();
    for i in 0..m {
        let mut row = c.row_mut(i);
        row.fill(T::zero());
        for p in 0..k {
            let x = a[[i, p]];
            if x == T::zero() {
                continue;
            }
            for (o, &y) in row.iter_mut().zip(b.row(p)) {
                *o = o.add(x.mul(y));
            }
        }
    }
}

/// Numpy `matmul`: 1-D operands are promoted to matrices and the added axis
/// removed from the result; leading (batch) axes broadcast. `mm` computes
/// one 2-D product into a zeroed output.
fn batched_matmul<T: Clone + Default>(
    a: ArrayViewD<'_, T>,
    b: ArrayViewD<'_, T>,
    mm: impl Fn(ArrayView2<'_, T>, ArrayView2<'_, T>, ArrayViewMut2<'_, T>),
) -> KResult<ArrayD<T>> {
    if a.ndim() == 0 || b.ndim() == 0 {
        return Err(format!("MatMul operands must have rank >= 1, found shapes {:?} and {:?}", a.shape(), b.shape()));
    }
    let a_vec = a.ndim() == 1;
    let b_vec = b.ndim() == 1;
    let a = if a_vec { a.insert_axis(Axis(0)) } else { a };
    let b = if b_vec { b.insert_axis(Axis(1)) } else { b };
    let (ar, br) = (a.ndim(), b.ndim());
    let (m, k) = (a.shape()[ar - 2], a.shape()[ar - 1]);
    let (k2, n) = (b.shape()[br - 2], b.shape()[br - 1]);
    if k != k2 {
        return Err(format!("MatMul inner dimensions differ: {:?} @ {:?}", a.shape(), b.shape()));
    }
    let batch = broadcast_shapes(&[&a.shape()[..ar - 2], &b.shape()[..br - 2]])?;
    let count: usize = batch.iter().product();
    let a_full: Vec<usize> = batch.iter().copied().chain([m, k]).collect();
    let b_full: Vec<usize> = batch.iter().copied().chain([k, n]).collect();
    let a_b = a
        .broadcast(IxDyn(&a_full))
        .ok_or_else(|| format!("MatMul batch shapes do not broadcast: {:?} and {:?}", a.shape(), b.shape()))?;
    let b_b = b
        .broadcast(IxDyn(&b_full))
        .ok_or_else(|| format!("MatMul batch shapes do not broadcast: {:?} and {:?}", a.shape(), b.shape()))?;
    let mut out = ndarray::Array3::<T>::default((count, m, n));
    for (i, c) in out.outer_iter_mut().enumerate() {
        mm(matrix_at(&a_b, i, &batch), matrix_at(&b_b, i, &batch), c);
    }
    let mut out_shape = batch;
    if !a_vec {
        out_shape.push(m);
    }
    if !b_vec {
        out_shape.push(n);
    }
    Ok(out.into_shape_with_order(IxDyn(&out_shape)).expect("element count is unchanged"))
}

/// The 2-D matrix at flat batch index `i` of a view shaped `batch + [r, c]`.
fn matrix_at<'a, T>(v: &'a ArrayViewD<'a, T>, mut i: usize, batch: &[usize]) -> ArrayView2<'a, T> {
    let mut m = v.view();
    let mut index = vec![0; batch.len()];
    for (d, &size) in batch.iter().enumerate().rev() {
        index[d] = i % size;
        i /= size;
    }
    for &ix in &index {
        m = m.index_axis_move(Axis(0), ix);
    }
    m.into_dimensionality::<Ix2>().expect("two axes remain after the batch axes")
}

// ---------------------------------------------------------------- Gemm

/// `alpha * op(A) @ op(B) + beta * C` on 2-D inputs, C broadcast to [M, N].
fn gemm(attrs: &GemmAttrs, a: &Tensor, b: &Tensor, c: Option<&Tensor>) -> KResult<Tensor> {
    let dtype = a.dtype();
    for t in [Some(b), c].into_iter().flatten() {
        if t.dtype() != dtype {
            return Err(format!("Gemm needs inputs of one dtype, found {dtype} and {}", t.dtype()));
        }
    }
    if a.shape().len() != 2 || b.shape().len() != 2 {
        return Err(format!("Gemm needs 2-D A and B, found shapes {:?} and {:?}", a.shape(), b.shape()));
    }
    let (wa, wb) = (widen_half(a), widen_half(b));
    let wc = c.map(widen_half);
    let r = match (wa.as_ref(), wb.as_ref()) {
        (Tensor::F32(x), Tensor::F32(y)) => {
            let c = wc.as_ref().map(|t| typed_view::<f32>(t, "C")).transpose()?;
            wrap(gemm_float(attrs, x.view(), y.view(), c)?)
        }
        (Tensor::F64(x), Tensor::F64(y)) => {
            let c = wc.as_ref().map(|t| typed_view::<f64>(t, "C")).transpose()?;
            wrap(gemm_float(attrs, x.view(), y.view(), c)?)
        }
        _ => match_numeric2!(wa.as_ref(), wb.as_ref(), x, y => {
            let c = wc.as_ref().map(|t| typed_view(t, "C")).transpose()?;
            wrap(gemm_int(attrs, x.view(), y.view(), c)?)
        }, else return Err(format!("Gemm does not accept {dtype}"))),
    };
    Ok(narrow_to(r, dtype))
}

/// The operands of Gemm after the transposes, checked.
fn gemm_operands<'a, 'b, T>(
    attrs: &GemmAttrs,
    a: ArrayViewD<'a, T>,
    b: ArrayViewD<'b, T>,
) -> KResult<(ArrayView2<'a, T>, ArrayView2<'b, T>)> {
    let a = a.into_dimensionality::<Ix2>().map_err(|e| e.to_string())?;
    let b = b.into_dimensionality::<Ix2>().map_err(|e| e.to_string())?;
    let a = if attrs.trans_a { a.reversed_axes() } else { a };
    let b = if attrs.trans_b { b.reversed_axes() } else { b };
    if a.ncols() != b.nrows() {
        return Err(format!("Gemm inner dimensions differ: {:?} @ {:?} after transposes", a.dim(), b.dim()));
    }
    Ok((a, b))
}

fn gemm_float<T: super::util::Real>(
    attrs: &GemmAttrs,
    a: ArrayViewD<'_, T>,
    b: ArrayViewD<'_, T>,
    c: Option<ArrayViewD<'_, T>>,
) -> KResult<ArrayD<T>> {
    let (a, b) = gemm_operands(attrs, a, b)?;
    let (m, n) = (a.nrows(), b.ncols());
    let mut y = match c {
        Some(c) if attrs.beta != 0.0 => {
            let cb = c
                .broadcast(IxDyn(&[m, n]))
                .ok_or_else(|| format!("Gemm C of shape {:?} does not broadcast to [{m}, {n}]", c.shape()))?;
            let beta = T::c(attrs.beta as f64);
            cb.mapv(|v| v * beta).into_dimensionality::<Ix2>().map_err(|e| e.to_string())?
        }
        _ => ndarray::Array2::<T>::zeros((m, n)),
    };
    general_mat_mul(T::c(attrs.alpha as f64), &a, &b, <T as Num>::one(), &mut y);
    Ok(y.into_dyn())
}

/// Integer Gemm: the exact integer product, scaled and offset in f64 and
/// truncated, which is what numpy gives for `alpha * (A @ B) + beta * C`
/// cast back to the integer type.
fn gemm_int<T: Num>(
    attrs: &GemmAttrs,
    a: ArrayViewD<'_, T>,
    b: ArrayViewD<'_, T>,
    c: Option<ArrayViewD<'_, T>>,
) -> KResult<ArrayD<T>> {
    let (a, b) = gemm_operands(attrs, a, b)?;
    let (m, n) = (a.nrows(), b.ncols());
    let mut y = ndarray::Array2::<T>::from_elem((m, n), T::zero());
    int_mm(a, b, y.view_mut());
    let (alpha, beta) = (attrs.alpha as f64, attrs.beta as f64);
    let y = match c {
        Some(c) => {
            let cb = c
                .broadcast(IxDyn(&[m, n]))
                .ok_or_else(|| format!("Gemm C of shape {:?} does not broadcast to [{m}, {n}]", c.shape()))?;
            ndarray::Zip::from(y.view().into_dyn())
                .and(&cb)
                .map_collect(|&p, &q| T::from_f64(alpha * p.to_f64() + beta * q.to_f64()))
        }
        None => y.into_dyn().mapv(|p| T::from_f64(alpha * p.to_f64())),
    };
    Ok(y)
}

// ---------------------------------------------------------------- quantized

/// Reads a u8/i8 tensor as i32 with its zero point subtracted. A zero point
/// is a scalar (per tensor), a vector along `per_axis_from_end` (rows of A:
/// 2, columns of B: 1), or a tensor that broadcasts against the operand.
fn dequantize_int(
    x: &Tensor,
    zero_point: Option<&Tensor>,
    per_axis_from_end: usize,
    what: &str,
) -> KResult<ArrayD<i32>> {
    let xv = as_i32(x, what)?;
    let Some(zp) = zero_point else { return Ok(xv) };
    if zp.dtype() != x.dtype() {
        return Err(format!("{what} zero point is {} but {what} is {}", zp.dtype(), x.dtype()));
    }
    let zpv = as_i32(zp, what)?;
    let zpv = align_per_axis(zpv, x.shape(), per_axis_from_end, what)?;
    let shape = broadcast_shapes(&[xv.shape(), zpv.shape()])?;
    if shape != x.shape() {
        return Err(format!(
            "{what} zero point of shape {:?} does not match {what} of shape {:?}",
            zp.shape(),
            x.shape()
        ));
    }
    super::util::broadcast_map2(xv.view(), zpv.view(), |v, z| v - z)
}

/// A 1-D per-row (`from_end == 2`) or per-column (`from_end == 1`)
/// parameter reshaped so it broadcasts against a tensor of `shape`.
/// Scalars and other ranks are returned unchanged.
fn align_per_axis<T: Clone>(p: ArrayD<T>, shape: &[usize], from_end: usize, what: &str) -> KResult<ArrayD<T>> {
    if p.len() == 1 || p.ndim() != 1 || shape.len() < from_end {
        return Ok(if p.len() == 1 { p.into_shape_with_order(IxDyn(&[])).map_err(|e| e.to_string())? } else { p });
    }
    let axis_len = shape[shape.len() - from_end];
    if p.len() != axis_len {
        return Err(format!(
            "{what} quantization parameter has {} values but the quantized axis has {axis_len}",
            p.len()
        ));
    }
    let mut new_shape = vec![1; from_end];
    new_shape[0] = axis_len;
    p.into_shape_with_order(IxDyn(&new_shape)).map_err(|e| e.to_string())
}

fn as_i32(t: &Tensor, what: &str) -> KResult<ArrayD<i32>> {
    match t {
        Tensor::U8(a) => Ok(a.mapv(i32::from)),
        Tensor::I8(a) => Ok(a.mapv(i32::from)),
        other => Err(format!("{what} must be u8 or i8, found {}", other.dtype())),
    }
}

/// `(A - a_zero_point) @ (B - b_zero_point)` in i32.
fn matmul_integer(a: &Tensor, b: &Tensor, a_zp: Option<&Tensor>, b_zp: Option<&Tensor>) -> KResult<Tensor> {
    let av = dequantize_int(a, a_zp, 2, "A")?;
    // A 1-D A has no rows: its zero point can only be per tensor.
    let bv = dequantize_int(b, b_zp, 1, "B")?;
    Ok(wrap(batched_matmul(av.view(), bv.view(), int_mm)?))
}

/// The value of a float scalar or vector parameter in f64.
fn float_param(t: &Tensor, what: &str) -> KResult<ArrayD<f64>> {
    if !t.dtype().is_float() {
        return Err(format!("{what} must be a float tensor, found {}", t.dtype()));
    }
    Ok(ArrayD::from_shape_vec(IxDyn(t.shape()), t.to_f64s()).expect("value count matches shape"))
}

/// Rounds `v` to the precision of `dtype`, so products of scales are formed
/// in the scales' own type as the ONNX reference does.
fn round_to(dtype: DType, v: f64) -> f64 {
    match dtype {
        DType::F32 => v as f32 as f64,
        DType::F16 => half::f16::from_f64(v).to_f64(),
        DType::BF16 => half::bf16::from_f64(v).to_f64(),
        _ => v,
    }
}

/// `QLinearMatMul(a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp)`:
/// the i32 product of the zero-point-shifted operands times
/// `a_scale * b_scale / y_scale`, rounded half to even, plus `y_zp`,
/// saturated to y_zp's type. Scales may be per row of A and per column
/// of B.
fn qlinear_matmul(inputs: &[Option<Tensor>]) -> KResult<Tensor> {
    let a = required(inputs, 0, "a")?;
    let a_scale = required(inputs, 1, "a_scale")?;
    let b = required(inputs, 3, "b")?;
    let b_scale = required(inputs, 4, "b_scale")?;
    let y_scale = required(inputs, 6, "y_scale")?;
    let y_zp = optional(inputs, 7);
    let av = dequantize_int(a, optional(inputs, 2), 2, "a")?;
    let bv = dequantize_int(b, optional(inputs, 5), 1, "b")?;
    let product = batched_matmul(av.view(), bv.view(), int_mm)?;
    let scale_dtype = a_scale.dtype();
    let a_s = align_per_axis(float_param(a_scale, "a_scale")?, a.shape(), 2, "a_scale")?;
    let b_s = align_per_axis(float_param(b_scale, "b_scale")?, b.shape(), 1, "b_scale")?;
    let y_s = float_param(y_scale, "y_scale")?;
    if y_s.len() != 1 {
        return Err(format!("y_scale must be a scalar, found shape {:?}", y_scale.shape()));
    }
    let y_s = y_s.iter().next().copied().expect("one element");
    let multiplier = super::util::broadcast_map2(a_s.view(), b_s.view(), |p, q| {
        round_to(scale_dtype, round_to(scale_dtype, p * q) / y_s)
    })?;
    let out_dtype = y_zp.map_or(a.dtype(), Tensor::dtype);
    let zp = match y_zp {
        Some(z) if z.len() == 1 => z.to_f64s()[0],
        Some(z) => return Err(format!("y_zero_point must be a scalar, found shape {:?}", z.shape())),
        None => 0.0,
    };
    let (lo, hi) = match out_dtype {
        DType::U8 => (0.0, 255.0),
        DType::I8 => (-128.0, 127.0),
        other => return Err(format!("y_zero_point must be u8 or i8, found {other}")),
    };
    let y = super::util::broadcast_map2(product.view(), multiplier.view(), |c, s| {
        ((c as f64 * s).round_ties_even() + zp).clamp(lo, hi)
    })?;
    if y.shape() != product.shape() {
        return Err(format!("scales of shapes {:?} and {:?} do not fit the product", a_scale.shape(), b_scale.shape()));
    }
    let values: Vec<f64> = y.iter().copied().collect();
    Ok(Tensor::from_f64s(out_dtype, y.shape(), &values))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32s(shape: &[usize], v: &[f64]) -> Tensor {
        Tensor::from_f64s(DType::F32, shape, v)
    }

    #[test]
    fn matmul_promotes_vectors_and_broadcasts_batches() {
        let a = f32s(&[2, 1, 2, 3], &(0..12).map(f64::from).collect::<Vec<_>>());
        let b = f32s(&[3], &[1.0, 0.0, -1.0]);
        let r = matmul(&a, &b).unwrap();
        assert_eq!(r.shape(), &[2, 1, 2]);
        assert_eq!(r.to_f64s(), vec![-2.0, -2.0, -2.0, -2.0]);
        let b2 = f32s(&[3, 3, 1], &(0..9).map(f64::from).collect::<Vec<_>>());
        let r = matmul(&a, &b2).unwrap();
        assert_eq!(r.shape(), &[2, 3, 2, 1]);
        assert_eq!(r.to_f64s()[..2], [5.0, 14.0]);
    }

    #[test]
    fn matmul_mismatch_is_an_error() {
        assert!(matmul(&f32s(&[2, 3], &[0.0; 6]), &f32s(&[2, 3], &[0.0; 6])).is_err());
        assert!(matmul(&f32s(&[], &[1.0]), &f32s(&[1], &[1.0])).is_err());
    }

    #[test]
    fn integer_matmul_wraps() {
        let a = Tensor::from_i64s(DType::I32, &[1, 2], &[i32::MAX as i64, 1]);
        let b = Tensor::from_i64s(DType::I32, &[2, 1], &[1, 1]);
        assert_eq!(matmul(&a, &b).unwrap().to_i64s(), vec![i32::MIN as i64]);
    }

    #[test]
    fn gemm_transposes_and_bias() {
        let attrs = GemmAttrs { alpha: 2.0, beta: 0.5, trans_a: true, trans_b: false };
        let a = f32s(&[2, 1], &[1.0, 2.0]);
        let b = f32s(&[2, 2], &[1.0, 0.0, 0.0, 1.0]);
        let c = f32s(&[2], &[2.0, 4.0]);
        let r = gemm(&attrs, &a, &b, Some(&c)).unwrap();
        assert_eq!(r.to_f64s(), vec![3.0, 6.0]);
    }

    #[test]
    fn matmul_integer_per_row_zero_point() {
        let a = Tensor::from_i64s(DType::U8, &[2, 2], &[3, 4, 5, 6]);
        let b = Tensor::from_i64s(DType::U8, &[2, 1], &[1, 1]);
        let azp = Tensor::from_i64s(DType::U8, &[2], &[1, 2]);
        let r = matmul_integer(&a, &b, Some(&azp), None).unwrap();
        assert_eq!(r.dtype(), DType::I32);
        assert_eq!(r.to_i64s(), vec![5, 7]);
    }
}
