//! Delta-rule recurrences (DeltaNet, Gated DeltaNet) through the chunked WY /
//! UT transform of MIXERS.md; the chunk math is in [`ut`].
//!
//! Three shapes of program, as the schedule says:
//!
//! - **fused** (`split = false`): one kernel, one program per (batch, head),
//!   walks the chunks in order with the state on chip;
//! - **split** (`split = true`), fla's structure: a kernel parallel over
//!   (chunk, head, batch) computes every chunk's `W` and `U` (the UT transform,
//!   the `c³` part); a kernel per (head, batch) walks the chunks in order,
//!   writing every chunk-start state and `V' = U − W S₀`; a kernel parallel over
//!   (chunk, head, batch) computes the outputs;
//! - **step** (`step = true`, the decode form): token by token, rank-1 updates.
//!
//! Under `Schedule::block_v`, the fused, step and state-walking kernels run one
//! program per (head, batch, value block) and the output kernel one per
//! (chunk and value block, head, batch): `U`, `V' = U − W S₀`, the outputs and
//! the state's columns `S[:, j]` need only `v[:, j]`, so each program carries
//! its block of the state and recomputes what does not involve `v` (the UT
//! transform's `M` and `W` in the fused form, the scores `Q Kᵀ`, the gates).
//! The split form's UT kernel, parallel over chunks already, stays whole.
//!
//! Activations are `[B, T, H, D]`, states `[B, H, Dk, Dv]`; head dims are padded
//! to multiples of 16 in tiles and masked; rows past `T` load zeros (`k`, `v`,
//! `β`, `g`), which leaves the state and the other rows untouched. Where the
//! schedule fuses a short convolution in front of `q`, `k` or `v`, every kernel
//! that loads the operand computes it from the convolution's input
//! (`conv_prologue`): the split form recomputes it in each of its kernels,
//! which costs a few multiply-adds per element instead of a buffer.

mod io;
mod ut;

use super::conv_prologue::Input;
use super::util::ValueBlocks;
use super::{util, LowerError, Lowering};
use io::{Binder, Head, Res, Rows, StateTile};
use mixc_ir::dims::DimId;
use mixc_ir::graph::{OpNode, ValueId};
use mixc_ir::ops::{BinaryFn, Recurrence, Transition};
use mixc_ir::tile::{Count, KernelBuilder, ParamId, TValue};
use ut::{Gates, Tri};

/// What the kernels of one delta-rule op need to know.
struct Spec {
    /// Kernel names start with this (`delta`, `gated_delta`).
    name: &'static str,
    /// Scratch buffers start with this: the name of the op's output `o`.
    prefix: String,
    b: DimId,
    t: DimId,
    h: DimId,
    dk: u64,
    dv: u64,
    /// How the value columns split over programs; `state` tiles are one block wide.
    vb: ValueBlocks,
    state: StateTile,
    chunk: u32,
    scale: f64,
    /// The operands (q, k, v may be computed on chip from a short
    /// convolution's input, see `conv_prologue`) and the results' buffers.
    q: Input,
    k: Input,
    v: Input,
    gate: Option<usize>,
    beta: usize,
    initial: Option<usize>,
    o: usize,
    final_state: usize,
}

impl Spec {
    fn of(lw: &mut Lowering, op: &OpNode, r: &Recurrence) -> Result<Spec, LowerError> {
        let gated = match r.transition {
            Transition::Delta => false,
            Transition::GatedDelta => true,
            other => return Err(lw.err(op, format!("the delta rule does not lower a `{}` transition", other.name()))),
        };
        let roles = op.kind.operand_roles(op.operands.len());
        let operand = |role: &str| -> Option<ValueId> {
            roles.iter().position(|x| x == role).and_then(|i| op.operands.get(i)).copied()
        };
        let need = |lw: &Lowering, role: &str| operand(role).ok_or_else(|| lw.err(op, format!("missing `{role}`")));
        let (q, k, v, beta) = (need(lw, "q")?, need(lw, "k")?, need(lw, "v")?, need(lw, "beta")?);
        let gate = if gated { Some(need(lw, "gate")?) } else { None };
        let initial = if r.has_initial { Some(need(lw, "initial_state")?) } else { None };
        let (Some(&o), Some(&fs)) = (op.results.first(), op.results.get(1)) else {
            return Err(lw.err(op, "expected results `o` and `final_state`"));
        };
        let q_shape = lw.g.ty(q).shape.clone();
        let v_shape = lw.g.ty(v).shape.clone();
        let (&[b, t, h, dk], Some(&dv)) = (&q_shape[..], v_shape.get(3)) else {
            return Err(lw.err(op, "q must be [B, T, H, Dk]"));
        };
        let (Some(dk), Some(dv)) = (lw.const_dim(dk), lw.const_dim(dv)) else {
            return Err(lw.err(op, "head dims Dk and Dv must have constant sizes"));
        };
        if dk == 0 || dv == 0 || dk * dv > i32::MAX as u64 {
            return Err(lw.err(op, format!("head dims {dk} × {dv} are out of range")));
        }
        let chunk = lw.sched.chunk;
        if chunk == 0 || !chunk.is_power_of_two() {
            return Err(LowerError::Schedule(format!("chunk {chunk} must be a power of two")));
        }
        let v_in = Input::of(lw, v);
        // A `v` computed by a prologue that normalizes its rows is not split.
        let vb = ValueBlocks::new(dv, if v_in.column_local() { lw.sched.block_v } else { 0 });
        let state = StateTile { dk, dv, dkp: util::pad16(dk), bv: vb.width };
        Ok(Spec {
            name: if gated { "gated_delta" } else { "delta" },
            prefix: lw.g.value(o).name.clone(),
            b,
            t,
            h,
            dk,
            dv,
            vb,
            state,
            chunk,
            scale: r.scale,
            q: Input::of(lw, q),
            k: Input::of(lw, k),
            v: v_in,
            gate: gate.map(|g| lw.buffer(g)),
            beta: lw.buffer(beta),
            initial: initial.map(|s| lw.buffer(s)),
            o: lw.buffer(o),
            final_state: lw.buffer(fs),
        })
    }

    /// `ceil(T / c)`.
    fn chunks(&self) -> Count {
        Count::ceil_div(Count::Dim(self.t), self.chunk as u64)
    }

    /// A `[B, T, H, width]` scratch shape.
    fn act_shape(&self, width: u64) -> Vec<Count> {
        vec![Count::Dim(self.b), Count::Dim(self.t), Count::Dim(self.h), Count::Const(width)]
    }

    fn dkp(&self) -> u32 {
        self.state.dkp
    }

    /// The padded width of all of `v`'s columns.
    fn dvp(&self) -> u32 {
        util::pad16(self.dv)
    }

    /// The width of one program's value columns.
    fn bv(&self) -> u32 {
        self.vb.width
    }

    /// Programs per (head, batch) of the kernels split by value blocks.
    fn blocks(&self) -> Count {
        Count::Const(self.vb.blocks as u64)
    }
}

pub fn lower(lw: &mut Lowering, op: &OpNode, r: &Recurrence) -> Result<(), LowerError> {
    let spec = Spec::of(lw, op, r)?;
    if lw.sched.step {
        step(lw, &spec)
    } else if lw.sched.split {
        split(lw, &spec)
    } else {
        fused(lw, &spec)
    }
}

/// Sizes and program ids shared by every kernel: `T`, `H`, then the head of this
/// program from grid axes `h_axis` (head) and `h_axis + 1` (batch).
fn head(kb: &mut KernelBuilder, bind: &mut Binder, sp: &Spec, h_axis: u8) -> Res<Head> {
    let t_len = bind.size(kb, "T", Count::Dim(sp.t))?;
    let heads = bind.size(kb, "H", Count::Dim(sp.h))?;
    let h = kb.program_id(h_axis)?;
    let b = kb.program_id(h_axis + 1)?;
    Head::new(kb, t_len, heads, b, h)
}

/// `head` for the kernels of one program per (head, batch, value block): the
/// block from grid axis 2.
fn block_head(kb: &mut KernelBuilder, bind: &mut Binder, sp: &Spec) -> Res<Head> {
    let mut hd = head(kb, bind, sp, 0)?;
    if sp.vb.split() {
        let block = kb.program_id(2)?;
        hd.v0 = Some(first_column(kb, sp, block)?);
    }
    Ok(hd)
}

/// The first column of value block `block`.
fn first_column(kb: &mut KernelBuilder, sp: &Spec, block: TValue) -> Res<TValue> {
    let width = kb.i32(sp.bv() as i64)?;
    kb.mul(block, width)
}

/// The state entering the first chunk: the initial state, or zeros.
fn initial_state(kb: &mut KernelBuilder, sp: &Spec, s0: Option<ParamId>, hd: &Head) -> Res<TValue> {
    match s0 {
        Some(p) => sp.state.load(kb, p, hd.bh, hd.v0),
        None => kb.zeros(&[sp.dkp(), sp.bv()]),
    }
}

/// Loads a chunk's gates (Gated DeltaNet) from the `g` parameter.
fn chunk_gates(kb: &mut KernelBuilder, rows: &Rows, g: Option<ParamId>) -> Res<Option<Gates>> {
    match g {
        Some(p) => {
            let g = rows.load_scalar(kb, p)?;
            Ok(Some(Gates::new(kb, g)?))
        }
        None => Ok(None),
    }
}

/// Fused: one program per (head, batch) walks the chunks, state on chip.
fn fused(lw: &mut Lowering, sp: &Spec) -> Result<(), LowerError> {
    let mut kb = KernelBuilder::new(&format!("{}_fused", sp.name));
    let mut bind = Binder::default();
    let q = sp.q.bind(lw, &mut kb, &mut bind, "q");
    let k = sp.k.bind(lw, &mut kb, &mut bind, "k");
    let v = sp.v.bind(lw, &mut kb, &mut bind, "v");
    let g = sp.gate.map(|b| bind.ptr(&mut kb, "g", b));
    let beta = bind.ptr(&mut kb, "beta", sp.beta);
    let s0 = sp.initial.map(|b| bind.ptr(&mut kb, "initial_state", b));
    let o = bind.ptr(&mut kb, "o", sp.o);
    let fs = bind.ptr(&mut kb, "final_state", sp.final_state);
    let hd = block_head(&mut kb, &mut bind, sp)?;
    let tri = Tri::new(&mut kb, sp.chunk)?;
    let s = initial_state(&mut kb, sp, s0, &hd)?;
    let (lo, step) = (kb.i32(0)?, kb.i32(sp.chunk as i64)?);
    let fin = kb.for_loop(lo, hd.t_len, step, &[s], |kb, t0, carried| {
        let s = carried[0];
        let rows = Rows::new(kb, &hd, t0, sp.chunk)?;
        let kt = rows.load_src(kb, &k, sp.dk, None, sp.dkp())?;
        let vt = rows.load_src(kb, &v, sp.dv, hd.v0, sp.bv())?;
        let bt = rows.load_scalar(kb, beta)?;
        let gates = chunk_gates(kb, &rows, g)?;
        let (w, u) = ut::wy(kb, &tri, kt, vt, bt, gates.as_ref())?;
        let vn = ut::v_new(kb, w, u, s)?;
        let qt = rows.load_src(kb, &q, sp.dk, None, sp.dkp())?;
        let ot = ut::output(kb, &tri, qt, kt, s, vn, gates.as_ref(), sp.scale)?;
        rows.store(kb, o, sp.dv, hd.v0, ot)?;
        Ok(vec![ut::advance(kb, kt, s, vn, gates.as_ref())?])
    })?;
    let fin = fin.first().copied().ok_or_else(|| no_result(&kb))?;
    sp.state.store(&mut kb, fs, hd.bh, hd.v0, fin)?;
    let grid = [Count::Dim(sp.h), Count::Dim(sp.b), sp.blocks()];
    lw.launch(kb.finish()?, grid, bind.args)
}

/// Decode-step form: one program per (head, batch) applies the tokens one by
/// one as rank-1 updates, `S ← e^g S`, `S ← S + β k (v − Sᵀk)ᵀ`, `o = Sᵀ(s q)`.
fn step(lw: &mut Lowering, sp: &Spec) -> Result<(), LowerError> {
    let mut kb = KernelBuilder::new(&format!("{}_step", sp.name));
    let mut bind = Binder::default();
    let q = sp.q.bind(lw, &mut kb, &mut bind, "q");
    let k = sp.k.bind(lw, &mut kb, &mut bind, "k");
    let v = sp.v.bind(lw, &mut kb, &mut bind, "v");
    let g = sp.gate.map(|b| bind.ptr(&mut kb, "g", b));
    let beta = bind.ptr(&mut kb, "beta", sp.beta);
    let s0 = sp.initial.map(|b| bind.ptr(&mut kb, "initial_state", b));
    let o = bind.ptr(&mut kb, "o", sp.o);
    let fs = bind.ptr(&mut kb, "final_state", sp.final_state);
    let hd = block_head(&mut kb, &mut bind, sp)?;
    let s = initial_state(&mut kb, sp, s0, &hd)?;
    let (lo, one) = (kb.i32(0)?, kb.i32(1)?);
    let fin = kb.for_loop(lo, hd.t_len, one, &[s], |kb, t, carried| {
        let rows = Rows::new(kb, &hd, t, 1)?;
        let s = match g {
            Some(p) => {
                let gt = rows.load_scalar(kb, p)?;
                let decay = kb.exp(gt)?;
                kb.mul(carried[0], decay)?
            }
            None => carried[0],
        };
        let kt = rows.load_src(kb, &k, sp.dk, None, sp.dkp())?;
        let vt = rows.load_src(kb, &v, sp.dv, hd.v0, sp.bv())?;
        let bt = rows.load_scalar(kb, beta)?;
        let ks = kb.dot(kt, s, None, false, false)?;
        let u = kb.sub(vt, ks)?;
        let u = kb.mul(u, bt)?;
        let s = kb.dot(kt, u, Some(s), true, false)?;
        let qt = rows.load_src(kb, &q, sp.dk, None, sp.dkp())?;
        let sc = kb.f32(sp.scale)?;
        let qt = kb.mul(qt, sc)?;
        let ot = kb.dot(qt, s, None, false, false)?;
        rows.store(kb, o, sp.dv, hd.v0, ot)?;
        Ok(vec![s])
    })?;
    let fin = fin.first().copied().ok_or_else(|| no_result(&kb))?;
    sp.state.store(&mut kb, fs, hd.bh, hd.v0, fin)?;
    let grid = [Count::Dim(sp.h), Count::Dim(sp.b), sp.blocks()];
    lw.launch(kb.finish()?, grid, bind.args)
}

/// Split: UT transform in parallel, states in order, outputs in parallel.
fn split(lw: &mut Lowering, sp: &Spec) -> Result<(), LowerError> {
    let w_buf = lw.scratch(&format!("{}_w", sp.prefix), sp.act_shape(sp.dk));
    let u_buf = lw.scratch(&format!("{}_u", sp.prefix), sp.act_shape(sp.dv));
    let vn_buf = lw.scratch(&format!("{}_v_new", sp.prefix), sp.act_shape(sp.dv));
    let states_shape =
        vec![Count::Dim(sp.b), Count::Dim(sp.h), sp.chunks(), Count::Const(sp.state.dk), Count::Const(sp.state.dv)];
    let states_buf = lw.scratch(&format!("{}_chunk_states", sp.prefix), states_shape);
    let chunk_grid = [sp.chunks(), Count::Dim(sp.h), Count::Dim(sp.b)];

    // 1. Every chunk's W and U.
    let mut kb = KernelBuilder::new(&format!("{}_wy", sp.name));
    let mut bind = Binder::default();
    let k = sp.k.bind(lw, &mut kb, &mut bind, "k");
    let v = sp.v.bind(lw, &mut kb, &mut bind, "v");
    let g = sp.gate.map(|b| bind.ptr(&mut kb, "g", b));
    let beta = bind.ptr(&mut kb, "beta", sp.beta);
    let w_out = bind.ptr(&mut kb, "w", w_buf);
    let u_out = bind.ptr(&mut kb, "u", u_buf);
    let hd = head(&mut kb, &mut bind, sp, 1)?;
    let tri = Tri::new(&mut kb, sp.chunk)?;
    let n = kb.program_id(0)?;
    let rows = chunk_rows(&mut kb, sp, &hd, n)?;
    let kt = rows.load_src(&mut kb, &k, sp.dk, None, sp.dkp())?;
    let vt = rows.load_src(&mut kb, &v, sp.dv, None, sp.dvp())?;
    let bt = rows.load_scalar(&mut kb, beta)?;
    let gates = chunk_gates(&mut kb, &rows, g)?;
    let (w, u) = ut::wy(&mut kb, &tri, kt, vt, bt, gates.as_ref())?;
    rows.store(&mut kb, w_out, sp.dk, None, w)?;
    rows.store(&mut kb, u_out, sp.dv, None, u)?;
    lw.launch(kb.finish()?, chunk_grid.clone(), bind.args)?;

    // 2. The chunk-start states, in order, and V'.
    let mut kb = KernelBuilder::new(&format!("{}_states", sp.name));
    let mut bind = Binder::default();
    let k = sp.k.bind(lw, &mut kb, &mut bind, "k");
    let g = sp.gate.map(|b| bind.ptr(&mut kb, "g", b));
    let w_in = bind.ptr(&mut kb, "w", w_buf);
    let u_in = bind.ptr(&mut kb, "u", u_buf);
    let s0 = sp.initial.map(|b| bind.ptr(&mut kb, "initial_state", b));
    let vn_out = bind.ptr(&mut kb, "v_new", vn_buf);
    let states = bind.ptr(&mut kb, "chunk_states", states_buf);
    let fs = bind.ptr(&mut kb, "final_state", sp.final_state);
    let hd = block_head(&mut kb, &mut bind, sp)?;
    let n_chunks = bind.size(&mut kb, "NC", sp.chunks())?;
    let s = initial_state(&mut kb, sp, s0, &hd)?;
    let first = kb.mul(hd.bh, n_chunks)?;
    let (lo, one, c) = (kb.i32(0)?, kb.i32(1)?, kb.i32(sp.chunk as i64)?);
    let fin = kb.for_loop(lo, n_chunks, one, &[s], |kb, n, carried| {
        let s = carried[0];
        let at = kb.add(first, n)?;
        sp.state.store(kb, states, at, hd.v0, s)?;
        let t0 = kb.mul(n, c)?;
        let rows = Rows::new(kb, &hd, t0, sp.chunk)?;
        let wt = rows.load(kb, w_in, sp.dk, None, sp.dkp())?;
        let ut_ = rows.load(kb, u_in, sp.dv, hd.v0, sp.bv())?;
        let vn = ut::v_new(kb, wt, ut_, s)?;
        rows.store(kb, vn_out, sp.dv, hd.v0, vn)?;
        let kt = rows.load_src(kb, &k, sp.dk, None, sp.dkp())?;
        let gates = chunk_gates(kb, &rows, g)?;
        Ok(vec![ut::advance(kb, kt, s, vn, gates.as_ref())?])
    })?;
    let fin = fin.first().copied().ok_or_else(|| no_result(&kb))?;
    sp.state.store(&mut kb, fs, hd.bh, hd.v0, fin)?;
    lw.launch(kb.finish()?, [Count::Dim(sp.h), Count::Dim(sp.b), sp.blocks()], bind.args)?;

    // 3. Every chunk's output.
    let mut kb = KernelBuilder::new(&format!("{}_output", sp.name));
    let mut bind = Binder::default();
    let q = sp.q.bind(lw, &mut kb, &mut bind, "q");
    let k = sp.k.bind(lw, &mut kb, &mut bind, "k");
    let g = sp.gate.map(|b| bind.ptr(&mut kb, "g", b));
    let vn_in = bind.ptr(&mut kb, "v_new", vn_buf);
    let states = bind.ptr(&mut kb, "chunk_states", states_buf);
    let o = bind.ptr(&mut kb, "o", sp.o);
    let mut hd = head(&mut kb, &mut bind, sp, 1)?;
    let n_chunks = bind.size(&mut kb, "NC", sp.chunks())?;
    let tri = Tri::new(&mut kb, sp.chunk)?;
    // Grid axis 0 is (chunk, value block), the blocks of a chunk side by side.
    let n = kb.program_id(0)?;
    let n = if sp.vb.split() {
        let blocks = kb.i32(sp.vb.blocks as i64)?;
        let block = kb.binary(BinaryFn::Rem, n, blocks)?;
        hd.v0 = Some(first_column(&mut kb, sp, block)?);
        kb.binary(BinaryFn::FloorDiv, n, blocks)?
    } else {
        n
    };
    let rows = chunk_rows(&mut kb, sp, &hd, n)?;
    let at = kb.mul(hd.bh, n_chunks)?;
    let at = kb.add(at, n)?;
    let s = sp.state.load(&mut kb, states, at, hd.v0)?;
    let qt = rows.load_src(&mut kb, &q, sp.dk, None, sp.dkp())?;
    let kt = rows.load_src(&mut kb, &k, sp.dk, None, sp.dkp())?;
    let vn = rows.load(&mut kb, vn_in, sp.dv, hd.v0, sp.bv())?;
    let gates = chunk_gates(&mut kb, &rows, g)?;
    let ot = ut::output(&mut kb, &tri, qt, kt, s, vn, gates.as_ref(), sp.scale)?;
    rows.store(&mut kb, o, sp.dv, hd.v0, ot)?;
    let grid = if sp.vb.split() {
        [Count::times(sp.chunks(), sp.blocks()), Count::Dim(sp.h), Count::Dim(sp.b)]
    } else {
        chunk_grid
    };
    lw.launch(kb.finish()?, grid, bind.args)
}

/// The rows of chunk `n`.
fn chunk_rows(kb: &mut KernelBuilder, sp: &Spec, hd: &Head, n: TValue) -> Res<Rows> {
    let c = kb.i32(sp.chunk as i64)?;
    let t0 = kb.mul(n, c)?;
    Rows::new(kb, hd, t0, sp.chunk)
}

fn no_result(kb: &KernelBuilder) -> LowerError {
    LowerError::Tile(mixc_ir::tile::TileError::Kernel {
        kernel: kb.kernel().name.clone(),
        msg: "the chunk loop has no result".into(),
    })
}
