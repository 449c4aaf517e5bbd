//! The CPU backend against the tile interpreter and the f64 graph interpreter:
//! every mixer of the library under random shapes and schedules, the inline
//! math against f64, and the generated code's independence from calls.

use mixc_backend_cpu::{clif_of, CpuKernel};
use mixc_ir::interp::{self, Tensor};
use mixc_ir::mixers::carried_input;
use mixc_ir::mixers::random_inputs;
use mixc_ir::ops::{BinaryFn, UnaryFn};
use mixc_ir::tile::interp::Precision;
use mixc_ir::tile::{Arg, BufferRole, KernelBuilder, Program};
use mixc_ir::{DType, Graph};
use mixc_passes::{lower, Schedule};
use proptest::prelude::*;
use std::collections::BTreeMap;

// ---------------------------------------------------------------- library --

fn table(kind: &str, h: usize, dk: usize, dv: usize, extra: &str) -> String {
    format!("kind = \"{kind}\"\nheads = {h}\ndk = {dk}\ndv = {dv}\n{extra}")
}

/// The library of passes/tests/suite/library.rs, with head dims `dk`, `dv`
/// (`d` for the attention kinds) chosen by the caller.
fn library(dk: usize, dv: usize, d: usize) -> Vec<(&'static str, String)> {
    let de = d + d % 2; // rotary embeddings need an even head dim
    vec![
        ("linear_attn", table("linear_attn", 2, dk, dv, "")),
        ("linear_attn_norm", table("linear_attn", 2, dk, dv, "normalizer = true\nfeature_map = \"elu_plus_one\"\n")),
        ("retnet", table("retnet", 3, dk, dv, "")),
        ("simple_gla", table("simple_gla", 2, dk, dv, "gate = { activation = \"neg_softplus\" }\n")),
        ("gla", table("gla", 2, dk, dv, "gate = { activation = \"logsigmoid\", tau = 16.0 }\noutput_norm = true\n")),
        ("mlstm", table("mlstm", 2, dk, dv, "gate_soft_cap = 15.0\n")),
        ("deltanet", table("deltanet", 2, dk, dv, "qk_norm = true\n")),
        (
            "gated_deltanet",
            table("gated_deltanet", 2, dk, dv, "qk_norm = true\nshort_conv = 4\ngate = { activation = \"mamba\" }\n"),
        ),
        ("mamba2", table("mamba2", 4, dk, dv, "groups = 2\nshort_conv = 4\n")),
        (
            "attention",
            format!("kind = \"attention\"\nheads = 4\nkv_heads = 2\nhead_dim = {de}\nrope = {{ theta = 10000.0 }}\n"),
        ),
        ("swa", format!("kind = \"attention\"\nheads = 2\nhead_dim = {d}\nwindow = 9\n")),
        ("sinks", format!("kind = \"attention\"\nheads = 2\nkv_heads = 1\nhead_dim = {d}\nwindow = 5\nsinks = 3\n")),
        ("liger", format!("kind = \"liger\"\nheads = 2\nhead_dim = {de}\nwindow = 8\nrope = {{ theta = 100.0 }}\n")),
        (
            "lizard",
            format!(
                "kind = \"lizard\"\nheads = 2\nhead_dim = {d}\nwindow = 8\nmeta_tokens = 2\ncombine = \"separate\"\n"
            ),
        ),
        (
            "lizard_shared",
            format!("kind = \"lizard\"\nheads = 2\nhead_dim = {d}\nwindow = 6\nmeta_tokens = 1\ncombine = \"shared\"\n"),
        ),
        (
            "duo",
            format!(
                "kind = \"duo\"\nheads = 4\nkv_heads = 2\nhead_dim = {d}\nsinks = 2\nwindow = 5\nretrieval_heads = [1]\n"
            ),
        ),
        ("mom", table("mom", 2, dk, dv, "memories = 3\ntop_k = 2\nshared_memory = true\n")),
        (
            "gla_gated",
            table(
                "gla",
                2,
                dk,
                dv,
                "gate = { activation = \"logsigmoid\", tau = 16.0 }\noutput_norm = true\noutput_gate = \"swish\"\n",
            ),
        ),
    ]
}

const LIB_LEN: usize = 18;

fn build(text: &str) -> Graph {
    let cfg: mixc_ir::model::MixerConfig = toml::from_str(text).unwrap_or_else(|e| panic!("bad config: {e}\n{text}"));
    mixc_ir::mixers::build("m", &cfg).unwrap_or_else(|e| panic!("{e}"))
}

fn sizes(b: usize, t: usize) -> BTreeMap<&'static str, usize> {
    BTreeMap::from([("B", b), ("T", t), ("S", 0)])
}

// ------------------------------------------------------------- executor --

enum Buf {
    F(Vec<f32>),
    I(Vec<i32>),
}

impl Buf {
    fn addr(&mut self) -> u64 {
        match self {
            Buf::F(v) => v.as_mut_ptr() as u64,
            Buf::I(v) => v.as_mut_ptr() as u64,
        }
    }
    fn to_f64(&self) -> Vec<f64> {
        match self {
            Buf::F(v) => v.iter().map(|x| *x as f64).collect(),
            Buf::I(v) => v.iter().map(|x| *x as f64).collect(),
        }
    }
}

/// Runs a program serially on the CPU backend.
fn run_cpu(prog: &Program, inputs: &BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    let sizes = prog.bind(inputs).unwrap_or_else(|e| panic!("bind: {e}"));
    let shape_of =
        |b: &mixc_ir::tile::BufferDecl| -> Vec<usize> { b.shape.iter().map(|c| c.eval(&sizes) as usize).collect() };
    let mut bufs: Vec<Buf> = prog
        .buffers
        .iter()
        .map(|b| {
            let n: usize = shape_of(b).iter().product();
            let data = match &b.role {
                BufferRole::Input { name, .. } => {
                    Some(inputs.get(name).map(|t| t.data.clone()).unwrap_or(vec![0.0; n]))
                }
                _ => None,
            };
            if b.dtype.is_float() {
                // 16-bit buffers hold f32 words of their precision (the runtime rounds inputs).
                Buf::F(match data {
                    Some(d) => d.iter().map(|x| b.dtype.round(*x) as f32).collect(),
                    None => vec![f32::NAN; n],
                })
            } else {
                Buf::I(match data {
                    Some(d) => d.iter().map(|x| x.trunc() as i32).collect(),
                    None => vec![i32::MIN; n],
                })
            }
        })
        .collect();
    let kernels: Vec<CpuKernel> =
        prog.kernels.iter().map(|k| CpuKernel::compile(k).unwrap_or_else(|e| panic!("compile: {e}"))).collect();
    for l in &prog.launches {
        let grid = [0, 1, 2].map(|i| l.grid[i].eval(&sizes));
        if grid.contains(&0) {
            continue;
        }
        let args: Vec<u64> = l
            .args
            .iter()
            .map(|a| match a {
                Arg::Buffer(i) => bufs[*i].addr(),
                Arg::Size(c) => c.eval(&sizes) as i64 as u64,
                Arg::Float(x) => (*x as f32).to_bits() as u64,
            })
            .collect();
        let k = &kernels[l.kernel];
        for z in 0..grid[2] {
            for y in 0..grid[1] {
                for x in 0..grid[0] {
                    // Safety: the buffers are sized by the program's declarations.
                    unsafe { k.run_program(&args, [x as u32, y as u32, z as u32]) };
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    for (b, data) in prog.buffers.iter().zip(&bufs) {
        if let BufferRole::Output(name) = &b.role {
            out.insert(name.clone(), Tensor { shape: shape_of(b), data: data.to_f64() });
        }
    }
    out
}

/// Max over (first, second axis) slices of ‖a − b‖ / ‖b‖; NaN gives infinity
/// (passes/tests/suite/util.rs).
/// The first element (index, both values) where `a` and `b`, values of the
/// 16-bit dtype `d` with rows of `row` elements (the last dim), are further
/// apart than one unit in the last place of `d` plus f32's rounding noise at
/// the scale of their row (a result near 0 by cancellation differs in many
/// of its own ulps when the f32 sums run in another order).
fn one_ulp_apart(a: &[f64], b: &[f64], row: usize, d: DType) -> Option<(usize, f64, f64)> {
    // Mantissa bits and the smallest normal's exponent: below it the ulp is fixed.
    let (bits, min_exp) = if d == DType::F16 { (10, -14) } else { (7, -126) };
    let row = row.max(1);
    a.chunks(row).zip(b.chunks(row)).enumerate().find_map(|(r, (ra, rb))| {
        let scale = ra.iter().chain(rb).fold(0.0f64, |m, x| m.max(x.abs()));
        ra.iter().zip(rb).enumerate().find_map(|(j, (x, y))| {
            let big = x.abs().max(y.abs()).max(2f64.powi(min_exp));
            let ulp = 2f64.powi(big.log2().floor() as i32 - bits);
            ((x - y).abs() > ulp * (1.0 + 1e-9) + 1e-5 * scale).then_some((r * row + j, *x, *y))
        })
    })
}

fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    rel_err_above(a, b, 0.0)
}

/// [`rel_err`] with every slice's reference scale taken as at least `floor`
/// (rms): where a format loses relative precision below some magnitude (f16's
/// subnormals, below 2⁻¹⁴, are spaced 2⁻²⁴ apart), a slice that small is held
/// to the absolute error the format makes at `floor`.
fn rel_err_above(a: &Tensor, b: &Tensor, floor: f64) -> f64 {
    assert_eq!(a.shape, b.shape, "shapes differ");
    if a.data.iter().any(|x| !x.is_finite()) {
        return f64::INFINITY;
    }
    let (n0, n1) = (a.shape.first().copied().unwrap_or(1), a.shape.get(1).copied().unwrap_or(1));
    let inner = a.data.len() / (n0 * n1).max(1);
    let act = a.shape.len() == 4 && a.shape[1] != 0;
    let mut num = BTreeMap::<(usize, usize), f64>::new();
    let mut den = BTreeMap::<(usize, usize), f64>::new();
    for (i, (x, y)) in a.data.iter().zip(&b.data).enumerate() {
        let key = if act {
            let h = a.shape[2];
            let d = a.shape[3];
            (i / (a.shape[1] * h * d), (i / d) % h)
        } else {
            (i / (n1 * inner).max(1), (i / inner.max(1)) % n1.max(1))
        };
        *num.entry(key).or_default() += (x - y) * (x - y);
        *den.entry(key).or_default() += y * y + floor * floor;
    }
    let mut worst: f64 = 0.0;
    for (k, n) in num {
        let d = den[&k];
        worst = worst.max(if d == 0.0 { n.sqrt() } else { (n / d).sqrt() });
    }
    worst
}

/// Lowers `g`, runs it on the CPU backend, the tile interpreter (f32) and the
/// graph interpreter (f64, on f32-rounded inputs); compares every output.
/// Returns the graph interpreter's outputs.
fn check(name: &str, g: &Graph, sched: &Schedule, inputs: &BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    let inputs: BTreeMap<String, Tensor> = inputs
        .iter()
        .map(|(n, t)| {
            (n.clone(), Tensor { shape: t.shape.clone(), data: t.data.iter().map(|x| *x as f32 as f64).collect() })
        })
        .collect();
    let want = interp::run(g, &inputs).unwrap_or_else(|e| panic!("{name}: interp: {e}"));
    let prog = lower(g, sched).unwrap_or_else(|e| panic!("{name}: lower: {e}"));
    let (tile, _) = prog.run(&inputs, Precision::F32).unwrap_or_else(|e| panic!("{name}: tile run: {e}"));
    let got = run_cpu(&prog, &inputs);
    for (out, w) in &want {
        let o = got.get(out).unwrap_or_else(|| panic!("{name}: no output `{out}`"));
        let e = rel_err(o, w);
        if std::env::var("MIXC_TEST_VERBOSE").is_ok() {
            eprintln!("{name}: `{out}` {:?}: error {e:e} vs f64", o.shape);
        }
        assert!(e <= 1e-4, "{name}: `{out}` vs f64 reference: relative error {e:e} (schedule {sched:?})");
        if let Some(t) = tile.get(out) {
            let e = rel_err(o, t);
            assert!(e <= 1e-4, "{name}: `{out}` vs tile interpreter: relative error {e:e} (schedule {sched:?})");
        }
    }
    want
}

/// 0: fused chunks, 1: split, 2: token by token, 3: split with the chunk scan.
fn schedule(mode: u8, chunk: u32, block: u32) -> Schedule {
    Schedule {
        split: mode == 1 || mode == 3,
        scan: mode == 3,
        step: mode == 2,
        block_q: block,
        block_k: block,
        block_elems: 256,
        ..Schedule::with_chunk(chunk)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, max_shrink_iters: 16, ..ProptestConfig::default() })]

    /// A prefill (with or without an initial state), then a continued prefill
    /// or a decode step (T = 1) from the carried state.
    #[test]
    fn every_mixer_matches_the_interpreters(
        which in 0usize..LIB_LEN,
        b in 1usize..3,
        t1 in prop::sample::select(vec![1usize, 2, 5, 16, 17, 31, 40, 64, 70]),
        t2 in prop::sample::select(vec![1usize, 1, 3, 33]),
        dk in prop::sample::select(vec![8usize, 16, 17, 24]),
        dv in prop::sample::select(vec![8usize, 16, 24, 40]),
        d in prop::sample::select(vec![16usize, 17, 24, 40]),
        chunk in prop::sample::select(vec![16u32, 32, 64, 128, 256]),
        mode in 0u8..4,
        block in prop::sample::select(vec![16u32, 32, 64]),
        products: bool,
        with_state: bool,
        seed: u64,
    ) {
        let lib = library(dk, dv, d);
        let (name, text) = &lib[which];
        let g = build(text);
        let sched = Schedule { decay_products: products, ..schedule(mode, chunk, block) };
        let first = random_inputs(&g, &sizes(b, t1), seed, with_state);
        let carried = check(name, &g, &sched, &first);
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
        let step = schedule(if t2 == 1 { 2 } else { mode }, chunk, block);
        check(name, &g, &step, &second);
        if t2 == 1 {
            // The CPU's own decode step (recurrent states in blocks of rows).
            check(name, &g, &Schedule::decode_for(mixc_passes::device::DeviceKind::Cpu), &second);
        }
    }
}

/// Every mixer once, fused, split, step and scan, at a ragged size with
/// state; the chunked forms also with GLA's diagonal blocks from decay
/// products; and the CPU's decode-step schedule (states in blocks of rows)
/// over several tokens.
#[test]
fn every_mixer_every_mode() {
    for (name, text) in library(17, 24, 24) {
        let g = build(&text);
        let ins = random_inputs(&g, &sizes(2, 37), 7, true);
        for mode in 0..4 {
            check(name, &g, &schedule(mode, 16, 16), &ins);
            if mode != 2 {
                check(name, &g, &Schedule { decay_products: true, ..schedule(mode, 16, 16) }, &ins);
            }
        }
        check(name, &g, &Schedule::decode_for(mixc_passes::device::DeviceKind::Cpu), &ins);
    }
}

// ------------------------------------------------ attention split over keys --

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, max_shrink_iters: 16, ..ProptestConfig::default() })]

    /// Attention split over keys (`Schedule::kv_split`: partial results per
    /// run of keys, then a kernel combining them; or not split), in query
    /// blocks of one row and of 16, in every mixer of the
    /// library that attends: decode steps and short prefills against a cache
    /// (`S`, random contents) of ragged length, empty, shorter than a split
    /// and longer than several, against both interpreters.
    #[test]
    fn kv_split_attention_matches_the_interpreters(
        which in prop::sample::select(vec![9usize, 10, 11, 12, 13, 14, 15]),
        b in 1usize..3,
        t in prop::sample::select(vec![1usize, 1, 2, 5, 17]),
        s in prop::sample::select(vec![0usize, 1, 15, 16, 33, 70, 130]),
        d in prop::sample::select(vec![16usize, 17, 24]),
        block_k in prop::sample::select(vec![16u32, 32]),
        splits_per_block in prop::sample::select(vec![0u32, 1, 2, 3]),
        // 1: the CPU's decode steps (`Schedule::decode_for`).
        block_q in prop::sample::select(vec![1u32, 16]),
        seed: u64,
    ) {
        let lib = library(16, 16, d);
        let (name, text) = &lib[which];
        let g = build(text);
        let sched = Schedule { block_k, block_q, kv_split: block_k * splits_per_block, ..Schedule::decode() };
        let ins = random_inputs(&g, &BTreeMap::from([("B", b), ("T", t), ("S", s)]), seed, true);
        check(name, &g, &sched, &ins);
    }
}

// -------------------------------------------------- multi-token steps --

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, max_shrink_iters: 16, ..ProptestConfig::default() })]

    /// The step form over `n` tokens per pass of the state
    /// (`Schedule::step_tokens`, one pass of registers over the state on
    /// x86): every diagonal recurrence of the library against both
    /// interpreters, at lengths not a multiple of `n` and shorter than it, the
    /// state whole or in blocks of rows (`Schedule::state_rows`, the CPU's
    /// decode step, also at one token a pass), and with the state whole bit
    /// for bit against the one-token step form (the same arithmetic).
    #[test]
    fn multi_token_steps_match_the_interpreters(
        which in prop::sample::select(vec![0usize, 1, 2, 3, 4, 5, 8]),
        b in 1usize..3,
        t in prop::sample::select(vec![1usize, 2, 3, 7, 8, 9, 17, 40]),
        dk in prop::sample::select(vec![8usize, 16, 17, 24]),
        dv in prop::sample::select(vec![8usize, 16, 24, 40]),
        n in prop::sample::select(vec![1u32, 2, 4, 8]),
        block_v in prop::sample::select(vec![0u32, 16]),
        state_rows in prop::sample::select(vec![0u32, 4, 8]),
        with_state: bool,
        seed: u64,
    ) {
        let lib = library(dk, dv, 16);
        let (name, text) = &lib[which];
        let g = build(text);
        let ins = random_inputs(&g, &sizes(b, t), seed, with_state);
        let sched = Schedule { block_v, state_rows, ..Schedule::steps(n) };
        check(name, &g, &sched, &ins);
        if state_rows > 0 {
            return Ok(());
        }
        let ins: BTreeMap<String, Tensor> = ins
            .into_iter()
            .map(|(k, x)| (k, Tensor { data: x.data.iter().map(|v| *v as f32 as f64).collect(), ..x }))
            .collect();
        let run = |s: &Schedule| run_cpu(&lower(&g, s).unwrap_or_else(|e| panic!("{name}: {e}")), &ins);
        let (many, one) = (run(&sched), run(&Schedule { block_v, ..Schedule::decode() }));
        for (out, x) in &one {
            let same = many[out].data.iter().zip(&x.data).all(|(a, b)| a == b);
            prop_assert!(same, "{}: `{}` differs from the one-token step form", name, out);
        }
    }
}

// ------------------------------------------------------- 16-bit storage --

/// What `prog`'s input buffers hold of `raw` (rounded to each buffer's dtype),
/// for the reference.
fn held_inputs(prog: &Program, raw: &BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    raw.iter()
        .map(|(n, x)| {
            let d = prog
                .buffers
                .iter()
                .find(|b| matches!(&b.role, BufferRole::Input { name, .. } if name == n))
                .map(|b| b.dtype)
                .unwrap_or(DType::F32);
            (n.clone(), Tensor { shape: x.shape.clone(), data: x.data.iter().map(|v| d.round(*v)).collect() })
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, max_shrink_iters: 16, ..ProptestConfig::default() })]

    /// bf16 / f16 storage of activations (and KV caches): the CPU backend
    /// stores exactly what the tile interpreter does (values of the storage's precision) and both
    /// compute the f64 reference of the rounded inputs (bf16's output rounding
    /// ≈ 2⁻⁹ relative; the states, f32, to f32's tolerance).
    #[test]
    fn narrow_storage_matches_the_interpreters(
        which in prop::sample::select(vec![4usize, 5, 7, 8, 9, 10]),
        f16: bool,
        b in 1usize..3,
        t in prop::sample::select(vec![1usize, 5, 17, 40, 70]),
        mode in 0u8..3,
        chunk in prop::sample::select(vec![16u32, 32, 64]),
        with_state: bool,
        seed: u64,
    ) {
        let lib = library(17, 24, 24);
        let (name, text) = &lib[which];
        let g = build(text);
        let storage = if f16 { mixc_passes::Storage::F16 } else { mixc_passes::Storage::Bf16 };
        let sched = Schedule { storage, ..schedule(mode, chunk, 32) };
        let prog = lower(&g, &sched).unwrap_or_else(|e| panic!("{name}: {e}"));
        let raw = random_inputs(&g, &sizes(b, t), seed, with_state);
        // What the input buffers hold, for the reference.
        let held = held_inputs(&prog, &raw);
        let want = interp::run(&g, &held).unwrap_or_else(|e| panic!("{name}: interp: {e}"));
        let (tile, _) = prog.run(&raw, Precision::F32).unwrap_or_else(|e| panic!("{name}: tile run: {e}"));
        let got = run_cpu(&prog, &raw);
        for (out, w) in &want {
            let d = prog
                .buffers
                .iter()
                .find(|b| b.role == BufferRole::Output(out.clone()))
                .map(|b| b.dtype)
                .unwrap_or(DType::F32);
            // `o` and the KV caches (copies of the rounded keys and values).
            let narrow = out == "o" || mixc_passes::is_kv_cache(out);
            prop_assert_eq!(narrow, d != DType::F32, "{}: `{}` is stored as {}", name, out, d);
            let o = got.get(out).unwrap_or_else(|| panic!("{name}: no output `{out}`"));
            prop_assert!(o.data.iter().all(|x| d.round(*x) == *x), "{}: `{}` holds values that are not {}", name, out, d);
            let tol = match d { DType::BF16 => 4e-3, DType::F16 => 6e-4, _ => 1e-4 };
            // f16 holds values below 2⁻¹⁴ as subnormals, 2⁻²⁴ apart: a head
            // whose output is that small (Gated DeltaNet, one token, a tiny
            // β: rms 3.4e-6) has a relative error of 5e-3 from rounding alone.
            let floor = if d == DType::F16 { 2f64.powi(-14) } else { 0.0 };
            let e = rel_err_above(o, w, floor);
            prop_assert!(e <= tol, "{}: `{}` ({}) vs f64 reference: relative error {:e} (schedule {:?})", name, out, d, e, sched);
            // Against the interpreter: the same roundings, up to a one-ulp
            // difference where the f32 results (summed in another order)
            // straddle a rounding boundary of the storage's precision. Each
            // element on its own: in a short slice one such ulp is a
            // relative error of the slice's norm up to the ulp itself.
            // A program that rounds an intermediate to the storage dtype (the
            // keys after RoPE, written to a bf16 KV cache) can turn a last-bit
            // f32 difference upstream (sin/cos) into a one-ulp difference of
            // a key and so several of `o`: held to the storage's tolerance.
            let rounded_midway = prog.buffers.iter().any(|b| {
                matches!(&b.role, BufferRole::Output(n) if mixc_passes::is_kv_cache(n)) && b.dtype != DType::F32
            });
            if narrow && rounded_midway {
                let e = rel_err(o, &tile[out]);
                prop_assert!(e <= tol, "{}: `{}` vs tile interpreter: relative error {:e}", name, out, e);
            } else if narrow {
                let bad = one_ulp_apart(&o.data, &tile[out].data, o.shape.last().copied().unwrap_or(1), d);
                prop_assert!(bad.is_none(), "{}: `{}` vs tile interpreter: {:?} more than one {} ulp apart", name, out, bad, d);
            } else {
                // f32 outputs (states) to f32's tolerance: mLSTM's stabilizer
                // `final_m`, a running sum of log gates, can sit near zero,
                // where both sides' f32 rounding shows (2.8e-5 seen once).
                let e = rel_err(o, &tile[out]);
                prop_assert!(e <= tol, "{}: `{}` vs tile interpreter: relative error {:e}", name, out, e);
            }
        }
    }
}

// ------------------------------------------------------------ no calls ---

/// The generated code holds the whole loop nest: no calls.
#[test]
fn generated_code_calls_nothing() {
    for (name, text) in library(17, 24, 24) {
        let g = build(&text);
        for mode in 0..3 {
            let prog = lower(&g, &schedule(mode, 64, 32)).unwrap_or_else(|e| panic!("{name}: {e}"));
            for k in &prog.kernels {
                let clif = clif_of(k).unwrap_or_else(|e| panic!("{name}: {e}"));
                for line in clif.lines() {
                    let l = line.trim();
                    let call = l.contains(" call ")
                        || l.starts_with("call ")
                        || l.contains("call_indirect")
                        || l.contains("return_call")
                        || (l.starts_with("fn") && l.contains(" = "));
                    assert!(!call, "{name}: kernel `{}` calls out: {l}", k.name);
                }
                // Nor anything that needs linking: the code runs wherever it is copied.
                let ck = CpuKernel::compile(k).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(ck.machine_code().is_some(), "{name}: kernel `{}` has relocations", k.name);
            }
        }
    }
}

/// Machine code handed out for a cache runs the same when loaded back.
#[test]
fn machine_code_reloads() {
    let k = math_kernel(Ok(UnaryFn::Exp));
    let code = k.machine_code().expect("self-contained code").to_vec();
    // Safety: the bytes, parameter count and frame come from `k`, in this process.
    let again = unsafe { CpuKernel::from_machine_code("math", &code, k.params(), k.frame_bytes()) }.expect("load");
    assert_eq!(again.machine_code(), Some(&code[..]));
    let xs = sweep(-20.0, 20.0, 1000);
    let (a, b) = (apply(&k, &xs, &[]), apply(&again, &xs, &[]));
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    assert!(!mixc_backend_cpu::host_fingerprint().expect("fingerprint").is_empty());
}

// ----------------------------------------------------------------- math --

/// A kernel `y[i] = f(x[i])` (or `f(x[i], z[i])`) over `n` elements, 256 per program.
fn math_kernel(op: Result<UnaryFn, BinaryFn>) -> CpuKernel {
    let mut kb = KernelBuilder::new("math");
    let x = kb.ptr_param("x", DType::F32);
    let z = kb.ptr_param("z", DType::F32);
    let y = kb.ptr_param("y", DType::F32);
    let n = kb.scalar_param("n", DType::I32).expect("param");
    let pid = kb.program_id(0).expect("pid");
    let c = kb.i32(256).expect("const");
    let base = kb.mul(pid, c).expect("mul");
    let ar = kb.arange(256).expect("arange");
    let off = kb.add(ar, base).expect("add");
    let m = kb.lt(off, n).expect("lt");
    let xv = kb.load(x, off, Some(m), 0.0).expect("load");
    let r = match op {
        Ok(f) => kb.unary(f, xv).expect("unary"),
        Err(f) => {
            let zv = kb.load(z, off, Some(m), 0.0).expect("load");
            kb.binary(f, xv, zv).expect("binary")
        }
    };
    kb.store(y, off, r, Some(m)).expect("store");
    CpuKernel::compile(&kb.finish().expect("kernel")).expect("compile")
}

fn apply(k: &CpuKernel, xs: &[f32], zs: &[f32]) -> Vec<f32> {
    let n = xs.len();
    let mut x = xs.to_vec();
    let mut z = if zs.is_empty() { vec![0.0; n] } else { zs.to_vec() };
    let mut y = vec![f32::NAN; n];
    let args = [x.as_mut_ptr() as u64, z.as_mut_ptr() as u64, y.as_mut_ptr() as u64, n as i64 as u64];
    for p in 0..n.div_ceil(256) {
        // Safety: every access is masked to `n`.
        unsafe { k.run_program(&args, [p as u32, 0, 0]) };
    }
    y
}

/// Distance in f32 ulps between `got` and the f64 value `want` (0 when `got`
/// is `want` rounded to f32, infinities included).
fn ulps(got: f32, want: f64) -> f64 {
    let w = want as f32;
    if w.is_nan() || got.is_nan() {
        return if w.is_nan() && got.is_nan() { 0.0 } else { f64::INFINITY };
    }
    if w == got {
        return 0.0;
    }
    if w.is_infinite() || got.is_infinite() {
        return f64::INFINITY;
    }
    let a = w.abs();
    let ulp = (f32::from_bits(a.to_bits() + 1) - a) as f64;
    (got as f64 - want).abs() / ulp
}

fn sweep(lo: f32, hi: f32, n: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..n).map(|i| lo + (hi - lo) * (i as f32 / (n - 1) as f32)).collect();
    // Also a log-spaced sweep of both signs for wide ranges.
    let mut e = 1e-30f32;
    while e < hi.abs().max(lo.abs()) {
        if e <= hi && e >= lo {
            v.push(e);
        }
        if -e >= lo && -e <= hi {
            v.push(-e);
        }
        e *= 1.37;
    }
    v
}

fn check_unary(f: UnaryFn, reference: fn(f64) -> f64, xs: &[f32], max_ulps: f64) {
    let k = math_kernel(Ok(f));
    let ys = apply(&k, xs, &[]);
    let mut worst = (0.0, 0.0f32);
    for (x, y) in xs.iter().zip(&ys) {
        let want = reference(*x as f64);
        // Products of underflowed factors (silu far left) lose their subnormal bits.
        let tiny = f == UnaryFn::Silu && want.abs() < 1e-30 && (*y as f64 - want).abs() <= want.abs() * 1e-4 + 1e-40;
        let u = if tiny { 0.0 } else { ulps(*y, want) };
        if u > worst.0 {
            worst = (u, *x);
        }
        assert!(u <= max_ulps, "{f:?}({x:e}) = {y:e}, want {want:e} ({u:.1} ulps)");
    }
    eprintln!("{f:?}: worst {:.2} ulps at {:e}", worst.0, worst.1);
}

const SPECIAL: [f32; 7] = [0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 1e-42, -1e-42];

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        x.exp() / (1.0 + x.exp())
    }
}

fn softplus(x: f64) -> f64 {
    if x > 0.0 {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    }
}

#[test]
fn math_exp_log() {
    let mut xs = sweep(-110.0, 95.0, 20011);
    xs.extend(SPECIAL);
    xs.extend([88.72, 88.7228, 88.73, -87.33, -103.9, -104.0, -150.0]);
    check_unary(UnaryFn::Exp, f64::exp, &xs, 2.0);
    let mut ls = sweep(0.0, 3e38, 20011);
    ls.extend(SPECIAL);
    ls.extend([1.0, 0.999_999_94, 1.000_000_1, f32::MIN_POSITIVE, 1e-45, f32::MAX, -1.0]);
    check_unary(UnaryFn::Log, f64::ln, &ls, 2.0);
    let ls: Vec<f32> = (1..5000).map(|i| 0.5 + i as f32 * 3e-4).collect();
    check_unary(UnaryFn::Log, f64::ln, &ls, 2.0);
}

#[test]
fn math_sigmoid_family() {
    let mut xs = sweep(-120.0, 120.0, 20011);
    xs.extend(SPECIAL);
    check_unary(UnaryFn::Sigmoid, sigmoid, &xs, 3.0);
    check_unary(UnaryFn::Softplus, softplus, &xs, 3.0);
    check_unary(UnaryFn::LogSigmoid, |x| -softplus(-x), &xs, 3.0);
    check_unary(UnaryFn::Silu, |x| x * sigmoid(x), &xs, 4.0);
    check_unary(UnaryFn::Tanh, f64::tanh, &xs, 3.0);
    check_unary(UnaryFn::Elu, |x| if x > 0.0 { x } else { x.exp_m1() }, &xs, 3.0);
    check_unary(UnaryFn::EluPlusOne, |x| if x > 0.0 { x + 1.0 } else { x.exp() }, &xs, 2.0);
}

#[test]
fn math_sin_cos() {
    let mut xs = sweep(-10000.0, 10000.0, 40011);
    xs.extend(SPECIAL);
    // Near multiples of π/2 the absolute error counts: compare with a floor of 2⁻²⁴.
    let k = math_kernel(Ok(UnaryFn::Sin));
    let kc = math_kernel(Ok(UnaryFn::Cos));
    for (kern, f, name) in [(&k, f64::sin as fn(f64) -> f64, "sin"), (&kc, f64::cos, "cos")] {
        let ys = apply(kern, &xs, &[]);
        for (x, y) in xs.iter().zip(&ys) {
            let want = f(*x as f64);
            if want.is_nan() {
                assert!(y.is_nan(), "{name}({x}) = {y}");
                continue;
            }
            let err = (*y as f64 - want).abs();
            let tol = (want.abs() * 2.5 * f32::EPSILON as f64).max(2f64.powi(-24) * (1.0 + x.abs() as f64 / 1e4));
            assert!(err <= tol, "{name}({x}) = {y}, want {want} (error {err:e})");
        }
    }
}

#[test]
fn math_other_unary() {
    let mut xs = sweep(-1e6, 1e6, 20011);
    xs.extend(SPECIAL);
    xs.extend([0.5, -0.5, 1.5, -1.5, 2.5, 8_388_607.5, -8_388_607.5]);
    check_unary(UnaryFn::Round, f64::round, &xs, 0.0);
    check_unary(UnaryFn::Floor, f64::floor, &xs, 0.0);
    check_unary(UnaryFn::Abs, f64::abs, &xs, 0.0);
    check_unary(UnaryFn::Neg, |x| -x, &xs, 0.0);
    check_unary(UnaryFn::Relu, |x| x.max(0.0), &xs, 0.0);
    let pos: Vec<f32> = xs.iter().map(|x| x.abs()).collect();
    check_unary(UnaryFn::Sqrt, f64::sqrt, &pos, 0.5);
    check_unary(UnaryFn::Rsqrt, |x| 1.0 / x.sqrt(), &pos, 1.5);
    check_unary(UnaryFn::Recip, |x| 1.0 / x, &xs, 0.5);
}

#[test]
fn math_pow() {
    let k = math_kernel(Err(BinaryFn::Pow));
    let mut xs = Vec::new();
    let mut zs = Vec::new();
    for a in [0.0f32, -0.0, 0.5, 1.0, 2.0, 3.0, 10000.0, 1e-3, -2.0, -3.5, f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
        for b in [0.0f32, 1.0, -1.0, 2.0, 3.0, -2.0, 0.5, -0.9, 7.25, 30.0, -30.0, f32::NAN] {
            xs.push(a);
            zs.push(b);
        }
    }
    for i in 0..4000 {
        xs.push(0.01 + i as f32 * 0.05);
        zs.push(-4.0 + (i % 97) as f32 * 0.09);
    }
    let ys = apply(&k, &xs, &zs);
    for ((a, b), y) in xs.iter().zip(&zs).zip(&ys) {
        let want = (*a as f64).powf(*b as f64);
        let bl = (*b as f64 * (a.abs() as f64).ln()).abs();
        let scale = if bl.is_finite() { 2.0 + 3.0 * bl } else { 2.0 };
        let u = ulps(*y, want);
        assert!(
            u <= scale || (want.abs() < 1e-38 && y.abs() < 1e-37),
            "pow({a}, {b}) = {y}, want {want} ({u:.1} ulps)"
        );
    }
}

/// Integer arithmetic: division truncates, floordiv and rem floor, division by zero gives 0.
#[test]
fn integer_division() {
    let mut kb = KernelBuilder::new("idiv");
    let x = kb.ptr_param("x", DType::I32);
    let z = kb.ptr_param("z", DType::I32);
    let y = kb.ptr_param("y", DType::I32);
    let ar = kb.arange(64).expect("arange");
    let xv = kb.load(x, ar, None, 0.0).expect("load");
    let zv = kb.load(z, ar, None, 0.0).expect("load");
    let d = kb.binary(BinaryFn::Div, xv, zv).expect("div");
    let fd = kb.binary(BinaryFn::FloorDiv, xv, zv).expect("floordiv");
    let r = kb.binary(BinaryFn::Rem, xv, zv).expect("rem");
    let c64 = kb.i32(64).expect("c");
    let c128 = kb.i32(128).expect("c");
    let o1 = kb.add(ar, c64).expect("add");
    let o2 = kb.add(ar, c128).expect("add");
    kb.store(y, ar, d, None).expect("store");
    kb.store(y, o1, fd, None).expect("store");
    kb.store(y, o2, r, None).expect("store");
    let k = CpuKernel::compile(&kb.finish().expect("kernel")).expect("compile");
    let mut xs: Vec<i32> = (0..64).map(|i| (i * 37 % 41) - 20).collect();
    let mut zs: Vec<i32> = (0..64).map(|i| (i * 13 % 11) - 5).collect();
    xs[0] = i32::MIN;
    zs[0] = -1;
    let mut ys = vec![0i32; 192];
    let args = [xs.as_mut_ptr() as u64, zs.as_mut_ptr() as u64, ys.as_mut_ptr() as u64];
    // Safety: 64 elements in, 192 out.
    unsafe { k.run_program(&args, [0, 0, 0]) };
    for i in 0..64 {
        let (a, b) = (xs[i], zs[i]);
        let (d, fd, r) = if b == 0 {
            (0, 0, a)
        } else {
            (
                a.wrapping_div(b),
                (a as f64 / b as f64).floor() as i32,
                a.wrapping_sub(b.wrapping_mul((a as f64 / b as f64).floor() as i32)),
            )
        };
        if i == 0 {
            assert_eq!(ys[i], i32::MIN, "MIN / -1 wraps");
            continue;
        }
        assert_eq!(ys[i], d, "{a} div {b}");
        assert_eq!(ys[64 + i], fd, "{a} floordiv {b}");
        if b != 0 {
            assert_eq!(ys[128 + i], r, "{a} rem {b}");
        }
    }
}

// ---------------------------------------------------------------- bench --

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Times a mixer on the CPU backend (not a check): `cargo test -p mixc-backend-cpu
/// --test main -- --ignored bench --nocapture`, sized by
/// MIXC_BENCH_{KIND,B,T,H,D,S,MODE,CHUNK,THREADS,REPS,BLOCK_V,BLOCK_Q,BLOCK_K,GATE,TOKENS,PRODUCTS}
/// (S: cached tokens of attention, with random caches)
/// (TOKENS: tokens per pass of the step form, MODE=2; PRODUCTS=1: GLA's
/// diagonal blocks from decay products).
#[test]
#[ignore]
fn bench() {
    let kind: String = env_or("MIXC_BENCH_KIND", "gla".to_string());
    let (b, t, h, d) = (
        env_or("MIXC_BENCH_B", 1),
        env_or("MIXC_BENCH_T", 512),
        env_or("MIXC_BENCH_H", 16),
        env_or("MIXC_BENCH_D", 128),
    );
    let mode: u8 = env_or("MIXC_BENCH_MODE", 0);
    let chunk: u32 = env_or("MIXC_BENCH_CHUNK", 64);
    let threads: usize = env_or("MIXC_BENCH_THREADS", 2);
    let reps: usize = env_or("MIXC_BENCH_REPS", 5);
    // MIXC_BENCH_GATE=none: gates taken as log decays, as the anchors file does.
    let gate: String = env_or("MIXC_BENCH_GATE", String::new());
    let gated = |act: &str| format!("gate = {{ activation = \"{}\" }}\n", if gate.is_empty() { act } else { &gate });
    let text = match kind.as_str() {
        "gla" if !gate.is_empty() => table("gla", h, d, d, &gated("")),
        "gla" => table("gla", h, d, d, "gate = { activation = \"logsigmoid\", tau = 16.0 }\n"),
        "simple_gla" => table("simple_gla", h, d, d, &gated("neg_softplus")),
        "gated_deltanet" => table("gated_deltanet", h, d, d, &gated("mamba")),
        "mamba2" => table("mamba2", h, d, d, ""),
        "attention" => format!("kind = \"attention\"\nheads = {h}\nhead_dim = {d}\n"),
        other => table(other, h, d, d, ""),
    };
    let g = build(&text);
    let sched = Schedule {
        block_q: env_or("MIXC_BENCH_BLOCK_Q", 64),
        block_k: env_or("MIXC_BENCH_BLOCK_K", 64),
        ..schedule(mode, chunk, 64)
    };
    let sched = Schedule { block_elems: 1024, block_v: env_or("MIXC_BENCH_BLOCK_V", 0), ..sched };
    let sched = Schedule { step_tokens: if sched.step { env_or("MIXC_BENCH_TOKENS", 1) } else { 1 }, ..sched };
    let sched = Schedule { decay_products: env_or("MIXC_BENCH_PRODUCTS", 0u8) == 1, ..sched };
    // S: cached tokens of attention (random keys and values).
    let cached: usize = env_or("MIXC_BENCH_S", 0);
    let inputs = random_inputs(&g, &BTreeMap::from([("B", b), ("T", t), ("S", cached)]), 1, cached > 0);
    let prog = lower(&g, &sched).expect("lower");
    let sizes = prog.bind(&inputs).expect("bind");
    let t0 = std::time::Instant::now();
    let kernels: Vec<CpuKernel> = prog.kernels.iter().map(|k| CpuKernel::compile(k).expect("compile")).collect();
    let compile = t0.elapsed();
    let mut bufs: Vec<Buf> = prog
        .buffers
        .iter()
        .map(|bd| {
            let n: usize = bd.shape.iter().map(|c| c.eval(&sizes) as usize).product();
            let src = match &bd.role {
                BufferRole::Input { name, .. } => inputs.get(name).map(|t| t.data.clone()),
                _ => None,
            };
            if bd.dtype.is_float() {
                Buf::F(src.map(|d| d.iter().map(|x| *x as f32).collect()).unwrap_or(vec![0.0; n]))
            } else {
                Buf::I(src.map(|d| d.iter().map(|x| *x as i32).collect()).unwrap_or(vec![0; n]))
            }
        })
        .collect();
    let mut addrs: Vec<u64> = bufs.iter_mut().map(|b| b.addr()).collect();
    // Buffers in memory advised for huge pages, as the runtime allocates them
    // (fewer TLB misses on strided tiles); MIXC_BENCH_SMALL_PAGES keeps them in
    // ordinary pages.
    let mut _huge = Vec::new();
    if std::env::var("MIXC_BENCH_SMALL_PAGES").is_err() {
        for (a, b) in addrs.iter_mut().zip(&bufs) {
            let n = match b {
                Buf::F(v) => v.len(),
                Buf::I(v) => v.len(),
            } * 4;
            let mut m = memmap2::MmapMut::map_anon(n.max(1)).expect("map");
            m.advise(memmap2::Advice::HugePage).expect("advise");
            // Safety: `a` points at `n` bytes of the buffer.
            m[..n].copy_from_slice(unsafe { std::slice::from_raw_parts(*a as *const u8, n) });
            *a = m.as_mut_ptr() as u64;
            _huge.push(m);
        }
    }
    if std::env::var("MIXC_PERF_MAP").is_ok() {
        // Symbols for `perf report`, and raw code for `objdump -b binary`.
        let mut map = String::new();
        for k in &kernels {
            let (addr, size) = k.code_range();
            map.push_str(&format!("{addr:x} {size:x} {}\n", k.name()));
            // Safety: the range is the kernel's finalized code.
            let code = unsafe { std::slice::from_raw_parts(addr as *const u8, size) };
            std::fs::write(format!("/tmp/mixc-{}-{addr:x}.bin", k.name()), code).expect("dump");
        }
        std::fs::write(format!("/tmp/perf-{}.map", std::process::id()), map).expect("perf map");
    }
    eprintln!(
        "{kind} B={b} T={t} H={h} D={d} mode={mode} chunk={chunk} threads={threads}: {} kernels, compile {:.1} ms, frames {:?} KiB",
        kernels.len(),
        compile.as_secs_f64() * 1e3,
        kernels.iter().map(|k| k.frame_bytes() / 1024).collect::<Vec<_>>()
    );
    let mut best: Vec<f64> = vec![f64::INFINITY; prog.launches.len()];
    for rep in 0..reps {
        let mut total = 0.0;
        let mut lines = Vec::new();
        for l in &prog.launches {
            let grid = [0, 1, 2].map(|i| l.grid[i].eval(&sizes) as usize);
            if grid.contains(&0) {
                continue;
            }
            let args: Vec<u64> = l
                .args
                .iter()
                .map(|a| match a {
                    Arg::Buffer(i) => addrs[*i],
                    Arg::Size(c) => c.eval(&sizes) as i64 as u64,
                    Arg::Float(x) => (*x as f32).to_bits() as u64,
                })
                .collect();
            let k = &kernels[l.kernel];
            let n = grid[0] * grid[1] * grid[2];
            let next = std::sync::atomic::AtomicUsize::new(0);
            let t0 = std::time::Instant::now();
            std::thread::scope(|s| {
                for _ in 0..threads {
                    std::thread::Builder::new()
                        .stack_size(64 << 20)
                        .spawn_scoped(s, || loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if i >= n {
                                break;
                            }
                            let pid = [i % grid[0], (i / grid[0]) % grid[1], i / (grid[0] * grid[1])];
                            // Safety: buffers sized by the program.
                            unsafe { k.run_program(&args, pid.map(|p| p as u32)) };
                        })
                        .expect("thread");
                }
            });
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            total += ms;
            let li = lines.len();
            best[li] = best[li].min(ms);
            lines.push((k.name().to_string(), grid));
        }
        if rep + 1 == reps {
            let mut sum = 0.0;
            for (i, (name, grid)) in lines.iter().enumerate() {
                sum += best[i];
                eprintln!("  {name:<28} grid {grid:?}: best {:.2} ms", best[i]);
            }
            eprintln!("best total {sum:.2} ms");
        }
        eprintln!("rep {rep}: total {total:.2} ms");
    }
}

/// Times single ops in isolation (not a check): `-- --ignored micro --nocapture`.
#[test]
#[ignore]
fn micro() {
    use mixc_ir::ops::ReduceFn;
    let reps: usize = env_or("MIXC_BENCH_REPS", 200);
    let time = |name: &str, k: &CpuKernel, bufs: &mut [Vec<f32>], flops: f64| {
        let args: Vec<u64> = bufs.iter_mut().map(|b| b.as_mut_ptr() as u64).collect();
        // Safety: the kernels below stay inside their buffers.
        unsafe { k.run_program(&args, [0, 0, 0]) };
        // The best of many short batches: on a shared machine, some batch
        // runs without being preempted.
        let mut us = f64::INFINITY;
        for _ in 0..reps {
            let t0 = std::time::Instant::now();
            for _ in 0..4 {
                unsafe { k.run_program(&args, [0, 0, 0]) };
            }
            us = us.min(t0.elapsed().as_secs_f64() * 1e6 / 4.0);
        }
        eprintln!("{name:<40} {us:9.2} us  {:7.2} GFLOP/s  frame {} KiB", flops / us / 1e3, k.frame_bytes() / 1024);
    };
    // Loads a row-major [r, c] tile from a pointer.
    let load2 = |kb: &mut KernelBuilder, p, r: u32, c: u32| {
        let ar = kb.arange(r).expect("a");
        let ac = kb.arange(c).expect("a");
        let ar = kb.expand(ar, 1).expect("e");
        let ac = kb.expand(ac, 0).expect("e");
        let cc = kb.i32(c as i64).expect("c");
        let ro = kb.mul(ar, cc).expect("m");
        let off = kb.add(ro, ac).expect("a");
        (kb.load(p, off, None, 0.0).expect("l"), off)
    };
    for (m, kk, n, ta, tb) in [
        (64, 128, 128, false, false),
        (128, 64, 128, true, false),
        (64, 128, 64, false, true),
        (16, 16, 128, false, false),
        (1, 128, 128, false, false),
    ] {
        let mut kb = KernelBuilder::new("dot");
        let pa = kb.ptr_param("a", DType::F32);
        let pb = kb.ptr_param("b", DType::F32);
        let pc = kb.ptr_param("c", DType::F32);
        let (a, _) = if ta { load2(&mut kb, pa, kk, m) } else { load2(&mut kb, pa, m, kk) };
        let (b, _) = if tb { load2(&mut kb, pb, n, kk) } else { load2(&mut kb, pb, kk, n) };
        let (c0, off) = load2(&mut kb, pc, m, n);
        // Sixteen dots on resident tiles: the loads and stores around them are noise.
        let (lo, hi, st) = (kb.i32(0).expect("c"), kb.i32(16).expect("c"), kb.i32(1).expect("c"));
        let c = kb.for_loop(lo, hi, st, &[c0], |kb, _, c| Ok(vec![kb.dot(a, b, Some(c[0]), ta, tb)?])).expect("for")[0];
        kb.store(pc, off, c, None).expect("store");
        let k = CpuKernel::compile(&kb.finish().expect("k")).expect("compile");
        let mut bufs =
            vec![vec![0.5f32; (m * kk) as usize], vec![0.25f32; (kk * n) as usize], vec![0.0f32; (m * n) as usize]];
        time(&format!("16 x dot {m}x{kk}x{n} ta={ta} tb={tb}"), &k, &mut bufs, 32.0 * (m * kk * n) as f64);
    }
    // Streaming [64, 128] tiles of one head out of a [T, 16, 128] tensor into a
    // tile and summing them (the loads of a chunked kernel), T = 4096.
    {
        let mut kb = KernelBuilder::new("stream");
        let px = kb.ptr_param("x", DType::F32);
        let py = kb.ptr_param("y", DType::F32);
        let h = kb.program_id(0).expect("pid");
        let ar = kb.arange(64).expect("a");
        let ac = kb.arange(128).expect("a");
        let ar = kb.expand(ar, 1).expect("e");
        let ac = kb.expand(ac, 0).expect("e");
        let c2048 = kb.i32(2048).expect("c");
        let c128 = kb.i32(128).expect("c");
        let ho = kb.mul(h, c128).expect("m");
        let (lo, hi, st) = (kb.i32(0).expect("c"), kb.i32(4096).expect("c"), kb.i32(64).expect("c"));
        let z = kb.zeros(&[64, 128]).expect("z");
        let acc = kb
            .for_loop(lo, hi, st, &[z], |kb, t, c| {
                let rows = kb.add(ar, t)?;
                let ro = kb.mul(rows, c2048)?;
                let ro = kb.add(ro, ho)?;
                let off = kb.add(ro, ac)?;
                let x = kb.load(px, off, None, 0.0)?;
                Ok(vec![kb.add(c[0], x)?])
            })
            .expect("for")[0];
        let r = kb.reduce(ReduceFn::Sum, acc, 0).expect("r");
        let o = kb.add(ac, ho).expect("a");
        let o = kb.reshape(o, &[128]).expect("r");
        kb.store(py, o, r, None).expect("s");
        let kern = kb.finish().expect("k");
        if std::env::var("MIXC_SHOW_STREAM").is_ok() {
            eprintln!("{}", mixc_backend_cpu::disasm_of(&kern).expect("asm"));
        }
        let k = CpuKernel::compile(&kern).expect("compile");
        let mut x = vec![1.0f32; 4096 * 2048];
        let mut y = vec![0.0f32; 2048];
        let args = [x.as_mut_ptr() as u64, y.as_mut_ptr() as u64];
        for rep in 0..3 {
            let t0 = std::time::Instant::now();
            for h in 0..16u32 {
                // Safety: x is [4096, 16, 128], y is [16, 128].
                unsafe { k.run_program(&args, [h, 0, 0]) };
            }
            let secs = t0.elapsed().as_secs_f64();
            eprintln!("stream tiles of 32 MiB, rep {rep}: {:.1} GB/s", (x.len() * 4) as f64 / secs / 1e9);
        }
    }
    // Copy [64, 128]: the cost of the loads and stores around each op above.
    {
        let mut kb = KernelBuilder::new("copy");
        let px = kb.ptr_param("x", DType::F32);
        let py = kb.ptr_param("y", DType::F32);
        let (x, off) = load2(&mut kb, px, 64, 128);
        kb.store(py, off, x, None).expect("s");
        let k = CpuKernel::compile(&kb.finish().expect("k")).expect("compile");
        let mut bufs = vec![vec![-0.5f32; 64 * 128], vec![0.0f32; 64 * 128]];
        time("copy [64,128] (G elem/s)", &k, &mut bufs, (64 * 128) as f64);
    }
    // Elementwise exp over [64, 128], and the GLA intra-chunk reduce of exp over [16, 16, 128].
    {
        let mut kb = KernelBuilder::new("exp");
        let px = kb.ptr_param("x", DType::F32);
        let py = kb.ptr_param("y", DType::F32);
        let (x, off) = load2(&mut kb, px, 64, 128);
        let e = kb.exp(x).expect("exp");
        kb.store(py, off, e, None).expect("s");
        let k = CpuKernel::compile(&kb.finish().expect("k")).expect("compile");
        let mut bufs = vec![vec![-0.5f32; 64 * 128], vec![0.0f32; 64 * 128]];
        time("exp [64,128] (GExp/s)", &k, &mut bufs, (64 * 128) as f64);
    }
    {
        let mut kb = KernelBuilder::new("intra");
        let pq = kb.ptr_param("q", DType::F32);
        let pg = kb.ptr_param("g", DType::F32);
        let py = kb.ptr_param("y", DType::F32);
        let (q, _) = load2(&mut kb, pq, 16, 128);
        let (g, _) = load2(&mut kb, pg, 16, 128);
        let q3 = kb.reshape(q, &[16, 1, 128]).expect("r");
        let k3 = kb.reshape(q, &[1, 16, 128]).expect("r");
        let g1 = kb.reshape(g, &[16, 1, 128]).expect("r");
        let g2 = kb.reshape(g, &[1, 16, 128]).expect("r");
        let d = kb.sub(g1, g2).expect("s");
        let z = kb.f32(0.0).expect("z");
        let d = kb.min(d, z).expect("m");
        let e = kb.exp(d).expect("e");
        let p = kb.mul(q3, k3).expect("m");
        let p = kb.mul(p, e).expect("m");
        let r = kb.reduce(ReduceFn::Sum, p, 2).expect("r");
        let (_, off) = load2(&mut kb, py, 16, 16);
        kb.store(py, off, r, None).expect("s");
        let k = CpuKernel::compile(&kb.finish().expect("k")).expect("compile");
        let mut bufs = vec![vec![0.1f32; 16 * 128], vec![-0.1f32; 16 * 128], vec![0.0f32; 256]];
        time("intra [16,16,128] exp-reduce (GExp/s)", &k, &mut bufs, (16 * 16 * 128) as f64);
    }
}

/// Prints the CLIF and machine code of a small kernel (not a check).
#[test]
#[ignore]
fn show_code() {
    let mut kb = KernelBuilder::new("exp");
    let px = kb.ptr_param("x", DType::F32);
    let py = kb.ptr_param("y", DType::F32);
    let ar = kb.arange(64).expect("a");
    let x = kb.load(px, ar, None, 0.0).expect("l");
    let e = kb.exp(x).expect("exp");
    kb.store(py, ar, e, None).expect("s");
    let mut k = kb.finish().expect("k");
    if std::env::var("MIXC_SHOW_DOT").is_ok() {
        let mut kb = KernelBuilder::new("dot");
        let pa = kb.ptr_param("a", DType::F32);
        let pc = kb.ptr_param("c", DType::F32);
        let ar = kb.arange(64).expect("a");
        let ac = kb.arange(128).expect("a");
        let ar = kb.expand(ar, 1).expect("e");
        let ac = kb.expand(ac, 0).expect("e");
        let cc = kb.i32(128).expect("c");
        let ro = kb.mul(ar, cc).expect("m");
        let off = kb.add(ro, ac).expect("a");
        let a = kb.load(pa, off, None, 0.0).expect("l");
        let c = kb.load(pc, off, None, 0.0).expect("l");
        let r = kb.dot(a, c, None, true, false).expect("dot");
        let (ar2, ac2) = (kb.arange(128).expect("a"), kb.arange(128).expect("a"));
        let ar2 = kb.expand(ar2, 1).expect("e");
        let ac2 = kb.expand(ac2, 0).expect("e");
        let ro2 = kb.mul(ar2, cc).expect("m");
        let off2 = kb.add(ro2, ac2).expect("a");
        kb.store(pc, off2, r, None).expect("s");
        k = kb.finish().expect("k");
    }
    if let Ok(kind) = std::env::var("MIXC_SHOW_KIND") {
        let (h, d) = (env_or("MIXC_BENCH_H", 16), env_or("MIXC_BENCH_D", 128));
        let text = match kind.as_str() {
            "gla" => table("gla", h, d, d, "gate = { activation = \"logsigmoid\", tau = 16.0 }\n"),
            "attention" => format!("kind = \"attention\"\nheads = {h}\nhead_dim = {d}\n"),
            other => table(other, h, d, d, ""),
        };
        let g = build(&text);
        let sched = schedule(env_or("MIXC_BENCH_MODE", 0), env_or("MIXC_BENCH_CHUNK", 64), 64);
        let tokens = if sched.step { env_or("MIXC_BENCH_TOKENS", 1) } else { 1 };
        let prog = lower(&g, &Schedule { block_elems: 1024, step_tokens: tokens, ..sched }).expect("lower");
        let want: String = env_or("MIXC_SHOW_KERNEL", String::new());
        k = prog.kernels.iter().find(|k| k.name.contains(&want)).cloned().expect("no such kernel");
        eprintln!("{}", mixc_ir::tile::text::print_kernel(&k));
    }
    if std::env::var("MIXC_SHOW_OPT").is_ok() {
        eprintln!("{}", mixc_backend_cpu::optimized_clif_of(&k).expect("clif"));
    } else {
        eprintln!("{}", clif_of(&k).expect("clif"));
    }
    eprintln!("{}", mixc_backend_cpu::disasm_of(&k).expect("asm"));
}

/// Integer division of vectors by a scalar (the f64-reciprocal path for positive
/// divisors, lane by lane otherwise), over the whole i32 range.
#[test]
fn integer_division_by_scalar() {
    let mut kb = KernelBuilder::new("idiv_s");
    let x = kb.ptr_param("x", DType::I32);
    let y = kb.ptr_param("y", DType::I32);
    let d = kb.scalar_param("d", DType::I32).expect("param");
    let ar = kb.arange(256).expect("arange");
    let xv = kb.load(x, ar, None, 0.0).expect("load");
    let outs = [BinaryFn::Div, BinaryFn::FloorDiv, BinaryFn::Rem];
    for (i, f) in outs.iter().enumerate() {
        let r = kb.binary(*f, xv, d).expect("div");
        let c = kb.i32(256 * i as i64).expect("c");
        let o = kb.add(ar, c).expect("add");
        kb.store(y, o, r, None).expect("store");
    }
    let k = CpuKernel::compile(&kb.finish().expect("kernel")).expect("compile");
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for dv in [1i32, 2, 3, 7, 16, 128, 1000, 65_537, 1 << 20, i32::MAX, -1, -3, -128, i32::MIN, 0] {
        let mut xs: Vec<i32> = (0..256i32)
            .map(|i: i32| match i % 4 {
                0 => next() as i32,
                1 => (next() % 100_000) as i32 - 50_000,
                2 => (i - 128).wrapping_mul(dv.wrapping_abs().max(1)),
                _ => (i - 128).wrapping_mul(dv.wrapping_abs().max(1)).wrapping_sub(1),
            })
            .collect();
        xs[0] = i32::MIN;
        xs[1] = i32::MAX;
        xs[2] = 0;
        let mut ys = vec![0i32; 768];
        let args = [xs.as_mut_ptr() as u64, ys.as_mut_ptr() as u64, dv as i64 as u64];
        // Safety: 256 elements in, 768 out.
        unsafe { k.run_program(&args, [0, 0, 0]) };
        for (i, a) in xs.iter().enumerate() {
            let (a, b) = (*a as i64, dv as i64);
            let (div, fdiv, rem) = if b == 0 {
                (0, 0, a)
            } else {
                let q = a.div_euclid(b);
                let fq = (a as f64 / b as f64).floor() as i64;
                let _ = q;
                (a / b, fq, a - b * fq)
            };
            let wrap = |v: i64| v as i32;
            assert_eq!(ys[i], wrap(div), "{a} div {b}");
            assert_eq!(ys[256 + i], wrap(fdiv), "{a} floordiv {b}");
            assert_eq!(ys[512 + i], wrap(rem), "{a} rem {b}");
        }
    }
}

/// The 128-bit FMA peak of this machine, measured with an LLVM-compiled loop
/// (calibration for `micro`; not a check).
#[test]
#[ignore]
fn fma_peak() {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        #[target_feature(enable = "avx,fma")]
        unsafe fn run(n: usize) -> f32 {
            let mut acc = [_mm_set1_ps(0.0); 12];
            let a = _mm_set1_ps(1.000_001);
            let b = _mm_set1_ps(0.999_999);
            for _ in 0..n {
                for x in acc.iter_mut() {
                    *x = _mm_fmadd_ps(a, b, *x);
                }
            }
            let mut s = _mm_set1_ps(0.0);
            for x in acc {
                s = _mm_add_ps(s, x);
            }
            _mm_cvtss_f32(s)
        }
        #[target_feature(enable = "avx,fma")]
        unsafe fn run256(n: usize) -> f32 {
            let mut acc = [_mm256_set1_ps(0.0); 12];
            let a = _mm256_set1_ps(1.000_001);
            let b = _mm256_set1_ps(0.999_999);
            for _ in 0..n {
                for x in acc.iter_mut() {
                    *x = _mm256_fmadd_ps(a, b, *x);
                }
            }
            let mut s = _mm256_set1_ps(0.0);
            for x in acc {
                s = _mm256_add_ps(s, x);
            }
            _mm256_cvtss_f32(s)
        }
        if is_x86_feature_detected!("fma") {
            let n = 20_000_000;
            let t0 = std::time::Instant::now();
            let s = unsafe { run256(n) };
            let secs = t0.elapsed().as_secs_f64();
            eprintln!("256-bit FMA, one core: {:.1} GFLOP/s ({s})", (n * 12 * 16) as f64 / secs / 1e9);
            let n = 20_000_000;
            let t0 = std::time::Instant::now();
            let s = unsafe { run(n) };
            let secs = t0.elapsed().as_secs_f64();
            eprintln!("128-bit FMA, one core: {:.1} GFLOP/s ({s})", (n * 12 * 8) as f64 / secs / 1e9);
        }
    }
}

/// Single-thread read bandwidth, sequential and in the `[T, H, D]` row pattern
/// of one head (calibration; not a check).
#[test]
#[ignore]
fn read_bandwidth() {
    let n = 16 << 20; // 64 MiB of f32
    let data: Vec<f32> = (0..n).map(|i| i as f32).collect();
    for pass in 0..2 {
        let t0 = std::time::Instant::now();
        let mut s = 0.0f32;
        for c in data.chunks_exact(16) {
            s += c[0] + c[8];
        }
        let secs = t0.elapsed().as_secs_f64();
        eprintln!("pass {pass}: sequential {:.1} GB/s ({s})", (n * 4) as f64 / secs / 1e9);
        // Rows of 128 floats, 16 heads apart, one head after another.
        let t0 = std::time::Instant::now();
        let mut s = 0.0f32;
        let rows = n / (16 * 128);
        for h in 0..16 {
            for t in 0..rows {
                let r = &data[(t * 16 + h) * 128..][..128];
                for c in r.chunks_exact(16) {
                    s += c[0] + c[8];
                }
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        eprintln!("pass {pass}: head rows {:.1} GB/s ({s})", (n * 4) as f64 / secs / 1e9);
        // The same rows copied into a [64, 128] tile, then added to an accumulator tile.
        let t0 = std::time::Instant::now();
        let mut tile = vec![0.0f32; 64 * 128];
        let mut acc = vec![0.0f32; 64 * 128];
        for h in 0..16 {
            for t0 in (0..rows).step_by(64) {
                for r in 0..64 {
                    let src = &data[((t0 + r) * 16 + h) * 128..][..128];
                    tile[r * 128..][..128].copy_from_slice(src);
                }
                for (a, x) in acc.iter_mut().zip(&tile) {
                    *a += *x;
                }
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        eprintln!("pass {pass}: head tiles copied {:.1} GB/s ({})", (n * 4) as f64 / secs / 1e9, acc[5]);
    }
}

/// JIT compile time of every kernel of every distinct mixer of a model file
/// (MIXC_MODEL, default models/lizard.toml), prefill and decode schedules
/// (a measurement; not a check).
#[test]
#[ignore]
fn compile_time() {
    let path: String = env_or("MIXC_MODEL", format!("{}/../../models/lizard.toml", env!("CARGO_MANIFEST_DIR")));
    let file = mixc_ir::model::load_model(std::path::Path::new(&path)).expect("model");
    let mut kernels = Vec::new();
    for name in file.distinct_mixers() {
        let cfg = &file.mixer[&name];
        let g = mixc_ir::mixers::build(&name, cfg).expect("graph");
        for sched in [Schedule::with_chunk(64), Schedule::decode()] {
            kernels.extend(lower(&g, &sched).expect("lower").kernels);
        }
    }
    let mut seen = std::collections::HashSet::new();
    kernels.retain(|k| seen.insert(mixc_ir::tile::text::print_kernel(k)));
    // Several rounds (the machine is shared: the median and the best say more
    // than one run); each kernel's best time across rounds.
    let reps: usize = env_or("MIXC_BENCH_REPS", 5);
    let mut best = vec![f64::INFINITY; kernels.len()];
    let mut totals = Vec::new();
    for _ in 0..reps {
        let t0 = std::time::Instant::now();
        for (i, k) in kernels.iter().enumerate() {
            let t = std::time::Instant::now();
            CpuKernel::compile(k).expect("compile");
            best[i] = best[i].min(t.elapsed().as_secs_f64() * 1e3);
        }
        totals.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    if std::env::var("MIXC_VERBOSE").is_ok() {
        for (k, ms) in kernels.iter().zip(&best) {
            let ck = CpuKernel::compile(k).expect("compile");
            let lines = clif_of(k).map(|c| c.lines().count()).unwrap_or(0);
            eprintln!("  {:<32} {ms:6.1} ms  {lines:6} CLIF lines  {:6} bytes", k.name, ck.code_range().1);
        }
    }
    // As the runtime compiles a program: kernels spread over the threads.
    let threads: usize = env_or("MIXC_BENCH_THREADS", 2);
    let mut parallel = Vec::new();
    for _ in 0..reps {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let t0 = std::time::Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(k) = kernels.get(i) else { break };
                    CpuKernel::compile(k).expect("compile");
                });
            }
        });
        parallel.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    if std::env::var("MIXC_TIMING").is_ok() {
        // Where the time goes: our code generator alone, then Cranelift's passes.
        let _ = cranelift_codegen::timing::take_current();
        let t = std::time::Instant::now();
        for k in &kernels {
            clif_of(k).expect("clif");
        }
        eprintln!("code generation alone (and printing): {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
        let _ = cranelift_codegen::timing::take_current();
        for k in &kernels {
            CpuKernel::compile(k).expect("compile");
        }
        eprintln!("{}", cranelift_codegen::timing::take_current());
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (worst, name) =
        best.iter().zip(&kernels).fold((0.0, ""), |w, (ms, k)| if *ms > w.0 { (*ms, &k.name) } else { w });
    eprintln!(
        "{path}: {} distinct kernels compiled in {:.1} ms (median of {reps}; best {:.1} ms; slowest `{name}`: {worst:.1} ms), \
         {:.1} ms on {threads} threads",
        kernels.len(),
        median(&mut totals.clone()),
        totals.iter().copied().fold(f64::INFINITY, f64::min),
        median(&mut parallel),
    );
}

/// The case that made `narrow_storage_matches_the_interpreters` flaky: Gated
/// DeltaNet, one token, f16 output, one head's output of rms 3.4e-6 (f16
/// subnormals): within f16's absolute precision there, 5e-3 relative.
#[test]
fn f16_output_of_a_tiny_head_is_held_to_f16s_absolute_precision() {
    let lib = library(17, 24, 24);
    let (name, text) = &lib[7];
    assert_eq!(*name, "gated_deltanet");
    let g = build(text);
    let sched = Schedule { storage: mixc_passes::Storage::F16, ..schedule(0, 16, 32) };
    let prog = lower(&g, &sched).unwrap_or_else(|e| panic!("{name}: {e}"));
    let raw = random_inputs(&g, &sizes(1, 1), 982156786934416989, false);
    let held = held_inputs(&prog, &raw);
    let want = interp::run(&g, &held).unwrap_or_else(|e| panic!("{name}: interp: {e}"));
    let got = run_cpu(&prog, &raw);
    let (o, w) = (&got["o"], &want["o"]);
    let smallest = w.data.chunks(24).map(|h| h.iter().map(|x| x * x).sum::<f64>().sqrt()).fold(f64::MAX, f64::min);
    assert!(smallest < 2f64.powi(-14), "the case needs a head below f16's normal range: {smallest:e}");
    assert!(rel_err_above(o, w, 2f64.powi(-14)) <= 6e-4, "{:e}", rel_err_above(o, w, 2f64.powi(-14)));
}
