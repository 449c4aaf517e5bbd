//! Random inputs for timing on a GPU, made fast (f32 straight away, on every
//! core): the reference's generator draws f64 normals one by one, which at
//! the GPU's sizes (10⁸ elements a tensor) takes longer than the runs it
//! feeds. Values are uniform with the ranges the kernels expect (log decays
//! ≤ 0, gates in (0, 1)); integer inputs (cache offsets) are 0.

use super::engine::Inputs;
use mixc_ir::graph::Graph;
use mixc_runtime::{Data, HostTensor};
use std::collections::BTreeMap;

/// Uniform random inputs for every input of `g` at `sizes` (dims by name;
/// free dims not named are 0); the optional ones only `with_optional`.
pub fn fast_inputs(g: &Graph, sizes: &BTreeMap<&str, usize>, seed: u64, with_optional: bool) -> Inputs {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(4);
    let mut out = BTreeMap::new();
    for (k, (name, v, optional)) in g.inputs().into_iter().enumerate() {
        if optional && !with_optional {
            continue;
        }
        let shape: Vec<usize> =
            g.ty(v).shape.iter().map(|d| mixc_ir::mixers::inputs::dim_size(g, *d, sizes).unwrap_or(0)).collect();
        let n: usize = shape.iter().product();
        if !g.ty(v).dtype.is_float() {
            out.insert(name.to_string(), HostTensor { shape, data: Data::I32(vec![0; n]) });
            continue;
        }
        let map: fn(f32) -> f32 = match name {
            "g" => |u| -(1.0 + u) * 0.5 - 0.01,
            "beta" => |u| 0.5 + 0.45 * u,
            "f" => |u| 3.0 + u,
            _ => |u| 0.5 * u,
        };
        let mut data = vec![0f32; n];
        let per = n.div_ceil(threads).max(1);
        std::thread::scope(|sc| {
            for (c, part) in data.chunks_mut(per).enumerate() {
                sc.spawn(move || {
                    let mut x = seed ^ ((k as u64) << 40) ^ (c as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                    for e in part.iter_mut() {
                        // xorshift64*: uniform in [-1, 1).
                        x ^= x >> 12;
                        x ^= x << 25;
                        x ^= x >> 27;
                        let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
                        *e = map(r as f32 / (1u64 << 23) as f32 - 1.0);
                    }
                });
            }
        });
        out.insert(name.to_string(), HostTensor { shape, data: Data::F32(data) });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_inputs_have_the_shapes_and_ranges_kernels_expect() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/gated-deltanet.toml");
        let g = crate::graphs_of_file(&path).unwrap_or_else(|e| panic!("{e}")).remove(0).graph;
        let sizes = BTreeMap::from([("B", 2), ("T", 33)]);
        let ins = fast_inputs(&g, &sizes, 7, false);
        assert!(!ins.contains_key("initial_state"));
        let f32s = |n: &str| match ins.get(n).map(|t| &t.data) {
            Some(Data::F32(v)) => v.clone(),
            _ => panic!("no float input `{n}`"),
        };
        assert_eq!(ins.get("q").map(|t| t.shape[..2].to_vec()), Some(vec![2, 33]));
        assert!(f32s("g").iter().all(|x| *x < 0.0));
        assert!(f32s("beta").iter().all(|x| *x > 0.0 && *x < 1.0));
        assert!(f32s("q").iter().all(|x| x.abs() <= 0.5));
        // Seeded: the same seed gives the same values, another seed others.
        assert_eq!(fast_inputs(&g, &sizes, 7, false), ins);
        assert_ne!(fast_inputs(&g, &sizes, 8, false).get("q"), ins.get("q"));
        assert!(fast_inputs(&g, &sizes, 7, true).contains_key("initial_state"));
    }
}
