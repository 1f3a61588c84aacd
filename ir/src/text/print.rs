//! The printer.

use super::{
    encode_base64_into, is_plain_ident, is_plain_name, write_quoted, FORMAT_VERSION,
    LITERAL_MAX_ELEMENTS, MAX_LITERAL_RANK,
};
use crate::attr::Attr;
use crate::dim::{Atom, Dim, Poly};
use crate::graph::{Graph, Node, ValueId};
use crate::tensor::Tensor;
use crate::types::TensorType;
use std::collections::HashSet;

/// Writes a graph in kiln's text format (see [the module docs](super)).
///
/// Nodes come in [`Graph::topo_order`]; a graph with a cycle, which has no
/// such order, is printed in node insertion order so that it can still be
/// inspected (parsing it back gives the same cyclic graph for the verifier
/// to reject).
pub fn print_graph(graph: &Graph) -> String {
    let weight_bytes: usize = graph.initializers().map(|(_, t)| t.storage_bytes()).sum();
    let mut out =
        String::with_capacity(weight_bytes.div_ceil(3) * 4 + 160 * (graph.node_count() + 16));
    out.push_str("kiln ");
    out.push_str(FORMAT_VERSION);
    out.push_str("\ngraph ");
    write_quoted(&graph.name, &mut out);
    if !graph.opset_imports.is_empty() {
        out.push_str(" opset(");
        for (i, (domain, version)) in graph.opset_imports.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            write_quoted(domain, &mut out);
            out.push_str(&format!(" = {version}"));
        }
        out.push(')');
    }
    out.push_str(" {\n");

    let mut section = Section::default();
    let inputs: HashSet<ValueId> = graph.inputs().iter().copied().collect();
    for &v in graph.inputs() {
        section.start(&mut out, 0);
        let value = graph.value(v);
        out.push_str("  input ");
        write_value_ref(&value.name, &mut out);
        if let Some(ty) = &value.ty {
            out.push_str(": ");
            write_type(ty, &mut out);
        }
        if let Some(data) = &value.initializer {
            out.push_str(" = ");
            write_tensor(data, &mut out);
        }
        out.push('\n');
    }
    for (v, data) in graph.initializers() {
        if inputs.contains(&v) {
            continue;
        }
        section.start(&mut out, 1);
        out.push_str("  init ");
        write_value_ref(&graph.value(v).name, &mut out);
        out.push_str(": ");
        write_type(&TensorType::fixed(data.dtype(), data.shape()), &mut out);
        out.push_str(" = ");
        write_data(data, &mut out);
        out.push('\n');
    }
    let order = graph.topo_order().unwrap_or_else(|_| graph.node_ids());
    for id in order {
        section.start(&mut out, 2);
        write_node(graph, graph.node(id), &mut out);
    }
    for &v in graph.outputs() {
        section.start(&mut out, 3);
        out.push_str("  output ");
        write_value_ref(&graph.value(v).name, &mut out);
        out.push('\n');
    }
    out.push_str("}\n");
    out
}

/// Puts a blank line between the inputs, initializers, nodes and outputs.
#[derive(Default)]
struct Section {
    current: Option<u8>,
}

impl Section {
    fn start(&mut self, out: &mut String, section: u8) {
        if self.current.is_some_and(|c| c != section) {
            out.push('\n');
        }
        self.current = Some(section);
    }
}

fn write_node(graph: &Graph, node: &Node, out: &mut String) {
    out.push_str("  ");
    if node.outputs.is_empty() {
        out.push_str("()");
    }
    for (i, slot) in node.outputs.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        match slot {
            None => out.push('_'),
            Some(v) => {
                let value = graph.value(*v);
                write_value_ref(&value.name, out);
                if let Some(ty) = &value.ty {
                    out.push_str(": ");
                    write_type(ty, out);
                }
            }
        }
    }
    out.push_str(" = ");
    let domain = node.op.domain();
    if !domain.is_empty() {
        write_ident_or_quoted(domain, out);
        out.push_str("::");
    }
    out.push_str(node.op.name());
    out.push('(');
    for (i, slot) in node.inputs.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        match slot {
            None => out.push('_'),
            Some(v) => write_value_ref(&graph.value(*v).name, out),
        }
    }
    out.push(')');
    let attrs = node.op.attrs();
    if !attrs.is_empty() {
        out.push_str(" {");
        for (i, (name, attr)) in attrs.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            write_ident_or_quoted(name, out);
            out.push_str(" = ");
            write_attr(attr, out);
        }
        out.push('}');
    }
    out.push_str(" @");
    write_name(&node.name, out);
    out.push('\n');
}

fn write_name(name: &str, out: &mut String) {
    if is_plain_name(name) {
        out.push_str(name);
    } else {
        write_quoted(name, out);
    }
}

fn write_value_ref(name: &str, out: &mut String) {
    out.push('%');
    write_name(name, out);
}

fn write_ident_or_quoted(s: &str, out: &mut String) {
    if is_plain_ident(s) {
        out.push_str(s);
    } else {
        write_quoted(s, out);
    }
}

fn write_type(ty: &TensorType, out: &mut String) {
    out.push_str(ty.dtype.name());
    out.push('[');
    for (i, d) in ty.shape.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_dim(d, out);
    }
    out.push(']');
}

/// A dim in `Dim`'s own notation when that reads back as the same dim,
/// which is the case unless a symbol's name is not an identifier (ONNX
/// `dim_param`s can be any string) or a division atom has a coefficient.
fn write_dim(d: &Dim, out: &mut String) {
    let shown = d.to_string();
    if Dim::parse(&shown).as_ref() == Ok(d) {
        out.push_str(&shown);
    } else {
        write_poly_exact(&d.to_poly(), out);
    }
}

/// A polynomial with quoted symbol names where needed and every division
/// atom parenthesized, so that it parses back to itself.
fn write_poly_exact(p: &Poly, out: &mut String) {
    let terms: Vec<_> = p
        .terms()
        .filter(|(m, _)| !m.is_empty())
        .chain(p.terms().filter(|(m, _)| m.is_empty()))
        .collect();
    if terms.is_empty() {
        out.push('0');
    }
    for (i, (monomial, coefficient)) in terms.into_iter().enumerate() {
        if coefficient < 0 {
            out.push('-');
        } else if i > 0 {
            out.push('+');
        }
        let magnitude = coefficient.unsigned_abs();
        if monomial.is_empty() {
            out.push_str(&magnitude.to_string());
            continue;
        }
        if magnitude != 1 {
            out.push_str(&format!("{magnitude}*"));
        }
        for (j, atom) in monomial.iter().enumerate() {
            if j > 0 {
                out.push('*');
            }
            match atom {
                Atom::Var(name) => write_ident_or_quoted(name, out),
                Atom::Div(num, den) => {
                    out.push_str("((");
                    write_poly_exact(num, out);
                    out.push_str(")/(");
                    write_poly_exact(den, out);
                    out.push_str("))");
                }
            }
        }
    }
}

/// A tensor with its own type: `i64[2] [1, 2]`.
fn write_tensor(t: &Tensor, out: &mut String) {
    write_type(&TensorType::fixed(t.dtype(), t.shape()), out);
    out.push(' ');
    write_data(t, out);
}

/// True when the tensor is small and every value has an exact decimal form.
fn prints_as_literal(t: &Tensor) -> bool {
    t.len() <= LITERAL_MAX_ELEMENTS
        && t.shape().len() <= MAX_LITERAL_RANK
        && (!t.dtype().is_float() || t.to_f64s().iter().all(|v| v.is_finite()))
}

fn write_data(t: &Tensor, out: &mut String) {
    if prints_as_literal(t) {
        let elements = literal_elements(t);
        let mut next = elements.iter();
        write_nested(t.shape(), &mut next, out);
    } else {
        out.push_str("base64 \"");
        raw_le_pieces(t, &mut |piece| encode_base64_into(piece, out));
        out.push('"');
    }
}

/// Elements per piece in [`raw_le_pieces`]; a multiple of 3, so every
/// piece but the last is a whole number of base64 groups.
const ELEMENTS_PER_PIECE: usize = 3 * 4096;

/// Feeds the bytes of [`Tensor::to_raw_le`] to `sink` a piece at a time,
/// so that printing a large weight does not first copy all of it. Each
/// piece but the last has a length divisible by 3.
fn raw_le_pieces(t: &Tensor, sink: &mut dyn FnMut(&[u8])) {
    macro_rules! pieces {
        ($a:expr, $width:expr) => {{
            let mut buf = Vec::with_capacity(ELEMENTS_PER_PIECE * $width);
            for v in $a.iter() {
                buf.extend_from_slice(&v.to_le_bytes());
                if buf.len() == buf.capacity() {
                    sink(&buf);
                    buf.clear();
                }
            }
            if !buf.is_empty() {
                sink(&buf);
            }
        }};
    }
    match t {
        Tensor::F32(a) => pieces!(a, 4),
        Tensor::F64(a) => pieces!(a, 8),
        Tensor::F16(a) => pieces!(a, 2),
        Tensor::BF16(a) => pieces!(a, 2),
        Tensor::I8(a) => pieces!(a, 1),
        Tensor::U8(a) => pieces!(a, 1),
        Tensor::I16(a) => pieces!(a, 2),
        Tensor::I32(a) => pieces!(a, 4),
        Tensor::I64(a) => pieces!(a, 8),
        // Booleans and packed nibbles have their own byte layouts; they are
        // rarely large, so the one-shot conversion is fine.
        Tensor::Bool(_) | Tensor::I4(_) | Tensor::U4(_) => sink(&t.to_raw_le()),
    }
}

/// Elements in row-major order, each in the form the parser reads back
/// exactly: floats in Rust's shortest round-trip notation (f16 and bf16
/// through f32, which holds them exactly).
fn literal_elements(t: &Tensor) -> Vec<String> {
    match t {
        Tensor::F32(a) => a.iter().map(|v| format!("{v:?}")).collect(),
        Tensor::F64(a) => a.iter().map(|v| format!("{v:?}")).collect(),
        Tensor::F16(a) => a.iter().map(|v| format!("{:?}", v.to_f32())).collect(),
        Tensor::BF16(a) => a.iter().map(|v| format!("{:?}", v.to_f32())).collect(),
        Tensor::Bool(a) => a
            .iter()
            .map(|&v| if v { "true" } else { "false" }.to_string())
            .collect(),
        _ => t.to_i64s().iter().map(|v| v.to_string()).collect(),
    }
}

fn write_nested<'e>(
    shape: &[usize],
    next: &mut impl Iterator<Item = &'e String>,
    out: &mut String,
) {
    match shape.split_first() {
        None => out.push_str(next.next().map_or("?", |s| s.as_str())),
        Some((&len, rest)) => {
            out.push('[');
            for i in 0..len {
                if i > 0 {
                    out.push_str(", ");
                }
                write_nested(rest, next, out);
            }
            out.push(']');
        }
    }
}

pub(super) fn write_attr(attr: &Attr, out: &mut String) {
    match attr {
        Attr::Int(v) => out.push_str(&v.to_string()),
        Attr::Float(v) => write_f32(*v, out),
        Attr::String(s) => write_quoted(s, out),
        Attr::Ints(v) if v.is_empty() => out.push_str("ints[]"),
        Attr::Ints(v) => {
            out.push('[');
            for (i, x) in v.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&x.to_string());
            }
            out.push(']');
        }
        Attr::Floats(v) if v.is_empty() => out.push_str("floats[]"),
        Attr::Floats(v) => {
            out.push('[');
            for (i, x) in v.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_f32(*x, out);
            }
            out.push(']');
        }
        Attr::Tensor(t) => write_tensor(t, out),
        Attr::DType(d) => out.push_str(d.name()),
    }
}

/// A float attribute: shortest round-trip decimal (always with a `.` or an
/// exponent, so it never reads as an int), `inf`, `-inf`, `nan`, or
/// `nan(0x...)` with the exact bits of any other NaN.
fn write_f32(v: f32, out: &mut String) {
    if !v.is_nan() {
        out.push_str(&format!("{v:?}"));
    } else if v.to_bits() == f32::NAN.to_bits() {
        out.push_str("nan");
    } else {
        out.push_str(&format!("nan(0x{:08x})", v.to_bits()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_never_look_like_ints() {
        let mut s = String::new();
        for v in [
            1.0f32,
            1e-5,
            -0.0,
            1e30,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::from_bits(0x7fc0_0001),
        ] {
            write_f32(v, &mut s);
            s.push(' ');
        }
        assert_eq!(s, "1.0 1e-5 -0.0 1e30 inf -inf nan nan(0x7fc00001) ");
    }

    #[test]
    fn dims_with_odd_symbols_are_quoted() {
        let mut s = String::new();
        let odd = Dim::sym("batch size")
            .mul(&Dim::Fixed(2))
            .add(&Dim::Fixed(1));
        write_dim(&odd, &mut s);
        assert_eq!(s, "2*\"batch size\"+1");
        s.clear();
        write_dim(&Dim::sym("seq").add(&Dim::Fixed(1)), &mut s);
        assert_eq!(s, "seq+1");
    }

    #[test]
    fn pieces_concatenate_to_the_raw_bytes() {
        for dtype in crate::DType::ALL {
            let n = ELEMENTS_PER_PIECE * 2 + 7;
            let values: Vec<i64> = (0..n as i64).map(|i| i * 7919 % 251 - 100).collect();
            let t = Tensor::from_i64s(dtype, &[n], &values);
            let mut joined = Vec::new();
            let mut lengths = Vec::new();
            raw_le_pieces(&t, &mut |p| {
                joined.extend_from_slice(p);
                lengths.push(p.len());
            });
            assert_eq!(joined, t.to_raw_le(), "{dtype}");
            assert!(
                lengths[..lengths.len() - 1].iter().all(|l| l % 3 == 0),
                "{dtype}: {lengths:?}"
            );
        }
    }

    #[test]
    fn nested_literals_follow_the_shape() {
        let mut s = String::new();
        write_data(
            &Tensor::from_i64s(crate::DType::I4, &[2, 2], &[1, -2, 3, -8]),
            &mut s,
        );
        assert_eq!(s, "[[1, -2], [3, -8]]");
        s.clear();
        write_data(&Tensor::zeros(crate::DType::F32, &[2, 0]), &mut s);
        assert_eq!(s, "[[], []]");
    }
}
