//! Programs: kernels, the buffers between them, and launches in order.

use super::interp::{run_kernel, ArgValue, Precision, Stats};
use super::{Kernel, ParamKind, TileError};
use crate::dims::{DimId, DimTable};

use crate::dtype::DType;
use crate::interp::Tensor;
use std::collections::BTreeMap;

/// Elements a buffer may hold: kernels compute element offsets in signed
/// 32-bit integers (`i32` index tiles), so one past the last must fit.
pub const MAX_BUFFER_ELEMENTS: u64 = i32::MAX as u64;

/// A size computed at launch time from the bound dims.
#[derive(Clone, Debug, PartialEq)]
pub enum Count {
    Const(u64),
    Dim(DimId),
    Mul(Box<Count>, Box<Count>),
    Add(Box<Count>, Box<Count>),
    CeilDiv(Box<Count>, u64),
}

impl Count {
    pub fn dim(d: DimId) -> Count {
        Count::Dim(d)
    }
    pub fn times(a: Count, b: Count) -> Count {
        Count::Mul(Box::new(a), Box::new(b))
    }
    pub fn plus(a: Count, b: Count) -> Count {
        Count::Add(Box::new(a), Box::new(b))
    }
    pub fn ceil_div(a: Count, by: u64) -> Count {
        Count::CeilDiv(Box::new(a), by)
    }
    pub fn eval(&self, sizes: &[u64]) -> u64 {
        match self {
            Count::Const(c) => *c,
            Count::Dim(d) => sizes.get(d.index()).copied().unwrap_or(0),
            Count::Mul(a, b) => a.eval(sizes).saturating_mul(b.eval(sizes)),
            Count::Add(a, b) => a.eval(sizes).saturating_add(b.eval(sizes)),
            Count::CeilDiv(a, by) => a.eval(sizes).div_ceil((*by).max(1)),
        }
    }
}

/// What a buffer is to the program's caller.
#[derive(Clone, Debug, PartialEq)]
pub enum BufferRole {
    /// A graph input (optional ones read as zeros when absent).
    Input { name: String, optional: bool },
    /// A graph output.
    Output(String),
    /// Scratch between kernels.
    Temp,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BufferDecl {
    pub name: String,
    pub dtype: DType,
    /// Row-major shape, from the program's dims (inputs and outputs use plain
    /// dims, so that free dims can be bound from them).
    pub shape: Vec<Count>,
    pub role: BufferRole,
}

/// An argument of a launch.
#[derive(Clone, Debug, PartialEq)]
pub enum Arg {
    Buffer(usize),
    /// An i32 scalar computed from the dims.
    Size(Count),
    /// An f32 constant.
    Float(f64),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Launch {
    pub kernel: usize,
    pub grid: [Count; 3],
    pub args: Vec<Arg>,
    /// Set when all the launch does is copy one buffer into the leading rows
    /// of another (the old rows of a KV cache append): see [`PrefixCopy`].
    pub prefix_copy: Option<PrefixCopy>,
}

/// A launch that copies buffer `from` whole into buffer `to` at rows
/// `0..` along `axis` (the rest of `to` written by other launches). Where
/// every axis of `to` before `axis` has size 1, those elements are the
/// leading `numel(from)` of `to` in memory, in the same order, so a runtime
/// may keep `to` in `from`'s storage (grown, with room to spare) and skip
/// the launch: an append then writes only the new rows.
#[derive(Clone, Debug, PartialEq)]
pub struct PrefixCopy {
    pub from: usize,
    pub to: usize,
    pub axis: usize,
}

impl PrefixCopy {
    /// Whether `to`'s rows before `axis` are one row (so the copy is a
    /// prefix in memory) at these sizes.
    pub fn is_prefix(&self, prog: &Program, sizes: &[u64]) -> bool {
        prog.buffers
            .get(self.to)
            .is_some_and(|b| b.shape.len() > self.axis && b.shape[..self.axis].iter().all(|c| c.eval(sizes) == 1))
    }
}

/// Kernels, buffers and launches: everything a backend needs to run a mixer.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Program {
    pub name: String,
    pub dims: DimTable,
    pub buffers: Vec<BufferDecl>,
    pub kernels: Vec<Kernel>,
    pub launches: Vec<Launch>,
}

impl Program {
    pub fn add_buffer(&mut self, name: &str, dtype: DType, shape: Vec<Count>, role: BufferRole) -> usize {
        self.buffers.push(BufferDecl { name: name.to_string(), dtype, shape, role });
        self.buffers.len() - 1
    }

    pub fn add_kernel(&mut self, k: Kernel) -> usize {
        self.kernels.push(k);
        self.kernels.len() - 1
    }

    /// Binds the free dims from the given inputs (as the graph interpreter
    /// does); fails where a buffer would have more elements than kernels can
    /// address ([`MAX_BUFFER_ELEMENTS`]).
    pub fn bind(&self, inputs: &BTreeMap<String, Tensor>) -> Result<Vec<u64>, TileError> {
        let mut bound: BTreeMap<DimId, u64> = BTreeMap::new();
        let err = |m: String| TileError::Program(format!("program `{}`: {m}", self.name));
        for b in &self.buffers {
            let BufferRole::Input { name, optional } = &b.role else { continue };
            match inputs.get(name) {
                None if *optional => {}
                None => return Err(err(format!("missing input `{name}`"))),
                Some(t) => {
                    if t.shape.len() != b.shape.len() {
                        return Err(err(format!("input `{name}` must have rank {}", b.shape.len())));
                    }
                    for (c, n) in b.shape.iter().zip(&t.shape) {
                        if let Count::Dim(d) = c {
                            if self.dims.get(*d).size.is_none() {
                                bound.insert(*d, *n as u64);
                            }
                        }
                    }
                }
            }
        }
        for b in &self.buffers {
            if let BufferRole::Input { name, .. } = &b.role {
                if !inputs.contains_key(name) {
                    for c in &b.shape {
                        if let Count::Dim(d) = c {
                            if self.dims.get(*d).size.is_none() {
                                bound.entry(*d).or_insert(0);
                            }
                        }
                    }
                }
            }
        }
        let sizes: Vec<u64> = self.dims.iter().map(|(d, _)| self.dims.eval(d, &bound).unwrap_or(0)).collect();
        for b in &self.buffers {
            if let (BufferRole::Input { name, .. }, Some(t)) = (
                &b.role,
                inputs.get(match &b.role {
                    BufferRole::Input { name, .. } => name.as_str(),
                    _ => "",
                }),
            ) {
                for (i, (c, n)) in b.shape.iter().zip(&t.shape).enumerate() {
                    let want = c.eval(&sizes);
                    if want != *n as u64 {
                        return Err(err(format!("input `{name}`: axis {i} is {n}, expected {want}")));
                    }
                }
            }
        }
        // Kernels compute element offsets in 32-bit integers.
        for b in &self.buffers {
            let n = b.shape.iter().try_fold(1u64, |acc, c| acc.checked_mul(c.eval(&sizes)));
            if n.is_none_or(|n| n > MAX_BUFFER_ELEMENTS) {
                let shape: Vec<u64> = b.shape.iter().map(|c| c.eval(&sizes)).collect();
                return Err(err(format!(
                    "buffer `{}` {shape:?} would hold more than {MAX_BUFFER_ELEMENTS} elements, the most 32-bit \
                     offsets address; run fewer sequences (or a shorter cache) per call",
                    b.name
                )));
            }
        }
        Ok(sizes)
    }

    /// Runs every launch in order on host buffers and returns the outputs.
    pub fn run(
        &self,
        inputs: &BTreeMap<String, Tensor>,
        prec: Precision,
    ) -> Result<(BTreeMap<String, Tensor>, Stats), TileError> {
        let sizes = self.bind(inputs)?;
        let shape_of = |b: &BufferDecl| -> Vec<usize> { b.shape.iter().map(|c| c.eval(&sizes) as usize).collect() };
        let mut bufs: Vec<Vec<f64>> = self
            .buffers
            .iter()
            .map(|b| {
                let n: usize = shape_of(b).iter().product();
                match &b.role {
                    BufferRole::Input { name, .. } => match inputs.get(name) {
                        Some(t) if super::interp::rounds_stores(b.dtype, prec) => {
                            t.data.iter().map(|x| crate::interp::round_to_pub(b.dtype, *x)).collect()
                        }
                        Some(t) => t.data.clone(),
                        None => vec![0.0; n],
                    },
                    // Outputs and scratch start poisoned: a kernel that forgets a
                    // store shows up as NaN.
                    _ => vec![f64::NAN; n],
                }
            })
            .collect();
        let mut total = Stats::default();
        for l in &self.launches {
            let k = self
                .kernels
                .get(l.kernel)
                .ok_or_else(|| TileError::Program(format!("launch of missing kernel {}", l.kernel)))?;
            let grid = [0, 1, 2].map(|i| l.grid[i].eval(&sizes) as usize);
            if grid.contains(&0) {
                continue;
            }
            // Take the buffers this launch uses out of the table while it runs.
            let mut taken: Vec<(usize, Vec<f64>)> = Vec::new();
            let mut slots: Vec<Option<f64>> = Vec::new();
            for (a, p) in l.args.iter().zip(&k.params) {
                match (a, &p.kind) {
                    (Arg::Buffer(i), ParamKind::Ptr(_)) => {
                        let buf = std::mem::take(bufs.get_mut(*i).ok_or_else(|| {
                            TileError::Program(format!("kernel `{}`: buffer {i} does not exist", k.name))
                        })?);
                        taken.push((*i, buf));
                        slots.push(None);
                    }
                    (Arg::Size(c), ParamKind::Scalar(_)) => slots.push(Some(c.eval(&sizes) as f64)),
                    (Arg::Float(x), ParamKind::Scalar(_)) => slots.push(Some(*x)),
                    _ => {
                        return Err(TileError::Program(format!(
                            "kernel `{}`: argument for `{}` has the wrong kind",
                            k.name, p.name
                        )))
                    }
                }
            }
            if slots.len() != k.params.len() {
                return Err(TileError::Program(format!("kernel `{}`: wrong argument count", k.name)));
            }
            {
                let mut it = taken.iter_mut();
                let mut args: Vec<ArgValue> = Vec::with_capacity(slots.len());
                for s in &slots {
                    match s {
                        Some(x) => args.push(ArgValue::Scalar(*x)),
                        None => match it.next() {
                            Some((_, b)) => args.push(ArgValue::Buffer(b)),
                            None => return Err(TileError::Program("argument mismatch".into())),
                        },
                    }
                }
                let st = run_kernel(k, grid, &mut args, prec)?;
                total.dot_flops += st.dot_flops;
                total.loaded += st.loaded;
                total.stored += st.stored;
                total.programs += st.programs;
            }
            for (i, b) in taken {
                bufs[i] = b;
            }
        }
        let mut out = BTreeMap::new();
        for (b, data) in self.buffers.iter().zip(bufs) {
            if let BufferRole::Output(name) = &b.role {
                out.insert(name.clone(), Tensor { shape: shape_of(b), data });
            }
        }
        Ok((out, total))
    }
}
