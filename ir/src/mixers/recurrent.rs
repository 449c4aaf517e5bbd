//! The linear-recurrence mixers: linear attention, RetNet, simple GLA, Mamba2,
//! GLA, mLSTM, DeltaNet and Gated DeltaNet.

use super::common::*;
use crate::dtype::DType;
use crate::graph::{Graph, ValueId};
use crate::model::{BetaActivation, GateActivation, MixerConfig};
use crate::ops::*;

/// Inputs `q, k, v` (`[B, T, H, Dk|Dv]`), with the table's feature map and, where
/// it asks, L2 norm and short convolution applied to `q` and `k` (and `v`).
fn qkv(g: &mut Graph, hd: &Heads, cfg: &MixerConfig) -> Res<(ValueId, ValueId, ValueId)> {
    let mut q = g.input("q", DType::F32, &hd.act(hd.dk))?;
    let mut k = g.input("k", DType::F32, &hd.act(hd.dk))?;
    let mut v = g.input("v", DType::F32, &hd.act(hd.dv))?;
    if let Some(kernel) = cfg.short_conv {
        q = short_conv(g, q, "q", kernel, hd, hd.dk)?;
        k = short_conv(g, k, "k", kernel, hd, hd.dk)?;
        v = short_conv(g, v, "v", kernel, hd, hd.dv)?;
    }
    q = feature_map(g, q, cfg.feature_map, hd.dk)?;
    k = feature_map(g, k, cfg.feature_map, hd.dk)?;
    if cfg.qk_norm.unwrap_or(false) {
        q = l2norm(g, q, hd.dk)?;
        k = l2norm(g, k, hd.dk)?;
    }
    Ok((q, k, v))
}

fn dk_of(cfg: &MixerConfig) -> Res<u32> {
    cfg.dk.ok_or_else(|| missing("dk"))
}

pub fn linear_attn(name: &str, cfg: &MixerConfig) -> Res<Graph> {
    let mut g = Graph::new(name);
    let hd = Heads::recurrent(&mut g, cfg)?;
    let (q, k, v) = qkv(&mut g, &hd, cfg)?;
    let normalize = cfg.normalizer.unwrap_or(false);
    let mut r = rec(Transition::Identity, scale_or_default(cfg, dk_of(cfg)?));
    r.normalize = normalize;
    r.eps = if normalize { 1e-6 } else { 0.0 };
    let mut ops = vec![q, k, v];
    ops.extend(initial_states(&mut g, &hd, Transition::Identity, normalize)?);
    recurrence_outputs(&mut g, r, &ops)?;
    Ok(g)
}

pub fn retnet(name: &str, cfg: &MixerConfig) -> Res<Graph> {
    let mut g = Graph::new(name);
    let hd = Heads::recurrent(&mut g, cfg)?;
    let (q, k, v) = qkv(&mut g, &hd, cfg)?;
    // γ_h = 1 − 2^(−5−h): a fixed decay per head, in log space.
    let h_idx = g.add1(OpKind::Iota { dim: hd.h }, &[], "head")?;
    let hf = g.add1(OpKind::Cast(DType::F32), &[h_idx], "")?;
    let minus5 = g.scalar(-5.0)?;
    let e = g.binary(BinaryFn::Sub, minus5, hf)?;
    let two = g.scalar(2.0)?;
    let p = g.binary(BinaryFn::Pow, two, e)?;
    let one = g.scalar(1.0)?;
    let gamma = g.binary(BinaryFn::Sub, one, p)?;
    let log_gamma = g.unary(UnaryFn::Log, gamma)?;
    let gate = g.add1(OpKind::Broadcast { shape: hd.per_step().to_vec() }, &[log_gamma], "g")?;
    let mut ops = vec![q, k, v, gate];
    ops.extend(initial_states(&mut g, &hd, Transition::ScalarDecay, false)?);
    recurrence_outputs(&mut g, rec(Transition::ScalarDecay, scale_or_default(cfg, dk_of(cfg)?)), &ops)?;
    Ok(g)
}

pub fn simple_gla(name: &str, cfg: &MixerConfig) -> Res<Graph> {
    let mut g = Graph::new(name);
    let hd = Heads::recurrent(&mut g, cfg)?;
    let (q, k, v) = qkv(&mut g, &hd, cfg)?;
    let raw = g.input("g", DType::F32, &hd.per_step())?;
    let gate = gate_activation(&mut g, raw, cfg.gate.as_ref(), hd.h, GateActivation::None)?;
    let mut ops = vec![q, k, v, gate];
    ops.extend(initial_states(&mut g, &hd, Transition::ScalarDecay, false)?);
    recurrence_outputs(&mut g, rec(Transition::ScalarDecay, scale_or_default(cfg, dk_of(cfg)?)), &ops)?;
    Ok(g)
}

pub fn gla(name: &str, cfg: &MixerConfig) -> Res<Graph> {
    let mut g = Graph::new(name);
    let hd = Heads::recurrent(&mut g, cfg)?;
    let (q, k, v) = qkv(&mut g, &hd, cfg)?;
    let raw = g.input("g", DType::F32, &hd.act(hd.dk))?;
    let gate = gate_activation(&mut g, raw, cfg.gate.as_ref(), hd.h, GateActivation::None)?;
    let mut ops = vec![q, k, v, gate];
    ops.extend(initial_states(&mut g, &hd, Transition::KeyDecay, false)?);
    recurrence_outputs(&mut g, rec(Transition::KeyDecay, scale_or_default(cfg, dk_of(cfg)?)), &ops)?;
    Ok(g)
}

pub fn mlstm(name: &str, cfg: &MixerConfig) -> Res<Graph> {
    let mut g = Graph::new(name);
    let hd = Heads::recurrent(&mut g, cfg)?;
    let (q, k, v) = qkv(&mut g, &hd, cfg)?;
    let mut i = g.input("i", DType::F32, &hd.per_step())?;
    let mut f = g.input("f", DType::F32, &hd.per_step())?;
    if let Some(cap) = cfg.gate_soft_cap {
        // cap · tanh(x / cap), as xLSTM-7B does to its gate pre-activations.
        for x in [&mut i, &mut f] {
            let scaled = g.scale_by(*x, 1.0 / cap)?;
            let th = g.unary(UnaryFn::Tanh, scaled)?;
            *x = g.scale_by(th, cap)?;
        }
    }
    let mut r = rec(Transition::Mlstm, scale_or_default(cfg, dk_of(cfg)?));
    r.eps = 1e-6;
    let mut ops = vec![q, k, v, i, f];
    ops.extend(initial_states(&mut g, &hd, Transition::Mlstm, false)?);
    recurrence_outputs(&mut g, r, &ops)?;
    Ok(g)
}

fn delta_family(name: &str, cfg: &MixerConfig, gated: bool) -> Res<Graph> {
    let mut g = Graph::new(name);
    let hd = Heads::recurrent(&mut g, cfg)?;
    let (q, k, v) = qkv(&mut g, &hd, cfg)?;
    let mut beta = g.input("beta", DType::F32, &hd.per_step())?;
    if cfg.beta_activation == Some(BetaActivation::Sigmoid) {
        beta = g.unary(UnaryFn::Sigmoid, beta)?;
    }
    let (transition, mut ops) = if gated {
        let raw = g.input("g", DType::F32, &hd.per_step())?;
        let gate = gate_activation(&mut g, raw, cfg.gate.as_ref(), hd.h, GateActivation::None)?;
        (Transition::GatedDelta, vec![q, k, v, gate, beta])
    } else {
        (Transition::Delta, vec![q, k, v, beta])
    };
    ops.extend(initial_states(&mut g, &hd, transition, false)?);
    recurrence_outputs(&mut g, rec(transition, scale_or_default(cfg, dk_of(cfg)?)), &ops)?;
    Ok(g)
}

pub fn deltanet(name: &str, cfg: &MixerConfig) -> Res<Graph> {
    delta_family(name, cfg, false)
}

pub fn gated_deltanet(name: &str, cfg: &MixerConfig) -> Res<Graph> {
    delta_family(name, cfg, true)
}

/// Mamba2 (SSD): `x [B, T, H, P]`, `dt [B, T, H]`, `b, c [B, T, G, N]` shared by the
/// heads of a group; `Δ = softplus(dt + dt_bias)`, `g = Δ·(−exp(A_log))`,
/// recurrence over `q = C`, `k = B`, `v = Δ x` with scale 1, plus `D_skip · x`.
/// Here `dk` is the state size N and `dv` the head dim P.
pub fn mamba2(name: &str, cfg: &MixerConfig) -> Res<Graph> {
    let mut g = Graph::new(name);
    let hd = Heads::recurrent(&mut g, cfg)?;
    let groups = cfg.groups.unwrap_or(1);
    if groups == 0 || !cfg.heads.is_multiple_of(groups) {
        return Err(crate::error::IrError::Invalid(format!("groups ({groups}) must divide heads ({})", cfg.heads)));
    }
    let gd = g.dim_const("G", groups as u64)?;
    let rd = g.dim_const("R", (cfg.heads / groups) as u64)?;
    let mut x = g.input("x", DType::F32, &hd.act(hd.dv))?;
    let dt = g.input("dt", DType::F32, &hd.per_step())?;
    let mut bm = g.input("b", DType::F32, &[hd.b, hd.t, gd, hd.dk])?;
    let mut cm = g.input("c", DType::F32, &[hd.b, hd.t, gd, hd.dk])?;
    if let Some(kernel) = cfg.short_conv {
        x = short_conv(&mut g, x, "x", kernel, &hd, hd.dv)?;
        let gh = Heads { b: hd.b, t: hd.t, h: gd, dk: hd.dk, dv: hd.dv };
        bm = short_conv(&mut g, bm, "b", kernel, &gh, hd.dk)?;
        cm = short_conv(&mut g, cm, "c", kernel, &gh, hd.dk)?;
    }
    let a_log = g.input("A_log", DType::F32, &[hd.h])?;
    let dt_bias = g.input("dt_bias", DType::F32, &[hd.h])?;
    let d_skip = g.input("D", DType::F32, &[hd.h])?;
    let shifted = g.binary(BinaryFn::Add, dt, dt_bias)?;
    let delta = g.unary(UnaryFn::Softplus, shifted)?;
    let a = g.unary(UnaryFn::Exp, a_log)?;
    let neg_a = g.unary(UnaryFn::Neg, a)?;
    let gate = g.binary(BinaryFn::Mul, delta, neg_a)?;
    let v = g.binary(BinaryFn::Mul, x, delta)?;
    let v = g.add1(OpKind::Permute { shape: hd.act(hd.dv).to_vec() }, &[v], "v")?;
    // B and C: one per group, repeated over the group's heads.
    let expand = |g: &mut Graph, m: ValueId, name: &str| -> Res<ValueId> {
        let b5 = g.add1(OpKind::Broadcast { shape: vec![hd.b, hd.t, gd, rd, hd.dk] }, &[m], "")?;
        g.add1(OpKind::Reshape { shape: hd.act(hd.dk).to_vec() }, &[b5], name)
    };
    let k = expand(&mut g, bm, "k")?;
    let q = expand(&mut g, cm, "q")?;
    let gate = g.add1(OpKind::Permute { shape: hd.per_step().to_vec() }, &[gate], "g")?;
    let mut ops = vec![q, k, v, gate];
    ops.extend(initial_states(&mut g, &hd, Transition::ScalarDecay, false)?);
    let r = rec(Transition::ScalarDecay, cfg.scale.unwrap_or(1.0));
    let res = g.add(OpKind::LinearRecurrence(r), &ops, &["y", "final_state"])?;
    let skip = g.binary(BinaryFn::Mul, x, d_skip)?;
    let skip = g.add1(OpKind::Permute { shape: hd.act(hd.dv).to_vec() }, &[skip], "")?;
    let o = g.binary(BinaryFn::Add, res[0], skip)?;
    let o = g.named(o, "o");
    g.output_as("o", o)?;
    g.output_as("final_state", res[1])?;
    Ok(g)
}
