//! Comparing computed outputs with reference outputs the way
//! `numpy.allclose(actual, expected, rtol, atol)` does:
//! `|actual - expected| <= atol + rtol * |expected|` for every element,
//! where infinities must match exactly and (unlike NumPy's default) NaN
//! matches NaN, since a reference that is NaN is reproduced, not wrong.

use kiln::ir::Tensor;

/// How one output compares with its reference.
#[derive(Debug)]
pub struct Comparison {
    /// Largest `|actual - expected|` (infinite when a NaN or infinity does
    /// not match).
    pub max_abs: f64,
    /// Largest `|actual - expected| / |expected|` over elements where they
    /// differ (infinite when the expected element is 0).
    pub max_rel: f64,
    /// Elements outside the tolerance.
    pub mismatches: usize,
    /// Elements compared.
    pub total: usize,
    /// The first element with the largest error: index, actual, expected.
    pub worst: Option<(Vec<usize>, f64, f64)>,
    /// Set when dtypes or shapes differ, in which case nothing else is
    /// meaningful.
    pub incompatible: Option<String>,
}

impl Comparison {
    /// True when every element is within tolerance and types agree.
    pub fn passed(&self) -> bool {
        self.incompatible.is_none() && self.mismatches == 0
    }
}

/// The multi-index of the `flat`-th element in row-major order.
fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (axis, &size) in shape.iter().enumerate().rev() {
        if size > 0 {
            index[axis] = flat % size;
            flat /= size;
        }
    }
    index
}

/// Compares `actual` with `expected` element by element.
pub fn compare(actual: &Tensor, expected: &Tensor, rtol: f64, atol: f64) -> Comparison {
    let mut c = Comparison {
        max_abs: 0.0,
        max_rel: 0.0,
        mismatches: 0,
        total: expected.len(),
        worst: None,
        incompatible: None,
    };
    if actual.dtype() != expected.dtype() || actual.shape() != expected.shape() {
        c.incompatible = Some(format!(
            "got {}{}, expected {}{}",
            actual.dtype(),
            super::summary::shape_text(actual.shape()),
            expected.dtype(),
            super::summary::shape_text(expected.shape())
        ));
        return c;
    }
    let got = actual.to_f64s();
    let want = expected.to_f64s();
    let mut worst_flat = None;
    for (flat, (&a, &e)) in got.iter().zip(&want).enumerate() {
        let same = a == e || (a.is_nan() && e.is_nan());
        let (abs, rel) = if same {
            (0.0, 0.0)
        } else if a.is_finite() && e.is_finite() {
            let diff = (a - e).abs();
            (diff, if e == 0.0 { f64::INFINITY } else { diff / e.abs() })
        } else {
            (f64::INFINITY, f64::INFINITY)
        };
        let within = same || (abs.is_finite() && abs <= atol + rtol * e.abs());
        if !within {
            c.mismatches += 1;
        }
        if abs > c.max_abs || (worst_flat.is_none() && !within) {
            c.max_abs = c.max_abs.max(abs);
            worst_flat = Some(flat);
        }
        c.max_rel = c.max_rel.max(rel);
    }
    c.worst = worst_flat.map(|flat| (unravel(flat, actual.shape()), got[flat], want[flat]));
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln::ir::DType;

    fn f32s(v: &[f64]) -> Tensor {
        Tensor::from_f64s(DType::F32, &[v.len()], v)
    }

    #[test]
    fn allclose_criterion() {
        let e = f32s(&[1.0, 100.0, 0.0]);
        let c = compare(&f32s(&[1.0, 100.009, 0.000009]), &e, 1e-4, 1e-5);
        assert!(c.passed(), "{c:?}");
        let c = compare(&f32s(&[1.0, 100.02, 0.0]), &e, 1e-4, 1e-5);
        assert!(!c.passed());
        assert_eq!(c.mismatches, 1);
        assert_eq!(c.worst.as_ref().unwrap().0, vec![1]);
        assert!((c.max_abs - 0.02).abs() < 1e-3, "{c:?}");
        assert!((c.max_rel - 2e-4).abs() < 1e-5, "{c:?}");
    }

    #[test]
    fn nan_and_infinities() {
        let e = f32s(&[f64::NAN, f64::INFINITY, 1.0]);
        assert!(compare(&f32s(&[f64::NAN, f64::INFINITY, 1.0]), &e, 1e-4, 1e-5).passed());
        let c = compare(&f32s(&[0.0, f64::INFINITY, 1.0]), &e, 1e-4, 1e-5);
        assert_eq!(c.mismatches, 1);
        assert!(c.max_abs.is_infinite());
        let c = compare(&f32s(&[f64::NAN, f64::NEG_INFINITY, 1.0]), &e, 1e-4, 1e-5);
        assert_eq!(c.mismatches, 1);
    }

    #[test]
    fn incompatible_types() {
        let c = compare(&Tensor::zeros(DType::F32, &[2, 3]), &Tensor::zeros(DType::F32, &[3, 2]), 1e-4, 1e-5);
        assert!(!c.passed());
        assert_eq!(c.incompatible.as_deref(), Some("got f32[2, 3], expected f32[3, 2]"));
        let c = compare(&Tensor::zeros(DType::F32, &[2]), &Tensor::zeros(DType::F64, &[2]), 1e-4, 1e-5);
        assert!(!c.passed());
    }

    #[test]
    fn multi_index_of_worst() {
        let e = Tensor::from_f64s(DType::F32, &[2, 3], &[0.0; 6]);
        let a = Tensor::from_f64s(DType::F32, &[2, 3], &[0.0, 0.0, 0.0, 0.0, 0.0, 1.0]);
        assert_eq!(compare(&a, &e, 1e-4, 1e-5).worst.unwrap().0, vec![1, 2]);
    }
}
