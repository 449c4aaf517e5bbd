//! Reading model files: TOML syntax, then the serde schema, then validation.

use super::config::MixerKind;
use super::config::ModelFile;
use super::error::{one_paragraph, ModelError};
use super::locate::{line_col, Seg, SourceMap};
use super::validate::accepted_keys;
use super::validate::validate_mapped;
use serde::Deserialize;
use std::path::Path;

/// Parses and validates a model file's text. `path` names the file in errors.
pub fn parse_model(src: &str, path: &str) -> Result<ModelFile, ModelError> {
    // Syntax first, with toml_edit's span-keeping parser: a syntax error has
    // no key path yet, only a position.
    if let Err(e) = toml_edit::ImDocument::parse(src) {
        let at = super::error::Place {
            file: path.to_string(),
            line_col: e.span().map(|r| line_col(src, r.start)),
            key: None,
        };
        return Err(ModelError::Syntax { at, msg: one_paragraph(e.message()) });
    }
    let map = SourceMap::new(path, src);
    let file: ModelFile = toml::from_str(src).map_err(|e| {
        let at = map.place_of_span(e.span());
        let path = e.span().and_then(|r| map.path_at(r.start)).unwrap_or_default();
        let msg = mixer_message(src, &path, schema_message(e.message()));
        ModelError::Schema { at, msg }
    })?;
    validate_mapped(&file, &map)?;
    Ok(file)
}

/// Reads, parses and validates a model file.
pub fn load_model(path: &Path) -> Result<ModelFile, ModelError> {
    let shown = path.display().to_string();
    let src = std::fs::read_to_string(path).map_err(|source| ModelError::Io { path: shown.clone(), source })?;
    parse_model(&src, &shown)
}

/// Serde's messages, made a little friendlier for people writing TOML.
fn schema_message(msg: &str) -> String {
    let msg = one_paragraph(msg)
        .replace("expected u32", "expected a whole number ≥ 0")
        .replace("expected f64", "expected a number")
        .replace("expected a boolean", "expected `true` or `false`");
    if let Some(rest) = msg.strip_prefix("unknown field ") {
        format!("unknown key {rest}")
    } else if let Some(rest) = msg.strip_prefix("missing field ") {
        format!("missing required key {rest}")
    } else if let Some(rest) = msg.strip_prefix("unknown variant ") {
        format!("unknown value {rest}")
    } else {
        msg
    }
}

/// Within a `[mixer.NAME]` table, says "mixer kind" for an unknown `kind`,
/// and lists the keys the table's kind accepts (rather than every key of the
/// schema) for an unknown key.
fn mixer_message(src: &str, path: &[Seg], msg: String) -> String {
    let [Seg::Key(top), Seg::Key(name), Seg::Key(key)] = path else {
        return msg;
    };
    if top != "mixer" {
        return msg;
    }
    if key == "kind" {
        if let Some(rest) = msg.strip_prefix("unknown value ") {
            return format!("unknown mixer kind {rest}");
        }
        return msg;
    }
    if !msg.starts_with("unknown key ") {
        return msg;
    }
    let Some(kind) = kind_of(src, name) else {
        return msg;
    };
    let accepted: Vec<String> = accepted_keys(kind).iter().map(|k| format!("`{k}`")).collect();
    format!("unknown key `{key}` in a `{}` mixer: expected one of {}", kind.name(), accepted.join(", "))
}

/// The kind of mixer `name`, read leniently from the text.
fn kind_of(src: &str, name: &str) -> Option<MixerKind> {
    let doc: toml::Table = toml::from_str(src).ok()?;
    let kind = doc.get("mixer")?.get(name)?.get("kind")?.clone();
    MixerKind::deserialize(kind).ok()
}
