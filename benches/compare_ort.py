#!/usr/bin/env python3
"""Side-by-side benchmark of kiln and onnxruntime on the same models and inputs.

Usage:
    python benches/compare_ort.py [--backend interp|cpu] [--quick] [--only NAME ...]
                                  [--threads 1,all] [--iterations N] [--warmup N]
                                  [--rounds R] [--kiln target/release/kiln] [--no-optimize]

What it does:
  1. Writes the workloads of benches/workloads.py (models + NAME.npy inputs)
     under target/bench-workloads/{full,quick}/, or reuses them.
  2. When the kiln binary has an `optimize` subcommand, optimizes each model
     once with `kiln optimize MODEL -o MODEL.kiln-O2.onnx -O2` and benches the
     result (the plain model otherwise, and always for the unfused attention
     graph, which must stay unfused to be the baseline of the fused one). The
     report says which model each kiln figure comes from.
  3. Times every (runtime, model, thread count) in its own process, on the
     same .npy inputs:
       kiln:        `kiln bench MODEL --backend B --inputs DIR --threads T --json`
       onnxruntime: this script's `ort-run` mode: CPUExecutionProvider, all graph
                    optimizations (ORT_ENABLE_ALL), intra_op_num_threads T,
                    inter_op_num_threads 1, sequential execution.
     Both report the median of --iterations timed runs after --warmup untimed
     ones, and "peak extra" memory: the peak resident set during the runs minus
     the resident set just before them (after loading/compiling/creating the
     session and reading the inputs). Both reset the kernel's high-water mark
     (/proc/self/clear_refs) before the first run and read VmHWM after the
     last; where the reset is refused, the figure is marked as an upper bound.
  4. Prints a markdown table (and writes all raw figures as JSON next to the
     workloads): workload, threads, kiln median ms, ORT median ms, kiln/ORT,
     kiln peak extra MB, ORT peak extra MB, kiln backend. Then the goals of
     issue 4 as ratios from this same run.

Rounds: with --rounds R every measurement is R processes, kiln and ORT
alternating (kiln, ORT, kiln, ORT, ...), and each runtime's row is its round
with the lowest median; the JSON keeps every round's median. On a shared
host a second core can be taken away for a few hundred milliseconds, which
leaves either runtime at its one-thread speed for part of a process's runs;
the best of a few alternating rounds compares the two on the machine they
were both meant to have.

Softmax: with --backend cpu the softmax workload is timed once per kiln kernel
in the same run (`kiln bench --softmax K` for K in two-pass, three-pass and
online): the default kernel's row is compared with ORT (the goal), the others
are rows of their own, and the goals print two-pass/three-pass (the paper's
claim), online/two-pass and each other kernel against ORT.

Threads: "all" is the number of cores this process may run on. The end-to-end
models (gpt2, bert) are also timed with 2 threads. kiln's interpreter is
single-threaded: with --backend interp every kiln figure is one thread whatever
the row says, and the table says so.

The interpreter is kiln's reference oracle, not its fast path: with
--backend interp the figures measure the interpreter and say nothing about the
CPU backend's speed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
# kiln's softmax kernels (`kiln bench --softmax`); the default is what
# `kiln run` and `kiln bench` use without the flag.
SOFTMAX_KERNELS = ("two-pass", "three-pass", "online")
DEFAULT_SOFTMAX = "two-pass"
sys.path.insert(0, HERE)
# No __pycache__ beside the sources for the workloads import.
sys.dont_write_bytecode = True

import workloads  # noqa: E402  (benches/workloads.py, next to this file)

# --------------------------------------------------------------------------
# Memory: the same method as `kiln bench`
# --------------------------------------------------------------------------


def _status_bytes(field):
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{field}:\s+(\d+)\s+kB", f.read(), re.M)
        return int(m.group(1)) * 1024 if m else None
    except OSError:
        return None


def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_bytes():
    hwm = _status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


MB = 1024.0 * 1024.0

# --------------------------------------------------------------------------
# onnxruntime runner (runs in its own process)
# --------------------------------------------------------------------------


def ort_run(model, inputs_dir, threads, warmup, iterations):
    """Times one model with onnxruntime; returns the figures as a dict."""
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    start = time.perf_counter()
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    create_ms = (time.perf_counter() - start) * 1e3
    feeds = {}
    for i in sess.get_inputs():
        path = os.path.join(inputs_dir, f"{i.name}.npy")
        if not os.path.exists(path):
            raise SystemExit(f"{inputs_dir} has no {i.name}.npy for input {i.name} of {model}")
        feeds[i.name] = np.load(path)

    reset = _reset_peak()
    baseline = _status_bytes("VmRSS")
    for _ in range(warmup):
        sess.run(None, feeds)
    runs = []
    for _ in range(iterations):
        start = time.perf_counter()
        outputs = sess.run(None, feeds)
        runs.append((time.perf_counter() - start) * 1e3)
        del outputs
    peak = _peak_bytes()
    runs_sorted = sorted(runs)
    n = len(runs_sorted)
    median = runs_sorted[n // 2] if n % 2 else (runs_sorted[n // 2 - 1] + runs_sorted[n // 2]) / 2
    return {
        "runtime": "onnxruntime",
        "version": ort.__version__,
        "threads": threads,
        "create_ms": create_ms,
        "median_ms": median,
        "min_ms": runs_sorted[0],
        "max_ms": runs_sorted[-1],
        "runs_ms": runs,
        "baseline_rss_mb": baseline / MB if baseline is not None else None,
        "peak_rss_mb": peak / MB,
        "run_peak_extra_mb": (peak - baseline) / MB if baseline is not None else None,
        "peak_reset": reset,
    }


# --------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def run_json(cmd, timeout):
    """Runs a command that prints one JSON object; returns it, or
    {"error": ...} with the command's stderr when it fails."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-6:]
        return {"error": f"exit {p.returncode}: " + " | ".join(tail)}
    try:
        return json.loads(p.stdout)
    except json.JSONDecodeError as e:
        return {"error": f"not JSON ({e}): {p.stdout[:200]}"}


def best_round(results):
    """The round with the lowest median, with every round's median under
    "round_medians"; the first failed round if any failed."""
    failed = [r for r in results if "error" in r]
    if failed:
        return failed[0]
    best = dict(min(results, key=lambda r: r["median_ms"]))
    best["round_medians"] = [r["median_ms"] for r in results]
    return best


def has_subcommand(kiln, name):
    p = subprocess.run([kiln, name, "--help"], capture_output=True, text=True)
    return p.returncode == 0


class Runner:
    def __init__(self, a):
        self.a = a
        self.cache = {}
        self.optimized = {}
        self.can_optimize = not a.no_optimize and has_subcommand(a.kiln, "optimize")

    def kiln_model(self, model, optimize):
        """The model kiln benches: `kiln optimize -O2`'s output when asked
        and available, else the model itself; with a note saying which."""
        if not optimize:
            return model, "as written", "as written: the unfused graph is the baseline of the fused one, so kiln does not optimize it"
        if not self.can_optimize:
            why = "--no-optimize" if self.a.no_optimize else "this kiln has no `optimize` subcommand"
            return model, "plain", f"plain: the model as written, not optimized ({why})"
        if model not in self.optimized:
            out = model[: -len(".onnx")] + ".kiln-O2.onnx"
            start = time.perf_counter()
            p = subprocess.run([self.a.kiln, "optimize", model, "-o", out, "-O2"], capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if p.returncode == 0 and os.path.exists(out):
                self.optimized[model] = (out, "-O2", f"-O2: `kiln optimize -O2` output (optimizing {os.path.relpath(model, os.path.dirname(os.path.dirname(model)))} took {seconds:.2f} s)")
            else:
                why = (p.stderr.strip().splitlines() or ["no message"])[-1]
                log(f"kiln optimize failed on {model}: {why}; benching the plain model")
                self.optimized[model] = (model, "plain", f"plain: `kiln optimize -O2` failed on {os.path.relpath(model, os.path.dirname(os.path.dirname(model)))} ({why})")
        return self.optimized[model]

    def kiln(self, model, inputs, threads, optimize, softmax=None, round_=0):
        path, how, note = self.kiln_model(model, optimize)
        key = ("kiln", path, threads, softmax, round_)
        if key not in self.cache:
            kernel = f"  softmax {softmax}" if softmax else ""
            log(f"kiln {self.a.backend}  {os.path.relpath(path, REPO)}  threads {threads}{kernel}")
            cmd = [self.a.kiln, "bench", path, "--backend", self.a.backend, "--inputs", inputs, "--threads",
                   str(threads), "--warmup", str(self.a.warmup), "--iterations", str(self.a.iterations), "--json"]
            if softmax:
                cmd += ["--softmax", softmax]
            result = run_json(cmd, self.a.timeout)
            result["model_used"] = how
            result["model_note"] = note
            self.cache[key] = result
        return self.cache[key]

    def ort(self, model, inputs, threads, round_=0):
        key = ("ort", model, threads, round_)
        if key not in self.cache:
            log(f"onnxruntime  {os.path.relpath(model, REPO)}  threads {threads}")
            cmd = [sys.executable, os.path.abspath(__file__), "ort-run", model, "--inputs", inputs, "--threads",
                   str(threads), "--warmup", str(self.a.warmup), "--iterations", str(self.a.iterations)]
            self.cache[key] = run_json(cmd, self.a.timeout)
        return self.cache[key]


def row_specs(made, backend):
    """(workload label, kiln model, kiln optimizes?, ORT model, inputs dir,
    extra thread counts, kiln softmax kernel or None) for every row, in table
    order."""
    specs = []
    for name, (d, cfg) in made.items():
        inputs = os.path.join(d, "inputs")
        j = lambda f: os.path.join(d, f)  # noqa: E731
        if name == "lm_head_loss":
            size = f"N={cfg['n']} d={cfg['d']} V={cfg['vocab']}"
            specs.append((f"LM head + loss {size}: vs ORT MatMul+SoftmaxCrossEntropyLoss",
                          j("loss.onnx"), True, j("loss.onnx"), inputs, ()))
            specs.append((f"LM head + loss {size}: vs ORT logits-only MatMul",
                          j("loss.onnx"), True, j("logits.onnx"), inputs, ()))
        elif name == "softmax":
            label = f"Softmax [{cfg['rows']}, {cfg['cols']}] f32"
            if backend == "cpu":
                # Every kernel in the same run: the default one against ORT
                # (the goal), the others for their ratios to each other.
                specs.append((label, j("model.onnx"), True, j("model.onnx"), inputs, (), DEFAULT_SOFTMAX))
                for kernel in SOFTMAX_KERNELS:
                    if kernel != DEFAULT_SOFTMAX:
                        specs.append((f"{label}, kiln {kernel} kernel", j("model.onnx"), True, j("model.onnx"),
                                      inputs, (), kernel))
            else:
                specs.append((label, j("model.onnx"), True, j("model.onnx"), inputs, ()))
        elif name == "matmul":
            specs.append((f"MatMul {cfg['m']}x{cfg['k']}x{cfg['n']} f32", j("model.onnx"), True, j("model.onnx"),
                          inputs, ()))
        elif name == "attention":
            size = f"B={cfg['batch']} H={cfg['heads']} S={cfg['seq']} hd={cfg['head_dim']}"
            specs.append((f"Attention {size}, unfused graph", j("unfused.onnx"), False, j("unfused.onnx"),
                          inputs, ()))
            specs.append((f"Attention {size}, fused Attention op", j("fused.onnx"), True, j("fused.onnx"),
                          inputs, ()))
        elif name == "gpt2":
            size = (f"GPT-2 + loss ({cfg['style']} export) L={cfg['layers']} d={cfg['d_model']} V={cfg['vocab']} "
                    f"{cfg['batch']}x{cfg['seq']}")
            specs.append((size, j("model.onnx"), True, j("model.onnx"), inputs, (2,)))
        elif name == "bert":
            size = (f"BERT encoder ({cfg['style']} export) L={cfg['layers']} d={cfg['d_model']} "
                    f"{cfg['batch']}x{cfg['seq']}")
            specs.append((size, j("model.onnx"), True, j("model.onnx"), inputs, (2,)))
    return [spec if len(spec) == 7 else spec + (None,) for spec in specs]


def fmt(x, digits=2):
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def extra_mb(r):
    if "error" in r or r.get("run_peak_extra_mb") is None:
        return "-"
    text = fmt(r["run_peak_extra_mb"], 1)
    return text if r.get("peak_reset", True) else f"≤{text}"


def backend_cell(backend, k):
    if "error" in k:
        return f"{backend}: FAILED ({k['error'][:120]})"
    cell = f"{backend}, {k['model_used']}"
    if k.get("softmax"):
        cell += f", {k['softmax']} softmax"
    used = k.get("threads_used")
    if used is not None and used != k.get("threads"):
        cell += f", ran on {used} thread"
    return cell


def parse_threads(text, all_cores):
    out = []
    for part in text.split(","):
        part = part.strip()
        n = all_cores if part == "all" else int(part)
        if n < 1:
            raise argparse.ArgumentTypeError(f"thread counts are at least 1, got {part}")
        if n not in out:
            out.append(n)
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["ort-run"]:
        p = argparse.ArgumentParser(prog="compare_ort.py ort-run")
        p.add_argument("model")
        p.add_argument("--inputs", required=True)
        p.add_argument("--threads", type=int, required=True)
        p.add_argument("--warmup", type=int, default=1)
        p.add_argument("--iterations", type=int, default=10)
        a = p.parse_args(argv[1:])
        print(json.dumps(ort_run(a.model, a.inputs, a.threads, a.warmup, a.iterations)))
        return 0

    all_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[6:]))
    p.add_argument("--backend", choices=["interp", "cpu"], default="interp", help="kiln backend (default interp)")
    p.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    p.add_argument("--only", nargs="+", choices=workloads.NAMES, metavar="NAME",
                   help=f"some of {', '.join(workloads.NAMES)}")
    p.add_argument("--threads", default="1,all", help="comma-separated thread counts; `all` = the cores (default 1,all)")
    p.add_argument("--iterations", type=int, default=None, help="timed runs per measurement (default 10, quick 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    p.add_argument("--rounds", type=int, default=1,
                   help="processes per measurement, kiln and ORT alternating; each reports the round with the "
                        "lowest median (default 1)")
    p.add_argument("--kiln", default=os.path.join(REPO, "target", "release", "kiln"),
                   help="the kiln binary (default target/release/kiln; build with cargo build --release)")
    p.add_argument("--no-optimize", action="store_true", help="bench the plain models even if `kiln optimize` exists")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per measurement (default 3600)")
    p.add_argument("--out", default=workloads.DEFAULT_OUT, help="workload directory (default target/bench-workloads)")
    p.add_argument("--style", choices=["fused", "unfused"], default="fused",
                   help="export style of the gpt2 and bert models (default fused)")
    a = p.parse_args(argv)
    if a.iterations is None:
        a.iterations = 3 if a.quick else 10
    if a.iterations < 1 or a.warmup < 0 or a.rounds < 1:
        p.error("--iterations and --rounds must be at least 1 and --warmup at least 0")
    if not os.path.exists(a.kiln):
        found = shutil.which("kiln")
        if not found:
            p.error(f"no kiln binary at {a.kiln}: build it with `cargo build --release` or pass --kiln PATH")
        a.kiln = found
    threads = parse_threads(a.threads, all_cores)

    made = workloads.generate(a.out, a.quick, a.only, a.style, log=log)
    runner = Runner(a)
    rows = []
    for label, kiln_model, optimize, ort_model, inputs, extra_threads, softmax in row_specs(made, a.backend):
        for t in threads + [t for t in extra_threads if t not in threads]:
            # Rounds alternate kiln and ORT processes, so that a phase of a
            # busy host falls on either as often.
            ks, os_ = [], []
            for r in range(a.rounds):
                ks.append(runner.kiln(kiln_model, inputs, t, optimize, softmax, r))
                os_.append(runner.ort(ort_model, inputs, t, r))
            rows.append({"workload": label, "threads": t, "kiln": best_round(ks), "ort": best_round(os_)})

    size = "quick (smoke-run sizes)" if a.quick else "full"
    lines = [
        f"kiln `{a.backend}` backend vs onnxruntime {ort_version()} (CPU, ORT_ENABLE_ALL), {size} sizes, "
        f"median of {a.iterations} runs after {a.warmup} warmup"
        + (f", best of {a.rounds} processes (rounds alternating kiln and ORT)" if a.rounds > 1 else "")
        + f", {all_cores} cores available",
        "",
        "| workload | threads | kiln median ms | ORT median ms | kiln/ORT | kiln peak extra MB | ORT peak extra MB "
        "| kiln backend |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        k, o = r["kiln"], r["ort"]
        km = None if "error" in k else k["median_ms"]
        om = None if "error" in o else o["median_ms"]
        ratio = f"{km / om:.2f}" if km is not None and om else "-"
        ort_cell = fmt(om) if "error" not in o else f"FAILED ({o['error'][:80]})"
        lines.append(f"| {r['workload']} | {r['threads']} | {fmt(km)} | {ort_cell} | {ratio} | {extra_mb(k)} | "
                     f"{extra_mb(o)} | {backend_cell(a.backend, k)} |")
    notes = sorted({k["model_note"] for k in (r["kiln"] for r in rows) if "model_note" in k})
    lines += [""] + [f"- {n}" for n in notes]
    if a.backend == "interp":
        lines.append("- kiln's interpreter is single-threaded: every kiln figure is one thread, whatever the row's "
                     "thread count; it is the reference oracle, not the CPU backend, so these ratios say nothing "
                     "about `--backend cpu`.")
    lines += [""] + goals(rows, a.backend)
    report = "\n".join(lines)
    print(report)

    results = os.path.join(a.out, f"results-{'quick' if a.quick else 'full'}-{a.backend}.json")
    with open(results, "w") as f:
        json.dump({"backend": a.backend, "quick": a.quick, "iterations": a.iterations, "warmup": a.warmup,
                   "rounds": a.rounds, "cores": all_cores, "rows": rows}, f, indent=1)
    log(f"raw figures: {results}")
    return 0


def ort_version():
    try:
        import onnxruntime
        return onnxruntime.__version__
    except ImportError:
        return "(not importable here)"


def goals(rows, backend):
    """Issue 4's goals as ratios from this run's rows (only those measured)."""
    def find(prefix, threads=None, contains=""):
        for r in rows:
            if r["workload"].startswith(prefix) and contains in r["workload"] and (threads is None or
                                                                                 r["threads"] == threads):
                return r
        return None

    def med(side):
        return None if side is None or "error" in side else side["median_ms"]

    out = ["Goals (issue 4), as ratios from this run:"]
    if backend != "cpu":
        out.append(f"(kiln figures are the `{backend}` backend's; the goals are for `--backend cpu`.)")
    checks = []
    thread_counts = sorted({r["threads"] for r in rows})
    for t in thread_counts:
        sce = find("LM head", t, "SoftmaxCrossEntropyLoss")
        logits = find("LM head", t, "logits-only")
        if sce and med(sce["kiln"]) and med(sce["ort"]):
            checks.append((f"LM head + loss, {t} thr: kiln / ORT MatMul+SCE < 1",
                           med(sce["kiln"]) / med(sce["ort"]), lambda x: x < 1))
        if logits and med(logits["kiln"]) and med(logits["ort"]):
            checks.append((f"LM head + loss, {t} thr: kiln / ORT logits-only ≤ 1.1",
                           med(logits["kiln"]) / med(logits["ort"]), lambda x: x <= 1.1))
        if sce and "error" not in sce["kiln"] and sce["kiln"].get("run_peak_extra_mb") is not None:
            checks.append((f"LM head + loss, {t} thr: kiln peak extra MB ≤ 64",
                           sce["kiln"]["run_peak_extra_mb"], lambda x: x <= 64))
        # The softmax row without "kernel" in its name is the default kernel.
        sm = next((r for r in rows if r["workload"].startswith("Softmax") and r["threads"] == t
                   and "kernel" not in r["workload"]), None)
        if sm and med(sm["kiln"]) and med(sm["ort"]):
            checks.append((f"Softmax, {t} thr: kiln ({DEFAULT_SOFTMAX}) / ORT ≤ 1", med(sm["kiln"]) / med(sm["ort"]),
                           lambda x: x <= 1))
        kernels = {DEFAULT_SOFTMAX: sm} if sm else {}
        for kernel in SOFTMAX_KERNELS:
            found = find("Softmax", t, f"kiln {kernel} kernel")
            if found:
                kernels[kernel] = found
        timed = {k: med(r["kiln"]) for k, r in kernels.items() if med(r["kiln"])}
        if "two-pass" in timed and "three-pass" in timed:
            checks.append((f"Softmax, {t} thr: kiln two-pass / kiln three-pass < 1",
                           timed["two-pass"] / timed["three-pass"], lambda x: x < 1))
        if "online" in timed and "two-pass" in timed:
            checks.append((f"Softmax, {t} thr: kiln online / kiln two-pass (info, < 1 is faster)",
                           timed["online"] / timed["two-pass"], lambda x: True))
        if sm and med(sm["ort"]):
            for kernel, ms in timed.items():
                if kernel != DEFAULT_SOFTMAX:
                    checks.append((f"Softmax, {t} thr: kiln {kernel} / ORT (info)", ms / med(sm["ort"]),
                                   lambda x: True))
        mm = find("MatMul", t)
        if t == 1 and mm and med(mm["kiln"]) and med(mm["ort"]):
            # Throughput ratio kiln/ORT = ORT time / kiln time.
            checks.append(("MatMul, 1 thr: kiln throughput / ORT's ≥ 0.8", med(mm["ort"]) / med(mm["kiln"]),
                           lambda x: x >= 0.8))
        un, fu = find("Attention", t, "unfused"), find("Attention", t, "fused Attention")
        if un and fu and med(un["kiln"]) and med(fu["kiln"]):
            checks.append((f"Attention, {t} thr: kiln unfused / kiln fused ≥ 2", med(un["kiln"]) / med(fu["kiln"]),
                           lambda x: x >= 2))
        for prefix in ("GPT-2", "BERT"):
            e2e = find(prefix, t)
            if e2e and med(e2e["kiln"]) and med(e2e["ort"]) and t in (1, 2):
                checks.append((f"{prefix} end to end, {t} thr: kiln / ORT ≤ 1", med(e2e["kiln"]) / med(e2e["ort"]),
                               lambda x: x <= 1))
    if not checks:
        out.append("(none of the goal workloads were measured)")
    for text, value, ok in checks:
        verdict = "" if "(info" in text else (" met" if ok(value) else " MISSED")
        out.append(f"- {text}: {value:.2f}{verdict}")
    return out


if __name__ == "__main__":
    sys.exit(main())
