//! Tensor data kept outside the model file (`data_location = EXTERNAL`).
//!
//! ONNX models over 2 GB cannot hold their weights inside the protobuf, so
//! the tensors name a file relative to the model's directory plus a byte
//! range in it. Reading opens each file once and reads only each tensor's
//! range; writing appends tensors to one file with aligned offsets so that a
//! runtime can map them directly.

use crate::error::{IrError, Result};
use crate::onnx::proto::StringStringEntryProto;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};

/// Offsets of tensors in a written data file are multiples of this, the page
/// size of common systems, so the file can be memory-mapped tensor by tensor.
pub const EXTERNAL_DATA_ALIGNMENT: u64 = 4096;

/// Where one tensor's bytes are: the `external_data` entries of a
/// `TensorProto`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalLocation {
    /// File name relative to the model's directory, as written in the model.
    pub location: String,
    /// Byte offset of the data in the file.
    pub offset: u64,
    /// Byte length, when the model states it.
    pub length: Option<u64>,
}

impl ExternalLocation {
    /// Reads the `location`, `offset` and `length` keys. `checksum` and keys
    /// kiln does not know are ignored, as the ONNX reference loader does.
    pub fn parse(tensor: &str, entries: &[StringStringEntryProto]) -> Result<ExternalLocation> {
        let mut location = None;
        let mut offset = 0;
        let mut length = None;
        for e in entries {
            let key = e.key.as_deref().unwrap_or("");
            let value = e.value.as_deref().unwrap_or("");
            let number = |what: &str| {
                value.trim().parse::<u64>().map_err(|_| {
                    IrError::value(tensor, format!("external data {what} `{value}` is not a non-negative integer"))
                })
            };
            match key {
                "location" => location = Some(value.to_string()),
                "offset" => offset = number("offset")?,
                "length" => length = Some(number("length")?),
                _ => {}
            }
        }
        let location = location
            .filter(|l| !l.is_empty())
            .ok_or_else(|| IrError::value(tensor, "data is marked EXTERNAL but `external_data` names no location"))?;
        Ok(ExternalLocation { location, offset, length })
    }

    /// The `external_data` entries describing this location.
    pub fn to_entries(&self) -> Vec<StringStringEntryProto> {
        let entry = |k: &str, v: String| StringStringEntryProto { key: Some(k.into()), value: Some(v) };
        let mut out = vec![entry("location", self.location.clone()), entry("offset", self.offset.to_string())];
        if let Some(l) = self.length {
            out.push(entry("length", l.to_string()));
        }
        out
    }
}

/// Checks that an external data location stays inside the model's directory:
/// a relative path with no `..`, root or drive component. Models are often
/// downloaded from untrusted places; a location such as `../../etc/passwd`
/// must not make kiln read arbitrary files.
pub fn checked_relative_path<'a>(tensor: &str, location: &'a str) -> Result<&'a Path> {
    let path = Path::new(location);
    let escapes =
        path.components().any(|c| matches!(c, Component::ParentDir | Component::RootDir | Component::Prefix(_)));
    if escapes || path.is_absolute() || location.contains('\0') {
        return Err(IrError::value(
            tensor,
            format!("external data location `{location}` escapes the model directory (it must be a relative path without `..`)"),
        ));
    }
    Ok(path)
}

struct OpenFile {
    file: File,
    len: u64,
}

/// Reads byte ranges of external data files, keeping each file open across
/// tensors so a model with thousands of weights in one file opens it once.
pub struct ExternalReader {
    base_dir: Option<PathBuf>,
    canonical_base: Option<PathBuf>,
    files: BTreeMap<PathBuf, OpenFile>,
}

impl ExternalReader {
    /// A reader resolving locations against `base_dir`, the model's
    /// directory; `None` when the model did not come from a file.
    pub fn new(base_dir: Option<&Path>) -> ExternalReader {
        ExternalReader { base_dir: base_dir.map(Path::to_path_buf), canonical_base: None, files: BTreeMap::new() }
    }

    fn open(&mut self, tensor: &str, location: &str) -> Result<&mut OpenFile> {
        let relative = checked_relative_path(tensor, location)?;
        let Some(base) = &self.base_dir else {
            return Err(IrError::value(
                tensor,
                format!("data is in external file `{location}`, but the model was not loaded from a directory to resolve it against"),
            ));
        };
        let path = base.join(relative);
        if !self.files.contains_key(&path) {
            let file = File::open(&path).map_err(|e| {
                IrError::value(tensor, format!("cannot open external data file `{}`: {e}", path.display()))
            })?;
            // A symlink inside the model directory could still point outside
            // it; compare the resolved paths too.
            let canonical = path.canonicalize().map_err(|e| {
                IrError::value(tensor, format!("cannot resolve external data file `{}`: {e}", path.display()))
            })?;
            if self.canonical_base.is_none() {
                self.canonical_base = Some(base.canonicalize().map_err(|e| {
                    IrError::value(tensor, format!("cannot resolve model directory `{}`: {e}", base.display()))
                })?);
            }
            if !canonical.starts_with(self.canonical_base.as_ref().expect("set just above")) {
                return Err(IrError::value(
                    tensor,
                    format!(
                        "external data location `{location}` resolves to `{}`, outside the model directory",
                        canonical.display()
                    ),
                ));
            }
            let len = file
                .metadata()
                .map_err(|e| {
                    IrError::value(tensor, format!("cannot stat external data file `{}`: {e}", path.display()))
                })?
                .len();
            self.files.insert(path.clone(), OpenFile { file, len });
        }
        Ok(self.files.get_mut(&path).expect("inserted above"))
    }

    /// Reads the `want` bytes a tensor needs from its location, checking the
    /// stated length and the file size first so a corrupt model cannot make
    /// kiln allocate more than the file holds.
    pub fn read(&mut self, tensor: &str, loc: &ExternalLocation, want: usize) -> Result<Vec<u8>> {
        if let Some(length) = loc.length {
            if length != want as u64 {
                return Err(IrError::value(
                    tensor,
                    format!(
                        "external data length {length} in `{}` does not match the {want} bytes its type and shape need",
                        loc.location
                    ),
                ));
            }
        }
        let open = self.open(tensor, &loc.location)?;
        let end = loc.offset.checked_add(want as u64);
        if end.is_none_or(|end| end > open.len) {
            return Err(IrError::value(
                tensor,
                format!(
                    "external data range {}..{}+{want} is past the end of `{}` ({} bytes)",
                    loc.offset, loc.offset, loc.location, open.len
                ),
            ));
        }
        let mut bytes = vec![0u8; want];
        open.file
            .seek(SeekFrom::Start(loc.offset))
            .and_then(|_| open.file.read_exact(&mut bytes))
            .map_err(|e| IrError::value(tensor, format!("cannot read external data file `{}`: {e}", loc.location)))?;
        Ok(bytes)
    }
}

/// Appends tensors to one external data file at aligned offsets.
pub struct ExternalWriter {
    out: BufWriter<File>,
    path: PathBuf,
    location: String,
    pos: u64,
}

impl ExternalWriter {
    /// Creates (or truncates) `dir/location`.
    pub fn create(dir: &Path, location: &str) -> Result<ExternalWriter> {
        let path = dir.join(location);
        let file = File::create(&path).map_err(|source| IrError::Io { path: path.clone(), source })?;
        Ok(ExternalWriter { out: BufWriter::new(file), path, location: location.to_string(), pos: 0 })
    }

    /// Writes one tensor's bytes and returns where they went.
    pub fn append(&mut self, bytes: &[u8]) -> Result<ExternalLocation> {
        let aligned = self.pos.next_multiple_of(EXTERNAL_DATA_ALIGNMENT);
        let pad = (aligned - self.pos) as usize;
        let io = |source| IrError::Io { path: self.path.clone(), source };
        self.out.write_all(&[0u8; EXTERNAL_DATA_ALIGNMENT as usize][..pad]).map_err(io)?;
        self.out.write_all(bytes).map_err(io)?;
        self.pos = aligned + bytes.len() as u64;
        Ok(ExternalLocation { location: self.location.clone(), offset: aligned, length: Some(bytes.len() as u64) })
    }

    /// Flushes the file.
    pub fn finish(mut self) -> Result<()> {
        self.out.flush().map_err(|source| IrError::Io { path: self.path.clone(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_must_stay_inside_the_model_directory() {
        for bad in ["../w.bin", "a/../../w.bin", "/etc/passwd"] {
            let err = checked_relative_path("w", bad).unwrap_err().to_string();
            assert!(err.contains("escapes the model directory") && err.contains('w'), "{bad}: {err}");
        }
        assert!(checked_relative_path("w", "weights/w.bin").is_ok());
        assert!(checked_relative_path("w", "./w.bin").is_ok());
    }

    #[test]
    fn location_entries_parse_and_print() {
        let loc = ExternalLocation { location: "m.data".into(), offset: 4096, length: Some(12) };
        assert_eq!(ExternalLocation::parse("w", &loc.to_entries()).unwrap(), loc);
        let bad = vec![StringStringEntryProto { key: Some("offset".into()), value: Some("-1".into()) }];
        assert!(ExternalLocation::parse("w", &bad).unwrap_err().to_string().contains("offset"));
    }

    #[test]
    fn written_ranges_are_aligned_and_read_back() {
        let dir = std::env::temp_dir().join(format!("kiln-external-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = ExternalWriter::create(&dir, "t.data").unwrap();
        let a = w.append(&[1, 2, 3]).unwrap();
        let b = w.append(&[4, 5]).unwrap();
        w.finish().unwrap();
        assert_eq!((a.offset, b.offset), (0, EXTERNAL_DATA_ALIGNMENT));
        let mut r = ExternalReader::new(Some(&dir));
        assert_eq!(r.read("b", &b, 2).unwrap(), vec![4, 5]);
        assert_eq!(r.read("a", &a, 3).unwrap(), vec![1, 2, 3]);
        let past = ExternalLocation { offset: EXTERNAL_DATA_ALIGNMENT + 1, ..b.clone() };
        assert!(r
            .read("b", &ExternalLocation { length: None, ..past }, 2)
            .unwrap_err()
            .to_string()
            .contains("past the end"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
