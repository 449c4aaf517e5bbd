//! Flash attention: softmax attention computed online, one program per
//! (query block, batch × head), with mask-aware skipping of key blocks.
//!
//! Each program loads its `[block_q, Dk]` query tile once and walks key blocks
//! of `block_k` rows, keeping per query row a running maximum `m`, a running
//! sum `l` of `exp(s − m)` and an f32 accumulator `acc = Σ exp(s − m) v`
//! (rescaled by `exp(m_old − m_new)` whenever the maximum grows). At the end
//! `o = acc / l` and `lse = m + log l`; a row that sees no key writes `o = 0`
//! and `lse = −inf`, as the reference does.
//!
//! Query `i` sits at key position `p = Tk − Tq + i`. The key-block loop bounds
//! come from the mask, so blocks the mask empties are never visited:
//! - causal: the loop stops after the block holding the query block's last
//!   position;
//! - window `w`: the loop starts at the block holding `p_first − w + 1`;
//! - sinks `n` (with a window): a second loop covers the blocks of `[0, n)`
//!   that lie before the window loop's first block, so no block is visited twice.
//!
//! A sliding-window kernel therefore visits `O(Tq · (w + block_q + block_k))`
//! keys per head instead of `O(Tq · Tk)`. Inside a visited block the exact mask
//! (key bounds, causality, window, sinks) is applied element by element.
//!
//! Grouped-query heads: query head `h` reads kv head `h / (H / Hkv)`. Head dims
//! are padded to multiples of 16 in tiles and masked on load and store.

use super::util::{cols, pad16, rows};
use super::{LowerError, Lowering};
use mixc_ir::graph::OpNode;
use mixc_ir::ops::{BinaryFn, Mask, ReduceFn, UnaryFn};
use mixc_ir::tile::{Arg, Count, KernelBuilder, ParamId, TValue, TileError};
use mixc_ir::DType;

type Res<T> = Result<T, TileError>;

/// Values of the kernel that every key-block step reads.
#[derive(Clone, Copy)]
struct Step {
    k_ptr: ParamId,
    v_ptr: ParamId,
    bq: u32,
    bk: u32,
    mask: Mask,
    /// Query tile `[bq, dkp]` (zero outside the valid rows and columns).
    q: TValue,
    /// Absolute key positions of the query rows, `[bq, 1]`.
    pos: TValue,
    /// Number of keys.
    tk: TValue,
    /// Element offset of this (batch, kv head) in `k` / `v` at key 0: `b·Tk·Hkv + hk`.
    kv_base: TValue,
    hkv: TValue,
    /// Column indices and masks of the key and value head dims, `[1, dkp]` / `[1, dvp]`.
    dk_cols: TValue,
    dk_mask: TValue,
    dv_cols: TValue,
    dv_mask: TValue,
    dk: TValue,
    dv: TValue,
    scale: TValue,
    neg_inf: TValue,
    zero: TValue,
}

/// One key block starting at key position `start`: the online-softmax update of
/// `(m, l, acc)`.
fn key_block(kb: &mut KernelBuilder, st: &Step, start: TValue, carried: &[TValue]) -> Res<Vec<TValue>> {
    let [m, l, acc] = carried[..] else {
        return Err(TileError::Kernel {
            kernel: "flash_attention".into(),
            msg: "three carried values expected".into(),
        });
    };
    // Key rows of this block: [bk, 1] indices and in-bounds mask.
    let (kidx, kmask) = rows(kb, start, st.bk, st.tk)?;
    // Row offsets of k / v: ((b·Tk + j)·Hkv + hk)·D = (kv_base + j·Hkv)·D.
    let jh = kb.mul(kidx, st.hkv)?;
    let row = kb.add(st.kv_base, jh)?;
    let krow = kb.mul(row, st.dk)?;
    let koff = kb.add(krow, st.dk_cols)?;
    let kmask2 = kb.and(kmask, st.dk_mask)?;
    let ktile = kb.load(st.k_ptr, koff, Some(kmask2), 0.0)?;
    // Scores [bq, bk].
    let s = kb.dot(st.q, ktile, None, false, true)?;
    let s = kb.mul(s, st.scale)?;
    // Visibility [bq, bk]: key in bounds and allowed by the mask.
    let j = kb.reshape(kidx, &[1, st.bk])?;
    let jm = kb.reshape(kmask, &[1, st.bk])?;
    let mut vis = jm;
    if st.mask.causal {
        let c = kb.le(j, st.pos)?;
        vis = kb.and(vis, c)?;
    }
    if let Some(w) = st.mask.window {
        // s + w > p  ⇔  p < s + w
        let wv = kb.i32(i64::from(w))?;
        let jw = kb.add(j, wv)?;
        let mut inw = kb.lt(st.pos, jw)?;
        if st.mask.sinks > 0 {
            let n = kb.i32(i64::from(st.mask.sinks))?;
            let sink = kb.lt(j, n)?;
            inw = kb.binary(BinaryFn::Or, inw, sink)?;
        }
        vis = kb.and(vis, inw)?;
    }
    let vis = kb.broadcast(vis, &[st.bq, st.bk])?;
    let s = kb.select(vis, s, st.neg_inf)?;
    // Online softmax.
    let mb = kb.reduce(ReduceFn::Max, s, 1)?;
    let mb = kb.expand(mb, 1)?;
    let m_new = kb.max(m, mb)?;
    let empty = kb.binary(BinaryFn::Eq, m_new, st.neg_inf)?;
    let m_safe = kb.select(empty, st.zero, m_new)?;
    let sc = kb.sub(s, m_safe)?;
    let p = kb.exp(sc)?;
    let dm = kb.sub(m, m_safe)?;
    let alpha = kb.exp(dm)?;
    let ps = kb.reduce(ReduceFn::Sum, p, 1)?;
    let ps = kb.expand(ps, 1)?;
    let la = kb.mul(l, alpha)?;
    let l_new = kb.add(la, ps)?;
    // Values [bk, dvp] and acc·alpha + P V.
    let vrow = kb.mul(row, st.dv)?;
    let voff = kb.add(vrow, st.dv_cols)?;
    let vmask = kb.and(kmask, st.dv_mask)?;
    let vtile = kb.load(st.v_ptr, voff, Some(vmask), 0.0)?;
    let acc_a = kb.mul(acc, alpha)?;
    let acc_new = kb.dot(p, vtile, Some(acc_a), false, false)?;
    Ok(vec![m_new, l_new, acc_new])
}

/// `(x / by) · by` for non-negative i32 `x`: the start of the block holding `x`.
fn block_start(kb: &mut KernelBuilder, x: TValue, by: TValue) -> Res<TValue> {
    let q = kb.div(x, by)?;
    kb.mul(q, by)
}

pub fn lower(lw: &mut Lowering, op: &OpNode, scale: f64, mask: Mask) -> Result<(), LowerError> {
    let [q_v, k_v, v_v] = op.operands[..] else {
        return Err(lw.err(op, "attention takes q, k and v"));
    };
    let [o_v, lse_v] = op.results[..] else {
        return Err(lw.err(op, "attention yields o and lse"));
    };
    let g = lw.g;
    let (qs, ks, vs) = (&g.ty(q_v).shape, &g.ty(k_v).shape, &g.ty(v_v).shape);
    let (&[b_d, tq_d, h_d, dk_d], &[_, tk_d, hkv_d, _], &[_, _, _, dv_d]) = (&qs[..], &ks[..], &vs[..]) else {
        return Err(lw.err(op, "q, k and v must have rank 4"));
    };
    let dk = lw.const_dim(dk_d).ok_or_else(|| lw.err(op, "the key head dim must have a constant size"))?;
    let dv = lw.const_dim(dv_d).ok_or_else(|| lw.err(op, "the value head dim must have a constant size"))?;
    if dk > i32::MAX as u64 / 2 || dv > i32::MAX as u64 / 2 {
        return Err(lw.err(op, "head dims are too large"));
    }
    let (bq, bk) = (lw.sched.block_q, lw.sched.block_k);
    if bq == 0 || bk == 0 {
        return Err(LowerError::Schedule("attention blocks must be positive".into()));
    }
    let (dkp, dvp) = (pad16(dk), pad16(dv));

    let mut kb = KernelBuilder::new("flash_attention");
    let q_ptr = kb.ptr_param("q", DType::F32);
    let k_ptr = kb.ptr_param("k", DType::F32);
    let v_ptr = kb.ptr_param("v", DType::F32);
    let o_ptr = kb.ptr_param("o", DType::F32);
    let lse_ptr = kb.ptr_param("lse", DType::F32);
    let tq = kb.scalar_param("Tq", DType::I32)?;
    let tk = kb.scalar_param("Tk", DType::I32)?;
    let h = kb.scalar_param("H", DType::I32)?;
    let hkv = kb.scalar_param("Hkv", DType::I32)?;

    // Program ids: query block, batch × head.
    let qblk = kb.program_id(0)?;
    let bh = kb.program_id(1)?;
    let b = kb.div(bh, h)?;
    let bhh = kb.mul(b, h)?;
    let hi = kb.sub(bh, bhh)?;
    let group = kb.div(h, hkv)?;
    let hk = kb.div(hi, group)?;

    let bq_c = kb.i32(i64::from(bq))?;
    let bk_c = kb.i32(i64::from(bk))?;
    let q0 = kb.mul(qblk, bq_c)?;
    let dk_c = kb.i32(dk as i64)?;
    let dv_c = kb.i32(dv as i64)?;
    let (dk_cols, dk_mask) = cols(&mut kb, dkp, dk)?;
    let (dv_cols, dv_mask) = cols(&mut kb, dvp, dv)?;

    // Query rows [bq, 1]: index, validity, row offset (b·Tq + i)·H + h.
    let (qidx, qmask) = rows(&mut kb, q0, bq, tq)?;
    let btq = kb.mul(b, tq)?;
    let qr = kb.add(btq, qidx)?;
    let qr = kb.mul(qr, h)?;
    let qrow = kb.add(qr, hi)?;
    let qrow_k = kb.mul(qrow, dk_c)?;
    let qoff = kb.add(qrow_k, dk_cols)?;
    let qm = kb.and(qmask, dk_mask)?;
    let qtile = kb.load(q_ptr, qoff, Some(qm), 0.0)?;
    // Absolute positions of the query rows.
    let cache = kb.sub(tk, tq)?;
    let pos = kb.add(qidx, cache)?;

    // k / v base: b·Tk·Hkv + hk.
    let btk = kb.mul(b, tk)?;
    let btkh = kb.mul(btk, hkv)?;
    let kv_base = kb.add(btkh, hk)?;

    let scale_c = kb.f32(scale)?;
    let neg_inf = kb.f32(f64::NEG_INFINITY)?;
    let zero = kb.f32(0.0)?;
    let st = Step {
        k_ptr,
        v_ptr,
        bq,
        bk,
        mask,
        q: qtile,
        pos,
        tk,
        kv_base,
        hkv,
        dk_cols,
        dk_mask,
        dv_cols,
        dv_mask,
        dk: dk_c,
        dv: dv_c,
        scale: scale_c,
        neg_inf,
        zero,
    };

    // Key-block bounds from the mask.
    // First and one-past-last positions of this block's valid queries.
    let p_first = kb.add(cache, q0)?;
    let q_end = kb.add(q0, bq_c)?;
    let q_end = kb.min(q_end, tq)?;
    let hi_key = if mask.causal { kb.add(cache, q_end)? } else { tk };
    let zero_i = kb.i32(0)?;
    let lo_key = match mask.window {
        Some(w) => {
            let w1 = kb.i32(i64::from(w) - 1)?;
            let first = kb.sub(p_first, w1)?;
            let first = kb.max(first, zero_i)?;
            block_start(&mut kb, first, bk_c)?
        }
        None => zero_i,
    };

    let m0 = kb.constant(f64::NEG_INFINITY, DType::F32, &[bq, 1])?;
    let l0 = kb.zeros(&[bq, 1])?;
    let acc0 = kb.zeros(&[bq, dvp])?;
    let mut carried = vec![m0, l0, acc0];
    if mask.window.is_some() && mask.sinks > 0 {
        // Sink blocks before the window loop's first block.
        let n = kb.i32(i64::from(mask.sinks))?;
        let sink_hi = kb.min(n, lo_key)?;
        let sink_hi = kb.min(sink_hi, hi_key)?;
        carried = kb.for_loop(zero_i, sink_hi, bk_c, &carried, |kb, iv, c| key_block(kb, &st, iv, c))?;
    }
    let carried = kb.for_loop(lo_key, hi_key, bk_c, &carried, |kb, iv, c| key_block(kb, &st, iv, c))?;
    let [m, l, acc] = carried[..] else {
        return Err(lw.err(op, "the key loop must carry m, l and acc"));
    };

    // o = acc / l (0 where no key is visible); lse = m + log l (−inf there).
    let seen = kb.lt(zero, l)?;
    let one = kb.f32(1.0)?;
    let l_safe = kb.select(seen, l, one)?;
    let o = kb.div(acc, l_safe)?;
    let o = kb.select(seen, o, zero)?;
    let logl = kb.unary(UnaryFn::Log, l_safe)?;
    let lse = kb.add(m, logl)?;
    let lse = kb.select(seen, lse, neg_inf)?;

    let orow = kb.mul(qrow, dv_c)?;
    let ooff = kb.add(orow, dv_cols)?;
    let om = kb.and(qmask, dv_mask)?;
    kb.store(o_ptr, ooff, o, Some(om))?;
    kb.store(lse_ptr, qrow, lse, Some(qmask))?;
    let kernel = kb.finish()?;

    let args = vec![
        Arg::Buffer(lw.buffer(q_v)),
        Arg::Buffer(lw.buffer(k_v)),
        Arg::Buffer(lw.buffer(v_v)),
        Arg::Buffer(lw.buffer(o_v)),
        Arg::Buffer(lw.buffer(lse_v)),
        Arg::Size(Count::Dim(tq_d)),
        Arg::Size(Count::Dim(tk_d)),
        Arg::Size(Count::Dim(h_d)),
        Arg::Size(Count::Dim(hkv_d)),
    ];
    let grid = [
        Count::ceil_div(Count::Dim(tq_d), u64::from(bq)),
        Count::times(Count::Dim(b_d), Count::Dim(h_d)),
        Count::Const(1),
    ];
    lw.launch(kernel, grid, args)
}
