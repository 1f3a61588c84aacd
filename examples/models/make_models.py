#!/usr/bin/env python3
"""Generate small example transformer models (ONNX) plus reference test data.

Usage:
    python examples/models/make_models.py --out examples/models/gen [--only NAME ...]

For every model NAME this writes

    OUT/NAME/model.onnx
    OUT/NAME/test_data_set_0/input_K.pb    (one per graph input, in graph order)
    OUT/NAME/test_data_set_0/output_K.pb   (one per graph output, in graph order)

which is the layout of the ONNX backend node tests. Reference outputs are
computed with onnxruntime (CPUExecutionProvider, graph optimizations off, one
thread) on seeded random inputs.

Each model family comes in two export styles that compute the same function
with the same weights and the same inputs (so their reference outputs agree to
float rounding):

  *_fused    newest opset (23), high-level ops: LayerNormalization,
             RMSNormalization, RotaryEmbedding, Gelu, Gemm, SoftmaxCrossEntropyLoss
  *_unfused  older opsets (13/17/18), everything written out from primitive ops
             the way torch.onnx exports look (Shape/Gather/Concat/Reshape chains,
             Constant nodes, MatMul+Add, ...)

Everything is deterministic: the same flags give byte-identical files.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F32 = np.float32
I64 = np.int64
I64_MAX = int(np.iinfo(np.int64).max)
F32_MIN = float(np.finfo(np.float32).min)

MODEL_NAMES = [
    "gpt2_fused",
    "gpt2_unfused",
    "bert_fused",
    "bert_unfused",
    "llama_fused",
    "llama_unfused",
]


# --------------------------------------------------------------------------
# Graph builder
# --------------------------------------------------------------------------


class GraphBuilder:
    """Tiny helper around onnx.helper with scoped, unique, readable names.

    Node names: inside scope "layers.0.attn", op("MatMul", ..., name="q_proj")
    is called "layers.0.attn.q_proj"; an unnamed op gets "layers.0.attn/MatMul"
    (then "/MatMul_1", ...). A single-output node's output tensor has the same
    name as the node.
    """

    def __init__(self, const_nodes: bool):
        # const_nodes: materialize constants as Constant nodes (torch.onnx
        # style) instead of initializers.
        self.const_nodes = const_nodes
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._names: set[str] = set()
        self._consts: dict[tuple, str] = {}
        self._scope: list[str] = []

    @contextlib.contextmanager
    def scope(self, name: str):
        self._scope.append(name)
        try:
            yield
        finally:
            self._scope.pop()

    def _claim(self, base: str) -> str:
        name = base
        i = 0
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def _claim_exact(self, name: str) -> str:
        if name in self._names:
            raise ValueError(f"duplicate tensor name {name!r}")
        self._names.add(name)
        return name

    def input(self, name: str, elem_type: int, shape) -> str:
        self._claim_exact(name)
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def output(self, name: str, elem_type: int, shape) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))

    def init(self, name: str, arr: np.ndarray) -> str:
        name = self._claim_exact(name)
        self.initializers.append(numpy_helper.from_array(np.array(arr, order="C", copy=True), name))
        return name

    def const(self, value, dtype=F32) -> str:
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key in self._consts:
            return self._consts[key]
        tag = {"float32": "f32", "int64": "i64", "bool": "bool"}[arr.dtype.name]
        shape = "" if arr.ndim == 0 else "[" + ",".join(map(str, arr.shape)) + "]"
        if arr.size <= 4:
            vals = "_".join(repr(v) for v in arr.reshape(-1).tolist())
            base = f"const.{tag}{shape}.{vals}"
        else:
            base = f"const.{tag}{shape}"
        if self.const_nodes:
            name = self._claim(base)
            self.nodes.append(
                helper.make_node(
                    "Constant", [], [name], name=name,
                    value=numpy_helper.from_array(arr, name),
                )
            )
        else:
            name = self.init(self._claim_peek(base), arr)
        self._consts[key] = name
        return name

    def _claim_peek(self, base: str) -> str:
        name = base
        i = 0
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        return name

    def op(self, op_type: str, inputs, name: str | None = None, out=None,
           n_out: int = 1, **attrs):
        prefix = ".".join(self._scope)
        if name is None:
            base = f"{prefix}/{op_type}" if prefix else op_type
        else:
            base = f"{prefix}.{name}" if prefix else name
        if out is not None:
            outs = [out] if isinstance(out, str) else list(out)
            for o in outs:
                self._claim_exact(o)
            node_name = self._claim(base)
        else:
            node_name = self._claim(base)
            if n_out == 1:
                outs = [node_name]
            else:
                outs = [self._claim_exact(f"{node_name}:{i}") for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=node_name, **attrs))
        return outs[0] if len(outs) == 1 else outs

    def model(self, graph_name: str, opset: int, doc: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, graph_name, self.inputs, self.outputs, self.initializers
        )
        opsets = [helper.make_opsetid("", opset)]
        model = helper.make_model(
            graph,
            opset_imports=opsets,
            producer_name="kiln-make_models",
            producer_version="1",
            doc_string=doc,
        )
        model.ir_version = helper.find_min_ir_version_for(opsets)
        return model


# --------------------------------------------------------------------------
# Shared building blocks
# --------------------------------------------------------------------------


def ax(g: GraphBuilder, *axes) -> str:
    return g.const(list(axes), I64)


def layer_norm(g, x, gamma, beta, eps, fused: bool):
    if fused:
        return g.op("LayerNormalization", [x, gamma, beta], axis=-1, epsilon=eps)
    # opset 13/17: ReduceMean takes axes as an attribute.
    mean = g.op("ReduceMean", [x], axes=[-1], keepdims=1)
    d = g.op("Sub", [x, mean])
    sq = g.op("Pow", [d, g.const(2.0)])
    var = g.op("ReduceMean", [sq], axes=[-1], keepdims=1)
    ve = g.op("Add", [var, g.const(eps)])
    std = g.op("Sqrt", [ve])
    n = g.op("Div", [d, std])
    s = g.op("Mul", [n, gamma])
    return g.op("Add", [s, beta])


def rms_norm(g, x, weight, eps, fused: bool):
    if fused:
        return g.op("RMSNormalization", [x, weight], axis=-1, epsilon=eps)
    # opset 18: ReduceMean takes axes as an input.
    sq = g.op("Pow", [x, g.const(2.0)])
    ms = g.op("ReduceMean", [sq, ax(g, -1)], keepdims=1)
    mse = g.op("Add", [ms, g.const(eps)])
    rms = g.op("Sqrt", [mse])
    inv = g.op("Reciprocal", [rms])
    n = g.op("Mul", [x, inv])
    return g.op("Mul", [n, weight])


def gelu_tanh_unfused(g, x):
    # 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))
    x3 = g.op("Pow", [x, g.const(3.0)])
    t = g.op("Mul", [x3, g.const(0.044715)])
    inner = g.op("Add", [x, t])
    s = g.op("Mul", [inner, g.const(math.sqrt(2.0 / math.pi))])
    th = g.op("Tanh", [s])
    one_p = g.op("Add", [th, g.const(1.0)])
    xh = g.op("Mul", [x, one_p])
    return g.op("Mul", [xh, g.const(0.5)])


def gelu_erf_unfused(g, x):
    # 0.5 * x * (1 + erf(x / sqrt(2)))
    d = g.op("Div", [x, g.const(math.sqrt(2.0))])
    e = g.op("Erf", [d])
    one_p = g.op("Add", [e, g.const(1.0)])
    xh = g.op("Mul", [x, one_p])
    return g.op("Mul", [xh, g.const(0.5)])


def dyn_batch_seq(g, ids):
    """torch.onnx-style: Shape -> Gather(0/1) scalars -> Unsqueeze to [1]."""
    with g.scope("shape"):
        shp = g.op("Shape", [ids])
        b = g.op("Gather", [shp, g.const(0, I64)], axis=0)
        s = g.op("Gather", [shp, g.const(1, I64)], axis=0)
        b1 = g.op("Unsqueeze", [b, ax(g, 0)])
        s1 = g.op("Unsqueeze", [s, ax(g, 0)])
    return shp, b, s, b1, s1


def split_heads_unfused(g, x, b1, s1, n_heads, hd, perm):
    shape = g.op("Concat", [b1, s1, g.const([n_heads], I64), g.const([hd], I64)], axis=0)
    r = g.op("Reshape", [x, shape])
    return g.op("Transpose", [r], perm=perm)


def merge_heads_unfused(g, ctx, b1, s1, d):
    t = g.op("Transpose", [ctx], perm=[0, 2, 1, 3])
    shape = g.op("Concat", [b1, s1, g.const([d], I64)], axis=0)
    return g.op("Reshape", [t, shape])


def lm_loss(g, logits, labels, vocab, style: str):
    """HF-style shifted LM loss: logits[:, :-1] vs labels[:, 1:], ignore -100."""
    with g.scope("loss"):
        sl = g.op("Slice", [logits, g.const([0], I64), g.const([-1], I64), ax(g, 1)],
                  name="shift_logits")
        lb = g.op("Slice", [labels, g.const([1], I64), g.const([I64_MAX], I64), ax(g, 1)],
                  name="shift_labels")
        sl2 = g.op("Reshape", [sl, g.const([-1, vocab], I64)])
        lb2 = g.op("Reshape", [lb, g.const([-1], I64)])
        if style == "sce":
            return g.op("SoftmaxCrossEntropyLoss", [sl2, lb2], name="cross_entropy",
                        out="loss", ignore_index=-100, reduction="mean")
        lp = g.op("LogSoftmax", [sl2], axis=-1)
        return g.op("NegativeLogLikelihoodLoss", [lp, lb2], name="nll",
                    out="loss", ignore_index=-100, reduction="mean")


# --------------------------------------------------------------------------
# Parameters and inputs (shared by fused/unfused variants of a family)
# --------------------------------------------------------------------------


def normal(rng, shape, std):
    return (rng.standard_normal(shape) * std).astype(F32)


def ln_params(rng, d):
    # Non-trivial gamma/beta so that swapped or dropped affine terms show up.
    return (1.0 + normal(rng, (d,), 0.1)), normal(rng, (d,), 0.1)


def gpt2_params(cfg, rng):
    d, f, v, p = cfg.d_model, cfg.ffn, cfg.vocab, cfg.max_pos
    P = {"wte": normal(rng, (v, d), 0.02), "wpe": normal(rng, (p, d), 0.01)}
    for i in range(cfg.layers):
        P[f"{i}.ln_1.g"], P[f"{i}.ln_1.b"] = ln_params(rng, d)
        P[f"{i}.c_attn.w"] = normal(rng, (d, 3 * d), 0.02)
        P[f"{i}.c_attn.b"] = normal(rng, (3 * d,), 0.02)
        P[f"{i}.c_proj.w"] = normal(rng, (d, d), 0.02)
        P[f"{i}.c_proj.b"] = normal(rng, (d,), 0.02)
        P[f"{i}.ln_2.g"], P[f"{i}.ln_2.b"] = ln_params(rng, d)
        P[f"{i}.c_fc.w"] = normal(rng, (d, f), 0.02)
        P[f"{i}.c_fc.b"] = normal(rng, (f,), 0.02)
        P[f"{i}.mlp_proj.w"] = normal(rng, (f, d), 0.02)
        P[f"{i}.mlp_proj.b"] = normal(rng, (d,), 0.02)
    P["ln_f.g"], P["ln_f.b"] = ln_params(rng, d)
    return P


def bert_params(cfg, rng):
    d, f, v, p = cfg.d_model, cfg.ffn, cfg.vocab, cfg.max_pos
    P = {
        "word": normal(rng, (v, d), 0.02),
        "pos": normal(rng, (p, d), 0.02),
        "type": normal(rng, (2, d), 0.02),
    }
    P["emb_ln.g"], P["emb_ln.b"] = ln_params(rng, d)
    for i in range(cfg.layers):
        for n in ("q", "k", "v", "o"):
            P[f"{i}.{n}.w"] = normal(rng, (d, d), 0.02)
            P[f"{i}.{n}.b"] = normal(rng, (d,), 0.02)
        P[f"{i}.attn_ln.g"], P[f"{i}.attn_ln.b"] = ln_params(rng, d)
        P[f"{i}.inter.w"] = normal(rng, (d, f), 0.02)
        P[f"{i}.inter.b"] = normal(rng, (f,), 0.02)
        P[f"{i}.out.w"] = normal(rng, (f, d), 0.02)
        P[f"{i}.out.b"] = normal(rng, (d,), 0.02)
        P[f"{i}.out_ln.g"], P[f"{i}.out_ln.b"] = ln_params(rng, d)
    return P


def llama_params(cfg, rng):
    d, f, v = cfg.d_model, cfg.llama_ffn, cfg.vocab
    hd = d // cfg.heads
    kvd = cfg.kv_heads * hd
    P = {"embed": normal(rng, (v, d), 0.02)}
    for i in range(cfg.layers):
        P[f"{i}.input_norm"] = 1.0 + normal(rng, (d,), 0.1)
        P[f"{i}.q"] = normal(rng, (d, d), 0.02)
        P[f"{i}.k"] = normal(rng, (d, kvd), 0.02)
        P[f"{i}.v"] = normal(rng, (d, kvd), 0.02)
        P[f"{i}.o"] = normal(rng, (d, d), 0.02)
        P[f"{i}.post_norm"] = 1.0 + normal(rng, (d,), 0.1)
        P[f"{i}.gate"] = normal(rng, (d, f), 0.02)
        P[f"{i}.up"] = normal(rng, (d, f), 0.02)
        P[f"{i}.down"] = normal(rng, (f, d), 0.02)
    P["norm"] = 1.0 + normal(rng, (d,), 0.1)
    P["lm_head"] = normal(rng, (d, v), 0.02)
    return P


def rope_tables(cfg):
    hd = cfg.d_model // cfg.heads
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    freqs = np.outer(np.arange(cfg.max_pos, dtype=np.float64), inv)  # [P, hd/2]
    return np.cos(freqs).astype(F32), np.sin(freqs).astype(F32)


def lm_inputs(cfg, rng):
    ids = rng.integers(0, cfg.vocab, size=(cfg.batch, cfg.seq), dtype=I64)
    labels = ids.copy()
    # Like padded batches in HF training: the tail of the last row is ignored.
    if cfg.batch > 1 and cfg.seq > 2:
        labels[-1, -max(1, cfg.seq // 8):] = -100
    return {"input_ids": ids, "labels": labels}


def bert_inputs(cfg, rng):
    B, S = cfg.batch, cfg.seq
    ids = rng.integers(1, cfg.vocab, size=(B, S), dtype=I64)
    mask = np.ones((B, S), dtype=I64)
    tt = np.zeros((B, S), dtype=I64)
    for i in range(B):
        pad = min(S - 1, i * max(1, S // 4))
        n = S - pad
        mask[i, n:] = 0
        ids[i, n:] = 0
        tt[i, n // 2:n] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt}


# --------------------------------------------------------------------------
# GPT-2
# --------------------------------------------------------------------------


def build_gpt2(cfg, fused: bool):
    P = gpt2_params(cfg, np.random.default_rng(cfg.seed))
    d, H, V = cfg.d_model, cfg.heads, cfg.vocab
    hd = d // H
    g = GraphBuilder(const_nodes=not fused)
    ids = g.input("input_ids", TensorProto.INT64, ["batch", "seq"])
    labels = g.input("labels", TensorProto.INT64, ["batch", "seq"])
    wte = g.init("transformer.wte.weight", P["wte"])
    wpe = g.init("transformer.wpe.weight", P["wpe"])

    if fused:
        with g.scope("shape"):
            shp = g.op("Shape", [ids])
            s = g.op("Gather", [shp, g.const(1, I64)], axis=0)
            s1 = g.op("Unsqueeze", [s, ax(g, 0)])
            bsd = g.op("Concat", [shp, g.const([d], I64)], axis=0, name="bsd")
            bs3d = g.op("Concat", [shp, g.const([3 * d], I64)], axis=0, name="bs3d")
        pos = g.op("Range", [g.const(0, I64), s, g.const(1, I64)], name="position_ids")
        # HF GPT-2 causal "bias" buffer, sliced to [1, 1, seq, seq].
        bias = g.init("transformer.causal_bias",
                      np.tril(np.ones((cfg.max_pos, cfg.max_pos), dtype=bool))[None, None])
        with g.scope("causal_mask"):
            ends = g.op("Concat", [s1, s1], axis=0)
            mask = g.op("Slice", [bias, g.const([0, 0], I64), ends, ax(g, 2, 3)], name="slice")
        neg = g.const(F32_MIN)
    else:
        shp, b, s, b1, s1 = dyn_batch_seq(g, ids)
        pos = g.op("Range", [g.const(0, I64), s, g.const(1, I64)], name="position_ids")
        # Additive causal mask from a comparison of position ranges.
        with g.scope("causal_mask"):
            q_pos = g.op("Unsqueeze", [pos, ax(g, 1)])
            k_pos = g.op("Unsqueeze", [pos, ax(g, 0)])
            future = g.op("Greater", [k_pos, q_pos])
            fut_f = g.op("Cast", [future], to=TensorProto.FLOAT)
            mask = g.op("Mul", [fut_f, g.const(-1e9)], name="additive")

    with g.scope("embed"):
        tok = g.op("Gather", [wte, ids], name="wte")
        pe = g.op("Gather", [wpe, pos], name="wpe")
        h = g.op("Add", [tok, pe], name="sum")

    for i in range(cfg.layers):
        pre = f"transformer.h.{i}"
        with g.scope(f"layers.{i}"):
            # ---- attention ----
            with g.scope("ln_1"):
                x = layer_norm(g, h, g.init(f"{pre}.ln_1.weight", P[f"{i}.ln_1.g"]),
                               g.init(f"{pre}.ln_1.bias", P[f"{i}.ln_1.b"]), 1e-5, fused)
            with g.scope("attn"):
                if fused:
                    x2 = g.op("Reshape", [x, g.const([-1, d], I64)], name="to_2d")
                    w = g.init(f"{pre}.attn.c_attn.weight", P[f"{i}.c_attn.w"].T)
                    bb = g.init(f"{pre}.attn.c_attn.bias", P[f"{i}.c_attn.b"])
                    qkv = g.op("Gemm", [x2, w, bb], name="qkv_proj", transB=1)
                    qkv = g.op("Reshape", [qkv, bs3d], name="qkv_to_3d")
                    q, k, v = g.op("Split", [qkv, g.const([d, d, d], I64)], name="split_qkv",
                                   n_out=3, axis=2)
                    hs = g.const([0, 0, H, hd], I64)
                    q = g.op("Transpose", [g.op("Reshape", [q, hs])], perm=[0, 2, 1, 3])
                    kt = g.op("Transpose", [g.op("Reshape", [k, hs])], perm=[0, 2, 3, 1])
                    v = g.op("Transpose", [g.op("Reshape", [v, hs])], perm=[0, 2, 1, 3])
                    sc = g.op("MatMul", [q, kt], name="scores")
                    sc = g.op("Div", [sc, g.const(math.sqrt(hd))], name="scale")
                    sc = g.op("Where", [mask, sc, neg], name="causal_mask")
                    p = g.op("Softmax", [sc], axis=-1)
                    ctx = g.op("MatMul", [p, v], name="context")
                    ctx = g.op("Transpose", [ctx], perm=[0, 2, 1, 3])
                    ctx = g.op("Reshape", [ctx, g.const([-1, d], I64)])
                    w = g.init(f"{pre}.attn.c_proj.weight", P[f"{i}.c_proj.w"].T)
                    bb = g.init(f"{pre}.attn.c_proj.bias", P[f"{i}.c_proj.b"])
                    a = g.op("Gemm", [ctx, w, bb], name="o_proj", transB=1)
                    a = g.op("Reshape", [a, bsd], name="o_to_3d")
                else:
                    cw, cb = P[f"{i}.c_attn.w"], P[f"{i}.c_attn.b"]
                    proj = {}
                    for j, n in enumerate(("q", "k", "v")):
                        w = g.init(f"{pre}.attn.{n}_proj.weight", cw[:, j * d:(j + 1) * d])
                        bb = g.init(f"{pre}.attn.{n}_proj.bias", cb[j * d:(j + 1) * d])
                        mm = g.op("MatMul", [x, w], name=f"{n}_proj")
                        proj[n] = g.op("Add", [mm, bb], name=f"{n}_proj.bias_add")
                    q = split_heads_unfused(g, proj["q"], b1, s1, H, hd, [0, 2, 1, 3])
                    q = g.op("Mul", [q, g.const(1.0 / math.sqrt(hd))], name="scale_q")
                    kt = split_heads_unfused(g, proj["k"], b1, s1, H, hd, [0, 2, 3, 1])
                    v = split_heads_unfused(g, proj["v"], b1, s1, H, hd, [0, 2, 1, 3])
                    sc = g.op("MatMul", [q, kt], name="scores")
                    sc = g.op("Add", [sc, mask], name="causal_mask")
                    p = g.op("Softmax", [sc], axis=-1)
                    ctx = g.op("MatMul", [p, v], name="context")
                    ctx = merge_heads_unfused(g, ctx, b1, s1, d)
                    w = g.init(f"{pre}.attn.o_proj.weight", P[f"{i}.c_proj.w"])
                    bb = g.init(f"{pre}.attn.o_proj.bias", P[f"{i}.c_proj.b"])
                    mm = g.op("MatMul", [ctx, w], name="o_proj")
                    a = g.op("Add", [mm, bb], name="o_proj.bias_add")
            h = g.op("Add", [h, a], name="attn_residual")
            # ---- MLP ----
            with g.scope("ln_2"):
                x = layer_norm(g, h, g.init(f"{pre}.ln_2.weight", P[f"{i}.ln_2.g"]),
                               g.init(f"{pre}.ln_2.bias", P[f"{i}.ln_2.b"]), 1e-5, fused)
            with g.scope("mlp"):
                fcw, fcb = P[f"{i}.c_fc.w"], P[f"{i}.c_fc.b"]
                pw, pb = P[f"{i}.mlp_proj.w"], P[f"{i}.mlp_proj.b"]
                if fused:
                    x2 = g.op("Reshape", [x, g.const([-1, d], I64)], name="to_2d")
                    f = g.op("Gemm", [x2, g.init(f"{pre}.mlp.c_fc.weight", fcw.T),
                                      g.init(f"{pre}.mlp.c_fc.bias", fcb)], name="fc", transB=1)
                    f = g.op("Gelu", [f], name="gelu", approximate="tanh")
                    f = g.op("Gemm", [f, g.init(f"{pre}.mlp.c_proj.weight", pw.T),
                                      g.init(f"{pre}.mlp.c_proj.bias", pb)], name="proj", transB=1)
                    m = g.op("Reshape", [f, bsd], name="to_3d")
                else:
                    f = g.op("MatMul", [x, g.init(f"{pre}.mlp.c_fc.weight", fcw)], name="fc")
                    f = g.op("Add", [f, g.init(f"{pre}.mlp.c_fc.bias", fcb)], name="fc.bias_add")
                    with g.scope("gelu"):
                        f = gelu_tanh_unfused(g, f)
                    f = g.op("MatMul", [f, g.init(f"{pre}.mlp.c_proj.weight", pw)], name="proj")
                    m = g.op("Add", [f, g.init(f"{pre}.mlp.c_proj.bias", pb)],
                             name="proj.bias_add")
            h = g.op("Add", [h, m], name="mlp_residual")

    with g.scope("ln_f"):
        hf = layer_norm(g, h, g.init("transformer.ln_f.weight", P["ln_f.g"]),
                        g.init("transformer.ln_f.bias", P["ln_f.b"]), 1e-5, fused)
    # LM head tied to the token embedding.
    with g.scope("lm_head"):
        wte_t = g.op("Transpose", [wte], name="wte_T", perm=[1, 0])
        g.op("MatMul", [hf, wte_t], name="matmul", out="logits")
    lm_loss(g, "logits", labels, V, "sce" if fused else "nll")

    g.output("loss", TensorProto.FLOAT, [])
    g.output("logits", TensorProto.FLOAT, ["batch", "seq", V])
    name = "gpt2_fused" if fused else "gpt2_unfused"
    model = g.model(name, 23 if fused else 13, f"GPT-2 style decoder ({name}); {cfg.describe()}")
    return model, lm_inputs(cfg, np.random.default_rng(cfg.seed + 1))


# --------------------------------------------------------------------------
# BERT / MiniLM encoder
# --------------------------------------------------------------------------


def build_bert(cfg, fused: bool):
    P = bert_params(cfg, np.random.default_rng(cfg.seed + 100))
    d, H = cfg.d_model, cfg.heads
    hd = d // H
    eps = 1e-12
    g = GraphBuilder(const_nodes=not fused)
    ids = g.input("input_ids", TensorProto.INT64, ["batch", "seq"])
    am = g.input("attention_mask", TensorProto.INT64, ["batch", "seq"])
    tt = g.input("token_type_ids", TensorProto.INT64, ["batch", "seq"])
    pre = "encoder.layer"

    with g.scope("embeddings"):
        if fused:
            shp = g.op("Shape", [ids])
            s = g.op("Gather", [shp, g.const(1, I64)], axis=0)
            pos = g.op("Range", [g.const(0, I64), s, g.const(1, I64)], name="position_ids")
            bsd = g.op("Concat", [shp, g.const([d], I64)], axis=0, name="bsd")
        else:
            shp, b, s, b1, s1 = dyn_batch_seq(g, ids)
            # HF BERT: position_ids buffer [1, max_pos] sliced to [:, :seq].
            buf = g.init("embeddings.position_ids",
                         np.arange(cfg.max_pos, dtype=I64)[None, :])
            pos = g.op("Slice", [buf, g.const([0], I64), s1, ax(g, 1)], name="position_ids")
        we = g.op("Gather", [g.init("embeddings.word_embeddings.weight", P["word"]), ids],
                  name="word")
        pe = g.op("Gather", [g.init("embeddings.position_embeddings.weight", P["pos"]), pos],
                  name="position")
        te = g.op("Gather", [g.init("embeddings.token_type_embeddings.weight", P["type"]), tt],
                  name="token_type")
        e = g.op("Add", [we, te], name="add_type")
        e = g.op("Add", [e, pe], name="add_position")
        with g.scope("LayerNorm"):
            h = layer_norm(g, e, g.init("embeddings.LayerNorm.weight", P["emb_ln.g"]),
                           g.init("embeddings.LayerNorm.bias", P["emb_ln.b"]), eps, fused)

    # Extended additive attention mask [batch, 1, 1, seq]: (1 - mask) * finfo.min
    with g.scope("extended_mask"):
        m4 = g.op("Unsqueeze", [am, ax(g, 1, 2)])
        mf = g.op("Cast", [m4], to=TensorProto.FLOAT)
        inv = g.op("Sub", [g.const(1.0), mf])
        ext = g.op("Mul", [inv, g.const(F32_MIN)], name="additive")

    def lin_fused(x2, wkey, bkey, wname, name):
        return g.op("Gemm", [x2, g.init(f"{wname}.weight", P[wkey].T),
                             g.init(f"{wname}.bias", P[bkey])], name=name, transB=1)

    def lin_unfused(x, wkey, bkey, wname, name):
        mm = g.op("MatMul", [x, g.init(f"{wname}.weight", P[wkey])], name=name)
        return g.op("Add", [mm, g.init(f"{wname}.bias", P[bkey])], name=f"{name}.bias_add")

    for i in range(cfg.layers):
        with g.scope(f"layers.{i}"):
            with g.scope("attn"):
                wp = f"{pre}.{i}.attention.self"
                if fused:
                    x2 = g.op("Reshape", [h, g.const([-1, d], I64)], name="to_2d")
                    hs = g.const([0, 0, H, hd], I64)
                    heads = {}
                    for n in ("q", "k", "v"):
                        full = {"q": "query", "k": "key", "v": "value"}[n]
                        y = lin_fused(x2, f"{i}.{n}.w", f"{i}.{n}.b", f"{wp}.{full}", f"{n}_proj")
                        y = g.op("Reshape", [y, bsd], name=f"{n}_to_3d")
                        y = g.op("Reshape", [y, hs], name=f"{n}_heads")
                        perm = [0, 2, 3, 1] if n == "k" else [0, 2, 1, 3]
                        heads[n] = g.op("Transpose", [y], perm=perm)
                    q, kt, v = heads["q"], heads["k"], heads["v"]
                else:
                    # One fused qkv MatMul + Split (opset 13+ Split takes sizes as input).
                    wqkv = np.concatenate([P[f"{i}.q.w"], P[f"{i}.k.w"], P[f"{i}.v.w"]], axis=1)
                    bqkv = np.concatenate([P[f"{i}.q.b"], P[f"{i}.k.b"], P[f"{i}.v.b"]])
                    mm = g.op("MatMul", [h, g.init(f"{wp}.qkv.weight", wqkv)], name="qkv_proj")
                    qkv = g.op("Add", [mm, g.init(f"{wp}.qkv.bias", bqkv)],
                               name="qkv_proj.bias_add")
                    qp, kp, vp = g.op("Split", [qkv, g.const([d, d, d], I64)], name="split_qkv",
                                      n_out=3, axis=-1)
                    q = split_heads_unfused(g, qp, b1, s1, H, hd, [0, 2, 1, 3])
                    kt = split_heads_unfused(g, kp, b1, s1, H, hd, [0, 2, 3, 1])
                    v = split_heads_unfused(g, vp, b1, s1, H, hd, [0, 2, 1, 3])
                sc = g.op("MatMul", [q, kt], name="scores")
                sc = g.op("Div", [sc, g.const(math.sqrt(hd))], name="scale")
                sc = g.op("Add", [sc, ext], name="padding_mask")
                p = g.op("Softmax", [sc], axis=-1)
                ctx = g.op("MatMul", [p, v], name="context")
                op_ = f"{pre}.{i}.attention.output.dense"
                if fused:
                    ctx = g.op("Transpose", [ctx], perm=[0, 2, 1, 3])
                    ctx = g.op("Reshape", [ctx, g.const([-1, d], I64)])
                    a = lin_fused(ctx, f"{i}.o.w", f"{i}.o.b", op_, "o_proj")
                    a = g.op("Reshape", [a, bsd], name="o_to_3d")
                else:
                    ctx = merge_heads_unfused(g, ctx, b1, s1, d)
                    a = lin_unfused(ctx, f"{i}.o.w", f"{i}.o.b", op_, "o_proj")
            h = g.op("Add", [a, h], name="attn_residual")
            with g.scope("attn_ln"):
                lnp = f"{pre}.{i}.attention.output.LayerNorm"
                h = layer_norm(g, h, g.init(f"{lnp}.weight", P[f"{i}.attn_ln.g"]),
                               g.init(f"{lnp}.bias", P[f"{i}.attn_ln.b"]), eps, fused)
            with g.scope("mlp"):
                ip, outp = f"{pre}.{i}.intermediate.dense", f"{pre}.{i}.output.dense"
                if fused:
                    x2 = g.op("Reshape", [h, g.const([-1, d], I64)], name="to_2d")
                    f = lin_fused(x2, f"{i}.inter.w", f"{i}.inter.b", ip, "fc")
                    f = g.op("Gelu", [f], name="gelu")
                    f = lin_fused(f, f"{i}.out.w", f"{i}.out.b", outp, "proj")
                    m = g.op("Reshape", [f, bsd], name="to_3d")
                else:
                    f = lin_unfused(h, f"{i}.inter.w", f"{i}.inter.b", ip, "fc")
                    with g.scope("gelu"):
                        f = gelu_erf_unfused(g, f)
                    m = lin_unfused(f, f"{i}.out.w", f"{i}.out.b", outp, "proj")
            h = g.op("Add", [m, h], name="mlp_residual")
            with g.scope("out_ln"):
                lnp = f"{pre}.{i}.output.LayerNorm"
                h = layer_norm(g, h, g.init(f"{lnp}.weight", P[f"{i}.out_ln.g"]),
                               g.init(f"{lnp}.bias", P[f"{i}.out_ln.b"]), eps, fused)
    g.op("Identity", [h], name="last_hidden_state", out="last_hidden_state")

    # sentence-transformers mean pooling: sum(h * m) / clamp(sum(m), 1e-9)
    with g.scope("pooling"):
        m3 = g.op("Unsqueeze", [am, ax(g, -1)])
        if not fused:
            m3 = g.op("Expand", [m3, g.op("Shape", ["last_hidden_state"])])
        mf = g.op("Cast", [m3], to=TensorProto.FLOAT)
        hm = g.op("Mul", ["last_hidden_state", mf], name="masked")
        sm = g.op("ReduceSum", [hm, ax(g, 1)], name="sum", keepdims=0)
        cnt = g.op("ReduceSum", [mf, ax(g, 1)], name="count", keepdims=0)
        cnt = g.op("Max", [cnt, g.const(1e-9)], name="clamp")
        g.op("Div", [sm, cnt], name="mean", out="sentence_embedding")

    g.output("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", d])
    g.output("sentence_embedding", TensorProto.FLOAT, ["batch", d])
    name = "bert_fused" if fused else "bert_unfused"
    model = g.model(name, 23 if fused else 17, f"BERT/MiniLM encoder ({name}); {cfg.describe()}")
    return model, bert_inputs(cfg, np.random.default_rng(cfg.seed + 101))


# --------------------------------------------------------------------------
# LLaMA
# --------------------------------------------------------------------------


def build_llama(cfg, fused: bool):
    P = llama_params(cfg, np.random.default_rng(cfg.seed + 200))
    d, H, KV, V = cfg.d_model, cfg.heads, cfg.kv_heads, cfg.vocab
    hd = d // H
    n_rep = H // KV
    eps = 1e-6
    cos, sin = rope_tables(cfg)  # [max_pos, hd/2]
    g = GraphBuilder(const_nodes=not fused)
    ids = g.input("input_ids", TensorProto.INT64, ["batch", "seq"])
    labels = g.input("labels", TensorProto.INT64, ["batch", "seq"])

    shp, b, s, b1, s1 = dyn_batch_seq(g, ids)
    pos = g.op("Range", [g.const(0, I64), s, g.const(1, I64)], name="positions")
    if fused:
        pos_ids = g.op("Expand", [g.op("Unsqueeze", [pos, ax(g, 0)]), shp], name="position_ids")
        cos_c = g.init("rotary.cos_cache", cos)
        sin_c = g.init("rotary.sin_cache", sin)
        # Causal mask: Trilu over a ConstantOfShape of ones -> bool.
        with g.scope("causal_mask"):
            ss = g.op("Concat", [s1, s1], axis=0)
            ones = g.op("ConstantOfShape", [ss],
                        value=numpy_helper.from_array(np.array([1.0], dtype=F32), "one"))
            tril = g.op("Trilu", [ones], upper=0)
            mask = g.op("Cast", [tril], name="bool", to=TensorProto.BOOL)
        neg = g.const(F32_MIN)
    else:
        # HF style: cos/sin tables [max_pos, hd] (= cat(freqs, freqs)) gathered by position.
        with g.scope("rotary"):
            pos_ids = g.op("Unsqueeze", [pos, ax(g, 0)], name="position_ids")  # [1, seq]
            ct = g.init("rotary.cos_table", np.concatenate([cos, cos], axis=1))
            st = g.init("rotary.sin_table", np.concatenate([sin, sin], axis=1))
            cos_g = g.op("Unsqueeze", [g.op("Gather", [ct, pos_ids], name="cos_gather"),
                                       ax(g, 1)], name="cos")  # [1, 1, seq, hd]
            sin_g = g.op("Unsqueeze", [g.op("Gather", [st, pos_ids], name="sin_gather"),
                                       ax(g, 1)], name="sin")
        with g.scope("causal_mask"):
            q_pos = g.op("Unsqueeze", [pos, ax(g, 1)])
            k_pos = g.op("Unsqueeze", [pos, ax(g, 0)])
            allowed = g.op("LessOrEqual", [k_pos, q_pos])
            mask = g.op("Where", [allowed, g.const(0.0), g.const(F32_MIN)], name="additive")

    def rope_unfused(x):
        half = hd // 2
        x1 = g.op("Slice", [x, g.const([0], I64), g.const([half], I64), ax(g, -1)])
        x2 = g.op("Slice", [x, g.const([half], I64), g.const([I64_MAX], I64), ax(g, -1)])
        rot = g.op("Concat", [g.op("Neg", [x2]), x1], name="rotate_half", axis=-1)
        a = g.op("Mul", [x, cos_g])
        bb = g.op("Mul", [rot, sin_g])
        return g.op("Add", [a, bb])

    h = g.op("Gather", [g.init("model.embed_tokens.weight", P["embed"]), ids],
             name="embed_tokens")
    for i in range(cfg.layers):
        pre = f"model.layers.{i}"
        with g.scope(f"layers.{i}"):
            with g.scope("input_norm"):
                x = rms_norm(g, h, g.init(f"{pre}.input_layernorm.weight", P[f"{i}.input_norm"]),
                             eps, fused)
            with g.scope("attn"):
                q = g.op("MatMul", [x, g.init(f"{pre}.self_attn.q_proj.weight", P[f"{i}.q"])],
                         name="q_proj")
                k = g.op("MatMul", [x, g.init(f"{pre}.self_attn.k_proj.weight", P[f"{i}.k"])],
                         name="k_proj")
                v = g.op("MatMul", [x, g.init(f"{pre}.self_attn.v_proj.weight", P[f"{i}.v"])],
                         name="v_proj")
                if fused:
                    q = g.op("Transpose", [g.op("Reshape", [q, g.const([0, 0, H, hd], I64)])],
                             perm=[0, 2, 1, 3])
                    k = g.op("Transpose", [g.op("Reshape", [k, g.const([0, 0, KV, hd], I64)])],
                             perm=[0, 2, 1, 3])
                    v = g.op("Transpose", [g.op("Reshape", [v, g.const([0, 0, KV, hd], I64)])],
                             perm=[0, 2, 1, 3])
                    q = g.op("RotaryEmbedding", [q, cos_c, sin_c, pos_ids], name="rope_q")
                    k = g.op("RotaryEmbedding", [k, cos_c, sin_c, pos_ids], name="rope_k")
                else:
                    q = split_heads_unfused(g, q, b1, s1, H, hd, [0, 2, 1, 3])
                    k = split_heads_unfused(g, k, b1, s1, KV, hd, [0, 2, 1, 3])
                    v = split_heads_unfused(g, v, b1, s1, KV, hd, [0, 2, 1, 3])
                    with g.scope("rope_q"):
                        q = rope_unfused(q)
                    with g.scope("rope_k"):
                        k = rope_unfused(k)
                # GQA: repeat kv heads [B, KV, S, hd] -> [B, KV, n_rep, S, hd] -> [B, H, S, hd]
                with g.scope("repeat_kv"):
                    exp_shape = g.op("Concat", [b1, g.const([KV], I64), g.const([n_rep], I64),
                                                s1, g.const([hd], I64)], axis=0)
                    if fused:
                        new_shape = g.const([0, H, -1, hd], I64)
                    else:
                        new_shape = g.op("Concat", [b1, g.const([H], I64), s1,
                                                    g.const([hd], I64)], axis=0)
                    k = g.op("Reshape", [g.op("Expand", [g.op("Unsqueeze", [k, ax(g, 2)]),
                                                         exp_shape]), new_shape], name="k")
                    v = g.op("Reshape", [g.op("Expand", [g.op("Unsqueeze", [v, ax(g, 2)]),
                                                         exp_shape]), new_shape], name="v")
                kt = g.op("Transpose", [k], perm=[0, 1, 3, 2], name="k_T")
                sc = g.op("MatMul", [q, kt], name="scores")
                if fused:
                    sc = g.op("Mul", [sc, g.const(1.0 / math.sqrt(hd))], name="scale")
                    sc = g.op("Where", [mask, sc, neg], name="causal_mask")
                else:
                    sc = g.op("Div", [sc, g.const(math.sqrt(hd))], name="scale")
                    sc = g.op("Add", [sc, mask], name="causal_mask")
                p = g.op("Softmax", [sc], axis=-1)
                ctx = g.op("MatMul", [p, v], name="context")
                if fused:
                    ctx = g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 2, 1, 3]),
                                           g.const([0, 0, d], I64)])
                else:
                    ctx = merge_heads_unfused(g, ctx, b1, s1, d)
                a = g.op("MatMul", [ctx, g.init(f"{pre}.self_attn.o_proj.weight", P[f"{i}.o"])],
                         name="o_proj")
            h = g.op("Add", [h, a], name="attn_residual")
            with g.scope("post_norm"):
                x = rms_norm(g, h, g.init(f"{pre}.post_attention_layernorm.weight",
                                          P[f"{i}.post_norm"]), eps, fused)
            with g.scope("mlp"):
                gt = g.op("MatMul", [x, g.init(f"{pre}.mlp.gate_proj.weight", P[f"{i}.gate"])],
                          name="gate_proj")
                up = g.op("MatMul", [x, g.init(f"{pre}.mlp.up_proj.weight", P[f"{i}.up"])],
                          name="up_proj")
                # silu(x) = x * sigmoid(x)  (no Swish op before opset 24)
                act = g.op("Mul", [gt, g.op("Sigmoid", [gt])], name="silu")
                gu = g.op("Mul", [act, up], name="gate_mul_up")
                m = g.op("MatMul", [gu, g.init(f"{pre}.mlp.down_proj.weight", P[f"{i}.down"])],
                         name="down_proj")
            h = g.op("Add", [h, m], name="mlp_residual")

    with g.scope("norm"):
        hf = rms_norm(g, h, g.init("model.norm.weight", P["norm"]), eps, fused)
    g.op("MatMul", [hf, g.init("lm_head.weight", P["lm_head"])], name="lm_head", out="logits")
    lm_loss(g, "logits", labels, V, "sce")

    g.output("loss", TensorProto.FLOAT, [])
    g.output("logits", TensorProto.FLOAT, ["batch", "seq", V])
    name = "llama_fused" if fused else "llama_unfused"
    model = g.model(name, 23 if fused else 18, f"LLaMA style decoder ({name}); {cfg.describe()}")
    return model, lm_inputs(cfg, np.random.default_rng(cfg.seed + 201))


BUILDERS = {
    "gpt2_fused": lambda cfg: build_gpt2(cfg, True),
    "gpt2_unfused": lambda cfg: build_gpt2(cfg, False),
    "bert_fused": lambda cfg: build_bert(cfg, True),
    "bert_unfused": lambda cfg: build_bert(cfg, False),
    "llama_fused": lambda cfg: build_llama(cfg, True),
    "llama_unfused": lambda cfg: build_llama(cfg, False),
}
assert list(BUILDERS) == MODEL_NAMES


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------


def run_ort(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def write_pb(path: str, arr: np.ndarray, name: str) -> None:
    with open(path, "wb") as f:
        f.write(numpy_helper.from_array(np.array(arr, order="C", copy=True), name).SerializeToString())


def write_model(name: str, cfg, out_dir: str, check: bool, data: bool) -> str:
    model, inputs = BUILDERS[name](cfg)
    if check:
        onnx.checker.check_model(model, full_check=True)
    mdir = os.path.join(out_dir, name)
    os.makedirs(mdir, exist_ok=True)
    with open(os.path.join(mdir, "model.onnx"), "wb") as f:
        f.write(model.SerializeToString())
    summary = (f"{name}: opset {model.opset_import[0].version}, "
               f"{len(model.graph.node)} nodes, "
               f"{sum(int(np.prod(t.dims)) for t in model.graph.initializer)} params")
    if data:
        tdir = os.path.join(mdir, "test_data_set_0")
        os.makedirs(tdir, exist_ok=True)
        for old in os.listdir(tdir):
            if old.endswith(".pb"):
                os.remove(os.path.join(tdir, old))
        feeds = {vi.name: inputs[vi.name] for vi in model.graph.input}
        outs = run_ort(model, feeds)
        for k, vi in enumerate(model.graph.input):
            write_pb(os.path.join(tdir, f"input_{k}.pb"), feeds[vi.name], vi.name)
        for k, (vi, arr) in enumerate(zip(model.graph.output, outs)):
            if not np.all(np.isfinite(arr)):
                raise RuntimeError(f"{name}: output {vi.name} is not finite")
            write_pb(os.path.join(tdir, f"output_{k}.pb"), arr, vi.name)
        if "loss" in [vi.name for vi in model.graph.output]:
            loss = float(outs[[vi.name for vi in model.graph.output].index("loss")])
            summary += f", loss {loss:.4f} (ln vocab {math.log(cfg.vocab):.4f})"
    return f"wrote {os.path.join(mdir, 'model.onnx')}  [{summary}]"


class Config:
    def __init__(self, a):
        self.layers = a.layers
        self.d_model = a.d_model
        self.heads = a.heads
        self.kv_heads = a.kv_heads
        self.vocab = a.vocab
        self.seq = a.seq
        self.batch = a.batch
        self.seed = a.seed
        self.max_pos = a.max_pos if a.max_pos is not None else max(64, a.seq)
        self.ffn = a.ffn if a.ffn is not None else 4 * a.d_model
        # LLaMA: ~8/3 * d rounded up to a multiple of 32.
        self.llama_ffn = a.ffn if a.ffn is not None else -(-(8 * a.d_model // 3) // 32) * 32
        self.rope_theta = 10000.0

    def describe(self):
        return (f"layers={self.layers} d_model={self.d_model} heads={self.heads} "
                f"kv_heads={self.kv_heads} vocab={self.vocab} max_pos={self.max_pos} "
                f"ffn={self.ffn} llama_ffn={self.llama_ffn} seed={self.seed}")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--only", nargs="+", choices=MODEL_NAMES, metavar="NAME",
                   help=f"models to write (default: all of {', '.join(MODEL_NAMES)})")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2, help="LLaMA key/value heads (GQA)")
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--seq", type=int, default=16, help="sequence length of the test inputs")
    p.add_argument("--batch", type=int, default=2, help="batch size of the test inputs")
    p.add_argument("--max-pos", type=int, default=None,
                   help="position table size (default max(64, seq))")
    p.add_argument("--ffn", type=int, default=None,
                   help="MLP hidden size (default 4*d_model; LLaMA ~8/3*d_model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-check", action="store_true", help="skip onnx.checker full_check")
    p.add_argument("--no-test-data", action="store_true",
                   help="only write model.onnx (skip onnxruntime reference outputs)")
    a = p.parse_args(argv)
    if a.d_model % a.heads:
        p.error("--d-model must be divisible by --heads")
    if (a.d_model // a.heads) % 2:
        p.error("head size must be even (rotary embedding)")
    if a.heads % a.kv_heads:
        p.error("--heads must be divisible by --kv-heads")
    if a.max_pos is not None and a.max_pos < a.seq:
        p.error("--max-pos must be >= --seq")
    if min(a.layers, a.d_model, a.heads, a.kv_heads, a.vocab, a.seq, a.batch) < 1:
        p.error("sizes must be positive")
    if a.seq < 2:
        p.error("--seq must be >= 2 (shifted LM loss)")
    return a


def main(argv=None) -> int:
    a = parse_args(sys.argv[1:] if argv is None else argv)
    cfg = Config(a)
    names = a.only or MODEL_NAMES
    os.makedirs(a.out, exist_ok=True)
    for name in names:
        print(write_model(name, cfg, a.out, check=not a.no_check, data=not a.no_test_data),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
