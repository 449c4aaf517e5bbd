//! Builders of every mixer's graph from its `[mixer.NAME]` table. STUB: being written.

use crate::error::IrError;
use crate::graph::Graph;
use crate::model::MixerConfig;

/// Builds the graph of one mixer. The config must have passed `model::validate`.
pub fn build(name: &str, cfg: &MixerConfig) -> Result<Graph, IrError> {
    let _ = cfg;
    Err(IrError::Invalid(format!("mixer `{name}`: builder not written yet")))
}
