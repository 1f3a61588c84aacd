//! ONNX import and export.

pub mod proto;
