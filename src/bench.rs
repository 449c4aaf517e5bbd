//! Timing mixers (`mixc bench`) on this CPU or a CUDA GPU: prefill and
//! decode steps at given sizes, the schedule candidates of the search against
//! the cost model's predictions (`--sweep`), and a disk cache of measured
//! winners (`--tune`).
//!
//! Measuring lives here, in the facade (DESIGN.md section 1): `passes`
//! enumerate and price candidates; this module lowers, compiles and runs
//! them through the runtime and hands a winner back as a `Schedule`.
//!
//! **What a time is** depends on the engine ([`BenchEngine`]): on the CPU
//! ([`CpuEngine`]) one runtime call, and inside it the launches alone
//! (after the buffers are set up); on a GPU (`gpu::CudaEngine`, feature `cuda`) CUDA events
//! around the launches, on buffers uploaded once. Either way the rates are
//! taken over the launches' time ([`Timing::kernel_s`]).
//!
//! **What FLOPs and bytes are.** [`mixc_passes::cost`]'s count of the program
//! that ran: matrix plus vector FLOPs, DRAM bytes loaded plus stored (the
//! walk of the tile program at these sizes, not a formula per mixer).

use crate::{Error, NamedGraph};
use mixc_ir::graph::Graph;
use mixc_ir::model::{self, MixerConfig};
use mixc_passes::cost::{price_with, KernelCost, ProgramCost};
use mixc_passes::device::DeviceProfile;
use mixc_passes::search::search_with;
use mixc_passes::{Schedule, Storage};
use mixc_runtime::HostTensor;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

mod engine;
#[cfg(feature = "cuda")]
pub mod gpu;
pub mod inputs;

pub use engine::{BenchEngine, CpuEngine, Inputs};

/// The mixc version tuned schedules are keyed by.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Sizes of dims by name, as given on the command line (`B=1,H=16,T=512`).
pub type Sizes = BTreeMap<String, u64>;

/// Default prefill lengths and decode batches when `--sizes` gives none.
pub const DEFAULT_PREFILL_T: [u64; 3] = [512, 2048, 8192];
pub const DEFAULT_DECODE_B: [u64; 2] = [1, 16];
/// KV cache length of decode steps when the sizes name none.
pub const DEFAULT_CONTEXT: u64 = 2048;
/// GPU defaults: prefill at B = 8 (and H = 16 where the head count is a free
/// dim) and these lengths, decode steps at these batches.
pub const GPU_BATCH: u64 = 8;
pub const GPU_HEADS: u64 = 16;
pub const GPU_PREFILL_T: [u64; 2] = [2048, 8192];
pub const GPU_DECODE_B: [u64; 2] = [64, 256];

/// The size points a phase runs at when `--sizes` gives none: on the CPU,
/// prefill at T = 512, 2048, 8192 and decode at B = 1, 16; on a GPU, B = 8
/// with T = 2048, 8192 and decode at B = 64, 256 (H = 16 where `g`'s head
/// count is free, else the file's).
pub fn default_points(gpu: bool, phase: Phase, g: &Graph) -> Vec<Sizes> {
    let point = |pairs: &[(&str, u64)]| -> Sizes {
        let mut p: Sizes = pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        if gpu && free_dims(g).iter().any(|d| d == "H") {
            p.insert("H".into(), GPU_HEADS);
        }
        p
    };
    match (gpu, phase) {
        (false, Phase::Prefill) => DEFAULT_PREFILL_T.iter().map(|t| point(&[("T", *t)])).collect(),
        (false, Phase::Decode) => DEFAULT_DECODE_B.iter().map(|b| point(&[("B", *b)])).collect(),
        (true, Phase::Prefill) => GPU_PREFILL_T.iter().map(|t| point(&[("B", GPU_BATCH), ("T", *t)])).collect(),
        (true, Phase::Decode) => GPU_DECODE_B.iter().map(|b| point(&[("B", *b)])).collect(),
    }
}

/// The size point a sweep runs at when `--sizes` gives none: T = 2048 on the
/// CPU, B = 8 and T = 8192 on a GPU.
pub fn default_sweep_point(gpu: bool, g: &Graph) -> Sizes {
    let mut p = if gpu {
        Sizes::from([("B".to_string(), GPU_BATCH), ("T".to_string(), *GPU_PREFILL_T.last().unwrap_or(&8192))])
    } else {
        Sizes::from([("T".to_string(), 2048)])
    };
    if gpu && free_dims(g).iter().any(|d| d == "H") {
        p.insert("H".into(), GPU_HEADS);
    }
    p
}

/// Parses `B=1,H=16,T=512` (dims by name; each at most once).
pub fn parse_sizes(text: &str) -> Result<Sizes, Error> {
    let mut out = Sizes::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || Error::Usage(format!("--sizes: `{part}` is not DIM=N (e.g. B=1,H=16,T=512)"));
        let (k, v) = part.split_once('=').ok_or_else(bad)?;
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(bad());
        }
        let n: u64 = v.parse().map_err(|_| bad())?;
        if n == 0 && matches!(k, "B" | "H" | "T") {
            return Err(Error::Usage(format!("--sizes: {k} must be at least 1, not 0")));
        }
        if n > 1 << 24 {
            return Err(Error::Usage(format!("--sizes: {k}={n} is far too large to run here")));
        }
        if out.insert(k.to_string(), n).is_some() {
            return Err(Error::Usage(format!("--sizes: {k} is given twice in `{text}`")));
        }
    }
    if out.is_empty() {
        return Err(Error::Usage(format!("--sizes: `{text}` names no dim (e.g. B=1,H=16,T=512)")));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// The mixers of a file.

/// A mixer to time: its graph as the file describes it and, for model files,
/// its table (so it can be rebuilt at another head count).
#[derive(Clone, Debug)]
pub struct BenchMixer {
    pub named: NamedGraph,
    cfg: Option<MixerConfig>,
    path: String,
}

impl BenchMixer {
    pub fn name(&self) -> &str {
        &self.named.name
    }

    /// The graph at `H = heads` (the file's own when `None` or equal).
    pub fn graph_at(&self, heads: Option<u64>) -> Result<Graph, Error> {
        let g = &self.named.graph;
        let Some(h) = heads else { return Ok(g.clone()) };
        // A free head count is bound like B and T.
        if free_dims(g).iter().any(|d| d == "H") {
            return Ok(g.clone());
        }
        let current = fixed_dim(g, "H");
        if current == Some(h) {
            return Ok(g.clone());
        }
        let (Some(cfg), Some(current)) = (&self.cfg, current) else {
            return Err(Error::Usage(format!(
                "--sizes: H cannot be set for mixer `{}` of {} (its head count is fixed by the graph)",
                self.name(),
                self.path
            )));
        };
        let mut cfg = cfg.clone();
        cfg.heads = u32::try_from(h).map_err(|_| Error::Usage(format!("--sizes: H={h} is too large")))?;
        // Grouped-query attention keeps its group size.
        if let Some(kv) = cfg.kv_heads.filter(|kv| *kv as u64 != current) {
            let group = current / kv.max(1) as u64;
            if group == 0 || h % group != 0 {
                return Err(Error::Usage(format!(
                    "--sizes: H={h} for mixer `{}`: its {kv} kv heads serve groups of {group} query heads, and {group} \
                     does not divide {h}",
                    self.name()
                )));
            }
            cfg.kv_heads = Some((h / group) as u32);
        } else if cfg.kv_heads.is_some() {
            cfg.kv_heads = Some(cfg.heads);
        }
        let graph = mixc_ir::mixers::build(self.name(), &cfg)
            .map_err(|e| Error::Usage(format!("--sizes: mixer `{}` cannot be built with H={h}: {e}", self.name())))?;
        mixc_ir::verify::verify(&graph).map_err(|source| Error::MixerVerify {
            path: self.path.clone(),
            mixer: self.name().to_string(),
            source,
        })?;
        Ok(graph)
    }
}

/// The distinct mixers of a model file (or the graph of a `.mix` file).
pub fn load_mixers(path: &Path) -> Result<Vec<BenchMixer>, Error> {
    let shown = path.display().to_string();
    if crate::is_graph_text(path) {
        return Ok(crate::graphs_of_file(path)?
            .into_iter()
            .map(|named| BenchMixer { named, cfg: None, path: shown.clone() })
            .collect());
    }
    let file = model::load_model(path)?;
    let graphs = crate::mixer_graphs(&file, &shown)?;
    Ok(graphs
        .into_iter()
        .map(|named| {
            let cfg = file.mixer.get(&named.name).cloned();
            BenchMixer { named, cfg, path: shown.clone() }
        })
        .collect())
}

/// The size of a dim that does not depend on free dims; `None` if the graph
/// has no such dim or it is free.
fn fixed_dim(g: &Graph, name: &str) -> Option<u64> {
    let (d, def) = g.dims.iter().find(|(_, def)| def.name == name)?;
    def.size.as_ref()?;
    g.dims.eval(d, &BTreeMap::new()).ok()
}

/// Names of the free dims of a graph (`B`, `T`, cache lengths).
fn free_dims(g: &Graph) -> Vec<String> {
    g.dims.iter().filter(|(_, def)| def.size.is_none()).map(|(_, def)| def.name.clone()).collect()
}

/// Checks every key of `sizes` against the mixers: each must be a dim of at
/// least one of them, and a fixed dim (other than `H`, which rebuilds the
/// mixer) must have the file's value.
pub fn check_sizes(mixers: &[BenchMixer], sizes: &Sizes) -> Result<(), Error> {
    for (k, v) in sizes {
        let mut known = false;
        for m in mixers {
            let g = &m.named.graph;
            if g.dims.lookup(k).is_none() {
                continue;
            }
            known = true;
            if k == "H" {
                continue;
            }
            if let Some(fixed) = fixed_dim(g, k) {
                if fixed != *v {
                    return Err(Error::Usage(format!(
                        "--sizes: {k} is {fixed} in mixer `{}` of {}, not {v} (only the free dims {} and H can be \
                         set; edit the file for other head dims)",
                        m.name(),
                        m.path,
                        free_dims(g).join(", ")
                    )));
                }
            }
        }
        if !known {
            let mut dims: BTreeSet<String> = BTreeSet::new();
            for m in mixers {
                dims.extend(m.named.graph.dims.iter().map(|(_, d)| d.name.clone()));
            }
            return Err(Error::Usage(format!(
                "--sizes: unknown dim `{k}` (the mixers have: {})",
                dims.into_iter().collect::<Vec<_>>().join(", ")
            )));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Timing.

/// Prefill (chunked or whatever the schedule says, many tokens) or one decode step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Prefill,
    Decode,
}

/// Medians of `runs` timings after warm-up.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timing {
    /// One call as the host sees it (CPU: buffers set up, launches, outputs
    /// converted; GPU: the launches enqueued and waited for).
    pub total_s: f64,
    /// The launches alone (CPU: timed inside the runtime call, after the
    /// buffers are set up; GPU: CUDA events around the launches).
    pub launches_s: f64,
    pub runs: usize,
    /// Every output of the first run was finite.
    pub finite: bool,
}

impl Timing {
    /// The launches' time, which rates are taken over.
    pub fn kernel_s(&self) -> f64 {
        self.launches_s
    }
}

/// Total FLOPs (matrix + vector) and DRAM bytes (loaded + stored) of a priced program.
pub fn work(cost: &ProgramCost) -> (f64, f64) {
    (cost.kernels.iter().map(KernelCost::flops).sum(), cost.kernels.iter().map(KernelCost::bytes).sum())
}

/// One measured row of `mixc bench`.
#[derive(Clone, Debug)]
pub struct Row {
    pub mixer: String,
    pub phase: Phase,
    /// The sizes it ran at: the free dims and `H`.
    pub sizes: Sizes,
    pub schedule: Schedule,
    /// Where the schedule came from: `model` (the search's pick), `table`
    /// (the mixer table's chunk), `tuned` (the disk cache), `decode`.
    pub schedule_from: &'static str,
    /// Seconds to JIT-compile the program's kernels the first time; `None`
    /// when this process had compiled them all already.
    pub compile_s: Option<f64>,
    pub timing: Timing,
    /// The cost model's count and prediction at these sizes.
    pub cost: ProgramCost,
}

/// A row that could not be measured, and why.
#[derive(Clone, Debug)]
pub struct Failure {
    pub mixer: String,
    pub phase: Phase,
    pub sizes: Sizes,
    pub why: String,
}

/// Lowers, compiles and times mixers on one engine (this CPU unless given
/// another), pricing them on `dev`.
pub struct Bencher<'a> {
    pub dev: &'a DeviceProfile,
    /// Timed runs per measurement (at least 20 where one run takes under 10 ms).
    pub runs: usize,
    pub seed: u64,
    /// The storage of activations in every schedule it compiles (a bundle's
    /// schedules keep their own).
    pub storage: Storage,
    /// The `dot` mode the kernels are compiled with, which the search prices
    /// (`tf32x3`, `bf16`, `simt`; GPU kernels only).
    pub matmul: String,
    engine: Box<dyn BenchEngine + 'a>,
}

impl<'a> Bencher<'a> {
    /// Times on this CPU.
    pub fn new(dev: &'a DeviceProfile, runs: usize, seed: u64) -> Bencher<'a> {
        Bencher::with_engine(dev, runs, seed, Box::new(CpuEngine::default()))
    }

    /// Times on `engine` (e.g. a GPU's).
    pub fn with_engine(
        dev: &'a DeviceProfile,
        runs: usize,
        seed: u64,
        engine: Box<dyn BenchEngine + 'a>,
    ) -> Bencher<'a> {
        Bencher {
            dev,
            runs: runs.max(1),
            seed,
            storage: Storage::F32,
            matmul: crate::pricing::DEFAULT_MATMUL.into(),
            engine,
        }
    }

    /// The kernels' resources the search and the rows' predictions price with.
    fn resources(&self) -> crate::pricing::ResourceFn {
        crate::pricing::kernel_resources_for(self.dev, &self.matmul)
            .unwrap_or_else(|_| crate::pricing::kernel_resources(self.dev))
    }

    /// The sizes a row runs at: prefill at `B`, `T` (cache dims empty unless
    /// given); a decode step at `B` with one new token and every cache dim at
    /// the point's `S`, else its `T`, else [`DEFAULT_CONTEXT`].
    pub fn bind(&self, g: &Graph, phase: Phase, point: &Sizes) -> Sizes {
        let mut out = Sizes::new();
        for name in free_dims(g) {
            let v = match (phase, name.as_str()) {
                (_, "B") => point.get("B").copied().unwrap_or(1),
                (Phase::Prefill, "T") => point.get("T").copied().unwrap_or(DEFAULT_PREFILL_T[1]),
                (Phase::Decode, "T") => 1,
                (Phase::Prefill, _) => point.get(&name).copied().unwrap_or(0),
                (Phase::Decode, _) => point
                    .get(&name)
                    .or_else(|| point.get("S"))
                    .or_else(|| point.get("T"))
                    .copied()
                    .unwrap_or(DEFAULT_CONTEXT),
            };
            out.insert(name, v);
        }
        if let Some(h) = fixed_dim(g, "H") {
            out.insert("H".into(), h);
        }
        out
    }

    /// Lowers, compiles and times one mixer at one size point.
    pub fn row(&mut self, m: &BenchMixer, phase: Phase, point: &Sizes) -> Result<Row, Failure> {
        let fail =
            |sizes: &Sizes, why: String| Failure { mixer: m.name().to_string(), phase, sizes: sizes.clone(), why };
        let graph = m.graph_at(point.get("H").copied()).map_err(|e| fail(point, e.to_string()))?;
        let sizes = self.bind(&graph, phase, point);
        let (schedule, schedule_from) = match (self.engine.fixed_schedule(m.name(), &graph, phase), phase) {
            (Some(fixed), _) => (fixed.map_err(|e| fail(&sizes, e))?, "bundle"),
            (None, Phase::Decode) => {
                (Schedule { storage: self.storage, ..Schedule::decode_for(self.dev.kind) }, "decode")
            }
            (None, Phase::Prefill) => {
                let (s, from) = self.prefill_schedule(m, &graph, &sizes).map_err(|e| fail(&sizes, e.to_string()))?;
                (Schedule { storage: self.storage, ..s }, from)
            }
        };
        let prog = crate::lower_graph(m.name(), &graph, &schedule).map_err(|e| fail(&sizes, e.to_string()))?;
        let compile_s = self.engine.compile(m.name(), &prog).map_err(|e| fail(&sizes, e))?;
        let inputs = self.engine.inputs(&graph, &sizes, self.seed, carries(phase, &sizes));
        let timing = self.engine.time(&prog, &inputs, self.runs, phase).map_err(|e| fail(&sizes, e))?;
        drop(inputs);
        let cost = price_with(&prog, &sizes, self.dev, &*self.resources());
        Ok(Row { mixer: m.name().to_string(), phase, sizes, schedule, schedule_from, compile_s, timing, cost })
    }

    /// The prefill schedule: a tuned one from the disk cache, else the
    /// table's chunk, else the search's pick on this profile.
    fn prefill_schedule(
        &self,
        m: &BenchMixer,
        graph: &Graph,
        sizes: &Sizes,
    ) -> Result<(Schedule, &'static str), Error> {
        if let Some(s) = tuned_schedule(graph, sizes, self.dev) {
            return Ok((s, "tuned"));
        }
        if let Some(c) = m.named.chunk {
            return Ok((Schedule::with_chunk(c), "table"));
        }
        let cands = search_with(graph, sizes, self.dev, &*self.resources())
            .map_err(|source| Error::Lower { mixer: m.name().to_string(), source })?;
        let pick = cands.iter().find(|c| c.rejected.is_none()).or(cands.first());
        Ok((pick.map(|c| c.schedule).unwrap_or_default(), "model"))
    }

    /// Measures the feasible candidates of the schedule search for one mixer
    /// at one size point (at most `max` of them, cheapest predicted first).
    pub fn sweep(&mut self, m: &BenchMixer, point: &Sizes, max: usize) -> Result<Sweep, Failure> {
        let fail = |sizes: &Sizes, why: String| Failure {
            mixer: m.name().to_string(),
            phase: Phase::Prefill,
            sizes: sizes.clone(),
            why,
        };
        let graph = m.graph_at(point.get("H").copied()).map_err(|e| fail(point, e.to_string()))?;
        let sizes = self.bind(&graph, Phase::Prefill, point);
        let cands = crate::pricing::candidates_at(&graph, &sizes, self.dev, &*self.resources(), self.storage)
            .map_err(|e| fail(&sizes, e.to_string()))?;
        let total = cands.len();
        let feasible: Vec<_> = cands.into_iter().filter(|c| c.rejected.is_none()).collect();
        let infeasible = total - feasible.len();
        let inputs = self.engine.inputs(&graph, &sizes, self.seed, carries(Phase::Prefill, &sizes));
        let mut entries = Vec::new();
        for (i, c) in feasible.iter().enumerate().take(max.max(1)) {
            let schedule = Schedule { storage: self.storage, ..c.schedule };
            let measured =
                crate::lower_graph(m.name(), &graph, &schedule).map_err(|e| e.to_string()).and_then(|prog| {
                    let compile_s = self.engine.compile(m.name(), &prog)?;
                    Ok((compile_s, self.engine.time(&prog, &inputs, self.runs, Phase::Prefill)?))
                });
            let (compile_s, measured) = match measured {
                Ok((c, t)) => (c, Ok(t)),
                Err(e) => (None, Err(e)),
            };
            entries.push(SweepEntry {
                predicted_rank: i + 1,
                schedule,
                predicted_s: c.cost.time_s,
                cost: c.cost.clone(),
                compile_s,
                measured,
            });
        }
        // The first candidate runs right after the inputs are drawn, on cold
        // caches, page tables and thread pool: on the CPU it measured up to
        // 2.5× slow at the first point of a sweep (bench/RESULTS.md,
        // 2026-12-06), and the first is the model's pick. So it is timed once
        // more at the end and keeps the faster timing.
        if entries.len() > 1 {
            if let Some(first) = entries.first_mut() {
                let again = crate::lower_graph(m.name(), &graph, &first.schedule)
                    .map_err(|e| e.to_string())
                    .and_then(|prog| self.engine.time(&prog, &inputs, self.runs, Phase::Prefill));
                if let (Ok(t), Ok(before)) = (again, &first.measured) {
                    if t.launches_s < before.launches_s {
                        first.measured = Ok(t);
                    }
                }
            }
        }
        let graph_hash = graph_hash(&graph);
        Ok(Sweep { mixer: m.name().to_string(), sizes, graph_hash, feasible: feasible.len(), infeasible, entries })
    }
}

/// The median of `xs` (0 for none).
pub(crate) fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => 0.0,
        n if n % 2 == 1 => xs[n / 2],
        n => 0.5 * (xs[n / 2 - 1] + xs[n / 2]),
    }
}

/// Whether a run takes the optional inputs (carried state, caches): decode
/// steps do, and a prefill does when the sizes give a cache length.
fn carries(phase: Phase, sizes: &Sizes) -> bool {
    phase == Phase::Decode || sizes.iter().any(|(k, v)| !matches!(k.as_str(), "B" | "T" | "H") && *v > 0)
}

/// Random inputs at `sizes` (the mixer library's distributions), as host
/// tensors; the optional ones (carried state, caches) only `with_optional`.
fn random_inputs(g: &Graph, sizes: &Sizes, seed: u64, with_optional: bool) -> BTreeMap<String, HostTensor> {
    let by_name: BTreeMap<&str, usize> = sizes.iter().map(|(k, v)| (k.as_str(), *v as usize)).collect();
    let mut drawn = mixc_ir::mixers::random_inputs(g, &by_name, seed, with_optional);
    g.inputs()
        .into_iter()
        .filter_map(|(name, v, _)| {
            // Convert one tensor at a time so the f64 copies do not pile up.
            let t = drawn.remove(name)?;
            let host = HostTensor::from_f64(&t, !g.ty(v).dtype.is_float());
            Some((name.to_string(), host))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Sweeps.

/// One candidate of a sweep.
#[derive(Clone, Debug)]
pub struct SweepEntry {
    /// 1 = the model's pick.
    pub predicted_rank: usize,
    pub schedule: Schedule,
    pub predicted_s: f64,
    pub cost: ProgramCost,
    pub compile_s: Option<f64>,
    pub measured: Result<Timing, String>,
}

/// The measured candidates of one mixer at one size point.
#[derive(Clone, Debug)]
pub struct Sweep {
    pub mixer: String,
    pub sizes: Sizes,
    pub graph_hash: String,
    pub feasible: usize,
    pub infeasible: usize,
    /// Cheapest predicted first.
    pub entries: Vec<SweepEntry>,
}

impl Sweep {
    /// Kernel seconds of the measured entries, by entry index.
    fn measured(&self) -> Vec<(usize, f64)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.measured.as_ref().ok().map(|t| (i, t.kernel_s())))
            .collect()
    }

    /// Index of the fastest measured entry.
    pub fn fastest(&self) -> Option<usize> {
        self.measured().into_iter().min_by(|a, b| a.1.total_cmp(&b.1)).map(|(i, _)| i)
    }

    /// 1-based measured rank of every entry (`None` where it did not run).
    pub fn measured_ranks(&self) -> Vec<Option<usize>> {
        let mut m = self.measured();
        m.sort_by(|a, b| a.1.total_cmp(&b.1));
        let mut ranks = vec![None; self.entries.len()];
        for (rank, (i, _)) in m.into_iter().enumerate() {
            ranks[i] = Some(rank + 1);
        }
        ranks
    }

    /// The pick's measured rank and how much slower than the fastest it ran
    /// (0.1 = 10%); `None` if the pick did not run.
    pub fn pick_gap(&self) -> Option<(usize, f64)> {
        let ranks = self.measured_ranks();
        let rank = (*ranks.first()?)?;
        let pick = self.entries.first()?.measured.as_ref().ok()?.kernel_s();
        let best = self.entries.get(self.fastest()?)?.measured.as_ref().ok()?.kernel_s();
        Some((rank, pick / best.max(1e-12) - 1.0))
    }

    /// Spearman's rank correlation of predicted and measured times over the
    /// measured entries (`None` under three of them).
    pub fn rank_correlation(&self) -> Option<f64> {
        let m = self.measured();
        if m.len() < 3 {
            return None;
        }
        let pred: Vec<f64> = m.iter().map(|(i, _)| self.entries[*i].predicted_s).collect();
        let meas: Vec<f64> = m.iter().map(|(_, t)| *t).collect();
        let (rp, rm) = (ranks_of(&pred), ranks_of(&meas));
        let n = rp.len() as f64;
        let mean = (n + 1.0) / 2.0;
        let cov: f64 = rp.iter().zip(&rm).map(|(a, b)| (a - mean) * (b - mean)).sum();
        let var = |r: &[f64]| r.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>();
        let den = (var(&rp) * var(&rm)).sqrt();
        (den > 0.0).then(|| cov / den)
    }
}

/// Ranks (1-based, ties averaged) of a list of values.
fn ranks_of(xs: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..xs.len()).collect();
    idx.sort_by(|a, b| xs[*a].total_cmp(&xs[*b]));
    let mut ranks = vec![0.0; xs.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && xs[idx[j + 1]] == xs[idx[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for k in &idx[i..=j] {
            ranks[*k] = r;
        }
        i = j + 1;
    }
    ranks
}

/// A schedule in words, naming only what varies for the graph: `chunk 64
/// fused` or `token by token` for recurrences (`v32`: value columns split
/// over programs in blocks of 32), `q64 k64` blocks for attention (`kv512`:
/// keys split over programs in runs of 512).
pub fn describe(s: &Schedule, g: &Graph) -> String {
    let mut parts = Vec::new();
    if has_recurrence(g) {
        parts.push(s.form());
        if s.block_v > 0 {
            parts.push(format!("v{}", s.block_v));
        }
        let has_conv = g.ops.iter().any(|o| matches!(o.kind, mixc_ir::OpKind::CausalConv1d { .. }));
        if has_conv && !s.fuse_conv {
            parts.push("conv apart".to_string());
        }
    }
    if has_attention(g) {
        parts.push(format!("q{} k{}", s.block_q, s.block_k));
        if s.kv_split > 0 {
            parts.push(format!("kv{}", s.kv_split));
        }
    }
    if parts.is_empty() {
        parts.push(format!("blocks of {}", s.block_elems));
    }
    if s.storage.is_narrow() {
        parts.push(format!("{} storage", s.storage));
    }
    parts.join(", ")
}

/// Whether a graph has an attention op (its schedules differ in blocks).
pub fn has_attention(g: &Graph) -> bool {
    g.ops.iter().any(|o| matches!(o.kind, mixc_ir::OpKind::Attention { .. }))
}

/// Whether a graph has a recurrence (its schedules differ in chunking).
pub fn has_recurrence(g: &Graph) -> bool {
    g.ops.iter().any(|o| matches!(o.kind, mixc_ir::OpKind::LinearRecurrence(_)))
}

// ---------------------------------------------------------------------------
// The tuning cache.

/// The tuning cache's file in the cache folder.
pub const TUNED_FILE: &str = "tuned.toml";

/// One cached winner.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct TunedEntry {
    /// FNV-1a of the graph's canonical text.
    pub graph: String,
    pub size_class: String,
    pub device: String,
    pub version: String,
    /// For people reading the file.
    #[serde(default)]
    pub mixer: String,
    #[serde(default)]
    pub measured_ms: f64,
    pub schedule: Schedule,
}

#[derive(Debug, Default, serde::Deserialize, serde::Serialize)]
struct TunedFile {
    #[serde(default)]
    entry: Vec<TunedEntry>,
}

/// FNV-1a (64-bit) of the graph's canonical text: stable across runs and builds.
pub fn graph_hash(g: &Graph) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in mixc_ir::text::print(g).bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The size class a tuned schedule stands for: B·H and T (and a cache
/// length) rounded up to powers of two.
pub fn size_class(sizes: &Sizes) -> String {
    let get = |k: &str| sizes.get(k).copied().unwrap_or(1).max(1);
    let mut s = format!("BH{}-T{}", (get("B") * get("H")).next_power_of_two(), get("T").next_power_of_two());
    if let Some(c) = sizes.get("S").filter(|c| **c > 0) {
        s.push_str(&format!("-S{}", c.next_power_of_two()));
    }
    s
}

/// The device a tuned schedule was measured on.
pub fn device_key(dev: &DeviceProfile) -> String {
    format!("{}/{}", dev.name, dev.units)
}

fn tuned_path() -> Option<PathBuf> {
    crate::calibrate::cache_dir().map(|d| d.join(TUNED_FILE))
}

/// The cache's readable entries (a file that does not parse, or an entry
/// that does not, is ignored: the cache is only ever a hint).
fn read_tuned(path: &Path) -> Vec<TunedEntry> {
    let Ok(src) = std::fs::read_to_string(path) else { return Vec::new() };
    let Ok(value) = src.parse::<toml::Table>() else { return Vec::new() };
    let Some(toml::Value::Array(items)) = value.get("entry") else { return Vec::new() };
    items
        .iter()
        .filter_map(|v| v.clone().try_into::<TunedEntry>().ok())
        .filter(|e| e.schedule.validate().is_ok())
        .collect()
}

/// The cached winner for this graph, size class, device and mixc version.
pub fn tuned_schedule(g: &Graph, sizes: &Sizes, dev: &DeviceProfile) -> Option<Schedule> {
    let path = tuned_path()?;
    let (graph, class, device) = (graph_hash(g), size_class(sizes), device_key(dev));
    read_tuned(&path)
        .into_iter()
        .find(|e| e.graph == graph && e.size_class == class && e.device == device && e.version == VERSION)
        .map(|e| e.schedule)
}

/// Stores the fastest measured entry of a sweep as the winner of its key
/// (replacing an older one); returns the file and the winner.
pub fn save_tuned(sweep: &Sweep, dev: &DeviceProfile) -> Result<Option<(PathBuf, TunedEntry)>, Error> {
    let Some(best) = sweep.fastest().and_then(|i| sweep.entries.get(i)) else { return Ok(None) };
    let Ok(t) = &best.measured else { return Ok(None) };
    let path = tuned_path()
        .ok_or_else(|| Error::Usage("--tune: no cache folder (set MIXC_HOME, XDG_CACHE_HOME or HOME)".into()))?;
    let entry = TunedEntry {
        graph: sweep.graph_hash.clone(),
        size_class: size_class(&sweep.sizes),
        device: device_key(dev),
        version: VERSION.to_string(),
        mixer: sweep.mixer.clone(),
        measured_ms: (t.kernel_s() * 1e6).round() / 1e3,
        schedule: best.schedule,
    };
    let mut file = TunedFile { entry: read_tuned(&path) };
    file.entry.retain(|e| {
        !(e.graph == entry.graph
            && e.size_class == entry.size_class
            && e.device == entry.device
            && e.version == entry.version)
    });
    file.entry.push(entry.clone());
    let body =
        toml::to_string(&file).map_err(|e| Error::Usage(format!("--tune: cannot write the tuning cache: {e}")))?;
    let text = format!(
        "# mixc's tuned schedules: the fastest measured candidate per (graph, size class, device, mixc\n\
         # version), written by `mixc bench --sweep --tune`. Safe to delete.\n{body}"
    );
    let io = |source| Error::Io { path: path.display().to_string(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension(format!("toml.tmp{}", std::process::id()));
    std::fs::write(&tmp, text).map_err(|source| Error::Io { path: tmp.display().to_string(), source })?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok(Some((path, entry)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_reject() {
        let s = parse_sizes("B=1, H=16,T=512").unwrap_or_default();
        assert_eq!(s.get("T"), Some(&512));
        for bad in ["B", "B=x", "B=1,B=2", "T=0", "", "=3"] {
            assert!(parse_sizes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ranks_average_ties() {
        assert_eq!(ranks_of(&[3.0, 1.0, 3.0, 2.0]), vec![3.5, 1.0, 3.5, 2.0]);
    }

    #[test]
    fn default_points_follow_the_engine_and_the_free_dims() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/gla.toml");
        let g = crate::graphs_of_file(&path).unwrap_or_else(|e| panic!("{e}")).remove(0).graph;
        let t = |ps: &[Sizes]| ps.iter().map(|p| p.get("T").copied()).collect::<Vec<_>>();
        let b = |ps: &[Sizes]| ps.iter().map(|p| p.get("B").copied()).collect::<Vec<_>>();
        let gpu = default_points(true, Phase::Prefill, &g);
        assert_eq!(t(&gpu), vec![Some(2048), Some(8192)]);
        assert_eq!(b(&gpu), vec![Some(8), Some(8)]);
        // The file fixes H: it is not overridden.
        assert!(gpu.iter().all(|p| !p.contains_key("H")));
        assert_eq!(b(&default_points(true, Phase::Decode, &g)), vec![Some(64), Some(256)]);
        assert_eq!(t(&default_points(false, Phase::Prefill, &g)), vec![Some(512), Some(2048), Some(8192)]);
        assert_eq!(b(&default_points(false, Phase::Decode, &g)), vec![Some(1), Some(16)]);
        assert_eq!(default_sweep_point(true, &g).get("T"), Some(&8192));
        assert_eq!(default_sweep_point(false, &g).get("T"), Some(&2048));
        // A graph with a free head count gets H = 16 on the GPU.
        let text: Vec<String> = mixc_ir::text::print(&g)
            .lines()
            .map(|l| if l.trim_start().starts_with("dim H =") { "  dim H".to_string() } else { l.to_string() })
            .collect();
        let free = crate::parse_graph_text(&text.join("\n"), "free-h.mix").unwrap_or_else(|e| panic!("{e}"));
        assert!(default_points(true, Phase::Prefill, &free).iter().all(|p| p.get("H") == Some(&16)));
        assert_eq!(default_sweep_point(true, &free).get("H"), Some(&16));
        assert!(default_points(false, Phase::Prefill, &free).iter().all(|p| !p.contains_key("H")));
    }

    #[test]
    fn size_classes_round_up() {
        let s: Sizes = [("B".to_string(), 2), ("H".to_string(), 16), ("T".to_string(), 1000)].into_iter().collect();
        assert_eq!(size_class(&s), "BH32-T1024");
    }
}
