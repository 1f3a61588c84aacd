//! Hand-written `prost` wire types for `onnx-ml.proto` (ONNX 1.22, IR version 13).
//!
//! These mirror what `prost-build` would generate for the proto2 schema: optional
//! scalars are `Option<T>` (so presence survives a decode/encode round trip; prost
//! generates `field()` getters that return the default when absent), nested
//! messages and enums live in snake_case submodules, and repeated numeric fields
//! are packed only where the schema says `[packed = true]`. No I/O and no
//! semantics here: this module is purely the wire format.

/// IR version history; `IrVersion` is the newest version the schema describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ::prost::Enumeration)]
#[repr(i32)]
pub enum Version {
    /// Placeholder zero value; never a valid IR version.
    StartVersion = 0,
    /// IR version 1 (2017-10-10).
    IrVersion20171010 = 1,
    /// IR version 2 (2017-10-30).
    IrVersion20171030 = 2,
    /// IR version 3 (2017-11-03).
    IrVersion2017113 = 3,
    /// IR version 4 (2019-01-22).
    IrVersion2019122 = 4,
    /// IR version 5 (2019-03-18).
    IrVersion2019318 = 5,
    /// IR version 6 (2019-09-19).
    IrVersion2019919 = 6,
    /// IR version 7 (2020-05-08).
    IrVersion202058 = 7,
    /// IR version 8 (2021-07-30).
    IrVersion2021730 = 8,
    /// IR version 9 (2023-05-05).
    IrVersion202355 = 9,
    /// IR version 10 (2024-03-25).
    IrVersion2024325 = 10,
    /// IR version 11 (2025-05-12).
    IrVersion20250512 = 11,
    /// IR version 12 (2025-08-26).
    IrVersion20250826 = 12,
    /// IR version 13, the current one.
    IrVersion = 13,
}

/// Named attribute of a node or function; `type` says which value field is used.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct AttributeProto {
    /// Attribute name.
    #[prost(string, optional, tag = "1")]
    pub name: ::core::option::Option<::prost::alloc::string::String>,
    /// In a function body: name of the caller's attribute this one refers to.
    #[prost(string, optional, tag = "21")]
    pub ref_attr_name: ::core::option::Option<::prost::alloc::string::String>,
    /// Human-readable documentation.
    #[prost(string, optional, tag = "13")]
    pub doc_string: ::core::option::Option<::prost::alloc::string::String>,
    /// Discriminator naming the value field in use.
    #[prost(enumeration = "attribute_proto::AttributeType", optional, tag = "20")]
    pub r#type: ::core::option::Option<i32>,
    /// Float value.
    #[prost(float, optional, tag = "2")]
    pub f: ::core::option::Option<f32>,
    /// Integer value.
    #[prost(int64, optional, tag = "3")]
    pub i: ::core::option::Option<i64>,
    /// UTF-8 string value (as bytes).
    #[prost(bytes = "vec", optional, tag = "4")]
    pub s: ::core::option::Option<::prost::alloc::vec::Vec<u8>>,
    /// Tensor value.
    #[prost(message, optional, tag = "5")]
    pub t: ::core::option::Option<TensorProto>,
    /// Graph value (subgraph).
    #[prost(message, optional, tag = "6")]
    pub g: ::core::option::Option<GraphProto>,
    /// Sparse tensor value.
    #[prost(message, optional, tag = "22")]
    pub sparse_tensor: ::core::option::Option<SparseTensorProto>,
    /// Type value.
    #[prost(message, optional, tag = "14")]
    pub tp: ::core::option::Option<TypeProto>,
    /// List of floats.
    #[prost(float, repeated, packed = "false", tag = "7")]
    pub floats: ::prost::alloc::vec::Vec<f32>,
    /// List of integers.
    #[prost(int64, repeated, packed = "false", tag = "8")]
    pub ints: ::prost::alloc::vec::Vec<i64>,
    /// List of UTF-8 strings (as bytes).
    #[prost(bytes = "vec", repeated, tag = "9")]
    pub strings: ::prost::alloc::vec::Vec<::prost::alloc::vec::Vec<u8>>,
    /// List of tensors.
    #[prost(message, repeated, tag = "10")]
    pub tensors: ::prost::alloc::vec::Vec<TensorProto>,
    /// List of graphs.
    #[prost(message, repeated, tag = "11")]
    pub graphs: ::prost::alloc::vec::Vec<GraphProto>,
    /// List of sparse tensors.
    #[prost(message, repeated, tag = "23")]
    pub sparse_tensors: ::prost::alloc::vec::Vec<SparseTensorProto>,
    /// List of types.
    #[prost(message, repeated, tag = "15")]
    pub type_protos: ::prost::alloc::vec::Vec<TypeProto>,
}

/// Nested types of [`AttributeProto`].
pub mod attribute_proto {
    /// Which value field of an [`AttributeProto`](super::AttributeProto) is set.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ::prost::Enumeration)]
    #[repr(i32)]
    pub enum AttributeType {
        /// Unset.
        Undefined = 0,
        /// `f`.
        Float = 1,
        /// `i`.
        Int = 2,
        /// `s`.
        String = 3,
        /// `t`.
        Tensor = 4,
        /// `g`.
        Graph = 5,
        /// `sparse_tensor`.
        SparseTensor = 11,
        /// `tp`.
        TypeProto = 13,
        /// `floats`.
        Floats = 6,
        /// `ints`.
        Ints = 7,
        /// `strings`.
        Strings = 8,
        /// `tensors`.
        Tensors = 9,
        /// `graphs`.
        Graphs = 10,
        /// `sparse_tensors`.
        SparseTensors = 12,
        /// `type_protos`.
        TypeProtos = 14,
    }
}

/// Name, type and documentation of a graph input, output or intermediate value.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ValueInfoProto {
    /// Value name.
    #[prost(string, optional, tag = "1")]
    pub name: ::core::option::Option<::prost::alloc::string::String>,
    /// Value type (and shape).
    #[prost(message, optional, tag = "2")]
    pub r#type: ::core::option::Option<TypeProto>,
    /// Human-readable documentation.
    #[prost(string, optional, tag = "3")]
    pub doc_string: ::core::option::Option<::prost::alloc::string::String>,
    /// Named metadata.
    #[prost(message, repeated, tag = "4")]
    pub metadata_props: ::prost::alloc::vec::Vec<StringStringEntryProto>,
}

/// One operator invocation in a graph.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct NodeProto {
    /// Input value names (empty string = omitted optional input).
    #[prost(string, repeated, tag = "1")]
    pub input: ::prost::alloc::vec::Vec<::prost::alloc::string::String>,
    /// Output value names.
    #[prost(string, repeated, tag = "2")]
    pub output: ::prost::alloc::vec::Vec<::prost::alloc::string::String>,
    /// Node name.
    #[prost(string, optional, tag = "3")]
    pub name: ::core::option::Option<::prost::alloc::string::String>,
    /// Operator name.
    #[prost(string, optional, tag = "4")]
    pub op_type: ::core::option::Option<::prost::alloc::string::String>,
    /// Operator domain (empty = `ai.onnx`).
    #[prost(string, optional, tag = "7")]
    pub domain: ::core::option::Option<::prost::alloc::string::String>,
    /// Overload identifier, for calls to overloaded functions.
    #[prost(string, optional, tag = "8")]
    pub overload: ::core::option::Option<::prost::alloc::string::String>,
    /// Attributes.
    #[prost(message, repeated, tag = "5")]
    pub attribute: ::prost::alloc::vec::Vec<AttributeProto>,
    /// Human-readable documentation.
    #[prost(string, optional, tag = "6")]
    pub doc_string: ::core::option::Option<::prost::alloc::string::String>,
    /// Named metadata.
    #[prost(message, repeated, tag = "9")]
    pub metadata_props: ::prost::alloc::vec::Vec<StringStringEntryProto>,
    /// Per-configuration distribution (sharding) annotations.
    #[prost(message, repeated, tag = "10")]
    pub device_configurations: ::prost::alloc::vec::Vec<NodeDeviceConfigurationProto>,
}

/// Map entry from an integer key to a list of integers.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct IntIntListEntryProto {
    /// Key.
    #[prost(int64, optional, tag = "1")]
    pub key: ::core::option::Option<i64>,
    /// Values.
    #[prost(int64, repeated, packed = "false", tag = "2")]
    pub value: ::prost::alloc::vec::Vec<i64>,
}

/// How a node is distributed under one device configuration.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct NodeDeviceConfigurationProto {
    /// Name of a [`DeviceConfigurationProto`] in the model.
    #[prost(string, optional, tag = "1")]
    pub configuration_id: ::core::option::Option<::prost::alloc::string::String>,
    /// Sharding of the node's inputs/outputs.
    #[prost(message, repeated, tag = "2")]
    pub sharding_spec: ::prost::alloc::vec::Vec<ShardingSpecProto>,
    /// Pipeline stage of the node.
    #[prost(int32, optional, tag = "3")]
    pub pipeline_stage: ::core::option::Option<i32>,
}

/// Sharding of one tensor across devices.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ShardingSpecProto {
    /// Name of the sharded tensor.
    #[prost(string, optional, tag = "1")]
    pub tensor_name: ::core::option::Option<::prost::alloc::string::String>,
    /// Device ids (or group ids) the tensor is spread over.
    #[prost(int64, repeated, packed = "false", tag = "2")]
    pub device: ::prost::alloc::vec::Vec<i64>,
    /// Maps group ids used in `device` to lists of device ids.
    #[prost(message, repeated, tag = "3")]
    pub index_to_device_group_map: ::prost::alloc::vec::Vec<IntIntListEntryProto>,
    /// Per-axis sharding.
    #[prost(message, repeated, tag = "4")]
    pub sharded_dim: ::prost::alloc::vec::Vec<ShardedDimProto>,
}

/// Sharding of one tensor axis.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ShardedDimProto {
    /// The sharded axis.
    #[prost(int64, optional, tag = "1")]
    pub axis: ::core::option::Option<i64>,
    /// Nested simple shardings of the axis.
    #[prost(message, repeated, tag = "2")]
    pub simple_sharding: ::prost::alloc::vec::Vec<SimpleShardedDimProto>,
}

/// Even split of a dimension into a number of shards.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct SimpleShardedDimProto {
    /// Size of the sharded dimension.
    #[prost(oneof = "simple_sharded_dim_proto::Dim", tags = "1, 2")]
    pub dim: ::core::option::Option<simple_sharded_dim_proto::Dim>,
    /// Number of shards.
    #[prost(int64, optional, tag = "3")]
    pub num_shards: ::core::option::Option<i64>,
}

/// Nested types of [`SimpleShardedDimProto`].
pub mod simple_sharded_dim_proto {
    /// Dimension size: concrete or symbolic.
    #[derive(Clone, PartialEq, Eq, Hash, ::prost::Oneof)]
    pub enum Dim {
        /// Concrete size.
        #[prost(int64, tag = "1")]
        DimValue(i64),
        /// Symbolic size.
        #[prost(string, tag = "2")]
        DimParam(::prost::alloc::string::String),
    }
}

/// Training information: an initialization graph and a training-step algorithm graph.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct TrainingInfoProto {
    /// Graph run once to initialize state.
    #[prost(message, optional, tag = "1")]
    pub initialization: ::core::option::Option<GraphProto>,
    /// Graph for one training step.
    #[prost(message, optional, tag = "2")]
    pub algorithm: ::core::option::Option<GraphProto>,
    /// Initializer name <- initialization output name.
    #[prost(message, repeated, tag = "3")]
    pub initialization_binding: ::prost::alloc::vec::Vec<StringStringEntryProto>,
    /// Initializer name <- algorithm output name.
    #[prost(message, repeated, tag = "4")]
    pub update_binding: ::prost::alloc::vec::Vec<StringStringEntryProto>,
}

/// Top-level ONNX model: metadata, opset imports, main graph and local functions.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ModelProto {
    /// IR version the model is written against (see [`Version`]).
    #[prost(int64, optional, tag = "1")]
    pub ir_version: ::core::option::Option<i64>,
    /// Operator sets the model uses, one per domain.
    #[prost(message, repeated, tag = "8")]
    pub opset_import: ::prost::alloc::vec::Vec<OperatorSetIdProto>,
    /// Name of the producing tool.
    #[prost(string, optional, tag = "2")]
    pub producer_name: ::core::option::Option<::prost::alloc::string::String>,
    /// Version of the producing tool.
    #[prost(string, optional, tag = "3")]
    pub producer_version: ::core::option::Option<::prost::alloc::string::String>,
    /// Reverse-DNS model namespace.
    #[prost(string, optional, tag = "4")]
    pub domain: ::core::option::Option<::prost::alloc::string::String>,
    /// Model version.
    #[prost(int64, optional, tag = "5")]
    pub model_version: ::core::option::Option<i64>,
    /// Human-readable documentation.
    #[prost(string, optional, tag = "6")]
    pub doc_string: ::core::option::Option<::prost::alloc::string::String>,
    /// Main graph.
    #[prost(message, optional, tag = "7")]
    pub graph: ::core::option::Option<GraphProto>,
    /// Named metadata.
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: ::prost::alloc::vec::Vec<StringStringEntryProto>,
    /// Training information.
    #[prost(message, repeated, tag = "20")]
    pub training_info: ::prost::alloc::vec::Vec<TrainingInfoProto>,
    /// Model-local functions.
    #[prost(message, repeated, tag = "25")]
    pub functions: ::prost::alloc::vec::Vec<FunctionProto>,
    /// Multi-device configurations.
    #[prost(message, repeated, tag = "26")]
    pub configuration: ::prost::alloc::vec::Vec<DeviceConfigurationProto>,
}

/// A named multi-device configuration.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct DeviceConfigurationProto {
    /// Configuration name.
    #[prost(string, optional, tag = "1")]
    pub name: ::core::option::Option<::prost::alloc::string::String>,
    /// Number of devices.
    #[prost(int32, optional, tag = "2")]
    pub num_devices: ::core::option::Option<i32>,
    /// Device names.
    #[prost(string, repeated, tag = "3")]
    pub device: ::prost::alloc::vec::Vec<::prost::alloc::string::String>,
}

/// String key/value pair.
#[derive(Clone, PartialEq, Eq, Hash, ::prost::Message)]
pub struct StringStringEntryProto {
    /// Key.
    #[prost(string, optional, tag = "1")]
    pub key: ::core::option::Option<::prost::alloc::string::String>,
    /// Value.
    #[prost(string, optional, tag = "2")]
    pub value: ::core::option::Option<::prost::alloc::string::String>,
}

/// Quantization parameters attached to a tensor.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct TensorAnnotation {
    /// Annotated tensor.
    #[prost(string, optional, tag = "1")]
    pub tensor_name: ::core::option::Option<::prost::alloc::string::String>,
    /// Parameter kind (e.g. `SCALE_TENSOR`) -> tensor name.
    #[prost(message, repeated, tag = "2")]
    pub quant_parameter_tensor_names: ::prost::alloc::vec::Vec<StringStringEntryProto>,
}

/// A computation graph: nodes in topological order, initializers and I/O signature.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct GraphProto {
    /// Nodes, topologically sorted.
    #[prost(message, repeated, tag = "1")]
    pub node: ::prost::alloc::vec::Vec<NodeProto>,
    /// Graph name.
    #[prost(string, optional, tag = "2")]
    pub name: ::core::option::Option<::prost::alloc::string::String>,
    /// Constant tensors (weights, defaults for inputs).
    #[prost(message, repeated, tag = "5")]
    pub initializer: ::prost::alloc::vec::Vec<TensorProto>,
    /// Sparse constant tensors.
    #[prost(message, repeated, tag = "15")]
    pub sparse_initializer: ::prost::alloc::vec::Vec<SparseTensorProto>,
    /// Human-readable documentation.
    #[prost(string, optional, tag = "10")]
    pub doc_string: ::core::option::Option<::prost::alloc::string::String>,
    /// Graph inputs.
    #[prost(message, repeated, tag = "11")]
    pub input: ::prost::alloc::vec::Vec<ValueInfoProto>,
    /// Graph outputs.
    #[prost(message, repeated, tag = "12")]
    pub output: ::prost::alloc::vec::Vec<ValueInfoProto>,
    /// Type information for intermediate values.
    #[prost(message, repeated, tag = "13")]
    pub value_info: ::prost::alloc::vec::Vec<ValueInfoProto>,
    /// Quantization annotations.
    #[prost(message, repeated, tag = "14")]
    pub quantization_annotation: ::prost::alloc::vec::Vec<TensorAnnotation>,
    /// Named metadata.
    #[prost(message, repeated, tag = "16")]
    pub metadata_props: ::prost::alloc::vec::Vec<StringStringEntryProto>,
}

/// A dense tensor: shape, element type and data (typed field, `raw_data` or external).
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct TensorProto {
    /// Shape.
    #[prost(int64, repeated, packed = "false", tag = "1")]
    pub dims: ::prost::alloc::vec::Vec<i64>,
    /// Element type, a [`tensor_proto::DataType`] code.
    #[prost(int32, optional, tag = "2")]
    pub data_type: ::core::option::Option<i32>,
    /// Chunk of a larger tensor (deprecated in practice).
    #[prost(message, optional, tag = "3")]
    pub segment: ::core::option::Option<tensor_proto::Segment>,
    /// FLOAT / COMPLEX64 data.
    #[prost(float, repeated, tag = "4")]
    pub float_data: ::prost::alloc::vec::Vec<f32>,
    /// INT32/INT16/INT8/UINT16/UINT8/BOOL/FLOAT16/BFLOAT16/FLOAT8*/4-bit/2-bit data.
    #[prost(int32, repeated, tag = "5")]
    pub int32_data: ::prost::alloc::vec::Vec<i32>,
    /// STRING data.
    #[prost(bytes = "vec", repeated, tag = "6")]
    pub string_data: ::prost::alloc::vec::Vec<::prost::alloc::vec::Vec<u8>>,
    /// INT64 data.
    #[prost(int64, repeated, tag = "7")]
    pub int64_data: ::prost::alloc::vec::Vec<i64>,
    /// Tensor name.
    #[prost(string, optional, tag = "8")]
    pub name: ::core::option::Option<::prost::alloc::string::String>,
    /// Human-readable documentation.
    #[prost(string, optional, tag = "12")]
    pub doc_string: ::core::option::Option<::prost::alloc::string::String>,
    /// Little-endian packed element bytes (any type but STRING).
    #[prost(bytes = "vec", optional, tag = "9")]
    pub raw_data: ::core::option::Option<::prost::alloc::vec::Vec<u8>>,
    /// External data location keys (`location`, `offset`, `length`, `checksum`).
    #[prost(message, repeated, tag = "13")]
    pub external_data: ::prost::alloc::vec::Vec<StringStringEntryProto>,
    /// Whether the data is stored externally.
    #[prost(enumeration = "tensor_proto::DataLocation", optional, tag = "14")]
    pub data_location: ::core::option::Option<i32>,
    /// DOUBLE / COMPLEX128 data.
    #[prost(double, repeated, tag = "10")]
    pub double_data: ::prost::alloc::vec::Vec<f64>,
    /// UINT32 / UINT64 data.
    #[prost(uint64, repeated, tag = "11")]
    pub uint64_data: ::prost::alloc::vec::Vec<u64>,
    /// Named metadata.
    #[prost(message, repeated, tag = "16")]
    pub metadata_props: ::prost::alloc::vec::Vec<StringStringEntryProto>,
}

/// Nested types of [`TensorProto`].
pub mod tensor_proto {
    /// Range `[begin, end)` of a larger tensor held by this chunk.
    #[derive(Clone, Copy, PartialEq, Eq, Hash, ::prost::Message)]
    pub struct Segment {
        /// First element index.
        #[prost(int64, optional, tag = "1")]
        pub begin: ::core::option::Option<i64>,
        /// One past the last element index.
        #[prost(int64, optional, tag = "2")]
        pub end: ::core::option::Option<i64>,
    }

    /// Tensor element type codes.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ::prost::Enumeration)]
    #[repr(i32)]
    pub enum DataType {
        /// Unset.
        Undefined = 0,
        /// `f32`.
        Float = 1,
        /// `u8`.
        Uint8 = 2,
        /// `i8`.
        Int8 = 3,
        /// `u16`.
        Uint16 = 4,
        /// `i16`.
        Int16 = 5,
        /// `i32`.
        Int32 = 6,
        /// `i64`.
        Int64 = 7,
        /// UTF-8 string.
        String = 8,
        /// `bool`.
        Bool = 9,
        /// IEEE half precision.
        Float16 = 10,
        /// `f64`.
        Double = 11,
        /// `u32`.
        Uint32 = 12,
        /// `u64`.
        Uint64 = 13,
        /// Complex with `f32` parts.
        Complex64 = 14,
        /// Complex with `f64` parts.
        Complex128 = 15,
        /// Brain float 16.
        Bfloat16 = 16,
        /// 8-bit float E4M3, finite (NaN, no inf).
        Float8e4m3fn = 17,
        /// 8-bit float E4M3, finite, no negative zero.
        Float8e4m3fnuz = 18,
        /// 8-bit float E5M2 (IEEE-like).
        Float8e5m2 = 19,
        /// 8-bit float E5M2, finite, no negative zero.
        Float8e5m2fnuz = 20,
        /// 4-bit unsigned integer.
        Uint4 = 21,
        /// 4-bit signed integer.
        Int4 = 22,
        /// 4-bit float E2M1.
        Float4e2m1 = 23,
        /// 8-bit exponent-only float E8M0 (scales).
        Float8e8m0 = 24,
        /// 2-bit unsigned integer.
        Uint2 = 25,
        /// 2-bit signed integer.
        Int2 = 26,
    }

    /// Where a tensor's data lives.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ::prost::Enumeration)]
    #[repr(i32)]
    pub enum DataLocation {
        /// In this message (typed fields or `raw_data`).
        Default = 0,
        /// In an external file described by `external_data`.
        External = 1,
    }

    impl DataType {
        /// Bits per element; `None` for `Undefined` and `String`.
        pub fn bit_width(self) -> Option<usize> {
            use DataType::*;
            Some(match self {
                Undefined | String => return None,
                Int2 | Uint2 => 2,
                Int4 | Uint4 | Float4e2m1 => 4,
                Bool | Int8 | Uint8 | Float8e4m3fn | Float8e4m3fnuz | Float8e5m2
                | Float8e5m2fnuz | Float8e8m0 => 8,
                Int16 | Uint16 | Float16 | Bfloat16 => 16,
                Float | Int32 | Uint32 => 32,
                Double | Int64 | Uint64 | Complex64 => 64,
                Complex128 => 128,
            })
        }
    }
}

/// A sparse tensor in COO form.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct SparseTensorProto {
    /// Non-default values: a 1-D tensor of length NNZ (its name names the sparse tensor).
    #[prost(message, optional, tag = "1")]
    pub values: ::core::option::Option<TensorProto>,
    /// INT64 indices: shape `[NNZ, rank]` or linearized `[NNZ]`.
    #[prost(message, optional, tag = "2")]
    pub indices: ::core::option::Option<TensorProto>,
    /// Dense shape.
    #[prost(int64, repeated, packed = "false", tag = "3")]
    pub dims: ::prost::alloc::vec::Vec<i64>,
}

/// A tensor shape: a list of (possibly symbolic or unknown) dimensions.
#[derive(Clone, PartialEq, Eq, Hash, ::prost::Message)]
pub struct TensorShapeProto {
    /// Dimensions, outermost first.
    #[prost(message, repeated, tag = "1")]
    pub dim: ::prost::alloc::vec::Vec<tensor_shape_proto::Dimension>,
}

/// Nested types of [`TensorShapeProto`].
pub mod tensor_shape_proto {
    /// One dimension: concrete, symbolic, or unknown (no value).
    #[derive(Clone, PartialEq, Eq, Hash, ::prost::Message)]
    pub struct Dimension {
        /// Size of the dimension, if known.
        #[prost(oneof = "dimension::Value", tags = "1, 2")]
        pub value: ::core::option::Option<dimension::Value>,
        /// Standard denotation (e.g. `DATA_BATCH`).
        #[prost(string, optional, tag = "3")]
        pub denotation: ::core::option::Option<::prost::alloc::string::String>,
    }

    /// Nested types of [`Dimension`].
    pub mod dimension {
        /// Dimension size: concrete or symbolic.
        #[derive(Clone, PartialEq, Eq, Hash, ::prost::Oneof)]
        pub enum Value {
            /// Concrete size.
            #[prost(int64, tag = "1")]
            DimValue(i64),
            /// Symbolic size name.
            #[prost(string, tag = "2")]
            DimParam(::prost::alloc::string::String),
        }
    }
}

/// The type of a value: tensor, sequence, map, optional, sparse tensor or opaque.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct TypeProto {
    /// The kind of type.
    #[prost(oneof = "type_proto::Value", tags = "1, 4, 5, 9, 8, 7")]
    pub value: ::core::option::Option<type_proto::Value>,
    /// Standard denotation (e.g. `TENSOR`, `IMAGE`).
    #[prost(string, optional, tag = "6")]
    pub denotation: ::core::option::Option<::prost::alloc::string::String>,
}

/// Nested types of [`TypeProto`].
pub mod type_proto {
    /// Dense tensor type.
    #[derive(Clone, PartialEq, Eq, Hash, ::prost::Message)]
    pub struct Tensor {
        /// Element type, a [`DataType`](super::tensor_proto::DataType) code.
        #[prost(int32, optional, tag = "1")]
        pub elem_type: ::core::option::Option<i32>,
        /// Shape; absent means unknown rank.
        #[prost(message, optional, tag = "2")]
        pub shape: ::core::option::Option<super::TensorShapeProto>,
    }

    /// Sequence type.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Sequence {
        /// Element type.
        #[prost(message, optional, boxed, tag = "1")]
        pub elem_type: ::core::option::Option<::prost::alloc::boxed::Box<super::TypeProto>>,
    }

    /// Map type.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Map {
        /// Key element type, a [`DataType`](super::tensor_proto::DataType) code.
        #[prost(int32, optional, tag = "1")]
        pub key_type: ::core::option::Option<i32>,
        /// Value type.
        #[prost(message, optional, boxed, tag = "2")]
        pub value_type: ::core::option::Option<::prost::alloc::boxed::Box<super::TypeProto>>,
    }

    /// Optional type.
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Optional {
        /// Wrapped type.
        #[prost(message, optional, boxed, tag = "1")]
        pub elem_type: ::core::option::Option<::prost::alloc::boxed::Box<super::TypeProto>>,
    }

    /// Sparse tensor type.
    #[derive(Clone, PartialEq, Eq, Hash, ::prost::Message)]
    pub struct SparseTensor {
        /// Element type, a [`DataType`](super::tensor_proto::DataType) code.
        #[prost(int32, optional, tag = "1")]
        pub elem_type: ::core::option::Option<i32>,
        /// Dense shape.
        #[prost(message, optional, tag = "2")]
        pub shape: ::core::option::Option<super::TensorShapeProto>,
    }

    /// Opaque type (onnx-ml).
    #[derive(Clone, PartialEq, Eq, Hash, ::prost::Message)]
    pub struct Opaque {
        /// Domain of the type.
        #[prost(string, optional, tag = "1")]
        pub domain: ::core::option::Option<::prost::alloc::string::String>,
        /// Name of the type.
        #[prost(string, optional, tag = "2")]
        pub name: ::core::option::Option<::prost::alloc::string::String>,
    }

    /// The kind of a [`TypeProto`](super::TypeProto).
    #[derive(Clone, PartialEq, ::prost::Oneof)]
    pub enum Value {
        /// Dense tensor.
        #[prost(message, tag = "1")]
        TensorType(Tensor),
        /// Sequence.
        #[prost(message, tag = "4")]
        SequenceType(Sequence),
        /// Map.
        #[prost(message, tag = "5")]
        MapType(Map),
        /// Optional.
        #[prost(message, tag = "9")]
        OptionalType(Optional),
        /// Sparse tensor.
        #[prost(message, tag = "8")]
        SparseTensorType(SparseTensor),
        /// Opaque (onnx-ml).
        #[prost(message, tag = "7")]
        OpaqueType(Opaque),
    }
}

/// An operator set: domain plus version.
#[derive(Clone, PartialEq, Eq, Hash, ::prost::Message)]
pub struct OperatorSetIdProto {
    /// Domain (empty = `ai.onnx`).
    #[prost(string, optional, tag = "1")]
    pub domain: ::core::option::Option<::prost::alloc::string::String>,
    /// Opset version.
    #[prost(int64, optional, tag = "2")]
    pub version: ::core::option::Option<i64>,
}

/// Lifecycle status of an operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ::prost::Enumeration)]
#[repr(i32)]
pub enum OperatorStatus {
    /// Experimental.
    Experimental = 0,
    /// Stable.
    Stable = 1,
}

/// A model-local function: a named, reusable subgraph with formal inputs/outputs/attributes.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct FunctionProto {
    /// Function name (operator type in its domain).
    #[prost(string, optional, tag = "1")]
    pub name: ::core::option::Option<::prost::alloc::string::String>,
    /// Formal input names.
    #[prost(string, repeated, tag = "4")]
    pub input: ::prost::alloc::vec::Vec<::prost::alloc::string::String>,
    /// Formal output names.
    #[prost(string, repeated, tag = "5")]
    pub output: ::prost::alloc::vec::Vec<::prost::alloc::string::String>,
    /// Attribute names without defaults.
    #[prost(string, repeated, tag = "6")]
    pub attribute: ::prost::alloc::vec::Vec<::prost::alloc::string::String>,
    /// Attributes with default values.
    #[prost(message, repeated, tag = "11")]
    pub attribute_proto: ::prost::alloc::vec::Vec<AttributeProto>,
    /// Body nodes.
    #[prost(message, repeated, tag = "7")]
    pub node: ::prost::alloc::vec::Vec<NodeProto>,
    /// Human-readable documentation.
    #[prost(string, optional, tag = "8")]
    pub doc_string: ::core::option::Option<::prost::alloc::string::String>,
    /// Operator sets the body uses.
    #[prost(message, repeated, tag = "9")]
    pub opset_import: ::prost::alloc::vec::Vec<OperatorSetIdProto>,
    /// Function domain.
    #[prost(string, optional, tag = "10")]
    pub domain: ::core::option::Option<::prost::alloc::string::String>,
    /// Overload identifier.
    #[prost(string, optional, tag = "13")]
    pub overload: ::core::option::Option<::prost::alloc::string::String>,
    /// Type information for values in the body.
    #[prost(message, repeated, tag = "12")]
    pub value_info: ::prost::alloc::vec::Vec<ValueInfoProto>,
    /// Named metadata.
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: ::prost::alloc::vec::Vec<StringStringEntryProto>,
}
