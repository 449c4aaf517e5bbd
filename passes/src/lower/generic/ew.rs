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
use mixc_ir::ops::{BinaryFn, OpKind, Transition, UnaryFn};
use mixc_ir::tile::{KernelBuilder, TValue};
use mixc_ir::DType;

/// What an elementwise op computes from its operands' values at one index.
pub type EwFn = Box<dyn Fn(&mut KernelBuilder, &Space, &[TValue]) -> TR<TValue>>;

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

/// Marks, in `inline`, a diagonal recurrence's gate whose producer is
/// elementwise (a gate activation: GLA's `logsigmoid(g) · (1/τ)`) as
/// computed inside the recurrence's kernels as they load it, instead of by a
/// kernel of its own (`lower::recurrence`): where the gate is no graph output,
/// the recurrence is its one use, and everything its computation loads has
/// the gate's shape (so the same offsets) or is a constant, through unary,
/// binary, cast, clamp and select ops only (no indices: a recurrence
/// computes the gate at offsets, not at per-dim indices).
pub fn recurrence_gates(g: &Graph, lowered: &[bool], inline: &mut [Option<usize>]) {
    let outputs: Vec<ValueId> = g.outputs.iter().map(|(_, v)| *v).collect();
    for (ri, op) in g.ops.iter().enumerate() {
        let OpKind::LinearRecurrence(r) = &op.kind else { continue };
        if !lowered.get(ri).copied().unwrap_or(false)
            || !matches!(r.transition, Transition::ScalarDecay | Transition::KeyDecay)
        {
            continue;
        }
        let roles = op.kind.operand_roles(op.operands.len());
        let Some(v) = roles.iter().position(|x| x == "gate").and_then(|i| op.operands.get(i).copied()) else {
            continue;
        };
        let p = g.value(v).op.index();
        let uses = g.ops.iter().flat_map(|o| o.operands.iter()).filter(|x| **x == v).count();
        let producer = &g.ops[p];
        if uses != 1
            || outputs.contains(&v)
            || inline[v.index()].is_some()
            || producer.results.len() != 1
            || !lowered.get(p).copied().unwrap_or(false)
        {
            continue;
        }
        let shape = &g.ty(v).shape;
        if computed_at_offsets(g, inline, producer, shape) {
            inline[v.index()] = Some(p);
        }
    }
}

/// Whether `op` and the ops inlined into its operands are offset-wise
/// elementwise ops whose loaded operands all have `shape` (or are constants).
fn computed_at_offsets(g: &Graph, inline: &[Option<usize>], op: &OpNode, shape: &[mixc_ir::DimId]) -> bool {
    let kind_ok = matches!(
        op.kind,
        OpKind::Const { .. }
            | OpKind::Unary(_)
            | OpKind::Binary(_)
            | OpKind::Cast(_)
            | OpKind::Clamp { .. }
            | OpKind::Select
    );
    kind_ok
        && op.operands.iter().all(|x| match inline.get(x.index()).copied().flatten() {
            Some(q) => computed_at_offsets(g, inline, &g.ops[q], shape),
            None => g.ty(*x).shape == shape && g.ty(*x).dtype.is_float(),
        })
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
/// into it), in order of first use; `v` itself where it is not computed
/// inside its consumer.
pub fn leaves(lw: &Lowering, v: ValueId, out: &mut Vec<ValueId>) {
    match lw.inlined(v) {
        Some(op) => op.operands.iter().for_each(|x| leaves(lw, *x, out)),
        None if !out.contains(&v) => out.push(v),
        None => {}
    }
}

/// An elementwise computation another op's kernel carries out where it
/// needs the value (a row norm's epilogue as it stores, a recurrence's gate
/// as it loads): each op's function applied to its operands, down to the
/// values it loads ("leaves", numbered by the caller).
pub enum Recipe {
    Leaf(usize),
    Apply(EwFn, Vec<Recipe>),
}

impl Recipe {
    /// The recipe of op `op`'s result, through the ops inlined into its
    /// operands, with leaf `i` the value `leaves[i]` (`None` where `op` or
    /// an inlined op is not elementwise, or a leaf is missing).
    pub fn of(lw: &Lowering, op: &OpNode, leaves: &[ValueId]) -> Option<Recipe> {
        let f = func(lw, op)?;
        let mut args = Vec::with_capacity(op.operands.len());
        for x in &op.operands {
            args.push(match (leaves.iter().position(|l| l == x), lw.inlined(*x)) {
                (Some(i), _) => Recipe::Leaf(i),
                (None, Some(inner)) => Recipe::of(lw, inner, leaves)?,
                (None, None) => return None,
            });
        }
        Some(Recipe::Apply(f, args))
    }

    /// Emits the computation, leaf `i`'s tile from `leaf(kb, i)`.
    pub fn emit(
        &self,
        kb: &mut KernelBuilder,
        sp: &Space,
        leaf: &mut dyn FnMut(&mut KernelBuilder, usize) -> TR<TValue>,
    ) -> TR<TValue> {
        match self {
            Recipe::Leaf(i) => leaf(kb, *i),
            Recipe::Apply(f, args) => {
                let mut vals = Vec::with_capacity(args.len());
                for a in args {
                    vals.push(a.emit(kb, sp, leaf)?);
                }
                f(kb, sp, &vals)
            }
        }
    }
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
