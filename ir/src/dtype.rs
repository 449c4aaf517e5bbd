//! Element types of graph values.

use std::fmt;
use std::str::FromStr;

/// The element type of a tensor. Floating types are computed in f32 (or f64 by the
/// reference interpreter); the narrow ones are storage formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F64,
    F32,
    F16,
    BF16,
    I32,
    I8,
    /// Two 4-bit signed codes per byte; logically one element per code.
    I4,
    Bool,
}

impl DType {
    pub const ALL: [DType; 8] =
        [DType::F64, DType::F32, DType::F16, DType::BF16, DType::I32, DType::I8, DType::I4, DType::Bool];

    pub fn name(self) -> &'static str {
        match self {
            DType::F64 => "f64",
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I32 => "i32",
            DType::I8 => "i8",
            DType::I4 => "i4",
            DType::Bool => "bool",
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F64 | DType::F32 | DType::F16 | DType::BF16)
    }

    pub fn is_int(self) -> bool {
        matches!(self, DType::I32 | DType::I8 | DType::I4)
    }

    /// The value of this dtype nearest `x`, as the interpreters store it:
    /// floats rounded to nearest even, integers truncated and saturated,
    /// bools 0 or 1.
    pub fn round(self, x: f64) -> f64 {
        crate::interp::round_to_pub(self, x)
    }

    /// Storage size in bits of one element.
    pub fn bits(self) -> u32 {
        match self {
            DType::F64 => 64,
            DType::F32 | DType::I32 => 32,
            DType::F16 | DType::BF16 => 16,
            DType::I8 | DType::Bool => 8,
            DType::I4 => 4,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        DType::ALL
            .iter()
            .copied()
            .find(|d| d.name() == s)
            .ok_or_else(|| format!("unknown dtype `{s}` (expected one of f64, f32, f16, bf16, i32, i8, i4, bool)"))
    }
}
