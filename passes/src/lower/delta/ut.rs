//! The chunk math of the WY / UT transform (MIXERS.md, delta-rule section).
//!
//! Per chunk of `c` rows, with `Γ` the chunk-local cumulative log decay (absent
//! for DeltaNet, where every decay factor is 1):
//!
//! - `N = strictly_lower(diag(β) (K Kᵀ ⊙ e^(Γ_i − Γ_j)))`, `M = (I + N)⁻¹`;
//! - `U = M (β ⊙ V)`, `W = M (β ⊙ e^Γ ⊙ K)`, and `V' = U − W S₀`;
//! - `O = (sQ ⊙ e^Γ) S₀ + (sQ Kᵀ ⊙ e^(Γ_i − Γ_j) ⊙ [j ≤ i]) V'`;
//! - `S_c = e^(Γ_c) S₀ + (K ⊙ e^(Γ_c − Γ))ᵀ V'`.
//!
//! Decay exponents are masked to the lower triangle before `exp`, so every
//! exponent taken is `≤ 0` for log decays `≤ 0`; nothing divides by a decay.

use super::io::Res;
use mixc_ir::ops::{BinaryFn, ReduceFn};
use mixc_ir::tile::{KernelBuilder, TOp, TValue};
use mixc_ir::DType;

/// Row and column indices of a `[c, c]` chunk matrix, made once per kernel.
pub struct Tri {
    pub c: u32,
    /// `[c, 1]` and `[1, c]`.
    row: TValue,
    col: TValue,
    /// An f32 zero scalar.
    pub zero: TValue,
}

impl Tri {
    pub fn new(kb: &mut KernelBuilder, c: u32) -> Res<Tri> {
        let ar = kb.arange(c)?;
        let row = kb.expand(ar, 1)?;
        let col = kb.expand(ar, 0)?;
        let zero = kb.f32(0.0)?;
        Ok(Tri { c, row, col, zero })
    }

    /// `[j < i]` (or `[j ≤ i]`) as a `[c, c]` bool tile.
    fn lower(&self, kb: &mut KernelBuilder, inclusive: bool) -> Res<TValue> {
        if inclusive {
            kb.le(self.col, self.row)
        } else {
            kb.lt(self.col, self.row)
        }
    }
}

/// The chunk-local gates of Gated DeltaNet. Every decay exponent is a sum of
/// the `g` it spans, taken directly rather than as a difference of prefix sums:
/// `Γ_i − Γ_j` of neighbouring rows would otherwise lose its digits to
/// cancellation once `Γ` is large.
pub struct Gates {
    /// The log decays `g`, `[c, 1]`.
    g: TValue,
    /// `e^Γ` with `Γ = cumsum(g)`, `[c, 1]`.
    pub exp_gamma: TValue,
    /// `Γ_c − Γ_i = Σ_{j>i} g_j`, `[c, 1]`.
    rest: TValue,
    /// `Γ_c`, the sum over the chunk, `[1, 1]`. Rows past `T` load `g = 0`, so this
    /// is `Γ` at the last valid row.
    last: TValue,
}

impl Gates {
    /// From the log decays `g` of the chunk's rows (`[c, 1]`).
    pub fn new(kb: &mut KernelBuilder, g: TValue) -> Res<Gates> {
        let gamma = kb.cumsum(g, 0)?;
        let exp_gamma = kb.exp(gamma)?;
        let rest = kb.emit(TOp::Cumsum { x: g, axis: 0, reverse: true, exclusive: true }, None)?;
        let rest = rest.first().copied().ok_or_else(|| missing(kb, "suffix sum"))?;
        let last = kb.reduce(ReduceFn::Sum, g, 0)?;
        let last = kb.reshape(last, &[1, 1])?;
        Ok(Gates { g, exp_gamma, rest, last })
    }
}

/// `x ⊙ e^(Γ_i − Γ_j)` on the (strictly) lower triangle, 0 above it.
fn lower_decayed(kb: &mut KernelBuilder, tri: &Tri, x: TValue, gates: Option<&Gates>, inclusive: bool) -> Res<TValue> {
    let mask = tri.lower(kb, inclusive)?;
    let Some(gt) = gates else { return kb.select(mask, x, tri.zero) };
    // `Γ_i − Γ_j = Σ_{j<l≤i} g_l`: a cumsum down the columns of `[l > j] g_l`.
    // It is 0 on and above the diagonal, so every exponent is ≤ 0.
    let below = tri.lower(kb, false)?;
    let spans = kb.select(below, gt.g, tri.zero)?;
    let spans = kb.cumsum(spans, 0)?;
    let decay = kb.exp(spans)?;
    let x = kb.mul(x, decay)?;
    kb.select(mask, x, tri.zero)
}

/// `M = (I + N)⁻¹` for a strictly lower-triangular `[c, c]` tile `N`: forward
/// substitution inside the 16×16 diagonal blocks (all blocks at once, one row
/// per step), then the blocks below the diagonal one block row at a time,
/// `M_ab = −M_aa Σ_{k<a} N_ak M_kb`. Exact algebra, no series.
pub fn unit_lower_inverse(kb: &mut KernelBuilder, tri: &Tri, n: TValue) -> Res<TValue> {
    let c = tri.c;
    let bs = c.min(16);
    let nb = c / bs;
    let zero = tri.zero;
    let eq = BinaryFn::Eq;

    // The diagonal blocks, batched: `D[a, r, s] = N[a·bs + r, a·bs + s]`.
    let blocks = kb.arange(nb)?;
    let blk_row = kb.reshape(blocks, &[nb, 1, 1, 1])?;
    let blk_col = kb.reshape(blocks, &[1, 1, nb, 1])?;
    let same_block = kb.binary(eq, blk_row, blk_col)?;
    let n4 = kb.reshape(n, &[nb, bs, nb, bs])?;
    let diag = kb.select(same_block, n4, zero)?;
    let diag = kb.reduce(ReduceFn::Sum, diag, 2)?;

    // Row r of every block: `X_r = e_r − Σ_{s<r} D_rs X_s` (rows ≥ r of X are still 0).
    let within = kb.arange(bs)?;
    let x0 = kb.zeros(&[nb, bs, bs])?;
    let (lo, hi, one) = (kb.i32(0)?, kb.i32(bs as i64)?, kb.i32(1)?);
    let x = kb.for_loop(lo, hi, one, &[x0], |kb, r, carried| {
        let x = carried[0];
        let is_r = kb.binary(eq, within, r)?;
        let sel = kb.reshape(is_r, &[1, bs, 1])?;
        let d_r = kb.select(sel, diag, zero)?;
        let d_r = kb.reduce(ReduceFn::Sum, d_r, 1)?;
        let d_r = kb.reshape(d_r, &[nb, bs, 1])?;
        let acc = kb.mul(d_r, x)?;
        let acc = kb.reduce(ReduceFn::Sum, acc, 1)?;
        let e_r = kb.cast(is_r, DType::F32)?;
        let row = kb.sub(e_r, acc)?;
        let row = kb.reshape(row, &[nb, 1, bs])?;
        Ok(vec![kb.select(sel, row, x)?])
    })?;
    let x = x.first().copied().ok_or_else(|| missing(kb, "forward substitution"))?;

    // Block-diagonal M.
    let x4 = kb.reshape(x, &[nb, bs, 1, bs])?;
    let m = kb.select(same_block, x4, zero)?;
    let m = kb.reshape(m, &[c, c])?;
    if nb == 1 {
        return Ok(m);
    }

    // Block row a: `M_a,<a = −M_aa (N_a,<a M)`, the rows of blocks < a being final.
    let n3 = kb.reshape(n, &[nb, bs, c])?;
    let blk3 = kb.reshape(blocks, &[nb, 1, 1])?;
    let cols = kb.arange(c)?;
    let cols = kb.expand(cols, 0)?;
    let width = kb.i32(bs as i64)?;
    let hi = kb.i32(nb as i64)?;
    let m = kb.for_loop(one, hi, one, &[m], |kb, a, carried| {
        let m = carried[0];
        let sel = kb.binary(eq, blk3, a)?;
        let n_a = kb.select(sel, n3, zero)?;
        let n_a = kb.reduce(ReduceFn::Sum, n_a, 0)?;
        let start = kb.mul(a, width)?;
        let left = kb.lt(cols, start)?;
        let n_a = kb.select(left, n_a, zero)?;
        let y = kb.dot(n_a, m, None, false, false)?;
        let x_a = kb.select(sel, x, zero)?;
        let x_a = kb.reduce(ReduceFn::Sum, x_a, 0)?;
        let r = kb.dot(x_a, y, None, false, false)?;
        let r = kb.reshape(r, &[1, bs, c])?;
        let m3 = kb.reshape(m, &[nb, bs, c])?;
        let upd = kb.sub(m3, r)?;
        let m3 = kb.select(sel, upd, m3)?;
        Ok(vec![kb.reshape(m3, &[c, c])?])
    })?;
    m.first().copied().ok_or_else(|| missing(kb, "block merge"))
}

fn missing(kb: &KernelBuilder, what: &str) -> mixc_ir::tile::TileError {
    mixc_ir::tile::TileError::Kernel { kernel: kb.kernel().name.clone(), msg: format!("{what} loop has no result") }
}

/// `W = M (β ⊙ e^Γ ⊙ K)` and `U = M (β ⊙ V)` for a chunk's `K [c, dk]`, `V [c, dv]`,
/// `β [c, 1]`.
pub fn wy(
    kb: &mut KernelBuilder,
    tri: &Tri,
    k: TValue,
    v: TValue,
    beta: TValue,
    gates: Option<&Gates>,
) -> Res<(TValue, TValue)> {
    let kk = kb.dot(k, k, None, false, true)?;
    let kk = kb.mul(kk, beta)?;
    let n = lower_decayed(kb, tri, kk, gates, false)?;
    let m = unit_lower_inverse(kb, tri, n)?;
    let bk = kb.mul(k, beta)?;
    let bk = match gates {
        Some(gt) => kb.mul(bk, gt.exp_gamma)?,
        None => bk,
    };
    let w = kb.dot(m, bk, None, false, false)?;
    let bv = kb.mul(v, beta)?;
    let u = kb.dot(m, bv, None, false, false)?;
    Ok((w, u))
}

/// `V' = U − W S₀`.
pub fn v_new(kb: &mut KernelBuilder, w: TValue, u: TValue, s: TValue) -> Res<TValue> {
    let ws = kb.dot(w, s, None, false, false)?;
    kb.sub(u, ws)
}

/// `O = (sQ ⊙ e^Γ) S₀ + (sQ Kᵀ ⊙ e^(Γ_i − Γ_j) ⊙ [j ≤ i]) V'`.
#[allow(clippy::too_many_arguments)]
pub fn output(
    kb: &mut KernelBuilder,
    tri: &Tri,
    q: TValue,
    k: TValue,
    s: TValue,
    vn: TValue,
    gates: Option<&Gates>,
    scale: f64,
) -> Res<TValue> {
    let sc = kb.f32(scale)?;
    let sq = kb.mul(q, sc)?;
    let qg = match gates {
        Some(gt) => kb.mul(sq, gt.exp_gamma)?,
        None => sq,
    };
    let inter = kb.dot(qg, s, None, false, false)?;
    let p = kb.dot(sq, k, None, false, true)?;
    let p = lower_decayed(kb, tri, p, gates, true)?;
    kb.dot(p, vn, Some(inter), false, false)
}

/// `S_c = e^(Γ_c) S₀ + (K ⊙ e^(Γ_c − Γ))ᵀ V'`.
pub fn advance(kb: &mut KernelBuilder, k: TValue, s: TValue, vn: TValue, gates: Option<&Gates>) -> Res<TValue> {
    let (kd, sd) = match gates {
        Some(gt) => {
            let rest = kb.exp(gt.rest)?;
            let kd = kb.mul(k, rest)?;
            let total = kb.exp(gt.last)?;
            (kd, kb.mul(s, total)?)
        }
        None => (k, s),
    };
    kb.dot(kd, vn, Some(sd), true, false)
}
