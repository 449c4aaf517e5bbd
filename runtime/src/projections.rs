//! A decode step's projections through the GEMV kernels of [`crate::gemv`]:
//! a range of a weight's rows, several projections stacked into one weight
//! (each into its own buffer, one launch), and SwiGLU's gate and up with the
//! activation folded in; and the check of all three against f64 products.

use crate::cuda::{CudaError, CudaRunner, DeviceTensor};
use crate::dense::{act_dtype, Dense, Linear, Rows};
use crate::gemv::{self, Epilogue, Input};
use crate::glue::Act;
use crate::skinny;
use cudarc::driver::{sys, CudaFunction, CudaSlice, CudaViewMut, DevicePtr, DevicePtrMut, LaunchConfig};
use mixc_ir::DType;

fn drv<E: std::fmt::Debug>(what: &str) -> impl FnOnce(E) -> CudaError + '_ {
    move |e| CudaError::Driver(format!("{what}: {e:?}"))
}

/// CTAs of [`gemv::WARPS`] warps, a warp per output, for `out` outputs
/// (with the shared memory `input` needs for `rows` rows of `inner`).
fn config(out: usize, input: Input, rows: usize, inner: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (gemv::grid_for(out), 1, 1),
        block_dim: (32 * gemv::WARPS, 1, 1),
        shared_mem_bytes: gemv::shared_bytes(input, rows, inner) as u32,
    }
}

/// The tensor-core product's launch for `out` outputs.
fn skinny_config(out: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (skinny::grid_for(out), 1, 1), block_dim: (32 * skinny::WARPS, 1, 1), shared_mem_bytes: 0 }
}

/// Shared memory a CTA may have without raising its limit.
const SHARED_LIMIT: usize = 48 * 1024;

/// What a GEMV multiplies by its weight.
#[derive(Clone, Copy)]
pub enum GemvX<'a> {
    /// bf16 activations `[rows, inner]`.
    Act(&'a CudaSlice<u32>),
    /// The f32 residual `[rows, inner]`, RMS-normed by `weight` (f32
    /// `[inner]`) and `eps` on the way in (bf16, as the glue's RMSNorm stores).
    RmsNorm { x: &'a CudaSlice<u32>, weight: &'a DeviceTensor, eps: f32 },
    /// `bf16(x · w)` (`[rows, inner]`, the residual with an RMSNorm's weight
    /// applied) and the partial sums of squares of the residual's rows that
    /// the product before left ([`NormFeed`]): each row's sums are scaled by
    /// `1 / sqrt(mean x² + eps)` in the epilogue. The tensor-core product
    /// only (5–16 rows; [`skinny::Form::PreNormed`]).
    PreNormed { xw: &'a CudaSlice<u32>, partials: &'a CudaSlice<u32>, eps: f32 },
}

impl GemvX<'_> {
    /// The GEMV's input kind (`None`: the GEMV has no such kernel).
    fn input(&self) -> Option<Input> {
        match self {
            GemvX::Act(_) => Some(Input::Act),
            GemvX::RmsNorm { .. } => Some(Input::RmsNorm),
            GemvX::PreNormed { .. } => None,
        }
    }

    /// The tensor-core product's form for this input (`None`: it has none).
    fn form(&self) -> Option<skinny::Form> {
        match self {
            GemvX::Act(_) => Some(skinny::Form::Plain),
            GemvX::RmsNorm { .. } => None,
            GemvX::PreNormed { .. } => Some(skinny::Form::PreNormed),
        }
    }

    /// Checks the sizes against `rows` rows of `inner`.
    fn check(&self, rows: usize, inner: usize) -> Result<(), CudaError> {
        let ok = match self {
            GemvX::Act(x) => x.len() >= words(rows * inner, Act::Bf16),
            GemvX::RmsNorm { x, weight, .. } => {
                x.len() >= rows * inner
                    && weight.numel() == inner
                    && weight.dtype == DType::F32
                    && gemv::shared_bytes(Input::RmsNorm, rows, inner) <= SHARED_LIMIT
            }
            GemvX::PreNormed { xw, partials, .. } => {
                rows > gemv::MAX_ROWS
                    && xw.len() >= words(rows * inner, Act::Bf16)
                    && partials.len() >= skinny::partials_len(inner)
            }
        };
        if ok {
            Ok(())
        } else {
            Err(CudaError::Program(format!("a GEMV input of {rows} rows of {inner} that does not fit")))
        }
    }

    /// Appends the kernel's input parameters.
    fn push(&self, runner: &CudaRunner, p: &mut Params) {
        match self {
            GemvX::Act(x) => p.buf(runner, *x),
            GemvX::RmsNorm { x, weight, eps } => {
                p.buf(runner, *x);
                p.buf(runner, &weight.buf);
                p.f32(*eps);
            }
            GemvX::PreNormed { xw, partials, eps } => {
                p.buf(runner, *xw);
                p.buf(runner, *partials);
                p.f32(*eps);
            }
        }
    }
}

/// Where a feeding product ([`Dense::gemv_feeding`]) leaves the next
/// RMSNorm's operand: the norm's weight (f32 `[out]`), the operand
/// `bf16(y · w)` (`[rows, out]`) and the partial sums of squares (f32,
/// [`skinny::partials_len`]`(out)`).
pub struct NormFeed<'a> {
    pub weight: &'a DeviceTensor,
    pub xw: &'a mut CudaSlice<u32>,
    pub partials: &'a mut CudaSlice<u32>,
}

/// A kernel's parameters by value, each in a slot of 8 bytes (a 4-byte
/// one in the low half: x86 is little-endian), for `cuLaunchKernelEx`.
#[derive(Default)]
struct Params(Vec<u64>);

impl Params {
    fn buf(&mut self, runner: &CudaRunner, b: &impl DevicePtr<u32>) {
        let (ptr, _record) = b.device_ptr(runner.stream());
        self.0.push(ptr);
    }

    fn buf_mut(&mut self, runner: &CudaRunner, b: &mut impl DevicePtrMut<u32>) {
        let (ptr, _record) = b.device_ptr_mut(runner.stream());
        self.0.push(ptr);
    }

    fn u32(&mut self, v: u32) {
        self.0.push(u64::from(v));
    }

    fn f32(&mut self, v: f32) {
        self.0.push(u64::from(v.to_bits()));
    }
}

/// Launches `f` on the runner's stream; `dependent`: as a programmatic
/// dependent launch (the kernel may start before the one before it ends,
/// and waits for it itself: [`gemv::grid_dependency`]).
///
/// # Safety
/// `params` must match the kernel's parameters in number, order and size,
/// and the buffers must hold what the kernel reads and writes.
unsafe fn launch(
    runner: &CudaRunner,
    f: &CudaFunction,
    cfg: LaunchConfig,
    params: &mut Params,
    dependent: bool,
) -> Result<(), CudaError> {
    let mut args: Vec<*mut std::ffi::c_void> = params.0.iter_mut().map(|v| v as *mut u64 as *mut _).collect();
    // Safety: plain data; the union member set is the one the id names.
    let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
    attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attr.value.programmaticStreamSerializationAllowed = 1;
    let config = sys::CUlaunchConfig {
        gridDimX: cfg.grid_dim.0,
        gridDimY: cfg.grid_dim.1,
        gridDimZ: cfg.grid_dim.2,
        blockDimX: cfg.block_dim.0,
        blockDimY: cfg.block_dim.1,
        blockDimZ: cfg.block_dim.2,
        sharedMemBytes: cfg.shared_mem_bytes,
        hStream: runner.stream().cu_stream(),
        attrs: &mut attr,
        numAttrs: u32::from(dependent),
    };
    runner.stream().context().bind_to_thread().map_err(drv("binding the context"))?;
    // Safety: the caller's promise; `args` and `params` outlive the call
    // (the driver copies the values before it returns).
    unsafe { sys::cuLaunchKernelEx(&config, f.cu_function(), args.as_mut_ptr(), std::ptr::null_mut()) }
        .result()
        .map_err(drv("launching a GEMV"))
}

/// Words of `n` values of `act`.
fn words(n: usize, act: Act) -> usize {
    (n * act.elem_bytes()).div_ceil(4)
}

/// What one case of [`Dense::check_gemv`] checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemvKind {
    /// One projection (f32 output optionally added to what it holds).
    Plain { accumulate: bool },
    /// Projections stacked into one weight, each into its own bf16 buffer.
    Stacked { parts: usize },
    /// SwiGLU's gate and up, the activation applied (bf16 output).
    SwiGlu,
}

/// One case of [`Dense::check_gemv`].
#[derive(Clone, Debug)]
pub struct GemvCase {
    pub kind: GemvKind,
    /// With the RMSNorm folded in ([`GemvX::RmsNorm`], or with `fed`
    /// [`GemvX::PreNormed`]).
    pub normed: bool,
    /// A product of the split norm: the feeding one (not `normed`) or the
    /// one reading its operand (`normed`).
    pub fed: bool,
    pub rows: usize,
    pub out: usize,
    pub inner: usize,
    pub y: Act,
    /// `max |y − ref| / max |ref|` over each row (of each part), the worst.
    pub worst: f64,
}

impl GemvCase {
    /// The error rounding allows: of f32 accumulation, of a bf16 output; a
    /// normed `x` may round an element to the neighbouring bf16 where the
    /// host's sum of squares differs in its last bits (1e-3).
    pub fn tolerance(&self) -> f64 {
        match (self.y, self.normed) {
            (Act::Bf16, _) => 1e-2,
            (Act::F32, true) => 1e-3,
            (Act::F32, false) => 1e-4,
        }
    }

    pub fn ok(&self) -> bool {
        self.worst <= self.tolerance()
    }
}

impl Dense {
    /// Whether a projection of `rows` rows over `inner` inputs runs through
    /// the GEMV kernels (bf16 operands, at most [`gemv::MAX_ROWS`] rows, or
    /// [`skinny::MAX_ROWS`] on tensor cores; `inner` a multiple of 8 so that
    /// 16-byte loads never straddle a row; `MIXC_GEMV=0` turns them off,
    /// `MIXC_SKINNY=0` the tensor-core ones).
    pub fn gemv_fits(&self, rows: usize, inner: usize) -> bool {
        self.gemv && self.gemv_shape_fits(rows, inner) && (rows <= gemv::MAX_ROWS || self.skinny)
    }

    /// Whether [`Dense::gemv_fits`] and the RMSNorm can be folded in
    /// ([`GemvX::RmsNorm`]: the normed rows fit in shared memory;
    /// `MIXC_FOLD_NORM=0` says no).
    pub fn gemv_norm_fits(&self, rows: usize, inner: usize) -> bool {
        self.fold_norm
            && rows <= gemv::MAX_ROWS
            && self.gemv_fits(rows, inner)
            && gemv::shared_bytes(Input::RmsNorm, rows, inner) <= SHARED_LIMIT
    }

    /// [`Dense::gemv_fits`] whatever `MIXC_GEMV` and `MIXC_SKINNY` say.
    fn gemv_shape_fits(&self, rows: usize, inner: usize) -> bool {
        self.act == Act::Bf16 && (1..=skinny::MAX_ROWS).contains(&rows) && inner.is_multiple_of(8)
    }

    /// The kernel and launch of a product of `rows` rows with `epilogue`
    /// into `out` outputs: the warp-per-output GEMV for at most
    /// [`gemv::MAX_ROWS`] rows, the tensor-core [`skinny`] product beyond
    /// (whose parameters take the row count after `inner`).
    fn plan(
        &self,
        rows: usize,
        x: &GemvX,
        epilogue: Epilogue,
        out: usize,
        inner: usize,
    ) -> Result<(&CudaFunction, LaunchConfig, bool), CudaError> {
        if rows <= gemv::MAX_ROWS {
            let input = x.input().ok_or_else(|| {
                CudaError::Program(format!("a pre-normed input of {rows} rows (the GEMV takes the residual)"))
            })?;
            let f = self.kernel(&gemv::kernel_name(rows, input, epilogue))?;
            return Ok((f, config(out, input, rows, inner), false));
        }
        let form =
            x.form().ok_or_else(|| CudaError::Program(format!("a norm folded into a product of {rows} rows")))?;
        let f = self.kernel(&skinny::kernel_name(epilogue, form))?;
        Ok((f, skinny_config(out), true))
    }

    /// `y[rows, part.count] (+)= x · W[part]ᵀ` by the GEMV (y's size and the
    /// part checked by the caller, the shapes by [`Dense::gemv_fits`]).
    #[allow(clippy::too_many_arguments)]
    pub fn gemv(
        &self,
        runner: &CudaRunner,
        y: &mut CudaSlice<u32>,
        y_dtype: Act,
        x: GemvX,
        w: &DeviceTensor,
        part: Rows,
        rows: usize,
        accumulate: bool,
    ) -> Result<(), CudaError> {
        let inner = w.shape.get(1).copied().unwrap_or(0);
        x.check(rows, inner)?;
        if y.len() < words(rows * part.count, y_dtype) || w.dtype != DType::BF16 {
            return Err(CudaError::Program(format!("a GEMV of {rows} rows into {} words", y.len())));
        }
        let (f, cfg, skinny) = self.plan(rows, &x, Epilogue::Plain(y_dtype), part.count, inner)?;
        // `inner` is a multiple of 8, so the part's first row starts a word
        // (and a 16-byte boundary).
        let first = part.first * inner / 2;
        if first > w.buf.len() {
            return Err(CudaError::Program(format!("rows from {} of a weight of {} words", part.first, w.buf.len())));
        }
        let mut p = Params::default();
        p.buf(runner, &w.buf.slice(first..));
        x.push(runner, &mut p);
        p.buf_mut(runner, y);
        p.u32(part.count as u32);
        p.u32(inner as u32);
        if skinny {
            p.u32(rows as u32);
        }
        p.u32(u32::from(accumulate));
        // Safety: the parameters are the kernel's; x checked above, y
        // ([rows, out] in y_dtype) too, the part lies inside W (checked by
        // the caller); every 16-byte load stays inside a row of a 16-byte
        // aligned buffer.
        unsafe { launch(runner, f, cfg, &mut p, self.dependent) }
    }

    /// Whether a product of `rows` rows over `inner` into `out` outputs
    /// can prepare the RMSNorm of its result for the next product
    /// ([`Dense::gemv_feeding`]): the tensor-core product's rows, bf16
    /// operands, `MIXC_FOLD_NORM` not 0 and `MIXC_SPLIT_NORM=1` (see
    /// `Dense::split_norm`).
    pub fn feeds_norm(&self, rows: usize, inner: usize, out: usize) -> bool {
        self.fold_norm
            && self.split_norm
            && rows > gemv::MAX_ROWS
            && self.gemv_fits(rows, inner)
            && self.gemv_fits(rows, out)
    }

    /// `y (+)= x · Wᵀ` (f32 `y`, the residual; all of `W`'s rows) whose
    /// epilogue also prepares the RMSNorm of the new `y` with weight
    /// `feed.weight` for the next product: `feed.xw` gets `bf16(y · w)` and
    /// `feed.partials` each CTA's sums of `y²` by row, which a
    /// [`GemvX::PreNormed`] input of that product reads (see [`skinny`]).
    #[allow(clippy::too_many_arguments)]
    pub fn gemv_feeding(
        &self,
        runner: &CudaRunner,
        y: &mut CudaSlice<u32>,
        x: &CudaSlice<u32>,
        w: &DeviceTensor,
        rows: usize,
        accumulate: bool,
        feed: NormFeed<'_>,
    ) -> Result<(), CudaError> {
        let (out, inner) = (w.shape.first().copied().unwrap_or(0), w.shape.get(1).copied().unwrap_or(0));
        let fits = rows > gemv::MAX_ROWS
            && self.gemv_shape_fits(rows, inner)
            && self.gemv_shape_fits(rows, out)
            && w.dtype == DType::BF16
            && GemvX::Act(x).check(rows, inner).is_ok()
            && y.len() >= rows * out
            && feed.weight.dtype == DType::F32
            && feed.weight.numel() == out
            && feed.xw.len() >= words(rows * out, Act::Bf16)
            && feed.partials.len() >= skinny::partials_len(out);
        if !fits {
            return Err(CudaError::Program(format!(
                "a product of {rows} rows of {inner} into {out} that cannot prepare the next norm"
            )));
        }
        let f = self.kernel(&skinny::kernel_name(Epilogue::Plain(Act::F32), skinny::Form::Feeding))?;
        let mut p = Params::default();
        p.buf(runner, &w.buf);
        p.buf(runner, x);
        p.buf_mut(runner, y);
        p.u32(out as u32);
        p.u32(inner as u32);
        p.u32(rows as u32);
        p.u32(u32::from(accumulate));
        p.buf(runner, &feed.weight.buf);
        p.buf_mut(runner, feed.xw);
        p.buf_mut(runner, feed.partials);
        // Safety: the parameters are the kernel's; sizes checked above: x
        // [rows, inner] bf16, y [rows, out] f32, the norm's weight [out]
        // f32, xw [rows, out] bf16, a partial row of 16 per CTA.
        unsafe { launch(runner, f, skinny_config(out), &mut p, self.dependent) }
    }

    /// The projections stacked in `w` (`parts`, consecutive from row 0 and
    /// covering it) of `rows` rows of `x`, each into its own bf16 buffer
    /// `ys[i]` (`[rows, parts[i].count]`), in one launch.
    pub fn project_stacked(
        &self,
        runner: &CudaRunner,
        ys: &mut [CudaViewMut<'_, u32>],
        x: GemvX,
        w: &DeviceTensor,
        parts: &[Rows],
        rows: usize,
    ) -> Result<(), CudaError> {
        let (all, inner) = (w.shape.first().copied().unwrap_or(0), w.shape.get(1).copied().unwrap_or(0));
        if !self.gemv_shape_fits(rows, inner) || w.dtype != DType::BF16 {
            return Err(CudaError::Program(format!("stacked projections of {rows} rows over {inner} need the GEMV")));
        }
        if parts.is_empty() || parts.len() > gemv::SEGMENTS || parts.len() != ys.len() {
            return Err(CudaError::Program(format!(
                "{} stacked projections for {} buffers (at most {})",
                parts.len(),
                ys.len(),
                gemv::SEGMENTS
            )));
        }
        let mut ends = [all as u32; gemv::SEGMENTS];
        let mut next = 0;
        for (i, (p, y)) in parts.iter().zip(ys.iter()).enumerate() {
            if p.first != next || y.len() < words(rows * p.count, Act::Bf16) {
                return Err(CudaError::Program(format!(
                    "stacked projection {i} (rows {}..{}) after row {next}, into a buffer of {} words",
                    p.first,
                    p.first + p.count,
                    y.len()
                )));
            }
            next += p.count;
            ends[i] = next as u32;
        }
        if next != all {
            return Err(CudaError::Program(format!("stacked projections cover {next} of {all} rows")));
        }
        x.check(rows, inner)?;
        let (f, cfg, skinny) = self.plan(rows, &x, Epilogue::Segments, all, inner)?;
        let mut p = Params::default();
        p.buf(runner, &w.buf);
        x.push(runner, &mut p);
        for y in ys.iter_mut() {
            p.buf_mut(runner, y);
        }
        for _ in parts.len()..gemv::SEGMENTS {
            p.0.push(0);
        }
        for e in ends {
            p.u32(e);
        }
        p.u32(all as u32);
        p.u32(inner as u32);
        if skinny {
            p.u32(rows as u32);
        }
        // Safety: the parameters are the kernel's; checked above: x holds
        // [rows, inner] bf16, every part's buffer [rows, count] bf16, the
        // parts tile W's rows in order (an unused segment's end is W's last
        // row, so it is never chosen).
        unsafe { launch(runner, f, cfg, &mut p, self.dependent) }
    }

    /// `y[rows, h] = silu(x · gateᵀ) · (x · upᵀ)` in bf16 from SwiGLU's
    /// stacked `[gate; up]` (`[2h, inner]`, no bias), in one launch.
    pub fn project_swiglu(
        &self,
        runner: &CudaRunner,
        y: &mut CudaSlice<u32>,
        x: GemvX,
        gate_up: &Linear,
        rows: usize,
    ) -> Result<(), CudaError> {
        let (two_h, inner) = (gate_up.out(), gate_up.inner());
        let h = two_h / 2;
        if !self.gemv_shape_fits(rows, inner) || gate_up.bias.is_some() || two_h % 2 != 0 {
            return Err(CudaError::Program(format!(
                "SwiGLU's [{two_h}, {inner}] projection of {rows} rows needs the GEMV and no bias"
            )));
        }
        if y.len() < words(rows * h, Act::Bf16) {
            return Err(CudaError::Program("SwiGLU projection buffers too small".into()));
        }
        x.check(rows, inner)?;
        let (f, cfg, skinny) = self.plan(rows, &x, Epilogue::SwiGlu, h, inner)?;
        let mut p = Params::default();
        p.buf(runner, &gate_up.weight.buf);
        x.push(runner, &mut p);
        p.buf_mut(runner, y);
        p.u32(h as u32);
        p.u32(inner as u32);
        if skinny {
            p.u32(rows as u32);
        }
        // Safety: the parameters are the kernel's; sizes checked above; a
        // warp reads rows n and h + n < 2h of W.
        unsafe { launch(runner, f, cfg, &mut p, self.dependent) }
    }

    /// Checks the GEMV kernels (whatever `MIXC_GEMV` says) and the
    /// tensor-core ones for 5–16 rows against f64 products of the same bf16
    /// values, over shapes of a 1.3B model's decode step and ragged ones,
    /// plain, stacked, SwiGLU, and with the RMSNorm folded in. Needs bf16
    /// operands ([`Act::Bf16`]).
    pub fn check_gemv(&self, runner: &CudaRunner) -> Result<Vec<GemvCase>, CudaError> {
        if self.act != Act::Bf16 {
            return Err(CudaError::Program("the GEMV kernels take bf16 operands".into()));
        }
        let mut rng = mixc_ir::mixers::inputs::SplitMix::new(0x9e37_79b9);
        let mut next = move || half::bf16::from_f32((rng.uniform() * 2.0 - 1.0) as f32).to_f32();
        let mut draw = |n: usize| -> Vec<f32> { (0..n).map(|_| next()).collect() };
        let mut out = Vec::new();
        let plain = [
            (1, 2048, 2048, Act::F32, true, false),
            (1, 11264, 2048, Act::F32, false, false),
            (1, 2048, 5632, Act::F32, true, false),
            (1, 1024, 2048, Act::Bf16, false, false),
            (2, 16, 2048, Act::Bf16, false, false),
            (3, 1024, 16, Act::F32, false, false),
            (4, 64, 176, Act::F32, true, false),
            (4, 200, 1000, Act::Bf16, false, false),
            (1, 4000, 2048, Act::F32, false, true),
            (3, 200, 1000, Act::F32, true, true),
            // On tensor cores (more than gemv::MAX_ROWS rows).
            (16, 2048, 2048, Act::F32, true, false),
            (16, 1024, 2048, Act::Bf16, false, false),
            (5, 200, 1000, Act::F32, false, false),
            (9, 24, 16, Act::F32, true, false),
            (12, 4000, 5632, Act::Bf16, false, false),
        ];
        for (rows, n_out, inner, y_act, accumulate, normed) in plain {
            let (w, y0) = (draw(n_out * inner), draw(rows * n_out));
            let x = Operand::new(runner, &mut draw, rows, inner, normed)?;
            let wd = runner.upload_f32(&w, &[n_out, inner], DType::BF16)?;
            let mut yd = runner.upload_f32(&y0, &[rows, n_out], act_dtype(y_act))?;
            let part = Rows { first: 0, count: n_out };
            self.gemv(runner, &mut yd.buf, y_act, x.gemv_x(), &wd, part, rows, accumulate)?;
            let got = download(runner, &yd)?;
            let want = products(&w, &x.values, rows, 0..n_out, inner);
            let want: Vec<f64> =
                want.iter().zip(&y0).map(|(p, y)| p + if accumulate { f64::from(*y) } else { 0.0 }).collect();
            let worst = worst_by_row(&got, &want, rows, n_out);
            let kind = GemvKind::Plain { accumulate };
            out.push(GemvCase { kind, normed, fed: false, rows, out: n_out, inner, y: y_act, worst });
        }
        // Stacked: q, k, v and a low-rank gate's first stage of a small head,
        // and a ragged set; and the second of three parts alone (a range of rows).
        let stacked = [
            (1, vec![1024, 1024, 2048, 2048, 16], 2048, false),
            (3, vec![24, 8, 40], 72, false),
            (1, vec![1024, 1024, 2048, 2048, 16], 2048, true),
            (4, vec![24, 8, 40], 72, true),
            (16, vec![1024, 1024, 2048, 2048, 16], 2048, false),
            (7, vec![24, 8, 40], 72, false),
        ];
        for (rows, counts, inner, normed) in stacked {
            let all: usize = counts.iter().sum();
            let w = draw(all * inner);
            let x = Operand::new(runner, &mut draw, rows, inner, normed)?;
            let wd = runner.upload_f32(&w, &[all, inner], DType::BF16)?;
            let mut parts = Vec::new();
            let mut first = 0;
            for c in &counts {
                parts.push(Rows { first, count: *c });
                first += c;
            }
            let mut bufs = Vec::new();
            for p in &parts {
                bufs.push(runner.upload_f32(&draw(rows * p.count), &[rows, p.count], DType::BF16)?);
            }
            let mut ys: Vec<CudaViewMut<'_, u32>> = bufs.iter_mut().map(|b| b.buf.slice_mut(..)).collect();
            self.project_stacked(runner, &mut ys, x.gemv_x(), &wd, &parts, rows)?;
            let mut worst: f64 = 0.0;
            for (p, b) in parts.iter().zip(&bufs) {
                let want = products(&w, &x.values, rows, p.first..p.first + p.count, inner);
                worst = worst.max(worst_by_row(&download(runner, b)?, &want, rows, p.count));
            }
            let kind = GemvKind::Stacked { parts: parts.len() };
            out.push(GemvCase { kind, normed, fed: false, rows, out: all, inner, y: Act::Bf16, worst });
            let middle = parts[1];
            let mut yd = runner.zeros(&[rows, middle.count], DType::F32)?;
            self.gemv(runner, &mut yd.buf, Act::F32, x.gemv_x(), &wd, middle, rows, false)?;
            let want = products(&w, &x.values, rows, middle.first..middle.first + middle.count, inner);
            let worst = worst_by_row(&download(runner, &yd)?, &want, rows, middle.count);
            let kind = GemvKind::Plain { accumulate: false };
            out.push(GemvCase { kind, normed, fed: false, rows, out: middle.count, inner, y: Act::F32, worst });
        }
        let swiglu = [
            (1, 5632, 2048, false),
            (2, 40, 2048, false),
            (4, 24, 264, false),
            (1, 5632, 2048, true),
            (16, 5632, 2048, false),
            (6, 40, 264, false),
        ];
        for (rows, h, inner, normed) in swiglu {
            let w = draw(2 * h * inner);
            let x = Operand::new(runner, &mut draw, rows, inner, normed)?;
            let lin = Linear { weight: runner.upload_f32(&w, &[2 * h, inner], DType::BF16)?, bias: None };
            let mut yd = runner.zeros(&[rows, h], DType::BF16)?;
            self.project_swiglu(runner, &mut yd.buf, x.gemv_x(), &lin, rows)?;
            let gate = products(&w, &x.values, rows, 0..h, inner);
            let up = products(&w, &x.values, rows, h..2 * h, inner);
            let want: Vec<f64> = gate.iter().zip(&up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
            let worst = worst_by_row(&download(runner, &yd)?, &want, rows, h);
            out.push(GemvCase { kind: GemvKind::SwiGlu, normed, fed: false, rows, out: h, inner, y: Act::Bf16, worst });
        }
        out.extend(self.check_fed(runner, &mut draw)?);
        Ok(out)
    }

    /// [`Dense::check_gemv`]'s cases of an RMSNorm split between two
    /// products: a residual added to by a feeding product (checked as a
    /// plain one), then read pre-normed by a plain f32, a stacked and a
    /// SwiGLU product, each against f64 products of the operand the host
    /// derives from the downloaded residual (`bf16(y · w)`, as the kernel
    /// rounds it), scaled by each row's `1 / rms` in f64.
    fn check_fed(
        &self,
        runner: &CudaRunner,
        draw: &mut impl FnMut(usize) -> Vec<f32>,
    ) -> Result<Vec<GemvCase>, CudaError> {
        let mut out = Vec::new();
        // (rows, the feeding product's inner, d): a 1.3B model's, a ragged one.
        for (rows, od, d) in [(16, 2048, 2048), (7, 72, 40)] {
            let (wo, o) = (draw(d * od), draw(rows * od));
            let y0: Vec<f32> = draw(rows * d).iter().map(|v| 3.0 * v).collect();
            let nw: Vec<f32> = draw(d).iter().map(|v| 1.0 + 0.5 * v).collect();
            let wod = runner.upload_f32(&wo, &[d, od], DType::BF16)?;
            let od_x = runner.upload_f32(&o, &[rows, od], DType::BF16)?;
            let mut yd = runner.upload_f32(&y0, &[rows, d], DType::F32)?;
            let nwd = runner.upload_f32(&nw, &[d], DType::F32)?;
            let mut xw = runner.zeros(&[rows, d], DType::BF16)?;
            let mut partials = runner.zeros(&[skinny::partials_len(d)], DType::F32)?;
            let feed = NormFeed { weight: &nwd, xw: &mut xw.buf, partials: &mut partials.buf };
            self.gemv_feeding(runner, &mut yd.buf, &od_x.buf, &wod, rows, true, feed)?;
            let y = download(runner, &yd)?;
            let want: Vec<f64> =
                products(&wo, &o, rows, 0..d, od).iter().zip(&y0).map(|(p, y)| p + f64::from(*y)).collect();
            let worst = worst_by_row(&y, &want, rows, d);
            let kind = GemvKind::Plain { accumulate: true };
            out.push(GemvCase { kind, normed: false, fed: true, rows, out: d, inner: od, y: Act::F32, worst });
            // What the next product multiplies, and each row's scale.
            let values: Vec<f32> =
                y.iter().enumerate().map(|(i, v)| half::bf16::from_f32(v * nw[i % d]).to_f32()).collect();
            let scales: Vec<f64> = y
                .chunks(d)
                .map(|row| {
                    1.0 / (row.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / d as f64 + f64::from(CHECK_EPS))
                        .sqrt()
                })
                .collect();
            let scaled =
                |p: Vec<f64>, n: usize| -> Vec<f64> { p.iter().enumerate().map(|(i, v)| v * scales[i / n]).collect() };
            let x = GemvX::PreNormed { xw: &xw.buf, partials: &partials.buf, eps: CHECK_EPS };
            // A plain f32 product (a head).
            let n_out = if d > 64 { 4000 } else { 24 };
            let w = draw(n_out * d);
            let wd = runner.upload_f32(&w, &[n_out, d], DType::BF16)?;
            let mut yd = runner.zeros(&[rows, n_out], DType::F32)?;
            self.gemv(runner, &mut yd.buf, Act::F32, x, &wd, Rows { first: 0, count: n_out }, rows, false)?;
            let want = scaled(products(&w, &values, rows, 0..n_out, d), n_out);
            let worst = worst_by_row(&download(runner, &yd)?, &want, rows, n_out);
            let kind = GemvKind::Plain { accumulate: false };
            out.push(GemvCase { kind, normed: true, fed: true, rows, out: n_out, inner: d, y: Act::F32, worst });
            // Stacked (q, k, v, a gate's first stage).
            let counts = if d > 64 { vec![1024, 1024, 2048, 2048, 16] } else { vec![24, 8, 40] };
            let all: usize = counts.iter().sum();
            let w = draw(all * d);
            let wd = runner.upload_f32(&w, &[all, d], DType::BF16)?;
            let mut parts = Vec::new();
            let mut bufs = Vec::new();
            let mut first = 0;
            for c in &counts {
                parts.push(Rows { first, count: *c });
                bufs.push(runner.zeros(&[rows, *c], DType::BF16)?);
                first += c;
            }
            let mut ys: Vec<CudaViewMut<'_, u32>> = bufs.iter_mut().map(|b| b.buf.slice_mut(..)).collect();
            self.project_stacked(runner, &mut ys, x, &wd, &parts, rows)?;
            let mut worst: f64 = 0.0;
            for (p, b) in parts.iter().zip(&bufs) {
                let want = scaled(products(&w, &values, rows, p.first..p.first + p.count, d), p.count);
                worst = worst.max(worst_by_row(&download(runner, b)?, &want, rows, p.count));
            }
            let kind = GemvKind::Stacked { parts: parts.len() };
            out.push(GemvCase { kind, normed: true, fed: true, rows, out: all, inner: d, y: Act::Bf16, worst });
            // SwiGLU.
            let h = if d > 64 { 5632 } else { 40 };
            let w = draw(2 * h * d);
            let lin = Linear { weight: runner.upload_f32(&w, &[2 * h, d], DType::BF16)?, bias: None };
            let mut yd = runner.zeros(&[rows, h], DType::BF16)?;
            self.project_swiglu(runner, &mut yd.buf, x, &lin, rows)?;
            let gate = scaled(products(&w, &values, rows, 0..h, d), h);
            let up = scaled(products(&w, &values, rows, h..2 * h, d), h);
            let want: Vec<f64> = gate.iter().zip(&up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
            let worst = worst_by_row(&download(runner, &yd)?, &want, rows, h);
            out.push(GemvCase {
                kind: GemvKind::SwiGlu,
                normed: true,
                fed: true,
                rows,
                out: h,
                inner: d,
                y: Act::Bf16,
                worst,
            });
        }
        Ok(out)
    }
}

/// A checked GEMV's `x` on the card, and the bf16 values the kernel
/// multiplies (for a normed one, the f32 residual normed on the host as the
/// kernel norms it).
struct Operand {
    x: DeviceTensor,
    norm: Option<DeviceTensor>,
    values: Vec<f32>,
}

/// The eps of the checked norms.
const CHECK_EPS: f32 = 1e-6;

impl Operand {
    fn new(
        runner: &CudaRunner,
        draw: &mut impl FnMut(usize) -> Vec<f32>,
        rows: usize,
        inner: usize,
        normed: bool,
    ) -> Result<Operand, CudaError> {
        let x = draw(rows * inner);
        if !normed {
            return Ok(Operand { x: runner.upload_f32(&x, &[rows, inner], DType::BF16)?, norm: None, values: x });
        }
        // A residual of larger values, a norm weight around 1.
        let x: Vec<f32> = x.iter().map(|v| 3.0 * v).collect();
        let w: Vec<f32> = draw(inner).iter().map(|v| 1.0 + 0.5 * v).collect();
        let mut values = Vec::with_capacity(rows * inner);
        for row in x.chunks(inner) {
            let mean = row.iter().map(|v| v * v).sum::<f32>() / inner as f32;
            let scale = 1.0 / (mean + CHECK_EPS).sqrt();
            values.extend(row.iter().zip(&w).map(|(v, g)| half::bf16::from_f32(v * scale * g).to_f32()));
        }
        Ok(Operand {
            x: runner.upload_f32(&x, &[rows, inner], DType::F32)?,
            norm: Some(runner.upload_f32(&w, &[inner], DType::F32)?),
            values,
        })
    }

    fn gemv_x(&self) -> GemvX<'_> {
        match &self.norm {
            None => GemvX::Act(&self.x.buf),
            Some(weight) => GemvX::RmsNorm { x: &self.x.buf, weight, eps: CHECK_EPS },
        }
    }
}

/// `Σ_k x[r, k] · W[n, k]` in f64 for every row `r` and output `n` of `outs`
/// (row-major `[rows, outs.len()]`).
fn products(w: &[f32], x: &[f32], rows: usize, outs: std::ops::Range<usize>, inner: usize) -> Vec<f64> {
    let mut y = Vec::with_capacity(rows * outs.len());
    for r in 0..rows {
        for n in outs.clone() {
            y.push((0..inner).map(|k| f64::from(w[n * inner + k]) * f64::from(x[r * inner + k])).sum());
        }
    }
    y
}

/// The worst over rows of `max |got − want| / max |want|` (a missing value
/// counts as infinitely wrong).
fn worst_by_row(got: &[f32], want: &[f64], rows: usize, n: usize) -> f64 {
    let mut worst: f64 = 0.0;
    for r in 0..rows {
        let row = &want[r * n..(r + 1) * n];
        let scale = row.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
        let err = row.iter().enumerate().fold(0.0f64, |m, (i, want)| {
            let g = got.get(r * n + i).map_or(f64::INFINITY, |v| f64::from(*v));
            m.max((g - want).abs())
        });
        worst = worst.max(err / scale);
    }
    worst
}

fn download(runner: &CudaRunner, t: &DeviceTensor) -> Result<Vec<f32>, CudaError> {
    match runner.download_tensor(t)?.data {
        crate::Data::F32(v) => Ok(v),
        crate::Data::I32(_) => Err(CudaError::Program("a GEMV output downloaded as integers".into())),
    }
}
