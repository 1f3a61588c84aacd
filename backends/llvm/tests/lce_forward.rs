//! The CPU backend's LinearCrossEntropy forward kernel (a graph op) on
//! sizes with several row blocks and vocabulary tiles: it matches the
//! interpreter, gives bitwise the same loss on 1, 2 and 3 threads (rows are
//! split across threads, the loss is summed in a fixed order), rejects a
//! bad label in any thread's rows, and keeps its scratch at a few tiles.

use kiln_backend_llvm::{compile, CompileOptions};
use kiln_ir::dtype::DType;
use kiln_ir::graph::Graph;
use kiln_ir::op::{LossReduction, Op};
use kiln_ir::tensor::Tensor;
use kiln_ir::types::TensorType;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn random(rng: &mut StdRng, shape: &[usize], lo: f64, hi: f64) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
    Tensor::from_f64s(DType::F32, shape, &v)
}

struct Lce {
    graph: Graph,
    feed: Vec<(String, Tensor)>,
}

/// An LM head + loss graph: `n` rows, width `d`, `v` classes; every
/// seventh label is the ignore_index -100.
fn lce(n: usize, d: usize, v: usize, reduction: LossReduction, transpose_weight: bool, seed: u64) -> Lce {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut g = Graph::new("lce");
    let h = g.add_input("h", TensorType::fixed(DType::F32, &[n, d])).unwrap();
    let wshape = if transpose_weight { [v, d] } else { [d, v] };
    let w = g.add_input("w", TensorType::fixed(DType::F32, &wshape)).unwrap();
    let y = g.add_input("y", TensorType::fixed(DType::I64, &[n])).unwrap();
    let b = g.add_input("b", TensorType::fixed(DType::F32, &[v])).unwrap();
    let labels: Vec<i64> = (0..n).map(|i| if i % 7 == 3 { -100 } else { rng.random_range(0..v as i64) }).collect();
    let feed = vec![
        ("h".to_string(), random(&mut rng, &[n, d], -1.0, 1.0)),
        ("w".to_string(), random(&mut rng, &wshape, -0.2, 0.2)),
        ("y".to_string(), Tensor::from_i64s(DType::I64, &[n], &labels)),
        ("b".to_string(), random(&mut rng, &[v], -0.5, 0.5)),
    ];
    let op = Op::LinearCrossEntropy {
        reduction,
        ignore_index: Some(-100),
        label_smoothing: 0.1,
        z_loss: 1e-4,
        transpose_weight,
        chunk_size: 4096,
    };
    let id = g.add_node("lce", op, vec![Some(h), Some(w), Some(y), Some(b)], &["loss"]).unwrap();
    g.add_output(g.node(id).output(0).unwrap());
    kiln_ir::infer_types(&mut g).unwrap();
    Lce { graph: g, feed }
}

#[test]
fn rows_split_across_threads_give_the_same_loss() {
    // 300 rows are four blocks of 96 (the last short), 700 classes three
    // tiles of 256 (the last short), d = 70 two panels and a scalar rest.
    for (reduction, transpose) in
        [(LossReduction::Mean, false), (LossReduction::None, true), (LossReduction::Sum, false)]
    {
        let Lce { graph, feed } = lce(300, 70, 700, reduction, transpose, 3);
        let want = kiln_ir::interp::run(&graph, &feed).unwrap();
        let compiled = compile(&graph, &CompileOptions::default()).unwrap();
        let ir = compiled.specialization_for(&feed).unwrap().ir_unoptimized.clone();
        assert!(ir.contains("__kmpc_fork_call"), "{reduction:?}: the row groups can fork");
        let mut first: Option<Vec<f64>> = None;
        for threads in [1, 2, 3] {
            compiled.set_threads(Some(threads));
            let got = compiled.run(&feed).unwrap();
            let (got, want) = (got[0].1.to_f64s(), want[0].1.to_f64s());
            for (k, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!((a - b).abs() <= 1e-5 + 1e-4 * b.abs(), "{reduction:?} [{k}] on {threads}: {a} vs {b}");
            }
            match &first {
                None => first = Some(got),
                Some(one) => {
                    let same = one.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{reduction:?}: {threads} threads differ from 1");
                }
            }
        }
    }
}

#[test]
fn a_bad_label_in_any_rows_is_an_error() {
    let Lce { graph, mut feed } = lce(300, 16, 100, LossReduction::Mean, true, 4);
    let compiled = compile(&graph, &CompileOptions { threads: Some(2), ..Default::default() }).unwrap();
    for at in [0, 150, 299] {
        let mut labels = feed[2].1.to_i64s();
        labels[at] = 100;
        feed[2].1 = Tensor::from_i64s(DType::I64, &[300], &labels);
        let e = compiled.run(&feed).expect_err("label out of range");
        assert!(e.to_string().contains("label") && e.to_string().contains("lce"), "{e}");
        labels[at] = 1;
        feed[2].1 = Tensor::from_i64s(DType::I64, &[300], &labels);
    }
    compiled.run(&feed).expect("all labels in range again");
}

#[test]
fn scratch_is_a_few_tiles_per_thread_slot_not_n_by_v() {
    // 1000 rows × 5000 classes would be 20 MB of logits; the kernel keeps
    // 16 bytes per row and, per thread slot, a packed 256-entry head tile
    // and a 96 × 256 logit tile.
    let Lce { graph, feed } = lce(1000, 32, 5000, LossReduction::Mean, true, 5);
    let compiled = compile(&graph, &CompileOptions::default()).unwrap();
    let spec = compiled.specialization_for(&feed).unwrap();
    let slots = 1000usize.div_ceil(96);
    let bound = 16 * 1024 + slots * 4 * 256 * (32 + 96) + 1024;
    assert!(spec.arena_bytes <= bound, "arena {} B over {bound} B", spec.arena_bytes);
    assert!(spec.arena_bytes < 1000 * 5000 * 4 / 4);
}
