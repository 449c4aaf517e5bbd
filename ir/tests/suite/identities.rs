//! The oracle checked against independent identities (issue 2, item 5).

use super::util::*;
use mixc_ir::dtype::DType;
use mixc_ir::graph::Graph;
use mixc_ir::interp::{self, Tensor};
use mixc_ir::mixers;
use mixc_ir::mixers::carried_input;
use mixc_ir::ops::{Mask, OpKind, Recurrence, Transition};
use proptest::prelude::*;
use std::collections::BTreeMap;

/// Random inputs (the library's generator, seeded from the test's generator).
pub fn random_inputs(
    g: &Graph,
    sizes: &BTreeMap<&str, usize>,
    rng: &mut TestRng,
    with_initial: bool,
) -> BTreeMap<String, Tensor> {
    mixers::random_inputs(g, sizes, rng.next_u64(), with_initial)
}

fn run(g: &Graph, ins: &BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    interp::run(g, ins).unwrap_or_else(|e| panic!("{}: {e}", g.name))
}

fn close(a: &Tensor, b: &Tensor, tol: f64, what: &str) {
    let axes = if a.shape.len() >= 2 { vec![0, 1] } else { vec![] };
    let e = rel_err_slices(a, b, &axes);
    assert!(e <= tol, "{what}: relative error {e:e} > {tol:e}");
}

/// `a` against `b` (`[B, T, …]`) where `mag` holds, per element of `b`, the
/// sum of the magnitudes of the terms it adds up: each (batch, time)
/// slice's largest error within `tol` of its largest `mag` (an output whose
/// terms nearly cancel keeps the rounding error of the terms, not of itself).
fn close_scaled(a: &Tensor, b: &Tensor, mag: &Tensor, tol: f64, what: &str) {
    assert_eq!(a.shape, b.shape, "{what}: shapes");
    let slice = a.shape.iter().skip(2).product::<usize>().max(1);
    for ((x, y), m) in a.data.chunks(slice).zip(b.data.chunks(slice)).zip(mag.data.chunks(slice)) {
        let scale = m.iter().fold(0.0f64, |s, v| s.max(v.abs())).max(f64::MIN_POSITIVE);
        let err = x.iter().zip(y).fold(0.0f64, |e, (p, q)| e.max((p - q).abs()));
        assert!(err <= tol * scale, "{what}: error {err:e} > {tol:e} × {scale:e}");
    }
}

fn table(kind: &str, h: usize, dk: usize, dv: usize, extra: &str) -> String {
    format!("kind = \"{kind}\"\nheads = {h}\ndk = {dk}\ndv = {dv}\n{extra}")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Linear attention equals its masked-matmul parallel form
    /// `O = ((sQ Kᵀ) ⊙ causal) V + sQ S₀`.
    #[test]
    fn linear_attention_parallel_form(b in 1usize..3, t in 1usize..24, h in 1usize..3, dk in 1usize..9, dv in 1usize..9, seed: u64) {
        let g = mixers::build("la", &cfg(&table("linear_attn", h, dk, dv, ""))).unwrap();
        let mut rng = TestRng::new(seed);
        let sizes = BTreeMap::from([("B", b), ("T", t)]);
        let ins = random_inputs(&g, &sizes, &mut rng, true);
        let out = run(&g, &ins);
        let s = (dk as f64).powf(-0.5);
        let (q, k, v, s0) = (&ins["q"], &ins["k"], &ins["v"], &ins["initial_state"]);
        let mut want = Tensor::zeros(&[b, t, h, dv]);
        let mut mag = Tensor::zeros(&[b, t, h, dv]);
        for bi in 0..b { for hi in 0..h { for i in 0..t { for j in 0..dv {
            let (mut acc, mut size) = (0.0, 0.0);
            for jj in 0..=i {
                for d in 0..dk {
                    let term = s * q.at(&[bi, i, hi, d]) * k.at(&[bi, jj, hi, d]) * v.at(&[bi, jj, hi, j]);
                    acc += term;
                    size += term.abs();
                }
            }
            for d in 0..dk {
                let term = s * q.at(&[bi, i, hi, d]) * s0.at(&[bi, hi, d, j]);
                acc += term;
                size += term.abs();
            }
            let o = want.offset(&[bi, i, hi, j]);
            want.data[o] = acc;
            mag.data[o] = size;
        }}}}
        close_scaled(&out["o"], &want, &mag, 1e-12, "linear attention vs parallel form");
    }

    /// GLA with all gates 0 is linear attention.
    #[test]
    fn gla_zero_gate_is_linear_attention(b in 1usize..3, t in 1usize..20, h in 1usize..3, dk in 1usize..9, dv in 1usize..9, seed: u64) {
        let gla = mixers::build("gla", &cfg(&table("gla", h, dk, dv, ""))).unwrap();
        let la = mixers::build("la", &cfg(&table("linear_attn", h, dk, dv, ""))).unwrap();
        let mut rng = TestRng::new(seed);
        let sizes = BTreeMap::from([("B", b), ("T", t)]);
        let mut ins = random_inputs(&gla, &sizes, &mut rng, true);
        ins.insert("g".into(), Tensor::zeros(&[b, t, h, dk]));
        let a = run(&gla, &ins);
        ins.remove("g");
        let c = run(&la, &ins);
        close(&a["o"], &c["o"], 1e-13, "o");
        close(&a["final_state"], &c["final_state"], 1e-13, "final_state");
    }

    /// DeltaNet with β = 0 leaves the state unchanged; Gated DeltaNet only decays it by e^Σg.
    #[test]
    fn delta_rule_beta_zero(b in 1usize..3, t in 1usize..20, h in 1usize..3, dk in 1usize..9, dv in 1usize..9, seed: u64) {
        let mut rng = TestRng::new(seed);
        let sizes = BTreeMap::from([("B", b), ("T", t)]);
        for kind in ["deltanet", "gated_deltanet"] {
            let g = mixers::build(kind, &cfg(&table(kind, h, dk, dv, "qk_norm = true\n"))).unwrap();
            let mut ins = random_inputs(&g, &sizes, &mut rng, true);
            ins.insert("beta".into(), Tensor::zeros(&[b, t, h]));
            let out = run(&g, &ins);
            let mut want = ins["initial_state"].clone();
            if kind == "gated_deltanet" {
                let gate = &ins["g"];
                for bi in 0..b { for hi in 0..h {
                    let total: f64 = (0..t).map(|ti| gate.at(&[bi, ti, hi])).sum();
                    for i in 0..dk { for j in 0..dv {
                        let o = want.offset(&[bi, hi, i, j]);
                        want.data[o] *= total.exp();
                    }}
                }}
            }
            close(&out["final_state"], &want, 1e-12, kind);
        }
    }

    /// Softmax attention with a window ≥ T equals causal attention (with GQA).
    #[test]
    fn wide_window_is_causal(b in 1usize..3, t in 1usize..20, hkv in 1usize..3, group in 1usize..3, d in 1usize..9, extra in 0usize..4, sinks in 0u32..3, seed: u64) {
        let h = hkv * group;
        let base = format!("kind = \"attention\"\nheads = {h}\nkv_heads = {hkv}\nhead_dim = {d}\n");
        let causal = mixers::build("a", &cfg(&base)).unwrap();
        let windowed = mixers::build("w", &cfg(&format!("{base}window = {}\nsinks = {sinks}\n", t + extra))).unwrap();
        let mut rng = TestRng::new(seed);
        let ins = random_inputs(&causal, &BTreeMap::from([("B", b), ("T", t), ("S", 0)]), &mut rng, false);
        close(&run(&causal, &ins)["o"], &run(&windowed, &ins)["o"], 1e-14, "o");
    }
}

/// Builds a one-op mLSTM graph with a chosen epsilon.
fn mlstm_graph(h: u64, dk: u64, dv: u64, eps: f64) -> Graph {
    let mut g = Graph::new("mlstm");
    let b = g.dim("B").unwrap();
    let t = g.dim("T").unwrap();
    let hd = g.dim_const("H", h).unwrap();
    let kd = g.dim_const("Dk", dk).unwrap();
    let vd = g.dim_const("Dv", dv).unwrap();
    let q = g.input("q", DType::F64, &[b, t, hd, kd]).unwrap();
    let k = g.input("k", DType::F64, &[b, t, hd, kd]).unwrap();
    let v = g.input("v", DType::F64, &[b, t, hd, vd]).unwrap();
    let i = g.input("i", DType::F64, &[b, t, hd]).unwrap();
    let f = g.input("f", DType::F64, &[b, t, hd]).unwrap();
    let c0 = g.input_opt("initial_state", DType::F64, &[b, hd, kd, vd], true).unwrap();
    let n0 = g.input_opt("initial_n", DType::F64, &[b, hd, kd], true).unwrap();
    let m0 = g.input_opt("initial_m", DType::F64, &[b, hd], true).unwrap();
    let r = Recurrence {
        transition: Transition::Mlstm,
        scale: (dk as f64).powf(-0.5),
        normalize: false,
        eps,
        has_initial: true,
    };
    let res = g.add(OpKind::LinearRecurrence(r), &[q, k, v, i, f, c0, n0, m0], &["o", "C", "n", "m"]).unwrap();
    g.output_as("o", res[0]).unwrap();
    g
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// With ε = 0 the stabilizer changes nothing: the same recurrence with plain
    /// exponentials (lower bound 1 instead of e^−m) gives the same output.
    #[test]
    fn mlstm_stabilizer_is_exact(t in 1usize..16, dk in 1usize..6, dv in 1usize..6, seed: u64) {
        let g = mlstm_graph(1, dk as u64, dv as u64, 0.0);
        let mut rng = TestRng::new(seed);
        let ins = random_inputs(&g, &BTreeMap::from([("B", 1), ("T", t)]), &mut rng, false);
        let out = run(&g, &ins);
        let s = (dk as f64).powf(-0.5);
        let (q, k, v, ig, fg) = (&ins["q"], &ins["k"], &ins["v"], &ins["i"], &ins["f"]);
        let mut c = vec![0.0; dk * dv];
        let mut n = vec![0.0; dk];
        let mut want = Tensor::zeros(&[1, t, 1, dv]);
        for ti in 0..t {
            let f = 1.0 / (1.0 + (-fg.at(&[0, ti, 0])).exp());
            let i = ig.at(&[0, ti, 0]).exp();
            for a in 0..dk {
                n[a] = f * n[a] + i * k.at(&[0, ti, 0, a]);
                for bb in 0..dv {
                    c[a * dv + bb] = f * c[a * dv + bb] + i * k.at(&[0, ti, 0, a]) * v.at(&[0, ti, 0, bb]);
                }
            }
            let qn: f64 = (0..dk).map(|a| s * q.at(&[0, ti, 0, a]) * n[a]).sum();
            let den = qn.abs().max(1.0);
            for bb in 0..dv {
                let num: f64 = (0..dk).map(|a| s * q.at(&[0, ti, 0, a]) * c[a * dv + bb]).sum();
                let o = want.offset(&[0, ti, 0, bb]);
                want.data[o] = num / den;
            }
        }
        close(&out["o"], &want, 1e-10, "stabilized vs plain mLSTM");
    }

    /// Rescaling a carried mLSTM state (C·e^d, n·e^d, m − d) leaves the output unchanged.
    #[test]
    fn mlstm_state_rescaling(t in 1usize..16, dk in 1usize..6, dv in 1usize..6, d in -3.0f64..3.0, seed: u64) {
        let g = mlstm_graph(2, dk as u64, dv as u64, 0.0);
        let mut rng = TestRng::new(seed);
        let mut ins = random_inputs(&g, &BTreeMap::from([("B", 2), ("T", t)]), &mut rng, true);
        let a = run(&g, &ins);
        let e = d.exp();
        ins.get_mut("initial_state").unwrap().data.iter_mut().for_each(|x| *x *= e);
        ins.get_mut("initial_n").unwrap().data.iter_mut().for_each(|x| *x *= e);
        ins.get_mut("initial_m").unwrap().data.iter_mut().for_each(|x| *x -= d);
        let b = run(&g, &ins);
        close(&a["o"], &b["o"], 1e-10, "rescaled state");
    }
}

/// `x[:, lo..hi]` of a `[B, T, ...]` tensor.
fn slice_time(x: &Tensor, lo: usize, hi: usize) -> Tensor {
    let b = x.shape[0];
    let t = x.shape[1];
    let inner: usize = x.shape[2..].iter().product();
    let mut data = Vec::new();
    for bi in 0..b {
        data.extend_from_slice(&x.data[(bi * t + lo) * inner..(bi * t + hi) * inner]);
    }
    let mut shape = x.shape.clone();
    shape[1] = hi - lo;
    Tensor { shape, data }
}

fn concat_time(a: &Tensor, b: &Tensor) -> Tensor {
    let n = a.shape[0];
    let (ta, tb) = (a.shape[1], b.shape[1]);
    let inner: usize = a.shape[2..].iter().product();
    let mut data = Vec::new();
    for i in 0..n {
        data.extend_from_slice(&a.data[i * ta * inner..(i + 1) * ta * inner]);
        data.extend_from_slice(&b.data[i * tb * inner..(i + 1) * tb * inner]);
    }
    let mut shape = a.shape.clone();
    shape[1] = ta + tb;
    Tensor { shape, data }
}

/// Every mixer of the library at small sizes, as TOML tables.
pub fn library_tables() -> Vec<(&'static str, String)> {
    vec![
        ("linear_attn", table("linear_attn", 2, 5, 3, "")),
        ("linear_attn_norm", table("linear_attn", 2, 4, 3, "normalizer = true\nfeature_map = \"elu_plus_one\"\n")),
        ("retnet", table("retnet", 3, 4, 5, "")),
        ("simple_gla", table("simple_gla", 2, 4, 6, "")),
        ("gla", table("gla", 2, 5, 4, "gate = { activation = \"logsigmoid\", tau = 16.0 }\n")),
        ("mlstm", table("mlstm", 2, 4, 3, "gate_soft_cap = 15.0\n")),
        ("deltanet", table("deltanet", 2, 4, 4, "qk_norm = true\n")),
        ("gated_deltanet", table("gated_deltanet", 2, 4, 3, "qk_norm = true\nshort_conv = 3\ngate = { activation = \"mamba\" }\n")),
        ("mamba2", table("mamba2", 4, 3, 2, "groups = 2\nshort_conv = 4\n")),
        ("attention", "kind = \"attention\"\nheads = 4\nkv_heads = 2\nhead_dim = 4\nrope = { theta = 10000.0 }\n".into()),
        ("swa", "kind = \"attention\"\nheads = 2\nhead_dim = 3\nwindow = 4\n".into()),
        ("sinks", "kind = \"attention\"\nheads = 2\nkv_heads = 1\nhead_dim = 4\nwindow = 3\nsinks = 2\n".into()),
        ("liger", "kind = \"liger\"\nheads = 2\nhead_dim = 4\nwindow = 3\nrope = { theta = 100.0 }\n".into()),
        ("lizard", "kind = \"lizard\"\nheads = 2\nhead_dim = 3\nwindow = 3\nmeta_tokens = 2\ncombine = \"separate\"\n".into()),
        ("lizard_shared", "kind = \"lizard\"\nheads = 2\nhead_dim = 3\nwindow = 3\nmeta_tokens = 1\ncombine = \"shared\"\n".into()),
        ("duo", "kind = \"duo\"\nheads = 4\nkv_heads = 2\nhead_dim = 4\nsinks = 1\nwindow = 3\nretrieval_heads = [1]\nrope = { theta = 100.0 }\n".into()),
        ("mom", table("mom", 2, 3, 4, "memories = 3\ntop_k = 2\nshared_memory = true\n")),
        ("mom_gdn", table("mom", 1, 4, 2, "memories = 2\ntop_k = 1\nmemory = \"gated_deltanet\"\n")),
        ("mom_gla", table("mom", 2, 3, 2, "memories = 4\ntop_k = 3\nshared_memory = true\nmemory = \"simple_gla\"\n")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Running T1 tokens, then T2 tokens from the carried state (or cache), equals
    /// running T1 + T2 tokens at once — every recurrent mixer and attention.
    #[test]
    fn split_runs_equal_one_run(which in 0usize..19, b in 1usize..3, t1 in 0usize..10, t2 in 1usize..10, seed: u64) {
        let tables = library_tables();
        let (name, text) = &tables[which % tables.len()];
        let g = mixers::build(name, &cfg(text)).unwrap();
        let mut rng = TestRng::new(seed);
        let t = t1 + t2;
        let full_in = random_inputs(&g, &BTreeMap::from([("B", b), ("T", t), ("S", 0)]), &mut rng, false);
        let full = run(&g, &full_in);
        let has_time = |n: &str| {
            let v = g.inputs().into_iter().find(|(x, _, _)| *x == n).map(|(_, v, _)| v);
            v.is_some_and(|v| g.ty(v).shape.get(1).is_some_and(|d| g.dims.name(*d) == "T"))
        };
        let part = |lo: usize, hi: usize| -> BTreeMap<String, Tensor> {
            full_in.iter().map(|(n, x)| (n.clone(), if has_time(n) { slice_time(x, lo, hi) } else { x.clone() })).collect()
        };
        let first = run(&g, &part(0, t1));
        let mut second_in = part(t1, t);
        for (out_name, value) in &first {
            if let Some(input) = carried_input(out_name) {
                if g.inputs().iter().any(|(n, _, _)| *n == input) {
                    second_in.insert(input, value.clone());
                }
            }
        }
        if g.inputs().iter().any(|(n, _, _)| *n == "offset") {
            second_in.insert("offset".into(), Tensor::scalar(t1 as f64));
        }
        let second = run(&g, &second_in);
        let o = concat_time(&first["o"], &second["o"]);
        close(&o, &full["o"], 1e-10, &format!("{name}: o"));
        for (n, x) in &second {
            if n != "o" && n.starts_with("final") {
                close(x, &full[n], 1e-10, &format!("{name}: {n}"));
            }
        }
    }
}

#[test]
fn window_mask_counts_keys() {
    let m = Mask { causal: true, window: Some(3), sinks: 1 };
    let visible: Vec<usize> = (0..8).filter(|s| m.allows(7, *s)).collect();
    assert_eq!(visible, vec![0, 5, 6, 7]);
}
