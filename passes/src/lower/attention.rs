//! Flash attention (being written).

use super::{LowerError, Lowering};
use mixc_ir::graph::OpNode;
use mixc_ir::ops::Mask;

pub fn lower(lw: &mut Lowering, op: &OpNode, _scale: f64, _mask: Mask) -> Result<(), LowerError> {
    Err(lw.err(op, "not lowered yet"))
}
