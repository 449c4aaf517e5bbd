//! Code generation: tile statements to Cranelift IR.
//!
//! Scalars are Cranelift variables; tiles are stack slots addressed by
//! row-major element offsets; lazy values are evaluated where consumed by
//! [`Gen::eval`], which walks the fused expression for one point of the
//! consumer's iteration space: an element, or four consecutive elements along
//! the innermost axis (`f32x4`/`i32x4`). A value's *map* says, for each of its
//! axes, which axis of the iteration space indexes it (`None`: a unit axis).

use crate::math::{select_mask, ConstPool, Fm};
use crate::plan::{self, numel, Plan, Repr};
use crate::{CpuError, Target};
use cranelift_codegen::cursor::{Cursor, FuncCursor};
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::types::{F32, F32X4, I32, I32X4, I64};
use cranelift_codegen::ir::{
    BlockArg, ConstantData, Function, InstBuilder, MemFlagsData, StackSlot, StackSlotData, StackSlotKind, Type, Value,
};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};
use mixc_ir::ops::{BinaryFn, ReduceFn, UnaryFn};
use mixc_ir::tile::{Block, Kernel, ParamKind, Stmt, TOp, TValue};
use mixc_ir::DType;
use std::collections::HashMap;

type Res<T> = Result<T, CpuError>;
type Map = Vec<Option<u8>>;
/// A value at a point: the value, its map, the indices its map reads, the vector axis.
type CacheKey = (TValue, Map, Vec<Option<Value>>, Option<usize>);
/// A loop body: (generator, induction variable, carried values) → next carried values.
type LoopBody<'f, 'a, 'k> = dyn FnMut(&mut Gen<'a, 'k>, Value, Vec<Value>) -> Res<Vec<Value>> + 'f;

/// Rows per dot micro-kernel block.
const MR: usize = 4;
/// Column vectors (accumulators) per panel of a one-row dot.
const GEMV_NV: usize = 8;

/// The operands of a dot micro-kernel: `C[i, j] (+)= Σ_l A[i·ai + l·al] · B[l·bl + j]`.
struct DotArgs {
    abase: Value,
    ai: i64,
    al: i64,
    bbase: Value,
    bl: i64,
    kk: i64,
    dst: Value,
    n: usize,
    /// Added in the epilogue, element by element.
    acc: Option<TValue>,
    /// The result's shape (for reading `acc`).
    shape: Vec<u32>,
}

/// One token of a recurrence's step form: `r1 = acc + kᵀ·v` (`k` is `[m, 1]`,
/// or `[1, m]` transposed), `r2 = q·r1` (see [`Gen::step_pair`]).
struct StepPair {
    r1: TValue,
    r2: TValue,
    k: TValue,
    trans_a: bool,
    v: TValue,
    acc: Option<TValue>,
    q: TValue,
}

/// How a step pair's update reads the state before it (see [`Gen::update_of`]).
enum Update {
    /// No accumulator: `S = kᵀ·v`.
    Zero,
    /// `S + kᵀ·v`, the state being this value.
    Add(TValue),
    /// `d ⊙ S + kᵀ·v` (state, decay), the decay one value per row or for all.
    Decay(TValue, TValue),
    /// Any other elementwise expression of the state, evaluated at each point.
    Generic(TValue),
}

/// A reduction being emitted.
struct Red {
    func: ReduceFn,
    x: TValue,
    float: bool,
    axis: usize,
    len: i64,
    /// Along the contiguous axis: vectors along the row.
    row: bool,
}

/// One point of an iteration space: an index per axis (i64), and the axis
/// whose four consecutive elements the point covers, if vectorized.
#[derive(Clone)]
pub(crate) struct Pt {
    pub idx: Vec<Value>,
    pub vaxis: Option<usize>,
}

pub(crate) fn is_float(d: DType) -> bool {
    d.is_float()
}

fn row_major(shape: &[u32]) -> Vec<i64> {
    let mut s = vec![0i64; shape.len()];
    let mut acc = 1i64;
    for i in (0..shape.len()).rev() {
        s[i] = if shape[i] == 1 { 0 } else { acc };
        acc *= shape[i] as i64;
    }
    s
}

fn identity_map(shape: &[u32]) -> Map {
    shape.iter().enumerate().map(|(i, s)| (*s != 1).then_some(i as u8)).collect()
}

/// The map of an operand broadcast (numpy rules) into a value with map `map`.
fn broadcast_map(from: &[u32], to: &[u32], map: &[Option<u8>]) -> Map {
    let off = to.len().saturating_sub(from.len());
    (0..from.len()).map(|j| if from[j] == 1 { None } else { map.get(j + off).copied().flatten() }).collect()
}

/// The map of the operand of a unit-axis reshape.
fn reshape_map(from: &[u32], to: &[u32], map: &[Option<u8>]) -> Map {
    let mut it = (0..to.len()).filter(|i| to[*i] != 1).map(|i| map.get(i).copied().flatten());
    from.iter().map(|s| if *s == 1 { None } else { it.next().flatten() }).collect()
}

fn flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

pub(crate) struct Gen<'a, 'k> {
    k: &'k Kernel,
    plan: &'a Plan<'k>,
    b: FunctionBuilder<'a>,
    slots: Vec<StackSlot>,
    pids: [Value; 3],
    vars: Vec<Option<Variable>>,
    ptrs: Vec<Option<Value>>,
    params: Vec<Option<Value>>,
    target: Target,
    /// Values evaluated at a point: keyed by the indices of the axes the
    /// value's map reads (others `None`), so that a value broadcast along an
    /// axis is computed once for all points that differ only along it.
    cache: HashMap<CacheKey, Value>,
    /// One-element lazy values evaluated once before a loop nest that reads
    /// them at every point (see [`Gen::pin_uniform`]).
    pinned: HashMap<TValue, (StackSlot, Type)>,
    pool: ConstPool,
    div_cache: HashMap<(Value, Value), (Value, Value)>,
    /// Vector booleans held as lane masks (−1 / 0) rather than 0 / 1.
    masks: std::collections::HashSet<Value>,
    /// 16 bytes that masked-off loads read and masked-off stores write.
    sink: Option<StackSlot>,
    /// Vectors per iteration of innermost loops.
    unroll: usize,
    vectorize: bool,
}

/// Builds the kernel's function body into `func`; returns the frame size.
pub(crate) fn generate(k: &Kernel, func: &mut Function, target: Target) -> Res<usize> {
    let plan = plan::plan(k).map_err(|msg| CpuError::Kernel { kernel: k.name.clone(), msg })?;
    let mut fctx = FunctionBuilderContext::new();
    let mut b = FunctionBuilder::new(func, &mut fctx);
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    b.seal_block(entry);
    let ps = b.block_params(entry).to_vec();
    let (Some(&args), Some(&px), Some(&py), Some(&pz)) = (ps.first(), ps.get(1), ps.get(2), ps.get(3)) else {
        return Err(CpuError::Kernel { kernel: k.name.clone(), msg: "bad function signature".into() });
    };
    let slots: Vec<StackSlot> = plan
        .slot_bytes
        .iter()
        .map(|n| b.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, *n, 4)))
        .collect();
    let frame = plan.slot_bytes.iter().map(|n| *n as usize).sum();
    let mut g = Gen {
        k,
        plan: &plan,
        b,
        slots,
        pids: [px, py, pz],
        vars: vec![None; k.types.len()],
        ptrs: vec![None; k.params.len()],
        params: vec![None; k.params.len()],
        target,
        cache: HashMap::new(),
        pinned: HashMap::new(),
        pool: ConstPool::default(),
        div_cache: HashMap::new(),
        masks: Default::default(),
        sink: None,
        unroll: 1,
        vectorize: crate::VECTORIZE,
    };
    for (i, p) in k.params.iter().enumerate() {
        let raw = g.b.ins().load(I64, MemFlagsData::trusted(), args, (8 * i) as i32);
        match &p.kind {
            ParamKind::Ptr(_) => g.ptrs[i] = Some(raw),
            ParamKind::Scalar(d) => {
                let lo = g.b.ins().ireduce(I32, raw);
                g.params[i] = Some(if is_float(*d) { g.b.ins().bitcast(F32, MemFlagsData::new(), lo) } else { lo });
            }
        }
    }
    let main = g.b.create_block();
    let anchor = g.b.ins().jump(main, &[]);
    g.b.switch_to_block(main);
    g.b.seal_block(main);
    g.block(&k.body)?;
    g.b.ins().return_(&[]);
    g.b.seal_all_blocks();
    let pool = std::mem::take(&mut g.pool);
    g.b.finalize(target.frontend);
    // The constant pool, stored once before the body runs.
    let mut frame = frame;
    if let Some(slot) = pool.slot {
        let bytes = 16 * pool.entries.len() as u32;
        func.sized_stack_slots[slot].size = bytes;
        frame += bytes as usize;
        let mut cur = FuncCursor::new(func).at_inst(anchor);
        for (i, bits) in pool.entries.iter().enumerate() {
            let c = cur.func.dfg.constants.insert(ConstantData::from(bits.to_le_bytes().to_vec()));
            let v = cur.ins().vconst(I32X4, c);
            cur.ins().stack_store(I64, v, slot, (16 * i) as i32);
        }
        if let Some(base) = pool.base_slot {
            let addr = cur.ins().stack_addr(I64, slot, 0);
            cur.ins().stack_store(I64, addr, base, 0);
            frame += 8;
        }
    }
    Ok(frame)
}

impl<'a, 'k> Gen<'a, 'k> {
    fn err(&self, op: &TOp, msg: impl Into<String>) -> CpuError {
        CpuError::Op { kernel: self.k.name.clone(), op: op.mnemonic(), msg: msg.into() }
    }

    fn kerr(&self, msg: impl Into<String>) -> CpuError {
        CpuError::Kernel { kernel: self.k.name.clone(), msg: msg.into() }
    }

    fn dtype(&self, v: TValue) -> DType {
        self.k.ty(v).dtype
    }

    fn shape(&self, v: TValue) -> Vec<u32> {
        self.k.ty(v).shape.clone()
    }

    fn repr(&self, v: TValue) -> Repr {
        self.plan.repr.get(v.index()).copied().unwrap_or(Repr::Scalar)
    }

    fn var(&mut self, v: TValue) -> Variable {
        if let Some(Some(x)) = self.vars.get(v.index()) {
            return *x;
        }
        let ty = if is_float(self.dtype(v)) { F32 } else { I32 };
        let x = self.b.declare_var(ty);
        if let Some(slot) = self.vars.get_mut(v.index()) {
            *slot = Some(x);
        }
        x
    }

    fn scalar(&mut self, v: TValue) -> Res<Value> {
        if self.repr(v) != Repr::Scalar {
            return Err(self.kerr(format!("%{} is not a scalar", v.0)));
        }
        let x = self.var(v);
        Ok(self.b.use_var(x))
    }

    fn set_scalar(&mut self, v: TValue, x: Value) {
        let var = self.var(v);
        self.b.def_var(var, x);
    }

    fn slot_addr(&mut self, slot: usize) -> Res<Value> {
        let s = *self.slots.get(slot).ok_or_else(|| self.kerr("missing stack slot"))?;
        Ok(self.b.ins().stack_addr(I64, s, 0))
    }

    fn tile_addr(&mut self, v: TValue) -> Res<Value> {
        let slot = self.plan.slot(v).ok_or_else(|| self.kerr(format!("%{} has no stack slot", v.0)))?;
        self.slot_addr(slot)
    }

    fn lanes(&self, x: Value) -> u32 {
        self.b.func.dfg.value_type(x).lane_count()
    }

    fn ty_of(&self, x: Value) -> Type {
        self.b.func.dfg.value_type(x)
    }

    /// Splats a scalar to four lanes.
    fn widen(&mut self, x: Value) -> Value {
        let ty = self.ty_of(x);
        if ty.is_vector() {
            return x;
        }
        let vt = if ty == F32 { F32X4 } else { I32X4 };
        self.b.ins().splat(vt, x)
    }

    fn widen_to(&mut self, x: Value, lanes: u32) -> Value {
        if lanes > 1 {
            self.widen(x)
        } else {
            x
        }
    }

    fn iota(&mut self) -> Value {
        let bits = (1u128 << 32) | (2u128 << 64) | (3u128 << 96);
        self.pool.vector(&mut self.b, I32X4, bits)
    }

    /// Forgets values computed for other points or blocks.
    fn clear_cache(&mut self) {
        self.cache.clear();
        self.div_cache.clear();
    }

    fn switch(&mut self, blk: cranelift_codegen::ir::Block) {
        self.b.switch_to_block(blk);
        self.clear_cache();
    }

    /// `for i in (start..end).step_by(step)`, carrying `carried` through the
    /// body; the body returns the next carried values. Trip counts are static.
    fn counted(
        &mut self,
        start: i64,
        end: i64,
        step: i64,
        carried: Vec<Value>,
        body: &mut LoopBody<'_, 'a, 'k>,
    ) -> Res<Vec<Value>> {
        if end <= start {
            return Ok(carried);
        }
        let trips = (end - start + step - 1) / step;
        if trips == 1 {
            let i = self.b.ins().iconst(I64, start);
            self.clear_cache();
            return body(self, i, carried);
        }
        let i0 = self.b.ins().iconst(I64, start);
        if !carried.is_empty() {
            return self.counted_carrying(i0, end, step, carried, body);
        }
        let blk = self.b.create_block();
        let exit = self.b.create_block();
        let iv = self.b.append_block_param(blk, I64);
        self.b.ins().jump(blk, &[BlockArg::Value(i0)]);
        self.switch(blk);
        body(self, iv, vec![])?;
        let next = self.b.ins().iadd_imm_s(iv, step);
        let c = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, next, end);
        self.b.ins().brif(c, blk, &[BlockArg::Value(next)], exit, &[]);
        self.b.seal_block(blk);
        self.switch(exit);
        self.b.seal_block(exit);
        Ok(vec![])
    }

    /// A counted loop with carried values, tested at the top: the body's
    /// results feed only the back edge (the exit reads the header's
    /// parameters). Were they also passed to the exit, each would have two
    /// uses, and Cranelift would treat everything computing them as used
    /// several times and fold none of their loads into instructions.
    fn counted_carrying(
        &mut self,
        i0: Value,
        end: i64,
        step: i64,
        carried: Vec<Value>,
        body: &mut LoopBody<'_, 'a, 'k>,
    ) -> Res<Vec<Value>> {
        let tys: Vec<Type> = carried.iter().map(|v| self.ty_of(*v)).collect();
        let header = self.b.create_block();
        let blk = self.b.create_block();
        let exit = self.b.create_block();
        let iv = self.b.append_block_param(header, I64);
        let ps: Vec<Value> = tys.iter().map(|t| self.b.append_block_param(header, *t)).collect();
        let args: Vec<BlockArg> = std::iter::once(i0).chain(carried).map(BlockArg::Value).collect();
        self.b.ins().jump(header, &args);
        self.switch(header);
        let c = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, iv, end);
        self.b.ins().brif(c, blk, &[], exit, &[]);
        self.switch(blk);
        self.b.seal_block(blk);
        let out = body(self, iv, ps.clone())?;
        let next = self.b.ins().iadd_imm_s(iv, step);
        let back: Vec<BlockArg> = std::iter::once(next).chain(out).map(BlockArg::Value).collect();
        self.b.ins().jump(header, &back);
        self.b.seal_block(header);
        self.switch(exit);
        self.b.seal_block(exit);
        Ok(ps)
    }

    /// Runs `f` at every point of `shape` (row-major), vectorizing the last
    /// non-unit axis in fours (with a scalar tail) when `vector` holds.
    fn for_points(&mut self, shape: &[u32], vector: bool, f: &mut dyn FnMut(&mut Self, &Pt) -> Res<()>) -> Res<()> {
        let axes: Vec<usize> = (0..shape.len()).filter(|a| shape[*a] > 1).collect();
        let zero = self.b.ins().iconst(I64, 0);
        let idx = vec![zero; shape.len()];
        self.nest(shape, &axes, 0, idx, vector, f)
    }

    fn nest(
        &mut self,
        shape: &[u32],
        axes: &[usize],
        depth: usize,
        idx: Vec<Value>,
        vector: bool,
        f: &mut dyn FnMut(&mut Self, &Pt) -> Res<()>,
    ) -> Res<()> {
        let Some(&a) = axes.get(depth) else {
            self.clear_cache();
            return f(self, &Pt { idx, vaxis: None });
        };
        let n = shape[a] as i64;
        if depth + 1 == axes.len() && vector && n >= 4 {
            let n4 = n / 4 * 4;
            // Unrolled: several vectors per iteration (more loads in flight,
            // less loop overhead), then the remaining vectors one by one.
            let u = (self.unroll as i64).clamp(1, (n4 / 4).max(1));
            let nu = n4 / (4 * u) * (4 * u);
            self.counted(0, nu, 4 * u, vec![], &mut |g, i, _| {
                for k in 0..u {
                    let mut idx = idx.clone();
                    idx[a] = if k == 0 { i } else { g.b.ins().iadd_imm_s(i, 4 * k) };
                    f(g, &Pt { idx, vaxis: Some(a) })?;
                }
                Ok(vec![])
            })?;
            self.counted(nu, n4, 4, vec![], &mut |g, i, _| {
                let mut idx = idx.clone();
                idx[a] = i;
                g.clear_cache();
                f(g, &Pt { idx, vaxis: Some(a) })?;
                Ok(vec![])
            })?;
            for t in n4..n {
                let mut idx = idx.clone();
                idx[a] = self.b.ins().iconst(I64, t);
                self.clear_cache();
                f(self, &Pt { idx, vaxis: None })?;
            }
            return Ok(());
        }
        self.counted(0, n, 1, vec![], &mut |g, i, _| {
            let mut idx = idx.clone();
            idx[a] = i;
            g.nest(shape, axes, depth + 1, idx, vector, f)?;
            Ok(vec![])
        })?;
        Ok(())
    }

    // ---- evaluation of values at a point ----

    fn def(&self, v: TValue) -> Res<&'k Stmt> {
        self.plan.def.get(v.index()).copied().flatten().ok_or_else(|| self.kerr(format!("%{} has no definition", v.0)))
    }

    /// The value of `v` at `pt`, read through `map`: a scalar, or four lanes
    /// when it depends on the point's vectorized axis.
    fn eval(&mut self, v: TValue, map: &[Option<u8>], pt: &Pt) -> Res<Value> {
        if let Some(&(slot, ty)) = self.pinned.get(&v) {
            // Read back at the use: Cranelift would otherwise move the pure
            // computation back into the loop that uses it.
            return Ok(self.b.ins().stack_load(I64, ty, slot, 0));
        }
        match self.repr(v) {
            Repr::Scalar => self.scalar(v),
            r => {
                let idx = (0..pt.idx.len()).map(|a| map.contains(&Some(a as u8)).then(|| pt.idx[a])).collect();
                let key = (v, map.to_vec(), idx, pt.vaxis);
                if let Some(x) = self.cache.get(&key) {
                    return Ok(*x);
                }
                if r == Repr::Lazy && self.dtype(v) == DType::Bool {
                    if let Some(b) = self.plan.known_bool(self.k, v) {
                        return Ok(self.b.ins().iconst(I32, b as i64));
                    }
                }
                let x = if r == Repr::Tile {
                    self.leaf(v, map, pt)?
                } else {
                    let s = self.def(v)?;
                    self.eval_op(s, v, map, pt)?
                };
                self.cache.insert(key, x);
                Ok(x)
            }
        }
    }

    /// Byte offset of the element at `pt` through `map` for a tile with
    /// `strides`, and the element stride along the vectorized axis.
    fn offset(&mut self, strides: &[i64], map: &[Option<u8>], pt: &Pt) -> (Value, i64) {
        let mut off: Option<Value> = None;
        let mut inner = 0;
        for (j, s) in strides.iter().enumerate() {
            if *s == 0 {
                continue;
            }
            let Some(Some(a)) = map.get(j) else { continue };
            let a = *a as usize;
            if Some(a) == pt.vaxis {
                inner += *s;
            }
            let Some(&i) = pt.idx.get(a) else { continue };
            let t = self.b.ins().imul_imm_s(i, s * 4);
            off = Some(match off {
                None => t,
                Some(o) => self.b.ins().iadd(o, t),
            });
        }
        let off = match off {
            Some(o) => o,
            None => self.b.ins().iconst(I64, 0),
        };
        (off, inner)
    }

    /// Loads one element, or four spaced `stride` elements apart.
    fn load_lanes(&mut self, addr: Value, float: bool, stride: i64) -> Value {
        let (sty, vty) = if float { (F32, F32X4) } else { (I32, I32X4) };
        match stride {
            0 => self.b.ins().load(sty, flags(), addr, 0),
            1 => self.b.ins().load(vty, flags(), addr, 0),
            s => {
                let x0 = self.b.ins().load(sty, flags(), addr, 0);
                let mut v = self.b.ins().splat(vty, x0);
                for l in 1..4u8 {
                    let x = self.b.ins().load(sty, flags(), addr, (l as i64 * s * 4) as i32);
                    v = self.b.ins().insertlane(v, x, l);
                }
                v
            }
        }
    }

    fn leaf(&mut self, v: TValue, map: &[Option<u8>], pt: &Pt) -> Res<Value> {
        let shape = self.shape(v);
        let float = is_float(self.dtype(v));
        let base = self.tile_addr(v)?;
        let (off, inner) = self.offset(&row_major(&shape), map, pt);
        let addr = self.b.ins().iadd(base, off);
        Ok(self.load_lanes(addr, float, inner))
    }

    /// Evaluates the op defining `v` (an elementwise op, or a view).
    fn eval_op(&mut self, s: &'k Stmt, v: TValue, map: &[Option<u8>], pt: &Pt) -> Res<Value> {
        let k = self.k;
        let vs = &k.ty(v).shape;
        let sub = |x: &TValue| broadcast_map(&k.ty(*x).shape, vs, map);
        match &s.op {
            TOp::Const(c) => Ok(self.constant(self.dtype(v), *c)),
            TOp::Arange(_) => match map.first().copied().flatten() {
                Some(a) => {
                    let a = a as usize;
                    let Some(&i) = pt.idx.get(a) else { return Err(self.err(&s.op, "index out of range")) };
                    let i = self.b.ins().ireduce(I32, i);
                    if Some(a) == pt.vaxis {
                        let sp = self.b.ins().splat(I32X4, i);
                        let io = self.iota();
                        Ok(self.b.ins().iadd(sp, io))
                    } else {
                        Ok(i)
                    }
                }
                None => Ok(self.b.ins().iconst(I32, 0)),
            },
            TOp::Unary(f, x) => {
                let xv = self.eval(*x, &sub(x), pt)?;
                let r = self.unary(*f, self.dtype(*x), xv);
                Ok(self.normalize(self.dtype(v), r))
            }
            TOp::Binary(f, a, b) => {
                let av = self.eval(*a, &sub(a), pt)?;
                let bv = self.eval(*b, &sub(b), pt)?;
                let bs = (self.lanes(bv) == 1).then_some(bv);
                let (av, bv) = self.unify(av, bv);
                let r = self.binary(*f, self.dtype(*a), av, bv, bs);
                Ok(self.normalize(self.dtype(v), r))
            }
            TOp::Select(c, a, b) => {
                let cv = self.eval(*c, &sub(c), pt)?;
                let av = self.eval(*a, &sub(a), pt)?;
                let bv = self.eval(*b, &sub(b), pt)?;
                Ok(self.select(cv, av, bv))
            }
            TOp::Cast(x, d) => {
                let xv = self.eval(*x, &sub(x), pt)?;
                Ok(self.cast(xv, self.dtype(*x), *d))
            }
            TOp::Broadcast(x) => self.eval(*x, &sub(x), pt),
            TOp::Reshape(x) => {
                let m = reshape_map(&k.ty(*x).shape, vs, map);
                self.eval(*x, &m, pt)
            }
            TOp::Transpose(x) => {
                let m = vec![map.get(1).copied().flatten(), map.first().copied().flatten()];
                self.eval(*x, &m, pt)
            }
            op => Err(self.err(op, "not an elementwise op")),
        }
    }

    /// Splats the scalar of a (scalar, vector) pair.
    fn unify(&mut self, a: Value, b: Value) -> (Value, Value) {
        let n = self.lanes(a).max(self.lanes(b));
        (self.widen_to(a, n), self.widen_to(b, n))
    }

    fn constant(&mut self, d: DType, c: f64) -> Value {
        match d {
            DType::F64 | DType::F32 => self.b.ins().f32const(c as f32),
            DType::F16 => self.b.ins().f32const(crate::math::round_host(c, 10, -14, 65504.0) as f32),
            DType::BF16 => self.b.ins().f32const(crate::math::round_host(c, 7, -126, f32::MAX as f64) as f32),
            DType::I32 => self.b.ins().iconst(I32, c.trunc().clamp(i32::MIN as f64, i32::MAX as f64) as i64),
            DType::I8 => self.b.ins().iconst(I32, c.trunc().clamp(-128.0, 127.0) as i64),
            DType::I4 => self.b.ins().iconst(I32, c.trunc().clamp(-8.0, 7.0) as i64),
            DType::Bool => self.b.ins().iconst(I32, (c != 0.0) as i64),
        }
    }

    /// A 0/1 i32 (or i32x4) from a comparison mask.
    /// A boolean from a comparison mask: 0/1 for scalars; vectors stay lane
    /// masks (see [`Gen::bool01`]).
    fn as_bool(&mut self, m: Value) -> Value {
        if self.ty_of(m).is_vector() {
            self.masks.insert(m);
            m
        } else {
            self.b.ins().uextend(I32, m)
        }
    }

    /// A boolean as 0/1 (lane masks converted), for arithmetic and memory.
    fn bool01(&mut self, x: Value) -> Value {
        if self.masks.contains(&x) {
            self.b.ins().ushr_imm_s(x, 31)
        } else {
            x
        }
    }

    /// A mask: `x != 0`.
    fn truthy(&mut self, x: Value) -> Value {
        if self.masks.contains(&x) {
            return x;
        }
        if self.ty_of(x).lane_type() == F32 {
            let z = self.fconst_like(x, 0.0);
            self.b.ins().fcmp(FloatCC::NotEqual, x, z)
        } else {
            let z = self.iconst_like(x, 0);
            self.b.ins().icmp(IntCC::NotEqual, x, z)
        }
    }

    /// Rounds a result to what its dtype holds (storage-format floats,
    /// narrow integers, bools).
    fn normalize(&mut self, d: DType, x: Value) -> Value {
        let fma = self.target.fma;
        match d {
            DType::F16 => Fm::new(&mut self.b, &mut self.pool, fma, x).round_f16(x),
            DType::BF16 => Fm::new(&mut self.b, &mut self.pool, fma, x).round_bf16(x),
            DType::Bool => {
                let m = self.truthy(x);
                self.as_bool(m)
            }
            DType::I8 => self.clamp_int(x, -128, 127),
            DType::I4 => self.clamp_int(x, -8, 7),
            _ => x,
        }
    }

    fn clamp_int(&mut self, x: Value, lo: i64, hi: i64) -> Value {
        let l = self.iconst_like(x, lo);
        let h = self.iconst_like(x, hi);
        let x = self.b.ins().smax(x, l);
        self.b.ins().smin(x, h)
    }

    fn fconst_like(&mut self, x: Value, c: f32) -> Value {
        if self.lanes(x) > 1 {
            self.pool.f32x4(&mut self.b, c)
        } else {
            self.b.ins().f32const(c)
        }
    }

    fn iconst_like(&mut self, x: Value, c: i64) -> Value {
        if self.lanes(x) > 1 {
            self.pool.i32x4(&mut self.b, c as i32)
        } else {
            self.b.ins().iconst(I32, c)
        }
    }

    /// Rust's `f32::max`/`min`: a NaN operand yields the other.
    fn fmax_rust(&mut self, a: Value, b: Value, max: bool) -> Value {
        // `a < b` / `b < a`: the forms x86 lowers to maxps / minps.
        let better =
            if max { self.b.ins().fcmp(FloatCC::LessThan, a, b) } else { self.b.ins().fcmp(FloatCC::LessThan, b, a) };
        let r = select_mask(&mut self.b, better, b, a);
        let nan = self.b.ins().fcmp(FloatCC::Unordered, a, a);
        select_mask(&mut self.b, nan, b, r)
    }

    fn unary(&mut self, f: UnaryFn, d: DType, x: Value) -> Value {
        let fma = self.target.fma;
        if !is_float(d) {
            let x = if f == UnaryFn::Not { x } else { self.bool01(x) };
            return match f {
                UnaryFn::Neg => self.b.ins().ineg(x),
                UnaryFn::Abs => self.b.ins().iabs(x),
                UnaryFn::Relu => {
                    let z = self.iconst_like(x, 0);
                    self.b.ins().smax(x, z)
                }
                UnaryFn::Round | UnaryFn::Floor => x,
                UnaryFn::Not => {
                    let z = self.iconst_like(x, 0);
                    let m = self.b.ins().icmp(IntCC::Equal, x, z);
                    self.as_bool(m)
                }
                _ => {
                    // Through f32, truncating back as the interpreter's rounding does.
                    let fty = if self.ty_of(x).is_vector() { F32X4 } else { F32 };
                    let xf = self.b.ins().fcvt_from_sint(fty, x);
                    let r = self.unary(f, DType::F32, xf);
                    let ity = self.ty_of(x);
                    self.b.ins().fcvt_to_sint_sat(ity, r)
                }
            };
        }
        let mut m = Fm::new(&mut self.b, &mut self.pool, fma, x);
        match f {
            UnaryFn::Neg => m.b.ins().fneg(x),
            UnaryFn::Abs => m.b.ins().fabs(x),
            UnaryFn::Exp => m.exp(x),
            UnaryFn::Log => m.log(x),
            UnaryFn::Sqrt => m.b.ins().sqrt(x),
            UnaryFn::Rsqrt => {
                let s = m.b.ins().sqrt(x);
                let one = m.f(1.0);
                m.div(one, s)
            }
            UnaryFn::Recip => {
                let one = m.f(1.0);
                m.div(one, x)
            }
            UnaryFn::Sigmoid => m.sigmoid(x),
            UnaryFn::LogSigmoid => m.logsigmoid(x),
            UnaryFn::Softplus => m.softplus(x),
            UnaryFn::Silu => {
                let s = m.sigmoid(x);
                m.mul(x, s)
            }
            UnaryFn::Elu | UnaryFn::EluPlusOne => {
                let zero = m.f(0.0);
                let pos = m.cmp(FloatCC::LessThan, zero, x);
                if f == UnaryFn::Elu {
                    let e = m.expm1(x);
                    m.sel(pos, x, e)
                } else {
                    let e = m.exp(x);
                    let one = m.f(1.0);
                    let x1 = m.add(x, one);
                    m.sel(pos, x1, e)
                }
            }
            UnaryFn::Relu => {
                let zero = m.f(0.0);
                let pos = m.cmp(FloatCC::LessThan, zero, x);
                m.sel(pos, x, zero)
            }
            UnaryFn::Tanh => m.tanh(x),
            UnaryFn::Sin => m.sincos(x, false),
            UnaryFn::Cos => m.sincos(x, true),
            UnaryFn::Round => m.round(x),
            UnaryFn::Floor => m.b.ins().floor(x),
            UnaryFn::Not => {
                let zero = m.f(0.0);
                let one = m.f(1.0);
                let is0 = m.cmp(FloatCC::Equal, x, zero);
                m.sel(is0, one, zero)
            }
        }
    }

    fn binary(&mut self, f: BinaryFn, d: DType, a: Value, b: Value, bs: Option<Value>) -> Value {
        let fma = self.target.fma;
        if is_float(d) {
            return match f {
                BinaryFn::Add => self.b.ins().fadd(a, b),
                BinaryFn::Sub => self.b.ins().fsub(a, b),
                BinaryFn::Mul => self.b.ins().fmul(a, b),
                BinaryFn::Div => self.b.ins().fdiv(a, b),
                BinaryFn::Max => self.fmax_rust(a, b, true),
                BinaryFn::Min => self.fmax_rust(a, b, false),
                BinaryFn::Pow => Fm::new(&mut self.b, &mut self.pool, fma, a).pow(a, b),
                BinaryFn::Rem => {
                    let q = self.b.ins().fdiv(a, b);
                    let q = self.b.ins().floor(q);
                    let p = self.b.ins().fmul(b, q);
                    self.b.ins().fsub(a, p)
                }
                BinaryFn::FloorDiv => {
                    let q = self.b.ins().fdiv(a, b);
                    self.b.ins().floor(q)
                }
                BinaryFn::Lt | BinaryFn::Le | BinaryFn::Eq => {
                    let cc = match f {
                        BinaryFn::Lt => FloatCC::LessThan,
                        BinaryFn::Le => FloatCC::LessThanOrEqual,
                        _ => FloatCC::Equal,
                    };
                    let m = self.b.ins().fcmp(cc, a, b);
                    self.as_bool(m)
                }
                BinaryFn::And | BinaryFn::Or => {
                    let (ma, mb) = (self.truthy(a), self.truthy(b));
                    let m = if f == BinaryFn::And { self.b.ins().band(ma, mb) } else { self.b.ins().bor(ma, mb) };
                    self.as_bool(m)
                }
            };
        }
        let (a, b) = if matches!(f, BinaryFn::And | BinaryFn::Or) { (a, b) } else { (self.bool01(a), self.bool01(b)) };
        match f {
            BinaryFn::Add => self.b.ins().iadd(a, b),
            BinaryFn::Sub => self.b.ins().isub(a, b),
            BinaryFn::Mul => self.b.ins().imul(a, b),
            BinaryFn::Max => self.b.ins().smax(a, b),
            BinaryFn::Min => self.b.ins().smin(a, b),
            BinaryFn::Div | BinaryFn::Rem | BinaryFn::FloorDiv => self.int_div(f, a, b, bs),
            BinaryFn::Pow => {
                let fty = if self.ty_of(a).is_vector() { F32X4 } else { F32 };
                let af = self.b.ins().fcvt_from_sint(fty, a);
                let bf = self.b.ins().fcvt_from_sint(fty, b);
                let r = Fm::new(&mut self.b, &mut self.pool, fma, af).pow(af, bf);
                let r = self.b.ins().nearest(r);
                let ity = self.ty_of(a);
                self.b.ins().fcvt_to_sint_sat(ity, r)
            }
            BinaryFn::Lt | BinaryFn::Le | BinaryFn::Eq => {
                let cc = match f {
                    BinaryFn::Lt => IntCC::SignedLessThan,
                    BinaryFn::Le => IntCC::SignedLessThanOrEqual,
                    _ => IntCC::Equal,
                };
                let m = self.b.ins().icmp(cc, a, b);
                self.as_bool(m)
            }
            BinaryFn::And | BinaryFn::Or => {
                let (ma, mb) = (self.truthy(a), self.truthy(b));
                let m = if f == BinaryFn::And { self.b.ins().band(ma, mb) } else { self.b.ins().bor(ma, mb) };
                self.as_bool(m)
            }
        }
    }

    /// Integer division (truncating `div`, flooring `floordiv`, `rem` with the
    /// divisor's sign). Division by zero gives 0 (`rem`: the dividend); never
    /// traps; `MIN / −1` wraps. `bs` is the divisor as a scalar, when it is one.
    fn int_div(&mut self, f: BinaryFn, a: Value, b: Value, bs: Option<Value>) -> Value {
        let (q, r) = self.divmod(a, b, bs);
        match f {
            BinaryFn::FloorDiv => q,
            BinaryFn::Rem => r,
            _ => {
                // Truncation differs from flooring when the quotient is negative and inexact.
                let z = self.iconst_like(a, 0);
                let rnz = self.b.ins().icmp(IntCC::NotEqual, r, z);
                let x = self.b.ins().bxor(a, b);
                let neg = self.b.ins().icmp(IntCC::SignedLessThan, x, z);
                let bnz = self.b.ins().icmp(IntCC::NotEqual, b, z);
                let adj = self.b.ins().band(rnz, neg);
                let adj = self.b.ins().band(adj, bnz);
                if self.ty_of(a).is_vector() {
                    self.b.ins().isub(q, adj)
                } else {
                    let adj = self.b.ins().uextend(I32, adj);
                    self.b.ins().iadd(q, adj)
                }
            }
        }
    }

    /// Floor quotient and remainder, shared by `div`, `floordiv` and `rem` of
    /// the same operands.
    fn divmod(&mut self, a: Value, b: Value, bs: Option<Value>) -> (Value, Value) {
        if let Some(x) = self.div_cache.get(&(a, b)) {
            return *x;
        }
        let out = if !self.ty_of(a).is_vector() {
            self.divmod_scalar(a, b)
        } else if let (Some(bs), true) = (bs, self.target.x86) {
            self.divmod_f64(a, bs)
        } else {
            self.divmod_lanes(a, b)
        };
        self.div_cache.insert((a, b), out);
        out
    }

    fn divmod_lanes(&mut self, a: Value, b: Value) -> (Value, Value) {
        let (mut q, mut r) = (a, a);
        for l in 0..4u8 {
            let al = self.b.ins().extractlane(a, l);
            let bl = self.b.ins().extractlane(b, l);
            let (ql, rl) = self.divmod_scalar(al, bl);
            q = self.b.ins().insertlane(q, ql, l);
            r = self.b.ins().insertlane(r, rl, l);
        }
        (q, r)
    }

    fn divmod_scalar(&mut self, a: Value, b: Value) -> (Value, Value) {
        let zero = self.b.ins().iconst(I32, 0);
        let one = self.b.ins().iconst(I32, 1);
        let bz = self.b.ins().icmp_imm_s(IntCC::Equal, b, 0);
        let bm1 = self.b.ins().icmp_imm_s(IntCC::Equal, b, -1);
        let bad = self.b.ins().bor(bz, bm1);
        let bs = self.b.ins().select(bad, one, b);
        let q = self.b.ins().sdiv(a, bs);
        let na = self.b.ins().ineg(a);
        let q = self.b.ins().select(bm1, na, q);
        let q = self.b.ins().select(bz, zero, q);
        let qb = self.b.ins().imul(q, b);
        let r = self.b.ins().isub(a, qb);
        let rnz = self.b.ins().icmp_imm_s(IntCC::NotEqual, r, 0);
        let x = self.b.ins().bxor(r, b);
        let diff = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, x, 0);
        let adj = self.b.ins().band(rnz, diff);
        let bnz = self.b.ins().icmp_imm_s(IntCC::NotEqual, b, 0);
        let adj = self.b.ins().band(adj, bnz);
        let q1 = self.b.ins().iadd_imm_s(q, -1);
        let rb = self.b.ins().iadd(r, b);
        (self.b.ins().select(adj, q1, q), self.b.ins().select(adj, rb, r))
    }

    /// `floor(a / b)` and `a − b·floor(a / b)` for four lanes and a scalar
    /// `b`, without branches: the quotient through f64 is exact or one below
    /// (only when the division is exact), which one correction step fixes;
    /// `b = 0` gives (0, a).
    fn divmod_f64(&mut self, a: Value, b: Value) -> (Value, Value) {
        use cranelift_codegen::ir::types::{F64, F64X2, I64X2, I8X16};
        let le = MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
        let bf = self.b.ins().fcvt_from_sint(F64, b);
        let one = self.b.ins().f64const(1.0);
        let inv = self.b.ins().fdiv(one, bf);
        let inv = self.b.ins().splat(F64X2, inv);
        let bytes = |v: &[u8]| ConstantData::from(v.to_vec());
        let hi_mask =
            self.b.func.dfg.immediates.push(bytes(&[8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15]));
        let cat_mask =
            self.b.func.dfg.immediates.push(bytes(&[0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23]));
        let a8 = self.b.ins().bitcast(I8X16, le, a);
        let hi8 = self.b.ins().shuffle(a8, a8, hi_mask);
        let hi = self.b.ins().bitcast(I32X4, le, hi8);
        let zero_c = self.b.func.dfg.constants.insert(ConstantData::from(vec![0u8; 16]));
        let mut halves = Vec::new();
        for h in [a, hi] {
            let w = self.b.ins().swiden_low(h);
            let f = self.b.ins().fcvt_from_sint(F64X2, w);
            let p = self.b.ins().fmul(f, inv);
            let p = self.b.ins().floor(p);
            let t = self.b.ins().x86_cvtt2dq(I64X2, p);
            let z = self.b.ins().vconst(I64X2, zero_c);
            halves.push(self.b.ins().snarrow(t, z));
        }
        let l8 = self.b.ins().bitcast(I8X16, le, halves[0]);
        let h8 = self.b.ins().bitcast(I8X16, le, halves[1]);
        let q8 = self.b.ins().shuffle(l8, h8, cat_mask);
        let q = self.b.ins().bitcast(I32X4, le, q8);
        let bv = self.b.ins().splat(I32X4, b);
        let qb = self.b.ins().imul(q, bv);
        let r = self.b.ins().isub(a, qb);
        // r is the remainder, or b (then the quotient is one short).
        let short = self.b.ins().icmp(IntCC::Equal, r, bv);
        let q = self.b.ins().isub(q, short);
        let sub = self.b.ins().band(bv, short);
        let r = self.b.ins().isub(r, sub);
        // b = 0: (0, a).
        let bz = self.b.ins().icmp_imm_s(IntCC::Equal, b, 0);
        let zero = self.iconst_like(a, 0);
        let q = self.b.ins().select(bz, zero, q);
        let r = self.b.ins().select(bz, a, r);
        (q, r)
    }

    /// `where(c, a, b)` with `c` a 0/1 value.
    fn select(&mut self, c: Value, a: Value, b: Value) -> Value {
        let both = self.masks.contains(&a) && self.masks.contains(&b);
        let (a, b) = if both { (a, b) } else { (self.bool01(a), self.bool01(b)) };
        let (a, b) = self.unify(a, b);
        if self.lanes(c) == 1 {
            return self.b.ins().select(c, a, b);
        }
        let a = self.widen(a);
        let b = self.widen(b);
        let m = self.truthy(c);
        let r = select_mask(&mut self.b, m, a, b);
        if both {
            self.masks.insert(r);
        }
        r
    }

    fn cast(&mut self, x: Value, from: DType, to: DType) -> Value {
        if from == DType::Bool && to == DType::Bool {
            return x;
        }
        let x = if is_float(from) { x } else { self.bool01(x) };
        let vector = self.ty_of(x).is_vector();
        let (fty, ity) = if vector { (F32X4, I32X4) } else { (F32, I32) };
        match (is_float(from), is_float(to)) {
            (true, true) => self.normalize(to, x),
            (false, true) => {
                let f = self.b.ins().fcvt_from_sint(fty, x);
                self.normalize(to, f)
            }
            (true, false) => {
                if to == DType::Bool {
                    let m = self.truthy(x);
                    return self.as_bool(m);
                }
                let i = self.b.ins().fcvt_to_sint_sat(ity, x);
                self.normalize(to, i)
            }
            (false, false) => self.normalize(to, x),
        }
    }

    // ---- statements ----

    fn block(&mut self, b: &'k Block) -> Res<()> {
        let mut i = 0;
        while let Some(s) = b.stmts.get(i) {
            if self.target.fma && self.target.x86 {
                let (pairs, used) = self.step_chain(&b.stmts[i..]);
                if !pairs.is_empty() {
                    self.emit_step_chain(&pairs)?;
                    i += used;
                    continue;
                }
            }
            self.stmt(s)?;
            i += 1;
        }
        Ok(())
    }

    fn point0(&mut self, rank: usize) -> Pt {
        let zero = self.b.ins().iconst(I64, 0);
        Pt { idx: vec![zero; rank], vaxis: None }
    }

    fn stmt(&mut self, s: &'k Stmt) -> Res<()> {
        let first = s.results.first().copied();
        match &s.op {
            TOp::ProgramId(a) => {
                let x = *self.pids.get(*a as usize).ok_or_else(|| self.err(&s.op, "grid axis out of range"))?;
                if let Some(r) = first {
                    self.set_scalar(r, x);
                }
                Ok(())
            }
            TOp::Param(p) => {
                let x = self.params.get(p.index()).copied().flatten().ok_or_else(|| self.err(&s.op, "not a scalar"))?;
                if let Some(r) = first {
                    self.set_scalar(r, x);
                }
                Ok(())
            }
            TOp::For { lo, hi, step, init, body } => self.emit_for(s, *lo, *hi, *step, init, body),
            TOp::If { cond, then, otherwise } => self.emit_if(s, *cond, then, otherwise),
            TOp::Load { ptr, offsets, mask, other } => self.emit_load(s, ptr.index(), *offsets, *mask, *other),
            TOp::Store { ptr, offsets, value, mask } => self.emit_store(s, ptr.index(), *offsets, *value, *mask),
            TOp::Dot { a, b, acc, trans_a, trans_b } => self.emit_dot(s, *a, *b, *acc, *trans_a, *trans_b),
            TOp::Reduce { func, x, axis } => self.emit_reduce(s, *func, *x, *axis as usize),
            TOp::Cumsum { x, axis, reverse, exclusive } => {
                self.emit_cumsum(s, *x, *axis as usize, *reverse, *exclusive)
            }
            _ => {
                let Some(r) = first else { return Ok(()) };
                match self.repr(r) {
                    Repr::Lazy => Ok(()),
                    Repr::Scalar => {
                        self.clear_cache();
                        let pt = self.point0(self.shape(r).len());
                        let map: Map = vec![None; self.shape(r).len()];
                        let x = self.eval_op(s, r, &map, &pt)?;
                        self.set_scalar(r, x);
                        Ok(())
                    }
                    Repr::Tile => {
                        if let TOp::Reshape(x) = &s.op {
                            if self.plan.root(*x) == self.plan.root(r) && self.repr(*x) == Repr::Tile {
                                return Ok(()); // an alias of its operand's slot
                            }
                        }
                        let dst = self.tile_addr(r)?;
                        self.materialize(r, dst, Some(s))
                    }
                }
            }
        }
    }

    /// Writes `v` row-major at `dst` (through its defining op when `via`).
    fn materialize(&mut self, v: TValue, dst: Value, via: Option<&'k Stmt>) -> Res<()> {
        let shape = self.shape(v);
        let strides = row_major(&shape);
        let map = identity_map(&shape);
        let vector = self.vectorize;
        self.for_points(&shape, vector, &mut |g, pt| {
            let x = match via {
                Some(s) => g.eval_op(s, v, &map, pt)?,
                None => g.eval(v, &map, pt)?,
            };
            g.put(dst, &strides, &map, pt, x);
            Ok(())
        })
    }

    /// Stores `x` (widened to the point's lanes) into a tile at `pt`.
    fn put(&mut self, dst: Value, strides: &[i64], map: &[Option<u8>], pt: &Pt, x: Value) {
        let (off, _) = self.offset(strides, map, pt);
        let addr = self.b.ins().iadd(dst, off);
        let x = self.bool01(x);
        let x = if pt.vaxis.is_some() { self.widen(x) } else { x };
        self.b.ins().store(flags(), x, addr, 0);
    }

    fn emit_for(
        &mut self,
        s: &'k Stmt,
        lo: TValue,
        hi: TValue,
        step: TValue,
        init: &[TValue],
        body: &'k Block,
    ) -> Res<()> {
        let (Some(&ivv), carried) = (body.args.first(), body.args.get(1..).unwrap_or(&[])) else {
            return Err(self.err(&s.op, "loop body without an induction variable"));
        };
        let lo = self.scalar(lo)?;
        let hi = self.scalar(hi)?;
        let step = self.scalar(step)?;
        for (c, v) in carried.iter().zip(init) {
            self.assign(*c, *v)?;
        }
        let iv = self.var(ivv);
        self.b.def_var(iv, lo);
        let step_ok = self.b.ins().icmp_imm_s(IntCC::SignedGreaterThan, step, 0);
        let header = self.b.create_block();
        let body_blk = self.b.create_block();
        let exit = self.b.create_block();
        self.b.ins().jump(header, &[]);
        self.switch(header);
        let i = self.b.use_var(iv);
        let more = self.b.ins().icmp(IntCC::SignedLessThan, i, hi);
        let go = self.b.ins().band(more, step_ok);
        self.b.ins().brif(go, body_blk, &[], exit, &[]);
        self.switch(body_blk);
        self.b.seal_block(body_blk);
        self.block(body)?;
        self.yields(s, carried, &body.yields)?;
        let i = self.b.use_var(iv);
        let next = self.b.ins().iadd(i, step);
        self.b.def_var(iv, next);
        self.b.ins().jump(header, &[]);
        self.b.seal_block(header);
        self.switch(exit);
        self.b.seal_block(exit);
        for (r, c) in s.results.iter().zip(carried) {
            if self.repr(*r) == Repr::Scalar {
                let x = self.scalar(*c)?;
                self.set_scalar(*r, x);
            }
        }
        Ok(())
    }

    /// Copies `v` into the storage of `dst` (a carried value or an if result).
    fn assign(&mut self, dst: TValue, v: TValue) -> Res<()> {
        if self.repr(dst) == Repr::Scalar {
            self.clear_cache();
            let pt = self.point0(self.shape(v).len());
            let map: Map = vec![None; self.shape(v).len()];
            let x = self.eval(v, &map, &pt)?;
            self.set_scalar(dst, x);
            return Ok(());
        }
        if self.repr(v) == Repr::Tile && self.plan.root(v) == self.plan.root(dst) {
            return Ok(());
        }
        let addr = self.tile_addr(dst)?;
        self.materialize(v, addr, None)
    }

    /// The end of a loop body: yields into the carried slots, through
    /// temporaries where a yield reads a slot that another yield overwrites.
    fn yields(&mut self, s: &'k Stmt, carried: &[TValue], yields: &[TValue]) -> Res<()> {
        let hazards = self.plan.hazardous_yields(self.k, carried, yields);
        let temps = self.plan.temps(s).to_vec();
        let mut scalars = Vec::new();
        for (c, y) in carried.iter().zip(yields) {
            if self.repr(*c) == Repr::Scalar {
                self.clear_cache();
                let pt = self.point0(self.shape(*y).len());
                let map: Map = vec![None; self.shape(*y).len()];
                let x = self.eval(*y, &map, &pt)?;
                scalars.push((*c, x));
            }
        }
        let mut staged = Vec::new();
        for (t, i) in hazards.iter().enumerate() {
            let slot = *temps.get(t).ok_or_else(|| self.err(&s.op, "missing temporary"))?;
            let addr = self.slot_addr(slot)?;
            self.materialize(yields[*i], addr, None)?;
            staged.push((*i, addr));
        }
        for (i, (c, y)) in carried.iter().zip(yields).enumerate() {
            if self.repr(*c) == Repr::Scalar || hazards.contains(&i) {
                continue;
            }
            self.assign(*c, *y)?;
        }
        for (i, src) in staged {
            let dst = self.tile_addr(carried[i])?;
            let bytes = numel(&self.shape(carried[i])) as i64 * 4;
            self.copy_bytes(dst, src, bytes)?;
        }
        for (c, x) in scalars {
            self.set_scalar(c, x);
        }
        Ok(())
    }

    /// Copies `bytes` (a multiple of 4) from `src` to `dst` (addresses):
    /// 16-byte loads and stores, four to a loop turn where the length
    /// allows, so that many are in flight (a row copied between a tile and
    /// memory usually waits on DRAM), the rest 4 bytes at a time.
    fn copy_bytes(&mut self, dst: Value, src: Value, bytes: i64) -> Res<()> {
        let n16 = bytes / 16 * 16;
        let u: i64 = if n16 % 64 == 0 { 4 } else { 1 };
        self.counted(0, n16, 16 * u, vec![], &mut |g, i, _| {
            let s = g.b.ins().iadd(src, i);
            let d = g.b.ins().iadd(dst, i);
            for t in 0..u {
                let x = g.b.ins().load(I32X4, flags(), s, (16 * t) as i32);
                g.b.ins().store(flags(), x, d, (16 * t) as i32);
            }
            Ok(vec![])
        })?;
        for o in (n16..bytes).step_by(4) {
            let x = self.b.ins().load(I32, flags(), src, o as i32);
            self.b.ins().store(flags(), x, dst, o as i32);
        }
        Ok(())
    }

    fn emit_if(&mut self, s: &'k Stmt, cond: TValue, then: &'k Block, otherwise: &'k Block) -> Res<()> {
        let c = self.scalar(cond)?;
        let tb = self.b.create_block();
        let eb = self.b.create_block();
        let merge = self.b.create_block();
        self.b.ins().brif(c, tb, &[], eb, &[]);
        for (blk, arm) in [(tb, then), (eb, otherwise)] {
            self.switch(blk);
            self.b.seal_block(blk);
            self.block(arm)?;
            for (r, y) in s.results.iter().zip(&arm.yields) {
                self.assign(*r, *y)?;
            }
            self.b.ins().jump(merge, &[]);
        }
        self.switch(merge);
        self.b.seal_block(merge);
        Ok(())
    }

    /// The address of element `off` (an i32) of a buffer.
    fn elem_addr(&mut self, base: Value, off: Value) -> Value {
        let o = self.b.ins().sextend(I64, off);
        let o = self.b.ins().ishl_imm_s(o, 2);
        self.b.ins().iadd(base, o)
    }

    /// The address of a private 16-byte scratch: masked-off accesses go there,
    /// so that masks need no branches and buffers are never touched.
    fn sink_addr(&mut self) -> Value {
        let slot = match self.sink {
            Some(s) => s,
            None => {
                let s = self.b.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, 16, 4));
                self.sink = Some(s);
                s
            }
        };
        self.b.ins().stack_addr(I64, slot, 0)
    }

    /// `m ? &buf[off] : sink`.
    fn masked_addr(&mut self, base: Value, off: Value, m: Value) -> Value {
        let addr = self.elem_addr(base, off);
        let sink = self.sink_addr();
        self.b.ins().select(m, addr, sink)
    }

    /// `m ? buf[off] : other` (one element, or four from `off` on), touching
    /// the buffer only when `m` holds.
    fn guarded_load(&mut self, base: Value, off: Value, m: Option<Value>, other: Value) -> Value {
        let ty = self.ty_of(other);
        let Some(m) = m else {
            let addr = self.elem_addr(base, off);
            return self.b.ins().load(ty, flags(), addr, 0);
        };
        let addr = self.masked_addr(base, off, m);
        let x = self.b.ins().load(ty, flags(), addr, 0);
        self.b.ins().select(m, x, other)
    }

    fn guarded_store(&mut self, base: Value, off: Value, m: Option<Value>, x: Value) {
        let addr = match m {
            Some(m) => self.masked_addr(base, off, m),
            None => self.elem_addr(base, off),
        };
        self.b.ins().store(flags(), x, addr, 0);
    }

    /// Whether four offsets are consecutive and (if masked) all enabled.
    fn dense_lanes(&mut self, off: Value, m: Option<Value>) -> (Value, Value) {
        let off0 = self.b.ins().extractlane(off, 0);
        let sp = self.b.ins().splat(I32X4, off0);
        let io = self.iota();
        let want = self.b.ins().iadd(sp, io);
        let eq = self.b.ins().icmp(IntCC::Equal, off, want);
        let mut ok = self.b.ins().vall_true(eq);
        if let Some(m) = m {
            let mm = self.truthy(m);
            let all = self.b.ins().vall_true(mm);
            ok = self.b.ins().band(ok, all);
        }
        (ok, off0)
    }

    /// Passes values through a block parameter, so that what computes them
    /// stays before a branch instead of being sunk into each arm.
    fn pin(&mut self, vals: &[Value]) -> Vec<Value> {
        let blk = self.b.create_block();
        let mut out = Vec::new();
        for v in vals {
            let t = self.ty_of(*v);
            out.push(self.b.append_block_param(blk, t));
        }
        for (v, o) in vals.iter().zip(&out) {
            if self.masks.contains(v) {
                self.masks.insert(*o);
            }
        }
        let args: Vec<BlockArg> = vals.iter().copied().map(BlockArg::Value).collect();
        self.b.ins().jump(blk, &args);
        self.b.switch_to_block(blk);
        self.b.seal_block(blk);
        out
    }

    /// A mask operand: `None` when it always holds, `Some(None)` when it never does.
    fn mask_of(&self, mask: Option<TValue>) -> Option<Option<TValue>> {
        match mask {
            None => Some(None),
            Some(m) => match self.plan.known_bool(self.k, m) {
                Some(true) => Some(None),
                Some(false) => None,
                None => Some(Some(m)),
            },
        }
    }

    /// Whether the offsets of a vectorized point are consecutive (statically).
    fn contiguous(&self, offsets: TValue, map: &[Option<u8>], pt: &Pt) -> bool {
        pt.vaxis.is_some_and(|a| self.plan.inner_coef(self.k, offsets, map, a) == Some(1))
    }

    fn load_point(
        &mut self,
        base: Value,
        offsets: TValue,
        mask: Option<TValue>,
        other: Value,
        map: &[Option<u8>],
        pt: &Pt,
    ) -> Res<Value> {
        let Some(mask) = self.mask_of(mask) else { return Ok(other) };
        let m = match mask {
            Some(m) => Some(self.eval(m, map, pt)?),
            None => None,
        };
        let vty = if self.ty_of(other) == F32 { F32X4 } else { I32X4 };
        let contiguous = self.contiguous(offsets, map, pt);
        if contiguous && m.is_none_or(|m| self.lanes(m) == 1) {
            // Four consecutive elements from lane 0's offset, as a scalar.
            let off0 = self.eval(offsets, map, &Pt { idx: pt.idx.clone(), vaxis: None })?;
            let other = self.widen(other);
            return Ok(self.guarded_load(base, off0, m, other));
        }
        let off = self.eval(offsets, map, pt)?;
        let vector = self.lanes(off) > 1 || m.is_some_and(|m| self.lanes(m) > 1);
        if !vector {
            return Ok(self.guarded_load(base, off, m, other));
        }
        let off = self.widen(off);
        let m = m.map(|m| self.widen(m));
        let (ok, off0) = if contiguous {
            let off0 = self.b.ins().extractlane(off, 0);
            let mm = m.map(|m| self.truthy(m));
            (mm.map(|mm| self.b.ins().vall_true(mm)), off0)
        } else {
            let (ok, off0) = self.dense_lanes(off, m);
            (Some(ok), off0)
        };
        let Some(ok) = ok else {
            return Err(self.kerr("internal: a masked load without a mask"));
        };
        let fast = self.b.create_block();
        let slow = self.b.create_block();
        let merge = self.b.create_block();
        let out = self.b.append_block_param(merge, vty);
        self.b.ins().brif(ok, fast, &[], slow, &[]);
        self.b.switch_to_block(fast);
        self.b.seal_block(fast);
        let addr = self.elem_addr(base, off0);
        let v = self.b.ins().load(vty, flags(), addr, 0);
        self.b.ins().jump(merge, &[BlockArg::Value(v)]);
        self.b.switch_to_block(slow);
        self.b.seal_block(slow);
        let mut v = self.b.ins().splat(vty, other);
        for l in 0..4u8 {
            let ol = self.b.ins().extractlane(off, l);
            let ml = m.map(|m| self.b.ins().extractlane(m, l));
            let x = self.guarded_load(base, ol, ml, other);
            v = self.b.ins().insertlane(v, x, l);
        }
        self.b.ins().jump(merge, &[BlockArg::Value(v)]);
        self.b.switch_to_block(merge);
        self.b.seal_block(merge);
        Ok(out)
    }

    fn emit_load(&mut self, s: &'k Stmt, ptr: usize, offsets: TValue, mask: Option<TValue>, other: f64) -> Res<()> {
        let Some(&r) = s.results.first() else { return Ok(()) };
        let base = self.ptrs.get(ptr).copied().flatten().ok_or_else(|| self.err(&s.op, "not a pointer"))?;
        let float = is_float(self.dtype(r));
        let shape = self.shape(offsets);
        let map = identity_map(&shape);
        if self.repr(r) == Repr::Scalar {
            self.clear_cache();
            let pt = self.point0(shape.len());
            let other = if float { self.b.ins().f32const(other as f32) } else { self.constant(self.dtype(r), other) };
            let x = self.load_point(base, offsets, mask, other, &map, &pt)?;
            self.set_scalar(r, x);
            return Ok(());
        }
        let dst = self.tile_addr(r)?;
        let strides = row_major(&shape);
        let vector = self.vectorize;
        let dt = self.dtype(r);
        if vector && self.load_rows(base, dst, offsets, mask, other, float, dt)? {
            return Ok(());
        }
        self.unroll = 1;
        let out = self.for_points(&shape, vector, &mut |g, pt| {
            let o = if float { g.b.ins().f32const(other as f32) } else { g.constant(dt, other) };
            let x = g.load_point(base, offsets, mask, o, &map, pt)?;
            g.put(dst, &strides, &map, pt, x);
            Ok(())
        });
        self.unroll = 1;
        out
    }

    /// A tile load whose rows are contiguous along the last axis and whose
    /// mask does not vary along it (e.g. `t < T` for rows of a `[B, T, H, D]`
    /// tensor): the mask is tested once per row, then the row is copied with
    /// plain vector loads (many in flight: a row of a new token usually comes
    /// from DRAM), or filled with `other`. Returns `false` (emitting nothing
    /// that survives) when the load is not of that kind.
    #[allow(clippy::too_many_arguments)]
    fn load_rows(
        &mut self,
        base: Value,
        dst: Value,
        offsets: TValue,
        mask: Option<TValue>,
        other: f64,
        float: bool,
        dt: DType,
    ) -> Res<bool> {
        // A mask known to be false leaves the general path to fill `other`.
        let Some(mask) = self.mask_of(mask) else { return Ok(false) };
        let Some((n, probe)) = self.contiguous_rows(offsets) else { return Ok(false) };
        let map = identity_map(&self.shape(offsets));
        if let Some(m) = mask {
            self.clear_cache();
            let m0 = self.eval(m, &map, &probe)?;
            self.clear_cache();
            if self.lanes(m0) != 1 {
                return Ok(false);
            }
        }
        let vty = if float { F32X4 } else { I32X4 };
        let n4 = n / 4 * 4;
        self.for_rows(offsets, base, &mut |g, rp, row_off, src| {
            let drow = g.b.ins().iadd(dst, row_off);
            let Some(m) = mask else {
                // No mask (or one known to hold): the row's copy alone.
                g.copy_bytes(drow, src, 4 * n)?;
                g.clear_cache();
                return Ok(());
            };
            let mv = g.eval(m, &map, rp)?;
            let c = g.truthy(mv);
            let fast = g.b.create_block();
            let slow = g.b.create_block();
            let merge = g.b.create_block();
            g.b.ins().brif(c, fast, &[], slow, &[]);
            g.b.switch_to_block(fast);
            g.b.seal_block(fast);
            g.copy_bytes(drow, src, 4 * n)?;
            g.b.ins().jump(merge, &[]);
            g.b.switch_to_block(slow);
            g.b.seal_block(slow);
            let o = if float { g.b.ins().f32const(other as f32) } else { g.constant(dt, other) };
            let ov = g.b.ins().splat(vty, o);
            g.counted(0, n4 * 4, 16, vec![], &mut |g, j, _| {
                let pd = g.b.ins().iadd(drow, j);
                g.b.ins().store(flags(), ov, pd, 0);
                Ok(vec![])
            })?;
            for j in n4..n {
                g.b.ins().store(flags(), o, drow, (4 * j) as i32);
            }
            g.b.ins().jump(merge, &[]);
            g.b.switch_to_block(merge);
            g.b.seal_block(merge);
            g.clear_cache();
            Ok(())
        })?;
        Ok(true)
    }

    /// A store of a tile held in memory (`Repr::Tile`, row-major, the
    /// pointer's dtype) whose offsets are contiguous along the last axis,
    /// without a mask (or with one known to hold): each row is copied with
    /// [`Gen::copy_bytes`] from one address computed per row. Returns `false`
    /// (emitting nothing) when the store is not of that kind.
    fn store_rows(
        &mut self,
        base: Value,
        offsets: TValue,
        value: TValue,
        mask: Option<TValue>,
        pdt: DType,
    ) -> Res<bool> {
        let same_kind = self.dtype(value) == pdt && matches!(pdt, DType::F32 | DType::I32);
        if !same_kind || self.repr(value) != Repr::Tile || self.shape(value) != self.shape(offsets) {
            return Ok(false);
        }
        if self.mask_of(mask) != Some(None) {
            return Ok(false);
        }
        let Some((n, _)) = self.contiguous_rows(offsets) else { return Ok(false) };
        let src0 = self.tile_addr(value)?;
        self.for_rows(offsets, base, &mut |g, _, row_off, dst| {
            let src = g.b.ins().iadd(src0, row_off);
            g.copy_bytes(dst, src, 4 * n)?;
            g.clear_cache();
            Ok(())
        })?;
        Ok(true)
    }

    /// Whether `offsets` are rows of at least 8 elements, consecutive along
    /// the last axis ([`Gen::load_rows`], [`Gen::store_rows`]): the row
    /// length and the point of the first row's first vector.
    fn contiguous_rows(&mut self, offsets: TValue) -> Option<(i64, Pt)> {
        let shape = self.shape(offsets);
        let last = shape.len().checked_sub(1)?;
        let n = i64::from(shape[last]);
        let probe = Pt { idx: self.point0(shape.len()).idx, vaxis: Some(last) };
        (n >= 8 && self.contiguous(offsets, &identity_map(&shape), &probe)).then_some((n, probe))
    }

    /// Walks the rows of `offsets` (a tile's shape, contiguous along its
    /// last axis): `f(point of the row's first vector, the row's byte offset
    /// in a row-major tile, the address of its first element at base)`.
    fn for_rows(
        &mut self,
        offsets: TValue,
        base: Value,
        f: &mut dyn FnMut(&mut Self, &Pt, Value, Value) -> Res<()>,
    ) -> Res<()> {
        let shape = self.shape(offsets);
        let last = shape.len().saturating_sub(1);
        let map = identity_map(&shape);
        let strides = row_major(&shape);
        let mut outer = shape.clone();
        if let Some(n) = outer.get_mut(last) {
            *n = 1;
        }
        self.for_points(&outer, false, &mut |g, pt| {
            let rp = Pt { idx: pt.idx.clone(), vaxis: Some(last) };
            let (row_off, _) = g.offset(&strides, &map, &rp);
            let off0 = g.eval(offsets, &map, &Pt { idx: pt.idx.clone(), vaxis: None })?;
            let at = g.elem_addr(base, off0);
            f(g, &rp, row_off, at)
        })
    }

    fn emit_store(&mut self, s: &'k Stmt, ptr: usize, offsets: TValue, value: TValue, mask: Option<TValue>) -> Res<()> {
        let base = self.ptrs.get(ptr).copied().flatten().ok_or_else(|| self.err(&s.op, "not a pointer"))?;
        let pdt = match self.k.params.get(ptr).map(|p| &p.kind) {
            Some(ParamKind::Ptr(d)) => *d,
            _ => return Err(self.err(&s.op, "not a pointer")),
        };
        let vdt = self.dtype(value);
        let shape = self.shape(offsets);
        let map = identity_map(&shape);
        let vector = self.vectorize;
        if vector && self.store_rows(base, offsets, value, mask, pdt)? {
            return Ok(());
        }
        let Some(mask) = self.mask_of(mask) else { return Ok(()) };
        self.unroll = 1;
        let out = self.for_points(&shape, vector, &mut |g, pt| {
            let off = g.eval(offsets, &map, pt)?;
            let m = match mask {
                Some(m) => Some(g.eval(m, &map, pt)?),
                None => None,
            };
            let x = g.eval(value, &map, pt)?;
            let x = g.cast(x, vdt, pdt);
            let x = g.bool01(x);
            let vector =
                pt.vaxis.is_some() && (g.lanes(off) > 1 || g.lanes(x) > 1 || m.is_some_and(|m| g.lanes(m) > 1));
            if !vector {
                g.guarded_store(base, off, m, x);
                return Ok(());
            }
            let contiguous = g.contiguous(offsets, &map, pt) && g.lanes(off) > 1;
            let x = g.widen(x);
            if contiguous && m.is_none_or(|m| g.lanes(m) == 1) {
                let off0 = g.eval(offsets, &map, &Pt { idx: pt.idx.clone(), vaxis: None })?;
                g.guarded_store(base, off0, m, x);
                return Ok(());
            }
            let off = g.widen(off);
            let m = m.map(|m| g.widen(m));
            let (ok, off0) = if contiguous {
                let off0 = g.b.ins().extractlane(off, 0);
                let mm = m.map(|m| g.truthy(m));
                (mm.map(|mm| g.b.ins().vall_true(mm)), off0)
            } else {
                let (ok, off0) = g.dense_lanes(off, m);
                (Some(ok), off0)
            };
            let Some(ok) = ok else {
                return Err(g.kerr("internal: a masked store without a mask"));
            };
            // Keep the value's computation ahead of the branch.
            let mut vals = vec![x, off, ok, off0];
            vals.extend(m);
            let p = g.pin(&vals);
            let (x, off, ok, off0) = (p[0], p[1], p[2], p[3]);
            let m = p.get(4).copied();
            let fast = g.b.create_block();
            let slow = g.b.create_block();
            let merge = g.b.create_block();
            g.b.ins().brif(ok, fast, &[], slow, &[]);
            g.b.switch_to_block(fast);
            g.b.seal_block(fast);
            let addr = g.elem_addr(base, off0);
            g.b.ins().store(flags(), x, addr, 0);
            g.b.ins().jump(merge, &[]);
            g.b.switch_to_block(slow);
            g.b.seal_block(slow);
            for l in 0..4u8 {
                let ol = g.b.ins().extractlane(off, l);
                let ml = m.map(|m| g.b.ins().extractlane(m, l));
                let xl = g.b.ins().extractlane(x, l);
                g.guarded_store(base, ol, ml, xl);
            }
            g.b.ins().jump(merge, &[]);
            g.b.switch_to_block(merge);
            g.b.seal_block(merge);
            Ok(())
        });
        self.unroll = 1;
        out
    }

    /// The A operand of a dot as (base address, element strides): its tile,
    /// or the scratch it is materialized into.
    fn dot_operand(&mut self, v: TValue, temp: Option<usize>) -> Res<(Value, Vec<i64>)> {
        if let Some(w) = self.plan.view(self.k, v) {
            let slot = self.plan.slot_of_root(w.root).ok_or_else(|| self.kerr("dot operand without a slot"))?;
            let base = self.slot_addr(slot)?;
            return Ok((base, w.strides));
        }
        let slot = temp.ok_or_else(|| self.kerr("missing scratch for a dot operand"))?;
        let base = self.slot_addr(slot)?;
        self.materialize(v, base, None)?;
        Ok((base, row_major(&self.shape(v))))
    }

    /// Writes `B` (transposed first when `trans_b`) row-major as `[k, n_pad]`
    /// at `dst`, zero-padding the columns past `n`.
    fn pack_b(&mut self, b: TValue, trans_b: bool, kk: usize, n: usize, n_pad: usize, dst: Value) -> Res<()> {
        let bs = self.shape(b);
        let map: Map =
            if trans_b { vec![(bs[0] != 1).then_some(1), (bs[1] != 1).then_some(0)] } else { identity_map(&bs) };
        let shape = [kk as u32, n as u32];
        let strides = [n_pad as i64, 1];
        let imap = identity_map(&shape);
        let vector = self.vectorize;
        self.for_points(&shape, vector, &mut |g, pt| {
            let x = g.eval(b, &map, pt)?;
            g.put(dst, &strides, &imap, pt, x);
            Ok(())
        })?;
        if n_pad > n {
            let zero = self.b.ins().f32const(0.0);
            self.counted(0, kk as i64, 1, vec![], &mut |g, l, _| {
                let row = g.b.ins().imul_imm_s(l, (n_pad * 4) as i64);
                let row = g.b.ins().iadd(dst, row);
                for j in n..n_pad {
                    g.b.ins().store(flags(), zero, row, (j * 4) as i32);
                }
                Ok(vec![])
            })?;
        }
        Ok(())
    }

    /// Packs `Bᵀ` for a dot: `dst[l, j] = src[j·sj + l]` as `[k, n_pad]`
    /// (columns past `n` zeroed), transposing 4×4 blocks in registers.
    fn pack_bt(&mut self, src: Value, sj: i64, kk: usize, n: usize, n_pad: usize, dst: Value) -> Res<()> {
        use cranelift_codegen::ir::types::I8X16;
        let (k4, n4) = ((kk / 4 * 4) as i64, (n / 4 * 4) as i64);
        let le = MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
        let mut masks = Vec::new();
        for m in [
            [0u8, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23],
            [8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31],
            [0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23],
            [8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31],
        ] {
            masks.push(self.b.func.dfg.immediates.push(ConstantData::from(m.to_vec())));
        }
        let (lo, hi, movlh, movhl) = (masks[0], masks[1], masks[2], masks[3]);
        self.counted(0, k4, 4, vec![], &mut |g, l0, _| {
            let srow = g.b.ins().ishl_imm_s(l0, 2);
            let srow = g.b.ins().iadd(src, srow);
            let drow = g.b.ins().imul_imm_s(l0, (n_pad * 4) as i64);
            let drow = g.b.ins().iadd(dst, drow);
            g.counted(0, n4, 4, vec![], &mut |g, j0, _| {
                let sj0 = g.b.ins().imul_imm_s(j0, sj * 4);
                let p = g.b.ins().iadd(srow, sj0);
                let v: Vec<Value> = (0..4)
                    .map(|t| {
                        let x = g.b.ins().load(F32X4, flags(), p, (t as i64 * sj * 4) as i32);
                        g.b.ins().bitcast(I8X16, le, x)
                    })
                    .collect();
                let t0 = g.b.ins().shuffle(v[0], v[1], lo);
                let t1 = g.b.ins().shuffle(v[2], v[3], lo);
                let t2 = g.b.ins().shuffle(v[0], v[1], hi);
                let t3 = g.b.ins().shuffle(v[2], v[3], hi);
                let cols = [
                    g.b.ins().shuffle(t0, t1, movlh),
                    g.b.ins().shuffle(t0, t1, movhl),
                    g.b.ins().shuffle(t2, t3, movlh),
                    g.b.ins().shuffle(t2, t3, movhl),
                ];
                let dj = g.b.ins().ishl_imm_s(j0, 2);
                let q = g.b.ins().iadd(drow, dj);
                for (u, c) in cols.iter().enumerate() {
                    let c = g.b.ins().bitcast(F32X4, le, *c);
                    g.b.ins().store(flags(), c, q, (u * n_pad * 4) as i32);
                }
                Ok(vec![])
            })?;
            Ok(vec![])
        })?;
        // Ragged edges element by element.
        let copy = |g: &mut Self, l: Value, j: Value| {
            let so = g.b.ins().imul_imm_s(j, sj * 4);
            let sl = g.b.ins().ishl_imm_s(l, 2);
            let sa = g.b.ins().iadd(src, so);
            let sa = g.b.ins().iadd(sa, sl);
            let x = g.b.ins().load(F32, flags(), sa, 0);
            let dl = g.b.ins().imul_imm_s(l, (n_pad * 4) as i64);
            let dj = g.b.ins().ishl_imm_s(j, 2);
            let da = g.b.ins().iadd(dst, dl);
            let da = g.b.ins().iadd(da, dj);
            g.b.ins().store(flags(), x, da, 0);
        };
        if n4 < n as i64 {
            self.counted(0, k4, 1, vec![], &mut |g, l, _| {
                g.counted(n4, n as i64, 1, vec![], &mut |g, j, _| {
                    copy(g, l, j);
                    Ok(vec![])
                })?;
                Ok(vec![])
            })?;
        }
        self.counted(k4, kk as i64, 1, vec![], &mut |g, l, _| {
            g.counted(0, n as i64, 1, vec![], &mut |g, j, _| {
                copy(g, l, j);
                Ok(vec![])
            })?;
            Ok(vec![])
        })?;
        if n_pad > n {
            let zero = self.b.ins().f32const(0.0);
            self.counted(0, kk as i64, 1, vec![], &mut |g, l, _| {
                let row = g.b.ins().imul_imm_s(l, (n_pad * 4) as i64);
                let row = g.b.ins().iadd(dst, row);
                for j in n..n_pad {
                    g.b.ins().store(flags(), zero, row, (j * 4) as i32);
                }
                Ok(vec![])
            })?;
        }
        Ok(())
    }

    fn emit_dot(
        &mut self,
        s: &'k Stmt,
        a: TValue,
        b: TValue,
        acc: Option<TValue>,
        trans_a: bool,
        trans_b: bool,
    ) -> Res<()> {
        let Some(&r) = s.results.first() else { return Ok(()) };
        let ash = self.shape(a);
        let kk = if trans_a { ash.first() } else { ash.get(1) }.copied().unwrap_or(1) as i64;
        let layout = self.plan.dot_layout(self.k, s);
        let temps = self.plan.temps(s).to_vec();
        let mut it = temps.into_iter();
        let a_temp = if layout.a_temp.is_some() { it.next() } else { None };
        let b_temp = if layout.b_temp.is_some() { it.next() } else { None };
        let (abase, ast) = self.dot_operand(a, a_temp)?;
        let (ai, al) = if trans_a { (ast[1], ast[0]) } else { (ast[0], ast[1]) };
        let rshape = self.shape(r);
        let (m, n) = (rshape[0] as usize, rshape[1] as usize);
        let (bbase, bl, bj) = if layout.b_packed {
            let slot = b_temp.ok_or_else(|| self.err(&s.op, "missing scratch for B"))?;
            let base = self.slot_addr(slot)?;
            match self.plan.view(self.k, b) {
                // Rows of Bᵀ contiguous: transpose 4×4 blocks in registers.
                Some(w) if trans_b && w.strides[1] == 1 => {
                    let rs = self.plan.slot_of_root(w.root).ok_or_else(|| self.kerr("dot operand without a slot"))?;
                    let src = self.slot_addr(rs)?;
                    self.pack_bt(src, w.strides[0], kk as usize, n, layout.n_pad, base)?;
                }
                _ => self.pack_b(b, trans_b, kk as usize, n, layout.n_pad, base)?,
            }
            (base, layout.n_pad as i64, 1)
        } else {
            let (base, bst) = self.dot_operand(b, b_temp)?;
            let (bl, bj) = if trans_b { (bst[1], bst[0]) } else { (bst[0], bst[1]) };
            (base, bl, bj)
        };
        if self.repr(r) == Repr::Scalar {
            let zero = self.b.ins().iconst(I64, 0);
            let sum = self.dot_sum(abase, bbase, zero, zero, ai, al, bl, bj, kk)?;
            let x = match acc {
                Some(c) => {
                    let c = self.scalar(c)?;
                    self.b.ins().fadd(c, sum)
                }
                None => sum,
            };
            self.set_scalar(r, x);
            return Ok(());
        }
        let dst = self.tile_addr(r)?;
        if n < 4 || bj != 1 {
            if let Some(c) = acc {
                if !(self.repr(c) == Repr::Tile && self.plan.root(c) == self.plan.root(r)) {
                    self.materialize(c, dst, None)?;
                }
            }
            let strides = row_major(&rshape);
            let map = identity_map(&rshape);
            return self.for_points(&rshape, false, &mut |g, pt| {
                let sum = g.dot_sum(abase, bbase, pt.idx[0], pt.idx[1], ai, al, bl, bj, kk)?;
                let (off, _) = g.offset(&strides, &map, pt);
                let addr = g.b.ins().iadd(dst, off);
                let x = if acc.is_some() {
                    let c = g.b.ins().load(F32, flags(), addr, 0);
                    g.b.ins().fadd(c, sum)
                } else {
                    sum
                };
                g.b.ins().store(flags(), x, addr, 0);
                Ok(())
            });
        }
        let d = DotArgs { abase, ai, al, bbase, bl, kk, dst, n, acc, shape: rshape.clone() };
        if self.target.fma && self.target.x86 {
            if kk == 1 {
                if let Some(c) = acc {
                    self.pin_uniform(c)?;
                }
                let out = self.dot_rank1(&d, m);
                self.unpin();
                return out;
            }
            if m == 1 && n >= 4 * GEMV_NV {
                if let Some(c) = acc {
                    self.pin_uniform(c)?;
                }
                let out = self.dot_gemv(&d);
                self.unpin();
                return out;
            }
        }
        if let Some(c) = acc {
            self.pin_uniform(c)?;
        }
        // Column panels outside, row blocks inside: a `[k, 8]` panel of B
        // stays in L1 while the rows of A stream past it.
        let n8 = (n / 8 * 8) as i64;
        self.counted(0, n8, 8, vec![], &mut |g, j0, _| {
            g.dot_cols(&d, j0, m, 2, 4)?;
            Ok(vec![])
        })?;
        let mut j = n8 as usize;
        while j < n {
            let lanes = (n - j).min(4) as u32;
            let j0 = self.b.ins().iconst(I64, j as i64);
            self.dot_cols(&d, j0, m, 1, lanes)?;
            j += 4;
        }
        self.unpin();
        Ok(())
    }

    /// Evaluates the one-element lazy values and float scalars that `v`'s
    /// expression reads (e.g. a scalar decay `exp(g)` of shape `[1, 1]`) here,
    /// once, into stack slots that the loop nest that follows reads back
    /// (Cranelift's egraph would otherwise place a pure computation at its
    /// use, inside the loop); [`Gen::unpin`] forgets them after it.
    fn pin_uniform(&mut self, v: TValue) -> Res<()> {
        let mut stack = vec![v];
        let mut seen = std::collections::HashSet::new();
        let mut found = Vec::new();
        while let Some(x) = stack.pop() {
            if !seen.insert(x) {
                continue;
            }
            if self.repr(x) == Repr::Scalar && is_float(self.dtype(x)) {
                found.push(x);
                continue;
            }
            if self.repr(x) != Repr::Lazy {
                continue;
            }
            let sh = self.shape(x);
            if numel(&sh) == 1 && !matches!(self.def(x)?.op, TOp::Const(_)) {
                found.push(x);
                continue;
            }
            stack.extend(self.def(x)?.op.operands());
        }
        for x in found {
            self.clear_cache();
            let rank = self.shape(x).len();
            let pt = self.point0(rank);
            let val = self.eval(x, &vec![None; rank], &pt)?;
            let ty = self.ty_of(val);
            if ty.is_vector() {
                continue;
            }
            let slot = self.b.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, 4, 4));
            self.b.ins().stack_store(I64, val, slot, 0);
            self.pinned.insert(x, (slot, ty));
        }
        self.clear_cache();
        Ok(())
    }

    fn unpin(&mut self) {
        self.pinned.clear();
    }

    /// A rank-1 update (`k = 1`, e.g. a recurrence's `kᵀv`): `C[i, j] =
    /// acc[i, j] + A[i]·B[j]`, row by row, one FMA per vector with the
    /// accumulator operand evaluated in place (no zero-initialized product
    /// and separate add, as the micro-kernel would do).
    fn dot_rank1(&mut self, d: &DotArgs, m: usize) -> Res<()> {
        const U: i64 = 4;
        let n = d.n as i64;
        let (nv, map) = (n / 4, identity_map(&d.shape));
        let ro = MemFlagsData::new().with_notrap().with_readonly().with_can_move();
        self.counted(0, m as i64, 1, vec![], &mut |g, i, _| {
            let pa = g.b.ins().imul_imm_s(i, d.ai * 4);
            let pa = g.b.ins().iadd(d.abase, pa);
            let crow = g.b.ins().imul_imm_s(i, n * 4);
            let crow = g.b.ins().iadd(d.dst, crow);
            // One vector at column `j` (an i64 value): fresh broadcast of A[i]
            // per FMA (x86's FMA overwrites it), B folded into the FMA.
            let vec_at = |g: &mut Self, j: Value| -> Res<()> {
                let x = g.b.ins().load(F32, flags(), pa, 0);
                let x = g.b.ins().splat(F32X4, x);
                let jb = g.b.ins().ishl_imm_s(j, 2);
                let pb = g.b.ins().iadd(d.bbase, jb);
                let bv = g.b.ins().load(F32X4, ro, pb, 0);
                let c = match d.acc {
                    Some(c) => {
                        let c = g.eval(c, &map, &Pt { idx: vec![i, j], vaxis: Some(1) })?;
                        g.widen(c)
                    }
                    None => {
                        let z = g.b.ins().f32const(0.0);
                        g.b.ins().splat(F32X4, z)
                    }
                };
                let y = g.b.ins().fma(x, bv, c);
                let pc = g.b.ins().iadd(crow, jb);
                g.b.ins().store(flags(), y, pc, 0);
                Ok(())
            };
            let nu = nv / U * U;
            g.counted(0, nu * 4, 4 * U, vec![], &mut |g, j0, _| {
                for u in 0..U {
                    let j = g.b.ins().iadd_imm_s(j0, 4 * u);
                    g.clear_cache();
                    vec_at(g, j)?;
                }
                Ok(vec![])
            })?;
            for v in nu..nv {
                let j = g.b.ins().iconst(I64, 4 * v);
                g.clear_cache();
                vec_at(g, j)?;
            }
            for j in nv * 4..n {
                let jv = g.b.ins().iconst(I64, j);
                g.clear_cache();
                let x = g.b.ins().load(F32, flags(), pa, 0);
                let y = g.b.ins().load(F32, flags(), d.bbase, (j * 4) as i32);
                let c = match d.acc {
                    Some(c) => g.eval(c, &map, &Pt { idx: vec![i, jv], vaxis: None })?,
                    None => g.b.ins().f32const(0.0),
                };
                let r = g.b.ins().fma(x, y, c);
                g.b.ins().store(flags(), r, crow, (j * 4) as i32);
            }
            g.clear_cache();
            Ok(vec![])
        })?;
        Ok(())
    }

    /// One token of a recurrence's step form at `s1`, `s2`: a rank-1 update
    /// followed by a one-row product of its result, `S' = acc + kᵀ·v; o = q·S'`,
    /// with `S'` at least 16 columns wide (a multiple of 16) and `v` a tile.
    fn step_pair(&self, s1: &'k Stmt, s2: &'k Stmt) -> Option<StepPair> {
        let (
            TOp::Dot { a: k, b: v, acc, trans_a, trans_b: false },
            TOp::Dot { a: q, b: b2, acc: None, trans_a: false, trans_b: false },
        ) = (&s1.op, &s2.op)
        else {
            return None;
        };
        let (&r1, &r2) = (s1.results.first()?, s2.results.first()?);
        if *b2 != r1 || *q == r1 || self.repr(r1) != Repr::Tile || self.repr(r2) != Repr::Tile {
            return None;
        }
        let (sh1, sh2, ash) = (self.shape(r1), self.shape(r2), self.shape(*k));
        let kk = if *trans_a { ash.first() } else { ash.get(1) }.copied().unwrap_or(0);
        if kk != 1 || sh1.len() != 2 || sh2 != [1, sh1[1]] || sh1[1] < 16 || sh1[1] % 16 != 0 {
            return None;
        }
        let (l1, l2) = (self.plan.dot_layout(self.k, s1), self.plan.dot_layout(self.k, s2));
        if l1.b_packed || l2.b_packed || self.plan.view(self.k, *v).is_none() {
            return None;
        }
        Some(StepPair { r1, r2, k: *k, trans_a: *trans_a, v: *v, acc: *acc, q: *q })
    }

    /// The tile values a value's lazy expression reads (itself if a tile).
    fn tile_leaves(&self, v: TValue) -> Vec<TValue> {
        let (mut out, mut stack, mut seen) = (Vec::new(), vec![v], std::collections::HashSet::new());
        while let Some(x) = stack.pop() {
            if !seen.insert(x) {
                continue;
            }
            match self.repr(x) {
                Repr::Tile => out.push(x),
                Repr::Lazy => stack.extend(self.def(x).map(|s| s.op.operands()).unwrap_or_default()),
                Repr::Scalar => {}
            }
        }
        out
    }

    /// A run of step pairs from the start of `stmts`, each after the first
    /// updating the previous one's state (its `acc` an elementwise expression
    /// of it, read element for element, with only lazy statements in
    /// between), the intermediate states read by nothing else: a recurrence's
    /// step form over several tokens (`Schedule::step_tokens`). Returns the
    /// pairs and how many statements they span (none: not a step pair).
    fn step_chain(&self, stmts: &'k [Stmt]) -> (Vec<StepPair>, usize) {
        let (Some(s1), Some(s2)) = (stmts.first(), stmts.get(1)) else { return (vec![], 0) };
        let Some(first) = self.step_pair(s1, s2) else { return (vec![], 0) };
        let mut pairs = vec![first];
        let mut pos = 2;
        loop {
            let mut end = pos;
            while stmts
                .get(end)
                .is_some_and(|s| !s.results.is_empty() && s.results.iter().all(|r| self.repr(*r) == Repr::Lazy))
            {
                end += 1;
            }
            let (Some(s1), Some(s2)) = (stmts.get(end), stmts.get(end + 1)) else { break };
            let Some(p) = self.step_pair(s1, s2) else { break };
            if !self.chains(&pairs, &p, &stmts[pos..end], s1, &stmts[pos - 1]) {
                break;
            }
            pairs.push(p);
            pos = end + 2;
        }
        (pairs, pos)
    }

    /// Whether pair `p` (its update at `s1`, after the lazy statements `gap`)
    /// continues the chain `pairs` (whose last readout is `s2_prev`).
    fn chains(&self, pairs: &[StepPair], p: &StepPair, gap: &'k [Stmt], s1: &Stmt, s2_prev: &Stmt) -> bool {
        let Some(prev) = pairs.last() else { return false };
        let Some(acc) = p.acc else { return false };
        if self.shape(p.r1) != self.shape(prev.r1) || self.plan.yielded(prev.r1) != 0 {
            return false;
        }
        // `acc` reads the previous state element for element, and no other
        // state or readout of the chain (those are not in memory).
        let root = self.plan.root(prev.r1);
        if self.plan.reads(self.k, acc).get(&root) != Some(&true) {
            return false;
        }
        let chain: Vec<TValue> = pairs.iter().flat_map(|x| [x.r1, x.r2]).chain([p.r1, p.r2]).collect();
        let bad = |v: TValue, allowed: Option<TValue>| {
            self.tile_leaves(v).iter().any(|l| {
                Some(*l) != allowed
                    && (chain.contains(l)
                        || self.plan.root(*l) == root
                        || pairs.iter().any(|x| self.plan.root(*l) == self.plan.root(x.r1)))
            })
        };
        if bad(acc, Some(prev.r1)) || bad(p.k, None) || bad(p.v, None) || bad(p.q, None) {
            return false;
        }
        // Inside the loop that stores this pair's state row by row, only the
        // first pair's state is read (the rest is copied out before it): it
        // must not share this state's slot (the plan may give a tile that
        // died earlier the slot), unless it is the same tile read element for
        // element. So later updates are `S + kᵀv` or `d ⊙ S + kᵀv`, `d` read
        // before the loop.
        if let Update::Generic(_) = self.update_of(p, Some(prev.r1), &self.shape(p.r1)) {
            return false;
        }
        let (Some(first), Some(slot)) = (pairs.first(), self.plan.slot(p.r1)) else { return false };
        if let Some(a) = first.acc {
            let ident = self.plan.reads(self.k, a);
            let own = self.plan.root(p.r1);
            let clash = self.tile_leaves(a).into_iter().any(|l| {
                let r = self.plan.root(l);
                self.plan.slot(l) == Some(slot) && !(r == own && ident.get(&r) == Some(&true))
            });
            if clash {
                return false;
            }
        }
        // The previous state, and the gap's values, feed only this update.
        let inside =
            |u: &&Stmt| std::ptr::eq(*u, s1) || std::ptr::eq(*u, s2_prev) || gap.iter().any(|g| std::ptr::eq(*u, g));
        self.plan.users(prev.r1).iter().all(inside)
            && gap.iter().flat_map(|g| &g.results).all(|r| {
                self.plan.yielded(*r) == 0
                    && self
                        .plan
                        .users(*r)
                        .iter()
                        .all(|u| std::ptr::eq(*u, s1) || gap.iter().any(|g| std::ptr::eq(*u, g)))
            })
    }

    /// How pair `p`'s update reads the state before it: `prev`, the previous
    /// pair's (none for the first pair, whose state is any value of the
    /// state's shape `sh`).
    fn update_of(&self, p: &StepPair, prev: Option<TValue>, sh: &[u32]) -> Update {
        let Some(c) = p.acc else { return Update::Zero };
        let is_state = |x: TValue| match prev {
            Some(s) => x == s,
            None => self.shape(x) == sh,
        };
        // A decay the same along the columns: a row's one value, or one for all.
        let per_row = |d: TValue| {
            let ds = self.shape(d);
            let along = ds.len().checked_sub(1).map_or(1, |a| ds[a]);
            (ds.len() < 2 || along == 1) && prev.is_none_or(|s| !self.tile_leaves(d).contains(&s))
        };
        if let Ok(TOp::Binary(BinaryFn::Mul, a, b)) = self.def(c).map(|s| &s.op) {
            if is_state(*a) && per_row(*b) {
                return Update::Decay(*a, *b);
            }
            if is_state(*b) && per_row(*a) {
                return Update::Decay(*b, *a);
            }
        }
        if is_state(c) {
            return Update::Add(c);
        }
        Update::Generic(c)
    }

    /// A chain of step pairs (see [`Gen::step_chain`]), `S_t = acc_t + k_tᵀ·v_t;
    /// o_t = q_t·S_t` with `acc_t` computed from `S_{t−1}`: one pass over the
    /// state, panel by panel of 16 columns and row by row, each row's panel
    /// of the state loaded once, taken through every token's update in
    /// registers and stored; the intermediate states are never stored. A
    /// decayed update `acc = d ⊙ S` is `S·d + k·v` (one FMA on the chain from
    /// token to token). First every token's `k`, `q` and decay go to one
    /// scratch as broadcast vectors, row by row (`[m][tokens][k, q, d]`, no
    /// shuffles in the loop), and its `v` to another: the loop reads them at
    /// constant offsets from three addresses (a base address per operand
    /// would each take a register).
    fn emit_step_chain(&mut self, pairs: &[StepPair]) -> Res<()> {
        let Some(last) = pairs.last() else { return Ok(()) };
        // One token: panels of 16 columns (the state's four vectors, the
        // broadcasts and four accumulators of `o` fit the 16 vector registers).
        const NV: usize = 4;
        let sh1 = self.shape(last.r1);
        let (m, n) = (sh1[0] as i64, sh1[1] as i64);
        let ntok = pairs.len();
        let map = identity_map(&sh1);
        let updates: Vec<Update> = pairs
            .iter()
            .enumerate()
            .map(|(t, p)| self.update_of(p, t.checked_sub(1).map(|u| pairs[u].r1), &sh1))
            .collect();
        let private = |g: &mut Self, bytes: i64| {
            g.b.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, bytes as u32, 4))
        };
        let tok_bytes = 48 * ntok as i64;
        let (pslot, vslot, oslot) =
            (private(self, m * tok_bytes), private(self, n * 4 * ntok as i64), private(self, n * 4 * ntok as i64));
        for (t, (p, u)) in pairs.iter().zip(&updates).enumerate() {
            // Row `i` of `k` and `q` (`[1, m]`, or `k` as `[m, 1]`), and the decay.
            let along = |len: u32| (len != 1).then_some(0u8);
            let kmap: Map = if p.trans_a { vec![None, along(m as u32)] } else { vec![along(m as u32), None] };
            let qmap: Map = vec![None, along(m as u32)];
            let decay = match u {
                Update::Decay(_, d) => Some((*d, broadcast_map(&self.shape(*d), &sh1, &[along(m as u32), None]))),
                _ => None,
            };
            let base = self.b.ins().stack_addr(I64, pslot, 0);
            let vector = self.vectorize;
            self.for_points(&[m as u32, 1], vector, &mut |g, pt| {
                let row = g.b.ins().imul_imm_s(pt.idx[0], tok_bytes);
                let row = g.b.ins().iadd(base, row);
                // Four rows at a time where vectorized: each lane broadcast.
                let lanes = if pt.vaxis.is_some() { 4 } else { 1 };
                let put = |g: &mut Self, x: Value, at: i64| {
                    for l in 0..lanes {
                        let xl = if g.lanes(x) > 1 { g.b.ins().extractlane(x, l as u8) } else { x };
                        let xl = g.b.ins().splat(F32X4, xl);
                        g.b.ins().store(flags(), xl, row, (at + tok_bytes * l) as i32);
                    }
                };
                let off = 48 * t as i64;
                let kx = g.eval(p.k, &kmap, pt)?;
                put(g, kx, off);
                let qx = g.eval(p.q, &qmap, pt)?;
                put(g, qx, off + 16);
                if let Some((d, dmap)) = &decay {
                    let dx = g.eval(*d, dmap, pt)?;
                    put(g, dx, off + 32);
                }
                Ok(())
            })?;
            let (vbase, vst) = self.dot_operand(p.v, None)?;
            if vst.last() != Some(&1) {
                return Err(self.kerr("step operand `v` is not a contiguous row"));
            }
            let dst = self.b.ins().stack_addr(I64, vslot, (n * 4 * t as i64) as i32);
            self.copy_bytes(dst, vbase, n * 4)?;
            if ntok > 1 {
                let zero = self.b.ins().f32const(0.0);
                let zero = self.b.ins().splat(F32X4, zero);
                for c in (0..n).step_by(4) {
                    self.b.ins().stack_store(I64, zero, oslot, (4 * (c + n * t as i64)) as i32);
                }
            }
        }
        let sslot = self.plan.slot(last.r1).ok_or_else(|| self.kerr("step state without a slot"))?;
        let sslot = *self.slots.get(sslot).ok_or_else(|| self.kerr("missing stack slot"))?;
        let ro = MemFlagsData::new().with_notrap().with_readonly().with_can_move();
        for p in pairs {
            if let Some(c) = p.acc {
                self.pin_uniform(c)?;
            }
        }
        // Rows per iteration: one with `o` in registers (one token); two
        // otherwise, their chains of updates independent (twice the work in
        // flight per chain's latency), sharing the loads of `v` and `o`.
        let (rows, nv) = if ntok == 1 || m % 2 != 0 { (1usize, NV) } else { (2, 2) };
        self.counted(0, n, (4 * nv) as i64, vec![], &mut |g, j0, _| {
            let zero = g.b.ins().f32const(0.0);
            let zero = g.b.ins().splat(F32X4, zero);
            // One token: `o` in registers; more: read and written back row by
            // row (first-level cache), as Cranelift places pure instructions at
            // their first use, and carried to the end of the row every token's
            // accumulators would hold its state and `q` there (spilled).
            let carried = if ntok == 1 { vec![zero; nv] } else { vec![] };
            let o = g.counted(0, m, rows as i64, carried, &mut |g, i0, o| {
                let jb = g.b.ins().ishl_imm_s(j0, 2);
                let js: Vec<Value> = (0..nv).map(|v| g.b.ins().iadd_imm_s(j0, 4 * v as i64)).collect();
                let is: Vec<Value> = (0..rows).map(|r| g.b.ins().iadd_imm_s(i0, r as i64)).collect();
                let prow = g.b.ins().imul_imm_s(i0, tok_bytes);
                let pbase = g.b.ins().stack_addr(I64, pslot, 0);
                let prow = g.b.ins().iadd(pbase, prow);
                let vbase = g.b.ins().stack_addr(I64, vslot, 0);
                let vrow = g.b.ins().iadd(vbase, jb);
                let obase = g.b.ins().stack_addr(I64, oslot, 0);
                let orow = g.b.ins().iadd(obase, jb);
                // s[r][v]: row `r`'s state, vector `v`.
                let mut s: Vec<Vec<Value>> = vec![Vec::new(); rows];
                let mut out = Vec::with_capacity(o.len());
                // The first token's state read straight from its tile where it
                // is one in memory: each row's address once, its vectors at
                // constant offsets (not an element offset per vector).
                let first_rows: Vec<Option<Value>> = match updates.first() {
                    Some(Update::Decay(x, _) | Update::Add(x))
                        if g.repr(*x) == Repr::Tile && g.shape(*x) == sh1 && is_float(g.dtype(*x)) =>
                    {
                        let xbase = g.tile_addr(*x)?;
                        let xbase = g.b.ins().iadd(xbase, jb);
                        is.iter()
                            .map(|i| {
                                let row = g.b.ins().imul_imm_s(*i, n * 4);
                                Some(g.b.ins().iadd(xbase, row))
                            })
                            .collect()
                    }
                    _ => vec![None; rows],
                };
                for (t, u) in updates.iter().enumerate() {
                    let voff = (n * 4 * t as i64) as i32;
                    let mut next: Vec<Vec<Value>> = vec![Vec::with_capacity(nv); rows];
                    let mut bc = Vec::with_capacity(rows);
                    for r in 0..rows {
                        let off = (tok_bytes * r as i64 + 48 * t as i64) as i32;
                        let kb = g.b.ins().load(F32X4, ro, prow, off);
                        let qb = g.b.ins().load(F32X4, ro, prow, off + 16);
                        let db = if let Update::Decay(..) = u {
                            Some(g.b.ins().load(F32X4, ro, prow, off + 32))
                        } else {
                            None
                        };
                        bc.push((kb, qb, db));
                    }
                    for v in 0..nv {
                        // Not `can_move`: the same at every row, it would be
                        // hoisted out of the loop (and spilled).
                        let bv = g.b.ins().load(F32X4, flags(), vrow, voff + (16 * v) as i32);
                        let mut ov =
                            if ntok == 1 { o[v] } else { g.b.ins().load(F32X4, flags(), orow, voff + (16 * v) as i32) };
                        for (r, &(kb, qb, db)) in bc.iter().enumerate() {
                            let pt = Pt { idx: vec![is[r], js[v]], vaxis: Some(1) };
                            // The state before this token: the first token's is read.
                            let prev = s[r].get(v).copied();
                            let at = first_rows.get(r).copied().flatten();
                            let state = |g: &mut Self, x: TValue| -> Res<Value> {
                                if let Some(p) = prev {
                                    return Ok(p);
                                }
                                if let Some(row) = at {
                                    return Ok(g.b.ins().load(F32X4, flags(), row, (16 * v) as i32));
                                }
                                let x = g.eval(x, &map, &pt)?;
                                Ok(g.widen(x))
                            };
                            let sv = match u {
                                Update::Zero => g.b.ins().fmul(kb, bv),
                                Update::Add(x) => {
                                    let c = state(g, *x)?;
                                    g.b.ins().fma(kb, bv, c)
                                }
                                Update::Decay(x, _) => {
                                    let c = state(g, *x)?;
                                    let kv = g.b.ins().fmul(kb, bv);
                                    let d = db.ok_or_else(|| g.kerr("decay without its value"))?;
                                    g.b.ins().fma(c, d, kv)
                                }
                                Update::Generic(c) => {
                                    if let Some(p) = prev {
                                        // The previous token's state, in a register.
                                        let key =
                                            (pairs[t - 1].r1, map.clone(), vec![Some(is[r]), Some(js[v])], Some(1));
                                        g.cache.insert(key, p);
                                    }
                                    let c = g.eval(*c, &map, &pt)?;
                                    let c = g.widen(c);
                                    g.b.ins().fma(kb, bv, c)
                                }
                            };
                            ov = g.b.ins().fma(sv, qb, ov);
                            next[r].push(sv);
                        }
                        if ntok == 1 {
                            out.push(ov);
                        } else {
                            g.b.ins().store(flags(), ov, orow, voff + (16 * v) as i32);
                        }
                    }
                    s = next;
                }
                let sbase = g.b.ins().stack_addr(I64, sslot, 0);
                for (r, sr) in s.iter().enumerate() {
                    let crow = g.b.ins().imul_imm_s(is[r], n * 4);
                    let crow = g.b.ins().iadd(sbase, crow);
                    let crow = g.b.ins().iadd(crow, jb);
                    for (v, sv) in sr.iter().enumerate() {
                        g.b.ins().store(flags(), *sv, crow, (16 * v) as i32);
                    }
                }
                Ok(out)
            })?;
            if ntok == 1 {
                let pd = g.b.ins().ishl_imm_s(j0, 2);
                let base = g.b.ins().stack_addr(I64, oslot, 0);
                let pd = g.b.ins().iadd(base, pd);
                for (v, x) in o.iter().enumerate() {
                    g.b.ins().store(flags(), *x, pd, (16 * v) as i32);
                }
            }
            Ok(vec![])
        })?;
        self.unpin();
        for (t, p) in pairs.iter().enumerate() {
            let dst = self.tile_addr(p.r2)?;
            let src = self.b.ins().stack_addr(I64, oslot, (n * 4 * t as i64) as i32);
            self.copy_bytes(dst, src, n * 4)?;
        }
        Ok(())
    }

    /// A one-row product (`m = 1`, e.g. a recurrence's readout `q·S` or an
    /// attention decode step): panels of `4·GEMV_NV` columns, each with that
    /// many independent accumulators (an FMA's latency needs eight in flight).
    /// B is loaded into a fresh register per vector (through a bitcast, so that
    /// it is not folded into the FMA), which the FMA then overwrites: no copies.
    fn dot_gemv(&mut self, d: &DotArgs) -> Res<()> {
        const NV: usize = GEMV_NV;
        let w = (4 * NV) as i64;
        let np = (d.n as i64) / w * w;
        let zero_i = self.b.ins().iconst(I64, 0);
        self.counted(0, np, w, vec![], &mut |g, j0, _| {
            let out = g.gemv_panel(d, j0, NV)?;
            g.micro_epilogue(d, zero_i, j0, 1, NV, 4, &out)?;
            Ok(vec![])
        })?;
        let mut j = np as usize;
        while j < d.n {
            let nv = ((d.n - j) / 4).clamp(1, NV);
            let lanes = if (d.n - j) >= 4 * nv { 4 } else { (d.n - j) as u32 };
            let j0 = self.b.ins().iconst(I64, j as i64);
            let out = self.gemv_panel(d, j0, nv)?;
            self.micro_epilogue(d, zero_i, j0, 1, nv, lanes, &out)?;
            j += 4 * nv;
        }
        Ok(())
    }

    /// The accumulation of one panel of [`Gen::dot_gemv`]: `nv` vectors.
    fn gemv_panel(&mut self, d: &DotArgs, j0: Value, nv: usize) -> Res<Vec<Value>> {
        const UNROLL: i64 = 2;
        let le = MemFlagsData::new().with_endianness(cranelift_codegen::ir::Endianness::Little);
        // Operands do not change during the dot: pure loads, placed by their use.
        let ro = MemFlagsData::new().with_notrap().with_readonly().with_can_move();
        let bj0 = self.b.ins().ishl_imm_s(j0, 2);
        let b0 = self.b.ins().iadd(d.bbase, bj0);
        let zero = self.b.ins().f32const(0.0);
        let zero = self.b.ins().splat(F32X4, zero);
        let (al, bl) = (d.al * 4, d.bl * 4);
        let step = |g: &mut Self, pa: Value, pb: Value, oa: i64, ob: i64, c: &mut [Value]| {
            let x = g.b.ins().load(F32, ro, pa, oa as i32);
            let x = g.b.ins().splat(F32X4, x);
            for (v, cv) in c.iter_mut().enumerate() {
                let y = g.b.ins().load(I32X4, ro, pb, (ob + 16 * v as i64) as i32);
                let y = g.b.ins().bitcast(F32X4, le, y);
                *cv = g.b.ins().fma(y, x, *cv);
            }
        };
        let ku = d.kk / UNROLL * UNROLL;
        let init: Vec<Value> = [d.abase, b0].into_iter().chain(std::iter::repeat_n(zero, nv)).collect();
        let out = self.counted(0, ku, UNROLL, init, &mut |g, _, mut c| {
            let (pa, pb) = (c[0], c[1]);
            for u in 0..UNROLL {
                step(g, pa, pb, u * al, u * bl, &mut c[2..]);
            }
            c[0] = g.b.ins().iadd_imm_s(pa, UNROLL * al);
            c[1] = g.b.ins().iadd_imm_s(pb, UNROLL * bl);
            Ok(c)
        })?;
        let (pa, pb) = (out[0], out[1]);
        let mut acc = out[2..].to_vec();
        for u in 0..d.kk - ku {
            step(self, pa, pb, u * al, u * bl, &mut acc);
        }
        Ok(acc)
    }

    /// One panel of `4·nv` columns of a dot, across all rows.
    fn dot_cols(&mut self, d: &DotArgs, j0: Value, m: usize, nv: usize, last: u32) -> Res<()> {
        let mr = MR.min(m);
        let m_full = (m / mr * mr) as i64;
        self.counted(0, m_full, mr as i64, vec![], &mut |g, i0, _| {
            g.micro(d, i0, j0, mr, nv, last)?;
            Ok(vec![])
        })?;
        if !m.is_multiple_of(mr) {
            let i0 = self.b.ins().iconst(I64, m_full);
            self.micro(d, i0, j0, m % mr, nv, last)?;
        }
        Ok(())
    }

    /// The micro-kernel: `mr × 4·nv` outputs in registers, accumulated over k
    /// (unrolled by two); the last vector holds `last` valid lanes.
    ///
    /// Products and sums are separate instructions: x86's FMA lowering ties
    /// the result to a multiplicand, which costs a register copy per product
    /// and a rotation of every accumulator per iteration, while AVX adds
    /// accumulate in place (and run on their own pipes).
    fn micro(&mut self, d: &DotArgs, i0: Value, j0: Value, mr: usize, nv: usize, last: u32) -> Res<()> {
        if self.target.fma && self.target.x86 {
            let out = self.micro_fma(d, i0, j0, mr, nv)?;
            return self.micro_epilogue(d, i0, j0, mr, nv, last, &out);
        }
        let a0 = self.b.ins().imul_imm_s(i0, d.ai * 4);
        let a0 = self.b.ins().iadd(d.abase, a0);
        let rows: Vec<Value> = (0..mr).map(|r| self.b.ins().iadd_imm_s(a0, r as i64 * d.ai * 4)).collect();
        let bj0 = self.b.ins().ishl_imm_s(j0, 2);
        let bcol = self.b.ins().iadd(d.bbase, bj0);
        let zero = self.b.ins().f32const(0.0);
        let zero = self.b.ins().splat(F32X4, zero);
        let init = vec![zero; mr * nv];
        let (al, bl) = (d.al, d.bl);
        // Operands do not change during the dot: loads may move and fold.
        let ro = MemFlagsData::new().with_notrap().with_readonly().with_can_move();
        let step = |g: &mut Self, l: Value, c: &mut [Value]| {
            let lb = g.b.ins().imul_imm_s(l, bl * 4);
            let pb = g.b.ins().iadd(bcol, lb);
            let bv: Vec<Value> = (0..nv).map(|v| g.b.ins().load(F32X4, ro, pb, (16 * v) as i32)).collect();
            let la = g.b.ins().imul_imm_s(l, al * 4);
            for (r, row) in rows.iter().enumerate() {
                let pa = g.b.ins().iadd(*row, la);
                for (v, b) in bv.iter().enumerate() {
                    let x = g.b.ins().load(F32, ro, pa, 0);
                    let x = g.b.ins().splat(F32X4, x);
                    let i = r * nv + v;
                    let p = g.b.ins().fmul(x, *b);
                    c[i] = g.b.ins().fadd(c[i], p);
                }
            }
        };
        let k2 = d.kk / 2 * 2;
        let mut out = self.counted(0, k2, 2, init, &mut |g, l, mut c| {
            step(g, l, &mut c);
            let l1 = g.b.ins().iadd_imm_s(l, 1);
            step(g, l1, &mut c);
            Ok(c)
        })?;
        if d.kk % 2 == 1 {
            let l = self.b.ins().iconst(I64, d.kk - 1);
            step(self, l, &mut out);
        }
        self.micro_epilogue(d, i0, j0, mr, nv, last, &out)
    }

    /// The micro-kernel's accumulation with FMAs (x86 with FMA): every product
    /// broadcasts its own element of A straight from memory (`vbroadcastss`)
    /// into a register that the FMA then overwrites (x86's FMA writes a
    /// multiplicand), so no product needs a copy. The elements of A are read
    /// through one pointer per column vector, so that Cranelift does not merge
    /// the loads of a row into one shared (and then copied) broadcast.
    /// Unrolled by two; the operand pointers are bumped once per iteration.
    fn micro_fma(&mut self, d: &DotArgs, i0: Value, j0: Value, mr: usize, nv: usize) -> Res<Vec<Value>> {
        const UNROLL: i64 = 2;
        let a0 = self.b.ins().imul_imm_s(i0, d.ai * 4);
        let a0 = self.b.ins().iadd(d.abase, a0);
        let bj0 = self.b.ins().ishl_imm_s(j0, 2);
        let b0 = self.b.ins().iadd(d.bbase, bj0);
        let zero = self.b.ins().f32const(0.0);
        let zero = self.b.ins().splat(F32X4, zero);
        let (al, bl, ai) = (d.al * 4, d.bl * 4, d.ai * 4);
        let ro = MemFlagsData::new().with_notrap().with_readonly().with_can_move();
        // Carried: nv pointers into A, one into B, then the accumulators.
        let step = |g: &mut Self, p: &[Value], oa: i64, ob: i64, c: &mut [Value]| {
            let pb = p[nv];
            let bv: Vec<Value> = (0..nv).map(|v| g.b.ins().load(F32X4, ro, pb, (ob + 16 * v as i64) as i32)).collect();
            for r in 0..mr {
                for (v, b) in bv.iter().enumerate() {
                    let x = g.b.ins().load(F32, ro, p[v], (oa + r as i64 * ai) as i32);
                    let x = g.b.ins().splat(F32X4, x);
                    let i = r * nv + v;
                    c[i] = g.b.ins().fma(x, *b, c[i]);
                }
            }
        };
        let ku = d.kk / UNROLL * UNROLL;
        let init: Vec<Value> =
            std::iter::repeat_n(a0, nv).chain([b0]).chain(std::iter::repeat_n(zero, mr * nv)).collect();
        let np = nv + 1;
        let out = self.counted(0, ku, UNROLL, init, &mut |g, _, mut c| {
            let p = c[..np].to_vec();
            for u in 0..UNROLL {
                step(g, &p, u * al, u * bl, &mut c[np..]);
            }
            for v in 0..nv {
                c[v] = g.b.ins().iadd_imm_s(p[v], UNROLL * al);
            }
            c[nv] = g.b.ins().iadd_imm_s(p[nv], UNROLL * bl);
            Ok(c)
        })?;
        let p = out[..np].to_vec();
        let mut acc = out[np..].to_vec();
        for u in 0..d.kk - ku {
            step(self, &p, u * al, u * bl, &mut acc);
        }
        Ok(acc)
    }

    /// The end of a micro-kernel: C = acc + A·B, with `acc` (a tile, possibly
    /// C itself, or a lazy expression) read at each element.
    #[allow(clippy::too_many_arguments)]
    fn micro_epilogue(
        &mut self,
        d: &DotArgs,
        i0: Value,
        j0: Value,
        mr: usize,
        nv: usize,
        last: u32,
        out: &[Value],
    ) -> Res<()> {
        let bj0 = self.b.ins().ishl_imm_s(j0, 2);
        let c0 = self.b.ins().imul_imm_s(i0, (d.n * 4) as i64);
        let c0 = self.b.ins().iadd(d.dst, c0);
        let c0 = self.b.ins().iadd(c0, bj0);
        let map = identity_map(&d.shape);
        for r in 0..mr {
            let i = self.b.ins().iadd_imm_s(i0, r as i64);
            for v in 0..nv {
                let x = out[r * nv + v];
                let off = (r * d.n * 4 + v * 16) as i32;
                if v + 1 == nv && last < 4 {
                    for lane in 0..last as u8 {
                        let mut y = self.b.ins().extractlane(x, lane);
                        if let Some(c) = d.acc {
                            let j = self.b.ins().iadd_imm_s(j0, (4 * v + lane as usize) as i64);
                            let c = self.eval(c, &map, &Pt { idx: vec![i, j], vaxis: None })?;
                            y = self.b.ins().fadd(c, y);
                        }
                        self.b.ins().store(flags(), y, c0, off + 4 * lane as i32);
                    }
                } else {
                    let y = match d.acc {
                        Some(c) => {
                            let j = self.b.ins().iadd_imm_s(j0, (4 * v) as i64);
                            let c = self.eval(c, &map, &Pt { idx: vec![i, j], vaxis: Some(1) })?;
                            let c = self.widen(c);
                            self.b.ins().fadd(c, x)
                        }
                        None => x,
                    };
                    self.b.ins().store(flags(), y, c0, off);
                }
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn dot_sum(
        &mut self,
        abase: Value,
        bbase: Value,
        i: Value,
        j: Value,
        ai: i64,
        al: i64,
        bl: i64,
        bj: i64,
        kk: i64,
    ) -> Res<Value> {
        let ia = self.b.ins().imul_imm_s(i, ai * 4);
        let arow = self.b.ins().iadd(abase, ia);
        let jb = self.b.ins().imul_imm_s(j, bj * 4);
        let bcol = self.b.ins().iadd(bbase, jb);
        let zero = self.b.ins().f32const(0.0);
        let fma = self.target.fma;
        let out = self.counted(0, kk, 1, vec![zero], &mut |g, l, c| {
            let la = g.b.ins().imul_imm_s(l, al * 4);
            let pa = g.b.ins().iadd(arow, la);
            let lb = g.b.ins().imul_imm_s(l, bl * 4);
            let pb = g.b.ins().iadd(bcol, lb);
            let x = g.b.ins().load(F32, flags(), pa, 0);
            let y = g.b.ins().load(F32, flags(), pb, 0);
            let acc = c[0];
            let r = Fm::new(&mut g.b, &mut g.pool, fma, x).madd(x, y, acc);
            Ok(vec![r])
        })?;
        Ok(out[0])
    }

    fn emit_reduce(&mut self, s: &'k Stmt, func: ReduceFn, x: TValue, axis: usize) -> Res<()> {
        let Some(&r) = s.results.first() else { return Ok(()) };
        let xs = self.shape(x);
        let d = self.dtype(x);
        let len = *xs.get(axis).ok_or_else(|| self.err(&s.op, "axis out of range"))? as i64;
        if !is_float(d) && func == ReduceFn::LogSumExp {
            return Err(self.err(&s.op, "logsumexp of integers is not supported"));
        }
        let xmap = identity_map(&xs);
        let rshape = self.shape(r);
        let scalar = self.repr(r) == Repr::Scalar;
        let dst = if scalar { None } else { Some(self.tile_addr(r)?) };
        let strides = row_major(&rshape);
        let rmap = identity_map(&rshape);
        // Along the contiguous axis: vectors along the row, then across lanes.
        let row = self.vectorize && len >= 4 && xs[axis + 1..].iter().all(|s| *s == 1);
        let vector = self.vectorize && !row;
        // Elements that the only reader masks off are not reduced (e.g. the
        // upper triangle of a causal score tile): they hold zeros.
        let guard = dst.and_then(|_| self.plan.read_through_where(self.k, r));
        let mut result = None;
        self.for_points(&rshape, vector, &mut |g, pt| {
            let mut idx = pt.idx.clone();
            let zero = g.b.ins().iconst(I64, 0);
            idx.insert(axis, zero);
            let vaxis = pt.vaxis.map(|a| if a >= axis { a + 1 } else { a });
            let xp = Pt { idx, vaxis };
            let red = Red { func, x, float: is_float(d), axis, len, row };
            let (Some(dst), Some((c, keep))) = (dst, guard) else {
                let y = g.reduce_point(&red, &xmap, &xp)?;
                match dst {
                    Some(dst) => g.put(dst, &strides, &rmap, pt, y),
                    None => result = Some(y),
                }
                return Ok(());
            };
            let cmap = broadcast_map(&g.shape(c), &rshape, &rmap);
            let cv = g.eval(c, &cmap, pt)?;
            let go = g.any_lane(cv, keep);
            let (work, skip, merge) = (g.b.create_block(), g.b.create_block(), g.b.create_block());
            g.b.ins().brif(go, work, &[], skip, &[]);
            g.switch(work);
            g.b.seal_block(work);
            let y = g.reduce_point(&red, &xmap, &xp)?;
            g.put(dst, &strides, &rmap, pt, y);
            g.b.ins().jump(merge, &[]);
            g.switch(skip);
            g.b.seal_block(skip);
            let z = g.fold_init(ReduceFn::Sum, is_float(d), if pt.vaxis.is_some() { 4 } else { 1 });
            g.put(dst, &strides, &rmap, pt, z);
            g.b.ins().jump(merge, &[]);
            g.switch(merge);
            g.b.seal_block(merge);
            Ok(())
        })?;
        if let Some(y) = result {
            self.set_scalar(r, y);
        }
        Ok(())
    }

    /// Whether some lane of boolean `c` equals `want` (a branch condition).
    fn any_lane(&mut self, c: Value, want: bool) -> Value {
        if self.ty_of(c).is_vector() {
            let m = self.truthy(c);
            if want {
                self.b.ins().vany_true(m)
            } else {
                let all = self.b.ins().vall_true(m);
                self.b.ins().bxor_imm_s(all, 1)
            }
        } else {
            let cc = if want { IntCC::NotEqual } else { IntCC::Equal };
            self.b.ins().icmp_imm_s(cc, c, 0)
        }
    }

    fn fold(&mut self, func: ReduceFn, float: bool, acc: Value, y: Value) -> Value {
        match (func, float) {
            (ReduceFn::Max, true) => self.fmax_rust(acc, y, true),
            (ReduceFn::Min, true) => self.fmax_rust(acc, y, false),
            (ReduceFn::Max, false) => self.b.ins().smax(acc, y),
            (ReduceFn::Min, false) => self.b.ins().smin(acc, y),
            (_, true) => self.b.ins().fadd(acc, y),
            (_, false) => self.b.ins().iadd(acc, y),
        }
    }

    /// The identity of a fold.
    fn fold_init(&mut self, func: ReduceFn, float: bool, lanes: u32) -> Value {
        let v = match (func, float) {
            (ReduceFn::Max | ReduceFn::LogSumExp, true) => self.b.ins().f32const(f32::NEG_INFINITY),
            (ReduceFn::Min, true) => self.b.ins().f32const(f32::INFINITY),
            (ReduceFn::Max, false) => self.b.ins().iconst(I32, i32::MIN as i64),
            (ReduceFn::Min, false) => self.b.ins().iconst(I32, i32::MAX as i64),
            (_, true) => self.b.ins().f32const(0.0),
            (_, false) => self.b.ins().iconst(I32, 0),
        };
        self.widen_to(v, lanes)
    }

    /// One pass of a fold along the reduced axis at `xp`; with `shift`, folds
    /// `exp(x − shift)` instead of `x`.
    fn fold_pass(&mut self, red: &Red, f: ReduceFn, xmap: &[Option<u8>], xp: &Pt, shift: Option<Value>) -> Res<Value> {
        let fma = self.target.fma;
        let (x, float, axis, len) = (red.x, red.float, red.axis, red.len);
        let term = |g: &mut Self, p: &Pt, lanes: u32| -> Res<Value> {
            let y = g.eval(x, xmap, p)?;
            let y = g.bool01(y);
            let y = g.widen_to(y, lanes);
            Ok(match shift {
                Some(m) => {
                    let m = g.widen_to(m, lanes);
                    let t = g.b.ins().fsub(y, m);
                    Fm::new(&mut g.b, &mut g.pool, fma, t).exp(t)
                }
                None => y,
            })
        };
        if !red.row {
            let lanes = if xp.vaxis.is_some() { 4 } else { 1 };
            let start = self.fold_init(f, float, lanes);
            let out = self.counted(0, len, 1, vec![start], &mut |g, l, c| {
                let mut p = xp.clone();
                p.idx[axis] = l;
                let y = term(g, &p, lanes)?;
                Ok(vec![g.fold(f, float, c[0], y)])
            })?;
            return Ok(out[0]);
        }
        let n4 = len / 4 * 4;
        let start = self.fold_init(f, float, 4);
        let out = self.counted(0, n4, 4, vec![start], &mut |g, l, c| {
            let mut p = xp.clone();
            p.idx[axis] = l;
            p.vaxis = Some(axis);
            let y = term(g, &p, 4)?;
            Ok(vec![g.fold(f, float, c[0], y)])
        })?;
        let v = out[0];
        let l0 = self.b.ins().extractlane(v, 0);
        let l1 = self.b.ins().extractlane(v, 1);
        let l2 = self.b.ins().extractlane(v, 2);
        let l3 = self.b.ins().extractlane(v, 3);
        let a = self.fold(f, float, l0, l1);
        let b = self.fold(f, float, l2, l3);
        let mut acc = self.fold(f, float, a, b);
        for t in n4..len {
            let mut p = xp.clone();
            p.idx[axis] = self.b.ins().iconst(I64, t);
            p.vaxis = None;
            let y = term(self, &p, 1)?;
            acc = self.fold(f, float, acc, y);
        }
        Ok(acc)
    }

    /// Reduces along `red.axis` at the point `xp` (whose index on that axis is replaced).
    fn reduce_point(&mut self, red: &Red, xmap: &[Option<u8>], xp: &Pt) -> Res<Value> {
        let float = red.float;
        match red.func {
            ReduceFn::LogSumExp => {
                let m = self.fold_pass(red, ReduceFn::Max, xmap, xp, None)?;
                let ninf = self.fconst_like(m, f32::NEG_INFINITY);
                let zero = self.fconst_like(m, 0.0);
                let is_ninf = self.b.ins().fcmp(FloatCC::Equal, m, ninf);
                let shift = select_mask(&mut self.b, is_ninf, zero, m);
                let sum = self.fold_pass(red, ReduceFn::Sum, xmap, xp, Some(shift))?;
                let l = Fm::new(&mut self.b, &mut self.pool, self.target.fma, sum).log(sum);
                let r = self.b.ins().fadd(m, l);
                Ok(select_mask(&mut self.b, is_ninf, ninf, r))
            }
            ReduceFn::Mean => {
                let sum = self.fold_pass(red, ReduceFn::Sum, xmap, xp, None)?;
                if red.len == 0 {
                    return Ok(sum);
                }
                if float {
                    let n = self.fconst_like(sum, red.len as f32);
                    Ok(self.b.ins().fdiv(sum, n))
                } else {
                    let n = self.iconst_like(sum, red.len);
                    Ok(self.int_div(BinaryFn::Div, sum, n, None))
                }
            }
            f => self.fold_pass(red, f, xmap, xp, None),
        }
    }

    fn emit_cumsum(&mut self, s: &'k Stmt, x: TValue, axis: usize, reverse: bool, exclusive: bool) -> Res<()> {
        let Some(&r) = s.results.first() else { return Ok(()) };
        let xs = self.shape(x);
        let len = *xs.get(axis).ok_or_else(|| self.err(&s.op, "axis out of range"))? as i64;
        let float = is_float(self.dtype(x));
        let map = identity_map(&xs);
        let strides = row_major(&xs);
        if self.repr(r) == Repr::Scalar {
            self.clear_cache();
            let pt = self.point0(xs.len());
            let y = self.eval(x, &map, &pt)?;
            let y = if exclusive {
                if float {
                    self.b.ins().f32const(0.0)
                } else {
                    self.b.ins().iconst(I32, 0)
                }
            } else {
                y
            };
            self.set_scalar(r, y);
            return Ok(());
        }
        let dst = self.tile_addr(r)?;
        let mut outer = xs.clone();
        outer[axis] = 1;
        let vector = self.vectorize;
        self.for_points(&outer, vector, &mut |g, pt| {
            let lanes = if pt.vaxis.is_some() { 4 } else { 1 };
            let z = if float { g.b.ins().f32const(0.0) } else { g.b.ins().iconst(I32, 0) };
            let z = g.widen_to(z, lanes);
            g.counted(0, len, 1, vec![z], &mut |g, step, c| {
                let j = if reverse {
                    let last = g.b.ins().iconst(I64, len - 1);
                    g.b.ins().isub(last, step)
                } else {
                    step
                };
                let mut p = pt.clone();
                p.idx[axis] = j;
                let y = g.eval(x, &map, &p)?;
                let y = g.bool01(y);
                let y = g.widen_to(y, lanes);
                let next = if float { g.b.ins().fadd(c[0], y) } else { g.b.ins().iadd(c[0], y) };
                let out = if exclusive { c[0] } else { next };
                g.put(dst, &strides, &map, &p, out);
                Ok(vec![next])
            })?;
            Ok(())
        })
    }
}
