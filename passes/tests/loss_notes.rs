//! On the example language models, whose logits are a graph output beside
//! the loss, `-O2` fuses the head into `LinearCrossEntropy` and its report
//! says that the logits path was kept.

use kiln_ir::onnx::import::{load_model, ImportOptions};
use kiln_passes::manager::{optimize, OptLevel, Pipeline};
use kiln_test_support::example_model_dirs;
use std::path::Path;

#[test]
fn o2_report_notes_the_kept_logits_of_every_language_model() {
    let Some(dirs) = example_model_dirs(Path::new(env!("CARGO_TARGET_TMPDIR"))) else {
        eprintln!("skipping: no example models and no Python to generate them (run `make models`)");
        return;
    };
    let loss_models = ["gpt2_fused", "gpt2_unfused", "llama_fused", "llama_unfused"];
    let mut seen = 0;
    for dir in dirs {
        let model = dir
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        if !loss_models.contains(&model.as_str()) {
            continue;
        }
        seen += 1;
        let mut g = load_model(&dir.join("model.onnx"), ImportOptions::default())
            .expect("example model imports");
        kiln_ir::infer_types(&mut g).expect("example model infers");
        let logits = g
            .outputs()
            .iter()
            .map(|&v| g.value(v).name.clone())
            .find(|n| n.contains("logits"))
            .unwrap_or_else(|| panic!("{model}: no logits output"));
        let (_, report) = optimize(&g, &Pipeline::level(OptLevel::O2)).expect("optimize");
        let want = format!(
            "logits `{logits}` are a graph output: kept the MatMul path beside LinearCrossEntropy"
        );
        let note = report
            .notes
            .iter()
            .find(|n| n.message == want)
            .unwrap_or_else(|| panic!("{model}: no note `{want}`:\n{report}"));
        assert!(note.rule.starts_with("loss-linear-ce"), "{model}: {note:?}");
        assert!(
            !note.node.is_empty(),
            "{model}: the note names the loss node"
        );
        assert!(
            report.to_string().contains(&want),
            "{model}: the summary shows the note"
        );
    }
    assert_eq!(seen, loss_models.len(), "every language model was checked");
}
