//! The f32 math library linked into every kernel module (`math.ll`): exp, log,
//! log1p, expm1, the activations, tanh, sin, cos and pow, as internal
//! always-inline LLVM functions in plain IR, so the host can run (and the tests
//! check) exactly the code the GPU runs.

const SOURCE: &str = include_str!("math.ll");

/// LLVM's exact hex spelling of an f32 constant (a double holding the f32).
pub(crate) fn f32_hex(x: f64) -> String {
    format!("0x{:016X}", (x as f32 as f64).to_bits())
}

/// The library's IR text with every `F(x)` constant spelled in hex.
pub(crate) fn library_ir() -> Result<String, String> {
    let mut out = String::with_capacity(SOURCE.len());
    let mut rest = SOURCE;
    while let Some(at) = rest.find("F(") {
        // `F(` only ever starts a constant in the library (never inside a name).
        out.push_str(&rest[..at]);
        let tail = &rest[at + 2..];
        let end = tail.find(')').ok_or_else(|| "math library: unclosed F(".to_string())?;
        let x: f64 =
            tail[..end].trim().parse().map_err(|e| format!("math library: constant `{}`: {e}", &tail[..end]))?;
        out.push_str(&f32_hex(x));
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The library with `mixc_exp` (and so everything built on it: sigmoid,
/// SiLU, softplus, tanh, ...) as `2^(x·log2 e)` on the hardware's `ex2.approx`.
pub(crate) fn with_fast_exp(lib: &str) -> Result<String, String> {
    let start = lib.find("define float @mixc_exp(").ok_or("math library: no mixc_exp")?;
    let len = lib[start..].find("\n}\n").ok_or("math library: mixc_exp has no end")? + 3;
    let fast = format!(
        "define float @mixc_exp(float %x) #0 {{\n  %t = fmul float %x, {}\n  \
         %r = call float @llvm.nvvm.ex2.approx.ftz.f32(float %t)\n  ret float %r\n}}\n\n\
         declare float @llvm.nvvm.ex2.approx.ftz.f32(float)\n",
        f32_hex(std::f64::consts::LOG2_E)
    );
    Ok(format!("{}{}{}", &lib[..start], fast, &lib[start + len..]))
}

/// The library function computing a unary op, if the op needs one.
pub(crate) fn unary_fn(f: mixc_ir::ops::UnaryFn) -> Option<&'static str> {
    use mixc_ir::ops::UnaryFn as U;
    Some(match f {
        U::Exp => "mixc_exp",
        U::Log => "mixc_log",
        U::Sigmoid => "mixc_sigmoid",
        U::LogSigmoid => "mixc_logsigmoid",
        U::Softplus => "mixc_softplus",
        U::Silu => "mixc_silu",
        U::Elu => "mixc_elu",
        U::EluPlusOne => "mixc_elu_plus_one",
        U::Tanh => "mixc_tanh",
        U::Sin => "mixc_sin",
        U::Cos => "mixc_cos",
        _ => return None,
    })
}
