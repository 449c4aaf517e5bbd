//! Host tensors: f32 for every floating dtype (bf16/f16/f64 files are converted
//! on load), i32 for integer and boolean ones.

use mixc_ir::interp::Tensor;
use mixc_ir::DType;

#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    I32(Vec<i32>),
}

/// A dense row-major tensor in host memory.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Data,
}

impl HostTensor {
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> HostTensor {
        HostTensor { shape, data: Data::F32(data) }
    }

    pub fn numel(&self) -> usize {
        match &self.data {
            Data::F32(v) => v.len(),
            Data::I32(v) => v.len(),
        }
    }

    /// The values as f64 (for the reference interpreters and comparisons).
    pub fn to_f64(&self) -> Tensor {
        let data = match &self.data {
            Data::F32(v) => v.iter().map(|x| *x as f64).collect(),
            Data::I32(v) => v.iter().map(|x| *x as f64).collect(),
        };
        Tensor { shape: self.shape.clone(), data }
    }

    /// From f64 values, stored as f32 or as i32 when `int`.
    pub fn from_f64(t: &Tensor, int: bool) -> HostTensor {
        let data = if int {
            Data::I32(t.data.iter().map(|x| *x as i32).collect())
        } else {
            Data::F32(t.data.iter().map(|x| *x as f32).collect())
        };
        HostTensor { shape: t.shape.clone(), data }
    }

    /// The values a device buffer of `dtype` holds of this tensor: f32 data
    /// rounded (to nearest even) to f16 or bf16 for those dtypes (see
    /// [`crate::layout`]); otherwise unchanged.
    pub fn stored_as(&self, dtype: DType) -> HostTensor {
        match &self.data {
            Data::F32(v) if crate::layout::is_half(dtype) => {
                HostTensor::f32(self.shape.clone(), v.iter().map(|x| crate::layout::stored_value(dtype, *x)).collect())
            }
            _ => self.clone(),
        }
    }

    /// The raw 32-bit words (f32 or i32 bits), as kernels see them in memory.
    pub fn words(&self) -> Vec<u32> {
        match &self.data {
            Data::F32(v) => v.iter().map(|x| x.to_bits()).collect(),
            Data::I32(v) => v.iter().map(|x| *x as u32).collect(),
        }
    }
}
