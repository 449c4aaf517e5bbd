//! The token-by-token form over blocks of the state's rows
//! (`Schedule::state_rows`).
//!
//! Row `i` of a diagonal recurrence's state, `S_i ← d_i·S_i + k_i·v`, needs
//! only its own key entry and decay, so a pass of the step form can walk the
//! state in blocks of `R` rows: load the block, apply the pass's tokens to it,
//! add the block's share `q_b·S_b` of each token's readout (and `q_b·n_b` of
//! its normalizer) to running sums, store the block. The tokens' outputs are
//! written after the last block, when their sums are whole. A CPU keeps each
//! tile in memory: a whole `[Dk, Dv]` state (64 KB at 128 × 128) goes through
//! the second-level cache once per op, a block of 8 rows stays in the first.
//!
//! The first pass reads the blocks from the initial state; it is emitted on
//! its own, before the loop over the later passes (several tokens a pass, or
//! a prefill that takes this form), which read them back from the final
//! state that the pass before wrote. (A branch per block on the pass would
//! copy each block once more, from the branch's tile into its result.) The
//! first pass always runs, its tokens past the end identities, so a call of
//! no tokens still copies the initial state out.

use super::{act_tile, first_only, initial_m, load_gate, missing, state_rows, step_col, store_m, Ctx, Res, Shape};
use crate::lower::conv_prologue::{self, At, Input, Src};
use crate::schedule::Schedule;
use mixc_ir::ops::{Transition, UnaryFn};
use mixc_ir::tile::{KernelBuilder, ParamId, TValue};

/// The rows per state block of the step form: the schedule's where they cut
/// the padded key dim into more than one block, the transition is diagonal
/// (the delta rules read every row for each update) and `q`, `k` can be
/// loaded a block of columns at a time; else 0 (the whole state).
pub(super) fn block_rows(sched: &Schedule, sh: &Shape, acts: &[Input; 3]) -> u32 {
    let r = sched.state_rows;
    let diagonal = matches!(
        sh.r.transition,
        Transition::Identity | Transition::ScalarDecay | Transition::KeyDecay | Transition::Mlstm
    );
    let fits = r > 0 && r < sh.dkp && sh.dkp.is_multiple_of(r);
    // Value blocks would share the normalizer's rows between programs, which
    // a later pass reads back.
    if sched.step && fits && diagonal && !sh.vb.split() && acts[0].column_local() && acts[1].column_local() {
        r
    } else {
        0
    }
}

/// What a token brings that no state row depends on.
struct TokenLoads {
    t: TValue,
    v: TValue,
    out_offs: TValue,
    out_mask: TValue,
    /// The decay of every row (`[1, 1]`: a scalar decay, mLSTM's forget gate).
    decay: Option<TValue>,
    /// mLSTM: the input gate `[1, 1]` and the stabilizer after the token.
    igate: Option<TValue>,
    m: Option<TValue>,
}

/// The body of the step kernel under [`block_rows`] rows a block.
pub(super) fn body(kb: &mut KernelBuilder, ctx: &Ctx, sh: Shape) -> Res<()> {
    let zero_i = kb.i32(0)?;
    let m_init = initial_m(kb, ctx, sh)?;
    let step = kb.i32(sh.tokens as i64)?;
    let m_first = pass(kb, ctx, sh, zero_i, m_init, ctx.s0, ctx.aux0)?;
    let later: Vec<TValue> = m_first.into_iter().collect();
    let finals = kb.for_loop(step, ctx.t_len, step, &later, |kb, t0, carried| {
        let m = carried.first().copied();
        Ok(pass(kb, ctx, sh, t0, m, ctx.s_out, ctx.aux_out)?.into_iter().collect())
    })?;
    store_m(kb, ctx, finals.first().copied())
}

/// One pass: `sh.tokens` tokens from `t0` through every block of rows, the
/// blocks read from `s_from` and `aux_from` (zeros where absent); returns
/// mLSTM's stabilizer after them.
fn pass(
    kb: &mut KernelBuilder,
    ctx: &Ctx,
    sh: Shape,
    t0: TValue,
    m0: Option<TValue>,
    s_from: Option<ParamId>,
    aux_from: Option<ParamId>,
) -> Res<Option<TValue>> {
    let mut toks = Vec::with_capacity(sh.tokens as usize);
    let mut m = m0;
    for i in 0..sh.tokens {
        let t = if i == 0 {
            t0
        } else {
            let di = kb.i32(i as i64)?;
            kb.add(t0, di)?
        };
        let tok = token_loads(kb, ctx, sh, t, m)?;
        m = tok.m;
        toks.push(tok);
    }
    let normalized = ctx.aux_out.is_some();
    let mut sums = Vec::new();
    for _ in &toks {
        sums.push(kb.zeros(&[1, sh.bv])?);
    }
    if normalized {
        for _ in &toks {
            sums.push(kb.zeros(&[1, 1])?);
        }
    }
    let zero_i = kb.i32(0)?;
    let rows_n = kb.i32(sh.rows as i64)?;
    let dkp = kb.i32(sh.dkp as i64)?;
    let from = (s_from, aux_from);
    let sums =
        kb.for_loop(zero_i, dkp, rows_n, &sums, |kb, r0, carried| block(kb, ctx, sh, &toks, from, r0, carried))?;
    let (outs, dens) = sums.split_at(toks.len());
    for (i, (tok, &o)) in toks.iter().zip(outs).enumerate() {
        let o = match (dens.get(i), tok.m) {
            (Some(&qn), Some(mt)) => {
                let qn = kb.unary(UnaryFn::Abs, qn)?;
                let negm = kb.unary(UnaryFn::Neg, mt)?;
                let floor = kb.exp(negm)?;
                let den = kb.max(qn, floor)?;
                let eps = kb.f32(sh.r.eps)?;
                let den = kb.add(den, eps)?;
                kb.div(o, den)?
            }
            (Some(&qz), None) => {
                let eps = kb.f32(sh.r.eps)?;
                let den = kb.add(qz, eps)?;
                kb.div(o, den)?
            }
            _ => o,
        };
        kb.store(ctx.o.ok_or_else(missing)?, tok.out_offs, o, Some(tok.out_mask))?;
    }
    Ok(m)
}

/// Token `t`'s value row, output place, row-independent gates and (mLSTM)
/// stabilizer after it, from `m` before it.
fn token_loads(kb: &mut KernelBuilder, ctx: &Ctx, sh: Shape, t: TValue, m: Option<TValue>) -> Res<TokenLoads> {
    let (voffs, vmask) = act_tile(kb, ctx, t, 1, ctx.v0, sh.bv, sh.dv, ctx.hdv)?;
    let v = load_src(kb, ctx, &ctx.v, t, voffs, vmask, ctx.v0, sh.bv)?;
    let (mut decay, mut igate, mut m_after) = (None, None, None);
    match sh.r.transition {
        Transition::ScalarDecay => {
            let (o, mask) = step_col(kb, ctx, t, 1)?;
            let g = load_gate(kb, ctx, o, mask)?;
            decay = Some(kb.exp(g)?);
        }
        Transition::Mlstm => {
            let (o, mask) = step_col(kb, ctx, t, 1)?;
            let f = kb.load(ctx.fgate.ok_or_else(missing)?, o, Some(mask), f64::INFINITY)?;
            let lf = kb.unary(UnaryFn::LogSigmoid, f)?;
            let ig = kb.load(ctx.igate.ok_or_else(missing)?, o, Some(mask), f64::NEG_INFINITY)?;
            let carry = kb.add(lf, m.ok_or_else(missing)?)?;
            let mt = kb.max(carry, ig)?;
            let fl = kb.sub(carry, mt)?;
            decay = Some(kb.exp(fl)?);
            let il = kb.sub(ig, mt)?;
            igate = Some(kb.exp(il)?);
            m_after = Some(mt);
        }
        _ => {}
    }
    Ok(TokenLoads { t, v, out_offs: voffs, out_mask: vmask, decay, igate, m: m_after })
}

/// Rows `r0 .. r0 + R` of the state (and normalizer) through the pass's
/// tokens; returns the running sums (`carried`: each token's `[1, bv]`
/// readout, then, normalized, each token's `[1, 1]` `q·n`) with this block's
/// shares added.
fn block(
    kb: &mut KernelBuilder,
    ctx: &Ctx,
    sh: Shape,
    toks: &[TokenLoads],
    (s_from, aux_from): (Option<ParamId>, Option<ParamId>),
    r0: TValue,
    carried: &[TValue],
) -> Res<Vec<TValue>> {
    let st = state_rows(kb, ctx, sh, r0, sh.rows)?;
    let s_out = ctx.s_out.ok_or_else(missing)?;
    let mut s = load_or_zeros(kb, s_from, st.offs, st.mask, &[sh.rows, sh.bv])?;
    // The normalizer's rows: `[R, 1]` of a `[B, H, Dk]` tensor.
    let dkc = kb.i32(sh.dk as i64)?;
    let nbase = kb.mul(ctx.bh, dkc)?;
    let noffs = kb.add(st.r, nbase)?;
    let mut aux = match ctx.aux_out {
        Some(_) => Some(load_or_zeros(kb, aux_from, noffs, st.rmask, &[sh.rows, 1])?),
        None => None,
    };
    let (outs, dens) = carried.split_at(toks.len());
    let (mut outs, mut dens) = (outs.to_vec(), dens.to_vec());
    for (i, tok) in toks.iter().enumerate() {
        let (qoffs, qmask) = act_tile(kb, ctx, tok.t, 1, Some(r0), sh.rows, sh.dk, ctx.hdk)?;
        let q = load_src(kb, ctx, &ctx.q, tok.t, qoffs, qmask, Some(r0), sh.rows)?;
        let scale = kb.f32(sh.r.scale)?;
        let q = kb.mul(q, scale)?;
        let k = load_src(kb, ctx, &ctx.k, tok.t, qoffs, qmask, Some(r0), sh.rows)?;
        let k = match tok.igate {
            Some(i) => kb.mul(k, i)?,
            None => k,
        };
        let decay = match sh.r.transition {
            Transition::KeyDecay => {
                let g = load_gate(kb, ctx, qoffs, qmask)?;
                let d = kb.exp(g)?;
                Some(kb.reshape(d, &[sh.rows, 1])?)
            }
            _ => tok.decay,
        };
        let acc = match decay {
            Some(d) => kb.mul(s, d)?,
            None => s,
        };
        s = kb.dot(k, tok.v, Some(acc), true, false)?;
        // The block's share of the readout, then added to the running sum:
        // a readout of its own (no accumulator) right after the update is
        // the pair the CPU backend walks in one pass (`step_pair`).
        if let Some(o) = outs.get_mut(i) {
            let share = kb.dot(q, s, None, false, false)?;
            *o = kb.add(*o, share)?;
        }
        if let Some(a) = aux {
            let kt = kb.reshape(k, &[sh.rows, 1])?;
            let a = match (sh.r.transition, tok.decay) {
                (Transition::Mlstm, Some(f)) => kb.mul(a, f)?,
                _ => a,
            };
            let a = kb.add(a, kt)?;
            if let Some(d) = dens.get_mut(i) {
                *d = kb.dot(q, a, Some(*d), false, false)?;
            }
            aux = Some(a);
        }
    }
    kb.store(s_out, st.offs, s, Some(st.mask))?;
    if let (Some(p), Some(a)) = (ctx.aux_out, aux) {
        let mask = first_only(kb, ctx, Some(st.rmask), &[sh.rows, 1])?;
        kb.store(p, noffs, a, mask)?;
    }
    outs.extend(dens);
    Ok(outs)
}

/// A block of the state (or normalizer) at `offs` of `from`; zeros without it.
fn load_or_zeros(
    kb: &mut KernelBuilder,
    from: Option<ParamId>,
    offs: TValue,
    mask: TValue,
    shape: &[u32],
) -> Res<TValue> {
    match from {
        Some(p) => kb.load(p, offs, Some(mask), 0.0),
        None => kb.zeros(shape),
    }
}

/// `q`, `k` or `v` at `offs`: from its buffer, or computed by the fused
/// short convolution's prologue (columns `col0 ..` of `width`).
#[allow(clippy::too_many_arguments)]
fn load_src(
    kb: &mut KernelBuilder,
    ctx: &Ctx,
    src: &Src,
    t: TValue,
    offs: TValue,
    mask: TValue,
    col0: Option<TValue>,
    width: u32,
) -> Res<TValue> {
    match src {
        Src::Buffer(p) => kb.load(*p, offs, Some(mask), 0.0),
        Src::Conv(bd) => {
            let at = At { b: ctx.b, h: ctx.hh, t_len: ctx.t_len };
            conv_prologue::load_block(kb, bd, &at, t, 1, col0, width)
        }
    }
}
