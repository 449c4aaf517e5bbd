//! Naive softmax attention: every query row against every key it may see.

use super::tensor::Dense;
use crate::graph::TensorType;
use crate::ops::Mask;

/// `q [B, Tq, H, Dk]`, `k [B, Tk, Hkv, Dk]`, `v [B, Tk, Hkv, Dv]`; query `i` sits at
/// key position `Tk − Tq + i`. Returns `o` and the row log-sum-exp.
pub(crate) fn eval(
    q: &Dense,
    k: &Dense,
    v: &Dense,
    scale: f64,
    mask: Mask,
    out: &[TensorType],
) -> Result<Vec<Dense>, String> {
    let [b, tq, h, dk] = q.sizes[..] else { return Err("q must have rank 4".into()) };
    let [_, tk, hkv, _] = k.sizes[..] else { return Err("k must have rank 4".into()) };
    let dv = v.sizes[3];
    if hkv == 0 || h % hkv != 0 {
        return Err(format!("query heads ({h}) must be a multiple of kv heads ({hkv})"));
    }
    if tq > tk {
        return Err(format!("{tq} queries but only {tk} keys: keys must include the queries' own tokens"));
    }
    let group = h / hkv;
    let mut o = vec![0.0; b * tq * h * dv];
    let mut lse = vec![f64::NEG_INFINITY; b * tq * h];
    let mut scores = vec![0.0; tk];
    for bi in 0..b {
        for hi in 0..h {
            let hk = hi / group;
            for i in 0..tq {
                let pos = tk - tq + i;
                let qo = ((bi * tq + i) * h + hi) * dk;
                let mut m = f64::NEG_INFINITY;
                for (s, sc) in scores.iter_mut().enumerate() {
                    *sc = f64::NEG_INFINITY;
                    if mask.allows(pos, s) {
                        let ko = ((bi * tk + s) * hkv + hk) * dk;
                        let dot: f64 = (0..dk).map(|d| q.data[qo + d] * k.data[ko + d]).sum();
                        *sc = dot * scale;
                        m = m.max(*sc);
                    }
                }
                if m == f64::NEG_INFINITY {
                    continue; // no visible key: output 0, lse −inf
                }
                let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
                let oo = ((bi * tq + i) * h + hi) * dv;
                for (s, sc) in scores.iter().enumerate() {
                    let p = (sc - m).exp() / z;
                    if p == 0.0 {
                        continue;
                    }
                    let vo = ((bi * tk + s) * hkv + hk) * dv;
                    for d in 0..dv {
                        o[oo + d] += p * v.data[vo + d];
                    }
                }
                lse[(bi * tq + i) * h + hi] = m + z.ln();
            }
        }
    }
    Ok(vec![
        Dense { dims: out[0].shape.clone(), sizes: vec![b, tq, h, dv], data: o },
        Dense { dims: out[1].shape.clone(), sizes: vec![b, tq, h], data: lse },
    ])
}
