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
    /// An f32 pointer parameter bound to buffer `buffer` (one per buffer: a
    /// buffer bound twice gives the first parameter back).
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
    let c = kb.arange(n)?;
    let lim = kb.i32(limit as i64)?;
    let m = kb.lt(c, lim)?;
    let c = kb.expand(c, 0)?;
    let m = kb.expand(m, 0)?;
    Ok((c, m))
}
