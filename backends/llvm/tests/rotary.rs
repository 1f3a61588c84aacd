//! ONNX `RotaryEmbedding` on the CPU backend against kiln's interpreter on
//! random inputs (rtol 1e-4, atol 1e-5): 4-D and 3-D inputs, split halves
//! and interleaved pairs, a partial `rotary_embedding_dim`, with and
//! without `position_ids`; and the error for a position outside the caches.

use kiln_backend_llvm::{compile, BackendError, CompileOptions};
use kiln_ir::dtype::DType;
use kiln_ir::graph::Graph;
use kiln_ir::op::Op;
use kiln_ir::tensor::Tensor;
use kiln_ir::types::TensorType;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn random(rng: &mut StdRng, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    Tensor::from_f64s(DType::F32, shape, &v)
}

struct Case {
    what: &'static str,
    x: Vec<usize>,
    cache: Vec<usize>,
    positions: Option<Vec<i64>>,
    interleaved: bool,
    num_heads: Option<i64>,
    rotary_dim: Option<i64>,
}

fn build(case: &Case) -> (Graph, Vec<(String, Tensor)>) {
    let mut rng = StdRng::seed_from_u64(11);
    let mut g = Graph::new("rotary");
    let mut ins = Vec::new();
    let mut data = Vec::new();
    for (name, shape) in [("x", &case.x), ("cos", &case.cache), ("sin", &case.cache)] {
        ins.push(Some(g.add_input(name, TensorType::fixed(DType::F32, shape)).unwrap()));
        data.push((name.to_string(), random(&mut rng, shape)));
    }
    if let Some(p) = &case.positions {
        let (b, s) = (case.x[0], if case.x.len() == 4 { case.x[2] } else { case.x[1] });
        ins.push(Some(g.add_input("pos", TensorType::fixed(DType::I64, &[b, s])).unwrap()));
        let t = Tensor::from_i64s(DType::I64, &[b, s], p);
        data.push(("pos".to_string(), t));
    }
    let op = Op::RotaryEmbedding {
        interleaved: case.interleaved,
        num_heads: case.num_heads,
        rotary_embedding_dim: case.rotary_dim,
    };
    let id = g.add_node("rope", op, ins, &["y"]).unwrap();
    g.add_output(g.node(id).output(0).unwrap());
    kiln_ir::infer_types(&mut g).unwrap_or_else(|e| panic!("{}: inference: {e}", case.what));
    (g, data)
}

fn check(case: Case) {
    let (g, inputs) = build(&case);
    let compiled = compile(&g, &CompileOptions::default()).unwrap_or_else(|e| panic!("{}: compile: {e}", case.what));
    let got = compiled.run(&inputs).unwrap_or_else(|e| panic!("{}: run: {e}", case.what));
    let want = kiln_ir::interp::run(&g, &inputs).unwrap_or_else(|e| panic!("{}: interpreter: {e}", case.what));
    assert_eq!(got[0].1.shape(), want[0].1.shape(), "{}: shape", case.what);
    for (i, (a, b)) in got[0].1.to_f64s().iter().zip(want[0].1.to_f64s()).enumerate() {
        assert!((a - b).abs() <= 1e-5 + 1e-4 * b.abs(), "{}: element {i} is {a}, interpreter says {b}", case.what);
    }
}

#[test]
fn four_d_without_position_ids() {
    for interleaved in [false, true] {
        check(Case {
            what: "4-D",
            x: vec![2, 3, 5, 8],
            cache: vec![2, 5, 4],
            positions: None,
            interleaved,
            num_heads: None,
            rotary_dim: None,
        });
    }
}

#[test]
fn three_d_with_position_ids_and_a_partial_rotation() {
    for interleaved in [false, true] {
        check(Case {
            what: "3-D, positions, rotary_embedding_dim 4 of 10",
            x: vec![2, 3, 2 * 10],
            cache: vec![16, 2],
            positions: Some(vec![0, 5, 15, 3, 3, 9]),
            interleaved,
            num_heads: Some(2),
            rotary_dim: Some(4),
        });
    }
}

#[test]
fn a_position_outside_the_caches_is_an_error() {
    let (g, inputs) = build(&Case {
        what: "bad position",
        x: vec![1, 2, 3, 4],
        cache: vec![8, 2],
        positions: Some(vec![1, 8, 2]),
        interleaved: false,
        num_heads: None,
        rotary_dim: None,
    });
    let compiled = compile(&g, &CompileOptions::default()).expect("RotaryEmbedding lowers");
    match compiled.run(&inputs) {
        Err(BackendError::Node { node, op, message }) => {
            assert_eq!((node.as_str(), op.as_str()), ("rope", "RotaryEmbedding"));
            assert!(message.contains("position"), "{message}");
        }
        other => panic!("expected a node error, got {:?}", other.map(|_| ())),
    }
}
