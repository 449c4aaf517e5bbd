//! Dense f64 tensors for the reference interpreter.

use crate::dims::DimId;

/// A dense row-major f64 tensor: what the interpreter takes and returns.
/// Its axes follow the declared shape of the input or output it stands for.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f64>) -> Option<Tensor> {
        (shape.iter().product::<usize>() == data.len()).then_some(Tensor { shape, data })
    }

    pub fn zeros(shape: &[usize]) -> Tensor {
        Tensor { shape: shape.to_vec(), data: vec![0.0; shape.iter().product()] }
    }

    pub fn scalar(x: f64) -> Tensor {
        Tensor { shape: vec![], data: vec![x] }
    }

    /// Fills a tensor from a function of the flat index.
    pub fn from_fn(shape: &[usize], f: impl FnMut(usize) -> f64) -> Tensor {
        let n = shape.iter().product();
        Tensor { shape: shape.to_vec(), data: (0..n).map(f).collect() }
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn offset(&self, idx: &[usize]) -> usize {
        idx.iter().zip(&self.shape).fold(0, |acc, (i, n)| acc * n + i)
    }

    pub fn at(&self, idx: &[usize]) -> f64 {
        self.data[self.offset(idx)]
    }
}

/// A tensor whose axes are named by dims, as values are inside the interpreter.
#[derive(Clone, Debug)]
pub(crate) struct Dense {
    pub dims: Vec<DimId>,
    pub sizes: Vec<usize>,
    pub data: Vec<f64>,
}

/// Row-major strides of a shape.
pub(crate) fn strides(sizes: &[usize]) -> Vec<usize> {
    let mut s = vec![1; sizes.len()];
    for i in (0..sizes.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * sizes[i + 1];
    }
    s
}

/// Visits every multi-index of `sizes` in row-major order.
pub(crate) fn for_each_index(sizes: &[usize], mut f: impl FnMut(&[usize])) {
    if sizes.contains(&0) {
        return;
    }
    let mut idx = vec![0usize; sizes.len()];
    loop {
        f(&idx);
        let mut ax = sizes.len();
        loop {
            if ax == 0 {
                return;
            }
            ax -= 1;
            idx[ax] += 1;
            if idx[ax] < sizes[ax] {
                break;
            }
            idx[ax] = 0;
        }
    }
}

impl Dense {
    pub fn size_of(&self, d: DimId) -> Option<usize> {
        self.dims.iter().position(|x| *x == d).map(|i| self.sizes[i])
    }

    pub fn axis(&self, d: DimId) -> Option<usize> {
        self.dims.iter().position(|x| *x == d)
    }

    /// Strides of this tensor laid along `out` dims (0 where a dim is absent).
    pub fn strides_along(&self, out: &[DimId]) -> Vec<usize> {
        let own = strides(&self.sizes);
        out.iter().map(|d| self.axis(*d).map(|a| own[a]).unwrap_or(0)).collect()
    }

    /// This tensor broadcast (and permuted) to `out` dims of `out_sizes`.
    pub fn expand(&self, out: &[DimId], out_sizes: &[usize]) -> Vec<f64> {
        let st = self.strides_along(out);
        let mut v = Vec::with_capacity(out_sizes.iter().product());
        for_each_index(out_sizes, |idx| {
            let off: usize = idx.iter().zip(&st).map(|(i, s)| i * s).sum();
            v.push(self.data[off]);
        });
        v
    }
}
