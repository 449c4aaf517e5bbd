//! Compiling tile programs to PTX (feature `llvm`): one kernel image per
//! kernel of a program, and bundles of them for GPU machines without LLVM.

use crate::bundle::{BundledProgram, KernelImage};
use crate::{Error, NamedGraph};
use mixc_backend_ptx::{compile_with, register_tier_with, Target};
pub use mixc_backend_ptx::{slot_forms_default, Matmul, Options, Tier};
use mixc_ir::tile::Program;
use mixc_passes::Schedule;
use std::path::Path;

/// Parses `sm_80`, `sm_90`, `sm_90a` (and `cuda`, the H100 the lent machine has).
pub fn target(name: &str) -> Option<Target> {
    match name {
        "cuda" => Some(Target::Sm90),
        other => Target::parse(other),
    }
}

/// Compiles every kernel of a program, side by side on all cores (each
/// kernel has its own LLVM context): a model's first token waits for it.
pub fn compile_program(mixer: &str, prog: &Program, target: Target, opts: Options) -> Result<Vec<Compiled>, Error> {
    use rayon::prelude::*;
    prog.kernels
        .par_iter()
        .map(|k| {
            let p = compile_with(k, target, opts).map_err(|e| Error::Usage(format!("mixer `{mixer}`: {e}")))?;
            let tier = p.tier;
            let image = KernelImage {
                name: p.name,
                code: p.ptx,
                threads: p.threads,
                shared_bytes: p.shared_bytes,
                scratch_bytes: p.scratch_bytes,
            };
            Ok(Compiled { image, llvm_ir: p.llvm_ir, tier })
        })
        .collect()
}

/// One kernel compiled by [`compile_program`].
pub struct Compiled {
    pub image: KernelImage,
    /// The optimized LLVM IR its PTX was generated from.
    pub llvm_ir: String,
    /// Where it holds its tiles.
    pub tier: Tier,
}

/// `k`'s tier as compiled with `opts` (`tier`) and, outside the register
/// tier, why (the register tier's analysis run again: for reports only).
pub fn describe_tier(k: &mixc_ir::tile::Kernel, tier: Tier, opts: Options) -> String {
    match tier {
        Tier::Registers => "register tier".to_string(),
        Tier::Shared if !opts.register_tiles => "shared-memory tier (--shared-tiles)".to_string(),
        Tier::Shared => match register_tier_with(k, opts.matmul, opts.slot_forms) {
            Err(why) => format!("shared-memory tier: {why}"),
            Ok(()) => "shared-memory tier: the register tier could not emit it".to_string(),
        },
    }
}

/// What the caller sets of a bundle's decode-step schedules beyond what the
/// prefill's schedule passes on.
#[derive(Clone, Copy, Debug, Default)]
pub struct DecodeOverrides {
    /// Keys per attention split program (0: off); `None`: the GPU decode default.
    pub kv_split: Option<u32>,
}

/// Writes a bundle with, per mixer, the prefill program under `sched` and the
/// decode-step program (`Schedule::decode_for` a GPU, with `sched`'s storage,
/// its value blocks where it sets them, and `decode`'s key split where that
/// sets one).
pub fn write_bundle(
    dir: &Path,
    graphs: &[NamedGraph],
    target_name: &str,
    schedule: &dyn Fn(&NamedGraph) -> Result<Schedule, Error>,
    decode: DecodeOverrides,
    opts: Options,
) -> Result<usize, Error> {
    let t = target(target_name).ok_or_else(|| Error::Usage(format!("unknown GPU target `{target_name}`")))?;
    let mut programs = Vec::new();
    for g in graphs {
        let sched = &schedule(g)?;
        let step = Schedule { storage: sched.storage, ..Schedule::decode_for(mixc_passes::device::DeviceKind::Gpu) };
        let step = if sched.block_v > 0 { Schedule { block_v: sched.block_v, ..step } } else { step };
        let step = Schedule { kv_split: decode.kv_split.unwrap_or(step.kv_split), ..step };
        step.validate().map_err(|why| Error::Usage(format!("the decode-step schedule: {why}")))?;
        for (mode, s) in [("prefill", *sched), ("decode", step)] {
            let program = crate::lower_graph(&g.name, &g.graph, &s)?;
            let kernels = compile_program(&g.name, &program, t, opts)?.into_iter().map(|c| c.image).collect();
            programs.push(BundledProgram {
                mixer: g.name.clone(),
                mode: mode.into(),
                graph: g.graph.clone(),
                schedule: s,
                program,
                kernels,
            });
        }
    }
    crate::bundle::write_with(dir, target_name, opts.matmul.name(), &programs)?;
    Ok(programs.len())
}
