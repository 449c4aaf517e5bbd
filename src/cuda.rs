//! Running mixers on a CUDA GPU (feature `cuda`): opening the card, getting a
//! program's kernels for it — compiled here through LLVM (feature `llvm`) or
//! taken from a kernel bundle — and running them on named tensors.

use crate::bundle::{BundledProgram, KernelImage};
use crate::Error;
use mixc_ir::tile::Program;
use mixc_passes::device::DeviceProfile;
use mixc_runtime::cuda::{CudaRunner, DeviceInfo, GpuKernel, LoadedProgram};
use mixc_runtime::HostTensor;
use std::collections::BTreeMap;

/// Why a build without LLVM cannot compile kernels, and what to do instead.
pub const NO_LLVM: &str = "this mixc was built without LLVM, so it cannot compile kernels for the GPU: pass \
                           --kernels DIR, a bundle written by `mixc compile FILE --target sm_90 -o DIR` on a \
                           machine with LLVM";

/// The card (device 0) and what it is.
pub struct Gpu {
    runner: CudaRunner,
    info: DeviceInfo,
}

impl Gpu {
    /// Opens device 0; without a CUDA driver, says so.
    pub fn open() -> Result<Gpu, Error> {
        let runner = CudaRunner::new()?;
        let info = runner.device()?;
        Ok(Gpu { runner, info })
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    pub fn runner(&self) -> &CudaRunner {
        &self.runner
    }

    /// The built-in profile the card's name calls for.
    pub fn profile(&self) -> DeviceProfile {
        crate::card::profile(&self.info.name)
    }

    /// The PTX target to compile for this card.
    pub fn target(&self) -> Result<&'static str, Error> {
        crate::card::ptx_target(self.info.compute_capability).map_err(Error::Usage)
    }

    /// Refuses a bundle whose PTX this card cannot load.
    pub fn check_bundle(&self, dir: &std::path::Path, target: &str) -> Result<(), Error> {
        let (major, minor) = self.info.compute_capability;
        if crate::card::runs_on(target, (major, minor)) {
            return Ok(());
        }
        Err(Error::Usage(format!(
            "kernel bundle {}: compiled for {target}, which the {} (compute capability {major}.{minor}) cannot run: \
             rebuild it with --target {}",
            dir.display(),
            self.info.name,
            crate::card::ptx_target((major, minor)).unwrap_or("sm_90")
        )))
    }

    /// Loads compiled kernels of `prog`.
    pub fn load(&self, mixer: &str, prog: &Program, images: &[KernelImage]) -> Result<LoadedProgram, Error> {
        let kernels: Vec<GpuKernel> = images.iter().map(kernel_of).collect();
        self.runner.load(prog, &kernels).map_err(|e| Error::Run { mixer: mixer.to_string(), msg: e.to_string() })
    }

    /// Compiles every kernel of `prog` for this card (default code generation
    /// options) and loads them; needs LLVM.
    pub fn compile(&self, mixer: &str, prog: &Program) -> Result<LoadedProgram, Error> {
        self.compile_with(mixer, prog, crate::pricing::DEFAULT_MATMUL)
    }

    /// [`Gpu::compile`] with `dot`s computed in the mode `matmul` names
    /// (`tf32x3`, `bf16` or `simt`).
    pub fn compile_with(&self, mixer: &str, prog: &Program, matmul: &str) -> Result<LoadedProgram, Error> {
        #[cfg(feature = "llvm")]
        {
            let name = self.target()?;
            let target =
                crate::gpu::target(name).ok_or_else(|| Error::Usage(format!("unknown GPU target `{name}`")))?;
            let matmul = crate::gpu::Matmul::parse(matmul).ok_or_else(|| {
                Error::Usage(format!("unknown matmul mode `{matmul}` (expected tf32x3, bf16 or simt)"))
            })?;
            let opts = crate::gpu::Options { matmul, ..crate::gpu::Options::default() };
            let images: Vec<KernelImage> =
                crate::gpu::compile_program(mixer, prog, target, opts)?.into_iter().map(|c| c.image).collect();
            self.load(mixer, prog, &images)
        }
        #[cfg(not(feature = "llvm"))]
        {
            let _ = (mixer, prog, matmul);
            Err(Error::Usage(NO_LLVM.into()))
        }
    }

    /// Runs a loaded program once on host tensors and returns its outputs.
    pub fn run(
        &self,
        mixer: &str,
        lp: &LoadedProgram,
        inputs: &BTreeMap<String, HostTensor>,
    ) -> Result<BTreeMap<String, HostTensor>, Error> {
        let run = |e: mixc_runtime::cuda::CudaError| Error::Run { mixer: mixer.to_string(), msg: e.to_string() };
        Ok(self.runner.run(lp, inputs, 1).map_err(run)?.outputs)
    }
}

/// A kernel image as the runtime loads it.
pub fn kernel_of(k: &KernelImage) -> GpuKernel {
    GpuKernel {
        name: k.name.clone(),
        ptx: k.code.clone(),
        threads: k.threads,
        shared_bytes: k.shared_bytes,
        scratch_bytes: k.scratch_bytes,
    }
}

/// A mixer's prefill and decode programs loaded on the card; a program a
/// bundle lacks is an error (naming what is missing) when it is run.
pub struct GpuMixer {
    gpu: Gpu,
    prefill: Result<LoadedProgram, String>,
    decode: Result<LoadedProgram, String>,
    /// The decode step in narrow value blocks, where compiled.
    narrow: Option<LoadedProgram>,
    /// The prefill in value blocks for few sequences × heads, where compiled.
    narrow_prefill: Option<LoadedProgram>,
}

/// A mixer's optional programs for few sequences × heads (value blocks).
pub struct Narrow<'a> {
    pub decode: Option<&'a Program>,
    pub prefill: Option<&'a Program>,
}

impl GpuMixer {
    /// Compiles and loads the programs (side by side).
    pub fn compile(mixer: &str, prefill: &Program, decode: &Program, narrow: Narrow) -> Result<GpuMixer, Error> {
        use rayon::prelude::*;
        let gpu = Gpu::open()?;
        let progs = [Some(prefill), Some(decode), narrow.decode, narrow.prefill];
        let mut loaded = progs.par_iter().map(|p| p.map(|p| gpu.compile(mixer, p))).collect::<Vec<_>>().into_iter();
        let (Some(Some(prefill)), Some(Some(decode))) = (loaded.next(), loaded.next()) else {
            return Err(Error::Usage(format!("mixer `{mixer}`: a program did not compile")));
        };
        // The narrow programs are optional: without them, the others run.
        let narrow = loaded.next().flatten().and_then(Result::ok);
        let narrow_prefill = loaded.next().flatten().and_then(Result::ok);
        Ok(GpuMixer { gpu, prefill: Ok(prefill?), decode: Ok(decode?), narrow, narrow_prefill })
    }

    pub fn from_bundle(
        gpu: Gpu,
        mixer: &str,
        prefill: Result<&BundledProgram, String>,
        decode: Result<&BundledProgram, String>,
    ) -> Result<GpuMixer, Error> {
        let load = |p: Result<&BundledProgram, String>| -> Result<Result<LoadedProgram, String>, Error> {
            match p {
                Ok(p) => Ok(Ok(gpu.load(mixer, &p.program, &p.kernels)?)),
                Err(why) => Ok(Err(why)),
            }
        };
        let (prefill, decode) = (load(prefill)?, load(decode)?);
        Ok(GpuMixer { gpu, prefill, decode, narrow: None, narrow_prefill: None })
    }

    /// The card it runs on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// [`GpuMixer::program`], or its narrow form where `narrow` and compiled.
    pub fn program_for(&self, decode: bool, narrow: bool) -> Result<&LoadedProgram, Error> {
        let narrowed = if decode { &self.narrow } else { &self.narrow_prefill };
        match (narrowed, narrow) {
            (Some(lp), true) => Ok(lp),
            _ => self.program(decode),
        }
    }

    /// The loaded decode-step (`decode`) or prefill program.
    pub fn program(&self, decode: bool) -> Result<&LoadedProgram, Error> {
        let lp = if decode { &self.decode } else { &self.prefill };
        lp.as_ref().map_err(|why| Error::Usage(why.clone()))
    }

    /// Runs the decode-step program (`decode`) or the prefill program.
    pub fn run(
        &self,
        mixer: &str,
        decode: bool,
        inputs: &BTreeMap<String, HostTensor>,
    ) -> Result<BTreeMap<String, HostTensor>, Error> {
        let lp = if decode { &self.decode } else { &self.prefill };
        let lp = lp.as_ref().map_err(|why| Error::Usage(why.clone()))?;
        self.gpu.run(mixer, lp, inputs)
    }
}
