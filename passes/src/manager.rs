//! Named passes, pipelines and the optimization driver.
//!
//! A [`Pass`] is a named set of rules. A [`Pipeline`] runs passes one after
//! the other on one e-graph (later passes see every equivalence earlier ones
//! found), each to saturation or to a [`Limits`] bound, then extracts the
//! cheapest graph under its [`CostModel`] once. [`optimize`] returns the
//! graph with a [`Report`]: which rules fired how often and at which source
//! nodes, saturation statistics per pass, whether a limit stopped a pass,
//! op histograms and costs before and after.
//!
//! Output is deterministic: the same input graph and pipeline give the same
//! graph, byte for byte once printed, because egg runs with its
//! `deterministic` feature, rules visit classes in id order, extraction
//! breaks ties by node order, and conversion back names and orders nodes by
//! the source. The one exception is a pass stopped by the time limit, where
//! the stopping point depends on the machine; the report says so
//! ([`Report::deterministic`]).
//!
//! If the analysis finds a bug (a rule merged classes of different types),
//! the input graph is returned unchanged and the report lists the errors.
//!
//! [`explain_node`] answers "where did this node go": it runs a pipeline
//! with egg's explanations on and reports the rule applications between a
//! source node's term and the term extracted for its e-class.

use crate::analysis::{KilnEGraph, TypeAnalysis, DEFAULT_FOLD_LIMIT};
use crate::convert::{to_egraph, to_graph, SourceInfo};
use crate::cost::{CostModel, GraphCost};
use crate::extract::extract_dag;
use crate::lang::KilnLang;
use crate::rules::{self, FireLog, Fired, Rule, RuleContext};
use egg::Language as _;
use kiln_ir::error::{IrError, Result};
use kiln_ir::graph::Graph;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A named group of rules.
#[derive(Clone)]
pub struct Pass {
    /// Name used on the command line (`--passes algebra`).
    pub name: &'static str,
    /// One line saying what it does.
    pub description: &'static str,
    /// The rules it runs to saturation.
    pub rules: Vec<Arc<dyn Rule>>,
}

impl fmt::Debug for Pass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.rules.iter().map(|r| r.name()).collect();
        f.debug_struct("Pass")
            .field("name", &self.name)
            .field("rules", &names)
            .finish()
    }
}

/// The names of every pass, in pipeline order.
pub const PASS_NAMES: &[&str] = &["algebra", "loss", "attention"];

impl Pass {
    /// The pass with this name.
    pub fn named(name: &str) -> Option<Pass> {
        match name {
            "algebra" => Some(Pass {
                name: "algebra",
                description:
                    "transpose/reshape folding, Identity/Dropout/Cast elimination, constant folding, scale into weight, matmul reassociation",
                rules: rules::algebra::rules(),
            }),
            "loss" => Some(Pass {
                name: "loss",
                description: "softmax/log-softmax + NLL and SoftmaxCrossEntropyLoss into kiln::CrossEntropy, z-loss into its z_loss; LM head + loss into kiln::LinearCrossEntropy; ArgMax/TopK over softmax",
                rules: rules::loss::rules(),
            }),
            "attention" => Some(Pass {
                name: "attention",
                description: "scaled dot-product attention (scale, mask, causal mask, grouped-/multi-query) into Attention",
                rules: rules::attention::rules(),
            }),
            _ => None,
        }
    }
}

/// Optimization levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptLevel {
    /// No rewriting: the graph comes back as it went in (types inferred).
    O0,
    /// Clean-up: the `algebra` pass.
    O1,
    /// Everything: `-O1` plus loss and attention fusion.
    O2,
}

/// Bounds on one pass's saturation. Whichever is hit first stops the pass,
/// and the report says which.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Rule-application rounds.
    pub iterations: usize,
    /// E-nodes in the e-graph.
    pub nodes: usize,
    /// Wall time of the whole pipeline's saturation.
    pub time: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            iterations: 30,
            nodes: 500_000,
            time: Duration::from_secs(20),
        }
    }
}

/// Passes to run, with limits and the cost model for extraction.
#[derive(Clone, Debug)]
pub struct Pipeline {
    /// Name for reports (`-O2`, or the pass list).
    pub name: String,
    /// Passes in order.
    pub passes: Vec<Pass>,
    /// Saturation limits.
    pub limits: Limits,
    /// What extraction minimizes.
    pub cost: CostModel,
    /// Record explanations (for `kiln explain`; costs memory).
    pub explanations: bool,
    /// Constants up to this many elements are folded.
    pub fold_limit: usize,
    /// Panic at a rule bug (a merge of classes of different types) instead
    /// of only reporting it; on by default in debug builds.
    pub strict_analysis: bool,
}

impl Pipeline {
    /// The passes of an optimization level with default limits and the CPU
    /// cost model.
    pub fn level(level: OptLevel) -> Pipeline {
        let (name, passes): (&str, &[&str]) = match level {
            OptLevel::O0 => ("-O0", &[]),
            OptLevel::O1 => ("-O1", &["algebra"]),
            OptLevel::O2 => ("-O2", PASS_NAMES),
        };
        let passes = passes
            .iter()
            .map(|n| Pass::named(n).expect("listed passes exist"))
            .collect();
        Pipeline::new(name, passes)
    }

    /// A pipeline of named passes; an error names an unknown pass and lists
    /// the known ones.
    pub fn from_names(names: &[&str]) -> Result<Pipeline> {
        let passes = names
            .iter()
            .map(|n| {
                Pass::named(n).ok_or_else(|| {
                    IrError::Model(format!(
                        "unknown pass `{n}` (known: {})",
                        PASS_NAMES.join(", ")
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Pipeline::new(&names.join(","), passes))
    }

    /// A pipeline of these passes with default limits, the CPU cost model,
    /// no explanations and the default fold limit.
    pub fn new(name: &str, passes: Vec<Pass>) -> Pipeline {
        Pipeline {
            name: name.to_string(),
            passes,
            limits: Limits::default(),
            cost: CostModel::default(),
            explanations: false,
            fold_limit: DEFAULT_FOLD_LIMIT,
            strict_analysis: cfg!(debug_assertions),
        }
    }
}

/// Why a pass stopped.
#[derive(Clone, Debug, PartialEq)]
pub enum Stop {
    /// No rule could change the e-graph any more.
    Saturated,
    /// The iteration limit was reached.
    IterationLimit(usize),
    /// The e-graph reached the node limit.
    NodeLimit(usize),
    /// The time limit ran out (seconds spent).
    TimeLimit(f64),
    /// Something else stopped egg's runner.
    Other(String),
}

impl Stop {
    /// True when a limit, not saturation, ended the pass.
    pub fn is_limit(&self) -> bool {
        !matches!(self, Stop::Saturated)
    }
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::Saturated => f.write_str("saturated"),
            Stop::IterationLimit(n) => write!(f, "stopped by the iteration limit ({n} iterations)"),
            Stop::NodeLimit(n) => write!(f, "stopped by the node limit ({n} e-nodes)"),
            Stop::TimeLimit(s) => write!(f, "stopped by the time limit ({s:.2} s)"),
            Stop::Other(m) => write!(f, "stopped: {m}"),
        }
    }
}

/// Statistics of one pass.
#[derive(Clone, Debug, PartialEq)]
pub struct PassReport {
    /// The pass.
    pub name: String,
    /// Iterations run.
    pub iterations: usize,
    /// E-nodes at the end.
    pub egraph_nodes: usize,
    /// E-classes at the end.
    pub egraph_classes: usize,
    /// Why it stopped.
    pub stop: Stop,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// How often one rule fired, and where.
#[derive(Clone, Debug, PartialEq)]
pub struct RewriteRecord {
    /// The rule.
    pub rule: String,
    /// Number of times it changed the e-graph.
    pub count: usize,
    /// Source nodes whose values it rewrote, in source order.
    pub nodes: Vec<String>,
}

/// Something a rule wants the reader of a report to know about one of its
/// rewrites (see [`Rule::notes`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// The rule.
    pub rule: String,
    /// The source node whose value it rewrote (the first in source order;
    /// empty when no source node computes that value).
    pub node: String,
    /// What happened.
    pub message: String,
}

/// What an optimization did.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The pipeline's name.
    pub pipeline: String,
    /// One entry per pass run.
    pub passes: Vec<PassReport>,
    /// Rules that fired, in the order they first fired.
    pub rewrites: Vec<RewriteRecord>,
    /// Notes of the rules on their rewrites, in firing order, each once.
    pub notes: Vec<Note>,
    /// Op-type histogram of the input.
    pub ops_before: BTreeMap<String, usize>,
    /// Op-type histogram of the output.
    pub ops_after: BTreeMap<String, usize>,
    /// Cost of the input under the pipeline's model.
    pub cost_before: GraphCost,
    /// Cost of the output.
    pub cost_after: GraphCost,
    /// Bugs the analysis found; when not empty the input came back unchanged.
    pub errors: Vec<String>,
    /// Seconds spent extracting.
    pub extract_seconds: f64,
}

impl Report {
    /// True when some pass stopped at a limit instead of saturating.
    pub fn limit_hit(&self) -> bool {
        self.passes.iter().any(|p| p.stop.is_limit())
    }

    /// False when a time limit stopped a pass, which makes the result depend
    /// on the machine's speed.
    pub fn deterministic(&self) -> bool {
        !self
            .passes
            .iter()
            .any(|p| matches!(p.stop, Stop::TimeLimit(_)))
    }

    /// How often a rule fired.
    pub fn fired(&self, rule: &str) -> usize {
        self.rewrites
            .iter()
            .find(|r| r.rule == rule)
            .map_or(0, |r| r.count)
    }
}

fn human(x: f64) -> String {
    let units = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")];
    for (scale, suffix) in units {
        if x.abs() >= scale {
            return format!("{:.2}{suffix}", x / scale);
        }
    }
    format!("{x:.0}")
}

impl fmt::Display for Report {
    /// A human summary: passes, rewrites by rule and place, costs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "pipeline {}: {} pass(es)",
            self.pipeline,
            self.passes.len()
        )?;
        for p in &self.passes {
            writeln!(
                f,
                "  pass {}: {} after {} iteration(s), {} e-nodes in {} classes, {:.3} s",
                p.name, p.stop, p.iterations, p.egraph_nodes, p.egraph_classes, p.seconds
            )?;
        }
        if self.limit_hit() {
            writeln!(
                f,
                "  warning: a saturation limit was hit; the result may miss rewrites"
            )?;
        }
        for r in &self.rewrites {
            writeln!(f, "  {} x{}: {}", r.rule, r.count, r.nodes.join(", "))?;
        }
        for n in &self.notes {
            writeln!(f, "  note: {} at {}: {}", n.rule, n.node, n.message)?;
        }
        for e in &self.errors {
            writeln!(f, "  error: {e}")?;
        }
        let (b, a) = (&self.cost_before, &self.cost_after);
        writeln!(f, "  nodes {} -> {}", b.nodes, a.nodes)?;
        writeln!(f, "  FLOPs {} -> {}", human(b.flops), human(a.flops))?;
        writeln!(f, "  bytes moved {} -> {}", human(b.bytes), human(a.bytes))?;
        write!(
            f,
            "  peak live memory {} -> {} bytes",
            human(b.peak_bytes),
            human(a.peak_bytes)
        )
    }
}

fn histogram(g: &Graph) -> BTreeMap<String, usize> {
    let mut h = BTreeMap::new();
    for id in g.node_ids() {
        let op = &g.node(id).op;
        let key = if op.domain().is_empty() {
            op.name().to_string()
        } else {
            format!("{}.{}", op.domain(), op.name())
        };
        *h.entry(key).or_insert(0) += 1;
    }
    h
}

/// Optimizes a graph with a pipeline (see the module docs). The graph's
/// types are inferred first if any are missing. Errors are bad input (the
/// graph does not infer or verify) or a rebuilt graph that fails to verify.
pub fn optimize(graph: &Graph, pipeline: &Pipeline) -> Result<(Graph, Report)> {
    let mut input = graph.clone();
    if input.value_ids().any(|v| input.value(v).ty.is_none()) {
        kiln_ir::infer_types(&mut input)?;
    }
    let mut report = Report {
        pipeline: pipeline.name.clone(),
        passes: Vec::new(),
        rewrites: Vec::new(),
        notes: Vec::new(),
        ops_before: histogram(&input),
        ops_after: BTreeMap::new(),
        cost_before: pipeline.cost.graph_cost(&input),
        cost_after: GraphCost::default(),
        errors: Vec::new(),
        extract_seconds: 0.0,
    };
    if pipeline.passes.is_empty() {
        report.ops_after = report.ops_before.clone();
        report.cost_after = report.cost_before;
        return Ok((input, report));
    }

    let Saturated {
        egraph,
        source,
        fired,
    } = saturate(&input, pipeline, &mut report.passes)?;
    for f in fired {
        let names = source.node_names_in(&egraph, f.class);
        let rec = match report.rewrites.iter_mut().position(|r| r.rule == f.rule) {
            Some(i) => &mut report.rewrites[i],
            None => {
                report.rewrites.push(RewriteRecord {
                    rule: f.rule.to_string(),
                    count: 0,
                    nodes: Vec::new(),
                });
                report.rewrites.last_mut().expect("just pushed")
            }
        };
        rec.count += 1;
        for message in f.notes {
            let note = Note {
                rule: f.rule.to_string(),
                node: names.first().cloned().unwrap_or_default(),
                message,
            };
            if !report.notes.contains(&note) {
                report.notes.push(note);
            }
        }
        for n in names {
            if !rec.nodes.contains(&n) {
                rec.nodes.push(n);
            }
        }
    }

    report.errors = egraph
        .analysis
        .errors
        .iter()
        .map(|e| e.to_string())
        .collect();
    if !report.errors.is_empty() {
        report.ops_after = report.ops_before.clone();
        report.cost_after = report.cost_before;
        return Ok((input, report));
    }

    let extract_start = Instant::now();
    let cost = &pipeline.cost;
    let extraction = extract_dag(&egraph, &source.roots(), &|eg, class, node| {
        cost.enode_cost(eg, class, node)
    })?;
    let out = to_graph(&egraph, &source, &extraction)?;
    report.extract_seconds = extract_start.elapsed().as_secs_f64();
    kiln_ir::verify(&out).map_err(|e| {
        IrError::Model(format!(
            "the optimized graph does not verify (a bug in a rule): {e}"
        ))
    })?;
    report.ops_after = histogram(&out);
    report.cost_after = pipeline.cost.graph_cost(&out);
    Ok((out, report))
}

/// The e-graph after a pipeline's passes, with what is needed to turn it
/// back into a graph and to say what fired.
struct Saturated {
    egraph: KilnEGraph,
    source: SourceInfo,
    fired: Vec<Fired>,
}

/// Converts a typed graph into an e-graph and runs the pipeline's passes on
/// it in order, appending one [`PassReport`] per pass to `passes`.
fn saturate(input: &Graph, pipeline: &Pipeline, passes: &mut Vec<PassReport>) -> Result<Saturated> {
    let analysis = TypeAnalysis {
        fold_limit: pipeline.fold_limit,
        strict: pipeline.strict_analysis,
        ..TypeAnalysis::default()
    };
    let converted = to_egraph(input, analysis, pipeline.explanations)?;
    let source = converted.source;
    let mut egraph = converted.egraph;
    let log: FireLog = Arc::new(Mutex::new(Vec::new()));
    let ctx = Arc::new(RuleContext {
        outputs: input
            .outputs()
            .iter()
            .map(|&v| input.value(v).name.clone())
            .zip(source.roots())
            .collect(),
    });
    let start = Instant::now();
    for pass in &pipeline.passes {
        let rewrites = rules::rewrites(&pass.rules, &log, &ctx);
        let remaining = pipeline.limits.time.saturating_sub(start.elapsed());
        let pass_start = Instant::now();
        let runner = egg::Runner::<_, _, ()>::new(TypeAnalysis::default())
            .with_egraph(egraph)
            .with_iter_limit(pipeline.limits.iterations)
            .with_node_limit(pipeline.limits.nodes)
            .with_time_limit(remaining)
            .run(&rewrites);
        let stop = match runner.stop_reason {
            Some(egg::StopReason::Saturated) | None => Stop::Saturated,
            Some(egg::StopReason::IterationLimit(n)) => Stop::IterationLimit(n),
            Some(egg::StopReason::NodeLimit(n)) => Stop::NodeLimit(n),
            Some(egg::StopReason::TimeLimit(s)) => Stop::TimeLimit(s),
            Some(egg::StopReason::Other(m)) => Stop::Other(m),
        };
        egraph = runner.egraph;
        passes.push(PassReport {
            name: pass.name.to_string(),
            iterations: runner.iterations.len(),
            egraph_nodes: egraph.total_number_of_nodes(),
            egraph_classes: egraph.number_of_classes(),
            stop,
            seconds: pass_start.elapsed().as_secs_f64(),
        });
    }
    egraph.rebuild();
    let fired = std::mem::take(&mut *log.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(Saturated {
        egraph,
        source,
        fired,
    })
}

/// One rule application on the way from a node's original term to the term
/// extracted for it.
#[derive(Clone, Debug, PartialEq)]
pub struct ExplainStep {
    /// The rule (or the reason egg recorded for the union).
    pub rule: String,
    /// True when the explanation uses the rule right to left: the term
    /// before the step is the rule's right-hand side.
    pub reverse: bool,
    /// The rewritten subterm before the step, printed a few levels deep.
    pub before: String,
    /// The subterm after the step.
    pub after: String,
}

/// Why one source node's value became what the optimized graph computes:
/// the answer of [`explain_node`].
#[derive(Clone, Debug, PartialEq)]
pub struct NodeExplanation {
    /// The source node.
    pub node: String,
    /// The node's output value that was explained (its first output).
    pub value: String,
    /// The node's term in the input graph, a few levels deep (e-graph
    /// notation: `input:x`, `weight:w`, `const#3`).
    pub original: String,
    /// The term extraction chose for the same e-class.
    pub result: String,
    /// False when the extracted e-node is the node itself (same op and
    /// attributes on equivalent inputs): the node was not rewritten, though
    /// its inputs may have been.
    pub rewritten: bool,
    /// False when the optimized graph no longer computes this value (a
    /// fused op absorbed it); `result` then is what extraction would pick
    /// for it alone.
    pub live: bool,
    /// The rule applications, in order, each distinct one once.
    pub steps: Vec<ExplainStep>,
    /// The saturation statistics of the run that was explained.
    pub passes: Vec<PassReport>,
}

/// How deep terms are printed in explanations: deeper terms of a
/// transformer graph run to the whole model.
const EXPLAIN_DEPTH: usize = 2;

/// Optimizes `graph` with `pipeline` and explanations on, and explains how
/// the value of source node `node` (its first output) came to be what
/// extraction chose: egg's explanation between the node's original term
/// and the extracted one, reduced to the rule applications it contains.
/// Only that one class is explained, so the cost does not grow with the
/// rest of the graph beyond saturation itself. Errors: no node of that
/// name, a node without outputs, and what [`optimize`] reports.
pub fn explain_node(graph: &Graph, pipeline: &Pipeline, node: &str) -> Result<NodeExplanation> {
    let mut input = graph.clone();
    if input.value_ids().any(|v| input.value(v).ty.is_none()) {
        kiln_ir::infer_types(&mut input)?;
    }
    let id = input
        .node_by_name(node)
        .ok_or_else(|| IrError::Model(format!("the graph has no node named `{node}`")))?;
    let source_node = input.node(id);
    let err = |m: &str| IrError::node(&source_node.name, source_node.op.name(), m);
    if source_node.outputs.iter().all(Option::is_none) {
        return Err(err("the node has no outputs to explain"));
    }
    let mut pipeline = pipeline.clone();
    pipeline.explanations = true;
    let mut passes = Vec::new();
    let Saturated { egraph, source, .. } = saturate(&input, &pipeline, &mut passes)?;
    // egg's greedy shortening of explanations costs seconds on a small
    // transformer for little gain here, where shared subproofs are printed
    // once anyway.
    let mut egraph = egraph.without_explanation_length_optimization();
    let (value, original) = source
        .node_outputs(node)
        .into_iter()
        .next()
        .ok_or_else(|| err("the node's outputs are not in the e-graph"))?;
    if let Some(e) = egraph.analysis.errors.first() {
        return Err(IrError::Model(format!(
            "the analysis found a rule bug, so nothing is explained: {e}"
        )));
    }

    let class = egraph.find(original);
    let cost = &pipeline.cost;
    let cost_fn = |eg: &KilnEGraph, c: egg::Id, n: &KilnLang| cost.enode_cost(eg, c, n);
    let whole = extract_dag(&egraph, &source.roots(), &cost_fn)?;
    let (live, chosen) = match whole.choice(class) {
        Some(n) => (true, n.clone()),
        None => {
            let alone = extract_dag(&egraph, &[class], &cost_fn)?;
            let n = alone
                .choice(class)
                .ok_or_else(|| err("extraction chose nothing for the node's class"))?;
            (false, n.clone())
        }
    };
    let original_node = egraph.id_to_node(original).clone();
    let canonical = |n: &KilnLang| n.clone().map_children(|c| egraph.find(c));
    let rewritten = canonical(&original_node) != canonical(&chosen);
    // The chosen node as its own (uncanonical) id, so the explanation ends
    // exactly at the extracted node.
    let chosen_id = egraph.add_uncanonical(chosen);
    let explanation = egraph.explain_id_equivalence(original, chosen_id);
    let trees = &explanation.explanation_trees;
    let mut steps = Vec::new();
    let mut seen = std::collections::HashSet::new();
    collect_steps(trees, &mut seen, &mut steps);
    let first = trees
        .first()
        .map_or_else(String::new, |t| term_text(t, EXPLAIN_DEPTH, false));
    let last = trees
        .last()
        .map_or_else(String::new, |t| term_text(t, EXPLAIN_DEPTH, true));
    Ok(NodeExplanation {
        node: node.to_string(),
        value,
        original: first,
        result: last,
        rewritten,
        live,
        steps,
        passes,
    })
}

/// A term of an explanation printed `depth` levels deep (deeper children as
/// `…`), with each child's first (`last == false`) or last form.
fn term_text(t: &egg::TreeTerm<KilnLang>, depth: usize, last: bool) -> String {
    let head = t.node.to_string();
    if t.child_proofs.is_empty() {
        return head;
    }
    if depth == 0 {
        return format!("{head}(…)");
    }
    let args: Vec<String> = t
        .child_proofs
        .iter()
        .map(|proof| {
            let child = if last { proof.last() } else { proof.first() };
            child.map_or_else(|| "?".to_string(), |c| term_text(c, depth - 1, last))
        })
        .collect();
    format!("{head}({})", args.join(", "))
}

/// Appends the rule applications of a tree explanation in the order egg's
/// flat explanation would show them: each term's rule first, then the
/// rewrites inside its children. A subproof shared by several places is
/// visited once, which keeps this linear in the proof's size rather than in
/// the size of its tree expansion.
fn collect_steps(
    proof: &[std::rc::Rc<egg::TreeTerm<KilnLang>>],
    seen: &mut std::collections::HashSet<*const egg::TreeTerm<KilnLang>>,
    out: &mut Vec<ExplainStep>,
) {
    for (i, term) in proof.iter().enumerate() {
        if i > 0 {
            let rule = term.forward_rule.or(term.backward_rule);
            if let Some(rule) = rule {
                out.push(ExplainStep {
                    rule: rule.to_string(),
                    reverse: term.forward_rule.is_none(),
                    before: term_text(&proof[i - 1], EXPLAIN_DEPTH, true),
                    after: term_text(term, EXPLAIN_DEPTH, false),
                });
            }
        }
        if seen.insert(std::rc::Rc::as_ptr(term)) {
            for child in &term.child_proofs {
                collect_steps(child, seen, out);
            }
        }
    }
}
