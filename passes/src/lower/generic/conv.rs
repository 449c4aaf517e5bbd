//! The short causal depthwise convolution with its cached tail.
//!
//! The input extended by the tail is `row(s) = tail[s]` for `s < K−1`, else
//! `x[s − (K−1)]`; `y[t] = Σ_j w[c, j] · row(t + j)` (then silu), and the new
//! tail is `row(T + s)`. Two flat kernels: one over `y`, one over the new tail.
//!
//! Where a recurrence consumes `y` and the schedule fuses the convolution
//! (`Schedule::fuse_conv`), the recurrence computes `y` itself (see
//! `lower::conv_prologue`) and only the tail kernel is made here.
//!
//! Speedup left for later: load `[rows, C]` tiles of x once per block of time
//! steps and reuse them across taps.

use super::super::Lowering;
use super::kern::{self, Kern, Operand, Space, R, TR};
use mixc_ir::dims::DimId;
use mixc_ir::graph::OpNode;
use mixc_ir::ops::UnaryFn;
use mixc_ir::tile::{KernelBuilder, TValue};

/// `row(s)` at the lanes' other indices `bind` (every dim but time/tail).
#[allow(clippy::too_many_arguments)]
fn row(
    kb: &mut KernelBuilder,
    xo: &Operand,
    tail: Option<&Operand>,
    bind: &[(DimId, TValue)],
    (time, tail_dim): (DimId, DimId),
    s: TValue,
    km1: TValue,
    sp: &Space,
) -> TR<TValue> {
    let from_tail = kb.lt(s, km1)?;
    let from_x = kern::not(kb, from_tail)?;
    let t = kb.sub(s, km1)?;
    let mut xb = bind.to_vec();
    xb.push((time, t));
    let off = kern::offset(kb, xo, &xb)?;
    let m = kb.and(sp.mask, from_x)?;
    let xv = kern::load(kb, xo, off, m)?;
    let tv = match tail {
        Some(to) => {
            let mut tb = bind.to_vec();
            tb.push((tail_dim, s));
            let off = kern::offset(kb, to, &tb)?;
            let m = kb.and(sp.mask, from_tail)?;
            kern::load(kb, to, off, m)?
        }
        // No history: zeros before the first input.
        None => kb.f32(0.0)?,
    };
    kb.select(from_tail, tv, xv)
}

pub fn conv1d(lw: &mut Lowering, op: &OpNode, time: DimId, taps: DimId, tail: DimId, silu: bool) -> R<()> {
    let (Some(&x), Some(&w), Some(&y)) = (op.operands.first(), op.operands.get(1), op.results.first()) else {
        return Err(lw.err(op, "causal_conv1d takes x and weight and gives y and the tail"));
    };
    let old_tail = op.operands.get(2).copied();
    let dims = lw.g.ty(y).shape.clone();

    // y = conv(row)
    let mut k = Kern::new(lw, &format!("causal_conv1d_{}", lw.g.value(y).name));
    let xo = k.operand(lw, x)?;
    let wo = k.operand(lw, w)?;
    let to = match old_tail {
        Some(t) => Some(k.operand(lw, t)?),
        None => None,
    };
    let yo = k.operand(lw, y)?;
    let n_taps = k.dim(lw, taps)?;
    let km1 = k.dim(lw, tail)?;
    let sp = k.space(lw, &dims)?;
    let Some(t) = sp.at(time) else { return Err(lw.err(op, "x lacks the time dim")) };
    let bind = sp.without(&[time]);
    let kb = &mut k.kb;
    let zero = kb.zeros(&[k.block])?;
    let acc = kern::for_n(kb, n_taps, &[zero], |kb, j, c| {
        let s = kb.add(t, j)?;
        let v = row(kb, &xo, to.as_ref(), &bind, (time, tail), s, km1, &sp)?;
        let mut wb = bind.clone();
        wb.push((taps, j));
        let woff = kern::partial(kb, &wo, &wb)?;
        let wv = kern::load(kb, &wo, woff, sp.mask)?;
        let p = kb.mul(wv, v)?;
        Ok(vec![kb.add(c[0], p)?])
    })?;
    let out = if silu { kb.unary(UnaryFn::Silu, acc[0])? } else { acc[0] };
    kern::store(kb, &yo, sp.flat, out, sp.mask)?;
    k.launch(lw, kern::numel(&dims))?;
    conv_tail(lw, op, time, tail, None)
}

/// The kernel writing the new tail, `row(T + s)` for `s < K−1`. `x_at`: a
/// buffer holding the convolution's input in its order, read in place of the
/// input's own (when the reshape producing it was left out because a fused
/// consumer reads its operand directly).
pub fn conv_tail(lw: &mut Lowering, op: &OpNode, time: DimId, tail: DimId, x_at: Option<usize>) -> R<()> {
    let (Some(&x), Some(&new_tail)) = (op.operands.first(), op.results.get(1)) else {
        return Err(lw.err(op, "causal_conv1d takes x and gives y and the tail"));
    };
    let old_tail = op.operands.get(2).copied();
    let tail_dims = lw.g.ty(new_tail).shape.clone();
    let mut k = Kern::new(lw, &format!("causal_conv1d_{}", lw.g.value(new_tail).name));
    let xo = match x_at {
        Some(b) => k.operand_at(lw, x, b)?,
        None => k.operand(lw, x)?,
    };
    let to = match old_tail {
        Some(t) => Some(k.operand(lw, t)?),
        None => None,
    };
    let no = k.operand(lw, new_tail)?;
    let n_t = k.dim(lw, time)?;
    let km1 = k.dim(lw, tail)?;
    let sp = k.space(lw, &tail_dims)?;
    let Some(s) = sp.at(tail) else { return Err(lw.err(op, "the tail lacks its dim")) };
    let bind = sp.without(&[tail]);
    let kb = &mut k.kb;
    let s = kb.add(s, n_t)?;
    let v = row(kb, &xo, to.as_ref(), &bind, (time, tail), s, km1, &sp)?;
    kern::store(kb, &no, sp.flat, v, sp.mask)?;
    k.launch(lw, kern::numel(&tail_dims))
}
