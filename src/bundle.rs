//! Kernel bundles: compiled kernels written ahead of time, so that a GPU
//! machine without LLVM can run them (`mixc compile FILE --target sm_90 -o DIR`,
//! then `--kernels DIR`).
//!
//! A bundle is a folder: `manifest.toml` (mixc version, target, and per
//! program the mixer, mode, schedule and kernels with their launch
//! configuration), the graph text of each mixer (`NAME.mix`), and one PTX file
//! per kernel. Loading re-lowers each graph under its recorded schedule — the
//! lowering is deterministic and needs no LLVM — and checks that the kernel
//! names match, so a bundle from another mixc version is refused, not trusted.

use crate::Error;
use mixc_ir::graph::Graph;
use mixc_ir::tile::Program;
use mixc_passes::Schedule;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A compiled kernel: its code and launch configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelImage {
    pub name: String,
    pub code: String,
    pub threads: u32,
    pub shared_bytes: u32,
    /// Global scratch bytes per CTA (an extra last kernel argument when > 0).
    pub scratch_bytes: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    mixc_version: String,
    target: String,
    /// How `dot` was compiled (`simt`, `tf32x3`, `bf16`): decides the accuracy
    /// a check may expect.
    #[serde(default = "default_matmul")]
    matmul: String,
    program: Vec<ProgramEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProgramEntry {
    mixer: String,
    mode: String,
    graph: String,
    schedule: Schedule,
    kernel: Vec<KernelEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KernelEntry {
    name: String,
    file: String,
    threads: u32,
    shared_bytes: u32,
    #[serde(default)]
    scratch_bytes: u32,
}

/// One program of a bundle.
pub struct BundledProgram {
    pub mixer: String,
    /// `prefill` or `decode`.
    pub mode: String,
    pub graph: Graph,
    pub schedule: Schedule,
    pub program: Program,
    pub kernels: Vec<KernelImage>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.display().to_string(), source }
}

fn default_matmul() -> String {
    "tf32x3".into()
}

/// A bundle as read back.
pub struct Bundle {
    pub target: String,
    /// How `dot` was compiled: `simt`, `tf32x3` (both f32-accurate) or `bf16`.
    pub matmul: String,
    pub programs: Vec<BundledProgram>,
}

impl Bundle {
    /// The program of `mixer` in `mode` (`prefill` or `decode`), checked to be
    /// compiled from `graph`; the error says what is missing or different and
    /// what the bundle has.
    pub fn program_for(&self, mixer: &str, graph: &Graph, mode: &str) -> Result<&BundledProgram, String> {
        let Some(p) = self.programs.iter().find(|p| p.mixer == mixer && p.mode == mode) else {
            let has: Vec<String> = self.programs.iter().map(|p| format!("{} {}", p.mixer, p.mode)).collect();
            return Err(format!(
                "no {mode} program for mixer `{mixer}` (it has: {})",
                if has.is_empty() { "nothing".to_string() } else { has.join(", ") }
            ));
        };
        if mixc_ir::text::print(&p.graph) != mixc_ir::text::print(graph) {
            return Err(format!(
                "its mixer `{mixer}` was compiled from another graph (other sizes or options than this file's): \
                 rebuild the bundle from this file"
            ));
        }
        Ok(p)
    }
}

/// Writes a bundle of programs compiled for `target` with the default `dot` (tf32x3).
pub fn write(dir: &Path, target: &str, programs: &[BundledProgram]) -> Result<(), Error> {
    write_with(dir, target, &default_matmul(), programs)
}

/// Writes a bundle of programs compiled for `target`, `dot` compiled as `matmul`.
pub fn write_with(dir: &Path, target: &str, matmul: &str, programs: &[BundledProgram]) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut manifest = Manifest {
        mixc_version: env!("CARGO_PKG_VERSION").into(),
        target: target.into(),
        matmul: matmul.into(),
        program: vec![],
    };
    for p in programs {
        let graph_file = format!("{}.mix", p.mixer);
        let path = dir.join(&graph_file);
        std::fs::write(&path, mixc_ir::text::print(&p.graph)).map_err(io(&path))?;
        let mut kernels = Vec::new();
        for (i, k) in p.kernels.iter().enumerate() {
            let file = format!("{}.{}.{i}.ptx", p.mixer, p.mode);
            let path = dir.join(&file);
            std::fs::write(&path, &k.code).map_err(io(&path))?;
            kernels.push(KernelEntry {
                name: k.name.clone(),
                file,
                threads: k.threads,
                shared_bytes: k.shared_bytes,
                scratch_bytes: k.scratch_bytes,
            });
        }
        manifest.program.push(ProgramEntry {
            mixer: p.mixer.clone(),
            mode: p.mode.clone(),
            graph: graph_file,
            schedule: p.schedule,
            kernel: kernels,
        });
    }
    let text = toml::to_string(&manifest).map_err(|e| Error::Usage(format!("cannot write the manifest: {e}")))?;
    let path = dir.join("manifest.toml");
    std::fs::write(&path, text).map_err(io(&path))
}

/// Reads a bundle, re-lowering every graph and checking it against the kernels;
/// returns its target and programs.
pub fn read(dir: &Path) -> Result<(String, Vec<BundledProgram>), Error> {
    let b = read_bundle(dir)?;
    Ok((b.target, b.programs))
}

/// Reads a bundle (see [`read`]) with everything its manifest records.
pub fn read_bundle(dir: &Path) -> Result<Bundle, Error> {
    let path = dir.join("manifest.toml");
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    let shown = path.display().to_string();
    let manifest: Manifest =
        toml::from_str(&text).map_err(|e| Error::Usage(format!("{shown}: not a kernel bundle manifest: {e}")))?;
    if manifest.mixc_version != env!("CARGO_PKG_VERSION") {
        return Err(Error::Usage(format!(
            "{shown}: built by mixc {}, this is {}: rebuild the bundle",
            manifest.mixc_version,
            env!("CARGO_PKG_VERSION")
        )));
    }
    let mut out = Vec::new();
    for p in manifest.program {
        let gpath = dir.join(&p.graph);
        let src = std::fs::read_to_string(&gpath).map_err(io(&gpath))?;
        let graph = crate::parse_graph_text(&src, &gpath.display().to_string())?;
        let program = crate::lower_graph(&p.mixer, &graph, &p.schedule)?;
        if program.kernels.len() != p.kernel.len()
            || program.kernels.iter().zip(&p.kernel).any(|(a, b)| a.name != b.name)
        {
            return Err(Error::Usage(format!(
                "{shown}: the kernels of `{}` ({}) do not match what this mixc lowers: rebuild the bundle",
                p.mixer, p.mode
            )));
        }
        let mut kernels = Vec::new();
        for k in p.kernel {
            let kpath = dir.join(&k.file);
            let code = std::fs::read_to_string(&kpath).map_err(io(&kpath))?;
            kernels.push(KernelImage {
                name: k.name,
                code,
                threads: k.threads,
                shared_bytes: k.shared_bytes,
                scratch_bytes: k.scratch_bytes,
            });
        }
        out.push(BundledProgram { mixer: p.mixer, mode: p.mode, graph, schedule: p.schedule, program, kernels });
    }
    Ok(Bundle { target: manifest.target, matmul: manifest.matmul, programs: out })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(graph: &Graph, mixer: &str, mode: &str) -> BundledProgram {
        let schedule = if mode == "decode" { Schedule::decode() } else { Schedule::with_chunk(32) };
        let program = crate::lower_graph(mixer, graph, &schedule).unwrap_or_else(|e| panic!("{e}"));
        BundledProgram {
            mixer: mixer.into(),
            mode: mode.into(),
            graph: graph.clone(),
            schedule,
            program,
            kernels: vec![],
        }
    }

    #[test]
    fn programs_are_found_by_mixer_mode_and_graph() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let gla = crate::graphs_of_file(&dir.join("gla.toml")).unwrap_or_else(|e| panic!("{e}")).remove(0);
        let other = crate::graphs_of_file(&dir.join("retnet.toml")).unwrap_or_else(|e| panic!("{e}")).remove(0);
        let bundle = Bundle {
            target: "sm_90".into(),
            matmul: "tf32x3".into(),
            programs: vec![program(&gla.graph, &gla.name, "prefill"), program(&gla.graph, &gla.name, "decode")],
        };
        let found = bundle.program_for(&gla.name, &gla.graph, "decode").map(|p| p.mode.clone());
        assert_eq!(found.as_deref(), Ok("decode"));
        let err = bundle.program_for("nope", &gla.graph, "prefill").err().unwrap_or_default();
        assert!(err.contains("no prefill program for mixer `nope`") && err.contains("gla decode"), "{err}");
        // Same name, another graph: refused.
        let err = bundle.program_for(&gla.name, &other.graph, "prefill").err().unwrap_or_default();
        assert!(err.contains("another graph"), "{err}");
        let empty = Bundle { target: "sm_90".into(), matmul: "tf32x3".into(), programs: vec![] };
        let err = empty.program_for("gla", &gla.graph, "prefill").err().unwrap_or_default();
        assert!(err.contains("it has: nothing"), "{err}");
    }
}
