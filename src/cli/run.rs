//! `mixc init-weights` and `mixc run`.

use super::{ExecTarget, InitWeightsArgs};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mixc::ir::mixers::inputs::SplitMix;
use mixc::runner::{tokenizer::Tokenizer, Cache, Logits, WeightsDtype};
use mixc::runtime::st;
use mixc::{Error, Model};
use std::fmt::Write;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A model file with a [model] section.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Weights (safetensors; names in the README, or a checkpoint's own
    /// names mapped by the model file's [weights] section).
    /// Required unless --bench, which then runs random weights (`--seed`).
    #[arg(long, value_name = "W.safetensors")]
    pub weights: Option<PathBuf>,
    /// A prompt as token ids separated by spaces. Repeat the option, or
    /// separate prompts by `;`, for a batch of sequences (of any lengths,
    /// each with its own caches).
    #[arg(long, value_name = "IDS", action = clap::ArgAction::Append)]
    pub prompt_ids: Vec<String>,
    /// A prompt as text, encoded by --tokenizer (repeat for a batch).
    #[arg(long, value_name = "TEXT", action = clap::ArgAction::Append, requires = "tokenizer")]
    pub prompt: Vec<String>,
    /// A Hugging Face `tokenizer.json`: encodes --prompt and decodes the
    /// generated tokens.
    #[arg(long, value_name = "tokenizer.json")]
    pub tokenizer: Option<PathBuf>,
    #[arg(long, default_value_t = 16)]
    pub max_new_tokens: usize,
    /// 0 picks the most likely token; above, sample from the softmax at this temperature.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where kernels run.
    #[arg(long, value_enum, default_value_t = ExecTarget::Cpu)]
    pub target: ExecTarget,
    /// Print the bytes each layer's cache holds after prefill and after decoding.
    #[arg(long)]
    pub report_memory: bool,
    /// After the run, run the same prompts again --bench-runs times and print
    /// the medians: prefill tokens/s, decode ms per step and per token, and the
    /// decode step against its floor (every weight read once at the device
    /// profile's memory bandwidth). Without a prompt, 64 tokens; without
    /// --weights, random weights.
    #[arg(long)]
    pub bench: bool,
    /// Timed runs of --bench.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub bench_runs: usize,
    /// With --target cuda: the dtype of the projection weights on the GPU
    /// (bf16 halves the bytes a decode step reads; f32 gives the CPU's logits).
    #[arg(long, value_enum, default_value_t = GpuWeights::Bf16)]
    pub gpu_weights: GpuWeights,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum GpuWeights {
    Bf16,
    F32,
}

pub fn init_weights(args: &InitWeightsArgs) -> Result<String, Error> {
    let w = Model::init_weights(&args.file, args.seed)?;
    st::save_as(&args.output, &w, args.bf16)?;
    let n: usize = w.values().map(|t| t.numel()).sum();
    Ok(format!("wrote {} tensors ({n} parameters) to {}\n", w.len(), args.output.display()))
}

fn pick(logits: &[f32], temperature: f32, rng: &mut SplitMix) -> u32 {
    let best = logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap_or(0);
    if temperature <= 0.0 {
        return best as u32;
    }
    let m = logits[best];
    let p: Vec<f64> = logits.iter().map(|l| (((l - m) / temperature) as f64).exp()).collect();
    let total: f64 = p.iter().sum();
    let mut r = rng.uniform() * total;
    for (i, x) in p.iter().enumerate() {
        r -= x;
        if r <= 0.0 {
            return i as u32;
        }
    }
    best as u32
}

/// The sequences of every `--prompt-ids` value (each may hold several, separated by `;`).
pub fn parse_prompt_ids(values: &[String]) -> Result<Vec<Vec<u32>>, Error> {
    let mut out = Vec::new();
    for value in values {
        for part in value.split(';') {
            let ids: Vec<u32> = part
                .split_whitespace()
                .map(|s| s.parse().map_err(|_| Error::Usage(format!("--prompt-ids: `{s}` is not a token id"))))
                .collect::<Result<_, _>>()?;
            if ids.is_empty() {
                return Err(Error::Usage(format!(
                    "--prompt-ids: prompt {} is empty: expected token ids separated by spaces",
                    out.len() + 1
                )));
            }
            out.push(ids);
        }
    }
    Ok(out)
}

/// A progress bar on stderr that shows itself only once a run has taken more
/// than a second, and only on a terminal.
struct Progress {
    bar: ProgressBar,
    start: Instant,
    shown: bool,
}

impl Progress {
    fn new(total: u64) -> Progress {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} tokens, {elapsed} so far, eta {eta}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        Progress { bar, start: Instant::now(), shown: false }
    }

    fn step(&mut self, msg: &'static str, n: u64) {
        if !self.shown && self.start.elapsed() > Duration::from_secs(1) && std::io::stderr().is_terminal() {
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
            self.shown = true;
        }
        self.bar.set_message(msg);
        self.bar.inc(n);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// What one prefill of every prompt and its decode produced.
struct Generated {
    /// Per sequence: the generated ids.
    ids: Vec<Vec<u32>>,
    prefill_s: f64,
    decode_s: f64,
    /// The cache report (`--report-memory`).
    memory: String,
    side_by_side: bool,
    /// Bytes a decode step moves through the caches at the end (read, and
    /// written but for KV caches): part of the step's floor.
    cache_step_bytes: usize,
}

/// Prefills every prompt of `batch` (each from new caches) and decodes
/// `max_new_tokens − 1` more tokens for each, side by side where the model
/// allows it.
fn generate(model: &Model, batch: &[Vec<u32>], args: &RunArgs, progress: &mut Progress) -> Result<Generated, Error> {
    let (vocab, layers) = (model.vocab(), model.layers());
    let mut rng = SplitMix::new(args.seed);
    let mut caches: Vec<Cache> = batch.iter().map(|_| model.new_cache()).collect();
    // Several sequences on the GPU decode side by side where the model
    // allows it (one pass over the weights per step for all of them).
    let mut side_by_side = if batch.len() > 1 && model.batch_unsupported().is_none() {
        Some(model.new_batch_cache(batch.len())?)
    } else {
        None
    };

    // Prefill, one sequence at a time, each from its own caches.
    let t0 = Instant::now();
    let mut next = Vec::with_capacity(batch.len());
    for (b, (ids, cache)) in batch.iter().zip(&mut caches).enumerate() {
        let logits = match &mut side_by_side {
            Some(all) => model.prefill_slot(all, b, ids, Logits::Last)?,
            None => model.forward_in_logits(cache, ids, false, Logits::Last)?,
        };
        next.push(pick(&logits[..vocab.min(logits.len())], args.temperature, &mut rng));
        progress.step("prefill", ids.len() as u64);
    }
    let prefill_s = t0.elapsed().as_secs_f64();
    let mut memory = String::new();
    let report = |memory: &mut String, when: &str, caches: &[Cache], side: &Option<Cache>| {
        if let Some(all) = side {
            let _ = writeln!(
                memory,
                "cache bytes per layer {when} (all {} sequences): {:?}",
                batch.len(),
                all.bytes(layers)
            );
            return;
        }
        for (b, c) in caches.iter().enumerate() {
            let which = if caches.len() > 1 { format!(" (sequence {b})") } else { String::new() };
            let _ = writeln!(memory, "cache bytes per layer {when}{which}: {:?}", c.bytes(layers));
        }
    };
    report(&mut memory, "after prefill", &caches, &side_by_side);

    // Decode: each step advances every sequence by one token.
    let mut generated: Vec<Vec<u32>> = next.iter().map(|n| vec![*n]).collect();
    let t1 = Instant::now();
    for _ in 1..args.max_new_tokens {
        if let Some(all) = &mut side_by_side {
            let logits = model.decode_batch(all, &next)?;
            for (b, (n, out)) in next.iter_mut().zip(&mut generated).enumerate() {
                *n = pick(&logits[b * vocab..(b + 1) * vocab], args.temperature, &mut rng);
                out.push(*n);
            }
            progress.step("decode", batch.len() as u64);
            continue;
        }
        for ((cache, next), out) in caches.iter_mut().zip(&mut next).zip(&mut generated) {
            let l = model.forward_in(cache, &[*next], true)?;
            *next = pick(&l, args.temperature, &mut rng);
            out.push(*next);
            progress.step("decode", 1);
        }
    }
    let decode_s = t1.elapsed().as_secs_f64();
    report(&mut memory, &format!("after {} tokens", generated[0].len()), &caches, &side_by_side);
    let cache_step_bytes = match &side_by_side {
        Some(all) => all.step_bytes(),
        None => caches.iter().map(Cache::step_bytes).sum(),
    };
    Ok(Generated {
        ids: generated,
        prefill_s,
        decode_s,
        memory,
        side_by_side: side_by_side.is_some(),
        cache_step_bytes,
    })
}

/// The median of `v` (not empty).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Prompt tokens of `--bench` without a prompt.
const BENCH_PROMPT: usize = 64;

pub fn run(args: &RunArgs) -> Result<String, Error> {
    let start = Instant::now();
    let mut batch = parse_prompt_ids(&args.prompt_ids)?;
    let tokenizer = match &args.tokenizer {
        Some(path) => Some(Tokenizer::load(path)?),
        None => None,
    };
    if let Some(tok) = &tokenizer {
        for text in &args.prompt {
            batch.push(tok.encode(text)?);
        }
    }
    if batch.is_empty() && !args.bench {
        return Err(Error::Usage(
            "no prompt: expected --prompt-ids \"1 2 3\" (or --prompt TEXT with --tokenizer)".into(),
        ));
    }
    let target = super::exec::jit_target(args.target)?;
    if args.weights.is_none() && !args.bench {
        return Err(Error::Usage(
            "no weights: expected --weights W.safetensors (`mixc init-weights` writes random ones; --bench runs \
             random weights without it)"
                .into(),
        ));
    }
    let on_gpu = match args.gpu_weights {
        GpuWeights::Bf16 => WeightsDtype::Bf16,
        GpuWeights::F32 => WeightsDtype::F32,
    };
    // The weights are read (or made) while the mixers compile.
    let load_start = Instant::now();
    let read = || match &args.weights {
        Some(path) => Ok(st::load(path)?),
        None => Model::init_weights(&args.file, args.seed),
    };
    let (model, read_s) = Model::load_reading(&args.file, read, target, on_gpu)?;
    let load_s = load_start.elapsed().as_secs_f64();
    if batch.is_empty() {
        let vocab = model.vocab().max(1) as u32;
        batch.push((1..=BENCH_PROMPT as u32).map(|i| i % vocab).collect());
    }
    let prompt_tokens: usize = batch.iter().map(Vec::len).sum();
    let steps = batch.len() * args.max_new_tokens.saturating_sub(1);
    let mut progress = Progress::new((prompt_tokens + steps) as u64);
    let loaded_s = start.elapsed().as_secs_f64();
    let g = generate(&model, &batch, args, &mut progress)?;
    let first_token_s = loaded_s + g.prefill_s;
    drop(progress);

    let mut out = String::new();
    for ids in &g.ids {
        let list: Vec<String> = ids.iter().map(|x| x.to_string()).collect();
        let _ = writeln!(out, "{}", list.join(" "));
    }
    if let Some(tok) = &tokenizer {
        for ids in &g.ids {
            let _ = writeln!(out, "text: {:?}", tok.decode(ids)?);
        }
    }
    let seqs = match (g.side_by_side, batch.len()) {
        (_, 1) => String::new(),
        (true, n) => format!(" in {n} sequences side by side"),
        (false, n) => format!(" in {n} sequences"),
    };
    let (compile_s, place_s) = model.load_seconds();
    let _ = writeln!(
        out,
        "startup: mixers compiled and weights placed in {load_s:.3} s ({compile_s:.3} s compiling, the weights \
         {} in {read_s:.3} s alongside; {place_s:.3} s placing{}){}",
        if args.weights.is_some() { "read" } else { "made (random)" },
        match model.gpu_setup_seconds() {
            s if s > 0.0 => format!("; cuBLAS and the glue kernels opened in {s:.3} s alongside the compiling"),
            _ => String::new(),
        },
        match model.device_weight_bytes() {
            0 => String::new(),
            n => format!(" ({:.2} GB on the GPU)", n as f64 / 1e9),
        }
    );
    let _ = writeln!(
        out,
        "prefill: {prompt_tokens} tokens{seqs} in {:.3} s ({:.1} tokens/s); first token after {:.3} s",
        g.prefill_s,
        prompt_tokens as f64 / g.prefill_s.max(1e-9),
        first_token_s
    );
    if steps > 0 {
        let per_step = if batch.len() > 1 {
            format!(", {:.2} ms per step of the batch", 1e3 * g.decode_s / (args.max_new_tokens - 1) as f64)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "decode: {steps} tokens{seqs} in {:.3} s ({:.2} ms/token{per_step})",
            g.decode_s,
            1e3 * g.decode_s / steps as f64
        );
    }
    if args.bench {
        out.push_str(&bench(&model, &batch, args, target)?);
    }
    if args.report_memory {
        out.push_str(&g.memory);
    }
    Ok(out)
}

/// `--bench`: the same prefill and decode `--bench-runs` times more (the run
/// above warmed up: kernels compiled and loaded, graphs captured), their
/// medians, and the decode step against its floor, reading every weight once
/// at the memory bandwidth of the target's device profile.
fn bench(model: &Model, batch: &[Vec<u32>], args: &RunArgs, target: mixc::jit::Target) -> Result<String, Error> {
    let runs = args.bench_runs.max(1);
    let (mut prefill, mut decode) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    let mut cache_bytes = 0;
    for _ in 0..runs {
        let g = generate(model, batch, args, &mut Progress::new(0))?;
        prefill.push(g.prefill_s);
        decode.push(g.decode_s);
        cache_bytes = g.cache_step_bytes;
    }
    let prompt_tokens: usize = batch.iter().map(Vec::len).sum();
    let step_count = args.max_new_tokens.saturating_sub(1);
    let (p, d) = (median(prefill), median(decode));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "bench ({runs} runs after the one above, medians): prefill {prompt_tokens} tokens in {:.3} s ({:.1} tokens/s)",
        p,
        prompt_tokens as f64 / p.max(1e-9)
    );
    if step_count > 0 {
        let step_ms = 1e3 * d / step_count as f64;
        // The floor at the bandwidth of the card it ran on.
        let profile = match model.gpu_card() {
            Some(card) => mixc::card::profile(&card),
            None => mixc::jit::device_profile(target)?,
        };
        let bytes = model.weight_bytes();
        let bw = profile.dram_bw.max(1.0);
        let floor_ms = 1e3 * bytes as f64 / bw;
        let with_caches_ms = 1e3 * (bytes + cache_bytes) as f64 / bw;
        let _ = writeln!(
            out,
            "bench: decode {:.3} ms per step ({} sequence{}; {:.3} ms/token); floor {:.3} ms ({:.1} MB of weights \
             at {:.0} GB/s, profile `{}`): {:.1}× the floor; with the caches read and written ({:.3} MB) {:.3} ms: \
             {:.1}×",
            step_ms,
            batch.len(),
            if batch.len() == 1 { "" } else { "s" },
            step_ms / batch.len() as f64,
            floor_ms,
            bytes as f64 / 1e6,
            profile.dram_bw / 1e9,
            profile.name,
            step_ms / floor_ms.max(1e-12),
            cache_bytes as f64 / 1e6,
            with_caches_ms,
            step_ms / with_caches_ms.max(1e-12)
        );
    }
    Ok(out)
}
