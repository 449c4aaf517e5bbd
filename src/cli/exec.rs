//! `mixc exec FILE --inputs IN.safetensors -o OUT.safetensors`.

use super::{ExecArgs, ExecTarget, Mode};
use mixc::jit::{jit_with, CompiledMixer, JitOptions, MixerSource, Target};
use mixc::runtime::st;
use std::fmt::Write;

/// The JIT target of a `--target`; a build without CUDA says how to get one.
pub fn jit_target(target: ExecTarget) -> Result<Target, mixc::Error> {
    match target {
        ExecTarget::Cpu => Ok(Target::Cpu),
        ExecTarget::Reference => Ok(Target::Reference),
        #[cfg(feature = "cuda")]
        ExecTarget::Cuda => Ok(Target::Cuda),
        #[cfg(not(feature = "cuda"))]
        ExecTarget::Cuda => Err(mixc::Error::Usage(mixc::NO_CUDA.into())),
    }
}

pub fn run(args: &ExecArgs) -> Result<String, mixc::Error> {
    let source = MixerSource::File { path: args.file.clone(), mixer: args.mixer.clone(), layer: args.layer };
    let mixer = match &args.kernels {
        Some(dir) => from_bundle(args, source, dir)?,
        None => {
            let opts = JitOptions { chunk: args.chunk, split: args.split, storage: args.storage.unwrap_or_default() };
            jit_with(source, jit_target(args.target)?, opts)?
        }
    };
    let inputs = st::load(&args.inputs)?;
    let outputs = match args.mode {
        Mode::Prefill => mixer.run(&inputs)?,
        Mode::Decode => mixer.decode_step(&inputs)?,
    };
    st::save(&args.output, &outputs)?;
    let mut out = format!("mixer {}: wrote {} outputs to {}\n", mixer.name, outputs.len(), args.output.display());
    if let Some(why) = &mixer.fallback {
        let _ = writeln!(out, "note: {why}");
    }
    if let Some(card) = mixer.device() {
        let _ = writeln!(out, "ran on {card}");
    }
    for (name, t) in &outputs {
        let _ = writeln!(out, "  {name} {:?}", t.shape);
    }
    Ok(out)
}

/// `--kernels DIR`: the bundle's programs on the GPU.
fn from_bundle(args: &ExecArgs, source: MixerSource, dir: &std::path::Path) -> Result<CompiledMixer, mixc::Error> {
    if args.target != ExecTarget::Cuda {
        return Err(mixc::Error::Usage("--kernels DIR runs a kernel bundle on the GPU: add --target cuda".into()));
    }
    if args.chunk.is_some() || args.split || args.storage.is_some() {
        return Err(mixc::Error::Usage(
            "--chunk, --split and --storage choose a schedule, but a kernel bundle's schedules are fixed: rebuild \
             the bundle with them (`mixc compile FILE --target sm_90 --chunk N --storage bf16 -o DIR`)"
                .into(),
        ));
    }
    #[cfg(feature = "cuda")]
    {
        mixc::jit::jit_bundle(source, dir)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (source, dir);
        Err(mixc::Error::Usage(mixc::NO_CUDA.into()))
    }
}
