//! edgelm-runtime: loads `.edgelm` models zero-copy and generates text with
//! int8 kernels, without allocating in the generation loop.
//!
//! ```no_run
//! # fn main() -> Result<(), edgelm_runtime::Error> {
//! # let bytes: &[u8] = &[];
//! use edgelm_runtime::{Model, Session, SessionOptions};
//! let model = Model::from_bytes(bytes)?;              // mmap'd, flash or include_model!
//! let max_seq = 256;
//! let mut arena = vec![0u8; model.arena_bytes(max_seq)];
//! let mut session = Session::new(&model, "story", &mut arena, SessionOptions::new(max_seq))?;
//! session.feed_prompt("Once upon a time")?;
//! session.generate(100, &mut |text| print!("{text}"))?;
//! # Ok(()) }
//! ```
//!
//! `#![no_std]` at its core, and a library only (the `edgelm` CLI is the
//! `edgelm-cli` crate). `alloc` adds the file writer and aligned buffers;
//! `std` (default) adds the owned [`Engine`], worker threads and run-time
//! kernel detection; `mmap` (default) maps model files instead of reading them.
#![no_std]
// Library code returns errors instead of panicking on data (issue 15): no
// unwrap/expect and no unchecked indexing outside tests (the SIMD kernel
// modules and `Model::default_domain` allow indexing, each with the invariant
// that bounds it). Enforced by CI's clippy -D warnings.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

#[cfg(feature = "alloc")]
mod aligned;
mod arena;
pub mod bpb;
#[cfg(feature = "std")]
mod engine;
mod error;
pub mod format;
mod forward;
pub mod kernels;
pub mod kv;
pub mod model;
pub mod sampler;
pub mod session;
#[cfg(feature = "std")]
pub mod threads;
pub mod tokenizer;

#[cfg(feature = "alloc")]
pub use aligned::AlignedBytes;
#[cfg(feature = "std")]
pub use engine::{is_broken_pipe, Engine, EngineOptions};
pub use error::{Error, ErrorKind, Name, Result};
pub use format::{ModelFile, VerifyChecksum};
pub use kv::KvType;
pub use model::{Domain, Model};
pub use sampler::SamplerConfig;
pub use session::{Session, SessionOptions, StopReason};

/// Wrapper that gives embedded bytes the 64-byte alignment the loader needs.
#[repr(C, align(64))]
pub struct Aligned64<T: ?Sized>(pub T);

// `include_model!` relies on the wrapper putting its bytes at offset 0 with 64-byte alignment.
const _: () = assert!(core::mem::align_of::<Aligned64<[u8; 1]>>() == format::ALIGN);

/// Embeds a model file in the binary, aligned for zero-copy loading:
/// `static MODEL: &[u8] = edgelm_runtime::include_model!("../model.edgelm");`
#[macro_export]
macro_rules! include_model {
    ($path:expr) => {{
        static ALIGNED: &$crate::Aligned64<[u8]> = &$crate::Aligned64(*include_bytes!($path));
        &ALIGNED.0
    }};
}
