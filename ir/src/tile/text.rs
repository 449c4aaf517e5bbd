//! The text form of tile kernels and programs (printing; see `print`).

use super::*;
use std::fmt::Write;

fn v(x: TValue) -> String {
    format!("%{}", x.0)
}

fn ty(t: &TileType) -> String {
    let s: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
    format!("{}[{}]", t.dtype, s.join(", "))
}

fn print_block(k: &Kernel, b: &Block, indent: usize, out: &mut String) {
    let pad = "  ".repeat(indent);
    for s in &b.stmts {
        let res: Vec<String> = s.results.iter().map(|r| v(*r)).collect();
        let lhs = if res.is_empty() { String::new() } else { format!("{} = ", res.join(", ")) };
        let types: Vec<String> = s.results.iter().map(|r| ty(k.ty(*r))).collect();
        let tys = if types.is_empty() { String::new() } else { format!(" : {}", types.join(", ")) };
        let param = |p: &ParamId| k.params.get(p.index()).map(|p| p.name.clone()).unwrap_or_default();
        let opt = |m: &Option<TValue>| m.map(|m| format!(", mask = {}", v(m))).unwrap_or_default();
        let body = match &s.op {
            TOp::ProgramId(a) => format!("program_id[axis = {a}]"),
            TOp::Param(p) => format!("param[{}]", param(p)),
            TOp::Const(c) => format!("const[{c:?}]"),
            TOp::Arange(n) => format!("arange[{n}]"),
            TOp::Unary(_, x) | TOp::Broadcast(x) | TOp::Reshape(x) | TOp::Transpose(x) => {
                format!("{}({})", s.op.mnemonic(), v(*x))
            }
            TOp::Cast(x, d) => format!("cast[{d}]({})", v(*x)),
            TOp::Binary(_, a, b) => format!("{}({}, {})", s.op.mnemonic(), v(*a), v(*b)),
            TOp::Select(c, a, b) => format!("where({}, {}, {})", v(*c), v(*a), v(*b)),
            TOp::Load { ptr, offsets, mask, other } => {
                format!("load[{}, other = {other:?}]({}{})", param(ptr), v(*offsets), opt(mask))
            }
            TOp::Store { ptr, offsets, value, mask } => {
                format!("store[{}]({}, {}{})", param(ptr), v(*offsets), v(*value), opt(mask))
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
                let args: Vec<String> = body.args.iter().map(|a| v(*a)).collect();
                let inits: Vec<String> = init.iter().map(|a| v(*a)).collect();
                let mut s2 = format!(
                    "for[{}]({}, {}, {}; {}) {{\n",
                    args.join(", "),
                    v(*lo),
                    v(*hi),
                    v(*step),
                    inits.join(", ")
                );
                print_block(k, body, indent + 1, &mut s2);
                let ys: Vec<String> = body.yields.iter().map(|a| v(*a)).collect();
                let _ = write!(s2, "{pad}  yield {}\n{pad}}}", ys.join(", "));
                s2
            }
            TOp::If { cond, then, otherwise } => {
                let mut s2 = format!("if({}) {{\n", v(*cond));
                print_block(k, then, indent + 1, &mut s2);
                let ys: Vec<String> = then.yields.iter().map(|a| v(*a)).collect();
                let _ = writeln!(s2, "{pad}  yield {}\n{pad}}} else {{", ys.join(", "));
                print_block(k, otherwise, indent + 1, &mut s2);
                let ys: Vec<String> = otherwise.yields.iter().map(|a| v(*a)).collect();
                let _ = write!(s2, "{pad}  yield {}\n{pad}}}", ys.join(", "));
                s2
            }
        };
        let _ = writeln!(out, "{pad}{lhs}{body}{tys}");
    }
}

/// Prints a kernel.
pub fn print_kernel(k: &Kernel) -> String {
    let params: Vec<String> = k
        .params
        .iter()
        .map(|p| match &p.kind {
            ParamKind::Ptr(d) => format!("{}: *{d}", p.name),
            ParamKind::Scalar(d) => format!("{}: {d}", p.name),
        })
        .collect();
    let mut out = format!("kernel {}({}) {{\n", k.name, params.join(", "));
    print_block(k, &k.body, 1, &mut out);
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
