"""Run onnxruntime over the ONNX node tests kiln supports, with the same
comparison kiln's conformance test uses, so the README can put the two pass
counts side by side from one run.

Usage: python tests/support/ort_node_tests.py [target/node_conformance.txt]

The list file is written by `cargo test --release --test node_conformance`;
every test on a PASS, FAIL or KNOWN line is one kiln supports.
"""
import glob
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper


def load_pb(path):
    t = onnx.TensorProto()
    with open(path, "rb") as f:
        t.ParseFromString(f.read())
    return numpy_helper.to_array(t)


def close(got, want):
    got = np.asarray(got)
    if got.dtype != want.dtype or got.shape != want.shape:
        return False
    if want.dtype.kind in "f":
        rtol, atol = (1e-2, 1e-2) if want.dtype == np.float16 else (1e-3, 1e-5)
        g, w = got.astype(np.float64), want.astype(np.float64)
        nan_ok = np.isnan(w) == np.isnan(g)
        inf_ok = np.where(np.isinf(w), g == w, True)
        fin = np.isfinite(w)
        val_ok = np.where(fin, np.abs(g - w) <= atol + rtol * np.abs(w), True)
        return bool(np.all(nan_ok) and np.all(inf_ok) and np.all(val_ok))
    if want.dtype.kind == "V" or str(want.dtype) == "bfloat16":
        return bool(np.all(np.abs(got.astype(np.float32) - want.astype(np.float32)) <= 1e-2 + 1e-2 * np.abs(want.astype(np.float32))))
    return bool(np.array_equal(got, want))


def run_test(test_dir):
    sess = ort.InferenceSession(os.path.join(test_dir, "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    for data in sorted(glob.glob(os.path.join(test_dir, "test_data_set_*"))):
        inputs = [load_pb(p) for p in sorted(glob.glob(os.path.join(data, "input_*.pb")), key=lambda p: int(p.rsplit("_", 1)[1][:-3]))]
        wants = [load_pb(p) for p in sorted(glob.glob(os.path.join(data, "output_*.pb")), key=lambda p: int(p.rsplit("_", 1)[1][:-3]))]
        outs = sess.run(None, dict(zip(names, inputs)))
        if len(outs) < len(wants) or not all(close(g, w) for g, w in zip(outs, wants)):
            return False
    return True


def main():
    ort.set_default_logger_severity(3)
    listing = sys.argv[1] if len(sys.argv) > 1 else "target/node_conformance.txt"
    supported = []
    with open(listing) as f:
        for line in f:
            kind, _, rest = line.partition(" ")
            if kind in ("PASS", "FAIL", "KNOWN"):
                supported.append(rest.split(":")[0].strip())
    root = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "node")
    passed = 0
    for name in supported:
        try:
            ok = run_test(os.path.join(root, name))
        except Exception:  # noqa: BLE001 - any failure to load or run counts as a failed test
            ok = False
        passed += ok
    kiln_passed = sum(1 for line in open(listing) if line.startswith("PASS "))
    print(f"kiln-supported ONNX node tests: {len(supported)}")
    print(f"  kiln (interpreter) passes {kiln_passed}")
    print(f"  onnxruntime {ort.__version__} passes {passed}")


if __name__ == "__main__":
    main()
