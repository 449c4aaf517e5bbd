//! `mixc exec FILE --inputs IN.safetensors -o OUT.safetensors`.

use super::{ExecArgs, ExecTarget, Mode};
use mixc::jit::{jit_with, JitOptions, MixerSource, Target};
use mixc::runtime::st;
use std::fmt::Write;

pub fn run(args: &ExecArgs) -> Result<String, mixc::Error> {
    let source = MixerSource::File { path: args.file.clone(), mixer: args.mixer.clone(), layer: args.layer };
    let target = match args.target {
        ExecTarget::Cpu => Target::Cpu,
        ExecTarget::Reference => Target::Reference,
    };
    let mixer = jit_with(source, target, JitOptions { chunk: args.chunk, split: args.split })?;
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
    for (name, t) in &outputs {
        let _ = writeln!(out, "  {name} {:?}", t.shape);
    }
    Ok(out)
}
