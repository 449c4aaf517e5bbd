//! The scaffolding every generic kernel shares: parameters bound to launch
//! arguments as they are declared, operands (a buffer and its strides by dim),
//! and the flat iteration space of one block of elements per program.

use super::super::{LowerError, Lowering};
use mixc_ir::dims::DimId;
use mixc_ir::graph::ValueId;
use mixc_ir::ops::{BinaryFn, UnaryFn};
use mixc_ir::tile::{Arg, Count, KernelBuilder, ParamId, TValue, TileError};
use mixc_ir::DType;

pub type R<T> = Result<T, LowerError>;
pub type TR<T> = Result<T, TileError>;

/// A kernel being built together with the arguments of its launch.
pub struct Kern {
    pub kb: KernelBuilder,
    args: Vec<Arg>,
    sizes: Vec<(Count, TValue)>,
    bufs: Vec<(usize, ParamId)>,
    pub block: u32,
}

/// A buffer as a kernel sees it: its pointer, and the stride of each of its
/// dims (`None`: 1). Offsets bind dims by name, so broadcasting is free.
#[derive(Clone, Debug)]
pub struct Operand {
    pub ptr: ParamId,
    pub dims: Vec<DimId>,
    pub strides: Vec<Option<TValue>>,
}

impl Operand {
    pub fn stride(&self, d: DimId) -> Option<Option<TValue>> {
        self.dims.iter().position(|x| *x == d).map(|p| self.strides[p])
    }
}

/// One block of a flat iteration space over `dims` (row-major): the flat
/// indices, which of them are in range, and the index along every dim.
pub struct Space {
    pub flat: TValue,
    pub mask: TValue,
    pub idx: Vec<(DimId, TValue)>,
}

impl Space {
    pub fn at(&self, d: DimId) -> Option<TValue> {
        self.idx.iter().find(|(x, _)| *x == d).map(|(_, v)| *v)
    }

    /// The index bindings without dim `skip`.
    pub fn without(&self, skip: &[DimId]) -> Vec<(DimId, TValue)> {
        self.idx.iter().filter(|(d, _)| !skip.contains(d)).copied().collect()
    }
}

/// `Mul(Const(1), x)` → `x` and friends, so that equal sizes share a parameter.
pub fn simplify(c: Count) -> Count {
    match c {
        Count::Mul(a, b) => match (simplify(*a), simplify(*b)) {
            (Count::Const(1), x) | (x, Count::Const(1)) => x,
            (Count::Const(x), Count::Const(y)) => Count::Const(x.saturating_mul(y)),
            (x, y) => Count::times(x, y),
        },
        Count::Add(a, b) => match (simplify(*a), simplify(*b)) {
            (Count::Const(0), x) | (x, Count::Const(0)) => x,
            (Count::Const(x), Count::Const(y)) => Count::Const(x.saturating_add(y)),
            (x, y) => Count::plus(x, y),
        },
        Count::CeilDiv(a, by) => Count::ceil_div(simplify(*a), by),
        other => other,
    }
}

/// A parameter name for a count: `B_T` for `B · T`, `S_plus_T` for `S + T`.
fn count_name(lw: &Lowering, c: &Count) -> String {
    match c {
        Count::Const(v) => v.to_string(),
        Count::Dim(d) => lw.g.dims.name(*d).to_string(),
        Count::Mul(a, b) => format!("{}_{}", count_name(lw, a), count_name(lw, b)),
        Count::Add(a, b) => format!("{}_plus_{}", count_name(lw, a), count_name(lw, b)),
        Count::CeilDiv(a, by) => format!("{}_cdiv_{by}", count_name(lw, a)),
    }
}

/// The element count of a shape.
pub fn numel(dims: &[DimId]) -> Count {
    simplify(dims.iter().fold(Count::Const(1), |acc, d| Count::times(acc, Count::Dim(*d))))
}

fn kerr(kb: &KernelBuilder, msg: String) -> TileError {
    TileError::Kernel { kernel: kb.kernel().name.clone(), msg }
}

/// `Σ idx(d) · stride(d)` over the operand's dims; every dim must be bound.
/// A scalar result (no dims, or only scalar indices) stays scalar.
pub fn offset(kb: &mut KernelBuilder, op: &Operand, idx: &[(DimId, TValue)]) -> TR<TValue> {
    offset_of(kb, op, idx, true)
}

/// `Σ idx(d) · stride(d)` over the operand's dims that `idx` binds (the part
/// of an offset that one set of indices contributes).
pub fn partial(kb: &mut KernelBuilder, op: &Operand, idx: &[(DimId, TValue)]) -> TR<TValue> {
    offset_of(kb, op, idx, false)
}

fn offset_of(kb: &mut KernelBuilder, op: &Operand, idx: &[(DimId, TValue)], strict: bool) -> TR<TValue> {
    let mut acc: Option<TValue> = None;
    for (d, s) in op.dims.iter().zip(&op.strides) {
        let Some((_, i)) = idx.iter().find(|(x, _)| x == d) else {
            if !strict {
                continue;
            }
            return Err(kerr(kb, format!("no index bound for {d} of an operand")));
        };
        let term = match s {
            Some(s) => kb.mul(*i, *s)?,
            None => *i,
        };
        acc = Some(match acc {
            Some(a) => kb.add(a, term)?,
            None => term,
        });
    }
    match acc {
        Some(a) => Ok(a),
        None => kb.i32(0),
    }
}

/// Broadcasts a scalar tile to `[block]` (a `[block]` tile is returned as is).
pub fn lanes(kb: &mut KernelBuilder, v: TValue, block: u32) -> TR<TValue> {
    if kb.ty(v).shape.is_empty() {
        kb.broadcast(v, &[block])
    } else {
        Ok(v)
    }
}

/// A masked load of `op` at `off` (broadcast to the mask's shape).
pub fn load(kb: &mut KernelBuilder, op: &Operand, off: TValue, mask: TValue) -> TR<TValue> {
    let shape = kb.ty(mask).shape.clone();
    let off = if kb.ty(off).shape != shape { kb.broadcast(off, &shape)? } else { off };
    // Masked-off lanes read 1, so that integer divisions on them stay defined.
    kb.load(op.ptr, off, Some(mask), 1.0)
}

/// A masked store of `val` to `op` at `off` (both broadcast to the mask's shape).
pub fn store(kb: &mut KernelBuilder, op: &Operand, off: TValue, val: TValue, mask: TValue) -> TR<()> {
    let shape = kb.ty(mask).shape.clone();
    let off = if kb.ty(off).shape != shape { kb.broadcast(off, &shape)? } else { off };
    let val = if kb.ty(val).shape != shape { kb.broadcast(val, &shape)? } else { val };
    kb.store(op.ptr, off, val, Some(mask))
}

/// Rounds a float result to what a graph value of `dtype` holds (the graph
/// interpreter rounds constants, casts and elementwise results), keeping f32 tiles.
pub fn round_to(kb: &mut KernelBuilder, v: TValue, dtype: DType) -> TR<TValue> {
    if !kb.ty(v).dtype.is_float() {
        return Ok(v);
    }
    match dtype {
        DType::F32 => kb.cast(v, DType::F32),
        DType::F16 | DType::BF16 => {
            let r = kb.cast(v, dtype)?;
            kb.cast(r, DType::F32)
        }
        _ => Ok(v),
    }
}

pub fn not(kb: &mut KernelBuilder, c: TValue) -> TR<TValue> {
    kb.unary(UnaryFn::Not, c)
}

pub fn or(kb: &mut KernelBuilder, a: TValue, b: TValue) -> TR<TValue> {
    kb.binary(BinaryFn::Or, a, b)
}

pub fn eq(kb: &mut KernelBuilder, a: TValue, b: TValue) -> TR<TValue> {
    kb.binary(BinaryFn::Eq, a, b)
}

/// An f32 tile of an integer one.
pub fn to_f32(kb: &mut KernelBuilder, v: TValue) -> TR<TValue> {
    kb.cast(v, DType::F32)
}

/// The indices of flat position `r` of the row-major space over `dims`;
/// `sizes[p]` is the size of `dims[p]` (the first is not used).
pub fn unflatten(kb: &mut KernelBuilder, r: TValue, dims: &[DimId], sizes: &[TValue]) -> TR<Vec<(DimId, TValue)>> {
    let mut rest = r;
    let mut idx = Vec::with_capacity(dims.len());
    for (p, d) in dims.iter().enumerate().rev() {
        if p == 0 {
            idx.push((*d, rest));
        } else {
            let sz = sizes[p];
            idx.push((*d, kb.binary(BinaryFn::Rem, rest, sz)?));
            rest = kb.div(rest, sz)?;
        }
    }
    idx.reverse();
    Ok(idx)
}

/// `for iv in 0..hi` carrying `init`.
pub fn for_n(
    kb: &mut KernelBuilder,
    hi: TValue,
    init: &[TValue],
    body: impl FnOnce(&mut KernelBuilder, TValue, &[TValue]) -> TR<Vec<TValue>>,
) -> TR<Vec<TValue>> {
    let lo = kb.i32(0)?;
    let step = kb.i32(1)?;
    kb.for_loop(lo, hi, step, init, body)
}

impl Kern {
    pub fn new(lw: &Lowering, name: &str) -> Kern {
        Kern {
            kb: KernelBuilder::new(name),
            args: Vec::new(),
            sizes: Vec::new(),
            bufs: Vec::new(),
            block: lw.sched.block_elems.max(1),
        }
    }

    fn unique(&self, name: &str) -> String {
        if self.kb.kernel().param_by_name(name).is_none() {
            return name.to_string();
        }
        (2..)
            .map(|i| format!("{name}_{i}"))
            .find(|n| self.kb.kernel().param_by_name(n).is_none())
            .unwrap_or_else(|| name.to_string())
    }

    /// An i32 size computed at launch (a constant when it is one), named after
    /// what it counts. Call it at the kernel's top level only: the value is
    /// reused for equal counts.
    pub fn size(&mut self, lw: &Lowering, c: Count) -> R<TValue> {
        let c = simplify(c);
        if let Count::Const(v) = c {
            return Ok(self.kb.i32(i64::try_from(v).unwrap_or(i64::MAX))?);
        }
        if let Some((_, t)) = self.sizes.iter().find(|(x, _)| *x == c) {
            return Ok(*t);
        }
        let name = self.unique(&format!("n_{}", count_name(lw, &c)));
        let t = self.kb.scalar_param(&name, DType::I32)?;
        self.args.push(Arg::Size(c.clone()));
        self.sizes.push((c, t));
        Ok(t)
    }

    /// The size of a dim.
    pub fn dim(&mut self, lw: &Lowering, d: DimId) -> R<TValue> {
        self.size(lw, Count::Dim(d))
    }

    /// The sizes of `dims`.
    pub fn dims(&mut self, lw: &Lowering, dims: &[DimId]) -> R<Vec<TValue>> {
        dims.iter().map(|d| self.dim(lw, *d)).collect()
    }

    /// A pointer parameter bound to buffer `b` (one per buffer: a launch takes
    /// each buffer once).
    pub fn ptr(&mut self, lw: &Lowering, name: &str, b: usize) -> R<ParamId> {
        if let Some((_, p)) = self.bufs.iter().find(|(x, _)| *x == b) {
            return Ok(*p);
        }
        let Some(decl) = lw.prog.buffers.get(b) else {
            return Err(LowerError::Schedule(format!("buffer {b} does not exist")));
        };
        let name = self.unique(name);
        let p = self.kb.ptr_param(&name, decl.dtype);
        self.args.push(Arg::Buffer(b));
        self.bufs.push((b, p));
        Ok(p)
    }

    /// The buffer of graph value `v` with its strides.
    pub fn operand(&mut self, lw: &mut Lowering, v: ValueId) -> R<Operand> {
        let b = lw.buffer(v);
        let name = lw.g.value(v).name.clone();
        self.operand_named(lw, v, b, &name)
    }

    /// Buffer `b` seen with the dims and row-major strides of graph value `v`
    /// (a buffer holding `v`'s elements in the same order, such as the operand
    /// of a reshape that was not carried out).
    pub fn operand_at(&mut self, lw: &mut Lowering, v: ValueId, b: usize) -> R<Operand> {
        let name = match lw.prog.buffers.get(b) {
            Some(buf) => buf.name.clone(),
            None => lw.g.value(v).name.clone(),
        };
        self.operand_named(lw, v, b, &name)
    }

    fn operand_named(&mut self, lw: &mut Lowering, v: ValueId, b: usize, name: &str) -> R<Operand> {
        let ptr = self.ptr(lw, name, b)?;
        let dims = lw.g.ty(v).shape.clone();
        let mut strides = Vec::with_capacity(dims.len());
        for c in lw.strides(v) {
            strides.push(match simplify(c) {
                Count::Const(1) => None,
                c => Some(self.size(lw, c)?),
            });
        }
        Ok(Operand { ptr, dims, strides })
    }

    /// A flat, contiguous view of buffer `b` (one dim-less stride of 1).
    pub fn flat_operand(&mut self, lw: &Lowering, name: &str, b: usize) -> R<Operand> {
        let ptr = self.ptr(lw, name, b)?;
        Ok(Operand { ptr, dims: vec![], strides: vec![] })
    }

    /// This program's block of the row-major space over `dims`.
    pub fn space(&mut self, lw: &Lowering, dims: &[DimId]) -> R<Space> {
        let Space { flat, mask, .. } = self.flat(lw, numel(dims))?;
        // The outermost size is not needed to decompose an index.
        let mut sizes = vec![flat];
        sizes.extend(self.dims(lw, dims.get(1..).unwrap_or(&[]))?);
        let idx = unflatten(&mut self.kb, flat, dims, &sizes)?;
        Ok(Space { flat, mask, idx })
    }

    /// This program's block of `0..n` (no per-dim indices).
    pub fn flat(&mut self, lw: &Lowering, n: Count) -> R<Space> {
        let b = self.block;
        let n = self.size(lw, n)?;
        let kb = &mut self.kb;
        let pid = kb.program_id(0)?;
        let bs = kb.i32(i64::from(b))?;
        let base = kb.mul(pid, bs)?;
        let ar = kb.arange(b)?;
        let flat = kb.add(ar, base)?;
        let mask = kb.lt(flat, n)?;
        Ok(Space { flat, mask, idx: Vec::new() })
    }

    /// Finishes the kernel and launches it over `grid`.
    pub fn launch_grid(self, lw: &mut Lowering, grid: [Count; 3]) -> R<()> {
        let k = self.kb.finish()?;
        lw.launch(k, grid, self.args)
    }

    /// Finishes the kernel and launches it over `ceil(total / block)` programs.
    pub fn launch(self, lw: &mut Lowering, total: Count) -> R<()> {
        let k = self.kb.finish()?;
        let grid = [simplify(Count::ceil_div(total, u64::from(self.block))), Count::Const(1), Count::Const(1)];
        lw.launch(k, grid, self.args)
    }
}
