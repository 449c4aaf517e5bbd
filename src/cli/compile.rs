//! `mixc compile FILE --emit STAGE`.

use super::{CompileArgs, Emit};

pub fn run(args: &CompileArgs) -> Result<String, mixc::Error> {
    let graphs = mixc::graphs_of_file(&args.file)?;
    match args.emit {
        Emit::Graph => Ok(emit_graphs(&graphs)),
        Emit::Tile => emit_tiles(&graphs, args),
    }
}

/// Each mixer's tile program under the schedule the flags and the table give.
fn emit_tiles(graphs: &[mixc::NamedGraph], args: &CompileArgs) -> Result<String, mixc::Error> {
    let mut out = String::new();
    for (i, g) in graphs.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let chunk = args.chunk.or(g.chunk).unwrap_or(64);
        let sched = mixc_passes::Schedule { split: args.split, ..mixc_passes::Schedule::with_chunk(chunk) };
        let prog = mixc::lower_graph(&g.name, &g.graph, &sched)?;
        out.push_str(&format!("# mixer {} (chunk {chunk}{})\n", g.name, if args.split { ", split" } else { "" }));
        out.push_str(&mixc::ir::tile::text::print_program(&prog));
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
