//! Symbolic dimensions.
//!
//! A dimension is either a known size or a polynomial over named symbols
//! (`batch`, `seq`, ...) with integer coefficients. Polynomials are kept in a
//! canonical form (sorted monomials, no zero terms), so two dims that are
//! equal as polynomials compare equal structurally and print the same. That
//! is what shape inference needs for Reshape, Concat and Slice results such as
//! `seq+1` or `batch*seq`. Floor division that does not simplify becomes an
//! opaque atom, so `(seq+1)/2` still round-trips and compares equal to itself.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// One factor of a monomial.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Atom {
    /// A named symbol.
    Var(Arc<str>),
    /// Floor division that did not simplify: numerator / denominator.
    Div(Box<Poly>, Box<Poly>),
}

/// A product of atoms, sorted; the empty product is the constant term.
pub type Monomial = Vec<Atom>;

/// A polynomial with integer coefficients over [`Atom`]s, in canonical form.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Poly {
    terms: BTreeMap<Monomial, i64>,
}

impl Poly {
    /// The constant polynomial `c`.
    pub fn constant(c: i64) -> Poly {
        let mut terms = BTreeMap::new();
        if c != 0 {
            terms.insert(Vec::new(), c);
        }
        Poly { terms }
    }

    /// The polynomial consisting of one symbol.
    pub fn var(name: &str) -> Poly {
        Poly::atom(Atom::Var(Arc::from(name)))
    }

    fn atom(a: Atom) -> Poly {
        let mut terms = BTreeMap::new();
        terms.insert(vec![a], 1);
        Poly { terms }
    }

    /// The value if the polynomial has no symbols.
    pub fn as_constant(&self) -> Option<i64> {
        match self.terms.len() {
            0 => Some(0),
            1 => self.terms.get(&Vec::new()).copied(),
            _ => None,
        }
    }

    /// The names of the symbols it mentions, sorted and deduplicated.
    pub fn symbols(&self) -> Vec<Arc<str>> {
        let mut out = Vec::new();
        for m in self.terms.keys() {
            for a in m {
                match a {
                    Atom::Var(v) => out.push(v.clone()),
                    Atom::Div(n, d) => {
                        out.extend(n.symbols());
                        out.extend(d.symbols());
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// The coefficients of the terms, in canonical order (a floor-division
    /// atom counts as one opaque factor). Shape inference uses them to bound
    /// magnitudes before arithmetic that could overflow `i64`, and to see
    /// whether a polynomial is a sum of non-negative terms.
    pub fn coefficients(&self) -> impl Iterator<Item = i64> + '_ {
        self.terms.values().copied()
    }

    /// The terms in canonical order: each monomial (empty for the constant
    /// term) with its non-zero coefficient. The text format uses this to
    /// quote symbol names that `Display` cannot print unambiguously.
    pub fn terms(&self) -> impl Iterator<Item = (&Monomial, i64)> + '_ {
        self.terms.iter().map(|(m, c)| (m, *c))
    }

    /// Sum.
    pub fn add(&self, other: &Poly) -> Poly {
        let mut terms = self.terms.clone();
        for (m, c) in &other.terms {
            let e = terms.entry(m.clone()).or_insert(0);
            *e = e.saturating_add(*c);
            if *e == 0 {
                terms.remove(m);
            }
        }
        Poly { terms }
    }

    /// `self * k`.
    pub fn scale(&self, k: i64) -> Poly {
        if k == 0 {
            return Poly::default();
        }
        Poly {
            terms: self.terms.iter().map(|(m, c)| (m.clone(), c.saturating_mul(k))).collect(),
        }
    }

    /// Difference.
    pub fn sub(&self, other: &Poly) -> Poly {
        self.add(&other.scale(-1))
    }

    /// Product.
    pub fn mul(&self, other: &Poly) -> Poly {
        let mut out = Poly::default();
        for (m1, c1) in &self.terms {
            for (m2, c2) in &other.terms {
                let mut m: Monomial = m1.iter().chain(m2.iter()).cloned().collect();
                m.sort();
                out = out.add(&Poly {
                    terms: BTreeMap::from([(m, c1.saturating_mul(*c2))]),
                });
            }
        }
        out
    }

    /// Floor division. Exact when every term divides; otherwise an opaque
    /// atom. Returns `None` for division by zero.
    pub fn floor_div(&self, other: &Poly) -> Option<Poly> {
        if let Some(d) = other.as_constant() {
            if d == 0 {
                return None;
            }
            if let Some(n) = self.as_constant() {
                return Some(Poly::constant(n.div_euclid(d)));
            }
            if d == 1 {
                return Some(self.clone());
            }
            if self.terms.values().all(|c| c % d == 0) {
                return Some(Poly {
                    terms: self.terms.iter().map(|(m, c)| (m.clone(), c / d)).collect(),
                });
            }
        } else if other.terms.len() == 1 {
            // Division by a single monomial k*m: exact if every term of self
            // contains m and its coefficient divides by k.
            let (dm, dc) = other.terms.iter().next().expect("one term");
            let mut terms = BTreeMap::new();
            let mut exact = true;
            for (m, c) in &self.terms {
                match remove_factors(m, dm) {
                    Some(rest) if c % dc == 0 => {
                        terms.insert(rest, c / dc);
                    }
                    _ => {
                        exact = false;
                        break;
                    }
                }
            }
            if exact {
                return Some(Poly { terms });
            }
        }
        if self == other {
            return Some(Poly::constant(1));
        }
        Some(Poly::atom(Atom::Div(Box::new(self.clone()), Box::new(other.clone()))))
    }

    fn is_single_atom(&self) -> bool {
        self.terms.len() == 1
            && self
                .terms
                .iter()
                .next()
                .is_some_and(|(m, c)| m.len() == 1 && *c == 1)
    }
}

/// `m` with the factors of `d` removed, if `m` contains all of them.
fn remove_factors(m: &Monomial, d: &Monomial) -> Option<Monomial> {
    let mut rest = m.clone();
    for a in d {
        let i = rest.iter().position(|x| x == a)?;
        rest.remove(i);
    }
    Some(rest)
}

impl fmt::Display for Poly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.terms.is_empty() {
            return f.write_str("0");
        }
        // Symbolic terms first, constant last: `seq+1` rather than `1+seq`.
        let mut first = true;
        let ordered = self
            .terms
            .iter()
            .filter(|(m, _)| !m.is_empty())
            .chain(self.terms.iter().filter(|(m, _)| m.is_empty()));
        for (m, c) in ordered {
            let (neg, mag) = if *c < 0 { (true, -c) } else { (false, *c) };
            if first {
                if neg {
                    f.write_str("-")?;
                }
            } else {
                f.write_str(if neg { "-" } else { "+" })?;
            }
            first = false;
            if m.is_empty() {
                write!(f, "{mag}")?;
                continue;
            }
            if mag != 1 {
                write!(f, "{mag}*")?;
            }
            for (i, a) in m.iter().enumerate() {
                if i > 0 {
                    f.write_str("*")?;
                }
                match a {
                    Atom::Var(v) => f.write_str(v)?,
                    Atom::Div(n, d) => {
                        write_factor(f, n)?;
                        f.write_str("/")?;
                        write_factor(f, d)?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn write_factor(f: &mut fmt::Formatter<'_>, p: &Poly) -> fmt::Result {
    if p.as_constant().is_some() || p.is_single_atom() && !matches!(p.terms.keys().next().map(|m| &m[0]), Some(Atom::Div(..))) {
        write!(f, "{p}")
    } else {
        write!(f, "({p})")
    }
}

/// One dimension of a shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dim {
    /// A size known at compile time.
    Fixed(u64),
    /// A size known only at run time, as a polynomial over symbols.
    Sym(Poly),
}

impl Dim {
    /// A named symbol.
    pub fn sym(name: &str) -> Dim {
        Dim::Sym(Poly::var(name))
    }

    /// The known size, if any.
    pub fn fixed(&self) -> Option<u64> {
        match self {
            Dim::Fixed(n) => Some(*n),
            Dim::Sym(_) => None,
        }
    }

    /// The dimension as a polynomial (a fixed size is a constant).
    pub fn to_poly(&self) -> Poly {
        match self {
            Dim::Fixed(n) => Poly::constant(*n as i64),
            Dim::Sym(p) => p.clone(),
        }
    }

    /// Builds a dim from a polynomial, folding constants into `Fixed`.
    /// A negative constant is not a size: that returns `None`.
    pub fn from_poly(p: Poly) -> Option<Dim> {
        match p.as_constant() {
            Some(c) if c < 0 => None,
            Some(c) => Some(Dim::Fixed(c as u64)),
            None => Some(Dim::Sym(p)),
        }
    }

    /// Sum of two dims.
    pub fn add(&self, o: &Dim) -> Dim {
        Dim::from_poly(self.to_poly().add(&o.to_poly())).expect("sum of sizes is a size")
    }

    /// Product of two dims.
    pub fn mul(&self, o: &Dim) -> Dim {
        Dim::from_poly(self.to_poly().mul(&o.to_poly())).expect("product of sizes is a size")
    }

    /// Difference, or `None` when it is provably negative.
    pub fn sub(&self, o: &Dim) -> Option<Dim> {
        Dim::from_poly(self.to_poly().sub(&o.to_poly()))
    }

    /// Floor division, or `None` on division by zero.
    pub fn floor_div(&self, o: &Dim) -> Option<Dim> {
        Dim::from_poly(self.to_poly().floor_div(&o.to_poly())?)
    }

    /// Evaluates with the given symbol values; `None` when a symbol is unbound.
    pub fn eval(&self, bindings: &dyn Fn(&str) -> Option<i64>) -> Option<i64> {
        match self {
            Dim::Fixed(n) => Some(*n as i64),
            Dim::Sym(p) => eval_poly(p, bindings),
        }
    }

    /// Parses the text form printed by `Display` (`seq`, `2*seq+1`,
    /// `(seq+1)/2`, `64`).
    pub fn parse(s: &str) -> Result<Dim, String> {
        let mut p = DimParser { s: s.as_bytes(), i: 0, depth: 0 };
        let poly = p.expr()?;
        p.skip_ws();
        if p.i != p.s.len() {
            return Err(format!("unexpected `{}` in dimension `{s}`", &s[p.i..]));
        }
        Dim::from_poly(poly).ok_or_else(|| format!("dimension `{s}` is negative"))
    }
}

fn eval_poly(p: &Poly, b: &dyn Fn(&str) -> Option<i64>) -> Option<i64> {
    let mut total = 0i64;
    for (m, c) in &p.terms {
        let mut v = *c;
        for a in m {
            v *= match a {
                Atom::Var(name) => b(name)?,
                Atom::Div(n, d) => {
                    let d = eval_poly(d, b)?;
                    if d == 0 {
                        return None;
                    }
                    eval_poly(n, b)?.div_euclid(d)
                }
            };
        }
        total += v;
    }
    Some(total)
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Sym(p) => write!(f, "{p}"),
        }
    }
}

impl From<u64> for Dim {
    fn from(n: u64) -> Dim {
        Dim::Fixed(n)
    }
}

impl From<usize> for Dim {
    fn from(n: usize) -> Dim {
        Dim::Fixed(n as u64)
    }
}

/// Recursive-descent parser for dim expressions: `+ -` over `* /` over
/// integers, identifiers and parentheses.
struct DimParser<'a> {
    s: &'a [u8],
    i: usize,
    depth: usize,
}

/// Deepest parenthesis nesting accepted; real dims nest a few levels, and
/// the limit keeps hostile model files from exhausting the stack.
const MAX_DIM_NESTING: usize = 32;

impl DimParser<'_> {
    fn skip_ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.i).copied()
    }

    fn expr(&mut self) -> Result<Poly, String> {
        let mut acc = if self.peek() == Some(b'-') {
            self.i += 1;
            self.term()?.scale(-1)
        } else {
            self.term()?
        };
        while let Some(c @ (b'+' | b'-')) = self.peek() {
            self.i += 1;
            let t = self.term()?;
            acc = if c == b'+' { acc.add(&t) } else { acc.sub(&t) };
        }
        Ok(acc)
    }

    fn term(&mut self) -> Result<Poly, String> {
        let mut acc = self.factor()?;
        while let Some(c @ (b'*' | b'/')) = self.peek() {
            self.i += 1;
            let f = self.factor()?;
            acc = if c == b'*' {
                acc.mul(&f)
            } else {
                acc.floor_div(&f).ok_or("division by zero in dimension")?
            };
        }
        Ok(acc)
    }

    fn factor(&mut self) -> Result<Poly, String> {
        match self.peek() {
            Some(b'(') => {
                self.i += 1;
                self.depth += 1;
                if self.depth > MAX_DIM_NESTING {
                    return Err(format!("dimension nests parentheses deeper than {MAX_DIM_NESTING}"));
                }
                let e = self.expr()?;
                self.depth -= 1;
                if self.peek() != Some(b')') {
                    return Err("missing `)` in dimension".into());
                }
                self.i += 1;
                Ok(e)
            }
            Some(c) if c.is_ascii_digit() => {
                let start = self.i;
                while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
                    self.i += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.i]).expect("ascii");
                text.parse::<i64>()
                    .map(Poly::constant)
                    .map_err(|_| format!("dimension `{text}` is too large"))
            }
            Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b'?' => {
                let start = self.i;
                while self.i < self.s.len()
                    && (self.s[self.i].is_ascii_alphanumeric() || matches!(self.s[self.i], b'_' | b'.' | b'?'))
                {
                    self.i += 1;
                }
                Ok(Poly::var(std::str::from_utf8(&self.s[start..self.i]).expect("ascii")))
            }
            Some(c) => Err(format!("unexpected `{}` in dimension", c as char)),
            None => Err("dimension ends too early".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_is_canonical() {
        let seq = Dim::sym("seq");
        let one = Dim::Fixed(1);
        let a = seq.add(&one);
        let b = one.add(&seq);
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "seq+1");
        assert_eq!(a.sub(&one), Some(seq.clone()));
        let bs = Dim::sym("batch").mul(&seq);
        assert_eq!(bs.to_string(), "batch*seq");
        assert_eq!(bs.floor_div(&seq), Some(Dim::sym("batch")));
        assert_eq!(Dim::Fixed(768).floor_div(&Dim::Fixed(12)), Some(Dim::Fixed(64)));
    }

    #[test]
    fn opaque_division_round_trips() {
        let d = Dim::sym("seq").add(&Dim::Fixed(1)).floor_div(&Dim::Fixed(2)).unwrap();
        assert_eq!(d.to_string(), "(seq+1)/2");
        assert_eq!(Dim::parse(&d.to_string()), Ok(d.clone()));
        assert_eq!(d.eval(&|_| Some(7)), Some(4));
    }

    #[test]
    fn parse_forms() {
        for s in ["64", "seq", "2*seq+1", "batch*seq", "seq-1", "past+seq"] {
            assert_eq!(Dim::parse(s).unwrap().to_string(), s, "{s}");
        }
        assert!(Dim::parse("seq+").is_err());
        assert!(Dim::parse("0-3").is_err());
        assert!(Dim::parse(&format!("{}seq{}", "(".repeat(100), ")".repeat(100))).is_err());
        let huge = Dim::parse("4611686018427387904*seq*4611686018427387904*seq");
        assert!(huge.is_ok(), "saturates instead of overflowing");
    }
}
