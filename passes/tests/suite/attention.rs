//! Flash attention: the lowered program against the reference interpreter
//! (masks, grouped-query heads, ragged head dims and blocks, a KV cache), the
//! form split over keys (`Schedule::kv_split`) against it and against the one
//! kernel, and the mask-aware skipping of key blocks counted by the tile
//! interpreter.

use super::util::{build, check, rel_err};
use mixc_ir::interp::Tensor;
use mixc_ir::mixers::random_inputs;
use mixc_ir::ops::{Mask, OpKind};
use mixc_ir::tile::interp::Precision;
use mixc_ir::{DType, Graph};
use mixc_passes::{lower, Schedule};
use proptest::prelude::*;
use std::collections::BTreeMap;

/// A graph of the attention op alone: `q [B, Tq, H, D]`, `k [B, Tk, Hkv, D]`,
/// `v [B, Tk, Hkv, Dv]` → `o`, `lse`.
fn attn_graph(h: u64, hkv: u64, d: u64, dv: u64, mask: Mask) -> Graph {
    let mut g = Graph::new("attn");
    let b = g.dim("B").unwrap();
    let tq = g.dim("Tq").unwrap();
    let tk = g.dim("Tk").unwrap();
    let hd = g.dim_const("H", h).unwrap();
    let hkvd = if hkv == h { hd } else { g.dim_const("Hkv", hkv).unwrap() };
    let dd = g.dim_const("D", d).unwrap();
    let dvd = if dv == d { dd } else { g.dim_const("Dv", dv).unwrap() };
    let q = g.input("q", DType::F32, &[b, tq, hd, dd]).unwrap();
    let k = g.input("k", DType::F32, &[b, tk, hkvd, dd]).unwrap();
    let v = g.input("v", DType::F32, &[b, tk, hkvd, dvd]).unwrap();
    let scale = 1.0 / (d as f64).sqrt();
    let r = g.add(OpKind::Attention { scale, mask }, &[q, k, v], &["o", "lse"]).unwrap();
    g.output_as("o", r[0]).unwrap();
    g.output_as("lse", r[1]).unwrap();
    g
}

fn attn_inputs(g: &Graph, b: usize, tq: usize, tk: usize, seed: u64) -> BTreeMap<String, Tensor> {
    let sizes = BTreeMap::from([("B", b), ("Tq", tq), ("Tk", tk)]);
    let mut inputs = random_inputs(g, &sizes, seed, true);
    // Sharper scores than N(0, 0.5²) give: the softmax is then far from uniform.
    if let Some(q) = inputs.get_mut("q") {
        q.data.iter_mut().for_each(|x| *x *= 4.0);
    }
    inputs
}

fn sched(bq: u32, bk: u32) -> Schedule {
    Schedule { block_q: bq, block_k: bk, ..Schedule::default() }
}

fn split_sched(bq: u32, bk: u32, kv_split: u32) -> Schedule {
    Schedule { kv_split, ..sched(bq, bk) }
}

/// The program's outputs under `s`, in f64 tile arithmetic.
fn run_tiles(g: &Graph, s: &Schedule, inputs: &BTreeMap<String, Tensor>) -> (BTreeMap<String, Tensor>, u64) {
    let prog = lower(g, s).unwrap_or_else(|e| panic!("lower: {e}"));
    let (out, stats) = prog.run(inputs, Precision::F64).unwrap_or_else(|e| panic!("tile run: {e}"));
    (out, stats.programs)
}

/// The split form's outputs equal the one kernel's to rounding (the same
/// blocks, merged in another order), lse's `−inf` rows included.
fn assert_split_matches_whole(g: &Graph, bq: u32, bk: u32, kv_split: u32, inputs: &BTreeMap<String, Tensor>) {
    let (whole, _) = run_tiles(g, &sched(bq, bk), inputs);
    let (split, _) = run_tiles(g, &split_sched(bq, bk, kv_split), inputs);
    for (name, w) in &whole {
        let got = &split[name];
        let same_inf = w.data.iter().zip(&got.data).all(|(a, b)| a.is_finite() || a == b);
        assert!(same_inf, "`{name}`: the split form's infinite entries differ (kv_split {kv_split})");
        let finite = |t: &Tensor| Tensor {
            shape: t.shape.clone(),
            data: t.data.iter().map(|x| if x.is_finite() { *x } else { 0.0 }).collect(),
        };
        let e = rel_err(&finite(got), &finite(w));
        assert!(e <= 1e-12, "`{name}`: split vs one kernel relative error {e:e} (kv_split {kv_split})");
    }
}

/// Mask variants: 0 full, 1 causal, 2 causal + window, 3 causal + window + sinks,
/// 4 window, 5 window + sinks (the last two non-causal).
fn mask_of(kind: u8, w: u32, sinks: u32) -> Mask {
    let window = if kind >= 2 { Some(w) } else { None };
    let sinks = if kind == 3 || kind == 5 { sinks } else { 0 };
    Mask { causal: matches!(kind, 1..=3), window, sinks }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// The lowered flash-attention program equals the naive reference (f64 to
    /// 1e-9, f32 tile arithmetic to 1e-4) for every mask, grouped-query heads,
    /// head dims that are not multiples of 16, ragged query and key blocks,
    /// and a KV cache (`Tk − Tq` keys before the queries).
    #[test]
    fn flash_attention_matches_reference(
        b in 1usize..=2,
        tq in 1usize..=80,
        cache in prop_oneof![Just(0usize), 1usize..=70],
        heads in prop::sample::select(vec![(1u64, 1u64), (2, 1), (2, 2), (4, 2), (4, 1)]),
        d in prop::sample::select(vec![17u64, 24, 40, 16]),
        dv_same in any::<bool>(),
        mask_kind in 0u8..6,
        w in 1u32..=40,
        sinks in 1u32..=5,
        bq in prop::sample::select(vec![16u32, 32, 64]),
        bk in prop::sample::select(vec![16u32, 32, 64]),
        seed: u64,
    ) {
        let dv = if dv_same { d } else { 24 };
        let mask = mask_of(mask_kind, w, sinks);
        let g = attn_graph(heads.0, heads.1, d, dv, mask);
        let inputs = attn_inputs(&g, b, tq, tq + cache, seed);
        let s = sched(bq, bk);
        check(&g, &s, &inputs, Precision::F64, 1e-9);
        check(&g, &s, &inputs, Precision::F32, 1e-4);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Attention split over keys equals the reference (f64 to 1e-9, f32 to
    /// 1e-4) and the one-kernel form (to rounding): cache lengths that are not
    /// multiples of the split or the key block, shorter than one split and
    /// empty (only the new tokens), one to 20 queries, every mask (windows
    /// that leave whole splits without a key), grouped-query heads and head
    /// dims that are not multiples of 16.
    #[test]
    fn kv_split_attention_matches_reference(
        b in 1usize..=2,
        tq in 1usize..=20,
        cache in prop_oneof![Just(0usize), 1usize..=40, 41usize..=260],
        heads in prop::sample::select(vec![(1u64, 1u64), (2, 1), (4, 2), (4, 1)]),
        d in prop::sample::select(vec![17u64, 24, 40, 16]),
        dv_same in any::<bool>(),
        mask_kind in 0u8..6,
        w in 1u32..=70,
        sinks in 1u32..=20,
        bq in prop::sample::select(vec![16u32, 32]),
        bk in prop::sample::select(vec![16u32, 32]),
        splits_per_block in prop::sample::select(vec![1u32, 2, 4]),
        seed: u64,
    ) {
        let dv = if dv_same { d } else { 24 };
        let g = attn_graph(heads.0, heads.1, d, dv, mask_of(mask_kind, w, sinks));
        let inputs = attn_inputs(&g, b, tq, tq + cache, seed);
        let kv_split = bk * splits_per_block;
        let s = split_sched(bq, bk, kv_split);
        check(&g, &s, &inputs, Precision::F64, 1e-9);
        check(&g, &s, &inputs, Precision::F32, 1e-4);
        assert_split_matches_whole(&g, bq, bk, kv_split, &inputs);
    }
}

/// The split form runs a program per (query block, batch × head, split) and one
/// per (query block, batch × head) to combine: `⌈Tk / kv_split⌉` splits, none
/// when there is no key (the combine then writes `o = 0`, `lse = −inf`).
#[test]
fn kv_split_programs_and_empty_cache() {
    let g = attn_graph(4, 2, 24, 24, Mask::default());
    for (tq, tk, splits) in [(1usize, 1usize, 1u64), (1, 64, 1), (1, 65, 2), (3, 200, 4), (17, 130, 3)] {
        let inputs = attn_inputs(&g, 2, tq, tk, 11 + tk as u64);
        let (_, programs) = run_tiles(&g, &split_sched(16, 32, 64), &inputs);
        let qblocks = tq.div_ceil(16) as u64;
        assert_eq!(programs, qblocks * 8 * (splits + 1), "Tq {tq}, Tk {tk}");
    }
    // No keys at all: the partial kernel has no programs.
    let inputs = attn_inputs(&g, 2, 1, 0, 5);
    let (out, _) = run_tiles(&g, &split_sched(16, 32, 64), &inputs);
    assert!(out["o"].data.iter().all(|x| *x == 0.0), "rows without keys write o = 0");
    assert!(out["lse"].data.iter().all(|x| *x == f64::NEG_INFINITY), "and lse = −inf");
}

#[test]
fn kv_split_is_validated() {
    assert!(split_sched(16, 64, 512).validate().is_ok());
    assert!(split_sched(16, 64, 0).validate().is_ok());
    assert!(split_sched(16, 64, 96).validate().is_err(), "not a multiple of block_k");
    assert!(split_sched(16, 64, 32).validate().is_err(), "smaller than a key block");
    assert!(split_sched(16, 64, 1 << 30).validate().is_err(), "too many keys for i32 offsets");
    let g = attn_graph(2, 1, 16, 16, Mask::causal());
    assert!(lower(&g, &split_sched(16, 64, 100)).is_err(), "lowering validates the schedule");
}

/// Kernel bundles record schedules as TOML: `kv_split` round-trips, and a
/// schedule recorded before the field existed reads 0 (one kernel).
#[test]
fn kv_split_round_trips_through_serialized_schedules() {
    use mixc_passes::device::DeviceKind;
    let gpu = Schedule::decode_for(DeviceKind::Gpu);
    let text = toml::to_string(&gpu).unwrap_or_else(|e| panic!("{e}"));
    assert!(text.contains(&format!("kv_split = {}", gpu.kv_split)), "{text}");
    let back: Schedule = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back, gpu);
    let mut old = toml::Table::try_from(gpu).unwrap_or_else(|e| panic!("{e}"));
    old.remove("kv_split");
    let back: Schedule = old.try_into().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back, Schedule { kv_split: 0, ..gpu });
    assert_ne!(back, gpu, "kv_split takes part in equality (and so in hashing)");
}

/// The GPU decode schedule splits attention's keys; the CPU's does not, and
/// takes one query row per program.
#[test]
fn decode_schedules_split_keys_on_the_gpu_only() {
    use mixc_passes::device::DeviceKind;
    let gpu = Schedule::decode_for(DeviceKind::Gpu);
    assert!(gpu.kv_split > 0 && gpu.validate().is_ok());
    assert_eq!(Schedule::decode_for(DeviceKind::Cpu).kv_split, 0);
    let cpu = Schedule::decode_for(DeviceKind::Cpu);
    assert_eq!(
        cpu,
        Schedule { block_q: 1, state_rows: mixc_passes::schedule::CPU_DECODE_STATE_ROWS, ..Schedule::decode() }
    );
    assert!(cpu.validate().is_ok());
}

/// A decode step (one query) and a prefill against a long cache, with every mask.
#[test]
fn decode_and_long_cache() {
    for kind in 0..6 {
        let mask = mask_of(kind, 9, 3);
        let g = attn_graph(4, 2, 24, 24, mask);
        for (tq, tk) in [(1, 1), (1, 77), (5, 130), (33, 33)] {
            let inputs = attn_inputs(&g, 2, tq, tk, 7 + tk as u64);
            check(&g, &sched(16, 32), &inputs, Precision::F64, 1e-9);
            check(&g, &split_sched(16, 32, 32), &inputs, Precision::F64, 1e-9);
        }
    }
}

/// The loop bounds at every block boundary: the first key a window shows and the
/// last key causality shows fall at every offset inside a key block (windows of
/// every residue modulo `block_k`, several cache lengths), with sinks shorter and
/// longer than a block.
#[test]
fn block_boundaries() {
    let s = sched(16, 16);
    for kind in 1..6 {
        for sinks in [3, 19] {
            if sinks == 19 && kind != 3 && kind != 5 {
                continue;
            }
            for w in 1..=33 {
                let g = attn_graph(2, 1, 16, 16, mask_of(kind, w, sinks));
                for (tq, cache) in [(1, 0), (1, 38), (23, 0), (40, 7), (17, 16), (48, 21)] {
                    let inputs = attn_inputs(&g, 1, tq, tq + cache, w as u64 * 131 + tq as u64);
                    check(&g, &s, &inputs, Precision::F64, 1e-9);
                }
            }
        }
    }
}

/// The attention mixers of the library (KV cache appended, window / sinks
/// retention of the cache), with a non-empty cache. Needs the generic lowering of
/// `kv_append` and the retention ops.
#[test]
fn attention_mixer_graphs() {
    let configs = [
        "kind = \"attention\"\nheads = 4\nkv_heads = 2\nhead_dim = 24\n",
        "kind = \"attention\"\nheads = 4\nkv_heads = 2\nhead_dim = 24\nwindow = 7\n",
        "kind = \"attention\"\nheads = 4\nkv_heads = 2\nhead_dim = 24\nwindow = 7\nsinks = 2\n",
        "kind = \"attention\"\nheads = 2\nhead_dim = 17\nwindow = 20\nsinks = 3\n",
    ];
    for (i, text) in configs.iter().enumerate() {
        let g = build(text);
        for (t, s) in [(1usize, 0usize), (1, 12), (19, 0), (23, 9), (40, 41)] {
            let sizes = BTreeMap::from([("B", 2), ("T", t), ("S", s)]);
            let inputs = random_inputs(&g, &sizes, 100 + i as u64 * 7 + t as u64, true);
            check(&g, &sched(16, 16), &inputs, Precision::F64, 1e-9);
            check(&g, &sched(32, 16), &inputs, Precision::F32, 1e-4);
            // Split over keys: Tk = S + T is a sum of dims here.
            check(&g, &split_sched(16, 16, 32), &inputs, Precision::F64, 1e-9);
        }
    }
}

/// Dot FLOPs of one run of the attention program.
fn attn_flops(mask: Mask, t: usize, bq: u32, bk: u32) -> u64 {
    let g = attn_graph(1, 1, 16, 16, mask);
    let inputs = attn_inputs(&g, 1, t, t, 3);
    check(&g, &sched(bq, bk), &inputs, Precision::F64, 1e-9).dot_flops
}

/// Key blocks the mask empties are not visited: a sliding window costs
/// `O(T · (w + blocks))`, not `O(T²)`; causal costs about half of full; sinks
/// add only the blocks of `[0, n)`.
#[test]
fn flash_attention_skips_masked_blocks() {
    let (t, w, n) = (512usize, 24u32, 3u32);
    let (bq, bk) = (32u32, 32u32);
    // Head dims pad to 16: each visited [bq × bk] block costs two dots.
    let per_block = 2 * (bq as u64) * (bk as u64) * (16 + 16);
    let q_blocks = t.div_ceil(bq as usize) as u64;
    let k_blocks = t.div_ceil(bk as usize) as u64;

    let full = attn_flops(Mask::default(), t, bq, bk);
    assert_eq!(full, q_blocks * k_blocks * per_block, "full attention visits every block");

    let causal = attn_flops(Mask::causal(), t, bq, bk);
    let ratio = causal as f64 / full as f64;
    assert!((0.5..=0.56).contains(&ratio), "causal visits {ratio:.3} of the blocks");

    let window = attn_flops(Mask { causal: true, window: Some(w), sinks: 0 }, t, bq, bk);
    // Per query block at most (bq + w − 1) keys, plus a partial block at each end.
    let bound = 2 * (t as u64 + bq as u64) * (w as u64 + bq as u64 + 2 * bk as u64) * (16 + 16);
    assert!(window <= bound, "window: {window} dot flops > bound {bound}");
    assert!(window * 4 < causal, "window: {window} dot flops, causal {causal}");

    let sinks = attn_flops(Mask { causal: true, window: Some(w), sinks: n }, t, bq, bk);
    let sink_blocks = (n as u64).div_ceil(bk as u64);
    assert!(sinks > window, "sinks visit their blocks");
    assert!(sinks <= window + q_blocks * sink_blocks * per_block, "sinks: {sinks} dot flops, window {window}");

    // Linear in T: doubling T about doubles a windowed kernel's work.
    let window2 = attn_flops(Mask { causal: true, window: Some(w), sinks: 0 }, 2 * t, bq, bk);
    assert!(window2 <= 2 * window + 2 * per_block, "window at 2T: {window2}, at T: {window}");
}

/// Kernels offset elements in 32-bit integers: binding sizes under which a
/// buffer would exceed 2^31 − 1 elements (B = 64 sequences of a 32768-key
/// cache at 16 heads of 128) fails with the buffer's name instead of letting
/// kernels wrap around.
#[test]
fn buffers_past_32_bit_offsets_are_refused_at_bind() {
    let g = attn_graph(16, 16, 128, 128, Mask::causal());
    let prog = lower(&g, &sched(16, 64)).unwrap_or_else(|e| panic!("lower: {e}"));
    let shapes = |b: usize, tk: usize| -> BTreeMap<String, Tensor> {
        let inputs = attn_inputs(&g, 1, 1, 1, 3);
        inputs
            .into_iter()
            .map(|(n, t)| {
                let mut shape = t.shape.clone();
                shape[0] = b;
                if n != "q" {
                    shape[1] = tk;
                }
                (n, Tensor { shape, data: vec![] })
            })
            .collect()
    };
    assert!(prog.bind(&shapes(64, 4096)).is_ok(), "2^29 elements a buffer fit");
    let err = prog.bind(&shapes(64, 32768)).expect_err("2^32 elements a buffer").to_string();
    assert!(err.contains("`k`") && err.contains("32-bit"), "{err}");
}
