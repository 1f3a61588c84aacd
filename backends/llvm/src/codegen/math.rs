//! Float math on scalars or vectors, and the vectorizable f32 functions.
//!
//! The helpers take `BasicValueEnum`s that are either a float or a vector
//! of floats, so the same code serves the scalar loops that LLVM's loop
//! vectorizer widens and the explicit-vector softmax kernels.
//!
//! `exp` for f32 does not call libm: a libm call cannot be vectorized, and
//! exp dominates softmax and the activations. It uses the classic range
//! reduction `x = n·ln2 + r` with `|r| ≤ ln2/2` (ln2 split into a short
//! head and a tail so `n·ln2_hi` is exact), a degree-6 polynomial for
//! `exp(r)` (Cephes `expf` coefficients, ~1 ulp) evaluated by Horner's rule
//! in fused multiply-adds (`llvm.fmuladd`: FMAs where the target has them),
//! and `2^n` built from its exponent bits. f64 uses LLVM's intrinsics (libm).

use super::Cg;
use crate::error::{BackendError, Result};
use inkwell::types::{BasicTypeEnum, VectorType};
use inkwell::values::{BasicValue, BasicValueEnum};
use inkwell::FloatPredicate;

type BV<'ctx> = BasicValueEnum<'ctx>;

/// ln 2 split: `LN2_HI` has few mantissa bits so `n * LN2_HI` is exact.
const LN2_HI: f64 = 0.693_359_375;
const LN2_LO: f64 = -2.121_944_400_546_905_8e-4;
const LOG2E: f64 = std::f64::consts::LOG2_E;
/// Cephes `expf` polynomial for exp(r) - 1 - r, highest degree first.
const EXP_POLY: [f64; 6] = [
    1.987_569_150_0e-4,
    1.398_199_950_7e-3,
    8.333_451_907_3e-3,
    4.166_579_589_4e-2,
    1.666_666_545_9e-1,
    5.000_000_120_1e-1,
];

/// 1.5·2^23 + 127: see [`Cg::exp_nonpositive`].
const EXP_ROUND_MAGIC: f64 = 12_583_039.0;
/// `q(r) ≈ (exp(r) - 1) / r` on |r| ≤ ln2/2, degree 4, highest first: a
/// relative-error fit (iteratively reweighted least squares on Chebyshev
/// nodes) with at most 9.3e-8 relative error in exact arithmetic, under
/// 3 ulp for `exp_nonpositive` in f32.
const EXP_Q5: [f64; 5] = [
    0.008_292_168_795_332_918,
    0.041_897_933_947_871_405,
    0.166_676_052_396_862_56,
    0.499_991_494_874_734,
    0.999_999_718_669_551_1,
];
/// `2^f` on [0, 1), degree 5, highest first: a relative-error fit
/// (iteratively reweighted least squares on Chebyshev nodes), 1.6e-7
/// relative error evaluated in f32. See [`Cg::exp2_bounded`].
const EXP2_P5: [f64; 6] = [
    0.001_877_576_694_823_801_5,
    0.008_989_340_625_703_335,
    0.055_826_317_518_949_51,
    0.240_153_610_706_329_35,
    0.693_153_083_324_432_4,
    0.999_999_940_395_355_2,
];

impl<'ctx> Cg<'ctx> {
    /// True when `v` (a float or float vector) has f32 elements.
    pub(crate) fn is_f32(&self, v: BV<'ctx>) -> bool {
        match v {
            BV::FloatValue(f) => f.get_type() == self.f32t(),
            BV::VectorValue(x) => x.get_type().get_element_type() == self.f32t().into(),
            _ => false,
        }
    }

    /// A constant of `like`'s type (splat for vectors).
    pub(crate) fn fconst(&self, like: BV<'ctx>, v: f64) -> BV<'ctx> {
        match like.get_type() {
            BasicTypeEnum::FloatType(t) => t.const_float(v).into(),
            BasicTypeEnum::VectorType(t) => {
                let e = t.get_element_type().into_float_type().const_float(v);
                VectorType::const_vector(&vec![e; t.get_size() as usize]).into()
            }
            other => panic!("fconst on a non-float type {other:?}: emitters only pass floats here"),
        }
    }

    /// Scalar `x` in every lane of vector type `vty`.
    pub(crate) fn splat(&self, vty: VectorType<'ctx>, x: BV<'ctx>) -> Result<BV<'ctx>> {
        let i32t = self.ctx.i32_type();
        let one = self.b.build_insert_element(vty.get_poison(), x, i32t.const_zero(), "x")?;
        let mask = i32t.vec_type(vty.get_size()).const_zero();
        Ok(self.b.build_shuffle_vector(one, vty.get_poison(), mask, "splat")?.into())
    }

    /// Scalar `x` shaped like `like`: splat when `like` is a vector.
    pub(crate) fn splat_like(&self, like: BV<'ctx>, x: BV<'ctx>) -> Result<BV<'ctx>> {
        match like {
            BV::VectorValue(v) => self.splat(v.get_type(), x),
            _ => Ok(x),
        }
    }

    /// An integer constant of `like`'s type (splat for vectors).
    pub(crate) fn iconst(&self, like: BasicTypeEnum<'ctx>, v: i64) -> BV<'ctx> {
        match like {
            BasicTypeEnum::IntType(t) => t.const_int(v as u64, true).into(),
            BasicTypeEnum::VectorType(t) => {
                let e = t.get_element_type().into_int_type().const_int(v as u64, true);
                VectorType::const_vector(&vec![e; t.get_size() as usize]).into()
            }
            other => panic!("iconst on a non-integer type {other:?}: emitters only pass integers here"),
        }
    }

    /// The i32 (vector) type matching an f32 (vector) value.
    fn int_like(&self, v: BV<'ctx>) -> BasicTypeEnum<'ctx> {
        match v {
            BV::VectorValue(x) => self.ctx.i32_type().vec_type(x.get_type().get_size()).into(),
            _ => self.ctx.i32_type().into(),
        }
    }

    pub(crate) fn fadd(&self, a: BV<'ctx>, b: BV<'ctx>) -> Result<BV<'ctx>> {
        Ok(match (a, b) {
            (BV::VectorValue(x), BV::VectorValue(y)) => self.b.build_float_add(x, y, "add")?.into(),
            _ => self.b.build_float_add(a.into_float_value(), b.into_float_value(), "add")?.into(),
        })
    }

    pub(crate) fn fsub(&self, a: BV<'ctx>, b: BV<'ctx>) -> Result<BV<'ctx>> {
        Ok(match (a, b) {
            (BV::VectorValue(x), BV::VectorValue(y)) => self.b.build_float_sub(x, y, "sub")?.into(),
            _ => self.b.build_float_sub(a.into_float_value(), b.into_float_value(), "sub")?.into(),
        })
    }

    pub(crate) fn fmul(&self, a: BV<'ctx>, b: BV<'ctx>) -> Result<BV<'ctx>> {
        Ok(match (a, b) {
            (BV::VectorValue(x), BV::VectorValue(y)) => self.b.build_float_mul(x, y, "mul")?.into(),
            _ => self.b.build_float_mul(a.into_float_value(), b.into_float_value(), "mul")?.into(),
        })
    }

    pub(crate) fn fdiv(&self, a: BV<'ctx>, b: BV<'ctx>) -> Result<BV<'ctx>> {
        Ok(match (a, b) {
            (BV::VectorValue(x), BV::VectorValue(y)) => self.b.build_float_div(x, y, "div")?.into(),
            _ => self.b.build_float_div(a.into_float_value(), b.into_float_value(), "div")?.into(),
        })
    }

    pub(crate) fn fneg(&self, a: BV<'ctx>) -> Result<BV<'ctx>> {
        Ok(match a {
            BV::VectorValue(x) => self.b.build_float_neg(x, "neg")?.into(),
            _ => self.b.build_float_neg(a.into_float_value(), "neg")?.into(),
        })
    }

    /// `a + b` that may be reassociated, so reductions vectorize.
    pub(crate) fn fadd_reassoc(&self, a: BV<'ctx>, b: BV<'ctx>) -> Result<BV<'ctx>> {
        let r = self.fadd(a, b)?;
        if let Some(inst) = r.as_instruction_value() {
            // Constant-folded results are not instructions and need no flag.
            let _ = inst.set_fast_math_flags(
                inkwell::values::FastMathFlags::AllowReassoc | inkwell::values::FastMathFlags::AllowContract,
            );
        }
        Ok(r)
    }

    pub(crate) fn fcmp(&self, p: FloatPredicate, a: BV<'ctx>, b: BV<'ctx>) -> Result<BV<'ctx>> {
        Ok(match (a, b) {
            (BV::VectorValue(x), BV::VectorValue(y)) => self.b.build_float_compare(p, x, y, "cmp")?.into(),
            _ => self.b.build_float_compare(p, a.into_float_value(), b.into_float_value(), "cmp")?.into(),
        })
    }

    pub(crate) fn select(&self, c: BV<'ctx>, a: BV<'ctx>, b: BV<'ctx>) -> Result<BV<'ctx>> {
        Ok(match c {
            BV::VectorValue(m) => self.b.build_select(m, a, b, "sel")?,
            _ => self.b.build_select(c.into_int_value(), a, b, "sel")?,
        })
    }

    /// `max(a, b)` ignoring NaN in one operand (IEEE maxNum).
    pub(crate) fn fmaxnum(&self, a: BV<'ctx>, b: BV<'ctx>) -> Result<BV<'ctx>> {
        self.intrinsic("llvm.maxnum", &[a, b])
    }

    /// `v > acc ? v : acc`: the maximum for an accumulator that is never
    /// NaN (it starts at -inf), ignoring NaN in `v` like `maxnum`, but one
    /// `maxps` on x86 where `maxnum` adds a compare and a blend.
    pub(crate) fn fmax_ignoring_nan(&self, acc: BV<'ctx>, v: BV<'ctx>) -> Result<BV<'ctx>> {
        let greater = self.fcmp(FloatPredicate::OGT, v, acc)?;
        self.select(greater, v, acc)
    }

    /// `2^k` for an integer-valued f32 (vector) `k` in [-126, 127].
    fn pow2i(&self, k: BV<'ctx>) -> Result<BV<'ctx>> {
        let ity = self.int_like(k);
        let ki = match k {
            BV::VectorValue(x) => self.b.build_float_to_signed_int(x, ity.into_vector_type(), "k")?.into(),
            _ => BV::from(self.b.build_float_to_signed_int(k.into_float_value(), ity.into_int_type(), "k")?),
        };
        let biased = self.iadd(ki, self.iconst(ity, 127))?;
        let bits = self.ishl(biased, self.iconst(ity, 23))?;
        Ok(self.b.build_bit_cast(bits, k.get_type(), "pow2")?)
    }

    fn iadd(&self, a: BV<'ctx>, b: BV<'ctx>) -> Result<BV<'ctx>> {
        Ok(match (a, b) {
            (BV::VectorValue(x), BV::VectorValue(y)) => self.b.build_int_add(x, y, "iadd")?.into(),
            _ => self.b.build_int_add(a.into_int_value(), b.into_int_value(), "iadd")?.into(),
        })
    }

    fn ishl(&self, a: BV<'ctx>, b: BV<'ctx>) -> Result<BV<'ctx>> {
        Ok(match (a, b) {
            (BV::VectorValue(x), BV::VectorValue(y)) => self.b.build_left_shift(x, y, "shl")?.into(),
            _ => self.b.build_left_shift(a.into_int_value(), b.into_int_value(), "shl")?.into(),
        })
    }

    /// Splits f32 `x` into `(n, p)` with `exp(x) = p · 2^n`, `n` integral
    /// and `p = exp(r)` in [√½, √2]. `x` must be finite and not below -1e4
    /// (callers clamp); `n` is returned as a float.
    pub(crate) fn exp_split(&self, x: BV<'ctx>) -> Result<(BV<'ctx>, BV<'ctx>)> {
        let (n, r) = self.exp_reduce(x)?;
        let mut p = self.fconst(x, EXP_POLY[0]);
        for &c in &EXP_POLY[1..] {
            p = self.fmuladd(p, r, self.fconst(x, c))?;
        }
        let r2 = self.fmul(r, r)?;
        let p = self.fadd(self.fmuladd(p, r2, r)?, self.fconst(x, 1.0))?;
        Ok((n, p))
    }

    /// The range reduction `x = n·ln2 + r`, `|r| ≤ ln2/2`: `(n, r)` with
    /// `n` integral, as a float.
    fn exp_reduce(&self, x: BV<'ctx>) -> Result<(BV<'ctx>, BV<'ctx>)> {
        // rint(x·log2 e) by adding and subtracting 1.5·2^23 (round to
        // nearest even, like rint, for |x·log2 e| < 2^22): two cheap
        // operations where rint is a multi-uop round instruction.
        let magic = self.fconst(x, 12_582_912.0);
        let n = self.fsub(self.fmuladd(x, self.fconst(x, LOG2E), magic)?, magic)?;
        // x - n·ln2 in two steps; `n·LN2_HI` is exact, fused or not.
        let r = self.fmuladd(n, self.fconst(x, -LN2_HI), x)?;
        let r = self.fmuladd(n, self.fconst(x, -LN2_LO), r)?;
        Ok((n, r))
    }

    /// [`Cg::exp_split`] with the shorter polynomial of
    /// [`Cg::exp_nonpositive`] (`p = 1 + r·q(r)`, relative error under
    /// 1e-7): the two-pass softmax's first pass, which is bound by it.
    pub(crate) fn exp_split_short(&self, x: BV<'ctx>) -> Result<(BV<'ctx>, BV<'ctx>)> {
        let (n, r) = self.exp_reduce(x)?;
        let mut q = self.fconst(x, EXP_Q5[0]);
        for &c in &EXP_Q5[1..] {
            q = self.fmuladd(q, r, self.fconst(x, c))?;
        }
        Ok((n, self.fmuladd(r, q, self.fconst(x, 1.0))?))
    }

    /// `a·b + c`, one FMA where the target has fast FMA (AVX2, AVX-512,
    /// NEON) and a multiply and an add elsewhere (`llvm.fmuladd`): half the
    /// instructions of the polynomials on the hosts that matter, and no
    /// libm call on the ones without FMA.
    pub(crate) fn fmuladd(&self, a: BV<'ctx>, b: BV<'ctx>, c: BV<'ctx>) -> Result<BV<'ctx>> {
        self.intrinsic("llvm.fmuladd", &[a, b, c])
    }

    /// `p · 2^d` for integral f32 `d ≤ 0`; 0 where `d < -126`.
    pub(crate) fn scale_pow2_nonpos(&self, p: BV<'ctx>, d: BV<'ctx>) -> Result<BV<'ctx>> {
        if let Some(scaled) = self.scalef_avx512(p, d)? {
            return Ok(scaled);
        }
        let lo = self.fconst(d, -126.0);
        let clamped = self.fmaxnum(d, lo)?;
        let scaled = self.fmul(p, self.pow2i(clamped)?)?;
        let tiny = self.fcmp(FloatPredicate::OLT, d, lo)?;
        self.select(tiny, self.fconst(p, 0.0), scaled)
    }

    /// `p · 2^d` by AVX-512's `vscalefps` (one instruction, exact, with
    /// gradual underflow to 0; `d = -inf` gives 0) when `p` is a vector of
    /// 16 f32 on x86-64, the only case where kernels build such vectors;
    /// `None` elsewhere. This is the instruction the two-pass softmax paper
    /// uses for its accumulation on AVX-512.
    fn scalef_avx512(&self, p: BV<'ctx>, d: BV<'ctx>) -> Result<Option<BV<'ctx>>> {
        if !self.is_avx512_f32(p) {
            return Ok(None);
        }
        self.avx512_unmasked("llvm.x86.avx512.mask.scalef.ps.512", p, d.into()).map(Some)
    }

    /// Calls the masked AVX-512 f32 intrinsic `name` as `name(a, b, a,
    /// all lanes, current rounding)`: every lane computed, none passed
    /// through.
    fn avx512_unmasked(
        &self,
        name: &str,
        a: BV<'ctx>,
        b: inkwell::values::BasicMetadataValueEnum<'ctx>,
    ) -> Result<BV<'ctx>> {
        let f = inkwell::intrinsics::Intrinsic::find(name)
            .and_then(|i| i.get_declaration(&self.module, &[]))
            .ok_or_else(|| BackendError::Llvm(format!("cannot declare `{name}`")))?;
        let all = self.ctx.i16_type().const_all_ones();
        // 4: the current rounding direction (no embedded rounding).
        let rounding = self.ctx.i32_type().const_int(4, false);
        let call = self.b.build_call(f, &[a.into(), b, a.into(), all.into(), rounding.into()], "avx512")?;
        call.try_as_basic_value().basic().ok_or_else(|| BackendError::Llvm(format!("`{name}` returned no value")))
    }

    /// `2^x` for f32 `x ≤ 64` (scalar or vector), 0 for `x = -inf` and
    /// below -126, NaN for NaN: `2^⌊x⌋ · p(x - ⌊x⌋)` with the degree-5
    /// [`EXP2_P5`]. With AVX-512 that is 7 instructions a vector
    /// (`vreduceps` for the fraction with AVX512DQ, then `vscalefps`, which
    /// takes `⌊x⌋` itself), where `exp` of natural-log arguments needs a
    /// two-step Cody-Waite reduction and the exponent's integer bits: the
    /// flash-attention tiles, which scale their scores by `log2 e` for free,
    /// spend their non-FMA time here.
    pub(crate) fn exp2_bounded(&self, x: BV<'ctx>) -> Result<BV<'ctx>> {
        let poly = |f: BV<'ctx>| -> Result<BV<'ctx>> {
            let mut p = self.fconst(f, EXP2_P5[0]);
            for &c in &EXP2_P5[1..] {
                p = self.fmuladd(p, f, self.fconst(f, c))?;
            }
            Ok(p)
        };
        if self.is_avx512_f32(x) {
            let frac = match self.reduce_fraction_avx512dq(x)? {
                // vreduceps gives 0 for ±inf, so -inf comes out as 1·2^-inf.
                Some(frac) => frac,
                None => {
                    // x - ⌊x⌋ is NaN at -inf: below -150 every result is 0.
                    let low = self.fconst(x, -150.0);
                    let under = self.fcmp(FloatPredicate::OLT, x, low)?;
                    let x = self.select(under, low, x)?;
                    self.fsub(x, self.intrinsic("llvm.floor", &[x])?)?
                }
            };
            return self.avx512_unmasked("llvm.x86.avx512.mask.scalef.ps.512", poly(frac)?, x.into());
        }
        // ⌊x⌋ ≥ -127 keeps 2^⌊x⌋'s biased exponent ≥ 0 (0 gives +0.0); the
        // ordered compare lets NaN through to the polynomial.
        let low = self.fconst(x, -127.0);
        let under = self.fcmp(FloatPredicate::OLT, x, low)?;
        let x = self.select(under, low, x)?;
        let n = self.intrinsic("llvm.floor", &[x])?;
        let p = poly(self.fsub(x, n)?)?;
        self.fmul(p, self.pow2i(n)?)
    }

    /// Whether `v` is a vector of 16 f32 on x86-64: the AVX-512 register
    /// the explicit-vector kernels build there.
    fn is_avx512_f32(&self, v: BV<'ctx>) -> bool {
        matches!(v, BV::VectorValue(x) if x.get_type().get_size() == 16) && self.is_f32(v) && self.targets_x86_64()
    }

    /// `x - ⌊x⌋` in one `vreduceps` (0 for ±inf) when the target has
    /// AVX512DQ; `None` otherwise.
    fn reduce_fraction_avx512dq(&self, x: BV<'ctx>) -> Result<Option<BV<'ctx>>> {
        if !self.avx512dq || !self.is_avx512_f32(x) {
            return Ok(None);
        }
        // imm 9: keep 0 fraction bits of the rounded part, round down,
        // suppress the precision exception.
        let imm = self.ctx.i32_type().const_int(9, false);
        self.avx512_unmasked("llvm.x86.avx512.mask.reduce.ps.512", x, imm.into()).map(Some)
    }

    /// exp for f32 (vectorizable) or f64 (intrinsic).
    pub(crate) fn exp(&self, x: BV<'ctx>) -> Result<BV<'ctx>> {
        if !self.is_f32(x) {
            return self.intrinsic("llvm.exp", &[x]);
        }
        // Below -87.3365 (ln of f32's smallest normal) the result is 0.
        // Above 88.8 it overflows: the clamp keeps n ≤ 128 and the product
        // gives +inf. In between, n is in [-126, 128], and 2^n as
        // 2^floor(n/2) · 2^(n - floor(n/2)) keeps both factors' exponent
        // bits in range at either end.
        let lo = self.fconst(x, -87.34);
        let hi = self.fconst(x, 88.8);
        let xc = self.fmaxnum(self.intrinsic("llvm.minnum", &[x, hi])?, lo)?;
        let (n, p) = self.exp_split(xc)?;
        let n1 = self.intrinsic("llvm.floor", &[self.fmul(n, self.fconst(x, 0.5))?])?;
        let n2 = self.fsub(n, n1)?;
        let y = self.fmul(self.fmul(p, self.pow2i(n1)?)?, self.pow2i(n2)?)?;
        let under = self.fcmp(FloatPredicate::OLT, x, self.fconst(x, -87.336_54))?;
        let y = self.select(under, self.fconst(x, 0.0), y)?;
        let nan = self.fcmp(FloatPredicate::UNO, x, x)?;
        self.select(nan, x, y)
    }

    /// exp of f32 `x ≤ 0` (or NaN, which it returns), as softmax takes it
    /// of `x - max`: `n` stays in [-127, 0], so `2^n` is one exponent
    /// insertion and nothing can overflow; fewer operations than
    /// [`Cg::exp`], which matters because softmax is bound by it.
    /// Inputs below -88 (and -inf) are clamped to -88, where `n = -127`
    /// makes the exponent field 0 and so `2^n` exactly 0: the underflow
    /// needs no select of its own. Between -87.68 and -87.34 the result is
    /// a subnormal near exp(x); from there down it is 0. NaN passes the
    /// clamp (its compare is false) and every operation after it, so it
    /// needs no select either. Small positive inputs (a rounding above a
    /// maximum) are exact too: the construction holds up to x = 88, not
    /// beyond. f64 takes [`Cg::exp`].
    pub(crate) fn exp_nonpositive(&self, x: BV<'ctx>) -> Result<BV<'ctx>> {
        if !self.is_f32(x) {
            return self.exp(x);
        }
        let floor = self.fconst(x, -88.0);
        let under = self.fcmp(FloatPredicate::OLT, x, floor)?;
        let x = self.select(under, floor, x)?;
        // n = rint(x·log2 e) by the magic-number addition: adding 1.5·2^23
        // rounds to an integer in the low mantissa bits, and the extra 127
        // is the exponent bias, so shifting those bits left by 23 gives
        // 2^n's bit pattern (0 for n = -127) with no conversion.
        let magic = self.fconst(x, EXP_ROUND_MAGIC);
        let biased = self.fmuladd(x, self.fconst(x, LOG2E), magic)?;
        let ity = self.int_like(x);
        let bits = self.b.build_bit_cast(biased, ity, "nbits")?;
        let scale = self.b.build_bit_cast(self.ishl(bits, self.iconst(ity, 23))?, x.get_type(), "pow2")?;
        let n = self.fsub(biased, magic)?;
        let r = self.fmuladd(n, self.fconst(x, -LN2_HI), x)?;
        let r = self.fmuladd(n, self.fconst(x, -LN2_LO), r)?;
        // exp(r) = 1 + r·q(r); exp(x) = s + (r·s)·q(r) saves the final
        // product by 2^n.
        let mut q = self.fconst(x, EXP_Q5[0]);
        for &c in &EXP_Q5[1..] {
            q = self.fmuladd(q, r, self.fconst(x, c))?;
        }
        self.fmuladd(self.fmul(r, scale)?, q, scale)
    }

    /// The logistic function `1 / (1 + exp(-x))`.
    pub(crate) fn sigmoid(&self, x: BV<'ctx>) -> Result<BV<'ctx>> {
        let e = self.exp(self.fneg(x)?)?;
        self.fdiv(self.fconst(x, 1.0), self.fadd(self.fconst(x, 1.0), e)?)
    }

    /// tanh: `sign(x) · (1 - 2 / (exp(2|x|) + 1))` for f32, libm for f64.
    pub(crate) fn tanh(&self, x: BV<'ctx>) -> Result<BV<'ctx>> {
        if !self.is_f32(x) {
            return self.libcall("tanh", &[x]);
        }
        let ax = self.intrinsic("llvm.fabs", &[x])?;
        let e = self.exp(self.fmul(ax, self.fconst(x, 2.0))?)?;
        let t = self.fsub(self.fconst(x, 1.0), self.fdiv(self.fconst(x, 2.0), self.fadd(e, self.fconst(x, 1.0))?)?)?;
        self.intrinsic("llvm.copysign", &[t, x])
    }

    /// erf: Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7) for
    /// f32, libm for f64.
    pub(crate) fn erf(&self, x: BV<'ctx>) -> Result<BV<'ctx>> {
        if !self.is_f32(x) {
            return self.libcall("erf", &[x]);
        }
        const P: f64 = 0.327_591_1;
        const A: [f64; 5] = [1.061_405_429, -1.453_152_027, 1.421_413_741, -0.284_496_736, 0.254_829_592];
        let ax = self.intrinsic("llvm.fabs", &[x])?;
        let t = self.fdiv(self.fconst(x, 1.0), self.fadd(self.fconst(x, 1.0), self.fmul(ax, self.fconst(x, P))?)?)?;
        let mut poly = self.fconst(x, A[0]);
        for &a in &A[1..] {
            poly = self.fmuladd(poly, t, self.fconst(x, a))?;
        }
        poly = self.fmul(poly, t)?;
        // -x² ≤ 0 (NaN passes through).
        let e = self.exp_nonpositive(self.fneg(self.fmul(ax, ax)?)?)?;
        let y = self.fsub(self.fconst(x, 1.0), self.fmul(poly, e)?)?;
        self.intrinsic("llvm.copysign", &[y, x])
    }
}
