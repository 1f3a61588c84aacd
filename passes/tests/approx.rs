//! Approximate attention substitutions (`kiln_passes::approx`): snapshots of
//! each kind's replacement subgraph, the subgraph against an independent
//! f64 reference of the approximate formula, the error report on random
//! inputs, refusal above `max_error`, graphs with nothing to replace, and
//! the cost at `S` against `8·S`.

mod common;

use common::{count, parse, print, random_inputs, rel_error, run};
use kiln_ir::graph::Graph;
use kiln_ir::tensor::Tensor;
use kiln_passes::approx::{
    substitute_attention, ApproxOptions, ApproxReport, AttentionKind, LinearForm,
};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

fn substitute(g: &Graph, opts: &ApproxOptions) -> (Graph, ApproxReport) {
    substitute_attention(g, opts).unwrap_or_else(|e| panic!("substitution failed: {e}"))
}

fn opts(kind: AttentionKind) -> ApproxOptions {
    ApproxOptions::new(kind)
}

// ---------------------------------------------------------------- reference

/// Attention inputs in the reference's layout: Q `[B, Hq, Sq, D]`,
/// K `[B, Hkv, Skv, D]`, V `[B, Hkv, Skv, Dv]`, the additive mask
/// materialized to `[B, Hq, Sq, Skv]`, all row-major f64.
struct Problem {
    b: usize,
    hq: usize,
    hkv: usize,
    sq: usize,
    skv: usize,
    d: usize,
    dv: usize,
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
    mask: Vec<f64>,
    causal: bool,
    scale: f64,
}

impl Problem {
    fn q(&self, b: usize, h: usize, i: usize) -> &[f64] {
        let at = ((b * self.hq + h) * self.sq + i) * self.d;
        &self.q[at..at + self.d]
    }
    fn k(&self, b: usize, h: usize, j: usize) -> &[f64] {
        let at = ((b * self.hkv + h) * self.skv + j) * self.d;
        &self.k[at..at + self.d]
    }
    fn v(&self, b: usize, h: usize, j: usize) -> &[f64] {
        let at = ((b * self.hkv + h) * self.skv + j) * self.dv;
        &self.v[at..at + self.dv]
    }
    fn mask(&self, b: usize, h: usize, i: usize, j: usize) -> f64 {
        self.mask[((b * self.hq + h) * self.sq + i) * self.skv + j]
    }
    fn visible(&self, i: usize, j: usize) -> bool {
        !self.causal || j <= i
    }

    /// Y `[B, Hq, Sq, Dv]` from per-row weights `w(b, h, i) -> Vec<weight per key>`,
    /// divided by the weight sum when `normalize`.
    fn combine(&self, normalize: bool, w: impl Fn(usize, usize, usize) -> Vec<f64>) -> Vec<f64> {
        let mut y = vec![0.0; self.b * self.hq * self.sq * self.dv];
        let group = self.hq / self.hkv;
        for b in 0..self.b {
            for h in 0..self.hq {
                for i in 0..self.sq {
                    let ws = w(b, h, i);
                    let total: f64 = if normalize { ws.iter().sum() } else { 1.0 };
                    let at = ((b * self.hq + h) * self.sq + i) * self.dv;
                    for (j, wj) in ws.iter().enumerate() {
                        for (m, vm) in self.v(b, h / group, j).iter().enumerate() {
                            y[at + m] += wj * vm / total;
                        }
                    }
                }
            }
        }
        y
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn elu1(x: f64) -> f64 {
    if x > 0.0 {
        x + 1.0
    } else {
        x.exp()
    }
}

fn reference_linear(p: &Problem) -> Vec<f64> {
    let group = p.hq / p.hkv;
    let r = p.scale.sqrt();
    p.combine(true, |b, h, i| {
        let fq: Vec<f64> = p.q(b, h, i).iter().map(|x| elu1(r * x)).collect();
        (0..p.skv)
            .map(|j| {
                if !p.visible(i, j) {
                    return 0.0;
                }
                let fk: Vec<f64> = p.k(b, h / group, j).iter().map(|x| elu1(r * x)).collect();
                p.mask(b, h, i, j).exp() * dot(&fq, &fk)
            })
            .collect()
    })
}

fn reference_sigmoid(p: &Problem) -> Vec<f64> {
    let group = p.hq / p.hkv;
    let bias = -(p.skv as f64).ln();
    p.combine(false, |b, h, i| {
        (0..p.skv)
            .map(|j| {
                let s =
                    p.scale * dot(p.q(b, h, i), p.k(b, h / group, j)) + p.mask(b, h, i, j) + bias;
                if p.visible(i, j) {
                    1.0 / (1.0 + (-s).exp())
                } else {
                    0.0
                }
            })
            .collect()
    })
}

fn reference_softplus(p: &Problem, n_ref: f64) -> Vec<f64> {
    let group = p.hq / p.hkv;
    p.combine(true, |b, h, i| {
        let n = if p.causal {
            (i + 1) as f64
        } else {
            p.skv as f64
        };
        let lambda = n.ln() / n_ref.ln();
        (0..p.skv)
            .map(|j| {
                let s =
                    lambda * p.scale * dot(p.q(b, h, i), p.k(b, h / group, j)) + p.mask(b, h, i, j);
                if p.visible(i, j) {
                    (1.0 + s.exp()).ln()
                } else {
                    0.0
                }
            })
            .collect()
    })
}

fn gaussian(a: &[f64], b: &[f64], scale: f64) -> f64 {
    let d2: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    (-scale / 2.0 * d2).exp()
}

/// Inverse of a symmetric positive-definite matrix by Gauss–Jordan with
/// partial pivoting: independent of the Newton–Schulz iteration under test.
fn invert(a: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let n = a.len();
    let mut m: Vec<Vec<f64>> = a
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let mut r = row.clone();
            r.extend((0..n).map(|j| if i == j { 1.0 } else { 0.0 }));
            r
        })
        .collect();
    for c in 0..n {
        let p = (c..n)
            .max_by(|&x, &y| m[x][c].abs().total_cmp(&m[y][c].abs()))
            .unwrap();
        m.swap(c, p);
        let piv = m[c][c];
        for x in m[c].iter_mut() {
            *x /= piv;
        }
        for r in 0..n {
            if r != c {
                let f = m[r][c];
                let row_c = m[c].clone();
                for (x, y) in m[r].iter_mut().zip(row_c) {
                    *x -= f * y;
                }
            }
        }
    }
    m.into_iter().map(|r| r[n..].to_vec()).collect()
}

/// SOFT with landmarks as segment means and an exact inverse, row-normalized.
fn reference_soft(p: &Problem, m: usize) -> Vec<f64> {
    let group = p.hq / p.hkv;
    p.combine(true, |b, h, i| {
        let kh = h / group;
        let landmarks: Vec<Vec<f64>> = (0..m)
            .map(|l| {
                let members: Vec<usize> = (0..p.skv).filter(|&j| j * m / p.skv == l).collect();
                (0..p.d)
                    .map(|c| {
                        members.iter().map(|&j| p.k(b, kh, j)[c]).sum::<f64>()
                            / members.len() as f64
                    })
                    .collect()
            })
            .collect();
        let gll: Vec<Vec<f64>> = landmarks
            .iter()
            .map(|x| landmarks.iter().map(|y| gaussian(x, y, p.scale)).collect())
            .collect();
        let inv = invert(&gll);
        let gql: Vec<f64> = landmarks
            .iter()
            .map(|l| gaussian(p.q(b, h, i), l, p.scale))
            .collect();
        let left: Vec<f64> = (0..m)
            .map(|c| (0..m).map(|r| gql[r] * inv[r][c]).sum())
            .collect();
        (0..p.skv)
            .map(|j| {
                let w = p.mask(b, h, i, j).exp();
                (0..m)
                    .map(|l| left[l] * gaussian(&landmarks[l], p.k(b, kh, j), p.scale) * w)
                    .sum()
            })
            .collect()
    })
}

/// Unpacks `[B, S, H·D]` into `[B, H, S, D]`.
fn unpack(t: &Tensor, heads: usize) -> Vec<f64> {
    let (b, s, hd) = (t.shape()[0], t.shape()[1], t.shape()[2]);
    let d = hd / heads;
    let x = t.to_f64s();
    let mut out = vec![0.0; x.len()];
    for bi in 0..b {
        for si in 0..s {
            for h in 0..heads {
                for di in 0..d {
                    out[((bi * heads + h) * s + si) * d + di] = x[(bi * s + si) * hd + h * d + di];
                }
            }
        }
    }
    out
}

/// Packs `[B, H, S, D]` into `[B, S, H·D]`.
fn pack(y: &[f64], b: usize, h: usize, s: usize, d: usize) -> Vec<f64> {
    let mut out = vec![0.0; y.len()];
    for bi in 0..b {
        for hi in 0..h {
            for si in 0..s {
                for di in 0..d {
                    out[(bi * s + si) * h * d + hi * d + di] = y[((bi * h + hi) * s + si) * d + di];
                }
            }
        }
    }
    out
}

/// The additive mask at (b, h, i, j) from a sample's inputs.
type MaskOf = dyn Fn(&[(String, Tensor)], usize, usize, usize, usize) -> f64;

/// The reference problem for an Attention node's inputs. `mask_of` gives
/// the additive mask at (b, h, i, j) from the sample.
fn problem(
    inputs: &[(String, Tensor)],
    three_d: Option<(usize, usize)>,
    causal: bool,
    scale: f64,
    mask_of: &MaskOf,
) -> Problem {
    let get = |n: &str| {
        &inputs
            .iter()
            .find(|(m, _)| m == n)
            .expect("input present")
            .1
    };
    let (q, k, v) = (get("q"), get("k"), get("v"));
    let (b, hq, hkv, sq, skv, d, dv, qv, kv, vv) = match three_d {
        Some((hq, hkv)) => (
            q.shape()[0],
            hq,
            hkv,
            q.shape()[1],
            k.shape()[1],
            q.shape()[2] / hq,
            v.shape()[2] / hkv,
            unpack(q, hq),
            unpack(k, hkv),
            unpack(v, hkv),
        ),
        None => (
            q.shape()[0],
            q.shape()[1],
            k.shape()[1],
            q.shape()[2],
            k.shape()[2],
            q.shape()[3],
            v.shape()[3],
            q.to_f64s(),
            k.to_f64s(),
            v.to_f64s(),
        ),
    };
    let mut mask = vec![0.0; b * hq * sq * skv];
    for bi in 0..b {
        for h in 0..hq {
            for i in 0..sq {
                for j in 0..skv {
                    mask[((bi * hq + h) * sq + i) * skv + j] = mask_of(inputs, bi, h, i, j);
                }
            }
        }
    }
    Problem {
        b,
        hq,
        hkv,
        sq,
        skv,
        d,
        dv,
        q: qv,
        k: kv,
        v: vv,
        mask,
        causal,
        scale,
    }
}

fn no_mask(_: &[(String, Tensor)], _: usize, _: usize, _: usize, _: usize) -> f64 {
    0.0
}

/// A boolean key-padding mask input `m [B, 1, 1, Skv]`.
fn key_padding(inputs: &[(String, Tensor)], b: usize, _: usize, _: usize, j: usize) -> f64 {
    let m = &inputs.iter().find(|(n, _)| n == "m").expect("mask input").1;
    let skv = m.shape()[3];
    if m.to_i64s()[b * skv + j] != 0 {
        0.0
    } else {
        f64::NEG_INFINITY
    }
}

/// A float mask input `m [Sq, Skv]`, varying by row.
fn row_mask(inputs: &[(String, Tensor)], _: usize, _: usize, i: usize, j: usize) -> f64 {
    let m = &inputs.iter().find(|(n, _)| n == "m").expect("mask input").1;
    m.to_f64s()[i * m.shape()[1] + j]
}

/// Keeps key 0 of every batch row visible so no row is fully masked.
fn with_first_key_kept(mut inputs: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    for (n, t) in inputs.iter_mut() {
        if n == "m" && t.dtype() == kiln_ir::DType::Bool {
            let shape = t.shape().to_vec();
            let skv = shape[3];
            let mut v = t.to_i64s();
            for (i, x) in v.iter_mut().enumerate() {
                if i % skv == 0 {
                    *x = 1;
                }
            }
            *t = Tensor::from_i64s(kiln_ir::DType::Bool, &shape, &v);
        }
    }
    inputs
}

/// Runs the substituted graph on random inputs and compares output `y`
/// with `reference(problem)`; returns the largest relative error.
fn check_against_reference(
    text: &str,
    opts: &ApproxOptions,
    three_d: Option<(usize, usize)>,
    causal: bool,
    scale: f64,
    mask_of: &MaskOf,
    reference: &dyn Fn(&Problem) -> Vec<f64>,
) -> f64 {
    let g = parse(text);
    let (out, report) = substitute(&g, opts);
    assert_eq!(report.replaced.len(), 1, "{report}");
    assert_eq!(count(&out, "Attention"), 0);
    let mut worst = 0.0f64;
    for seed in 0..3 {
        let inputs = with_first_key_kept(random_inputs(&g, seed, &BTreeMap::from([("seq", 6)])));
        let got = run(&out, &inputs);
        let y = &got[0].1;
        let p = problem(&inputs, three_d, causal, scale, mask_of);
        let want = reference(&p);
        let want = match three_d {
            Some((hq, _)) => pack(&want, p.b, hq, p.sq, p.dv),
            None => want,
        };
        let want = Tensor::from_f64s(y.dtype(), y.shape(), &want);
        let e = rel_error(&want, y);
        worst = worst.max(e);
    }
    worst
}

// ---------------------------------------------------------------- graphs

/// 4-D, two heads, non-causal, scale attribute.
const MHA_4D: &str = r#"graph "g" {
  input %q: f32[1, 2, 4, 3]
  input %k: f32[1, 2, 4, 3]
  input %v: f32[1, 2, 4, 2]
  %y = Attention(%q, %k, %v) {scale = 0.5} @attn
  output %y
}"#;

/// 3-D packed, grouped-query (4 query heads over 2 kv heads), causal,
/// symbolic sequence length.
const GQA_3D_CAUSAL: &str = r#"graph "g" {
  input %q: f32[2, seq, 8]
  input %k: f32[2, seq, 4]
  input %v: f32[2, seq, 6]
  %y = Attention(%q, %k, %v) {is_causal = 1, q_num_heads = 4, kv_num_heads = 2} @attn
  output %y
}"#;

/// The default scale of [`GQA_3D_CAUSAL`]: head size 8 / 4 = 2.
const GQA_SCALE: f64 = std::f64::consts::FRAC_1_SQRT_2;

/// 4-D grouped-query, non-causal, a boolean key-padding mask.
const GQA_4D_KEY_MASK: &str = r#"graph "g" {
  input %q: f32[2, 4, 5, 3]
  input %k: f32[2, 2, 6, 3]
  input %v: f32[2, 2, 6, 2]
  input %m: bool[2, 1, 1, 6]
  %y = Attention(%q, %k, %v, %m) @attn
  output %y
}"#;

/// 4-D causal self-attention with a float mask that varies by row.
const CAUSAL_ROW_MASK: &str = r#"graph "g" {
  input %q: f32[1, 2, 5, 4]
  input %k: f32[1, 2, 5, 4]
  input %v: f32[1, 2, 5, 3]
  input %m: f32[5, 5]
  %y = Attention(%q, %k, %v, %m) {is_causal = 1} @attn
  output %y
}"#;

/// Attention between projections, so the error reaches a later op.
const WITH_CONTEXT: &str = r#"graph "g" {
  input %x: f32[1, seq, 8]
  input %wq: f32[8, 8]
  input %wk: f32[8, 8]
  input %wv: f32[8, 8]
  %q = MatMul(%x, %wq) @proj_q
  %k = MatMul(%x, %wk) @proj_k
  %v = MatMul(%x, %wv) @proj_v
  %a = Attention(%q, %k, %v) {is_causal = 1, q_num_heads = 2, kv_num_heads = 2} @attn
  %y = Add(%a, %x) @residual
  output %y
}"#;

// ---------------------------------------------------------------- snapshots

fn snapshot_opts(kind: AttentionKind) -> ApproxOptions {
    let mut o = opts(kind);
    o.landmarks = 2;
    o.newton_schulz_iterations = 2;
    o
}

#[test]
fn linear_snapshot() {
    let (out, report) = substitute(&parse(MHA_4D), &snapshot_opts(AttentionKind::Linear));
    assert_eq!(report.replaced.len(), 1);
    insta::assert_snapshot!("approx_linear", print(&out));
}

#[test]
fn linear_causal_gqa_snapshot() {
    let (out, _) = substitute(&parse(GQA_3D_CAUSAL), &snapshot_opts(AttentionKind::Linear));
    assert_eq!(count(&out, "CumSum"), 2);
    insta::assert_snapshot!("approx_linear_causal_gqa", print(&out));
}

#[test]
fn sigmoid_snapshot() {
    let (out, _) = substitute(&parse(MHA_4D), &snapshot_opts(AttentionKind::Sigmoid));
    assert_eq!(count(&out, "Sigmoid"), 1);
    insta::assert_snapshot!("approx_sigmoid", print(&out));
}

#[test]
fn softplus_snapshot() {
    let (out, _) = substitute(
        &parse(CAUSAL_ROW_MASK),
        &snapshot_opts(AttentionKind::Softplus),
    );
    assert_eq!(count(&out, "Softplus"), 1);
    insta::assert_snapshot!("approx_softplus", print(&out));
}

#[test]
fn soft_snapshot() {
    let (out, _) = substitute(&parse(MHA_4D), &snapshot_opts(AttentionKind::Soft));
    assert_eq!(count(&out, "Exp"), 3, "three Gaussian kernel blocks");
    insta::assert_snapshot!("approx_soft", print(&out));
}

#[test]
fn linear_attention_op_snapshot() {
    let mut o = opts(AttentionKind::Linear);
    o.linear_form = LinearForm::LinearAttentionOp;
    let (out, report) = substitute(&parse(GQA_3D_CAUSAL), &o);
    assert_eq!(report.replaced[0].form, "LinearAttention");
    assert_eq!(count(&out, "LinearAttention"), 2);
    let printed = print(&out);
    let reparsed = kiln_ir::parse_graph(&printed).expect("LinearAttention parses back");
    assert_eq!(print(&reparsed), printed);
    insta::assert_snapshot!("approx_linear_attention_op", printed);
}

// ---------------------------------------------------------------- numbers

const TOL: f64 = 1e-5;

#[test]
fn linear_matches_reference() {
    let o = opts(AttentionKind::Linear);
    let e = check_against_reference(MHA_4D, &o, None, false, 0.5, &no_mask, &reference_linear);
    assert!(e < TOL, "4-D: {e}");
    let e = check_against_reference(
        GQA_3D_CAUSAL,
        &o,
        Some((4, 2)),
        true,
        GQA_SCALE,
        &no_mask,
        &reference_linear,
    );
    assert!(e < TOL, "3-D causal GQA: {e}");
    let s = 1.0 / 3f64.sqrt();
    let e = check_against_reference(
        GQA_4D_KEY_MASK,
        &o,
        None,
        false,
        s,
        &key_padding,
        &reference_linear,
    );
    assert!(e < TOL, "key-padding mask: {e}");
}

#[test]
fn linear_attention_op_matches_decomposed_form() {
    let g = parse(GQA_3D_CAUSAL);
    let mut with_op = opts(AttentionKind::Linear);
    with_op.linear_form = LinearForm::LinearAttentionOp;
    let (a, _) = substitute(&g, &with_op);
    let (b, _) = substitute(&g, &opts(AttentionKind::Linear));
    for seed in 0..3 {
        let inputs = random_inputs(&g, seed, &BTreeMap::from([("seq", 7)]));
        let e = rel_error(&run(&a, &inputs)[0].1, &run(&b, &inputs)[0].1);
        assert!(e < TOL, "seed {seed}: {e}");
    }
    let e = check_against_reference(
        GQA_3D_CAUSAL,
        &with_op,
        Some((4, 2)),
        true,
        GQA_SCALE,
        &no_mask,
        &reference_linear,
    );
    assert!(e < TOL, "LinearAttention form: {e}");
}

#[test]
fn sigmoid_matches_reference() {
    let o = opts(AttentionKind::Sigmoid);
    let e = check_against_reference(MHA_4D, &o, None, false, 0.5, &no_mask, &reference_sigmoid);
    assert!(e < TOL, "4-D: {e}");
    let e = check_against_reference(
        GQA_3D_CAUSAL,
        &o,
        Some((4, 2)),
        true,
        GQA_SCALE,
        &no_mask,
        &reference_sigmoid,
    );
    assert!(e < TOL, "3-D causal GQA: {e}");
    let s = 1.0 / 3f64.sqrt();
    let e = check_against_reference(
        GQA_4D_KEY_MASK,
        &o,
        None,
        false,
        s,
        &key_padding,
        &reference_sigmoid,
    );
    assert!(e < TOL, "key-padding mask: {e}");
    let e = check_against_reference(
        CAUSAL_ROW_MASK,
        &o,
        None,
        true,
        0.5,
        &row_mask,
        &reference_sigmoid,
    );
    assert!(e < TOL, "row mask: {e}");
}

#[test]
fn softplus_matches_reference() {
    // The reference length defaults to the key length when it is static.
    let o = opts(AttentionKind::Softplus);
    let e = check_against_reference(MHA_4D, &o, None, false, 0.5, &no_mask, &|p| {
        reference_softplus(p, 4.0)
    });
    assert!(e < TOL, "4-D: {e}");
    let e = check_against_reference(CAUSAL_ROW_MASK, &o, None, true, 0.5, &row_mask, &|p| {
        reference_softplus(p, 5.0)
    });
    assert!(e < TOL, "causal, row mask: {e}");
    let mut o = opts(AttentionKind::Softplus);
    o.softplus_reference_len = Some(3.0);
    let e = check_against_reference(
        GQA_3D_CAUSAL,
        &o,
        Some((4, 2)),
        true,
        GQA_SCALE,
        &no_mask,
        &|p| reference_softplus(p, 3.0),
    );
    assert!(e < TOL, "3-D causal GQA: {e}");
}

#[test]
fn soft_matches_reference() {
    // Few landmarks, well conditioned: Newton–Schulz reaches the exact inverse.
    let mut o = opts(AttentionKind::Soft);
    o.landmarks = 2;
    o.newton_schulz_iterations = 30;
    let e = check_against_reference(MHA_4D, &o, None, false, 0.5, &no_mask, &|p| {
        reference_soft(p, 2)
    });
    assert!(e < 1e-4, "4-D, 2 landmarks: {e}");
    o.landmarks = 3;
    let s = 1.0 / 3f64.sqrt();
    let e = check_against_reference(GQA_4D_KEY_MASK, &o, None, false, s, &key_padding, &|p| {
        reference_soft(p, 3)
    });
    assert!(e < 1e-4, "GQA, key-padding mask, uneven segments: {e}");
}

#[test]
fn soft_with_every_key_a_landmark_is_exact_gaussian_attention() {
    // With m = n the Nyström factorization is exact, so the result is the
    // row-normalized Gaussian kernel attention itself.
    let mut o = opts(AttentionKind::Soft);
    o.landmarks = 64;
    o.newton_schulz_iterations = 60;
    let exact_kernel = |p: &Problem| {
        p.combine(true, |b, h, i| {
            (0..p.skv)
                .map(|j| gaussian(p.q(b, h, i), p.k(b, h * p.hkv / p.hq, j), p.scale))
                .collect()
        })
    };
    let e = check_against_reference(MHA_4D, &o, None, false, 0.5, &no_mask, &exact_kernel);
    assert!(e < 1e-3, "{e}");
}

// ---------------------------------------------------------------- reports

#[test]
fn error_report_on_random_inputs() {
    let g = parse(WITH_CONTEXT);
    for kind in [
        AttentionKind::Linear,
        AttentionKind::Sigmoid,
        AttentionKind::Softplus,
    ] {
        let (out, report) = substitute(&g, &opts(kind));
        assert!(!report.refused);
        assert_eq!(report.replaced.len(), 1, "{kind}");
        let e = report.error.clone().expect("error measured");
        assert!(
            e.max_abs.is_finite() && e.rel_l2.is_finite() && e.cosine.is_finite(),
            "{kind}: {e:?}"
        );
        assert!(
            e.rel_l2 > 1e-6,
            "{kind}: the approximation differs from softmax attention"
        );
        assert!(e.cosine > 0.0 && e.cosine <= 1.0 + 1e-12, "{kind}: {e:?}");
        assert_eq!(report.output_errors.len(), 1);
        assert_eq!(report.output_errors[0].output, "y");
        assert_eq!(report.samples, 2);
        // The returned graph is the approximate one and differs in output.
        let inputs = random_inputs(&g, 5, &BTreeMap::from([("seq", 5)]));
        let d = rel_error(&run(&g, &inputs)[0].1, &run(&out, &inputs)[0].1);
        assert!(d > 1e-6, "{kind}: outputs equal");
        let text = report.to_string();
        assert!(
            text.contains("relative L2") && text.contains("FLOPs"),
            "{text}"
        );
    }
}

#[test]
fn error_measured_on_given_samples() {
    let g = parse(WITH_CONTEXT);
    let mut o = opts(AttentionKind::Softplus);
    o.samples = vec![random_inputs(&g, 11, &BTreeMap::from([("seq", 9)]))];
    let (_, report) = substitute(&g, &o);
    assert_eq!(report.samples, 1);
    assert_eq!(report.seq_len, 9, "S comes from the sample's sequence axis");
    assert!(report.error.is_some_and(|e| e.rel_l2.is_finite()));
}

#[test]
fn refused_when_error_exceeds_max_error() {
    let g = parse(WITH_CONTEXT);
    for kind in [
        AttentionKind::Linear,
        AttentionKind::Sigmoid,
        AttentionKind::Softplus,
    ] {
        let mut o = opts(kind);
        o.max_error = Some(1e-9);
        let (out, report) = substitute(&g, &o);
        assert!(report.exceeds_max_error(), "{kind}: {report}");
        assert!(report.refused);
        assert_eq!(
            print(&out),
            print(&g),
            "{kind}: a refused substitution returns the exact graph"
        );
        assert!(
            report.to_string().contains("exceeds --max-error"),
            "{report}"
        );
        // A generous bound accepts the same substitution.
        o.max_error = Some(10.0);
        let (out, report) = substitute(&g, &o);
        assert!(
            !report.exceeds_max_error() && !report.refused,
            "{kind}: {report}"
        );
        assert_eq!(count(&out, "Attention"), 0);
    }
}

#[test]
fn graph_without_attention_is_unchanged() {
    let text = r#"graph "g" {
  input %x: f32[2, 3]
  %s = Softmax(%x) @sm
  output %s
}"#;
    let g = parse(text);
    for kind in [AttentionKind::Linear, AttentionKind::Soft] {
        let (out, report) = substitute(&g, &opts(kind));
        assert_eq!(print(&out), print(&g));
        assert!(report.replaced.is_empty() && report.skipped.is_empty());
        assert!(report.error.is_none() && !report.exceeds_max_error());
        assert!(report.to_string().contains("0 replaced"), "{report}");
    }
}

#[test]
fn unsupported_nodes_are_left_exact_with_a_reason() {
    // SOFT cannot be causal; linear cannot take a mask that varies by row.
    let (out, report) = substitute(&parse(CAUSAL_ROW_MASK), &opts(AttentionKind::Soft));
    assert_eq!(count(&out, "Attention"), 1);
    assert!(report.skipped[0].reason.contains("causal"), "{report}");
    let (out, report) = substitute(&parse(CAUSAL_ROW_MASK), &opts(AttentionKind::Linear));
    assert_eq!(count(&out, "Attention"), 1);
    assert!(
        report.skipped[0]
            .reason
            .contains("varies between query rows"),
        "{report}"
    );
    assert!(report.error.is_none());
}

#[test]
fn kind_names_round_trip() {
    for k in AttentionKind::ALL {
        assert_eq!(k.to_string().parse::<AttentionKind>(), Ok(k));
    }
    assert!("cosine".parse::<AttentionKind>().is_err());
}

// ---------------------------------------------------------------- cost

/// FLOPs at 8·S over FLOPs at S, before and after.
fn flop_growth(report: &ApproxReport) -> (f64, f64) {
    let before =
        report.before.at_scaled.as_ref().expect("8S cost").flops / report.before.at_s.flops;
    let after = report.after.at_scaled.as_ref().expect("8S cost").flops / report.after.at_s.flops;
    (before, after)
}

const LONG_SYMBOLIC: &str = r#"graph "g" {
  input %q: f32[1, 4, seq, 16]
  input %k: f32[1, 4, seq, 16]
  input %v: f32[1, 4, seq, 16]
  %y = Attention(%q, %k, %v) @attn
  output %y
}"#;

#[test]
fn linear_cost_grows_linearly_while_exact_grows_quadratically() {
    let g = parse(LONG_SYMBOLIC);
    let mut o = opts(AttentionKind::Linear);
    o.seq_len = Some(256);
    o.samples = vec![random_inputs(&g, 0, &BTreeMap::from([("seq", 8)]))];
    let (_, report) = substitute(&g, &o);
    assert_eq!(report.seq_len, 256);
    let (before, after) = flop_growth(&report);
    assert!(before > 40.0, "exact attention's S² terms: {before}");
    assert!((6.0..=10.0).contains(&after), "linear attention: {after}");
    assert!(after < before);
    // FLOPs only: the fused Attention op is costed as one kernel that never
    // writes its scores, while the decomposed form moves its intermediates.
    let b8 = report.before.at_scaled.as_ref().unwrap();
    let a8 = report.after.at_scaled.as_ref().unwrap();
    assert!(
        a8.flops < b8.flops,
        "at 8S linear needs fewer FLOPs: {report}"
    );
}

#[test]
fn soft_cost_grows_linearly_and_sigmoid_quadratically() {
    let g = parse(LONG_SYMBOLIC);
    for (kind, linear) in [(AttentionKind::Soft, true), (AttentionKind::Sigmoid, false)] {
        let mut o = opts(kind);
        o.seq_len = Some(512);
        o.samples = vec![random_inputs(&g, 0, &BTreeMap::from([("seq", 8)]))];
        let (_, report) = substitute(&g, &o);
        let (_, after) = flop_growth(&report);
        if linear {
            assert!(after < 12.0, "{kind}: {after}");
        } else {
            assert!(after > 40.0, "{kind}: {after}");
        }
    }
}

#[test]
fn fixed_sequence_length_is_retyped_at_8s() {
    let text = r#"graph "g" {
  input %q: f32[1, 2, 32, 8]
  input %k: f32[1, 2, 32, 8]
  input %v: f32[1, 2, 32, 8]
  %y = Attention(%q, %k, %v) {is_causal = 1} @attn
  output %y
}"#;
    let (_, report) = substitute(&parse(text), &opts(AttentionKind::Linear));
    assert_eq!(report.seq_len, 32);
    assert_eq!(report.seq_symbol.as_deref(), Some("S"));
    assert!(report.scaling_note.is_none(), "{report}");
    let (before, after) = flop_growth(&report);
    assert!(before > after, "exact {before}, linear {after}");
    assert!((6.0..=10.0).contains(&after), "{after}");
}

// ---------------------------------------------------------------- onnxruntime

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-approx-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// Runs `model.onnx` in `dir` on `in_<name>.npy` with onnxruntime, writing
/// `out_<i>.npy`.
const ORT_SCRIPT: &str = r#"
import sys, os, numpy as np, onnxruntime as ort
d = sys.argv[1]
s = ort.InferenceSession(os.path.join(d, "model.onnx"), providers=["CPUExecutionProvider"])
feeds = {i.name: np.load(os.path.join(d, "in_" + i.name + ".npy")) for i in s.get_inputs()}
for i, o in enumerate(s.run(None, feeds)):
    np.save(os.path.join(d, "out_%d.npy" % i), o)
"#;

#[test]
fn substituted_graphs_run_in_onnxruntime() {
    let Some(python) = kiln_test_support::python() else {
        eprintln!("SKIPPED: no Python with onnxruntime (set KILN_PYTHON)");
        return;
    };
    let cases: Vec<(&str, &str, ApproxOptions)> = vec![
        ("linear", GQA_3D_CAUSAL, opts(AttentionKind::Linear)),
        ("linear_op", GQA_3D_CAUSAL, {
            let mut o = opts(AttentionKind::Linear);
            o.linear_form = LinearForm::LinearAttentionOp;
            o
        }),
        ("linear_mask", GQA_4D_KEY_MASK, opts(AttentionKind::Linear)),
        ("sigmoid", CAUSAL_ROW_MASK, opts(AttentionKind::Sigmoid)),
        ("softplus", GQA_3D_CAUSAL, opts(AttentionKind::Softplus)),
        ("soft", GQA_4D_KEY_MASK, {
            let mut o = opts(AttentionKind::Soft);
            o.landmarks = 3;
            o
        }),
    ];
    for (name, text, o) in cases {
        let g = parse(text);
        let (out, report) = substitute(&g, &o);
        assert_eq!(report.replaced.len(), 1, "{name}: {report}");
        let dir = scratch(name);
        kiln_ir::onnx::save_model(&out, &dir.join("model.onnx")).expect("export");
        let inputs = with_first_key_kept(random_inputs(&g, 3, &BTreeMap::from([("seq", 6)])));
        for (n, t) in &inputs {
            kiln_ir::npy::write_npy(&dir.join(format!("in_{n}.npy")), t).expect("write input");
        }
        kiln_test_support::run_command(
            Command::new(&python).arg("-c").arg(ORT_SCRIPT).arg(&dir),
            &format!("onnxruntime on the {name} substitution"),
        );
        let ours = run(&out, &inputs);
        let theirs = kiln_ir::npy::read_npy(&dir.join("out_0.npy")).expect("onnxruntime output");
        let e = rel_error(&ours[0].1, &theirs);
        assert!(e < 1e-4, "{name}: kiln and onnxruntime differ by {e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

// ---------------------------------------------------------------- figures

/// One attention block `y = Attention(xWq, xWk, xWv)·Wo + x` with `d = 64`,
/// 4 heads, seeded weights of scale `1/√d`, and a symbolic `seq`.
fn attention_block(causal: bool) -> Graph {
    use kiln_ir::dim::Dim;
    use kiln_ir::op::{AttentionAttrs, BinaryOp, Op};
    use kiln_ir::types::TensorType;
    use kiln_ir::DType;
    use rand::{Rng, SeedableRng};
    let d = 64usize;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut g = Graph::new("block");
    let x = g
        .add_input(
            "x",
            TensorType::new(
                DType::F32,
                vec![Dim::Fixed(1), Dim::sym("seq"), Dim::Fixed(d as u64)],
            ),
        )
        .unwrap();
    let mut weight = |g: &mut Graph, name: &str| {
        let bound = 3f64.sqrt() / (d as f64).sqrt();
        let w: Vec<f64> = (0..d * d)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        g.add_initializer(name, Tensor::from_f64s(DType::F32, &[d, d], &w))
            .unwrap()
    };
    let (wq, wk, wv, wo) = (
        weight(&mut g, "wq"),
        weight(&mut g, "wk"),
        weight(&mut g, "wv"),
        weight(&mut g, "wo"),
    );
    let mm = |g: &mut Graph, a, b, name: &str| {
        let n = g
            .add_node(name, Op::MatMul, vec![Some(a), Some(b)], &[name])
            .unwrap();
        g.node(n).output(0).unwrap()
    };
    let q = mm(&mut g, x, wq, "q");
    let k = mm(&mut g, x, wk, "k");
    let v = mm(&mut g, x, wv, "v");
    let attrs = AttentionAttrs {
        is_causal: causal,
        q_num_heads: Some(4),
        kv_num_heads: Some(4),
        qk_matmul_output_mode: 0,
        scale: None,
        softcap: 0.0,
        softmax_precision: None,
    };
    let a = g
        .add_node(
            "attn",
            Op::Attention(attrs),
            vec![Some(q), Some(k), Some(v)],
            &["a"],
        )
        .unwrap();
    let a = g.node(a).output(0).unwrap();
    let o = mm(&mut g, a, wo, "o");
    let y = g
        .add_node(
            "residual",
            Op::Binary(BinaryOp::Add),
            vec![Some(o), Some(x)],
            &["y"],
        )
        .unwrap();
    g.add_output(g.node(y).output(0).unwrap());
    kiln_ir::infer_types(&mut g).unwrap();
    g
}

/// Prints the report of every kind on a causal and a bidirectional block
/// (error on two 128-token samples, cost at S = 512 and 8·S = 4096); the
/// README's table comes from this output (`--nocapture`).
#[test]
fn figures_on_an_attention_block() {
    for causal in [true, false] {
        let g = attention_block(causal);
        let samples: Vec<_> = (0..2)
            .map(|s| random_inputs(&g, 100 + s, &BTreeMap::from([("seq", 128)])))
            .collect();
        for kind in AttentionKind::ALL {
            let mut o = opts(kind);
            o.samples = samples.clone();
            o.seq_len = Some(512);
            let (_, report) = substitute(&g, &o);
            println!(
                "--- {} block, {kind}\n{report}",
                if causal { "causal" } else { "bidirectional" }
            );
            if causal && kind == AttentionKind::Soft {
                assert_eq!(report.skipped.len(), 1);
                continue;
            }
            assert_eq!(report.replaced.len(), 1, "{report}");
            let e = report.error.as_ref().expect("measured");
            assert!(e.rel_l2.is_finite() && e.rel_l2 > 0.0, "{report}");
            let (before, after) = flop_growth(&report);
            assert_eq!(
                kind.is_linear_in_length(),
                after < 12.0,
                "{kind}: {before} vs {after}"
            );
        }
    }
    let g = attention_block(true);
    let mut o = opts(AttentionKind::Linear);
    o.linear_form = LinearForm::LinearAttentionOp;
    o.samples = vec![random_inputs(&g, 100, &BTreeMap::from([("seq", 128)]))];
    o.seq_len = Some(512);
    let (_, report) = substitute(&g, &o);
    println!("--- causal block, linear as LinearAttention\n{report}");
    let (_, after) = flop_growth(&report);
    assert!((6.0..=10.0).contains(&after), "{report}");
}

#[test]
fn unused_present_outputs_are_dropped_and_the_graph_exports() {
    let text = r#"graph "g" {
  input %q: f32[1, 2, 4, 3]
  input %k: f32[1, 2, 4, 3]
  input %v: f32[1, 2, 4, 2]
  %y, %present_k, %present_v = Attention(%q, %k, %v) @attn
  output %y
}"#;
    let g = parse(text);
    let (out, report) = substitute(&g, &opts(AttentionKind::Sigmoid));
    assert_eq!(report.replaced.len(), 1, "{report}");
    kiln_ir::verify(&out).expect("verifies");
    let printed = print(&out);
    assert!(!printed.contains("present_k"), "{printed}");
    let reparsed = kiln_ir::parse_graph(&printed).expect("reparses");
    assert_eq!(print(&reparsed), printed);
    let bytes = kiln_ir::onnx::model_to_bytes(&out).expect("exports");
    let back =
        kiln_ir::onnx::import_model_bytes(&bytes, None, kiln_ir::onnx::ImportOptions::default())
            .expect("imports");
    let inputs = random_inputs(&g, 1, &BTreeMap::new());
    assert!(rel_error(&run(&out, &inputs)[0].1, &run(&back, &inputs)[0].1) < 1e-6);

    // A used present output keeps the node exact.
    let used = text.replace("output %y", "output %y\n  output %present_k");
    let (out, report) = substitute(&parse(&used), &opts(AttentionKind::Sigmoid));
    assert_eq!(count(&out, "Attention"), 1);
    assert!(report.skipped[0].reason.contains("present_k"), "{report}");
}

// ---------------------------------------------------------------- example models

/// The reference inputs of `dir/test_data_set_0`, by graph input name.
fn example_inputs(dir: &std::path::Path, g: &Graph) -> Vec<(String, Tensor)> {
    let data = dir.join("test_data_set_0");
    let free: Vec<_> = g.inputs().iter().filter(|&&v| g.value(v).initializer.is_none()).collect();
    free.iter()
        .enumerate()
        .map(|(i, &&v)| {
            let (name, t) = kiln_ir::onnx::read_tensor_pb(&data.join(format!("input_{i}.pb"))).expect("input reads");
            (if name.is_empty() { g.value(v).name.clone() } else { name }, t)
        })
        .collect()
}

/// `-O2` fuses the example models' attention into `Attention` nodes; every
/// kind then replaces all of them (SOFT leaves causal ones exact) and
/// reports a finite error on the model's own test inputs.
#[test]
fn example_models_after_o2() {
    use kiln_passes::manager::{optimize, OptLevel, Pipeline};
    let scratch = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let Some(dirs) = kiln_test_support::example_model_dirs(scratch) else {
        eprintln!("SKIPPED: no example models and no Python to make them");
        return;
    };
    for dir in dirs {
        let mut g = kiln_ir::onnx::load_model(&dir.join("model.onnx"), kiln_ir::onnx::ImportOptions::default())
            .expect("example model imports");
        kiln_ir::infer_types(&mut g).expect("example model infers");
        let (fused, _) = optimize(&g, &Pipeline::level(OptLevel::O2)).expect("optimizes");
        let attention = count(&fused, "Attention");
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        assert!(attention > 0, "{name}: -O2 fused no attention");
        let inputs = example_inputs(&dir, &g);
        for kind in AttentionKind::ALL {
            let mut o = opts(kind);
            o.samples = vec![inputs.clone()];
            let (out, report) = substitute(&fused, &o);
            println!("--- {name}, {kind}\n{report}");
            assert_eq!(report.replaced.len() + report.skipped.len(), attention, "{name} {kind}: {report}");
            assert_eq!(count(&out, "Attention"), report.skipped.len());
            if kind != AttentionKind::Soft {
                assert!(report.skipped.is_empty(), "{name} {kind}: {report}");
            }
            if let Some(e) = &report.error {
                assert!(e.rel_l2.is_finite() && e.cosine.is_finite(), "{name} {kind}: {report}");
            }
        }
    }
}
