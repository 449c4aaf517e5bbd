//! The schema of model files (`model.toml`): plain serde structs.
//!
//! Unknown keys are rejected everywhere. Which keys a mixer kind accepts or
//! requires is checked after parsing, by `model::validate`.

use serde::de::{self, Unexpected, Visitor};
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::fmt;

/// A whole file: an optional `[model]`, any number of `[mixer.NAME]` tables,
/// and an optional `[runtime]`. A file with mixers only describes mixers.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    pub model: Option<ModelSection>,
    #[serde(default)]
    pub mixer: BTreeMap<String, MixerConfig>,
    pub runtime: Option<RuntimeSection>,
    /// How checkpoint tensor names map to mixc's (absent: mixc's own names).
    pub weights: Option<WeightsSection>,
}

/// `[weights]`: the name map that lets a checkpoint saved under other names
/// load (`names = "hf"` for Hugging Face checkpoints of Llama-style and
/// flash-linear-attention models), plus rules of the file's own. Rules map a
/// checkpoint name to a mixc name; `{i}` stands for a layer index and a
/// trailing `*` for any rest of the name; an empty target drops the tensor.
#[derive(Clone, Debug, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct WeightsSection {
    pub names: Option<WeightNames>,
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
}

/// Built-in weight-name maps.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WeightNames {
    /// mixc's own names (no renaming).
    Mixc,
    /// Hugging Face names: `transformers`' Llama family and
    /// flash-linear-attention's model classes.
    Hf,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub vocab: u32,
    pub d_model: u32,
    pub layers: u32,
    #[serde(default)]
    pub norm: NormChoice,
    /// The MLP after each mixer; absent for blocks without one (Mamba2).
    #[serde(default)]
    pub mlp: Option<MlpConfig>,
    /// Mixer names, repeated over the layers.
    pub pattern: Vec<String>,
    /// Per-layer exceptions: layer index (as a string key) → mixer name.
    #[serde(default)]
    pub overrides: BTreeMap<String, String>,
    #[serde(default)]
    pub tie_embeddings: bool,
    /// Epsilon of the block and final RMSNorms (default 1e-6).
    pub norm_eps: Option<f64>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum NormChoice {
    #[default]
    Rmsnorm,
    Layernorm,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MlpConfig {
    pub kind: MlpKind,
    pub hidden: u32,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MlpKind {
    Swiglu,
    Gelu,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSection {
    #[serde(default)]
    pub state_dtype: Option<String>,
    #[serde(default)]
    pub decode_threshold: Option<u32>,
    /// How attention layers keep their KV caches between calls: `f32` (the
    /// default) or `int8` (symmetric, one f32 scale per group of `kv_group`
    /// values along the head dim; dequantized before each call).
    pub kv_cache: Option<KvCacheDtype>,
    /// Values per int8 scale (default 32, or the head dim if smaller).
    pub kv_group: Option<u32>,
}

/// Storage of attention KV caches between calls.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KvCacheDtype {
    F32,
    Int8,
}

/// The kinds of mixer mixc knows.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum MixerKind {
    LinearAttn,
    Retnet,
    SimpleGla,
    Mamba2,
    Gla,
    Mlstm,
    Deltanet,
    GatedDeltanet,
    Attention,
    Liger,
    Lizard,
    Duo,
    Mom,
}

impl MixerKind {
    pub const ALL: [MixerKind; 13] = [
        MixerKind::LinearAttn,
        MixerKind::Retnet,
        MixerKind::SimpleGla,
        MixerKind::Mamba2,
        MixerKind::Gla,
        MixerKind::Mlstm,
        MixerKind::Deltanet,
        MixerKind::GatedDeltanet,
        MixerKind::Attention,
        MixerKind::Liger,
        MixerKind::Lizard,
        MixerKind::Duo,
        MixerKind::Mom,
    ];

    pub fn name(self) -> &'static str {
        match self {
            MixerKind::LinearAttn => "linear_attn",
            MixerKind::Retnet => "retnet",
            MixerKind::SimpleGla => "simple_gla",
            MixerKind::Mamba2 => "mamba2",
            MixerKind::Gla => "gla",
            MixerKind::Mlstm => "mlstm",
            MixerKind::Deltanet => "deltanet",
            MixerKind::GatedDeltanet => "gated_deltanet",
            MixerKind::Attention => "attention",
            MixerKind::Liger => "liger",
            MixerKind::Lizard => "lizard",
            MixerKind::Duo => "duo",
            MixerKind::Mom => "mom",
        }
    }
}

/// `chunk = "auto"` or `chunk = 64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ChunkChoice {
    #[default]
    Auto,
    Fixed(u32),
}

/// By hand rather than `#[serde(untagged)]`, whose error ("data did not match
/// any variant") would not say what is expected.
impl<'de> Deserialize<'de> for ChunkChoice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ChunkVisitor;
        impl Visitor<'_> for ChunkVisitor {
            type Value = ChunkChoice;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"auto\" or a chunk size (a power of two from 16 to 256)")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ChunkChoice, E> {
                if s == "auto" {
                    Ok(ChunkChoice::Auto)
                } else {
                    Err(E::invalid_value(Unexpected::Str(s), &self))
                }
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<ChunkChoice, E> {
                u32::try_from(n).map(ChunkChoice::Fixed).map_err(|_| E::invalid_value(Unexpected::Signed(n), &self))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<ChunkChoice, E> {
                u32::try_from(n).map(ChunkChoice::Fixed).map_err(|_| E::invalid_value(Unexpected::Unsigned(n), &self))
            }
        }
        d.deserialize_any(ChunkVisitor)
    }
}

impl ChunkChoice {
    /// Until the cost model chooses, `auto` means 64.
    pub fn resolve(self) -> u32 {
        match self {
            ChunkChoice::Auto => 64,
            ChunkChoice::Fixed(c) => c,
        }
    }
}

/// Feature maps applied to `q` and `k` inside the mixer.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FeatureMap {
    Identity,
    EluPlusOne,
    Relu,
    /// Softmax over the head dim (Liger).
    Softmax,
}

/// How a gate's raw values (projected from the layer input) become log decays.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum GateActivation {
    /// `logsigmoid(x) / tau` (GLA).
    Logsigmoid,
    /// `−softplus(x)` (simple GLA as in fla's tests).
    NegSoftplus,
    /// `−exp(A_log) · softplus(x + dt_bias)` (Mamba2, Gated DeltaNet).
    Mamba,
    /// The raw values are log decays already.
    None,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    pub activation: GateActivation,
    /// Temperature of `logsigmoid(x)/tau`.
    pub tau: Option<f64>,
    /// Rank of the low-rank gate projection (a model-layer detail, recorded here).
    pub rank: Option<u32>,
    /// Where the gate is projected from: `x` (the layer input) or `k` (Liger).
    pub from: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RopeConfig {
    pub theta: f64,
}

/// Lizard's two ways of combining the linear and the softmax branch.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Combine {
    /// Separately normalized branches, weighted and summed.
    Separate,
    /// One shared softmax-style normalizer over window and linear memory.
    Shared,
}

/// The memory kind inside a MoM layer.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MemoryKind {
    LinearAttn,
    SimpleGla,
    GatedDeltanet,
}

/// One `[mixer.NAME]` table. Which keys apply depends on `kind`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MixerConfig {
    pub kind: MixerKind,
    pub heads: u32,
    /// Key/query head dim (recurrent kinds).
    pub dk: Option<u32>,
    /// Value head dim (recurrent kinds).
    pub dv: Option<u32>,
    /// Head dim of softmax attention (queries, keys and values alike).
    pub head_dim: Option<u32>,
    /// Grouped-query attention: number of kv heads (default: `heads`).
    pub kv_heads: Option<u32>,
    /// Mamba2's groups of shared B/C (default 1).
    pub groups: Option<u32>,
    /// `s` in `o = Sᵀ(s q)`; default `dk^-1/2` (Mamba2: 1).
    pub scale: Option<f64>,
    #[serde(default)]
    pub chunk: ChunkChoice,
    pub feature_map: Option<FeatureMap>,
    /// Linear attention's normalizer.
    pub normalizer: Option<bool>,
    pub gate: Option<GateConfig>,
    /// L2-normalize q and k (DeltaNet, Gated DeltaNet).
    pub qk_norm: Option<bool>,
    /// Short causal depthwise convolution width on q, k, v (Mamba2, GDN).
    pub short_conv: Option<u32>,
    /// Sliding window (keys per query, the query's own included).
    pub window: Option<u32>,
    /// Attention sinks (first tokens always visible).
    pub sinks: Option<u32>,
    /// Lizard's learned meta-memory tokens.
    pub meta_tokens: Option<u32>,
    pub rope: Option<RopeConfig>,
    /// Hybrid weights of the branches, e.g. `[0.5, 0.5]` (softmax branch first).
    pub mix: Option<Vec<f64>>,
    pub combine: Option<Combine>,
    /// DuoAttention: kv heads that keep a full cache (the rest stream).
    pub retrieval_heads: Option<Vec<u32>>,
    /// MoM: number of memories, how many each token uses, the shared memory.
    pub memories: Option<u32>,
    pub top_k: Option<u32>,
    pub shared_memory: Option<bool>,
    pub memory: Option<MemoryKind>,
    /// mLSTM: soft cap of the gate pre-activations (xLSTM-7B uses 15).
    pub gate_soft_cap: Option<f64>,
    /// Output normalization (per-head RMSNorm) inside the mixer.
    pub output_norm: Option<bool>,
    /// Epsilon of the output norm (default 1e-5).
    pub norm_eps: Option<f64>,
    /// Output gate: `o ← o · act(o_gate)` after the output norm, with
    /// `o_gate` projected from the layer input like `q` (fla's `g_proj`).
    pub output_gate: Option<OutputGate>,
    /// What turns the projected `beta` into the write strength (delta rules).
    pub beta_activation: Option<BetaActivation>,
}

/// The activation of an output gate.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OutputGate {
    /// `x · sigmoid(x)` (fla's `swish`).
    #[serde(alias = "silu")]
    Swish,
    Sigmoid,
}

/// How `beta` is activated inside a delta-rule mixer.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BetaActivation {
    /// `beta` is used as given.
    None,
    /// `sigmoid(beta)` (fla's `use_beta_sigmoid_in_kernel`).
    Sigmoid,
}
