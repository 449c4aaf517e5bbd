//! Elementwise ops: one flat kernel over the result's elements, a block per
//! program, each operand gathered through its own strides by dim name (the
//! dims it lacks are broadcast). Covers constants, iota and index lists,
//! unary and binary math, where, casts, clamp, broadcast, permute, mix,
//! dequantization and rotary embeddings.
//!
//! Chains fuse: an elementwise op whose value has one consumer, itself
//! elementwise over the same elements, is computed inside that consumer's
//! kernel (recursively), as is every constant and every value of constants
//! and indices alone: a gate's `logsigmoid(g) · (1/τ)` is one kernel, not
//! three, and so is lizard's `(o + num·e) / …` numerator (`inline_plan`). A
//! value with two consumers, or broadcast to more elements than its own,
//! keeps its kernel (fusing would compute it again). The `ptxas` test keeps
//! the register estimate within its bounds on the fused kernels.
//!
//! Speedups left for later: contiguous operands could skip the div/rem index
//! decomposition.

use super::super::Lowering;
use super::kern::{self, Kern, Space, R, TR};
use mixc_ir::graph::{Graph, OpNode, ValueId};
use mixc_ir::ops::{BinaryFn, OpKind, UnaryFn};
use mixc_ir::tile::{KernelBuilder, TValue};
use mixc_ir::DType;

/// What an elementwise op computes from its operands' values at one index.
type EwFn = Box<dyn Fn(&mut KernelBuilder, &Space, &[TValue]) -> TR<TValue>>;

/// Whether an op is computed by [`func`] (and may so be inlined into a
/// consumer, or have operands inlined into it).
fn mappable(kind: &OpKind) -> bool {
    matches!(
        kind,
        OpKind::Const { .. }
            | OpKind::Iota { .. }
            | OpKind::Unary(_)
            | OpKind::Binary(_)
            | OpKind::Select
            | OpKind::Cast(_)
            | OpKind::Clamp { .. }
            | OpKind::Broadcast { .. }
            | OpKind::Permute { .. }
            | OpKind::Mix { .. }
            | OpKind::Dequantize
    )
}

/// Per value, the op that computes it inside its consumer's kernel: every
/// value of a [`mappable`] op (that is lowered, `lowered[op]`) whose
/// consumers are all lowered mappable ops and which is no graph output,
/// where it is a constant, a value of constants and indices alone (in
/// consumers that index all its dims), or any such op whose one consumer
/// covers the same elements (so nothing is computed twice).
pub fn inline_plan(g: &Graph, lowered: &[bool]) -> Vec<Option<usize>> {
    let mut producer = vec![None; g.values.len()];
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); g.values.len()];
    for (i, op) in g.ops.iter().enumerate() {
        for r in &op.results {
            producer[r.index()] = Some(i);
        }
        for v in &op.operands {
            users[v.index()].push(i);
        }
    }
    let outputs: Vec<ValueId> = g.outputs.iter().map(|(_, v)| *v).collect();
    // Per value: computed from constants and indices alone, by mappable ops
    // (ops come in order: operands before their users).
    let mut pure = vec![false; g.values.len()];
    for op in &g.ops {
        let is = mappable(&op.kind) && op.operands.iter().all(|x| pure[x.index()]);
        for r in &op.results {
            pure[r.index()] = is;
        }
    }
    let mut out = vec![None; g.values.len()];
    for (vi, p) in producer.iter().enumerate() {
        let Some(p) = *p else { continue };
        let op = &g.ops[p];
        let v = op.results[0];
        if op.results.len() != 1 || !lowered.get(p).copied().unwrap_or(false) || !mappable(&op.kind) {
            continue;
        }
        if outputs.contains(&v) || users[vi].is_empty() {
            continue;
        }
        let consumers_ok =
            users[vi].iter().all(|&u| lowered.get(u).copied().unwrap_or(false) && mappable(&g.ops[u].kind));
        let constant = matches!(op.kind, OpKind::Const { .. });
        // A value of constants and indices alone (RetNet's per-head decay:
        // iota, sub, pow, log over [H]) is computed where it is used, in
        // every consumer that indexes all of its dims.
        let covered = users[vi].iter().all(|&u| {
            let r = g.ops[u].results[0];
            g.ty(v).shape.iter().all(|d| g.ty(r).shape.contains(d))
        });
        let pure = pure[vi] && covered;
        // Any elementwise producer with one consumer over the same elements:
        // chains (exp, mul, add, div…) become one kernel.
        let same = users[vi].len() == 1 && {
            let mut a = g.ty(v).shape.clone();
            let mut b = g.ty(g.ops[users[vi][0]].results[0]).shape.clone();
            a.sort_by_key(|d| d.index());
            b.sort_by_key(|d| d.index());
            a == b
        };
        if consumers_ok && (constant || same || pure) {
            out[vi] = Some(p);
        }
    }
    out
}

/// The value of `v` at the space's indices: loaded from its buffer, or
/// computed here where its op is inlined (recursively).
fn value_at(lw: &mut Lowering, k: &mut Kern, v: ValueId, sp: &Space) -> R<TValue> {
    if let Some(op) = lw.inlined(v) {
        let f = func(lw, op).ok_or_else(|| lw.err(op, "an inlined op that is not elementwise"))?;
        let mut vals = Vec::with_capacity(op.operands.len());
        for x in &op.operands {
            vals.push(value_at(lw, k, *x, sp)?);
        }
        return Ok(f(&mut k.kb, sp, &vals)?);
    }
    let x = k.operand(lw, v)?;
    let off = kern::offset(&mut k.kb, &x, &sp.idx)?;
    Ok(kern::load(&mut k.kb, &x, off, sp.mask)?)
}

/// Whether `op` is an elementwise op a consumer can compute (see [`mappable`]).
pub fn is_mappable(op: &OpNode) -> bool {
    mappable(&op.kind)
}

/// The values `v`'s computation loads from buffers (through the ops inlined
/// into it), `known` excepted: what a kernel computing `v` in place of its
/// consumer binds.
pub fn leaves(lw: &Lowering, v: ValueId, known: ValueId, out: &mut Vec<ValueId>) {
    if v == known {
        return;
    }
    match lw.inlined(v) {
        Some(op) => op.operands.iter().for_each(|x| leaves(lw, *x, known, out)),
        None if !out.contains(&v) => out.push(v),
        None => {}
    }
}

/// The result of elementwise op `op` at the space's indices, inside another
/// op's kernel: operands through the ops inlined into them, `known.0` as the
/// tile `known.1`, every other value loaded through its operand in `bound`
/// (bound beforehand: see [`leaves`]).
pub fn op_at(
    lw: &Lowering,
    kb: &mut KernelBuilder,
    op: &OpNode,
    sp: &Space,
    known: (ValueId, TValue),
    bound: &[(ValueId, kern::Operand)],
) -> TR<TValue> {
    let Some(f) = func(lw, op) else {
        return Err(mixc_ir::tile::TileError::Program(format!("`{}` is not elementwise", op.kind.mnemonic())));
    };
    let mut vals = Vec::with_capacity(op.operands.len());
    for &x in &op.operands {
        vals.push(if x == known.0 {
            known.1
        } else if let Some(inner) = lw.inlined(x) {
            op_at(lw, kb, inner, sp, known, bound)?
        } else {
            let Some((_, o)) = bound.iter().find(|(v, _)| *v == x) else {
                return Err(mixc_ir::tile::TileError::Program(format!(
                    "operand `{}` is not bound",
                    lw.g.value(x).name
                )));
            };
            let off = kern::offset(kb, o, &sp.idx)?;
            kern::load(kb, o, off, sp.mask)?
        });
    }
    f(kb, sp, &vals)
}

/// Launches `result[i] = f(operands at i)` over the op's first result.
pub fn map(lw: &mut Lowering, op: &OpNode, f: EwFn) -> R<()> {
    let Some(&out) = op.results.first() else { return Err(lw.err(op, "no result")) };
    let name = format!("{}_{}", op.kind.mnemonic(), lw.g.value(out).name);
    let mut k = Kern::new(lw, &name);
    let o = k.operand(lw, out)?;
    let dims = lw.g.ty(out).shape.clone();
    let sp = k.space(lw, &dims)?;
    let mut vals = Vec::with_capacity(op.operands.len());
    for v in &op.operands {
        vals.push(value_at(lw, &mut k, *v, &sp)?);
    }
    let kb = &mut k.kb;
    let r = f(kb, &sp, &vals)?;
    kern::store(kb, &o, sp.flat, r, sp.mask)?;
    k.launch(lw, kern::numel(&dims))
}

/// The lowering of every elementwise kind (`None`: not one of them).
pub fn lower(lw: &mut Lowering, op: &OpNode) -> Option<R<()>> {
    if let Some(f) = func(lw, op) {
        return Some(map(lw, op, f));
    }
    Some(match &op.kind {
        OpKind::Indices { values, .. } => {
            let values = values.clone();
            map(lw, op, Box::new(move |kb, sp, _| indices(kb, sp.flat, &values)))
        }
        OpKind::Rope { time, dim, theta } => rope(lw, op, *time, *dim, *theta),
        _ => return None,
    })
}

/// What a [`mappable`] op computes at one index from its operands' values.
fn func(lw: &Lowering, op: &OpNode) -> Option<EwFn> {
    let out_dtype = op.results.first().map(|r| lw.g.ty(*r).dtype).unwrap_or(DType::F32);
    Some(match &op.kind {
        OpKind::Const { value, dtype, .. } => {
            let (value, dtype) = (*value, *dtype);
            Box::new(move |kb, _, _| {
                if dtype.is_float() {
                    let c = kb.constant(value, DType::F64, &[])?;
                    kern::round_to(kb, c, dtype)
                } else {
                    kb.constant(value, dtype, &[])
                }
            })
        }
        OpKind::Unary(f) => {
            let f = *f;
            Box::new(move |kb, _, x| {
                let r = kb.unary(f, x[0])?;
                kern::round_to(kb, r, out_dtype)
            })
        }
        OpKind::Binary(f) => {
            let f = *f;
            Box::new(move |kb, _, x| {
                let r = kb.binary(f, x[0], x[1])?;
                kern::round_to(kb, r, out_dtype)
            })
        }
        OpKind::Select => Box::new(|kb, _, x| kb.select(x[0], x[1], x[2])),
        OpKind::Iota { dim } => {
            let dim = *dim;
            Box::new(move |_, sp, _| match sp.at(dim) {
                Some(i) => Ok(i),
                // Its own kernel's space is the iota's one dim, flat.
                None => Ok(sp.flat),
            })
        }
        OpKind::Cast(to) => {
            let to = *to;
            Box::new(move |kb, _, x| cast(kb, x[0], to))
        }
        OpKind::Clamp { lo, hi } => {
            let (lo, hi) = (*lo, *hi);
            Box::new(move |kb, _, x| {
                let dt = kb.ty(x[0]).dtype;
                // An integer clamped to [lo, hi] lies in [⌈lo⌉, ⌊hi⌋].
                let (lo, hi) = if dt.is_float() { (lo, hi) } else { (lo.ceil(), hi.floor()) };
                let (l, h) = (kb.constant(lo, dt, &[])?, kb.constant(hi, dt, &[])?);
                let r = kb.min(x[0], h)?;
                kb.max(r, l)
            })
        }
        OpKind::Broadcast { .. } | OpKind::Permute { .. } => Box::new(|_, _, x| Ok(x[0])),
        OpKind::Mix { weights } => {
            let weights = weights.clone();
            Box::new(move |kb, _, x| {
                let mut acc = kb.f32(0.0)?;
                for (w, v) in weights.iter().zip(x) {
                    let w = kb.f32(*w)?;
                    let t = kb.mul(w, *v)?;
                    acc = kb.add(acc, t)?;
                }
                Ok(acc)
            })
        }
        OpKind::Dequantize => Box::new(|kb, _, x| {
            let c = kern::to_f32(kb, x[0])?;
            kb.mul(c, x[1])
        }),
        _ => return None,
    })
}

/// A cast with the graph's rounding, kept in an f32 tile for the narrow floats.
fn cast(kb: &mut KernelBuilder, x: TValue, to: DType) -> TR<TValue> {
    match to {
        DType::F32 => kb.cast(x, to),
        DType::F16 | DType::BF16 => {
            let r = kb.cast(x, to)?;
            kb.cast(r, DType::F32)
        }
        // An f32 tile already holds an f64 value exactly as the graph does.
        DType::F64 if kb.ty(x).dtype.is_float() => Ok(x),
        _ => kb.cast(x, to),
    }
}

/// `values[i]` for flat index tile `i`: an affine formula when the list is
/// arithmetic, else a chain of selects.
fn indices(kb: &mut KernelBuilder, i: TValue, values: &[u32]) -> TR<TValue> {
    let v: Vec<i64> = values.iter().map(|x| i64::from(*x)).collect();
    let a = v.first().copied().unwrap_or(0);
    let step = v.get(1).map(|b| b - a).unwrap_or(0);
    if v.iter().enumerate().all(|(j, x)| *x == a + step * j as i64) {
        let (a, s) = (kb.i32(a)?, kb.i32(step)?);
        let t = kb.mul(i, s)?;
        return kb.add(t, a);
    }
    let mut acc = kb.i32(0)?;
    for (j, x) in v.iter().enumerate() {
        let (jj, xx) = (kb.i32(j as i64)?, kb.i32(*x)?);
        let hit = kern::eq(kb, i, jj)?;
        acc = kb.select(hit, xx, acc)?;
    }
    Ok(acc)
}

/// Rotate-half RoPE: element `i < D/2` pairs with `i + D/2`, at angle
/// `(offset + t) · θ^(−2i/D)`.
fn rope(lw: &mut Lowering, op: &OpNode, time: mixc_ir::DimId, dim: mixc_ir::DimId, theta: f64) -> R<()> {
    let (Some(&x), Some(&offv), Some(&out)) = (op.operands.first(), op.operands.get(1), op.results.first()) else {
        return Err(lw.err(op, "rope takes x and offset"));
    };
    let name = format!("rope_{}", lw.g.value(out).name);
    let mut k = Kern::new(lw, &name);
    let xo = k.operand(lw, x)?;
    let offo = k.operand(lw, offv)?;
    let o = k.operand(lw, out)?;
    let dims = lw.g.ty(out).shape.clone();
    let n_d = k.dim(lw, dim)?;
    let Some(sd) = xo.stride(dim) else { return Err(lw.err(op, "x lacks the rotary dim")) };
    let sp = k.space(lw, &dims)?;
    let (Some(i), Some(t)) = (sp.at(dim), sp.at(time)) else {
        return Err(lw.err(op, "x lacks the time or rotary dim"));
    };
    let kb = &mut k.kb;
    let two = kb.i32(2)?;
    let half = kb.div(n_d, two)?;
    let lower = kb.lt(i, half)?;
    let i_hi = kb.sub(i, half)?;
    let fi = kb.select(lower, i, i_hi)?;
    let neg_half = kb.unary(UnaryFn::Neg, half)?;
    let delta = kb.select(lower, half, neg_half)?;
    let delta = match sd {
        Some(s) => kb.mul(delta, s)?,
        None => delta,
    };
    let xi_off = kern::offset(kb, &xo, &sp.idx)?;
    let xp_off = kb.add(xi_off, delta)?;
    let xi = kern::load(kb, &xo, xi_off, sp.mask)?;
    let xp = kern::load(kb, &xo, xp_off, sp.mask)?;
    // The offset is one i32; the kernel only runs when there are elements.
    let zero = kb.i32(0)?;
    let off = kb.load(offo.ptr, zero, None, 0.0)?;
    let pos = kb.add(off, t)?;
    let pos = kern::to_f32(kb, pos)?;
    let fi = kern::to_f32(kb, fi)?;
    let m2 = kb.f32(-2.0)?;
    let e = kb.mul(m2, fi)?;
    let d_f = kern::to_f32(kb, n_d)?;
    let e = kb.div(e, d_f)?;
    let th = kb.f32(theta)?;
    let freq = kb.binary(BinaryFn::Pow, th, e)?;
    let ang = kb.mul(pos, freq)?;
    let (s, c) = (kb.unary(UnaryFn::Sin, ang)?, kb.unary(UnaryFn::Cos, ang)?);
    let a = kb.mul(xi, c)?;
    let b = kb.mul(xp, s)?;
    let lo_v = kb.sub(a, b)?;
    let hi_v = kb.add(a, b)?;
    let r = kb.select(lower, lo_v, hi_v)?;
    kern::store(kb, &o, sp.flat, r, sp.mask)?;
    k.launch(lw, kern::numel(&dims))
}
