//! The tile interpreter: runs a kernel over its whole grid on host buffers.
//! Arithmetic is f64, or rounded to f32 after every float operation to model
//! what an f32 backend computes. Buffers hold what their dtype holds: a store
//! rounds to the pointer's dtype (in f64 arithmetic, only to 16-bit floats and
//! integer types, the storage formats; f32 and f64 buffers keep f64 values).

use super::*;
use crate::dtype::DType;
use crate::interp::Tensor;

/// Float arithmetic of the interpreter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    F64,
    F32,
}

/// An argument bound to a kernel parameter.
pub enum ArgValue<'a> {
    Buffer(&'a mut Vec<f64>),
    Scalar(f64),
}

/// What a run did, for tests that count work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// `2·m·n·k` per executed `dot`.
    pub dot_flops: u64,
    pub loaded: u64,
    pub stored: u64,
    pub programs: u64,
}

#[derive(Clone, Debug)]
struct Tile {
    shape: Vec<u32>,
    data: Vec<f64>,
}

struct Ctx<'k, 'a, 'b> {
    k: &'k Kernel,
    args: &'b mut [ArgValue<'a>],
    vals: Vec<Option<Tile>>,
    pid: [usize; 3],
    prec: Precision,
    stats: Stats,
}

type Res<T> = Result<T, TileError>;

/// Runs `k` once per program id of `grid`.
pub fn run_kernel(k: &Kernel, grid: [usize; 3], args: &mut [ArgValue], prec: Precision) -> Res<Stats> {
    if args.len() != k.params.len() {
        return Err(TileError::Kernel {
            kernel: k.name.clone(),
            msg: format!("{} arguments for {} parameters", args.len(), k.params.len()),
        });
    }
    let mut stats = Stats::default();
    for z in 0..grid[2] {
        for y in 0..grid[1] {
            for x in 0..grid[0] {
                let mut cx = Ctx { k, args: &mut *args, vals: vec![None; k.types.len()], pid: [x, y, z], prec, stats };
                cx.block(&k.body, &[])?;
                stats = cx.stats;
                stats.programs += 1;
            }
        }
    }
    Ok(stats)
}

fn bstrides(shape: &[u32], out: &[u32]) -> Vec<usize> {
    // Strides of `shape` (right-aligned) read along `out`, 0 where broadcast.
    let n = out.len();
    let mut own = vec![0usize; shape.len()];
    let mut acc = 1usize;
    for i in (0..shape.len()).rev() {
        own[i] = acc;
        acc *= shape[i] as usize;
    }
    (0..n)
        .map(|i| {
            let off = n - shape.len();
            if i < off || shape[i - off] == 1 {
                0
            } else {
                own[i - off]
            }
        })
        .collect()
}

fn expand(t: &Tile, out: &[u32]) -> Vec<f64> {
    if t.shape == out {
        return t.data.clone();
    }
    let st = bstrides(&t.shape, out);
    let sizes: Vec<usize> = out.iter().map(|s| *s as usize).collect();
    let mut v = Vec::with_capacity(sizes.iter().product());
    crate::interp::for_each_index_pub(&sizes, |idx| {
        let off: usize = idx.iter().zip(&st).map(|(i, s)| i * s).sum();
        v.push(t.data[off]);
    });
    v
}

impl Ctx<'_, '_, '_> {
    fn err(&self, op: &TOp, msg: String) -> TileError {
        TileError::Op { kernel: self.k.name.clone(), op: op.mnemonic(), msg }
    }

    fn get(&self, v: TValue) -> Res<&Tile> {
        self.vals
            .get(v.index())
            .and_then(|t| t.as_ref())
            .ok_or_else(|| TileError::Kernel { kernel: self.k.name.clone(), msg: format!("{v:?} has no value") })
    }

    fn round(&self, dtype: DType, x: f64) -> f64 {
        match (dtype, self.prec) {
            (DType::F64, _) => x,
            (d, Precision::F64) if d.is_float() => x,
            (d, _) => crate::interp::round_to_pub(d, x),
        }
    }

    fn set(&mut self, v: TValue, t: Tile) {
        if let Some(slot) = self.vals.get_mut(v.index()) {
            *slot = Some(t);
        }
    }

    fn block(&mut self, b: &Block, args: &[Tile]) -> Res<Vec<Tile>> {
        for (a, t) in b.args.iter().zip(args) {
            self.set(*a, t.clone());
        }
        for s in &b.stmts {
            let outs = self.stmt(s)?;
            for (r, t) in s.results.iter().zip(outs) {
                self.set(*r, t);
            }
        }
        b.yields.iter().map(|y| self.get(*y).cloned()).collect()
    }

    fn scalar(&self, v: TValue) -> Res<f64> {
        Ok(self.get(v)?.data.first().copied().unwrap_or(0.0))
    }

    fn stmt(&mut self, s: &Stmt) -> Res<Vec<Tile>> {
        let k = self.k;
        let rty = |i: usize| s.results.get(i).map(|r| k.ty(*r).clone());
        let out_ty = rty(0);
        let one = |shape: Vec<u32>, data: Vec<f64>| Ok(vec![Tile { shape, data }]);
        match &s.op {
            TOp::ProgramId(a) => one(vec![], vec![self.pid[*a as usize] as f64]),
            TOp::Param(p) => match self.args.get(p.index()) {
                Some(ArgValue::Scalar(x)) => one(vec![], vec![*x]),
                _ => Err(self.err(&s.op, format!("parameter `{}` is not bound to a scalar", k.params[p.index()].name))),
            },
            TOp::Const(c) => {
                let t = out_ty.unwrap_or(TileType::scalar(DType::F32));
                let v = self.round(t.dtype, *c);
                one(t.shape.clone(), vec![v; t.numel()])
            }
            TOp::Arange(n) => one(vec![*n], (0..*n).map(f64::from).collect()),
            TOp::Unary(f, x) => {
                let t = self.get(*x)?;
                let d = out_ty.map(|t| t.dtype).unwrap_or(DType::F32);
                let data = t.data.iter().map(|v| self.round(d, crate::interp::unary_pub(*f, *v))).collect();
                one(t.shape.clone(), data)
            }
            TOp::Binary(f, a, b) => {
                let t = out_ty.unwrap_or(TileType::scalar(DType::F32));
                let (x, y) = (expand(self.get(*a)?, &t.shape), expand(self.get(*b)?, &t.shape));
                let int = self.k.ty(*a).dtype.is_int();
                let mut data = Vec::with_capacity(x.len());
                for (p, q) in x.iter().zip(&y) {
                    let r = if int && *f == BinaryFn::Div {
                        if *q == 0.0 {
                            return Err(self.err(&s.op, "integer division by zero".into()));
                        }
                        (p / q).trunc()
                    } else {
                        crate::interp::binary_pub(*f, *p, *q)
                    };
                    data.push(self.round(t.dtype, r));
                }
                one(t.shape, data)
            }
            TOp::Select(c, a, b) => {
                let t = out_ty.unwrap_or(TileType::scalar(DType::F32));
                let cc = expand(self.get(*c)?, &t.shape);
                let (x, y) = (expand(self.get(*a)?, &t.shape), expand(self.get(*b)?, &t.shape));
                let data = cc.iter().zip(x.iter().zip(&y)).map(|(c, (x, y))| if *c != 0.0 { *x } else { *y }).collect();
                one(t.shape, data)
            }
            TOp::Cast(x, d) => {
                let t = self.get(*x)?;
                let data = t.data.iter().map(|v| crate::interp::round_to_pub(*d, *v)).collect();
                one(t.shape.clone(), data)
            }
            TOp::Broadcast(x) => {
                let shape = out_ty.map(|t| t.shape).unwrap_or_default();
                let data = expand(self.get(*x)?, &shape);
                one(shape, data)
            }
            TOp::Reshape(x) => {
                let shape = out_ty.map(|t| t.shape).unwrap_or_default();
                one(shape, self.get(*x)?.data.clone())
            }
            TOp::Transpose(x) => {
                let t = self.get(*x)?;
                let (m, n) = (t.shape[0] as usize, t.shape[1] as usize);
                let mut data = vec![0.0; m * n];
                for i in 0..m {
                    for j in 0..n {
                        data[j * m + i] = t.data[i * n + j];
                    }
                }
                one(vec![n as u32, m as u32], data)
            }
            TOp::Load { ptr, offsets, mask, other } => {
                let offs = self.get(*offsets)?.clone();
                let m = match mask {
                    Some(m) => Some(self.get(*m)?.data.clone()),
                    None => None,
                };
                let name = &k.params[ptr.index()].name;
                let Some(ArgValue::Buffer(buf)) = self.args.get(ptr.index()) else {
                    return Err(self.err(&s.op, format!("parameter `{name}` is not bound to a buffer")));
                };
                let mut data = Vec::with_capacity(offs.data.len());
                for (i, o) in offs.data.iter().enumerate() {
                    if m.as_ref().is_some_and(|m| m[i] == 0.0) {
                        data.push(*other);
                        continue;
                    }
                    if *o < 0.0 || *o as usize >= buf.len() {
                        return Err(self.err(&s.op, format!("`{name}[{o}]` is out of bounds (length {})", buf.len())));
                    }
                    data.push(buf[*o as usize]);
                }
                self.stats.loaded += data.len() as u64;
                one(offs.shape, data)
            }
            TOp::Store { ptr, offsets, value, mask } => {
                let offs = self.get(*offsets)?.clone();
                let val = self.get(*value)?.clone();
                let m = match mask {
                    Some(m) => Some(self.get(*m)?.data.clone()),
                    None => None,
                };
                let name = k.params[ptr.index()].name.clone();
                let dtype = match &k.params[ptr.index()].kind {
                    ParamKind::Ptr(d) => *d,
                    ParamKind::Scalar(d) => *d,
                };
                let prec = self.prec;
                let mut stored = 0;
                let Some(ArgValue::Buffer(buf)) = self.args.get_mut(ptr.index()) else {
                    return Err(TileError::Op {
                        kernel: k.name.clone(),
                        op: "store".into(),
                        msg: format!("parameter `{name}` is not bound to a buffer"),
                    });
                };
                for (i, o) in offs.data.iter().enumerate() {
                    if m.as_ref().is_some_and(|m| m[i] == 0.0) {
                        continue;
                    }
                    if *o < 0.0 || *o as usize >= buf.len() {
                        return Err(TileError::Op {
                            kernel: k.name.clone(),
                            op: "store".into(),
                            msg: format!("`{name}[{o}]` is out of bounds (length {})", buf.len()),
                        });
                    }
                    let v = val.data[i];
                    buf[*o as usize] =
                        if rounds_stores(dtype, prec) { crate::interp::round_to_pub(dtype, v) } else { v };
                    stored += 1;
                }
                self.stats.stored += stored;
                Ok(vec![])
            }
            TOp::Dot { a, b, acc, trans_a, trans_b } => {
                let (ta, tb) = (self.get(*a)?, self.get(*b)?);
                let (a0, a1) = (ta.shape[0] as usize, ta.shape[1] as usize);
                let (b0, b1) = (tb.shape[0] as usize, tb.shape[1] as usize);
                let (m, kk) = if *trans_a { (a1, a0) } else { (a0, a1) };
                let n = if *trans_b { b0 } else { b1 };
                let at = |i: usize, l: usize| if *trans_a { ta.data[l * a1 + i] } else { ta.data[i * a1 + l] };
                let bt = |l: usize, j: usize| if *trans_b { tb.data[j * b1 + l] } else { tb.data[l * b1 + j] };
                let mut data = match acc {
                    Some(c) => self.get(*c)?.data.clone(),
                    None => vec![0.0; m * n],
                };
                for i in 0..m {
                    for j in 0..n {
                        let mut sum = 0.0;
                        for l in 0..kk {
                            sum += at(i, l) * bt(l, j);
                        }
                        data[i * n + j] = self.round(DType::F32, data[i * n + j] + sum);
                    }
                }
                self.stats.dot_flops += 2 * (m * n * kk) as u64;
                one(vec![m as u32, n as u32], data)
            }
            TOp::Reduce { func, x, axis } => {
                let t = self.get(*x)?;
                let ax = *axis as usize;
                let outer: usize = t.shape[..ax].iter().map(|s| *s as usize).product();
                let len = t.shape[ax] as usize;
                let inner: usize = t.shape[ax + 1..].iter().map(|s| *s as usize).product();
                let d = out_ty.map(|t| t.dtype).unwrap_or(DType::F32);
                let mut data = Vec::with_capacity(outer * inner);
                for o in 0..outer {
                    for i in 0..inner {
                        let row: Vec<f64> = (0..len).map(|j| t.data[(o * len + j) * inner + i]).collect();
                        data.push(self.round(d, reduce(*func, &row)));
                    }
                }
                let mut shape = t.shape.clone();
                shape.remove(ax);
                one(shape, data)
            }
            TOp::Cumsum { x, axis, reverse, exclusive } => {
                let t = self.get(*x)?;
                let ax = *axis as usize;
                let outer: usize = t.shape[..ax].iter().map(|s| *s as usize).product();
                let len = t.shape[ax] as usize;
                let inner: usize = t.shape[ax + 1..].iter().map(|s| *s as usize).product();
                let d = out_ty.map(|t| t.dtype).unwrap_or(DType::F32);
                let mut data = t.data.clone();
                for o in 0..outer {
                    for i in 0..inner {
                        let mut acc = 0.0;
                        for step in 0..len {
                            let j = if *reverse { len - 1 - step } else { step };
                            let at = (o * len + j) * inner + i;
                            let v = t.data[at];
                            if *exclusive {
                                data[at] = acc;
                                acc = self.round(d, acc + v);
                            } else {
                                acc = self.round(d, acc + v);
                                data[at] = acc;
                            }
                        }
                    }
                }
                one(t.shape.clone(), data)
            }
            TOp::For { lo, hi, step, init, body } => {
                let (lo, hi, step) = (self.scalar(*lo)?, self.scalar(*hi)?, self.scalar(*step)?);
                if step <= 0.0 {
                    return Err(self.err(&s.op, format!("loop step {step} is not positive")));
                }
                let mut carried: Vec<Tile> = init.iter().map(|v| self.get(*v).cloned()).collect::<Res<_>>()?;
                let mut iv = lo;
                while iv < hi {
                    let mut args = vec![Tile { shape: vec![], data: vec![iv] }];
                    args.extend(carried);
                    carried = self.block(body, &args)?;
                    iv += step;
                }
                Ok(carried)
            }
            TOp::If { cond, then, otherwise } => {
                if self.scalar(*cond)? != 0.0 {
                    self.block(then, &[])
                } else {
                    self.block(otherwise, &[])
                }
            }
        }
    }
}

/// Whether values written to a buffer of `dtype` are rounded to it: always for
/// integers and 16-bit floats (storage formats), for f32 in f32 arithmetic.
pub fn rounds_stores(dtype: DType, prec: Precision) -> bool {
    !dtype.is_float() || dtype.bits() < 32 || (prec == Precision::F32 && dtype != DType::F64)
}

fn reduce(f: ReduceFn, row: &[f64]) -> f64 {
    match f {
        ReduceFn::Sum => row.iter().sum(),
        ReduceFn::Mean => row.iter().sum::<f64>() / row.len().max(1) as f64,
        ReduceFn::Max => row.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
        ReduceFn::Min => row.iter().cloned().fold(f64::INFINITY, f64::min),
        ReduceFn::LogSumExp => {
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            if m == f64::NEG_INFINITY {
                m
            } else {
                m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
            }
        }
    }
}

/// Convenience for tests: a tensor's data as a buffer.
pub fn buffer_of(t: &Tensor) -> Vec<f64> {
    t.data.clone()
}
