//! Lowering kiln-domain ops into standard ONNX ops (`kiln optimize
//! --portable`), so that any ONNX runtime can run an optimized graph.
//!
//! [`to_portable`] replaces every `kiln::CrossEntropy` and
//! `kiln::LinearCrossEntropy` node (specs in [`kiln_ir::op`]) by ONNX ops
//! that compute the same values; everything else is copied unchanged but
//! for one onnxruntime adjustment of `Attention` masks (below). The lowered
//! forms:
//!
//! - `CrossEntropy` without label smoothing and z-loss is exactly ONNX
//!   `SoftmaxCrossEntropyLoss` with the same reduction, ignore_index, class
//!   weight and outputs (the spec defines the kiln op that way).
//! - With label smoothing ε or z-loss ζ, it becomes a stable log-sum-exp
//!   (`lse = m + log Σ exp(x - m)`, `m = max x`, along axis 1),
//!   `log_prob = x - lse`, and per sample
//!   `(1-ε)·nll + ζ·w_y·lse² - (ε/C)·counted·Σ_c w_c·log_prob_c`, where `nll`
//!   and `w_y` come from `NegativeLogLikelihoodLoss` (reduction `none`, the
//!   op's ignore_index and class weight) of `log_prob` and of an all `-1`
//!   tensor, and `counted` is 0 for ignored samples and 1 otherwise. `sum`
//!   adds the samples; `mean` divides by the sum of `w_y`, as the spec says.
//! - `LinearCrossEntropy` becomes `Gemm(hidden, weight, bias)` (with
//!   `transB` from `transpose_weight`) followed by the `CrossEntropy`
//!   lowering above. The portable form therefore materializes the `N × V`
//!   logits: standard ONNX has no chunked loss, and that memory is the price
//!   of portability.
//!
//! `Attention` stays as it is, with one adjustment for onnxruntime, whose
//! `Attention` does not broadcast a mask along the query axis: a mask with
//! size 1 there (a padding mask `[B, 1, 1, S]`) is expanded to the query
//! length first.
//!
//! New nodes are named after the node they replace (`loss/ReduceMax`, ...)
//! and the last one takes its name; the replaced node's output values keep
//! their names and types. Rows whose logits are all `-inf` give NaN here
//! where the kiln op gives `-inf` (the max cannot be subtracted); no real
//! model has them.

use kiln_ir::dim::Dim;
use kiln_ir::dtype::DType;
use kiln_ir::error::{IrError, Result};
use kiln_ir::graph::{Graph, NodeId, ValueId};
use kiln_ir::op::{BinaryOp, GemmAttrs, LossReduction, Op, ReduceKind, UnaryOp, KILN_DOMAIN};
use kiln_ir::tensor::Tensor;

/// A copy of `graph` with every kiln-domain op lowered into standard ONNX
/// ops and `Attention` masks made fit for onnxruntime (see the module
/// docs); the `kiln` opset import is dropped. The new
/// values are typed by inference and the result is verified. Errors: a
/// kiln-domain op with no lowering, and inputs whose types do not allow one
/// (names the node).
pub fn to_portable(graph: &Graph) -> Result<Graph> {
    let mut g = graph.clone();
    if g.value_ids().any(|v| g.value(v).ty.is_none()) {
        kiln_ir::infer_types(&mut g)?;
    }
    let kiln_nodes: Vec<NodeId> = g
        .topo_order()?
        .into_iter()
        .filter(|&id| g.node(id).op.domain() == KILN_DOMAIN)
        .collect();
    for id in kiln_nodes {
        let node = g.remove_node(id);
        let mut b = Builder {
            g: &mut g,
            base: node.name.clone(),
            op_name: node.op.name(),
        };
        match &node.op {
            Op::CrossEntropy {
                reduction,
                ignore_index,
                label_smoothing,
                z_loss,
            } => {
                let loss = Loss {
                    reduction: *reduction,
                    ignore_index: *ignore_index,
                    label_smoothing: *label_smoothing,
                    z_loss: *z_loss,
                };
                let logits = b.required(&node.inputs, 0, "logits")?;
                let labels = b.required(&node.inputs, 1, "labels")?;
                let weight = node.input(2);
                b.cross_entropy(loss, logits, labels, weight, node.output(0), node.output(1))?;
            }
            Op::LinearCrossEntropy {
                reduction,
                ignore_index,
                label_smoothing,
                z_loss,
                transpose_weight,
                chunk_size: _,
            } => {
                let loss = Loss {
                    reduction: *reduction,
                    ignore_index: *ignore_index,
                    label_smoothing: *label_smoothing,
                    z_loss: *z_loss,
                };
                let hidden = b.required(&node.inputs, 0, "hidden")?;
                let weight = b.required(&node.inputs, 1, "weight")?;
                let labels = b.required(&node.inputs, 2, "labels")?;
                let gemm = Op::Gemm(GemmAttrs {
                    alpha: 1.0,
                    beta: 1.0,
                    trans_a: false,
                    trans_b: *transpose_weight,
                });
                let logits = b.node(
                    gemm,
                    vec![Some(hidden), Some(weight), node.input(3)],
                    "logits",
                )?;
                b.cross_entropy(loss, logits, labels, node.input(4), node.output(0), None)?;
            }
            other => {
                return Err(IrError::node(
                    &node.name,
                    other.name(),
                    format!(
                        "kiln::{} has no lowering into standard ONNX ops",
                        other.name()
                    ),
                ));
            }
        }
    }
    let attention: Vec<NodeId> = g
        .topo_order()?
        .into_iter()
        .filter(|&id| matches!(g.node(id).op, Op::Attention(_)))
        .collect();
    for id in attention {
        expand_attention_mask(&mut g, id)?;
    }
    if !g.dag().node_weights().any(|n| n.op.domain() == KILN_DOMAIN) {
        g.opset_imports.remove(KILN_DOMAIN);
    }
    // The new values are untyped; inference fills them and checks the rest.
    kiln_ir::infer_types(&mut g)?;
    kiln_ir::verify(&g)?;
    Ok(g)
}

/// Gives an `Attention` node's mask its query axis in full when it has
/// size 1 there (a padding mask `[B, 1, 1, S]`) and the query is longer:
/// ONNX broadcasts such a mask, but onnxruntime's `Attention` requires the
/// mask's second-to-last dim to be the query length. The mask becomes
/// `Expand(mask, shape(mask)[:-2] ++ [q_len] ++ shape(mask)[-1:])`, which
/// holds the same values wherever the broadcast would have read them.
fn expand_attention_mask(g: &mut Graph, id: NodeId) -> Result<()> {
    let node = g.node(id).clone();
    let (Some(q), Some(mask)) = (node.input(0), node.input(3)) else {
        return Ok(());
    };
    let (q_ty, mask_ty) = (g.ty(q)?.clone(), g.ty(mask)?.clone());
    // Q is [B, H, S, D] or [B, S, H*D].
    let q_axis = match q_ty.rank() {
        4 => 2,
        3 => 1,
        _ => return Ok(()),
    };
    let rank = mask_ty.rank();
    if rank < 2 || mask_ty.shape[rank - 2] != Dim::Fixed(1) || q_ty.shape[q_axis] == Dim::Fixed(1) {
        return Ok(());
    }
    let mut b = Builder {
        g,
        base: node.name.clone(),
        op_name: node.op.name(),
    };
    let lead = b.node(
        Op::Shape {
            start: 0,
            end: Some(-2),
        },
        vec![Some(mask)],
        "mask_lead_dims",
    )?;
    let q_len = b.node(
        Op::Shape {
            start: q_axis as i64,
            end: Some(q_axis as i64 + 1),
        },
        vec![Some(q)],
        "q_len",
    )?;
    let kv_len = b.node(
        Op::Shape {
            start: -1,
            end: None,
        },
        vec![Some(mask)],
        "mask_kv_len",
    )?;
    let shape = b.node(
        Op::Concat { axis: 0 },
        vec![Some(lead), Some(q_len), Some(kv_len)],
        "mask_shape",
    )?;
    let expanded = b.node(Op::Expand, vec![Some(mask), Some(shape)], "attn_mask")?;
    g.set_input(id, 3, Some(expanded));
    Ok(())
}

/// The loss attributes shared by both kiln ops.
#[derive(Clone, Copy)]
struct Loss {
    reduction: LossReduction,
    ignore_index: Option<i64>,
    label_smoothing: f32,
    z_loss: f32,
}

/// Adds the nodes that replace one kiln node.
struct Builder<'g> {
    g: &'g mut Graph,
    /// The replaced node's name: the prefix of new node and value names.
    base: String,
    /// The replaced node's op, for errors.
    op_name: &'static str,
}

impl Builder<'_> {
    fn error(&self, message: impl Into<String>) -> IrError {
        IrError::node(&self.base, self.op_name, message)
    }

    fn required(&self, inputs: &[Option<ValueId>], slot: usize, what: &str) -> Result<ValueId> {
        inputs
            .get(slot)
            .copied()
            .flatten()
            .ok_or_else(|| self.error(format!("input {slot} ({what}) is missing")))
    }

    /// A new node with one new output named after `what`.
    fn node(&mut self, op: Op, inputs: Vec<Option<ValueId>>, what: &str) -> Result<ValueId> {
        let name = self.g.fresh_node_name(&format!("{}/{what}", self.base));
        let value = self.g.fresh_value_name(&format!("{}/{what}", self.base));
        let id = self.g.add_node(name, op, inputs, &[value.as_str()])?;
        let out = self
            .g
            .node(id)
            .output(0)
            .expect("the node was given one output");
        // Typed as it is made: later steps read the types of what came before.
        let ty = kiln_ir::infer_node(self.g, id)?
            .into_iter()
            .next()
            .flatten();
        self.g.value_mut(out).ty = ty;
        Ok(out)
    }

    /// A node writing `out` when given (a value of the replaced node, which
    /// keeps its name), otherwise a new value.
    fn node_into(
        &mut self,
        op: Op,
        inputs: Vec<Option<ValueId>>,
        what: &str,
        out: Option<ValueId>,
    ) -> Result<ValueId> {
        match out {
            None => self.node(op, inputs, what),
            Some(v) => {
                let name = self.g.fresh_node_name(&self.base);
                self.g
                    .add_node_with_outputs(name, op, inputs, vec![Some(v)])?;
                Ok(v)
            }
        }
    }

    fn constant(&mut self, value: Tensor, what: &str) -> Result<ValueId> {
        self.node(Op::Constant { value }, vec![], what)
    }

    fn binary(&mut self, op: BinaryOp, a: ValueId, b: ValueId, what: &str) -> Result<ValueId> {
        self.node(Op::Binary(op), vec![Some(a), Some(b)], what)
    }

    fn reduce(
        &mut self,
        kind: ReduceKind,
        x: ValueId,
        axes: Option<Vec<i64>>,
        keepdims: bool,
        what: &str,
    ) -> Result<ValueId> {
        self.node(
            Op::Reduce {
                kind,
                axes,
                keepdims,
                noop_with_empty_axes: false,
            },
            vec![Some(x)],
            what,
        )
    }

    fn nll(
        &mut self,
        input: ValueId,
        labels: ValueId,
        weight: Option<ValueId>,
        loss: Loss,
        what: &str,
    ) -> Result<ValueId> {
        let op = Op::NegativeLogLikelihoodLoss {
            reduction: LossReduction::None,
            ignore_index: loss.ignore_index,
        };
        self.node(op, vec![Some(input), Some(labels), weight], what)
    }

    /// `CrossEntropy(logits, labels, weight)` into `loss_out` (and
    /// `log_prob_out` when the node had that output).
    fn cross_entropy(
        &mut self,
        loss: Loss,
        logits: ValueId,
        labels: ValueId,
        weight: Option<ValueId>,
        loss_out: Option<ValueId>,
        log_prob_out: Option<ValueId>,
    ) -> Result<()> {
        if loss.label_smoothing == 0.0 && loss.z_loss == 0.0 {
            let op = Op::SoftmaxCrossEntropyLoss {
                reduction: loss.reduction,
                ignore_index: loss.ignore_index,
            };
            let name = self.g.fresh_node_name(&self.base);
            let loss_value = match loss_out {
                Some(v) => v,
                None => {
                    let n = self.g.fresh_value_name(&format!("{}/loss", self.base));
                    self.g.add_value(n, None)?
                }
            };
            let mut outputs = vec![Some(loss_value)];
            if log_prob_out.is_some() {
                outputs.push(log_prob_out);
            }
            self.g.add_node_with_outputs(
                name,
                op,
                vec![Some(logits), Some(labels), weight],
                outputs,
            )?;
            return Ok(());
        }

        let ty = self.g.ty(logits)?.clone();
        let dtype = ty.dtype;
        if !dtype.is_float() {
            return Err(self.error(format!("logits must be a float tensor, found {dtype}")));
        }
        let rank = ty.rank();
        if rank < 2 {
            return Err(self.error(format!("logits must be [N, C, ...], found rank {rank}")));
        }
        let scalar = |v: f64| Tensor::from_f64s(dtype, &[], &[v]);

        // Stable log-sum-exp along the class axis, kept as [N, 1, d...].
        let max = self.reduce(ReduceKind::Max, logits, Some(vec![1]), true, "max")?;
        let shifted = self.binary(BinaryOp::Sub, logits, max, "shifted")?;
        let exp = self.node(Op::Unary(UnaryOp::Exp), vec![Some(shifted)], "exp")?;
        let sum = self.reduce(ReduceKind::Sum, exp, Some(vec![1]), true, "sum_exp")?;
        let log_sum = self.node(Op::Unary(UnaryOp::Log), vec![Some(sum)], "log_sum_exp")?;
        let lse = self.binary(BinaryOp::Add, max, log_sum, "lse")?;
        let log_prob = self.node_into(
            Op::Binary(BinaryOp::Sub),
            vec![Some(logits), Some(lse)],
            "log_prob",
            log_prob_out,
        )?;

        // -w_y·log_prob_y per sample, and w_y itself (0 where ignored): NLL
        // of an all -1 tensor.
        let nll = self.nll(log_prob, labels, weight, loss, "nll")?;
        let shape = self.node(
            Op::Shape {
                start: 0,
                end: None,
            },
            vec![Some(logits)],
            "shape",
        )?;
        let minus_one = Tensor::from_f64s(dtype, &[1], &[-1.0]);
        let minus_ones = self.node(
            Op::ConstantOfShape {
                value: Some(minus_one),
            },
            vec![Some(shape)],
            "minus_ones",
        )?;
        let sample_weight = self.nll(minus_ones, labels, weight, loss, "sample_weight")?;

        let mut terms = Vec::new();
        let eps = f64::from(loss.label_smoothing);
        if eps != 0.0 {
            let keep = self.constant(scalar(1.0 - eps), "one_minus_smoothing")?;
            terms.push(self.binary(BinaryOp::Mul, nll, keep, "nll_scaled")?);
        } else {
            terms.push(nll);
        }
        if loss.z_loss != 0.0 {
            let axis = self.constant(Tensor::from_i64s(DType::I64, &[1], &[1]), "class_axis")?;
            let lse_flat = self.node(Op::Squeeze, vec![Some(lse), Some(axis)], "lse_per_sample")?;
            let square = self.binary(BinaryOp::Mul, lse_flat, lse_flat, "lse_squared")?;
            let weighted =
                self.binary(BinaryOp::Mul, square, sample_weight, "lse_squared_weighted")?;
            let zeta = self.constant(scalar(f64::from(loss.z_loss)), "z_loss")?;
            terms.push(self.binary(BinaryOp::Mul, weighted, zeta, "z_term")?);
        }
        if eps != 0.0 {
            // Σ_c w_c·log_prob_c, with the class weight broadcast along axis 1.
            let weighted = match weight {
                None => log_prob,
                Some(w) => {
                    let w = if rank > 2 {
                        let axes: Vec<i64> = (1..rank as i64 - 1).collect();
                        let axes = self.constant(
                            Tensor::from_i64s(DType::I64, &[axes.len()], &axes),
                            "weight_axes",
                        )?;
                        self.node(Op::Unsqueeze, vec![Some(w), Some(axes)], "class_weight")?
                    } else {
                        w
                    };
                    self.binary(BinaryOp::Mul, log_prob, w, "weighted_log_prob")?
                }
            };
            let total = self.reduce(
                ReduceKind::Sum,
                weighted,
                Some(vec![1]),
                false,
                "sum_log_prob",
            )?;
            // Ignored samples get no smoothing term: mask by "counted", which
            // is w_y without a class weight and an unweighted NLL with one.
            let counted = match weight {
                None => sample_weight,
                Some(_) => self.nll(minus_ones, labels, None, loss, "counted")?,
            };
            let masked = self.binary(BinaryOp::Mul, total, counted, "sum_log_prob_counted")?;
            let classes = self.node(
                Op::Shape {
                    start: 1,
                    end: Some(2),
                },
                vec![Some(logits)],
                "classes",
            )?;
            let classes = self.node(
                Op::Cast {
                    to: dtype,
                    saturate: true,
                },
                vec![Some(classes)],
                "classes_float",
            )?;
            let minus_eps = self.constant(scalar(-eps), "minus_smoothing")?;
            let scaled = self.binary(BinaryOp::Mul, masked, minus_eps, "smoothing_sum")?;
            terms.push(self.binary(BinaryOp::Div, scaled, classes, "smoothing_term")?);
        }

        // Two terms at least, since smoothing or z-loss is on.
        let last = terms.len() - 1;
        let mut per_sample = terms[0];
        for (k, &t) in terms.iter().enumerate().skip(1) {
            let out = if k == last && loss.reduction == LossReduction::None {
                loss_out
            } else {
                None
            };
            per_sample = self.node_into(
                Op::Binary(BinaryOp::Add),
                vec![Some(per_sample), Some(t)],
                "per_sample",
                out,
            )?;
        }
        match loss.reduction {
            LossReduction::None => {}
            LossReduction::Sum => {
                self.node_into(
                    Op::Reduce {
                        kind: ReduceKind::Sum,
                        axes: None,
                        keepdims: false,
                        noop_with_empty_axes: false,
                    },
                    vec![Some(per_sample)],
                    "loss",
                    loss_out,
                )?;
            }
            LossReduction::Mean => {
                let total = self.reduce(ReduceKind::Sum, per_sample, None, false, "loss_sum")?;
                let count =
                    self.reduce(ReduceKind::Sum, sample_weight, None, false, "weight_sum")?;
                self.node_into(
                    Op::Binary(BinaryOp::Div),
                    vec![Some(total), Some(count)],
                    "loss",
                    loss_out,
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_ir::types::TensorType;

    #[test]
    fn graph_without_kiln_ops_is_unchanged() {
        let mut g = Graph::new("g");
        let x = g
            .add_input("x", TensorType::fixed(DType::F32, &[2, 3]))
            .unwrap();
        let n = g
            .add_node("r", Op::Unary(UnaryOp::Relu), vec![Some(x)], &["y"])
            .unwrap();
        g.add_output(g.node(n).output(0).unwrap());
        kiln_ir::infer_types(&mut g).unwrap();
        let p = to_portable(&g).unwrap();
        assert_eq!(kiln_ir::print_graph(&p), kiln_ir::print_graph(&g));
    }
}
