//! mixc: the facade API.
//!
//! For now: load a model file or a graph text file and get the verified
//! graph of every distinct mixer it describes ([`graphs_of_file`]). Later
//! stages (schedule, tile programs, backends) hang off these graphs.

pub mod bench;
pub mod bundle;
pub mod calibrate;
pub mod card;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "llvm")]
pub mod gpu;
pub mod jit;
pub mod pricing;
pub mod runner;
pub use runner::Model;

pub use mixc_ir as ir;
pub use mixc_passes as passes;
pub use mixc_runtime as runtime;

use mixc_ir::model::{self, MixerKind, ModelError, ModelFile};
use mixc_ir::{Graph, IrError};
use std::path::Path;

/// One graph of a file: a mixer of a model file, or the graph of a `.mix` file.
#[derive(Clone, Debug)]
pub struct NamedGraph {
    /// The mixer's name (`[mixer.NAME]`), or the graph's own name for `.mix`.
    pub name: String,
    /// The mixer's kind; `None` for graph text.
    pub kind: Option<MixerKind>,
    /// The table's fixed chunk size (`None` for `auto` or graph text).
    pub chunk: Option<u32>,
    pub graph: Graph,
}

/// Everything that can go wrong between a file and its graphs. Each renders
/// as one paragraph naming the file and the place in it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("cannot read `{path}`: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{col}: graph text does not parse: {msg}")]
    GraphText { path: String, line: usize, col: usize, msg: String },
    #[error("{path}: the graph does not verify: {source}")]
    GraphVerify {
        path: String,
        #[source]
        source: IrError,
    },
    /// The builder rejected a validated mixer table (its message names the mixer).
    #[error("{path}: {source}")]
    Build {
        path: String,
        #[source]
        source: IrError,
    },
    /// Inputs that do not fit the mixer (the message names the tensor and the expected shape).
    #[error("mixer `{mixer}`: {msg}")]
    Inputs { mixer: String, msg: String },
    #[error("mixer `{mixer}`: running the kernels failed: {msg}")]
    Run { mixer: String, msg: String },
    #[error(transparent)]
    Tensors(#[from] mixc_runtime::st::StError),
    /// No CUDA driver, no card, or the driver refused something.
    #[cfg(feature = "cuda")]
    #[error(transparent)]
    Cuda(#[from] mixc_runtime::cuda::CudaError),
    /// A command-line value that does not make sense (named in the message).
    #[error("{0}")]
    Usage(String),
    #[error("mixer `{mixer}`: {source}")]
    Lower {
        mixer: String,
        #[source]
        source: mixc_passes::LowerError,
    },
    #[error(
        "{path}: the graph built for mixer `{mixer}` does not verify (a bug in mixc's mixer \
         library, please report it): {source}"
    )]
    MixerVerify {
        path: String,
        mixer: String,
        #[source]
        source: IrError,
    },
}

/// What a build without the `cuda` feature says when asked to run on a GPU.
pub const NO_CUDA: &str =
    "this mixc was built without CUDA support: rebuild with `cargo build --release --features cuda`";

/// Whether a path names graph text (`.mix`) rather than a model file.
pub fn is_graph_text(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "mix")
}

/// Loads `path` — a model file (`.toml`) or graph text (`.mix`) — and
/// returns the verified graph of every distinct mixer it describes, in the
/// order of [`ModelFile::distinct_mixers`].
pub fn graphs_of_file(path: &Path) -> Result<Vec<NamedGraph>, Error> {
    let shown = path.display().to_string();
    if is_graph_text(path) {
        let src = std::fs::read_to_string(path).map_err(|source| Error::Io { path: shown.clone(), source })?;
        let graph = parse_graph_text(&src, &shown)?;
        return Ok(vec![NamedGraph { name: graph.name.clone(), kind: None, chunk: None, graph }]);
    }
    let file = model::load_model(path)?;
    mixer_graphs(&file, &shown)
}

/// Parses and verifies graph text; `path` names it in errors.
pub fn parse_graph_text(src: &str, path: &str) -> Result<Graph, Error> {
    let graph = mixc_ir::text::parse(src).map_err(|e| Error::GraphText {
        path: path.to_string(),
        line: e.line,
        col: e.col,
        msg: e.msg,
    })?;
    mixc_ir::verify::verify(&graph).map_err(|source| Error::GraphVerify { path: path.to_string(), source })?;
    Ok(graph)
}

/// Builds and verifies the graph of every distinct mixer of a validated
/// model file; `path` names the file in errors.
pub fn mixer_graphs(file: &ModelFile, path: &str) -> Result<Vec<NamedGraph>, Error> {
    let mut out = Vec::new();
    for name in file.distinct_mixers() {
        // Names come from the file's own tables, so the lookup cannot fail
        // for a validated file; skip rather than panic if it ever does.
        let Some(cfg) = file.mixer.get(&name) else {
            continue;
        };
        let graph =
            mixc_ir::mixers::build(&name, cfg).map_err(|source| Error::Build { path: path.to_string(), source })?;
        mixc_ir::verify::verify(&graph).map_err(|source| Error::MixerVerify {
            path: path.to_string(),
            mixer: name.clone(),
            source,
        })?;
        let chunk = match cfg.chunk {
            model::ChunkChoice::Fixed(c) => Some(c),
            model::ChunkChoice::Auto => None,
        };
        out.push(NamedGraph { name, kind: Some(cfg.kind), chunk, graph });
    }
    Ok(out)
}

/// Lowers one verified graph to a tile program under `sched`.
pub fn lower_graph(mixer: &str, graph: &Graph, sched: &mixc_passes::Schedule) -> Result<mixc_ir::tile::Program, Error> {
    mixc_passes::lower(graph, sched).map_err(|source| Error::Lower { mixer: mixer.to_string(), source })
}
