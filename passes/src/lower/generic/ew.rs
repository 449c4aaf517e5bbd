//! Elementwise ops: one flat kernel over the result's elements, a block per
//! program, each operand gathered through its own strides by dim name (the
//! dims it lacks are broadcast). Covers constants, iota and index lists,
//! unary and binary math, where, casts, clamp, broadcast, permute, mix,
//! dequantization and rotary embeddings.
//!
//! Speedups left for later: contiguous operands could skip the div/rem index
//! decomposition; neighbouring elementwise ops could fuse into one kernel.

use super::super::Lowering;
use super::kern::{self, Kern, Space, R, TR};
use mixc_ir::graph::OpNode;
use mixc_ir::ops::{BinaryFn, OpKind, UnaryFn};
use mixc_ir::tile::{KernelBuilder, TValue};
use mixc_ir::DType;

/// Launches `result[i] = f(operands gathered at i)` over the op's first result.
pub fn map(
    lw: &mut Lowering,
    op: &OpNode,
    f: impl FnOnce(&mut KernelBuilder, &Space, &[TValue]) -> TR<TValue>,
) -> R<()> {
    let Some(&out) = op.results.first() else { return Err(lw.err(op, "no result")) };
    let name = format!("{}_{}", op.kind.mnemonic(), lw.g.value(out).name);
    let mut k = Kern::new(lw, &name);
    let mut ins = Vec::with_capacity(op.operands.len());
    for v in &op.operands {
        ins.push(k.operand(lw, *v)?);
    }
    let o = k.operand(lw, out)?;
    let dims = lw.g.ty(out).shape.clone();
    let sp = k.space(lw, &dims)?;
    let kb = &mut k.kb;
    let mut vals = Vec::with_capacity(ins.len());
    for x in &ins {
        let off = kern::offset(kb, x, &sp.idx)?;
        vals.push(kern::load(kb, x, off, sp.mask)?);
    }
    let r = f(kb, &sp, &vals)?;
    kern::store(kb, &o, sp.flat, r, sp.mask)?;
    k.launch(lw, kern::numel(&dims))
}

/// The lowering of every elementwise kind (`None`: not one of them).
pub fn lower(lw: &mut Lowering, op: &OpNode) -> Option<R<()>> {
    let out_dtype = op.results.first().map(|r| lw.g.ty(*r).dtype).unwrap_or(DType::F32);
    Some(match &op.kind {
        OpKind::Const { value, dtype, .. } => {
            let (value, dtype) = (*value, *dtype);
            map(lw, op, move |kb, _, _| {
                if dtype.is_float() {
                    let c = kb.constant(value, DType::F64, &[])?;
                    kern::round_to(kb, c, dtype)
                } else {
                    kb.constant(value, dtype, &[])
                }
            })
        }
        OpKind::Iota { .. } => map(lw, op, |_, sp, _| Ok(sp.flat)),
        OpKind::Indices { values, .. } => {
            let values = values.clone();
            map(lw, op, move |kb, sp, _| indices(kb, sp.flat, &values))
        }
        OpKind::Unary(f) => {
            let f = *f;
            map(lw, op, move |kb, _, x| {
                let r = kb.unary(f, x[0])?;
                kern::round_to(kb, r, out_dtype)
            })
        }
        OpKind::Binary(f) => {
            let f = *f;
            map(lw, op, move |kb, _, x| {
                let r = kb.binary(f, x[0], x[1])?;
                kern::round_to(kb, r, out_dtype)
            })
        }
        OpKind::Select => map(lw, op, |kb, _, x| kb.select(x[0], x[1], x[2])),
        OpKind::Cast(to) => {
            let to = *to;
            map(lw, op, move |kb, _, x| cast(kb, x[0], to))
        }
        OpKind::Clamp { lo, hi } => {
            let (lo, hi) = (*lo, *hi);
            map(lw, op, move |kb, _, x| {
                let dt = kb.ty(x[0]).dtype;
                // An integer clamped to [lo, hi] lies in [⌈lo⌉, ⌊hi⌋].
                let (lo, hi) = if dt.is_float() { (lo, hi) } else { (lo.ceil(), hi.floor()) };
                let (l, h) = (kb.constant(lo, dt, &[])?, kb.constant(hi, dt, &[])?);
                let r = kb.min(x[0], h)?;
                kb.max(r, l)
            })
        }
        OpKind::Broadcast { .. } | OpKind::Permute { .. } => map(lw, op, |_, _, x| Ok(x[0])),
        OpKind::Mix { weights } => {
            let weights = weights.clone();
            map(lw, op, move |kb, _, x| {
                let mut acc = kb.f32(0.0)?;
                for (w, v) in weights.iter().zip(x) {
                    let w = kb.f32(*w)?;
                    let t = kb.mul(w, *v)?;
                    acc = kb.add(acc, t)?;
                }
                Ok(acc)
            })
        }
        OpKind::Dequantize => map(lw, op, |kb, _, x| {
            let c = kern::to_f32(kb, x[0])?;
            kb.mul(c, x[1])
        }),
        OpKind::Rope { time, dim, theta } => rope(lw, op, *time, *dim, *theta),
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
