//! Measuring a substitution: output error on sample inputs, and cost at the
//! model's sequence length `S` and at `factor·S`.
//!
//! # Finding `S`
//!
//! The sequence length is the key length of the first Attention node (in
//! graph order), unless [`ApproxOptions::seq_symbol`] names it.
//!
//! - Symbolic (`seq`): costs bind the symbol to `S` and to `factor·S` with
//!   [`CostModel::bind`]. `S` is [`ApproxOptions::seq_len`], else the size
//!   that axis has in the first sample, else
//!   [`crate::cost::DEFAULT_SYMBOL_SIZE`].
//! - Fixed (`128`): there is nothing to bind, so the graph is *re-typed*:
//!   every graph-input dim equal to `S` becomes a fresh symbol, the types of
//!   all computed values are dropped, and inference runs again, so the
//!   symbol flows through every shape that derives from the sequence. Then
//!   the symbol is bound as above. This is a heuristic with two failure
//!   modes, both reported in [`ApproxReport::scaling_note`] rather than
//!   guessed around: an unrelated input dim that happens to equal `S`
//!   (it is scaled too, and inference usually rejects the result), and a
//!   sequence length baked into constants (a Reshape to `[1, 128, ...]`),
//!   which makes inference fail at `factor·S`.

use super::{ApproxOptions, ApproxReport, CostPoints, ErrorFigures, ReplacedNode, SkippedNode};
use crate::cost::{CostModel, DEFAULT_SYMBOL_SIZE};
use kiln_ir::dim::Dim;
use kiln_ir::dtype::DType;
use kiln_ir::graph::Graph;
use kiln_ir::op::Op;
use kiln_ir::tensor::Tensor;
use kiln_ir::{IrError, Result};

/// The sequence length of a graph, as the substitution found it.
#[derive(Clone, Debug)]
pub struct Sequence {
    /// The symbol (an existing one, or the one introduced to re-type a
    /// fixed length).
    pub symbol: String,
    /// `S`.
    pub len: i64,
    /// `S` is fixed in the graph's shapes, so scaling needs re-typing.
    pub fixed: bool,
}

/// The symbol introduced for a fixed sequence length.
const FIXED_SEQ_SYMBOL: &str = "S";

/// Finds the sequence length (module docs).
pub fn find_sequence(g: &Graph, opts: &ApproxOptions) -> Option<Sequence> {
    if let Some(sym) = &opts.seq_symbol {
        let len = opts
            .seq_len
            .or_else(|| sample_size_of(g, opts, sym))
            .unwrap_or(DEFAULT_SYMBOL_SIZE);
        return Some(Sequence {
            symbol: sym.clone(),
            len,
            fixed: false,
        });
    }
    let node = g
        .node_ids()
        .into_iter()
        .find(|&n| matches!(g.node(n).op, Op::Attention(_)))?;
    let k = g.node(node).input(1)?;
    let kt = g.value(k).ty.as_ref()?;
    let dim = match kt.rank() {
        4 => kt.shape.get(2)?,
        3 => kt.shape.get(1)?,
        _ => return None,
    };
    match dim {
        Dim::Fixed(n) => Some(Sequence {
            symbol: fresh_symbol(g),
            len: *n as i64,
            fixed: true,
        }),
        Dim::Sym(p) => {
            let syms = p.symbols();
            if syms.len() != 1 || Dim::sym(&syms[0]) != *dim {
                return None;
            }
            let sym = syms[0].to_string();
            let len = opts
                .seq_len
                .or_else(|| sample_size_of(g, opts, &sym))
                .unwrap_or(DEFAULT_SYMBOL_SIZE);
            Some(Sequence {
                symbol: sym,
                len,
                fixed: false,
            })
        }
    }
}

/// A symbol name no shape of `g` uses.
fn fresh_symbol(g: &Graph) -> String {
    let used: std::collections::BTreeSet<String> = g
        .value_ids()
        .filter_map(|v| g.value(v).ty.as_ref())
        .flat_map(|t| t.shape.iter())
        .flat_map(|d| match d {
            Dim::Sym(p) => p.symbols().into_iter().map(|s| s.to_string()).collect(),
            Dim::Fixed(_) => Vec::new(),
        })
        .collect();
    (0..)
        .map(|i| {
            if i == 0 {
                FIXED_SEQ_SYMBOL.to_string()
            } else {
                format!("{FIXED_SEQ_SYMBOL}{i}")
            }
        })
        .find(|s| !used.contains(s))
        .expect("some symbol is free")
}

/// The size `symbol` has in the first sample, from the first graph input
/// whose type mentions it as a whole dim.
fn sample_size_of(g: &Graph, opts: &ApproxOptions, symbol: &str) -> Option<i64> {
    let sample = opts.samples.first()?;
    for &v in g.inputs() {
        let val = g.value(v);
        let Some(ty) = &val.ty else { continue };
        let Some(axis) = ty.shape.iter().position(|d| *d == Dim::sym(symbol)) else {
            continue;
        };
        if let Some((_, t)) = sample.iter().find(|(n, _)| *n == val.name) {
            return t.shape().get(axis).map(|&n| n as i64);
        }
    }
    None
}

/// The report for a graph where nothing was replaced.
pub(crate) fn unchanged_report(
    g: &Graph,
    opts: &ApproxOptions,
    seq: Option<Sequence>,
    skipped: Vec<SkippedNode>,
) -> ApproxReport {
    let (before, note) = costs(g, opts, seq.as_ref());
    ApproxReport {
        kind: opts.kind,
        replaced: Vec::new(),
        skipped,
        samples: 0,
        output_errors: Vec::new(),
        error: None,
        max_error: opts.max_error,
        refused: false,
        seq_symbol: seq.as_ref().map(|s| s.symbol.clone()),
        seq_len: seq.as_ref().map_or(DEFAULT_SYMBOL_SIZE, |s| s.len),
        length_factor: opts.length_factor,
        after: before.clone(),
        before,
        scaling_note: note,
    }
}

/// Measures error and cost of `approx` against `exact`.
pub(crate) fn measure(
    exact: &Graph,
    approx: &Graph,
    opts: &ApproxOptions,
    seq: Option<Sequence>,
    replaced: Vec<ReplacedNode>,
    skipped: Vec<SkippedNode>,
) -> Result<ApproxReport> {
    let samples = if opts.samples.is_empty() {
        (0..opts.random_samples as u64)
            .map(|i| random_inputs(exact, opts.seed.wrapping_add(i), seq.as_ref()))
            .collect::<Result<Vec<_>>>()?
    } else {
        opts.samples.clone()
    };
    let (output_errors, error) = compare(exact, approx, &samples)?;
    let (before, note_before) = costs(exact, opts, seq.as_ref());
    let (after, note_after) = costs(approx, opts, seq.as_ref());
    Ok(ApproxReport {
        kind: opts.kind,
        replaced,
        skipped,
        samples: samples.len(),
        output_errors,
        error,
        max_error: opts.max_error,
        refused: false,
        seq_symbol: seq.as_ref().map(|s| s.symbol.clone()),
        seq_len: seq.as_ref().map_or(DEFAULT_SYMBOL_SIZE, |s| s.len),
        length_factor: opts.length_factor,
        before,
        after,
        scaling_note: note_before.or(note_after),
    })
}

/// Running sums for the error figures of one output or of all.
#[derive(Default)]
struct Sums {
    max_abs: f64,
    diff2: f64,
    exact2: f64,
    approx2: f64,
    dot: f64,
    nan: bool,
}

impl Sums {
    fn add(&mut self, exact: &[f64], approx: &[f64]) {
        for (&e, &a) in exact.iter().zip(approx) {
            let d = a - e;
            if d.is_nan() && !(a.is_nan() && e.is_nan()) {
                self.nan = true;
            }
            self.max_abs = self.max_abs.max(d.abs());
            self.diff2 += d * d;
            self.exact2 += e * e;
            self.approx2 += a * a;
            self.dot += a * e;
        }
    }

    fn figures(&self, output: &str) -> ErrorFigures {
        let rel_l2 = if self.exact2 > 0.0 {
            (self.diff2 / self.exact2).sqrt()
        } else {
            self.diff2.sqrt()
        };
        let denom = (self.exact2 * self.approx2).sqrt();
        let cosine = if denom > 0.0 {
            self.dot / denom
        } else if self.diff2 == 0.0 {
            1.0
        } else {
            0.0
        };
        let bad = |x: f64| if self.nan { f64::NAN } else { x };
        ErrorFigures {
            output: output.to_string(),
            max_abs: bad(self.max_abs),
            rel_l2: bad(rel_l2),
            cosine: bad(cosine),
        }
    }
}

/// Runs both graphs on every sample and compares outputs pairwise.
fn compare(
    exact: &Graph,
    approx: &Graph,
    samples: &[Vec<(String, Tensor)>],
) -> Result<(Vec<ErrorFigures>, Option<ErrorFigures>)> {
    let names: Vec<String> = exact
        .outputs()
        .iter()
        .map(|&v| exact.value(v).name.clone())
        .collect();
    let mut per_output: Vec<Sums> = names.iter().map(|_| Sums::default()).collect();
    let mut all = Sums::default();
    for sample in samples {
        let want = kiln_ir::interp::run(exact, sample)?;
        let got = kiln_ir::interp::run(approx, sample)?;
        if want.len() != got.len() || want.len() != names.len() {
            return Err(IrError::Model(format!(
                "approximate attention: the exact graph gave {} outputs and the approximate one {}",
                want.len(),
                got.len()
            )));
        }
        for (i, ((name, w), (_, a))) in want.iter().zip(&got).enumerate() {
            if w.shape() != a.shape() {
                return Err(IrError::value(
                    name,
                    format!(
                        "approximate output has shape {:?}, exact {:?}",
                        a.shape(),
                        w.shape()
                    ),
                ));
            }
            let (wv, av) = (w.to_f64s(), a.to_f64s());
            per_output[i].add(&wv, &av);
            all.add(&wv, &av);
        }
    }
    if samples.is_empty() {
        return Ok((Vec::new(), None));
    }
    let figures = names
        .iter()
        .zip(&per_output)
        .map(|(n, s)| s.figures(n))
        .collect();
    Ok((figures, Some(all.figures("*"))))
}

/// Deterministic inputs for every graph input without an initializer:
/// floats uniform in [-1, 1), integers in [0, 4), booleans fair; the
/// sequence symbol takes `S`, other symbols 2.
fn random_inputs(g: &Graph, seed: u64, seq: Option<&Sequence>) -> Result<Vec<(String, Tensor)>> {
    let mut state = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(0x2545_F491_4F6C_DD1D);
    let mut next = move || {
        // splitmix64: a full-period generator good enough for test inputs.
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut out = Vec::new();
    for &v in g.inputs() {
        let val = g.value(v);
        if val.initializer.is_some() {
            continue;
        }
        let ty = g.ty(v)?;
        let bind = |s: &str| {
            Some(if seq.is_some_and(|q| q.symbol == s) {
                seq.map_or(2, |q| q.len)
            } else {
                2
            })
        };
        let shape: Vec<usize> = ty
            .shape
            .iter()
            .map(|d| d.eval(&bind).map(|n| n.max(0) as usize))
            .collect::<Option<_>>()
            .ok_or_else(|| {
                IrError::value(&val.name, format!("cannot size {ty} for a random sample"))
            })?;
        let n: usize = shape.iter().product();
        let t = if ty.dtype.is_float() {
            let xs: Vec<f64> = (0..n)
                .map(|_| (next() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0)
                .collect();
            Tensor::from_f64s(ty.dtype, &shape, &xs)
        } else if ty.dtype == DType::Bool {
            let xs: Vec<i64> = (0..n).map(|_| (next() & 1) as i64).collect();
            Tensor::from_i64s(ty.dtype, &shape, &xs)
        } else {
            let xs: Vec<i64> = (0..n).map(|_| (next() % 4) as i64).collect();
            Tensor::from_i64s(ty.dtype, &shape, &xs)
        };
        out.push((val.name.clone(), t));
    }
    Ok(out)
}

/// Cost at `S` and at `factor·S`, with the reason when the second is missing.
fn costs(g: &Graph, opts: &ApproxOptions, seq: Option<&Sequence>) -> (CostPoints, Option<String>) {
    let Some(seq) = seq else {
        let at_s = CostModel::new(opts.target).graph_cost(g);
        return (
            CostPoints {
                at_s,
                at_scaled: None,
            },
            Some("no sequence length found".into()),
        );
    };
    let scaled_len = seq.len.saturating_mul(opts.length_factor);
    if !seq.fixed {
        let at = |len: i64| CostModel::new(opts.target).bind(&seq.symbol, len).graph_cost(g);
        return (
            CostPoints {
                at_s: at(seq.len),
                at_scaled: Some(at(scaled_len)),
            },
            None,
        );
    }
    let at_s = CostModel::new(opts.target).graph_cost(g);
    match retype(g, seq) {
        Ok(sym) => {
            let at_scaled = CostModel::new(opts.target)
                .bind(&seq.symbol, scaled_len)
                .graph_cost(&sym);
            (
                CostPoints {
                    at_s,
                    at_scaled: Some(at_scaled),
                },
                None,
            )
        }
        Err(why) => (
            CostPoints {
                at_s,
                at_scaled: None,
            },
            Some(why),
        ),
    }
}

/// `g` with every graph-input dim equal to `S` made symbolic and all
/// computed types inferred again (module docs).
fn retype(g: &Graph, seq: &Sequence) -> std::result::Result<Graph, String> {
    let mut out = g.clone();
    let target = Dim::Fixed(seq.len as u64);
    for v in out.inputs().to_vec() {
        if out.value(v).initializer.is_some() {
            continue;
        }
        if let Some(ty) = &mut out.value_mut(v).ty {
            for d in &mut ty.shape {
                if *d == target {
                    *d = Dim::sym(&seq.symbol);
                }
            }
        }
    }
    for v in out.value_ids().collect::<Vec<_>>() {
        if out.value(v).producer().is_some() {
            out.value_mut(v).ty = None;
        }
    }
    kiln_ir::infer_types(&mut out).map_err(|e| {
        format!(
            "re-typing with the sequence length {} as `{}` failed: {e}",
            seq.len, seq.symbol
        )
    })?;
    Ok(out)
}

