//! The plain dense math of the model layer (projections, norms, MLP activations).

/// Multiply-adds below which a product runs on one thread (spreading a small
/// product over the cores costs more than it saves).
const PARALLEL_FROM: usize = 1 << 20;

/// `y[t, o] = Σ_i x[t, i] · w[o, i]` for `x` `[rows, inner]` and `w`
/// `[out, inner]`, row-major: the `gemm` crate's packed, vectorized kernels
/// (AVX2/FMA where this CPU has them), on every core for large products.
/// `None` where `x` or `w` holds fewer values than those shapes (checked
/// before any raw access).
pub fn matmul(x: &[f32], rows: usize, w: &[f32], out: usize, inner: usize) -> Option<Vec<f32>> {
    let mut y = vec![0.0f32; rows * out];
    let (x, w) = (x.get(..rows * inner)?, w.get(..out * inner)?);
    if y.is_empty() || inner == 0 {
        return Some(y);
    }
    let par = if rows * out * inner >= PARALLEL_FROM { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    let (out_s, inner_s) = (out as isize, inner as isize);
    // Safety: y is `rows × out` (row stride `out`), x `rows × inner` (row
    // stride `inner`), and wᵀ `inner × out` read from w with row stride 1 and
    // column stride `inner`: every index the product touches is in bounds of
    // the slices above; y is not read (`read_dst` false) and overlaps neither.
    unsafe {
        gemm::gemm(
            rows,
            out,
            inner,
            y.as_mut_ptr(),
            1,
            out_s,
            false,
            x.as_ptr(),
            1,
            inner_s,
            w.as_ptr(),
            inner_s,
            1,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        );
    }
    Some(y)
}

/// RMSNorm over rows of `d`: `x / sqrt(mean(x²) + eps) · w`.
pub fn rmsnorm(x: &[f32], w: &[f32], d: usize, eps: f32) -> Vec<f32> {
    x.chunks(d)
        .flat_map(|row| {
            let ms = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
            let r = 1.0 / (ms + eps).sqrt();
            row.iter().zip(w).map(move |(v, g)| v * r * g).collect::<Vec<_>>()
        })
        .collect()
}

/// LayerNorm over rows of `d`: `(x − mean) / sqrt(var + eps) · w + b` (the
/// biased variance, as `torch.nn.LayerNorm`).
pub fn layernorm(x: &[f32], w: &[f32], b: &[f32], d: usize, eps: f32) -> Vec<f32> {
    x.chunks(d)
        .flat_map(|row| {
            let mean = row.iter().sum::<f32>() / d as f32;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
            let r = 1.0 / (var + eps).sqrt();
            row.iter().zip(w).zip(b).map(move |((v, g), c)| (v - mean) * r * g + c).collect::<Vec<_>>()
        })
        .collect()
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + (0.797_884_6 * (x + 0.044_715 * x * x * x)).tanh())
}

/// Symmetric int8 quantization with one scale per `group` consecutive values:
/// `scale = max|x| / 127`, `q = round(x / scale)`. Re-quantizing dequantized
/// values gives the same codes, so a cache stored this way call after call
/// does not drift.
pub fn quantize(x: &[f32], group: usize) -> (Vec<i8>, Vec<f32>) {
    let mut q = Vec::with_capacity(x.len());
    let mut scales = Vec::with_capacity(x.len().div_ceil(group.max(1)));
    for chunk in x.chunks(group.max(1)) {
        let m = chunk.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let s = m / 127.0;
        scales.push(s);
        q.extend(chunk.iter().map(|v| if s > 0.0 { (v / s).round().clamp(-127.0, 127.0) as i8 } else { 0 }));
    }
    (q, scales)
}

/// The values of [`quantize`]'s codes.
pub fn dequantize(q: &[i8], scales: &[f32], group: usize) -> Vec<f32> {
    q.chunks(group.max(1)).zip(scales).flat_map(|(c, s)| c.iter().map(move |v| *v as f32 * s)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_matches_the_sum_of_products() {
        for (rows, out, inner) in [(1, 7, 5), (3, 1, 9), (17, 33, 65), (64, 96, 128), (2, 3, 0)] {
            let x: Vec<f32> = (0..rows * inner).map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0).collect();
            let w: Vec<f32> = (0..out * inner).map(|i| ((i * 7 % 31) as f32 - 15.0) / 9.0).collect();
            let y = matmul(&x, rows, &w, out, inner).unwrap_or_else(|| panic!("({rows},{out},{inner}): short operand"));
            assert_eq!(y.len(), rows * out);
            for t in 0..rows {
                for o in 0..out {
                    let want: f64 = (0..inner).map(|i| f64::from(x[t * inner + i]) * f64::from(w[o * inner + i])).sum();
                    let got = f64::from(y[t * out + o]);
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "({rows},{out},{inner}) [{t},{o}]: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn int8_groups_bound_the_error_and_requantize_to_the_same_codes() {
        let x: Vec<f32> = (0..96).map(|i| ((i * 37 % 101) as f32 - 50.0) * if i < 32 { 1e-3 } else { 1.0 }).collect();
        let (q, s) = quantize(&x, 32);
        assert_eq!((q.len(), s.len()), (96, 3));
        let y = dequantize(&q, &s, 32);
        for (g, (xs, ys)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
            let m = xs.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            let err = xs.iter().zip(ys).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(err <= m / 254.0 * 1.0001, "group {g}: {err} vs max {m}");
        }
        let (q2, s2) = quantize(&y, 32);
        assert_eq!(q2, q);
        assert_eq!(dequantize(&q2, &s2, 32), y);
        let (q0, s0) = quantize(&[0.0; 8], 4);
        assert_eq!((q0, s0), (vec![0; 8], vec![0.0, 0.0]));
    }
}
