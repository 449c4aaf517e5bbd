//! Model files: the `model.toml` schema, its loader and validation.
//!
//! [`load_model`] reads a file, [`parse_model`] parses text: TOML syntax,
//! then the serde schema (unknown keys rejected), then [`validate`]. Every
//! error is a [`ModelError`] that names the file, line and column, and key.

pub mod config;
mod error;
mod layers;
mod load;
mod locate;
mod validate;

pub use config::*;
pub use error::{ModelError, Place};
pub use load::{load_model, parse_model};
pub use validate::{accepted_keys, required_keys, validate, MAX_LAYERS, STATE_DTYPES};
