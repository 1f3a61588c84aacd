//! What the ONNX node-test runs share (the interpreter's in
//! node_conformance.rs, the CPU backend's in node_conformance_cpu.rs):
//! reading a test's numbered tensors and the comparison with its expected
//! outputs.

use kiln_ir::dtype::DType;
use kiln_ir::onnx::read_tensor_pb;
use kiln_ir::tensor::Tensor;
use std::path::Path;

/// `<prefix>_0.pb`, `<prefix>_1.pb`, ... in order.
pub fn numbered_tensors(dir: &Path, prefix: &str) -> Result<Vec<Tensor>, String> {
    let mut out = Vec::new();
    loop {
        let path = dir.join(format!("{prefix}_{}.pb", out.len()));
        if !path.exists() {
            return Ok(out);
        }
        let (_, t) = read_tensor_pb(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        out.push(t);
    }
}

/// Equal dtype and shape, and values within the dtype's tolerance.
pub fn compare(got: &Tensor, want: &Tensor) -> Result<(), String> {
    if got.dtype() != want.dtype() {
        return Err(format!("dtype {} but {} expected", got.dtype(), want.dtype()));
    }
    if got.shape() != want.shape() {
        return Err(format!("shape {:?} but {:?} expected", got.shape(), want.shape()));
    }
    let (rtol, atol) = match want.dtype() {
        DType::F32 | DType::F64 => (1e-3, 1e-5),
        DType::F16 | DType::BF16 => (1e-2, 1e-2),
        _ => {
            let (g, w) = (got.to_i64s(), want.to_i64s());
            return match g.iter().zip(&w).position(|(a, b)| a != b) {
                None => Ok(()),
                Some(i) => Err(format!("element {i} is {} but {} expected", g[i], w[i])),
            };
        }
    };
    let (g, w) = (got.to_f64s(), want.to_f64s());
    for (i, (&a, &b)) in g.iter().zip(&w).enumerate() {
        let ok = if b.is_nan() {
            a.is_nan()
        } else if b.is_infinite() {
            a == b
        } else {
            (a - b).abs() <= atol + rtol * b.abs()
        };
        if !ok {
            let worst = g
                .iter()
                .zip(&w)
                .filter(|(a, b)| a.is_finite() && b.is_finite())
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            return Err(format!("element {i} is {a} but {b} expected (max abs error {worst:.3e})"));
        }
    }
    Ok(())
}
