//! Tile simplification: constant folding, common subexpressions and dead code.
//!
//! [`simplify`] repeats two sweeps until neither changes anything (at most
//! [`MAX_ROUNDS`] times), then renumbers the values densely:
//!
//! 1. **Fold and share** (one walk in program order, with a substitution of
//!    values for the results of deleted statements):
//!    - an op whose operands are all constants becomes a `const` when the tile
//!      interpreter computes one uniform value for it, the same bits in f64 and
//!      in f32 arithmetic (so folding changes no result in either precision;
//!      `exp(1.0)` in f32 stays, `4 * 16` and `0.5 + 0.25` fold);
//!    - `where` on a constant condition becomes its branch (a `broadcast` of
//!      it where the shapes differ);
//!    - `if` on a constant condition is replaced by the taken arm's statements;
//!      a `for` whose constant bounds give no iteration by its initial values
//!      (unless its step is a constant that is not positive: that loop fails);
//!    - a pure op equal to one already computed in the same or an enclosing
//!      block (same op, same operands after substitution, same result types) is
//!      replaced by that one. Loads count as pure only from pointers the kernel
//!      never stores to; distinct pointer parameters are assumed not to alias
//!      (the tile interpreter cannot bind one buffer to two of them).
//! 2. **Dead code** (one walk backwards, exact): a statement none of whose
//!    results is used is deleted unless it is a store, or a `for` / `if` that
//!    stores. Unused loads are deleted too (they have no effect).
//!
//! The result verifies when the input does, computes the same bits in the tile
//! interpreter, and has no more statements than the input.

use mixc_ir::dtype::DType;
use mixc_ir::ops::{BinaryFn, ReduceFn, UnaryFn};
use mixc_ir::tile::interp::{run_kernel, ArgValue, Precision};
use mixc_ir::tile::{Block, Kernel, KernelBuilder, ParamId, Program, Stmt, TOp, TValue, TileType};
use std::collections::{HashMap, HashSet};

/// The most fold-and-sweep rounds.
pub const MAX_ROUNDS: usize = 8;
/// The most elements of an operand or result that folding evaluates.
const FOLD_MAX_NUMEL: usize = 1 << 14;
/// The most multiply-adds of a `dot` that folding evaluates.
const FOLD_MAX_DOT: usize = 1 << 20;

/// Simplifies a kernel (see the module docs).
pub fn simplify(k: &Kernel) -> Kernel {
    let mut k = k.clone();
    for _ in 0..MAX_ROUNDS {
        let folded = fold_and_share(&mut k);
        let swept = eliminate_dead(&mut k);
        if !folded && !swept {
            break;
        }
    }
    renumber_densely(&mut k);
    k
}

/// Simplifies every kernel of a program; buffers and launches are unchanged
/// (parameters are kept, so every launch still fits its kernel).
pub fn simplify_program(p: &Program) -> Program {
    let mut q = p.clone();
    for k in &mut q.kernels {
        *k = simplify(k);
    }
    q
}

/// Rewrites every operand an op reads directly (not those of nested blocks).
fn map_operands(op: &mut TOp, f: &mut impl FnMut(TValue) -> TValue) {
    let opt = |m: &mut Option<TValue>, f: &mut dyn FnMut(TValue) -> TValue| {
        if let Some(m) = m {
            *m = f(*m);
        }
    };
    match op {
        TOp::ProgramId(_) | TOp::Param(_) | TOp::Const(_) | TOp::Arange(_) => {}
        TOp::Unary(_, x)
        | TOp::Cast(x, _)
        | TOp::Broadcast(x)
        | TOp::Reshape(x)
        | TOp::Transpose(x)
        | TOp::Reduce { x, .. }
        | TOp::Cumsum { x, .. } => *x = f(*x),
        TOp::Binary(_, a, b) => {
            *a = f(*a);
            *b = f(*b);
        }
        TOp::Select(c, a, b) => {
            *c = f(*c);
            *a = f(*a);
            *b = f(*b);
        }
        TOp::Load { offsets, mask, .. } => {
            *offsets = f(*offsets);
            opt(mask, f);
        }
        TOp::Store { offsets, value, mask, .. } => {
            *offsets = f(*offsets);
            *value = f(*value);
            opt(mask, f);
        }
        TOp::Dot { a, b, acc, .. } => {
            *a = f(*a);
            *b = f(*b);
            opt(acc, f);
        }
        TOp::For { lo, hi, step, init, .. } => {
            *lo = f(*lo);
            *hi = f(*hi);
            *step = f(*step);
            for v in init {
                *v = f(*v);
            }
        }
        TOp::If { cond, .. } => *cond = f(*cond),
    }
}

fn nested_blocks(op: &TOp) -> Vec<&Block> {
    match op {
        TOp::For { body, .. } => vec![body],
        TOp::If { then, otherwise, .. } => vec![then, otherwise],
        _ => vec![],
    }
}

fn has_store(b: &Block) -> bool {
    b.stmts.iter().any(|s| matches!(s.op, TOp::Store { .. }) || nested_blocks(&s.op).into_iter().any(has_store))
}

// ----- folding and sharing -----

/// What makes two pure statements equal: the op with its operands (floats by
/// their bits), and the result types.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum OpKey {
    ProgramId(u8),
    Param(ParamId),
    Const(u64),
    Arange(u32),
    Unary(UnaryFn, TValue),
    Binary(BinaryFn, TValue, TValue),
    Select(TValue, TValue, TValue),
    Cast(TValue, DType),
    Broadcast(TValue),
    Reshape(TValue),
    Transpose(TValue),
    Load(ParamId, TValue, Option<TValue>, u64),
    Dot(TValue, TValue, Option<TValue>, bool, bool),
    Reduce(ReduceFn, TValue, u32),
    Cumsum(TValue, u32, bool, bool),
}

type Key = (OpKey, Vec<TileType>);

struct Rewriter<'k> {
    types: &'k [TileType],
    /// The value that replaces a deleted statement's result.
    subst: Vec<Option<TValue>>,
    /// Values defined by `const` (after substitution).
    consts: Vec<Option<f64>>,
    /// Pure statements seen, per open block.
    scopes: Vec<HashMap<Key, Vec<TValue>>>,
    /// Pointers the kernel stores to: loads from them are never shared.
    stored: HashSet<ParamId>,
    changed: bool,
}

fn fold_and_share(k: &mut Kernel) -> bool {
    let mut stored = HashSet::new();
    k.walk(&mut |s| {
        if let TOp::Store { ptr, .. } = s.op {
            stored.insert(ptr);
        }
    });
    let n = k.types.len();
    let body = std::mem::take(&mut k.body);
    let mut rw = Rewriter {
        types: &k.types,
        subst: vec![None; n],
        consts: vec![None; n],
        scopes: vec![],
        stored,
        changed: false,
    };
    let body = rw.block(body);
    let changed = rw.changed;
    k.body = body;
    changed
}

/// The value of an i32 scalar constant where it is an exact integer in range
/// (so that rounding to i32 leaves it alone).
fn exact_i32(c: f64) -> Option<f64> {
    (c.is_finite() && c.fract() == 0.0 && c >= f64::from(i32::MIN) && c <= f64::from(i32::MAX)).then_some(c)
}

impl Rewriter<'_> {
    fn get(&self, v: TValue) -> TValue {
        self.subst.get(v.index()).copied().flatten().unwrap_or(v)
    }

    fn alias(&mut self, r: TValue, to: TValue) {
        if let Some(s) = self.subst.get_mut(r.index()) {
            *s = Some(to);
        }
        self.changed = true;
    }

    fn const_of(&self, v: TValue) -> Option<f64> {
        self.consts.get(v.index()).copied().flatten()
    }

    fn ty(&self, v: TValue) -> Option<&TileType> {
        self.types.get(v.index())
    }

    fn block(&mut self, b: Block) -> Block {
        self.scopes.push(HashMap::new());
        let mut out = Vec::with_capacity(b.stmts.len());
        for s in b.stmts {
            self.stmt(s, &mut out);
        }
        let yields = b.yields.iter().map(|y| self.get(*y)).collect();
        self.scopes.pop();
        Block { args: b.args, stmts: out, yields }
    }

    /// Whether a loop with these bounds runs no iteration (and does not fail).
    fn runs_never(&self, lo: TValue, hi: TValue, step: TValue) -> bool {
        if let Some(s) = self.const_of(step) {
            if !exact_i32(s).is_some_and(|s| s >= 1.0) {
                return false;
            }
        }
        match (self.const_of(lo).and_then(exact_i32), self.const_of(hi).and_then(exact_i32)) {
            (Some(l), Some(h)) => l >= h,
            _ => false,
        }
    }

    fn stmt(&mut self, mut s: Stmt, out: &mut Vec<Stmt>) {
        map_operands(&mut s.op, &mut |v| self.get(v));
        let Stmt { results, op } = s;
        match op {
            TOp::For { lo, hi, step, init, body } => {
                if self.runs_never(lo, hi, step) && results.len() == init.len() {
                    for (r, i) in results.iter().zip(&init) {
                        self.alias(*r, *i);
                    }
                    self.changed = true;
                    return;
                }
                let body = self.block(body);
                out.push(Stmt { results, op: TOp::For { lo, hi, step, init, body } });
            }
            TOp::If { cond, then, otherwise } => {
                // A bool constant rounds to 1 unless it is 0 (NaN included).
                let taken = self.const_of(cond).map(|c| if c != 0.0 { &then } else { &otherwise });
                if taken.is_some_and(|arm| arm.args.is_empty() && arm.yields.len() == results.len()) {
                    let arm = if self.const_of(cond).is_some_and(|c| c != 0.0) { then } else { otherwise };
                    for st in arm.stmts {
                        self.stmt(st, out);
                    }
                    for (r, y) in results.iter().zip(&arm.yields) {
                        let y = self.get(*y);
                        self.alias(*r, y);
                    }
                    self.changed = true;
                    return;
                }
                let then = self.block(then);
                let otherwise = self.block(otherwise);
                out.push(Stmt { results, op: TOp::If { cond, then, otherwise } });
            }
            op => self.pure_or_store(results, op, out),
        }
    }

    fn pure_or_store(&mut self, results: Vec<TValue>, mut op: TOp, out: &mut Vec<Stmt>) {
        if let ([r], Some(t)) = (&results[..], results.first().and_then(|r| self.ty(*r)).cloned()) {
            if let TOp::Select(c, a, b) = op {
                if let Some(cv) = self.const_of(c) {
                    let branch = if cv != 0.0 { a } else { b };
                    match self.ty(branch) {
                        Some(tb) if *tb == t => {
                            self.alias(*r, branch);
                            return;
                        }
                        Some(tb) if tb.dtype == t.dtype => {
                            op = TOp::Broadcast(branch);
                            self.changed = true;
                        }
                        _ => {}
                    }
                }
            }
            if let Some(c) = self.fold(&op, &t) {
                op = TOp::Const(c);
                self.changed = true;
            }
        }
        if let Some(key) = self.key(&op) {
            let types: Vec<TileType> = results.iter().filter_map(|r| self.ty(*r).cloned()).collect();
            let key = (key, types);
            if let Some(prev) = self.scopes.iter().rev().find_map(|s| s.get(&key)).cloned() {
                if prev.len() == results.len() {
                    for (r, p) in results.iter().zip(prev) {
                        self.alias(*r, p);
                    }
                    return;
                }
            }
            if let Some(scope) = self.scopes.last_mut() {
                scope.insert(key, results.clone());
            }
        }
        if let TOp::Const(c) = op {
            for r in &results {
                if let Some(slot) = self.consts.get_mut(r.index()) {
                    *slot = Some(c);
                }
            }
        }
        out.push(Stmt { results, op });
    }

    fn key(&self, op: &TOp) -> Option<OpKey> {
        Some(match *op {
            TOp::ProgramId(a) => OpKey::ProgramId(a),
            TOp::Param(p) => OpKey::Param(p),
            TOp::Const(c) => OpKey::Const(c.to_bits()),
            TOp::Arange(n) => OpKey::Arange(n),
            TOp::Unary(f, x) => OpKey::Unary(f, x),
            TOp::Binary(f, a, b) => OpKey::Binary(f, a, b),
            TOp::Select(c, a, b) => OpKey::Select(c, a, b),
            TOp::Cast(x, d) => OpKey::Cast(x, d),
            TOp::Broadcast(x) => OpKey::Broadcast(x),
            TOp::Reshape(x) => OpKey::Reshape(x),
            TOp::Transpose(x) => OpKey::Transpose(x),
            TOp::Load { ptr, offsets, mask, other } if !self.stored.contains(&ptr) => {
                OpKey::Load(ptr, offsets, mask, other.to_bits())
            }
            TOp::Dot { a, b, acc, trans_a, trans_b } => OpKey::Dot(a, b, acc, trans_a, trans_b),
            TOp::Reduce { func, x, axis } => OpKey::Reduce(func, x, axis),
            TOp::Cumsum { x, axis, reverse, exclusive } => OpKey::Cumsum(x, axis, reverse, exclusive),
            TOp::Load { .. } | TOp::Store { .. } | TOp::For { .. } | TOp::If { .. } => return None,
        })
    }

    /// The uniform value of an op on constants, as the tile interpreter computes
    /// it: the op runs alone in a one-program kernel, in f64 and in f32
    /// arithmetic, and folds only where both give one and the same value.
    fn fold(&self, op: &TOp, result: &TileType) -> Option<f64> {
        match op {
            TOp::Unary(..)
            | TOp::Binary(..)
            | TOp::Select(..)
            | TOp::Cast(..)
            | TOp::Broadcast(_)
            | TOp::Reshape(_)
            | TOp::Transpose(_)
            | TOp::Dot { .. }
            | TOp::Reduce { .. }
            | TOp::Cumsum { .. } => {}
            _ => return None,
        }
        let n = result.numel();
        if n == 0 || n > FOLD_MAX_NUMEL {
            return None;
        }
        let mut b = KernelBuilder::new("fold");
        let out = b.ptr_param("out", DType::F64);
        let mut local: HashMap<TValue, TValue> = HashMap::new();
        for v in op.operands() {
            if local.contains_key(&v) {
                continue;
            }
            let (t, c) = (self.ty(v)?, self.const_of(v)?);
            if t.numel() > FOLD_MAX_NUMEL {
                return None;
            }
            local.insert(v, b.constant(c, t.dtype, &t.shape).ok()?);
        }
        if let TOp::Dot { a, .. } = op {
            let m = *result.shape.first()? as usize;
            let inner = self.ty(*a)?.numel() / m.max(1);
            if n.saturating_mul(inner) > FOLD_MAX_DOT {
                return None;
            }
        }
        let mut op = op.clone();
        map_operands(&mut op, &mut |v| local.get(&v).copied().unwrap_or(v));
        let r = *b.emit(op, Some(result.clone())).ok()?.first()?;
        if b.ty(r) != result {
            return None;
        }
        let offsets = match result.shape.len() {
            0 => b.i32(0).ok()?,
            1 => b.arange(u32::try_from(n).ok()?).ok()?,
            _ => {
                let flat = b.arange(u32::try_from(n).ok()?).ok()?;
                b.reshape(flat, &result.shape).ok()?
            }
        };
        b.store(out, offsets, r, None).ok()?;
        let kernel = b.finish().ok()?;
        let mut value: Option<u64> = None;
        for prec in [Precision::F64, Precision::F32] {
            let mut buf = vec![0.0; n];
            run_kernel(&kernel, [1, 1, 1], &mut [ArgValue::Buffer(&mut buf)], prec).ok()?;
            let first = buf.first()?.to_bits();
            if buf.iter().any(|x| x.to_bits() != first) || value.is_some_and(|v| v != first) {
                return None;
            }
            value = Some(first);
        }
        value.map(f64::from_bits)
    }
}

// ----- dead code -----

/// Adds (or takes away) the uses a statement makes, nested blocks included.
fn tally_stmt(s: &Stmt, uses: &mut [u32], add: bool) {
    for v in s.op.operands() {
        if let Some(u) = uses.get_mut(v.index()) {
            *u = if add { u.saturating_add(1) } else { u.saturating_sub(1) };
        }
    }
    for b in nested_blocks(&s.op) {
        tally_block(b, uses, add);
    }
}

fn tally_block(b: &Block, uses: &mut [u32], add: bool) {
    for s in &b.stmts {
        tally_stmt(s, uses, add);
    }
    for v in &b.yields {
        if let Some(u) = uses.get_mut(v.index()) {
            *u = if add { u.saturating_add(1) } else { u.saturating_sub(1) };
        }
    }
}

/// Deletes dead statements; returns whether any went.
fn eliminate_dead(k: &mut Kernel) -> bool {
    let mut uses = vec![0u32; k.types.len()];
    tally_block(&k.body, &mut uses, true);
    sweep(&mut k.body, &mut uses)
}

/// One backward walk: every use of a value comes after its definition (in this
/// block or nested in a later statement), so by the time a statement is
/// reached, every statement that could use it has been kept or deleted.
fn sweep(b: &mut Block, uses: &mut [u32]) -> bool {
    let mut changed = false;
    let mut keep = vec![true; b.stmts.len()];
    for i in (0..b.stmts.len()).rev() {
        let s = &mut b.stmts[i];
        let unused = s.results.iter().all(|r| uses.get(r.index()).copied().unwrap_or(0) == 0);
        let effect = match &s.op {
            TOp::Store { .. } => true,
            op => nested_blocks(op).into_iter().any(has_store),
        };
        if unused && !effect {
            tally_stmt(s, uses, false);
            keep[i] = false;
            changed = true;
            continue;
        }
        match &mut s.op {
            TOp::For { body, .. } => changed |= sweep(body, uses),
            TOp::If { then, otherwise, .. } => {
                changed |= sweep(otherwise, uses);
                changed |= sweep(then, uses);
            }
            _ => {}
        }
    }
    let mut it = keep.into_iter();
    b.stmts.retain(|_| it.next().unwrap_or(true));
    changed
}

// ----- renumbering -----

fn mark_defined(b: &Block, defined: &mut [bool]) {
    for v in b.args.iter().chain(b.stmts.iter().flat_map(|s| &s.results)) {
        if let Some(d) = defined.get_mut(v.index()) {
            *d = true;
        }
    }
    for s in &b.stmts {
        for nb in nested_blocks(&s.op) {
            mark_defined(nb, defined);
        }
    }
}

fn all_refs_defined(b: &Block, defined: &[bool]) -> bool {
    let ok = |v: &TValue| defined.get(v.index()).copied().unwrap_or(false);
    b.yields.iter().all(ok)
        && b.stmts.iter().all(|s| {
            s.op.operands().iter().all(ok) && nested_blocks(&s.op).into_iter().all(|nb| all_refs_defined(nb, defined))
        })
}

fn renumber_block(b: &mut Block, map: &[u32]) {
    let f = |v: TValue| TValue(map.get(v.index()).copied().unwrap_or(v.0));
    for v in b.args.iter_mut().chain(b.yields.iter_mut()) {
        *v = f(*v);
    }
    for s in &mut b.stmts {
        for r in &mut s.results {
            *r = f(*r);
        }
        map_operands(&mut s.op, &mut |v| f(v));
        match &mut s.op {
            TOp::For { body, .. } => renumber_block(body, map),
            TOp::If { then, otherwise, .. } => {
                renumber_block(then, map);
                renumber_block(otherwise, map);
            }
            _ => {}
        }
    }
}

/// Drops arena slots that nothing defines any more, keeping the order of the
/// rest (so `%N` stay in definition order, and the text has no `unused`).
fn renumber_densely(k: &mut Kernel) {
    let mut defined = vec![false; k.types.len()];
    mark_defined(&k.body, &mut defined);
    if defined.iter().all(|d| *d) || !all_refs_defined(&k.body, &defined) {
        return;
    }
    let mut map = vec![0u32; k.types.len()];
    let mut types = Vec::new();
    for (i, t) in k.types.iter().enumerate() {
        if defined[i] {
            map[i] = types.len() as u32;
            types.push(t.clone());
        }
    }
    renumber_block(&mut k.body, &map);
    k.types = types;
}
