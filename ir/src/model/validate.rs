//! Checks a parsed model file for consistency: which keys each mixer kind
//! requires and accepts, value ranges, and that the layer pattern names
//! defined mixers. The first problem found is reported, placed at its key.
//!
//! What is deliberately *not* required: `heads × head_dim = d_model` (or
//! `heads × dv`). Projections belong to the model layer, and published models
//! break that equation (GLA's `expand_k = 0.5`, Mamba2's `expand = 2`).

use super::config::{
    ChunkChoice, Combine, GateActivation, GateConfig, KvCacheDtype, MemoryKind, MixerConfig, MixerKind, ModelFile,
    ModelSection, RuntimeSection, WeightsSection,
};
use super::error::ModelError;
use super::locate::{Seg, SourceMap};

/// More layers than this is surely a typo (and would make per-layer tables huge).
pub const MAX_LAYERS: u32 = 65_536;

/// State dtypes `[runtime].state_dtype` accepts.
pub const STATE_DTYPES: [&str; 3] = ["f32", "bf16", "f16"];

/// Validates a parsed file. `src` is its text (for line/column of keys) and
/// `path` names it in errors.
pub fn validate(file: &ModelFile, src: &str, path: &str) -> Result<(), ModelError> {
    validate_mapped(file, &SourceMap::new(path, src))
}

pub(crate) fn validate_mapped(file: &ModelFile, map: &SourceMap<'_>) -> Result<(), ModelError> {
    let v = Validator { map };
    if file.mixer.is_empty() {
        return Err(v.at_key(
            &[Seg::from("mixer")],
            "the file defines no mixer: expected at least one `[mixer.NAME]` table".into(),
        ));
    }
    // Report the first problem in file order.
    let mut mixers: Vec<(&String, &MixerConfig)> = file.mixer.iter().collect();
    mixers.sort_by_key(|(name, _)| map.order_of(&[Seg::from("mixer"), Seg::from(*name)]));
    for (name, cfg) in mixers {
        v.mixer(name, cfg)?;
    }
    if let Some(model) = &file.model {
        v.model(model, file)?;
    }
    if let Some(runtime) = &file.runtime {
        v.runtime(runtime)?;
    }
    if let Some(weights) = &file.weights {
        v.weights(weights)?;
    }
    Ok(())
}

/// Keys every mixer kind accepts. `chunk` is the block size of attention too.
const COMMON_KEYS: [&str; 7] = ["kind", "heads", "scale", "chunk", "output_norm", "norm_eps", "output_gate"];

/// Keys a mixer kind accepts besides [`COMMON_KEYS`].
fn kind_keys(kind: MixerKind) -> &'static [&'static str] {
    use MixerKind::*;
    match kind {
        LinearAttn => &["dk", "dv", "feature_map", "normalizer", "qk_norm", "short_conv"],
        Retnet => &["dk", "dv", "feature_map", "qk_norm", "short_conv"],
        SimpleGla | Gla => &["dk", "dv", "gate", "feature_map", "qk_norm", "short_conv"],
        Mamba2 => &["dk", "dv", "gate", "groups", "short_conv"],
        Mlstm => &["dk", "dv", "gate_soft_cap", "qk_norm", "short_conv"],
        Deltanet => &["dk", "dv", "feature_map", "qk_norm", "short_conv", "beta_activation"],
        GatedDeltanet => &["dk", "dv", "gate", "feature_map", "qk_norm", "short_conv", "beta_activation"],
        Attention => &["head_dim", "dv", "kv_heads", "window", "sinks", "rope"],
        Liger => &["head_dim", "kv_heads", "feature_map", "gate", "window", "rope", "mix"],
        Lizard => &["head_dim", "kv_heads", "feature_map", "gate", "window", "meta_tokens", "rope", "mix", "combine"],
        Duo => &["head_dim", "kv_heads", "window", "sinks", "rope", "retrieval_heads"],
        Mom => &[
            "dk",
            "dv",
            "memories",
            "top_k",
            "shared_memory",
            "memory",
            "gate",
            "feature_map",
            "qk_norm",
            "short_conv",
        ],
    }
}

/// Keys a mixer kind must have.
pub fn required_keys(kind: MixerKind) -> &'static [&'static str] {
    use MixerKind::*;
    match kind {
        LinearAttn | Retnet | Mlstm | Deltanet => &["dk", "dv"],
        SimpleGla | Gla | Mamba2 | GatedDeltanet => &["dk", "dv", "gate"],
        Attention => &["head_dim"],
        Liger | Lizard => &["head_dim", "window"],
        Duo => &["head_dim", "window", "retrieval_heads"],
        Mom => &["dk", "dv", "memories", "top_k"],
    }
}

/// All keys a mixer kind accepts, in schema order.
pub fn accepted_keys(kind: MixerKind) -> Vec<&'static str> {
    let own = kind_keys(kind);
    present_keys(&MixerConfig::empty(kind))
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| COMMON_KEYS.contains(k) || own.contains(k))
        .collect()
}

/// Every optional key of the schema and whether `c` sets it, in schema order.
/// (`kind`, `heads` and `chunk` always count as set: the first two are
/// required by serde, the last is accepted by every kind.)
fn present_keys(c: &MixerConfig) -> Vec<(&'static str, bool)> {
    vec![
        ("kind", true),
        ("heads", true),
        ("dk", c.dk.is_some()),
        ("dv", c.dv.is_some()),
        ("head_dim", c.head_dim.is_some()),
        ("kv_heads", c.kv_heads.is_some()),
        ("groups", c.groups.is_some()),
        ("scale", c.scale.is_some()),
        ("chunk", true),
        ("feature_map", c.feature_map.is_some()),
        ("normalizer", c.normalizer.is_some()),
        ("gate", c.gate.is_some()),
        ("qk_norm", c.qk_norm.is_some()),
        ("short_conv", c.short_conv.is_some()),
        ("window", c.window.is_some()),
        ("sinks", c.sinks.is_some()),
        ("meta_tokens", c.meta_tokens.is_some()),
        ("rope", c.rope.is_some()),
        ("mix", c.mix.is_some()),
        ("combine", c.combine.is_some()),
        ("retrieval_heads", c.retrieval_heads.is_some()),
        ("memories", c.memories.is_some()),
        ("top_k", c.top_k.is_some()),
        ("shared_memory", c.shared_memory.is_some()),
        ("memory", c.memory.is_some()),
        ("gate_soft_cap", c.gate_soft_cap.is_some()),
        ("output_norm", c.output_norm.is_some()),
        ("norm_eps", c.norm_eps.is_some()),
        ("output_gate", c.output_gate.is_some()),
        ("beta_activation", c.beta_activation.is_some()),
    ]
}

impl MixerConfig {
    /// A config of `kind` with one head and nothing else set. (Written out
    /// field by field so that a new schema key fails to compile here: add it
    /// to `present_keys` and to the kinds that accept it.)
    fn empty(kind: MixerKind) -> MixerConfig {
        MixerConfig {
            kind,
            heads: 1,
            dk: None,
            dv: None,
            head_dim: None,
            kv_heads: None,
            groups: None,
            scale: None,
            chunk: ChunkChoice::Auto,
            feature_map: None,
            normalizer: None,
            gate: None,
            qk_norm: None,
            short_conv: None,
            window: None,
            sinks: None,
            meta_tokens: None,
            rope: None,
            mix: None,
            combine: None,
            retrieval_heads: None,
            memories: None,
            top_k: None,
            shared_memory: None,
            memory: None,
            gate_soft_cap: None,
            output_norm: None,
            norm_eps: None,
            output_gate: None,
            beta_activation: None,
        }
    }
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn backticked(items: &[&str]) -> String {
    items.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
}

struct Validator<'m, 'a> {
    map: &'m SourceMap<'a>,
}

impl Validator<'_, '_> {
    /// An error placed at a key (or its nearest written ancestor).
    fn at_key(&self, path: &[Seg], msg: String) -> ModelError {
        ModelError::Invalid { at: self.map.place(path), msg }
    }

    /// An error placed at a key's value.
    fn at_value(&self, path: &[Seg], msg: String) -> ModelError {
        ModelError::Invalid { at: self.map.value_place(path), msg }
    }

    fn mixer(&self, name: &str, c: &MixerConfig) -> Result<(), ModelError> {
        let kind = c.kind.name();
        let p = |key: &str| vec![Seg::from("mixer"), Seg::from(name), Seg::from(key)];
        let table = [Seg::from("mixer"), Seg::from(name)];

        if !is_ident(name) {
            return Err(self.at_key(
                &table,
                format!(
                    "mixer name `{name}` is not an identifier: expected a letter or `_`, then \
                     letters, digits or `_` (the name becomes the mixer graph's name)"
                ),
            ));
        }

        // Keys that do not apply to this kind, then keys it cannot do without.
        let accepted = accepted_keys(c.kind);
        for (key, set) in present_keys(c) {
            if set && !accepted.contains(&key) {
                return Err(self.at_key(
                    &p(key),
                    format!(
                        "key `{key}` does not apply to a `{kind}` mixer; a `{kind}` mixer \
                         accepts {}",
                        backticked(&accepted)
                    ),
                ));
            }
        }
        for &key in required_keys(c.kind) {
            let set = present_keys(c).iter().any(|&(k, s)| k == key && s);
            if !set {
                return Err(self.at_key(
                    &p(key),
                    format!(
                        "a `{kind}` mixer needs `{key}` but `[mixer.{name}]` does not set it; \
                         a `{kind}` mixer requires {} and accepts {}",
                        backticked(required_keys(c.kind)),
                        backticked(&accepted)
                    ),
                ));
            }
        }

        // Sizes.
        self.at_least(&p("heads"), "heads", Some(c.heads), 1)?;
        self.at_least(&p("dk"), "dk", c.dk, 1)?;
        self.at_least(&p("dv"), "dv", c.dv, 1)?;
        self.at_least(&p("head_dim"), "head_dim", c.head_dim, 1)?;
        self.at_least(&p("short_conv"), "short_conv", c.short_conv, 1)?;
        self.at_least(&p("window"), "window", c.window, 1)?;
        self.at_least(&p("memories"), "memories", c.memories, 1)?;
        self.divides(&p("kv_heads"), "kv_heads", c.kv_heads, c.heads)?;
        self.divides(&p("groups"), "groups", c.groups, c.heads)?;

        if let ChunkChoice::Fixed(n) = c.chunk {
            if !(16..=256).contains(&n) || !n.is_power_of_two() {
                return Err(self.at_value(
                    &p("chunk"),
                    format!(
                        "chunk = {n}: expected \"auto\" or a power of two from 16 to 256 \
                         (16, 32, 64, 128 or 256)"
                    ),
                ));
            }
        }
        self.positive_finite(&p("scale"), "scale", c.scale)?;
        self.positive_finite(&p("gate_soft_cap"), "gate_soft_cap", c.gate_soft_cap)?;
        self.positive_finite(&p("norm_eps"), "norm_eps", c.norm_eps)?;
        if c.norm_eps.is_some() && c.output_norm != Some(true) {
            return Err(self.at_key(
                &p("norm_eps"),
                "`norm_eps` is the epsilon of the output norm, which this mixer does not have: \
                 expected `output_norm = true` next to it, or no `norm_eps`"
                    .into(),
            ));
        }
        if let Some(rope) = &c.rope {
            let mut path = p("rope");
            path.push(Seg::from("theta"));
            self.positive_finite(&path, "rope.theta", Some(rope.theta))?;
        }
        if let Some(gate) = &c.gate {
            self.gate(&p("gate"), gate)?;
        }

        // Attention masks: sinks only mean something next to a window.
        if c.kind == MixerKind::Attention && c.sinks.is_some() && c.window.is_none() {
            return Err(self.at_key(
                &p("sinks"),
                "`sinks` needs a `window`: with full causal attention every token is visible \
                 anyway; expected `window = N` next to `sinks`"
                    .into(),
            ));
        }

        // Hybrid branch weights.
        if let Some(mix) = &c.mix {
            if c.kind == MixerKind::Lizard && c.combine == Some(Combine::Shared) {
                return Err(self.at_key(
                    &p("mix"),
                    "`mix` does not apply with `combine = \"shared\"` (one shared normalizer \
                     weighs the branches); expected no `mix`, or `combine = \"separate\"`"
                        .into(),
                ));
            }
            if mix.len() != 2 {
                return Err(self.at_value(
                    &p("mix"),
                    format!(
                        "`mix` has {} weight(s): expected 2, one per branch (softmax branch \
                         first, then the linear branch)",
                        mix.len()
                    ),
                ));
            }
            for (i, w) in mix.iter().enumerate() {
                if !w.is_finite() {
                    let mut path = p("mix");
                    path.push(Seg::Index(i));
                    return Err(self.at_value(&path, format!("mix weight {w} is not finite: expected a finite number")));
                }
            }
        }

        // DuoAttention: retrieval heads are kv heads.
        if let Some(heads) = &c.retrieval_heads {
            let kv = c.kv_heads.unwrap_or(c.heads);
            for (i, &h) in heads.iter().enumerate() {
                let mut path = p("retrieval_heads");
                path.push(Seg::Index(i));
                if h >= kv {
                    return Err(self.at_value(
                        &path,
                        format!(
                            "retrieval head {h} does not exist: expected kv head indices from 0 \
                             to {} (the mixer has {kv} kv heads)",
                            kv.saturating_sub(1)
                        ),
                    ));
                }
                if heads[..i].contains(&h) {
                    return Err(
                        self.at_value(&path, format!("retrieval head {h} is listed twice: expected distinct indices"))
                    );
                }
            }
        }

        // MoM: routing, and the gate its memory kind needs.
        if let Some(k) = c.top_k {
            let n = c.memories.unwrap_or(0);
            if k < 1 || k > n {
                return Err(self.at_value(
                    &p("top_k"),
                    format!(
                        "top_k = {k} but the mixer has {n} memories: expected 1 ≤ top_k ≤ \
                         memories"
                    ),
                ));
            }
        }
        if c.kind == MixerKind::Mom {
            let memory = c.memory.unwrap_or(MemoryKind::LinearAttn);
            let gated = matches!(memory, MemoryKind::SimpleGla | MemoryKind::GatedDeltanet);
            if gated && c.gate.is_none() {
                return Err(self.at_key(
                    &p("gate"),
                    format!(
                        "memories of kind `{}` decay, so the mixer needs a `gate`, e.g. \
                         `gate = {{ activation = \"mamba\" }}`",
                        memory_name(memory)
                    ),
                ));
            }
            if !gated && c.gate.is_some() {
                return Err(self.at_key(
                    &p("gate"),
                    "`gate` does not apply to `linear_attn` memories (the default `memory`); \
                     expected no gate, or `memory = \"simple_gla\"` or `\"gated_deltanet\"`"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    fn gate(&self, path: &[Seg], g: &GateConfig) -> Result<(), ModelError> {
        let sub = |key: &str| {
            let mut v = path.to_vec();
            v.push(Seg::from(key));
            v
        };
        if let Some(tau) = g.tau {
            if g.activation != GateActivation::Logsigmoid {
                return Err(self.at_key(
                    &sub("tau"),
                    "`tau` applies only to `activation = \"logsigmoid\"` (the gate is \
                     logsigmoid(x)/tau); expected no `tau` with this activation"
                        .into(),
                ));
            }
            self.positive_finite(&sub("tau"), "gate.tau", Some(tau))?;
        }
        self.at_least(&sub("rank"), "gate.rank", g.rank, 1)?;
        if let Some(from) = &g.from {
            if from != "x" && from != "k" {
                return Err(self.at_value(
                    &sub("from"),
                    format!(
                        "gate source `{from}` is unknown: expected \"x\" (the layer input) or \
                         \"k\" (the key projection)"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn model(&self, m: &ModelSection, file: &ModelFile) -> Result<(), ModelError> {
        let p = |key: &str| vec![Seg::from("model"), Seg::from(key)];
        self.at_least(&p("vocab"), "vocab", Some(m.vocab), 1)?;
        self.at_least(&p("d_model"), "d_model", Some(m.d_model), 1)?;
        self.at_least(&p("layers"), "layers", Some(m.layers), 1)?;
        self.positive_finite(&p("norm_eps"), "norm_eps", m.norm_eps)?;
        if m.layers > MAX_LAYERS {
            return Err(self.at_value(&p("layers"), format!("layers = {}: expected at most {MAX_LAYERS}", m.layers)));
        }
        if let Some(mlp) = &m.mlp {
            let mut path = p("mlp");
            path.push(Seg::from("hidden"));
            self.at_least(&path, "mlp.hidden", Some(mlp.hidden), 1)?;
        }
        let defined = || {
            let names: Vec<&str> = file.mixer.keys().map(String::as_str).collect();
            backticked(&names)
        };
        if m.pattern.is_empty() {
            return Err(self.at_value(
                &p("pattern"),
                format!(
                    "the layer pattern is empty: expected at least one mixer name (defined \
                     mixers: {})",
                    defined()
                ),
            ));
        }
        for (i, name) in m.pattern.iter().enumerate() {
            if !file.mixer.contains_key(name) {
                let mut path = p("pattern");
                path.push(Seg::Index(i));
                return Err(self.at_value(
                    &path,
                    format!(
                        "the pattern names mixer `{name}`, which the file does not define: \
                         expected one of {} (or add a `[mixer.{name}]` table)",
                        defined()
                    ),
                ));
            }
        }
        for (key, name) in &m.overrides {
            let mut path = p("overrides");
            path.push(Seg::from(key));
            let last = m.layers.saturating_sub(1);
            match key.parse::<u32>() {
                Ok(i) if i < m.layers => {}
                Ok(i) => {
                    return Err(self.at_key(
                        &path,
                        format!(
                            "override for layer {i}, but the model has {} layers: expected a \
                             layer index from 0 to {last}",
                            m.layers
                        ),
                    ))
                }
                Err(_) => {
                    return Err(self.at_key(
                        &path,
                        format!(
                            "override key `{key}` is not a layer index: expected a whole \
                             number from 0 to {last}"
                        ),
                    ))
                }
            }
            if !file.mixer.contains_key(name) {
                return Err(self.at_value(
                    &path,
                    format!(
                        "the override names mixer `{name}`, which the file does not define: \
                         expected one of {} (or add a `[mixer.{name}]` table)",
                        defined()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn runtime(&self, r: &RuntimeSection) -> Result<(), ModelError> {
        let p = |key: &str| vec![Seg::from("runtime"), Seg::from(key)];
        if let Some(dt) = &r.state_dtype {
            if !STATE_DTYPES.contains(&dt.as_str()) {
                return Err(self.at_value(
                    &p("state_dtype"),
                    format!("state dtype `{dt}` is not supported: expected one of {}", backticked(&STATE_DTYPES)),
                ));
            }
        }
        self.at_least(&p("decode_threshold"), "decode_threshold", r.decode_threshold, 1)?;
        self.at_least(&p("kv_group"), "kv_group", r.kv_group, 1)?;
        if r.kv_group.is_some() && r.kv_cache != Some(KvCacheDtype::Int8) {
            return Err(self.at_key(
                &p("kv_group"),
                "`kv_group` is the group size of int8 KV caches: expected `kv_cache = \"int8\"` next to it, \
                 or no `kv_group`"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Rename rules: `{i}` at most once on each side, and on the target only
    /// where the source has it; a `*` only at the end, on both sides or on
    /// the source alone with an empty target (drop).
    fn weights(&self, w: &WeightsSection) -> Result<(), ModelError> {
        for (from, to) in &w.rename {
            let path = [Seg::from("weights"), Seg::from("rename"), Seg::from(from.as_str())];
            let bad = |msg: String| Err(self.at_key(&path, format!("rename rule `{from}` = `{to}`: {msg}")));
            if from.is_empty() {
                return bad("the checkpoint name is empty".into());
            }
            for (side, name) in [("checkpoint name", from), ("mixc name", to)] {
                if name.matches("{i}").count() > 1 {
                    return bad(format!("the {side} has `{{i}}` more than once: expected at most one"));
                }
                if name.find('*').is_some_and(|at| at + 1 != name.len()) {
                    return bad(format!(
                        "the {side} has a `*` before its end: expected `*` only as the last character"
                    ));
                }
            }
            if to.contains("{i}") && !from.contains("{i}") {
                return bad("the mixc name has `{i}` but the checkpoint name does not".into());
            }
            if to.ends_with('*') != from.ends_with('*') && !to.is_empty() {
                return bad("expected a `*` at the end of both names, or of neither (or an empty mixc name to drop the tensors)".into());
            }
        }
        Ok(())
    }

    fn at_least(&self, path: &[Seg], what: &str, value: Option<u32>, min: u32) -> Result<(), ModelError> {
        match value {
            Some(v) if v < min => Err(self.at_value(path, format!("{what} = {v}: expected a whole number ≥ {min}"))),
            _ => Ok(()),
        }
    }

    fn divides(&self, path: &[Seg], what: &str, value: Option<u32>, heads: u32) -> Result<(), ModelError> {
        match value {
            Some(0) => Err(self.at_value(path, format!("{what} = 0: expected a whole number ≥ 1"))),
            Some(v) if !heads.is_multiple_of(v) => Err(self.at_value(
                path,
                format!(
                    "{what} = {v} does not divide heads = {heads}: expected a divisor of \
                     {heads} (each group of heads / {what} query heads shares one)"
                ),
            )),
            _ => Ok(()),
        }
    }

    fn positive_finite(&self, path: &[Seg], what: &str, value: Option<f64>) -> Result<(), ModelError> {
        match value {
            Some(v) if !(v.is_finite() && v > 0.0) => {
                Err(self.at_value(path, format!("{what} = {v}: expected a finite number > 0")))
            }
            _ => Ok(()),
        }
    }
}

fn memory_name(m: MemoryKind) -> &'static str {
    match m {
        MemoryKind::LinearAttn => "linear_attn",
        MemoryKind::SimpleGla => "simple_gla",
        MemoryKind::GatedDeltanet => "gated_deltanet",
    }
}
