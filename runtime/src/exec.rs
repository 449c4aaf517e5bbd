//! Running a lowered program on host tensors.

use crate::tensor::{Data, HostTensor};
use mixc_ir::interp::Tensor;
use mixc_ir::tile::interp::Precision;
use mixc_ir::tile::{BufferRole, Program, TileError};
use std::collections::BTreeMap;

/// What executes the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// The tile interpreter with f32 arithmetic: slow, and the yardstick for
    /// every code generator.
    Reference,
    /// Native code for this CPU (Cranelift), the programs of a launch across cores.
    Cpu,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Tile(#[from] TileError),
}

/// Runs every launch of `prog` on `inputs` and returns its outputs.
pub fn run_program(
    prog: &Program,
    inputs: &BTreeMap<String, HostTensor>,
    engine: Engine,
) -> Result<BTreeMap<String, HostTensor>, RunError> {
    match engine {
        Engine::Cpu => Ok(crate::cpu::run(prog, inputs)?),
        Engine::Reference => {
            let ins: BTreeMap<String, Tensor> = inputs.iter().map(|(k, v)| (k.clone(), v.to_f64())).collect();
            let (outs, _) = prog.run(&ins, Precision::F32)?;
            Ok(outs
                .into_iter()
                .map(|(name, t)| {
                    let int = prog
                        .buffers
                        .iter()
                        .find(|b| b.role == BufferRole::Output(name.clone()))
                        .is_some_and(|b| !b.dtype.is_float());
                    (name, HostTensor::from_f64(&t, int))
                })
                .collect())
        }
    }
}

/// [`run_program`] with inputs that may grow in place (see
/// [`crate::cpu::run_growing`]: natively, a KV cache grows in its own
/// storage, and its output is then not in the returned map); elsewhere they
/// are read as they are. `prepared`: the program's kernels compiled ahead
/// ([`crate::cpu::prepare`]).
pub fn run_program_growing(
    prog: &Program,
    inputs: &BTreeMap<String, HostTensor>,
    grow: &mut BTreeMap<String, &mut HostTensor>,
    engine: Engine,
    prepared: Option<&crate::cpu::Prepared>,
) -> Result<BTreeMap<String, HostTensor>, RunError> {
    match engine {
        Engine::Cpu => Ok(crate::cpu::run_growing(prog, prepared, inputs, grow)?),
        Engine::Reference => {
            let mut all = inputs.clone();
            all.extend(grow.iter().map(|(n, t)| (n.clone(), (**t).clone())));
            run_program(prog, &all, engine)
        }
    }
}

/// Whether a tensor holds only finite values.
pub fn all_finite(t: &HostTensor) -> bool {
    match &t.data {
        Data::F32(v) => v.iter().all(|x| x.is_finite()),
        Data::I32(_) => true,
    }
}
