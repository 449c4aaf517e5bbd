//! Errors of the IR crate.

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum IrError {
    #[error("op `{op}` (result `%{value}`): {msg}")]
    Op { op: String, value: String, msg: String },
    #[error("{what} name `{name}` is not an identifier (a letter or `_`, then letters, digits or `_`)")]
    BadName { what: &'static str, name: String },
    #[error("dim `{0}` is defined twice")]
    DuplicateDim(String),
    #[error("{0}")]
    Invalid(String),
}
