//! mixc's runtime: host tensors and their safetensors files, and the execution
//! of tile programs on a device (the reference tile interpreter today; the CPU
//! JIT and CUDA through the backends as they land). The full-model executor
//! (issue 7) will live here too.
//!
//! **Architecture invariant:** the runtime takes lowered programs; it never
//! lowers or schedules (that is the facade's and the passes' job).

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "cuda")]
pub mod dense;
pub mod disk_cache;
pub mod exec;
pub mod gemv;
pub mod glue;
pub mod layout;
#[cfg(feature = "cuda")]
pub mod projections;
pub mod skinny;
pub mod st;
#[cfg(feature = "cuda")]
mod staging;
pub mod tensor;

pub use exec::{Engine, RunError};
pub use tensor::{Data, HostTensor};
