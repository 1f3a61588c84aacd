//! Opt-in approximate substitutions for softmax attention.
//!
//! [`substitute_attention`] replaces every ONNX `Attention` node of a graph
//! with one of four softmax-free forms ([`AttentionKind`]), each a subgraph
//! of standard ONNX ops that kiln's interpreter and onnxruntime both run
//! (the `linear` kind can instead use ONNX-27 `LinearAttention`, see
//! [`LinearForm`]). It then measures what it changed: the output error
//! against the exact graph on sample inputs, and FLOPs, bytes and peak
//! memory before and after at the model's sequence length `S` and at `8·S`
//! ([`ApproxReport`]).
//!
//! # Why these are not e-graph rules
//!
//! An e-class asserts that all its nodes compute the same value; the
//! extractor may pick any of them, and rules compose freely on top of each
//! other's results. An approximation breaks that contract: merging linear
//! attention into the class of softmax attention would let the extractor
//! swap one for the other silently, whenever the cost model prefers it,
//! and later rules would keep rewriting as if the two were equal, so the
//! error of several approximations could compound unseen. The error of an
//! approximation also depends on the data (the spread of the scores, the
//! sequence length), which an e-graph cannot see. So substitutions run
//! *after* extraction, on a plain graph, only when asked for, and every
//! run is measured on real inputs against the exact graph; the caller sets
//! the error it accepts ([`ApproxOptions::max_error`]) and a substitution
//! above it is refused: the exact graph comes back with the report.
//!
//! # What each kind computes
//!
//! `s` is the node's scale (`1/√d` by default), `M` the additive mask
//! (boolean masks become 0 / −∞), `n` a key length read at run time.
//!
//! - [`linear`]: `φ(Q)(φ(K)ᵀV) / (φ(Q)·Σφ(K))`, `φ = elu + 1` applied to
//!   `√s·Q` and `√s·K`; causal with prefix sums. Key-padding masks only.
//! - [`sigmoid`]: `σ(s·QKᵀ + M − log n) V`, no normalization.
//! - [`softplus`]: `l1norm(softplus(λ·s·QKᵀ + M)) V`, `λ = log n / log n_ref`.
//! - [`soft`]: Gaussian kernel `exp(−s/2·‖q − k‖²)`, Nyström over segment-mean
//!   landmarks with a Newton–Schulz pseudo-inverse, row-normalized.
//!   Non-causal only; key-padding masks only.
//!
//! Each module documents its form, its handling of masks, causality,
//! grouped-query heads and the scale. A node a kind cannot stand in for
//! (a past cache, softcap, a row-varying mask for `linear`/`soft`, causal
//! `soft`, ...) is left exact and listed in [`ApproxReport::skipped`] with
//! the reason.
//!
//! # Error and cost
//!
//! The error is measured on [`ApproxOptions::samples`], or on
//! [`ApproxOptions::random_samples`] seeded random input sets when none are
//! given (floats uniform in [-1, 1), integers in [0, 4)). Per graph output:
//! the largest absolute difference, the relative L2 error `‖a − e‖/‖e‖` and
//! the cosine similarity; overall, the same over all outputs and samples
//! together. [`ApproxOptions::max_error`] bounds the overall relative L2
//! error (a non-finite error always exceeds it).
//!
//! Costs come from [`crate::cost::CostModel`] at `S` and `8·S` (see
//! [`measure`] for how `S` is found, and how a graph typed with a fixed
//! sequence length is re-typed at `8·S`).

pub mod linear;
pub mod measure;
pub mod sigmoid;
pub mod soft;
pub mod softplus;
mod subgraph;

use crate::cost::{GraphCost, Target};
use kiln_ir::graph::Graph;
use kiln_ir::op::Op;
use kiln_ir::tensor::Tensor;
use kiln_ir::{IrError, Result};
use std::fmt;
use std::str::FromStr;
use subgraph::{Builder, Site};

/// Which softmax-free attention replaces softmax attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AttentionKind {
    /// Kernelized linear attention, `φ = elu + 1` ([`linear`]).
    Linear,
    /// Sigmoid attention with bias `−log n` ([`sigmoid`]).
    Sigmoid,
    /// Length-scaled softplus attention with l1 normalization ([`softplus`]).
    Softplus,
    /// SOFT: Gaussian kernel, Nyström, Newton–Schulz ([`soft`]).
    Soft,
}

impl AttentionKind {
    /// Every kind.
    pub const ALL: [AttentionKind; 4] = [
        AttentionKind::Linear,
        AttentionKind::Sigmoid,
        AttentionKind::Softplus,
        AttentionKind::Soft,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            AttentionKind::Linear => "linear",
            AttentionKind::Sigmoid => "sigmoid",
            AttentionKind::Softplus => "softplus",
            AttentionKind::Soft => "soft",
        }
    }

    /// Whether the replacement's work grows linearly with the sequence
    /// length (quadratically otherwise, like softmax attention).
    pub fn is_linear_in_length(self) -> bool {
        matches!(self, AttentionKind::Linear | AttentionKind::Soft)
    }
}

impl fmt::Display for AttentionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for AttentionKind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<AttentionKind, String> {
        AttentionKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                format!("unknown attention kind `{s}` (expected linear, sigmoid, softplus or soft)")
            })
    }
}

/// How the `linear` kind is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LinearForm {
    /// Standard ops only (MatMul, CumSum, ...): runs everywhere. The default.
    #[default]
    Decomposed,
    /// ONNX-27 `LinearAttention` where it fits (causal self-attention
    /// without a mask), the decomposed form elsewhere. Needs a runtime with
    /// opset 27 (onnxruntime 1.32 runs it).
    LinearAttentionOp,
}

/// What to substitute and how to measure it.
#[derive(Clone, Debug)]
pub struct ApproxOptions {
    /// The replacement.
    pub kind: AttentionKind,
    /// The largest overall relative L2 error accepted; above it the
    /// substitution is refused. `None` accepts any error (it is still
    /// measured and reported).
    pub max_error: Option<f64>,
    /// Input sets to measure the error on, each a list of graph inputs by
    /// name (as `kiln_ir::interp::run` takes them).
    pub samples: Vec<Vec<(String, Tensor)>>,
    /// How many random input sets to draw when `samples` is empty.
    pub random_samples: usize,
    /// Seed of those random inputs.
    pub seed: u64,
    /// The symbol of the sequence length in the graph's shapes; when
    /// `None`, the key length of the first Attention node decides.
    pub seq_symbol: Option<String>,
    /// `S` for a symbolic sequence length: the size costs are reported at
    /// and random samples are drawn with. When `None`: the size the samples
    /// have, else [`crate::cost::DEFAULT_SYMBOL_SIZE`].
    pub seq_len: Option<i64>,
    /// The factor of the second cost point (8 for `8·S`).
    pub length_factor: i64,
    /// The target whose cost model weighs FLOPs and bytes into time.
    pub target: Target,
    /// `soft`: number of landmarks `m`.
    pub landmarks: usize,
    /// `soft`: Newton–Schulz iterations for the pseudo-inverse.
    pub newton_schulz_iterations: usize,
    /// `soft`: divide each row by its (approximated) kernel sum.
    pub soft_normalize: bool,
    /// `softplus`: the reference length `n_ref` of the length scale
    /// `log n / log n_ref`; `None` uses the model's `S`. Must exceed 1.
    pub softplus_reference_len: Option<f64>,
    /// `linear`: standard ops or `LinearAttention`.
    pub linear_form: LinearForm,
}

impl ApproxOptions {
    /// Defaults for `kind`: no error bound, two random input sets, costs at
    /// `S` and `8·S` on the CPU target, 16 landmarks, 20 Newton–Schulz
    /// iterations, row-normalized SOFT, the decomposed linear form.
    pub fn new(kind: AttentionKind) -> ApproxOptions {
        ApproxOptions {
            kind,
            max_error: None,
            samples: Vec::new(),
            random_samples: 2,
            seed: 0,
            seq_symbol: None,
            seq_len: None,
            length_factor: 8,
            target: Target::CPU,
            landmarks: 16,
            newton_schulz_iterations: 20,
            soft_normalize: true,
            softplus_reference_len: None,
            linear_form: LinearForm::Decomposed,
        }
    }
}

/// One Attention node that was replaced.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplacedNode {
    /// The Attention node's name.
    pub node: String,
    /// The form written (`decomposed`, `LinearAttention`, ...).
    pub form: String,
    /// It was causal.
    pub causal: bool,
    /// It had an attn_mask.
    pub masked: bool,
    /// Query heads per key/value head.
    pub group: i64,
}

/// One Attention node left exact, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct SkippedNode {
    /// The Attention node's name.
    pub node: String,
    /// Why no replacement fits.
    pub reason: String,
}

/// Error figures of one output, or of all outputs together.
#[derive(Clone, Debug, PartialEq)]
pub struct ErrorFigures {
    /// The graph output's name (`*` for all together).
    pub output: String,
    /// Largest `|approx − exact|`.
    pub max_abs: f64,
    /// `‖approx − exact‖₂ / ‖exact‖₂`.
    pub rel_l2: f64,
    /// `approx·exact / (‖approx‖‖exact‖)`.
    pub cosine: f64,
}

/// Cost of one graph at `S` and at `factor·S`.
#[derive(Clone, Debug, PartialEq)]
pub struct CostPoints {
    /// At the model's sequence length.
    pub at_s: GraphCost,
    /// At `factor·S`, when the graph could be re-typed there.
    pub at_scaled: Option<GraphCost>,
}

/// What [`substitute_attention`] did and measured.
#[derive(Clone, Debug, PartialEq)]
pub struct ApproxReport {
    /// The kind substituted.
    pub kind: AttentionKind,
    /// Nodes replaced, in graph order.
    pub replaced: Vec<ReplacedNode>,
    /// Attention nodes left exact.
    pub skipped: Vec<SkippedNode>,
    /// Input sets the error was measured on.
    pub samples: usize,
    /// Per graph output, in output order (empty when nothing was replaced).
    pub output_errors: Vec<ErrorFigures>,
    /// All outputs together; `None` when nothing was replaced.
    pub error: Option<ErrorFigures>,
    /// The bound asked for.
    pub max_error: Option<f64>,
    /// The substitution was refused: the error exceeds `max_error`, and the
    /// graph returned is the exact one.
    pub refused: bool,
    /// The symbol taken as the sequence length (`None` when the graph had
    /// no Attention node to find it from).
    pub seq_symbol: Option<String>,
    /// `S`.
    pub seq_len: i64,
    /// The second cost point's factor.
    pub length_factor: i64,
    /// The exact graph's cost.
    pub before: CostPoints,
    /// The approximate graph's cost.
    pub after: CostPoints,
    /// Why the scaled cost point is missing, when it is.
    pub scaling_note: Option<String>,
}

impl ApproxReport {
    /// True when the measured error is above [`ApproxOptions::max_error`]
    /// (or not finite while a bound was set); callers exit non-zero then.
    pub fn exceeds_max_error(&self) -> bool {
        match (self.max_error, &self.error) {
            (Some(bound), Some(e)) => !(e.rel_l2.is_finite() && e.rel_l2 <= bound),
            _ => false,
        }
    }
}

fn fmt_count(x: f64) -> String {
    let units = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")];
    for (scale, unit) in units {
        if x.abs() >= scale {
            return format!("{:.2}{unit}", x / scale);
        }
    }
    format!("{x:.0}")
}

impl fmt::Display for ApproxReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "attention → {}: {} replaced, {} left exact",
            self.kind,
            self.replaced.len(),
            self.skipped.len()
        )?;
        for r in &self.replaced {
            let mut traits = vec![r.form.clone()];
            if r.causal {
                traits.push("causal".into());
            }
            if r.masked {
                traits.push("masked".into());
            }
            if r.group > 1 {
                traits.push(format!("{} query heads per kv head", r.group));
            }
            writeln!(f, "  {}: {}", r.node, traits.join(", "))?;
        }
        for s in &self.skipped {
            writeln!(f, "  {} left exact: {}", s.node, s.reason)?;
        }
        if let Some(e) = &self.error {
            writeln!(
                f,
                "error on {} sample(s): max abs {:.3e}, relative L2 {:.3e}, cosine {:.6}",
                self.samples, e.max_abs, e.rel_l2, e.cosine
            )?;
            if self.output_errors.len() > 1 {
                for o in &self.output_errors {
                    writeln!(
                        f,
                        "  {}: max abs {:.3e}, relative L2 {:.3e}, cosine {:.6}",
                        o.output, o.max_abs, o.rel_l2, o.cosine
                    )?;
                }
            }
        }
        if let Some(bound) = self.max_error {
            let verdict = if self.exceeds_max_error() {
                "exceeds"
            } else {
                "within"
            };
            writeln!(
                f,
                "{verdict} --max-error {bound:.3e}{}",
                if self.refused {
                    ": refused, graph left exact"
                } else {
                    ""
                }
            )?;
        }
        let sym = self.seq_symbol.as_deref().unwrap_or("S");
        let line = |f: &mut fmt::Formatter<'_>, at: &str, b: &GraphCost, a: &GraphCost| {
            writeln!(
                f,
                "  {at}: FLOPs {} → {} ({:.2}x), bytes {} → {}, peak {} → {}",
                fmt_count(b.flops),
                fmt_count(a.flops),
                a.flops / b.flops.max(1.0),
                fmt_count(b.bytes),
                fmt_count(a.bytes),
                fmt_count(b.peak_bytes),
                fmt_count(a.peak_bytes)
            )
        };
        writeln!(f, "cost ({} = {}):", sym, self.seq_len)?;
        line(
            f,
            &format!("{sym}={}", self.seq_len),
            &self.before.at_s,
            &self.after.at_s,
        )?;
        match (&self.before.at_scaled, &self.after.at_scaled) {
            (Some(b), Some(a)) => line(
                f,
                &format!("{sym}={}", self.seq_len * self.length_factor),
                b,
                a,
            )?,
            _ => {
                if let Some(n) = &self.scaling_note {
                    writeln!(f, "  {}x{sym}: not available ({n})", self.length_factor)?;
                }
            }
        }
        Ok(())
    }
}

/// Replaces the graph's Attention nodes by `opts.kind`, measures the error
/// and the cost, and returns the new graph with the report.
///
/// The input graph is typed first if it is not. When the measured error
/// exceeds [`ApproxOptions::max_error`], the returned graph is the exact
/// one and [`ApproxReport::refused`] is set. A graph without Attention
/// nodes comes back unchanged with an empty report.
pub fn substitute_attention(graph: &Graph, opts: &ApproxOptions) -> Result<(Graph, ApproxReport)> {
    if opts.landmarks == 0 {
        return Err(IrError::Model(
            "approximate attention: landmarks must be at least 1".into(),
        ));
    }
    if opts.length_factor < 1 {
        return Err(IrError::Model(
            "approximate attention: the length factor must be at least 1".into(),
        ));
    }
    if let Some(bound) = opts.max_error {
        if bound.is_nan() || bound < 0.0 {
            return Err(IrError::Model(format!(
                "approximate attention: max error {bound} is not a non-negative number"
            )));
        }
    }
    let mut exact = graph.clone();
    if exact.value_ids().any(|v| exact.value(v).ty.is_none()) {
        kiln_ir::infer_types(&mut exact)?;
    }
    let seq = measure::find_sequence(&exact, opts);
    let seq_len = seq
        .as_ref()
        .map_or(crate::cost::DEFAULT_SYMBOL_SIZE, |s| s.len);

    let mut approx = exact.clone();
    let mut replaced = Vec::new();
    let mut skipped = Vec::new();
    for id in exact.topo_order()? {
        if !matches!(exact.node(id).op, Op::Attention(_)) {
            continue;
        }
        let name = exact.node(id).name.clone();
        let site = match Site::read(&exact, id)? {
            Ok(site) => site,
            Err(reason) => {
                skipped.push(SkippedNode { node: name, reason });
                continue;
            }
        };
        if let Some(reason) = refusal(&site, opts.kind) {
            skipped.push(SkippedNode { node: name, reason });
            continue;
        }
        let node_id = approx
            .node_by_name(&name)
            .expect("the approximate graph is a copy of the exact one");
        let y = approx
            .node(node_id)
            .output(0)
            .ok_or_else(|| IrError::node(&name, "Attention", "output Y is omitted"))?;
        approx.remove_node(node_id);
        let mut b = Builder::new(&mut approx, &format!("{name}.{}", opts.kind), site.dtype);
        b.result = Some(y);
        let form = build(&mut b, &site, opts, seq_len)?;
        replaced.push(ReplacedNode {
            node: name,
            form,
            causal: site.attrs.is_causal,
            masked: site.mask.is_some(),
            group: site.q_heads / site.kv_heads,
        });
    }
    if replaced.is_empty() {
        let report = measure::unchanged_report(&exact, opts, seq, skipped);
        return Ok((exact, report));
    }
    kiln_ir::infer_types(&mut approx)?;
    kiln_ir::verify(&approx)?;
    let mut report = measure::measure(&exact, &approx, opts, seq, replaced, skipped)?;
    if report.exceeds_max_error() {
        report.refused = true;
        return Ok((exact, report));
    }
    Ok((approx, report))
}

/// Why `kind` cannot stand in for this node, beyond what [`Site::read`]
/// checks for every kind.
fn refusal(site: &Site, kind: AttentionKind) -> Option<String> {
    if let Some(reason) = site.mask_skip() {
        return Some(reason);
    }
    match kind {
        AttentionKind::Linear => linear::check(site, site.mask_is_key_only()),
        AttentionKind::Soft => soft::check(site, site.mask_is_key_only()),
        AttentionKind::Sigmoid | AttentionKind::Softplus => None,
    }
}

/// Builds one replacement; returns the form's name for the report.
fn build(b: &mut Builder, site: &Site, opts: &ApproxOptions, seq_len: i64) -> Result<String> {
    if opts.kind == AttentionKind::Linear
        && opts.linear_form == LinearForm::LinearAttentionOp
        && linear::fits_linear_attention_op(site)
    {
        linear::emit_linear_attention_op(b, site)?;
        return Ok("LinearAttention".into());
    }
    let heads = site.heads(b)?;
    let y = match opts.kind {
        AttentionKind::Linear => linear::build(b, site, &heads)?,
        AttentionKind::Sigmoid => sigmoid::build(b, site, &heads)?,
        AttentionKind::Softplus => {
            let reference = opts
                .softplus_reference_len
                .unwrap_or(match site.kv_len.fixed() {
                    Some(n) => n as f64,
                    None => seq_len as f64,
                });
            if reference.is_nan() || reference <= 1.0 {
                return Err(IrError::Model(format!(
                    "approximate attention: the softplus reference length must exceed 1, found {reference}"
                )));
            }
            softplus::build(b, site, &heads, reference)?
        }
        AttentionKind::Soft => soft::build(
            b,
            site,
            &heads,
            opts.landmarks,
            opts.newton_schulz_iterations,
            opts.soft_normalize,
        )?,
    };
    site.unheads(b, y, &heads)?;
    Ok(match opts.kind {
        AttentionKind::Linear if site.attrs.is_causal => "decomposed, prefix sums".into(),
        AttentionKind::Soft => format!(
            "Nyström, {} landmarks",
            opts.landmarks
                .min(site.kv_len.fixed().map_or(usize::MAX, |n| n as usize))
        ),
        _ => "decomposed".into(),
    })
}
