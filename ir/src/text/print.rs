//! The printer of the graph text form.
//!
//! Printing never fails and never panics, even on a graph that does not verify
//! (a pass's output being debugged): ids out of range print as `<bad ...>`, which
//! the parser then rejects.

use std::fmt::Write;

use crate::dims::{DimId, SizeExpr};
use crate::graph::{is_ident, Graph, OpNode, TensorType, ValueId};
use crate::ops::OpKind;

/// Prints a graph in the canonical text form.
pub(super) fn print_graph(g: &Graph) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "graph {} {{", name(&g.name));
    for (_, d) in g.dims.iter() {
        match &d.size {
            None => {
                let _ = writeln!(out, "  dim {}", d.name);
            }
            Some(e) => {
                let _ = writeln!(out, "  dim {} = {}", d.name, expr(g, e));
            }
        }
    }
    if !g.dims.is_empty() && !g.ops.is_empty() {
        out.push('\n');
    }
    for op in &g.ops {
        print_op(g, op, &mut out);
    }
    let has_body = !g.dims.is_empty() || !g.ops.is_empty();
    if has_body && !g.outputs.is_empty() {
        out.push('\n');
    }
    for (n, v) in &g.outputs {
        let _ = writeln!(out, "  out {} = {}", name(n), value(g, *v));
    }
    out.push_str("}\n");
    out
}

/// A name as written: bare when it is an identifier, else a quoted string.
pub(super) fn name(s: &str) -> String {
    if is_ident(s) {
        return s.to_string();
    }
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            '\t' => q.push_str("\\t"),
            '\r' => q.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(q, "\\u{{{:x}}}", c as u32);
            }
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

fn value(g: &Graph, v: ValueId) -> String {
    match g.values.get(v.index()) {
        Some(val) => format!("%{}", name(&val.name)),
        None => format!("%<bad value {}>", v.0),
    }
}

fn dim(g: &Graph, d: DimId) -> String {
    if d.index() < g.dims.len() {
        g.dims.name(d).to_string()
    } else {
        format!("<bad dim {}>", d.0)
    }
}

fn dims(g: &Graph, s: &[DimId]) -> String {
    let names: Vec<String> = s.iter().map(|d| dim(g, *d)).collect();
    format!("[{}]", names.join(", "))
}

fn expr(g: &Graph, e: &SizeExpr) -> String {
    let mut refs = Vec::new();
    e.refs(&mut refs);
    if refs.iter().any(|d| d.index() >= g.dims.len()) {
        return "<bad size expression>".into();
    }
    g.dims.fmt_expr(e)
}

fn ty(g: &Graph, t: &TensorType) -> String {
    format!("{}{}", t.dtype, dims(g, &t.shape))
}

/// f64 in Rust's shortest round-trip form (`0.0625`, `-0.0`, `1e-6`, `inf`, `NaN`).
fn float(x: f64) -> String {
    format!("{x:?}")
}

/// Whether an op's operands print as `role = %v` (roles that say something) or
/// positionally (only the generic roles `x`, `a`, `b`, `cond`, `x0`, `x1`, ...).
pub(super) fn named_operands(kind: &OpKind, n: usize) -> bool {
    let generic = |r: &str| {
        matches!(r, "x" | "a" | "b" | "cond")
            || r.strip_prefix('x').is_some_and(|i| !i.is_empty() && i.bytes().all(|c| c.is_ascii_digit()))
    };
    kind.operand_roles(n).iter().any(|r| !generic(r))
}

/// Every attribute of a kind, in canonical order, as written. `input` and
/// `const` take their dtype and shape from the result type instead.
fn attrs(g: &Graph, kind: &OpKind) -> Vec<(&'static str, String)> {
    let d = |x: &DimId| dim(g, *x);
    let b = |x: &bool| x.to_string();
    match kind {
        OpKind::Input { .. } | OpKind::Unary(_) | OpKind::Binary(_) | OpKind::Select | OpKind::Dequantize => vec![],
        OpKind::Const { value, .. } => vec![("value", float(*value))],
        OpKind::Iota { dim } => vec![("dim", d(dim))],
        OpKind::Indices { dim, values } => {
            let v: Vec<String> = values.iter().map(u32::to_string).collect();
            vec![("dim", d(dim)), ("values", format!("[{}]", v.join(", ")))]
        }
        OpKind::Cast(to) => vec![("to", to.name().to_string())],
        OpKind::Clamp { lo, hi } => vec![("lo", float(*lo)), ("hi", float(*hi))],
        OpKind::Broadcast { shape } | OpKind::Permute { shape } | OpKind::Reshape { shape } => {
            vec![("shape", dims(g, shape))]
        }
        OpKind::Einsum { out } => vec![("out", dims(g, out))],
        OpKind::Reduce { dims: rd, .. } => vec![("dims", dims(g, rd))],
        OpKind::Cumsum { dim, exclusive, reverse } => {
            vec![("dim", d(dim)), ("exclusive", b(exclusive)), ("reverse", b(reverse))]
        }
        OpKind::Softmax { dim } => vec![("dim", d(dim))],
        OpKind::Normalize { dim, eps, .. } => vec![("dim", d(dim)), ("eps", float(*eps))],
        OpKind::Concat { axis, dim } => vec![("axis", axis.to_string()), ("dim", d(dim))],
        OpKind::Slice { axis, start, dim } => {
            vec![("axis", axis.to_string()), ("start", start.to_string()), ("dim", d(dim))]
        }
        OpKind::Gather { along, into } | OpKind::Scatter { along, into } | OpKind::TopK { along, into } => {
            vec![("along", d(along)), ("into", d(into))]
        }
        OpKind::CausalConv1d { time, taps, tail, has_tail, silu } => {
            vec![("time", d(time)), ("taps", d(taps)), ("tail", d(tail)), ("has_tail", b(has_tail)), ("silu", b(silu))]
        }
        OpKind::Rope { time, dim, theta } => {
            vec![("time", d(time)), ("dim", d(dim)), ("theta", float(*theta))]
        }
        OpKind::Attention { scale, mask } => {
            let window = mask.window.map_or("none".to_string(), |w| w.to_string());
            let mask = format!("{{causal = {}, window = {window}, sinks = {}}}", mask.causal, mask.sinks);
            vec![("scale", float(*scale)), ("mask", mask)]
        }
        OpKind::LinearRecurrence(r) => vec![
            ("transition", r.transition.name().to_string()),
            ("scale", float(r.scale)),
            ("normalize", b(&r.normalize)),
            ("eps", float(r.eps)),
            ("has_initial", b(&r.has_initial)),
        ],
        OpKind::Mix { weights } => {
            let w: Vec<String> = weights.iter().map(|x| float(*x)).collect();
            vec![("weights", format!("[{}]", w.join(", ")))]
        }
        OpKind::KvAppend { dim } => vec![("dim", d(dim))],
        OpKind::WindowRetain { keep, dim } => vec![("keep", keep.to_string()), ("dim", d(dim))],
        OpKind::SinkWindowRetain { sinks, window, dim } => {
            vec![("sinks", sinks.to_string()), ("window", window.to_string()), ("dim", d(dim))]
        }
        OpKind::Quantize { bits, groups, group } => {
            vec![("bits", bits.to_string()), ("groups", d(groups)), ("group", d(group))]
        }
    }
}

fn print_op(g: &Graph, op: &OpNode, out: &mut String) {
    let results: Vec<String> = op.results.iter().map(|r| value(g, *r)).collect();
    let _ = write!(out, "  {} = ", results.join(", "));
    match &op.kind {
        OpKind::Input { name: input, dtype, shape, optional } => {
            let q = if *optional { "?" } else { "" };
            let _ = writeln!(out, "input{q} {} : {}", name(input), ty(g, &TensorType::new(*dtype, shape)));
            return;
        }
        OpKind::Const { dtype, shape, .. } => {
            // The result type is the constant's dtype and shape.
            let attrs = attrs(g, &op.kind);
            let a: Vec<String> = attrs.iter().map(|(k, v)| format!("{k} = {v}")).collect();
            let _ = writeln!(out, "const[{}] : {}", a.join(", "), ty(g, &TensorType::new(*dtype, shape)));
            return;
        }
        _ => {}
    }
    out.push_str(&op.kind.mnemonic());
    let attrs = attrs(g, &op.kind);
    if !attrs.is_empty() {
        let a: Vec<String> = attrs.iter().map(|(k, v)| format!("{k} = {v}")).collect();
        let _ = write!(out, "[{}]", a.join(", "));
    }
    if !op.operands.is_empty() {
        let names = value_list(g, &op.kind, &op.operands);
        let _ = write!(out, "({names})");
    }
    let types: Vec<String> = op
        .results
        .iter()
        .map(|r| match g.values.get(r.index()) {
            Some(v) => ty(g, &v.ty),
            None => "<bad value>".into(),
        })
        .collect();
    let _ = writeln!(out, " : {}", types.join(", "));
}

fn value_list(g: &Graph, kind: &OpKind, operands: &[ValueId]) -> String {
    let n = operands.len();
    let vals = operands.iter().map(|v| value(g, *v));
    let items: Vec<String> = if named_operands(kind, n) {
        let roles = kind.operand_roles(n);
        vals.enumerate()
            .map(|(i, v)| match roles.get(i) {
                Some(r) => format!("{r} = {v}"),
                None => format!("<extra> = {v}"),
            })
            .collect()
    } else {
        vals.collect()
    };
    items.join(", ")
}
