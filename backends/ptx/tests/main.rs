//! The PTX backend's tests: every kernel of every mixer of `models/*.toml`,
//! under several schedules, compiles to PTX that `ptxas` accepts for sm_80 and
//! sm_90 (register and shared-memory reports recorded, spills fail); the
//! emitted IR uses the `ptx_kernel` convention; the math library is accurate.

use mixc_backend_ptx::{compile, compile_with, Matmul, Options, PtxKernel, Target, Tier};
use mixc_ir::tile::Kernel;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Kernels allowed to spill, with the reason.
const SPILL_EXCEPTIONS: &[(&str, &str)] = &[(
    "anchors/mlstm/c64v32/o_fused",
    "sm_80 only (28 bytes at 255 registers; sm_90 fits it without spills): \
     mLSTM's fused kernel in the register tier, a slot_forms form (Options::slot_forms)",
)];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The workspace's target folder (where reports go).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"))
}

fn schedules() -> Vec<(&'static str, mixc_passes::Schedule)> {
    use mixc_passes::Schedule;
    vec![
        ("chunk16", Schedule::with_chunk(16)),
        ("chunk64", Schedule::with_chunk(64)),
        ("chunk128", Schedule::with_chunk(128)),
        ("split64", Schedule { split: true, ..Schedule::with_chunk(64) }),
        ("split16", Schedule { split: true, ..Schedule::with_chunk(16) }),
        // The narrow prefill's chunk scan in value blocks (mLSTM and the delta
        // rules keep split's walk under it).
        ("scan32", Schedule { split: true, scan: true, block_v: 32, ..Schedule::with_chunk(32) }),
        ("step", Schedule::decode()),
        ("steps4", Schedule::steps(4)),
        // The GPU's decode step: value blocks, attention split over keys.
        ("gpu-decode", Schedule::decode_for(mixc_passes::device::DeviceKind::Gpu)),
    ]
}

/// Every distinct kernel of every mixer of the model files in `dir`, named
/// `model/mixer/schedule/kernel`.
fn kernels_of(dir: &str) -> Vec<(String, Kernel)> {
    kernels_with(dir, &|_| true, &schedules())
}

/// Every distinct kernel of the mixers of the model files in `dir` that
/// `wanted` picks (by file stem), under `scheds`.
fn kernels_with(
    dir: &str,
    wanted: &dyn Fn(&str) -> bool,
    scheds: &[(&'static str, mixc_passes::Schedule)],
) -> Vec<(String, Kernel)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "toml"));
    files.retain(|p| p.file_stem().is_some_and(|s| wanted(&s.to_string_lossy())));
    files.sort();
    assert!(!files.is_empty(), "no model files in {dir}");
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut out = vec![];
    for f in files {
        let model = f.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
        let file = mixc_ir::model::load_model(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for name in file.distinct_mixers() {
            let cfg = &file.mixer[&name];
            let g = mixc_ir::mixers::build(&name, cfg).unwrap_or_else(|e| panic!("{model}/{name}: {e}"));
            for (sn, s) in scheds {
                let p = mixc_passes::lower(&g, s).unwrap_or_else(|e| panic!("{model}/{name}/{sn}: {e}"));
                for k in &p.kernels {
                    let text = mixc_ir::tile::text::print_kernel(k);
                    let id = format!("{model}/{name}/{sn}/{}", k.name);
                    if seen.contains_key(&text) {
                        continue;
                    }
                    seen.insert(text, id.clone());
                    out.push((id, k.clone()));
                }
            }
        }
    }
    out
}

fn ptxas() -> Option<PathBuf> {
    let out = Command::new("bash").arg(root().join("scripts/find-ptxas.sh")).output().ok()?;
    let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !p.is_empty()).then(|| PathBuf::from(p))
}

/// What `ptxas -v` says about one kernel.
#[derive(Debug, Default, Clone)]
struct Report {
    registers: u32,
    spill_stores: u32,
    spill_loads: u32,
    stack: u32,
    smem: u32,
}

fn parse_report(text: &str) -> Report {
    let mut r = Report::default();
    let num_before = |line: &str, key: &str| -> Option<u32> {
        let at = line.find(key)?;
        line[..at].split_whitespace().last()?.parse().ok()
    };
    for line in text.lines() {
        if let Some(x) = num_before(line, "bytes spill stores") {
            r.spill_stores = x;
        }
        if let Some(x) = num_before(line, "bytes spill loads") {
            r.spill_loads = x;
        }
        if let Some(x) = num_before(line, "bytes stack frame") {
            r.stack = x;
        }
        if let Some(x) = num_before(line, "registers") {
            r.registers = x;
        }
        if let Some(x) = num_before(line, "bytes smem") {
            r.smem = x;
        }
    }
    r
}

fn assemble(ptxas: &Path, file: &Path, arch: &str) -> Result<Report, String> {
    let out = Command::new(ptxas)
        .args(["-v", &format!("-arch={arch}"), "-o", "/dev/null"])
        .arg(file)
        .output()
        .map_err(|e| format!("running ptxas: {e}"))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        return Err(text);
    }
    Ok(parse_report(&text))
}

/// A compile job's outcome: kernel index, target, result.
type Compiled = (usize, Target, Result<PtxKernel, String>);

/// Compiles every kernel for both targets on a few threads; returns
/// `(id, target, kernel)` in order, panicking on the first compile error.
fn compile_all(kernels: &[(String, Kernel)], targets: &[Target], opts: Options) -> Vec<(String, Target, PtxKernel)> {
    let jobs: Vec<(usize, Target)> = (0..kernels.len()).flat_map(|i| targets.iter().map(move |t| (i, *t))).collect();
    let next = Mutex::new(0usize);
    let results: Mutex<Vec<Compiled>> = Mutex::new(vec![]);
    std::thread::scope(|sc| {
        for _ in 0..2 {
            sc.spawn(|| loop {
                let j = {
                    let mut n = next.lock().unwrap();
                    let j = *n;
                    *n += 1;
                    j
                };
                let Some((i, t)) = jobs.get(j).copied() else { break };
                let r = compile_with(&kernels[i].1, t, opts).map_err(|e| e.to_string());
                results.lock().unwrap().push((i, t, r));
            });
        }
    });
    let mut rs = results.into_inner().unwrap();
    rs.sort_by_key(|(i, t, _)| (*i, t.name()));
    let mut errors = vec![];
    let mut out = vec![];
    for (i, t, r) in rs {
        match r {
            Ok(p) => out.push((kernels[i].0.clone(), t, p)),
            Err(e) => errors.push(format!("{} ({}): {e}", kernels[i].0, t.name())),
        }
    }
    assert!(errors.is_empty(), "{} kernels failed to compile:\n{}", errors.len(), errors.join("\n"));
    out
}

/// Assembles `kernels` for sm_80 and sm_90 and writes the `ptxas -v` report.
fn check_kernels(
    kernels: Vec<(String, Kernel)>,
    what: &str,
    scheds: &[(&'static str, mixc_passes::Schedule)],
    report_name: &str,
    far_share: f64,
    opts: Options,
) {
    let targets = [Target::Sm80, Target::Sm90];
    let compiled = compile_all(&kernels, &targets, opts);
    let outdir = target_dir().join("ptx-check").join(report_name);
    std::fs::create_dir_all(&outdir).unwrap();
    let Some(ptxas) = ptxas() else {
        println!("NOTICE: no ptxas found (scripts/find-ptxas.sh): PTX of {} kernels not assembled", kernels.len());
        return;
    };
    let mut lines = vec![format!(
        "# ptxas -v of every distinct kernel of {what} (schedules: {})",
        scheds.iter().map(|s| s.0).collect::<Vec<_>>().join(", ")
    )];
    lines.push(
        "# kernel target threads shared_bytes(dynamic) registers spill_stores spill_loads stack estimated_registers"
            .into(),
    );
    let mut failures = vec![];
    let mut estimates = vec![];
    let jobs: Vec<(usize, PathBuf)> = compiled
        .iter()
        .enumerate()
        .map(|(i, (id, t, p))| {
            let file = outdir.join(format!("{}.{}.ptx", id.replace('/', "__"), t.name()));
            std::fs::write(&file, &p.ptx).unwrap();
            (i, file)
        })
        .collect();
    let next = Mutex::new(0usize);
    let reports: Mutex<Vec<(usize, Result<Report, String>)>> = Mutex::new(vec![]);
    std::thread::scope(|sc| {
        for _ in 0..2 {
            sc.spawn(|| loop {
                let j = {
                    let mut n = next.lock().unwrap();
                    let j = *n;
                    *n += 1;
                    j
                };
                let Some((i, file)) = jobs.get(j) else { break };
                let r = assemble(&ptxas, file, compiled[*i].1.name());
                reports.lock().unwrap().push((*i, r));
            });
        }
    });
    let mut reports = reports.into_inner().unwrap();
    reports.sort_by_key(|r| r.0);
    for (i, r) in reports {
        let (id, t, p) = &compiled[i];
        match r {
            Err(e) => failures.push(format!("{id} ({}): ptxas failed:\n{e}", t.name())),
            Ok(r) => {
                let kernel = &kernels.iter().find(|(kid, _)| kid == id).expect("a compiled kernel is listed").1;
                let estimate = mixc_backend_ptx::resources(kernel, opts.matmul).unwrap().registers;
                if t.name() == "sm_90" {
                    estimates.push((id.clone(), p.threads, r.registers, estimate));
                }
                lines.push(format!(
                    "{id} {} {} {} {} {} {} {} {estimate}",
                    t.name(),
                    p.threads,
                    p.shared_bytes,
                    r.registers,
                    r.spill_stores,
                    r.spill_loads,
                    r.stack
                ));
                let kname = id.rsplit('/').next().unwrap_or_default();
                let excused = SPILL_EXCEPTIONS.iter().any(|(k, _)| *k == id || *k == kname);
                if r.spill_stores > 0 && !excused {
                    failures.push(format!("{id} ({}): {} bytes of spill stores", t.name(), r.spill_stores));
                }
            }
        }
    }
    let report = target_dir().join(format!("{report_name}-ptxas-report.txt"));
    std::fs::write(&report, lines.join("\n") + "\n").unwrap();
    check_register_estimates(&estimates, far_share, &mut failures);
    println!("{} kernels × {} targets assembled; report: {}", kernels.len(), targets.len(), report.display());
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n\n"));
}

/// The plan's register estimate (which the cost model's occupancy uses)
/// against `ptxas` on sm_90: the CTAs per SM the two allow differ by more
/// than 1.5× for at most `far_share` of the kernels, and the median error is
/// at most 20%.
fn check_register_estimates(est: &[(String, u32, u32, u32)], far_share: f64, failures: &mut Vec<String>) {
    if est.len() < 20 {
        return;
    }
    // CTAs per SM as the cost model counts them, with only threads and registers binding.
    let h100 = mixc_passes::device::DeviceProfile::h100();
    let per_sm = |threads: u32, registers: u32| {
        let r = mixc_passes::cost::KernelResources {
            threads,
            shared_bytes: 0,
            spill_bytes: 0,
            spilled_share: 0.0,
            registers,
            mma_k: 0,
            mma_passes: 0,
            register_tier: false,
            pipelined: false,
            warp_rows: 0,
        };
        mixc_passes::cost::programs_per_sm(r, &h100)
    };
    let far: Vec<String> = est
        .iter()
        .filter(|(_, th, real, e)| {
            let (a, b) = (per_sm(*th, *real) as f64, per_sm(*th, *e) as f64);
            a.max(b) / a.min(b) > 1.5
        })
        .map(|(id, _, real, e)| format!("{id}: ptxas {real}, estimate {e}"))
        .collect();
    let mut rel: Vec<f64> = est.iter().map(|(_, _, real, e)| (*e as f64 - *real as f64).abs() / *real as f64).collect();
    rel.sort_by(f64::total_cmp);
    let median = rel[rel.len() / 2];
    println!(
        "register estimate: median error {:.0}%, CTAs/SM off by more than 1.5x for {} of {}",
        median * 100.0,
        far.len(),
        est.len()
    );
    if far.len() as f64 > far_share * est.len() as f64 || median > 0.2 {
        failures.push(format!(
            "register estimates drifted from ptxas (median error {:.0}%); CTAs per SM off by > 1.5x for {} of {}:\n{}",
            median * 100.0,
            far.len(),
            est.len(),
            far.join("\n")
        ));
    }
}

#[test]
fn every_model_kernel_assembles_for_sm80_and_sm90() {
    let kernels = kernels_of("models");
    for split in ["flash_attention_partial", "flash_attention_combine"] {
        assert!(kernels.iter().any(|(_, k)| k.name == split), "no `{split}` kernel among the models' decode kernels");
    }
    check_kernels(kernels, "models/*.toml", &schedules(), "ptx", 0.10, Options::default());
}

/// Schedules with 16-bit storage of activations.
fn narrow_schedules() -> Vec<(&'static str, mixc_passes::Schedule)> {
    use mixc_passes::{Schedule, Storage};
    let mut out = vec![];
    for (tags, storage) in [
        (["bf16-chunk64", "bf16-split64", "bf16-step", "bf16-gpu-decode"], Storage::Bf16),
        (["f16-chunk64", "f16-split64", "f16-step", "f16-gpu-decode"], Storage::F16),
    ] {
        let with = |s: Schedule| Schedule { storage, ..s };
        out.extend([
            (tags[0], with(Schedule::with_chunk(64))),
            (tags[1], with(Schedule { split: true, ..Schedule::with_chunk(64) })),
            (tags[2], with(Schedule::decode())),
            (tags[3], with(Schedule::decode_for(mixc_passes::device::DeviceKind::Gpu))),
        ]);
    }
    out
}

/// bf16 and f16 storage: every kernel of a few mixers (GLA, Gated DeltaNet,
/// attention and sliding-window attention, mLSTM, Mamba2) assembles for
/// sm_80 and sm_90, and the activations move as 2-byte elements.
#[test]
fn narrow_storage_kernels_assemble_for_sm80_and_sm90() {
    let models = ["gla", "gated-deltanet", "llama", "swa", "mlstm", "mamba2"];
    let kernels = kernels_with("models", &|m| models.contains(&m), &narrow_schedules());
    let ptrs =
        |k: &Kernel, d: mixc_ir::DType| k.params.iter().filter(|p| p.kind == mixc_ir::tile::ParamKind::Ptr(d)).count();
    for d in [mixc_ir::DType::BF16, mixc_ir::DType::F16] {
        assert!(kernels.iter().any(|(_, k)| ptrs(k, d) > 0), "no kernel takes a {d} pointer");
    }
    // GLA's kernels with bf16 pointers read (q, k, v, g) and write (o) 2-byte
    // elements (GLA's own list: the shared one names a kernel after the first
    // model that has it, and Gated DeltaNet's output norm is the same kernel).
    let gla: Vec<String> = kernels_with("models", &|m| m == "gla", &narrow_schedules())
        .iter()
        .filter(|(id, k)| id.starts_with("gla/") && ptrs(k, mixc_ir::DType::BF16) > 0)
        .map(|(id, k)| compile(k, Target::Sm90).unwrap_or_else(|e| panic!("{id}: {e}")).ptx)
        .collect();
    let has = |op: &str| {
        gla.iter().flat_map(|p| p.lines()).any(|l| l.contains(op) && (l.contains(".b16") || l.contains(".u16")))
    };
    assert!(has("ld.global"), "no 16-bit global load in GLA's {} bf16 kernels", gla.len());
    assert!(has("st.global"), "no 16-bit global store in GLA's {} bf16 kernels", gla.len());
    // 11 heavy kernels (flash attention, mamba2's and mLSTM's fused chunks,
    // whose 16-bit operands take registers the estimate does not count) are
    // off here: 11 of 140 distinct kernels (7.9%) since elementwise chains
    // fuse into their consumers; 12% until the estimate gets a term for
    // 16-bit operands.
    check_kernels(
        kernels,
        "a few models with bf16/f16 storage",
        &narrow_schedules(),
        "ptx-narrow",
        0.12,
        Options::default(),
    );
}

/// The register tier: with bf16 dots, the kernels it takes (attention's
/// prefill and decode kernels of every attention model, linear attention's
/// outputs) compile there, use `ldmatrix` and `mma`, and assemble for sm_80
/// and sm_90 without spills; with tf32x3 dots, or `register_tiles` off, the
/// same kernels stay in the shared-memory tier; kernels it does not take
/// (a chunked recurrence's `cumsum`) say why.
#[test]
fn register_tier_kernels_assemble_for_sm80_and_sm90() {
    let bf16 = Options { matmul: Matmul::Bf16, warp_rows: 16, ..Options::default() };
    let all = kernels_of("models");
    let (taken, not): (Vec<_>, Vec<_>) =
        all.into_iter().partition(|(_, k)| mixc_backend_ptx::register_tier(k, Matmul::Bf16).is_ok());
    for name in ["flash_attention", "flash_attention_partial"] {
        assert!(taken.iter().any(|(_, k)| k.name == name), "the register tier takes no `{name}` kernel");
    }
    // The test models' recurrences (Dk = 16) would hold their state in one
    // warp: refused, saying why.
    let (id, sgla) = not.iter().find(|(id, _)| id == "simple-gla/sgla/chunk64/o_fused").expect("simple GLA fused");
    let why = mixc_backend_ptx::register_tier(sgla, Matmul::Bf16).expect_err("the one-warp recurrence");
    assert!(why.contains("fewer than 64"), "{id}: {why}");
    let (id, k) = taken.iter().find(|(_, k)| k.name == "flash_attention").expect("checked above");
    let p = compile_with(k, Target::Sm90, bf16).unwrap_or_else(|e| panic!("{id}: {e}"));
    assert_eq!(p.tier, Tier::Registers, "{id}");
    assert!(p.ptx.contains("ldmatrix.sync.aligned.m8n8.x4.trans"), "{id}: no transposed ldmatrix");
    assert!(p.ptx.contains("mma.sync.aligned.m16n8k16"), "{id}: no bf16 mma");
    assert!(p.ptx.contains("shfl.sync.bfly"), "{id}: no row reduction across lanes");
    assert_eq!(compile(k, Target::Sm90).unwrap_or_else(|e| panic!("{id}: {e}")).tier, Tier::Shared, "{id} tf32x3");
    let off = Options { register_tiles: false, ..bf16 };
    assert_eq!(compile_with(k, Target::Sm90, off).unwrap_or_else(|e| panic!("{id}: {e}")).tier, Tier::Shared);
    // Two CTAs per SM: the queries staged in shared memory (more `ldmatrix`,
    // fewer registers); it assembles.
    let two = compile_with(k, Target::Sm90, Options { ctas_per_sm: 2, ..bf16 }).unwrap_or_else(|e| panic!("{id}: {e}"));
    assert_eq!(two.tier, Tier::Registers, "{id} at 2 CTAs per SM");
    let ldmatrix = |ptx: &str| ptx.matches("ldmatrix").count();
    assert!(ldmatrix(&two.ptx) > ldmatrix(&p.ptx), "{id}: the queries are not read from shared memory");
    if let Some(ptxas) = ptxas() {
        let file = target_dir().join("ptx-registers-two-ctas.ptx");
        std::fs::write(&file, &two.ptx).unwrap();
        assemble(&ptxas, &file, "sm_90").unwrap_or_else(|e| panic!("{id} at 2 CTAs per SM: {e}"));
    }
    // 32 rows a warp: half the threads, each B fragment read once for two
    // `m16` tiles (so fewer transposed `ldmatrix` per `mma`), the queries
    // staged; it assembles.
    let wide = compile_with(k, Target::Sm90, Options { warp_rows: 32, ..bf16 }).unwrap_or_else(|e| panic!("{id}: {e}"));
    assert_eq!(wide.tier, Tier::Registers, "{id} at 32 rows a warp");
    assert_eq!(wide.threads * 2, p.threads, "{id}: 32 rows a warp is half the warps");
    let per_mma = |ptx: &str| {
        ptx.matches("ldmatrix.sync.aligned.m8n8.x4.trans").count() as f64
            / ptx.matches("mma.sync.aligned.m16n8k16").count() as f64
    };
    assert!(per_mma(&wide.ptx) < per_mma(&p.ptx), "{id}: B fragments are not shared by the warp's two tiles");
    if let Some(ptxas) = ptxas() {
        let file = target_dir().join("ptx-registers-warp-rows-32.ptx");
        std::fs::write(&file, &wide.ptx).unwrap();
        assemble(&ptxas, &file, "sm_90").unwrap_or_else(|e| panic!("{id} at 32 rows a warp: {e}"));
    }
    // By default the backend takes 32 rows where two tiles fit: the anchors'
    // attention (D = 128) at q128 k32, not at q128 k64.
    let blocks =
        |q: u32, k: u32| mixc_passes::Schedule { block_q: q, block_k: k, ..mixc_passes::Schedule::with_chunk(64) };
    for (q, k, threads) in [(128, 32, 128), (128, 64, 256)] {
        let scheds = [("blocks", blocks(q, k))];
        let anchors = kernels_with("models/bench", &|m| m == "anchors", &scheds);
        let (id, fa) = anchors.iter().find(|(_, k)| k.name == "flash_attention").expect("the anchors' attention");
        let auto = Options { warp_rows: 0, ..bf16 };
        let p = compile_with(fa, Target::Sm90, auto).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!((p.tier, p.threads), (Tier::Registers, threads), "{id} at q{q} k{k}");
    }
    let odd = Options { warp_rows: 24, ..bf16 };
    assert_eq!(compile_with(k, Target::Sm90, odd).unwrap_or_else(|e| panic!("{id}: {e}")).tier, Tier::Shared);
    for (id, k) in &taken {
        let p = compile_with(k, Target::Sm90, bf16).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(p.tier, Tier::Registers, "{id}: taken by the analysis but emitted in the shared tier");
    }
    // As compiled by default (32 rows a warp where the backend chooses it).
    let auto = Options { warp_rows: 0, ..bf16 };
    check_kernels(taken, "the register tier's kernels of models/*.toml", &schedules(), "ptx-registers", 0.5, auto);
}

/// Chunked recurrences in the register tier: the anchors' (Dk = Dv = 128)
/// linear attention and simple GLA, fused at chunk 64 in value blocks of 32
/// and 64, hold the `[128, block]` state over 4 warps (two `m16` tiles
/// each), stage it for the chunk's `q·S`, read the keys' transpose with
/// `ldmatrix.trans` for the state update, keep simple GLA's cumulative
/// decays in shared memory (a warp's `shfl` scan), and assemble without
/// spills; at chunk 32 in blocks of 64 they are refused.
#[test]
fn chunked_recurrences_take_the_register_tier() {
    use mixc_passes::Schedule;
    let bf16 = Options { matmul: Matmul::Bf16, warp_rows: 0, ..Options::default() };
    let scheds = [
        ("c64v32", Schedule { block_v: 32, ..Schedule::with_chunk(64) }),
        ("c64v64", Schedule { block_v: 64, ..Schedule::with_chunk(64) }),
    ];
    let fused: Vec<(String, Kernel)> = kernels_with("models/bench", &|m| m == "anchors", &scheds)
        .into_iter()
        .filter(|(id, k)| k.name == "o_fused" && (id.contains("/linear_attn/") || id.contains("/simple_gla/")))
        .collect();
    assert_eq!(fused.len(), 4, "{:?}", fused.iter().map(|f| &f.0).collect::<Vec<_>>());
    // Simple GLA in blocks of 64 holds too much at once (it spilled 48
    // bytes): the shared-memory tier, saying why.
    let (wide, fused): (Vec<_>, Vec<_>) = fused.into_iter().partition(|(id, _)| id.contains("/simple_gla/c64v64/"));
    for (id, k) in &wide {
        let why = mixc_backend_ptx::register_tier(k, Matmul::Bf16).expect_err("simple GLA in blocks of 64");
        assert!(why.contains("held tiles reach"), "{id}: {why}");
    }
    // At chunk 32 two warps would hold the state (a lane's peak of 256–384
    // elements spilled 200–300 bytes): the shared-memory tier, saying why.
    let wide = [("c32v64", Schedule { block_v: 64, ..Schedule::with_chunk(32) })];
    for (id, k) in kernels_with("models/bench", &|m| m == "anchors", &wide) {
        if k.name == "o_fused" && (id.contains("/linear_attn/") || id.contains("/simple_gla/")) {
            let why = mixc_backend_ptx::register_tier(&k, Matmul::Bf16).expect_err("chunk 32 in blocks of 64");
            assert!(why.contains("fewer than 64"), "{id}: {why}");
        }
    }
    for (id, k) in &fused {
        let p = compile_with(k, Target::Sm90, bf16).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!((p.tier, p.threads), (Tier::Registers, 128), "{id}");
        if id.contains("/simple_gla/") {
            assert!(p.ptx.contains("shfl.sync.up"), "{id}: the decays' cumsum is not a warp scan");
        }
        // Keys as the right operand of q·kᵀ (untransposed ldmatrix) and as
        // the transposed left operand of kᵀ·v (transposed): both kinds.
        assert!(p.ptx.contains("ldmatrix.sync.aligned.m8n8.x4.trans"), "{id}: no transposed ldmatrix");
        assert!(
            p.ptx.contains("ldmatrix.sync.aligned.m8n8.x4.shared")
                || p.ptx.contains("ldmatrix.sync.aligned.m8n8.x4.b16"),
            "{id}: no ldmatrix"
        );
        assert!(p.ptx.contains("mma.sync.aligned.m16n8k16"), "{id}: no bf16 mma");
    }
    check_kernels(fused, "the anchors' fused linear attention and simple GLA", &scheds, "ptx-recurrences", 0.5, bf16);
}

#[test]
fn kernels_use_the_ptx_kernel_convention() {
    let kernels = kernels_of("models");
    let (id, k) = kernels.iter().find(|(id, _)| id.starts_with("gla/")).expect("a gla kernel");
    for t in [Target::Sm80, Target::Sm90, Target::Sm90a] {
        let p = compile(k, t).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert!(
            p.llvm_ir.contains(&format!("define ptx_kernel void @{}(", p.name)),
            "{id}: no ptx_kernel definition in\n{}",
            p.llvm_ir
        );
        assert!(p.ptx.contains(&format!(".entry {}(", p.name)), "{id}: no .entry in\n{}", p.ptx);
        assert!(p.ptx.contains(&format!(".target {}", t.name())), "{id}: wrong .target");
        assert!(p.ptx.contains(&format!(".maxntid {}", p.threads)), "{id}: no .maxntid");
    }
}

/// With `MIXC_PTX_BUNDLE=DIR`, writes every mixer of `models/*.toml` under
/// each schedule as a bundle for `tests/gpu_check.py` on a GPU machine: the
/// sm_90 PTX of each kernel, the launches, random inputs (B = 2, T = 45 and
/// T = 1, with initial states) and the tile interpreter's f32 outputs.
#[test]
fn gpu_bundle() {
    use mixc_ir::tile::{interp::Precision, Arg, BufferRole};
    let Some(dir) = std::env::var_os("MIXC_PTX_BUNDLE").map(PathBuf::from) else {
        return;
    };
    std::fs::create_dir_all(&dir).unwrap();
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(root().join("models")).unwrap().filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.retain(|p| p.extension().is_some_and(|e| e == "toml"));
    files.sort();
    let mut ptx_names: BTreeMap<String, String> = BTreeMap::new();
    let mut cases = vec![];
    let write_f32 = |path: &Path, data: &[f64]| {
        let bytes: Vec<u8> = data.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect();
        std::fs::write(path, bytes).unwrap();
    };
    let write_i32 = |path: &Path, data: &[f64]| {
        let bytes: Vec<u8> = data.iter().flat_map(|x| (*x as i32).to_le_bytes()).collect();
        std::fs::write(path, bytes).unwrap();
    };
    for f in files {
        let model = f.file_stem().unwrap().to_string_lossy().to_string();
        let file = mixc_ir::model::load_model(&f).unwrap();
        for name in file.distinct_mixers() {
            let g = mixc_ir::mixers::build(&name, &file.mixer[&name]).unwrap();
            for (sn, s) in schedules() {
                let p = mixc_passes::lower(&g, &s).unwrap();
                let mut compiled = vec![];
                for k in &p.kernels {
                    let c = compile(k, Target::Sm90).unwrap_or_else(|e| panic!("{model}/{name}/{sn}: {e}"));
                    let n = ptx_names.len();
                    let file = ptx_names.entry(c.ptx.clone()).or_insert_with(|| format!("k{n}.ptx")).clone();
                    compiled.push((c, file));
                }
                // The GPU decode step also against a cache of several key splits.
                let sizes_of =
                    if sn == "gpu-decode" { &[(45usize, 0usize), (1, 0), (1, 1100)][..] } else { &[(45, 0), (1, 0)] };
                for &(t, cache) in sizes_of {
                    let id = if cache == 0 {
                        format!("{model}__{name}__{sn}__T{t}")
                    } else {
                        format!("{model}__{name}__{sn}__T{t}S{cache}")
                    };
                    let sizes = BTreeMap::from([("B", 2usize), ("T", t), ("S", cache)]);
                    let inputs = mixc_ir::mixers::random_inputs(&g, &sizes, 7 + t as u64, true);
                    let (outs, _) = match p.run(&inputs, Precision::F32) {
                        Ok(r) => r,
                        Err(e) => panic!("{id}: interpreter: {e}"),
                    };
                    let dims = p.bind(&inputs).unwrap();
                    let mut bufs = vec![];
                    for (bi, b) in p.buffers.iter().enumerate() {
                        let n: u64 = b.shape.iter().map(|c| c.eval(&dims)).product();
                        let int = !b.dtype.is_float();
                        let mut entry = serde_json::json!({"name": b.name, "n": n, "int": int});
                        let data = match &b.role {
                            BufferRole::Input { name, .. } => inputs.get(name).map(|t| t.data.clone()),
                            _ => None,
                        };
                        if let Some(d) = data {
                            let fname = format!("{id}__in{bi}.bin");
                            if int {
                                write_i32(&dir.join(&fname), &d)
                            } else {
                                write_f32(&dir.join(&fname), &d)
                            }
                            entry["input"] = fname.into();
                        }
                        if let BufferRole::Output(o) = &b.role {
                            let fname = format!("{id}__out{bi}.bin");
                            let d = &outs[o].data;
                            if int {
                                write_i32(&dir.join(&fname), d)
                            } else {
                                write_f32(&dir.join(&fname), d)
                            }
                            entry["expected"] = fname.into();
                        }
                        bufs.push(entry);
                    }
                    let mut launches = vec![];
                    for l in &p.launches {
                        let (c, file) = &compiled[l.kernel];
                        let grid: Vec<u64> = l.grid.iter().map(|c| c.eval(&dims)).collect();
                        let args: Vec<serde_json::Value> = l
                            .args
                            .iter()
                            .map(|a| match a {
                                Arg::Buffer(b) => serde_json::json!({"buf": b}),
                                Arg::Size(c) => serde_json::json!({"i32": c.eval(&dims)}),
                                Arg::Float(x) => serde_json::json!({"f32": x}),
                            })
                            .collect();
                        launches.push(serde_json::json!({
                            "ptx": file, "entry": c.name, "grid": grid, "threads": c.threads,
                            "shared": c.shared_bytes, "scratch": c.scratch_bytes, "args": args,
                        }));
                    }
                    cases.push(serde_json::json!({"case": id, "buffers": bufs, "launches": launches}));
                }
            }
        }
    }
    for (ptx, file) in &ptx_names {
        std::fs::write(dir.join(file), ptx).unwrap();
    }
    std::fs::write(dir.join("manifest.json"), serde_json::to_string_pretty(&cases).unwrap()).unwrap();
    println!("bundle: {} cases, {} kernels in {}", cases.len(), ptx_names.len(), dir.display());
}

/// The math library, run on the host through LLVM's JIT, against f64.
#[test]
fn math_library_is_accurate() {
    use inkwell::context::Context;
    use inkwell::memory_buffer::MemoryBuffer;
    use inkwell::targets::{InitializationConfig, Target as LlvmTarget};
    use inkwell::OptimizationLevel;
    LlvmTarget::initialize_native(&InitializationConfig::default()).unwrap();
    let ir = mixc_backend_ptx::math_library_ir().unwrap();
    let cx = Context::create();
    let md = cx.create_module_from_ir(MemoryBuffer::create_from_memory_range_copy(ir.as_bytes(), "math")).unwrap();
    let ee = md.create_jit_execution_engine(OptimizationLevel::Default).unwrap();
    type F1 = unsafe extern "C" fn(f32) -> f32;
    type F2 = unsafe extern "C" fn(f32, f32) -> f32;
    let f1 = |name: &str| unsafe { ee.get_function::<F1>(name).unwrap() };
    fn sigmoid(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }
    fn softplus(x: f64) -> f64 {
        if x > 0.0 {
            x + (-x).exp().ln_1p()
        } else {
            x.exp().ln_1p()
        }
    }
    // (name, reference, inputs lo..hi, tolerance in relative error, absolute floor)
    type Case = (&'static str, fn(f64) -> f64, f64, f64, f64, f64);
    let cases: Vec<Case> = vec![
        ("mixc_exp", f64::exp, -103.0, 88.0, 3e-7, 1.5e-45),
        ("mixc_log", f64::ln, 1e-30, 1e30, 3e-7, 0.0),
        ("mixc_log", f64::ln, 0.5, 2.0, 3e-7, 1e-8),
        ("mixc_log1p", f64::ln_1p, -0.9, 10.0, 4e-7, 0.0),
        ("mixc_expm1", f64::exp_m1, -20.0, 20.0, 5e-7, 0.0),
        ("mixc_sigmoid", sigmoid, -80.0, 80.0, 4e-7, 0.0),
        ("mixc_softplus", softplus, -80.0, 80.0, 5e-7, 0.0),
        ("mixc_logsigmoid", |x| -softplus(-x), -80.0, 80.0, 5e-7, 0.0),
        ("mixc_silu", |x| x * sigmoid(x), -80.0, 80.0, 5e-7, 0.0),
        ("mixc_elu", |x| if x > 0.0 { x } else { x.exp_m1() }, -20.0, 20.0, 5e-7, 0.0),
        ("mixc_tanh", f64::tanh, -12.0, 12.0, 6e-7, 0.0),
        ("mixc_sin", f64::sin, -1e4, 1e4, 0.0, 4e-7),
        ("mixc_cos", f64::cos, -1e4, 1e4, 0.0, 4e-7),
        ("mixc_sin", f64::sin, -3.0, 3.0, 3e-7, 1e-9),
    ];
    let mut report = vec![];
    for (name, reference, lo, hi, rtol, atol) in cases {
        let f = f1(name);
        let mut worst = 0.0f64;
        for i in 0..=200_000 {
            let t = i as f64 / 200_000.0;
            // Log-spaced for wide positive ranges, linear otherwise.
            let x = if lo > 0.0 && hi / lo > 1e3 { lo * (hi / lo).powf(t) } else { lo + (hi - lo) * t };
            let x = x as f32;
            let got = unsafe { f.call(x) } as f64;
            let want = reference(x as f64);
            let err = (got - want).abs();
            let allowed = rtol * want.abs() + atol;
            assert!(err <= allowed, "{name}({x}) = {got}, want {want} (error {err:e}, allowed {allowed:e})");
            worst = worst.max(err / (want.abs() + atol).max(f64::MIN_POSITIVE));
        }
        report.push(format!("{name} on [{lo}, {hi}]: worst {worst:.2e}"));
    }
    let pow = unsafe { ee.get_function::<F2>("mixc_pow").unwrap() };
    for (a, b) in [(10000.0f32, -0.25f32), (2.0, -5.0), (2.0, 10.5), (-2.0, 3.0), (-2.0, 2.0), (0.5, 7.0), (3.0, 0.0)] {
        let got = unsafe { pow.call(a, b) } as f64;
        let want = (a as f64).powf(b as f64);
        assert!((got - want).abs() <= 6e-7 * want.abs(), "pow({a}, {b}) = {got}, want {want}");
    }
    assert!(unsafe { pow.call(-2.0, 0.5) }.is_nan(), "pow(-2, 0.5) should be NaN");
    for (name, x, want) in [
        ("mixc_exp", f32::INFINITY, f32::INFINITY),
        ("mixc_exp", f32::NEG_INFINITY, 0.0),
        ("mixc_exp", 100.0, f32::INFINITY),
        ("mixc_log", 0.0, f32::NEG_INFINITY),
        ("mixc_log", f32::INFINITY, f32::INFINITY),
        ("mixc_sigmoid", f32::INFINITY, 1.0),
        ("mixc_sigmoid", f32::NEG_INFINITY, 0.0),
        ("mixc_tanh", 50.0, 1.0),
        ("mixc_tanh", -50.0, -1.0),
        ("mixc_softplus", 200.0, 200.0),
    ] {
        let got = unsafe { f1(name).call(x) };
        assert_eq!(got, want, "{name}({x})");
    }
    for name in ["mixc_exp", "mixc_log", "mixc_sin", "mixc_tanh", "mixc_sigmoid"] {
        assert!(unsafe { f1(name).call(f32::NAN) }.is_nan(), "{name}(NaN)");
    }
    assert!(unsafe { f1("mixc_log").call(-1.0) }.is_nan());
    println!("{}", report.join("\n"));
}

/// `exp` on the hardware's `ex2.approx` (the default) or the library's
/// polynomial (`fast_exp: false`): both forms assemble, and each uses what
/// it says.
#[test]
fn exp_forms_assemble() {
    use mixc_backend_ptx::{compile_with, Options};
    let kernels = kernels_of("models");
    let (id, k) = kernels.iter().find(|(id, _)| id.starts_with("gla/")).expect("a gla kernel");
    let fast = compile_with(k, Target::Sm90, Options::default()).unwrap_or_else(|e| panic!("{id}: {e}"));
    let precise = compile_with(k, Target::Sm90, Options { fast_exp: false, ..Options::default() })
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(Options::default().fast_exp);
    assert!(fast.ptx.contains("ex2.approx"), "{id}: the default exp is not ex2.approx");
    assert!(!precise.ptx.contains("ex2.approx"), "{id}: the precise exp uses ex2.approx");
    let Some(ptxas) = ptxas() else { return };
    for (tag, p) in [("fast", &fast), ("precise", &precise)] {
        let file = target_dir().join(format!("exp-forms-{tag}.ptx"));
        std::fs::write(&file, &p.ptx).unwrap_or_else(|e| panic!("{e}"));
        assemble(&ptxas, &file, "sm_90").unwrap_or_else(|e| panic!("{tag}: {e}"));
    }
}

/// mLSTM in the register tier (the slot forms, [`Options::slot_forms`]):
/// its running maximum `[1, 1]` and normalizer
/// `[128, 1]` are carried in shared-memory slots (the normalizer is read
/// along the keys by `q·n`, a matrix-vector `dot` held as rows), stored by
/// all threads at the end; fused at chunk 64 in value blocks of 32 and split
/// (states, then outputs) in blocks of 64, without spills. In blocks of 64
/// the fused kernel holds too much at once and is refused.
#[test]
fn mlstm_takes_the_register_tier() {
    use mixc_passes::Schedule;
    let bf16 = Options { matmul: Matmul::Bf16, warp_rows: 0, slot_forms: true, ..Options::default() };
    let scheds = [
        ("c64v32", Schedule { block_v: 32, ..Schedule::with_chunk(64) }),
        ("c64v64s", Schedule { block_v: 64, split: true, ..Schedule::with_chunk(64) }),
        ("c64v64", Schedule { block_v: 64, ..Schedule::with_chunk(64) }),
    ];
    let mlstm: Vec<(String, Kernel)> = kernels_with("models/bench", &|m| m == "anchors", &scheds)
        .into_iter()
        .filter(|(id, _)| id.contains("/mlstm/"))
        .collect();
    let names: Vec<&str> = mlstm.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(names.len(), 4, "{names:?}");
    let (wide, taken): (Vec<_>, Vec<_>) = mlstm.into_iter().partition(|(id, _)| id.contains("/c64v64/"));
    for (id, k) in &wide {
        let why = mixc_backend_ptx::register_tier_with(k, Matmul::Bf16, true).expect_err("mLSTM fused in blocks of 64");
        assert!(why.contains("held tiles reach"), "{id}: {why}");
    }
    for (id, k) in &taken {
        // Without the slot forms: the shared-memory tier, saying why.
        let why = mixc_backend_ptx::register_tier_with(k, Matmul::Bf16, false).expect_err("no slot_forms");
        assert!(why.contains("carried") || why.contains("dot operand"), "{id}: {why}");
        let p = compile_with(k, Target::Sm90, bf16).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(p.tier, Tier::Registers, "{id}");
        if id.ends_with("o_fused") || id.ends_with("o_outputs") {
            // `q·n`: each lane's columns, then the row's four lanes.
            assert!(p.ptx.contains("shfl.sync.bfly"), "{id}: no row sum of q·n");
            assert!(p.ptx.contains("mma.sync.aligned.m16n8k16"), "{id}: no bf16 mma");
        }
    }
    check_kernels(taken, "the anchors' mLSTM in the register tier", &scheds, "ptx-mlstm", 0.5, bf16);
}
