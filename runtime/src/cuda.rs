//! Running tile programs on a CUDA GPU through the driver API (cudarc, loaded
//! at run time, so machines without CUDA build and run the CPU paths).
//!
//! Buffers are laid out on the device as the PTX backend's kernels address
//! them ([`crate::layout`]): 2-byte elements for f16/bf16 buffers (host f32
//! tensors converted on upload, rounding to nearest even, and back to f32 on
//! download), 32-bit words for the rest (f32 bits for float dtypes, i32 for
//! the others). Outputs and scratch are poisoned with NaN of their own format
//! before the launches, so a missing store shows.
//!
//! A run has three steps, so that timing loops pay for the transfers once:
//! [`CudaRunner::prepare`] binds the sizes, allocates every buffer, uploads
//! the inputs and poisons the rest; [`CudaRunner::launch`] runs the launches
//! (as often as asked) and times them with CUDA events; [`CudaRunner::download`]
//! copies the outputs back. [`CudaRunner::run`] does all three.

use crate::layout::{self, Poison};
use crate::staging::Staging;
use crate::tensor::{Data, HostTensor};
use cudarc::driver::sys::{self, CUfunction_attribute_enum};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaGraph, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
};
/// The device buffers of this API: words (`u32`; 16-bit values two to a
/// word), and mutable views of ranges of them.
pub use cudarc::driver::{CudaSlice, CudaViewMut};
use cudarc::nvrtc::Ptx;
use mixc_ir::interp::Tensor;
use mixc_ir::tile::{Arg, BufferRole, ParamKind, Program};
use mixc_ir::DType;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;

/// One compiled kernel as the GPU loads it.
#[derive(Clone, Debug)]
pub struct GpuKernel {
    pub name: String,
    pub ptx: String,
    pub threads: u32,
    pub shared_bytes: u32,
    /// Global scratch bytes per CTA; when > 0 the kernel takes one more
    /// argument, a buffer of `scratch_bytes × CTAs` bytes.
    pub scratch_bytes: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("no CUDA driver on this machine (libcuda was not found); use --target cpu")]
    NoDriver,
    #[error("CUDA: {0}")]
    Driver(String),
    #[error("{0}")]
    Program(String),
}

fn drv<E: std::fmt::Debug>(what: &str) -> impl FnOnce(E) -> CudaError + '_ {
    move |e| CudaError::Driver(format!("{what}: {e:?}"))
}

/// Whether a CUDA driver can be loaded.
pub fn available() -> bool {
    // Safety: only probes for the shared library.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Words read back per piece when outputs are only checked, not kept.
const TRANSFER_WORDS: usize = 1 << 22;

/// A CUDA device and its stream.
pub struct CudaRunner {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// Pinned buffers large 16-bit uploads go through (made at the first,
    /// freed by [`CudaRunner::end_staging`]).
    staging: Mutex<Option<Staging>>,
}

/// Values of an upload from which it goes through the pinned staging
/// buffers (`MIXC_PINNED=0`: never).
const STAGED_FROM: usize = 1 << 20;

/// The GPU this runner drives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The driver's name for it, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// Compute capability (major, minor).
    pub compute_capability: (u32, u32),
}

/// What a run returns: the outputs and the GPU time of the launches.
pub struct GpuRun {
    pub outputs: BTreeMap<String, HostTensor>,
    pub millis: f32,
}

/// A program's kernels loaded on the device, ready to launch.
pub struct LoadedProgram {
    /// Unique in this process: ties prepared runs to the kernels they were planned for.
    id: u64,
    program: Program,
    kernels: Vec<GpuKernel>,
    fns: Vec<CudaFunction>,
}

impl LoadedProgram {
    pub fn program(&self) -> &Program {
        &self.program
    }
}

/// One scalar or buffer argument of a launch, resolved at the bound sizes.
enum LaunchArg {
    Buffer(usize),
    Int(i32),
    Float(f32),
}

/// One launch, resolved at the bound sizes.
struct PlannedLaunch {
    kernel: usize,
    cfg: LaunchConfig,
    args: Vec<LaunchArg>,
    /// The kernel takes the scratch region as its last argument.
    scratch: bool,
}

/// A program bound to inputs on the device: every buffer allocated, the
/// inputs uploaded, the launches resolved. Launch it as often as needed.
pub struct PreparedRun {
    bufs: Vec<CudaSlice<u32>>,
    /// Per buffer: its role's name (`None` for temporaries), shape and dtype.
    slots: Vec<Slot>,
    /// Shared by every launch with scratch (launches run one after another).
    scratch: Option<CudaSlice<u32>>,
    launches: Vec<PlannedLaunch>,
    /// (buffer index, output name, shape, dtype) of each output.
    outputs: Vec<(usize, String, Vec<usize>, DType)>,
    /// The [`LoadedProgram`] it was prepared for (its id and name).
    loaded: u64,
    program: String,
}

/// What a prepared run's buffer holds.
#[derive(Clone, Debug)]
struct Slot {
    input: Option<String>,
    output: Option<String>,
    shape: Vec<usize>,
    dtype: DType,
}

/// A tensor kept on the device between calls (a model's weights, a
/// sequence's carried state or cache): its shape, its dtype, and its words
/// laid out as [`crate::layout`] says.
pub struct DeviceTensor {
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub buf: CudaSlice<u32>,
}

impl DeviceTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Bytes of its elements (2 per f16/bf16 value, 4 otherwise).
    pub fn bytes(&self) -> usize {
        self.numel() * layout::elem_bytes(self.dtype)
    }
}

impl std::fmt::Debug for DeviceTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceTensor({} {:?})", self.dtype, self.shape)
    }
}

impl PreparedRun {
    /// The buffer of input `name`.
    pub fn input_slot(&self, name: &str) -> Option<usize> {
        self.slots.iter().position(|s| s.input.as_deref() == Some(name))
    }

    /// The buffer of output `name`.
    pub fn output_slot(&self, name: &str) -> Option<usize> {
        self.slots.iter().position(|s| s.output.as_deref() == Some(name))
    }

    /// The shape and dtype of buffer `slot` at the bound sizes.
    pub fn slot_type(&self, slot: usize) -> Option<(&[usize], DType)> {
        self.slots.get(slot).map(|s| (s.shape.as_slice(), s.dtype))
    }

    pub fn buffer(&self, slot: usize) -> Option<&CudaSlice<u32>> {
        self.bufs.get(slot)
    }

    /// A buffer to fill before a launch or to swap with one of the same
    /// length (a carried state moves in and out without a copy).
    pub fn buffer_mut(&mut self, slot: usize) -> Option<&mut CudaSlice<u32>> {
        self.bufs.get_mut(slot)
    }

    /// Exchanges the buffers of slots `a` and `b` (of the same length):
    /// a carried state's output becomes the next step's input without a copy.
    pub fn swap_buffers(&mut self, a: usize, b: usize) -> Result<(), CudaError> {
        let fits = |s: usize| self.bufs.get(s).map(|x| x.len());
        match (fits(a), fits(b)) {
            (Some(x), Some(y)) if x == y && a != b => {
                self.bufs.swap(a, b);
                Ok(())
            }
            _ => Err(CudaError::Program(format!("buffers {a} and {b} cannot be exchanged"))),
        }
    }

    /// The buffers of several distinct slots at once, in the order asked
    /// (`None` if a slot is missing or asked twice).
    pub fn buffers_mut(&mut self, slots: &[usize]) -> Option<Vec<&mut CudaSlice<u32>>> {
        let mut found: Vec<Option<&mut CudaSlice<u32>>> = slots.iter().map(|_| None).collect();
        for (i, b) in self.bufs.iter_mut().enumerate() {
            if let Some(k) = slots.iter().position(|s| *s == i) {
                found[k] = Some(b);
            }
        }
        found.into_iter().collect()
    }
}

/// Work recorded from a stream ([`CudaRunner::begin_capture`]), replayed
/// with one launch.
pub struct DeviceGraph {
    graph: CudaGraph,
}

impl DeviceGraph {
    /// Queues the whole graph on the stream it was captured from.
    pub fn launch(&self) -> Result<(), CudaError> {
        self.graph.launch().map_err(drv("launching a graph"))
    }
}

/// Ids of loaded programs.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

impl CudaRunner {
    pub fn new() -> Result<CudaRunner, CudaError> {
        if !available() {
            return Err(CudaError::NoDriver);
        }
        let ctx = CudaContext::new(0).map_err(drv("opening device 0"))?;
        let stream = ctx.default_stream();
        Ok(CudaRunner { ctx, stream, staging: Mutex::new(None) })
    }

    /// A runner with a stream of its own (work on it can be captured into
    /// a CUDA graph, which the default stream cannot), whose buffers are
    /// ordered by that stream alone (no cross-stream event tracking).
    pub fn with_own_stream() -> Result<CudaRunner, CudaError> {
        if !available() {
            return Err(CudaError::NoDriver);
        }
        let ctx = CudaContext::new(0).map_err(drv("opening device 0"))?;
        // Safety: every buffer of this runner is allocated, used and freed on
        // its one stream, so the stream's order is all the synchronization
        // they need.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(drv("creating a stream"))?;
        Ok(CudaRunner { ctx, stream, staging: Mutex::new(None) })
    }

    /// Starts recording the work queued on the stream into a graph (nothing
    /// runs until the graph is launched).
    pub fn begin_capture(&self) -> Result<(), CudaError> {
        self.stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(drv("starting a graph capture"))
    }

    /// Ends a capture: the recorded work as a graph, ready to launch.
    pub fn end_capture(&self) -> Result<DeviceGraph, CudaError> {
        let graph = self
            .stream
            .end_capture(sys::CUgraphInstantiate_flags(0))
            .map_err(drv("ending a graph capture"))?
            .ok_or_else(|| CudaError::Program("an empty graph capture".into()))?;
        Ok(DeviceGraph { graph })
    }

    /// The device address of a buffer (identifies what a graph reads and writes).
    pub fn address(&self, buf: &CudaSlice<u32>) -> u64 {
        let (ptr, _sync) = buf.device_ptr(&self.stream);
        ptr
    }

    /// Queues a copy of buffer `from` of a prepared run into its buffer `to`
    /// (the shorter length).
    pub fn copy_slot(&self, run: &mut PreparedRun, from: usize, to: usize) -> Result<(), CudaError> {
        if from == to || from >= run.bufs.len() || to >= run.bufs.len() {
            return Err(CudaError::Program(format!("a copy from buffer {from} to buffer {to}")));
        }
        let (a, b) = if from < to { run.bufs.split_at_mut(to) } else { run.bufs.split_at_mut(from) };
        let (src, dst) = if from < to { (&a[from], &mut b[0]) } else { (&b[0], &mut a[to]) };
        let words = src.len().min(dst.len());
        self.copy_words(src, dst, words)
    }

    /// The device's name and compute capability.
    pub fn device(&self) -> Result<DeviceInfo, CudaError> {
        let name = self.ctx.name().map_err(drv("reading the device name"))?;
        let (major, minor) = self.ctx.compute_capability().map_err(drv("reading the compute capability"))?;
        Ok(DeviceInfo { name, compute_capability: (major.max(0) as u32, minor.max(0) as u32) })
    }

    /// Loads the kernels of a program (same order as `prog.kernels`).
    pub fn load(&self, prog: &Program, kernels: &[GpuKernel]) -> Result<LoadedProgram, CudaError> {
        if kernels.len() != prog.kernels.len() {
            return Err(CudaError::Program(format!(
                "{} compiled kernels for a program of {}",
                kernels.len(),
                prog.kernels.len()
            )));
        }
        for (k, tk) in kernels.iter().zip(&prog.kernels) {
            if k.name != tk.name {
                return Err(CudaError::Program(format!(
                    "kernel `{}` does not match the program's `{}` (a bundle from another mixc version?)",
                    k.name, tk.name
                )));
            }
        }
        // The driver compiles each module's PTX for the card: side by side.
        use rayon::prelude::*;
        let fns = kernels
            .par_iter()
            .map(|k| {
                let module = self.ctx.load_module(Ptx::from_src(k.ptx.clone())).map_err(drv("loading PTX"))?;
                let f = module.load_function(&k.name).map_err(drv("finding the kernel"))?;
                if k.shared_bytes > 48 * 1024 {
                    f.set_attribute(
                        CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        k.shared_bytes as i32,
                    )
                    .map_err(drv("raising the shared-memory limit"))?;
                }
                Ok(f)
            })
            .collect::<Result<Vec<_>, CudaError>>()?;
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        Ok(LoadedProgram { id, program: prog.clone(), kernels: kernels.to_vec(), fns })
    }

    /// Binds the sizes from `inputs`, allocates every buffer, uploads the
    /// inputs (absent optional ones are zeros) and poisons outputs and
    /// temporaries with NaN.
    pub fn prepare(&self, lp: &LoadedProgram, inputs: &BTreeMap<String, HostTensor>) -> Result<PreparedRun, CudaError> {
        let shapes = inputs.iter().map(|(n, t)| (n.clone(), t.shape.clone())).collect();
        self.prepare_shaped(lp, &shapes, inputs)
    }

    /// [`CudaRunner::prepare`] with the sizes bound from `shapes` (every
    /// input present, with or without data) and only `uploads` copied in:
    /// the other inputs stay zero for the caller to fill on the device
    /// ([`PreparedRun::input_slot`], [`PreparedRun::buffer_mut`]).
    pub fn prepare_shaped(
        &self,
        lp: &LoadedProgram,
        shapes: &BTreeMap<String, Vec<usize>>,
        uploads: &BTreeMap<String, HostTensor>,
    ) -> Result<PreparedRun, CudaError> {
        let prog = &lp.program;
        let bound: BTreeMap<String, Tensor> =
            shapes.iter().map(|(n, s)| (n.clone(), Tensor { shape: s.clone(), data: vec![] })).collect();
        let sizes = prog.bind(&bound).map_err(|e| CudaError::Program(e.to_string()))?;
        let dims =
            |shape: &[mixc_ir::tile::Count]| -> Vec<usize> { shape.iter().map(|c| c.eval(&sizes) as usize).collect() };
        let mut bufs = Vec::with_capacity(prog.buffers.len());
        let mut slots = Vec::with_capacity(prog.buffers.len());
        let mut outputs = Vec::new();
        for (i, b) in prog.buffers.iter().enumerate() {
            let shape = dims(&b.shape);
            let words = layout::words_for(b.dtype, shape.iter().product::<usize>());
            let mut buf = self.stream.alloc_zeros::<u32>(words).map_err(drv("allocating a buffer"))?;
            let mut slot = Slot { input: None, output: None, shape: shape.clone(), dtype: b.dtype };
            match &b.role {
                BufferRole::Input { name, .. } => {
                    if let Some(t) = uploads.get(name) {
                        self.upload(t, b.dtype, &mut buf)?;
                    }
                    slot.input = Some(name.clone());
                }
                BufferRole::Output(name) => {
                    self.poison(&mut buf, b.dtype)?;
                    outputs.push((i, name.clone(), shape, b.dtype));
                    slot.output = Some(name.clone());
                }
                BufferRole::Temp => self.poison(&mut buf, b.dtype)?,
            }
            bufs.push(buf);
            slots.push(slot);
        }
        let (launches, scratch_words) = plan(prog, &lp.kernels, &sizes)?;
        let scratch = if scratch_words > 0 {
            Some(self.stream.alloc_zeros::<u32>(scratch_words).map_err(drv("allocating scratch"))?)
        } else {
            None
        };
        self.stream.synchronize().map_err(drv("copying the inputs"))?;
        Ok(PreparedRun { bufs, slots, scratch, launches, outputs, loaded: lp.id, program: prog.name.clone() })
    }

    /// Runs every launch of a prepared run `reps` times (at least once) and
    /// returns the GPU milliseconds per repetition, timed by CUDA events
    /// around the launches only.
    pub fn launch(&self, lp: &LoadedProgram, run: &PreparedRun, reps: usize) -> Result<f32, CudaError> {
        let event = || self.stream.record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT)).map_err(drv("event"));
        let start = event()?;
        for _ in 0..reps.max(1) {
            self.enqueue(lp, run)?;
        }
        let end = event()?;
        self.stream.synchronize().map_err(drv("running the kernels"))?;
        Ok(start.elapsed_ms(&end).map_err(drv("timing"))? / reps.max(1) as f32)
    }

    /// Queues every launch of a prepared run on the stream, without waiting.
    pub fn enqueue(&self, lp: &LoadedProgram, run: &PreparedRun) -> Result<(), CudaError> {
        if run.loaded != lp.id {
            return Err(CudaError::Program(format!(
                "a run prepared for other kernels (of `{}`) launched with those of `{}`",
                run.program, lp.program.name
            )));
        }
        for l in &run.launches {
            let (Some(f), Some(tk)) = (lp.fns.get(l.kernel), lp.program.kernels.get(l.kernel)) else {
                return Err(CudaError::Program("launch of a missing kernel".into()));
            };
            let mut builder = self.stream.launch_builder(f);
            for a in &l.args {
                match a {
                    LaunchArg::Buffer(b) => {
                        let buf = run.bufs.get(*b).ok_or_else(|| CudaError::Program("missing buffer".into()))?;
                        builder.arg(buf);
                    }
                    LaunchArg::Int(x) => {
                        builder.arg(x);
                    }
                    LaunchArg::Float(x) => {
                        builder.arg(x);
                    }
                }
            }
            if l.scratch {
                let s = run
                    .scratch
                    .as_ref()
                    .ok_or_else(|| CudaError::Program(format!("kernel `{}` has no scratch region", tk.name)))?;
                builder.arg(s);
            }
            // Safety: the arguments match the kernel's parameters in order and
            // kind (checked when planned); buffer sizes come from the same
            // program, the scratch region from its largest launch.
            unsafe { builder.launch(l.cfg) }.map_err(drv("launching"))?;
        }
        Ok(())
    }

    /// Copies the outputs of a prepared run back to the host.
    pub fn download(&self, run: &PreparedRun) -> Result<BTreeMap<String, HostTensor>, CudaError> {
        let mut out = BTreeMap::new();
        for (i, name, shape, dtype) in &run.outputs {
            let buf = run.bufs.get(*i).ok_or_else(|| CudaError::Program("missing output buffer".into()))?;
            let n = shape.iter().product::<usize>();
            let data = if layout::is_half(*dtype) {
                Data::F32(layout::decode_halves(*dtype, &self.copy_back::<u16>(buf, n)?))
            } else if dtype.is_float() {
                Data::F32(self.copy_back(buf, n)?)
            } else {
                Data::I32(self.copy_back(buf, n)?)
            };
            out.insert(name.clone(), HostTensor { shape: shape.clone(), data });
        }
        Ok(out)
    }

    /// The first `n` elements of a device buffer as `T` (16-bit float bits,
    /// f32 or i32), in one copy.
    fn copy_back<T: cudarc::driver::DeviceRepr + Default + Clone>(
        &self,
        buf: &CudaSlice<u32>,
        n: usize,
    ) -> Result<Vec<T>, CudaError> {
        let mut host = vec![T::default(); n];
        if n > 0 {
            // Safety: T is u16, f32 or i32, plain types for which every bit
            // pattern is a value; `transmute` checks that `n` of them fit.
            let view = unsafe { buf.transmute::<T>(n) }
                .ok_or_else(|| CudaError::Program("an output larger than its buffer".into()))?;
            // A copy to pageable memory returns once the words have arrived.
            self.stream.memcpy_dtoh(&view, &mut host).map_err(drv("copying back"))?;
        }
        Ok(host)
    }

    /// Whether every float output of a prepared run holds only finite values
    /// (read back in pieces, without keeping the outputs).
    pub fn outputs_finite(&self, run: &PreparedRun) -> Result<bool, CudaError> {
        let mut finite = true;
        for (i, _, _, dtype) in &run.outputs {
            let d = *dtype;
            if !finite || !d.is_float() {
                continue;
            }
            if layout::is_half(d) {
                self.each_piece::<u16>(run, *i, |part| finite &= part.iter().all(|h| layout::half_is_finite(d, *h)))?;
            } else {
                self.each_piece::<u32>(run, *i, |part| finite &= part.iter().all(|w| f32::from_bits(*w).is_finite()))?;
            }
        }
        Ok(finite)
    }

    /// Copies output `i` of a run back in pieces of elements `T` (u16 for a
    /// 16-bit buffer, u32 otherwise), handing each to `f`.
    fn each_piece<T: cudarc::driver::DeviceRepr + Default + Clone>(
        &self,
        run: &PreparedRun,
        i: usize,
        mut f: impl FnMut(&[T]),
    ) -> Result<(), CudaError> {
        let Some((b, _, shape, _)) = run.outputs.iter().find(|o| o.0 == i) else {
            return Err(CudaError::Program("missing output buffer".into()));
        };
        let buf = run.bufs.get(*b).ok_or_else(|| CudaError::Program("missing output buffer".into()))?;
        let n: usize = shape.iter().product();
        if n == 0 {
            return Ok(());
        }
        // Safety: T is u16 or u32, for which every bit pattern is a value;
        // `transmute` checks that `n` of them fit in the buffer.
        let view = unsafe { buf.transmute::<T>(n) }
            .ok_or_else(|| CudaError::Program("an output larger than its buffer".into()))?;
        let piece = TRANSFER_WORDS * 4 / std::mem::size_of::<T>().max(1);
        let mut host = vec![T::default(); piece.min(n)];
        let mut at = 0;
        while at < n {
            let len = piece.min(n - at);
            let part = &mut host[..len];
            // A copy to pageable memory returns once the elements have arrived.
            self.stream.memcpy_dtoh(&view.slice(at..at + len), part).map_err(drv("copying back"))?;
            f(part);
            at += len;
        }
        Ok(())
    }

    /// Prepares, launches `reps` times (the outputs are those of the last
    /// repetition) and downloads.
    pub fn run(
        &self,
        lp: &LoadedProgram,
        inputs: &BTreeMap<String, HostTensor>,
        reps: usize,
    ) -> Result<GpuRun, CudaError> {
        let prepared = self.prepare(lp, inputs)?;
        let millis = self.launch(lp, &prepared, reps)?;
        Ok(GpuRun { outputs: self.download(&prepared)?, millis })
    }

    /// Host seconds of one [`CudaRunner::launch`] call with `reps = 1` (the
    /// launches enqueued and waited for) and its GPU milliseconds.
    pub fn time_once(&self, lp: &LoadedProgram, run: &PreparedRun) -> Result<(f64, f32), CudaError> {
        let t0 = Instant::now();
        let ms = self.launch(lp, run, 1)?;
        Ok((t0.elapsed().as_secs_f64(), ms))
    }

    /// The stream every launch and copy of this runner is queued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Waits for everything queued so far.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.stream.synchronize().map_err(drv("waiting for the GPU"))
    }

    /// A device tensor of `dtype` holding `t` (converted to 16 bits for
    /// f16/bf16).
    pub fn upload_tensor(&self, t: &HostTensor, dtype: DType) -> Result<DeviceTensor, CudaError> {
        let mut out = self.zeros(&t.shape, dtype)?;
        self.upload(t, dtype, &mut out.buf)?;
        Ok(out)
    }

    /// A device tensor of `dtype` `shape` holding `data` (f32 values;
    /// rounded to 16 bits for f16/bf16, converted on all cores).
    pub fn upload_f32(&self, data: &[f32], shape: &[usize], dtype: DType) -> Result<DeviceTensor, CudaError> {
        self.upload_f32_stacked(&[data], shape, dtype)
    }

    /// Copies `values` converted to `dtype`'s 16 bits into `dst`: through the
    /// pinned staging buffers where there are many, else from a pageable copy.
    fn put_halves(&self, values: &[f32], dtype: DType, dst: &mut CudaViewMut<'_, u16>) -> Result<(), CudaError> {
        use rayon::prelude::*;
        let staged = values.len() >= STAGED_FROM && std::env::var("MIXC_PINNED").map_or(true, |v| v != "0");
        if staged {
            let mut slot = self.staging.lock().map_err(|_| CudaError::Driver("the staging buffers' lock".into()))?;
            if slot.is_none() {
                *slot = Some(Staging::new(&self.ctx).map_err(drv("allocating pinned staging buffers"))?);
            }
            if let Some(staging) = slot.as_mut() {
                return staging
                    .upload(&self.stream, values, |x| layout::half_bits(dtype, x), dst)
                    .map_err(drv("copying to the device"));
            }
        }
        let halves: Vec<u16> = values.par_iter().map(|x| layout::half_bits(dtype, *x)).collect();
        self.stream.memcpy_htod(&halves, dst).map_err(drv("copying to the device"))
    }

    /// Frees the pinned staging buffers (after the copies out of them).
    pub fn end_staging(&self) {
        if let Ok(mut slot) = self.staging.lock() {
            *slot = None;
        }
    }

    /// A device tensor of `dtype` `shape` holding `parts` one after another
    /// (stacked weights), each converted and copied on its own: no host copy
    /// of the whole.
    pub fn upload_f32_stacked(
        &self,
        parts: &[&[f32]],
        shape: &[usize],
        dtype: DType,
    ) -> Result<DeviceTensor, CudaError> {
        let n: usize = parts.iter().map(|p| p.len()).sum();
        if n != shape.iter().product::<usize>() || !dtype.is_float() {
            return Err(CudaError::Program(format!("{n} f32 values for a {dtype} tensor of shape {shape:?}")));
        }
        let half = layout::is_half(dtype);
        let before_last = &parts[..parts.len().saturating_sub(1)];
        if half && before_last.iter().any(|p| p.len() % 2 != 0) {
            // A part would start mid-word: stack on the host.
            return self.upload_f32_stacked(&[&parts.concat()], shape, dtype);
        }
        let mut out = self.zeros(shape, dtype)?;
        let mut at = 0;
        for p in parts {
            let words = layout::words_for(dtype, p.len());
            let mut view = out.buf.slice_mut(at..at + words);
            if half {
                // Safety: u16 is a plain type; `transmute_mut` checks the length.
                let mut v = unsafe { view.transmute_mut::<u16>(p.len()) }
                    .ok_or_else(|| CudaError::Program("a stacked part larger than its rows".into()))?;
                self.put_halves(p, dtype, &mut v)?;
            } else {
                // Safety: f32 is a plain type; `transmute_mut` checks the length.
                let mut v = unsafe { view.transmute_mut::<f32>(p.len()) }
                    .ok_or_else(|| CudaError::Program("a stacked part larger than its rows".into()))?;
                self.stream.memcpy_htod(*p, &mut v).map_err(drv("copying to the device"))?;
            }
            at += words;
        }
        Ok(out)
    }

    /// A device tensor of zeros.
    pub fn zeros(&self, shape: &[usize], dtype: DType) -> Result<DeviceTensor, CudaError> {
        let words = layout::words_for(dtype, shape.iter().product::<usize>()).max(1);
        let buf = self.stream.alloc_zeros::<u32>(words).map_err(drv("allocating a buffer"))?;
        Ok(DeviceTensor { shape: shape.to_vec(), dtype, buf })
    }

    /// Copies a device tensor back as an f32 (or i32) host tensor.
    pub fn download_tensor(&self, t: &DeviceTensor) -> Result<HostTensor, CudaError> {
        let n = t.numel();
        let data = if layout::is_half(t.dtype) {
            Data::F32(layout::decode_halves(t.dtype, &self.copy_back::<u16>(&t.buf, n)?))
        } else if t.dtype.is_float() {
            Data::F32(self.copy_back(&t.buf, n)?)
        } else {
            Data::I32(self.copy_back(&t.buf, n)?)
        };
        Ok(HostTensor { shape: t.shape.clone(), data })
    }

    /// The first `n` f32 values of a device buffer.
    pub fn download_f32(&self, buf: &CudaSlice<u32>, n: usize) -> Result<Vec<f32>, CudaError> {
        self.copy_back(buf, n)
    }

    /// Copies the `n` f32 values from word `at` of a device buffer back.
    pub fn download_f32_at(&self, buf: &CudaSlice<u32>, at: usize, n: usize) -> Result<Vec<f32>, CudaError> {
        if at.checked_add(n).is_none_or(|end| end > buf.len()) {
            return Err(CudaError::Program(format!("{n} values from word {at} of a buffer of {}", buf.len())));
        }
        let mut words = vec![0u32; n];
        if n > 0 {
            // A copy to pageable memory returns once the words have arrived.
            self.stream.memcpy_dtoh(&buf.slice(at..at + n), &mut words).map_err(drv("copying back"))?;
        }
        Ok(words.into_iter().map(f32::from_bits).collect())
    }

    /// Copies i32 values into the start of a device buffer.
    pub fn upload_i32(&self, v: &[i32], buf: &mut CudaSlice<u32>) -> Result<(), CudaError> {
        if v.len() > buf.len() {
            return Err(CudaError::Program(format!("{} values for a buffer of {}", v.len(), buf.len())));
        }
        self.copy_in(v, buf)
    }

    /// Queues a copy of `words` 32-bit words from `from` at word `from_at`
    /// into `to` at word `to_at`.
    pub fn copy_words_at(
        &self,
        from: &CudaSlice<u32>,
        from_at: usize,
        to: &mut CudaSlice<u32>,
        to_at: usize,
        words: usize,
    ) -> Result<(), CudaError> {
        if from_at + words > from.len() || to_at + words > to.len() {
            return Err(CudaError::Program(format!(
                "a copy of {words} words from word {from_at} of {} into word {to_at} of {}",
                from.len(),
                to.len()
            )));
        }
        if words == 0 {
            return Ok(());
        }
        self.stream
            .memcpy_dtod(&from.slice(from_at..from_at + words), &mut to.slice_mut(to_at..to_at + words))
            .map_err(drv("copying on the device"))
    }

    /// Queues a copy of the first `words` 32-bit words of `from` into `to`.
    pub fn copy_words(&self, from: &CudaSlice<u32>, to: &mut CudaSlice<u32>, words: usize) -> Result<(), CudaError> {
        self.copy_words_at(from, 0, to, 0, words)
    }

    /// Copies a host tensor into the start of a device buffer of `dtype`
    /// (a shorter tensor leaves the rest as it was), in one copy: converted
    /// to 16 bits for an f16/bf16 buffer, else its words as they are.
    fn upload(&self, t: &HostTensor, dtype: DType, buf: &mut CudaSlice<u32>) -> Result<(), CudaError> {
        if let Some(halves) = layout::half_elems(t, dtype) {
            return self.copy_in(&halves, buf);
        }
        match &t.data {
            Data::F32(v) => self.copy_in(v, buf),
            Data::I32(v) => self.copy_in(v, buf),
        }
    }

    /// Copies elements `T` (u16, f32 or i32) into the start of a device
    /// buffer, as many as fit.
    fn copy_in<T: cudarc::driver::DeviceRepr>(&self, v: &[T], buf: &mut CudaSlice<u32>) -> Result<(), CudaError> {
        let fit = buf.len() * 4 / std::mem::size_of::<T>().max(1);
        let n = v.len().min(fit);
        if n == 0 {
            return Ok(());
        }
        // Safety: T is a plain 16- or 32-bit type for which every bit pattern
        // is a value; `transmute_mut` checks that `n` of them fit.
        let mut view = unsafe { buf.transmute_mut::<T>(n) }
            .ok_or_else(|| CudaError::Program("an input larger than its buffer".into()))?;
        self.stream.memcpy_htod(&v[..n], &mut view).map_err(drv("copying to the device"))
    }

    /// Fills a device buffer of `dtype` with NaN of its format, on the device.
    fn poison(&self, buf: &mut CudaSlice<u32>, dtype: DType) -> Result<(), CudaError> {
        let words = buf.len();
        let stream = self.stream.cu_stream();
        let (ptr, _record) = buf.device_ptr_mut(&self.stream);
        // Safety: `ptr` addresses `words` 32-bit words (2·`words` 16-bit
        // halves) of a live allocation of this context; the memset is
        // ordered on the same stream as its uses.
        match layout::poison(dtype) {
            Poison::Half(bits) => unsafe { sys::cuMemsetD16Async(ptr, bits, 2 * words, stream) },
            Poison::Word(bits) => unsafe { sys::cuMemsetD32Async(ptr, bits, words, stream) },
        }
        .result()
        .map_err(drv("poisoning a buffer"))
    }
}

/// Resolves every launch of a program at the bound sizes (launches with an
/// empty grid are left out); also returns the words of scratch the largest
/// launch needs.
fn plan(prog: &Program, kernels: &[GpuKernel], sizes: &[u64]) -> Result<(Vec<PlannedLaunch>, usize), CudaError> {
    let mut out = Vec::new();
    let mut scratch_words = 0usize;
    for l in &prog.launches {
        let (Some(k), Some(tk)) = (kernels.get(l.kernel), prog.kernels.get(l.kernel)) else {
            return Err(CudaError::Program("launch of a missing kernel".into()));
        };
        let grid = [0, 1, 2].map(|i| l.grid[i].eval(sizes));
        if grid.contains(&0) {
            continue;
        }
        let grid = grid.map(|g| u32::try_from(g).unwrap_or(u32::MAX));
        // CUDA's grid limits: 2³¹ − 1 CTAs along x, 65535 along y and z.
        if grid[0] > i32::MAX as u32 || grid[1] > 65535 || grid[2] > 65535 {
            return Err(CudaError::Program(format!(
                "a launch of `{}` over a grid of {} × {} × {} CTAs (CUDA allows 2^31 - 1 × 65535 × 65535)",
                tk.name, grid[0], grid[1], grid[2]
            )));
        }
        if l.args.len() != tk.params.len() {
            return Err(CudaError::Program(format!(
                "a launch of `{}` passes {} arguments for {} parameters",
                tk.name,
                l.args.len(),
                tk.params.len()
            )));
        }
        let mut args = Vec::with_capacity(l.args.len());
        for (a, p) in l.args.iter().zip(&tk.params) {
            args.push(match (a, &p.kind) {
                (Arg::Buffer(b), ParamKind::Ptr(_)) if *b < prog.buffers.len() => LaunchArg::Buffer(*b),
                (Arg::Size(c), ParamKind::Scalar(_)) => LaunchArg::Int(c.eval(sizes) as i32),
                (Arg::Float(x), ParamKind::Scalar(_)) => LaunchArg::Float(*x as f32),
                _ => return Err(CudaError::Program(format!("argument kind of `{}` in `{}`", p.name, tk.name))),
            });
        }
        if k.scratch_bytes > 0 {
            let ctas = grid.iter().map(|g| *g as usize).product::<usize>();
            scratch_words = scratch_words.max((k.scratch_bytes as usize).div_ceil(4) * ctas);
        }
        out.push(PlannedLaunch {
            kernel: l.kernel,
            cfg: LaunchConfig {
                grid_dim: (grid[0], grid[1], grid[2]),
                block_dim: (k.threads, 1, 1),
                shared_mem_bytes: k.shared_bytes,
            },
            args,
            scratch: k.scratch_bytes > 0,
        });
    }
    Ok((out, scratch_words))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gla(sched: &mixc_passes::Schedule) -> (mixc_ir::Graph, Program) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/gla.toml");
        let file = mixc_ir::model::load_model(&path).unwrap_or_else(|e| panic!("{e}"));
        let cfg = file.mixer.get("gla").unwrap_or_else(|| panic!("no mixer gla"));
        let graph = mixc_ir::mixers::build("gla", cfg).unwrap_or_else(|e| panic!("{e}"));
        let prog = mixc_passes::lower(&graph, sched).unwrap_or_else(|e| panic!("{e}"));
        (graph, prog)
    }

    fn sizes_of(graph: &mixc_ir::Graph, prog: &Program, b: usize, t: usize) -> Vec<u64> {
        let sizes = BTreeMap::from([("B", b), ("T", t)]);
        let ins = mixc_ir::mixers::random_inputs(graph, &sizes, 1, false);
        prog.bind(&ins).unwrap_or_else(|e| panic!("{e}"))
    }

    fn kernels(prog: &Program, scratch_bytes: u32) -> Vec<GpuKernel> {
        prog.kernels
            .iter()
            .map(|k| GpuKernel {
                name: k.name.clone(),
                ptx: String::new(),
                threads: 128,
                shared_bytes: 1024,
                scratch_bytes,
            })
            .collect()
    }

    #[test]
    fn launches_resolve_at_the_bound_sizes() {
        let (graph, prog) = gla(&mixc_passes::Schedule::with_chunk(64));
        let sizes = sizes_of(&graph, &prog, 2, 100);
        let (launches, scratch) = plan(&prog, &kernels(&prog, 0), &sizes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(scratch, 0);
        assert!(!launches.is_empty() && launches.len() <= prog.launches.len());
        for (l, pl) in prog.launches.iter().zip(&launches) {
            let grid = [0, 1, 2].map(|i| l.grid[i].eval(&sizes) as u32);
            assert_eq!((pl.cfg.grid_dim.0, pl.cfg.grid_dim.1, pl.cfg.grid_dim.2), (grid[0], grid[1], grid[2]));
            assert_eq!(pl.cfg.block_dim, (128, 1, 1));
            assert_eq!(pl.cfg.shared_mem_bytes, 1024);
            assert_eq!(pl.args.len(), l.args.len());
            assert!(!pl.scratch);
            for (a, pa) in l.args.iter().zip(&pl.args) {
                match (a, pa) {
                    (Arg::Buffer(b), LaunchArg::Buffer(p)) => assert_eq!(b, p),
                    (Arg::Size(c), LaunchArg::Int(x)) => assert_eq!(c.eval(&sizes) as i32, *x),
                    (Arg::Float(f), LaunchArg::Float(x)) => assert_eq!(*f as f32, *x),
                    _ => panic!("argument kinds differ"),
                }
            }
        }
    }

    #[test]
    fn scratch_covers_the_largest_launch() {
        let (graph, prog) = gla(&mixc_passes::Schedule::with_chunk(64));
        let sizes = sizes_of(&graph, &prog, 3, 70);
        let (launches, scratch) = plan(&prog, &kernels(&prog, 10), &sizes).unwrap_or_else(|e| panic!("{e}"));
        let most = launches
            .iter()
            .map(|l| (l.cfg.grid_dim.0 * l.cfg.grid_dim.1 * l.cfg.grid_dim.2) as usize)
            .max()
            .unwrap_or(0);
        // 10 bytes a CTA round up to 3 words.
        assert_eq!(scratch, 3 * most);
        assert!(launches.iter().all(|l| l.scratch));
    }

    #[test]
    fn mismatched_kernels_are_refused() {
        let (graph, prog) = gla(&mixc_passes::Schedule::decode());
        let sizes = sizes_of(&graph, &prog, 1, 1);
        assert!(plan(&prog, &[], &sizes).is_err());
    }
}
