//! Building kernels: a builder that infers each statement's result type as it
//! is added, with closures for the bodies of loops and branches.

use super::*;
use crate::dtype::DType;

type Res<T> = Result<T, TileError>;

/// Numpy broadcasting of two static shapes.
pub fn broadcast_shapes(a: &[u32], b: &[u32]) -> Option<Vec<u32>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let x = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
        let y = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
        out[i] = match (x, y) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}

/// Infers the result types of an op (not `For`/`If`, whose types come from
/// their blocks) from the kernel's value types.
pub fn infer(k: &Kernel, op: &TOp, declared: Option<&TileType>) -> Result<Vec<TileType>, String> {
    let ty = |v: &TValue| -> Result<&TileType, String> {
        k.types.get(v.index()).ok_or_else(|| format!("value {v:?} does not exist"))
    };
    let scalar_i32 = |v: &TValue, what: &str| -> Result<(), String> {
        let t = ty(v)?;
        if t.dtype != DType::I32 || !t.shape.is_empty() {
            return Err(format!("{what} must be an i32 scalar, found {} {:?}", t.dtype, t.shape));
        }
        Ok(())
    };
    let one = |t: TileType| Ok(vec![t]);
    match op {
        TOp::ProgramId(axis) => {
            if *axis > 2 {
                return Err(format!("grid axis {axis} (0, 1 or 2)"));
            }
            one(TileType::scalar(DType::I32))
        }
        TOp::Param(p) => match k.params.get(p.index()).map(|p| &p.kind) {
            Some(ParamKind::Scalar(d)) => one(TileType::scalar(*d)),
            Some(ParamKind::Ptr(_)) => Err("a pointer parameter is not a value; use load".into()),
            None => Err(format!("parameter {p:?} does not exist")),
        },
        TOp::Const(_) => declared.cloned().map(|t| vec![t]).ok_or_else(|| "a constant needs its type".into()),
        TOp::Arange(n) => one(TileType::new(DType::I32, &[*n])),
        TOp::Unary(_, x) => one(ty(x)?.clone()),
        TOp::Binary(f, a, b) => {
            let (ta, tb) = (ty(a)?, ty(b)?);
            if ta.dtype != tb.dtype {
                return Err(format!("operands differ in dtype: {} and {}", ta.dtype, tb.dtype));
            }
            let shape = broadcast_shapes(&ta.shape, &tb.shape)
                .ok_or_else(|| format!("shapes {:?} and {:?} do not broadcast", ta.shape, tb.shape))?;
            let dtype = match f {
                BinaryFn::Lt | BinaryFn::Le | BinaryFn::Eq | BinaryFn::And | BinaryFn::Or => DType::Bool,
                _ => ta.dtype,
            };
            one(TileType { dtype, shape })
        }
        TOp::Select(c, a, b) => {
            let (tc, ta, tb) = (ty(c)?, ty(a)?, ty(b)?);
            if tc.dtype != DType::Bool || ta.dtype != tb.dtype {
                return Err("where takes a bool condition and branches of one dtype".into());
            }
            let s = broadcast_shapes(&tc.shape, &ta.shape)
                .and_then(|s| broadcast_shapes(&s, &tb.shape))
                .ok_or("shapes do not broadcast")?;
            one(TileType { dtype: ta.dtype, shape: s })
        }
        TOp::Cast(x, d) => one(TileType { dtype: *d, shape: ty(x)?.shape.clone() }),
        TOp::Broadcast(x) => {
            let to = declared.ok_or("broadcast needs its result shape")?;
            let tx = ty(x)?;
            if broadcast_shapes(&tx.shape, &to.shape).as_deref() != Some(&to.shape[..]) {
                return Err(format!("cannot broadcast {:?} to {:?}", tx.shape, to.shape));
            }
            one(TileType { dtype: tx.dtype, shape: to.shape.clone() })
        }
        TOp::Reshape(x) => {
            let to = declared.ok_or("reshape needs its result shape")?;
            let tx = ty(x)?;
            if tx.numel() != to.numel() {
                return Err(format!("cannot reshape {:?} to {:?}", tx.shape, to.shape));
            }
            one(TileType { dtype: tx.dtype, shape: to.shape.clone() })
        }
        TOp::Transpose(x) => {
            let tx = ty(x)?;
            let [m, n] = tx.shape[..] else { return Err(format!("transpose takes a 2-D tile, found {:?}", tx.shape)) };
            one(TileType::new(tx.dtype, &[n, m]))
        }
        TOp::Load { ptr, offsets, mask, .. } => {
            let Some(ParamKind::Ptr(d)) = k.params.get(ptr.index()).map(|p| &p.kind) else {
                return Err("load needs a pointer parameter".into());
            };
            let to = ty(offsets)?;
            if to.dtype != DType::I32 {
                return Err("offsets must be i32".into());
            }
            if let Some(m) = mask {
                let tm = ty(m)?;
                if tm.dtype != DType::Bool || tm.shape != to.shape {
                    return Err("mask must be bool with the offsets' shape".into());
                }
            }
            let dtype = if d.is_float() { DType::F32 } else { *d };
            one(TileType { dtype, shape: to.shape.clone() })
        }
        TOp::Store { ptr, offsets, value, mask } => {
            if !matches!(k.params.get(ptr.index()).map(|p| &p.kind), Some(ParamKind::Ptr(_))) {
                return Err("store needs a pointer parameter".into());
            }
            let (to, tv) = (ty(offsets)?, ty(value)?);
            if to.dtype != DType::I32 || tv.shape != to.shape {
                return Err(format!("offsets must be i32 of the value's shape ({:?} vs {:?})", to.shape, tv.shape));
            }
            if let Some(m) = mask {
                let tm = ty(m)?;
                if tm.dtype != DType::Bool || tm.shape != to.shape {
                    return Err("mask must be bool with the offsets' shape".into());
                }
            }
            Ok(vec![])
        }
        TOp::Dot { a, b, acc, trans_a, trans_b } => {
            let (ta, tb) = (ty(a)?, ty(b)?);
            let ([a0, a1], [b0, b1]) = (&ta.shape[..], &tb.shape[..]) else {
                return Err("dot takes 2-D tiles".into());
            };
            let (m, ka) = if *trans_a { (*a1, *a0) } else { (*a0, *a1) };
            let (kb, n) = if *trans_b { (*b1, *b0) } else { (*b0, *b1) };
            if ka != kb || !ta.dtype.is_float() || !tb.dtype.is_float() {
                return Err(format!("dot of [{m}, {ka}] and [{kb}, {n}]"));
            }
            if let Some(c) = acc {
                if ty(c)?.shape != [m, n] {
                    return Err(format!("accumulator must be [{m}, {n}]"));
                }
            }
            one(TileType::new(DType::F32, &[m, n]))
        }
        TOp::Reduce { x, axis, .. } => {
            let tx = ty(x)?;
            if *axis as usize >= tx.shape.len() {
                return Err(format!("axis {axis} of a {}-D tile", tx.shape.len()));
            }
            let mut s = tx.shape.clone();
            s.remove(*axis as usize);
            one(TileType { dtype: tx.dtype, shape: s })
        }
        TOp::Cumsum { x, axis, .. } => {
            let tx = ty(x)?;
            if *axis as usize >= tx.shape.len() {
                return Err(format!("axis {axis} of a {}-D tile", tx.shape.len()));
            }
            one(tx.clone())
        }
        TOp::For { lo, hi, step, init, body } => {
            scalar_i32(lo, "lo")?;
            scalar_i32(hi, "hi")?;
            scalar_i32(step, "step")?;
            if body.args.len() != init.len() + 1 || body.yields.len() != init.len() {
                return Err("loop body must take [iv, carried...] and yield the carried values".into());
            }
            let mut out = Vec::new();
            for (i, v) in init.iter().enumerate() {
                let t = ty(v)?.clone();
                if ty(&body.args[i + 1])? != &t || ty(&body.yields[i])? != &t {
                    return Err(format!("carried value {i} changes type in the loop"));
                }
                out.push(t);
            }
            Ok(out)
        }
        TOp::If { cond, then, otherwise } => {
            let tc = ty(cond)?;
            if tc.dtype != DType::Bool || !tc.shape.is_empty() {
                return Err("if needs a bool scalar".into());
            }
            if then.yields.len() != otherwise.yields.len() {
                return Err("the arms of an if yield different counts".into());
            }
            let mut out = Vec::new();
            for (a, b) in then.yields.iter().zip(&otherwise.yields) {
                let (x, y) = (ty(a)?, ty(b)?);
                if x != y {
                    return Err("the arms of an if yield different types".into());
                }
                out.push(x.clone());
            }
            Ok(out)
        }
    }
}

/// Builds a kernel statement by statement.
pub struct KernelBuilder {
    k: Kernel,
    stack: Vec<Vec<Stmt>>,
}

impl KernelBuilder {
    pub fn new(name: &str) -> KernelBuilder {
        KernelBuilder { k: Kernel { name: name.to_string(), ..Default::default() }, stack: vec![Vec::new()] }
    }

    pub fn kernel(&self) -> &Kernel {
        &self.k
    }

    fn err(&self, op: &TOp, msg: String) -> TileError {
        TileError::Op { kernel: self.k.name.clone(), op: op.mnemonic(), msg }
    }

    fn fresh(&mut self, t: TileType) -> TValue {
        self.k.types.push(t);
        TValue((self.k.types.len() - 1) as u32)
    }

    fn push(&mut self, stmt: Stmt) {
        if let Some(top) = self.stack.last_mut() {
            top.push(stmt);
        }
    }

    /// Adds a statement; `declared` gives the result type of ops that need one.
    pub fn emit(&mut self, op: TOp, declared: Option<TileType>) -> Res<Vec<TValue>> {
        let tys = infer(&self.k, &op, declared.as_ref()).map_err(|m| self.err(&op, m))?;
        let results: Vec<TValue> = tys.into_iter().map(|t| self.fresh(t)).collect();
        self.push(Stmt { results: results.clone(), op });
        Ok(results)
    }

    fn emit1(&mut self, op: TOp, declared: Option<TileType>) -> Res<TValue> {
        let r = self.emit(op, declared)?;
        r.first().copied().ok_or_else(|| TileError::Kernel { kernel: self.k.name.clone(), msg: "no result".into() })
    }

    pub fn ptr_param(&mut self, name: &str, dtype: DType) -> ParamId {
        self.k.params.push(Param { name: name.to_string(), kind: ParamKind::Ptr(dtype) });
        ParamId((self.k.params.len() - 1) as u32)
    }

    /// Declares a scalar parameter and returns its value.
    pub fn scalar_param(&mut self, name: &str, dtype: DType) -> Res<TValue> {
        self.k.params.push(Param { name: name.to_string(), kind: ParamKind::Scalar(dtype) });
        let p = ParamId((self.k.params.len() - 1) as u32);
        self.emit1(TOp::Param(p), None)
    }

    pub fn program_id(&mut self, axis: u8) -> Res<TValue> {
        self.emit1(TOp::ProgramId(axis), None)
    }

    pub fn constant(&mut self, value: f64, dtype: DType, shape: &[u32]) -> Res<TValue> {
        self.emit1(TOp::Const(value), Some(TileType::new(dtype, shape)))
    }

    pub fn i32(&mut self, v: i64) -> Res<TValue> {
        self.constant(v as f64, DType::I32, &[])
    }

    pub fn f32(&mut self, v: f64) -> Res<TValue> {
        self.constant(v, DType::F32, &[])
    }

    pub fn zeros(&mut self, shape: &[u32]) -> Res<TValue> {
        self.constant(0.0, DType::F32, shape)
    }

    pub fn arange(&mut self, n: u32) -> Res<TValue> {
        self.emit1(TOp::Arange(n), None)
    }

    pub fn unary(&mut self, f: UnaryFn, x: TValue) -> Res<TValue> {
        self.emit1(TOp::Unary(f, x), None)
    }

    pub fn binary(&mut self, f: BinaryFn, a: TValue, b: TValue) -> Res<TValue> {
        self.emit1(TOp::Binary(f, a, b), None)
    }

    pub fn add(&mut self, a: TValue, b: TValue) -> Res<TValue> {
        self.binary(BinaryFn::Add, a, b)
    }
    pub fn sub(&mut self, a: TValue, b: TValue) -> Res<TValue> {
        self.binary(BinaryFn::Sub, a, b)
    }
    pub fn mul(&mut self, a: TValue, b: TValue) -> Res<TValue> {
        self.binary(BinaryFn::Mul, a, b)
    }
    pub fn div(&mut self, a: TValue, b: TValue) -> Res<TValue> {
        self.binary(BinaryFn::Div, a, b)
    }
    pub fn max(&mut self, a: TValue, b: TValue) -> Res<TValue> {
        self.binary(BinaryFn::Max, a, b)
    }
    pub fn min(&mut self, a: TValue, b: TValue) -> Res<TValue> {
        self.binary(BinaryFn::Min, a, b)
    }
    pub fn lt(&mut self, a: TValue, b: TValue) -> Res<TValue> {
        self.binary(BinaryFn::Lt, a, b)
    }
    pub fn le(&mut self, a: TValue, b: TValue) -> Res<TValue> {
        self.binary(BinaryFn::Le, a, b)
    }
    pub fn and(&mut self, a: TValue, b: TValue) -> Res<TValue> {
        self.binary(BinaryFn::And, a, b)
    }
    pub fn exp(&mut self, x: TValue) -> Res<TValue> {
        self.unary(UnaryFn::Exp, x)
    }

    pub fn select(&mut self, c: TValue, a: TValue, b: TValue) -> Res<TValue> {
        self.emit1(TOp::Select(c, a, b), None)
    }

    pub fn cast(&mut self, x: TValue, d: DType) -> Res<TValue> {
        self.emit1(TOp::Cast(x, d), None)
    }

    pub fn broadcast(&mut self, x: TValue, shape: &[u32]) -> Res<TValue> {
        let dtype = self.k.ty(x).dtype;
        self.emit1(TOp::Broadcast(x), Some(TileType::new(dtype, shape)))
    }

    pub fn reshape(&mut self, x: TValue, shape: &[u32]) -> Res<TValue> {
        let dtype = self.k.ty(x).dtype;
        self.emit1(TOp::Reshape(x), Some(TileType::new(dtype, shape)))
    }

    /// `[n]` → `[n, 1]` (axis 1) or `[1, n]` (axis 0).
    pub fn expand(&mut self, x: TValue, axis: usize) -> Res<TValue> {
        let mut s = self.k.ty(x).shape.clone();
        s.insert(axis.min(s.len()), 1);
        self.reshape(x, &s)
    }

    pub fn transpose(&mut self, x: TValue) -> Res<TValue> {
        self.emit1(TOp::Transpose(x), None)
    }

    pub fn load(&mut self, ptr: ParamId, offsets: TValue, mask: Option<TValue>, other: f64) -> Res<TValue> {
        self.emit1(TOp::Load { ptr, offsets, mask, other }, None)
    }

    pub fn store(&mut self, ptr: ParamId, offsets: TValue, value: TValue, mask: Option<TValue>) -> Res<()> {
        self.emit(TOp::Store { ptr, offsets, value, mask }, None).map(|_| ())
    }

    pub fn dot(&mut self, a: TValue, b: TValue, acc: Option<TValue>, trans_a: bool, trans_b: bool) -> Res<TValue> {
        self.emit1(TOp::Dot { a, b, acc, trans_a, trans_b }, None)
    }

    pub fn reduce(&mut self, func: ReduceFn, x: TValue, axis: u32) -> Res<TValue> {
        self.emit1(TOp::Reduce { func, x, axis }, None)
    }

    pub fn cumsum(&mut self, x: TValue, axis: u32) -> Res<TValue> {
        self.emit1(TOp::Cumsum { x, axis, reverse: false, exclusive: false }, None)
    }

    /// `for iv in lo..hi step step`, carrying `init`; `body(builder, iv, carried)`
    /// returns the next carried values. Returns the final carried values.
    pub fn for_loop(
        &mut self,
        lo: TValue,
        hi: TValue,
        step: TValue,
        init: &[TValue],
        body: impl FnOnce(&mut Self, TValue, &[TValue]) -> Res<Vec<TValue>>,
    ) -> Res<Vec<TValue>> {
        let iv = self.fresh(TileType::scalar(DType::I32));
        let carried: Vec<TValue> = init.iter().map(|v| self.fresh(self.k.ty(*v).clone())).collect();
        self.stack.push(Vec::new());
        let yields = body(self, iv, &carried);
        let stmts = self.stack.pop().unwrap_or_default();
        let yields = yields?;
        let mut args = vec![iv];
        args.extend(carried);
        let block = Block { args, stmts, yields };
        self.emit(TOp::For { lo, hi, step, init: init.to_vec(), body: block }, None)
    }

    /// `if cond { then } else { otherwise }`; both closures return their yields.
    pub fn if_else(
        &mut self,
        cond: TValue,
        then: impl FnOnce(&mut Self) -> Res<Vec<TValue>>,
        otherwise: impl FnOnce(&mut Self) -> Res<Vec<TValue>>,
    ) -> Res<Vec<TValue>> {
        self.stack.push(Vec::new());
        let ty = then(self);
        let then_stmts = self.stack.pop().unwrap_or_default();
        self.stack.push(Vec::new());
        let oy = otherwise(self);
        let else_stmts = self.stack.pop().unwrap_or_default();
        let then = Block { args: vec![], stmts: then_stmts, yields: ty? };
        let otherwise = Block { args: vec![], stmts: else_stmts, yields: oy? };
        self.emit(TOp::If { cond, then, otherwise }, None)
    }

    pub fn ty(&self, v: TValue) -> &TileType {
        self.k.ty(v)
    }

    /// Finishes and verifies the kernel.
    pub fn finish(mut self) -> Res<Kernel> {
        self.k.body.stmts = self.stack.pop().unwrap_or_default();
        super::verify::verify(&self.k)?;
        Ok(self.k)
    }
}
