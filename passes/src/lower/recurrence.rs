//! Chunked diagonal-gated recurrences (linear attention with or without its
//! normalizer, RetNet / simple GLA / Mamba2 scalar decays, GLA key-wise
//! decays) and mLSTM with its chunked stabilizer.
//!
//! Per chunk of `c` rows (MIXERS.md): the inter-chunk output `(sQ ⊙ e^Γ) S₀`,
//! the intra-chunk output `P V` with `P_ij = s Σ_d q_id k_jd e^(Γ_id − Γ_jd)`
//! for `j ≤ i`, and the state passing `S_c = e^Γ_c ⊙ S₀ + (K ⊙ e^(Γ_c − Γ))ᵀ V`.
//! Every exponent is kept ≤ 0: scalar gates scale the `[c, c]` score matrix;
//! key-wise gates go through 16-wide sub-chunks, factoring through the gate at
//! the end of the key sub-chunk, with the diagonal sub-blocks elementwise.
//!
//! Fused: one program per (batch, head) walks the chunks with the state on
//! chip. Split: a first kernel walks the chunks writing each chunk-start state
//! to scratch, a second computes every chunk's output in parallel. Scan
//! (`Schedule::scan`, diagonal transitions): split's walk in two kernels, one
//! program per chunk writing the chunk's own contribution to the state and
//! its total gate, then a walk that only adds them up (`scan_chunk`).
//! Step (`Schedule::step`): one program per (batch, head) walks the tokens,
//! `Schedule::step_tokens` of them per iteration (see `token_steps`).
//!
//! Under `Schedule::block_v`, every kernel runs one program per value block
//! as well: `o[:, j]` and the state's column `S[:, j]` need only `v[:, j]`,
//! so a program loads and stores its block of `v`, `o`, the states and the
//! chunk-start states, and recomputes what does not involve `v` (the scores,
//! the gates, the normalizer `z` or `n` and mLSTM's stabilizer `m`, which
//! only the first block writes out).
//!
//! `q`, `k`, `v` come from their buffers or, where the schedule fuses a short
//! convolution in front of them, are computed as they are loaded (every form,
//! see `conv_prologue`).

use super::conv_prologue::{self, At, Input, Src};
use super::generic::{self, Recipe, Space};
use super::util::{cols_from, pad16, rows, Binder, ValueBlocks};
use super::{LowerError, Lowering};
use mixc_ir::dims::DimId;
use mixc_ir::graph::OpNode;
use mixc_ir::ops::{Recurrence, ReduceFn, Transition, UnaryFn};
use mixc_ir::tile::{Count, KernelBuilder, ParamId, TValue, TileError};

mod rows;

type Res<T> = Result<T, TileError>;

/// Which kernel of a schedule is being built.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Fused,
    States,
    /// Scan, first kernel: each chunk's own state contribution.
    Deltas,
    /// Scan, second kernel: the chunk-start states from the contributions.
    Scan,
    Outputs,
    /// Token by token: the decode-step form.
    Step,
}

/// Shapes and flags of one recurrence.
#[derive(Clone, Copy)]
struct Shape {
    r: Recurrence,
    dk: u64,
    dv: u64,
    dkp: u32,
    /// Value columns per program (`vb.width`): the width of `v`, `o` and `S` tiles.
    bv: u32,
    vb: ValueBlocks,
    c: u32,
    sub: u32,
    /// Tokens per iteration of the step form (`Schedule::step_tokens`).
    tokens: u32,
    /// GLA's diagonal blocks from running decay products (`Schedule::decay_products`).
    products: bool,
    /// Rows of the state per block of the step form (`Schedule::state_rows`;
    /// 0: the whole state at once).
    rows: u32,
    /// Step kernels' value blocks on grid axis 0 (`Schedule::blocks_first`).
    blocks_first: bool,
}

/// Whether `variant`'s kernel puts its value blocks on grid axis 0 and the
/// (batch, head)s on axis 1 (`Schedule::blocks_first`: a step kernel in
/// value blocks).
fn blocks_first(sh: Shape, variant: Variant) -> bool {
    sh.blocks_first && variant == Variant::Step && sh.vb.split()
}

/// Parameters and per-program scalars of a recurrence kernel.
struct Ctx {
    /// `q`, `k`, `v`: buffers, or computed on chip from a short convolution's input.
    q: Src,
    k: Src,
    v: Src,
    gate: Option<Gate>,
    igate: Option<ParamId>,
    fgate: Option<ParamId>,
    s0: Option<ParamId>,
    aux0: Option<ParamId>,
    m0: Option<ParamId>,
    o: Option<ParamId>,
    s_out: Option<ParamId>,
    aux_out: Option<ParamId>,
    m_out: Option<ParamId>,
    scratch_s: Option<ParamId>,
    scratch_aux: Option<ParamId>,
    scratch_m: Option<ParamId>,
    /// Scan: each chunk's state contribution, its normalizer's, its total gate.
    scratch_ds: Option<ParamId>,
    scratch_daux: Option<ParamId>,
    scratch_g: Option<ParamId>,
    t_len: TValue,
    h: TValue,
    bh: TValue,
    /// The first value column of this program (`None`: all of them, from 0).
    v0: Option<TValue>,
    /// Whether this program writes what every value block computes alike
    /// (the normalizer, `m`): the first block (`None`: the only one).
    first_block: Option<TValue>,
    /// This program's batch entry and head.
    b: TValue,
    hh: TValue,
    /// Offset of (b, t = 0, h, 0) in a `[B, T, H, Dk]` tensor, in rows of `H·Dk`.
    row0: TValue,
    hdk: TValue,
    hdv: TValue,
}

/// Where a recurrence's gate comes from: its buffer, or computed as it is
/// loaded from the values its activation reads (`generic::ew::recurrence_gates`:
/// GLA's `logsigmoid(g) / τ` without a kernel of its own).
enum Gate {
    Buffer(ParamId),
    Computed(Recipe, Vec<ParamId>),
}

/// The gate at `offs` (where `mask` holds; 0 elsewhere: no decay).
fn load_gate(kb: &mut KernelBuilder, ctx: &Ctx, offs: TValue, mask: TValue) -> Res<TValue> {
    match ctx.gate.as_ref().ok_or_else(missing)? {
        Gate::Buffer(p) => kb.load(*p, offs, Some(mask), 0.0),
        Gate::Computed(recipe, leaves) => {
            let sp = Space { flat: offs, mask, idx: Vec::new() };
            let mut leaf = |kb: &mut KernelBuilder, i: usize| -> Res<TValue> {
                let p = leaves.get(i).copied().ok_or_else(missing)?;
                kb.load(p, offs, Some(mask), 0.0)
            };
            let g = recipe.emit(kb, &sp, &mut leaf)?;
            let zero = kb.f32(0.0)?;
            kb.select(mask, g, zero)
        }
    }
}

/// The carried state: `S [dkp, bv]` (this program's value columns), the
/// normalizer (`n` or `z`, `[dkp, 1]`), `m [1, 1]`.
#[derive(Clone, Copy)]
struct State {
    s: TValue,
    aux: Option<TValue>,
    m: Option<TValue>,
}

impl State {
    fn values(&self) -> Vec<TValue> {
        [Some(self.s), self.aux, self.m].into_iter().flatten().collect()
    }
    fn from(values: &[TValue], like: &State) -> State {
        let mut it = values.iter().copied();
        let s = it.next().unwrap_or(like.s);
        let aux = like.aux.and_then(|_| it.next());
        let m = like.m.and_then(|_| it.next());
        State { s, aux, m }
    }
}

fn has_aux(r: &Recurrence) -> bool {
    r.normalize || r.transition == Transition::Mlstm
}

pub fn lower(lw: &mut Lowering, op: &OpNode, r: &Recurrence) -> Result<(), LowerError> {
    let g = lw.g;
    let roles = op.kind.operand_roles(op.operands.len());
    let operand = |role: &str| roles.iter().position(|x| x == role).map(|i| op.operands[i]);
    let q = op.operands[0];
    let qshape = &g.ty(q).shape;
    let vshape = &g.ty(op.operands[2]).shape;
    let (Some(dk), Some(dv)) = (lw.const_dim(qshape[3]), lw.const_dim(vshape[3])) else {
        return Err(lw.err(op, "head dims must be constants"));
    };
    let c = lw.sched.chunk;
    let acts = [Input::of(lw, q), Input::of(lw, op.operands[1]), Input::of(lw, op.operands[2])];
    // A `v` computed by a prologue that normalizes its rows is not split.
    let block_v = if acts[2].column_local() { lw.sched.block_v } else { 0 };
    let vb = ValueBlocks::new(dv, block_v);
    let shape = Shape {
        r: *r,
        dk,
        dv,
        dkp: pad16(dk),
        bv: vb.width,
        vb,
        c,
        sub: lw.sched.sub_chunk.min(c),
        tokens: lw.sched.step_tokens.max(1),
        products: lw.sched.decay_products,
        rows: 0,
        blocks_first: lw.sched.blocks_first,
    };
    let shape = Shape { rows: rows::block_rows(&lw.sched, &shape, &acts), ..shape };
    let (b_dim, t_dim, h_dim) = (qshape[0], qshape[1], qshape[2]);
    let bh = Count::times(Count::Dim(b_dim), Count::Dim(h_dim));
    let nchunks = Count::ceil_div(Count::Dim(t_dim), c as u64);

    let mut ins: Vec<(&str, usize)> = Vec::new();
    let mut gate_from = None;
    for role in ["gate", "igate", "fgate", "beta", "initial_state", "initial_n", "initial_z", "initial_m"] {
        let Some(v) = operand(role) else { continue };
        match lw.inlined(v) {
            // A gate computed as it is loaded: the values its activation reads.
            Some(producer) if role == "gate" => {
                let mut leaves = Vec::new();
                generic::leaves(lw, v, &mut leaves);
                let bufs: Vec<usize> = leaves
                    .iter()
                    .map(|&x| {
                        lw.input_buffer(x);
                        lw.buffer(x)
                    })
                    .collect();
                gate_from = Some((producer, leaves, bufs));
            }
            _ => ins.push((role, lw.buffer(v))),
        }
    }
    let outs: Vec<usize> = op.results.iter().map(|v| lw.buffer(*v)).collect();
    let name = g.value(op.results[0]).name.clone();

    // mLSTM's stabilizer makes its state pass no linear scan: split's walk.
    let scan = lw.sched.scan && r.transition != Transition::Mlstm;
    let variants: Vec<Variant> = if lw.sched.step {
        vec![Variant::Step]
    } else if lw.sched.split && scan {
        vec![Variant::Deltas, Variant::Scan, Variant::Outputs]
    } else if lw.sched.split {
        vec![Variant::States, Variant::Outputs]
    } else {
        vec![Variant::Fused]
    };
    let scratch = if lw.sched.split && !lw.sched.step {
        let states =
            vec![bh.clone(), nchunks.clone(), Count::Const(shape.dkp as u64), Count::Const(vb.padded() as u64)];
        let norms = vec![bh.clone(), nchunks.clone(), Count::Const(shape.dkp as u64)];
        let s = lw.scratch(&format!("{name}_chunk_states"), states.clone());
        let aux = has_aux(r).then(|| lw.scratch(&format!("{name}_chunk_norms"), norms.clone()));
        let m = (r.transition == Transition::Mlstm)
            .then(|| lw.scratch(&format!("{name}_chunk_max"), vec![bh.clone(), nchunks.clone()]));
        let deltas = scan.then(|| {
            let ds = lw.scratch(&format!("{name}_chunk_deltas"), states);
            let daux = has_aux(r).then(|| lw.scratch(&format!("{name}_chunk_norm_deltas"), norms));
            // The chunk's total gate: a row per key dim (GLA), one value (scalar decays).
            let width = match r.transition {
                Transition::KeyDecay => Some(shape.dkp as u64),
                Transition::ScalarDecay => Some(1),
                _ => None,
            };
            let g = width.map(|w| {
                lw.scratch(&format!("{name}_chunk_gates"), vec![bh.clone(), nchunks.clone(), Count::Const(w)])
            });
            (ds, daux, g)
        });
        Some(Scratch { s, aux, m, deltas })
    } else {
        None
    };
    let bufs = Bufs { acts, ins, gate_from, outs, scratch, t: t_dim, h: h_dim };
    for variant in variants {
        let mut kb = KernelBuilder::new(&format!("{name}_{}", variant_name(variant)));
        let mut bind = Binder::default();
        let ctx = params(lw, &mut kb, &mut bind, shape, variant, &bufs)?;
        body(&mut kb, &ctx, shape, variant)?;
        let blocks = Count::Const(vb.blocks as u64);
        let grid = match variant {
            Variant::Step if blocks_first(shape, variant) => [blocks, bh.clone(), Count::Const(1)],
            Variant::Outputs | Variant::Deltas => [nchunks.clone(), bh.clone(), blocks],
            Variant::Scan => [bh.clone(), blocks, Count::Const(u64::from(shape.dkp / scan_rows(shape.dkp)))],
            _ => [bh.clone(), blocks, Count::Const(1)],
        };
        lw.launch(kb.finish()?, grid, bind.args)?;
    }
    Ok(())
}

/// The buffers a recurrence's kernels bind.
struct Bufs<'a> {
    acts: [Input; 3],
    ins: Vec<(&'a str, usize)>,
    /// A gate computed as it is loaded: its producer, the values it reads and their buffers.
    gate_from: Option<(&'a OpNode, Vec<mixc_ir::graph::ValueId>, Vec<usize>)>,
    outs: Vec<usize>,
    scratch: Option<Scratch>,
    t: DimId,
    h: DimId,
}

/// Scratch buffers of the split forms: chunk-start states, normalizers and
/// stabilizers; under a scan also each chunk's contributions and total gates.
#[derive(Clone, Copy)]
struct Scratch {
    s: usize,
    aux: Option<usize>,
    m: Option<usize>,
    deltas: Option<(usize, Option<usize>, Option<usize>)>,
}

fn variant_name(v: Variant) -> &'static str {
    match v {
        Variant::Fused => "fused",
        Variant::States => "states",
        Variant::Deltas => "deltas",
        Variant::Scan => "scan",
        Variant::Outputs => "outputs",
        Variant::Step => "step",
    }
}

/// Declares a kernel's parameters, binding each to its buffer or size.
fn params(
    lw: &mut Lowering,
    kb: &mut KernelBuilder,
    bind: &mut Binder,
    sh: Shape,
    variant: Variant,
    bufs: &Bufs,
) -> Result<Ctx, LowerError> {
    let q = bufs.acts[0].bind(lw, kb, bind, "q");
    let k = bufs.acts[1].bind(lw, kb, bind, "k");
    let v = bufs.acts[2].bind(lw, kb, bind, "v");
    let gate = match &bufs.gate_from {
        Some((producer, leaves, leaf_bufs)) => {
            let recipe = Recipe::of(lw, producer, leaves)
                .ok_or_else(|| LowerError::Tile(TileError::Program("a gate that is not elementwise".into())))?;
            let mut ptrs = Vec::with_capacity(leaves.len());
            for (v, b) in leaves.iter().zip(leaf_bufs) {
                let name = format!("gate_{}", lw.g.value(*v).name);
                ptrs.push(bind.ptr(kb, &name, *b));
            }
            Some(Gate::Computed(recipe, ptrs))
        }
        None => bufs.ins.iter().find(|(n, _)| *n == "gate").map(|(_, b)| Gate::Buffer(bind.ptr(kb, "gate", *b))),
    };
    let mut p = |kb: &mut KernelBuilder, role: &str| -> Option<ParamId> {
        bufs.ins.iter().find(|(n, _)| *n == role).map(|(_, b)| bind.ptr(kb, role, *b))
    };
    let igate = p(kb, "igate");
    let fgate = p(kb, "fgate");
    let s0 = p(kb, "initial_state");
    let aux0 = p(kb, "initial_n").or_else(|| p(kb, "initial_z"));
    let m0 = p(kb, "initial_m");
    let mlstm = sh.r.transition == Transition::Mlstm;
    let out = |i: usize| {
        bufs.outs.get(i).copied().ok_or_else(|| LowerError::Tile(TileError::Program(format!("no result {i}"))))
    };
    let writes_o = matches!(variant, Variant::Fused | Variant::Outputs | Variant::Step);
    let o = if writes_o { Some(bind.ptr(kb, "o", out(0)?)) } else { None };
    let (mut s_out, mut aux_out, mut m_out) = (None, None, None);
    if matches!(variant, Variant::Fused | Variant::States | Variant::Scan | Variant::Step) {
        s_out = Some(bind.ptr(kb, "final_state", out(1)?));
        if has_aux(&sh.r) {
            aux_out = Some(bind.ptr(kb, "final_norm", out(2)?));
        }
        if mlstm {
            m_out = Some(bind.ptr(kb, "final_m", out(3)?));
        }
    }
    let (mut scratch_s, mut scratch_aux, mut scratch_m) = (None, None, None);
    let (mut scratch_ds, mut scratch_daux, mut scratch_g) = (None, None, None);
    if let Some(sc) = bufs.scratch {
        if matches!(variant, Variant::States | Variant::Scan | Variant::Outputs) {
            scratch_s = Some(bind.ptr(kb, "chunk_states", sc.s));
            scratch_aux = sc.aux.map(|b| bind.ptr(kb, "chunk_norms", b));
            scratch_m = sc.m.map(|b| bind.ptr(kb, "chunk_max", b));
        }
        if let (Variant::Deltas | Variant::Scan, Some((ds, daux, g))) = (variant, sc.deltas) {
            scratch_ds = Some(bind.ptr(kb, "chunk_deltas", ds));
            scratch_daux = daux.map(|b| bind.ptr(kb, "chunk_norm_deltas", b));
            scratch_g = g.map(|b| bind.ptr(kb, "chunk_gates", b));
        }
    }
    let t_len = bind.size(kb, "T", Count::Dim(bufs.t))?;
    let h = bind.size(kb, "H", Count::Dim(bufs.h))?;
    // Programs per chunk (grid axis 0) put (batch, head) on axis 1, and so
    // do step kernels with their value blocks first ([`blocks_first`]).
    let per_chunk = matches!(variant, Variant::Outputs | Variant::Deltas);
    let blocks_first = blocks_first(sh, variant);
    let axis = if per_chunk || blocks_first { 1 } else { 0 };
    let bh = kb.program_id(axis)?;
    // (b, h) → offset of row (b, 0, h) in rows of one head: b·T·H + h.
    let b = kb.binary(mixc_ir::ops::BinaryFn::FloorDiv, bh, h)?;
    let hh = kb.binary(mixc_ir::ops::BinaryFn::Rem, bh, h)?;
    let bt = kb.mul(b, t_len)?;
    let bth = kb.mul(bt, h)?;
    let row0 = kb.add(bth, hh)?;
    let dkc = kb.i32(sh.dk as i64)?;
    let dvc = kb.i32(sh.dv as i64)?;
    let hdk = kb.mul(h, dkc)?;
    let hdv = kb.mul(h, dvc)?;
    // The value block: grid axis 2 of the output kernel, 0 of a step kernel
    // with its blocks first, axis 1 of the others.
    let (v0, first_block) = if sh.vb.split() {
        let vb = kb.program_id(if per_chunk {
            2
        } else if blocks_first {
            0
        } else {
            1
        })?;
        let width = kb.i32(sh.bv as i64)?;
        let zero = kb.i32(0)?;
        (Some(kb.mul(vb, width)?), Some(kb.binary(mixc_ir::ops::BinaryFn::Eq, vb, zero)?))
    } else {
        (None, None)
    };
    Ok(Ctx {
        q,
        k,
        v,
        gate,
        igate,
        fgate,
        s0,
        aux0,
        m0,
        o,
        s_out,
        aux_out,
        m_out,
        scratch_s,
        scratch_aux,
        scratch_m,
        scratch_ds,
        scratch_daux,
        scratch_g,
        t_len,
        h,
        bh,
        v0,
        first_block,
        b,
        hh,
        row0,
        hdk,
        hdv,
    })
}

/// Offsets and mask of a `[n, width]` tile of a `[B, T, H, D]` tensor starting
/// at row `t0` and column `col0` (0 when `None`).
#[allow(clippy::too_many_arguments)]
fn act_tile(
    kb: &mut KernelBuilder,
    ctx: &Ctx,
    t0: TValue,
    n: u32,
    col0: Option<TValue>,
    width: u32,
    d: u64,
    hd: TValue,
) -> Res<(TValue, TValue)> {
    let (r, rm) = rows(kb, t0, n, ctx.t_len)?;
    let (cidx, cm) = cols_from(kb, col0, width, d)?;
    // ((b·T + t)·H + h)·D + col = (row0 + t·H)·D + col
    let dconst = kb.i32(d as i64)?;
    let base = kb.mul(ctx.row0, dconst)?;
    let roff = kb.mul(r, hd)?;
    let roff = kb.add(roff, base)?;
    let offs = kb.add(roff, cidx)?;
    let mask = kb.and(rm, cm)?;
    Ok((offs, mask))
}

/// Offsets and mask of a `[n, 1]` column of a per-step `[B, T, H]` tensor.
fn step_col(kb: &mut KernelBuilder, ctx: &Ctx, t0: TValue, n: u32) -> Res<(TValue, TValue)> {
    let (r, rm) = rows(kb, t0, n, ctx.t_len)?;
    let roff = kb.mul(r, ctx.h)?;
    let offs = kb.add(roff, ctx.row0)?;
    Ok((offs, rm))
}

/// Offsets and mask of the state `[dkp, bv]` of program (b, h) (its value
/// block's columns) in a `[B, H, Dk, Dv]` tensor.
fn state_tile(kb: &mut KernelBuilder, ctx: &Ctx, sh: Shape) -> Res<(TValue, TValue)> {
    let zero = kb.i32(0)?;
    let t = state_rows(kb, ctx, sh, zero, sh.dkp)?;
    Ok((t.offs, t.mask))
}

/// Rows `r0 .. r0 + n` of program (b, h)'s state in a `[B, H, Dk, Dv]`
/// tensor, at its value block's columns.
struct StateRows {
    /// The rows (`[n, 1]`) and which are inside `Dk`.
    r: TValue,
    rmask: TValue,
    /// The columns (`[1, bv]`).
    cols: TValue,
    /// `[n, bv]` offsets and mask.
    offs: TValue,
    mask: TValue,
}

fn state_rows(kb: &mut KernelBuilder, ctx: &Ctx, sh: Shape, r0: TValue, n: u32) -> Res<StateRows> {
    let dkc = kb.i32(sh.dk as i64)?;
    let (r, rmask) = rows(kb, r0, n, dkc)?;
    let (cols, cm) = cols_from(kb, ctx.v0, sh.bv, sh.dv)?;
    let per = kb.i32((sh.dk * sh.dv) as i64)?;
    let base = kb.mul(ctx.bh, per)?;
    let dvc = kb.i32(sh.dv as i64)?;
    let roff = kb.mul(r, dvc)?;
    let roff = kb.add(roff, base)?;
    let offs = kb.add(roff, cols)?;
    let mask = kb.and(rmask, cm)?;
    Ok(StateRows { r, rmask, cols, offs, mask })
}

/// Offsets and mask of a normalizer `[dkp, 1]` in a `[B, H, Dk]` tensor.
fn norm_tile(kb: &mut KernelBuilder, ctx: &Ctx, sh: Shape) -> Res<(TValue, TValue)> {
    let dkc = kb.i32(sh.dk as i64)?;
    let base = kb.mul(ctx.bh, dkc)?;
    rows(kb, base, sh.dkp, dkc).and_then(|(r, _)| {
        let zero = kb.i32(0)?;
        let (_, m) = rows(kb, zero, sh.dkp, dkc)?;
        Ok((r, m))
    })
}

/// Scratch offsets of chunk `ci`'s chunk-start state, `[dkp, bv]`: the matrix
/// `(bh·NC + ci)` of `[dkp, W]` ones, `W` the padded width of every value
/// block's columns (so no column needs a mask), at this program's columns.
fn scratch_state_offsets(kb: &mut KernelBuilder, ctx: &Ctx, sh: Shape, ci: TValue) -> Res<TValue> {
    let w = sh.vb.padded();
    let r = scratch_offsets(kb, ctx, sh, ci, sh.dkp, w)?;
    let c = kb.arange(sh.bv)?;
    let c = kb.expand(c, 0)?;
    let r = kb.add(r, c)?;
    match ctx.v0 {
        Some(v0) => kb.add(r, v0),
        None => Ok(r),
    }
}

/// Scratch offsets `[(bh·NC + ci)·rows_n·stride + r·stride]` (`[rows_n, 1]`) of
/// the rows of chunk `ci`'s matrix of `rows_n` rows of `stride` elements.
fn scratch_offsets(kb: &mut KernelBuilder, ctx: &Ctx, sh: Shape, ci: TValue, rows_n: u32, stride: u32) -> Res<TValue> {
    let r = kb.arange(rows_n)?;
    let r = kb.expand(r, 1)?;
    scratch_at(kb, ctx, sh, ci, r, rows_n, stride)
}

/// [`scratch_offsets`] at the rows `r` (`[n, 1]`) only.
fn scratch_at(
    kb: &mut KernelBuilder,
    ctx: &Ctx,
    sh: Shape,
    ci: TValue,
    r: TValue,
    rows_n: u32,
    stride: u32,
) -> Res<TValue> {
    let cc = kb.i32(sh.c as i64)?;
    let cm1 = kb.i32(sh.c as i64 - 1)?;
    let tt = kb.add(ctx.t_len, cm1)?;
    let nc = kb.binary(mixc_ir::ops::BinaryFn::FloorDiv, tt, cc)?;
    let slot = kb.mul(ctx.bh, nc)?;
    let slot = kb.add(slot, ci)?;
    let per = kb.i32((rows_n * stride) as i64)?;
    let base = kb.mul(slot, per)?;
    let colsc = kb.i32(stride as i64)?;
    let r = kb.mul(r, colsc)?;
    kb.add(r, base)
}

fn body(kb: &mut KernelBuilder, ctx: &Ctx, sh: Shape, variant: Variant) -> Res<()> {
    let zero_i = kb.i32(0)?;
    let step = kb.i32(sh.c as i64)?;
    if variant == Variant::Outputs {
        // One chunk: its start state comes from scratch.
        let ci = kb.program_id(0)?;
        let t0 = kb.mul(ci, step)?;
        let offs = scratch_state_offsets(kb, ctx, sh, ci)?;
        let s = kb.load(ctx.scratch_s.ok_or_else(missing)?, offs, None, 0.0)?;
        let aux = match ctx.scratch_aux {
            Some(p) => {
                let offs = scratch_offsets(kb, ctx, sh, ci, sh.dkp, 1)?;
                Some(kb.load(p, offs, None, 0.0)?)
            }
            None => None,
        };
        let m = match ctx.scratch_m {
            Some(p) => {
                let offs = scratch_offsets(kb, ctx, sh, ci, 1, 1)?;
                Some(kb.load(p, offs, None, 0.0)?)
            }
            None => None,
        };
        let st = State { s, aux, m };
        return chunk_outputs(kb, ctx, sh, t0, st);
    }
    if variant == Variant::Deltas {
        return chunk_deltas(kb, ctx, sh);
    }
    if variant == Variant::Scan {
        return scan(kb, ctx, sh);
    }
    if variant == Variant::Step && sh.rows > 0 {
        return rows::body(kb, ctx, sh);
    }
    // Initial state (zeros when absent).
    let (soffs, smask) = state_tile(kb, ctx, sh)?;
    let s = match ctx.s0 {
        Some(p) => kb.load(p, soffs, Some(smask), 0.0)?,
        None => kb.zeros(&[sh.dkp, sh.bv])?,
    };
    let (noffs, nmask) = norm_tile(kb, ctx, sh)?;
    let aux = if has_aux(&sh.r) {
        Some(match ctx.aux0 {
            Some(p) => kb.load(p, noffs, Some(nmask), 0.0)?,
            None => kb.zeros(&[sh.dkp, 1])?,
        })
    } else {
        None
    };
    let m = initial_m(kb, ctx, sh)?;
    let init = State { s, aux, m };
    let step = if variant == Variant::Step { kb.i32(sh.tokens as i64)? } else { step };
    let finals = kb.for_loop(zero_i, ctx.t_len, step, &init.values(), |kb, t0, carried| {
        let st = State::from(carried, &init);
        if variant == Variant::Step {
            return Ok(token_steps(kb, ctx, sh, t0, st)?.values());
        }
        if variant == Variant::States {
            let cc = kb.i32(sh.c as i64)?;
            let ci = kb.binary(mixc_ir::ops::BinaryFn::FloorDiv, t0, cc)?;
            let offs = scratch_state_offsets(kb, ctx, sh, ci)?;
            kb.store(ctx.scratch_s.ok_or_else(missing)?, offs, st.s, None)?;
            if let (Some(p), Some(a)) = (ctx.scratch_aux, st.aux) {
                let offs = scratch_offsets(kb, ctx, sh, ci, sh.dkp, 1)?;
                let mask = first_only(kb, ctx, None, &[sh.dkp, 1])?;
                kb.store(p, offs, a, mask)?;
            }
            if let (Some(p), Some(m)) = (ctx.scratch_m, st.m) {
                let offs = scratch_offsets(kb, ctx, sh, ci, 1, 1)?;
                let mask = first_only(kb, ctx, None, &[1, 1])?;
                kb.store(p, offs, m, mask)?;
            }
        } else {
            chunk_outputs(kb, ctx, sh, t0, st)?;
        }
        Ok(chunk_update(kb, ctx, sh, t0, st)?.values())
    })?;
    let fin = State::from(&finals, &init);
    kb.store(ctx.s_out.ok_or_else(missing)?, soffs, fin.s, Some(smask))?;
    if let (Some(p), Some(a)) = (ctx.aux_out, fin.aux) {
        let mask = first_only(kb, ctx, Some(nmask), &[sh.dkp, 1])?;
        kb.store(p, noffs, a, mask)?;
    }
    store_m(kb, ctx, fin.m)
}

/// mLSTM's stabilizer `[1, 1]` entering the first token: the initial one, or
/// 0 (`None` for the other transitions).
fn initial_m(kb: &mut KernelBuilder, ctx: &Ctx, sh: Shape) -> Res<Option<TValue>> {
    if sh.r.transition != Transition::Mlstm {
        return Ok(None);
    }
    Ok(Some(match ctx.m0 {
        Some(p) => {
            let o = kb.reshape(ctx.bh, &[1, 1])?;
            kb.load(p, o, None, 0.0)?
        }
        None => kb.zeros(&[1, 1])?,
    }))
}

/// Stores the final stabilizer `m` (mLSTM; nothing else has one), from the
/// first value block only.
fn store_m(kb: &mut KernelBuilder, ctx: &Ctx, m: Option<TValue>) -> Res<()> {
    if let (Some(p), Some(m)) = (ctx.m_out, m) {
        let o = kb.reshape(ctx.bh, &[1, 1])?;
        let mask = first_only(kb, ctx, None, &[1, 1])?;
        kb.store(p, o, m, mask)?;
    }
    Ok(())
}

/// A store's mask restricted to the first value block, for what every block
/// computes alike (`mask` as is where the columns are not split).
fn first_only(kb: &mut KernelBuilder, ctx: &Ctx, mask: Option<TValue>, shape: &[u32]) -> Res<Option<TValue>> {
    let Some(first) = ctx.first_block else { return Ok(mask) };
    Ok(Some(match mask {
        Some(m) => kb.and(m, first)?,
        None => kb.broadcast(first, shape)?,
    }))
}

fn missing() -> TileError {
    TileError::Program("recurrence kernel is missing a parameter".into())
}

/// The tiles of one chunk: `Q` (scaled), `K`, `V`, the masks, and the gates.
struct ChunkTiles {
    q: TValue,
    k: TValue,
    v: TValue,
    out_offs: TValue,
    out_mask: TValue,
    /// Scalar gates: `Γ [c, 1]` and `Γ_c [1, 1]`; key gates: `Γ [c, dkp]`, `Γ_c [1, dkp]`;
    /// mLSTM: `Γ` of `logσ(f)` `[c, 1]`, `Γ_c [1, 1]`.
    gamma: Option<(TValue, TValue)>,
    /// mLSTM input gate `[c, 1]` (−∞ past the end).
    igate: Option<TValue>,
}

fn load_chunk(kb: &mut KernelBuilder, ctx: &Ctx, sh: Shape, t0: TValue, n: u32) -> Res<ChunkTiles> {
    let (qoffs, qmask) = act_tile(kb, ctx, t0, n, None, sh.dkp, sh.dk, ctx.hdk)?;
    let (voffs, vmask) = act_tile(kb, ctx, t0, n, ctx.v0, sh.bv, sh.dv, ctx.hdv)?;
    let load = |kb: &mut KernelBuilder, src: &Src, offs, mask, col0: Option<TValue>, pad: u32| match src {
        Src::Buffer(p) => kb.load(*p, offs, Some(mask), 0.0),
        Src::Conv(bd) => {
            let at = At { b: ctx.b, h: ctx.hh, t_len: ctx.t_len };
            conv_prologue::load_block(kb, bd, &at, t0, n, col0, pad)
        }
    };
    let q = load(kb, &ctx.q, qoffs, qmask, None, sh.dkp)?;
    let scale = kb.f32(sh.r.scale)?;
    let q = kb.mul(q, scale)?;
    let k = load(kb, &ctx.k, qoffs, qmask, None, sh.dkp)?;
    let v = load(kb, &ctx.v, voffs, vmask, ctx.v0, sh.bv)?;
    let mut igate = None;
    let gamma = match sh.r.transition {
        Transition::Identity => None,
        Transition::ScalarDecay => {
            let (o, m) = step_col(kb, ctx, t0, n)?;
            let g = load_gate(kb, ctx, o, m)?;
            Some(cum(kb, g)?)
        }
        Transition::KeyDecay => {
            let g = load_gate(kb, ctx, qoffs, qmask)?;
            Some(cum(kb, g)?)
        }
        Transition::Mlstm => {
            let (o, m) = step_col(kb, ctx, t0, n)?;
            let f = kb.load(ctx.fgate.ok_or_else(missing)?, o, Some(m), f64::INFINITY)?;
            let lf = kb.unary(UnaryFn::LogSigmoid, f)?;
            igate = Some(kb.load(ctx.igate.ok_or_else(missing)?, o, Some(m), f64::NEG_INFINITY)?);
            Some(cum(kb, lf)?)
        }
        Transition::Delta | Transition::GatedDelta => {
            return Err(TileError::Program("delta rules have their own lowering".into()))
        }
    };
    Ok(ChunkTiles { q, k, v, out_offs: voffs, out_mask: vmask, gamma, igate })
}

/// `(cumsum(x, 0), its last row as [1, w])` for a `[n, w]` tile. The total is
/// read from the cumulative sum itself (rows past the end add zeros), so that
/// `Γ_c − Γ_last` is exactly 0 in f32 too: a separately rounded sum would put
/// an error of one ulp of |Γ_c| into every decay factor.
fn cum(kb: &mut KernelBuilder, x: TValue) -> Res<(TValue, TValue)> {
    let [n, w] = kb.ty(x).shape[..] else {
        return Err(TileError::Program("cumulative gates must be 2-D".into()));
    };
    if n == 1 {
        // One row (a token step): its own sum and total, without three passes over it.
        return Ok((x, x));
    }
    let c = kb.cumsum(x, 0)?;
    let r = kb.arange(n)?;
    let r = kb.expand(r, 1)?;
    let last = kb.i32(n as i64 - 1)?;
    let is_last = kb.binary(mixc_ir::ops::BinaryFn::Eq, r, last)?;
    let zero = kb.f32(0.0)?;
    let only = kb.select(is_last, c, zero)?;
    let total = kb.reduce(ReduceFn::Sum, only, 0)?;
    let total = kb.reshape(total, &[1, w])?;
    Ok((c, total))
}

/// `[n, n]` mask `j ≤ i`.
fn causal(kb: &mut KernelBuilder, n: u32) -> Res<TValue> {
    let i = kb.arange(n)?;
    let ii = kb.expand(i, 1)?;
    let jj = kb.expand(i, 0)?;
    kb.le(jj, ii)
}

/// `e^(a − b)` where `mask` holds, else 0 (the exponent is taken as ≤ 0 there).
fn masked_exp_diff(kb: &mut KernelBuilder, a: TValue, b: TValue, mask: TValue) -> Res<TValue> {
    let d = kb.sub(a, b)?;
    let zero = kb.f32(0.0)?;
    let d = kb.min(d, zero)?;
    let e = kb.exp(d)?;
    let z = kb.f32(0.0)?;
    kb.select(mask, e, z)
}

fn chunk_outputs(kb: &mut KernelBuilder, ctx: &Ctx, sh: Shape, t0: TValue, st: State) -> Res<()> {
    if sh.r.transition == Transition::KeyDecay {
        return key_decay_outputs(kb, ctx, sh, t0, st);
    }
    let ct = load_chunk(kb, ctx, sh, t0, sh.c)?;
    let cm = causal(kb, sh.c)?;
    let qk = kb.dot(ct.q, ct.k, None, false, true)?;
    let o = match sh.r.transition {
        Transition::Identity => {
            let z = kb.f32(0.0)?;
            let p = kb.select(cm, qk, z)?;
            let intra = kb.dot(p, ct.v, None, false, false)?;
            let o = kb.dot(ct.q, st.s, Some(intra), false, false)?;
            match st.aux {
                Some(zs) => {
                    // o = (sq)ᵀS / ((sq)ᵀz + ε)
                    let rs = kb.reduce(ReduceFn::Sum, p, 1)?;
                    let rs = kb.reshape(rs, &[sh.c, 1])?;
                    let den = kb.dot(ct.q, zs, Some(rs), false, false)?;
                    let eps = kb.f32(sh.r.eps)?;
                    let den = kb.add(den, eps)?;
                    kb.div(o, den)?
                }
                None => o,
            }
        }
        Transition::ScalarDecay => {
            let (gam, _) = ct.gamma.ok_or_else(missing)?;
            let gt = kb.reshape(gam, &[1, sh.c])?;
            let w = masked_exp_diff(kb, gam, gt, cm)?;
            let p = kb.mul(qk, w)?;
            let intra = kb.dot(p, ct.v, None, false, false)?;
            let eg = kb.exp(gam)?;
            let qd = kb.mul(ct.q, eg)?;
            kb.dot(qd, st.s, Some(intra), false, false)?
        }
        Transition::Mlstm => {
            let (gam, _) = ct.gamma.ok_or_else(missing)?;
            let ig = ct.igate.ok_or_else(missing)?;
            let m0 = st.m.ok_or_else(missing)?;
            let n0 = st.aux.ok_or_else(missing)?;
            // D_ij = Γ_i − Γ_j + ĩ_j for j ≤ i (−∞ elsewhere); m_i = max(m₀ + Γ_i, max_j D_ij).
            let gt = kb.reshape(gam, &[1, sh.c])?;
            let igt = kb.reshape(ig, &[1, sh.c])?;
            let d = kb.sub(gam, gt)?;
            let d = kb.add(d, igt)?;
            let ninf = kb.f32(f64::NEG_INFINITY)?;
            let d = kb.select(cm, d, ninf)?;
            let dmax = kb.reduce(ReduceFn::Max, d, 1)?;
            let dmax = kb.reshape(dmax, &[sh.c, 1])?;
            let inter_log = kb.add(m0, gam)?;
            let mrow = kb.max(inter_log, dmax)?;
            let dm = kb.sub(d, mrow)?;
            let w = kb.exp(dm)?;
            let p = kb.mul(qk, w)?;
            let il = kb.sub(inter_log, mrow)?;
            let inter_w = kb.exp(il)?;
            let intra = kb.dot(p, ct.v, None, false, false)?;
            let qs = kb.dot(ct.q, st.s, None, false, false)?;
            let qs = kb.mul(qs, inter_w)?;
            let num = kb.add(intra, qs)?;
            let rs = kb.reduce(ReduceFn::Sum, p, 1)?;
            let rs = kb.reshape(rs, &[sh.c, 1])?;
            let qn = kb.dot(ct.q, n0, None, false, false)?;
            let qn = kb.mul(qn, inter_w)?;
            let nq = kb.add(rs, qn)?;
            let nq = kb.unary(UnaryFn::Abs, nq)?;
            let negm = kb.unary(UnaryFn::Neg, mrow)?;
            let floor = kb.exp(negm)?;
            let den = kb.max(nq, floor)?;
            let eps = kb.f32(sh.r.eps)?;
            let den = kb.add(den, eps)?;
            kb.div(num, den)?
        }
        _ => return Err(missing()),
    };
    kb.store(ctx.o.ok_or_else(missing)?, ct.out_offs, o, Some(ct.out_mask))
}

/// GLA's intra-chunk work through sub-chunks: for key sub-chunk `J` before query
/// sub-chunk `I`, `P_IJ = (Q_I ⊙ e^(Γ_I − Γ_r)) (K_J ⊙ e^(Γ_r − Γ_J))ᵀ` with `r` the
/// last row of `J` (both exponents ≤ 0); the diagonal block elementwise.
fn key_decay_outputs(kb: &mut KernelBuilder, ctx: &Ctx, sh: Shape, t0: TValue, st: State) -> Res<()> {
    let sc = sh.sub;
    let nsub = kb.i32((sh.c / sc) as i64)?;
    let zero_i = kb.i32(0)?;
    let one_i = kb.i32(1)?;
    let scc = kb.i32(sc as i64)?;
    let prefix0 = kb.zeros(&[1, sh.dkp])?;
    kb.for_loop(zero_i, nsub, one_i, &[prefix0], |kb, si, carried| {
        let prefix_i = carried[0];
        let off = kb.mul(si, scc)?;
        let ti = kb.add(t0, off)?;
        let cq = load_chunk(kb, ctx, sh, ti, sc)?;
        let (gc, gsum) = cq.gamma.ok_or_else(missing)?;
        let gam_i = kb.add(gc, prefix_i)?;
        // Earlier key sub-chunks.
        let acc0 = kb.zeros(&[sc, sh.bv])?;
        let pj0 = kb.zeros(&[1, sh.dkp])?;
        let res = kb.for_loop(zero_i, si, one_i, &[acc0, pj0], |kb, sj, carried| {
            let (acc, prefix_j) = (carried[0], carried[1]);
            let offj = kb.mul(sj, scc)?;
            let tj = kb.add(t0, offj)?;
            let cj = load_chunk(kb, ctx, sh, tj, sc)?;
            let (gcj, gsumj) = cj.gamma.ok_or_else(missing)?;
            let gam_j = kb.add(gcj, prefix_j)?;
            let gam_r = kb.add(prefix_j, gsumj)?;
            let a = kb.sub(gam_i, gam_r)?;
            let a = kb.exp(a)?;
            let qa = kb.mul(cq.q, a)?;
            let b = kb.sub(gam_r, gam_j)?;
            let b = kb.exp(b)?;
            let kbm = kb.mul(cj.k, b)?;
            let p = kb.dot(qa, kbm, None, false, true)?;
            let acc = kb.dot(p, cj.v, Some(acc), false, false)?;
            Ok(vec![acc, gam_r])
        })?;
        let acc = res[0];
        let p = if sh.products {
            diagonal_by_products(kb, ctx, sh, ti, cq.k)?
        } else {
            diagonal_by_exps(kb, sh, cq.q, cq.k, gam_i)?
        };
        let acc = kb.dot(p, cq.v, Some(acc), false, false)?;
        // The chunk-start state.
        let eg = kb.exp(gam_i)?;
        let qd = kb.mul(cq.q, eg)?;
        let o = kb.dot(qd, st.s, Some(acc), false, false)?;
        kb.store(ctx.o.ok_or_else(missing)?, cq.out_offs, o, Some(cq.out_mask))?;
        let next = kb.add(prefix_i, gsum)?;
        Ok(vec![next])
    })?;
    Ok(())
}

/// GLA's diagonal sub-chunk block, elementwise: `P_ij = Σ_d q_id k_jd
/// e^(Γ_id − Γ_jd)` for `j ≤ i` (0 above the diagonal), an exponential per
/// `(i, j, d)`.
fn diagonal_by_exps(kb: &mut KernelBuilder, sh: Shape, q: TValue, k: TValue, gam: TValue) -> Res<TValue> {
    let sc = sh.sub;
    let q3 = kb.reshape(q, &[sc, 1, sh.dkp])?;
    let k3 = kb.reshape(k, &[1, sc, sh.dkp])?;
    let gi3 = kb.reshape(gam, &[sc, 1, sh.dkp])?;
    let gj3 = kb.reshape(gam, &[1, sc, sh.dkp])?;
    let d = kb.sub(gi3, gj3)?;
    let zero = kb.f32(0.0)?;
    let d = kb.min(d, zero)?;
    let e = kb.exp(d)?;
    let qk = kb.mul(q3, k3)?;
    let t = kb.mul(qk, e)?;
    let p = kb.reduce(ReduceFn::Sum, t, 2)?;
    let cm = causal(kb, sc)?;
    let z = kb.f32(0.0)?;
    kb.select(cm, p, z)
}

/// The same block from running products of the decays
/// ([`Schedule::decay_products`]): row by row `i` of the sub-chunk starting
/// at token `t0`, `U_j ← U_j ⊙ e^(g_i)` for every row, then `U_i ← k_i`, so
/// that `U_j = k_j ⊙ e^(Γ_i − Γ_j)` for `j ≤ i`, and row `i` of `P` is
/// `U·q_i`. Rows `j > i` of `U` hold leftovers whose scores the causal
/// mask then selects away (a select, so not even an overflow there can
/// reach the output).
///
/// [`Schedule::decay_products`]: crate::Schedule::decay_products
fn diagonal_by_products(kb: &mut KernelBuilder, ctx: &Ctx, sh: Shape, t0: TValue, k: TValue) -> Res<TValue> {
    let sc = sh.sub;
    let rows = kb.arange(sc)?;
    let rows = kb.expand(rows, 1)?;
    let zero_i = kb.i32(0)?;
    let one_i = kb.i32(1)?;
    let n = kb.i32(sc as i64)?;
    let p0 = kb.zeros(&[sc, sc])?;
    let res = kb.for_loop(zero_i, n, one_i, &[k, p0], |kb, i, carried| {
        let (u, p) = (carried[0], carried[1]);
        let ti = kb.add(t0, i)?;
        let row = load_chunk(kb, ctx, sh, ti, 1)?;
        let (g, _) = row.gamma.ok_or_else(missing)?;
        let decay = kb.exp(g)?;
        let u = kb.mul(u, decay)?;
        let is_i = kb.binary(mixc_ir::ops::BinaryFn::Eq, rows, i)?;
        let u = kb.select(is_i, row.k, u)?;
        let t = kb.mul(u, row.q)?;
        let s = kb.reduce(ReduceFn::Sum, t, 1)?;
        let s = kb.reshape(s, &[1, sc])?;
        let p = kb.select(is_i, s, p)?;
        Ok(vec![u, p])
    })?;
    let cm = causal(kb, sc)?;
    let z = kb.f32(0.0)?;
    kb.select(cm, res[1], z)
}

/// Scan, first kernel: chunk `program_id(0)`'s own contribution to the
/// state, `ΔS = (K ⊙ e^(Γ_c − Γ))ᵀ V` (no decay: `Kᵀ V`; the normalizer's
/// `Σ_rows K`), and its total gate `Γ_c` (a `[dkp, 1]` column, or `[1, 1]`
/// for a scalar decay), which every value block computes alike and the first
/// writes.
fn chunk_deltas(kb: &mut KernelBuilder, ctx: &Ctx, sh: Shape) -> Res<()> {
    let ci = kb.program_id(0)?;
    let step = kb.i32(sh.c as i64)?;
    let t0 = kb.mul(ci, step)?;
    let ct = load_chunk(kb, ctx, sh, t0, sh.c)?;
    let k = match ct.gamma {
        Some((gam, gsum)) => {
            let w = kb.ty(gsum).shape[1];
            let total = if w == 1 { gsum } else { kb.reshape(gsum, &[sh.dkp, 1])? };
            let offs = scratch_offsets(kb, ctx, sh, ci, w, 1)?;
            let mask = first_only(kb, ctx, None, &[w, 1])?;
            kb.store(ctx.scratch_g.ok_or_else(missing)?, offs, total, mask)?;
            keys_to_chunk_end(kb, ct.k, gam, gsum)?
        }
        None => ct.k,
    };
    let ds = kb.dot(k, ct.v, None, true, false)?;
    let offs = scratch_state_offsets(kb, ctx, sh, ci)?;
    kb.store(ctx.scratch_ds.ok_or_else(missing)?, offs, ds, None)?;
    if let Some(p) = ctx.scratch_daux {
        let ks = kb.reduce(ReduceFn::Sum, ct.k, 0)?;
        let ks = kb.reshape(ks, &[sh.dkp, 1])?;
        let offs = scratch_offsets(kb, ctx, sh, ci, sh.dkp, 1)?;
        let mask = first_only(kb, ctx, None, &[sh.dkp, 1])?;
        kb.store(p, offs, ks, mask)?;
    }
    Ok(())
}

/// Rows of the state per program of the scan ([`scan`]): a divisor of the
/// padded key dim (a multiple of 16).
fn scan_rows(dkp: u32) -> u32 {
    if dkp.is_multiple_of(32) {
        32
    } else {
        16
    }
}

/// Scan, second kernel: program (batch × head, value block, block of
/// [`scan_rows`] state rows) walks the chunks, writing the state before each
/// (the chunk-start state split's output kernel reads) and adding the
/// chunk's contribution, `S ← e^Γ_c ⊙ S + ΔS_c` — elementwise, no matrix
/// work, so the state's rows split over programs too (a few programs per
/// head would leave the card's bandwidth idle); then the final state.
fn scan(kb: &mut KernelBuilder, ctx: &Ctx, sh: Shape) -> Res<()> {
    let rb = scan_rows(sh.dkp);
    let rbc = kb.i32(i64::from(rb))?;
    let pr = kb.program_id(2)?;
    let r0 = kb.mul(pr, rbc)?;
    // This program's rows of S and value columns; of the normalizer in `[B, H, Dk]`.
    let t = state_rows(kb, ctx, sh, r0, rb)?;
    let dkc = kb.i32(sh.dk as i64)?;
    let nbase = kb.mul(ctx.bh, dkc)?;
    let noffs = kb.add(t.r, nbase)?;
    let s = match ctx.s0 {
        Some(p) => kb.load(p, t.offs, Some(t.mask), 0.0)?,
        None => kb.zeros(&[rb, sh.bv])?,
    };
    let aux = match (has_aux(&sh.r), ctx.aux0) {
        (true, Some(p)) => Some(kb.load(p, noffs, Some(t.rmask), 0.0)?),
        (true, None) => Some(kb.zeros(&[rb, 1])?),
        (false, _) => None,
    };
    let init: Vec<TValue> = [Some(s), aux].into_iter().flatten().collect();
    let cc = kb.i32(sh.c as i64)?;
    let zero_i = kb.i32(0)?;
    let finals = kb.for_loop(zero_i, ctx.t_len, cc, &init, |kb, t0, carried| {
        let (s, aux) = (carried[0], carried.get(1).copied());
        let ci = kb.binary(mixc_ir::ops::BinaryFn::FloorDiv, t0, cc)?;
        // Chunk `ci`'s scratch at these rows (rows past `dk` are padding,
        // present in scratch): the `[dkp, W]` matrices, the `[dkp, 1]` columns.
        let mo = scratch_at(kb, ctx, sh, ci, t.r, sh.dkp, sh.vb.padded())?;
        let moffs = kb.add(mo, t.cols)?;
        let roffs = scratch_at(kb, ctx, sh, ci, t.r, sh.dkp, 1)?;
        let ds = kb.load(ctx.scratch_ds.ok_or_else(missing)?, moffs, None, 0.0)?;
        kb.store(ctx.scratch_s.ok_or_else(missing)?, moffs, s, None)?;
        let s = match ctx.scratch_g {
            Some(p) => {
                // GLA's total gate per row; a scalar decay's one value.
                let goffs = match sh.r.transition {
                    Transition::KeyDecay => roffs,
                    _ => scratch_offsets(kb, ctx, sh, ci, 1, 1)?,
                };
                let g = kb.load(p, goffs, None, 0.0)?;
                let decay = kb.exp(g)?;
                kb.mul(s, decay)?
            }
            None => s,
        };
        let mut next = vec![kb.add(s, ds)?];
        if let (Some(z), Some(to), Some(from)) = (aux, ctx.scratch_aux, ctx.scratch_daux) {
            let mask = first_only(kb, ctx, None, &[rb, 1])?;
            kb.store(to, roffs, z, mask)?;
            let dz = kb.load(from, roffs, None, 0.0)?;
            next.push(kb.add(z, dz)?);
        }
        Ok(next)
    })?;
    kb.store(ctx.s_out.ok_or_else(missing)?, t.offs, finals[0], Some(t.mask))?;
    if let (Some(p), Some(z)) = (ctx.aux_out, finals.get(1).copied()) {
        let mask = first_only(kb, ctx, Some(t.rmask), &[rb, 1])?;
        kb.store(p, noffs, z, mask)?;
    }
    Ok(())
}

/// `K ⊙ e^(Γ_c − Γ)`: each key decayed to the chunk's end.
fn keys_to_chunk_end(kb: &mut KernelBuilder, k: TValue, gam: TValue, gsum: TValue) -> Res<TValue> {
    let d = kb.sub(gsum, gam)?;
    let e = kb.exp(d)?;
    kb.mul(k, e)
}

/// The state after the chunk starting at `t0`.
fn chunk_update(kb: &mut KernelBuilder, ctx: &Ctx, sh: Shape, t0: TValue, st: State) -> Res<State> {
    let ct = load_chunk(kb, ctx, sh, t0, sh.c)?;
    match sh.r.transition {
        Transition::Identity => {
            let s = kb.dot(ct.k, ct.v, Some(st.s), true, false)?;
            let aux = match st.aux {
                Some(z) => {
                    let ks = kb.reduce(ReduceFn::Sum, ct.k, 0)?;
                    let ks = kb.reshape(ks, &[sh.dkp, 1])?;
                    Some(kb.add(z, ks)?)
                }
                None => None,
            };
            Ok(State { s, aux, m: None })
        }
        Transition::ScalarDecay | Transition::KeyDecay => {
            let (gam, gsum) = ct.gamma.ok_or_else(missing)?;
            // S_c = e^Γ_c ⊙ S₀ + (K ⊙ e^(Γ_c − Γ))ᵀ V
            let kd = keys_to_chunk_end(kb, ct.k, gam, gsum)?;
            let w = kb.ty(gsum).shape[1];
            let decay = kb.exp(gsum)?;
            let decay = if w == 1 { decay } else { kb.reshape(decay, &[sh.dkp, 1])? };
            let s = kb.mul(st.s, decay)?;
            let s = kb.dot(kd, ct.v, Some(s), true, false)?;
            Ok(State { s, aux: None, m: None })
        }
        Transition::Mlstm => {
            let (gam, gsum) = ct.gamma.ok_or_else(missing)?;
            let ig = ct.igate.ok_or_else(missing)?;
            let (m0, n0) = (st.m.ok_or_else(missing)?, st.aux.ok_or_else(missing)?);
            // m_c = max(m₀ + Γ_c, max_j (ĩ_j + Γ_c − Γ_j))
            let a = kb.add(ig, gsum)?;
            let a = kb.sub(a, gam)?;
            let amax = kb.reduce(ReduceFn::Max, a, 0)?;
            let amax = kb.reshape(amax, &[1, 1])?;
            let carry = kb.add(m0, gsum)?;
            let mc = kb.max(carry, amax)?;
            let cd = kb.sub(carry, mc)?;
            let cdecay = kb.exp(cd)?;
            let wd = kb.sub(a, mc)?;
            let w = kb.exp(wd)?;
            let kw = kb.mul(ct.k, w)?;
            let s = kb.mul(st.s, cdecay)?;
            let s = kb.dot(kw, ct.v, Some(s), true, false)?;
            let ks = kb.reduce(ReduceFn::Sum, kw, 0)?;
            let ks = kb.reshape(ks, &[sh.dkp, 1])?;
            let n = kb.mul(n0, cdecay)?;
            let n = kb.add(n, ks)?;
            Ok(State { s, aux: Some(n), m: Some(mc) })
        }
        _ => Err(missing()),
    }
}

/// What the state update of one token needs besides the state: its tiles,
/// the `k` of its rank-1 product (mLSTM: weighted by the input gate), the
/// factor the state decays by (`None`: 1), and the normalizer and stabilizer
/// after it.
struct Token {
    ct: ChunkTiles,
    k: TValue,
    decay: Option<TValue>,
    aux: Option<TValue>,
    m: Option<TValue>,
}

/// `sh.tokens` tokens from `t0` (those past the end load `k = v = 0` and a
/// decay of 1 — a gate of 0, mLSTM's input gate −∞ — and leave the state as
/// it is): first every token's loads, gates, normalizer and stabilizer (none
/// of which reads the state), then the state updates
/// `S_i = decay_i · S_{i−1} + k_iᵀ v_i`, each followed by its readout
/// `q_i · S_i` (rank-1 and one-row dots, nothing else in between but
/// elementwise ops, which the CPU backend runs as one pass over the state),
/// then the normalized outputs' stores.
fn token_steps(kb: &mut KernelBuilder, ctx: &Ctx, sh: Shape, t0: TValue, st: State) -> Res<State> {
    let mut toks = Vec::with_capacity(sh.tokens as usize);
    let (mut aux, mut m) = (st.aux, st.m);
    for i in 0..sh.tokens {
        let t = if i == 0 {
            t0
        } else {
            let di = kb.i32(i as i64)?;
            kb.add(t0, di)?
        };
        let ct = load_chunk(kb, ctx, sh, t, 1)?;
        let tok = match sh.r.transition {
            Transition::Identity => {
                if let Some(z) = aux {
                    let kt = kb.reshape(ct.k, &[sh.dkp, 1])?;
                    aux = Some(kb.add(z, kt)?);
                }
                Token { k: ct.k, decay: None, aux, m: None, ct }
            }
            Transition::ScalarDecay | Transition::KeyDecay => {
                // Γ of one row is its gate; `gsum` is the same value as `[1, w]`.
                let (_, g) = ct.gamma.ok_or_else(missing)?;
                let w = kb.ty(g).shape[1];
                let decay = kb.exp(g)?;
                let decay = if w == 1 { decay } else { kb.reshape(decay, &[sh.dkp, 1])? };
                Token { k: ct.k, decay: Some(decay), aux: None, m: None, ct }
            }
            Transition::Mlstm => {
                let (_, lf) = ct.gamma.ok_or_else(missing)?;
                let ig = ct.igate.ok_or_else(missing)?;
                let (m0, n0) = (m.ok_or_else(missing)?, aux.ok_or_else(missing)?);
                let carry = kb.add(lf, m0)?;
                let mt = kb.max(carry, ig)?;
                let fl = kb.sub(carry, mt)?;
                let f = kb.exp(fl)?;
                let il = kb.sub(ig, mt)?;
                let i = kb.exp(il)?;
                let ki = kb.mul(ct.k, i)?;
                let kt = kb.reshape(ki, &[sh.dkp, 1])?;
                let n = kb.mul(n0, f)?;
                let n = kb.add(n, kt)?;
                (aux, m) = (Some(n), Some(mt));
                Token { k: ki, decay: Some(f), aux, m, ct }
            }
            _ => return Err(missing()),
        };
        toks.push(tok);
    }
    let mut s = st.s;
    let mut outs = Vec::with_capacity(toks.len());
    for tok in &toks {
        let acc = match tok.decay {
            Some(d) => kb.mul(s, d)?,
            None => s,
        };
        s = kb.dot(tok.k, tok.ct.v, Some(acc), true, false)?;
        outs.push(kb.dot(tok.ct.q, s, None, false, false)?);
    }
    for (tok, o) in toks.iter().zip(outs) {
        let q = tok.ct.q;
        let o = match (sh.r.transition, tok.aux) {
            (Transition::Mlstm, Some(n)) => {
                let qn = kb.dot(q, n, None, false, false)?;
                let qn = kb.unary(UnaryFn::Abs, qn)?;
                let negm = kb.unary(UnaryFn::Neg, tok.m.ok_or_else(missing)?)?;
                let floor = kb.exp(negm)?;
                let den = kb.max(qn, floor)?;
                let eps = kb.f32(sh.r.eps)?;
                let den = kb.add(den, eps)?;
                kb.div(o, den)?
            }
            (_, Some(z)) => {
                let den = kb.dot(q, z, None, false, false)?;
                let eps = kb.f32(sh.r.eps)?;
                let den = kb.add(den, eps)?;
                kb.div(o, den)?
            }
            _ => o,
        };
        kb.store(ctx.o.ok_or_else(missing)?, tok.ct.out_offs, o, Some(tok.ct.out_mask))?;
    }
    Ok(State { s, aux, m })
}
