//! Rewrite rules, grouped by topic, and the adapter that runs them in egg.
//!
//! Attributes live inside e-nodes, so egg's string patterns (which compare
//! operators exactly) cannot say "any Transpose". A kiln rule is Rust code
//! instead: [`Rule::search`] walks the classes that hold its root op and
//! returns each match as the concrete left-hand side it found (a
//! [`PatternAst`] whose nodes carry their attributes and whose leaves are
//! variables bound to e-classes), and [`Rule::rewrite`] turns such a
//! left-hand side into the right-hand side. [`rewrites`] wraps rules as
//! [`egg::Rewrite`]s, so egg's runner, limits and explanations work
//! unchanged: the left-hand side travels as the match's pattern AST, which is
//! also what explanations print.
//!
//! Conventions (Cranelift's): a rule's right-hand side is never more
//! expensive than its left-hand side under any cost model, conditions on
//! shapes and constants read the analysis, and there are no blanket
//! commutativity or associativity rules (they blow up the e-graph for no
//! gain on these graphs).

pub mod algebra;
pub mod attention;
pub mod loss;
pub mod loss_linear;
pub mod softmax;

use crate::analysis::{ClassType, KilnEGraph};
use crate::lang::{Disc, KilnLang};
use egg::{ENodeOrVar, Id, Language, PatternAst, SearchMatches, Subst, Symbol, Var};
use kiln_ir::op::Op;
use std::borrow::Cow;
use std::sync::{Arc, Mutex};

/// One match of a rule: the left-hand side as found, and the classes its
/// variables stand for.
#[derive(Clone, Debug)]
pub struct Match {
    /// The concrete left-hand side; its last node is the root.
    pub lhs: PatternAst<KilnLang>,
    /// Bindings of the variables in `lhs`.
    pub subst: Subst,
}

/// Builds a [`Match`] (or a right-hand side) node by node.
#[derive(Default)]
pub struct AstBuilder {
    ast: PatternAst<KilnLang>,
    subst: Subst,
    next_var: u32,
}

impl AstBuilder {
    /// An empty builder.
    pub fn new() -> AstBuilder {
        AstBuilder::default()
    }

    /// A builder whose variables continue those of `m`, for right-hand
    /// sides that reuse the left-hand side's bindings.
    pub fn continuing(m: &Subst) -> AstBuilder {
        AstBuilder {
            ast: PatternAst::default(),
            subst: m.clone(),
            next_var: var_count(m),
        }
    }

    /// A leaf standing for class `class`; returns its index in the AST.
    pub fn class(&mut self, class: Id) -> Id {
        let v = Var::from_u32(self.next_var);
        self.next_var += 1;
        self.subst.insert(v, class);
        self.ast.add(ENodeOrVar::Var(v))
    }

    /// A leaf reusing variable `v` of the subst (for right-hand sides).
    pub fn var(&mut self, v: Var) -> Id {
        self.ast.add(ENodeOrVar::Var(v))
    }

    /// A node whose children are indices returned earlier.
    pub fn node(&mut self, n: KilnLang) -> Id {
        self.ast.add(ENodeOrVar::ENode(n))
    }

    /// Adds a copy of the e-node `node` whose first child is `first` (an
    /// index returned earlier) and whose other children are leaves for the
    /// classes `node` already points at: the usual root of a match that
    /// looks through the root's first input only.
    pub fn node_with_first_child(&mut self, node: &KilnLang, first: Id) -> Id {
        let mut kids = vec![first];
        kids.extend(node.children()[1..].iter().map(|&c| self.class(c)));
        let mut n = node.clone();
        n.children_mut().copy_from_slice(&kids);
        self.node(n)
    }

    /// The finished match; the last node added is the root.
    pub fn finish(self) -> Match {
        Match {
            lhs: self.ast,
            subst: self.subst,
        }
    }

    /// The finished AST alone (a right-hand side over the subst it
    /// continued).
    pub fn into_ast(self) -> PatternAst<KilnLang> {
        self.ast
    }
}

fn var_count(s: &Subst) -> u32 {
    // Variables are numbered densely from 0 by the builder.
    (0..u32::MAX)
        .find(|&i| s.get(Var::from_u32(i)).is_none())
        .unwrap_or(u32::MAX)
}

/// The variable at index `i` of an AST, if that entry is a variable.
pub fn var_at(ast: &PatternAst<KilnLang>, i: Id) -> Option<Var> {
    match &ast[i] {
        ENodeOrVar::Var(v) => Some(*v),
        ENodeOrVar::ENode(_) => None,
    }
}

/// The node at index `i` of an AST, if that entry is a node.
pub fn node_at(ast: &PatternAst<KilnLang>, i: Id) -> Option<&KilnLang> {
    match &ast[i] {
        ENodeOrVar::ENode(n) => Some(n),
        ENodeOrVar::Var(_) => None,
    }
}

/// The root (last entry) of an AST.
pub fn root_of(ast: &PatternAst<KilnLang>) -> Id {
    Id::from(ast.as_ref().len() - 1)
}

/// The classes of each entry of a match's left-hand side, in AST order:
/// variables through the subst, nodes by looking up their (canonical)
/// instantiation. `None` for a node the e-graph does not hold, which cannot
/// happen for a match found by [`Rule::search`] on the current e-graph.
pub fn lhs_classes(egraph: &KilnEGraph, m: &Match) -> Vec<Option<Id>> {
    let mut classes: Vec<Option<Id>> = Vec::with_capacity(m.lhs.as_ref().len());
    for entry in m.lhs.as_ref() {
        let class = match entry {
            ENodeOrVar::Var(v) => m.subst.get(*v).map(|&c| egraph.find(c)),
            ENodeOrVar::ENode(n) => {
                let mut node = n.clone();
                let mut known = true;
                for c in node.children_mut() {
                    match classes.get(usize::from(*c)).copied().flatten() {
                        Some(id) => *c = id,
                        None => known = false,
                    }
                }
                if known {
                    egraph.lookup(node)
                } else {
                    None
                }
            }
        };
        classes.push(class);
    }
    classes
}

/// The axes a `Reduce` node with these children reduces over a value of
/// rank `rank`, normalized, sorted and deduplicated: from the `axes`
/// attribute, else from a constant second input, else every axis. `None`
/// when the axes are not known constants, are out of range, or the node is
/// the identity (no axes with `noop_with_empty_axes`).
pub fn reduce_axes(
    egraph: &KilnEGraph,
    op: &Op,
    children: &[Id],
    rank: usize,
) -> Option<Vec<usize>> {
    let Op::Reduce {
        axes,
        noop_with_empty_axes,
        ..
    } = op
    else {
        return None;
    };
    let given: Option<Vec<i64>> = match (axes, children.get(1)) {
        (Some(a), _) => Some(a.clone()),
        (None, Some(&c)) if !matches!(egraph[c].data.ty, ClassType::Absent) => {
            Some(egraph.analysis.constant(&egraph[c].data)?.to_i64s())
        }
        (None, _) => None,
    };
    let signed_rank = i64::try_from(rank).ok()?;
    let mut out: Vec<usize> = match given {
        Some(a) if a.is_empty() && *noop_with_empty_axes => return None,
        Some(a) if !a.is_empty() => a
            .into_iter()
            .map(|x| {
                let x = if x < 0 { x + signed_rank } else { x };
                usize::try_from(x).ok().filter(|&x| x < rank)
            })
            .collect::<Option<_>>()?,
        _ if *noop_with_empty_axes => return None,
        _ => (0..rank).collect(),
    };
    out.sort_unstable();
    out.dedup();
    Some(out)
}

/// What rules can know of the graph beyond the e-graph, for their last
/// check of a match ([`Rule::check`]) and the notes they add to a report
/// ([`Rule::notes`]).
#[derive(Clone, Debug, Default)]
pub struct RuleContext {
    /// The graph outputs: name and class (as converted; compare through
    /// [`egg::EGraph::find`]).
    pub outputs: Vec<(String, Id)>,
}

impl RuleContext {
    /// Names of the graph outputs whose value is class `class`, in output
    /// order.
    pub fn outputs_in(&self, egraph: &KilnEGraph, class: Id) -> Vec<&str> {
        let class = egraph.find(class);
        self.outputs
            .iter()
            .filter(|(_, c)| egraph.find(*c) == class)
            .map(|(n, _)| n.as_str())
            .collect()
    }
}

/// A rewrite rule over kiln's e-graph.
pub trait Rule: Send + Sync + 'static {
    /// Unique name, e.g. `transpose-fold`.
    fn name(&self) -> &'static str;
    /// One line saying what it does.
    fn description(&self) -> &'static str;
    /// True for exact equalities (every rule in saturation is); approximate
    /// substitutions are never run as rules.
    fn exact(&self) -> bool {
        true
    }
    /// The ops a match's root can be; `None` to visit every class.
    fn roots(&self) -> Option<Vec<Disc>>;
    /// Appends the matches rooted in `class`.
    fn search(&self, egraph: &KilnEGraph, class: Id, out: &mut Vec<Match>);
    /// The right-hand side for a match found by [`Rule::search`] in class
    /// `eclass`, built over the match's subst (see
    /// [`AstBuilder::continuing`]); `None` to skip it.
    fn rewrite(
        &self,
        egraph: &mut KilnEGraph,
        eclass: Id,
        m: &Match,
    ) -> Option<PatternAst<KilnLang>>;
    /// A last look at a match before it is applied, with what the e-graph
    /// alone does not say (the graph outputs): false skips it. True by
    /// default; a rule that must not fire where some value has another
    /// use checks the graph outputs here.
    fn check(&self, _egraph: &KilnEGraph, _eclass: Id, _m: &Match, _ctx: &RuleContext) -> bool {
        true
    }
    /// Notes for the report on a match that just fired in class `eclass`:
    /// what a reader of the report should know that the rewrite alone does
    /// not say (for example that a value it makes unnecessary is kept
    /// because it is a graph output). None by default.
    fn notes(
        &self,
        _egraph: &KilnEGraph,
        _eclass: Id,
        _m: &Match,
        _ctx: &RuleContext,
    ) -> Vec<String> {
        Vec::new()
    }
}

/// A rule that fired: its name, the class it rewrote and its notes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fired {
    /// The rule.
    pub rule: &'static str,
    /// The class of the left-hand side's root when it fired.
    pub class: Id,
    /// What [`Rule::notes`] said about the match.
    pub notes: Vec<String>,
}

/// Where fired rules are recorded, shared by the rewrites of one run.
pub type FireLog = Arc<Mutex<Vec<Fired>>>;

/// A [`Rule`] as egg's searcher and applier (one clone each).
#[derive(Clone)]
struct Adapter {
    rule: Arc<dyn Rule>,
    log: FireLog,
    ctx: Arc<RuleContext>,
}

impl Adapter {
    fn matches(&self, egraph: &KilnEGraph, limit: usize) -> Vec<(Id, Match)> {
        let mut classes: Vec<Id> = match self.rule.roots() {
            Some(discs) => discs
                .iter()
                .filter_map(|d| egraph.classes_for_op(d))
                .flatten()
                .collect(),
            None => egraph.classes().map(|c| c.id).collect(),
        };
        // Visit classes in id order so the matches (and the ids new nodes
        // get) do not depend on hash-set layout.
        classes.sort_unstable();
        classes.dedup();
        let mut out = Vec::new();
        let mut found = Vec::new();
        for class in classes {
            found.clear();
            self.rule.search(egraph, class, &mut found);
            for m in found.drain(..) {
                if out.len() >= limit {
                    return out;
                }
                out.push((class, m));
            }
        }
        out
    }
}

impl egg::Searcher<KilnLang, crate::analysis::TypeAnalysis> for Adapter {
    fn search_eclass_with_limit(
        &self,
        egraph: &KilnEGraph,
        eclass: Id,
        limit: usize,
    ) -> Option<SearchMatches<'_, KilnLang>> {
        // One SearchMatches carries one left-hand side AST, so per class
        // this reports the first match; whole-graph search below reports
        // every match as its own SearchMatches.
        let mut found = Vec::new();
        self.rule.search(egraph, eclass, &mut found);
        let m = found.into_iter().next().filter(|_| limit > 0)?;
        Some(SearchMatches {
            eclass,
            substs: vec![m.subst],
            ast: Some(Cow::Owned(m.lhs)),
        })
    }

    fn search_with_limit(
        &self,
        egraph: &KilnEGraph,
        limit: usize,
    ) -> Vec<SearchMatches<'_, KilnLang>> {
        self.matches(egraph, limit)
            .into_iter()
            .map(|(eclass, m)| SearchMatches {
                eclass,
                substs: vec![m.subst],
                ast: Some(Cow::Owned(m.lhs)),
            })
            .collect()
    }

    fn vars(&self) -> Vec<Var> {
        Vec::new()
    }
}

impl egg::Applier<KilnLang, crate::analysis::TypeAnalysis> for Adapter {
    fn apply_matches(
        &self,
        egraph: &mut KilnEGraph,
        matches: &[SearchMatches<KilnLang>],
        rule_name: Symbol,
    ) -> Vec<Id> {
        let mut changed = Vec::new();
        for mat in matches {
            let Some(lhs) = mat.ast.as_deref() else {
                continue;
            };
            for subst in &mat.substs {
                let m = Match {
                    lhs: lhs.clone(),
                    subst: subst.clone(),
                };
                egraph.analysis.current_rule = Some(self.rule.name().to_string());
                // Notes read the e-graph as the match found it, before the
                // union merges the right-hand side in.
                let notes = self.rule.notes(egraph, mat.eclass, &m, &self.ctx);
                let did = apply_one_match(
                    egraph,
                    mat.eclass,
                    &m,
                    self.rule.as_ref(),
                    &self.ctx,
                    rule_name,
                );
                egraph.analysis.current_rule = None;
                if did {
                    changed.push(mat.eclass);
                    let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
                    log.push(Fired {
                        rule: self.rule.name(),
                        class: mat.eclass,
                        notes,
                    });
                }
            }
        }
        changed
    }

    fn apply_one(
        &self,
        egraph: &mut KilnEGraph,
        eclass: Id,
        subst: &Subst,
        searcher_ast: Option<&PatternAst<KilnLang>>,
        rule_name: Symbol,
    ) -> Vec<Id> {
        let Some(lhs) = searcher_ast else {
            return Vec::new();
        };
        let m = Match {
            lhs: lhs.clone(),
            subst: subst.clone(),
        };
        if apply_one_match(egraph, eclass, &m, self.rule.as_ref(), &self.ctx, rule_name) {
            vec![eclass]
        } else {
            Vec::new()
        }
    }
}

/// Adds the right-hand side and unions it with the match's class, if the
/// rule's [`Rule::check`] passes; true when that changed the e-graph.
fn apply_one_match(
    egraph: &mut KilnEGraph,
    eclass: Id,
    m: &Match,
    rule: &dyn Rule,
    ctx: &RuleContext,
    rule_name: Symbol,
) -> bool {
    if !rule.check(egraph, eclass, m, ctx) {
        return false;
    }
    let Some(rhs) = rule.rewrite(egraph, eclass, m) else {
        return false;
    };
    if egraph.are_explanations_enabled() {
        egraph
            .union_instantiations(&m.lhs, &rhs, &m.subst, rule_name)
            .1
    } else {
        let id = egraph.add_instantiation(&rhs, &m.subst);
        egraph.union(eclass, id)
    }
}

/// Wraps rules as egg rewrites that record what fired, with the rules'
/// notes on it, in `log`.
pub fn rewrites(
    rules: &[Arc<dyn Rule>],
    log: &FireLog,
    ctx: &Arc<RuleContext>,
) -> Vec<egg::Rewrite<KilnLang, crate::analysis::TypeAnalysis>> {
    rules
        .iter()
        .map(|r| {
            let a = Adapter {
                rule: r.clone(),
                log: log.clone(),
                ctx: ctx.clone(),
            };
            egg::Rewrite::new(r.name(), a.clone(), a)
                .expect("adapters bind no pattern variables, so every rewrite is well formed")
        })
        .collect()
}

/// Every rule kiln has, by topic, for listings (`kiln rules`).
pub fn all_rules() -> Vec<Arc<dyn Rule>> {
    let mut rules = algebra::rules();
    rules.extend(loss::rules());
    rules.extend(attention::rules());
    rules
}
