//! Type inference for one op from its input types, reusing kiln-ir's rules.
//!
//! `kiln_ir::infer` works on graphs: [`kiln_ir::infer_node`] reads the
//! types of a node's inputs from the graph and the contents of small integer
//! inputs from their producers. The e-graph has no graph, so [`infer_op`]
//! builds a one-node graph whose inputs carry the given types, with the
//! inputs whose constant value is known as initializers (so a Reshape whose
//! shape is a known constant gets its exact result shape), and asks
//! `infer_node`. What this cannot pass on is the symbolic contents of a
//! non-constant shape tensor (`[batch, seq*12]` computed by `Shape`); the
//! result then has fresh `unk__N` dims where the original graph's inference
//! knew better. The analysis keeps the more precise of two types when
//! classes merge, so this only loses precision on nodes that rules create
//! and nothing else describes. A type-level entry point in kiln-ir
//! (`infer_op(op, input types, input contents)`) would remove the detour.
//!
//! Fresh symbols from the one-node graph are renamed to fresh symbols of
//! the whole e-graph, so two unrelated unknown dims never compare equal.

use kiln_ir::dim::{Atom, Dim, Poly};
use kiln_ir::error::Result;
use kiln_ir::graph::Graph;
use kiln_ir::infer::FRESH_PREFIX;
use kiln_ir::op::Op;
use kiln_ir::tensor::Tensor;
use kiln_ir::types::TensorType;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// One input slot of the op being inferred.
#[derive(Clone, Copy, Debug)]
pub enum InputSpec<'a> {
    /// An omitted optional input.
    Absent,
    /// A value of this type whose contents are not known.
    Typed(&'a TensorType),
    /// A value with known contents.
    Known(&'a Tensor),
}

/// Counter for fresh symbols, shared by every inference of one e-graph.
#[derive(Clone, Debug, Default)]
pub struct FreshSymbols {
    next: u64,
}

impl FreshSymbols {
    /// Starts after the largest `unk__N` in `types`, so fresh names never
    /// collide with the source graph's.
    pub fn after<'a>(types: impl IntoIterator<Item = &'a TensorType>) -> FreshSymbols {
        let mut next = 0;
        for t in types {
            for s in symbols_of(t) {
                if let Some(n) = fresh_number(&s) {
                    next = next.max(n + 1);
                }
            }
        }
        FreshSymbols { next }
    }

    fn take(&mut self) -> String {
        let s = format!("{FRESH_PREFIX}{}", self.next);
        self.next += 1;
        s
    }
}

fn fresh_number(s: &str) -> Option<u64> {
    s.strip_prefix(FRESH_PREFIX).and_then(|n| n.parse().ok())
}

fn symbols_of(t: &TensorType) -> BTreeSet<Arc<str>> {
    let mut out = BTreeSet::new();
    for d in &t.shape {
        if let Dim::Sym(p) = d {
            out.extend(p.symbols());
        }
    }
    out
}

/// The output types of `op` applied to `inputs`, with `num_outputs` output
/// slots (all present). Errors are inference's, naming the op.
pub fn infer_op(
    op: &Op,
    inputs: &[InputSpec],
    num_outputs: usize,
    fresh: &mut FreshSymbols,
) -> Result<Vec<TensorType>> {
    let mut g = Graph::new("infer_op");
    let mut ids = Vec::with_capacity(inputs.len());
    let mut input_symbols = BTreeSet::new();
    for (slot, spec) in inputs.iter().enumerate() {
        let name = format!("in{slot}");
        ids.push(match spec {
            InputSpec::Absent => None,
            InputSpec::Typed(t) => {
                input_symbols.extend(symbols_of(t));
                Some(g.add_input(name, (*t).clone())?)
            }
            InputSpec::Known(t) => Some(g.add_initializer(name, (*t).clone())?),
        });
    }
    let names: Vec<String> = (0..num_outputs).map(|i| format!("out{i}")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let node = g.add_node(op.name(), op.clone(), ids, &name_refs)?;
    let types = kiln_ir::infer_node(&g, node)?;
    // Symbols the one-node graph made up get e-graph-wide fresh names.
    let mut renames: BTreeMap<Arc<str>, String> = BTreeMap::new();
    let mut out = Vec::with_capacity(types.len());
    for (slot, t) in types.into_iter().enumerate() {
        let t = t.ok_or_else(|| {
            kiln_ir::IrError::node(
                op.name(),
                op.name(),
                format!("inference gave no type for output {slot}"),
            )
        })?;
        for s in symbols_of(&t) {
            if fresh_number(&s).is_some()
                && !input_symbols.contains(&s)
                && !renames.contains_key(&s)
            {
                let new = fresh.take();
                renames.insert(s, new);
            }
        }
        out.push(t);
    }
    if !renames.is_empty() {
        for t in &mut out {
            for d in &mut t.shape {
                if let Dim::Sym(p) = d {
                    let renamed = rename_poly(p, &renames);
                    *d = Dim::from_poly(renamed).expect("renaming symbols keeps a size a size");
                }
            }
        }
    }
    Ok(out)
}

/// `p` with the symbols in `renames` replaced.
fn rename_poly(p: &Poly, renames: &BTreeMap<Arc<str>, String>) -> Poly {
    let mut acc = Poly::constant(0);
    for (mono, coeff) in p.terms() {
        let mut term = Poly::constant(coeff);
        for atom in mono {
            let factor = match atom {
                Atom::Var(v) => match renames.get(v) {
                    Some(new) => Poly::var(new),
                    None => Poly::var(v),
                },
                Atom::Div(n, d) => {
                    let (n, d) = (rename_poly(n, renames), rename_poly(d, renames));
                    // The divisor was non-zero before renaming and renaming
                    // does not change values, so it is non-zero now.
                    n.floor_div(&d).expect("divisor stays non-zero")
                }
            };
            term = term.mul(&factor);
        }
        acc = acc.add(&term);
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_ir::dtype::DType;

    #[test]
    fn reshape_with_known_shape_is_exact() {
        let x = TensorType::new(DType::F32, vec![Dim::sym("batch"), Dim::Fixed(6)]);
        let shape = Tensor::vec_i64(&[-1, 2, 3]);
        let mut fresh = FreshSymbols::default();
        let out = infer_op(
            &Op::Reshape { allowzero: false },
            &[InputSpec::Typed(&x), InputSpec::Known(&shape)],
            1,
            &mut fresh,
        )
        .unwrap();
        assert_eq!(out[0].to_string(), "f32[batch, 2, 3]");
    }

    #[test]
    fn unknown_dims_get_fresh_names() {
        let x = TensorType::fixed(DType::F32, &[6]);
        let shape_ty = TensorType::fixed(DType::I64, &[2]);
        let mut fresh =
            FreshSymbols::after([&TensorType::new(DType::F32, vec![Dim::sym("unk__4")])]);
        let op = Op::Reshape { allowzero: false };
        let a = infer_op(
            &op,
            &[InputSpec::Typed(&x), InputSpec::Typed(&shape_ty)],
            1,
            &mut fresh,
        )
        .unwrap();
        let b = infer_op(
            &op,
            &[InputSpec::Typed(&x), InputSpec::Typed(&shape_ty)],
            1,
            &mut fresh,
        )
        .unwrap();
        assert_eq!(a[0].rank(), 2);
        assert_ne!(
            a[0].shape, b[0].shape,
            "two inferences never share a fresh symbol"
        );
        assert!(a[0].to_string().contains("unk__5"), "{}", a[0]);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let a = TensorType::fixed(DType::F32, &[2, 3]);
        let b = TensorType::fixed(DType::F32, &[4, 5]);
        let mut fresh = FreshSymbols::default();
        let err = infer_op(
            &Op::MatMul,
            &[InputSpec::Typed(&a), InputSpec::Typed(&b)],
            1,
            &mut fresh,
        );
        assert!(err.is_err());
    }
}
