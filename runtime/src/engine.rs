//! An owned model for hosted programs (std): the handle keeps the base file
//! and its packs (mapped with the `mmap` feature, otherwise read into aligned
//! memory), validated once, and the kernel table and worker threads chosen
//! once; sessions are opened on it. The `edgelm` CLI, the C ABI and kiosk apps
//! use it instead of juggling file bytes, [`Model`] and arena lifetimes.
//!
//! ```no_run
//! # fn main() -> Result<(), edgelm_runtime::Error> {
//! use edgelm_runtime::{Engine, EngineOptions, SessionOptions};
//! let mut engine = Engine::open("models/base.edgelm".as_ref(), EngineOptions::default())?;
//! engine.add_pack("models/recipe.edgelm".as_ref())?;
//! let opts = SessionOptions::new(engine.max_seq());
//! engine.with_session(Some("recipe"), opts, |session| {
//!     session.feed_prompt("Title:")?;
//!     session.generate(100, &mut |text| print!("{text}"))
//! })?;
//! # Ok(()) }
//! ```

use std::path::Path;
use std::string::ToString;
use std::vec;
use std::vec::Vec;

use crate::error::{Error, Result};
use crate::format::{Config, ModelFile, VerifyChecksum};
use crate::kernels::Kernels;
use crate::threads::Pool;
use crate::{AlignedBytes, Model, Session, SessionOptions};

/// How an [`Engine`] loads and runs.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Verify each file's checksum when it is added (structure is always validated).
    pub verify: VerifyChecksum,
    /// Threads for large matrix-vector products (the caller's + `threads - 1` workers).
    pub threads: usize,
    /// Kernel table; `None`: [`crate::kernels::best`].
    pub kernels: Option<&'static Kernels>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions { verify: VerifyChecksum::Yes, threads: 1, kernels: None }
    }
}

/// Model bytes the engine owns, or borrows for good.
enum Bytes {
    #[cfg(feature = "mmap")]
    Mapped(memmap2::Mmap),
    Owned(AlignedBytes),
    /// Bytes that outlive the engine (`include_model!`, flash, or memory its
    /// owner keeps, such as a C caller's buffer): used in place.
    Static(&'static [u8]),
}

impl core::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            #[cfg(feature = "mmap")]
            Bytes::Mapped(m) => m,
            Bytes::Owned(b) => b,
            Bytes::Static(b) => b,
        }
    }
}

fn io_error(action: &'static str, path: &Path, e: std::io::Error) -> Error {
    Error::Io { action, path: path.display().to_string(), kind: e.kind() }
}

#[cfg(feature = "mmap")]
fn load(path: &Path) -> Result<Bytes> {
    let f = std::fs::File::open(path).map_err(|e| io_error("open", path, e))?;
    // SAFETY: the mapping is read-only and every access through it is
    // bounds-checked by the loader; as with any mapped file, it must not be
    // truncated while mapped.
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| io_error("map", path, e))?;
    Ok(Bytes::Mapped(map))
}

#[cfg(not(feature = "mmap"))]
fn load(path: &Path) -> Result<Bytes> {
    let bytes = std::fs::read(path).map_err(|e| io_error("open", path, e))?;
    Ok(Bytes::Owned(AlignedBytes::from(bytes)))
}

/// A base model, its packs, the kernel table and the worker threads.
pub struct Engine {
    base: Bytes,
    packs: Vec<Bytes>,
    config: Config,
    kernels: &'static Kernels,
    pool: Option<Pool>,
}

impl Engine {
    /// Opens the base model file at `path`.
    pub fn open(path: &Path, opts: EngineOptions) -> Result<Self> {
        Self::with_base(load(path)?, opts)
    }

    /// An engine over base model bytes already in memory.
    pub fn from_bytes(bytes: AlignedBytes, opts: EngineOptions) -> Result<Self> {
        Self::with_base(Bytes::Owned(bytes), opts)
    }

    /// An engine over base model bytes that outlive it, read in place (no
    /// copy). They must start 64-byte aligned ([`Error::Misaligned`]).
    pub fn from_static(bytes: &'static [u8], opts: EngineOptions) -> Result<Self> {
        Self::with_base(Bytes::Static(bytes), opts)
    }

    fn with_base(base: Bytes, opts: EngineOptions) -> Result<Self> {
        if opts.threads == 0 {
            return Err(Error::BadSetting("threads must be at least 1"));
        }
        let config = *Model::from_file(&ModelFile::parse(&base, opts.verify)?)?.config();
        let pool = match opts.threads {
            1 => None,
            n => Some(Pool::try_new(n).map_err(|_| Error::BadSetting("cannot start the worker threads"))?),
        };
        let kernels = opts.kernels.unwrap_or_else(crate::kernels::best);
        let engine = Engine { base, packs: Vec::new(), config, kernels, pool };
        Ok(engine)
    }

    /// Adds the domain pack file at `path` (checksum verified).
    pub fn add_pack(&mut self, path: &Path) -> Result<()> {
        self.push_pack(load(path)?, VerifyChecksum::Yes)
    }

    /// Adds a domain pack from bytes in memory (checksum verified).
    pub fn add_pack_bytes(&mut self, bytes: AlignedBytes) -> Result<()> {
        self.push_pack(Bytes::Owned(bytes), VerifyChecksum::Yes)
    }

    /// Like [`Engine::add_pack_bytes`], with the checksum check chosen by the caller.
    pub fn add_pack_bytes_with(&mut self, bytes: AlignedBytes, verify: VerifyChecksum) -> Result<()> {
        self.push_pack(Bytes::Owned(bytes), verify)
    }

    /// Adds a domain pack from bytes that outlive the engine, read in place
    /// (see [`Engine::from_static`]).
    pub fn add_pack_static(&mut self, bytes: &'static [u8], verify: VerifyChecksum) -> Result<()> {
        self.push_pack(Bytes::Static(bytes), verify)
    }

    /// Like [`Engine::add_pack`], with the checksum check chosen by the caller.
    pub fn add_pack_with(&mut self, path: &Path, verify: VerifyChecksum) -> Result<()> {
        self.push_pack(load(path)?, verify)
    }

    fn push_pack(&mut self, bytes: Bytes, verify: VerifyChecksum) -> Result<()> {
        // Validated against the base and the packs so far; a refused pack is not kept.
        {
            let mut model = self.model()?;
            model.add_pack(&ModelFile::parse(&bytes, verify)?)?;
        }
        self.packs.push(bytes);
        Ok(())
    }

    /// The model over the engine's files (zero-copy; already validated, so
    /// checksums are not recomputed).
    pub fn model(&self) -> Result<Model<'_>> {
        let mut model = Model::from_file(&ModelFile::parse(&self.base, VerifyChecksum::Skip)?)?;
        for p in &self.packs {
            model.add_pack(&ModelFile::parse(p, VerifyChecksum::Skip)?)?;
        }
        Ok(model)
    }

    /// The base's config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The base's context length (the default for sessions).
    pub fn max_seq(&self) -> usize {
        self.config.max_seq_len as usize
    }

    pub fn kernels(&self) -> &'static Kernels {
        self.kernels
    }

    pub fn threads(&self) -> usize {
        self.pool.as_ref().map_or(1, Pool::threads)
    }

    /// Opens a session on `model` (from [`Engine::model`]) with the engine's
    /// kernels and threads; `domain` `None` is the base's first domain.
    pub fn session<'m>(
        &'m self,
        model: &'m Model<'m>,
        domain: Option<&str>,
        arena: &'m mut [u8],
        opts: SessionOptions,
    ) -> Result<Session<'m, 'm>> {
        let domain = match domain {
            Some(name) => model.domain(name)?,
            None => model.default_domain(),
        };
        let mut session = Session::with_domain(model, domain, arena, opts)?;
        session.set_kernels(self.kernels);
        if let Some(pool) = &self.pool {
            session.set_pool(pool);
        }
        Ok(session)
    }

    /// Runs `f` on a session over a fresh arena of exactly the size it needs.
    pub fn with_session<R, E: From<Error>>(
        &self,
        domain: Option<&str>,
        opts: SessionOptions,
        f: impl FnOnce(&mut Session<'_, '_>) -> core::result::Result<R, E>,
    ) -> core::result::Result<R, E> {
        let limit = self.max_seq();
        if opts.max_seq == 0 || opts.max_seq > limit {
            // checked before the arena is sized from it
            return Err(Error::SeqTooLong { requested: opts.max_seq, limit }.into());
        }
        let model = self.model()?;
        let mut arena = vec![0u8; model.arena_bytes_for(&opts)];
        let mut session = self.session(&model, domain, &mut arena, opts)?;
        f(&mut session)
    }
}

impl core::fmt::Debug for Engine {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Engine")
            .field("bytes", &self.base.len())
            .field("packs", &self.packs.len())
            .field("kernels", &self.kernels.name)
            .field("threads", &self.threads())
            .finish()
    }
}

/// Whether `e` or an error it wraps is a write to a closed pipe or socket
/// (`edgelm … | head`): for a streaming program, the reader went away, which
/// is an ordinary way to stop rather than a failure.
pub fn is_broken_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if err.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) {
            return true;
        }
        next = err.source();
    }
    false
}
