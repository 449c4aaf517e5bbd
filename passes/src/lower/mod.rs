//! Lowering: a verified mixer graph and a schedule become a tile program.
//!
//! Every graph value gets a row-major buffer (inputs and outputs are the
//! caller's; the rest are scratch between kernels). Each op becomes one or
//! more kernels through a recipe: chunked recurrences (`recurrence`, `delta`),
//! flash attention (`attention`), and simple kernels for everything else
//! (`generic`). Under `Schedule::fuse_conv`, short causal convolutions feeding
//! a recurrence are computed in the recurrence's kernels (`conv_prologue`),
//! and the ops that leaves without a use are not lowered. Activation inputs
//! and outputs take the schedule's storage dtype (`storage`); recipes declare
//! f32 pointers, and each launch gives its pointers its buffers' dtypes.

mod attention;
mod conv_prologue;
mod delta;
mod generic;
mod recurrence;
pub mod storage;
pub mod util;

use crate::schedule::Schedule;
use mixc_ir::dims::DimId;
use mixc_ir::graph::{Graph, OpNode, ValueId};
use mixc_ir::ops::OpKind;
use mixc_ir::tile::{Arg, BufferRole, Count, Kernel, Launch, ParamKind, Program, TileError};
use mixc_ir::DType;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LowerError {
    #[error("lowering `{op}` (result `%{value}`): {msg}")]
    Op { op: String, value: String, msg: String },
    #[error("invalid schedule: {0}")]
    Schedule(String),
    #[error(transparent)]
    Tile(#[from] TileError),
}

/// The state of lowering one graph.
pub struct Lowering<'g> {
    pub g: &'g Graph,
    pub sched: Schedule,
    pub prog: Program,
    buf_of: Vec<Option<usize>>,
    /// Per value: the dtype of its buffer (see `storage`).
    dtype_of: Vec<DType>,
    /// Per value: computed on chip by the recurrences that read it (see `conv_prologue`).
    fused: Vec<Option<conv_prologue::ConvPrologue>>,
    /// Per value: the op computing it, where that op is elementwise and is
    /// computed inside the kernel of its one elementwise consumer instead of
    /// a kernel of its own (see `generic::inline_plan`).
    inline: Vec<Option<usize>>,
    /// Per op: computed by the kernel of the op that produces its operand (a
    /// row norm's weight, see `generic::rows`), so not lowered on its own.
    absorbed: Vec<bool>,
}

impl<'g> Lowering<'g> {
    /// Declares the input buffer of graph input `v` (once: a kernel that
    /// reads an input declared later in the graph declares it first).
    pub fn input_buffer(&mut self, v: ValueId) {
        if self.buf_of.get(v.index()).copied().flatten().is_some() {
            return;
        }
        let OpKind::Input { name, shape, optional, .. } = &self.g.op(self.g.value(v).op).kind else { return };
        let dtype = self.dtype_of[v.index()];
        let shape = shape.iter().map(|d| Count::Dim(*d)).collect();
        let role = BufferRole::Input { name: name.clone(), optional: *optional };
        let b = self.prog.add_buffer(name, dtype, shape, role);
        if let Some(slot) = self.buf_of.get_mut(v.index()) {
            *slot = Some(b);
        }
    }

    /// Marks op `i` as computed inside another op's kernel.
    pub fn absorb(&mut self, i: usize) {
        if let Some(a) = self.absorbed.get_mut(i) {
            *a = true;
        }
    }

    /// The buffer holding value `v` (made as scratch on first use).
    pub fn buffer(&mut self, v: ValueId) -> usize {
        if let Some(Some(b)) = self.buf_of.get(v.index()) {
            return *b;
        }
        let val = self.g.value(v);
        let dtype = self.dtype_of.get(v.index()).copied().unwrap_or(DType::F32);
        let shape = val.ty.shape.iter().map(|d| Count::Dim(*d)).collect();
        let b = self.prog.add_buffer(&val.name, dtype, shape, BufferRole::Temp);
        if let Some(slot) = self.buf_of.get_mut(v.index()) {
            *slot = Some(b);
        }
        b
    }

    /// The op that computes `v` inside its consumer's kernel, if one does.
    pub fn inlined(&self, v: ValueId) -> Option<&'g OpNode> {
        let g = self.g;
        self.inline.get(v.index()).copied().flatten().and_then(|i| g.ops.get(i))
    }

    /// How a recurrence computes operand `v` on chip, if it does.
    fn fused_operand(&self, v: ValueId) -> Option<conv_prologue::ConvPrologue> {
        self.fused.get(v.index()).cloned().flatten()
    }

    /// A scratch buffer that no graph value owns.
    pub fn scratch(&mut self, name: &str, shape: Vec<Count>) -> usize {
        self.prog.add_buffer(name, DType::F32, shape, BufferRole::Temp)
    }

    /// The constant size of a dim, if it has one.
    pub fn const_dim(&self, d: DimId) -> Option<u64> {
        self.g.dims.const_size(d)
    }

    /// Row-major strides of a value's buffer, as counts.
    pub fn strides(&self, v: ValueId) -> Vec<Count> {
        let shape = &self.g.ty(v).shape;
        let mut out = vec![Count::Const(1); shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            out[i] = Count::times(out[i + 1].clone(), Count::Dim(shape[i + 1]));
        }
        out
    }

    /// Total element count of a value.
    pub fn numel(&self, v: ValueId) -> Count {
        self.g.ty(v).shape.iter().fold(Count::Const(1), |acc, d| Count::times(acc, Count::Dim(*d)))
    }

    pub fn launch(&mut self, mut kernel: Kernel, grid: [Count; 3], args: Vec<Arg>) -> Result<(), LowerError> {
        if kernel.params.len() != args.len() {
            return Err(LowerError::Tile(TileError::Kernel {
                kernel: kernel.name.clone(),
                msg: format!("{} arguments for {} parameters", args.len(), kernel.params.len()),
            }));
        }
        self.type_pointers(&mut kernel, &args);
        let k = self.prog.add_kernel(kernel);
        self.prog.launches.push(Launch { kernel: k, grid, args, prefix_copy: None });
        Ok(())
    }

    /// Gives each float pointer parameter the dtype of the float buffer it is
    /// bound to: recipes compute in f32 and declare f32 pointers; whether the
    /// elements are stored narrower is the buffer's business.
    fn type_pointers(&self, kernel: &mut Kernel, args: &[Arg]) {
        for (p, a) in kernel.params.iter_mut().zip(args) {
            let (ParamKind::Ptr(d), Arg::Buffer(b)) = (&mut p.kind, a) else { continue };
            if let Some(buf) = self.prog.buffers.get(*b) {
                if d.is_float() && buf.dtype.is_float() {
                    *d = buf.dtype;
                }
            }
        }
    }

    /// An error naming the op being lowered.
    pub fn err(&self, op: &OpNode, msg: impl Into<String>) -> LowerError {
        let value = op.results.first().map(|r| self.g.value(*r).name.clone()).unwrap_or_default();
        LowerError::Op { op: op.kind.mnemonic(), value, msg: msg.into() }
    }
}

/// Lowers a verified graph under a schedule.
pub fn lower(g: &Graph, sched: &Schedule) -> Result<Program, LowerError> {
    sched.validate().map_err(LowerError::Schedule)?;
    let plan = if sched.fuse_conv { conv_prologue::plan(g) } else { conv_prologue::Plan::none(g) };
    let mut lw = Lowering {
        g,
        sched: *sched,
        prog: Program { name: g.name.clone(), dims: g.dims.clone(), ..Default::default() },
        buf_of: vec![None; g.values.len()],
        dtype_of: storage::buffer_dtypes(g, sched.storage.dtype()),
        fused: plan.fused,
        inline: Vec::new(),
        absorbed: vec![false; g.ops.len()],
    };
    let lowered: Vec<bool> = plan.actions.iter().map(|a| matches!(a, conv_prologue::Action::Lower)).collect();
    lw.inline = generic::inline_plan(g, &lowered);
    let mut deferred = Vec::new();
    for (i, (op, action)) in g.ops.iter().zip(&plan.actions).enumerate() {
        if op.results.first().is_some_and(|r| lw.inline.get(r.index()).copied().flatten().is_some()) {
            continue;
        }
        if lw.absorbed.get(i).copied().unwrap_or(false) {
            continue;
        }
        match *action {
            conv_prologue::Action::Lower => {}
            conv_prologue::Action::Skip => continue,
            conv_prologue::Action::ConvTail { x_at, deferred: true } => {
                deferred.push((op, x_at));
                continue;
            }
            conv_prologue::Action::ConvTail { x_at, deferred: false } => {
                let b = lw.buffer(x_at);
                generic::conv_tail(&mut lw, op, Some(b))?;
                continue;
            }
        }
        match &op.kind {
            OpKind::Input { .. } => lw.input_buffer(op.results[0]),
            OpKind::LinearRecurrence(r) => match r.transition {
                mixc_ir::ops::Transition::Delta | mixc_ir::ops::Transition::GatedDelta => delta::lower(&mut lw, op, r)?,
                _ => recurrence::lower(&mut lw, op, r)?,
            },
            OpKind::Attention { scale, mask } => attention::lower(&mut lw, op, *scale, *mask)?,
            _ => generic::lower(&mut lw, op)?,
        }
    }
    // New tails of fused convolutions, after the recurrences that read the old ones.
    for (op, x_at) in deferred {
        let b = lw.buffer(x_at);
        generic::conv_tail(&mut lw, op, Some(b))?;
    }
    for (name, v) in &g.outputs {
        let b = lw.buffer(*v);
        if lw.prog.buffers[b].role == BufferRole::Temp {
            lw.prog.buffers[b].role = BufferRole::Output(name.clone());
        } else {
            // An input returned as is, or one value under two names: copy it.
            let shape = lw.prog.buffers[b].shape.clone();
            let dtype = storage::output_dtype(g, name, *v, sched.storage.dtype());
            let out = lw.prog.add_buffer(name, dtype, shape, BufferRole::Output(name.clone()));
            let n = lw.numel(*v);
            generic::copy(&mut lw, b, out, n)?;
        }
    }
    // Constant folding, common loads and arithmetic, dead code: recipes may
    // load a chunk twice (outputs, then the state update) and leave the rest
    // to this.
    let prog = crate::simplify::simplify_program(&lw.prog);
    mixc_ir::tile::verify::verify_program(&prog)?;
    Ok(prog)
}
