//! Schedule search: enumerate the schedules that apply to a graph, lower and
//! price each, reject what does not fit on chip, and rank the rest.

use crate::cost::{price_with, ProgramCost, Resources};
use crate::device::{DeviceKind, DeviceProfile};
use crate::lower::{lower, LowerError};
use crate::schedule::{Schedule, Storage};
use mixc_ir::graph::Graph;
use mixc_ir::ops::{OpKind, Transition};
use std::collections::BTreeMap;

/// One priced schedule.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub schedule: Schedule,
    pub cost: ProgramCost,
    /// Why the candidate cannot run on the device, if it cannot.
    pub rejected: Option<String>,
}

/// Value-column blocks tried for recurrences on a GPU (0: the whole head;
/// the CPU tries only 0). The blocked candidates are priced only where every kernel with a `dot`
/// takes the backend's register tier ([`search_over`]): in the shared-memory
/// tier, on an H200 (B=8, H=16, D=128, T=8192, bf16 tensor-core kernels),
/// value blocks of 64 and 32 columns ran 1.3–1.6× and 2.5–3× *slower* than
/// the whole head for every chunked recurrence (bench/RESULTS.md) while this
/// cost model predicted them faster; in the register tier, on an H100, linear
/// attention fused at chunk 64 in blocks of 64 ran 0.97 ms against 2.61 for
/// the whole head at chunk 32 (a `[128, 128]` state does not fit a warp's
/// registers, a `[128, 64]` one does).
const VALUE_BLOCKS: [u32; 3] = [0, 32, 64];

/// Value-column blocks tried for a GPU prefill of few sequences × heads
/// ([`with_value_blocks`]): there the whole-head programs leave most SMs idle
/// (GLA-1.3B, 4 heads, one sequence: its state walk is 4 programs), which
/// the cost model does see.
pub const NARROW_VALUE_BLOCKS: [u32; 4] = [16, 32, 64, 128];

/// Tokens per pass of the state tried for the token-by-token form of
/// diagonal recurrences besides one (`Schedule::step_tokens`): on the CPU the
/// state is read and written once per pass, and 4–8 tokens a pass measured
/// 1.3–1.6× faster than one (GLA, B=1, H=16, T=2048–8192, bench/RESULTS.md).
const STEP_TOKENS: [u32; 2] = [4, 8];

/// The schedules worth trying for a graph: chunk sizes × fused/split and the
/// token-by-token form (one token or [`STEP_TOKENS`] a pass) for recurrences, each whole or split into value blocks
/// of [`VALUE_BLOCKS`] columns (those narrower than the widest value head
/// dim); query/key block sizes for attention; and, for a graph with a short
/// causal convolution, each of those with the convolution inside the
/// recurrence's kernels and as kernels of its own. Several tokens a pass only
/// on a CPU: there the backend keeps the state in registers through a pass;
/// the GPU backend keeps it in shared memory either way and has not been
/// measured with them.
pub fn enumerate(g: &Graph, kind: DeviceKind) -> Vec<Schedule> {
    let base = enumerate_blocks(g, kind);
    if !g.ops.iter().any(|o| matches!(o.kind, OpKind::CausalConv1d { .. })) {
        return base;
    }
    base.into_iter().flat_map(|s| [s, Schedule { fuse_conv: false, ..s }]).collect()
}

fn enumerate_blocks(g: &Graph, kind: DeviceKind) -> Vec<Schedule> {
    let has_rec = g.ops.iter().any(|o| matches!(o.kind, OpKind::LinearRecurrence(_)));
    // Delta rules step one token at a time whatever `step_tokens` says.
    let multi_token = has_rec
        && kind == DeviceKind::Cpu
        && g.ops.iter().all(|o| match &o.kind {
            OpKind::LinearRecurrence(r) => !matches!(r.transition, Transition::Delta | Transition::GatedDelta),
            _ => true,
        });
    let has_attn = g.ops.iter().any(|o| matches!(o.kind, OpKind::Attention { .. }));
    let mut rec: Vec<Schedule> = vec![Schedule::default()];
    if has_rec {
        let dv = widest_value_dim(g);
        // Value blocks on a GPU only (the CPU's kernels hold the state
        // however it is cut; blocks were never measured there).
        let blocks: Vec<u32> =
            VALUE_BLOCKS.into_iter().filter(|&bv| bv == 0 || (kind == DeviceKind::Gpu && u64::from(bv) < dv)).collect();
        rec = [16, 32, 64, 128, 256]
            .into_iter()
            .flat_map(|c| [false, true].map(|split| Schedule { split, ..Schedule::with_chunk(c) }))
            .chain([Schedule::decode()])
            .chain(STEP_TOKENS.into_iter().filter(|_| multi_token).map(Schedule::steps))
            .flat_map(|s| blocks.iter().map(move |&block_v| Schedule { block_v, ..s }))
            .collect();
    }
    if !has_attn {
        return rec;
    }
    let blocks = [(64, 64), (128, 64), (128, 32), (64, 128), (128, 128), (32, 32)];
    rec.into_iter().flat_map(|s| blocks.map(|(q, k)| Schedule { block_q: q, block_k: k, ..s })).collect()
}

/// The schedules of [`enumerate`] and the chunk scans ([`scan_forms`]) with
/// the recurrences split into value blocks of each of `blocks` columns
/// narrower than the widest value head dim, in `storage` (none for a graph
/// without a recurrence).
pub fn with_value_blocks(g: &Graph, kind: DeviceKind, blocks: &[u32], storage: Storage) -> Vec<Schedule> {
    if !g.ops.iter().any(|o| matches!(o.kind, OpKind::LinearRecurrence(_))) {
        return Vec::new();
    }
    let dv = widest_value_dim(g);
    enumerate(g, kind)
        .into_iter()
        .chain(scan_forms(g))
        .flat_map(|s| {
            blocks.iter().filter(move |&&bv| u64::from(bv) < dv).map(move |&block_v| Schedule { block_v, storage, ..s })
        })
        .filter(|s| s.validate().is_ok())
        .collect()
}

/// The chunk scan (`Schedule::scan`) at every chunk size, for a graph whose
/// recurrences all take it (diagonal transitions: not mLSTM, not the delta
/// rules; the short convolution fused, as [`enumerate`]'s first form). Only
/// in [`with_value_blocks`]'s narrow prefill for now: it exists for few
/// sequences × heads, where split's walk is a handful of programs, and has
/// not been measured against the fused form at the anchors' sizes.
fn scan_forms(g: &Graph) -> Vec<Schedule> {
    let recs: Vec<Transition> = g
        .ops
        .iter()
        .filter_map(|o| match &o.kind {
            OpKind::LinearRecurrence(r) => Some(r.transition),
            _ => None,
        })
        .collect();
    let linear = |t: &Transition| matches!(t, Transition::Identity | Transition::ScalarDecay | Transition::KeyDecay);
    if recs.is_empty() || !recs.iter().all(linear) {
        return Vec::new();
    }
    [16, 32, 64, 128, 256]
        .into_iter()
        .map(|c| Schedule { split: true, scan: true, ..Schedule::with_chunk(c) })
        .collect()
}

/// The largest constant value head dim (`v`'s last dim) of the graph's recurrences.
fn widest_value_dim(g: &Graph) -> u64 {
    g.ops
        .iter()
        .filter(|o| matches!(o.kind, OpKind::LinearRecurrence(_)))
        .filter_map(|o| o.operands.get(2))
        .filter_map(|v| g.ty(*v).shape.last().and_then(|d| g.dims.const_size(*d)))
        .max()
        .unwrap_or(0)
}

/// Prices every enumerated schedule at the given sizes (free dims by name) and
/// returns them cheapest first, the rejected ones last.
pub fn search(g: &Graph, free: &BTreeMap<String, u64>, dev: &DeviceProfile) -> Result<Vec<Candidate>, LowerError> {
    search_with(g, free, dev, &|_| None)
}

/// [`search`], pricing each kernel with its resources where `resources`
/// knows them (the facade passes the GPU backend's plan).
pub fn search_with(
    g: &Graph,
    free: &BTreeMap<String, u64>,
    dev: &DeviceProfile,
    resources: Resources,
) -> Result<Vec<Candidate>, LowerError> {
    search_blocks_in_registers(g, enumerate(g, dev.kind), free, dev, resources)
}

/// The schedules of the search at the default point ([`search_with`]):
/// [`search_over`], with value blocks on a GPU only where every kernel
/// with a `dot` takes the register tier ([`VALUE_BLOCKS`]). The narrow
/// prefill's blocks ([`with_value_blocks`], few sequences × heads, where
/// whole heads leave SMs idle) are priced by [`search_over`] as they are.
pub fn search_blocks_in_registers(
    g: &Graph,
    schedules: Vec<Schedule>,
    free: &BTreeMap<String, u64>,
    dev: &DeviceProfile,
    resources: Resources,
) -> Result<Vec<Candidate>, LowerError> {
    let mut cands = search_over(g, schedules, free, dev, resources)?;
    if dev.kind == DeviceKind::Gpu {
        for c in cands.iter_mut().filter(|c| c.rejected.is_none() && c.schedule.block_v > 0) {
            if c.cost.kernels.iter().any(|k| k.dots_per_program > 0.0 && !k.register_tier) {
                c.rejected =
                    Some("value blocks outside the register tier (measured slower than the whole head)".into());
            }
        }
        rank(&mut cands);
    }
    Ok(cands)
}

/// [`search_with`] over the given schedules.
pub fn search_over(
    g: &Graph,
    schedules: Vec<Schedule>,
    free: &BTreeMap<String, u64>,
    dev: &DeviceProfile,
    resources: Resources,
) -> Result<Vec<Candidate>, LowerError> {
    let mut out = Vec::new();
    for schedule in schedules {
        let prog = lower(g, &schedule)?;
        let cost = price_with(&prog, free, dev, resources);
        let worst = cost.kernels.iter().map(|k| k.footprint).max().unwrap_or(0);
        let rejected = (dev.kind == DeviceKind::Gpu && worst > dev.local_mem).then(|| {
            format!("needs {} KiB on chip per program, the device has {} KiB", worst / 1024, dev.local_mem / 1024)
        });
        out.push(Candidate { schedule, cost, rejected });
    }
    rank(&mut out);
    Ok(out)
}

/// Orders candidates cheapest first, the rejected ones last.
pub fn rank(cands: &mut [Candidate]) {
    cands.sort_by(|a, b| {
        (a.rejected.is_some(), a.cost.time_s)
            .partial_cmp(&(b.rejected.is_some(), b.cost.time_s))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
}

/// From how many new tokens the chunked prefill beats the token-by-token form,
/// at batch `b` (the runtime's `decode_threshold`). `None` if the step form
/// wins up to 4096 tokens or the graph has no recurrence.
pub fn decode_threshold(g: &Graph, b: u64, dev: &DeviceProfile) -> Result<Option<u64>, LowerError> {
    decode_threshold_with(g, b, dev, &|_| None)
}

/// [`decode_threshold`] with the kernels' resources where `resources` knows them.
pub fn decode_threshold_with(
    g: &Graph,
    b: u64,
    dev: &DeviceProfile,
    resources: Resources,
) -> Result<Option<u64>, LowerError> {
    if !g.ops.iter().any(|o| matches!(o.kind, OpKind::LinearRecurrence(_))) {
        return Ok(None);
    }
    let step = lower(g, &Schedule::decode_for(dev.kind))?;
    let chunked: Vec<_> = [16, 32, 64, 128]
        .into_iter()
        .flat_map(|c| [false, true].map(|split| Schedule { split, ..Schedule::with_chunk(c) }))
        .map(|s| lower(g, &s))
        .collect::<Result<_, _>>()?;
    let mut t = 1u64;
    while t <= 4096 {
        let free: BTreeMap<String, u64> = [("B".to_string(), b), ("T".to_string(), t)].into_iter().collect();
        let step_s = price_with(&step, &free, dev, resources).time_s;
        let best = chunked.iter().map(|p| price_with(p, &free, dev, resources).time_s).fold(f64::INFINITY, f64::min);
        if best < step_s {
            return Ok(Some(t));
        }
        t *= 2;
    }
    Ok(None)
}
