//! The algebra rules, each tested three ways: a snapshot of its output in
//! the text format, the interpreter on random inputs before and after (1e-5
//! relative), and a graph where it must not fire or must leave a node alone.

mod common;

use common::{assert_same_outputs, count, does_not_fire, fires, optimize_with, parse, print};

// ---- transpose-cancel ----

const TRANSPOSE_CANCEL: &str = r#"graph "g" {
  input %x: f32[2, 3, 4]
  %a = Transpose(%x) {perm = [1, 2, 0]} @t1
  %b = Transpose(%a) {perm = [2, 0, 1]} @t2
  %y = Relu(%b) @relu
  output %y
}"#;

#[test]
fn transpose_cancel_snapshot_and_numbers() {
    let (g, out, printed) = fires("transpose-cancel", TRANSPOSE_CANCEL);
    assert_eq!(count(&out, "Transpose"), 0);
    insta::assert_snapshot!("transpose_cancel", printed);
    assert_same_outputs(&g, &out);
}

#[test]
fn transpose_cancel_not_for_a_pair_that_does_not_cancel() {
    does_not_fire(
        "transpose-cancel",
        &TRANSPOSE_CANCEL.replace("[2, 0, 1]", "[1, 2, 0]"),
    );
}

// ---- transpose-fold ----

const TRANSPOSE_FOLD: &str = r#"graph "g" {
  input %x: f32[2, 3, 4]
  %a = Transpose(%x) {perm = [1, 2, 0]} @t1
  %b = Transpose(%a) {perm = [1, 2, 0]} @t2
  %y = Relu(%b) @relu
  output %y
}"#;

#[test]
fn transpose_fold_snapshot_and_numbers() {
    let (g, out, printed) = fires("transpose-fold", TRANSPOSE_FOLD);
    assert_eq!(count(&out, "Transpose"), 1);
    insta::assert_snapshot!("transpose_fold", printed);
    assert_same_outputs(&g, &out);
}

#[test]
fn transpose_fold_not_for_a_single_transpose() {
    does_not_fire(
        "transpose-fold",
        r#"graph "g" {
  input %x: f32[2, 3, 4]
  %a = Transpose(%x) {perm = [1, 2, 0]} @t1
  %y = Relu(%a) @relu
  output %y
}"#,
    );
}

#[test]
fn transpose_fold_keeps_an_intermediate_that_is_an_output() {
    let text = TRANSPOSE_FOLD.replace("output %y", "output %y, %a");
    let g = parse(&text);
    let (out, _) = optimize_with(&g, &["transpose-fold"]);
    assert_same_outputs(&g, &out);
    // Both transposes are still needed: %a is an output, and the outer one
    // (or its folded form) computes %y; no extra node appears.
    assert_eq!(count(&out, "Transpose"), 2, "{}", print(&out));
    assert!(out.node_by_name("t1").is_some(), "{}", print(&out));
}

// ---- reshape-fold ----

const RESHAPE_FOLD: &str = r#"graph "g" {
  input %x: f32[2, 3, 4]
  init %s1: i64[2] = [6, 4]
  init %s2: i64[3] = [4, -1, 2]
  %a = Reshape(%x, %s1) @r1
  %b = Reshape(%a, %s2) @r2
  %y = Neg(%b) @neg
  output %y
}"#;

#[test]
fn reshape_fold_snapshot_and_numbers() {
    let (g, out, printed) = fires("reshape-fold", RESHAPE_FOLD);
    assert_eq!(count(&out, "Reshape"), 1);
    assert!(
        out.value_by_name("s1").is_none(),
        "the unused shape is dropped"
    );
    insta::assert_snapshot!("reshape_fold", printed);
    assert_same_outputs(&g, &out);
}

#[test]
fn reshape_fold_not_when_the_outer_shape_copies_a_dim() {
    // 0 copies the inner result's dim 0 (6); applied to %x it would copy 2.
    does_not_fire(
        "reshape-fold",
        &RESHAPE_FOLD.replace("[4, -1, 2]", "[0, 2, 2]"),
    );
}

#[test]
fn reshape_fold_keeps_an_intermediate_that_is_an_output() {
    let g = parse(&RESHAPE_FOLD.replace("output %y", "output %y, %a"));
    let (out, _) = optimize_with(&g, &["reshape-fold"]);
    assert_same_outputs(&g, &out);
    let a = out
        .value_by_name("a")
        .expect("the intermediate output keeps its name");
    let (producer, _) = out.value(a).producer().expect("still computed");
    assert_eq!(out.node(producer).name, "r1");
    assert!(out.outputs().contains(&a));
}

// ---- reshape-noop ----

const RESHAPE_NOOP: &str = r#"graph "g" {
  input %x: f32[2, 3, 4]
  init %s: i64[3] = [2, -1, 4]
  %a = Reshape(%x, %s) @r
  %y = Sigmoid(%a) @sig
  output %y
}"#;

#[test]
fn reshape_noop_snapshot_and_numbers() {
    let (g, out, printed) = fires("reshape-noop", RESHAPE_NOOP);
    assert_eq!(count(&out, "Reshape"), 0);
    insta::assert_snapshot!("reshape_noop", printed);
    assert_same_outputs(&g, &out);
}

#[test]
fn reshape_noop_not_when_the_shape_changes() {
    does_not_fire(
        "reshape-noop",
        &RESHAPE_NOOP.replace("[2, -1, 4]", "[4, -1, 2]"),
    );
}

#[test]
fn reshape_noop_not_with_symbolic_dims_it_cannot_compare() {
    // [batch, 12] -> [-1, 12] has type [batch, 12] only because inference
    // solved -1; that is still the same shape, so this one does fire...
    let text = r#"graph "g" {
  input %x: f32[batch, 12]
  init %s: i64[2] = [-1, 12]
  %a = Reshape(%x, %s) @r
  %y = Sigmoid(%a) @sig
  output %y
}"#;
    let (g, out, _) = fires("reshape-noop", text);
    assert_eq!(count(&out, "Reshape"), 0);
    assert_same_outputs(&g, &out);
    // ...but [batch, 12] -> [-1, 4, 3] is a real reshape.
    does_not_fire(
        "reshape-noop",
        &text.replace("i64[2] = [-1, 12]", "i64[3] = [-1, 4, 3]"),
    );
}

// ---- identity-elim ----

const IDENTITY: &str = r#"graph "g" {
  input %x: f32[3, 5]
  %a = Identity(%x) @id1
  %b = Tanh(%a) @tanh
  %y = Identity(%b) @id2
  output %y
}"#;

#[test]
fn identity_elim_snapshot_and_numbers() {
    let (g, out, printed) = fires("identity-elim", IDENTITY);
    assert_eq!(count(&out, "Identity"), 0);
    assert_eq!(
        out.value(out.outputs()[0]).name,
        "y",
        "the output keeps its name"
    );
    insta::assert_snapshot!("identity_elim", printed);
    assert_same_outputs(&g, &out);
}

#[test]
fn identity_elim_keeps_an_identity_that_names_an_output() {
    // The output is the input itself: an Identity must carry the name `y`.
    let g = parse(
        r#"graph "g" {
  input %x: f32[3, 5]
  %y = Identity(%x) @keep
  output %y
}"#,
    );
    let (out, _) = optimize_with(&g, &["identity-elim"]);
    assert_eq!(print(&out), print(&g));
}

// ---- dropout-elim ----

const DROPOUT: &str = r#"graph "g" {
  input %x: f32[4, 6]
  init %ratio: f32[] = 0.25
  %a = Dropout(%x, %ratio) @drop1
  %b, _ = Dropout(%a) @drop2
  %y = Exp(%b) @exp
  output %y
}"#;

#[test]
fn dropout_elim_snapshot_and_numbers() {
    let (g, out, printed) = fires("dropout-elim", DROPOUT);
    assert_eq!(count(&out, "Dropout"), 0);
    insta::assert_snapshot!("dropout_elim", printed);
    assert_same_outputs(&g, &out);
}

#[test]
fn dropout_elim_not_in_training_mode() {
    does_not_fire(
        "dropout-elim",
        r#"graph "g" {
  input %x: f32[4, 6]
  input %training: bool[]
  init %ratio: f32[] = 0.25
  %a = Dropout(%x, %ratio, %training) @drop
  %y = Exp(%a) @exp
  output %y
}"#,
    );
}

// ---- cast-elim ----

const CAST: &str = r#"graph "g" {
  input %x: f32[2, 2]
  input %like: f32[1]
  %a = Cast(%x) {to = f32} @cast
  %b = CastLike(%a, %like) @castlike
  %y = Abs(%b) @abs
  output %y
}"#;

#[test]
fn cast_elim_snapshot_and_numbers() {
    let (g, out, printed) = fires("cast-elim", CAST);
    assert_eq!(count(&out, "Cast") + count(&out, "CastLike"), 0);
    insta::assert_snapshot!("cast_elim", printed);
    assert_same_outputs(&g, &out);
}

#[test]
fn cast_elim_not_for_a_real_conversion() {
    // Cast to f16 is a conversion, and so is CastLike of that back to f32.
    does_not_fire("cast-elim", &CAST.replace("{to = f32}", "{to = f16}"));
}

// ---- constant-fold ----

const FOLD: &str = r#"graph "g" {
  input %x: f32[2, 3, 4]
  init %minus_one: i64[1] = [-1]
  %s = Shape(%x) {start = 1} @shape
  %d = Mul(%s, %s) @square
  %t = Concat(%minus_one, %s) {axis = 0} @concat
  %y = Reshape(%x, %t) @reshape
  %z = Cast(%d) {to = f32} @cast
  output %y, %z
}"#;

#[test]
fn constant_fold_snapshot_and_numbers() {
    let (g, out, printed) = fires("constant-fold", FOLD);
    for op in ["Shape", "Mul", "Concat"] {
        assert_eq!(count(&out, op), 0, "{op} folded away:\n{printed}");
    }
    insta::assert_snapshot!("constant_fold", printed);
    assert_same_outputs(&g, &out);
}

#[test]
fn constant_fold_not_for_a_symbolic_shape() {
    does_not_fire(
        "constant-fold",
        r#"graph "g" {
  input %x: f32[batch, 3]
  %s = Shape(%x) @shape
  %y = Cast(%s) {to = f32} @cast
  output %y
}"#,
    );
}

// ---- scale-into-weight ----

const SCALE: &str = "scale-into-weight";

/// A query projection with bias whose 1/√d (d = 4) is applied as a Div.
const SCALED_PROJECTION: &str = r#"graph "g" {
  input %x: f32[2, 3, 4]
  init %w: f32[4, 3] = [[0.5, -1.0, 0.25], [2.0, 0.75, -0.5], [1.5, -2.0, 0.125], [-0.25, 1.0, 0.5]]
  init %b: f32[3] = [0.1, -0.2, 0.3]
  init %sqrt_d: f32[] = 2.0
  %p = MatMul(%x, %w) @q_proj
  %q = Add(%p, %b) @q_bias
  %s = Div(%q, %sqrt_d) @q_scale
  %y = Tanh(%s) @act
  output %y
}"#;

#[test]
fn scale_into_weight_snapshot_and_numbers() {
    let (g, out, printed) = {
        let g = parse(SCALED_PROJECTION);
        let (out, report) = optimize_with(&g, &[SCALE, "constant-fold"]);
        assert_eq!(report.fired(SCALE), 1, "{report}");
        let printed = print(&out);
        (g, out, printed)
    };
    assert_eq!(count(&out, "Div"), 0, "{printed}");
    assert_eq!(count(&out, "MatMul"), 1);
    assert!(
        printed.contains(
            "[[0.25, -0.5, 0.125], [1.0, 0.375, -0.25], [0.75, -1.0, 0.0625], [-0.125, 0.5, 0.25]]"
        ),
        "the folded weight is W/2: {printed}"
    );
    insta::assert_snapshot!("scale_into_weight", printed);
    assert_same_outputs(&g, &out);
}

#[test]
fn scale_into_weight_per_column_mul_numbers() {
    let text = r#"graph "g" {
  input %x: f32[5, 4]
  init %w: f32[4, 3] = [[0.5, -1.0, 0.25], [2.0, 0.75, -0.5], [1.5, -2.0, 0.125], [-0.25, 1.0, 0.5]]
  init %c: f32[3] = [0.5, 3.0, -1.5]
  %p = MatMul(%x, %w) @proj
  %y = Mul(%c, %p) @scale
  output %y
}"#;
    let g = parse(text);
    let (out, report) = optimize_with(&g, &[SCALE, "constant-fold"]);
    assert_eq!(report.fired(SCALE), 1, "{report}");
    assert_eq!(count(&out, "Mul"), 0, "{}", print(&out));
    assert_same_outputs(&g, &out);
}

#[test]
fn scale_into_weight_not_when_the_unscaled_value_is_also_used() {
    // As a graph output, and inside the graph.
    does_not_fire(
        SCALE,
        &SCALED_PROJECTION.replace("output %y", "output %y\n  output %q"),
    );
    let text = SCALED_PROJECTION.replace(
        "%y = Tanh(%s) @act",
        "%t = Tanh(%s) @act\n  %y = Add(%t, %p) @residual",
    );
    does_not_fire(SCALE, &text);
}

#[test]
fn scale_into_weight_not_for_a_weight_known_only_at_run_time() {
    let text = SCALED_PROJECTION
        .replace("init %w: f32[4, 3] = [[0.5, -1.0, 0.25], [2.0, 0.75, -0.5], [1.5, -2.0, 0.125], [-0.25, 1.0, 0.5]]", "input %w: f32[4, 3]");
    does_not_fire(SCALE, &text);
}

#[test]
fn scale_into_weight_not_for_a_scale_known_only_at_run_time() {
    does_not_fire(
        SCALE,
        &SCALED_PROJECTION.replace("init %sqrt_d: f32[] = 2.0", "input %sqrt_d: f32[]"),
    );
}

#[test]
fn scale_into_weight_not_for_a_division_by_zero() {
    does_not_fire(
        SCALE,
        &SCALED_PROJECTION.replace("%sqrt_d: f32[] = 2.0", "%sqrt_d: f32[] = 0.0"),
    );
}

#[test]
fn scale_into_weight_not_for_a_scale_that_varies_by_row() {
    // c [2, 3, 1] scales rows, which W cannot absorb.
    let text = SCALED_PROJECTION.replace(
        "init %sqrt_d: f32[] = 2.0",
        "init %sqrt_d: f32[2, 3, 1] = [[[1.0], [2.0], [3.0]], [[4.0], [5.0], [6.0]]]",
    );
    does_not_fire(SCALE, &text);
}

#[test]
fn scale_into_weight_not_when_an_unfolded_weight_is_bigger_than_the_product() {
    // With folding off the scaled weight would be a Mul over 12 elements
    // replacing one over the product's 3.
    let text = r#"graph "g" {
  input %x: f32[1, 4]
  init %w: f32[4, 3] = [[0.5, -1.0, 0.25], [2.0, 0.75, -0.5], [1.5, -2.0, 0.125], [-0.25, 1.0, 0.5]]
  init %c: f32[] = 0.5
  %p = MatMul(%x, %w) @proj
  %y = Mul(%p, %c) @scale
  output %y
}"#;
    let g = parse(text);
    let mut pipeline = common::pipeline_of(&[SCALE]);
    pipeline.fold_limit = 1;
    let (out, report) = kiln_passes::optimize(&g, &pipeline).expect("optimizes");
    assert_eq!(report.fired(SCALE), 0, "{report}");
    assert_eq!(print(&out), print(&g));
    // The same graph with the product bigger than the weight does fire.
    let wide = text.replace("input %x: f32[1, 4]", "input %x: f32[6, 4]");
    let g = parse(&wide);
    let (out, report) = kiln_passes::optimize(&g, &pipeline).expect("optimizes");
    assert_eq!(report.fired(SCALE), 1, "{report}");
    assert_same_outputs(&g, &out);
}

// ---- matmul-reassoc ----

const REASSOC: &str = "matmul-reassoc";

#[test]
fn matmul_reassoc_low_rank_chain_snapshot_and_numbers() {
    // x·(A·B) with a rank-2 update: (x·A)·B does 2·16·2·(16+16) = 2048
    // FLOPs instead of 2·16·2·16 + 2·16·16·16 = 9216.
    let text = r#"graph "g" {
  input %x: f32[16, 16]
  input %a: f32[16, 2]
  input %b: f32[2, 16]
  %ab = MatMul(%a, %b) @delta
  %y = MatMul(%x, %ab) @apply
  output %y
}"#;
    let (g, out, printed) = fires(REASSOC, text);
    assert!(printed.contains("MatMul(%x, %a)"), "{printed}");
    insta::assert_snapshot!("matmul_reassoc", printed);
    assert_same_outputs(&g, &out);
}

#[test]
fn matmul_reassoc_left_to_right_with_batch_numbers() {
    // (A·B)·C with A [2, 64, 4], B [4, 64], C [64, 4]: the [64, 64]
    // intermediate costs far more than B·C [4, 4].
    let text = r#"graph "g" {
  input %a: f32[2, 64, 4]
  input %b: f32[4, 64]
  input %c: f32[64, 4]
  %ab = MatMul(%a, %b) @first
  %y = MatMul(%ab, %c) @second
  output %y
}"#;
    let (g, out, printed) = fires(REASSOC, text);
    assert!(printed.contains("MatMul(%b, %c)"), "{printed}");
    let (_, report) = optimize_with(&g, &[REASSOC]);
    assert!(
        report.cost_after.flops < report.cost_before.flops / 4.0,
        "{report}"
    );
    assert_same_outputs(&g, &out);
}

#[test]
fn matmul_reassoc_not_when_it_saves_nothing() {
    // 2·M·N·(K+P) = 2·K·P·(M+N) with M = N = K = P.
    does_not_fire(
        REASSOC,
        r#"graph "g" {
  input %a: f32[8, 8]
  input %b: f32[8, 8]
  input %c: f32[8, 8]
  %ab = MatMul(%a, %b) @first
  %y = MatMul(%ab, %c) @second
  output %y
}"#,
    );
}

#[test]
fn matmul_reassoc_not_for_symbolic_shapes() {
    does_not_fire(
        REASSOC,
        r#"graph "g" {
  input %a: f32[n, 4]
  input %b: f32[4, 64]
  input %c: f32[64, 4]
  %ab = MatMul(%a, %b) @first
  %y = MatMul(%ab, %c) @second
  output %y
}"#,
    );
}

#[test]
fn matmul_reassoc_not_for_a_batched_right_operand() {
    does_not_fire(
        REASSOC,
        r#"graph "g" {
  input %a: f32[64, 4]
  input %b: f32[2, 4, 64]
  input %c: f32[64, 4]
  %ab = MatMul(%a, %b) @first
  %y = MatMul(%ab, %c) @second
  output %y
}"#,
    );
}

// ---- CSE and DCE (conversion and extraction, no rule) ----

#[test]
fn duplicated_subgraphs_are_merged() {
    let text = r#"graph "g" {
  input %x: f32[3, 4]
  init %w: f32[4, 2] = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]
  %a1 = MatMul(%x, %w) @m1
  %r1 = Relu(%a1) @relu1
  %a2 = MatMul(%x, %w) @m2
  %r2 = Relu(%a2) @relu2
  %y = Add(%r1, %r2) @sum
  output %y
}"#;
    let g = parse(text);
    let (out, report) = optimize_with(&g, &[]);
    assert_eq!(count(&out, "MatMul"), 1, "{}", print(&out));
    assert_eq!(count(&out, "Relu"), 1, "{}", print(&out));
    assert!(print(&out).contains("Add(%r1, %r1)"), "{}", print(&out));
    assert!(report.cost_after.flops < report.cost_before.flops);
    assert_same_outputs(&g, &out);
}

#[test]
fn dead_nodes_are_removed() {
    let text = r#"graph "g" {
  input %x: f32[3, 4]
  input %unused: f32[2]
  init %w: f32[4, 2] = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]
  %dead = Exp(%x) @dead
  %dead2 = Neg(%dead) @dead_consumer
  %y = MatMul(%x, %w) @live
  output %y
}"#;
    let g = parse(text);
    let (out, _) = optimize_with(&g, &[]);
    assert_eq!(out.node_count(), 1, "{}", print(&out));
    assert!(out.node_by_name("dead").is_none() && out.node_by_name("dead_consumer").is_none());
    // The interface stays: the unused graph input is still an input.
    assert!(
        print(&out).contains("input %unused: f32[2]"),
        "{}",
        print(&out)
    );
    assert_same_outputs(&g, &out);
}
