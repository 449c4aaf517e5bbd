//! Small helpers for writing kernels.

use mixc_ir::tile::{KernelBuilder, TValue, TileError};

type Res<T> = Result<T, TileError>;

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
