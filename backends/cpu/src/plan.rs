//! Planning: how each tile value is held, and where tiles live.
//!
//! Every value is one of
//! - a **scalar** (one element: a Cranelift variable),
//! - a **tile** in a stack slot (row-major, its own shape), or
//! - **lazy**: an elementwise op (or a broadcast, transpose, or reshape that
//!   only adds or drops unit axes) computed where it is consumed, element by
//!   element, inside the consumer's loop. Chains of elementwise ops thus fuse
//!   into the loads, stores, reductions, and materializations that use them.
//!
//! A lazy value becomes a tile when recomputing it would cost too much: it is
//! expensive (transcendentals, divisions) and used more than once, used inside
//! a deeper loop than it is defined in, or read through a broadcast; and when
//! its fused expression grows too large.
//!
//! Tiles get stack slots by liveness over a pre-order numbering of statements:
//! a value defined outside a loop and used inside it lives to the loop's end;
//! loop-carried tiles live in one slot for the whole loop (the loop's results
//! alias it); a reshape that is not lazy aliases its operand's slot.

use mixc_ir::ops::{BinaryFn, ReduceFn, UnaryFn};
use mixc_ir::tile::{Kernel, Stmt, TOp, TValue};
use std::collections::{HashMap, HashSet};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repr {
    Scalar,
    Tile,
    Lazy,
}

/// A strided view of a tile slot.
#[derive(Clone, Debug, PartialEq)]
pub struct View {
    pub root: usize,
    /// Element strides per axis of the viewed value (0 where broadcast).
    pub strides: Vec<i64>,
}

/// Operand layout of a dot.
#[derive(Clone, Copy, Debug)]
pub struct DotLayout {
    /// Scratch bytes for A (materialized row-major) when it is not a view.
    pub a_temp: Option<u32>,
    /// Scratch bytes for B: packed, or (narrow outputs) materialized row-major.
    pub b_temp: Option<u32>,
    pub b_packed: bool,
    pub n_pad: usize,
}

/// Recomputation cost at which a reused lazy value is materialized.
const MATERIALIZE_COST: u32 = 8;
/// Largest fused expression (in ops) before a value is materialized.
const MAX_TREE: u32 = 40;

pub struct Plan<'k> {
    pub repr: Vec<Repr>,
    /// The defining statement of each value (none for block arguments).
    pub def: Vec<Option<&'k Stmt>>,
    /// Union of values sharing one slot (tiles only).
    root: Vec<usize>,
    /// Root → stack slot index.
    slot_of_root: HashMap<usize, usize>,
    /// Stack slot sizes in bytes.
    pub slot_bytes: Vec<u32>,
    /// Scratch slots of a statement (by its address), in request order.
    temps: HashMap<usize, Vec<usize>>,
    /// The statements that read each value (once per statement), and how
    /// many blocks yield it.
    users: Vec<Vec<&'k Stmt>>,
    yielded: Vec<u32>,
    /// Each loop's induction variable → the loop's `(lo, hi, step)`.
    loop_bounds: HashMap<usize, (TValue, TValue, TValue)>,
}

pub fn numel(shape: &[u32]) -> usize {
    shape.iter().map(|s| *s as usize).product()
}

/// Non-unit sizes of a shape.
pub fn squeezed(shape: &[u32]) -> Vec<u32> {
    shape.iter().copied().filter(|s| *s != 1).collect()
}

fn stmt_key(s: &Stmt) -> usize {
    s as *const Stmt as usize
}

/// Whether a reshape only adds or removes unit axes.
pub fn squeeze_reshape(from: &[u32], to: &[u32]) -> bool {
    squeezed(from) == squeezed(to)
}

fn op_cost(k: &Kernel, op: &TOp) -> u32 {
    match op {
        TOp::Unary(f, _) => mixc_ir::ops::software_ops(*f),
        TOp::Binary(f, a, _) => {
            let int = k.ty(*a).dtype.is_int() || k.ty(*a).dtype == mixc_ir::DType::Bool;
            match f {
                BinaryFn::Div | BinaryFn::Rem | BinaryFn::FloorDiv if int => 10,
                BinaryFn::Div => 4,
                BinaryFn::Rem | BinaryFn::FloorDiv => 6,
                BinaryFn::Pow => 40,
                _ => 1,
            }
        }
        TOp::Select(..) | TOp::Cast(..) => 1,
        _ => 0,
    }
}

/// Statements whose value may stay lazy.
fn lazy_capable(k: &Kernel, s: &Stmt) -> bool {
    match &s.op {
        TOp::Const(_)
        | TOp::Arange(_)
        | TOp::Unary(..)
        | TOp::Binary(..)
        | TOp::Select(..)
        | TOp::Cast(..)
        | TOp::Broadcast(_)
        | TOp::Transpose(_) => true,
        TOp::Reshape(x) => s.results.first().is_some_and(|r| squeeze_reshape(&k.ty(*x).shape, &k.ty(*r).shape)),
        _ => false,
    }
}

#[derive(Clone, Debug)]
struct Use {
    v: TValue,
    pos: usize,
    loops: Vec<usize>,
}

#[derive(Clone, Copy, Debug, Default)]
struct LoopInfo {
    yield_pos: usize,
}

#[derive(Default)]
struct Walk<'k> {
    pos: usize,
    loops: Vec<usize>,
    loop_info: Vec<LoopInfo>,
    def: Vec<Option<&'k Stmt>>,
    def_pos: Vec<usize>,
    def_loops: Vec<Vec<usize>>,
    uses: Vec<Use>,
    /// Direct consumers: (count of sites, deepest loop depth, largest iteration).
    consumers: Vec<(u32, usize, usize)>,
    /// (For statement, loop id, carried args, results).
    carried: Vec<(&'k Stmt, usize, Vec<TValue>, Vec<TValue>)>,
    /// (If statement) results and the yield positions.
    if_results: Vec<(Vec<TValue>, usize, usize)>,
    /// Writes of tiles at a position (yields into carried slots).
    writes: Vec<Use>,
    temp_sites: Vec<(&'k Stmt, usize)>,
}

impl<'k> Walk<'k> {
    fn next(&mut self) -> usize {
        self.pos += 1;
        self.pos
    }

    fn define(&mut self, v: TValue, s: Option<&'k Stmt>, pos: usize, loops: Vec<usize>) {
        let i = v.index();
        if i < self.def.len() {
            self.def[i] = s;
            self.def_pos[i] = pos;
            self.def_loops[i] = loops;
        }
    }

    fn use_at(&mut self, v: TValue, pos: usize, iter_numel: usize, weight: u32) {
        self.uses.push(Use { v, pos, loops: self.loops.clone() });
        if let Some(c) = self.consumers.get_mut(v.index()) {
            c.0 += weight;
            c.1 = c.1.max(self.loops.len());
            c.2 = c.2.max(iter_numel);
        }
    }

    fn block(&mut self, k: &'k Kernel, b: &'k mixc_ir::tile::Block) {
        for s in &b.stmts {
            self.stmt(k, s);
        }
    }

    fn stmt(&mut self, k: &'k Kernel, s: &'k Stmt) {
        let ne = |v: &TValue| numel(&k.ty(*v).shape);
        match &s.op {
            TOp::For { lo, hi, step, init, body } => {
                let p = self.next();
                for v in [lo, hi, step] {
                    self.use_at(*v, p, 1, 1);
                }
                for v in init {
                    self.use_at(*v, p, ne(v), 1);
                }
                let outer = self.loops.clone();
                for a in &body.args {
                    self.define(*a, None, p, outer.clone());
                }
                let id = self.loop_info.len();
                self.loop_info.push(LoopInfo::default());
                self.loops.push(id);
                self.block(k, body);
                let y = self.next();
                for v in &body.yields {
                    self.use_at(*v, y, ne(v), 1);
                }
                for a in body.args.iter().skip(1) {
                    self.writes.push(Use { v: *a, pos: y, loops: self.loops.clone() });
                }
                self.loops.pop();
                if let Some(l) = self.loop_info.get_mut(id) {
                    l.yield_pos = y;
                }
                for r in &s.results {
                    self.define(*r, Some(s), y, outer.clone());
                }
                self.carried.push((s, id, body.args.iter().skip(1).copied().collect(), s.results.clone()));
                if !body.yields.is_empty() {
                    self.temp_sites.push((s, y));
                }
            }
            TOp::If { cond, then, otherwise } => {
                let p = self.next();
                self.use_at(*cond, p, 1, 1);
                let here = self.loops.clone();
                self.block(k, then);
                let ty = self.next();
                for v in &then.yields {
                    self.use_at(*v, ty, ne(v), 1);
                }
                for r in &s.results {
                    self.define(*r, Some(s), ty, here.clone());
                }
                self.block(k, otherwise);
                let ey = self.next();
                for v in &otherwise.yields {
                    self.use_at(*v, ey, ne(v), 1);
                }
                self.if_results.push((s.results.clone(), ty, ey));
            }
            op => {
                let p = self.next();
                let iter = match op {
                    TOp::Load { offsets, .. } | TOp::Store { offsets, .. } => ne(offsets),
                    TOp::Reduce { x, .. } | TOp::Cumsum { x, .. } => ne(x),
                    TOp::Dot { .. } => 0,
                    _ => s.results.first().map(ne).unwrap_or(1),
                };
                let weight = match op {
                    TOp::Reduce { func: ReduceFn::LogSumExp, .. } => 2,
                    _ => 1,
                };
                let mut seen = HashSet::new();
                for v in op.operands() {
                    if seen.insert(v) {
                        self.use_at(v, p, iter, weight);
                    }
                }
                let loops = self.loops.clone();
                for r in &s.results {
                    self.define(*r, Some(s), p, loops.clone());
                }
                if matches!(op, TOp::Dot { .. }) {
                    self.temp_sites.push((s, p));
                }
            }
        }
    }
}

fn find(root: &mut [usize], v: usize) -> usize {
    let mut r = v;
    while root[r] != r {
        r = root[r];
    }
    let mut x = v;
    while root[x] != r {
        let nx = root[x];
        root[x] = r;
        x = nx;
    }
    r
}

fn union(root: &mut [usize], a: usize, b: usize) {
    let (ra, rb) = (find(root, a), find(root, b));
    if ra != rb {
        let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
        root[hi] = lo;
    }
}

/// Scratch a statement needs: for a dot, one slot per operand that is not a
/// view of a tile; for a loop, one per yield that must go through a temporary.
fn temp_requests(plan: &Plan, k: &Kernel, s: &Stmt) -> Vec<u32> {
    match &s.op {
        TOp::Dot { .. } => {
            let d = plan.dot_layout(k, s);
            d.a_temp.into_iter().chain(d.b_temp).collect()
        }
        TOp::For { body, .. } => plan
            .hazardous_yields(k, &body.args[1..], &body.yields)
            .into_iter()
            .map(|i| (numel(&k.ty(body.yields[i]).shape) * 4) as u32)
            .collect(),
        _ => vec![],
    }
}

impl<'k> Plan<'k> {
    pub fn root(&self, v: TValue) -> usize {
        let mut r = v.index();
        while let Some(&p) = self.root.get(r) {
            if p == r {
                break;
            }
            r = p;
        }
        r
    }

    /// The stack slot of a tile value.
    pub fn slot(&self, v: TValue) -> Option<usize> {
        self.slot_of_root.get(&self.root(v)).copied()
    }

    /// The stack slot of a root.
    pub fn slot_of_root(&self, root: usize) -> Option<usize> {
        self.slot_of_root.get(&root).copied()
    }

    /// The statements that read `v` directly (each once).
    pub fn users(&self, v: TValue) -> &[&'k Stmt] {
        self.users.get(v.index()).map(|u| u.as_slice()).unwrap_or(&[])
    }

    /// How many blocks yield `v`.
    pub fn yielded(&self, v: TValue) -> u32 {
        self.yielded.get(v.index()).copied().unwrap_or(0)
    }

    /// Scratch slots of a statement.
    pub fn temps(&self, s: &Stmt) -> &[usize] {
        self.temps.get(&stmt_key(s)).map(|v| v.as_slice()).unwrap_or(&[])
    }

    /// `v` as a strided view of a tile, when it is one (a tile, or a lazy
    /// transpose / broadcast / unit-axis reshape of one).
    pub fn view(&self, k: &Kernel, v: TValue) -> Option<View> {
        let shape = &k.ty(v).shape;
        match self.repr.get(v.index())? {
            Repr::Tile => {
                let mut strides = vec![0i64; shape.len()];
                let mut acc = 1i64;
                for i in (0..shape.len()).rev() {
                    strides[i] = if shape[i] == 1 { 0 } else { acc };
                    acc *= shape[i] as i64;
                }
                Some(View { root: self.root(v), strides })
            }
            Repr::Scalar => None,
            Repr::Lazy => match &self.def.get(v.index()).copied().flatten()?.op {
                TOp::Transpose(x) => {
                    let w = self.view(k, *x)?;
                    Some(View { root: w.root, strides: w.strides.iter().rev().copied().collect() })
                }
                TOp::Broadcast(x) => {
                    let w = self.view(k, *x)?;
                    let xs = &k.ty(*x).shape;
                    let off = shape.len() - xs.len();
                    let strides = (0..shape.len())
                        .map(|i| if i < off || xs[i - off] == 1 { 0 } else { w.strides[i - off] })
                        .collect();
                    Some(View { root: w.root, strides })
                }
                TOp::Reshape(x) => {
                    let w = self.view(k, *x)?;
                    let xs = &k.ty(*x).shape;
                    let from: Vec<i64> = (0..xs.len()).filter(|i| xs[*i] != 1).map(|i| w.strides[i]).collect();
                    let mut it = from.into_iter();
                    let strides = shape.iter().map(|s| if *s == 1 { 0 } else { it.next().unwrap_or(0) }).collect();
                    Some(View { root: w.root, strides })
                }
                _ => None,
            },
        }
    }

    /// How a dot reads its operands: which need scratch, and whether B is
    /// packed (row-major `[k, n_pad]`, zero-padded to a multiple of 4 columns).
    pub fn dot_layout(&self, k: &Kernel, s: &Stmt) -> DotLayout {
        let TOp::Dot { a, b, trans_b, .. } = &s.op else {
            return DotLayout { a_temp: None, b_temp: None, b_packed: false, n_pad: 0 };
        };
        let n = s.results.first().and_then(|r| k.ty(*r).shape.get(1).copied()).unwrap_or(1) as usize;
        let kk = if *trans_b { k.ty(*b).shape.get(1) } else { k.ty(*b).shape.first() }.copied().unwrap_or(1) as usize;
        let a_temp = self.view(k, *a).is_none().then(|| (numel(&k.ty(*a).shape) * 4) as u32);
        let bview = self.view(k, *b);
        if n < 4 {
            let b_temp = bview.is_none().then(|| (numel(&k.ty(*b).shape) * 4) as u32);
            return DotLayout { a_temp, b_temp, b_packed: false, n_pad: n };
        }
        let direct = bview.is_some_and(|w| {
            let bj = if *trans_b { w.strides[0] } else { w.strides[1] };
            bj == 1 && n.is_multiple_of(4)
        });
        let n_pad = n.next_multiple_of(4);
        let b_temp = (!direct).then(|| (kk * n_pad * 4) as u32);
        DotLayout { a_temp, b_temp, b_packed: !direct, n_pad }
    }

    /// How a lazy expression reads tile roots: for each root it reads, whether
    /// every read is at the same element as the expression's own (identity).
    pub fn reads(&self, k: &Kernel, v: TValue) -> HashMap<usize, bool> {
        let mut out = HashMap::new();
        self.reads_into(k, v, true, &mut out, &mut HashSet::new());
        out
    }

    fn reads_into(
        &self,
        k: &Kernel,
        v: TValue,
        identity: bool,
        out: &mut HashMap<usize, bool>,
        seen: &mut HashSet<(TValue, bool)>,
    ) {
        if !seen.insert((v, identity)) {
            return;
        }
        match self.repr.get(v.index()) {
            Some(Repr::Tile) => {
                let e = out.entry(self.root(v)).or_insert(true);
                *e = *e && identity;
            }
            Some(Repr::Lazy) => {
                let Some(s) = self.def.get(v.index()).copied().flatten() else { return };
                let shape = &k.ty(v).shape;
                for o in s.op.operands() {
                    let same = identity && &k.ty(o).shape == shape && !matches!(s.op, TOp::Transpose(_));
                    self.reads_into(k, o, same, out, seen);
                }
            }
            _ => {}
        }
    }

    /// Whether statement `s` reads tile root `r` only at the element it writes
    /// (so that its result may overwrite `r` in place).
    pub fn stmt_reads_only_identity(&self, k: &Kernel, s: &Stmt, r: usize) -> bool {
        let Some(&res) = s.results.first() else { return false };
        let shape = &k.ty(res).shape;
        let ident = |o: TValue| -> bool {
            let mut out = HashMap::new();
            let same = &k.ty(o).shape == shape;
            self.reads_into(k, o, same, &mut out, &mut HashSet::new());
            out.get(&r).is_none_or(|i| *i)
        };
        let none = |o: TValue| !self.reads(k, o).contains_key(&r);
        match &s.op {
            TOp::Dot { a, b, acc, .. } => none(*a) && none(*b) && acc.is_none_or(ident),
            TOp::Unary(..) | TOp::Binary(..) | TOp::Select(..) | TOp::Cast(..) | TOp::Broadcast(_) | TOp::Const(_) => {
                s.op.operands().into_iter().all(ident)
            }
            _ => s.op.operands().into_iter().all(none),
        }
    }

    /// When the only reader of `v` is one `where(c, v, _)` (or `where(c, _, v)`)
    /// whose condition depends on nothing but constants and aranges: the
    /// condition, and for which value of it the elements of `v` are read.
    /// Elements where the condition says otherwise need not be computed.
    pub fn read_through_where(&self, k: &Kernel, v: TValue) -> Option<(TValue, bool)> {
        let users = self.users.get(v.index())?;
        if users.len() != 1 || self.yielded.get(v.index()) != Some(&0) {
            return None;
        }
        let TOp::Select(c, a, b) = &users[0].op else { return None };
        let keep = match (*a == v, *b == v) {
            (true, false) => true,
            (false, true) => false,
            _ => return None,
        };
        let r = *users[0].results.first()?;
        let (cs, vs) = (&k.ty(*c).shape, &k.ty(v).shape);
        let fits = cs.len() <= vs.len() && cs.iter().rev().zip(vs.iter().rev()).all(|(x, y)| x == y || *x == 1);
        (*c != v && fits && &k.ty(r).shape == vs && self.index_only(*c)).then_some((*c, keep))
    }

    /// Whether a lazy value is computed from constants and aranges alone.
    fn index_only(&self, v: TValue) -> bool {
        if self.repr.get(v.index()) != Some(&Repr::Lazy) {
            return false;
        }
        let Some(s) = self.def.get(v.index()).copied().flatten() else { return false };
        match &s.op {
            TOp::Const(_) | TOp::Arange(_) => true,
            TOp::Unary(..)
            | TOp::Binary(..)
            | TOp::Select(..)
            | TOp::Cast(..)
            | TOp::Broadcast(_)
            | TOp::Reshape(_)
            | TOp::Transpose(_) => s.op.operands().into_iter().all(|o| self.index_only(o)),
            _ => false,
        }
    }

    /// Yields of a loop that must be computed into a temporary before the
    /// carried slots are overwritten.
    pub fn hazardous_yields(&self, k: &Kernel, carried: &[TValue], yields: &[TValue]) -> Vec<usize> {
        let roots: Vec<Option<usize>> =
            carried.iter().map(|c| (self.repr[c.index()] == Repr::Tile).then(|| self.root(*c))).collect();
        let mut out = Vec::new();
        for (i, y) in yields.iter().enumerate() {
            let Some(own) = roots.get(i).copied().flatten() else { continue };
            if self.repr[y.index()] == Repr::Tile && self.root(*y) == own {
                continue;
            }
            let reads = self.reads(k, *y);
            let bad = roots.iter().enumerate().any(|(j, r)| {
                r.is_some_and(|r| match reads.get(&r) {
                    None => false,
                    Some(ident) => j != i || !ident,
                })
            });
            if bad {
                out.push(i);
            }
        }
        out
    }
}

/// The live interval of a root.
#[derive(Clone)]
struct Iv {
    start: usize,
    end: usize,
    def_loops: Vec<usize>,
    bytes: u32,
}

/// Roots' live intervals over the statement numbering: from the first
/// definition to the last use (a use inside a loop the root is defined outside
/// of lasts to that loop's end).
fn intervals(plan: &Plan, k: &Kernel, w: &Walk, order: &[usize]) -> HashMap<usize, Iv> {
    let mut ivs: HashMap<usize, Iv> = HashMap::new();
    for &i in order {
        if plan.repr[i] != Repr::Tile {
            continue;
        }
        let r = plan.root[i];
        let bytes = (numel(&k.types[i].shape) * 4) as u32;
        let e = ivs.entry(r).or_insert(Iv {
            start: w.def_pos[i],
            end: w.def_pos[i],
            def_loops: w.def_loops[i].clone(),
            bytes,
        });
        e.bytes = e.bytes.max(bytes);
        if w.def_pos[i] < e.start {
            e.start = w.def_pos[i];
            e.def_loops = w.def_loops[i].clone();
        }
        e.end = e.end.max(w.def_pos[i]);
    }
    let touch = |ivs: &mut HashMap<usize, Iv>, r: usize, pos: usize, loops: &[usize]| {
        if let Some(iv) = ivs.get_mut(&r) {
            let mut end = pos;
            if loops.len() > iv.def_loops.len() {
                if let Some(l) = w.loop_info.get(loops[iv.def_loops.len()]) {
                    end = end.max(l.yield_pos);
                }
            }
            iv.end = iv.end.max(end);
        }
    };
    for u in w.uses.iter().chain(w.writes.iter()) {
        for r in leaf_roots(plan, u.v) {
            touch(&mut ivs, r, u.pos, &u.loops);
        }
    }
    for (results, ty, ey) in &w.if_results {
        for r in results {
            if plan.repr[r.index()] == Repr::Tile {
                let root = plan.root[r.index()];
                if let Some(iv) = ivs.get_mut(&root) {
                    iv.start = iv.start.min(*ty);
                    iv.end = iv.end.max(*ey);
                }
            }
        }
    }
    ivs
}

/// The roots a value reads when evaluated (itself if a tile, the leaves of a lazy one).
fn leaf_roots(plan: &Plan, v: TValue) -> Vec<usize> {
    let mut out = Vec::new();
    let mut stack = vec![v];
    let mut seen = HashSet::new();
    while let Some(v) = stack.pop() {
        if !seen.insert(v) {
            continue;
        }
        match plan.repr[v.index()] {
            Repr::Tile => out.push(plan.root[v.index()]),
            Repr::Lazy => {
                if let Some(s) = plan.def[v.index()] {
                    stack.extend(s.op.operands());
                }
            }
            Repr::Scalar => {}
        }
    }
    out
}

/// Positions at which each root is read.
fn root_uses(plan: &Plan, w: &Walk) -> HashMap<usize, Vec<usize>> {
    let mut out: HashMap<usize, Vec<usize>> = HashMap::new();
    for u in &w.uses {
        for r in leaf_roots(plan, u.v) {
            out.entry(r).or_default().push(u.pos);
        }
    }
    out
}

fn record_users<'k>(b: &'k mixc_ir::tile::Block, users: &mut [Vec<&'k Stmt>], yielded: &mut [u32]) {
    for s in &b.stmts {
        let mut ops = s.op.operands();
        ops.sort_by_key(|v| v.index());
        ops.dedup();
        for o in ops {
            if let Some(u) = users.get_mut(o.index()) {
                u.push(s);
            }
        }
        match &s.op {
            TOp::For { body, .. } => record_users(body, users, yielded),
            TOp::If { then, otherwise, .. } => {
                record_users(then, users, yielded);
                record_users(otherwise, users, yielded);
            }
            _ => {}
        }
    }
    for y in &b.yields {
        if let Some(c) = yielded.get_mut(y.index()) {
            *c += 1;
        }
    }
}

/// Plans a kernel.
pub fn plan(k: &Kernel) -> Result<Plan<'_>, String> {
    let n = k.types.len();
    let mut w = Walk {
        def: vec![None; n],
        def_pos: vec![0; n],
        def_loops: vec![Vec::new(); n],
        consumers: vec![(0, 0, 0); n],
        ..Default::default()
    };
    w.block(k, &k.body);

    // Representation, in definition order.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|i| w.def_pos[*i]);
    let mut repr = vec![Repr::Tile; n];
    let mut cost = vec![0u32; n];
    let mut size = vec![0u32; n];
    let mut root: Vec<usize> = (0..n).collect();
    for &i in &order {
        let ty = &k.types[i];
        if numel(&ty.shape) <= 1 {
            repr[i] = Repr::Scalar;
            continue;
        }
        let Some(s) = w.def[i] else {
            repr[i] = Repr::Tile;
            continue;
        };
        if lazy_capable(k, s) {
            let ops = s.op.operands();
            let c = op_cost(k, &s.op)
                + ops.iter().filter(|o| repr[o.index()] == Repr::Lazy).map(|o| cost[o.index()]).sum::<u32>();
            let z = 1 + ops.iter().filter(|o| repr[o.index()] == Repr::Lazy).map(|o| size[o.index()]).sum::<u32>();
            let (uses, depth, iter) = w.consumers[i];
            let deeper = depth > w.def_loops[i].len();
            let expanded = iter > numel(&ty.shape);
            let mat = z > MAX_TREE || (c >= MATERIALIZE_COST && (uses >= 2 || deeper || expanded));
            if mat {
                repr[i] = Repr::Tile;
            } else {
                repr[i] = Repr::Lazy;
                cost[i] = c;
                size[i] = z;
            }
            continue;
        }
        match &s.op {
            TOp::Reshape(x) => {
                // A general reshape: same bytes, another shape.
                if repr[x.index()] == Repr::Lazy {
                    repr[x.index()] = Repr::Tile;
                }
                repr[i] = Repr::Tile;
                union(&mut root, i, x.index());
            }
            _ => repr[i] = Repr::Tile,
        }
    }
    // A reshape may have forced its operand into a tile after the operand's
    // consumers computed costs; that only makes them cheaper, so it is safe.

    for (_, _, args, results) in &w.carried {
        for (a, r) in args.iter().zip(results) {
            if repr[a.index()] == Repr::Tile && repr[r.index()] == Repr::Tile {
                union(&mut root, a.index(), r.index());
            }
        }
    }

    let mut plan = Plan {
        repr,
        def: w.def.clone(),
        root: root.clone(),
        slot_of_root: HashMap::new(),
        slot_bytes: Vec::new(),
        temps: HashMap::new(),
        users: vec![Vec::new(); n],
        yielded: vec![0; n],
        loop_bounds: HashMap::new(),
    };
    k.walk(&mut |s| {
        if let TOp::For { lo, hi, step, body, .. } = &s.op {
            if let Some(iv) = body.args.first() {
                plan.loop_bounds.insert(iv.index(), (*lo, *hi, *step));
            }
        }
    });
    record_users(&k.body, &mut plan.users, &mut plan.yielded);
    for i in 0..n {
        let r = find(&mut root, i);
        plan.root[i] = r;
    }

    // Loop-carried tiles updated in place: a yield computed by a statement of
    // the body straight into its carried slot, when nothing in the body reads
    // the carried value after that statement (and the statement reads it only
    // element for element).
    let mut members: HashMap<usize, usize> = HashMap::new();
    for i in 0..n {
        if plan.repr[i] == Repr::Tile {
            *members.entry(plan.root[i]).or_default() += 1;
        }
    }
    let uses = root_uses(&plan, &w);
    for (fs, id, carried, _) in &w.carried {
        let TOp::For { body, .. } = &fs.op else { continue };
        let Some(info) = w.loop_info.get(*id).copied() else { continue };
        for (i, (c, y)) in carried.iter().zip(&body.yields).enumerate() {
            if plan.repr[c.index()] != Repr::Tile || plan.repr[y.index()] != Repr::Tile {
                continue;
            }
            let (rc, ry) = (plan.root[c.index()], plan.root[y.index()]);
            if rc == ry || members.get(&ry) != Some(&1) || w.def_loops[y.index()].last() != Some(id) {
                continue;
            }
            let Some(def) = plan.def[y.index()] else { continue };
            if matches!(def.op, TOp::For { .. } | TOp::If { .. } | TOp::Reshape(_)) {
                continue;
            }
            let p = w.def_pos[y.index()];
            if !plan.stmt_reads_only_identity(k, def, rc) {
                continue;
            }
            let late = uses.get(&rc).is_some_and(|us| us.iter().any(|u| *u > p && *u < info.yield_pos));
            let other_yield_reads =
                body.yields.iter().enumerate().any(|(j, o)| j != i && plan.reads(k, *o).contains_key(&rc));
            if late || other_yield_reads {
                continue;
            }
            union(&mut root, rc, ry);
            *members.entry(rc.min(ry)).or_default() += 1;
        }
    }
    for i in 0..n {
        plan.root[i] = find(&mut root, i);
    }
    let ivs = intervals(&plan, k, &w, &order);

    // A loop's initial tile that dies at the loop becomes its carried slot.
    for (fs, _, carried, _) in &w.carried {
        let TOp::For { init, .. } = &fs.op else { continue };
        for (c, v) in carried.iter().zip(init) {
            if plan.repr[c.index()] != Repr::Tile || plan.repr[v.index()] != Repr::Tile {
                continue;
            }
            let (rc, rv) = (find(&mut root, c.index()), find(&mut root, v.index()));
            let p = w.def_pos[c.index()];
            if rc != rv && ivs.get(&plan.root[v.index()]).is_some_and(|iv| iv.end == p) && plan.root[v.index()] == rv {
                union(&mut root, rc, rv);
            }
        }
    }
    for i in 0..n {
        plan.root[i] = find(&mut root, i);
    }
    let ivs = intervals(&plan, k, &w, &order);

    // A dot accumulating into a tile that dies there does so in place.
    let mut members: HashMap<usize, usize> = HashMap::new();
    for i in 0..n {
        if plan.repr[i] == Repr::Tile {
            *members.entry(plan.root[i]).or_default() += 1;
        }
    }
    for &i in &order {
        let Some(s) = plan.def[i] else { continue };
        let TOp::Dot { a, b, acc: Some(c), .. } = &s.op else { continue };
        if plan.repr[i] != Repr::Tile || members.get(&plan.root[i]) != Some(&1) {
            continue;
        }
        let p = w.def_pos[i];
        let operands: HashMap<usize, bool> = plan.reads(k, *a).into_iter().chain(plan.reads(k, *b)).collect();
        let cand = plan.reads(k, *c).into_iter().find(|(r, ident)| {
            *ident && !operands.contains_key(r) && ivs.get(r).is_some_and(|iv| iv.end == p && iv.start < p)
        });
        if let Some((r, _)) = cand {
            union(&mut root, r, i);
            members.insert(plan.root[i], 0);
        }
    }
    for i in 0..n {
        plan.root[i] = find(&mut root, i);
    }
    let ivs = intervals(&plan, k, &w, &order);

    // Temporaries: intervals of one position.
    let mut temp_ivs: Vec<(usize, usize, u32)> = Vec::new(); // (stmt key, pos, bytes)
    for (s, pos) in &w.temp_sites {
        for bytes in temp_requests(&plan, k, s) {
            temp_ivs.push((stmt_key(s), *pos, bytes));
        }
    }

    // Linear scan: best fit among free slots.
    enum Owner {
        Root(usize),
        Temp(usize),
    }
    let mut items: Vec<(usize, usize, u32, Owner)> =
        ivs.iter().map(|(r, iv)| (iv.start, iv.end, iv.bytes, Owner::Root(*r))).collect();
    for (key, pos, bytes) in temp_ivs {
        items.push((pos, pos, bytes, Owner::Temp(key)));
    }
    items.sort_by_key(|(s, e, _, o)| (*s, *e, matches!(o, Owner::Temp(_))));
    let mut active: Vec<(usize, usize)> = Vec::new(); // (end, slot)
    let mut free: Vec<usize> = Vec::new();
    for (start, end, bytes, owner) in items {
        active.retain(|(e, slot)| {
            if *e < start {
                free.push(*slot);
                false
            } else {
                true
            }
        });
        let bytes = bytes.max(16).next_multiple_of(16);
        let pick = free
            .iter()
            .enumerate()
            .filter(|(_, s)| plan.slot_bytes[**s] >= bytes)
            .min_by_key(|(_, s)| plan.slot_bytes[**s])
            .map(|(i, _)| i);
        let slot = match pick {
            Some(i) => free.swap_remove(i),
            None => {
                plan.slot_bytes.push(bytes);
                plan.slot_bytes.len() - 1
            }
        };
        active.push((end, slot));
        match owner {
            Owner::Root(r) => {
                plan.slot_of_root.insert(r, slot);
            }
            Owner::Temp(key) => plan.temps.entry(key).or_default().push(slot),
        }
    }
    Ok(plan)
}

/// Static facts about integer and boolean expressions: index arithmetic
/// (offsets affine in the vectorized index) and masks that always hold.
impl Plan<'_> {
    fn lazy_or_scalar_def(&self, v: TValue) -> Option<&Stmt> {
        match self.repr.get(v.index())? {
            Repr::Tile => None,
            _ => self.def.get(v.index()).copied().flatten(),
        }
    }

    /// The value of an integer constant.
    pub fn const_int(&self, k: &Kernel, v: TValue) -> Option<i64> {
        let s = self.lazy_or_scalar_def(v)?;
        match &s.op {
            TOp::Const(c) if !k.ty(v).dtype.is_float() => Some(c.trunc() as i64),
            TOp::Broadcast(x) | TOp::Reshape(x) | TOp::Transpose(x) => self.const_int(k, *x),
            _ => None,
        }
    }

    /// Bounds of every element of an integer value, where known.
    pub fn int_range(&self, k: &Kernel, v: TValue) -> Option<(i64, i64)> {
        if k.ty(v).dtype.is_float() {
            return None;
        }
        if let Some(r) = self.induction_range(k, v) {
            return Some(r);
        }
        let s = self.lazy_or_scalar_def(v)?;
        let fits = |(lo, hi): (i64, i64)| (lo >= i32::MIN as i64 && hi <= i32::MAX as i64).then_some((lo, hi));
        match &s.op {
            TOp::Const(c) => Some((c.trunc() as i64, c.trunc() as i64)),
            TOp::Arange(n) => Some((0, (*n as i64 - 1).max(0))),
            TOp::Broadcast(x) | TOp::Reshape(x) | TOp::Transpose(x) => self.int_range(k, *x),
            TOp::Binary(f, a, b) => {
                let (a, b) = (self.int_range(k, *a)?, self.int_range(k, *b)?);
                match f {
                    BinaryFn::Add => fits((a.0 + b.0, a.1 + b.1)),
                    BinaryFn::Sub => fits((a.0 - b.1, a.1 - b.0)),
                    BinaryFn::Mul => {
                        let p = [a.0 * b.0, a.0 * b.1, a.1 * b.0, a.1 * b.1];
                        fits((*p.iter().min()?, *p.iter().max()?))
                    }
                    BinaryFn::Max => Some((a.0.max(b.0), a.1.max(b.1))),
                    BinaryFn::Min => Some((a.0.min(b.0), a.1.min(b.1))),
                    _ => None,
                }
            }
            TOp::Select(_, a, b) => {
                let (a, b) = (self.int_range(k, *a)?, self.int_range(k, *b)?);
                Some((a.0.min(b.0), a.1.max(b.1)))
            }
            _ => None,
        }
    }

    /// The values a loop's induction variable takes when the loop's bounds
    /// and step are constants: `lo, lo + step, …` below `hi` (e.g. the first
    /// rows of a state's blocks, so that `r0 + arange(8) < 128` is known to
    /// hold and its loads and stores need no mask).
    fn induction_range(&self, k: &Kernel, v: TValue) -> Option<(i64, i64)> {
        let &(lo, hi, step) = self.loop_bounds.get(&v.index())?;
        let one = |x: TValue| self.int_range(k, x).and_then(|(a, b)| (a == b).then_some(a));
        let (lo, hi, step) = (one(lo)?, one(hi)?, one(step)?);
        if step <= 0 || hi <= lo {
            return None;
        }
        Some((lo, lo + (hi - 1 - lo) / step * step))
    }

    /// Whether a boolean value is the same constant everywhere.
    pub fn known_bool(&self, k: &Kernel, v: TValue) -> Option<bool> {
        let s = self.lazy_or_scalar_def(v)?;
        match &s.op {
            TOp::Const(c) => Some(*c != 0.0),
            TOp::Broadcast(x) | TOp::Reshape(x) | TOp::Transpose(x) => self.known_bool(k, *x),
            TOp::Unary(UnaryFn::Not, x) => self.known_bool(k, *x).map(|b| !b),
            TOp::Binary(BinaryFn::And, a, b) => match (self.known_bool(k, *a), self.known_bool(k, *b)) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            },
            TOp::Binary(BinaryFn::Or, a, b) => match (self.known_bool(k, *a), self.known_bool(k, *b)) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            },
            TOp::Binary(f @ (BinaryFn::Lt | BinaryFn::Le | BinaryFn::Eq), a, b) => {
                let (a, b) = (self.int_range(k, *a)?, self.int_range(k, *b)?);
                match f {
                    BinaryFn::Lt if a.1 < b.0 => Some(true),
                    BinaryFn::Lt if a.0 >= b.1 => Some(false),
                    BinaryFn::Le if a.1 <= b.0 => Some(true),
                    BinaryFn::Le if a.0 > b.1 => Some(false),
                    BinaryFn::Eq if a.0 == a.1 && b.0 == b.1 && a.0 == b.0 => Some(true),
                    BinaryFn::Eq if a.1 < b.0 || b.1 < a.0 => Some(false),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// The coefficient `c` when the integer value `v`, read through `map`,
    /// is `base + c · i` along iteration axis `axis` (for every other index).
    pub fn inner_coef(&self, k: &Kernel, v: TValue, map: &[Option<u8>], axis: usize) -> Option<i64> {
        let touches = map.contains(&Some(axis as u8));
        match self.repr.get(v.index())? {
            Repr::Scalar => return Some(0),
            Repr::Tile => return if touches { None } else { Some(0) },
            Repr::Lazy => {}
        }
        if !touches {
            return Some(0);
        }
        let s = self.def.get(v.index()).copied().flatten()?;
        let vs = &k.ty(v).shape;
        let sub = |x: &TValue| -> Vec<Option<u8>> {
            let xs = &k.ty(*x).shape;
            let off = vs.len().saturating_sub(xs.len());
            (0..xs.len()).map(|j| if xs[j] == 1 { None } else { map.get(j + off).copied().flatten() }).collect()
        };
        match &s.op {
            TOp::Const(_) => Some(0),
            TOp::Arange(_) => Some(if map.first().copied().flatten() == Some(axis as u8) { 1 } else { 0 }),
            TOp::Broadcast(x) => self.inner_coef(k, *x, &sub(x), axis),
            TOp::Reshape(x) => {
                let xs = &k.ty(*x).shape;
                let mut it = (0..vs.len()).filter(|i| vs[*i] != 1).map(|i| map.get(i).copied().flatten());
                let m: Vec<Option<u8>> = xs.iter().map(|s| if *s == 1 { None } else { it.next().flatten() }).collect();
                self.inner_coef(k, *x, &m, axis)
            }
            TOp::Transpose(x) => {
                let m = vec![map.get(1).copied().flatten(), map.first().copied().flatten()];
                self.inner_coef(k, *x, &m, axis)
            }
            TOp::Binary(f, a, b) if !k.ty(*a).dtype.is_float() => {
                let (ca, cb) = (self.inner_coef(k, *a, &sub(a), axis)?, self.inner_coef(k, *b, &sub(b), axis)?);
                match f {
                    BinaryFn::Add => Some(ca + cb),
                    BinaryFn::Sub => Some(ca - cb),
                    BinaryFn::Mul if ca == 0 && cb == 0 => Some(0),
                    BinaryFn::Mul if ca == 0 => self.const_int(k, *a).map(|c| c * cb),
                    BinaryFn::Mul if cb == 0 => self.const_int(k, *b).map(|c| c * ca),
                    _ if ca == 0 && cb == 0 => Some(0),
                    _ => None,
                }
            }
            TOp::Cast(x, d) if !d.is_float() && *d == k.ty(*x).dtype => self.inner_coef(k, *x, &sub(x), axis),
            op => {
                let all0 = op.operands().iter().all(|o| self.inner_coef(k, *o, &sub(o), axis) == Some(0));
                all0.then_some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mixc_ir::tile::KernelBuilder;
    use mixc_ir::DType;

    /// The mask `r0 + arange(8) < 128` of a loop over `r0 = 0, 8, …, 120`
    /// is known to hold (the loop's bounds are constants); over `r0 < T`, a
    /// parameter, it is not; nor is `r0 + arange(8) < 120`.
    #[test]
    fn masks_of_constant_loops_are_known() {
        let mut kb = KernelBuilder::new("blocks");
        let x = kb.ptr_param("x", DType::F32);
        let t = kb.scalar_param("T", DType::I32).expect("T");
        let masks = std::cell::RefCell::new(Vec::new());
        let body = |limit: i64| {
            let masks = &masks;
            move |kb: &mut KernelBuilder, r0: TValue, _: &[TValue]| -> Result<Vec<TValue>, mixc_ir::tile::TileError> {
                let r = kb.arange(8)?;
                let idx = kb.add(r, r0)?;
                let lim = kb.i32(limit)?;
                let m = kb.lt(idx, lim)?;
                let v = kb.load(x, idx, Some(m), 0.0)?;
                kb.store(x, idx, v, Some(m))?;
                masks.borrow_mut().push(m);
                Ok(vec![])
            }
        };
        let (zero, hi, step) = (kb.i32(0).expect("0"), kb.i32(128).expect("128"), kb.i32(8).expect("8"));
        kb.for_loop(zero, hi, step, &[], body(128)).expect("constant loop");
        kb.for_loop(zero, hi, step, &[], body(120)).expect("constant loop, tighter limit");
        kb.for_loop(zero, t, step, &[], body(128)).expect("loop to T");
        let k = kb.finish().expect("kernel");
        let p = plan(&k).expect("plan");
        let known: Vec<Option<bool>> = masks.borrow().iter().map(|m| p.known_bool(&k, *m)).collect();
        assert_eq!(known, vec![Some(true), None, None]);
    }
}
