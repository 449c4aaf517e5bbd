//! The operations of the mixer graph.
//!
//! Each op is an `OpKind` (what it computes, with its attributes) applied to
//! operands in a fixed order given by [`OpKind::operand_roles`]. Optional
//! operands (an initial state, a cache tail) are present or not according to
//! flags on the kind, so an op's operand list is always positional and complete.

use crate::dims::DimId;
use crate::dtype::DType;

/// Elementwise functions of one argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryFn {
    Neg,
    Abs,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Recip,
    Sigmoid,
    LogSigmoid,
    Softplus,
    Silu,
    Elu,
    /// `elu(x) + 1`, the usual positive feature map of linear attention.
    EluPlusOne,
    Relu,
    Tanh,
    Sin,
    Cos,
    /// Round half away from zero.
    Round,
    Floor,
    Not,
}

/// Elementwise functions of two arguments (broadcast by dim).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryFn {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
    Pow,
    /// Remainder with the sign of the divisor (ring-buffer index arithmetic).
    Rem,
    /// Floor division (index arithmetic).
    FloorDiv,
    Lt,
    Le,
    Eq,
    And,
    Or,
}

/// Reductions along dims.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceFn {
    Sum,
    Max,
    Min,
    Mean,
    LogSumExp,
}

/// Normalizations along one dim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NormKind {
    /// `x / sqrt(sum x^2 + eps)`.
    L2,
    /// `x / sqrt(mean x^2 + eps)` (no weight: multiply afterwards).
    Rms,
}

/// Which keys a query row may attend to. Query `i` of `Tq` queries sits at
/// position `Tk − Tq + i` of the `Tk` keys (keys are the cache followed by the new
/// tokens), so masks work unchanged on a cache-extended key set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Mask {
    pub causal: bool,
    /// `Some(w)`: a query sees the `w` most recent keys, its own included.
    pub window: Option<u32>,
    /// The first `sinks` keys stay visible regardless of the window.
    pub sinks: u32,
}

impl Mask {
    pub fn causal() -> Mask {
        Mask { causal: true, window: None, sinks: 0 }
    }

    /// Whether a query at absolute position `t` sees the key at position `s`.
    pub fn allows(&self, t: usize, s: usize) -> bool {
        if self.causal && s > t {
            return false;
        }
        match self.window {
            None => true,
            Some(w) => s < self.sinks as usize || s + (w as usize) > t,
        }
    }
}

/// The transition `A_t` of a linear recurrence `S_t = A_t(S_{t−1}) + w_t k_t v_tᵀ`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transition {
    /// Linear attention: `A_t = I`.
    Identity,
    /// One log-decay per (step, head), `gate: [B, T, H]` (RetNet, simple GLA, Mamba2).
    ScalarDecay,
    /// A log-decay per key channel, `gate: [B, T, H, Dk]` (GLA).
    KeyDecay,
    /// `A_t = I − β_t k_t k_tᵀ`, `beta: [B, T, H]` (DeltaNet).
    Delta,
    /// `A_t = e^{g_t} (I − β_t k_t k_tᵀ)` (Gated DeltaNet).
    GatedDelta,
    /// The xLSTM matrix memory: exponential input gate, log-sigmoid forget gate,
    /// stabilizer `m` and normalizer `n` (`igate`, `fgate` pre-activations `[B, T, H]`).
    Mlstm,
}

impl Transition {
    pub const ALL: [Transition; 6] = [
        Transition::Identity,
        Transition::ScalarDecay,
        Transition::KeyDecay,
        Transition::Delta,
        Transition::GatedDelta,
        Transition::Mlstm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Transition::Identity => "identity",
            Transition::ScalarDecay => "scalar_decay",
            Transition::KeyDecay => "key_decay",
            Transition::Delta => "delta",
            Transition::GatedDelta => "gated_delta",
            Transition::Mlstm => "mlstm",
        }
    }

    pub fn has_gate(self) -> bool {
        matches!(self, Transition::ScalarDecay | Transition::KeyDecay | Transition::GatedDelta)
    }

    pub fn has_beta(self) -> bool {
        matches!(self, Transition::Delta | Transition::GatedDelta)
    }
}

/// Attributes of a `linear_recurrence`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Recurrence {
    pub transition: Transition,
    /// `s` in `o_t = S_tᵀ (s q_t)`.
    pub scale: f64,
    /// Linear attention's normalizer `z_t = z_{t−1} + k_t`, `o = (sq)ᵀS / ((sq)ᵀz + eps)`.
    pub normalize: bool,
    /// The normalizer's epsilon (linear attention with `normalize`, and mLSTM).
    pub eps: f64,
    /// Whether initial state operands are present (else they start at zero).
    pub has_initial: bool,
}

/// A graph operation.
#[derive(Clone, Debug, PartialEq)]
pub enum OpKind {
    /// A graph input. `optional` inputs that are not supplied read as zeros.
    Input {
        name: String,
        dtype: DType,
        shape: Vec<DimId>,
        optional: bool,
    },
    /// A constant filled to a shape (usually a scalar, `[]`).
    Const {
        value: f64,
        dtype: DType,
        shape: Vec<DimId>,
    },
    /// `iota(D)`: `0, 1, ..., |D|−1` as i32 over dim `D`.
    Iota {
        dim: DimId,
    },
    /// A constant list of indices as i32 over dim `D` (`|D|` must equal the count):
    /// which heads or memories a branch takes.
    Indices {
        dim: DimId,
        values: Vec<u32>,
    },
    Unary(UnaryFn),
    Binary(BinaryFn),
    /// `where(cond, a, b)`.
    Select,
    Cast(DType),
    Clamp {
        lo: f64,
        hi: f64,
    },
    /// Repeats the operand over more dims; the result has exactly `shape`.
    Broadcast {
        shape: Vec<DimId>,
    },
    /// Reorders dims; `shape` is a permutation of the operand's.
    Permute {
        shape: Vec<DimId>,
    },
    /// Reinterprets the row-major data with another shape of the same total size
    /// (splitting and merging heads).
    Reshape {
        shape: Vec<DimId>,
    },
    /// Contraction of two operands: every dim not in `out` is summed over.
    Einsum {
        out: Vec<DimId>,
    },
    Reduce {
        func: ReduceFn,
        dims: Vec<DimId>,
    },
    /// Inclusive (or exclusive) prefix sum along `dim`, optionally from the end.
    Cumsum {
        dim: DimId,
        exclusive: bool,
        reverse: bool,
    },
    Softmax {
        dim: DimId,
    },
    Normalize {
        kind: NormKind,
        dim: DimId,
        eps: f64,
    },
    /// Concatenation along one axis: each operand's dim at that position is
    /// replaced by `dim`, whose size is their sum.
    Concat {
        axis: usize,
        dim: DimId,
    },
    /// `x[.., start .. start+|dim|, ..]` along axis `axis`.
    Slice {
        axis: usize,
        start: u64,
        dim: DimId,
    },
    /// `out[.., j, ..] = x[.., idx[.., j, ..], ..]`: the operand's dim `along` is
    /// replaced by the index's dim `into`; the index broadcasts over the rest.
    Gather {
        along: DimId,
        into: DimId,
    },
    /// Writes `src` rows into a copy of `base` at `idx` along `along` (later rows win).
    Scatter {
        along: DimId,
        into: DimId,
    },
    /// The `k = |into|` largest entries along `along`, ties to the lower index:
    /// results are values and i32 indices.
    TopK {
        along: DimId,
        into: DimId,
    },
    /// Causal depthwise convolution over `time`: operands `x [.., T, C]`,
    /// `weight [C, K]`, and (when `has_tail`) the previous `K−1` inputs
    /// `tail [.., Km1, C]`; results `y` and the new tail. `activation` is applied to y.
    CausalConv1d {
        time: DimId,
        taps: DimId,
        tail: DimId,
        has_tail: bool,
        silu: bool,
    },
    /// Rotary position embedding (rotate-half pairing `(i, i + D/2)`) over `time`
    /// and `dim`, with positions `offset + t` from an i32 scalar operand.
    Rope {
        time: DimId,
        dim: DimId,
        theta: f64,
    },
    /// Softmax attention: `q [B, Tq, H, Dk]`, `k [B, Tk, Hkv, Dk]`, `v [B, Tk, Hkv, Dv]`
    /// → `o [B, Tq, H, Dv]` and the log-sum-exp of each row `lse [B, Tq, H]`.
    Attention {
        scale: f64,
        mask: Mask,
    },
    /// The linear-recurrence family; results `o`, `final_state`, and for mLSTM
    /// `final_n`, `final_m` (for a normalized linear attention, `final_z`).
    LinearRecurrence(Recurrence),
    /// `Σ_i weights[i] · operand_i` (branch mixing of hybrids).
    Mix {
        weights: Vec<f64>,
    },
    /// Appends new rows to a KV cache along axis 1: `[B, S, ..] ++ [B, T, ..] → [B, dim, ..]`.
    KvAppend {
        dim: DimId,
    },
    /// Keeps the last `keep` rows along axis 1 (a ring buffer's contents, oldest first).
    WindowRetain {
        keep: u32,
        dim: DimId,
    },
    /// Keeps the first `sinks` and the last `window` rows along axis 1.
    SinkWindowRetain {
        sinks: u32,
        window: u32,
        dim: DimId,
    },
    /// Symmetric absmax quantization in groups of `|group|` along the last axis:
    /// results codes (i8 or i4 in an i8 container) `[.., G, group]` and scales `[.., G]`.
    Quantize {
        bits: u32,
        groups: DimId,
        group: DimId,
    },
    /// `codes * scales` back to f32.
    Dequantize,
}

impl OpKind {
    /// Names of the operands, in order, for this kind with its flags.
    pub fn operand_roles(&self, n_operands: usize) -> Vec<String> {
        let fixed = |names: &[&str]| names.iter().map(|s| s.to_string()).collect();
        match self {
            OpKind::Input { .. } | OpKind::Const { .. } | OpKind::Iota { .. } | OpKind::Indices { .. } => vec![],
            OpKind::Select => fixed(&["cond", "a", "b"]),
            OpKind::Binary(_) | OpKind::Einsum { .. } => fixed(&["a", "b"]),
            OpKind::Gather { .. } => fixed(&["x", "idx"]),
            OpKind::Scatter { .. } => fixed(&["base", "idx", "src"]),
            OpKind::CausalConv1d { has_tail, .. } => {
                if *has_tail {
                    fixed(&["x", "weight", "tail"])
                } else {
                    fixed(&["x", "weight"])
                }
            }
            OpKind::Rope { .. } => fixed(&["x", "offset"]),
            OpKind::Attention { .. } => fixed(&["q", "k", "v"]),
            OpKind::LinearRecurrence(r) => {
                let mut v = vec!["q", "k", "v"];
                match r.transition {
                    Transition::Identity => {}
                    Transition::ScalarDecay | Transition::KeyDecay => v.push("gate"),
                    Transition::Delta => v.push("beta"),
                    Transition::GatedDelta => v.extend(["gate", "beta"]),
                    Transition::Mlstm => v.extend(["igate", "fgate"]),
                }
                if r.has_initial {
                    v.push("initial_state");
                    if r.transition == Transition::Mlstm {
                        v.extend(["initial_n", "initial_m"]);
                    } else if r.normalize {
                        v.push("initial_z");
                    }
                }
                fixed(&v)
            }
            OpKind::KvAppend { .. } => fixed(&["cache", "new"]),
            OpKind::Dequantize => fixed(&["codes", "scales"]),
            OpKind::Mix { .. } | OpKind::Concat { .. } => (0..n_operands).map(|i| format!("x{i}")).collect(),
            _ => fixed(&["x"]),
        }
    }

    /// Names of the results, in order.
    pub fn result_names(&self) -> Vec<&'static str> {
        match self {
            OpKind::TopK { .. } => vec!["values", "indices"],
            OpKind::CausalConv1d { .. } => vec!["y", "tail"],
            OpKind::Attention { .. } => vec!["o", "lse"],
            OpKind::LinearRecurrence(r) => match (r.transition, r.normalize) {
                (Transition::Mlstm, _) => vec!["o", "final_state", "final_n", "final_m"],
                (_, true) => vec!["o", "final_state", "final_z"],
                _ => vec!["o", "final_state"],
            },
            OpKind::Quantize { .. } => vec!["codes", "scales"],
            _ => vec!["out"],
        }
    }

    /// The op's mnemonic in the text form.
    pub fn mnemonic(&self) -> String {
        match self {
            OpKind::Input { .. } => "input".into(),
            OpKind::Const { .. } => "const".into(),
            OpKind::Iota { .. } => "iota".into(),
            OpKind::Indices { .. } => "indices".into(),
            OpKind::Unary(f) => unary_name(*f).into(),
            OpKind::Binary(f) => binary_name(*f).into(),
            OpKind::Select => "where".into(),
            OpKind::Cast(_) => "cast".into(),
            OpKind::Clamp { .. } => "clamp".into(),
            OpKind::Broadcast { .. } => "broadcast".into(),
            OpKind::Permute { .. } => "permute".into(),
            OpKind::Reshape { .. } => "reshape".into(),
            OpKind::Einsum { .. } => "einsum".into(),
            OpKind::Reduce { func, .. } => format!("reduce_{}", reduce_name(*func)),
            OpKind::Cumsum { .. } => "cumsum".into(),
            OpKind::Softmax { .. } => "softmax".into(),
            OpKind::Normalize { kind: NormKind::L2, .. } => "l2norm".into(),
            OpKind::Normalize { kind: NormKind::Rms, .. } => "rmsnorm".into(),
            OpKind::Concat { .. } => "concat".into(),
            OpKind::Slice { .. } => "slice".into(),
            OpKind::Gather { .. } => "gather".into(),
            OpKind::Scatter { .. } => "scatter".into(),
            OpKind::TopK { .. } => "topk".into(),
            OpKind::CausalConv1d { .. } => "causal_conv1d".into(),
            OpKind::Rope { .. } => "rope".into(),
            OpKind::Attention { .. } => "softmax_attention".into(),
            OpKind::LinearRecurrence(_) => "linear_recurrence".into(),
            OpKind::Mix { .. } => "mix".into(),
            OpKind::KvAppend { .. } => "kv_append".into(),
            OpKind::WindowRetain { .. } => "window_retain".into(),
            OpKind::SinkWindowRetain { .. } => "sink_window_retain".into(),
            OpKind::Quantize { .. } => "quantize".into(),
            OpKind::Dequantize => "dequantize".into(),
        }
    }
}

pub const UNARY_FNS: [UnaryFn; 20] = [
    UnaryFn::Neg,
    UnaryFn::Abs,
    UnaryFn::Exp,
    UnaryFn::Log,
    UnaryFn::Sqrt,
    UnaryFn::Rsqrt,
    UnaryFn::Recip,
    UnaryFn::Sigmoid,
    UnaryFn::LogSigmoid,
    UnaryFn::Softplus,
    UnaryFn::Silu,
    UnaryFn::Elu,
    UnaryFn::EluPlusOne,
    UnaryFn::Relu,
    UnaryFn::Tanh,
    UnaryFn::Sin,
    UnaryFn::Cos,
    UnaryFn::Round,
    UnaryFn::Floor,
    UnaryFn::Not,
];

pub const BINARY_FNS: [BinaryFn; 14] = [
    BinaryFn::Add,
    BinaryFn::Sub,
    BinaryFn::Mul,
    BinaryFn::Div,
    BinaryFn::Max,
    BinaryFn::Min,
    BinaryFn::Pow,
    BinaryFn::Rem,
    BinaryFn::FloorDiv,
    BinaryFn::Lt,
    BinaryFn::Le,
    BinaryFn::Eq,
    BinaryFn::And,
    BinaryFn::Or,
];

pub const REDUCE_FNS: [ReduceFn; 5] =
    [ReduceFn::Sum, ReduceFn::Max, ReduceFn::Min, ReduceFn::Mean, ReduceFn::LogSumExp];

/// Vector operations per element a unary function costs where it is computed
/// in software, as on a CPU: a transcendental is a range reduction and a
/// polynomial (about 20), a square root or reciprocal a few, the rest one.
/// Shared by the cost model and the CPU backend's planner.
pub fn software_ops(f: UnaryFn) -> u32 {
    match f {
        UnaryFn::Exp
        | UnaryFn::Log
        | UnaryFn::Sigmoid
        | UnaryFn::LogSigmoid
        | UnaryFn::Softplus
        | UnaryFn::Silu
        | UnaryFn::Elu
        | UnaryFn::EluPlusOne
        | UnaryFn::Tanh
        | UnaryFn::Sin
        | UnaryFn::Cos => 20,
        UnaryFn::Sqrt | UnaryFn::Rsqrt | UnaryFn::Recip => 4,
        _ => 1,
    }
}

pub fn unary_name(f: UnaryFn) -> &'static str {
    match f {
        UnaryFn::Neg => "neg",
        UnaryFn::Abs => "abs",
        UnaryFn::Exp => "exp",
        UnaryFn::Log => "log",
        UnaryFn::Sqrt => "sqrt",
        UnaryFn::Rsqrt => "rsqrt",
        UnaryFn::Recip => "recip",
        UnaryFn::Sigmoid => "sigmoid",
        UnaryFn::LogSigmoid => "logsigmoid",
        UnaryFn::Softplus => "softplus",
        UnaryFn::Silu => "silu",
        UnaryFn::Elu => "elu",
        UnaryFn::EluPlusOne => "elu_plus_one",
        UnaryFn::Relu => "relu",
        UnaryFn::Tanh => "tanh",
        UnaryFn::Sin => "sin",
        UnaryFn::Cos => "cos",
        UnaryFn::Round => "round",
        UnaryFn::Floor => "floor",
        UnaryFn::Not => "not",
    }
}

pub fn binary_name(f: BinaryFn) -> &'static str {
    match f {
        BinaryFn::Add => "add",
        BinaryFn::Sub => "sub",
        BinaryFn::Mul => "mul",
        BinaryFn::Div => "div",
        BinaryFn::Max => "max",
        BinaryFn::Min => "min",
        BinaryFn::Pow => "pow",
        BinaryFn::Rem => "rem",
        BinaryFn::FloorDiv => "floordiv",
        BinaryFn::Lt => "lt",
        BinaryFn::Le => "le",
        BinaryFn::Eq => "eq",
        BinaryFn::And => "and",
        BinaryFn::Or => "or",
    }
}

pub fn reduce_name(f: ReduceFn) -> &'static str {
    match f {
        ReduceFn::Sum => "sum",
        ReduceFn::Max => "max",
        ReduceFn::Min => "min",
        ReduceFn::Mean => "mean",
        ReduceFn::LogSumExp => "logsumexp",
    }
}
