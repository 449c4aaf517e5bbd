//! A bf16 matrix–vector product for the few rows of a decode step, as PTX:
//! `y[r, n] (+)= Σ_k x[r, k] · W[n, k]` for `r < R ≤ 4` rows.
//!
//! cuBLAS's GEMMs at one row reach a third to three quarters of the copy
//! rate on a decode step's 4–46 MB matrices (H100, 2026-12-06): a decode
//! step is a stream over the weights, and a GEMM tiled for many rows wastes
//! most of it. Here each warp owns one output `n` and walks its weight row
//! in 16-byte loads (8 bf16 per lane, `U` loads in flight per lane), the
//! `R` rows of `x` (read through the read-only cache, shared by every warp
//! of the SM) alongside; the warp sums its lanes with shuffles and lane 0
//! writes the `R` results (f32, optionally added to what `y` holds, or
//! bf16). Accumulation is f32, as cuBLAS's `CUBLAS_COMPUTE_32F`.
//!
//! Requirements (checked by the caller): `inner` a multiple of 8 and every
//! buffer 16-byte aligned (device allocations are), so that a lane's 8
//! values never straddle a row.

use crate::glue::Act;

/// Rows the kernels take at most.
pub const MAX_ROWS: usize = 4;

/// Warps (outputs in flight) per CTA.
pub const WARPS: u32 = 8;

/// Output buffers a segmented kernel writes at most.
pub const SEGMENTS: usize = 8;

/// What a kernel does with its sums.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    /// `y[r, n] (+)= Σ` in the given dtype (`+=` only for f32, by a flag).
    Plain(Act),
    /// The outputs are consecutive segments of up to [`SEGMENTS`]
    /// projections stacked into one `W` (q, k, v, ... of the same input):
    /// output `n` of segment `s` (rows `start_s..end_s` of `W`) goes to
    /// bf16 `y_s[r, n − start_s]`, each segment's own buffer. One launch
    /// instead of one per projection, and one longer stream over weights.
    Segments,
    /// SwiGLU folded in: `W` is `[gate; up]` (`[2·out, inner]`) and
    /// `y[r, n] = silu(gate_n · x_r) · (up_n · x_r)` in bf16, both sums in
    /// the same warp: no f32 `[rows, 2·out]` round trip, no kernel of its own.
    SwiGlu,
}

impl Epilogue {
    /// Weight rows a warp reads per output.
    fn pairs(self) -> usize {
        match self {
            Epilogue::SwiGlu => 2,
            _ => 1,
        }
    }
}

/// Where a kernel's `x` comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// bf16 `x[rows, inner]` in global memory.
    Act,
    /// RMSNorm folded in: each CTA computes `bf16(x_r / rms(x_r) · w)` from
    /// the f32 residual `x` and the norm's f32 weight `w` into shared memory
    /// first (`rows · inner` bf16 of dynamic shared memory, see
    /// [`shared_bytes`]): the norm needs no kernel and no buffer of its own.
    RmsNorm,
}

/// Dynamic shared memory of a kernel reading `input` for `rows` rows of `inner`.
pub fn shared_bytes(input: Input, rows: usize, inner: usize) -> usize {
    match input {
        Input::Act => 0,
        Input::RmsNorm => NORM_SUMS + 2 * rows * inner,
    }
}

/// Bytes before the normed `x` in shared memory: a partial sum per warp.
const NORM_SUMS: usize = 4 * WARPS as usize;

/// The kernel for `rows` rows with `input` and `epilogue`.
pub fn kernel_name(rows: usize, input: Input, epilogue: Epilogue) -> String {
    let base = match epilogue {
        Epilogue::Plain(a) => format!("mixc_gemv_r{rows}_{}", a.suffix()),
        Epilogue::Segments => format!("mixc_gemv_seg_r{rows}"),
        Epilogue::SwiGlu => format!("mixc_gemv_swiglu_r{rows}"),
    };
    match input {
        Input::Act => base,
        Input::RmsNorm => format!("{base}_rms"),
    }
}

/// Every epilogue a family of product kernels is generated for (here and
/// in [`crate::skinny`]).
pub(crate) fn epilogues() -> Vec<Epilogue> {
    let mut out: Vec<Epilogue> = Act::ALL.iter().map(|a| Epilogue::Plain(*a)).collect();
    out.extend([Epilogue::Segments, Epilogue::SwiGlu]);
    out
}

fn variants() -> Vec<(Input, Epilogue)> {
    [Input::Act, Input::RmsNorm].into_iter().flat_map(|i| epilogues().into_iter().map(move |e| (i, e))).collect()
}

/// The output parameters of an `epilogue`'s kernels: `p_y`, or the
/// segments' buffers `p_y0…` and ends `p_e0…`.
pub(crate) fn output_params(epilogue: Epilogue) -> String {
    match epilogue {
        Epilogue::Plain(_) | Epilogue::SwiGlu => ".param .u64 p_y".to_string(),
        Epilogue::Segments => {
            let ys: Vec<String> = (0..SEGMENTS).map(|i| format!(".param .u64 p_y{i}")).collect();
            let ends: Vec<String> = (0..SEGMENTS).map(|i| format!(".param .u32 p_e{i}")).collect();
            format!("{}, {}", ys.join(", "), ends.join(", "))
        }
    }
}

/// The accumulate flag's parameter (plain epilogues only), last in the list.
pub(crate) fn acc_param(epilogue: Epilogue) -> &'static str {
    if matches!(epilogue, Epilogue::Plain(_)) {
        ", .param .u32 p_acc"
    } else {
        ""
    }
}

/// Loads [`output_params`] (and the accumulate flag): `y` into `%rd3` as a
/// global address, or the segments' into `%ys0…` and their ends into
/// `%e0…`; a plain epilogue's flag into `%r3`.
pub(crate) fn load_outputs(epilogue: Epilogue) -> String {
    let mut s = String::new();
    if epilogue == Epilogue::Segments {
        s += &format!("  .reg .b64 %ys<{SEGMENTS}>;\n  .reg .b32 %e<{SEGMENTS}>;\n");
        for i in 0..SEGMENTS {
            s += &format!("  ld.param.u64 %ys{i}, [p_y{i}];\n  cvta.to.global.u64 %ys{i}, %ys{i};\n");
            s += &format!("  ld.param.u32 %e{i}, [p_e{i}];\n");
        }
    } else {
        s += "  ld.param.u64 %rd3, [p_y];\n  cvta.to.global.u64 %rd3, %rd3;\n";
    }
    if let Epilogue::Plain(_) = epilogue {
        s += "  ld.param.u32 %r3, [p_acc];\n";
    }
    s
}

/// The segment of output `n` (the last `s` with `n ≥ end_{s−1}`, from
/// [`load_outputs`]' registers): its buffer into `ptr`, its first output
/// into `start`, its length into `len` (`pred` and `tmp` are scratch).
pub(crate) fn segment_of(n: &str, ptr: &str, start: &str, len: &str, pred: &str, tmp: &str) -> String {
    let mut s = format!("  mov.b64 {ptr}, %ys0;\n  mov.u32 {start}, 0;\n  mov.u32 {len}, %e0;\n");
    for i in 1..SEGMENTS {
        let prev = i - 1;
        s += &format!("  setp.ge.u32 {pred}, {n}, %e{prev};\n  sub.u32 {tmp}, %e{i}, %e{prev};\n");
        s += &format!("  selp.b64 {ptr}, %ys{i}, {ptr}, {pred};\n  selp.b32 {start}, %e{prev}, {start}, {pred};\n");
        s += &format!("  selp.b32 {len}, {tmp}, {len}, {pred};\n");
    }
    s
}

/// `out = silu(g) · u = g / (1 + 2^(−g·log2 e)) · u`: SwiGLU's formula for
/// the glue kernel and the GEMVs alike (`tmp` is scratch).
pub(crate) fn silu_times(g: &str, u: &str, out: &str, tmp: &str) -> String {
    format!(
        "  mul.f32 {tmp}, {g}, 0fBFB8AA3B;\n  ex2.approx.f32 {tmp}, {tmp};\n  add.f32 {tmp}, {tmp}, 0f3F800000;\n  \
         div.rn.f32 {out}, {g}, {tmp};\n  mul.f32 {out}, {out}, {u};\n"
    )
}

/// Every kernel's name.
pub fn kernel_names() -> Vec<String> {
    (1..=MAX_ROWS).flat_map(|r| variants().into_iter().map(move |(i, e)| kernel_name(r, i, e))).collect()
}

/// The PTX of every kernel (appended to the glue module), after the
/// declaration of the dynamic shared memory the normed inputs use.
/// `dependent`: the kernels wait for the grid before them with
/// `griddepcontrol` (sm_90+), so that a launch marked as a programmatic
/// dependent one (see [`grid_dependency`]) starts early.
pub fn ptx(dependent: bool) -> String {
    let kernels: String =
        (1..=MAX_ROWS).flat_map(|r| variants().into_iter().map(move |(i, e)| kernel(r, i, e, dependent))).collect();
    format!(".extern .shared .align 16 .b8 xs[];\n\n{kernels}")
}

/// Programmatic dependent launch (sm_90+): a kernel launched with
/// `CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION` may start while
/// the grid before it still runs; it must not read that grid's results (or
/// write what that grid reads) before `griddepcontrol.wait`, which returns
/// once the grid has finished and its writes are visible. What comes before
/// the wait here reads only weights. `launch_dependents` lets the next
/// such launch start as soon as every CTA of this one is resident.
/// Without the attribute both instructions do nothing.
pub(crate) fn grid_dependency(dependent: bool) -> &'static str {
    if dependent {
        "  griddepcontrol.launch_dependents;\n  griddepcontrol.wait;\n"
    } else {
        ""
    }
}

/// 16-byte loads in flight per lane and step: fewer with more rows (each
/// adds 4 registers per load for `x`) and with two weight rows per output.
/// With one row, 8: a row of 2048 weights is then one step, one memory
/// latency (4 a step streamed 2048 × 2048 at 1.1 TB/s on an H100, 2026-12-06).
fn unroll(rows: usize, pairs: usize) -> usize {
    let u = match rows {
        1 => 8,
        2 => 4,
        _ => 2,
    };
    (u / pairs).max(1)
}

/// Lines of PTX that widen the bf16 pair in b32 `word` into f32 `lo`, `hi`.
fn widen(word: &str, lo: &str, hi: &str) -> String {
    format!("  shl.b32 %s1, {word}, 16;\n  mov.b32 {lo}, %s1;\n  and.b32 %s2, {word}, -65536;\n  mov.b32 {hi}, %s2;\n")
}

/// The parameter list of a kernel: `W`, the input's (`x`; or the f32
/// residual, the norm's weight and eps), the outputs', `out`, `inner`
/// (and the accumulate flag of a plain one).
fn params(input: Input, epilogue: Epilogue) -> String {
    let x = match input {
        Input::Act => ".param .u64 p_x",
        Input::RmsNorm => ".param .u64 p_x, .param .u64 p_nw, .param .f32 p_eps",
    };
    let (ys, acc) = (output_params(epilogue), acc_param(epilogue));
    format!(".param .u64 p_w, {x}, {ys}, .param .u32 p_out, .param .u32 p_inner{acc}")
}

/// 16-byte loads of the residual (and of the norm's weight) each thread
/// issues at once in the RMSNorm prologue: 4 × 4 values × 256 threads cover
/// 4096 values, a row of a model with d_model ≤ 4096, in one round trip.
const NORM_LOADS: usize = 4;

/// Values a CTA covers per round of the prologue's loads.
const NORM_BLOCK: usize = NORM_LOADS * 4 * 32 * WARPS as usize;

/// `%q7`: thread `t`'s first value `%q3 + 4t + 1024j` of load `j` of a
/// prologue round; `%p8`: whether it lies inside the row.
fn norm_value(j: usize) -> String {
    format!(
        "  shl.b32 %q7, %q1, 2;\n  add.u32 %q7, %q7, %q3;\n  add.u32 %q7, %q7, {};\n  setp.lt.u32 %p8, %q7, %r2;\n",
        j * 4 * 32 * WARPS as usize
    )
}

/// Loads (predicated on `k < inner`, zero beyond) of round `%q3` of row `r`:
/// thread `t`'s values `%q3 + 4t + 1024j … + 3` ([`norm_value`]) of the f32
/// buffer at `base` (`per_row`: the residual, rows of `%r2`; else the norm's
/// weight) into `{regs}{4j} …`.
fn norm_loads(r: usize, base: &str, per_row: bool, regs: &str) -> String {
    let mut s = String::new();
    for j in 0..NORM_LOADS {
        s += &norm_value(j);
        if per_row {
            s += &format!("  mad.lo.u32 %q9, %r2, {r}, %q7;\n  mul.wide.u32 %rd12, %q9, 4;\n");
        } else {
            s += "  mul.wide.u32 %rd12, %q7, 4;\n";
        }
        s += &format!("  add.s64 %rd12, {base}, %rd12;\n");
        let v: Vec<String> = (0..4).map(|i| format!("{regs}{}", 4 * j + i)).collect();
        for reg in &v {
            s += &format!("  mov.f32 {reg}, 0f00000000;\n");
        }
        s += &format!("  @%p8 ld.global.v4.f32 {{{}}}, [%rd12];\n", v.join(", "));
    }
    s
}

/// The RMSNorm prologue: every row of the f32 residual (`%rd2`), normed by
/// the weight (`%rd13`) and eps (`%f7`), into shared memory as bf16 at
/// `xs + NORM_SUMS` (as the glue's RMSNorm: `x · (1 / sqrt(mean x² + eps)) · w`).
/// Each pass issues all of a thread's loads of a round before it uses any
/// (one memory round trip per pass for rows up to [`NORM_BLOCK`] values).
fn norm_prologue(rows: usize) -> String {
    let mut s = String::new();
    s += "  ld.param.u64 %rd13, [p_nw];\n  cvta.to.global.u64 %rd13, %rd13;\n  ld.param.f32 %f7, [p_eps];\n";
    // %q1 thread, %q4 lane, %q5 warp, %q6 xs, %g6 inner as f32.
    s += "  mov.u32 %q1, %tid.x;\n  and.b32 %q4, %q1, 31;\n  shr.u32 %q5, %q1, 5;\n";
    s += "  mov.u32 %q6, xs;\n  cvt.rn.f32.u32 %g6, %r2;\n";
    for r in 0..rows {
        // Pass 1: the sum of squares.
        s += &format!("  mov.f32 %g1, 0f00000000;\n  mov.u32 %q3, 0;\n$sq{r}:\n");
        s += &format!("  setp.ge.u32 %p7, %q3, %r2;\n  @%p7 bra $sqd{r};\n");
        s += &norm_loads(r, "%rd2", true, "%v");
        for i in 0..4 * NORM_LOADS {
            s += &format!("  fma.rn.f32 %g1, %v{i}, %v{i}, %g1;\n");
        }
        s += &format!("  add.u32 %q3, %q3, {NORM_BLOCK};\n  bra.uni $sq{r};\n$sqd{r}:\n");
        for shift in [16, 8, 4, 2, 1] {
            s += &format!("  shfl.sync.bfly.b32 %g2, %g1, {shift}, 31, -1;\n  add.f32 %g1, %g1, %g2;\n");
        }
        s += "  setp.eq.u32 %p7, %q4, 0;\n  shl.b32 %q7, %q5, 2;\n  add.u32 %q7, %q6, %q7;\n";
        s += "  @%p7 st.shared.f32 [%q7], %g1;\n  bar.sync 0;\n  mov.f32 %g3, 0f00000000;\n";
        for w in 0..WARPS {
            s += &format!("  ld.shared.f32 %g2, [%q6+{}];\n  add.f32 %g3, %g3, %g2;\n", 4 * w);
        }
        s += "  bar.sync 0;\n";
        s += &crate::glue::inv_rms("%g3", "%g6", "%f7", "%g4");
        // Pass 2: x · rcp · w as bf16 pairs into shared memory.
        s += &format!("  mov.u32 %q3, 0;\n$wr{r}:\n  setp.ge.u32 %p7, %q3, %r2;\n  @%p7 bra $wrd{r};\n");
        s += &norm_loads(r, "%rd2", true, "%v");
        s += &norm_loads(r, "%rd13", false, "%u");
        for j in 0..NORM_LOADS {
            for i in 0..4 {
                let e = 4 * j + i;
                s += &format!("  mul.f32 %v{e}, %v{e}, %g4;\n  mul.f32 %v{e}, %v{e}, %u{e};\n");
            }
            // Value k at byte 2k: the pair (k, k + 1) is one word, k in its low half.
            let (a, b) = (4 * j, 4 * j + 2);
            s += &format!("  cvt.rn.bf16x2.f32 %q10, %v{}, %v{a};\n", a + 1);
            s += &format!("  cvt.rn.bf16x2.f32 %q11, %v{}, %v{b};\n", b + 1);
            s += &norm_value(j);
            s += &format!("  mad.lo.u32 %q9, %r2, {r}, %q7;\n  shl.b32 %q9, %q9, 1;\n  add.u32 %q9, %q9, %q6;\n");
            s += &format!("  @%p8 st.shared.v2.b32 [%q9+{NORM_SUMS}], {{%q10, %q11}};\n");
        }
        s += &format!("  add.u32 %q3, %q3, {NORM_BLOCK};\n  bra.uni $wr{r};\n$wrd{r}:\n");
    }
    s += "  bar.sync 0;\n";
    s
}

/// The weight loads of one step of `u` 16-byte loads per lane (`%r10` the
/// lane's first value, `%rd5`/`%rd11` the weight rows): load `l` of row
/// `p` into `%w[4·(l·pairs + p) + j]` where predicate `gate` holds, zero
/// where `%r11 ≥ inner`. `keep`: where `gate` does not hold the registers
/// are left as they are (weights loaded ahead), else zeroed.
fn weight_loads(u: usize, pairs: usize, gate: &str, keep: bool) -> String {
    let mut s = String::new();
    let guard = if keep { format!("@{gate} ") } else { String::new() };
    for l in 0..u {
        s += &format!("  add.u32 %r11, %r10, {};\n  mul.wide.u32 %rd6, %r11, 2;\n", 256 * l);
        s += &format!("  setp.lt.and.u32 %p8, %r11, %r2, {gate};\n");
        for p in 0..pairs {
            let w: Vec<String> = (0..4).map(|j| format!("%w{}", 4 * (l * pairs + p) + j)).collect();
            let base = if p == 0 { "%rd5" } else { "%rd11" };
            s += &format!("  add.s64 %rd7, {base}, %rd6;\n");
            for reg in &w {
                s += &format!("  {guard}mov.b32 {reg}, 0;\n");
            }
            s += &format!("  @%p8 ld.global.nc.v4.b32 {{{}}}, [%rd7];\n", w.join(", "));
        }
    }
    s
}

/// `%rd5`: weight row `%r5` (`%rd11`: its up row, `%rd10` further).
fn weight_rows(pairs: usize) -> String {
    let mut s = "  mul.wide.u32 %rd5, %r5, %r2;\n  shl.b64 %rd5, %rd5, 1;\n  add.s64 %rd5, %rd1, %rd5;\n".to_string();
    if pairs == 2 {
        s += "  add.s64 %rd11, %rd5, %rd10;\n";
    }
    s
}

/// The kernel. Its first step's weights are loaded before anything else
/// (the norm prologue, the wait for the grid before it): they depend on
/// nothing, and their memory latency hides what comes after.
fn kernel(rows: usize, input: Input, epilogue: Epilogue, dependent: bool) -> String {
    let pairs = epilogue.pairs();
    let u = unroll(rows, pairs);
    let name = kernel_name(rows, input, epilogue);
    let mut s = format!(".visible .entry {name}(\n  {})\n{{\n", params(input, epilogue));
    if input == Input::RmsNorm {
        s += &format!(
            "  .reg .b32 %q<16>;\n  .reg .f32 %g<8>;\n  .reg .f32 %v<{n}>;\n  .reg .f32 %u<{n}>;\n",
            n = 4 * NORM_LOADS
        );
    }
    s += &format!(
        "  .reg .pred %p<10>;\n  .reg .b32 %r<20>;\n  .reg .b32 %s<4>;\n  .reg .b32 %w<{}>;\n  .reg .b32 %x<{}>;\n  \
         .reg .f32 %a<{}>;\n  .reg .f32 %f<8>;\n  .reg .b64 %rd<14>;\n  .reg .b64 %xr<{}>;\n  .reg .b16 %h<2>;\n",
        4 * u * pairs,
        4 * u * rows,
        rows * pairs,
        rows
    );
    s += &load_outputs(epilogue);
    // Parameters: %rd1 W, %rd2 x, %rd3 y; %r1 out, %r2 inner, %r3 acc.
    s += "  ld.param.u64 %rd1, [p_w];\n  ld.param.u64 %rd2, [p_x];\n";
    s += "  ld.param.u32 %r1, [p_out];\n  ld.param.u32 %r2, [p_inner];\n";
    s += "  cvta.to.global.u64 %rd1, %rd1;\n  cvta.to.global.u64 %rd2, %rd2;\n";
    // Row r of x starts at x + r·inner·2; %rd10 is out·inner·2 bytes (the
    // distance from a gate row to its up row).
    s += "  mul.wide.u32 %rd4, %r2, 2;\n  mul.wide.u32 %rd10, %r1, %r2;\n  shl.b64 %rd10, %rd10, 1;\n";
    // %r4 lane, %r5 this warp's first output, %r6 the stride over outputs.
    s += "  mov.u32 %r7, %tid.x;\n  and.b32 %r4, %r7, 31;\n  shr.u32 %r7, %r7, 5;\n";
    s += "  mov.u32 %r8, %ctaid.x;\n  mov.u32 %r9, %ntid.x;\n  shr.u32 %r9, %r9, 5;\n";
    s += "  mad.lo.u32 %r5, %r8, %r9, %r7;\n  mov.u32 %r6, %nctaid.x;\n  mul.lo.u32 %r6, %r6, %r9;\n";
    // The first step of the first output (%p1: the warp has one): its
    // weights into registers now; %p0 (false until that step is done) says
    // whether a step still has to load its weights.
    s += "  setp.lt.u32 %p1, %r5, %r1;\n";
    s += &weight_rows(pairs);
    s += "  shl.b32 %r10, %r4, 3;\n";
    s += &weight_loads(u, pairs, "%p1", false);
    s += "  setp.ne.u32 %p0, %r2, %r2;\n";
    s += grid_dependency(dependent);
    match input {
        Input::Act => {
            for r in 0..rows {
                if r == 0 {
                    s += "  mov.b64 %xr0, %rd2;\n";
                } else {
                    s += &format!("  add.s64 %xr{r}, %xr{}, %rd4;\n", r - 1);
                }
            }
        }
        Input::RmsNorm => {
            s += &norm_prologue(rows);
            // %q8 + r·inner·2: row r of the normed x in shared memory.
            s += &format!("  add.u32 %q8, %q6, {NORM_SUMS};\n");
        }
    }
    s += "$row:\n  setp.ge.u32 %p1, %r5, %r1;\n  @%p1 bra $done;\n";
    s += &weight_rows(pairs);
    for a in 0..rows * pairs {
        s += &format!("  mov.f32 %a{a}, 0f00000000;\n");
    }
    // %r10: this lane's first value of the step.
    s += "  shl.b32 %r10, %r4, 3;\n$step:\n  setp.ge.u32 %p2, %r10, %r2;\n  @%p2 bra $reduce;\n";
    // Issue every load of the step before any arithmetic: the weights
    // (unless loaded ahead), then x.
    s += &weight_loads(u, pairs, "%p0", true);
    for l in 0..u {
        s += &format!("  add.u32 %r11, %r10, {};\n", 256 * l);
        s += "  setp.lt.u32 %p3, %r11, %r2;\n  mul.wide.u32 %rd6, %r11, 2;\n";
        for r in 0..rows {
            let x: Vec<String> = (0..4).map(|j| format!("%x{}", 4 * (l * rows + r) + j)).collect();
            for reg in &x {
                s += &format!("  mov.b32 {reg}, 0;\n");
            }
            match input {
                Input::Act => {
                    s += &format!(
                        "  add.s64 %rd8, %xr{r}, %rd6;\n  @%p3 ld.global.nc.v4.b32 {{{}}}, [%rd8];\n",
                        x.join(", ")
                    )
                }
                Input::RmsNorm => {
                    s += &format!(
                        "  mad.lo.u32 %q9, %r2, {r}, %r11;\n  shl.b32 %q9, %q9, 1;\n  add.u32 %q9, %q9, %q8;\n"
                    );
                    s += &format!("  @%p3 ld.shared.v4.b32 {{{}}}, [%q9];\n", x.join(", "));
                }
            }
        }
    }
    s += "  setp.eq.u32 %p0, %r2, %r2;\n";
    for l in 0..u {
        for j in 0..4 {
            for r in 0..rows {
                s += &widen(&format!("%x{}", 4 * (l * rows + r) + j), "%f2", "%f3");
                for p in 0..pairs {
                    s += &widen(&format!("%w{}", 4 * (l * pairs + p) + j), "%f0", "%f1");
                    let a = p * rows + r;
                    s += &format!("  fma.rn.f32 %a{a}, %f0, %f2, %a{a};\n  fma.rn.f32 %a{a}, %f1, %f3, %a{a};\n");
                }
            }
        }
    }
    s += &format!("  add.u32 %r10, %r10, {};\n  bra.uni $step;\n$reduce:\n", 256 * u);
    for a in 0..rows * pairs {
        for shift in [16, 8, 4, 2, 1] {
            s += &format!("  shfl.sync.bfly.b32 %f4, %a{a}, {shift}, 31, -1;\n  add.f32 %a{a}, %a{a}, %f4;\n");
        }
    }
    s += "  setp.ne.u32 %p4, %r4, 0;\n  @%p4 bra $next;\n";
    s += &store(rows, epilogue);
    s += "$next:\n  add.u32 %r5, %r5, %r6;\n  bra.uni $row;\n$done:\n  ret;\n}\n\n";
    s
}

/// Lane 0's stores of output `%r5` of every row (sums in `%a`).
fn store(rows: usize, epilogue: Epilogue) -> String {
    let mut s = String::new();
    match epilogue {
        Epilogue::Plain(y_act) => {
            s += "  setp.ne.u32 %p5, %r3, 0;\n";
            for r in 0..rows {
                // %rd9: element [r, n] of y.
                s += &format!("  mad.lo.u32 %r12, %r1, {r}, %r5;\n");
                match y_act {
                    Act::F32 => {
                        s += "  mul.wide.u32 %rd9, %r12, 4;\n  add.s64 %rd9, %rd3, %rd9;\n";
                        s += &format!(
                            "  @%p5 ld.global.f32 %f5, [%rd9];\n  @%p5 add.f32 %a{r}, %a{r}, %f5;\n  st.global.f32 [%rd9], %a{r};\n"
                        );
                    }
                    Act::Bf16 => {
                        s += "  mul.wide.u32 %rd9, %r12, 2;\n  add.s64 %rd9, %rd3, %rd9;\n";
                        s += &format!("  cvt.rn.bf16.f32 %h0, %a{r};\n  st.global.b16 [%rd9], %h0;\n");
                    }
                }
            }
        }
        Epilogue::Segments => {
            // %rd12 the buffer of n's segment, %r13 its first output, %r14 its length.
            s += &segment_of("%r5", "%rd12", "%r13", "%r14", "%p6", "%r15");
            s += "  sub.u32 %r16, %r5, %r13;\n";
            for r in 0..rows {
                s += &format!("  mad.lo.u32 %r12, %r14, {r}, %r16;\n");
                s += "  mul.wide.u32 %rd9, %r12, 2;\n  add.s64 %rd9, %rd12, %rd9;\n";
                s += &format!("  cvt.rn.bf16.f32 %h0, %a{r};\n  st.global.b16 [%rd9], %h0;\n");
            }
        }
        Epilogue::SwiGlu => {
            for r in 0..rows {
                s += &silu_times(&format!("%a{r}"), &format!("%a{}", rows + r), "%f6", "%f5");
                s += &format!("  mad.lo.u32 %r12, %r1, {r}, %r5;\n");
                s += "  mul.wide.u32 %rd9, %r12, 2;\n  add.s64 %rd9, %rd3, %rd9;\n";
                s += "  cvt.rn.bf16.f32 %h0, %f6;\n  st.global.b16 [%rd9], %h0;\n";
            }
        }
    }
    s
}

/// CTAs for `out` outputs (one warp each).
pub fn grid_for(out: usize) -> u32 {
    (out.div_ceil(WARPS as usize)).clamp(1, 1 << 20) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_kernel_per_row_count_and_output_dtype() {
        let text = ptx(true);
        for name in kernel_names() {
            assert_eq!(text.matches(&format!(".entry {name}(")).count(), 1, "{name}");
        }
        assert_eq!(kernel_names().len(), MAX_ROWS * 8);
    }

    #[test]
    fn every_load_of_a_step_comes_before_its_arithmetic() {
        for (i, e) in variants() {
            let k = kernel(2, i, e, true);
            let step = &k[k.find("$step:").unwrap_or(0)..k.find("$reduce:").unwrap_or(0)];
            let last_load = step.rfind("ld.global.nc").max(step.rfind("ld.shared")).unwrap_or(usize::MAX);
            let first_fma = step.find("fma.rn").unwrap_or(0);
            assert!(last_load < first_fma, "{e:?}: loads must all be issued before the first FMA");
            let loads = unroll(2, e.pairs()) * (2 + e.pairs());
            let counted = step.matches("ld.global.nc.v4.b32").count() + step.matches("ld.shared.v4.b32").count();
            assert_eq!(counted, loads, "{i:?} {e:?}");
        }
    }

    #[test]
    fn the_first_weights_are_loaded_before_the_wait_and_x_after_it() {
        for rows in 1..=MAX_ROWS {
            for (i, e) in variants() {
                let k = kernel(rows, i, e, true);
                let wait = k.find("griddepcontrol.wait").unwrap_or(usize::MAX);
                let head = &k[..wait.min(k.len())];
                let ahead = unroll(rows, e.pairs()) * e.pairs();
                assert_eq!(head.matches("ld.global.nc.v4.b32").count(), ahead, "{rows} {i:?} {e:?}");
                let first_x = match i {
                    Input::Act => k.find("[%rd8]"),
                    Input::RmsNorm => k.find("ld.global.v4.f32"),
                };
                assert!(first_x.is_some_and(|x| x > wait), "{rows} {i:?} {e:?}: x read before the wait");
                assert!(!kernel(rows, i, e, false).contains("griddepcontrol"));
            }
        }
    }
}
