//! mixc's GPU backend: tile kernels → LLVM IR (through inkwell, LLVM 22) →
//! PTX for `sm_80`, `sm_90` and `sm_90a`.
//!
//! [`compile`] turns one [`Kernel`] into one PTX entry point, in one of two
//! tiers ([`Tier`]). The shared-memory tier takes any kernel: every tile op a
//! loop over its elements spread over the CTA's threads, tiles that threads
//! exchange in shared memory, `dot` on tensor cores (`codegen/mma.rs`). The
//! register tier (`codegen/rows.rs`) takes kernels whose tiles are all blocks
//! of the same rows with bf16 `dot`s (attention): tiles in registers in the
//! `mma.sync` fragment layout, operands staged with `cp.async` and read with
//! `ldmatrix`. Hopper's `wgmma`/TMA come later.
//!
//! # Kernel ABI (what a runtime must pass)
//!
//! * **Entry point**: a `.entry` named [`PtxKernel::name`] (the tile kernel's
//!   name with characters outside `[A-Za-z0-9_]` replaced by `_`), calling
//!   convention `ptx_kernel`.
//! * **Parameters**, in the tile kernel's parameter order:
//!   * a pointer parameter (`*dtype`) is a `.u64` global address (`ptr addrspace(1)`)
//!     of a buffer of elements of its dtype: **2-byte** IEEE `f16` or `bf16` for
//!     those dtypes (read and widened to f32; a store rounds to nearest even),
//!     4-byte `f32` for `f32` and `f64`, 4-byte `i32` for `i32`, `i8`, `i4` and
//!     `bool` (0 or 1). Offsets are element offsets (2-byte steps in a 16-bit
//!     buffer, which needs 2-byte alignment). Pointer parameters must not alias one another
//!     (they are `noalias`; read-only ones are loaded through the non-coherent cache);
//!   * a scalar parameter is `.f32` for float dtypes and `.s32` otherwise
//!     (`bool`: nonzero is true).
//! * **Grid**: one CTA per program id; `ctaid.x/y/z` are program-id axes 0/1/2.
//! * **Block**: exactly [`PtxKernel::threads`] threads along x (`.maxntid`); 128,
//!   or 256 for kernels with tiles of 4096 elements or more.
//! * **Shared memory**: all of it is *dynamic*: launch with
//!   `sharedMemBytes = `[`PtxKernel::shared_bytes`]; above 48 KiB first raise the
//!   function's `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`. At most 227 KiB.
//! * **Scratch**: tiles that do not fit in 227 KiB at once go to a per-CTA region
//!   of global memory: then [`PtxKernel::scratch_bytes`] is nonzero and the entry
//!   takes one extra trailing pointer parameter (see there).
//!
//! # How tiles are held
//!
//! Each tile value gets one representation (see `plan.rs`):
//! * `[]` scalars live in registers and every thread computes them alike (a
//!   scalar `load` is done by every thread, a scalar `store` by thread 0 only);
//! * constants, `arange`, and the views `reshape`/`broadcast`/`transpose` are
//!   never stored: an element is computed from its index;
//! * elementwise ops (and loads read once, with no store in between) are
//!   *lazy*: computed where they are read, fused into their consumer. One that
//!   is costly (transcendentals, division, loads) and read more than once per
//!   element (by a `dot`, through a broadcast, inside a deeper loop) is stored;
//! * everything else (`dot`, `reduce`, `cumsum`, loop-carried tiles, `if`
//!   results, stored elementwise values) is **materialized** in a shared-memory
//!   slot, dense row-major, 4 bytes per element (`f32` for float dtypes, `i32`
//!   for integers), 1 byte for `bool`.
//!
//! # Shared-memory layout
//!
//! One dynamic array `__mixc_smem` (16-byte aligned). Each materialized value
//! has a slot (its size rounded up to 16 bytes) at a fixed offset; a loop's
//! carried tile has one slot for the whole loop (the body's argument, the yield
//! is copied into it at the end of each iteration, and the loop's result reads
//! it). Offsets are assigned by liveness: a slot is live from its definition to
//! its last read (reads inside a loop that does not contain the definition keep
//! it live to that loop's end), and slots whose lifetimes do not overlap share
//! bytes (largest first, lowest offset that fits).
//!
//! # Threads and barriers
//!
//! A tile op over `n` elements runs `for e = tid; e < n; e += threads`, element
//! `e` of the result (row-major) computed by thread `e % threads`: elementwise
//! ops, loads, stores, `dot` (each thread a full k-loop for its outputs) and
//! `reduce` (each thread a whole row for its outputs); `cumsum` gives each
//! thread whole lines. Before an op, `bar.sync 0` is emitted when it reads
//! shared bytes written since the last barrier by another thread, writes bytes
//! read or written since then by another thread, or touches a global buffer
//! after a store to it since the last barrier (same-thread accesses: the flat
//! element index is preserved from writer to reader). Iterations of a loop whose
//! body touches shared memory or stores globally end with a barrier; `for` and
//! `if` conditions are scalars, so control flow is uniform across the CTA.
//!
//! # Numerics
//!
//! f32 throughout (f16/bf16 values are f32 rounded to their precision after
//! each op, as the tile interpreter's f32 mode does; f16/bf16 buffers are
//! only their storage). `div`, `sqrt` are IEEE
//! (`div.rn`, `sqrt.rn`); `exp`, `log`, `log1p`, `expm1`, `tanh`, `sin`, `cos`,
//! `pow` and the activations come from a small library in plain LLVM IR
//! (`math.ll`: Cephes-style reductions and polynomials, 1–3 ulp, tested on the
//! host against f64). Integer `div` truncates; `rem` and `floordiv` follow the
//! divisor's sign, as in the interpreter.
//!
//! # The register tier
//!
//! Held values are `Repr::Reg` in the plan and live in `Em::held`, found by
//! the identities of the index registers they are read at, so everything
//! lazy (index arithmetic, views, loads) evaluates unchanged at a lane's
//! positions. Its dynamic shared memory holds only the staged `dot` operands
//! (bf16, rows padded by 16 bytes; two buffers each where pipelined, plus
//! two dense f32 buffers for an f32 source). Pointers it copies with
//! `cp.async` must be 16-byte aligned (CUDA's allocations are).

mod codegen;
mod math;
mod plan;
mod registers;

use mixc_ir::tile::Kernel;
pub use registers::RegisterFeatures;

/// A GPU target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Sm80,
    Sm90,
    /// `sm_90a`: Hopper with its architecture-specific instructions (`wgmma`,
    /// `setmaxnreg`). Nothing uses them yet; the PTX targets `sm_90a`.
    Sm90a,
}

impl Target {
    /// The `-arch` / `.target` name.
    pub fn name(self) -> &'static str {
        match self {
            Target::Sm80 => "sm_80",
            Target::Sm90 => "sm_90",
            Target::Sm90a => "sm_90a",
        }
    }

    /// Parses `sm_80`, `sm_90` or `sm_90a`.
    pub fn parse(s: &str) -> Option<Target> {
        match s {
            "sm_80" => Some(Target::Sm80),
            "sm_90" => Some(Target::Sm90),
            "sm_90a" => Some(Target::Sm90a),
            _ => None,
        }
    }
}

/// One compiled kernel.
#[derive(Clone, Debug)]
pub struct PtxKernel {
    /// The PTX entry point's name.
    pub name: String,
    /// The PTX module (one `.entry`).
    pub ptx: String,
    /// The optimized LLVM IR the PTX was generated from.
    pub llvm_ir: String,
    /// Threads per CTA (x only).
    pub threads: u32,
    /// Dynamic shared memory per CTA, in bytes.
    pub shared_bytes: u32,
    /// Bytes of global scratch per CTA (0: none). When nonzero the entry has one
    /// more parameter after the tile kernel's: a global pointer to
    /// `scratch_bytes × (number of CTAs)` bytes, 16-byte aligned, that the
    /// kernel may clobber (CTA `x + X·(y + Y·z)` uses its own part).
    pub scratch_bytes: u32,
    /// Where the kernel holds its tiles.
    pub tier: Tier,
}

/// Where a compiled kernel holds its tiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tier {
    /// Materialized tiles in shared-memory slots, every op spread over the
    /// CTA's threads (any kernel).
    Shared,
    /// Tiles of `M` rows in registers in the `mma` accumulator layout, `dot`
    /// right operands staged in shared memory and read with `ldmatrix`
    /// (attention-like kernels with bf16 dots; see `codegen/rows.rs`).
    Registers,
}

/// Why a kernel could not be compiled.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PtxError {
    #[error("kernel `{kernel}`: `{op}`: {msg}")]
    Op { kernel: String, op: String, msg: String },
    #[error("kernel `{kernel}`: {msg}")]
    Kernel { kernel: String, msg: String },
    #[error("kernel `{kernel}`: LLVM: {msg}")]
    Llvm { kernel: String, msg: String },
}

/// The f32 math library's LLVM IR (`math.ll`), for tests that run it on the host.
#[doc(hidden)]
pub fn math_library_ir() -> Result<String, String> {
    math::library_ir()
}

/// How `dot` is computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Matmul {
    /// Plain f32 FMAs, each thread a whole k-loop for its outputs.
    Simt,
    /// Tensor cores (`mma.sync` m16n8k8 tf32), each f32 operand split into a
    /// tf32 high part and remainder and three products summed: f32 accuracy
    /// (≈ 1e-6 relative). The default.
    #[default]
    Tf32x3,
    /// Tensor cores (`mma.sync` m16n8k16 bf16): operands rounded to bf16, one
    /// product per step (bf16 models' accuracy, ≈ 4e-3 relative per product).
    Bf16,
}

impl Matmul {
    /// Parses `simt`, `tf32x3` or `bf16`.
    pub fn parse(s: &str) -> Option<Matmul> {
        match s {
            "simt" => Some(Matmul::Simt),
            "tf32x3" => Some(Matmul::Tf32x3),
            "bf16" => Some(Matmul::Bf16),
            _ => None,
        }
    }

    /// The name [`Matmul::parse`] reads.
    pub fn name(self) -> &'static str {
        match self {
            Matmul::Simt => "simt",
            Matmul::Tf32x3 => "tf32x3",
            Matmul::Bf16 => "bf16",
        }
    }
}

/// Code generation options.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Options {
    /// How `dot` is computed (tiles whose shapes the tensor-core path cannot
    /// take, e.g. fewer than 16 rows, use plain FMAs whatever this says).
    pub matmul: Matmul,
    /// Computes `exp` (and what builds on it: sigmoid, SiLU, softplus, ...)
    /// as the hardware's `ex2.approx` of `x·log2 e` (a few ulp, up to ~5e-6
    /// relative near ±80) instead of the math library's polynomial (~1 ulp).
    /// On by default: measured on an H200 (bf16, B=8, H=16, T=2048, padded
    /// slots) it made every benchmark mixer 4–11% faster, and the GPU checks
    /// pass at the f32 (1e-4) and bf16 (1e-2) tolerances. (Before slot rows
    /// were padded it made GLA 30% slower: its diagonal blocks' exponentials
    /// then waited behind 16-way bank conflicts.)
    pub fast_exp: bool,
    /// The CTAs per SM each kernel asks `ptxas` to make room for
    /// (`.minnctapersm`): it then keeps a thread's registers within
    /// `65536 / (threads · N)`, spilling past that. 1 (the default) lets a
    /// kernel take what it needs (up to 255 a thread): most kernels are
    /// compute- or latency-bound and spill-free at 1; memory-bound ones (decode
    /// steps) may gain from the occupancy more.
    pub ctas_per_sm: u32,
    /// Compiles kernels the register tier takes ([`Tier::Registers`]) there;
    /// off: every kernel in the shared-memory tier.
    pub register_tiles: bool,
    /// Rows each warp of a register-tier kernel owns: 16 (one `m16` tile),
    /// 32 (two tiles sharing every right-operand fragment read from shared
    /// memory, as FlashAttention-2 does: half the `ldmatrix` traffic, half
    /// the warps; loop-invariant left operands are then staged in shared
    /// memory to make room for the second tile), or 0 (the default): the
    /// backend's choice per kernel, 32 where it estimates two tiles fit the
    /// registers (`codegen::rows::analyze_rows`).
    pub warp_rows: u32,
    /// The register tier's forms for what no lane holds (on by default;
    /// `MIXC_SLOT_FORMS=0` turns them off, to compare): tiles of no held
    /// shape carried in shared-memory slots (mLSTM's running maximum and
    /// normalizer), `dot`s of one column, stores of unheld tiles by all
    /// threads, 16 rows a warp where 32 are refused, and shared-memory
    /// values computed together between one pair of barriers. Written
    /// without a card (2026-12-06), checked on an H100 on 2026-12-07 (every
    /// mixer of `bench/gpu/recurrences.sh` and the model bundles), where they
    /// took mLSTM from 7.04 to 3.30 ms and simple GLA from 1.75 to 1.62 ms
    /// (B = 8, T = 8192, bf16).
    pub slot_forms: bool,
}

/// Whether [`Options::slot_forms`] is on by default: unless
/// `MIXC_SLOT_FORMS=0` (read once a process: the cost model plans many
/// kernels).
pub fn slot_forms_default() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("MIXC_SLOT_FORMS").map_or(true, |v| v != "0"))
}

impl Default for Options {
    fn default() -> Options {
        Options {
            matmul: Matmul::default(),
            fast_exp: true,
            ctas_per_sm: 1,
            register_tiles: true,
            warp_rows: 0,
            slot_forms: slot_forms_default(),
        }
    }
}

/// What a kernel needs of an SM, from the backend's plan alone (no LLVM
/// involved, so it is cheap enough for the cost model to ask of every
/// candidate): the same figures [`PtxKernel`] reports once compiled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Resources {
    pub threads: u32,
    pub shared_bytes: u32,
    pub scratch_bytes: u32,
    /// Registers per thread, estimated from the plan (see
    /// [`RegisterFeatures::estimate`]); `ptxas` decides the real count.
    pub registers: u32,
    /// The share of the tile work inside loops that reads or writes the
    /// global scratch region (0 when nothing spills).
    pub spilled_share: f64,
    /// Where the kernel holds its tiles.
    pub tier: Tier,
    /// In the register tier: `dot` operands copied a loop iteration ahead.
    pub pipelined: bool,
    /// In the register tier: the rows each warp owns (16 or 32, as the
    /// default [`Options::warp_rows`] chooses); 0 in the shared tier.
    pub warp_rows: u32,
}

/// Plans `k` (slots, their shared-memory offsets and the spill to global
/// scratch, the CTA size, an estimate of its registers) without generating
/// code, for `dot`s computed as `matmul` says.
pub fn resources(k: &Kernel, matmul: Matmul) -> Result<Resources, PtxError> {
    if let Ok(rp) = codegen::rows::analyze_rows(k, matmul, false, 0, slot_forms_default()) {
        return Ok(Resources {
            threads: rp.threads(),
            warp_rows: 16 * rp.tiles,
            shared_bytes: rp.shared_bytes,
            scratch_bytes: 0,
            registers: rp.registers(k),
            spilled_share: 0.0,
            tier: Tier::Registers,
            pipelined: !rp.pipelined.is_empty(),
        });
    }
    let defs = plan::Defs::new(k);
    let p = plan::plan(k, &defs)?;
    let registers = registers::features(k, &defs, &p, matmul).estimate();
    let spilled_share = registers::spilled_share(k, &defs, &p);
    Ok(Resources {
        threads: p.threads,
        shared_bytes: p.shared_bytes,
        scratch_bytes: p.scratch_bytes,
        registers,
        spilled_share,
        tier: Tier::Shared,
        pipelined: false,
        warp_rows: 0,
    })
}

/// What [`Resources::registers`] is estimated from, for `k` compiled with `matmul`.
pub fn register_features(k: &Kernel, matmul: Matmul) -> Result<RegisterFeatures, PtxError> {
    let defs = plan::Defs::new(k);
    let p = plan::plan(k, &defs)?;
    Ok(registers::features(k, &defs, &p, matmul))
}

/// Whether the register tier ([`Tier::Registers`]) takes `k` with `dot`s
/// computed as `matmul` says; if not, why.
pub fn register_tier(k: &Kernel, matmul: Matmul) -> Result<(), String> {
    register_tier_with(k, matmul, slot_forms_default())
}

/// [`register_tier`] with [`Options::slot_forms`] as `slot_forms` says.
pub fn register_tier_with(k: &Kernel, matmul: Matmul, slot_forms: bool) -> Result<(), String> {
    codegen::rows::analyze(k, matmul, false, 16, slot_forms).map(|_| ())
}

/// Compiles one tile kernel to PTX for `target` with the default options.
pub fn compile(k: &Kernel, target: Target) -> Result<PtxKernel, PtxError> {
    codegen::compile(k, target, Options::default())
}

/// Compiles one tile kernel to PTX for `target` with `opts`.
pub fn compile_with(k: &Kernel, target: Target, opts: Options) -> Result<PtxKernel, PtxError> {
    codegen::compile(k, target, opts)
}
