//! `mixc init-weights` and `mixc run`.

use super::{ExecTarget, InitWeightsArgs, RunArgs};
use mixc::jit::Target;
use mixc::runtime::st;
use mixc::Model;
use std::fmt::Write;
use std::time::Instant;

pub fn init_weights(args: &InitWeightsArgs) -> Result<String, mixc::Error> {
    let w = Model::init_weights(&args.file, args.seed)?;
    st::save(&args.output, &w)?;
    let n: usize = w.values().map(|t| t.numel()).sum();
    Ok(format!("wrote {} tensors ({n} parameters) to {}\n", w.len(), args.output.display()))
}

fn pick(logits: &[f32], temperature: f32, rng: &mut mixc::ir::mixers::inputs::SplitMix) -> u32 {
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

pub fn run(args: &RunArgs) -> Result<String, mixc::Error> {
    let start = Instant::now();
    let ids: Vec<u32> = args
        .prompt_ids
        .split_whitespace()
        .map(|s| s.parse().map_err(|_| mixc::Error::Usage(format!("--prompt-ids: `{s}` is not a token id"))))
        .collect::<Result<_, _>>()?;
    if ids.is_empty() {
        return Err(mixc::Error::Usage("--prompt-ids: the prompt is empty".into()));
    }
    let target = match args.target {
        ExecTarget::Cpu => Target::Cpu,
        ExecTarget::Reference => Target::Reference,
    };
    let weights = st::load(&args.weights)?;
    let mut model = Model::load(&args.file, weights, target)?;
    let vocab = model.vocab();
    let mut rng = mixc::ir::mixers::inputs::SplitMix::new(args.seed);
    let t0 = Instant::now();
    let logits = model.forward(&ids, false)?;
    let prefill_s = t0.elapsed().as_secs_f64();
    let first_token_s = start.elapsed().as_secs_f64();
    let mut out = String::new();
    let mut memory = format!("cache bytes per layer after prefill: {:?}\n", model.cache_bytes());
    let last = &logits[(ids.len() - 1) * vocab..ids.len() * vocab];
    let mut next = pick(last, args.temperature, &mut rng);
    let mut generated = vec![next];
    let t1 = Instant::now();
    for _ in 1..args.max_new_tokens {
        let l = model.forward(&[next], true)?;
        next = pick(&l, args.temperature, &mut rng);
        generated.push(next);
    }
    let decode_s = t1.elapsed().as_secs_f64();
    let _ = writeln!(memory, "cache bytes per layer after {} tokens: {:?}", generated.len(), model.cache_bytes());
    let list: Vec<String> = generated.iter().map(|x| x.to_string()).collect();
    let _ = writeln!(out, "{}", list.join(" "));
    let _ = writeln!(
        out,
        "prefill: {} tokens in {:.3} s ({:.1} tokens/s); first token after {:.3} s",
        ids.len(),
        prefill_s,
        ids.len() as f64 / prefill_s.max(1e-9),
        first_token_s
    );
    if generated.len() > 1 {
        let steps = generated.len() - 1;
        let _ = writeln!(
            out,
            "decode: {steps} tokens in {:.3} s ({:.2} ms/token)",
            decode_s,
            1e3 * decode_s / steps as f64
        );
    }
    if args.report_memory {
        out.push_str(&memory);
    }
    Ok(out)
}
