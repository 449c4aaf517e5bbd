//! Command-line arguments (clap derive) and their dispatch.

mod bench;
mod calibrate;
mod compile;
mod exec;
mod explain;
#[cfg(feature = "cuda")]
mod gpu;
#[cfg(feature = "cuda")]
mod gpu_model;
mod run;

pub use run::RunArgs;

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

const ABOUT: &str = "mixc — a compiler for sequence-mixer kernels";

const LONG_ABOUT: &str = "\
mixc — a compiler for sequence-mixer kernels.

mixc reads a model file (TOML: a [model] with its layer pattern, [mixer.NAME] \
tables, a [runtime]) describing softmax attention, sliding-window attention, \
linear attention, gated linear recurrences (GLA, RetNet, Mamba2, mLSTM), \
delta-rule recurrences (DeltaNet, Gated DeltaNet) and their hybrids, builds \
the mixer graph of each mixer, verifies it, and compiles it to kernels. Every \
stage can be printed; the model zoo is in models/.";

const AFTER_HELP: &str = "\
Commands and their options:
  mixc compile FILE [--emit STAGE]
      FILE          a model file (.toml) or a mixer graph in text form (.mix)
      --emit STAGE  what to print (default: graph)
                      graph  the verified mixer graph of every distinct mixer,
                             each after a line `# mixer NAME (kind)`
                      tile   the tile program (buffers, kernels, launches) of each
                             mixer; --chunk N and --split choose the schedule,
                             --storage bf16|f16 the dtype of activation buffers
                      clif   the Cranelift IR of every kernel (--target cpu)
                      llvm, ptx  the LLVM IR or PTX of every kernel (GPU targets)

Errors are printed on stderr as one paragraph `error: ...` naming the file, \
line:column and key; the exit code is 1 (2 for command-line usage errors).

Examples:
  mixc compile models/gla.toml --emit graph
  mixc compile my-mixer.mix";

#[derive(Debug, Parser)]
#[command(
    name = "mixc",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP,
    arg_required_else_help = true,
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load a model file or graph text and print a stage of its compilation.
    #[command(
        long_about = "Load a model file (.toml) or a mixer graph in text form (.mix), \
                      validate it, build and verify the graph of every distinct mixer, and \
                      print the stage chosen by --emit. For a model file, the distinct mixers \
                      are those its layers use, in order of first use; for a file with only \
                      [mixer.NAME] tables, all of them in name order.",
        after_help = "Examples:\n  mixc compile models/hybrid.toml --emit graph\n  mixc \
                      compile my-mixer.mix"
    )]
    Compile(CompileArgs),
    /// Price every candidate schedule of each mixer with the roofline cost model
    /// and say which one the compiler picks, and why.
    #[command(
        after_help = "Examples:\n  mixc explain models/gla.toml --target sm_90 --sizes B=8,T=8192\n  mixc explain \
                      models/mamba2.toml --target cpu --sizes B=1,T=2048"
    )]
    Explain(ExplainArgs),
    /// Run one mixer on tensors from a safetensors file and write its outputs.
    #[command(after_help = EXEC_HELP)]
    Exec(ExecArgs),
    /// Check a kernel bundle on the GPU against the f64 reference (random ragged
    /// shapes, every program of the bundle) and time it, or (`--model`) whole
    /// models on the GPU against the CPU; exits non-zero on any failure. Needs a
    /// build with `--features cuda`.
    GpuCheck(GpuCheckArgs),
    /// List the built-in device profiles the cost model prices against.
    Devices,
    /// Write random, well-scaled weights for a model file (demos and tests).
    InitWeights(InitWeightsArgs),
    /// Run a whole model: prefill a prompt, then generate token by token.
    Run(RunArgs),
    /// Measure this CPU's f32 FMA peaks and memory bandwidth and store them as
    /// its device profile.
    #[command(after_help = calibrate::HELP)]
    Calibrate(calibrate::CalibrateArgs),
    /// Time each mixer of a file on this CPU: prefill and decode steps, or
    /// every schedule candidate against its predicted time (`--sweep`).
    #[command(after_help = bench::HELP)]
    Bench(bench::BenchArgs),
}

#[derive(Debug, Args)]
pub struct InitWeightsArgs {
    /// A model file with a [model] section.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Where to write the weights.
    #[arg(short = 'o', long = "output", value_name = "W.safetensors")]
    pub output: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Store the weights as bf16 (half the bytes to write and read; what a
    /// GPU run keeps of them anyway) instead of f32.
    #[arg(long)]
    pub bf16: bool,
}

#[derive(Debug, Args)]
pub struct GpuCheckArgs {
    /// A kernel bundle written by `mixc compile FILE --target sm_90 -o DIR`.
    #[arg(long, value_name = "DIR", required_unless_present = "model")]
    pub kernels: Option<PathBuf>,
    /// Instead of a bundle: a model file, run whole on the GPU (random
    /// weights; projections in f32 and in bf16) against the same model on
    /// the CPU, prefill then decode steps, row by row of the logits.
    #[arg(long, value_name = "FILE", num_args = 1.., conflicts_with = "kernels")]
    pub model: Vec<PathBuf>,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Largest sequence length to check against the full f64 reference.
    #[arg(long, default_value_t = 600)]
    pub max_t: usize,
    /// Time the prefill programs at these sizes instead of checking (e.g. `B=8,T=8192`);
    /// prints ms per call (median of 5 after a warm-up).
    #[arg(long, value_name = "DIM=N,...")]
    pub bench: Option<String>,
}

const EXEC_HELP: &str = "\
Tensor names and layouts follow flash-linear-attention: q, k, v as [B, T, H, D]; g as
[B, T, H, Dk] (gla) or [B, T, H] (scalar gates, log space); beta [B, T, H]; mLSTM i, f
[B, T, H] pre-activations; initial_state [B, H, Dk, Dv] (mLSTM adds initial_n [B, H, Dk],
initial_m [B, H]); KV caches k_cache, v_cache [B, S, Hkv, D]. Outputs: o, final_state
(mLSTM adds final_n, final_m; attention returns the updated caches). The README lists
every mixer kind's names; a missing, extra or misshapen tensor is an error naming it.

--target cuda runs the mixer on the GPU (a build with `--features cuda`): its kernels
compiled here through LLVM for the card, or taken from a kernel bundle with --kernels DIR
(`mixc compile FILE --target sm_90 -o DIR`, the bundle's schedules; the only way without
LLVM). Same tensors in and out as on the CPU.

Examples:
  mixc exec models/gla.toml --inputs in.safetensors -o out.safetensors
  mixc exec models/hybrid.toml --layer 3 --inputs in.safetensors -o out.safetensors --mode decode
  mixc exec models/gla.toml --inputs in.safetensors -o out.safetensors --target cuda --kernels bundle/";

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// A mixer table or model file (.toml) or a mixer graph (.mix).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The input tensors.
    #[arg(long, value_name = "IN.safetensors")]
    pub inputs: PathBuf,
    /// Where to write the outputs.
    #[arg(short = 'o', long = "output", value_name = "OUT.safetensors")]
    pub output: PathBuf,
    /// Where kernels run: cpu (native code), reference (the tile interpreter) or cuda
    /// (the GPU; a build with `--features cuda`).
    #[arg(long, value_enum, default_value_t = ExecTarget::Cpu)]
    pub target: ExecTarget,
    /// With --target cuda: take the kernels from this bundle (`mixc compile FILE
    /// --target sm_90 -o DIR`) instead of compiling them (needed without LLVM).
    #[arg(long, value_name = "DIR")]
    pub kernels: Option<PathBuf>,
    /// prefill (chunked, any number of tokens) or decode (token by token).
    #[arg(long, value_enum, default_value_t = Mode::Prefill)]
    pub mode: Mode,
    /// Which mixer of a file with several.
    #[arg(long, value_name = "NAME", conflicts_with = "layer")]
    pub mixer: Option<String>,
    /// The mixer of layer I of a model file.
    #[arg(long, value_name = "I")]
    pub layer: Option<usize>,
    /// Chunk size of chunked recurrences (default: the table's, or 64).
    #[arg(long, value_name = "N")]
    pub chunk: Option<u32>,
    /// Split state passing instead of one fused kernel per head.
    #[arg(long)]
    pub split: bool,
    /// The dtype kernels store activations in: f32 (default), bf16 or f16 (KV
    /// caches too; states stay f32; arithmetic is f32). Inputs are rounded to it, outputs
    /// hold its values (written as f32). A bundle's (--kernels) is fixed.
    #[arg(long, value_name = "DTYPE")]
    pub storage: Option<mixc_passes::Storage>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExecTarget {
    /// Native code for this CPU (Cranelift).
    Cpu,
    /// The tile interpreter with f32 arithmetic.
    Reference,
    /// The CUDA GPU of this machine (a build with `--features cuda`).
    Cuda,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Prefill,
    Decode,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// A model file (.toml) or a mixer graph in text form (.mix).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The device to price for: cpu, sm_80, sm_90, sm_90a, cuda (an H100 profile),
    /// h100 or h200.
    #[arg(long, value_name = "TARGET", default_value = "sm_90")]
    pub target: String,
    /// A device profile in TOML (every field of the built-in ones), or `builtin` for the
    /// built-in profile even where `mixc calibrate` stored one (default for cpu: the
    /// calibrated profile if present).
    #[arg(long, value_name = "PROFILE")]
    pub profile: Option<PathBuf>,
    /// Sizes of the free dims, e.g. `B=8,T=8192` (default: B=8, T=8192 on a GPU,
    /// B=1, T=2048 on the CPU; a KV cache length S defaults to 0).
    #[arg(long, value_name = "DIM=N,...")]
    pub sizes: Option<String>,
    /// How many candidates to list per mixer (the rest are summarized).
    #[arg(long, value_name = "N", default_value_t = 12)]
    pub top: usize,
    /// How GPU kernels compute `dot` (their registers and tier depend on it):
    /// tf32x3 (the default), bf16 or simt, as `mixc compile --matmul`.
    #[arg(long, value_name = "MODE", default_value = "tf32x3")]
    pub matmul: String,
    /// The dtype activations are stored in (f32, bf16, f16), as `mixc compile
    /// --storage`: what the kernels read and write, and so their price.
    #[arg(long, value_name = "DTYPE", default_value = "f32")]
    pub storage: mixc_passes::Storage,
    /// Draw the device's roofline with each kernel of each mixer's pick as a point (SVG).
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CompileArgs {
    /// A model file (.toml) or a mixer graph in text form (.mix).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The stage to print.
    #[arg(long, value_enum, value_name = "STAGE", default_value_t = Emit::Graph)]
    pub emit: Emit,
    /// Chunk size of chunked recurrences (16…256, a power of two); default: the
    /// mixer table's `chunk`, or for `auto` the cost model's pick (the
    /// schedule `mixc explain` shows first) for the target at --sizes.
    #[arg(long, value_name = "N")]
    pub chunk: Option<u32>,
    /// The sizes the cost model picks `chunk = "auto"` schedules for (DIM=N,...;
    /// default B=8,T=8192 for GPU targets, B=1,T=2048 for the CPU).
    #[arg(long, value_name = "DIM=N,...")]
    pub sizes: Option<String>,
    /// Split state passing (chunk-start states written out, outputs computed in
    /// parallel over chunks) instead of one fused kernel per head.
    #[arg(long)]
    pub split: bool,
    /// Split state passing with the chunk-start states from a parallel pass
    /// (each chunk's own contribution) and an elementwise scan over chunks,
    /// instead of one program per head walking the chunks (implies --split;
    /// mLSTM and the delta rules keep the walk).
    #[arg(long, conflicts_with = "step_tokens")]
    pub scan: bool,
    /// Value columns per recurrence program (a power of two ≥ 16): one program
    /// per (batch, head, block of N value columns), in the prefill and the
    /// decode-step programs; default 0: the schedule's for the prefill (the
    /// cost model's pick, which on a GPU tries blocks of 32 and 64 where the
    /// register tier takes every kernel; the whole head for `--chunk N`),
    /// blocks of 64 for GPU decode steps (measured faster).
    #[arg(long = "block-v", value_name = "N", default_value_t = 0)]
    pub block_v: u32,
    /// Attention's query and key blocks (`QxK`, powers of two, e.g. `128x64`):
    /// one program per block of Q queries, walking blocks of K keys;
    /// default: the schedule's (the cost model's pick, or 64x64).
    #[arg(long = "attention-blocks", value_name = "QxK", value_parser = parse_blocks)]
    pub attention_blocks: Option<(u32, u32)>,
    /// Compile the prefill of diagonal recurrences in the token-by-token form,
    /// N tokens (1…16) per pass over the state (the state read and written
    /// once per N tokens), instead of chunks.
    #[arg(long = "step-tokens", value_name = "N", conflicts_with_all = ["chunk", "split"])]
    pub step_tokens: Option<u32>,
    /// Keys per attention program (a multiple of the schedule's key block): one
    /// program per (query block, batch × head, run of N keys) writes partial
    /// results and a second kernel combines them (FlashDecoding), in the
    /// prefill and the decode-step programs; 0: one kernel walking all keys.
    /// Default: off for the prefill, runs of 512 keys for GPU decode steps.
    #[arg(long = "kv-split", value_name = "N")]
    pub kv_split: Option<u32>,
    /// The target: cpu, sm_80, sm_90, sm_90a, or cuda (the GPU of the lent machine, sm_90).
    #[arg(long, value_name = "TARGET", default_value = "cpu")]
    pub target: String,
    /// Write a kernel bundle (PTX and a manifest) to this folder, for `--kernels DIR`
    /// on a machine without LLVM (GPU targets).
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// How GPU kernels compute `dot`: tf32x3 (tensor cores, f32 accuracy; the
    /// default), bf16 (tensor cores, bf16 operands: bf16 models' accuracy and
    /// speed), simt (plain f32 FMAs).
    #[arg(long, value_name = "MODE", default_value = "tf32x3")]
    pub matmul: String,
    /// GPU kernels compute `exp` with mixc's polynomial (~1 ulp) instead of
    /// the hardware's `ex2.approx` (a few ulp; faster).
    #[arg(long)]
    pub precise_exp: bool,
    /// GPU kernels keep their tiles in shared memory (the first tier) even
    /// where the register tier takes them (attention-like kernels with bf16
    /// `dot`s: tiles in registers in the tensor-core fragment layout).
    #[arg(long)]
    pub shared_tiles: bool,
    /// CTAs per SM each GPU kernel asks ptxas to leave room for
    /// (`.minnctapersm`): registers per thread are then capped at 65536 /
    /// (threads · N), spilling past that. 1 lets a kernel use up to 255.
    #[arg(long = "ctas-per-sm", value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=32))]
    pub ctas_per_sm: u32,
    /// Rows each warp of a register-tier GPU kernel owns: 16, or 32 (two
    /// tensor-core row tiles sharing each operand fragment read from shared
    /// memory: half the shared-memory reads, half the warps; the kernel's
    /// query-like operands are then staged in shared memory), or auto (the
    /// default): 32 where the backend estimates two tiles fit the registers.
    #[arg(long = "warp-rows", value_name = "N", default_value = "auto",
          value_parser = warp_rows)]
    pub warp_rows: u32,
    /// The dtype the kernels read and write activations in: f32 (the default),
    /// bf16 or f16 (q, k, v, gates, beta, o, ...: the tensors flash-linear-attention
    /// and cuDNN take in bf16, and KV caches, copies of k and v), computing in f32;
    /// recurrent states, normalizers and tails stay f32. Recorded in bundles (-o DIR).
    #[arg(long, value_name = "DTYPE", default_value = "f32")]
    pub storage: mixc_passes::Storage,
}

/// `--warp-rows`: 16, 32 or auto (0).
fn warp_rows(s: &str) -> Result<u32, String> {
    match s.trim() {
        "16" => Ok(16),
        "32" => Ok(32),
        "auto" => Ok(0),
        other => Err(format!("`{other}`: a warp owns 16 or 32 rows (or auto)")),
    }
}

/// The stages `--emit` can print.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Emit {
    /// The verified mixer graph of every distinct mixer, in the canonical text form.
    Graph,
    /// The tile program (buffers, kernels, launches) each mixer lowers to.
    Tile,
    /// The Cranelift IR of each kernel (the CPU target).
    Clif,
    /// The LLVM IR of each kernel (GPU targets), headed like `ptx`.
    Llvm,
    /// The PTX of each kernel (GPU targets), each headed by a comment with its
    /// tier (register or shared-memory, and why not the register tier), threads
    /// and shared memory.
    Ptx,
}

/// Runs a command; returns what it prints on stdout.
pub fn run(cli: &Cli) -> Result<String, mixc::Error> {
    match &cli.command {
        Command::Compile(args) => compile::run(args),
        Command::Explain(args) => explain::run(args),
        Command::Exec(args) => exec::run(args),
        Command::InitWeights(args) => run::init_weights(args),
        Command::Devices => Ok(explain::devices()),
        Command::Run(args) => run::run(args),
        Command::Calibrate(args) => calibrate::run(args),
        Command::Bench(args) => bench::run(args),
        #[cfg(feature = "cuda")]
        Command::GpuCheck(args) => gpu::check(args),
        #[cfg(not(feature = "cuda"))]
        Command::GpuCheck(_) => Err(mixc::Error::Usage(mixc::NO_CUDA.into())),
    }
}

/// `QxK` of `--attention-blocks`: two powers of two from 16 to 256.
fn parse_blocks(s: &str) -> Result<(u32, u32), String> {
    let (q, k) = s.split_once(['x', 'X']).ok_or_else(|| format!("`{s}`: expected QxK, e.g. 128x64"))?;
    let num = |x: &str| -> Result<u32, String> {
        let n: u32 = x.trim().parse().map_err(|_| format!("`{x}` is not a number"))?;
        if !(16..=256).contains(&n) || !n.is_power_of_two() {
            return Err(format!("{n}: blocks are powers of two from 16 to 256"));
        }
        Ok(n)
    };
    Ok((num(q)?, num(k)?))
}
