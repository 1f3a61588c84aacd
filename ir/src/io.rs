//! Loading and saving graphs by file extension.
//!
//! | extension | format |
//! |-----------|--------|
//! | `.onnx`   | ONNX model (protobuf), via [`crate::onnx::import`] / [`crate::onnx::export`] |
//! | `.kiln`   | kiln's text format, via [`crate::text`] |
//!
//! [`load`] returns a graph that is ready to use: every value typed by
//! [`crate::infer::infer_types`] and the whole checked by
//! [`crate::verify::verify`].

use crate::error::{IrError, Result};
use crate::graph::Graph;
use crate::onnx::import::ImportOptions;
use std::path::Path;

/// A file format kiln reads and writes graphs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFormat {
    /// ONNX protobuf (`.onnx`).
    Onnx,
    /// kiln's text format (`.kiln`).
    Text,
}

/// The extensions [`ModelFormat::from_path`] recognizes, for error messages
/// and help texts.
pub const SUPPORTED_EXTENSIONS: &str = ".onnx (ONNX model), .kiln (kiln text format)";

impl ModelFormat {
    /// The format a path's extension names (case-insensitive), or an error
    /// listing the supported extensions.
    pub fn from_path(path: &Path) -> Result<ModelFormat> {
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("onnx") => Ok(ModelFormat::Onnx),
            Some("kiln") => Ok(ModelFormat::Text),
            Some(other) => Err(IrError::Model(format!(
                "{}: unknown model file extension `.{other}`; supported: {SUPPORTED_EXTENSIONS}",
                path.display()
            ))),
            None => Err(IrError::Model(format!(
                "{}: the file name has no extension, so its format is unknown; supported: {SUPPORTED_EXTENSIONS}",
                path.display()
            ))),
        }
    }
}

/// Reads a graph from `path` (format by extension), infers every value's
/// type and verifies it.
pub fn load(path: impl AsRef<Path>) -> Result<Graph> {
    load_with(path.as_ref(), ImportOptions::default())
}

/// [`load`] with import options (progress reporting for large ONNX files;
/// ignored for the text format, which parses in one go).
pub fn load_with(path: &Path, opts: ImportOptions) -> Result<Graph> {
    let mut graph = match ModelFormat::from_path(path)? {
        ModelFormat::Onnx => crate::onnx::import::load_model(path, opts)?,
        ModelFormat::Text => {
            let bytes = std::fs::read(path).map_err(|source| IrError::Io { path: path.to_path_buf(), source })?;
            let text = String::from_utf8(bytes)
                .map_err(|e| IrError::Model(format!("{}: not UTF-8 text: {e}", path.display())))?;
            crate::text::parse_graph(&text)?
        }
    };
    crate::infer::infer_types(&mut graph)?;
    crate::verify::verify(&graph)?;
    Ok(graph)
}

/// Writes a graph to `path` in the format its extension names.
pub fn save(graph: &Graph, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    match ModelFormat::from_path(path)? {
        ModelFormat::Onnx => crate::onnx::export::save_model(graph, path),
        ModelFormat::Text => std::fs::write(path, crate::text::print_graph(graph))
            .map_err(|source| IrError::Io { path: path.to_path_buf(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::op::{BinaryOp, Op};
    use crate::types::TensorType;

    fn scratch_dir(test: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("kiln-io-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir is writable");
        dir
    }

    fn add_graph() -> Graph {
        let mut g = Graph::new("add");
        g.opset_imports.insert(String::new(), 23);
        let x = g.add_input("x", TensorType::new(DType::F32, vec![crate::dim::Dim::sym("n")])).unwrap();
        let y = g.add_input("y", TensorType::new(DType::F32, vec![crate::dim::Dim::sym("n")])).unwrap();
        let node = g.add_node("sum", Op::Binary(BinaryOp::Add), vec![Some(x), Some(y)], &["z"]).unwrap();
        let out = g.node(node).output(0).unwrap();
        g.add_output(out);
        g
    }

    #[test]
    fn format_by_extension() {
        assert_eq!(ModelFormat::from_path(Path::new("a/b.onnx")).unwrap(), ModelFormat::Onnx);
        assert_eq!(ModelFormat::from_path(Path::new("B.ONNX")).unwrap(), ModelFormat::Onnx);
        assert_eq!(ModelFormat::from_path(Path::new("m.kiln")).unwrap(), ModelFormat::Text);
        let msg = ModelFormat::from_path(Path::new("m.txt")).unwrap_err().to_string();
        assert!(msg.contains("`.txt`") && msg.contains(".onnx") && msg.contains(".kiln"), "{msg}");
        let msg = ModelFormat::from_path(Path::new("model")).unwrap_err().to_string();
        assert!(msg.contains("no extension"), "{msg}");
    }

    #[test]
    fn save_and_load_both_formats() {
        let dir = scratch_dir("roundtrip");
        let mut g = add_graph();
        // Export writes every graph output's type, so they must be known.
        crate::infer::infer_types(&mut g).unwrap();
        for name in ["m.onnx", "m.kiln"] {
            let path = dir.join(name);
            save(&g, &path).unwrap();
            let back = load(&path).unwrap();
            assert_eq!(back.inputs().len(), 2, "{name}");
            assert_eq!(back.node_count(), 1, "{name}");
            let out = back.outputs()[0];
            assert_eq!(back.ty(out).unwrap().dtype, DType::F32, "{name}: the output is typed after load");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = scratch_dir("errors");
        let missing = load(dir.join("missing.onnx")).unwrap_err().to_string();
        assert!(missing.contains("missing.onnx"), "{missing}");
        let bad = dir.join("bad.kiln");
        std::fs::write(&bad, [0xffu8, 0xfe, 0x00]).unwrap();
        let msg = load(&bad).unwrap_err().to_string();
        assert!(msg.contains("bad.kiln") && msg.contains("UTF-8"), "{msg}");
        let msg = save(&add_graph(), dir.join("m.txt")).unwrap_err().to_string();
        assert!(msg.contains("unknown model file extension"), "{msg}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
