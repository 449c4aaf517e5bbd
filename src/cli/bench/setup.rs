//! What `mixc bench` needs per target: the engine that compiles and times,
//! the device profile (ceilings and the schedule search), the header lines
//! and how rates are shown against the ceilings.

use super::BenchArgs;
use mixc::bench::{BenchEngine, CpuEngine};
use mixc::calibrate::{self, ChosenProfile};
use mixc::passes::device::DeviceKind;
use mixc::Error;

/// How the rates of a row are shown.
pub struct Rates {
    /// FLOP/s per shown unit, and the unit's column title.
    pub flop_unit: f64,
    pub flop_name: &'static str,
    /// The FLOP ceilings rates are compared with: column title, FLOP/s (`None`: unknown).
    pub flop_ceilings: Vec<(&'static str, Option<f64>)>,
    /// Memory bandwidth ceiling (B/s) and its column title.
    pub dram_bw: f64,
    pub mem_name: &'static str,
}

/// Everything target-specific.
pub struct Setup {
    pub chosen: ChosenProfile,
    pub engine: Box<dyn BenchEngine>,
    /// The `dot` mode of the engine's GPU kernels (none on the CPU: the default).
    pub engine_matmul: Option<String>,
    /// Whether it times on a GPU (its default sizes).
    pub gpu: bool,
    /// Lines printed above the first table.
    pub header: Vec<String>,
    pub rates: Rates,
}

/// This CPU: the calibrated profile (or `--profile`), every core unless `--threads`.
pub fn cpu(args: &BenchArgs) -> Result<Setup, Error> {
    if args.matmul.is_some() {
        return Err(Error::Usage("--matmul applies to --target cuda only (GPU tensor-core `dot`s)".into()));
    }
    let threads = match args.threads {
        Some(0) => return Err(Error::Usage("--threads must be at least 1".into())),
        Some(n) => {
            // Read by rayon when its pool starts, which is at the first run.
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
            n
        }
        None => std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)),
    };
    let chosen = calibrate::choose_profile("cpu", args.profile.as_deref())?;
    if chosen.profile.kind != DeviceKind::Cpu {
        return Err(Error::Usage(format!("--profile: `{}` is not a CPU profile", chosen.profile.name)));
    }
    let p = &chosen.profile;
    let mut header = vec![
        format!(
            "# mixc bench {}: {threads} threads; times are the median of {} runs after warm-up (at least 20 where a \
             run takes under 10 ms); decode steps start from cold caches (64 MiB written before each run)",
            args.file.display(),
            args.runs
        ),
        format!("# profile: {}", chosen.describe()),
    ];
    if let Some(note) = &chosen.note {
        header.push(format!("# note: {note}"));
    }
    let wide = match (&chosen.extras.widest_isa, chosen.extras.widest_flops) {
        (Some(isa), Some(f)) => format!(", widest {isa} {:.1} GFLOP/s", f / 1e9),
        _ => String::new(),
    };
    header.push(format!(
        "# ceilings: f32x4 FMA {:.1} GFLOP/s{wide}, DRAM {:.1} GB/s",
        p.vector_flops / 1e9,
        p.dram_bw / 1e9
    ));
    if let (Some(f), Some(b)) = (chosen.extras.best_simd128_flops, chosen.extras.best_copy_bw) {
        header.push(format!(
            "# (the calibration's best repetitions: f32x4 FMA {:.1} GFLOP/s, DRAM {:.1} GB/s; the % columns use the \
             medians above)",
            f / 1e9,
            b / 1e9
        ));
    }
    header.push(
        "# FLOP and bytes: passes::cost's count of the program that ran (matrix + vector FLOPs, DRAM bytes loaded + \
         stored); rates over kernel ms = the launches alone, timed inside the runtime call"
            .into(),
    );
    let rates = Rates {
        flop_unit: 1e9,
        flop_name: "GFLOP/s",
        flop_ceilings: vec![("%f32x4", Some(p.vector_flops)), ("%wide", chosen.extras.widest_flops)],
        dram_bw: p.dram_bw,
        mem_name: "%DRAM",
    };
    Ok(Setup { chosen, engine: Box::new(CpuEngine::default()), engine_matmul: None, gpu: false, header, rates })
}

/// Checks the options that do not apply to a GPU run.
fn gpu_options(args: &BenchArgs) -> Result<(), Error> {
    if args.threads.is_some() {
        return Err(Error::Usage("--threads applies to --target cpu only".into()));
    }
    if let Some(m) = &args.matmul {
        if args.kernels.is_some() {
            return Err(Error::Usage(
                "--matmul chooses how kernels are compiled, but a kernel bundle's are fixed: rebuild the bundle with it"
                    .into(),
            ));
        }
        mixc::pricing::kernel_resources_for(&mixc::passes::device::DeviceProfile::h100(), m).map(drop)?;
    }
    if args.sweep && args.kernels.is_some() {
        return Err(Error::Usage(
            "--sweep compiles every candidate schedule, so it cannot use --kernels (a bundle holds one schedule per \
             mixer)"
                .into(),
        ));
    }
    if args.sweep && !cfg!(feature = "llvm") {
        return Err(Error::Usage(
            "--sweep compiles every candidate schedule, which needs a build with LLVM (`cargo build --release \
             --features cuda`)"
                .into(),
        ));
    }
    Ok(())
}

/// The GPU (device 0): the card's built-in profile (or `--profile`), kernels
/// compiled here or from `--kernels DIR`.
#[cfg(feature = "cuda")]
pub fn cuda(args: &BenchArgs) -> Result<Setup, Error> {
    use mixc::bench::gpu::CudaEngine;
    gpu_options(args)?;
    let gpu = mixc::cuda::Gpu::open()?;
    if args.kernels.is_none() && !cfg!(feature = "llvm") {
        return Err(Error::Usage(mixc::cuda::NO_LLVM.into()));
    }
    let info = gpu.info().clone();
    let (major, minor) = info.compute_capability;
    let chosen = calibrate::choose_profile(mixc::card::profile_name(&info.name), args.profile.as_deref())?;
    if chosen.profile.kind != DeviceKind::Gpu {
        return Err(Error::Usage(format!("--profile: `{}` is not a GPU profile", chosen.profile.name)));
    }
    let (engine, kernels) = match &args.kernels {
        Some(dir) => {
            let engine = CudaEngine::with_bundle(gpu, dir)?;
            let from = engine
                .bundle()
                .map(|(d, b)| format!("kernels from the bundle {} ({}, dot {})", d.display(), b.target, b.matmul))
                .unwrap_or_default();
            (engine, from)
        }
        None => {
            let target = gpu.target()?;
            let storage = args.storage.unwrap_or_default();
            let mut engine = CudaEngine::new(gpu);
            engine.matmul = args.matmul.clone().unwrap_or_else(|| mixc::pricing::DEFAULT_MATMUL.into());
            let what = format!("kernels compiled here for {target} (dot {}, {storage} storage)", engine.matmul);
            (engine, what)
        }
    };
    let p = &chosen.profile;
    let header = vec![
        format!(
            "# mixc bench {} on {} (compute capability {major}.{minor}): {kernels}; times are the median of {} runs \
             after warm-up (at least 20 where a run takes under 10 ms)",
            args.file.display(),
            info.name,
            args.runs
        ),
        format!("# profile: {}", chosen.describe()),
        format!(
            "# ceilings: tensor-core matmul {:.1} TFLOP/s, SIMT f32 {:.1} TFLOP/s, HBM {:.1} GB/s",
            p.matmul_flops / 1e12,
            p.vector_flops / 1e12,
            p.dram_bw / 1e9
        ),
        "# inputs uploaded once per row; kernel ms: CUDA events around the launches; total ms: the same launches as \
         the host sees them (enqueued, then waited for); compile: PTX generation and the driver's load"
            .into(),
        "# FLOP and bytes: passes::cost's count of the program that ran (matrix + vector FLOPs, DRAM bytes loaded + \
         stored); rates over kernel ms"
            .into(),
    ];
    let rates = Rates {
        flop_unit: 1e12,
        flop_name: "TFLOP/s",
        flop_ceilings: vec![("%tensor", Some(p.matmul_flops))],
        dram_bw: p.dram_bw,
        mem_name: "%HBM",
    };
    let engine_matmul = Some(engine.matmul.clone());
    Ok(Setup { chosen, engine: Box::new(engine), engine_matmul, gpu: true, header, rates })
}

/// A build without CUDA says how to get one (after the option checks).
#[cfg(not(feature = "cuda"))]
pub fn cuda(args: &BenchArgs) -> Result<Setup, Error> {
    gpu_options(args)?;
    Err(Error::Usage(mixc::NO_CUDA.into()))
}
