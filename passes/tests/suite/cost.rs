//! The cost model counts work from the tile program itself and its pick moves
//! where it should.

use super::recurrence::recurrence_graph;
use mixc_ir::ops::Transition;
use mixc_passes::cost::{price, price_with, Bound, KernelResources};
use mixc_passes::device::{DeviceKind, DeviceProfile};
use mixc_passes::search::search;
use mixc_passes::{lower, Schedule};
use std::collections::BTreeMap;

fn free(b: u64, t: u64) -> BTreeMap<String, u64> {
    BTreeMap::from([("B".to_string(), b), ("T".to_string(), t)])
}

/// FLOPs and bytes of the fused scalar-decay program, against the counts
/// derived by hand from the kernel's structure.
#[test]
fn counted_work_matches_hand_derived_values() {
    let (b, h, dk, dv, t, c) = (2u64, 4u64, 64u64, 32u64, 1024u64, 64u64);
    let g = recurrence_graph(Transition::ScalarDecay, false, true, h, dk, dv);
    let prog = lower(&g, &Schedule::with_chunk(c as u32)).unwrap();
    let dev = DeviceProfile::h100();
    let cost = price(&prog, &free(b, t), &dev);
    assert_eq!(cost.kernels.len(), 1);
    let k = &cost.kernels[0];
    assert_eq!(k.programs, b * h);
    // Matrix work: 2·B·H·L·(c·dk + c·dv + 2·dk·dv).
    let flops = 2 * b * h * t * (c * dk + c * dv + 2 * dk * dv);
    assert_eq!(k.matmul_flops, flops as f64);
    // Memory: every chunk loads q, k, v [c, d] and g [c] once (the state
    // update's loads are the outputs' ones, shared by the simplifier) and
    // stores o [c, dv]; the state is loaded and stored once per program. f32
    // storage: 4 bytes an element.
    let chunks = t / c;
    let per_chunk_loads = 2 * c * dk + c * dv + c;
    let loads = b * h * (chunks * per_chunk_loads + dk * dv) * 4;
    let stores = b * h * (chunks * c * dv + dk * dv) * 4;
    assert_eq!(k.bytes_requested, loads as f64);
    // From DRAM: each input once (q, k, v, g and the initial state).
    let inputs = (b * t * h * (2 * dk + dv + 1) + b * h * dk * dv) * 4;
    assert_eq!(k.bytes_loaded, inputs as f64);
    assert_eq!(k.bytes_stored, stores as f64);

    // bf16 activations: q, k, v, g and o take 2 bytes on the GPU, the state 4.
    let bf16 = lower(&g, &Schedule { storage: mixc_passes::Storage::Bf16, ..Schedule::with_chunk(c as u32) }).unwrap();
    let k16 = price(&bf16, &free(b, t), &dev).kernels[0].clone();
    let activations = b * h * chunks * per_chunk_loads;
    assert_eq!(k16.bytes_requested, (activations * 2 + b * h * dk * dv * 4) as f64);
    assert_eq!(k16.bytes_stored, (b * h * chunks * c * dv * 2 + b * h * dk * dv * 4) as f64);
    // On the CPU every buffer is 32-bit words, whatever the storage.
    let cpu = DeviceProfile::cpu_default();
    assert_eq!(price(&bf16, &free(b, t), &cpu).kernels[0].bytes_requested, loads as f64);
}

/// Split wins when B·H is small against the SM count (the fused kernel has
/// one program per head); fused wins when B·H fills the device.
#[test]
fn split_wins_when_heads_are_few_and_fused_when_many() {
    let g = recurrence_graph(Transition::KeyDecay, false, true, 4, 128, 128);
    let dev = DeviceProfile::h100();
    let few = search(&g, &free(2, 8192), &dev).unwrap();
    assert!(few[0].schedule.split, "B·H = 8: the pick should split, got {:?}", few[0].schedule);
    let many = search(&g, &free(128, 2048), &dev).unwrap();
    assert!(!many[0].schedule.split && !many[0].schedule.step, "B·H = 512: fused, got {:?}", many[0].schedule);
    // One token: the token-by-token form.
    let decode = search(&g, &free(64, 1), &dev).unwrap();
    assert!(decode[0].schedule.step, "decode: the step form, got {:?}", decode[0].schedule);
}

/// Causal flash attention's counted matrix work is the anchors' causal count
/// `2·B·H·T²·D` plus the diagonal blocks' half-empty tiles.
#[test]
fn causal_attention_flops_match_the_anchor_count() {
    let g = super::util::build("kind = \"attention\"\nheads = 16\nhead_dim = 128\n");
    let (b, h, t, d) = (2u64, 16u64, 4096u64, 128u64);
    let sched = Schedule { block_q: 64, block_k: 64, ..Schedule::default() };
    let prog = lower(&g, &sched).unwrap();
    let cost = price(&prog, &free(b, t), &DeviceProfile::h100());
    let flash = cost.kernels.iter().find(|k| k.name.contains("flash")).expect("a flash kernel");
    let anchor = (2 * b * h * t * t * d) as f64;
    let ratio = flash.matmul_flops / anchor;
    assert!((1.0..1.03).contains(&ratio), "counted {} vs anchor {anchor}: ratio {ratio}", flash.matmul_flops);
}

/// On a CPU the step form's one-row readout `q·S` and rank-1 update `kᵀv` run
/// as vector FMAs: priced on the vector unit, unpadded (the granularity does
/// not change them), the readout at one FMA per state element and the rank-1
/// update at twice that (each accumulator vector is also stored).
#[test]
fn cpu_prices_one_row_and_rank1_dots_as_unpadded_vector_fmas() {
    let (b, h, dk, dv, t) = (1u64, 4u64, 64u64, 64u64, 256u64);
    let g = recurrence_graph(Transition::ScalarDecay, false, true, h, dk, dv);
    let prog = lower(&g, &Schedule::decode()).unwrap();
    // A matrix unit so fast that only the vector unit's share is left.
    let dev = DeviceProfile { matmul_flops: 1e30, launch_s: 0.0, ..DeviceProfile::cpu_default() };
    let coarse = DeviceProfile { mma_granularity: 16, ..dev.clone() };
    let cost = price(&prog, &free(b, t), &dev);
    assert_eq!(cost.kernels.len(), 1);
    let k = &cost.kernels[0];
    // Two dots per token and head, each 2·dk·dv FLOPs: rank-1 and readout.
    let dots = 2.0 * (2 * b * h * t * dk * dv) as f64;
    assert_eq!(k.matmul_flops, dots);
    let priced = k.compute_s * dev.vector_flops;
    // Rank-1 at 2×, readout at 1×, plus the elementwise work (a transcendental
    // at up to 20 operations an element).
    let floor = 1.5 * dots + k.vector_flops;
    assert!(priced >= floor * (1.0 - 1e-9), "priced {priced:e} below {floor:e}");
    assert!(priced <= 1.5 * dots + 20.0 * k.vector_flops, "priced {priced:e}");
    assert_eq!(price(&prog, &free(b, t), &coarse).kernels[0].compute_s, k.compute_s, "padded to the granularity");
    // The GPU still pads them: a one-row dot costs as much as a 16-row one.
    let gpu = price(&prog, &free(b, t), &DeviceProfile::h100()).kernels[0].compute_s;
    let gpu_floor = 16.0 * dots / DeviceProfile::h100().matmul_flops;
    assert!(gpu >= gpu_floor, "GPU {gpu:e} < {gpu_floor:e}");
}

/// Several tokens a pass of the state (`Schedule::steps(n)`): the CPU backend
/// keeps the intermediate states in registers, so only the last update of a
/// pass pays for storing its state: per token, `(n − 1)·1 + 2` rank-1 units
/// over `n` instead of 2, the readouts unchanged. The search tries them on the
/// CPU for diagonal recurrences only (delta rules step one token at a time)
/// and never on a GPU.
#[test]
fn cpu_prices_chained_token_updates_without_their_stores() {
    let (b, h, dk, dv, t) = (1u64, 4u64, 64u64, 64u64, 256u64);
    let g = recurrence_graph(Transition::ScalarDecay, false, true, h, dk, dv);
    let dev = DeviceProfile { matmul_flops: 1e30, launch_s: 0.0, ..DeviceProfile::cpu_default() };
    let dot_units = |n: u32| {
        let prog = lower(&g, &Schedule::steps(n)).unwrap();
        let k = price(&prog, &free(b, t), &dev).kernels[0].clone();
        // Priced vector work per FLOP of one token's dot (the elementwise
        // part is the same whatever n is: T is a multiple of it).
        let per_dot = (2 * b * h * t * dk * dv) as f64;
        k.compute_s * dev.vector_flops / per_dot
    };
    let (one, four, eight) = (dot_units(1), dot_units(4), dot_units(8));
    // Readout 1 + rank-1 2 → readout 1 + rank-1 (3·1 + 2)/4 → (7 + 2)/8.
    let saved = |n: f64| 1.0 - 1.0 / n;
    assert!((one - four - saved(4.0)).abs() < 0.05, "one {one}, four {four}");
    assert!((one - eight - saved(8.0)).abs() < 0.05, "one {one}, eight {eight}");
    // The GPU prices the same dots whatever n is.
    let gpu = |n: u32| {
        let prog = lower(&g, &Schedule::steps(n)).unwrap();
        price(&prog, &free(b, t), &DeviceProfile::h100()).kernels[0].compute_s
    };
    assert_eq!(gpu(1), gpu(4));
    // The search: a multi-token step on the CPU for GLA-like gates, none
    // tried for a delta rule or on a GPU.
    let tried = |g: &mixc_ir::graph::Graph, kind| {
        mixc_passes::search::enumerate(g, kind).iter().filter(|s| s.step_tokens > 1).count()
    };
    assert_eq!(tried(&g, DeviceKind::Cpu), 2);
    assert_eq!(tried(&g, DeviceKind::Gpu), 0);
    let delta = super::util::build(
        "kind = \"gated_deltanet\"\nheads = 4\ndk = 64\ndv = 64\ngate = { activation = \"mamba\" }\n",
    );
    assert_eq!(tried(&delta, DeviceKind::Cpu), 0);
    let cands = search(&g, &free(b, 2048), &dev).unwrap();
    let rank = |n: u32| cands.iter().position(|c| c.schedule == Schedule::steps(n)).unwrap();
    assert!(rank(8) < rank(1) && rank(4) < rank(1), "ranks {} {} {}", rank(1), rank(4), rank(8));
}

/// The GPU latency term: `waves × per-program time`, the per-program time
/// summed from the profile's terms over the statements one program runs
/// (counted: per chunk, loads of q, k, v and the gate and four `dot`s, plus the
/// initial state's load), waves from the occupancy the kernel's resources allow.
#[test]
fn gpu_latency_term_is_waves_times_the_statements_of_a_program() {
    let (b, h, dk, dv, t, c) = (4u64, 64u64, 128u64, 128u64, 2048u64, 32u64);
    let g = recurrence_graph(Transition::ScalarDecay, false, true, h, dk, dv);
    let prog = lower(&g, &Schedule::with_chunk(c as u32)).unwrap();
    let dev = DeviceProfile::h100();
    let big = KernelResources {
        threads: 256,
        shared_bytes: 150 * 1024,
        spill_bytes: 0,
        spilled_share: 0.0,
        registers: 64,
        mma_k: 16,
        mma_passes: 1,
        register_tier: false,
        pipelined: false,
        warp_rows: 0,
    };
    let cost = price_with(&prog, &free(b, t), &dev, &|_| Some(big));
    let k = &cost.kernels[0];
    let chunks = (t / c) as f64;
    assert_eq!(k.loads_per_program, 4.0 * chunks + 1.0, "q, k, v, g per chunk and the initial state");
    assert_eq!(k.dots_per_program, 4.0 * chunks, "q·kᵀ, scores·v, q·S and kᵀ·v per chunk");
    // Their multiply-adds per chunk, in m16n8k16 instructions shared by 8 warps.
    let macs = (c * c * dk + c * c * dv + 2 * c * dk * dv) as f64;
    let mma = chunks * macs / (16.0 * 8.0 * 16.0) / 8.0;
    assert!((k.mma_per_warp - mma).abs() <= 1e-9 * mma, "{} vs {mma}", k.mma_per_warp);
    // 150 KiB of shared memory: one program per SM, B·H = 256 programs on 132 SMs.
    let waves = 2.0;
    let l = dev.latency;
    let program_s = l.op_s * k.ops_per_program
        + l.elem_s * k.elems_per_program
        + l.load_s * k.loads_per_program
        + l.dot_s * k.dots_per_program
        + l.mma_s * k.mma_per_warp;
    assert!((k.latency_s - waves * program_s).abs() <= 1e-12 * k.latency_s, "{} vs {}", k.latency_s, waves * program_s);
    assert_eq!(k.bound(), Bound::Latency, "far from both peaks");
    assert_eq!(k.time_s, k.latency_s + dev.launch_s);

    // Small enough for two programs per SM: one wave.
    let small = KernelResources { shared_bytes: 100 * 1024, ..big };
    let one_wave = price_with(&prog, &free(b, t), &dev, &|_| Some(small)).kernels[0].latency_s;
    assert!((one_wave - program_s).abs() <= 1e-12 * program_s);
    // Registers bind too: 200 a thread (208 allotted) leave room for one
    // 256-thread program per SM, so two waves again.
    let heavy = KernelResources { registers: 200, ..small };
    let two_waves = price_with(&prog, &free(b, t), &dev, &|_| Some(heavy)).kernels[0].latency_s;
    assert!((two_waves - 2.0 * program_s).abs() <= 1e-12 * two_waves);
    // tf32x3 takes six times the instructions of bf16 (half the k per
    // instruction, three products).
    let tf32 = KernelResources { mma_k: 8, mma_passes: 3, ..big };
    let k3 = &price_with(&prog, &free(b, t), &dev, &|_| Some(tf32)).kernels[0];
    assert!((k3.mma_per_warp - 6.0 * mma).abs() <= 1e-9 * mma);
    // Half the tiles spilled to global scratch: elements cost the mean of the two prices.
    let spilled = KernelResources { spill_bytes: 150 * 1024, spilled_share: 0.5, ..big };
    let slow = price_with(&prog, &free(b, t), &dev, &|_| Some(spilled)).kernels[0].latency_s;
    let extra = waves * 0.5 * (l.spilled_elem_s - l.elem_s) * k.elems_per_program;
    assert!((slow - k.latency_s - extra).abs() <= 1e-9 * slow);
    // The register tier: priced by its warps' mma and its threads' copies
    // (not by statements and elements), 2.6× that when its copies are not
    // pipelined; more warps to share a program's copies make it cheaper.
    let piped = KernelResources { register_tier: true, pipelined: true, ..big };
    let fast = price_with(&prog, &free(b, t), &dev, &|_| Some(piped)).kernels[0].latency_s;
    let unpiped = KernelResources { pipelined: false, ..piped };
    let slow = price_with(&prog, &free(b, t), &dev, &|_| Some(unpiped)).kernels[0].latency_s;
    assert!(fast > 0.0 && (slow / fast - 2.6).abs() < 1e-9, "{slow} vs {fast}");
    assert!((fast - k.latency_s).abs() > 1e-3 * fast, "the register tier is priced as the shared one");
    let half = KernelResources { threads: 128, ..piped };
    let fewer = price_with(&prog, &free(b, t), &dev, &|_| Some(half)).kernels[0].latency_s;
    assert!(fewer > fast, "copies shared by fewer threads: {fewer} vs {fast}");
    // The CPU profile has no latency term.
    let cpu = price_with(&prog, &free(b, t), &DeviceProfile::cpu_default(), &|_| Some(big));
    assert_eq!(cpu.kernels[0].latency_s, 0.0);
}

/// For a graph with a short convolution the search tries each schedule with
/// the convolution fused into the recurrence's kernels and as kernels of its
/// own; fused, the GPU saves the convolved activations' round trip through
/// memory and the launches, so the pick fuses.
#[test]
fn search_tries_the_convolution_fused_and_apart() {
    let g = super::util::build(
        "kind = \"gated_deltanet\"\nheads = 16\ndk = 128\ndv = 128\nshort_conv = 4\ngate = { activation = \"mamba\" }\n",
    );
    let all = mixc_passes::search::enumerate(&g, DeviceKind::Gpu);
    assert!(all.iter().any(|s| s.fuse_conv) && all.iter().any(|s| !s.fuse_conv));
    let cands = search(&g, &free(8, 4096), &DeviceProfile::h100()).unwrap();
    assert!(cands[0].schedule.fuse_conv, "pick: {:?}", cands[0].schedule);
    let priced = |fuse: bool| {
        let s = Schedule { fuse_conv: fuse, ..cands[0].schedule };
        cands.iter().find(|c| c.schedule == s).map(|c| (c.cost.time_s, c.cost.kernels.len())).unwrap()
    };
    let (fused, apart) = (priced(true), priced(false));
    assert!(fused.0 < apart.0 && fused.1 < apart.1, "fused {fused:?}, apart {apart:?}");
    // No convolution: nothing to try.
    let plain = super::util::build("kind = \"gla\"\nheads = 4\ndk = 64\ndv = 64\n");
    assert!(mixc_passes::search::enumerate(&plain, DeviceKind::Gpu).iter().all(|s| s.fuse_conv));
}

/// Programs an SM holds: the tightest of its shared memory, its thread slots
/// and its registers (allotted 8 a thread at a time, at most 255), never more
/// than 32 CTAs.
#[test]
fn programs_per_sm_is_the_tightest_of_shared_memory_threads_and_registers() {
    use mixc_passes::cost::programs_per_sm;
    let dev = DeviceProfile::h100();
    let r = |threads, shared_bytes, registers| KernelResources {
        threads,
        shared_bytes,
        spill_bytes: 0,
        spilled_share: 0.0,
        registers,
        mma_k: 0,
        mma_passes: 0,
        register_tier: false,
        pipelined: false,
        warp_rows: 0,
    };
    assert_eq!(programs_per_sm(r(128, 0, 32), &dev), 16, "threads and registers both allow 16");
    assert_eq!(programs_per_sm(r(32, 0, 16), &dev), 32, "at most 32 CTAs");
    assert_eq!(programs_per_sm(r(128, 0, 90), &dev), 5, "96 registers × 128 threads: 5 fit in 65536");
    assert_eq!(programs_per_sm(r(128, 100 * 1024, 16), &dev), 2, "shared memory binds");
    assert_eq!(programs_per_sm(r(256, 0, 300), &dev), 1, "past 255 registers a thread: as at 255");
    assert_eq!(programs_per_sm(r(128, 0, 0), &dev), 16, "registers unknown: threads bind");
}

/// The narrow prefill's candidates: every schedule of the search in each
/// value block narrower than the value head dim, in the storage asked, and
/// none for a graph without a recurrence; few heads at one sequence price
/// value blocks below whole heads (the cost model sees the idle SMs).
#[test]
fn value_block_candidates_split_only_narrower_blocks_and_win_for_few_heads() {
    use mixc_passes::search::{search_over, with_value_blocks};
    use mixc_passes::Storage;
    let g = super::util::build("kind = \"gla\"\nheads = 4\ndk = 256\ndv = 512\n");
    let plain = mixc_passes::search::enumerate(&g, DeviceKind::Gpu).len();
    let blocked = with_value_blocks(&g, DeviceKind::Gpu, &[16, 64, 512, 1024], Storage::Bf16);
    // The search's schedules and the chunk scan at 5 chunk sizes, each in
    // blocks of 16 and 64: 512 and 1024 are not narrower than dv = 512.
    assert_eq!(blocked.len(), 2 * (plain + 5), "blocks of 512 and 1024 are not narrower than dv = 512");
    assert_eq!(blocked.iter().filter(|s| s.scan && s.split).count(), 10);
    assert!(blocked.iter().all(|s| [16, 64].contains(&s.block_v) && s.storage == Storage::Bf16));
    let small = super::util::build("kind = \"gla\"\nheads = 4\ndk = 16\ndv = 16\n");
    assert!(with_value_blocks(&small, DeviceKind::Gpu, &[16, 32], Storage::F32).is_empty());
    let attn = super::util::build("kind = \"attention\"\nheads = 4\nhead_dim = 64\n");
    assert!(with_value_blocks(&attn, DeviceKind::Gpu, &[16], Storage::F32).is_empty());
    // One sequence of 2048 tokens over 4 heads: the best blocked schedule
    // beats the best whole-head one as priced.
    let dev = DeviceProfile::h100();
    let point = free(1, 2048);
    let best = |s: Vec<Schedule>| {
        let c = search_over(&g, s, &point, &dev, &|_| None).unwrap();
        c.into_iter().find(|c| c.rejected.is_none()).map(|c| c.cost.time_s).unwrap_or(f64::INFINITY)
    };
    let whole = best(mixc_passes::search::enumerate(&g, DeviceKind::Gpu));
    let split = best(with_value_blocks(&g, DeviceKind::Gpu, &[64], Storage::F32));
    assert!(split < whole, "value blocks {split:e} s, whole heads {whole:e} s");
}
