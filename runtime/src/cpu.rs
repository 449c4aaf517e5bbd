//! Running tile programs natively on this CPU: every kernel compiled by the
//! Cranelift backend (once per distinct kernel: cached in memory, and on disk
//! across processes, see [`crate::disk_cache`]), every launch's programs
//! spread over the cores by a rayon pool whose threads have stack enough for
//! the largest kernel frame.
//!
//! Buffers are 32-bit words (f32 bits for float dtypes, i32 for the rest), the
//! CPU backend's memory layout; f16/bf16 buffers too, holding only values of
//! their precision (inputs are rounded as they are copied in, the kernels
//! round what they store), so results are those of 16-bit storage. An input
//! whose words would be its values as they are (f32 into a float buffer,
//! i32 into an integer one) and which no kernel stores to is read in place,
//! not copied; outputs are written straight into the tensors handed back. Programs of one launch write disjoint elements
//! (the lowering guarantees it), so they run in parallel without locks.

use crate::disk_cache::DiskCache;
use crate::tensor::{Data, HostTensor};
use mixc_backend_cpu::CpuKernel;
use mixc_ir::interp::Tensor;
use mixc_ir::tile::{Arg, BufferRole, Kernel, PrefixCopy, Program, TOp, TileError};
use mixc_ir::DType;
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

/// Compiled kernels by their printed text (identical kernels compile once).
fn cache() -> &'static Mutex<HashMap<String, Arc<CpuKernel>>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<CpuKernel>>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// This process's disk cache (located once, from the environment).
fn disk() -> Option<&'static DiskCache> {
    static DISK: OnceLock<Option<DiskCache>> = OnceLock::new();
    DISK.get_or_init(DiskCache::from_env).as_ref()
}

fn compiled(k: &Kernel) -> Result<Arc<CpuKernel>, TileError> {
    let text = mixc_ir::tile::text::print_kernel(k);
    if let Ok(map) = cache().lock() {
        if let Some(c) = map.get(&text) {
            return Ok(c.clone());
        }
    }
    let c = Arc::new(compile_with(k, &text, disk())?);
    if let Ok(mut map) = cache().lock() {
        map.insert(text, c.clone());
    }
    Ok(c)
}

/// The disk cache key of a kernel whose printed text is `text`: everything
/// that decides its machine code. `None` when the host cannot say.
pub fn disk_key(text: &str) -> Option<String> {
    let host = mixc_backend_cpu::host_fingerprint().ok()?;
    Some(format!("{host}\nmixc {}\n{text}", env!("CARGO_PKG_VERSION")))
}

/// Compiles a kernel (printed as `text`), or loads it from `disk` when an
/// intact entry is there; stores what it compiles (silently: a cache that
/// cannot be written is only slower).
pub fn compile_with(k: &Kernel, text: &str, disk: Option<&DiskCache>) -> Result<CpuKernel, TileError> {
    let key = disk.and_then(|_| disk_key(text));
    if let (Some(dc), Some(key)) = (disk, &key) {
        if let Some(e) = dc.load(key).filter(|e| e.params == k.params.len()) {
            // Safety: the entry is intact (checksum) and was stored under this
            // exact key — kernel text, backend, Cranelift and target — by
            // `compile_with` from `CpuKernel::machine_code`.
            if let Ok(c) = unsafe { CpuKernel::from_machine_code(&k.name, &e.code, e.params, e.frame_bytes) } {
                return Ok(c);
            }
        }
    }
    let c = CpuKernel::compile(k).map_err(|e| TileError::Program(e.to_string()))?;
    if let (Some(dc), Some(key), Some(code)) = (disk, &key, c.machine_code()) {
        let _ = dc.store(key, code, c.params(), c.frame_bytes());
    }
    Ok(c)
}

/// A program's compiled kernels (by kernel index) and the buffers its
/// kernels store to: what a run looks up otherwise, by printing every
/// kernel to find it in the cache — most of a tiny model's decode step.
pub struct Prepared {
    kernels: Vec<Arc<CpuKernel>>,
    written: Vec<bool>,
}

impl Prepared {
    /// Whether this was prepared for `prog` (as many kernels and buffers).
    fn fits(&self, prog: &Program) -> bool {
        self.kernels.len() == prog.kernels.len() && self.written.len() == prog.buffers.len()
    }
}

/// Compiles every kernel of a program ahead of its first run (the distinct
/// ones not compiled yet spread over the cores) and returns them, for
/// [`run_growing`] to launch without looking them up.
pub fn prepare(prog: &Program) -> Result<Prepared, TileError> {
    compile_missing(prog)?;
    let kernels = prog.kernels.iter().map(compiled).collect::<Result<Vec<_>, _>>()?;
    Ok(Prepared { kernels, written: written_buffers(prog) })
}

/// Compiles the kernels of `prog` not in the cache yet, side by side.
fn compile_missing(prog: &Program) -> Result<(), TileError> {
    let mut todo: Vec<(&Kernel, String)> = Vec::new();
    {
        let map = cache().lock().unwrap_or_else(|p| p.into_inner());
        for k in &prog.kernels {
            let text = mixc_ir::tile::text::print_kernel(k);
            if !map.contains_key(&text) && !todo.iter().any(|(_, t)| *t == text) {
                todo.push((k, text));
            }
        }
    }
    let built = compile_all(todo, disk())?;
    let mut map = cache().lock().unwrap_or_else(|p| p.into_inner());
    for (text, c) in built {
        map.entry(text).or_insert_with(|| Arc::new(c));
    }
    Ok(())
}

/// Compiles (or loads from `disk`) kernels, given with their printed text,
/// in parallel on the worker pool.
pub fn compile_all(
    kernels: Vec<(&Kernel, String)>,
    disk: Option<&DiskCache>,
) -> Result<Vec<(String, CpuKernel)>, TileError> {
    let workers = pool(MIN_STACK)?;
    workers
        .install(|| kernels.into_par_iter().map(|(k, text)| compile_with(k, &text, disk).map(|c| (text, c))).collect())
}

/// The Cranelift IR of a kernel (`mixc compile --emit clif`).
pub fn clif(k: &Kernel) -> Result<String, TileError> {
    mixc_backend_cpu::clif_of(k).map_err(|e| TileError::Program(e.to_string()))
}

/// Stack a worker needs besides a kernel's frame (rayon's frames and ours).
const STACK_MARGIN: usize = 1 << 20;
/// Rayon's default worker stack.
const MIN_STACK: usize = 2 << 20;

/// The worker stack size for kernels whose largest frame is `frame` bytes.
pub fn stack_for(frame: usize) -> usize {
    frame.saturating_add(STACK_MARGIN).max(MIN_STACK).next_multiple_of(1 << 20)
}

/// A pool whose workers have at least `stack` bytes of stack. One pool
/// serves every launch; a kernel with a larger frame replaces it with a
/// larger one (the old one ends when its last launch does).
fn pool(stack: usize) -> Result<Arc<rayon::ThreadPool>, TileError> {
    static POOL: Mutex<Option<(usize, Arc<rayon::ThreadPool>)>> = Mutex::new(None);
    let mut slot = POOL.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((have, p)) = slot.as_ref() {
        if *have >= stack {
            return Ok(p.clone());
        }
    }
    let p = rayon::ThreadPoolBuilder::new()
        .stack_size(stack)
        .thread_name(|i| format!("mixc-cpu-{i}"))
        .build()
        .map_err(|e| TileError::Program(format!("cannot start the CPU worker threads: {e}")))?;
    let p = Arc::new(p);
    *slot = Some((stack, p.clone()));
    Ok(p)
}

/// Largest kernel frame a single-program launch runs with on the calling
/// thread (whose stack may be a test thread's 2 MiB) instead of the pool.
const INLINE_FRAME: usize = 256 << 10;

/// Buffers at least this large live in memory advised for huge pages.
const HUGE_BUFFER: usize = 2 << 20;

/// A buffer of 32-bit words. Large ones live in an anonymous mapping advised
/// for huge pages: kernels read tiles whose rows lie kilobytes apart (one
/// head of a `[T, H, D]` tensor), one 4 KiB page per row, and TLB misses
/// cost attention about 15% otherwise.
enum Words {
    Small(Vec<u32>),
    Large(memmap2::MmapMut, usize),
}

impl Words {
    /// `n` zeroed words.
    fn new(n: usize) -> Words {
        let bytes = n.saturating_mul(4);
        if bytes >= HUGE_BUFFER {
            if let Ok(m) = memmap2::MmapMut::map_anon(bytes) {
                #[cfg(target_os = "linux")]
                let _ = m.advise(memmap2::Advice::HugePage);
                return Words::Large(m, n);
            }
        }
        Words::Small(vec![0; n])
    }

    fn as_mut_slice(&mut self) -> &mut [u32] {
        match self {
            Words::Small(v) => v,
            // Safety: the mapping is page-aligned (so aligned for u32), holds
            // `n · 4` bytes, zero-initialized, and is borrowed mutably here.
            Words::Large(m, n) => unsafe { std::slice::from_raw_parts_mut(m.as_mut_ptr().cast::<u32>(), *n) },
        }
    }
}

/// The words a buffer is poisoned with before a run (f32: a quiet NaN).
const POISON: u32 = 0x7fc0_0000;

/// Where a buffer's words live during a run.
enum Storage {
    /// Inputs copied in (rounded to their dtype) and scratch.
    Words(Words),
    /// An input read in place, at this address ([`in_place`]).
    InPlace(u64),
    /// A float output: the f32 bits the kernels store (16-bit dtypes hold
    /// values of their precision), handed back as they are.
    F32(Vec<f32>),
    /// An integer output, as i32.
    I32(Vec<i32>),
}

impl Storage {
    /// The address the kernels get (an empty buffer's is never used: every
    /// access is masked or absent).
    fn addr(&mut self) -> u64 {
        match self {
            Storage::Words(w) => w.as_mut_slice().as_mut_ptr() as u64,
            Storage::InPlace(a) => *a,
            Storage::F32(v) => v.as_mut_ptr() as u64,
            Storage::I32(v) => v.as_mut_ptr() as u64,
        }
    }
}

/// `n` copies of `x`, written on every core (zeroed pages first, faulted in
/// by the threads that fill them).
fn poisoned<T: Copy + Default + Send + Sync>(n: usize, x: T) -> Vec<T> {
    let mut v = vec![T::default(); n];
    par_fill(&mut v, x);
    v
}

/// Elements per piece of the buffer copies and fills spread over the cores.
const COPY_PIECE: usize = 1 << 16;

/// Copies a host tensor into a buffer of `dtype`'s words, rounded to what the
/// buffer holds, on every core.
fn copy_in(dst: &mut [u32], t: &HostTensor, dtype: DType) {
    match &t.data {
        Data::F32(v) => par_convert(dst, v, |x| crate::layout::stored_value(dtype, *x).to_bits()),
        Data::I32(v) => par_convert(dst, v, |x| *x as u32),
    }
}

/// `dst[i] = f(src[i])`, in pieces spread over the cores.
fn par_convert<S: Sync, D: Send>(dst: &mut [D], src: &[S], f: impl Fn(&S) -> D + Sync) {
    dst.par_chunks_mut(COPY_PIECE)
        .zip(src.par_chunks(COPY_PIECE))
        .for_each(|(d, x)| d.iter_mut().zip(x).for_each(|(d, x)| *d = f(x)));
}

/// Every element of `dst` set to `x`, in pieces spread over the cores.
fn par_fill<T: Copy + Send + Sync>(dst: &mut [T], x: T) {
    dst.par_chunks_mut(COPY_PIECE).for_each(|c| c.fill(x));
}

/// The buffers some kernel of `prog` stores to (by index).
fn written_buffers(prog: &Program) -> Vec<bool> {
    let mut written = vec![false; prog.buffers.len()];
    for l in &prog.launches {
        let Some(k) = prog.kernels.get(l.kernel) else { continue };
        k.walk(&mut |s| {
            if let TOp::Store { ptr, .. } = &s.op {
                if let Some(Arg::Buffer(i)) = l.args.get(ptr.index()) {
                    if let Some(w) = written.get_mut(*i) {
                        *w = true;
                    }
                }
            }
        });
    }
    written
}

/// The address of an input's own data, where the kernels may read it in
/// place: no kernel stores to the buffer, and its words would be the
/// tensor's values as they are (f32 bits into a float buffer of 32-bit words,
/// i32 into an integer one: what [`copy_in`] writes) and as many. Then
/// nothing is copied (a decode step's state is most of what it reads).
fn in_place(t: &HostTensor, dtype: DType, n: usize) -> Option<u64> {
    match &t.data {
        Data::F32(v) if dtype.is_float() && !crate::layout::is_half(dtype) && v.len() == n => Some(v.as_ptr() as u64),
        Data::I32(v) if !dtype.is_float() && v.len() == n => Some(v.as_ptr() as u64),
        _ => None,
    }
}

/// Runs every launch of `prog` on `inputs`.
pub fn run(prog: &Program, inputs: &BTreeMap<String, HostTensor>) -> Result<BTreeMap<String, HostTensor>, TileError> {
    Ok(run_inner(prog, None, inputs, &mut BTreeMap::new(), Caches::AsLeft)?.0)
}

/// [`run`], also returning the seconds its launches took (the kernels
/// alone: after every buffer is allocated, filled and touched, before the
/// outputs are converted back) — what a benchmark of the kernels times.
/// `prepared`: the program's kernels from [`prepare`] (else each is looked
/// up in the cache by its text, inside the timed launches).
pub fn run_timed(
    prog: &Program,
    prepared: Option<&Prepared>,
    inputs: &BTreeMap<String, HostTensor>,
) -> Result<(BTreeMap<String, HostTensor>, f64), TileError> {
    run_inner(prog, prepared, inputs, &mut BTreeMap::new(), Caches::AsLeft)
}

/// [`run_timed`] with the caches emptied of the run's data before the
/// launches ([`EVICT_BYTES`] written after the buffers are set up): what a
/// decode step meets inside a model, where every other layer's weights and
/// states pass through the caches between two steps of one layer (and what
/// the CPU anchor, ggml's `bench/cpu/ggml.sh`, times).
pub fn run_timed_cold(
    prog: &Program,
    prepared: Option<&Prepared>,
    inputs: &BTreeMap<String, HostTensor>,
) -> Result<(BTreeMap<String, HostTensor>, f64), TileError> {
    run_inner(prog, prepared, inputs, &mut BTreeMap::new(), Caches::Cold)
}

/// Whether a run starts from the caches as the buffers' setup left them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Caches {
    AsLeft,
    Cold,
}

/// Bytes [`run_timed_cold`] writes to empty the caches: twice a large
/// server's last level (32 MiB here).
pub const EVICT_BYTES: usize = 64 << 20;

/// Writes [`EVICT_BYTES`] of a buffer kept for the purpose, so that what was
/// in the caches before is gone from them.
fn evict_caches() {
    static SWEEP: Mutex<Vec<u64>> = Mutex::new(Vec::new());
    let mut sweep = SWEEP.lock().unwrap_or_else(|e| e.into_inner());
    if sweep.is_empty() {
        sweep.resize(EVICT_BYTES / 8, 0);
    }
    for (i, x) in sweep.iter_mut().enumerate() {
        *x = x.wrapping_add(i as u64);
    }
    std::hint::black_box(&mut *sweep);
}

/// [`run`] with more inputs in `grow`, which may grow in place: an input
/// that a launch only copies into the leading elements of an f32 output (the
/// old rows of a KV cache append at batch one: a
/// [`PrefixCopy`](mixc_ir::tile::PrefixCopy)) becomes that output in its
/// own storage — resized, which leaves room to spare, so most appends find
/// their rows there already — and the copy is skipped: an append costs its
/// new rows, not the whole cache. Such an output is not in the returned map:
/// the tensor in `grow` holds it (its shape too). On an error every tensor
/// of `grow` is as it was. `prepared`: as for [`run_timed`].
pub fn run_growing(
    prog: &Program,
    prepared: Option<&Prepared>,
    inputs: &BTreeMap<String, HostTensor>,
    grow: &mut BTreeMap<String, &mut HostTensor>,
) -> Result<BTreeMap<String, HostTensor>, TileError> {
    Ok(run_inner(prog, prepared, inputs, grow, Caches::AsLeft)?.0)
}

/// [`run_growing`], also returning the seconds of the launches.
fn run_inner(
    prog: &Program,
    prepared: Option<&Prepared>,
    inputs: &BTreeMap<String, HostTensor>,
    grow: &mut BTreeMap<String, &mut HostTensor>,
    caches: Caches,
) -> Result<(BTreeMap<String, HostTensor>, f64), TileError> {
    let prepared = prepared.filter(|p| p.fits(prog));
    let sizes = {
        let view: BTreeMap<&str, &HostTensor> =
            inputs.iter().map(|(n, t)| (n.as_str(), t)).chain(grow.iter().map(|(n, t)| (n.as_str(), &**t))).collect();
        bind(prog, &view)?
    };
    // Take the adopted inputs' values out of their tensors, grown.
    let mut adopted = Adopted::default();
    let mut taken: Vec<(String, usize, usize)> = Vec::new();
    for (launch, pc, name) in adoptable(prog, grow, &sizes) {
        let n_to = numel(prog, pc.to, &sizes);
        let Some(Data::F32(v)) = grow.get_mut(&name).map(|t| &mut t.data) else { continue };
        let mut v = std::mem::take(v);
        let old = v.len();
        // The rows other launches write start poisoned, as a fresh output's would.
        v.resize(n_to, f32::from_bits(POISON));
        adopted.outputs.insert(pc.to, v);
        adopted.inputs.push(pc.from);
        adopted.skipped.push(launch);
        taken.push((name, pc.to, old));
    }
    let view: BTreeMap<&str, &HostTensor> = inputs
        .iter()
        .map(|(n, t)| (n.as_str(), t))
        .chain(grow.iter().filter(|(n, _)| !taken.iter().any(|(t, _, _)| t == *n)).map(|(n, t)| (n.as_str(), &**t)))
        .collect();
    let computed;
    let written: &[bool] = match prepared {
        Some(p) => &p.written,
        None => {
            computed = written_buffers(prog);
            &computed
        }
    };
    let mut bufs = storages(prog, &view, &sizes, written, &mut adopted);
    let skipped = adopted.skipped;
    if caches == Caches::Cold {
        evict_caches();
    }
    let ran = launch_all(prog, prepared, &sizes, &mut bufs, &skipped);
    // Hand the adopted storage back: the output on success, the input's old
    // values (the leading ones, never written) on an error.
    for (name, to, old) in &taken {
        let Some(slot) = bufs.get_mut(*to) else { continue };
        let Storage::F32(mut v) = std::mem::replace(slot, Storage::InPlace(0)) else { continue };
        let Some(t) = grow.get_mut(name) else { continue };
        match &ran {
            Ok(_) => t.shape = buffer_shape(prog, *to, &sizes),
            Err(_) => v.truncate(*old),
        }
        t.data = Data::F32(v);
    }
    let seconds = ran?;
    let held: Vec<usize> = taken.iter().map(|(_, to, _)| *to).collect();
    Ok((outputs(prog, &sizes, bufs, &held)?, seconds))
}

fn bind(prog: &Program, inputs: &BTreeMap<&str, &HostTensor>) -> Result<Vec<u64>, TileError> {
    let shapes: BTreeMap<String, Tensor> =
        inputs.iter().map(|(n, t)| (n.to_string(), Tensor { shape: t.shape.clone(), data: vec![] })).collect();
    prog.bind(&shapes)
}

fn buffer_shape(prog: &Program, b: usize, sizes: &[u64]) -> Vec<usize> {
    prog.buffers.get(b).map_or(Vec::new(), |b| b.shape.iter().map(|c| c.eval(sizes) as usize).collect())
}

fn numel(prog: &Program, b: usize, sizes: &[u64]) -> usize {
    buffer_shape(prog, b, sizes).iter().product()
}

/// Inputs taken over by outputs ([`run_growing`]).
#[derive(Default)]
struct Adopted {
    /// Output buffer → its storage: the input's values, grown to the output's size.
    outputs: BTreeMap<usize, Vec<f32>>,
    /// Input buffers given away (no launch reads them any more).
    inputs: Vec<usize>,
    /// Launches not to run (their copies are in place already).
    skipped: Vec<usize>,
}

/// The prefix copies of `prog` that can happen in place at `sizes`, with
/// the launch and the name of the input in `grow`: `from` an f32 input read
/// by no other launch, `to` an f32 output (one copy into each at most)
/// whose leading elements the copy fills.
fn adoptable(
    prog: &Program,
    grow: &BTreeMap<String, &mut HostTensor>,
    sizes: &[u64],
) -> Vec<(usize, PrefixCopy, String)> {
    let reads = |b: usize| prog.launches.iter().filter(|l| l.args.contains(&Arg::Buffer(b))).count();
    let mut found: Vec<(usize, PrefixCopy, String)> = Vec::new();
    for (li, l) in prog.launches.iter().enumerate() {
        let Some(pc) = &l.prefix_copy else { continue };
        let (Some(from), Some(to)) = (prog.buffers.get(pc.from), prog.buffers.get(pc.to)) else { continue };
        let (BufferRole::Input { name, .. }, BufferRole::Output(_)) = (&from.role, &to.role) else { continue };
        let n_from = numel(prog, pc.from, sizes);
        let usable = from.dtype == DType::F32
            && to.dtype == DType::F32
            && pc.is_prefix(prog, sizes)
            && reads(pc.from) == 1
            && n_from <= numel(prog, pc.to, sizes)
            && !found.iter().any(|(_, p, n)| p.to == pc.to || n == name)
            && grow.get(name).is_some_and(|t| matches!(&t.data, Data::F32(v) if v.len() == n_from));
        if usable {
            found.push((li, pc.clone(), name.clone()));
        }
    }
    found
}

/// Every buffer's storage for a run at `sizes` (adopted ones from `adopted`).
fn storages(
    prog: &Program,
    inputs: &BTreeMap<&str, &HostTensor>,
    sizes: &[u64],
    written: &[bool],
    adopted: &mut Adopted,
) -> Vec<Storage> {
    let mut bufs: Vec<Storage> = Vec::with_capacity(prog.buffers.len());
    for (bi, (b, written)) in prog.buffers.iter().zip(written).enumerate() {
        let n = numel(prog, bi, sizes);
        if let Some(v) = adopted.outputs.remove(&bi) {
            bufs.push(Storage::F32(v));
            continue;
        }
        if adopted.inputs.contains(&bi) {
            bufs.push(Storage::Words(Words::new(0)));
            continue;
        }
        bufs.push(match &b.role {
            BufferRole::Input { name, .. } => {
                let input = inputs.get(name.as_str()).copied();
                match input.filter(|_| !written).and_then(|t| in_place(t, b.dtype, n)) {
                    Some(addr) => Storage::InPlace(addr),
                    None => {
                        let mut w = Words::new(n);
                        if let Some(t) = input {
                            copy_in(w.as_mut_slice(), t, b.dtype);
                        }
                        Storage::Words(w)
                    }
                }
            }
            // Outputs are the tensors handed back (no conversion after the
            // run), poisoned: a kernel that forgets a store shows up as NaN
            // (an integer output as 0x7fc00000 = 2143289344).
            BufferRole::Output(_) if b.dtype.is_float() => Storage::F32(poisoned(n, f32::from_bits(POISON))),
            BufferRole::Output(_) => Storage::I32(poisoned(n, POISON as i32)),
            BufferRole::Temp => {
                let mut w = Words::new(n);
                par_fill(w.as_mut_slice(), POISON);
                Storage::Words(w)
            }
        });
    }
    bufs
}

/// Runs the launches of `prog` (but those `skipped`) on `bufs`, with the
/// kernels of `prepared` where given; returns the seconds they took.
fn launch_all(
    prog: &Program,
    prepared: Option<&Prepared>,
    sizes: &[u64],
    bufs: &mut [Storage],
    skipped: &[usize],
) -> Result<f64, TileError> {
    let addrs: Vec<u64> = bufs.iter_mut().map(Storage::addr).collect();
    let t0 = std::time::Instant::now();
    for (li, l) in prog.launches.iter().enumerate() {
        if skipped.contains(&li) {
            continue;
        }
        let k = prog.kernels.get(l.kernel).ok_or_else(|| TileError::Program("launch of a missing kernel".into()))?;
        let ck = match prepared.and_then(|p| p.kernels.get(l.kernel)) {
            Some(c) => c.clone(),
            None => compiled(k)?,
        };
        let grid = [0, 1, 2].map(|i| l.grid[i].eval(sizes) as usize);
        if grid.contains(&0) {
            continue;
        }
        let mut args: Vec<u64> = Vec::with_capacity(l.args.len());
        for a in &l.args {
            args.push(match a {
                Arg::Buffer(i) => {
                    *addrs.get(*i).ok_or_else(|| TileError::Program(format!("buffer {i} does not exist")))?
                }
                Arg::Size(c) => (c.eval(sizes) as i32) as i64 as u64,
                Arg::Float(x) => (*x as f32).to_bits() as u64,
            });
        }
        let total = grid[0] * grid[1] * grid[2];
        if total == 1 && ck.frame_bytes() <= INLINE_FRAME {
            // One program (a decode step's small kernels): on this thread,
            // without waking the pool.
            // Safety: as below; the caller's stack holds the small frame.
            unsafe { ck.run_program(&args, [0, 0, 0]) };
            continue;
        }
        let workers = pool(stack_for(ck.frame_bytes()))?;
        workers.install(|| {
            (0..total).into_par_iter().for_each(|flat| {
                let pid =
                    [(flat % grid[0]) as u32, ((flat / grid[0]) % grid[1]) as u32, (flat / (grid[0] * grid[1])) as u32];
                // Safety: every pointer is a live buffer sized from the same program
                // and sizes; programs of a launch write disjoint elements; the
                // worker's stack holds the kernel's frame.
                unsafe { ck.run_program(&args, pid) };
            })
        });
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// The outputs of a run, as the tensors their buffers are (but the buffers
/// `held` elsewhere).
fn outputs(
    prog: &Program,
    sizes: &[u64],
    bufs: Vec<Storage>,
    held: &[usize],
) -> Result<BTreeMap<String, HostTensor>, TileError> {
    let mut out = BTreeMap::new();
    for (bi, (b, storage)) in prog.buffers.iter().zip(bufs).enumerate() {
        if held.contains(&bi) {
            continue;
        }
        if let BufferRole::Output(name) = &b.role {
            let data = match storage {
                Storage::F32(v) => Data::F32(v),
                Storage::I32(v) => Data::I32(v),
                _ => return Err(TileError::Program(format!("output `{name}` has no buffer of its own"))),
            };
            out.insert(name.clone(), HostTensor { shape: buffer_shape(prog, bi, sizes), data });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mixc_ir::tile::{Count, KernelBuilder, Launch};
    use mixc_ir::DType;

    /// Mixer `mixer` of the zoo's `models/{model}.toml`, as a graph.
    fn zoo_mixer(model: &str, mixer: &str) -> mixc_ir::graph::Graph {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../models/{model}.toml"));
        let file = mixc_ir::model::load_model(&path).unwrap_or_else(|e| panic!("{e}"));
        mixc_ir::mixers::build(mixer, &file.mixer[mixer]).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `y = exp(x)` over `[rows, cols]` tiles, one per program: the loaded
    /// tile lives in the kernel's frame (`rows · cols · 4` bytes).
    fn exp_kernel(name: &str, rows: u32, cols: u32) -> Kernel {
        let build = || -> Result<Kernel, TileError> {
            let mut kb = KernelBuilder::new(name);
            let x = kb.ptr_param("x", DType::F32);
            let y = kb.ptr_param("y", DType::F32);
            let pid = kb.program_id(0)?;
            let n = kb.i32((rows * cols) as i64)?;
            let base = kb.mul(pid, n)?;
            let (ar, ac) = (kb.arange(rows)?, kb.arange(cols)?);
            let (ar, ac) = (kb.expand(ar, 1)?, kb.expand(ac, 0)?);
            let c = kb.i32(cols as i64)?;
            let ro = kb.mul(ar, c)?;
            let off = kb.add(ro, ac)?;
            let off = kb.add(off, base)?;
            let t = kb.load(x, off, None, 0.0)?;
            let e = kb.exp(t)?;
            kb.store(y, off, e, None)?;
            kb.finish()
        };
        build().unwrap_or_else(|e| panic!("{e}"))
    }

    fn input(n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i % 97) as f32 - 48.0) / 16.0).collect()
    }

    fn close(got: &[f32], x: &[f32]) -> bool {
        got.len() == x.len() && got.iter().zip(x).all(|(g, x)| (g - x.exp()).abs() <= 1e-6 * x.exp())
    }

    /// A kernel whose frame (8 MiB) is far past rayon's default worker stack
    /// (2 MiB) runs on workers sized for it.
    #[test]
    fn big_frames_run_on_big_stacks() {
        let (rows, cols, programs) = (1024u32, 2048u32, 4u64);
        let k = exp_kernel("big_frame", rows, cols);
        let n = rows as u64 * cols as u64 * programs;
        let mut prog = Program { name: "big".into(), ..Program::default() };
        let role = BufferRole::Input { name: "x".into(), optional: false };
        let xb = prog.add_buffer("x", DType::F32, vec![Count::Const(n)], role);
        let yb = prog.add_buffer("y", DType::F32, vec![Count::Const(n)], BufferRole::Output("y".into()));
        let ki = prog.add_kernel(k);
        let grid = [Count::Const(programs), Count::Const(1), Count::Const(1)];
        prog.launches.push(Launch {
            kernel: ki,
            grid,
            args: vec![Arg::Buffer(xb), Arg::Buffer(yb)],
            prefix_copy: None,
        });
        let frame = compiled(&prog.kernels[0]).unwrap_or_else(|e| panic!("{e}")).frame_bytes();
        assert!(frame >= (rows * cols * 4) as usize && stack_for(frame) > frame, "frame {frame}");
        let x = input(n as usize);
        let ins = BTreeMap::from([("x".to_string(), HostTensor::f32(vec![n as usize], x.clone()))]);
        let out = run(&prog, &ins).unwrap_or_else(|e| panic!("{e}"));
        let Some(Data::F32(y)) = out.get("y").map(|t| &t.data) else { panic!("no output") };
        assert!(close(y, &x));
    }

    /// Inputs no kernel stores to are read in place; one a kernel writes
    /// (here `exp` in place, `x ← e^x`, then `y ← e^x` from it) gets a copy,
    /// and the caller's tensor stays as it was either way.
    #[test]
    fn inputs_are_read_in_place_unless_written() {
        let (rows, cols) = (4u32, 64u32);
        let n = (rows * cols) as u64;
        let build = |in_place: bool| {
            let mut prog = Program { name: "p".into(), ..Program::default() };
            let role = BufferRole::Input { name: "x".into(), optional: false };
            let xb = prog.add_buffer("x", DType::F32, vec![Count::Const(n)], role);
            let yb = prog.add_buffer("y", DType::F32, vec![Count::Const(n)], BufferRole::Output("y".into()));
            let ki = prog.add_kernel(exp_kernel("e", rows, cols));
            let one = [Count::Const(1), Count::Const(1), Count::Const(1)];
            if !in_place {
                prog.launches.push(Launch {
                    kernel: ki,
                    grid: one.clone(),
                    args: vec![Arg::Buffer(xb), Arg::Buffer(xb)],
                    prefix_copy: None,
                });
            }
            prog.launches.push(Launch {
                kernel: ki,
                grid: one,
                args: vec![Arg::Buffer(xb), Arg::Buffer(yb)],
                prefix_copy: None,
            });
            prog
        };
        // Small values: `e^(e^x)` stays within the comparison's 1e-6.
        let x: Vec<f32> = input(n as usize).iter().map(|v| v / 16.0).collect();
        let ins = BTreeMap::from([("x".to_string(), HostTensor::f32(vec![n as usize], x.clone()))]);
        for in_place in [true, false] {
            let prog = build(in_place);
            assert_eq!(written_buffers(&prog), [!in_place, true]);
            let out = run(&prog, &ins).unwrap_or_else(|e| panic!("{e}"));
            let Some(Data::F32(y)) = out.get("y").map(|t| &t.data) else { panic!("no output") };
            let want: Vec<f32> = if in_place { x.clone() } else { x.iter().map(|v| v.exp()).collect() };
            assert!(close(y, &want), "in place: {in_place}");
            let Some(Data::F32(after)) = ins.get("x").map(|t| &t.data) else { panic!("no input") };
            assert_eq!(after, &x, "the caller's input changed (in place: {in_place})");
        }
    }

    fn run_one(k: &CpuKernel, x: &[f32]) -> Vec<f32> {
        let mut x = x.to_vec();
        let mut y = vec![f32::NAN; x.len()];
        let args = [x.as_mut_ptr() as u64, y.as_mut_ptr() as u64];
        // Safety: the kernel reads and writes one [4, 64] tile.
        unsafe { k.run_program(&args, [0, 0, 0]) };
        y
    }

    /// Entries are used when intact; corrupt, truncated or stale ones are
    /// ignored (the kernel still runs right) and written again.
    #[test]
    fn disk_cache_entries_are_checked() {
        let dir = std::env::temp_dir().join(format!("mixc-disk-cache-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let dc = DiskCache::at(&dir);
        let k = exp_kernel("cached", 4, 64);
        let text = mixc_ir::tile::text::print_kernel(&k);
        let key = disk_key(&text).unwrap_or_else(|| panic!("no host fingerprint"));
        let x = input(256);
        let first = compile_with(&k, &text, Some(&dc)).unwrap_or_else(|e| panic!("{e}"));
        assert!(close(&run_one(&first, &x), &x));
        let entry = dc.load(&key).unwrap_or_else(|| panic!("nothing stored in {}", dir.display()));
        assert_eq!(Some(&entry.code[..]), first.machine_code());
        let good = std::fs::read(dc.path_of(&key)).unwrap_or_default();
        let code_at = good.len() - entry.code.len();
        // A hit runs the stored code.
        let hit = compile_with(&k, &text, Some(&dc)).unwrap_or_else(|e| panic!("{e}"));
        assert!(close(&run_one(&hit, &x), &x));
        let mut trapping = good.clone();
        trapping[code_at..].fill(0xcc); // int3 everywhere: running it would trap
        let mut flipped = good.clone();
        flipped[code_at + entry.code.len() / 2] ^= 0x10;
        let stale = crate::disk_cache::encode(&format!("{key} "), &entry.code, entry.params, entry.frame_bytes);
        for (what, bytes) in [
            ("code overwritten", trapping),
            ("one bit flipped", flipped),
            ("truncated", good[..good.len() - 9].to_vec()),
            ("header only", good[..40].to_vec()),
            ("stored under another key", stale),
        ] {
            std::fs::write(dc.path_of(&key), &bytes).unwrap_or_else(|e| panic!("{e}"));
            assert!(dc.load(&key).is_none(), "{what}: entry accepted");
            let c = compile_with(&k, &text, Some(&dc)).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(close(&run_one(&c, &x), &x), "{what}: wrong result");
            assert!(dc.load(&key).is_some(), "{what}: entry not rebuilt");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A KV append at batch one grows the cache in its own storage (the
    /// copy of the old rows skipped), with the results of the copying run
    /// bit for bit; at batch two everything is copied as before; and a run
    /// that fails after taking a cache over hands it back as it was.
    #[test]
    fn kv_caches_grow_in_place_at_batch_one() {
        let g = zoo_mixer("llama", "attn");
        let sched = mixc_passes::Schedule::decode_for(mixc_passes::device::DeviceKind::Cpu);
        let prog = mixc_passes::lower(&g, &sched).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(prog.launches.iter().filter(|l| l.prefix_copy.is_some()).count(), 2, "keys and values");
        let values = |n: usize, salt: usize| -> Vec<f32> {
            (0..n).map(|i| (((i * 31 + salt * 17) % 61) as f32 - 30.0) / 20.0).collect()
        };
        // models/llama.toml: 4 query heads, 2 key/value heads of 16.
        let (h, hkv, d, s, t) = (4usize, 2usize, 16usize, 37usize, 1usize);
        for b in [1usize, 2] {
            // The kernels prepared ahead (batch 1) or looked up per launch (batch 2).
            let prepared = (b == 1).then(|| prepare(&prog).unwrap_or_else(|e| panic!("{e}")));
            let new = |name: &str, heads: usize, salt| {
                (name.to_string(), HostTensor::f32(vec![b, t, heads, d], values(b * t * heads * d, salt)))
            };
            let ins = BTreeMap::from([
                new("q", h, 1),
                new("k", hkv, 2),
                new("v", hkv, 3),
                ("offset".to_string(), HostTensor { shape: vec![], data: Data::I32(vec![s as i32]) }),
            ]);
            let cache = |salt| {
                let mut v = Vec::with_capacity(b * (s + 8) * hkv * d);
                v.extend(values(b * s * hkv * d, salt));
                HostTensor::f32(vec![b, s, hkv, d], v)
            };
            let (kc0, vc0) = (cache(4), cache(5));
            let mut all = ins.clone();
            all.insert("k_cache".into(), kc0.clone());
            all.insert("v_cache".into(), vc0.clone());
            let want = run(&prog, &all).unwrap_or_else(|e| panic!("{e}"));

            // Fresh ones, with room for 8 more rows (a clone has none).
            let (mut kc, mut vc) = (cache(4), cache(5));
            let kc_addr = match &kc.data {
                Data::F32(v) => v.as_ptr(),
                Data::I32(_) => panic!("float cache"),
            };
            let mut grow = BTreeMap::from([("k_cache".to_string(), &mut kc), ("v_cache".to_string(), &mut vc)]);
            let got = run_growing(&prog, prepared.as_ref(), &ins, &mut grow).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(got["o"], want["o"], "batch {b}");
            if b == 1 {
                assert!(!got.contains_key("k_cache") && !got.contains_key("v_cache"), "batch 1: caches in place");
                assert_eq!((&kc, &vc), (&want["k_cache"], &want["v_cache"]));
                let Data::F32(v) = &kc.data else { panic!("float cache") };
                assert_eq!(v.as_ptr(), kc_addr, "the cache grew in its own storage");
            } else {
                assert_eq!((&got["k_cache"], &got["v_cache"]), (&want["k_cache"], &want["v_cache"]));
                assert_eq!((&kc, &vc), (&kc0, &vc0), "batch 2: the caches are inputs as before");
            }

            // A run that fails after the caches were taken over leaves them as they were.
            let mut broken = prog.clone();
            let grid = [Count::Const(1), Count::Const(1), Count::Const(1)];
            broken.launches.push(Launch { kernel: usize::MAX, grid, args: vec![], prefix_copy: None });
            let (mut kc, mut vc) = (kc0.clone(), vc0.clone());
            let mut grow = BTreeMap::from([("k_cache".to_string(), &mut kc), ("v_cache".to_string(), &mut vc)]);
            assert!(run_growing(&broken, None, &ins, &mut grow).is_err());
            assert_eq!((&kc, &vc), (&kc0, &vc0), "batch {b}: the caches after a failed run");
        }
    }

    /// JIT time of every distinct kernel of models/lizard.toml (prefill and
    /// decode schedules): compiled on the worker pool, then loaded back from
    /// a disk cache (a measurement, not a check: `-- --ignored jit_time --nocapture`).
    #[test]
    #[ignore]
    fn jit_time() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/lizard.toml");
        let file = mixc_ir::model::load_model(&path).unwrap_or_else(|e| panic!("{e}"));
        let mut kernels = Vec::new();
        for name in file.distinct_mixers() {
            let g = mixc_ir::mixers::build(&name, &file.mixer[&name]).unwrap_or_else(|e| panic!("{e}"));
            for sched in [mixc_passes::Schedule::with_chunk(64), mixc_passes::Schedule::decode()] {
                kernels.extend(mixc_passes::lower(&g, &sched).unwrap_or_else(|e| panic!("{e}")).kernels);
            }
        }
        let mut todo: Vec<(&Kernel, String)> = Vec::new();
        for k in &kernels {
            let text = mixc_ir::tile::text::print_kernel(k);
            if !todo.iter().any(|(_, t)| *t == text) {
                todo.push((k, text));
            }
        }
        let dir = std::env::temp_dir().join(format!("mixc-jit-time-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let dc = DiskCache::at(&dir);
        let time = |disk: Option<&DiskCache>| {
            let t0 = std::time::Instant::now();
            compile_all(todo.clone(), disk).unwrap_or_else(|e| panic!("{e}"));
            t0.elapsed().as_secs_f64() * 1e3
        };
        let _ = time(None); // warm-up: threads, ISA detection, fingerprint
        let mut cold: Vec<f64> = (0..5).map(|_| time(None)).collect();
        let _ = time(Some(&dc)); // fills the cache
        let mut warm: Vec<f64> = (0..5).map(|_| time(Some(&dc))).collect();
        cold.sort_by(f64::total_cmp);
        warm.sort_by(f64::total_cmp);
        eprintln!(
            "{}: {} distinct kernels, compiled on {} threads in {:.1} ms (median of 5), loaded from the disk cache in {:.1} ms",
            path.display(),
            todo.len(),
            rayon::current_num_threads(),
            cold[2],
            warm[2]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// bf16 storage of GLA's activations: the CPU run rounds its inputs (raw
    /// or pre-rounded, the same bits out), its `o` holds bf16 values, and it
    /// agrees with the tile interpreter.
    #[test]
    fn narrow_storage_rounds_at_the_boundary() {
        let g = zoo_mixer("gla", "gla");
        let sched =
            mixc_passes::Schedule { storage: mixc_passes::Storage::Bf16, ..mixc_passes::Schedule::with_chunk(16) };
        let prog = mixc_passes::lower(&g, &sched).unwrap_or_else(|e| panic!("{e}"));
        let sizes = BTreeMap::from([("B", 2usize), ("T", 37)]);
        let raw: BTreeMap<String, HostTensor> = mixc_ir::mixers::random_inputs(&g, &sizes, 3, true)
            .into_iter()
            .map(|(n, t)| (n, HostTensor::from_f64(&t, false)))
            .collect();
        let held = crate::layout::as_stored(&prog, &raw);
        assert_ne!(raw["q"], held["q"], "q was not rounded");
        assert_eq!(raw["initial_state"], held["initial_state"], "a state was rounded");
        let a = run(&prog, &raw).unwrap_or_else(|e| panic!("{e}"));
        let b = run(&prog, &held).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a, b);
        let Data::F32(o) = &a["o"].data else { panic!("o is not float") };
        assert!(o.iter().all(|x| crate::layout::stored_value(DType::BF16, *x) == *x), "o holds non-bf16 values");
        let reference =
            crate::exec::run_program(&prog, &raw, crate::Engine::Reference).unwrap_or_else(|e| panic!("{e}"));
        for (name, t) in &reference {
            let (x, y) = (a[name].to_f64(), t.to_f64());
            let num: f64 = x.data.iter().zip(&y.data).map(|(p, q)| (p - q) * (p - q)).sum();
            let den: f64 = y.data.iter().map(|q| q * q).sum();
            assert!((num / den).sqrt() < 1e-3, "{name}: CPU and interpreter differ");
        }
    }

    /// A cold run (the caches emptied before the launches) computes what a
    /// plain one does: GLA's CPU decode step, its state in blocks of rows.
    #[test]
    fn cold_runs_compute_the_same() {
        let g = zoo_mixer("gla", "gla");
        let sched = mixc_passes::Schedule::decode_for(mixc_passes::device::DeviceKind::Cpu);
        let prog = mixc_passes::lower(&g, &sched).unwrap_or_else(|e| panic!("{e}"));
        let sizes = BTreeMap::from([("B", 3usize), ("T", 1)]);
        let ins: BTreeMap<String, HostTensor> = mixc_ir::mixers::random_inputs(&g, &sizes, 5, true)
            .into_iter()
            .map(|(n, t)| (n, HostTensor::from_f64(&t, false)))
            .collect();
        let (warm, _) = run_timed(&prog, None, &ins).unwrap_or_else(|e| panic!("{e}"));
        let (cold, seconds) = run_timed_cold(&prog, None, &ins).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(warm, cold);
        assert!(seconds > 0.0);
    }

    /// A cache that cannot be written is no error.
    #[test]
    fn unwritable_cache_is_silent() {
        let file = std::env::temp_dir().join(format!("mixc-disk-cache-file-{}", std::process::id()));
        std::fs::write(&file, b"not a folder").unwrap_or_else(|e| panic!("{e}"));
        let dc = DiskCache::at(file.join("kernels"));
        let k = exp_kernel("uncached", 4, 64);
        let text = mixc_ir::tile::text::print_kernel(&k);
        let c = compile_with(&k, &text, Some(&dc)).unwrap_or_else(|e| panic!("{e}"));
        let x = input(256);
        assert!(close(&run_one(&c, &x), &x));
        let _ = std::fs::remove_file(&file);
    }
}
