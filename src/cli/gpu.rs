//! `mixc gpu-check --kernels DIR`: every program of a bundle on the GPU against
//! the f64 reference, at ragged sizes, with fresh random inputs and poisoned
//! outputs.

use super::GpuCheckArgs;
use mixc::runtime::cuda::{CudaRunner, GpuKernel};
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

pub fn check(args: &GpuCheckArgs) -> Result<String, mixc::Error> {
    let bundle = mixc::bundle::read_bundle(&args.kernels)?;
    let (target, programs) = (&bundle.target, &bundle.programs);
    // bf16 tensor-core products carry bf16 rounding (the bf16 tolerance).
    let tolerance = if bundle.matmul == "bf16" { 1e-2 } else { 1e-4 };
    let runner = CudaRunner::new().map_err(|e| mixc::Error::Usage(e.to_string()))?;
    let mut out = format!(
        "bundle {} ({target}, dot {}, tolerance {tolerance:.0e}): {} programs\n",
        args.kernels.display(),
        bundle.matmul,
        programs.len()
    );
    if let Some(spec) = &args.bench {
        return bench(&runner, programs, spec, args.seed, out);
    }
    let mut failures = 0;
    for p in programs {
        let kernels: Vec<GpuKernel> = p
            .kernels
            .iter()
            .map(|k| GpuKernel {
                name: k.name.clone(),
                ptx: k.code.clone(),
                threads: k.threads,
                shared_bytes: k.shared_bytes,
                scratch_bytes: k.scratch_bytes,
            })
            .collect();
        let fns = runner.load(&p.program, &kernels).map_err(|e| mixc::Error::Usage(format!("{}: {e}", p.mixer)))?;
        let cases: Vec<(usize, usize, bool)> = if p.mode == "decode" {
            vec![(1, 1, true), (3, 1, true), (2, 5, true)]
        } else {
            vec![(1, 1, false), (2, 37, true), (1, 130, false), (2, args.max_t.max(2) - 1, true)]
        };
        for (i, (b, t, with_state)) in cases.into_iter().enumerate() {
            let sizes =
                BTreeMap::from([("B", b), ("T", t), ("S", if with_state { 7 } else { 0 }), ("Sr_", 5), ("Ss_", 5)]);
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
            let rounded = host.iter().map(|(n, t)| (n.clone(), t.to_f64())).collect();
            let want = mixc::ir::interp::run(&p.graph, &rounded)
                .map_err(|e| mixc::Error::Usage(format!("{}: reference: {e}", p.mixer)))?;
            let got = runner
                .run(&p.program, &kernels, &fns, &host, 1)
                .map_err(|e| mixc::Error::Usage(format!("{} ({}): {e}", p.mixer, p.mode)))?;
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
                "{} {:<18} {:<7} B={b} T={t:<5} state={with_state:<5} max rel err {worst:.2e} ({worst_name}) {:.3} ms",
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

fn kernels_of(p: &mixc::bundle::BundledProgram) -> Vec<GpuKernel> {
    p.kernels
        .iter()
        .map(|k| GpuKernel {
            name: k.name.clone(),
            ptx: k.code.clone(),
            threads: k.threads,
            shared_bytes: k.shared_bytes,
            scratch_bytes: k.scratch_bytes,
        })
        .collect()
}

/// Random inputs for timing, made fast (f32 straight away, all cores): the
/// reference's generator draws f64 normals one by one, which at the anchor
/// sizes (10⁸ elements a tensor) takes longer than the runs it feeds. Values
/// are uniform with the ranges the kernels expect (log decays ≤ 0, gates in
/// (0, 1)); integer inputs (cache offsets) are 0.
fn bench_inputs(
    g: &mixc::ir::graph::Graph,
    sizes: &BTreeMap<&str, usize>,
    seed: u64,
    with_optional: bool,
) -> BTreeMap<String, HostTensor> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(4);
    let mut out = BTreeMap::new();
    for (k, (name, v, optional)) in g.inputs().into_iter().enumerate() {
        if optional && !with_optional {
            continue;
        }
        let shape: Vec<usize> =
            g.ty(v).shape.iter().map(|d| mixc::ir::mixers::inputs::dim_size(g, *d, sizes).unwrap_or(0)).collect();
        let n: usize = shape.iter().product();
        if !g.ty(v).dtype.is_float() {
            out.insert(name.to_string(), HostTensor { shape, data: mixc::runtime::Data::I32(vec![0; n]) });
            continue;
        }
        let map: fn(f32) -> f32 = match name {
            "g" => |u| -(1.0 + u) * 0.5 - 0.01,
            "beta" => |u| 0.5 + 0.45 * u,
            "f" => |u| 3.0 + u,
            _ => |u| 0.5 * u,
        };
        let mut data = vec![0f32; n];
        let per = n.div_ceil(threads).max(1);
        std::thread::scope(|sc| {
            for (c, part) in data.chunks_mut(per).enumerate() {
                sc.spawn(move || {
                    let mut x = seed ^ ((k as u64) << 40) ^ (c as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                    for e in part.iter_mut() {
                        // xorshift64*: uniform in [-1, 1).
                        x ^= x >> 12;
                        x ^= x << 25;
                        x ^= x >> 27;
                        let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
                        *e = map(r as f32 / (1u64 << 23) as f32 - 1.0);
                    }
                });
            }
        });
        out.insert(name.to_string(), HostTensor { shape, data: mixc::runtime::Data::F32(data) });
    }
    out
}

/// Times every program of a bundle at the given sizes.
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
        let kernels = kernels_of(p);
        let fns = runner.load(&p.program, &kernels).map_err(|e| mixc::Error::Usage(format!("{}: {e}", p.mixer)))?;
        let t = if p.mode == "decode" { 1 } else { sizes.get("T").copied().unwrap_or(1) };
        let mut sz = sizes.clone();
        sz.insert("T", t);
        let host = bench_inputs(&p.graph, &sz, seed, p.mode == "decode");
        let err = |e: mixc::runtime::cuda::CudaError| mixc::Error::Usage(format!("{} ({}): {e}", p.mixer, p.mode));
        runner.run(&p.program, &kernels, &fns, &host, 1).map_err(err)?;
        let mut times = Vec::new();
        for _ in 0..5 {
            times.push(runner.run(&p.program, &kernels, &fns, &host, 1).map_err(err)?.millis);
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
