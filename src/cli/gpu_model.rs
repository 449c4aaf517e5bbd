//! `mixc gpu-check --model FILE`: whole models on the GPU against the same
//! model on the CPU (random weights), prefill then decode steps, row by row
//! of the logits; and on the GPU, prefill + decode against one prefill of
//! the whole sequence.

use mixc::ir::mixers::inputs::SplitMix;
use mixc::jit::Target;
use mixc::runner::{Logits, WeightsDtype};
use mixc::Model;
use std::fmt::Write;
use std::path::PathBuf;

/// Tokens of the prompt, then decode steps.
const PROMPT: usize = 13;
const STEPS: usize = 4;

/// Largest row-wise relative error `‖a − b‖ / ‖b‖` over rows of `n`.
fn worst_row(a: &[f32], b: &[f32], n: usize) -> f64 {
    if a.len() != b.len() || a.iter().any(|x| !x.is_finite()) {
        return f64::INFINITY;
    }
    a.chunks(n.max(1))
        .zip(b.chunks(n.max(1)))
        .map(|(x, y)| {
            let num: f64 = x.iter().zip(y).map(|(p, q)| ((p - q) as f64).powi(2)).sum();
            let den: f64 = y.iter().map(|q| (*q as f64).powi(2)).sum();
            (num / den.max(1e-30)).sqrt()
        })
        .fold(0.0, f64::max)
}

/// Logits of a prefill of `ids[..prompt]` then one decode step per remaining id.
fn prefill_then_decode(model: &mut Model, ids: &[u32], prompt: usize) -> Result<Vec<f32>, mixc::Error> {
    model.reset();
    let mut out = model.prefill(&ids[..prompt])?;
    for id in &ids[prompt..] {
        out.extend(model.decode_step(*id)?);
    }
    Ok(out)
}

/// `n` sequences of different lengths decoded side by side against each
/// alone (`None` where the model cannot batch them): the largest row error.
/// (3 rows run through the GEMV, 7 through the tensor-core product.)
fn side_by_side(model: &Model, ids: &[u32], n: usize) -> Result<Option<f64>, mixc::Error> {
    if model.batch_unsupported().is_some() {
        return Ok(None);
    }
    let vocab = model.vocab();
    let prompts: Vec<&[u32]> = (0..n).map(|b| &ids[b % 4..(b % 4 + 2 + (5 * b) % 9).min(PROMPT)]).collect();
    let mut all = model.new_batch_cache(prompts.len())?;
    let mut alone: Vec<_> = prompts.iter().map(|_| model.new_cache()).collect();
    let mut worst: f64 = 0.0;
    for (b, p) in prompts.iter().enumerate() {
        let x = model.prefill_slot(&mut all, b, p, Logits::All)?;
        let y = model.forward_in(&mut alone[b], p, false)?;
        worst = worst.max(worst_row(&x, &y, vocab));
    }
    for step in 0..STEPS {
        let next: Vec<u32> = (0..prompts.len()).map(|b| ids[(PROMPT + step + b) % ids.len()]).collect();
        let x = model.decode_batch(&mut all, &next)?;
        for (b, id) in next.iter().enumerate() {
            let y = model.forward_in(&mut alone[b], &[*id], true)?;
            worst = worst.max(worst_row(&x[b * vocab..(b + 1) * vocab], &y, vocab));
        }
    }
    Ok(Some(worst))
}

pub fn check(files: &[PathBuf], seed: u64) -> Result<String, mixc::Error> {
    let (mut out, gemv_ok) = mixc::runner::check_gemv()?;
    let mut failures = usize::from(!gemv_ok);
    let mut checked = 0;
    for file in files {
        if mixc::ir::model::load_model(file)?.model.is_none() {
            let _ = writeln!(out, "{}: mixers only (no [model] section), skipped", file.display());
            continue;
        }
        checked += 1;
        let weights = Model::init_weights(file, seed)?;
        let mut cpu = Model::load(file, weights.clone(), Target::Cpu)?;
        let vocab = cpu.vocab();
        let mut rng = SplitMix::new(seed ^ 0x5eed);
        let ids: Vec<u32> = (0..PROMPT + STEPS).map(|_| (rng.uniform() * vocab as f64) as u32 % vocab as u32).collect();
        let want = prefill_then_decode(&mut cpu, &ids, PROMPT)?;
        // How far bf16 rounding (2⁻⁹) at the mixers alone moves this model's
        // logits: random models can be ill-conditioned (a draw of a small
        // RetNet's moved 0.34, GLA-1.3B's 24 random layers 0.43). bf16 may
        // differ by 4× that, and by at least 3e-2; f32 by what the same
        // amplification makes of f32 sums' reordering (~2e-3 of the bf16
        // effect), and by at least 1e-4.
        let mut rounded = Model::load_cpu_bf16_mixers(file, weights.clone())?;
        let sensitivity = worst_row(&prefill_then_decode(&mut rounded, &ids, PROMPT)?, &want, vocab);
        let bf16_tolerance = (4.0 * sensitivity).max(3e-2);
        let f32_tolerance = (8e-3 * sensitivity).max(1e-4);
        let _ = write!(out, "{}: bf16 mixers on the CPU {sensitivity:.1e};", file.display());
        // With int8 KV caches a decode step reads rounded keys and values, a
        // prefill exact ones: how far that alone moves the CPU's logits
        // bounds how far the card's may be from the CPU's (a code that rounds
        // the other way on the card moves a little of it) and, twice over,
        // how far its decode may be from its own prefill.
        let quantized = match cpu.kv_int8_group() {
            Some(group) => {
                cpu.reset();
                let whole = cpu.prefill(&ids)?;
                let q = worst_row(&want, &whole, vocab);
                let _ = write!(out, " int8 KV (groups of {group}) on the CPU {q:.1e};");
                q
            }
            None => 0.0,
        };
        for (dtype, tolerance) in [(WeightsDtype::F32, f32_tolerance), (WeightsDtype::Bf16, bf16_tolerance)] {
            let tolerance = tolerance.max(quantized);
            let mut gpu = Model::load_with(file, weights.clone(), Target::Cuda, dtype)?;
            let got = prefill_then_decode(&mut gpu, &ids, PROMPT)?;
            let err = worst_row(&got, &want, vocab);
            gpu.reset();
            let whole = gpu.prefill(&ids)?;
            let split = worst_row(&got, &whole, vocab);
            let side = match (side_by_side(&gpu, &ids, 3)?, side_by_side(&gpu, &ids, 7)?) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
            let ok = err <= tolerance && split <= tolerance.max(2.0 * quantized) && side.is_none_or(|e| e <= tolerance);
            failures += usize::from(!ok);
            let side = side.map_or(String::new(), |e| format!(", {e:.1e} side by side (3 and 7) vs alone"));
            let _ = write!(
                out,
                " {dtype:?} weights: {err:.1e} vs CPU, {split:.1e} vs one prefill{side} (tolerance {tolerance:.1e}) {};",
                if ok { "ok" } else { "FAIL" }
            );
        }
        out.push('\n');
    }
    if failures > 0 {
        return Err(mixc::Error::Usage(format!("{out}{failures} model checks failed")));
    }
    let _ = writeln!(out, "all {checked} models pass");
    Ok(out)
}
