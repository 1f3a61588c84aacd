//! Unit tests of the interpreter's data-movement, shape, cast, generator
//! and quantization kernels, through `interp::eval_op`. Expected values are
//! worked out from the ONNX operator specifications (the worked examples in
//! the ONNX docs where they exist), not taken from another runtime.

use kiln_ir::interp::eval_op;
use kiln_ir::{DType, Op, Tensor};

fn f32s(shape: &[usize], v: &[f64]) -> Tensor {
    Tensor::from_f64s(DType::F32, shape, v)
}

fn i64s(shape: &[usize], v: &[i64]) -> Tensor {
    Tensor::from_i64s(DType::I64, shape, v)
}

fn ints(v: &[i64]) -> Option<Tensor> {
    Some(Tensor::vec_i64(v))
}

/// `0, 1, 2, ...` as f32 in `shape`.
fn iota(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    f32s(shape, &(0..n).map(|v| v as f64).collect::<Vec<_>>())
}

fn run_n(op: Op, inputs: Vec<Option<Tensor>>, n: usize) -> Vec<Tensor> {
    let name = op.name();
    eval_op(&op, &inputs, n)
        .unwrap_or_else(|e| panic!("{name} failed: {e}"))
        .into_iter()
        .map(|t| t.expect("output produced"))
        .collect()
}

fn run(op: Op, inputs: Vec<Option<Tensor>>) -> Tensor {
    run_n(op, inputs, 1).remove(0)
}

/// The error message of a failing evaluation.
fn fails(op: Op, inputs: Vec<Option<Tensor>>, n: usize) -> String {
    match eval_op(&op, &inputs, n) {
        Ok(out) => panic!("{} should fail, gave {out:?}", op.name()),
        Err(e) => e,
    }
}

fn assert_fails(op: Op, inputs: Vec<Option<Tensor>>, needles: &[&str]) {
    let e = fails(op, inputs, 1);
    for n in needles {
        assert!(e.contains(n), "error `{e}` should mention `{n}`");
    }
}

fn check(t: &Tensor, dtype: DType, shape: &[usize], values: &[f64]) {
    assert_eq!(t.dtype(), dtype, "{t:?}");
    assert_eq!(t.shape(), shape, "{t:?}");
    let got = t.to_f64s();
    assert_eq!(got.len(), values.len(), "{t:?}");
    for (i, (g, w)) in got.iter().zip(values).enumerate() {
        assert!(g == w || (g.is_nan() && w.is_nan()), "element {i}: got {g}, want {w}; all: {got:?}");
    }
}

// ---------------------------------------------------------------- Transpose

#[test]
fn transpose_reverses_axes_by_default() {
    let t = run(Op::Transpose { perm: None }, vec![Some(iota(&[2, 3]))]);
    check(&t, DType::F32, &[3, 2], &[0., 3., 1., 4., 2., 5.]);
}

#[test]
fn transpose_4d_moves_every_element_to_its_permuted_position() {
    let shape = [2, 3, 4, 5];
    let perm = [2, 0, 3, 1];
    let t = run(Op::Transpose { perm: Some(perm.iter().map(|&p| p as i64).collect()) }, vec![Some(iota(&shape))]);
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    assert_eq!(t.shape(), out_shape.as_slice());
    let got = t.to_f64s();
    let mut k = 0;
    for a in 0..out_shape[0] {
        for b in 0..out_shape[1] {
            for c in 0..out_shape[2] {
                for d in 0..out_shape[3] {
                    // Output coordinate o has input coordinate i[perm[j]] = o[j].
                    let mut i = [0; 4];
                    for (j, o) in [a, b, c, d].into_iter().enumerate() {
                        i[perm[j]] = o;
                    }
                    let flat = ((i[0] * 3 + i[1]) * 4 + i[2]) * 5 + i[3];
                    assert_eq!(got[k], flat as f64);
                    k += 1;
                }
            }
        }
    }
}

#[test]
fn transpose_keeps_4bit_and_bool_dtypes() {
    let x = Tensor::from_i64s(DType::I4, &[2, 2], &[-8, 7, 1, -1]);
    check(&run(Op::Transpose { perm: None }, vec![Some(x)]), DType::I4, &[2, 2], &[-8., 1., 7., -1.]);
    let b = Tensor::from_i64s(DType::Bool, &[1, 2], &[1, 0]);
    check(&run(Op::Transpose { perm: None }, vec![Some(b)]), DType::Bool, &[2, 1], &[1., 0.]);
}

#[test]
fn transpose_rejects_a_non_permutation() {
    assert_fails(Op::Transpose { perm: Some(vec![0, 0]) }, vec![Some(iota(&[2, 3]))], &["Transpose", "perm"]);
    assert_fails(Op::Transpose { perm: Some(vec![0]) }, vec![Some(iota(&[2, 3]))], &["not a permutation"]);
    assert_fails(Op::Transpose { perm: Some(vec![1, -1]) }, vec![Some(iota(&[2, 3]))], &["perm"]);
}

// ---------------------------------------------------------------- Reshape, Flatten, Squeeze, Unsqueeze

#[test]
fn reshape_infers_minus_one_and_copies_zeros() {
    let x = iota(&[2, 3, 4]);
    check(
        &run(Op::Reshape { allowzero: false }, vec![Some(x.clone()), ints(&[0, -1])]),
        DType::F32,
        &[2, 12],
        &x.to_f64s(),
    );
    let t = run(Op::Reshape { allowzero: false }, vec![Some(x.clone()), ints(&[4, 0, -1])]);
    assert_eq!(t.shape(), &[4, 3, 2]);
}

#[test]
fn reshape_allowzero_keeps_a_literal_zero() {
    let x = Tensor::zeros(DType::F32, &[0, 3]);
    let t = run(Op::Reshape { allowzero: true }, vec![Some(x), ints(&[3, 0])]);
    assert_eq!(t.shape(), &[3, 0]);
}

#[test]
fn reshape_reads_a_transposed_input_in_logical_order() {
    let xt = run(Op::Transpose { perm: None }, vec![Some(iota(&[2, 3]))]);
    let t = run(Op::Reshape { allowzero: false }, vec![Some(xt), ints(&[6])]);
    check(&t, DType::F32, &[6], &[0., 3., 1., 4., 2., 5.]);
}

#[test]
fn reshape_errors_name_the_shapes() {
    let x = iota(&[2, 3, 4]);
    assert_fails(
        Op::Reshape { allowzero: false },
        vec![Some(x.clone()), ints(&[5, -1])],
        &["Reshape", "24 elements", "[5, -1]"],
    );
    assert_fails(Op::Reshape { allowzero: false }, vec![Some(x.clone()), ints(&[-1, -1])], &["more than one -1"]);
    assert_fails(Op::Reshape { allowzero: false }, vec![Some(x.clone()), ints(&[5, 5])], &["element counts"]);
    assert_fails(Op::Reshape { allowzero: false }, vec![Some(x.clone()), ints(&[-2, 12])], &["-2"]);
    assert_fails(Op::Reshape { allowzero: false }, vec![Some(x.clone()), ints(&[24, 1, 1, 0])], &["0 at position 3"]);
    assert_fails(Op::Reshape { allowzero: false }, vec![Some(x), Some(f32s(&[1], &[24.]))], &["shape", "integer"]);
}

#[test]
fn flatten_splits_at_the_axis() {
    let x = iota(&[2, 3, 4]);
    assert_eq!(run(Op::Flatten { axis: 0 }, vec![Some(x.clone())]).shape(), &[1, 24]);
    assert_eq!(run(Op::Flatten { axis: 1 }, vec![Some(x.clone())]).shape(), &[2, 12]);
    assert_eq!(run(Op::Flatten { axis: 3 }, vec![Some(x.clone())]).shape(), &[24, 1]);
    assert_eq!(run(Op::Flatten { axis: -1 }, vec![Some(x.clone())]).shape(), &[6, 4]);
    assert_fails(Op::Flatten { axis: 4 }, vec![Some(x)], &["Flatten", "axis 4"]);
}

#[test]
fn squeeze_removes_the_given_or_all_unit_axes() {
    let x = Tensor::zeros(DType::F32, &[1, 3, 1, 2]);
    assert_eq!(run(Op::Squeeze, vec![Some(x.clone())]).shape(), &[3, 2]);
    assert_eq!(run(Op::Squeeze, vec![Some(x.clone()), ints(&[-2])]).shape(), &[1, 3, 2]);
    assert_fails(Op::Squeeze, vec![Some(x.clone()), ints(&[1])], &["Squeeze", "axis 1", "not 1"]);
    assert_fails(Op::Squeeze, vec![Some(x), ints(&[4])], &["axis 4"]);
}

#[test]
fn unsqueeze_counts_negative_axes_from_the_output_rank() {
    let x = iota(&[3, 4]);
    assert_eq!(run(Op::Unsqueeze, vec![Some(x.clone()), ints(&[-1, 0])]).shape(), &[1, 3, 4, 1]);
    assert_eq!(run(Op::Unsqueeze, vec![Some(x.clone()), ints(&[4, 1, 0])]).shape(), &[1, 1, 3, 4, 1]);
    assert_fails(Op::Unsqueeze, vec![Some(x.clone()), ints(&[1, 1])], &["more than once"]);
    assert_fails(Op::Unsqueeze, vec![Some(x.clone()), ints(&[3])], &["axis 3"]);
    assert_fails(Op::Unsqueeze, vec![Some(x)], &["Unsqueeze", "axes", "missing"]);
}

// ---------------------------------------------------------------- Concat, Split

#[test]
fn concat_joins_along_the_axis() {
    let a = iota(&[2, 2]);
    let b = f32s(&[2, 1], &[10., 11.]);
    let t = run(Op::Concat { axis: -1 }, vec![Some(a.clone()), Some(b)]);
    check(&t, DType::F32, &[2, 3], &[0., 1., 10., 2., 3., 11.]);
    let t = run(Op::Concat { axis: 0 }, vec![Some(a.clone()), Some(Tensor::zeros(DType::F32, &[0, 2])), Some(a)]);
    check(&t, DType::F32, &[4, 2], &[0., 1., 2., 3., 0., 1., 2., 3.]);
}

#[test]
fn concat_rejects_mismatches() {
    let a = iota(&[2, 2]);
    assert_fails(Op::Concat { axis: 0 }, vec![Some(a.clone()), Some(iota(&[2, 3]))], &["input 1", "shape"]);
    assert_fails(Op::Concat { axis: 0 }, vec![Some(a.clone()), Some(i64s(&[1, 2], &[1, 2]))], &["input 1", "i64"]);
    assert_fails(Op::Concat { axis: 2 }, vec![Some(a)], &["axis 2"]);
    assert_fails(Op::Concat { axis: 0 }, vec![Some(Tensor::scalar_f32(1.))], &["scalars"]);
}

#[test]
fn split_by_sizes() {
    let outs = run_n(Op::Split { axis: 1, num_outputs: None }, vec![Some(iota(&[2, 4])), ints(&[1, 0, 3])], 3);
    check(&outs[0], DType::F32, &[2, 1], &[0., 4.]);
    check(&outs[1], DType::F32, &[2, 0], &[]);
    check(&outs[2], DType::F32, &[2, 3], &[1., 2., 3., 5., 6., 7.]);
}

#[test]
fn split_into_num_outputs_makes_the_last_chunk_smaller() {
    let outs = run_n(Op::Split { axis: 0, num_outputs: Some(3) }, vec![Some(iota(&[7]))], 3);
    check(&outs[0], DType::F32, &[3], &[0., 1., 2.]);
    check(&outs[1], DType::F32, &[3], &[3., 4., 5.]);
    check(&outs[2], DType::F32, &[1], &[6.]);
    // Without sizes or the attribute, the node's output count decides.
    let outs = run_n(Op::Split { axis: -1, num_outputs: None }, vec![Some(iota(&[2, 4]))], 2);
    check(&outs[1], DType::F32, &[2, 2], &[2., 3., 6., 7.]);
}

#[test]
fn split_errors() {
    let x = iota(&[6]);
    let e = fails(Op::Split { axis: 0, num_outputs: None }, vec![Some(x.clone()), ints(&[1, 2])], 2);
    assert!(e.contains("do not add up to 6"), "{e}");
    let e = fails(Op::Split { axis: 0, num_outputs: None }, vec![Some(x.clone()), ints(&[6])], 2);
    assert!(e.contains("2 outputs"), "{e}");
    let e = fails(Op::Split { axis: 0, num_outputs: None }, vec![Some(x.clone()), ints(&[-1, 7])], 2);
    assert!(e.contains("negative"), "{e}");
    // Chunks of ceil(5 / 4) = 2 leave nothing for the fourth output.
    let e = fails(Op::Split { axis: 0, num_outputs: Some(4) }, vec![Some(iota(&[5]))], 4);
    assert!(e.contains("cannot be split"), "{e}");
    let e = fails(Op::Split { axis: 0, num_outputs: Some(3) }, vec![Some(x)], 2);
    assert!(e.contains("num_outputs is 3"), "{e}");
}

// ---------------------------------------------------------------- Slice

fn slice(x: &Tensor, starts: &[i64], ends: &[i64], axes: Option<&[i64]>, steps: Option<&[i64]>) -> Tensor {
    run(Op::Slice, vec![Some(x.clone()), ints(starts), ints(ends), axes.and_then(ints), steps.and_then(ints)])
}

#[test]
fn slice_basic_and_defaults() {
    let x = iota(&[3, 4]);
    check(&slice(&x, &[1, 0], &[2, 3], Some(&[0, 1]), Some(&[1, 2])), DType::F32, &[1, 2], &[4., 6.]);
    // Axes default to 0..n, steps to 1.
    check(&slice(&x, &[1], &[3], None, None), DType::F32, &[2, 4], &[4., 5., 6., 7., 8., 9., 10., 11.]);
    check(&slice(&x, &[-3], &[-1], Some(&[-1]), None), DType::F32, &[3, 2], &[1., 2., 5., 6., 9., 10.]);
}

#[test]
fn slice_clamps_out_of_range_bounds() {
    let x = iota(&[5]);
    let big = i64::MAX;
    check(&slice(&x, &[-100], &[big], None, None), DType::F32, &[5], &[0., 1., 2., 3., 4.]);
    check(&slice(&x, &[7], &[10], None, None), DType::F32, &[0], &[]);
    check(&slice(&x, &[3], &[1], None, None), DType::F32, &[0], &[]);
    check(&slice(&x, &[i64::MIN], &[2], None, Some(&[3])), DType::F32, &[1], &[0.]);
}

#[test]
fn slice_negative_steps() {
    let x = iota(&[5]);
    // Reverse everything: starts clamp to dim - 1, ends to -1.
    check(&slice(&x, &[-1], &[i64::MIN], None, Some(&[-1])), DType::F32, &[5], &[4., 3., 2., 1., 0.]);
    check(&slice(&x, &[i64::MAX], &[-i64::MAX], None, Some(&[-2])), DType::F32, &[3], &[4., 2., 0.]);
    // End -1 is shifted to 4, so nothing lies strictly between 4 and 4.
    check(&slice(&x, &[4], &[-1], None, Some(&[-1])), DType::F32, &[0], &[]);
    check(&slice(&x, &[3], &[0], None, Some(&[-2])), DType::F32, &[2], &[3., 1.]);
    let m = iota(&[2, 3]);
    check(
        &slice(&m, &[1, 2], &[-3, -4], Some(&[0, 1]), Some(&[-1, -1])),
        DType::F32,
        &[2, 3],
        &[5., 4., 3., 2., 1., 0.],
    );
}

#[test]
fn slice_errors() {
    let x = iota(&[5]);
    assert_fails(Op::Slice, vec![Some(x.clone()), ints(&[0]), ints(&[2]), None, ints(&[0])], &["Slice", "step", "0"]);
    assert_fails(Op::Slice, vec![Some(x.clone()), ints(&[0, 1]), ints(&[2]), None, None], &["`ends`"]);
    assert_fails(Op::Slice, vec![Some(x.clone()), ints(&[0]), ints(&[2]), ints(&[1]), None], &["axis 1"]);
    assert_fails(Op::Slice, vec![Some(x), ints(&[0, 0]), ints(&[2, 2]), ints(&[0, -1]), None], &["more than once"]);
}

// ---------------------------------------------------------------- Gather family

#[test]
fn gather_rows_with_negative_and_scalar_indices() {
    let data = iota(&[4, 3]);
    let t = run(Op::Gather { axis: 0 }, vec![Some(data.clone()), Some(i64s(&[2, 2], &[3, 0, -1, 1]))]);
    check(&t, DType::F32, &[2, 2, 3], &[9., 10., 11., 0., 1., 2., 9., 10., 11., 3., 4., 5.]);
    let t = run(Op::Gather { axis: 0 }, vec![Some(data.clone()), Some(Tensor::scalar_i64(-4))]);
    check(&t, DType::F32, &[3], &[0., 1., 2.]);
    let idx = Tensor::from_i64s(DType::I32, &[2], &[2, -3]);
    let t = run(Op::Gather { axis: -1 }, vec![Some(data), Some(idx)]);
    check(&t, DType::F32, &[4, 2], &[2., 0., 5., 3., 8., 6., 11., 9.]);
}

#[test]
fn gather_reports_out_of_range_indices() {
    let data = Tensor::zeros(DType::F32, &[50, 2]);
    let e = fails(Op::Gather { axis: 0 }, vec![Some(data.clone()), Some(i64s(&[1], &[70000]))], 1);
    assert_eq!(e, "Gather: index 70000 is out of range for axis 0 of size 50");
    assert_fails(Op::Gather { axis: 0 }, vec![Some(data.clone()), Some(i64s(&[1], &[-51]))], &["index -51"]);
    assert_fails(Op::Gather { axis: 0 }, vec![Some(data), Some(f32s(&[1], &[0.]))], &["indices", "integer"]);
}

#[test]
fn gather_elements_follows_the_spec_examples() {
    // ONNX docs, GatherElements example 1 (axis 1).
    let data = f32s(&[2, 2], &[1., 2., 3., 4.]);
    let t = run(Op::GatherElements { axis: 1 }, vec![Some(data), Some(i64s(&[2, 2], &[0, 0, 1, 0]))]);
    check(&t, DType::F32, &[2, 2], &[1., 1., 4., 3.]);
    // Example 2 (axis 0), with one index written as negative.
    let data = iota(&[3, 3]).cast(DType::I32);
    let t = run(Op::GatherElements { axis: 0 }, vec![Some(data), Some(i64s(&[2, 3], &[1, 2, 0, 2, 0, -3]))]);
    check(&t, DType::I32, &[2, 3], &[3., 7., 2., 6., 1., 2.]);
}

#[test]
fn gather_elements_with_smaller_indices_on_other_axes() {
    let data = iota(&[3, 4]);
    let t = run(Op::GatherElements { axis: 1 }, vec![Some(data.clone()), Some(i64s(&[2, 1], &[3, -4]))]);
    check(&t, DType::F32, &[2, 1], &[3., 4.]);
    assert_fails(
        Op::GatherElements { axis: 1 },
        vec![Some(data.clone()), Some(i64s(&[4, 1], &[0, 0, 0, 0]))],
        &["exceeds"],
    );
    assert_fails(Op::GatherElements { axis: 1 }, vec![Some(data), Some(i64s(&[1, 1], &[4]))], &["index 4"]);
}

#[test]
fn gather_nd_follows_the_spec_examples() {
    let d2 = Tensor::from_i64s(DType::I32, &[2, 2], &[0, 1, 2, 3]);
    // Example 1: full index tuples.
    check(
        &run(Op::GatherND { batch_dims: 0 }, vec![Some(d2.clone()), Some(i64s(&[2, 2], &[0, 0, 1, 1]))]),
        DType::I32,
        &[2],
        &[0., 3.],
    );
    // Example 2: partial tuples select rows.
    check(
        &run(Op::GatherND { batch_dims: 0 }, vec![Some(d2), Some(i64s(&[2, 1], &[1, 0]))]),
        DType::I32,
        &[2, 2],
        &[2., 3., 0., 1.],
    );
    let d3 = Tensor::from_i64s(DType::I32, &[2, 2, 2], &[0, 1, 2, 3, 4, 5, 6, 7]);
    // Example 3.
    check(
        &run(Op::GatherND { batch_dims: 0 }, vec![Some(d3.clone()), Some(i64s(&[2, 2], &[0, 1, 1, 0]))]),
        DType::I32,
        &[2, 2],
        &[2., 3., 4., 5.],
    );
    // Example 4.
    check(
        &run(Op::GatherND { batch_dims: 0 }, vec![Some(d3.clone()), Some(i64s(&[2, 1, 2], &[0, 1, 1, 0]))]),
        DType::I32,
        &[2, 1, 2],
        &[2., 3., 4., 5.],
    );
    // Example 5: batch_dims = 1.
    check(
        &run(Op::GatherND { batch_dims: 1 }, vec![Some(d3.clone()), Some(i64s(&[2, 1], &[1, 0]))]),
        DType::I32,
        &[2, 2],
        &[2., 3., 4., 5.],
    );
    // batch_dims = 2 with negative indices.
    check(
        &run(Op::GatherND { batch_dims: 2 }, vec![Some(d3), Some(i64s(&[2, 2, 1], &[-1, 0, 1, -2]))]),
        DType::I32,
        &[2, 2],
        &[1., 2., 5., 6.],
    );
}

#[test]
fn gather_nd_errors() {
    let d = iota(&[2, 3]);
    assert_fails(
        Op::GatherND { batch_dims: 0 },
        vec![Some(d.clone()), Some(i64s(&[1, 3], &[0, 0, 0]))],
        &["exceed the rank"],
    );
    assert_fails(
        Op::GatherND { batch_dims: 0 },
        vec![Some(d.clone()), Some(i64s(&[1, 2], &[0, 3]))],
        &["index 3", "axis 1"],
    );
    assert_fails(
        Op::GatherND { batch_dims: 2 },
        vec![Some(d.clone()), Some(i64s(&[2, 1], &[0, 0]))],
        &["batch_dims 2"],
    );
    assert_fails(Op::GatherND { batch_dims: 1 }, vec![Some(d), Some(i64s(&[3, 1], &[0, 0, 0]))], &["must match"]);
}

#[test]
fn scatter_nd_follows_the_spec_examples() {
    // ScatterND example 1.
    let data = f32s(&[8], &[1., 2., 3., 4., 5., 6., 7., 8.]);
    let t = run(
        Op::ScatterND { reduction: "none".into() },
        vec![Some(data), Some(i64s(&[4, 1], &[4, 3, 1, 7])), Some(f32s(&[4], &[9., 10., 11., 12.]))],
    );
    check(&t, DType::F32, &[8], &[1., 11., 3., 10., 9., 6., 7., 12.]);
    // Example 2: whole slices of a 3-D tensor.
    let data = iota(&[4, 2, 2]);
    let updates = f32s(&[2, 2, 2], &[-1., -2., -3., -4., -5., -6., -7., -8.]);
    let t =
        run(Op::ScatterND { reduction: "none".into() }, vec![Some(data), Some(i64s(&[2, 1], &[0, 2])), Some(updates)]);
    check(&t, DType::F32, &[4, 2, 2], &[-1., -2., -3., -4., 4., 5., 6., 7., -5., -6., -7., -8., 12., 13., 14., 15.]);
}

#[test]
fn scatter_nd_reductions_combine_duplicates() {
    let data = Tensor::from_i64s(DType::I32, &[4], &[1, 2, 3, 4]);
    let idx = i64s(&[3, 1], &[1, 1, -1]);
    let upd = Tensor::from_i64s(DType::I32, &[3], &[5, 7, -9]);
    let go = |r: &str| {
        run(Op::ScatterND { reduction: r.into() }, vec![Some(data.clone()), Some(idx.clone()), Some(upd.clone())])
    };
    check(&go("add"), DType::I32, &[4], &[1., 14., 3., -5.]);
    check(&go("mul"), DType::I32, &[4], &[1., 70., 3., -36.]);
    check(&go("max"), DType::I32, &[4], &[1., 7., 3., 4.]);
    check(&go("min"), DType::I32, &[4], &[1., 2., 3., -9.]);
    let f = run(
        Op::ScatterND { reduction: "max".into() },
        vec![Some(f32s(&[2], &[1., 2.])), Some(i64s(&[1, 1], &[0])), Some(f32s(&[1], &[f64::NAN]))],
    );
    check(&f, DType::F32, &[2], &[f64::NAN, 2.]);
}

#[test]
fn scatter_nd_errors() {
    let data = iota(&[4]);
    assert_fails(
        Op::ScatterND { reduction: "none".into() },
        vec![Some(data.clone()), Some(i64s(&[1, 1], &[4])), Some(f32s(&[1], &[0.]))],
        &["ScatterND", "index 4"],
    );
    assert_fails(
        Op::ScatterND { reduction: "none".into() },
        vec![Some(data.clone()), Some(i64s(&[2, 1], &[0, 1])), Some(f32s(&[1], &[0.]))],
        &["`updates` has shape [1], expected [2]"],
    );
    assert_fails(
        Op::ScatterND { reduction: "avg".into() },
        vec![Some(data), Some(i64s(&[1, 1], &[0])), Some(f32s(&[1], &[0.]))],
        &["reduction `avg`"],
    );
}

// ---------------------------------------------------------------- Expand, Tile, Pad

#[test]
fn expand_broadcasts_both_ways() {
    let x = f32s(&[3, 1], &[1., 2., 3.]);
    let t = run(Op::Expand, vec![Some(x.clone()), ints(&[2, 1, 2])]);
    check(&t, DType::F32, &[2, 3, 2], &[1., 1., 2., 2., 3., 3., 1., 1., 2., 2., 3., 3.]);
    // A shape smaller than the input keeps the input's dims.
    assert_eq!(run(Op::Expand, vec![Some(x.clone()), ints(&[1])]).shape(), &[3, 1]);
    assert_fails(Op::Expand, vec![Some(x.clone()), ints(&[2, 2])], &["Expand", "broadcast"]);
    assert_fails(Op::Expand, vec![Some(x), ints(&[-1, 1])], &["negative"]);
}

#[test]
fn tile_repeats_each_axis() {
    let x = iota(&[2, 2]);
    let t = run(Op::Tile, vec![Some(x.clone()), ints(&[1, 2])]);
    check(&t, DType::F32, &[2, 4], &[0., 1., 0., 1., 2., 3., 2., 3.]);
    let t = run(Op::Tile, vec![Some(x.clone()), ints(&[2, 1])]);
    check(&t, DType::F32, &[4, 2], &[0., 1., 2., 3., 0., 1., 2., 3.]);
    assert_eq!(run(Op::Tile, vec![Some(x.clone()), ints(&[0, 3])]).shape(), &[0, 6]);
    assert_fails(Op::Tile, vec![Some(x.clone()), ints(&[2])], &["repeats", "rank 2"]);
    assert_fails(Op::Tile, vec![Some(x), ints(&[1, -1])], &["negative"]);
}

fn pad(x: &Tensor, mode: &str, pads: &[i64], value: Option<Tensor>, axes: Option<&[i64]>) -> Tensor {
    run(Op::Pad { mode: mode.into() }, vec![Some(x.clone()), ints(pads), value, axes.and_then(ints)])
}

#[test]
fn pad_constant_with_value_and_axes() {
    let x = f32s(&[2, 2], &[1., 2., 3., 4.]);
    let t = pad(&x, "constant", &[1, 0, 0, 1], Some(Tensor::scalar_f32(9.)), None);
    check(&t, DType::F32, &[3, 3], &[9., 9., 9., 1., 2., 9., 3., 4., 9.]);
    let t = pad(&x, "constant", &[2, 1], None, Some(&[-1]));
    check(&t, DType::F32, &[2, 5], &[0., 0., 1., 2., 0., 0., 0., 3., 4., 0.]);
}

#[test]
fn pad_reflect_edge_and_wrap() {
    let x = f32s(&[3], &[1., 2., 3.]);
    check(&pad(&x, "reflect", &[2, 2], None, None), DType::F32, &[7], &[3., 2., 1., 2., 3., 2., 1.]);
    check(&pad(&x, "edge", &[2, 1], None, None), DType::F32, &[6], &[1., 1., 1., 2., 3., 3.]);
    check(&pad(&x, "wrap", &[2, 4], None, None), DType::F32, &[9], &[2., 3., 1., 2., 3., 1., 2., 3., 1.]);
    // Reflecting past the far edge keeps bouncing: period 2 * (3 - 1).
    check(&pad(&x, "reflect", &[5, 0], None, None), DType::F32, &[8], &[2., 1., 2., 3., 2., 1., 2., 3.]);
}

#[test]
fn pad_negative_pads_crop_before_padding() {
    let x = iota(&[3, 4]);
    let t = pad(&x, "constant", &[-1, 1, 0, 2], None, None);
    check(&t, DType::F32, &[2, 7], &[0., 4., 5., 6., 7., 0., 0., 0., 8., 9., 10., 11., 0., 0.]);
    // Reflection is about the cropped edge.
    let t = pad(&f32s(&[4], &[1., 2., 3., 4.]), "reflect", &[-1, 2], None, None);
    check(&t, DType::F32, &[5], &[2., 3., 4., 3., 2.]);
}

#[test]
fn pad_other_dtypes() {
    let x = Tensor::from_i64s(DType::I4, &[2], &[-8, 7]);
    let t = run(
        Op::Pad { mode: "constant".into() },
        vec![Some(x), ints(&[1, 1]), Some(Tensor::from_i64s(DType::I4, &[], &[-1]))],
    );
    check(&t, DType::I4, &[4], &[-1., -8., 7., -1.]);
}

#[test]
fn pad_errors() {
    let x = iota(&[2, 2]);
    assert_fails(Op::Pad { mode: "mirror".into() }, vec![Some(x.clone()), ints(&[0, 0, 0, 0])], &["mode `mirror`"]);
    assert_fails(Op::Pad { mode: "constant".into() }, vec![Some(x.clone()), ints(&[1, 1])], &["`pads` has 2 values"]);
    assert_fails(Op::Pad { mode: "constant".into() }, vec![Some(x.clone()), ints(&[-3, 0, 0, 0])], &["remove more"]);
    assert_fails(
        Op::Pad { mode: "constant".into() },
        vec![Some(x.clone()), ints(&[1, 0, 0, 0]), Some(Tensor::scalar_i64(1))],
        &["constant_value", "i64"],
    );
    assert_fails(
        Op::Pad { mode: "edge".into() },
        vec![Some(Tensor::zeros(DType::F32, &[0])), ints(&[1, 1])],
        &["no elements"],
    );
}

// ---------------------------------------------------------------- Cast

fn cast(x: Tensor, to: DType) -> Tensor {
    run(Op::Cast { to, saturate: true }, vec![Some(x)])
}

#[test]
fn cast_float_to_int_truncates_and_saturates() {
    let x = f32s(&[7], &[2.9, -2.9, 300.0, -300.0, f64::NAN, f64::INFINITY, -0.5]);
    check(&cast(x.clone(), DType::I8), DType::I8, &[7], &[2., -2., 127., -128., 0., 127., 0.]);
    check(&cast(x.clone(), DType::U8), DType::U8, &[7], &[2., 0., 255., 0., 0., 255., 0.]);
    check(&cast(x, DType::I64), DType::I64, &[7], &[2., -2., 300., -300., 0., i64::MAX as f64, 0.]);
}

#[test]
fn cast_int_to_int_wraps() {
    let x = Tensor::from_i64s(DType::I32, &[4], &[300, -1, 128, -129]);
    check(&cast(x.clone(), DType::I8), DType::I8, &[4], &[44., -1., -128., 127.]);
    check(&cast(x.clone(), DType::U8), DType::U8, &[4], &[44., 255., 128., 127.]);
    check(&cast(x, DType::I16), DType::I16, &[4], &[300., -1., 128., -129.]);
}

#[test]
fn cast_to_and_from_bool() {
    let x = f32s(&[4], &[0.0, -0.0, f64::NAN, 0.25]);
    check(&cast(x, DType::Bool), DType::Bool, &[4], &[0., 0., 1., 1.]);
    let b = Tensor::from_i64s(DType::Bool, &[2], &[1, 0]);
    check(&cast(b.clone(), DType::F16), DType::F16, &[2], &[1., 0.]);
    check(&cast(b, DType::I4), DType::I4, &[2], &[1., 0.]);
}

#[test]
fn cast_to_4bit_wraps_like_the_onnx_node_tests() {
    let x = f32s(&[6], &[-9., -8., 7., 8., 15., 2.7]);
    check(&cast(x.clone(), DType::I4), DType::I4, &[6], &[7., -8., 7., -8., -1., 2.]);
    check(&cast(x.cast(DType::F16), DType::U4), DType::U4, &[6], &[7., 8., 7., 8., 15., 2.]);
    let i4 = Tensor::from_i64s(DType::I4, &[3], &[-8, -1, 7]);
    check(&cast(i4.clone(), DType::I8), DType::I8, &[3], &[-8., -1., 7.]);
    check(&cast(i4, DType::U4), DType::U4, &[3], &[8., 15., 7.]);
    let u4 = Tensor::from_i64s(DType::U4, &[2], &[15, 8]);
    check(&cast(u4, DType::F32), DType::F32, &[2], &[15., 8.]);
}

#[test]
fn cast_to_half_types_rounds_to_nearest_even_once() {
    // f16 has 10 fraction bits: 1 + 2^-11 is a tie (down to even 1.0),
    // 1 + 3 * 2^-11 a tie that rounds up to 1 + 2^-9.
    let x = Tensor::from_f64s(DType::F64, &[2], &[1.0 + 2f64.powi(-11), 1.0 + 3.0 * 2f64.powi(-11)]);
    check(&cast(x, DType::F16), DType::F16, &[2], &[1.0, 1.0 + 2f64.powi(-9)]);
    // Just above the tie: rounding to f32 first would make it a tie and
    // round down; a single rounding goes up.
    let above = 1.0 + 2f64.powi(-11) + 2f64.powi(-40);
    check(&cast(Tensor::from_f64s(DType::F64, &[1], &[above]), DType::F16), DType::F16, &[1], &[1.0 + 2f64.powi(-10)]);
    let above = 1.0 + 2f64.powi(-8) + 2f64.powi(-45);
    check(&cast(Tensor::from_f64s(DType::F64, &[1], &[above]), DType::BF16), DType::BF16, &[1], &[1.0 + 2f64.powi(-7)]);
    // Large integers: 2^62 + 2^54 + 1 is just above a bf16 tie.
    let big = Tensor::from_i64s(DType::I64, &[2], &[(1 << 62) + (1 << 54) + 1, (1 << 62) + (1 << 54)]);
    check(&cast(big, DType::BF16), DType::BF16, &[2], &[2f64.powi(62) + 2f64.powi(55), 2f64.powi(62)]);
    // Overflow goes to infinity.
    check(&cast(f32s(&[1], &[70000.]), DType::F16), DType::F16, &[1], &[f64::INFINITY]);
}

#[test]
fn cast_like_takes_the_second_inputs_type() {
    let x = f32s(&[2], &[1.5, -2.5]);
    let t = run(Op::CastLike { saturate: true }, vec![Some(x), Some(Tensor::from_i64s(DType::I16, &[0], &[]))]);
    check(&t, DType::I16, &[2], &[1., -2.]);
}

// ---------------------------------------------------------------- Shape, Size, generators

#[test]
fn shape_with_start_and_end() {
    let x = Tensor::zeros(DType::U8, &[2, 3, 4, 5]);
    let shape = |start, end| run(Op::Shape { start, end }, vec![Some(x.clone())]);
    check(&shape(0, None), DType::I64, &[4], &[2., 3., 4., 5.]);
    check(&shape(-3, Some(-1)), DType::I64, &[2], &[3., 4.]);
    check(&shape(-10, Some(10)), DType::I64, &[4], &[2., 3., 4., 5.]);
    check(&shape(3, Some(1)), DType::I64, &[0], &[]);
    check(&run(Op::Size, vec![Some(x)]), DType::I64, &[], &[120.]);
}

#[test]
fn constant_of_shape_fills() {
    check(&run(Op::ConstantOfShape { value: None }, vec![ints(&[2, 1])]), DType::F32, &[2, 1], &[0., 0.]);
    let v = Tensor::from_i64s(DType::I32, &[1], &[7]);
    check(&run(Op::ConstantOfShape { value: Some(v) }, vec![ints(&[3])]), DType::I32, &[3], &[7., 7., 7.]);
    check(&run(Op::ConstantOfShape { value: None }, vec![ints(&[])]), DType::F32, &[], &[0.]);
    assert_fails(Op::ConstantOfShape { value: None }, vec![ints(&[2, -1])], &["negative"]);
    let two = Tensor::vec_i64(&[1, 2]);
    assert_fails(Op::ConstantOfShape { value: Some(two) }, vec![ints(&[2])], &["exactly one element"]);
}

fn range(dtype: DType, s: f64, l: f64, d: f64) -> Tensor {
    let one = |v| Some(Tensor::from_f64s(dtype, &[], &[v]));
    run(Op::Range, vec![one(s), one(l), one(d)])
}

#[test]
fn range_counts_ceil_of_the_span() {
    check(&range(DType::I32, 0., 10., 3.), DType::I32, &[4], &[0., 3., 6., 9.]);
    check(&range(DType::I64, 10., -3., -4.), DType::I64, &[4], &[10., 6., 2., -2.]);
    check(&range(DType::I16, 5., 5., 1.), DType::I16, &[0], &[]);
    check(&range(DType::I64, 1., 0., 1.), DType::I64, &[0], &[]);
    check(&range(DType::F64, 1., -1., -0.5), DType::F64, &[4], &[1., 0.5, 0., -0.5]);
    check(&range(DType::F16, 0., 2., 0.75), DType::F16, &[3], &[0., 0.75, 1.5]);
    // ceil((1 - 0) / 0.25) = 4, elements computed as start + i * delta.
    let t = range(DType::F32, 0., 1., 0.25);
    check(&t, DType::F32, &[4], &[0., 0.25, 0.5, 0.75]);
}

#[test]
fn range_errors() {
    let one = |v: f64| Some(Tensor::from_f64s(DType::I64, &[], &[v]));
    assert_fails(Op::Range, vec![one(0.), one(5.), one(0.)], &["Range", "`delta` is 0"]);
    assert_fails(Op::Range, vec![one(0.), Some(Tensor::scalar_f32(5.)), one(1.)], &["`limit`", "f32"]);
    let u = |v: f64| Some(Tensor::from_f64s(DType::U8, &[], &[v]));
    assert_fails(Op::Range, vec![u(0.), u(5.), u(1.)], &["u8"]);
}

#[test]
fn trilu_keeps_a_triangle_of_every_matrix() {
    let x = iota(&[2, 2, 3]).cast(DType::I64);
    let k = |v| Some(Tensor::scalar_i64(v));
    let t = run(Op::Trilu { upper: true }, vec![Some(x.clone())]);
    check(&t, DType::I64, &[2, 2, 3], &[0., 1., 2., 0., 4., 5., 6., 7., 8., 0., 10., 11.]);
    let t = run(Op::Trilu { upper: false }, vec![Some(x.clone()), k(-1)]);
    check(&t, DType::I64, &[2, 2, 3], &[0., 0., 0., 3., 0., 0., 0., 0., 0., 9., 0., 0.]);
    let t = run(Op::Trilu { upper: true }, vec![Some(x.clone()), k(2)]);
    check(&t, DType::I64, &[2, 2, 3], &[0., 0., 2., 0., 0., 0., 0., 0., 8., 0., 0., 0.]);
    let t = run(Op::Trilu { upper: false }, vec![Some(x.clone()), k(5)]);
    assert_eq!(t.to_f64s(), x.to_f64s());
    assert_fails(Op::Trilu { upper: true }, vec![Some(iota(&[3]))], &["rank 2"]);
}

#[test]
fn constant_and_identity_pass_values_through() {
    let v = Tensor::vec_i64(&[4, 5]);
    assert_eq!(run(Op::Constant { value: v.clone() }, vec![]), v);
    assert_eq!(run(Op::Identity, vec![Some(v.clone())]), v);
}

#[test]
fn dropout_at_inference_is_identity_with_a_true_mask() {
    let x = f32s(&[2], &[1., 2.]);
    let outs = run_n(Op::Dropout { seed: None }, vec![Some(x.clone())], 2);
    assert_eq!(outs[0], x);
    check(&outs[1], DType::Bool, &[2], &[1., 1.]);
    let no_training = Tensor::from_i64s(DType::Bool, &[], &[0]);
    let outs =
        run_n(Op::Dropout { seed: None }, vec![Some(x.clone()), Some(Tensor::scalar_f32(0.3)), Some(no_training)], 1);
    assert_eq!(outs[0], x);
    // Training mode with a zero ratio drops nothing, so it is supported.
    let training = Tensor::from_i64s(DType::Bool, &[], &[1]);
    let outs = run_n(
        Op::Dropout { seed: None },
        vec![Some(x.clone()), Some(Tensor::scalar_f32(0.0)), Some(training.clone())],
        1,
    );
    assert_eq!(outs[0], x);
    let e = fails(Op::Dropout { seed: None }, vec![Some(x.clone()), Some(Tensor::scalar_f32(0.5)), Some(training)], 1);
    assert!(e.contains("training-mode dropout is not supported"), "{e}");
    let e = fails(Op::Dropout { seed: None }, vec![Some(x), Some(Tensor::scalar_f32(1.5))], 1);
    assert!(e.contains("ratio"), "{e}");
}

#[test]
fn one_hot_places_on_values_along_the_axis() {
    let idx = i64s(&[3], &[0, -1, 5]);
    let depth = Some(Tensor::scalar_i64(3));
    let values = Some(f32s(&[2], &[-1., 4.]));
    // Index -1 counts from the end; 5 is out of range, so its row is all off.
    let t = run(Op::OneHot { axis: -1 }, vec![Some(idx.clone()), depth.clone(), values.clone()]);
    check(&t, DType::F32, &[3, 3], &[4., -1., -1., -1., -1., 4., -1., -1., -1.]);
    let t = run(Op::OneHot { axis: 0 }, vec![Some(idx), depth, values]);
    check(&t, DType::F32, &[3, 3], &[4., -1., -1., -1., -1., -1., -1., 4., -1.]);
    let idx = Tensor::from_i64s(DType::I32, &[2, 1], &[1, 0]);
    let values = Tensor::from_i64s(DType::I64, &[2], &[0, 1]);
    let t = run(Op::OneHot { axis: 1 }, vec![Some(idx), Some(f32s(&[1], &[2.])), Some(values)]);
    check(&t, DType::I64, &[2, 2, 1], &[0., 1., 1., 0.]);
}

#[test]
fn one_hot_errors() {
    let idx = Some(i64s(&[1], &[0]));
    assert_fails(
        Op::OneHot { axis: -1 },
        vec![idx.clone(), Some(Tensor::scalar_i64(-2)), Some(f32s(&[2], &[0., 1.]))],
        &["depth"],
    );
    assert_fails(
        Op::OneHot { axis: -1 },
        vec![idx.clone(), Some(Tensor::scalar_i64(2)), Some(f32s(&[3], &[0., 1., 2.]))],
        &["values"],
    );
    assert_fails(
        Op::OneHot { axis: 2 },
        vec![idx, Some(Tensor::scalar_i64(2)), Some(f32s(&[2], &[0., 1.]))],
        &["axis 2"],
    );
}

#[test]
fn non_zero_lists_coordinates_in_row_major_order() {
    let x = f32s(&[2, 3], &[0., 1., 0., -0., f64::NAN, 2.]);
    check(&run(Op::NonZero, vec![Some(x)]), DType::I64, &[2, 3], &[0., 1., 1., 1., 1., 2.]);
    let b = Tensor::from_i64s(DType::Bool, &[3], &[0, 0, 0]);
    check(&run(Op::NonZero, vec![Some(b)]), DType::I64, &[1, 0], &[]);
    check(&run(Op::NonZero, vec![Some(Tensor::scalar_i64(3))]), DType::I64, &[1, 1], &[0.]);
}

// ---------------------------------------------------------------- quantization

fn quantize(x: Tensor, scale: Tensor, zp: Option<Tensor>, axis: i64, block_size: i64, out: Option<DType>) -> Tensor {
    run(Op::QuantizeLinear { axis, block_size, saturate: true, output_dtype: out }, vec![Some(x), Some(scale), zp])
}

fn dequantize(x: Tensor, scale: Tensor, zp: Option<Tensor>, axis: i64, block_size: i64, out: Option<DType>) -> Tensor {
    run(Op::DequantizeLinear { axis, block_size, output_dtype: out }, vec![Some(x), Some(scale), zp])
}

#[test]
fn quantize_rounds_half_to_even_and_saturates() {
    let x = f32s(&[8], &[0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 300., -300.]);
    let q = quantize(x.clone(), Tensor::scalar_f32(1.0), Some(Tensor::from_i64s(DType::I8, &[], &[0])), 1, 0, None);
    check(&q, DType::I8, &[8], &[0., 2., 2., -0., -2., -2., 127., -128.]);
    // No zero point: u8 with zero point 0.
    let q = quantize(x, Tensor::scalar_f32(0.5), None, 1, 0, None);
    check(&q, DType::U8, &[8], &[1., 3., 5., 0., 0., 0., 255., 0.]);
}

#[test]
fn quantize_per_axis_and_to_other_types() {
    let x = f32s(&[2, 3], &[1., 2., 3., -1., -2., -3.]);
    let scale = f32s(&[3], &[1., 2., 0.5]);
    let zp = Tensor::from_i64s(DType::I16, &[3], &[10, 0, -10]);
    let q = quantize(x.clone(), scale.clone(), Some(zp), 1, 0, None);
    check(&q, DType::I16, &[2, 3], &[11., 1., -4., 9., -1., -16.]);
    let q = quantize(x.clone(), scale, None, -1, 0, Some(DType::I4));
    check(&q, DType::I4, &[2, 3], &[1., 1., 6., -1., -1., -6.]);
    let q = quantize(x.cast(DType::F16), Tensor::from_f64s(DType::F16, &[], &[0.25]), None, 1, 0, Some(DType::U4));
    check(&q, DType::U4, &[2, 3], &[4., 8., 12., 0., 0., 0.]);
    let q =
        quantize(Tensor::from_i64s(DType::I32, &[3], &[-7, 7, 9]), Tensor::scalar_f32(2.), None, 1, 0, Some(DType::I8));
    check(&q, DType::I8, &[3], &[-4., 4., 4.]);
}

#[test]
fn quantize_blocked_with_a_partial_last_block() {
    // Axis 1 of length 5 in blocks of 2: scales per row for columns
    // {0, 1}, {2, 3}, {4}. 6 / 4 = 1.5 rounds to 2.
    let x = f32s(&[2, 5], &[2., 4., 6., 8., 10., -2., -4., -6., -8., -10.]);
    let scale = f32s(&[2, 3], &[2., 4., 5., 1., 2., 10.]);
    let zp = Tensor::from_i64s(DType::U8, &[2, 3], &[0, 1, 2, 100, 50, 3]);
    let q = quantize(x, scale, Some(zp), 1, 2, None);
    check(&q, DType::U8, &[2, 5], &[1., 2., 3., 3., 4., 98., 96., 47., 46., 2.]);
}

#[test]
fn quantize_errors() {
    let x = f32s(&[2, 3], &[0.; 6]);
    let s = Tensor::scalar_f32(1.);
    let q = |scale: Tensor, zp: Option<Tensor>, block: i64, out: Option<DType>| {
        fails(
            Op::QuantizeLinear { axis: 1, block_size: block, saturate: true, output_dtype: out },
            vec![Some(x.clone()), Some(scale), zp],
            1,
        )
    };
    let e = q(s.clone(), Some(Tensor::from_i64s(DType::I8, &[], &[0])), 0, Some(DType::U8));
    assert!(e.contains("output_dtype is u8") && e.contains("i8"), "{e}");
    let e = q(s.clone(), None, 0, Some(DType::I32));
    assert!(e.contains("cannot quantize to i32"), "{e}");
    let e = q(f32s(&[2], &[1., 1.]), None, 0, None);
    assert!(e.contains("needs [3]"), "{e}");
    let e = q(f32s(&[2, 1], &[1., 1.]), None, 2, None);
    assert!(e.contains("needs [2, 2]"), "{e}");
    let e = q(f32s(&[3], &[1., 1., 1.]), Some(Tensor::from_i64s(DType::U8, &[2], &[0, 0])), 0, None);
    assert!(e.contains("zero point"), "{e}");
    let e = q(s, None, -1, None);
    assert!(e.contains("block_size"), "{e}");
}

#[test]
fn dequantize_per_tensor_axis_and_block() {
    let x = Tensor::from_i64s(DType::U8, &[4], &[0, 3, 128, 255]);
    let y = dequantize(x, Tensor::scalar_f32(2.), Some(Tensor::from_i64s(DType::U8, &[], &[128])), 1, 0, None);
    check(&y, DType::F32, &[4], &[-256., -250., 0., 254.]);
    let x = Tensor::from_i64s(DType::I8, &[2, 2], &[-128, 127, 10, -10]);
    let y = dequantize(x, f32s(&[2], &[0.5, 0.25]), Some(Tensor::from_i64s(DType::I8, &[2], &[0, -2])), 1, 0, None);
    check(&y, DType::F32, &[2, 2], &[-64., 32.25, 5., -2.]);
    // Blocked along axis 0: rows {0, 1} and {2}.
    let x = Tensor::from_i64s(DType::I4, &[3, 2], &[-8, 7, 1, 2, 3, 4]);
    let y = dequantize(x, Tensor::from_f64s(DType::F16, &[2, 2], &[1., 0.5, 2., 4.]), None, 0, 2, None);
    check(&y, DType::F16, &[3, 2], &[-8., 3.5, 1., 1., 6., 16.]);
}

#[test]
fn dequantize_int32_and_output_dtype() {
    let x = Tensor::from_i64s(DType::I32, &[2], &[-1000000, 3]);
    check(&dequantize(x, Tensor::scalar_f32(0.5), None, 1, 0, None), DType::F32, &[2], &[-500000., 1.5]);
    let x = Tensor::from_i64s(DType::U4, &[2], &[15, 0]);
    let y =
        dequantize(x, Tensor::scalar_f32(0.5), Some(Tensor::from_i64s(DType::U4, &[1], &[8])), 1, 0, Some(DType::BF16));
    check(&y, DType::BF16, &[2], &[3.5, -4.]);
}

#[test]
fn dequantize_errors() {
    let x = Tensor::from_i64s(DType::I8, &[2], &[1, 2]);
    let dq = |x: Tensor, scale: Tensor, zp: Option<Tensor>, out: Option<DType>| {
        fails(Op::DequantizeLinear { axis: 1, block_size: 0, output_dtype: out }, vec![Some(x), Some(scale), zp], 1)
    };
    let e = dq(x.clone(), Tensor::scalar_f32(1.), Some(Tensor::from_i64s(DType::U8, &[], &[0])), None);
    assert!(e.contains("`x_zero_point` has type u8"), "{e}");
    let e = dq(f32s(&[1], &[1.]), Tensor::scalar_f32(1.), None, None);
    assert!(e.contains("cannot dequantize f32"), "{e}");
    let e = dq(x.clone(), Tensor::scalar_i64(1), None, None);
    assert!(e.contains("x_scale"), "{e}");
    let e = dq(x, Tensor::scalar_f32(1.), None, Some(DType::I32));
    assert!(e.contains("output_dtype"), "{e}");
}

#[test]
fn dynamic_quantize_linear_uses_the_widened_range() {
    // min -55, max 200: scale = 255 / 255 = 1, zero point = 55; 10.5 and
    // 11.5 are ties that round to even.
    let x = f32s(&[6], &[-55., 0., 100., 200., 10.5, 11.5]);
    let outs = run_n(Op::DynamicQuantizeLinear, vec![Some(x)], 3);
    check(&outs[0], DType::U8, &[6], &[0., 55., 155., 255., 65., 67.]);
    check(&outs[1], DType::F32, &[], &[1.]);
    check(&outs[2], DType::U8, &[], &[55.]);
    // All positive: the range starts at 0, so the zero point is 0.
    let outs = run_n(Op::DynamicQuantizeLinear, vec![Some(f32s(&[2], &[20., 51.]))], 3);
    check(&outs[0], DType::U8, &[2], &[100., 255.]);
    check(&outs[1], DType::F32, &[], &[(51f32 / 255f32) as f64]);
    check(&outs[2], DType::U8, &[], &[0.]);
    // All zero: an empty range, scale 1/255, everything quantizes to 0.
    let outs = run_n(Op::DynamicQuantizeLinear, vec![Some(f32s(&[2], &[0., 0.]))], 3);
    check(&outs[0], DType::U8, &[2], &[0., 0.]);
    check(&outs[1], DType::F32, &[], &[(1f32 / 255f32) as f64]);
    assert_fails(Op::DynamicQuantizeLinear, vec![Some(Tensor::scalar_i64(1))], &["DynamicQuantizeLinear", "f32"]);
}

// ---------------------------------------------------------------- robustness

#[test]
fn missing_required_inputs_are_errors_not_panics() {
    let ops = [
        Op::Transpose { perm: None },
        Op::Reshape { allowzero: false },
        Op::Gather { axis: 0 },
        Op::Slice,
        Op::Pad { mode: "constant".into() },
        Op::Cast { to: DType::F32, saturate: true },
        Op::Range,
        Op::QuantizeLinear { axis: 1, block_size: 0, saturate: true, output_dtype: None },
        Op::DequantizeLinear { axis: 1, block_size: 0, output_dtype: None },
    ];
    for op in ops {
        let e = fails(op.clone(), vec![], 1);
        assert!(e.starts_with(op.name()) && e.contains("missing"), "{e}");
    }
}

#[test]
fn huge_shapes_are_refused_before_allocating() {
    let big = i64::MAX / 2;
    assert_fails(Op::ConstantOfShape { value: None }, vec![ints(&[big, big])], &["too large"]);
    assert_fails(Op::Expand, vec![Some(iota(&[1])), ints(&[big, 4])], &["too large"]);
    assert_fails(Op::Tile, vec![Some(iota(&[2])), ints(&[big])], &["too large"]);
    let one = |v: i64| Some(Tensor::scalar_i64(v));
    assert_fails(Op::Range, vec![one(i64::MIN), one(i64::MAX), one(1)], &["too"]);
}
