//! `kiln optimize`: rewrites a model with the e-graph passes, writes the
//! result and says what changed.

use super::output::write_stdout;
use super::pipeline::PipelineArgs;
use super::summary::{byte_size, table, thousands};
use anyhow::Context;
use clap::Args;
use kiln::ir::io::ModelFormat;
use kiln::ir::{Graph, Op};
use kiln::passes::approx::{ApproxOptions, ApproxReport, LinearForm};
use kiln::passes::manager::{Report, Stop};
use kiln::passes::GraphCost;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Optimize a model: fuse attention and losses, clean up, optionally approximate attention.
#[derive(Args, Debug)]
#[command(
    long_about = "Optimize a model with kiln's e-graph passes and write the result.\n\n\
    The model is converted into an e-graph, the passes of the level (or of --passes) run to saturation or \
    to a limit, and the cheapest equivalent graph under the CPU cost model is written (.onnx or .kiln, \
    by extension). Fused ops are written in the `kiln` ONNX domain; --portable lowers them into \
    standard ONNX ops instead, so that onnxruntime runs the result.\n\n\
    The summary says which rule fired where (grouped by layer when the node names show one), \
    FLOPs, bytes moved and peak live memory before and after, and the saturation statistics of each \
    pass, including any limit that stopped one. --report writes the same as JSON.",
    after_help = "Examples:\n  \
    kiln optimize model.onnx -o model.opt.onnx\n  \
    kiln optimize model.onnx -o model.kiln -O1 --report report.json\n  \
    kiln optimize model.onnx -o portable.onnx --portable --node-limit 200000"
)]
pub struct OptimizeArgs {
    /// The model to optimize: .onnx or .kiln.
    input: PathBuf,
    /// Where to write the optimized model: .onnx or .kiln.
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    output: PathBuf,
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// Write a JSON report to FILE.
    ///
    /// Keys: "input", "output", "pipeline", "portable", "unchanged", "rewrites" [{"rule", "count",
    /// "nodes", "layers"}], "ops_before"/"ops_after" {op: count}, "cost_before"/"cost_after"
    /// {"nodes", "flops", "bytes", "peak_bytes", "weight_bytes", "time_ns"}, "passes" [{"name",
    /// "iterations", "egraph_nodes", "egraph_classes", "stop", "stop_detail", "limit_hit",
    /// "seconds"}], "limit_hit", "deterministic", "errors", "notes" [{"rule", "node", "message"}], "seconds".
    #[arg(long, value_name = "FILE.json")]
    report: Option<PathBuf>,
    /// Write only standard ONNX ops: kiln-domain ops are lowered (the LM-head loss then forms its logits).
    #[arg(long)]
    portable: bool,
    /// Replace softmax attention by an approximation: linear, sigmoid, softplus or soft.
    ///
    /// Applied after the exact passes, to every fused Attention node it fits (the others stay exact
    /// and the summary says why). The output error against the exact graph is measured on the
    /// --samples input sets (by default every test_data_set_N directory beside the model, else two
    /// random input sets) and reported with FLOPs and bytes at the model's sequence length and at 8x it.
    #[arg(long, value_name = "KIND")]
    attention: Option<kiln::passes::approx::AttentionKind>,
    /// Refuse the --attention substitution when its relative L2 output error exceeds E: nothing is
    /// written and kiln exits non-zero with the measured error.
    #[arg(long, value_name = "E", requires = "attention")]
    max_error: Option<f64>,
    /// An ONNX test-data directory (input_K.pb files) to measure the --attention error on; repeatable.
    #[arg(long = "samples", value_name = "DIR", requires = "attention")]
    samples: Vec<PathBuf>,
    /// Write causal linear attention as ONNX-27 LinearAttention where it fits, instead of standard
    /// ops of older opsets.
    #[arg(long, requires = "attention")]
    linear_attention_op: bool,
}

/// Op-type histogram, `domain.Op` for ops outside the ONNX domain.
pub fn ops_histogram(graph: &Graph) -> BTreeMap<String, usize> {
    let mut h = BTreeMap::new();
    for id in graph.node_ids() {
        *h.entry(op_type(&graph.node(id).op)).or_insert(0) += 1;
    }
    h
}

/// `Softmax`, or `kiln.CrossEntropy` outside the ONNX domain.
fn op_type(op: &Op) -> String {
    if op.domain().is_empty() {
        op.name().to_string()
    } else {
        format!("{}.{}", op.domain(), op.name())
    }
}

/// An op with its scalar attributes, as the summary shows a rewrite's
/// result: `Attention(is_causal=1)`, `kiln.CrossEntropy(reduction=sum)`.
fn op_text(op: &Op) -> String {
    use kiln::ir::Attr;
    let attrs: Vec<String> = op
        .attrs()
        .iter()
        .filter_map(|(name, a)| match a {
            Attr::Int(i) => Some(format!("{name}={i}")),
            Attr::Float(f) => Some(format!("{name}={f}")),
            Attr::String(s) => Some(format!("{name}={s}")),
            Attr::Ints(v) => Some(format!("{name}={v:?}")),
            _ => None,
        })
        .collect();
    if attrs.is_empty() {
        op_type(op)
    } else {
        format!("{}({})", op_type(op), attrs.join(", "))
    }
}

/// The transformer layer a node name points into: the number after a
/// `h`, `layer`, `layers`, `block`, `blocks` or `blk` component, as
/// exporters write them (`/h.3/attn/MatMul`, `layers.3.attn.q_proj`,
/// `encoder.layer.3/...`, `model_layers_3_...`).
pub fn layer_of(name: &str) -> Option<u64> {
    const WORDS: [&str; 6] = ["h", "layer", "layers", "block", "blocks", "blk"];
    let tokens: Vec<&str> = name.split(|c: char| !c.is_ascii_alphanumeric()).filter(|t| !t.is_empty()).collect();
    tokens.windows(2).find_map(|w| {
        let word = w[0].to_ascii_lowercase();
        if WORDS.contains(&word.as_str()) && w[1].bytes().all(|b| b.is_ascii_digit()) {
            w[1].parse().ok()
        } else {
            None
        }
    })
}

#[derive(Serialize)]
struct JsonRewrite {
    rule: String,
    count: usize,
    nodes: Vec<String>,
    /// Layers of `nodes`, sorted, without repeats.
    layers: Vec<u64>,
}

#[derive(Serialize)]
struct JsonCost {
    nodes: usize,
    flops: f64,
    bytes: f64,
    peak_bytes: f64,
    weight_bytes: f64,
    time_ns: f64,
}

impl From<&GraphCost> for JsonCost {
    fn from(c: &GraphCost) -> JsonCost {
        JsonCost {
            nodes: c.nodes,
            flops: c.flops,
            bytes: c.bytes,
            peak_bytes: c.peak_bytes,
            weight_bytes: c.weight_bytes,
            time_ns: c.time_ns,
        }
    }
}

#[derive(Serialize)]
struct JsonPass {
    name: String,
    iterations: usize,
    egraph_nodes: usize,
    egraph_classes: usize,
    /// `saturated`, `iteration_limit`, `node_limit`, `time_limit` or `other`.
    stop: &'static str,
    stop_detail: String,
    limit_hit: bool,
    seconds: f64,
}

/// The `--report` file; field order is the JSON key order.
#[derive(Serialize)]
struct JsonReport {
    input: String,
    output: String,
    pipeline: String,
    portable: bool,
    unchanged: bool,
    rewrites: Vec<JsonRewrite>,
    ops_before: BTreeMap<String, usize>,
    ops_after: BTreeMap<String, usize>,
    cost_before: JsonCost,
    cost_after: JsonCost,
    passes: Vec<JsonPass>,
    limit_hit: bool,
    deterministic: bool,
    errors: Vec<String>,
    notes: Vec<JsonNote>,
    /// The --attention substitution, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    approximation: Option<JsonApproximation>,
    seconds: f64,
}

/// The `--attention` part of the report.
#[derive(Serialize)]
struct JsonApproximation {
    kind: String,
    replaced: Vec<String>,
    skipped: Vec<JsonSkipped>,
    samples: usize,
    /// Over all outputs together; absent when nothing was replaced.
    error: Option<JsonError>,
    output_errors: Vec<JsonError>,
    max_error: Option<f64>,
    refused: bool,
    seq_len: i64,
    length_factor: i64,
    cost_before_at_s: JsonCost,
    cost_after_at_s: JsonCost,
    cost_before_at_scaled: Option<JsonCost>,
    cost_after_at_scaled: Option<JsonCost>,
    scaling_note: Option<String>,
}

#[derive(Serialize)]
struct JsonSkipped {
    node: String,
    reason: String,
}

#[derive(Serialize)]
struct JsonError {
    output: String,
    max_abs: f64,
    rel_l2: f64,
    cosine: f64,
}

impl From<&kiln::passes::approx::ErrorFigures> for JsonError {
    fn from(e: &kiln::passes::approx::ErrorFigures) -> JsonError {
        JsonError { output: e.output.clone(), max_abs: e.max_abs, rel_l2: e.rel_l2, cosine: e.cosine }
    }
}

impl From<&ApproxReport> for JsonApproximation {
    fn from(a: &ApproxReport) -> JsonApproximation {
        JsonApproximation {
            kind: a.kind.to_string(),
            replaced: a.replaced.iter().map(|r| r.node.clone()).collect(),
            skipped: a.skipped.iter().map(|s| JsonSkipped { node: s.node.clone(), reason: s.reason.clone() }).collect(),
            samples: a.samples,
            error: a.error.as_ref().map(JsonError::from),
            output_errors: a.output_errors.iter().map(JsonError::from).collect(),
            max_error: a.max_error,
            refused: a.refused,
            seq_len: a.seq_len,
            length_factor: a.length_factor,
            cost_before_at_s: (&a.before.at_s).into(),
            cost_after_at_s: (&a.after.at_s).into(),
            cost_before_at_scaled: a.before.at_scaled.as_ref().map(JsonCost::from),
            cost_after_at_scaled: a.after.at_scaled.as_ref().map(JsonCost::from),
            scaling_note: a.scaling_note.clone(),
        }
    }
}

/// Something a rule wants the user to know (a kept logits path, ...).
#[derive(Serialize)]
struct JsonNote {
    rule: String,
    /// The source node it concerns; empty when none computes that value.
    node: String,
    message: String,
}

fn stop_key(stop: &Stop) -> &'static str {
    match stop {
        Stop::Saturated => "saturated",
        Stop::IterationLimit(_) => "iteration_limit",
        Stop::NodeLimit(_) => "node_limit",
        Stop::TimeLimit(_) => "time_limit",
        Stop::Other(_) => "other",
    }
}

/// What `kiln optimize` did, for the summary and the JSON report.
struct Outcome<'a> {
    args: &'a OptimizeArgs,
    input: &'a Graph,
    written: &'a Graph,
    report: &'a Report,
    approximation: Option<&'a ApproxReport>,
    cost_after: GraphCost,
    unchanged: bool,
    lowered: usize,
    seconds: f64,
}

/// FLOPs and bytes with SI prefixes: `1.23 G`.
fn si(x: f64) -> String {
    for (scale, prefix) in [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")] {
        if x.abs() >= scale {
            return format!("{:.2} {prefix}", x / scale);
        }
    }
    format!("{x:.0} ")
}

fn change(before: f64, after: f64) -> String {
    if before == 0.0 || before == after {
        return String::new();
    }
    format!("{:+.1}%", 100.0 * (after - before) / before)
}

/// Where a rewrite happened, in summary order: layers by number, then the
/// rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Place {
    Layer(u64),
    Outside,
}

/// The rewrites as summary lines, grouped by layer (layers in order, then
/// nodes outside any layer): the rules that fired at a node, what the node
/// became in the written graph when its op changed, and the nodes where
/// that same story happened.
fn rewrite_lines(o: &Outcome) -> Vec<String> {
    // Each node with the rules that fired there, in first-fired order.
    let mut by_node: Vec<(&str, Vec<&str>)> = Vec::new();
    for r in &o.report.rewrites {
        for n in &r.nodes {
            match by_node.iter_mut().find(|(m, _)| m == n) {
                Some((_, rules)) => {
                    if !rules.contains(&r.rule.as_str()) {
                        rules.push(&r.rule);
                    }
                }
                None => by_node.push((n, vec![&r.rule])),
            }
        }
    }
    // (place, rules, result) -> nodes.
    let mut groups: BTreeMap<(Place, String, String), Vec<&str>> = BTreeMap::new();
    for (n, rules) in &by_node {
        let layer = layer_of(n).map_or(Place::Outside, Place::Layer);
        let before = o.input.node_by_name(n).map(|id| op_type(&o.input.node(id).op));
        let result = match o.written.node_by_name(n) {
            Some(id) if before.as_deref() != Some(op_type(&o.written.node(id).op).as_str()) => {
                format!(" → {}", op_text(&o.written.node(id).op))
            }
            _ => String::new(),
        };
        groups.entry((layer, rules.join(", "), result)).or_default().push(n);
    }
    // Rules that fired where no source node is known (on new nodes only).
    for r in &o.report.rewrites {
        if r.nodes.is_empty() {
            groups.entry((Place::Outside, r.rule.clone(), String::new())).or_default();
        }
    }
    const SHOWN: usize = 3;
    let rows: Vec<Vec<String>> = groups
        .into_iter()
        .map(|((place, rules, result), nodes)| {
            let place = match place {
                Place::Layer(l) => format!("layer {l}:"),
                Place::Outside => "outside layers:".to_string(),
            };
            let mut at = nodes.iter().take(SHOWN).copied().collect::<Vec<_>>().join(", ");
            if nodes.len() > SHOWN {
                at.push_str(&format!(" (+{} more)", nodes.len() - SHOWN));
            }
            let at = if at.is_empty() { String::new() } else { format!("at {at}") };
            vec![place, format!("{rules}{result}"), at]
        })
        .collect();
    table(&rows, 2).lines().map(String::from).collect()
}

fn render_summary(o: &Outcome) -> String {
    let r = o.report;
    let mut out = format!(
        "optimized {} -> {} with {} in {:.2} s\n",
        o.args.input.display(),
        o.args.output.display(),
        r.pipeline,
        o.seconds
    );
    if o.unchanged {
        out.push_str("no rule applied; graph unchanged\n");
    } else if r.rewrites.is_empty() {
        out.push_str(&format!(
            "no rule applied; converting through the e-graph removed duplicate or dead nodes ({} -> {} nodes)\n",
            thousands(r.cost_before.nodes as u64),
            thousands(r.cost_after.nodes as u64)
        ));
    } else {
        let applications: usize = r.rewrites.iter().map(|w| w.count).sum();
        out.push_str(&format!(
            "\nrewrites ({} rule{}, {} application{})\n",
            r.rewrites.len(),
            if r.rewrites.len() == 1 { "" } else { "s" },
            thousands(applications as u64),
            if applications == 1 { "" } else { "s" }
        ));
        for line in rewrite_lines(o) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    if o.args.portable {
        out.push_str(&format!(
            "portable: {} kiln op{} lowered into standard ONNX ops\n",
            o.lowered,
            if o.lowered == 1 { "" } else { "s" }
        ));
    }

    if !r.passes.is_empty() {
        out.push_str("\nsaturation\n");
        let rows: Vec<Vec<String>> = r
            .passes
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    format!("{} iteration{}", p.iterations, if p.iterations == 1 { "" } else { "s" }),
                    format!("{} e-nodes", thousands(p.egraph_nodes as u64)),
                    format!("{} classes", thousands(p.egraph_classes as u64)),
                    format!("{:.3} s", p.seconds),
                    if p.stop.is_limit() { format!("LIMIT HIT: {}", p.stop) } else { p.stop.to_string() },
                ]
            })
            .collect();
        out.push_str(&table(&rows, 2));
    }
    let limited: Vec<String> =
        r.passes.iter().filter(|p| p.stop.is_limit()).map(|p| format!("{} ({})", p.name, p.stop)).collect();
    if !limited.is_empty() {
        out.push_str(&format!(
            "warning: saturation limit hit in pass {}; the result may miss rewrites\n",
            limited.join(", ")
        ));
    }
    if !r.deterministic() {
        out.push_str("warning: the time limit stopped a pass, so another run may give a different graph\n");
    }
    for e in &r.errors {
        out.push_str(&format!("error: {e} (the input was kept)\n"));
    }

    let (b, a) = (&r.cost_before, &o.cost_after);
    out.push_str("\ncost (CPU model)  before  after\n");
    let rows = vec![
        vec![
            "nodes".to_string(),
            thousands(b.nodes as u64),
            thousands(a.nodes as u64),
            change(b.nodes as f64, a.nodes as f64),
        ],
        vec!["FLOPs".into(), si(b.flops), si(a.flops), change(b.flops, a.flops)],
        vec!["bytes moved".into(), byte_size(b.bytes as u64), byte_size(a.bytes as u64), change(b.bytes, a.bytes)],
        vec![
            "peak memory".into(),
            byte_size(b.peak_bytes as u64),
            byte_size(a.peak_bytes as u64),
            change(b.peak_bytes, a.peak_bytes),
        ],
    ];
    out.push_str(&table(&rows, 2));

    let after = ops_histogram(o.written);
    let mut changed: Vec<String> = Vec::new();
    let keys: std::collections::BTreeSet<&String> = r.ops_before.keys().chain(after.keys()).collect();
    for k in keys {
        let (x, y) = (r.ops_before.get(k).copied().unwrap_or(0), after.get(k).copied().unwrap_or(0));
        if x != y {
            changed.push(format!("{k} {x} -> {y}"));
        }
    }
    if !changed.is_empty() {
        out.push_str(&format!("\nops changed: {}\n", changed.join(", ")));
    }
    for n in &r.notes {
        let at = if n.node.is_empty() { String::new() } else { format!(" at {}", n.node) };
        out.push_str(&format!("note: {}{at}: {}\n", n.rule, n.message));
    }
    if let Some(a) = o.approximation {
        out.push_str(&format!("\n{a}"));
    }
    out
}

fn json_report(o: &Outcome) -> JsonReport {
    let r = o.report;
    JsonReport {
        input: o.args.input.display().to_string(),
        output: o.args.output.display().to_string(),
        pipeline: r.pipeline.clone(),
        portable: o.args.portable,
        unchanged: o.unchanged,
        rewrites: r
            .rewrites
            .iter()
            .map(|w| {
                let mut layers: Vec<u64> = w.nodes.iter().filter_map(|n| layer_of(n)).collect();
                layers.sort_unstable();
                layers.dedup();
                JsonRewrite { rule: w.rule.clone(), count: w.count, nodes: w.nodes.clone(), layers }
            })
            .collect(),
        ops_before: r.ops_before.clone(),
        ops_after: ops_histogram(o.written),
        cost_before: (&r.cost_before).into(),
        cost_after: (&o.cost_after).into(),
        passes: r
            .passes
            .iter()
            .map(|p| JsonPass {
                name: p.name.clone(),
                iterations: p.iterations,
                egraph_nodes: p.egraph_nodes,
                egraph_classes: p.egraph_classes,
                stop: stop_key(&p.stop),
                stop_detail: p.stop.to_string(),
                limit_hit: p.stop.is_limit(),
                seconds: p.seconds,
            })
            .collect(),
        limit_hit: r.limit_hit(),
        deterministic: r.deterministic(),
        errors: r.errors.clone(),
        notes: r
            .notes
            .iter()
            .map(|n| JsonNote { rule: n.rule.clone(), node: n.node.clone(), message: n.message.clone() })
            .collect(),
        approximation: o.approximation.map(JsonApproximation::from),
        seconds: o.seconds,
    }
}

/// Number of kiln-domain nodes, which `--portable` lowers.
fn kiln_op_count(graph: &Graph) -> usize {
    graph.node_ids().into_iter().filter(|&id| graph.node(id).op.domain() == kiln::ir::op::KILN_DOMAIN).count()
}

/// The names of a value list.
fn value_names(g: &Graph, values: &[kiln::ir::ValueId]) -> Vec<String> {
    values.iter().map(|&v| g.value(v).name.clone()).collect()
}

/// Whether two graphs have the same interface, initializers and nodes (name,
/// op with attributes, input and output value names, in topological order)
/// and the same value types. Initializer data is not compared: no rule ran,
/// and conversion copies the tensors it keeps.
fn same_graph(a: &Graph, b: &Graph) -> anyhow::Result<bool> {
    let signature = |g: &Graph| -> anyhow::Result<Vec<String>> {
        let mut lines = vec![
            format!("inputs {:?}", value_names(g, g.inputs())),
            format!("outputs {:?}", value_names(g, g.outputs())),
            format!("opsets {:?}", g.opset_imports),
        ];
        let inits: Vec<String> = g.initializers().map(|(v, _)| g.value(v).name.clone()).collect();
        lines.push(format!("initializers {inits:?}"));
        for id in g.topo_order()? {
            let n = g.node(id);
            let names = |vs: &[Option<kiln::ir::ValueId>]| -> Vec<String> {
                vs.iter().map(|v| v.map_or_else(String::new, |v| g.value(v).name.clone())).collect()
            };
            lines.push(format!("{} {:?} {:?} {:?}", n.name, n.op, names(&n.inputs), names(&n.outputs)));
        }
        let mut types: Vec<String> =
            g.value_ids().map(|v| format!("{} {:?}", g.value(v).name, g.value(v).ty)).collect();
        types.sort();
        lines.extend(types);
        Ok(lines)
    };
    Ok(a.name == b.name && signature(a)? == signature(b)?)
}

fn check_writable(path: &Path, what: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        anyhow::ensure!(
            parent.is_dir(),
            "cannot write the {what} `{}`: `{}` is not a directory",
            path.display(),
            parent.display()
        );
    }
    Ok(())
}

/// The substitution options: the kind, the bound, and the input sets to
/// measure on (the --samples directories, else every `test_data_set_N`
/// beside the model, else the library's random inputs).
fn approx_options(
    args: &OptimizeArgs,
    kind: kiln::passes::approx::AttentionKind,
    graph: &Graph,
) -> anyhow::Result<ApproxOptions> {
    let mut opts = ApproxOptions::new(kind);
    opts.max_error = args.max_error;
    if args.linear_attention_op {
        opts.linear_form = LinearForm::LinearAttentionOp;
    }
    let dirs = if args.samples.is_empty() {
        let beside = args.input.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut found: Vec<PathBuf> = std::fs::read_dir(if beside.as_os_str().is_empty() { Path::new(".") } else { &beside })
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir() && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("test_data_set_")))
                    .collect()
            })
            .unwrap_or_default();
        found.sort();
        found
    } else {
        args.samples.clone()
    };
    for dir in dirs {
        let data = super::inputs::read_test_data(&dir)?;
        let assigned = super::inputs::assign_inputs(graph, data.inputs, &[])
            .with_context(|| format!("the samples in `{}` do not fit the model", dir.display()))?;
        opts.samples.push(assigned.into_iter().map(|a| (a.name, a.tensor)).collect());
    }
    Ok(opts)
}

/// Runs `kiln optimize`.
pub fn optimize(args: &OptimizeArgs) -> anyhow::Result<()> {
    // Usage mistakes first, so that they do not cost a long load.
    ModelFormat::from_path(&args.output)?;
    ModelFormat::from_path(&args.input)?;
    check_writable(&args.output, "output")?;
    if let Some(report) = &args.report {
        check_writable(report, "report")?;
    }
    let pipeline = args.pipeline.pipeline()?;
    let graph = super::load_model(&args.input)?;

    let start = Instant::now();
    let (optimized, report) = kiln::passes::optimize(&graph, &pipeline)
        .with_context(|| format!("optimizing `{}` failed", args.input.display()))?;
    let unchanged = report.rewrites.is_empty() && same_graph(&optimized, &graph)?;
    // Nothing applied and nothing moved: write the input itself, so that the
    // file is the input's byte for byte.
    let optimized = if unchanged { graph.clone() } else { optimized };
    let approximation = match args.attention {
        Some(kind) => {
            let opts = approx_options(args, kind, &optimized)?;
            let (approximated, approx_report) = kiln::passes::approx::substitute_attention(&optimized, &opts)
                .with_context(|| format!("substituting {kind} attention failed"))?;
            if approx_report.exceeds_max_error() {
                write_stdout(&format!("{approx_report}"));
                let measured = approx_report.error.as_ref().map_or(f64::NAN, |e| e.rel_l2);
                anyhow::bail!(
                    "refused --attention {kind}: relative L2 output error {measured:.3e} exceeds --max-error {:e}; nothing written",
                    args.max_error.unwrap_or(f64::NAN)
                );
            }
            Some((approximated, approx_report))
        }
        None => None,
    };
    let (optimized, approximation) = match approximation {
        Some((g, r)) => (g, Some(r)),
        None => (optimized, None),
    };
    let unchanged = unchanged && approximation.as_ref().is_none_or(|a| a.replaced.is_empty());
    let lowered = if args.portable { kiln_op_count(&optimized) } else { 0 };
    let written = if args.portable {
        kiln::passes::portable::to_portable(&optimized).context("lowering to standard ONNX ops (--portable) failed")?
    } else {
        optimized
    };
    let seconds = start.elapsed().as_secs_f64();
    kiln::ir::io::save(&written, &args.output).with_context(|| format!("cannot write `{}`", args.output.display()))?;

    let outcome = Outcome {
        args,
        input: &graph,
        written: &written,
        report: &report,
        approximation: approximation.as_ref(),
        cost_after: pipeline.cost.graph_cost(&written),
        unchanged: unchanged && !(args.portable && lowered > 0),
        lowered,
        seconds,
    };
    if let Some(path) = &args.report {
        let mut json = serde_json::to_string_pretty(&json_report(&outcome))?;
        json.push('\n');
        std::fs::write(path, json).with_context(|| format!("cannot write the report `{}`", path.display()))?;
    }
    write_stdout(&render_summary(&outcome));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_from_exporter_names() {
        assert_eq!(layer_of("/h.3/attn/MatMul"), Some(3));
        assert_eq!(layer_of("layers.12.attn.q_proj"), Some(12));
        assert_eq!(layer_of("/model/layers.0/self_attn/Softmax"), Some(0));
        assert_eq!(layer_of("bert.encoder.layer.5.attention"), Some(5));
        assert_eq!(layer_of("model_layers_7_mlp"), Some(7));
        assert_eq!(layer_of("loss.nll"), None);
        assert_eq!(layer_of("h_proj"), None);
        assert_eq!(layer_of("layers.x.3"), None);
    }

    #[test]
    fn si_prefixes() {
        assert_eq!(si(1.5e9), "1.50 G");
        assert_eq!(si(12.0), "12 ");
        assert_eq!(change(100.0, 50.0), "-50.0%");
        assert_eq!(change(0.0, 5.0), "");
    }
}
