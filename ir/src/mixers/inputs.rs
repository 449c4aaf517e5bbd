//! Random inputs for a mixer graph, drawn the way the published references
//! draw theirs (by the input names of the mixer library): log decays
//! `g = −softplus(N(0,1))`, `beta = σ(N(0,1))`, mLSTM forget pre-activations
//! `N(3, 1)`, activations `N(0, 0.5²)`. Used by tests, `mixc exec` demos and
//! benchmarks.

use crate::dims::DimId;
use crate::graph::Graph;
use crate::interp::Tensor;
use std::collections::BTreeMap;

/// A small deterministic generator (SplitMix64 + Box–Muller).
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> SplitMix {
        SplitMix(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal.
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

fn softplus(x: f64) -> f64 {
    if x > 0.0 {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    }
}

/// The size of `d` given sizes of free dims by name; `None` if unbound.
pub fn dim_size(g: &Graph, d: DimId, sizes: &BTreeMap<&str, usize>) -> Option<usize> {
    if let Some(s) = sizes.get(g.dims.name(d)) {
        return Some(*s);
    }
    let bound: BTreeMap<DimId, u64> =
        g.dims.iter().filter_map(|(id, def)| sizes.get(def.name.as_str()).map(|s| (id, *s as u64))).collect();
    g.dims.eval(d, &bound).ok().map(|x| x as usize)
}

/// Random inputs for every input of `g` (optional ones only when
/// `with_optional`), given the sizes of the free dims by name. Free dims not
/// named (e.g. a cache length `S`) are taken as 0.
pub fn random_inputs(
    g: &Graph,
    sizes: &BTreeMap<&str, usize>,
    seed: u64,
    with_optional: bool,
) -> BTreeMap<String, Tensor> {
    let mut rng = SplitMix::new(seed);
    let mut out = BTreeMap::new();
    for (name, v, optional) in g.inputs() {
        if optional && !with_optional {
            continue;
        }
        let shape: Vec<usize> = g.ty(v).shape.iter().map(|d| dim_size(g, *d, sizes).unwrap_or(0)).collect();
        let n: usize = shape.iter().product();
        let mut draw = |f: &mut dyn FnMut(&mut SplitMix) -> f64| -> Vec<f64> { (0..n).map(|_| f(&mut rng)).collect() };
        let data = match name {
            "offset" => vec![0.0; n],
            "g" => draw(&mut |r| -softplus(r.normal())),
            "beta" => draw(&mut |r| 1.0 / (1.0 + (-r.normal()).exp())),
            "f" => draw(&mut |r| r.normal() + 3.0),
            "i" | "initial_m" | "dt" | "D" | "router" => draw(&mut |r| r.normal()),
            _ => draw(&mut |r| r.normal() * 0.5),
        };
        out.insert(name.to_string(), Tensor { shape, data });
    }
    out
}
