//! Attribute values, as ops expose them to the text format and to ONNX.
//!
//! Ops hold typed fields (see [`crate::op`]); this module is the generic,
//! still typed, view of those fields that lets the printer, the parser, the
//! importer and the exporter handle every op's attributes with one piece of
//! code each.

use crate::dtype::DType;
use crate::tensor::Tensor;
use std::fmt;

/// One attribute value.
#[derive(Clone, Debug)]
pub enum Attr {
    /// An integer.
    Int(i64),
    /// A float.
    Float(f32),
    /// A string.
    String(String),
    /// A list of integers.
    Ints(Vec<i64>),
    /// A list of floats.
    Floats(Vec<f32>),
    /// A tensor value.
    Tensor(Tensor),
    /// An element type (an INT attribute in ONNX).
    DType(DType),
}

impl Attr {
    /// A short name of the kind, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Attr::Int(_) => "int",
            Attr::Float(_) => "float",
            Attr::String(_) => "string",
            Attr::Ints(_) => "ints",
            Attr::Floats(_) => "floats",
            Attr::Tensor(_) => "tensor",
            Attr::DType(_) => "dtype",
        }
    }
}

impl PartialEq for Attr {
    fn eq(&self, other: &Attr) -> bool {
        match (self, other) {
            (Attr::Int(a), Attr::Int(b)) => a == b,
            (Attr::Float(a), Attr::Float(b)) => a.to_bits() == b.to_bits(),
            (Attr::String(a), Attr::String(b)) => a == b,
            (Attr::Ints(a), Attr::Ints(b)) => a == b,
            (Attr::Floats(a), Attr::Floats(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
            }
            (Attr::Tensor(a), Attr::Tensor(b)) => a.bitwise_eq(b),
            (Attr::DType(a), Attr::DType(b)) => a == b,
            _ => false,
        }
    }
}

/// Why attributes could not be turned into an op.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrError {
    /// No op of this type and domain exists in kiln.
    UnknownOp,
    /// The op exists but an attribute is missing, of the wrong kind, out of
    /// range, or not one the op has.
    Invalid(String),
}

impl fmt::Display for AttrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttrError::UnknownOp => f.write_str("unknown op"),
            AttrError::Invalid(m) => f.write_str(m),
        }
    }
}

/// Named attributes being read into an op. Every read marks the entry used;
/// [`AttrBag::finish`] rejects any that no read asked for, so a misspelt or
/// unsupported attribute is an error rather than silently ignored.
#[derive(Debug, Default)]
pub struct AttrBag {
    entries: Vec<(String, Attr)>,
    used: Vec<bool>,
}

impl AttrBag {
    /// A bag over the given entries.
    pub fn new(entries: Vec<(String, Attr)>) -> AttrBag {
        let used = vec![false; entries.len()];
        AttrBag { entries, used }
    }

    fn take(&mut self, name: &str) -> Option<&Attr> {
        let i = self.entries.iter().position(|(n, _)| n == name)?;
        self.used[i] = true;
        Some(&self.entries[i].1)
    }

    fn wrong(name: &str, want: &str, got: &Attr) -> AttrError {
        AttrError::Invalid(format!("attribute `{name}` must be {want}, found {}", got.kind()))
    }

    /// An optional integer (a dtype attribute also reads as its ONNX code).
    pub fn opt_int(&mut self, name: &str) -> Result<Option<i64>, AttrError> {
        match self.take(name) {
            None => Ok(None),
            Some(Attr::Int(v)) => Ok(Some(*v)),
            Some(Attr::DType(d)) => Ok(Some(d.onnx_code() as i64)),
            Some(a) => Err(Self::wrong(name, "an int", a)),
        }
    }

    /// An integer with a default.
    pub fn int(&mut self, name: &str, default: i64) -> Result<i64, AttrError> {
        Ok(self.opt_int(name)?.unwrap_or(default))
    }

    /// A boolean stored as an int 0/1.
    pub fn flag(&mut self, name: &str, default: bool) -> Result<bool, AttrError> {
        match self.int(name, default as i64)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(AttrError::Invalid(format!("attribute `{name}` must be 0 or 1, found {v}"))),
        }
    }

    /// An optional float (an int also reads as a float).
    pub fn opt_float(&mut self, name: &str) -> Result<Option<f32>, AttrError> {
        match self.take(name) {
            None => Ok(None),
            Some(Attr::Float(v)) => Ok(Some(*v)),
            Some(Attr::Int(v)) => Ok(Some(*v as f32)),
            Some(a) => Err(Self::wrong(name, "a float", a)),
        }
    }

    /// A float with a default.
    pub fn float(&mut self, name: &str, default: f32) -> Result<f32, AttrError> {
        Ok(self.opt_float(name)?.unwrap_or(default))
    }

    /// An optional string.
    pub fn opt_string(&mut self, name: &str) -> Result<Option<String>, AttrError> {
        match self.take(name) {
            None => Ok(None),
            Some(Attr::String(v)) => Ok(Some(v.clone())),
            Some(a) => Err(Self::wrong(name, "a string", a)),
        }
    }

    /// An optional list of ints.
    pub fn opt_ints(&mut self, name: &str) -> Result<Option<Vec<i64>>, AttrError> {
        match self.take(name) {
            None => Ok(None),
            Some(Attr::Ints(v)) => Ok(Some(v.clone())),
            Some(Attr::Int(v)) => Ok(Some(vec![*v])),
            Some(a) => Err(Self::wrong(name, "a list of ints", a)),
        }
    }

    /// An optional list of floats.
    pub fn opt_floats(&mut self, name: &str) -> Result<Option<Vec<f32>>, AttrError> {
        match self.take(name) {
            None => Ok(None),
            Some(Attr::Floats(v)) => Ok(Some(v.clone())),
            Some(Attr::Float(v)) => Ok(Some(vec![*v])),
            Some(a) => Err(Self::wrong(name, "a list of floats", a)),
        }
    }

    /// An optional tensor.
    pub fn opt_tensor(&mut self, name: &str) -> Result<Option<Tensor>, AttrError> {
        match self.take(name) {
            None => Ok(None),
            Some(Attr::Tensor(t)) => Ok(Some(t.clone())),
            Some(a) => Err(Self::wrong(name, "a tensor", a)),
        }
    }

    /// An optional dtype, given as a dtype or as an ONNX type code.
    pub fn opt_dtype(&mut self, name: &str) -> Result<Option<DType>, AttrError> {
        match self.take(name) {
            None => Ok(None),
            Some(Attr::DType(d)) => Ok(Some(*d)),
            Some(Attr::Int(code)) => {
                let code = *code;
                DType::from_onnx_code(code as i32).map(Some).ok_or_else(|| {
                    AttrError::Invalid(format!(
                        "attribute `{name}` names data type {} ({code}), which kiln does not support",
                        DType::onnx_code_name(code as i32)
                    ))
                })
            }
            Some(a) => Err(Self::wrong(name, "a data type", a)),
        }
    }

    /// Fails if any attribute was never read.
    pub fn finish(self) -> Result<(), AttrError> {
        let unused: Vec<&str> = self
            .entries
            .iter()
            .zip(&self.used)
            .filter(|(_, u)| !**u)
            .map(|((n, _), _)| n.as_str())
            .collect();
        if unused.is_empty() {
            Ok(())
        } else {
            Err(AttrError::Invalid(format!("unsupported attribute(s): {}", unused.join(", "))))
        }
    }
}
