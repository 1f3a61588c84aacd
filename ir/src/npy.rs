//! NumPy `.npy` files: the exchange format for inputs and outputs of
//! `kiln run`.
//!
//! Reads format versions 1.0, 2.0 and 3.0 and writes 1.0 (2.0 when the header
//! does not fit 1.0's 16-bit length), as `numpy.save` does.
//!
//! | kiln dtype | descr read | descr written |
//! |------------|------------|---------------|
//! | `f32` `f64` `f16` | `<f4` `<f8` `<f2` (and `>`) | `<f4` `<f8` `<f2` |
//! | `i8` `u8` `bool` | `|i1` `|u1` `|b1` | same |
//! | `i16` `i32` `i64` | `<i2` `<i4` `<i8` (and `>`) | same |
//! | `i4` `u4` | (read as `i8`/`u8`) | `|i1` / `|u1`, one value per byte |
//! | `bf16` | — | rejected: NumPy has no bfloat16 |
//!
//! - Big-endian data (`>f4` ...) is byte-swapped while reading; `=` (native
//!   order) is taken as little-endian, which is what every platform kiln
//!   runs on uses and what NumPy writes for it anyway.
//! - Fortran-ordered arrays (`'fortran_order': True`) are accepted and
//!   reordered into C (row-major) order, so the tensor has the same logical
//!   elements NumPy shows. Files are always written in C order.
//! - There is no 4-bit or bfloat16 NumPy dtype: 4-bit tensors are written
//!   unpacked as `i1`/`u1`, so they read back as `i8`/`u8`; bfloat16 tensors
//!   are refused with an error suggesting a cast to `f32` (what `kiln run`
//!   does for bfloat16 outputs).
//!
//! Malformed files (bad magic, truncated header, a header that is not a
//! dict, an unknown dtype, a data length that does not match the shape)
//! are errors, never panics.

use crate::dtype::DType;
use crate::error::{IrError, Result};
use crate::tensor::Tensor;
use ndarray::{ArcArray, ArrayD, IxDyn, ShapeBuilder};
use std::path::Path;

/// The six bytes every `.npy` file starts with.
const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// NumPy pads the header so that the data starts at a multiple of this.
const HEADER_ALIGN: usize = 64;

/// Reads a `.npy` file.
pub fn read_npy(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).map_err(|source| IrError::Io { path: path.to_path_buf(), source })?;
    decode_npy(&bytes).map_err(|e| match e {
        IrError::Model(msg) => IrError::Model(format!("{}: {msg}", path.display())),
        other => other,
    })
}

/// Writes a tensor as a `.npy` file (see the module docs for the dtype
/// mapping; `bf16` is an error).
pub fn write_npy(path: &Path, t: &Tensor) -> Result<()> {
    let bytes = encode_npy(t)?;
    std::fs::write(path, bytes).map_err(|source| IrError::Io { path: path.to_path_buf(), source })
}

/// Encodes a tensor in the `.npy` format (see the module docs for the dtype
/// mapping; `bf16` is an error).
pub fn encode_npy(t: &Tensor) -> Result<Vec<u8>> {
    let (descr, data) = match t {
        Tensor::BF16(_) => {
            return Err(IrError::Model(
                "cannot write a bf16 tensor as .npy: NumPy has no bfloat16 dtype (cast it to f32 first)".into(),
            ))
        }
        // Unpacked, one value per byte: to_raw_le would pack two per byte.
        Tensor::I4(a) => ("|i1", a.iter().map(|&v| v as u8).collect()),
        Tensor::U4(a) => ("|u1", a.iter().copied().collect()),
        _ => (npy_descr(t.dtype()), t.to_raw_le()),
    };
    let shape = match t.shape() {
        [n] => format!("({n},)"),
        dims => format!("({})", dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Version 1.0 stores the header length in 16 bits; 2.0 in 32 bits.
    let (version, len_bytes) =
        if padded_header_len(dict.len(), 10) <= usize::from(u16::MAX) + 10 { (1u8, 2usize) } else { (2u8, 4usize) };
    let prefix = MAGIC.len() + 2 + len_bytes;
    let total = padded_header_len(dict.len(), prefix);
    let header_len = total - prefix;
    let mut out = Vec::with_capacity(total + data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[version, 0]);
    if version == 1 {
        let n = u16::try_from(header_len).expect("checked to fit above");
        out.extend_from_slice(&n.to_le_bytes());
    } else {
        let n = u32::try_from(header_len)
            .map_err(|_| IrError::Model(format!("a .npy header of {header_len} bytes is too long")))?;
        out.extend_from_slice(&n.to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    // Space padding, then the newline that ends the header.
    out.resize(total - 1, b' ');
    out.push(b'\n');
    out.extend_from_slice(&data);
    Ok(out)
}

/// Length of magic + version + length field + dict + padding + newline,
/// rounded up to [`HEADER_ALIGN`].
fn padded_header_len(dict_len: usize, prefix: usize) -> usize {
    (prefix + dict_len + 1).div_ceil(HEADER_ALIGN) * HEADER_ALIGN
}

/// The descr string kiln writes for a dtype with a NumPy equivalent.
fn npy_descr(d: DType) -> &'static str {
    match d {
        DType::F32 => "<f4",
        DType::F64 => "<f8",
        DType::F16 => "<f2",
        DType::I8 | DType::I4 => "|i1",
        DType::U8 | DType::U4 => "|u1",
        DType::I16 => "<i2",
        DType::I32 => "<i4",
        DType::I64 => "<i8",
        DType::Bool => "|b1",
        DType::BF16 => unreachable!("bf16 is rejected before asking for its descr"),
    }
}

fn malformed(msg: impl std::fmt::Display) -> IrError {
    IrError::Model(format!("not a valid .npy file: {msg}"))
}

/// Decodes the bytes of a `.npy` file.
pub fn decode_npy(bytes: &[u8]) -> Result<Tensor> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(malformed("it does not start with the magic bytes \\x93NUMPY"));
    }
    let version = bytes.get(6..8).ok_or_else(|| malformed("truncated before the format version"))?;
    let (major, minor) = (version[0], version[1]);
    let len_bytes = match major {
        1 => 2,
        2 | 3 => 4,
        _ => {
            return Err(malformed(format_args!(
                "unsupported format version {major}.{minor} (kiln reads 1.0, 2.0 and 3.0)"
            )))
        }
    };
    let len_field = bytes.get(8..8 + len_bytes).ok_or_else(|| malformed("truncated before the header length"))?;
    let header_len = if len_bytes == 2 {
        usize::from(u16::from_le_bytes([len_field[0], len_field[1]]))
    } else {
        u32::from_le_bytes([len_field[0], len_field[1], len_field[2], len_field[3]]) as usize
    };
    let header_start = 8 + len_bytes;
    let header_end = header_start.checked_add(header_len).filter(|&end| end <= bytes.len()).ok_or_else(|| {
        malformed(format_args!(
            "the header is {header_len} bytes but the file has only {} after the length field",
            bytes.len() - header_start
        ))
    })?;
    let header_bytes = &bytes[header_start..header_end];
    // Versions 1 and 2 store the header as latin-1, version 3 as UTF-8; the
    // keys and values kiln understands are ASCII either way.
    let header = std::str::from_utf8(header_bytes)
        .ok()
        .filter(|h| h.is_ascii())
        .ok_or_else(|| malformed("the header is not ASCII text"))?;
    let header = NpyHeader::parse(header)?;
    let (dtype, big_endian) = parse_descr(&header.descr)?;
    let count = header
        .shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| malformed(format_args!("shape {:?} has too many elements", header.shape)))?;
    let elem = dtype.bit_width() / 8;
    let want = count
        .checked_mul(elem)
        .ok_or_else(|| malformed(format_args!("shape {:?} has too many elements", header.shape)))?;
    let data = &bytes[header_end..];
    if data.len() != want {
        return Err(malformed(format_args!(
            "shape {:?} of {} needs {want} bytes of data, the file has {}",
            header.shape,
            header.descr,
            data.len()
        )));
    }
    let swapped;
    let data = if big_endian && elem > 1 {
        swapped = data.chunks_exact(elem).flat_map(|c| c.iter().rev().copied()).collect::<Vec<u8>>();
        &swapped[..]
    } else {
        data
    };
    let c_order = Tensor::from_raw_le(dtype, &header.shape, data).map_err(malformed)?;
    if header.fortran_order && header.shape.len() > 1 {
        Ok(fortran_to_c(c_order))
    } else {
        Ok(c_order)
    }
}

/// Reinterprets a tensor whose elements were laid out in Fortran order
/// (read as if they were in C order) and makes them C-ordered.
fn fortran_to_c(t: Tensor) -> Tensor {
    macro_rules! reorder {
        ($($variant:ident),*) => {
            match t { $(Tensor::$variant(a) => Tensor::$variant(fortran_array_to_c(a)),)* }
        };
    }
    reorder!(F32, F64, F16, BF16, I8, U8, I16, I32, I64, Bool, I4, U4)
}

fn fortran_array_to_c<T: Clone>(a: ArcArray<T, IxDyn>) -> ArcArray<T, IxDyn> {
    let shape = a.shape().to_vec();
    let elems: Vec<T> = a.iter().cloned().collect();
    ArrayD::from_shape_vec(IxDyn(&shape).f(), elems)
        .expect("element count equals the shape's, which it was built with")
        .as_standard_layout()
        .into_owned()
        .into_shared()
}

/// Maps a NumPy descr to a kiln dtype and whether the data is big-endian.
fn parse_descr(descr: &str) -> Result<(DType, bool)> {
    let (order, code) = match descr.chars().next() {
        Some(c @ ('<' | '>' | '|' | '=')) => (c, &descr[1..]),
        _ => ('=', descr),
    };
    let dtype = match code {
        "f4" => DType::F32,
        "f8" => DType::F64,
        "f2" => DType::F16,
        "i1" => DType::I8,
        "u1" => DType::U8,
        "i2" => DType::I16,
        "i4" => DType::I32,
        "i8" => DType::I64,
        "b1" => DType::Bool,
        _ => {
            return Err(malformed(format_args!(
                "dtype '{descr}' is not supported (kiln reads f4 f8 f2 i1 u1 i2 i4 i8 b1, either byte order)"
            )))
        }
    };
    Ok((dtype, order == '>'))
}

/// The three entries of a `.npy` header.
#[derive(Debug)]
struct NpyHeader {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// A Python literal as it appears in a `.npy` header.
#[derive(Debug)]
enum PyValue {
    Str(String),
    Int(i128),
    Bool(bool),
    None,
    Seq(Vec<PyValue>),
    Dict(Vec<(PyValue, PyValue)>),
}

impl NpyHeader {
    fn parse(text: &str) -> Result<NpyHeader> {
        let mut p = PyParser { s: text.as_bytes(), i: 0 };
        let value = p.value()?;
        p.skip_ws();
        if p.i != p.s.len() {
            return Err(malformed(format_args!("unexpected text after the header dict at byte {}", p.i)));
        }
        let PyValue::Dict(entries) = value else {
            return Err(malformed("the header is not a Python dict"));
        };
        let mut descr = None;
        let mut fortran_order = None;
        let mut shape = None;
        for (k, v) in entries {
            let PyValue::Str(key) = k else {
                return Err(malformed("a header key is not a string"));
            };
            match (key.as_str(), v) {
                ("descr", PyValue::Str(s)) => descr = Some(s),
                ("descr", _) => {
                    return Err(malformed("'descr' is not a simple dtype string (structured arrays are not supported)"))
                }
                ("fortran_order", PyValue::Bool(b)) => fortran_order = Some(b),
                ("fortran_order", _) => return Err(malformed("'fortran_order' is not True or False")),
                ("shape", PyValue::Seq(dims)) => {
                    let dims = dims
                        .into_iter()
                        .map(|d| match d {
                            PyValue::Int(n) => usize::try_from(n).ok(),
                            _ => None,
                        })
                        .collect::<Option<Vec<usize>>>()
                        .ok_or_else(|| malformed("'shape' holds something other than non-negative integers"))?;
                    shape = Some(dims);
                }
                ("shape", _) => return Err(malformed("'shape' is not a tuple")),
                (other, _) => return Err(malformed(format_args!("unexpected header key '{other}'"))),
            }
        }
        Ok(NpyHeader {
            descr: descr.ok_or_else(|| malformed("the header has no 'descr'"))?,
            fortran_order: fortran_order.ok_or_else(|| malformed("the header has no 'fortran_order'"))?,
            shape: shape.ok_or_else(|| malformed("the header has no 'shape'"))?,
        })
    }
}

/// Recursive-descent parser for the subset of Python literals NumPy writes:
/// dicts, tuples, lists, strings, integers, `True`, `False`, `None`.
struct PyParser<'a> {
    s: &'a [u8],
    i: usize,
}

/// Literals nest only a few levels in real headers; the bound keeps a
/// hostile file from overflowing the stack.
const MAX_DEPTH: usize = 32;

impl PyParser<'_> {
    fn skip_ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.i).copied()
    }

    fn value(&mut self) -> Result<PyValue> {
        self.value_at(0)
    }

    fn value_at(&mut self, depth: usize) -> Result<PyValue> {
        if depth > MAX_DEPTH {
            return Err(malformed("the header nests too deeply"));
        }
        match self.peek() {
            None => Err(malformed("the header ends in the middle of a value")),
            Some(b'{') => {
                self.i += 1;
                let mut entries = Vec::new();
                loop {
                    if self.peek() == Some(b'}') {
                        self.i += 1;
                        return Ok(PyValue::Dict(entries));
                    }
                    let k = self.value_at(depth + 1)?;
                    if self.peek() != Some(b':') {
                        return Err(malformed(format_args!("expected ':' at header byte {}", self.i)));
                    }
                    self.i += 1;
                    let v = self.value_at(depth + 1)?;
                    entries.push((k, v));
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {}
                        _ => return Err(malformed(format_args!("expected ',' or '}}' at header byte {}", self.i))),
                    }
                }
            }
            Some(open @ (b'(' | b'[')) => {
                let close = if open == b'(' { b')' } else { b']' };
                self.i += 1;
                let mut items = Vec::new();
                loop {
                    if self.peek() == Some(close) {
                        self.i += 1;
                        return Ok(PyValue::Seq(items));
                    }
                    items.push(self.value_at(depth + 1)?);
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(c) if c == close => {}
                        _ => {
                            return Err(malformed(format_args!(
                                "expected ',' or '{}' at header byte {}",
                                close as char, self.i
                            )))
                        }
                    }
                }
            }
            Some(q @ (b'\'' | b'"')) => {
                self.i += 1;
                let start = self.i;
                while self.i < self.s.len() && self.s[self.i] != q {
                    if self.s[self.i] == b'\\' {
                        return Err(malformed("escape sequences in header strings are not supported"));
                    }
                    self.i += 1;
                }
                if self.i == self.s.len() {
                    return Err(malformed("unterminated string in the header"));
                }
                let text = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                self.i += 1;
                Ok(PyValue::Str(text))
            }
            Some(c) if c.is_ascii_digit() || c == b'-' => {
                let start = self.i;
                self.i += 1;
                while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
                    self.i += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.i]).expect("ASCII digits");
                // Python 2 wrote long integers with an `L` suffix.
                if self.s.get(self.i) == Some(&b'L') {
                    self.i += 1;
                }
                text.parse::<i128>()
                    .map(PyValue::Int)
                    .map_err(|_| malformed(format_args!("bad integer '{text}' in the header")))
            }
            Some(c) if c.is_ascii_alphabetic() => {
                let start = self.i;
                while self.i < self.s.len() && (self.s[self.i].is_ascii_alphanumeric() || self.s[self.i] == b'_') {
                    self.i += 1;
                }
                match &self.s[start..self.i] {
                    b"True" => Ok(PyValue::Bool(true)),
                    b"False" => Ok(PyValue::Bool(false)),
                    b"None" => Ok(PyValue::None),
                    word => Err(malformed(format_args!(
                        "unexpected word '{}' in the header",
                        String::from_utf8_lossy(word)
                    ))),
                }
            }
            Some(c) => {
                Err(malformed(format_args!("unexpected character '{}' at header byte {}", c.escape_ascii(), self.i)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file as NumPy would write it, for a header dict and data.
    fn npy_v1(dict: &str, data: &[u8]) -> Vec<u8> {
        let mut header = dict.to_string();
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn err_text(bytes: &[u8]) -> String {
        decode_npy(bytes).expect_err("malformed input must be rejected").to_string()
    }

    #[test]
    fn round_trip_every_numpy_dtype() {
        for d in DType::ALL {
            if d == DType::BF16 {
                continue;
            }
            let values = [0i64, 1, -2, 3, 7, -8];
            let t = Tensor::from_i64s(d, &[2, 3], &values);
            let back = decode_npy(&encode_npy(&t).unwrap()).unwrap();
            let expect_dtype = match d {
                DType::I4 => DType::I8,
                DType::U4 => DType::U8,
                other => other,
            };
            assert_eq!(back.dtype(), expect_dtype, "{d}");
            assert_eq!(back.shape(), &[2, 3]);
            assert_eq!(back.to_i64s(), t.to_i64s(), "{d}");
        }
    }

    #[test]
    fn writes_what_numpy_writes() {
        let t = Tensor::from_f64s(DType::F32, &[3], &[1.0, 2.0, 3.0]);
        let bytes = encode_npy(&t).unwrap();
        // numpy.save(f, numpy.array([1, 2, 3], dtype='<f4')) writes exactly this.
        let expected = npy_v1("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", &t.to_raw_le());
        assert_eq!(bytes, expected);
        let header_end = bytes.len() - 12;
        assert_eq!(header_end % 64, 0, "data is 64-byte aligned");
    }

    #[test]
    fn scalars_and_empty_arrays() {
        let s = Tensor::scalar_f32(2.5);
        let bytes = encode_npy(&s).unwrap();
        assert!(String::from_utf8_lossy(&bytes).contains("'shape': ()"));
        let back = decode_npy(&bytes).unwrap();
        assert_eq!(back.shape(), &[] as &[usize]);
        assert_eq!(back.to_f64s(), vec![2.5]);

        let e = Tensor::zeros(DType::I64, &[0, 4]);
        let back = decode_npy(&encode_npy(&e).unwrap()).unwrap();
        assert_eq!(back.shape(), &[0, 4]);
    }

    #[test]
    fn bf16_is_refused() {
        let t = Tensor::zeros(DType::BF16, &[2]);
        let msg = encode_npy(&t).unwrap_err().to_string();
        assert!(msg.contains("bfloat16"), "{msg}");
    }

    #[test]
    fn big_endian_is_byte_swapped() {
        let data: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|v| v.to_be_bytes()).collect();
        let t = decode_npy(&npy_v1("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", &data)).unwrap();
        assert_eq!(t.to_f64s(), vec![1.5, -2.0]);
        let data: Vec<u8> = [258i16, -3].iter().flat_map(|v| v.to_be_bytes()).collect();
        let t = decode_npy(&npy_v1("{'descr': '>i2', 'fortran_order': False, 'shape': (2,), }", &data)).unwrap();
        assert_eq!(t.dtype(), DType::I16);
        assert_eq!(t.to_i64s(), vec![258, -3]);
    }

    #[test]
    fn fortran_order_is_reordered() {
        // numpy.asfortranarray([[1, 2, 3], [4, 5, 6]]) stores columns first.
        let data: Vec<u8> = [1i32, 4, 2, 5, 3, 6].iter().flat_map(|v| v.to_le_bytes()).collect();
        let t = decode_npy(&npy_v1("{'descr': '<i4', 'fortran_order': True, 'shape': (2, 3), }", &data)).unwrap();
        assert_eq!(t.shape(), &[2, 3]);
        assert_eq!(t.to_i64s(), vec![1, 2, 3, 4, 5, 6]);
        // And the result is C-ordered in memory, not just logically.
        let Tensor::I32(a) = &t else { panic!("dtype") };
        assert!(a.is_standard_layout());
    }

    #[test]
    fn version_2_and_3_headers() {
        for major in [2u8, 3] {
            let dict = "{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }\n";
            let mut bytes = MAGIC.to_vec();
            bytes.extend_from_slice(&[major, 0]);
            bytes.extend_from_slice(&(dict.len() as u32).to_le_bytes());
            bytes.extend_from_slice(dict.as_bytes());
            bytes.extend(7i64.to_le_bytes());
            bytes.extend((-1i64).to_le_bytes());
            let t = decode_npy(&bytes).unwrap();
            assert_eq!(t.to_i64s(), vec![7, -1]);
        }
    }

    #[test]
    fn large_headers_use_version_2() {
        let shape: Vec<usize> = vec![1; 30000];
        let t = Tensor::zeros(DType::U8, &shape);
        let bytes = encode_npy(&t).unwrap();
        assert_eq!(bytes[6], 2);
        let back = decode_npy(&bytes).unwrap();
        assert_eq!(back.shape(), &shape[..]);
    }

    #[test]
    fn header_key_order_and_python2_longs() {
        let data: Vec<u8> = [1u8, 0, 1].to_vec();
        let t = decode_npy(&npy_v1("{'shape': (3L,), 'fortran_order': False, 'descr': '|b1'}", &data)).unwrap();
        assert_eq!(t.dtype(), DType::Bool);
        assert_eq!(t.to_i64s(), vec![1, 0, 1]);
    }

    #[test]
    fn bad_magic() {
        assert!(err_text(b"PK\x03\x04 not numpy at all").contains("magic"));
        assert!(err_text(b"").contains("magic"));
    }

    #[test]
    fn truncated_files() {
        let good = encode_npy(&Tensor::from_f64s(DType::F32, &[2], &[1.0, 2.0])).unwrap();
        assert!(err_text(&good[..7]).contains("truncated"));
        assert!(err_text(&good[..9]).contains("truncated"));
        assert!(err_text(&good[..40]).contains("header is"));
        assert!(err_text(&good[..good.len() - 1]).contains("needs 8 bytes"));
    }

    #[test]
    fn unknown_version() {
        let mut bytes = encode_npy(&Tensor::scalar_f32(1.0)).unwrap();
        bytes[6] = 9;
        assert!(err_text(&bytes).contains("version 9.0"));
    }

    #[test]
    fn header_not_a_dict() {
        assert!(err_text(&npy_v1("['descr', '<f4']", &[])).contains("not a Python dict"));
        assert!(err_text(&npy_v1("{'descr': '<f4', 'fortran_order': ", &[])).contains("ends in the middle"));
        assert!(err_text(&npy_v1("{'descr': '<f4', 'fortran_order': False", &[])).contains("expected ',' or '}'"));
        assert!(err_text(&npy_v1("{'descr' '<f4'}", &[])).contains("expected ':'"));
        assert!(err_text(&npy_v1("{'descr': '<f4', 'fortran_order': Fals, 'shape': ()}", &[])).contains("Fals"));
        assert!(err_text(&npy_v1("{'descr': '<f4}", &[])).contains("unterminated"));
        assert!(err_text(&npy_v1(&"(".repeat(100), &[])).contains("nests too deeply"));
    }

    #[test]
    fn header_missing_or_bad_entries() {
        assert!(err_text(&npy_v1("{'descr': '<f4', 'shape': ()}", &[0; 4])).contains("no 'fortran_order'"));
        assert!(err_text(&npy_v1("{'descr': '<f4', 'fortran_order': False}", &[0; 4])).contains("no 'shape'"));
        assert!(err_text(&npy_v1("{'descr': '<c8', 'fortran_order': False, 'shape': ()}", &[0; 8]))
            .contains("'<c8' is not supported"));
        assert!(err_text(&npy_v1("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': ()}", &[0; 4]))
            .contains("structured"));
        assert!(
            err_text(&npy_v1("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}", &[])).contains("non-negative")
        );
        assert!(err_text(&npy_v1("{'descr': '<f4', 'fortran_order': False, 'shape': 3}", &[])).contains("not a tuple"));
        assert!(err_text(&npy_v1("{'descr': '<f4', 'fortran_order': 0, 'shape': ()}", &[])).contains("True or False"));
        assert!(err_text(&npy_v1("{'descr': '<f4', 'fortran_order': False, 'shape': (), 'x': 1}", &[0; 4]))
            .contains("unexpected header key 'x'"));
    }

    #[test]
    fn shape_and_data_length_mismatch() {
        let dict = "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }";
        assert!(err_text(&npy_v1(dict, &[0; 40])).contains("needs 48 bytes of data, the file has 40"));
        assert!(err_text(&npy_v1(dict, &[0; 56])).contains("the file has 56"));
        let huge = "{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }";
        assert!(err_text(&npy_v1(huge, &[])).contains("too many elements"));
    }

    #[test]
    fn non_ascii_header() {
        let mut bytes = npy_v1("{'descr': '<f4', 'fortran_order': False, 'shape': (), }", &[0; 4]);
        bytes[12] = 0xff;
        assert!(err_text(&bytes).contains("not ASCII"));
    }

    #[test]
    fn read_npy_names_the_file() {
        let dir = std::env::temp_dir().join(format!("kiln-npy-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.npy");
        std::fs::write(&path, b"garbage").unwrap();
        let msg = read_npy(&path).unwrap_err().to_string();
        assert!(msg.contains("bad.npy") && msg.contains("magic"), "{msg}");
        let missing = read_npy(&dir.join("missing.npy")).unwrap_err().to_string();
        assert!(missing.contains("missing.npy"), "{missing}");
        let good = dir.join("good.npy");
        let t = Tensor::from_i64s(DType::I32, &[2, 2], &[1, 2, 3, 4]);
        write_npy(&good, &t).unwrap();
        assert!(read_npy(&good).unwrap().bitwise_eq(&t));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
