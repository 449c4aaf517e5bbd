//! DeltaNet and Gated DeltaNet: the chunked WY / UT lowering, fused and split,
//! against the token-by-token reference.

use super::util::{build, check, sizes};
use mixc_ir::interp::Tensor;
use mixc_ir::ops::{OpKind, Recurrence, Transition};
use mixc_ir::tile::interp::Precision;
use mixc_ir::{mixers, DType, Graph};
use mixc_passes::Schedule;
use proptest::prelude::*;
use std::collections::BTreeMap;

/// A graph holding only the inputs and one delta-rule recurrence.
fn one_op(gated: bool, heads: u64, dk: u64, dv: u64, has_initial: bool) -> Graph {
    let mut g = Graph::new(if gated { "gated_delta" } else { "delta" });
    let b = g.dim("B").unwrap();
    let t = g.dim("T").unwrap();
    let h = g.dim_const("H", heads).unwrap();
    let dkd = g.dim_const("Dk", dk).unwrap();
    let dvd = g.dim_const("Dv", dv).unwrap();
    let q = g.input("q", DType::F32, &[b, t, h, dkd]).unwrap();
    let k = g.input("k", DType::F32, &[b, t, h, dkd]).unwrap();
    let v = g.input("v", DType::F32, &[b, t, h, dvd]).unwrap();
    let mut ops = vec![q, k, v];
    if gated {
        ops.push(g.input("g", DType::F32, &[b, t, h]).unwrap());
    }
    ops.push(g.input("beta", DType::F32, &[b, t, h]).unwrap());
    if has_initial {
        ops.push(g.input_opt("initial_state", DType::F32, &[b, h, dkd, dvd], true).unwrap());
    }
    let transition = if gated { Transition::GatedDelta } else { Transition::Delta };
    let r = Recurrence { transition, scale: (dk as f64).powf(-0.5), normalize: false, eps: 0.0, has_initial };
    let res = g.add(OpKind::LinearRecurrence(r), &ops, &["o", "final_state"]).unwrap();
    g.output_as("o", res[0]).unwrap();
    g.output_as("final_state", res[1]).unwrap();
    g
}

/// Random inputs with every row of `k` L2-normalized (what keeps the delta rule
/// stable), rounded to f32 so the f64 oracle sees what the f32 buffers hold.
fn inputs(g: &Graph, b: usize, t: usize, seed: u64, with_initial: bool) -> BTreeMap<String, Tensor> {
    let mut ins = mixers::random_inputs(g, &sizes(b, t), seed, with_initial);
    if let Some(k) = ins.get_mut("k") {
        let d = *k.shape.last().unwrap();
        for row in k.data.chunks_mut(d) {
            let norm = row.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-6);
            row.iter_mut().for_each(|x| *x /= norm);
        }
    }
    for t in ins.values_mut() {
        t.data.iter_mut().for_each(|x| *x = *x as f32 as f64);
    }
    ins
}

fn tol(prec: Precision) -> f64 {
    match prec {
        Precision::F64 => 1e-9,
        Precision::F32 => 1e-4,
    }
}

fn schedule(chunk: u32, split: bool) -> Schedule {
    Schedule { split, ..Schedule::with_chunk(chunk) }
}

fn schedule_of(c: &Case) -> Schedule {
    match c.mode {
        2 => Schedule::decode(),
        3 => Schedule::decode_for(mixc_passes::device::DeviceKind::Cpu),
        m => schedule(c.chunk, m == 1),
    }
}

#[derive(Debug, Clone)]
struct Case {
    gated: bool,
    b: usize,
    heads: u64,
    t: usize,
    dk: u64,
    dv: u64,
    /// 0: no initial-state operand; 1: the operand, not supplied; 2: supplied.
    initial: u8,
    chunk: u32,
    /// 0: fused, 1: split, 2: token by token (the decode-step form), 3: the
    /// CPU's decode-step schedule (which keeps a delta rule's state whole).
    mode: u8,
    f32: bool,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    let dims = prop::sample::select(vec![17u64, 24, 40]);
    (
        (any::<bool>(), 1usize..=2, 1u64..=3, prop_oneof![1usize..=4, 1usize..=200]),
        (dims.clone(), dims, 0u8..=2),
        (
            prop::sample::select(vec![16u32, 32, 64, 128, 256]),
            prop_oneof![4 => 0u8..=1, 1 => Just(2u8), 1 => Just(3u8)],
            any::<bool>(),
            any::<u64>(),
        ),
    )
        .prop_map(|((gated, b, heads, t), (dk, dv, initial), (chunk, mode, f32, seed))| Case {
            gated,
            b,
            heads,
            t,
            dk,
            dv,
            initial,
            chunk,
            mode,
            f32,
            seed,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn delta_rule_matches_reference(c in case()) {
        let g = one_op(c.gated, c.heads, c.dk, c.dv, c.initial > 0);
        let ins = inputs(&g, c.b, c.t, c.seed, c.initial == 2);
        let prec = if c.f32 { Precision::F32 } else { Precision::F64 };
        check(&g, &schedule_of(&c), &ins, prec, tol(prec));
    }
}

/// The mixer library's graphs (no generic ops besides the recurrence when
/// `qk_norm` is off: `k` is normalized in the inputs instead).
#[test]
fn library_graphs() {
    let cases = [
        ("kind = \"deltanet\"\nheads = 2\ndk = 24\ndv = 17\n", 2, 70, 16, false, true),
        ("kind = \"deltanet\"\nheads = 2\ndk = 24\ndv = 17\n", 1, 33, 32, true, false),
        ("kind = \"gated_deltanet\"\nheads = 2\ndk = 40\ndv = 24\n", 2, 100, 64, false, false),
        ("kind = \"gated_deltanet\"\nheads = 2\ndk = 40\ndv = 24\n", 1, 129, 128, true, true),
    ];
    for (i, (text, b, t, chunk, split, with_initial)) in cases.into_iter().enumerate() {
        let g = build(text);
        let ins = inputs(&g, b, t, 7 + i as u64, with_initial);
        for prec in [Precision::F64, Precision::F32] {
            check(&g, &schedule(chunk, split), &ins, prec, tol(prec));
        }
    }
}

/// The mixers as configured in the model zoo: the graph L2-normalizes `q` and
/// `k` itself, and may add the Mamba-style gate, the short convolution and the
/// output norm (generic ops around the recurrence).
#[test]
fn library_graphs_with_generic_ops() {
    let cases = [
        ("kind = \"deltanet\"\nheads = 2\ndk = 24\ndv = 17\nqk_norm = true\n", 2, 90, 32, false),
        ("kind = \"gated_deltanet\"\nheads = 2\ndk = 24\ndv = 17\nqk_norm = true\n", 1, 70, 16, true),
        ("kind = \"deltanet\"\nheads = 4\ndk = 16\ndv = 16\nqk_norm = true\nshort_conv = 4\n", 1, 50, 32, true),
        (
            "kind = \"gated_deltanet\"\nheads = 2\ndk = 16\ndv = 32\ngate = { activation = \"mamba\" }\n\
             qk_norm = true\nshort_conv = 4\noutput_norm = true\n",
            2,
            45,
            16,
            false,
        ),
    ];
    for (i, (text, b, t, chunk, split)) in cases.into_iter().enumerate() {
        let g = build(text);
        let mut ins = mixers::random_inputs(&g, &sizes(b, t), 3 + i as u64, true);
        for t in ins.values_mut() {
            t.data.iter_mut().for_each(|x| *x = *x as f32 as f64);
        }
        for prec in [Precision::F64, Precision::F32] {
            check(&g, &schedule(chunk, split), &ins, prec, tol(prec));
        }
    }
}

/// Log decays of −20 per step over a long prompt: outputs stay finite and match.
#[test]
fn strongly_negative_gates() {
    let g = one_op(true, 2, 24, 17, true);
    let mut ins = inputs(&g, 1, 256, 11, true);
    if let Some(gate) = ins.get_mut("g") {
        gate.data.iter_mut().for_each(|x| *x = -20.0);
    }
    for split in [false, true] {
        for prec in [Precision::F64, Precision::F32] {
            check(&g, &schedule(64, split), &ins, prec, tol(prec));
        }
    }
}

/// `β = 0` leaves a DeltaNet state unchanged: the final state is the initial one.
#[test]
fn zero_beta_keeps_the_state() {
    let g = one_op(false, 1, 17, 24, true);
    let mut ins = inputs(&g, 1, 50, 5, true);
    if let Some(beta) = ins.get_mut("beta") {
        beta.data.iter_mut().for_each(|x| *x = 0.0);
    }
    let prog = mixc_passes::lower(&g, &schedule(16, true)).unwrap();
    let (out, _) = prog.run(&ins, Precision::F64).unwrap();
    assert_eq!(out["final_state"].data, ins["initial_state"].data);
}

/// Nearly parallel keys with `β = 1` (the UT transform's hardest case): f32
/// stays within tolerance at the largest chunks.
#[test]
fn correlated_keys() {
    for gated in [false, true] {
        let g = one_op(gated, 1, 24, 17, true);
        let mut ins = inputs(&g, 1, 200, 13, true);
        if let Some(k) = ins.get_mut("k") {
            for row in k.data.chunks_mut(24) {
                row.iter_mut().enumerate().for_each(|(i, x)| *x = if i == 0 { 1.0 } else { 0.05 * *x });
                let norm = row.iter().map(|x| x * x).sum::<f64>().sqrt();
                row.iter_mut().for_each(|x| *x = (*x / norm) as f32 as f64);
            }
        }
        if let Some(beta) = ins.get_mut("beta") {
            beta.data.iter_mut().for_each(|x| *x = 1.0);
        }
        for chunk in [64, 128, 256] {
            for prec in [Precision::F64, Precision::F32] {
                check(&g, &schedule(chunk, chunk == 128), &ins, prec, tol(prec));
            }
        }
    }
}

/// An empty prompt passes the initial state through.
#[test]
fn empty_prompt() {
    let g = one_op(true, 2, 17, 17, true);
    let ins = inputs(&g, 2, 0, 1, true);
    let cpu_step = Schedule::decode_for(mixc_passes::device::DeviceKind::Cpu);
    for sched in [schedule(32, false), schedule(32, true), Schedule::decode(), cpu_step] {
        let prog = mixc_passes::lower(&g, &sched).unwrap();
        let (out, _) = prog.run(&ins, Precision::F64).unwrap();
        assert_eq!(out["final_state"].data, ins["initial_state"].data);
    }
}
