//! ONNX `Attention` on the CPU backend's flash kernel against kiln's
//! interpreter on random inputs (rtol 1e-4, atol 1e-5): 4-D and 3-D
//! layouts, causal, float and bool masks (broadcast, and shorter than the
//! keys), softcap, past/present caches, the scores output, nonpad_kv_seqlen, f16, grouped-query heads, sequence lengths that are not a multiple of
//! the tiles and the vector micro-kernels' edge sizes (also as AVX2 code); the lazily rescaled tiles of plain attention, with scores
//! that climb or fall across tiles, and where they must not be used; that the scratch stays O(tile) at S = 2048; and the
//! unsupported variants' errors.

use kiln_backend_llvm::{compile, BackendError, CompileOptions};
use kiln_ir::dtype::DType;
use kiln_ir::graph::Graph;
use kiln_ir::op::{AttentionAttrs, Op};
use kiln_ir::tensor::Tensor;
use kiln_ir::types::TensorType;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const RTOL: f64 = 1e-4;
const ATOL: f64 = 1e-5;

fn attrs() -> AttentionAttrs {
    AttentionAttrs {
        is_causal: false,
        q_num_heads: None,
        kv_num_heads: None,
        qk_matmul_output_mode: 0,
        scale: None,
        softcap: 0.0,
        softmax_precision: None,
    }
}

fn random(rng: &mut StdRng, shape: &[usize], lo: f64, hi: f64) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
    Tensor::from_f64s(DType::F32, shape, &v)
}

/// A bool mask that keeps key 0 of every row (so no row is fully masked)
/// and about three quarters of the others.
fn random_bool(rng: &mut StdRng, shape: &[usize]) -> Tensor {
    let width = *shape.last().expect("masks have a key axis");
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|i| if i % width == 0 || rng.random_bool(0.75) { 1.0 } else { 0.0 }).collect();
    Tensor::from_f64s(DType::Bool, shape, &v)
}

/// One Attention node over inputs q, k, v and an optional mask.
struct Case {
    what: &'static str,
    attrs: AttentionAttrs,
    q: Vec<usize>,
    k: Vec<usize>,
    v: Vec<usize>,
    mask: Option<(DType, Vec<usize>)>,
}

fn graph(case: &Case) -> Graph {
    let mut g = Graph::new("attention");
    let mut ins = Vec::new();
    for (name, shape) in [("q", &case.q), ("k", &case.k), ("v", &case.v)] {
        ins.push(Some(g.add_input(name, TensorType::fixed(DType::F32, shape)).unwrap()));
    }
    if let Some((dtype, shape)) = &case.mask {
        ins.push(Some(g.add_input("mask", TensorType::fixed(*dtype, shape)).unwrap()));
    }
    let id = g.add_node("attn", Op::Attention(case.attrs), ins, &["y"]).unwrap();
    let y = g.node(id).output(0).unwrap();
    g.add_output(y);
    kiln_ir::infer_types(&mut g).unwrap_or_else(|e| panic!("{}: inference: {e}", case.what));
    g
}

fn inputs(rng: &mut StdRng, case: &Case) -> Vec<(String, Tensor)> {
    let mut out = vec![
        ("q".to_string(), random(rng, &case.q, -1.0, 1.0)),
        ("k".to_string(), random(rng, &case.k, -1.0, 1.0)),
        ("v".to_string(), random(rng, &case.v, -1.0, 1.0)),
    ];
    if let Some((dtype, shape)) = &case.mask {
        let m = if *dtype == DType::Bool { random_bool(rng, shape) } else { random(rng, shape, -2.0, 2.0) };
        out.push(("mask".to_string(), m));
    }
    out
}

fn check(case: Case) {
    check_with(case, &CompileOptions::default());
}

fn check_with(case: Case, options: &CompileOptions) {
    let mut rng = StdRng::seed_from_u64(7);
    let ins = inputs(&mut rng, &case);
    check_on(case, options, &ins, (ATOL, RTOL));
}

/// The kernel against the interpreter on the given inputs, within
/// `atol + rtol·|expected|`.
fn check_on(case: Case, options: &CompileOptions, ins: &[(String, Tensor)], (atol, rtol): (f64, f64)) {
    let g = graph(&case);
    let compiled = compile(&g, options).unwrap_or_else(|e| panic!("{}: compile: {e}", case.what));
    let got = compiled.run(ins).unwrap_or_else(|e| panic!("{}: run: {e}", case.what));
    let want = kiln_ir::interp::run(&g, ins).unwrap_or_else(|e| panic!("{}: interpreter: {e}", case.what));
    let (got, want) = (&got[0].1, &want[0].1);
    assert_eq!(got.shape(), want.shape(), "{}: shape", case.what);
    let mut checked = 0;
    for (i, (a, b)) in got.to_f64s().iter().zip(want.to_f64s()).enumerate() {
        assert!(b.is_finite(), "{}: the interpreter gives {b} at {i}; the inputs should avoid that", case.what);
        assert!((a - b).abs() <= atol + rtol * b.abs(), "{}: element {i} is {a}, interpreter says {b}", case.what);
        checked += 1;
    }
    assert!(checked > 0, "{}: nothing compared", case.what);
}

#[test]
fn four_d_matches_the_interpreter() {
    check(Case {
        what: "4-D",
        attrs: attrs(),
        q: vec![2, 3, 37, 16],
        k: vec![2, 3, 37, 16],
        v: vec![2, 3, 37, 16],
        mask: None,
    });
}

/// Scores spread over hundreds (inputs up to ±10, 64-wide heads): the
/// online softmax is exact for any shift only while no exponential
/// overflows, so each tile's maximum must be the true one. Without a mask,
/// cap or short tile the micro-GEMM reduces the maxima of a group of rows
/// together; a wrong lane there shows up here as inf or NaN.
#[test]
fn large_scores_shift_by_the_exact_tile_maximum() {
    let case = Case {
        what: "scores of ±100s",
        attrs: attrs(),
        q: vec![1, 2, 130, 64],
        k: vec![1, 2, 256, 64],
        v: vec![1, 2, 256, 64],
        mask: None,
    };
    let mut rng = StdRng::seed_from_u64(31);
    let ins: Vec<(String, Tensor)> = [("q", &case.q), ("k", &case.k), ("v", &case.v)]
        .into_iter()
        .map(|(name, shape)| (name.to_string(), random(&mut rng, shape, -10.0, 10.0)))
        .collect();
    // Scores of hundreds carry f32 rounding of about 1e-5 each, which the
    // peaked exponentials turn into errors near 1e-3 (the 2^(±88) of a
    // wrong maximum is far outside that).
    check_on(case, &CompileOptions::default(), &ins, (1e-3, 1e-3));
}

/// Q and K whose scores move by `step` (in units of the natural log) from
/// one 64-key tile to the next: positive queries, and each tile's keys
/// scaled so its dot products grow (or shrink) by the same amount.
fn tile_stepped_inputs(case: &Case, step: f64) -> Vec<(String, Tensor)> {
    let mut rng = StdRng::seed_from_u64(17);
    let q = random(&mut rng, &case.q, 0.5, 1.0);
    let (kv, d) = (case.k[2], case.k[3]);
    // q·k ≈ d · 0.75², scaled by 1/√d.
    let per_unit = d as f64 * 0.5625 / (d as f64).sqrt();
    let rows = case.k[0] * case.k[1] * kv;
    let k: Vec<f64> = (0..rows * d)
        .map(|i| {
            let tile = ((i / d) % kv / 64) as f64;
            let target = 2.0 + step * tile;
            target / per_unit * rng.random_range(0.5..1.0) / 0.75
        })
        .collect();
    let k = Tensor::from_f64s(DType::F32, &case.k, &k);
    let v = random(&mut rng, &case.v, -1.0, 1.0);
    vec![("q".to_string(), q), ("k".to_string(), k), ("v".to_string(), v)]
}

/// Plain f32 attention (no mask, cap, causal limit or padding, whole
/// tiles) rescales lazily: a row's shift is raised only when a score
/// passes it by more than 2^16. Scores that climb 40 nats a tile would
/// overflow f32 by the last tile without a rescale; 14 nats (20 powers of
/// two) a tile raise the shift at every tile; scores that climb 3 nats a tile
/// stay under the threshold, so the fast branch runs with a shift up to
/// 9 nats below the row's maximum; falling scores leave the first tile's
/// shift and underflow later tiles. Each against the interpreter, without
/// and with a causal limit, on the host's vectors, as AVX2 code, and
/// without AVX512DQ's `vreduceps`.
#[test]
fn lazy_rescaling_follows_scores_across_tiles() {
    let case = || Case {
        what: "stepped scores",
        attrs: attrs(),
        q: vec![1, 2, 6, 64],
        k: vec![1, 2, 256, 64],
        v: vec![1, 2, 256, 64],
        mask: None,
    };
    let mut targets = vec![("host", CompileOptions::default())];
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        targets.push(("AVX2", CompileOptions { target_cpu: Some("x86-64-v3".into()), ..CompileOptions::default() }));
    }
    if std::is_x86_feature_detected!("avx512f") {
        let no_dq = CompileOptions { target_features: Some("-avx512dq".into()), ..CompileOptions::default() };
        targets.push(("AVX-512 without DQ", no_dq));
    }
    // Causal over 260 rows: blocks of 64 rows whose first tiles lie wholly
    // below the diagonal (the unedited copy) and tiles it cuts.
    let causal = || Case {
        what: "stepped scores, causal",
        attrs: AttentionAttrs { is_causal: true, ..attrs() },
        q: vec![1, 2, 260, 64],
        k: vec![1, 2, 260, 64],
        v: vec![1, 2, 260, 64],
        mask: None,
    };
    for (target, options) in &targets {
        for step in [40.0, 14.0, 3.0, -14.0] {
            for case in [case, causal] {
                let ins = tile_stepped_inputs(&case(), step);
                println!("{target}, step {step}, {}", case().what);
                // Scores of 160 nats carry f32 rounding near 1e-5 each,
                // as in `large_scores_shift_by_the_exact_tile_maximum`;
                // what the 40-nat steps check is that nothing overflows.
                let tolerance = if step > 20.0 { (1e-3, 1e-3) } else { (ATOL, RTOL) };
                check_on(case(), options, &ins, tolerance);
            }
        }
    }
}

/// The lazy tiles take f32 attention whose score edits are read by whole
/// vectors (causal limits, masks as wide as the keys, a short last tile);
/// a softcap (applied before the shift), a mask narrower than the keys
/// (read element by element) or value rows that are not whole vectors
/// take the eager steps.
#[test]
fn lazy_rescaling_where_the_scores_are_edited_by_whole_vectors() {
    let lazy_blocks = |c: Case| {
        let mut rng = StdRng::seed_from_u64(5);
        let compiled = compile(&graph(&c), &CompileOptions::default()).expect("Attention lowers");
        let spec = compiled.specialization_for(&inputs(&mut rng, &c)).expect("compiles");
        spec.ir_unoptimized.contains("lazy_rescale")
    };
    let plain = |what| Case {
        what,
        attrs: attrs(),
        q: vec![1, 2, 64, 64],
        k: vec![1, 2, 128, 64],
        v: vec![1, 2, 128, 64],
        mask: None,
    };
    let lazy = [
        plain("plain"),
        Case { attrs: AttentionAttrs { is_causal: true, ..attrs() }, ..plain("causal") },
        Case { mask: Some((DType::F32, vec![64, 128])), ..plain("float mask") },
        Case { mask: Some((DType::Bool, vec![1, 1, 64, 128])), ..plain("bool mask") },
        Case { k: vec![1, 2, 100, 64], v: vec![1, 2, 100, 64], ..plain("short last tile") },
    ];
    for c in lazy {
        let what = c.what;
        assert!(lazy_blocks(c), "{what}: does not take the lazy tiles");
    }
    let eager = [
        Case { attrs: AttentionAttrs { softcap: 5.0, ..attrs() }, ..plain("softcap") },
        Case { mask: Some((DType::F32, vec![64, 100])), ..plain("mask narrower than the keys") },
        Case { v: vec![1, 2, 128, 18], ..plain("value rows of 18") },
    ];
    for c in eager {
        let what = c.what;
        assert!(!lazy_blocks(c), "{what}: takes the lazy tiles");
    }
}

/// Sizes at the edges of the vector micro-kernels: one query, one key,
/// key counts that leave a short tile (or a tile narrower than a vector),
/// query blocks that are not a multiple of the row groups, head sizes that
/// are not a whole number of vectors, causal and padding on top; for the
/// host's vectors and for 8-lane AVX2 code (x86-64-v3) where it runs.
#[test]
fn tile_edges_of_the_vector_micro_kernels() {
    let cases = || {
        [
            ("S=1", false, [1, 1, 64, 64]),
            ("S=1 query, S_kv=5", false, [1, 5, 64, 64]),
            ("S=37, S_kv=83", false, [37, 83, 64, 64]),
            ("S=83 causal", true, [83, 83, 64, 32]),
            ("S=66 causal, d=20", true, [66, 66, 20, 20]),
            ("S=13, S_kv=3, d=24, D_v=40", false, [13, 3, 24, 40]),
            ("S=130, S_kv=129, d=3", false, [130, 129, 3, 5]),
        ]
        .map(|(what, causal, [s, kv, d, dv])| Case {
            what,
            attrs: AttentionAttrs { is_causal: causal, ..attrs() },
            q: vec![1, 3, s, d],
            k: vec![1, 3, kv, d],
            v: vec![1, 3, kv, dv],
            mask: None,
        })
    };
    for case in cases() {
        check(case);
    }
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        let avx2 = CompileOptions { target_cpu: Some("x86-64-v3".into()), ..CompileOptions::default() };
        for case in cases() {
            check_with(case, &avx2);
        }
    }
}

#[test]
fn sequences_longer_than_a_tile_and_not_a_multiple_of_it() {
    check(Case {
        what: "S=100, S_kv=150, D_v != D, scale",
        attrs: AttentionAttrs { scale: Some(0.3), ..attrs() },
        q: vec![1, 2, 100, 8],
        k: vec![1, 2, 150, 8],
        v: vec![1, 2, 150, 12],
        mask: None,
    });
}

#[test]
fn three_d_with_head_counts_matches_the_interpreter() {
    check(Case {
        what: "3-D",
        attrs: AttentionAttrs { q_num_heads: Some(4), kv_num_heads: Some(4), ..attrs() },
        q: vec![2, 70, 4 * 8],
        k: vec![2, 70, 4 * 8],
        v: vec![2, 70, 4 * 8],
        mask: None,
    });
}

#[test]
fn causal_matches_the_interpreter() {
    for (s, kv) in [(97, 97), (40, 130)] {
        check(Case {
            what: "causal",
            attrs: AttentionAttrs { is_causal: true, ..attrs() },
            q: vec![2, 2, s, 16],
            k: vec![2, 2, kv, 16],
            v: vec![2, 2, kv, 16],
            mask: None,
        });
    }
    check(Case {
        what: "causal 3-D",
        attrs: AttentionAttrs { is_causal: true, q_num_heads: Some(2), kv_num_heads: Some(2), ..attrs() },
        q: vec![1, 77, 2 * 8],
        k: vec![1, 77, 2 * 8],
        v: vec![1, 77, 2 * 8],
        mask: None,
    });
}

#[test]
fn float_masks_broadcast_and_add() {
    for (what, mask) in [
        ("float mask [S, S_kv]", vec![45, 90]),
        ("float mask [B, H, S, S_kv]", vec![2, 3, 45, 90]),
        ("float mask [B, 1, 1, S_kv]", vec![2, 1, 1, 90]),
        ("float mask shorter than the keys", vec![45, 70]),
    ] {
        check(Case {
            what,
            attrs: attrs(),
            q: vec![2, 3, 45, 16],
            k: vec![2, 3, 90, 16],
            v: vec![2, 3, 90, 16],
            mask: Some((DType::F32, mask)),
        });
    }
}

#[test]
fn bool_masks_mask_out_false_keys() {
    for (what, mask, causal) in [
        ("bool mask [B, 1, S, S_kv]", vec![2, 1, 70, 70], false),
        ("bool mask [1, S_kv] with causal", vec![1, 70], true),
        ("bool mask shorter than the keys", vec![1, 70, 50], false),
    ] {
        check(Case {
            what,
            attrs: AttentionAttrs { is_causal: causal, ..attrs() },
            q: vec![2, 2, 70, 8],
            k: vec![2, 2, 70, 8],
            v: vec![2, 2, 70, 8],
            mask: Some((DType::Bool, mask)),
        });
    }
}

/// With as many keys as whole tiles (128), masks as wide as the keys are
/// read by whole vectors: f32 added, bool selecting, broadcast over batch,
/// heads or rows, with causal and softcap on top.
#[test]
fn masks_on_whole_tiles_take_the_vector_path() {
    for (what, dtype, mask, causal, softcap) in [
        ("float mask [B, 1, 1, S_kv], BERT's", DType::F32, vec![2, 1, 1, 128], false, 0.0),
        ("float mask [B, H, S, S_kv]", DType::F32, vec![2, 3, 40, 128], false, 0.0),
        ("float mask [S, S_kv] with causal and softcap", DType::F32, vec![40, 128], true, 0.5),
        ("bool mask [B, 1, S, S_kv]", DType::Bool, vec![2, 1, 40, 128], false, 0.0),
        ("bool mask [1, S_kv] with causal", DType::Bool, vec![1, 128], true, 0.0),
    ] {
        check(Case {
            what,
            attrs: AttentionAttrs { is_causal: causal, softcap, ..attrs() },
            q: vec![2, 3, 40, 16],
            k: vec![2, 3, 128, 16],
            v: vec![2, 3, 128, 16],
            mask: Some((dtype, mask)),
        });
    }
}

#[test]
fn softcap_bounds_the_scores() {
    check(Case {
        what: "softcap with a mask",
        attrs: AttentionAttrs { softcap: 0.5, scale: Some(2.0), ..attrs() },
        q: vec![1, 2, 40, 16],
        k: vec![1, 2, 70, 16],
        v: vec![1, 2, 70, 16],
        mask: Some((DType::F32, vec![40, 70])),
    });
}

#[test]
fn grouped_query_heads_share_key_value_heads() {
    check(Case {
        what: "GQA 4-D",
        attrs: AttentionAttrs { is_causal: true, ..attrs() },
        q: vec![1, 6, 50, 16],
        k: vec![1, 2, 50, 16],
        v: vec![1, 2, 50, 16],
        mask: None,
    });
    check(Case {
        what: "GQA 3-D with a mask",
        attrs: AttentionAttrs { q_num_heads: Some(4), kv_num_heads: Some(1), ..attrs() },
        q: vec![2, 33, 4 * 8],
        k: vec![2, 65, 8],
        v: vec![2, 65, 8],
        mask: Some((DType::F32, vec![33, 65])),
    });
}

/// `nonpad_kv_seqlen` masks each batch's padding keys; f16 tensors are
/// computed in f32 (compared at f16 precision).
#[test]
fn padding_lengths_and_f16() {
    let mut rng = StdRng::seed_from_u64(13);
    let mut g = Graph::new("nonpad");
    let mut ins = Vec::new();
    let mut data = Vec::new();
    for name in ["q", "k", "v"] {
        ins.push(Some(g.add_input(name, TensorType::fixed(DType::F32, &[3, 2, 20, 8])).unwrap()));
        data.push((name.to_string(), random(&mut rng, &[3, 2, 20, 8], -1.0, 1.0)));
    }
    ins.extend([None, None, None]);
    ins.push(Some(g.add_input("lens", TensorType::fixed(DType::I64, &[3])).unwrap()));
    data.push(("lens".to_string(), Tensor::from_i64s(DType::I64, &[3], &[20, 7, 1])));
    let id = g.add_node("attn", Op::Attention(attrs()), ins, &["y"]).unwrap();
    g.add_output(g.node(id).output(0).unwrap());
    kiln_ir::infer_types(&mut g).unwrap();
    let got = compile(&g, &CompileOptions::default()).unwrap().run(&data).unwrap();
    let want = kiln_ir::interp::run(&g, &data).unwrap();
    for (i, (u, w)) in got[0].1.to_f64s().iter().zip(want[0].1.to_f64s()).enumerate() {
        assert!((u - w).abs() <= ATOL + RTOL * w.abs(), "nonpad: element {i} is {u}, interpreter says {w}");
    }

    let mut g = Graph::new("f16");
    let mut ins = Vec::new();
    let mut data = Vec::new();
    for name in ["q", "k", "v"] {
        ins.push(Some(g.add_input(name, TensorType::fixed(DType::F16, &[1, 2, 70, 8])).unwrap()));
        let x = random(&mut rng, &[1, 2, 70, 8], -1.0, 1.0).to_f64s();
        data.push((name.to_string(), Tensor::from_f64s(DType::F16, &[1, 2, 70, 8], &x)));
    }
    let a = AttentionAttrs { is_causal: true, ..attrs() };
    let id = g.add_node("attn", Op::Attention(a), ins, &["y"]).unwrap();
    g.add_output(g.node(id).output(0).unwrap());
    kiln_ir::infer_types(&mut g).unwrap();
    let got = compile(&g, &CompileOptions::default()).unwrap().run(&data).unwrap();
    let want = kiln_ir::interp::run(&g, &data).unwrap();
    assert_eq!(got[0].1.dtype(), DType::F16);
    for (i, (u, w)) in got[0].1.to_f64s().iter().zip(want[0].1.to_f64s()).enumerate() {
        assert!((u - w).abs() <= 1e-3 + 2e-3 * w.abs(), "f16: element {i} is {u}, interpreter says {w}");
    }
}

/// f16 and bf16 Q, K and V with 64-wide heads take the vector tiles (the
/// value tile widened as it is copied), plain and causal, and match the
/// interpreter within the narrow types' rounding.
#[test]
fn narrow_floats_take_the_vector_tiles() {
    for dtype in [DType::F16, DType::BF16] {
        for causal in [false, true] {
            let shape = [1, 2, 100, 64];
            let mut rng = StdRng::seed_from_u64(23);
            let mut g = Graph::new("narrow");
            let mut ins = Vec::new();
            let mut data = Vec::new();
            for name in ["q", "k", "v"] {
                ins.push(Some(g.add_input(name, TensorType::fixed(dtype, &shape)).unwrap()));
                let x = random(&mut rng, &shape, -1.0, 1.0).to_f64s();
                data.push((name.to_string(), Tensor::from_f64s(dtype, &shape, &x)));
            }
            let id = g.add_node("attn", Op::Attention(AttentionAttrs { is_causal: causal, ..attrs() }), ins, &["y"]);
            g.add_output(g.node(id.unwrap()).output(0).unwrap());
            kiln_ir::infer_types(&mut g).unwrap();
            let compiled = compile(&g, &CompileOptions::default()).unwrap();
            let spec = compiled.specialization_for(&data).expect("compiles");
            assert!(spec.ir_unoptimized.contains("lazy_rescale"), "{dtype} causal={causal}: not on the vector tiles");
            let got = compiled.run(&data).unwrap();
            let want = kiln_ir::interp::run(&g, &data).unwrap();
            assert_eq!(got[0].1.dtype(), dtype);
            // bf16 keeps 8 bits of mantissa: its outputs round to 2^-9.
            let (atol, rtol) = if dtype == DType::F16 { (1e-3, 2e-3) } else { (4e-3, 8e-3) };
            for (i, (u, w)) in got[0].1.to_f64s().iter().zip(want[0].1.to_f64s()).enumerate() {
                assert!(
                    (u - w).abs() <= atol + rtol * w.abs(),
                    "{dtype} causal={causal}: element {i} is {u}, interpreter says {w}"
                );
            }
        }
    }
}

/// The optional scores output in each mode, with a causal mask, a float
/// mask and softcap all in play (so the modes differ).
#[test]
fn qk_matmul_output_in_every_mode() {
    for mode in 0..4 {
        let mut rng = StdRng::seed_from_u64(9);
        let a = AttentionAttrs { is_causal: true, qk_matmul_output_mode: mode, softcap: 2.0, ..attrs() };
        let mut g = Graph::new("qk");
        let mut ins = Vec::new();
        let mut data = Vec::new();
        for (name, shape) in
            [("q", vec![1, 2, 40, 8]), ("k", vec![1, 2, 70, 8]), ("v", vec![1, 2, 70, 8]), ("mask", vec![40, 70])]
        {
            ins.push(Some(g.add_input(name, TensorType::fixed(DType::F32, &shape)).unwrap()));
            data.push((name.to_string(), random(&mut rng, &shape, -1.0, 1.0)));
        }
        let id = g.add_node("attn", Op::Attention(a), ins, &["y", "", "", "qk"]).unwrap();
        g.add_output(g.node(id).output(0).unwrap());
        g.add_output(g.node(id).output(3).unwrap());
        kiln_ir::infer_types(&mut g).unwrap();
        let compiled = compile(&g, &CompileOptions::default()).unwrap_or_else(|e| panic!("mode {mode}: compile: {e}"));
        let got = compiled.run(&data).unwrap_or_else(|e| panic!("mode {mode}: run: {e}"));
        let want = kiln_ir::interp::run(&g, &data).unwrap_or_else(|e| panic!("mode {mode}: interpreter: {e}"));
        for ((name, x), (_, y)) in got.iter().zip(&want) {
            assert_eq!(x.shape(), y.shape(), "mode {mode}/{name}: shape");
            for (i, (u, w)) in x.to_f64s().iter().zip(y.to_f64s()).enumerate() {
                let same = u == &w || (u - w).abs() <= ATOL + RTOL * w.abs();
                assert!(same, "mode {mode}/{name}: element {i} is {u}, interpreter says {w}");
            }
        }
    }
}

/// Past caches are prepended to the new keys and values; the present
/// outputs hold the concatenation, and a causal query `i` sees keys up to
/// `i + past`.
#[test]
fn past_caches_are_prepended_and_returned_as_present() {
    for (what, three_d, causal, mask) in [
        ("past 4-D", false, false, None),
        ("past 4-D causal, mask", false, true, Some(vec![5, 12])),
        ("past 3-D GQA causal", true, true, None),
    ] {
        let mut rng = StdRng::seed_from_u64(5);
        let (b, hq, hkv, s, p, d) = (2, 4, 2, 5, 7, 8);
        let a = AttentionAttrs {
            is_causal: causal,
            q_num_heads: three_d.then_some(hq as i64),
            kv_num_heads: three_d.then_some(hkv as i64),
            ..attrs()
        };
        let (qs, ks) =
            if three_d { (vec![b, s, hq * d], vec![b, s, hkv * d]) } else { (vec![b, hq, s, d], vec![b, hkv, s, d]) };
        let mut g = Graph::new("past");
        let mut ins = Vec::new();
        let mut data = Vec::new();
        for (name, shape) in [("q", &qs), ("k", &ks), ("v", &ks)] {
            ins.push(Some(g.add_input(name, TensorType::fixed(DType::F32, shape)).unwrap()));
            data.push((name.to_string(), random(&mut rng, shape, -1.0, 1.0)));
        }
        match &mask {
            Some(m) => {
                ins.push(Some(g.add_input("mask", TensorType::fixed(DType::F32, m)).unwrap()));
                data.push(("mask".to_string(), random(&mut rng, m, -1.0, 1.0)));
            }
            None => ins.push(None),
        }
        for name in ["past_key", "past_value"] {
            ins.push(Some(g.add_input(name, TensorType::fixed(DType::F32, &[b, hkv, p, d])).unwrap()));
            data.push((name.to_string(), random(&mut rng, &[b, hkv, p, d], -1.0, 1.0)));
        }
        let id = g.add_node("attn", Op::Attention(a), ins, &["y", "present_key", "present_value"]).unwrap();
        for slot in 0..3 {
            g.add_output(g.node(id).output(slot).unwrap());
        }
        kiln_ir::infer_types(&mut g).unwrap_or_else(|e| panic!("{what}: inference: {e}"));
        let compiled = compile(&g, &CompileOptions::default()).unwrap_or_else(|e| panic!("{what}: compile: {e}"));
        let got = compiled.run(&data).unwrap_or_else(|e| panic!("{what}: run: {e}"));
        let want = kiln_ir::interp::run(&g, &data).unwrap_or_else(|e| panic!("{what}: interpreter: {e}"));
        assert_eq!(got.len(), 3);
        for ((name, x), (_, y)) in got.iter().zip(&want) {
            assert_eq!(x.shape(), y.shape(), "{what}/{name}: shape");
            for (i, (u, w)) in x.to_f64s().iter().zip(y.to_f64s()).enumerate() {
                assert!(
                    (u - w).abs() <= ATOL + RTOL * w.abs(),
                    "{what}/{name}: element {i} is {u}, interpreter says {w}"
                );
            }
        }
    }
}

/// The dot products, exponentials and accumulator updates are unit-stride
/// loops, which LLVM's vectorizer widens: the optimized kernel computes on
/// vectors of floats.
#[test]
fn the_kernel_is_vectorized() {
    let c = Case {
        what: "vectorized",
        attrs: AttentionAttrs { is_causal: true, ..attrs() },
        q: vec![1, 2, 128, 64],
        k: vec![1, 2, 128, 64],
        v: vec![1, 2, 128, 64],
        mask: None,
    };
    let mut rng = StdRng::seed_from_u64(1);
    let compiled = compile(&graph(&c), &CompileOptions::default()).expect("Attention lowers");
    let spec = compiled.specialization_for(&inputs(&mut rng, &c)).expect("compiles");
    // The module holds only this kernel (inlined into the entry after -O3).
    let ir = &spec.ir_optimized;
    assert!(ir.contains("x float>"), "no vector type in the optimized Attention module:\n{ir}");
}

/// The scores of S = 2048 would take S² · 4 = 16 MiB; the kernel's scratch
/// (the whole arena, since Q, K, V and Y are graph inputs and outputs)
/// depends only on the tile sizes and the head size. (Short sequences take
/// shorter query blocks, so that there are blocks for every thread; from
/// the tallest block on, the scratch stays the same.)
#[test]
fn scratch_is_independent_of_the_sequence_length() {
    let s = 2048;
    let case = |s: usize| Case {
        what: "scratch",
        attrs: AttentionAttrs { is_causal: true, ..attrs() },
        q: vec![1, 1, s, 64],
        k: vec![1, 1, s, 64],
        v: vec![1, 1, s, 64],
        mask: None,
    };
    let mut rng = StdRng::seed_from_u64(3);
    let arena = |s: usize, rng: &mut StdRng| {
        let c = case(s);
        let compiled = compile(&graph(&c), &CompileOptions::default()).expect("Attention lowers");
        compiled.specialization_for(&inputs(rng, &c)).expect("compiles").arena_bytes
    };
    let big = arena(s, &mut rng);
    let scores = s * s * 4;
    println!("S = {s}: scratch {big} bytes, scores would be {scores} bytes");
    assert!(big > 0, "the kernel plans its scratch in the arena");
    assert!(big * 100 < scores, "scratch {big} bytes is not far below the {scores} bytes of the scores");
    let tallest = arena(16384, &mut rng);
    assert_eq!(arena(8192, &mut rng), tallest, "the scratch grows with the sequence length");
    for short in [256, 2048, 4096] {
        assert!(arena(short, &mut rng) <= tallest, "S = {short} takes more scratch than S = 16384");
    }
    assert!(big <= tallest);
}

#[test]
fn unsupported_variants_name_node_and_op() {
    let expect_unsupported = |g: &Graph, about: &str| match compile(g, &CompileOptions::default()) {
        Err(BackendError::Unsupported { node, op, reason }) => {
            assert_eq!((node.as_str(), op.as_str()), ("attn", "Attention"));
            assert!(reason.contains(about), "reason `{reason}` does not mention {about}");
        }
        Err(e) => panic!("{about}: expected Unsupported, got {e}"),
        Ok(_) => panic!("{about}: expected Unsupported, but it compiled"),
    };

    // A past key/value cache whose present outputs are not asked for.
    let mut g = Graph::new("past");
    let mut ins: Vec<_> = ["q", "k", "v"]
        .iter()
        .map(|n| Some(g.add_input(*n, TensorType::fixed(DType::F32, &[1, 2, 8, 4])).unwrap()))
        .collect();
    ins.push(None);
    for n in ["past_key", "past_value"] {
        ins.push(Some(g.add_input(n, TensorType::fixed(DType::F32, &[1, 2, 3, 4])).unwrap()));
    }
    let id = g.add_node("attn", Op::Attention(attrs()), ins, &["y"]).unwrap();
    g.add_output(g.node(id).output(0).unwrap());
    kiln_ir::infer_types(&mut g).unwrap();
    expect_unsupported(&g, "without the present");

    // f64 inputs.
    let mut g = Graph::new("f64");
    let ins: Vec<_> = ["q", "k", "v"]
        .iter()
        .map(|n| Some(g.add_input(*n, TensorType::fixed(DType::F64, &[1, 2, 8, 4])).unwrap()))
        .collect();
    let id = g.add_node("attn", Op::Attention(attrs()), ins, &["y"]).unwrap();
    g.add_output(g.node(id).output(0).unwrap());
    kiln_ir::infer_types(&mut g).unwrap();
    expect_unsupported(&g, "f64");
}
