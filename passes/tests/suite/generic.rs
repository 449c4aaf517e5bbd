//! The generic kernels (every op without a dedicated recipe): each op kind in
//! a small graph of its own, random shapes (ragged against the block, some
//! empty) and values, lowered and run by the tile interpreter against the
//! reference. Floats agree to 1e-12 in f64 (1e-5 with f32 tile arithmetic);
//! integer and boolean results (indices, codes, comparisons) exactly.

use super::util::check;
use mixc_ir::dims::{DimId, SizeExpr};
use mixc_ir::interp::{self, Tensor};
use mixc_ir::mixers::inputs::SplitMix;
use mixc_ir::ops::*;
use mixc_ir::tile::interp::Precision;
use mixc_ir::{DType, Graph, ValueId};
use mixc_passes::{lower, Schedule};
use proptest::prelude::*;
use std::collections::BTreeMap;

/// Random draws; `positive` makes summed values positive, so that f32 sums
/// are well conditioned (no cancellation to amplify rounding).
struct Rng(SplitMix, bool);

impl Rng {
    fn new(seed: u64, positive: bool) -> Rng {
        Rng(SplitMix::new(seed), positive)
    }
    /// A value that gets summed with others.
    fn summand(&mut self) -> f64 {
        let x = self.f32(2.0);
        if self.1 {
            x.abs()
        } else {
            x
        }
    }
    fn below(&mut self, n: usize) -> usize {
        (self.0.next_u64() % n.max(1) as u64) as usize
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }
    fn coin(&mut self, p: f64) -> bool {
        self.0.uniform() < p
    }
    /// A dim size from 1 to `hi`, or 0 now and then.
    fn size(&mut self, hi: usize, zero: bool) -> usize {
        if zero && self.coin(0.06) {
            0
        } else {
            self.range(1, hi)
        }
    }
    /// A normal value that an f32 holds exactly (inputs are stored as f32).
    fn f32(&mut self, scale: f64) -> f64 {
        (self.0.normal() * scale) as f32 as f64
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }
    fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = self.below(i + 1);
            xs.swap(i, j);
        }
    }
}

/// A graph and inputs for it.
struct Case {
    g: Graph,
    inputs: BTreeMap<String, Tensor>,
}

impl Case {
    fn new(name: &str) -> Case {
        Case { g: Graph::new(name), inputs: BTreeMap::new() }
    }
    fn dim(&mut self, name: &str) -> DimId {
        self.g.dim(name).unwrap()
    }
    fn dim_const(&mut self, name: &str, n: usize) -> DimId {
        self.g.dim_const(name, n as u64).unwrap()
    }
    /// An input filled by `f` (shape in sizes).
    fn input(
        &mut self,
        name: &str,
        dt: DType,
        dims: &[DimId],
        shape: &[usize],
        f: impl FnMut(usize) -> f64,
    ) -> ValueId {
        let v = self.g.input(name, dt, dims).unwrap();
        self.inputs.insert(name.to_string(), Tensor::from_fn(shape, f));
        v
    }
    fn floats(&mut self, rng: &mut Rng, name: &str, dt: DType, dims: &[DimId], shape: &[usize]) -> ValueId {
        self.input(name, dt, dims, shape, |_| rng.f32(2.0))
    }
    fn summands(&mut self, rng: &mut Rng, name: &str, dt: DType, dims: &[DimId], shape: &[usize]) -> ValueId {
        self.input(name, dt, dims, shape, |_| rng.summand())
    }
    fn op(&mut self, kind: OpKind, operands: &[ValueId]) -> Vec<ValueId> {
        self.g.add(kind, operands, &[]).unwrap()
    }
    fn out(&mut self, name: &str, v: ValueId) {
        self.g.output_as(name, v).unwrap();
    }
    fn op_out(&mut self, kind: OpKind, operands: &[ValueId]) {
        let names = kind.result_names();
        let rs = self.op(kind, operands);
        for (n, r) in names.iter().zip(rs) {
            self.out(n, r);
        }
    }
}

const FLOATS: [DType; 2] = [DType::F32, DType::F64];

/// A random subset of `dims` in random order.
fn subset(rng: &mut Rng, dims: &[(DimId, usize)], p: f64) -> Vec<(DimId, usize)> {
    let mut s: Vec<(DimId, usize)> = dims.iter().copied().filter(|_| rng.coin(p)).collect();
    rng.shuffle(&mut s);
    s
}

fn split(dims: &[(DimId, usize)]) -> (Vec<DimId>, Vec<usize>) {
    dims.iter().copied().unzip()
}

/// Three free dims `A`, `B`, `C` with random sizes (`zero`: some may be 0).
fn abc(c: &mut Case, rng: &mut Rng, zero: bool) -> Vec<(DimId, usize)> {
    let empty = if zero && rng.coin(0.12) { rng.below(3) } else { 3 };
    ["A", "B", "C"]
        .iter()
        .enumerate()
        .map(|(i, n)| (c.dim(n), if i == empty { 0 } else { rng.size(6, false) }))
        .collect()
}

const KINDS: [&str; 29] = [
    "const",
    "iota",
    "indices",
    "unary",
    "binary",
    "select",
    "cast",
    "clamp",
    "broadcast",
    "permute",
    "reshape",
    "einsum",
    "reduce",
    "cumsum",
    "softmax",
    "normalize",
    "concat",
    "slice",
    "gather",
    "scatter",
    "topk",
    "conv1d",
    "rope",
    "mix",
    "kv_append",
    "window_retain",
    "sink_window_retain",
    "quantize",
    "dequantize",
];

/// Case `seed` of op kind `kind` (`positive`: well-conditioned sums, for f32 runs).
fn build_case(kind: usize, seed: u64, positive: bool) -> Case {
    let mut rng = Rng::new(seed.wrapping_mul(31).wrapping_add(kind as u64), positive);
    let r = &mut rng;
    let mut c = Case::new(KINDS[kind % KINDS.len()]);
    match KINDS[kind % KINDS.len()] {
        "const" => {
            let dt = r.pick(&[DType::F32, DType::F64, DType::F16, DType::I32, DType::I8, DType::Bool]);
            let shape: Vec<DimId> = (0..r.below(3)).map(|i| c.dim_const(&format!("N{i}"), r.size(9, true))).collect();
            let value = r.pick(&[0.1, -3.7, 200.0, 0.0, 1.0 / 3.0]);
            c.op_out(OpKind::Const { value, dtype: dt, shape }, &[]);
        }
        "iota" => {
            let d = c.dim_const("N", r.size(20, true));
            c.op_out(OpKind::Iota { dim: d }, &[]);
        }
        "indices" => {
            let n = r.size(12, true);
            let values: Vec<u32> = if r.coin(0.5) {
                let (a, s) = (r.below(5) as u32, r.below(3) as u32);
                (0..n as u32).map(|j| a + s * j).collect()
            } else {
                (0..n).map(|_| r.below(40) as u32).collect()
            };
            let d = c.dim_const("N", n);
            c.op_out(OpKind::Indices { dim: d, values }, &[]);
        }
        "unary" => {
            let f = r.pick(&UNARY_FNS);
            let all = abc(&mut c, r, true);
            let (dims, shape) = split(&subset(r, &all, 0.7));
            let dt = match f {
                UnaryFn::Not => DType::Bool,
                UnaryFn::Neg | UnaryFn::Abs if r.coin(0.4) => DType::I32,
                _ => r.pick(&FLOATS),
            };
            let positive = matches!(f, UnaryFn::Log | UnaryFn::Sqrt | UnaryFn::Rsqrt | UnaryFn::Recip);
            let x = c.input("x", dt, &dims, &shape, |_| match dt {
                DType::Bool => r.below(2) as f64,
                DType::I32 => r.range(0, 40) as f64 - 20.0,
                // Halves exercise round-half-away-from-zero.
                _ if f == UnaryFn::Round && r.coin(0.3) => (r.range(0, 20) as f64 - 10.0) + 0.5,
                _ if positive => r.f32(2.0).abs() + 0.125,
                _ => r.f32(3.0),
            });
            c.op_out(OpKind::Unary(f), &[x]);
        }
        "binary" => {
            let f = r.pick(&BINARY_FNS);
            let all = abc(&mut c, r, true);
            let (da, sa) = split(&subset(r, &all, 0.7));
            let (db, sb) = split(&subset(r, &all, 0.7));
            let dt = match f {
                BinaryFn::And | BinaryFn::Or => DType::Bool,
                BinaryFn::Pow => r.pick(&FLOATS),
                _ if r.coin(0.4) => DType::I32,
                _ => r.pick(&FLOATS),
            };
            let divides = matches!(f, BinaryFn::Div | BinaryFn::Rem | BinaryFn::FloorDiv);
            let small = r.coin(0.5);
            let val = |r: &mut Rng, second: bool| match dt {
                DType::Bool => r.below(2) as f64,
                DType::I32 if second && divides => r.pick(&[-7.0, -3.0, -1.0, 1.0, 2.0, 5.0]),
                DType::I32 => r.range(0, 40) as f64 - 20.0,
                _ if f == BinaryFn::Pow && !second => r.f32(2.0).abs() + 0.125,
                // Small integers make comparisons tie now and then.
                _ if small => r.range(0, 6) as f64 - 3.0 + if second && divides { 0.5 } else { 0.0 },
                _ => r.f32(3.0),
            };
            let a = c.input("a", dt, &da, &sa, |_| val(r, false));
            let b = c.input("b", dt, &db, &sb, |_| val(r, true));
            c.op_out(OpKind::Binary(f), &[a, b]);
        }
        "select" => {
            let all = abc(&mut c, r, true);
            let (dc, sc) = split(&subset(r, &all, 0.7));
            let (da, sa) = split(&subset(r, &all, 0.7));
            let (db, sb) = split(&subset(r, &all, 0.7));
            let dt = r.pick(&[DType::F32, DType::I32]);
            let cond = c.input("cond", DType::Bool, &dc, &sc, |_| r.below(2) as f64);
            let a = c.input("a", dt, &da, &sa, |_| r.range(0, 100) as f64);
            let b = c.input("b", dt, &db, &sb, |_| -(r.range(0, 100) as f64));
            c.op_out(OpKind::Select, &[cond, a, b]);
        }
        "cast" => {
            let from = r.pick(&[DType::F32, DType::F64, DType::I32, DType::I8, DType::Bool]);
            let to = r.pick(&[
                DType::F32,
                DType::F64,
                DType::F16,
                DType::BF16,
                DType::I32,
                DType::I8,
                DType::I4,
                DType::Bool,
            ]);
            let (dims, shape) = split(&abc(&mut c, r, true));
            let x = c.input("x", from, &dims, &shape, |_| match from {
                DType::Bool => r.below(2) as f64,
                DType::I8 => r.range(0, 255) as f64 - 128.0,
                DType::I32 => r.range(0, 600) as f64 - 300.0,
                _ if r.coin(0.2) => 0.0,
                _ => r.f32(100.0),
            });
            c.op_out(OpKind::Cast(to), &[x]);
        }
        "clamp" => {
            let (dims, shape) = split(&abc(&mut c, r, true));
            let int = r.coin(0.3);
            let dt = if int { DType::I32 } else { r.pick(&FLOATS) };
            let lo = if int { r.range(0, 10) as f64 - 5.0 } else { r.f32(1.0) };
            let hi = lo + if int { r.below(6) as f64 } else { r.f32(1.0).abs() };
            let x = c.input("x", dt, &dims, &shape, |_| if int { r.range(0, 20) as f64 - 10.0 } else { r.f32(2.0) });
            c.op_out(OpKind::Clamp { lo, hi }, &[x]);
        }
        "broadcast" | "permute" => {
            // Constant dims: a broadcast's new dims are bound by no input.
            let all: Vec<(DimId, usize)> = ["A", "B", "C"]
                .iter()
                .map(|n| {
                    let sz = r.size(6, true);
                    (c.dim_const(n, sz), sz)
                })
                .collect();
            let mut out = all.clone();
            r.shuffle(&mut out);
            let x_dims = if KINDS[kind % KINDS.len()] == "broadcast" { subset(r, &all, 0.5) } else { all };
            let (dx, sx) = split(&x_dims);
            let x = c.floats(r, "x", DType::F32, &dx, &sx);
            let (shape, _) = split(&out);
            if KINDS[kind % KINDS.len()] == "broadcast" {
                c.op_out(OpKind::Broadcast { shape }, &[x]);
            } else {
                c.op_out(OpKind::Permute { shape }, &[x]);
            }
        }
        "reshape" => {
            let (b, t) = (c.dim("B"), c.dim("T"));
            let (h, d) = (c.dim_const("H", r.size(4, false)), c.dim_const("D", r.size(5, false)));
            let hd = c.g.dim_expr("HD", SizeExpr::times(SizeExpr::Dim(h), SizeExpr::Dim(d))).unwrap();
            let (nb, nt) = (r.size(3, true), r.size(5, true));
            let sh = [nb, nt, c.g.dims.const_size(h).unwrap() as usize, c.g.dims.const_size(d).unwrap() as usize];
            let x = c.floats(r, "x", DType::F32, &[b, t, h, d], &sh);
            c.op_out(OpKind::Reshape { shape: vec![b, t, hd] }, &[x]);
        }
        "einsum" => {
            let pool: Vec<(DimId, usize)> = ["P", "Q", "S", "U"].iter().map(|n| (c.dim(n), r.size(5, true))).collect();
            let (da, sa) = split(&subset(r, &pool, 0.6));
            let (db, sb) = split(&subset(r, &pool, 0.6));
            let mut union: Vec<DimId> = da.clone();
            union.extend(db.iter().filter(|d| !da.contains(d)));
            let mut out: Vec<DimId> = union.into_iter().filter(|_| r.coin(0.5)).collect();
            r.shuffle(&mut out);
            let dt = r.pick(&FLOATS);
            let a = c.summands(r, "a", dt, &da, &sa);
            let b = c.summands(r, "b", dt, &db, &sb);
            c.op_out(OpKind::Einsum { out }, &[a, b]);
        }
        "reduce" => {
            let func = r.pick(&REDUCE_FNS);
            // An empty max, min or log-sum-exp is ±inf: keep those rows non-empty.
            let zero = matches!(func, ReduceFn::Sum | ReduceFn::Mean);
            let all = abc(&mut c, r, zero);
            let (dims, shape) = split(&all);
            let red: Vec<DimId> = dims.iter().copied().filter(|_| r.coin(0.5)).collect();
            let int = matches!(func, ReduceFn::Sum | ReduceFn::Max | ReduceFn::Min) && r.coin(0.3);
            let dt = if int { DType::I32 } else { r.pick(&FLOATS) };
            let x = c.input("x", dt, &dims, &shape, |_| if int { r.range(0, 20) as f64 - 10.0 } else { r.summand() });
            c.op_out(OpKind::Reduce { func, dims: red }, &[x]);
        }
        "cumsum" | "softmax" | "normalize" => {
            let (dims, shape) = split(&abc(&mut c, r, true));
            let dim = dims[r.below(3)];
            let name = KINDS[kind % KINDS.len()];
            let int = name == "cumsum" && r.coin(0.3);
            let dt = if int { DType::I32 } else { r.pick(&FLOATS) };
            let x = c.input("x", dt, &dims, &shape, |_| if int { r.range(0, 20) as f64 - 10.0 } else { r.summand() });
            let k = match name {
                "cumsum" => OpKind::Cumsum { dim, exclusive: r.coin(0.5), reverse: r.coin(0.5) },
                "softmax" => OpKind::Softmax { dim },
                _ => OpKind::Normalize { kind: r.pick(&[NormKind::L2, NormKind::Rms]), dim, eps: r.pick(&[1e-6, 0.5]) },
            };
            c.op_out(k, &[x]);
        }
        "concat" => {
            let all = abc(&mut c, r, true);
            let axis = r.below(3);
            let n_ops = r.range(1, 3);
            let mut ops = Vec::new();
            let mut total = SizeExpr::Const(0);
            for i in 0..n_ops {
                let d = c.dim(&format!("X{i}"));
                let mut x = all.clone();
                x[axis] = (d, r.size(4, true));
                let (dx, sx) = split(&x);
                ops.push(c.floats(r, &format!("x{i}"), DType::F32, &dx, &sx));
                total = if i == 0 { SizeExpr::Dim(d) } else { SizeExpr::plus(total, SizeExpr::Dim(d)) };
            }
            let dim = c.g.dim_expr("Y", total).unwrap();
            c.op_out(OpKind::Concat { axis, dim }, &ops);
        }
        "slice" => {
            let sizes: Vec<usize> = (0..3).map(|_| r.size(7, true)).collect();
            let dims: Vec<DimId> = sizes.iter().enumerate().map(|(i, n)| c.dim_const(&format!("N{i}"), *n)).collect();
            let axis = r.below(3);
            let len = r.range(0, sizes[axis]);
            let start = r.range(0, sizes[axis] - len);
            let dim = c.dim_const("L", len);
            let x = c.floats(r, "x", DType::F32, &dims, &sizes);
            c.op_out(OpKind::Slice { axis, start: start as u64, dim }, &[x]);
        }
        "gather" => {
            let (b, n, d, k) = (c.dim("B"), c.dim("N"), c.dim("D"), c.dim("K"));
            let (nb, nn, nd) = (r.size(3, true), r.size(6, false), r.size(4, true));
            let nk = r.size(7, true);
            let x = c.floats(r, "x", DType::F32, &[b, n, d], &[nb, nn, nd]);
            let (di, si) = match r.below(3) {
                0 => (vec![b, k], vec![nb, nk]),
                1 => (vec![k], vec![nk]),
                _ => (vec![k, d], vec![nk, nd]),
            };
            let idx = c.input("idx", DType::I32, &di, &si, |_| r.below(nn) as f64);
            c.op_out(OpKind::Gather { along: n, into: k }, &[x, idx]);
        }
        "scatter" => {
            let (b, n, d, k) = (c.dim("B"), c.dim("N"), c.dim("D"), c.dim("K"));
            let (nb, nn, nd) = (r.size(3, true), r.size(6, false), r.size(4, true));
            let nk = r.size(7, true);
            let base = c.floats(r, "base", DType::F32, &[b, n, d], &[nb, nn, nd]);
            let (di, si) = if r.coin(0.5) { (vec![b, k], vec![nb, nk]) } else { (vec![k], vec![nk]) };
            // Few distinct targets: rows collide, and the later must win.
            let targets = r.range(1, nn);
            let idx = c.input("idx", DType::I32, &di, &si, |_| r.below(targets) as f64);
            let src = c.floats(r, "src", DType::F32, &[b, k, d], &[nb, nk, nd]);
            c.op_out(OpKind::Scatter { along: n, into: k }, &[base, idx, src]);
        }
        "topk" => {
            let (b, cc) = (c.dim("B"), c.dim("C"));
            let nn = r.size(9, false);
            let n = c.dim_const("N", nn);
            let k = c.dim_const("K", r.range(0, nn));
            let (nb, nc) = (r.size(3, true), r.size(3, true));
            let ties = r.coin(0.5);
            let dt = if r.coin(0.2) { DType::I32 } else { DType::F32 };
            let x = c.input("x", dt, &[b, n, cc], &[nb, nn, nc], |_| {
                if ties || dt == DType::I32 {
                    r.range(0, 3) as f64
                } else {
                    r.f32(1.0)
                }
            });
            c.op_out(OpKind::TopK { along: n, into: k }, &[x]);
        }
        "conv1d" => {
            let (b, t, ch) = (c.dim("B"), c.dim("T"), c.dim("C"));
            let kk = r.range(1, 5);
            let taps = c.dim_const("K", kk);
            let tail = c.dim_const("Km1", kk - 1);
            let (nb, nt, nc) = (r.size(3, true), r.size(9, true), r.size(5, false));
            let has_tail = r.coin(0.6);
            let x = c.summands(r, "x", DType::F32, &[b, t, ch], &[nb, nt, nc]);
            let w = c.summands(r, "w", DType::F32, &[ch, taps], &[nc, kk]);
            let mut ops = vec![x, w];
            if has_tail {
                ops.push(c.summands(r, "tail", DType::F32, &[b, tail, ch], &[nb, kk - 1, nc]));
            }
            c.op_out(OpKind::CausalConv1d { time: t, taps, tail, has_tail, silu: r.coin(0.5) }, &ops);
        }
        "rope" => {
            let (b, t, h) = (c.dim("B"), c.dim("T"), c.dim("H"));
            let nd = 2 * r.range(1, 6);
            let d = c.dim_const("D", nd);
            let sh = [r.size(2, true), r.size(7, true), r.size(3, false), nd];
            let x = c.floats(r, "x", DType::F32, &[b, t, h, d], &sh);
            let off = r.below(20) as f64;
            let o = c.input("offset", DType::I32, &[], &[], |_| off);
            let theta = r.pick(&[10000.0, 500.0]);
            c.op_out(OpKind::Rope { time: t, dim: d, theta }, &[x, o]);
        }
        "mix" => {
            let (dims, shape) = split(&abc(&mut c, r, true));
            let n = r.range(1, 3);
            let ops: Vec<ValueId> =
                (0..n).map(|i| c.summands(r, &format!("x{i}"), DType::F32, &dims, &shape)).collect();
            let weights = (0..n).map(|_| r.summand()).collect();
            c.op_out(OpKind::Mix { weights }, &ops);
        }
        "kv_append" => {
            let (b, s, t, h) = (c.dim("B"), c.dim("S"), c.dim("T"), c.dim("H"));
            let d = c.dim_const("D", r.size(5, false));
            let nd = c.g.dims.const_size(d).unwrap() as usize;
            let st = c.g.dim_expr("ST", SizeExpr::plus(SizeExpr::Dim(s), SizeExpr::Dim(t))).unwrap();
            let (nb, ns, nt, nh) = (r.size(2, true), r.size(6, true), r.size(4, true), r.size(3, false));
            let cache = c.floats(r, "cache", DType::F32, &[b, s, h, d], &[nb, ns, nh, nd]);
            let new = c.floats(r, "new", DType::F32, &[b, t, h, d], &[nb, nt, nh, nd]);
            c.op_out(OpKind::KvAppend { dim: st }, &[cache, new]);
        }
        "window_retain" | "sink_window_retain" => {
            let (b, s, d) = (c.dim("B"), c.dim("S"), c.dim("D"));
            let (nb, ns, nd) = (r.size(2, true), r.range(0, 12), r.size(3, false));
            let cache = c.floats(r, "cache", DType::F32, &[b, s, d], &[nb, ns, nd]);
            let (sinks, window) = (r.range(0, 3) as u32, r.range(1, 6) as u32);
            let sink = KINDS[kind % KINDS.len()] == "sink_window_retain";
            let keep = if sink { sinks + window } else { window };
            let min = SizeExpr::min_of(SizeExpr::Dim(s), SizeExpr::Const(u64::from(keep)));
            let dim = c.g.dim_expr("W", min).unwrap();
            let k = if sink {
                OpKind::SinkWindowRetain { sinks, window, dim }
            } else {
                OpKind::WindowRetain { keep: window, dim }
            };
            c.op_out(k, &[cache]);
        }
        "quantize" => {
            let b = c.dim("B");
            let (ng, ngl) = (r.size(4, false), r.size(9, false));
            let (groups, group) = (c.dim_const("G", ng), c.dim_const("g", ngl));
            let l = c.g.dim_expr("L", SizeExpr::times(SizeExpr::Dim(groups), SizeExpr::Dim(group))).unwrap();
            let nb = r.size(3, true);
            let zero_group = r.below(ng * nb.max(1));
            let x = c.input("x", r.pick(&FLOATS), &[b, l], &[nb, ng * ngl], |i| {
                if i / ngl == zero_group {
                    0.0
                } else {
                    r.f32(2.0)
                }
            });
            let bits = r.pick(&[8, 4]);
            c.op_out(OpKind::Quantize { bits, groups, group }, &[x]);
        }
        "dequantize" => {
            let b = c.dim("B");
            let (ng, ngl) = (r.size(4, false), r.size(9, false));
            let (groups, group) = (c.dim_const("G", ng), c.dim_const("g", ngl));
            let nb = r.size(3, true);
            let dt = r.pick(&[DType::I8, DType::I4]);
            let lim = if dt == DType::I8 { 127 } else { 7 };
            let codes =
                c.input("codes", dt, &[b, groups, group], &[nb, ng, ngl], |_| r.range(0, 2 * lim) as f64 - lim as f64);
            let scales = c.input("scales", DType::F32, &[b, groups], &[nb, ng], |_| r.f32(0.1).abs());
            c.op_out(OpKind::Dequantize, &[codes, scales]);
        }
        other => unreachable!("no case for {other}"),
    }
    c
}

/// `check` (floats to `tol`), then integer and boolean outputs exactly.
fn run(c: &Case, block: u32, prec: Precision, tol: f64) {
    let sched = Schedule { block_elems: block, ..Default::default() };
    check(&c.g, &sched, &c.inputs, prec, tol);
    let want = interp::run(&c.g, &c.inputs).unwrap();
    let (got, _) = lower(&c.g, &sched).unwrap().run(&c.inputs, prec).unwrap();
    for (name, v) in &c.g.outputs {
        if !c.g.ty(*v).dtype.is_float() {
            assert_eq!(got[name].data, want[name].data, "{}: output `{name}` differs (block {block})", c.g.name);
        }
    }
}

#[test]
fn every_op_kind_matches_the_reference() {
    for kind in 0..KINDS.len() {
        for seed in 0..8 {
            let c = build_case(kind, seed, false);
            run(&c, [8, 64, 1024][seed as usize % 3], Precision::F64, 1e-12);
        }
    }
}

#[test]
fn every_op_kind_matches_with_f32_arithmetic() {
    for kind in 0..KINDS.len() {
        for seed in 100..103 {
            run(&build_case(kind, seed, true), 16, Precision::F32, 1e-5);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn random_ops_match_the_reference(
        kind in 0..KINDS.len(),
        seed in any::<u64>(),
        block in prop::sample::select(vec![8u32, 16, 64]),
    ) {
        run(&build_case(kind, seed, false), block, Precision::F64, 1e-12);
    }
}

/// Every scattered row hits the same target: the last one must win.
#[test]
fn scatter_later_rows_win() {
    let mut c = Case::new("scatter_last");
    let (n, k, d) = (c.dim_const("N", 4), c.dim_const("K", 11), c.dim_const("D", 3));
    let base = c.input("base", DType::F32, &[n, d], &[4, 3], |i| i as f64);
    let idx = c.input("idx", DType::I32, &[k], &[11], |_| 2.0);
    let src = c.input("src", DType::F32, &[k, d], &[11, 3], |i| 100.0 + i as f64);
    c.op_out(OpKind::Scatter { along: n, into: k }, &[base, idx, src]);
    for block in [1, 2, 8] {
        run(&c, block, Precision::F64, 0.0);
    }
    let (got, _) = lower(&c.g, &Schedule { block_elems: 2, ..Default::default() })
        .unwrap()
        .run(&c.inputs, Precision::F64)
        .unwrap();
    assert_eq!(&got["out"].data[6..9], &[130.0, 131.0, 132.0]);
}

/// Equal values: the lower index comes first.
#[test]
fn topk_ties_go_to_the_lower_index() {
    let mut c = Case::new("topk_ties");
    let (n, k) = (c.dim_const("N", 6), c.dim_const("K", 4));
    let x = c.input("x", DType::F32, &[n], &[6], |i| [1.0, 3.0, 1.0, 3.0, 2.0, 3.0][i]);
    c.op_out(OpKind::TopK { along: n, into: k }, &[x]);
    run(&c, 8, Precision::F64, 0.0);
    let (got, _) = lower(&c.g, &Schedule::default()).unwrap().run(&c.inputs, Precision::F64).unwrap();
    assert_eq!(got["indices"].data, vec![1.0, 3.0, 5.0, 4.0]);
    assert_eq!(got["values"].data, vec![3.0, 3.0, 3.0, 2.0]);
}

/// Codes round half away from zero and clamp; a zero group has scale 0, codes 0.
#[test]
fn quantize_codes_are_exact() {
    let mut c = Case::new("quant");
    let (groups, group) = (c.dim_const("G", 2), c.dim_const("g", 4));
    let l = c.dim_const("L", 8);
    let x = c.input("x", DType::F32, &[l], &[8], |i| [127.0, 63.5, -63.5, 0.5, 0.0, 0.0, 0.0, 0.0][i]);
    c.op_out(OpKind::Quantize { bits: 8, groups, group }, &[x]);
    run(&c, 4, Precision::F64, 0.0);
    let (got, _) = lower(&c.g, &Schedule::default()).unwrap().run(&c.inputs, Precision::F64).unwrap();
    assert_eq!(got["codes"].data, vec![127.0, 64.0, -64.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
    assert_eq!(got["scales"].data, vec![1.0, 0.0]);
}

/// Empty caches and prompts: nothing to read, nothing out of bounds.
#[test]
fn empty_dims_work() {
    // A conv over no new tokens hands the old tail through.
    let mut c = Case::new("conv_empty");
    let (b, t, ch) = (c.dim("B"), c.dim("T"), c.dim("C"));
    let (taps, tail) = (c.dim_const("K", 4), c.dim_const("Km1", 3));
    let x = c.input("x", DType::F32, &[b, t, ch], &[2, 0, 3], |_| 0.0);
    let w = c.input("w", DType::F32, &[ch, taps], &[3, 4], |i| i as f64);
    let tl = c.input("tail", DType::F32, &[b, tail, ch], &[2, 3, 3], |i| i as f64 - 5.0);
    c.op_out(OpKind::CausalConv1d { time: t, taps, tail, has_tail: true, silu: true }, &[x, w, tl]);
    run(&c, 8, Precision::F64, 1e-12);

    // Appending to an empty cache, then keeping a window of it.
    let mut c = Case::new("kv_empty");
    let (b, s, t, d) = (c.dim("B"), c.dim("S"), c.dim("T"), c.dim_const("D", 3));
    let st = c.g.dim_expr("ST", SizeExpr::plus(SizeExpr::Dim(s), SizeExpr::Dim(t))).unwrap();
    let w = c.g.dim_expr("W", SizeExpr::min_of(SizeExpr::Dim(st), SizeExpr::Const(4))).unwrap();
    let cache = c.input("cache", DType::F32, &[b, s, d], &[2, 0, 3], |_| 0.0);
    let new = c.input("new", DType::F32, &[b, t, d], &[2, 5, 3], |i| i as f64);
    let all = c.op(OpKind::KvAppend { dim: st }, &[cache, new])[0];
    c.out("all", all);
    c.op_out(OpKind::WindowRetain { keep: 4, dim: w }, &[all]);
    run(&c, 8, Precision::F64, 0.0);
}

/// An input returned as is, and one value under two names, are copied out.
#[test]
fn outputs_that_alias_are_copied() {
    let mut c = Case::new("alias");
    let (a, b) = (c.dim("A"), c.dim("B"));
    let x = c.input("x", DType::F32, &[a, b], &[3, 5], |i| i as f64 * 0.5);
    c.out("same", x);
    let y = c.op(OpKind::Unary(UnaryFn::Exp), &[x])[0];
    c.out("y", y);
    c.out("y_again", y);
    run(&c, 4, Precision::F64, 0.0);
}

/// A KV append whose old rows span several blocks of the prefix copy (each
/// sequence's run of `S·H·D` = 3 × 47 × 20 elements, past one program's
/// 2048) lands every old and new row where the reference puts it, for three
/// sequences; and its first launch is the marked prefix copy.
#[test]
fn kv_append_copies_long_caches_whole() {
    let mut c = Case::new("kv_long");
    let (b, s, t, h, d) = (c.dim("B"), c.dim("S"), c.dim("T"), c.dim("H"), c.dim_const("D", 20));
    let st = c.g.dim_expr("ST", SizeExpr::plus(SizeExpr::Dim(s), SizeExpr::Dim(t))).unwrap();
    let cache = c.input("cache", DType::F32, &[b, s, h, d], &[3, 47, 3, 20], |i| i as f64);
    let new = c.input("new", DType::F32, &[b, t, h, d], &[3, 2, 3, 20], |i| -(i as f64) - 1.0);
    c.op_out(OpKind::KvAppend { dim: st }, &[cache, new]);
    run(&c, 64, Precision::F64, 0.0);
    let prog = lower(&c.g, &Schedule::default()).unwrap();
    let first = prog.launches.first().expect("a launch");
    assert!(first.prefix_copy.is_some(), "the old rows' copy is marked");
}
