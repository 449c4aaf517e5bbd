//! A bf16 product for a batched decode step's 5–16 rows on tensor cores,
//! as PTX: `y[r, n] (+)= Σ_k x[r, k] · W[n, k]` for `r < R ≤ 16`, with the
//! epilogues of [`crate::gemv`] (plain f32 or bf16, stacked segments, SwiGLU).
//!
//! A step of 16 sequences side by side streams the weights once for all
//! of them; the warp-per-output GEMV would multiply each weight 16 times on
//! CUDA cores and read `x` 16 times from L1. Here a CTA owns 16 outputs and
//! its 8 warps split `inner` (split-K: more loads in flight for matrices of
//! few outputs); each warp multiplies `mma.sync` m16n8k16 tiles: the 16
//! weight rows as the A operand, up to 16 rows of `x` as two B tiles. The
//! operands come straight from global memory in 16-byte loads: the sum over
//! `k` does not care which `k` a fragment slot holds as long as A and B
//! agree, so thread `(g, c)` (`g = lane / 4`, `c = lane % 4`) loads `k =
//! 8c … 8c + 7` of its rows and feeds the first four to one `mma` (slots
//! `2c, 2c+1, 2c+8, 2c+9`) and the last four to a second. The warps' partial
//! sums meet in shared memory, and each of the CTA's 256 threads finishes
//! one `(output, row)` pair. Accumulation is f32.
//!
//! Requirements (checked by the caller): `inner` a multiple of 8, buffers
//! 16-byte aligned.
//!
//! **RMSNorm between two products** ([`Form`]): a decode step adds a
//! product (`o_proj`, the MLP's down projection) to the f32 residual and
//! then norms that residual for the next product. A norm kernel of its own
//! is a launch and a latency-bound pass a layer twice; folding the norm
//! into each CTA of the next product would read the f32 residual once per
//! CTA (4× the bytes of its weights). Instead the norm is split between the
//! two: the adding product's epilogue ([`Form::Feeding`]) knows each new
//! residual value `x[r, n]` once, so it stores `bf16(x[r, n] · w[n])` (the
//! norm's weight applied, not its scale) and each CTA's sum of `x²` per
//! row over its 16 outputs; the next product ([`Form::PreNormed`]) takes
//! that bf16 operand as it is, sums the CTAs' partial sums of its rows
//! while its weights stream, and scales each row's sums by `1 / sqrt(mean
//! x² + eps)` before its epilogue. Nothing is read twice, nothing is
//! launched for the norm.

use crate::gemv::{self, epilogues, Epilogue};
use crate::glue::Act;

/// Rows the kernels take at most (two B tiles of 8).
pub const MAX_ROWS: usize = 16;

/// Outputs per CTA (the A tile's rows).
pub const OUTPUTS_PER_CTA: usize = 16;

/// Warps per CTA, splitting `inner` between them.
pub const WARPS: u32 = 8;

/// How a kernel takes its `x` and what its epilogue writes besides `y`
/// (the module's notes say why the norm is split this way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// bf16 `x` in, the epilogue's outputs out.
    Plain,
    /// `x` is a residual's rows with the RMSNorm's weight applied (bf16),
    /// the sums scaled by each row's `1 / rms` from the partial sums of
    /// squares a [`Form::Feeding`] product left: parameters `p_ss`
    /// (f32 `[partials_len(inner)]`) and `p_eps` after `p_x`.
    PreNormed,
    /// A plain f32 epilogue (`y (+)= Σ`, the residual) that also prepares
    /// the next RMSNorm: `xw[r, n] = bf16(y[r, n] · nw[n])` and, per CTA,
    /// `ss[16·cta + r] = Σ y[r, n]²` over its outputs (0 for rows ≥ R):
    /// parameters `p_nw` (f32 `[out]`), `p_xw` (bf16 `[rows, out]`), `p_ss`
    /// (f32 `[partials_len(out)]`) after the accumulate flag.
    Feeding,
}

/// Every kernel: each epilogue plain and pre-normed, and the feeding one.
pub fn variants() -> Vec<(Epilogue, Form)> {
    let mut out: Vec<(Epilogue, Form)> = Vec::new();
    for form in [Form::Plain, Form::PreNormed] {
        out.extend(epilogues().into_iter().map(|e| (e, form)));
    }
    out.push((Epilogue::Plain(Act::F32), Form::Feeding));
    out
}

/// The kernel for `epilogue` in `form`.
pub fn kernel_name(epilogue: Epilogue, form: Form) -> String {
    let base = match epilogue {
        Epilogue::Plain(a) => format!("mixc_skinny_{}", a.suffix()),
        Epilogue::Segments => "mixc_skinny_seg".into(),
        Epilogue::SwiGlu => "mixc_skinny_swiglu".into(),
    };
    match form {
        Form::Plain => base,
        Form::PreNormed => format!("{base}_pn"),
        Form::Feeding => format!("{base}_feed"),
    }
}

/// Every kernel's name.
pub fn kernel_names() -> Vec<String> {
    variants().into_iter().map(|(e, f)| kernel_name(e, f)).collect()
}

/// The PTX of every kernel (appended to the glue module); `dependent`:
/// each waits for the grid before it first ([`gemv::grid_dependency`]).
pub fn ptx(dependent: bool) -> String {
    variants().into_iter().map(|(e, f)| kernel(e, f, dependent)).collect()
}

/// f32 partial sums of squares a [`Form::Feeding`] product of `out`
/// outputs leaves (16 per CTA) and a [`Form::PreNormed`] one over `inner =
/// out` reads.
pub fn partials_len(out: usize) -> usize {
    out.div_ceil(OUTPUTS_PER_CTA) * MAX_ROWS
}

/// CTAs for `out` outputs.
pub fn grid_for(out: usize) -> u32 {
    out.div_ceil(OUTPUTS_PER_CTA).clamp(1, 1 << 20) as u32
}

/// Steps of 32 `k` each warp issues before its first `mma`.
fn unroll(pairs: usize) -> usize {
    4 / pairs
}

/// Weight row sets per output: gate and up for SwiGLU.
fn pairs(epilogue: Epilogue) -> usize {
    match epilogue {
        Epilogue::SwiGlu => 2,
        _ => 1,
    }
}

fn params(epilogue: Epilogue, form: Form) -> String {
    let (ys, acc) = (gemv::output_params(epilogue), gemv::acc_param(epilogue));
    let x = match form {
        Form::PreNormed => ".param .u64 p_x, .param .u64 p_ss, .param .f32 p_eps",
        _ => ".param .u64 p_x",
    };
    let feed = match form {
        Form::Feeding => ", .param .u64 p_nw, .param .u64 p_xw, .param .u64 p_ss",
        _ => "",
    };
    format!(".param .u64 p_w, {x}, {ys}, .param .u32 p_out, .param .u32 p_inner, .param .u32 p_rows{acc}{feed}")
}

/// Partial sums of squares a [`Form::PreNormed`] thread loads before the
/// product (the rest, for `inner` beyond 2048, after it).
const FIRST_PARTIALS: usize = 8;

/// [`Form::PreNormed`], before the product: thread `t` (`%r10`) takes row
/// `t % 16` (`%n2`) of the CTAs `j = t / 16 + 16·i` (`%n3` the first) of
/// the feeding product, `j` below `%n1 = ⌈inner / 16⌉`; the first
/// [`FIRST_PARTIALS`] loads are issued here, into `%nf1…`, and summed after.
fn partials_first() -> String {
    let mut s = String::new();
    s += "  add.u32 %n1, %r2, 15;\n  shr.u32 %n1, %n1, 4;\n  and.b32 %n2, %r10, 15;\n  shr.u32 %n3, %r10, 4;\n";
    for i in 0..FIRST_PARTIALS {
        s += &format!("  add.u32 %n4, %n3, {};\n  setp.lt.u32 %np1, %n4, %n1;\n", 16 * i);
        s += PARTIAL_ADDRESS;
        s += &format!("  mov.f32 %nf{r}, 0f00000000;\n  @%np1 ld.global.f32 %nf{r}, [%nd2];\n", r = i + 1);
    }
    s
}

/// `%nd2`: the address of partial sum `16·%n4 + %n2` (CTA `%n4` of the
/// feeding product, row `%n2`).
const PARTIAL_ADDRESS: &str =
    "  shl.b32 %n5, %n4, 4;\n  add.u32 %n5, %n5, %n2;\n  mul.wide.u32 %nd2, %n5, 4;\n  add.s64 %nd2, %nd1, %nd2;\n";

/// [`Form::PreNormed`], after the product: the thread's partial sums (the
/// first ones loaded, the rest now), summed with the other half-warp's
/// (same row), into `ssw[16·warp + row]` by lanes 0–15 (read after the
/// barrier that follows).
fn partials_rest() -> String {
    let mut s = "  mov.f32 %nf0, %nf1;\n".to_string();
    for i in 2..=FIRST_PARTIALS {
        s += &format!("  add.f32 %nf0, %nf0, %nf{i};\n");
    }
    s += &format!("  add.u32 %n4, %n3, {};\n$ss_more:\n", 16 * FIRST_PARTIALS);
    s += "  setp.ge.u32 %np1, %n4, %n1;\n  @%np1 bra $ss_done;\n";
    s += PARTIAL_ADDRESS;
    s += "  ld.global.f32 %nf1, [%nd2];\n  add.f32 %nf0, %nf0, %nf1;\n  add.u32 %n4, %n4, 16;\n  bra $ss_more;\n$ss_done:\n";
    s += "  shfl.sync.bfly.b32 %nf1, %nf0, 16, 31, -1;\n  add.f32 %nf0, %nf0, %nf1;\n";
    s += &store_by_half_warp("%nf0");
    s
}

/// Lanes 0–15 store `value` to `ssw[16·warp + lane]` (`%r5` lane, `%r6` warp).
fn store_by_half_warp(value: &str) -> String {
    let mut s = "  setp.lt.u32 %np2, %r5, 16;\n  mov.u32 %n6, ssw;\n  shl.b32 %n7, %r6, 4;\n  add.u32 %n7, %n7, %r5;\n"
        .to_string();
    s += &format!("  shl.b32 %n7, %n7, 2;\n  add.u32 %n7, %n7, %n6;\n  @%np2 st.shared.f32 [%n7], {value};\n");
    s
}

/// [`Form::PreNormed`], finishing row `%r21`: its sum of squares from
/// `ssw`, `1 / sqrt(mean + eps)` (as the glue's RMSNorm rounds it) applied
/// to the sums `%f0…%f{np−1}`.
fn scale_by_rms(np: usize) -> String {
    let mut s = sum_over_warps("%r21");
    s += "  cvt.rn.f32.u32 %nf4, %r2;\n";
    s += &crate::glue::inv_rms("%nf2", "%nf4", "%nf11", "%nf2");
    for p in 0..np {
        s += &format!("  mul.f32 %f{p}, %f{p}, %nf2;\n");
    }
    s
}

/// `%nf2`: the sum of `ssw[16·w + row]` over the warps `w` (`row` a register).
fn sum_over_warps(row: &str) -> String {
    let mut s = format!(
        "  mov.u32 %n6, ssw;\n  shl.b32 %n7, {row}, 2;\n  add.u32 %n7, %n7, %n6;\n  mov.f32 %nf2, 0f00000000;\n"
    );
    for w in 0..WARPS as usize {
        s += &format!("  ld.shared.f32 %nf3, [%n7+{}];\n  add.f32 %nf2, %nf2, %nf3;\n", 4 * MAX_ROWS * w);
    }
    s
}

/// [`Form::Feeding`]'s epilogue for output `%r31` of row `%r21` (`%p8`:
/// the pair is outside the product): every thread reaches the barrier.
fn feeding_store() -> String {
    let mut s = String::new();
    s += "  not.pred %np1, %p8;\n  mad.lo.u32 %r32, %r21, %r1, %r31;\n";
    s += "  mul.wide.u32 %rd13, %r32, 4;\n  add.s64 %rd13, %rd3, %rd13;\n";
    s += "  setp.ne.and.u32 %p10, %r3, 0, %np1;\n  @%p10 ld.global.f32 %f9, [%rd13];\n  @%p10 add.f32 %f0, %f0, %f9;\n";
    s += "  @%np1 st.global.f32 [%rd13], %f0;\n";
    // xw[r, n] = bf16(y · nw[n]).
    s += "  mul.wide.u32 %nd2, %r31, 4;\n  add.s64 %nd2, %nd3, %nd2;\n  mov.f32 %nf1, 0f00000000;\n";
    s += "  @%np1 ld.global.nc.f32 %nf1, [%nd2];\n  mul.f32 %nf1, %f0, %nf1;\n  cvt.rn.bf16.f32 %nh0, %nf1;\n";
    s += "  mul.wide.u32 %nd2, %r32, 2;\n  add.s64 %nd2, %nd4, %nd2;\n  @%np1 st.global.b16 [%nd2], %nh0;\n";
    // y² summed over the CTA's outputs of each row: the two half-warps
    // (outputs 2·warp and 2·warp + 1), then the warps through `ssw`.
    s += "  mul.f32 %nf2, %f0, %f0;\n  selp.f32 %nf2, %nf2, 0f00000000, %np1;\n";
    s += "  shfl.sync.bfly.b32 %nf3, %nf2, 16, 31, -1;\n  add.f32 %nf2, %nf2, %nf3;\n";
    s += &store_by_half_warp("%nf2");
    s += "  bar.sync 0;\n  setp.ge.u32 %np2, %r10, 16;\n  @%np2 bra $done;\n";
    s += &sum_over_warps("%r10");
    s += &format!("  mov.u32 %n8, %ctaid.x;\n  mad.lo.u32 %n8, %n8, {MAX_ROWS}, %r10;\n");
    s += "  mul.wide.u32 %nd2, %n8, 4;\n  add.s64 %nd2, %nd1, %nd2;\n  st.global.f32 [%nd2], %nf2;\n";
    s
}

/// Registers: `%a{p}_{u}_{h}_{j}` the A words (pair p, step u, row half h,
/// word j), `%b{u}_{t}_{j}` the B words (tile t), `%d{p}_{t}_{i}` the sums.
fn kernel(epilogue: Epilogue, form: Form, dependent: bool) -> String {
    let np = pairs(epilogue);
    let u = unroll(np);
    let name = kernel_name(epilogue, form);
    let red_floats = WARPS as usize * np * 2 * 4 * 32;
    let mut s = format!(".visible .entry {name}(\n  {})\n{{\n", params(epilogue, form));
    s += "  .reg .pred %p<12>;\n  .reg .b32 %r<40>;\n  .reg .f32 %f<16>;\n  .reg .b64 %rd<24>;\n  .reg .b16 %h<2>;\n";
    s += &format!("  .shared .align 16 .f32 red[{red_floats}];\n");
    for p in 0..np {
        for l in 0..u {
            for h in 0..2 {
                for j in 0..4 {
                    s += &format!("  .reg .b32 %a{p}_{l}_{h}_{j};\n");
                }
            }
        }
        for t in 0..2 {
            for i in 0..4 {
                s += &format!("  .reg .f32 %d{p}_{t}_{i};\n");
            }
        }
    }
    for l in 0..u {
        for t in 0..2 {
            for j in 0..4 {
                s += &format!("  .reg .b32 %b{l}_{t}_{j};\n");
            }
        }
    }
    s += &gemv::load_outputs(epilogue);
    if form != Form::Plain {
        // The norm's registers: %nd1 the partial sums, %nd3 its weight,
        // %nd4 xw; %nf11 eps; `ssw` a sum per warp and row.
        s += "  .reg .b32 %n<10>;\n  .reg .f32 %nf<12>;\n  .reg .pred %np<4>;\n  .reg .b64 %nd<6>;\n  .reg .b16 %nh<2>;\n";
        s += &format!("  .shared .align 4 .f32 ssw[{}];\n", WARPS as usize * MAX_ROWS);
        s += "  ld.param.u64 %nd1, [p_ss];\n  cvta.to.global.u64 %nd1, %nd1;\n";
    }
    match form {
        Form::Plain => {}
        Form::PreNormed => s += "  ld.param.f32 %nf11, [p_eps];\n",
        Form::Feeding => {
            s += "  ld.param.u64 %nd3, [p_nw];\n  cvta.to.global.u64 %nd3, %nd3;\n";
            s += "  ld.param.u64 %nd4, [p_xw];\n  cvta.to.global.u64 %nd4, %nd4;\n";
        }
    }
    // %rd1 W, %rd2 x; %r1 out, %r2 inner, %r4 rows.
    s += "  ld.param.u64 %rd1, [p_w];\n  ld.param.u64 %rd2, [p_x];\n  cvta.to.global.u64 %rd1, %rd1;\n";
    s += "  cvta.to.global.u64 %rd2, %rd2;\n  ld.param.u32 %r1, [p_out];\n  ld.param.u32 %r2, [p_inner];\n";
    s += "  ld.param.u32 %r4, [p_rows];\n";
    // %r5 lane, %r6 warp, %r7 g, %r8 c, %r9 n0 (the CTA's first output).
    s += "  mov.u32 %r10, %tid.x;\n  and.b32 %r5, %r10, 31;\n  shr.u32 %r6, %r10, 5;\n";
    s += "  shr.u32 %r7, %r5, 2;\n  and.b32 %r8, %r5, 3;\n  mov.u32 %r11, %ctaid.x;\n";
    s += &format!("  mul.lo.u32 %r9, %r11, {OUTPUTS_PER_CTA};\n");
    // Weight rows n0 + g (%rd4) and n0 + g + 8 (%rd5), valid while < out
    // (%p1, %p2); for SwiGLU the up rows out + … (%rd6, %rd7).
    s += "  add.u32 %r12, %r9, %r7;\n  add.u32 %r13, %r12, 8;\n";
    s += "  setp.lt.u32 %p1, %r12, %r1;\n  setp.lt.u32 %p2, %r13, %r1;\n";
    s += "  mul.wide.u32 %rd4, %r12, %r2;\n  shl.b64 %rd4, %rd4, 1;\n  add.s64 %rd4, %rd1, %rd4;\n";
    s += "  mul.wide.u32 %rd5, %r13, %r2;\n  shl.b64 %rd5, %rd5, 1;\n  add.s64 %rd5, %rd1, %rd5;\n";
    if np == 2 {
        s += "  mul.wide.u32 %rd8, %r1, %r2;\n  shl.b64 %rd8, %rd8, 1;\n";
        s += "  add.s64 %rd6, %rd4, %rd8;\n  add.s64 %rd7, %rd5, %rd8;\n";
    }
    // Rows g (%rd9) and g + 8 (%rd10) of x, valid while < rows (%p3, %p4).
    s += "  setp.lt.u32 %p3, %r7, %r4;\n  add.u32 %r14, %r7, 8;\n  setp.lt.u32 %p4, %r14, %r4;\n";
    s += "  mul.wide.u32 %rd9, %r7, %r2;\n  shl.b64 %rd9, %rd9, 1;\n  add.s64 %rd9, %rd2, %rd9;\n";
    s += "  mul.wide.u32 %rd10, %r14, %r2;\n  shl.b64 %rd10, %rd10, 1;\n  add.s64 %rd10, %rd2, %rd10;\n";
    for p in 0..np {
        for t in 0..2 {
            for i in 0..4 {
                s += &format!("  mov.f32 %d{p}_{t}_{i}, 0f00000000;\n");
            }
        }
    }
    // %r15: the warp's first k (warp · 32), stepping by 256 · u: the same
    // for every lane, so that the whole warp reaches each `mma`; a lane's
    // own k is %r15 + c · 8 (%r16), its loads predicated on it.
    s += "  shl.b32 %r15, %r6, 5;\n  shl.b32 %r16, %r8, 3;\n";
    s += gemv::grid_dependency(dependent);
    if form == Form::PreNormed {
        s += &partials_first();
    }
    s += "$step:\n  setp.ge.u32 %p5, %r15, %r2;\n  @%p5 bra.uni $reduce;\n";
    for l in 0..u {
        s += &format!("  add.u32 %r17, %r15, {};\n  add.u32 %r17, %r17, %r16;\n", 256 * l);
        s += "  setp.lt.u32 %p6, %r17, %r2;\n";
        s += "  mul.wide.u32 %rd11, %r17, 2;\n";
        let rows_of = |p: usize| if p == 0 { ["%rd4", "%rd5"] } else { ["%rd6", "%rd7"] };
        for p in 0..np {
            for (h, base) in rows_of(p).iter().enumerate() {
                let regs: Vec<String> = (0..4).map(|j| format!("%a{p}_{l}_{h}_{j}")).collect();
                for r in &regs {
                    s += &format!("  mov.b32 {r}, 0;\n");
                }
                let valid = if h == 0 { "%p1" } else { "%p2" };
                s += &format!("  and.pred %p7, %p6, {valid};\n  add.s64 %rd12, {base}, %rd11;\n");
                s += &format!("  @%p7 ld.global.nc.v4.b32 {{{}}}, [%rd12];\n", regs.join(", "));
            }
        }
        for (t, (base, valid)) in [("%rd9", "%p3"), ("%rd10", "%p4")].iter().enumerate() {
            let regs: Vec<String> = (0..4).map(|j| format!("%b{l}_{t}_{j}")).collect();
            for r in &regs {
                s += &format!("  mov.b32 {r}, 0;\n");
            }
            s += &format!("  and.pred %p7, %p6, {valid};\n  add.s64 %rd12, {base}, %rd11;\n");
            s += &format!("  @%p7 ld.global.nc.v4.b32 {{{}}}, [%rd12];\n", regs.join(", "));
        }
    }
    for l in 0..u {
        for p in 0..np {
            for t in 0..2 {
                for half in 0..2 {
                    // Words 2·half and 2·half + 1 of each 16-byte load.
                    let (w0, w1) = (2 * half, 2 * half + 1);
                    let d: Vec<String> = (0..4).map(|i| format!("%d{p}_{t}_{i}")).collect();
                    s += &format!(
                        "  mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {{{d}}}, \
                         {{%a{p}_{l}_0_{w0}, %a{p}_{l}_1_{w0}, %a{p}_{l}_0_{w1}, %a{p}_{l}_1_{w1}}}, \
                         {{%b{l}_{t}_{w0}, %b{l}_{t}_{w1}}}, {{{d}}};\n",
                        d = d.join(", ")
                    );
                }
            }
        }
    }
    s += &format!("  add.u32 %r15, %r15, {};\n  bra.uni $step;\n$reduce:\n", 256 * u);
    if form == Form::PreNormed {
        s += &partials_rest();
    }
    // red[((warp · np + p) · 2 + t) · 4 + i][lane] (f32).
    s += "  mov.u32 %r18, red;\n";
    for p in 0..np {
        for t in 0..2 {
            for i in 0..4 {
                s += &format!(
                    "  mad.lo.u32 %r19, %r6, {}, {};\n  shl.b32 %r19, %r19, 5;\n  add.u32 %r19, %r19, %r5;\n",
                    np * 8,
                    (p * 2 + t) * 4 + i
                );
                s += &format!(
                    "  shl.b32 %r19, %r19, 2;\n  add.u32 %r19, %r19, %r18;\n  st.shared.f32 [%r19], %d{p}_{t}_{i};\n"
                );
            }
        }
    }
    s += "  bar.sync 0;\n";
    // Thread tid finishes output m = tid / 16 of the CTA, row r = tid % 16:
    // tile t = r / 8, column cc = r % 8 (c = cc / 2), g = m % 8, word
    // i = (m / 8) · 2 + cc % 2, lane = g · 4 + c.
    s += "  shr.u32 %r20, %r10, 4;\n  and.b32 %r21, %r10, 15;\n";
    s += "  shr.u32 %r22, %r21, 3;\n  and.b32 %r23, %r21, 7;\n  shr.u32 %r24, %r23, 1;\n";
    s += "  and.b32 %r25, %r20, 7;\n  shr.u32 %r26, %r20, 3;\n  shl.b32 %r26, %r26, 1;\n";
    s += "  and.b32 %r27, %r23, 1;\n  add.u32 %r26, %r26, %r27;\n";
    s += "  shl.b32 %r28, %r25, 2;\n  add.u32 %r28, %r28, %r24;\n";
    // %r29: index of (p = 0, t, i) in a warp's block; pair p adds 8 · 32.
    s += "  shl.b32 %r29, %r22, 2;\n  add.u32 %r29, %r29, %r26;\n";
    for p in 0..np {
        s += &format!("  mov.f32 %f{p}, 0f00000000;\n");
        for w in 0..WARPS as usize {
            s += &format!(
                "  add.u32 %r30, %r29, {};\n  shl.b32 %r30, %r30, 5;\n  add.u32 %r30, %r30, %r28;\n",
                (w * np + p) * 8
            );
            s += "  shl.b32 %r30, %r30, 2;\n  add.u32 %r30, %r30, %r18;\n  ld.shared.f32 %f8, [%r30];\n";
            s += &format!("  add.f32 %f{p}, %f{p}, %f8;\n");
        }
    }
    // n (%r31) and r (%r21) valid?
    s += "  add.u32 %r31, %r9, %r20;\n  setp.ge.u32 %p8, %r31, %r1;\n  setp.ge.u32 %p9, %r21, %r4;\n";
    s += "  or.pred %p8, %p8, %p9;\n";
    match form {
        Form::Plain => s += &format!("  @%p8 bra $done;\n{}", store(epilogue)),
        Form::PreNormed => s += &format!("{}  @%p8 bra $done;\n{}", scale_by_rms(np), store(epilogue)),
        Form::Feeding => s += &feeding_store(),
    }
    s += "$done:\n  ret;\n}\n\n";
    s
}

/// The store of sum `%f0` (and `%f1`, the up sum of SwiGLU) for output `%r31`
/// of row `%r21`.
fn store(epilogue: Epilogue) -> String {
    let mut s = String::new();
    // %r32: element [r, n] of an output of `%r1` columns.
    s += "  mad.lo.u32 %r32, %r21, %r1, %r31;\n";
    match epilogue {
        Epilogue::Plain(Act::F32) => {
            s += "  mul.wide.u32 %rd13, %r32, 4;\n  add.s64 %rd13, %rd3, %rd13;\n  setp.ne.u32 %p10, %r3, 0;\n";
            s += "  @%p10 ld.global.f32 %f9, [%rd13];\n  @%p10 add.f32 %f0, %f0, %f9;\n  st.global.f32 [%rd13], %f0;\n";
        }
        Epilogue::Plain(Act::Bf16) => {
            s += "  mul.wide.u32 %rd13, %r32, 2;\n  add.s64 %rd13, %rd3, %rd13;\n";
            s += "  cvt.rn.bf16.f32 %h0, %f0;\n  st.global.b16 [%rd13], %h0;\n";
        }
        Epilogue::Segments => {
            s += &gemv::segment_of("%r31", "%rd14", "%r33", "%r34", "%p11", "%r35");
            s += "  sub.u32 %r36, %r31, %r33;\n  mad.lo.u32 %r36, %r21, %r34, %r36;\n";
            s += "  mul.wide.u32 %rd13, %r36, 2;\n  add.s64 %rd13, %rd14, %rd13;\n";
            s += "  cvt.rn.bf16.f32 %h0, %f0;\n  st.global.b16 [%rd13], %h0;\n";
        }
        Epilogue::SwiGlu => {
            s += &gemv::silu_times("%f0", "%f1", "%f10", "%f9");
            s += "  mul.wide.u32 %rd13, %r32, 2;\n  add.s64 %rd13, %rd3, %rd13;\n";
            s += "  cvt.rn.bf16.f32 %h0, %f10;\n  st.global.b16 [%rd13], %h0;\n";
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_kernel_per_epilogue() {
        let text = ptx(true);
        for name in kernel_names() {
            assert_eq!(text.matches(&format!(".entry {name}(")).count(), 1, "{name}");
        }
        assert_eq!(kernel_names().len(), 9);
    }

    #[test]
    fn the_split_norm_loads_its_partial_sums_early_and_stores_them_after_one_barrier() {
        for (e, form) in variants() {
            let k = kernel(e, form, true);
            let (step, reduce) = (k.find("$step:").unwrap_or(0), k.find("$reduce:").unwrap_or(0));
            let wait = k.find("griddepcontrol.wait").unwrap_or(usize::MAX);
            let loads = k.matches("ld.global.f32 %nf").count();
            match form {
                Form::Plain => assert!(!k.contains("ssw") && !k.contains("p_ss"), "{e:?}"),
                Form::PreNormed => {
                    // The first partial sums after the wait, before the
                    // product; the rest (one load in a loop) after it.
                    let first = k.find("ld.global.f32 %nf").unwrap_or(0);
                    assert!(wait < first && first < step, "{e:?}");
                    assert_eq!(loads, FIRST_PARTIALS + 1, "{e:?}");
                    assert!(k[reduce..].contains("rcp.rn.f32 %nf2"), "{e:?}");
                }
                Form::Feeding => {
                    // Every thread reaches the epilogue's barrier: no exit
                    // between the product's last barrier and it.
                    let tail = &k[reduce..];
                    let barriers: Vec<usize> = tail.match_indices("bar.sync").map(|(i, _)| i).collect();
                    assert_eq!(barriers.len(), 2, "{e:?}");
                    let between = &tail[barriers[0]..barriers[1]];
                    assert!(!between.contains("bra $done") && !between.contains("bra.uni $done"), "{e:?}");
                    assert!(between.contains("st.global.b16") && between.contains("st.global.f32"), "{e:?}");
                }
            }
        }
        assert_eq!(partials_len(2048), 2048);
        assert_eq!(partials_len(40), 48);
    }

    #[test]
    fn every_load_of_a_step_comes_before_its_first_mma() {
        for (e, form) in variants() {
            let k = kernel(e, form, true);
            let step = &k[k.find("$step:").unwrap_or(0)..k.find("$reduce:").unwrap_or(0)];
            let last_load = step.rfind("ld.global.nc").unwrap_or(usize::MAX);
            let first_mma = step.find("mma.sync").unwrap_or(0);
            assert!(last_load < first_mma, "{e:?} {form:?}");
            // Per step: 2 A rows per pair and 2 B tiles, 2 mma per pair, tile and half.
            let u = unroll(pairs(e));
            assert_eq!(step.matches("ld.global.nc.v4.b32").count(), u * (2 * pairs(e) + 2), "{e:?}");
            assert_eq!(step.matches("mma.sync").count(), u * pairs(e) * 4, "{e:?}");
        }
    }
}
