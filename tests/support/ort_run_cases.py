#!/usr/bin/env python3
"""Run many small ONNX models with onnxruntime in one process.

Usage:
    python tests/support/ort_run_cases.py ROOT

Every subdirectory CASE of ROOT that holds model.onnx and input_0.pb,
input_1.pb, ... (serialized TensorProto) is run on the CPU provider with
graph optimizations off; output K is written as CASE/ort_output_K.npy.
Failures are collected and printed, one line per case, and the exit status
is 1 if any case failed (a case that onnxruntime cannot load counts).
One process for all cases keeps the onnxruntime import cost paid once.
"""

from __future__ import annotations

import os
import re
import sys


def run_case(ort, onnx, numpy_helper, np, case: str) -> None:
    pat = re.compile(r"^input_(\d+)\.pb$")
    found = sorted((int(m.group(1)), f) for f in os.listdir(case) if (m := pat.match(f)))
    arrays = []
    for _, f in found:
        t = onnx.TensorProto()
        with open(os.path.join(case, f), "rb") as fh:
            t.ParseFromString(fh.read())
        arrays.append(numpy_helper.to_array(t))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(os.path.join(case, "model.onnx"), so, providers=["CPUExecutionProvider"])
    inputs = sess.get_inputs()
    if len(inputs) != len(arrays):
        raise ValueError(f"model has {len(inputs)} inputs but the case has {len(arrays)}")
    outs = sess.run(None, {i.name: a for i, a in zip(inputs, arrays)})
    for k, arr in enumerate(outs):
        np.save(os.path.join(case, f"ort_output_{k}.npy"), np.asarray(arr))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: ort_run_cases.py ROOT", file=sys.stderr)
        return 2
    try:
        import numpy as np
        import onnx
        import onnxruntime as ort
        from onnx import numpy_helper
    except ImportError as e:
        print(f"ort_run_cases: error: {e}", file=sys.stderr)
        return 1
    root = argv[0]
    failures = []
    cases = sorted(d for d in os.listdir(root) if os.path.isfile(os.path.join(root, d, "model.onnx")))
    for name in cases:
        try:
            run_case(ort, onnx, numpy_helper, np, os.path.join(root, name))
        except Exception as e:  # noqa: BLE001 - reported per case
            failures.append(f"{name}: {e}")
    for f in failures:
        print(f"ort_run_cases: {f}", file=sys.stderr)
    print(f"ran {len(cases) - len(failures)} of {len(cases)} cases")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
