//! Running tile programs on a CUDA GPU through the driver API (cudarc, loaded
//! at run time, so machines without CUDA build and run the CPU paths).
//!
//! Buffers are 32-bit words on the device (f32 bits for float dtypes, i32 for
//! the rest), as the PTX backend's kernels address them. Outputs and scratch
//! are poisoned with NaN before the launches, so a missing store shows.

use crate::tensor::{Data, HostTensor};
use cudarc::driver::sys::CUfunction_attribute_enum;
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;
use mixc_ir::interp::Tensor;
use mixc_ir::tile::{Arg, BufferRole, ParamKind, Program};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One compiled kernel as the GPU loads it.
#[derive(Clone, Debug)]
pub struct GpuKernel {
    pub name: String,
    pub ptx: String,
    pub threads: u32,
    pub shared_bytes: u32,
    /// Global scratch bytes per CTA; when > 0 the kernel takes one more
    /// argument, a buffer of `scratch_bytes × CTAs` bytes.
    pub scratch_bytes: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("no CUDA driver on this machine (libcuda was not found); use --target cpu")]
    NoDriver,
    #[error("CUDA: {0}")]
    Driver(String),
    #[error("{0}")]
    Program(String),
}

fn drv<E: std::fmt::Debug>(what: &str) -> impl FnOnce(E) -> CudaError + '_ {
    move |e| CudaError::Driver(format!("{what}: {e:?}"))
}

/// Whether a CUDA driver can be loaded.
pub fn available() -> bool {
    // Safety: only probes for the shared library.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// A CUDA device and its stream.
pub struct CudaRunner {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
}

/// What a run returns: the outputs and the GPU time of the launches.
pub struct GpuRun {
    pub outputs: BTreeMap<String, HostTensor>,
    pub millis: f32,
}

impl CudaRunner {
    pub fn new() -> Result<CudaRunner, CudaError> {
        if !available() {
            return Err(CudaError::NoDriver);
        }
        let ctx = CudaContext::new(0).map_err(drv("opening device 0"))?;
        let stream = ctx.default_stream();
        Ok(CudaRunner { ctx, stream })
    }

    /// Loads the kernels of a program (same order as `prog.kernels`).
    pub fn load(&self, prog: &Program, kernels: &[GpuKernel]) -> Result<Vec<CudaFunction>, CudaError> {
        if kernels.len() != prog.kernels.len() {
            return Err(CudaError::Program(format!(
                "{} compiled kernels for a program of {}",
                kernels.len(),
                prog.kernels.len()
            )));
        }
        let mut fns = Vec::new();
        for (k, tk) in kernels.iter().zip(&prog.kernels) {
            if k.name != tk.name {
                return Err(CudaError::Program(format!(
                    "kernel `{}` does not match the program's `{}` (a bundle from another mixc version?)",
                    k.name, tk.name
                )));
            }
            let module = self.ctx.load_module(Ptx::from_src(k.ptx.clone())).map_err(drv("loading PTX"))?;
            let f = module.load_function(&k.name).map_err(drv("finding the kernel"))?;
            if k.shared_bytes > 48 * 1024 {
                f.set_attribute(
                    CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    k.shared_bytes as i32,
                )
                .map_err(drv("raising the shared-memory limit"))?;
            }
            fns.push(f);
        }
        Ok(fns)
    }

    /// Runs every launch of `prog` on `inputs`; `reps` > 1 repeats the launches
    /// for timing (the outputs are those of the last repetition).
    pub fn run(
        &self,
        prog: &Program,
        kernels: &[GpuKernel],
        fns: &[CudaFunction],
        inputs: &BTreeMap<String, HostTensor>,
        reps: usize,
    ) -> Result<GpuRun, CudaError> {
        let shapes: BTreeMap<String, Tensor> =
            inputs.iter().map(|(n, t)| (n.clone(), Tensor { shape: t.shape.clone(), data: vec![] })).collect();
        let sizes = prog.bind(&shapes).map_err(|e| CudaError::Program(e.to_string()))?;
        let mut bufs: Vec<CudaSlice<u32>> = Vec::new();
        for b in &prog.buffers {
            let n: usize = b.shape.iter().map(|c| c.eval(&sizes) as usize).product::<usize>().max(1);
            let words: Vec<u32> = match &b.role {
                BufferRole::Input { name, .. } => match inputs.get(name) {
                    Some(t) => {
                        let mut w = t.words();
                        w.resize(n, 0);
                        w
                    }
                    None => vec![0; n],
                },
                _ => vec![0x7fc0_0000; n],
            };
            bufs.push(self.stream.clone_htod(&words).map_err(drv("copying to the device"))?);
        }
        let start = self
            .stream
            .record_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(drv("event"))?;
        for _ in 0..reps.max(1) {
            for l in &prog.launches {
                let (Some(k), Some(f), Some(tk)) =
                    (kernels.get(l.kernel), fns.get(l.kernel), prog.kernels.get(l.kernel))
                else {
                    return Err(CudaError::Program("launch of a missing kernel".into()));
                };
                let grid = [0, 1, 2].map(|i| l.grid[i].eval(&sizes) as u32);
                if grid.contains(&0) {
                    continue;
                }
                let ints: Vec<i32> = l
                    .args
                    .iter()
                    .map(|a| match a {
                        Arg::Size(c) => c.eval(&sizes) as i32,
                        _ => 0,
                    })
                    .collect();
                let floats: Vec<f32> = l
                    .args
                    .iter()
                    .map(|a| match a {
                        Arg::Float(x) => *x as f32,
                        _ => 0.0,
                    })
                    .collect();
                let mut builder = self.stream.launch_builder(f);
                for (i, (a, p)) in l.args.iter().zip(&tk.params).enumerate() {
                    match (a, &p.kind) {
                        (Arg::Buffer(b), ParamKind::Ptr(_)) => {
                            let buf = bufs.get(*b).ok_or_else(|| CudaError::Program("missing buffer".into()))?;
                            builder.arg(buf);
                        }
                        (Arg::Size(_), ParamKind::Scalar(_)) => {
                            builder.arg(&ints[i]);
                        }
                        (Arg::Float(_), ParamKind::Scalar(_)) => {
                            builder.arg(&floats[i]);
                        }
                        _ => return Err(CudaError::Program(format!("argument kind of `{}` in `{}`", p.name, tk.name))),
                    }
                }
                let scratch = if k.scratch_bytes > 0 {
                    let ctas = grid.iter().map(|g| *g as usize).product::<usize>();
                    let words = (k.scratch_bytes as usize).div_ceil(4) * ctas;
                    Some(self.stream.alloc_zeros::<u32>(words.max(1)).map_err(drv("allocating scratch"))?)
                } else {
                    None
                };
                if let Some(s) = &scratch {
                    builder.arg(s);
                }
                let cfg = LaunchConfig {
                    grid_dim: (grid[0], grid[1], grid[2]),
                    block_dim: (k.threads, 1, 1),
                    shared_mem_bytes: k.shared_bytes,
                };
                // Safety: the arguments match the kernel's parameters in order and
                // kind (checked above); buffer sizes come from the same program.
                unsafe { builder.launch(cfg) }.map_err(drv("launching"))?;
            }
        }
        let end = self
            .stream
            .record_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(drv("event"))?;
        self.stream.synchronize().map_err(drv("running the kernels"))?;
        let millis = start.elapsed_ms(&end).map_err(drv("timing"))? / reps.max(1) as f32;
        let mut outputs = BTreeMap::new();
        for (b, buf) in prog.buffers.iter().zip(&bufs) {
            if let BufferRole::Output(name) = &b.role {
                let words: Vec<u32> = self.stream.clone_dtoh(buf).map_err(drv("copying back"))?;
                let n: usize = b.shape.iter().map(|c| c.eval(&sizes) as usize).product();
                let shape = b.shape.iter().map(|c| c.eval(&sizes) as usize).collect();
                let data = if b.dtype.is_float() {
                    Data::F32(words.iter().take(n).map(|w| f32::from_bits(*w)).collect())
                } else {
                    Data::I32(words.iter().take(n).map(|w| *w as i32).collect())
                };
                outputs.insert(name.clone(), HostTensor { shape, data });
            }
        }
        Ok(GpuRun { outputs, millis })
    }
}
