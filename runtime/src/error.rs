//! The runtime's error type. Every bad input (corrupt file, unknown domain,
//! prompt longer than the context, arena too small) ends up here: the runtime
//! never panics on data it did not produce itself. Messages describe the
//! problem in the library's terms; what a user should do about it (which
//! flag, which tool) is the caller's to say, by [`Error::kind`].

use core::fmt;

/// A short, owned copy of a tensor or domain name for error messages
/// (errors must not borrow from the file they describe).
#[derive(Clone, PartialEq, Eq)]
pub struct Name(heapless::String<48>);

impl Name {
    pub fn new(s: &str) -> Self {
        let mut out = heapless::String::new();
        for c in s.chars() {
            if out.push(c).is_err() {
                break;
            }
        }
        Name(out)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // --- file structure -------------------------------------------------
    #[error("file is {got} bytes, too short for an .edgelm file (needs at least {needed}); is it truncated?")]
    TooShort { needed: u64, got: u64 },
    #[error("not an .edgelm file (bad magic bytes)")]
    BadMagic,
    #[error("unsupported .edgelm format version {found} (this runtime reads versions 1 to {supported})")]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("the file's endianness mark is wrong: it was written for a big-endian machine or is corrupt")]
    WrongEndianness,
    #[error("this runtime needs a little-endian CPU")]
    BigEndianHost,
    #[error("file size {got} does not match the size its preamble declares ({declared}); the file is truncated or has trailing bytes")]
    SizeMismatch { declared: u64, got: u64 },
    #[error("header length {0} is out of bounds")]
    HeaderTooLarge(u64),
    #[error("header is corrupt: {0}")]
    HeaderDecode(&'static str),
    #[error("checksum mismatch (stored {stored:#018x}, computed {computed:#018x}): the file is corrupt")]
    ChecksumMismatch { stored: u64, computed: u64 },
    #[error("model bytes start at an address that is not 64-byte aligned (mmap, `include_model!` and `AlignedBytes` give aligned bytes)")]
    Misaligned,

    // --- tensors --------------------------------------------------------
    #[error("too many tensors ({0}); the limit is {1}")]
    TooManyTensors(u64, usize),
    #[error("tensor {name}: {what}")]
    BadTensor { name: Name, what: &'static str },
    #[error("tensor {0} is missing from the file")]
    MissingTensor(Name),
    #[error("tensor {name} has shape {got:?}, expected {expected:?}")]
    ShapeMismatch { name: Name, got: [u32; 4], expected: [u32; 4] },
    #[error("tensor {name} has dtype {got}, which cannot be used here (expected {expected})")]
    WrongDType { name: Name, got: &'static str, expected: &'static str },

    // --- model ----------------------------------------------------------
    #[error("invalid model config: {0}")]
    BadConfig(&'static str),
    #[error("invalid domain table: {0}")]
    BadDomain(&'static str),
    #[error("invalid tokenizer: {0}")]
    BadTokenizer(&'static str),
    #[error("domain pack was trained on base {expected} but the loaded base is {found}")]
    PackBaseMismatch { expected: Name, found: Name },
    #[error("this file is a domain pack, not a base model")]
    NotABase,
    #[error("this file is a base model, not a domain pack")]
    NotAPack,
    #[error("too many domains loaded (limit {0})")]
    TooManyDomains(usize),
    #[error("domain {0} is already loaded")]
    DuplicateDomain(Name),
    #[error("unknown domain {0}")]
    UnknownDomain(Name),

    // --- running --------------------------------------------------------
    #[error("arena is {got} bytes but this model needs {needed} (see Model::arena_bytes)")]
    ArenaTooSmall { needed: usize, got: usize },
    #[error("max sequence {requested} exceeds the model's context of {limit} tokens")]
    SeqTooLong { requested: usize, limit: usize },
    #[error(
        "prompt is {tokens} tokens but at most {limit} fit in the context (one position stays free for generation)"
    )]
    PromptTooLong { tokens: usize, limit: usize },
    #[error("the context is full ({limit} tokens); reset the session or start a new prompt")]
    ContextFull { limit: usize },
    #[error("token id {0} is outside the vocabulary")]
    BadToken(u32),
    #[error("sampler setting out of range: {0}")]
    BadSampler(&'static str),
    #[error("invalid setting: {0}")]
    BadSetting(&'static str),

    // --- files (std) ----------------------------------------------------
    /// Reading or mapping a file failed.
    #[cfg(feature = "std")]
    #[error("cannot {action} {path}: {kind}")]
    Io { action: &'static str, path: std::string::String, kind: std::io::ErrorKind },
}

/// What went wrong, coarsely, for callers that react differently (a CLI's
/// advice, a C ABI's status code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The bytes are not a valid `.edgelm` file (truncated, corrupt, wrong tensors).
    CorruptFile,
    /// A valid file this build or CPU cannot use (format version, endianness).
    Unsupported,
    /// The file's model, domains or tokenizer are inconsistent.
    InvalidModel,
    /// A file of the wrong kind or for another base (pack vs base, duplicate domain).
    WrongFile,
    /// The requested domain is not loaded.
    UnknownDomain,
    /// A caller's argument is out of range (arena, context length, token, sampler, alignment).
    InvalidArgument,
    /// The prompt does not fit in the session's context.
    PromptTooLong,
    /// The context is full: no position is left for another token.
    ContextFull,
    /// A file could not be opened, read or mapped.
    Io,
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        use Error::*;
        match self {
            TooShort { .. }
            | BadMagic
            | SizeMismatch { .. }
            | HeaderTooLarge(_)
            | HeaderDecode(_)
            | ChecksumMismatch { .. }
            | TooManyTensors(..)
            | BadTensor { .. }
            | MissingTensor(_)
            | ShapeMismatch { .. }
            | WrongDType { .. } => ErrorKind::CorruptFile,
            UnsupportedVersion { .. } | WrongEndianness | BigEndianHost => ErrorKind::Unsupported,
            BadConfig(_) | BadDomain(_) | BadTokenizer(_) => ErrorKind::InvalidModel,
            PackBaseMismatch { .. } | NotABase | NotAPack | TooManyDomains(_) | DuplicateDomain(_) => {
                ErrorKind::WrongFile
            }
            UnknownDomain(_) => ErrorKind::UnknownDomain,
            Misaligned | ArenaTooSmall { .. } | SeqTooLong { .. } | BadToken(_) | BadSampler(_) | BadSetting(_) => {
                ErrorKind::InvalidArgument
            }
            PromptTooLong { .. } => ErrorKind::PromptTooLong,
            ContextFull { .. } => ErrorKind::ContextFull,
            #[cfg(feature = "std")]
            Io { .. } => ErrorKind::Io,
        }
    }
}

pub type Result<T, E = Error> = core::result::Result<T, E>;
