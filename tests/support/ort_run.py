#!/usr/bin/env python3
"""Run an ONNX model with onnxruntime on ONNX test-data inputs.

Usage:
    python tests/support/ort_run.py MODEL.onnx --inputs DIR --out OUTDIR

DIR holds input_0.pb, input_1.pb, ... (serialized TensorProto, the layout of
the ONNX backend tests); input_K is fed to the K-th graph input (initializers
that are also listed as graph inputs are skipped). Every graph output is written
as OUTDIR/<output_name>.npy. Exits non-zero with a message on any error.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

OPT_LEVELS = ("disable", "basic", "extended", "all")


def fail(msg: str, code: int = 1):
    print(f"ort_run: error: {msg}", file=sys.stderr)
    sys.exit(code)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Run onnxruntime on ONNX test-data inputs.")
    p.add_argument("model", help="path to model.onnx")
    p.add_argument("--inputs", required=True, help="directory with input_K.pb files")
    p.add_argument("--out", required=True, help="directory for <output_name>.npy files")
    p.add_argument("--opt-level", choices=OPT_LEVELS, default="disable",
                   help="onnxruntime graph optimization level (default: disable)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    a = p.parse_args(argv)

    try:
        import numpy as np
        import onnx
        import onnxruntime as ort
        from onnx import numpy_helper
    except ImportError as e:
        fail(f"{e} (use the repo venv: make venv; .venv/bin/python)")

    if not os.path.isfile(a.model):
        fail(f"model not found: {a.model}")
    if not os.path.isdir(a.inputs):
        fail(f"inputs directory not found: {a.inputs}")

    pat = re.compile(r"^input_(\d+)\.pb$")
    found = sorted((int(m.group(1)), f) for f in os.listdir(a.inputs) if (m := pat.match(f)))
    if not found:
        fail(f"no input_K.pb files in {a.inputs}")
    if [k for k, _ in found] != list(range(len(found))):
        fail(f"input files are not numbered 0..{len(found) - 1}: {[f for _, f in found]}")

    arrays = []
    for _, f in found:
        path = os.path.join(a.inputs, f)
        try:
            t = onnx.TensorProto()
            with open(path, "rb") as fh:
                t.ParseFromString(fh.read())
            arrays.append(numpy_helper.to_array(t))
        except Exception as e:  # noqa: BLE001
            fail(f"cannot read tensor {path}: {e}")

    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[a.opt_level]
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001
        fail(f"onnxruntime cannot load {a.model}: {e}")

    graph_inputs = sess.get_inputs()  # excludes initializers
    if len(arrays) != len(graph_inputs):
        fail(f"model has {len(graph_inputs)} inputs "
             f"({', '.join(i.name for i in graph_inputs)}) but {a.inputs} has {len(arrays)}")
    feeds = {i.name: arr for i, arr in zip(graph_inputs, arrays)}

    try:
        outs = sess.run(None, feeds)
    except Exception as e:  # noqa: BLE001
        fail(f"onnxruntime run failed: {e}")

    os.makedirs(a.out, exist_ok=True)
    for meta, arr in zip(sess.get_outputs(), outs):
        fname = meta.name.replace("/", "_").replace("\\", "_")
        if fname in ("", ".", ".."):
            fail(f"cannot use output name {meta.name!r} as a file name")
        np.save(os.path.join(a.out, f"{fname}.npy"), np.asarray(arr))
    return 0


if __name__ == "__main__":
    sys.exit(main())
