//! `mixc bench FILE --target cpu|cuda`: time each mixer's prefill and decode
//! steps on this CPU or a CUDA GPU, or (`--sweep`) every schedule candidate
//! against the cost model's prediction. Rows are printed as they are
//! measured; what differs per target (engine, profile, header, ceilings) is
//! set up in [`setup`].

mod setup;

use clap::{Args, ValueEnum};
use mixc::bench::{self, BenchMixer, Bencher, Failure, Phase, Row, Sizes, Sweep};
use mixc::calibrate::ChosenProfile;
use setup::{Rates, Setup};
use std::io::Write;
use std::path::PathBuf;

pub const HELP: &str = "\
Without --sizes: prefill at B=1, T = 512, 2048 and 8192, and decode steps (one new token, the \
carried state or a KV cache of 2048 tokens, random) at B = 1 and 16; H and the head dims as \
in the file. --sizes B=..,H=..,T=.. (repeatable) gives the points instead: prefill at B, T; \
a decode step at B with a cache of T (or S) tokens. H rebuilds the mixer with that many heads.

Each row: the schedule (the search's pick on the profile unless the mixer table fixes a \
chunk or `--tune` cached a winner), the JIT compile time of its kernels (cold: the first \
compile in this process), `total` (one runtime call: buffers set up, inputs copied in, \
launches, outputs out) and `kernels` (the launches alone, timed inside that call), each the \
median of --runs runs after warm-up (at least 20 runs where one takes under 10 ms). GFLOP/s \
and GB/s divide passes::cost's count of the program (matrix + vector FLOPs; DRAM bytes \
loaded + stored) by the kernel time, and the % columns compare them with the profile's \
ceilings: the calibrated ones (`mixc calibrate`) when present, else the built-in CPU profile.

--sweep measures every feasible candidate of the schedule search instead (prefill only, \
cheapest predicted first, at most --max-candidates), prints predicted against measured \
kernel time, marks the model's pick and the fastest, and the pick's rank and gap. --tune \
(with --sweep) stores the fastest in <cache dir>/tuned.toml, which later runs use.

--target cuda times on the GPU (a build with `--features cuda`): kernels compiled here \
through LLVM for the card's compute capability, or taken from a kernel bundle with \
--kernels DIR (`mixc compile FILE --target sm_90 -o DIR`; its schedules, no --sweep). \
Inputs are uploaded once per row; `kernels` is the time between CUDA events around the \
launches, `total` the same launches as the host sees them. Without --sizes: prefill at \
B=8, T = 2048 and 8192, decode steps at B = 64 and 256 (H = 16 where the head count is \
free); --sweep defaults to B=8, T=8192. Ceilings and the schedule search use the built-in \
profile of the card (H200, else H100; `mixc devices`), TFLOP/s against tensor-core \
matmul, GB/s against HBM.

Examples:
  mixc bench models/bench/anchors.toml --target cpu --mixer gla,attention
  mixc bench models/bench/anchors.toml --target cuda --mixer gla --sizes B=8,T=8192
  mixc bench models/bench/anchors.toml --target cuda --kernels bundle/ --mode prefill
  mixc bench models/gla.toml --sizes B=1,H=2,T=64 --runs 1
  mixc bench models/bench/anchors.toml --mixer gla --sweep --sizes B=1,H=4,T=1024";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchTarget {
    /// Native code for this CPU (Cranelift), programs spread over the cores.
    Cpu,
    /// The CUDA GPU of this machine (a build with `--features cuda`).
    Cuda,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchMode {
    Prefill,
    Decode,
    Both,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A model file or mixer tables (.toml) or a mixer graph (.mix).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Where to run: cpu, or cuda (the GPU; a build with `--features cuda`).
    #[arg(long, value_enum, default_value_t = BenchTarget::Cpu)]
    pub target: BenchTarget,
    /// With --target cuda: take the kernels from this bundle (`mixc compile FILE
    /// --target sm_90 -o DIR`) instead of compiling them (needed without LLVM).
    #[arg(long, value_name = "DIR")]
    pub kernels: Option<PathBuf>,
    /// A size point, e.g. `B=1,H=16,T=512`; repeat for several.
    #[arg(long, value_name = "DIM=N,...")]
    pub sizes: Vec<String>,
    #[arg(long, value_enum, default_value_t = BenchMode::Both)]
    pub mode: BenchMode,
    /// Timed runs per row (the median is reported).
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub runs: usize,
    /// Threads the kernels run on (--target cpu; default: every core; sets RAYON_NUM_THREADS).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Only these mixers (comma-separated names).
    #[arg(long, value_name = "NAME,...", value_delimiter = ',')]
    pub mixer: Vec<String>,
    /// A device profile in TOML for the ceilings and the search, or `builtin`
    /// (default: the calibrated CPU profile if present; on a GPU the card's built-in one).
    #[arg(long, value_name = "FILE|builtin")]
    pub profile: Option<PathBuf>,
    /// Measure every feasible schedule candidate against its predicted time.
    #[arg(long)]
    pub sweep: bool,
    /// At most this many candidates per mixer and size point (cheapest predicted first).
    #[arg(long, value_name = "N", default_value_t = 24)]
    pub max_candidates: usize,
    /// With --sweep: cache the fastest candidate on disk for later runs.
    #[arg(long, requires = "sweep")]
    pub tune: bool,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The dtype kernels store activations in: f32 (default), bf16 or f16 (KV
    /// caches too; states stay f32; arithmetic is f32). A bundle's (--kernels) is fixed.
    #[arg(long, value_name = "DTYPE")]
    pub storage: Option<mixc::passes::Storage>,
    /// With --target cuda: how kernels compiled here compute `dot` (tf32x3, the
    /// default: f32 accuracy; bf16: the anchors' precision; simt). The search
    /// prices the mode (a bf16 product is a sixth of tf32x3's tensor-core
    /// work). A bundle's (--kernels) is fixed.
    #[arg(long, value_name = "MODE")]
    pub matmul: Option<String>,
}

/// Lines go to stdout as they are made, so long runs show progress; a
/// reader that went away ends the run quietly.
struct Out {
    gone: bool,
}

impl Out {
    fn line(&mut self, s: &str) {
        if self.gone {
            return;
        }
        let mut o = std::io::stdout().lock();
        if writeln!(o, "{s}").and_then(|()| o.flush()).is_err() {
            self.gone = true;
        }
    }
}

pub fn run(args: &BenchArgs) -> Result<String, mixc::Error> {
    let usage = |m: String| mixc::Error::Usage(m);
    if args.runs == 0 {
        return Err(usage("--runs must be at least 1".into()));
    }
    if args.max_candidates == 0 {
        return Err(usage("--max-candidates must be at least 1".into()));
    }
    if args.kernels.is_some() && args.target != BenchTarget::Cuda {
        return Err(usage("--kernels DIR runs a kernel bundle on the GPU: add --target cuda".into()));
    }
    if args.kernels.is_some() && args.storage.is_some() {
        return Err(usage(
            "--storage chooses how kernels are compiled, but a kernel bundle's are fixed: rebuild the bundle with it \
             (`mixc compile FILE --target sm_90 --storage bf16 -o DIR`)"
                .into(),
        ));
    }
    let points: Vec<Sizes> = args.sizes.iter().map(|s| bench::parse_sizes(s)).collect::<Result<_, _>>()?;
    let mut mixers = bench::load_mixers(&args.file)?;
    if !args.mixer.is_empty() {
        let names: Vec<String> = mixers.iter().map(|m| m.name().to_string()).collect();
        if let Some(bad) = args.mixer.iter().find(|w| !names.contains(w)) {
            return Err(usage(format!(
                "{}: no mixer `{bad}` (the file has: {})",
                args.file.display(),
                names.join(", ")
            )));
        }
        mixers.retain(|m| args.mixer.iter().any(|w| w == m.name()));
    }
    for p in &points {
        bench::check_sizes(&mixers, p)?;
    }
    let Setup { chosen, engine, engine_matmul, gpu, header, rates } = match args.target {
        BenchTarget::Cpu => setup::cpu(args)?,
        BenchTarget::Cuda => setup::cuda(args)?,
    };
    let mut out = Out { gone: false };
    for line in &header {
        out.line(line);
    }
    let matmul = engine_matmul.unwrap_or_else(|| mixc::pricing::DEFAULT_MATMUL.into());
    let mut b = Bencher::with_engine(&chosen.profile, args.runs, args.seed, engine);
    b.storage = args.storage.unwrap_or_default();
    b.matmul = matmul;
    if args.sweep {
        sweeps(&mut out, &mut b, args, &mixers, points, &chosen, gpu)?;
    } else {
        rows(&mut out, &mut b, args, &mixers, &points, &rates, gpu);
    }
    Ok(String::new())
}

/// `--sweep`: one table per mixer and size point (default: T = 2048 on the
/// CPU, B = 8 and T = 8192 on a GPU).
fn sweeps(
    out: &mut Out,
    b: &mut Bencher,
    args: &BenchArgs,
    mixers: &[BenchMixer],
    points: Vec<Sizes>,
    chosen: &ChosenProfile,
    gpu: bool,
) -> Result<(), mixc::Error> {
    for m in mixers {
        let at = if points.is_empty() { vec![bench::default_sweep_point(gpu, &m.named.graph)] } else { points.clone() };
        for p in &at {
            if out.gone {
                return Ok(());
            }
            let s = match b.sweep(m, p, args.max_candidates) {
                Ok(s) => s,
                Err(f) => {
                    failure(out, &f);
                    continue;
                }
            };
            sweep_table(out, &s, &m.named.graph);
            if args.tune {
                match bench::save_tuned(&s, &chosen.profile)? {
                    Some((path, e)) => out.line(&format!(
                        "tuned: {} cached for {} in {}",
                        bench::describe(&e.schedule, &m.named.graph),
                        e.size_class,
                        path.display()
                    )),
                    None => out.line("tuned: no candidate ran; nothing cached"),
                }
            }
            out.line("");
        }
    }
    Ok(())
}

/// Prefill and decode rows at the given points (or the defaults).
fn rows(
    out: &mut Out,
    b: &mut Bencher,
    args: &BenchArgs,
    mixers: &[BenchMixer],
    points: &[Sizes],
    rates: &Rates,
    gpu: bool,
) {
    let mut title = format!(
        "{:<16} {:<7} {:>3} {:>4} {:>6} {:>6}  {:<22} {:>10} {:>10} {:>10} {:>9}",
        "mixer", "phase", "B", "H", "T", "S", "schedule", "compile", "total ms", "kernel ms", rates.flop_name
    );
    for (name, _) in &rates.flop_ceilings {
        title.push_str(&format!(" {name:>7}"));
    }
    title.push_str(&format!(" {:>7} {:>6}", "GB/s", rates.mem_name));
    out.line(&title);
    let phases: &[Phase] = match args.mode {
        BenchMode::Prefill => &[Phase::Prefill],
        BenchMode::Decode => &[Phase::Decode],
        BenchMode::Both => &[Phase::Prefill, Phase::Decode],
    };
    for m in mixers {
        for phase in phases {
            let at: Vec<Sizes> =
                if !points.is_empty() { points.to_vec() } else { bench::default_points(gpu, *phase, &m.named.graph) };
            for p in &at {
                if out.gone {
                    return;
                }
                match b.row(m, *phase, p) {
                    Ok(r) => row(out, &r, rates, &m.named.graph),
                    Err(f) => failure(out, &f),
                }
            }
        }
    }
}

fn size(sizes: &Sizes, k: &str) -> String {
    sizes.get(k).map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

fn row(out: &mut Out, r: &Row, rates: &Rates, g: &mixc::ir::Graph) {
    let k = r.timing.kernel_s();
    let (flops, bytes) = bench::work(&r.cost);
    let (fl, gb) = (flops / k / rates.flop_unit, bytes / k / 1e9);
    let mut sched = bench::describe(&r.schedule, g);
    if matches!(r.schedule_from, "tuned" | "table" | "bundle") {
        sched.push_str(&format!(" ({})", r.schedule_from));
    }
    let compile = r.compile_s.map(|s| format!("{:.1} ms", s * 1e3)).unwrap_or_else(|| "cached".into());
    let mut line = format!(
        "{:<16} {:<7} {:>3} {:>4} {:>6} {:>6}  {:<22} {:>10} {:>10.3} {:>10.3} {:>9.2}",
        r.mixer,
        match r.phase {
            Phase::Prefill => "prefill",
            Phase::Decode => "decode",
        },
        size(&r.sizes, "B"),
        size(&r.sizes, "H"),
        size(&r.sizes, "T"),
        size(&r.sizes, "S"),
        sched,
        compile,
        r.timing.total_s * 1e3,
        k * 1e3,
        fl,
    );
    for (_, ceiling) in &rates.flop_ceilings {
        let share = ceiling.map(|c| pct(flops / k / c)).unwrap_or_else(|| "-".into());
        line.push_str(&format!(" {share:>7}"));
    }
    line.push_str(&format!(" {gb:>7.2} {:>6}", pct(bytes / k / rates.dram_bw)));
    if !r.timing.finite {
        line.push_str("  (outputs hold NaN or infinity)");
    }
    out.line(&line);
}

fn failure(out: &mut Out, f: &Failure) {
    let shown: Vec<String> = f.sizes.iter().map(|(k, v)| format!("{k}={v}")).collect();
    out.line(&format!(
        "{:<16} {:<7} not measured at {}: {}",
        f.mixer,
        match f.phase {
            Phase::Prefill => "prefill",
            Phase::Decode => "decode",
        },
        shown.join(","),
        f.why.lines().map(str::trim).collect::<Vec<_>>().join("; ")
    ));
}

fn sweep_table(out: &mut Out, s: &Sweep, g: &mixc::ir::Graph) {
    let shown: Vec<String> = s.sizes.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let measured = s.entries.iter().filter(|e| e.measured.is_ok()).count();
    out.line(&format!(
        "# mixer {} sweep at {}: {} candidates fit, {} measured{}",
        s.mixer,
        shown.join(", "),
        s.feasible,
        measured,
        if s.infeasible > 0 { format!(" ({} rejected by the search)", s.infeasible) } else { String::new() }
    ));
    out.line(&format!(
        "{:>5}  {:<24} {:>12} {:>12} {:>10} {:>9} {:>10}  ",
        "pred#", "schedule", "predicted ms", "kernel ms", "total ms", "measured#", "compile"
    ));
    let ranks = s.measured_ranks();
    let fastest = s.fastest();
    for (i, e) in s.entries.iter().enumerate() {
        let compile = e.compile_s.map(|c| format!("{:.1} ms", c * 1e3)).unwrap_or_else(|| "cached".into());
        let mut marks = Vec::new();
        if i == 0 {
            marks.push("pick");
        }
        if fastest == Some(i) {
            marks.push("fastest");
        }
        let mark = if marks.is_empty() { String::new() } else { format!("  <- {}", marks.join(", ")) };
        match &e.measured {
            Ok(t) => out.line(&format!(
                "{:>5}  {:<24} {:>12.3} {:>12.3} {:>10.3} {:>9} {:>10}{mark}",
                e.predicted_rank,
                bench::describe(&e.schedule, g),
                e.predicted_s * 1e3,
                t.kernel_s() * 1e3,
                t.total_s * 1e3,
                ranks[i].map(|r| r.to_string()).unwrap_or_default(),
                compile,
            )),
            Err(why) => out.line(&format!(
                "{:>5}  {:<24} {:>12.3} not measured: {why}{mark}",
                e.predicted_rank,
                bench::describe(&e.schedule, g),
                e.predicted_s * 1e3,
            )),
        }
    }
    let corr =
        s.rank_correlation().map(|c| format!("; rank correlation predicted/measured {c:.2}")).unwrap_or_default();
    match (s.pick_gap(), fastest.and_then(|f| s.entries.get(f))) {
        (Some((1, _)), Some(best)) => out
            .line(&format!("pick: {} is the fastest measured of {measured}{corr}", bench::describe(&best.schedule, g))),
        (Some((rank, gap)), Some(best)) => out.line(&format!(
            "pick: {} is measured #{rank} of {measured}, {:.1}% slower than the fastest ({}){corr}",
            s.entries.first().map(|e| bench::describe(&e.schedule, g)).unwrap_or_default(),
            100.0 * gap,
            bench::describe(&best.schedule, g)
        )),
        _ => out.line(&format!("pick: not measured{corr}")),
    }
}
