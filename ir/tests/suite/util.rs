//! Helpers shared by the IR tests: configs from TOML, random tensors, error norms.

use mixc_ir::interp::Tensor;
use mixc_ir::model::MixerConfig;
use std::collections::BTreeMap;

/// A mixer table parsed from TOML text (so tests don't depend on every field).
pub fn cfg(toml_text: &str) -> MixerConfig {
    toml::from_str(toml_text).unwrap_or_else(|e| panic!("bad test config: {e}\n{toml_text}"))
}

pub use mixc_ir::mixers::inputs::SplitMix as TestRng;

/// Norm-wise relative error `‖a − b‖ / ‖b‖`, over each slice of the two leading
/// "batch-like" axes given (e.g. batch and head), reported as the maximum.
/// `axes` picks the slice axes; NaN anywhere gives infinity.
pub fn rel_err_slices(a: &Tensor, b: &Tensor, axes: &[usize]) -> f64 {
    assert_eq!(a.shape, b.shape, "shapes differ");
    if a.data.iter().any(|x| x.is_nan()) {
        return f64::INFINITY;
    }
    let mut num: BTreeMap<Vec<usize>, f64> = BTreeMap::new();
    let mut den: BTreeMap<Vec<usize>, f64> = BTreeMap::new();
    let mut idx = vec![0usize; a.shape.len()];
    for i in 0..a.data.len() {
        let mut rem = i;
        for ax in (0..a.shape.len()).rev() {
            idx[ax] = rem % a.shape[ax];
            rem /= a.shape[ax];
        }
        let key: Vec<usize> = axes.iter().map(|ax| idx[*ax]).collect();
        let d = a.data[i] - b.data[i];
        *num.entry(key.clone()).or_default() += d * d;
        *den.entry(key).or_default() += b.data[i] * b.data[i];
    }
    num.iter()
        .map(|(k, n)| {
            let d = den[k];
            if d == 0.0 {
                n.sqrt()
            } else {
                (n / d).sqrt()
            }
        })
        .fold(0.0, f64::max)
}

/// Slice axes for a named output: activations `[B, T, H, D]` slice by (B, H);
/// states `[B, H, ...]` by (B, H).
pub fn slice_axes(shape_len: usize, is_activation: bool) -> Vec<usize> {
    match (shape_len, is_activation) {
        (4, true) => vec![0, 2],
        (3, true) => vec![0, 2],
        (n, false) if n >= 2 => vec![0, 1],
        _ => vec![],
    }
}
