//! Inline f32 math: polynomial approximations emitted as Cranelift IR, for
//! scalars (`f32`) and vectors (`f32x4`) alike. Nothing here calls out.
//!
//! | function | method | error (f32) |
//! | --- | --- | --- |
//! | `exp` | Cody–Waite reduction by ln 2, degree-7 minimax (Cephes `expf`), 2ⁿ in two steps so that overflow gives inf and underflow 0 or a subnormal | ≤ 1 ulp on normal results |
//! | `expm1` | the same reduction: `(2ⁿ − 1) + 2ⁿ·(eʳ − 1)` | ≤ 2 ulp |
//! | `log` | mantissa in [√½, √2), Cephes `logf` polynomial; subnormals rescaled; `log 0 = −inf`, `log x<0 = NaN` | ≤ 1 ulp |
//! | `log1p` | `log(1+u) − ((1+u) − 1 − u)/(1+u)` | ≤ 2 ulp |
//! | `sigmoid` | `1/(1+e^{−x})` for x ≥ 0, `e^x/(1+e^x)` below | ≤ 2 ulp |
//! | `softplus`, `logsigmoid` | `max(x,0) + log1p(e^{−|x|})` | ≤ 2 ulp |
//! | `tanh` | odd polynomial below 0.625, else `1 − 2/(e^{2|x|}+1)` | ≤ 2 ulp |
//! | `sin`, `cos` | reduction by π/2 in three parts (FMA), Cephes polynomials on [−π/4, π/4] | ≤ 2 ulp for \|x\| ≤ 10⁴ |
//! | `pow` | `exp(b·log|a|)` with IEEE special cases (negative bases with integer exponents, `pow(x, 0) = 1`, `pow(1, y) = 1`) | ≤ (2 + 3·\|b·ln a\|) ulp |
//!
//! NaN propagates through every function; ±inf give the libm limits.

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::types::{F32X4, I32, I32X4};
use cranelift_codegen::ir::{InstBuilder, MemFlagsData, StackSlot, StackSlotData, StackSlotKind, Type, Value};
use cranelift_frontend::FunctionBuilder;
use std::collections::HashMap;

/// Vector constants of a function, kept in a stack slot that the prologue
/// fills: loaded where used, so that x86 folds each load into the instruction
/// that uses it, never hoisted into registers that long loops would have to
/// spill (the spill and its reload cost more than the folded load).
///
/// Cranelift hoists loop-invariant pure values out of loops, so the loads
/// must not look invariant: their base address is read (an ordinary load)
/// from a slot once per basic block, which makes every constant load of the
/// block depend on that block. The constant loads themselves are pure
/// (read-only, non-trapping, movable): elaborated next to their single use
/// and deduplicated within a block.
#[derive(Default)]
pub(crate) struct ConstPool {
    pub slot: Option<StackSlot>,
    /// Holds the pool's address (stored by the prologue).
    pub base_slot: Option<StackSlot>,
    pub entries: Vec<u128>,
    index: HashMap<u128, usize>,
    /// The pool's address as read in the current block.
    base: Option<(cranelift_codegen::ir::Block, Value)>,
}

impl ConstPool {
    pub fn vector(&mut self, b: &mut FunctionBuilder, ty: Type, bits: u128) -> Value {
        if self.slot.is_none() {
            self.slot = Some(b.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, 16, 4)));
        }
        let ConstPool { entries, index, .. } = self;
        let i = *index.entry(bits).or_insert_with(|| {
            entries.push(bits);
            entries.len() - 1
        });
        let base = self.base(b);
        let flags = MemFlagsData::trusted().with_readonly().with_can_move();
        b.ins().load(ty, flags, base, (16 * i) as i32)
    }

    /// The pool's address, read once per block.
    fn base(&mut self, b: &mut FunctionBuilder) -> Value {
        let here = b.current_block();
        if let Some((blk, v)) = self.base {
            if Some(blk) == here {
                return v;
            }
        }
        let slot = *self
            .base_slot
            .get_or_insert_with(|| b.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, 8, 3)));
        let i64 = cranelift_codegen::ir::types::I64;
        let v = b.ins().stack_load(i64, i64, slot, 0);
        if let Some(blk) = here {
            self.base = Some((blk, v));
        }
        v
    }

    fn splat32(x: u32) -> u128 {
        let x = x as u128;
        x | (x << 32) | (x << 64) | (x << 96)
    }

    pub fn f32x4(&mut self, b: &mut FunctionBuilder, x: f32) -> Value {
        self.vector(b, F32X4, Self::splat32(x.to_bits()))
    }

    pub fn i32x4(&mut self, b: &mut FunctionBuilder, x: i32) -> Value {
        self.vector(b, I32X4, Self::splat32(x as u32))
    }
}

/// An emitter of float math for one type (`f32` or `f32x4`).
pub(crate) struct Fm<'a, 'b> {
    pub b: &'a mut FunctionBuilder<'b>,
    pub pool: &'a mut ConstPool,
    pub fma: bool,
    pub ty: Type,
}

const MAGIC: f32 = 12_582_912.0; // 1.5 · 2²³: adding it rounds to an integer in the low bits.

impl<'a, 'b> Fm<'a, 'b> {
    pub fn new(b: &'a mut FunctionBuilder<'b>, pool: &'a mut ConstPool, fma: bool, x: Value) -> Self {
        let ty = b.func.dfg.value_type(x);
        Fm { b, pool, fma, ty }
    }

    fn vector(&self) -> bool {
        self.ty.is_vector()
    }

    fn ity(&self) -> Type {
        if self.vector() {
            I32X4
        } else {
            I32
        }
    }

    pub fn f(&mut self, x: f32) -> Value {
        if self.vector() {
            self.pool.f32x4(self.b, x)
        } else {
            self.b.ins().f32const(x)
        }
    }

    pub fn i(&mut self, x: i32) -> Value {
        if self.vector() {
            self.pool.i32x4(self.b, x)
        } else {
            self.b.ins().iconst(I32, x as i64)
        }
    }

    pub fn add(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fadd(a, b)
    }
    pub fn sub(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fsub(a, b)
    }
    pub fn mul(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fmul(a, b)
    }
    pub fn div(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fdiv(a, b)
    }
    /// `a·b + c`, fused where the target has FMA.
    pub fn madd(&mut self, a: Value, b: Value, c: Value) -> Value {
        if self.fma {
            self.b.ins().fma(a, b, c)
        } else {
            let p = self.b.ins().fmul(a, b);
            self.b.ins().fadd(p, c)
        }
    }
    fn maddc(&mut self, a: Value, b: f32, c: Value) -> Value {
        let b = self.f(b);
        self.madd(a, b, c)
    }
    /// Horner's rule; `coeffs` from the highest degree down.
    fn poly(&mut self, x: Value, coeffs: &[f32]) -> Value {
        let mut acc = self.f(coeffs[0]);
        for c in &coeffs[1..] {
            let c = self.f(*c);
            acc = self.madd(acc, x, c);
        }
        acc
    }
    fn bits(&mut self, x: Value) -> Value {
        let t = self.ity();
        self.b.ins().bitcast(t, MemFlagsData::new(), x)
    }
    fn of_bits(&mut self, x: Value) -> Value {
        let t = self.ty;
        self.b.ins().bitcast(t, MemFlagsData::new(), x)
    }
    /// A float comparison mask (i8 for scalars, i32x4 lanes for vectors).
    pub fn cmp(&mut self, cc: FloatCC, a: Value, b: Value) -> Value {
        self.b.ins().fcmp(cc, a, b)
    }
    fn cmpc(&mut self, cc: FloatCC, a: Value, b: f32) -> Value {
        let b = self.f(b);
        self.cmp(cc, a, b)
    }
    /// `m ? a : b` for a comparison mask `m`.
    pub fn sel(&mut self, m: Value, a: Value, b: Value) -> Value {
        select_mask(self.b, m, a, b)
    }
    fn and(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().band(a, b)
    }
    fn or(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().bor(a, b)
    }
    fn not(&mut self, a: Value) -> Value {
        self.b.ins().bnot(a)
    }
    /// `|x|` with the sign of `y` (bitwise; x86 has no vector `fcopysign`).
    pub fn copysign(&mut self, x: Value, y: Value) -> Value {
        let xb = self.bits(x);
        let yb = self.bits(y);
        let mag = self.i(0x7fff_ffff);
        let sgn = self.i(i32::MIN);
        let xb = self.and(xb, mag);
        let yb = self.and(yb, sgn);
        let r = self.or(xb, yb);
        self.of_bits(r)
    }
    fn abs(&mut self, x: Value) -> Value {
        self.b.ins().fabs(x)
    }
    fn neg(&mut self, x: Value) -> Value {
        self.b.ins().fneg(x)
    }

    /// `e^r` on the reduced range as `(e^r − 1, n)`: x = n·ln2 + r, |r| ≤ ln2/2.
    /// Returns (q = e^r − 1, s1, s2) with 2ⁿ = s1·s2.
    fn exp_core(&mut self, x: Value) -> (Value, Value, Value) {
        // Clamp (NaN stays NaN: comparisons with NaN are false).
        let hi = self.f(88.8);
        let lo = self.f(-104.0);
        // `hi < x` rather than `x > hi`, `x < lo`: the forms x86 lowers to
        // minps / maxps (which keep a NaN `x`).
        let over = self.cmp(FloatCC::LessThan, hi, x);
        let x = self.sel(over, hi, x);
        let under = self.cmp(FloatCC::LessThan, x, lo);
        let x = self.sel(under, lo, x);
        let magic = self.f(MAGIC);
        let t = self.maddc(x, std::f32::consts::LOG2_E, magic);
        let nf = self.sub(t, magic);
        let tb = self.bits(t);
        let mb = self.i(MAGIC.to_bits() as i32);
        let n = self.b.ins().isub(tb, mb);
        let nneg = self.neg(nf);
        let r = self.maddc(nneg, 0.693_359_4, x);
        let r = self.maddc(nneg, -2.121_944_4e-4, r);
        let p = self.poly(r, &[1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_6e-1, 0.5]);
        let r2 = self.mul(r, r);
        let q = self.madd(p, r2, r);
        // 2ⁿ as two normal factors: n ∈ [−150, 128].
        let n1 = self.b.ins().sshr_imm_s(n, 1);
        let n2 = self.b.ins().isub(n, n1);
        let bias = self.i(127);
        let e1 = self.b.ins().iadd(n1, bias);
        let e1 = self.b.ins().ishl_imm_s(e1, 23);
        let e2 = self.b.ins().iadd(n2, bias);
        let e2 = self.b.ins().ishl_imm_s(e2, 23);
        let s1 = self.of_bits(e1);
        let s2 = self.of_bits(e2);
        (q, s1, s2)
    }

    pub fn exp(&mut self, x: Value) -> Value {
        let (q, s1, s2) = self.exp_core(x);
        let one = self.f(1.0);
        let p = self.add(q, one);
        let p = self.mul(p, s1);
        self.mul(p, s2)
    }

    pub fn expm1(&mut self, x: Value) -> Value {
        let (q, s1, s2) = self.exp_core(x);
        let one = self.f(1.0);
        let s = self.mul(s1, s2);
        let sm1 = self.sub(s, one);
        let small = self.madd(s, q, sm1);
        // Large x: plain exp (s alone may overflow while e^x does not).
        let p = self.add(q, one);
        let p = self.mul(p, s1);
        let big = self.mul(p, s2);
        let is_big = self.cmpc(FloatCC::GreaterThan, x, 80.0);
        self.sel(is_big, big, small)
    }

    pub fn log(&mut self, x: Value) -> Value {
        // Subnormals: scale up by 2²³.
        let sub = self.cmpc(FloatCC::LessThan, x, f32::MIN_POSITIVE);
        let scale = self.f(8_388_608.0);
        let xs = self.mul(x, scale);
        let xs = self.sel(sub, xs, x);
        let zero = self.f(0.0);
        let adj23 = self.f(23.0);
        let adj = self.sel(sub, adj23, zero);
        let bits = self.bits(xs);
        let eb = self.b.ins().ushr_imm_s(bits, 23);
        let c126 = self.i(126);
        let e = self.b.ins().isub(eb, c126);
        let mant = self.i(0x007f_ffff);
        let m = self.and(bits, mant);
        let half = self.i(0x3f00_0000);
        let m = self.or(m, half);
        let m = self.of_bits(m); // [0.5, 1)
        let ef = self.b.ins().fcvt_from_sint(self.ty, e);
        let ef = self.sub(ef, adj);
        let small = self.cmpc(FloatCC::LessThan, m, std::f32::consts::FRAC_1_SQRT_2);
        let one = self.f(1.0);
        let ef1 = self.sub(ef, one);
        let ef = self.sel(small, ef1, ef);
        let m2 = self.add(m, m);
        let m = self.sel(small, m2, m);
        let m = self.sub(m, one);
        let z = self.mul(m, m);
        let p = self.poly(
            m,
            &[
                7.037_683_6e-2,
                -1.151_461e-1,
                1.167_699_84e-1,
                -1.242_014_1e-1,
                1.424_932_3e-1,
                -1.666_805_7e-1,
                2.000_071_4e-1,
                -2.499_999_4e-1,
                3.333_333e-1,
            ],
        );
        let mz = self.mul(m, z);
        let y = self.mul(p, mz);
        let y = self.maddc(ef, -2.121_944_4e-4, y);
        let y = self.maddc(z, -0.5, y);
        let r = self.add(m, y);
        let r = self.maddc(ef, 0.693_359_4, r);
        // Special values.
        let inf = self.f(f32::INFINITY);
        let is_inf = self.cmp(FloatCC::Equal, x, inf);
        let r = self.sel(is_inf, inf, r);
        let nan = self.f(f32::NAN);
        let neg = self.cmp(FloatCC::LessThan, x, zero);
        let r = self.sel(neg, nan, r);
        let ninf = self.f(f32::NEG_INFINITY);
        let is0 = self.cmp(FloatCC::Equal, x, zero);
        let r = self.sel(is0, ninf, r);
        let isnan = self.cmp(FloatCC::Unordered, x, x);
        self.sel(isnan, x, r)
    }

    pub fn log1p(&mut self, u: Value) -> Value {
        let one = self.f(1.0);
        let w = self.add(one, u);
        let l = self.log(w);
        let d = self.sub(w, one);
        let d = self.sub(d, u);
        let c = self.div(d, w);
        let r = self.sub(l, c);
        let inf = self.f(f32::INFINITY);
        let is_inf = self.cmp(FloatCC::Equal, u, inf);
        self.sel(is_inf, inf, r)
    }

    pub fn sigmoid(&mut self, x: Value) -> Value {
        let ax = self.abs(x);
        let nax = self.neg(ax);
        let e = self.exp(nax);
        let one = self.f(1.0);
        let d = self.add(one, e);
        let s = self.div(one, d);
        let es = self.mul(e, s);
        let zero = self.f(0.0);
        let pos = self.cmp(FloatCC::GreaterThanOrEqual, x, zero);
        let r = self.sel(pos, s, es);
        let isnan = self.cmp(FloatCC::Unordered, x, x);
        self.sel(isnan, x, r)
    }

    pub fn softplus(&mut self, x: Value) -> Value {
        let zero = self.f(0.0);
        let pos = self.cmp(FloatCC::LessThan, zero, x); // maxps
        let m = self.sel(pos, x, zero);
        let ax = self.abs(x);
        let nax = self.neg(ax);
        let e = self.exp(nax);
        let l = self.log1p(e);
        self.add(m, l)
    }

    pub fn logsigmoid(&mut self, x: Value) -> Value {
        let nx = self.neg(x);
        let s = self.softplus(nx);
        self.neg(s)
    }

    pub fn tanh(&mut self, x: Value) -> Value {
        let ax = self.abs(x);
        // Large: 1 − 2/(e^{2|x|} + 1) with x's sign.
        let two_ax = self.add(ax, ax);
        let e = self.exp(two_ax);
        let one = self.f(1.0);
        let two = self.f(2.0);
        let d = self.add(e, one);
        let q = self.div(two, d);
        let big = self.sub(one, q);
        let big = self.copysign(big, x);
        // Small: x + x·s·P(s), s = x².
        let s = self.mul(x, x);
        let p = self.poly(s, &[-5.704_988_7e-3, 2.063_908_8e-2, -5.373_971_5e-2, 1.333_144_2e-1, -3.333_328e-1]);
        let xs = self.mul(x, s);
        let small = self.madd(p, xs, x);
        let is_big = self.cmpc(FloatCC::GreaterThanOrEqual, ax, 0.625);
        self.sel(is_big, big, small)
    }

    /// sin (`cos = false`) or cos of `x`.
    pub fn sincos(&mut self, x: Value, cos: bool) -> Value {
        let magic = self.f(MAGIC);
        let t = self.maddc(x, std::f32::consts::FRAC_2_PI, magic);
        let jf = self.sub(t, magic);
        let tb = self.bits(t);
        let mb = self.i(MAGIC.to_bits() as i32);
        let j = self.b.ins().isub(tb, mb);
        let nj = self.neg(jf);
        // π/2 = P1 + P2 + P3.
        let r = self.maddc(nj, 1.570_796_4, x);
        let r = self.maddc(nj, -4.371_139e-8, r);
        let r = self.maddc(nj, -1.715_124_5e-15, r);
        let s = self.mul(r, r);
        let ps = self.poly(s, &[-1.951_529_6e-4, 8.332_161e-3, -1.666_665_5e-1]);
        let rs = self.mul(r, s);
        let sin_r = self.madd(ps, rs, r);
        let pc = self.poly(s, &[2.443_315_7e-5, -1.388_731_6e-3, 4.166_664_6e-2]);
        let ss = self.mul(s, s);
        let one = self.f(1.0);
        let hs = self.maddc(s, -0.5, one);
        let cos_r = self.madd(pc, ss, hs);
        // Quadrant: sin(x) = [sin r, cos r, −sin r, −cos r][j mod 4]; cos(x) = sin(x + π/2).
        let q = if cos {
            let one = self.i(1);
            self.b.ins().iadd(j, one)
        } else {
            j
        };
        let c1 = self.i(1);
        let odd = self.and(q, c1);
        let zero_i = self.i(0);
        let swap = self.b.ins().icmp(IntCC::NotEqual, odd, zero_i);
        let v = select_mask(self.b, swap, cos_r, sin_r);
        let c2 = self.i(2);
        let sign = self.and(q, c2);
        let sign = self.b.ins().ishl_imm_s(sign, 30);
        let vb = self.bits(v);
        let vb = self.b.ins().bxor(vb, sign);
        self.of_bits(vb)
    }

    pub fn pow(&mut self, a: Value, b: Value) -> Value {
        let aa = self.abs(a);
        let l = self.log(aa);
        let bl = self.mul(b, l);
        let r = self.exp(bl);
        let zero = self.f(0.0);
        let one = self.f(1.0);
        let half = self.f(0.5);
        let fb = self.b.ins().floor(b);
        let is_int = self.cmp(FloatCC::Equal, fb, b);
        let hb = self.mul(b, half);
        let fhb = self.b.ins().floor(hb);
        let even_half = self.cmp(FloatCC::Equal, fhb, hb);
        let not_even = self.not(even_half);
        let odd = self.and(is_int, not_even);
        let neg_a = self.cmp(FloatCC::LessThan, a, zero);
        let not_int = self.not(is_int);
        let bad = self.and(neg_a, not_int);
        let ninf = self.f(f32::NEG_INFINITY);
        let finite = self.cmp(FloatCC::NotEqual, a, ninf);
        let bad = self.and(bad, finite);
        let nan = self.f(f32::NAN);
        let r = self.sel(bad, nan, r);
        let ab = self.bits(a);
        let zi = self.i(0);
        let sign = self.b.ins().icmp(IntCC::SignedLessThan, ab, zi);
        let flip = self.and(sign, odd);
        let nr = self.neg(r);
        let r = self.sel(flip, nr, r);
        let b0 = self.cmp(FloatCC::Equal, b, zero);
        let r = self.sel(b0, one, r);
        let a1 = self.cmp(FloatCC::Equal, a, one);
        self.sel(a1, one, r)
    }

    /// Round half away from zero.
    pub fn round(&mut self, x: Value) -> Value {
        let t = self.b.ins().trunc(x);
        let d = self.sub(x, t);
        let ad = self.abs(d);
        let ge = self.cmpc(FloatCC::GreaterThanOrEqual, ad, 0.5);
        let one = self.f(1.0);
        let s = self.copysign(one, x);
        let t1 = self.add(t, s);
        self.sel(ge, t1, t)
    }

    /// Rounds to bfloat16 precision (nearest even), kept as f32.
    pub fn round_bf16(&mut self, x: Value) -> Value {
        let bits = self.bits(x);
        let lsb = self.b.ins().ushr_imm_s(bits, 16);
        let c1 = self.i(1);
        let lsb = self.and(lsb, c1);
        let bias = self.i(0x7fff);
        let r = self.b.ins().iadd(bits, bias);
        let r = self.b.ins().iadd(r, lsb);
        let mask = self.i(0xffff_0000_u32 as i32);
        let r = self.and(r, mask);
        let r = self.of_bits(r);
        let isnan = self.cmp(FloatCC::Unordered, x, x);
        self.sel(isnan, x, r)
    }

    /// Rounds to IEEE half precision (nearest even, subnormals, overflow to
    /// inf), kept as f32.
    pub fn round_f16(&mut self, x: Value) -> Value {
        // Normal range: round the mantissa to 10 bits.
        let bits = self.bits(x);
        let lsb = self.b.ins().ushr_imm_s(bits, 13);
        let c1 = self.i(1);
        let lsb = self.and(lsb, c1);
        let bias = self.i(0x0fff);
        let r = self.b.ins().iadd(bits, bias);
        let r = self.b.ins().iadd(r, lsb);
        let mask = self.i(!0x1fff);
        let r = self.and(r, mask);
        let normal = self.of_bits(r);
        // Subnormal range (|x| < 2⁻¹⁴): quantum 2⁻²⁴, by adding and removing 0.5.
        let ax = self.abs(x);
        let h = self.f(0.5);
        let t = self.add(ax, h);
        let t = self.sub(t, h);
        let sub = self.copysign(t, x);
        let is_sub = self.cmpc(FloatCC::LessThan, ax, 6.103_515_6e-5);
        let r = self.sel(is_sub, sub, normal);
        // Overflow.
        let ar = self.abs(r);
        let over = self.cmpc(FloatCC::GreaterThan, ar, 65504.0);
        let inf = self.f(f32::INFINITY);
        let sinf = self.copysign(inf, x);
        let r = self.sel(over, sinf, r);
        let isnan = self.cmp(FloatCC::Unordered, x, x);
        self.sel(isnan, x, r)
    }
}

/// `m ? a : b` for a mask from `icmp`/`fcmp` (i8 for scalars, lane masks for vectors).
pub(crate) fn select_mask(b: &mut FunctionBuilder, m: Value, x: Value, y: Value) -> Value {
    let ty = b.func.dfg.value_type(x);
    if ty.is_vector() {
        let mt = b.func.dfg.value_type(m);
        let m = if mt != ty { b.ins().bitcast(ty, MemFlagsData::new(), m) } else { m };
        b.ins().bitselect(m, x, y)
    } else {
        b.ins().select(m, x, y)
    }
}

/// Host-side rounding of constants to the storage formats (round to nearest even).
pub(crate) fn round_host(x: f64, mant_bits: i32, min_exp: i32, max: f64) -> f64 {
    if !x.is_finite() || x == 0.0 {
        return x;
    }
    let e = x.abs().log2().floor() as i32;
    let e = e.max(min_exp);
    let q = (2f64).powi(e - mant_bits);
    let r = (x / q).round_ties_even() * q;
    if r.abs() > max {
        f64::INFINITY.copysign(x)
    } else {
        r
    }
}

#[cfg(test)]
mod tests {
    use super::round_host;

    #[test]
    fn host_rounding() {
        // f16: 10 mantissa bits, min normal exponent −14, max 65504.
        let f16 = |x: f64| round_host(x, 10, -14, 65504.0);
        assert_eq!(f16(1.0), 1.0);
        assert_eq!(f16(1.0 + 1.0 / 2048.0), 1.0); // tie to even
        assert_eq!(f16(1.0 + 3.0 / 2048.0), 1.0 + 2.0 / 1024.0);
        assert_eq!(f16(70000.0), f64::INFINITY);
        assert_eq!(f16(2f64.powi(-24)), 2f64.powi(-24));
        let bf16 = |x: f64| round_host(x, 7, -126, 3.389_531_389_251_535_5e38);
        assert_eq!(bf16(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(bf16(3.0), 3.0);
    }
}
