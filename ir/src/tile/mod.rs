//! Tile programs: how to compute a mixer, block by block, in the style of
//! Triton's programs.
//!
//! A [`Kernel`] runs once per program id of a launch grid. Its parameters are
//! typed pointers (flat buffers, addressed by explicit element offsets) and
//! scalars (sizes, strides, constants). Its body is SSA statements on
//! statically shaped tiles (`[]` is a scalar): masked `load`/`store`, `dot`
//! with an accumulator, elementwise math with numpy-style broadcasting,
//! reductions and `cumsum` along an axis, `broadcast`, `transpose`, `where`,
//! and structured `for` loops with loop-carried tiles (the state across
//! chunks, the online-softmax accumulators) and `if`.
//!
//! A [`Program`] strings kernels together: buffers (the graph's inputs and
//! outputs, and temporaries between kernels) and launches in order. Both
//! backends consume only this; [`interp`] runs it on host buffers.

pub mod build;
pub mod interp;
pub mod parse;
pub mod program;
pub mod text;
pub mod verify;

pub use build::KernelBuilder;
pub use program::{Arg, BufferDecl, BufferRole, Count, Launch, PrefixCopy, Program};

use crate::dtype::DType;
use crate::ops::{BinaryFn, ReduceFn, UnaryFn};

/// Index of a tile value in a kernel's value arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TValue(pub u32);

impl TValue {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Index of a kernel parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId(pub u32);

impl ParamId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Element type and static shape of a tile (`[]`: a scalar).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TileType {
    pub dtype: DType,
    pub shape: Vec<u32>,
}

impl TileType {
    pub fn scalar(dtype: DType) -> TileType {
        TileType { dtype, shape: vec![] }
    }
    pub fn new(dtype: DType, shape: &[u32]) -> TileType {
        TileType { dtype, shape: shape.to_vec() }
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().map(|s| *s as usize).product()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum ParamKind {
    /// A flat buffer of elements of this dtype.
    Ptr(DType),
    /// A scalar (i32 sizes and strides, f32 constants).
    Scalar(DType),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub name: String,
    pub kind: ParamKind,
}

/// A straight-line list of statements with block arguments and yielded values
/// (loop bodies: the induction variable and the carried tiles; `if` arms: none).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Block {
    pub args: Vec<TValue>,
    pub stmts: Vec<Stmt>,
    pub yields: Vec<TValue>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Stmt {
    pub results: Vec<TValue>,
    pub op: TOp,
}

/// Tile operations.
#[derive(Clone, Debug, PartialEq)]
pub enum TOp {
    /// The program id along a grid axis (0, 1 or 2), an i32 scalar.
    ProgramId(u8),
    /// The value of a scalar parameter.
    Param(ParamId),
    /// A constant filling the result type.
    Const(f64),
    /// `0, 1, ..., n−1` as i32 `[n]`.
    Arange(u32),
    Unary(UnaryFn, TValue),
    Binary(BinaryFn, TValue, TValue),
    /// `where(cond, a, b)`, broadcasting.
    Select(TValue, TValue, TValue),
    Cast(TValue, DType),
    /// Broadcasts (numpy rules) to the result shape.
    Broadcast(TValue),
    /// Same elements, another shape (e.g. `[n]` → `[n, 1]`).
    Reshape(TValue),
    /// Swaps the two axes of a 2-D tile.
    Transpose(TValue),
    /// Reads `ptr[offsets]` where `mask` holds (elsewhere `other`), as f32 (or the
    /// pointer's integer type).
    Load {
        ptr: ParamId,
        offsets: TValue,
        mask: Option<TValue>,
        other: f64,
    },
    /// Writes `value` to `ptr[offsets]` where `mask` holds.
    Store {
        ptr: ParamId,
        offsets: TValue,
        value: TValue,
        mask: Option<TValue>,
    },
    /// `acc + a · b` for `a [m, k]`, `b [k, n]` (transposed first where asked).
    Dot {
        a: TValue,
        b: TValue,
        acc: Option<TValue>,
        trans_a: bool,
        trans_b: bool,
    },
    /// Reduction along `axis` (the axis is removed).
    Reduce {
        func: ReduceFn,
        x: TValue,
        axis: u32,
    },
    /// Prefix sum along `axis`.
    Cumsum {
        x: TValue,
        axis: u32,
        reverse: bool,
        exclusive: bool,
    },
    /// `for iv in lo..hi step step` with carried values `init`; the body's args are
    /// `[iv, carried...]`, its yields the next carried values; results: the last.
    For {
        lo: TValue,
        hi: TValue,
        step: TValue,
        init: Vec<TValue>,
        body: Block,
    },
    /// `if cond { then } else { otherwise }`; results: the taken arm's yields.
    If {
        cond: TValue,
        then: Block,
        otherwise: Block,
    },
}

/// One tile kernel: parameters, value types, and a body run once per program.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Kernel {
    pub name: String,
    pub params: Vec<Param>,
    pub types: Vec<TileType>,
    pub body: Block,
}

impl Kernel {
    pub fn ty(&self, v: TValue) -> &TileType {
        &self.types[v.index()]
    }

    pub fn param_by_name(&self, name: &str) -> Option<ParamId> {
        self.params.iter().position(|p| p.name == name).map(|i| ParamId(i as u32))
    }

    /// Visits every statement, nested blocks included, in order.
    pub fn walk<'a>(&'a self, f: &mut dyn FnMut(&'a Stmt)) {
        fn go<'a>(b: &'a Block, f: &mut dyn FnMut(&'a Stmt)) {
            for s in &b.stmts {
                f(s);
                match &s.op {
                    TOp::For { body, .. } => go(body, f),
                    TOp::If { then, otherwise, .. } => {
                        go(then, f);
                        go(otherwise, f);
                    }
                    _ => {}
                }
            }
        }
        go(&self.body, f)
    }
}

/// Errors building or checking tile programs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TileError {
    #[error("kernel `{kernel}`: `{op}`: {msg}")]
    Op { kernel: String, op: String, msg: String },
    #[error("kernel `{kernel}`: {msg}")]
    Kernel { kernel: String, msg: String },
    #[error("{0}")]
    Program(String),
}

impl TOp {
    pub fn mnemonic(&self) -> String {
        match self {
            TOp::ProgramId(_) => "program_id".into(),
            TOp::Param(_) => "param".into(),
            TOp::Const(_) => "const".into(),
            TOp::Arange(_) => "arange".into(),
            TOp::Unary(f, _) => crate::ops::unary_name(*f).into(),
            TOp::Binary(f, _, _) => crate::ops::binary_name(*f).into(),
            TOp::Select(..) => "where".into(),
            TOp::Cast(..) => "cast".into(),
            TOp::Broadcast(_) => "broadcast".into(),
            TOp::Reshape(_) => "reshape".into(),
            TOp::Transpose(_) => "transpose".into(),
            TOp::Load { .. } => "load".into(),
            TOp::Store { .. } => "store".into(),
            TOp::Dot { .. } => "dot".into(),
            TOp::Reduce { func, .. } => format!("reduce_{}", crate::ops::reduce_name(*func)),
            TOp::Cumsum { .. } => "cumsum".into(),
            TOp::For { .. } => "for".into(),
            TOp::If { .. } => "if".into(),
        }
    }

    /// Tile values the op reads directly (not those of nested blocks).
    pub fn operands(&self) -> Vec<TValue> {
        match self {
            TOp::ProgramId(_) | TOp::Param(_) | TOp::Const(_) | TOp::Arange(_) => vec![],
            TOp::Unary(_, x)
            | TOp::Cast(x, _)
            | TOp::Broadcast(x)
            | TOp::Reshape(x)
            | TOp::Transpose(x)
            | TOp::Reduce { x, .. }
            | TOp::Cumsum { x, .. } => vec![*x],
            TOp::Binary(_, a, b) => vec![*a, *b],
            TOp::Select(c, a, b) => vec![*c, *a, *b],
            TOp::Load { offsets, mask, .. } => std::iter::once(*offsets).chain(*mask).collect(),
            TOp::Store { offsets, value, mask, .. } => [*offsets, *value].into_iter().chain(*mask).collect(),
            TOp::Dot { a, b, acc, .. } => [*a, *b].into_iter().chain(*acc).collect(),
            TOp::For { lo, hi, step, init, .. } => [*lo, *hi, *step].into_iter().chain(init.iter().copied()).collect(),
            TOp::If { cond, .. } => vec![*cond],
        }
    }
}
