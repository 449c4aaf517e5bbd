//! Emitting a planned kernel as LLVM IR and running LLVM's NVPTX backend.

pub(crate) mod mma;
pub(crate) mod rows;

use crate::plan::{self, Access, Defs, Plan, Repr, YieldCopy};
use crate::{Options, PtxError, PtxKernel, Target, Tier};
use inkwell::attributes::{Attribute, AttributeLoc};
use inkwell::basic_block::BasicBlock;
use inkwell::builder::{Builder, BuilderError};
use inkwell::context::Context;
use inkwell::memory_buffer::MemoryBuffer;
use inkwell::module::{Linkage, Module};
use inkwell::passes::PassBuilderOptions;
use inkwell::targets::{CodeModel, FileType, InitializationConfig, RelocMode, Target as LlvmTarget, TargetTriple};
use inkwell::types::{BasicMetadataTypeEnum, BasicType, BasicTypeEnum};
use inkwell::values::{
    AsValueRef, BasicMetadataValueEnum, BasicValue, BasicValueEnum, FloatValue, FunctionValue, IntValue, PointerValue,
};
use inkwell::{AddressSpace, FloatPredicate, IntPredicate, OptimizationLevel};
use mixc_ir::ops::{BinaryFn, ReduceFn, UnaryFn};
use mixc_ir::tile::{Block, Kernel, ParamKind, Stmt, TOp, TValue};
use mixc_ir::DType;
use std::collections::HashMap;

type R<T> = Result<T, PtxError>;

/// The `ptx_kernel` calling convention's number in LLVM.
const PTX_KERNEL_CC: u32 = 71;

impl From<BuilderError> for PtxError {
    fn from(e: BuilderError) -> Self {
        PtxError::Op { kernel: String::new(), op: String::new(), msg: format!("building IR: {e}") }
    }
}

/// Fills in the kernel and op of an error raised deep inside emission.
fn named(e: PtxError, kernel: &str, op: &str) -> PtxError {
    match e {
        PtxError::Op { kernel: k, op: o, msg } => PtxError::Op {
            kernel: if k.is_empty() { kernel.to_string() } else { k },
            op: if o.is_empty() { op.to_string() } else { o },
            msg,
        },
        other => other,
    }
}

fn fail<T>(msg: impl Into<String>) -> R<T> {
    Err(PtxError::Op { kernel: String::new(), op: String::new(), msg: msg.into() })
}

/// A PTX entry name: the kernel's name with anything but `[A-Za-z0-9_]` as `_`.
pub(crate) fn entry_name(name: &str) -> String {
    let mut s: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert_str(0, "k_");
    }
    s
}

static INIT: std::sync::Once = std::sync::Once::new();

fn init_llvm() {
    INIT.call_once(|| {
        LlvmTarget::initialize_nvptx(&InitializationConfig::default());
        // 32-bit shared-memory pointers (`ld.shared [%r]`), as nvcc emits;
        // f32 division as `div.full` (2 ulp, no IEEE-rounding subroutine).
        let args: Vec<std::ffi::CString> = ["mixc", "-nvptx-short-ptr", "-nvptx-prec-divf32=1"]
            .iter()
            .filter_map(|s| std::ffi::CString::new(*s).ok())
            .collect();
        let ptrs: Vec<*const std::os::raw::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        // SAFETY: `ptrs` points into `args`, alive for the call; LLVM copies what it keeps.
        unsafe {
            inkwell::llvm_sys::support::LLVMParseCommandLineOptions(ptrs.len() as i32, ptrs.as_ptr(), std::ptr::null());
        }
    });
}

pub(crate) fn compile(k: &Kernel, target: Target, opts: Options) -> R<PtxKernel> {
    init_llvm();
    if opts.register_tiles {
        if let Ok(rp) = rows::analyze_rows(k, opts.matmul, opts.ctas_per_sm > 1, opts.warp_rows, opts.slot_forms) {
            // A kernel the analysis takes but emission cannot (a gap in the
            // analysis) still compiles, in the shared-memory tier.
            if let Ok(p) = compile_tier(k, target, opts, Some(&rp)) {
                return Ok(p);
            }
        }
    }
    compile_tier(k, target, opts, None)
}

/// Compiles `k` in the register tier (`rows`) or the shared-memory tier.
fn compile_tier(k: &Kernel, target: Target, opts: Options, rows: Option<&rows::RowsPlan>) -> R<PtxKernel> {
    let kerr = |msg: String| PtxError::Kernel { kernel: k.name.clone(), msg };
    let lerr = |msg: String| PtxError::Llvm { kernel: k.name.clone(), msg };
    let defs = Defs::new(k);
    let plan = match rows {
        Some(rp) => rp.plan(),
        None => plan::plan(k, &defs)?,
    };
    if plan.shared_bytes > plan::MAX_SHARED {
        return Err(kerr(format!(
            "a single tile needs {} bytes of shared memory, more than the {} a CTA may have",
            plan.shared_bytes,
            plan::MAX_SHARED
        )));
    }
    let name = entry_name(&k.name);
    let triple = TargetTriple::create("nvptx64-nvidia-cuda");
    let llvm_target = LlvmTarget::from_triple(&triple).map_err(|e| lerr(e.to_string()))?;
    let tm = llvm_target
        .create_target_machine(
            &triple,
            target.name(),
            "+ptx80",
            OptimizationLevel::Aggressive,
            RelocMode::Default,
            CodeModel::Default,
        )
        .ok_or_else(|| lerr(format!("no NVPTX target machine for {}", target.name())))?;
    let cx = Context::create();
    let md = cx.create_module(&name);
    md.set_triple(&triple);
    md.set_data_layout(&tm.get_target_data().get_data_layout());

    let f = declare_kernel(&cx, &md, k, &name, plan.threads, plan.scratch_bytes > 0, opts.ctas_per_sm)?;
    let b = cx.create_builder();
    let entry = cx.append_basic_block(f, "entry");
    b.position_at_end(entry);
    let smem = md.add_global(cx.i8_type().array_type(0), Some(AddressSpace::from(3u16)), "__mixc_smem");
    smem.set_linkage(Linkage::External);
    smem.set_alignment(16);
    let mut em = Em {
        cx: &cx,
        md: &md,
        b,
        f,
        k,
        defs: &defs,
        plan: &plan,
        regs: vec![None; k.types.len()],
        params: f.get_params(),
        smem: smem.as_pointer_value(),
        tid: cx.i32_type().const_zero(),
        scratch: None,
        trk: Tracker::default(),
        opts,
        memo: HashMap::new(),
        held: HashMap::new(),
        staged: HashMap::new(),
    };
    em.tid = em.sreg("tid.x").map_err(|e| named(e, &k.name, "entry"))?;
    if plan.scratch_bytes > 0 {
        em.scratch = Some(em.scratch_base().map_err(|e| named(e, &k.name, "entry"))?);
    }
    match rows {
        Some(rp) => rows::emit(&mut em, rp)?,
        None => em.block(&k.body)?,
    }
    em.b.build_return(None).map_err(|e| named(e.into(), &k.name, "return"))?;
    // The math library resolves the `mixc_*` calls, then becomes internal so
    // that it is inlined and dropped.
    let lib = crate::math::library_ir().map_err(lerr)?;
    let lib = if opts.fast_exp { crate::math::with_fast_exp(&lib).map_err(lerr)? } else { lib };
    let lib = MemoryBuffer::create_from_memory_range_copy(lib.as_bytes(), "mixc_math");
    let lib = cx.create_module_from_ir(lib).map_err(|e| lerr(format!("math library: {e}")))?;
    lib.set_triple(&triple);
    lib.set_data_layout(&tm.get_target_data().get_data_layout());
    md.link_in_module(lib).map_err(|e| lerr(format!("linking the math library: {e}")))?;
    for f in md.get_functions() {
        if f.get_name().to_bytes().starts_with(b"mixc_") && f.count_basic_blocks() > 0 {
            f.set_linkage(Linkage::Internal);
        }
    }
    md.verify().map_err(|e| lerr(format!("invalid IR: {e}")))?;
    md.run_passes("default<O3>", &tm, PassBuilderOptions::create()).map_err(|e| lerr(e.to_string()))?;
    let llvm_ir = md.print_to_string().to_string();
    let buf = tm.write_to_memory_buffer(&md, FileType::Assembly).map_err(|e| lerr(e.to_string()))?;
    let ptx = String::from_utf8_lossy(buf.as_slice()).trim_end_matches('\0').to_string();
    Ok(PtxKernel {
        name,
        ptx,
        llvm_ir,
        threads: plan.threads,
        shared_bytes: plan.shared_bytes,
        scratch_bytes: plan.scratch_bytes,
        tier: if rows.is_some() { Tier::Registers } else { Tier::Shared },
    })
}

/// Declares the kernel: parameters in order (global pointers, i32/f32 scalars),
/// `ptx_kernel`, `.maxntid`, `noalias` pointers (`readonly` where never stored).
fn declare_kernel<'ctx>(
    cx: &'ctx Context,
    md: &Module<'ctx>,
    k: &Kernel,
    name: &str,
    threads: u32,
    scratch: bool,
    ctas_per_sm: u32,
) -> R<FunctionValue<'ctx>> {
    let gptr = cx.ptr_type(AddressSpace::from(1u16));
    let mut tys: Vec<BasicMetadataTypeEnum> = k
        .params
        .iter()
        .map(|p| match p.kind {
            ParamKind::Ptr(_) => gptr.into(),
            ParamKind::Scalar(d) if d.is_float() => cx.f32_type().into(),
            ParamKind::Scalar(_) => cx.i32_type().into(),
        })
        .collect();
    if scratch {
        tys.push(gptr.into());
    }
    let f = md.add_function(name, cx.void_type().fn_type(&tys, false), None);
    f.set_call_conventions(PTX_KERNEL_CC);
    f.add_attribute(AttributeLoc::Function, cx.create_string_attribute("nvvm.maxntid", &threads.to_string()));
    // `.minnctapersm` (1 by default): without it ptxas aims at full occupancy
    // (32 registers at 2048 threads per SM) and spills rather than use more
    // registers; `Options::ctas_per_sm` asks for more CTAs, fewer registers.
    let ctas = ctas_per_sm.clamp(1, (2048 / threads.max(1)).max(1));
    f.add_attribute(AttributeLoc::Function, cx.create_string_attribute("nvvm.minctasm", &ctas.to_string()));
    let mut stored = vec![false; k.params.len()];
    k.walk(&mut |s| {
        if let TOp::Store { ptr, .. } = &s.op {
            if let Some(x) = stored.get_mut(ptr.index()) {
                *x = true;
            }
        }
    });
    let noalias = cx.create_enum_attribute(Attribute::get_named_enum_kind_id("noalias"), 0);
    let readonly = cx.create_enum_attribute(Attribute::get_named_enum_kind_id("readonly"), 0);
    for (i, p) in k.params.iter().enumerate() {
        if matches!(p.kind, ParamKind::Ptr(_)) {
            f.add_attribute(AttributeLoc::Param(i as u32), noalias);
            if !stored[i] {
                f.add_attribute(AttributeLoc::Param(i as u32), readonly);
            }
        }
        if let Some(v) = f.get_nth_param(i as u32) {
            v.set_name(&entry_name(&p.name));
        }
    }
    if scratch {
        let i = k.params.len() as u32;
        f.add_attribute(AttributeLoc::Param(i), noalias);
        if let Some(v) = f.get_nth_param(i) {
            v.set_name("__mixc_scratch");
        }
    }
    Ok(f)
}

/// A shared-memory access for barrier placement.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Acc {
    lo: u32,
    hi: u32,
    /// Element `e` (flat) is touched by thread `e % threads`.
    local: bool,
    base: u32,
    esz: u32,
}

impl Acc {
    fn conflicts(&self, o: &Acc) -> bool {
        self.lo < o.hi && o.lo < self.hi && !(self.local && o.local && self.base == o.base && self.esz == o.esz)
    }
}

/// Accesses since the last barrier.
#[derive(Clone, Debug, Default)]
struct Tracker {
    writes: Vec<Acc>,
    reads: Vec<Acc>,
    gload: Vec<u32>,
    gstore: Vec<u32>,
}

impl Tracker {
    fn needs(&self, r: &[Acc], w: &[Acc], gl: &[u32], gs: &[u32]) -> bool {
        r.iter().any(|a| self.writes.iter().any(|b| a.conflicts(b)))
            || w.iter().any(|a| self.writes.iter().chain(&self.reads).any(|b| a.conflicts(b)))
            || gl.iter().any(|p| self.gstore.contains(p))
            || gs.iter().any(|p| self.gstore.contains(p) || self.gload.contains(p))
    }
    fn add(&mut self, r: &[Acc], w: &[Acc], gl: &[u32], gs: &[u32]) {
        self.reads.extend_from_slice(r);
        self.writes.extend_from_slice(w);
        self.gload.extend_from_slice(gl);
        self.gstore.extend_from_slice(gs);
    }
    fn union(&mut self, o: &Tracker) {
        self.add(&o.reads, &o.writes, &o.gload, &o.gstore);
    }
}

/// What an op touches.
#[derive(Default)]
struct Touch {
    reads: Vec<Acc>,
    writes: Vec<Acc>,
    gl: Vec<u32>,
    gs: Vec<u32>,
}

/// The body of a counted loop: `(emitter, iv, carried) -> next carried`.
type LoopBody<'b, 'ctx, E> =
    &'b mut dyn FnMut(&mut E, IntValue<'ctx>, &[BasicValueEnum<'ctx>]) -> R<Vec<BasicValueEnum<'ctx>>>;

struct Em<'ctx, 'a> {
    cx: &'ctx Context,
    md: &'a Module<'ctx>,
    b: Builder<'ctx>,
    f: FunctionValue<'ctx>,
    k: &'a Kernel,
    defs: &'a Defs<'a>,
    plan: &'a Plan,
    regs: Vec<Option<BasicValueEnum<'ctx>>>,
    params: Vec<BasicValueEnum<'ctx>>,
    smem: PointerValue<'ctx>,
    tid: IntValue<'ctx>,
    /// This CTA's part of the global scratch region, if the kernel has one.
    scratch: Option<PointerValue<'ctx>>,
    trk: Tracker,
    opts: Options,
    /// Elements already computed in the current straight-line region, by value and index.
    memo: HashMap<(u32, Vec<usize>), BasicValueEnum<'ctx>>,
    /// The register tier's held elements, by value and index (see `rows.rs`).
    held: HashMap<(u32, Vec<usize>), BasicValueEnum<'ctx>>,
    /// Loads of bf16 memory whose shared-memory stage holds exactly what they
    /// read (the register tier's staged `dot` operands): their other reads
    /// come from the stage, not memory. By value: the stage's byte offset now
    /// and its row stride.
    staged: HashMap<u32, (IntValue<'ctx>, u32)>,
}

/// The key of element `idx` of `v` in [`Em::memo`] and [`Em::held`]: the
/// identities of the index values.
fn elem_key(v: TValue, idx: &[IntValue]) -> (u32, Vec<usize>) {
    (v.0, idx.iter().map(|i| i.as_value_ref() as usize).collect())
}

fn fv(v: BasicValueEnum) -> R<FloatValue> {
    match v {
        BasicValueEnum::FloatValue(f) => Ok(f),
        other => fail(format!("expected an f32 value, found {:?}", other.get_type())),
    }
}

fn iv(v: BasicValueEnum) -> R<IntValue> {
    match v {
        BasicValueEnum::IntValue(i) => Ok(i),
        other => fail(format!("expected an integer value, found {:?}", other.get_type())),
    }
}

fn numel(shape: &[u32]) -> u32 {
    shape.iter().product()
}

impl<'ctx> Em<'ctx, '_> {
    // ---- small helpers ------------------------------------------------------------

    fn i32c(&self, v: i64) -> IntValue<'ctx> {
        self.cx.i32_type().const_int(v as u64, true)
    }

    fn f32c(&self, v: f64) -> FloatValue<'ctx> {
        self.cx.f32_type().const_float(v)
    }

    /// The register type of a dtype's values.
    fn vty(&self, d: DType) -> BasicTypeEnum<'ctx> {
        match d {
            d if d.is_float() => self.cx.f32_type().into(),
            DType::Bool => self.cx.bool_type().into(),
            _ => self.cx.i32_type().into(),
        }
    }

    /// The shared-memory type of a dtype's elements.
    fn sty(&self, d: DType) -> BasicTypeEnum<'ctx> {
        match d {
            d if d.is_float() => self.cx.f32_type().into(),
            DType::Bool => self.cx.i8_type().into(),
            _ => self.cx.i32_type().into(),
        }
    }

    fn func(&self, name: &str, ret: Option<BasicTypeEnum<'ctx>>, args: &[BasicTypeEnum<'ctx>]) -> FunctionValue<'ctx> {
        if let Some(f) = self.md.get_function(name) {
            return f;
        }
        let args: Vec<BasicMetadataTypeEnum> = args.iter().map(|a| (*a).into()).collect();
        let ty = match ret {
            Some(r) => r.fn_type(&args, false),
            None => self.cx.void_type().fn_type(&args, false),
        };
        self.md.add_function(name, ty, None)
    }

    fn call(&self, f: FunctionValue<'ctx>, args: &[BasicValueEnum<'ctx>]) -> R<Option<BasicValueEnum<'ctx>>> {
        let args: Vec<BasicMetadataValueEnum> = args.iter().map(|a| (*a).into()).collect();
        let c = self.b.build_call(f, &args, "")?;
        Ok(match c.try_as_basic_value() {
            inkwell::values::ValueKind::Basic(v) => Some(v),
            _ => None,
        })
    }

    fn call_f(&self, name: &str, args: &[FloatValue<'ctx>]) -> R<FloatValue<'ctx>> {
        let f32t: BasicTypeEnum = self.cx.f32_type().into();
        let tys = vec![f32t; args.len()];
        let f = self.func(name, Some(f32t), &tys);
        let vals: Vec<BasicValueEnum> = args.iter().map(|a| (*a).into()).collect();
        match self.call(f, &vals)? {
            Some(v) => fv(v),
            None => fail(format!("`{name}` returned nothing")),
        }
    }

    fn sreg(&self, which: &str) -> R<IntValue<'ctx>> {
        let i32t: BasicTypeEnum = self.cx.i32_type().into();
        let f = self.func(&format!("llvm.nvvm.read.ptx.sreg.{which}"), Some(i32t), &[]);
        match self.call(f, &[])? {
            Some(v) => iv(v),
            None => fail("special register read returned nothing"),
        }
    }

    /// A CTA barrier; none where the last instruction is already one (two
    /// in a row order nothing more than one).
    fn barrier(&mut self) -> R<()> {
        let i32t: BasicTypeEnum = self.cx.i32_type().into();
        let f = self.func("llvm.nvvm.barrier.cta.sync.aligned.all", None, &[i32t]);
        let last = self.b.get_insert_block().and_then(|bb| bb.get_last_instruction());
        let repeated = last.is_some_and(|i| {
            i.get_opcode() == inkwell::values::InstructionOpcode::Call
                && i.get_operand(i.get_num_operands().saturating_sub(1)).and_then(|o| o.value()).is_some_and(|callee| {
                    callee.as_value_ref() == f.as_global_value().as_pointer_value().as_value_ref()
                })
        });
        if repeated {
            self.trk = Tracker::default();
            return Ok(());
        }
        self.call(f, &[self.i32c(0).into()])?;
        self.trk = Tracker::default();
        Ok(())
    }

    fn bb(&self, name: &str) -> BasicBlock<'ctx> {
        self.cx.append_basic_block(self.f, name)
    }

    fn cur(&self) -> R<BasicBlock<'ctx>> {
        match self.b.get_insert_block() {
            Some(b) => Ok(b),
            None => fail("builder has no block"),
        }
    }

    fn select(&self, c: IntValue<'ctx>, a: BasicValueEnum<'ctx>, b: BasicValueEnum<'ctx>) -> R<BasicValueEnum<'ctx>> {
        Ok(self.b.build_select(c, a, b, "")?)
    }

    fn icmp(&self, p: IntPredicate, a: IntValue<'ctx>, b: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        Ok(self.b.build_int_compare(p, a, b, "")?)
    }

    fn fcmp(&self, p: FloatPredicate, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> R<IntValue<'ctx>> {
        Ok(self.b.build_float_compare(p, a, b, "")?)
    }

    // ---- indices --------------------------------------------------------------------

    /// The flat row-major index of a multi-index.
    fn lin(&self, idx: &[IntValue<'ctx>], shape: &[u32]) -> R<IntValue<'ctx>> {
        let mut acc: Option<IntValue> = None;
        let mut stride = 1u32;
        for d in (0..shape.len()).rev() {
            if shape[d] != 1 {
                let i = match idx.get(d) {
                    Some(i) => *i,
                    None => return fail("index rank mismatch"),
                };
                let t = if stride == 1 { i } else { self.b.build_int_mul(i, self.i32c(stride as i64), "")? };
                acc = Some(match acc {
                    None => t,
                    Some(a) => self.b.build_int_add(a, t, "")?,
                });
            }
            stride = stride.saturating_mul(shape[d]);
        }
        Ok(acc.unwrap_or_else(|| self.i32c(0)))
    }

    /// The multi-index of a flat row-major index (nonnegative).
    fn delin(&self, flat: IntValue<'ctx>, shape: &[u32]) -> R<Vec<IntValue<'ctx>>> {
        let mut out = vec![self.i32c(0); shape.len()];
        let mut rest = flat;
        for d in (0..shape.len()).rev() {
            let s = shape[d];
            if d == 0 {
                out[0] = if s == 1 { self.i32c(0) } else { rest };
            } else if s != 1 {
                let sc = self.i32c(s as i64);
                out[d] = self.b.build_int_unsigned_rem(rest, sc, "")?;
                rest = self.b.build_int_unsigned_div(rest, sc, "")?;
            }
        }
        Ok(out)
    }

    /// The index of an operand of shape `x` read at `idx` of a broadcast result.
    fn bidx(&self, x: &[u32], idx: &[IntValue<'ctx>]) -> R<Vec<IntValue<'ctx>>> {
        if x.len() > idx.len() {
            return fail(format!("operand of rank {} under a result of rank {}", x.len(), idx.len()));
        }
        let off = idx.len() - x.len();
        Ok(x.iter().enumerate().map(|(d, s)| if *s == 1 { self.i32c(0) } else { idx[d + off] }).collect())
    }

    // ---- loops ------------------------------------------------------------------------

    /// `for iv = lo; iv < hi (&& extra); iv += step`, carrying `init`; returns
    /// the carried values at exit.
    #[allow(clippy::too_many_arguments)]
    fn counted(
        &mut self,
        lo: IntValue<'ctx>,
        hi: IntValue<'ctx>,
        step: IntValue<'ctx>,
        extra: Option<IntValue<'ctx>>,
        init: &[BasicValueEnum<'ctx>],
        body: LoopBody<'_, 'ctx, Self>,
    ) -> R<Vec<BasicValueEnum<'ctx>>> {
        let pre = self.cur()?;
        let (header, bodyb, exit) = (self.bb("loop"), self.bb("body"), self.bb("exit"));
        self.b.build_unconditional_branch(header)?;
        self.b.position_at_end(header);
        let ivp = self.b.build_phi(self.cx.i32_type(), "iv")?;
        ivp.add_incoming(&[(&lo, pre)]);
        let mut phis = vec![];
        for v in init {
            let p = self.b.build_phi(v.get_type(), "")?;
            p.add_incoming(&[(v as &dyn BasicValue, pre)]);
            phis.push(p);
        }
        let i = iv(ivp.as_basic_value())?;
        let mut c = self.icmp(IntPredicate::SLT, i, hi)?;
        if let Some(e) = extra {
            c = self.b.build_and(c, e, "")?;
        }
        self.b.build_conditional_branch(c, bodyb, exit)?;
        self.b.position_at_end(bodyb);
        self.memo.clear();
        let vals: Vec<BasicValueEnum> = phis.iter().map(|p| p.as_basic_value()).collect();
        let next = body(self, i, &vals)?;
        if next.len() != phis.len() {
            return fail("loop body yields the wrong number of values");
        }
        let latch = self.cur()?;
        let inext = self.b.build_int_add(i, step, "")?;
        ivp.add_incoming(&[(&inext, latch)]);
        for (p, n) in phis.iter().zip(&next) {
            p.add_incoming(&[(n as &dyn BasicValue, latch)]);
        }
        self.b.build_unconditional_branch(header)?;
        self.b.position_at_end(exit);
        self.memo.clear();
        Ok(vals)
    }

    /// Runs `body(e)` for `e = tid; e < n; e += threads`: a loop of
    /// `n / threads` trips (a constant count, so LLVM unrolls it and issues the
    /// global loads of several trips together), then one guarded trip for
    /// the last `n % threads` elements.
    fn each(&mut self, n: u32, body: &mut dyn FnMut(&mut Self, IntValue<'ctx>) -> R<()>) -> R<()> {
        if n == 0 {
            return Ok(());
        }
        let threads = self.plan.threads.max(1);
        let (full, rest) = (n / threads, n % threads);
        let tid = self.tid;
        let stride = self.i32c(threads as i64);
        if full > 0 {
            let (zero, one, trips) = (self.i32c(0), self.i32c(1), self.i32c(full as i64));
            self.counted(zero, trips, one, None, &[], &mut |s, j, _| {
                let e = s.b.build_int_add(tid, s.b.build_int_mul(j, stride, "")?, "")?;
                body(s, e)?;
                Ok(vec![])
            })?;
        }
        if rest > 0 {
            let e = self.b.build_int_add(tid, self.i32c((full * threads) as i64), "")?;
            let inside = self.icmp(IntPredicate::SLT, tid, self.i32c(rest as i64))?;
            let (then, done) = (self.bb("tail"), self.bb("tail_done"));
            self.b.build_conditional_branch(inside, then, done)?;
            self.b.position_at_end(then);
            self.memo.clear();
            body(self, e)?;
            self.b.build_unconditional_branch(done)?;
            self.b.position_at_end(done);
            self.memo.clear();
        }
        Ok(())
    }

    // ---- memory -----------------------------------------------------------------------

    fn slot_of(&self, v: TValue) -> R<usize> {
        match self.plan.repr.get(v.index()) {
            Some(Repr::Mat(s)) => Ok(*s),
            _ => fail(format!("%{} has no slot", v.0)),
        }
    }

    /// `scratch + ctaid_linear * scratch_bytes`, with `ctaid_linear =
    /// ctaid.x + nctaid.x * (ctaid.y + nctaid.y * ctaid.z)`.
    fn scratch_base(&self) -> R<PointerValue<'ctx>> {
        let n = self.k.params.len();
        let Some(BasicValueEnum::PointerValue(p)) = self.params.get(n).copied() else {
            return fail("the scratch parameter is missing");
        };
        let i64t = self.cx.i64_type();
        let mut lin = self.b.build_int_z_extend(self.sreg("ctaid.z")?, i64t, "")?;
        for (c, nc) in [("ctaid.y", "nctaid.y"), ("ctaid.x", "nctaid.x")] {
            let ncv = self.b.build_int_z_extend(self.sreg(nc)?, i64t, "")?;
            let cv = self.b.build_int_z_extend(self.sreg(c)?, i64t, "")?;
            let m = self.b.build_int_mul(lin, ncv, "")?;
            lin = self.b.build_int_add(m, cv, "")?;
        }
        let bytes = self.b.build_int_mul(lin, i64t.const_int(self.plan.scratch_bytes as u64, false), "")?;
        // SAFETY: the runtime allocates `scratch_bytes` per CTA of the grid.
        Ok(unsafe { self.b.build_in_bounds_gep(self.cx.i8_type(), p, &[bytes], "scratch")? })
    }

    /// The address of element `e` (row-major) of a slot.
    fn slot_ptr(&self, slot: usize, d: DType, e: IntValue<'ctx>) -> R<PointerValue<'ctx>> {
        let row = self.plan.slots.get(slot).map(|s| s.row).unwrap_or(0);
        let e = if row > 0 {
            let r = self.b.build_int_unsigned_div(e, self.i32c(row as i64), "")?;
            let pad = self.b.build_int_mul(r, self.i32c(plan::ROW_PAD as i64), "")?;
            self.b.build_int_add(e, pad, "")?
        } else {
            e
        };
        self.slot_ptr_phys(slot, d, e)
    }

    /// The address of element `idx` of a slot holding a tile of `shape`: a
    /// padded slot's row stride applied to the index directly (no division),
    /// so neighbouring columns stay neighbouring addresses LLVM can vectorize.
    fn slot_ptr_at(&self, slot: usize, d: DType, idx: &[IntValue<'ctx>], shape: &[u32]) -> R<PointerValue<'ctx>> {
        let row = self.plan.slots.get(slot).map(|s| s.row).unwrap_or(0);
        match (idx.split_last(), shape.split_last()) {
            (Some((col, outer)), Some((&last, outer_shape))) if row > 0 && last == row && !outer.is_empty() => {
                let r = self.lin(outer, outer_shape)?;
                let r = self.b.build_int_mul(r, self.i32c((row + plan::ROW_PAD) as i64), "")?;
                let e = self.b.build_int_add(r, *col, "")?;
                self.slot_ptr_phys(slot, d, e)
            }
            _ => {
                let e = self.lin(idx, shape)?;
                self.slot_ptr(slot, d, e)
            }
        }
    }

    /// The address of physical element `e` of a slot (padding already applied).
    fn slot_ptr_phys(&self, slot: usize, d: DType, e: IntValue<'ctx>) -> R<PointerValue<'ctx>> {
        let (off, global) = match self.plan.slots.get(slot) {
            Some(s) => (s.offset, s.global),
            None => return fail(format!("slot {slot} does not exist")),
        };
        let space = if global {
            match self.scratch {
                Some(p) => p,
                None => return fail("a scratch slot without a scratch region"),
            }
        } else {
            self.smem
        };
        // SAFETY: in-bounds offsets into the shared array or scratch region sized by the plan.
        let base = unsafe { self.b.build_in_bounds_gep(self.cx.i8_type(), space, &[self.i32c(off as i64)], "")? };
        let p = unsafe { self.b.build_in_bounds_gep(self.sty(d), base, &[e], "")? };
        Ok(p)
    }

    fn load_slot(&self, slot: usize, d: DType, e: IntValue<'ctx>) -> R<BasicValueEnum<'ctx>> {
        let p = self.slot_ptr(slot, d, e)?;
        self.load_ptr(p, d)
    }

    fn load_ptr(&self, p: PointerValue<'ctx>, d: DType) -> R<BasicValueEnum<'ctx>> {
        let x = self.b.build_load(self.sty(d), p, "")?;
        if d == DType::Bool {
            Ok(self.icmp(IntPredicate::NE, iv(x)?, self.cx.i8_type().const_zero())?.into())
        } else {
            Ok(x)
        }
    }

    fn store_slot(&self, slot: usize, d: DType, e: IntValue<'ctx>, x: BasicValueEnum<'ctx>) -> R<()> {
        let p = self.slot_ptr(slot, d, e)?;
        self.store_ptr(p, d, x)
    }

    fn store_ptr(&self, p: PointerValue<'ctx>, d: DType, x: BasicValueEnum<'ctx>) -> R<()> {
        let x = if d == DType::Bool { self.b.build_int_z_extend(iv(x)?, self.cx.i8_type(), "")?.into() } else { x };
        self.b.build_store(p, x)?;
        Ok(())
    }

    fn param_ptr(&self, p: usize) -> R<PointerValue<'ctx>> {
        match self.params.get(p) {
            Some(BasicValueEnum::PointerValue(x)) => Ok(*x),
            _ => fail(format!("parameter {p} is not a pointer")),
        }
    }

    fn param_dtype(&self, p: usize) -> R<DType> {
        match self.k.params.get(p).map(|p| &p.kind) {
            Some(ParamKind::Ptr(d)) => Ok(*d),
            _ => fail(format!("parameter {p} is not a pointer")),
        }
    }

    /// The type of one element of a global buffer of dtype `d` in memory:
    /// `bfloat` and `half` for 16-bit floats (2-byte elements), `float` for
    /// other floats, `i32` for the rest.
    fn gty(&self, d: DType) -> BasicTypeEnum<'ctx> {
        match d {
            DType::BF16 => self.cx.bf16_type().into(),
            DType::F16 => self.cx.f16_type().into(),
            d if d.is_float() => self.cx.f32_type().into(),
            _ => self.cx.i32_type().into(),
        }
    }

    /// A value loaded from a global buffer of dtype `d`, as a tile element:
    /// 16-bit floats extended (exactly) to f32.
    fn widen_loaded(&self, d: DType, x: BasicValueEnum<'ctx>) -> R<BasicValueEnum<'ctx>> {
        match d {
            DType::BF16 | DType::F16 => Ok(self.b.build_float_ext(fv(x)?, self.cx.f32_type(), "")?.into()),
            _ => Ok(x),
        }
    }

    /// A tile element as stored to a global buffer of dtype `d`: an f32
    /// already rounded to f16/bf16 precision (`convert`) truncated to 16 bits
    /// (exact; an unrounded one would round to nearest even).
    fn narrow_stored(&self, d: DType, x: BasicValueEnum<'ctx>) -> R<BasicValueEnum<'ctx>> {
        let narrow = match d {
            DType::BF16 => self.cx.bf16_type(),
            DType::F16 => self.cx.f16_type(),
            _ => return Ok(x),
        };
        Ok(self.b.build_float_trunc(fv(x)?, narrow, "")?.into())
    }

    /// The address of element `off` of a pointer parameter, and its element type.
    fn gaddr(&self, p: usize, off: IntValue<'ctx>) -> R<(PointerValue<'ctx>, BasicTypeEnum<'ctx>)> {
        let d = self.param_dtype(p)?;
        let ty = self.gty(d);
        let off64 = self.b.build_int_s_extend(off, self.cx.i64_type(), "")?;
        // SAFETY: the tile program's offsets index its buffers (masked elsewhere).
        let a = unsafe { self.b.build_in_bounds_gep(ty, self.param_ptr(p)?, &[off64], "")? };
        Ok((a, ty))
    }

    // ---- access sets and barriers -----------------------------------------------------

    fn touch_value(&self, v: TValue, flat: bool, t: &mut Touch) -> R<()> {
        let mut a = vec![];
        self.plan.accesses(self.k, self.defs, v, flat, &mut a);
        for x in a {
            match x {
                Access::Shared { root, local } => {
                    let s = self.slot_of(root)?;
                    t.reads.push(self.acc(s, local)?);
                }
                Access::Global(p) => t.gl.push(p.0),
            }
        }
        Ok(())
    }

    fn acc(&self, slot: usize, local: bool) -> R<Acc> {
        match self.plan.slots.get(slot) {
            Some(s) => {
                // Scratch slots are tracked in a range of their own.
                let lo = s.offset + if s.global { 1 << 31 } else { 0 };
                Ok(Acc { lo, hi: lo + s.bytes, local, base: lo, esz: s.elem_bytes })
            }
            None => fail(format!("slot {slot} does not exist")),
        }
    }

    fn sync(&mut self, t: &Touch) -> R<()> {
        if self.trk.needs(&t.reads, &t.writes, &t.gl, &t.gs) {
            self.barrier()?;
        }
        self.trk.add(&t.reads, &t.writes, &t.gl, &t.gs);
        Ok(())
    }

    // ---- elements ---------------------------------------------------------------------

    /// Element `idx` of `v`, however it is held.
    fn elem(&mut self, v: TValue, idx: &[IntValue<'ctx>]) -> R<BasicValueEnum<'ctx>> {
        let key = elem_key(v, idx);
        if let Some(x) = self.memo.get(&key) {
            return Ok(*x);
        }
        let ty = self.k.ty(v).clone();
        if let (Some((base, stride)), [row, col]) = (self.staged.get(&v.0).copied(), idx) {
            let off = self.b.build_int_mul(*row, self.i32c(stride as i64), "")?;
            let off = self.b.build_int_add(off, self.b.build_int_mul(*col, self.i32c(2), "")?, "")?;
            let off = self.b.build_int_add(off, base, "")?;
            // SAFETY: inside the stage the register tier's plan sized.
            let p = unsafe { self.b.build_in_bounds_gep(self.cx.i8_type(), self.smem, &[off], "")? };
            let h = self.b.build_load(self.cx.bf16_type(), p, "")?.into_float_value();
            let x: BasicValueEnum = self.b.build_float_ext(h, self.cx.f32_type(), "")?.into();
            self.memo.insert(key, x);
            return Ok(x);
        }
        let x = match self.plan.repr.get(v.index()) {
            Some(Repr::Scalar) => match self.regs.get(v.index()).copied().flatten() {
                Some(x) => x,
                None => return fail(format!("%{} is used before it has a value", v.0)),
            },
            Some(Repr::Splat(c)) => self.const_of(ty.dtype, *c),
            Some(Repr::Mat(s)) => {
                let p = self.slot_ptr_at(*s, ty.dtype, idx, &ty.shape)?;
                self.load_ptr(p, ty.dtype)?
            }
            Some(Repr::Reg) => match self.held.get(&key) {
                Some(x) => *x,
                None => return fail(format!("%{} is held in registers, but not at this index", v.0)),
            },
            Some(_) => self.compute(v, idx)?,
            None => return fail(format!("%{} does not exist", v.0)),
        };
        self.memo.insert(key, x);
        Ok(x)
    }

    fn const_of(&self, d: DType, c: f64) -> BasicValueEnum<'ctx> {
        match d {
            DType::F16 => self.f32c(half_round(c, false)).into(),
            DType::BF16 => self.f32c(half_round(c, true)).into(),
            d if d.is_float() => self.f32c(c).into(),
            DType::Bool => self.cx.bool_type().const_int((c != 0.0) as u64, false).into(),
            d => self.i32c(int_range(d, c.trunc()) as i64).into(),
        }
    }

    /// Computes element `idx` of `v` from its operands.
    fn compute(&mut self, v: TValue, idx: &[IntValue<'ctx>]) -> R<BasicValueEnum<'ctx>> {
        let k = self.k;
        let ty = k.ty(v).clone();
        let Some(op) = self.defs.op(v) else { return fail(format!("%{} has no defining op", v.0)) };
        match op {
            TOp::ProgramId(a) => Ok(self.sreg(["ctaid.x", "ctaid.y", "ctaid.z"][(*a as usize).min(2)])?.into()),
            TOp::Param(p) => {
                let x = match self.params.get(p.index()) {
                    Some(x) => *x,
                    None => return fail(format!("parameter {} does not exist", p.0)),
                };
                if ty.dtype == DType::Bool {
                    Ok(self.icmp(IntPredicate::NE, iv(x)?, self.i32c(0))?.into())
                } else {
                    Ok(x)
                }
            }
            TOp::Const(c) => Ok(self.const_of(ty.dtype, *c)),
            TOp::Arange(_) => Ok(idx.first().copied().unwrap_or_else(|| self.i32c(0)).into()),
            TOp::Unary(f, x) => {
                let i = self.bidx(&k.ty(*x).shape, idx)?;
                let xv = self.elem(*x, &i)?;
                self.unary(*f, xv, ty.dtype)
            }
            TOp::Binary(f, a, b) => {
                let (ia, ib) = (self.bidx(&k.ty(*a).shape, idx)?, self.bidx(&k.ty(*b).shape, idx)?);
                let av = self.elem(*a, &ia)?;
                let bv = self.elem(*b, &ib)?;
                self.binary(*f, av, bv, k.ty(*a).dtype, ty.dtype)
            }
            TOp::Select(c, a, b) => {
                let ic = self.bidx(&k.ty(*c).shape, idx)?;
                let (ia, ib) = (self.bidx(&k.ty(*a).shape, idx)?, self.bidx(&k.ty(*b).shape, idx)?);
                let cv = iv(self.elem(*c, &ic)?)?;
                let av = self.elem(*a, &ia)?;
                let bv = self.elem(*b, &ib)?;
                self.select(cv, av, bv)
            }
            TOp::Cast(x, d) => {
                let xv = self.elem(*x, idx)?;
                self.convert(xv, k.ty(*x).dtype, *d)
            }
            TOp::Broadcast(x) => {
                let i = self.bidx(&k.ty(*x).shape, idx)?;
                self.elem(*x, &i)
            }
            TOp::Reshape(x) => {
                let flat = self.lin(idx, &ty.shape)?;
                let i = self.delin(flat, &k.ty(*x).shape)?;
                self.elem(*x, &i)
            }
            TOp::Transpose(x) => match idx {
                [a, b] => self.elem(*x, &[*b, *a]),
                _ => fail("transpose of a tile that is not 2-D"),
            },
            TOp::Load { ptr, offsets, mask, other } => {
                let off = iv(self.elem(*offsets, idx)?)?;
                let m = match mask {
                    Some(m) => Some(iv(self.elem(*m, idx)?)?),
                    None => None,
                };
                // A masked load reads element 0 where the mask is off (every
                // buffer holds at least one element) and selects `other`: no
                // branch, so the loads of a thread's elements all issue before
                // the first one is waited for.
                let off = match m {
                    Some(m) => iv(self.select(m, off.into(), self.i32c(0).into())?)?,
                    None => off,
                };
                let (addr, sty) = self.gaddr(ptr.index(), off)?;
                let x = self.b.build_load(sty, addr, "")?;
                let x = self.widen_loaded(self.param_dtype(ptr.index())?, x)?;
                let raw = match m {
                    None => x,
                    Some(m) => {
                        let o: BasicValueEnum = if sty.is_float_type() {
                            self.f32c(*other).into()
                        } else {
                            self.i32c(other.trunc() as i64).into()
                        };
                        self.select(m, x, o)?
                    }
                };
                if ty.dtype == DType::Bool {
                    Ok(self.icmp(IntPredicate::NE, iv(raw)?, self.i32c(0))?.into())
                } else {
                    Ok(raw)
                }
            }
            TOp::Dot { a, b, acc, trans_a, trans_b } => {
                let [i, j] = idx else { return fail("dot result is not 2-D") };
                let (i, j) = (*i, *j);
                let sa = &k.ty(*a).shape;
                let kk = if *trans_a { sa[0] } else { sa[1] };
                let acc0 = match acc {
                    Some(c) => fv(self.elem(*c, idx)?)?,
                    None => self.f32c(0.0),
                };
                let (a, b, ta, tb) = (*a, *b, *trans_a, *trans_b);
                let zero: BasicValueEnum = self.f32c(0.0).into();
                let sum =
                    self.counted(self.i32c(0), self.i32c(kk as i64), self.i32c(1), None, &[zero], &mut |s, l, c| {
                        let av = fv(s.elem(a, &if ta { [l, i] } else { [i, l] })?)?;
                        let bv = fv(s.elem(b, &if tb { [j, l] } else { [l, j] })?)?;
                        let c0 = fv(c[0])?;
                        Ok(vec![s.fma(av, bv, c0)?.into()])
                    })?;
                let sum = fv(sum[0])?;
                Ok(self.b.build_float_add(acc0, sum, "")?.into())
            }
            TOp::Reduce { func, x, axis } => self.reduce(*func, *x, *axis as usize, idx, ty.dtype),
            TOp::Cumsum { .. } | TOp::Store { .. } | TOp::For { .. } | TOp::If { .. } => {
                fail(format!("`{}` has no per-element form", op.mnemonic()))
            }
        }
    }

    fn fma(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>, c: FloatValue<'ctx>) -> R<FloatValue<'ctx>> {
        self.call_f("llvm.fmuladd.f32", &[a, b, c])
    }

    fn reduce(
        &mut self,
        func: ReduceFn,
        x: TValue,
        axis: usize,
        idx: &[IntValue<'ctx>],
        d: DType,
    ) -> R<BasicValueEnum<'ctx>> {
        let xs = self.k.ty(x).shape.clone();
        let Some(len) = xs.get(axis).copied() else { return fail("reduce axis out of range") };
        if d == DType::Bool {
            return fail("reductions of bool tiles are not supported");
        }
        let float = d.is_float();
        let idx = idx.to_vec();
        let at = move |l: IntValue<'ctx>| -> Vec<IntValue<'ctx>> {
            let mut i = idx.clone();
            i.insert(axis.min(i.len()), l);
            i
        };
        let (z, one, n) = (self.i32c(0), self.i32c(1), self.i32c(len as i64));
        let fold = |s: &mut Self, init: BasicValueEnum<'ctx>, f: ReduceFn, shift: Option<FloatValue<'ctx>>| {
            let at = at.clone();
            s.counted(z, n, one, None, &[init], &mut |s, l, c| {
                let e = s.elem(x, &at(l))?;
                let r: BasicValueEnum = if float {
                    let (e, c) = (fv(e)?, fv(c[0])?);
                    match (f, shift) {
                        (ReduceFn::Max, _) => s.call_f("llvm.maxnum.f32", &[c, e])?.into(),
                        (ReduceFn::Min, _) => s.call_f("llvm.minnum.f32", &[c, e])?.into(),
                        (_, Some(m)) => {
                            let t = s.b.build_float_sub(e, m, "")?;
                            let ex = s.call_f("mixc_exp", &[t])?;
                            s.b.build_float_add(c, ex, "")?.into()
                        }
                        _ => s.b.build_float_add(c, e, "")?.into(),
                    }
                } else {
                    let (e, c) = (iv(e)?, iv(c[0])?);
                    match f {
                        ReduceFn::Max => s.select(s.icmp(IntPredicate::SGT, e, c)?, e.into(), c.into())?,
                        ReduceFn::Min => s.select(s.icmp(IntPredicate::SLT, e, c)?, e.into(), c.into())?,
                        _ => s.b.build_int_add(c, e, "")?.into(),
                    }
                };
                Ok(vec![r])
            })
            .and_then(|v| v.first().copied().map_or_else(|| fail("empty fold"), Ok))
        };
        let r: BasicValueEnum = match (func, float) {
            (ReduceFn::Sum, _) => {
                fold(self, if float { self.f32c(0.0).into() } else { z.into() }, ReduceFn::Sum, None)?
            }
            (ReduceFn::Mean, true) => {
                let s = fv(fold(self, self.f32c(0.0).into(), ReduceFn::Sum, None)?)?;
                self.b.build_float_div(s, self.f32c(len.max(1) as f64), "")?.into()
            }
            (ReduceFn::Mean, false) => {
                let s = iv(fold(self, z.into(), ReduceFn::Sum, None)?)?;
                self.b.build_int_signed_div(s, self.i32c(len.max(1) as i64), "")?.into()
            }
            (ReduceFn::Max, true) => fold(self, self.f32c(f64::NEG_INFINITY).into(), ReduceFn::Max, None)?,
            (ReduceFn::Min, true) => fold(self, self.f32c(f64::INFINITY).into(), ReduceFn::Min, None)?,
            (ReduceFn::Max, false) => fold(self, self.i32c(i32::MIN as i64).into(), ReduceFn::Max, None)?,
            (ReduceFn::Min, false) => fold(self, self.i32c(i32::MAX as i64).into(), ReduceFn::Min, None)?,
            (ReduceFn::LogSumExp, true) => {
                let m = fv(fold(self, self.f32c(f64::NEG_INFINITY).into(), ReduceFn::Max, None)?)?;
                let s = fv(fold(self, self.f32c(0.0).into(), ReduceFn::Sum, Some(m))?)?;
                let l = self.call_f("mixc_log", &[s])?;
                let r = self.b.build_float_add(m, l, "")?;
                let ninf = self.fcmp(FloatPredicate::OEQ, m, self.f32c(f64::NEG_INFINITY))?;
                self.select(ninf, m.into(), r.into())?
            }
            (ReduceFn::LogSumExp, false) => return fail("logsumexp of an integer tile"),
        };
        if float {
            Ok(self.round_float(d, fv(r)?)?.into())
        } else {
            Ok(self.clamp_int(d, iv(r)?)?.into())
        }
    }

    // ---- arithmetic -------------------------------------------------------------------

    /// Rounds an f32 to f16 or bf16 precision when the dtype asks for it.
    fn round_float(&self, d: DType, x: FloatValue<'ctx>) -> R<FloatValue<'ctx>> {
        let narrow = match d {
            DType::F16 => self.cx.f16_type(),
            DType::BF16 => self.cx.bf16_type(),
            _ => return Ok(x),
        };
        let t = self.b.build_float_trunc(x, narrow, "")?;
        Ok(self.b.build_float_ext(t, self.cx.f32_type(), "")?)
    }

    /// Clamps an i32 to the range of a narrower integer dtype.
    fn clamp_int(&self, d: DType, x: IntValue<'ctx>) -> R<IntValue<'ctx>> {
        let (lo, hi) = match d {
            DType::I8 => (-128, 127),
            DType::I4 => (-8, 7),
            _ => return Ok(x),
        };
        let (lo, hi) = (self.i32c(lo), self.i32c(hi));
        let a = iv(self.select(self.icmp(IntPredicate::SLT, x, lo)?, lo.into(), x.into())?)?;
        iv(self.select(self.icmp(IntPredicate::SGT, a, hi)?, hi.into(), a.into())?)
    }

    /// An f32 to an integer dtype: truncated, saturated (NaN: 0), clamped.
    fn float_to_int(&self, d: DType, x: FloatValue<'ctx>) -> R<IntValue<'ctx>> {
        let i32t: BasicTypeEnum = self.cx.i32_type().into();
        let f32t: BasicTypeEnum = self.cx.f32_type().into();
        let f = self.func("llvm.fptosi.sat.i32.f32", Some(i32t), &[f32t]);
        let r = match self.call(f, &[x.into()])? {
            Some(v) => iv(v)?,
            None => return fail("fptosi.sat returned nothing"),
        };
        self.clamp_int(d, r)
    }

    /// `round_to(to, x)` of the interpreter: a value of dtype `from` as dtype `to`.
    fn convert(&self, x: BasicValueEnum<'ctx>, from: DType, to: DType) -> R<BasicValueEnum<'ctx>> {
        let f32t = self.cx.f32_type();
        Ok(match (from, to) {
            (f, t) if f.is_float() && t.is_float() => self.round_float(t, fv(x)?)?.into(),
            (f, DType::Bool) if f.is_float() => self.fcmp(FloatPredicate::UNE, fv(x)?, self.f32c(0.0))?.into(),
            (f, t) if f.is_float() => self.float_to_int(t, fv(x)?)?.into(),
            (DType::Bool, t) if t.is_float() => self.b.build_unsigned_int_to_float(iv(x)?, f32t, "")?.into(),
            (DType::Bool, DType::Bool) => x,
            (DType::Bool, _) => self.b.build_int_z_extend(iv(x)?, self.cx.i32_type(), "")?.into(),
            (_, t) if t.is_float() => {
                let f = self.b.build_signed_int_to_float(iv(x)?, f32t, "")?;
                self.round_float(t, f)?.into()
            }
            (_, DType::Bool) => self.icmp(IntPredicate::NE, iv(x)?, self.i32c(0))?.into(),
            (_, t) => self.clamp_int(t, iv(x)?)?.into(),
        })
    }

    fn unary_float(&self, f: UnaryFn, x: FloatValue<'ctx>) -> R<FloatValue<'ctx>> {
        if let Some(name) = crate::math::unary_fn(f) {
            return self.call_f(name, &[x]);
        }
        let one = self.f32c(1.0);
        Ok(match f {
            UnaryFn::Neg => self.b.build_float_neg(x, "")?,
            UnaryFn::Abs => self.call_f("llvm.fabs.f32", &[x])?,
            UnaryFn::Sqrt => self.call_f("llvm.sqrt.f32", &[x])?,
            UnaryFn::Rsqrt => {
                let s = self.call_f("llvm.sqrt.f32", &[x])?;
                self.b.build_float_div(one, s, "")?
            }
            UnaryFn::Recip => self.b.build_float_div(one, x, "")?,
            UnaryFn::Relu => self.call_f("llvm.maxnum.f32", &[x, self.f32c(0.0)])?,
            UnaryFn::Round => self.call_f("llvm.round.f32", &[x])?,
            UnaryFn::Floor => self.call_f("llvm.floor.f32", &[x])?,
            UnaryFn::Not => {
                let z = self.fcmp(FloatPredicate::OEQ, x, self.f32c(0.0))?;
                self.b.build_unsigned_int_to_float(z, self.cx.f32_type(), "")?
            }
            other => return fail(format!("no f32 form for {}", mixc_ir::ops::unary_name(other))),
        })
    }

    fn unary(&self, f: UnaryFn, x: BasicValueEnum<'ctx>, d: DType) -> R<BasicValueEnum<'ctx>> {
        if d.is_float() {
            let r = self.unary_float(f, fv(x)?)?;
            return Ok(self.round_float(d, r)?.into());
        }
        let x = iv(x)?;
        if d == DType::Bool {
            return Ok(match f {
                UnaryFn::Not => self.b.build_xor(x, self.cx.bool_type().const_int(1, false), "")?.into(),
                UnaryFn::Neg | UnaryFn::Abs | UnaryFn::Relu | UnaryFn::Round | UnaryFn::Floor => x.into(),
                other => {
                    let xf = self.b.build_unsigned_int_to_float(x, self.cx.f32_type(), "")?;
                    let r = self.unary_float(other, xf)?;
                    self.fcmp(FloatPredicate::UNE, r, self.f32c(0.0))?.into()
                }
            });
        }
        let z = self.i32c(0);
        let r = match f {
            UnaryFn::Neg => self.b.build_int_sub(z, x, "")?,
            UnaryFn::Abs => {
                let n = self.b.build_int_sub(z, x, "")?;
                iv(self.select(self.icmp(IntPredicate::SLT, x, z)?, n.into(), x.into())?)?
            }
            UnaryFn::Relu => iv(self.select(self.icmp(IntPredicate::SLT, x, z)?, z.into(), x.into())?)?,
            UnaryFn::Not => {
                let c = self.icmp(IntPredicate::EQ, x, z)?;
                self.b.build_int_z_extend(c, self.cx.i32_type(), "")?
            }
            UnaryFn::Round | UnaryFn::Floor => x,
            other => {
                let xf = self.b.build_signed_int_to_float(x, self.cx.f32_type(), "")?;
                let r = self.unary_float(other, xf)?;
                return Ok(self.float_to_int(d, r)?.into());
            }
        };
        Ok(self.clamp_int(d, r)?.into())
    }

    fn binary(
        &self,
        f: BinaryFn,
        a: BasicValueEnum<'ctx>,
        b: BasicValueEnum<'ctx>,
        din: DType,
        dout: DType,
    ) -> R<BasicValueEnum<'ctx>> {
        use BinaryFn as B;
        if din.is_float() {
            let (a, b) = (fv(a)?, fv(b)?);
            let z = self.f32c(0.0);
            let r = match f {
                B::Add => self.b.build_float_add(a, b, "")?,
                B::Sub => self.b.build_float_sub(a, b, "")?,
                B::Mul => self.b.build_float_mul(a, b, "")?,
                B::Div => self.b.build_float_div(a, b, "")?,
                B::Max => self.call_f("llvm.maxnum.f32", &[a, b])?,
                B::Min => self.call_f("llvm.minnum.f32", &[a, b])?,
                B::Pow => self.call_f("mixc_pow", &[a, b])?,
                B::Rem => {
                    let q = self.b.build_float_div(a, b, "")?;
                    let fl = self.call_f("llvm.floor.f32", &[q])?;
                    let p = self.b.build_float_mul(b, fl, "")?;
                    self.b.build_float_sub(a, p, "")?
                }
                B::FloorDiv => {
                    let q = self.b.build_float_div(a, b, "")?;
                    self.call_f("llvm.floor.f32", &[q])?
                }
                B::Lt => return Ok(self.fcmp(FloatPredicate::OLT, a, b)?.into()),
                B::Le => return Ok(self.fcmp(FloatPredicate::OLE, a, b)?.into()),
                B::Eq => return Ok(self.fcmp(FloatPredicate::OEQ, a, b)?.into()),
                B::And | B::Or => {
                    let (x, y) = (self.fcmp(FloatPredicate::UNE, a, z)?, self.fcmp(FloatPredicate::UNE, b, z)?);
                    let r = if f == B::And { self.b.build_and(x, y, "")? } else { self.b.build_or(x, y, "")? };
                    return Ok(r.into());
                }
            };
            return Ok(self.round_float(dout, r)?.into());
        }
        let (a, b) = (iv(a)?, iv(b)?);
        if din == DType::Bool {
            return Ok(match f {
                B::And | B::Min => self.b.build_and(a, b, "")?.into(),
                B::Or | B::Max => self.b.build_or(a, b, "")?.into(),
                B::Eq => self.icmp(IntPredicate::EQ, a, b)?.into(),
                B::Lt => self.icmp(IntPredicate::ULT, a, b)?.into(),
                B::Le => self.icmp(IntPredicate::ULE, a, b)?.into(),
                other => {
                    let i32t = self.cx.i32_type();
                    let (x, y) = (self.b.build_int_z_extend(a, i32t, "")?, self.b.build_int_z_extend(b, i32t, "")?);
                    let r = iv(self.binary(other, x.into(), y.into(), DType::I32, DType::I32)?)?;
                    self.icmp(IntPredicate::NE, r, self.i32c(0))?.into()
                }
            });
        }
        let z = self.i32c(0);
        // A divisor of zero would be undefined behaviour in LLVM: divide by 1 instead.
        let safe = |b: IntValue<'ctx>| -> R<IntValue<'ctx>> {
            if b.is_const() {
                return Ok(if b.get_sign_extended_constant() == Some(0) { self.i32c(1) } else { b });
            }
            let zero = self.icmp(IntPredicate::EQ, b, z)?;
            iv(self.select(zero, self.i32c(1).into(), b.into())?)
        };
        let r = match f {
            B::Add => self.b.build_int_add(a, b, "")?,
            B::Sub => self.b.build_int_sub(a, b, "")?,
            B::Mul => self.b.build_int_mul(a, b, "")?,
            B::Div => self.b.build_int_signed_div(a, safe(b)?, "")?,
            B::Max => iv(self.select(self.icmp(IntPredicate::SGT, a, b)?, a.into(), b.into())?)?,
            B::Min => iv(self.select(self.icmp(IntPredicate::SLT, a, b)?, a.into(), b.into())?)?,
            B::Pow => {
                let f32t = self.cx.f32_type();
                let (x, y) =
                    (self.b.build_signed_int_to_float(a, f32t, "")?, self.b.build_signed_int_to_float(b, f32t, "")?);
                let p = self.call_f("mixc_pow", &[x, y])?;
                self.float_to_int(dout, p)?
            }
            B::Rem | B::FloorDiv => {
                let bs = safe(b)?;
                let q = self.b.build_int_signed_div(a, bs, "")?;
                let r = self.b.build_int_signed_rem(a, bs, "")?;
                // Round towards minus infinity: the remainder takes the divisor's sign.
                let nz = self.icmp(IntPredicate::NE, r, z)?;
                let sx = self.b.build_xor(r, bs, "")?;
                let diff = self.icmp(IntPredicate::SLT, sx, z)?;
                let fix = self.b.build_and(nz, diff, "")?;
                if f == B::Rem {
                    let r2 = self.b.build_int_add(r, bs, "")?;
                    iv(self.select(fix, r2.into(), r.into())?)?
                } else {
                    let q2 = self.b.build_int_sub(q, self.i32c(1), "")?;
                    iv(self.select(fix, q2.into(), q.into())?)?
                }
            }
            B::Lt => return Ok(self.icmp(IntPredicate::SLT, a, b)?.into()),
            B::Le => return Ok(self.icmp(IntPredicate::SLE, a, b)?.into()),
            B::Eq => return Ok(self.icmp(IntPredicate::EQ, a, b)?.into()),
            B::And | B::Or => {
                let (x, y) = (self.icmp(IntPredicate::NE, a, z)?, self.icmp(IntPredicate::NE, b, z)?);
                let r = if f == B::And { self.b.build_and(x, y, "")? } else { self.b.build_or(x, y, "")? };
                return Ok(r.into());
            }
        };
        Ok(self.clamp_int(dout, r)?.into())
    }

    // ---- statements -------------------------------------------------------------------

    fn block(&mut self, b: &Block) -> R<()> {
        for s in &b.stmts {
            let k = self.k;
            self.stmt(s).map_err(|e| named(e, &k.name, &s.op.mnemonic()))?;
        }
        Ok(())
    }

    /// How an op reads each operand: `true` when the reading thread reads the
    /// flat index it writes.
    fn operand_flat(&self, op: &TOp, result: Option<TValue>, x: TValue, pos: usize) -> bool {
        let Some(r) = result else { return true };
        let rs = &self.k.ty(r).shape;
        if rs.is_empty() {
            return false;
        }
        match op {
            TOp::Dot { .. } => pos == 2,
            TOp::Reduce { .. } | TOp::Cumsum { .. } | TOp::Transpose(_) | TOp::Broadcast(_) | TOp::Reshape(_) => false,
            _ => numel(&self.k.ty(x).shape) == numel(rs),
        }
    }

    fn stmt(&mut self, s: &Stmt) -> R<()> {
        match &s.op {
            TOp::For { .. } => return self.for_(s),
            TOp::If { .. } => return self.if_(s),
            TOp::Store { .. } => return self.store(s),
            _ => {}
        }
        let Some(v) = s.results.first().copied() else { return Ok(()) };
        let repr = self.plan.repr.get(v.index()).cloned();
        match repr {
            Some(Repr::Scalar) | Some(Repr::Mat(_)) => {}
            _ => return Ok(()),
        }
        let mut t = Touch::default();
        for (i, x) in s.op.operands().into_iter().enumerate() {
            let flat = self.operand_flat(&s.op, Some(v), x, i);
            self.touch_value(x, flat, &mut t)?;
        }
        if let TOp::Load { ptr, .. } = &s.op {
            t.gl.push(ptr.0);
        }
        let ty = self.k.ty(v).clone();
        if let (Some(Repr::Mat(slot)), TOp::Dot { a, b, acc, trans_a, trans_b }) = (&repr, &s.op) {
            let sa = &self.k.ty(*a).shape;
            let (m, kk) = if *trans_a { (sa[1], sa[0]) } else { (sa[0], sa[1]) };
            let n = ty.shape.get(1).copied().unwrap_or(0);
            if ty.dtype.is_float() && mma::takes(self.opts.matmul, m, n, kk) {
                let d = mma::MmaDot { a: *a, b: *b, acc: *acc, trans_a: *trans_a, trans_b: *trans_b, m, n, k: kk };
                return self.mma_dot(*slot, &d);
            }
        }
        match repr {
            Some(Repr::Mat(slot)) => {
                let cumsum = matches!(s.op, TOp::Cumsum { .. });
                t.writes.push(self.acc(slot, !cumsum)?);
                self.sync(&t)?;
                if let TOp::Cumsum { x, axis, reverse, exclusive } = &s.op {
                    return self.cumsum(slot, *x, &ty.shape, ty.dtype, *axis as usize, *reverse, *exclusive);
                }
                self.each(numel(&ty.shape), &mut |s, e| {
                    let idx = s.delin(e, &ty.shape)?;
                    let x = s.compute(v, &idx)?;
                    let p = s.slot_ptr_at(slot, ty.dtype, &idx, &ty.shape)?;
                    s.store_ptr(p, ty.dtype, x)
                })
            }
            _ => {
                self.sync(&t)?;
                let x = self.compute(v, &[])?;
                if let Some(r) = self.regs.get_mut(v.index()) {
                    *r = Some(x);
                }
                Ok(())
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn cumsum(
        &mut self,
        slot: usize,
        x: TValue,
        shape: &[u32],
        d: DType,
        axis: usize,
        reverse: bool,
        exclusive: bool,
    ) -> R<()> {
        let Some(len) = shape.get(axis).copied() else { return fail("cumsum axis out of range") };
        let outer: u32 = shape[..axis].iter().product();
        let inner: u32 = shape[axis + 1..].iter().product();
        let float = d.is_float();
        if d == DType::Bool {
            return fail("cumsum of a bool tile");
        }
        let shape = shape.to_vec();
        self.each(outer * inner, &mut |s, line| {
            let innerc = s.i32c(inner as i64);
            let o = s.b.build_int_unsigned_div(line, innerc, "")?;
            let i = s.b.build_int_unsigned_rem(line, innerc, "")?;
            let zero: BasicValueEnum = if float { s.f32c(0.0).into() } else { s.i32c(0).into() };
            let shape = shape.clone();
            s.counted(s.i32c(0), s.i32c(len as i64), s.i32c(1), None, &[zero], &mut |s, step, acc| {
                let j = if reverse { s.b.build_int_sub(s.i32c(len as i64 - 1), step, "")? } else { step };
                let row = s.b.build_int_mul(o, s.i32c(len as i64), "")?;
                let row = s.b.build_int_add(row, j, "")?;
                let flat = s.b.build_int_mul(row, innerc, "")?;
                let flat = s.b.build_int_add(flat, i, "")?;
                let idx = s.delin(flat, &shape)?;
                let xv = s.elem(x, &idx)?;
                let next: BasicValueEnum = if float {
                    let a = s.b.build_float_add(fv(acc[0])?, fv(xv)?, "")?;
                    s.round_float(d, a)?.into()
                } else {
                    let a = s.b.build_int_add(iv(acc[0])?, iv(xv)?, "")?;
                    s.clamp_int(d, a)?.into()
                };
                s.store_slot(slot, d, flat, if exclusive { acc[0] } else { next })?;
                Ok(vec![next])
            })?;
            Ok(())
        })
    }

    fn store(&mut self, s: &Stmt) -> R<()> {
        let TOp::Store { ptr, offsets, value, mask } = &s.op else { return Ok(()) };
        let mut t = Touch::default();
        for x in s.op.operands() {
            self.touch_value(x, true, &mut t)?;
        }
        t.gs.push(ptr.0);
        self.sync(&t)?;
        let vt = self.k.ty(*value).clone();
        let pd = self.param_dtype(ptr.index())?;
        let (ptr, offsets, value, mask) = (ptr.index(), *offsets, *value, *mask);
        let one = |s: &mut Self, idx: &[IntValue<'ctx>]| -> R<()> {
            let off = iv(s.elem(offsets, idx)?)?;
            let x = s.elem(value, idx)?;
            let x = s.convert(x, vt.dtype, pd)?;
            let x: BasicValueEnum =
                if pd == DType::Bool { s.b.build_int_z_extend(iv(x)?, s.cx.i32_type(), "")?.into() } else { x };
            let x = s.narrow_stored(pd, x)?;
            let (addr, _) = s.gaddr(ptr, off)?;
            let m = match mask {
                Some(m) => Some(iv(s.elem(m, idx)?)?),
                None => None,
            };
            s.store_where(addr, x, m)
        };
        if vt.shape.is_empty() {
            // Every thread holds the scalar: thread 0 stores it.
            let first = self.icmp(IntPredicate::EQ, self.tid, self.i32c(0))?;
            let (st, done) = (self.bb("st0"), self.bb("st0_done"));
            self.b.build_conditional_branch(first, st, done)?;
            self.b.position_at_end(st);
            self.memo.clear();
            one(self, &[])?;
            self.b.build_unconditional_branch(done)?;
            self.b.position_at_end(done);
            self.memo.clear();
            return Ok(());
        }
        let shape = vt.shape.clone();
        self.each(numel(&shape), &mut |s, e| {
            let idx = s.delin(e, &shape)?;
            one(s, &idx)
        })
    }

    /// Stores `x` at global `addr`, only where `mask` (an i1) holds.
    fn store_where(
        &mut self,
        addr: PointerValue<'ctx>,
        x: BasicValueEnum<'ctx>,
        mask: Option<IntValue<'ctx>>,
    ) -> R<()> {
        let Some(m) = mask else {
            self.b.build_store(addr, x)?;
            return Ok(());
        };
        let (st, done) = (self.bb("st"), self.bb("st_done"));
        self.b.build_conditional_branch(m, st, done)?;
        self.b.position_at_end(st);
        self.b.build_store(addr, x)?;
        self.b.build_unconditional_branch(done)?;
        self.b.position_at_end(done);
        Ok(())
    }

    /// Copies tile `v` into `slot` (element `e` by thread `e % threads`).
    fn copy_into(&mut self, slot: usize, v: TValue) -> R<()> {
        let ty = self.k.ty(v).clone();
        let mut t = Touch::default();
        self.touch_value(v, true, &mut t)?;
        t.writes.push(self.acc(slot, true)?);
        self.sync(&t)?;
        self.each(numel(&ty.shape), &mut |s, e| {
            let idx = s.delin(e, &ty.shape)?;
            let x = s.elem(v, &idx)?;
            s.store_slot(slot, ty.dtype, e, x)
        })
    }

    fn copy_slot(&mut self, dst: usize, src: usize, ty: &mixc_ir::tile::TileType) -> R<()> {
        let t = Touch { reads: vec![self.acc(src, true)?], writes: vec![self.acc(dst, true)?], ..Touch::default() };
        self.sync(&t)?;
        let d = ty.dtype;
        self.each(numel(&ty.shape), &mut |s, e| {
            let x = s.load_slot(src, d, e)?;
            s.store_slot(dst, d, e, x)
        })
    }

    fn scalar(&self, v: TValue) -> R<BasicValueEnum<'ctx>> {
        match self.regs.get(v.index()).copied().flatten() {
            Some(x) => Ok(x),
            None => fail(format!("%{} is not a computed scalar", v.0)),
        }
    }

    fn set(&mut self, v: TValue, x: BasicValueEnum<'ctx>) {
        if let Some(r) = self.regs.get_mut(v.index()) {
            *r = Some(x);
        }
    }

    fn for_(&mut self, s: &Stmt) -> R<()> {
        let TOp::For { lo, hi, step, init, body } = &s.op else { return Ok(()) };
        let Some(lp) = self.plan.loop_plan(s).cloned() else { return fail("loop was not planned") };
        let k = self.k;
        // Initial values into the carried slots; scalars become phis.
        let mut sinit = vec![];
        for (j, x) in init.iter().enumerate() {
            let Some(arg) = body.args.get(j + 1) else { return fail("loop body lacks an argument") };
            match self.plan.repr.get(arg.index()) {
                Some(Repr::Mat(slot)) => {
                    let slot = *slot;
                    self.copy_into(slot, *x)?;
                }
                _ => sinit.push(self.elem(*x, &[])?),
            }
        }
        let (lo, hi, step) = (iv(self.scalar(*lo)?)?, iv(self.scalar(*hi)?)?, iv(self.scalar(*step)?)?);
        let positive = self.icmp(IntPredicate::SGT, step, self.i32c(0))?;
        let pre = self.trk.clone();
        let out = self.counted(lo, hi, step, Some(positive), &sinit, &mut |em, ivv, vals| {
            let Some(a0) = body.args.first() else { return fail("loop body lacks its induction variable") };
            em.set(*a0, ivv.into());
            let mut si = 0;
            for a in body.args.iter().skip(1) {
                if em.plan.repr.get(a.index()) == Some(&Repr::Scalar) {
                    let Some(x) = vals.get(si) else { return fail("scalar carried value missing") };
                    em.set(*a, *x);
                    si += 1;
                }
            }
            em.block(body)?;
            // Yields: temporaries first, then into the carried slots.
            for (j, y) in body.yields.iter().enumerate() {
                if let Some(YieldCopy::Temp(t)) = lp.yields.get(j) {
                    em.copy_into(*t, *y)?;
                }
            }
            let mut next = vec![];
            for (j, y) in body.yields.iter().enumerate() {
                let Some(arg) = body.args.get(j + 1) else { return fail("loop body lacks an argument") };
                match lp.yields.get(j) {
                    Some(YieldCopy::Scalar) => next.push(em.elem(*y, &[])?),
                    Some(YieldCopy::Same) => {}
                    Some(YieldCopy::Direct) => {
                        let slot = em.slot_of(*arg)?;
                        em.copy_into(slot, *y)?;
                    }
                    Some(YieldCopy::Temp(t)) => {
                        let slot = em.slot_of(*arg)?;
                        let ty = k.ty(*y).clone();
                        em.copy_slot(slot, *t, &ty)?;
                    }
                    None => return fail("yield was not planned"),
                }
            }
            if lp.end_barrier {
                em.barrier()?;
            }
            Ok(next)
        })?;
        if lp.end_barrier {
            self.trk = pre;
        } else {
            self.trk.union(&pre);
        }
        let mut si = 0;
        for r in &s.results {
            if self.plan.repr.get(r.index()) == Some(&Repr::Scalar) {
                let Some(x) = out.get(si) else { return fail("scalar loop result missing") };
                self.set(*r, *x);
                si += 1;
            }
        }
        Ok(())
    }

    fn if_(&mut self, s: &Stmt) -> R<()> {
        let TOp::If { cond, then, otherwise } = &s.op else { return Ok(()) };
        let c = iv(self.scalar(*cond)?)?;
        let (tb, eb, merge) = (self.bb("then"), self.bb("else"), self.bb("endif"));
        self.b.build_conditional_branch(c, tb, eb)?;
        let pre = self.trk.clone();
        let mut arms = vec![];
        for (bb, arm) in [(tb, then), (eb, otherwise)] {
            self.b.position_at_end(bb);
            self.memo.clear();
            self.trk = pre.clone();
            self.block(arm)?;
            let mut scal = vec![];
            for (y, r) in arm.yields.iter().zip(&s.results) {
                match self.plan.repr.get(r.index()) {
                    Some(Repr::Mat(slot)) => {
                        let slot = *slot;
                        self.copy_into(slot, *y)?;
                    }
                    _ => scal.push(self.elem(*y, &[])?),
                }
            }
            let end = self.cur()?;
            self.b.build_unconditional_branch(merge)?;
            arms.push((end, scal, self.trk.clone()));
        }
        self.b.position_at_end(merge);
        self.memo.clear();
        self.trk = Tracker::default();
        for (_, _, t) in &arms {
            self.trk.union(t);
        }
        let mut si = 0;
        for r in &s.results {
            if self.plan.repr.get(r.index()) != Some(&Repr::Scalar) {
                continue;
            }
            let ty = self.vty(self.k.ty(*r).dtype);
            let phi = self.b.build_phi(ty, "")?;
            for (bb, scal, _) in &arms {
                let Some(x) = scal.get(si) else { return fail("if arm lacks a scalar yield") };
                phi.add_incoming(&[(x as &dyn BasicValue, *bb)]);
            }
            self.set(*r, phi.as_basic_value());
            si += 1;
        }
        Ok(())
    }
}

/// An f64 rounded to f16 or bf16 precision (round to nearest even), as f64.
fn half_round(x: f64, bf16: bool) -> f64 {
    let f = x as f32;
    if !f.is_finite() {
        return f as f64;
    }
    let bits = f.to_bits();
    if bf16 {
        let lsb = (bits >> 16) & 1;
        let r = bits.wrapping_add(0x7fff + lsb) & 0xffff_0000;
        return f32::from_bits(r) as f64;
    }
    // f16: 10 mantissa bits; values below f16's range are handled approximately
    // (constants of f16 tiles are small integers or simple fractions).
    let m = 2f64.powi(((x.abs().max(f64::MIN_POSITIVE).log2().floor() as i32) - 10).max(-24));
    (x / m).round_ties_even() * m
}

/// Clamps an integer constant to a dtype's range.
fn int_range(d: DType, x: f64) -> f64 {
    match d {
        DType::I8 => x.clamp(-128.0, 127.0),
        DType::I4 => x.clamp(-8.0, 7.0),
        _ => x.clamp(i32::MIN as f64, i32::MAX as f64),
    }
}
