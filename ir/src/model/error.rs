//! Errors of model files: each renders as one paragraph that names the file,
//! the line and column where known, the key, what was found and what was
//! expected.

use std::fmt;

/// Where in a model file something went wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    /// The file, as the user named it.
    pub file: String,
    /// 1-based line and column (in characters), where known.
    pub line_col: Option<(usize, usize)>,
    /// The dotted key path, e.g. `mixer.gla.heads`, where known.
    pub key: Option<String>,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some((line, col)) = self.line_col {
            write!(f, ":{line}:{col}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": at `{key}`")?;
        }
        Ok(())
    }
}

/// An error in a model file.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file could not be read.
    #[error("cannot read model file `{path}`: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The text is not TOML.
    #[error("{at}: malformed TOML: {msg}")]
    Syntax { at: Place, msg: String },
    /// The TOML does not fit the schema: an unknown key, a wrong type, an
    /// unknown mixer kind, a missing key.
    #[error("{at}: {msg}")]
    Schema { at: Place, msg: String },
    /// The file fits the schema but its values are inconsistent.
    #[error("{at}: {msg}")]
    Invalid { at: Place, msg: String },
}

impl ModelError {
    /// The place of the error (none for I/O errors).
    pub fn place(&self) -> Option<&Place> {
        match self {
            ModelError::Io { .. } => None,
            ModelError::Syntax { at, .. } | ModelError::Schema { at, .. } | ModelError::Invalid { at, .. } => Some(at),
        }
    }

    /// The bare message, without the place.
    pub fn message(&self) -> String {
        match self {
            ModelError::Io { source, .. } => source.to_string(),
            ModelError::Syntax { msg, .. } | ModelError::Schema { msg, .. } | ModelError::Invalid { msg, .. } => {
                msg.clone()
            }
        }
    }
}

/// Folds a multi-line message into one paragraph.
pub(crate) fn one_paragraph(msg: &str) -> String {
    msg.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}
