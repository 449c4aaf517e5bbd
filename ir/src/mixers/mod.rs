//! Builders of every mixer's graph from its `[mixer.NAME]` table.
//!
//! A mixer's graph starts at the projected `q, k, v` and the gate values or
//! pre-activations, and holds everything a model configures between projection
//! and output: gate activations, feature maps, L2 norms, short convolutions,
//! RoPE, the recurrence or attention, the cache updates, and branch mixing.
//! Input and output names follow flash-linear-attention's arguments (`q`, `k`,
//! `v`, `g`, `beta`, `i`, `f`, `initial_state`, ... → `o`, `final_state`, ...).
//! Every recurrent graph takes an optional initial state (zeros when absent), so
//! one graph serves a fresh prefill, a continued prefill and a decode step
//! (`T = 1`).

mod attention;
mod common;
mod hybrid;
pub mod inputs;
mod recurrent;

pub use inputs::random_inputs;

use crate::error::IrError;
use crate::graph::Graph;
use crate::model::{MixerConfig, MixerKind};

/// Builds the graph of one mixer. The config should have passed validation;
/// anything still inconsistent comes back as an error naming the mixer.
pub fn build(name: &str, cfg: &MixerConfig) -> Result<Graph, IrError> {
    let built = match cfg.kind {
        MixerKind::LinearAttn => recurrent::linear_attn(name, cfg),
        MixerKind::Retnet => recurrent::retnet(name, cfg),
        MixerKind::SimpleGla => recurrent::simple_gla(name, cfg),
        MixerKind::Mamba2 => recurrent::mamba2(name, cfg),
        MixerKind::Gla => recurrent::gla(name, cfg),
        MixerKind::Mlstm => recurrent::mlstm(name, cfg),
        MixerKind::Deltanet => recurrent::deltanet(name, cfg),
        MixerKind::GatedDeltanet => recurrent::gated_deltanet(name, cfg),
        MixerKind::Attention => attention::attention(name, cfg),
        MixerKind::Liger => hybrid::liger(name, cfg),
        MixerKind::Lizard => hybrid::lizard(name, cfg),
        MixerKind::Duo => hybrid::duo(name, cfg),
        MixerKind::Mom => hybrid::mom(name, cfg),
    };
    let with_norm = built.and_then(|mut g| {
        if cfg.output_norm.unwrap_or(false) {
            common::output_norm(&mut g, cfg.norm_eps.unwrap_or(1e-5))?;
        }
        if let Some(act) = cfg.output_gate {
            common::output_gate(&mut g, act)?;
        }
        Ok(g)
    });
    with_norm.map_err(|e| IrError::Invalid(format!("mixer `{name}` ({}): {e}", cfg.kind.name())))
}

/// The input a mixer output feeds on the next call of the same mixer: a
/// final state becomes the initial state, a cache or convolution tail keeps
/// its name; `o` feeds nothing.
pub fn carried_input(output: &str) -> Option<String> {
    match output {
        "o" => None,
        "final_state" => Some("initial_state".into()),
        "final_n" => Some("initial_n".into()),
        "final_m" => Some("initial_m".into()),
        "final_z" => Some("initial_z".into()),
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests;
