//! Softmax attention with its KV cache: causal, sliding window, sinks + window,
//! grouped-query heads, RoPE.

use super::common::*;
use crate::dims::{DimId, SizeExpr};
use crate::dtype::DType;
use crate::graph::{Graph, ValueId};
use crate::model::MixerConfig;
use crate::ops::*;

/// Dims of an attention layer.
pub struct AttnDims {
    pub b: DimId,
    pub t: DimId,
    pub h: DimId,
    pub hkv: DimId,
    /// Head dim of queries and keys.
    pub d: DimId,
    /// Head dim of values.
    pub dv: DimId,
}

impl AttnDims {
    pub fn new(g: &mut Graph, heads: u32, kv_heads: u32, head_dim: u32, v_dim: u32) -> Res<AttnDims> {
        let b = g.dim("B")?;
        let t = g.dim("T")?;
        let h = g.dim_const("H", heads as u64)?;
        let hkv = if kv_heads == heads { h } else { g.dim_const("Hkv", kv_heads as u64)? };
        let d = g.dim_const("D", head_dim as u64)?;
        let dv = if v_dim == head_dim { d } else { g.dim_const("Dv", v_dim as u64)? };
        Ok(AttnDims { b, t, h, hkv, d, dv })
    }
}

/// What one softmax-attention branch does.
pub struct AttnSpec<'a> {
    pub scale: f64,
    pub window: Option<u32>,
    pub sinks: u32,
    /// Prefix of the cache inputs and outputs (`""` → `k_cache`, `v_cache`).
    pub cache_prefix: &'a str,
    /// Learned tokens placed before the cache, always visible (Lizard's meta memory):
    /// `(meta_k, meta_v)` of shape `[M, Hkv, D]`.
    pub meta: Option<(ValueId, ValueId, DimId)>,
}

/// RoPE on `x [B, T, *, D]` at positions `offset + t`.
pub fn rope(g: &mut Graph, x: ValueId, ad: &AttnDims, theta: f64, offset: ValueId) -> Res<ValueId> {
    g.add1(OpKind::Rope { time: ad.t, dim: ad.d, theta }, &[x, offset], "")
}

/// The position of the first new token (an optional i32 scalar input `offset`).
pub fn offset_input(g: &mut Graph) -> Res<ValueId> {
    match g.value_by_name("offset") {
        Some(v) => Ok(v),
        None => g.input_opt("offset", DType::I32, &[], true),
    }
}

/// One attention branch over the new tokens and the cache: appends the new
/// keys and values, attends, and outputs the retained cache. Returns `(o, lse)`.
pub fn attend(
    g: &mut Graph,
    ad: &AttnDims,
    q: ValueId,
    k: ValueId,
    v: ValueId,
    spec: &AttnSpec,
) -> Res<(ValueId, ValueId)> {
    let p = spec.cache_prefix;
    let s = g.dim(&format!("S{p}"))?;
    let kc_name = format!("{p}k_cache");
    let vc_name = format!("{p}v_cache");
    let kc = g.input_opt(&kc_name, DType::F32, &[ad.b, s, ad.hkv, ad.d], true)?;
    let vc = g.input_opt(&vc_name, DType::F32, &[ad.b, s, ad.hkv, ad.dv], true)?;
    let sk = g.dim_expr(&format!("Sk{p}"), SizeExpr::plus(SizeExpr::Dim(s), SizeExpr::Dim(ad.t)))?;
    let keys = g.add1(OpKind::KvAppend { dim: sk }, &[kc, k], &format!("{p}keys"))?;
    let vals = g.add1(OpKind::KvAppend { dim: sk }, &[vc, v], &format!("{p}values"))?;
    let (att_k, att_v, sinks) = match spec.meta {
        None => (keys, vals, spec.sinks),
        Some((mk, mv, m)) => {
            let total = g.dim_expr(&format!("Sm{p}"), SizeExpr::plus(SizeExpr::Dim(m), SizeExpr::Dim(sk)))?;
            let mkb = g.add1(OpKind::Broadcast { shape: vec![ad.b, m, ad.hkv, ad.d] }, &[mk], "")?;
            let mvb = g.add1(OpKind::Broadcast { shape: vec![ad.b, m, ad.hkv, ad.dv] }, &[mv], "")?;
            let ck = g.add1(OpKind::Concat { axis: 1, dim: total }, &[mkb, keys], "")?;
            let cv = g.add1(OpKind::Concat { axis: 1, dim: total }, &[mvb, vals], "")?;
            let m_len = g.dims.const_size(m).unwrap_or(0) as u32;
            (ck, cv, spec.sinks + m_len)
        }
    };
    let mask = Mask { causal: true, window: spec.window, sinks: if spec.window.is_some() { sinks } else { 0 } };
    let r = g.add(
        OpKind::Attention { scale: spec.scale, mask },
        &[q, att_k, att_v],
        &[&format!("{p}o"), &format!("{p}lse")],
    )?;
    // What the cache keeps for the next call: everything, the last w−1 rows, or
    // the sinks and the last w−1 rows.
    let (kc_out, vc_out) = match spec.window {
        None => (keys, vals),
        Some(w) => {
            let keep = w.saturating_sub(1);
            let (kind, total) = if spec.sinks > 0 {
                let d = g.dim_expr(
                    &format!("Sc{p}"),
                    SizeExpr::min_of(SizeExpr::Dim(sk), SizeExpr::Const(spec.sinks as u64 + keep as u64)),
                )?;
                (OpKind::SinkWindowRetain { sinks: spec.sinks, window: keep, dim: d }, d)
            } else {
                let d =
                    g.dim_expr(&format!("Sc{p}"), SizeExpr::min_of(SizeExpr::Dim(sk), SizeExpr::Const(keep as u64)))?;
                (OpKind::WindowRetain { keep, dim: d }, d)
            };
            let _ = total;
            let kr = g.add1(kind.clone(), &[keys], &format!("{p}k_cache_out"))?;
            let vr = g.add1(kind, &[vals], &format!("{p}v_cache_out"))?;
            (kr, vr)
        }
    };
    g.output_as(&kc_name, kc_out)?;
    g.output_as(&vc_name, vc_out)?;
    Ok((r[0], r[1]))
}

pub fn attention(name: &str, cfg: &MixerConfig) -> Res<Graph> {
    let mut g = Graph::new(name);
    let head_dim = cfg.head_dim.ok_or_else(|| missing("head_dim"))?;
    let v_dim = cfg.dv.unwrap_or(head_dim);
    let ad = AttnDims::new(&mut g, cfg.heads, cfg.kv_heads.unwrap_or(cfg.heads), head_dim, v_dim)?;
    let mut q = g.input("q", DType::F32, &[ad.b, ad.t, ad.h, ad.d])?;
    let mut k = g.input("k", DType::F32, &[ad.b, ad.t, ad.hkv, ad.d])?;
    let v = g.input("v", DType::F32, &[ad.b, ad.t, ad.hkv, ad.dv])?;
    if let Some(r) = &cfg.rope {
        let off = offset_input(&mut g)?;
        q = rope(&mut g, q, &ad, r.theta, off)?;
        k = rope(&mut g, k, &ad, r.theta, off)?;
    }
    let spec = AttnSpec {
        scale: scale_or_default(cfg, head_dim),
        window: cfg.window,
        sinks: cfg.sinks.unwrap_or(0),
        cache_prefix: "",
        meta: None,
    };
    let (o, _) = attend(&mut g, &ad, q, k, v, &spec)?;
    let o = g.named(o, "o");
    g.output_as("o", o)?;
    Ok(g)
}
