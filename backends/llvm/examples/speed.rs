//! A first, rough speed check of the CPU backend against kiln's
//! interpreter on a few single-op graphs (not a benchmark: one process,
//! single-threaded, best of a few runs). Run with
//! `cargo run --release -p kiln-backend-llvm --example speed`; with a
//! directory argument (holding `model.onnx` and `test_data_set_0/`), it
//! times that model instead; with `attention`, only the Attention cases
//! (flash kernel against the interpreter at S = 1024, 2048, 4096); with
//! `softmax [ROWS]`, the softmax kernels' CPU time on `[ROWS, 32000]`.

use kiln_backend_llvm::{compile, CompileOptions, SoftmaxAlgorithm};
use kiln_ir::dtype::DType;
use kiln_ir::graph::Graph;
use kiln_ir::op::{BinaryOp, GeluApproximation, LossReduction, Op};
use kiln_ir::tensor::Tensor;
use kiln_ir::types::TensorType;
use std::time::{Duration, Instant};

fn random(shape: &[usize], seed: u64, scale: f64) -> Tensor {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
        })
        .collect();
    Tensor::from_f64s(DType::F32, shape, &v)
}

fn best(runs: usize, mut f: impl FnMut()) -> Duration {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .expect("at least one run")
}

fn report(name: &str, mut g: Graph, inputs: Vec<(String, Tensor)>) {
    kiln_ir::infer_types(&mut g).expect("the graph is well typed");
    let interp = best(2, || {
        kiln_ir::interp::run(&g, &inputs).expect("interpreter runs");
    });
    let mut line = format!("{name:<44} interp {:>9.2} ms", interp.as_secs_f64() * 1e3);
    for algo in [SoftmaxAlgorithm::Online, SoftmaxAlgorithm::TwoPass, SoftmaxAlgorithm::ThreePass] {
        let t0 = Instant::now();
        let compiled = compile(&g, &CompileOptions { softmax: algo, ..Default::default() }).expect("compiles");
        compiled.run(&inputs).expect("runs");
        let compile = t0.elapsed();
        let cpu = best(5, || {
            compiled.run(&inputs).expect("runs");
        });
        let label = match algo {
            SoftmaxAlgorithm::TwoPass => "cpu/2-pass",
            SoftmaxAlgorithm::ThreePass => "cpu/3-pass",
            SoftmaxAlgorithm::Online => "cpu",
        };
        line.push_str(&format!(
            "  {label} {:>8.2} ms ({:>5.1}x, compile {:.0} ms)",
            cpu.as_secs_f64() * 1e3,
            interp.as_secs_f64() / cpu.as_secs_f64(),
            compile.as_secs_f64() * 1e3
        ));
        if !name.starts_with("Softmax") {
            break;
        }
    }
    println!("{line}");
}

/// Times a model directory in the ONNX test layout.
fn model(dir: &std::path::Path) {
    let graph = kiln_ir::load(dir.join("model.onnx")).expect("the model loads");
    let names: Vec<String> =
        kiln_ir::interp::required_inputs(&graph).iter().map(|&v| graph.value(v).name.clone()).collect();
    let inputs: Vec<(String, Tensor)> = names
        .into_iter()
        .enumerate()
        .map(|(i, n)| {
            let path = dir.join("test_data_set_0").join(format!("input_{i}.pb"));
            (n, kiln_ir::onnx::read_tensor_pb(&path).expect("input tensor reads").1)
        })
        .collect();
    let interp = best(5, || {
        kiln_ir::interp::run(&graph, &inputs).expect("interpreter runs");
    });
    let t0 = Instant::now();
    let compiled = compile(&graph, &CompileOptions::default()).expect("compiles");
    let spec = compiled.specialization_for(&inputs).expect("specializes");
    let compile_time = t0.elapsed();
    let cpu = best(20, || {
        compiled.run(&inputs).expect("runs");
    });
    println!(
        "{}: interp {:.2} ms, cpu {:.2} ms ({:.1}x), compile {:.0} ms, {} kernels, arena {} KiB (intermediates {} KiB)",
        dir.display(),
        interp.as_secs_f64() * 1e3,
        cpu.as_secs_f64() * 1e3,
        interp.as_secs_f64() / cpu.as_secs_f64(),
        compile_time.as_secs_f64() * 1e3,
        spec.kernels.len(),
        spec.arena_bytes / 1024,
        spec.intermediate_bytes / 1024
    );
}

/// Causal self-attention, one batch, `heads` heads of 64, sequence `s`.
fn attention(s: usize, heads: usize) {
    let mut g = Graph::new("attention");
    let shape = [1, heads, s, 64];
    let ins: Vec<_> = ["q", "k", "v"]
        .iter()
        .map(|n| Some(g.add_input(*n, TensorType::fixed(DType::F32, &shape)).expect("fresh name")))
        .collect();
    let attrs = kiln_ir::op::AttentionAttrs {
        is_causal: true,
        q_num_heads: None,
        kv_num_heads: None,
        qk_matmul_output_mode: 0,
        scale: None,
        softcap: 0.0,
        softmax_precision: None,
    };
    let id = g.add_node("attn", Op::Attention(attrs), ins, &["y"]).expect("valid node");
    g.add_output(g.node(id).output(0).expect("one output"));
    let inputs = ["q", "k", "v"].iter().enumerate().map(|(i, n)| (n.to_string(), random(&shape, 10 + i as u64, 1.0)));
    report(&format!("Attention causal H={heads} S={s} D=64"), g, inputs.collect());
}

/// CPU time of the calling thread (the kernels run on it with one thread).
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let ns = stat.split_whitespace().next().and_then(|t| t.parse::<u64>().ok()).unwrap_or(0);
    Duration::from_nanos(ns)
}

/// Softmax and LogSoftmax over `[rows, 32000]` with every kernel, one
/// thread, runs interleaved: the best thread CPU time of each, which a
/// loaded machine disturbs less than wall time.
fn softmax_kernels(rows: usize) {
    let shape = [rows, 32000];
    let inputs = vec![("x".to_string(), random(&shape, 3, 10.0))];
    for log in [false, true] {
        let algos = [SoftmaxAlgorithm::TwoPass, SoftmaxAlgorithm::ThreePass, SoftmaxAlgorithm::Online];
        // Ratios are to the first, the paper's two-pass kernel.
        let compiled: Vec<_> = algos
            .iter()
            .map(|&algo| {
                let mut g = Graph::new("softmax");
                let x = g.add_input("x", TensorType::fixed(DType::F32, &shape)).expect("fresh name");
                let op = if log { Op::LogSoftmax { axis: -1 } } else { Op::Softmax { axis: -1 } };
                let id = g.add_node("sm", op, vec![Some(x)], &["y"]).expect("valid node");
                g.add_output(g.node(id).output(0).expect("one output"));
                kiln_ir::infer_types(&mut g).expect("the graph is well typed");
                let c = compile(&g, &CompileOptions { softmax: algo, threads: Some(1), ..Default::default() })
                    .expect("compiles");
                c.run(&inputs).expect("runs");
                c
            })
            .collect();
        let mut best = vec![Duration::MAX; algos.len()];
        // Outputs reused across runs, so the times are the kernels' and not
        // the page faults of fresh output tensors.
        let mut outputs: Vec<Vec<Tensor>> = vec![Vec::new(); algos.len()];
        for _ in 0..5 {
            for ((c, b), out) in compiled.iter().zip(&mut best).zip(&mut outputs) {
                let t = thread_cpu();
                c.run_into(&inputs, out).expect("runs");
                *b = (*b).min(thread_cpu() - t);
            }
        }
        let name = if log { "LogSoftmax" } else { "Softmax" };
        let mut line = format!("{name} [{rows}, 32000], 1 thread, CPU ms:");
        for (algo, b) in algos.iter().zip(&best) {
            line.push_str(&format!(
                "  {algo:?} {:.1} ({:.2}x of two-pass)",
                b.as_secs_f64() * 1e3,
                b.as_secs_f64() / best[0].as_secs_f64()
            ));
        }
        println!("{line}");
    }
}

fn main() {
    if let Some(arg) = std::env::args_os().nth(1) {
        if arg == "softmax" {
            let rows = std::env::args().nth(2).and_then(|r| r.parse().ok()).unwrap_or(4096);
            softmax_kernels(rows);
        } else if arg == "attention" {
            for s in [1024, 2048, 4096] {
                attention(s, 2);
            }
        } else {
            model(std::path::Path::new(&arg));
        }
        return;
    }
    let target = compile(&Graph::new("empty"), &CompileOptions::default()).expect("empty graph compiles");
    println!("target: {:?}", target.target());

    let (m, k, n) = (512, 512, 512);
    let mut g = Graph::new("matmul");
    let a = g.add_input("a", TensorType::fixed(DType::F32, &[m, k])).expect("fresh name");
    let b = g.add_input("b", TensorType::fixed(DType::F32, &[k, n])).expect("fresh name");
    let id = g.add_node("mm", Op::MatMul, vec![Some(a), Some(b)], &["y"]).expect("valid node");
    g.add_output(g.node(id).output(0).expect("one output"));
    let flops = 2.0 * (m * k * n) as f64;
    report(
        &format!("MatMul {m}x{k}x{n} ({:.1} GFLOP)", flops / 1e9),
        g,
        vec![("a".into(), random(&[m, k], 1, 1.0)), ("b".into(), random(&[k, n], 2, 1.0))],
    );

    let shape = [1024, 8192];
    let mut g = Graph::new("softmax");
    let x = g.add_input("x", TensorType::fixed(DType::F32, &shape)).expect("fresh name");
    let id = g.add_node("sm", Op::Softmax { axis: -1 }, vec![Some(x)], &["y"]).expect("valid node");
    g.add_output(g.node(id).output(0).expect("one output"));
    report("Softmax [1024, 8192]", g, vec![("x".into(), random(&shape, 3, 10.0))]);

    let shape = [1024, 3072];
    let mut g = Graph::new("gelu");
    let x = g.add_input("x", TensorType::fixed(DType::F32, &shape)).expect("fresh name");
    let bias = g.add_input("bias", TensorType::fixed(DType::F32, &[3072])).expect("fresh name");
    let add = g.add_node("add", Op::Binary(BinaryOp::Add), vec![Some(x), Some(bias)], &["xb"]).expect("valid");
    let xb = g.node(add).output(0).expect("one output");
    let gelu =
        g.add_node("gelu", Op::Gelu { approximate: GeluApproximation::None }, vec![Some(xb)], &["y"]).expect("valid");
    g.add_output(g.node(gelu).output(0).expect("one output"));
    report(
        "bias + Gelu [1024, 3072] (fused)",
        g,
        vec![("x".into(), random(&shape, 4, 3.0)), ("bias".into(), random(&[3072], 5, 1.0))],
    );

    let (n, d, v) = (256, 256, 8192);
    let mut g = Graph::new("lce");
    let h = g.add_input("h", TensorType::fixed(DType::F32, &[n, d])).expect("fresh name");
    let w = g.add_input("w", TensorType::fixed(DType::F32, &[v, d])).expect("fresh name");
    let y = g.add_input("y", TensorType::fixed(DType::I64, &[n])).expect("fresh name");
    let op = Op::LinearCrossEntropy {
        reduction: LossReduction::Mean,
        ignore_index: None,
        label_smoothing: 0.0,
        z_loss: 1e-4,
        transpose_weight: true,
        chunk_size: 4096,
    };
    let id = g.add_node("lce", op, vec![Some(h), Some(w), Some(y)], &["loss"]).expect("valid node");
    g.add_output(g.node(id).output(0).expect("one output"));
    let labels = Tensor::from_i64s(DType::I64, &[n], &(0..n as i64).map(|i| (i * 31) % v as i64).collect::<Vec<_>>());
    report(
        &format!("LinearCrossEntropy N={n} d={d} V={v}"),
        g,
        vec![("h".into(), random(&[n, d], 6, 1.0)), ("w".into(), random(&[v, d], 7, 0.1)), ("y".into(), labels)],
    );

    attention(1024, 2);
}
