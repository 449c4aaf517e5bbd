//! `mixc calibrate`: measure this CPU's ceilings and store them as its profile.

use clap::Args;
use mixc::calibrate::{self, CalibrateOptions};
use std::fmt::Write;
use std::path::PathBuf;

pub const HELP: &str = "\
Measures, on every core at once: the f32 FMA peak with 128-bit vectors (the width the CPU \
backend emits) and with the widest vectors the CPU has (AVX2/FMA or AVX-512, detected at \
run time); DRAM bandwidth (copy and triad over arrays far larger than the last-level cache; \
bytes read + written, as the anchors count a copy); and the same copy within L2. Each figure \
is the median of 5 timed repetitions after a warm-up. The profile is written as TOML to \
$MIXC_HOME/cpu-profile.toml (else $XDG_CACHE_HOME/mixc/, else ~/.cache/mixc/), where \
`mixc explain --target cpu`, `mixc devices` and `mixc bench` find it.

Examples:
  mixc calibrate
  mixc calibrate --seconds 10 -o my-cpu.toml";

#[derive(Debug, Args)]
pub struct CalibrateArgs {
    /// About how long to measure, all figures together.
    #[arg(long, value_name = "S", default_value_t = 4.0)]
    pub seconds: f64,
    /// Write the profile here instead of the cache folder.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Threads to measure with (default: every core this process may use).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

pub fn run(args: &CalibrateArgs) -> Result<String, mixc::Error> {
    let path = match &args.output {
        Some(p) => p.clone(),
        None => calibrate::profile_path().ok_or_else(|| {
            mixc::Error::Usage(
                "no cache folder to store the profile in: set MIXC_HOME (or XDG_CACHE_HOME or HOME), or give -o FILE"
                    .into(),
            )
        })?,
    };
    let c = calibrate::measure(CalibrateOptions { seconds: args.seconds, threads: args.threads })?;
    c.save(&path)?;
    let g = |x: f64| x / 1e9;
    let mut out = String::new();
    let _ = writeln!(out, "threads          {}", c.threads);
    let _ = writeln!(
        out,
        "f32 FMA peak     {:>8.1} GFLOP/s  128-bit vectors (the CPU backend's width; best repetition {:.1})",
        g(c.simd128_flops),
        g(c.best.simd128_flops)
    );
    let _ = writeln!(
        out,
        "                 {:>8.1} GFLOP/s  {} ({:.2}× the 128-bit figure; best repetition {:.1})",
        g(c.widest_flops),
        c.widest_isa,
        c.widest_flops / c.simd128_flops.max(1.0),
        g(c.best.widest_flops)
    );
    let _ = writeln!(
        out,
        "DRAM bandwidth   {:>8.1} GB/s     copy over {} MiB arrays (read + write bytes; best repetition {:.1})",
        g(c.copy_bw),
        c.array_bytes >> 20,
        g(c.best.copy_bw)
    );
    let _ = writeln!(out, "                 {:>8.1} GB/s     triad a = b + s·c (two reads + one write)", g(c.triad_bw));
    let _ = writeln!(
        out,
        "cache bandwidth  {:>8.1} GB/s     copy within L2 ({} KiB per core; last level {} MiB)",
        g(c.cache_bw),
        c.l2_bytes >> 10,
        c.llc_bytes >> 20
    );
    let _ = writeln!(
        out,
        "measured in {:.1} s; each figure the median of 5 repetitions after a warm-up (the profile keeps the medians)",
        c.elapsed_s
    );
    let _ = writeln!(out, "profile `{}` written to {}", calibrate::CALIBRATED_NAME, path.display());
    Ok(out)
}
