//! What the cost model needs from a backend: the facade asks the GPU backend
//! for each kernel's plan (threads, shared memory, spill to global scratch)
//! and hands the answers to `passes::cost`, which never calls a backend itself;
//! and the schedule `chunk = "auto"` stands for: the search's pick.

use crate::Error;
use mixc_ir::graph::Graph;
use mixc_ir::tile::{Kernel, Program};
use mixc_passes::cost::KernelResources;
use mixc_passes::device::{DeviceKind, DeviceProfile};
use mixc_passes::search::{
    enumerate, rank, search_blocks_in_registers, search_over, with_value_blocks, Candidate, NARROW_VALUE_BLOCKS,
};
use mixc_passes::LowerError;
use mixc_passes::Schedule;
use std::collections::BTreeMap;

/// A kernel's resources, where the backend can plan it.
pub type ResourceFn = Box<dyn Fn(&Kernel) -> Option<KernelResources>>;

/// The `dot` mode GPU kernels are compiled and priced with unless told
/// otherwise (`--matmul`): tf32x3, f32 accuracy on tensor cores.
pub const DEFAULT_MATMUL: &str = "tf32x3";

/// The `dot` modes [`kernel_resources_for`] (and `--matmul`) take.
const MATMUL_MODES: [&str; 3] = ["tf32x3", "bf16", "simt"];

/// Each kernel's resources as the backend for `dev` would plan them: the PTX
/// backend's plan on a GPU profile (when mixc is built with LLVM), with
/// `dot`s in the default mode; nothing on a CPU (the CPU model has no
/// occupancy or spill terms).
pub fn kernel_resources(dev: &DeviceProfile) -> ResourceFn {
    kernel_resources_for(dev, DEFAULT_MATMUL).unwrap_or_else(|_| Box::new(|_| None))
}

/// [`kernel_resources`] with `dot`s computed as the mode `matmul` names
/// (`tf32x3`, `bf16`, `simt`: their registers, and the matrix-unit
/// instructions a product takes). Without LLVM there is no plan to ask, and
/// the mode only has to be one of those.
pub fn kernel_resources_for(dev: &DeviceProfile, matmul: &str) -> Result<ResourceFn, Error> {
    if !MATMUL_MODES.contains(&matmul) {
        return Err(Error::Usage(format!("unknown matmul mode `{matmul}` (expected tf32x3, bf16 or simt)")));
    }
    if dev.kind != DeviceKind::Gpu {
        return Ok(Box::new(|_| None));
    }
    #[cfg(feature = "llvm")]
    {
        let mode = mixc_backend_ptx::Matmul::parse(matmul).unwrap_or_default();
        Ok(gpu_resources_for(mode))
    }
    #[cfg(not(feature = "llvm"))]
    Ok(Box::new(|_| None))
}

#[cfg(feature = "llvm")]
fn gpu_resources_for(matmul: mixc_backend_ptx::Matmul) -> ResourceFn {
    use mixc_backend_ptx::Matmul;
    let (mma_k, mma_passes) = match matmul {
        Matmul::Simt => (0, 0),
        Matmul::Tf32x3 => (8, 3),
        Matmul::Bf16 => (16, 1),
    };
    Box::new(move |k| {
        mixc_backend_ptx::resources(k, matmul).ok().map(|r| KernelResources {
            threads: r.threads,
            shared_bytes: u64::from(r.shared_bytes),
            spill_bytes: u64::from(r.scratch_bytes),
            registers: r.registers,
            spilled_share: r.spilled_share,
            mma_k,
            mma_passes,
            register_tier: r.tier == mixc_backend_ptx::Tier::Registers,
            pipelined: r.pipelined,
            warp_rows: r.warp_rows,
        })
    })
}

/// The size point a schedule is picked for when the caller names none: a
/// GPU's prefill at B = 8, T = 8192 (the anchors' size), a CPU's at B = 1,
/// T = 2048. Dims not named here (heads are the graph's) take the graph's
/// own sizes.
pub fn default_point(dev: &DeviceProfile) -> BTreeMap<String, u64> {
    let point: [(&str, u64); 2] = match dev.kind {
        DeviceKind::Gpu => [("B", 8), ("T", 8192)],
        DeviceKind::Cpu => [("B", 1), ("T", 2048)],
    };
    point.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// The schedule the cost model picks for `graph` on `dev` at `sizes` (its
/// cheapest candidate that fits, among [`candidates_at`]'s: what `mixc
/// explain` lists first): what `chunk = "auto"` means.
pub fn auto_schedule(
    mixer: &str,
    graph: &Graph,
    dev: &DeviceProfile,
    sizes: &BTreeMap<String, u64>,
) -> Result<Schedule, Error> {
    auto_schedule_with(mixer, graph, dev, sizes, &*kernel_resources(dev), mixc_passes::Storage::F32)
}

/// [`auto_schedule`] with the kernels' resources from `resources`.
pub fn auto_schedule_with(
    mixer: &str,
    graph: &Graph,
    dev: &DeviceProfile,
    sizes: &BTreeMap<String, u64>,
    resources: mixc_passes::cost::Resources,
    storage: mixc_passes::Storage,
) -> Result<Schedule, Error> {
    let cands = candidates_at(graph, sizes, dev, resources, storage)
        .map_err(|source| Error::Lower { mixer: mixer.to_string(), source })?;
    let pick = cands.iter().find(|c| c.rejected.is_none()).or(cands.first());
    Ok(pick.map(|c| c.schedule).unwrap_or_default())
}

/// Sequences × heads up to which a GPU prefill takes the narrow prefill
/// (priced at one sequence: for GLA-1.3B's 4 heads, up to 4 sequences), and
/// a GPU sweep (`mixc bench --sweep`) measures value blocks too.
pub const NARROW_PREFILL_SEQ_HEADS: usize = 16;

/// The search's candidates at `free` (cheapest first, rejected last): on a
/// GPU at a point of at most [`NARROW_PREFILL_SEQ_HEADS`] sequences × heads
/// also the narrow prefill's (value blocks, chunk scans), which the runtime
/// may run there, in `storage`. What `mixc explain` and `mixc bench --sweep`
/// list.
pub fn candidates_at(
    graph: &Graph,
    free: &BTreeMap<String, u64>,
    dev: &DeviceProfile,
    resources: mixc_passes::cost::Resources,
    storage: mixc_passes::Storage,
) -> Result<Vec<Candidate>, LowerError> {
    let all = enumerate(graph, dev.kind).into_iter().map(|s| Schedule { storage, ..s }).collect();
    let mut cands = search_blocks_in_registers(graph, all, free, dev, resources)?;
    let seq_heads = free.get("B").copied().unwrap_or(1) * free.get("H").copied().unwrap_or_else(|| fixed_heads(graph));
    if dev.kind == DeviceKind::Gpu && seq_heads <= NARROW_PREFILL_SEQ_HEADS as u64 {
        let narrow = with_value_blocks(graph, dev.kind, &NARROW_VALUE_BLOCKS, storage);
        cands.extend(search_over(graph, narrow, free, dev, resources)?);
        rank(&mut cands);
    }
    Ok(cands)
}

/// The graph's `H` when it is a constant (1 otherwise).
fn fixed_heads(graph: &Graph) -> u64 {
    graph.dims.lookup("H").and_then(|d| graph.dims.const_size(d)).unwrap_or(1)
}

/// Where a narrow prefill is priced: one sequence of this many tokens.
const NARROW_PREFILL_T: u64 = 2048;

/// A GPU prefill for few sequences × heads: the cheapest schedule whose
/// recurrences run in value blocks of [`NARROW_VALUE_BLOCKS`] columns, priced
/// at one sequence of [`NARROW_PREFILL_T`] tokens, where it beats `base` (the
/// prefill chosen at the default point, lowered as `base_program`) there,
/// in `base`'s storage; `None` otherwise and for a
/// graph without a recurrence. GLA-1.3B (4 heads, dk 256, dv 512), one
/// sequence of 2048 on an H100, as priced: 10.6 ms a layer whole-head
/// (4 programs walk the state), 2.5 ms in blocks of 64.
pub fn narrow_prefill_schedule(
    mixer: &str,
    graph: &Graph,
    dev: &DeviceProfile,
    base: &Schedule,
    base_program: &Program,
) -> Result<Option<Schedule>, Error> {
    let schedules = with_value_blocks(graph, dev.kind, &NARROW_VALUE_BLOCKS, base.storage);
    if schedules.is_empty() {
        return Ok(None);
    }
    let point: BTreeMap<String, u64> =
        [("B".to_string(), 1), ("T".to_string(), NARROW_PREFILL_T)].into_iter().collect();
    let resources = kernel_resources(dev);
    let lower_err = |source| Error::Lower { mixer: mixer.to_string(), source };
    let base_s = mixc_passes::cost::price_with(base_program, &point, dev, &*resources).time_s;
    let cands = search_over(graph, schedules, &point, dev, &*resources).map_err(lower_err)?;
    Ok(cands.into_iter().find(|c| c.rejected.is_none()).filter(|c| c.cost.time_s < base_s).map(|c| c.schedule))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn graph(file: &str) -> crate::NamedGraph {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let mut graphs = crate::graphs_of_file(&path).unwrap_or_else(|e| panic!("{e}"));
        graphs.remove(0)
    }

    /// One sequence of 2, 4 or 16 heads: whole heads leave most SMs idle and
    /// value blocks are priced cheaper.
    #[test]
    fn a_narrow_prefill_only_where_whole_heads_leave_the_card_idle() {
        let dev = DeviceProfile::h100();
        for (file, narrow) in
            [("models/bench/gla-1.3b.toml", true), ("models/gla.toml", true), ("models/bench/gla-h16.toml", true)]
        {
            let g = graph(file);
            let base = auto_schedule(&g.name, &g.graph, &dev, &default_point(&dev)).unwrap_or_else(|e| panic!("{e}"));
            let prog = crate::lower_graph(&g.name, &g.graph, &base).unwrap_or_else(|e| panic!("{e}"));
            let picked =
                narrow_prefill_schedule(&g.name, &g.graph, &dev, &base, &prog).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(picked.is_some(), narrow, "{file}: {picked:?}");
            if let Some(s) = picked {
                assert!(s.block_v >= 16 && s.storage == base.storage, "{file}: {s:?}");
            }
        }
        // No recurrence, no narrow prefill.
        let g = graph("models/llama.toml");
        let base = auto_schedule(&g.name, &g.graph, &dev, &default_point(&dev)).unwrap_or_else(|e| panic!("{e}"));
        let prog = crate::lower_graph(&g.name, &g.graph, &base).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(narrow_prefill_schedule(&g.name, &g.graph, &dev, &base, &prog).ok().flatten(), None);
    }
}
