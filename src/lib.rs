//! mixc: the facade API.
pub use mixc_ir as ir;
