//! The attention rules (`attention-sdpa`, `attention-causal`,
//! `attention-gqa`), tested three ways per form: snapshots of the output
//! in the text format, the interpreter on random inputs before and after
//! (1e-5 relative), and graphs where a rule must not fire. Then the whole
//! `attention` pass on the six example models under `-O2`.

mod common;

use common::{count, optimize_with, parse, print, random_inputs, rel_error, run};
use kiln_ir::dtype::DType;
use kiln_ir::graph::Graph;
use kiln_ir::onnx::import::{load_model, read_tensor_pb, ImportOptions};
use kiln_ir::op::Op;
use kiln_ir::tensor::Tensor;
use kiln_passes::manager::{optimize, OptLevel, Pass, Pipeline};
use kiln_passes::Report;
use kiln_test_support::example_model_dirs;
use std::collections::BTreeMap;
use std::path::Path;

const SDPA: &str = "attention-sdpa";
const CAUSAL: &str = "attention-causal";
const GQA: &str = "attention-gqa";

/// Optimizes with the named rules and checks that each of `must_fire`
/// fired and nothing went wrong.
fn fires_with(rules: &[&str], must_fire: &[&str], text: &str) -> (Graph, Graph, String, Report) {
    let g = parse(text);
    let (out, report) = optimize_with(&g, rules);
    for r in must_fire {
        assert!(report.fired(r) > 0, "{r} did not fire:\n{report}");
    }
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    kiln_ir::verify(&out).expect("the optimized graph verifies");
    let printed = print(&out);
    (g, out, printed, report)
}

/// Optimizes with `rule` alone and checks it did not fire: the graph comes
/// back as a round trip with no rules gives it (which drops the unused
/// values some of these graphs share).
fn does_not_fire(rule: &str, text: &str) {
    let g = parse(text);
    let (out, report) = optimize_with(&g, &[rule]);
    assert_eq!(report.fired(rule), 0, "{rule} fired:\n{report}");
    let (plain, _) = optimize_with(&g, &[]);
    assert_eq!(
        print(&out),
        print(&plain),
        "graph changed although {rule} did not fire"
    );
}

/// Runs both graphs on random inputs (three seeds), with every bool input
/// keeping key 0 of every row (a row whose keys are all masked is the one
/// case where masking by value and by -inf differ, see the module docs of
/// the rules), and asserts the outputs agree to 1e-5 relative error.
fn assert_same(before: &Graph, after: &Graph) {
    for seed in 0..3 {
        let mut inputs = random_inputs(before, seed, &BTreeMap::new());
        for (_, t) in inputs.iter_mut() {
            if t.dtype() == DType::Bool {
                let shape = t.shape().to_vec();
                let keys = shape.last().copied().unwrap_or(1).max(1);
                let mut v = t.to_i64s();
                for (i, x) in v.iter_mut().enumerate() {
                    if i % keys == 0 {
                        *x = 1;
                    }
                }
                *t = Tensor::from_i64s(DType::Bool, &shape, &v);
            }
        }
        let a = run(before, &inputs);
        let b = run(after, &inputs);
        assert_eq!(a.len(), b.len());
        for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
            assert_eq!(na, nb);
            let e = rel_error(ta, tb);
            assert!(e <= 1e-5, "output `{na}` differs: relative error {e}");
        }
    }
}

/// The attributes of the only Attention node of `g`.
fn attention_attrs(g: &Graph) -> kiln_ir::op::AttentionAttrs {
    let ids: Vec<_> = g
        .node_ids()
        .into_iter()
        .filter(|&n| g.node(n).op.name() == "Attention")
        .collect();
    assert_eq!(ids.len(), 1, "one Attention in\n{}", print(g));
    match &g.node(ids[0]).op {
        Op::Attention(a) => *a,
        other => panic!("not an Attention: {other:?}"),
    }
}

/// Number of inputs given to the only Attention node of `g`.
fn attention_inputs(g: &Graph) -> usize {
    let n = g
        .node_ids()
        .into_iter()
        .find(|&n| g.node(n).op.name() == "Attention")
        .expect("an Attention node");
    g.node(n).inputs.iter().filter(|v| v.is_some()).count()
}

// ---- attention-sdpa ----

const DIV_SCORES: &str = r#"graph "g" {
  input %q: f32[2, 2, 4, 8]
  input %k: f32[2, 2, 4, 8]
  input %v: f32[2, 2, 4, 8]
  init %c: f32[] = 2.0
  %kt = Transpose(%k) {perm = [0, 1, 3, 2]} @kt
  %s = MatMul(%q, %kt) @scores
  %sd = Div(%s, %c) @scale
  %p = Softmax(%sd) {axis = -1} @softmax
  %y = MatMul(%p, %v) @context
  output %y
}"#;

#[test]
fn scale_on_scores_by_div() {
    let (g, out, printed, _) = fires_with(&[SDPA], &[SDPA], DIV_SCORES);
    assert_eq!(count(&out, "Softmax"), 0);
    assert_eq!(count(&out, "MatMul"), 0);
    assert_eq!(count(&out, "Transpose"), 0, "K^T of a swap is K itself");
    assert_eq!(attention_attrs(&out).scale, Some(0.5));
    insta::assert_snapshot!("attention_sdpa_div", printed);
    assert_same(&g, &out);
}

const MUL_ADDITIVE_MASK: &str = r#"graph "g" {
  input %q: f32[2, 2, 4, 8]
  input %k: f32[2, 2, 4, 8]
  input %v: f32[2, 2, 4, 6]
  input %mask: f32[2, 1, 1, 4]
  init %c: f32[] = 0.125
  %kt = Transpose(%k) {perm = [0, 1, 3, 2]} @kt
  %s = MatMul(%q, %kt) @scores
  %sm = Mul(%c, %s) @scale
  %sa = Add(%sm, %mask) @padding_mask
  %p = Softmax(%sa) {axis = 3} @softmax
  %y = MatMul(%p, %v) @context
  output %y
}"#;

#[test]
fn scale_by_mul_and_additive_padding_mask() {
    let (g, out, printed, _) = fires_with(&[SDPA], &[SDPA], MUL_ADDITIVE_MASK);
    assert_eq!(count(&out, "Softmax"), 0);
    assert_eq!(attention_inputs(&out), 4, "the mask is attn_mask");
    assert_eq!(attention_attrs(&out).scale, Some(0.125));
    insta::assert_snapshot!("attention_sdpa_additive_mask", printed);
    assert_same(&g, &out);
}

/// Multi-head reshapes as exporters write them: heads split by Reshape and
/// Transpose (Kᵀ straight from `perm = [0, 2, 3, 1]`), the scale on Q, the
/// heads merged again after the context.
const SCALE_ON_Q_WITH_HEAD_RESHAPES: &str = r#"graph "g" {
  input %xq: f32[2, 4, 16]
  input %xk: f32[2, 4, 16]
  input %xv: f32[2, 4, 16]
  init %heads: i64[4] = [0, 0, 2, 8]
  init %merge: i64[3] = [0, 0, 16]
  init %c: f32[] = 0.35355339
  %qr = Reshape(%xq, %heads) @q_heads
  %q = Transpose(%qr) {perm = [0, 2, 1, 3]} @q_t
  %qs = Mul(%q, %c) @scale_q
  %kr = Reshape(%xk, %heads) @k_heads
  %kt = Transpose(%kr) {perm = [0, 2, 3, 1]} @k_t
  %vr = Reshape(%xv, %heads) @v_heads
  %v = Transpose(%vr) {perm = [0, 2, 1, 3]} @v_t
  %s = MatMul(%qs, %kt) @scores
  %p = Softmax(%s) @softmax
  %ctx = MatMul(%p, %v) @context
  %ct = Transpose(%ctx) {perm = [0, 2, 1, 3]} @ctx_t
  %y = Reshape(%ct, %merge) @merge_heads
  output %y
}"#;

#[test]
fn scale_on_q_with_multi_head_reshapes() {
    let (g, out, printed, _) = fires_with(&[SDPA], &[SDPA], SCALE_ON_Q_WITH_HEAD_RESHAPES);
    assert_eq!(count(&out, "Mul"), 0, "the scale moved into the attribute");
    assert_eq!(count(&out, "Softmax"), 0);
    assert_eq!(attention_attrs(&out).scale, Some(0.35355339));
    insta::assert_snapshot!("attention_sdpa_scale_on_q", printed);
    assert_same(&g, &out);
}

/// HF style: `√scale` on Q and on K before its transpose.
const SQRT_SCALE_ON_Q_AND_K: &str = r#"graph "g" {
  input %q: f32[2, 2, 4, 8]
  input %k: f32[2, 2, 4, 8]
  input %v: f32[2, 2, 4, 8]
  init %c: f32[] = 0.59460356
  %qs = Mul(%q, %c) @scale_q
  %ks = Mul(%k, %c) @scale_k
  %kt = Transpose(%ks) {perm = [0, 1, 3, 2]} @kt
  %s = MatMul(%qs, %kt) @scores
  %p = Softmax(%s) @softmax
  %y = MatMul(%p, %v) @context
  output %y
}"#;

#[test]
fn sqrt_scale_on_q_and_k() {
    let (g, out, printed, _) = fires_with(&[SDPA], &[SDPA], SQRT_SCALE_ON_Q_AND_K);
    assert_eq!(count(&out, "Mul"), 0);
    let s = attention_attrs(&out).scale.expect("a scale");
    assert!((s - 0.59460356f32 * 0.59460356).abs() < 1e-7, "{s}");
    insta::assert_snapshot!("attention_sdpa_sqrt_scale_q_k", printed);
    assert_same(&g, &out);
}

/// The scale on Kᵀ after the transpose, as a Mul with the constant first.
#[test]
fn scale_on_k_transposed() {
    let text = r#"graph "g" {
  input %q: f32[2, 2, 4, 8]
  input %k: f32[2, 2, 4, 8]
  input %v: f32[2, 2, 4, 8]
  init %c: f32[] = 0.25
  %kt = Transpose(%k) {perm = [0, 1, 3, 2]} @kt
  %kts = Mul(%c, %kt) @scale_kt
  %s = MatMul(%q, %kts) @scores
  %p = Softmax(%s) @softmax
  %y = MatMul(%p, %v) @context
  output %y
}"#;
    let (g, out, printed, _) = fires_with(&[SDPA], &[SDPA], text);
    assert_eq!(count(&out, "Mul") + count(&out, "Transpose"), 0);
    assert_eq!(attention_attrs(&out).scale, Some(0.25));
    insta::assert_snapshot!("attention_sdpa_scale_on_kt", printed);
    assert_same(&g, &out);
}

const WHERE_KEEP: &str = r#"graph "g" {
  input %q: f32[2, 2, 4, 8]
  input %k: f32[2, 2, 4, 8]
  input %v: f32[2, 2, 4, 8]
  input %keep: bool[2, 1, 4, 4]
  init %c: f32[] = 4.0
  init %neg: f32[] = -3.4028235e38
  %kt = Transpose(%k) {perm = [0, 1, 3, 2]} @kt
  %s = MatMul(%q, %kt) @scores
  %sd = Div(%s, %c) @scale
  %sm = Where(%keep, %sd, %neg) @mask
  %p = Softmax(%sm) @softmax
  %y = MatMul(%p, %v) @context
  output %y
}"#;

#[test]
fn where_keep_mask_becomes_a_bool_attn_mask() {
    let (g, out, printed, _) = fires_with(&[SDPA], &[SDPA], WHERE_KEEP);
    assert_eq!(count(&out, "Where"), 0);
    assert_eq!(attention_inputs(&out), 4);
    insta::assert_snapshot!("attention_sdpa_where_keep", printed);
    assert_same(&g, &out);
}

#[test]
fn where_drop_mask_becomes_not_of_it() {
    let text = r#"graph "g" {
  input %q: f32[2, 2, 4, 8]
  input %k: f32[2, 2, 4, 8]
  input %v: f32[2, 2, 4, 8]
  input %drop: bool[4, 4]
  init %neg: f32[] = -inf
  %kt = Transpose(%k) {perm = [0, 1, 3, 2]} @kt
  %s = MatMul(%q, %kt) @scores
  %sm = Where(%drop, %neg, %s) @mask
  %p = Softmax(%sm) @softmax
  %y = MatMul(%p, %v) @context
  output %y
}"#;
    let (g, out, printed, _) = fires_with(&[SDPA], &[SDPA], text);
    assert_eq!(count(&out, "Not"), 1);
    insta::assert_snapshot!("attention_sdpa_where_drop", printed);
    // Inputs keep key 0, so here the drop mask must not drop it.
    let mut inputs = random_inputs(&g, 7, &BTreeMap::new());
    for (n, t) in inputs.iter_mut() {
        if n == "drop" {
            let v: Vec<i64> = (0..16).map(|i| i64::from(i % 4 > i / 4)).collect();
            *t = Tensor::from_i64s(DType::Bool, &[4, 4], &v);
        }
    }
    let (a, b) = (run(&g, &inputs), run(&out, &inputs));
    assert!(rel_error(&a[0].1, &b[0].1) <= 1e-5);
}

/// One key/value head broadcast over the query heads by the MatMuls is
/// multi-query attention, which Attention broadcasts the same way.
#[test]
fn multi_query_broadcast_in_the_matmuls() {
    let text = r#"graph "g" {
  input %q: f32[2, 4, 3, 8]
  input %k: f32[2, 1, 5, 8]
  input %v: f32[2, 1, 5, 8]
  %kt = Transpose(%k) {perm = [0, 1, 3, 2]} @kt
  %s = MatMul(%q, %kt) @scores
  %p = Softmax(%s) @softmax
  %y = MatMul(%p, %v) @context
  output %y
}"#;
    let (g, out, printed, _) = fires_with(&[SDPA], &[SDPA], text);
    assert_eq!(attention_attrs(&out).scale, Some(1.0));
    insta::assert_snapshot!("attention_sdpa_mqa_broadcast", printed);
    assert_same(&g, &out);
}

/// The rule never assumes which transpose produced `Kᵀ`: it composes the
/// permutation it finds with the swap of the last two axes. Here the
/// "keys" are transposed over the wrong axes (head size equals sequence
/// length, so the graph types), and the fused graph still computes the
/// same values, with `K = Transpose{0, 2, 3, 1}(k)`.
#[test]
fn a_transpose_of_the_wrong_axes_is_composed_exactly() {
    let text = r#"graph "g" {
  input %q: f32[2, 2, 4, 4]
  input %k: f32[2, 4, 2, 4]
  input %v: f32[2, 2, 4, 4]
  %kt = Transpose(%k) {perm = [0, 2, 1, 3]} @not_a_swap
  %s = MatMul(%q, %kt) @scores
  %p = Softmax(%s) @softmax
  %y = MatMul(%p, %v) @context
  output %y
}"#;
    let (g, out, _, _) = fires_with(&[SDPA], &[SDPA], text);
    let t = out
        .node_ids()
        .into_iter()
        .find(|&n| out.node(n).op.name() == "Transpose")
        .expect("K is a transpose of k");
    assert_eq!(
        out.node(t).op,
        Op::Transpose {
            perm: Some(vec![0, 2, 3, 1])
        }
    );
    assert_same(&g, &out);
}

#[test]
fn not_over_another_softmax_axis() {
    does_not_fire(SDPA, &DIV_SCORES.replace("{axis = -1}", "{axis = 2}"));
}

#[test]
fn not_when_the_probabilities_are_also_an_output() {
    does_not_fire(
        SDPA,
        &DIV_SCORES.replace("output %y", "output %y\n  output %p"),
    );
}

#[test]
fn not_when_the_scores_are_read_elsewhere() {
    does_not_fire(
        SDPA,
        &DIV_SCORES.replace(
            "  output %y",
            "  %extra = ReduceMax(%s) {keepdims = 0} @extra\n  output %y\n  output %extra",
        ),
    );
}

#[test]
fn not_when_the_probabilities_multiply_v_transposed() {
    // Pᵀ·V sums over queries, not keys: not attention.
    does_not_fire(
        SDPA,
        r#"graph "g" {
  input %q: f32[2, 2, 4, 8]
  input %k: f32[2, 2, 4, 8]
  input %v: f32[2, 2, 4, 8]
  %kt = Transpose(%k) {perm = [0, 1, 3, 2]} @kt
  %s = MatMul(%q, %kt) @scores
  %p = Softmax(%s) @softmax
  %pt = Transpose(%p) {perm = [0, 1, 3, 2]} @pt
  %y = MatMul(%pt, %v) @context
  output %y
}"#,
    );
}

#[test]
fn not_for_a_where_that_does_not_mask() {
    // Replacing scores by -1 is not masking: exp(-1) is not 0.
    does_not_fire(SDPA, &WHERE_KEEP.replace("-3.4028235e38", "-1.0"));
}

#[test]
fn not_for_a_negative_scale() {
    does_not_fire(SDPA, &DIV_SCORES.replace("= 2.0", "= -2.0"));
}

#[test]
fn not_when_the_batch_broadcasts() {
    does_not_fire(
        SDPA,
        &DIV_SCORES.replace("input %k: f32[2, 2, 4, 8]", "input %k: f32[1, 2, 4, 8]"),
    );
}

#[test]
fn not_when_the_mask_is_shorter_than_the_keys() {
    // A key-axis mask of size 1 broadcasts in Add, but Attention pads a
    // short mask with -inf instead.
    does_not_fire(
        SDPA,
        &MUL_ADDITIVE_MASK.replace(
            "input %mask: f32[2, 1, 1, 4]",
            "input %mask: f32[2, 1, 4, 1]",
        ),
    );
}

// ---- attention-causal ----

/// A fused attention over `seq` whose mask is `MASK` (a value named %m
/// built by `BODY`).
fn causal_graph(inputs: &str, body: &str) -> String {
    format!(
        r#"graph "g" {{
  input %q: f32[2, 2, seq, 8]
  input %k: f32[2, 2, seq, 8]
  input %v: f32[2, 2, seq, 8]
{inputs}  %shape = Shape(%q) @shape
  %n = Gather(%shape, %two) {{axis = 0}} @seq_len
  %n1 = Unsqueeze(%n, %zero) @seq_len_1
  %nn = Concat(%n1, %n1) {{axis = 0}} @seq_seq
{body}  %y = Attention(%q, %k, %v, %m) {{scale = 0.25}} @attention
  output %y
}}"#
    )
}

const COMMON_INITS: &str = "  init %two: i64[] = 2\n  init %zero: i64[1] = [0]\n  init %one: i64[1] = [1]\n  init %start: i64[] = 0\n  init %step: i64[] = 1\n  init %neg: f32[] = -3.4028235e38\n  init %zerof: f32[] = 0.0\n  init %minus_one: f32[] = -1.0\n";

fn trilu_mask(upper: i64, k: Option<i64>) -> String {
    let (kinit, karg) = match k {
        Some(k) => (format!("  init %diag: i64[] = {k}\n"), ", %diag"),
        None => (String::new(), ""),
    };
    causal_graph(
        &format!("{COMMON_INITS}{kinit}"),
        &format!(
            "  %ones = ConstantOfShape(%nn) {{value = f32[1] [1.0]}} @ones\n  %tri = Trilu(%ones{karg}) {{upper = {upper}}} @tril\n  %m = Cast(%tri) {{to = bool}} @bool\n"
        ),
    )
}

#[test]
fn trilu_of_ones_is_causal() {
    let (g, out, printed, _) = fires_with(&[CAUSAL], &[CAUSAL], &trilu_mask(0, None));
    assert!(attention_attrs(&out).is_causal);
    assert_eq!(attention_inputs(&out), 3);
    assert_eq!(count(&out, "Trilu"), 0);
    insta::assert_snapshot!("attention_causal_trilu", printed);
    assert_same(&g, &out);
}

#[test]
fn strict_upper_trilu_dropped_by_not_is_causal() {
    // triu(ones, 1) marks the future; Not of it keeps the past.
    let text = trilu_mask(1, Some(1)).replace(
        "%m = Cast(%tri) {to = bool} @bool",
        "%fut = Cast(%tri) {to = bool} @bool\n  %m = Not(%fut) @keep",
    );
    let (g, out, _, _) = fires_with(&[CAUSAL], &[CAUSAL], &text);
    assert!(attention_attrs(&out).is_causal);
    assert_same(&g, &out);
}

#[test]
fn torch_equal_zero_where_form_is_causal() {
    // torch.onnx's causal mask: Where(Equal(Trilu(ones), 0), -inf, 0).
    let text = trilu_mask(0, None)
        .replace(
            "%m = Cast(%tri) {to = bool} @bool",
            "%fut = Equal(%tri, %zerof) @future\n  %m = Where(%fut, %ninf, %zerof) @additive",
        )
        .replace("  init %zerof", "  init %ninf: f32[] = -inf\n  init %zerof");
    let (g, out, printed, _) = fires_with(&[CAUSAL], &[CAUSAL], &text);
    assert!(attention_attrs(&out).is_causal);
    insta::assert_snapshot!("attention_causal_torch_equal", printed);
    assert_same(&g, &out);
}

#[test]
fn not_for_an_upper_triangular_keep_mask() {
    does_not_fire(CAUSAL, &trilu_mask(1, None));
}

#[test]
fn not_for_an_offset_diagonal() {
    does_not_fire(CAUSAL, &trilu_mask(0, Some(1)));
    does_not_fire(CAUSAL, &trilu_mask(0, Some(-1)));
}

/// GPT-2's `bias` buffer (lower triangle of ones, `[1, 1, P, P]`) sliced
/// to `[:, :, :S, :S]`.
fn sliced_bias(p: usize, lower: bool) -> String {
    let rows: Vec<String> = (0..p)
        .map(|i| {
            let row: Vec<&str> = (0..p)
                .map(|j| if (j <= i) == lower { "true" } else { "false" })
                .collect();
            format!("[{}]", row.join(", "))
        })
        .collect();
    causal_graph(
        &format!(
            "{COMMON_INITS}  init %bias: bool[1, 1, {p}, {p}] = [[[{}]]]\n  init %starts: i64[2] = [0, 0]\n  init %axes: i64[2] = [2, 3]\n",
            rows.join(", ")
        ),
        "  %m = Slice(%bias, %starts, %nn, %axes) @slice\n",
    )
}

#[test]
fn sliced_bias_buffer_is_causal() {
    let (g, out, printed, _) = fires_with(&[CAUSAL], &[CAUSAL], &sliced_bias(6, true));
    assert!(attention_attrs(&out).is_causal);
    assert_eq!(count(&out, "Slice"), 0);
    insta::assert_snapshot!("attention_causal_sliced_bias", printed);
    assert_same(&g, &out);
}

#[test]
fn sliced_bias_buffer_above_the_fold_limit_is_causal() {
    // 128 x 128 = 16384 elements, above the default fold limit (4096):
    // bool buffers are tracked anyway.
    let (g, out, _, _) = fires_with(&[CAUSAL], &[CAUSAL], &sliced_bias(128, true));
    assert!(attention_attrs(&out).is_causal);
    assert_same(&g, &out);
}

#[test]
fn not_for_a_sliced_buffer_that_is_not_lower_triangular() {
    does_not_fire(CAUSAL, &sliced_bias(6, false));
    // Sliced from (0, 1): the diagonal moves.
    does_not_fire(
        CAUSAL,
        &sliced_bias(6, true).replace(
            "init %starts: i64[2] = [0, 0]",
            "init %starts: i64[2] = [0, 1]",
        ),
    );
}

/// Positions `Range(0, S, 1)` as a column (query) and a row (key).
fn range_mask(body: &str) -> String {
    causal_graph(
        COMMON_INITS,
        &format!(
            "  %pos = Range(%start, %n, %step) @positions\n  %qpos = Unsqueeze(%pos, %one) @q_pos\n  %kpos = Unsqueeze(%pos, %zero) @k_pos\n{body}"
        ),
    )
}

#[test]
fn range_comparison_where_additive_is_causal() {
    // LLaMA (unfused) style: Where(k <= q, 0, min).
    let text = range_mask(
        "  %allowed = LessOrEqual(%kpos, %qpos) @allowed\n  %m = Where(%allowed, %zerof, %neg) @additive\n",
    );
    let (g, out, printed, _) = fires_with(&[CAUSAL], &[CAUSAL], &text);
    assert!(attention_attrs(&out).is_causal);
    assert_eq!(count(&out, "Range") + count(&out, "Where"), 0);
    insta::assert_snapshot!("attention_causal_range_where", printed);
    assert_same(&g, &out);
}

#[test]
fn range_comparison_cast_mul_is_causal() {
    // GPT-2 (unfused) style: Cast(k > q) * -1e9.
    let text = range_mask(
        "  %future = Greater(%kpos, %qpos) @future\n  %ff = Cast(%future) {to = f32} @future_f\n  init %big: f32[] = -1000000000.0\n  %m = Mul(%ff, %big) @additive\n",
    );
    let (g, out, printed, _) = fires_with(&[CAUSAL], &[CAUSAL], &text);
    assert!(attention_attrs(&out).is_causal);
    insta::assert_snapshot!("attention_causal_range_cast_mul", printed);
    assert_same(&g, &out);
}

#[test]
fn range_comparison_bool_forms_are_causal() {
    for body in [
        "  %m = GreaterOrEqual(%qpos, %kpos) @keep\n",
        "  %fut = Less(%qpos, %kpos) @future\n  %m = Not(%fut) @keep\n",
    ] {
        let (g, out, _, _) = fires_with(&[CAUSAL], &[CAUSAL], &range_mask(body));
        assert!(attention_attrs(&out).is_causal);
        assert_same(&g, &out);
    }
}

#[test]
fn not_for_comparisons_that_are_not_causal() {
    for body in [
        // j < i: the diagonal is masked too.
        "  %m = Less(%kpos, %qpos) @strict\n",
        // i <= j: the future, not the past.
        "  %m = LessOrEqual(%qpos, %kpos) @upper\n",
        // A too small "large negative".
        "  %allowed = LessOrEqual(%kpos, %qpos) @allowed\n  %m = Where(%allowed, %zerof, %minus_one) @additive\n",
    ] {
        does_not_fire(CAUSAL, &range_mask(body));
    }
}

#[test]
fn not_for_shifted_positions() {
    // Keys at positions 1..S+1 against queries at 0..S: an offset diagonal.
    let text = range_mask(
        "  %n2 = Add(%n, %step) @n_plus_1\n  %kpos1 = Range(%step, %n2, %step) @k_positions\n  %kp = Unsqueeze(%kpos1, %zero) @k_pos1\n  %m = LessOrEqual(%kp, %qpos) @allowed\n",
    );
    does_not_fire(CAUSAL, &text);
}

#[test]
fn constant_additive_mask_is_causal_and_other_lengths_are_not() {
    let mask = |n: usize| -> String {
        let rows: Vec<String> = (0..n)
            .map(|i| {
                let r: Vec<&str> = (0..n)
                    .map(|j| if j <= i { "0.0" } else { "-inf" })
                    .collect();
                format!("[{}]", r.join(", "))
            })
            .collect();
        format!("[{}]", rows.join(", "))
    };
    let text = |qs: usize, ks: usize, m: &str| {
        format!(
            r#"graph "g" {{
  input %q: f32[1, 2, {qs}, 8]
  input %k: f32[1, 2, {ks}, 8]
  input %v: f32[1, 2, {ks}, 8]
  init %m: f32[{qs}, {ks}] = {m}
  %y = Attention(%q, %k, %v, %m) @attention
  output %y
}}"#
        )
    };
    let (g, out, printed, _) = fires_with(&[CAUSAL], &[CAUSAL], &text(4, 4, &mask(4)));
    assert!(attention_attrs(&out).is_causal);
    insta::assert_snapshot!("attention_causal_constant", printed);
    assert_same(&g, &out);
    // Queries 0..3 against keys 0..4 (a past key the mask does not hide
    // from query 0 would be causal with an offset): not is_causal.
    let wide: Vec<String> = (0..3)
        .map(|i| {
            let r: Vec<&str> = (0..4)
                .map(|j| if j <= i { "0.0" } else { "-inf" })
                .collect();
            format!("[{}]", r.join(", "))
        })
        .collect();
    does_not_fire(CAUSAL, &text(3, 4, &format!("[{}]", wide.join(", "))));
}

// ---- attention-gqa ----

/// LLaMA's repeat_kv: `[B, KV, S, D] -> Unsqueeze(2) -> Expand|Tile -> Reshape [B, H, S, D]`.
fn repeat_kv(how: &str) -> String {
    let rep = |x: &str| {
        match how {
        "expand" => format!(
            "  %{x}u = Unsqueeze(%{x}0, %two) @{x}_unsqueeze\n  %{x}e = Expand(%{x}u, %shape5) @{x}_expand\n  %{x} = Reshape(%{x}e, %shape4) @{x}_repeat\n"
        ),
        _ => format!(
            "  %{x}u = Unsqueeze(%{x}0, %two) @{x}_unsqueeze\n  %{x}e = Tile(%{x}u, %reps) @{x}_tile\n  %{x} = Reshape(%{x}e, %shape4) @{x}_repeat\n"
        ),
    }
    };
    format!(
        r#"graph "g" {{
  input %q: f32[2, 4, 3, 8]
  input %k0: f32[2, 2, 3, 8]
  input %v0: f32[2, 2, 3, 8]
  init %two: i64[1] = [2]
  init %shape5: i64[5] = [2, 2, 2, 3, 8]
  init %reps: i64[5] = [1, 1, 2, 1, 1]
  init %shape4: i64[4] = [0, 4, -1, 8]
{}{}  %y = Attention(%q, %k, %v) {{scale = 0.3}} @attention
  output %y
}}"#,
        rep("k"),
        rep("v")
    )
}

#[test]
fn repeat_kv_by_expand_is_grouped_query() {
    let (g, out, printed, _) = fires_with(&[GQA], &[GQA], &repeat_kv("expand"));
    assert_eq!(count(&out, "Expand") + count(&out, "Reshape"), 0);
    insta::assert_snapshot!("attention_gqa_expand", printed);
    assert_same(&g, &out);
}

#[test]
fn repeat_kv_by_tile_is_grouped_query() {
    let (g, out, printed, _) = fires_with(&[GQA], &[GQA], &repeat_kv("tile"));
    assert_eq!(count(&out, "Tile"), 0);
    insta::assert_snapshot!("attention_gqa_tile", printed);
    assert_same(&g, &out);
}

#[test]
fn one_head_expanded_is_multi_query() {
    let text = r#"graph "g" {
  input %q: f32[2, 4, 3, 8]
  input %k0: f32[2, 1, 3, 8]
  input %v0: f32[2, 1, 3, 8]
  init %shape: i64[4] = [2, 4, 3, 8]
  %k = Expand(%k0, %shape) @k_expand
  %v = Expand(%v0, %shape) @v_expand
  %y = Attention(%q, %k, %v) @attention
  output %y
}"#;
    let (g, out, printed, _) = fires_with(&[GQA], &[GQA], text);
    assert_eq!(count(&out, "Expand"), 0);
    insta::assert_snapshot!("attention_gqa_mqa_expand", printed);
    assert_same(&g, &out);
}

#[test]
fn not_for_a_tile_of_several_heads() {
    // Tile repeats the block of heads [h0, h1, h0, h1]; Attention groups
    // them [h0, h0, h1, h1].
    does_not_fire(
        GQA,
        r#"graph "g" {
  input %q: f32[2, 4, 3, 8]
  input %k0: f32[2, 2, 3, 8]
  input %v0: f32[2, 2, 3, 8]
  init %reps: i64[4] = [1, 2, 1, 1]
  %k = Tile(%k0, %reps) @k_tile
  %v = Tile(%v0, %reps) @v_tile
  %y = Attention(%q, %k, %v) @attention
  output %y
}"#,
    );
}

#[test]
fn not_when_only_the_keys_are_repeated() {
    let text = repeat_kv("expand")
        .replace("  %vu = Unsqueeze(%v0, %two) @v_unsqueeze\n  %ve = Expand(%vu, %shape5) @v_expand\n  %v = Reshape(%ve, %shape4) @v_repeat\n", "")
        .replace("input %v0: f32[2, 2, 3, 8]", "input %v: f32[2, 4, 3, 8]");
    does_not_fire(GQA, &text);
}

// ---- the whole pass ----

fn attention_pass() -> Pipeline {
    Pipeline::new(
        "attention",
        vec![Pass::named("attention").expect("the attention pass exists")],
    )
}

#[test]
fn whole_pass_on_a_llama_layer_fuses_gqa_and_causal() {
    // LLaMA fused-export style: Trilu mask under Where, repeat_kv, K^T by a swap.
    let text = r#"graph "g" {
  input %q: f32[2, 4, seq, 8]
  input %k0: f32[2, 2, seq, 8]
  input %v0: f32[2, 2, seq, 8]
  init %two: i64[1] = [2]
  init %idx: i64[] = 2
  init %zero: i64[1] = [0]
  init %shape4: i64[4] = [0, 4, -1, 8]
  init %c: f32[] = 0.35355339
  init %neg: f32[] = -3.4028235e38
  %shape = Shape(%k0) @shape
  %n = Gather(%shape, %idx) {axis = 0} @seq_len
  %n1 = Unsqueeze(%n, %zero) @seq_len_1
  %nn = Concat(%n1, %n1) {axis = 0} @seq_seq
  %ones = ConstantOfShape(%nn) {value = f32[1] [1.0]} @ones
  %tri = Trilu(%ones) {upper = 0} @tril
  %m = Cast(%tri) {to = bool} @bool
  %ku = Unsqueeze(%k0, %two) @k_unsqueeze
  %vu = Unsqueeze(%v0, %two) @v_unsqueeze
  init %s5: i64[5] = [1, 1, 2, 1, 1]
  %ke = Expand(%ku, %s5) @k_expand
  %ve = Expand(%vu, %s5) @v_expand
  %k = Reshape(%ke, %shape4) @k_repeat
  %v = Reshape(%ve, %shape4) @v_repeat
  %kt = Transpose(%k) {perm = [0, 1, 3, 2]} @k_T
  %s = MatMul(%q, %kt) @scores
  %ss = Mul(%s, %c) @scale
  %sm = Where(%m, %ss, %neg) @causal_mask
  %p = Softmax(%sm) {axis = -1} @softmax
  %y = MatMul(%p, %v) @context
  output %y
}"#;
    let g = parse(text);
    let (out, report) = optimize(&g, &attention_pass()).expect("optimizes");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    for rule in [SDPA, CAUSAL, GQA] {
        assert!(report.fired(rule) > 0, "{rule} did not fire:\n{report}");
    }
    let a = attention_attrs(&out);
    assert!(a.is_causal);
    assert_eq!(attention_inputs(&out), 3);
    for gone in ["Softmax", "Expand", "Trilu", "Where", "Transpose"] {
        assert_eq!(count(&out, gone), 0, "{gone} left:\n{}", print(&out));
    }
    insta::assert_snapshot!("attention_pass_llama_layer", print(&out));
    assert_same(&g, &out);
    // The fused graph never holds an S x S tensor: fewer bytes and a lower
    // peak, and no more FLOPs.
    let (b, a) = (&report.cost_before, &report.cost_after);
    assert!(a.bytes < b.bytes, "bytes {} -> {}", b.bytes, a.bytes);
    assert!(
        a.peak_bytes < b.peak_bytes,
        "peak {} -> {}",
        b.peak_bytes,
        a.peak_bytes
    );
    assert!(a.flops <= b.flops, "FLOPs {} -> {}", b.flops, a.flops);
}

#[test]
fn attention_costs_less_than_its_decomposition() {
    // At sequence 512 the scores are 2*2*512*512*4 bytes = 4 MiB apiece.
    let text = DIV_SCORES.replace(", 4, 8]", ", 512, 8]");
    let g = parse(&text);
    let (out, report) = optimize(&g, &attention_pass()).expect("optimizes");
    assert_eq!(count(&out, "Attention"), 1);
    let (b, a) = (&report.cost_before, &report.cost_after);
    let scores = 2.0 * 2.0 * 512.0 * 512.0 * 4.0;
    assert!(
        b.peak_bytes - a.peak_bytes >= scores,
        "peak {} -> {}",
        b.peak_bytes,
        a.peak_bytes
    );
    assert!(
        b.bytes - a.bytes >= 4.0 * scores,
        "bytes {} -> {}",
        b.bytes,
        a.bytes
    );
    assert!(a.flops <= b.flops);
    assert!(a.time_ns < b.time_ns);
}

// ---- the example models ----

fn load(dir: &Path) -> Graph {
    let mut g = load_model(&dir.join("model.onnx"), ImportOptions::default())
        .expect("example model imports");
    kiln_ir::infer_types(&mut g).expect("example model infers");
    g
}

/// The reference inputs of `test_data_set_0`, by graph input name.
fn reference_inputs(dir: &Path, g: &Graph) -> Vec<(String, Tensor)> {
    let data = dir.join("test_data_set_0");
    let mut out = Vec::new();
    let inputs = g
        .inputs()
        .iter()
        .filter(|&&v| g.value(v).initializer.is_none());
    for (i, &v) in inputs.enumerate() {
        let (name, t) =
            read_tensor_pb(&data.join(format!("input_{i}.pb"))).expect("reference input reads");
        out.push((
            if name.is_empty() {
                g.value(v).name.clone()
            } else {
                name
            },
            t,
        ));
    }
    out
}

#[test]
fn o2_fuses_every_layer_of_every_example_model() {
    let Some(dirs) = example_model_dirs(Path::new(env!("CARGO_TARGET_TMPDIR"))) else {
        eprintln!("skipping: no example models and no Python to generate them (run `make models`)");
        return;
    };
    assert!(
        dirs.len() >= 6,
        "expected the six example models, found {dirs:?}"
    );
    for dir in dirs {
        let model = dir
            .file_name()
            .expect("a model directory")
            .to_string_lossy()
            .to_string();
        let g = load(&dir);
        // One Softmax per layer's attention in the source graph.
        let layers = count(&g, "Softmax");
        assert!(layers >= 2, "{model}: {layers} softmaxes");
        let (out, report) = optimize(&g, &Pipeline::level(OptLevel::O2)).expect("optimizes");
        kiln_ir::verify(&out).unwrap_or_else(|e| panic!("{model}: {e}"));
        assert!(report.errors.is_empty(), "{model}: {:?}", report.errors);
        assert_eq!(count(&out, "Attention"), layers, "{model}:\n{report}");
        assert_eq!(count(&out, "Softmax"), 0, "{model}: a Softmax is left");
        let has_loss = g.outputs().iter().any(|&v| g.value(v).name == "loss");
        assert_eq!(
            count(&out, "LinearCrossEntropy"),
            usize::from(has_loss),
            "{model}:\n{report}"
        );
        let decoder = model.starts_with("gpt2") || model.starts_with("llama");
        for n in out.node_ids() {
            let node = out.node(n);
            let Op::Attention(a) = &node.op else {
                continue;
            };
            // Decoders' masks are causal; BERT keeps its padding mask.
            assert_eq!(a.is_causal, decoder, "{model}: {}", node.name);
            let given = node.inputs.iter().filter(|v| v.is_some()).count();
            assert_eq!(given, if decoder { 3 } else { 4 }, "{model}: {}", node.name);
            if model.starts_with("llama") {
                // Grouped-query: the keys keep their 2 heads.
                let k = node
                    .input(1)
                    .and_then(|k| out.value(k).ty.clone())
                    .expect("typed K");
                assert_eq!(k.shape[1], kiln_ir::dim::Dim::Fixed(2), "{model}: K is {k}");
            }
        }
        eprintln!("{model}: {layers} layers fused\n{report}");
        let inputs = reference_inputs(&dir, &g);
        let want = run(&g, &inputs);
        let got = run(&out, &inputs);
        for ((n, a), (m, b)) in want.iter().zip(&got) {
            assert_eq!(n, m);
            let (x, y) = (a.to_f64s(), b.to_f64s());
            assert_eq!(a.shape(), b.shape(), "{model}: `{n}` shape");
            for (p, q) in x.iter().zip(&y) {
                assert!(
                    (p - q).abs() <= 1e-5 + 1e-4 * p.abs(),
                    "{model}: output `{n}`: {p} vs {q}"
                );
            }
        }
    }
}

/// A GPT-2-small-shaped stack (d 768, 12 heads, seq symbolic) whose
/// attention is masked the GPT-2 way, by `Where` over the 1024 x 1024
/// causal `bias` buffer sliced to `[:, :, :S, :S]`.
fn gpt2_small_with_bias(layers: usize) -> Graph {
    let d = 768;
    let mut s = String::from("graph \"gpt2\" {\n  input %x: f32[batch, seq, 768]\n  input %bias_in: bool[1, 1, 1024, 1024]\n");
    s += "  init %heads: i64[4] = [0, 0, 12, 64]\n  init %merge: i64[3] = [0, 0, 768]\n  init %scale: f32[] = 8.0\n";
    s += "  init %neg: f32[] = -3.4028235e38\n  init %starts: i64[2] = [0, 0]\n  init %axes: i64[2] = [2, 3]\n";
    s += "  %shape = Shape(%x) {start = 1, end = 2} @shape\n  %ends = Concat(%shape, %shape) {axis = 0} @ends\n";
    s += "  %mask = Slice(%bias_in, %starts, %ends, %axes) @causal_mask\n";
    let mut cur = "x".to_string();
    for l in 0..layers {
        s += &format!("  input %w{l}_qkv: f32[{d}, {}]\n  input %w{l}_o: f32[{d}, {d}]\n  input %w{l}_fc: f32[{d}, 3072]\n  input %w{l}_pr: f32[3072, {d}]\n  input %g{l}: f32[{d}]\n", 3 * d);
        s += &format!("  %l{l}_ln = LayerNormalization(%{cur}, %g{l}, %g{l}) @l{l}_ln\n  %l{l}_qkv = MatMul(%l{l}_ln, %w{l}_qkv) @l{l}_qkv\n");
        s += &format!("  %l{l}_q, %l{l}_k, %l{l}_v = Split(%l{l}_qkv) {{axis = 2, num_outputs = 3}} @l{l}_split\n");
        for (t, perm) in [
            ("q", "[0, 2, 1, 3]"),
            ("k", "[0, 2, 3, 1]"),
            ("v", "[0, 2, 1, 3]"),
        ] {
            s += &format!("  %l{l}_{t}r = Reshape(%l{l}_{t}, %heads) @l{l}_{t}r\n  %l{l}_{t}t = Transpose(%l{l}_{t}r) {{perm = {perm}}} @l{l}_{t}t\n");
        }
        s += &format!("  %l{l}_s0 = MatMul(%l{l}_qt, %l{l}_kt) @l{l}_qk\n  %l{l}_s1 = Div(%l{l}_s0, %scale) @l{l}_div\n  %l{l}_s = Where(%mask, %l{l}_s1, %neg) @l{l}_mask\n");
        s += &format!("  %l{l}_p = Softmax(%l{l}_s) @l{l}_sm\n  %l{l}_a = MatMul(%l{l}_p, %l{l}_vt) @l{l}_pv\n  %l{l}_at = Transpose(%l{l}_a) {{perm = [0, 2, 1, 3]}} @l{l}_at\n");
        s += &format!("  %l{l}_am = Reshape(%l{l}_at, %merge) @l{l}_am\n  %l{l}_o = MatMul(%l{l}_am, %w{l}_o) @l{l}_o\n  %l{l}_r1 = Add(%{cur}, %l{l}_o) @l{l}_r1\n");
        s += &format!("  %l{l}_ln2 = LayerNormalization(%l{l}_r1, %g{l}, %g{l}) @l{l}_ln2\n  %l{l}_f = MatMul(%l{l}_ln2, %w{l}_fc) @l{l}_fc\n  %l{l}_gl = Gelu(%l{l}_f) @l{l}_gelu\n");
        s += &format!("  %l{l}_m = MatMul(%l{l}_gl, %w{l}_pr) @l{l}_pr\n  %l{l}_out = Add(%l{l}_r1, %l{l}_m) @l{l}_r2\n");
        cur = format!("l{l}_out");
    }
    s += &format!("  output %{cur}\n}}\n");
    let mut g = parse(&s);
    // The buffer becomes an initializer (as in the exported model).
    let tril: Vec<i64> = (0..1024 * 1024)
        .map(|i| i64::from(i % 1024 <= i / 1024))
        .collect();
    let input = g.value_by_name("bias_in").expect("the bias input");
    let buffer = g
        .add_initializer(
            "bias",
            Tensor::from_i64s(DType::Bool, &[1, 1, 1024, 1024], &tril),
        )
        .expect("a fresh name");
    g.replace_all_uses(input, buffer);
    let inputs: Vec<_> = g.inputs().iter().copied().filter(|&v| v != input).collect();
    g.set_inputs(inputs);
    kiln_ir::infer_types(&mut g).expect("infers");
    g
}

#[test]
fn gpt2_small_with_a_causal_buffer_optimizes_within_two_seconds() {
    let g = gpt2_small_with_bias(12);
    let t = std::time::Instant::now();
    let (out, report) = optimize(&g, &Pipeline::level(OptLevel::O2)).expect("optimizes");
    let secs = t.elapsed().as_secs_f64();
    eprintln!("12 layers with a 1024 x 1024 causal buffer: {secs:.3} s\n{report}");
    assert!(!report.limit_hit(), "{report}");
    assert_eq!(count(&out, "Attention"), 12);
    assert_eq!(
        count(&out, "Softmax") + count(&out, "Where") + count(&out, "Slice"),
        0
    );
    for n in out.node_ids() {
        if let Op::Attention(a) = &out.node(n).op {
            assert!(a.is_causal, "{}", out.node(n).name);
        }
    }
    assert!(secs <= 2.0, "took {secs:.2} s");
}
