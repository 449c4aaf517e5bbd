//! Pieces shared by the mixer builders.

use crate::dims::{DimId, SizeExpr};
use crate::dtype::DType;
use crate::error::IrError;
use crate::graph::{Graph, ValueId};
use crate::model::{FeatureMap, GateActivation, GateConfig, MixerConfig, OutputGate};
use crate::ops::*;

pub type Res<T> = Result<T, IrError>;

pub fn missing(key: &str) -> IrError {
    IrError::Invalid(format!("key `{key}` is required"))
}

/// The dims every head-structured mixer has: `B`, `T` free; `H`, `Dk`, `Dv` fixed.
pub struct Heads {
    pub b: DimId,
    pub t: DimId,
    pub h: DimId,
    pub dk: DimId,
    pub dv: DimId,
}

impl Heads {
    pub fn recurrent(g: &mut Graph, cfg: &MixerConfig) -> Res<Heads> {
        let dk = cfg.dk.ok_or_else(|| missing("dk"))?;
        let dv = cfg.dv.ok_or_else(|| missing("dv"))?;
        let b = g.dim("B")?;
        let t = g.dim("T")?;
        let h = g.dim_const("H", cfg.heads as u64)?;
        let dkd = g.dim_const("Dk", dk as u64)?;
        let dvd = g.dim_const("Dv", dv as u64)?;
        Ok(Heads { b, t, h, dk: dkd, dv: dvd })
    }

    pub fn act(&self, d: DimId) -> [DimId; 4] {
        [self.b, self.t, self.h, d]
    }

    pub fn per_step(&self) -> [DimId; 3] {
        [self.b, self.t, self.h]
    }

    pub fn state(&self) -> [DimId; 4] {
        [self.b, self.h, self.dk, self.dv]
    }
}

/// `s` in `o = Sᵀ(s q)`: the table's `scale`, else `dk^-1/2`.
pub fn scale_or_default(cfg: &MixerConfig, dk: u32) -> f64 {
    cfg.scale.unwrap_or_else(|| (dk as f64).powf(-0.5))
}

/// Applies a feature map along the head dim.
pub fn feature_map(g: &mut Graph, x: ValueId, fm: Option<FeatureMap>, dim: DimId) -> Res<ValueId> {
    match fm.unwrap_or(FeatureMap::Identity) {
        FeatureMap::Identity => Ok(x),
        FeatureMap::EluPlusOne => g.unary(UnaryFn::EluPlusOne, x),
        FeatureMap::Relu => g.unary(UnaryFn::Relu, x),
        FeatureMap::Softmax => g.add1(OpKind::Softmax { dim }, &[x], ""),
    }
}

/// L2 normalization over the head dim, with fla's epsilon.
pub fn l2norm(g: &mut Graph, x: ValueId, dim: DimId) -> Res<ValueId> {
    g.add1(OpKind::Normalize { kind: NormKind::L2, dim, eps: 1e-6 }, &[x], "")
}

/// Turns raw gate values into log decays (`≤ 0`) per the gate table.
/// `per_head_shape` is `[H]` for the Mamba parameters.
pub fn gate_activation(
    g: &mut Graph,
    raw: ValueId,
    gate: Option<&GateConfig>,
    hd: DimId,
    default: GateActivation,
) -> Res<ValueId> {
    let act = gate.map(|c| c.activation).unwrap_or(default);
    match act {
        GateActivation::None => Ok(raw),
        GateActivation::Logsigmoid => {
            let ls = g.unary(UnaryFn::LogSigmoid, raw)?;
            let tau = gate.and_then(|c| c.tau).unwrap_or(1.0);
            if tau == 1.0 {
                Ok(ls)
            } else {
                g.scale_by(ls, 1.0 / tau)
            }
        }
        GateActivation::NegSoftplus => {
            let sp = g.unary(UnaryFn::Softplus, raw)?;
            g.unary(UnaryFn::Neg, sp)
        }
        GateActivation::Mamba => {
            // g = −exp(A_log) · softplus(raw + dt_bias), A_log and dt_bias per head.
            let a_log = g.input("A_log", DType::F32, &[hd])?;
            let dt_bias = g.input("dt_bias", DType::F32, &[hd])?;
            let shifted = g.binary(BinaryFn::Add, raw, dt_bias)?;
            let dt = g.unary(UnaryFn::Softplus, shifted)?;
            let a = g.unary(UnaryFn::Exp, a_log)?;
            let neg_a = g.unary(UnaryFn::Neg, a)?;
            g.binary(BinaryFn::Mul, dt, neg_a)
        }
    }
}

/// A short causal depthwise convolution (with SiLU) over the channels of an
/// activation `[B, T, H, D]`, its tail carried as `{name}_conv_state [B, K−1, H·D]`.
/// Returns the convolved activation and the new tail.
pub fn short_conv(g: &mut Graph, x: ValueId, name: &str, kernel: u32, hd: &Heads, d: DimId) -> Res<ValueId> {
    let ch_name = format!("C_{name}");
    let ch = g.dim_expr(&ch_name, SizeExpr::times(SizeExpr::Dim(hd.h), SizeExpr::Dim(d)))?;
    let taps = g.dim_const_or_get("K", kernel as u64)?;
    let tail_dim = match g.dims.lookup("Km1") {
        Some(d) => d,
        None => g.dim_expr("Km1", SizeExpr::minus(SizeExpr::Dim(taps), SizeExpr::Const(1)))?,
    };
    let flat = g.add1(OpKind::Reshape { shape: vec![hd.b, hd.t, ch] }, &[x], &format!("{name}_flat"))?;
    let w = g.input(&format!("{name}_conv_weight"), DType::F32, &[ch, taps])?;
    let tail = g.input_opt(&format!("{name}_conv_state"), DType::F32, &[hd.b, tail_dim, ch], true)?;
    let kind = OpKind::CausalConv1d { time: hd.t, taps, tail: tail_dim, has_tail: true, silu: true };
    let r = g.add(kind, &[flat, w, tail], &[&format!("{name}_conv"), &format!("{name}_conv_state_out")])?;
    g.output_as(&format!("{name}_conv_state"), r[1])?;
    g.add1(OpKind::Reshape { shape: vec![hd.b, hd.t, hd.h, d] }, &[r[0]], &format!("{name}_c"))
}

/// Declares the initial-state inputs a recurrence takes (all optional) and returns them.
pub fn initial_states(g: &mut Graph, hd: &Heads, transition: Transition, normalize: bool) -> Res<Vec<ValueId>> {
    let mut v = vec![g.input_opt("initial_state", DType::F32, &hd.state(), true)?];
    if transition == Transition::Mlstm {
        v.push(g.input_opt("initial_n", DType::F32, &[hd.b, hd.h, hd.dk], true)?);
        v.push(g.input_opt("initial_m", DType::F32, &[hd.b, hd.h], true)?);
    } else if normalize {
        v.push(g.input_opt("initial_z", DType::F32, &[hd.b, hd.h, hd.dk], true)?);
    }
    Ok(v)
}

/// Adds the recurrence and declares its outputs (`o`, `final_state`, ...).
pub fn recurrence_outputs(g: &mut Graph, r: Recurrence, operands: &[ValueId]) -> Res<Vec<ValueId>> {
    let names = OpKind::LinearRecurrence(r).result_names();
    let res = g.add(OpKind::LinearRecurrence(r), operands, &names)?;
    for (n, v) in names.iter().zip(&res) {
        g.output_as(n, *v)?;
    }
    Ok(res)
}

/// A recurrence attribute set with the usual defaults.
pub fn rec(transition: Transition, scale: f64) -> Recurrence {
    Recurrence { transition, scale, normalize: false, eps: 0.0, has_initial: true }
}

/// Per-head RMSNorm of the output `o` over its head dim, times a learned weight
/// `o_norm_weight` (fla's `FusedRMSNormGated` without the gate, which is
/// [`output_gate`]); `eps` inside the square root, 1e-5 unless the table says.
pub fn output_norm(g: &mut Graph, eps: f64) -> Res<()> {
    let Some(pos) = g.outputs.iter().position(|(n, _)| n == "o") else {
        return Err(IrError::Invalid("output_norm needs an output `o`".into()));
    };
    let o = g.outputs[pos].1;
    let Some(&d) = g.ty(o).shape.last() else {
        return Err(IrError::Invalid("output `o` has no head dim".into()));
    };
    g.named(o, "o_raw");
    let normed = g.add1(OpKind::Normalize { kind: NormKind::Rms, dim: d, eps }, &[o], "")?;
    let w = g.input("o_norm_weight", DType::F32, &[d])?;
    let out = g.add1(OpKind::Binary(BinaryFn::Mul), &[normed, w], "o")?;
    g.outputs[pos].1 = out;
    Ok(())
}

/// The output gate `o ← o · act(o_gate)` (after the output norm, as fla's
/// `FusedRMSNormGated` does), with `o_gate` a per-token input of `o`'s shape
/// that the model layer projects from the layer input.
pub fn output_gate(g: &mut Graph, act: OutputGate) -> Res<()> {
    let Some(pos) = g.outputs.iter().position(|(n, _)| n == "o") else {
        return Err(IrError::Invalid("output_gate needs an output `o`".into()));
    };
    let o = g.outputs[pos].1;
    let ty = g.ty(o).clone();
    g.named(o, "o_ungated");
    let gate = g.input("o_gate", ty.dtype, &ty.shape)?;
    let f = match act {
        OutputGate::Swish => UnaryFn::Silu,
        OutputGate::Sigmoid => UnaryFn::Sigmoid,
    };
    let a = g.unary(f, gate)?;
    let out = g.add1(OpKind::Binary(BinaryFn::Mul), &[o, a], "o")?;
    g.outputs[pos].1 = out;
    Ok(())
}
