//! The reference interpreter: evaluates a verified graph in f64, in the plain
//! recurrent / naive form. It is the oracle every compiled path is checked
//! against, so it favours the obvious loop over the clever one.
//!
//! Inputs and outputs are [`Tensor`]s laid out as their declared shapes. Free
//! dims are bound from the inputs' shapes; optional inputs that are not given
//! read as zeros (a fresh recurrent state, an empty-history cache tail), and a
//! free dim that only absent inputs mention is bound to 0 (an empty KV cache).

mod attention;
mod ops;
mod recurrence;
mod tensor;

pub use tensor::Tensor;

/// Helpers the tile interpreter shares with the graph interpreter.
pub(crate) use ops::{binary as binary_pub, round_to as round_to_pub, unary as unary_pub};
pub(crate) use tensor::for_each_index as for_each_index_pub;

use crate::dims::DimId;
use crate::graph::{Graph, ValueId};
use crate::ops::OpKind;
use std::collections::BTreeMap;
use tensor::Dense;
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum InterpError {
    #[error("missing input `{0}`")]
    MissingInput(String),
    #[error("unknown input `{0}` (the graph's inputs are: {1})")]
    UnknownInput(String, String),
    #[error("input `{name}` must have shape {expected}, found {found:?}")]
    BadShape { name: String, expected: String, found: Vec<usize> },
    #[error("input `{name}`: dim `{dim}` is {found}, but {bound} is expected (fixed by the mixer or bound by another input)")]
    DimMismatch { name: String, dim: String, found: usize, bound: usize },
    #[error("dim `{0}` is not bound by any input")]
    Unbound(String),
    #[error("input `{0}` holds a non-finite value")]
    NonFinite(String),
    #[error("op `{op}` (result `%{value}`): {msg}")]
    Op { op: String, value: String, msg: String },
}

/// Sizes of every dim once the free ones are bound.
pub(crate) struct Sizes {
    sizes: Vec<Option<usize>>,
}

impl Sizes {
    pub fn get(&self, g: &Graph, d: DimId) -> Result<usize, String> {
        self.sizes[d.index()].ok_or_else(|| format!("dim `{}` is not bound by any input", g.dims.name(d)))
    }

    pub fn of(&self, g: &Graph, shape: &[DimId]) -> Result<Vec<usize>, String> {
        shape.iter().map(|d| self.get(g, *d)).collect()
    }
}

/// `[B, T, H=4, Dk=16]`: a shape with the sizes of its fixed dims.
pub fn shape_with_sizes(g: &Graph, shape: &[DimId]) -> String {
    let parts: Vec<String> = shape
        .iter()
        .map(|d| match g.dims.const_size(*d) {
            Some(n) => format!("{}={n}", g.dims.name(*d)),
            None => g.dims.name(*d).to_string(),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

/// Checks input names and shapes against the graph's declared inputs (the same
/// rules as [`run`]: free dims bound from the inputs, absent optional inputs
/// allowed), without evaluating anything.
pub fn check_shapes(g: &Graph, shapes: &BTreeMap<String, Vec<usize>>) -> Result<(), InterpError> {
    let tensors: BTreeMap<String, Tensor> =
        shapes.iter().map(|(n, s)| (n.clone(), Tensor { shape: s.clone(), data: Vec::new() })).collect();
    bind_shapes(g, &tensors).map(|_| ())
}

/// Binds free dims from the given inputs and checks every given input's shape.
fn bind(g: &Graph, inputs: &BTreeMap<String, Tensor>) -> Result<Sizes, InterpError> {
    let sizes = bind_shapes(g, inputs)?;
    for (name, t) in inputs {
        if t.data.iter().any(|x| !x.is_finite()) {
            return Err(InterpError::NonFinite(name.clone()));
        }
    }
    Ok(sizes)
}

fn bind_shapes(g: &Graph, inputs: &BTreeMap<String, Tensor>) -> Result<Sizes, InterpError> {
    let decls = g.inputs();
    for name in inputs.keys() {
        if !decls.iter().any(|(n, _, _)| n == name) {
            let names: Vec<&str> = decls.iter().map(|(n, _, _)| *n).collect();
            return Err(InterpError::UnknownInput(name.clone(), names.join(", ")));
        }
    }
    let mut bound: BTreeMap<DimId, u64> = BTreeMap::new();
    for (name, v, optional) in &decls {
        let shape = &g.ty(*v).shape;
        let Some(t) = inputs.get(*name) else {
            if *optional {
                continue;
            }
            return Err(InterpError::MissingInput(name.to_string()));
        };
        if t.shape.len() != shape.len() {
            return Err(InterpError::BadShape {
                name: name.to_string(),
                expected: shape_with_sizes(g, shape),
                found: t.shape.clone(),
            });
        }
        for (d, n) in shape.iter().zip(&t.shape) {
            if g.dims.get(*d).size.is_none() {
                match bound.get(d) {
                    Some(b) if *b as usize != *n => {
                        return Err(InterpError::DimMismatch {
                            name: name.to_string(),
                            dim: g.dims.name(*d).to_string(),
                            found: *n,
                            bound: *b as usize,
                        })
                    }
                    _ => {
                        bound.insert(*d, *n as u64);
                    }
                }
            }
        }
    }
    // Dims that only absent optional inputs mention are empty: an absent cache
    // has no rows.
    for (name, v, _) in &decls {
        if !inputs.contains_key(*name) {
            for d in &g.ty(*v).shape {
                if g.dims.get(*d).size.is_none() {
                    bound.entry(*d).or_insert(0);
                }
            }
        }
    }
    let sizes: Vec<Option<usize>> =
        g.dims.iter().map(|(d, _)| g.dims.eval(d, &bound).ok().map(|x| x as usize)).collect();
    for (name, v, _) in &decls {
        let Some(t) = inputs.get(*name) else { continue };
        for (d, n) in g.ty(*v).shape.iter().zip(&t.shape) {
            if let Some(want) = sizes[d.index()] {
                if want != *n {
                    return Err(InterpError::DimMismatch {
                        name: name.to_string(),
                        dim: g.dims.name(*d).to_string(),
                        found: *n,
                        bound: want,
                    });
                }
            }
        }
    }
    Ok(Sizes { sizes })
}

/// Evaluates the graph on named inputs and returns its named outputs.
pub fn run(g: &Graph, inputs: &BTreeMap<String, Tensor>) -> Result<BTreeMap<String, Tensor>, InterpError> {
    let sizes = bind(g, inputs)?;
    let mut vals: Vec<Option<Dense>> = vec![None; g.values.len()];
    for op in &g.ops {
        let first = op.results.first().map(|r| g.value(*r).name.clone()).unwrap_or_default();
        let err = |msg: String| InterpError::Op { op: op.kind.mnemonic(), value: first.clone(), msg };
        let args: Vec<&Dense> = op
            .operands
            .iter()
            .map(|v| vals[v.index()].as_ref().ok_or_else(|| err(format!("operand {v:?} has no value"))))
            .collect::<Result<_, _>>()?;
        let results = match &op.kind {
            OpKind::Input { name, shape, .. } => {
                let sz = sizes.of(g, shape).map_err(err)?;
                let data = match inputs.get(name) {
                    Some(t) => t.data.clone(),
                    None => vec![0.0; sz.iter().product()],
                };
                vec![Dense { dims: shape.clone(), sizes: sz, data }]
            }
            kind => ops::eval(g, &sizes, kind, &args, &result_types(g, &op.results)).map_err(err)?,
        };
        for (r, d) in op.results.iter().zip(results) {
            vals[r.index()] = Some(d);
        }
    }
    let mut out = BTreeMap::new();
    for (name, v) in &g.outputs {
        let Some(d) = vals[v.index()].take().or_else(|| vals[v.index()].clone()) else {
            return Err(InterpError::Op { op: "output".into(), value: name.clone(), msg: "no value".into() });
        };
        vals[v.index()] = Some(d.clone());
        out.insert(name.clone(), Tensor { shape: d.sizes, data: d.data });
    }
    Ok(out)
}

fn result_types(g: &Graph, results: &[ValueId]) -> Vec<crate::graph::TensorType> {
    results.iter().map(|r| g.ty(*r).clone()).collect()
}
