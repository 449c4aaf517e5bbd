//! Chunked diagonal-gated recurrences and mLSTM (being written).

use super::{LowerError, Lowering};
use mixc_ir::graph::OpNode;
use mixc_ir::ops::Recurrence;

pub fn lower(lw: &mut Lowering, op: &OpNode, _r: &Recurrence) -> Result<(), LowerError> {
    Err(lw.err(op, "not lowered yet"))
}
