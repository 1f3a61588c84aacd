//! The e-graph language: one e-node per kiln op application, with the op's
//! attributes inside the node.
//!
//! An [`Op`] holds `f32`s and tensors, which are neither `Hash` nor `Ord`, so
//! the language wraps it in an [`OpKey`]: the op plus a canonical key built
//! once from [`Op::attrs`] (floats compared by their bits, tensors by dtype,
//! shape and raw bytes). Two keys are equal exactly when the ops print the
//! same, so hash-consing never identifies ops that differ in any attribute,
//! including `-0.0` against `0.0`.
//!
//! Constant tensors (`Constant` nodes and folded values) are not stored in
//! the nodes: they are interned in a [`ConstTable`](crate::consts::ConstTable)
//! owned by the analysis and referenced by [`ConstId`], so a node stays cheap
//! to clone and hash however large the constant.
//!
//! Values that are not computed by ops are leaves: graph inputs and
//! initializers by name, interned constants, and [`KilnLang::Absent`] for an
//! omitted optional input. An op node with one output slot stands for its
//! value; a node with several (`Split`, `TopK`, `LayerNormalization` with its
//! statistics, `Dropout` with its mask, ...) stands for the tuple of its
//! outputs, read with [`KilnLang::Proj`]. The output count is part of such a
//! node because `Split` without sizes divides by it.
//!
//! Kiln's own fused ops (`CrossEntropy`, `LinearCrossEntropy`,
//! `LinearAttention`, ...) will be new [`Op`] variants in the `kiln` domain;
//! the key includes the domain, so they need no change here.

use crate::consts::ConstId;
use egg::Id;
use kiln_ir::attr::Attr;
use kiln_ir::dtype::DType;
use kiln_ir::op::Op;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// A name of a graph input or initializer. Compared and ordered by content,
/// so the order of nodes inside e-classes (which egg sorts) does not depend
/// on interning order, and output bytes are stable across runs.
pub type Name = Arc<str>;

/// One attribute value in canonical, hashable form.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AttrKey {
    /// An integer.
    Int(i64),
    /// A float, by its bits.
    Float(u32),
    /// A string.
    Str(String),
    /// Integers.
    Ints(Vec<i64>),
    /// Floats, by their bits.
    Floats(Vec<u32>),
    /// A small tensor (e.g. `ConstantOfShape`'s fill value): dtype, shape and
    /// little-endian bytes.
    Tensor(DType, Vec<usize>, Vec<u8>),
    /// An element type.
    DType(DType),
}

impl AttrKey {
    fn of(a: &Attr) -> AttrKey {
        match a {
            Attr::Int(v) => AttrKey::Int(*v),
            Attr::Float(v) => AttrKey::Float(v.to_bits()),
            Attr::String(s) => AttrKey::Str(s.clone()),
            Attr::Ints(v) => AttrKey::Ints(v.clone()),
            Attr::Floats(v) => AttrKey::Floats(v.iter().map(|f| f.to_bits()).collect()),
            Attr::Tensor(t) => AttrKey::Tensor(t.dtype(), t.shape().to_vec(), t.to_raw_le()),
            Attr::DType(d) => AttrKey::DType(*d),
        }
    }
}

impl fmt::Display for AttrKey {
    /// Without spaces, so an e-node prints as one s-expression atom.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn list<T: fmt::Display>(
            f: &mut fmt::Formatter<'_>,
            v: impl Iterator<Item = T>,
        ) -> fmt::Result {
            f.write_str("[")?;
            for (i, x) in v.enumerate() {
                if i > 0 {
                    f.write_str(",")?;
                }
                write!(f, "{x}")?;
            }
            f.write_str("]")
        }
        match self {
            AttrKey::Int(v) => write!(f, "{v}"),
            AttrKey::Float(b) => write!(f, "{:?}", f32::from_bits(*b)),
            AttrKey::Str(s) => write!(f, "{s:?}"),
            AttrKey::Ints(v) => list(f, v.iter()),
            AttrKey::Floats(v) => list(f, v.iter().map(|b| format!("{:?}", f32::from_bits(*b)))),
            AttrKey::Tensor(d, shape, _) => {
                write!(f, "{d}")?;
                list(f, shape.iter())
            }
            AttrKey::DType(d) => write!(f, "{d}"),
        }
    }
}

struct OpKeyInner {
    op: Op,
    attrs: Vec<(&'static str, AttrKey)>,
}

/// An [`Op`] with a canonical key, so it can live in an e-node. Cloning is a
/// reference-count increment.
#[derive(Clone)]
pub struct OpKey(Arc<OpKeyInner>);

impl OpKey {
    /// Wraps an op, computing its key once.
    pub fn new(op: Op) -> OpKey {
        let attrs = op
            .attrs()
            .iter()
            .map(|(n, a)| (*n, AttrKey::of(a)))
            .collect();
        OpKey(Arc::new(OpKeyInner { op, attrs }))
    }

    /// The op.
    pub fn op(&self) -> &Op {
        &self.0.op
    }

    /// The op type (`Transpose`, `MatMul`, ...).
    pub fn name(&self) -> &'static str {
        self.0.op.name()
    }

    /// The op's domain (`""` for ONNX, `"kiln"` for fused ops).
    pub fn domain(&self) -> &'static str {
        self.0.op.domain()
    }

    /// The attributes that differ from their defaults, in canonical form.
    pub fn attrs(&self) -> &[(&'static str, AttrKey)] {
        &self.0.attrs
    }

    fn cmp_key(&self) -> (&'static str, &'static str, &[(&'static str, AttrKey)]) {
        (self.domain(), self.name(), self.attrs())
    }
}

impl PartialEq for OpKey {
    fn eq(&self, other: &OpKey) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.cmp_key() == other.cmp_key()
    }
}

impl Eq for OpKey {}

impl Hash for OpKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.cmp_key().hash(state)
    }
}

impl PartialOrd for OpKey {
    fn partial_cmp(&self, other: &OpKey) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OpKey {
    fn cmp(&self, other: &OpKey) -> Ordering {
        if Arc::ptr_eq(&self.0, &other.0) {
            return Ordering::Equal;
        }
        self.cmp_key().cmp(&other.cmp_key())
    }
}

impl fmt::Debug for OpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for OpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.domain().is_empty() {
            write!(f, "{}.", self.domain())?;
        }
        f.write_str(self.name())?;
        if !self.attrs().is_empty() {
            f.write_str("{")?;
            for (i, (n, a)) in self.attrs().iter().enumerate() {
                if i > 0 {
                    f.write_str(",")?;
                }
                write!(f, "{n}={a}")?;
            }
            f.write_str("}")?;
        }
        Ok(())
    }
}

/// An e-node of kiln's language.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KilnLang {
    /// A graph input, by name.
    Input(Name),
    /// An initializer (a weight), by name. Its data stays in the source graph.
    Weight(Name),
    /// An interned constant tensor.
    Const(ConstId),
    /// An omitted optional input.
    Absent,
    /// Output `index` of a node with several output slots.
    Proj(u32, [Id; 1]),
    /// An op applied to its inputs (one child per input slot, [`KilnLang::Absent`]
    /// for omitted ones) with `outputs` output slots.
    Op {
        /// The op with its attributes.
        op: OpKey,
        /// Number of output slots; above 1 the node is a tuple read by `Proj`.
        outputs: u32,
        /// Input slots.
        children: Vec<Id>,
    },
}

/// What [`egg`] indexes e-classes by: the kind of node, and for ops the
/// domain and op type, so a rule looks only at classes holding its root op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Disc {
    /// [`KilnLang::Input`].
    Input,
    /// [`KilnLang::Weight`].
    Weight,
    /// [`KilnLang::Const`].
    Const,
    /// [`KilnLang::Absent`].
    Absent,
    /// [`KilnLang::Proj`].
    Proj,
    /// [`KilnLang::Op`] of this domain and op type.
    Op(&'static str, &'static str),
}

impl Disc {
    /// The discriminant of ONNX-domain op type `name`.
    pub fn onnx(name: &'static str) -> Disc {
        Disc::Op(kiln_ir::op::ONNX_DOMAIN, name)
    }
}

impl KilnLang {
    /// An op node with one output slot.
    pub fn op(op: Op, children: Vec<Id>) -> KilnLang {
        KilnLang::Op {
            op: OpKey::new(op),
            outputs: 1,
            children,
        }
    }

    /// The op, for op nodes.
    pub fn as_op(&self) -> Option<&Op> {
        match self {
            KilnLang::Op { op, .. } => Some(op.op()),
            _ => None,
        }
    }

    /// True for nodes with several output slots, whose class is a tuple.
    pub fn is_tuple(&self) -> bool {
        matches!(self, KilnLang::Op { outputs, .. } if *outputs > 1)
    }
}

impl egg::Language for KilnLang {
    type Discriminant = Disc;

    fn discriminant(&self) -> Disc {
        match self {
            KilnLang::Input(_) => Disc::Input,
            KilnLang::Weight(_) => Disc::Weight,
            KilnLang::Const(_) => Disc::Const,
            KilnLang::Absent => Disc::Absent,
            KilnLang::Proj(..) => Disc::Proj,
            KilnLang::Op { op, .. } => Disc::Op(op.domain(), op.name()),
        }
    }

    fn matches(&self, other: &KilnLang) -> bool {
        match (self, other) {
            (KilnLang::Input(a), KilnLang::Input(b))
            | (KilnLang::Weight(a), KilnLang::Weight(b)) => a == b,
            (KilnLang::Const(a), KilnLang::Const(b)) => a == b,
            (KilnLang::Absent, KilnLang::Absent) => true,
            (KilnLang::Proj(i, _), KilnLang::Proj(j, _)) => i == j,
            (
                KilnLang::Op {
                    op: a,
                    outputs: na,
                    children: ca,
                },
                KilnLang::Op {
                    op: b,
                    outputs: nb,
                    children: cb,
                },
            ) => na == nb && ca.len() == cb.len() && a == b,
            _ => false,
        }
    }

    fn children(&self) -> &[Id] {
        match self {
            KilnLang::Proj(_, c) => c,
            KilnLang::Op { children, .. } => children,
            _ => &[],
        }
    }

    fn children_mut(&mut self) -> &mut [Id] {
        match self {
            KilnLang::Proj(_, c) => c,
            KilnLang::Op { children, .. } => children,
            _ => &mut [],
        }
    }
}

impl fmt::Display for KilnLang {
    /// The operator part of the node as one atom (egg prints children around
    /// it): `input:x`, `weight:w`, `const#3`, `none`, `proj1`,
    /// `Transpose{perm=[0,2,1,3]}`, `Split{axis=1}/3` for three outputs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KilnLang::Input(n) => write!(f, "input:{n}"),
            KilnLang::Weight(n) => write!(f, "weight:{n}"),
            KilnLang::Const(c) => write!(f, "const#{}", c.index()),
            KilnLang::Absent => f.write_str("none"),
            KilnLang::Proj(i, _) => write!(f, "proj{i}"),
            KilnLang::Op { op, outputs, .. } => {
                write!(f, "{op}")?;
                if *outputs != 1 {
                    write!(f, "/{outputs}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_ir::op::GemmAttrs;

    #[test]
    fn keys_compare_attributes_by_bits() {
        let a = OpKey::new(Op::LeakyRelu { alpha: 0.0 });
        let b = OpKey::new(Op::LeakyRelu { alpha: -0.0 });
        let c = OpKey::new(Op::LeakyRelu { alpha: 0.0 });
        assert_ne!(a, b);
        assert_eq!(a, c);
        assert_eq!(a.cmp(&c), Ordering::Equal);
        let g1 = OpKey::new(Op::Gemm(GemmAttrs {
            alpha: 1.0,
            beta: 1.0,
            trans_a: false,
            trans_b: true,
        }));
        let g2 = OpKey::new(Op::Gemm(GemmAttrs {
            alpha: 1.0,
            beta: 1.0,
            trans_a: false,
            trans_b: false,
        }));
        assert_ne!(g1, g2);
        assert_eq!(g1.to_string(), "Gemm{transB=1}");
    }

    #[test]
    fn display_is_one_atom() {
        let t = KilnLang::op(
            Op::Transpose {
                perm: Some(vec![0, 2, 1]),
            },
            vec![Id::from(0)],
        );
        assert_eq!(t.to_string(), "Transpose{perm=[0,2,1]}");
        assert!(!t.to_string().contains(' '));
    }
}
