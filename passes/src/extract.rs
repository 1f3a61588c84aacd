//! DAG-aware extraction: pick one e-node per class so that the graph built
//! from the outputs costs least, counting every shared node once.
//!
//! egg's [`egg::Extractor`] minimizes tree cost: a class used twice is paid
//! twice, so it prefers recomputing a cheap expression over sharing an
//! expensive one, and duplicates shared work. `egg::LpExtractor` is exact
//! but needs a C solver (CBC), which kiln does not want as a dependency.
//! This module does what tensat and extraction-gym's "greedy DAG" extractor
//! do: each class remembers the *set* of classes its best choice needs, and
//! the cost of a candidate node is its own cost plus the costs of the union
//! of its children's sets, each class counted once. A class whose best
//! choice improves puts its parents back on the worklist, until nothing
//! improves (a fixpoint; each class's recorded cost only ever decreases, and
//! a cap on evaluations bounds the work on pathological e-graphs).
//!
//! Sets are bitsets over a dense numbering of the classes, so a union is a
//! word-wise OR. A candidate whose children's sets contain its own class
//! would make a cycle and is skipped. The final choice is checked again
//! from the roots; a cycle there (which the set invariant rules out) is an
//! error rather than a hang.
//!
//! Ties go to the first node in the class's (sorted) node list, so the
//! result is the same on every run.

use crate::analysis::KilnEGraph;
use crate::lang::KilnLang;
use egg::{Id, Language};
use kiln_ir::error::{IrError, Result};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// The cost of one e-node in class `class`; `f64::INFINITY` forbids it.
pub type NodeCostFn<'a> = dyn Fn(&KilnEGraph, Id, &KilnLang) -> f64 + 'a;

/// The chosen node of every class reachable from the roots.
#[derive(Clone, Debug)]
pub struct Extraction {
    choices: BTreeMap<Id, KilnLang>,
    /// Total cost of the chosen DAG (each chosen node counted once).
    pub cost: f64,
}

impl Extraction {
    /// The node chosen for a canonical class id, if the class is reachable.
    pub fn choice(&self, class: Id) -> Option<&KilnLang> {
        self.choices.get(&class)
    }

    /// Every reachable class with its choice, in id order.
    pub fn choices(&self) -> impl Iterator<Item = (Id, &KilnLang)> {
        self.choices.iter().map(|(i, n)| (*i, n))
    }
}

#[derive(Clone)]
struct BitSet(Vec<u64>);

impl BitSet {
    fn new(n: usize) -> BitSet {
        BitSet(vec![0; n.div_ceil(64)])
    }
    fn insert(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn contains(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    fn union_with(&mut self, o: &BitSet) {
        for (a, b) in self.0.iter_mut().zip(&o.0) {
            *a |= b;
        }
    }
    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(w, &bits)| {
            let mut b = bits;
            std::iter::from_fn(move || {
                if b == 0 {
                    return None;
                }
                let t = b.trailing_zeros() as usize;
                b &= b - 1;
                Some(w * 64 + t)
            })
        })
    }
}

struct Best {
    node: usize,
    total: f64,
    set: BitSet,
}

/// Chooses a node per class for the DAG reachable from `roots`, minimizing
/// the summed cost of distinct chosen nodes (greedily; see the module
/// docs). The e-graph must be rebuilt (clean).
pub fn extract_dag(egraph: &KilnEGraph, roots: &[Id], cost: &NodeCostFn) -> Result<Extraction> {
    let mut classes: Vec<Id> = egraph.classes().map(|c| c.id).collect();
    classes.sort_unstable();
    let index: HashMap<Id, usize> = classes.iter().enumerate().map(|(i, &c)| (c, i)).collect();
    let n = classes.len();
    let nodes: Vec<&[KilnLang]> = classes
        .iter()
        .map(|&c| egraph[c].nodes.as_slice())
        .collect();
    let node_costs: Vec<Vec<f64>> = classes
        .iter()
        .zip(&nodes)
        .map(|(&c, ns)| ns.iter().map(|node| cost(egraph, c, node)).collect())
        .collect();
    let child_idx = |node: &KilnLang| -> Vec<usize> {
        let mut v: Vec<usize> = node
            .children()
            .iter()
            .map(|c| index[&egraph.find(*c)])
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let mut parents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (ci, ns) in nodes.iter().enumerate() {
        for node in ns.iter() {
            for cj in child_idx(node) {
                parents[cj].push(ci);
            }
        }
    }
    for p in &mut parents {
        p.sort_unstable();
        p.dedup();
    }

    let mut best: Vec<Option<Best>> = (0..n).map(|_| None).collect();
    let mut chosen_cost = vec![0.0f64; n];
    let mut queue: VecDeque<usize> = (0..n).collect();
    let mut queued = vec![true; n];
    // Each evaluation strictly lowers some class's cost; the cap only guards
    // against float noise making that chain very long.
    let total_nodes: usize = nodes.iter().map(|ns| ns.len()).sum();
    let mut budget = total_nodes.saturating_mul(64).max(1 << 16);
    while let Some(ci) = queue.pop_front() {
        queued[ci] = false;
        let mut improved = false;
        for (k, node) in nodes[ci].iter().enumerate() {
            let own = node_costs[ci][k];
            if !own.is_finite() {
                continue;
            }
            if budget == 0 {
                break;
            }
            budget -= 1;
            let children = child_idx(node);
            let mut ready = true;
            for &cj in &children {
                match &best[cj] {
                    Some(b) if cj != ci && !b.set.contains(ci) => {}
                    _ => {
                        ready = false;
                        break;
                    }
                }
            }
            if !ready {
                continue;
            }
            let mut set = BitSet::new(n);
            for &cj in &children {
                set.union_with(&best[cj].as_ref().expect("checked ready").set);
            }
            let total = own + set.iter().map(|j| chosen_cost[j]).sum::<f64>();
            set.insert(ci);
            let better = match &best[ci] {
                None => true,
                Some(b) => total < b.total - 1e-9 * b.total.abs().max(1.0),
            };
            if better {
                best[ci] = Some(Best {
                    node: k,
                    total,
                    set,
                });
                chosen_cost[ci] = own;
                improved = true;
            }
        }
        if improved {
            for &p in &parents[ci] {
                if !queued[p] {
                    queued[p] = true;
                    queue.push_back(p);
                }
            }
        }
    }

    // Walk the choice from the roots; check it is complete and acyclic.
    let mut choices = BTreeMap::new();
    let mut state = vec![0u8; n]; // 0 unseen, 1 on stack, 2 done
    let mut total = 0.0;
    for &root in roots {
        let r = *index
            .get(&egraph.find(root))
            .ok_or_else(|| IrError::Model(format!("extraction root {root} is not an e-class")))?;
        let mut stack: Vec<(usize, bool)> = vec![(r, false)];
        while let Some((ci, expanded)) = stack.pop() {
            if expanded {
                state[ci] = 2;
                continue;
            }
            match state[ci] {
                2 => continue,
                1 => {
                    return Err(IrError::Model(
                        "extraction chose a cycle (a bug in the extractor)".into(),
                    ))
                }
                _ => {}
            }
            let b = best[ci].as_ref().ok_or_else(|| {
                IrError::Model(format!(
                    "no e-node of class {} has a finite cost (every candidate is untyped or cyclic)",
                    classes[ci]
                ))
            })?;
            state[ci] = 1;
            let node = &nodes[ci][b.node];
            total += node_costs[ci][b.node];
            choices.insert(classes[ci], node.clone());
            stack.push((ci, true));
            for cj in child_idx(node).into_iter().rev() {
                match state[cj] {
                    1 => {
                        return Err(IrError::Model(
                            "extraction chose a cycle (a bug in the extractor)".into(),
                        ))
                    }
                    0 => stack.push((cj, false)),
                    _ => {}
                }
            }
        }
    }
    Ok(Extraction {
        choices,
        cost: total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::TypeAnalysis;
    use kiln_ir::dtype::DType;
    use kiln_ir::op::{BinaryOp, Op, UnaryOp};
    use kiln_ir::types::TensorType;

    fn unit_cost(n: &KilnLang) -> f64 {
        match n.as_op() {
            Some(Op::Unary(UnaryOp::Exp)) => 10.0,
            Some(Op::Unary(UnaryOp::Cos)) => 15.0,
            Some(_) => 1.0,
            None => 0.0,
        }
    }

    /// `Add(Neg(e), Abs(e))` with `e = Exp(x)` costs 13 as a DAG but 23 as a
    /// tree (e counted twice); its alternative `Cos(x)` costs 15. Tree cost
    /// picks Cos, DAG cost keeps the shared Exp.
    #[test]
    fn shared_work_is_counted_once() {
        let mut eg = KilnEGraph::new(TypeAnalysis::default());
        eg.analysis
            .inputs
            .insert("x".into(), TensorType::fixed(DType::F32, &[4]));
        let x = eg.add(KilnLang::Input("x".into()));
        let e = eg.add(KilnLang::op(Op::Unary(UnaryOp::Exp), vec![x]));
        let a = eg.add(KilnLang::op(Op::Unary(UnaryOp::Neg), vec![e]));
        let b = eg.add(KilnLang::op(Op::Unary(UnaryOp::Abs), vec![e]));
        let sum = eg.add(KilnLang::op(Op::Binary(BinaryOp::Add), vec![a, b]));
        let alt = eg.add(KilnLang::op(Op::Unary(UnaryOp::Cos), vec![x]));
        eg.union(sum, alt);
        eg.rebuild();
        let ex = extract_dag(&eg, &[sum], &|_: &KilnEGraph, _: Id, n: &KilnLang| {
            unit_cost(n)
        })
        .unwrap();
        assert_eq!(ex.cost, 13.0);
        assert_eq!(
            ex.choice(eg.find(sum)).and_then(|n| n.as_op()),
            Some(&Op::Binary(BinaryOp::Add))
        );
        let (tree_cost, tree_best) = egg::Extractor::new(&eg, TreeCost).find_best(eg.find(sum));
        assert_eq!(
            tree_cost, 15.0,
            "egg's tree extractor pays Exp twice: {tree_best}"
        );
    }

    struct TreeCost;
    impl egg::CostFunction<KilnLang> for TreeCost {
        type Cost = f64;
        fn cost<C: FnMut(Id) -> f64>(&mut self, enode: &KilnLang, mut costs: C) -> f64 {
            enode.fold(unit_cost(enode), |acc, c| acc + costs(c))
        }
    }

    #[test]
    fn cyclic_choice_is_avoided() {
        let mut eg = KilnEGraph::new(TypeAnalysis::default());
        eg.analysis
            .inputs
            .insert("x".into(), TensorType::fixed(DType::F32, &[4]));
        let x = eg.add(KilnLang::Input("x".into()));
        let id = eg.add(KilnLang::op(Op::Identity, vec![x]));
        eg.union(id, x);
        eg.rebuild();
        let cost =
            |_: &KilnEGraph, _: Id, n: &KilnLang| if n.as_op().is_some() { 1.0 } else { 5.0 };
        let ex = extract_dag(&eg, &[id], &cost).unwrap();
        assert_eq!(
            ex.choice(eg.find(x)),
            Some(&KilnLang::Input("x".into())),
            "Identity(self) is a cycle"
        );
    }
}
