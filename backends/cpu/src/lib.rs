//! The CPU backend: a tile kernel becomes one native function through Cranelift.
//!
//! [`CpuKernel::compile`] turns a [`Kernel`] into Cranelift IR and JIT-compiles it
//! to `extern "C" fn(args: *const u64, pid_x: i32, pid_y: i32, pid_z: i32)`,
//! which runs one program of the kernel's grid. `args[i]` holds parameter `i`:
//! a buffer's address, an i32 scalar sign-extended to 64 bits, or an f32
//! scalar's bits (`f32::to_bits`) in the low 32 bits.
//!
//! # Memory layout of buffers
//! Float buffers (`f32`, and `f16`/`bf16`/`f64`, which are storage formats the
//! tile IR computes in f32) hold `f32` elements; `i32` buffers hold `i32`, and so
//! do `i8`, `i4` and `bool` buffers (one `i32` per element, bools as 0/1). A
//! store to an `f16`/`bf16` buffer rounds the value to that format (kept as
//! f32), a store to an `i8`/`i4` buffer saturates to its range, as the tile
//! interpreter does.
//!
//! # Code shape
//! The generated function holds the kernel's whole loop nest: it calls nothing.
//! - Tiles live in stack slots, reused by liveness (`plan`); loop-carried tiles
//!   are updated in place where the body allows it (a yield computed straight
//!   into its carried slot, a dying initial tile adopted as the carried slot, a
//!   dot accumulating into a dying tile). The frame size is
//!   [`CpuKernel::frame_bytes`]: threads running programs need that much stack.
//! - Elementwise chains (and broadcasts, transposes, unit-axis reshapes) are
//!   fused: evaluated where consumed, inside the consumer's loop; a value is
//!   materialized only when recomputing it would cost too much.
//! - Every op is an explicit loop over `f32x4`/`i32x4` vectors along the
//!   innermost axis, with a scalar tail. Loads and stores whose offsets are
//!   provably consecutive (affine analysis of the index arithmetic) are vector
//!   accesses; others check at run time. Masks never let a buffer be touched
//!   where they are false (masked-off lanes read/write a private scratch).
//!   Masks that provably hold (range analysis) disappear.
//! - `dot` is a register-blocked micro-kernel (4 rows × 8 columns of
//!   accumulators); B is packed when its rows are not contiguous (4×4 register
//!   transposes for `trans_b`); the accumulator operand is read in the epilogue.
//! - Integer division by a scalar (index arithmetic) runs four lanes through an
//!   f64 reciprocal with an exact correction; other divisions lane by lane,
//!   never trapping (division by zero gives 0).
//! - `exp`, `log`, `sigmoid`, `softplus`, `tanh`, `sin`, `cos`, `pow`, ... are
//!   inline polynomial approximations (module `math`), ≈1–2 ulp.
//! - Vector constants come from a per-function pool in a stack slot, loaded at
//!   each use (Cranelift would otherwise hoist them into registers and spill).
//!
//! # Targets
//! x86-64 with SSE4.1 (rounding instructions); FMA when the CPU has it (used
//! by the math polynomials; the dot kernel uses separate multiplies and adds,
//! which keep accumulators in place on x86). Other Cranelift targets compile,
//! with lane-by-lane integer division.

mod gen;
mod math;
mod plan;

use cranelift_codegen::ir::{types, AbiParam, Signature, UserFuncName};
use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, Linkage, Module};
use mixc_ir::tile::Kernel;
use std::sync::Mutex;

/// Errors compiling a kernel.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CpuError {
    #[error("cpu backend: kernel `{kernel}`: `{op}`: {msg}")]
    Op { kernel: String, op: String, msg: String },
    #[error("cpu backend: kernel `{kernel}`: {msg}")]
    Kernel { kernel: String, msg: String },
    #[error("cpu backend: {0}")]
    Host(String),
}

/// The native function of a kernel.
type KernelFn = unsafe extern "C" fn(*const u64, i32, i32, i32);

/// A JIT-compiled kernel.
pub struct CpuKernel {
    name: String,
    /// The function before compilation, printed on demand by [`CpuKernel::clif`].
    func_ir: cranelift_codegen::ir::Function,
    clif: std::sync::OnceLock<String>,
    func: KernelFn,
    params: usize,
    frame_bytes: usize,
    code_bytes: usize,
    /// Owns the executable memory; only touched again when dropped.
    module: Mutex<Option<JITModule>>,
}

// The module is only used under its mutex (and at drop); the function pointer
// is plain code that any thread may run.
unsafe impl Send for CpuKernel {}
unsafe impl Sync for CpuKernel {}

impl std::fmt::Debug for CpuKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuKernel").field("name", &self.name).field("params", &self.params).finish()
    }
}

impl Drop for CpuKernel {
    fn drop(&mut self) {
        let module = match self.module.get_mut() {
            Ok(m) => m.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(m) = module {
            // Safety: the function pointer dies with `self`; nothing else refers to the code.
            unsafe { m.free_memory() };
        }
    }
}

/// The host's target: Cranelift's native ISA with the backend's settings.
fn host_isa() -> Result<OwnedTargetIsa, CpuError> {
    let mut fb = settings::builder();
    let set = |fb: &mut settings::Builder, k: &str, v: &str| {
        fb.set(k, v).map_err(|e| CpuError::Host(format!("setting {k}={v}: {e}")))
    };
    set(&mut fb, "opt_level", "speed")?;
    // Redundant-load elimination would forward the constant pool's stores into
    // long-lived registers (see `math::ConstPool`); tile reuse is planned anyway.
    set(&mut fb, "enable_alias_analysis", "false")?;
    set(&mut fb, "enable_verifier", if cfg!(debug_assertions) { "true" } else { "false" })?;
    // Big tile frames must touch every guard page on the way down.
    set(&mut fb, "enable_probestack", "true")?;
    set(&mut fb, "probestack_strategy", "inline")?;
    set(&mut fb, "use_colocated_libcalls", "false")?;
    set(&mut fb, "is_pic", "false")?;
    let isa_builder = cranelift_native::builder().map_err(|e| CpuError::Host(format!("unsupported host: {e}")))?;
    isa_builder.finish(settings::Flags::new(fb)).map_err(|e| CpuError::Host(format!("target: {e}")))
}

/// What the code generator may use on this target.
#[derive(Clone, Copy)]
pub(crate) struct Target {
    pub fma: bool,
    /// x86-64: some vector conversions use x86-specific instructions.
    pub x86: bool,
    pub frontend: cranelift_codegen::isa::TargetFrontendConfig,
}

/// Whether elementwise loops, loads and stores run four lanes at a time.
pub(crate) const VECTORIZE: bool = true;

fn target_of(isa: &OwnedTargetIsa) -> Result<Target, CpuError> {
    // Rounding (floor, nearest, trunc) must stay inline: no libcalls.
    if !isa.has_round() {
        return Err(CpuError::Host("the CPU backend needs native rounding (SSE4.1 on x86-64)".into()));
    }
    Ok(Target { fma: isa.has_native_fma(), x86: isa.name() == "x64", frontend: isa.frontend_config() })
}

fn signature(isa: &OwnedTargetIsa) -> Signature {
    let mut sig = Signature::new(isa.default_call_conv());
    sig.params.push(AbiParam::new(types::I64));
    for _ in 0..3 {
        sig.params.push(AbiParam::new(types::I32));
    }
    sig
}

/// Builds the kernel's function; returns it with its frame size.
fn build(k: &Kernel, isa: &OwnedTargetIsa) -> Result<(cranelift_codegen::ir::Function, usize), CpuError> {
    let target = target_of(isa)?;
    let mut func = cranelift_codegen::ir::Function::with_name_signature(UserFuncName::user(0, 0), signature(isa));
    let frame = gen::generate(k, &mut func, target)?;
    Ok((func, frame))
}

impl CpuKernel {
    /// Compiles a kernel to native code.
    pub fn compile(k: &Kernel) -> Result<CpuKernel, CpuError> {
        let isa = host_isa()?;
        let (func, frame_bytes) = build(k, &isa)?;
        let err = |m: String| CpuError::Kernel { kernel: k.name.clone(), msg: m };
        let mut module = JITModule::new(JITBuilder::with_isa(isa.clone(), default_libcall_names()));
        let sig = signature(&isa);
        let id = module.declare_function("mixc_kernel", Linkage::Export, &sig).map_err(|e| err(format!("{e}")))?;
        let mut ctx = module.make_context();
        ctx.func = func.clone();
        module.define_function(id, &mut ctx).map_err(|e| err(format!("cranelift: {e:?}")))?;
        let code_bytes = ctx.compiled_code().map(|c| c.code_info().total_size as usize).unwrap_or(0);
        module.clear_context(&mut ctx);
        module.finalize_definitions().map_err(|e| err(format!("{e}")))?;
        let ptr = module.get_finalized_function(id);
        if ptr.is_null() {
            return Err(err("no code for the kernel".into()));
        }
        // Safety: the function was built with exactly this signature.
        let code: KernelFn = unsafe { std::mem::transmute::<*const u8, KernelFn>(ptr) };
        Ok(CpuKernel {
            name: k.name.clone(),
            func_ir: func,
            clif: std::sync::OnceLock::new(),
            func: code,
            params: k.params.len(),
            frame_bytes,
            code_bytes,
            module: Mutex::new(Some(module)),
        })
    }

    /// The Cranelift IR text of the kernel's function (for `--emit clif`).
    pub fn clif(&self) -> &str {
        self.clif.get_or_init(|| self.func_ir.display().to_string())
    }

    /// The kernel's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many arguments [`CpuKernel::run_program`] reads.
    pub fn params(&self) -> usize {
        self.params
    }

    /// Bytes of stack the kernel's tiles take (the thread running a program
    /// needs this much stack, plus a little).
    pub fn frame_bytes(&self) -> usize {
        self.frame_bytes
    }

    /// The address and size of the kernel's machine code (for profilers'
    /// symbol maps, e.g. `/tmp/perf-PID.map`).
    pub fn code_range(&self) -> (usize, usize) {
        (self.func as usize, self.code_bytes)
    }

    /// Runs one program. `args[i]` is, for a pointer param, the address of its buffer (as u64),
    /// for an i32 scalar param the value sign-extended to i64 then cast to u64, for an f32
    /// scalar param `f32::to_bits` as u64.
    ///
    /// # Safety
    /// Pointers must be valid for every offset the kernel touches, and `args`
    /// must hold one entry per kernel parameter (missing ones read as 0).
    pub unsafe fn run_program(&self, args: &[u64], pid: [u32; 3]) {
        let [x, y, z] = pid.map(|p| p as i32);
        if args.len() >= self.params {
            (self.func)(args.as_ptr(), x, y, z);
        } else {
            let mut padded = args.to_vec();
            padded.resize(self.params, 0);
            (self.func)(padded.as_ptr(), x, y, z);
        }
    }
}

/// The machine code of a kernel as text (Cranelift's disassembly of its
/// lowered instructions), for inspecting what the backend emits.
pub fn disasm_of(k: &Kernel) -> Result<String, CpuError> {
    let isa = host_isa()?;
    let (func, _) = build(k, &isa)?;
    let mut ctx = cranelift_codegen::Context::for_function(func);
    ctx.set_disasm(true);
    let mut ctrl = cranelift_codegen::control::ControlPlane::default();
    let code = ctx
        .compile(&*isa, &mut ctrl)
        .map_err(|e| CpuError::Kernel { kernel: k.name.clone(), msg: format!("cranelift: {:?}", e.inner) })?;
    Ok(code.vcode.clone().unwrap_or_default())
}

/// The Cranelift IR text of a kernel, without keeping the JIT.
pub fn clif_of(k: &Kernel) -> Result<String, CpuError> {
    let isa = host_isa()?;
    build(k, &isa).map(|(func, _)| func.display().to_string())
}
