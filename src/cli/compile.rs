//! `mixc compile FILE --emit STAGE`.

use super::{CompileArgs, Emit};

pub fn run(args: &CompileArgs) -> Result<String, mixc::Error> {
    let graphs = mixc::graphs_of_file(&args.file)?;
    let gpu = args.target != "cpu";
    if gpu && !["sm_80", "sm_90", "sm_90a", "cuda"].contains(&args.target.as_str()) {
        return Err(mixc::Error::Usage(format!(
            "unknown target `{}` (expected cpu, sm_80, sm_90, sm_90a or cuda)",
            args.target
        )));
    }
    if let Some(dir) = &args.output {
        if !gpu {
            return Err(mixc::Error::Usage(
                "-o DIR writes GPU kernel bundles: add --target sm_90 (or sm_80, sm_90a)".into(),
            ));
        }
        return bundle(&graphs, args, dir);
    }
    match args.emit {
        Emit::Graph => Ok(emit_graphs(&graphs)),
        Emit::Tile => emit_tiles(&graphs, args),
        Emit::Llvm | Emit::Ptx if !gpu => {
            Err(mixc::Error::Usage("--emit llvm and --emit ptx need a GPU target: add --target sm_90".into()))
        }
        Emit::Llvm | Emit::Ptx => emit_gpu(&graphs, args),
        Emit::Clif if gpu => Err(mixc::Error::Usage(format!(
            "--emit clif prints the CPU backend's Cranelift IR: use --target cpu, not `{}`",
            args.target
        ))),
        Emit::Clif => emit_clif(&graphs, args),
    }
}

/// The schedule a mixer is compiled under: `--chunk`, else the table's chunk,
/// else (`chunk = "auto"`) the cost model's pick for the target at `--sizes`;
/// `--split`, `--scan`, `--block-v`, `--kv-split` and `--storage` on top. `--step-tokens
/// N`: the token-by-token form, N tokens a pass.
fn schedule_of(g: &mixc::NamedGraph, args: &CompileArgs) -> Result<mixc_passes::Schedule, mixc::Error> {
    let s = flagged_schedule(g, args)?;
    let s = mixc_passes::Schedule { kv_split: args.kv_split.unwrap_or(s.kv_split), ..s };
    let s = match args.attention_blocks {
        Some((block_q, block_k)) => mixc_passes::Schedule { block_q, block_k, ..s },
        None => s,
    };
    match (args.kv_split, args.step_tokens) {
        (Some(n), _) => s.validate().map_err(|why| mixc::Error::Usage(format!("--kv-split {n}: {why}")))?,
        (None, Some(n)) => s.validate().map_err(|why| mixc::Error::Usage(format!("--step-tokens {n}: {why}")))?,
        (None, None) => {}
    }
    Ok(s)
}

/// [`schedule_of`] before `--kv-split`.
fn flagged_schedule(g: &mixc::NamedGraph, args: &CompileArgs) -> Result<mixc_passes::Schedule, mixc::Error> {
    if let Some(n) = args.step_tokens {
        return Ok(mixc_passes::Schedule {
            block_v: args.block_v,
            storage: args.storage,
            ..mixc_passes::Schedule::steps(n)
        });
    }
    let base = match args.chunk.or(g.chunk) {
        Some(chunk) => mixc_passes::Schedule::with_chunk(chunk),
        None => {
            let dev = mixc::calibrate::choose_profile(&args.target, None)?.profile;
            let point = super::explain::size_point(args.sizes.as_deref(), &dev)?;
            let resources = pricing_resources(&dev, args)?;
            mixc::pricing::auto_schedule_with(&g.name, &g.graph, &dev, &point, &*resources, args.storage)?
        }
    };
    let split = base.split || args.split || args.scan;
    let scan = base.scan || args.scan;
    let block_v = if args.block_v > 0 { args.block_v } else { base.block_v };
    Ok(mixc_passes::Schedule { split, scan, block_v, storage: args.storage, ..base })
}

/// The kernels' resources the search prices with: the GPU backend's plan
/// under `--matmul`.
fn pricing_resources(
    dev: &mixc_passes::device::DeviceProfile,
    args: &CompileArgs,
) -> Result<mixc::pricing::ResourceFn, mixc::Error> {
    mixc::pricing::kernel_resources_for(dev, &args.matmul)
}

#[cfg(feature = "llvm")]
fn bundle(graphs: &[mixc::NamedGraph], args: &CompileArgs, dir: &std::path::Path) -> Result<String, mixc::Error> {
    let decode = mixc::gpu::DecodeOverrides { kv_split: args.kv_split };
    let n = mixc::gpu::write_bundle(dir, graphs, &args.target, &|g| schedule_of(g, args), decode, options(args)?)?;
    Ok(format!("wrote {n} programs for {} to {}\n", args.target, dir.display()))
}

/// Code generation options from `--matmul`, `--precise-exp`, `--ctas-per-sm`,
/// `--shared-tiles` and `--warp-rows`.
#[cfg(feature = "llvm")]
fn options(args: &CompileArgs) -> Result<mixc::gpu::Options, mixc::Error> {
    let matmul = mixc::gpu::Matmul::parse(&args.matmul).ok_or_else(|| {
        mixc::Error::Usage(format!("unknown --matmul `{}` (expected tf32x3, bf16 or simt)", args.matmul))
    })?;
    Ok(mixc::gpu::Options {
        matmul,
        fast_exp: !args.precise_exp,
        ctas_per_sm: args.ctas_per_sm,
        register_tiles: !args.shared_tiles,
        warp_rows: args.warp_rows,
        slot_forms: mixc::gpu::slot_forms_default(),
    })
}

#[cfg(not(feature = "llvm"))]
fn bundle(_: &[mixc::NamedGraph], _: &CompileArgs, _: &std::path::Path) -> Result<String, mixc::Error> {
    Err(mixc::Error::Usage("this mixc was built without LLVM (feature `llvm`): it cannot write PTX".into()))
}

#[cfg(feature = "llvm")]
fn emit_gpu(graphs: &[mixc::NamedGraph], args: &CompileArgs) -> Result<String, mixc::Error> {
    let target = mixc::gpu::target(&args.target)
        .ok_or_else(|| mixc::Error::Usage(format!("unknown GPU target `{}`", args.target)))?;
    let opts = options(args)?;
    let mut out = String::new();
    for g in graphs {
        let prog = mixc::lower_graph(&g.name, &g.graph, &schedule_of(g, args)?)?;
        for (c, k) in mixc::gpu::compile_program(&g.name, &prog, target, opts)?.iter().zip(&prog.kernels) {
            let image = &c.image;
            let tier = mixc::gpu::describe_tier(k, c.tier, opts);
            out.push_str(&format!(
                "// mixer {} kernel {} ({tier}; {} threads, {} B shared, {} B scratch)\n",
                g.name, image.name, image.threads, image.shared_bytes, image.scratch_bytes
            ));
            out.push_str(if args.emit == Emit::Llvm { &c.llvm_ir } else { &image.code });
            out.push('\n');
        }
    }
    Ok(out)
}

#[cfg(not(feature = "llvm"))]
fn emit_gpu(_: &[mixc::NamedGraph], _: &CompileArgs) -> Result<String, mixc::Error> {
    Err(mixc::Error::Usage("this mixc was built without LLVM (feature `llvm`): it cannot emit LLVM IR or PTX".into()))
}

/// Each mixer's tile program under the schedule the flags and the table give.
fn emit_tiles(graphs: &[mixc::NamedGraph], args: &CompileArgs) -> Result<String, mixc::Error> {
    let mut out = String::new();
    for (i, g) in graphs.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let sched = schedule_of(g, args)?;
        let prog = mixc::lower_graph(&g.name, &g.graph, &sched)?;
        let form = mixc::bench::describe(&sched, &g.graph);
        let from = match (args.chunk.or(g.chunk), args.attention_blocks) {
            (_, Some(_)) => ", blocks from --attention-blocks",
            (None, None) => ", the cost model's pick",
            (Some(_), None) => "",
        };
        out.push_str(&format!("# mixer {} ({form}{from})\n", g.name));
        out.push_str(&mixc::ir::tile::text::print_program(&prog));
    }
    Ok(out)
}

/// The Cranelift IR of every kernel of each mixer's tile program (the
/// schedule `--emit tile` prints), each after a `; mixer NAME kernel NAME` line.
fn emit_clif(graphs: &[mixc::NamedGraph], args: &CompileArgs) -> Result<String, mixc::Error> {
    let mut out = String::new();
    for g in graphs {
        let prog = mixc::lower_graph(&g.name, &g.graph, &schedule_of(g, args)?)?;
        for k in &prog.kernels {
            let clif = mixc::runtime::cpu::clif(k).map_err(|e| {
                mixc::Error::Usage(format!("mixer `{}`: the CPU backend cannot compile it: {e}", g.name))
            })?;
            out.push_str(&format!("; mixer {} kernel {}\n", g.name, k.name));
            out.push_str(&clif);
            if !out.ends_with('\n') {
                out.push('\n');
            }
            out.push('\n');
        }
    }
    Ok(out)
}

/// Each mixer's graph text after a `# mixer NAME (kind)` line, separated by
/// blank lines. Graph text (`.mix`) comes back as printed, without a header.
fn emit_graphs(graphs: &[mixc::NamedGraph]) -> String {
    let mut out = String::new();
    for (i, g) in graphs.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        if let Some(kind) = g.kind {
            out.push_str(&format!("# mixer {} ({})\n", g.name, kind.name()));
        }
        out.push_str(&mixc::ir::text::print(&g.graph));
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}
