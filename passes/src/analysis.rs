//! The e-class analysis: dtype, symbolic shape and constness of every class.
//!
//! Every class carries a [`ClassType`] (one [`TensorType`] for a value, one
//! per slot for the tuple of a multi-output node) and, when the value is a
//! constant with at most [`TypeAnalysis::fold_limit`] elements, its interned
//! value. Rules read both to check shapes and to fold constants.
//!
//! Types come from kiln-ir's inference ([`crate::typing::infer_op`]); while
//! a graph is being converted, the types already in the graph are handed in
//! instead ([`TypeAnalysis::seed`]), since they were inferred with the whole
//! graph in view. Constants are computed with the reference interpreter
//! ([`kiln_ir::interp::eval_op`]) when every input is constant, and from the
//! type alone for `Shape` and `Size` of a fully static value.
//!
//! Exact rules preserve types, so merging two classes whose types disagree
//! (different dtype or rank, or two different fixed sizes) or whose constant
//! values differ is a bug in a rule. It is recorded in
//! [`TypeAnalysis::errors`] (the pass manager then keeps its input graph and
//! reports the error) and, when [`TypeAnalysis::strict`] is set (the default
//! in debug builds), panics at once so the offending rule is on the stack.
//! Where the types agree but one is more precise per axis (a fixed size over
//! a symbol, a named symbol over a fresh `unk__N`), the merged class keeps
//! the more precise one, following `kiln_ir::infer`'s policy.

use crate::consts::{ConstId, ConstTable};
use crate::lang::{KilnLang, Name};
use crate::typing::{infer_op, FreshSymbols, InputSpec};
use egg::{DidMerge, Id};
use kiln_ir::dim::Dim;
use kiln_ir::infer::FRESH_PREFIX;
use kiln_ir::op::Op;
use kiln_ir::tensor::Tensor;
use kiln_ir::types::TensorType;
use std::collections::BTreeMap;

/// The e-graph of kiln's language with this analysis.
pub type KilnEGraph = egg::EGraph<KilnLang, TypeAnalysis>;

/// Constants with more elements than this are not tracked by default:
/// folding exists for shape arithmetic and small tables, not for weights.
pub const DEFAULT_FOLD_LIMIT: usize = 4096;

/// The static type of an e-class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClassType {
    /// One tensor value.
    Tensor(TensorType),
    /// The outputs of a multi-output node, one per slot.
    Tuple(Vec<TensorType>),
    /// The omitted optional input.
    Absent,
    /// Inference failed (recorded in [`TypeAnalysis::errors`]); never chosen
    /// by extraction.
    Unknown,
}

impl ClassType {
    /// The tensor type of a value class.
    pub fn tensor(&self) -> Option<&TensorType> {
        match self {
            ClassType::Tensor(t) => Some(t),
            _ => None,
        }
    }
}

/// What the analysis knows of one e-class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassData {
    /// Dtype and shape.
    pub ty: ClassType,
    /// The value, when constant and small.
    pub constant: Option<ConstId>,
}

impl ClassData {
    /// The tensor type of a value class.
    pub fn tensor(&self) -> Option<&TensorType> {
        self.ty.tensor()
    }
}

/// A bug found by the analysis: a merge of incompatible classes or a node
/// whose type cannot be inferred.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnalysisError {
    /// The rule being applied when it happened, if any.
    pub rule: Option<String>,
    /// What went wrong.
    pub message: String,
}

impl std::fmt::Display for AnalysisError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.rule {
            Some(r) => write!(f, "rule `{r}`: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// The analysis, with the side tables the language refers to.
#[derive(Debug)]
pub struct TypeAnalysis {
    /// Interned constants ([`KilnLang::Const`] refers into it).
    pub consts: ConstTable,
    /// Types of graph inputs, by name.
    pub inputs: BTreeMap<Name, TensorType>,
    /// Types of initializers by name, and their interned value when small
    /// (or a bool mask buffer, see [`crate::convert::MASK_BUFFER_LIMIT`]).
    pub weights: BTreeMap<Name, (TensorType, Option<ConstId>)>,
    /// Classes of the source graph's outputs, as the conversion added them
    /// (canonicalize with `find`): rules that fuse a value away check that
    /// no output reads it.
    pub outputs: Vec<Id>,
    /// Fresh-symbol counter for inferred types.
    pub fresh: FreshSymbols,
    /// Constants up to this many elements are tracked and folded.
    pub fold_limit: usize,
    /// Panic on a type conflict instead of only recording it.
    pub strict: bool,
    /// Bugs found so far.
    pub errors: Vec<AnalysisError>,
    /// Types of the next node's output slots (`None` where unknown), set by
    /// the graph conversion just before it adds the node.
    pub(crate) seed: Option<Vec<Option<TensorType>>>,
    /// The rule being applied, for error messages.
    pub(crate) current_rule: Option<String>,
}

impl Default for TypeAnalysis {
    fn default() -> TypeAnalysis {
        TypeAnalysis {
            consts: ConstTable::new(),
            inputs: BTreeMap::new(),
            weights: BTreeMap::new(),
            outputs: Vec::new(),
            fresh: FreshSymbols::default(),
            fold_limit: DEFAULT_FOLD_LIMIT,
            strict: cfg!(debug_assertions),
            errors: Vec::new(),
            seed: None,
            current_rule: None,
        }
    }
}

impl TypeAnalysis {
    fn error(&mut self, message: String) {
        let e = AnalysisError {
            rule: self.current_rule.clone(),
            message,
        };
        if self.strict {
            panic!("e-graph analysis: {e}");
        }
        self.errors.push(e);
    }

    /// The value of a constant class.
    pub fn constant<'a>(&'a self, data: &ClassData) -> Option<&'a Tensor> {
        data.constant.map(|c| self.consts.get(c))
    }
}

fn unknown() -> ClassData {
    ClassData {
        ty: ClassType::Unknown,
        constant: None,
    }
}

impl egg::Analysis<KilnLang> for TypeAnalysis {
    type Data = ClassData;

    fn make(egraph: &mut KilnEGraph, enode: &KilnLang, _id: Id) -> ClassData {
        let seed = egraph.analysis.seed.take();
        match enode {
            KilnLang::Input(name) => match egraph.analysis.inputs.get(name) {
                Some(t) => ClassData {
                    ty: ClassType::Tensor(t.clone()),
                    constant: None,
                },
                None => {
                    egraph
                        .analysis
                        .error(format!("graph input `{name}` has no registered type"));
                    unknown()
                }
            },
            KilnLang::Weight(name) => match egraph.analysis.weights.get(name) {
                Some((t, c)) => ClassData {
                    ty: ClassType::Tensor(t.clone()),
                    constant: *c,
                },
                None => {
                    egraph
                        .analysis
                        .error(format!("initializer `{name}` has no registered type"));
                    unknown()
                }
            },
            KilnLang::Const(c) => {
                let t = egraph.analysis.consts.get(*c);
                let ty = TensorType::fixed(t.dtype(), t.shape());
                let small = t.len() <= egraph.analysis.fold_limit;
                ClassData {
                    ty: ClassType::Tensor(ty),
                    constant: small.then_some(*c),
                }
            }
            KilnLang::Absent => ClassData {
                ty: ClassType::Absent,
                constant: None,
            },
            KilnLang::Proj(i, [t]) => match &egraph[*t].data.ty {
                ClassType::Tuple(ts) => match ts.get(*i as usize) {
                    Some(t) => {
                        let declared = seed.and_then(|s| s.into_iter().next().flatten());
                        let t = match declared {
                            None => t.clone(),
                            Some(d) => match merge_types(&d, t) {
                                Some(m) => m,
                                None => {
                                    let msg =
                                        format!("output {i} is declared {d} but inferred {t}");
                                    egraph.analysis.error(msg);
                                    return unknown();
                                }
                            },
                        };
                        ClassData {
                            ty: ClassType::Tensor(t),
                            constant: None,
                        }
                    }
                    None => {
                        let n = ts.len();
                        egraph
                            .analysis
                            .error(format!("projection {i} of a node with {n} outputs"));
                        unknown()
                    }
                },
                ClassType::Unknown => unknown(),
                other => {
                    egraph.analysis.error(format!(
                        "projection {i} of a class that is not a tuple ({other:?})"
                    ));
                    unknown()
                }
            },
            KilnLang::Op {
                op,
                outputs,
                children,
            } => make_op(egraph, op.op(), *outputs as usize, children, seed),
        }
    }

    fn merge(&mut self, a: &mut ClassData, b: ClassData) -> DidMerge {
        let (ty, a_changed, b_changed) = match (&a.ty, b.ty) {
            (ClassType::Unknown, ClassType::Unknown) => (ClassType::Unknown, false, false),
            (ClassType::Unknown, other) => (other, true, false),
            (_, ClassType::Unknown) => (a.ty.clone(), false, true),
            (x, y) if *x == y => (y, false, false),
            (ClassType::Tensor(x), ClassType::Tensor(y)) => match merge_types(x, &y) {
                Some(m) => {
                    let (ac, bc) = (m != *x, m != y);
                    (ClassType::Tensor(m), ac, bc)
                }
                None => {
                    self.error(format!("merged classes of incompatible types {x} and {y}"));
                    (a.ty.clone(), false, true)
                }
            },
            (ClassType::Tuple(xs), ClassType::Tuple(ys)) if xs.len() == ys.len() => {
                let mut merged = Vec::with_capacity(xs.len());
                let mut ok = true;
                for (x, y) in xs.iter().zip(&ys) {
                    match merge_types(x, y) {
                        Some(m) => merged.push(m),
                        None => {
                            ok = false;
                            break;
                        }
                    }
                }
                if ok {
                    let (ac, bc) = (merged != *xs, merged != ys);
                    (ClassType::Tuple(merged), ac, bc)
                } else {
                    self.error(format!(
                        "merged tuples of incompatible types {xs:?} and {ys:?}"
                    ));
                    (a.ty.clone(), false, true)
                }
            }
            (x, y) => {
                self.error(format!("merged classes of different kinds {x:?} and {y:?}"));
                (a.ty.clone(), false, true)
            }
        };
        a.ty = ty;
        let (constant, ca, cb) = match (a.constant, b.constant) {
            (None, None) => (None, false, false),
            (Some(x), None) => (Some(x), false, true),
            (None, Some(y)) => (Some(y), true, false),
            (Some(x), Some(y)) if x == y => (Some(x), false, false),
            (Some(x), Some(y)) => {
                let msg = format!(
                    "merged classes with different constant values {:?} and {:?}",
                    self.consts.get(x),
                    self.consts.get(y)
                );
                self.error(msg);
                (Some(x), false, true)
            }
        };
        a.constant = constant;
        DidMerge(a_changed || ca, b_changed || cb)
    }
}

/// Types and constant of an op node. Slots the seed gives are taken from
/// it (merged with inference when only some are given).
fn make_op(
    egraph: &mut KilnEGraph,
    op: &Op,
    outputs: usize,
    children: &[Id],
    seed: Option<Vec<Option<TensorType>>>,
) -> ClassData {
    // Children's data, cloned out so inference can borrow the analysis.
    let child_data: Vec<ClassData> = children.iter().map(|c| egraph[*c].data.clone()).collect();
    let seeded: Option<Vec<TensorType>> = seed.as_ref().and_then(|s| s.iter().cloned().collect());
    let ty = match seeded {
        Some(mut ts) if ts.len() == outputs => {
            if outputs == 1 {
                ClassType::Tensor(ts.remove(0))
            } else {
                ClassType::Tuple(ts)
            }
        }
        _ => match infer_types(egraph, op, outputs, &child_data) {
            Some(ClassType::Tuple(mut ts)) => {
                for (slot, declared) in seed.iter().flatten().enumerate() {
                    let (Some(d), Some(t)) = (declared, ts.get_mut(slot)) else {
                        continue;
                    };
                    match merge_types(d, t) {
                        Some(m) => *t = m,
                        None => {
                            let msg = format!(
                                "{} output {slot} is declared {d} but inferred {t}",
                                op.name()
                            );
                            egraph.analysis.error(msg);
                            return unknown();
                        }
                    }
                }
                ClassType::Tuple(ts)
            }
            Some(t) => t,
            None => return unknown(),
        },
    };
    let constant = match &ty {
        ClassType::Tensor(out) => {
            fold(&egraph.analysis, op, out, &child_data).map(|t| egraph.analysis.consts.intern(&t))
        }
        _ => None,
    };
    ClassData { ty, constant }
}

/// Infers the node's types from its children's; `None` (with an error
/// recorded) when a child is unknown or inference fails.
fn infer_types(
    egraph: &mut KilnEGraph,
    op: &Op,
    outputs: usize,
    child_data: &[ClassData],
) -> Option<ClassType> {
    let analysis = &mut egraph.analysis;
    let mut specs = Vec::with_capacity(child_data.len());
    for d in child_data {
        specs.push(match (&d.ty, d.constant) {
            (ClassType::Absent, _) => InputSpec::Absent,
            (ClassType::Tensor(_), Some(c)) => InputSpec::Known(analysis.consts.get(c)),
            (ClassType::Tensor(t), None) => InputSpec::Typed(t),
            // The child's own failure was recorded where it happened.
            (ClassType::Unknown, _) => return None,
            (ClassType::Tuple(_), _) => {
                analysis.error(format!(
                    "{} reads a multi-output node without a projection",
                    op.name()
                ));
                return None;
            }
        });
    }
    let mut fresh = analysis.fresh.clone();
    let result = infer_op(op, &specs, outputs, &mut fresh);
    analysis.fresh = fresh;
    match result {
        Ok(mut types) if outputs == 1 && types.len() == 1 => {
            Some(ClassType::Tensor(types.remove(0)))
        }
        Ok(types) if types.len() == outputs => Some(ClassType::Tuple(types)),
        Ok(types) => {
            let n = types.len();
            analysis.error(format!(
                "{} gave {n} output types for {outputs} outputs",
                op.name()
            ));
            None
        }
        Err(e) => {
            analysis.error(format!("type inference failed on a rewritten node: {e}"));
            None
        }
    }
}

/// The value of a single-output node, when it is a small constant:
/// `Shape`/`Size` of a static type, or any deterministic op over constant
/// inputs, evaluated with the reference interpreter.
fn fold(
    analysis: &TypeAnalysis,
    op: &Op,
    out: &TensorType,
    child_data: &[ClassData],
) -> Option<Tensor> {
    if out.fixed_len()? > analysis.fold_limit {
        return None;
    }
    // Shape and Size need only the input's type, which may be static even
    // when its value is not known.
    match op {
        Op::Shape { start, end } => {
            let dims: Vec<i64> = child_data
                .first()?
                .tensor()?
                .fixed_shape()?
                .iter()
                .map(|&d| d as i64)
                .collect();
            let (s, e) = shape_range(dims.len(), *start, *end);
            return Some(Tensor::vec_i64(&dims[s..e]));
        }
        Op::Size => {
            let n = child_data.first()?.tensor()?.fixed_len()?;
            return Some(Tensor::scalar_i64(i64::try_from(n).ok()?));
        }
        // Random or stateful ops are never folded.
        Op::Dropout { .. } => return None,
        _ => {}
    }
    let mut inputs = Vec::with_capacity(child_data.len());
    for d in child_data {
        match (&d.ty, d.constant) {
            (ClassType::Absent, _) => inputs.push(None),
            (ClassType::Tensor(_), Some(c)) => inputs.push(Some(analysis.consts.get(c).clone())),
            _ => return None,
        }
    }
    eval(op, &inputs, out)
}

/// Runs one kernel and checks the result against the inferred type; a
/// kernel error (or a missing kernel) means "not folded".
fn eval(op: &Op, inputs: &[Option<Tensor>], out: &TensorType) -> Option<Tensor> {
    let mut outs = kiln_ir::interp::eval_op(op, inputs, 1).ok()?;
    let t = outs.pop().flatten()?;
    let shape: Vec<usize> = out.fixed_shape()?;
    (t.dtype() == out.dtype && t.shape() == shape.as_slice()).then_some(t)
}

/// `[start, end)` of `Shape`'s slice, clamped like ONNX.
fn shape_range(rank: usize, start: i64, end: Option<i64>) -> (usize, usize) {
    let r = rank as i64;
    let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let s = clamp(start);
    let e = end.map_or(rank, clamp);
    (s, e.max(s))
}

/// The merge of two descriptions of one value: `None` when they conflict
/// (dtype, rank, or two different fixed sizes); otherwise per axis the more
/// precise dim (fixed, then a named symbol, then a fresh one, then the left).
pub fn merge_types(a: &TensorType, b: &TensorType) -> Option<TensorType> {
    if !kiln_ir::infer::compatible(a, b) {
        return None;
    }
    let shape = a
        .shape
        .iter()
        .zip(&b.shape)
        .map(|(x, y)| match (x, y) {
            (Dim::Fixed(_), _) => x.clone(),
            (_, Dim::Fixed(_)) => y.clone(),
            _ if is_fresh(x) && !is_fresh(y) => y.clone(),
            _ => x.clone(),
        })
        .collect();
    Some(TensorType::new(a.dtype, shape))
}

fn is_fresh(d: &Dim) -> bool {
    match d {
        Dim::Sym(p) => p.symbols().iter().any(|s| s.starts_with(FRESH_PREFIX)),
        Dim::Fixed(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_ir::dtype::DType;

    #[test]
    fn merge_keeps_the_more_precise_dim() {
        let a = TensorType::new(DType::F32, vec![Dim::sym("unk__1"), Dim::sym("seq")]);
        let b = TensorType::new(DType::F32, vec![Dim::sym("batch"), Dim::Fixed(4)]);
        assert_eq!(merge_types(&a, &b).unwrap().to_string(), "f32[batch, 4]");
        let c = TensorType::new(DType::F32, vec![Dim::Fixed(2), Dim::Fixed(5)]);
        assert!(merge_types(&b, &c).is_none(), "4 and 5 conflict");
        let d = TensorType::new(DType::F16, vec![Dim::sym("batch"), Dim::Fixed(4)]);
        assert!(merge_types(&b, &d).is_none(), "dtypes differ");
    }

    #[test]
    fn shape_of_a_static_value_is_constant() {
        let mut eg = KilnEGraph::new(TypeAnalysis::default());
        let name: Name = "x".into();
        eg.analysis
            .inputs
            .insert(name.clone(), TensorType::fixed(DType::F32, &[2, 3, 4]));
        let x = eg.add(KilnLang::Input(name));
        let s = eg.add(KilnLang::op(
            Op::Shape {
                start: 1,
                end: None,
            },
            vec![x],
        ));
        let data = eg[s].data.clone();
        assert_eq!(data.tensor().unwrap().to_string(), "i64[2]");
        assert_eq!(eg.analysis.constant(&data).unwrap().to_i64s(), vec![3, 4]);
    }

    #[test]
    fn conflicting_merge_is_recorded() {
        let mut eg = KilnEGraph::new(TypeAnalysis {
            strict: false,
            ..TypeAnalysis::default()
        });
        eg.analysis
            .inputs
            .insert("a".into(), TensorType::fixed(DType::F32, &[2]));
        eg.analysis
            .inputs
            .insert("b".into(), TensorType::fixed(DType::F32, &[3]));
        let a = eg.add(KilnLang::Input("a".into()));
        let b = eg.add(KilnLang::Input("b".into()));
        eg.union(a, b);
        eg.rebuild();
        assert_eq!(eg.analysis.errors.len(), 1, "{:?}", eg.analysis.errors);
        assert!(eg.analysis.errors[0].message.contains("incompatible"));
    }
}
