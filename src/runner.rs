//! Whole models: embeddings, pre-norm residual blocks (the compiled mixer of
//! each layer, then an MLP), a final norm and the LM head; prefill of a prompt
//! and decode token by token with each layer's state or cache carried.
//!
//! Weight names (`init-weights` writes them; a checkpoint loads with at most a
//! name map):
//!
//! | tensor | shape |
//! | --- | --- |
//! | `embed.weight` | `[vocab, d_model]` |
//! | `layers.{i}.mixer_norm.weight`, `layers.{i}.mlp_norm.weight`, `norm.weight` | `[d_model]` |
//! | `layers.{i}.mixer.{input}_proj.weight` | `[per-token size of the input, d_model]` for each per-token mixer input (`q`, `k`, `v`, `g`, `beta`, `i`, `f`, `x`, `dt`, `b`, `c`, `router`, ...) |
//! | `layers.{i}.mixer.{param}` | the mixer's own parameters as the graph declares them (`A_log`, `dt_bias`, `D`, `*_conv_weight`, `o_norm_weight`, `meta_k`, ...) |
//! | `layers.{i}.mixer.o_proj.weight` | `[d_model, per-token size of o]` |
//! | `layers.{i}.mlp.{gate,up}_proj.weight`, `layers.{i}.mlp.down_proj.weight` | `[hidden, d_model]`, `[d_model, hidden]` (SwiGLU; GELU has no gate) |
//! | `lm_head.weight` | `[vocab, d_model]` unless `tie_embeddings` |
//!
//! Batches of different lengths run one sequence at a time through the
//! kernels, each with its own caches. (The executor lives in the facade for
//! now because it compiles the mixers; DESIGN.md puts it in the runtime, where
//! it moves once the runtime takes compiled programs from a cache.)

use crate::jit::{jit_with, CompiledMixer, JitOptions, MixerSource, Target};
use crate::{graphs_of_file, Error};
use mixc_ir::mixers::carried_input;
use mixc_ir::model::{load_model, MlpKind, ModelFile, ModelSection};
use mixc_runtime::{Data, HostTensor};
use std::collections::BTreeMap;
use std::path::Path;

/// How a mixer input is fed.
#[derive(Clone, Debug)]
enum Feed {
    /// Projected from the normed hidden state, `size` values per token.
    Projected { size: usize, shape: Vec<usize> },
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

struct Layer {
    mixer: usize,
    state: BTreeMap<String, HostTensor>,
}

/// A loaded model with its per-layer caches.
pub struct Model {
    cfg: ModelSection,
    mixers: Vec<LoadedMixer>,
    layers: Vec<Layer>,
    weights: BTreeMap<String, HostTensor>,
    position: usize,
}

fn weight<'a>(w: &'a BTreeMap<String, HostTensor>, name: &str, shape: &[usize]) -> Result<&'a [f32], Error> {
    let t = w.get(name).ok_or_else(|| Error::Usage(format!("weights: missing tensor `{name}` of shape {shape:?}")))?;
    match &t.data {
        Data::F32(v) if t.shape == shape => Ok(v),
        Data::F32(_) => Err(Error::Usage(format!("weights: `{name}` has shape {:?}, expected {shape:?}", t.shape))),
        Data::I32(_) => Err(Error::Usage(format!("weights: `{name}` holds integers, expected floats"))),
    }
}

/// `y[t, o] = Σ_i x[t, i] · w[o, i]`.
fn matmul(x: &[f32], rows: usize, w: &[f32], out: usize, inner: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; rows * out];
    for t in 0..rows {
        let xr = &x[t * inner..(t + 1) * inner];
        for o in 0..out {
            let wr = &w[o * inner..(o + 1) * inner];
            y[t * out + o] = xr.iter().zip(wr).map(|(a, b)| a * b).sum();
        }
    }
    y
}

fn rmsnorm(x: &[f32], w: &[f32], d: usize) -> Vec<f32> {
    x.chunks(d)
        .flat_map(|row| {
            let ms = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
            let r = 1.0 / (ms + 1e-6).sqrt();
            row.iter().zip(w).map(move |(v, g)| v * r * g).collect::<Vec<_>>()
        })
        .collect()
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + (0.797_884_6 * (x + 0.044_715 * x * x * x)).tanh())
}

/// Classifies every input of a mixer graph.
fn feeds(m: &CompiledMixer) -> Result<Vec<(String, Feed)>, Error> {
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
            Feed::Projected { size: rest.iter().product(), shape: rest }
        } else {
            Feed::Param
        };
        out.push((name.to_string(), feed));
    }
    Ok(out)
}

impl Model {
    /// Loads a model file and its weights, compiling each distinct mixer once.
    pub fn load(file: &Path, weights: BTreeMap<String, HostTensor>, target: Target) -> Result<Model, Error> {
        let mut model = Model::structure(file, target)?;
        model.weights = weights;
        model.check_weights()?;
        Ok(model)
    }

    /// Every weight the model needs, with its shape.
    pub fn weight_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (d, v) = (self.cfg.d_model as usize, self.cfg.vocab as usize);
        let mut out = vec![("embed.weight".to_string(), vec![v, d]), ("norm.weight".to_string(), vec![d])];
        if !self.cfg.tie_embeddings {
            out.push(("lm_head.weight".into(), vec![v, d]));
        }
        for (i, l) in self.layers.iter().enumerate() {
            let LoadedMixer { mixer: m, feeds, o_shape } = &self.mixers[l.mixer];
            out.push((format!("layers.{i}.mixer_norm.weight"), vec![d]));
            for (name, feed) in feeds {
                match feed {
                    Feed::Projected { size, .. } => {
                        out.push((format!("layers.{i}.mixer.{name}_proj.weight"), vec![*size, d]))
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
                        out.push((format!("layers.{i}.mixer.{name}"), shape));
                    }
                    _ => {}
                }
            }
            out.push((format!("layers.{i}.mixer.o_proj.weight"), vec![d, o_shape.iter().product()]));
            if let Some(mlp) = &self.cfg.mlp {
                let hdn = mlp.hidden as usize;
                out.push((format!("layers.{i}.mlp_norm.weight"), vec![d]));
                if mlp.kind == MlpKind::Swiglu {
                    out.push((format!("layers.{i}.mlp.gate_proj.weight"), vec![hdn, d]));
                }
                out.push((format!("layers.{i}.mlp.up_proj.weight"), vec![hdn, d]));
                out.push((format!("layers.{i}.mlp.down_proj.weight"), vec![d, hdn]));
            }
        }
        out
    }

    fn check_weights(&self) -> Result<(), Error> {
        let want = self.weight_shapes();
        for (name, shape) in &want {
            weight(&self.weights, name, shape)?;
        }
        if let Some(extra) = self.weights.keys().find(|k| !want.iter().any(|(n, _)| n == *k)) {
            return Err(Error::Usage(format!("weights: unexpected tensor `{extra}` (not used by this model)")));
        }
        Ok(())
    }

    /// Random, well-scaled weights for a model file (for demos and tests).
    pub fn init_weights(file: &Path, seed: u64) -> Result<BTreeMap<String, HostTensor>, Error> {
        let m = Model::structure(file, Target::Reference)?;
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
    fn structure(file: &Path, target: Target) -> Result<Model, Error> {
        let mf: ModelFile = load_model(file)?;
        let Some(cfg) = mf.model.clone() else {
            return Err(Error::Usage(format!("{}: has no [model] section: it describes mixers only", file.display())));
        };
        let mut mixers = Vec::new();
        let mut index = BTreeMap::new();
        for g in graphs_of_file(file)? {
            let name = g.name.clone();
            let mixer = jit_with(MixerSource::Graph(g.graph), target, JitOptions { chunk: g.chunk, split: false })?;
            let feeds = feeds(&mixer)?;
            let o = mixer.graph.output("o").ok_or_else(|| Error::Usage(format!("mixer `{name}` has no output `o`")))?;
            let o_shape: Option<Vec<usize>> = mixer.graph.ty(o).shape[2..]
                .iter()
                .map(|d| mixer.graph.dims.const_size(*d).map(|x| x as usize))
                .collect();
            let o_shape = o_shape.ok_or_else(|| Error::Usage(format!("mixer `{name}`: `o` is not fixed per token")))?;
            index.insert(name, mixers.len());
            mixers.push(LoadedMixer { mixer, feeds, o_shape });
        }
        let layers = mf
            .layer_mixers()
            .iter()
            .map(|n| Layer { mixer: index.get(n).copied().unwrap_or(0), state: BTreeMap::new() })
            .collect();
        Ok(Model { cfg, mixers, layers, weights: BTreeMap::new(), position: 0 })
    }

    /// Forgets every cache: the next call starts a new sequence.
    pub fn reset(&mut self) {
        self.position = 0;
        for l in &mut self.layers {
            l.state.clear();
        }
    }

    /// Bytes held by each layer's caches.
    pub fn cache_bytes(&self) -> Vec<usize> {
        self.layers.iter().map(|l| l.state.values().map(|t| t.numel() * 4).sum()).collect()
    }

    /// Runs `ids` through the model from the current caches (prefill for a
    /// prompt, one id for a decode step) and returns the logits `[len, vocab]`.
    pub fn forward(&mut self, ids: &[u32], decode: bool) -> Result<Vec<f32>, Error> {
        let (d, vocab) = (self.cfg.d_model as usize, self.cfg.vocab as usize);
        let t = ids.len();
        let embed = weight(&self.weights, "embed.weight", &[vocab, d])?.to_vec();
        let mut x = Vec::with_capacity(t * d);
        for id in ids {
            let i = *id as usize;
            if i >= vocab {
                return Err(Error::Usage(format!("token id {id} is out of the vocabulary (size {vocab})")));
            }
            x.extend_from_slice(&embed[i * d..(i + 1) * d]);
        }
        for li in 0..self.layers.len() {
            let LoadedMixer { mixer, feeds, o_shape } = &self.mixers[self.layers[li].mixer];
            let nw = weight(&self.weights, &format!("layers.{li}.mixer_norm.weight"), &[d])?;
            let h = rmsnorm(&x, nw, d);
            let mut inputs = BTreeMap::new();
            for (name, feed) in feeds {
                match feed {
                    Feed::Projected { size, shape } => {
                        let w = weight(&self.weights, &format!("layers.{li}.mixer.{name}_proj.weight"), &[*size, d])?;
                        let mut full = vec![1, t];
                        full.extend(shape);
                        inputs.insert(name.clone(), HostTensor::f32(full, matmul(&h, t, w, *size, d)));
                    }
                    Feed::Param => {
                        let key = format!("layers.{li}.mixer.{name}");
                        let w =
                            self.weights.get(&key).ok_or_else(|| Error::Usage(format!("weights: missing `{key}`")))?;
                        inputs.insert(name.clone(), w.clone());
                    }
                    Feed::Carried => {
                        if let Some(s) = self.layers[li].state.get(name) {
                            inputs.insert(name.clone(), s.clone());
                        }
                    }
                    Feed::Offset => {
                        inputs.insert(
                            name.clone(),
                            HostTensor { shape: vec![], data: Data::I32(vec![self.position as i32]) },
                        );
                    }
                }
            }
            let outs = if decode { mixer.decode_step(&inputs)? } else { mixer.run(&inputs)? };
            let mut state = BTreeMap::new();
            let mut o = Vec::new();
            for (name, v) in outs {
                if name == "o" {
                    if let Data::F32(data) = v.data {
                        o = data;
                    }
                } else if let Some(input) = carried_input(&name) {
                    state.insert(input, v);
                }
            }
            self.layers[li].state = state;
            let od: usize = o_shape.iter().product();
            let wo = weight(&self.weights, &format!("layers.{li}.mixer.o_proj.weight"), &[d, od])?;
            let y = matmul(&o, t, wo, d, od);
            x.iter_mut().zip(&y).for_each(|(a, b)| *a += b);
            if let Some(mlp) = &self.cfg.mlp {
                let hdn = mlp.hidden as usize;
                let nw = weight(&self.weights, &format!("layers.{li}.mlp_norm.weight"), &[d])?;
                let h = rmsnorm(&x, nw, d);
                let up = matmul(
                    &h,
                    t,
                    weight(&self.weights, &format!("layers.{li}.mlp.up_proj.weight"), &[hdn, d])?,
                    hdn,
                    d,
                );
                let act: Vec<f32> = match mlp.kind {
                    MlpKind::Swiglu => {
                        let gw = weight(&self.weights, &format!("layers.{li}.mlp.gate_proj.weight"), &[hdn, d])?;
                        let gate = matmul(&h, t, gw, hdn, d);
                        gate.iter().zip(&up).map(|(g, u)| silu(*g) * u).collect()
                    }
                    MlpKind::Gelu => up.iter().map(|u| gelu(*u)).collect(),
                };
                let dw = weight(&self.weights, &format!("layers.{li}.mlp.down_proj.weight"), &[d, hdn])?;
                let y = matmul(&act, t, dw, d, hdn);
                x.iter_mut().zip(&y).for_each(|(a, b)| *a += b);
            }
        }
        self.position += t;
        let h = rmsnorm(&x, weight(&self.weights, "norm.weight", &[d])?, d);
        let head = if self.cfg.tie_embeddings { "embed.weight" } else { "lm_head.weight" };
        Ok(matmul(&h, t, weight(&self.weights, head, &[vocab, d])?, vocab, d))
    }

    pub fn vocab(&self) -> usize {
        self.cfg.vocab as usize
    }
}
