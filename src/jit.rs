//! The JIT API: compile a mixer once, run it on named tensors.
//!
//! ```
//! use mixc::jit::{jit, MixerSource, Target};
//! use mixc::runtime::HostTensor;
//! use std::collections::BTreeMap;
//!
//! let mixer = jit(MixerSource::file(concat!(env!("CARGO_MANIFEST_DIR"), "/models/gla.toml")), Target::Cpu)?;
//! let (b, t, h, dk, dv) = (1, 100, 2, 16, 32);
//! let mut inputs = BTreeMap::new();
//! inputs.insert("q".to_string(), HostTensor::f32(vec![b, t, h, dk], vec![0.1; b * t * h * dk]));
//! inputs.insert("k".to_string(), HostTensor::f32(vec![b, t, h, dk], vec![0.1; b * t * h * dk]));
//! inputs.insert("v".to_string(), HostTensor::f32(vec![b, t, h, dv], vec![0.1; b * t * h * dv]));
//! inputs.insert("g".to_string(), HostTensor::f32(vec![b, t, h, dk], vec![-0.1; b * t * h * dk]));
//! inputs.insert("o_norm_weight".to_string(), HostTensor::f32(vec![dv], vec![1.0; dv]));
//! let out = mixer.run(&inputs)?;               // prefill: `o`, `final_state`
//! let mut step = inputs.clone();               // one more token from the carried state
//! for (name, len) in [("q", dk), ("k", dk), ("v", dv), ("g", dk)] {
//!     step.insert(name.to_string(), HostTensor::f32(vec![b, 1, h, len], vec![0.1; b * h * len]));
//! }
//! step.insert("initial_state".to_string(), out["final_state"].clone());
//! let next = mixer.decode_step(&step)?;
//! assert_eq!(next["o"].shape, vec![b, 1, h, dv]);
//! # Ok::<(), mixc::Error>(())
//! ```

use crate::{graphs_of_file, Error, NamedGraph};
use mixc_ir::graph::Graph;
use mixc_ir::tile::Program;
use mixc_passes::{Schedule, Storage};
use mixc_runtime::{exec, Engine, HostTensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where kernels run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Native code for this CPU (Cranelift), launches spread over the cores.
    Cpu,
    /// The tile interpreter with f32 arithmetic: the yardstick.
    Reference,
    /// The CUDA GPU of this machine (device 0): kernels compiled to PTX for
    /// its compute capability through LLVM (a build without LLVM takes them
    /// from a kernel bundle instead: [`jit_bundle`]).
    #[cfg(feature = "cuda")]
    Cuda,
}

/// What to compile: a mixer of a model file, or a graph.
pub enum MixerSource {
    File { path: PathBuf, mixer: Option<String>, layer: Option<usize> },
    Graph(Graph),
}

impl MixerSource {
    /// The file's only mixer (or its first, for a model with one distinct mixer).
    pub fn file(path: impl AsRef<Path>) -> MixerSource {
        MixerSource::File { path: path.as_ref().to_path_buf(), mixer: None, layer: None }
    }
    /// The mixer named `[mixer.NAME]` in a file.
    pub fn named(path: impl AsRef<Path>, mixer: &str) -> MixerSource {
        MixerSource::File { path: path.as_ref().to_path_buf(), mixer: Some(mixer.to_string()), layer: None }
    }
    /// The mixer of layer `i` of a model file.
    pub fn layer(path: impl AsRef<Path>, layer: usize) -> MixerSource {
        MixerSource::File { path: path.as_ref().to_path_buf(), mixer: None, layer: Some(layer) }
    }
}

/// A compiled mixer: the prefill program (chunked) and the decode-step program.
pub struct CompiledMixer {
    pub name: String,
    pub graph: Graph,
    pub prefill: Program,
    pub decode: Program,
    exec: Exec,
    /// On the CPU, the prefill's and the decode step's kernels compiled
    /// ahead (each run then launches them without looking them up).
    native: Option<Box<(mixc_runtime::cpu::Prepared, mixc_runtime::cpu::Prepared)>>,
    /// Why the mixer runs on the tile interpreter although native code was asked for.
    pub fallback: Option<String>,
}

/// Value blocks of the GPU's narrow decode step.
#[cfg(feature = "cuda")]
pub const NARROW_BLOCK_V: u32 = 16;

/// Sequences × heads up to which a GPU decode step takes the narrow blocks
/// (GLA-1.3B, 4 heads, on an H200, 2026-12-06: 16 sequences 3.59 → 3.46 ms
/// a step in blocks of 16; one sequence 2.21 → 2.07 ms on an H100 before).
#[cfg(feature = "cuda")]
pub const NARROW_SEQ_HEADS: usize = 64;

#[cfg(feature = "cuda")]
pub use crate::pricing::NARROW_PREFILL_SEQ_HEADS;

/// What runs a compiled mixer's programs.
enum Exec {
    Host(Engine),
    #[cfg(feature = "cuda")]
    Gpu(Box<crate::cuda::GpuMixer>),
}

/// Options of [`jit_with`].
#[derive(Clone, Copy, Debug, Default)]
pub struct JitOptions {
    /// Overrides the table's chunk size (default: the table's, or for
    /// `chunk = "auto"` the cost model's pick for the target, see
    /// [`crate::pricing::auto_schedule`]).
    pub chunk: Option<u32>,
    /// Split state passing for prefill.
    pub split: bool,
    /// The dtype of activation buffers (both programs; states stay f32).
    pub storage: Storage,
}

pub fn jit(source: MixerSource, target: Target) -> Result<CompiledMixer, Error> {
    jit_with(source, target, JitOptions::default())
}

/// Picks the graph a source names.
pub fn select_graph(source: MixerSource) -> Result<NamedGraph, Error> {
    let (path, mixer, layer) = match source {
        MixerSource::Graph(graph) => {
            return Ok(NamedGraph { name: graph.name.clone(), kind: None, chunk: None, graph });
        }
        MixerSource::File { path, mixer, layer } => (path, mixer, layer),
    };
    let shown = path.display().to_string();
    let mut graphs = graphs_of_file(&path)?;
    let wanted = match (mixer, layer) {
        (Some(m), _) => Some(m),
        (None, Some(i)) => {
            let file = mixc_ir::model::load_model(&path)?;
            let layers = file.layer_mixers();
            let Some(name) = layers.get(i) else {
                return Err(Error::Usage(format!(
                    "{shown}: --layer {i} is out of range: the model has {} layers",
                    layers.len()
                )));
            };
            Some(name.clone())
        }
        (None, None) => None,
    };
    match wanted {
        Some(name) => {
            let names: Vec<String> = graphs.iter().map(|g| g.name.clone()).collect();
            let pos = graphs.iter().position(|g| g.name == name).ok_or_else(|| {
                Error::Usage(format!("{shown}: no mixer `{name}` (the file has: {})", names.join(", ")))
            })?;
            Ok(graphs.swap_remove(pos))
        }
        None if graphs.len() == 1 => Ok(graphs.swap_remove(0)),
        None => {
            let names: Vec<String> = graphs.iter().map(|g| g.name.clone()).collect();
            Err(Error::Usage(format!(
                "{shown} describes {} mixers ({}): say which with --mixer NAME or --layer I",
                names.len(),
                names.join(", ")
            )))
        }
    }
}

pub fn jit_with(source: MixerSource, target: Target, opts: JitOptions) -> Result<CompiledMixer, Error> {
    let g = select_graph(source)?;
    let chosen = opts.chunk.or(g.chunk).is_some();
    let base = match opts.chunk.or(g.chunk) {
        Some(chunk) => Schedule::with_chunk(chunk),
        None => {
            let dev = device_profile(target)?;
            crate::pricing::auto_schedule(&g.name, &g.graph, &dev, &crate::pricing::default_point(&dev))?
        }
    };
    let sched = Schedule { split: base.split || opts.split, storage: opts.storage, ..base };
    let prefill = crate::lower_graph(&g.name, &g.graph, &sched)?;
    let decode_kind = match target {
        Target::Cpu | Target::Reference => mixc_passes::device::DeviceKind::Cpu,
        #[cfg(feature = "cuda")]
        Target::Cuda => mixc_passes::device::DeviceKind::Gpu,
    };
    let mut decode_sched = Schedule { storage: opts.storage, ..Schedule::decode_for(decode_kind) };
    // An experiment's override of the decode step's value-column blocks
    // (`MIXC_DECODE_BLOCK_V=16`: more programs for few heads at batch 1).
    if let Some(v) = std::env::var("MIXC_DECODE_BLOCK_V").ok().and_then(|v| v.parse::<u32>().ok()) {
        let candidate = Schedule { block_v: v, ..decode_sched };
        if candidate.validate().is_ok() {
            decode_sched = candidate;
        }
    }
    // `MIXC_STEP_BLOCKS_FIRST=1`: step kernels with their value blocks on
    // grid axis 0 (not yet run on a card; see `Schedule::blocks_first`).
    if std::env::var("MIXC_STEP_BLOCKS_FIRST").is_ok_and(|v| v == "1") {
        decode_sched.blocks_first = true;
    }
    let decode = crate::lower_graph(&g.name, &g.graph, &decode_sched)?;
    // On the GPU, a second decode step in narrow value blocks, for few
    // sequences of few heads (picked by `gpu_program_for`), where it differs.
    #[cfg(feature = "cuda")]
    let narrow = match target {
        Target::Cuda if std::env::var("MIXC_DECODE_BLOCK_V").is_err() => {
            // Optional: a schedule or lowering that does not take the narrow
            // blocks leaves the one decode step.
            let candidate = Schedule { block_v: NARROW_BLOCK_V, ..decode_sched };
            candidate
                .validate()
                .ok()
                .and_then(|()| crate::lower_graph(&g.name, &g.graph, &candidate).ok())
                .filter(|narrow| *narrow != decode)
        }
        _ => None,
    };
    // On the GPU, a prefill in value blocks for few sequences × heads, where
    // the cost model prices it below the chosen schedule (not where the file
    // or the caller chose the chunk; `MIXC_NARROW_PREFILL=0` turns it off).
    #[cfg(feature = "cuda")]
    let narrow_prefill = match target {
        Target::Cuda if !chosen && std::env::var("MIXC_NARROW_PREFILL").map_or(true, |v| v != "0") => {
            let dev = device_profile(target)?;
            crate::pricing::narrow_prefill_schedule(&g.name, &g.graph, &dev, &sched, &prefill)
                .ok()
                .flatten()
                .and_then(|s| crate::lower_graph(&g.name, &g.graph, &s).ok())
                .filter(|p| *p != prefill)
        }
        _ => None,
    };
    #[cfg(not(feature = "cuda"))]
    let _ = chosen;
    let mut fallback = None;
    let mut native = None;
    let exec = match target {
        Target::Cpu => match mixc_runtime::cpu::prepare(&prefill)
            .and_then(|p| Ok((p, mixc_runtime::cpu::prepare(&decode)?)))
        {
            Ok(both) => {
                native = Some(Box::new(both));
                Exec::Host(Engine::Cpu)
            }
            Err(e) => {
                // The CPU backend does not cover this kernel yet: run the tile
                // interpreter instead, and say so.
                fallback = Some(format!("the CPU backend cannot compile it yet ({e}); running the tile interpreter"));
                Exec::Host(Engine::Reference)
            }
        },
        Target::Reference => Exec::Host(Engine::Reference),
        #[cfg(feature = "cuda")]
        Target::Cuda => {
            let narrow = crate::cuda::Narrow { decode: narrow.as_ref(), prefill: narrow_prefill.as_ref() };
            Exec::Gpu(Box::new(crate::cuda::GpuMixer::compile(&g.name, &prefill, &decode, narrow)?))
        }
    };
    Ok(CompiledMixer { name: g.name, graph: g.graph, prefill, decode, exec, native, fallback })
}

/// The device profile `chunk = "auto"` is priced on for a target: the
/// calibrated CPU profile (`mixc calibrate`) or the built-in one, the H100's
/// for CUDA (the latency terms are the same on an H200).
pub fn device_profile(target: Target) -> Result<mixc_passes::device::DeviceProfile, Error> {
    match target {
        Target::Cpu | Target::Reference => Ok(crate::calibrate::choose_profile("cpu", None)?.profile),
        #[cfg(feature = "cuda")]
        Target::Cuda => Ok(mixc_passes::device::DeviceProfile::h100()),
    }
}

/// A mixer whose kernels come from a kernel bundle (`mixc compile FILE
/// --target sm_90 -o DIR`), run on this machine's GPU: the bundle's prefill
/// and decode programs for the source's mixer, which must have been compiled
/// from the same graph. A mode the bundle lacks is an error when it is run.
#[cfg(feature = "cuda")]
pub fn jit_bundle(source: MixerSource, dir: &Path) -> Result<CompiledMixer, Error> {
    let g = select_graph(source)?;
    let bundle = crate::bundle::read_bundle(dir)?;
    let shown = dir.display();
    let find =
        |mode: &str| bundle.program_for(&g.name, &g.graph, mode).map_err(|why| format!("kernel bundle {shown}: {why}"));
    let (prefill, decode) = (find("prefill"), find("decode"));
    if let (Err(why), Err(_)) = (&prefill, &decode) {
        return Err(Error::Usage(why.clone()));
    }
    let gpu = crate::cuda::Gpu::open()?;
    gpu.check_bundle(dir, &bundle.target)?;
    // The programs the kernels were compiled from (a missing one lowered
    // here, so that the fields stay meaningful).
    let program = |p: &Result<&crate::bundle::BundledProgram, String>, sched: Schedule| match p {
        Ok(p) => Ok(p.program.clone()),
        Err(_) => crate::lower_graph(&g.name, &g.graph, &sched),
    };
    let prefill_prog = program(&prefill, Schedule::with_chunk(g.chunk.unwrap_or(64)))?;
    let decode_prog = program(&decode, Schedule::decode())?;
    let gpu = crate::cuda::GpuMixer::from_bundle(gpu, &g.name, prefill, decode)?;
    Ok(CompiledMixer {
        name: g.name,
        graph: g.graph,
        prefill: prefill_prog,
        decode: decode_prog,
        exec: Exec::Gpu(Box::new(gpu)),
        native: None,
        fallback: None,
    })
}

impl CompiledMixer {
    /// The graph's inputs: (name, shape with fixed sizes, optional).
    pub fn inputs(&self) -> Vec<(String, String, bool)> {
        self.graph
            .inputs()
            .into_iter()
            .map(|(n, v, opt)| {
                (n.to_string(), mixc_ir::interp::shape_with_sizes(&self.graph, &self.graph.ty(v).shape), opt)
            })
            .collect()
    }

    /// Checks names, shapes and dtypes of the inputs against the graph.
    pub fn check_inputs(&self, inputs: &BTreeMap<String, HostTensor>) -> Result<(), Error> {
        self.check_tensors(&inputs.iter().map(|(n, t)| (n.as_str(), t)).collect(), &[])
    }

    /// [`check_inputs`](Self::check_inputs) on named tensors; those named in
    /// `unscanned` are not scanned for NaN (caches this mixer wrote).
    fn check_tensors(&self, inputs: &BTreeMap<&str, &HostTensor>, unscanned: &[&str]) -> Result<(), Error> {
        let shapes = inputs.iter().map(|(n, t)| (n.to_string(), t.shape.clone())).collect();
        mixc_ir::interp::check_shapes(&self.graph, &shapes)
            .map_err(|e| Error::Inputs { mixer: self.name.clone(), msg: e.to_string() })?;
        for (name, v, _) in self.graph.inputs() {
            let Some(t) = inputs.get(name) else { continue };
            let want_int = !self.graph.ty(v).dtype.is_float();
            let is_int = matches!(t.data, mixc_runtime::Data::I32(_));
            if want_int != is_int {
                return Err(Error::Inputs {
                    mixer: self.name.clone(),
                    msg: format!(
                        "input `{name}` must hold {} values, found {}",
                        self.graph.ty(v).dtype,
                        if is_int { "integers" } else { "floats" }
                    ),
                });
            }
            if !unscanned.contains(&name) && !exec::all_finite(t) {
                return Err(Error::Inputs {
                    mixer: self.name.clone(),
                    msg: format!("input `{name}` holds NaN or infinity"),
                });
            }
        }
        Ok(())
    }

    /// Runs the prefill program (any number of tokens).
    pub fn run(&self, inputs: &BTreeMap<String, HostTensor>) -> Result<BTreeMap<String, HostTensor>, Error> {
        self.check_inputs(inputs)?;
        self.execute(false, inputs, &mut BTreeMap::new())
    }

    /// Runs the decode-step program: the state or cache in, a few tokens, the
    /// updated state or cache out.
    pub fn decode_step(&self, inputs: &BTreeMap<String, HostTensor>) -> Result<BTreeMap<String, HostTensor>, Error> {
        self.check_inputs(inputs)?;
        self.execute(true, inputs, &mut BTreeMap::new())
    }

    /// [`run`](Self::run) (`decode` false) or [`decode_step`](Self::decode_step)
    /// with more inputs in `grow` that may grow in place: on the CPU an
    /// attention layer's KV cache passed there grows in its own storage (the
    /// old rows not copied: a decode step costs the new row, not the whole
    /// cache), and its `k_cache` / `v_cache` output is then not in the
    /// returned map but in the tensor itself. An output that is in the map
    /// is the new value as usual. On an error `grow` is as it was.
    pub fn run_growing(
        &self,
        decode: bool,
        inputs: &BTreeMap<String, HostTensor>,
        grow: &mut BTreeMap<String, &mut HostTensor>,
    ) -> Result<BTreeMap<String, HostTensor>, Error> {
        let all: BTreeMap<&str, &HostTensor> =
            inputs.iter().map(|(n, t)| (n.as_str(), t)).chain(grow.iter().map(|(n, t)| (n.as_str(), &**t))).collect();
        let unscanned: Vec<&str> = grow.keys().map(String::as_str).collect();
        self.check_tensors(&all, &unscanned)?;
        self.execute(decode, inputs, grow)
    }

    /// The decode step's (`decode`) or the prefill's kernels compiled ahead, on the CPU.
    fn native(&self, decode: bool) -> Option<&mixc_runtime::cpu::Prepared> {
        self.native.as_ref().map(|n| if decode { &n.1 } else { &n.0 })
    }

    /// Runs the decode-step or the prefill program on checked inputs
    /// (with `grow` as in [`run_growing`](Self::run_growing)).
    fn execute(
        &self,
        decode: bool,
        inputs: &BTreeMap<String, HostTensor>,
        grow: &mut BTreeMap<String, &mut HostTensor>,
    ) -> Result<BTreeMap<String, HostTensor>, Error> {
        match &self.exec {
            Exec::Host(engine) => {
                let prog = if decode { &self.decode } else { &self.prefill };
                exec::run_program_growing(prog, inputs, grow, *engine, self.native(decode))
                    .map_err(|e| Error::Run { mixer: self.name.clone(), msg: e.to_string() })
            }
            #[cfg(feature = "cuda")]
            Exec::Gpu(gpu) if grow.is_empty() => gpu.run(&self.name, decode, inputs),
            #[cfg(feature = "cuda")]
            Exec::Gpu(gpu) => {
                let mut all = inputs.clone();
                all.extend(grow.iter().map(|(n, t)| (n.clone(), (**t).clone())));
                gpu.run(&self.name, decode, &all)
            }
        }
    }

    /// The loaded decode-step (`decode`) or prefill program for `seqs`
    /// sequences side by side where the mixer runs on a GPU (`None` on the
    /// host): a decode step of at most [`NARROW_SEQ_HEADS`] sequences × heads takes
    /// the step compiled in value blocks of [`NARROW_BLOCK_V`] where there is
    /// one (more programs for the card's SMs: GLA-1.3B's 4 heads at batch 1
    /// ran 32 programs in blocks of 64; 2.21 → 2.07 ms a token on an H100),
    /// and a prefill of at most [`NARROW_PREFILL_SEQ_HEADS`] the prefill in
    /// value blocks where the cost model chose one.
    #[cfg(feature = "cuda")]
    pub fn gpu_program_for(
        &self,
        decode: bool,
        seqs: usize,
    ) -> Option<Result<&mixc_runtime::cuda::LoadedProgram, Error>> {
        match &self.exec {
            Exec::Host(_) => None,
            Exec::Gpu(gpu) => {
                let limit = if decode { NARROW_SEQ_HEADS } else { NARROW_PREFILL_SEQ_HEADS };
                Some(gpu.program_for(decode, seqs * self.heads() <= limit))
            }
        }
    }

    /// The size of the graph's `H` axis (1 without one).
    #[cfg(feature = "cuda")]
    fn heads(&self) -> usize {
        let dims = &self.graph.dims;
        dims.lookup("H").and_then(|d| dims.const_size(d)).map_or(1, |h| h as usize)
    }

    /// The GPU's name where the mixer runs on one.
    pub fn device(&self) -> Option<String> {
        match &self.exec {
            Exec::Host(_) => None,
            #[cfg(feature = "cuda")]
            Exec::Gpu(gpu) => Some(gpu.gpu().info().name.clone()),
        }
    }
}
