//! The app the firmware images run: load the embedded model, then for each
//! planned run print the prompt and the generated text exactly as
//! `edgelm generate` prints it on Linux, framed by `[edgelm]` lines that say
//! how to reproduce it there, and finally the decode speed.
//!
//! A board gives it a [`core::fmt::Write`] (its UART), a [`Clock`] and a
//! static arena; everything else is the runtime's public API. With the
//! `plan` feature (build scripts only) it also owns the build settings.
#![cfg_attr(not(any(feature = "plan", test)), no_std)]

mod arena;
#[cfg(feature = "plan")]
pub mod plan;
mod transcript;

pub use arena::StaticArena;
pub use transcript::{tell, Clock, Embedded, Failure, Image, Run, Speed, MARK};
