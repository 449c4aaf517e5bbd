//! Weight-name maps: checkpoint names → mixc names.
//!
//! A rule maps one checkpoint name pattern to one mixc name pattern. `{i}`
//! stands for a layer index (digits) and a trailing `*` for any rest of the
//! name, carried over; an empty target drops the tensor (buffers a
//! checkpoint stores but mixc recomputes, such as RoPE's `inv_freq`). The
//! first rule that matches wins: the model file's own `[weights.rename]`
//! rules (longest pattern first), then the built-in map `[weights] names`
//! selects. A name no rule matches keeps its name, so mixc's own names load
//! under any map.

use mixc_ir::model::{WeightNames, WeightsSection};
use std::collections::BTreeMap;

/// Hugging Face names, `transformers`' Llama family (`embed_tokens`,
/// `self_attn`, `input_layernorm`, ...) and flash-linear-attention's model
/// classes (`embeddings`, `attn`, `attn_norm`, ...); the two do not collide.
/// In fla's layers `g_proj` is the output gate and the decay gate is
/// `gk_proj` (GLA, low rank) or `a_proj` (Gated DeltaNet), `b_proj` is beta.
pub fn hf_rules() -> Vec<(String, String)> {
    let mut rules: Vec<(String, String)> = [
        ("model.embed_tokens.weight", "embed.weight"),
        ("model.embeddings.weight", "embed.weight"),
        ("model.norm.weight", "norm.weight"),
        ("model.norm.bias", "norm.bias"),
        ("lm_head.weight", "lm_head.weight"),
        ("model.layers.{i}.input_layernorm.weight", "layers.{i}.mixer_norm.weight"),
        ("model.layers.{i}.attn_norm.weight", "layers.{i}.mixer_norm.weight"),
        ("model.layers.{i}.input_layernorm.bias", "layers.{i}.mixer_norm.bias"),
        ("model.layers.{i}.post_attention_layernorm.weight", "layers.{i}.mlp_norm.weight"),
        ("model.layers.{i}.post_attention_layernorm.bias", "layers.{i}.mlp_norm.bias"),
        ("model.layers.{i}.mlp_norm.weight", "layers.{i}.mlp_norm.weight"),
        ("model.layers.{i}.mlp.*", "layers.{i}.mlp.*"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    for attn in ["self_attn", "attn"] {
        let p = format!("model.layers.{{i}}.{attn}.");
        let m = "layers.{i}.mixer.";
        for (from, to) in [
            ("rotary_emb.inv_freq", ""),
            ("g_proj.*", "o_gate_proj.*"),
            ("gk_proj.*", "g_proj.*"),
            ("a_proj.*", "g_proj.*"),
            ("b_proj.*", "beta_proj.*"),
            ("g_norm_swish_gate.weight", "o_norm_weight"),
            ("g_norm.weight", "o_norm_weight"),
            ("o_norm.weight", "o_norm_weight"),
            ("q_conv1d.weight", "q_conv_weight"),
            ("k_conv1d.weight", "k_conv_weight"),
            ("v_conv1d.weight", "v_conv_weight"),
            ("*", "*"),
        ] {
            let to = if to.is_empty() { String::new() } else { format!("{m}{to}") };
            rules.push((format!("{p}{from}"), to));
        }
    }
    rules
}

/// The rules a `[weights]` section asks for, in the order they are tried.
pub fn rules_of(section: Option<&WeightsSection>) -> Vec<(String, String)> {
    let Some(s) = section else {
        return Vec::new();
    };
    let mut own: Vec<(String, String)> = s.rename.iter().map(|(a, b)| (a.clone(), b.clone())).collect();
    own.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
    match s.names {
        Some(WeightNames::Hf) => own.extend(hf_rules()),
        Some(WeightNames::Mixc) | None => {}
    }
    own
}

/// The mixc name `name` maps to under one rule, if the rule matches:
/// `Some("")` means "drop".
fn apply(from: &str, to: &str, name: &str) -> Option<String> {
    let (pat, star) = match from.strip_suffix('*') {
        Some(p) => (p, true),
        None => (from, false),
    };
    let (index, rest) = match pat.split_once("{i}") {
        Some((pre, post)) => {
            let after = name.strip_prefix(pre)?;
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return None;
            }
            let (i, tail) = after.split_at(digits);
            let rest = if star { tail.strip_prefix(post)? } else { (tail == post).then_some("")? };
            (Some(i), rest)
        }
        None if star => (None, name.strip_prefix(pat)?),
        None => (None, (name == pat).then_some("")?),
    };
    if to.is_empty() {
        return Some(String::new());
    }
    let mut out = to.strip_suffix('*').unwrap_or(to).to_string();
    if let Some(i) = index {
        out = out.replace("{i}", i);
    }
    if to.ends_with('*') {
        out.push_str(rest);
    }
    Some(out)
}

/// The mixc name of a checkpoint name under `rules` (`None`: dropped).
pub fn map_name(rules: &[(String, String)], name: &str) -> Option<String> {
    for (from, to) in rules {
        if let Some(out) = apply(from, to, name) {
            return (!out.is_empty()).then_some(out);
        }
    }
    Some(name.to_string())
}

/// Tensors under mixc names, and the checkpoint name of each renamed one.
pub type Renamed<T> = (BTreeMap<String, T>, BTreeMap<String, String>);

/// Renames a checkpoint's tensors. Returns the renamed tensors and, for each
/// renamed one, the checkpoint name it came from (for error messages). Two
/// checkpoint tensors that map to one mixc name are an error naming both.
pub fn rename<T>(tensors: BTreeMap<String, T>, rules: &[(String, String)]) -> Result<Renamed<T>, String> {
    let mut out = BTreeMap::new();
    let mut sources: BTreeMap<String, String> = BTreeMap::new();
    for (name, t) in tensors {
        let Some(to) = map_name(rules, &name) else { continue };
        if out.contains_key(&to) {
            let other = sources.get(&to).cloned().unwrap_or_else(|| to.clone());
            return Err(format!(
                "weights: checkpoint tensors `{other}` and `{name}` both map to `{to}`: expected one tensor per mixc \
                 name (check the `[weights]` rules)"
            ));
        }
        if to != name {
            sources.insert(to.clone(), name);
        }
        out.insert(to, t);
    }
    Ok((out, sources))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn patterns_carry_the_layer_index_and_the_rest() {
        let r = rules(&[
            ("model.layers.{i}.attn.gk_proj.*", "layers.{i}.mixer.g_proj.*"),
            ("model.layers.{i}.attn.rotary_emb.inv_freq", ""),
            ("model.layers.{i}.attn_norm.weight", "layers.{i}.mixer_norm.weight"),
            ("wte", "embed.weight"),
        ]);
        assert_eq!(
            map_name(&r, "model.layers.12.attn.gk_proj.1.bias").as_deref(),
            Some("layers.12.mixer.g_proj.1.bias")
        );
        assert_eq!(map_name(&r, "model.layers.3.attn_norm.weight").as_deref(), Some("layers.3.mixer_norm.weight"));
        assert_eq!(map_name(&r, "model.layers.3.attn.rotary_emb.inv_freq"), None);
        assert_eq!(map_name(&r, "wte").as_deref(), Some("embed.weight"));
        // No index digits, or a longer exact name: no match, the name stays.
        assert_eq!(map_name(&r, "model.layers.x.attn_norm.weight").as_deref(), Some("model.layers.x.attn_norm.weight"));
        assert_eq!(map_name(&r, "wte.weight").as_deref(), Some("wte.weight"));
    }

    #[test]
    fn hf_names_of_fla_and_llama_map_to_mixc_names() {
        let r = hf_rules();
        for (hf, ours) in [
            ("model.embeddings.weight", "embed.weight"),
            ("model.embed_tokens.weight", "embed.weight"),
            ("model.layers.0.attn.g_proj.weight", "layers.0.mixer.o_gate_proj.weight"),
            ("model.layers.0.attn.gk_proj.0.weight", "layers.0.mixer.g_proj.0.weight"),
            ("model.layers.1.attn.a_proj.weight", "layers.1.mixer.g_proj.weight"),
            ("model.layers.1.attn.b_proj.weight", "layers.1.mixer.beta_proj.weight"),
            ("model.layers.1.attn.q_conv1d.weight", "layers.1.mixer.q_conv_weight"),
            ("model.layers.1.attn.o_norm.weight", "layers.1.mixer.o_norm_weight"),
            ("model.layers.1.attn.A_log", "layers.1.mixer.A_log"),
            ("model.layers.7.self_attn.q_proj.weight", "layers.7.mixer.q_proj.weight"),
            ("model.layers.7.post_attention_layernorm.weight", "layers.7.mlp_norm.weight"),
            ("model.layers.7.mlp.down_proj.weight", "layers.7.mlp.down_proj.weight"),
            ("lm_head.weight", "lm_head.weight"),
            ("layers.0.mixer.q_proj.weight", "layers.0.mixer.q_proj.weight"),
        ] {
            assert_eq!(map_name(&r, hf).as_deref(), Some(ours), "{hf}");
        }
    }

    #[test]
    fn two_tensors_on_one_name_are_refused() {
        let mut t = BTreeMap::new();
        t.insert("model.embeddings.weight".to_string(), 0);
        t.insert("model.embed_tokens.weight".to_string(), 1);
        let err = rename(t, &hf_rules()).err().unwrap_or_default();
        assert!(err.contains("model.embeddings.weight") && err.contains("model.embed_tokens.weight"), "{err}");
    }
}
