//! `mixc gpu-check --kernels DIR`: every program of a bundle on the GPU against
//! the f64 reference, at ragged sizes, with fresh random inputs and poisoned
//! outputs.

use super::GpuCheckArgs;
use mixc::cuda::kernel_of;
use mixc::passes::Storage;
use mixc::runtime::cuda::{CudaRunner, GpuKernel, LoadedProgram};
use mixc::runtime::HostTensor;
use std::collections::BTreeMap;
use std::fmt::Write;

fn rel_err(a: &HostTensor, b: &mixc::ir::interp::Tensor) -> f64 {
    let a = a.to_f64();
    if a.shape != b.shape {
        return f64::INFINITY;
    }
    if a.data.iter().any(|x| x.is_nan()) {
        return f64::INFINITY;
    }
    // Max over the two leading axes' slices (batch and head, or batch and time).
    let n0 = a.shape.first().copied().unwrap_or(1).max(1);
    let inner = a.data.len() / n0;
    let mut worst: f64 = 0.0;
    for s in 0..n0 {
        let (x, y) = (&a.data[s * inner..(s + 1) * inner], &b.data[s * inner..(s + 1) * inner]);
        let num: f64 = x.iter().zip(y).map(|(p, q)| (p - q) * (p - q)).sum();
        let den: f64 = y.iter().map(|q| q * q).sum();
        worst = worst.max(if den > 0.0 { (num / den).sqrt() } else { num.sqrt() });
    }
    worst
}

/// The relative error a program may show against the f64 reference: bf16
/// tensor-core products and 16-bit storage (outputs rounded to bf16 or f16)
/// carry bf16-level rounding (the bf16 tolerance); otherwise f32's.
fn tolerance(matmul: &str, storage: Storage) -> f64 {
    if matmul == "bf16" || storage.is_narrow() {
        1e-2
    } else {
        1e-4
    }
}

pub fn check(args: &GpuCheckArgs) -> Result<String, mixc::Error> {
    let Some(kernels) = &args.kernels else {
        return super::gpu_model::check(&args.model, args.seed);
    };
    let bundle = mixc::bundle::read_bundle(kernels)?;
    let (target, programs) = (&bundle.target, &bundle.programs);
    let storage = programs.first().map(|p| p.schedule.storage).unwrap_or_default();
    let runner = CudaRunner::new().map_err(|e| mixc::Error::Usage(e.to_string()))?;
    let mut out = format!(
        "bundle {} ({target}, dot {}, storage {storage}, tolerance {:.0e}): {} programs\n",
        kernels.display(),
        bundle.matmul,
        tolerance(&bundle.matmul, storage),
        programs.len()
    );
    if let Some(spec) = &args.bench {
        return bench(&runner, programs, spec, args.seed, out);
    }
    let mut failures = 0;
    for p in programs {
        let lp = load(&runner, p)?;
        let tolerance = tolerance(&bundle.matmul, p.schedule.storage);
        // (B, T, with state, cache length S): decode steps also against a
        // cache of several GPU key splits (`Schedule::kv_split`, 512 keys).
        let cases: Vec<(usize, usize, bool, usize)> = if p.mode == "decode" {
            vec![(1, 1, true, 7), (3, 1, true, 7), (2, 5, true, 7), (2, 1, true, 1100)]
        } else {
            vec![(1, 1, false, 0), (2, 37, true, 7), (1, 130, false, 0), (2, args.max_t.max(2) - 1, true, 7)]
        };
        for (i, (b, t, with_state, cache)) in cases.into_iter().enumerate() {
            let sizes = BTreeMap::from([("B", b), ("T", t), ("S", cache), ("Sr_", 5), ("Ss_", 5)]);
            let seed = args.seed.wrapping_mul(1000).wrapping_add(i as u64);
            let ins = mixc::ir::mixers::random_inputs(&p.graph, &sizes, seed, with_state);
            let host: BTreeMap<String, HostTensor> = p
                .graph
                .inputs()
                .into_iter()
                .filter_map(|(n, v, _)| {
                    ins.get(n).map(|t| (n.to_string(), HostTensor::from_f64(t, !p.graph.ty(v).dtype.is_float())))
                })
                .collect();
            // The reference sees the inputs as the kernels' buffers hold them
            // (16-bit activations rounded).
            let host = mixc::runtime::layout::as_stored(&p.program, &host);
            let rounded = host.iter().map(|(n, t)| (n.clone(), t.to_f64())).collect();
            let want = mixc::ir::interp::run(&p.graph, &rounded)
                .map_err(|e| mixc::Error::Usage(format!("{}: reference: {e}", p.mixer)))?;
            let got =
                runner.run(&lp, &host, 1).map_err(|e| mixc::Error::Usage(format!("{} ({}): {e}", p.mixer, p.mode)))?;
            let mut worst = 0.0f64;
            let mut worst_name = String::new();
            for (name, w) in &want {
                let e = got.outputs.get(name).map(|o| rel_err(o, w)).unwrap_or(f64::INFINITY);
                if e > worst || worst_name.is_empty() {
                    worst = worst.max(e);
                    worst_name = name.clone();
                }
            }
            let ok = worst <= tolerance;
            failures += usize::from(!ok);
            let _ = writeln!(
                out,
                "{} {:<18} {:<7} B={b} T={t:<5} S={cache:<4} state={with_state:<5} max rel err {worst:.2e} ({worst_name}) {:.3} ms",
                if ok { "ok  " } else { "FAIL" },
                p.mixer,
                p.mode,
                got.millis
            );
        }
    }
    if failures > 0 {
        return Err(mixc::Error::Usage(format!("{out}{failures} check(s) failed")));
    }
    let _ = writeln!(out, "all checks passed");
    Ok(out)
}

/// Loads a bundled program's kernels.
fn load(runner: &CudaRunner, p: &mixc::bundle::BundledProgram) -> Result<LoadedProgram, mixc::Error> {
    let kernels: Vec<GpuKernel> = p.kernels.iter().map(kernel_of).collect();
    runner.load(&p.program, &kernels).map_err(|e| mixc::Error::Usage(format!("{}: {e}", p.mixer)))
}

/// Times every program of a bundle at the given sizes: inputs uploaded once
/// per program, then a warm-up and five runs on the same device buffers,
/// each timed by CUDA events around its launches.
fn bench(
    runner: &CudaRunner,
    programs: &[mixc::bundle::BundledProgram],
    spec: &str,
    seed: u64,
    mut out: String,
) -> Result<String, mixc::Error> {
    let mut owned: BTreeMap<String, usize> = BTreeMap::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || mixc::Error::Usage(format!("--bench: `{part}` is not DIM=N"));
        let (k, v) = part.split_once('=').ok_or_else(bad)?;
        owned.insert(k.trim().to_string(), v.trim().parse().map_err(|_| bad())?);
    }
    let sizes: BTreeMap<&str, usize> = owned.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    for p in programs {
        let lp = load(runner, p)?;
        let t = if p.mode == "decode" { 1 } else { sizes.get("T").copied().unwrap_or(1) };
        let mut sz = sizes.clone();
        sz.insert("T", t);
        let host = mixc::bench::inputs::fast_inputs(&p.graph, &sz, seed, p.mode == "decode");
        let err = |e: mixc::runtime::cuda::CudaError| mixc::Error::Usage(format!("{} ({}): {e}", p.mixer, p.mode));
        let prepared = runner.prepare(&lp, &host).map_err(err)?;
        drop(host);
        runner.launch(&lp, &prepared, 1).map_err(err)?;
        let mut times = Vec::new();
        for _ in 0..5 {
            times.push(runner.launch(&lp, &prepared, 1).map_err(err)?);
        }
        times.sort_by(f32::total_cmp);
        let _ = writeln!(
            out,
            "{:<18} {:<7} {spec:<18} T={t:<6} {:>10.3} ms (median of 5; schedule chunk {} {})",
            p.mixer,
            p.mode,
            times[2],
            p.schedule.chunk,
            if p.schedule.step {
                "step"
            } else if p.schedule.split {
                "split"
            } else {
                "fused"
            }
        );
    }
    Ok(out)
}
