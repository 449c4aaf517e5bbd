//! The mixer graph: SSA values in an arena, ops in definition order.
//!
//! A graph is built through methods that infer and check each op's result types
//! as it is added, so a graph made by the builder is always well formed; a graph
//! made by the parser is checked as a whole by [`crate::verify::verify`].

use crate::dims::{DimId, DimTable, SizeExpr};
use crate::dtype::DType;
use crate::error::IrError;
use crate::ops::*;
use crate::verify::infer;

/// Index of a value in a graph's value arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);

/// Index of an op in a graph's op list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(pub u32);

impl ValueId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl OpId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Element type and named shape of a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Vec<DimId>,
}

impl TensorType {
    pub fn new(dtype: DType, shape: &[DimId]) -> Self {
        TensorType { dtype, shape: shape.to_vec() }
    }
}

/// One SSA value: a result of an op.
#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    /// Unique within the graph; the text form prints it as `%name`.
    pub name: String,
    pub ty: TensorType,
    pub op: OpId,
    pub index: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct OpNode {
    pub kind: OpKind,
    pub operands: Vec<ValueId>,
    pub results: Vec<ValueId>,
}

/// A mixer graph: dims, ops (inputs are ops too, so definition order is total),
/// values, and named outputs.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Graph {
    pub name: String,
    pub dims: DimTable,
    pub ops: Vec<OpNode>,
    pub values: Vec<Value>,
    pub outputs: Vec<(String, ValueId)>,
}

impl Graph {
    pub fn new(name: &str) -> Self {
        Graph { name: name.to_string(), ..Default::default() }
    }

    pub fn value(&self, v: ValueId) -> &Value {
        &self.values[v.index()]
    }

    pub fn ty(&self, v: ValueId) -> &TensorType {
        &self.values[v.index()].ty
    }

    pub fn op(&self, o: OpId) -> &OpNode {
        &self.ops[o.index()]
    }

    pub fn value_by_name(&self, name: &str) -> Option<ValueId> {
        self.values.iter().position(|v| v.name == name).map(|i| ValueId(i as u32))
    }

    /// The graph's inputs, in definition order: (name, value, optional).
    pub fn inputs(&self) -> Vec<(&str, ValueId, bool)> {
        self.ops
            .iter()
            .filter_map(|op| match &op.kind {
                OpKind::Input { name, optional, .. } => Some((name.as_str(), op.results[0], *optional)),
                _ => None,
            })
            .collect()
    }

    pub fn output(&self, name: &str) -> Option<ValueId> {
        self.outputs.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    // ----- dims -----

    fn new_dim(&mut self, name: &str, size: Option<SizeExpr>) -> Result<DimId, IrError> {
        if !is_ident(name) {
            return Err(IrError::BadName { what: "dim", name: name.to_string() });
        }
        if self.dims.lookup(name).is_some() {
            return Err(IrError::DuplicateDim(name.to_string()));
        }
        Ok(self.dims.push(name, size))
    }

    /// A free dim, bound from the inputs' shapes at run time.
    pub fn dim(&mut self, name: &str) -> Result<DimId, IrError> {
        self.new_dim(name, None)
    }

    pub fn dim_const(&mut self, name: &str, size: u64) -> Result<DimId, IrError> {
        self.new_dim(name, Some(SizeExpr::Const(size)))
    }

    pub fn dim_expr(&mut self, name: &str, size: SizeExpr) -> Result<DimId, IrError> {
        let mut refs = Vec::new();
        size.refs(&mut refs);
        if let Some(bad) = refs.iter().find(|d| d.index() >= self.dims.len()) {
            return Err(IrError::Invalid(format!("dim `{name}` refers to unknown {bad}")));
        }
        self.new_dim(name, Some(size))
    }

    /// The existing dim of that name, or a new one of constant size.
    pub fn dim_const_or_get(&mut self, name: &str, size: u64) -> Result<DimId, IrError> {
        match self.dims.lookup(name) {
            Some(d) if self.dims.const_size(d) == Some(size) => Ok(d),
            Some(_) => Err(IrError::DuplicateDim(name.to_string())),
            None => self.dim_const(name, size),
        }
    }

    // ----- ops -----

    fn unique_name(&self, base: &str) -> String {
        if self.value_by_name(base).is_none() {
            return base.to_string();
        }
        (1..)
            .map(|i| format!("{base}_{i}"))
            .find(|n| self.value_by_name(n).is_none())
            .unwrap_or_else(|| base.to_string())
    }

    /// Adds an op, inferring and checking its result types. `names` name the
    /// results (made unique if taken); missing names are generated.
    pub fn add(&mut self, kind: OpKind, operands: &[ValueId], names: &[&str]) -> Result<Vec<ValueId>, IrError> {
        if let Some(bad) = operands.iter().find(|v| v.index() >= self.values.len()) {
            return Err(IrError::Invalid(format!("operand {bad:?} of `{}` does not exist", kind.mnemonic())));
        }
        let tys: Vec<TensorType> = operands.iter().map(|v| self.ty(*v).clone()).collect();
        let results = infer(&self.dims, &kind, &tys).map_err(|msg| IrError::Op {
            op: kind.mnemonic(),
            value: names.first().map(|s| s.to_string()).unwrap_or_default(),
            msg,
        })?;
        let op = OpId(self.ops.len() as u32);
        let default_names = kind.result_names();
        let mut ids = Vec::with_capacity(results.len());
        for (i, ty) in results.into_iter().enumerate() {
            let base = names.get(i).copied().map(str::to_string).unwrap_or_else(|| {
                let stem = default_names.get(i).copied().unwrap_or("t");
                format!("{stem}{}", self.values.len())
            });
            let name = self.unique_name(&base);
            ids.push(ValueId(self.values.len() as u32));
            self.values.push(Value { name, ty, op, index: i as u32 });
        }
        self.ops.push(OpNode { kind, operands: operands.to_vec(), results: ids.clone() });
        Ok(ids)
    }

    /// Adds a one-result op.
    pub fn add1(&mut self, kind: OpKind, operands: &[ValueId], name: &str) -> Result<ValueId, IrError> {
        let names: Vec<&str> = if name.is_empty() { vec![] } else { vec![name] };
        let r = self.add(kind, operands, &names)?;
        Ok(r[0])
    }

    pub fn input(&mut self, name: &str, dtype: DType, shape: &[DimId]) -> Result<ValueId, IrError> {
        self.input_opt(name, dtype, shape, false)
    }

    pub fn input_opt(&mut self, name: &str, dtype: DType, shape: &[DimId], optional: bool) -> Result<ValueId, IrError> {
        if !is_ident(name) {
            return Err(IrError::BadName { what: "input", name: name.to_string() });
        }
        if self.inputs().iter().any(|(n, _, _)| *n == name) {
            return Err(IrError::Invalid(format!("input `{name}` is declared twice")));
        }
        let kind = OpKind::Input { name: name.to_string(), dtype, shape: shape.to_vec(), optional };
        self.add1(kind, &[], name)
    }

    pub fn output_as(&mut self, name: &str, v: ValueId) -> Result<(), IrError> {
        if self.output(name).is_some() {
            return Err(IrError::Invalid(format!("output `{name}` is declared twice")));
        }
        self.outputs.push((name.to_string(), v));
        Ok(())
    }

    pub fn scalar(&mut self, value: f64) -> Result<ValueId, IrError> {
        self.add1(OpKind::Const { value, dtype: DType::F32, shape: vec![] }, &[], "")
    }

    pub fn unary(&mut self, f: UnaryFn, x: ValueId) -> Result<ValueId, IrError> {
        self.add1(OpKind::Unary(f), &[x], "")
    }

    pub fn binary(&mut self, f: BinaryFn, a: ValueId, b: ValueId) -> Result<ValueId, IrError> {
        self.add1(OpKind::Binary(f), &[a, b], "")
    }

    /// `x * c` for a constant `c`.
    pub fn scale_by(&mut self, x: ValueId, c: f64) -> Result<ValueId, IrError> {
        let c = self.scalar(c)?;
        self.binary(BinaryFn::Mul, x, c)
    }

    pub fn named(&mut self, v: ValueId, name: &str) -> ValueId {
        let name = self.unique_name(name);
        self.values[v.index()].name = name;
        v
    }
}

/// Names of dims, values and inputs: an ASCII letter or `_`, then letters, digits, `_`.
pub fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
