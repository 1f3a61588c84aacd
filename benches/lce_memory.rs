//! Peak memory of an LM head + loss in the reference interpreter, unfused
//! and fused into `kiln::LinearCrossEntropy` (issue 3, "What it must show",
//! point 3).
//!
//! Shapes: `N = 4096` rows, `d = 768`, `V = 50257` (GPT-2's vocabulary),
//! f32, mean reduction with `ignore_index = -100` (the last 64 labels are
//! ignored, as padding would be). The variants:
//!
//! - `unfused`: `logits = MatMul(h, W)` then `kiln::CrossEntropy(logits, y)`
//!   with `W` `[d, V]`. This is the cheapest unfused form the interpreter
//!   has (ONNX `SoftmaxCrossEntropyLoss` additionally materializes the
//!   log-probabilities); it still needs the `N × V` logits, 823.4 MB.
//! - `fused-o2`: the ONNX form `MatMul(h, W)` then `SoftmaxCrossEntropyLoss`
//!   put through kiln's `-O2` pipeline, which must turn it into exactly one
//!   `LinearCrossEntropy` and nothing else; so the benchmark runs what the
//!   real passes produce, not a hand-written graph.
//! - `fused`: the same `LinearCrossEntropy` built by hand (run with
//!   `--variants unfused,fused-o2,fused`); the `-O2` output is checked to
//!   carry the same op, so running both is only a consistency check.
//!
//! Each variant runs in its own child process (this binary re-executed with
//! `--child VARIANT`), so one variant's freed memory never hides another's
//! peak. The child builds its inputs and weights, then measures two things
//! around `kiln_ir::interp::run` alone:
//!
//! - **peak extra heap** (the headline number): a counting global allocator
//!   tracks live heap bytes; the figure is the peak during the run minus
//!   the live bytes just before it. It counts exactly what the interpreter
//!   allocates, whatever the allocator does with freed pages.
//! - **peak extra RSS**, as a cross-check: `VmHWM` minus `VmRSS` from
//!   `/proc/self/status`, with the high-water mark reset just before the run
//!   by writing `5` to `/proc/self/clear_refs` (Linux ≥ 4.0). Where the
//!   reset is refused the column says so instead of reporting a number that
//!   includes the setup.
//!
//! Time is the run's wall time and the child's CPU time (the interpreter is
//! single-threaded, so CPU time is what a busy shared machine distorts
//! least); the ratio is against the unfused run of the same invocation.
//! MB here is 10⁶ bytes, as in the "823 MB".
//!
//! Run: `cargo bench --bench lce_memory` (about 2.5 GB of RAM for the
//! unfused child; the fused children stay near the inputs' 170 MB).
//! Options after `--`: `--variants a,b,c`, `--rows N` (fewer rows for a
//! quick look; the targets are only judged at 4096).

use kiln_ir::dim::Dim;
use kiln_ir::dtype::DType;
use kiln_ir::graph::Graph;
use kiln_ir::op::{LossReduction, Op, DEFAULT_CHUNK_SIZE};
use kiln_ir::tensor::Tensor;
use kiln_ir::types::TensorType;
use kiln_passes::manager::{optimize, OptLevel, Pipeline};
use std::alloc::{GlobalAlloc, Layout, System};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

// ---------------------------------------------------------------- allocator

/// The system allocator with a count of live bytes and their peak.
struct CountingAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let now = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

fn shrank(bytes: usize) {
    LIVE.fetch_sub(bytes, Ordering::Relaxed);
}

// SAFETY: every call forwards to `System` unchanged; the counters only
// observe sizes.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from `System` with this layout.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Count the growth before the shrink so the peak never misses
            // the moment both blocks exist.
            grew(new_size);
            shrank(layout.size());
        }
        p
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

// ---------------------------------------------------------------- problem

const ROWS: usize = 4096;
const DEPTH: usize = 768;
const VOCAB: usize = 50257;
/// Labels at the end of the batch set to `IGNORE`, as padding would be.
const IGNORED_TAIL: usize = 64;
const IGNORE: i64 = -100;
/// What the issue asks of the fused path.
const FUSED_LIMIT_MB: f64 = 64.0;
/// Relative agreement asked of the losses.
const LOSS_RTOL: f64 = 1e-4;

const MB: f64 = 1e6;

/// splitmix64: a fixed, dependency-free stream so every child builds the
/// same inputs bit for bit.
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }
}

/// f32 tensor of `len` uniform values in [-scale, scale).
fn uniform(rng: &mut SplitMix, shape: &[usize], scale: f32) -> Tensor {
    let len: usize = shape.iter().product();
    let mut bytes = Vec::with_capacity(len * 4);
    for _ in 0..len {
        bytes.extend_from_slice(&(rng.unit() * scale).to_le_bytes());
    }
    Tensor::from_raw_le(DType::F32, shape, &bytes).expect("byte count matches the shape")
}

/// Hidden states `[rows, d]`, head weight `[d, V]`, labels `[rows]`.
/// Scales give logits of standard deviation about 1, so the loss sits a
/// little above ln V and the softmax is neither flat nor one-hot.
fn problem(rows: usize) -> (Tensor, Tensor, Tensor) {
    let mut rng = SplitMix(0x6b69_6c6e);
    let sqrt3 = 3f32.sqrt();
    let hidden = uniform(&mut rng, &[rows, DEPTH], sqrt3);
    let weight = uniform(&mut rng, &[DEPTH, VOCAB], sqrt3 / (DEPTH as f32).sqrt());
    let labels: Vec<i64> = (0..rows)
        .map(|i| {
            if i + IGNORED_TAIL >= rows {
                IGNORE
            } else {
                (rng.next_u64() % VOCAB as u64) as i64
            }
        })
        .collect();
    let labels = Tensor::from_i64s(DType::I64, &[rows], &labels);
    (hidden, weight, labels)
}

/// The LM head + loss graph: inputs `hidden`, `labels`; initializer
/// `lm_head` `[d, V]`; output `loss`. `loss_op` names the loss form.
fn head_and_loss(weight: Tensor, rows: usize, loss_op: LossForm) -> kiln_ir::Result<Graph> {
    let mut g = Graph::new("lm_head_loss");
    g.opset_imports.insert(String::new(), 23);
    g.opset_imports.insert("kiln".into(), 1);
    let rows_dim = Dim::from(rows);
    let h = g.add_input(
        "hidden",
        TensorType::new(DType::F32, vec![rows_dim.clone(), Dim::from(DEPTH)]),
    )?;
    let y = g.add_input("labels", TensorType::new(DType::I64, vec![rows_dim]))?;
    let w = g.add_initializer("lm_head", weight)?;
    let loss = match loss_op {
        LossForm::Fused => g.add_node(
            "lm_head_loss",
            Op::LinearCrossEntropy {
                reduction: LossReduction::Mean,
                ignore_index: Some(IGNORE),
                label_smoothing: 0.0,
                z_loss: 0.0,
                transpose_weight: false,
                chunk_size: DEFAULT_CHUNK_SIZE,
            },
            vec![Some(h), Some(w), Some(y)],
            &["loss"],
        )?,
        LossForm::KilnCrossEntropy | LossForm::OnnxSoftmaxCrossEntropy => {
            let mm = g.add_node("lm_head", Op::MatMul, vec![Some(h), Some(w)], &["logits"])?;
            let logits = g.node(mm).output(0).expect("MatMul has one output");
            let op = if loss_op == LossForm::KilnCrossEntropy {
                Op::CrossEntropy {
                    reduction: LossReduction::Mean,
                    ignore_index: Some(IGNORE),
                    label_smoothing: 0.0,
                    z_loss: 0.0,
                }
            } else {
                Op::SoftmaxCrossEntropyLoss {
                    reduction: LossReduction::Mean,
                    ignore_index: Some(IGNORE),
                }
            };
            g.add_node("loss", op, vec![Some(logits), Some(y)], &["loss"])?
        }
    };
    g.add_output(g.node(loss).output(0).expect("the loss node has an output"));
    kiln_ir::infer_types(&mut g)?;
    kiln_ir::verify(&g)?;
    Ok(g)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum LossForm {
    KilnCrossEntropy,
    OnnxSoftmaxCrossEntropy,
    Fused,
}

/// The single `LinearCrossEntropy` of an optimized graph; an error when
/// the graph holds anything else.
fn the_fused_op(g: &Graph) -> Result<Op, String> {
    let ops: Vec<&Op> = g.node_ids().into_iter().map(|id| &g.node(id).op).collect();
    match ops.as_slice() {
        [op @ Op::LinearCrossEntropy { .. }] => Ok((*op).clone()),
        _ => Err(format!(
            "-O2 should leave exactly one LinearCrossEntropy, found [{}]",
            ops.iter().map(|o| o.name()).collect::<Vec<_>>().join(", ")
        )),
    }
}

// ---------------------------------------------------------------- child

/// `VmRSS` and `VmHWM` of this process in bytes.
fn rss() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |key: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        let kb: u64 = line[key.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Resets the peak RSS to the current RSS; false where the kernel refuses.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// CPU time of this process, in seconds.
fn process_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "CLOCK_PROCESS_CPUTIME_ID is available on Linux");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Builds one variant, runs it once and prints one `RESULT` line.
fn child(variant: &str, rows: usize) -> Result<(), String> {
    let (hidden, weight, labels) = problem(rows);
    let graph = match variant {
        "unfused" => {
            head_and_loss(weight, rows, LossForm::KilnCrossEntropy).map_err(|e| e.to_string())?
        }
        "fused" => head_and_loss(weight, rows, LossForm::Fused).map_err(|e| e.to_string())?,
        "fused-o2" => {
            let hand =
                head_and_loss(weight.clone(), rows, LossForm::Fused).map_err(|e| e.to_string())?;
            let onnx_form = head_and_loss(weight, rows, LossForm::OnnxSoftmaxCrossEntropy)
                .map_err(|e| e.to_string())?;
            let (optimized, report) =
                optimize(&onnx_form, &Pipeline::level(OptLevel::O2)).map_err(|e| e.to_string())?;
            let op = the_fused_op(&optimized)?;
            let expected = the_fused_op(&hand)?;
            if op != expected {
                return Err(format!("-O2 made {op:?}, expected {expected:?}"));
            }
            eprintln!(
                "fused-o2: -O2 rewrote MatMul + SoftmaxCrossEntropyLoss into one LinearCrossEntropy ({})",
                report.rewrites.iter().map(|r| format!("{} x{}", r.rule, r.count)).collect::<Vec<_>>().join(", ")
            );
            optimized
        }
        other => return Err(format!("unknown variant `{other}`")),
    };
    let inputs = vec![
        ("hidden".to_string(), hidden),
        ("labels".to_string(), labels),
    ];

    let rss_reset = reset_peak_rss();
    let rss_before = rss();
    let live_before = LIVE.load(Ordering::Relaxed);
    PEAK.store(live_before, Ordering::Relaxed);
    let start = Instant::now();
    let cpu_start = process_cpu_seconds();
    let outputs = kiln_ir::interp::run(&graph, &inputs).map_err(|e| e.to_string())?;
    let cpu = process_cpu_seconds() - cpu_start;
    let seconds = start.elapsed().as_secs_f64();
    let heap_extra = PEAK.load(Ordering::Relaxed) - live_before;
    let rss_extra = match (rss_reset, rss_before, rss()) {
        (true, Some((base, _)), Some((_, hwm))) => hwm.saturating_sub(base).to_string(),
        _ => "none".to_string(),
    };
    let loss = outputs
        .iter()
        .find(|(n, _)| n == "loss")
        .map(|(_, t)| t.to_f64s())
        .and_then(|v| v.first().copied())
        .ok_or("the graph gave no loss")?;
    println!("RESULT variant={variant} heap_extra={heap_extra} rss_extra={rss_extra} seconds={seconds} cpu={cpu} loss={loss:e}");
    Ok(())
}

// ---------------------------------------------------------------- parent

/// What a child reported.
struct Measured {
    variant: String,
    heap_extra: f64,
    rss_extra: Option<f64>,
    seconds: f64,
    cpu: f64,
    loss: f64,
}

fn parse_result(stdout: &str) -> Option<Measured> {
    let line = stdout.lines().find(|l| l.starts_with("RESULT "))?;
    let get = |key: &str| -> Option<&str> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    };
    Some(Measured {
        variant: get("variant")?.to_string(),
        heap_extra: get("heap_extra")?.parse().ok()?,
        rss_extra: get("rss_extra")?.parse().ok(),
        seconds: get("seconds")?.parse().ok()?,
        cpu: get("cpu")?.parse().ok()?,
        loss: get("loss")?.parse().ok()?,
    })
}

fn run_child(variant: &str, rows: usize) -> Result<Measured, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    eprintln!("running {variant} in a child process ...");
    let out = Command::new(exe)
        .args(["--child", variant, "--rows", &rows.to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot start the {variant} child: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "the {variant} child failed ({}): {stdout}",
            out.status
        ));
    }
    parse_result(&stdout)
        .ok_or_else(|| format!("the {variant} child printed no RESULT line: {stdout}"))
}

/// The value after `flag` on the command line.
fn arg_value(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let rows = match arg_value(&args, "--rows").map(|r| r.parse::<usize>()) {
        None => ROWS,
        Some(Ok(r)) if r > IGNORED_TAIL => r,
        Some(_) => {
            eprintln!("--rows must be a number above {IGNORED_TAIL}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(variant) = arg_value(&args, "--child") {
        return match child(&variant, rows) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{variant}: {e}");
                ExitCode::FAILURE
            }
        };
    }

    let variants = arg_value(&args, "--variants").unwrap_or_else(|| "unfused,fused-o2".to_string());
    let variants: Vec<&str> = variants.split(',').collect();
    if variants.first() != Some(&"unfused") {
        eprintln!("--variants must start with `unfused`: the other losses are checked against it");
        return ExitCode::FAILURE;
    }
    println!("LM head + loss: N = {rows}, d = {DEPTH}, V = {VOCAB}, f32, reference interpreter");
    let mut results = Vec::new();
    for v in &variants {
        match run_child(v, rows) {
            Ok(m) => results.push(m),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        }
    }

    let logits_mb = (rows * VOCAB * 4) as f64 / MB;
    let base = &results[0];
    println!();
    println!("| variant | peak extra heap (MB) | peak extra RSS (MB) | wall time (s) | CPU time (s) | CPU time vs unfused | loss |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for m in &results {
        let rss = m
            .rss_extra
            .map_or("n/a".to_string(), |b| format!("{:.1}", b / MB));
        println!(
            "| {} | {:.1} | {} | {:.2} | {:.2} | {:.2}x | {:.6} |",
            m.variant,
            m.heap_extra / MB,
            rss,
            m.seconds,
            m.cpu,
            m.cpu / base.cpu,
            m.loss
        );
    }
    println!();
    println!("logits N x V x 4 bytes = {logits_mb:.1} MB");

    let mut ok = true;
    for m in &results[1..] {
        let rel = (m.loss - base.loss).abs() / base.loss.abs();
        let agree = rel <= LOSS_RTOL;
        ok &= agree;
        println!(
            "loss {} vs unfused: relative difference {rel:.2e} ({})",
            m.variant,
            if agree {
                "agree within 1e-4"
            } else {
                "DISAGREE"
            }
        );
    }
    let unfused_holds = base.heap_extra / MB >= logits_mb;
    println!(
        "target: unfused allocates at least the logits ({logits_mb:.1} MB): {} ({:.1} MB, {:.2}x the logits)",
        if unfused_holds { "holds" } else { "DOES NOT HOLD" },
        base.heap_extra / MB,
        base.heap_extra / MB / logits_mb
    );
    for m in &results[1..] {
        let holds = m.heap_extra / MB <= FUSED_LIMIT_MB;
        println!(
            "target: {} peak extra <= {FUSED_LIMIT_MB} MB: {} ({:.1} MB, {:.1}x less than unfused)",
            m.variant,
            if holds { "holds" } else { "DOES NOT HOLD" },
            m.heap_extra / MB,
            base.heap_extra / m.heap_extra
        );
    }
    if rows != ROWS {
        println!("(N = {rows}, not the issue's {ROWS}: the targets above are for this N only)");
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
