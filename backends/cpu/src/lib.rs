//! The CPU backend: a tile kernel becomes one native function through Cranelift.
//!
//! [`CpuKernel::compile`] turns a [`Kernel`] into Cranelift IR and JIT-compiles it
//! to `extern "C" fn(args: *const u64, pid_x: i32, pid_y: i32, pid_z: i32)`,
//! which runs one program of the kernel's grid. `args[i]` holds parameter `i`:
//! a buffer's address, an i32 scalar sign-extended to 64 bits, or an f32
//! scalar's bits (`f32::to_bits`) in the low 32 bits.
//!
//! The code calls nothing and needs no linking (no relocations; constants sit
//! after the code, addressed relative to it): it is copied into a private
//! executable mapping, and [`CpuKernel::machine_code`] hands it out for a
//! cache to store and [`CpuKernel::from_machine_code`] to load back, under the
//! same [`host_fingerprint`]. Code that does need linking (none today) goes
//! through a Cranelift JIT module instead and is not cacheable.
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
//!   With FMA, every product is `vbroadcastss` from memory into a register
//!   that the FMA then overwrites (two instructions per four multiply-adds).
//! - A reduction whose only reader is a `where` with an index-only condition
//!   (the causal triangle of a score tile) skips the elements it masks off.
//! - Integer division by a scalar (index arithmetic) runs four lanes through an
//!   f64 reciprocal with an exact correction; other divisions lane by lane,
//!   never trapping (division by zero gives 0).
//! - `exp`, `log`, `sigmoid`, `softplus`, `tanh`, `sin`, `cos`, `pow`, ... are
//!   inline polynomial approximations (module `math`), ≈1–2 ulp.
//! - Vector constants come from a per-function pool in a stack slot, loaded at
//!   each use through a base address read once per block (Cranelift would
//!   otherwise hoist them into registers and spill), so that x86 folds them
//!   into the instructions that use them.
//! - Loops that carry values test at the top: the values computed in the body
//!   have one use (the back edge), which lets Cranelift fold loads into
//!   instructions (a value with two uses marks its whole computation as
//!   shared, and nothing in it is folded).
//!
//! # Targets
//! x86-64 with SSE4.1 (rounding instructions); FMA when the CPU has it (the
//! math polynomials and the dot micro-kernel; without it, the micro-kernel
//! multiplies and adds separately). Other Cranelift targets compile, with
//! lane-by-lane integer division, through a JIT module.
//!
//! # Known speed gaps
//! - Vectors are 128 bits (Cranelift has no wider ones on x86): half of what
//!   AVX2 machines' FMA units take. The dot micro-kernel runs at about 60–70%
//!   of the 128-bit FMA peak, limited by instructions per multiply-add (x86
//!   FMAs overwrite a multiplicand in Cranelift's lowering, so accumulators
//!   rotate through registers and need a move per loop iteration).
//! - Elementwise kernels that the lowering flattens to one axis compute their
//!   strided offsets with integer division and remainder (three of each per
//!   vector for a `[B, T, H, D]` input): a third of such a kernel's time.
//!   Two-axis tiles (rows × a contiguous `D`) would need no division.
//! - `exp` costs about 25 instructions per four lanes (range reduction,
//!   degree-5 polynomial, two-step scaling for subnormal results); GLA's
//!   intra-chunk part evaluates one per element of a `[16, 16, 128]` tile.

mod gen;
mod math;
mod plan;

use cranelift_codegen::ir::{types, AbiParam, Signature, UserFuncName};
use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, Linkage, Module};
use mixc_ir::tile::Kernel;
use std::sync::{Mutex, OnceLock};

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

/// Where a kernel's machine code lives.
enum Code {
    /// Self-contained code (no relocations) copied into a private executable
    /// mapping: what [`CpuKernel::machine_code`] hands out for caching.
    Mapped(memmap2::Mmap),
    /// Code that needed linking (relocations), owned by a JIT module; only
    /// touched again when dropped.
    Jit(Box<Mutex<Option<JITModule>>>),
}

/// A compiled kernel, ready to run.
pub struct CpuKernel {
    name: String,
    func: KernelFn,
    params: usize,
    frame_bytes: usize,
    code_bytes: usize,
    code: Code,
}

// The module is only used under its mutex (and at drop); the mapping is
// read-only; the function pointer is plain code that any thread may run.
unsafe impl Send for CpuKernel {}
unsafe impl Sync for CpuKernel {}

impl std::fmt::Debug for CpuKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuKernel").field("name", &self.name).field("params", &self.params).finish()
    }
}

impl Drop for CpuKernel {
    fn drop(&mut self) {
        let Code::Jit(module) = &mut self.code else { return };
        let module = match module.get_mut() {
            Ok(m) => m.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(m) = module {
            // Safety: the function pointer dies with `self`; nothing else refers to the code.
            unsafe { m.free_memory() };
        }
    }
}

/// The host's target: Cranelift's native ISA with the backend's settings,
/// detected once per process.
fn host_isa() -> Result<OwnedTargetIsa, CpuError> {
    static ISA: OnceLock<Result<OwnedTargetIsa, CpuError>> = OnceLock::new();
    ISA.get_or_init(make_host_isa).clone()
}

fn make_host_isa() -> Result<OwnedTargetIsa, CpuError> {
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

/// Sources whose every change may change the machine code of a kernel.
const CODEGEN_SOURCES: [&str; 4] =
    [include_str!("lib.rs"), include_str!("gen.rs"), include_str!("plan.rs"), include_str!("math.rs")];

/// FNV-1a, 64 bits: a stable hash (unlike `std`'s, it never changes between
/// Rust releases), for fingerprints and checksums.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Everything besides the kernel itself that decides the machine code this
/// process generates: the backend's version and sources, Cranelift's
/// version, and the target (triple, ISA features, code generator settings).
/// Code cached under another fingerprint must not be reused.
pub fn host_fingerprint() -> Result<String, CpuError> {
    static FP: OnceLock<Result<String, CpuError>> = OnceLock::new();
    FP.get_or_init(|| {
        let isa = host_isa()?;
        let mut src = 0u64;
        for s in CODEGEN_SOURCES {
            src = src.rotate_left(5) ^ fnv1a64(s.as_bytes());
        }
        let isa_flags: Vec<String> = isa.isa_flags().iter().map(|v| v.to_string()).collect();
        Ok(format!(
            "mixc-backend-cpu {} (sources {src:016x}); cranelift 0.135; {} {}; {}\n{}",
            env!("CARGO_PKG_VERSION"),
            isa.name(),
            isa.triple(),
            isa_flags.join(" "),
            isa.flags()
        ))
    })
    .clone()
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

/// Whether code without relocations may be copied into memory of our own and
/// run there (x86-64: instruction caches are coherent, so no flush is needed).
const MAPPED_CODE: bool = cfg!(target_arch = "x86_64");

/// Copies code into a fresh private mapping and makes it executable.
fn map_code(code: &[u8]) -> std::io::Result<memmap2::Mmap> {
    let mut m = memmap2::MmapMut::map_anon(code.len().max(1))?;
    m[..code.len()].copy_from_slice(code);
    m.make_exec()
}

impl CpuKernel {
    /// Compiles a kernel to native code.
    pub fn compile(k: &Kernel) -> Result<CpuKernel, CpuError> {
        let isa = host_isa()?;
        let (func, plan_frame) = build(k, &isa)?;
        let err = |m: String| CpuError::Kernel { kernel: k.name.clone(), msg: m };
        let mut ctx = cranelift_codegen::Context::for_function(func);
        let mut ctrl = cranelift_codegen::control::ControlPlane::default();
        let compiled = ctx.compile(&*isa, &mut ctrl).map_err(|e| err(format!("cranelift: {:?}", e.inner)))?;
        // The whole frame: tiles, spills, saved registers, return address and frame pointer.
        let frame = compiled.buffer.frame_layout().map_or(0, |f| f.frame_to_fp_offset as usize + 16);
        let frame_bytes = plan_frame.max(frame);
        if MAPPED_CODE && compiled.buffer.relocs().is_empty() {
            let code = compiled.code_buffer();
            // Safety: the code was just generated for this host with the kernel signature.
            return unsafe { CpuKernel::from_machine_code(&k.name, code, k.params.len(), frame_bytes) };
        }
        // Code that refers to something outside itself: link it through a JIT module.
        drop(ctx);
        let (func, _) = build(k, &isa)?;
        let mut module = JITModule::new(JITBuilder::with_isa(isa.clone(), default_libcall_names()));
        let sig = signature(&isa);
        let id = module.declare_function("mixc_kernel", Linkage::Export, &sig).map_err(|e| err(format!("{e}")))?;
        let mut ctx = module.make_context();
        ctx.func = func;
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
            func: code,
            params: k.params.len(),
            frame_bytes,
            code_bytes,
            code: Code::Jit(Box::new(Mutex::new(Some(module)))),
        })
    }

    /// A kernel from machine code that [`CpuKernel::machine_code`] gave (e.g.
    /// read back from a cache), with the metadata that came with it.
    ///
    /// # Safety
    /// `code` must be exactly the bytes `machine_code` returned for a kernel
    /// with `params` parameters and a frame of `frame_bytes`, compiled in a
    /// process with the same [`host_fingerprint`]: they are run as they are.
    pub unsafe fn from_machine_code(
        name: &str,
        code: &[u8],
        params: usize,
        frame_bytes: usize,
    ) -> Result<CpuKernel, CpuError> {
        let err = |m: String| CpuError::Kernel { kernel: name.to_string(), msg: m };
        if !MAPPED_CODE {
            return Err(err("this host runs only code linked by the JIT module".into()));
        }
        if code.is_empty() {
            return Err(err("no code for the kernel".into()));
        }
        let map = map_code(code).map_err(|e| err(format!("cannot map executable memory: {e}")))?;
        // Safety: the mapping holds a function with the kernel signature (the caller's promise).
        let func: KernelFn = unsafe { std::mem::transmute::<*const u8, KernelFn>(map.as_ptr()) };
        Ok(CpuKernel {
            name: name.to_string(),
            func,
            params,
            frame_bytes,
            code_bytes: code.len(),
            code: Code::Mapped(map),
        })
    }

    /// The kernel's machine code, when it is self-contained (no relocations:
    /// it runs wherever it is copied): what a disk cache may store.
    pub fn machine_code(&self) -> Option<&[u8]> {
        match &self.code {
            Code::Mapped(m) => m.get(..self.code_bytes),
            Code::Jit(_) => None,
        }
    }

    /// The kernel's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many arguments [`CpuKernel::run_program`] reads.
    pub fn params(&self) -> usize {
        self.params
    }

    /// Bytes of stack a program of the kernel takes (tiles, spills, saved
    /// registers): the thread running it needs this much, plus its own.
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

/// The Cranelift IR of a kernel after Cranelift's optimizations (what
/// instruction selection sees), for inspecting the backend's output.
pub fn optimized_clif_of(k: &Kernel) -> Result<String, CpuError> {
    let isa = host_isa()?;
    let (func, _) = build(k, &isa)?;
    let mut ctx = cranelift_codegen::Context::for_function(func);
    let mut ctrl = cranelift_codegen::control::ControlPlane::default();
    ctx.compile(&*isa, &mut ctrl)
        .map_err(|e| CpuError::Kernel { kernel: k.name.clone(), msg: format!("cranelift: {:?}", e.inner) })?;
    Ok(ctx.func.display().to_string())
}

/// The Cranelift IR text of a kernel, without keeping the JIT.
pub fn clif_of(k: &Kernel) -> Result<String, CpuError> {
    let isa = host_isa()?;
    build(k, &isa).map(|(func, _)| func.display().to_string())
}
