//! 16-bit storage of activations (`Schedule::storage`): which buffers take the
//! storage dtype (activations, and KV caches: copies of them) and which stay
//! f32 (states, tails, weights, scratch); and that a bf16 or f16 program computes the f64
//! reference of its rounded inputs, with its activation outputs rounded.

use super::util::*;
use mixc_ir::interp::{self, Tensor};
use mixc_ir::mixers::carried_input;
use mixc_ir::tile::interp::Precision;
use mixc_ir::tile::{BufferRole, ParamKind, Program};
use mixc_ir::{DType, Graph};
use mixc_passes::{lower, Schedule, Storage};
use proptest::prelude::*;
use std::collections::BTreeMap;

fn table(kind: &str, extra: &str) -> String {
    format!("kind = \"{kind}\"\nheads = 2\ndk = 17\ndv = 24\n{extra}")
}

/// Mixers with what must be stored narrow: (name, table, activation inputs
/// and outputs). Everything else of theirs is f32 (or an integer).
fn mixers() -> Vec<(&'static str, String, &'static [&'static str])> {
    vec![
        (
            "gla",
            table("gla", "gate = { activation = \"logsigmoid\", tau = 16.0 }\noutput_norm = true\n"),
            &["q", "k", "v", "g", "o"],
        ),
        (
            "gated_deltanet",
            table("gated_deltanet", "qk_norm = true\nshort_conv = 4\ngate = { activation = \"mamba\" }\n"),
            &["q", "k", "v", "g", "beta", "o"],
        ),
        (
            "attention",
            "kind = \"attention\"\nheads = 4\nkv_heads = 2\nhead_dim = 24\nrope = { theta = 10000.0 }\n".into(),
            &["q", "k", "v", "o", "k_cache", "v_cache"],
        ),
        ("mlstm", table("mlstm", "gate_soft_cap = 15.0\n"), &["q", "k", "v", "i", "f", "o"]),
        (
            "mamba2",
            "kind = \"mamba2\"\nheads = 4\ndk = 16\ndv = 8\ngroups = 2\nshort_conv = 4\n".into(),
            &["x", "dt", "b", "c", "o"],
        ),
    ]
}

/// The name a caller knows a buffer by (inputs and outputs), if any.
fn io_name(role: &BufferRole) -> Option<&str> {
    match role {
        BufferRole::Input { name, .. } | BufferRole::Output(name) => Some(name),
        BufferRole::Temp => None,
    }
}

/// Asserts the dtype of every buffer: the storage for `narrow` inputs and
/// outputs, f32 for every other float; and that pointers match their buffers.
fn assert_dtypes(what: &str, prog: &Program, storage: DType, narrow: &[&str]) {
    for b in &prog.buffers {
        if !b.dtype.is_float() {
            continue;
        }
        let want = match io_name(&b.role) {
            Some(n) if narrow.contains(&n) => storage,
            _ => DType::F32,
        };
        assert_eq!(b.dtype, want, "{what}: buffer `{}` ({:?})", b.name, b.role);
    }
    mixc_ir::tile::verify::verify_program(prog).unwrap_or_else(|e| panic!("{what}: {e}"));
    let narrow_ptrs = prog.kernels.iter().flat_map(|k| &k.params).filter(|p| p.kind == ParamKind::Ptr(storage)).count();
    assert!(storage == DType::F32 || narrow_ptrs > 0, "{what}: no kernel reads or writes {storage}");
}

fn schedules(storage: Storage) -> Vec<Schedule> {
    vec![
        Schedule { storage, ..Schedule::with_chunk(16) },
        Schedule { split: true, storage, ..Schedule::with_chunk(32) },
        Schedule { storage, ..Schedule::decode() },
        Schedule { block_v: 16, storage, ..Schedule::with_chunk(16) },
    ]
}

#[test]
fn activations_take_the_storage_and_states_stay_f32() {
    for (name, text, narrow) in mixers() {
        let g = build(&text);
        for storage in Storage::ALL {
            for sched in schedules(storage) {
                let prog = lower(&g, &sched).unwrap_or_else(|e| panic!("{name}: {e}"));
                let narrow: &[&str] = if storage == Storage::F32 { &[] } else { narrow };
                assert_dtypes(&format!("{name} {sched:?}"), &prog, storage.dtype(), narrow);
            }
        }
    }
}

/// Every mixer of the zoo: under bf16 storage `o` is bf16, KV caches (copies
/// of bf16 keys and values) are bf16, and whatever else one call hands the
/// next (states, normalizers, tails) stays f32, in and out.
#[test]
fn zoo_states_stay_f32_and_kv_caches_take_the_storage() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    let mut checked = 0;
    for f in files {
        let file = mixc_ir::model::load_model(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for name in file.distinct_mixers() {
            let g = mixc_ir::mixers::build(&name, &file.mixer[&name]).unwrap_or_else(|e| panic!("{name}: {e}"));
            let inputs: Vec<&str> = g.inputs().into_iter().map(|(n, _, _)| n).collect();
            let mut carried: Vec<String> = Vec::new();
            for (out, _) in &g.outputs {
                if let Some(i) = carried_input(out).filter(|i| inputs.contains(&i.as_str())) {
                    carried.push(out.clone());
                    carried.push(i);
                }
            }
            for sched in [
                Schedule { storage: Storage::Bf16, ..Schedule::default() },
                Schedule { storage: Storage::Bf16, ..Schedule::decode() },
            ] {
                let prog = lower(&g, &sched).unwrap_or_else(|e| panic!("{name}: {e}"));
                for b in &prog.buffers {
                    let what = format!("{}/{name}: buffer `{}`", f.display(), b.name);
                    match io_name(&b.role) {
                        Some("o") => assert_eq!(b.dtype, DType::BF16, "{what}"),
                        Some(n) if carried.iter().any(|c| c == n) => {
                            let kv = mixc_passes::is_kv_cache(carried_input(n).as_deref().unwrap_or(n));
                            assert_eq!(b.dtype, if kv { DType::BF16 } else { DType::F32 }, "{what}")
                        }
                        None if b.dtype.is_float() => assert_eq!(b.dtype, DType::F32, "{what}"),
                        _ => {}
                    }
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 10, "only {checked} programs checked");
}

/// `inputs` as the program's input buffers hold them.
fn stored(prog: &Program, inputs: &BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    let dtype_of = |n: &str| {
        prog.buffers.iter().find(|b| matches!(&b.role, BufferRole::Input { name, .. } if name == n)).map(|b| b.dtype)
    };
    inputs
        .iter()
        .map(|(n, t)| {
            let d = dtype_of(n).unwrap_or(DType::F32);
            (n.clone(), Tensor { shape: t.shape.clone(), data: t.data.iter().map(|x| d.round(*x)).collect() })
        })
        .collect()
}

/// Tolerance of an output against the f64 reference on the rounded inputs:
/// f32's for f32 buffers; the output's own rounding (≈ 2⁻⁹ relative for
/// bf16, 2⁻¹² for f16, norm-wise) plus margin for 16-bit ones.
fn tolerance(d: DType) -> f64 {
    match d {
        DType::BF16 => 4e-3,
        DType::F16 => 6e-4,
        _ => 1e-4,
    }
}

/// Runs a lowered program on raw inputs and checks it against the reference
/// on the inputs its buffers hold (outputs named in `narrow` in `storage`,
/// the rest in f32: a state stored narrow would fail f32's tolerance);
/// returns the reference outputs.
fn check_storage(
    what: &str,
    g: &Graph,
    prog: &Program,
    raw: &BTreeMap<String, Tensor>,
    (storage, narrow): (DType, &[&str]),
) -> BTreeMap<String, Tensor> {
    let held = stored(prog, raw);
    let want = interp::run(g, &held).unwrap_or_else(|e| panic!("{what}: interp: {e}"));
    let (got, _) = prog.run(raw, Precision::F32).unwrap_or_else(|e| panic!("{what}: tile run: {e}"));
    // The program rounds its inputs itself: rounded first or not, the same bits.
    let (again, _) = prog.run(&held, Precision::F32).unwrap_or_else(|e| panic!("{what}: tile run: {e}"));
    for (name, w) in &want {
        let o = got.get(name).unwrap_or_else(|| panic!("{what}: no output `{name}`"));
        let d = if narrow.contains(&name.as_str()) { storage } else { DType::F32 };
        let e = rel_err(o, w);
        assert!(e <= tolerance(d), "{what}: `{name}` ({d}) relative error {e:e} > {:e}", tolerance(d));
        assert!(o.data.iter().all(|x| d.round(*x) == *x), "{what}: `{name}` holds values that are not {d}");
        let same = again.get(name).is_some_and(|a| a.data.iter().zip(&o.data).all(|(x, y)| x.to_bits() == y.to_bits()));
        assert!(same, "{what}: `{name}` differs between raw and pre-rounded inputs");
    }
    want
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, max_shrink_iters: 16, ..ProptestConfig::default() })]

    /// bf16 / f16 storage: a prefill (fresh or from a state) then a decode
    /// step or a continued prefill from the carried state and caches, each
    /// against the f64 reference on the rounded inputs.
    #[test]
    fn narrow_storage_matches_the_reference_on_rounded_inputs(
        which in 0usize..5,
        f16: bool,
        b in 1usize..3,
        t1 in prop::sample::select(vec![1usize, 5, 16, 37, 70]),
        t2 in prop::sample::select(vec![1usize, 1, 9]),
        mode in 0u8..3,
        chunk in prop::sample::select(vec![16u32, 32, 64]),
        with_state: bool,
        seed: u64,
    ) {
        let lib = mixers();
        let (name, text, narrow) = &lib[which];
        let g = build(text);
        let storage = if f16 { Storage::F16 } else { Storage::Bf16 };
        let sched = match mode {
            0 => Schedule { storage, ..Schedule::with_chunk(chunk) },
            1 => Schedule { split: true, storage, ..Schedule::with_chunk(chunk) },
            _ => Schedule { storage, ..Schedule::decode() },
        };
        let prog = lower(&g, &sched).unwrap_or_else(|e| panic!("{name}: {e}"));
        let what = format!("{name} ({storage}, {sched:?})");
        let first = inputs(&g, b, t1, seed, with_state);
        let carried = check_storage(&what, &g, &prog, &first, (storage.dtype(), narrow));
        let mut second = inputs(&g, b, t2, seed ^ 0x5eed, false);
        for (out, value) in carried {
            if let Some(input) = carried_input(&out).filter(|i| g.inputs().iter().any(|(n, _, _)| n == i)) {
                second.insert(input, Tensor { shape: value.shape, data: value.data.iter().map(|x| *x as f32 as f64).collect() });
            }
        }
        if g.inputs().iter().any(|(n, _, _)| *n == "offset") {
            second.insert("offset".into(), Tensor::scalar(t1 as f64));
        }
        let step = if t2 == 1 { Schedule { storage, ..Schedule::decode() } } else { sched };
        let prog2 = lower(&g, &step).unwrap_or_else(|e| panic!("{name}: {e}"));
        check_storage(&what, &g, &prog2, &second, (storage.dtype(), narrow));
    }
}

/// A schedule recorded before storage existed reads as f32; the field
/// round-trips; a bad name is refused with the choices.
#[test]
fn storage_serializes_and_parses() {
    let old = toml::to_string(&Schedule::default()).unwrap_or_else(|e| panic!("{e}"));
    let old: String = old.lines().filter(|l| !l.starts_with("storage")).map(|l| format!("{l}\n")).collect();
    let back: Schedule = toml::from_str(&old).unwrap_or_else(|e| panic!("{e}: {old}"));
    assert_eq!(back.storage, Storage::F32);
    let bf16 = Schedule { storage: Storage::Bf16, ..Schedule::default() };
    let text = toml::to_string(&bf16).unwrap_or_else(|e| panic!("{e}"));
    assert!(text.contains("storage = \"bf16\""), "{text}");
    assert_eq!(toml::from_str::<Schedule>(&text).ok(), Some(bf16));
    assert_eq!("f16".parse::<Storage>(), Ok(Storage::F16));
    let err = "f8".parse::<Storage>().err().unwrap_or_default();
    assert!(err.contains("`f8`") && err.contains("bf16"), "{err}");
}
