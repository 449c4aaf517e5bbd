//! The text form: canonical printing, parsing, round trips, error places, and
//! robustness against arbitrary input.

use mixc_ir::dims::{DimId, SizeExpr};
use mixc_ir::dtype::DType;
use mixc_ir::graph::{Graph, TensorType, ValueId};
use mixc_ir::ops::*;
use mixc_ir::text::{parse, print, ParseError};
use proptest::prelude::*;

// ----- random graphs through the builder -----

/// Draws choices from proptest-made entropy; zeros once it runs out, so a
/// shrunk vector still builds a (smaller) graph.
struct Draw<'a> {
    data: &'a [u32],
    i: usize,
}

impl Draw<'_> {
    fn next(&mut self) -> u32 {
        let v = self.data.get(self.i).copied().unwrap_or(0);
        self.i += 1;
        v
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            self.next() as usize % n
        }
    }
    fn chance(&mut self, percent: u32) -> bool {
        self.next() % 100 < percent
    }
    fn pick<T: Clone>(&mut self, xs: &[T]) -> Option<T> {
        if xs.is_empty() {
            return None;
        }
        let i = self.below(xs.len());
        Some(xs[i].clone())
    }
    fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = self.below(i + 1);
            xs.swap(i, j);
        }
    }
    fn subset<T: Clone>(&mut self, xs: &[T]) -> Vec<T> {
        xs.iter().filter(|_| self.chance(50)).cloned().collect()
    }
}

const FLOATS: [f64; 14] = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.0625,
    0.1,
    -3.5,
    1e-6,
    1e300,
    -2.5e-308,
    5e-324,
    f64::MAX,
    f64::INFINITY,
    f64::NEG_INFINITY,
];

const ODD_DIM_NAMES: [&str; 12] =
    ["min", "inf", "NaN", "dim", "out", "graph", "true", "none", "input", "_x", "x_1", "Z9"];

const ODD_VALUE_NAMES: [&str; 14] = [
    "x",
    "out",
    "dim",
    "input",
    "min",
    "a b",
    "",
    "é",
    "quo\"te",
    "back\\slash",
    "new\nline",
    "tab\t",
    "1abc",
    "\u{7}bell",
];

struct Gen<'a> {
    d: Draw<'a>,
    g: Graph,
    fresh: u32,
}

impl Gen<'_> {
    fn fresh_name(&mut self, stem: &str) -> String {
        self.fresh += 1;
        format!("{stem}{}", self.fresh)
    }

    fn all_dims(&self) -> Vec<DimId> {
        self.g.dims.iter().map(|(d, _)| d).collect()
    }

    fn dim_by(&self, name: &str) -> DimId {
        self.g.dims.lookup(name).expect("scaffold dim")
    }

    fn fresh_const(&mut self, size: u64) -> Option<DimId> {
        let n = self.fresh_name("N");
        self.g.dim_const(&n, size).ok()
    }

    /// A new dim of constant size from 1 to `max`.
    fn fresh_small(&mut self, max: usize) -> Option<DimId> {
        let size = 1 + self.d.below(max) as u64;
        self.fresh_const(size)
    }

    fn fresh_expr(&mut self, e: SizeExpr) -> Option<DimId> {
        let n = self.fresh_name("E");
        self.g.dim_expr(&n, e).ok()
    }

    fn random_expr(&mut self, depth: u32) -> SizeExpr {
        let dims = self.all_dims();
        if depth == 0 || self.d.chance(40) {
            return match self.d.pick(&dims) {
                Some(d) if self.d.chance(70) => SizeExpr::Dim(d),
                _ => SizeExpr::Const(self.d.below(12) as u64),
            };
        }
        let a = self.random_expr(depth - 1);
        let b = self.random_expr(depth - 1);
        match self.d.below(4) {
            0 => SizeExpr::plus(a, b),
            1 => SizeExpr::minus(a, b),
            2 => SizeExpr::times(a, b),
            _ => SizeExpr::min_of(a, b),
        }
    }

    fn shape_from(&mut self, dims: &[DimId]) -> Vec<DimId> {
        let mut s = self.d.subset(dims);
        self.d.shuffle(&mut s);
        s
    }

    fn values_where(&self, f: impl Fn(&TensorType) -> bool) -> Vec<ValueId> {
        (0..self.g.values.len() as u32).map(ValueId).filter(|v| f(self.g.ty(*v))).collect()
    }

    fn pick_value(&mut self, f: impl Fn(&TensorType) -> bool) -> Option<ValueId> {
        let vs = self.values_where(f);
        self.d.pick(&vs)
    }

    fn float_dtype(&mut self) -> DType {
        let floats = [DType::F32, DType::F32, DType::F16, DType::BF16, DType::F64];
        self.d.pick(&floats).unwrap_or(DType::F32)
    }

    fn input(&mut self, dtype: DType, shape: &[DimId]) -> Option<ValueId> {
        let name = self.fresh_name("in");
        let optional = self.d.chance(20);
        self.g.input_opt(&name, dtype, shape, optional).ok()
    }

    /// An existing value of exactly this shape (and a float dtype) or a new input.
    fn want(&mut self, shape: &[DimId]) -> Option<ValueId> {
        if self.d.chance(50) {
            if let Some(v) = self.pick_value(|t| t.shape == shape && t.dtype.is_float()) {
                return Some(v);
            }
        }
        let dt = self.float_dtype();
        self.input(dt, shape)
    }

    fn add(&mut self, kind: OpKind, operands: &[ValueId]) -> Option<Vec<ValueId>> {
        let names: Vec<String> =
            if self.d.chance(30) { kind.result_names().iter().map(|_| self.fresh_name("r")).collect() } else { vec![] };
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let rs = self.g.add(kind, operands, &refs).ok()?;
        if self.d.chance(10) {
            if let (Some(r), Some(n)) = (rs.first(), self.d.pick(&ODD_VALUE_NAMES)) {
                self.g.named(*r, n);
            }
        }
        Some(rs)
    }

    fn scaffold(&mut self) -> Option<()> {
        let b = self.g.dim("B").ok()?;
        let t = self.g.dim("T").ok()?;
        self.g.dim("S").ok()?;
        let h = self.d.pick(&[1u64, 2, 4])?;
        let hd = self.g.dim_const("H", h).ok()?;
        self.g.dim_const("Hkv", if h % 2 == 0 { h / 2 } else { h }).ok()?;
        let dk = self.g.dim_const("Dk", self.d.pick(&[2u64, 4, 8])?).ok()?;
        self.g.dim_const("Dv", self.d.pick(&[2u64, 3, 4])?).ok()?;
        self.g.dim_expr("HD", SizeExpr::times(SizeExpr::Dim(hd), SizeExpr::Dim(dk))).ok()?;
        let k = self.g.dim_const("K", self.d.pick(&[2u64, 3, 4])?).ok()?;
        self.g.dim_expr("Km1", SizeExpr::minus(SizeExpr::Dim(k), SizeExpr::Const(1))).ok()?;
        let s = self.dim_by("S");
        self.g.dim_expr("ST", SizeExpr::plus(SizeExpr::Dim(s), SizeExpr::Dim(t))).ok()?;
        for _ in 0..self.d.below(5) {
            let name = match self.d.pick(&ODD_DIM_NAMES) {
                Some(n) if self.d.chance(50) => n.to_string(),
                _ => self.fresh_name("X"),
            };
            let _ = match self.d.below(3) {
                0 => self.g.dim(&name),
                1 => self.g.dim_const(&name, 1 + self.d.below(64) as u64),
                _ => {
                    let e = self.random_expr(2);
                    self.g.dim_expr(&name, e)
                }
            };
        }
        let dv = self.dim_by("Dv");
        let dt = self.float_dtype();
        self.g.input("q", dt, &[b, t, hd, dk]).ok()?;
        self.g.input("k", dt, &[b, t, hd, dk]).ok()?;
        self.g.input_opt("v", dt, &[b, t, hd, dv], self.d.chance(30)).ok()?;
        for _ in 0..self.d.below(4) {
            let dims = self.all_dims();
            let shape = self.shape_from(&dims);
            let dt = self.d.pick(&DType::ALL)?;
            self.input(dt, &shape);
        }
        Some(())
    }

    fn random_op(&mut self) -> Option<()> {
        let is_float = |t: &TensorType| t.dtype.is_float();
        let dims = self.all_dims();
        match self.d.below(32) {
            0 => {
                let value = self.d.pick(&FLOATS)?;
                let dtype = self.d.pick(&DType::ALL)?;
                let shape = if self.d.chance(50) { vec![] } else { self.shape_from(&dims) };
                self.add(OpKind::Const { value, dtype, shape }, &[])?;
            }
            1 => {
                let dim = self.d.pick(&dims)?;
                self.add(OpKind::Iota { dim }, &[])?;
            }
            2 => {
                let n = 1 + self.d.below(4);
                let values: Vec<u32> = (0..n).map(|_| self.d.next() % 8).collect();
                let dim = self.fresh_const(n as u64)?;
                self.add(OpKind::Indices { dim, values }, &[])?;
            }
            3 => {
                let f = self.d.pick(&UNARY_FNS)?;
                let x = match f {
                    UnaryFn::Not => self.pick_value(|t| t.dtype == DType::Bool)?,
                    UnaryFn::Neg | UnaryFn::Abs => self.pick_value(|t| t.dtype != DType::Bool)?,
                    _ => self.pick_value(is_float)?,
                };
                self.add(OpKind::Unary(f), &[x])?;
            }
            4 => {
                let f = self.d.pick(&BINARY_FNS)?;
                let a = match f {
                    BinaryFn::And | BinaryFn::Or => self.pick_value(|t| t.dtype == DType::Bool)?,
                    BinaryFn::Lt | BinaryFn::Le | BinaryFn::Eq => self.pick_value(|_| true)?,
                    BinaryFn::Pow => self.pick_value(is_float)?,
                    _ => self.pick_value(|t| t.dtype != DType::Bool)?,
                };
                let dt = self.g.ty(a).dtype;
                let b = self.pick_value(|t| t.dtype == dt)?;
                self.add(OpKind::Binary(f), &[a, b])?;
            }
            5 => {
                let cond = match self.pick_value(|t| t.dtype == DType::Bool) {
                    Some(c) => c,
                    None => {
                        let a = self.pick_value(|t| t.dtype != DType::Bool)?;
                        self.add(OpKind::Binary(BinaryFn::Lt), &[a, a])?[0]
                    }
                };
                let a = self.pick_value(|_| true)?;
                let dt = self.g.ty(a).dtype;
                let b = self.pick_value(|t| t.dtype == dt)?;
                self.add(OpKind::Select, &[cond, a, b])?;
            }
            6 => {
                let to = self.d.pick(&DType::ALL)?;
                let x = self.pick_value(|_| true)?;
                self.add(OpKind::Cast(to), &[x])?;
            }
            7 => {
                let (a, b) = (self.d.pick(&FLOATS)?, self.d.pick(&FLOATS)?);
                let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
                let x = self.pick_value(|_| true)?;
                self.add(OpKind::Clamp { lo, hi }, &[x])?;
            }
            8 => {
                let x = self.pick_value(|_| true)?;
                let mut shape = self.g.ty(x).shape.clone();
                for d in self.d.subset(&dims) {
                    if !shape.contains(&d) {
                        let at = self.d.below(shape.len() + 1);
                        shape.insert(at, d);
                    }
                }
                self.add(OpKind::Broadcast { shape }, &[x])?;
            }
            9 => {
                let x = self.pick_value(|_| true)?;
                let mut shape = self.g.ty(x).shape.clone();
                self.d.shuffle(&mut shape);
                self.add(OpKind::Permute { shape }, &[x])?;
            }
            10 => {
                let x = self.pick_value(|_| true)?;
                let mut shape = self.g.ty(x).shape.clone();
                let (h, dk, hd) = (self.dim_by("H"), self.dim_by("Dk"), self.dim_by("HD"));
                if let Some(i) = shape.windows(2).position(|w| w == [h, dk]) {
                    shape.splice(i..i + 2, [hd]);
                } else if let Some(i) = shape.iter().position(|d| *d == hd) {
                    shape.splice(i..i + 1, [h, dk]);
                } else {
                    self.d.shuffle(&mut shape);
                }
                self.add(OpKind::Reshape { shape }, &[x])?;
            }
            11 => {
                let a = self.pick_value(is_float)?;
                let dt = self.g.ty(a).dtype;
                let b = self.pick_value(|t| t.dtype == dt)?;
                let mut all = self.g.ty(a).shape.clone();
                for d in &self.g.ty(b).shape {
                    if !all.contains(d) {
                        all.push(*d);
                    }
                }
                let out = self.shape_from(&all);
                self.add(OpKind::Einsum { out }, &[a, b])?;
            }
            12 => {
                let func = self.d.pick(&REDUCE_FNS)?;
                let x = self.pick_value(|_| true)?;
                let shape = self.g.ty(x).shape.clone();
                let rd = self.shape_from(&shape);
                self.add(OpKind::Reduce { func, dims: rd }, &[x])?;
            }
            13..=15 => {
                let pick = self.d.below(3);
                let x = self.pick_value(|t| !t.shape.is_empty() && (pick == 0 || t.dtype.is_float()))?;
                let shape = self.g.ty(x).shape.clone();
                let dim = self.d.pick(&shape)?;
                let kind = match pick {
                    0 => OpKind::Cumsum { dim, exclusive: self.d.chance(50), reverse: self.d.chance(50) },
                    1 => OpKind::Softmax { dim },
                    _ => OpKind::Normalize {
                        kind: if self.d.chance(50) { NormKind::L2 } else { NormKind::Rms },
                        dim,
                        eps: self.d.pick(&[1e-6, 1e-5, 0.0])?,
                    },
                };
                self.add(kind, &[x])?;
            }
            16 => {
                let x = self.pick_value(|t| !t.shape.is_empty())?;
                let ty = self.g.ty(x).clone();
                let n = 1 + self.d.below(3);
                let xs: Vec<ValueId> = (0..n).map(|_| self.pick_value(|t| *t == ty).unwrap_or(x)).collect();
                let axis = self.d.below(ty.shape.len());
                let total = (1..n)
                    .fold(SizeExpr::Dim(ty.shape[axis]), |acc, _| SizeExpr::plus(acc, SizeExpr::Dim(ty.shape[axis])));
                let dim = self.fresh_expr(total)?;
                self.add(OpKind::Concat { axis, dim }, &xs)?;
            }
            17 => {
                let x = self.pick_value(|t| !t.shape.is_empty())?;
                let rank = self.g.ty(x).shape.len();
                let axis = self.d.below(rank);
                let start = self.d.below(3) as u64;
                let dim = match self.d.chance(50) {
                    true => self.d.pick(&dims)?,
                    false => self.fresh_small(3)?,
                };
                self.add(OpKind::Slice { axis, start, dim }, &[x])?;
            }
            18 | 19 => {
                let base = self.pick_value(|t| !t.shape.is_empty())?;
                let shape = self.g.ty(base).shape.clone();
                let along = self.d.pick(&shape)?;
                let into = self.fresh_small(3)?;
                let rest: Vec<DimId> = shape.iter().copied().filter(|d| *d != along).collect();
                let mut idx_shape = self.d.subset(&rest);
                idx_shape.insert(self.d.below(idx_shape.len() + 1), into);
                let idx = self.input(DType::I32, &idx_shape)?;
                let kind = OpKind::Gather { along, into };
                let src = self.add(kind, &[base, idx])?[0];
                if self.d.chance(50) {
                    self.add(OpKind::Scatter { along, into }, &[base, idx, src])?;
                }
            }
            20 => {
                let x = self.pick_value(|t| !t.shape.is_empty())?;
                let along = self.d.pick(&self.g.ty(x).shape.clone())?;
                let into = match self.d.chance(30) {
                    true => along,
                    false => self.fresh_const(1)?,
                };
                self.add(OpKind::TopK { along, into }, &[x])?;
            }
            21 => {
                let x = self.pick_value(|t| t.shape.len() >= 2 && t.dtype.is_float())?;
                let xs = self.g.ty(x).shape.clone();
                let (time, ch) = (xs[xs.len() - 2], xs[xs.len() - 1]);
                let (taps, tail) = if self.d.chance(60) {
                    (self.dim_by("K"), self.dim_by("Km1"))
                } else {
                    let taps = self.fresh_small(4)?;
                    let tail = self.fresh_expr(SizeExpr::minus(SizeExpr::Dim(taps), SizeExpr::Const(1)))?;
                    (taps, tail)
                };
                let weight = self.want(&[ch, taps])?;
                let has_tail = self.d.chance(50);
                let mut ops = vec![x, weight];
                if has_tail {
                    let ts: Vec<DimId> = xs.iter().map(|d| if *d == time { tail } else { *d }).collect();
                    ops.push(self.want(&ts)?);
                }
                let silu = self.d.chance(50);
                self.add(OpKind::CausalConv1d { time, taps, tail, has_tail, silu }, &ops)?;
            }
            22 => {
                let x = self.pick_value(|t| t.shape.len() >= 2 && t.dtype.is_float())?;
                let mut xs = self.g.ty(x).shape.clone();
                self.d.shuffle(&mut xs);
                let offset = if self.d.chance(50) {
                    self.input(DType::I32, &[])?
                } else {
                    let kind = OpKind::Const { value: 3.0, dtype: DType::I32, shape: vec![] };
                    self.add(kind, &[])?[0]
                };
                let theta = self.d.pick(&[10000.0, 500000.0, 1.5])?;
                self.add(OpKind::Rope { time: xs[0], dim: xs[1], theta }, &[x, offset])?;
            }
            23 => {
                let q = self.pick_value(|t| t.shape.len() == 4 && t.dtype.is_float())?;
                let qs = self.g.ty(q).shape.clone();
                let tk = self.d.pick(&[qs[1], self.dim_by("S"), self.dim_by("ST")])?;
                let hkv = self.d.pick(&[qs[2], self.dim_by("Hkv")])?;
                let dv = self.d.pick(&[qs[3], self.dim_by("Dv")])?;
                let k = self.want(&[qs[0], tk, hkv, qs[3]])?;
                let v = self.want(&[qs[0], tk, hkv, dv])?;
                let mask = Mask {
                    causal: self.d.chance(50),
                    window: if self.d.chance(50) { None } else { Some(1 + self.d.below(32) as u32) },
                    sinks: self.d.below(5) as u32,
                };
                let scale = self.d.pick(&[0.125, 1.0, -0.0, 0.35355339059327373])?;
                self.add(OpKind::Attention { scale, mask }, &[q, k, v])?;
            }
            24 => {
                let q = self.pick_value(|t| t.shape.len() == 4 && t.dtype.is_float())?;
                let qs = self.g.ty(q).shape.clone();
                let (b, t, h, dk) = (qs[0], qs[1], qs[2], qs[3]);
                let dv = self.d.pick(&[dk, self.dim_by("Dv")])?;
                let transition = self.d.pick(&Transition::ALL)?;
                let r = Recurrence {
                    transition,
                    scale: self.d.pick(&[1.0, 0.25, 0.1])?,
                    normalize: transition == Transition::Identity && self.d.chance(50),
                    eps: self.d.pick(&[0.0, 1e-6])?,
                    has_initial: self.d.chance(50),
                };
                let kind = OpKind::LinearRecurrence(r);
                let mut ops = vec![q];
                for role in kind.operand_roles(0).iter().skip(1) {
                    let shape: Vec<DimId> = match role.as_str() {
                        "k" => vec![b, t, h, dk],
                        "v" => vec![b, t, h, dv],
                        "gate" if transition == Transition::KeyDecay => vec![b, t, h, dk],
                        "gate" | "beta" | "igate" | "fgate" => vec![b, t, h],
                        "initial_state" => vec![b, h, dk, dv],
                        "initial_n" | "initial_z" => vec![b, h, dk],
                        _ => vec![b, h],
                    };
                    ops.push(self.want(&shape)?);
                }
                self.add(kind, &ops)?;
            }
            25 => {
                let x = self.pick_value(is_float)?;
                let ty = self.g.ty(x).clone();
                let n = 1 + self.d.below(3);
                let xs: Vec<ValueId> = (0..n).map(|_| self.pick_value(|t| *t == ty).unwrap_or(x)).collect();
                let weights: Vec<f64> = (0..n).map(|_| self.d.pick(&FLOATS).unwrap_or(0.5)).collect();
                self.add(OpKind::Mix { weights }, &xs)?;
            }
            26 => {
                let new = self.pick_value(|t| t.shape.len() >= 2)?;
                let ns = self.g.ty(new).shape.clone();
                let dt = self.g.ty(new).dtype;
                let s = self.dim_by("S");
                let len = if ns.contains(&s) { self.fresh_const(2)? } else { s };
                let mut cs = ns.clone();
                cs[1] = len;
                let cache = self.input(dt, &cs)?;
                let dim = self.fresh_expr(SizeExpr::plus(SizeExpr::Dim(len), SizeExpr::Dim(ns[1])))?;
                self.add(OpKind::KvAppend { dim }, &[cache, new])?;
            }
            27 | 28 => {
                let c = self.pick_value(|t| t.shape.len() >= 2)?;
                let rows = self.g.ty(c).shape[1];
                let (sinks, window) = (self.d.below(4) as u32, 1 + self.d.below(16) as u32);
                let sink = self.d.chance(50);
                let total = if sink { sinks + window } else { window };
                let e = SizeExpr::min_of(SizeExpr::Dim(rows), SizeExpr::Const(total as u64));
                let e = if self.d.chance(50) {
                    e
                } else {
                    SizeExpr::min_of(SizeExpr::Const(total as u64), SizeExpr::Dim(rows))
                };
                let dim = self.fresh_expr(e)?;
                let kind = if sink {
                    OpKind::SinkWindowRetain { sinks, window, dim }
                } else {
                    OpKind::WindowRetain { keep: window, dim }
                };
                self.add(kind, &[c])?;
            }
            29 => {
                let x = self.pick_value(|t| !t.shape.is_empty() && t.dtype.is_float())?;
                let last = *self.g.ty(x).shape.last()?;
                let bits = self.d.pick(&[4u32, 8, 8])?;
                let (groups, group) = match self.g.dims.const_size(last) {
                    Some(n) if n > 0 => {
                        let divisors: Vec<u64> = (1..=n).filter(|k| n % k == 0).collect();
                        let k = self.d.pick(&divisors)?;
                        (self.fresh_const(k)?, self.fresh_const(n / k)?)
                    }
                    _ if self.d.chance(50) => (last, self.fresh_const(1)?),
                    _ => (self.fresh_const(1)?, last),
                };
                let rs = self.add(OpKind::Quantize { bits, groups, group }, &[x])?;
                if self.d.chance(50) {
                    self.add(OpKind::Dequantize, &rs)?;
                }
            }
            _ => {
                let codes = self.pick_value(|t| t.dtype.is_int() && !t.shape.is_empty())?;
                let cs = self.g.ty(codes).shape.clone();
                let scales = self.want(&cs[..cs.len() - 1])?;
                self.add(OpKind::Dequantize, &[codes, scales])?;
            }
        }
        Some(())
    }
}

/// A random well-formed graph, built only through the builder API.
fn random_graph(data: &[u32]) -> Graph {
    let mut d = Draw { data, i: 0 };
    let names = ["gla", "g", "graph", "my graph", "", "mixer_2", "quo\"te"];
    let name = d.pick(&names).unwrap_or("g");
    let mut gen = Gen { d, g: Graph::new(name), fresh: 0 };
    gen.scaffold();
    let n_ops = gen.d.below(40);
    for _ in 0..n_ops {
        gen.random_op();
    }
    let outs = ["o", "final_state", "out", "weird name", "é", "x", "dim"];
    for _ in 0..gen.d.below(5) {
        let n = gen.g.values.len();
        if n == 0 {
            break;
        }
        let v = ValueId(gen.d.below(n) as u32);
        let name = match gen.d.pick(&outs) {
            Some(o) if gen.d.chance(50) => o.to_string(),
            _ => gen.fresh_name("y"),
        };
        let _ = gen.g.output_as(&name, v);
    }
    gen.g
}

fn graphs() -> impl Strategy<Value = Graph> {
    prop::collection::vec(any::<u32>(), 0..600).prop_map(|data| random_graph(&data))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn parse_print_round_trips(g in graphs()) {
        prop_assert!(mixc_ir::verify::verify(&g).is_ok(), "builder made a bad graph");
        let text = print(&g);
        let back = parse(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(&back, &g, "{}", text);
        // `==` on f64 equates 0.0 and -0.0; the text does not.
        prop_assert_eq!(print(&back), text);
    }

    #[test]
    fn printing_is_deterministic(g in graphs()) {
        let text = print(&g);
        prop_assert_eq!(print(&g), text.clone());
        prop_assert_eq!(print(&g.clone()), text);
    }

    #[test]
    fn truncated_text_is_rejected(g in graphs(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 1..40)) {
        let text = print(&g);
        let chars: Vec<char> = text.chars().collect();
        for cut in cuts {
            let prefix: String = chars[..cut.index(chars.len() + 1)].iter().collect();
            let r = parse(&prefix);
            if prefix.trim_end() == text.trim_end() {
                prop_assert!(r.is_ok());
            } else {
                prop_assert!(r.is_err(), "a truncation parsed: {prefix:?}");
            }
        }
    }

    #[test]
    fn edited_text_never_panics(
        g in graphs(),
        edits in prop::collection::vec(
            (any::<prop::sample::Index>(), 0u8..3, any::<bool>(), any::<char>()),
            1..8,
        ),
    ) {
        let mut chars: Vec<char> = print(&g).chars().collect();
        let pool: Vec<char> = "%[](){},=:*+-?\"\\ \n0123456789.eABmin_xéS".chars().collect();
        for (at, how, any_char, c) in edits {
            let c = if any_char { c } else { pool[(c as usize) % pool.len()] };
            let i = at.index(chars.len() + 1);
            match how {
                0 if i < chars.len() => { chars.remove(i); }
                1 if i < chars.len() => chars[i] = c,
                _ => chars.insert(i, c),
            }
        }
        let text: String = chars.into_iter().collect();
        if let Ok(g2) = parse(&text) {
            // Whatever parses is well formed and prints canonically.
            let again = print(&g2);
            prop_assert_eq!(parse(&again).ok(), Some(g2));
        }
    }

    #[test]
    fn random_strings_are_rejected(s in any::<String>()) {
        prop_assert!(parse(&s).is_err());
    }

    #[test]
    fn random_bytes_are_rejected(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let s = String::from_utf8_lossy(&bytes);
        prop_assert!(parse(&s).is_err());
    }

    #[test]
    fn random_token_soup_is_rejected(
        words in prop::collection::vec(prop::sample::select(vec![
            "graph", "g", "{", "}", "dim", "B", "T", "=", "4", "min", "(", ")", ",", "*", "+", "-",
            "%x", "%y", "input", "input?", "q", ":", "f32", "[", "]", "out", "const", "value",
            "0.5", "exp", "mix", "weights", "\"s\"", "1e400", "99999999999999999999", "\n",
        ]), 0..60)
    ) {
        let s = words.join(" ");
        let _ = parse(&s);
        let with_header = format!("graph g {{ dim B dim T {s}");
        let _ = parse(&with_header);
    }
}

// ----- the canonical form -----

const GLA: &str = r#"graph gla {
  dim B
  dim T
  dim S
  dim H = 4
  dim Dk = 16
  dim Dv = 8
  dim HV = H * Dv
  dim Kc = min(S, 63)
  dim W = S + T - 1

  %q = input q : f32[B, T, H, Dk]
  %k = input k : f32[B, T, H, Dk]
  %v = input v : f32[B, T, H, Dv]
  %graw = input g : f32[B, T, H, Dk]
  %s0 = input? initial_state : f32[B, H, Dk, Dv]
  %c = const[value = 0.0625] : f32[]
  %g = logsigmoid(%graw) : f32[B, T, H, Dk]
  %gs = mul(%g, %c) : f32[B, T, H, Dk]
  %o, %final_state = linear_recurrence[transition = key_decay, scale = 0.25, normalize = false, eps = 0.0, has_initial = true](q = %q, k = %k, v = %v, gate = %gs, initial_state = %s0) : f32[B, T, H, Dv], f32[B, H, Dk, Dv]
  %o2 = reshape[shape = [B, T, HV]](%o) : f32[B, T, HV]

  out o = %o
  out final_state = %final_state
  out "flat o" = %o2
}
"#;

fn gla_by_builder() -> Graph {
    let mut g = Graph::new("gla");
    let b = g.dim("B").unwrap();
    let t = g.dim("T").unwrap();
    let s = g.dim("S").unwrap();
    let h = g.dim_const("H", 4).unwrap();
    let dk = g.dim_const("Dk", 16).unwrap();
    let dv = g.dim_const("Dv", 8).unwrap();
    let hv = g.dim_expr("HV", SizeExpr::times(SizeExpr::Dim(h), SizeExpr::Dim(dv))).unwrap();
    g.dim_expr("Kc", SizeExpr::min_of(SizeExpr::Dim(s), SizeExpr::Const(63))).unwrap();
    let st = SizeExpr::plus(SizeExpr::Dim(s), SizeExpr::Dim(t));
    g.dim_expr("W", SizeExpr::minus(st, SizeExpr::Const(1))).unwrap();
    let q = g.input("q", DType::F32, &[b, t, h, dk]).unwrap();
    let k = g.input("k", DType::F32, &[b, t, h, dk]).unwrap();
    let v = g.input("v", DType::F32, &[b, t, h, dv]).unwrap();
    let graw = g.input("g", DType::F32, &[b, t, h, dk]).unwrap();
    g.named(graw, "graw");
    let s0 = g.input_opt("initial_state", DType::F32, &[b, h, dk, dv], true).unwrap();
    g.named(s0, "s0");
    let c = g.scalar(0.0625).unwrap();
    g.named(c, "c");
    let gate = g.add1(OpKind::Unary(UnaryFn::LogSigmoid), &[graw], "g").unwrap();
    let gs = g.add1(OpKind::Binary(BinaryFn::Mul), &[gate, c], "gs").unwrap();
    let r = Recurrence { transition: Transition::KeyDecay, scale: 0.25, normalize: false, eps: 0.0, has_initial: true };
    let rs = g.add(OpKind::LinearRecurrence(r), &[q, k, v, gs, s0], &["o", "final_state"]).unwrap();
    let o2 = g.add1(OpKind::Reshape { shape: vec![b, t, hv] }, &[rs[0]], "o2").unwrap();
    g.output_as("o", rs[0]).unwrap();
    g.output_as("final_state", rs[1]).unwrap();
    g.output_as("flat o", o2).unwrap();
    g
}

#[test]
fn prints_the_canonical_form() {
    let g = gla_by_builder();
    assert_eq!(print(&g), GLA);
    assert_eq!(parse(GLA).unwrap(), g);
}

#[test]
fn snapshot_of_records_lists_and_named_operands() {
    let text = r#"graph attrs {
  dim B
  dim T
  dim S
  dim H = 2
  dim D = 4
  dim G = 2
  dim g = 2
  dim K = 3
  dim Km1 = K - 1
  dim W = min(S, 20)
  dim I = 2

  %x = input x : f32[B, T, H, D]
  %c = input cache : f32[B, S, H, D]
  %off = input offset : i32[]
  %w = input weight : f32[D, K]
  %ix = indices[dim = I, values = [0, 1]] : i32[I]
  %a, %lse = softmax_attention[scale = -0.0, mask = {causal = true, window = 16, sinks = 4}](q = %x, k = %c, v = %c) : f32[B, T, H, D], f32[B, T, H]
  %r = rope[time = T, dim = D, theta = 10000.0](x = %x, offset = %off) : f32[B, T, H, D]
  %rp = permute[shape = [B, H, T, D]](%r) : f32[B, H, T, D]
  %yp, %tail = causal_conv1d[time = T, taps = K, tail = Km1, has_tail = false, silu = true](x = %rp, weight = %w) : f32[B, H, T, D], f32[B, H, Km1, D]
  %y = permute[shape = [B, T, H, D]](%yp) : f32[B, T, H, D]
  %keep = window_retain[keep = 20, dim = W](%c) : f32[B, W, H, D]
  %codes, %scales = quantize[bits = 8, groups = G, group = g](%keep) : i8[B, W, H, G, g], f32[B, W, H, G]
  %m = mix[weights = [0.5, 1e-7]](%a, %y) : f32[B, T, H, D]
  %h = gather[along = H, into = I](x = %m, idx = %ix) : f32[B, T, I, D]
  %cl = clamp[lo = -inf, hi = 1e300](%h) : f32[B, T, I, D]

  out "a b" = %cl
  out codes = %codes
}
"#;
    let g = parse(text).unwrap_or_else(|e| panic!("{e}"));
    insta::assert_snapshot!(print(&g), @r#"
    graph attrs {
      dim B
      dim T
      dim S
      dim H = 2
      dim D = 4
      dim G = 2
      dim g = 2
      dim K = 3
      dim Km1 = K - 1
      dim W = min(S, 20)
      dim I = 2

      %x = input x : f32[B, T, H, D]
      %c = input cache : f32[B, S, H, D]
      %off = input offset : i32[]
      %w = input weight : f32[D, K]
      %ix = indices[dim = I, values = [0, 1]] : i32[I]
      %a, %lse = softmax_attention[scale = -0.0, mask = {causal = true, window = 16, sinks = 4}](q = %x, k = %c, v = %c) : f32[B, T, H, D], f32[B, T, H]
      %r = rope[time = T, dim = D, theta = 10000.0](x = %x, offset = %off) : f32[B, T, H, D]
      %rp = permute[shape = [B, H, T, D]](%r) : f32[B, H, T, D]
      %yp, %tail = causal_conv1d[time = T, taps = K, tail = Km1, has_tail = false, silu = true](x = %rp, weight = %w) : f32[B, H, T, D], f32[B, H, Km1, D]
      %y = permute[shape = [B, T, H, D]](%yp) : f32[B, T, H, D]
      %keep = window_retain[keep = 20, dim = W](%c) : f32[B, W, H, D]
      %codes, %scales = quantize[bits = 8, groups = G, group = g](%keep) : i8[B, W, H, G, g], f32[B, W, H, G]
      %m = mix[weights = [0.5, 1e-7]](%a, %y) : f32[B, T, H, D]
      %h = gather[along = H, into = I](x = %m, idx = %ix) : f32[B, T, I, D]
      %cl = clamp[lo = -inf, hi = 1e300](%h) : f32[B, T, I, D]

      out "a b" = %cl
      out codes = %codes
    }
    "#);
}

#[test]
fn floats_round_trip_bit_exactly() {
    for x in [-0.0, 0.0, 0.1, 1.0 / 3.0, 5e-324, -f64::MAX, f64::INFINITY, f64::NEG_INFINITY] {
        let mut g = Graph::new("f");
        g.scalar(x).unwrap();
        let back = parse(&print(&g)).unwrap();
        match &back.ops[0].kind {
            OpKind::Const { value, .. } => assert_eq!(value.to_bits(), x.to_bits(), "{x:?}"),
            k => panic!("parsed {k:?}"),
        }
    }
}

#[test]
fn accepts_comments_any_attribute_order_and_named_operands() {
    let text = "// a comment\ngraph g { // another\n dim B\n dim T\n\
        %x = input x : f32[B, T]\n\
        %y = cumsum[reverse = true, dim = T, exclusive = false](%x) : f32[B, T]\n\
        %z = where(cond = %c, b = %x, a = %y) : f32[B, T]\n}";
    // `%c` is not defined: the error names it.
    let e = parse(text).unwrap_err();
    assert_eq!(e.msg, "undefined value `%c`");
    assert_eq!((e.line, e.col), (7, 19));
    let text = text.replace("%z", "%c = lt(%x, %y) : bool[B, T]\n%z");
    let g = parse(&text).unwrap();
    let z = g.value_by_name("z").unwrap();
    let op = g.op(g.value(z).op);
    assert_eq!(
        op.operands,
        vec![g.value_by_name("c").unwrap(), g.value_by_name("y").unwrap(), g.value_by_name("x").unwrap()]
    );
    assert!(matches!(g.ops[1].kind, OpKind::Cumsum { exclusive: false, reverse: true, .. }));
}

// ----- errors, with their places -----

fn err(text: &str) -> ParseError {
    match parse(text) {
        Ok(g) => panic!("parsed:\n{}", print(&g)),
        Err(e) => e,
    }
}

/// The error of a one-op graph body, with the line and column counted from the
/// op's line (line 5).
fn body_err(body: &str) -> ParseError {
    let text = format!("graph g {{\n  dim B\n  dim T = 4\n  %x = input x : f32[B, T]\n{body}\n}}\n");
    err(&text)
}

#[test]
fn error_display_names_line_and_column() {
    let e = ParseError { line: 3, col: 7, msg: "oops".into() };
    assert_eq!(e.to_string(), "line 3, column 7: oops");
}

#[test]
fn errors_name_their_place() {
    let cases: &[(&str, (usize, usize), &str)] = &[
        ("  %y = frob(%x) : f32[B, T]", (5, 8), "unknown op `frob`"),
        ("  %y = exp(%x) : f32[B, Q]", (5, 25), "unknown dim `Q`"),
        ("  %y = exp(%w) : f32[B, T]", (5, 12), "undefined value `%w`"),
        ("  %x = exp(%x) : f32[B, T]", (5, 3), "value `%x` is already defined (line 4)"),
        ("  %y, %y = topk[along = T, into = T](%x) : f32[B, T], i32[B, T]", (5, 7), "value `%y` is named twice"),
        ("  %y = softmax[dim = 3](%x) : f32[B, T]", (5, 22), "attribute `dim` of `softmax` must be a dim name"),
        ("  %y = softmax[dim = Q](%x) : f32[B, T]", (5, 22), "unknown dim `Q`"),
        ("  %y = softmax(%x) : f32[B, T]", (5, 8), "`softmax` needs attribute `dim`"),
        (
            "  %y = softmax[dim = T, axis = 1](%x) : f32[B, T]",
            (5, 25),
            "unknown attribute `axis` of `softmax` (it takes dim)",
        ),
        ("  %y = softmax[dim = T, dim = T](%x) : f32[B, T]", (5, 25), "attribute `dim` is given twice"),
        ("  %y = exp(%x) : f32[T, B]", (5, 18), "type of `%y` is written f32[T, B], but inferred f32[B, T]"),
        ("  %y = exp(%x) : f32[B, T], f32[B, T]", (5, 29), "`exp` has 1 result(s), but 2 type(s) are written"),
        (
            "  %y = topk[along = T, into = T](%x) : f32[B, T]",
            (5, 8),
            "`topk` has 2 result(s) (values, indices), but 1 name(s) are written",
        ),
        ("  %y = not(%x) : f32[B, T]", (5, 8), "op `not` (result `%y`): `not` takes bool, found f32"),
        (
            "  %y = cast[to = f31](%x) : f32[B, T]",
            (5, 18),
            "unknown dtype `f31` (expected one of f64, f32, f16, bf16, i32, i8, i4, bool)",
        ),
        (
            "  %y = mix[weights = [0.5, true]](%x) : f32[B, T]",
            (5, 28),
            "attribute `weights` of `mix` must be a list of numbers",
        ),
        (
            "  %y = window_retain[keep = -1, dim = T](%x) : f32[B, T]",
            (5, 29),
            "attribute `keep` of `window_retain` must be an integer from 0 to 2^32 - 1",
        ),
        (
            "  %y = gather[along = T, into = T](x = %x, ix = %x) : f32[B, T]",
            (5, 44),
            "unknown operand `ix` of `gather` (it takes x, idx)",
        ),
        (
            "  %y = gather[along = T, into = T](x = %x) : f32[B, T]",
            (5, 35),
            "missing operand `idx` of `gather` (it takes x, idx)",
        ),
        (
            "  %y = gather[along = T, into = T](x = %x, %x) : f32[B, T]",
            (5, 44),
            "operands are either all named (`role = %v`) or all positional",
        ),
        ("  %y = exp(%x) f32[B, T]", (5, 16), "expected `:` and the result types, found `f32`"),
        ("  %y = exp(%x) : f32[B, T] $", (5, 28), "unexpected character `$`"),
        ("  %y = exp(%x) : \"f32\"[B, T]", (5, 18), "expected a type such as `f32[B, T]`, found string \"f32\""),
        ("  dim B", (5, 7), "dim `B` is defined twice"),
        ("  dim Z = T * Y", (5, 15), "unknown dim `Y`"),
        (
            "  dim Z = 1099511627777",
            (5, 7),
            "dim `Z`: the size is too large (sizes and their coefficients are limited to 2^40)",
        ),
        ("  dim Z = min(T 3)", (5, 17), "expected `,` between the arguments of `min`, found number `3`"),
        ("  out y = %y", (5, 11), "undefined value `%y`"),
        ("  out x = %x\n  out x = %x", (6, 7), "output `x` is declared twice"),
        ("  %y = input x : f32[B]", (5, 14), "input `x` is declared twice"),
        (
            "  %y = input \"a b\" : f32[B]",
            (5, 14),
            "input name `a b` is not an identifier (a letter or `_`, then letters, digits or `_`)",
        ),
        (
            "  %y = sink_window_retain[sinks = 4294967295, window = 1, dim = T](%x) : f32[B, T]",
            (5, 8),
            "op `sink_window_retain`: sinks + window (4294967295 + 1) exceeds 2^32 - 1",
        ),
        ("  %y = exp(%x) : f32[B, T]\n  %s = \"unterminated", (6, 8), "unterminated string"),
        ("  %", (5, 4), "expected a value name after `%` (an identifier or a quoted string)"),
    ];
    let mut wrong = Vec::new();
    for (body, (line, col), msg) in cases {
        let e = body_err(body);
        if (e.msg.as_str(), e.line, e.col) != (*msg, *line, *col) {
            wrong.push(format!("{body}\n  got {e}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn structural_errors() {
    let e = err("");
    assert_eq!((e.line, e.col, e.msg.as_str()), (1, 1, "expected `graph`, found end of input"));
    let e = err("graph g {\n  dim B\n");
    assert_eq!((e.line, e.col), (3, 1));
    assert_eq!(e.msg, "expected `dim`, `out`, a value `%name` or `}`, found end of input");
    let e = err("graph g {}\ngraph h {}");
    assert_eq!((e.line, e.col), (2, 1));
    assert_eq!(e.msg, "expected end of input after the graph's `}`, found `graph`");
    let deep = format!("graph g {{ dim B = {}1{} }}", "(".repeat(100), ")".repeat(100));
    assert_eq!(err(&deep).msg, "size expression is nested too deeply");
    let long = format!("graph g {{ dim B dim C = {} }}", vec!["B"; 300].join(" + "));
    assert!(err(&long).msg.starts_with("size expression is too long"));
    let nested = format!("graph g {{ dim B %x = const[value = {}] : f32[] }}", "[".repeat(100));
    assert_eq!(err(&nested).msg, "attribute value is nested too deeply");
    let names: Vec<String> = (0..65).map(|i| format!("D{i}")).collect();
    let dims: String = names.iter().map(|n| format!("dim {n} ")).collect();
    let wide = format!("graph g {{ {dims} %x = input x : f32[{}] }}", names.join(", "));
    assert_eq!(err(&wide).msg, "too many dims in one shape (at most 64)");
    let xs = vec!["%x"; 1025].join(", ");
    let many = format!("graph g {{ dim B %x = input x : f32[B] %y = concat[axis = 0, dim = B]({xs}) : f32[B] }}");
    assert_eq!(err(&many).msg, "too many operands (at most 1024)");
}

#[test]
fn sizes_that_would_overflow_are_rejected() {
    // Each dim is within the limit; their products are not.
    let mut text = String::from("graph g {\n  dim A = 1048576\n");
    text.push_str("  dim B1 = A * A\n  dim B2 = A * A\n  dim B3 = A * A\n  dim B4 = A * A\n");
    text.push_str("  %x = input x : f32[B1, B2, B3, B4]\n");
    text.push_str("  %y = reshape[shape = [B4, B3, B2, B1]](%x) : f32[B4, B3, B2, B1]\n}\n");
    let e = err(&text);
    assert_eq!((e.line, e.col), (8, 8));
    assert_eq!(e.msg, "op `reshape`: sizes too large to compare (beyond 2^62)");
    let e = err("graph g {\n  dim A = 1048576\n  dim B = A * A * A\n}\n");
    assert_eq!((e.line, e.col), (3, 7));
    let e = err("graph g {\n  dim A\n  dim B = A + A\n  dim C = B * B * B * B * B * B * B * B * B * B * B * B * B * B * B * B * B * B * B * B * B * B * B * B * B * B * B * B * B * B * B * B * B * B * B * B * B * B * B * B * B\n}\n");
    assert!(e.msg.contains("too large"), "{e}");
    let e = err("graph g {\n  dim T = 8\n  dim U = 2\n  %x = input x : f32[T]\n  %y = slice[axis = 0, start = 18446744073709551615, dim = U](%x) : f32[U]\n}\n");
    assert_eq!(e.msg, "op `slice`: start 18446744073709551615 + size 2 exceeds 2^64 - 1");
}

// ----- the zoo -----

/// Every mixer graph the model files describe prints and parses back unchanged.
#[test]
fn every_zoo_mixer_round_trips() {
    let models = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
    let mut files = Vec::new();
    for dir in [models.clone(), models.join("bench")] {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("directory entry").path();
            if path.extension().is_some_and(|x| x == "toml") {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut graphs = 0;
    for f in &files {
        let m = mixc_ir::model::load_model(f).unwrap_or_else(|e| panic!("{e}"));
        for (name, cfg) in &m.mixer {
            let g = mixc_ir::mixers::build(name, cfg).unwrap_or_else(|e| panic!("{}: mixer {name}: {e}", f.display()));
            let text = print(&g);
            let back = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(back, g, "{}: mixer {name}\n{text}", f.display());
            graphs += 1;
        }
    }
    assert!(graphs > 0, "no mixer graphs in {}", models.display());
}
