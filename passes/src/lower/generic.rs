//! Simple kernels for every op that has no dedicated recipe: elementwise math
//! (`ew`), data movement (`moves`), row-wise reductions and scans (`rows`) and
//! the short causal convolution (`conv`), on the shared scaffolding of `kern`.
//!
//! Every value lives in a row-major buffer of its declared dims (f32 for
//! floats); sizes and strides reach kernels as i32 scalar parameters. These
//! kernels favour the obvious form over the fast one; each module notes the
//! speedups left for later.

mod conv;
mod ew;
mod kern;
mod moves;
mod rows;

pub(crate) use ew::{leaves, Recipe};
pub(crate) use kern::Space;

use super::{LowerError, Lowering};
use mixc_ir::graph::OpNode;
use mixc_ir::ops::OpKind;
use mixc_ir::tile::Count;

pub fn lower(lw: &mut Lowering, op: &OpNode) -> Result<(), LowerError> {
    if op.operands.len() != op.kind.operand_roles(op.operands.len()).len()
        || op.results.len() != op.kind.result_names().len()
    {
        return Err(lw.err(op, "wrong number of operands or results"));
    }
    if let OpKind::CausalConv1d { time, taps, tail, silu, .. } = &op.kind {
        return conv::conv1d(lw, op, *time, *taps, *tail, *silu);
    }
    if let Some(r) = ew::lower(lw, op) {
        return r;
    }
    if let Some(r) = moves::lower(lw, op) {
        return r;
    }
    if let Some(r) = rows::lower(lw, op) {
        return r;
    }
    Err(lw.err(op, "no generic lowering for this op"))
}

/// Only the new-tail kernel of a causal convolution whose `y` a fused consumer
/// computes itself; `x_at` holds the convolution's input (see `conv::conv_tail`).
pub fn conv_tail(lw: &mut Lowering, op: &OpNode, x_at: Option<usize>) -> Result<(), LowerError> {
    match &op.kind {
        OpKind::CausalConv1d { time, tail, .. } => conv::conv_tail(lw, op, *time, *tail, x_at),
        _ => Err(lw.err(op, "not a causal convolution")),
    }
}

/// Which values an elementwise consumer computes itself (see
/// `ew::inline_plan`), and which gates a recurrence computes as it loads
/// them (`ew::recurrence_gates`).
pub fn inline_plan(g: &mixc_ir::graph::Graph, lowered: &[bool]) -> Vec<Option<usize>> {
    let mut plan = ew::inline_plan(g, lowered);
    ew::recurrence_gates(g, lowered, &mut plan);
    plan
}

/// Copies `n` elements from buffer `from` to buffer `to`.
pub fn copy(lw: &mut Lowering, from: usize, to: usize, n: Count) -> Result<(), LowerError> {
    moves::copy(lw, from, to, n)
}
