//! The register tier: kernels whose tiles are all blocks of the same `M` rows
//! (a query block of attention, say) keep those tiles in registers, in the
//! `mma.sync` accumulator layout, instead of in shared-memory slots.
//!
//! # Which kernels it takes ([`analyze`])
//!
//! `dot`s in bf16 mode whose results are `[M, N]` (one `M` for the whole
//! kernel, a multiple of 16 up to 256) and whose right operands are loads used
//! by nothing but `dot`s; every other tile is either held (below) or *lazy*:
//! index arithmetic, constants and loads that any thread can compute at any
//! index. A kernel with a `cumsum`, an `if`, a reduction along rows or to a
//! scalar, a transposed left operand, a tile it cannot hold, or a buffer it
//! both loads and stores goes to the shared-memory tier instead.
//!
//! # How tiles are held
//!
//! The CTA has `M / R` warps of `R` rows (`R` = 16, or 32 with
//! [`crate::Options::warp_rows`]); warp `w` owns rows `Rw .. Rw + R`, `R / 16`
//! `m16` tiles. With `g = lane / 4` and `t = lane % 4`, a lane holds
//! * of an `[M, N]` tile (`N` a multiple of 8): the elements at rows
//!   `Rw + 16i + g` and `Rw + 16i + g + 8` of each tile `i`, columns `8j + 2t`
//!   and `8j + 2t + 1` for every `j < N / 8` — exactly the accumulators of
//!   the `m16n8` fragments of its warp, so a `dot` result needs no exchange,
//!   and two neighbouring fragments are the left operand of the next
//!   `m16n8k16` step. With two tiles a warp, each right-operand fragment read
//!   from shared memory feeds both tiles' `mma`s (half the `ldmatrix` reads,
//!   as FlashAttention-2 does);
//! * of an `[M]` or `[M, 1]` tile (a row statistic): its two rows a tile;
//! * scalars, like every thread.
//!
//! Elementwise ops compute each held element where it lives; a reduction along
//! columns folds a lane's elements and then the four lanes of a row with
//! butterfly shuffles; a loop carries held tiles as phis. Right operands of
//! `dot` are staged in shared memory as bf16 (rows padded by 16 bytes, so the
//! eight row addresses of an `ldmatrix` phase hit distinct banks) by all
//! threads between two barriers, and read as fragments with `ldmatrix`
//! (`.trans` for an operand not transposed).
//!
//! Elements are found by index: [`Em::elem`] looks a held value up by the
//! identity of the index values (this lane's row and column registers), so
//! lazy values and views evaluate unchanged at held positions.

use super::{fv, iv, named, Em, R};
use crate::plan::{Defs, Plan, Repr, Slot, MAX_SHARED};
use crate::Matmul;
use inkwell::types::BasicTypeEnum;
use inkwell::values::{BasicValueEnum, FloatValue, IntValue};
use inkwell::{AddressSpace, IntPredicate};
use mixc_ir::ops::{BinaryFn, ReduceFn, UnaryFn};
use mixc_ir::tile::{Block, Kernel, ParamKind, Stmt, TOp, TValue};
use mixc_ir::DType;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

/// How a value is held in the register tier.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Hold {
    /// A `[]` value in a register of every thread.
    Scalar,
    /// Computed wherever it is read.
    Lazy,
    /// `[M, N]`: the lane's elements of its warp's `m16n8` fragments.
    Frag,
    /// `[M]` or `[M, 1]`: the lane's two rows.
    Rows,
    /// A `dot`'s right operand or transposed left operand (a load, or a
    /// value computed from unheld ones), staged in shared memory as bf16;
    /// other reads compute it again (a load reads memory again).
    Staged,
    /// `[M, K]` read only as `dot` left operands: the lane's elements of its
    /// `Frag` positions rounded to bf16 and packed in pairs (columns `2t`,
    /// `2t + 1` of each fragment), half the registers of `Frag`.
    PackedA,
    /// A load read only as `dot` left operands inside loops it is defined
    /// outside of (attention's queries): staged in shared memory once, its
    /// fragments read with `ldmatrix` where used, so it holds no registers
    /// across the loop.
    StagedA,
    /// In a dense shared-memory slot, computed by all threads between two
    /// barriers and readable at any index: a `cumsum`, a reduction along
    /// rows, and small tiles read where no lane holds them (a chunk's
    /// cumulative decays, read along both rows and columns).
    Shared,
}

/// Where a staged operand lives in shared memory.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stage {
    pub offset: u32,
    /// Bytes from one row to the next.
    pub stride: u32,
    /// Bytes of one buffer (a pipelined stage copied as is has two, one
    /// after the other).
    pub bytes: u32,
    /// A pipelined stage of an f32 buffer: the two buffers `cp.async` copies
    /// the f32 rows into (dense), converted to the bf16 stage each iteration.
    pub raw: Option<Raw>,
}

/// Where a pipelined f32 stage's copies land: two dense buffers of `bytes`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Raw {
    pub offset: u32,
    pub bytes: u32,
}

impl Stage {
    /// Elements one `cp.async` copies (16 bytes).
    fn vec(&self) -> u32 {
        if self.raw.is_some() {
            4
        } else {
            8
        }
    }
}

/// The register tier's plan of a kernel.
#[derive(Debug)]
pub(crate) struct RowsPlan {
    /// Rows of the narrowest `dot` result; every held tile's rows are a
    /// multiple of `m / tiles / 16` warps' 16 rows.
    pub m: u32,
    /// `m16` tiles of `m` rows each warp owns (1 or 2, [`crate::Options::warp_rows`]).
    pub tiles: u32,
    pub hold: Vec<Hold>,
    /// Staged loads, and held tiles that are `dot` operands (copied into
    /// their stage as bf16 where they are defined).
    pub stages: HashMap<u32, Stage>,
    /// The slot of each [`Hold::Shared`] value, by value (a loop's result
    /// shares its carried value's).
    pub shared: HashMap<u32, usize>,
    /// Of each [`Hold::Shared`] carried value: the slot its next value is
    /// written to before it is copied over the carried one.
    pub carried_next: HashMap<u32, usize>,
    /// Whether a [`Hold::Shared`] value is computed together with the later
    /// ones of its block that need nothing in between (one pair of
    /// barriers for all); `MIXC_GROUP_SHARED=0` turns it off.
    pub group_shared: bool,
    pub slots: Vec<Slot>,
    pub shared_bytes: u32,
    /// The widest held tile's columns.
    pub max_cols: u32,
    /// Elements a lane holds of tiles live across loop iterations (carried
    /// or defined outside a loop that reads them), for a register estimate.
    pub resident: u32,
    /// Staged loads copied a loop iteration ahead with `cp.async` into one of
    /// two buffers, by the induction variable of their loop.
    pub pipelined: HashMap<u32, Vec<TValue>>,
}

impl RowsPlan {
    pub fn warps(&self) -> u32 {
        (self.m / (16 * self.tiles)).max(1)
    }

    pub fn threads(&self) -> u32 {
        self.warps() * 32
    }

    /// The rows one `m16` tile of every warp covers together.
    pub fn unit(&self) -> u32 {
        16 * self.warps()
    }

    /// The plan [`Em`] reads: held values are `Repr::Reg`, lazy ones computed.
    pub fn plan(&self) -> Plan {
        let repr = self
            .hold
            .iter()
            .enumerate()
            .map(|(i, h)| match h {
                Hold::Scalar => Repr::Scalar,
                Hold::Lazy | Hold::Staged => Repr::Lazy,
                Hold::Shared => match self.shared.get(&(i as u32)) {
                    Some(slot) => Repr::Mat(*slot),
                    None => Repr::Lazy,
                },
                Hold::Frag | Hold::Rows | Hold::PackedA | Hold::StagedA => Repr::Reg,
            })
            .collect();
        Plan::registers(repr, self.slots.clone(), self.threads(), self.shared_bytes)
    }

    /// Registers per thread, roughly: the resident elements, the widest
    /// tile's elements for what a loop body computes, the copies to shared
    /// memory in flight (a `cp.async` chunk's address and size, or an
    /// element of an in-place copy, whose loads LLVM issues together), and
    /// addressing.
    pub fn registers(&self, k: &Kernel) -> u32 {
        let threads = self.threads().max(1);
        let copies: u32 = self
            .stages
            .iter()
            .map(|(v, st)| {
                let shape = &k.ty(TValue(*v)).shape;
                let elems = shape.iter().product::<u32>() / threads;
                if self.pipelined.values().any(|vs| vs.iter().any(|x| x.0 == *v)) {
                    2 * elems / st.vec()
                } else {
                    elems.min(64)
                }
            })
            .sum();
        (self.resident + self.tiles * self.max_cols / 2 + copies / 2 + 40).min(255)
    }
}

/// Bytes of padding after each staged row.
const STAGE_PAD: u32 = 16;

/// Why the analysis stopped: a value it must read where no lane holds it
/// (materialized and the analysis run again), or a kernel it does not take.
enum Why {
    Force(TValue),
    No(String),
}

impl From<String> for Why {
    fn from(s: String) -> Why {
        Why::No(s)
    }
}

impl From<&str> for Why {
    fn from(s: &str) -> Why {
        Why::No(s.to_string())
    }
}

struct Analysis<'k> {
    k: &'k Kernel,
    /// Rows one `m16` tile of every warp covers (16 × warps): every held
    /// tile has a multiple of them.
    unit: u32,
    hold: Vec<Hold>,
    /// Whether a value is held or a view of a held value.
    derived: Vec<bool>,
    uses: Vec<u32>,
    dot_a_uses: Vec<u32>,
    /// Uses as a transposed left operand.
    dot_at_uses: Vec<u32>,
    dot_b_uses: Vec<u32>,
    max_cols: u32,
    /// The induction variables of the loops around each value's definition.
    def_loops: Vec<Vec<TValue>>,
    loops: Vec<TValue>,
    /// Staged values and the induction variable of their innermost loop.
    staged_in: Vec<(TValue, Option<TValue>)>,
    /// Whether a value is read inside a loop.
    used_in_loop: Vec<bool>,
    /// Whether loop-invariant left operands are staged ([`analyze`]).
    stage_left: bool,
    /// Values read where no lane holds them, found by earlier runs: loads
    /// become lazy, other values [`Hold::Shared`].
    force: HashSet<u32>,
    /// Loop results held in their carried value's slot: (result, carried).
    aliases: Vec<(TValue, TValue)>,
    /// The forms for what no lane holds ([`crate::Options::slot_forms`]):
    /// carried slots, matrix-vector `dot`s, stores by all threads.
    slot_forms: bool,
}

impl Analysis<'_> {
    fn shape(&self, v: TValue) -> &[u32] {
        &self.k.ty(v).shape
    }

    fn held_rows(&self, r: u32) -> bool {
        r >= self.unit && r.is_multiple_of(self.unit) && r <= MAX_HELD_ROWS
    }

    /// Elements a lane holds of `v`: its share of each of its `m16` tiles.
    fn per_lane(&self, v: TValue) -> u32 {
        let s = self.shape(v);
        let tiles = s.first().copied().unwrap_or(0) / self.unit;
        let cols = s.get(1).copied().unwrap_or(1);
        tiles
            * match self.hold[v.index()] {
                Hold::Frag => cols / 2,
                Hold::PackedA => cols / 4,
                Hold::Rows => 2,
                _ => 0,
            }
    }

    fn frag_shape(&self, s: &[u32]) -> bool {
        s.len() == 2 && self.held_rows(s[0]) && s[1] >= 8 && s[1].is_multiple_of(8)
    }

    fn rows_shape(&self, s: &[u32]) -> bool {
        match s {
            [r] | [r, 1] => self.held_rows(*r),
            _ => false,
        }
    }

    fn carried(&mut self, v: TValue) -> Result<Hold, Why> {
        let s = self.shape(v).to_vec();
        let numel: u32 = s.iter().product();
        let h = if s.is_empty() {
            Hold::Scalar
        } else if self.slot_forms
            && (self.force.contains(&v.0)
                || (!self.frag_shape(&s) && !self.rows_shape(&s) && numel <= MAX_CARRIED_SHARED))
        {
            // Read where no lane holds it (a normalizer read along the
            // keys), or a small tile of no held shape (a running maximum,
            // a line of decays): carried in a shared-memory slot.
            Hold::Shared
        } else if self.frag_shape(&s) {
            self.max_cols = self.max_cols.max(s[1]);
            Hold::Frag
        } else if self.rows_shape(&s) {
            Hold::Rows
        } else {
            return Err(format!("%{} {:?} is carried but is not a block of {}k rows", v.0, s, self.unit).into());
        };
        self.set(v, h);
        Ok(h)
    }

    fn set(&mut self, v: TValue, h: Hold) {
        self.hold[v.index()] = h;
        self.derived[v.index()] = matches!(h, Hold::Frag | Hold::Rows | Hold::PackedA | Hold::StagedA);
        self.def_loops[v.index()] = self.loops.clone();
    }

    fn block(&mut self, b: &Block) -> Result<(), Why> {
        for s in &b.stmts {
            self.stmt(s)?;
        }
        Ok(())
    }

    /// Whether a derived operand of shape `x` can be read at the indices of
    /// an elementwise result of shape `r` (same shape, or a row statistic
    /// broadcast along columns).
    fn readable(&self, x: &[u32], r: &[u32]) -> bool {
        x == r || (r.len() == 2 && x.len() == 2 && x[0] == r[0] && x[1] == 1)
    }

    /// Fails with [`Why::Force`] where `x` is held: it is to be read at
    /// indices no lane holds.
    fn anywhere(&self, x: TValue) -> Result<(), Why> {
        if self.derived[x.index()] {
            return Err(Why::Force(x));
        }
        Ok(())
    }

    /// Stages `x` for a `dot` (once): a held tile copied where it is
    /// defined, an unheld value computed into its stage.
    fn stage_operand(&mut self, x: TValue) -> Result<(), Why> {
        match self.hold[x.index()] {
            Hold::Staged => return Ok(()),
            Hold::Frag => {}
            Hold::Lazy if !self.derived[x.index()] => self.hold[x.index()] = Hold::Staged,
            _ => return Err(format!("`dot` operand %{} can be neither staged nor held", x.0).into()),
        }
        let s = self.shape(x);
        if s.len() != 2 || !s[0].is_multiple_of(16) || !s[1].is_multiple_of(16) {
            return Err(format!("a dot operand of {s:?}").into());
        }
        if !self.staged_in.iter().any(|(y, _)| *y == x) {
            let lp = self.def_loops[x.index()].last().copied();
            self.staged_in.push((x, lp));
        }
        Ok(())
    }

    /// A value the earlier runs found read where no lane holds it.
    fn forced(&mut self, s: &Stmt, v: TValue) -> Result<Hold, Why> {
        match &s.op {
            TOp::Load { .. } => {
                for x in s.op.operands() {
                    self.anywhere(x)?;
                }
                Ok(Hold::Lazy)
            }
            TOp::Dot { .. } | TOp::For { .. } | TOp::If { .. } => {
                Err(format!("`{}` %{} is read where no lane holds it", s.op.mnemonic(), v.0).into())
            }
            op => {
                for x in op.operands() {
                    self.anywhere(x)?;
                }
                Ok(Hold::Shared)
            }
        }
    }

    fn stmt(&mut self, s: &Stmt) -> Result<(), Why> {
        let k = self.k;
        match &s.op {
            TOp::For { body, .. } => {
                let Some(iv) = body.args.first().copied() else { return Err("a loop without its variable".into()) };
                self.loops.push(iv);
                self.set(iv, Hold::Scalar);
                let TOp::For { init, .. } = &s.op else { return Err("a loop without its values".into()) };
                for (a, x) in body.args.iter().skip(1).zip(init) {
                    if self.carried(*a)? == Hold::Shared {
                        self.anywhere(*x)?;
                    }
                }
                self.block(body)?;
                self.loops.pop();
                for ((a, r), y) in body.args.iter().skip(1).zip(&s.results).zip(&body.yields) {
                    if self.hold[a.index()] == Hold::Shared {
                        // Written into the carried slot at the end of each
                        // iteration; the result is that slot.
                        self.anywhere(*y)?;
                        self.set(*r, Hold::Shared);
                        self.aliases.push((*r, *a));
                    } else {
                        self.carried(*r)?;
                    }
                }
                return Ok(());
            }
            TOp::If { .. } => return Err("`if` is not supported".into()),
            TOp::Store { value, offsets, mask, .. } => {
                let vs = self.shape(*value).to_vec();
                if !(vs.is_empty() || self.frag_shape(&vs) || self.rows_shape(&vs)) {
                    if !self.slot_forms {
                        return Err(format!("a store of a {vs:?} tile").into());
                    }
                    // Stored by all threads, each element once: readable anywhere.
                    for x in [Some(*offsets), *mask, Some(*value)].into_iter().flatten() {
                        self.anywhere(x)?;
                    }
                    return Ok(());
                }
                for x in [Some(*offsets), *mask, Some(*value)].into_iter().flatten() {
                    if self.derived[x.index()] && !self.readable(self.shape(x), &vs) {
                        return Err(Why::Force(x));
                    }
                }
                return Ok(());
            }
            _ => {}
        }
        let Some(v) = s.results.first().copied() else { return Ok(()) };
        if self.force.contains(&v.0) {
            let h = self.forced(s, v)?;
            for r in &s.results {
                self.set(*r, h);
            }
            return Ok(());
        }
        let shape = self.shape(v).to_vec();
        let dtype = k.ty(v).dtype;
        let ops = s.op.operands();
        let first_derived = ops.iter().copied().find(|x| self.derived[x.index()]);
        let any_derived = first_derived.is_some();
        let hold = match &s.op {
            TOp::Dot { a, b, trans_a: false, trans_b: false, acc: None } if self.slot_forms && one_column(&shape) => {
                // A matrix-vector product (`q·n`): each lane's columns of
                // its rows, then the four lanes of a row; the vector is read
                // at every column.
                let sa = self.shape(*a).to_vec();
                if !self.rows_shape(&shape) || sa.len() != 2 || sa[0] != shape[0] || !sa[1].is_multiple_of(8) {
                    return Err(format!("`dot` %{}: {:?} × {:?}", v.0, sa, self.shape(*b)).into());
                }
                if self.derived[a.index()] && self.hold[a.index()] != Hold::Frag {
                    return Err(Why::Force(*a));
                }
                self.anywhere(*b)?;
                self.max_cols = self.max_cols.max(sa[1]);
                Hold::Rows
            }
            TOp::Dot { a, b, trans_a, trans_b, .. } => {
                let sa = self.shape(*a).to_vec();
                let sb = self.shape(*b).to_vec();
                if !dtype.is_float() || !self.frag_shape(&shape) {
                    return Err(format!("`dot` %{} {:?}: not a block of held rows", v.0, shape).into());
                }
                let (ka, ma) = match (sa.as_slice(), trans_a) {
                    ([r, c], false) => (*c, *r),
                    ([r, c], true) => (*r, *c),
                    _ => return Err(format!("`dot` %{}: left operand {:?}", v.0, sa).into()),
                };
                if ma != shape[0] || !ka.is_multiple_of(16) {
                    return Err(format!("`dot` %{}: left operand {:?} for a result {:?}", v.0, sa, shape).into());
                }
                // A left operand no lane holds (the scaled queries) is read
                // at the lane's positions where used: staging it once for
                // `ldmatrix` measured 1.6× slower on an H100 (linear
                // attention, chunk 64 in blocks of 64: 1.55 ms against
                // 0.97), the copy by all threads and its barriers costing
                // more than the reads they save.
                if *trans_a {
                    self.stage_operand(*a)?;
                }
                self.stage_operand(*b)?;
                let (kk, n) = if *trans_b { (sb[1], sb[0]) } else { (sb[0], sb[1]) };
                if kk != ka || n != shape[1] || !n.is_multiple_of(16) {
                    return Err(format!("`dot` %{}: operand shapes {:?} × {:?}", v.0, sa, sb).into());
                }
                if let TOp::Dot { acc: Some(c), .. } = &s.op {
                    if self.derived[c.index()] && !self.readable(self.shape(*c), &shape) {
                        return Err(Why::Force(*c));
                    }
                }
                if !*trans_a
                    && self.derived[a.index()]
                    && !self.readable(&sa, &shape[..1].iter().chain(&[ka]).copied().collect::<Vec<_>>())
                {
                    return Err(Why::Force(*a));
                }
                self.max_cols = self.max_cols.max(shape[1]).max(ka);
                Hold::Frag
            }
            TOp::Reduce { func, x, axis } => {
                let sx = self.shape(*x).to_vec();
                let ok_func = matches!(func, ReduceFn::Sum | ReduceFn::Max | ReduceFn::Min | ReduceFn::Mean);
                let along_rows = ok_func
                    && dtype.is_float()
                    && k.ty(*x).dtype.is_float()
                    && *axis == 1
                    && self.frag_shape(&sx)
                    && shape == [sx[0]];
                if along_rows {
                    self.max_cols = self.max_cols.max(sx[1]);
                    Hold::Rows
                } else {
                    self.anywhere(*x)?;
                    Hold::Shared
                }
            }
            TOp::Cumsum { x, .. } => {
                self.anywhere(*x)?;
                Hold::Shared
            }
            TOp::Load { .. } if self.dot_b_uses[v.index()] + self.dot_at_uses[v.index()] > 0 => {
                if shape.len() != 2 || !shape[0].is_multiple_of(16) || !shape[1].is_multiple_of(16) {
                    return Err(format!("a dot operand load of {shape:?}").into());
                }
                if let Some(x) = first_derived {
                    return Err(Why::Force(x));
                }
                self.staged_in.push((v, self.loops.last().copied()));
                Hold::Staged
            }
            TOp::Load { .. }
                if self.uses[v.index()] > 0
                    && self.uses[v.index()] == self.dot_a_uses[v.index()]
                    && self.frag_shape(&shape)
                    && !any_derived =>
            {
                self.max_cols = self.max_cols.max(shape[1]);
                if self.stage_left
                    && self.loops.is_empty()
                    && self.used_in_loop[v.index()]
                    && shape[1].is_multiple_of(16)
                {
                    self.staged_in.push((v, None));
                    Hold::StagedA
                } else {
                    Hold::PackedA
                }
            }
            _ if shape.is_empty() => {
                if let Some(x) = first_derived {
                    return Err(Why::Force(x));
                }
                Hold::Scalar
            }
            TOp::Reshape(x) | TOp::Broadcast(x) | TOp::Transpose(x) => {
                if self.derived[x.index()] {
                    let sx = self.shape(*x).to_vec();
                    let nonunit = |s: &[u32]| s.iter().copied().filter(|d| *d != 1).collect::<Vec<_>>();
                    let fine = match &s.op {
                        TOp::Reshape(_) => nonunit(&sx) == nonunit(&shape) && sx.first() == shape.first(),
                        TOp::Broadcast(_) => self.readable(&sx, &shape),
                        _ => false,
                    };
                    if !fine {
                        return Err(Why::Force(*x));
                    }
                    self.hold[v.index()] = Hold::Lazy;
                    self.derived[v.index()] = true;
                    return Ok(());
                }
                Hold::Lazy
            }
            TOp::Unary(..) | TOp::Binary(..) | TOp::Select(..) | TOp::Cast(..) | TOp::Load { .. } => {
                for x in &ops {
                    if self.derived[x.index()] && !self.readable(self.shape(*x), &shape) {
                        return Err(Why::Force(*x));
                    }
                }
                // Loads are read again where used, but for those a loop reads
                // and does not define (held once, not once an iteration).
                let hoisted = self.loops.is_empty() && self.used_in_loop[v.index()];
                let data = any_derived || (matches!(s.op, TOp::Load { .. }) && hoisted);
                let i = v.index();
                let only_left = self.uses[i] > 0 && self.uses[i] == self.dot_a_uses[i];
                if data && self.frag_shape(&shape) {
                    self.max_cols = self.max_cols.max(shape[1]);
                    if only_left && shape[1].is_multiple_of(16) && !matches!(s.op, TOp::Load { .. }) {
                        Hold::PackedA
                    } else {
                        Hold::Frag
                    }
                } else if data && self.rows_shape(&shape) {
                    Hold::Rows
                } else if let Some(x) = first_derived {
                    return Err(Why::Force(x));
                } else if transcendental_line(&s.op, &shape) {
                    Hold::Shared
                } else {
                    Hold::Lazy
                }
            }
            TOp::ProgramId(_) | TOp::Param(_) | TOp::Const(_) | TOp::Arange(_) => Hold::Lazy,
            other => return Err(format!("`{}` is not supported", other.mnemonic()).into()),
        };
        for r in &s.results {
            self.set(*r, hold);
        }
        Ok(())
    }
}

/// Whether shared-memory values are grouped between barriers (with the
/// slot forms): unless `MIXC_GROUP_SHARED=0`, read once a process.
fn group_shared_default() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("MIXC_GROUP_SHARED").map_or(true, |v| v != "0"))
}

/// Whether a `dot` result of `shape` is one column (a matrix-vector product).
fn one_column(shape: &[u32]) -> bool {
    shape.len() == 2 && shape[1] == 1
}

/// The most elements of a carried tile of no held shape kept in a
/// shared-memory slot ([`Hold::Shared`]): a line of a chunk's decays.
const MAX_CARRIED_SHARED: u32 = 1024;

/// Whether `op` is an `exp`-like function of a line of at most 1024
/// elements (one dimension not 1): computed once an element into shared
/// memory ([`Hold::Shared`]) rather than at every read (a chunk's decays
/// `exp(G)`, read by every column of the keys they scale).
fn transcendental_line(op: &TOp, shape: &[u32]) -> bool {
    use UnaryFn::*;
    let costly = matches!(
        op,
        TOp::Unary(Exp | Log | Sigmoid | LogSigmoid | Softplus | Silu | Elu | EluPlusOne | Tanh | Sin | Cos, _)
    );
    let numel: u32 = shape.iter().product();
    costly && !shape.is_empty() && shape.iter().filter(|d| **d != 1).count() <= 1 && numel <= 1024
}

/// The most rows a held tile may have (a recurrence's state of 256 keys).
const MAX_HELD_ROWS: u32 = 256;

/// Elements a lane may keep across loop iterations before the plan is
/// refused (it would spill): attention's running output at 32 rows a warp
/// keeps 136, a recurrence's `[128, 64]` state over 4 warps 64, a
/// `[128, 128]` one over 2 warps 256.
const MAX_RESIDENT: u32 = 192;

/// Plans `k` for the register tier, or says why it does not fit.
///
/// `warp_rows`: rows a warp owns, 16 or 32 ([`crate::Options::warp_rows`]).
///
/// `stage_left`: stage loop-invariant left operands in shared memory
/// ([`Hold::StagedA`]) instead of holding them packed in registers. It frees
/// their registers (attention q128 k64: 216 → 188) but reads them back with
/// `ldmatrix` at every use: measured on an H100 it only pays where the
/// registers buy a second CTA per SM (q128 k32 at `.minnctapersm 2`, 10.1 ms
/// against 10.4 for q128 k64 staged and 9.8 for q128 k64 packed), so it goes
/// with `Options::ctas_per_sm > 1`, and with 32 rows a warp (the second
/// tile's accumulators need the queries' registers).
///
/// The warps are those of the narrowest `dot` result (a chunk of a
/// recurrence, a query block of attention); wider held tiles (a
/// recurrence's `[Dk, Dv]` state) give each warp more `m16` tiles.
pub(crate) fn analyze(
    k: &Kernel,
    matmul: Matmul,
    stage_left: bool,
    warp_rows: u32,
    slot_forms: bool,
) -> Result<RowsPlan, String> {
    if matmul != Matmul::Bf16 {
        return Err("the register tier takes bf16 dots only".into());
    }
    if warp_rows != 16 && warp_rows != 32 {
        return Err(format!("{warp_rows} rows a warp (16 or 32)"));
    }
    let n = k.types.len();
    let mut uses = vec![0u32; n];
    let mut dot_a_uses = vec![0u32; n];
    let mut dot_at_uses = vec![0u32; n];
    let mut dot_b_uses = vec![0u32; n];
    let mut m: Option<u32> = None;
    let (mut loaded, mut stored) = (vec![], vec![]);
    k.walk(&mut |s| {
        for x in s.op.operands() {
            if let Some(u) = uses.get_mut(x.index()) {
                *u += 1;
            }
        }
        if let TOp::For { body, .. } | TOp::If { then: body, .. } = &s.op {
            for y in &body.yields {
                if let Some(u) = uses.get_mut(y.index()) {
                    *u += 1;
                }
            }
        }
        if let TOp::If { otherwise, .. } = &s.op {
            for y in &otherwise.yields {
                if let Some(u) = uses.get_mut(y.index()) {
                    *u += 1;
                }
            }
        }
        match &s.op {
            // A matrix-vector product is no `mma` (its operands are read in place).
            TOp::Dot { .. } if slot_forms && s.results.first().is_some_and(|r| one_column(&k.ty(*r).shape)) => {}
            TOp::Dot { a, b, trans_a, .. } => {
                if let Some(u) = dot_b_uses.get_mut(b.index()) {
                    *u += 1;
                }
                let left = if *trans_a { &mut dot_at_uses } else { &mut dot_a_uses };
                if let Some(u) = left.get_mut(a.index()) {
                    *u += 1;
                }
                if let Some(rows) = s.results.first().and_then(|r| k.ty(*r).shape.first().copied()) {
                    m = Some(m.map_or(rows, |x| x.min(rows)));
                }
            }
            TOp::Load { ptr, .. } => loaded.push(*ptr),
            TOp::Store { ptr, .. } => stored.push(*ptr),
            _ => {}
        }
    });
    for y in &k.body.yields {
        if let Some(u) = uses.get_mut(y.index()) {
            *u += 1;
        }
    }
    let Some(m) = m else { return Err("no dot".into()) };
    if !m.is_multiple_of(16) || !(16..=256).contains(&m) {
        return Err(format!("dot results of {m} rows"));
    }
    if !m.is_multiple_of(warp_rows) {
        return Err(format!("dot results of {m} rows for warps of {warp_rows}"));
    }
    if loaded.iter().any(|p| stored.contains(p)) {
        return Err("a buffer both loaded and stored".into());
    }
    if k.types.iter().any(|t| t.dtype == DType::F64) {
        return Err("f64 tiles".into());
    }
    let used_in_loop = read_in_loops(k);
    let mut force = HashSet::new();
    let a = loop {
        let mut a = Analysis {
            k,
            unit: 16 * (m / warp_rows),
            hold: vec![Hold::Scalar; n],
            derived: vec![false; n],
            uses: uses.clone(),
            dot_a_uses: dot_a_uses.clone(),
            dot_at_uses: dot_at_uses.clone(),
            dot_b_uses: dot_b_uses.clone(),
            max_cols: 8,
            def_loops: vec![vec![]; n],
            loops: vec![],
            staged_in: vec![],
            used_in_loop: used_in_loop.clone(),
            stage_left,
            force: force.clone(),
            aliases: vec![],
            slot_forms,
        };
        match a.block(&k.body) {
            Ok(()) => break a,
            Err(Why::No(e)) => return Err(e),
            Err(Why::Force(x)) => {
                let numel: u32 = k.ty(x).shape.iter().product();
                if numel > MAX_SHARED_ELEMENTS {
                    return Err(format!("%{} {:?} is read where no lane holds it", x.0, k.ty(x).shape));
                }
                if !force.insert(x.0) {
                    return Err(format!("%{} is read where no lane holds it", x.0));
                }
            }
        }
    };
    // Stage offsets, in order of definition; pipelined stages get two buffers.
    let defs = Defs::new(k);
    // Pipelined where it fits, else every stage copied in place.
    let (mut stages, mut pipelined, mut offset) = place_stages(k, &defs, &a, true);
    let shared_total = |offset: u32| offset.saturating_add(shared_slot_bytes(k, &a));
    if shared_total(offset) > MAX_SHARED {
        (stages, pipelined, offset) = place_stages(k, &defs, &a, false);
    }
    let Slots { of: shared, next: carried_next, slots, end } = place_slots(k, &a, offset);
    if end > MAX_SHARED {
        return Err(format!("staged operands need {end} bytes of shared memory"));
    }
    let tiles = warp_rows / 16;
    let resident = resident_elements(k, &a);
    if resident > MAX_RESIDENT {
        return Err(format!("held tiles keep {resident} elements a thread across loop iterations"));
    }
    if recurrence_form(&defs, &a, m) {
        if m < MIN_RECURRENCE_ROWS {
            return Err(format!("a recurrence's chunk of {m} rows (fewer than {MIN_RECURRENCE_ROWS})"));
        }
        let peak = peak_elements(&a);
        if peak > MAX_RECURRENCE_PEAK {
            return Err(format!("held tiles reach {peak} elements a thread (more than {MAX_RECURRENCE_PEAK})"));
        }
    }
    Ok(RowsPlan {
        m,
        tiles,
        hold: a.hold,
        stages,
        shared,
        carried_next,
        group_shared: slot_forms && group_shared_default(),
        slots,
        shared_bytes: end,
        max_cols: a.max_cols,
        resident,
        pipelined,
    })
}

/// Whether `k` uses what chunked recurrences need of the tier: tiles of
/// more rows than the narrowest `dot` (a `[Dk, Dv]` state), transposed left
/// operands, operands staged from computed values, or values materialized
/// in shared memory (cumulative decays).
fn recurrence_form(defs: &Defs, a: &Analysis, m: u32) -> bool {
    let k = a.k;
    let wide = (0..a.hold.len()).any(|i| {
        matches!(a.hold[i], Hold::Frag | Hold::Rows) && k.ty(TValue(i as u32)).shape.first().is_some_and(|r| *r > m)
    });
    let computed_stage = a.staged_in.iter().any(|(v, _)| !matches!(defs.op(*v), Some(TOp::Load { .. })));
    wide || computed_stage || a.hold.contains(&Hold::Shared) || a.dot_at_uses.iter().any(|u| *u > 0)
}

/// The fewest rows of a chunk the tier takes a recurrence at: 4 warps.
/// Below, one or two warps would hold the whole state (the test models'
/// `Dk = 16` kernels spill at one warp).
const MIN_RECURRENCE_ROWS: u32 = 64;

/// The most elements a lane of a recurrence's kernel may hold at once
/// ([`peak_elements`]): the anchors' (`Dk = Dv = 128`) linear attention and
/// simple GLA at chunk 64 peak at 80–96 in value blocks of 32 and linear
/// attention at 128 in blocks of 64, and assemble without spills; simple
/// GLA in blocks of 64 (192) spilled 48 bytes, both at chunk 128 on the
/// whole head (192) 4–8 bytes and ran slower than in blocks of 64 (H100:
/// linear attention 1.29 ms against 0.97), at chunk 32 in blocks of 64
/// (256, 384) 200–300 bytes.
const MAX_RECURRENCE_PEAK: u32 = 160;

/// The most elements of a value the register tier materializes in shared
/// memory ([`Hold::Shared`]).
const MAX_SHARED_ELEMENTS: u32 = 16 * 1024;

/// Bytes of one [`Hold::Shared`] value's slot (16-byte aligned).
fn slot_bytes(k: &Kernel, v: TValue) -> u32 {
    let t = k.ty(v);
    let eb = if t.dtype == DType::Bool { 1 } else { 4 };
    (t.shape.iter().product::<u32>() * eb).next_multiple_of(16)
}

/// The values that get a slot of their own: every [`Hold::Shared`] value
/// but loop results (they are their carried value's slot); carried ones
/// twice (the next iteration's value is written to the second, then copied).
fn slot_values(a: &Analysis) -> Vec<(TValue, u32)> {
    let mut out = vec![];
    for (i, h) in a.hold.iter().enumerate() {
        let v = TValue(i as u32);
        if *h == Hold::Shared && !a.aliases.iter().any(|(r, _)| *r == v) {
            let carried = a.aliases.iter().any(|(_, c)| *c == v);
            out.push((v, if carried { 2 } else { 1 }));
        }
    }
    out
}

fn shared_slot_bytes(k: &Kernel, a: &Analysis) -> u32 {
    slot_values(a).iter().map(|(v, n)| n * slot_bytes(k, *v)).sum()
}

/// Dense slots for the [`Hold::Shared`] values, from `offset`: (slot of
/// each value, the next-iteration slot of each carried one, the slots, the end).
fn place_slots(k: &Kernel, a: &Analysis, offset: u32) -> Slots {
    let mut out = Slots { of: HashMap::new(), next: HashMap::new(), slots: vec![], end: offset.next_multiple_of(16) };
    for (v, copies) in slot_values(a) {
        let bytes = slot_bytes(k, v);
        let eb = if k.ty(v).dtype == DType::Bool { 1 } else { 4 };
        for copy in 0..copies {
            if copy == 0 {
                out.of.insert(v.0, out.slots.len());
            } else {
                out.next.insert(v.0, out.slots.len());
            }
            out.slots.push(Slot::dense(out.end, bytes, eb));
            out.end = out.end.saturating_add(bytes);
        }
    }
    for (r, c) in &a.aliases {
        if let Some(slot) = out.of.get(&c.0).copied() {
            out.of.insert(r.0, slot);
        }
    }
    out
}

/// Where [`place_slots`] put the [`Hold::Shared`] values.
struct Slots {
    of: HashMap<u32, usize>,
    next: HashMap<u32, usize>,
    slots: Vec<Slot>,
    end: u32,
}

/// Plans `k` with `warp_rows` rows a warp (16, 32, or 0: the backend's
/// choice); 32 rows stage loop-invariant left operands whatever
/// `stage_left` says.
///
/// The choice (0): 32 where a loop carries held tiles (attention's running
/// output and statistics) through blocks of at least 128 rows (4 warps or
/// more: q64 k64 at 32 rows, two warps a CTA, ran 23 ms against 12 at 16)
/// and two tiles' worth of them still fit a thread's 255 registers, else the
/// 16-row plan the estimate was made from.
pub(crate) fn analyze_rows(
    k: &Kernel,
    matmul: Matmul,
    stage_left: bool,
    warp_rows: u32,
    slot_forms: bool,
) -> Result<RowsPlan, String> {
    if warp_rows != 0 {
        return analyze(k, matmul, stage_left || warp_rows > 16, warp_rows, slot_forms);
    }
    let narrow = analyze(k, matmul, stage_left, 16, slot_forms)?;
    if two_tiles_fit(k, &narrow) {
        let wide = analyze(k, matmul, true, 32, slot_forms);
        if slot_forms {
            // Where 32 rows are refused (a recurrence's chunk over two warps), 16.
            Ok(wide.unwrap_or(narrow))
        } else {
            wide
        }
    } else {
        Ok(narrow)
    }
}

/// Whether a warp of the 16-row plan `rp` can own 32 rows. The estimate:
/// what a loop carries plus, for each tile, the widest `dot` result inside
/// a loop that does not accumulate onto another tile, half again (the
/// scores and their packed copy), and 48 for addressing. On an H100 (causal
/// attention, bf16, D = 128) it takes q128 k32 to 32 rows (254 registers,
/// no spill: 8.9 ms at B=8, T=8192, against 10.5 at 16 rows) and keeps
/// q128 k64 at 16 (at 32 rows it spills: 11.9 ms against 9.6).
fn two_tiles_fit(k: &Kernel, rp: &RowsPlan) -> bool {
    let cols = |v: TValue| k.ty(v).shape.get(1).copied().unwrap_or(0);
    let per_lane = |v: TValue| match rp.hold.get(v.index()) {
        Some(Hold::Frag) => cols(v) / 2,
        Some(Hold::PackedA) => cols(v) / 4,
        Some(Hold::Rows) => 2,
        _ => 0,
    };
    let (mut carried, mut scores) = (0u32, 0u32);
    for s in &k.body.stmts {
        if let TOp::For { body, .. } = &s.op {
            carried = carried.max(body.args.iter().skip(1).map(|x| per_lane(*x)).sum());
            for t in &body.stmts {
                if let (TOp::Dot { acc: None, .. }, Some(r)) = (&t.op, t.results.first()) {
                    scores = scores.max(cols(*r) / 2);
                }
            }
        }
    }
    let estimate = 2 * (carried + scores * 3 / 2) + 48;
    carried > 0 && rp.m >= 128 && rp.m.is_multiple_of(32) && estimate <= 255
}

/// The stages' places in shared memory (with `pipeline`, pipelined stages
/// get their buffers), and the bytes used. Stages defined outside loops come
/// first, in order of definition; the stages of each top-level loop then
/// start at the same offset after them, since the loops run one after the
/// other (attention's unmasked and diagonal walks share their buffers; the
/// emitter puts a barrier between a loop's last reads and the next loop's
/// first copies).
#[allow(clippy::type_complexity)]
fn place_stages(
    k: &Kernel,
    defs: &Defs,
    a: &Analysis,
    pipeline: bool,
) -> (HashMap<u32, Stage>, HashMap<u32, Vec<TValue>>, u32) {
    let mut stages = HashMap::new();
    let mut pipelined: HashMap<u32, Vec<TValue>> = HashMap::new();
    let mut place = |v: TValue, lp: Option<TValue>, offset: u32| -> u32 {
        let s = &k.ty(v).shape;
        let stride = s[1] * 2 + STAGE_PAD;
        let bytes = s[0].saturating_mul(stride);
        let piped = lp.filter(|_| pipeline).and_then(|iv| pipelinable(k, defs, a, v, iv).map(|copied| (iv, copied)));
        let mut stage = Stage { offset, stride, bytes, raw: None };
        let buffers = match piped {
            Some((_, Copy::AsIs)) => 2,
            _ => 1,
        };
        let mut end = offset.saturating_add(bytes.saturating_mul(buffers));
        if let Some((_, Copy::Widened)) = piped {
            let raw = s[0].saturating_mul(s[1]).saturating_mul(4);
            stage.raw = Some(Raw { offset: end, bytes: raw });
            end = end.saturating_add(raw.saturating_mul(2));
        }
        stages.insert(v.0, stage);
        if let Some((iv, _)) = piped {
            pipelined.entry(iv.0).or_default().push(v);
        }
        end
    };
    let top_loop = |v: TValue| a.def_loops[v.index()].first().copied();
    let mut base = 0u32;
    for (v, lp) in a.staged_in.iter().copied().filter(|(v, _)| top_loop(*v).is_none()) {
        base = place(v, lp, base);
    }
    let mut groups: Vec<TValue> = vec![];
    for (v, _) in &a.staged_in {
        if let Some(top) = top_loop(*v) {
            if !groups.contains(&top) {
                groups.push(top);
            }
        }
    }
    let mut end = base;
    for group in groups {
        let mut at = base;
        for (v, lp) in a.staged_in.iter().copied().filter(|(v, _)| top_loop(*v) == Some(group)) {
            at = place(v, lp, at);
        }
        end = end.max(at);
    }
    (stages, pipelined, end)
}

/// How a pipelined stage's rows are copied.
#[derive(Clone, Copy, PartialEq)]
enum Copy {
    /// bf16 in memory: straight into the stage.
    AsIs,
    /// f32 in memory: into raw buffers, rounded into the stage each iteration.
    Widened,
}

/// Whether a staged load can be copied an iteration ahead with 16-byte
/// `cp.async`s (`n` = 8 bf16 or 4 f32 elements each), and how: bf16 or f32
/// in memory, zero where masked, offsets `base(row) + col` with `base` a
/// multiple of `n` (so `n` columns are one aligned 16-byte chunk), a mask
/// constant over each chunk, and nothing it reads computed inside its loop
/// but the induction variable.
fn pipelinable(k: &Kernel, defs: &Defs, a: &Analysis, v: TValue, iv: TValue) -> Option<Copy> {
    let Some(TOp::Load { ptr, offsets, mask, other }) = defs.op(v) else { return None };
    let (copy, vec) = match k.params.get(ptr.index()).map(|p| &p.kind) {
        Some(ParamKind::Ptr(DType::BF16)) => (Copy::AsIs, 8),
        Some(ParamKind::Ptr(DType::F32)) => (Copy::Widened, 4),
        _ => return None,
    };
    let roles = [Role::Row, Role::Col];
    let aligned = affine(k, defs, *offsets, &roles).is_some_and(|x| x.coef == 1 && x.align % vec == 0);
    let uniform = mask.is_none_or(|m| chunk_uniform(k, defs, m, &roles, vec));
    let outside = |x: TValue| reads_outside(defs, a, x, iv);
    let ok = *other == 0.0
        && k.ty(v).shape[1].is_multiple_of(8)
        && aligned
        && uniform
        && outside(*offsets)
        && mask.is_none_or(outside);
    ok.then_some(copy)
}

/// What an index of a staged tile's dimension is.
#[derive(Clone, Copy, PartialEq)]
enum Role {
    Row,
    Col,
    /// A broadcast dimension: index 0.
    Zero,
}

/// An integer tile as `coef · col + rest`, `rest` a multiple of `align`
/// (0: always 0), `konst` its value where constant.
#[derive(Clone, Copy)]
struct Affine {
    coef: i64,
    align: u64,
    konst: Option<i64>,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The roles of an operand's dimensions read at `roles` of a result of
/// shape `r` (broadcasting, or a reshape that only adds or drops unit dims).
fn operand_roles(x: &[u32], r: &[u32], roles: &[Role], reshape: bool) -> Option<Vec<Role>> {
    if reshape {
        let nonunit: Vec<Role> = r.iter().zip(roles).filter(|(d, _)| **d != 1).map(|(_, r)| *r).collect();
        let mut it = nonunit.into_iter();
        let out: Vec<Role> =
            x.iter().map(|d| if *d == 1 { Some(Role::Zero) } else { it.next() }).collect::<Option<_>>()?;
        return it.next().is_none().then_some(out);
    }
    let off = r.len().checked_sub(x.len())?;
    Some(x.iter().enumerate().map(|(d, s)| if *s == 1 { Role::Zero } else { roles[d + off] }).collect())
}

fn affine(k: &Kernel, defs: &Defs, v: TValue, roles: &[Role]) -> Option<Affine> {
    let unknown = Affine { coef: 0, align: 1, konst: None };
    let Some(op) = defs.op(v) else { return k.ty(v).shape.is_empty().then_some(unknown) };
    let shape = &k.ty(v).shape;
    let sub = |x: TValue, reshape: bool| -> Option<Affine> {
        affine(k, defs, x, &operand_roles(&k.ty(x).shape, shape, roles, reshape)?)
    };
    Some(match op {
        TOp::Const(c) if c.fract() == 0.0 => {
            let c = *c as i64;
            Affine { coef: 0, align: c.unsigned_abs(), konst: Some(c) }
        }
        TOp::Arange(_) => match roles.first() {
            Some(Role::Col) => Affine { coef: 1, align: 0, konst: None },
            Some(Role::Zero) => Affine { coef: 0, align: 0, konst: Some(0) },
            _ => unknown,
        },
        TOp::Reshape(x) => sub(*x, true)?,
        TOp::Broadcast(x) => sub(*x, false)?,
        TOp::Binary(f, x, y) => {
            let (a, b) = (sub(*x, false)?, sub(*y, false)?);
            match f {
                BinaryFn::Add | BinaryFn::Sub => {
                    let coef = if *f == BinaryFn::Add { a.coef + b.coef } else { a.coef - b.coef };
                    let konst = match (a.konst, b.konst) {
                        (Some(p), Some(q)) => Some(if *f == BinaryFn::Add { p + q } else { p - q }),
                        _ => None,
                    };
                    Affine { coef, align: gcd(a.align, b.align), konst }
                }
                BinaryFn::Mul => match (a.konst, b.konst) {
                    (Some(p), _) => {
                        Affine { coef: b.coef * p, align: b.align * p.unsigned_abs(), konst: b.konst.map(|q| p * q) }
                    }
                    (_, Some(q)) => Affine { coef: a.coef * q, align: a.align * q.unsigned_abs(), konst: None },
                    _ if a.coef == 0 && b.coef == 0 => Affine { coef: 0, align: a.align * b.align, konst: None },
                    _ => return None,
                },
                _ if a.coef == 0 && b.coef == 0 => unknown,
                _ => return None,
            }
        }
        other => {
            for x in other.operands() {
                if affine(k, defs, x, &operand_roles(&k.ty(x).shape, shape, roles, false)?)?.coef != 0 {
                    return None;
                }
            }
            unknown
        }
    })
}

/// Whether a bool tile is constant over each aligned run of `step` columns:
/// independent of the column, a conjunction of such, or `col + base < n`
/// with `base` and `n` multiples of `step`.
fn chunk_uniform(k: &Kernel, defs: &Defs, v: TValue, roles: &[Role], step: u64) -> bool {
    let free = |x: TValue, rs: &[Role]| affine_free(k, defs, x, rs);
    if free(v, roles) {
        return true;
    }
    let shape = &k.ty(v).shape;
    let Some(op) = defs.op(v) else { return false };
    let sub_roles = |x: TValue, reshape: bool| operand_roles(&k.ty(x).shape, shape, roles, reshape);
    match op {
        TOp::Reshape(x) => sub_roles(*x, true).is_some_and(|r| chunk_uniform(k, defs, *x, &r, step)),
        TOp::Broadcast(x) => sub_roles(*x, false).is_some_and(|r| chunk_uniform(k, defs, *x, &r, step)),
        TOp::Binary(BinaryFn::And, x, y) => {
            [x, y].iter().all(|z| sub_roles(**z, false).is_some_and(|r| chunk_uniform(k, defs, **z, &r, step)))
        }
        TOp::Binary(BinaryFn::Lt, x, y) => {
            let (Some(rx), Some(ry)) = (sub_roles(*x, false), sub_roles(*y, false)) else { return false };
            let (Some(a), Some(b)) = (affine(k, defs, *x, &rx), affine(k, defs, *y, &ry)) else { return false };
            a.coef == 1 && a.align % step == 0 && b.coef == 0 && b.konst.is_some_and(|n| n.unsigned_abs() % step == 0)
        }
        _ => false,
    }
}

/// Whether a value does not depend on the column index at all.
fn affine_free(k: &Kernel, defs: &Defs, v: TValue, roles: &[Role]) -> bool {
    let Some(op) = defs.op(v) else { return true };
    let shape = &k.ty(v).shape;
    match op {
        TOp::Arange(_) => roles.first() != Some(&Role::Col),
        TOp::Reshape(x) => {
            operand_roles(&k.ty(*x).shape, shape, roles, true).is_some_and(|r| affine_free(k, defs, *x, &r))
        }
        other => other
            .operands()
            .iter()
            .all(|x| operand_roles(&k.ty(*x).shape, shape, roles, false).is_some_and(|r| affine_free(k, defs, *x, &r))),
    }
}

/// Whether evaluating `v` reads, of what its loop (induction variable `iv`)
/// computes, only `iv` itself: scalars computed inside the loop hold this
/// iteration's values, which the copy for the next one must not use.
fn reads_outside(defs: &Defs, a: &Analysis, v: TValue, iv: TValue) -> bool {
    if v == iv || !a.def_loops[v.index()].contains(&iv) {
        return true;
    }
    // Lazy values, and scalars of the iteration (a row offset), which the
    // copies compute again for the iteration they copy for.
    if !matches!(a.hold[v.index()], Hold::Lazy | Hold::Scalar) {
        return false;
    }
    match defs.op(v) {
        Some(TOp::Load { .. }) if a.hold[v.index()] == Hold::Scalar => false,
        Some(op) => op.operands().iter().all(|x| reads_outside(defs, a, *x, iv)),
        None => false,
    }
}

/// The scalars computed by statements that evaluating `v` reads (through
/// lazy values), in order of definition: a copy for another iteration
/// computes them again.
fn scalars_read(em: &Em<'_, '_>, rp: &RowsPlan, v: TValue, out: &mut Vec<TValue>) {
    let Some(op) = em.defs.op(v) else { return };
    match hold_of(rp, v) {
        Hold::Scalar if !out.contains(&v) => {
            for x in op.operands() {
                scalars_read(em, rp, x, out);
            }
            out.push(v);
        }
        Hold::Lazy => {
            for x in op.operands() {
                scalars_read(em, rp, x, out);
            }
        }
        _ => {}
    }
}

/// Whether each value is read by a statement inside a loop.
fn read_in_loops(k: &Kernel) -> Vec<bool> {
    fn go(b: &Block, inside: bool, out: &mut Vec<bool>) {
        for s in &b.stmts {
            if inside {
                for x in s.op.operands() {
                    if let Some(o) = out.get_mut(x.index()) {
                        *o = true;
                    }
                }
            }
            match &s.op {
                TOp::For { body, .. } => go(body, true, out),
                TOp::If { then, otherwise, .. } => {
                    go(then, inside, out);
                    go(otherwise, inside, out);
                }
                _ => {}
            }
        }
    }
    let mut out = vec![false; k.types.len()];
    go(&k.body, false, &mut out);
    out
}

/// Elements per lane of held tiles that live across the iterations of a
/// top-level loop (the most of any).
fn resident_elements(k: &Kernel, a: &Analysis) -> u32 {
    let per_lane = |v: TValue| a.per_lane(v);
    let mut total = 0;
    let mut outside: Vec<TValue> = vec![];
    for s in &k.body.stmts {
        if let TOp::For { body, .. } = &s.op {
            let carried = body.args.iter().skip(1).map(|x| per_lane(*x)).sum::<u32>();
            let mut inner = vec![];
            body.stmts.iter().for_each(|s| inner.extend(s.op.operands()));
            let read = outside.iter().filter(|v| inner.contains(v)).map(|v| per_lane(*v)).sum::<u32>();
            // Successive loops do not hold their tiles at the same time.
            total = total.max(carried + read);
        }
        outside.extend(s.results.iter().copied());
    }
    total
}

/// Elements per lane of held tiles live at once, at the busiest statement
/// of any top-level loop (the carried and outside tiles it reads included).
fn peak_elements(a: &Analysis) -> u32 {
    let k = a.k;
    fn deep(s: &Stmt, out: &mut Vec<TValue>) {
        out.extend(s.op.operands());
        if let TOp::For { body, .. } | TOp::If { then: body, .. } = &s.op {
            out.extend(body.yields.iter().copied());
            for t in &body.stmts {
                deep(t, out);
            }
        }
    }
    let per_lane = |v: TValue| a.per_lane(v);
    let mut peak = 0;
    let mut outside: Vec<TValue> = vec![];
    for s in &k.body.stmts {
        if let TOp::For { body, .. } = &s.op {
            let reads: Vec<Vec<TValue>> = body
                .stmts
                .iter()
                .map(|t| {
                    let mut out = vec![];
                    deep(t, &mut out);
                    out
                })
                .collect();
            let last = |v: TValue| {
                let end = if body.yields.contains(&v) { reads.len() } else { 0 };
                reads.iter().rposition(|r| r.contains(&v)).unwrap_or(0).max(end)
            };
            let all: Vec<TValue> = reads.iter().flatten().copied().collect();
            let mut live = body.args.iter().skip(1).map(|x| per_lane(*x)).sum::<u32>()
                + outside.iter().filter(|v| all.contains(v)).map(|v| per_lane(*v)).sum::<u32>();
            peak = peak.max(live);
            let mut ends: Vec<(usize, u32)> = vec![];
            for (i, t) in body.stmts.iter().enumerate() {
                for r in &t.results {
                    let n = per_lane(*r);
                    if n > 0 {
                        live += n;
                        ends.push((last(*r), n));
                    }
                }
                peak = peak.max(live);
                live -= ends.iter().filter(|(e, _)| *e <= i).map(|(_, n)| *n).sum::<u32>();
                ends.retain(|(e, _)| *e > i);
            }
        }
        outside.extend(s.results.iter().copied());
    }
    peak
}

/// This lane's rows and columns.
pub(crate) struct Lanes<'ctx> {
    lane: IntValue<'ctx>,
    warp: IntValue<'ctx>,
    t: IntValue<'ctx>,
    /// By a held tile's rows `r`: rows `g` and `g + 8` of each of the warp's
    /// `m16` tiles of it (`r / unit` of them), in order.
    rows: HashMap<u32, Vec<IntValue<'ctx>>>,
    cols: Vec<[IntValue<'ctx>; 2]>,
    /// The shared byte offset of the buffer a pipelined stage is read from
    /// in the current iteration.
    stage_base: RefCell<HashMap<u32, IntValue<'ctx>>>,
}

impl<'ctx> Lanes<'ctx> {
    pub(super) fn new(em: &Em<'ctx, '_>, rp: &RowsPlan) -> R<Lanes<'ctx>> {
        let b = &em.b;
        let lane = b.build_and(em.tid, em.i32c(31), "lane")?;
        let warp = b.build_right_shift(em.tid, em.i32c(5), false, "warp")?;
        let g = b.build_right_shift(lane, em.i32c(2), false, "g")?;
        let t = b.build_and(lane, em.i32c(3), "t")?;
        let unit = rp.unit();
        let mut rows = HashMap::new();
        for tiles in 1..=MAX_HELD_ROWS / unit {
            let first = b.build_int_add(b.build_int_mul(warp, em.i32c(16 * tiles as i64), "")?, g, "row0")?;
            let mut rs = vec![];
            for i in 0..tiles {
                let r0 = if i == 0 { first } else { b.build_int_add(first, em.i32c(16 * i as i64), "")? };
                rs.push(r0);
                rs.push(b.build_int_add(r0, em.i32c(8), "")?);
            }
            rows.insert(tiles * unit, rs);
        }
        let t2 = b.build_int_mul(t, em.i32c(2), "")?;
        let mut cols = vec![];
        for j in 0..rp.max_cols.div_ceil(8) {
            let c0 = if j == 0 { t2 } else { b.build_int_add(t2, em.i32c(8 * j as i64), "")? };
            let c1 = b.build_int_add(c0, em.i32c(1), "")?;
            cols.push([c0, c1]);
        }
        Ok(Lanes { lane, warp, t, rows, cols, stage_base: RefCell::new(HashMap::new()) })
    }

    /// This lane's rows of a held tile of `r` rows.
    fn rows_of(&self, r: u32) -> R<&[IntValue<'ctx>]> {
        match self.rows.get(&r) {
            Some(rs) => Ok(rs),
            None => super::fail(format!("a held tile of {r} rows")),
        }
    }

    /// The indices of this lane's elements of a tile of `shape` held as `h`,
    /// in fragment order (`j`, then row half, then column of the pair).
    fn positions(&self, em: &Em<'ctx, '_>, h: Hold, shape: &[u32]) -> R<Vec<Vec<IntValue<'ctx>>>> {
        let rows = || self.rows_of(shape.first().copied().unwrap_or(0));
        Ok(match h {
            Hold::Scalar => vec![vec![]],
            Hold::Rows if shape.len() == 1 => rows()?.iter().map(|r| vec![*r]).collect(),
            Hold::Rows => rows()?.iter().map(|r| vec![*r, em.i32c(0)]).collect(),
            Hold::Frag | Hold::PackedA => {
                let n = shape.get(1).copied().unwrap_or(0) / 8;
                let mut out = vec![];
                for j in 0..n as usize {
                    let Some(cj) = self.cols.get(j) else { return super::fail("a tile wider than planned") };
                    for r in rows()? {
                        for c in cj {
                            out.push(vec![*r, *c]);
                        }
                    }
                }
                out
            }
            Hold::Lazy | Hold::Staged | Hold::StagedA | Hold::Shared => {
                return super::fail("a value that is not held has no positions")
            }
        })
    }
}

/// Emits the kernel body in the register tier.
pub(super) fn emit(em: &mut Em<'_, '_>, rp: &RowsPlan) -> R<()> {
    let ln = Lanes::new(em, rp)?;
    let k = em.k;
    block(em, rp, &ln, &k.body)
}

fn block<'ctx>(em: &mut Em<'ctx, '_>, rp: &RowsPlan, ln: &Lanes<'ctx>, b: &Block) -> R<()> {
    let k = em.k;
    let shared_at = |j: usize| {
        let s = &b.stmts[j];
        !matches!(s.op, TOp::For { .. }) && s.results.first().is_some_and(|v| hold_of(rp, *v) == Hold::Shared)
    };
    // The statement of `b` that defines each value.
    let def_at: HashMap<u32, usize> =
        b.stmts.iter().enumerate().flat_map(|(i, s)| s.results.iter().map(move |r| (r.0, i))).collect();
    let mut early: HashSet<usize> = HashSet::new();
    for (i, s) in b.stmts.iter().enumerate() {
        if early.contains(&i) {
            continue;
        }
        if !shared_at(i) {
            stmt(em, rp, ln, s).map_err(|e| named(e, &k.name, &s.op.mnemonic()))?;
            continue;
        }
        // The [`Hold::Shared`] values after this one that need nothing
        // computed in between join it between the same two barriers.
        let mut group = vec![i];
        if rp.group_shared {
            let ready = |j: &usize| b.stmts[*j].op.operands().iter().all(|x| ready_at(rp, b, &def_at, i, *x));
            group.extend(((i + 1)..b.stmts.len()).filter(|j| shared_at(*j)).filter(ready));
        }
        let stmts: Vec<&Stmt> = group.iter().map(|j| &b.stmts[*j]).collect();
        shared(em, &stmts).map_err(|e| named(e, &k.name, &s.op.mnemonic()))?;
        early.extend(group);
    }
    Ok(())
}

/// Whether `x` can be read at statement `i` of `b` (`def_at`: the statement
/// defining each value of `b`) without anything of `b` from `i` on being
/// emitted first: defined before `i` (or outside `b`), or computed where
/// read from such values.
fn ready_at(rp: &RowsPlan, b: &Block, def_at: &HashMap<u32, usize>, i: usize, x: TValue) -> bool {
    let Some(j) = def_at.get(&x.0).copied() else { return true };
    if j < i {
        return true;
    }
    let s = &b.stmts[j];
    hold_of(rp, x) == Hold::Lazy
        && !matches!(s.op, TOp::For { .. } | TOp::If { .. })
        && s.op.operands().iter().all(|y| ready_at(rp, b, def_at, i, *y))
}

fn pipelined(rp: &RowsPlan, v: TValue) -> bool {
    rp.pipelined.values().any(|vs| vs.contains(&v))
}

fn hold_of(rp: &RowsPlan, v: TValue) -> Hold {
    rp.hold.get(v.index()).copied().unwrap_or(Hold::Lazy)
}

/// Binds element `pos` of `v` to `x`.
fn bind<'ctx>(em: &mut Em<'ctx, '_>, rp: &RowsPlan, v: TValue, pos: &[IntValue<'ctx>], x: BasicValueEnum<'ctx>) {
    if hold_of(rp, v) == Hold::Scalar {
        em.set(v, x);
    } else {
        em.held.insert(super::elem_key(v, pos), x);
    }
}

fn stmt<'ctx>(em: &mut Em<'ctx, '_>, rp: &RowsPlan, ln: &Lanes<'ctx>, s: &Stmt) -> R<()> {
    match &s.op {
        TOp::For { .. } => return for_(em, rp, ln, s),
        TOp::Store { .. } => return store(em, rp, ln, s),
        TOp::If { .. } => return super::fail("not supported in the register tier"),
        _ => {}
    }
    let Some(v) = s.results.first().copied() else { return Ok(()) };
    let shape = em.k.ty(v).shape.clone();
    match hold_of(rp, v) {
        Hold::Lazy => Ok(()),
        Hold::Scalar => {
            let x = em.compute(v, &[])?;
            em.set(v, x);
            Ok(())
        }
        Hold::Shared => shared(em, &[s]),
        Hold::Staged if pipelined(rp, v) => Ok(()),
        Hold::Staged => {
            stage(em, rp, v)?;
            read_from_stage(em, rp, v, None)
        }
        Hold::StagedA => stage(em, rp, v),
        Hold::PackedA => {
            let pos = ln.positions(em, Hold::Frag, &shape)?;
            for pair in pos.chunks(2) {
                let [p0, p1] = pair else { return super::fail("an odd number of positions") };
                let x0 = fv(em.compute(v, p0)?)?;
                let x1 = fv(em.compute(v, p1)?)?;
                let packed = em.pack_bf16(x0, x1)?;
                em.held.insert(super::elem_key(v, p0), packed.into());
            }
            Ok(())
        }
        h @ (Hold::Frag | Hold::Rows) => {
            match &s.op {
                TOp::Dot { a, b, .. } if one_column(&shape) => matvec(em, ln, v, *a, *b)?,
                TOp::Dot { a, b, acc, trans_a, trans_b } => {
                    dot(em, rp, ln, v, Operands { a: *a, b: *b, acc: *acc, trans_a: *trans_a, trans_b: *trans_b })?
                }
                TOp::Reduce { func, x, .. } => reduce(em, ln, v, *func, *x)?,
                TOp::Unary(UnaryFn::Exp, x) if em.opts.fast_exp => match exp_of_difference(em, *x) {
                    Some((a, b)) => exp2_fused(em, rp, ln, v, h, a, b)?,
                    None => elementwise(em, rp, ln, v, h)?,
                },
                _ => elementwise(em, rp, ln, v, h)?,
            }
            stage_held(em, rp, ln, v)
        }
    }
}

/// Computes a [`Hold::Shared`] value into its slot, all threads, between
/// barriers (the previous iteration's readers are done; this one's wait).
fn shared<'ctx>(em: &mut Em<'ctx, '_>, stmts: &[&Stmt]) -> R<()> {
    em.barrier()?;
    for s in stmts {
        if let Some(v) = s.results.first().copied() {
            shared_values(em, s, v)?;
        }
    }
    em.barrier()?;
    // Reads after the barrier see the slots anew.
    em.memo.clear();
    Ok(())
}

/// Computes a [`Hold::Shared`] value into its slot, all threads (the
/// barriers around it are the caller's).
fn shared_values<'ctx>(em: &mut Em<'ctx, '_>, s: &Stmt, v: TValue) -> R<()> {
    let slot = em.slot_of(v)?;
    let ty = em.k.ty(v).clone();
    let n = super::numel(&ty.shape);
    let float = ty.dtype.is_float();
    match &s.op {
        TOp::Cumsum { x, axis, reverse, exclusive }
            if float && n.is_multiple_of(32) && n <= 1024 && ty.shape.get(*axis as usize) == Some(&n) =>
        {
            let line = Line { v, slot, len: n, axis: *axis as usize };
            warp_cumsum(em, line, *x, *reverse, *exclusive)?;
        }
        TOp::Cumsum { x, axis, reverse, exclusive } => {
            em.cumsum(slot, *x, &ty.shape, ty.dtype, *axis as usize, *reverse, *exclusive)?;
        }
        TOp::Reduce { func, x, axis }
            if n == 1 && float && matches!(func, ReduceFn::Sum | ReduceFn::Max | ReduceFn::Min | ReduceFn::Mean) =>
        {
            let len = super::numel(&em.k.ty(*x).shape);
            let line = Line { v, slot, len, axis: *axis as usize };
            warp_fold(em, line, *x, *func)?;
        }
        _ => {
            em.each(super::numel(&ty.shape), &mut |s, e| {
                let idx = s.delin(e, &ty.shape)?;
                let x = s.compute(v, &idx)?;
                let p = s.slot_ptr_at(slot, ty.dtype, &idx, &ty.shape)?;
                s.store_ptr(p, ty.dtype, x)
            })?;
        }
    }
    Ok(())
}

/// A [`Hold::Shared`] value computed along one line of `len` elements of
/// its operand (every other dimension 1), along `axis`.
#[derive(Clone, Copy)]
struct Line {
    v: TValue,
    slot: usize,
    len: u32,
    axis: usize,
}

impl Line {
    /// The index of element `e` of the line in a tile of `rank` dims.
    fn idx<'ctx>(&self, em: &Em<'ctx, '_>, rank: usize, e: IntValue<'ctx>) -> Vec<IntValue<'ctx>> {
        (0..rank).map(|d| if d == self.axis { e } else { em.i32c(0) }).collect()
    }
}

/// Runs `body` in the first warp only (lane = `tid`).
fn first_warp<'ctx>(em: &mut Em<'ctx, '_>, body: &mut dyn FnMut(&mut Em<'ctx, '_>) -> R<()>) -> R<()> {
    let inside = em.icmp(IntPredicate::ULT, em.tid, em.i32c(32))?;
    let (then, done) = (em.bb("warp0"), em.bb("warp0_done"));
    em.b.build_conditional_branch(inside, then, done)?;
    em.b.position_at_end(then);
    em.memo.clear();
    body(em)?;
    em.b.build_unconditional_branch(done)?;
    em.b.position_at_end(done);
    em.memo.clear();
    Ok(())
}

/// A `cumsum` along one line of `len` (a multiple of 32, ≤ 1024) elements
/// by the first warp: each lane scans `len / 32` neighbours, the lanes'
/// totals are scanned with `shfl.up` (five steps), and each lane adds the
/// sum of the lanes before it — instead of one thread walking the line
/// (a chunk's 64 decays were 64 dependent steps, each a load).
fn warp_cumsum<'ctx>(em: &mut Em<'ctx, '_>, line: Line, x: TValue, reverse: bool, exclusive: bool) -> R<()> {
    let ty = em.k.ty(line.v).clone();
    let rank = ty.shape.len();
    let per = line.len / 32;
    first_warp(em, &mut |em| {
        let lane = em.tid;
        let first = em.b.build_int_mul(lane, em.i32c(per as i64), "")?;
        let (mut run, mut xs, mut runs, mut at) = (em.f32c(0.0), vec![], vec![], vec![]);
        for j in 0..per {
            let s = em.b.build_int_add(first, em.i32c(j as i64), "")?;
            let e = if reverse { em.b.build_int_sub(em.i32c(line.len as i64 - 1), s, "")? } else { s };
            let idx = line.idx(em, rank, e);
            let xv = fv(em.elem(x, &idx)?)?;
            run = em.b.build_float_add(run, xv, "")?;
            xs.push(xv);
            runs.push(run);
            at.push(idx);
        }
        let mut total = run;
        for off in [1, 2, 4, 8, 16] {
            let up = shfl(em, total, Shfl::Up(off))?;
            let take = em.icmp(IntPredicate::UGE, lane, em.i32c(off))?;
            let add = em.b.build_select(take, up, em.f32c(0.0), "")?.into_float_value();
            total = em.b.build_float_add(total, add, "")?;
        }
        let before = em.b.build_float_sub(total, run, "")?;
        for ((xv, r), idx) in xs.iter().zip(&runs).zip(&at) {
            let incl = em.b.build_float_add(before, *r, "")?;
            let out = if exclusive { em.b.build_float_sub(incl, *xv, "")? } else { incl };
            let out = em.round_float(ty.dtype, out)?;
            let p = em.slot_ptr_at(line.slot, ty.dtype, idx, &ty.shape)?;
            em.store_ptr(p, ty.dtype, out.into())?;
        }
        Ok(())
    })
}

/// A reduction of one line of `len` elements to a single one by the first
/// warp: each lane folds every 32nd element, then butterfly shuffles.
fn warp_fold<'ctx>(em: &mut Em<'ctx, '_>, line: Line, x: TValue, func: ReduceFn) -> R<()> {
    let ty = em.k.ty(line.v).clone();
    let rank = em.k.ty(x).shape.len();
    let identity = fold_identity(func);
    let combine = |em: &mut Em<'ctx, '_>, a, b| fold_pair(em, func, a, b);
    first_warp(em, &mut |em| {
        let lane = em.tid;
        let mut acc = em.f32c(identity);
        for j in 0..line.len.div_ceil(32) {
            let e = em.b.build_int_add(lane, em.i32c(32 * j as i64), "")?;
            // Past the end: read element 0, fold the identity.
            let inside = em.icmp(IntPredicate::ULT, e, em.i32c(line.len as i64))?;
            let safe = em.b.build_select(inside, e, em.i32c(0), "")?.into_int_value();
            let idx = line.idx(em, rank, safe);
            let xv = fv(em.elem(x, &idx)?)?;
            let xv = em.b.build_select(inside, xv, em.f32c(identity), "")?.into_float_value();
            acc = combine(em, acc, xv)?;
        }
        for m in [16, 8, 4, 2, 1] {
            let o = shfl_bfly(em, acc, m)?;
            acc = combine(em, acc, o)?;
        }
        if func == ReduceFn::Mean {
            acc = em.b.build_float_div(acc, em.f32c(line.len.max(1) as f64), "")?;
        }
        let acc = em.round_float(ty.dtype, acc)?;
        let zero = vec![em.i32c(0); ty.shape.len()];
        let p = em.slot_ptr_at(line.slot, ty.dtype, &zero, &ty.shape)?;
        // Every lane holds the result; they store the same value.
        em.store_ptr(p, ty.dtype, acc.into())
    })
}

/// Copies held tile `v` into its stage as bf16 where it is a `dot`
/// operand: each lane its pairs of neighbouring columns, between barriers.
fn stage_held<'ctx>(em: &mut Em<'ctx, '_>, rp: &RowsPlan, ln: &Lanes<'ctx>, v: TValue) -> R<()> {
    let Some(st) = rp.stages.get(&v.0).copied() else { return Ok(()) };
    if hold_of(rp, v) != Hold::Frag {
        return Ok(());
    }
    let shape = em.k.ty(v).shape.clone();
    em.barrier()?;
    let pos = ln.positions(em, Hold::Frag, &shape)?;
    for pair in pos.chunks(2) {
        let [p0, p1] = pair else { return super::fail("an odd number of positions") };
        let x0 = fv(em.elem(v, p0)?)?;
        let x1 = fv(em.elem(v, p1)?)?;
        let packed = em.pack_bf16(x0, x1)?;
        let off = em.b.build_int_mul(p0[0], em.i32c(st.stride as i64), "")?;
        let off = em.b.build_int_add(off, em.b.build_int_mul(p0[1], em.i32c(2), "")?, "")?;
        let off = em.b.build_int_add(off, em.i32c(st.offset as i64), "")?;
        // SAFETY: the stage lies inside the shared array the plan sized.
        let p = unsafe { em.b.build_in_bounds_gep(em.cx.i8_type(), em.smem, &[off], "")? };
        em.b.build_store(p, packed)?.set_alignment(4).map_err(|e| align_err(&e))?;
    }
    em.barrier()
}

/// Computes held `v` at each of this lane's positions.
fn elementwise<'ctx>(em: &mut Em<'ctx, '_>, rp: &RowsPlan, ln: &Lanes<'ctx>, v: TValue, h: Hold) -> R<()> {
    let shape = em.k.ty(v).shape.clone();
    for pos in ln.positions(em, h, &shape)? {
        let x = em.compute(v, &pos)?;
        bind(em, rp, v, &pos, x);
    }
    Ok(())
}

/// `x = a − b` (f32) for an `exp(x)`: the online softmax's `exp(s − m)`.
fn exp_of_difference(em: &Em<'_, '_>, x: TValue) -> Option<(TValue, TValue)> {
    match em.defs.op(x) {
        Some(TOp::Binary(BinaryFn::Sub, a, b)) if em.k.ty(*a).dtype.is_float() && em.k.ty(x).dtype == DType::F32 => {
            Some((*a, *b))
        }
        _ => None,
    }
}

/// `exp(a − b)` as `2^(a·log2 e − b·log2 e)`: one FMA (LLVM computes the
/// row's `b·log2 e` once) and `ex2.approx`, as FlashAttention does, instead
/// of a subtraction, a multiplication and `ex2.approx` per element. Where
/// `a = x·c` (a scalar `c`: attention's scale) the FMA takes `x` and
/// `c·log2 e`, and the product itself is left unused.
#[allow(clippy::too_many_arguments)]
fn exp2_fused<'ctx>(
    em: &mut Em<'ctx, '_>,
    rp: &RowsPlan,
    ln: &Lanes<'ctx>,
    v: TValue,
    h: Hold,
    a: TValue,
    b: TValue,
) -> R<()> {
    let shape = em.k.ty(v).shape.clone();
    let log2e = em.f32c(std::f64::consts::LOG2_E);
    // `a = x·c` with a scalar f32 `c`: fold `c` into the FMA's factor.
    let (a, factor) = match em.defs.op(a) {
        Some(TOp::Binary(BinaryFn::Mul, x, c))
            if em.k.ty(*c).shape.is_empty() && em.k.ty(*c).dtype == DType::F32 && em.k.ty(*x).dtype == DType::F32 =>
        {
            let c = fv(em.scalar(*c)?)?;
            (*x, em.b.build_float_mul(c, log2e, "")?)
        }
        _ => (a, log2e),
    };
    let (sa, sb) = (em.k.ty(a).shape.clone(), em.k.ty(b).shape.clone());
    let f32t: BasicTypeEnum = em.cx.f32_type().into();
    let ex2 = em.func("llvm.nvvm.ex2.approx.ftz.f32", Some(f32t), &[f32t]);
    for pos in ln.positions(em, h, &shape)? {
        let (ia, ib) = (em.bidx(&sa, &pos)?, em.bidx(&sb, &pos)?);
        let xa = fv(em.elem(a, &ia)?)?;
        let xb = fv(em.elem(b, &ib)?)?;
        let nb = em.b.build_float_neg(em.b.build_float_mul(xb, log2e, "")?, "")?;
        let t = em.fma(xa, factor, nb)?;
        let Some(r) = em.call(ex2, &[t.into()])? else { return super::fail("ex2 returned nothing") };
        let r = em.round_float(em.k.ty(v).dtype, fv(r)?)?;
        bind(em, rp, v, &pos, r.into());
    }
    Ok(())
}

/// Where staged load `v` reads bf16 memory, its stage (at `at`, else its
/// place) holds exactly what it loads: its elementwise reads (simple GLA's
/// decayed keys) take the stage instead of memory.
fn read_from_stage<'ctx>(em: &mut Em<'ctx, '_>, rp: &RowsPlan, v: TValue, at: Option<IntValue<'ctx>>) -> R<()> {
    let Some(TOp::Load { ptr, .. }) = em.defs.op(v) else { return Ok(()) };
    let Some(st) = rp.stages.get(&v.0).copied() else { return Ok(()) };
    if em.param_dtype(ptr.index())? != DType::BF16 || st.raw.is_some() || em.k.ty(v).shape.len() != 2 {
        return Ok(());
    }
    let at = at.unwrap_or_else(|| em.i32c(st.offset as i64));
    em.staged.insert(v.0, (at, st.stride));
    Ok(())
}

/// Copies a load into its shared-memory stage as bf16, all threads, between barriers.
fn stage(em: &mut Em<'_, '_>, rp: &RowsPlan, v: TValue) -> R<()> {
    let Some(st) = rp.stages.get(&v.0).copied() else { return super::fail("a staged load without a stage") };
    let shape = em.k.ty(v).shape.clone();
    em.barrier()?;
    let bf = em.cx.bf16_type();
    em.each(shape[0] * shape[1], &mut |s, e| {
        let idx = s.delin(e, &shape)?;
        let x = fv(s.compute(v, &idx)?)?;
        let h = s.b.build_float_trunc(x, bf, "")?;
        let off = s.b.build_int_mul(idx[0], s.i32c(st.stride as i64), "")?;
        let off = s.b.build_int_add(off, s.b.build_int_mul(idx[1], s.i32c(2), "")?, "")?;
        let off = s.b.build_int_add(off, s.i32c(st.offset as i64), "")?;
        // SAFETY: the stage lies inside the shared array the plan sized.
        let p = unsafe { s.b.build_in_bounds_gep(s.cx.i8_type(), s.smem, &[off], "")? };
        s.b.build_store(p, h)?;
        Ok(())
    })?;
    em.barrier()
}

/// `ldmatrix .x4` (`.trans` when asked) at a shared byte offset.
fn ldmatrix<'ctx>(em: &mut Em<'ctx, '_>, off: IntValue<'ctx>, trans: bool) -> R<[IntValue<'ctx>; 4]> {
    let i32t: BasicTypeEnum = em.cx.i32_type().into();
    let ret = em.cx.struct_type(&[i32t; 4], false);
    let sptr: BasicTypeEnum = em.cx.ptr_type(AddressSpace::from(3u16)).into();
    let name = if trans {
        "llvm.nvvm.ldmatrix.sync.aligned.m8n8.x4.trans.b16.p3"
    } else {
        "llvm.nvvm.ldmatrix.sync.aligned.m8n8.x4.b16.p3"
    };
    let f = em.func(name, Some(ret.into()), &[sptr]);
    // SAFETY: offsets inside the stage the plan sized.
    let p = unsafe { em.b.build_in_bounds_gep(em.cx.i8_type(), em.smem, &[off], "")? };
    let Some(BasicValueEnum::StructValue(sv)) = em.call(f, &[p.into()])? else {
        return super::fail("ldmatrix returned no struct");
    };
    let mut out = [em.i32c(0); 4];
    for (i, o) in out.iter_mut().enumerate() {
        *o = iv(em.b.build_extract_value(sv, i as u32, "")?)?;
    }
    Ok(out)
}

/// A `dot`'s operands.
#[derive(Clone, Copy)]
struct Operands {
    a: TValue,
    b: TValue,
    acc: Option<TValue>,
    trans_a: bool,
    trans_b: bool,
}

/// The shared byte offset a staged operand is read from now: the current
/// buffer of a pipelined stage, else the stage.
fn stage_at<'ctx>(em: &Em<'ctx, '_>, ln: &Lanes<'ctx>, v: TValue, st: &Stage) -> IntValue<'ctx> {
    ln.stage_base.borrow().get(&v.0).copied().unwrap_or_else(|| em.i32c(st.offset as i64))
}

fn dot<'ctx>(em: &mut Em<'ctx, '_>, rp: &RowsPlan, ln: &Lanes<'ctx>, v: TValue, o: Operands) -> R<()> {
    let Operands { a, b, acc, trans_a, trans_b } = o;
    let Some(st) = rp.stages.get(&b.0).copied() else { return super::fail("the right operand is not staged") };
    let [mrows, n] = em.k.ty(v).shape[..] else { return super::fail("a dot result that is not 2-D") };
    let kdim = if trans_a { em.k.ty(a).shape[0] } else { em.k.ty(a).shape[1] };
    let tiles = (mrows / rp.unit()) as usize;
    let rows = ln.rows_of(mrows)?.to_vec();
    let pos = ln.positions(em, Hold::Frag, &[mrows, n])?;
    let mut accs: Vec<FloatValue<'ctx>> = Vec::with_capacity(pos.len());
    for p in &pos {
        accs.push(match acc {
            Some(c) => fv(em.elem(c, p)?)?,
            None => em.f32c(0.0),
        });
    }
    // This lane's row address within an `ldmatrix` phase: lanes 8q..8q+8
    // address matrix q's rows.
    let b_ = &em.b;
    let lr = b_.build_and(ln.lane, em.i32c(7), "")?;
    let q = b_.build_right_shift(ln.lane, em.i32c(3), false, "")?;
    let q_lo = b_.build_and(q, em.i32c(1), "")?;
    let q_hi = b_.build_right_shift(q, em.i32c(1), false, "")?;
    // trans_b: the stage holds B transposed ([N, K]): matrices (n, k lo),
    // (n, k hi), (n + 8, k lo), (n + 8, k hi). Otherwise ([K, N]): (k lo, n),
    // (k hi, n), (k lo, n + 8), (k hi, n + 8), read transposed.
    let (row_sel, col_sel) = if trans_b { (q_hi, q_lo) } else { (q_lo, q_hi) };
    let row = b_.build_int_add(lr, b_.build_int_mul(row_sel, em.i32c(8), "")?, "")?;
    let col = b_.build_int_mul(col_sel, em.i32c(8), "")?;
    let base = b_.build_int_mul(row, em.i32c(st.stride as i64), "")?;
    let base = b_.build_int_add(base, b_.build_int_mul(col, em.i32c(2), "")?, "")?;
    let base = em.b.build_int_add(base, stage_at(em, ln, b, &st), "")?;
    // A staged left operand, the matrices of each of the warp's `m16` tiles
    // (its first row `r0`): untransposed ([M, K]), (rows lo, k lo), (rows hi,
    // k lo), (rows lo, k hi), (rows hi, k hi); transposed (the stage holds
    // [K, M]), the same matrices read transposed: (k lo, r0), (k lo, r0 + 8),
    // (k hi, r0), (k hi, r0 + 8). Each k step moves 16 columns (32 bytes)
    // or 16 rows of the stage.
    let staged_a = matches!(hold_of(rp, a), Hold::StagedA | Hold::Staged) || trans_a;
    let a_bases = match (staged_a, rp.stages.get(&a.0)) {
        (true, Some(sa)) => {
            let r0 = em.b.build_int_mul(ln.warp, em.i32c(16 * tiles as i64), "")?;
            let (srow, scol) = if trans_a {
                let srow = em.b.build_int_add(lr, em.b.build_int_mul(q_hi, em.i32c(8), "")?, "")?;
                let scol = em.b.build_int_add(r0, em.b.build_int_mul(q_lo, em.i32c(8), "")?, "")?;
                (srow, scol)
            } else {
                let srow = em.b.build_int_add(r0, lr, "")?;
                let srow = em.b.build_int_add(srow, em.b.build_int_mul(q_lo, em.i32c(8), "")?, "")?;
                (srow, em.b.build_int_mul(q_hi, em.i32c(8), "")?)
            };
            let at = em.b.build_int_mul(srow, em.i32c(sa.stride as i64), "")?;
            let at = em.b.build_int_add(at, em.b.build_int_mul(scol, em.i32c(2), "")?, "")?;
            let at = em.b.build_int_add(at, stage_at(em, ln, a, sa), "")?;
            let mut bases = vec![at];
            for i in 1..tiles as u32 {
                let step = if trans_a { 32 * i } else { 16 * i * sa.stride };
                bases.push(em.b.build_int_add(at, em.i32c(step as i64), "")?);
            }
            Some((bases, sa.stride))
        }
        (true, None) => return super::fail("a staged left operand without a stage"),
        _ => None,
    };
    for kk in 0..(kdim / 16) as usize {
        let (Some(lo), Some(hi)) = (ln.cols.get(2 * kk), ln.cols.get(2 * kk + 1)) else {
            return super::fail("a left operand wider than planned");
        };
        // The left fragments of each `m16` tile.
        let mut afr: Vec<Vec<IntValue<'ctx>>> = vec![vec![]; tiles];
        for (i, frag) in afr.iter_mut().enumerate() {
            if let Some((bases, stride)) = &a_bases {
                let step = if trans_a { 16 * kk as u32 * stride } else { 32 * kk as u32 };
                let off = em.b.build_int_add(bases[i], em.i32c(step as i64), "")?;
                frag.extend(ldmatrix(em, off, trans_a)?);
                continue;
            }
            for cols in [lo, hi] {
                for r in &rows[2 * i..2 * i + 2] {
                    if hold_of(rp, a) == Hold::PackedA {
                        match em.held.get(&super::elem_key(a, &[*r, cols[0]])) {
                            Some(x) => frag.push(iv(*x)?),
                            None => return super::fail("a packed left operand is missing a pair"),
                        }
                        continue;
                    }
                    let x0 = fv(em.elem(a, &[*r, cols[0]])?)?;
                    let x1 = fv(em.elem(a, &[*r, cols[1]])?)?;
                    frag.push(em.pack_bf16(x0, x1)?);
                }
            }
        }
        // Each right fragment pair, read once, serves every `m16` tile; a
        // tile's accumulators of n-tile `nt` are `4 · (tiles · nt + i) ..`.
        for np in 0..(n / 16) as usize {
            let (r_step, c_step) = if trans_b { (16 * np, 16 * kk) } else { (16 * kk, 16 * np) };
            let off = (r_step as u32 * st.stride + c_step as u32 * 2) as i64;
            let off = em.b.build_int_add(base, em.i32c(off), "")?;
            let d = ldmatrix(em, off, !trans_b)?;
            for (half, nt) in [(0usize, 2 * np), (1, 2 * np + 1)] {
                for (i, frag) in afr.iter().enumerate() {
                    let at = 4 * (tiles * nt + i);
                    let c = [accs[at], accs[at + 1], accs[at + 2], accs[at + 3]];
                    let c = em.mma_bf16(frag, &[d[2 * half], d[2 * half + 1]], c)?;
                    accs[at..at + 4].copy_from_slice(&c);
                }
            }
        }
    }
    for (p, x) in pos.iter().zip(accs) {
        bind(em, rp, v, p, x.into());
    }
    Ok(())
}

/// Where a lane's `shfl.sync` reads from.
#[derive(Clone, Copy)]
enum Shfl {
    /// The lane `lane ^ mask`.
    Bfly(i64),
    /// The lane `lane − delta` (itself below `delta`).
    Up(i64),
}

fn shfl<'ctx>(em: &mut Em<'ctx, '_>, x: FloatValue<'ctx>, how: Shfl) -> R<FloatValue<'ctx>> {
    let i32t: BasicTypeEnum = em.cx.i32_type().into();
    let f32t: BasicTypeEnum = em.cx.f32_type().into();
    // The last operand packs the clamp: 31 for a butterfly, 0 for `up`.
    let (name, by, clamp) = match how {
        Shfl::Bfly(mask) => ("llvm.nvvm.shfl.sync.bfly.f32", mask, 31),
        Shfl::Up(delta) => ("llvm.nvvm.shfl.sync.up.f32", delta, 0),
    };
    let f = em.func(name, Some(f32t), &[i32t, f32t, i32t, i32t]);
    let args = [em.i32c(-1).into(), x.into(), em.i32c(by).into(), em.i32c(clamp).into()];
    match em.call(f, &args)? {
        Some(v) => fv(v),
        None => super::fail("shfl returned nothing"),
    }
}

fn shfl_bfly<'ctx>(em: &mut Em<'ctx, '_>, x: FloatValue<'ctx>, mask: i64) -> R<FloatValue<'ctx>> {
    shfl(em, x, Shfl::Bfly(mask))
}

/// The value a fold by `func` starts from.
fn fold_identity(func: ReduceFn) -> f64 {
    match func {
        ReduceFn::Max => f64::NEG_INFINITY,
        ReduceFn::Min => f64::INFINITY,
        _ => 0.0,
    }
}

/// One step of a fold by `func` (sum, mean's sum, max or min).
fn fold_pair<'ctx>(
    em: &mut Em<'ctx, '_>,
    func: ReduceFn,
    a: FloatValue<'ctx>,
    b: FloatValue<'ctx>,
) -> R<FloatValue<'ctx>> {
    match func {
        ReduceFn::Max => em.call_f("llvm.maxnum.f32", &[a, b]),
        ReduceFn::Min => em.call_f("llvm.minnum.f32", &[a, b]),
        _ => Ok(em.b.build_float_add(a, b, "")?),
    }
}

/// A reduction of an `[M, N]` tile along its columns: each lane folds its
/// elements, then the four lanes of each row combine theirs.
fn reduce<'ctx>(em: &mut Em<'ctx, '_>, ln: &Lanes<'ctx>, v: TValue, func: ReduceFn, x: TValue) -> R<()> {
    let n = em.k.ty(x).shape[1];
    let d = em.k.ty(v).dtype;
    let combine = |em: &mut Em<'ctx, '_>, a, b| fold_pair(em, func, a, b);
    let rows = ln.rows_of(em.k.ty(x).shape[0])?.to_vec();
    for r in rows {
        let mut acc = em.f32c(fold_identity(func));
        for j in 0..(n / 8) as usize {
            let Some(cj) = ln.cols.get(j).copied() else { return super::fail("a tile wider than planned") };
            for c in cj {
                let e = fv(em.elem(x, &[r, c])?)?;
                acc = combine(em, acc, e)?;
            }
        }
        for m in [1, 2] {
            let o = shfl_bfly(em, acc, m)?;
            acc = combine(em, acc, o)?;
        }
        if func == ReduceFn::Mean {
            acc = em.b.build_float_div(acc, em.f32c(n.max(1) as f64), "")?;
        }
        let acc = em.round_float(d, acc)?;
        em.held.insert(super::elem_key(v, &[r]), acc.into());
    }
    Ok(())
}

/// `v = a · b` of `[M, K] × [K, 1]` held as rows: each lane folds its
/// columns of its rows (the vector read where needed), then the four lanes
/// of each row add theirs.
fn matvec<'ctx>(em: &mut Em<'ctx, '_>, ln: &Lanes<'ctx>, v: TValue, a: TValue, b: TValue) -> R<()> {
    let sa = em.k.ty(a).shape.clone();
    let d = em.k.ty(v).dtype;
    let zero = em.i32c(0);
    let rows = ln.rows_of(sa[0])?.to_vec();
    for r in rows {
        em.memo.clear();
        let mut acc = em.f32c(0.0);
        for j in 0..(sa[1] / 8) as usize {
            let Some(cj) = ln.cols.get(j).copied() else { return super::fail("a tile wider than planned") };
            for c in cj {
                let x = fv(em.elem(a, &[r, c])?)?;
                let y = fv(em.elem(b, &[c, zero])?)?;
                acc = em.call_f("llvm.fma.f32", &[x, y, acc])?;
            }
        }
        for m in [1, 2] {
            let o = shfl_bfly(em, acc, m)?;
            acc = em.b.build_float_add(acc, o, "")?;
        }
        let acc = em.round_float(d, acc)?;
        em.held.insert(super::elem_key(v, &[r, zero]), acc.into());
    }
    Ok(())
}

fn store<'ctx>(em: &mut Em<'ctx, '_>, rp: &RowsPlan, ln: &Lanes<'ctx>, s: &Stmt) -> R<()> {
    let TOp::Store { ptr, value, .. } = &s.op else { return Ok(()) };
    let vt = em.k.ty(*value).clone();
    let pd = em.param_dtype(ptr.index())?;
    let held_shape = vt.shape.is_empty()
        || (vt.shape.len() == 2 && ln.rows.contains_key(&vt.shape[0]))
        || (vt.shape.len() == 1 && ln.rows.contains_key(&vt.shape[0]));
    if hold_of(rp, *value) == Hold::Shared || !held_shape {
        // Readable anywhere: every element once, by all threads.
        return em.each(super::numel(&vt.shape), &mut |em, e| {
            let idx = em.delin(e, &vt.shape)?;
            store_one(em, s, &idx, vt.dtype, pd)
        });
    }
    let h = if vt.shape.is_empty() {
        Hold::Scalar
    } else if vt.shape.len() == 2 && vt.shape[1] != 1 {
        Hold::Frag
    } else {
        Hold::Rows
    };
    // A scalar is stored by thread 0; a row statistic by the first lane of each row.
    let only = match h {
        Hold::Scalar => Some(em.icmp(IntPredicate::EQ, em.tid, em.i32c(0))?),
        Hold::Rows => Some(em.icmp(IntPredicate::EQ, ln.t, em.i32c(0))?),
        _ => None,
    };
    let done = match only {
        Some(c) => {
            let (st, done) = (em.bb("st_some"), em.bb("st_some_done"));
            em.b.build_conditional_branch(c, st, done)?;
            em.b.position_at_end(st);
            em.memo.clear();
            Some(done)
        }
        None => None,
    };
    for idx in ln.positions(em, h, &vt.shape)? {
        store_one(em, s, &idx, vt.dtype, pd)?;
    }
    if let Some(done) = done {
        em.b.build_unconditional_branch(done)?;
        em.b.position_at_end(done);
        em.memo.clear();
    }
    Ok(())
}

/// Stores element `idx` of store `s`'s value (of `vd`) to its buffer (of `pd`).
fn store_one<'ctx>(em: &mut Em<'ctx, '_>, s: &Stmt, idx: &[IntValue<'ctx>], vd: DType, pd: DType) -> R<()> {
    let TOp::Store { ptr, offsets, value, mask } = &s.op else { return Ok(()) };
    let off = iv(em.elem(*offsets, idx)?)?;
    let x = em.elem(*value, idx)?;
    let x = em.convert(x, vd, pd)?;
    let x: BasicValueEnum =
        if pd == DType::Bool { em.b.build_int_z_extend(iv(x)?, em.cx.i32_type(), "")?.into() } else { x };
    let x = em.narrow_stored(pd, x)?;
    let (addr, _) = em.gaddr(ptr.index(), off)?;
    let m = match mask {
        Some(m) => Some(iv(em.elem(*m, idx)?)?),
        None => None,
    };
    em.store_where(addr, x, m)
}

fn for_<'ctx>(em: &mut Em<'ctx, '_>, rp: &RowsPlan, ln: &Lanes<'ctx>, s: &Stmt) -> R<()> {
    let TOp::For { lo, hi, step, init, body } = &s.op else { return Ok(()) };
    let k = em.k;
    let carried: Vec<TValue> = body.args.iter().skip(1).copied().collect();
    if carried.len() != init.len() || body.yields.len() != init.len() || s.results.len() != init.len() {
        return super::fail("a loop whose carried values do not match");
    }
    let mut places = vec![];
    for a in &carried {
        // A carried value in a shared-memory slot is no phi.
        places.push(match hold_of(rp, *a) {
            Hold::Shared => vec![],
            h => ln.positions(em, h, &k.ty(*a).shape)?,
        });
    }
    let mut inits: Vec<BasicValueEnum<'ctx>> = vec![];
    for (x, ps) in init.iter().zip(&places) {
        for p in ps {
            inits.push(em.elem(*x, p)?);
        }
    }
    let in_slots: Vec<(TValue, TValue)> =
        carried.iter().zip(init).filter(|(a, _)| hold_of(rp, **a) == Hold::Shared).map(|(a, x)| (*a, *x)).collect();
    if !in_slots.is_empty() {
        em.barrier()?;
        for (a, x) in &in_slots {
            fill_slot(em, *a, *x, em.slot_of(*a)?)?;
        }
        em.barrier()?;
        em.memo.clear();
    }
    let (lo, hi, step) = (iv(em.scalar(*lo)?)?, iv(em.scalar(*hi)?)?, iv(em.scalar(*step)?)?);
    let positive = em.icmp(IntPredicate::SGT, step, em.i32c(0))?;
    let Some(iv0) = body.args.first().copied() else { return super::fail("a loop without its variable") };
    // Pipelined stages: the first iteration's copies before the loop, into
    // buffer 0; each iteration copies the next one's into the other buffer,
    // then waits for its own (the parity is carried after the tiles).
    let pipes = rp.pipelined.get(&iv0.0).cloned().unwrap_or_default();
    if !pipes.is_empty() {
        // An earlier loop's stages may share these buffers: every warp is
        // done reading them before the first copies land.
        em.barrier()?;
        let valid = em.b.build_and(em.icmp(IntPredicate::SLT, lo, hi)?, positive, "")?;
        for v in &pipes {
            prefetch(em, rp, *v, iv0, lo, valid, em.i32c(0))?;
        }
        call_void(em, "llvm.nvvm.cp.async.commit.group", &[])?;
        inits.push(em.i32c(0).into());
    }
    let out = em.counted(lo, hi, step, Some(positive), &inits, &mut |em, ivv, vals| {
        em.set(iv0, ivv.into());
        let mut i = 0;
        for (a, ps) in carried.iter().zip(&places) {
            for p in ps {
                let Some(x) = vals.get(i) else { return super::fail("a carried value is missing") };
                bind(em, rp, *a, p, *x);
                i += 1;
            }
        }
        let mut parity = None;
        if !pipes.is_empty() {
            let Some(par) = vals.get(i).copied() else { return super::fail("the buffer parity is missing") };
            let par = iv(par)?;
            let next = em.b.build_int_add(ivv, step, "")?;
            let valid = em.icmp(IntPredicate::SLT, next, hi)?;
            let other = em.b.build_int_sub(em.i32c(1), par, "")?;
            for v in &pipes {
                prefetch(em, rp, *v, iv0, next, valid, other)?;
            }
            em.set(iv0, ivv.into());
            em.memo.clear();
            call_void(em, "llvm.nvvm.cp.async.commit.group", &[])?;
            call_void(em, "llvm.nvvm.cp.async.wait.group", &[em.i32c(1).into()])?;
            em.barrier()?;
            let mut widened = false;
            for v in &pipes {
                let Some(st) = rp.stages.get(&v.0).copied() else {
                    return super::fail("a pipelined load without a stage");
                };
                if let Some(raw) = st.raw {
                    round_into_stage(em, v, st, raw, par)?;
                    widened = true;
                    continue;
                }
                let shift = em.b.build_int_mul(par, em.i32c(st.bytes as i64), "")?;
                let at = em.b.build_int_add(shift, em.i32c(st.offset as i64), "")?;
                ln.stage_base.borrow_mut().insert(v.0, at);
                read_from_stage(em, rp, *v, Some(at))?;
            }
            if widened {
                em.barrier()?;
            }
            parity = Some(other);
        }
        for a in &carried {
            stage_held(em, rp, ln, *a)?;
        }
        block(em, rp, ln, body)?;
        let mut next = vec![];
        for (y, ps) in body.yields.iter().zip(&places) {
            for p in ps {
                next.push(em.elem(*y, p)?);
            }
        }
        // Carried slots: the next values into their second slots, then, once
        // every thread is done reading this iteration's, copied over them.
        let mut moved = vec![];
        for (a, y) in carried.iter().zip(&body.yields) {
            if hold_of(rp, *a) == Hold::Shared && a != y {
                let slot = next_slot(rp, *a)?;
                fill_slot(em, *a, *y, slot)?;
                moved.push((*a, slot));
            }
        }
        if !moved.is_empty() {
            em.barrier()?;
            em.memo.clear();
            for (a, from) in &moved {
                copy_slot(em, *a, *from)?;
            }
            em.barrier()?;
            em.memo.clear();
        }
        if let Some(p) = parity {
            // Every warp is done with this iteration's buffers before the
            // next iteration copies into them.
            em.barrier()?;
            next.push(p.into());
        }
        Ok(next)
    })?;
    if !pipes.is_empty() {
        // Every copy has landed (an iteration-less loop's zero fills
        // included) before a later loop reuses the buffers.
        call_void(em, "llvm.nvvm.cp.async.wait.all", &[])?;
        em.barrier()?;
        for v in &pipes {
            ln.stage_base.borrow_mut().remove(&v.0);
            em.staged.remove(&v.0);
        }
    }
    let mut i = 0;
    for (r, ps) in s.results.iter().zip(&places) {
        for p in ps {
            let Some(x) = out.get(i) else { return super::fail("a loop result is missing") };
            bind(em, rp, *r, p, *x);
            i += 1;
        }
    }
    for r in &s.results {
        stage_held(em, rp, ln, *r)?;
    }
    Ok(())
}

/// The slot a carried [`Hold::Shared`] value's next value is written to.
fn next_slot(rp: &RowsPlan, a: TValue) -> R<usize> {
    match rp.carried_next.get(&a.0) {
        Some(s) => Ok(*s),
        None => super::fail(format!("carried %{} has no slot for its next value", a.0)),
    }
}

/// Writes `x` (readable anywhere) into `slot`, laid out as `like`, by all threads.
fn fill_slot<'ctx>(em: &mut Em<'ctx, '_>, like: TValue, x: TValue, slot: usize) -> R<()> {
    let ty = em.k.ty(like).clone();
    em.each(super::numel(&ty.shape), &mut |s, e| {
        let idx = s.delin(e, &ty.shape)?;
        let val = s.elem(x, &idx)?;
        let p = s.slot_ptr_at(slot, ty.dtype, &idx, &ty.shape)?;
        s.store_ptr(p, ty.dtype, val)
    })
}

/// Copies slot `from` over carried `a`'s slot, by all threads.
fn copy_slot<'ctx>(em: &mut Em<'ctx, '_>, a: TValue, from: usize) -> R<()> {
    let ty = em.k.ty(a).clone();
    let to = em.slot_of(a)?;
    em.each(super::numel(&ty.shape), &mut |s, e| {
        let idx = s.delin(e, &ty.shape)?;
        let src = s.slot_ptr_at(from, ty.dtype, &idx, &ty.shape)?;
        let val = s.load_ptr(src, ty.dtype)?;
        let dst = s.slot_ptr_at(to, ty.dtype, &idx, &ty.shape)?;
        s.store_ptr(dst, ty.dtype, val)
    })
}

fn call_void<'ctx>(em: &mut Em<'ctx, '_>, name: &str, args: &[BasicValueEnum<'ctx>]) -> R<()> {
    let tys: Vec<BasicTypeEnum> = args.iter().map(|a| a.get_type()).collect();
    let f = em.func(name, None, &tys);
    em.call(f, args)?;
    Ok(())
}

/// Issues the `cp.async` copies of pipelined stage `v` for the iteration
/// whose induction variable (`iv`) is `at` into buffer `buf` (0 or 1);
/// nothing is read where `valid` is false or the load's mask is off (the
/// bytes are zero-filled).
#[allow(clippy::too_many_arguments)]
fn prefetch<'ctx>(
    em: &mut Em<'ctx, '_>,
    rp: &RowsPlan,
    v: TValue,
    iv_value: TValue,
    at: IntValue<'ctx>,
    valid: IntValue<'ctx>,
    buf: IntValue<'ctx>,
) -> R<()> {
    let Some(st) = rp.stages.get(&v.0).copied() else { return super::fail("a pipelined load without a stage") };
    let Some(TOp::Load { ptr, offsets, mask, .. }) = em.defs.op(v) else {
        return super::fail("a pipelined stage that is not a load");
    };
    let (ptr, offsets, mask) = (ptr.index(), *offsets, *mask);
    let shape = em.k.ty(v).shape.clone();
    let vec = st.vec();
    let per_row = shape[1] / vec;
    // Where the copies land: the raw f32 buffers, or the stage itself.
    let (dst_at, dst_bytes, dst_stride, esize) = match st.raw {
        Some(r) => (r.offset, r.bytes, shape[1] * 4, 4),
        None => (st.offset, st.bytes, st.stride, 2),
    };
    let saved = em.regs.get(iv_value.index()).copied().flatten();
    em.set(iv_value, at.into());
    em.memo.clear();
    // The scalars the addresses read, for iteration `at` (before the loop,
    // those of its body have no value yet).
    let mut scalars = vec![];
    scalars_read(em, rp, offsets, &mut scalars);
    if let Some(m) = mask {
        scalars_read(em, rp, m, &mut scalars);
    }
    let kept: Vec<_> = scalars.iter().map(|x| em.regs.get(x.index()).copied().flatten()).collect();
    for x in &scalars {
        let value = em.compute(*x, &[])?;
        em.set(*x, value);
    }
    let i32t: BasicTypeEnum = em.cx.i32_type().into();
    let sptr: BasicTypeEnum = em.cx.ptr_type(AddressSpace::from(3u16)).into();
    let gptr: BasicTypeEnum = em.cx.ptr_type(AddressSpace::from(1u16)).into();
    let cp = em.func("llvm.nvvm.cp.async.cg.shared.global.16.s", None, &[sptr, gptr, i32t]);
    let base = em.b.build_int_mul(buf, em.i32c(dst_bytes as i64), "")?;
    let base = em.b.build_int_add(base, em.i32c(dst_at as i64), "")?;
    em.each(shape[0] * per_row, &mut |s, e| {
        let row = s.b.build_int_unsigned_div(e, s.i32c(per_row as i64), "")?;
        let chunk = s.b.build_int_unsigned_rem(e, s.i32c(per_row as i64), "")?;
        let col = s.b.build_int_mul(chunk, s.i32c(vec as i64), "")?;
        let idx = [row, col];
        let mut ok = valid;
        if let Some(m) = mask {
            let mv = iv(s.elem(m, &idx)?)?;
            ok = s.b.build_and(ok, mv, "")?;
        }
        let off = iv(s.elem(offsets, &idx)?)?;
        let off = iv(s.select(ok, off.into(), s.i32c(0).into())?)?;
        let (src, _) = s.gaddr(ptr, off)?;
        let size = iv(s.select(ok, s.i32c(16).into(), s.i32c(0).into())?)?;
        let dst = s.b.build_int_mul(row, s.i32c(dst_stride as i64), "")?;
        let dst = s.b.build_int_add(dst, s.b.build_int_mul(col, s.i32c(esize), "")?, "")?;
        let dst = s.b.build_int_add(dst, base, "")?;
        // SAFETY: inside the stage's buffer the plan sized.
        let p = unsafe { s.b.build_in_bounds_gep(s.cx.i8_type(), s.smem, &[dst], "")? };
        s.call(cp, &[p.into(), src.into(), size.into()])?;
        Ok(())
    })?;
    if let Some(r) = em.regs.get_mut(iv_value.index()) {
        *r = saved;
    }
    for (x, old) in scalars.iter().zip(kept) {
        if let Some(r) = em.regs.get_mut(x.index()) {
            *r = old;
        }
    }
    em.memo.clear();
    Ok(())
}

/// Rounds raw buffer `buf` of a widened pipelined stage (f32 rows) into
/// its bf16 stage, 8 elements a thread at a time (two 16-byte shared loads,
/// one 16-byte store).
fn round_into_stage<'ctx>(em: &mut Em<'ctx, '_>, v: &TValue, st: Stage, raw: Raw, buf: IntValue<'ctx>) -> R<()> {
    let shape = em.k.ty(*v).shape.clone();
    let per_row = shape[1] / 8;
    let f8 = em.cx.f32_type().vec_type(8);
    let b8 = em.cx.bf16_type().vec_type(8);
    let src0 = em.b.build_int_mul(buf, em.i32c(raw.bytes as i64), "")?;
    let src0 = em.b.build_int_add(src0, em.i32c(raw.offset as i64), "")?;
    em.each(shape[0] * per_row, &mut |s, e| {
        let row = s.b.build_int_unsigned_div(e, s.i32c(per_row as i64), "")?;
        let col = s.b.build_int_mul(s.b.build_int_unsigned_rem(e, s.i32c(per_row as i64), "")?, s.i32c(8), "")?;
        let src = s.b.build_int_mul(row, s.i32c((shape[1] * 4) as i64), "")?;
        let src = s.b.build_int_add(src, s.b.build_int_mul(col, s.i32c(4), "")?, "")?;
        let src = s.b.build_int_add(src, src0, "")?;
        let dst = s.b.build_int_mul(row, s.i32c(st.stride as i64), "")?;
        let dst = s.b.build_int_add(dst, s.b.build_int_mul(col, s.i32c(2), "")?, "")?;
        let dst = s.b.build_int_add(dst, s.i32c(st.offset as i64), "")?;
        // SAFETY: both inside the buffers the plan sized.
        let (ps, pd) = unsafe {
            (
                s.b.build_in_bounds_gep(s.cx.i8_type(), s.smem, &[src], "")?,
                s.b.build_in_bounds_gep(s.cx.i8_type(), s.smem, &[dst], "")?,
            )
        };
        let x = s.b.build_load(f8, ps, "")?.into_vector_value();
        if let Some(i) = x.as_instruction() {
            i.set_alignment(16).map_err(|e| align_err(&e))?;
        }
        let h = s.b.build_float_trunc(x, b8, "")?;
        s.b.build_store(pd, h)?.set_alignment(16).map_err(|e| align_err(&e))?;
        Ok(())
    })
}

fn align_err(e: &dyn std::fmt::Display) -> super::PtxError {
    super::PtxError::Op { kernel: String::new(), op: String::new(), msg: format!("setting an alignment: {e}") }
}
