//! Hybrid mixers: Liger, Lizard, DuoAttention and MoM, composed from the
//! recurrence and attention pieces plus their mixing.

use super::attention::{attend, offset_input, rope, AttnDims, AttnSpec};
use super::common::*;
use crate::dims::{DimId, SizeExpr};
use crate::dtype::DType;
use crate::error::IrError;
use crate::graph::{Graph, ValueId};
use crate::model::{Combine, FeatureMap, GateActivation, MemoryKind, MixerConfig};
use crate::ops::*;

fn invalid(msg: String) -> IrError {
    IrError::Invalid(msg)
}

/// Dims of a hybrid whose linear branch shares the attention head dim:
/// `D` for queries and keys and `Dv` (equal in size) for values, so the state
/// `[B, H, D, Dv]` has two distinct dims.
fn hybrid_dims(g: &mut Graph, cfg: &MixerConfig) -> Res<(AttnDims, Heads)> {
    let head_dim = cfg.head_dim.ok_or_else(|| missing("head_dim"))?;
    let b = g.dim("B")?;
    let t = g.dim("T")?;
    let h = g.dim_const("H", cfg.heads as u64)?;
    let d = g.dim_const("D", head_dim as u64)?;
    let dv = g.dim_expr("Dv", SizeExpr::Dim(d))?;
    let ad = AttnDims { b, t, h, hkv: h, d, dv };
    let hd = Heads { b, t, h, dk: d, dv };
    Ok((ad, hd))
}

/// The two-branch weights `[softmax branch, linear branch]`.
fn mix_weights(cfg: &MixerConfig) -> Res<Vec<f64>> {
    let w = cfg.mix.clone().unwrap_or_else(|| vec![0.5, 0.5]);
    if w.len() != 2 {
        return Err(invalid(format!("`mix` must have 2 weights, found {}", w.len())));
    }
    Ok(w)
}

/// A GLA branch over `q, k, v` with key-wise log decays `gate`.
fn gla_branch(
    g: &mut Graph,
    hd: &Heads,
    q: ValueId,
    k: ValueId,
    v: ValueId,
    gate: ValueId,
    scale: f64,
) -> Res<ValueId> {
    let mut ops = vec![q, k, v, gate];
    ops.extend(initial_states(g, hd, Transition::KeyDecay, false)?);
    let r = rec(Transition::KeyDecay, scale);
    let res = g.add(OpKind::LinearRecurrence(r), &ops, &["o_gla", "final_state"])?;
    g.output_as("final_state", res[1])?;
    Ok(res[0])
}

/// Liger attention: the same `q, k, v` feed a GLA branch (softmax feature maps
/// over the head dim, gate `logsigmoid(k)/τ` from the key projection, no RoPE)
/// and a sliding-window branch (RoPE); `o = a·o_swa + b·o_gla`.
pub fn liger(name: &str, cfg: &MixerConfig) -> Res<Graph> {
    let mut g = Graph::new(name);
    let (ad, hd) = hybrid_dims(&mut g, cfg)?;
    let head_dim = cfg.head_dim.unwrap_or(1);
    let q = g.input("q", DType::F32, &hd.act(ad.d))?;
    let k = g.input("k", DType::F32, &hd.act(ad.d))?;
    let v = g.input("v", DType::F32, &hd.act(ad.dv))?;
    let fq = feature_map(&mut g, q, Some(cfg.feature_map.unwrap_or(FeatureMap::Softmax)), ad.d)?;
    let fk = feature_map(&mut g, k, Some(cfg.feature_map.unwrap_or(FeatureMap::Softmax)), ad.d)?;
    let tau = cfg.gate.as_ref().and_then(|c| c.tau).unwrap_or(16.0);
    let ls = g.unary(UnaryFn::LogSigmoid, k)?;
    let gate = g.scale_by(ls, 1.0 / tau)?;
    let scale = scale_or_default(cfg, head_dim);
    let o_gla = gla_branch(&mut g, &hd, fq, fk, v, gate, scale)?;
    let (mut rq, mut rk) = (q, k);
    if let Some(r) = &cfg.rope {
        let off = offset_input(&mut g)?;
        rq = rope(&mut g, q, &ad, r.theta, off)?;
        rk = rope(&mut g, k, &ad, r.theta, off)?;
    }
    let spec = AttnSpec { scale, window: Some(cfg.window.unwrap_or(64)), sinks: 0, cache_prefix: "", meta: None };
    let (o_swa, _) = attend(&mut g, &ad, rq, rk, v, &spec)?;
    let o = g.add1(OpKind::Mix { weights: mix_weights(cfg)? }, &[o_swa, o_gla], "o")?;
    g.output_as("o", o)?;
    Ok(g)
}

/// Delays `x [B, T, H, D]` by `w` steps (zeros, then the carried tail, first),
/// as a causal convolution whose only tap is the oldest; the tail of the last
/// `w` inputs is `{name}_delay_state`.
fn delay(g: &mut Graph, x: ValueId, name: &str, w: u32, hd: &Heads, d: DimId) -> Res<ValueId> {
    let ch = g.dim_expr(&format!("C_{name}"), SizeExpr::times(SizeExpr::Dim(hd.h), SizeExpr::Dim(d)))?;
    let taps = g.dim_const_or_get("Kw", w as u64 + 1)?;
    let tail = match g.dims.lookup("W") {
        Some(t) => t,
        None => g.dim_expr("W", SizeExpr::minus(SizeExpr::Dim(taps), SizeExpr::Const(1)))?,
    };
    let flat = g.add1(OpKind::Reshape { shape: vec![hd.b, hd.t, ch] }, &[x], "")?;
    let tap = g.add1(OpKind::Iota { dim: taps }, &[], "")?;
    let zero = g.add1(OpKind::Const { value: 0.0, dtype: DType::I32, shape: vec![] }, &[], "")?;
    let first = g.binary(BinaryFn::Eq, tap, zero)?;
    let first = g.add1(OpKind::Cast(DType::F32), &[first], "")?;
    let weight = g.add1(OpKind::Broadcast { shape: vec![ch, taps] }, &[first], &format!("{name}_delay_taps"))?;
    let state = g.input_opt(&format!("{name}_delay_state"), DType::F32, &[hd.b, tail, ch], true)?;
    let kind = OpKind::CausalConv1d { time: hd.t, taps, tail, has_tail: true, silu: false };
    let r =
        g.add(kind, &[flat, weight, state], &[&format!("{name}_delayed_flat"), &format!("{name}_delay_state_out")])?;
    g.output_as(&format!("{name}_delay_state"), r[1])?;
    g.add1(OpKind::Reshape { shape: vec![hd.b, hd.t, hd.h, d] }, &[r[0]], &format!("{name}_delayed"))
}

/// Lizard: GLA for global context plus sliding-window attention with learned
/// meta-memory tokens (`meta_k`, `meta_v` `[M, H, D]`, always visible). Two
/// combine rules: `separate` (weighted sum of separately normalized branches)
/// and `shared` (one softmax-style normalizer over the window, the meta tokens
/// and the linear memory of the tokens that have left the window).
///
/// In the shared rule a token enters the linear memory when it leaves the window
/// and decays from then on: `S_out(t) = Σ_{s ≤ t−w} Π_{r=s+w+1..t} α_r φ(k_s) v_sᵀ`.
pub fn lizard(name: &str, cfg: &MixerConfig) -> Res<Graph> {
    let mut g = Graph::new(name);
    let (ad, hd) = hybrid_dims(&mut g, cfg)?;
    let head_dim = cfg.head_dim.unwrap_or(1);
    let window = cfg.window.unwrap_or(128);
    let combine = cfg.combine.unwrap_or(Combine::Separate);
    let q = g.input("q", DType::F32, &hd.act(ad.d))?;
    let k = g.input("k", DType::F32, &hd.act(ad.d))?;
    let v = g.input("v", DType::F32, &hd.act(ad.dv))?;
    let raw = g.input("g", DType::F32, &hd.act(ad.d))?;
    let gate = gate_activation(&mut g, raw, cfg.gate.as_ref(), hd.h, GateActivation::None)?;
    let fm = cfg.feature_map.unwrap_or(match combine {
        Combine::Separate => FeatureMap::Identity,
        Combine::Shared => FeatureMap::EluPlusOne,
    });
    let fq = feature_map(&mut g, q, Some(fm), ad.d)?;
    let fk = feature_map(&mut g, k, Some(fm), ad.d)?;
    let meta = match cfg.meta_tokens.unwrap_or(0) {
        0 => None,
        m => {
            let md = g.dim_const("M", m as u64)?;
            let mk = g.input("meta_k", DType::F32, &[md, hd.h, ad.d])?;
            let mv = g.input("meta_v", DType::F32, &[md, hd.h, ad.dv])?;
            Some((mk, mv, md))
        }
    };
    let (mut rq, mut rk) = (q, k);
    if let Some(r) = &cfg.rope {
        let off = offset_input(&mut g)?;
        rq = rope(&mut g, q, &ad, r.theta, off)?;
        rk = rope(&mut g, k, &ad, r.theta, off)?;
    }
    let scale = scale_or_default(cfg, head_dim);
    let spec = AttnSpec { scale, window: Some(window), sinks: 0, cache_prefix: "", meta };
    let (o_swa, lse) = attend(&mut g, &ad, rq, rk, v, &spec)?;
    let o = match combine {
        Combine::Separate => {
            let o_gla = gla_branch(&mut g, &hd, fq, fk, v, gate, scale)?;
            g.add1(OpKind::Mix { weights: mix_weights(cfg)? }, &[o_swa, o_gla], "o")?
        }
        Combine::Shared => {
            let kd = delay(&mut g, fk, "k", window, &hd, ad.d)?;
            let vd = delay(&mut g, v, "v", window, &hd, ad.dv)?;
            let one = g.dim_const("One", 1)?;
            let ones =
                g.add1(OpKind::Const { value: 1.0, dtype: DType::F32, shape: vec![hd.b, hd.t, hd.h, one] }, &[], "")?;
            let s0 = g.input_opt("initial_state", DType::F32, &hd.state(), true)?;
            let z0 = g.input_opt("initial_z", DType::F32, &[hd.b, hd.h, ad.d, one], true)?;
            let r = rec(Transition::KeyDecay, 1.0);
            let num = g.add(OpKind::LinearRecurrence(r), &[fq, kd, vd, gate, s0], &["num", "final_state"])?;
            let den = g.add(OpKind::LinearRecurrence(r), &[fq, kd, ones, gate, z0], &["den1", "final_z"])?;
            g.output_as("final_state", num[1])?;
            g.output_as("final_z", den[1])?;
            let den = g.add1(OpKind::Reduce { func: ReduceFn::Sum, dims: vec![one] }, &[den[0]], "den")?;
            // y = (o_swa + num·e^−lse) / (1 + den·e^−lse)
            let neg = g.unary(UnaryFn::Neg, lse)?;
            let w = g.unary(UnaryFn::Exp, neg)?;
            let nw = g.binary(BinaryFn::Mul, num[0], w)?;
            let top = g.binary(BinaryFn::Add, o_swa, nw)?;
            let dw = g.binary(BinaryFn::Mul, den, w)?;
            let onec = g.scalar(1.0)?;
            let bottom = g.binary(BinaryFn::Add, dw, onec)?;
            let y = g.binary(BinaryFn::Div, top, bottom)?;
            g.add1(OpKind::Permute { shape: hd.act(ad.dv).to_vec() }, &[y], "o")?
        }
    };
    g.output_as("o", o)?;
    Ok(g)
}

/// DuoAttention: each kv head is a retrieval head (full KV cache, causal) or a
/// streaming head (sinks + recent window, constant cache). The two groups run as
/// two attention branches over gathered heads, each with its own cache
/// (`r_k_cache`/`r_v_cache` and `s_k_cache`/`s_v_cache`), and scatter back.
pub fn duo(name: &str, cfg: &MixerConfig) -> Res<Graph> {
    let mut g = Graph::new(name);
    let head_dim = cfg.head_dim.ok_or_else(|| missing("head_dim"))?;
    let kv = cfg.kv_heads.unwrap_or(cfg.heads);
    if kv == 0 || !cfg.heads.is_multiple_of(kv) {
        return Err(invalid(format!("kv_heads ({kv}) must divide heads ({})", cfg.heads)));
    }
    let group = cfg.heads / kv;
    let retrieval: Vec<u32> = cfg.retrieval_heads.clone().unwrap_or_default();
    if let Some(bad) = retrieval.iter().find(|r| **r >= kv) {
        return Err(invalid(format!("retrieval head {bad} is out of range 0..{kv}")));
    }
    let streaming: Vec<u32> = (0..kv).filter(|h| !retrieval.contains(h)).collect();
    let ad = AttnDims::new(&mut g, cfg.heads, kv, head_dim, head_dim)?;
    let mut q = g.input("q", DType::F32, &[ad.b, ad.t, ad.h, ad.d])?;
    let mut k = g.input("k", DType::F32, &[ad.b, ad.t, ad.hkv, ad.d])?;
    let v = g.input("v", DType::F32, &[ad.b, ad.t, ad.hkv, ad.dv])?;
    if let Some(r) = &cfg.rope {
        let off = offset_input(&mut g)?;
        q = rope(&mut g, q, &ad, r.theta, off)?;
        k = rope(&mut g, k, &ad, r.theta, off)?;
    }
    let scale = scale_or_default(cfg, head_dim);
    let zeros =
        g.add1(OpKind::Const { value: 0.0, dtype: DType::F32, shape: vec![ad.b, ad.t, ad.h, ad.dv] }, &[], "")?;
    let mut o = zeros;
    for (prefix, heads) in [("r_", &retrieval), ("s_", &streaming)] {
        if heads.is_empty() {
            continue;
        }
        let hk = g.dim_const(&format!("{prefix}Hkv"), heads.len() as u64)?;
        let hq = g.dim_const(&format!("{prefix}H"), (heads.len() as u32 * group) as u64)?;
        let kv_idx = g.add1(OpKind::Indices { dim: hk, values: heads.clone() }, &[], &format!("{prefix}kv_heads"))?;
        let q_heads: Vec<u32> = heads.iter().flat_map(|h| (h * group)..((h + 1) * group)).collect();
        let q_idx = g.add1(OpKind::Indices { dim: hq, values: q_heads }, &[], &format!("{prefix}q_heads"))?;
        let qb = g.add1(OpKind::Gather { along: ad.h, into: hq }, &[q, q_idx], "")?;
        let kb = g.add1(OpKind::Gather { along: ad.hkv, into: hk }, &[k, kv_idx], "")?;
        let vb = g.add1(OpKind::Gather { along: ad.hkv, into: hk }, &[v, kv_idx], "")?;
        let sub = AttnDims { b: ad.b, t: ad.t, h: hq, hkv: hk, d: ad.d, dv: ad.dv };
        let spec = if prefix == "r_" {
            AttnSpec { scale, window: None, sinks: 0, cache_prefix: prefix, meta: None }
        } else {
            AttnSpec {
                scale,
                window: Some(cfg.window.unwrap_or(256)),
                sinks: cfg.sinks.unwrap_or(128),
                cache_prefix: prefix,
                meta: None,
            }
        };
        let (ob, _) = attend(&mut g, &sub, qb, kb, vb, &spec)?;
        o = g.add1(OpKind::Scatter { along: ad.h, into: hq }, &[o, q_idx, ob], "")?;
    }
    let o = g.named(o, "o");
    g.output_as("o", o)?;
    Ok(g)
}

/// MoM (mixture of memories): a router `softmax(router)` over N memories picks
/// the top-k per token (ties to the lower index) and renormalizes their weights;
/// each memory (its own `k`, `v`, gates and state) is updated only on the steps
/// routed to it; outputs are weighted and summed, plus a shared memory that
/// sees every token. Inputs `k [B, T, M, H, Dk]`, `v [B, T, M, H, Dv]` (and
/// per-memory gates `[B, T, M, H]`) with `M = N (+1 shared, last)`; state
/// `[B, M, H, Dk, Dv]`.
pub fn mom(name: &str, cfg: &MixerConfig) -> Res<Graph> {
    let mut g = Graph::new(name);
    let hd = Heads::recurrent(&mut g, cfg)?;
    let n = cfg.memories.ok_or_else(|| missing("memories"))?;
    let top = cfg.top_k.ok_or_else(|| missing("top_k"))?;
    if n == 0 || top == 0 || top > n {
        return Err(invalid(format!("top_k ({top}) must be between 1 and memories ({n})")));
    }
    let shared = cfg.shared_memory.unwrap_or(false);
    let memory = cfg.memory.unwrap_or(MemoryKind::LinearAttn);
    let m_total = n + shared as u32;
    let nd = g.dim_const("N", n as u64)?;
    let kd = g.dim_const("Ktop", top as u64)?;
    let md = if shared { g.dim_const("M", m_total as u64)? } else { nd };
    let one = g.dim_const("One", 1)?;
    let mut q = g.input("q", DType::F32, &hd.act(hd.dk))?;
    let k_all = g.input("k", DType::F32, &[hd.b, hd.t, md, hd.h, hd.dk])?;
    let v_all = g.input("v", DType::F32, &[hd.b, hd.t, md, hd.h, hd.dv])?;
    let router = g.input("router", DType::F32, &[hd.b, hd.t, nd])?;
    let (transition, g_all, beta_all) = match memory {
        MemoryKind::LinearAttn => (Transition::Identity, None, None),
        MemoryKind::SimpleGla => {
            (Transition::ScalarDecay, Some(g.input("g", DType::F32, &[hd.b, hd.t, md, hd.h])?), None)
        }
        MemoryKind::GatedDeltanet => (
            Transition::GatedDelta,
            Some(g.input("g", DType::F32, &[hd.b, hd.t, md, hd.h])?),
            Some(g.input("beta", DType::F32, &[hd.b, hd.t, md, hd.h])?),
        ),
    };
    if memory == MemoryKind::GatedDeltanet {
        q = l2norm(&mut g, q, hd.dk)?;
    }
    let s0 = g.input_opt("initial_state", DType::F32, &[hd.b, md, hd.h, hd.dk, hd.dv], true)?;
    // Routing weights, dense over the N memories (zero where not routed).
    let probs = g.add1(OpKind::Softmax { dim: nd }, &[router], "probs")?;
    let tk = g.add(OpKind::TopK { along: nd, into: kd }, &[probs], &["top_p", "top_i"])?;
    let total = g.add1(OpKind::Reduce { func: ReduceFn::Sum, dims: vec![kd] }, &[tk[0]], "")?;
    let w_top = g.binary(BinaryFn::Div, tk[0], total)?;
    let zeros = g.add1(OpKind::Const { value: 0.0, dtype: DType::F32, shape: vec![hd.b, hd.t, nd] }, &[], "")?;
    let ones_k = g.add1(OpKind::Const { value: 1.0, dtype: DType::F32, shape: vec![hd.b, hd.t, kd] }, &[], "")?;
    let weights = g.add1(OpKind::Scatter { along: nd, into: kd }, &[zeros, tk[1], w_top], "route_w")?;
    let routed = g.add1(OpKind::Scatter { along: nd, into: kd }, &[zeros, tk[1], ones_k], "routed")?;
    let scale = scale_or_default(cfg, cfg.dk.unwrap_or(1));
    let pick = |g: &mut Graph, x: ValueId, axis: usize, i: u32, shape: Vec<DimId>| -> Res<ValueId> {
        let s = g.add1(OpKind::Slice { axis, start: i as u64, dim: one }, &[x], "")?;
        g.add1(OpKind::Reshape { shape }, &[s], "")
    };
    let mut o: Option<ValueId> = None;
    let mut finals = Vec::new();
    for i in 0..m_total {
        let is_shared = i == n;
        let k_i = pick(&mut g, k_all, 2, i, hd.act(hd.dk).to_vec())?;
        let v_i = pick(&mut g, v_all, 2, i, hd.act(hd.dv).to_vec())?;
        let mask = if is_shared { None } else { Some(pick(&mut g, routed, 2, i, vec![hd.b, hd.t])?) };
        let gate_on = |g: &mut Graph, x: ValueId| -> Res<ValueId> {
            match mask {
                None => Ok(x),
                Some(m) => g.binary(BinaryFn::Mul, x, m),
            }
        };
        let mut ops = vec![q];
        match memory {
            MemoryKind::LinearAttn => {
                ops.push(gate_on(&mut g, k_i)?);
                ops.push(v_i);
            }
            MemoryKind::SimpleGla => {
                ops.push(gate_on(&mut g, k_i)?);
                ops.push(v_i);
                let g_i = pick(&mut g, g_all.unwrap_or(q), 2, i, hd.per_step().to_vec())?;
                ops.push(gate_on(&mut g, g_i)?);
            }
            MemoryKind::GatedDeltanet => {
                let k_n = l2norm(&mut g, k_i, hd.dk)?;
                ops.push(k_n);
                ops.push(v_i);
                let g_i = pick(&mut g, g_all.unwrap_or(q), 2, i, hd.per_step().to_vec())?;
                ops.push(gate_on(&mut g, g_i)?);
                let b_i = pick(&mut g, beta_all.unwrap_or(q), 2, i, hd.per_step().to_vec())?;
                ops.push(gate_on(&mut g, b_i)?);
            }
        }
        ops.push(pick(&mut g, s0, 1, i, hd.state().to_vec())?);
        let res = g.add(
            OpKind::LinearRecurrence(rec(transition, scale)),
            &ops,
            &[&format!("o_m{i}"), &format!("state_m{i}")],
        )?;
        let contrib = if is_shared {
            res[0]
        } else {
            let w_i = pick(&mut g, weights, 2, i, vec![hd.b, hd.t])?;
            g.binary(BinaryFn::Mul, res[0], w_i)?
        };
        o = Some(match o {
            None => contrib,
            Some(acc) => g.binary(BinaryFn::Add, acc, contrib)?,
        });
        finals.push(g.add1(OpKind::Reshape { shape: vec![hd.b, one, hd.h, hd.dk, hd.dv] }, &[res[1]], "")?);
    }
    let o = o.ok_or_else(|| invalid("no memories".into()))?;
    let o = g.add1(OpKind::Permute { shape: hd.act(hd.dv).to_vec() }, &[o], "o")?;
    g.output_as("o", o)?;
    let fs = g.add1(OpKind::Concat { axis: 1, dim: md }, &finals, "final_state")?;
    g.output_as("final_state", fs)?;
    Ok(g)
}
