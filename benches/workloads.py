#!/usr/bin/env python3
"""Benchmark workloads for benches/compare_ort.py: ONNX models plus their inputs.

Usage:
    python benches/workloads.py [--out target/bench-workloads] [--quick] [--only NAME ...]

Writes, for every workload NAME,

    OUT/full|quick/NAME/*.onnx          the model(s) to time
    OUT/full|quick/NAME/inputs/X.npy    one file per graph input, shared by
                                        kiln and onnxruntime
    OUT/full|quick/NAME/config.json     the sizes it was made with

and skips a workload whose config.json already matches. Everything is seeded,
so the same flags give the same files.

Workloads (full size; --quick shrinks every one for a smoke run):

  lm_head_loss  LM head + loss, N=4096 tokens, d=768, V=50257 (GPT-2 vocabulary):
                loss.onnx   = MatMul(hidden, W[d, V]) -> SoftmaxCrossEntropyLoss(mean)
                logits.onnx = the MatMul alone (onnxruntime's logits-only baseline)
  softmax       Softmax over the last axis of a [4096, 32000] f32 input
  matmul        [1024, 1024] x [1024, 1024] f32 (the right operand is a weight)
  attention     one batch, 4 heads, sequence 4096, head dim 64, not causal:
                unfused.onnx = MatMul(Q, Kt) * 1/sqrt(64) -> Softmax -> MatMul(V)
                fused.onnx   = ONNX-23 Attention(Q, K, V)
                and, for kiln's own figures (compare_ort.py does not run
                them): fused_causal.onnx (is_causal=1, same inputs) and
                fused_f16.onnx (f16 tensors, inputs_f16/)
  gpt2          examples/models/make_models.py's gpt2 (with its shifted LM loss),
                DistilGPT-2-shaped: 6 layers, d 768, 12 heads, vocab 50257,
                batch 1 x seq 128 inputs
  bert          make_models.py's BERT encoder, MiniLM-L6-H384-shaped: 6 layers,
                d 384, 12 heads, FFN 1536, vocab 30522, batch 1 x seq 128 inputs

The end-to-end models use make_models.py's "fused" export style (opset 23:
LayerNormalization, Gelu, Gemm, SoftmaxCrossEntropyLoss); --style unfused
picks its torch.onnx-like style instead.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "target", "bench-workloads")
MAKE_MODELS = os.path.join(REPO, "examples", "models", "make_models.py")

NAMES = ["lm_head_loss", "softmax", "matmul", "attention", "gpt2", "bert"]

FULL = {
    "lm_head_loss": {"n": 4096, "d": 768, "vocab": 50257},
    "softmax": {"rows": 4096, "cols": 32000},
    "matmul": {"m": 1024, "k": 1024, "n": 1024},
    "attention": {"batch": 1, "heads": 4, "seq": 4096, "head_dim": 64, "variants": ["causal", "f16"]},
    "gpt2": {"layers": 6, "d_model": 768, "heads": 12, "vocab": 50257, "max_pos": 1024, "batch": 1, "seq": 128},
    "bert": {"layers": 6, "d_model": 384, "heads": 12, "ffn": 1536, "vocab": 30522, "max_pos": 512,
             "batch": 1, "seq": 128},
}

QUICK = {
    "lm_head_loss": {"n": 256, "d": 64, "vocab": 2048},
    "softmax": {"rows": 256, "cols": 2048},
    "matmul": {"m": 128, "k": 128, "n": 128},
    "attention": {"batch": 1, "heads": 2, "seq": 256, "head_dim": 64, "variants": ["causal", "f16"]},
    "gpt2": {"layers": 2, "d_model": 64, "heads": 4, "vocab": 512, "max_pos": 64, "batch": 1, "seq": 32},
    "bert": {"layers": 2, "d_model": 64, "heads": 4, "ffn": 256, "vocab": 512, "max_pos": 64, "batch": 1, "seq": 32},
}

F32 = np.float32
OPSET = 23


def _model(nodes, inputs, outputs, initializers, name):
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="kiln benches/workloads.py")
    # Initializers here stay well under protobuf's 2 GB, so one file holds all.
    onnx.checker.check_model(model)
    return model


def _f32_input(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _save(model, path):
    with open(path, "wb") as f:
        f.write(model.SerializeToString())


def _save_inputs(directory, arrays):
    os.makedirs(directory, exist_ok=True)
    for name, arr in arrays.items():
        np.save(os.path.join(directory, f"{name}.npy"), np.ascontiguousarray(arr))


def make_lm_head_loss(cfg, out, rng):
    n, d, v = cfg["n"], cfg["d"], cfg["vocab"]
    w = numpy_helper.from_array((rng.standard_normal((d, v), dtype=F32) * 0.02).astype(F32), "lm_head.weight")
    hidden = _f32_input("hidden", [n, d])
    labels = helper.make_tensor_value_info("labels", TensorProto.INT64, [n])
    matmul = helper.make_node("MatMul", ["hidden", "lm_head.weight"], ["logits"], name="lm_head")
    sce = helper.make_node("SoftmaxCrossEntropyLoss", ["logits", "labels"], ["loss"], name="cross_entropy",
                           reduction="mean")
    loss_out = helper.make_tensor_value_info("loss", TensorProto.FLOAT, [])
    _save(_model([matmul, sce], [hidden, labels], [loss_out], [w], "lm_head_loss"), os.path.join(out, "loss.onnx"))
    logits_out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [n, v])
    _save(_model([matmul], [hidden], [logits_out], [w], "lm_head_logits"), os.path.join(out, "logits.onnx"))
    _save_inputs(os.path.join(out, "inputs"), {
        "hidden": rng.standard_normal((n, d), dtype=F32),
        "labels": rng.integers(0, v, size=(n,), dtype=np.int64),
    })


def make_softmax(cfg, out, rng):
    shape = [cfg["rows"], cfg["cols"]]
    node = helper.make_node("Softmax", ["x"], ["y"], name="softmax", axis=-1)
    _save(_model([node], [_f32_input("x", shape)], [_f32_input("y", shape)], [], "softmax"),
          os.path.join(out, "model.onnx"))
    # Logit-like spread, so that exp() covers a realistic range.
    _save_inputs(os.path.join(out, "inputs"), {"x": rng.standard_normal(shape, dtype=F32) * 4})


def make_matmul(cfg, out, rng):
    m, k, n = cfg["m"], cfg["k"], cfg["n"]
    b = numpy_helper.from_array(rng.standard_normal((k, n), dtype=F32), "b")
    node = helper.make_node("MatMul", ["a", "b"], ["c"], name="matmul")
    _save(_model([node], [_f32_input("a", [m, k])], [_f32_input("c", [m, n])], [b], "matmul"),
          os.path.join(out, "model.onnx"))
    _save_inputs(os.path.join(out, "inputs"), {"a": rng.standard_normal((m, k), dtype=F32)})


def make_attention(cfg, out, rng):
    shape = [cfg["batch"], cfg["heads"], cfg["seq"], cfg["head_dim"]]
    inputs = [_f32_input(n, shape) for n in ("q", "k", "v")]
    output = _f32_input("y", shape)
    scale = numpy_helper.from_array(np.array(1.0 / np.sqrt(cfg["head_dim"]), dtype=F32), "scale")
    unfused = [
        helper.make_node("Transpose", ["k"], ["kt"], name="k_transpose", perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="qk"),
        helper.make_node("Mul", ["scores", "scale"], ["scaled"], name="scale"),
        helper.make_node("Softmax", ["scaled"], ["probs"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "v"], ["y"], name="pv"),
    ]
    _save(_model(unfused, inputs, [output], [scale], "attention_unfused"), os.path.join(out, "unfused.onnx"))
    fused = [helper.make_node("Attention", ["q", "k", "v"], ["y"], name="attention")]
    _save(_model(fused, inputs, [output], [], "attention_fused"), os.path.join(out, "fused.onnx"))
    arrays = {n: rng.standard_normal(shape, dtype=F32) for n in ("q", "k", "v")}
    _save_inputs(os.path.join(out, "inputs"), arrays)
    if "causal" in cfg.get("variants", []):
        causal = [helper.make_node("Attention", ["q", "k", "v"], ["y"], name="attention", is_causal=1)]
        _save(_model(causal, inputs, [output], [], "attention_causal"), os.path.join(out, "fused_causal.onnx"))
    if "f16" in cfg.get("variants", []):
        f16 = [helper.make_tensor_value_info(n, TensorProto.FLOAT16, shape) for n in ("q", "k", "v", "y")]
        _save(_model(fused, f16[:3], f16[3:], [], "attention_f16"), os.path.join(out, "fused_f16.onnx"))
        _save_inputs(os.path.join(out, "inputs_f16"), {n: a.astype(np.float16) for n, a in arrays.items()})


def _make_models(family, cfg, out, style, extra):
    """Runs make_models.py for one model and moves its model.onnx into `out`."""
    staging = os.path.join(out, "make_models")
    args = [sys.executable, MAKE_MODELS, "--out", staging, "--only", f"{family}_{style}", "--no-test-data",
            "--layers", str(cfg["layers"]), "--d-model", str(cfg["d_model"]), "--heads", str(cfg["heads"]),
            "--kv-heads", str(cfg["heads"]), "--vocab", str(cfg["vocab"]), "--seq", str(cfg["seq"]),
            "--batch", str(cfg["batch"]), "--max-pos", str(cfg["max_pos"])] + extra
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    os.replace(os.path.join(staging, f"{family}_{style}", "model.onnx"), os.path.join(out, "model.onnx"))
    os.rmdir(os.path.join(staging, f"{family}_{style}"))
    os.rmdir(staging)


def make_gpt2(cfg, out, rng, style):
    _make_models("gpt2", cfg, out, style, [])
    ids = rng.integers(0, cfg["vocab"], size=(cfg["batch"], cfg["seq"]), dtype=np.int64)
    _save_inputs(os.path.join(out, "inputs"), {"input_ids": ids, "labels": ids.copy()})


def make_bert(cfg, out, rng, style):
    _make_models("bert", cfg, out, style, ["--ffn", str(cfg["ffn"])])
    shape = (cfg["batch"], cfg["seq"])
    _save_inputs(os.path.join(out, "inputs"), {
        "input_ids": rng.integers(1, cfg["vocab"], size=shape, dtype=np.int64),
        "attention_mask": np.ones(shape, dtype=np.int64),
        "token_type_ids": np.zeros(shape, dtype=np.int64),
    })


MAKERS = {
    "lm_head_loss": make_lm_head_loss,
    "softmax": make_softmax,
    "matmul": make_matmul,
    "attention": make_attention,
    "gpt2": make_gpt2,
    "bert": make_bert,
}


def generate(out=DEFAULT_OUT, quick=False, only=None, style="fused", log=print):
    """Writes the workloads (skipping those already written with the same
    config) and returns {name: (directory, config)}."""
    sizes = QUICK if quick else FULL
    root = os.path.join(out, "quick" if quick else "full")
    made = {}
    for name in only or NAMES:
        cfg = dict(sizes[name])
        if name in ("gpt2", "bert"):
            cfg["style"] = style
        directory = os.path.join(root, name)
        stamp = os.path.join(directory, "config.json")
        if os.path.exists(stamp):
            with open(stamp) as f:
                if json.load(f) == cfg:
                    made[name] = (directory, cfg)
                    continue
        os.makedirs(directory, exist_ok=True)
        # The config is written last, so that an interrupted run is redone.
        if os.path.exists(stamp):
            os.remove(stamp)
        log(f"writing workload {name} {cfg} -> {directory}")
        rng = np.random.default_rng(NAMES.index(name))
        if name in ("gpt2", "bert"):
            MAKERS[name](cfg, directory, rng, style)
        else:
            MAKERS[name](cfg, directory, rng)
        with open(stamp, "w") as f:
            json.dump(cfg, f, sort_keys=True)
        made[name] = (directory, cfg)
    return made


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=DEFAULT_OUT, help="output directory (default target/bench-workloads)")
    p.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    p.add_argument("--only", nargs="+", choices=NAMES, metavar="NAME", help=f"some of {', '.join(NAMES)}")
    p.add_argument("--style", choices=["fused", "unfused"], default="fused",
                   help="make_models.py export style of gpt2 and bert (default fused)")
    a = p.parse_args(argv)
    for name, (directory, cfg) in generate(a.out, a.quick, a.only, a.style).items():
        print(f"{name}: {directory} {cfg}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
