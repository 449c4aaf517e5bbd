//! Addressing for the delta-rule kernels: which program this is, the rows of a
//! chunk in the `[B, T, H, D]` activations, and the `[Dk, Dv]` state matrices.
//! Loads and stores take the first column of the block they address (`None`:
//! from column 0), for programs of one value block (`Schedule::block_v`).

use super::super::conv_prologue::{self, At, Src};
use super::super::util;
pub use super::super::util::Binder;
use mixc_ir::tile::{KernelBuilder, ParamId, TValue, TileError};

pub type Res<T> = Result<T, TileError>;

/// The (batch, head) a program works on, and the sequence length.
pub struct Head {
    /// `T` and `H` (i32 scalars).
    pub t_len: TValue,
    pub heads: TValue,
    pub b: TValue,
    pub h: TValue,
    /// `b·T`: the first token row of this batch entry.
    pub bt: TValue,
    /// `b·H + h`: the index of this head's state.
    pub bh: TValue,
    /// The first value column of this program (`None`: every column, from 0).
    pub v0: Option<TValue>,
}

impl Head {
    pub fn new(kb: &mut KernelBuilder, t_len: TValue, heads: TValue, b: TValue, h: TValue) -> Res<Head> {
        let bt = kb.mul(b, t_len)?;
        let bh = kb.mul(b, heads)?;
        let bh = kb.add(bh, h)?;
        Ok(Head { t_len, heads, b, h, bt, bh, v0: None })
    }
}

/// The `c` token rows starting at `t0`: their row index into a `[B, T, H, ·]`
/// activation (`[c, 1]`) and the mask of rows before `T` (`[c, 1]`).
pub struct Rows {
    pub tok: TValue,
    pub valid: TValue,
    /// The first row and the row count, for operands computed on chip.
    t0: TValue,
    n: u32,
    /// This program's batch entry, head and `T`.
    at: At,
}

impl Rows {
    pub fn new(kb: &mut KernelBuilder, hd: &Head, t0: TValue, c: u32) -> Res<Rows> {
        let (t, valid) = util::rows(kb, t0, c, hd.t_len)?;
        let tok = kb.add(t, hd.bt)?;
        let tok = kb.mul(tok, hd.heads)?;
        let tok = kb.add(tok, hd.h)?;
        let at = At { b: hd.b, h: hd.h, t_len: hd.t_len };
        Ok(Rows { tok, valid, t0, n: c, at })
    }

    /// Loads `[c, pad]` of a q, k or v operand with head dim `width` from
    /// column `col0`: from its buffer, or computed from a short convolution's input.
    pub fn load_src(
        &self,
        kb: &mut KernelBuilder,
        src: &Src,
        width: u64,
        col0: Option<TValue>,
        pad: u32,
    ) -> Res<TValue> {
        match src {
            Src::Buffer(p) => self.load(kb, *p, width, col0, pad),
            Src::Conv(bd) => conv_prologue::load_block(kb, bd, &self.at, self.t0, self.n, col0, pad),
        }
    }

    /// Offsets `[c, pad]` into an activation of head dim `width` from column
    /// `col0`, and the mask of valid rows and columns.
    fn offsets(&self, kb: &mut KernelBuilder, width: u64, col0: Option<TValue>, pad: u32) -> Res<(TValue, TValue)> {
        let (col, cmask) = util::cols_from(kb, col0, pad, width)?;
        let w = kb.i32(width as i64)?;
        let base = kb.mul(self.tok, w)?;
        let offs = kb.add(base, col)?;
        let mask = kb.and(self.valid, cmask)?;
        Ok((offs, mask))
    }

    /// Loads `[c, pad]` of an activation with head dim `width` from column
    /// `col0`; rows past `T` and columns past `width` read 0.
    pub fn load(
        &self,
        kb: &mut KernelBuilder,
        ptr: ParamId,
        width: u64,
        col0: Option<TValue>,
        pad: u32,
    ) -> Res<TValue> {
        let (offs, mask) = self.offsets(kb, width, col0, pad)?;
        kb.load(ptr, offs, Some(mask), 0.0)
    }

    pub fn store(
        &self,
        kb: &mut KernelBuilder,
        ptr: ParamId,
        width: u64,
        col0: Option<TValue>,
        value: TValue,
    ) -> Res<()> {
        let pad = kb.ty(value).shape.get(1).copied().unwrap_or(1);
        let (offs, mask) = self.offsets(kb, width, col0, pad)?;
        kb.store(ptr, offs, value, Some(mask))
    }

    /// Loads a per-step scalar (`[B, T, H]`: a gate, β) as `[c, 1]`; rows past `T` read 0.
    pub fn load_scalar(&self, kb: &mut KernelBuilder, ptr: ParamId) -> Res<TValue> {
        kb.load(ptr, self.tok, Some(self.valid), 0.0)
    }
}

/// Offsets and mask of the `index`-th `[dk, dv]` matrix of a state buffer, as a
/// `[pad(dk), bv]` tile of the columns from `col0` (`bv` a value block's
/// width, or `pad(dv)` for all of them).
pub struct StateTile {
    pub dk: u64,
    pub dv: u64,
    pub dkp: u32,
    pub bv: u32,
}

impl StateTile {
    fn offsets(&self, kb: &mut KernelBuilder, index: TValue, col0: Option<TValue>) -> Res<(TValue, TValue)> {
        let i = kb.arange(self.dkp)?;
        let dk = kb.i32(self.dk as i64)?;
        let i_ok = kb.lt(i, dk)?;
        let i = kb.expand(i, 1)?;
        let i_ok = kb.expand(i_ok, 1)?;
        let (j, j_ok) = util::cols_from(kb, col0, self.bv, self.dv)?;
        let dv = kb.i32(self.dv as i64)?;
        let size = kb.i32((self.dk * self.dv) as i64)?;
        let base = kb.mul(index, size)?;
        let row = kb.mul(i, dv)?;
        let row = kb.add(row, base)?;
        let offs = kb.add(row, j)?;
        let mask = kb.and(i_ok, j_ok)?;
        Ok((offs, mask))
    }

    pub fn load(&self, kb: &mut KernelBuilder, ptr: ParamId, index: TValue, col0: Option<TValue>) -> Res<TValue> {
        let (offs, mask) = self.offsets(kb, index, col0)?;
        kb.load(ptr, offs, Some(mask), 0.0)
    }

    pub fn store(
        &self,
        kb: &mut KernelBuilder,
        ptr: ParamId,
        index: TValue,
        col0: Option<TValue>,
        value: TValue,
    ) -> Res<()> {
        let (offs, mask) = self.offsets(kb, index, col0)?;
        kb.store(ptr, offs, value, Some(mask))
    }
}
