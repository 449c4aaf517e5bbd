//! `dot` on tensor cores: `mma.sync` over warp tiles.
//!
//! The result `[M, N]` is cut into 16×8 fragments; each warp owns a block of
//! `wm × wn` fragments at a time (warp-uniform loop over blocks), holds their
//! accumulators in registers across the whole k-loop, and writes them to the
//! result's shared-memory slot at the end. Operand elements are read where
//! they are held (shared slot, view, or recomputed lazily) at the positions
//! of the PTX fragment layouts, so any operand representation works.
//!
//! Fragment layouts (PTX ISA, `mma.m16n8k8` `.tf32` and `mma.m16n8k16`
//! `.bf16`), with `g = lane / 4`, `t = lane % 4`:
//! * tf32 A (16×8): `a0 (g, t)`, `a1 (g+8, t)`, `a2 (g, t+4)`, `a3 (g+8, t+4)`;
//!   B (8×8): `b0 (t, g)`, `b1 (t+4, g)`;
//! * bf16 A (16×16), two elements a register, low half first:
//!   `r0 (g, 2t..2t+1)`, `r1 (g+8, 2t..)`, `r2 (g, 2t+8..)`, `r3 (g+8, 2t+8..)`;
//!   B (16×8): `r0 (2t..2t+1, g)`, `r1 (2t+8.., g)`;
//! * accumulators (16×8, f32): `c0 (g, 2t)`, `c1 (g, 2t+1)`, `c2 (g+8, 2t)`,
//!   `c3 (g+8, 2t+1)`.
//!
//! Precision ([`Matmul`]): `Tf32x3` splits each f32 operand into a tf32 high
//! part and a tf32 remainder and sums three products (`lo·hi + hi·lo + hi·hi`),
//! which keeps f32 accuracy (≈ 1e-6 relative); `Bf16` rounds operands to
//! bf16 and issues one `mma` per step (the speed of bf16 models, ≈ 4e-3
//! relative error per product).

use super::{fv, iv, Em, Touch, R};
use crate::Matmul;
use inkwell::types::BasicTypeEnum;
use inkwell::values::{BasicValueEnum, FloatValue, IntValue};
use mixc_ir::tile::TValue;

/// A `dot` the tensor-core path takes: operands and shapes.
pub(super) struct MmaDot {
    pub a: TValue,
    pub b: TValue,
    pub acc: Option<TValue>,
    pub trans_a: bool,
    pub trans_b: bool,
    pub m: u32,
    pub n: u32,
    pub k: u32,
}

/// Rows and columns of one warp's block of fragments.
fn warp_block(mt: u32, nt: u32, warps: u32) -> (u32, u32) {
    let divides = |x: u32, d: u32| x.is_multiple_of(d);
    let mut wm = if divides(mt, 2) { 2 } else { 1 };
    let mut wn = [4, 2, 1].into_iter().find(|d| divides(nt, *d)).unwrap_or(1);
    // Keep every warp busy where the tile allows it.
    while (mt / wm) * (nt / wn) < warps && (wn > 1 || wm > 1) {
        if wn > 1 {
            wn /= 2;
        } else {
            wm /= 2;
        }
    }
    (wm, wn)
}

/// Registers one thread holds for a tensor-core `dot` of an `[m, n]` result
/// in a CTA of `threads`: its warp block's accumulators (4 f32 per 16×8
/// fragment) and one k-step's A and B fragments (4 and 2 registers each;
/// tf32x3 keeps a high and a low part of both).
pub(crate) fn registers(mode: Matmul, m: u32, n: u32, threads: u32) -> u32 {
    let (wm, wn) = warp_block(m / 16, n / 8, (threads / 32).max(1));
    let parts = if mode == Matmul::Tf32x3 { 2 } else { 1 };
    wm * wn * 4 + parts * (wm * 4 + wn * 2)
}

/// Whether the tensor-core path takes a dot of these shapes.
pub(crate) fn takes(mode: Matmul, m: u32, n: u32, k: u32) -> bool {
    let kstep = match mode {
        Matmul::Simt => return false,
        Matmul::Tf32x3 => 8,
        Matmul::Bf16 => 16,
    };
    m.is_multiple_of(16) && n.is_multiple_of(8) && k.is_multiple_of(kstep) && m > 0 && n > 0 && k > 0
}

impl<'ctx> Em<'ctx, '_> {
    /// Emits `slot = a·b (+ acc)` on tensor cores (see the module docs).
    pub(super) fn mma_dot(&mut self, slot: usize, d: &MmaDot) -> R<()> {
        let mode = self.opts.matmul;
        let mut t = Touch::default();
        for x in [Some(d.a), Some(d.b), d.acc].into_iter().flatten() {
            self.touch_value(x, false, &mut t)?;
        }
        t.writes.push(self.acc(slot, false)?);
        self.sync(&t)?;

        let warps = (self.plan.threads / 32).max(1);
        let (mt, nt) = (d.m / 16, d.n / 8);
        let (wm, wn) = warp_block(mt, nt, warps);
        let blocks_n = nt / wn;
        let blocks = (mt / wm) * blocks_n;
        let kstep = if mode == Matmul::Bf16 { 16 } else { 8 };

        let lane = self.b.build_and(self.tid, self.i32c(31), "lane")?;
        let warp = self.b.build_right_shift(self.tid, self.i32c(5), false, "warp")?;
        let g = self.b.build_right_shift(lane, self.i32c(2), false, "g")?;
        let tq = self.b.build_and(lane, self.i32c(3), "t")?;

        self.counted(warp, self.i32c(blocks as i64), self.i32c(warps as i64), None, &[], &mut |s, blk, _| {
            let bm = s.b.build_int_unsigned_div(blk, s.i32c(blocks_n as i64), "")?;
            let bn = s.b.build_int_unsigned_rem(blk, s.i32c(blocks_n as i64), "")?;
            let row0 = s.b.build_int_mul(bm, s.i32c(16 * wm as i64), "")?;
            let col0 = s.b.build_int_mul(bn, s.i32c(8 * wn as i64), "")?;
            // Accumulator positions of fragment (i, j), element c.
            let pos = |s: &Em<'ctx, '_>, i: u32, j: u32, c: u32| -> R<(IntValue<'ctx>, IntValue<'ctx>)> {
                let r = s.b.build_int_add(row0, s.i32c((16 * i + 8 * (c / 2)) as i64), "")?;
                let r = s.b.build_int_add(r, g, "")?;
                let cc = s.b.build_int_mul(tq, s.i32c(2), "")?;
                let cc = s.b.build_int_add(cc, col0, "")?;
                let cc = s.b.build_int_add(cc, s.i32c((8 * j + c % 2) as i64), "")?;
                Ok((r, cc))
            };
            let mut init: Vec<BasicValueEnum<'ctx>> = vec![];
            for i in 0..wm {
                for j in 0..wn {
                    for c in 0..4 {
                        let x = match d.acc {
                            Some(acc) => {
                                let (r, cc) = pos(s, i, j, c)?;
                                s.elem(acc, &[r, cc])?
                            }
                            None => s.f32c(0.0).into(),
                        };
                        init.push(x);
                    }
                }
            }
            let sums = s.counted(s.i32c(0), s.i32c(d.k as i64), s.i32c(kstep), None, &init, &mut |s, k0, accs| {
                let mut a_frags = vec![];
                for i in 0..wm {
                    let r = s.b.build_int_add(row0, s.i32c(16 * i as i64), "")?;
                    a_frags.push(s.a_fragment(d, r, k0, g, tq)?);
                }
                let mut b_frags = vec![];
                for j in 0..wn {
                    let c = s.b.build_int_add(col0, s.i32c(8 * j as i64), "")?;
                    b_frags.push(s.b_fragment(d, c, k0, g, tq)?);
                }
                let mut out = Vec::with_capacity(accs.len());
                for (i, a) in a_frags.iter().enumerate() {
                    for (j, b) in b_frags.iter().enumerate() {
                        let base = (i * b_frags.len() + j) * 4;
                        let mut c = [fv(accs[base])?, fv(accs[base + 1])?, fv(accs[base + 2])?, fv(accs[base + 3])?];
                        match mode {
                            Matmul::Bf16 => c = s.mma_bf16(&a.0, &b.0, c)?,
                            _ => {
                                c = s.mma_tf32(&a.1, &b.0, c)?;
                                c = s.mma_tf32(&a.0, &b.1, c)?;
                                c = s.mma_tf32(&a.0, &b.0, c)?;
                            }
                        }
                        out.extend(c.iter().map(|x| BasicValueEnum::from(*x)));
                    }
                }
                Ok(out)
            })?;
            for i in 0..wm {
                for j in 0..wn {
                    for c in 0..4 {
                        let (r, cc) = pos(s, i, j, c)?;
                        let e = s.b.build_int_mul(r, s.i32c(d.n as i64), "")?;
                        let e = s.b.build_int_add(e, cc, "")?;
                        let x = sums[((i * wn + j) * 4 + c) as usize];
                        s.store_slot(slot, mixc_ir::DType::F32, e, x)?;
                    }
                }
            }
            Ok(vec![])
        })?;
        Ok(())
    }

    /// Element `(r, c)` of the logical left operand `A` (`[M, K]`).
    fn a_at(&mut self, d: &MmaDot, r: IntValue<'ctx>, c: IntValue<'ctx>) -> R<FloatValue<'ctx>> {
        let idx = if d.trans_a { [c, r] } else { [r, c] };
        fv(self.elem(d.a, &idx)?)
    }

    /// Element `(r, c)` of the logical right operand `B` (`[K, N]`).
    fn b_at(&mut self, d: &MmaDot, r: IntValue<'ctx>, c: IntValue<'ctx>) -> R<FloatValue<'ctx>> {
        let idx = if d.trans_b { [c, r] } else { [r, c] };
        fv(self.elem(d.b, &idx)?)
    }

    fn add(&self, x: IntValue<'ctx>, c: i64) -> R<IntValue<'ctx>> {
        Ok(self.b.build_int_add(x, self.i32c(c), "")?)
    }

    /// This lane's A fragment of rows `r0..r0+16`, columns `k0..k0+kstep`, as
    /// registers: (tf32 high parts or bf16 pairs, tf32 remainders or nothing).
    #[allow(clippy::type_complexity)]
    fn a_fragment(
        &mut self,
        d: &MmaDot,
        r0: IntValue<'ctx>,
        k0: IntValue<'ctx>,
        g: IntValue<'ctx>,
        t: IntValue<'ctx>,
    ) -> R<(Vec<IntValue<'ctx>>, Vec<IntValue<'ctx>>)> {
        let row = self.b.build_int_add(r0, g, "")?;
        let row8 = self.add(row, 8)?;
        match self.opts.matmul {
            Matmul::Bf16 => {
                let c = self.b.build_int_mul(t, self.i32c(2), "")?;
                let c = self.b.build_int_add(c, k0, "")?;
                let mut regs = vec![];
                for (r, dc) in [(row, 0), (row8, 0), (row, 8), (row8, 8)] {
                    let c0 = self.add(c, dc)?;
                    let c1 = self.add(c, dc + 1)?;
                    let x0 = self.a_at(d, r, c0)?;
                    let x1 = self.a_at(d, r, c1)?;
                    regs.push(self.pack_bf16(x0, x1)?);
                }
                Ok((regs, vec![]))
            }
            _ => {
                let c = self.b.build_int_add(t, k0, "")?;
                let c4 = self.add(c, 4)?;
                let (mut hi, mut lo) = (vec![], vec![]);
                for (r, cc) in [(row, c), (row8, c), (row, c4), (row8, c4)] {
                    let x = self.a_at(d, r, cc)?;
                    let (h, l) = self.split_tf32(x)?;
                    hi.push(h);
                    lo.push(l);
                }
                Ok((hi, lo))
            }
        }
    }

    /// This lane's B fragment of rows `k0..k0+kstep`, columns `c0..c0+8`.
    #[allow(clippy::type_complexity)]
    fn b_fragment(
        &mut self,
        d: &MmaDot,
        c0: IntValue<'ctx>,
        k0: IntValue<'ctx>,
        g: IntValue<'ctx>,
        t: IntValue<'ctx>,
    ) -> R<(Vec<IntValue<'ctx>>, Vec<IntValue<'ctx>>)> {
        let col = self.b.build_int_add(c0, g, "")?;
        match self.opts.matmul {
            Matmul::Bf16 => {
                let r = self.b.build_int_mul(t, self.i32c(2), "")?;
                let r = self.b.build_int_add(r, k0, "")?;
                let mut regs = vec![];
                for dr in [0, 8] {
                    let r0 = self.add(r, dr)?;
                    let r1 = self.add(r, dr + 1)?;
                    let x0 = self.b_at(d, r0, col)?;
                    let x1 = self.b_at(d, r1, col)?;
                    regs.push(self.pack_bf16(x0, x1)?);
                }
                Ok((regs, vec![]))
            }
            _ => {
                let r = self.b.build_int_add(t, k0, "")?;
                let r4 = self.add(r, 4)?;
                let (mut hi, mut lo) = (vec![], vec![]);
                for rr in [r, r4] {
                    let x = self.b_at(d, rr, col)?;
                    let (h, l) = self.split_tf32(x)?;
                    hi.push(h);
                    lo.push(l);
                }
                Ok((hi, lo))
            }
        }
    }

    /// `x ≈ hi + lo` with both parts tf32 (as `.b32` registers).
    fn split_tf32(&mut self, x: FloatValue<'ctx>) -> R<(IntValue<'ctx>, IntValue<'ctx>)> {
        let i32t: BasicTypeEnum = self.cx.i32_type().into();
        let f32t: BasicTypeEnum = self.cx.f32_type().into();
        let f = self.func("llvm.nvvm.f2tf32.rna", Some(i32t), &[f32t]);
        let hi = match self.call(f, &[x.into()])? {
            Some(v) => iv(v)?,
            None => return super::fail("f2tf32 returned nothing"),
        };
        let hi_f = self.b.build_bit_cast(hi, self.cx.f32_type(), "")?.into_float_value();
        let rest = self.b.build_float_sub(x, hi_f, "")?;
        let lo = match self.call(f, &[rest.into()])? {
            Some(v) => iv(v)?,
            None => return super::fail("f2tf32 returned nothing"),
        };
        Ok((hi, lo))
    }

    /// Two f32 values rounded to bf16 and packed in one `.b32` (`lo` in the low half).
    pub(super) fn pack_bf16(&mut self, lo: FloatValue<'ctx>, hi: FloatValue<'ctx>) -> R<IntValue<'ctx>> {
        let bf = self.cx.bf16_type();
        let v2 = bf.vec_type(2);
        let l = self.b.build_float_trunc(lo, bf, "")?;
        let h = self.b.build_float_trunc(hi, bf, "")?;
        let v = v2.get_poison();
        let v = self.b.build_insert_element(v, l, self.i32c(0), "")?;
        let v = self.b.build_insert_element(v, h, self.i32c(1), "")?;
        Ok(self.b.build_bit_cast(v, self.cx.i32_type(), "")?.into_int_value())
    }

    fn mma_call(
        &mut self,
        name: &str,
        a: &[IntValue<'ctx>],
        b: &[IntValue<'ctx>],
        c: [FloatValue<'ctx>; 4],
    ) -> R<[FloatValue<'ctx>; 4]> {
        let i32t: BasicTypeEnum = self.cx.i32_type().into();
        let f32t: BasicTypeEnum = self.cx.f32_type().into();
        let ret = self.cx.struct_type(&[f32t; 4], false);
        let mut tys = vec![i32t; a.len() + b.len()];
        tys.extend([f32t; 4]);
        let f = self.func(name, Some(ret.into()), &tys);
        let mut args: Vec<BasicValueEnum<'ctx>> = a.iter().chain(b).map(|x| (*x).into()).collect();
        args.extend(c.iter().map(|x| BasicValueEnum::from(*x)));
        let Some(BasicValueEnum::StructValue(sv)) = self.call(f, &args)? else {
            return super::fail(format!("`{name}` returned no struct"));
        };
        let mut out = c;
        for (i, o) in out.iter_mut().enumerate() {
            *o = fv(self.b.build_extract_value(sv, i as u32, "")?)?;
        }
        Ok(out)
    }

    fn mma_tf32(
        &mut self,
        a: &[IntValue<'ctx>],
        b: &[IntValue<'ctx>],
        c: [FloatValue<'ctx>; 4],
    ) -> R<[FloatValue<'ctx>; 4]> {
        self.mma_call("llvm.nvvm.mma.m16n8k8.row.col.tf32", a, b, c)
    }

    pub(super) fn mma_bf16(
        &mut self,
        a: &[IntValue<'ctx>],
        b: &[IntValue<'ctx>],
        c: [FloatValue<'ctx>; 4],
    ) -> R<[FloatValue<'ctx>; 4]> {
        self.mma_call("llvm.nvvm.mma.m16n8k16.row.col.bf16", a, b, c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warp_blocks_keep_warps_busy() {
        assert_eq!(warp_block(4, 16, 4), (2, 4));
        assert_eq!(warp_block(1, 2, 4), (1, 1));
        assert_eq!(warp_block(4, 2, 4), (2, 1));
        assert_eq!(warp_block(8, 16, 8), (2, 4));
        assert_eq!(warp_block(1, 16, 4), (1, 4));
    }

    #[test]
    fn shapes_the_path_takes() {
        assert!(takes(Matmul::Tf32x3, 64, 128, 8));
        assert!(!takes(Matmul::Bf16, 64, 128, 8));
        assert!(takes(Matmul::Bf16, 16, 8, 16));
        assert!(!takes(Matmul::Tf32x3, 1, 128, 128));
        assert!(!takes(Matmul::Simt, 64, 64, 64));
    }
}
