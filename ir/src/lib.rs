//! The mixer graph IR of mixc.
//!
//! - [`dtype`], [`dims`]: element types and named, possibly symbolic dims;
//! - [`graph`], [`ops`]: SSA values in an arena and the op set;
//! - [`verify`]: shape and dtype inference, the whole-graph verifier;
//! - [`text`]: the canonical text form (print and parse);
//! - [`interp`]: the f64 reference interpreter, the oracle for every other path;
//! - [`mixers`]: builders of every mixer's graph;
//! - [`model`]: the `model.toml` schema and loader.
//!
//! **Architecture invariant:** this crate depends on nothing else of mixc.

pub mod dims;
pub mod dtype;
pub mod error;
pub mod graph;
pub mod interp;
pub mod mixers;
pub mod model;
pub mod ops;
pub mod text;
pub mod tile;
pub mod verify;

pub use dims::{DimId, SizeExpr};
pub use dtype::DType;
pub use error::IrError;
pub use graph::{Graph, OpId, TensorType, ValueId};
pub use ops::OpKind;
