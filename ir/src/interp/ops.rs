//! Evaluation of every op kind but inputs (and the two big ones, which live in
//! `attention` and `recurrence`).

use super::tensor::{for_each_index, strides, Dense};
use super::{attention, recurrence, Sizes};
use crate::dims::DimId;
use crate::dtype::DType;
use crate::graph::{Graph, TensorType};
use crate::ops::*;

type Res<T> = Result<T, String>;

fn dense(dims: &[DimId], sizes: Vec<usize>, data: Vec<f64>) -> Dense {
    Dense { dims: dims.to_vec(), sizes, data }
}

/// Rounds a value to what a tensor of `dtype` can hold.
pub(crate) fn round_to(dtype: DType, x: f64) -> f64 {
    match dtype {
        DType::F64 => x,
        DType::F32 => x as f32 as f64,
        DType::F16 => half::f16::from_f64(x).to_f64(),
        DType::BF16 => half::bf16::from_f64(x).to_f64(),
        DType::I32 => x.trunc().clamp(i32::MIN as f64, i32::MAX as f64),
        DType::I8 => x.trunc().clamp(-128.0, 127.0),
        DType::I4 => x.trunc().clamp(-8.0, 7.0),
        DType::Bool => {
            if x != 0.0 {
                1.0
            } else {
                0.0
            }
        }
    }
}

pub(crate) fn unary(f: UnaryFn, x: f64) -> f64 {
    match f {
        UnaryFn::Neg => -x,
        UnaryFn::Abs => x.abs(),
        UnaryFn::Exp => x.exp(),
        UnaryFn::Log => x.ln(),
        UnaryFn::Sqrt => x.sqrt(),
        UnaryFn::Rsqrt => 1.0 / x.sqrt(),
        UnaryFn::Recip => 1.0 / x,
        UnaryFn::Sigmoid => sigmoid(x),
        UnaryFn::LogSigmoid => log_sigmoid(x),
        UnaryFn::Softplus => softplus(x),
        UnaryFn::Silu => x * sigmoid(x),
        UnaryFn::Elu => {
            if x > 0.0 {
                x
            } else {
                x.exp_m1()
            }
        }
        UnaryFn::EluPlusOne => {
            if x > 0.0 {
                x + 1.0
            } else {
                x.exp()
            }
        }
        UnaryFn::Relu => x.max(0.0),
        UnaryFn::Tanh => x.tanh(),
        UnaryFn::Sin => x.sin(),
        UnaryFn::Cos => x.cos(),
        UnaryFn::Round => x.round(),
        UnaryFn::Floor => x.floor(),
        UnaryFn::Not => (x == 0.0) as u8 as f64,
    }
}

pub(crate) fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `log σ(x) = −softplus(−x)`, stable for large |x|.
pub(crate) fn log_sigmoid(x: f64) -> f64 {
    -softplus(-x)
}

pub(crate) fn softplus(x: f64) -> f64 {
    if x > 0.0 {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    }
}

pub(crate) fn binary(f: BinaryFn, a: f64, b: f64) -> f64 {
    let flag = |c: bool| c as u8 as f64;
    match f {
        BinaryFn::Add => a + b,
        BinaryFn::Sub => a - b,
        BinaryFn::Mul => a * b,
        BinaryFn::Div => a / b,
        BinaryFn::Max => a.max(b),
        BinaryFn::Min => a.min(b),
        BinaryFn::Pow => a.powf(b),
        BinaryFn::Rem => a - b * (a / b).floor(),
        BinaryFn::FloorDiv => (a / b).floor(),
        BinaryFn::Lt => flag(a < b),
        BinaryFn::Le => flag(a <= b),
        BinaryFn::Eq => flag(a == b),
        BinaryFn::And => flag(a != 0.0 && b != 0.0),
        BinaryFn::Or => flag(a != 0.0 || b != 0.0),
    }
}

/// Evaluates one op. `out` holds the verified result types.
pub(crate) fn eval(g: &Graph, sizes: &Sizes, kind: &OpKind, a: &[&Dense], out: &[TensorType]) -> Res<Vec<Dense>> {
    let out_sizes = |i: usize| sizes.of(g, &out[i].shape);
    let one = |d: Dense| Ok(vec![d]);
    match kind {
        OpKind::Input { .. } => Err("inputs are bound by the interpreter".into()),
        OpKind::Const { value, dtype, shape } => {
            let sz = sizes.of(g, shape)?;
            let n = sz.iter().product();
            one(dense(shape, sz, vec![round_to(*dtype, *value); n]))
        }
        OpKind::Iota { dim } => {
            let n = sizes.get(g, *dim)?;
            one(dense(&[*dim], vec![n], (0..n).map(|i| i as f64).collect()))
        }
        OpKind::Indices { dim, values } => {
            one(dense(&[*dim], vec![values.len()], values.iter().map(|v| *v as f64).collect()))
        }
        OpKind::Unary(f) => {
            let dt = out[0].dtype;
            let data = a[0].data.iter().map(|x| round_to(dt, unary(*f, *x))).collect();
            one(dense(&a[0].dims, a[0].sizes.clone(), data))
        }
        OpKind::Binary(f) => {
            let sz = out_sizes(0)?;
            let (x, y) = (a[0].expand(&out[0].shape, &sz), a[1].expand(&out[0].shape, &sz));
            let dt = out[0].dtype;
            if matches!(f, BinaryFn::Rem | BinaryFn::FloorDiv | BinaryFn::Div) && dt.is_int() && y.contains(&0.0) {
                return Err("integer division by zero".into());
            }
            let data = x.iter().zip(&y).map(|(p, q)| round_to(dt, binary(*f, *p, *q))).collect();
            one(dense(&out[0].shape, sz, data))
        }
        OpKind::Select => {
            let sz = out_sizes(0)?;
            let c = a[0].expand(&out[0].shape, &sz);
            let (x, y) = (a[1].expand(&out[0].shape, &sz), a[2].expand(&out[0].shape, &sz));
            let data = c.iter().zip(x.iter().zip(&y)).map(|(c, (x, y))| if *c != 0.0 { *x } else { *y }).collect();
            one(dense(&out[0].shape, sz, data))
        }
        OpKind::Cast(to) => {
            let data = a[0].data.iter().map(|x| round_to(*to, *x)).collect();
            one(dense(&a[0].dims, a[0].sizes.clone(), data))
        }
        OpKind::Clamp { lo, hi } => {
            let data = a[0].data.iter().map(|x| x.clamp(*lo, *hi)).collect();
            one(dense(&a[0].dims, a[0].sizes.clone(), data))
        }
        OpKind::Broadcast { shape } | OpKind::Permute { shape } => {
            let sz = sizes.of(g, shape)?;
            let data = a[0].expand(shape, &sz);
            one(dense(shape, sz, data))
        }
        OpKind::Reshape { shape } => {
            let sz = sizes.of(g, shape)?;
            if sz.iter().product::<usize>() != a[0].data.len() {
                return Err(format!("cannot reshape {:?} to {:?}", a[0].sizes, sz));
            }
            one(dense(shape, sz, a[0].data.clone()))
        }
        OpKind::Einsum { out: od } => one(einsum(g, sizes, a[0], a[1], od)?),
        OpKind::Reduce { func, dims } => one(reduce(a[0], *func, dims, &out[0].shape)),
        OpKind::Cumsum { dim, exclusive, reverse } => one(cumsum(a[0], *dim, *exclusive, *reverse)),
        OpKind::Softmax { dim } => one(along(a[0], *dim, |row| {
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = row.iter().map(|x| (x - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(|x| x / s).collect()
        })),
        OpKind::Normalize { kind, dim, eps } => one(along(a[0], *dim, |row| {
            let ss: f64 = row.iter().map(|x| x * x).sum();
            let denom = match kind {
                NormKind::L2 => (ss + eps).sqrt(),
                NormKind::Rms => (ss / row.len().max(1) as f64 + eps).sqrt(),
            };
            row.iter().map(|x| x / denom).collect()
        })),
        OpKind::Concat { axis, .. } => one(concat(a, *axis, &out[0].shape)),
        OpKind::Slice { axis, start, .. } => {
            let sz = out_sizes(0)?;
            let have = a[0].sizes[*axis];
            if *start as usize + sz[*axis] > have {
                return Err(format!("slice {}..{} exceeds the axis size {have}", start, *start as usize + sz[*axis]));
            }
            one(slice_axis(a[0], *axis, *start as usize, sz[*axis], out[0].shape[*axis]))
        }
        OpKind::Gather { along, into } => one(gather(a[0], a[1], *along, *into, &out[0].shape)?),
        OpKind::Scatter { along, into } => one(scatter(a[0], a[1], a[2], *along, *into)?),
        OpKind::TopK { along, into } => topk(a[0], *along, *into, &out[0].shape, sizes.get(g, *into)?),
        OpKind::CausalConv1d { silu, .. } => {
            let tail_len = sizes.get(g, out[1].shape[out[1].shape.len() - 2])?;
            conv1d(a[0], a[1], a.get(2).copied(), *silu, tail_len, &out[1].shape)
        }
        OpKind::Rope { time, dim, theta } => one(rope(a[0], a[1], *time, *dim, *theta)?),
        OpKind::Attention { scale, mask } => attention::eval(a[0], a[1], a[2], *scale, *mask, out),
        OpKind::LinearRecurrence(r) => recurrence::eval(r, a, out),
        OpKind::Mix { weights } => {
            let mut data = vec![0.0; a[0].data.len()];
            for (w, x) in weights.iter().zip(a) {
                for (d, v) in data.iter_mut().zip(&x.data) {
                    *d += w * v;
                }
            }
            one(dense(&a[0].dims, a[0].sizes.clone(), data))
        }
        OpKind::KvAppend { .. } => one(concat(a, 1, &out[0].shape)),
        OpKind::WindowRetain { keep, .. } => {
            let s = a[0].sizes[1];
            let k = (*keep as usize).min(s);
            one(slice_axis(a[0], 1, s - k, k, out[0].shape[1]))
        }
        OpKind::SinkWindowRetain { sinks, window, .. } => {
            let s = a[0].sizes[1];
            let (n, w) = (*sinks as usize, *window as usize);
            if s <= n + w {
                let mut d = a[0].clone();
                d.dims[1] = out[0].shape[1];
                return one(d);
            }
            let head = slice_axis(a[0], 1, 0, n, out[0].shape[1]);
            let tail = slice_axis(a[0], 1, s - w, w, out[0].shape[1]);
            one(concat(&[&head, &tail], 1, &out[0].shape))
        }
        OpKind::Quantize { bits, .. } => {
            let sz = out_sizes(0)?;
            let g_len = *sz.last().unwrap_or(&1);
            let qmax = if *bits == 8 { 127.0 } else { 7.0 };
            let mut codes = Vec::with_capacity(a[0].data.len());
            let mut scales = Vec::with_capacity(a[0].data.len() / g_len.max(1));
            for group in a[0].data.chunks(g_len.max(1)) {
                let amax = group.iter().fold(0.0f64, |m, x| m.max(x.abs()));
                let s = round_to(DType::F32, amax / qmax);
                scales.push(s);
                for x in group {
                    codes.push(if s > 0.0 { (x / s).round().clamp(-qmax, qmax) } else { 0.0 });
                }
            }
            let ssz = sizes.of(g, &out[1].shape)?;
            Ok(vec![dense(&out[0].shape, sz, codes), dense(&out[1].shape, ssz, scales)])
        }
        OpKind::Dequantize => {
            let g_len = *a[0].sizes.last().unwrap_or(&1);
            let data = a[0].data.iter().enumerate().map(|(i, c)| c * a[1].data[i / g_len.max(1)]).collect();
            one(dense(&out[0].shape, a[0].sizes.clone(), data))
        }
    }
}

fn einsum(g: &Graph, sizes: &Sizes, x: &Dense, y: &Dense, out: &[DimId]) -> Res<Dense> {
    let mut all: Vec<DimId> = out.to_vec();
    for d in x.dims.iter().chain(&y.dims) {
        if !all.contains(d) {
            all.push(*d);
        }
    }
    let all_sz = sizes.of(g, &all)?;
    let out_sz = all_sz[..out.len()].to_vec();
    let (sx, sy) = (x.strides_along(&all), y.strides_along(&all));
    let so: Vec<usize> = strides(&out_sz);
    let mut data = vec![0.0; out_sz.iter().product()];
    for_each_index(&all_sz, |idx| {
        let ox: usize = idx.iter().zip(&sx).map(|(i, s)| i * s).sum();
        let oy: usize = idx.iter().zip(&sy).map(|(i, s)| i * s).sum();
        let oo: usize = idx[..out.len()].iter().zip(&so).map(|(i, s)| i * s).sum();
        data[oo] += x.data[ox] * y.data[oy];
    });
    Ok(dense(out, out_sz, data))
}

fn reduce(x: &Dense, f: ReduceFn, rd: &[DimId], out: &[DimId]) -> Dense {
    let out_sz: Vec<usize> = out.iter().filter_map(|d| x.size_of(*d)).collect();
    let n_out: usize = out_sz.iter().product();
    let count = (x.data.len() / n_out.max(1)).max(1) as f64;
    let so = {
        let own = strides(&out_sz);
        x.dims.iter().map(|d| out.iter().position(|o| o == d).map(|p| own[p]).unwrap_or(0)).collect::<Vec<_>>()
    };
    let _ = rd;
    let init = match f {
        ReduceFn::Max | ReduceFn::LogSumExp => f64::NEG_INFINITY,
        ReduceFn::Min => f64::INFINITY,
        _ => 0.0,
    };
    let mut acc = vec![init; n_out];
    let mut k = 0;
    for_each_index(&x.sizes, |idx| {
        let o: usize = idx.iter().zip(&so).map(|(i, s)| i * s).sum();
        let v = x.data[k];
        k += 1;
        acc[o] = match f {
            ReduceFn::Sum | ReduceFn::Mean => acc[o] + v,
            ReduceFn::Max | ReduceFn::LogSumExp => acc[o].max(v),
            ReduceFn::Min => acc[o].min(v),
        };
    });
    if f == ReduceFn::LogSumExp {
        let mut sum = vec![0.0; n_out];
        let mut k = 0;
        for_each_index(&x.sizes, |idx| {
            let o: usize = idx.iter().zip(&so).map(|(i, s)| i * s).sum();
            sum[o] += (x.data[k] - acc[o]).exp();
            k += 1;
        });
        for (a, s) in acc.iter_mut().zip(sum) {
            *a += s.ln();
        }
    }
    if f == ReduceFn::Mean {
        acc.iter_mut().for_each(|a| *a /= count);
    }
    dense(out, out_sz, acc)
}

/// Applies `f` to every 1-D row along `dim`.
fn along(x: &Dense, dim: DimId, f: impl Fn(&[f64]) -> Vec<f64>) -> Dense {
    let Some(ax) = x.axis(dim) else { return x.clone() };
    let n = x.sizes[ax];
    let inner: usize = x.sizes[ax + 1..].iter().product();
    let outer: usize = x.sizes[..ax].iter().product();
    let mut data = x.data.clone();
    let mut row = vec![0.0; n];
    for o in 0..outer {
        for i in 0..inner {
            for (j, r) in row.iter_mut().enumerate() {
                *r = x.data[(o * n + j) * inner + i];
            }
            for (j, v) in f(&row).into_iter().enumerate() {
                data[(o * n + j) * inner + i] = v;
            }
        }
    }
    dense(&x.dims, x.sizes.clone(), data)
}

fn cumsum(x: &Dense, dim: DimId, exclusive: bool, reverse: bool) -> Dense {
    along(x, dim, |row| {
        let n = row.len();
        let mut out = vec![0.0; n];
        let mut acc = 0.0;
        for step in 0..n {
            let j = if reverse { n - 1 - step } else { step };
            if exclusive {
                out[j] = acc;
                acc += row[j];
            } else {
                acc += row[j];
                out[j] = acc;
            }
        }
        out
    })
}

fn concat(parts: &[&Dense], axis: usize, out: &[DimId]) -> Dense {
    let outer: usize = parts[0].sizes[..axis].iter().product();
    let inner: usize = parts[0].sizes[axis + 1..].iter().product();
    let total: usize = parts.iter().map(|p| p.sizes[axis]).sum();
    let mut data = Vec::with_capacity(outer * total * inner);
    for o in 0..outer {
        for p in parts {
            let n = p.sizes[axis];
            data.extend_from_slice(&p.data[o * n * inner..(o + 1) * n * inner]);
        }
    }
    let mut sz = parts[0].sizes.clone();
    sz[axis] = total;
    dense(out, sz, data)
}

fn slice_axis(x: &Dense, axis: usize, start: usize, len: usize, dim: DimId) -> Dense {
    let outer: usize = x.sizes[..axis].iter().product();
    let inner: usize = x.sizes[axis + 1..].iter().product();
    let n = x.sizes[axis];
    let mut data = Vec::with_capacity(outer * len * inner);
    for o in 0..outer {
        data.extend_from_slice(&x.data[(o * n + start) * inner..(o * n + start + len) * inner]);
    }
    let mut dims = x.dims.clone();
    dims[axis] = dim;
    let mut sz = x.sizes.clone();
    sz[axis] = len;
    Dense { dims, sizes: sz, data }
}

fn index_value(v: f64, n: usize, what: &str) -> Res<usize> {
    if v >= 0.0 && (v as usize) < n && v.fract() == 0.0 {
        Ok(v as usize)
    } else {
        Err(format!("{what} index {v} is out of range 0..{n}"))
    }
}

fn gather(x: &Dense, idx: &Dense, along: DimId, into: DimId, out: &[DimId]) -> Res<Dense> {
    let k = idx.size_of(into).unwrap_or(0);
    let out_sz: Vec<usize> = out.iter().map(|d| if *d == into { k } else { x.size_of(*d).unwrap_or(0) }).collect();
    let si = idx.strides_along(out);
    let ax_out = out.iter().position(|d| *d == into).unwrap_or(0);
    let sx = x.strides_along(out);
    let stride_along = x.axis(along).map(|a| strides(&x.sizes)[a]).unwrap_or(0);
    let n_along = x.size_of(along).unwrap_or(0);
    let mut data = Vec::with_capacity(out_sz.iter().product());
    let mut bad = None;
    for_each_index(&out_sz, |i| {
        let oi: usize = i.iter().zip(&si).map(|(a, s)| a * s).sum();
        let ox: usize = i.iter().zip(&sx).enumerate().filter(|(p, _)| *p != ax_out).map(|(_, (a, s))| a * s).sum();
        match index_value(idx.data[oi], n_along, "gather") {
            Ok(j) => data.push(x.data[ox + j * stride_along]),
            Err(e) => {
                bad.get_or_insert(e);
                data.push(0.0);
            }
        }
    });
    match bad {
        Some(e) => Err(e),
        None => Ok(dense(out, out_sz, data)),
    }
}

fn scatter(base: &Dense, idx: &Dense, src: &Dense, along: DimId, into: DimId) -> Res<Dense> {
    let mut out = base.clone();
    let si = idx.strides_along(&src.dims);
    let ax_src = src.axis(into).unwrap_or(0);
    let sb = base.strides_along(&src.dims);
    let stride_along = base.axis(along).map(|a| strides(&base.sizes)[a]).unwrap_or(0);
    let n_along = base.size_of(along).unwrap_or(0);
    let mut k = 0;
    let mut bad = None;
    for_each_index(&src.sizes, |i| {
        let oi: usize = i.iter().zip(&si).map(|(a, s)| a * s).sum();
        let ob: usize = i.iter().zip(&sb).enumerate().filter(|(p, _)| *p != ax_src).map(|(_, (a, s))| a * s).sum();
        match index_value(idx.data[oi], n_along, "scatter") {
            Ok(j) => out.data[ob + j * stride_along] = src.data[k],
            Err(e) => {
                bad.get_or_insert(e);
            }
        }
        k += 1;
    });
    match bad {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

fn topk(x: &Dense, along: DimId, into: DimId, out: &[DimId], k: usize) -> Res<Vec<Dense>> {
    let Some(ax) = x.axis(along) else { return Err("top-k dim missing".into()) };
    let n = x.sizes[ax];
    if k > n {
        return Err(format!("top-k of {k} out of {n}"));
    }
    let inner: usize = x.sizes[ax + 1..].iter().product();
    let outer: usize = x.sizes[..ax].iter().product();
    let mut vals = vec![0.0; outer * k * inner];
    let mut idxs = vec![0.0; outer * k * inner];
    for o in 0..outer {
        for i in 0..inner {
            let mut order: Vec<usize> = (0..n).collect();
            let at = |j: usize| x.data[(o * n + j) * inner + i];
            // Stable sort by descending value: ties keep the lower index first.
            order.sort_by(|p, q| at(*q).partial_cmp(&at(*p)).unwrap_or(std::cmp::Ordering::Equal));
            for (r, j) in order.iter().take(k).enumerate() {
                vals[(o * k + r) * inner + i] = at(*j);
                idxs[(o * k + r) * inner + i] = *j as f64;
            }
        }
    }
    let mut sz = x.sizes.clone();
    sz[ax] = k;
    let _ = into;
    Ok(vec![dense(out, sz.clone(), vals), dense(out, sz, idxs)])
}

fn conv1d(x: &Dense, w: &Dense, tail: Option<&Dense>, silu: bool, km1: usize, tail_dims: &[DimId]) -> Res<Vec<Dense>> {
    let r = x.sizes.len();
    let (t_len, c) = (x.sizes[r - 2], x.sizes[r - 1]);
    let taps = w.sizes[1];
    if taps != km1 + 1 {
        return Err(format!("weight has {taps} taps but the tail holds {km1} rows"));
    }
    let outer: usize = x.sizes[..r - 2].iter().product();
    let mut y = vec![0.0; x.data.len()];
    let mut new_tail = vec![0.0; outer * km1 * c];
    for o in 0..outer {
        // The extended input: the tail (K−1 rows) then the new rows.
        let row = |s: usize, ch: usize| -> f64 {
            if s < km1 {
                tail.map(|t| t.data[(o * km1 + s) * c + ch]).unwrap_or(0.0)
            } else {
                x.data[(o * t_len + s - km1) * c + ch]
            }
        };
        for t in 0..t_len {
            for ch in 0..c {
                let mut acc = 0.0;
                for j in 0..taps {
                    acc += w.data[ch * taps + j] * row(t + j, ch);
                }
                y[(o * t_len + t) * c + ch] = if silu { acc * sigmoid(acc) } else { acc };
            }
        }
        for s in 0..km1 {
            for ch in 0..c {
                new_tail[(o * km1 + s) * c + ch] = row(t_len + s, ch);
            }
        }
    }
    let mut tsz = x.sizes.clone();
    tsz[r - 2] = km1;
    Ok(vec![dense(&x.dims, x.sizes.clone(), y), dense(tail_dims, tsz, new_tail)])
}

fn rope(x: &Dense, offset: &Dense, time: DimId, dim: DimId, theta: f64) -> Res<Dense> {
    let (Some(at), Some(ad)) = (x.axis(time), x.axis(dim)) else {
        return Err("rope dims missing".into());
    };
    let d = x.sizes[ad];
    if d % 2 == 1 {
        return Err(format!("rotary dim has odd size {d}"));
    }
    let half = d / 2;
    let off = offset.data.first().copied().unwrap_or(0.0);
    let st = strides(&x.sizes);
    let mut data = x.data.clone();
    let mut outer_sizes = x.sizes.clone();
    outer_sizes[ad] = 1;
    for_each_index(&outer_sizes, |idx| {
        let base: usize = idx.iter().zip(&st).map(|(i, s)| i * s).sum();
        let pos = off + idx[at] as f64;
        for i in 0..half {
            let freq = theta.powf(-2.0 * i as f64 / d as f64);
            let (s, c) = (pos * freq).sin_cos();
            let (p1, p2) = (base + i * st[ad], base + (i + half) * st[ad]);
            let (x1, x2) = (x.data[p1], x.data[p2]);
            data[p1] = x1 * c - x2 * s;
            data[p2] = x2 * c + x1 * s;
        }
    });
    Ok(dense(&x.dims, x.sizes.clone(), data))
}
