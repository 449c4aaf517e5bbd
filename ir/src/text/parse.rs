//! The parser of the graph text form.
//!
//! Statements are applied to a fresh [`Graph`] in text order: dims through the
//! dim builders, ops through [`Graph::add`] (which infers the result types; the
//! written types must equal them), outputs through [`Graph::output_as`]. So a
//! printed graph parses back with the same dim, value and op ids. The finished
//! graph is checked once more by [`crate::verify::verify`].

use std::collections::{HashMap, HashSet};

use super::lex::{lex, Tok, Token};
use super::print::name as quoted;
use super::ParseError;
use crate::dims::{DimId, DimTable, SizeExpr};
use crate::dtype::DType;
use crate::error::IrError;
use crate::graph::{is_ident, Graph, TensorType, ValueId};
use crate::ops::*;

type PResult<T> = Result<T, ParseError>;

/// A place in the text (1-based line and column, columns in characters).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Pos {
    line: usize,
    col: usize,
}

impl Pos {
    fn err(self, msg: impl Into<String>) -> ParseError {
        ParseError { line: self.line, col: self.col, msg: msg.into() }
    }
}

// The verifier compares sizes as i64 polynomials over the dims. These limits keep
// every coefficient it can compute from text far from overflow, and the work it
// does per size small, so that no input makes it panic or run away.

/// The largest sum of absolute coefficients of a dim's size (2^40).
const MAX_MAGNITUDE: u128 = 1 << 40;
/// The most nodes a dim's size expression may have, with the dims it refers to
/// expanded.
const MAX_EXPANDED_NODES: u64 = 256;
/// The largest product of dim magnitudes one op may compare (2^62).
const MAX_PRODUCT: u128 = 1 << 62;
/// The deepest nesting of parentheses, `min(..)`, lists and records.
const MAX_NESTING: usize = 32;
/// The most dims in one shape (the verifier's size products recurse per dim).
const MAX_RANK: usize = 64;
/// The most operands of one op (`concat` sums its operands' dims recursively).
const MAX_OPERANDS: usize = 1024;

/// Parses and verifies graph text.
pub(super) fn parse_graph(src: &str) -> PResult<Graph> {
    let mut p = Parser {
        toks: lex(src),
        i: 0,
        g: Graph::default(),
        values: HashMap::new(),
        inputs: HashSet::new(),
        dim_info: Vec::new(),
    };
    p.graph()?;
    let end = p.pos();
    if let Err(e) = crate::verify::verify(&p.g) {
        let at = match &e {
            IrError::Op { value, .. } => p.values.get(value).map_or(end, |(_, pos)| *pos),
            _ => end,
        };
        return Err(at.err(e.to_string()));
    }
    Ok(p.g)
}

/// Upper bounds on what the verifier computes from a dim's size: `mag` bounds
/// the sum of the absolute coefficients of its polynomial (and of every
/// sub-expression's), `nodes` the size of its expression with dims expanded.
#[derive(Clone, Copy, Debug)]
struct Measure {
    mag: u128,
    nodes: u64,
}

const FREE: Measure = Measure { mag: 1, nodes: 1 };

/// An attribute value as written, before it is given a meaning by its op.
#[derive(Clone, Debug)]
enum AttrVal {
    /// A number as written, with a leading `-` or not.
    Num {
        text: String,
        neg: bool,
    },
    /// An identifier: a dim, a dtype, a transition, `true`, `none`, `inf`, ...
    Ident {
        name: String,
        neg: bool,
    },
    List(Vec<(AttrVal, Pos)>),
    Record(Vec<Attr>),
}

#[derive(Clone, Debug)]
struct Attr {
    key: String,
    key_pos: Pos,
    val: AttrVal,
    val_pos: Pos,
}

/// An operand as written: `%v` or `role = %v`.
struct Operand {
    role: Option<(String, Pos)>,
    value: String,
    pos: Pos,
}

struct Parser {
    toks: Vec<Token>,
    i: usize,
    g: Graph,
    /// Defined values: id and the place of the statement that defines them.
    values: HashMap<String, (ValueId, Pos)>,
    inputs: HashSet<String>,
    /// One entry per dim of `g`, in table order.
    dim_info: Vec<Measure>,
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Ident(s) => format!("`{s}`"),
        Tok::Num(s) => format!("number `{s}`"),
        Tok::Str(s) => format!("string {s:?}"),
        Tok::Value(s) => format!("`%{}`", quoted(s)),
        Tok::Punct(c) => format!("`{c}`"),
        Tok::Eof => "end of input".into(),
        Tok::Error(m) => m.clone(),
    }
}

fn fmt_type(dims: &DimTable, t: &TensorType) -> String {
    format!("{}{}", t.dtype, dims.fmt_shape(&t.shape))
}

impl Parser {
    // ----- tokens -----

    fn tok_at(&self, k: usize) -> &Tok {
        match self.toks.get(self.i + k).or(self.toks.last()) {
            Some(t) => &t.tok,
            None => &Tok::Eof,
        }
    }

    fn peek(&self) -> &Tok {
        self.tok_at(0)
    }

    fn pos(&self) -> Pos {
        match self.toks.get(self.i).or(self.toks.last()) {
            Some(t) => Pos { line: t.line, col: t.col },
            None => Pos { line: 1, col: 1 },
        }
    }

    /// Moves past the current token (never past the last one).
    fn bump(&mut self) {
        if self.i + 1 < self.toks.len() {
            self.i += 1;
        }
    }

    fn unexpected<T>(&self, expected: &str) -> PResult<T> {
        let pos = self.pos();
        Err(match self.peek() {
            Tok::Error(msg) => pos.err(msg.clone()),
            t => pos.err(format!("expected {expected}, found {}", describe(t))),
        })
    }

    fn is_punct(&self, c: char) -> bool {
        *self.peek() == Tok::Punct(c)
    }

    fn eat(&mut self, c: char) -> bool {
        let yes = self.is_punct(c);
        if yes {
            self.bump();
        }
        yes
    }

    fn expect(&mut self, c: char, expected: &str) -> PResult<Pos> {
        let pos = self.pos();
        if self.eat(c) {
            Ok(pos)
        } else {
            self.unexpected(expected)
        }
    }

    fn ident(&mut self, expected: &str) -> PResult<(String, Pos)> {
        let pos = self.pos();
        match self.peek() {
            Tok::Ident(s) => {
                let s = s.clone();
                self.bump();
                Ok((s, pos))
            }
            _ => self.unexpected(expected),
        }
    }

    /// A name: an identifier or a quoted string.
    fn name(&mut self, expected: &str) -> PResult<(String, Pos)> {
        let pos = self.pos();
        match self.peek() {
            Tok::Ident(s) | Tok::Str(s) => {
                let s = s.clone();
                self.bump();
                Ok((s, pos))
            }
            _ => self.unexpected(expected),
        }
    }

    fn value_name(&mut self) -> PResult<(String, Pos)> {
        let pos = self.pos();
        match self.peek() {
            Tok::Value(s) => {
                let s = s.clone();
                self.bump();
                Ok((s, pos))
            }
            _ => self.unexpected("a value `%name`"),
        }
    }

    fn is_keyword(&self, k: &str) -> bool {
        matches!(self.peek(), Tok::Ident(s) if s == k)
    }

    // ----- lookups -----

    fn lookup_dim(&self, name: &str, pos: Pos) -> PResult<DimId> {
        self.g.dims.lookup(name).ok_or_else(|| pos.err(format!("unknown dim `{name}`")))
    }

    fn lookup_value(&self, name: &str, pos: Pos) -> PResult<ValueId> {
        self.values.get(name).map(|(v, _)| *v).ok_or_else(|| pos.err(format!("undefined value `%{}`", quoted(name))))
    }

    // ----- statements -----

    fn graph(&mut self) -> PResult<()> {
        if !self.is_keyword("graph") {
            return self.unexpected("`graph`");
        }
        self.bump();
        let (name, _) = self.name("the graph's name")?;
        self.g.name = name;
        self.expect('{', "`{` after the graph's name")?;
        loop {
            if self.eat('}') {
                break;
            }
            if self.is_keyword("dim") {
                self.dim_stmt()?;
            } else if self.is_keyword("out") {
                self.out_stmt()?;
            } else if matches!(self.peek(), Tok::Value(_)) {
                self.op_stmt()?;
            } else {
                return self.unexpected("`dim`, `out`, a value `%name` or `}`");
            }
        }
        if *self.peek() != Tok::Eof {
            return self.unexpected("end of input after the graph's `}`");
        }
        Ok(())
    }

    /// `dim NAME` or `dim NAME = EXPR`.
    fn dim_stmt(&mut self) -> PResult<()> {
        self.bump();
        let (name, at) = self.ident("a dim name")?;
        if self.g.dims.lookup(&name).is_some() {
            return Err(at.err(format!("dim `{name}` is defined twice")));
        }
        let size = if self.eat('=') {
            let mut nodes = 0;
            Some(self.expr(0, &mut nodes)?)
        } else {
            None
        };
        let m = match &size {
            None => FREE,
            Some(e) => self.measure(e).map_err(|msg| at.err(format!("dim `{name}`: {msg}")))?,
        };
        let made = match size {
            None => self.g.dim(&name),
            Some(e) => self.g.dim_expr(&name, e),
        };
        made.map_err(|e| at.err(e.to_string()))?;
        self.dim_info.push(m);
        Ok(())
    }

    /// `out NAME = %value`.
    fn out_stmt(&mut self) -> PResult<()> {
        self.bump();
        let (name, at) = self.name("the output's name")?;
        self.expect('=', "`=` after the output's name")?;
        let (v, vpos) = self.value_name()?;
        let id = self.lookup_value(&v, vpos)?;
        self.g.output_as(&name, id).map_err(|e| at.err(e.to_string()))
    }

    /// `%r, ... = MNEMONIC [attrs]? (operands)? : types` or
    /// `%r = input[?] NAME : type`.
    fn op_stmt(&mut self) -> PResult<()> {
        let start = self.pos();
        let mut names = vec![self.value_name()?];
        while self.eat(',') {
            names.push(self.value_name()?);
        }
        self.expect('=', "`,` or `=` after the result names")?;
        for (i, (n, pos)) in names.iter().enumerate() {
            if let Some((_, def)) = self.values.get(n) {
                return Err(pos.err(format!("value `%{}` is already defined (line {})", quoted(n), def.line)));
            }
            if names[..i].iter().any(|(m, _)| m == n) {
                return Err(pos.err(format!("value `%{}` is named twice", quoted(n))));
            }
        }
        let (mn, at) = self.ident("an op name")?;
        if mn == "input" {
            return self.input_op(start, at, names);
        }
        let attrs = if self.eat('[') { self.attr_list(']', 1)? } else { Vec::new() };
        let (open, operands) = if self.is_punct('(') { self.operand_list()? } else { (self.pos(), Vec::new()) };
        self.expect(':', "`:` and the result types")?;
        let types = self.type_list()?;

        let label = format!("`{mn}`");
        let mut a = Attrs::new(&label, at, attrs);
        let kind = self.build_kind(&mn, at, &mut a, &types)?;
        a.finish()?;
        let operands = self.resolve_operands(&kind, &label, open, &operands)?;
        self.add_op(start, at, kind, &operands, &names, &types)
    }

    fn input_op(&mut self, start: Pos, at: Pos, names: Vec<(String, Pos)>) -> PResult<()> {
        let optional = self.eat('?');
        let (input, ipos) = self.name("the input's name")?;
        if !is_ident(&input) {
            let e = IrError::BadName { what: "input", name: input };
            return Err(ipos.err(e.to_string()));
        }
        if self.inputs.contains(&input) {
            return Err(ipos.err(format!("input `{input}` is declared twice")));
        }
        self.expect(':', "`:` and the input's type")?;
        let types = self.type_list()?;
        let Some((t, _)) = types.first() else {
            return self.unexpected("the input's type");
        };
        let kind = OpKind::Input { name: input.clone(), dtype: t.dtype, shape: t.shape.clone(), optional };
        self.add_op(start, at, kind, &[], &names, &types)?;
        self.inputs.insert(input);
        Ok(())
    }

    /// Adds an op and checks its results against the written names and types.
    fn add_op(
        &mut self,
        start: Pos,
        at: Pos,
        kind: OpKind,
        operands: &[ValueId],
        names: &[(String, Pos)],
        types: &[(TensorType, Pos)],
    ) -> PResult<()> {
        let mnemonic = kind.mnemonic();
        self.guard(&kind, operands).map_err(|m| at.err(format!("op `{mnemonic}`: {m}")))?;
        let result_names = kind.result_names();
        let name_refs: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
        let results = self.g.add(kind, operands, &name_refs).map_err(|e| at.err(e.to_string()))?;
        if results.len() != names.len() {
            return Err(at.err(format!(
                "`{mnemonic}` has {} result(s) ({}), but {} name(s) are written",
                results.len(),
                result_names.join(", "),
                names.len()
            )));
        }
        if results.len() != types.len() {
            let pos = types.last().map_or(at, |(_, p)| *p);
            return Err(pos.err(format!(
                "`{mnemonic}` has {} result(s), but {} type(s) are written",
                results.len(),
                types.len()
            )));
        }
        for ((r, (n, npos)), (t, tpos)) in results.iter().zip(names).zip(types) {
            let Some(val) = self.g.values.get(r.index()) else {
                return Err(npos.err(format!("result `%{}` was not created", quoted(n))));
            };
            if &val.name != n {
                return Err(npos.err(format!("value `%{}` is already defined", quoted(n))));
            }
            if &val.ty != t {
                return Err(tpos.err(format!(
                    "type of `%{}` is written {}, but inferred {}",
                    quoted(n),
                    fmt_type(&self.g.dims, t),
                    fmt_type(&self.g.dims, &val.ty)
                )));
            }
            self.values.insert(n.clone(), (*r, start));
        }
        Ok(())
    }

    /// Rejects ops whose size checks could overflow the verifier's arithmetic.
    fn guard(&self, kind: &OpKind, operands: &[ValueId]) -> Result<(), String> {
        let mag = |d: DimId| self.dim_info.get(d.index()).map_or(1, |m| m.mag).max(1);
        let product = |s: &[DimId]| s.iter().fold(1u128, |acc, d| acc.saturating_mul(mag(*d)));
        let too_big = || Err("sizes too large to compare (beyond 2^62)".to_string());
        let first = operands.first().and_then(|v| self.g.values.get(v.index())).map(|v| &v.ty);
        match kind {
            OpKind::Reshape { shape }
                if first.map_or(1, |t| product(&t.shape)) > MAX_PRODUCT || product(shape) > MAX_PRODUCT =>
            {
                too_big()
            }
            OpKind::Quantize { groups, group, .. } if product(&[*groups, *group]) > MAX_PRODUCT => too_big(),
            OpKind::Concat { axis, .. } => {
                let total = operands
                    .iter()
                    .filter_map(|v| self.g.values.get(v.index()))
                    .filter_map(|v| v.ty.shape.get(*axis))
                    .fold(0u128, |acc, d| acc.saturating_add(mag(*d)));
                if total > MAX_PRODUCT {
                    too_big()
                } else {
                    Ok(())
                }
            }
            OpKind::SinkWindowRetain { sinks, window, .. } if sinks.checked_add(*window).is_none() => {
                Err(format!("sinks + window ({sinks} + {window}) exceeds 2^32 - 1"))
            }
            OpKind::Slice { start, dim, .. } => {
                let size = self.g.dims.const_size(*dim).unwrap_or(0);
                match start.checked_add(size) {
                    None => Err(format!("start {start} + size {size} exceeds 2^64 - 1")),
                    Some(_) => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    // ----- op kinds -----

    fn build_kind(&self, mn: &str, at: Pos, a: &mut Attrs, types: &[(TensorType, Pos)]) -> PResult<OpKind> {
        let d = &self.g.dims;
        Ok(match mn {
            "const" => {
                let value = a.f64("value")?;
                let Some((t, _)) = types.first() else {
                    return Err(at.err("`const` needs a result type"));
                };
                OpKind::Const { value, dtype: t.dtype, shape: t.shape.clone() }
            }
            "iota" => OpKind::Iota { dim: a.dim(d, "dim")? },
            "indices" => OpKind::Indices { dim: a.dim(d, "dim")?, values: a.u32s("values")? },
            "where" => OpKind::Select,
            "cast" => OpKind::Cast(a.dtype("to")?),
            "clamp" => OpKind::Clamp { lo: a.f64("lo")?, hi: a.f64("hi")? },
            "broadcast" => OpKind::Broadcast { shape: a.dims(d, "shape")? },
            "permute" => OpKind::Permute { shape: a.dims(d, "shape")? },
            "reshape" => OpKind::Reshape { shape: a.dims(d, "shape")? },
            "einsum" => OpKind::Einsum { out: a.dims(d, "out")? },
            "cumsum" => {
                OpKind::Cumsum { dim: a.dim(d, "dim")?, exclusive: a.bool("exclusive")?, reverse: a.bool("reverse")? }
            }
            "softmax" => OpKind::Softmax { dim: a.dim(d, "dim")? },
            "l2norm" | "rmsnorm" => OpKind::Normalize {
                kind: if mn == "l2norm" { NormKind::L2 } else { NormKind::Rms },
                dim: a.dim(d, "dim")?,
                eps: a.f64("eps")?,
            },
            "concat" => OpKind::Concat { axis: a.usize("axis")?, dim: a.dim(d, "dim")? },
            "slice" => OpKind::Slice { axis: a.usize("axis")?, start: a.u64("start")?, dim: a.dim(d, "dim")? },
            "gather" => OpKind::Gather { along: a.dim(d, "along")?, into: a.dim(d, "into")? },
            "scatter" => OpKind::Scatter { along: a.dim(d, "along")?, into: a.dim(d, "into")? },
            "topk" => OpKind::TopK { along: a.dim(d, "along")?, into: a.dim(d, "into")? },
            "causal_conv1d" => OpKind::CausalConv1d {
                time: a.dim(d, "time")?,
                taps: a.dim(d, "taps")?,
                tail: a.dim(d, "tail")?,
                has_tail: a.bool("has_tail")?,
                silu: a.bool("silu")?,
            },
            "rope" => OpKind::Rope { time: a.dim(d, "time")?, dim: a.dim(d, "dim")?, theta: a.f64("theta")? },
            "softmax_attention" => OpKind::Attention { scale: a.f64("scale")?, mask: a.mask("mask")? },
            "linear_recurrence" => OpKind::LinearRecurrence(Recurrence {
                transition: a.transition("transition")?,
                scale: a.f64("scale")?,
                normalize: a.bool("normalize")?,
                eps: a.f64("eps")?,
                has_initial: a.bool("has_initial")?,
            }),
            "mix" => OpKind::Mix { weights: a.f64s("weights")? },
            "kv_append" => OpKind::KvAppend { dim: a.dim(d, "dim")? },
            "window_retain" => OpKind::WindowRetain { keep: a.u32("keep")?, dim: a.dim(d, "dim")? },
            "sink_window_retain" => {
                OpKind::SinkWindowRetain { sinks: a.u32("sinks")?, window: a.u32("window")?, dim: a.dim(d, "dim")? }
            }
            "quantize" => {
                OpKind::Quantize { bits: a.u32("bits")?, groups: a.dim(d, "groups")?, group: a.dim(d, "group")? }
            }
            "dequantize" => OpKind::Dequantize,
            _ => {
                if let Some(f) = UNARY_FNS.iter().find(|f| unary_name(**f) == mn) {
                    OpKind::Unary(*f)
                } else if let Some(f) = BINARY_FNS.iter().find(|f| binary_name(**f) == mn) {
                    OpKind::Binary(*f)
                } else if let Some(f) =
                    mn.strip_prefix("reduce_").and_then(|r| REDUCE_FNS.iter().find(|f| reduce_name(**f) == r))
                {
                    OpKind::Reduce { func: *f, dims: a.dims(d, "dims")? }
                } else {
                    return Err(at.err(format!("unknown op `{mn}`")));
                }
            }
        })
    }

    // ----- operands -----

    /// `( )`, `( %v, ... )` or `( role = %v, ... )`; returns the place of `(`.
    fn operand_list(&mut self) -> PResult<(Pos, Vec<Operand>)> {
        let open = self.expect('(', "`(`")?;
        let mut out = Vec::new();
        if self.eat(')') {
            return Ok((open, out));
        }
        loop {
            let role = match (self.tok_at(0), self.tok_at(1)) {
                (Tok::Ident(_), Tok::Punct('=')) => {
                    let r = self.ident("an operand role")?;
                    self.bump();
                    Some(r)
                }
                (Tok::Value(_), _) => None,
                _ => return self.unexpected("an operand: `%name` or `role = %name`"),
            };
            let (value, pos) = self.value_name()?;
            if out.len() == MAX_OPERANDS {
                return Err(pos.err(format!("too many operands (at most {MAX_OPERANDS})")));
            }
            out.push(Operand { role, value, pos });
            if self.eat(')') {
                return Ok((open, out));
            }
            self.expect(',', "`,` or `)`")?;
        }
    }

    /// Puts operands in the kind's role order and looks their values up.
    fn resolve_operands(&self, kind: &OpKind, label: &str, open: Pos, ops: &[Operand]) -> PResult<Vec<ValueId>> {
        let named = ops.iter().filter(|o| o.role.is_some()).count();
        if named == 0 {
            return ops.iter().map(|o| self.lookup_value(&o.value, o.pos)).collect();
        }
        if let Some(o) = ops.iter().find(|o| o.role.is_none()) {
            return Err(o.pos.err("operands are either all named (`role = %v`) or all positional"));
        }
        let roles = kind.operand_roles(ops.len());
        let takes =
            if roles.is_empty() { "it takes none".to_string() } else { format!("it takes {}", roles.join(", ")) };
        fn role_of(o: &Operand) -> &str {
            o.role.as_ref().map_or("", |(r, _)| r.as_str())
        }
        for (i, o) in ops.iter().enumerate() {
            let (r, rpos) = match &o.role {
                Some((r, p)) => (r.as_str(), *p),
                None => continue,
            };
            if !roles.iter().any(|x| x == r) {
                return Err(rpos.err(format!("unknown operand `{r}` of {label} ({takes})")));
            }
            if ops[..i].iter().any(|p| role_of(p) == r) {
                return Err(rpos.err(format!("operand `{r}` is given twice")));
            }
        }
        roles
            .iter()
            .map(|r| match ops.iter().find(|o| role_of(o) == r) {
                Some(o) => self.lookup_value(&o.value, o.pos),
                None => Err(open.err(format!("missing operand `{r}` of {label} ({takes})"))),
            })
            .collect()
    }

    // ----- types -----

    fn type_list(&mut self) -> PResult<Vec<(TensorType, Pos)>> {
        let mut types = vec![self.ty()?];
        while self.eat(',') {
            types.push(self.ty()?);
        }
        Ok(types)
    }

    /// `DTYPE [ DIM, ... ]`.
    fn ty(&mut self) -> PResult<(TensorType, Pos)> {
        let (dt, pos) = self.ident("a type such as `f32[B, T]`")?;
        let dtype = dt.parse::<DType>().map_err(|e| pos.err(e))?;
        self.expect('[', "`[` after the dtype")?;
        let mut shape = Vec::new();
        if !self.eat(']') {
            loop {
                let (n, p) = self.ident("a dim name")?;
                if shape.len() == MAX_RANK {
                    return Err(p.err(format!("too many dims in one shape (at most {MAX_RANK})")));
                }
                shape.push(self.lookup_dim(&n, p)?);
                if self.eat(']') {
                    break;
                }
                self.expect(',', "`,` or `]`")?;
            }
        }
        Ok((TensorType { dtype, shape }, pos))
    }

    // ----- size expressions -----

    fn count(&self, nodes: &mut u64) -> PResult<()> {
        *nodes += 1;
        if *nodes > MAX_EXPANDED_NODES {
            return Err(self.pos().err(format!("size expression is too long (at most {MAX_EXPANDED_NODES} terms)")));
        }
        Ok(())
    }

    /// `term (('+' | '-') term)*`, left-associative.
    fn expr(&mut self, depth: usize, nodes: &mut u64) -> PResult<SizeExpr> {
        if depth > MAX_NESTING {
            return Err(self.pos().err("size expression is nested too deeply"));
        }
        let mut lhs = self.term(depth, nodes)?;
        loop {
            let add = match self.peek() {
                Tok::Punct('+') => true,
                Tok::Punct('-') => false,
                _ => return Ok(lhs),
            };
            self.bump();
            let rhs = self.term(depth, nodes)?;
            self.count(nodes)?;
            lhs = if add { SizeExpr::plus(lhs, rhs) } else { SizeExpr::minus(lhs, rhs) };
        }
    }

    /// `atom ('*' atom)*`, left-associative.
    fn term(&mut self, depth: usize, nodes: &mut u64) -> PResult<SizeExpr> {
        let mut lhs = self.atom(depth, nodes)?;
        while self.eat('*') {
            let rhs = self.atom(depth, nodes)?;
            self.count(nodes)?;
            lhs = SizeExpr::times(lhs, rhs);
        }
        Ok(lhs)
    }

    /// `INT | DIM | min(expr, expr) | (expr)`.
    fn atom(&mut self, depth: usize, nodes: &mut u64) -> PResult<SizeExpr> {
        let pos = self.pos();
        self.count(nodes)?;
        match self.peek().clone() {
            Tok::Num(s) => {
                self.bump();
                let c = s.parse::<u64>().map_err(|_| {
                    pos.err(format!("expected an integer size, found `{s}` (sizes are limited to 2^40)"))
                })?;
                Ok(SizeExpr::Const(c))
            }
            Tok::Ident(n) if n == "min" && *self.tok_at(1) == Tok::Punct('(') => {
                self.bump();
                self.bump();
                let a = self.expr(depth + 1, nodes)?;
                self.expect(',', "`,` between the arguments of `min`")?;
                let b = self.expr(depth + 1, nodes)?;
                self.expect(')', "`)` after the arguments of `min`")?;
                Ok(SizeExpr::min_of(a, b))
            }
            Tok::Ident(n) => {
                self.bump();
                Ok(SizeExpr::Dim(self.lookup_dim(&n, pos)?))
            }
            Tok::Punct('(') => {
                self.bump();
                let e = self.expr(depth + 1, nodes)?;
                self.expect(')', "`)`")?;
                Ok(e)
            }
            _ => self.unexpected("a size: a number, a dim, `min(..)` or `(..)`"),
        }
    }

    fn measure(&self, e: &SizeExpr) -> Result<Measure, String> {
        let two = |a: &SizeExpr, b: &SizeExpr| Ok::<_, String>((self.measure(a)?, self.measure(b)?));
        let m = match e {
            SizeExpr::Const(c) => Measure { mag: u128::from(*c), nodes: 1 },
            SizeExpr::Dim(d) => self.dim_info.get(d.index()).copied().unwrap_or(FREE),
            SizeExpr::Add(a, b) | SizeExpr::Sub(a, b) => {
                let (x, y) = two(a, b)?;
                Measure { mag: x.mag.saturating_add(y.mag), nodes: x.nodes.saturating_add(y.nodes).saturating_add(1) }
            }
            SizeExpr::Mul(a, b) => {
                let (x, y) = two(a, b)?;
                Measure { mag: x.mag.saturating_mul(y.mag), nodes: x.nodes.saturating_add(y.nodes).saturating_add(1) }
            }
            SizeExpr::Min(a, b) => {
                let (x, y) = two(a, b)?;
                Measure { mag: x.mag.max(y.mag).max(1), nodes: x.nodes.saturating_add(y.nodes).saturating_add(1) }
            }
        };
        if m.mag > MAX_MAGNITUDE {
            return Err("the size is too large (sizes and their coefficients are limited to 2^40)".into());
        }
        if m.nodes > MAX_EXPANDED_NODES {
            return Err(format!(
                "the size expression, with the dims it refers to expanded, has more than {MAX_EXPANDED_NODES} terms"
            ));
        }
        Ok(m)
    }

    // ----- attributes -----

    /// `attr (',' attr)* CLOSE` or `CLOSE`, after the opening bracket.
    fn attr_list(&mut self, close: char, depth: usize) -> PResult<Vec<Attr>> {
        let mut out: Vec<Attr> = Vec::new();
        if self.eat(close) {
            return Ok(out);
        }
        loop {
            let (key, key_pos) = self.ident("an attribute name")?;
            if out.iter().any(|a| a.key == key) {
                return Err(key_pos.err(format!("attribute `{key}` is given twice")));
            }
            self.expect('=', "`=` after the attribute name")?;
            let val_pos = self.pos();
            let val = self.attr_val(depth)?;
            out.push(Attr { key, key_pos, val, val_pos });
            if self.eat(close) {
                return Ok(out);
            }
            self.expect(',', &format!("`,` or `{close}`"))?;
        }
    }

    fn attr_val(&mut self, depth: usize) -> PResult<AttrVal> {
        if depth > MAX_NESTING {
            return Err(self.pos().err("attribute value is nested too deeply"));
        }
        let neg = self.eat('-');
        match self.peek().clone() {
            Tok::Num(text) => {
                self.bump();
                Ok(AttrVal::Num { text, neg })
            }
            Tok::Ident(name) if !neg || name == "inf" || name == "NaN" => {
                self.bump();
                Ok(AttrVal::Ident { name, neg })
            }
            Tok::Punct('[') if !neg => {
                self.bump();
                let mut items = Vec::new();
                if !self.eat(']') {
                    loop {
                        let pos = self.pos();
                        items.push((self.attr_val(depth + 1)?, pos));
                        if self.eat(']') {
                            break;
                        }
                        self.expect(',', "`,` or `]`")?;
                    }
                }
                Ok(AttrVal::List(items))
            }
            Tok::Punct('{') if !neg => {
                self.bump();
                Ok(AttrVal::Record(self.attr_list('}', depth + 1)?))
            }
            _ if neg => self.unexpected("a number after `-`"),
            _ => self.unexpected("an attribute value"),
        }
    }
}

fn as_f64(v: &AttrVal) -> Option<f64> {
    let (x, neg) = match v {
        AttrVal::Num { text, neg } => (text.parse::<f64>().ok()?, *neg),
        AttrVal::Ident { name, neg } if name == "inf" => (f64::INFINITY, *neg),
        AttrVal::Ident { name, neg } if name == "NaN" => (f64::NAN, *neg),
        _ => return None,
    };
    Some(if neg { -x } else { x })
}

fn as_u64(v: &AttrVal) -> Option<u64> {
    match v {
        AttrVal::Num { text, neg: false } if text.bytes().all(|c| c.is_ascii_digit()) => text.parse().ok(),
        _ => None,
    }
}

fn as_ident(v: &AttrVal) -> Option<&str> {
    match v {
        AttrVal::Ident { name, neg: false } => Some(name),
        _ => None,
    }
}

/// The attributes of one op (or one record), taken one by one by name; what is
/// left over is unknown.
struct Attrs<'a> {
    what: &'a str,
    at: Pos,
    items: Vec<Attr>,
    taken: Vec<bool>,
    asked: Vec<&'static str>,
}

impl<'a> Attrs<'a> {
    fn new(what: &'a str, at: Pos, items: Vec<Attr>) -> Self {
        let taken = vec![false; items.len()];
        Attrs { what, at, items, taken, asked: Vec::new() }
    }

    fn get(&mut self, key: &'static str) -> PResult<(AttrVal, Pos)> {
        self.asked.push(key);
        let found = self.items.iter().position(|a| a.key == key);
        match found.and_then(|i| Some((i, self.items.get(i)?))) {
            Some((i, a)) => {
                let out = (a.val.clone(), a.val_pos);
                if let Some(t) = self.taken.get_mut(i) {
                    *t = true;
                }
                Ok(out)
            }
            None => Err(self.at.err(format!("{} needs attribute `{key}`", self.what))),
        }
    }

    fn bad(&self, key: &str, pos: Pos, must: &str) -> ParseError {
        pos.err(format!("attribute `{key}` of {} must be {must}", self.what))
    }

    /// Fails on an attribute nobody asked for.
    fn finish(&self) -> PResult<()> {
        for (a, taken) in self.items.iter().zip(&self.taken) {
            if !taken {
                let takes = if self.asked.is_empty() {
                    "it takes none".to_string()
                } else {
                    format!("it takes {}", self.asked.join(", "))
                };
                return Err(a.key_pos.err(format!("unknown attribute `{}` of {} ({takes})", a.key, self.what)));
            }
        }
        Ok(())
    }

    fn f64(&mut self, key: &'static str) -> PResult<f64> {
        let (v, pos) = self.get(key)?;
        as_f64(&v).ok_or_else(|| self.bad(key, pos, "a number"))
    }

    fn u64(&mut self, key: &'static str) -> PResult<u64> {
        let (v, pos) = self.get(key)?;
        as_u64(&v).ok_or_else(|| self.bad(key, pos, "an integer from 0 to 2^64 - 1"))
    }

    fn u32(&mut self, key: &'static str) -> PResult<u32> {
        let (v, pos) = self.get(key)?;
        as_u64(&v)
            .and_then(|x| u32::try_from(x).ok())
            .ok_or_else(|| self.bad(key, pos, "an integer from 0 to 2^32 - 1"))
    }

    fn usize(&mut self, key: &'static str) -> PResult<usize> {
        let (v, pos) = self.get(key)?;
        as_u64(&v).and_then(|x| usize::try_from(x).ok()).ok_or_else(|| self.bad(key, pos, "a non-negative integer"))
    }

    fn bool(&mut self, key: &'static str) -> PResult<bool> {
        let (v, pos) = self.get(key)?;
        match as_ident(&v) {
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            _ => Err(self.bad(key, pos, "`true` or `false`")),
        }
    }

    fn dim(&mut self, dims: &DimTable, key: &'static str) -> PResult<DimId> {
        let (v, pos) = self.get(key)?;
        let name = as_ident(&v).ok_or_else(|| self.bad(key, pos, "a dim name"))?;
        dims.lookup(name).ok_or_else(|| pos.err(format!("unknown dim `{name}`")))
    }

    fn dims(&mut self, dims: &DimTable, key: &'static str) -> PResult<Vec<DimId>> {
        let (v, pos) = self.get(key)?;
        let AttrVal::List(items) = v else {
            return Err(self.bad(key, pos, "a list of dims such as `[B, T]`"));
        };
        if let Some((_, p)) = items.get(MAX_RANK) {
            return Err(p.err(format!("too many dims in one shape (at most {MAX_RANK})")));
        }
        items
            .iter()
            .map(|(x, p)| {
                let name = as_ident(x).ok_or_else(|| self.bad(key, *p, "a list of dim names"))?;
                dims.lookup(name).ok_or_else(|| p.err(format!("unknown dim `{name}`")))
            })
            .collect()
    }

    fn f64s(&mut self, key: &'static str) -> PResult<Vec<f64>> {
        let (v, pos) = self.get(key)?;
        let AttrVal::List(items) = v else {
            return Err(self.bad(key, pos, "a list of numbers such as `[0.5, 0.5]`"));
        };
        items.iter().map(|(x, p)| as_f64(x).ok_or_else(|| self.bad(key, *p, "a list of numbers"))).collect()
    }

    fn u32s(&mut self, key: &'static str) -> PResult<Vec<u32>> {
        let (v, pos) = self.get(key)?;
        let AttrVal::List(items) = v else {
            return Err(self.bad(key, pos, "a list of integers such as `[0, 2]`"));
        };
        items
            .iter()
            .map(|(x, p)| {
                as_u64(x)
                    .and_then(|x| u32::try_from(x).ok())
                    .ok_or_else(|| self.bad(key, *p, "a list of integers from 0 to 2^32 - 1"))
            })
            .collect()
    }

    fn dtype(&mut self, key: &'static str) -> PResult<DType> {
        let (v, pos) = self.get(key)?;
        let name = as_ident(&v).ok_or_else(|| self.bad(key, pos, "a dtype"))?;
        name.parse::<DType>().map_err(|e| pos.err(e))
    }

    fn transition(&mut self, key: &'static str) -> PResult<Transition> {
        let (v, pos) = self.get(key)?;
        let names: Vec<&str> = Transition::ALL.iter().map(|t| t.name()).collect();
        let must = format!("one of {}", names.join(", "));
        let name = as_ident(&v).ok_or_else(|| self.bad(key, pos, &must))?;
        Transition::ALL.iter().copied().find(|t| t.name() == name).ok_or_else(|| self.bad(key, pos, &must))
    }

    /// `{causal = BOOL, window = INT | none, sinks = INT}`.
    fn mask(&mut self, key: &'static str) -> PResult<Mask> {
        let (v, pos) = self.get(key)?;
        let AttrVal::Record(items) = v else {
            return Err(self.bad(key, pos, "a record `{causal = BOOL, window = INT | none, sinks = INT}`"));
        };
        let mut m = Attrs::new("`mask`", pos, items);
        let causal = m.bool("causal")?;
        let (w, wpos) = m.get("window")?;
        let window = match as_ident(&w) {
            Some("none") => None,
            _ => Some(
                as_u64(&w)
                    .and_then(|x| u32::try_from(x).ok())
                    .ok_or_else(|| m.bad("window", wpos, "`none` or an integer from 0 to 2^32 - 1"))?,
            ),
        };
        let sinks = m.u32("sinks")?;
        m.finish()?;
        Ok(Mask { causal, window, sinks })
    }
}
