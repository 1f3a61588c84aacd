//! `kiln inspect`: what a model takes, computes with and returns.

use super::output::write_stdout;
use super::summary::{byte_size, dims_text, table, thousands};
use clap::Args;
use kiln::ir::{Dim, Graph, ValueId};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Show a model's inputs, outputs, op histogram and parameter count.
#[derive(Args, Debug)]
#[command(long_about = "Show a model's inputs and outputs (dtype and symbolic shape), the number of nodes, \
    an op histogram (most frequent first), the parameter count and size (elements and bytes of the \
    initializers), the opsets and the graph name.\n\n\
    The model is loaded as `kiln run` loads it: types are inferred and the graph is verified, so \
    inspect also checks that kiln accepts the model.")]
pub struct InspectArgs {
    /// The model: .onnx or .kiln.
    model: PathBuf,
    /// Print a JSON object instead of text.
    ///
    /// Keys: "model", "graph", "opsets" {domain: version}, "nodes", "ops" {OpType: count},
    /// "inputs" and "outputs" [{"name", "dtype", "shape": [dims as numbers, or strings when symbolic]}],
    /// "parameters" {"count": elements, "bytes", "tensors"}.
    #[arg(long)]
    json: bool,
}

/// One dim in JSON: a number when known, the symbolic expression otherwise.
#[derive(Serialize)]
#[serde(untagged)]
enum JsonDim {
    Fixed(u64),
    Symbolic(String),
}

#[derive(Serialize)]
struct ValueInfo {
    name: String,
    /// `null` when the type is unknown (it never is after `load`).
    dtype: Option<String>,
    shape: Option<Vec<JsonDim>>,
}

#[derive(Serialize)]
struct Parameters {
    /// Elements of all initializers.
    count: u64,
    /// Bytes those elements take as stored in ONNX.
    bytes: u64,
    /// Number of initializer tensors.
    tensors: u64,
}

/// The whole report; field order is the JSON key order.
#[derive(Serialize)]
struct ModelSummary {
    model: String,
    graph: String,
    opsets: BTreeMap<String, i64>,
    nodes: usize,
    ops: BTreeMap<String, usize>,
    inputs: Vec<ValueInfo>,
    outputs: Vec<ValueInfo>,
    parameters: Parameters,
}

/// The name a domain is shown under: ONNX's default domain is the empty string.
fn domain_name(domain: &str) -> &str {
    if domain.is_empty() {
        "ai.onnx"
    } else {
        domain
    }
}

fn value_info(graph: &Graph, v: ValueId) -> ValueInfo {
    let value = graph.value(v);
    let ty = value.ty.as_ref();
    ValueInfo {
        name: value.name.clone(),
        dtype: ty.map(|t| t.dtype.name().to_string()),
        shape: ty.map(|t| {
            t.shape
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => JsonDim::Fixed(*n),
                    Dim::Sym(_) => JsonDim::Symbolic(d.to_string()),
                })
                .collect()
        }),
    }
}

fn summarize(path: &std::path::Path, graph: &Graph) -> ModelSummary {
    let mut ops = BTreeMap::new();
    for id in graph.node_ids() {
        let op = &graph.node(id).op;
        let key = if op.domain().is_empty() { op.name().to_string() } else { format!("{}.{}", op.domain(), op.name()) };
        *ops.entry(key).or_insert(0) += 1;
    }
    let mut parameters = Parameters { count: 0, bytes: 0, tensors: 0 };
    for (_, t) in graph.initializers() {
        parameters.count += t.len() as u64;
        parameters.bytes += t.storage_bytes() as u64;
        parameters.tensors += 1;
    }
    ModelSummary {
        model: path.display().to_string(),
        graph: graph.name.clone(),
        opsets: graph.opset_imports.iter().map(|(d, v)| (domain_name(d).to_string(), *v)).collect(),
        nodes: graph.node_count(),
        ops,
        // Initializers that older models also list as graph inputs are
        // weights with defaults, not something a caller must feed.
        inputs: super::inputs::required_inputs(graph).into_iter().map(|v| value_info(graph, v)).collect(),
        outputs: graph.outputs().iter().map(|&v| value_info(graph, v)).collect(),
        parameters,
    }
}

fn value_rows(graph: &Graph, values: &[ValueId]) -> Vec<Vec<String>> {
    values
        .iter()
        .map(|&v| {
            let value = graph.value(v);
            match &value.ty {
                Some(t) => vec![value.name.clone(), t.dtype.name().to_string(), dims_text(&t.shape)],
                None => vec![value.name.clone(), "?".into(), "?".into()],
            }
        })
        .collect()
}

fn render_text(s: &ModelSummary, graph: &Graph) -> String {
    let opsets: Vec<String> = s.opsets.iter().map(|(d, v)| format!("{d} {v}")).collect();
    let header = vec![
        vec!["model".to_string(), s.model.clone()],
        vec!["graph".into(), if s.graph.is_empty() { "(unnamed)".into() } else { s.graph.clone() }],
        vec!["opsets".into(), if opsets.is_empty() { "(none)".into() } else { opsets.join(", ") }],
        vec!["nodes".into(), thousands(s.nodes as u64)],
        vec![
            "parameters".into(),
            format!(
                "{} in {} initializer{} ({})",
                thousands(s.parameters.count),
                thousands(s.parameters.tensors),
                if s.parameters.tensors == 1 { "" } else { "s" },
                byte_size(s.parameters.bytes)
            ),
        ],
    ];
    let mut out = table(&header, 0);

    let inputs = super::inputs::required_inputs(graph);
    out.push_str(&format!("\ninputs ({})\n", inputs.len()));
    out.push_str(&table(&value_rows(graph, &inputs), 2));
    out.push_str(&format!("\noutputs ({})\n", graph.outputs().len()));
    out.push_str(&table(&value_rows(graph, graph.outputs()), 2));

    let mut histogram: Vec<(&String, &usize)> = s.ops.iter().collect();
    histogram.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    out.push_str(&format!("\nops ({} kinds)\n", histogram.len()));
    let total = s.nodes.max(1) as f64;
    let rows: Vec<Vec<String>> = histogram
        .iter()
        .map(|(name, &count)| {
            vec![name.to_string(), format!("{count:>5}"), format!("{:>5.1}%", 100.0 * count as f64 / total)]
        })
        .collect();
    out.push_str(&table(&rows, 2));
    out
}

/// Runs `kiln inspect`.
pub fn inspect(args: &InspectArgs) -> anyhow::Result<()> {
    let graph = super::load_model(&args.model)?;
    let summary = summarize(&args.model, &graph);
    let text = if args.json {
        let mut json = serde_json::to_string_pretty(&summary)?;
        json.push('\n');
        json
    } else {
        render_text(&summary, &graph)
    };
    write_stdout(&text);
    Ok(())
}
