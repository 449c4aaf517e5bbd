//! Every mixer of the library, lowered under random schedules, agrees with the
//! graph interpreter: prefill from a fresh or a carried state, and decode steps
//! (`T = 1` with the state or cache carried in).

use super::util::*;
use mixc_ir::interp::{self, Tensor};
use mixc_ir::mixers::carried_input;
use mixc_ir::mixers::random_inputs;
use mixc_ir::tile::interp::Precision;
use mixc_passes::Schedule;
use proptest::prelude::*;
use std::collections::BTreeMap;

fn table(kind: &str, h: usize, dk: usize, dv: usize, extra: &str) -> String {
    format!("kind = \"{kind}\"\nheads = {h}\ndk = {dk}\ndv = {dv}\n{extra}")
}

/// The library at small, ragged sizes (head dims not multiples of 16).
fn library() -> Vec<(&'static str, String)> {
    vec![
        ("linear_attn", table("linear_attn", 2, 17, 24, "")),
        ("linear_attn_norm", table("linear_attn", 2, 8, 5, "normalizer = true\nfeature_map = \"elu_plus_one\"\n")),
        ("retnet", table("retnet", 3, 24, 16, "")),
        ("simple_gla", table("simple_gla", 2, 16, 40, "gate = { activation = \"neg_softplus\" }\n")),
        ("gla", table("gla", 2, 24, 17, "gate = { activation = \"logsigmoid\", tau = 16.0 }\noutput_norm = true\n")),
        ("mlstm", table("mlstm", 2, 16, 8, "gate_soft_cap = 15.0\n")),
        ("deltanet", table("deltanet", 2, 16, 24, "qk_norm = true\n")),
        (
            "gated_deltanet",
            table("gated_deltanet", 2, 17, 8, "qk_norm = true\nshort_conv = 4\ngate = { activation = \"mamba\" }\n"),
        ),
        ("mamba2", table("mamba2", 4, 16, 8, "groups = 2\nshort_conv = 4\n")),
        (
            "attention",
            "kind = \"attention\"\nheads = 4\nkv_heads = 2\nhead_dim = 24\nrope = { theta = 10000.0 }\n".into(),
        ),
        ("swa", "kind = \"attention\"\nheads = 2\nhead_dim = 17\nwindow = 9\n".into()),
        ("sinks", "kind = \"attention\"\nheads = 2\nkv_heads = 1\nhead_dim = 16\nwindow = 5\nsinks = 3\n".into()),
        ("liger", "kind = \"liger\"\nheads = 2\nhead_dim = 16\nwindow = 8\nrope = { theta = 100.0 }\n".into()),
        (
            "lizard",
            "kind = \"lizard\"\nheads = 2\nhead_dim = 16\nwindow = 8\nmeta_tokens = 2\ncombine = \"separate\"\n".into(),
        ),
        (
            "lizard_shared",
            "kind = \"lizard\"\nheads = 2\nhead_dim = 16\nwindow = 6\nmeta_tokens = 1\ncombine = \"shared\"\n".into(),
        ),
        (
            "duo",
            "kind = \"duo\"\nheads = 4\nkv_heads = 2\nhead_dim = 16\nsinks = 2\nwindow = 5\nretrieval_heads = [1]\n"
                .into(),
        ),
        ("mom", table("mom", 2, 16, 8, "memories = 3\ntop_k = 2\nshared_memory = true\n")),
        (
            "gla_gated",
            table(
                "gla",
                2,
                24,
                17,
                "gate = { activation = \"logsigmoid\", tau = 16.0 }\noutput_norm = true\noutput_gate = \"swish\"\n",
            ),
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// Prefill of T1 tokens, then a prefill of T2 tokens or a decode step from
    /// the carried state: each call's outputs match the interpreter.
    #[test]
    fn every_mixer_prefill_and_decode(
        which in 0usize..18,
        b in 1usize..3,
        t1 in 1usize..80,
        t2 in prop::sample::select(vec![1usize, 1, 7, 33]),
        chunk in prop::sample::select(vec![16u32, 32, 64, 128, 256]),
        split: bool,
        block in prop::sample::select(vec![16u32, 32, 64]),
        seed: u64,
    ) {
        let lib = library();
        let (name, text) = &lib[which % lib.len()];
        let g = build(text);
        let sched = Schedule { split, block_q: block, block_k: block, block_elems: 256, ..Schedule::with_chunk(chunk) };
        let first = random_inputs(&g, &sizes(b, t1), seed, false);
        check(&g, &sched, &first, Precision::F64, 1e-9);
        let carried = interp::run(&g, &first).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut second = random_inputs(&g, &sizes(b, t2), seed ^ 0x5eed, false);
        for (out, value) in carried {
            if let Some(input) = carried_input(&out) {
                if g.inputs().iter().any(|(n, _, _)| *n == input) {
                    second.insert(input, value);
                }
            }
        }
        if g.inputs().iter().any(|(n, _, _)| *n == "offset") {
            second.insert("offset".into(), Tensor::scalar(t1 as f64));
        }
        check(&g, &sched, &second, Precision::F64, 1e-9);
    }
}

#[test]
fn every_mixer_in_f32() {
    for (name, text) in library() {
        let g = build(&text);
        let ins: BTreeMap<String, Tensor> = random_inputs(&g, &sizes(2, 45), 11, true);
        let _ = name;
        check(&g, &Schedule::with_chunk(16), &ins, Precision::F32, 1e-4);
    }
}

/// Work that needs no kernel of its own: RetNet's per-head decay (constants
/// and head indices only) is computed where it is broadcast, and an output
/// norm's weight (and an output gate after it) as the norm stores. A decode
/// step of RetNet with an output norm is three kernels (decay, step, norm)
/// and still exact.
#[test]
fn constant_chains_and_norm_weights_take_no_kernels_of_their_own() {
    let g = build(&table("retnet", 3, 17, 24, "output_norm = true\n"));
    let sched = Schedule::decode();
    let prog = mixc_passes::lower(&g, &sched).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = prog.kernels.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(prog.launches.len(), 3, "{names:?}");
    assert!(names.iter().all(|n| !n.starts_with("mul_") && !n.starts_with("log_")), "{names:?}");
    let ins = random_inputs(&g, &sizes(2, 1), 11, true);
    check(&g, &sched, &ins, Precision::F64, 1e-9);
    let gla =
        build(&table("gla", 2, 24, 17, "gate = { activation = \"logsigmoid\", tau = 16.0 }\noutput_norm = true\n"));
    let prog = mixc_passes::lower(&gla, &sched).unwrap_or_else(|e| panic!("{e}"));
    assert!(prog.kernels.iter().all(|k| k.name != "mul_o"), "the norm's weight has its own kernel");
    // An output gate after the norm (fla's `FusedRMSNormGated`): the weight
    // and `· silu(o_gate)` as the norm stores, in prefill and decode alike;
    // the gate's activation inside the recurrence.
    let gated = build(&table(
        "gla",
        2,
        24,
        17,
        "gate = { activation = \"logsigmoid\", tau = 16.0 }\noutput_norm = true\noutput_gate = \"swish\"\n",
    ));
    for (sched, t) in [(Schedule::decode(), 1), (Schedule::with_chunk(16), 37)] {
        let prog = mixc_passes::lower(&gated, &sched).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = prog.kernels.iter().map(|k| k.name.as_str()).collect();
        assert!(names.iter().all(|n| *n != "mul_o" && !n.starts_with("silu")), "{names:?}");
        assert!(names.contains(&"rmsnorm_o"), "the norm stores the gated output: {names:?}");
        // GLA's gate activation `logsigmoid(g) / τ` is computed as the
        // recurrence loads it: the recurrence and the norm, nothing else.
        assert_eq!(names.len(), 2, "{names:?}");
        let ins = random_inputs(&gated, &sizes(2, t), 13, true);
        check(&gated, &sched, &ins, Precision::F64, 1e-9);
        check(&gated, &sched, &ins, Precision::F32, 1e-4);
    }
}
