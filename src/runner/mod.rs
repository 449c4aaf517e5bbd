//! Whole models: embeddings, pre-norm residual blocks (the compiled mixer of
//! each layer, then an MLP), a final norm and the LM head; prefill of a prompt
//! and decode token by token with each layer's state or cache carried.
//!
//! Weight names (`init-weights` writes them; a checkpoint saved under other
//! names loads through a name map, `[weights]` in the model file, see
//! [`names`]):
//!
//! | tensor | shape |
//! | --- | --- |
//! | `embed.weight` | `[vocab, d_model]` |
//! | `layers.{i}.mixer_norm.weight`, `layers.{i}.mlp_norm.weight`, `norm.weight` | `[d_model]` |
//! | `layers.{i}.mixer_norm.bias`, `layers.{i}.mlp_norm.bias`, `norm.bias` | `[d_model]`, with `[model] norm = "layernorm"` only (LayerNorm's shift; RMSNorm, the default, has none) |
//! | `layers.{i}.mixer.{input}_proj.weight` | `[per-token size of the input, d_model]` for each per-token mixer input (`q`, `k`, `v`, `g`, `beta`, `o_gate`, `i`, `f`, `x`, `dt`, `b`, `c`, `router`, ...) |
//! | `layers.{i}.mixer.g_proj.0.weight`, `layers.{i}.mixer.g_proj.1.weight` | `[rank, d_model]`, `[per-token size of g, rank]`: the gate projection when the mixer's `gate` sets `rank` (fla's `gk_proj`) |
//! | `layers.{i}.mixer.{param}` | the mixer's own parameters as the graph declares them (`A_log`, `dt_bias`, `D`, `*_conv_weight`, `o_norm_weight`, `meta_k`, ...) |
//! | `layers.{i}.mixer.o_proj.weight` | `[d_model, per-token size of o]` |
//! | `layers.{i}.mlp.{gate,up}_proj.weight`, `layers.{i}.mlp.down_proj.weight` | `[hidden, d_model]`, `[d_model, hidden]` (SwiGLU; GELU has no gate) |
//! | `lm_head.weight` | `[vocab, d_model]` unless `tie_embeddings` |
//!
//! Every projection may also have a bias, `….bias` of its output size
//! (optional: absent means zero). Axes of size 1 do not count when shapes are
//! compared (a depthwise convolution's `[C, 1, K]` loads as `[C, K]`).
//!
//! Each sequence's caches live in a [`Cache`]; a batch of sequences of
//! different lengths runs one sequence at a time through the kernels, each
//! with its own cache ([`Model::forward_batch`]), so nothing of one sequence
//! reaches another's state or normalizer. (The executor lives in the facade
//! for now because it compiles the mixers; DESIGN.md puts it in the runtime,
//! where it moves once the runtime takes compiled programs from a cache.)
//!
//! ```no_run
//! # fn main() -> Result<(), mixc::Error> {
//! use mixc::{jit::Target, runtime::st, Model};
//! let file = std::path::Path::new("models/gla.toml");
//! let mut model = Model::load(file, st::load("gla.safetensors".as_ref())?, Target::Cpu)?;
//! let logits = model.prefill(&[1, 2, 3])?; // [3, vocab]
//! let next = model.decode_step(7)?; // [vocab]
//! # let _ = (logits, next);
//! # Ok(()) }
//! ```

#[cfg(feature = "cuda")]
mod gpu;
#[cfg(feature = "cuda")]
pub use gpu::check_gemv;
mod math;
pub mod names;
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
mod stacking;
pub mod tokenizer;

use crate::jit::{jit_with, CompiledMixer, JitOptions, MixerSource, Target};
use crate::{graphs_of_file, Error};
use math::{dequantize, gelu, layernorm, matmul, quantize, rmsnorm, silu};
use mixc_ir::mixers::carried_input;
use mixc_ir::model::{load_model, KvCacheDtype, MlpKind, ModelFile, ModelSection, NormChoice};
use mixc_runtime::{Data, HostTensor};
use std::collections::BTreeMap;
use std::path::Path;

/// How a mixer input is fed.
#[derive(Clone, Debug)]
enum Feed {
    /// Projected from the normed hidden state, `size` values per token;
    /// through a rank-`rank` bottleneck where the mixer's gate asks for one.
    Projected { size: usize, shape: Vec<usize>, rank: Option<usize> },
    /// A learned parameter, loaded as is.
    Param,
    /// Carried from the previous call (state, cache, convolution tail).
    Carried,
    /// The position of the first new token.
    Offset,
}

/// A compiled mixer and how to feed it.
struct LoadedMixer {
    mixer: CompiledMixer,
    feeds: Vec<(String, Feed)>,
    /// Per-token shape of its output `o`.
    o_shape: Vec<usize>,
}

/// A carried tensor as a cache keeps it between calls.
#[derive(Debug)]
enum Stored {
    Plain(HostTensor),
    /// On the GPU (a model loaded for `Target::Cuda`).
    #[cfg(feature = "cuda")]
    Device(mixc_runtime::cuda::DeviceTensor),
    /// Symmetric int8 with one f32 scale per `group` values along the last axis.
    Int8 {
        shape: Vec<usize>,
        q: Vec<i8>,
        scales: Vec<f32>,
        group: usize,
    },
    /// [`Stored::Int8`] on the GPU: the codes (`numel` bytes) and the scales
    /// (f32, one per `group` values), dequantized into the mixer's buffer
    /// before each step and quantized from its output after.
    #[cfg(feature = "cuda")]
    DeviceInt8 {
        shape: Vec<usize>,
        q: mixc_runtime::cuda::DeviceTensor,
        scales: mixc_runtime::cuda::DeviceTensor,
        group: usize,
    },
}

impl Stored {
    fn bytes(&self) -> usize {
        match self {
            Stored::Plain(t) => t.numel() * 4,
            Stored::Int8 { q, scales, .. } => q.len() + scales.len() * 4,
            #[cfg(feature = "cuda")]
            Stored::Device(t) => t.bytes(),
            #[cfg(feature = "cuda")]
            Stored::DeviceInt8 { shape, scales, .. } => shape.iter().product::<usize>() + scales.bytes(),
        }
    }

    #[cfg(feature = "cuda")]
    fn shape(&self) -> &[usize] {
        match self {
            Stored::Plain(t) => &t.shape,
            Stored::Int8 { shape, .. } => shape,
            #[cfg(feature = "cuda")]
            Stored::Device(t) => &t.shape,
            #[cfg(feature = "cuda")]
            Stored::DeviceInt8 { shape, .. } => shape,
        }
    }

    /// The tensor on the host (a cache of a GPU model cannot feed a CPU one).
    fn tensor(&self) -> Result<HostTensor, Error> {
        match self {
            Stored::Plain(t) => Ok(t.clone()),
            Stored::Int8 { shape, q, scales, group } => {
                Ok(HostTensor::f32(shape.clone(), dequantize(q, scales, *group)))
            }
            #[cfg(feature = "cuda")]
            Stored::Device(_) | Stored::DeviceInt8 { .. } => {
                Err(Error::Usage("a cache filled on the GPU was passed to a model loaded for the CPU".into()))
            }
        }
    }
}

/// Which positions' logits a call returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Every position's: `[len, vocab]`.
    All,
    /// The last position's, `[vocab]` — all that generating the next token
    /// needs: on the CPU the head runs on that row alone, on the GPU only
    /// that row comes back (at 2048 tokens and a vocabulary of 32000, the
    /// whole would be 262 MB).
    Last,
}

/// The error of a projection whose input holds fewer than `rows · inner` values.
fn short_operand(weight: &str, len: usize, rows: usize, inner: usize) -> Error {
    Error::Usage(format!("`{weight}`: an input of {len} values for {rows} rows of {inner}"))
}

/// One layer's carried tensors, by input name.
type LayerCache = BTreeMap<String, Stored>;

/// Whether a carried input is an attention KV cache (`k_cache`, `s_v_cache`, ...).
use mixc_passes::is_kv_cache;

/// The caches of one sequence: every layer's carried tensors (recurrent
/// state, KV cache, convolution tail) and the position of its next token.
#[derive(Debug, Default)]
pub struct Cache {
    layers: Vec<LayerCache>,
    position: usize,
    /// Sequences stacked along the batch axis of every carried tensor (0 or
    /// 1: one sequence; see [`Model::new_batch_cache`]).
    sequences: usize,
}

impl Cache {
    /// Tokens seen so far.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Bytes held by each layer's caches (`layers` entries).
    pub fn bytes(&self, layers: usize) -> Vec<usize> {
        (0..layers).map(|i| self.layers.get(i).map_or(0, |l| l.values().map(Stored::bytes).sum())).collect()
    }

    /// Bytes a decode step moves through these caches at the least: every
    /// carried tensor read once, and written once but for KV caches (which
    /// only gain a row).
    pub fn step_bytes(&self) -> usize {
        let moved = |(name, s): (&String, &Stored)| if is_kv_cache(name) { s.bytes() } else { 2 * s.bytes() };
        self.layers.iter().flat_map(|l| l.iter()).map(moved).sum()
    }
}

/// One expected tensor: its name, shape, and whether it must be present.
struct Expected {
    name: String,
    shape: Vec<usize>,
    required: bool,
}

/// A loaded model with the caches of its current sequence.
pub struct Model {
    cfg: ModelSection,
    eps: f32,
    mixers: Vec<LoadedMixer>,
    /// The mixer of each layer (an index into `mixers`).
    layers: Vec<usize>,
    weights: BTreeMap<String, HostTensor>,
    /// The name map's rules (`[weights]`), and the checkpoint name of every renamed tensor.
    rules: Vec<(String, String)>,
    sources: BTreeMap<String, String>,
    /// Group size of int8 KV caches (`[runtime] kv_cache = "int8"`), if on.
    kv_int8: Option<usize>,
    cache: Cache,
    /// Seconds spent loading: compiling the mixers, placing the weights (on the GPU).
    load_seconds: (f64, f64),
    /// The weights on the GPU, for a model loaded for `Target::Cuda`.
    #[cfg(feature = "cuda")]
    device: Option<gpu::DeviceModel>,
}

/// The dtype of a model's projection weights on the GPU (`Target::Cuda`);
/// norms, biases and the mixers' own parameters stay f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightsDtype {
    /// Half the bytes of f32 (the speed of a decode step is the speed of
    /// reading the weights); logits within about 1e-2 of f32.
    #[default]
    Bf16,
    /// Exact f32 products (cuBLAS without TF32): logits as the CPU's.
    F32,
}

/// Classifies every input of a mixer graph; `rank` is the gate's low rank, if any.
fn feeds(m: &CompiledMixer, rank: Option<usize>) -> Result<Vec<(String, Feed)>, Error> {
    let g = &m.graph;
    let mut out = Vec::new();
    for (name, v, optional) in g.inputs() {
        let shape = &g.ty(v).shape;
        let names: Vec<&str> = shape.iter().map(|d| g.dims.name(*d)).collect();
        let feed = if name == "offset" {
            Feed::Offset
        } else if optional {
            Feed::Carried
        } else if names.len() >= 2 && names[0] == "B" && names[1] == "T" {
            let rest: Option<Vec<usize>> =
                shape[2..].iter().map(|d| g.dims.const_size(*d).map(|x| x as usize)).collect();
            let rest = rest.ok_or_else(|| {
                Error::Usage(format!("mixer `{}`: input `{name}` has a per-token shape that is not fixed", m.name))
            })?;
            Feed::Projected { size: rest.iter().product(), shape: rest, rank: if name == "g" { rank } else { None } }
        } else {
            Feed::Param
        };
        out.push((name.to_string(), feed));
    }
    Ok(out)
}

/// `shape` without its axes of size 1.
fn squeezed(shape: &[usize]) -> Vec<usize> {
    shape.iter().copied().filter(|&n| n != 1).collect()
}

impl Model {
    /// Loads a model file and its weights (renamed by the file's `[weights]`
    /// map), compiling each distinct mixer once. Missing, unexpected,
    /// misshapen or integer tensors are errors that name the tensor (and the
    /// checkpoint name it came from).
    pub fn load(file: &Path, weights: BTreeMap<String, HostTensor>, target: Target) -> Result<Model, Error> {
        Model::load_with(file, weights, target, WeightsDtype::default())
    }

    /// [`Model::load`] with the projection weights kept as `on_gpu` on the
    /// GPU (for `Target::Cuda`; other targets compute in f32).
    pub fn load_with(
        file: &Path,
        weights: BTreeMap<String, HostTensor>,
        target: Target,
        on_gpu: WeightsDtype,
    ) -> Result<Model, Error> {
        Model::load_reading(file, move || Ok(weights), target, on_gpu).map(|(model, _)| model)
    }

    /// [`Model::load_with`] with the weights from `read` (a safetensors
    /// file, say), which runs on a thread of its own while the mixers
    /// compile: the time to the first token pays for the longer of the two,
    /// not their sum. Also returns the seconds `read` took.
    pub fn load_reading(
        file: &Path,
        read: impl FnOnce() -> Result<BTreeMap<String, HostTensor>, Error> + Send,
        target: Target,
        on_gpu: WeightsDtype,
    ) -> Result<(Model, f64), Error> {
        // Activations between the mixers' kernels in the projections' dtype on the GPU.
        #[cfg(feature = "cuda")]
        let storage = match (target, on_gpu) {
            (Target::Cuda, WeightsDtype::Bf16) => mixc_passes::Storage::Bf16,
            _ => mixc_passes::Storage::F32,
        };
        #[cfg(not(feature = "cuda"))]
        let storage = mixc_passes::Storage::F32;
        Model::load_stored(file, read, target, on_gpu, storage)
    }

    /// A CPU model whose mixers store their activations (projected inputs,
    /// outputs) in bf16, as a bf16 GPU model's do, projections in f32: how
    /// much the bf16 rounding at the mixers alone moves a model's logits
    /// (`mixc gpu-check --model` scales its bf16 tolerance by it).
    pub fn load_cpu_bf16_mixers(file: &Path, weights: BTreeMap<String, HostTensor>) -> Result<Model, Error> {
        let read = move || Ok(weights);
        Model::load_stored(file, read, Target::Cpu, WeightsDtype::F32, mixc_passes::Storage::Bf16).map(|(m, _)| m)
    }

    fn load_stored(
        file: &Path,
        read: impl FnOnce() -> Result<BTreeMap<String, HostTensor>, Error> + Send,
        target: Target,
        on_gpu: WeightsDtype,
        storage: mixc_passes::Storage,
    ) -> Result<(Model, f64), Error> {
        let started = std::time::Instant::now();
        // The weights are read, and on the GPU cuBLAS and the glue kernels
        // open, while the mixers compile.
        let (structure, weights, opened) = std::thread::scope(|s| {
            let reading = s.spawn(move || {
                let t = std::time::Instant::now();
                read().map(|w| (w, t.elapsed().as_secs_f64()))
            });
            #[cfg(feature = "cuda")]
            let opening = (target == Target::Cuda).then(|| s.spawn(|| gpu::DeviceModel::open(on_gpu)));
            let structure = Model::structure(file, target, storage);
            let panicked = |what: &str| Error::Usage(format!("{what} panicked"));
            let weights = reading.join().unwrap_or_else(|_| Err(panicked("reading the weights")));
            #[cfg(feature = "cuda")]
            let opened = opening.map(|h| h.join().unwrap_or_else(|_| Err(panicked("opening the GPU"))));
            #[cfg(not(feature = "cuda"))]
            let opened: Option<()> = None;
            (structure, weights, opened)
        });
        let mut model = structure?;
        let (weights, read_s) = weights?;
        let compiled = started.elapsed().as_secs_f64();
        let (mut weights, sources) = names::rename(weights, &model.rules).map_err(Error::Usage)?;
        // Shapes that differ only in axes of size 1 take the expected shape.
        for e in model.expected() {
            if let Some(t) = weights.get_mut(&e.name) {
                if t.shape != e.shape && squeezed(&t.shape) == squeezed(&e.shape) {
                    t.shape = e.shape.clone();
                }
            }
        }
        model.weights = weights;
        model.sources = sources;
        model.check_weights()?;
        #[cfg(feature = "cuda")]
        if let Some(opened) = opened {
            model.device = Some(gpu::DeviceModel::load(&model, opened?)?);
            // Everything runs from the card's copy now.
            model.weights = BTreeMap::new();
        }
        #[cfg(not(feature = "cuda"))]
        let _ = (on_gpu, opened);
        model.load_seconds = (compiled, started.elapsed().as_secs_f64() - compiled);
        Ok((model, read_s))
    }

    /// Seconds [`Model::load`] took compiling the mixers (their kernels,
    /// loaded on the GPU for `Target::Cuda`), and checking and placing the
    /// weights (uploading them, for `Target::Cuda`).
    pub fn load_seconds(&self) -> (f64, f64) {
        self.load_seconds
    }

    /// Bytes of the weights a forward pass reads: the card's copy on the GPU,
    /// the f32 tensors on the host.
    pub fn weight_bytes(&self) -> usize {
        match self.device_weight_bytes() {
            0 => self.weights.values().map(|t| 4 * t.numel()).sum(),
            n => n,
        }
    }

    /// Bytes of the weights on the GPU (0 for a model that runs on the host).
    pub fn device_weight_bytes(&self) -> usize {
        #[cfg(feature = "cuda")]
        if let Some(dev) = &self.device {
            return dev.weight_bytes();
        }
        0
    }

    /// Seconds opening the GPU's dense work (a stream, cuBLAS, the glue
    /// kernels' module) took, on a thread of its own while the mixers
    /// compiled (0 for a model that runs on the host).
    pub fn gpu_setup_seconds(&self) -> f64 {
        #[cfg(feature = "cuda")]
        if let Some(dev) = &self.device {
            return dev.setup_seconds;
        }
        0.0
    }

    /// The name of the card the model runs on (`None` on the host).
    pub fn gpu_card(&self) -> Option<String> {
        #[cfg(feature = "cuda")]
        if let Some(dev) = &self.device {
            return dev.card().ok();
        }
        None
    }

    /// Every weight the model needs, with its shape (optional biases left out).
    pub fn weight_shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.expected().into_iter().filter(|e| e.required).map(|e| (e.name, e.shape)).collect()
    }

    /// Every tensor the model reads: required weights and optional biases.
    fn expected(&self) -> Vec<Expected> {
        let (d, v) = (self.cfg.d_model as usize, self.cfg.vocab as usize);
        let mut out = Vec::new();
        let mut need = |name: String, shape: Vec<usize>| out.push(Expected { name, shape, required: true });
        need("embed.weight".into(), vec![v, d]);
        need("norm.weight".into(), vec![d]);
        if !self.cfg.tie_embeddings {
            need("lm_head.weight".into(), vec![v, d]);
        }
        let mut linears: Vec<(String, usize, usize)> = Vec::new();
        for (i, &mi) in self.layers.iter().enumerate() {
            let LoadedMixer { mixer: m, feeds, o_shape } = &self.mixers[mi];
            need(format!("layers.{i}.mixer_norm.weight"), vec![d]);
            for (name, feed) in feeds {
                match feed {
                    Feed::Projected { size, rank: None, .. } => {
                        linears.push((format!("layers.{i}.mixer.{name}_proj"), *size, d))
                    }
                    Feed::Projected { size, rank: Some(r), .. } => {
                        linears.push((format!("layers.{i}.mixer.{name}_proj.0"), *r, d));
                        linears.push((format!("layers.{i}.mixer.{name}_proj.1"), *size, *r));
                    }
                    Feed::Param => {
                        let ty = m
                            .graph
                            .inputs()
                            .into_iter()
                            .find(|(n, _, _)| n == name)
                            .map(|(_, v, _)| m.graph.ty(v).clone());
                        let shape = ty
                            .map(|t| {
                                t.shape.iter().map(|d| m.graph.dims.const_size(*d).unwrap_or(0) as usize).collect()
                            })
                            .unwrap_or_default();
                        need(format!("layers.{i}.mixer.{name}"), shape);
                    }
                    _ => {}
                }
            }
            linears.push((format!("layers.{i}.mixer.o_proj"), d, o_shape.iter().product()));
            if let Some(mlp) = &self.cfg.mlp {
                let hdn = mlp.hidden as usize;
                need(format!("layers.{i}.mlp_norm.weight"), vec![d]);
                if mlp.kind == MlpKind::Swiglu {
                    linears.push((format!("layers.{i}.mlp.gate_proj"), hdn, d));
                }
                linears.push((format!("layers.{i}.mlp.up_proj"), hdn, d));
                linears.push((format!("layers.{i}.mlp.down_proj"), d, hdn));
            }
        }
        for (p, o, i) in linears {
            out.push(Expected { name: format!("{p}.weight"), shape: vec![o, i], required: true });
            out.push(Expected { name: format!("{p}.bias"), shape: vec![o], required: false });
        }
        if self.cfg.norm == NormChoice::Layernorm {
            let biases: Vec<Expected> = out
                .iter()
                .filter_map(|e| {
                    let stem = e.name.strip_suffix(".weight")?;
                    (stem == "norm" || stem.ends_with("_norm")).then(|| Expected {
                        name: format!("{stem}.bias"),
                        shape: vec![d],
                        required: true,
                    })
                })
                .collect();
            out.extend(biases);
        }
        out
    }

    /// `name`, and the checkpoint name it came from if the map renamed it.
    fn shown(&self, name: &str) -> String {
        match self.sources.get(name) {
            Some(src) => format!("`{name}` (checkpoint name `{src}`)"),
            None => format!("`{name}`"),
        }
    }

    fn check_weights(&self) -> Result<(), Error> {
        let want = self.expected();
        let hint = if self.rules.is_empty() && self.weights.keys().any(|k| k.starts_with("model.")) {
            "; the weights look like a Hugging Face checkpoint: `[weights] names = \"hf\"` in the model file maps \
             their names"
        } else {
            ""
        };
        for e in &want {
            match self.weights.get(&e.name) {
                None if e.required => return Err(Error::Usage(format!("{}{hint}", self.missing(&e.name, &e.shape)))),
                None => {}
                Some(_) => {
                    self.tensor(&e.name, &e.shape)?;
                }
            }
        }
        if let Some(extra) = self.weights.keys().find(|k| !want.iter().any(|e| &e.name == *k)) {
            return Err(Error::Usage(format!(
                "weights: unexpected tensor {} (not used by this model){hint}",
                self.shown(extra)
            )));
        }
        Ok(())
    }

    fn missing(&self, name: &str, shape: &[usize]) -> Error {
        let mut msg = format!("weights: missing tensor `{name}` of shape {shape:?}");
        if let Some(p) = name.strip_suffix(".weight") {
            if self.weights.contains_key(&format!("{p}.0.weight")) {
                msg.push_str(&format!(
                    "; the weights have a low-rank `{p}.0.weight` instead: set `rank` in the mixer's `gate`"
                ));
            }
            if let Some(p) = p.strip_suffix(".1").or_else(|| p.strip_suffix(".0")) {
                if self.weights.contains_key(&format!("{p}.weight")) {
                    msg.push_str(&format!(
                        "; the weights have a full-rank `{p}.weight` instead: drop `rank` from the mixer's `gate`"
                    ));
                }
            }
        }
        Error::Usage(msg)
    }

    /// The f32 data of a tensor that must have `shape`.
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<&[f32], Error> {
        let t = self.weights.get(name).ok_or_else(|| self.missing(name, shape))?;
        match &t.data {
            Data::F32(v) if t.shape == shape => Ok(v),
            Data::F32(_) => {
                Err(Error::Usage(format!("weights: {} has shape {:?}, expected {shape:?}", self.shown(name), t.shape)))
            }
            Data::I32(_) => Err(Error::Usage(format!("weights: {} holds integers, expected floats", self.shown(name)))),
        }
    }

    /// `y = x Wᵀ + b` for the linear layer `prefix` (`.weight`, optional `.bias`).
    fn linear(&self, x: &[f32], rows: usize, prefix: &str, out: usize, inner: usize) -> Result<Vec<f32>, Error> {
        let w = self.tensor(&format!("{prefix}.weight"), &[out, inner])?;
        let mut y = matmul(x, rows, w, out, inner).ok_or_else(|| short_operand(prefix, x.len(), rows, inner))?;
        let bias = format!("{prefix}.bias");
        if self.weights.contains_key(&bias) {
            let b = self.tensor(&bias, &[out])?;
            for row in y.chunks_mut(out) {
                row.iter_mut().zip(b).for_each(|(a, c)| *a += c);
            }
        }
        Ok(y)
    }

    /// The model's block norm (`[model] norm`) of rows of `x` with the
    /// weights under `prefix` (`{prefix}.weight`, LayerNorm's `{prefix}.bias`).
    fn norm(&self, x: &[f32], prefix: &str) -> Result<Vec<f32>, Error> {
        let d = self.cfg.d_model as usize;
        let w = self.tensor(&format!("{prefix}.weight"), &[d])?;
        Ok(match self.cfg.norm {
            NormChoice::Rmsnorm => rmsnorm(x, w, d, self.eps),
            NormChoice::Layernorm => layernorm(x, w, self.tensor(&format!("{prefix}.bias"), &[d])?, d, self.eps),
        })
    }

    /// Random, well-scaled weights for a model file (for demos and tests).
    pub fn init_weights(file: &Path, seed: u64) -> Result<BTreeMap<String, HostTensor>, Error> {
        let m = Model::structure(file, Target::Reference, mixc_passes::Storage::F32)?;
        let mut rng = mixc_ir::mixers::inputs::SplitMix::new(seed);
        let mut w = BTreeMap::new();
        for (name, shape) in m.weight_shapes() {
            let n: usize = shape.iter().product();
            let fan_in = *shape.last().unwrap_or(&1) as f64;
            let leaf = name.rsplit('.').next().unwrap_or("");
            let data: Vec<f32> = (0..n)
                .map(|_| {
                    let x = rng.normal();
                    (if name.ends_with("norm.weight") || leaf == "o_norm_weight" {
                        1.0
                    } else if name.ends_with("norm.bias") {
                        0.0
                    } else if leaf == "A_log" {
                        (1.0 + 15.0 * rng.uniform()).ln()
                    } else if leaf == "dt_bias" {
                        -4.0 + rng.uniform()
                    } else if leaf == "D" {
                        1.0
                    } else if name.starts_with("embed") {
                        x * 0.02
                    } else {
                        x / fan_in.sqrt()
                    }) as f32
                })
                .collect();
            w.insert(name, HostTensor::f32(shape, data));
        }
        Ok(w)
    }

    /// The layer stack of a model file with its compiled mixers, no weights yet.
    fn structure(file: &Path, target: Target, storage: mixc_passes::Storage) -> Result<Model, Error> {
        let mf: ModelFile = load_model(file)?;
        let Some(cfg) = mf.model.clone() else {
            return Err(Error::Usage(format!("{}: has no [model] section: it describes mixers only", file.display())));
        };
        let mut mixers = Vec::new();
        let mut index = BTreeMap::new();
        for g in graphs_of_file(file)? {
            let name = g.name.clone();
            let rank = mf
                .mixer
                .get(&name)
                .and_then(|c| c.gate.as_ref())
                .filter(|gate| gate.from.as_deref() != Some("k"))
                .and_then(|gate| gate.rank)
                .map(|r| r as usize);
            let opts = JitOptions { chunk: g.chunk, storage, ..JitOptions::default() };
            let mixer = jit_with(MixerSource::Graph(g.graph), target, opts)?;
            let feeds = feeds(&mixer, rank)?;
            let o = mixer.graph.output("o").ok_or_else(|| Error::Usage(format!("mixer `{name}` has no output `o`")))?;
            let o_shape: Option<Vec<usize>> = mixer.graph.ty(o).shape[2..]
                .iter()
                .map(|d| mixer.graph.dims.const_size(*d).map(|x| x as usize))
                .collect();
            let o_shape = o_shape.ok_or_else(|| Error::Usage(format!("mixer `{name}`: `o` is not fixed per token")))?;
            index.insert(name, mixers.len());
            mixers.push(LoadedMixer { mixer, feeds, o_shape });
        }
        let layers: Vec<usize> = mf.layer_mixers().iter().map(|n| index.get(n).copied().unwrap_or(0)).collect();
        let runtime = mf.runtime.clone().unwrap_or_default();
        let kv_int8 = match runtime.kv_cache {
            Some(KvCacheDtype::Int8) => Some(kv_group(&mixers, runtime.kv_group, file)?),
            _ => None,
        };
        let cache = Cache { layers: (0..layers.len()).map(|_| BTreeMap::new()).collect(), position: 0, sequences: 1 };
        Ok(Model {
            eps: cfg.norm_eps.unwrap_or(1e-6) as f32,
            cfg,
            mixers,
            layers,
            weights: BTreeMap::new(),
            rules: names::rules_of(mf.weights.as_ref()),
            sources: BTreeMap::new(),
            kv_int8,
            cache,
            load_seconds: (0.0, 0.0),
            #[cfg(feature = "cuda")]
            device: None,
        })
    }

    /// Forgets every cache: the next call starts a new sequence.
    pub fn reset(&mut self) {
        self.cache = self.new_cache();
    }

    /// Empty caches for a new sequence (see [`Model::forward_in`]).
    pub fn new_cache(&self) -> Cache {
        Cache { layers: (0..self.layers.len()).map(|_| BTreeMap::new()).collect(), position: 0, sequences: 1 }
    }

    /// Bytes held by each layer's caches of the current sequence.
    pub fn cache_bytes(&self) -> Vec<usize> {
        self.cache.bytes(self.layers.len())
    }

    /// Runs `ids` through the model from the current sequence's caches
    /// (prefill for a prompt, one id for a decode step) and returns the
    /// logits `[len, vocab]`.
    pub fn forward(&mut self, ids: &[u32], decode: bool) -> Result<Vec<f32>, Error> {
        let mut cache = std::mem::take(&mut self.cache);
        let out = self.forward_in(&mut cache, ids, decode);
        self.cache = cache;
        out
    }

    /// Prefill: runs a prompt (or the next stretch of one) and returns its logits `[len, vocab]`.
    pub fn prefill(&mut self, ids: &[u32]) -> Result<Vec<f32>, Error> {
        self.forward(ids, false)
    }

    /// One decode step: the logits `[vocab]` after `id`.
    pub fn decode_step(&mut self, id: u32) -> Result<Vec<f32>, Error> {
        self.forward(&[id], true)
    }

    /// Runs several sequences, each from its own caches, one after another
    /// through the kernels; returns each one's logits `[len_b, vocab]`.
    pub fn forward_batch(&self, caches: &mut [Cache], batch: &[&[u32]], decode: bool) -> Result<Vec<Vec<f32>>, Error> {
        if caches.len() != batch.len() {
            return Err(Error::Usage(format!(
                "a batch of {} sequences needs {} caches, got {}",
                batch.len(),
                batch.len(),
                caches.len()
            )));
        }
        caches.iter_mut().zip(batch).map(|(c, ids)| self.forward_in(c, ids, decode)).collect()
    }

    /// Runs `ids` from `cache` and updates it (only if the whole call
    /// succeeds); returns every position's logits `[len, vocab]`.
    pub fn forward_in(&self, cache: &mut Cache, ids: &[u32], decode: bool) -> Result<Vec<f32>, Error> {
        self.forward_in_logits(cache, ids, decode, Logits::All)
    }

    /// [`Model::forward_in`] returning the logits `which` asks for.
    pub fn forward_in_logits(
        &self,
        cache: &mut Cache,
        ids: &[u32],
        decode: bool,
        which: Logits,
    ) -> Result<Vec<f32>, Error> {
        let (d, vocab) = (self.cfg.d_model as usize, self.cfg.vocab as usize);
        let t = ids.len();
        if t == 0 {
            return Err(Error::Usage("a sequence needs at least one token".into()));
        }
        if decode && t != 1 {
            return Err(Error::Usage(format!("a decode step takes one token, got {t}")));
        }
        if cache.sequences > 1 {
            return Err(Error::Usage(format!(
                "a cache of {} sequences runs through Model::prefill_slot and Model::decode_batch",
                cache.sequences
            )));
        }
        #[cfg(feature = "cuda")]
        if let Some(dev) = &self.device {
            return dev.forward(self, cache, ids, 1, decode, which);
        }
        let embed = self.tensor("embed.weight", &[vocab, d])?;
        let mut x = Vec::with_capacity(t * d);
        for id in ids {
            let i = *id as usize;
            if i >= vocab {
                return Err(Error::Usage(format!("token id {id} is out of the vocabulary (size {vocab})")));
            }
            x.extend_from_slice(&embed[i * d..(i + 1) * d]);
        }
        // KV caches grown in place by this call: (layer, name, shape before).
        let mut grown: Vec<(usize, String, Vec<usize>)> = Vec::new();
        match self.layers_in(cache, x, t, decode, which, &mut grown) {
            Ok((new_states, logits)) => {
                let mut old = std::mem::replace(&mut cache.layers, new_states);
                for (li, name, _) in grown {
                    let kept = old.get_mut(li).and_then(|l| l.remove(&name));
                    if let (Some(kept), Some(layer)) = (kept, cache.layers.get_mut(li)) {
                        layer.insert(name, kept);
                    }
                }
                cache.position += t;
                Ok(logits)
            }
            Err(e) => {
                // Leave the caches as they were: a grown cache keeps its old rows first.
                for (li, name, shape) in grown {
                    if let Some(Stored::Plain(t)) = cache.layers.get_mut(li).and_then(|l| l.get_mut(&name)) {
                        if let Data::F32(v) = &mut t.data {
                            v.truncate(shape.iter().product());
                        }
                        t.shape = shape;
                    }
                }
                Err(e)
            }
        }
    }

    /// The layers and the head of [`Model::forward_in`] on the embedded
    /// tokens `x` (`t` of them): every layer's new carried tensors (but the
    /// KV caches grown in place in `cache`, listed in `grown`) and the logits.
    fn layers_in(
        &self,
        cache: &mut Cache,
        mut x: Vec<f32>,
        t: usize,
        decode: bool,
        which: Logits,
        grown: &mut Vec<(usize, String, Vec<usize>)>,
    ) -> Result<(Vec<LayerCache>, Vec<f32>), Error> {
        let (d, vocab) = (self.cfg.d_model as usize, self.cfg.vocab as usize);
        let mut new_states = Vec::with_capacity(self.layers.len());
        for (li, &mi) in self.layers.iter().enumerate() {
            let LoadedMixer { mixer, feeds, o_shape } = &self.mixers[mi];
            let h = self.norm(&x, &format!("layers.{li}.mixer_norm"))?;
            let mut inputs = BTreeMap::new();
            for (name, feed) in feeds {
                match feed {
                    Feed::Projected { size, shape, rank } => {
                        let p = format!("layers.{li}.mixer.{name}_proj");
                        let y = match rank {
                            None => self.linear(&h, t, &p, *size, d)?,
                            Some(r) => {
                                let mid = self.linear(&h, t, &format!("{p}.0"), *r, d)?;
                                self.linear(&mid, t, &format!("{p}.1"), *size, *r)?
                            }
                        };
                        let mut full = vec![1, t];
                        full.extend(shape);
                        inputs.insert(name.clone(), HostTensor::f32(full, y));
                    }
                    Feed::Param => {
                        let key = format!("layers.{li}.mixer.{name}");
                        let w =
                            self.weights.get(&key).ok_or_else(|| Error::Usage(format!("weights: missing `{key}`")))?;
                        inputs.insert(name.clone(), w.clone());
                    }
                    Feed::Carried => match cache.layers.get(li).and_then(|l| l.get(name)) {
                        // Plain tensors are passed where they are (below): a
                        // state read in place, a KV cache grown in place.
                        Some(Stored::Plain(_)) => {}
                        Some(s) => {
                            inputs.insert(name.clone(), s.tensor()?);
                        }
                        None => {}
                    },
                    Feed::Offset => {
                        inputs.insert(
                            name.clone(),
                            HostTensor { shape: vec![], data: Data::I32(vec![cache.position as i32]) },
                        );
                    }
                }
            }
            let mut grow: BTreeMap<String, &mut HostTensor> = BTreeMap::new();
            let mut before: Vec<(String, Vec<usize>)> = Vec::new();
            if let Some(layer) = cache.layers.get_mut(li) {
                for (name, s) in layer.iter_mut() {
                    if let Stored::Plain(t) = s {
                        if feeds.iter().any(|(n, f)| n == name && matches!(f, Feed::Carried)) {
                            before.push((name.clone(), t.shape.clone()));
                            grow.insert(name.clone(), t);
                        }
                    }
                }
            }
            let outs = mixer.run_growing(decode, &inputs, &mut grow)?;
            drop(grow);
            // Passed in place and not among the outputs: grown in place.
            for (name, shape) in before {
                if !outs.keys().any(|o| carried_input(o).as_deref() == Some(name.as_str())) {
                    grown.push((li, name, shape));
                }
            }
            let mut state = BTreeMap::new();
            let mut o = Vec::new();
            for (name, v) in outs {
                if name == "o" {
                    if let Data::F32(data) = v.data {
                        o = data;
                    }
                } else if let Some(input) = carried_input(&name) {
                    let stored = match (self.kv_int8, &v.data) {
                        (Some(group), Data::F32(x)) if is_kv_cache(&input) => {
                            let (q, scales) = quantize(x, group);
                            Stored::Int8 { shape: v.shape.clone(), q, scales, group }
                        }
                        _ => Stored::Plain(v),
                    };
                    state.insert(input, stored);
                }
            }
            new_states.push(state);
            let od: usize = o_shape.iter().product();
            if o.len() != t * od {
                return Err(Error::Run {
                    mixer: mixer.name.clone(),
                    msg: format!("output `o` has {} values, expected {}", o.len(), t * od),
                });
            }
            let y = self.linear(&o, t, &format!("layers.{li}.mixer.o_proj"), d, od)?;
            x.iter_mut().zip(&y).for_each(|(a, b)| *a += b);
            if let Some(mlp) = &self.cfg.mlp {
                let hdn = mlp.hidden as usize;
                let h = self.norm(&x, &format!("layers.{li}.mlp_norm"))?;
                let up = self.linear(&h, t, &format!("layers.{li}.mlp.up_proj"), hdn, d)?;
                let act: Vec<f32> = match mlp.kind {
                    MlpKind::Swiglu => {
                        let gate = self.linear(&h, t, &format!("layers.{li}.mlp.gate_proj"), hdn, d)?;
                        gate.iter().zip(&up).map(|(g, u)| silu(*g) * u).collect()
                    }
                    MlpKind::Gelu => up.iter().map(|u| gelu(*u)).collect(),
                };
                let y = self.linear(&act, t, &format!("layers.{li}.mlp.down_proj"), d, hdn)?;
                x.iter_mut().zip(&y).for_each(|(a, b)| *a += b);
            }
        }
        // The head on the rows asked for (the last: one row of `x`).
        let (rows, x) = match which {
            Logits::All => (t, &x[..]),
            Logits::Last => (1, &x[(t - 1) * d..]),
        };
        let h = self.norm(x, "norm")?;
        let head = if self.cfg.tie_embeddings { "embed.weight" } else { "lm_head.weight" };
        let logits = matmul(&h, rows, self.tensor(head, &[vocab, d])?, vocab, d)
            .ok_or_else(|| short_operand(head, h.len(), rows, d))?;
        Ok((new_states, logits))
    }

    /// Why the sequences of a batch cannot be decoded side by side
    /// ([`Model::new_batch_cache`]), if they cannot: only a model on the GPU
    /// whose carried tensors have the same shape for every sequence
    /// (recurrent states, convolution tails; not growing KV caches) and
    /// whose mixers need no token position.
    pub fn batch_unsupported(&self) -> Option<String> {
        #[cfg(feature = "cuda")]
        let on_gpu = self.device.is_some();
        #[cfg(not(feature = "cuda"))]
        let on_gpu = false;
        if !on_gpu {
            return Some("sequences decode side by side on the GPU only (--target cuda)".into());
        }
        for m in &self.mixers {
            for (name, feed) in &m.feeds {
                match feed {
                    Feed::Offset => {
                        return Some(format!("mixer `{}` needs each sequence's token position", m.mixer.name))
                    }
                    Feed::Carried if is_kv_cache(name) => {
                        return Some(format!("mixer `{}` keeps a KV cache that grows per sequence", m.mixer.name))
                    }
                    _ => {}
                }
            }
        }
        None
    }

    /// Caches for `n` sequences decoded side by side: one batch of the
    /// mixers' decode programs per step, one pass over the weights for all
    /// of them. Fill each slot with [`Model::prefill_slot`], then step them
    /// together with [`Model::decode_batch`]. See [`Model::batch_unsupported`].
    pub fn new_batch_cache(&self, n: usize) -> Result<Cache, Error> {
        if let Some(why) = self.batch_unsupported() {
            return Err(Error::Usage(why));
        }
        if n == 0 {
            return Err(Error::Usage("a batch needs at least one sequence".into()));
        }
        Ok(Cache { layers: (0..self.layers.len()).map(|_| BTreeMap::new()).collect(), position: 0, sequences: n })
    }

    /// Prefill of sequence `slot` of a batch cache (alone, then its carried
    /// tensors move into the slot); returns its logits, those `which` asks for.
    pub fn prefill_slot(&self, batch: &mut Cache, slot: usize, ids: &[u32], which: Logits) -> Result<Vec<f32>, Error> {
        if slot >= batch.sequences {
            return Err(Error::Usage(format!("slot {slot} of a batch of {} sequences", batch.sequences)));
        }
        #[cfg(feature = "cuda")]
        if let Some(dev) = &self.device {
            let mut one = self.new_cache();
            let logits = self.forward_in_logits(&mut one, ids, false, which)?;
            dev.adopt(batch, batch.sequences, slot, one)?;
            return Ok(logits);
        }
        let _ = (ids, which);
        Err(Error::Usage("sequences decode side by side on the GPU only (--target cuda)".into()))
    }

    /// One decode step of every sequence of a batch cache: `ids[b]` is
    /// sequence `b`'s next token; returns the logits `[n, vocab]`.
    pub fn decode_batch(&self, batch: &mut Cache, ids: &[u32]) -> Result<Vec<f32>, Error> {
        if ids.len() != batch.sequences {
            return Err(Error::Usage(format!(
                "a decode step of a batch of {} sequences takes {} ids, got {}",
                batch.sequences,
                batch.sequences,
                ids.len()
            )));
        }
        #[cfg(feature = "cuda")]
        if let Some(dev) = &self.device {
            return dev.forward(self, batch, ids, batch.sequences, true, Logits::All);
        }
        Err(Error::Usage("sequences decode side by side on the GPU only (--target cuda)".into()))
    }

    pub fn vocab(&self) -> usize {
        self.cfg.vocab as usize
    }

    /// The group size of int8 KV caches (`[runtime] kv_cache = "int8"`), if the model keeps them.
    pub fn kv_int8_group(&self) -> Option<usize> {
        self.kv_int8
    }

    /// Number of layers.
    pub fn layers(&self) -> usize {
        self.layers.len()
    }
}

/// The int8 group size of a model's KV caches: `kv_group` (default 32, or
/// the head dim if smaller), which must divide the head dim of every cache.
fn kv_group(mixers: &[LoadedMixer], group: Option<u32>, file: &Path) -> Result<usize, Error> {
    let mut dims = Vec::new();
    for m in mixers {
        let g = &m.mixer.graph;
        for (name, v, optional) in g.inputs() {
            if optional && is_kv_cache(name) {
                if let Some(d) = g.ty(v).shape.last().and_then(|d| g.dims.const_size(*d)) {
                    dims.push((m.mixer.name.clone(), name.to_string(), d as usize));
                }
            }
        }
    }
    let smallest = dims.iter().map(|d| d.2).min().unwrap_or(32);
    let group = group.map_or(32.min(smallest), |g| g as usize);
    if let Some((mixer, cache, d)) = dims.iter().find(|d| d.2 % group != 0) {
        return Err(Error::Usage(format!(
            "{}: kv_group = {group} does not divide the head dim {d} of mixer `{mixer}`'s `{cache}`: expected a \
             divisor of {d}",
            file.display()
        )));
    }
    Ok(group)
}
