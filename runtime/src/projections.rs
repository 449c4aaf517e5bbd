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
/// (with the shared memory `x` needs for `rows` rows of `inner`).
fn config(out: usize, x: &GemvX, rows: usize, inner: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (gemv::grid_for(out), 1, 1),
        block_dim: (32 * gemv::WARPS, 1, 1),
        shared_mem_bytes: gemv::shared_bytes(x.input(), rows, inner) as u32,
    }
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
}

impl GemvX<'_> {
    fn input(&self) -> Input {
        match self {
            GemvX::Act(_) => Input::Act,
            GemvX::RmsNorm { .. } => Input::RmsNorm,
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
        }
    }
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
    /// With the RMSNorm folded in ([`GemvX::RmsNorm`]).
    pub normed: bool,
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
            let f = self.kernel(&gemv::kernel_name(rows, x.input(), epilogue))?;
            return Ok((f, config(out, x, rows, inner), false));
        }
        if x.input() != Input::Act {
            return Err(CudaError::Program(format!("a norm folded into a product of {rows} rows")));
        }
        let f = self.kernel(&skinny::kernel_name(epilogue))?;
        let cfg = LaunchConfig {
            grid_dim: (skinny::grid_for(out), 1, 1),
            block_dim: (32 * skinny::WARPS, 1, 1),
            shared_mem_bytes: 0,
        };
        Ok((f, cfg, true))
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
            out.push(GemvCase { kind, normed, rows, out: n_out, inner, y: y_act, worst });
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
            out.push(GemvCase { kind, normed, rows, out: all, inner, y: Act::Bf16, worst });
            let middle = parts[1];
            let mut yd = runner.zeros(&[rows, middle.count], DType::F32)?;
            self.gemv(runner, &mut yd.buf, Act::F32, x.gemv_x(), &wd, middle, rows, false)?;
            let want = products(&w, &x.values, rows, middle.first..middle.first + middle.count, inner);
            let worst = worst_by_row(&download(runner, &yd)?, &want, rows, middle.count);
            let kind = GemvKind::Plain { accumulate: false };
            out.push(GemvCase { kind, normed, rows, out: middle.count, inner, y: Act::F32, worst });
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
            out.push(GemvCase { kind: GemvKind::SwiGlu, normed, rows, out: h, inner, y: Act::Bf16, worst });
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
