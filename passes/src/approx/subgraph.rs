//! Building replacement subgraphs: a small node builder, and the layout
//! every kind works in.
//!
//! Each kind computes on per-head tensors `[.., S, D]` whose leading axes
//! are `[B, H]` (rank 4) or, with grouped-query heads, `[B, Hkv, G, S, D]`
//! for the queries and `[B, Hkv, 1, S, D]` for keys and values (rank 5).
//! MatMul's batch broadcasting then shares each key/value head between its
//! `G` query heads without copying K or V, and every axis a kind touches is
//! addressed from the end (`-1` features, `-2` sequence), so one kernel
//! body serves both ranks.

use kiln_ir::dim::Dim;
use kiln_ir::dtype::DType;
use kiln_ir::graph::{Graph, NodeId, ValueId};
use kiln_ir::op::{AttentionAttrs, BinaryOp, Op, ReduceKind, UnaryOp};
use kiln_ir::tensor::Tensor;
use kiln_ir::types::TensorType;
use kiln_ir::{IrError, Result};

/// Adds nodes and constants for one replacement, named after the Attention
/// node it replaces so the printed graph shows where each piece came from.
pub(crate) struct Builder<'g> {
    pub(crate) g: &'g mut Graph,
    prefix: String,
    /// The float type the subgraph computes in (Q's).
    pub(crate) dtype: DType,
    /// The value the last node must produce instead of a fresh one: the
    /// replaced node's output, so its readers and the graph outputs keep it.
    pub(crate) result: Option<ValueId>,
}

impl<'g> Builder<'g> {
    pub(crate) fn new(g: &'g mut Graph, prefix: &str, dtype: DType) -> Builder<'g> {
        Builder {
            g,
            prefix: prefix.to_string(),
            dtype,
            result: None,
        }
    }

    fn name(&self, hint: &str) -> String {
        self.g.fresh_value_name(&format!("{}.{hint}", self.prefix))
    }

    /// A node with one output.
    pub(crate) fn op(&mut self, op: Op, inputs: &[ValueId], hint: &str) -> Result<ValueId> {
        self.op_opt(op, inputs.iter().map(|&v| Some(v)).collect(), hint)
    }

    /// A node with one output and possibly omitted inputs.
    pub(crate) fn op_opt(
        &mut self,
        op: Op,
        inputs: Vec<Option<ValueId>>,
        hint: &str,
    ) -> Result<ValueId> {
        let name = self.name(hint);
        let node = self
            .g
            .add_node(name.clone(), op, inputs, &[name.as_str()])?;
        Ok(self
            .g
            .node(node)
            .output(0)
            .expect("the node was given one output"))
    }

    /// A node with `outputs` outputs, of which only the first is returned.
    pub(crate) fn op_multi(
        &mut self,
        op: Op,
        inputs: Vec<Option<ValueId>>,
        hint: &str,
        outputs: usize,
    ) -> Result<ValueId> {
        let names: Vec<String> = (0..outputs)
            .map(|i| {
                if i == 0 {
                    self.name(hint)
                } else {
                    self.name(&format!("{hint}.out{i}"))
                }
            })
            .collect();
        // Reserve each name before the next is made, so they differ.
        let mut ids = Vec::with_capacity(outputs);
        for n in &names {
            ids.push(Some(self.g.add_value(n.clone(), None)?));
        }
        let node = self
            .g
            .add_node_with_outputs(names[0].clone(), op, inputs, ids)?;
        Ok(self
            .g
            .node(node)
            .output(0)
            .expect("the node was given outputs"))
    }

    /// The final node: it produces the replaced node's output value.
    pub(crate) fn finish(&mut self, op: Op, inputs: &[ValueId], hint: &str) -> Result<NodeId> {
        let result = self
            .result
            .take()
            .expect("finish is called once, with a result value set");
        let name = self.g.fresh_node_name(&format!("{}.{hint}", self.prefix));
        self.g.add_node_with_outputs(
            name,
            op,
            inputs.iter().map(|&v| Some(v)).collect(),
            vec![Some(result)],
        )
    }

    /// A constant tensor.
    pub(crate) fn constant(&mut self, t: Tensor, hint: &str) -> Result<ValueId> {
        let name = self.name(hint);
        self.g.add_initializer(name, t)
    }

    /// A 1-D i64 constant (shapes, axes, permutations).
    pub(crate) fn ints(&mut self, values: &[i64], hint: &str) -> Result<ValueId> {
        let name = self.name(hint);
        self.g.add_initializer(name, Tensor::vec_i64(values))
    }

    /// A constant of the compute dtype and the given shape.
    pub(crate) fn float_const(
        &mut self,
        values: &[f64],
        shape: &[usize],
        hint: &str,
    ) -> Result<ValueId> {
        let name = self.name(hint);
        self.g
            .add_initializer(name, Tensor::from_f64s(self.dtype, shape, values))
    }

    /// A scalar of the compute dtype.
    pub(crate) fn scalar(&mut self, v: f64, hint: &str) -> Result<ValueId> {
        self.float_const(&[v], &[], hint)
    }

    pub(crate) fn unary(&mut self, u: UnaryOp, x: ValueId, hint: &str) -> Result<ValueId> {
        self.op(Op::Unary(u), &[x], hint)
    }

    pub(crate) fn binary(
        &mut self,
        b: BinaryOp,
        x: ValueId,
        y: ValueId,
        hint: &str,
    ) -> Result<ValueId> {
        self.op(Op::Binary(b), &[x, y], hint)
    }

    pub(crate) fn matmul(&mut self, x: ValueId, y: ValueId, hint: &str) -> Result<ValueId> {
        self.op(Op::MatMul, &[x, y], hint)
    }

    pub(crate) fn reshape(&mut self, x: ValueId, shape: &[i64], hint: &str) -> Result<ValueId> {
        let s = self.ints(shape, &format!("{hint}.shape"))?;
        self.op(Op::Reshape { allowzero: false }, &[x, s], hint)
    }

    pub(crate) fn transpose(&mut self, x: ValueId, perm: &[i64], hint: &str) -> Result<ValueId> {
        self.op(
            Op::Transpose {
                perm: Some(perm.to_vec()),
            },
            &[x],
            hint,
        )
    }

    /// Swaps the last two axes of a rank-`rank` tensor.
    pub(crate) fn swap_last(&mut self, x: ValueId, rank: usize, hint: &str) -> Result<ValueId> {
        let mut perm: Vec<i64> = (0..rank as i64).collect();
        perm.swap(rank - 1, rank - 2);
        self.transpose(x, &perm, hint)
    }

    pub(crate) fn unsqueeze(&mut self, x: ValueId, axes: &[i64], hint: &str) -> Result<ValueId> {
        let a = self.ints(axes, &format!("{hint}.axes"))?;
        self.op(Op::Unsqueeze, &[x, a], hint)
    }

    pub(crate) fn squeeze(&mut self, x: ValueId, axes: &[i64], hint: &str) -> Result<ValueId> {
        let a = self.ints(axes, &format!("{hint}.axes"))?;
        self.op(Op::Squeeze, &[x, a], hint)
    }

    pub(crate) fn reduce(
        &mut self,
        kind: ReduceKind,
        x: ValueId,
        axes: &[i64],
        hint: &str,
    ) -> Result<ValueId> {
        let a = self.ints(axes, &format!("{hint}.axes"))?;
        self.op(
            Op::Reduce {
                kind,
                axes: None,
                keepdims: true,
                noop_with_empty_axes: false,
            },
            &[x, a],
            hint,
        )
    }

    pub(crate) fn cumsum(&mut self, x: ValueId, axis: i64, hint: &str) -> Result<ValueId> {
        let a = self.ints(&[axis], &format!("{hint}.axis"))?;
        self.op(
            Op::CumSum {
                exclusive: false,
                reverse: false,
            },
            &[x, a],
            hint,
        )
    }

    /// Multiplies by a scalar constant, skipping a multiplication by one.
    pub(crate) fn scale(&mut self, x: ValueId, factor: f64, hint: &str) -> Result<ValueId> {
        if factor == 1.0 {
            return Ok(x);
        }
        let c = self.scalar(factor, &format!("{hint}.factor"))?;
        self.binary(BinaryOp::Mul, x, c, hint)
    }

    /// The size of axis `axis` (negative counts from the end) of `x` as a
    /// 1-element tensor of the compute dtype, read at run time so the
    /// subgraph stays right when the sequence length changes.
    pub(crate) fn dim_as_float(&mut self, x: ValueId, axis: i64, hint: &str) -> Result<ValueId> {
        let end = if axis == -1 { None } else { Some(axis + 1) };
        let shape = self.op(
            Op::Shape { start: axis, end },
            &[x],
            &format!("{hint}.shape"),
        )?;
        let dtype = self.dtype;
        self.op(
            Op::Cast {
                to: dtype,
                saturate: true,
            },
            &[shape],
            hint,
        )
    }
}

/// Q, K and V of one Attention node in the per-head layout (module docs).
pub(crate) struct Heads {
    pub(crate) q: ValueId,
    pub(crate) k: ValueId,
    pub(crate) v: ValueId,
    /// 4, or 5 with grouped-query heads.
    pub(crate) rank: usize,
    /// The additive mask in a shape that broadcasts against the per-head
    /// scores `[.., Sq, Skv]`, with booleans turned into 0 / -inf.
    pub(crate) mask: Option<ValueId>,
    /// The rank of `mask` as placed.
    pub(crate) mask_rank: usize,
}

/// What the kinds need to know about one Attention node.
pub(crate) struct Site {
    pub(crate) attrs: AttentionAttrs,
    pub(crate) three_d: bool,
    pub(crate) q_heads: i64,
    pub(crate) kv_heads: i64,
    pub(crate) head_dim: Dim,
    pub(crate) v_head_dim: Dim,
    pub(crate) q_len: Dim,
    pub(crate) kv_len: Dim,
    pub(crate) dtype: DType,
    /// The scale of QKᵀ: the attribute, else `1/sqrt(head_dim)`.
    pub(crate) scale: f64,
    pub(crate) q: ValueId,
    pub(crate) k: ValueId,
    pub(crate) v: ValueId,
    pub(crate) mask: Option<ValueId>,
    pub(crate) mask_ty: Option<TensorType>,
}

/// Why a node is left exact: a reason for the report.
pub(crate) type Skip = String;

impl Site {
    /// Reads an Attention node, or says why no approximate kind can stand in
    /// for it.
    pub(crate) fn read(g: &Graph, node: NodeId) -> Result<std::result::Result<Site, Skip>> {
        let n = g.node(node);
        let Op::Attention(attrs) = &n.op else {
            return Ok(Err("not an Attention node".into()));
        };
        let attrs = *attrs;
        if n.input(4).is_some() || n.input(5).is_some() {
            return Ok(Err("it reads a past key/value cache (decoding); approximate kinds replace whole-sequence attention only".into()));
        }
        if n.input(6).is_some() {
            return Ok(Err("it has nonpad_kv_seqlen".into()));
        }
        if attrs.softcap != 0.0 {
            return Ok(Err(format!(
                "softcap {} has no counterpart in the approximate kinds",
                attrs.softcap
            )));
        }
        for slot in 1..n.outputs.len() {
            if let Some(o) = n.output(slot) {
                if !g.value(o).uses().is_empty() || g.outputs().contains(&o) {
                    return Ok(Err(format!(
                        "its output {slot} (`{}`) is used; only Y has a replacement",
                        g.value(o).name
                    )));
                }
            }
        }
        let (Some(q), Some(k), Some(v)) = (n.input(0), n.input(1), n.input(2)) else {
            return Err(IrError::node(
                &n.name,
                "Attention",
                "Q, K and V are required",
            ));
        };
        let (qt, kt, vt) = (g.ty(q)?.clone(), g.ty(k)?.clone(), g.ty(v)?.clone());
        if !qt.dtype.is_float() {
            return Ok(Err(format!(
                "Q has type {qt}; the kinds compute in floating point"
            )));
        }
        let three_d = qt.rank() == 3;
        let heads_of = |t: &TensorType,
                        attr: Option<i64>,
                        what: &str|
         -> std::result::Result<(i64, Dim, Dim), Skip> {
            if t.rank() == 4 {
                let h = t.shape[1]
                    .fixed()
                    .ok_or_else(|| format!("{what} has a symbolic head count {}", t.shape[1]))?;
                return Ok((h as i64, t.shape[2].clone(), t.shape[3].clone()));
            }
            let h =
                attr.ok_or_else(|| format!("{what} is 3-D without its head-count attribute"))?;
            let hidden = t.shape[2]
                .fixed()
                .ok_or_else(|| format!("{what} has a symbolic hidden size {}", t.shape[2]))?;
            if h <= 0 || hidden % h as u64 != 0 {
                return Err(format!(
                    "{what}'s hidden size {hidden} does not split into {h} heads"
                ));
            }
            Ok((h, t.shape[1].clone(), Dim::Fixed(hidden / h as u64)))
        };
        let (q_heads, q_len, head_dim) = match heads_of(&qt, attrs.q_num_heads, "Q") {
            Ok(x) => x,
            Err(s) => return Ok(Err(s)),
        };
        let (kv_heads, kv_len, _) = match heads_of(&kt, attrs.kv_num_heads, "K") {
            Ok(x) => x,
            Err(s) => return Ok(Err(s)),
        };
        let (_, _, v_head_dim) = match heads_of(&vt, attrs.kv_num_heads, "V") {
            Ok(x) => x,
            Err(s) => return Ok(Err(s)),
        };
        if kv_heads <= 0 || q_heads % kv_heads != 0 {
            return Ok(Err(format!(
                "{q_heads} query heads do not share {kv_heads} key/value heads evenly"
            )));
        }
        let scale = match (attrs.scale, head_dim.fixed()) {
            (Some(s), _) => s as f64,
            (None, Some(d)) if d > 0 => 1.0 / (d as f64).sqrt(),
            (None, _) => {
                return Ok(Err(format!(
                    "the default scale needs a static head size, found {head_dim}"
                )))
            }
        };
        let group = q_heads / kv_heads;
        if group > 1 && !three_d && (head_dim.fixed().is_none() || v_head_dim.fixed().is_none()) {
            return Ok(Err(
                "grouped-query heads in 4-D need static head sizes".into()
            ));
        }
        let mask = n.input(3);
        let mask_ty = match mask {
            Some(m) => Some(g.ty(m)?.clone()),
            None => None,
        };
        if let Some(mt) = &mask_ty {
            if let Some(last) = mt.shape.last() {
                let same = last == &kv_len || last.fixed() == Some(1);
                if !same {
                    return Ok(Err(format!(
                        "attn_mask's last dim {last} is not the key length {kv_len} (ONNX pads a shorter mask with -inf; not reproduced)"
                    )));
                }
            }
        }
        Ok(Ok(Site {
            attrs,
            three_d,
            q_heads,
            kv_heads,
            head_dim,
            v_head_dim,
            q_len,
            kv_len,
            dtype: qt.dtype,
            scale,
            q,
            k,
            v,
            mask,
            mask_ty,
        }))
    }

    /// The query and key lengths are provably equal, which the prefix-sum
    /// forms of causal attention need.
    pub(crate) fn self_attention(&self) -> bool {
        self.q_len == self.kv_len
    }

    /// Every query row shares one mask row (a key-padding mask): the
    /// mask's query axis, second to last, has size 1.
    pub(crate) fn mask_is_key_only(&self) -> bool {
        self.mask_ty
            .as_ref()
            .is_some_and(|mt| mt.rank() < 2 || mt.shape[mt.rank() - 2].fixed() == Some(1))
    }

    /// Why the mask cannot be laid out per head, if it cannot: with
    /// grouped-query heads the mask must be shared by all heads.
    pub(crate) fn mask_skip(&self) -> Option<Skip> {
        let mt = self.mask_ty.as_ref()?;
        let r = mt.rank();
        let head_axis = if r >= 3 {
            mt.shape[r - 3].fixed()
        } else {
            Some(1)
        };
        (self.q_heads > self.kv_heads && head_axis != Some(1))
            .then(|| "a per-head attn_mask with grouped-query heads is not supported".into())
    }

    /// The per-head layout of Q, K, V and the mask.
    pub(crate) fn heads(&self, b: &mut Builder) -> Result<Heads> {
        let group = self.q_heads / self.kv_heads;
        let rank = if group > 1 { 5 } else { 4 };
        let q = if self.three_d {
            if group > 1 {
                let r = b.reshape(self.q, &[0, 0, self.kv_heads, group, -1], "q.split")?;
                b.transpose(r, &[0, 2, 3, 1, 4], "q.heads")?
            } else {
                let r = b.reshape(self.q, &[0, 0, self.q_heads, -1], "q.split")?;
                b.transpose(r, &[0, 2, 1, 3], "q.heads")?
            }
        } else if group > 1 {
            let d = self.head_dim.fixed().expect("checked in read") as i64;
            b.reshape(self.q, &[0, self.kv_heads, group, -1, d], "q.heads")?
        } else {
            self.q
        };
        let mut kv = |x: ValueId, hint: &str| -> Result<ValueId> {
            let per_head = if self.three_d {
                let r = b.reshape(x, &[0, 0, self.kv_heads, -1], &format!("{hint}.split"))?;
                b.transpose(r, &[0, 2, 1, 3], &format!("{hint}.heads"))?
            } else {
                x
            };
            if group > 1 {
                b.unsqueeze(per_head, &[2], &format!("{hint}.group"))
            } else {
                Ok(per_head)
            }
        };
        let k = kv(self.k, "k")?;
        let v = kv(self.v, "v")?;
        let (mask, mask_rank) = match (self.mask, &self.mask_ty) {
            (Some(m), Some(mt)) => {
                let additive = if mt.dtype == DType::Bool {
                    let zero = b.scalar(0.0, "mask.keep")?;
                    let minus_inf = b.scalar(f64::NEG_INFINITY, "mask.drop")?;
                    b.op(Op::Where, &[m, zero, minus_inf], "mask.additive")?
                } else {
                    m
                };
                let r = mt.rank();
                let mut placed_rank = r;
                let placed = if rank == 5 {
                    if r == 4 {
                        placed_rank = 5;
                        b.unsqueeze(additive, &[1], "mask.group")?
                    } else {
                        additive
                    }
                } else {
                    additive
                };
                (Some(placed), placed_rank)
            }
            _ => (None, 0),
        };
        Ok(Heads {
            q,
            k,
            v,
            rank,
            mask,
            mask_rank,
        })
    }

    /// Turns a per-head result `[.., Sq, Dv]` back into Attention's Y layout
    /// with the final node producing the replaced output.
    pub(crate) fn unheads(&self, b: &mut Builder, y: ValueId, heads: &Heads) -> Result<()> {
        if self.three_d {
            let perm: &[i64] = if heads.rank == 5 {
                &[0, 3, 1, 2, 4]
            } else {
                &[0, 2, 1, 3]
            };
            let t = b.transpose(y, perm, "y.tokens")?;
            let s = b.ints(&[0, 0, -1], "y.shape")?;
            b.finish(Op::Reshape { allowzero: false }, &[t, s], "y")?;
        } else if heads.rank == 5 {
            let dv = self.v_head_dim.fixed().expect("checked in read") as i64;
            let s = b.ints(&[0, self.q_heads, -1, dv], "y.shape")?;
            b.finish(Op::Reshape { allowzero: false }, &[y, s], "y")?;
        } else {
            b.finish(Op::Identity, &[y], "y")?;
        }
        Ok(())
    }
}

/// The 0/1 lower-triangular causal matrix `[Sq, Skv]` (key `j` visible to
/// query `i` when `j <= i`, ONNX's alignment without a cache), shaped at run
/// time from the scores.
pub(crate) fn causal_matrix(b: &mut Builder, scores: ValueId) -> Result<ValueId> {
    let shape = b.op(
        Op::Shape {
            start: -2,
            end: None,
        },
        &[scores],
        "causal.shape",
    )?;
    let one = Tensor::from_f64s(b.dtype, &[1], &[1.0]);
    let ones = b.op(
        Op::ConstantOfShape { value: Some(one) },
        &[shape],
        "causal.ones",
    )?;
    b.op(Op::Trilu { upper: false }, &[ones], "causal")
}

/// `s·QKᵀ` per head, plus the additive mask when there is one.
pub(crate) fn scores(
    b: &mut Builder,
    site: &Site,
    heads: &Heads,
    with_mask: bool,
) -> Result<ValueId> {
    let kt = b.swap_last(heads.k, heads.rank, "k.t")?;
    let qk = b.matmul(heads.q, kt, "qk")?;
    let scaled = b.scale(qk, site.scale, "scores")?;
    match (with_mask, heads.mask) {
        (true, Some(m)) => b.binary(BinaryOp::Add, scaled, m, "scores.masked"),
        _ => Ok(scaled),
    }
}
