//! The example models (`make models`): converting to an e-graph and back
//! with no rules keeps the interface, the ops and the outputs; optimizing
//! is deterministic.

mod common;

use common::{print, rel_error, run};
use kiln_ir::graph::Graph;
use kiln_ir::onnx::import::{load_model, read_tensor_pb, ImportOptions};
use kiln_ir::tensor::Tensor;
use kiln_passes::manager::{optimize, OptLevel, Pass, Pipeline};
use kiln_test_support::example_model_dirs;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The example model directories, generated into the test's temporary
/// directory when `make models` has not been run; `None` without Python.
fn example_models() -> Option<Vec<PathBuf>> {
    let dirs = example_model_dirs(Path::new(env!("CARGO_TARGET_TMPDIR")))?;
    assert!(
        dirs.len() >= 6,
        "expected the six example models, found {dirs:?}"
    );
    Some(dirs)
}

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
    for (i, &v) in g
        .inputs()
        .iter()
        .filter(|&&v| g.value(v).initializer.is_none())
        .enumerate()
    {
        let (name, t) =
            read_tensor_pb(&data.join(format!("input_{i}.pb"))).expect("reference input reads");
        let name = if name.is_empty() {
            g.value(v).name.clone()
        } else {
            name
        };
        out.push((name, t));
    }
    out
}

fn no_rules() -> Pipeline {
    Pipeline::new(
        "none",
        vec![Pass {
            name: "none",
            description: "no rules",
            rules: vec![],
        }],
    )
}

fn names(g: &Graph, ids: &[kiln_ir::ValueId]) -> Vec<String> {
    ids.iter().map(|&v| g.value(v).name.clone()).collect()
}

#[test]
fn round_trip_without_rules_keeps_interface_ops_and_outputs() {
    let Some(dirs) = example_models() else {
        eprintln!("skipping: no example models and no Python to generate them (run `make models`)");
        return;
    };
    let mut converted = Vec::new();
    for dir in dirs {
        let model = dir.file_name().unwrap().to_string_lossy().to_string();
        let g = load(&dir);
        let (out, report) = optimize(&g, &no_rules()).expect("round trip");
        kiln_ir::verify(&out).unwrap_or_else(|e| panic!("{model}: {e}"));
        assert_eq!(
            names(&out, out.inputs()),
            names(&g, g.inputs()),
            "{model}: inputs"
        );
        assert_eq!(
            names(&out, out.outputs()),
            names(&g, g.outputs()),
            "{model}: outputs"
        );
        let inits = |g: &Graph| -> BTreeSet<String> {
            g.initializers()
                .map(|(v, _)| g.value(v).name.clone())
                .collect()
        };
        assert!(
            inits(&out).is_subset(&inits(&g)),
            "{model}: no initializer is invented"
        );
        for (v, t) in out.initializers() {
            let orig = g
                .value_by_name(&out.value(v).name)
                .and_then(|o| g.value(o).initializer.as_ref());
            assert!(
                orig.is_some_and(|o| o.bitwise_eq(t)),
                "{model}: initializer data is kept"
            );
        }
        let node_names = |g: &Graph| -> BTreeSet<String> {
            g.node_ids()
                .into_iter()
                .map(|n| g.node(n).name.clone())
                .collect()
        };
        assert!(
            node_names(&out).is_subset(&node_names(&g)),
            "{model}: surviving nodes keep their names"
        );
        // Only CSE and DCE can change a graph without rules: never more ops.
        for (op, n) in &report.ops_after {
            assert!(
                report.ops_before.get(op).is_some_and(|b| b >= n),
                "{model}: {op} x{n} appeared"
            );
        }
        eprintln!(
            "{model}: {} -> {} nodes, {} e-classes",
            report.cost_before.nodes, report.cost_after.nodes, report.passes[0].egraph_classes
        );

        if report.cost_after.nodes == report.cost_before.nodes {
            // Nothing to share or drop: the graph comes back as it went in.
            let (before, after) = (print(&g), print(&out));
            if before != after {
                let line = before.lines().zip(after.lines()).find(|(a, b)| a != b);
                panic!("{model}: round trip changed the graph; first difference: {line:?}");
            }
        }
        converted.push((dir, model, g, out));
    }
    for (dir, model, g, out) in converted {
        let inputs = reference_inputs(&dir, &g);
        let want = run(&g, &inputs);
        let got = run(&out, &inputs);
        for ((n, a), (m, b)) in want.iter().zip(&got) {
            assert_eq!(n, m);
            let e = rel_error(a, b);
            assert!(e <= 1e-5, "{model}: output `{n}` differs by {e}");
        }
    }
}

#[test]
fn optimizing_twice_gives_the_same_bytes() {
    let Some(dirs) = example_models() else {
        eprintln!("skipping: no example models and no Python to generate them (run `make models`)");
        return;
    };
    for dir in dirs {
        let g = load(&dir);
        let (a, ra) = optimize(&g, &Pipeline::level(OptLevel::O2)).expect("optimize");
        let (b, rb) = optimize(&load(&dir), &Pipeline::level(OptLevel::O2)).expect("optimize");
        assert!(ra.deterministic() && rb.deterministic());
        eprintln!("{}:\n{ra}", dir.display());
        assert_eq!(print(&a), print(&b), "{}", dir.display());
        assert_eq!(ra.rewrites, rb.rewrites);
        // Optimizing the optimized graph again changes nothing more.
        let (c, _) = optimize(&a, &Pipeline::level(OptLevel::O2)).expect("optimize");
        assert_eq!(print(&c), print(&a), "{}: -O2 is idempotent", dir.display());
    }
}

#[test]
fn o2_fuses_each_loss_into_one_linear_cross_entropy() {
    let Some(dirs) = example_models() else {
        eprintln!("skipping: no example models and no Python to generate them (run `make models`)");
        return;
    };
    let loss_models = ["gpt2_fused", "gpt2_unfused", "llama_fused", "llama_unfused"];
    let mut seen = 0;
    for dir in dirs {
        let model = dir.file_name().unwrap().to_string_lossy().to_string();
        if !loss_models.contains(&model.as_str()) {
            continue;
        }
        seen += 1;
        let g = load(&dir);
        let (out, report) = optimize(&g, &Pipeline::level(OptLevel::O2)).expect("optimize");
        kiln_ir::verify(&out).unwrap_or_else(|e| panic!("{model}: {e}"));
        let count = |op: &str| {
            out.node_ids()
                .into_iter()
                .filter(|&n| out.node(n).op.name() == op)
                .count()
        };
        // The LM head and the shifted loss become one LinearCrossEntropy;
        // the logits stay for their graph output.
        assert_eq!(count("LinearCrossEntropy"), 1, "{model}:\n{report}");
        assert!(count("MatMul") + count("Gemm") > 0, "{model}: the logits path is kept");
        for unfused in ["CrossEntropy", "SoftmaxCrossEntropyLoss", "NegativeLogLikelihoodLoss", "LogSoftmax"] {
            assert_eq!(count(unfused), 0, "{model}: {unfused} is left");
        }
        assert_eq!(
            names(&out, out.outputs()),
            names(&g, g.outputs()),
            "{model}: outputs"
        );
        let inputs = reference_inputs(&dir, &g);
        let want = run(&g, &inputs);
        let got = run(&out, &inputs);
        for ((n, a), (m, b)) in want.iter().zip(&got) {
            assert_eq!(n, m);
            let e = rel_error(a, b);
            assert!(e <= 1e-5, "{model}: output `{n}` differs by {e}");
        }
    }
    assert_eq!(seen, loss_models.len(), "every loss model was checked");
}
