//! Model files: the `model.toml` schema, its loader and validation.

pub mod config;

pub use config::*;
