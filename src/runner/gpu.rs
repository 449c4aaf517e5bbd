//! Whole models on a CUDA GPU: the weights stay on the card (projections in
//! bf16 or f32, norms in f32), projections run through cuBLAS (prefill) or
//! the GEMVs of `mixc_runtime::gemv` (decode steps, with the RMSNorm before
//! them, the stacked projections of one input and SwiGLU folded in), the
//! glue (embedding, norms, MLP activations) through `mixc_runtime::glue`, and
//! every mixer through its compiled kernels, fed on the device: a
//! projection writes straight into the mixer's input buffer, and carried
//! states and caches move between a sequence's [`Cache`] and the mixer's
//! buffers by swapping buffers (a copy only where lengths differ), never
//! through the host. Only the token ids go up and the logits come back.
//!
//! A decode step's mixer buffers are kept per layer and reused while the
//! carried shapes stay the same (recurrent states, windows); an attention
//! layer whose KV cache grows is prepared again at each step.

use super::{is_kv_cache, Cache, Feed, LoadedMixer, Logits, Model, Stored, WeightsDtype};
use crate::Error;
use mixc_ir::mixers::carried_input;
use mixc_ir::model::{MlpKind, NormChoice};
use mixc_ir::DType;
use mixc_runtime::cuda::{CudaRunner, CudaSlice, DeviceGraph, DeviceTensor, LoadedProgram, PreparedRun};
use mixc_runtime::dense::{act_dtype, Dense, Linear, Rows};
use mixc_runtime::glue::{Act, RowNorm};
use mixc_runtime::projections::{GemvKind, GemvX, NormFeed};
use mixc_runtime::skinny;
use mixc_runtime::{Data, HostTensor};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

mod inputs;
use inputs::{Found, Inputs};

/// A block norm's weights on the card (f32; the bias for LayerNorm).
struct DeviceNorm {
    weight: DeviceTensor,
    bias: Option<DeviceTensor>,
}

impl DeviceNorm {
    fn bytes(&self) -> usize {
        self.weight.bytes() + self.bias.as_ref().map_or(0, |b| b.bytes())
    }
}

/// One layer's weights on the card.
struct DeviceLayer {
    mixer_norm: DeviceNorm,
    /// The mixer's projected inputs (those without a bias stacked).
    inputs: Inputs,
    /// The mixer's own parameters, uploaded with each new set of mixer buffers.
    params: BTreeMap<String, HostTensor>,
    o_proj: Linear,
    mlp: Option<DeviceMlp>,
}

struct DeviceMlp {
    norm: DeviceNorm,
    /// SwiGLU: `[gate; up]` stacked (`[2·hidden, d]`); GELU: `up`.
    up: Linear,
    down: Linear,
    kind: MlpKind,
}

/// Activation buffers of one call of `rows` tokens, kept while `rows` stays the same.
struct Workspace {
    rows: usize,
    /// Sequences side by side (`rows / seqs` tokens each).
    seqs: usize,
    ids: DeviceTensor,
    /// The residual stream, f32 `[rows, d]`.
    x: DeviceTensor,
    /// A normed copy of it in the act dtype (or, after a product that
    /// prepared the next RMSNorm, the residual times the norm's weight).
    h: DeviceTensor,
    /// The partial sums of squares of the residual's rows such a product
    /// leaves (f32, [`skinny::partials_len`]`(d)`).
    partials: DeviceTensor,
    /// f32 scratch as large as the widest projection.
    wide: DeviceTensor,
    /// The same in the act dtype (a projection's operand).
    wide_act: DeviceTensor,
    logits: DeviceTensor,
}

/// A block norm of the residual stream: its kind, weights, eps and width.
pub(super) struct BlockNorm<'a> {
    kind: RowNorm,
    weights: &'a DeviceNorm,
    eps: f32,
    d: usize,
    /// The product that last added to the residual prepared this norm
    /// (`h` and the workspace's partial sums; [`DeviceModel::add_to_residual`]).
    fed: bool,
}

impl<'a> BlockNorm<'a> {
    /// `out = norm(x)` over `rows` rows, in the act dtype.
    fn apply(
        &self,
        dense: &Dense,
        r: &CudaRunner,
        out: &mut CudaSlice<u32>,
        x: &CudaSlice<u32>,
        rows: usize,
    ) -> Result<(), Error> {
        let (w, b) = (&self.weights.weight, self.weights.bias.as_ref());
        Ok(dense.norm(r, self.kind, out, x, w, b, rows, self.d, self.eps)?)
    }

    /// Whether a GEMV of `rows` rows reading this norm takes it folded in
    /// ([`BlockNorm::folded`]): an RMSNorm that the product before
    /// prepared, or that the GEMV computes on the way in.
    fn folds(&self, dense: &Dense, rows: usize) -> bool {
        self.kind == RowNorm::Rms && ((self.fed && dense.gemv_fits(rows, self.d)) || dense.gemv_norm_fits(rows, self.d))
    }

    /// The GEMV's input where [`BlockNorm::folds`]: the prepared operand
    /// `h` with the partial sums, or the residual `x` normed on the way in.
    fn folded<'b>(&'b self, x: &'b CudaSlice<u32>, h: &'b CudaSlice<u32>, partials: &'b CudaSlice<u32>) -> GemvX<'b> {
        if self.fed {
            GemvX::PreNormed { xw: h, partials, eps: self.eps }
        } else {
            GemvX::RmsNorm { x, weight: &self.weights.weight, eps: self.eps }
        }
    }
}

/// A stream, cuBLAS and the glue kernels, opened for a model's dense work.
pub(super) struct Opened {
    runner: CudaRunner,
    dense: Dense,
    /// Seconds it took.
    setup_seconds: f64,
}

/// A model's weights on the GPU and what runs them.
pub(super) struct DeviceModel {
    runner: CudaRunner,
    dense: Dense,
    embed: Linear,
    /// `None` with tied embeddings.
    head: Option<Linear>,
    norm: DeviceNorm,
    layers: Vec<DeviceLayer>,
    /// The widest per-token activation any projection reads or writes.
    widest: usize,
    work: RefCell<Option<Workspace>>,
    /// Per layer: the decode step's mixer buffers and the input shapes they were bound at.
    decode_runs: RefCell<Vec<Option<KeptRun>>>,
    /// Captured decode steps by the addresses they read and write.
    graphs: RefCell<Vec<(Vec<u64>, DeviceGraph)>>,
    /// Whether decode steps run as graphs (off by `MIXC_CUDA_GRAPHS=0`, or
    /// after a capture failed).
    graphs_on: Cell<bool>,
    /// Seconds [`DeviceModel::open`] took (alongside the mixers' compiling).
    pub(super) setup_seconds: f64,
    /// KV caches kept as int8 in groups of this many values between steps
    /// (`[runtime] kv_cache = "int8"`).
    kv_int8: Option<usize>,
}

/// A decode step's mixer buffers and the input shapes they were bound at.
type KeptRun = (BTreeMap<String, Vec<usize>>, PreparedRun);

/// Decode-step graphs kept (one per set of carried buffers: a sequence, or a batch).
const KEPT_GRAPHS: usize = 8;

/// How a layer's carried tensors move between the cache and the mixer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Carry {
    /// Swapped into the mixer's inputs before its kernels, its outputs
    /// swapped into the cache after.
    Swap,
    /// In the mixer's inputs already (a graph step): an output of the
    /// input's length trades buffers with it after the step (see
    /// [`carried_pairs`]: two graphs take turns), another is copied back.
    InPlace,
}

fn act_of(w: WeightsDtype) -> Act {
    match w {
        WeightsDtype::F32 => Act::F32,
        WeightsDtype::Bf16 => Act::Bf16,
    }
}

/// The glue's name for a buffer dtype (f32 and bf16 only).
fn act_stored(dtype: DType) -> Option<Act> {
    match dtype {
        DType::F32 => Some(Act::F32),
        DType::BF16 => Some(Act::Bf16),
        _ => None,
    }
}

/// [`Dense::check_gemv`] on this machine's GPU: one line per case, and
/// whether every case is within rounding.
pub fn check_gemv() -> Result<(String, bool), Error> {
    let runner = CudaRunner::with_own_stream()?;
    let target = crate::card::ptx_target(runner.device()?.compute_capability).map_err(Error::Usage)?;
    let dense = Dense::new(&runner, target, Act::Bf16)?;
    let mut text = String::new();
    let mut all = true;
    for c in dense.check_gemv(&runner)? {
        all &= c.ok();
        text.push_str(&format!(
            "gemv {} rows, [{}, {}], y {:?}{}: {:.1e} {}\n",
            c.rows,
            c.out,
            c.inner,
            c.y,
            match c.kind {
                GemvKind::Plain { accumulate: true } => " (+=)".to_string(),
                GemvKind::Plain { accumulate: false } => String::new(),
                GemvKind::Stacked { parts } => format!(", {parts} stacked"),
                GemvKind::SwiGlu => ", SwiGLU".to_string(),
            } + match (c.normed, c.fed) {
                (true, false) => ", RMSNorm folded in",
                (false, true) => ", preparing the next RMSNorm",
                (true, true) => ", RMSNorm prepared by the product before",
                (false, false) => "",
            },
            c.worst,
            if c.ok() { "ok" } else { "FAIL" }
        ));
    }
    Ok((text, all))
}

impl DeviceModel {
    /// Opens what a model's dense work needs on the GPU (a stream, cuBLAS,
    /// the glue kernels' module): independent of the model's file, so it
    /// can happen while the mixers compile.
    pub(super) fn open(weights: WeightsDtype) -> Result<Opened, Error> {
        let started = std::time::Instant::now();
        let runner = CudaRunner::with_own_stream()?;
        let info = runner.device()?;
        let target = crate::card::ptx_target(info.compute_capability).map_err(Error::Usage)?;
        let act = act_of(weights);
        let dense = Dense::new(&runner, target, act)?;
        Ok(Opened { runner, dense, setup_seconds: started.elapsed().as_secs_f64() })
    }

    /// Uploads the (checked) weights of `model` through `opened`.
    pub(super) fn load(model: &Model, opened: Opened) -> Result<DeviceModel, Error> {
        let Opened { runner, dense, setup_seconds } = opened;
        let act = dense.act;
        let (d, vocab) = (model.cfg.d_model as usize, model.cfg.vocab as usize);
        let up = Uploader { model, runner: &runner, act };
        let embed = up.linear_named("embed.weight", None, vocab, d)?;
        let head = if model.cfg.tie_embeddings { None } else { Some(up.linear("lm_head", vocab, d)?) };
        let norm = up.norm("norm")?;
        let mut widest = d.max(vocab);
        let mut layers = Vec::with_capacity(model.layers.len());
        for (li, &mi) in model.layers.iter().enumerate() {
            let LoadedMixer { feeds, o_shape, .. } = &model.mixers[mi];
            let mut found = Vec::new();
            let mut params = BTreeMap::new();
            for (name, feed) in feeds {
                let p = format!("layers.{li}.mixer.{name}_proj");
                match feed {
                    Feed::Projected { size, rank, .. } => {
                        let (prefix, rows, second) = match rank {
                            None => (p, *size, None),
                            Some(r) => (format!("{p}.0"), *r, Some(up.linear(&format!("{p}.1"), *size, *r)?)),
                        };
                        let weight = model.tensor(&format!("{prefix}.weight"), &[rows, d])?;
                        let biased = model.weights.contains_key(&format!("{prefix}.bias"));
                        found.push(Found { input: name.clone(), prefix, weight, rows, biased, second });
                    }
                    Feed::Param => {
                        let key = format!("layers.{li}.mixer.{name}");
                        let w =
                            model.weights.get(&key).ok_or_else(|| Error::Usage(format!("weights: missing `{key}`")))?;
                        params.insert(name.clone(), w.clone());
                    }
                    Feed::Carried | Feed::Offset => {}
                }
            }
            let inputs = Inputs::build(&runner, act_dtype(act), d, found, |f| up.linear(&f.prefix, f.rows, d))?;
            widest = widest.max(inputs.widest());
            let od: usize = o_shape.iter().product();
            widest = widest.max(od);
            let o_proj = up.linear(&format!("layers.{li}.mixer.o_proj"), d, od)?;
            let mlp = match &model.cfg.mlp {
                None => None,
                Some(m) => {
                    let hdn = m.hidden as usize;
                    let p = format!("layers.{li}.mlp");
                    let up_w = match m.kind {
                        MlpKind::Swiglu => {
                            widest = widest.max(2 * hdn);
                            up.stacked(&format!("{p}.gate_proj"), &format!("{p}.up_proj"), hdn, d)?
                        }
                        MlpKind::Gelu => {
                            widest = widest.max(hdn);
                            up.linear(&format!("{p}.up_proj"), hdn, d)?
                        }
                    };
                    Some(DeviceMlp {
                        norm: up.norm(&format!("layers.{li}.mlp_norm"))?,
                        up: up_w,
                        down: up.linear(&format!("{p}.down_proj"), d, hdn)?,
                        kind: m.kind,
                    })
                }
            };
            layers.push(DeviceLayer {
                mixer_norm: up.norm(&format!("layers.{li}.mixer_norm"))?,
                inputs,
                params,
                o_proj,
                mlp,
            });
        }
        runner.synchronize()?;
        runner.end_staging();
        let n = layers.len();
        Ok(DeviceModel {
            runner,
            dense,
            embed,
            head,
            norm,
            layers,
            widest,
            work: RefCell::new(None),
            decode_runs: RefCell::new((0..n).map(|_| None).collect()),
            graphs: RefCell::new(Vec::new()),
            graphs_on: Cell::new(std::env::var("MIXC_CUDA_GRAPHS").map_or(true, |v| v != "0")),
            setup_seconds,
            kv_int8: model.kv_int8,
        })
    }

    /// The card's name, as the driver reports it.
    pub(super) fn card(&self) -> Result<String, Error> {
        Ok(self.runner.device()?.name)
    }

    /// Bytes of the weights on the card.
    pub(super) fn weight_bytes(&self) -> usize {
        let mut n = self.embed.bytes() + self.head.as_ref().map_or(0, Linear::bytes) + self.norm.bytes();
        for l in &self.layers {
            n += l.mixer_norm.bytes() + l.o_proj.bytes() + l.inputs.bytes();
            if let Some(m) = &l.mlp {
                n += m.norm.bytes() + m.up.bytes() + m.down.bytes();
            }
        }
        n
    }

    fn workspace(&self, rows: usize, seqs: usize, d: usize, vocab: usize) -> Result<Workspace, Error> {
        let r = &self.runner;
        let act = act_dtype(self.dense.act);
        Ok(Workspace {
            rows,
            seqs,
            ids: r.zeros(&[rows], DType::I32)?,
            x: r.zeros(&[rows, d], DType::F32)?,
            h: r.zeros(&[rows, d], act)?,
            partials: r.zeros(&[skinny::partials_len(d)], DType::F32)?,
            wide: r.zeros(&[rows, self.widest], DType::F32)?,
            wide_act: r.zeros(&[rows, self.widest], act)?,
            logits: r.zeros(&[rows, vocab], DType::F32)?,
        })
    }

    /// Runs `ids` from `cache` (checked by the caller: at least one id, one
    /// per sequence for a decode step) and returns the logits `[len, vocab]`:
    /// `seqs` sequences side by side (a batch cache's), `ids.len() / seqs`
    /// tokens each. A decode step whose every layer keeps its mixer buffers
    /// runs as one CUDA graph (captured at its first such step).
    pub(super) fn forward(
        &self,
        model: &Model,
        cache: &mut Cache,
        ids: &[u32],
        seqs: usize,
        decode: bool,
        which: Logits,
    ) -> Result<Vec<f32>, Error> {
        let (d, vocab) = (model.cfg.d_model as usize, model.cfg.vocab as usize);
        let t = ids.len();
        if seqs == 0 || !t.is_multiple_of(seqs) {
            return Err(Error::Usage(format!("{t} tokens do not split into {seqs} sequences")));
        }
        let mut tokens = Vec::with_capacity(t);
        for id in ids {
            if *id as usize >= vocab {
                return Err(Error::Usage(format!("token id {id} is out of the vocabulary (size {vocab})")));
            }
            tokens.push(*id as i32);
        }
        let mut slot = self.work.borrow_mut();
        if slot.as_ref().is_none_or(|w| w.rows != t || w.seqs != seqs) {
            *slot = None;
            self.graphs.borrow_mut().clear();
            *slot = Some(self.workspace(t, seqs, d, vocab)?);
        }
        let Some(w) = slot.as_mut() else { return Err(Error::Usage("no GPU workspace".into())) };
        if cache.layers.len() != self.layers.len() {
            cache.layers = (0..self.layers.len()).map(|_| BTreeMap::new()).collect();
        }
        let r = &self.runner;
        r.upload_i32(&tokens, &mut w.ids.buf)?;
        let mut runs = self.decode_runs.borrow_mut();
        let graphed = decode && self.graphs_on.get() && self.as_graph(model, cache, w, &mut runs)?;
        if !graphed {
            self.pass(model, cache, w, decode, Carry::Swap, &mut runs)?;
        }
        // Only the rows asked for come back (a decode step's are all last rows).
        let per_seq = t / seqs;
        let logits = match which {
            Logits::Last if per_seq > 1 => {
                let mut last = Vec::with_capacity(seqs * vocab);
                for s in 0..seqs {
                    let row = (s + 1) * per_seq - 1;
                    last.extend(r.download_f32_at(&w.logits.buf, row * vocab, vocab)?);
                }
                last
            }
            _ => r.download_f32(&w.logits.buf, t * vocab)?,
        };
        cache.position += t / seqs;
        Ok(logits)
    }

    /// The model's block norm (`[model] norm`) with the weights `norm`.
    fn norm_of<'a>(&self, model: &Model, norm: &'a DeviceNorm) -> BlockNorm<'a> {
        let kind = match model.cfg.norm {
            NormChoice::Rmsnorm => RowNorm::Rms,
            NormChoice::Layernorm => RowNorm::Layer,
        };
        BlockNorm { kind, weights: norm, eps: model.eps, d: model.cfg.d_model as usize, fed: false }
    }

    /// The norm that reads the residual after layer `li`'s mixer
    /// (`after_mixer`) or its MLP: the MLP's, the next layer's, or the
    /// final one.
    fn norm_after(&self, li: usize, after_mixer: bool) -> &DeviceNorm {
        let mlp = self.layers.get(li).and_then(|l| l.mlp.as_ref()).filter(|_| after_mixer);
        match (mlp, self.layers.get(li + 1)) {
            (Some(m), _) => &m.norm,
            (None, Some(next)) => &next.mixer_norm,
            (None, None) => &self.norm,
        }
    }

    /// `x += operand · linᵀ` into the residual stream. Where the next norm
    /// (`next`; `rms`: the model's norms are RMSNorms) is one and the
    /// tensor-core product takes these rows, its epilogue also prepares
    /// that norm for the product that reads it (`h` and `partials`; see
    /// `mixc_runtime::skinny`): returns whether it did.
    #[allow(clippy::too_many_arguments)]
    fn add_to_residual(
        &self,
        rms: bool,
        x: &mut CudaSlice<u32>,
        h: &mut CudaSlice<u32>,
        partials: &mut CudaSlice<u32>,
        operand: &CudaSlice<u32>,
        lin: &Linear,
        rows: usize,
        next: &DeviceNorm,
    ) -> Result<bool, Error> {
        let (r, dense) = (&self.runner, &self.dense);
        let feeds = rms && lin.bias.is_none() && dense.feeds_norm(rows, lin.inner(), lin.out());
        if feeds {
            let feed = NormFeed { weight: &next.weight, xw: h, partials };
            dense.gemv_feeding(r, x, operand, &lin.weight, rows, true, feed)?;
        } else {
            dense.linear(r, x, operand, lin, rows, true)?;
        }
        Ok(feeds)
    }

    /// Queues the whole model over the tokens in the workspace: embedding,
    /// every layer, the final norm and the head. A decode step's RMSNorms
    /// are folded into the GEMVs that read them where they fit.
    fn pass(
        &self,
        model: &Model,
        cache: &mut Cache,
        w: &mut Workspace,
        decode: bool,
        carry: Carry,
        runs: &mut [Option<KeptRun>],
    ) -> Result<(), Error> {
        let (r, dense) = (&self.runner, &self.dense);
        let t = w.rows;
        dense.embed(r, &mut w.x.buf, &self.embed.weight, &w.ids.buf, t)?;
        // Whether the last product added to the residual prepared the next norm.
        let mut fed = false;
        for (li, layer) in self.layers.iter().enumerate() {
            let lm = &model.mixers[model.layers[li]];
            let kept = if decode { runs.get_mut(li) } else { None };
            let norm = BlockNorm { fed, ..self.norm_of(model, &layer.mixer_norm) };
            fed = self.mixer(lm, li, layer, cache, w, kept, carry, &norm)?;
            if let Some(m) = &layer.mlp {
                let norm = BlockNorm { fed, ..self.norm_of(model, &m.norm) };
                let hdn = m.down.inner();
                let swiglu = m.kind == MlpKind::Swiglu && m.up.bias.is_none() && dense.gemv_fits(t, norm.d);
                // With the GEMV: gate, up and the activation in one launch,
                // the norm too where it folds in.
                let folds = swiglu && norm.folds(dense, t);
                if !folds {
                    norm.apply(dense, r, &mut w.h.buf, &w.x.buf, t)?;
                }
                let x = if folds { norm.folded(&w.x.buf, &w.h.buf, &w.partials.buf) } else { GemvX::Act(&w.h.buf) };
                if swiglu {
                    dense.project_swiglu(r, &mut w.wide_act.buf, x, &m.up, t)?;
                } else {
                    dense.linear(r, &mut w.wide.buf, &w.h.buf, &m.up, t, false)?;
                    match m.kind {
                        MlpKind::Swiglu => dense.swiglu(r, &mut w.wide_act.buf, &w.wide.buf, t, hdn)?,
                        MlpKind::Gelu => dense.gelu(r, &mut w.wide_act.buf, &w.wide.buf, t * hdn)?,
                    }
                }
                let next = self.norm_after(li, false);
                let (x, h, partials) = (&mut w.x.buf, &mut w.h.buf, &mut w.partials.buf);
                let rms = norm.kind == RowNorm::Rms;
                fed = self.add_to_residual(rms, x, h, partials, &w.wide_act.buf, &m.down, t, next)?;
            }
        }
        let norm = BlockNorm { fed, ..self.norm_of(model, &self.norm) };
        let head = self.head.as_ref().unwrap_or(&self.embed);
        if head.bias.is_none() && norm.folds(dense, t) {
            let all = Rows { first: 0, count: head.out() };
            let x = norm.folded(&w.x.buf, &w.h.buf, &w.partials.buf);
            dense.gemv(r, &mut w.logits.buf, Act::F32, x, &head.weight, all, t, false)?;
        } else {
            norm.apply(dense, r, &mut w.h.buf, &w.x.buf, t)?;
            dense.linear(r, &mut w.logits.buf, &w.h.buf, head, t, false)?;
        }
        Ok(())
    }

    /// A decode step as a CUDA graph, where every layer keeps its mixer
    /// buffers at the cache's shapes: the cache's carried buffers are
    /// swapped into the mixers' input buffers (so the graph reads and
    /// writes them in place: its key is their addresses), the graph is
    /// captured at the first step with those addresses and replayed after,
    /// and the buffers are swapped back. `false` (nothing done) where the
    /// step does not qualify; a capture that fails turns graphs off.
    fn as_graph(
        &self,
        model: &Model,
        cache: &mut Cache,
        w: &mut Workspace,
        runs: &mut [Option<KeptRun>],
    ) -> Result<bool, Error> {
        let r = &self.runner;
        let (seqs, per_seq) = (w.seqs, w.rows / w.seqs.max(1));
        // Every layer kept, bound at the shapes the cache has now, every
        // carried tensor on the card at its input's length.
        let mut swaps: Vec<(usize, String, usize)> = Vec::new();
        for (li, layer) in self.layers.iter().enumerate() {
            let lm = &model.mixers[model.layers[li]];
            let held = &cache.layers[li];
            let shapes = bound(lm, layer, held, seqs, per_seq);
            let Some(Some((at, run))) = runs.get(li) else { return Ok(false) };
            if *at != shapes {
                return Ok(false);
            }
            for (input, feed) in &lm.feeds {
                if !matches!(feed, Feed::Carried) {
                    continue;
                }
                let Some(s) = run.input_slot(input) else { continue };
                match (held.get(input), run.buffer(s)) {
                    (Some(Stored::Device(dt)), Some(buf)) if dt.buf.len() == buf.len() => {
                        swaps.push((li, input.clone(), s))
                    }
                    (None, _) => {}
                    _ => return Ok(false),
                }
            }
        }
        // Positions for the mixers that read one.
        for (li, entry) in runs.iter_mut().enumerate() {
            if let Some((_, run)) = entry.as_mut() {
                set_position(r, &model.mixers[model.layers[li]], run, cache.position)?;
            }
        }
        let swap = |cache: &mut Cache, runs: &mut [Option<KeptRun>]| {
            for (li, input, s) in &swaps {
                if let (Some(Stored::Device(dt)), Some(Some((_, run)))) =
                    (cache.layers[*li].get_mut(input), runs.get_mut(*li))
                {
                    if let Some(buf) = run.buffer_mut(*s) {
                        std::mem::swap(&mut dt.buf, buf);
                    }
                }
            }
        };
        // Each layer's new state trades buffers with the old one after the
        // step, so the next step reads it where this one wrote it.
        let mut flips: Vec<(usize, usize, usize)> = Vec::new();
        for (li, entry) in runs.iter().enumerate() {
            if let Some((_, run)) = entry {
                let lm = &model.mixers[model.layers[li]];
                flips.extend(carried_pairs(lm, run).into_iter().map(|(out, input)| (li, out, input)));
            }
        }
        swap(cache, runs);
        let ran = self.replay(model, cache, w, runs, &swaps, &flips);
        if matches!(ran, Ok(true)) {
            for (li, out, input) in &flips {
                if let Some(Some((_, run))) = runs.get_mut(*li) {
                    run.swap_buffers(*out, *input)?;
                }
            }
        }
        swap(cache, runs);
        ran
    }

    /// Launches the graph of this step's buffers (the carried ones swapped
    /// in, and the outputs they trade places with), capturing it first if
    /// it is new.
    fn replay(
        &self,
        model: &Model,
        cache: &mut Cache,
        w: &mut Workspace,
        runs: &mut [Option<KeptRun>],
        swaps: &[(usize, String, usize)],
        flips: &[(usize, usize, usize)],
    ) -> Result<bool, Error> {
        let r = &self.runner;
        let mut key: Vec<u64> = vec![w.rows as u64, r.address(&w.x.buf)];
        let slots = swaps.iter().map(|(li, _, s)| (*li, *s)).chain(flips.iter().map(|(li, out, _)| (*li, *out)));
        for (li, s) in slots {
            if let Some(Some((_, run))) = runs.get(li) {
                key.extend(run.buffer(s).map(|b| r.address(b)));
            }
        }
        let known = self.graphs.borrow().iter().any(|(k, _)| *k == key);
        if !known {
            r.begin_capture()?;
            let recorded = self.pass(model, cache, w, true, Carry::InPlace, runs);
            let graph = r.end_capture();
            match (recorded, graph) {
                (Ok(()), Ok(g)) => {
                    let mut graphs = self.graphs.borrow_mut();
                    if graphs.len() >= KEPT_GRAPHS {
                        graphs.remove(0);
                    }
                    graphs.push((key.clone(), g));
                }
                (recorded, graph) => {
                    self.graphs_on.set(false);
                    let why = recorded.err().map(|e| e.to_string()).or(graph.err().map(|e| e.to_string()));
                    eprintln!("note: CUDA graphs off, decoding kernel by kernel ({})", why.unwrap_or_default());
                    return Ok(false);
                }
            }
        }
        let graphs = self.graphs.borrow();
        match graphs.iter().find(|(k, _)| *k == key) {
            Some((_, g)) => {
                g.launch()?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Moves the carried tensors of a one-sequence cache into slot `slot` of
    /// a cache of `seqs` sequences stacked along the batch axis (allocated
    /// at the first slot filled).
    pub(super) fn adopt(&self, batch: &mut Cache, seqs: usize, slot: usize, one: Cache) -> Result<(), Error> {
        let r = &self.runner;
        if batch.layers.len() != one.layers.len() {
            batch.layers = (0..one.layers.len()).map(|_| BTreeMap::new()).collect();
        }
        for (li, layer) in one.layers.into_iter().enumerate() {
            for (name, stored) in layer {
                let Stored::Device(t) = stored else {
                    return Err(Error::Usage(format!(
                        "layer {li}: `{name}` cannot be stacked by sequence (not a plain tensor on the GPU)"
                    )));
                };
                let words = t.buf.len();
                if t.shape.first() != Some(&1) || t.bytes() != 4 * words {
                    return Err(Error::Usage(format!(
                        "layer {li}: `{name}` of shape {:?} cannot be stacked by sequence",
                        t.shape
                    )));
                }
                let held = &mut batch.layers[li];
                let fits = matches!(held.get(&name), Some(Stored::Device(b)) if b.buf.len() == seqs * words);
                if !fits {
                    let mut shape = t.shape.clone();
                    shape[0] = seqs;
                    held.insert(name.clone(), Stored::Device(r.zeros(&shape, t.dtype)?));
                }
                if let Some(Stored::Device(b)) = held.get_mut(&name) {
                    r.copy_words_at(&t.buf, 0, &mut b.buf, slot * words, words)?;
                }
            }
        }
        batch.position = batch.position.max(one.position);
        r.synchronize()?;
        Ok(())
    }

    /// One layer's mixer: its projections into the mixer's buffers, the
    /// carried tensors in, the kernels, `o_proj` added to the residual, the
    /// carried tensors out. `kept`: the layer's decode buffers (a decode
    /// step), reused while the shapes stay the same.
    #[allow(clippy::too_many_arguments)]
    fn mixer(
        &self,
        lm: &LoadedMixer,
        li: usize,
        layer: &DeviceLayer,
        cache: &mut Cache,
        w: &mut Workspace,
        kept: Option<&mut Option<KeptRun>>,
        carry: Carry,
        norm: &BlockNorm,
    ) -> Result<bool, Error> {
        let (r, dense) = (&self.runner, &self.dense);
        let t = w.rows;
        let (seqs, per_seq) = (w.seqs, w.rows / w.seqs.max(1));
        let name = &lm.mixer.name;
        let run_err = |msg: String| Error::Run { mixer: name.clone(), msg };
        let lp: &LoadedProgram = lm
            .mixer
            .gpu_program_for(kept.is_some(), seqs)
            .ok_or_else(|| run_err("the mixer was not compiled for the GPU".into()))??;
        let position = cache.position;
        let layer_cache = cache.layers.get_mut(li).ok_or_else(|| run_err("no cache for the layer".into()))?;
        let shapes = bound(lm, layer, layer_cache, seqs, per_seq);
        let mut fresh = None;
        let run: &mut PreparedRun = match kept {
            Some(entry) => {
                if entry.as_ref().is_none_or(|(at, _)| *at != shapes) {
                    *entry = None;
                    self.graphs.borrow_mut().clear();
                    let run = r.prepare_shaped(lp, &shapes, &uploads(lm, layer, position))?;
                    *entry = Some((shapes, run));
                } else if carry == Carry::Swap {
                    // A kept run: only the position changes.
                    let (_, run) = entry.as_mut().ok_or_else(|| run_err("no decode buffers".into()))?;
                    set_position(r, lm, run, position)?;
                }
                &mut entry.as_mut().ok_or_else(|| run_err("no decode buffers".into()))?.1
            }
            None => fresh.insert(r.prepare_shaped(lp, &shapes, &uploads(lm, layer, position))?),
        };
        // Projections straight into the mixer's input buffers (in their dtype).
        layer.inputs.project(r, dense, run, w, t, name, norm)?;
        // Carried tensors in: swapped where lengths match, else copied (in a
        // graph step they are in place already).
        for (input, feed) in &lm.feeds {
            if carry == Carry::InPlace || !matches!(feed, Feed::Carried) {
                continue;
            }
            let (Some(s), Some(stored)) = (run.input_slot(input), layer_cache.get_mut(input)) else { continue };
            let slot_act = run.slot_type(s).and_then(|(_, dt)| act_stored(dt));
            let buf = run.buffer_mut(s).ok_or_else(|| run_err(format!("no input buffer `{input}`")))?;
            match stored {
                Stored::Device(dt) if dt.buf.len() == buf.len() => std::mem::swap(&mut dt.buf, buf),
                Stored::Device(dt) => r.copy_words(&dt.buf, buf, dt.buf.len().min(buf.len()))?,
                Stored::DeviceInt8 { shape, q, scales, group } => {
                    let act = slot_act.ok_or_else(|| run_err(format!("`{input}` is not stored in f32 or bf16")))?;
                    let n = shape.iter().product::<usize>();
                    dense.dequantize_i8(r, &q.buf, &scales.buf, buf, act, n, *group)?;
                }
                other => {
                    let host = other.tensor()?;
                    let (_, dtype) = run.slot_type(s).ok_or_else(|| run_err("no slot".into()))?;
                    let up = r.upload_tensor(&host, dtype)?;
                    let buf = run.buffer_mut(s).ok_or_else(|| run_err(format!("no input buffer `{input}`")))?;
                    r.copy_words(&up.buf, buf, up.buf.len().min(buf.len()))?;
                }
            }
        }
        r.enqueue(lp, run)?;
        // The output through o_proj into the residual stream.
        let od = layer.o_proj.inner();
        let o = run.output_slot("o").ok_or_else(|| run_err("no output `o`".into()))?;
        let (_, o_dtype) = run.slot_type(o).ok_or_else(|| run_err("no slot".into()))?;
        let o_buf = run.buffer(o).ok_or_else(|| run_err("no output buffer `o`".into()))?;
        let operand = match (o_dtype, dense.act) {
            (DType::F32, Act::F32) | (DType::BF16, Act::Bf16) => o_buf,
            (DType::F32, Act::Bf16) => {
                dense.cast_bf16(r, &mut w.wide_act.buf, o_buf, t * od)?;
                &w.wide_act.buf
            }
            (other, _) => {
                return Err(run_err(format!("output `o` is stored as {other}, the weights as {:?}", dense.act)))
            }
        };
        let next = self.norm_after(li, true);
        let (x, h, partials) = (&mut w.x.buf, &mut w.h.buf, &mut w.partials.buf);
        let rms = norm.kind == RowNorm::Rms;
        let fed = self.add_to_residual(rms, x, h, partials, operand, &layer.o_proj, t, next)?;
        // Carried tensors out: the new state moves into the cache (in a
        // graph step, trades buffers with its input after the step, or is
        // copied over it where their lengths differ).
        let flipped = carried_pairs(lm, run);
        let outputs: Vec<(String, String)> = lm
            .mixer
            .graph
            .outputs
            .iter()
            .filter_map(|(out, _)| carried_input(out).map(|input| (out.clone(), input)))
            .collect();
        for (out, input) in outputs {
            let Some(s) = run.output_slot(&out) else { continue };
            if let Some(group) = self.kv_int8.filter(|_| is_kv_cache(&input)) {
                let quantized =
                    quantize_cache(r, dense, run, s, group).map_err(|e| run_err(format!("`{out}`: {e}")))?;
                layer_cache.insert(input, quantized);
                continue;
            }
            if carry == Carry::InPlace {
                match run.input_slot(&input) {
                    Some(to) if !flipped.contains(&(s, to)) => r.copy_slot(run, s, to)?,
                    _ => {}
                }
                continue;
            }
            let (shape, dtype) =
                run.slot_type(s).map(|(sh, dt)| (sh.to_vec(), dt)).ok_or_else(|| run_err("no slot".into()))?;
            let buf = run.buffer_mut(s).ok_or_else(|| run_err(format!("no output buffer `{out}`")))?;
            let mut held = match layer_cache.remove(&input) {
                Some(Stored::Device(dt)) if dt.buf.len() == buf.len() => dt,
                _ => r.zeros(&shape, dtype)?,
            };
            std::mem::swap(&mut held.buf, buf);
            held.shape = shape;
            held.dtype = dtype;
            layer_cache.insert(input, Stored::Device(held));
        }
        Ok(fed)
    }
}

/// The int8 codes and scales of output buffer `s` of a run (an attention
/// cache, quantized in groups of `group` values along its last axis).
fn quantize_cache(r: &CudaRunner, dense: &Dense, run: &PreparedRun, s: usize, group: usize) -> Result<Stored, Error> {
    let (shape, dtype) = run.slot_type(s).map(|(sh, dt)| (sh.to_vec(), dt)).ok_or(Error::Usage("no slot".into()))?;
    let act = act_stored(dtype).ok_or_else(|| Error::Usage(format!("a KV cache stored as {dtype} cannot be int8")))?;
    let n: usize = shape.iter().product();
    if group == 0 || !n.is_multiple_of(group) {
        return Err(Error::Usage(format!("{n} values do not split into groups of {group}")));
    }
    let mut q = r.zeros(&[n.div_ceil(4)], DType::I32)?;
    let mut scales = r.zeros(&[n / group], DType::F32)?;
    let buf = run.buffer(s).ok_or(Error::Usage("no output buffer".into()))?;
    dense.quantize_i8(r, buf, act, &mut q.buf, &mut scales.buf, n, group)?;
    Ok(Stored::DeviceInt8 { shape, q, scales, group })
}

/// The (output, input) buffers of a mixer's carried tensors whose lengths
/// agree: a graph step leaves the new state where its kernels wrote it and
/// the two buffers trade places for the next step (two graphs, one per
/// arrangement, take turns), instead of copying the state back, which at
/// 16 sequences of GLA-1.3B moves 1.6 GB a step.
fn carried_pairs(lm: &LoadedMixer, run: &PreparedRun) -> Vec<(usize, usize)> {
    lm.mixer
        .graph
        .outputs
        .iter()
        .filter_map(|(out, _)| {
            let input = carried_input(out)?;
            let (o, i) = (run.output_slot(out)?, run.input_slot(&input)?);
            let len = |s: usize| run.buffer(s).map(|b| b.len());
            (o != i && len(o).is_some() && len(o) == len(i)).then_some((o, i))
        })
        .collect()
}

/// The shapes every input of a layer's mixer is bound at: projected inputs
/// per token, parameters as loaded, carried tensors as the cache holds them.
fn bound(
    lm: &LoadedMixer,
    layer: &DeviceLayer,
    held: &BTreeMap<String, Stored>,
    seqs: usize,
    per_seq: usize,
) -> BTreeMap<String, Vec<usize>> {
    let mut shapes = BTreeMap::new();
    for (input, feed) in &lm.feeds {
        let shape = match feed {
            Feed::Projected { shape, .. } => [&[seqs, per_seq][..], shape].concat(),
            Feed::Param => match layer.params.get(input) {
                Some(p) => p.shape.clone(),
                None => continue,
            },
            Feed::Carried => match held.get(input) {
                Some(s) => s.shape().to_vec(),
                None => continue,
            },
            Feed::Offset => vec![],
        };
        shapes.insert(input.clone(), shape);
    }
    shapes
}

/// What new mixer buffers are given on the host: the parameters and the position.
fn uploads(lm: &LoadedMixer, layer: &DeviceLayer, position: usize) -> BTreeMap<String, HostTensor> {
    let mut out = layer.params.clone();
    if let Some(name) = offset_input(lm) {
        out.insert(name.to_string(), HostTensor { shape: vec![], data: Data::I32(vec![position as i32]) });
    }
    out
}

/// The mixer's input that takes the position of the first new token, if any.
fn offset_input(lm: &LoadedMixer) -> Option<&str> {
    lm.feeds.iter().find(|(_, f)| matches!(f, Feed::Offset)).map(|(n, _)| n.as_str())
}

/// Writes the position into a kept run's offset buffer (a mixer that reads one).
fn set_position(r: &CudaRunner, lm: &LoadedMixer, run: &mut PreparedRun, position: usize) -> Result<(), Error> {
    if let Some(buf) = offset_input(lm).and_then(|n| run.input_slot(n)).and_then(|s| run.buffer_mut(s)) {
        r.upload_i32(&[position as i32], buf)?;
    }
    Ok(())
}

/// Uploads a model's checked weights.
struct Uploader<'a> {
    model: &'a Model,
    runner: &'a CudaRunner,
    act: Act,
}

impl Uploader<'_> {
    /// The block norm `prefix` (`.weight`, and for LayerNorm `.bias`).
    fn norm(&self, prefix: &str) -> Result<DeviceNorm, Error> {
        let d = self.model.cfg.d_model as usize;
        let weight = self.f32(&format!("{prefix}.weight"), &[d])?;
        let bias = match self.model.cfg.norm {
            NormChoice::Rmsnorm => None,
            NormChoice::Layernorm => Some(self.f32(&format!("{prefix}.bias"), &[d])?),
        };
        Ok(DeviceNorm { weight, bias })
    }

    fn f32(&self, name: &str, shape: &[usize]) -> Result<DeviceTensor, Error> {
        let data = self.model.tensor(name, shape)?;
        Ok(self.runner.upload_f32(data, shape, DType::F32)?)
    }

    /// The linear layer `prefix` (`.weight` `[out, inner]`, optional `.bias`).
    fn linear(&self, prefix: &str, out: usize, inner: usize) -> Result<Linear, Error> {
        let bias = format!("{prefix}.bias");
        let bias = if self.model.weights.contains_key(&bias) { Some(bias) } else { None };
        self.linear_named(&format!("{prefix}.weight"), bias.as_deref(), out, inner)
    }

    fn linear_named(&self, weight: &str, bias: Option<&str>, out: usize, inner: usize) -> Result<Linear, Error> {
        let data = self.model.tensor(weight, &[out, inner])?;
        let weight = self.runner.upload_f32(data, &[out, inner], act_dtype(self.act))?;
        let bias = match bias {
            Some(b) => Some(self.f32(b, &[out])?),
            None => None,
        };
        Ok(Linear { weight, bias })
    }

    /// Two linear layers of the same input stacked into one `[2·out, inner]`
    /// (SwiGLU's gate and up: one GEMM instead of two).
    fn stacked(&self, first: &str, second: &str, out: usize, inner: usize) -> Result<Linear, Error> {
        let a = self.model.tensor(&format!("{first}.weight"), &[out, inner])?;
        let b = self.model.tensor(&format!("{second}.weight"), &[out, inner])?;
        let weight = self.runner.upload_f32_stacked(&[a, b], &[2 * out, inner], act_dtype(self.act))?;
        let (ba, bb) = (format!("{first}.bias"), format!("{second}.bias"));
        let bias = if self.model.weights.contains_key(&ba) || self.model.weights.contains_key(&bb) {
            let mut v = vec![0.0f32; 2 * out];
            if self.model.weights.contains_key(&ba) {
                v[..out].copy_from_slice(self.model.tensor(&ba, &[out])?);
            }
            if self.model.weights.contains_key(&bb) {
                v[out..].copy_from_slice(self.model.tensor(&bb, &[out])?);
            }
            Some(self.runner.upload_f32(&v, &[2 * out], DType::F32)?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }
}
