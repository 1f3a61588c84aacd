//! How ONNX ops changed form across opsets, shared by the importer (which
//! turns old forms into the IR's, the newest opset's) and the exporter (which
//! writes each op in the form of the opset it targets).
//!
//! Only signature changes that matter to kiln's ops are listed: attributes
//! that later became inputs, and attributes added after an op's first
//! version. Behavioural changes that need more than renaming (Softmax's 2-D
//! coercion before opset 13, legacy broadcasting before 7) are handled where
//! they are used.

/// Newest default-domain opset kiln reads and writes (ONNX 1.22).
pub const MAX_OPSET: i64 = 27;

/// Newest ONNX IR version kiln reads (ONNX 1.22).
pub const MAX_IR_VERSION: i64 = 13;

/// Oldest IR version kiln reads: the first with `opset_import`.
pub const MIN_IR_VERSION: i64 = 3;

/// How a moved attribute's value becomes an input tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MovedKind {
    /// INTS → 1-D i64 tensor.
    Ints,
    /// INT → 1-D i64 tensor of one element (TopK's `k`).
    IntAsVector,
    /// FLOAT → scalar of the op's first input's dtype (Clip's bounds, Pad's value).
    ScalarLikeInput,
    /// FLOAT → f32 scalar (Dropout's ratio, whose type is independent of the data's).
    F32Scalar,
}

/// An attribute that became an input in a later opset.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MovedAttr {
    /// ONNX op type.
    pub op: &'static str,
    /// Attribute name in the old form.
    pub attr: &'static str,
    /// Input slot in the new form.
    pub slot: usize,
    /// First opset where the value is an input.
    pub input_since: i64,
    /// Conversion between the two.
    pub kind: MovedKind,
}

const fn moved(op: &'static str, attr: &'static str, slot: usize, input_since: i64, kind: MovedKind) -> MovedAttr {
    MovedAttr { op, attr, slot, input_since, kind }
}

/// Attributes that became inputs. Reduce `axes` is deliberately absent: the
/// IR keeps it as an attribute when the model gives it as one.
pub(crate) const MOVED_ATTRS: &[MovedAttr] = &[
    moved("Squeeze", "axes", 1, 13, MovedKind::Ints),
    moved("Unsqueeze", "axes", 1, 13, MovedKind::Ints),
    moved("Split", "split", 1, 13, MovedKind::Ints),
    moved("Reshape", "shape", 1, 5, MovedKind::Ints),
    moved("TopK", "k", 1, 10, MovedKind::IntAsVector),
    moved("Slice", "starts", 1, 10, MovedKind::Ints),
    moved("Slice", "ends", 2, 10, MovedKind::Ints),
    moved("Slice", "axes", 3, 10, MovedKind::Ints),
    moved("Clip", "min", 1, 11, MovedKind::ScalarLikeInput),
    moved("Clip", "max", 2, 11, MovedKind::ScalarLikeInput),
    moved("Pad", "pads", 1, 11, MovedKind::Ints),
    moved("Pad", "value", 2, 11, MovedKind::ScalarLikeInput),
    moved("Dropout", "ratio", 1, 12, MovedKind::F32Scalar),
];

/// The moved attributes of one op type.
pub(crate) fn moved_attrs(op_type: &str) -> impl Iterator<Item = &'static MovedAttr> + '_ {
    MOVED_ATTRS.iter().filter(move |m| m.op == op_type)
}

/// Attributes added after an op's first version: (op, attribute, opset).
const ATTR_SINCE: &[(&str, &str, i64)] = &[
    ("ArgMax", "select_last_index", 12),
    ("ArgMin", "select_last_index", 12),
    ("TopK", "largest", 11),
    ("TopK", "sorted", 11),
    ("Shape", "start", 15),
    ("Shape", "end", 15),
    ("Reshape", "allowzero", 14),
    ("Split", "num_outputs", 18),
    ("ScatterND", "reduction", 16),
    ("GatherND", "batch_dims", 12),
    ("Cast", "saturate", 19),
    ("CastLike", "saturate", 19),
    ("QuantizeLinear", "axis", 13),
    ("QuantizeLinear", "saturate", 19),
    ("QuantizeLinear", "block_size", 21),
    ("QuantizeLinear", "output_dtype", 21),
    ("DequantizeLinear", "axis", 13),
    ("DequantizeLinear", "block_size", 21),
    ("DequantizeLinear", "output_dtype", 23),
    ("Dropout", "seed", 12),
];

/// The first opset where `op_type` has attribute `attr`, when that is later
/// than the op's first version.
pub(crate) fn attr_since(op_type: &str, attr: &str) -> Option<i64> {
    if attr == "noop_with_empty_axes" && op_type.starts_with("Reduce") {
        return Some(reduce_axes_input_since(op_type));
    }
    ATTR_SINCE.iter().find(|(o, a, _)| *o == op_type && *a == attr).map(|&(_, _, v)| v)
}

/// The first opset where a Reduce op takes `axes` as an input.
pub(crate) fn reduce_axes_input_since(op_type: &str) -> i64 {
    if op_type == "ReduceSum" {
        13
    } else {
        18
    }
}

/// Binary ops whose opsets before 7 used legacy `broadcast`/`axis` attributes.
pub(crate) const LEGACY_BROADCAST_OPS: &[&str] =
    &["Add", "Sub", "Mul", "Div", "Pow", "Equal", "Less", "Greater", "And", "Or", "Xor"];

/// Old forms kiln does not convert: (op, first opset with a convertible
/// form, what changed).
pub(crate) const UNCONVERTED_FORMS: &[(&str, i64, &str)] = &[
    ("Tile", 6, "it took `tiles` and `axis` inputs instead of `repeats`"),
    ("Cast", 6, "its `to` attribute was a string"),
    ("Pad", 2, "it used the `paddings` attribute"),
];

/// The IR version to write for a default-domain opset: the one ONNX 1.22's
/// version table pairs with it, and at least 10 (the first with 4-bit
/// integer types), which every runtime that reads opset 21 accepts.
pub(crate) fn ir_version_for_opset(opset: i64) -> i64 {
    match opset {
        ..=22 => 10,
        23 => 11,
        24 => 12,
        _ => 13,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_name_distinct_slots() {
        for m in MOVED_ATTRS {
            let same_slot = moved_attrs(m.op).filter(|o| o.slot == m.slot).count();
            assert_eq!(same_slot, 1, "{} slot {}", m.op, m.slot);
        }
        assert_eq!(attr_since("ReduceSum", "noop_with_empty_axes"), Some(13));
        assert_eq!(attr_since("ReduceMean", "noop_with_empty_axes"), Some(18));
        assert_eq!(attr_since("Softmax", "axis"), None);
    }
}
