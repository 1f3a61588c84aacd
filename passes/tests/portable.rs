//! `to_portable`: kiln-domain losses lowered into standard ONNX ops compute
//! what the kiln ops compute, in kiln's interpreter and in onnxruntime, for
//! every combination of their attributes.

mod common;

use common::rel_error;
use kiln_ir::dtype::DType;
use kiln_ir::graph::Graph;
use kiln_ir::op::{AttentionAttrs, LossReduction, Op, KILN_DOMAIN};
use kiln_ir::tensor::Tensor;
use kiln_ir::types::TensorType;
use kiln_passes::portable::to_portable;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::Path;

/// A graph with one kiln op, its inputs, and a name saying which attributes.
struct Case {
    name: String,
    graph: Graph,
    inputs: Vec<(String, Tensor)>,
}

/// The loss attributes one case uses.
#[derive(Clone, Copy, Debug)]
struct Attrs {
    reduction: LossReduction,
    ignore_index: Option<i64>,
    weighted: bool,
    label_smoothing: f32,
    z_loss: f32,
}

fn every_attrs() -> Vec<Attrs> {
    let mut out = Vec::new();
    for reduction in [LossReduction::None, LossReduction::Sum, LossReduction::Mean] {
        // -100 is PyTorch's default; 1 is a real class, ignored wherever it occurs.
        for ignore_index in [None, Some(-100), Some(1)] {
            for weighted in [false, true] {
                for label_smoothing in [0.0, 0.1] {
                    for z_loss in [0.0, 1e-2] {
                        out.push(Attrs {
                            reduction,
                            ignore_index,
                            weighted,
                            label_smoothing,
                            z_loss,
                        });
                    }
                }
            }
        }
    }
    out
}

fn uniform(rng: &mut StdRng, shape: &[usize], lo: f64, hi: f64) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
    Tensor::from_f64s(DType::F32, shape, &v)
}

/// Labels in `[0, classes)`, every third one the ignore index when there is one.
fn labels(rng: &mut StdRng, shape: &[usize], classes: i64, ignore: Option<i64>) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<i64> = (0..n)
        .map(|k| match ignore {
            Some(i) if k % 3 == 1 => i,
            _ => rng.random_range(0..classes),
        })
        .collect();
    Tensor::from_i64s(DType::I64, shape, &v)
}

fn cross_entropy_case(a: Attrs, spatial: bool, log_prob: bool, seed: u64) -> Case {
    let (n, c, d) = (4usize, 5usize, 3usize);
    let mut rng = StdRng::seed_from_u64(seed);
    let (logit_shape, label_shape) = if spatial {
        (vec![n, c, d], vec![n, d])
    } else {
        (vec![n, c], vec![n])
    };
    let mut g = Graph::new("ce");
    g.opset_imports.insert(String::new(), 23);
    g.opset_imports.insert(KILN_DOMAIN.to_string(), 1);
    let x = g
        .add_input("logits", TensorType::fixed(DType::F32, &logit_shape))
        .unwrap();
    let y = g
        .add_input("labels", TensorType::fixed(DType::I64, &label_shape))
        .unwrap();
    let w = a.weighted.then(|| {
        g.add_initializer("class_weight", uniform(&mut rng, &[c], 0.5, 1.5))
            .unwrap()
    });
    let op = Op::CrossEntropy {
        reduction: a.reduction,
        ignore_index: a.ignore_index,
        label_smoothing: a.label_smoothing,
        z_loss: a.z_loss,
    };
    let outputs: &[&str] = if log_prob {
        &["loss", "log_prob"]
    } else {
        &["loss"]
    };
    let node = g
        .add_node("loss_node", op, vec![Some(x), Some(y), w], outputs)
        .unwrap();
    for k in 0..outputs.len() {
        g.add_output(g.node(node).output(k).unwrap());
    }
    kiln_ir::infer_types(&mut g).unwrap();
    let inputs = vec![
        (
            "logits".to_string(),
            uniform(&mut rng, &logit_shape, -3.0, 3.0),
        ),
        (
            "labels".to_string(),
            labels(&mut rng, &label_shape, c as i64, a.ignore_index),
        ),
    ];
    let name = format!("ce_{a:?}_spatial{spatial}_logprob{log_prob}");
    Case {
        name,
        graph: g,
        inputs,
    }
}

fn linear_cross_entropy_case(a: Attrs, transpose_weight: bool, bias: bool, seed: u64) -> Case {
    let (n, d, v) = (5usize, 4usize, 7usize);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut g = Graph::new("lce");
    g.opset_imports.insert(String::new(), 23);
    g.opset_imports.insert(KILN_DOMAIN.to_string(), 1);
    let h = g
        .add_input("hidden", TensorType::fixed(DType::F32, &[n, d]))
        .unwrap();
    let y = g
        .add_input("labels", TensorType::fixed(DType::I64, &[n]))
        .unwrap();
    let head_shape = if transpose_weight { [v, d] } else { [d, v] };
    let head = g
        .add_initializer("head", uniform(&mut rng, &head_shape, -1.0, 1.0))
        .unwrap();
    let b = bias.then(|| {
        g.add_initializer("head_bias", uniform(&mut rng, &[v], -0.5, 0.5))
            .unwrap()
    });
    let w = a.weighted.then(|| {
        g.add_initializer("class_weight", uniform(&mut rng, &[v], 0.5, 1.5))
            .unwrap()
    });
    let op = Op::LinearCrossEntropy {
        reduction: a.reduction,
        ignore_index: a.ignore_index,
        label_smoothing: a.label_smoothing,
        z_loss: a.z_loss,
        transpose_weight,
        // Smaller than the vocabulary, so the kiln op really works in chunks.
        chunk_size: 3,
    };
    let node = g
        .add_node(
            "lce_node",
            op,
            vec![Some(h), Some(head), Some(y), b, w],
            &["loss"],
        )
        .unwrap();
    g.add_output(g.node(node).output(0).unwrap());
    kiln_ir::infer_types(&mut g).unwrap();
    let inputs = vec![
        ("hidden".to_string(), uniform(&mut rng, &[n, d], -2.0, 2.0)),
        (
            "labels".to_string(),
            labels(&mut rng, &[n], v as i64, a.ignore_index),
        ),
    ];
    let name = format!("lce_{a:?}_transposed{transpose_weight}_bias{bias}");
    Case {
        name,
        graph: g,
        inputs,
    }
}

fn all_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut seed = 0;
    for a in every_attrs() {
        for spatial in [false, true] {
            for log_prob in [false, true] {
                seed += 1;
                cases.push(cross_entropy_case(a, spatial, log_prob, seed));
            }
        }
        for transpose_weight in [true, false] {
            for bias in [false, true] {
                seed += 1;
                cases.push(linear_cross_entropy_case(a, transpose_weight, bias, seed));
            }
        }
    }
    cases
}

fn run(g: &Graph, inputs: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    kiln_ir::interp::run(g, inputs)
        .unwrap_or_else(|e| panic!("interpreter failed on `{}`: {e}", g.name))
}

fn has_kiln_ops(g: &Graph) -> bool {
    g.node_ids()
        .into_iter()
        .any(|id| g.node(id).op.domain() == KILN_DOMAIN)
}

#[test]
fn portable_losses_match_the_kiln_ops_in_the_interpreter() {
    let cases = all_cases();
    assert_eq!(cases.len(), 72 * 8);
    let mut worst = 0.0f64;
    for case in &cases {
        let portable = to_portable(&case.graph).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert!(!has_kiln_ops(&portable), "{}: kiln ops remain", case.name);
        assert!(
            !portable.opset_imports.contains_key(KILN_DOMAIN),
            "{}: kiln opset kept",
            case.name
        );
        let want = run(&case.graph, &case.inputs);
        let got = run(&portable, &case.inputs);
        assert_eq!(want.len(), got.len(), "{}", case.name);
        for ((wn, wt), (gn, gt)) in want.iter().zip(&got) {
            assert_eq!(wn, gn, "{}: output names differ", case.name);
            let e = rel_error(gt, wt);
            assert!(
                e <= 1e-5,
                "{}: output `{wn}` differs by {e} (relative)",
                case.name
            );
            worst = worst.max(e);
        }
    }
    println!("{} cases, worst relative error {worst:.2e}", cases.len());
}

#[test]
fn portable_losses_run_in_onnxruntime() {
    let Some(python) = kiln_test_support::python() else {
        println!("SKIPPED: no Python with onnxruntime (set KILN_PYTHON)");
        return;
    };
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("portable-cases");
    let _ = std::fs::remove_dir_all(&root);
    let cases = all_cases();
    for (k, case) in cases.iter().enumerate() {
        let dir = root.join(format!("case{k:04}"));
        std::fs::create_dir_all(&dir).unwrap();
        let portable = to_portable(&case.graph).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        kiln_ir::onnx::export::save_model(&portable, &dir.join("model.onnx")).unwrap();
        for (i, (name, t)) in case.inputs.iter().enumerate() {
            kiln_ir::onnx::export::write_tensor_pb(&dir.join(format!("input_{i}.pb")), name, t)
                .unwrap();
        }
    }
    let script = kiln_test_support::repo_root().join("tests/support/ort_run_cases.py");
    kiln_test_support::run_command(
        std::process::Command::new(&python).arg(&script).arg(&root),
        "onnxruntime on the portable losses",
    );
    let mut worst = 0.0f64;
    for (k, case) in cases.iter().enumerate() {
        let dir = root.join(format!("case{k:04}"));
        let want = run(&case.graph, &case.inputs);
        for (i, (name, wt)) in want.iter().enumerate() {
            let got = kiln_ir::npy::read_npy(&dir.join(format!("ort_output_{i}.npy"))).unwrap();
            let e = rel_error(&got, wt);
            assert!(
                e <= 1e-5,
                "{}: onnxruntime's `{name}` differs by {e} (relative)",
                case.name
            );
            worst = worst.max(e);
        }
    }
    println!(
        "{} cases in onnxruntime, worst relative error {worst:.2e}",
        cases.len()
    );
}

#[test]
fn attention_and_onnx_ops_stay_as_they_are() {
    let mut g = Graph::new("attn");
    g.opset_imports.insert(String::new(), 23);
    let ty = TensorType::fixed(DType::F32, &[1, 2, 4, 8]);
    let q = g.add_input("q", ty.clone()).unwrap();
    let k = g.add_input("k", ty.clone()).unwrap();
    let v = g.add_input("v", ty).unwrap();
    let attrs = AttentionAttrs {
        is_causal: true,
        q_num_heads: None,
        kv_num_heads: None,
        qk_matmul_output_mode: 0,
        scale: None,
        softcap: 0.0,
        softmax_precision: None,
    };
    let n = g
        .add_node(
            "attention",
            Op::Attention(attrs),
            vec![Some(q), Some(k), Some(v)],
            &["y"],
        )
        .unwrap();
    g.add_output(g.node(n).output(0).unwrap());
    kiln_ir::infer_types(&mut g).unwrap();
    let p = to_portable(&g).unwrap();
    assert_eq!(kiln_ir::print_graph(&p), kiln_ir::print_graph(&g));
}

/// Q, K, V `[2, 2, 4, 8]` and a boolean padding mask `[2, 1, 1, 4]` that
/// hides the last key of the second batch, with random values.
fn padded_attention() -> (Graph, Vec<(String, Tensor)>) {
    let mut g = Graph::new("padded_attention");
    g.opset_imports.insert(String::new(), 23);
    let ty = TensorType::fixed(DType::F32, &[2, 2, 4, 8]);
    let q = g.add_input("q", ty.clone()).unwrap();
    let k = g.add_input("k", ty.clone()).unwrap();
    let v = g.add_input("v", ty).unwrap();
    let mask = g
        .add_input("mask", TensorType::fixed(DType::Bool, &[2, 1, 1, 4]))
        .unwrap();
    let attrs = AttentionAttrs {
        is_causal: false,
        q_num_heads: None,
        kv_num_heads: None,
        qk_matmul_output_mode: 0,
        scale: None,
        softcap: 0.0,
        softmax_precision: None,
    };
    let n = g
        .add_node(
            "attention",
            Op::Attention(attrs),
            vec![Some(q), Some(k), Some(v), Some(mask)],
            &["y"],
        )
        .unwrap();
    g.add_output(g.node(n).output(0).unwrap());
    kiln_ir::infer_types(&mut g).unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let inputs = vec![
        ("q".to_string(), uniform(&mut rng, &[2, 2, 4, 8], -1.0, 1.0)),
        ("k".to_string(), uniform(&mut rng, &[2, 2, 4, 8], -1.0, 1.0)),
        ("v".to_string(), uniform(&mut rng, &[2, 2, 4, 8], -1.0, 1.0)),
        (
            "mask".to_string(),
            Tensor::from_i64s(DType::Bool, &[2, 1, 1, 4], &[1, 1, 1, 1, 1, 1, 1, 0]),
        ),
    ];
    (g, inputs)
}

#[test]
fn padding_masks_are_expanded_to_the_query_length_for_onnxruntime() {
    let (g, inputs) = padded_attention();
    let p = to_portable(&g).unwrap();
    let expands = p
        .node_ids()
        .into_iter()
        .filter(|&id| matches!(p.node(id).op, Op::Expand))
        .count();
    assert_eq!(expands, 1, "{}", kiln_ir::print_graph(&p));
    let attention = p.node(p.node_by_name("attention").unwrap());
    let mask = attention.input(3).unwrap();
    assert_eq!(
        p.ty(mask).unwrap(),
        &TensorType::fixed(DType::Bool, &[2, 1, 4, 4])
    );
    let want = run(&g, &inputs);
    let got = run(&p, &inputs);
    assert!(rel_error(&got[0].1, &want[0].1) <= 1e-6);

    let Some(python) = kiln_test_support::python() else {
        println!("SKIPPED (onnxruntime part): no Python with onnxruntime (set KILN_PYTHON)");
        return;
    };
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("portable-attention");
    let _ = std::fs::remove_dir_all(&root);
    let dir = root.join("case");
    std::fs::create_dir_all(&dir).unwrap();
    kiln_ir::onnx::export::save_model(&p, &dir.join("model.onnx")).unwrap();
    for (i, (name, t)) in inputs.iter().enumerate() {
        kiln_ir::onnx::export::write_tensor_pb(&dir.join(format!("input_{i}.pb")), name, t)
            .unwrap();
    }
    let script = kiln_test_support::repo_root().join("tests/support/ort_run_cases.py");
    kiln_test_support::run_command(
        std::process::Command::new(&python).arg(&script).arg(&root),
        "onnxruntime on the expanded mask",
    );
    let ort = kiln_ir::npy::read_npy(&dir.join("ort_output_0.npy")).unwrap();
    let e = rel_error(&ort, &want[0].1);
    assert!(
        e <= 1e-5,
        "onnxruntime's attention differs by {e} (relative)"
    );
}
