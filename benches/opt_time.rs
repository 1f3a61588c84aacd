//! How long kiln's `-O2` pipeline takes on GPT-2-small-shaped graphs of
//! growing depth (issue 3, "What it must show", point 4: 12 layers in at
//! most 2 s and 48 layers in at most 10 s on one core, growing about
//! linearly).
//!
//! The graphs are the example GPT-2 of `examples/models/make_models.py` at
//! GPT-2-small width: `--d-model 768 --heads 12 --vocab 50257 --max-pos
//! 1024`, symbolic `batch` and `seq`, real random weights as initializers
//! (so the optimizer sees weights of the real size), in one or both export
//! styles (`gpt2_unfused`: the torch.onnx style with Shape/Gather/Concat
//! chains and Constant nodes; `gpt2_fused`: opset 23 with
//! LayerNormalization, Gemm and SoftmaxCrossEntropyLoss). They are written
//! once under `target/bench-models/` (override with `KILN_BENCH_MODELS`)
//! and regenerated only when the generator or its flags change; all depths
//! and both styles take about 7.2 GB of disk (the 48-layer models 1.5 GB
//! each) and about 8 minutes to write on a busy machine. Generation needs
//! the Python of `KILN_PYTHON` (or `.venv/bin/python`) with `onnx` and
//! NumPy.
//!
//! Per model it loads the file once (ONNX import, type inference and
//! verification, timed separately) and then runs
//! `kiln_passes::manager::optimize` with `Pipeline::level(OptLevel::O2)`
//! `--runs` times (default 9), reporting the median of the thread's CPU
//! time (`CLOCK_THREAD_CPUTIME_ID`), which is what "on one core" means and
//! what a busy shared machine distorts least; the median wall time is shown
//! beside it. The targets, the fitted line and the curve use CPU time. The
//! phase columns (saturation, extraction with the graph rebuild, the rest)
//! come from the report's wall timings, the fastest run of each.
//!
//! Whatever `-O2` holds when the bench is built is what it measures; the
//! bench lists the op types it introduced per depth, and a pass stopped by a
//! saturation limit is flagged, since its time then says little about the
//! rules. The whole bench is single-threaded (kiln-ir, kiln-passes and egg
//! start no threads).
//!
//! Run: `cargo bench --bench opt_time`. Options after `--`:
//! `--depths 1,2,4,6,12,24,48`, `--runs 9`, `--styles unfused,fused`.

use kiln_ir::graph::Graph;
use kiln_passes::manager::{optimize, OptLevel, Pipeline, Report};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

const D_MODEL: usize = 768;
const HEADS: usize = 12;
const VOCAB: usize = 50257;
const MAX_POS: usize = 1024;
/// Sequence length of the generator's (unused) test inputs; the graphs'
/// `batch` and `seq` stay symbolic.
const SEQ: usize = 128;
/// The issue's targets: (layers, seconds).
const TARGETS: [(usize, f64); 2] = [(12, 2.0), (48, 10.0)];

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn models_root() -> PathBuf {
    std::env::var_os("KILN_BENCH_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/bench-models"))
}

/// The generator flags of one depth (both styles share them).
fn generator_flags(layers: usize) -> Vec<String> {
    [
        "--only",
        "gpt2_fused",
        "gpt2_unfused",
        "--layers",
        &layers.to_string(),
        "--d-model",
        &D_MODEL.to_string(),
        "--heads",
        &HEADS.to_string(),
        "--vocab",
        &VOCAB.to_string(),
        "--seq",
        &SEQ.to_string(),
        "--max-pos",
        &MAX_POS.to_string(),
        "--no-check",
        "--no-test-data",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Writes both GPT-2 export styles of `layers` layers under
/// `target/bench-models/gpt2-L{layers}/` unless a stamp says the same
/// generator already wrote them with the same flags. Returns the directory.
fn ensure_models(layers: usize) -> Result<PathBuf, String> {
    let dir = models_root().join(format!("gpt2-L{layers}"));
    let script = repo_root().join("examples/models/make_models.py");
    let source =
        std::fs::read(&script).map_err(|e| format!("cannot read {}: {e}", script.display()))?;
    let flags = generator_flags(layers);
    let mut h = DefaultHasher::new();
    source.hash(&mut h);
    let stamp_text = format!("make_models.py {:016x} {}\n", h.finish(), flags.join(" "));
    let stamp = dir.join(".stamp");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(stamp_text.as_str()) {
        return Ok(dir);
    }
    let python = kiln_test_support::python()
        .ok_or("no Python to generate the models: set KILN_PYTHON or run `make venv`")?;
    // A half-written set must not pass for a finished one.
    let _ = std::fs::remove_file(&stamp);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    eprintln!(
        "generating the {layers}-layer models in {} (once) ...",
        dir.display()
    );
    let start = Instant::now();
    let status = Command::new(&python)
        .arg(&script)
        .arg("--out")
        .arg(&dir)
        .args(&flags)
        .status()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !status.success() {
        return Err(format!(
            "make_models.py failed for {layers} layers ({status})"
        ));
    }
    std::fs::write(&stamp, stamp_text)
        .map_err(|e| format!("cannot write {}: {e}", stamp.display()))?;
    eprintln!("  done in {:.1} s", start.elapsed().as_secs_f64());
    Ok(dir)
}

/// CPU time of the calling thread, in seconds.
fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "CLOCK_THREAD_CPUTIME_ID is available on Linux");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// One depth's measurements.
struct Row {
    layers: usize,
    nodes: usize,
    load_s: f64,
    /// Median CPU time of `optimize`.
    median_s: f64,
    /// Median wall time of `optimize`.
    wall_s: f64,
    /// Fastest wall time over the runs of each phase: saturation,
    /// extraction (with the rebuild of the graph), and the rest
    /// (conversion, costs, verification). The fastest run of a phase is the
    /// one least disturbed by other processes.
    phases: Phases,
    enodes: usize,
    iterations: usize,
    limit: Option<String>,
    fused: String,
}

/// Wall seconds per phase of one `optimize` call.
#[derive(Clone, Copy)]
struct Phases {
    saturate: f64,
    extract: f64,
    other: f64,
}

impl Phases {
    fn of(report: &Report, wall: f64) -> Phases {
        let saturate: f64 = report.passes.iter().map(|p| p.seconds).sum();
        let extract = report.extract_seconds;
        Phases {
            saturate,
            extract,
            other: (wall - saturate - extract).max(0.0),
        }
    }

    fn min(self, o: Phases) -> Phases {
        Phases {
            saturate: self.saturate.min(o.saturate),
            extract: self.extract.min(o.extract),
            other: self.other.min(o.other),
        }
    }
}

/// What `--runs` calls of `optimize` measured.
struct Runs {
    /// Median CPU time.
    cpu_s: f64,
    /// Median wall time.
    wall_s: f64,
    /// Fastest wall time of each phase.
    phases: Phases,
    /// The report of the median-CPU run (they all agree but for timings).
    report: Report,
}

/// Runs `-O2` `runs` times.
fn time_runs(graph: &Graph, runs: usize) -> Result<Runs, String> {
    let pipeline = Pipeline::level(OptLevel::O2);
    let mut timed: Vec<(f64, Report)> = Vec::with_capacity(runs);
    let mut walls = Vec::with_capacity(runs);
    let mut phases: Option<Phases> = None;
    for _ in 0..runs {
        let start = Instant::now();
        let cpu_start = thread_cpu_seconds();
        let (out, report) = optimize(graph, &pipeline).map_err(|e| format!("-O2 failed: {e}"))?;
        let cpu = thread_cpu_seconds() - cpu_start;
        let wall = start.elapsed().as_secs_f64();
        // The optimized graph is dropped outside the timed region on purpose:
        // freeing it is not optimization.
        drop(out);
        walls.push(wall);
        let this = Phases::of(&report, wall);
        phases = Some(phases.map_or(this, |p| p.min(this)));
        timed.push((cpu, report));
    }
    timed.sort_by(|a, b| a.0.total_cmp(&b.0));
    walls.sort_by(f64::total_cmp);
    let (cpu_s, report) = timed.swap_remove(runs / 2);
    Ok(Runs {
        cpu_s,
        wall_s: walls[runs / 2],
        phases: phases.expect("at least one run"),
        report,
    })
}

fn measure(path: &Path, layers: usize, runs: usize) -> Result<Row, String> {
    let start = Instant::now();
    let graph = kiln_ir::io::load(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let load_s = start.elapsed().as_secs_f64();
    let Runs {
        cpu_s,
        wall_s,
        phases,
        report,
    } = time_runs(&graph, runs)?;
    let limit = report
        .passes
        .iter()
        .filter(|p| p.stop.is_limit())
        .map(|p| format!("{}: {}", p.name, p.stop))
        .collect::<Vec<_>>();
    // Op types that -O2 introduced, whatever rules it has by now.
    let fused = report
        .ops_after
        .iter()
        .filter(|(op, _)| !report.ops_before.contains_key(*op))
        .map(|(op, n)| format!("{op} x{n}"))
        .collect::<Vec<_>>();
    Ok(Row {
        layers,
        nodes: graph.node_count(),
        load_s,
        median_s: cpu_s,
        wall_s,
        phases,
        enodes: report.passes.last().map_or(0, |p| p.egraph_nodes),
        iterations: report.passes.iter().map(|p| p.iterations).sum(),
        limit: (!limit.is_empty()).then(|| limit.join("; ")),
        fused: if fused.is_empty() {
            "none".into()
        } else {
            fused.join(", ")
        },
    })
}

/// Least-squares `t = slope * layers + intercept`.
fn fit(rows: &[Row]) -> (f64, f64) {
    let n = rows.len() as f64;
    let mx = rows.iter().map(|r| r.layers as f64).sum::<f64>() / n;
    let my = rows.iter().map(|r| r.median_s).sum::<f64>() / n;
    let sxx: f64 = rows.iter().map(|r| (r.layers as f64 - mx).powi(2)).sum();
    let sxy: f64 = rows
        .iter()
        .map(|r| (r.layers as f64 - mx) * (r.median_s - my))
        .sum();
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    (slope, my - slope * mx)
}

/// Time against depth as text: `*` measured medians, `.` the fitted line.
fn ascii_curve(rows: &[Row], slope: f64, intercept: f64) -> String {
    const W: usize = 60;
    const H: usize = 16;
    let max_x = rows.iter().map(|r| r.layers).max().unwrap_or(1).max(1) as f64;
    let max_y = rows
        .iter()
        .map(|r| r.median_s)
        .fold(0.0, f64::max)
        .max(intercept + slope * max_x)
        .max(1e-9);
    let mut grid = vec![vec![' '; W + 1]; H + 1];
    let cell = |x: f64, y: f64| -> (usize, usize) {
        let col = ((x / max_x) * W as f64).round().clamp(0.0, W as f64) as usize;
        let row = H - ((y / max_y) * H as f64).round().clamp(0.0, H as f64) as usize;
        (row, col)
    };
    for col in 0..=W {
        let x = col as f64 / W as f64 * max_x;
        let (row, c) = cell(x, (intercept + slope * x).max(0.0));
        grid[row][c] = '.';
    }
    for r in rows {
        let (row, c) = cell(r.layers as f64, r.median_s);
        grid[row][c] = '*';
    }
    let mut out = String::new();
    for (i, line) in grid.iter().enumerate() {
        let label = if i == 0 {
            format!("{max_y:>7.3} s |")
        } else if i == H {
            format!("{:>7.3} s |", 0.0)
        } else {
            "          |".to_string()
        };
        out.push_str(&label);
        out.extend(line.iter());
        out.push('\n');
    }
    out.push_str(&format!("          +{}\n", "-".repeat(W + 1)));
    out.push_str(&format!(
        "           0{:>w$}\n",
        format!("{} layers", max_x as usize),
        w = W
    ));
    out
}

/// The value after `flag` on the command line.
fn arg_value(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn parse_list(s: &str) -> Option<Vec<usize>> {
    s.split(',')
        .map(|x| x.trim().parse().ok().filter(|&n: &usize| n >= 1))
        .collect()
}

fn report_style(style: &str, rows: &[Row], runs: usize) {
    println!();
    println!("### GPT-2-small-shaped (d 768, 12 heads, V 50257), `gpt2_{style}` export, `-O2`, median of {runs} run(s)");
    println!();
    println!("| layers | graph nodes | e-nodes | iterations | load (s) | optimize CPU (ms) | per layer (ms) | wall (ms) | saturation / extraction / other, fastest (ms) | limit hit |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {:.2} | {:.1} | {:.2} | {:.1} | {:.1} / {:.1} / {:.1} | {} |",
            r.layers,
            r.nodes,
            r.enodes,
            r.iterations,
            r.load_s,
            r.median_s * 1e3,
            r.median_s / r.layers as f64 * 1e3,
            r.wall_s * 1e3,
            r.phases.saturate * 1e3,
            r.phases.extract * 1e3,
            r.phases.other * 1e3,
            r.limit.as_deref().unwrap_or("no")
        );
    }
    println!();
    for r in rows {
        println!("{} layers: op types -O2 introduced: {}", r.layers, r.fused);
    }
    let (slope, intercept) = fit(rows);
    println!();
    println!(
        "fitted line (least squares, CPU time): t = {:.2} ms/layer x layers {} {:.1} ms",
        slope * 1e3,
        if intercept < 0.0 { "-" } else { "+" },
        intercept.abs() * 1e3
    );
    let at = |l: usize| rows.iter().find(|r| r.layers == l).map(|r| r.median_s);
    if let (Some(t12), Some(t48)) = (at(12), at(48)) {
        println!("time(48) / time(12) = {:.2} (4.00 if linear)", t48 / t12);
    }
    for (layers, limit) in TARGETS {
        match at(layers) {
            Some(t) => println!(
                "target: {layers} layers <= {limit} s on one core: {} ({t:.3} s CPU, {:.1}% of the budget)",
                if t <= limit { "holds" } else { "DOES NOT HOLD" },
                t / limit * 100.0
            ),
            None => println!("target: {layers} layers <= {limit} s: not measured (add {layers} to --depths)"),
        }
    }
    println!();
    println!("```");
    print!("{}", ascii_curve(rows, slope, intercept));
    println!("```");
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let depths = match parse_list(
        &arg_value(&args, "--depths").unwrap_or_else(|| "1,2,4,6,12,24,48".into()),
    ) {
        Some(d) if !d.is_empty() => d,
        _ => {
            eprintln!("--depths takes a comma-separated list of positive layer counts");
            return ExitCode::FAILURE;
        }
    };
    let runs = match arg_value(&args, "--runs").map(|r| r.parse::<usize>()) {
        None => 9,
        Some(Ok(r)) if r >= 1 => r,
        Some(_) => {
            eprintln!("--runs takes a positive number");
            return ExitCode::FAILURE;
        }
    };
    let styles_arg = arg_value(&args, "--styles").unwrap_or_else(|| "unfused,fused".into());
    let styles: Vec<&str> = styles_arg.split(',').collect();
    if let Some(bad) = styles.iter().find(|s| !matches!(**s, "unfused" | "fused")) {
        eprintln!("unknown style `{bad}` (known: unfused, fused)");
        return ExitCode::FAILURE;
    }

    let mut per_style: Vec<(&str, Vec<Row>)> = styles.iter().map(|s| (*s, Vec::new())).collect();
    for &layers in &depths {
        let dir = match ensure_models(layers) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        for (style, rows) in per_style.iter_mut() {
            let path = dir.join(format!("gpt2_{style}/model.onnx"));
            eprintln!("gpt2_{style}, {layers} layers: loading and optimizing {runs} time(s) ...");
            match measure(&path, layers, runs) {
                Ok(r) => {
                    eprintln!(
                        "  load {:.2} s, optimize median {:.1} ms CPU ({:.1} ms wall), {} e-nodes",
                        r.load_s,
                        r.median_s * 1e3,
                        r.wall_s * 1e3,
                        r.enodes
                    );
                    rows.push(r);
                }
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    for (style, rows) in &per_style {
        report_style(style, rows, runs);
    }
    ExitCode::SUCCESS
}
