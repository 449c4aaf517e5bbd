//! The dense glue between a model's mixers on the GPU, as PTX: token
//! embedding, RMSNorm, the MLP activations, casts and bias adds.
//!
//! These few kernels are fixed, memory-bound and tiny next to the mixers and
//! the projections (cuBLAS), so they are written here once as PTX rather
//! than scheduled and lowered: that keeps them loadable by a build without
//! LLVM, and `ptxas` checks them in `cargo test` like every generated kernel.
//!
//! Activations between kernels are f32 (`x`, the residual stream; GEMM
//! outputs); the operands of the projections are in the weights' dtype
//! ([`Act`]): each kernel that feeds a projection stores in that dtype.

/// The dtype of a projection's operands (the weights on the device, and the
/// activations multiplied by them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    F32,
    Bf16,
}

impl Act {
    pub const ALL: [Act; 2] = [Act::F32, Act::Bf16];

    /// Suffix of the kernels that store (or load) this dtype.
    pub fn suffix(self) -> &'static str {
        match self {
            Act::F32 => "f32",
            Act::Bf16 => "bf16",
        }
    }

    /// log2 of the element size.
    fn shift(self) -> u32 {
        match self {
            Act::F32 => 2,
            Act::Bf16 => 1,
        }
    }

    pub fn elem_bytes(self) -> usize {
        1 << self.shift()
    }

    /// PTX that loads element `[addr]` of this dtype into f32 register `f`.
    fn load(self, f: &str, addr: &str) -> String {
        match self {
            Act::F32 => format!("ld.global.f32 {f}, [{addr}];"),
            // bf16 is the high half of an f32: widen and shift.
            Act::Bf16 => format!(
                "ld.global.u16 %hs1, [{addr}];\n  cvt.u32.u16 %rt1, %hs1;\n  shl.b32 %rt1, %rt1, 16;\n  mov.b32 {f}, %rt1;"
            ),
        }
    }

    /// PTX that stores f32 register `f` as this dtype at `[addr]` (bf16:
    /// rounded to nearest even).
    fn store(self, addr: &str, f: &str) -> String {
        match self {
            Act::F32 => format!("st.global.f32 [{addr}], {f};"),
            Act::Bf16 => format!("cvt.rn.bf16.f32 %hs2, {f};\n  st.global.b16 [{addr}], %hs2;"),
        }
    }
}

/// Threads of every glue kernel's CTA.
pub const THREADS: u32 = 256;

/// Registers every kernel declares (the helpers above use `%hs1`, `%hs2`, `%rt1`).
const REGS: &str = "  .reg .pred %p<8>;\n  .reg .b16 %hs<4>;\n  .reg .b32 %r<24>;\n  .reg .b32 %rt<2>;\n  \
                    .reg .f32 %f<16>;\n  .reg .b64 %rd<16>;";

/// The kernel names, for loading: `(name, what it does)`.
pub fn kernel_names() -> Vec<String> {
    let mut out = Vec::new();
    for a in Act::ALL {
        for k in ["embed", "rmsnorm", "layernorm", "swiglu", "gelu"] {
            out.push(format!("mixc_{k}_{}", a.suffix()));
        }
    }
    out.push("mixc_cast_bf16".into());
    out.push("mixc_add_bias".into());
    for a in Act::ALL {
        out.push(format!("mixc_quant_i8_{}", a.suffix()));
        out.push(format!("mixc_dequant_i8_{}", a.suffix()));
    }
    out.extend(crate::gemv::kernel_names());
    out.extend(crate::skinny::kernel_names());
    out
}

/// Whether `target` (`sm_90`, `sm_90a`, ...) has programmatic dependent
/// launches (`griddepcontrol`, sm_90 and later).
pub fn dependent_launches(target: &str) -> bool {
    let digits: String = target.trim_start_matches("sm_").chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse::<u32>().is_ok_and(|sm| sm >= 90)
}

/// The module of every glue kernel for `target` (`sm_80`, `sm_90`, ...).
pub fn ptx(target: &str) -> String {
    let mut s = format!("//\n// mixc's model glue kernels\n//\n.version 8.0\n.target {target}\n.address_size 64\n\n");
    for a in Act::ALL {
        s.push_str(&embed(a));
        s.push_str(&row_norm(a, RowNorm::Rms));
        s.push_str(&row_norm(a, RowNorm::Layer));
        s.push_str(&swiglu(a));
        s.push_str(&gelu(a));
    }
    s.push_str(&cast_bf16());
    s.push_str(&add_bias());
    for a in Act::ALL {
        s.push_str(&quantize_i8(a));
        s.push_str(&dequantize_i8(a));
    }
    let dependent = dependent_launches(target);
    s.push_str(&crate::gemv::ptx(dependent));
    s.push_str(&crate::skinny::ptx(dependent));
    s
}

/// `out[r, :] = f32(table[ids[r], :])`, one CTA per row `r`. Parameters:
/// table (act `[vocab, d]`), ids (i32 `[rows]`), out (f32 `[rows, d]`), d.
fn embed(a: Act) -> String {
    format!(
        r#".visible .entry mixc_embed_{sfx}(
  .param .u64 p_table, .param .u64 p_ids, .param .u64 p_out, .param .u32 p_d)
{{
{REGS}
  ld.param.u64 %rd1, [p_table];
  ld.param.u64 %rd2, [p_ids];
  ld.param.u64 %rd3, [p_out];
  ld.param.u32 %r1, [p_d];
  cvta.to.global.u64 %rd1, %rd1;
  cvta.to.global.u64 %rd2, %rd2;
  cvta.to.global.u64 %rd3, %rd3;
  mov.u32 %r2, %ctaid.x;
  mul.wide.u32 %rd4, %r2, 4;
  add.s64 %rd4, %rd2, %rd4;
  ld.global.u32 %r3, [%rd4];
  mul.wide.u32 %rd5, %r3, %r1;
  mul.wide.u32 %rd6, %r2, %r1;
  mov.u32 %r4, %tid.x;
  mov.u32 %r5, %ntid.x;
$copy:
  setp.ge.u32 %p1, %r4, %r1;
  @%p1 bra $done;
  cvt.u64.u32 %rd7, %r4;
  add.s64 %rd8, %rd5, %rd7;
  shl.b64 %rd8, %rd8, {shift};
  add.s64 %rd8, %rd1, %rd8;
  {load}
  add.s64 %rd9, %rd6, %rd7;
  shl.b64 %rd9, %rd9, 2;
  add.s64 %rd9, %rd3, %rd9;
  st.global.f32 [%rd9], %f1;
  add.u32 %r4, %r4, %r5;
  bra.uni $copy;
$done:
  ret;
}}

"#,
        sfx = a.suffix(),
        shift = a.shift(),
        load = a.load("%f1", "%rd8"),
    )
}

/// Which norm a row-norm kernel computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowNorm {
    /// `x / sqrt(mean(x²) + eps) · w`.
    Rms,
    /// `(x − mean(x)) / sqrt(var(x) + eps) · w + b`.
    Layer,
}

impl RowNorm {
    pub fn name(self) -> &'static str {
        match self {
            RowNorm::Rms => "rmsnorm",
            RowNorm::Layer => "layernorm",
        }
    }
}

/// PTX of an RMSNorm's scale from a row's sum of squares: `out = 1 /
/// sqrt(sum / n + eps)`, rounded as every norm here rounds it (`sum` is
/// overwritten; `n` the row's length as f32).
pub(crate) fn inv_rms(sum: &str, n: &str, eps: &str, out: &str) -> String {
    format!(
        "  div.rn.f32 {sum}, {sum}, {n};\n  add.f32 {sum}, {sum}, {eps};\n  sqrt.rn.f32 {sum}, {sum};\n  \
         rcp.rn.f32 {out}, {sum};\n"
    )
}

/// PTX that sums `%f1` over the CTA (warp shuffles, then the warps' partial
/// sums through shared `sums[0..32]` by thread 0) and leaves the total in
/// `%f7` of every thread; `slot` (0 or 1) names the shared word it passes
/// through, `tag` makes the labels unique.
fn cta_total(tag: &str, slot: u32) -> String {
    let mut s = String::new();
    for shift in [16, 8, 4, 2, 1] {
        s += &format!("  shfl.sync.bfly.b32 %f3, %f1, {shift}, 31, -1;\n  add.f32 %f1, %f1, %f3;\n");
    }
    s += &format!(
        r#"  and.b32 %r6, %r3, 31;
  shr.u32 %r7, %r3, 5;
  setp.ne.u32 %p2, %r6, 0;
  @%p2 bra $partial_{tag};
  mov.u32 %r8, sums;
  shl.b32 %r9, %r7, 2;
  add.u32 %r8, %r8, %r9;
  st.shared.f32 [%r8], %f1;
$partial_{tag}:
  bar.sync 0;
  setp.ne.u32 %p3, %r3, 0;
  @%p3 bra $shared_{tag};
  shr.u32 %r10, %r4, 5;
  mov.f32 %f4, 0f00000000;
  mov.u32 %r11, 0;
  mov.u32 %r12, sums;
$total_{tag}:
  setp.ge.u32 %p4, %r11, %r10;
  @%p4 bra $store_{tag};
  ld.shared.f32 %f5, [%r12];
  add.f32 %f4, %f4, %f5;
  add.u32 %r12, %r12, 4;
  add.u32 %r11, %r11, 1;
  bra.uni $total_{tag};
$store_{tag}:
  st.shared.f32 [sums+{at}], %f4;
$shared_{tag}:
  bar.sync 0;
  ld.shared.f32 %f7, [sums+{at}];
"#,
        at = 128 + 4 * slot
    );
    s
}

/// PTX of a loop of this thread's elements of the row (`%r5` from `%tid.x`
/// by `%ntid.x`, below `d` in `%r1`; element address `%rd6` = row + 4·i)
/// running `body`.
fn row_loop(tag: &str, body: &str) -> String {
    format!(
        r#"  mov.u32 %r5, %r3;
$loop_{tag}:
  setp.ge.u32 %p1, %r5, %r1;
  @%p1 bra $end_{tag};
  mul.wide.u32 %rd10, %r5, 4;
  add.s64 %rd6, %rd5, %rd10;
{body}
  add.u32 %r5, %r5, %r4;
  bra.uni $loop_{tag};
$end_{tag}:
"#
    )
}

/// One CTA per row `r` of `x` (f32 `[rows, d]`): RMSNorm, `out[r, :] =
/// x[r, :] / sqrt(mean(x[r, :]²) + eps) · w`, or LayerNorm, `(x[r, :] − μ) /
/// sqrt(σ² + eps) · w + b` (mean and variance in two passes, not from
/// E[x²] − μ², which cancels where the mean is large). Parameters: x, w (f32
/// `[d]`), for LayerNorm b (f32 `[d]`), out (act `[rows, d]`), d, eps.
fn row_norm(a: Act, norm: RowNorm) -> String {
    let layer = norm == RowNorm::Layer;
    let mut s = format!(
        ".visible .entry mixc_{}_{}(\n  .param .u64 p_x, .param .u64 p_w, {}.param .u64 p_out, .param .u32 p_d, \
         .param .f32 p_eps)\n{{\n{REGS}\n  .shared .align 4 .f32 sums[34];\n",
        norm.name(),
        a.suffix(),
        if layer { ".param .u64 p_b, " } else { "" }
    );
    s += "  ld.param.u64 %rd1, [p_x];\n  ld.param.u64 %rd2, [p_w];\n  ld.param.u64 %rd3, [p_out];\n";
    if layer {
        s += "  ld.param.u64 %rd11, [p_b];\n  cvta.to.global.u64 %rd11, %rd11;\n";
    }
    s += r#"  ld.param.u32 %r1, [p_d];
  ld.param.f32 %f9, [p_eps];
  cvta.to.global.u64 %rd1, %rd1;
  cvta.to.global.u64 %rd2, %rd2;
  cvta.to.global.u64 %rd3, %rd3;
  mov.u32 %r2, %ctaid.x;
  mov.u32 %r3, %tid.x;
  mov.u32 %r4, %ntid.x;
  mul.wide.u32 %rd4, %r2, %r1;
  shl.b64 %rd5, %rd4, 2;
  add.s64 %rd5, %rd1, %rd5;
  cvt.rn.f32.u32 %f6, %r1;
  mov.f32 %f10, 0f00000000;
"#;
    if layer {
        // %f10: the row's mean.
        s += "  mov.f32 %f1, 0f00000000;\n";
        s += &row_loop("mean", "  ld.global.f32 %f2, [%rd6];\n  add.f32 %f1, %f1, %f2;");
        s += &cta_total("mean", 0);
        s += "  div.rn.f32 %f10, %f7, %f6;\n";
    }
    s += "  mov.f32 %f1, 0f00000000;\n";
    s += &row_loop(
        "square",
        "  ld.global.f32 %f2, [%rd6];\n  sub.f32 %f2, %f2, %f10;\n  fma.rn.f32 %f1, %f2, %f2, %f1;",
    );
    s += &cta_total("square", 1);
    // %f7: 1 / sqrt(mean square + eps).
    s += &inv_rms("%f7", "%f6", "%f9", "%f7");
    let mut body = String::from(
        "  ld.global.f32 %f2, [%rd6];\n  sub.f32 %f2, %f2, %f10;\n  add.s64 %rd8, %rd2, %rd10;\n  \
         ld.global.f32 %f8, [%rd8];\n  mul.f32 %f2, %f2, %f7;\n  mul.f32 %f2, %f2, %f8;\n",
    );
    if layer {
        body += "  add.s64 %rd12, %rd11, %rd10;\n  ld.global.f32 %f11, [%rd12];\n  add.f32 %f2, %f2, %f11;\n";
    }
    body += &format!(
        "  cvt.u64.u32 %rd9, %r5;\n  add.s64 %rd9, %rd4, %rd9;\n  shl.b64 %rd9, %rd9, {};\n  add.s64 %rd9, %rd3, %rd9;\n  {}",
        a.shift(),
        a.store("%rd9", "%f2")
    );
    s += &row_loop("write", &body);
    s += "  ret;\n}\n\n";
    s
}

/// The start of a grid-stride loop over `%r1` elements: index `%r2`, stride
/// `%r3`; [`grid_stride_kernel`] closes it (back to `$loop`, out through `$done`).
const GRID_STRIDE: &str = r#"  mov.u32 %r2, %ctaid.x;
  mov.u32 %r4, %ntid.x;
  mov.u32 %r5, %tid.x;
  mad.lo.u32 %r2, %r2, %r4, %r5;
  mov.u32 %r3, %nctaid.x;
  mul.lo.u32 %r3, %r3, %r4;
$loop:
  setp.ge.u32 %p1, %r2, %r1;
  @%p1 bra $done;"#;

/// A kernel over `%r1` elements in a grid-stride loop (index `%r2`):
/// pointer parameters `ptrs` in `%rd1`, `%rd2`, … (as global addresses),
/// u32 parameters `ints` as `(name, register)` (the count in `%r1`), `setup`
/// once before the loop and `body` for each element.
fn grid_stride_kernel(name: &str, ptrs: &[&str], ints: &[(&str, &str)], setup: &str, body: &str) -> String {
    let params: Vec<String> = ptrs
        .iter()
        .map(|p| format!(".param .u64 {p}"))
        .chain(ints.iter().map(|(p, _)| format!(".param .u32 {p}")))
        .collect();
    let mut s = format!(".visible .entry {name}(\n  {})\n{{\n{REGS}\n", params.join(", "));
    for (i, p) in ptrs.iter().enumerate() {
        s.push_str(&format!("  ld.param.u64 %rd{}, [{p}];\n", i + 1));
    }
    for (p, reg) in ints {
        s.push_str(&format!("  ld.param.u32 {reg}, [{p}];\n"));
    }
    for i in 1..=ptrs.len() {
        s.push_str(&format!("  cvta.to.global.u64 %rd{i}, %rd{i};\n"));
    }
    s.push_str(setup);
    s.push_str(GRID_STRIDE);
    s.push('\n');
    s.push_str(body);
    s.push_str("\n  add.u32 %r2, %r2, %r3;\n  bra.uni $loop;\n$done:\n  ret;\n}\n\n");
    s
}

/// `out[r, c] = silu(gu[r, c]) · gu[r, h + c]` over rows of `2h` (the gate
/// and up projections side by side). Parameters: gu (f32 `[rows, 2h]`), out
/// (act `[rows, h]`), h, n = rows·h.
fn swiglu(a: Act) -> String {
    let body = format!(
        r#"  div.u32 %r8, %r2, %r6;
  mul.lo.u32 %r9, %r8, %r6;
  sub.u32 %r9, %r2, %r9;
  mul.wide.u32 %rd3, %r8, %r7;
  cvt.u64.u32 %rd4, %r9;
  add.s64 %rd3, %rd3, %rd4;
  shl.b64 %rd3, %rd3, 2;
  add.s64 %rd3, %rd1, %rd3;
  ld.global.f32 %f1, [%rd3];
  mul.wide.u32 %rd5, %r6, 4;
  add.s64 %rd5, %rd3, %rd5;
  ld.global.f32 %f2, [%rd5];
{silu}  mul.wide.u32 %rd6, %r2, {bytes};
  add.s64 %rd6, %rd2, %rd6;
  {store}"#,
        silu = crate::gemv::silu_times("%f1", "%f2", "%f4", "%f3"),
        bytes = a.elem_bytes(),
        store = a.store("%rd6", "%f4"),
    );
    grid_stride_kernel(
        &format!("mixc_swiglu_{}", a.suffix()),
        &["p_gu", "p_out"],
        &[("p_h", "%r6"), ("p_n", "%r1")],
        "  shl.b32 %r7, %r6, 1;\n",
        &body,
    )
}

/// `out[i] = gelu(u[i])` (the tanh form: `0.5·u·(1 + tanh(0.7978846·(u +
/// 0.044715·u³)))`, with `tanh z = 1 - 2/(e^{2z} + 1)`). Parameters: u (f32),
/// out (act), n.
fn gelu(a: Act) -> String {
    let body = format!(
        r#"  mul.wide.u32 %rd3, %r2, 4;
  add.s64 %rd3, %rd1, %rd3;
  ld.global.f32 %f1, [%rd3];
  mul.f32 %f2, %f1, %f1;
  mul.f32 %f2, %f2, %f1;
  fma.rn.f32 %f2, %f2, 0f3D372713, %f1;
  mul.f32 %f2, %f2, 0f3F4C422A;
  mul.f32 %f3, %f2, 0f4038AA3B;
  ex2.approx.f32 %f3, %f3;
  add.f32 %f3, %f3, 0f3F800000;
  mov.f32 %f5, 0f40000000;
  div.rn.f32 %f4, %f5, %f3;
  mov.f32 %f5, 0f3F800000;
  sub.f32 %f4, %f5, %f4;
  add.f32 %f4, %f4, 0f3F800000;
  mul.f32 %f4, %f4, %f1;
  mul.f32 %f4, %f4, 0f3F000000;
  mul.wide.u32 %rd6, %r2, {bytes};
  add.s64 %rd6, %rd2, %rd6;
  {store}"#,
        bytes = a.elem_bytes(),
        store = a.store("%rd6", "%f4"),
    );
    grid_stride_kernel(&format!("mixc_gelu_{}", a.suffix()), &["p_u", "p_out"], &[("p_n", "%r1")], "", &body)
}

/// `out[i] = bf16(x[i])`. Parameters: x (f32), out (bf16), n.
fn cast_bf16() -> String {
    let body = format!(
        r#"  mul.wide.u32 %rd3, %r2, 4;
  add.s64 %rd3, %rd1, %rd3;
  ld.global.f32 %f1, [%rd3];
  mul.wide.u32 %rd6, %r2, 2;
  add.s64 %rd6, %rd2, %rd6;
  {store}"#,
        store = Act::Bf16.store("%rd6", "%f1"),
    );
    grid_stride_kernel("mixc_cast_bf16", &["p_x", "p_out"], &[("p_n", "%r1")], "", &body)
}

/// `y[r, c] += b[c]` over rows of `cols`. Parameters: y (f32), b (f32
/// `[cols]`), cols, n = rows·cols.
fn add_bias() -> String {
    let body = r#"  rem.u32 %r7, %r2, %r6;
  mul.wide.u32 %rd3, %r2, 4;
  add.s64 %rd3, %rd1, %rd3;
  ld.global.f32 %f1, [%rd3];
  mul.wide.u32 %rd4, %r7, 4;
  add.s64 %rd4, %rd2, %rd4;
  ld.global.f32 %f2, [%rd4];
  add.f32 %f1, %f1, %f2;
  st.global.f32 [%rd3], %f1;"#;
    grid_stride_kernel("mixc_add_bias", &["p_y", "p_b"], &[("p_cols", "%r6"), ("p_n", "%r1")], "", body)
}

/// Symmetric int8 codes of groups of `group` consecutive values of `x`
/// (act), as the host's `quantize`: `scale = max|x| / 127`, `q =
/// round(x / scale)` (halves away from zero, as Rust's `f32::round`),
/// clamped to ±127; a group of zeros has scale 0 and codes 0. One thread per
/// group. Parameters: x, q (i8), scales (f32 per group), group, n = groups.
fn quantize_i8(a: Act) -> String {
    // Value %r8 of the group (first value %r7) into %f2, its index in %r9.
    let value = format!(
        "add.u32 %r9, %r7, %r8;\n  mul.wide.u32 %rd4, %r9, {};\n  add.s64 %rd4, %rd1, %rd4;\n  {}",
        a.elem_bytes(),
        a.load("%f2", "%rd4")
    );
    let body = format!(
        r#"  mul.lo.u32 %r7, %r2, %r6;
  mov.f32 %f1, 0f00000000;
  mov.u32 %r8, 0;
$max:
  setp.ge.u32 %p2, %r8, %r6;
  @%p2 bra $scaled;
  {value}
  abs.f32 %f2, %f2;
  max.f32 %f1, %f1, %f2;
  add.u32 %r8, %r8, 1;
  bra.uni $max;
$scaled:
  div.rn.f32 %f3, %f1, 0f42FE0000;
  mul.wide.u32 %rd5, %r2, 4;
  add.s64 %rd5, %rd3, %rd5;
  st.global.f32 [%rd5], %f3;
  setp.gt.f32 %p3, %f3, 0f00000000;
  mov.u32 %r8, 0;
$code:
  setp.ge.u32 %p2, %r8, %r6;
  @%p2 bra $coded;
  {value}
  mov.f32 %f5, 0f00000000;
  @%p3 div.rn.f32 %f4, %f2, %f3;
  @%p3 cvt.rzi.f32.f32 %f5, %f4;
  @%p3 sub.f32 %f6, %f4, %f5;
  @%p3 abs.f32 %f6, %f6;
  @%p3 setp.ge.f32 %p4, %f6, 0f3F000000;
  @!%p3 setp.ne.u32 %p4, %r8, %r8;
  copysign.f32 %f7, %f4, 0f3F800000;
  @%p4 add.f32 %f5, %f5, %f7;
  min.f32 %f5, %f5, 0f42FE0000;
  max.f32 %f5, %f5, 0fC2FE0000;
  cvt.rzi.s32.f32 %r10, %f5;
  cvt.u16.u32 %hs3, %r10;
  cvt.u64.u32 %rd6, %r9;
  add.s64 %rd6, %rd2, %rd6;
  st.global.b8 [%rd6], %hs3;
  add.u32 %r8, %r8, 1;
  bra.uni $code;
$coded:"#
    );
    let name = format!("mixc_quant_i8_{}", a.suffix());
    grid_stride_kernel(&name, &["p_x", "p_q", "p_s"], &[("p_group", "%r6"), ("p_n", "%r1")], "", &body)
}

/// The values of [`quantize_i8`]'s codes, `y = q · scale` (stored as act),
/// as the host's `dequantize`. Parameters: q (i8), scales (f32 per group), y
/// (act), group, n = values.
fn dequantize_i8(a: Act) -> String {
    let body = format!(
        r#"  cvt.u64.u32 %rd4, %r2;
  add.s64 %rd4, %rd1, %rd4;
  ld.global.s8 %hs3, [%rd4];
  cvt.rn.f32.s16 %f1, %hs3;
  div.u32 %r8, %r2, %r6;
  mul.wide.u32 %rd5, %r8, 4;
  add.s64 %rd5, %rd2, %rd5;
  ld.global.f32 %f2, [%rd5];
  mul.f32 %f1, %f1, %f2;
  mul.wide.u32 %rd6, %r2, {bytes};
  add.s64 %rd6, %rd3, %rd6;
  {store}"#,
        bytes = a.elem_bytes(),
        store = a.store("%rd6", "%f1"),
    );
    let name = format!("mixc_dequant_i8_{}", a.suffix());
    grid_stride_kernel(&name, &["p_q", "p_s", "p_y"], &[("p_group", "%r6"), ("p_n", "%r1")], "", &body)
}

/// CTAs of a grid-stride launch over `n` elements.
pub fn grid_for(n: usize) -> u32 {
    n.div_ceil(THREADS as usize).clamp(1, 8192) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    fn ptxas() -> Option<PathBuf> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/find-ptxas.sh");
        let out = Command::new("bash").arg(script).output().ok()?;
        let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !p.is_empty()).then(|| PathBuf::from(p))
    }

    #[test]
    fn dependent_launches_from_sm_90_on() {
        for (t, want) in [("sm_80", false), ("sm_86", false), ("sm_90", true), ("sm_90a", true), ("sm_100", true)] {
            assert_eq!(dependent_launches(t), want, "{t}");
        }
        assert!(!dependent_launches("compute_x"));
        assert!(ptx("sm_90").contains("griddepcontrol.wait") && !ptx("sm_80").contains("griddepcontrol"));
    }

    #[test]
    fn every_kernel_is_in_the_module_once() {
        let text = ptx("sm_90");
        for name in kernel_names() {
            assert_eq!(text.matches(&format!(".entry {name}(")).count(), 1, "{name}");
        }
        assert_eq!(text.matches(".entry ").count(), kernel_names().len());
    }

    #[test]
    fn the_glue_assembles_for_sm80_and_sm90_without_spills() {
        let Some(ptxas) = ptxas() else {
            panic!("ptxas not found: run scripts/setup.sh (it installs the pip package nvidia-cuda-nvcc-cu12)");
        };
        let dir = std::env::temp_dir().join(format!("mixc-glue-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        for arch in ["sm_80", "sm_90"] {
            let file = dir.join(format!("glue-{arch}.ptx"));
            std::fs::write(&file, ptx(arch)).unwrap_or_else(|e| panic!("{e}"));
            let out = Command::new(&ptxas)
                .args(["-v", &format!("-arch={arch}"), "-o", "/dev/null"])
                .arg(&file)
                .output()
                .unwrap_or_else(|e| panic!("running ptxas: {e}"));
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success(), "{arch}:\n{text}");
            assert!(!text.lines().any(|l| l.contains("spill") && !l.contains("0 bytes spill")), "{arch}:\n{text}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
