//! ONNX import and export.
//!
//! - [`import`]: `ModelProto` → [`Graph`](crate::Graph) ([`load_model`],
//!   [`import_model_bytes`]) and `TensorProto` → [`Tensor`](crate::Tensor);
//! - [`export`]: the reverse ([`save_model`], [`model_to_bytes`]);
//! - [`external`]: weights kept in files next to the model;
//! - [`proto`]: the protobuf wire types.

pub mod export;
pub mod external;
mod forms;
pub mod import;
pub mod proto;

pub use export::{
    export_opset, model_to_bytes, save_model, save_model_with, tensor_to_proto, write_tensor_pb, ExportOptions,
    DEFAULT_EXTERNAL_DATA_THRESHOLD,
};
pub use forms::{MAX_IR_VERSION, MAX_OPSET, MIN_IR_VERSION};
pub use import::{import_model_bytes, load_model, read_tensor_pb, tensor_from_proto, ImportOptions};
