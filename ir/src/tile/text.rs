//! The text form of tile kernels and programs. Kernels print to the form that
//! [`super::parse::parse_kernel`] reads back (`parse(print(k)) == k`); its
//! grammar is written out there.

use super::*;
use std::fmt::Write;

fn v(x: TValue) -> String {
    format!("%{}", x.0)
}

fn ty(t: &TileType) -> String {
    let s: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
    format!("{}[{}]", t.dtype, s.join(", "))
}

fn values(xs: &[TValue]) -> String {
    xs.iter().map(|x| v(*x)).collect::<Vec<_>>().join(", ")
}

/// A kernel or parameter name: bare when it is an identifier, else quoted with
/// the escapes of the graph text form.
pub(super) fn name(s: &str) -> String {
    if crate::graph::is_ident(s) {
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

/// A parameter reference: its name where that names one parameter only, else
/// its index (`#2`), so that kernels with clashing names still round-trip.
fn param_ref(k: &Kernel, p: ParamId) -> String {
    match k.params.get(p.index()) {
        Some(pp) if k.params.iter().filter(|q| q.name == pp.name).count() == 1 => name(&pp.name),
        _ => format!("#{}", p.0),
    }
}

/// `yield` and the yielded values (none: a bare `yield`).
fn yields(ys: &[TValue]) -> String {
    if ys.is_empty() {
        "yield".into()
    } else {
        format!("yield {}", values(ys))
    }
}

fn op_text(k: &Kernel, s: &Stmt, indent: usize) -> String {
    let pad = "  ".repeat(indent);
    let opt = |m: &Option<TValue>| m.map(|m| format!(", mask = {}", v(m))).unwrap_or_default();
    match &s.op {
        TOp::ProgramId(a) => format!("program_id[axis = {a}]"),
        TOp::Param(p) => format!("param[{}]", param_ref(k, *p)),
        TOp::Const(c) => format!("const[{c:?}]"),
        TOp::Arange(n) => format!("arange[{n}]"),
        TOp::Unary(_, x) | TOp::Broadcast(x) | TOp::Reshape(x) | TOp::Transpose(x) => {
            format!("{}({})", s.op.mnemonic(), v(*x))
        }
        TOp::Cast(x, d) => format!("cast[{d}]({})", v(*x)),
        TOp::Binary(_, a, b) => format!("{}({}, {})", s.op.mnemonic(), v(*a), v(*b)),
        TOp::Select(c, a, b) => format!("where({}, {}, {})", v(*c), v(*a), v(*b)),
        TOp::Load { ptr, offsets, mask, other } => {
            format!("load[{}, other = {other:?}]({}{})", param_ref(k, *ptr), v(*offsets), opt(mask))
        }
        TOp::Store { ptr, offsets, value, mask } => {
            format!("store[{}]({}, {}{})", param_ref(k, *ptr), v(*offsets), v(*value), opt(mask))
        }
        TOp::Dot { a, b, acc, trans_a, trans_b } => format!(
            "dot[trans_a = {trans_a}, trans_b = {trans_b}]({}, {}{})",
            v(*a),
            v(*b),
            acc.map(|c| format!(", acc = {}", v(c))).unwrap_or_default()
        ),
        TOp::Reduce { x, axis, .. } => format!("{}[axis = {axis}]({})", s.op.mnemonic(), v(*x)),
        TOp::Cumsum { x, axis, reverse, exclusive } => {
            format!("cumsum[axis = {axis}, reverse = {reverse}, exclusive = {exclusive}]({})", v(*x))
        }
        TOp::For { lo, hi, step, init, body } => {
            // The induction variable is `i32[]` unless annotated.
            let args: Vec<String> = body
                .args
                .iter()
                .enumerate()
                .map(|(i, a)| match k.types.get(a.index()) {
                    Some(t) if i == 0 && *t != TileType::scalar(crate::dtype::DType::I32) => {
                        format!("{} : {}", v(*a), ty(t))
                    }
                    _ => v(*a),
                })
                .collect();
            let carried = if init.is_empty() { String::new() } else { format!("; {}", values(init)) };
            let mut s2 = format!("for[{}]({}, {}, {}{carried}) {{\n", args.join(", "), v(*lo), v(*hi), v(*step));
            print_block(k, body, indent + 1, &mut s2);
            let _ = write!(s2, "{pad}  {}\n{pad}}}", yields(&body.yields));
            s2
        }
        TOp::If { cond, then, otherwise } => {
            let mut s2 = format!("if({}) {{\n", v(*cond));
            print_block(k, then, indent + 1, &mut s2);
            let _ = writeln!(s2, "{pad}  {}\n{pad}}} else {{", yields(&then.yields));
            print_block(k, otherwise, indent + 1, &mut s2);
            let _ = write!(s2, "{pad}  {}\n{pad}}}", yields(&otherwise.yields));
            s2
        }
    }
}

fn print_block(k: &Kernel, b: &Block, indent: usize, out: &mut String) {
    let pad = "  ".repeat(indent);
    for s in &b.stmts {
        let lhs = if s.results.is_empty() { String::new() } else { format!("{} = ", values(&s.results)) };
        let types: Vec<String> =
            s.results.iter().map(|r| k.types.get(r.index()).map(ty).unwrap_or_else(|| "?".into())).collect();
        let tys = if types.is_empty() { String::new() } else { format!(" : {}", types.join(", ")) };
        let _ = writeln!(out, "{pad}{lhs}{}{tys}", op_text(k, s, indent));
    }
}

/// Marks every value a block defines (arguments and results, nested blocks
/// included).
fn mark_defined(b: &Block, defined: &mut [bool]) {
    fn mark(xs: &[TValue], defined: &mut [bool]) {
        for x in xs {
            if let Some(d) = defined.get_mut(x.index()) {
                *d = true;
            }
        }
    }
    mark(&b.args, defined);
    for s in &b.stmts {
        mark(&s.results, defined);
        match &s.op {
            TOp::For { body, .. } => mark_defined(body, defined),
            TOp::If { then, otherwise, .. } => {
                mark_defined(then, defined);
                mark_defined(otherwise, defined);
            }
            _ => {}
        }
    }
}

/// Prints a kernel. Value `%N` is `TValue(N)`; arena slots that no statement
/// defines (left behind by passes that delete statements) are declared with
/// `unused %N : type`, so that the arena round-trips too.
pub fn print_kernel(k: &Kernel) -> String {
    let params: Vec<String> = k
        .params
        .iter()
        .map(|p| match &p.kind {
            ParamKind::Ptr(d) => format!("{}: *{d}", name(&p.name)),
            ParamKind::Scalar(d) => format!("{}: {d}", name(&p.name)),
        })
        .collect();
    let mut out = format!("kernel {}({}) {{\n", name(&k.name), params.join(", "));
    print_block(k, &k.body, 1, &mut out);
    let mut defined = vec![false; k.types.len()];
    mark_defined(&k.body, &mut defined);
    for (i, t) in k.types.iter().enumerate() {
        if !defined[i] {
            let _ = writeln!(out, "  unused %{i} : {}", ty(t));
        }
    }
    if !k.body.yields.is_empty() {
        let _ = writeln!(out, "  {}", yields(&k.body.yields));
    }
    out.push_str("}\n");
    out
}

fn count(dims: &crate::dims::DimTable, c: &Count) -> String {
    match c {
        Count::Const(x) => x.to_string(),
        Count::Dim(d) => dims.name(*d).to_string(),
        Count::Mul(a, b) => format!("{} * {}", count(dims, a), count(dims, b)),
        Count::Add(a, b) => format!("({} + {})", count(dims, a), count(dims, b)),
        Count::CeilDiv(a, by) => format!("cdiv({}, {by})", count(dims, a)),
    }
}

/// Prints a program: buffers, kernels, launches.
pub fn print_program(p: &Program) -> String {
    let mut out = format!("program {} {{\n", p.name);
    for (i, b) in p.buffers.iter().enumerate() {
        let role = match &b.role {
            BufferRole::Input { name, optional } => format!("input{} {name}", if *optional { "?" } else { "" }),
            BufferRole::Output(n) => format!("output {n}"),
            BufferRole::Temp => "temp".into(),
        };
        let shape: Vec<String> = b.shape.iter().map(|c| count(&p.dims, c)).collect();
        let _ = writeln!(out, "  buffer #{i} {} : {}[{}] ({role})", b.name, b.dtype, shape.join(", "));
    }
    for k in &p.kernels {
        for line in print_kernel(k).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    for l in &p.launches {
        let grid: Vec<String> = l.grid.iter().map(|c| count(&p.dims, c)).collect();
        let args: Vec<String> = l
            .args
            .iter()
            .map(|a| match a {
                Arg::Buffer(i) => format!("#{i}"),
                Arg::Size(c) => count(&p.dims, c),
                Arg::Float(x) => format!("{x:?}"),
            })
            .collect();
        let name = p.kernels.get(l.kernel).map(|k| k.name.as_str()).unwrap_or("?");
        let _ = writeln!(out, "  launch {name}[{}]({})", grid.join(", "), args.join(", "));
    }
    out.push_str("}\n");
    out
}
