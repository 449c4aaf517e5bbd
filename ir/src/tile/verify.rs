//! The tile verifier: every value defined once before use (dominance by
//! block nesting), every statement's types as inferred; and for programs,
//! every launch's arguments of the kind and dtype its kernel declares.

use super::build::infer;
use super::*;

pub fn verify(k: &Kernel) -> Result<(), TileError> {
    let mut defined = vec![false; k.types.len()];
    check_block(k, &k.body, &mut defined, true)
}

/// Checks that every launch names a kernel and passes one argument per
/// parameter, of its kind: a buffer of the pointer's dtype, or a scalar.
pub fn verify_program(p: &Program) -> Result<(), TileError> {
    for (i, l) in p.launches.iter().enumerate() {
        let Some(k) = p.kernels.get(l.kernel) else {
            return Err(TileError::Program(format!("launch {i} names kernel {}, which does not exist", l.kernel)));
        };
        let err = |msg: String| TileError::Kernel { kernel: k.name.clone(), msg: format!("launch {i}: {msg}") };
        if l.args.len() != k.params.len() {
            return Err(err(format!("{} arguments for {} parameters", l.args.len(), k.params.len())));
        }
        for (a, param) in l.args.iter().zip(&k.params) {
            match (a, &param.kind) {
                (Arg::Buffer(b), ParamKind::Ptr(d)) => {
                    let Some(buf) = p.buffers.get(*b) else {
                        return Err(err(format!("`{}` is bound to buffer {b}, which does not exist", param.name)));
                    };
                    if buf.dtype != *d {
                        return Err(err(format!(
                            "`{}: *{d}` is bound to buffer `{}` of {}",
                            param.name, buf.name, buf.dtype
                        )));
                    }
                }
                (Arg::Size(_) | Arg::Float(_), ParamKind::Scalar(_)) => {}
                _ => return Err(err(format!("the argument for `{}` is not of its kind", param.name))),
            }
        }
    }
    Ok(())
}

fn check_block(k: &Kernel, b: &Block, defined: &mut Vec<bool>, top: bool) -> Result<(), TileError> {
    let err = |op: &str, msg: String| TileError::Op { kernel: k.name.clone(), op: op.to_string(), msg };
    let mut local = Vec::new();
    let define = |v: TValue, defined: &mut Vec<bool>, local: &mut Vec<TValue>| -> Result<(), TileError> {
        match defined.get_mut(v.index()) {
            Some(d) if !*d => {
                *d = true;
                local.push(v);
                Ok(())
            }
            Some(_) => Err(err("block", format!("value {v:?} is defined twice"))),
            None => Err(err("block", format!("value {v:?} has no type"))),
        }
    };
    for a in &b.args {
        define(*a, defined, &mut local)?;
    }
    for s in &b.stmts {
        let name = s.op.mnemonic();
        for v in s.op.operands() {
            if !defined.get(v.index()).copied().unwrap_or(false) {
                return Err(err(&name, format!("operand {v:?} is used before it is defined")));
            }
        }
        match &s.op {
            TOp::For { body, .. } => check_block(k, body, defined, false)?,
            TOp::If { then, otherwise, .. } => {
                check_block(k, then, defined, false)?;
                check_block(k, otherwise, defined, false)?;
            }
            _ => {}
        }
        let declared = s.results.first().and_then(|r| k.types.get(r.index()));
        let want = infer(k, &s.op, declared).map_err(|m| err(&name, m))?;
        if want.len() != s.results.len() {
            return Err(err(&name, format!("{} results, inferred {}", s.results.len(), want.len())));
        }
        for (r, t) in s.results.iter().zip(&want) {
            if k.types.get(r.index()) != Some(t) {
                return Err(err(&name, format!("result {r:?} has the wrong type (inferred {t:?})")));
            }
            define(*r, defined, &mut local)?;
        }
    }
    for y in &b.yields {
        if !defined.get(y.index()).copied().unwrap_or(false) {
            return Err(err("yield", format!("{y:?} is not defined")));
        }
    }
    if !top {
        // Values of a nested block are not visible after it.
        for v in local {
            defined[v.index()] = false;
        }
    }
    Ok(())
}
