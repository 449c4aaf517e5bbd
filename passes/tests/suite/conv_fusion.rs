//! The short causal convolution fused into the recurrence kernels
//! (`Schedule::fuse_conv`): prefill, continued prefill from the carried
//! convolution tails and state, and decode, against the graph interpreter;
//! and the fused program really has fewer kernels and buffers.

use super::util::*;
use mixc_ir::tile::interp::Precision;
use mixc_ir::tile::{BufferRole, Program};
use mixc_passes::{lower, Schedule};
use proptest::prelude::*;

/// The mixers with a short convolution in front of their recurrence.
fn mixer(kind: u8, heads: u64, dk: u64, dv: u64, taps: u32, groups: u64) -> String {
    match kind % 4 {
        0 => format!(
            "kind = \"gated_deltanet\"\nheads = {heads}\ndk = {dk}\ndv = {dv}\nqk_norm = true\n\
             short_conv = {taps}\ngate = {{ activation = \"mamba\" }}\n"
        ),
        1 => {
            let groups = if heads.is_multiple_of(groups) { groups } else { 1 };
            format!(
                "kind = \"mamba2\"\nheads = {heads}\ndk = {dk}\ndv = {dv}\ngroups = {groups}\nshort_conv = {taps}\n"
            )
        }
        // A feature map after the convolution (maps the padding's zeros to ones)
        // and the normalizer.
        2 => format!(
            "kind = \"linear_attn\"\nheads = {heads}\ndk = {dk}\ndv = {dv}\nshort_conv = {taps}\n\
             feature_map = \"elu_plus_one\"\nnormalizer = true\n"
        ),
        _ => {
            format!("kind = \"deltanet\"\nheads = {heads}\ndk = {dk}\ndv = {dv}\nqk_norm = true\nshort_conv = {taps}\n")
        }
    }
}

/// 0: fused chunks, 1: split, 2: token by token.
fn schedule(mode: u8, chunk: u32, fuse_conv: bool) -> Schedule {
    let s = match mode {
        2 => Schedule::decode(),
        m => Schedule { split: m == 1, ..Schedule::with_chunk(chunk) },
    };
    Schedule { fuse_conv, ..s }
}

fn temp_buffers(p: &Program) -> usize {
    p.buffers.iter().filter(|b| b.role == BufferRole::Temp).count()
}

fn has_kernel(p: &Program, name: &str) -> bool {
    p.kernels.iter().any(|k| k.name == name)
}

#[derive(Debug, Clone)]
struct Case {
    kind: u8,
    heads: u64,
    dk: u64,
    dv: u64,
    taps: u32,
    groups: u64,
    b: usize,
    t1: usize,
    t2: usize,
    /// The first call brings a convolution tail and a state.
    warm: bool,
    chunk: u32,
    mode: u8,
    f32: bool,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    let dims = prop::sample::select(vec![8u64, 16, 17, 24]);
    (
        (0u8..4, prop::sample::select(vec![1u64, 2, 4]), dims.clone(), dims, 2u32..=4, 1u64..=2),
        (
            1usize..=2,
            prop_oneof![1usize..=4, 1usize..=100],
            prop::sample::select(vec![1usize, 1, 2, 5, 40]),
            any::<bool>(),
        ),
        (
            prop::sample::select(vec![16u32, 32, 64]),
            prop_oneof![2 => 0u8..=1, 1 => Just(2u8)],
            any::<bool>(),
            any::<u64>(),
        ),
    )
        .prop_map(|((kind, heads, dk, dv, taps, groups), (b, t1, t2, warm), (chunk, mode, f32, seed))| Case {
            kind,
            heads,
            dk,
            dv,
            taps,
            groups,
            b,
            t1,
            t2,
            warm,
            chunk,
            mode,
            f32,
            seed,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, max_shrink_iters: 64, ..ProptestConfig::default() })]

    /// A prefill (from nothing or from a carried tail and state), then a
    /// continued prefill or a decode step from what it left, with the
    /// convolution fused: every output (the new tails included) matches.
    #[test]
    fn fused_convolution_matches_the_reference(c in case()) {
        let g = build(&mixer(c.kind, c.heads, c.dk, c.dv, c.taps, c.groups));
        let sched = schedule(c.mode, c.chunk, true);
        let prec = if c.f32 { Precision::F32 } else { Precision::F64 };
        let first = inputs(&g, c.b, c.t1, c.seed, c.warm);
        check(&g, &sched, &first, prec, tol(prec));
        let second = continued(&g, &first, c.b, c.t1, c.t2, c.seed ^ 0x5eed);
        // Decode steps run the token-by-token form, as the runtime does.
        let sched2 = if c.t2 == 1 { schedule(2, c.chunk, true) } else { sched };
        check(&g, &sched2, &second, prec, tol(prec));
    }
}

/// Fusing leaves out the convolution's output kernel and the reshapes (and
/// L2 norms, per-step scaling) between it and the recurrence, with their
/// buffers; the new tails are still written; both programs match the reference.
#[test]
fn fusion_saves_kernels_and_buffers() {
    let cases = [
        (mixer(0, 2, 17, 24, 4, 1), ["q", "k", "v"].as_slice()),
        (mixer(1, 4, 16, 8, 4, 2), ["b", "c"].as_slice()),
        (mixer(3, 2, 16, 24, 3, 1), ["q", "k", "v"].as_slice()),
    ];
    for (text, fused_convs) in cases {
        let g = build(&text);
        for mode in 0..=2u8 {
            let on = lower(&g, &schedule(mode, 16, true)).unwrap_or_else(|e| panic!("{e}"));
            let off = lower(&g, &schedule(mode, 16, false)).unwrap_or_else(|e| panic!("{e}"));
            assert!(on.kernels.len() < off.kernels.len(), "{text}mode {mode}: {} kernels", on.kernels.len());
            assert!(on.launches.len() < off.launches.len());
            assert!(temp_buffers(&on) < temp_buffers(&off), "{text}mode {mode}");
            for name in fused_convs {
                assert!(has_kernel(&off, &format!("causal_conv1d_{name}_conv")));
                assert!(!has_kernel(&on, &format!("causal_conv1d_{name}_conv")), "{text}: `{name}` not fused");
                assert!(has_kernel(&on, &format!("causal_conv1d_{name}_conv_state_out")));
                assert!(!on.buffers.iter().any(|b| b.name == format!("{name}_conv")));
            }
            let t = if mode == 2 { 3 } else { 37 };
            let ins = inputs(&g, 2, t, 9 + mode as u64, true);
            for fuse in [true, false] {
                check(&g, &schedule(mode, 16, fuse), &ins, Precision::F64, 1e-9);
            }
        }
    }
}

/// Mamba2's convolved `x` also feeds the `D` skip: its convolution stays a
/// kernel (and the recurrence recomputes it rather than read `Δ·x`), while
/// `v = Δ·x` is no longer a buffer.
#[test]
fn mamba2_keeps_the_convolution_the_skip_needs() {
    let g = build(&mixer(1, 4, 16, 8, 4, 2));
    let p = lower(&g, &Schedule::with_chunk(32)).unwrap_or_else(|e| panic!("{e}"));
    assert!(has_kernel(&p, "causal_conv1d_x_conv"));
    assert!(!p.buffers.iter().any(|b| b.name == "v"), "{:?}", p.buffers.iter().map(|b| &b.name).collect::<Vec<_>>());
    let p = lower(&g, &Schedule { fuse_conv: false, ..Schedule::with_chunk(32) }).unwrap_or_else(|e| panic!("{e}"));
    assert!(p.buffers.iter().any(|b| b.name == "v"));
}

/// Prompts shorter than the convolution's reach (`T < K − 1`): the new tail
/// keeps rows of the old one; with and without an old tail, every form.
#[test]
fn prompts_shorter_than_the_tail() {
    for kind in [0u8, 1] {
        let g = build(&mixer(kind, 2, 16, 17, 4, 2));
        for t in 1..=4 {
            for warm in [false, true] {
                let ins = inputs(&g, 2, t, 40 + t as u64, warm);
                for mode in 0..=2u8 {
                    for prec in [Precision::F64, Precision::F32] {
                        check(&g, &schedule(mode, 16, true), &ins, prec, tol(prec));
                    }
                }
            }
        }
    }
}

/// Chunk-sized and ragged prompts at the largest chunk, carried across calls.
#[test]
fn ragged_prompts_across_calls() {
    let g = build(&mixer(0, 2, 24, 16, 4, 1));
    for (t1, t2, chunk) in [(64, 64, 64), (65, 63, 64), (130, 7, 128), (3, 129, 128)] {
        let first = inputs(&g, 1, t1, t1 as u64, false);
        for mode in 0..=1u8 {
            check(&g, &schedule(mode, chunk, true), &first, Precision::F64, 1e-9);
            let second = continued(&g, &first, 1, t1, t2, t2 as u64);
            check(&g, &schedule(mode, chunk, true), &second, Precision::F64, 1e-9);
        }
    }
}

/// Schedules recorded before the flag existed read as unfused (their kernels
/// were built that way); new ones fuse by default, decode included.
#[test]
fn the_flag_defaults() {
    let old =
        "chunk = 64\nsub_chunk = 16\nsplit = false\nblock_q = 64\nblock_k = 64\nblock_elems = 1024\nstep = false\n";
    let s: Schedule = toml::from_str(old).unwrap_or_else(|e| panic!("{e}"));
    assert!(!s.fuse_conv);
    assert!(Schedule::default().fuse_conv && Schedule::decode().fuse_conv && Schedule::with_chunk(16).fuse_conv);
    let back: Schedule = toml::from_str(&toml::to_string(&Schedule::default()).unwrap_or_default()).unwrap();
    assert_eq!(back, Schedule::default());
}
