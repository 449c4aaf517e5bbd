//! The short causal convolution fused into the prologue of the recurrence
//! that consumes it (`Schedule::fuse_conv`).
//!
//! Mamba2 and Gated DeltaNet run their projected inputs through a depthwise
//! causal convolution of a few taps (with SiLU) over `[B, T, C]`, then reshape
//! the channels into heads, and may broadcast groups over heads (Mamba2's B
//! and C), apply a feature map, L2-normalize (Gated DeltaNet's q and k) or
//! scale by a per-step value (Mamba2's `v = Δ·x`). Unfused, each of those is a
//! kernel with a buffer after it. Fused, a recurrence kernel computes the
//! operand for its own rows: for rows `t0 .. t0 + n` of head `h` it loads, per
//! tap `j`, the `[n, D]` tile of the convolution's input shifted `K − 1 − j`
//! rows back (rows before `t = 0` from the cached tail, zeros when there is
//! none), sums the taps times the weights, applies the SiLU and the row-local
//! ops after it, and uses the result directly. Rows past `T` and padding
//! columns come out as zeros, as the recurrences expect of their loads.
//!
//! Planning (`plan`) walks back from every recurrence's `q`, `k`, `v` through
//! the ops that can run on a row tile (`Chain` below) to a convolution's `y`.
//! An operand is fused only if nothing else needs its value (reading a buffer
//! that is made anyway is cheaper than recomputing it). Ops whose results
//! nothing needs any more are left out; a convolution whose `y` nothing needs
//! keeps only its new-tail kernel, which then reads the convolution's input
//! where it lies (the reshape before it is left out too), after the
//! recurrences have read the old tail. Values between the convolution and the
//! recurrence that something else needs (Mamba2's convolved `x` also feeds the
//! `D` skip) keep their kernels; the recurrence recomputes the convolution
//! from its input rather than reading them, which is a few multiply-adds per
//! element against a buffer round trip.
//!
//! Every form of the recurrences takes a fused operand (fused, split and step;
//! diagonal gates and delta rules): they all load their rows through one
//! function per form, which computes the prologue where the operand is fused.
//! Programs of one value block (`Schedule::block_v`) compute only their
//! columns of `v`, unless the prologue normalizes over the head dim, in which
//! case the recurrence does not split its value columns.
//! Convolutions of more than `MAX_TAPS` taps (Lizard's delay line) are not
//! "short" and stay separate, as do chains with any other op.

use super::util::{cols_from, rows, Binder};
use super::Lowering;
use mixc_ir::dims::DimId;
use mixc_ir::graph::{Graph, ValueId};
use mixc_ir::ops::{BinaryFn, NormKind, OpKind, UnaryFn};
use mixc_ir::tile::{KernelBuilder, ParamId, TValue, TileError};
use mixc_ir::DType;

type Res<T> = Result<T, TileError>;

/// The most taps a fused convolution may have: each is a shifted load of the
/// operand's tile, every time the recurrence loads it.
pub const MAX_TAPS: u64 = 8;

/// What indexes a dim of a value on the chain, in a fused program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Idx {
    Batch,
    Time,
    /// The convolution's channel: `hx · D + col`.
    Channel,
    /// The head of the convolution's channels, `hx = h / group`.
    ConvHead,
    /// The copy of a group over its heads, `h % group`.
    Rep,
    /// The recurrence's head `h`.
    Head,
    /// The column within a head, `0 .. D`.
    Col,
}

/// An operand of a binary op on the chain that is not on the chain: a buffer
/// indexed by some of the chain value's dims.
#[derive(Clone, Debug)]
pub struct Side {
    pub value: ValueId,
    /// Per dim of the side value, in its order: what indexes it, and its
    /// row-major stride as a constant times `T` or not.
    dims: Vec<(Idx, u64, bool)>,
}

/// An op applied on chip after the convolution, in order.
#[derive(Clone, Debug)]
enum Step {
    /// Rounded to f32 after, as the graph rounds elementwise results.
    Unary(UnaryFn),
    /// Over the head dim.
    Normalize { kind: NormKind, eps: f64 },
    /// `chain ∘ side` (or `side ∘ chain`), rounded to f32 after.
    Binary { f: BinaryFn, side: usize, chain_first: bool },
}

/// How a recurrence operand is computed from the input of a short convolution.
#[derive(Clone, Debug)]
pub struct ConvPrologue {
    /// A value holding the convolution's input in its `[B, T, C]` row-major
    /// order (its `x`, with reshapes before it looked through).
    pub src: ValueId,
    pub weight: ValueId,
    pub tail: Option<ValueId>,
    taps: u64,
    channels: u64,
    silu: bool,
    /// The head dim `D` of the operand.
    width: u64,
    /// Recurrence heads per head of the convolution's channels (Mamba2's
    /// heads per group; 1 otherwise).
    group: u64,
    sides: Vec<Side>,
    steps: Vec<Step>,
}

impl ConvPrologue {
    /// Whether each column of the operand is computed from that column alone
    /// (nothing normalizes over the head dim), so that a program may compute
    /// a block of columns (`Schedule::block_v`).
    fn column_local(&self) -> bool {
        !self.steps.iter().any(|s| matches!(s, Step::Normalize { .. }))
    }

    /// The values the fused recurrence reads in place of the operand.
    fn leaves(&self) -> impl Iterator<Item = ValueId> + '_ {
        [Some(self.src), Some(self.weight), self.tail].into_iter().flatten().chain(self.sides.iter().map(|s| s.value))
    }
}

/// How one op of the graph is lowered under the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Lower,
    /// Nothing needs its results any more.
    Skip,
    /// Only the convolution's new tail, reading its input from `x_at`'s
    /// buffer; `deferred`: after every other op (the new tail is only an
    /// output, and the fused recurrences read the old one).
    ConvTail {
        x_at: ValueId,
        deferred: bool,
    },
}

/// Which recurrence operands are fused, and what that leaves of the other ops.
pub struct Plan {
    /// Per value: computed on chip by the recurrences that take it as q, k or v.
    pub fused: Vec<Option<ConvPrologue>>,
    /// Per op.
    pub actions: Vec<Action>,
}

impl Plan {
    /// Every op lowered as is.
    pub fn none(g: &Graph) -> Plan {
        Plan { fused: vec![None; g.values.len()], actions: vec![Action::Lower; g.ops.len()] }
    }
}

/// The fusion plan of a graph.
pub fn plan(g: &Graph) -> Plan {
    let mut fused: Vec<Option<ConvPrologue>> = vec![None; g.values.len()];
    for op in &g.ops {
        if matches!(op.kind, OpKind::LinearRecurrence(_)) {
            for &v in op.operands.iter().take(3) {
                if fused[v.index()].is_none() {
                    fused[v.index()] = trace_operand(g, v);
                }
            }
        }
    }
    // Operands something else needs are read from their buffers; dropping one
    // can make values on other chains needed, hence the loop.
    let (need, live) = loop {
        let (need, live) = liveness(g, &fused);
        let mut changed = false;
        for (v, f) in fused.iter_mut().enumerate() {
            if f.is_some() && need[v] {
                *f = None;
                changed = true;
            }
        }
        if !changed {
            break (need, live);
        }
    };
    let (need0, live0) = liveness(g, &vec![None; g.values.len()]);
    let mut used_by_op = vec![false; g.values.len()];
    for op in &g.ops {
        for v in &op.operands {
            used_by_op[v.index()] = true;
        }
    }
    let actions = g
        .ops
        .iter()
        .enumerate()
        .map(|(i, op)| {
            if matches!(op.kind, OpKind::Input { .. }) {
                return Action::Lower;
            }
            // Ops that were dead before fusing stay as they were.
            if live0[i] && !live[i] {
                return Action::Skip;
            }
            if let (OpKind::CausalConv1d { .. }, Some(&x), Some(&y), Some(&new_tail)) =
                (&op.kind, op.operands.first(), op.results.first(), op.results.get(1))
            {
                if live[i] && need0[y.index()] && !need[y.index()] {
                    return Action::ConvTail {
                        x_at: look_through_reshapes(g, x),
                        deferred: !used_by_op[new_tail.index()],
                    };
                }
            }
            Action::Lower
        })
        .collect();
    Plan { fused, actions }
}

/// Which values are needed (outputs, and operands of the ops that make
/// needed values) and which ops are live, given the fused operands.
fn liveness(g: &Graph, fused: &[Option<ConvPrologue>]) -> (Vec<bool>, Vec<bool>) {
    let mut need = vec![false; g.values.len()];
    for (_, v) in &g.outputs {
        need[v.index()] = true;
    }
    let mut live = vec![false; g.ops.len()];
    for (i, op) in g.ops.iter().enumerate().rev() {
        if !op.results.iter().any(|r| need[r.index()]) {
            continue;
        }
        live[i] = true;
        match &op.kind {
            OpKind::LinearRecurrence(_) => {
                for (pos, v) in op.operands.iter().enumerate() {
                    match fused[v.index()].as_ref().filter(|_| pos < 3) {
                        Some(p) => p.leaves().for_each(|l| need[l.index()] = true),
                        None => need[v.index()] = true,
                    }
                }
            }
            OpKind::CausalConv1d { .. } if op.results.first().is_some_and(|y| !need[y.index()]) => {
                // The new tail alone: the input where it lies, and the old tail.
                if let Some(&x) = op.operands.first() {
                    need[look_through_reshapes(g, x).index()] = true;
                }
                if let Some(t) = op.operands.get(2) {
                    need[t.index()] = true;
                }
            }
            _ => op.operands.iter().for_each(|v| need[v.index()] = true),
        }
    }
    (need, live)
}

/// The value whose buffer holds `v`'s elements in `v`'s order: through
/// reshapes (row-major data is unchanged by them).
fn look_through_reshapes(g: &Graph, mut v: ValueId) -> ValueId {
    loop {
        let op = g.op(g.value(v).op);
        match (&op.kind, op.operands.first()) {
            (OpKind::Reshape { .. }, Some(&x)) => v = x,
            _ => return v,
        }
    }
}

/// A chain traced back to a convolution: the prologue so far, and what
/// indexes each dim of the value reached.
struct Chain {
    p: ConvPrologue,
    frame: Vec<(DimId, Idx)>,
}

impl Chain {
    fn dims(&self) -> Vec<DimId> {
        self.frame.iter().map(|(d, _)| *d).collect()
    }

    fn idx(&self) -> Vec<Idx> {
        self.frame.iter().map(|(_, i)| *i).collect()
    }
}

/// The prologue computing recurrence operand `v` (`[B, T, H, D]`), if it is
/// a chain of row-local ops after a short convolution.
fn trace_operand(g: &Graph, v: ValueId) -> Option<ConvPrologue> {
    let mut budget = TRACE_BUDGET;
    let c = trace(g, v, &mut budget)?;
    let ok = match c.idx()[..] {
        [Idx::Batch, Idx::Time, Idx::Head, Idx::Col] => true,
        [Idx::Batch, Idx::Time, Idx::ConvHead, Idx::Col] => c.p.group == 1,
        _ => false,
    };
    ok.then_some(c.p)
}

/// The most values one operand's trace visits (binary ops try both
/// operands, which could take exponential time on a graph of shared terms).
const TRACE_BUDGET: u32 = 64;

fn trace(g: &Graph, v: ValueId, budget: &mut u32) -> Option<Chain> {
    let val = g.value(v);
    if *budget == 0 || val.ty.dtype != DType::F32 {
        return None;
    }
    *budget -= 1;
    let op = g.op(val.op);
    let shape = &val.ty.shape;
    let konst = |d: DimId| g.dims.const_size(d);
    let mut first = || op.operands.first().and_then(|x| trace(g, *x, budget));
    match &op.kind {
        OpKind::CausalConv1d { time, taps, silu, has_tail, .. } if val.index == 0 => {
            let taps = konst(*taps).filter(|k| (1..=MAX_TAPS).contains(k))?;
            let (&[b, t, c], Some(&x), Some(&weight)) = (&shape[..], op.operands.first(), op.operands.get(1)) else {
                return None;
            };
            if t != *time || g.ty(weight).dtype != DType::F32 {
                return None;
            }
            let tail = if *has_tail { Some(*op.operands.get(2)?) } else { None };
            let channels = konst(c)?;
            let p = ConvPrologue {
                src: look_through_reshapes(g, x),
                weight,
                tail,
                taps,
                channels,
                silu: *silu,
                width: channels,
                group: 1,
                sides: Vec::new(),
                steps: Vec::new(),
            };
            Some(Chain { p, frame: vec![(b, Idx::Batch), (t, Idx::Time), (c, Idx::Channel)] })
        }
        OpKind::Reshape { .. } => {
            let mut c = first()?;
            let (dims, idx) = (c.dims(), c.idx());
            if dims == *shape {
                return Some(c);
            }
            match (&idx[..], &shape[..]) {
                // Channels into heads.
                ([Idx::Batch, Idx::Time, Idx::Channel], &[b, t, x, d]) if b == dims[0] && t == dims[1] => {
                    let (xs, ds) = (konst(x)?, konst(d)?);
                    if xs.checked_mul(ds)? != c.p.channels || x == d {
                        return None;
                    }
                    c.p.width = ds;
                    c.frame = vec![(b, Idx::Batch), (t, Idx::Time), (x, Idx::ConvHead), (d, Idx::Col)];
                }
                // Groups repeated over their heads, merged into heads.
                ([Idx::Batch, Idx::Time, Idx::ConvHead, Idx::Rep, Idx::Col], &[b, t, h, d])
                    if b == dims[0] && t == dims[1] && d == dims[4] =>
                {
                    if konst(h)? != konst(dims[2])?.checked_mul(c.p.group)? {
                        return None;
                    }
                    c.frame = vec![(b, Idx::Batch), (t, Idx::Time), (h, Idx::Head), (d, Idx::Col)];
                }
                _ => return None,
            }
            Some(c)
        }
        OpKind::Broadcast { .. } => {
            let mut c = first()?;
            let dims = c.dims();
            let (&[b, t, x, r, d], [Idx::Batch, Idx::Time, Idx::ConvHead, Idx::Col]) = (&shape[..], &c.idx()[..])
            else {
                return None;
            };
            if [b, t, x, d] != dims[..] || c.p.group != 1 {
                return None;
            }
            c.p.group = konst(r).filter(|r| *r > 0)?;
            c.frame = vec![(b, Idx::Batch), (t, Idx::Time), (x, Idx::ConvHead), (r, Idx::Rep), (d, Idx::Col)];
            Some(c)
        }
        OpKind::Permute { shape: to } => {
            let c = first()?;
            (c.dims() == *to).then_some(c)
        }
        OpKind::Unary(f) => {
            let mut c = first()?;
            if matches!(f, UnaryFn::Not) {
                return None;
            }
            c.p.steps.push(Step::Unary(*f));
            Some(c)
        }
        OpKind::Normalize { kind, dim, eps } => {
            let mut c = first()?;
            if c.frame.last() != Some(&(*dim, Idx::Col)) {
                return None;
            }
            c.p.steps.push(Step::Normalize { kind: *kind, eps: *eps });
            Some(c)
        }
        OpKind::Binary(f) if matches!(f, BinaryFn::Add | BinaryFn::Sub | BinaryFn::Mul | BinaryFn::Div) => {
            for (chain_at, side_at) in [(0, 1), (1, 0)] {
                let (Some(&a), Some(&s)) = (op.operands.get(chain_at), op.operands.get(side_at)) else {
                    return None;
                };
                let Some(mut c) = trace(g, a, budget) else { continue };
                if c.dims() != *shape {
                    return None;
                }
                let side = side(g, s, &c.frame)?;
                c.p.sides.push(side);
                let at = c.p.sides.len() - 1;
                c.p.steps.push(Step::Binary { f: *f, side: at, chain_first: chain_at == 0 });
                return Some(c);
            }
            None
        }
        _ => None,
    }
}

/// A side operand whose dims all index the chain value (`B` first if at all).
fn side(g: &Graph, s: ValueId, frame: &[(DimId, Idx)]) -> Option<Side> {
    let ty = g.ty(s);
    if ty.dtype != DType::F32 {
        return None;
    }
    let idx_of = |d: &DimId| frame.iter().find(|(f, _)| f == d).map(|(_, i)| *i);
    let mut dims = Vec::with_capacity(ty.shape.len());
    for (p, d) in ty.shape.iter().enumerate() {
        let idx = idx_of(d)?;
        if idx == Idx::Batch && p != 0 {
            return None;
        }
        let (mut stride, mut with_t) = (1u64, false);
        for later in &ty.shape[p + 1..] {
            match idx_of(later)? {
                Idx::Time => with_t = true,
                Idx::Batch => return None,
                _ => stride = stride.checked_mul(g.dims.const_size(*later)?)?,
            }
        }
        dims.push((idx, stride, with_t));
    }
    Some(Side { value: s, dims })
}

/// A fused operand's parameters in one kernel.
pub struct Bound {
    p: ConvPrologue,
    x: ParamId,
    w: ParamId,
    tail: Option<ParamId>,
    sides: Vec<ParamId>,
}

/// A q, k or v operand of a recurrence kernel.
pub enum Src {
    Buffer(ParamId),
    Conv(Box<Bound>),
}

/// A q, k or v operand before it is bound to a kernel.
pub enum Input {
    Buffer(usize),
    Conv(Box<ConvPrologue>),
}

impl Input {
    /// Recurrence operand `v` as the plan says: its buffer, or its prologue.
    pub fn of(lw: &mut Lowering, v: ValueId) -> Input {
        match lw.fused_operand(v) {
            Some(p) => Input::Conv(Box::new(p)),
            None => Input::Buffer(lw.buffer(v)),
        }
    }

    /// Whether a program may load a block of the operand's columns (always,
    /// from a buffer; from a prologue, unless it normalizes over the head dim).
    pub fn column_local(&self) -> bool {
        match self {
            Input::Buffer(_) => true,
            Input::Conv(p) => p.column_local(),
        }
    }

    /// Declares the operand's parameters (named after `role`) and binds them.
    pub fn bind(&self, lw: &mut Lowering, kb: &mut KernelBuilder, bind: &mut Binder, role: &str) -> Src {
        match self {
            Input::Buffer(b) => Src::Buffer(bind.ptr(kb, role, *b)),
            Input::Conv(p) => {
                let mut ptr = |kb: &mut KernelBuilder, name: String, v: ValueId| {
                    let b = lw.buffer(v);
                    bind.ptr(kb, &name, b)
                };
                let x = ptr(kb, format!("{role}_conv_in"), p.src);
                let w = ptr(kb, format!("{role}_conv_weight"), p.weight);
                let tail = p.tail.map(|t| ptr(kb, format!("{role}_conv_tail"), t));
                let sides =
                    p.sides.iter().enumerate().map(|(i, s)| ptr(kb, format!("{role}_side{i}"), s.value)).collect();
                Src::Conv(Box::new(Bound { p: (**p).clone(), x, w, tail, sides }))
            }
        }
    }
}

/// Where a fused program is: its batch entry, its recurrence head, and `T`
/// (i32 scalars).
pub struct At {
    pub b: TValue,
    pub h: TValue,
    pub t_len: TValue,
}

/// The indices of a `[n, pad]` tile of the operand.
struct TileIdx {
    t: TValue,
    valid: TValue,
    col: TValue,
    cmask: TValue,
    ch: TValue,
    hx: TValue,
    full: TValue,
}

/// Columns `col0 .. col0 + pad` (from 0 when `None`) of rows `t0 .. t0 + n`
/// of head `at.h` of the fused operand, as `[n, pad]`: zeros past `T` and past
/// the head dim. A block of columns other than the whole row (a program of one
/// value block, `Schedule::block_v`) needs a column-local prologue
/// (`Input::column_local`).
pub fn load_block(
    kb: &mut KernelBuilder,
    bd: &Bound,
    at: &At,
    t0: TValue,
    n: u32,
    col0: Option<TValue>,
    pad: u32,
) -> Res<TValue> {
    let p = &bd.p;
    if col0.is_some() && !p.column_local() {
        return Err(TileError::Program("a prologue that normalizes rows loaded by column blocks".into()));
    }
    let ix = tile_idx(kb, p, at, t0, n, col0, pad)?;
    let acc = convolve(kb, bd, at, &ix)?;
    let mut x = if p.silu { kb.unary(UnaryFn::Silu, acc)? } else { acc };
    let zero = kb.f32(0.0)?;
    for step in &p.steps {
        x = match step {
            Step::Unary(f) => {
                let y = kb.unary(*f, x)?;
                kb.cast(y, DType::F32)?
            }
            Step::Normalize { kind, eps } => {
                let sq = kb.mul(x, x)?;
                let ss = kb.reduce(mixc_ir::ops::ReduceFn::Sum, sq, 1)?;
                let ss = kb.reshape(ss, &[n, 1])?;
                let ss = match kind {
                    NormKind::L2 => ss,
                    NormKind::Rms => {
                        let len = kb.f32(p.width.max(1) as f64)?;
                        kb.div(ss, len)?
                    }
                };
                let e = kb.f32(*eps)?;
                let den = kb.add(ss, e)?;
                let den = kb.unary(UnaryFn::Sqrt, den)?;
                kb.div(x, den)?
            }
            Step::Binary { f, side, chain_first } => {
                let (Some(s), Some(ptr)) = (p.sides.get(*side), bd.sides.get(*side)) else {
                    return Err(TileError::Program("a fused convolution lost a side operand".into()));
                };
                let sv = load_side(kb, *ptr, s, p, at, &ix, n, pad)?;
                let y = if *chain_first { kb.binary(*f, x, sv)? } else { kb.binary(*f, sv, x)? };
                kb.cast(y, DType::F32)?
            }
        };
        // Steps may map zeros elsewhere (`elu + 1`, `0 / 0`): keep the masked
        // lanes 0. Before the steps they are: every load there reads 0.
        x = kb.select(ix.full, x, zero)?;
    }
    Ok(x)
}

fn tile_idx(
    kb: &mut KernelBuilder,
    p: &ConvPrologue,
    at: &At,
    t0: TValue,
    n: u32,
    col0: Option<TValue>,
    pad: u32,
) -> Res<TileIdx> {
    let hx = if p.group > 1 {
        let r = kb.i32(p.group as i64)?;
        kb.binary(BinaryFn::FloorDiv, at.h, r)?
    } else {
        at.h
    };
    let (t, valid) = rows(kb, t0, n, at.t_len)?;
    let (col, cmask) = cols_from(kb, col0, pad, p.width)?;
    let d = kb.i32(p.width as i64)?;
    let ch0 = kb.mul(hx, d)?;
    let ch = kb.add(col, ch0)?;
    let full = kb.and(valid, cmask)?;
    Ok(TileIdx { t, valid, col, cmask, ch, hx, full })
}

/// `Σ_j w[ch, j] · row(t + j)` over the extended input (the tail, then `x`).
fn convolve(kb: &mut KernelBuilder, bd: &Bound, at: &At, ix: &TileIdx) -> Res<TValue> {
    let p = &bd.p;
    let km1 = p.taps - 1;
    let c = kb.i32(p.channels as i64)?;
    // Row t of x at (b·T + t)·C + ch; row s of the tail at (b·(K−1) + s)·C + ch.
    let bt = kb.mul(at.b, at.t_len)?;
    let xbase = kb.mul(bt, c)?;
    let xcol = kb.add(ix.ch, xbase)?;
    let tail_rows = kb.i32((km1 * p.channels) as i64)?;
    let tbase = kb.mul(at.b, tail_rows)?;
    let tcol = kb.add(ix.ch, tbase)?;
    let kk = kb.i32(p.taps as i64)?;
    let wrow = kb.mul(ix.ch, kk)?;
    let zero = kb.i32(0)?;
    let mut acc: Option<TValue> = None;
    for j in 0..p.taps {
        let back = km1 - j;
        let v = if back == 0 {
            let off = kb.mul(ix.t, c)?;
            let off = kb.add(off, xcol)?;
            kb.load(bd.x, off, Some(ix.full), 0.0)?
        } else {
            let shift = kb.i32(back as i64)?;
            let tx = kb.sub(ix.t, shift)?;
            let in_x = kb.le(zero, tx)?;
            let m = kb.and(ix.full, in_x)?;
            let off = kb.mul(tx, c)?;
            let off = kb.add(off, xcol)?;
            let xv = kb.load(bd.x, off, Some(m), 0.0)?;
            match bd.tail {
                Some(tp) => {
                    // Extended row t + j, a tail row when t + j < K − 1.
                    let in_tail = kb.lt(tx, zero)?;
                    let m = kb.and(ix.full, in_tail)?;
                    let s = plus(kb, ix.t, j)?;
                    let off = kb.mul(s, c)?;
                    let off = kb.add(off, tcol)?;
                    let tv = kb.load(tp, off, Some(m), 0.0)?;
                    kb.add(xv, tv)?
                }
                None => xv,
            }
        };
        let woff = plus(kb, wrow, j)?;
        let wv = kb.load(bd.w, woff, Some(ix.cmask), 0.0)?;
        let term = kb.mul(wv, v)?;
        acc = Some(match acc {
            Some(a) => kb.add(a, term)?,
            None => term,
        });
    }
    match acc {
        Some(a) => Ok(a),
        None => Err(TileError::Program("a convolution without taps".into())),
    }
}

/// `x + c` for an i32 tile `x` (`x` itself for 0).
fn plus(kb: &mut KernelBuilder, x: TValue, c: u64) -> Res<TValue> {
    if c == 0 {
        return Ok(x);
    }
    let c = kb.i32(c as i64)?;
    kb.add(x, c)
}

/// A side operand at the tile's indices, as `[n or 1, pad or 1]`.
#[allow(clippy::too_many_arguments)]
fn load_side(
    kb: &mut KernelBuilder,
    ptr: ParamId,
    s: &Side,
    p: &ConvPrologue,
    at: &At,
    ix: &TileIdx,
    n: u32,
    pad: u32,
) -> Res<TValue> {
    let (mut by_row, mut by_col) = (false, false);
    let mut off: Option<TValue> = None;
    for &(idx, stride, with_t) in &s.dims {
        let i = match idx {
            Idx::Batch => at.b,
            Idx::Time => {
                by_row = true;
                ix.t
            }
            Idx::Channel => {
                by_col = true;
                ix.ch
            }
            Idx::Col => {
                by_col = true;
                ix.col
            }
            Idx::ConvHead => ix.hx,
            Idx::Head => at.h,
            Idx::Rep => {
                let r = kb.i32(p.group as i64)?;
                kb.binary(BinaryFn::Rem, at.h, r)?
            }
        };
        let mut term = if stride == 1 {
            i
        } else {
            let st = kb.i32(stride as i64)?;
            kb.mul(i, st)?
        };
        if with_t {
            term = kb.mul(term, at.t_len)?;
        }
        off = Some(match off {
            Some(o) => kb.add(o, term)?,
            None => term,
        });
    }
    let off = match off {
        Some(o) => o,
        None => kb.i32(0)?,
    };
    let shape = [if by_row { n } else { 1 }, if by_col { pad } else { 1 }];
    let off = if kb.ty(off).shape != shape { kb.broadcast(off, &shape)? } else { off };
    let mask = match (by_row, by_col) {
        (true, true) => Some(ix.full),
        (true, false) => Some(ix.valid),
        (false, true) => Some(ix.cmask),
        (false, false) => None,
    };
    kb.load(ptr, off, mask, 0.0)
}
