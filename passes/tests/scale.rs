//! Optimization time on GPT-2-small-shaped graphs (d 768, 12 heads,
//! V 50257) of 12, 24 and 48 layers, weights as typed inputs so no weight
//! data is built. The bounds: 12 layers within 2 s, 48 within 10 s.

mod common;
use kiln_passes::manager::{optimize, OptLevel, Pipeline};
use std::time::Instant;

/// An unfused GPT-2 block stack with an LM head and a loss, as exporters
/// write it (Split of a fused QKV, head reshapes and transposes, scaled
/// scores, Softmax).
fn gpt2_text(layers: usize) -> String {
    let d = 768;
    let h = 12;
    let hd = 64;
    let v = 50257;
    let mut s = String::from("graph \"gpt2\" {\n  input %x: f32[batch, seq, 768]\n  input %wte: f32[768, 50257]\n  input %labels: i64[batch, seq]\n");
    s += &format!("  init %heads: i64[4] = [0, 0, {h}, {hd}]\n  init %merge: i64[3] = [0, 0, {d}]\n  init %scale: f32[] = 8.0\n  init %flat: i64[2] = [-1, {v}]\n  init %flatl: i64[1] = [-1]\n");
    let mut cur = "x".to_string();
    for l in 0..layers {
        s += &format!("  input %w{l}_qkv: f32[{d}, {}]\n  input %b{l}_qkv: f32[{}]\n  input %w{l}_o: f32[{d}, {d}]\n  input %w{l}_fc: f32[{d}, 3072]\n  input %w{l}_pr: f32[3072, {d}]\n  input %g{l}: f32[{d}]\n", 3*d, 3*d);
        s += &format!("  %l{l}_ln = LayerNormalization(%{cur}, %g{l}, %g{l}) @l{l}_ln\n");
        s += &format!("  %l{l}_qkv0 = MatMul(%l{l}_ln, %w{l}_qkv) @l{l}_qkvmm\n  %l{l}_qkv = Add(%l{l}_qkv0, %b{l}_qkv) @l{l}_qkvb\n");
        s += &format!("  %l{l}_q, %l{l}_k, %l{l}_v = Split(%l{l}_qkv) {{axis = 2, num_outputs = 3}} @l{l}_split\n");
        for t in ["q", "k", "v"] {
            s += &format!("  %l{l}_{t}r = Reshape(%l{l}_{t}, %heads) @l{l}_{t}r\n");
            let perm = if t == "k" {
                "[0, 2, 3, 1]"
            } else {
                "[0, 2, 1, 3]"
            };
            s += &format!("  %l{l}_{t}t = Transpose(%l{l}_{t}r) {{perm = {perm}}} @l{l}_{t}t\n");
        }
        s += &format!("  %l{l}_s0 = MatMul(%l{l}_qt, %l{l}_kt) @l{l}_qk\n  %l{l}_s = Div(%l{l}_s0, %scale) @l{l}_div\n  %l{l}_p = Softmax(%l{l}_s) @l{l}_sm\n  %l{l}_a = MatMul(%l{l}_p, %l{l}_vt) @l{l}_pv\n");
        s += &format!("  %l{l}_at = Transpose(%l{l}_a) {{perm = [0, 2, 1, 3]}} @l{l}_at\n  %l{l}_am = Reshape(%l{l}_at, %merge) @l{l}_am\n  %l{l}_o = MatMul(%l{l}_am, %w{l}_o) @l{l}_o\n  %l{l}_r1 = Add(%{cur}, %l{l}_o) @l{l}_r1\n");
        s += &format!("  %l{l}_ln2 = LayerNormalization(%l{l}_r1, %g{l}, %g{l}) @l{l}_ln2\n  %l{l}_f = MatMul(%l{l}_ln2, %w{l}_fc) @l{l}_fc\n  %l{l}_gl = Gelu(%l{l}_f) @l{l}_gelu\n  %l{l}_m = MatMul(%l{l}_gl, %w{l}_pr) @l{l}_pr\n  %l{l}_out = Add(%l{l}_r1, %l{l}_m) @l{l}_r2\n");
        cur = format!("l{l}_out");
    }
    s += &format!("  %logits = MatMul(%{cur}, %wte) @head\n  %lf = Reshape(%logits, %flat) @lf\n  %ll = Reshape(%labels, %flatl) @ll\n  %loss = SoftmaxCrossEntropyLoss(%lf, %ll) @loss\n  output %loss\n}}\n");
    s
}

#[test]
fn optimization_time_on_gpt2_shaped_graphs() {
    for (layers, bound) in [(12, 2.0), (24, 5.0), (48, 10.0)] {
        let g = common::parse(&gpt2_text(layers));
        let t = Instant::now();
        let (out, r) = optimize(&g, &Pipeline::level(OptLevel::O2)).unwrap();
        let secs = t.elapsed().as_secs_f64();
        eprintln!(
            "{layers} layers: {} -> {} nodes in {secs:.3} s (extraction {:.3} s), {}",
            g.node_count(),
            out.node_count(),
            r.extract_seconds,
            r.passes[0].stop
        );
        assert!(!r.limit_hit(), "{r}");
        assert!(
            secs <= bound,
            "{layers} layers took {secs:.2} s (bound {bound} s)"
        );
    }
}
