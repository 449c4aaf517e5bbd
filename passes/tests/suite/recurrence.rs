//! Chunked diagonal-gated recurrences and mLSTM: the lowered program agrees
//! with the graph interpreter for every transition, schedule and ragged shape.

use super::util::*;
use mixc_ir::dtype::DType;
use mixc_ir::graph::Graph;
use mixc_ir::interp::Tensor;
use mixc_ir::mixers::random_inputs;
use mixc_ir::ops::{OpKind, Recurrence, Transition};
use mixc_ir::tile::interp::Precision;
use mixc_passes::{lower, Schedule};
use proptest::prelude::*;
use std::collections::BTreeMap;

/// A graph holding only the inputs and one recurrence (names as the mixer library's).
pub fn recurrence_graph(t: Transition, normalize: bool, has_initial: bool, h: u64, dk: u64, dv: u64) -> Graph {
    let mut g = Graph::new("rec");
    let b = g.dim("B").unwrap();
    let tt = g.dim("T").unwrap();
    let hd = g.dim_const("H", h).unwrap();
    let kd = g.dim_const("Dk", dk).unwrap();
    let vd = g.dim_const("Dv", dv).unwrap();
    let mut ops = vec![
        g.input("q", DType::F32, &[b, tt, hd, kd]).unwrap(),
        g.input("k", DType::F32, &[b, tt, hd, kd]).unwrap(),
        g.input("v", DType::F32, &[b, tt, hd, vd]).unwrap(),
    ];
    match t {
        Transition::ScalarDecay => ops.push(g.input("g", DType::F32, &[b, tt, hd]).unwrap()),
        Transition::KeyDecay => ops.push(g.input("g", DType::F32, &[b, tt, hd, kd]).unwrap()),
        Transition::Mlstm => {
            ops.push(g.input("i", DType::F32, &[b, tt, hd]).unwrap());
            ops.push(g.input("f", DType::F32, &[b, tt, hd]).unwrap());
        }
        _ => {}
    }
    if has_initial {
        ops.push(g.input_opt("initial_state", DType::F32, &[b, hd, kd, vd], true).unwrap());
        if t == Transition::Mlstm {
            ops.push(g.input_opt("initial_n", DType::F32, &[b, hd, kd], true).unwrap());
            ops.push(g.input_opt("initial_m", DType::F32, &[b, hd], true).unwrap());
        } else if normalize {
            ops.push(g.input_opt("initial_z", DType::F32, &[b, hd, kd], true).unwrap());
        }
    }
    let eps = if normalize || t == Transition::Mlstm { 1e-6 } else { 0.0 };
    let r = Recurrence { transition: t, scale: (dk as f64).powf(-0.5), normalize, eps, has_initial };
    let names = OpKind::LinearRecurrence(r).result_names();
    let res = g.add(OpKind::LinearRecurrence(r), &ops, &names).unwrap();
    for (n, v) in names.iter().zip(res) {
        g.output_as(n, v).unwrap();
    }
    g
}

fn transition(i: usize) -> (Transition, bool) {
    [
        (Transition::Identity, false),
        (Transition::Identity, true),
        (Transition::ScalarDecay, false),
        (Transition::KeyDecay, false),
        (Transition::Mlstm, false),
    ][i % 5]
}

/// Case `which` of [`transition`] at the given head dims, with inputs from
/// `make` (positive `q`, `k` where the output is normalized).
fn case(
    which: usize,
    h: u64,
    dk: u64,
    dv: u64,
    make: impl FnOnce(&mixc_ir::graph::Graph) -> BTreeMap<String, Tensor>,
) -> (mixc_ir::graph::Graph, BTreeMap<String, Tensor>) {
    let (tr, normalize) = transition(which);
    let g = recurrence_graph(tr, normalize, true, h, dk, dv);
    let mut ins = make(&g);
    if normalize {
        make_positive(&mut ins);
    }
    (g, ins)
}

/// Positive feature maps keep the normalized linear attention's denominator away from 0.
fn make_positive(ins: &mut BTreeMap<String, Tensor>) {
    for name in ["q", "k"] {
        if let Some(t) = ins.get_mut(name) {
            t.data.iter_mut().for_each(|x| *x = x.exp());
        }
    }
}

/// The chunked forms: 0 fused, 1 split, 2 split with the chunk scan (mLSTM
/// keeps split's walk under it).
fn chunked(form: u8, chunk: u32) -> Schedule {
    Schedule { split: form > 0, scan: form == 2, ..Schedule::with_chunk(chunk) }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn chunked_matches_the_reference(
        which in 0usize..5,
        b in 1usize..3,
        h in 1u64..3,
        dk in prop::sample::select(vec![4u64, 16, 17, 24, 40]),
        dv in prop::sample::select(vec![3u64, 16, 24, 33]),
        t in 1usize..150,
        chunk in prop::sample::select(vec![16u32, 32, 64, 128]),
        form in 0u8..3,
        products: bool,
        with_initial: bool,
        seed: u64,
    ) {
        let (g, ins) = case(which, h, dk, dv, |g| random_inputs(g, &sizes(b, t), seed, with_initial));
        let sched = Schedule { decay_products: products, ..chunked(form, chunk) };
        check(&g, &sched, &ins, Precision::F64, 1e-9);
        // The token-by-token (decode-step) form of the same graph.
        check(&g, &Schedule::decode(), &ins, Precision::F64, 1e-9);
    }

    #[test]
    fn f32_tile_arithmetic_stays_within_1e4(
        which in 0usize..5,
        t in 1usize..100,
        chunk in prop::sample::select(vec![16u32, 64]),
        form in 0u8..3,
        products: bool,
        seed: u64,
    ) {
        let (g, ins) = case(which, 2, 24, 16, |g| random_inputs(g, &sizes(2, t), seed, true));
        let sched = Schedule { decay_products: products, ..chunked(form, chunk) };
        check(&g, &sched, &ins, Precision::F32, 1e-4);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The step form over `n` tokens per pass of the state (`step_tokens`)
    /// against the reference, at lengths that are not multiples of `n` and
    /// shorter than it (a decode step is `T = 1`), with and without an initial
    /// state, whole or in value blocks, the state whole or in blocks of rows
    /// (`state_rows`, also at one token a pass); and, with the state whole,
    /// against the one-token step form, which does the same arithmetic token
    /// for token: the same bits (blocks of rows sum the readouts in another
    /// order).
    #[test]
    fn multi_token_steps_match_the_reference(
        which in 0usize..5,
        b in 1usize..3,
        h in 1u64..3,
        dk in prop::sample::select(vec![4u64, 16, 17, 24, 40]),
        dv in prop::sample::select(vec![3u64, 16, 24, 33]),
        t in prop::sample::select(vec![1usize, 2, 3, 5, 7, 8, 9, 17, 31, 40]),
        n in prop::sample::select(vec![1u32, 2, 4, 8]),
        block_v in prop::sample::select(vec![0u32, 16]),
        state_rows in prop::sample::select(vec![0u32, 4, 8]),
        blocks_first: bool,
        with_initial: bool,
        seed: u64,
    ) {
        let (g, ins) = case(which, h, dk, dv, |g| inputs(g, b, t, seed, with_initial));
        let sched = Schedule { block_v, state_rows, blocks_first, ..Schedule::steps(n) };
        check(&g, &sched, &ins, Precision::F64, tol(Precision::F64));
        check(&g, &sched, &ins, Precision::F32, tol(Precision::F32));
        if state_rows == 0 {
            let one = Schedule { block_v, blocks_first, ..Schedule::decode() };
            let run = |s: &Schedule| lower(&g, s).unwrap().run(&ins, Precision::F32).unwrap().0;
            let (many, single) = (run(&sched), run(&one));
            for (name, x) in &single {
                prop_assert_eq!(rel_err(&many[name], x), 0.0, "output `{}`", name);
            }
        }
    }
}

/// The CPU's decode step walks the state in blocks of rows: its step kernel
/// loads, updates and stores `[8, Dv]` tiles of the state (the first pass
/// from the initial state, later ones from the final state, with no branch
/// between them), where the GPU's takes the state whole (in value blocks)
/// and the schedule checks its rows.
#[test]
fn the_cpu_decode_step_walks_the_state_in_blocks_of_rows() {
    use mixc_passes::device::DeviceKind;
    let g = recurrence_graph(Transition::KeyDecay, false, true, 2, 24, 16);
    let text = |s: &Schedule| mixc_ir::tile::text::print_program(&lower(&g, s).unwrap());
    let cpu = Schedule::decode_for(DeviceKind::Cpu);
    assert_eq!(cpu.state_rows, mixc_passes::schedule::CPU_DECODE_STATE_ROWS);
    let blocked = text(&cpu);
    assert!(blocked.contains("load[initial_state, other = 0.0]") && blocked.contains("load[final_state"), "{blocked}");
    assert!(blocked.contains("f32[8, 16]") && !blocked.contains("if("), "{blocked}");
    let whole = text(&Schedule { state_rows: 0, ..cpu });
    assert!(!whole.contains("f32[8, 16]") && whole.contains("f32[32, 16]"), "{whole}");
    let gpu = Schedule::decode_for(DeviceKind::Gpu);
    assert_eq!(gpu.state_rows, 0);
    // The GPU's step kernel in value blocks: the blocks on grid axis 0.
    let wide = recurrence_graph(Transition::KeyDecay, false, true, 2, 24, 256);
    let launch = |s: &Schedule| {
        let t = mixc_ir::tile::text::print_program(&lower(&wide, s).unwrap());
        t.lines().find(|l| l.contains("launch") && l.contains("_step[")).map(str::to_string).unwrap_or(t)
    };
    assert!(!gpu.blocks_first);
    assert!(launch(&gpu).contains("_step[B * H, 4, 1]"), "{}", launch(&gpu));
    let first = Schedule { blocks_first: true, ..gpu };
    assert!(launch(&first).contains("_step[4, B * H, 1]"), "{}", launch(&first));
    assert!(Schedule { state_rows: 8, ..Schedule::default() }.validate().is_err());
    assert!(Schedule { state_rows: 12, ..cpu }.validate().is_err());
    assert!(Schedule { state_rows: 128, ..cpu }.validate().is_err());
}

#[test]
fn step_tokens_are_validated() {
    assert!(Schedule::steps(8).validate().is_ok());
    assert!(Schedule::steps(0).validate().is_err());
    assert!(Schedule::steps(17).validate().is_err());
    assert!(Schedule { step_tokens: 4, ..Schedule::default() }.validate().is_err());
    // A schedule recorded before the field existed reads one token per step.
    let mut old = toml::Table::try_from(Schedule::decode()).unwrap();
    old.remove("step_tokens");
    let back: Schedule = old.try_into().unwrap();
    assert_eq!(back, Schedule::decode());
}

/// The prefill really is chunked: the diagonal-gated programs do their work as
/// `[c×c]` and `[c×d]` dots, `2·B·H·L·(c·dk + c·dv + 2·dk·dv)` FLOPs.
#[test]
fn flops_match_the_chunked_count() {
    for (tr, form) in [
        (Transition::Identity, 0),
        (Transition::ScalarDecay, 0),
        (Transition::ScalarDecay, 1),
        (Transition::ScalarDecay, 2),
        (Transition::KeyDecay, 2),
    ] {
        let (b, h, dk, dv, t, c) = (2usize, 2u64, 32u64, 16u64, 256usize, 64u32);
        let g = recurrence_graph(tr, false, true, h, dk, dv);
        let ins = random_inputs(&g, &sizes(b, t), 7, true);
        let stats = check(&g, &chunked(form, c), &ins, Precision::F64, 1e-9);
        if tr == Transition::KeyDecay {
            // GLA's sub-chunked scores are counted differently; the scan's
            // own dots are the state pass's: the same as split's.
            let split = check(&g, &chunked(1, c), &ins, Precision::F64, 1e-9);
            assert_eq!(stats.dot_flops, split.dot_flops, "{tr:?} form {form}");
            continue;
        }
        let (c, dk, dv) = (c as u64, dk, dv);
        let want = 2 * b as u64 * h * t as u64 * (c * dk + c * dv + 2 * dk * dv);
        assert_eq!(stats.dot_flops, want, "{tr:?} form {form}");
    }
}

/// Strong decays (log decay −20 per step) over a long sequence stay finite and
/// match (GLA's diagonal blocks by exponentials and by decay products, whose
/// products underflow to 0 within a few rows); mLSTM input gates of +100
/// (whose exponential overflows f32) too.
#[test]
fn strong_gates_stay_finite() {
    for (tr, prec) in [
        (Transition::ScalarDecay, Precision::F64),
        (Transition::KeyDecay, Precision::F64),
        (Transition::KeyDecay, Precision::F32),
        (Transition::ScalarDecay, Precision::F32),
    ] {
        let g = recurrence_graph(tr, false, true, 1, 16, 16);
        let mut ins = random_inputs(&g, &sizes(1, 300), 3, true);
        ins.get_mut("g").unwrap().data.iter_mut().for_each(|x| *x = -20.0 + *x * 0.1);
        for (form, decay_products) in [(0, false), (2, false), (0, true), (2, true)] {
            let sched = Schedule { decay_products, ..chunked(form, 64) };
            check(&g, &sched, &ins, prec, if prec == Precision::F32 { 1e-4 } else { 1e-9 });
        }
    }
    let g = recurrence_graph(Transition::Mlstm, false, true, 1, 16, 16);
    let mut ins = random_inputs(&g, &sizes(1, 200), 5, true);
    ins.get_mut("i").unwrap().data.iter_mut().for_each(|x| *x += 100.0);
    for split in [false, true] {
        let sched = Schedule { split, ..Schedule::with_chunk(64) };
        check(&g, &sched, &ins, Precision::F32, 1e-4);
    }
}

/// The chunk scan's kernels: one program per (chunk, batch × head) writes
/// each chunk's contribution, one per (batch × head) adds them up, split's
/// output kernel follows; mLSTM keeps split's walk; the field validates
/// only with split and reads `false` where a serialized schedule predates it.
#[test]
fn the_chunk_scan_runs_a_program_per_chunk() {
    for (tr, want) in [
        (Transition::KeyDecay, vec!["deltas", "scan", "outputs"]),
        (Transition::ScalarDecay, vec!["deltas", "scan", "outputs"]),
        (Transition::Identity, vec!["deltas", "scan", "outputs"]),
        (Transition::Mlstm, vec!["states", "outputs"]),
    ] {
        let g = recurrence_graph(tr, false, true, 2, 16, 16);
        let prog = lower(&g, &chunked(2, 32)).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<String> = prog.kernels.iter().map(|k| k.name.clone()).collect();
        let kinds: Vec<&str> = names.iter().filter_map(|n| n.rsplit('_').next()).collect();
        assert_eq!(kinds, want, "{tr:?}: {names:?}");
    }
    assert_eq!(chunked(2, 32).form(), "chunk 32 scan");
    assert!(chunked(2, 32).validate().is_ok());
    assert!(Schedule { scan: true, ..Schedule::with_chunk(32) }.validate().is_err());
    assert!(Schedule { scan: true, ..Schedule::decode() }.validate().is_err());
    let mut old = toml::Table::try_from(chunked(1, 32)).unwrap();
    old.remove("scan");
    let back: Schedule = old.try_into().unwrap();
    assert_eq!(back, chunked(1, 32));
}
