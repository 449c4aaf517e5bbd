//! The roofline cost model: FLOPs and bytes counted from the tile program
//! itself, priced against a device profile.
//!
//! For each launch, a counting walk runs a few sampled programs of the grid:
//! it evaluates only the scalar index arithmetic (program ids, sizes, loop
//! bounds) and adds up the work of every statement it passes — `dot` on the
//! matrix unit (`2·m·n·k`), elementwise math on the vector unit, and the bytes
//! of every load and store. Loops run their real trip counts, so causal and
//! windowed attention, ragged tails and nested sub-chunk loops are counted as
//! they execute. The average program times the grid gives the kernel's work;
//! its time is `max(compute, memory)` under a parallelism factor (how well the
//! programs fill the device's units) plus a launch.

use crate::device::{DeviceKind, DeviceProfile};
use mixc_ir::dims::DimId;
use mixc_ir::ops::BinaryFn;
use mixc_ir::tile::{Arg, Block, Kernel, ParamKind, Program, Stmt, TOp, TValue};
use std::collections::{BTreeMap, HashSet};

/// Work of one kernel launch, and its predicted time.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelCost {
    pub name: String,
    pub programs: u64,
    pub matmul_flops: f64,
    pub vector_flops: f64,
    /// Bytes read from device memory: the walk's loads, capped by the bytes of
    /// the buffers the kernel reads (re-reads of data a program or its
    /// neighbours just touched are served by L2 and on-chip memory).
    pub bytes_loaded: f64,
    pub bytes_stored: f64,
    /// Every byte the loads request, at whatever level it is served (L2 traffic).
    pub bytes_requested: f64,
    /// Bytes of tiles a program keeps live across loop iterations (an occupancy proxy).
    pub footprint: u64,
    /// Tile statements one program executes (average over the grid).
    pub ops_per_program: f64,
    /// Elements of those statements' results, per program.
    pub elems_per_program: f64,
    /// Of those statements, global loads and `dot`s, per program.
    pub loads_per_program: f64,
    pub dots_per_program: f64,
    /// Matrix-unit instructions one warp issues per program (0 without a
    /// backend plan of the kernel).
    pub mma_per_warp: f64,
    pub compute_s: f64,
    /// Of `compute_s`, the matrix unit's part (padded `dot`s); the rest is
    /// the vector unit's.
    pub matmul_s: f64,
    pub memory_s: f64,
    /// Time of the programs' statements one after another, wave by wave
    /// (see [`latency`]); 0 on a profile without latency terms.
    pub latency_s: f64,
    pub time_s: f64,
    /// The backend holds the kernel's tiles in registers
    /// ([`KernelResources::register_tier`]).
    pub register_tier: bool,
}

/// What limits a kernel's predicted time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    Compute,
    Memory,
    /// The programs' statements run one after another faster than neither
    /// the device's compute nor its memory could serve them (barriers,
    /// shared-memory passes, load latency): the kernel waits on itself.
    Latency,
}

impl Bound {
    pub fn name(self) -> &'static str {
        match self {
            Bound::Compute => "compute",
            Bound::Memory => "memory",
            Bound::Latency => "latency",
        }
    }
}

/// What one kernel needs of a GPU's SM, from the backend's plan of it:
/// threads per program, shared memory, and the bytes of tiles that did not fit
/// in shared memory and live in global scratch instead. The facade asks the
/// backend and hands the answers to [`price_with`] (passes never call a backend).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KernelResources {
    pub threads: u32,
    pub shared_bytes: u64,
    pub spill_bytes: u64,
    /// The share of the program's tile elements (in its loops) that read or
    /// write those spilled tiles.
    pub spilled_share: f64,
    /// Registers per thread (the backend's estimate; 0: unknown).
    pub registers: u32,
    /// How the backend computes a `dot` on the matrix unit: each instruction
    /// covers `16 × 8 × mma_k` multiply-adds and a product takes
    /// `mma_passes` of them (tf32x3: k 8, 3 passes; bf16: k 16, 1 pass);
    /// `mma_k = 0`: no matrix unit.
    pub mma_k: u32,
    pub mma_passes: u32,
    /// The backend holds the kernel's tiles in registers (the PTX backend's
    /// register tier) rather than in shared-memory slots: priced by
    /// [`register_tier_program_s`].
    pub register_tier: bool,
    /// In the register tier: its `dot` operands are copied a loop iteration
    /// ahead (`cp.async`), so their loads' latency is hidden.
    pub pipelined: bool,
    /// In the register tier: rows each warp owns (32: two `m16` tiles share
    /// each operand fragment read from shared memory); 0 or 16 otherwise.
    pub warp_rows: u32,
}

/// The backend's resource plan of a kernel, where one is known.
pub type Resources<'a> = &'a dyn Fn(&Kernel) -> Option<KernelResources>;

impl KernelCost {
    pub fn bytes(&self) -> f64 {
        self.bytes_loaded + self.bytes_stored
    }
    pub fn flops(&self) -> f64 {
        self.matmul_flops + self.vector_flops
    }
    /// FLOPs per byte of device memory traffic.
    pub fn intensity(&self) -> f64 {
        self.flops() / self.bytes().max(1.0)
    }
    pub fn memory_bound(&self) -> bool {
        self.bound() == Bound::Memory
    }
    pub fn bound(&self) -> Bound {
        if self.latency_s > self.compute_s.max(self.memory_s) {
            Bound::Latency
        } else if self.memory_s >= self.compute_s {
            Bound::Memory
        } else {
            Bound::Compute
        }
    }
}

/// Work and time of a whole program.
#[derive(Clone, Debug, PartialEq)]
pub struct ProgramCost {
    pub kernels: Vec<KernelCost>,
    pub time_s: f64,
}

/// Sizes of every dim of a program given the free dims by name (others: 0).
pub fn bind_sizes(prog: &Program, free: &BTreeMap<String, u64>) -> Vec<u64> {
    // Free dims not named (a KV cache length, say) are empty.
    let bound: BTreeMap<DimId, u64> = prog
        .dims
        .iter()
        .filter(|(_, def)| def.size.is_none())
        .map(|(d, def)| (d, free.get(&def.name).copied().unwrap_or(0)))
        .collect();
    prog.dims
        .iter()
        .map(|(d, def)| match def.size {
            None => bound.get(&d).copied().unwrap_or(0),
            Some(_) => prog.dims.eval(d, &bound).unwrap_or(0),
        })
        .collect()
}

/// Prices every launch of `prog` at the given sizes, without the backend's
/// resource plan (occupancy from the profile, nothing spilled).
pub fn price(prog: &Program, free: &BTreeMap<String, u64>, dev: &DeviceProfile) -> ProgramCost {
    price_with(prog, free, dev, &|_| None)
}

/// Prices every launch of `prog` at the given sizes, with each kernel's
/// resources where `resources` knows them.
pub fn price_with(
    prog: &Program,
    free: &BTreeMap<String, u64>,
    dev: &DeviceProfile,
    resources: Resources,
) -> ProgramCost {
    let sizes = bind_sizes(prog, free);
    let mut kernels = Vec::new();
    for l in &prog.launches {
        let Some(k) = prog.kernels.get(l.kernel) else { continue };
        let grid = [0, 1, 2].map(|i| l.grid[i].eval(&sizes));
        let programs = grid.iter().product::<u64>();
        // Bytes of the buffers this launch reads: the most it can need from DRAM.
        let mut loaded_params = std::collections::BTreeSet::new();
        k.walk(&mut |s| {
            if let TOp::Load { ptr, .. } = &s.op {
                loaded_params.insert(ptr.index());
            }
        });
        let read_bytes: f64 = l
            .args
            .iter()
            .zip(&k.params)
            .enumerate()
            .filter(|(i, _)| loaded_params.contains(i))
            .filter_map(|(_, (a, p))| match (a, &p.kind) {
                (Arg::Buffer(i), ParamKind::Ptr(d)) => prog.buffers.get(*i).map(|b| {
                    let n: u64 = b.shape.iter().map(|c| c.eval(&sizes)).product();
                    n as f64 * stored_bytes(*d, dev)
                }),
                _ => None,
            })
            .sum();
        let scalars: Vec<Option<f64>> = l
            .args
            .iter()
            .map(|a| match a {
                Arg::Buffer(_) => None,
                Arg::Size(c) => Some(c.eval(&sizes) as f64),
                Arg::Float(x) => Some(*x),
            })
            .collect();
        let mut work = Work::default();
        let chained = if dev.kind == DeviceKind::Cpu { chained_updates(k) } else { HashSet::new() };
        let samples = sample_programs(grid, 8);
        for pid in &samples {
            let env = vec![None; k.types.len()];
            let mut w = Walker { k, env, scalars: &scalars, dev, pid: *pid, work: Work::default(), chained: &chained };
            w.block(&k.body, 1.0);
            work.add(&w.work, 1.0);
        }
        let scale = if samples.is_empty() { 0.0 } else { programs as f64 / samples.len() as f64 };
        let footprint = footprint(k);
        let res = resources(k);
        kernels.push(time(k.name.clone(), programs, &work, scale, footprint, read_bytes, res, dev));
    }
    let time_s = kernels.iter().map(|k| k.time_s).sum();
    ProgramCost { kernels, time_s }
}

#[allow(clippy::too_many_arguments)]
fn time(
    name: String,
    programs: u64,
    w: &Work,
    scale: f64,
    footprint: u64,
    read_bytes: f64,
    res: Option<KernelResources>,
    dev: &DeviceProfile,
) -> KernelCost {
    let slots = (dev.units * dev.programs_per_unit).max(1) as f64;
    let p = programs as f64;
    let waves = (p / slots).ceil().max(1.0);
    // How much of the device the programs keep busy: full waves use it all, a
    // grid smaller than the device leaves units idle.
    let util = (p / (waves * slots)).clamp(1.0 / slots, 1.0);
    let mem_util = (p / dev.units as f64).clamp(1.0 / dev.units as f64, 1.0);
    let (mm, vec, ld, st) = (w.matmul * scale, w.vector * scale, w.loaded * scale, w.stored * scale);
    let matmul_s = w.matmul_padded * scale / (dev.matmul_flops * util);
    let compute_s = matmul_s + w.vector_priced * scale / (dev.vector_flops * util);
    let dram_ld = ld.min(read_bytes);
    let memory_s = ((dram_ld + st) / dev.dram_bw).max(ld / dev.l2_bw) / mem_util;
    let per_program = |x: f64| x * scale / p.max(1.0);
    let program = ProgramWork {
        ops: per_program(w.tile_ops),
        elems: per_program(w.tile_elems),
        loads: per_program(w.tile_loads),
        dots: per_program(w.tile_dots),
        mma: res.map_or(0.0, |r| mma_per_warp(per_program(w.tile_macs), r)),
        loaded_bytes: per_program(w.loaded),
    };
    let latency_s = latency(programs, &program, res, dev);
    KernelCost {
        name,
        programs,
        matmul_flops: mm,
        vector_flops: vec,
        bytes_loaded: dram_ld,
        bytes_stored: st,
        bytes_requested: ld,
        footprint,
        ops_per_program: program.ops,
        elems_per_program: program.elems,
        loads_per_program: program.loads,
        dots_per_program: program.dots,
        mma_per_warp: program.mma,
        compute_s,
        matmul_s,
        memory_s,
        latency_s,
        time_s: compute_s.max(memory_s).max(latency_s) + dev.launch_s,
        register_tier: res.is_some_and(|r| r.register_tier),
    }
}

/// The statements one program executes, on average over the grid.
struct ProgramWork {
    ops: f64,
    elems: f64,
    loads: f64,
    dots: f64,
    /// Matrix-unit instructions per warp.
    mma: f64,
    /// Bytes the program loads.
    loaded_bytes: f64,
}

/// Matrix-unit instructions each warp of a program issues for `macs`
/// multiply-adds of `dot`s, the warps sharing the work evenly.
fn mma_per_warp(macs: f64, r: KernelResources) -> f64 {
    if r.mma_k == 0 {
        return 0.0;
    }
    let warps = f64::from(r.threads.div_ceil(32).max(1));
    macs / f64::from(16 * 8 * r.mma_k) * f64::from(r.mma_passes.max(1)) / warps
}

/// The latency term: a program's statements run one after another (each is a
/// pass of its threads over a tile, most end at a barrier, a global load waits
/// for memory before the threads can use it), and an SM runs as many programs
/// at once as its shared memory and thread slots hold. So the kernel takes
/// `waves × per-program time`, with `waves = ⌈programs / (SMs × programs per
/// SM)⌉` and the per-program time summed from the profile's latency terms:
/// per statement, per element of a statement (served from shared memory, or
/// from global scratch at a higher price for the share of the kernel's tiles
/// the backend could not fit on chip), per global load, per `dot`.
///
/// The roofline terms alone put every GPU kernel 15–40× below its measured
/// time (bench/RESULTS.md): the kernels are far from the tensor-core and HBM
/// peaks, and what they wait on grows at both ends of the chunk sizes — small
/// chunks run more statements (and loads) per token, large ones more elements
/// per statement and, past the shared memory, spill tiles to global scratch.
fn latency(programs: u64, w: &ProgramWork, res: Option<KernelResources>, dev: &DeviceProfile) -> f64 {
    let l = &dev.latency;
    if programs == 0 || dev.kind != DeviceKind::Gpu {
        return 0.0;
    }
    let per_unit = match res {
        Some(r) => programs_per_sm(r, dev),
        None => u64::from(dev.programs_per_unit.max(1)),
    };
    let spilled = res.map_or(0.0, |r| if r.spill_bytes > 0 { r.spilled_share.clamp(0.0, 1.0) } else { 0.0 });
    let waves = programs.div_ceil(u64::from(dev.units.max(1)) * per_unit) as f64;
    let elem_s = l.elem_s * (1.0 - spilled) + l.spilled_elem_s * spilled;
    let program_s = match res {
        Some(r) if r.register_tier => register_tier_program_s(w, r),
        _ => l.op_s * w.ops + elem_s * w.elems + l.load_s * w.loads + l.dot_s * w.dots + l.mma_s * w.mma,
    };
    waves * program_s
}

/// Seconds per `mma` a warp of a register-tier kernel issues, the elementwise
/// work around it included (fit on an H100: causal attention, bf16, B·H =
/// 128, T = 2048 and 8192, blocks q128 k64, q64 k64, q128 k32).
const REGISTER_MMA_S: f64 = 14e-9;
/// Seconds per byte a thread of a register-tier kernel copies to shared
/// memory (the same fit: a block staged by fewer warps costs each more).
const REGISTER_COPY_S: f64 = 4.9e-9;
/// How much slower a register-tier kernel runs when its copies are not
/// pipelined (the same fit: q128 k128, whose two buffers do not fit, 2.6×).
const REGISTER_UNPIPELINED: f64 = 2.6;

/// How much faster a register-tier kernel runs with 32 rows a warp than
/// its `mma`s and copies say (fit on an H100: causal attention q128 k32,
/// bf16, B·H = 128, T = 8192: 8.9 ms at 32 rows against 10.5 at 16): each
/// right-operand fragment read from shared memory feeds two `mma`s.
const REGISTER_TWO_TILES: f64 = 0.85;

/// One program of a register-tier kernel: its warps' `mma`s and its threads'
/// copies, slower where the copies wait in line.
fn register_tier_program_s(w: &ProgramWork, r: KernelResources) -> f64 {
    let copy = w.loaded_bytes / f64::from(r.threads.max(1));
    let t = REGISTER_MMA_S * w.mma + REGISTER_COPY_S * copy;
    let t = if r.warp_rows >= 32 { t * REGISTER_TWO_TILES } else { t };
    if r.pipelined {
        t
    } else {
        t * REGISTER_UNPIPELINED
    }
}

/// Programs (CTAs) one SM holds at once: what its shared memory, thread
/// slots and registers allow, at most [`MAX_PROGRAMS_PER_SM`]. Registers are
/// allotted per warp in multiples of 256 (8 per thread).
pub fn programs_per_sm(r: KernelResources, dev: &DeviceProfile) -> u64 {
    let by_shared = dev.local_mem / (r.shared_bytes + SHARED_RESERVED).max(1);
    let by_threads = u64::from(dev.threads_per_unit / r.threads.max(1));
    let warps = u64::from(r.threads.div_ceil(32).max(1));
    let regs = u64::from(r.registers.min(MAX_REGISTERS)).div_ceil(8) * 8;
    let by_registers = if regs == 0 || dev.registers == 0 {
        MAX_PROGRAMS_PER_SM
    } else {
        u64::from(dev.registers) / (regs * 32 * warps)
    };
    by_shared.min(by_threads).min(by_registers).clamp(1, MAX_PROGRAMS_PER_SM)
}

/// Registers per thread a GPU allots at most (more spill to local memory).
const MAX_REGISTERS: u32 = 255;

/// CTAs an SM holds at most (sm_80 and sm_90: 32).
const MAX_PROGRAMS_PER_SM: u64 = 32;

/// Bytes one element of a buffer of dtype `d` takes in the device's memory:
/// a 16-bit float the profile's `elem_bytes` (2 on a GPU; 4 on the CPU, whose
/// runtime keeps every buffer in 32-bit words), any other float 4 (f32),
/// integers their width.
fn stored_bytes(d: mixc_ir::DType, dev: &DeviceProfile) -> f64 {
    match d {
        mixc_ir::DType::BF16 | mixc_ir::DType::F16 => f64::from(dev.elem_bytes),
        d if d.is_float() => 4.0,
        d => (f64::from(d.bits()) / 8.0).max(0.5),
    }
}

/// Shared memory the GPU reserves per resident CTA (1 KiB on sm_80 and sm_90).
const SHARED_RESERVED: u64 = 1024;

/// Up to `n` program ids spread evenly over the grid.
fn sample_programs(grid: [u64; 3], n: u64) -> Vec<[u64; 3]> {
    let total = grid.iter().product::<u64>();
    if total == 0 {
        return vec![];
    }
    let take = total.min(n);
    (0..take)
        .map(|i| {
            let flat = if take == 1 { 0 } else { i * (total - 1) / (take - 1) };
            [flat % grid[0], (flat / grid[0]) % grid[1], flat / (grid[0] * grid[1])]
        })
        .collect()
}

/// Bytes of the tiles carried by loops (live across iterations), the largest
/// loop's worth: what a program must keep on chip.
fn footprint(k: &Kernel) -> u64 {
    let mut best = 0;
    k.walk(&mut |s| {
        if let TOp::For { init, .. } = &s.op {
            let carried: u64 = init.iter().map(|v| k.ty(*v).numel() as u64 * 4).sum();
            best = best.max(carried);
        }
    });
    best
}

#[derive(Clone, Copy, Debug, Default)]
struct Work {
    matmul: f64,
    /// Matrix work as the unit executes it (dims padded to its granularity).
    matmul_padded: f64,
    vector: f64,
    /// Vector work as the unit executes it: on a CPU a transcendental costs the
    /// instructions of its polynomial, not one FLOP.
    vector_priced: f64,
    loaded: f64,
    stored: f64,
    /// Tile statements executed (not scalars, not views): each is a pass of
    /// the program's threads over the tile, most of them ending at a barrier.
    tile_ops: f64,
    /// Elements of those statements' results.
    tile_elems: f64,
    /// Of those, global loads and `dot`s.
    tile_loads: f64,
    tile_dots: f64,
    /// Multiply-adds of the `dot` statements (unpadded).
    tile_macs: f64,
}

impl Work {
    fn add(&mut self, o: &Work, times: f64) {
        self.matmul += o.matmul * times;
        self.matmul_padded += o.matmul_padded * times;
        self.vector += o.vector * times;
        self.vector_priced += o.vector_priced * times;
        self.loaded += o.loaded * times;
        self.stored += o.stored * times;
        self.tile_ops += o.tile_ops * times;
        self.tile_elems += o.tile_elems * times;
        self.tile_loads += o.tile_loads * times;
        self.tile_dots += o.tile_dots * times;
        self.tile_macs += o.tile_macs * times;
    }
}

struct Walker<'a> {
    k: &'a Kernel,
    env: Vec<Option<f64>>,
    scalars: &'a [Option<f64>],
    dev: &'a DeviceProfile,
    pid: [u64; 3],
    work: Work,
    /// On a CPU, the rank-1 updates whose state is never stored ([`chained_updates`]).
    chained: &'a HashSet<TValue>,
}

/// The rank-1 updates of `k` whose result only passes to the next one (as
/// its accumulator, directly or scaled by a decay): a recurrence's step form
/// over several tokens a pass, whose intermediate states the CPU backend
/// keeps in registers, never storing them.
fn chained_updates(k: &Kernel) -> HashSet<TValue> {
    let mut stmts = Vec::new();
    k.walk(&mut |s| stmts.push(s));
    let rank1 = |s: &Stmt| match &s.op {
        TOp::Dot { a, trans_a, .. } => {
            let sh = &k.ty(*a).shape;
            (if *trans_a { sh.first() } else { sh.get(1) }) == Some(&1)
        }
        _ => false,
    };
    let updates: HashSet<TValue> =
        stmts.iter().filter(|s| rank1(s)).filter_map(|s| s.results.first().copied()).collect();
    let scaled: BTreeMap<TValue, TValue> = stmts
        .iter()
        .filter_map(|s| match (&s.op, s.results.first()) {
            (TOp::Binary(BinaryFn::Mul, x, y), Some(r)) => {
                [*x, *y].into_iter().find(|v| updates.contains(v)).map(|v| (*r, v))
            }
            _ => None,
        })
        .collect();
    stmts
        .iter()
        .filter(|s| rank1(s))
        .filter_map(|s| match &s.op {
            TOp::Dot { acc: Some(acc), .. } if updates.contains(acc) => Some(*acc),
            TOp::Dot { acc: Some(acc), .. } => scaled.get(acc).copied(),
            _ => None,
        })
        .collect()
}

/// Vector operations per FLOP of a rank-1 update on a CPU: each accumulator
/// vector costs an FMA and a store, and a core stores one vector in the time
/// it issues two FMAs, so the update runs at half the FMA peak. (Measured on
/// the 2-core Zen 3 box, B = 1, H = 16, D = 128, T = 8192: the step form of
/// Gated DeltaNet, one more one-row pass over the state per token than GLA's,
/// ran 2.75× slower than its chunk-16 form while GLA's ran 1.37× faster;
/// pricing the rank-1 pass at the FMA peak ranks both the wrong way.)
const CPU_RANK1_WEIGHT: f64 = 2.0;

/// Loops with more iterations than this are walked for a sample and scaled.
const MAX_WALKED_ITERATIONS: u64 = 64;

impl Walker<'_> {
    fn val(&self, v: TValue) -> Option<f64> {
        self.env.get(v.index()).copied().flatten()
    }

    fn set(&mut self, v: TValue, x: Option<f64>) {
        if let Some(slot) = self.env.get_mut(v.index()) {
            *slot = x;
        }
    }

    fn elem_bytes(&self, p: mixc_ir::tile::ParamId) -> f64 {
        match self.k.params.get(p.index()).map(|p| &p.kind) {
            Some(ParamKind::Ptr(d)) => stored_bytes(*d, self.dev),
            _ => 4.0,
        }
    }

    /// Elementwise work of `n` FLOPs, each costing `weight` vector operations.
    fn vector(&mut self, n: f64, weight: f64) {
        self.work.vector += n;
        self.work.vector_priced += n * weight;
    }

    /// Counts a statement that makes the program's threads pass over a tile.
    fn count_tile_op(&mut self, op: &TOp, numel: f64, scalar_out: bool, times: f64) {
        let elems = match op {
            TOp::Store { value, .. } => self.k.ty(*value).numel() as f64,
            TOp::For { .. }
            | TOp::If { .. }
            | TOp::ProgramId(_)
            | TOp::Param(_)
            | TOp::Const(_)
            | TOp::Arange(_)
            | TOp::Broadcast(_)
            | TOp::Reshape(_)
            | TOp::Transpose(_) => return,
            _ if scalar_out => return,
            _ => numel,
        };
        self.work.tile_ops += times;
        self.work.tile_elems += elems * times;
        match op {
            TOp::Load { .. } => self.work.tile_loads += times,
            TOp::Dot { .. } => self.work.tile_dots += times,
            _ => {}
        }
    }

    /// Each iteration of a loop ends by moving its yielded tiles into the
    /// carried ones (a pass over each, on a GPU through shared memory): the
    /// fixed cost per chunk of a fused recurrence's state.
    fn carried_copies(&mut self, body: &Block, times: f64) {
        for y in &body.yields {
            let n = self.k.ty(*y).numel() as f64;
            if !self.k.ty(*y).shape.is_empty() {
                self.work.tile_ops += times;
                self.work.tile_elems += n * times;
            }
        }
    }

    fn block(&mut self, b: &Block, times: f64) {
        for s in &b.stmts {
            let numel = s.results.first().map(|r| self.k.ty(*r).numel() as f64).unwrap_or(0.0);
            let scalar_out = s.results.first().is_some_and(|r| self.k.ty(*r).shape.is_empty());
            self.count_tile_op(&s.op, numel, scalar_out, times);
            let value = match &s.op {
                TOp::ProgramId(a) => self.pid.get(*a as usize).map(|p| *p as f64),
                TOp::Param(p) => self.scalars.get(p.index()).copied().flatten(),
                TOp::Const(c) => scalar_out.then_some(*c),
                TOp::Binary(f, a, b2) => match (self.val(*a), self.val(*b2)) {
                    (Some(x), Some(y)) if scalar_out => scalar_binary(*f, x, y, self.k.ty(*a).dtype.is_int()),
                    _ => {
                        self.vector(numel * times, 1.0);
                        None
                    }
                },
                TOp::Unary(f, x) if scalar_out => self.val(*x).and_then(|v| scalar_unary(*f, v)),
                TOp::Cast(x, d) if scalar_out => self.val(*x).map(|v| {
                    if d.is_float() {
                        v
                    } else if *d == mixc_ir::DType::Bool {
                        (v != 0.0) as u8 as f64
                    } else {
                        v.trunc()
                    }
                }),
                TOp::Select(c, a, b2) if scalar_out => match self.val(*c) {
                    Some(c) if c != 0.0 => self.val(*a),
                    Some(_) => self.val(*b2),
                    None => None,
                },
                TOp::Unary(f, _) => {
                    let weight =
                        if self.dev.kind == DeviceKind::Cpu { mixc_ir::ops::software_ops(*f) as f64 } else { 1.0 };
                    self.vector(numel * times, weight);
                    None
                }
                TOp::Cast(..) | TOp::Select(..) | TOp::Reduce { .. } | TOp::Cumsum { .. } => {
                    self.vector(numel * times, 1.0);
                    None
                }
                TOp::Dot { a, trans_a, .. } => {
                    let ta = self.k.ty(*a);
                    let kk = if *trans_a { ta.shape[0] } else { ta.shape[1] };
                    let out = s.results.first().map(|r| self.k.ty(*r).shape.clone()).unwrap_or_default();
                    let flops = 2.0 * numel * kk as f64 * times;
                    self.work.matmul += flops;
                    self.work.tile_macs += flops / 2.0;
                    // On a CPU a dot with a unit dim (a rank-1 update `kᵀv`, a
                    // one-row readout `q·S`) runs as vector FMAs with nothing
                    // padded: one per B element (one row), or one per
                    // accumulator element (rank-1), each of which is also
                    // stored back, at one vector store to two FMAs.
                    let vector_fma = self.dev.kind == DeviceKind::Cpu && (kk == 1 || out.contains(&1));
                    if vector_fma {
                        // A chained update's state is not stored: its FMAs alone.
                        let stored = s.results.first().is_none_or(|r| !self.chained.contains(r));
                        let weight = if kk == 1 && stored { CPU_RANK1_WEIGHT } else { 1.0 };
                        self.work.vector_priced += flops * weight;
                    } else {
                        let gran = self.dev.mma_granularity.max(1);
                        let pad = |x: u32| x.div_ceil(gran) * gran;
                        let padded: f64 = out.iter().map(|d| pad(*d) as f64).product::<f64>() * pad(kk) as f64;
                        self.work.matmul_padded += 2.0 * padded * times;
                    }
                    None
                }
                TOp::Load { ptr, .. } => {
                    self.work.loaded += numel * self.elem_bytes(*ptr) * times;
                    None
                }
                TOp::Store { ptr, value, .. } => {
                    let n = self.k.ty(*value).numel() as f64;
                    self.work.stored += n * self.elem_bytes(*ptr) * times;
                    None
                }
                TOp::For { lo, hi, step, body, .. } => {
                    if let (Some(lo), Some(hi), Some(step)) = (self.val(*lo), self.val(*hi), self.val(*step)) {
                        if step > 0.0 && hi > lo {
                            let trips = ((hi - lo) / step).ceil() as u64;
                            let walked = trips.min(MAX_WALKED_ITERATIONS);
                            let each = trips as f64 / walked as f64;
                            for i in 0..walked {
                                let it = i * trips / walked;
                                if let Some(iv) = body.args.first() {
                                    self.set(*iv, Some(lo + it as f64 * step));
                                }
                                self.block(body, times * each);
                            }
                            self.carried_copies(body, times * trips as f64);
                        }
                    }
                    None
                }
                TOp::If { cond, then, otherwise } => {
                    match self.val(*cond) {
                        Some(0.0) => self.block(otherwise, times),
                        _ => self.block(then, times),
                    }
                    None
                }
                TOp::Arange(_) | TOp::Broadcast(_) | TOp::Reshape(_) | TOp::Transpose(_) => None,
            };
            if let Some(r) = s.results.first() {
                self.set(*r, value);
            }
        }
    }
}

fn scalar_unary(f: mixc_ir::ops::UnaryFn, x: f64) -> Option<f64> {
    use mixc_ir::ops::UnaryFn as U;
    match f {
        U::Neg => Some(-x),
        U::Abs => Some(x.abs()),
        U::Floor => Some(x.floor()),
        U::Round => Some(x.round()),
        U::Not => Some((x == 0.0) as u8 as f64),
        U::Exp => Some(x.exp()),
        U::Log => Some(x.ln()),
        U::Sqrt => Some(x.sqrt()),
        U::Recip => Some(1.0 / x),
        _ => None,
    }
}

fn scalar_binary(f: BinaryFn, a: f64, b: f64, int: bool) -> Option<f64> {
    let flag = |c: bool| Some(c as u8 as f64);
    match f {
        BinaryFn::Add => Some(a + b),
        BinaryFn::Sub => Some(a - b),
        BinaryFn::Mul => Some(a * b),
        BinaryFn::Div if b == 0.0 => None,
        BinaryFn::Div => Some(if int { (a / b).trunc() } else { a / b }),
        BinaryFn::FloorDiv if b == 0.0 => None,
        BinaryFn::FloorDiv => Some((a / b).floor()),
        BinaryFn::Rem if b == 0.0 => None,
        BinaryFn::Rem => Some(a - b * (a / b).floor()),
        BinaryFn::Max => Some(a.max(b)),
        BinaryFn::Min => Some(a.min(b)),
        BinaryFn::Pow => Some(a.powf(b)),
        BinaryFn::Lt => flag(a < b),
        BinaryFn::Le => flag(a <= b),
        BinaryFn::Eq => flag(a == b),
        BinaryFn::And => flag(a != 0.0 && b != 0.0),
        BinaryFn::Or => flag(a != 0.0 || b != 0.0),
    }
}
