//! Which mixer each layer of a model uses.

use super::config::ModelFile;

impl ModelFile {
    /// The mixer name of each layer: the pattern repeated over `layers`, then
    /// the per-index overrides. Empty for a file without `[model]`.
    ///
    /// Meant for validated files; override keys that are not layer indices
    /// below `layers` are ignored.
    pub fn layer_mixers(&self) -> Vec<String> {
        let Some(m) = &self.model else {
            return Vec::new();
        };
        if m.pattern.is_empty() {
            return Vec::new();
        }
        let mut layers: Vec<String> = m.pattern.iter().cycle().take(m.layers as usize).cloned().collect();
        for (key, name) in &m.overrides {
            if let Some(slot) = key.parse::<usize>().ok().and_then(|i| layers.get_mut(i)) {
                slot.clone_from(name);
            }
        }
        layers
    }

    /// The distinct mixers a file describes: for a model, the mixers its
    /// layers use, in order of first use (mixers defined but used by no layer
    /// are left out); for a mixer-only file, every mixer, in name order (the
    /// schema keeps mixers in a `BTreeMap`, which sorts them).
    pub fn distinct_mixers(&self) -> Vec<String> {
        if self.model.is_none() {
            return self.mixer.keys().cloned().collect();
        }
        let mut seen: Vec<String> = Vec::new();
        for name in self.layer_mixers() {
            if !seen.contains(&name) {
                seen.push(name);
            }
        }
        seen
    }
}
