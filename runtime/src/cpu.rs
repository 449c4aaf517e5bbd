//! Running tile programs natively on this CPU: every kernel JIT-compiled by the
//! Cranelift backend (once per distinct kernel, cached in memory), every
//! launch's programs spread over the cores with rayon.
//!
//! Buffers are 32-bit words (f32 bits for float dtypes, i32 for the rest), the
//! CPU backend's memory layout. Programs of one launch write disjoint elements
//! (the lowering guarantees it), so they run in parallel without locks.

use crate::tensor::{Data, HostTensor};
use mixc_backend_cpu::CpuKernel;
use mixc_ir::interp::Tensor;
use mixc_ir::tile::{Arg, BufferRole, Kernel, Program, TileError};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

/// Compiled kernels by their printed text (identical kernels compile once).
fn cache() -> &'static Mutex<HashMap<String, Arc<CpuKernel>>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<CpuKernel>>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

fn compiled(k: &Kernel) -> Result<Arc<CpuKernel>, TileError> {
    let key = mixc_ir::tile::text::print_kernel(k);
    if let Ok(map) = cache().lock() {
        if let Some(c) = map.get(&key) {
            return Ok(c.clone());
        }
    }
    let c = Arc::new(CpuKernel::compile(k).map_err(|e| TileError::Program(e.to_string()))?);
    if let Ok(mut map) = cache().lock() {
        map.insert(key, c.clone());
    }
    Ok(c)
}

/// Compiles every kernel of a program ahead of its first run.
pub fn prepare(prog: &Program) -> Result<(), TileError> {
    for k in &prog.kernels {
        compiled(k)?;
    }
    Ok(())
}

/// Runs every launch of `prog` on `inputs`.
pub fn run(prog: &Program, inputs: &BTreeMap<String, HostTensor>) -> Result<BTreeMap<String, HostTensor>, TileError> {
    let shapes: BTreeMap<String, Tensor> =
        inputs.iter().map(|(n, t)| (n.clone(), Tensor { shape: t.shape.clone(), data: vec![] })).collect();
    let sizes = prog.bind(&shapes)?;
    let mut bufs: Vec<Vec<u32>> = prog
        .buffers
        .iter()
        .map(|b| {
            let n: usize = b.shape.iter().map(|c| c.eval(&sizes) as usize).product();
            match &b.role {
                BufferRole::Input { name, .. } => match inputs.get(name) {
                    Some(t) => {
                        let mut w = t.words();
                        w.resize(n, 0);
                        w
                    }
                    None => vec![0; n],
                },
                // Poisoned: a kernel that forgets a store shows up as NaN.
                _ => vec![0x7fc0_0000; n],
            }
        })
        .collect();
    for l in &prog.launches {
        let k = prog.kernels.get(l.kernel).ok_or_else(|| TileError::Program("launch of a missing kernel".into()))?;
        let ck = compiled(k)?;
        let grid = [0, 1, 2].map(|i| l.grid[i].eval(&sizes) as usize);
        if grid.contains(&0) {
            continue;
        }
        let mut args: Vec<u64> = Vec::with_capacity(l.args.len());
        for a in &l.args {
            args.push(match a {
                Arg::Buffer(i) => {
                    let b = bufs.get_mut(*i).ok_or_else(|| TileError::Program(format!("buffer {i} does not exist")))?;
                    // An empty buffer is never addressed (every access is masked or absent).
                    b.as_mut_ptr() as u64
                }
                Arg::Size(c) => (c.eval(&sizes) as i32) as i64 as u64,
                Arg::Float(x) => (*x as f32).to_bits() as u64,
            });
        }
        let total = grid[0] * grid[1] * grid[2];
        (0..total).into_par_iter().for_each(|flat| {
            let pid =
                [(flat % grid[0]) as u32, ((flat / grid[0]) % grid[1]) as u32, (flat / (grid[0] * grid[1])) as u32];
            // Safety: every pointer is a live buffer sized from the same program
            // and sizes; programs of a launch write disjoint elements.
            unsafe { ck.run_program(&args, pid) };
        });
    }
    let mut out = BTreeMap::new();
    for (b, words) in prog.buffers.iter().zip(bufs) {
        if let BufferRole::Output(name) = &b.role {
            let shape = b.shape.iter().map(|c| c.eval(&sizes) as usize).collect();
            let data = if b.dtype.is_float() {
                Data::F32(words.into_iter().map(f32::from_bits).collect())
            } else {
                Data::I32(words.into_iter().map(|w| w as i32).collect())
            };
            out.insert(name.clone(), HostTensor { shape, data });
        }
    }
    Ok(out)
}
