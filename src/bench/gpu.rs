//! Timing on a CUDA GPU (feature `cuda`), for `mixc bench --target cuda`.
//!
//! **What a time is.** A program's inputs are uploaded once per row (and its
//! outputs and temporaries poisoned once, on the device); the warm-up and the
//! timed runs reuse those device buffers. Each run is one pass over the
//! program's launches; `kernel` is the GPU time between CUDA events recorded
//! just before the first launch and just after the last, `total` the host's
//! wall time of the same call (launches enqueued, then waited for). The
//! outputs of the first run are read back once to check that they are finite.
//!
//! Kernels are compiled here through LLVM for the card's compute capability
//! (the "compile" column: PTX generation plus the driver's load), or come
//! from a kernel bundle (`--kernels DIR`: the bundle's schedules, load time only).

use super::engine::{BenchEngine, Inputs, MIN_SHORT_RUNS, SHORT_RUN_S};
use super::{median, Phase, Sizes, Timing};
use crate::bundle::Bundle;
use crate::cuda::Gpu;
use crate::Error;
use mixc_ir::graph::Graph;
use mixc_ir::tile::Program;
use mixc_passes::Schedule;
use mixc_runtime::cuda::LoadedProgram;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A CUDA card and the programs loaded on it.
pub struct CudaEngine {
    gpu: Gpu,
    bundle: Option<(PathBuf, Bundle)>,
    /// Every program loaded so far (a program timed at several sizes loads once).
    loaded: Vec<LoadedProgram>,
    /// How kernels compiled here compute `dot` (`tf32x3`, `bf16`, `simt`).
    pub matmul: String,
}

impl CudaEngine {
    /// Kernels compiled here (needs LLVM).
    pub fn new(gpu: Gpu) -> CudaEngine {
        CudaEngine { gpu, bundle: None, loaded: Vec::new(), matmul: crate::pricing::DEFAULT_MATMUL.into() }
    }

    /// Kernels from a bundle, checked to run on this card.
    pub fn with_bundle(gpu: Gpu, dir: &Path) -> Result<CudaEngine, Error> {
        let bundle = crate::bundle::read_bundle(dir)?;
        gpu.check_bundle(dir, &bundle.target)?;
        let matmul = bundle.matmul.clone();
        Ok(CudaEngine { gpu, bundle: Some((dir.to_path_buf(), bundle)), loaded: Vec::new(), matmul })
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// The bundle's folder and contents, where the kernels come from one.
    pub fn bundle(&self) -> Option<(&Path, &Bundle)> {
        self.bundle.as_ref().map(|(d, b)| (d.as_path(), b))
    }

    fn find(&self, prog: &Program) -> Option<&LoadedProgram> {
        self.loaded.iter().find(|lp| lp.program() == prog)
    }
}

fn mode(phase: Phase) -> &'static str {
    match phase {
        Phase::Prefill => "prefill",
        Phase::Decode => "decode",
    }
}

impl BenchEngine for CudaEngine {
    fn compile(&mut self, mixer: &str, prog: &Program) -> Result<Option<f64>, String> {
        if self.find(prog).is_some() {
            return Ok(None);
        }
        let t0 = Instant::now();
        let lp = match &self.bundle {
            Some((dir, b)) => {
                let p = b.programs.iter().find(|p| p.mixer == mixer && p.program == *prog).ok_or_else(|| {
                    format!("kernel bundle {} has no kernels for this program of mixer `{mixer}`", dir.display())
                })?;
                self.gpu.load(mixer, prog, &p.kernels)
            }
            None => self.gpu.compile_with(mixer, prog, &self.matmul),
        }
        .map_err(|e| e.to_string())?;
        let dt = t0.elapsed().as_secs_f64();
        self.loaded.push(lp);
        Ok(Some(dt))
    }

    fn time(&mut self, prog: &Program, inputs: &Inputs, runs: usize, _phase: Phase) -> Result<Timing, String> {
        let lp = self.find(prog).ok_or("the program was not compiled before it was timed")?;
        let runner = self.gpu.runner();
        let err = |e: mixc_runtime::cuda::CudaError| e.to_string();
        let prepared = runner.prepare(lp, inputs).map_err(err)?;
        // Warm-up: at least one run, more while they are short.
        let (first_s, first_ms) = runner.time_once(lp, &prepared).map_err(err)?;
        let finite = runner.outputs_finite(&prepared).map_err(err)?;
        let (mut warm, mut n) = (first_s, 1);
        while warm < 0.1 && n < 10 {
            warm += runner.time_once(lp, &prepared).map_err(err)?.0;
            n += 1;
        }
        let short = (first_ms as f64) * 1e-3 < SHORT_RUN_S;
        let runs = if short { runs.max(MIN_SHORT_RUNS) } else { runs.max(1) };
        let (mut host, mut gpu) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
        for _ in 0..runs {
            let (s, ms) = runner.time_once(lp, &prepared).map_err(err)?;
            host.push(s);
            gpu.push(ms as f64 * 1e-3);
        }
        Ok(Timing { total_s: median(host), launches_s: median(gpu), runs, finite })
    }

    fn inputs(&self, g: &Graph, sizes: &Sizes, seed: u64, with_optional: bool) -> Inputs {
        let by_name: BTreeMap<&str, usize> = sizes.iter().map(|(k, v)| (k.as_str(), *v as usize)).collect();
        super::inputs::fast_inputs(g, &by_name, seed, with_optional)
    }

    fn fixed_schedule(&self, mixer: &str, g: &Graph, phase: Phase) -> Option<Result<Schedule, String>> {
        let (dir, b) = self.bundle.as_ref()?;
        Some(
            b.program_for(mixer, g, mode(phase))
                .map(|p| p.schedule)
                .map_err(|why| format!("kernel bundle {}: {why}", dir.display())),
        )
    }
}
