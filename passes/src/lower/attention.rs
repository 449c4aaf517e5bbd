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
//! (key bounds, causality, window, sinks) is applied element by element —
//! except, for causal attention without a window, in the blocks wholly at or
//! before the program's first query: a first loop walks those unmasked, a
//! second the rest (the diagonal).
//!
//! Split over keys (`Schedule::kv_split`, FlashDecoding's form): a decode step
//! has one query block per head, so the one-kernel form runs `B·H` programs
//! that each stream a whole head's cache alone. With `kv_split = n` a first
//! kernel (`flash_attention_partial`) runs a program per (query block,
//! batch × head, split `s`) that walks only the key blocks of
//! `[s·n, (s+1)·n)` the mask shows (the same bounds, intersected; `n` is a
//! multiple of `block_k`, so every block lies in one split) and writes its
//! un-normalized `acc`, `m` and `l` per query row to scratch of
//! `⌈Tk / n⌉` splits; a split that sees no key writes `m = −inf, l = 0,
//! acc = 0`. A second kernel (`flash_attention_combine`) merges each row's
//! splits the way the key loop merges blocks — `M = max m_s`,
//! `L = Σ l_s·exp(m_s − M)`, `o = Σ acc_s·exp(m_s − M) / L`, `lse = M + log L`
//! — and finishes exactly as the one kernel does.
//!
//! Grouped-query heads: query head `h` reads kv head `h / (H / Hkv)`. Head dims
//! are padded to multiples of 16 in tiles and masked on load and store.

use super::util::{cols, pad16, rows};
use super::{LowerError, Lowering};
use mixc_ir::dims::DimId;
use mixc_ir::graph::{OpNode, ValueId};
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
    /// The scale is positive (scaling commutes with the row maximum).
    positive_scale: bool,
    neg_inf: TValue,
    zero: TValue,
}

/// One key block starting at key position `start`: the online-softmax update of
/// `(m, l, acc)`.
/// One key block of the online softmax. `masked`: apply the mask element by
/// element (off for blocks every row of the program sees whole).
fn key_block(kb: &mut KernelBuilder, st: &Step, start: TValue, carried: &[TValue], masked: bool) -> Res<Vec<TValue>> {
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
    // Scores [bq, bk]. With a positive scale the row maximum is taken of the
    // raw scores and scaled once (max(c·s) = c·max(s)), so that `c·s − m`
    // is a single FMA per score where backends fuse it (the PTX register
    // tier: `exp2(s·c·log2 e − m·log2 e)`, as FlashAttention does).
    let raw = kb.dot(st.q, ktile, None, false, true)?;
    let (s, mb) = if st.positive_scale {
        let raw = if masked { visible(kb, st, raw, kidx, kmask)? } else { raw };
        let mb = kb.reduce(ReduceFn::Max, raw, 1)?;
        let mb = kb.expand(mb, 1)?;
        (kb.mul(raw, st.scale)?, kb.mul(mb, st.scale)?)
    } else {
        let s = kb.mul(raw, st.scale)?;
        let s = if masked { visible(kb, st, s, kidx, kmask)? } else { s };
        let mb = kb.reduce(ReduceFn::Max, s, 1)?;
        (s, kb.expand(mb, 1)?)
    };
    // Online softmax.
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

/// Scores `s [bq, bk]` with −inf where the key (rows `kidx`, in bounds where
/// `kmask`) is out of bounds or hidden by the mask.
fn visible(kb: &mut KernelBuilder, st: &Step, s: TValue, kidx: TValue, kmask: TValue) -> Res<TValue> {
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
    kb.select(vis, s, st.neg_inf)
}

/// One attention op: its values, dims and the schedule's blocks.
struct Attn {
    q: ValueId,
    k: ValueId,
    v: ValueId,
    o: ValueId,
    lse: ValueId,
    b: DimId,
    tq: DimId,
    tk: DimId,
    h: DimId,
    hkv: DimId,
    dk: u64,
    dv: u64,
    bq: u32,
    bk: u32,
    scale: f64,
    mask: Mask,
}

impl Attn {
    fn of(lw: &Lowering, op: &OpNode, scale: f64, mask: Mask) -> Result<Attn, LowerError> {
        let [q, k, v] = op.operands[..] else {
            return Err(lw.err(op, "attention takes q, k and v"));
        };
        let [o, lse] = op.results[..] else {
            return Err(lw.err(op, "attention yields o and lse"));
        };
        let g = lw.g;
        let (qs, ks, vs) = (&g.ty(q).shape, &g.ty(k).shape, &g.ty(v).shape);
        let (&[b, tq, h, dk_d], &[_, tk, hkv, _], &[_, _, _, dv_d]) = (&qs[..], &ks[..], &vs[..]) else {
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
        Ok(Attn { q, k, v, o, lse, b, tq, tk, h, hkv, dk, dv, bq, bk, scale, mask })
    }

    /// Programs per (batch, head): one per block of query rows.
    fn query_blocks(&self) -> Count {
        Count::ceil_div(Count::Dim(self.tq), u64::from(self.bq))
    }

    fn batch_heads(&self) -> Count {
        Count::times(Count::Dim(self.b), Count::Dim(self.h))
    }
}

/// `(x / by) · by` for non-negative i32 `x`: the start of the block holding `x`.
fn block_start(kb: &mut KernelBuilder, x: TValue, by: TValue) -> Res<TValue> {
    let q = kb.div(x, by)?;
    kb.mul(q, by)
}

/// What a program knows of itself and its query rows.
struct Ctx {
    tq: TValue,
    h: TValue,
    /// Program index over batch × head.
    bh: TValue,
    b: TValue,
    /// Query head.
    hi: TValue,
    /// First query row of the program's block.
    q0: TValue,
    /// Query indices `[bq, 1]` and which are `< Tq`.
    qidx: TValue,
    qmask: TValue,
    /// Row of each query in `q`, `o` and `lse`: `(b·Tq + i)·H + h`, `[bq, 1]`.
    qrow: TValue,
    /// Value columns `[1, dvp]` and which are `< Dv`.
    dv_cols: TValue,
    dv_mask: TValue,
    dv: TValue,
}

/// The program's place from its ids: query block (axis 0), batch × head (axis 1).
/// Causal attention takes its query blocks last first: the GPU starts
/// programs in the order of their ids, so the heaviest blocks (the most keys)
/// start first and the last wave is the lightest.
fn context(kb: &mut KernelBuilder, a: &Attn, tq: TValue, h: TValue) -> Res<Ctx> {
    let pid = kb.program_id(0)?;
    let bh = kb.program_id(1)?;
    let b = kb.div(bh, h)?;
    let bhh = kb.mul(b, h)?;
    let hi = kb.sub(bh, bhh)?;
    let bq_c = kb.i32(i64::from(a.bq))?;
    let qblk = if a.mask.causal {
        // ⌈Tq / bq⌉ − 1 − pid.
        let last = kb.i32(i64::from(a.bq) - 1)?;
        let n = kb.add(tq, last)?;
        let n = kb.div(n, bq_c)?;
        let one = kb.i32(1)?;
        let n = kb.sub(n, one)?;
        kb.sub(n, pid)?
    } else {
        pid
    };
    let q0 = kb.mul(qblk, bq_c)?;
    let (qidx, qmask) = rows(kb, q0, a.bq, tq)?;
    let btq = kb.mul(b, tq)?;
    let qr = kb.add(btq, qidx)?;
    let qr = kb.mul(qr, h)?;
    let qrow = kb.add(qr, hi)?;
    let (dv_cols, dv_mask) = cols(kb, pad16(a.dv), a.dv)?;
    let dv = kb.i32(a.dv as i64)?;
    Ok(Ctx { tq, h, bh, b, hi, q0, qidx, qmask, qrow, dv_cols, dv_mask, dv })
}

/// Loads the program's query tile and walks the key blocks the mask shows its
/// rows — only those in `[split.0, split.1)` when given (block-aligned) —
/// returning the online softmax's `[m, l, acc]`.
fn walk_keys(
    kb: &mut KernelBuilder,
    a: &Attn,
    cx: &Ctx,
    (q_ptr, k_ptr, v_ptr): (ParamId, ParamId, ParamId),
    (tk, hkv): (TValue, TValue),
    split: Option<(TValue, TValue)>,
) -> Res<[TValue; 3]> {
    let (bq, bk) = (a.bq, a.bk);
    let group = kb.div(cx.h, hkv)?;
    let hk = kb.div(cx.hi, group)?;
    let dk_c = kb.i32(a.dk as i64)?;
    let (dk_cols, dk_mask) = cols(kb, pad16(a.dk), a.dk)?;
    let qrow_k = kb.mul(cx.qrow, dk_c)?;
    let qoff = kb.add(qrow_k, dk_cols)?;
    let qm = kb.and(cx.qmask, dk_mask)?;
    let qtile = kb.load(q_ptr, qoff, Some(qm), 0.0)?;
    // Absolute positions of the query rows.
    let cache = kb.sub(tk, cx.tq)?;
    let pos = kb.add(cx.qidx, cache)?;
    // k / v base: b·Tk·Hkv + hk.
    let btk = kb.mul(cx.b, tk)?;
    let btkh = kb.mul(btk, hkv)?;
    let kv_base = kb.add(btkh, hk)?;
    let st = Step {
        k_ptr,
        v_ptr,
        bq,
        bk,
        mask: a.mask,
        q: qtile,
        pos,
        tk,
        kv_base,
        hkv,
        dk_cols,
        dk_mask,
        dv_cols: cx.dv_cols,
        dv_mask: cx.dv_mask,
        dk: dk_c,
        dv: cx.dv,
        scale: kb.f32(a.scale)?,
        positive_scale: (a.scale as f32) > 0.0,
        neg_inf: kb.f32(f64::NEG_INFINITY)?,
        zero: kb.f32(0.0)?,
    };

    // Key-block bounds from the mask.
    // First and one-past-last positions of this block's valid queries.
    let bq_c = kb.i32(i64::from(bq))?;
    let bk_c = kb.i32(i64::from(bk))?;
    let p_first = kb.add(cache, cx.q0)?;
    let q_end = kb.add(cx.q0, bq_c)?;
    let q_end = kb.min(q_end, cx.tq)?;
    let hi_key = if a.mask.causal { kb.add(cache, q_end)? } else { tk };
    let zero_i = kb.i32(0)?;
    let lo_key = match a.mask.window {
        Some(w) => {
            let w1 = kb.i32(i64::from(w) - 1)?;
            let first = kb.sub(p_first, w1)?;
            let first = kb.max(first, zero_i)?;
            block_start(kb, first, bk_c)?
        }
        None => zero_i,
    };
    // The split's keys: both ends are multiples of block_k, as lo_key is, so
    // the loops below visit exactly the blocks of the unsplit walk that lie in it.
    let (split_lo, split_hi) = match split {
        Some((lo, hi)) => (Some(lo), Some(hi)),
        None => (None, None),
    };
    let clamp_lo = |kb: &mut KernelBuilder, x: TValue| match split_lo {
        Some(lo) => kb.max(x, lo),
        None => Ok(x),
    };
    let clamp_hi = |kb: &mut KernelBuilder, x: TValue| match split_hi {
        Some(hi) => kb.min(x, hi),
        None => Ok(x),
    };

    let m0 = kb.constant(f64::NEG_INFINITY, DType::F32, &[bq, 1])?;
    let l0 = kb.zeros(&[bq, 1])?;
    let acc0 = kb.zeros(&[bq, pad16(a.dv)])?;
    let mut carried = vec![m0, l0, acc0];
    if a.mask.window.is_some() && a.mask.sinks > 0 {
        // Sink blocks before the window loop's first block.
        let n = kb.i32(i64::from(a.mask.sinks))?;
        let sink_hi = kb.min(n, lo_key)?;
        let sink_hi = kb.min(sink_hi, hi_key)?;
        let sink_hi = clamp_hi(kb, sink_hi)?;
        let sink_lo = clamp_lo(kb, zero_i)?;
        carried = kb.for_loop(sink_lo, sink_hi, bk_c, &carried, |kb, iv, c| key_block(kb, &st, iv, c, true))?;
    }
    let lo = clamp_lo(kb, lo_key)?;
    let hi = clamp_hi(kb, hi_key)?;
    if a.mask.causal && a.mask.window.is_none() {
        // Blocks wholly at or before the first query's position (and inside
        // the keys) are seen whole by every row: no mask there. The rest (the
        // diagonal) masked.
        let one = kb.i32(1)?;
        let seen = kb.add(p_first, one)?;
        let seen = kb.min(seen, tk)?;
        let full = block_start(kb, seen, bk_c)?;
        let full = kb.min(full, hi)?;
        let mid = kb.max(full, lo)?;
        carried = kb.for_loop(lo, mid, bk_c, &carried, |kb, iv, c| key_block(kb, &st, iv, c, false))?;
        let carried = kb.for_loop(mid, hi, bk_c, &carried, |kb, iv, c| key_block(kb, &st, iv, c, true))?;
        let [m, l, acc] = carried[..] else {
            return Err(kernel_error("flash_attention", "the key loop must carry m, l and acc"));
        };
        return Ok([m, l, acc]);
    }
    let carried = kb.for_loop(lo, hi, bk_c, &carried, |kb, iv, c| key_block(kb, &st, iv, c, true))?;
    let [m, l, acc] = carried[..] else {
        return Err(kernel_error("flash_attention", "the key loop must carry m, l and acc"));
    };
    Ok([m, l, acc])
}

fn kernel_error(kernel: &str, msg: &str) -> TileError {
    TileError::Kernel { kernel: kernel.into(), msg: msg.into() }
}

/// `o = acc / l` (0 where no key is visible) and `lse = m + log l` (−inf there).
fn normalize(kb: &mut KernelBuilder, [m, l, acc]: [TValue; 3]) -> Res<(TValue, TValue)> {
    let zero = kb.f32(0.0)?;
    let one = kb.f32(1.0)?;
    let neg_inf = kb.f32(f64::NEG_INFINITY)?;
    let seen = kb.lt(zero, l)?;
    let l_safe = kb.select(seen, l, one)?;
    let o = kb.div(acc, l_safe)?;
    let o = kb.select(seen, o, zero)?;
    let logl = kb.unary(UnaryFn::Log, l_safe)?;
    let lse = kb.add(m, logl)?;
    let lse = kb.select(seen, lse, neg_inf)?;
    Ok((o, lse))
}

/// Stores the program's rows of `o [.., Dv]` and `lse`.
fn store_output(kb: &mut KernelBuilder, cx: &Ctx, o_ptr: ParamId, lse_ptr: ParamId, o: TValue, lse: TValue) -> Res<()> {
    let orow = kb.mul(cx.qrow, cx.dv)?;
    let ooff = kb.add(orow, cx.dv_cols)?;
    let om = kb.and(cx.qmask, cx.dv_mask)?;
    kb.store(o_ptr, ooff, o, Some(om))?;
    kb.store(lse_ptr, cx.qrow, lse, Some(cx.qmask))
}

pub fn lower(lw: &mut Lowering, op: &OpNode, scale: f64, mask: Mask) -> Result<(), LowerError> {
    let a = Attn::of(lw, op, scale, mask)?;
    match lw.sched.kv_split {
        0 => lower_whole(lw, &a),
        n => lower_split(lw, &a, n),
    }
}

/// One kernel: each program walks all the keys its rows see.
fn lower_whole(lw: &mut Lowering, a: &Attn) -> Result<(), LowerError> {
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
    let cx = context(&mut kb, a, tq, h)?;
    let mla = walk_keys(&mut kb, a, &cx, (q_ptr, k_ptr, v_ptr), (tk, hkv), None)?;
    let (o, lse) = normalize(&mut kb, mla)?;
    store_output(&mut kb, &cx, o_ptr, lse_ptr, o, lse)?;
    let kernel = kb.finish()?;

    let args = vec![
        Arg::Buffer(lw.buffer(a.q)),
        Arg::Buffer(lw.buffer(a.k)),
        Arg::Buffer(lw.buffer(a.v)),
        Arg::Buffer(lw.buffer(a.o)),
        Arg::Buffer(lw.buffer(a.lse)),
        Arg::Size(Count::Dim(a.tq)),
        Arg::Size(Count::Dim(a.tk)),
        Arg::Size(Count::Dim(a.h)),
        Arg::Size(Count::Dim(a.hkv)),
    ];
    lw.launch(kernel, [a.query_blocks(), a.batch_heads(), Count::Const(1)], args)
}

/// The scratch of the split form: per (batch × head, split, query row) the
/// un-normalized `acc [Dv]`, the maximum `m` and the sum `l`.
#[derive(Clone, Copy)]
struct Partials {
    acc: usize,
    m: usize,
    l: usize,
}

/// Kernel pointers to [`Partials`].
#[derive(Clone, Copy)]
struct PartialPtrs {
    acc: ParamId,
    m: ParamId,
    l: ParamId,
}

impl PartialPtrs {
    fn declare(kb: &mut KernelBuilder) -> PartialPtrs {
        let acc = kb.ptr_param("part_acc", DType::F32);
        let m = kb.ptr_param("part_m", DType::F32);
        let l = kb.ptr_param("part_l", DType::F32);
        PartialPtrs { acc, m, l }
    }
}

/// Two kernels: partial results per split of `n` keys, then their merge.
fn lower_split(lw: &mut Lowering, a: &Attn, n: u32) -> Result<(), LowerError> {
    let splits = Count::ceil_div(Count::Dim(a.tk), u64::from(n));
    let rows = vec![a.batch_heads(), splits.clone(), Count::Dim(a.tq)];
    let name = lw.g.value(a.o).name.clone();
    let parts = Partials {
        acc: lw.scratch(&format!("{name}_part_acc"), [rows.clone(), vec![Count::Const(a.dv)]].concat()),
        m: lw.scratch(&format!("{name}_part_m"), rows.clone()),
        l: lw.scratch(&format!("{name}_part_l"), rows),
    };
    let partial = partial_kernel(a, n)?;
    let args = vec![
        Arg::Buffer(lw.buffer(a.q)),
        Arg::Buffer(lw.buffer(a.k)),
        Arg::Buffer(lw.buffer(a.v)),
        Arg::Buffer(parts.acc),
        Arg::Buffer(parts.m),
        Arg::Buffer(parts.l),
        Arg::Size(Count::Dim(a.tq)),
        Arg::Size(Count::Dim(a.tk)),
        Arg::Size(Count::Dim(a.h)),
        Arg::Size(Count::Dim(a.hkv)),
        Arg::Size(splits.clone()),
    ];
    lw.launch(partial, [a.query_blocks(), a.batch_heads(), splits.clone()], args)?;

    let combine = combine_kernel(a)?;
    let args = vec![
        Arg::Buffer(parts.acc),
        Arg::Buffer(parts.m),
        Arg::Buffer(parts.l),
        Arg::Buffer(lw.buffer(a.o)),
        Arg::Buffer(lw.buffer(a.lse)),
        Arg::Size(Count::Dim(a.tq)),
        Arg::Size(Count::Dim(a.h)),
        Arg::Size(splits),
    ];
    lw.launch(combine, [a.query_blocks(), a.batch_heads(), Count::Const(1)], args)
}

/// Rows of split `s` of this program's queries in the partials:
/// `(bh·S + s)·Tq + i`, `[bq, 1]`.
fn partial_rows(kb: &mut KernelBuilder, cx: &Ctx, splits: TValue, s: TValue) -> Res<TValue> {
    let r = kb.mul(cx.bh, splits)?;
    let r = kb.add(r, s)?;
    let r = kb.mul(r, cx.tq)?;
    kb.add(r, cx.qidx)
}

/// Offsets and mask of the partials' `acc` rows, `[bq, dvp]`.
fn partial_acc_offsets(kb: &mut KernelBuilder, cx: &Ctx, prow: TValue) -> Res<(TValue, TValue)> {
    let r = kb.mul(prow, cx.dv)?;
    let off = kb.add(r, cx.dv_cols)?;
    let mask = kb.and(cx.qmask, cx.dv_mask)?;
    Ok((off, mask))
}

/// `flash_attention_partial`: program (query block, batch × head, split `s`)
/// walks the keys of `[s·n, (s+1)·n)` and stores its un-normalized rows.
fn partial_kernel(a: &Attn, n: u32) -> Result<mixc_ir::tile::Kernel, LowerError> {
    let mut kb = KernelBuilder::new("flash_attention_partial");
    let q_ptr = kb.ptr_param("q", DType::F32);
    let k_ptr = kb.ptr_param("k", DType::F32);
    let v_ptr = kb.ptr_param("v", DType::F32);
    let pp = PartialPtrs::declare(&mut kb);
    let tq = kb.scalar_param("Tq", DType::I32)?;
    let tk = kb.scalar_param("Tk", DType::I32)?;
    let h = kb.scalar_param("H", DType::I32)?;
    let hkv = kb.scalar_param("Hkv", DType::I32)?;
    let splits = kb.scalar_param("S", DType::I32)?;
    let cx = context(&mut kb, a, tq, h)?;
    let s = kb.program_id(2)?;
    let n_c = kb.i32(i64::from(n))?;
    let lo = kb.mul(s, n_c)?;
    let hi = kb.add(lo, n_c)?;
    let [m, l, acc] = walk_keys(&mut kb, a, &cx, (q_ptr, k_ptr, v_ptr), (tk, hkv), Some((lo, hi)))?;
    let prow = partial_rows(&mut kb, &cx, splits, s)?;
    let (aoff, amask) = partial_acc_offsets(&mut kb, &cx, prow)?;
    kb.store(pp.acc, aoff, acc, Some(amask))?;
    kb.store(pp.m, prow, m, Some(cx.qmask))?;
    kb.store(pp.l, prow, l, Some(cx.qmask))?;
    Ok(kb.finish()?)
}

/// `flash_attention_combine`: program (query block, batch × head) merges its
/// rows' splits and finishes them as the one-kernel form does.
fn combine_kernel(a: &Attn) -> Result<mixc_ir::tile::Kernel, LowerError> {
    let mut kb = KernelBuilder::new("flash_attention_combine");
    let pp = PartialPtrs::declare(&mut kb);
    let o_ptr = kb.ptr_param("o", DType::F32);
    let lse_ptr = kb.ptr_param("lse", DType::F32);
    let tq = kb.scalar_param("Tq", DType::I32)?;
    let h = kb.scalar_param("H", DType::I32)?;
    let splits = kb.scalar_param("S", DType::I32)?;
    let cx = context(&mut kb, a, tq, h)?;
    let m0 = kb.constant(f64::NEG_INFINITY, DType::F32, &[a.bq, 1])?;
    let l0 = kb.zeros(&[a.bq, 1])?;
    let acc0 = kb.zeros(&[a.bq, pad16(a.dv)])?;
    let zero_i = kb.i32(0)?;
    let one_i = kb.i32(1)?;
    let merged =
        kb.for_loop(zero_i, splits, one_i, &[m0, l0, acc0], |kb, s, c| merge_split(kb, &cx, pp, splits, s, c))?;
    let [m, l, acc] = merged[..] else {
        return Err(LowerError::Tile(kernel_error(
            "flash_attention_combine",
            "the split loop must carry m, l and acc",
        )));
    };
    let (o, lse) = normalize(&mut kb, [m, l, acc])?;
    store_output(&mut kb, &cx, o_ptr, lse_ptr, o, lse)?;
    Ok(kb.finish()?)
}

/// Merges split `s` into the running `(m, l, acc)`: both sides rescaled to the
/// larger maximum (`exp(−inf) = 0` drops a side that saw no key; rows where
/// neither did keep `m = −inf`, `l = 0`, `acc = 0`).
fn merge_split(
    kb: &mut KernelBuilder,
    cx: &Ctx,
    pp: PartialPtrs,
    splits: TValue,
    s: TValue,
    carried: &[TValue],
) -> Res<Vec<TValue>> {
    let [m, l, acc] = carried[..] else {
        return Err(kernel_error("flash_attention_combine", "three carried values expected"));
    };
    let prow = partial_rows(kb, cx, splits, s)?;
    // Rows past Tq load m = l = acc = 0 and are never stored.
    let ms = kb.load(pp.m, prow, Some(cx.qmask), 0.0)?;
    let ls = kb.load(pp.l, prow, Some(cx.qmask), 0.0)?;
    let (aoff, amask) = partial_acc_offsets(kb, cx, prow)?;
    let accs = kb.load(pp.acc, aoff, Some(amask), 0.0)?;
    let neg_inf = kb.f32(f64::NEG_INFINITY)?;
    let zero = kb.f32(0.0)?;
    let m_new = kb.max(m, ms)?;
    let empty = kb.binary(BinaryFn::Eq, m_new, neg_inf)?;
    let m_safe = kb.select(empty, zero, m_new)?;
    let dm = kb.sub(m, m_safe)?;
    let alpha = kb.exp(dm)?;
    let ds = kb.sub(ms, m_safe)?;
    let beta = kb.exp(ds)?;
    let la = kb.mul(l, alpha)?;
    let lb = kb.mul(ls, beta)?;
    let l_new = kb.add(la, lb)?;
    let acc_a = kb.mul(acc, alpha)?;
    let acc_b = kb.mul(accs, beta)?;
    let acc_new = kb.add(acc_a, acc_b)?;
    Ok(vec![m_new, l_new, acc_new])
}
