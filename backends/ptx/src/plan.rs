//! Planning a kernel before emitting code: how each tile value is held
//! ([`Repr`]), which values get shared-memory slots, their lifetimes and their
//! offsets (liveness-based reuse), and the CTA size.
//!
//! Positions number the statements in program order; a `for` has a position
//! for its start (the copies of the initial values) and one for its end (the
//! copies of the yields), an `if` one for the branch and one for the end of
//! each arm. A slot is live from its definition to its last use; a use inside
//! a loop that does not contain the definition extends to that loop's end.

use crate::PtxError;
use mixc_ir::ops::{BinaryFn, UnaryFn};
use mixc_ir::tile::{Block, Kernel, ParamId, Stmt, TOp, TValue};
use std::collections::HashMap;

/// How a tile value is held.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Repr {
    /// A `[]` value: a register, computed by every thread alike.
    Scalar,
    /// A constant tile: nothing is stored.
    Splat(f64),
    /// `arange`: its element is its index.
    Iota,
    /// `reshape`, `broadcast`, `transpose`: its operand read at remapped indices.
    View,
    /// An elementwise op (or a load) computed again wherever it is read.
    Lazy,
    /// In a shared-memory slot, dense row-major.
    Mat(usize),
    /// In registers, found by index (the register tier, `codegen/rows.rs`).
    Reg,
}

#[derive(Clone, Debug)]
pub(crate) struct Slot {
    pub bytes: u32,
    pub offset: u32,
    /// Bytes per element (4, or 1 for bool tiles).
    pub elem_bytes: u32,
    /// Row length of a padded 2-D layout (0: dense). Rows of 32·n four-byte
    /// elements are stored `ROW_PAD` elements apart more than their length, so
    /// that the lanes of a warp reading a column block (the `mma` fragment
    /// pattern) hit distinct banks. Element `e` (row-major) is at
    /// `e + (e / row) · ROW_PAD`.
    pub row: u32,
    /// In the per-CTA global scratch region rather than shared memory.
    pub global: bool,
    start: u32,
    end: u32,
    /// Loops enclosing the definition (by index into `Plan::loops`).
    def_loops: Vec<usize>,
}

impl Slot {
    /// A dense slot in shared memory at `offset` (no lifetime: the register
    /// tier gives each materialized value its own).
    pub fn dense(offset: u32, bytes: u32, elem_bytes: u32) -> Slot {
        Slot { bytes, offset, elem_bytes, row: 0, global: false, start: 0, end: 0, def_loops: vec![] }
    }
}

/// How a loop's yielded tile gets into its carried slot.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum YieldCopy {
    /// A scalar: a phi.
    Scalar,
    /// The carried value itself: nothing to do.
    Same,
    /// Copied straight into the carried slot.
    Direct,
    /// Copied to this temporary slot first (it reads another carried slot).
    Temp(usize),
}

#[derive(Clone, Debug)]
pub(crate) struct LoopPlan {
    start: u32,
    end: u32,
    pub yields: Vec<YieldCopy>,
    /// Whether each iteration ends with a barrier (the body touches shared
    /// memory or stores to global memory).
    pub end_barrier: bool,
}

/// A memory access of an op, found by walking its operands through views and
/// lazy values down to what is stored.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Access {
    /// A read of a materialized value; `local` when the reading thread reads
    /// exactly the elements it would have written (flat index preserved).
    Shared { root: TValue, local: bool },
    /// A global load through a pointer parameter (a lazy load).
    Global(ParamId),
}

pub(crate) struct Plan {
    pub repr: Vec<Repr>,
    pub slots: Vec<Slot>,
    pub loops: Vec<LoopPlan>,
    /// Loop index of each `for` statement, by the statement's address.
    loop_of: HashMap<usize, usize>,
    pub shared_bytes: u32,
    /// Bytes of the per-CTA global scratch region (0: none).
    pub scratch_bytes: u32,
    pub threads: u32,
}

/// Shared memory a CTA may use (the H100's and A100's opt-in maximum).
pub const MAX_SHARED: u32 = 227 * 1024;

fn numel(shape: &[u32]) -> u64 {
    shape.iter().map(|s| *s as u64).product()
}

/// Elements added after each row of a padded slot (see [`Slot::row`]).
pub const ROW_PAD: u32 = 4;

/// Whether 2-D slots get padded rows. On: measured on an H200 (bf16, B=8,
/// H=16, D=128, T=2048), padding every 2-D f32 slot made attention, GLA,
/// linear attention, mLSTM and simple GLA 1.2–1.5× faster (Gated DeltaNet 8%
/// slower): lanes of a warp reading down a column (the `mma` fragment
/// pattern, and the `[c, 1, d] × [1, c, d]` broadcast reductions of gated
/// recurrences' diagonal blocks) otherwise hit one bank 16 ways. Reads
/// address a padded slot from the index (`row·(len + pad) + col`), so
/// neighbouring columns stay vectorizable. (Padding only `dot` operands,
/// through a division of the flat index, had measured slower.)
const PAD_ROWS: bool = true;

/// A slot for a tile of this type: (bytes, bytes per element, padded row
/// length or 0). `pad`: whether the slot may be padded (loop temporaries,
/// copied flat, are not).
fn slot_layout(t: &mixc_ir::tile::TileType, pad: bool) -> (u32, u32, u32) {
    let eb = if t.dtype == mixc_ir::DType::Bool { 1 } else { 4 };
    let n = numel(&t.shape);
    let last = t.shape.last().copied().unwrap_or(1);
    let row = if pad
        && PAD_ROWS
        && eb == 4
        && t.shape.len() >= 2
        && last >= 32
        && last.is_multiple_of(32)
        && n / last as u64 >= 8
    {
        last
    } else {
        0
    };
    let elems = if row > 0 { n / row as u64 * (row + ROW_PAD) as u64 } else { n };
    let bytes = (elems.min(u32::MAX as u64 / 8) as u32).saturating_mul(eb).div_ceil(16).saturating_mul(16);
    (bytes, eb, row)
}

fn expensive(op: &TOp) -> bool {
    match op {
        TOp::Unary(f, _) => {
            !matches!(f, UnaryFn::Neg | UnaryFn::Abs | UnaryFn::Relu | UnaryFn::Round | UnaryFn::Floor | UnaryFn::Not)
        }
        TOp::Binary(f, _, _) => matches!(f, BinaryFn::Div | BinaryFn::Pow | BinaryFn::Rem | BinaryFn::FloorDiv),
        TOp::Load { .. } => true,
        _ => false,
    }
}

/// How often a value is evaluated per element by its readers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Evals {
    Zero,
    One,
    Many,
}

impl Evals {
    fn plus(self, o: Evals) -> Evals {
        match (self, o) {
            (Evals::Zero, x) | (x, Evals::Zero) => x,
            _ => Evals::Many,
        }
    }
    fn times(self, o: Evals) -> Evals {
        match (self, o) {
            (Evals::Zero, _) | (_, Evals::Zero) => Evals::Zero,
            (Evals::One, Evals::One) => Evals::One,
            _ => Evals::Many,
        }
    }
}

/// Where a value comes from.
#[derive(Clone, Copy)]
enum Def<'k> {
    Stmt(&'k Stmt),
    /// Argument `i` of the body of loop `l` (0: the induction variable).
    LoopArg(usize, usize),
    /// Result `i` of loop `l`.
    LoopResult(usize, usize),
    IfResult,
}

/// How a statement reads one of its operands.
#[derive(Clone, Copy, PartialEq)]
enum Role {
    /// Once per element of the statement's result.
    Elem,
    /// Several times per element (dot operands, scalar consumers of tiles).
    Many,
    /// Copied once (loop initial values, yields, stores).
    Copy,
}

struct Use<'k> {
    /// `None` for copies at loop starts and ends and `if` arm ends.
    stmt: Option<&'k Stmt>,
    role: Role,
    pos: u32,
    loops: Vec<usize>,
}

/// An evaluation point: position, enclosing loops, values read there.
type Point = (u32, Vec<usize>, Vec<(TValue, bool)>);

struct Walk<'k> {
    k: &'k Kernel,
    pos: u32,
    defs: Vec<Option<Def<'k>>>,
    def_pos: Vec<u32>,
    def_loops: Vec<Vec<usize>>,
    order: Vec<TValue>,
    uses: Vec<Vec<Use<'k>>>,
    loops: Vec<LoopPlan>,
    loop_of: HashMap<usize, usize>,
    /// Positions of statements that store to each parameter.
    stores: Vec<(u32, ParamId)>,
    /// Evaluation points: (position, loops, statement or copy, values read there).
    points: Vec<Point>,
    ifs: Vec<(u32, Vec<u32>)>,
    /// Position and enclosing loops of every plain statement, by address.
    stmt_at: HashMap<usize, (u32, Vec<usize>)>,
}

impl<'k> Walk<'k> {
    fn define(&mut self, v: TValue, d: Def<'k>, stack: &[usize]) {
        let i = v.index();
        if i < self.defs.len() {
            self.defs[i] = Some(d);
            self.def_pos[i] = self.pos;
            self.def_loops[i] = stack.to_vec();
            self.order.push(v);
        }
    }

    fn use_(&mut self, v: TValue, stmt: Option<&'k Stmt>, role: Role, stack: &[usize]) {
        if let Some(u) = self.uses.get_mut(v.index()) {
            u.push(Use { stmt, role, pos: self.pos, loops: stack.to_vec() });
        }
    }

    fn block(&mut self, b: &'k Block, stack: &mut Vec<usize>) {
        for s in &b.stmts {
            self.pos += 1;
            let p = self.pos;
            match &s.op {
                TOp::For { lo, hi, step, init, body } => {
                    let l = self.loops.len();
                    self.loops.push(LoopPlan { start: p, end: 0, yields: vec![], end_barrier: true });
                    self.loop_of.insert(s as *const Stmt as usize, l);
                    for v in [lo, hi, step] {
                        self.use_(*v, Some(s), Role::Elem, stack);
                    }
                    for v in init {
                        self.use_(*v, None, Role::Copy, stack);
                    }
                    let reads = init.iter().map(|v| (*v, true)).collect();
                    self.points.push((p, stack.clone(), reads));
                    stack.push(l);
                    for (i, a) in body.args.iter().enumerate() {
                        self.define(*a, Def::LoopArg(l, i), stack);
                    }
                    self.block(body, stack);
                    self.pos += 1;
                    for y in &body.yields {
                        self.use_(*y, None, Role::Copy, stack);
                    }
                    let reads = body.yields.iter().map(|v| (*v, true)).collect();
                    self.points.push((self.pos, stack.clone(), reads));
                    stack.pop();
                    self.loops[l].end = self.pos;
                    for (i, r) in s.results.iter().enumerate() {
                        self.define(*r, Def::LoopResult(l, i), stack);
                    }
                }
                TOp::If { cond, then, otherwise } => {
                    self.use_(*cond, Some(s), Role::Elem, stack);
                    for r in &s.results {
                        self.define(*r, Def::IfResult, stack);
                    }
                    let mut ends = Vec::new();
                    for arm in [then, otherwise] {
                        self.block(arm, stack);
                        self.pos += 1;
                        for y in &arm.yields {
                            self.use_(*y, None, Role::Copy, stack);
                        }
                        let reads = arm.yields.iter().map(|v| (*v, true)).collect();
                        self.points.push((self.pos, stack.clone(), reads));
                        ends.push(self.pos);
                    }
                    self.ifs.push((p, ends));
                }
                op => {
                    self.stmt_at.insert(s as *const Stmt as usize, (p, stack.clone()));
                    let scalar_result = s.results.first().is_some_and(|r| self.k.ty(*r).shape.is_empty());
                    let operands = op.operands();
                    for (i, v) in operands.iter().enumerate() {
                        let role = match op {
                            _ if scalar_result && !self.k.ty(*v).shape.is_empty() => Role::Many,
                            TOp::Dot { .. } if i < 2 => Role::Many,
                            TOp::Store { .. } => Role::Copy,
                            _ => Role::Elem,
                        };
                        self.use_(*v, Some(s), role, stack);
                    }
                    if let TOp::Store { ptr, .. } = op {
                        self.stores.push((p, *ptr));
                    }
                    for r in &s.results {
                        self.define(*r, Def::Stmt(s), stack);
                    }
                }
            }
        }
    }
}

impl Plan {
    /// The plan of a kernel in the register tier: no slots, no loops to
    /// copy through, `shared_bytes` of staged operands.
    /// The register tier's plan: `slots` are dense shared-memory slots of
    /// the values it materializes (see [`Slot::dense`]).
    pub fn registers(repr: Vec<Repr>, slots: Vec<Slot>, threads: u32, shared_bytes: u32) -> Plan {
        Plan { repr, slots, loops: vec![], loop_of: HashMap::new(), shared_bytes, scratch_bytes: 0, threads }
    }

    pub fn loop_plan(&self, s: &Stmt) -> Option<&LoopPlan> {
        self.loop_of.get(&(s as *const Stmt as usize)).and_then(|l| self.loops.get(*l))
    }

    /// The memory reads of evaluating `v` at one element (`flat`: the reader's
    /// flat index is `v`'s own).
    pub fn accesses(&self, k: &Kernel, defs: &Defs, v: TValue, flat: bool, out: &mut Vec<Access>) {
        match self.repr.get(v.index()) {
            Some(Repr::Mat(_)) => out.push(Access::Shared { root: v, local: flat }),
            Some(Repr::View) | Some(Repr::Lazy) => {
                let Some(op) = defs.op(v) else { return };
                let n = numel(&k.ty(v).shape);
                let keep = |x: &TValue| flat && numel(&k.ty(*x).shape) == n;
                match op {
                    TOp::Reshape(x) => self.accesses(k, defs, *x, flat, out),
                    TOp::Transpose(x) => {
                        let has_one = k.ty(*x).shape.contains(&1);
                        self.accesses(k, defs, *x, flat && has_one, out)
                    }
                    TOp::Load { ptr, offsets, mask, .. } => {
                        out.push(Access::Global(*ptr));
                        self.accesses(k, defs, *offsets, keep(offsets), out);
                        if let Some(m) = mask {
                            self.accesses(k, defs, *m, keep(m), out);
                        }
                    }
                    other => {
                        for x in other.operands() {
                            self.accesses(k, defs, x, keep(&x), out);
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// The defining op of each value (none for block arguments and results of
/// `for` and `if`).
pub(crate) struct Defs<'k> {
    ops: Vec<Option<&'k TOp>>,
}

impl<'k> Defs<'k> {
    pub fn new(k: &'k Kernel) -> Defs<'k> {
        let mut ops = vec![None; k.types.len()];
        k.walk(&mut |s| {
            if !matches!(s.op, TOp::For { .. } | TOp::If { .. }) {
                for r in &s.results {
                    if let Some(slot) = ops.get_mut(r.index()) {
                        *slot = Some(&s.op);
                    }
                }
            }
        });
        Defs { ops }
    }

    pub fn op(&self, v: TValue) -> Option<&'k TOp> {
        self.ops.get(v.index()).copied().flatten()
    }
}

fn kerr(k: &Kernel, msg: String) -> PtxError {
    PtxError::Kernel { kernel: k.name.clone(), msg }
}

/// Plans a kernel.
pub(crate) fn plan(k: &Kernel, defs: &Defs) -> Result<Plan, PtxError> {
    let n = k.types.len();
    let mut w = Walk {
        k,
        pos: 0,
        defs: vec![None; n],
        def_pos: vec![0; n],
        def_loops: vec![vec![]; n],
        order: vec![],
        uses: (0..n).map(|_| vec![]).collect(),
        loops: vec![],
        loop_of: HashMap::new(),
        stores: vec![],
        points: vec![],
        ifs: vec![],
        stmt_at: HashMap::new(),
    };
    let mut stack = vec![];
    w.block(&k.body, &mut stack);
    for (i, t) in k.types.iter().enumerate() {
        if t.dtype == mixc_ir::DType::F64 && w.defs[i].is_some() {
            return Err(kerr(k, format!("value %{i} is an f64 tile; the PTX backend computes in f32")));
        }
    }

    // Heaviness: whether recomputing a value costs more than reading it back.
    let mut heavy = vec![false; n];
    for v in &w.order {
        let i = v.index();
        heavy[i] = match w.defs[i] {
            Some(Def::Stmt(s)) => match &s.op {
                TOp::Unary(..) | TOp::Binary(..) | TOp::Select(..) | TOp::Cast(..) | TOp::Load { .. } => {
                    expensive(&s.op) || s.op.operands().iter().any(|x| heavy.get(x.index()).copied().unwrap_or(false))
                }
                TOp::Reshape(x) | TOp::Broadcast(x) | TOp::Transpose(x) => {
                    heavy.get(x.index()).copied().unwrap_or(false)
                }
                _ => false,
            },
            _ => false,
        };
    }

    // Representations, consumers first.
    let mut repr: Vec<Repr> = vec![Repr::Scalar; n];
    let mut evals = vec![Evals::Zero; n];
    let mut sink_pos = vec![0u32; n];
    let mut sink_store: Vec<Option<ParamId>> = vec![None; n];
    let mut slots: Vec<Slot> = vec![];
    let mut carried: HashMap<(usize, usize), usize> = HashMap::new();
    let slot_for = |slots: &mut Vec<Slot>, v: TValue, w: &Walk| -> usize {
        let (bytes, eb, row) = slot_layout(k.ty(v), true);
        slots.push(Slot {
            bytes,
            offset: 0,
            elem_bytes: eb,
            row,
            global: false,
            start: w.def_pos[v.index()],
            end: w.def_pos[v.index()],
            def_loops: w.def_loops[v.index()].clone(),
        });
        slots.len() - 1
    };
    for v in w.order.iter().rev() {
        let i = v.index();
        let ty = k.ty(*v);
        let my_n = numel(&ty.shape);
        // How often (per element) and where this value is evaluated.
        let mut ev = Evals::Zero;
        let mut sp = 0u32;
        let mut st: Option<ParamId> = None;
        for u in &w.uses[i] {
            let deeper = u.loops.len() > w.def_loops[i].len();
            let mut e = match u.role {
                Role::Many => Evals::Many,
                Role::Copy => Evals::One,
                Role::Elem => {
                    let consumer = u.stmt.and_then(|s| s.results.first().copied());
                    match consumer {
                        Some(c) => {
                            let grow = if numel(&k.ty(c).shape) > my_n { Evals::Many } else { Evals::One };
                            match repr[c.index()] {
                                Repr::Lazy | Repr::View => grow.times(evals[c.index()]),
                                Repr::Scalar if !ty.shape.is_empty() => Evals::Many,
                                _ => grow,
                            }
                        }
                        None => Evals::One,
                    }
                }
            };
            if deeper && e != Evals::Zero {
                e = Evals::Many;
            }
            ev = ev.plus(e);
            let consumer = u.stmt.and_then(|s| s.results.first().copied());
            match consumer.map(|c| (c, &repr[c.index()])) {
                Some((c, Repr::Lazy | Repr::View)) => {
                    sp = sp.max(sink_pos[c.index()]);
                    st = st.or(sink_store[c.index()]);
                }
                _ => {
                    sp = sp.max(u.pos);
                    if let Some(TOp::Store { ptr, .. }) = u.stmt.map(|s| &s.op) {
                        st = Some(*ptr);
                    }
                }
            }
        }
        evals[i] = ev;
        sink_pos[i] = sp;
        sink_store[i] = st;
        let r = match w.defs[i] {
            None => Repr::Scalar,
            Some(_) if ty.shape.is_empty() => Repr::Scalar,
            Some(Def::LoopArg(l, j)) | Some(Def::LoopResult(l, j)) => {
                let j = if matches!(w.defs[i], Some(Def::LoopArg(..))) { j.wrapping_sub(1) } else { j };
                let s = match carried.get(&(l, j)) {
                    Some(s) => *s,
                    None => {
                        let s = slot_for(&mut slots, *v, &w);
                        slots[s].start = w.loops[l].start;
                        slots[s].end = w.loops[l].end;
                        let outer: Vec<usize> = w.def_loops[i].iter().copied().filter(|x| *x != l).collect();
                        slots[s].def_loops = outer;
                        carried.insert((l, j), s);
                        s
                    }
                };
                Repr::Mat(s)
            }
            Some(Def::IfResult) => Repr::Mat(slot_for(&mut slots, *v, &w)),
            Some(Def::Stmt(s)) => match &s.op {
                TOp::Const(c) => Repr::Splat(*c),
                TOp::Arange(_) => Repr::Iota,
                TOp::Reshape(_) | TOp::Broadcast(_) | TOp::Transpose(_) => Repr::View,
                TOp::Load { ptr, .. } => {
                    let stores_between = w.stores.iter().any(|(p, _)| *p > w.def_pos[i] && *p < sp);
                    if ev <= Evals::One && !stores_between && st != Some(*ptr) {
                        Repr::Lazy
                    } else {
                        Repr::Mat(slot_for(&mut slots, *v, &w))
                    }
                }
                TOp::Unary(..) | TOp::Binary(..) | TOp::Select(..) | TOp::Cast(..) => {
                    if heavy[i] && ev == Evals::Many {
                        Repr::Mat(slot_for(&mut slots, *v, &w))
                    } else {
                        Repr::Lazy
                    }
                }
                _ => Repr::Mat(slot_for(&mut slots, *v, &w)),
            },
        };
        repr[i] = r;
    }

    let mut plan = Plan {
        repr,
        slots,
        loops: std::mem::take(&mut w.loops),
        loop_of: std::mem::take(&mut w.loop_of),
        shared_bytes: 0,
        scratch_bytes: 0,
        threads: 128,
    };

    // How each loop's yields reach their carried slots.
    let mut yield_plans: Vec<(usize, Vec<YieldCopy>)> = vec![];
    let mut temps: Vec<(usize, TValue)> = vec![];
    k.walk(&mut |s| {
        let TOp::For { body, .. } = &s.op else { return };
        let Some(l) = plan.loop_of.get(&(s as *const Stmt as usize)).copied() else { return };
        let mut ys = vec![];
        for (j, y) in body.yields.iter().enumerate() {
            if k.ty(*y).shape.is_empty() {
                ys.push(YieldCopy::Scalar);
                continue;
            }
            if body.args.get(j + 1) == Some(y) {
                ys.push(YieldCopy::Same);
                continue;
            }
            let own = body.args.get(j + 1).map(|a| plan.repr[a.index()].clone());
            let mut acc = vec![];
            plan.accesses(k, defs, *y, true, &mut acc);
            let clash = acc.iter().any(|a| match a {
                Access::Shared { root, local } => {
                    let r = &plan.repr[root.index()];
                    let is_carried = body.args.iter().skip(1).any(|c| &plan.repr[c.index()] == r);
                    is_carried && (Some(r) != own.as_ref() || !local)
                }
                Access::Global(_) => false,
            });
            if clash {
                temps.push((l, *y));
                ys.push(YieldCopy::Temp(usize::MAX));
            } else {
                ys.push(YieldCopy::Direct);
            }
        }
        yield_plans.push((l, ys));
    });
    for (l, ys) in yield_plans {
        if let Some(lp) = plan.loops.get_mut(l) {
            lp.yields = ys;
        }
    }
    for (l, y) in temps {
        let (bytes, eb, row) = slot_layout(k.ty(y), false);
        let end = plan.loops[l].end;
        plan.slots.push(Slot {
            bytes,
            offset: 0,
            elem_bytes: eb,
            row,
            global: false,
            start: end,
            end,
            def_loops: vec![],
        });
        let s = plan.slots.len() - 1;
        if let Some(slot) = plan.loops[l].yields.iter_mut().find(|y| **y == YieldCopy::Temp(usize::MAX)) {
            *slot = YieldCopy::Temp(s);
        }
    }

    // Lifetimes: every evaluation point reads the roots of what it evaluates.
    let mut points: Vec<Point> = std::mem::take(&mut w.points);
    k.walk(&mut |s| {
        if matches!(s.op, TOp::For { .. } | TOp::If { .. }) {
            return;
        }
        let evaluated = match s.results.first() {
            Some(r) => matches!(plan.repr[r.index()], Repr::Mat(_) | Repr::Scalar),
            None => true,
        };
        if evaluated {
            if let Some((p, loops)) = w.stmt_at.get(&(s as *const Stmt as usize)) {
                points.push((*p, loops.clone(), s.op.operands().into_iter().map(|v| (v, false)).collect()));
            }
        }
    });
    for (p, loops, reads) in &points {
        let mut acc = vec![];
        for (v, _) in reads {
            plan.accesses(k, defs, *v, false, &mut acc);
        }
        for a in acc {
            let Access::Shared { root, .. } = a else { continue };
            let Repr::Mat(s) = plan.repr[root.index()] else { continue };
            let slot = &plan.slots[s];
            // Extend to the end of the outermost loop around the use that does
            // not contain the definition.
            let mut at = *p;
            if let Some(l) = loops.iter().find(|l| !slot.def_loops.contains(l)) {
                at = at.max(plan.loops[*l].end);
            }
            let slot = &mut plan.slots[s];
            slot.end = slot.end.max(at);
            slot.start = slot.start.min(at);
        }
    }
    // Results of `if` are written at the arm ends.
    for (p, ends) in &w.ifs {
        for s in plan.slots.iter_mut() {
            if s.start == *p {
                s.end = s.end.max(ends.iter().copied().max().unwrap_or(*p));
            }
        }
    }
    // Shared memory first; while it does not fit, the largest slot left moves
    // to the global scratch region.
    loop {
        let shared: Vec<usize> = (0..plan.slots.len()).filter(|i| !plan.slots[*i].global).collect();
        plan.shared_bytes = allocate(&mut plan.slots, &shared);
        if plan.shared_bytes <= MAX_SHARED {
            break;
        }
        let Some(big) = shared.iter().copied().max_by_key(|i| (plan.slots[*i].bytes, std::cmp::Reverse(*i))) else {
            break;
        };
        plan.slots[big].global = true;
    }
    let global: Vec<usize> = (0..plan.slots.len()).filter(|i| plan.slots[*i].global).collect();
    plan.scratch_bytes = allocate(&mut plan.slots, &global);
    let biggest = {
        let mut m = 0u64;
        k.walk(&mut |s| {
            for r in &s.results {
                m = m.max(numel(&k.ty(*r).shape));
            }
            if let TOp::Store { value, .. } = &s.op {
                m = m.max(numel(&k.ty(*value).shape));
            }
        });
        m
    };
    plan.threads = if biggest >= 4096 { 256 } else { 128 };
    let loop_flags = body_flags(k, &plan, defs);
    for (l, f) in loop_flags {
        if let Some(lp) = plan.loops.get_mut(l) {
            lp.end_barrier = f;
        }
    }
    Ok(plan)
}

/// Whether each loop's iterations must end with a barrier: its body (nested
/// blocks included) touches shared memory or stores to global memory.
fn body_flags(k: &Kernel, plan: &Plan, defs: &Defs) -> Vec<(usize, bool)> {
    fn touches(b: &Block, k: &Kernel, plan: &Plan, defs: &Defs) -> bool {
        for s in &b.stmts {
            match &s.op {
                TOp::Store { .. } => return true,
                TOp::For { body, .. } => {
                    if touches(body, k, plan, defs) {
                        return true;
                    }
                    if s.results.iter().any(|r| matches!(plan.repr[r.index()], Repr::Mat(_))) {
                        return true;
                    }
                }
                TOp::If { then, otherwise, .. } => {
                    if touches(then, k, plan, defs) || touches(otherwise, k, plan, defs) {
                        return true;
                    }
                    if s.results.iter().any(|r| matches!(plan.repr[r.index()], Repr::Mat(_))) {
                        return true;
                    }
                }
                op => {
                    if s.results.iter().any(|r| matches!(plan.repr[r.index()], Repr::Mat(_))) {
                        return true;
                    }
                    let evaluated = s.results.first().is_none_or(|r| plan.repr[r.index()] == Repr::Scalar);
                    if evaluated {
                        let mut acc = vec![];
                        for v in op.operands() {
                            plan.accesses(k, defs, v, false, &mut acc);
                        }
                        if acc.iter().any(|a| matches!(a, Access::Shared { .. })) {
                            return true;
                        }
                    }
                }
            }
        }
        b.yields.iter().any(|y| !matches!(plan.repr[y.index()], Repr::Scalar))
    }
    let mut out = vec![];
    k.walk(&mut |s| {
        if let TOp::For { body, .. } = &s.op {
            if let Some(l) = plan.loop_of.get(&(s as *const Stmt as usize)) {
                out.push((*l, touches(body, k, plan, defs)));
            }
        }
    });
    out
}

/// Gives each of `which` an offset so that slots live at the same time never
/// overlap: largest first, each at the lowest offset that fits. Returns the
/// bytes used.
fn allocate(slots: &mut [Slot], which: &[usize]) -> u32 {
    let mut order: Vec<usize> = which.to_vec();
    order.sort_by_key(|i| (std::cmp::Reverse(slots[*i].bytes), slots[*i].start));
    let mut placed: Vec<usize> = vec![];
    for i in order {
        let (s0, e0) = (slots[i].start, slots[i].end);
        let mut busy: Vec<(u32, u32)> = placed
            .iter()
            .filter(|j| slots[**j].start <= e0 && s0 <= slots[**j].end)
            .map(|j| (slots[*j].offset, slots[*j].offset + slots[*j].bytes))
            .collect();
        busy.sort();
        let mut off = 0u32;
        for (lo, hi) in busy {
            if off + slots[i].bytes <= lo {
                break;
            }
            off = off.max(hi);
        }
        slots[i].offset = off;
        placed.push(i);
    }
    which.iter().map(|i| slots[*i].offset + slots[*i].bytes).max().unwrap_or(0)
}
