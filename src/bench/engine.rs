//! What compiles and times programs for `mixc bench`: this CPU (Cranelift
//! code run by the runtime's CPU engine, [`CpuEngine`]) or, with the `cuda`
//! feature, a CUDA GPU (`super::gpu::CudaEngine`). Schedules, rows, sweeps and
//! the tuning cache are the same whatever the engine.

use super::{median, Phase, Sizes, Timing};
use mixc_ir::graph::Graph;
use mixc_ir::tile::Program;
use mixc_passes::Schedule;
use mixc_runtime::{exec, HostTensor};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

/// Named input tensors of one run.
pub type Inputs = BTreeMap<String, HostTensor>;

/// Compiles and times programs on one device.
pub trait BenchEngine {
    /// Compiles (or loads) the kernels of `prog` so that [`BenchEngine::time`]
    /// can run it; the seconds a cold compile of the kernels new to this
    /// process took (`None` when none was new).
    fn compile(&mut self, mixer: &str, prog: &Program) -> Result<Option<f64>, String>;

    /// Times `prog` (compiled first) on `inputs`: medians of `runs` runs after
    /// warm-up (at least 20 where one run takes under 10 ms). `phase`: a
    /// decode step may be timed from cold caches (the CPU's are).
    fn time(&mut self, prog: &Program, inputs: &Inputs, runs: usize, phase: Phase) -> Result<Timing, String>;

    /// Random inputs at `sizes`; the optional ones (state, caches) only `with_optional`.
    fn inputs(&self, g: &Graph, sizes: &Sizes, seed: u64, with_optional: bool) -> Inputs {
        super::random_inputs(g, sizes, seed, with_optional)
    }

    /// The schedule of kernels given ahead of time for a mixer and phase (a
    /// kernel bundle), if the engine has such: `Err` says what is missing.
    fn fixed_schedule(&self, _mixer: &str, _g: &Graph, _phase: Phase) -> Option<Result<Schedule, String>> {
        None
    }
}

/// Below this a run counts as short and gets at least [`MIN_SHORT_RUNS`] runs.
pub const SHORT_RUN_S: f64 = 0.01;
pub const MIN_SHORT_RUNS: usize = 20;

/// This CPU: one runtime call ([`mixc_runtime::cpu::run_timed`]) sets up
/// every buffer, runs the launches and converts the outputs back; each
/// measurement times that call and, inside it, the launches alone (after the
/// buffers are allocated and touched: allocating a split form's hundreds of
/// MB of chunk states is not kernel time). An earlier version subtracted the
/// time of the same call without launches, which allocation noise swamped
/// (8 ms of 846 for Gated DeltaNet's chunk-16 split form). Decode steps run
/// from cold caches ([`mixc_runtime::cpu::run_timed_cold`]): a step's state
/// (16.8 MB at batch 16, H = 16, 128 × 128) fits this machine's 32 MB
/// last-level cache, where the inputs' setup leaves it warm, which no step
/// inside a model finds; ggml's anchor (bench/cpu/ggml.sh) times its decode
/// step cold too.
#[derive(Debug, Default)]
pub struct CpuEngine {
    /// The kernels (by text) this process has compiled.
    compiled: BTreeSet<String>,
}

impl BenchEngine for CpuEngine {
    fn compile(&mut self, _mixer: &str, prog: &Program) -> Result<Option<f64>, String> {
        let cannot = |e| format!("the CPU backend cannot compile it yet: {e}");
        let texts: Vec<String> = prog.kernels.iter().map(mixc_ir::tile::text::print_kernel).collect();
        let fresh = texts.iter().any(|t| !self.compiled.contains(t));
        // Timed without the runtime's disk cache, so the figure is a cold
        // compile even where an earlier process stored the machine code.
        let t0 = Instant::now();
        for (k, text) in prog.kernels.iter().zip(&texts) {
            if !self.compiled.contains(text) {
                mixc_runtime::cpu::compile_with(k, text, None).map_err(cannot)?;
            }
        }
        let dt = t0.elapsed().as_secs_f64();
        // The runs take theirs from the runtime's own caches (memory, disk:
        // `time` prepares the program).
        self.compiled.extend(texts);
        Ok(fresh.then_some(dt))
    }

    fn time(&mut self, prog: &Program, inputs: &Inputs, runs: usize, phase: Phase) -> Result<Timing, String> {
        // (the call's seconds, its launches' seconds, whether every output is finite)
        // The kernels compiled ahead (in the cache already: a lookup), so
        // that the timed launches do not look each up by its text.
        let prepared = mixc_runtime::cpu::prepare(prog).map_err(|e| format!("compiling it failed: {e}"))?;
        let once = || -> Result<(f64, f64, bool), String> {
            let t0 = Instant::now();
            let run = match phase {
                Phase::Decode => mixc_runtime::cpu::run_timed_cold,
                Phase::Prefill => mixc_runtime::cpu::run_timed,
            };
            let (out, launches_s) =
                run(prog, Some(&prepared), inputs).map_err(|e| format!("running it failed: {e}"))?;
            let dt = t0.elapsed().as_secs_f64();
            Ok((dt, launches_s, out.values().all(exec::all_finite)))
        };
        // Warm-up: at least one run, more while they are short.
        let (first, _, finite) = once()?;
        let (mut warm, mut n) = (first, 1);
        while warm < 0.2 && n < 5 {
            warm += once()?.0;
            n += 1;
        }
        let runs = if warm / (n as f64) < SHORT_RUN_S { runs.max(MIN_SHORT_RUNS) } else { runs.max(1) };
        let (mut full, mut launches) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
        for _ in 0..runs {
            let (t, l, _) = once()?;
            full.push(t);
            launches.push(l);
        }
        Ok(Timing { total_s: median(full), launches_s: median(launches), runs, finite })
    }
}
