//! Shared by the lowering tests: build a mixer, lower it, run both interpreters
//! on the same random inputs, compare every output.

#![allow(dead_code)]

use mixc_ir::interp::{self, Tensor};
use mixc_ir::mixers::{carried_input, random_inputs};
use mixc_ir::tile::interp::Precision;
use mixc_ir::{mixers, model::MixerConfig, Graph};
use mixc_passes::{lower, Schedule};
use std::collections::BTreeMap;

pub fn cfg(text: &str) -> MixerConfig {
    toml::from_str(text).unwrap_or_else(|e| panic!("bad test config: {e}\n{text}"))
}

pub fn build(text: &str) -> Graph {
    mixers::build("m", &cfg(text)).unwrap_or_else(|e| panic!("{e}"))
}

/// Max over (first, second axis) slices of ‖a − b‖ / ‖b‖; NaN gives infinity.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape, b.shape, "shapes differ");
    if a.data.iter().any(|x| !x.is_finite()) {
        return f64::INFINITY;
    }
    let (n0, n1) = (a.shape.first().copied().unwrap_or(1), a.shape.get(1).copied().unwrap_or(1));
    let inner = a.data.len() / (n0 * n1).max(1);
    // Activations [B, T, H, D] slice by (B, H); others by their two leading axes.
    let act = a.shape.len() == 4 && a.shape[1] != 0;
    let mut worst: f64 = 0.0;
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
        *den.entry(key).or_default() += y * y;
    }
    for (k, n) in num {
        let d = den[&k];
        worst = worst.max(if d == 0.0 { n.sqrt() } else { (n / d).sqrt() });
    }
    worst
}

/// Lowers `g` under `sched`, runs the program and the graph interpreter on
/// `inputs`, and asserts every output agrees within `tol`. Returns the tile
/// interpreter's statistics.
pub fn check(
    g: &Graph,
    sched: &Schedule,
    inputs: &BTreeMap<String, Tensor>,
    prec: Precision,
    tol: f64,
) -> mixc_ir::tile::interp::Stats {
    // The oracle sees the inputs the kernels see (rounded to f32 when they compute in f32).
    let rounded: BTreeMap<String, Tensor>;
    let inputs = if prec == Precision::F32 {
        rounded = inputs
            .iter()
            .map(|(n, t)| {
                (n.clone(), Tensor { shape: t.shape.clone(), data: t.data.iter().map(|x| *x as f32 as f64).collect() })
            })
            .collect();
        &rounded
    } else {
        inputs
    };
    let want = interp::run(g, inputs).unwrap_or_else(|e| panic!("interp: {e}"));
    let prog = lower(g, sched).unwrap_or_else(|e| panic!("lower: {e}"));
    let (got, stats) = prog.run(inputs, prec).unwrap_or_else(|e| panic!("tile run: {e}"));
    for (name, w) in &want {
        let o = got.get(name).unwrap_or_else(|| panic!("program has no output `{name}`"));
        let e = rel_err(o, w);
        assert!(e <= tol, "{}: output `{name}` relative error {e:e} > {tol:e} (schedule {sched:?})", g.name);
    }
    stats
}

pub fn sizes(b: usize, t: usize) -> BTreeMap<&'static str, usize> {
    BTreeMap::from([("B", b), ("T", t), ("S", 0)])
}

/// The relative-error tolerance of a precision against the f64 reference.
pub fn tol(prec: Precision) -> f64 {
    match prec {
        Precision::F64 => 1e-9,
        Precision::F32 => 1e-4,
    }
}

/// Inputs rounded to f32, so that both precisions see what the buffers hold.
pub fn inputs(g: &Graph, b: usize, t: usize, seed: u64, with_optional: bool) -> BTreeMap<String, Tensor> {
    let mut ins = random_inputs(g, &sizes(b, t), seed, with_optional);
    for t in ins.values_mut() {
        t.data.iter_mut().for_each(|x| *x = *x as f32 as f64);
    }
    ins
}

/// The next call's inputs: fresh ones, with the states, tails and caches that
/// `prev` left (and the position it reached).
pub fn continued(
    g: &Graph,
    prev: &BTreeMap<String, Tensor>,
    b: usize,
    t1: usize,
    t2: usize,
    seed: u64,
) -> BTreeMap<String, Tensor> {
    let carried = interp::run(g, prev).unwrap_or_else(|e| panic!("interp: {e}"));
    let mut next = inputs(g, b, t2, seed, false);
    for (out, value) in carried {
        if let Some(input) = carried_input(&out) {
            if g.inputs().iter().any(|(n, _, _)| *n == input) {
                let data = value.data.iter().map(|x| *x as f32 as f64).collect();
                next.insert(input, Tensor { shape: value.shape, data });
            }
        }
    }
    if g.inputs().iter().any(|(n, _, _)| *n == "offset") {
        next.insert("offset".into(), Tensor::scalar(t1 as f64));
    }
    next
}
