//! Text ↔ token ids through a Hugging Face `tokenizer.json` (the
//! `tokenizers` crate, behind the default feature `tokenizer`).

use crate::Error;
use std::path::Path;

/// A loaded `tokenizer.json`.
pub struct Tokenizer {
    path: String,
    #[cfg(feature = "tokenizer")]
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    /// Reads a `tokenizer.json`; errors name the file.
    #[cfg(feature = "tokenizer")]
    pub fn load(path: &Path) -> Result<Tokenizer, Error> {
        let shown = path.display().to_string();
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::Usage(format!("{shown}: cannot load the tokenizer: {e}")))?;
        Ok(Tokenizer { path: shown, inner })
    }

    #[cfg(not(feature = "tokenizer"))]
    pub fn load(path: &Path) -> Result<Tokenizer, Error> {
        Err(Error::Usage(format!(
            "{}: this mixc was built without the `tokenizer` feature: rebuild with default features, or give \
             --prompt-ids",
            path.display()
        )))
    }

    /// The ids of `text`, with the special tokens the tokenizer adds (a BOS, say).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, Error> {
        #[cfg(feature = "tokenizer")]
        {
            let enc = self
                .inner
                .encode(text, true)
                .map_err(|e| Error::Usage(format!("{}: cannot encode {text:?}: {e}", self.path)))?;
            if enc.get_ids().is_empty() {
                return Err(Error::Usage(format!("{}: {text:?} encodes to no tokens", self.path)));
            }
            Ok(enc.get_ids().to_vec())
        }
        #[cfg(not(feature = "tokenizer"))]
        {
            let _ = text;
            Err(Error::Usage(format!("{}: built without the `tokenizer` feature", self.path)))
        }
    }

    /// The text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String, Error> {
        #[cfg(feature = "tokenizer")]
        {
            self.inner.decode(ids, true).map_err(|e| Error::Usage(format!("{}: cannot decode: {e}", self.path)))
        }
        #[cfg(not(feature = "tokenizer"))]
        {
            let _ = ids;
            Err(Error::Usage(format!("{}: built without the `tokenizer` feature", self.path)))
        }
    }
}
