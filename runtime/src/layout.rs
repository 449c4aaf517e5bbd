//! How a buffer's elements sit in device memory, by the buffer's dtype:
//! 16-bit floats (`f16`, `bf16`: the storage of activations under a 16-bit
//! `Schedule::storage`) as 2-byte IEEE bit patterns, everything else as
//! 32-bit words (`f32` bits for floats, `i32` for integers and bools), as the
//! PTX backend addresses them. Host tensors stay f32 or i32: converting to and
//! from 16 bits happens here, rounding to nearest even.

use crate::tensor::{Data, HostTensor};
use mixc_ir::tile::{BufferRole, Program};
use mixc_ir::DType;
use std::collections::BTreeMap;

/// Whether a buffer of `d` holds 2-byte floats.
pub fn is_half(d: DType) -> bool {
    matches!(d, DType::F16 | DType::BF16)
}

/// Bytes of one element of a device buffer of `d`.
pub fn elem_bytes(d: DType) -> usize {
    if is_half(d) {
        2
    } else {
        4
    }
}

/// The 32-bit words a device buffer of `n` elements of `d` takes (at least
/// one: every buffer can be read at element 0, as masked loads do).
pub fn words_for(d: DType, n: usize) -> usize {
    n.saturating_mul(elem_bytes(d)).div_ceil(4).max(1)
}

/// The bits of `x` rounded (to nearest even) to the 16-bit float `d`
/// (`bf16` for anything but `f16`).
pub fn half_bits(d: DType, x: f32) -> u16 {
    match d {
        DType::F16 => half::f16::from_f32(x).to_bits(),
        _ => half::bf16::from_f32(x).to_bits(),
    }
}

/// The f32 value of 16-bit float bits of `d` (exact).
pub fn half_value(d: DType, bits: u16) -> f32 {
    match d {
        DType::F16 => half::f16::from_bits(bits).to_f32(),
        _ => half::bf16::from_bits(bits).to_f32(),
    }
}

/// `x` rounded to what a buffer of `d` holds (unchanged unless `d` is 16-bit).
pub fn stored_value(d: DType, x: f32) -> f32 {
    if is_half(d) {
        half_value(d, half_bits(d, x))
    } else {
        x
    }
}

/// The NaN outputs and scratch are filled with before a run, in the buffer's
/// own format: a missing store shows as NaN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Poison {
    /// 16-bit elements: `0x7fc0` (bf16 quiet NaN) or `0x7e00` (f16).
    Half(u16),
    /// 32-bit words: `0x7fc00000`, the f32 quiet NaN.
    Word(u32),
}

/// The poison of a buffer of `d`.
pub fn poison(d: DType) -> Poison {
    match d {
        DType::BF16 => Poison::Half(0x7fc0),
        DType::F16 => Poison::Half(0x7e00),
        _ => Poison::Word(0x7fc0_0000),
    }
}

/// A host tensor's elements as a buffer of `d` holds them when `d` is a
/// 16-bit float (integers through f32); `None` otherwise, where the tensor's
/// f32 or i32 words go to the device as they are.
pub fn half_elems(t: &HostTensor, d: DType) -> Option<Vec<u16>> {
    if !is_half(d) {
        return None;
    }
    Some(match &t.data {
        Data::F32(v) => v.iter().map(|x| half_bits(d, *x)).collect(),
        Data::I32(v) => v.iter().map(|x| half_bits(d, *x as f32)).collect(),
    })
}

/// 16-bit float bits of `d` as host f32 values.
pub fn decode_halves(d: DType, bits: &[u16]) -> Vec<f32> {
    bits.iter().map(|b| half_value(d, *b)).collect()
}

/// Whether 16-bit float bits hold a finite value (exponent not all ones; the
/// same field for f16, 5 bits, and bf16, 8 bits).
pub fn half_is_finite(d: DType, bits: u16) -> bool {
    let exp = if d == DType::F16 { 0x7c00 } else { 0x7f80 };
    bits & exp != exp
}

/// The inputs as `prog`'s input buffers hold them: each rounded to its
/// buffer's dtype where that is 16-bit (see [`HostTensor::stored_as`]). A
/// reference computed from these sees what the kernels see.
pub fn as_stored(prog: &Program, inputs: &BTreeMap<String, HostTensor>) -> BTreeMap<String, HostTensor> {
    let dtype_of = |name: &str| {
        prog.buffers.iter().find_map(|b| match &b.role {
            BufferRole::Input { name: n, .. } if n == name => Some(b.dtype),
            _ => None,
        })
    };
    inputs
        .iter()
        .map(|(n, t)| {
            let stored = match dtype_of(n) {
                Some(d) if is_half(d) => t.stored_as(d),
                _ => t.clone(),
            };
            (n.clone(), stored)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_the_dtype() {
        assert_eq!((elem_bytes(DType::BF16), elem_bytes(DType::F16)), (2, 2));
        assert_eq!((elem_bytes(DType::F32), elem_bytes(DType::I32), elem_bytes(DType::Bool)), (4, 4, 4));
        // Odd 16-bit counts round up to whole words; an empty buffer still has one.
        assert_eq!(words_for(DType::BF16, 5), 3);
        assert_eq!(words_for(DType::F16, 6), 3);
        assert_eq!(words_for(DType::F32, 5), 5);
        assert_eq!(words_for(DType::BF16, 0), 1);
        assert_eq!(words_for(DType::F32, 0), 1);
    }

    #[test]
    fn poison_is_nan_in_the_buffers_own_format() {
        assert_eq!(poison(DType::BF16), Poison::Half(0x7fc0));
        assert_eq!(poison(DType::F16), Poison::Half(0x7e00));
        assert_eq!(poison(DType::F32), Poison::Word(0x7fc0_0000));
        for d in [DType::BF16, DType::F16] {
            let Poison::Half(bits) = poison(d) else { panic!("{d}: not 16-bit") };
            assert!(half_value(d, bits).is_nan(), "{d}");
            assert!(!half_is_finite(d, bits), "{d}");
        }
        assert!(f32::from_bits(0x7fc0_0000).is_nan());
    }

    #[test]
    fn conversion_rounds_to_nearest_even() {
        // bf16 keeps 8 significant bits: 1 + 2⁻⁸ is a tie between 1 and 1 + 2⁻⁷.
        let tie_down = 1.0 + 2f32.powi(-8);
        assert_eq!(half_bits(DType::BF16, tie_down), 0x3f80);
        let tie_up = 1.0 + 3.0 * 2f32.powi(-8);
        assert_eq!(half_value(DType::BF16, half_bits(DType::BF16, tie_up)), 1.0 + 2.0 * 2f32.powi(-7));
        let above = 1.0 + 2f32.powi(-8) + 2f32.powi(-20);
        assert_eq!(half_value(DType::BF16, half_bits(DType::BF16, above)), 1.0 + 2f32.powi(-7));
        // f16 keeps 11: 1 + 2⁻¹¹ is a tie, rounded to even (1).
        assert_eq!(half_bits(DType::F16, 1.0 + 2f32.powi(-11)), 0x3c00);
        assert_eq!(half_bits(DType::F16, -2.0), 0xc000);
        assert!(half_value(DType::F16, half_bits(DType::F16, 1e6)).is_infinite());
        assert!(!half_is_finite(DType::F16, half_bits(DType::F16, 1e6)));
        assert!(half_is_finite(DType::BF16, half_bits(DType::BF16, 1e6)));
    }

    #[test]
    fn halves_round_trip_representable_values() {
        let t = HostTensor::f32(vec![4], vec![0.5, -1.25, 3.0, 0.1]);
        for d in [DType::BF16, DType::F16] {
            let Some(bits) = half_elems(&t, d) else { panic!("{d}: not 16-bit") };
            let back = decode_halves(d, &bits);
            let Data::F32(v) = &t.data else { unreachable!() };
            for (x, y) in v.iter().zip(&back) {
                assert_eq!(*y, stored_value(d, *x), "{d}: {x}");
                // Representable values come back exactly; 0.1 within half an ulp.
                let ulp = if d == DType::BF16 { 2f32.powi(-8) } else { 2f32.powi(-11) };
                assert!((x - y).abs() <= 0.5 * ulp * x.abs() * 2.0, "{d}: {x} -> {y}");
            }
            assert_eq!(&back[..3], &v[..3], "{d}");
        }
        let ints = HostTensor { shape: vec![2], data: Data::I32(vec![3, -7]) };
        assert_eq!(half_elems(&ints, DType::BF16), Some(vec![0x4040, 0xc0e0]));
        assert_eq!(half_elems(&ints, DType::I32), None);
        assert_eq!(half_elems(&t, DType::F32), None);
    }
}
