//! Shape and dtype inference and the verifier, on small graphs built with
//! the `Graph` API.

use kiln_ir::dim::Dim;
use kiln_ir::onnx::import::{load_model, read_tensor_pb, ImportOptions};
use kiln_ir::op::{AttentionAttrs, BinaryOp, GemmAttrs, LossReduction, ReduceKind, UnaryOp, VariadicOp};
use kiln_ir::{infer_node, infer_types, verify, DType, Graph, Op, Tensor, TensorType, ValueId};
use kiln_test_support::{example_model_dirs, model_dirs, onnx_node_test_dir, python};
use std::path::Path;

/// Parses `f32[batch, seq+1, 768]`.
fn ty(s: &str) -> TensorType {
    let (dtype, rest) = s.split_once('[').expect("dtype[dims]");
    let dims = rest.strip_suffix(']').expect("closing bracket");
    let shape = if dims.trim().is_empty() {
        Vec::new()
    } else {
        dims.split(',').map(|d| Dim::parse(d.trim()).expect("dim")).collect()
    };
    TensorType::new(DType::from_name(dtype).expect("dtype"), shape)
}

/// A graph under construction, with values referred to by name.
struct G {
    g: Graph,
}

impl G {
    fn new() -> G {
        G { g: Graph::new("test") }
    }

    fn input(&mut self, name: &str, t: &str) -> &mut G {
        self.g.add_input(name, ty(t)).unwrap();
        self
    }

    fn init(&mut self, name: &str, t: Tensor) -> &mut G {
        self.g.add_initializer(name, t).unwrap();
        self
    }

    fn ints(&mut self, name: &str, v: &[i64]) -> &mut G {
        self.init(name, Tensor::vec_i64(v))
    }

    fn id(&self, name: &str) -> Option<ValueId> {
        if name.is_empty() {
            None
        } else {
            Some(self.g.value_by_name(name).unwrap_or_else(|| panic!("no value `{name}`")))
        }
    }

    fn node(&mut self, name: &str, op: Op, inputs: &[&str], outputs: &[&str]) -> &mut G {
        let ins = inputs.iter().map(|n| self.id(n)).collect();
        self.g.add_node(name, op, ins, outputs).unwrap();
        self
    }

    fn output(&mut self, name: &str) -> &mut G {
        let v = self.id(name).unwrap();
        self.g.add_output(v);
        self
    }

    /// Runs inference and returns the printed type of `value`.
    fn infer(&mut self, value: &str) -> String {
        if let Err(e) = infer_types(&mut self.g) {
            panic!("inference failed: {e}");
        }
        self.ty(value)
    }

    fn ty(&self, value: &str) -> String {
        self.g.value(self.id(value).unwrap()).ty.as_ref().expect("typed").to_string()
    }

    fn infer_err(&mut self) -> String {
        match infer_types(&mut self.g) {
            Ok(()) => panic!("inference succeeded"),
            Err(e) => e.to_string(),
        }
    }
}

fn gemm(trans_a: bool, trans_b: bool) -> Op {
    Op::Gemm(GemmAttrs { alpha: 1.0, beta: 1.0, trans_a, trans_b })
}

fn attention(q_heads: Option<i64>, kv_heads: Option<i64>) -> Op {
    Op::Attention(AttentionAttrs {
        is_causal: false,
        q_num_heads: q_heads,
        kv_num_heads: kv_heads,
        qk_matmul_output_mode: 0,
        scale: None,
        softcap: 0.0,
        softmax_precision: None,
    })
}

fn reduce(kind: ReduceKind, axes: Option<Vec<i64>>, keepdims: bool) -> Op {
    Op::Reduce { kind, axes, keepdims, noop_with_empty_axes: false }
}

// ---- elementwise ----

#[test]
fn binary_broadcast_with_symbols() {
    let mut g = G::new();
    g.input("a", "f32[batch, 1, seq]").input("b", "f32[12, 1]");
    g.node("add", Op::Binary(BinaryOp::Add), &["a", "b"], &["y"]);
    g.node("cmp", Op::Binary(BinaryOp::Less), &["a", "b"], &["c"]);
    assert_eq!(g.infer("y"), "f32[batch, 12, seq]");
    assert_eq!(g.ty("c"), "bool[batch, 12, seq]");
}

#[test]
fn broadcast_prefers_fixed_then_named_dims() {
    let mut g = G::new();
    g.input("a", "f32[seq, 4]").input("b", "f32[8, n]");
    g.node("mul", Op::Binary(BinaryOp::Mul), &["a", "b"], &["y"]);
    assert_eq!(g.infer("y"), "f32[8, 4]");
}

#[test]
fn broadcast_mismatch_names_both_inputs() {
    let mut g = G::new();
    g.input("a", "f32[2, 3]").input("b", "f32[4]");
    g.node("bad_add", Op::Binary(BinaryOp::Add), &["a", "b"], &["y"]);
    let e = g.infer_err();
    assert!(e.starts_with("node `bad_add` (Add): input 1 `b` has shape f32[4]"), "{e}");
    assert!(e.contains("input 0 `a`") && e.contains("4 vs 3"), "{e}");
}

#[test]
fn wrong_dtypes_are_reported() {
    let mut g = G::new();
    g.input("a", "f32[2]").input("b", "i32[2]").input("c", "f32[2]");
    g.node("mixed", Op::Binary(BinaryOp::Add), &["a", "b"], &["y"]);
    let e = g.infer_err();
    assert_eq!(e, "node `mixed` (Add): input 1 `b` has dtype i32 but input 0 `a` has dtype f32");

    let mut g = G::new();
    g.input("c", "f32[2]").input("x", "f32[2]");
    g.node("sel", Op::Where, &["c", "x", "x"], &["y"]);
    assert_eq!(g.infer_err(), "node `sel` (Where): input 0 `c` has type f32[2]; expected bool (the condition)");

    let mut g = G::new();
    g.input("x", "i64[2]");
    g.node("e", Op::Unary(UnaryOp::Exp), &["x"], &["y"]);
    assert!(g.infer_err().contains("expected a float type"));

    let mut g = G::new();
    g.input("x", "f32[2]");
    g.node("m", Op::Mod { fmod: false }, &["x", "x"], &["y"]);
    assert!(g.infer_err().contains("fmod=1"));
}

#[test]
fn where_variadic_clip_and_pow() {
    let mut g = G::new();
    g.input("c", "bool[1, seq]").input("x", "f16[batch, 1]").input("z", "f16[]");
    g.input("p", "i64[]");
    g.node("w", Op::Where, &["c", "x", "z"], &["w"]);
    g.node("mx", Op::Variadic(VariadicOp::Max), &["x", "z", "w"], &["m"]);
    g.node("clip", Op::Clip, &["x", "z", ""], &["cl"]);
    g.node("pow", Op::Binary(BinaryOp::Pow), &["x", "p"], &["pw"]);
    g.node("nan", Op::Unary(UnaryOp::IsNaN), &["x"], &["isnan"]);
    assert_eq!(g.infer("w"), "f16[batch, seq]");
    assert_eq!(g.ty("m"), "f16[batch, seq]");
    assert_eq!(g.ty("cl"), "f16[batch, 1]");
    assert_eq!(g.ty("pw"), "f16[batch, 1]");
    assert_eq!(g.ty("isnan"), "bool[batch, 1]");
}

// ---- linalg ----

#[test]
fn matmul_shapes() {
    let mut g = G::new();
    g.input("x", "f32[batch, seq, 768]").input("w", "f32[768, 3072]").input("v", "f32[768]");
    g.input("bx", "f32[4, 1, 5, 6]").input("by", "f32[3, 6, 7]");
    g.node("proj", Op::MatMul, &["x", "w"], &["y"]);
    g.node("vec", Op::MatMul, &["x", "v"], &["yv"]);
    g.node("vecl", Op::MatMul, &["v", "w"], &["vw"]);
    g.node("batched", Op::MatMul, &["bx", "by"], &["bxy"]);
    assert_eq!(g.infer("y"), "f32[batch, seq, 3072]");
    assert_eq!(g.ty("yv"), "f32[batch, seq]");
    assert_eq!(g.ty("vw"), "f32[3072]");
    assert_eq!(g.ty("bxy"), "f32[4, 3, 5, 7]");
}

#[test]
fn matmul_inner_dim_mismatch_message() {
    let mut g = G::new();
    g.input("q", "f32[4, 8, 32]").input("k_t", "f32[4, 8, 16]");
    g.node("attn.qk", Op::MatMul, &["q", "k_t"], &["s"]);
    assert_eq!(
        g.infer_err(),
        "node `attn.qk` (MatMul): input 1 `k_t` has shape f32[4, 8, 16] but input 0 `q` has inner dim 32"
    );
}

#[test]
fn gemm_and_integer_products() {
    let mut g = G::new();
    g.input("a", "f32[k, m]").input("b", "f32[n, k]").input("c", "f32[n]");
    g.input("qa", "u8[m, 16]").input("qb", "i8[16, 4]").input("za", "u8[]");
    g.input("sa", "f32[]").input("sb", "f32[]").input("zb", "i8[]").input("zy", "i8[]");
    g.node("gemm", gemm(true, true), &["a", "b", "c"], &["y"]);
    g.node("mmi", Op::MatMulInteger, &["qa", "qb", "za"], &["yi"]);
    g.node("qmm", Op::QLinearMatMul, &["qa", "sa", "za", "qb", "sb", "zb", "sa", "zy"], &["yq"]);
    assert_eq!(g.infer("y"), "f32[m, n]");
    assert_eq!(g.ty("yi"), "i32[m, 4]");
    assert_eq!(g.ty("yq"), "i8[m, 4]");

    let mut g = G::new();
    g.input("a", "f32[2, 3]").input("b", "f32[4, 5]");
    g.node("gemm", gemm(false, false), &["a", "b"], &["y"]);
    assert!(g.infer_err().contains("input 1 `b` has shape f32[4, 5] (transB=0) but input 0 `a` has inner dim 3"));

    let mut g = G::new();
    g.input("a", "f32[2, 3]").input("b", "f32[3, 5]").input("c", "f32[4]");
    g.node("gemm", gemm(false, false), &["a", "b", "c"], &["y"]);
    assert!(g.infer_err().contains("does not broadcast to the result shape [2, 5]"));
}

// ---- shapes computed at run time ----

/// GPT-2's split of the hidden size into heads, as exporters write it.
fn gpt2_head_split() -> G {
    let mut g = G::new();
    g.input("x", "f32[batch, seq, 768]");
    g.init("zero", Tensor::scalar_i64(0)).init("one", Tensor::scalar_i64(1));
    g.ints("axes0", &[0]).ints("heads", &[12]).ints("head_dim", &[64]);
    g.node("shape", Op::Shape { start: 0, end: None }, &["x"], &["x_shape"]);
    g.node("get_b", Op::Gather { axis: 0 }, &["x_shape", "zero"], &["b"]);
    g.node("get_s", Op::Gather { axis: 0 }, &["x_shape", "one"], &["s"]);
    g.node("unsq_b", Op::Unsqueeze, &["b", "axes0"], &["b1"]);
    g.node("unsq_s", Op::Unsqueeze, &["s", "axes0"], &["s1"]);
    g.node("cat", Op::Concat { axis: 0 }, &["b1", "s1", "heads", "head_dim"], &["new_shape"]);
    g.node("split_heads", Op::Reshape { allowzero: false }, &["x", "new_shape"], &["xh"]);
    g.node("perm", Op::Transpose { perm: Some(vec![0, 2, 1, 3]) }, &["xh"], &["xt"]);
    g.output("xt");
    g
}

#[test]
fn gpt2_shape_chain_gives_symbolic_heads() {
    let mut g = gpt2_head_split();
    assert_eq!(g.infer("xh"), "f32[batch, seq, 12, 64]");
    assert_eq!(g.ty("xt"), "f32[batch, 12, seq, 64]");
    assert_eq!(g.ty("new_shape"), "i64[4]");
    assert_eq!(g.ty("b"), "i64[]");
    verify(&g.g).unwrap();
}

#[test]
fn infer_node_alone_derives_the_shape_contents() {
    let mut g = gpt2_head_split();
    g.infer("xt");
    let reshape = g.g.node_by_name("split_heads").unwrap();
    let out = infer_node(&g.g, reshape).unwrap();
    assert_eq!(out[0].as_ref().unwrap().to_string(), "f32[batch, seq, 12, 64]");
}

#[test]
fn reshape_infers_minus_one_symbolically() {
    let mut g = G::new();
    g.input("x", "f32[batch, seq, 768]");
    g.ints("flat", &[-1, 768]).ints("heads", &[0, 0, 12, -1]).ints("bad", &[-1, 5]);
    g.node("r1", Op::Reshape { allowzero: false }, &["x", "flat"], &["y1"]);
    g.node("r2", Op::Reshape { allowzero: false }, &["x", "heads"], &["y2"]);
    g.node("r3", Op::Reshape { allowzero: false }, &["y1", "flat"], &["y3"]);
    assert_eq!(g.infer("y1"), "f32[batch*seq, 768]");
    assert_eq!(g.ty("y2"), "f32[batch, seq, 12, 64]");
    assert_eq!(g.ty("y3"), "f32[batch*seq, 768]");

    let mut g = G::new();
    g.input("x", "f32[2, 6]").ints("bad", &[-1, 5]);
    g.node("r", Op::Reshape { allowzero: false }, &["x", "bad"], &["y"]);
    assert!(g.infer_err().contains("12 is not a multiple of 5"));
}

#[test]
fn reshape_with_unknown_shape_length_is_an_error_naming_the_node() {
    let mut g = G::new();
    g.input("x", "f32[4]").input("s", "i64[n]");
    g.node("dyn_reshape", Op::Reshape { allowzero: false }, &["x", "s"], &["y"]);
    let e = g.infer_err();
    assert!(e.starts_with("node `dyn_reshape` (Reshape): cannot determine the result rank"), "{e}");
}

#[test]
fn reshape_with_unknown_values_keeps_the_rank() {
    let mut g = G::new();
    g.input("x", "f32[4, 6]").input("s", "i64[3]");
    g.node("r", Op::Reshape { allowzero: false }, &["x", "s"], &["y"]);
    g.node("nz", Op::NonZero, &["x"], &["idx"]);
    assert_eq!(g.infer("y"), "f32[unk__0, unk__1, unk__2]");
    assert_eq!(g.ty("idx"), "i64[2, unk__3]");
}

#[test]
fn fresh_symbols_continue_after_existing_ones() {
    let mut g = G::new();
    g.input("x", "f32[unk__5, 3]");
    g.node("nz", Op::NonZero, &["x"], &["idx"]);
    assert_eq!(g.infer("idx"), "i64[2, unk__6]");
}

#[test]
fn concat_adds_symbolic_lengths() {
    let mut g = G::new();
    g.input("past", "f32[batch, 12, past, 64]").input("cur", "f32[batch, 12, seq, 64]");
    g.node("kv", Op::Concat { axis: -2 }, &["past", "cur"], &["present"]);
    assert_eq!(g.infer("present"), "f32[batch, 12, past+seq, 64]");

    let mut g = G::new();
    g.input("a", "f32[2, 3]").input("b", "f32[4, 5]");
    g.node("cat", Op::Concat { axis: 0 }, &["a", "b"], &["y"]);
    assert_eq!(
        g.infer_err(),
        "node `cat` (Concat): input 1 `b` has shape f32[4, 5] but input 0 `a` has dim 3 on axis 1"
    );
}

#[test]
fn slice_with_shape_derived_bounds() {
    // A causal-mask buffer sliced to [past, past+seq) and a slice to the end.
    let mut g = G::new();
    g.input("mask", "bool[1, 1, 1024, 1024]").input("k", "f32[batch, 12, past+seq, 64]");
    g.input("q", "f32[batch, 12, seq, 64]");
    g.ints("two", &[2]).ints("big", &[i64::MAX]).ints("zero1", &[0]).ints("m1", &[-1]);
    g.node("kshape", Op::Shape { start: 2, end: Some(3) }, &["k"], &["total"]);
    g.node("qshape", Op::Shape { start: -2, end: Some(-1) }, &["q"], &["qlen"]);
    g.node("start", Op::Binary(BinaryOp::Sub), &["total", "qlen"], &["past_len"]);
    g.node("cut", Op::Slice, &["mask", "past_len", "total", "two", ""], &["causal"]);
    g.node("tail", Op::Slice, &["k", "zero1", "m1", "two"], &["k_but_last"]);
    g.node("all", Op::Slice, &["q", "zero1", "big", "two"], &["q_all"]);
    assert_eq!(g.infer("causal"), "bool[1, 1, seq, 1024]");
    assert_eq!(g.ty("k_but_last"), "f32[batch, 12, past+seq-1, 64]");
    assert_eq!(g.ty("q_all"), "f32[batch, 12, seq, 64]");
    assert_eq!(g.ty("total"), "i64[1]");

    let mut g = G::new();
    g.input("x", "f32[10, 7]").ints("s", &[1, -1]).ints("e", &[8, -8]).ints("a", &[0, 1]).ints("st", &[3, -2]);
    g.node("sl", Op::Slice, &["x", "s", "e", "a", "st"], &["y"]);
    assert_eq!(g.infer("y"), "f32[3, 4]");
}

#[test]
fn expand_through_the_where_equal_pattern() {
    // torch's export of `x.expand(batch, -1, -1)`.
    let mut g = G::new();
    g.input("x", "f32[1, seq, 64]").input("ids", "i64[batch, seq]");
    g.init("zero", Tensor::scalar_i64(0)).ints("axes0", &[0]).ints("m1", &[-1]).ints("three", &[3]);
    g.init("minus", Tensor::scalar_i64(-1));
    g.node("shape", Op::Shape { start: 0, end: None }, &["ids"], &["ids_shape"]);
    g.node("b", Op::Gather { axis: 0 }, &["ids_shape", "zero"], &["b"]);
    g.node("b1", Op::Unsqueeze, &["b", "axes0"], &["b1"]);
    g.node("target", Op::Concat { axis: 0 }, &["b1", "m1", "m1"], &["target"]);
    g.node("ones", Op::ConstantOfShape { value: Some(Tensor::vec_i64(&[1])) }, &["three"], &["ones"]);
    g.node("neg", Op::Binary(BinaryOp::Mul), &["ones", "minus"], &["neg"]);
    g.node("eq", Op::Binary(BinaryOp::Equal), &["target", "neg"], &["is_keep"]);
    g.node("sel", Op::Where, &["is_keep", "ones", "target"], &["final"]);
    g.node("expand", Op::Expand, &["x", "final"], &["y"]);
    assert_eq!(g.infer("y"), "f32[batch, seq, 64]");
    assert_eq!(g.ty("ones"), "i64[3]");
}

#[test]
fn range_constant_of_shape_tile_and_pad() {
    let mut g = G::new();
    g.input("ids", "i64[batch, seq]").input("x", "f32[batch, 4]");
    g.init("zero", Tensor::scalar_i64(0)).init("one", Tensor::scalar_i64(1)).init("two", Tensor::scalar_i64(2));
    g.ints("reps", &[1, 3]).ints("pads", &[0, 1, 2, 3]);
    g.node("shape", Op::Shape { start: 0, end: None }, &["ids"], &["s"]);
    g.node("seq", Op::Gather { axis: 0 }, &["s", "one"], &["n"]);
    g.node("pos", Op::Range, &["zero", "n", "one"], &["positions"]);
    g.node("evens", Op::Range, &["zero", "n", "two"], &["evens"]);
    g.node("fill", Op::ConstantOfShape { value: None }, &["s"], &["zeros"]);
    g.node("tile", Op::Tile, &["x", "reps"], &["tiled"]);
    g.node("pad", Op::Pad { mode: "constant".into() }, &["x", "pads"], &["padded"]);
    g.node("size", Op::Size, &["x"], &["count"]);
    assert_eq!(g.infer("positions"), "i64[seq]");
    assert_eq!(g.ty("evens"), "i64[(seq+1)/2]");
    assert_eq!(g.ty("zeros"), "f32[batch, seq]");
    assert_eq!(g.ty("tiled"), "f32[batch, 12]");
    assert_eq!(g.ty("padded"), "f32[batch+2, 8]");
    assert_eq!(g.ty("count"), "i64[]");
}

#[test]
fn squeeze_unsqueeze_flatten_transpose() {
    let mut g = G::new();
    g.input("x", "f32[batch, 1, seq, 1]").ints("ax", &[1]).ints("ax2", &[0, -1]);
    g.node("sq_all", Op::Squeeze, &["x"], &["a"]);
    g.node("sq_one", Op::Squeeze, &["x", "ax"], &["b"]);
    g.node("unsq", Op::Unsqueeze, &["a", "ax2"], &["c"]);
    g.node("flat", Op::Flatten { axis: 2 }, &["x"], &["d"]);
    g.node("tr", Op::Transpose { perm: None }, &["x"], &["e"]);
    assert_eq!(g.infer("a"), "f32[batch, seq]");
    assert_eq!(g.ty("b"), "f32[batch, seq, 1]");
    assert_eq!(g.ty("c"), "f32[1, batch, seq, 1]");
    assert_eq!(g.ty("d"), "f32[batch, seq]");
    assert_eq!(g.ty("e"), "f32[1, seq, 1, batch]");

    let mut g = G::new();
    g.input("x", "f32[2, 3]").ints("ax", &[1]);
    g.node("sq", Op::Squeeze, &["x", "ax"], &["y"]);
    assert!(g.infer_err().contains("cannot squeeze axis 1 of input 0 `x` (f32[2, 3]): its size is 3"));
}

#[test]
fn split_three_ways() {
    let mut g = G::new();
    g.input("qkv", "f32[batch, seq, 3*hidden]").ints("sizes", &[2, 3]).input("x", "f32[5, seq]");
    g.node("even", Op::Split { axis: 2, num_outputs: None }, &["qkv"], &["q", "k", "v"]);
    g.node("sized", Op::Split { axis: 0, num_outputs: None }, &["x", "sizes"], &["x1", "x2"]);
    g.node("uneven", Op::Split { axis: 1, num_outputs: Some(2) }, &["x"], &["h1", "h2"]);
    assert_eq!(g.infer("q"), "f32[batch, seq, hidden]");
    assert_eq!(g.ty("v"), "f32[batch, seq, hidden]");
    assert_eq!(g.ty("x1"), "f32[2, seq]");
    assert_eq!(g.ty("x2"), "f32[3, seq]");
    assert_eq!(g.ty("h1"), "f32[5, (seq+1)/2]");
    assert_eq!(g.ty("h2"), "f32[5, seq-(seq+1)/2]");

    let mut g = G::new();
    g.input("x", "f32[6]").ints("sizes", &[2, 3]);
    g.node("sized", Op::Split { axis: 0, num_outputs: None }, &["x", "sizes"], &["a", "b"]);
    assert!(g.infer_err().contains("add up to 5 but axis 0"));
}

#[test]
fn gathers_and_scatter() {
    let mut g = G::new();
    g.input("emb", "f32[50257, 768]").input("ids", "i64[batch, seq]");
    g.input("data", "f32[2, 3, 4]").input("idx_nd", "i64[2, 1]").input("idx_el", "i32[2, 3, 1]");
    g.input("upd", "f32[2, 3, 4]");
    g.node("wte", Op::Gather { axis: 0 }, &["emb", "ids"], &["h"]);
    g.node("gnd", Op::GatherND { batch_dims: 1 }, &["data", "idx_nd"], &["g"]);
    g.node("gel", Op::GatherElements { axis: 2 }, &["data", "idx_el"], &["ge"]);
    g.node("snd", Op::ScatterND { reduction: "add".into() }, &["data", "idx_nd", "upd"], &["s"]);
    assert_eq!(g.infer("h"), "f32[batch, seq, 768]");
    assert_eq!(g.ty("g"), "f32[2, 4]");
    assert_eq!(g.ty("ge"), "f32[2, 3, 1]");
    assert_eq!(g.ty("s"), "f32[2, 3, 4]");

    let mut g = G::new();
    g.input("emb", "f32[10, 4]").input("ids", "f32[3]");
    g.node("wte", Op::Gather { axis: 0 }, &["emb", "ids"], &["h"]);
    assert!(g.infer_err().contains("input 1 `ids` has type f32[3]; expected i32 or i64 (indices)"));
}

#[test]
fn topk_one_hot_cast_and_dropout() {
    let mut g = G::new();
    g.input("logits", "f32[batch, 50257]").ints("k", &[5]).input("labels", "i64[batch]");
    g.init("depth", Tensor::scalar_i64(10)).init("vals", Tensor::from_f64s(DType::F32, &[2], &[0.0, 1.0]));
    g.node("topk", Op::TopK { axis: -1, largest: true, sorted: true }, &["logits", "k"], &["top", "top_idx"]);
    g.node("onehot", Op::OneHot { axis: -1 }, &["labels", "depth", "vals"], &["oh"]);
    g.node("cast", Op::Cast { to: DType::F16, saturate: true }, &["logits"], &["half"]);
    g.node("like", Op::CastLike { saturate: true }, &["labels", "half"], &["lf"]);
    g.node("drop", Op::Dropout { seed: None }, &["logits"], &["d", "mask"]);
    assert_eq!(g.infer("top"), "f32[batch, 5]");
    assert_eq!(g.ty("top_idx"), "i64[batch, 5]");
    assert_eq!(g.ty("oh"), "f32[batch, 10]");
    assert_eq!(g.ty("half"), "f16[batch, 50257]");
    assert_eq!(g.ty("lf"), "f16[batch]");
    assert_eq!(g.ty("mask"), "bool[batch, 50257]");
}

// ---- reductions ----

#[test]
fn reductions() {
    let mut g = G::new();
    g.input("x", "f32[batch, seq, 768]").ints("axes", &[-1]).init("ax", Tensor::scalar_i64(1));
    g.node("mean", reduce(ReduceKind::Mean, Some(vec![-1]), true), &["x"], &["m"]);
    g.node("sum", reduce(ReduceKind::Sum, None, false), &["x", "axes"], &["s"]);
    g.node("all", reduce(ReduceKind::Max, None, false), &["x"], &["a"]);
    g.node("argmax", Op::ArgReduce { max: true, axis: 1, keepdims: false, select_last_index: false }, &["x"], &["am"]);
    g.node("cumsum", Op::CumSum { exclusive: false, reverse: false }, &["x", "ax"], &["cs"]);
    assert_eq!(g.infer("m"), "f32[batch, seq, 1]");
    assert_eq!(g.ty("s"), "f32[batch, seq]");
    assert_eq!(g.ty("a"), "f32[]");
    assert_eq!(g.ty("am"), "i64[batch, 768]");
    assert_eq!(g.ty("cs"), "f32[batch, seq, 768]");

    let mut g = G::new();
    g.input("x", "f32[2, 3]");
    g.node("mean", reduce(ReduceKind::Mean, Some(vec![2]), true), &["x"], &["m"]);
    assert_eq!(g.infer_err(), "node `mean` (ReduceMean): axis 2 is out of range for rank 2 (accepted: -2 to 1)");
}

// ---- normalization, attention, losses ----

#[test]
fn layer_norm_rms_norm_softmax() {
    let mut g = G::new();
    g.input("x", "f16[batch, seq, 768]").input("w", "f16[768]").input("w32", "f32[768]");
    let ln = Op::LayerNormalization { axis: -1, epsilon: 1e-5, stash_type: DType::F32 };
    g.node("ln", ln, &["x", "w", "w"], &["y", "mean", "inv_std"]);
    g.node("rms", Op::RMSNormalization { axis: -1, epsilon: 1e-6, stash_type: DType::F32 }, &["x", "w32"], &["r"]);
    g.node("sm", Op::Softmax { axis: -1 }, &["x"], &["p"]);
    assert_eq!(g.infer("y"), "f16[batch, seq, 768]");
    assert_eq!(g.ty("mean"), "f32[batch, seq, 1]");
    assert_eq!(g.ty("r"), "f32[batch, seq, 768]");
    assert_eq!(g.ty("p"), "f16[batch, seq, 768]");

    let mut g = G::new();
    g.input("x", "f32[2, 768]").input("w", "f32[512]");
    let ln = Op::LayerNormalization { axis: -1, epsilon: 1e-5, stash_type: DType::F32 };
    g.node("ln", ln, &["x", "w"], &["y"]);
    assert!(g
        .infer_err()
        .contains("input 1 `w` has shape f32[512], which does not broadcast to the normalized dims [768]"));
}

#[test]
fn attention_with_kv_cache_and_gqa() {
    let mut g = G::new();
    g.input("q", "f32[batch, 8, seq, 64]").input("k", "f32[batch, 2, seq, 64]").input("v", "f32[batch, 2, seq, 32]");
    g.input("pk", "f32[batch, 2, past, 64]").input("pv", "f32[batch, 2, past, 32]");
    g.input("mask", "bool[seq, past+seq]");
    g.node("attn", attention(None, None), &["q", "k", "v", "mask", "pk", "pv"], &["y", "present_k", "present_v", "qk"]);
    assert_eq!(g.infer("y"), "f32[batch, 8, seq, 32]");
    assert_eq!(g.ty("present_k"), "f32[batch, 2, past+seq, 64]");
    assert_eq!(g.ty("present_v"), "f32[batch, 2, past+seq, 32]");
    assert_eq!(g.ty("qk"), "f32[batch, 8, seq, past+seq]");

    let mut g = G::new();
    g.input("q", "f32[2, seq, 768]").input("k", "f32[2, kv, 256]").input("v", "f32[2, kv, 256]");
    g.node("attn", attention(Some(12), Some(4)), &["q", "k", "v"], &["y"]);
    assert_eq!(g.infer("y"), "f32[2, seq, 768]");

    let mut g = G::new();
    g.input("q", "f32[2, 3, 4, 8]").input("k", "f32[2, 2, 4, 8]").input("v", "f32[2, 2, 4, 8]");
    g.node("attn", attention(None, None), &["q", "k", "v"], &["y"]);
    assert!(g.infer_err().contains("3 query heads are not a multiple of 2 key/value heads"));

    let mut g = G::new();
    g.input("q", "f32[2, s, 768]").input("k", "f32[2, s, 768]").input("v", "f32[2, s, 768]");
    g.node("attn", attention(None, None), &["q", "k", "v"], &["y"]);
    assert!(g.infer_err().contains("q_num_heads attribute is required"));
}

#[test]
fn rotary_embedding_checks_caches() {
    let mut g = G::new();
    g.input("x", "f32[batch, seq, 768]").input("cos", "f32[2048, 32]").input("pos", "i64[batch, seq]");
    let rope = Op::RotaryEmbedding { interleaved: false, num_heads: Some(12), rotary_embedding_dim: None };
    g.node("rope", rope.clone(), &["x", "cos", "cos", "pos"], &["y"]);
    assert_eq!(g.infer("y"), "f32[batch, seq, 768]");

    let mut g = G::new();
    g.input("x", "f32[batch, seq, 768]").input("cos", "f32[2048, 64]").input("pos", "i64[batch, seq]");
    g.node("rope", rope, &["x", "cos", "cos", "pos"], &["y"]);
    assert!(g.infer_err().contains("input 1 `cos` has shape f32[2048, 64]; expected [max_position, 32]"));
}

#[test]
fn losses() {
    let mut g = G::new();
    g.input("scores", "f32[n, 10, d]").input("labels", "i64[n, d]").input("w", "f32[10]");
    let sce = |reduction| Op::SoftmaxCrossEntropyLoss { reduction, ignore_index: None };
    g.node("none", sce(LossReduction::None), &["scores", "labels", "w"], &["l", "log_prob"]);
    g.node("mean", sce(LossReduction::Mean), &["scores", "labels"], &["lm"]);
    let nll = Op::NegativeLogLikelihoodLoss { reduction: LossReduction::Sum, ignore_index: Some(-1) };
    g.node("nll", nll, &["scores", "labels"], &["ln"]);
    assert_eq!(g.infer("l"), "f32[n, d]");
    assert_eq!(g.ty("log_prob"), "f32[n, 10, d]");
    assert_eq!(g.ty("lm"), "f32[]");
    assert_eq!(g.ty("ln"), "f32[]");
}

// ---- quantization ----

#[test]
fn quantization_types() {
    let mut g = G::new();
    g.input("x", "f32[64, 128]").input("s", "f32[]").input("zp", "i8[]").input("s_axis", "f32[128]");
    g.input("s_block", "f32[64, 4]").input("zp_block", "i4[64, 4]").input("w4", "i4[64, 128]");
    g.node(
        "q_zp",
        Op::QuantizeLinear { axis: 1, block_size: 0, saturate: true, output_dtype: None },
        &["x", "s", "zp"],
        &["q1"],
    );
    g.node(
        "q_def",
        Op::QuantizeLinear { axis: 1, block_size: 0, saturate: true, output_dtype: None },
        &["x", "s_axis"],
        &["q2"],
    );
    let blocked = Op::QuantizeLinear { axis: 1, block_size: 32, saturate: true, output_dtype: None };
    g.node("q_block", blocked, &["x", "s_block", "zp_block"], &["q3"]);
    let dq = Op::DequantizeLinear { axis: 1, block_size: 32, output_dtype: Some(DType::F16) };
    g.node("dq", dq, &["w4", "s_block", "zp_block"], &["w"]);
    g.node("dyn", Op::DynamicQuantizeLinear, &["x"], &["y", "y_scale", "y_zp"]);
    assert_eq!(g.infer("q1"), "i8[64, 128]");
    assert_eq!(g.ty("q2"), "u8[64, 128]");
    assert_eq!(g.ty("q3"), "i4[64, 128]");
    assert_eq!(g.ty("w"), "f16[64, 128]");
    assert_eq!(g.ty("y"), "u8[64, 128]");
    assert_eq!(g.ty("y_scale"), "f32[]");
    assert_eq!(g.ty("y_zp"), "u8[]");

    let mut g = G::new();
    g.input("x", "f32[64, 128]").input("s_block", "f32[64, 3]");
    let blocked = Op::QuantizeLinear { axis: 1, block_size: 32, saturate: true, output_dtype: None };
    g.node("q", blocked, &["x", "s_block"], &["y"]);
    assert!(g.infer_err().contains("block_size 32 along axis 1"));
}

// ---- arity, declared types, verifier ----

#[test]
fn too_many_inputs_is_an_error() {
    let mut g = G::new();
    g.input("a", "f32[2]");
    g.node("neg", Op::Unary(UnaryOp::Neg), &["a", "a"], &["y"]);
    assert_eq!(g.infer_err(), "node `neg` (Neg): has 2 inputs; the op takes 1");

    let mut g = G::new();
    g.input("a", "f32[2]");
    g.node("slice", Op::Slice, &["a", "", "a"], &["y"]);
    assert_eq!(g.infer_err(), "node `slice` (Slice): required input 1 is missing");
}

#[test]
fn declared_types_are_checked_and_merged() {
    let mut g = G::new();
    g.input("x", "f32[batch, 4]").input("s", "i64[2]");
    g.node("r", Op::Reshape { allowzero: false }, &["x", "s"], &["y"]);
    let y = g.id("y").unwrap();
    g.g.value_mut(y).ty = Some(ty("f32[b, 8]"));
    assert_eq!(g.infer("y"), "f32[b, 8]");

    // Between two names, the inferred one says how the dim relates to the inputs.
    let mut g = G::new();
    g.input("past", "f32[past, 4]").input("cur", "f32[seq, 4]");
    g.node("cat", Op::Concat { axis: 0 }, &["past", "cur"], &["y"]);
    let y = g.id("y").unwrap();
    g.g.value_mut(y).ty = Some(ty("f32[present_len, unk__7]"));
    assert_eq!(g.infer("y"), "f32[past+seq, 4]");

    let mut g = G::new();
    g.input("x", "f32[2, 3]");
    g.node("neg", Op::Unary(UnaryOp::Neg), &["x"], &["y"]);
    let y = g.id("y").unwrap();
    g.g.value_mut(y).ty = Some(ty("f32[2, 4]"));
    assert_eq!(g.infer_err(), "node `neg` (Neg): output 0 `y` is declared f32[2, 4] but inferred f32[2, 3]");
}

#[test]
fn verify_accepts_an_inferred_graph_and_rejects_broken_ones() {
    let mut g = gpt2_head_split();
    infer_types(&mut g.g).unwrap();
    verify(&g.g).unwrap();

    // A stored type that disagrees with re-inference.
    let xt = g.id("xt").unwrap();
    g.g.value_mut(xt).ty = Some(ty("f32[batch, 12, seq, 32]"));
    let e = verify(&g.g).unwrap_err().to_string();
    assert_eq!(e, "node `perm` (Transpose): output 0 `xt` has type f32[batch, 12, seq, 32] but inference gives f32[batch, 12, seq, 64]");

    // An input nothing defines.
    let mut g = G::new();
    g.input("x", "f32[2]");
    let ghost = g.g.add_value("ghost", Some(ty("f32[2]"))).unwrap();
    let x = g.id("x").unwrap();
    g.g.add_node("add", Op::Binary(BinaryOp::Add), vec![Some(x), Some(ghost)], &["y"]).unwrap();
    infer_types(&mut g.g).unwrap();
    let e = verify(&g.g).unwrap_err().to_string();
    assert!(e.starts_with("node `add` (Add): input 1 `ghost` is not defined"), "{e}");

    // An untyped value.
    let mut g = G::new();
    g.input("x", "f32[2]");
    g.node("neg", Op::Unary(UnaryOp::Neg), &["x"], &["y"]);
    g.output("y");
    let e = verify(&g.g).unwrap_err().to_string();
    assert_eq!(e, "node `neg` (Neg): output 0 `y` has no type");

    // A graph output nothing defines.
    let mut g = G::new();
    g.input("x", "f32[2]");
    let dangling = g.g.add_value("dangling", Some(ty("f32[2]"))).unwrap();
    g.g.add_output(dangling);
    assert!(verify(&g.g).unwrap_err().to_string().starts_with("value `dangling`: graph output is not defined"));

    // Arity.
    let mut g = G::new();
    g.input("x", "f32[2]");
    g.node("mm", Op::MatMul, &["x"], &["y"]);
    assert_eq!(verify(&g.g).unwrap_err().to_string(), "node `mm` (MatMul): has 1 inputs; the op takes 2");
}

#[test]
fn verify_reports_cycles() {
    let mut g = Graph::new("g");
    let t = g.add_value("t", Some(ty("f32[2]"))).unwrap();
    let u = g.add_value("u", Some(ty("f32[2]"))).unwrap();
    g.add_node_with_outputs("first", Op::Unary(UnaryOp::Exp), vec![Some(u)], vec![Some(t)]).unwrap();
    g.add_node_with_outputs("second", Op::Unary(UnaryOp::Exp), vec![Some(t)], vec![Some(u)]).unwrap();
    let e = verify(&g).unwrap_err().to_string();
    assert!(e.contains("cycle") && e.contains("first"), "{e}");
    // infer_node on a cyclic graph still answers from the stored types.
    let first = g.node_by_name("first").unwrap();
    assert_eq!(infer_node(&g, first).unwrap()[0].as_ref().unwrap().to_string(), "f32[2]");
}

#[test]
fn untyped_graph_input_is_an_error() {
    let mut g = Graph::new("g");
    let x = g.add_value("x", None).unwrap();
    g.set_inputs(vec![x]);
    let e = infer_types(&mut g).unwrap_err().to_string();
    assert_eq!(e, "value `x`: graph input has no type");
}

// ---- the ONNX backend node tests ----

/// How one node test came out.
enum Outcome {
    /// The importer rejects the model (an op or form kiln does not support).
    NotImported,
    /// Every output type equals the reference output's.
    Exact,
    /// Compatible, but some dim stayed symbolic where the reference has a size.
    Symbolic(String),
    /// Inference failed or disagrees with the reference.
    Wrong(String),
}

/// How a node-test model is prepared before inference.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// Every type the file declares is forgotten except the graph inputs'.
    Forget,
    /// As `Forget`, and graph inputs small enough for value propagation
    /// (shapes, axes, k, pads, ...) become initializers holding the test's
    /// input data, so results that depend on their values can be exact.
    FoldSmallInputs,
    /// The file's declared types are kept and checked against inference.
    KeepDeclared,
}

/// Imports a node-test model, prepares it per `mode`, infers, verifies and
/// compares the graph outputs with `output_N.pb`.
fn run_node_test(dir: &Path, mode: Mode) -> Outcome {
    let Ok(mut g) = load_model(&dir.join("model.onnx"), ImportOptions::default()) else {
        return Outcome::NotImported;
    };
    if mode == Mode::FoldSmallInputs {
        let mut kept = Vec::new();
        for (i, &v) in g.inputs().to_vec().iter().enumerate() {
            let small = g.value(v).ty.as_ref().is_some_and(|t| t.rank() <= 1 && t.fixed_len().is_some_and(|n| n <= 64));
            match read_tensor_pb(&dir.join(format!("test_data_set_0/input_{i}.pb"))) {
                Ok((_, t)) if small => g.value_mut(v).initializer = Some(t),
                _ => kept.push(v),
            }
        }
        g.set_inputs(kept);
    }
    if mode != Mode::KeepDeclared {
        let keep: std::collections::BTreeSet<ValueId> = g.inputs().iter().copied().collect();
        let forget: Vec<ValueId> =
            g.value_ids().filter(|v| !keep.contains(v) && g.value(*v).initializer.is_none()).collect();
        for v in forget {
            g.value_mut(v).ty = None;
        }
    }
    if let Err(e) = infer_types(&mut g) {
        return Outcome::Wrong(format!("inference failed: {e}"));
    }
    if let Err(e) = verify(&g) {
        return Outcome::Wrong(format!("verify failed: {e}"));
    }
    let mut symbolic = Vec::new();
    for (i, &v) in g.outputs().iter().enumerate() {
        let path = dir.join(format!("test_data_set_0/output_{i}.pb"));
        let expected = match read_tensor_pb(&path) {
            Ok((_, t)) => TensorType::fixed(t.dtype(), t.shape()),
            Err(e) => return Outcome::Wrong(format!("cannot read {}: {e}", path.display())),
        };
        let val = g.value(v);
        let got = val.ty.as_ref().expect("verified");
        if got.dtype != expected.dtype || got.rank() != expected.rank() {
            return Outcome::Wrong(format!("output `{}`: inferred {got}, reference {expected}", val.name));
        }
        if got.shape.iter().zip(&expected.shape).any(|(a, b)| a.fixed().is_some() && a != b) {
            return Outcome::Wrong(format!("output `{}`: inferred {got}, reference {expected}", val.name));
        }
        if got.shape.iter().any(|d| d.fixed().is_none()) {
            symbolic.push(format!("`{}`: {got} vs {expected}", val.name));
        }
    }
    if symbolic.is_empty() {
        return Outcome::Exact;
    }
    // With the small inputs known, only an op whose result size depends on
    // tensor data may leave a dim symbolic.
    let data_dependent = g.node_ids().into_iter().any(|n| matches!(g.node(n).op, Op::NonZero));
    if mode == Mode::FoldSmallInputs && !data_dependent {
        return Outcome::Wrong(format!("not exact with every small input known: {}", symbolic.join("; ")));
    }
    Outcome::Symbolic(symbolic.join("; "))
}

/// Every node-test model the importer accepts must infer without error, pass
/// the verifier and agree with the reference outputs in each [`Mode`]: with
/// the declared types forgotten, with the small inputs also folded to their
/// test data, and with the declared types kept. A dim may stay symbolic when
/// it depends on an unknown input's values; once those are folded, only on
/// tensor data (NonZero). The counts are printed (`--nocapture`).
#[test]
fn onnx_node_tests_infer_like_the_reference() {
    let Some(python) = python() else {
        eprintln!("skipped: no Python with the onnx package (set KILN_PYTHON)");
        return;
    };
    let dirs = model_dirs(&onnx_node_test_dir(&python));
    let mut wrong = Vec::new();
    for mode in [Mode::Forget, Mode::FoldSmallInputs, Mode::KeepDeclared] {
        let (mut not_imported, mut exact) = (0, 0);
        let mut symbolic = Vec::new();
        for dir in &dirs {
            let name = dir.file_name().unwrap().to_string_lossy().to_string();
            match run_node_test(dir, mode) {
                Outcome::NotImported => not_imported += 1,
                Outcome::Exact => exact += 1,
                Outcome::Symbolic(m) => symbolic.push(format!("{name}: {m}")),
                Outcome::Wrong(m) => wrong.push(format!("{name} ({mode:?}): {m}")),
            }
        }
        eprintln!(
            "{} node tests, {mode:?}: {not_imported} not imported, {exact} exact, {} symbolic",
            dirs.len(),
            symbolic.len(),
        );
        for s in &symbolic {
            eprintln!("  symbolic {s}");
        }
        assert!(exact > 0, "no node test was imported");
    }
    for w in &wrong {
        eprintln!("  WRONG {w}");
    }
    assert!(wrong.is_empty(), "{} node tests infer wrongly:\n{}", wrong.len(), wrong.join("\n"));
}

#[test]
fn extreme_values_give_errors_or_unknowns_not_panics() {
    let mut g = G::new();
    g.input("empty", "f32[0, 3]").input("huge", "f32[1099511627776, 1099511627776, 1099511627776]");
    g.ints("min", &[i64::MIN]).ints("max", &[i64::MAX]).ints("zero", &[0]).ints("m1", &[-1]);
    g.init("min_s", Tensor::scalar_i64(i64::MIN)).init("m1_s", Tensor::scalar_i64(-1));
    g.node("rev_empty", Op::Slice, &["empty", "max", "min", "zero", "m1"], &["a"]);
    g.node("min_step", Op::Slice, &["empty", "zero", "max", "zero", "min"], &["b"]);
    g.node("mod", Op::Mod { fmod: false }, &["min_s", "m1_s"], &["c"]);
    g.node("div", Op::Binary(BinaryOp::Div), &["min_s", "m1_s"], &["d"]);
    g.node("cast", Op::Cast { to: DType::F16, saturate: true }, &["min_s"], &["e"]);
    g.node("flat", Op::Reshape { allowzero: false }, &["huge", "m1"], &["f"]);
    g.node("range", Op::Range, &["min_s", "m1_s", "m1_s"], &["r"]);
    g.node("size", Op::Size, &["huge"], &["n"]);
    g.node("shape", Op::Shape { start: i64::MIN, end: Some(i64::MAX) }, &["huge"], &["s"]);
    g.node("prod", reduce(ReduceKind::Prod, Some(vec![0]), false), &["s"], &["p"]);
    g.node("range2", Op::Range, &["zero", "p", "m1_s"], &["r2"]);
    assert_eq!(g.infer("a"), "f32[0, 3]");
    assert_eq!(g.ty("b"), "f32[0, 3]");
    assert_eq!(g.ty("c"), "i64[]");
    assert_eq!(g.ty("d"), "i64[]");
    assert_eq!(g.ty("e"), "f16[]");
    assert_eq!(g.ty("f"), "f32[unk__0]");
    assert_eq!(g.ty("s"), "i64[3]");
    assert!(g.ty("r2").starts_with("i64[unk__"), "{}", g.ty("r2"));
    assert!(g.ty("r").starts_with("i64["), "{}", g.ty("r"));

    let mut g = G::new();
    g.input("x", "f32[4]").init("zero", Tensor::scalar_i64(0)).init("m1", Tensor::scalar_i64(-1));
    g.node("range", Op::Range, &["zero", "zero", "zero"], &["r"]);
    assert_eq!(g.infer_err(), "node `range` (Range): input 2 `zero` (delta) is 0");
}

/// The example transformer models (both export styles: fused newest-opset
/// ops, and torch-style Shape/Gather/Concat/Reshape chains) get a type for
/// every value, in terms of `batch` and `seq` only: no dim is left unknown.
#[test]
fn example_models_infer_without_unknown_dims() {
    let Some(dirs) = example_model_dirs(Path::new(env!("CARGO_TARGET_TMPDIR"))) else {
        eprintln!("skipped: no Python with onnx and onnxruntime (set KILN_PYTHON)");
        return;
    };
    let mut checked = 0;
    for dir in &dirs {
        let mut g = load_model(&dir.join("model.onnx"), ImportOptions::default()).unwrap();
        let keep: Vec<ValueId> = g.inputs().to_vec();
        let forget: Vec<ValueId> =
            g.value_ids().filter(|v| !keep.contains(v) && g.value(*v).initializer.is_none()).collect();
        for v in forget {
            g.value_mut(v).ty = None;
        }
        infer_types(&mut g).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        verify(&g).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for v in g.value_ids() {
            let val = g.value(v);
            let Some(t) = &val.ty else { continue };
            for d in &t.shape {
                if let Dim::Sym(p) = d {
                    let syms = p.symbols();
                    assert!(
                        syms.iter().all(|s| &**s == "batch" || &**s == "seq"),
                        "{}: `{}` has type {t}",
                        dir.display(),
                        val.name
                    );
                }
            }
        }
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} example models were generated");
}
