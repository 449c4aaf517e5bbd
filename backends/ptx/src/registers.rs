//! An estimate of the registers a thread of a kernel needs, from the plan
//! alone (no LLVM, no `ptxas`), so the cost model can tell how many CTAs an
//! SM holds: on an H100 registers bind that count before shared memory does
//! for over half of the zoo's kernels (`ptxas -v` of 405 sm_90 kernels).
//!
//! What takes registers in the code [`crate::codegen`] emits:
//! - a tensor-core `dot` holds its warp block's accumulators (`wm × wn`
//!   16×8 fragments, 4 f32 each) across the k-loop, plus one k-step's A and B
//!   fragments (tf32x3 splits each into a high and a low part);
//! - a materialized statement's element loop (`n / threads` trips, a constant
//!   count) is unrolled by LLVM, which issues the global loads of every trip
//!   before their uses: each trip keeps its loaded values and addresses live;
//! - scalars (program ids, sizes, loop counters, carried scalars) and the
//!   kernel's parameters stay live across the whole kernel.
//!
//! The estimate is the kernel's base plus its most demanding statement,
//! with weights fitted to `ptxas -v` of the zoo's kernels (the PTX tests
//! check it against `ptxas` on every kernel they assemble).

use crate::codegen::mma;
use crate::plan::{Access, Defs, Plan, Repr};
use crate::Matmul;
use mixc_ir::tile::{Block, Kernel, ParamKind, Stmt, TOp};

/// What the estimate is computed from (kept apart so tests can print them).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RegisterFeatures {
    /// Pointer parameters (64-bit addresses).
    pub pointers: u32,
    /// Scalar values of the kernel (index math, carried scalars).
    pub scalars: u32,
    /// The largest tensor-core `dot`'s accumulator and fragment registers.
    pub mma: u32,
    /// The most unrolled trips of one materialized statement's element loop.
    pub trips: u32,
    /// The most `trips × global loads per element` of one statement.
    pub trip_loads: u32,
    /// Trips of the materialized statements inside loops, summed.
    pub loop_trips: u32,
    /// Materialized statements inside loops.
    pub loop_mats: u32,
}

impl RegisterFeatures {
    /// Registers per thread: `19 + 1.4·pointers + 1.07·scalars + 0.8·mma +
    /// 0.34·trips + 0.35·loop trips`, least squares on `ptxas -v` of the
    /// zoo's 405 distinct sm_90 kernels under seven schedules (tf32x3 `dot`s):
    /// median error 10%, mean 9 registers; the CTAs per SM this gives are
    /// within 1.5× of `ptxas`'s for 96% of them. It under-counts the
    /// largest fused delta-rule kernels (chunk 64: ~165 for 205–246), whose
    /// occupancy is one CTA either way. Not capped: past 255
    /// `ptxas` spills.
    ///
    /// Kernels with one element per thread and no `dot` (GPU decode steps'
    /// generic kernels in blocks of 128 since 2026-12-06) take half of that:
    /// no index math per element, and `ptxas` keeps their few scalars in
    /// registers it reuses (`ptxas` 8–32 against this fit's 25–52 for the
    /// zoo's 60-odd such kernels; halved, within a few registers).
    pub fn estimate(&self) -> u32 {
        let x = 19.0
            + 1.4 * f64::from(self.pointers)
            + 1.07 * f64::from(self.scalars)
            + 0.8 * f64::from(self.mma)
            + 0.34 * f64::from(self.trips)
            + 0.35 * f64::from(self.loop_trips);
        let x = if self.trips <= 1 && self.mma == 0 { x / 2.0 } else { x };
        x.round().clamp(16.0, f64::from(u32::MAX)) as u32
    }
}

pub(crate) fn features(k: &Kernel, defs: &Defs, plan: &Plan, matmul: Matmul) -> RegisterFeatures {
    let pointers = k.params.iter().filter(|p| matches!(p.kind, ParamKind::Ptr(_))).count() as u32;
    let scalars = plan.repr.iter().filter(|r| matches!(r, Repr::Scalar)).count() as u32;
    let threads = plan.threads.max(1);
    let (mut mma_regs, mut trips, mut trip_loads) = (0u32, 0u32, 0u32);
    let (mut loop_trips, mut loop_mats) = (0u32, 0u32);
    walk_depth(&k.body, 0, &mut |s, depth| {
        let Some(&v) = s.results.first() else { return };
        if !matches!(plan.repr.get(v.index()), Some(Repr::Mat(_))) {
            return;
        }
        let ty = k.ty(v);
        if let TOp::Dot { a, trans_a, .. } = &s.op {
            let sa = &k.ty(*a).shape;
            let (m, kk) = if *trans_a { (sa[1], sa[0]) } else { (sa[0], sa[1]) };
            let n = ty.shape.get(1).copied().unwrap_or(0);
            if ty.dtype.is_float() && mma::takes(matmul, m, n, kk) {
                mma_regs = mma_regs.max(mma::registers(matmul, m, n, threads));
                return;
            }
        }
        let n: u64 = ty.shape.iter().map(|d| u64::from(*d)).product();
        let t = n.div_ceil(u64::from(threads)).min(u64::from(u32::MAX)) as u32;
        let mut acc = vec![];
        for x in s.op.operands() {
            plan.accesses(k, defs, x, false, &mut acc);
        }
        let loads = acc.iter().filter(|a| matches!(a, Access::Global(_))).count() as u32;
        trips = trips.max(t);
        trip_loads = trip_loads.max(t.saturating_mul(loads));
        if depth > 0 {
            loop_trips = loop_trips.saturating_add(t);
            loop_mats += 1;
        }
    });
    RegisterFeatures { pointers, scalars, mma: mma_regs, trips, trip_loads, loop_trips, loop_mats }
}

/// The share of a kernel's tile work that touches global scratch: elements
/// of the materialized statements inside loops (all statements where there
/// is no loop) whose result or any operand lives in a slot that did not fit
/// in shared memory, over the elements of all of them. The slots that spill
/// are the largest (a recurrence's state, say), which few statements touch,
/// so this is far below the spilled share of the bytes.
pub(crate) fn spilled_share(k: &Kernel, defs: &Defs, plan: &Plan) -> f64 {
    if plan.scratch_bytes == 0 {
        return 0.0;
    }
    let global = |v: mixc_ir::tile::TValue| match plan.repr.get(v.index()) {
        Some(Repr::Mat(s)) => plan.slots.get(*s).is_some_and(|s| s.global),
        _ => false,
    };
    let mut has_loop = false;
    let (mut all, mut spilled, mut all_top, mut spilled_top) = (0f64, 0f64, 0f64, 0f64);
    walk_depth(&k.body, 0, &mut |s, depth| {
        if matches!(s.op, TOp::For { .. }) {
            has_loop = true;
        }
        let Some(&v) = s.results.first() else { return };
        if !matches!(plan.repr.get(v.index()), Some(Repr::Mat(_))) {
            return;
        }
        let n = k.ty(v).shape.iter().map(|d| f64::from(*d)).product::<f64>();
        let mut acc = vec![];
        for x in s.op.operands() {
            plan.accesses(k, defs, x, false, &mut acc);
        }
        let touches = global(v) || acc.iter().any(|a| matches!(a, Access::Shared { root, .. } if global(*root)));
        let (a, sp) = if depth > 0 { (&mut all, &mut spilled) } else { (&mut all_top, &mut spilled_top) };
        *a += n;
        if touches {
            *sp += n;
        }
    });
    let (all, spilled) = if has_loop && all > 0.0 { (all, spilled) } else { (all + all_top, spilled + spilled_top) };
    if all > 0.0 {
        spilled / all
    } else {
        0.0
    }
}

/// Calls `f` on every statement with the number of `for` loops around it.
fn walk_depth<'k>(b: &'k Block, depth: u32, f: &mut dyn FnMut(&'k Stmt, u32)) {
    for s in &b.stmts {
        f(s, depth);
        match &s.op {
            TOp::For { body, .. } => walk_depth(body, depth + 1, f),
            TOp::If { then, otherwise, .. } => {
                walk_depth(then, depth, f);
                walk_depth(otherwise, depth, f);
            }
            _ => {}
        }
    }
}
