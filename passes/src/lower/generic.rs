//! Simple kernels for every op that has no dedicated recipe (being written).

use super::{LowerError, Lowering};
use mixc_ir::graph::OpNode;
use mixc_ir::tile::Count;

pub fn lower(lw: &mut Lowering, op: &OpNode) -> Result<(), LowerError> {
    Err(lw.err(op, "not lowered yet"))
}

/// Copies `n` elements from buffer `from` to buffer `to`.
pub fn copy(lw: &mut Lowering, from: usize, to: usize, n: Count) -> Result<(), LowerError> {
    let _ = (lw, from, to, n);
    Err(LowerError::Schedule("copy not written yet".into()))
}
