//! Measuring this CPU's ceilings (`mixc calibrate`) and choosing the device
//! profile the cost model prices against.
//!
//! Measured: the f32 FMA peak at the CPU backend's vector width (128-bit
//! `f32x4`, what Cranelift emits) and at the widest width the CPU has
//! (AVX2/FMA or AVX-512, detected at run time), on every core at once; the
//! DRAM bandwidth of a multi-threaded copy and triad over arrays far larger
//! than the last-level cache, counting bytes read plus bytes written (the
//! anchors' copy formula: `2·size` per copy); and the same copy over arrays
//! that fit each core's L2. Every figure is the median of several timed
//! repetitions after a warm-up one.
//!
//! The result is a [`DeviceProfile`] written as TOML (readable by
//! [`DeviceProfile::from_toml`]) to `cpu-profile.toml` in the cache folder
//! ([`cache_dir`]); the figures the profile has no field for (the widest
//! width's peak, the triad) ride along as `#:` comment lines, TOML of their
//! own that the profile reader ignores. `mixc explain --target cpu`,
//! `mixc devices` and `mixc bench` use that profile when it is present.

use crate::bench::median;
use crate::Error;
use mixc_passes::device::{DeviceKind, DeviceProfile};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::Instant;

/// The file `mixc calibrate` writes in the cache folder.
pub const PROFILE_FILE: &str = "cpu-profile.toml";

/// The name the calibrated profile carries (shown by `mixc explain` and `mixc devices`).
pub const CALIBRATED_NAME: &str = "cpu-calibrated";

/// mixc's cache folder: `$MIXC_HOME`, else `$XDG_CACHE_HOME/mixc`, else
/// `~/.cache/mixc`; `None` when none of these variables is set.
pub fn cache_dir() -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("MIXC_HOME")
        .or_else(|| var("XDG_CACHE_HOME").map(|p| p.join("mixc")))
        .or_else(|| var("HOME").map(|h| h.join(".cache").join("mixc")))
}

/// Where the calibrated CPU profile lives.
pub fn profile_path() -> Option<PathBuf> {
    cache_dir().map(|d| d.join(PROFILE_FILE))
}

/// Options of [`measure`].
#[derive(Clone, Copy, Debug)]
pub struct CalibrateOptions {
    /// Roughly how long to measure, all figures together (warm-ups included).
    pub seconds: f64,
    /// Threads to measure with (default: every core this process may use).
    pub threads: Option<usize>,
}

impl Default for CalibrateOptions {
    fn default() -> Self {
        CalibrateOptions { seconds: 4.0, threads: None }
    }
}

/// What `mixc calibrate` measured. Rates in FLOP/s and B/s.
#[derive(Clone, Debug, PartialEq)]
pub struct Calibration {
    pub threads: usize,
    /// f32 FMA peak with 128-bit vectors (the CPU backend's width), all threads.
    pub simd128_flops: f64,
    /// The widest vector ISA found, e.g. `avx2+fma (256-bit)`.
    pub widest_isa: String,
    pub widest_bits: u32,
    /// f32 FMA peak at that width, all threads.
    pub widest_flops: f64,
    /// Copy over arrays far larger than the last-level cache, read + write bytes.
    pub copy_bw: f64,
    /// `a = b + s·c` over such arrays, two reads and one write counted.
    pub triad_bw: f64,
    /// Copy over arrays that fit each core's L2, read + write bytes.
    pub cache_bw: f64,
    /// L2 per core and last-level cache, bytes (from sysfs, else assumed).
    pub l2_bytes: u64,
    pub llc_bytes: u64,
    /// Bytes of each array of the DRAM measurements.
    pub array_bytes: u64,
    /// Seconds the measurement took.
    pub elapsed_s: f64,
    /// The best repetitions (the figures above are medians).
    pub best: Best,
}

/// The best repetition of the main figures: on a machine others are using,
/// nearer the hardware's ceiling than the medians.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Best {
    pub simd128_flops: f64,
    pub widest_flops: f64,
    pub copy_bw: f64,
}

/// The figures of a calibration that a [`DeviceProfile`] has no field for,
/// kept in the profile file's `#:` lines.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
pub struct Extras {
    pub widest_isa: Option<String>,
    pub widest_flops: Option<f64>,
    pub simd128_flops: Option<f64>,
    pub copy_bw: Option<f64>,
    pub triad_bw: Option<f64>,
    pub cache_bw: Option<f64>,
    pub best_simd128_flops: Option<f64>,
    pub best_widest_flops: Option<f64>,
    pub best_copy_bw: Option<f64>,
    pub measured_on: Option<String>,
}

impl Calibration {
    /// The device profile the cost model prices against: the 128-bit FMA peak
    /// for both matrix and vector work (the backend's `dot` is f32x4 FMA too),
    /// the copy bandwidth as DRAM bandwidth, the L2 copy as cache bandwidth.
    pub fn profile(&self) -> DeviceProfile {
        let builtin = DeviceProfile::cpu_default();
        DeviceProfile {
            name: CALIBRATED_NAME.into(),
            kind: DeviceKind::Cpu,
            matmul_flops: self.simd128_flops,
            vector_flops: self.simd128_flops,
            dram_bw: self.copy_bw,
            l2_bw: self.cache_bw,
            units: self.threads as u32,
            programs_per_unit: 1,
            local_mem: self.l2_bytes,
            registers: 0,
            launch_s: builtin.launch_s,
            elem_bytes: 4,
            mma_granularity: builtin.mma_granularity,
            threads_per_unit: builtin.threads_per_unit,
            latency: builtin.latency,
        }
    }

    /// The profile file's text: comments, the `#:` extras, the profile's fields.
    pub fn to_toml(&self) -> String {
        let p = self.profile();
        let date = utc_date_now();
        format!(
            "# This CPU's ceilings, measured by `mixc calibrate` ({date}, {threads} threads,\n\
             # {secs:.1} s). The fields are a device profile (DeviceProfile::from_toml);\n\
             # the `#:` lines keep what else was measured. Run `mixc calibrate` again to refresh.\n\
             #: widest_isa = \"{isa}\"\n\
             #: widest_flops = {wide:e}\n\
             #: simd128_flops = {s128:e}\n\
             #: copy_bw = {copy:e}\n\
             #: triad_bw = {triad:e}\n\
             #: cache_bw = {cache:e}\n\
             #: best_simd128_flops = {b128:e}\n\
             #: best_widest_flops = {bwide:e}\n\
             #: best_copy_bw = {bcopy:e}\n\
             #: measured_on = \"{date}\"\n\
             name = \"{name}\"\n\
             kind = \"cpu\"\n\
             # f32 FMA peak with 128-bit vectors (the CPU backend's width), all cores, FLOP/s\n\
             matmul_flops = {mm:e}\n\
             vector_flops = {vf:e}\n\
             # copy over {arr} MiB arrays, bytes read + written per second\n\
             dram_bw = {dram:e}\n\
             # copy over arrays that fit each core's L2\n\
             l2_bw = {l2:e}\n\
             units = {units}\n\
             programs_per_unit = {ppu}\n\
             # L2 per core, bytes\n\
             local_mem = {lm}\n\
             registers = 0\n\
             # not measured: the built-in profile's figure\n\
             launch_s = {launch:e}\n\
             elem_bytes = {eb}\n\
             mma_granularity = {mg}\n",
            threads = self.threads,
            secs = self.elapsed_s,
            isa = self.widest_isa,
            wide = self.widest_flops,
            s128 = self.simd128_flops,
            copy = self.copy_bw,
            triad = self.triad_bw,
            cache = self.cache_bw,
            b128 = self.best.simd128_flops,
            bwide = self.best.widest_flops,
            bcopy = self.best.copy_bw,
            name = p.name,
            mm = p.matmul_flops,
            vf = p.vector_flops,
            arr = self.array_bytes >> 20,
            dram = p.dram_bw,
            l2 = p.l2_bw,
            units = p.units,
            ppu = p.programs_per_unit,
            lm = p.local_mem,
            launch = p.launch_s,
            eb = p.elem_bytes,
            mg = p.mma_granularity,
        )
    }

    /// Writes the profile to `path` (creating its folder), after checking that
    /// it reads back.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let text = self.to_toml();
        let back = DeviceProfile::from_toml(&text).map_err(|msg| {
            Error::Usage(format!("the calibrated profile does not read back (a bug in mixc, please report it): {msg}"))
        })?;
        if back != self.profile() {
            return Err(Error::Usage(
                "the calibrated profile reads back different figures (a bug in mixc, please report it)".into(),
            ));
        }
        let io = |source| Error::Io { path: path.display().to_string(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        // Write then rename, so a reader never sees half a file.
        let tmp = path.with_extension(format!("toml.tmp{}", std::process::id()));
        std::fs::write(&tmp, text).map_err(|source| Error::Io { path: tmp.display().to_string(), source })?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

/// The `#:` lines of a profile file, parsed as TOML; missing or malformed
/// lines give empty extras.
pub fn extras_of(src: &str) -> Extras {
    let body: String = src.lines().filter_map(|l| l.strip_prefix("#:")).map(|l| format!("{}\n", l.trim())).collect();
    toml::from_str(&body).unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Choosing a profile.

/// Where a profile came from.
#[derive(Clone, Debug, PartialEq)]
pub enum ProfileSource {
    /// Measured on this machine by `mixc calibrate`.
    Calibrated(PathBuf),
    /// A profile file given on the command line.
    File(PathBuf),
    /// mixc's built-in figures for the target.
    BuiltIn,
}

/// A device profile and where it came from.
#[derive(Clone, Debug)]
pub struct ChosenProfile {
    pub profile: DeviceProfile,
    pub source: ProfileSource,
    /// What the profile file adds (calibrated profiles).
    pub extras: Extras,
    /// Why a calibrated profile present on disk was not used.
    pub note: Option<String>,
}

impl ChosenProfile {
    fn builtin(profile: DeviceProfile) -> ChosenProfile {
        ChosenProfile { profile, source: ProfileSource::BuiltIn, extras: Extras::default(), note: None }
    }

    /// One line saying which profile this is.
    pub fn describe(&self) -> String {
        match &self.source {
            ProfileSource::Calibrated(p) => {
                format!("`{}`, measured on this machine by `mixc calibrate` ({})", self.profile.name, p.display())
            }
            ProfileSource::File(p) => format!("`{}` from {}", self.profile.name, p.display()),
            ProfileSource::BuiltIn if self.profile.kind == DeviceKind::Cpu => {
                format!("`{}`, built in (not measured here: run `mixc calibrate`)", self.profile.name)
            }
            ProfileSource::BuiltIn => format!("`{}`, built in", self.profile.name),
        }
    }
}

/// The CPU profile: the calibrated one when `cpu-profile.toml` is present and
/// reads, else the built-in one (with a note when a file was there but could
/// not be used).
pub fn cpu_profile() -> ChosenProfile {
    let builtin = ChosenProfile::builtin(DeviceProfile::cpu_default());
    let Some(path) = profile_path() else { return builtin };
    let src = match std::fs::read_to_string(&path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return builtin,
        Err(e) => {
            return ChosenProfile {
                note: Some(format!("cannot read {} ({e}); using the built-in CPU profile", path.display())),
                ..builtin
            }
        }
    };
    match DeviceProfile::from_toml(&src) {
        Ok(p) if p.kind == DeviceKind::Cpu && p.units > 0 && p.vector_flops > 0.0 && p.dram_bw > 0.0 => {
            ChosenProfile { profile: p, source: ProfileSource::Calibrated(path), extras: extras_of(&src), note: None }
        }
        Ok(_) => ChosenProfile {
            note: Some(format!(
                "{} is not a usable CPU profile; using the built-in one (run `mixc calibrate` again)",
                path.display()
            )),
            ..builtin
        },
        Err(msg) => ChosenProfile {
            note: Some(format!(
                "{} does not read ({}); using the built-in CPU profile (run `mixc calibrate` again)",
                path.display(),
                msg.lines().next().unwrap_or("malformed")
            )),
            ..builtin
        },
    }
}

/// The profile for a target: `--profile FILE` if given (`--profile builtin`
/// forces the built-in one), else the calibrated profile for `cpu` when
/// present, else the built-in profile of the target.
pub fn choose_profile(target: &str, profile: Option<&Path>) -> Result<ChosenProfile, Error> {
    let builtin = || {
        DeviceProfile::builtin(target).ok_or_else(|| {
            Error::Usage(format!("unknown target `{target}` (expected cpu, sm_80, sm_90, sm_90a, cuda, h100 or h200)"))
        })
    };
    match profile {
        Some(p) if p == Path::new("builtin") => Ok(ChosenProfile::builtin(builtin()?)),
        Some(path) => {
            let src = std::fs::read_to_string(path)
                .map_err(|source| Error::Io { path: path.display().to_string(), source })?;
            let profile = DeviceProfile::from_toml(&src)
                .map_err(|msg| Error::Usage(format!("device profile {}: {msg}", path.display())))?;
            Ok(ChosenProfile {
                profile,
                source: ProfileSource::File(path.to_path_buf()),
                extras: extras_of(&src),
                note: None,
            })
        }
        None if target == "cpu" => Ok(cpu_profile()),
        None => Ok(ChosenProfile::builtin(builtin()?)),
    }
}

// ---------------------------------------------------------------------------
// Measuring.

/// Measures this CPU (see the module comment); takes about `opts.seconds`.
pub fn measure(opts: CalibrateOptions) -> Result<Calibration, Error> {
    if !(opts.seconds.is_finite() && opts.seconds > 0.0) {
        return Err(Error::Usage(format!("--seconds must be a positive number of seconds, not {}", opts.seconds)));
    }
    let threads = match opts.threads {
        Some(0) => return Err(Error::Usage("--threads must be at least 1".into())),
        Some(n) => n,
        None => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    };
    let start = Instant::now();
    let s = opts.seconds;
    let (l2_bytes, llc_bytes) = cache_sizes();
    let isas = detect_isas();
    let narrow = isas.narrow;
    let simd128 = fma_peak(narrow, threads, 0.3 * s);
    let (widest_isa, widest_bits, widest) = match isas.wide {
        Some(w) => (w.describe(), w.bits(), fma_peak(w, threads, 0.3 * s)),
        None => (narrow.describe(), narrow.bits(), simd128),
    };
    // Each DRAM array is 4× the last-level cache (at least 64 MiB), so no
    // pass finds its data in cache.
    let array_bytes = (4 * llc_bytes).max(64 << 20);
    let (copy, triad) = dram_bandwidth(array_bytes as usize / 4, threads, 0.3 * s);
    let cache = cache_bandwidth(l2_bytes as usize, threads, 0.1 * s);
    Ok(Calibration {
        threads,
        simd128_flops: simd128.median,
        widest_isa,
        widest_bits,
        widest_flops: widest.median,
        copy_bw: copy.median,
        triad_bw: triad.median,
        cache_bw: cache.median,
        best: Best { simd128_flops: simd128.best, widest_flops: widest.best, copy_bw: copy.best },
        l2_bytes,
        llc_bytes,
        array_bytes,
        elapsed_s: start.elapsed().as_secs_f64(),
    })
}

/// Timed repetitions per figure (after one warm-up); the median is kept.
const REPS: usize = 5;

/// Runs `work(item)` for every item on its own thread, all released at once;
/// returns the seconds from the release until the last one finished.
fn timed_parallel<T: Send>(items: Vec<T>, work: impl Fn(T) + Sync) -> f64 {
    let barrier = Barrier::new(items.len() + 1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .into_iter()
            .map(|item| {
                let (barrier, work) = (&barrier, &work);
                scope.spawn(move || {
                    barrier.wait();
                    work(item);
                })
            })
            .collect();
        barrier.wait();
        let t0 = Instant::now();
        for h in handles {
            // A panicking worker (none is expected) only spoils this figure.
            let _ = h.join();
        }
        t0.elapsed().as_secs_f64()
    })
}

/// A rate over `REPS` repetitions: the median (what the profile keeps) and
/// the best one (closer to the ceiling on a machine others are using).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rate {
    pub median: f64,
    pub best: f64,
}

/// The rate over `REPS` timed repetitions after a warm-up, each repetition
/// sized to about `budget_s / (REPS + 1)` from a probe: `run(n)` does `n`
/// units of work and returns the seconds it took; `per_unit` is the FLOPs or
/// bytes of one unit.
fn rate(budget_s: f64, per_unit: f64, mut run: impl FnMut(u64) -> f64) -> Rate {
    let rep_s = budget_s / (REPS + 1) as f64;
    // Probe with one unit, then grow until the probe is long enough to trust.
    let mut n = 1u64;
    let mut t = run(n);
    while t < 2e-3 && t < rep_s && n < (1 << 40) {
        n *= 4;
        t = run(n);
    }
    let units = ((rep_s / t.max(1e-9)) * n as f64).max(1.0) as u64;
    run(units); // warm-up
    let rates: Vec<f64> = (0..REPS).map(|_| units as f64 * per_unit / run(units).max(1e-12)).collect();
    let best = rates.iter().copied().fold(0.0, f64::max);
    Rate { median: median(rates), best }
}

/// A vector ISA to measure FMA throughput with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    /// 128-bit `vfmadd…ps xmm` (the CPU backend's width).
    #[cfg(target_arch = "x86_64")]
    Fma128,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma256,
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// Plain Rust `x·a + b` on `[f32; 4]` groups (no FMA detected).
    Portable128,
}

impl Isa {
    fn describe(self) -> String {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Fma128 => "fma (128-bit)".into(),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma256 => "avx2+fma (256-bit)".into(),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => "avx512f (512-bit)".into(),
            Isa::Portable128 => "portable mul+add (128-bit groups)".into(),
        }
    }
    fn bits(self) -> u32 {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma256 => 256,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => 512,
            _ => 128,
        }
    }
    /// FLOPs of one loop iteration of [`fma_loop`].
    fn flops_per_iter(self) -> f64 {
        let lanes = (self.bits() / 32) as f64;
        let chains = match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => CHAINS_512,
            _ => CHAINS,
        } as f64;
        chains * lanes * 2.0
    }
}

struct Isas {
    /// The 128-bit one.
    narrow: Isa,
    /// Something wider, if the CPU has it.
    wide: Option<Isa>,
}

fn detect_isas() -> Isas {
    #[cfg(target_arch = "x86_64")]
    {
        let fma = is_x86_feature_detected!("fma") && is_x86_feature_detected!("avx");
        let narrow = if fma { Isa::Fma128 } else { Isa::Portable128 };
        let wide = if is_x86_feature_detected!("avx512f") {
            Some(Isa::Avx512)
        } else if fma && is_x86_feature_detected!("avx2") {
            Some(Isa::Avx2Fma256)
        } else {
            None
        };
        Isas { narrow, wide }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Isas { narrow: Isa::Portable128, wide: None }
    }
}

/// Independent accumulator chains: enough to cover the FMA latency times
/// the FMA ports (4 cycles × 2 ports on current x86) with room to spare,
/// while staying within the 16 xmm/ymm registers.
const CHAINS: usize = 12;
/// AVX-512 has 32 registers.
const CHAINS_512: usize = 24;

/// All threads run `iters` iterations of the ISA's FMA loop; returns seconds.
fn fma_loop(isa: Isa, threads: usize, iters: u64) -> f64 {
    timed_parallel(vec![iters; threads], |n| {
        // `acc = acc·a + b` with a < 1 converges to b/(1−a): no overflow, no denormals.
        let (a, b) = (black_box(0.999_9f32), black_box(1e-4f32));
        let r = match isa {
            // Safety: each ISA variant exists only after `detect_isas` found its features.
            #[cfg(target_arch = "x86_64")]
            Isa::Fma128 => unsafe { x86::fma128(n, a, b) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma256 => unsafe { x86::fma256(n, a, b) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { x86::fma512(n, a, b) },
            Isa::Portable128 => portable128(n, a, b),
        };
        black_box(r);
    })
}

fn fma_peak(isa: Isa, threads: usize, budget_s: f64) -> Rate {
    // The work unit is 1000 iterations, so the probe starts large enough to time.
    let per_unit = isa.flops_per_iter() * 1000.0 * threads as f64;
    rate(budget_s, per_unit, |units| fma_loop(isa, threads, units * 1000))
}

fn portable128(iters: u64, a: f32, b: f32) -> f32 {
    let mut acc = [[1.0f32; 4]; CHAINS];
    for _ in 0..iters {
        for chain in acc.iter_mut() {
            for x in chain.iter_mut() {
                *x = *x * a + b;
            }
        }
    }
    acc.iter().flatten().sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The FMA loops: `CHAINS` independent accumulators updated with one
    //! vector FMA each per iteration (the loads of `a` and `b` are hoisted,
    //! so the loop body is nothing but FMAs).
    use super::{CHAINS, CHAINS_512};
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must have AVX and FMA.
    #[target_feature(enable = "avx,fma")]
    pub unsafe fn fma128(iters: u64, a: f32, b: f32) -> f32 {
        let (va, vb) = (_mm_set1_ps(a), _mm_set1_ps(b));
        let mut acc = [_mm_set1_ps(1.0); CHAINS];
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm_fmadd_ps(*x, va, vb);
            }
        }
        let mut s = _mm_setzero_ps();
        for x in acc {
            s = _mm_add_ps(s, x);
        }
        let mut out = [0f32; 4];
        _mm_storeu_ps(out.as_mut_ptr(), s);
        out.iter().sum()
    }

    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma256(iters: u64, a: f32, b: f32) -> f32 {
        let (va, vb) = (_mm256_set1_ps(a), _mm256_set1_ps(b));
        let mut acc = [_mm256_set1_ps(1.0); CHAINS];
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, va, vb);
            }
        }
        let mut s = _mm256_setzero_ps();
        for x in acc {
            s = _mm256_add_ps(s, x);
        }
        let mut out = [0f32; 8];
        _mm256_storeu_ps(out.as_mut_ptr(), s);
        out.iter().sum()
    }

    /// # Safety
    /// The CPU must have AVX-512F.
    // AVX-512 intrinsics are stable since Rust 1.89, above the declared MSRV;
    // the toolchain that builds mixc has them.
    #[allow(clippy::incompatible_msrv)]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma512(iters: u64, a: f32, b: f32) -> f32 {
        let (va, vb) = (_mm512_set1_ps(a), _mm512_set1_ps(b));
        let mut acc = [_mm512_set1_ps(1.0); CHAINS_512];
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(*x, va, vb);
            }
        }
        let mut s = _mm512_setzero_ps();
        for x in acc {
            s = _mm512_add_ps(s, x);
        }
        _mm512_reduce_add_ps(s)
    }
}

/// Copy and triad bandwidth over arrays of `n` f32 each, split into one
/// contiguous slice per thread; bytes read + written per second.
fn dram_bandwidth(n: usize, threads: usize, budget_s: f64) -> (Rate, Rate) {
    let n = n.max(threads * 1024);
    let src = vec![1.0f32; n];
    let mut dst = vec![0.0f32; n];
    let piece = n.div_ceil(threads);
    let copy = rate(0.55 * budget_s, (2 * n * 4) as f64, |passes| {
        let items: Vec<_> = dst.chunks_mut(piece).zip(src.chunks(piece)).collect();
        timed_parallel(items, |(d, s)| {
            for _ in 0..passes {
                d.copy_from_slice(s);
                black_box(&mut *d);
            }
        })
    });
    let c = vec![2.0f32; n];
    let scale = black_box(0.5f32);
    let triad = rate(0.45 * budget_s, (3 * n * 4) as f64, |passes| {
        let items: Vec<_> = dst.chunks_mut(piece).zip(src.chunks(piece)).zip(c.chunks(piece)).collect();
        timed_parallel(items, |((a, b), c)| {
            for _ in 0..passes {
                for ((a, b), c) in a.iter_mut().zip(b.iter()).zip(c.iter()) {
                    *a = *b + scale * *c;
                }
                black_box(&mut *a);
            }
        })
    });
    (copy, triad)
}

/// Copy bandwidth over per-thread arrays that together fill half of a core's
/// L2 (`l2` bytes); bytes read + written per second, all threads.
fn cache_bandwidth(l2: usize, threads: usize, budget_s: f64) -> Rate {
    let n = (l2 / 4 / 4).max(1024);
    let mut bufs: Vec<(Vec<f32>, Vec<f32>)> = (0..threads).map(|_| (vec![1.0f32; n], vec![0.0f32; n])).collect();
    rate(budget_s, (2 * n * 4 * threads) as f64, |passes| {
        let items: Vec<_> = bufs.iter_mut().collect();
        timed_parallel(items, |(s, d)| {
            for _ in 0..passes {
                d.copy_from_slice(s);
                black_box(&mut *d);
            }
        })
    })
}

/// L2 per core and the last-level cache in bytes, from Linux's sysfs (1 MiB
/// and 32 MiB when it says nothing).
fn cache_sizes() -> (u64, u64) {
    let mut l2 = None;
    let mut llc: Option<(u32, u64)> = None;
    let root = Path::new("/sys/devices/system/cpu/cpu0/cache");
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            let read = |f: &str| std::fs::read_to_string(e.path().join(f)).ok().map(|s| s.trim().to_string());
            let (Some(level), Some(size), Some(kind)) = (read("level"), read("size"), read("type")) else {
                continue;
            };
            if kind == "Instruction" {
                continue;
            }
            let (Ok(level), Some(bytes)) = (level.parse::<u32>(), parse_size(&size)) else { continue };
            if level == 2 {
                l2 = Some(bytes);
            }
            if llc.is_none_or(|(l, _)| level > l) {
                llc = Some((level, bytes));
            }
        }
    }
    (l2.unwrap_or(1 << 20), llc.map(|(_, b)| b).unwrap_or(32 << 20))
}

/// `512K`, `32768K`, `1M`, `2048` (bytes).
fn parse_size(s: &str) -> Option<u64> {
    let (num, mult) = match s.chars().last()? {
        'K' | 'k' => (&s[..s.len() - 1], 1u64 << 10),
        'M' | 'm' => (&s[..s.len() - 1], 1 << 20),
        'G' | 'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok().map(|n| n * mult)
}

/// Today's date in UTC, `YYYY-MM-DD`.
fn utc_date_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512K"), Some(512 << 10));
        assert_eq!(parse_size("32768K"), Some(32 << 20));
        assert_eq!(parse_size("1M"), Some(1 << 20));
        assert_eq!(parse_size("x"), None);
    }

    #[test]
    fn profile_text_reads_back_with_its_extras() {
        let c = Calibration {
            threads: 2,
            simd128_flops: 1.16e11,
            widest_isa: "avx2+fma (256-bit)".into(),
            widest_bits: 256,
            widest_flops: 2.33e11,
            copy_bw: 2.9e10,
            triad_bw: 3.1e10,
            cache_bw: 2.0e11,
            l2_bytes: 512 << 10,
            llc_bytes: 32 << 20,
            array_bytes: 128 << 20,
            elapsed_s: 4.0,
            best: Best { simd128_flops: 1.2e11, widest_flops: 2.4e11, copy_bw: 3e10 },
        };
        let text = c.to_toml();
        assert_eq!(DeviceProfile::from_toml(&text), Ok(c.profile()));
        let x = extras_of(&text);
        assert_eq!(x.widest_flops, Some(2.33e11));
        assert_eq!(x.widest_isa.as_deref(), Some("avx2+fma (256-bit)"));
        assert_eq!(x.best_copy_bw, Some(3e10));
        assert_eq!(extras_of("#: widest_flops = oops"), Extras::default());
    }
}
