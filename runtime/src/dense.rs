//! The dense work of a model's layers on the GPU: projections through cuBLAS
//! (`GemmEx`, f32 accumulation) and the glue kernels of [`crate::glue`].
//!
//! Every call only queues work on the runner's stream; buffers are the
//! runtime's `CudaSlice<u32>` words (16-bit values packed two to a word).

use crate::cuda::{CudaError, CudaRunner, DeviceTensor};
use crate::glue::{self, Act, RowNorm};
use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::driver::{CudaFunction, CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;
use mixc_ir::DType;
use std::collections::BTreeMap;
use std::ffi::c_void;

fn drv<E: std::fmt::Debug>(what: &str) -> impl FnOnce(E) -> CudaError + '_ {
    move |e| CudaError::Driver(format!("{what}: {e:?}"))
}

/// Bytes of cuBLAS's workspace (its guide suggests 32 MiB on Hopper).
const BLAS_WORKSPACE: usize = 32 << 20;

/// Whether cuBLAS can be loaded.
pub fn blas_available() -> bool {
    // Safety: only probes for the shared library.
    unsafe { blas_sys::is_culib_present() }
}

/// cuBLAS and the glue kernels, bound to one runner's stream.
pub struct Dense {
    blas: CudaBlas,
    /// cuBLAS's workspace, set once so that GEMMs allocate nothing (a
    /// requirement of graph capture).
    _workspace: CudaSlice<u32>,
    fns: BTreeMap<String, CudaFunction>,
    /// The dtype of the projections' operands.
    pub act: Act,
    /// Projections of a few rows through [`crate::gemv`] rather than cuBLAS
    /// (bf16 operands; `MIXC_GEMV=0` turns it off).
    pub(crate) gemv: bool,
    /// RMSNorms folded into the GEMVs that read them (`MIXC_FOLD_NORM=0`
    /// turns it off). GLA-1.3B, one sequence, H200, 2026-12-06: 1.31 ms a
    /// step folded against 1.48 ms with norm kernels of their own, once the
    /// prologue issued all its loads at once (a load per loop turn made the
    /// folded step slower: 1.84 vs 1.75 ms on an H100).
    pub(crate) fold_norm: bool,
    /// Products of 5–16 rows on tensor cores ([`crate::skinny`]) rather
    /// than cuBLAS (`MIXC_SKINNY=0` turns it off).
    pub(crate) skinny: bool,
    /// The RMSNorm of a step of 5–16 rows split between the product that
    /// adds to the residual and the one that reads the norm
    /// ([`crate::skinny::Form`]). Off unless `MIXC_SPLIT_NORM=1` until it
    /// has run on a card (written 2026-12-08, when none was lent); then the
    /// norms are kernels of their own at those rows.
    pub(crate) split_norm: bool,
    /// The GEMV and tensor-core products launched as programmatic dependent
    /// launches (sm_90+; `MIXC_PDL=0` turns it off): each starts loading
    /// its weights while the kernel before it finishes.
    pub(crate) dependent: bool,
}

/// Rows `first..first + count` of a weight matrix: one projection of
/// several stacked into one matrix (they read the same input).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rows {
    pub first: usize,
    pub count: usize,
}

/// A projection's weight `[out, inner]` (in [`Dense::act`]) and optional f32 bias `[out]`.
pub struct Linear {
    pub weight: DeviceTensor,
    pub bias: Option<DeviceTensor>,
}

impl Linear {
    pub fn out(&self) -> usize {
        self.weight.shape.first().copied().unwrap_or(0)
    }

    pub fn inner(&self) -> usize {
        self.weight.shape.get(1).copied().unwrap_or(0)
    }

    /// Bytes of the weight and the bias on the card.
    pub fn bytes(&self) -> usize {
        self.weight.bytes() + self.bias.as_ref().map_or(0, |b| b.bytes())
    }
}

/// The device dtype of an [`Act`].
pub fn act_dtype(act: Act) -> DType {
    match act {
        Act::F32 => DType::F32,
        Act::Bf16 => DType::BF16,
    }
}

impl Dense {
    /// Loads the glue kernels (compiled for `target`, e.g. `sm_90`) and opens cuBLAS on the runner's stream.
    pub fn new(runner: &CudaRunner, target: &str, act: Act) -> Result<Dense, CudaError> {
        if !blas_available() {
            return Err(CudaError::Driver(
                "cuBLAS was not found (libcublas.so): add the folder that holds it (a CUDA toolkit's lib64, or \
                 the pip package nvidia-cublas) to LD_LIBRARY_PATH"
                    .into(),
            ));
        }
        let ctx = runner.stream().context();
        let module = ctx.load_module(Ptx::from_src(glue::ptx(target))).map_err(drv("loading the glue kernels"))?;
        let mut fns = BTreeMap::new();
        for name in glue::kernel_names() {
            let f = module.load_function(&name).map_err(drv("finding a glue kernel"))?;
            fns.insert(name, f);
        }
        let blas = CudaBlas::new(runner.stream().clone()).map_err(drv("opening cuBLAS"))?;
        let mut workspace = runner.stream().alloc_zeros::<u32>(BLAS_WORKSPACE / 4).map_err(drv("allocating"))?;
        {
            let (ptr, _w) = workspace.device_ptr_mut(runner.stream());
            // Safety: the workspace lives as long as the handle (both in `Dense`).
            unsafe { blas_sys::cublasSetWorkspace_v2(*blas.handle(), ptr as *mut c_void, BLAS_WORKSPACE) }
                .result()
                .map_err(drv("setting cuBLAS's workspace"))?;
        }
        let on = |var: &str| std::env::var(var).map_or(true, |v| v != "0");
        Ok(Dense {
            blas,
            _workspace: workspace,
            fns,
            act,
            gemv: on("MIXC_GEMV"),
            fold_norm: on("MIXC_FOLD_NORM"),
            skinny: on("MIXC_SKINNY"),
            split_norm: std::env::var("MIXC_SPLIT_NORM").is_ok_and(|v| v == "1"),
            dependent: on("MIXC_PDL") && glue::dependent_launches(target),
        })
    }

    pub(crate) fn kernel(&self, name: &str) -> Result<&CudaFunction, CudaError> {
        self.fns.get(name).ok_or_else(|| CudaError::Program(format!("no glue kernel `{name}`")))
    }

    fn act_kernel(&self, what: &str) -> Result<&CudaFunction, CudaError> {
        self.kernel(&format!("mixc_{what}_{}", self.act.suffix()))
    }

    /// `y[rows, out] (+)= x[rows, inner] · Wᵀ (+ b)`: `x` in the act dtype,
    /// `y` f32; with `accumulate`, added to what `y` holds (the residual).
    pub fn linear(
        &self,
        runner: &CudaRunner,
        y: &mut CudaSlice<u32>,
        x: &CudaSlice<u32>,
        lin: &Linear,
        rows: usize,
        accumulate: bool,
    ) -> Result<(), CudaError> {
        self.linear_as(runner, y, Act::F32, x, lin, rows, accumulate)
    }

    /// [`Dense::linear`] with `y` stored as `y_dtype` (bf16: rounded from
    /// the f32 accumulation; a bias needs an f32 `y`).
    #[allow(clippy::too_many_arguments)]
    pub fn linear_as(
        &self,
        runner: &CudaRunner,
        y: &mut CudaSlice<u32>,
        y_dtype: Act,
        x: &CudaSlice<u32>,
        lin: &Linear,
        rows: usize,
        accumulate: bool,
    ) -> Result<(), CudaError> {
        if y_dtype != Act::F32 && lin.bias.is_some() {
            return Err(CudaError::Program("a biased projection needs an f32 output".into()));
        }
        let all = Rows { first: 0, count: lin.out() };
        self.project(runner, y, y_dtype, x, &lin.weight, all, rows, accumulate)?;
        self.add_bias(runner, y, lin, rows)
    }

    /// `y[rows, count] (+)= x[rows, inner] · W[part]ᵀ` (no bias): through
    /// the GEMV for a decode step's few rows where it applies, else cuBLAS.
    #[allow(clippy::too_many_arguments)]
    pub fn project(
        &self,
        runner: &CudaRunner,
        y: &mut CudaSlice<u32>,
        y_dtype: Act,
        x: &CudaSlice<u32>,
        w: &DeviceTensor,
        part: Rows,
        rows: usize,
        accumulate: bool,
    ) -> Result<(), CudaError> {
        let (all, inner) = (w.shape.first().copied().unwrap_or(0), w.shape.get(1).copied().unwrap_or(0));
        let out = part.count;
        let need_x = (rows * inner * self.act.elem_bytes()).div_ceil(4);
        let need_y = (rows * out * y_dtype.elem_bytes()).div_ceil(4);
        if part.first + out > all || w.dtype != act_dtype(self.act) {
            return Err(CudaError::Program(format!(
                "rows {}..{} of a {} weight [{all}, {inner}] for {:?} operands",
                part.first,
                part.first + out,
                w.dtype,
                self.act
            )));
        }
        if y.len() < need_y || x.len() < need_x {
            return Err(CudaError::Program(format!(
                "a projection [{out}, {inner}] of {rows} rows with buffers of {} and {} words",
                x.len(),
                y.len()
            )));
        }
        if rows == 0 || out == 0 {
            return Ok(());
        }
        if self.gemv_fits(rows, inner) {
            return self.gemv(runner, y, y_dtype, crate::projections::GemvX::Act(x), w, part, rows, accumulate);
        }
        let dt = match self.act {
            Act::F32 => blas_sys::cudaDataType::CUDA_R_32F,
            Act::Bf16 => blas_sys::cudaDataType::CUDA_R_16BF,
        };
        let (alpha, beta) = (1.0f32, if accumulate { 1.0f32 } else { 0.0f32 });
        let stream = runner.stream();
        {
            let (wp, _w) = w.buf.device_ptr(stream);
            let wp = wp + (part.first * inner * self.act.elem_bytes()) as u64;
            let (xp, _x) = x.device_ptr(stream);
            let (yp, _y) = y.device_ptr_mut(stream);
            // Column-major view: yᵀ [out, rows] = W (stored [out, inner] row-major,
            // i.e. [inner, out] column-major, transposed) · xᵀ [inner, rows].
            // Safety: the pointers address live buffers of at least the sizes
            // checked above (W's rows `part` inside its `all` rows), on the
            // handle's stream; alpha and beta are f32 as the f32 compute type
            // requires.
            unsafe {
                blas::gemm_ex(
                    *self.blas.handle(),
                    blas_sys::cublasOperation_t::CUBLAS_OP_T,
                    blas_sys::cublasOperation_t::CUBLAS_OP_N,
                    out as i32,
                    rows as i32,
                    inner as i32,
                    &alpha as *const f32 as *const c_void,
                    wp as *const c_void,
                    dt,
                    inner as i32,
                    xp as *const c_void,
                    dt,
                    inner as i32,
                    &beta as *const f32 as *const c_void,
                    yp as *mut c_void,
                    match y_dtype {
                        Act::F32 => blas_sys::cudaDataType::CUDA_R_32F,
                        Act::Bf16 => blas_sys::cudaDataType::CUDA_R_16BF,
                    },
                    out as i32,
                    blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            }
            .map_err(drv("cuBLAS GemmEx"))?;
        }
        Ok(())
    }

    /// `y += b` over `rows` rows, where the projection has a bias (y f32).
    pub(crate) fn add_bias(
        &self,
        runner: &CudaRunner,
        y: &mut CudaSlice<u32>,
        lin: &Linear,
        rows: usize,
    ) -> Result<(), CudaError> {
        let Some(b) = &lin.bias else { return Ok(()) };
        let out = lin.out();
        let n = (rows * out) as u32;
        let f = self.kernel("mixc_add_bias")?;
        let mut l = runner.stream().launch_builder(f);
        let cols = out as u32;
        l.arg(&mut *y).arg(&b.buf).arg(&cols).arg(&n);
        // Safety: y holds rows·out f32, b holds out f32 (checked by the loader).
        unsafe { l.launch(grid_stride(rows * out)) }.map_err(drv("launching mixc_add_bias"))?;
        Ok(())
    }

    /// `out[r, :] = f32(table[ids[r], :])`; ids were checked against the table's rows.
    pub fn embed(
        &self,
        runner: &CudaRunner,
        out: &mut CudaSlice<u32>,
        table: &DeviceTensor,
        ids: &CudaSlice<u32>,
        rows: usize,
    ) -> Result<(), CudaError> {
        let d = table.shape.get(1).copied().unwrap_or(0);
        if out.len() < rows * d || ids.len() < rows {
            return Err(CudaError::Program("embedding buffers too small".into()));
        }
        let f = self.act_kernel("embed")?;
        let mut l = runner.stream().launch_builder(f);
        let d32 = d as u32;
        l.arg(&table.buf).arg(ids).arg(&mut *out).arg(&d32);
        // Safety: one CTA per row; every id < the table's rows (checked by the caller).
        unsafe { l.launch(per_row(rows)) }.map_err(drv("launching mixc_embed"))?;
        Ok(())
    }

    /// `out = norm(x)` over rows of `d` (RMSNorm: `· w`; LayerNorm: `· w + b`,
    /// `b` required), stored in the act dtype.
    #[allow(clippy::too_many_arguments)]
    pub fn norm(
        &self,
        runner: &CudaRunner,
        kind: RowNorm,
        out: &mut CudaSlice<u32>,
        x: &CudaSlice<u32>,
        w: &DeviceTensor,
        b: Option<&DeviceTensor>,
        rows: usize,
        d: usize,
        eps: f32,
    ) -> Result<(), CudaError> {
        let name = kind.name();
        if x.len() < rows * d || w.numel() != d || out.len() < (rows * d * self.act.elem_bytes()).div_ceil(4) {
            return Err(CudaError::Program(format!("{name}: buffers too small")));
        }
        let f = self.act_kernel(name)?;
        let mut l = runner.stream().launch_builder(f);
        let d32 = d as u32;
        l.arg(x).arg(&w.buf);
        match (kind, b) {
            (RowNorm::Layer, Some(b)) if b.numel() == d => {
                l.arg(&b.buf);
            }
            (RowNorm::Layer, _) => return Err(CudaError::Program(format!("{name}: needs a bias of {d} values"))),
            (RowNorm::Rms, _) => {}
        }
        l.arg(&mut *out).arg(&d32).arg(&eps);
        // One CTA per row, of up to 1024 threads: each thread's loads wait
        // one after another, so fewer per thread is a shorter kernel.
        let threads = (d.div_ceil(2).next_multiple_of(32) as u32).clamp(glue::THREADS, 1024);
        let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
        // Safety: sizes checked above; the kernel's shared sums hold 32 warps.
        unsafe { l.launch(cfg) }.map_err(|e| CudaError::Driver(format!("launching {name}: {e:?}")))?;
        Ok(())
    }

    /// `out = silu(gate) · up` from rows of `[gate | up]` (`2h` f32 each), in the act dtype.
    pub fn swiglu(
        &self,
        runner: &CudaRunner,
        out: &mut CudaSlice<u32>,
        gu: &CudaSlice<u32>,
        rows: usize,
        h: usize,
    ) -> Result<(), CudaError> {
        if gu.len() < rows * 2 * h || out.len() < (rows * h * self.act.elem_bytes()).div_ceil(4) {
            return Err(CudaError::Program("SwiGLU buffers too small".into()));
        }
        let f = self.act_kernel("swiglu")?;
        let mut l = runner.stream().launch_builder(f);
        let (h32, n) = (h as u32, (rows * h) as u32);
        l.arg(gu).arg(&mut *out).arg(&h32).arg(&n);
        // Safety: sizes checked above.
        unsafe { l.launch(grid_stride(rows * h)) }.map_err(drv("launching mixc_swiglu"))?;
        Ok(())
    }

    /// `out = gelu(u)` over `n` values, in the act dtype.
    pub fn gelu(
        &self,
        runner: &CudaRunner,
        out: &mut CudaSlice<u32>,
        u: &CudaSlice<u32>,
        n: usize,
    ) -> Result<(), CudaError> {
        let name = format!("mixc_gelu_{}", self.act.suffix());
        self.map(runner, &name, out, self.act.elem_bytes(), u, n)
    }

    /// `out = bf16(x)` over `n` values.
    pub fn cast_bf16(
        &self,
        runner: &CudaRunner,
        out: &mut CudaSlice<u32>,
        x: &CudaSlice<u32>,
        n: usize,
    ) -> Result<(), CudaError> {
        self.map(runner, "mixc_cast_bf16", out, 2, x, n)
    }

    /// Symmetric int8 codes `q` (`n` bytes) and f32 scales (one per
    /// `group` values) of the first `n` values of `x` (stored as `x_act`):
    /// the host's `quantize`, on the card (an int8 KV cache between steps).
    #[allow(clippy::too_many_arguments)]
    pub fn quantize_i8(
        &self,
        runner: &CudaRunner,
        x: &CudaSlice<u32>,
        x_act: Act,
        q: &mut CudaSlice<u32>,
        scales: &mut CudaSlice<u32>,
        n: usize,
        group: usize,
    ) -> Result<(), CudaError> {
        let name = format!("mixc_quant_i8_{}", x_act.suffix());
        let groups = n / group.max(1);
        let fits = group > 0
            && n.is_multiple_of(group)
            && x.len() >= (n * x_act.elem_bytes()).div_ceil(4)
            && q.len() >= n.div_ceil(4)
            && scales.len() >= groups;
        if !fits {
            return Err(CudaError::Program(format!("{name}: {n} values in groups of {group} do not fit the buffers")));
        }
        let f = self.kernel(&name)?;
        let mut l = runner.stream().launch_builder(f);
        let (g32, n32) = (group as u32, groups as u32);
        l.arg(x).arg(&mut *q).arg(&mut *scales).arg(&g32).arg(&n32);
        // Safety: sizes checked above.
        unsafe { l.launch(grid_stride(groups)) }.map_err(|e| CudaError::Driver(format!("launching {name}: {e:?}")))?;
        Ok(())
    }

    /// `y = q · scale` over `n` values (stored as `y_act`): the host's
    /// `dequantize` of [`Dense::quantize_i8`]'s codes.
    #[allow(clippy::too_many_arguments)]
    pub fn dequantize_i8(
        &self,
        runner: &CudaRunner,
        q: &CudaSlice<u32>,
        scales: &CudaSlice<u32>,
        y: &mut CudaSlice<u32>,
        y_act: Act,
        n: usize,
        group: usize,
    ) -> Result<(), CudaError> {
        let name = format!("mixc_dequant_i8_{}", y_act.suffix());
        let fits = group > 0
            && n.is_multiple_of(group)
            && q.len() >= n.div_ceil(4)
            && scales.len() >= n / group
            && y.len() >= (n * y_act.elem_bytes()).div_ceil(4);
        if !fits {
            return Err(CudaError::Program(format!("{name}: {n} values in groups of {group} do not fit the buffers")));
        }
        let f = self.kernel(&name)?;
        let mut l = runner.stream().launch_builder(f);
        let (g32, n32) = (group as u32, n as u32);
        l.arg(q).arg(scales).arg(&mut *y).arg(&g32).arg(&n32);
        // Safety: sizes checked above.
        unsafe { l.launch(grid_stride(n)) }.map_err(|e| CudaError::Driver(format!("launching {name}: {e:?}")))?;
        Ok(())
    }

    /// Glue kernel `name` over `n` f32 values of `x` into `out` (elements of
    /// `out_bytes`): the one-input kernels, parameters (x, out, n).
    fn map(
        &self,
        runner: &CudaRunner,
        name: &str,
        out: &mut CudaSlice<u32>,
        out_bytes: usize,
        x: &CudaSlice<u32>,
        n: usize,
    ) -> Result<(), CudaError> {
        if x.len() < n || out.len() < (n * out_bytes).div_ceil(4) {
            return Err(CudaError::Program(format!("{name}: buffers too small for {n} values")));
        }
        let f = self.kernel(name)?;
        let mut l = runner.stream().launch_builder(f);
        let n32 = n as u32;
        l.arg(x).arg(&mut *out).arg(&n32);
        // Safety: sizes checked above.
        unsafe { l.launch(grid_stride(n)) }.map_err(|e| CudaError::Driver(format!("launching {name}: {e:?}")))?;
        Ok(())
    }

    /// Copies `n` f32 values into an act-dtype buffer (a cast for bf16, a copy for f32).
    pub fn to_act(
        &self,
        runner: &CudaRunner,
        out: &mut CudaSlice<u32>,
        x: &CudaSlice<u32>,
        n: usize,
    ) -> Result<(), CudaError> {
        match self.act {
            Act::Bf16 => self.cast_bf16(runner, out, x, n),
            Act::F32 => runner.copy_words(x, out, n),
        }
    }
}

fn per_row(rows: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (glue::THREADS, 1, 1), shared_mem_bytes: 0 }
}

fn grid_stride(n: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (glue::grid_for(n), 1, 1), block_dim: (glue::THREADS, 1, 1), shared_mem_bytes: 0 }
}
