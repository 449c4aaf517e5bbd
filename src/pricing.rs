//! What the cost model needs from a backend: the facade asks the GPU backend
//! for each kernel's plan (threads, shared memory, spill to global scratch)
//! and hands the answers to `passes::cost`, which never calls a backend itself;
//! and the schedule `chunk = "auto"` stands for: the search's pick.

use crate::Error;
use mixc_ir::graph::Graph;
use mixc_ir::tile::Kernel;
use mixc_passes::cost::KernelResources;
use mixc_passes::device::{DeviceKind, DeviceProfile};
use mixc_passes::search::search_with;
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
/// cheapest candidate that fits): what `chunk = "auto"` means.
pub fn auto_schedule(
    mixer: &str,
    graph: &Graph,
    dev: &DeviceProfile,
    sizes: &BTreeMap<String, u64>,
) -> Result<Schedule, Error> {
    auto_schedule_with(mixer, graph, dev, sizes, &*kernel_resources(dev))
}

/// [`auto_schedule`] with the kernels' resources from `resources`.
pub fn auto_schedule_with(
    mixer: &str,
    graph: &Graph,
    dev: &DeviceProfile,
    sizes: &BTreeMap<String, u64>,
    resources: mixc_passes::cost::Resources,
) -> Result<Schedule, Error> {
    let cands = search_with(graph, sizes, dev, resources)
        .map_err(|source| Error::Lower { mixer: mixer.to_string(), source })?;
    let pick = cands.iter().find(|c| c.rejected.is_none()).or(cands.first());
    Ok(pick.map(|c| c.schedule).unwrap_or_default())
}
