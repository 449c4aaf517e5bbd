//! `mixc init-weights` and `mixc run`.

use super::{ExecTarget, InitWeightsArgs};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mixc::ir::mixers::inputs::SplitMix;
use mixc::runner::{tokenizer::Tokenizer, Cache, WeightsDtype};
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
    #[arg(long, value_name = "W.safetensors")]
    pub weights: PathBuf,
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
    if batch.is_empty() {
        return Err(Error::Usage(
            "no prompt: expected --prompt-ids \"1 2 3\" (or --prompt TEXT with --tokenizer)".into(),
        ));
    }
    let target = super::exec::jit_target(args.target)?;
    let read_start = Instant::now();
    let weights = st::load(&args.weights)?;
    let read_s = read_start.elapsed().as_secs_f64();
    let load_start = Instant::now();
    let on_gpu = match args.gpu_weights {
        GpuWeights::Bf16 => WeightsDtype::Bf16,
        GpuWeights::F32 => WeightsDtype::F32,
    };
    let model = Model::load_with(&args.file, weights, target, on_gpu)?;
    let load_s = load_start.elapsed().as_secs_f64();
    let (vocab, layers) = (model.vocab(), model.layers());
    let mut rng = SplitMix::new(args.seed);
    let mut caches: Vec<Cache> = batch.iter().map(|_| model.new_cache()).collect();
    let prompt_tokens: usize = batch.iter().map(Vec::len).sum();
    let steps = batch.len() * args.max_new_tokens.saturating_sub(1);
    let mut progress = Progress::new((prompt_tokens + steps) as u64);

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
            Some(all) => model.prefill_slot(all, b, ids)?,
            None => model.forward_in(cache, ids, false)?,
        };
        next.push(pick(&logits[(ids.len() - 1) * vocab..ids.len() * vocab], args.temperature, &mut rng));
        progress.step("prefill", ids.len() as u64);
    }
    let prefill_s = t0.elapsed().as_secs_f64();
    let first_token_s = start.elapsed().as_secs_f64();
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
    drop(progress);
    report(&mut memory, &format!("after {} tokens", generated[0].len()), &caches, &side_by_side);

    let mut out = String::new();
    for g in &generated {
        let list: Vec<String> = g.iter().map(|x| x.to_string()).collect();
        let _ = writeln!(out, "{}", list.join(" "));
    }
    if let Some(tok) = &tokenizer {
        for g in &generated {
            let _ = writeln!(out, "text: {:?}", tok.decode(g)?);
        }
    }
    let seqs = match (&side_by_side, batch.len()) {
        (_, 1) => String::new(),
        (Some(_), n) => format!(" in {n} sequences side by side"),
        (None, n) => format!(" in {n} sequences"),
    };
    let (compile_s, place_s) = model.load_seconds();
    let _ = writeln!(
        out,
        "startup: weights read in {read_s:.3} s, mixers compiled and weights placed in {load_s:.3} s \
         ({compile_s:.3} s compiling, {place_s:.3} s placing){}",
        match model.device_weight_bytes() {
            0 => String::new(),
            n => format!(" ({:.2} GB on the GPU)", n as f64 / 1e9),
        }
    );
    let _ = writeln!(
        out,
        "prefill: {prompt_tokens} tokens{seqs} in {:.3} s ({:.1} tokens/s); first token after {:.3} s",
        prefill_s,
        prompt_tokens as f64 / prefill_s.max(1e-9),
        first_token_s
    );
    if steps > 0 {
        let per_step = if batch.len() > 1 {
            format!(", {:.2} ms per step of the batch", 1e3 * decode_s / (args.max_new_tokens - 1) as f64)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "decode: {steps} tokens{seqs} in {:.3} s ({:.2} ms/token{per_step})",
            decode_s,
            1e3 * decode_s / steps as f64
        );
    }
    if args.report_memory {
        out.push_str(&memory);
    }
    Ok(out)
}
