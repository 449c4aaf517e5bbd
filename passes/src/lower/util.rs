//! Small helpers for writing kernels.

use mixc_ir::tile::{Arg, Count, KernelBuilder, ParamId, TValue, TileError};
use mixc_ir::DType;

type Res<T> = Result<T, TileError>;

/// Collects a kernel's parameters and, in the same order, the launch's arguments.
#[derive(Default)]
pub struct Binder {
    pub args: Vec<Arg>,
    bufs: Vec<(usize, ParamId)>,
}

impl Binder {
    /// A float pointer parameter bound to buffer `buffer` (one per buffer: a
    /// buffer bound twice gives the first parameter back), declared f32:
    /// `Lowering::launch` gives it the buffer's dtype.
    pub fn ptr(&mut self, kb: &mut KernelBuilder, name: &str, buffer: usize) -> ParamId {
        if let Some((_, p)) = self.bufs.iter().find(|(b, _)| *b == buffer) {
            return *p;
        }
        self.args.push(Arg::Buffer(buffer));
        let p = kb.ptr_param(name, DType::F32);
        self.bufs.push((buffer, p));
        p
    }

    /// An i32 size parameter computed from the dims at launch.
    pub fn size(&mut self, kb: &mut KernelBuilder, name: &str, count: Count) -> Res<TValue> {
        self.args.push(Arg::Size(count));
        kb.scalar_param(name, DType::I32)
    }
}

/// Rounds a head dim up to a multiple of 16 (the tile width backends like).
pub fn pad16(d: u64) -> u32 {
    (d.div_ceil(16) * 16).max(16) as u32
}

/// How a recurrence's value columns `0 .. dv` split over programs
/// (`Schedule::block_v`): `blocks` programs per (batch, head), each holding
/// `width` columns (the last block's columns past `dv` masked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValueBlocks {
    /// Columns per program, a multiple of 16.
    pub width: u32,
    pub blocks: u32,
}

impl ValueBlocks {
    /// Blocks of `block_v` columns if that is set and smaller than `dv`, else
    /// one block of all of them (padded to 16).
    pub fn new(dv: u64, block_v: u32) -> ValueBlocks {
        if block_v == 0 || block_v as u64 >= dv {
            return ValueBlocks { width: pad16(dv), blocks: 1 };
        }
        ValueBlocks { width: block_v, blocks: dv.div_ceil(block_v as u64) as u32 }
    }

    /// Whether the columns are split over programs at all.
    pub fn split(&self) -> bool {
        self.blocks > 1
    }

    /// Columns of a scratch matrix holding every block's columns (no masks needed).
    pub fn padded(&self) -> u32 {
        self.width * self.blocks
    }
}

/// `[n, 1]` row offsets `base + (start + arange(n)) * stride`, and the mask
/// `start + arange(n) < limit` as `[n, 1]`.
pub fn rows(kb: &mut KernelBuilder, start: TValue, n: u32, limit: TValue) -> Res<(TValue, TValue)> {
    let r = kb.arange(n)?;
    let idx = kb.add(r, start)?;
    let m = kb.lt(idx, limit)?;
    let idx = kb.expand(idx, 1)?;
    let m = kb.expand(m, 1)?;
    Ok((idx, m))
}

/// `[1, n]` column indices `arange(n)` and the mask `arange(n) < limit`.
pub fn cols(kb: &mut KernelBuilder, n: u32, limit: u64) -> Res<(TValue, TValue)> {
    cols_from(kb, None, n, limit)
}

/// `[1, n]` column indices `start + arange(n)` (`start` an i32 scalar, or 0
/// when `None`) and the mask of those `< limit`.
pub fn cols_from(kb: &mut KernelBuilder, start: Option<TValue>, n: u32, limit: u64) -> Res<(TValue, TValue)> {
    let c = kb.arange(n)?;
    let c = match start {
        Some(s) => kb.add(c, s)?,
        None => c,
    };
    let lim = kb.i32(limit as i64)?;
    let m = kb.lt(c, lim)?;
    let c = kb.expand(c, 0)?;
    let m = kb.expand(m, 0)?;
    Ok((c, m))
}
