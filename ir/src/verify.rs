//! Shape and dtype inference, and the whole-graph verifier.
//!
//! [`infer`] computes an op's result types from its operands' types, or says
//! what is wrong in one sentence; the graph builder calls it on every op it adds.
//! [`verify`] re-checks a whole graph (after parsing, or after a pass) and names
//! the op and value at fault.

use crate::dims::{DimId, DimTable, SizeExpr};
use crate::dtype::DType;
use crate::error::IrError;
use crate::graph::{is_ident, Graph, TensorType};
use crate::ops::*;

type Res<T> = Result<T, String>;

fn shape_str(dims: &DimTable, s: &[DimId]) -> String {
    dims.fmt_shape(s)
}

fn check_shape(dims: &DimTable, s: &[DimId]) -> Res<()> {
    for (i, d) in s.iter().enumerate() {
        if d.index() >= dims.len() {
            return Err(format!("shape refers to unknown {d}"));
        }
        if s[..i].contains(d) {
            return Err(format!("dim `{}` appears twice in shape {}", dims.name(*d), shape_str(dims, s)));
        }
    }
    Ok(())
}

/// Union of dims in order of first appearance (broadcasting by name).
fn union(shapes: &[&[DimId]]) -> Vec<DimId> {
    let mut out: Vec<DimId> = Vec::new();
    for s in shapes {
        for d in *s {
            if !out.contains(d) {
                out.push(*d);
            }
        }
    }
    out
}

fn expect_n(n: usize, tys: &[TensorType]) -> Res<()> {
    if tys.len() != n {
        return Err(format!("expected {n} operand(s), found {}", tys.len()));
    }
    Ok(())
}

fn expect_float(role: &str, t: &TensorType) -> Res<()> {
    if !t.dtype.is_float() {
        return Err(format!("operand `{role}` must be a float, found {}", t.dtype));
    }
    Ok(())
}

fn expect_same_size(dims: &DimTable, what: &str, a: DimId, b: DimId) -> Res<()> {
    if !dims.same_size(a, b) {
        return Err(format!("{what}: dims `{}` and `{}` must have the same size", dims.name(a), dims.name(b)));
    }
    Ok(())
}

fn expect_rank(dims: &DimTable, role: &str, t: &TensorType, rank: usize, layout: &str) -> Res<()> {
    if t.shape.len() != rank {
        return Err(format!("operand `{role}` must be {layout}, found {}", shape_str(dims, &t.shape)));
    }
    Ok(())
}

fn replace(shape: &[DimId], from: DimId, to: DimId) -> Vec<DimId> {
    shape.iter().map(|d| if *d == from { to } else { *d }).collect()
}

/// Infers the result types of `kind` applied to operands of types `tys`.
pub fn infer(dims: &DimTable, kind: &OpKind, tys: &[TensorType]) -> Res<Vec<TensorType>> {
    for t in tys {
        check_shape(dims, &t.shape)?;
    }
    let one = |t: TensorType| Ok(vec![t]);
    match kind {
        OpKind::Input { dtype, shape, .. } | OpKind::Const { dtype, shape, .. } => {
            expect_n(0, tys)?;
            check_shape(dims, shape)?;
            one(TensorType::new(*dtype, shape))
        }
        OpKind::Iota { dim } => {
            expect_n(0, tys)?;
            check_shape(dims, &[*dim])?;
            one(TensorType::new(DType::I32, &[*dim]))
        }
        OpKind::Indices { dim, values } => {
            expect_n(0, tys)?;
            check_shape(dims, &[*dim])?;
            if dims.const_size(*dim) != Some(values.len() as u64) {
                return Err(format!("dim `{}` must have constant size {}", dims.name(*dim), values.len()));
            }
            one(TensorType::new(DType::I32, &[*dim]))
        }
        OpKind::Unary(f) => {
            expect_n(1, tys)?;
            let t = &tys[0];
            match f {
                UnaryFn::Not => {
                    if t.dtype != DType::Bool {
                        return Err(format!("`not` takes bool, found {}", t.dtype));
                    }
                }
                UnaryFn::Neg | UnaryFn::Abs => {
                    if t.dtype == DType::Bool {
                        return Err(format!("`{}` takes a number, found bool", unary_name(*f)));
                    }
                }
                _ => expect_float("x", t)?,
            }
            one(t.clone())
        }
        OpKind::Binary(f) => {
            expect_n(2, tys)?;
            let (a, b) = (&tys[0], &tys[1]);
            if a.dtype != b.dtype {
                return Err(format!("operands have different dtypes: {} and {}", a.dtype, b.dtype));
            }
            let shape = union(&[&a.shape, &b.shape]);
            let dtype = match f {
                BinaryFn::Lt | BinaryFn::Le | BinaryFn::Eq => DType::Bool,
                BinaryFn::And | BinaryFn::Or => {
                    if a.dtype != DType::Bool {
                        return Err(format!("`{}` takes bool, found {}", binary_name(*f), a.dtype));
                    }
                    DType::Bool
                }
                BinaryFn::Pow => {
                    expect_float("a", a)?;
                    a.dtype
                }
                _ => {
                    if a.dtype == DType::Bool {
                        return Err(format!("`{}` takes numbers, found bool", binary_name(*f)));
                    }
                    a.dtype
                }
            };
            one(TensorType { dtype, shape })
        }
        OpKind::Select => {
            expect_n(3, tys)?;
            if tys[0].dtype != DType::Bool {
                return Err(format!("`where` condition must be bool, found {}", tys[0].dtype));
            }
            if tys[1].dtype != tys[2].dtype {
                return Err(format!("`where` branches differ in dtype: {} and {}", tys[1].dtype, tys[2].dtype));
            }
            let shape = union(&[&tys[0].shape, &tys[1].shape, &tys[2].shape]);
            one(TensorType { dtype: tys[1].dtype, shape })
        }
        OpKind::Cast(to) => {
            expect_n(1, tys)?;
            one(TensorType::new(*to, &tys[0].shape))
        }
        OpKind::Clamp { lo, hi } => {
            expect_n(1, tys)?;
            if lo.partial_cmp(hi).is_none_or(|o| o == std::cmp::Ordering::Greater) {
                return Err(format!("clamp bounds are reversed or not numbers: lo = {lo}, hi = {hi}"));
            }
            one(tys[0].clone())
        }
        OpKind::Broadcast { shape } => {
            expect_n(1, tys)?;
            check_shape(dims, shape)?;
            if let Some(d) = tys[0].shape.iter().find(|d| !shape.contains(d)) {
                return Err(format!(
                    "cannot broadcast {} to {}: dim `{}` would be dropped",
                    shape_str(dims, &tys[0].shape),
                    shape_str(dims, shape),
                    dims.name(*d)
                ));
            }
            one(TensorType::new(tys[0].dtype, shape))
        }
        OpKind::Permute { shape } => {
            expect_n(1, tys)?;
            check_shape(dims, shape)?;
            let mut a = tys[0].shape.clone();
            let mut b = shape.clone();
            a.sort();
            b.sort();
            if a != b {
                return Err(format!(
                    "{} is not a permutation of {}",
                    shape_str(dims, shape),
                    shape_str(dims, &tys[0].shape)
                ));
            }
            one(TensorType::new(tys[0].dtype, shape))
        }
        OpKind::Reshape { shape } => {
            expect_n(1, tys)?;
            check_shape(dims, shape)?;
            let prod =
                |s: &[DimId]| s.iter().fold(SizeExpr::Const(1), |acc, d| SizeExpr::times(acc, SizeExpr::Dim(*d)));
            if dims.expr_poly(&prod(&tys[0].shape)) != dims.expr_poly(&prod(shape)) {
                return Err(format!(
                    "cannot reshape {} to {}: the sizes differ",
                    shape_str(dims, &tys[0].shape),
                    shape_str(dims, shape)
                ));
            }
            one(TensorType::new(tys[0].dtype, shape))
        }
        OpKind::Einsum { out } => {
            expect_n(2, tys)?;
            check_shape(dims, out)?;
            let (a, b) = (&tys[0], &tys[1]);
            expect_float("a", a)?;
            if a.dtype != b.dtype {
                return Err(format!("operands have different dtypes: {} and {}", a.dtype, b.dtype));
            }
            let all = union(&[&a.shape, &b.shape]);
            if let Some(d) = out.iter().find(|d| !all.contains(d)) {
                return Err(format!("output dim `{}` is in neither operand", dims.name(*d)));
            }
            one(TensorType::new(a.dtype, out))
        }
        OpKind::Reduce { func, dims: rd } => {
            expect_n(1, tys)?;
            let t = &tys[0];
            if let Some(d) = rd.iter().find(|d| !t.shape.contains(d)) {
                return Err(format!(
                    "reduced dim `{}` is not in the operand's shape {}",
                    dims.name(*d),
                    shape_str(dims, &t.shape)
                ));
            }
            if matches!(func, ReduceFn::Mean | ReduceFn::LogSumExp) {
                expect_float("x", t)?;
            }
            let shape: Vec<DimId> = t.shape.iter().copied().filter(|d| !rd.contains(d)).collect();
            one(TensorType::new(t.dtype, &shape))
        }
        OpKind::Cumsum { dim, .. } | OpKind::Softmax { dim } | OpKind::Normalize { dim, .. } => {
            expect_n(1, tys)?;
            let t = &tys[0];
            if !t.shape.contains(dim) {
                return Err(format!(
                    "dim `{}` is not in the operand's shape {}",
                    dims.name(*dim),
                    shape_str(dims, &t.shape)
                ));
            }
            if !matches!(kind, OpKind::Cumsum { .. }) {
                expect_float("x", t)?;
            }
            one(t.clone())
        }
        OpKind::Concat { axis, dim } => {
            if tys.is_empty() {
                return Err("concat needs at least one operand".into());
            }
            let first = &tys[0];
            if *axis >= first.shape.len() {
                return Err(format!("axis {axis} is out of range for {}", shape_str(dims, &first.shape)));
            }
            let mut total = SizeExpr::Const(0);
            for t in tys {
                if t.dtype != first.dtype || t.shape.len() != first.shape.len() {
                    return Err("concat operands differ in dtype or rank".into());
                }
                for (i, (x, y)) in t.shape.iter().zip(&first.shape).enumerate() {
                    if i != *axis && x != y {
                        return Err(format!(
                            "concat operands differ outside axis {axis}: {} and {}",
                            shape_str(dims, &t.shape),
                            shape_str(dims, &first.shape)
                        ));
                    }
                }
                total = SizeExpr::plus(total, SizeExpr::Dim(t.shape[*axis]));
            }
            if dims.expr_poly(&total) != dims.poly(*dim) {
                return Err(format!("result dim `{}` is not the sum of the concatenated dims", dims.name(*dim)));
            }
            let mut shape = first.shape.clone();
            shape[*axis] = *dim;
            check_shape(dims, &shape)?;
            one(TensorType::new(first.dtype, &shape))
        }
        OpKind::Slice { axis, start, dim } => {
            expect_n(1, tys)?;
            let t = &tys[0];
            if *axis >= t.shape.len() {
                return Err(format!("axis {axis} is out of range for {}", shape_str(dims, &t.shape)));
            }
            if let (Some(have), Some(want)) = (dims.const_size(t.shape[*axis]), dims.const_size(*dim)) {
                if start.checked_add(want).is_none_or(|end| end > have) {
                    return Err(format!("slice from {start} of {want} rows exceeds the axis size {have}"));
                }
            }
            let mut shape = t.shape.clone();
            shape[*axis] = *dim;
            check_shape(dims, &shape)?;
            one(TensorType::new(t.dtype, &shape))
        }
        OpKind::Gather { along, into } => {
            expect_n(2, tys)?;
            let (x, idx) = (&tys[0], &tys[1]);
            if !x.shape.contains(along) {
                return Err(format!("gathered dim `{}` is not in x's shape", dims.name(*along)));
            }
            if idx.dtype != DType::I32 || !idx.shape.contains(into) {
                return Err(format!("index must be i32 with dim `{}`", dims.name(*into)));
            }
            if let Some(d) = idx.shape.iter().find(|d| *d != into && (!x.shape.contains(d) || *d == along)) {
                return Err(format!("index dim `{}` is not a dim of x", dims.name(*d)));
            }
            one(TensorType::new(x.dtype, &replace(&x.shape, *along, *into)))
        }
        OpKind::Scatter { along, into } => {
            expect_n(3, tys)?;
            let (base, idx, src) = (&tys[0], &tys[1], &tys[2]);
            if !base.shape.contains(along) {
                return Err(format!("scattered dim `{}` is not in base's shape", dims.name(*along)));
            }
            if idx.dtype != DType::I32 || !idx.shape.contains(into) {
                return Err(format!("index must be i32 with dim `{}`", dims.name(*into)));
            }
            if let Some(d) = idx.shape.iter().find(|d| !src.shape.contains(d)) {
                return Err(format!("index dim `{}` is not a dim of src", dims.name(*d)));
            }
            let want = replace(&base.shape, *along, *into);
            if src.shape != want || src.dtype != base.dtype {
                return Err(format!(
                    "src must be {} {}, found {} {}",
                    base.dtype,
                    shape_str(dims, &want),
                    src.dtype,
                    shape_str(dims, &src.shape)
                ));
            }
            one(base.clone())
        }
        OpKind::TopK { along, into } => {
            expect_n(1, tys)?;
            let x = &tys[0];
            if !x.shape.contains(along) {
                return Err(format!("dim `{}` is not in x's shape", dims.name(*along)));
            }
            if let (Some(k), Some(n)) = (dims.const_size(*into), dims.const_size(*along)) {
                if k > n {
                    return Err(format!("top-k of {k} out of {n}"));
                }
            }
            let shape = replace(&x.shape, *along, *into);
            Ok(vec![TensorType::new(x.dtype, &shape), TensorType::new(DType::I32, &shape)])
        }
        OpKind::CausalConv1d { time, taps, tail, has_tail, .. } => {
            expect_n(if *has_tail { 3 } else { 2 }, tys)?;
            let (x, w) = (&tys[0], &tys[1]);
            let r = x.shape.len();
            if r < 2 || x.shape[r - 2] != *time {
                return Err(format!("x must be [.., {}, C], found {}", dims.name(*time), shape_str(dims, &x.shape)));
            }
            let ch = x.shape[r - 1];
            if w.shape != [ch, *taps] {
                return Err(format!(
                    "weight must be [{}, {}], found {}",
                    dims.name(ch),
                    dims.name(*taps),
                    shape_str(dims, &w.shape)
                ));
            }
            let want_tail = SizeExpr::minus(SizeExpr::Dim(*taps), SizeExpr::Const(1));
            if dims.poly(*tail) != dims.expr_poly(&want_tail) {
                return Err(format!("tail dim `{}` must be taps − 1", dims.name(*tail)));
            }
            let tail_shape = replace(&x.shape, *time, *tail);
            if *has_tail && tys[2].shape != tail_shape {
                return Err(format!(
                    "tail must be {}, found {}",
                    shape_str(dims, &tail_shape),
                    shape_str(dims, &tys[2].shape)
                ));
            }
            expect_float("x", x)?;
            Ok(vec![x.clone(), TensorType::new(x.dtype, &tail_shape)])
        }
        OpKind::Rope { time, dim, theta } => {
            expect_n(2, tys)?;
            let x = &tys[0];
            if !x.shape.contains(time) || !x.shape.contains(dim) {
                return Err(format!(
                    "x {} must have dims `{}` and `{}`",
                    shape_str(dims, &x.shape),
                    dims.name(*time),
                    dims.name(*dim)
                ));
            }
            if dims.const_size(*dim).is_some_and(|n| n % 2 == 1) {
                return Err(format!("rotary dim `{}` must be even", dims.name(*dim)));
            }
            if theta.is_nan() || *theta <= 0.0 {
                return Err(format!("theta must be positive, found {theta}"));
            }
            if tys[1].dtype != DType::I32 || !tys[1].shape.is_empty() {
                return Err("offset must be an i32 scalar".into());
            }
            one(x.clone())
        }
        OpKind::Attention { scale, mask } => {
            expect_n(3, tys)?;
            let (q, k, v) = (&tys[0], &tys[1], &tys[2]);
            expect_rank(dims, "q", q, 4, "[B, Tq, H, Dk]")?;
            expect_rank(dims, "k", k, 4, "[B, Tk, Hkv, Dk]")?;
            expect_rank(dims, "v", v, 4, "[B, Tk, Hkv, Dv]")?;
            expect_float("q", q)?;
            expect_same_size(dims, "batch of q and k", q.shape[0], k.shape[0])?;
            expect_same_size(dims, "head dim of q and k", q.shape[3], k.shape[3])?;
            expect_same_size(dims, "keys of k and v", k.shape[1], v.shape[1])?;
            expect_same_size(dims, "kv heads of k and v", k.shape[2], v.shape[2])?;
            expect_same_size(dims, "batch of k and v", k.shape[0], v.shape[0])?;
            if let (Some(h), Some(hkv)) = (dims.const_size(q.shape[2]), dims.const_size(k.shape[2])) {
                if hkv == 0 || h % hkv != 0 {
                    return Err(format!("query heads ({h}) must be a multiple of kv heads ({hkv})"));
                }
            }
            if !scale.is_finite() {
                return Err(format!("scale must be finite, found {scale}"));
            }
            if mask.window == Some(0) {
                return Err("window must be at least 1".into());
            }
            let o = vec![q.shape[0], q.shape[1], q.shape[2], v.shape[3]];
            check_shape(dims, &o)?;
            Ok(vec![TensorType::new(q.dtype, &o), TensorType::new(DType::F32, &o[..3])])
        }
        OpKind::LinearRecurrence(r) => infer_recurrence(dims, r, tys),
        OpKind::Mix { weights } => {
            if tys.is_empty() || weights.len() != tys.len() {
                return Err(format!("mix has {} weights for {} operands", weights.len(), tys.len()));
            }
            if tys.iter().any(|t| t != &tys[0]) {
                return Err("mixed branches must have identical types".into());
            }
            expect_float("x0", &tys[0])?;
            one(tys[0].clone())
        }
        OpKind::KvAppend { dim } => {
            expect_n(2, tys)?;
            let (c, n) = (&tys[0], &tys[1]);
            if c.shape.len() < 2 || c.shape.len() != n.shape.len() || c.dtype != n.dtype {
                return Err("cache and new rows must have the same dtype and rank ≥ 2".into());
            }
            for i in (0..c.shape.len()).filter(|i| *i != 1) {
                expect_same_size(dims, "cache and new rows", c.shape[i], n.shape[i])?;
            }
            let sum = SizeExpr::plus(SizeExpr::Dim(c.shape[1]), SizeExpr::Dim(n.shape[1]));
            if dims.expr_poly(&sum) != dims.poly(*dim) {
                return Err(format!("result dim `{}` must be the cache length plus the new rows", dims.name(*dim)));
            }
            let mut shape = c.shape.clone();
            shape[1] = *dim;
            check_shape(dims, &shape)?;
            one(TensorType::new(c.dtype, &shape))
        }
        OpKind::WindowRetain { keep, dim } | OpKind::SinkWindowRetain { window: keep, dim, .. } => {
            expect_n(1, tys)?;
            let c = &tys[0];
            if c.shape.len() < 2 {
                return Err("cache must have rank ≥ 2 (rows along axis 1)".into());
            }
            let total = match kind {
                OpKind::SinkWindowRetain { sinks, window, .. } => *sinks as u64 + *window as u64,
                _ => *keep as u64,
            };
            let want = SizeExpr::min_of(SizeExpr::Dim(c.shape[1]), SizeExpr::Const(total));
            if dims.expr_poly(&want) != dims.poly(*dim) {
                return Err(format!(
                    "result dim `{}` must be min({}, {total})",
                    dims.name(*dim),
                    dims.name(c.shape[1])
                ));
            }
            let mut shape = c.shape.clone();
            shape[1] = *dim;
            check_shape(dims, &shape)?;
            one(TensorType::new(c.dtype, &shape))
        }
        OpKind::Quantize { bits, groups, group } => {
            expect_n(1, tys)?;
            let x = &tys[0];
            expect_float("x", x)?;
            let Some((last, rest)) = x.shape.split_last() else {
                return Err("x must have at least one dim".into());
            };
            let prod = SizeExpr::times(SizeExpr::Dim(*groups), SizeExpr::Dim(*group));
            if dims.expr_poly(&prod) != dims.poly(*last) {
                return Err(format!(
                    "last dim `{}` must equal groups × group size (`{}` × `{}`)",
                    dims.name(*last),
                    dims.name(*groups),
                    dims.name(*group)
                ));
            }
            let code_ty = match bits {
                8 => DType::I8,
                4 => DType::I4,
                _ => return Err(format!("quantization to {bits} bits is not supported (4 or 8)")),
            };
            let mut codes = rest.to_vec();
            codes.extend([*groups, *group]);
            check_shape(dims, &codes)?;
            let scales = &codes[..codes.len() - 1];
            Ok(vec![TensorType::new(code_ty, &codes), TensorType::new(DType::F32, scales)])
        }
        OpKind::Dequantize => {
            expect_n(2, tys)?;
            let (c, s) = (&tys[0], &tys[1]);
            if !c.dtype.is_int() || c.shape.is_empty() || s.shape != c.shape[..c.shape.len() - 1] {
                return Err(format!(
                    "codes must be integers [.., G, g] and scales [.., G]; found {} {} and {}",
                    c.dtype,
                    shape_str(dims, &c.shape),
                    shape_str(dims, &s.shape)
                ));
            }
            one(TensorType::new(DType::F32, &c.shape))
        }
    }
}

fn infer_recurrence(dims: &DimTable, r: &Recurrence, tys: &[TensorType]) -> Res<Vec<TensorType>> {
    let roles = OpKind::LinearRecurrence(*r).operand_roles(tys.len());
    expect_n(roles.len(), tys)?;
    let (q, k, v) = (&tys[0], &tys[1], &tys[2]);
    expect_rank(dims, "q", q, 4, "[B, T, H, Dk]")?;
    expect_rank(dims, "k", k, 4, "[B, T, H, Dk]")?;
    expect_rank(dims, "v", v, 4, "[B, T, H, Dv]")?;
    for (role, t) in [("q", q), ("k", k), ("v", v)] {
        expect_float(role, t)?;
    }
    let (b, t, h, dk, dv) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3], v.shape[3]);
    for i in 0..4 {
        expect_same_size(dims, "q and k", q.shape[i], k.shape[i])?;
    }
    for i in 0..3 {
        expect_same_size(dims, "q and v", q.shape[i], v.shape[i])?;
    }
    if !r.scale.is_finite() || !r.eps.is_finite() || r.eps < 0.0 {
        return Err(format!("scale and eps must be finite (eps ≥ 0), found {} and {}", r.scale, r.eps));
    }
    if r.normalize && r.transition != Transition::Identity {
        return Err("the linear-attention normalizer applies to the identity transition only".into());
    }
    let expect = |role: &str, want: &[DimId]| -> Res<()> {
        let i = roles.iter().position(|x| x == role).ok_or_else(|| format!("missing operand `{role}`"))?;
        let have = &tys[i];
        let same = have.shape.len() == want.len() && have.shape.iter().zip(want).all(|(a, b)| dims.same_size(*a, *b));
        if !same {
            return Err(format!(
                "operand `{role}` must be {}, found {}",
                shape_str(dims, want),
                shape_str(dims, &have.shape)
            ));
        }
        expect_float(role, have)
    };
    match r.transition {
        Transition::Identity => {}
        Transition::ScalarDecay => expect("gate", &[b, t, h])?,
        Transition::KeyDecay => expect("gate", &[b, t, h, dk])?,
        Transition::Delta => expect("beta", &[b, t, h])?,
        Transition::GatedDelta => {
            expect("gate", &[b, t, h])?;
            expect("beta", &[b, t, h])?;
        }
        Transition::Mlstm => {
            expect("igate", &[b, t, h])?;
            expect("fgate", &[b, t, h])?;
        }
    }
    if r.has_initial {
        expect("initial_state", &[b, h, dk, dv])?;
        if r.transition == Transition::Mlstm {
            expect("initial_n", &[b, h, dk])?;
            expect("initial_m", &[b, h])?;
        } else if r.normalize {
            expect("initial_z", &[b, h, dk])?;
        }
    }
    let mut out = vec![TensorType::new(v.dtype, &[b, t, h, dv]), TensorType::new(DType::F32, &[b, h, dk, dv])];
    if r.transition == Transition::Mlstm {
        out.push(TensorType::new(DType::F32, &[b, h, dk]));
        out.push(TensorType::new(DType::F32, &[b, h]));
    } else if r.normalize {
        out.push(TensorType::new(DType::F32, &[b, h, dk]));
    }
    Ok(out)
}

/// Checks a whole graph: names, dims, operand order, every op's types, outputs.
pub fn verify(g: &Graph) -> Result<(), IrError> {
    let err = |msg: String| Err(IrError::Invalid(format!("graph `{}`: {msg}", g.name)));
    for (i, (_, d)) in g.dims.iter().enumerate() {
        if !is_ident(&d.name) {
            return err(format!("dim name `{}` is not an identifier", d.name));
        }
        if let Some(e) = &d.size {
            let mut refs = Vec::new();
            e.refs(&mut refs);
            if let Some(r) = refs.iter().find(|r| r.index() >= i) {
                return err(format!("dim `{}` refers to a later or unknown {r}", d.name));
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    for v in &g.values {
        if !seen.insert(v.name.as_str()) {
            return err(format!("value `%{}` is defined twice", v.name));
        }
    }
    for (oi, op) in g.ops.iter().enumerate() {
        let name = op.results.first().map(|r| g.value(*r).name.clone()).unwrap_or_default();
        let at = |msg: String| IrError::Op { op: op.kind.mnemonic(), value: name.clone(), msg };
        for v in &op.operands {
            let Some(val) = g.values.get(v.index()) else {
                return Err(at(format!("operand {v:?} does not exist")));
            };
            if val.op.index() >= oi {
                return Err(at(format!("operand `%{}` is used before it is defined", val.name)));
            }
        }
        let tys: Vec<TensorType> = op.operands.iter().map(|v| g.ty(*v).clone()).collect();
        let want = infer(&g.dims, &op.kind, &tys).map_err(at)?;
        if want.len() != op.results.len() {
            return Err(at(format!("expected {} results, found {}", want.len(), op.results.len())));
        }
        for (i, (r, t)) in op.results.iter().zip(&want).enumerate() {
            let val = g.values.get(r.index()).ok_or_else(|| at(format!("result {r:?} does not exist")))?;
            if &val.ty != t || val.op.index() != oi || val.index as usize != i {
                return Err(at(format!(
                    "result `%{}` has type {} {}, inferred {} {}",
                    val.name,
                    val.ty.dtype,
                    g.dims.fmt_shape(&val.ty.shape),
                    t.dtype,
                    g.dims.fmt_shape(&t.shape)
                )));
            }
        }
    }
    let mut outs = std::collections::HashSet::new();
    for (n, v) in &g.outputs {
        if !outs.insert(n.as_str()) {
            return err(format!("output `{n}` is declared twice"));
        }
        if v.index() >= g.values.len() {
            return err(format!("output `{n}` refers to a value that does not exist"));
        }
    }
    Ok(())
}
