//! Dumps, as CSV, the cost model's per-program counts of every kernel of every
//! feasible schedule candidate, with the GPU backend's plan of each kernel
//! (threads, shared memory, spill), for refitting the GPU latency terms
//! (`bench/fit/fit_latency.py`):
//!
//! ```sh
//! cargo run --release --example cost_features -- models/bench/anchors.toml \
//!     1,8,2048 1,8,8192 8,16,2048 8,16,8192 > features.csv
//! ```
//!
//! Each point is `B,H,T`; `H` rewrites the file's `heads = ...` lines.
//! `MATMUL=bf16` prices `dot`s as the bf16 tensor-core mode (default tf32x3),
//! `STORAGE=bf16` every candidate with bf16 activations (as `mixc bench
//! --storage bf16` runs them; default f32).

use mixc_passes::cost::price_with;
use mixc_passes::device::DeviceProfile;
use mixc_passes::search::search_with;
use std::collections::BTreeMap;
use std::error::Error;
use std::path::Path;

const MIXERS: [&str; 5] = ["gla", "simple_gla", "gated_deltanet", "mlstm", "attention"];

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((file, points)) = args.split_first() else {
        return Err("usage: cost_features MODEL.toml B,H,T [B,H,T ...]".into());
    };
    // `PROFILE=cpu` prices on the built-in CPU profile (no backend plan).
    let dev = match std::env::var("PROFILE").as_deref() {
        Ok("cpu") => DeviceProfile::cpu_default(),
        _ => DeviceProfile::h200(),
    };
    let matmul = std::env::var("MATMUL").unwrap_or_else(|_| mixc::pricing::DEFAULT_MATMUL.into());
    let resources = mixc::pricing::kernel_resources_for(&dev, &matmul)?;
    let storage: mixc_passes::Storage = match std::env::var("STORAGE") {
        Ok(s) => s.parse().map_err(|e| format!("STORAGE={s}: {e}"))?,
        Err(_) => mixc_passes::Storage::F32,
    };
    let src = std::fs::read_to_string(file)?;
    println!("mixer,B,H,T,schedule,kernel,programs,ops_pp,elems_pp,loads_pp,dots_pp,mma_pw,shared,threads,scratch,spilled_share,registers,pred_s,compute_s,matmul_s,memory_s");
    for point in points {
        let [b, h, t] = parse_point(point)?;
        let path = std::env::temp_dir().join(format!("mixc-cost-features-h{h}.toml"));
        std::fs::write(&path, src.replace("heads = 16", &format!("heads = {h}")))?;
        let free: BTreeMap<String, u64> = [("B".to_string(), b), ("T".to_string(), t)].into_iter().collect();
        for g in mixc::graphs_of_file(Path::new(&path))?.iter().filter(|g| MIXERS.contains(&g.name.as_str())) {
            for c in search_with(&g.graph, &free, &dev, &*resources)?.iter().filter(|c| c.rejected.is_none()) {
                let schedule = mixc_passes::Schedule { storage, ..c.schedule };
                let prog = mixc::lower_graph(&g.name, &g.graph, &schedule)?;
                let cost = price_with(&prog, &free, &dev, &*resources);
                let label = mixc::bench::describe(&schedule, &g.graph);
                for (launch, k) in prog.launches.iter().zip(&cost.kernels) {
                    let plan = prog.kernels.get(launch.kernel).and_then(&resources);
                    let (shared, threads, scratch, spilled, registers) = plan.map_or((0, 0, 0, 0.0, 0), |r| {
                        (r.shared_bytes, r.threads, r.spill_bytes, r.spilled_share, r.registers)
                    });
                    println!(
                        "{},{b},{h},{t},\"{label}\",{},{},{},{},{},{},{},{shared},{threads},{scratch},{spilled},{registers},{},{},{},{}",
                        g.name,
                        k.name,
                        k.programs,
                        k.ops_per_program,
                        k.elems_per_program,
                        k.loads_per_program,
                        k.dots_per_program,
                        k.mma_per_warp,
                        k.time_s,
                        k.compute_s,
                        k.matmul_s,
                        k.memory_s
                    );
                }
            }
        }
    }
    Ok(())
}

fn parse_point(p: &str) -> Result<[u64; 3], Box<dyn Error>> {
    let v: Vec<u64> = p.split(',').map(str::parse).collect::<Result<_, _>>()?;
    match v[..] {
        [b, h, t] => Ok([b, h, t]),
        _ => Err(format!("point `{p}`: expected B,H,T").into()),
    }
}
