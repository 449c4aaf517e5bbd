//! Reading and writing safetensors files of named tensors.

use crate::tensor::{Data, HostTensor};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum StError {
    #[error("cannot read `{path}`: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("`{path}` is not a safetensors file: {msg}")]
    Format { path: String, msg: String },
    #[error("`{path}`: tensor `{name}` has dtype {dtype:?}, which mixc cannot read (F64, F32, F16, BF16, I64, I32, I8, U8, BOOL)")]
    Dtype { path: String, name: String, dtype: Dtype },
    #[error("cannot write `{path}`: {msg}")]
    Write { path: String, msg: String },
}

/// Loads every tensor of a safetensors file (memory-mapped while converting).
pub fn load(path: &Path) -> Result<BTreeMap<String, HostTensor>, StError> {
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| StError::Io { path: shown.clone(), source })?;
    // Safety: the map is read-only and dropped before this function returns; a
    // file changed underneath would give wrong values, not undefined behaviour
    // in safe code that outlives it.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| StError::Io { path: shown.clone(), source })?;
    let st = SafeTensors::deserialize(&map).map_err(|e| StError::Format { path: shown.clone(), msg: e.to_string() })?;
    // Converted on all cores: a 1.3B-parameter checkpoint is gigabytes.
    use rayon::prelude::*;
    st.tensors()
        .into_par_iter()
        .map(|(name, view)| match convert(&view) {
            Some(t) => Ok((name, t)),
            None => Err(StError::Dtype { path: shown.clone(), name, dtype: view.dtype() }),
        })
        .collect()
}

fn convert(view: &TensorView) -> Option<HostTensor> {
    let b = view.data();
    let shape = view.shape().to_vec();
    let data = match view.dtype() {
        Dtype::F32 => Data::F32(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
        Dtype::F64 => Data::F32(
            b.chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
                .collect(),
        ),
        Dtype::F16 => Data::F32(b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()),
        Dtype::BF16 => Data::F32(b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect()),
        Dtype::I32 => Data::I32(b.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
        Dtype::I64 => Data::I32(
            b.chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as i32)
                .collect(),
        ),
        Dtype::I8 => Data::I32(b.iter().map(|x| *x as i8 as i32).collect()),
        Dtype::U8 | Dtype::BOOL => Data::I32(b.iter().map(|x| *x as i32).collect()),
        _ => return None,
    };
    Some(HostTensor { shape, data })
}

/// Writes tensors to a safetensors file (f32 as F32, i32 as I32).
pub fn save(path: &Path, tensors: &BTreeMap<String, HostTensor>) -> Result<(), StError> {
    save_as(path, tensors, false)
}

/// [`save`], with floats rounded to BF16 where `bf16` (half the bytes).
pub fn save_as(path: &Path, tensors: &BTreeMap<String, HostTensor>, bf16: bool) -> Result<(), StError> {
    use rayon::prelude::*;
    let shown = path.display().to_string();
    let bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .par_iter()
        .map(|(n, t)| {
            let (dtype, raw) = match &t.data {
                Data::F32(v) if bf16 => {
                    (Dtype::BF16, v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect())
                }
                Data::F32(v) => (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                Data::I32(v) => (Dtype::I32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            };
            (n.clone(), dtype, t.shape.clone(), raw)
        })
        .collect();
    let mut views = Vec::new();
    for (n, d, s, raw) in &bytes {
        let v = TensorView::new(*d, s.clone(), raw)
            .map_err(|e| StError::Write { path: shown.clone(), msg: format!("tensor `{n}`: {e}") })?;
        views.push((n.clone(), v));
    }
    safetensors::serialize_to_file(views, &None, path).map_err(|e| StError::Write { path: shown, msg: e.to_string() })
}
