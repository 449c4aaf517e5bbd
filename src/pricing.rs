//! What the cost model needs from a backend: the facade asks the GPU backend
//! for each kernel's plan (threads, shared memory, spill to global scratch)
//! and hands the answers to `passes::cost`, which never calls a backend itself.

use mixc_ir::tile::Kernel;
use mixc_passes::cost::KernelResources;
use mixc_passes::device::{DeviceKind, DeviceProfile};

/// A kernel's resources, where the backend can plan it.
pub type ResourceFn = Box<dyn Fn(&Kernel) -> Option<KernelResources>>;

/// Each kernel's resources as the backend for `dev` would plan them: the PTX
/// backend's plan on a GPU profile (when mixc is built with LLVM), nothing on
/// a CPU (the CPU model has no occupancy or spill terms).
pub fn kernel_resources(dev: &DeviceProfile) -> ResourceFn {
    if dev.kind != DeviceKind::Gpu {
        return Box::new(|_| None);
    }
    gpu_resources()
}

#[cfg(feature = "llvm")]
fn gpu_resources() -> ResourceFn {
    Box::new(|k| {
        mixc_backend_ptx::resources(k).ok().map(|r| KernelResources {
            threads: r.threads,
            shared_bytes: u64::from(r.shared_bytes),
            spill_bytes: u64::from(r.scratch_bytes),
        })
    })
}

#[cfg(not(feature = "llvm"))]
fn gpu_resources() -> ResourceFn {
    Box::new(|_| None)
}
