//! Tensor types: an element type and a (possibly symbolic) shape.

use crate::dim::Dim;
use crate::dtype::DType;
use std::fmt;

/// The static type of a value: dtype and shape. The rank is always known;
/// individual dims may be symbolic.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorType {
    /// Element type.
    pub dtype: DType,
    /// One entry per axis.
    pub shape: Vec<Dim>,
}

impl TensorType {
    /// A type with the given dtype and shape.
    pub fn new(dtype: DType, shape: Vec<Dim>) -> TensorType {
        TensorType { dtype, shape }
    }

    /// A type with a fully known shape.
    pub fn fixed(dtype: DType, shape: &[usize]) -> TensorType {
        TensorType { dtype, shape: shape.iter().map(|&d| Dim::from(d)).collect() }
    }

    /// A scalar of the given dtype.
    pub fn scalar(dtype: DType) -> TensorType {
        TensorType { dtype, shape: Vec::new() }
    }

    /// The rank.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// The shape as sizes, when every dim is known.
    pub fn fixed_shape(&self) -> Option<Vec<usize>> {
        self.shape.iter().map(|d| d.fixed().map(|n| n as usize)).collect()
    }

    /// The element count when every dim is known.
    pub fn fixed_len(&self) -> Option<usize> {
        self.fixed_shape().map(|s| s.iter().product())
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[", self.dtype)?;
        for (i, d) in self.shape.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}
