//! Data movement: copies, reshape, concat and KV append, slices and cache
//! retention, gather and scatter. Each is a flat kernel that computes, per
//! element, where it comes from (or goes to).
//!
//! A KV append's copy of the old cache is marked ([`PrefixCopy`]): a runtime
//! that keeps the result in the cache's own storage skips it, and the append
//! writes only the new rows. Left for later: a reshape could alias its
//! operand's buffer instead of copying.

use super::super::Lowering;
use super::kern::{self, Kern, R};
use mixc_ir::dims::DimId;
use mixc_ir::graph::{OpNode, ValueId};
use mixc_ir::ops::OpKind;
use mixc_ir::tile::{Count, PrefixCopy, TValue};

/// Copies `n` elements from buffer `from` to buffer `to`.
pub fn copy(lw: &mut Lowering, from: usize, to: usize, n: Count) -> R<()> {
    let name = format!("copy_{}", lw.prog.buffers.get(to).map(|b| b.name.as_str()).unwrap_or("buffer"));
    let mut k = Kern::new(lw, &name);
    let src = k.flat_operand(lw, "src", from)?;
    let dst = k.flat_operand(lw, "dst", to)?;
    let sp = k.flat(lw, n.clone())?;
    let kb = &mut k.kb;
    let v = kern::load(kb, &src, sp.flat, sp.mask)?;
    kern::store(kb, &dst, sp.flat, v, sp.mask)?;
    k.launch(lw, n)
}

pub fn lower(lw: &mut Lowering, op: &OpNode) -> Option<R<()>> {
    Some(match &op.kind {
        OpKind::Reshape { .. } => reshape(lw, op),
        OpKind::Concat { axis, .. } => concat(lw, op, *axis),
        OpKind::KvAppend { .. } => kv_append(lw, op),
        OpKind::Slice { axis, start, .. } => slice(lw, op, *axis, *start),
        OpKind::WindowRetain { .. } => retain(lw, op, 0),
        OpKind::SinkWindowRetain { sinks, .. } => retain(lw, op, *sinks),
        OpKind::Gather { along, .. } => gather(lw, op, *along),
        OpKind::Scatter { along, into } => scatter(lw, op, *along, *into),
        _ => return None,
    })
}

fn one_in_one_out(lw: &Lowering, op: &OpNode) -> R<(ValueId, ValueId)> {
    match (op.operands.first(), op.results.first()) {
        (Some(x), Some(o)) => Ok((*x, *o)),
        _ => Err(lw.err(op, "expected an operand and a result")),
    }
}

fn kname(lw: &Lowering, op: &OpNode, out: ValueId) -> String {
    format!("{}_{}", op.kind.mnemonic(), lw.g.value(out).name)
}

/// Row-major data is unchanged by a reshape: a copy.
fn reshape(lw: &mut Lowering, op: &OpNode) -> R<()> {
    let (x, out) = one_in_one_out(lw, op)?;
    let (from, to) = (lw.buffer(x), lw.buffer(out));
    let n = lw.numel(x);
    copy(lw, from, to, n)
}

/// One kernel per operand, placing its elements at their offset along `axis`.
fn concat(lw: &mut Lowering, op: &OpNode, axis: usize) -> R<()> {
    let Some(&out) = op.results.first() else { return Err(lw.err(op, "no result")) };
    let mut start = Count::Const(0);
    for (i, &x) in op.operands.iter().enumerate() {
        start = concat_operand(lw, op, out, i, x, axis, start)?;
    }
    Ok(())
}

/// The kernel of a concat placing operand `i` (`x`) at `start` along `axis`
/// of `out`; returns where the next operand starts.
fn concat_operand(
    lw: &mut Lowering,
    op: &OpNode,
    out: ValueId,
    i: usize,
    x: ValueId,
    axis: usize,
    start: Count,
) -> R<Count> {
    let out_dims = lw.g.ty(out).shape.clone();
    let x_dims = lw.g.ty(x).shape.clone();
    let Some(&along) = x_dims.get(axis) else { return Err(lw.err(op, "axis out of range")) };
    let mut k = Kern::new(lw, &format!("{}_{i}", kname(lw, op, out)));
    let src = k.operand(lw, x)?;
    let dst = k.operand(lw, out)?;
    let st = k.size(lw, start.clone())?;
    let sp = k.space(lw, &x_dims)?;
    let kb = &mut k.kb;
    let mut bind = Vec::with_capacity(out_dims.len());
    for (p, (d, (_, i))) in out_dims.iter().zip(&sp.idx).enumerate() {
        bind.push((*d, if p == axis { kb.add(*i, st)? } else { *i }));
    }
    let off = kern::offset(kb, &dst, &bind)?;
    let v = kern::load(kb, &src, sp.flat, sp.mask)?;
    kern::store(kb, &dst, off, v, sp.mask)?;
    k.launch(lw, kern::numel(&x_dims))?;
    Ok(Count::plus(start, Count::Dim(along)))
}

/// Elements a program of a KV append's prefix copy moves.
const PREFIX_COPY_BLOCK: u32 = 2048;

/// A concat along the cache's rows. The old rows go first, in a kernel of
/// their own marked as the prefix copy: per sequence `b` (axis 0) the cache
/// holds one contiguous run of `S·Hkv·D` elements, copied to the start of
/// the sequence's run in the result over a grid of (blocks of the run,
/// sequences) — no per-element index division, unlike the 4-D walk of
/// [`concat`] (which took 3.3 ms for a 1 GiB bf16 cache on an H100, a
/// third of the copy bandwidth). The new rows follow as in [`concat`].
fn kv_append(lw: &mut Lowering, op: &OpNode) -> R<()> {
    let (Some(&cache), Some(&new), Some(&out), 2) =
        (op.operands.first(), op.operands.get(1), op.results.first(), op.operands.len())
    else {
        return concat(lw, op, 1);
    };
    let dims = lw.g.ty(cache).shape.clone();
    let out_dims = lw.g.ty(out).shape.clone();
    let (Some(&seqs), Some(&rows)) = (dims.first(), dims.get(1)) else { return concat(lw, op, 1) };
    let (from, to) = (lw.buffer(cache), lw.buffer(out));
    let mut k = Kern::new(lw, &format!("{}_0", kname(lw, op, out)));
    k.block = PREFIX_COPY_BLOCK;
    let cache_name = lw.g.value(cache).name.clone();
    let out_name = lw.g.value(out).name.clone();
    let src = k.flat_operand(lw, &cache_name, from)?;
    let dst = k.flat_operand(lw, &out_name, to)?;
    let run = kern::numel(&dims[1..]);
    // This program's block of the sequence's run (program axis 0).
    let sp = k.flat(lw, run.clone())?;
    let n_run = k.size(lw, run.clone())?;
    let n_out = k.size(lw, kern::numel(&out_dims[1..]))?;
    let kb = &mut k.kb;
    let seq = kb.program_id(1)?;
    let src_base = kb.mul(seq, n_run)?;
    let src_off = kb.add(sp.flat, src_base)?;
    let dst_base = kb.mul(seq, n_out)?;
    let dst_off = kb.add(sp.flat, dst_base)?;
    let v = kern::load(kb, &src, src_off, sp.mask)?;
    kern::store(kb, &dst, dst_off, v, sp.mask)?;
    let first = lw.prog.launches.len();
    let grid = [kern::simplify(Count::ceil_div(run, u64::from(PREFIX_COPY_BLOCK))), Count::Dim(seqs), Count::Const(1)];
    k.launch_grid(lw, grid)?;
    if let Some(l) = lw.prog.launches.get_mut(first) {
        l.prefix_copy = Some(PrefixCopy { from, to, axis: 1 });
    }
    concat_operand(lw, op, out, 1, new, 1, Count::Dim(rows))?;
    Ok(())
}

/// Binds the operand's dims positionally to the result's indices, with
/// `axis` replaced by `at`.
fn bind_along(x_dims: &[DimId], idx: &[(DimId, TValue)], axis: usize, at: TValue) -> Vec<(DimId, TValue)> {
    x_dims.iter().zip(idx).enumerate().map(|(p, (d, (_, i)))| (*d, if p == axis { at } else { *i })).collect()
}

fn slice(lw: &mut Lowering, op: &OpNode, axis: usize, start: u64) -> R<()> {
    let (x, out) = one_in_one_out(lw, op)?;
    let (x_dims, dims) = (lw.g.ty(x).shape.clone(), lw.g.ty(out).shape.clone());
    let mut k = Kern::new(lw, &kname(lw, op, out));
    let src = k.operand(lw, x)?;
    let dst = k.operand(lw, out)?;
    let st = k.size(lw, Count::Const(start))?;
    let sp = k.space(lw, &dims)?;
    let Some((_, j)) = sp.idx.get(axis).copied() else { return Err(lw.err(op, "axis out of range")) };
    let kb = &mut k.kb;
    let row = kb.add(j, st)?;
    let off = kern::offset(kb, &src, &bind_along(&x_dims, &sp.idx, axis, row))?;
    let v = kern::load(kb, &src, off, sp.mask)?;
    kern::store(kb, &dst, sp.flat, v, sp.mask)?;
    k.launch(lw, kern::numel(&dims))
}

/// Keeps the first `sinks` rows along axis 1 and the most recent rest:
/// result row `j` is source row `j` below `sinks`, else `j + S − D` (`S`
/// source rows, `D` kept; the shift is 0 when everything is kept).
fn retain(lw: &mut Lowering, op: &OpNode, sinks: u32) -> R<()> {
    let (x, out) = one_in_one_out(lw, op)?;
    let (x_dims, dims) = (lw.g.ty(x).shape.clone(), lw.g.ty(out).shape.clone());
    let (Some(&s_dim), Some(&d_dim)) = (x_dims.get(1), dims.get(1)) else {
        return Err(lw.err(op, "cache must have rank ≥ 2"));
    };
    let mut k = Kern::new(lw, &kname(lw, op, out));
    let src = k.operand(lw, x)?;
    let dst = k.operand(lw, out)?;
    let (n_s, n_d) = (k.dim(lw, s_dim)?, k.dim(lw, d_dim)?);
    let sp = k.space(lw, &dims)?;
    let Some((_, j)) = sp.idx.get(1).copied() else { return Err(lw.err(op, "cache must have rank ≥ 2")) };
    let kb = &mut k.kb;
    let shift = kb.sub(n_s, n_d)?;
    let shifted = kb.add(j, shift)?;
    let row = if sinks > 0 {
        let n = kb.i32(i64::from(sinks))?;
        let is_sink = kb.lt(j, n)?;
        kb.select(is_sink, j, shifted)?
    } else {
        shifted
    };
    let off = kern::offset(kb, &src, &bind_along(&x_dims, &sp.idx, 1, row))?;
    let v = kern::load(kb, &src, off, sp.mask)?;
    kern::store(kb, &dst, sp.flat, v, sp.mask)?;
    k.launch(lw, kern::numel(&dims))
}

/// `out[.., j, ..] = x[.., idx[.., j, ..], ..]`; out-of-range indices read 0.
fn gather(lw: &mut Lowering, op: &OpNode, along: DimId) -> R<()> {
    let (Some(&x), Some(&idx), Some(&out)) = (op.operands.first(), op.operands.get(1), op.results.first()) else {
        return Err(lw.err(op, "gather takes x and idx"));
    };
    let (x_dims, dims) = (lw.g.ty(x).shape.clone(), lw.g.ty(out).shape.clone());
    let Some(axis) = x_dims.iter().position(|d| *d == along) else { return Err(lw.err(op, "x lacks the dim")) };
    let mut k = Kern::new(lw, &kname(lw, op, out));
    let src = k.operand(lw, x)?;
    let io = k.operand(lw, idx)?;
    let dst = k.operand(lw, out)?;
    let n = k.dim(lw, along)?;
    let sp = k.space(lw, &dims)?;
    let kb = &mut k.kb;
    let ioff = kern::offset(kb, &io, &sp.idx)?;
    let j = kern::load(kb, &io, ioff, sp.mask)?;
    let inside = in_range(kb, j, n, sp.mask)?;
    let off = kern::offset(kb, &src, &bind_along(&x_dims, &sp.idx, axis, j))?;
    let off = kern::lanes(kb, off, k.block)?;
    let v = k.kb.load(src.ptr, off, Some(inside), 0.0)?;
    kern::store(&mut k.kb, &dst, sp.flat, v, sp.mask)?;
    k.launch(lw, kern::numel(&dims))
}

/// `mask ∧ 0 ≤ j < n`.
fn in_range(kb: &mut mixc_ir::tile::KernelBuilder, j: TValue, n: TValue, mask: TValue) -> kern::TR<TValue> {
    let zero = kb.i32(0)?;
    let lo = kb.le(zero, j)?;
    let hi = kb.lt(j, n)?;
    let ok = kb.and(lo, hi)?;
    kb.and(ok, mask)
}

/// A copy of `base`, then the rows of `src` written at `idx` along `along`.
/// One lane per (every dim but `into`) walks `into` in order, so that later
/// rows win exactly as in the reference; lanes never write the same element.
fn scatter(lw: &mut Lowering, op: &OpNode, along: DimId, into: DimId) -> R<()> {
    let (Some(&base), Some(&idx), Some(&src), Some(&out)) =
        (op.operands.first(), op.operands.get(1), op.operands.get(2), op.results.first())
    else {
        return Err(lw.err(op, "scatter takes base, idx and src"));
    };
    let (from, to) = (lw.buffer(base), lw.buffer(out));
    let n = lw.numel(base);
    copy(lw, from, to, n)?;

    let src_dims = lw.g.ty(src).shape.clone();
    let lane_dims: Vec<DimId> = src_dims.iter().copied().filter(|d| *d != into).collect();
    let mut k = Kern::new(lw, &kname(lw, op, out));
    let so = k.operand(lw, src)?;
    let io = k.operand(lw, idx)?;
    let dst = k.operand(lw, out)?;
    let n_into = k.dim(lw, into)?;
    let n_along = k.dim(lw, along)?;
    let sp = k.space(lw, &lane_dims)?;
    kern::for_n(&mut k.kb, n_into, &[], |kb, r, _| {
        let mut bind = sp.idx.clone();
        bind.push((into, r));
        let ioff = kern::offset(kb, &io, &bind)?;
        let j = kern::load(kb, &io, ioff, sp.mask)?;
        let soff = kern::offset(kb, &so, &bind)?;
        let v = kern::load(kb, &so, soff, sp.mask)?;
        let mut obind = sp.idx.clone();
        obind.push((along, j));
        let ooff = kern::offset(kb, &dst, &obind)?;
        let ok = in_range(kb, j, n_along, sp.mask)?;
        kern::store(kb, &dst, ooff, v, ok)?;
        Ok(vec![])
    })?;
    k.launch(lw, kern::numel(&lane_dims))
}
