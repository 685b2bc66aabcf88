//! Library error type. Messages say what went wrong and what to do about it.

use std::path::PathBuf;

/// Errors of the trainer library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A corpus is missing, empty or has a document that breaks a limit.
    #[error("corpus {path}: {msg}")]
    Corpus { path: PathBuf, msg: String },
    /// Tokenizer training, loading or encoding failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A model or training configuration is inconsistent.
    #[error("config: {0}")]
    Config(String),
    /// A checkpoint directory is missing files or holds unexpected tensors.
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },
    /// A tensor operation failed (shape mismatch, unsupported device, ...).
    #[error("tensor: {0}")]
    Candle(#[from] candle_core::Error),
    /// JSON (de)serialisation.
    #[error("json {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The plot could not be drawn.
    #[error("plot {path}: {msg}")]
    Plot { path: PathBuf, msg: String },
}

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { action, path: path.into(), source }
    }
    pub(crate) fn ckpt(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Checkpoint { path: path.into(), msg: msg.into() }
    }
}
