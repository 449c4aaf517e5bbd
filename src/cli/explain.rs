//! `mixc explain FILE --target T --sizes B=..,T=..`: the cost model's table.

use super::ExplainArgs;
use mixc_passes::cost::{Bound, KernelCost};
use mixc_passes::device::{DeviceKind, DeviceProfile};
use mixc_passes::search::Candidate;
use mixc_passes::Schedule;
use std::collections::BTreeMap;
use std::fmt::Write;

pub fn run(args: &ExplainArgs) -> Result<String, mixc::Error> {
    let mut out = String::new();
    let dev = profile(args, &mut out)?;
    let free = size_point(args.sizes.as_deref(), &dev)?;
    let graphs = mixc::graphs_of_file(&args.file)?;
    let shown: Vec<String> = free.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut points: Vec<(String, f64, f64)> = Vec::new();
    let resources = mixc::pricing::kernel_resources_for(&dev, &args.matmul)?;
    for (i, g) in graphs.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let cands = mixc::pricing::candidates_at(&g.graph, &free, &dev, &*resources, args.storage)
            .map_err(|source| mixc::Error::Lower { mixer: g.name.clone(), source })?;
        let _ = writeln!(out, "# mixer {} on {} ({})", g.name, dev.name, shown.join(", "));
        table(&mut out, &cands, args.top);
        why(&mut out, &cands);
        if let Some(pick) = cands.first() {
            for k in &pick.cost.kernels {
                if k.flops() > 0.0 && k.time_s > 0.0 {
                    points.push((format!("{}/{}", g.name, k.name), k.intensity(), k.flops() / k.time_s));
                }
            }
        }
        let b = free.get("B").copied().unwrap_or(1);
        // The decode step's form as the runtime runs it on this device.
        let step = mixc_passes::Schedule::decode_for(dev.kind).form();
        match mixc_passes::search::decode_threshold_with(&g.graph, b, &dev, &*resources)
            .map_err(|source| mixc::Error::Lower { mixer: g.name.clone(), source })?
        {
            Some(t) => {
                let _ = writeln!(
                    out,
                    "decode threshold: from {t} new tokens the chunked form beats the decode step's form ({step}) \
                     (B={b})."
                );
            }
            None if g.graph.ops.iter().any(|o| matches!(o.kind, mixc::ir::OpKind::LinearRecurrence(_))) => {
                let _ = writeln!(
                    out,
                    "decode threshold: the decode step's form ({step}) wins up to 4096 new tokens (B={b})."
                );
            }
            None => {}
        }
    }
    if let Some(path) = &args.plot {
        roofline(path, &dev, &points)?;
        let _ = writeln!(out, "roofline written to {}", path.display());
    }
    Ok(out)
}

/// The device's roofline (log-log: FLOP/B against FLOP/s) with the picked
/// schedules' kernels as points.
fn roofline(path: &std::path::Path, dev: &DeviceProfile, points: &[(String, f64, f64)]) -> Result<(), mixc::Error> {
    use plotters::prelude::*;
    let err = |e: String| mixc::Error::Usage(format!("cannot draw {}: {e}", path.display()));
    let (x0, x1) = (0.01f64, 10_000.0f64);
    let y1 = dev.matmul_flops * 2.0;
    let y0 = (dev.dram_bw * x0 / 10.0).max(1e6);
    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("roofline: {}", dev.name), ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("arithmetic intensity (FLOP/byte of DRAM)")
        .y_desc("FLOP/s")
        .y_label_formatter(&|y| si(*y).trim().to_string())
        .x_label_formatter(&|x| format!("{x}"))
        .draw()
        .map_err(|e| err(e.to_string()))?;
    let xs: Vec<f64> = (0..=120).map(|i| x0 * (x1 / x0).powf(i as f64 / 120.0)).collect();
    for (peak, color, label) in [(dev.matmul_flops, &BLUE, "matrix unit"), (dev.vector_flops, &GREEN, "vector unit")] {
        chart
            .draw_series(LineSeries::new(xs.iter().map(|x| (*x, (dev.dram_bw * x).min(peak))), color))
            .map_err(|e| err(e.to_string()))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .draw_series(points.iter().map(|(_, x, y)| Circle::new((x.clamp(x0, x1), y.clamp(y0, y1)), 5, RED.filled())))
        .map_err(|e| err(e.to_string()))?
        .label("kernels of the pick")
        .legend(|(x, y)| Circle::new((x + 10, y), 5, RED.filled()));
    for (name, x, y) in points {
        chart
            .draw_series(std::iter::once(Text::new(
                name.clone(),
                (x.clamp(x0, x1), y.clamp(y0, y1)),
                ("sans-serif", 11),
            )))
            .map_err(|e| err(e.to_string()))?;
    }
    chart.configure_series_labels().border_style(BLACK).draw().map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// `--profile FILE` (or `builtin`), else the calibrated CPU profile for
/// `--target cpu` when `mixc calibrate` stored one, else the built-in one.
/// Only a calibrated profile (or a note about one that could not be used)
/// adds lines to the output, so the built-in tables stay as they were.
fn profile(args: &ExplainArgs, out: &mut String) -> Result<DeviceProfile, mixc::Error> {
    let chosen = mixc::calibrate::choose_profile(&args.target, args.profile.as_deref())?;
    if matches!(chosen.source, mixc::calibrate::ProfileSource::Calibrated(_)) {
        let _ = writeln!(out, "# profile: {}", chosen.describe());
    }
    if let Some(note) = &chosen.note {
        let _ = writeln!(out, "# note: {note}");
    }
    Ok(chosen.profile)
}

/// The size point of `--sizes DIM=N,...` over the device's default one
/// ([`mixc::pricing::default_point`]).
pub(super) fn size_point(sizes: Option<&str>, dev: &DeviceProfile) -> Result<BTreeMap<String, u64>, mixc::Error> {
    let mut free = mixc::pricing::default_point(dev);
    if let Some(text) = sizes {
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad = || mixc::Error::Usage(format!("--sizes: `{part}` is not DIM=N (e.g. B=8,T=8192)"));
            let (k, v) = part.split_once('=').ok_or_else(bad)?;
            let v: u64 = v.trim().parse().map_err(|_| bad())?;
            free.insert(k.trim().to_string(), v);
        }
    }
    Ok(free)
}

fn describe(s: &Schedule, has_many: bool) -> String {
    let mut d = s.form();
    if has_many {
        let _ = write!(d, ", q{} k{}", s.block_q, s.block_k);
    }
    if s.block_v > 0 {
        let _ = write!(d, ", v{}", s.block_v);
    }
    if !s.fuse_conv {
        d.push_str(", conv apart");
    }
    d
}

fn si(x: f64) -> String {
    if x >= 1e12 {
        format!("{:.2} T", x / 1e12)
    } else if x >= 1e9 {
        format!("{:.2} G", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.2} k", x / 1e3)
    } else {
        format!("{x:.0} ")
    }
}

fn ms(s: f64) -> String {
    format!("{:.4} ms", s * 1e3)
}

/// Whether the chunked candidates differ in attention blocks (the token-by-token
/// candidate carries the decode schedule's blocks, which say nothing here).
fn blocks_vary(cands: &[Candidate]) -> bool {
    let mut blocks = cands.iter().filter(|c| !c.schedule.step).map(|c| (c.schedule.block_q, c.schedule.block_k));
    let first = blocks.next();
    blocks.any(|b| Some(b) != first)
}

fn table(out: &mut String, cands: &[Candidate], top: usize) {
    let blocks_vary = blocks_vary(cands);
    let _ = writeln!(
        out,
        "{:>3}  {:<26} {:>8} {:>10} {:>10} {:>9} {:>7} {:>12}",
        "#", "schedule", "kernels", "FLOP", "bytes", "FLOP/B", "bound", "predicted"
    );
    for (i, c) in cands.iter().take(top).enumerate() {
        let flops: f64 = c.cost.kernels.iter().map(KernelCost::flops).sum();
        let bytes: f64 = c.cost.kernels.iter().map(KernelCost::bytes).sum();
        let slowest = c.cost.kernels.iter().max_by(|a, b| a.time_s.total_cmp(&b.time_s));
        let bound = match (&c.rejected, slowest) {
            (Some(_), _) => "no fit",
            (None, Some(k)) => k.bound().name(),
            _ => "-",
        };
        let _ = writeln!(
            out,
            "{:>3}  {:<26} {:>8} {:>10} {:>10} {:>9.1} {:>7} {:>12}",
            i + 1,
            describe(&c.schedule, blocks_vary),
            c.cost.kernels.len(),
            si(flops),
            format!("{}B", si(bytes)),
            flops / bytes.max(1.0),
            bound,
            ms(c.cost.time_s)
        );
        for k in &c.cost.kernels {
            let _ = writeln!(
                out,
                "       - {:<30} programs {:>7}  {:>10} {:>10}  {}",
                k.name,
                k.programs,
                si(k.flops()),
                format!("{}B", si(k.bytes())),
                ms(k.time_s)
            );
        }
    }
    if cands.len() > top {
        let _ = writeln!(out, "     ({} more candidates not shown)", cands.len() - top);
    }
}

fn why(out: &mut String, cands: &[Candidate]) {
    let Some(pick) = cands.first() else { return };
    let blocks_vary = blocks_vary(cands);
    let slowest = pick.cost.kernels.iter().max_by(|a, b| a.time_s.total_cmp(&b.time_s));
    let bound = match slowest {
        Some(k) => match k.bound() {
            Bound::Latency => format!(
                "latency-bound ({:.0} statements, {:.0} global loads per program)",
                k.ops_per_program, k.loads_per_program
            ),
            b => format!("{}-bound ({:.1} FLOP/B)", b.name(), k.intensity()),
        },
        None => "empty".into(),
    };
    let runner = cands.get(1).filter(|c| c.rejected.is_none());
    let margin = match runner {
        Some(r) => format!(
            ", {:.2}× faster than the next ({})",
            r.cost.time_s / pick.cost.time_s.max(1e-15),
            describe(&r.schedule, blocks_vary)
        ),
        None => String::new(),
    };
    let _ = writeln!(
        out,
        "pick: {} — predicted {}{margin}; its slowest kernel is {bound}.",
        describe(&pick.schedule, blocks_vary),
        ms(pick.cost.time_s)
    );
}

/// `mixc devices`: the built-in profiles.
pub fn devices() -> String {
    let mut out = format!(
        "{:<8} {:<5} {:>16} {:>16} {:>12} {:>12} {:>6} {:>10}\n",
        "target", "kind", "matmul", "vector", "DRAM", "L2", "units", "local mem"
    );
    let cpu = mixc::calibrate::cpu_profile();
    for t in ["sm_80", "sm_90", "h200", "cpu"] {
        // The CPU row is this machine's calibrated profile when there is one.
        let profile = if t == "cpu" { Some(cpu.profile.clone()) } else { DeviceProfile::builtin(t) };
        if let Some(d) = profile {
            let _ = writeln!(
                out,
                "{:<8} {:<5} {:>16} {:>16} {:>12} {:>12} {:>6} {:>6} KiB",
                t,
                match d.kind {
                    DeviceKind::Gpu => "gpu",
                    DeviceKind::Cpu => "cpu",
                },
                format!("{}FLOP/s", si(d.matmul_flops)),
                format!("{}FLOP/s", si(d.vector_flops)),
                format!("{}B/s", si(d.dram_bw)),
                format!("{}B/s", si(d.l2_bw)),
                d.units,
                d.local_mem / 1024
            );
        }
    }
    out.push_str("Sustained matmul and vector peaks, bandwidths; `mixc explain --profile FILE.toml` loads another.\n");
    let _ = writeln!(out, "cpu: {}", cpu.describe());
    if let Some(note) = &cpu.note {
        let _ = writeln!(out, "note: {note}");
    }
    out
}
