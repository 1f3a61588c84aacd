//! Dimension arithmetic for inference: overflow-checked sums, differences,
//! products and quotients of possibly symbolic dims, and the broadcasting and
//! unification rules described in the module docs of [`crate::infer`].

use crate::dim::{Dim, Poly};

/// Polynomials whose absolute coefficients sum (or multiply) to less than
/// this can be combined without any intermediate `i64` overflowing.
const LIMIT: u128 = 1 << 62;

/// Sum of the absolute values of the coefficients.
fn l1(p: &Poly) -> u128 {
    p.coefficients().map(|c| c.unsigned_abs() as u128).sum()
}

/// `a + b`, unless the magnitudes could overflow.
pub(crate) fn poly_add(a: &Poly, b: &Poly) -> Option<Poly> {
    (l1(a) + l1(b) < LIMIT).then(|| a.add(b))
}

/// `a - b`, unless the magnitudes could overflow.
pub(crate) fn poly_sub(a: &Poly, b: &Poly) -> Option<Poly> {
    (l1(a) + l1(b) < LIMIT).then(|| a.sub(b))
}

/// `a * b`, unless the magnitudes could overflow.
pub(crate) fn poly_mul(a: &Poly, b: &Poly) -> Option<Poly> {
    (l1(a) * l1(b) < LIMIT).then(|| a.mul(b))
}

/// `-a`.
pub(crate) fn poly_neg(a: &Poly) -> Option<Poly> {
    (l1(a) < LIMIT).then(|| a.scale(-1))
}

/// Floor division; `None` on division by zero or possible overflow.
pub(crate) fn poly_floor_div(a: &Poly, b: &Poly) -> Option<Poly> {
    if l1(a) >= LIMIT || l1(b) >= LIMIT {
        return None;
    }
    a.floor_div(b)
}

/// True when every term has a non-negative coefficient. Symbols stand for
/// sizes, so such a polynomial is never negative.
pub(crate) fn is_nonneg(p: &Poly) -> bool {
    p.coefficients().all(|c| c >= 0)
}

/// The dim as a polynomial.
pub(crate) fn poly(d: &Dim) -> Poly {
    d.to_poly()
}

/// `a + b` as a dim.
pub(crate) fn add(a: &Dim, b: &Dim) -> Option<Dim> {
    Dim::from_poly(poly_add(&poly(a), &poly(b))?)
}

/// `a - b` as a dim; `None` when provably negative or on overflow.
pub(crate) fn sub(a: &Dim, b: &Dim) -> Option<Dim> {
    Dim::from_poly(poly_sub(&poly(a), &poly(b))?)
}

/// `a * b` as a dim.
pub(crate) fn mul(a: &Dim, b: &Dim) -> Option<Dim> {
    Dim::from_poly(poly_mul(&poly(a), &poly(b))?)
}

/// `floor(a / b)` as a dim.
pub(crate) fn floor_div(a: &Dim, b: &Dim) -> Option<Dim> {
    Dim::from_poly(poly_floor_div(&poly(a), &poly(b))?)
}

/// `ceil(a / k)` for a positive constant `k`, exact when `k` divides `a` as a
/// polynomial (so `2*h` split in two is `h`, not `(2*h+1)/2`).
pub(crate) fn ceil_div_const(a: &Dim, k: u64) -> Option<Dim> {
    if k == 0 {
        return None;
    }
    if let Dim::Fixed(n) = a {
        return Some(Dim::Fixed(n.div_ceil(k)));
    }
    let kp = Poly::constant(k as i64);
    let exact = poly_floor_div(&poly(a), &kp)?;
    if poly_mul(&exact, &kp)? == poly(a) {
        return Dim::from_poly(exact);
    }
    let num = poly_add(&poly(a), &Poly::constant(k as i64 - 1))?;
    Dim::from_poly(poly_floor_div(&num, &kp)?)
}

/// The product of dims; `None` on overflow.
pub(crate) fn product<'a>(dims: impl IntoIterator<Item = &'a Dim>) -> Option<Dim> {
    let mut acc = Dim::Fixed(1);
    for d in dims {
        acc = mul(&acc, d)?;
    }
    Some(acc)
}

/// True for a fresh symbol `unk__N` made up by inference for a dim it could
/// not derive.
pub(crate) fn is_fresh(d: &Dim) -> bool {
    fresh_index(d).is_some()
}

/// `N` for the symbol `unk__N`.
pub(crate) fn fresh_index(d: &Dim) -> Option<u64> {
    let Dim::Sym(p) = d else { return None };
    let syms = p.symbols();
    let [name] = syms.as_slice() else { return None };
    if *p != Poly::var(name) {
        return None;
    }
    name.strip_prefix(super::FRESH_PREFIX)?.parse().ok()
}

/// Broadcasts two dims (numpy rules, symbolic policy in the module docs).
/// `None` when both are fixed, different and neither is 1.
pub(crate) fn broadcast(a: &Dim, b: &Dim) -> Option<Dim> {
    if a == b {
        return Some(a.clone());
    }
    match (a, b) {
        (Dim::Fixed(1), _) => Some(b.clone()),
        (_, Dim::Fixed(1)) => Some(a.clone()),
        (Dim::Fixed(_), Dim::Fixed(_)) => None,
        (Dim::Fixed(_), _) => Some(a.clone()),
        (_, Dim::Fixed(_)) => Some(b.clone()),
        _ => Some(prefer_named(a, b)),
    }
}

/// Merges two dims that must be equal. `None` when both are fixed and
/// differ; otherwise the fixed one, else the named one, else `a`.
pub(crate) fn unify(a: &Dim, b: &Dim) -> Option<Dim> {
    if a == b {
        return Some(a.clone());
    }
    match (a, b) {
        (Dim::Fixed(_), Dim::Fixed(_)) => None,
        (Dim::Fixed(_), _) => Some(a.clone()),
        (_, Dim::Fixed(_)) => Some(b.clone()),
        _ => Some(prefer_named(a, b)),
    }
}

/// Of two symbolic dims, the one that is not a fresh unknown; `a` on a tie.
fn prefer_named(a: &Dim, b: &Dim) -> Dim {
    if is_fresh(a) && !is_fresh(b) {
        b.clone()
    } else {
        a.clone()
    }
}

/// True when the two dims cannot be equal: both fixed and different.
pub(crate) fn conflict(a: &Dim, b: &Dim) -> bool {
    matches!((a, b), (Dim::Fixed(x), Dim::Fixed(y)) if x != y)
}

/// Formats a shape as `[a, b, c]`.
pub(crate) fn fmt_shape(dims: &[Dim]) -> String {
    let parts: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_is_refused_not_panicking() {
        let big = Poly::constant(i64::MAX);
        assert!(poly_add(&big, &Poly::constant(1)).is_none());
        assert!(poly_mul(&Poly::constant(1 << 40), &Poly::constant(1 << 40)).is_none());
        assert_eq!(poly_add(&Poly::constant(2), &Poly::constant(3)), Some(Poly::constant(5)));
    }

    #[test]
    fn ceil_div_is_exact_when_divisible() {
        let h2 = Dim::sym("h").mul(&Dim::Fixed(2));
        assert_eq!(ceil_div_const(&h2, 2), Some(Dim::sym("h")));
        assert_eq!(ceil_div_const(&Dim::sym("s"), 2).map(|d| d.to_string()), Some("(s+1)/2".into()));
        assert_eq!(ceil_div_const(&Dim::Fixed(7), 2), Some(Dim::Fixed(4)));
    }

    #[test]
    fn broadcasting_policy() {
        let seq = Dim::sym("seq");
        let unk = Dim::sym("unk__3");
        assert_eq!(broadcast(&Dim::Fixed(1), &seq), Some(seq.clone()));
        assert_eq!(broadcast(&Dim::Fixed(4), &seq), Some(Dim::Fixed(4)));
        assert_eq!(broadcast(&Dim::Fixed(4), &Dim::Fixed(3)), None);
        assert_eq!(broadcast(&unk, &seq), Some(seq.clone()));
        assert_eq!(broadcast(&seq, &unk), Some(seq.clone()));
        assert_eq!(fresh_index(&unk), Some(3));
        assert_eq!(fresh_index(&seq), None);
    }
}
