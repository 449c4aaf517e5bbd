//! Row-wise ops: one lane per result row (a block of rows per program), each
//! lane walking its row in a loop, in the reference's order (so f64 runs
//! agree to the last bit): reductions, einsum, cumsum, softmax, norms, top-k
//! and quantization.
//!
//! Speedups left for later: load rows as 2-D tiles and use tile reductions
//! and `cumsum` (the lanes here read strided rows one element at a time);
//! lower matmul-shaped einsums to tile `dot`s; online (one-pass) softmax;
//! a sorting network or a partial bitonic sort for top-k instead of `k` passes.

use super::super::Lowering;
use super::ew;
use super::kern::{self, Kern, Operand, Space, R, TR};
use mixc_ir::dims::DimId;
use mixc_ir::graph::{OpNode, ValueId};
use mixc_ir::ops::{BinaryFn, NormKind, OpKind, ReduceFn, UnaryFn};
use mixc_ir::tile::{KernelBuilder, TValue};
use mixc_ir::DType;

pub fn lower(lw: &mut Lowering, op: &OpNode) -> Option<R<()>> {
    Some(match &op.kind {
        OpKind::Reduce { func, dims } => reduce(lw, op, *func, dims),
        OpKind::Einsum { out } => einsum(lw, op, out),
        OpKind::Cumsum { dim, exclusive, reverse } => cumsum(lw, op, *dim, *exclusive, *reverse),
        OpKind::Softmax { dim } => softmax(lw, op, *dim),
        OpKind::Normalize { kind, dim, eps } => match normalize_tiled(lw, op, *kind, *dim, *eps) {
            Some(r) => r,
            None => normalize(lw, op, *kind, *dim, *eps),
        },
        OpKind::TopK { along, into } => topk(lw, op, *along, *into),
        OpKind::Quantize { bits, group, .. } => quantize(lw, op, *bits, *group),
        _ => return None,
    })
}

fn unary_op(lw: &Lowering, op: &OpNode) -> R<(ValueId, ValueId)> {
    match (op.operands.first(), op.results.first()) {
        (Some(x), Some(o)) => Ok((*x, *o)),
        _ => Err(lw.err(op, "expected an operand and a result")),
    }
}

fn kname(lw: &Lowering, op: &OpNode, out: ValueId) -> String {
    format!("{}_{}", op.kind.mnemonic(), lw.g.value(out).name)
}

/// A `[block]` constant of `x`'s dtype.
fn fill(kb: &mut KernelBuilder, like: DType, v: f64, block: u32) -> TR<TValue> {
    let dt = if like.is_float() { DType::F32 } else { like };
    kb.constant(v, dt, &[block])
}

/// The tile dtype a load from value `v`'s buffer gives.
fn tile_dtype(lw: &Lowering, v: ValueId) -> DType {
    let d = lw.g.ty(v).dtype;
    if d.is_float() {
        DType::F32
    } else {
        d
    }
}

/// The load of `x` at lane offset `lane` plus the offset of loop indices `at`.
fn load_at(kb: &mut KernelBuilder, x: &Operand, lane: TValue, at: &[(DimId, TValue)], sp: &Space) -> TR<TValue> {
    let part = kern::partial(kb, x, at)?;
    let off = kb.add(lane, part)?;
    kern::load(kb, x, off, sp.mask)
}

/// Lanes over the result's elements; each loops over the flattened reduced dims.
fn reduce(lw: &mut Lowering, op: &OpNode, f: ReduceFn, rd: &[DimId]) -> R<()> {
    let (x, out) = unary_op(lw, op)?;
    let red: Vec<DimId> = lw.g.ty(x).shape.iter().copied().filter(|d| rd.contains(d)).collect();
    let dims = lw.g.ty(out).shape.clone();
    let dt = tile_dtype(lw, x);
    let mut k = Kern::new(lw, &kname(lw, op, out));
    let xo = k.operand(lw, x)?;
    let oo = k.operand(lw, out)?;
    let sizes = k.dims(lw, &red)?;
    let count = k.size(lw, kern::numel(&red))?;
    let sp = k.space(lw, &dims)?;
    let block = k.block;
    let kb = &mut k.kb;
    let lane = kern::partial(kb, &xo, &sp.idx)?;
    let lane = kern::lanes(kb, lane, block)?;
    let init = match f {
        ReduceFn::Max | ReduceFn::LogSumExp => f64::NEG_INFINITY,
        ReduceFn::Min => f64::INFINITY,
        ReduceFn::Sum | ReduceFn::Mean => 0.0,
    };
    let init = fill(kb, dt, init, block)?;
    let acc = kern::for_n(kb, count, &[init], |kb, r, c| {
        let at = kern::unflatten(kb, r, &red, &sizes)?;
        let v = load_at(kb, &xo, lane, &at, &sp)?;
        let bf = match f {
            ReduceFn::Max | ReduceFn::LogSumExp => BinaryFn::Max,
            ReduceFn::Min => BinaryFn::Min,
            ReduceFn::Sum | ReduceFn::Mean => BinaryFn::Add,
        };
        Ok(vec![kb.binary(bf, c[0], v)?])
    })?;
    let mut res = acc[0];
    if f == ReduceFn::Mean {
        let one = kb.i32(1)?;
        let n = kb.max(count, one)?;
        let n = kern::to_f32(kb, n)?;
        res = kb.div(res, n)?;
    }
    if f == ReduceFn::LogSumExp {
        let m = res;
        let zero = fill(kb, dt, 0.0, block)?;
        let s = kern::for_n(kb, count, &[zero], |kb, r, c| {
            let at = kern::unflatten(kb, r, &red, &sizes)?;
            let v = load_at(kb, &xo, lane, &at, &sp)?;
            let d = kb.sub(v, m)?;
            let e = kb.exp(d)?;
            Ok(vec![kb.add(c[0], e)?])
        })?;
        let l = kb.unary(UnaryFn::Log, s[0])?;
        res = kb.add(m, l)?;
    }
    kern::store(kb, &oo, sp.flat, res, sp.mask)?;
    k.launch(lw, kern::numel(&dims))
}

/// Lanes over the result's elements; each sums over the flattened contracted
/// dims (in order of first appearance, as the reference does).
fn einsum(lw: &mut Lowering, op: &OpNode, out_dims: &[DimId]) -> R<()> {
    let (Some(&a), Some(&b), Some(&out)) = (op.operands.first(), op.operands.get(1), op.results.first()) else {
        return Err(lw.err(op, "einsum takes two operands"));
    };
    let mut con: Vec<DimId> = Vec::new();
    for d in lw.g.ty(a).shape.iter().chain(&lw.g.ty(b).shape) {
        if !out_dims.contains(d) && !con.contains(d) {
            con.push(*d);
        }
    }
    let mut k = Kern::new(lw, &kname(lw, op, out));
    let ao = k.operand(lw, a)?;
    let bo = k.operand(lw, b)?;
    let oo = k.operand(lw, out)?;
    let sizes = k.dims(lw, &con)?;
    let count = k.size(lw, kern::numel(&con))?;
    let sp = k.space(lw, out_dims)?;
    let block = k.block;
    let kb = &mut k.kb;
    let a_lane = kern::partial(kb, &ao, &sp.idx)?;
    let a_lane = kern::lanes(kb, a_lane, block)?;
    let b_lane = kern::partial(kb, &bo, &sp.idx)?;
    let b_lane = kern::lanes(kb, b_lane, block)?;
    let zero = kb.zeros(&[block])?;
    let acc = kern::for_n(kb, count, &[zero], |kb, r, c| {
        let at = kern::unflatten(kb, r, &con, &sizes)?;
        let x = load_at(kb, &ao, a_lane, &at, &sp)?;
        let y = load_at(kb, &bo, b_lane, &at, &sp)?;
        let p = kb.mul(x, y)?;
        Ok(vec![kb.add(c[0], p)?])
    })?;
    kern::store(kb, &oo, sp.flat, acc[0], sp.mask)?;
    k.launch(lw, kern::numel(out_dims))
}

/// Lanes over the rows along `dim` (every other dim); the kernel, the operand
/// and result (same layout), the row length, the lane offsets and the space.
struct Rows {
    k: Kern,
    x: Operand,
    o: Operand,
    n: TValue,
    lane: TValue,
    sp: Space,
    lane_dims: Vec<DimId>,
}

fn rows(lw: &mut Lowering, op: &OpNode, dim: DimId) -> R<Rows> {
    let (x, out) = unary_op(lw, op)?;
    let lane_dims: Vec<DimId> = lw.g.ty(x).shape.iter().copied().filter(|d| *d != dim).collect();
    let mut k = Kern::new(lw, &kname(lw, op, out));
    let xo = k.operand(lw, x)?;
    let oo = k.operand(lw, out)?;
    let n = k.dim(lw, dim)?;
    let sp = k.space(lw, &lane_dims)?;
    let lane = kern::partial(&mut k.kb, &xo, &sp.idx)?;
    let lane = kern::lanes(&mut k.kb, lane, k.block)?;
    Ok(Rows { k, x: xo, o: oo, n, lane, sp, lane_dims })
}

fn cumsum(lw: &mut Lowering, op: &OpNode, dim: DimId, exclusive: bool, reverse: bool) -> R<()> {
    let Some(&x) = op.operands.first() else { return Err(lw.err(op, "no operand")) };
    let dt = tile_dtype(lw, x);
    let Rows { mut k, x: xo, o: oo, n, lane, sp, lane_dims } = rows(lw, op, dim)?;
    let kb = &mut k.kb;
    let zero = fill(kb, dt, 0.0, k.block)?;
    kern::for_n(kb, n, &[zero], |kb, r, c| {
        let t = if reverse {
            let one = kb.i32(1)?;
            let last = kb.sub(n, one)?;
            kb.sub(last, r)?
        } else {
            r
        };
        let part = kern::partial(kb, &xo, &[(dim, t)])?;
        let off = kb.add(lane, part)?;
        let v = kern::load(kb, &xo, off, sp.mask)?;
        let next = kb.add(c[0], v)?;
        kern::store(kb, &oo, off, if exclusive { c[0] } else { next }, sp.mask)?;
        Ok(vec![next])
    })?;
    k.launch(lw, kern::numel(&lane_dims))
}

/// Three passes per row: the max, the sum of `exp(x − max)`, the quotients.
fn softmax(lw: &mut Lowering, op: &OpNode, dim: DimId) -> R<()> {
    let Rows { mut k, x: xo, o: oo, n, lane, sp, lane_dims } = rows(lw, op, dim)?;
    let kb = &mut k.kb;
    let at = |kb: &mut KernelBuilder, t: TValue| -> TR<TValue> {
        let part = kern::partial(kb, &xo, &[(dim, t)])?;
        kb.add(lane, part)
    };
    let ninf = kb.constant(f64::NEG_INFINITY, DType::F32, &[k.block])?;
    let m = kern::for_n(kb, n, &[ninf], |kb, t, c| {
        let off = at(kb, t)?;
        let v = kern::load(kb, &xo, off, sp.mask)?;
        Ok(vec![kb.max(c[0], v)?])
    })?[0];
    let zero = kb.zeros(&[k.block])?;
    let s = kern::for_n(kb, n, &[zero], |kb, t, c| {
        let off = at(kb, t)?;
        let v = kern::load(kb, &xo, off, sp.mask)?;
        let d = kb.sub(v, m)?;
        let e = kb.exp(d)?;
        Ok(vec![kb.add(c[0], e)?])
    })?[0];
    kern::for_n(kb, n, &[], |kb, t, _| {
        let off = at(kb, t)?;
        let v = kern::load(kb, &xo, off, sp.mask)?;
        let d = kb.sub(v, m)?;
        let e = kb.exp(d)?;
        let q = kb.div(e, s)?;
        kern::store(kb, &oo, off, q, sp.mask)?;
        Ok(vec![])
    })?;
    k.launch(lw, kern::numel(&lane_dims))
}

/// Two passes per row: the sum of squares, then `x / sqrt(ss (/ n) + eps)`.
fn normalize(lw: &mut Lowering, op: &OpNode, kind: NormKind, dim: DimId, eps: f64) -> R<()> {
    let Rows { mut k, x: xo, o: oo, n, lane, sp, lane_dims } = rows(lw, op, dim)?;
    let kb = &mut k.kb;
    let at = |kb: &mut KernelBuilder, t: TValue| -> TR<TValue> {
        let part = kern::partial(kb, &xo, &[(dim, t)])?;
        kb.add(lane, part)
    };
    let zero = kb.zeros(&[k.block])?;
    let ss = kern::for_n(kb, n, &[zero], |kb, t, c| {
        let off = at(kb, t)?;
        let v = kern::load(kb, &xo, off, sp.mask)?;
        let sq = kb.mul(v, v)?;
        Ok(vec![kb.add(c[0], sq)?])
    })?[0];
    let denom = norm_denominator(kb, kind, ss, n, eps)?;
    kern::for_n(kb, n, &[], |kb, t, _| {
        let off = at(kb, t)?;
        let v = kern::load(kb, &xo, off, sp.mask)?;
        let q = kb.div(v, denom)?;
        kern::store(kb, &oo, off, q, sp.mask)?;
        Ok(vec![])
    })?;
    k.launch(lw, kern::numel(&lane_dims))
}

/// `sqrt(ss + eps)` (L2) or `sqrt(ss / n + eps)` (RMS) from a row's sum of squares.
fn norm_denominator(kb: &mut KernelBuilder, kind: NormKind, ss: TValue, n: TValue, eps: f64) -> TR<TValue> {
    let ss = match kind {
        NormKind::L2 => ss,
        NormKind::Rms => {
            let one = kb.i32(1)?;
            let len = kb.max(n, one)?;
            let len = kern::to_f32(kb, len)?;
            kb.div(ss, len)?
        }
    };
    let e = kb.f32(eps)?;
    let denom = kb.add(ss, e)?;
    kb.unary(UnaryFn::Sqrt, denom)
}

/// Lanes along a row of the tiled norm (at most), and the fewest.
const NORM_LANES: u32 = 128;
const NORM_MIN_LANES: u32 = 16;

/// Rows of at most this many elements (known when lowering) are taken
/// whole, one step a pass, however few elements a program otherwise gets:
/// each pass is then one round of loads instead of `n / NORM_LANES`
/// dependent ones. A GPU decode step's programs take 128 elements, and
/// GLA-1.3B's output norm (rows of 512, a gate after it) walked each row in
/// 4 steps twice: 7.3 µs a layer for 64 rows (H100, 2026-12-07).
const NORM_WHOLE_ROW: u32 = 1024;

/// A norm over the innermost, contiguous dim as `[R, W]` tiles: `W` lanes
/// walk each row `W` elements at a time (coalesced), a tile reduction sums
/// the squares, and `R = block / W` rows share a program. The lane-per-row
/// form (`normalize`) reads a row one element per iteration and serializes
/// on memory latency (a decode step's few rows took milliseconds). `None`
/// where the dim is not the innermost one of both operand and result.
fn normalize_tiled(lw: &mut Lowering, op: &OpNode, kind: NormKind, dim: DimId, eps: f64) -> Option<R<()>> {
    let (x, out) = unary_op(lw, op).ok()?;
    let shape = lw.g.ty(x).shape.clone();
    let innermost = |lw: &Lowering, v: ValueId| {
        lw.g.ty(v).shape.last() == Some(&dim)
            && lw.strides(v).last().is_some_and(|c| kern::simplify(c.clone()) == mixc_ir::tile::Count::Const(1))
    };
    if shape != lw.g.ty(out).shape || !innermost(lw, x) || !innermost(lw, out) {
        return None;
    }
    let epilogue = epilogue(lw, out).filter(|e| innermost(lw, e.result));
    if let Some(e) = &epilogue {
        for &i in &e.ops {
            lw.absorb(i);
        }
        // Inputs declared after the norm: their buffers, not scratch.
        for &v in e.leaves.iter().skip(1) {
            lw.input_buffer(v);
        }
    }
    Some(normalize_rows(lw, op, kind, dim, eps, x, out, &shape, epilogue.as_ref()))
}

/// Elementwise ops a row norm's kernel computes as it stores: the chain from
/// the norm's result `n` through its one use, and that value's one use, …,
/// up to the first value that is stored (not computed inside its consumer):
/// the norm's scale `n · w` (fla's RMSNorm weight), and a gate after it
/// (`· silu(g)`, fla's `FusedRMSNormGated`) — one kernel, not two.
struct Epilogue {
    /// The chain's ops in the graph (not lowered on their own), first to last.
    ops: Vec<usize>,
    /// `n`, then the values the chain loads (weights, gates).
    leaves: Vec<ValueId>,
    /// The chain's computation from its leaves.
    recipe: ew::Recipe,
    /// The value the kernel stores instead of `n`.
    result: ValueId,
}

/// The [`Epilogue`] of norm result `n`, if it has one: `n` and every value
/// up to the stored one are no graph output and have one use each, an
/// elementwise op with `n`'s shape whose other operands exist when the
/// norm's kernel runs (inputs, or values of ops before the norm, through
/// what is computed inside their consumers).
fn epilogue(lw: &Lowering, n: ValueId) -> Option<Epilogue> {
    let g = lw.g;
    let norm_op = g.value(n).op.index();
    // Whether a value exists when the norm's kernel runs: an input, or made
    // by an op before the norm (and not the norm's result itself).
    let ready = |x: &ValueId| {
        let p = g.value(*x).op;
        *x != n && (matches!(g.op(p).kind, OpKind::Input { .. }) || p.index() < norm_op)
    };
    // Leaf 0 is the norm's result, the rest are loaded.
    let (mut cur, mut ops, mut leaves) = (n, Vec::new(), vec![n]);
    loop {
        if g.outputs.iter().any(|(_, v)| *v == cur) {
            return None;
        }
        let mut uses = g.ops.iter().enumerate().filter(|(_, o)| o.operands.contains(&cur));
        let (i, user) = uses.next()?;
        if uses.next().is_some() || user.results.len() != 1 || !ew::is_mappable(user) {
            return None;
        }
        let result = user.results[0];
        if g.ty(result).shape != g.ty(n).shape {
            return None;
        }
        for v in user.operands.iter().filter(|v| **v != cur) {
            let mut loaded = Vec::new();
            ew::leaves(lw, *v, &mut loaded);
            if !loaded.iter().all(ready) {
                return None;
            }
            loaded.retain(|x| !leaves.contains(x));
            leaves.extend(loaded);
        }
        ops.push(i);
        if lw.inlined(result).is_none() {
            let recipe = ew::Recipe::of(lw, user, &leaves)?;
            return Some(Epilogue { ops, leaves, recipe, result });
        }
        cur = result;
    }
}

#[allow(clippy::too_many_arguments)]
fn normalize_rows(
    lw: &mut Lowering,
    op: &OpNode,
    kind: NormKind,
    dim: DimId,
    eps: f64,
    x: ValueId,
    out: ValueId,
    shape: &[DimId],
    epilogue: Option<&Epilogue>,
) -> R<()> {
    let lane_dims: Vec<DimId> = shape.iter().copied().filter(|d| *d != dim).collect();
    // With an epilogue the kernel stores the epilogue's result, not the norm's.
    let out = epilogue.map_or(out, |e| e.result);
    let mut k = Kern::new(lw, &kname(lw, op, out));
    let width = match lw.const_dim(dim) {
        Some(n) if n <= u64::from(NORM_WHOLE_ROW) => (n.max(1) as u32).next_power_of_two().max(NORM_MIN_LANES),
        _ => NORM_LANES.min(k.block.max(NORM_MIN_LANES)),
    };
    let rows_per = (k.block / width).max(1);
    let xo = k.operand(lw, x)?;
    let oo = k.operand(lw, out)?;
    // The operands the epilogue loads (leaf 0, the norm's result, is on chip).
    let tail = match epilogue {
        Some(e) => {
            let mut bound = Vec::with_capacity(e.leaves.len());
            for &v in e.leaves.iter().skip(1) {
                bound.push(k.operand(lw, v)?);
            }
            Some((&e.recipe, bound))
        }
        None => None,
    };
    let n = k.dim(lw, dim)?;
    let nrows = k.size(lw, kern::numel(&lane_dims))?;
    let mut sizes = vec![nrows];
    sizes.extend(k.dims(lw, lane_dims.get(1..).unwrap_or(&[]))?);
    let kb = &mut k.kb;
    let tile = [rows_per, width];
    // This program's rows, their bases in x and out, and which exist.
    let pid = kb.program_id(0)?;
    let per = kb.i32(i64::from(rows_per))?;
    let first = kb.mul(pid, per)?;
    let ar = kb.arange(rows_per)?;
    let row = kb.add(ar, first)?;
    let live = kb.lt(row, nrows)?;
    let idx = kern::unflatten(kb, row, &lane_dims, &sizes)?;
    let column = |kb: &mut KernelBuilder, v: TValue| -> TR<TValue> {
        let v = kern::lanes(kb, v, rows_per)?;
        let v = kb.expand(v, 1)?;
        kb.broadcast(v, &tile)
    };
    // Every index of the row's elements, for the epilogue's operands.
    let mut at_row = Vec::with_capacity(idx.len() + 1);
    for &(d, i) in &idx {
        at_row.push((d, column(kb, i)?));
    }
    let x_base = kern::partial(kb, &xo, &idx)?;
    let x_base = column(kb, x_base)?;
    let o_base = kern::partial(kb, &oo, &idx)?;
    let o_base = column(kb, o_base)?;
    let live = column(kb, live)?;
    let lanes = kb.arange(width)?;
    let lanes = kb.expand(lanes, 0)?;
    let lanes = kb.broadcast(lanes, &tile)?;
    let w = kb.i32(i64::from(width))?;
    let w_less = kb.i32(i64::from(width) - 1)?;
    let padded = kb.add(n, w_less)?;
    let steps = kb.binary(BinaryFn::FloorDiv, padded, w)?;
    // Columns of step `s`, and which are inside the row.
    let at = |kb: &mut KernelBuilder, s: TValue| -> TR<(TValue, TValue)> {
        let c0 = kb.mul(s, w)?;
        let col = kb.add(lanes, c0)?;
        let inside = kb.lt(col, n)?;
        Ok((col, kb.and(inside, live)?))
    };
    let zero = kb.zeros(&tile)?;
    let acc = kern::for_n(kb, steps, &[zero], |kb, s, c| {
        let (col, mask) = at(kb, s)?;
        let off = kb.add(x_base, col)?;
        let v = kb.load(xo.ptr, off, Some(mask), 0.0)?;
        let sq = kb.mul(v, v)?;
        Ok(vec![kb.add(c[0], sq)?])
    })?[0];
    let ss = kb.reduce(ReduceFn::Sum, acc, 1)?;
    let denom = norm_denominator(kb, kind, ss, n, eps)?;
    let denom = kb.expand(denom, 1)?;
    let denom = kb.broadcast(denom, &tile)?;
    kern::for_n(kb, steps, &[], |kb, s, _| {
        let (col, mask) = at(kb, s)?;
        let off = kb.add(x_base, col)?;
        let v = kb.load(xo.ptr, off, Some(mask), 0.0)?;
        let mut q = kb.div(v, denom)?;
        if let Some((recipe, bound)) = &tail {
            // Rounded as the elementwise ops' own kernel rounds its results.
            let mut idx = at_row.clone();
            idx.push((dim, col));
            let sp = Space { flat: col, mask, idx };
            let normed = q;
            let mut leaf = |kb: &mut KernelBuilder, i: usize| -> TR<TValue> {
                let Some(o) = i.checked_sub(1).and_then(|i| bound.get(i)) else { return Ok(normed) };
                let off = kern::offset(kb, o, &sp.idx)?;
                kern::load(kb, o, off, sp.mask)
            };
            q = recipe.emit(kb, &sp, &mut leaf)?;
        }
        let off = kb.add(o_base, col)?;
        kb.store(oo.ptr, off, q, Some(mask))?;
        Ok(vec![])
    })?;
    let grid = [
        kern::simplify(mixc_ir::tile::Count::ceil_div(kern::numel(&lane_dims), u64::from(rows_per))),
        mixc_ir::tile::Count::Const(1),
        mixc_ir::tile::Count::Const(1),
    ];
    k.launch_grid(lw, grid)
}

/// `k` selection passes per row: pass `r` picks the largest element that comes
/// after pick `r − 1` in the order (value descending, index ascending), so
/// ties go to the lower index. O(k·n) per row.
fn topk(lw: &mut Lowering, op: &OpNode, along: DimId, into: DimId) -> R<()> {
    let (Some(&x), Some(&vals), Some(&idxs)) = (op.operands.first(), op.results.first(), op.results.get(1)) else {
        return Err(lw.err(op, "top-k has values and indices"));
    };
    let dt = tile_dtype(lw, x);
    let lane_dims: Vec<DimId> = lw.g.ty(x).shape.iter().copied().filter(|d| *d != along).collect();
    let mut k = Kern::new(lw, &kname(lw, op, vals));
    let xo = k.operand(lw, x)?;
    let vo = k.operand(lw, vals)?;
    let io = k.operand(lw, idxs)?;
    let n = k.dim(lw, along)?;
    let kk = k.dim(lw, into)?;
    let sp = k.space(lw, &lane_dims)?;
    let block = k.block;
    let kb = &mut k.kb;
    let x_lane = kern::partial(kb, &xo, &sp.idx)?;
    let x_lane = kern::lanes(kb, x_lane, block)?;
    let o_lane = kern::partial(kb, &vo, &sp.idx)?;
    let o_lane = kern::lanes(kb, o_lane, block)?;
    let v0 = fill(kb, dt, 0.0, block)?;
    let none = kb.constant(-1.0, DType::I32, &[block])?;
    kern::for_n(kb, kk, &[v0, none], |kb, r, prev| {
        let (pv, pi) = (prev[0], prev[1]);
        let zero = kb.i32(0)?;
        let first = kb.lt(pi, zero)?;
        let v0 = fill(kb, dt, 0.0, block)?;
        let none = kb.constant(-1.0, DType::I32, &[block])?;
        let best = kern::for_n(kb, n, &[v0, none], |kb, j, cur| {
            let (bv, bi) = (cur[0], cur[1]);
            let part = kern::partial(kb, &xo, &[(along, j)])?;
            let off = kb.add(x_lane, part)?;
            let v = kern::load(kb, &xo, off, sp.mask)?;
            // After the previous pick: smaller, or equal at a higher index.
            let smaller = kb.lt(v, pv)?;
            let same = kern::eq(kb, v, pv)?;
            let later = kb.lt(pi, j)?;
            let tie = kb.and(same, later)?;
            let after = kern::or(kb, smaller, tie)?;
            let cand = kern::or(kb, first, after)?;
            // Better than the best so far (the first candidate always is).
            let empty = kb.lt(bi, zero)?;
            let larger = kb.lt(bv, v)?;
            let better = kern::or(kb, empty, larger)?;
            let take = kb.and(cand, better)?;
            let nv = kb.select(take, v, bv)?;
            let jj = kb.broadcast(j, &[block])?;
            let ni = kb.select(take, jj, bi)?;
            Ok(vec![nv, ni])
        })?;
        let part = kern::partial(kb, &vo, &[(into, r)])?;
        let off = kb.add(o_lane, part)?;
        kern::store(kb, &vo, off, best[0], sp.mask)?;
        kern::store(kb, &io, off, best[1], sp.mask)?;
        Ok(best)
    })?;
    k.launch(lw, kern::numel(&lane_dims))
}

/// One lane per group: the absmax, the scale `absmax / qmax` rounded to f32,
/// then the codes `clamp(round(x / scale), ±qmax)` (0 for an all-zero group).
fn quantize(lw: &mut Lowering, op: &OpNode, bits: u32, group: DimId) -> R<()> {
    let (Some(&x), Some(&codes), Some(&scales)) = (op.operands.first(), op.results.first(), op.results.get(1)) else {
        return Err(lw.err(op, "quantize has codes and scales"));
    };
    let qmax = if bits == 8 { 127.0 } else { 7.0 };
    let (xb, cb) = (lw.buffer(x), lw.buffer(codes));
    let lane_dims = lw.g.ty(scales).shape.clone();
    let mut k = Kern::new(lw, &kname(lw, op, codes));
    let xo = k.flat_operand(lw, "x", xb)?;
    let co = k.flat_operand(lw, "codes", cb)?;
    let so = k.operand(lw, scales)?;
    let g = k.dim(lw, group)?;
    let sp = k.space(lw, &lane_dims)?;
    let block = k.block;
    let kb = &mut k.kb;
    let base = kb.mul(sp.flat, g)?;
    let zero = kb.zeros(&[block])?;
    let amax = kern::for_n(kb, g, &[zero], |kb, e, c| {
        let off = kb.add(base, e)?;
        let v = kern::load(kb, &xo, off, sp.mask)?;
        let a = kb.unary(UnaryFn::Abs, v)?;
        Ok(vec![kb.max(c[0], a)?])
    })?[0];
    let q = kb.f32(qmax)?;
    let s = kb.div(amax, q)?;
    let s = kb.cast(s, DType::F32)?;
    kern::store(kb, &so, sp.flat, s, sp.mask)?;
    let zero = kb.f32(0.0)?;
    let pos = kb.lt(zero, s)?;
    let nq = kb.f32(-qmax)?;
    kern::for_n(kb, g, &[], |kb, e, _| {
        let off = kb.add(base, e)?;
        let v = kern::load(kb, &xo, off, sp.mask)?;
        let r = kb.div(v, s)?;
        let r = kb.unary(UnaryFn::Round, r)?;
        let r = kb.min(r, q)?;
        let r = kb.max(r, nq)?;
        let c = kb.select(pos, r, zero)?;
        let c = kb.cast(c, DType::I32)?;
        kern::store(kb, &co, off, c, sp.mask)?;
        Ok(vec![])
    })?;
    k.launch(lw, kern::numel(&lane_dims))
}
