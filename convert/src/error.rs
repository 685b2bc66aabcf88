//! The converter's error type: every bad input is one of these, with a
//! message that names the problem and, where there is one, what to do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("cannot {action} {path}: {err}")]
    Io { action: &'static str, path: PathBuf, err: std::io::Error },
    #[error("{path}: not a {expected} file ({what})")]
    BadMagic { path: PathBuf, expected: &'static str, what: String },
    #[error("{path}: truncated or corrupt: {what}")]
    Truncated { path: PathBuf, what: String },
    #[error("{path}: {what}")]
    BadInput { path: PathBuf, what: String },
    #[error("invalid model config: {0}")]
    Config(String),
    #[error(
        "unsupported architecture {0:?}: only `llama` models can be imported (general.architecture must be \"llama\")"
    )]
    UnsupportedArchitecture(String),
    #[error("tensor {name}: unsupported tensor type {dtype}; re-export the model with F32, F16 or Q8_0 tensors")]
    UnsupportedTensorType { name: String, dtype: String },
    #[error("tensor {name} has shape {got:?}, expected {expected:?} for this model's config")]
    ShapeMismatch { name: String, got: Vec<usize>, expected: Vec<usize> },
    #[error(
        "tensor {name} has the value {value} at index {index}; the input is corrupt (NaN/inf) or not a weight file"
    )]
    BadValues { name: String, index: usize, value: f32 },
    #[error("tensor {0} is missing; the input is incomplete or not a Llama model")]
    MissingTensor(String),
    #[error("tensor {0} is not used by a Llama model; refusing to drop it silently")]
    UnexpectedTensor(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("GGUF: {0}")]
    Gguf(String),
    #[error("safetensors: {0}")]
    Safetensors(String),
    #[error("the .edgelm format rejected the model: {0}")]
    Format(edgelm_runtime::Error),
    #[error("refusing to write {0}: it is one of the inputs; choose another --output")]
    WouldOverwriteInput(PathBuf),
    #[error("not yet supported: {0}")]
    NotYet(String),
    #[error("verification failed: {0}")]
    Verify(String),
}

impl Error {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        Error::Io { action, path: path.into(), err }
    }
}

// Not `#[from]`: that would also make the runtime error the `source`, and
// `anyhow` would print its message twice.
impl From<edgelm_runtime::Error> for Error {
    fn from(e: edgelm_runtime::Error) -> Self {
        Error::Format(e)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
