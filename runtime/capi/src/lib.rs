//! edgelm-capi: the C ABI of edgelm-runtime, built as `libedgelm.a` and
//! `libedgelm.so`. The C header `include/edgelm.h` is generated from this
//! file by cbindgen (`tests/header.rs` fails when it is stale); its comments
//! are the API's documentation.
//!
//! Every entry point runs inside [`guard`]: arguments are checked (NULL,
//! lengths, UTF-8), runtime errors become an [`edgelm_status`] plus a
//! thread-local message, and a panic is caught before it reaches C.
//!
//! Handles: an [`edgelm_model`] owns an [`Engine`] (the base file mapped or
//! copied, its packs, the kernel table) behind a lock; an [`edgelm_session`]
//! owns a [`Model`] view over the engine's bytes, its arena (allocated by the
//! library or lent by the caller) and the [`Session`] borrowing both. A model
//! counts its open sessions and refuses to change (add a pack) or to be freed
//! while any is open, which is what keeps those borrows valid.
#![deny(unsafe_op_in_unsafe_fn)]
// The C names (edgelm_model, EDGELM_OK, …) are the API.
#![allow(non_camel_case_types)]

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use edgelm_runtime::{
    AlignedBytes, Engine, EngineOptions, Error, ErrorKind, KvType, Model, SamplerConfig, Session, SessionOptions,
    StopReason, VerifyChecksum,
};

/// What a call did: EDGELM_OK, or why it failed (edgelm_last_error() has the details).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum edgelm_status {
    /// Success.
    EDGELM_OK = 0,
    /// A pointer argument that must not be NULL was NULL.
    EDGELM_ERR_NULL_POINTER = 1,
    /// An argument is out of range: a length, context length, arena size,
    /// sampler setting, text that is not UTF-8, a domain index.
    EDGELM_ERR_INVALID_ARGUMENT = 2,
    /// A file could not be opened, read or mapped.
    EDGELM_ERR_IO = 3,
    /// The bytes are not a valid .edgelm file (truncated, corrupt).
    EDGELM_ERR_CORRUPT_FILE = 4,
    /// A valid file this build or CPU cannot use (format version, endianness).
    EDGELM_ERR_UNSUPPORTED = 5,
    /// The file's model, domains or tokenizer are inconsistent.
    EDGELM_ERR_INVALID_MODEL = 6,
    /// A file of the wrong kind: a pack where a base is needed or the other
    /// way round, a pack for another base, a domain loaded twice.
    EDGELM_ERR_WRONG_FILE = 7,
    /// No loaded domain has that name.
    EDGELM_ERR_UNKNOWN_DOMAIN = 8,
    /// The prompt does not fit in the session's context.
    EDGELM_ERR_PROMPT_TOO_LONG = 9,
    /// The context is full; reset the session or feed a new prompt.
    EDGELM_ERR_CONTEXT_FULL = 10,
    /// The model has open sessions (adding a pack, freeing the model).
    EDGELM_ERR_BUSY = 11,
    /// A bug in the library (a caught panic); the handle involved should be freed.
    EDGELM_ERR_INTERNAL = 12,
}
use edgelm_status::*;

/// Why edgelm_session_generate() returned.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum edgelm_stop_reason {
    /// The model produced its end-of-text token.
    EDGELM_STOP_END_OF_TEXT = 0,
    /// max_tokens tokens were generated.
    EDGELM_STOP_MAX_TOKENS = 1,
    /// The session's context is full.
    EDGELM_STOP_CONTEXT_FULL = 2,
    /// The callback returned non-zero.
    EDGELM_STOP_CALLBACK = 3,
}

/// KV cache element types for edgelm_open_options.kv (the field is an int,
/// so an unknown value is EDGELM_ERR_INVALID_ARGUMENT, not undefined).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum edgelm_kv_type {
    /// 4 bytes per cached value: the forward pass as trained.
    EDGELM_KV_F32 = 0,
    /// 2 bytes per value (IEEE half).
    EDGELM_KV_F16 = 1,
    /// 1 byte per value plus a float scale per head of each position.
    EDGELM_KV_Q8 = 2,
}

/// Sampling settings; start from edgelm_sampler_defaults().
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct edgelm_sampler {
    /// 0 = greedy (always the most likely token); otherwise ≥ 0 and finite.
    pub temperature: f32,
    /// Sample among the k most likely tokens (0 = all).
    pub top_k: u32,
    /// Nucleus sampling: the smallest set of tokens whose probability reaches
    /// top_p, in (0, 1] (1 = off).
    pub top_p: f32,
    /// Penalty on recently seen tokens, > 0 (1 = off).
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_window: u32,
    /// RNG seed: the same seed, prompt and settings give the same text
    /// (`edgelm generate --seed`).
    pub seed: u64,
}

impl From<SamplerConfig> for edgelm_sampler {
    fn from(c: SamplerConfig) -> Self {
        edgelm_sampler {
            temperature: c.temperature,
            top_k: u32::try_from(c.top_k).unwrap_or(u32::MAX),
            top_p: c.top_p,
            repeat_penalty: c.repeat_penalty,
            repeat_window: u32::try_from(c.repeat_window).unwrap_or(u32::MAX),
            seed: c.seed,
        }
    }
}

impl From<&edgelm_sampler> for SamplerConfig {
    fn from(s: &edgelm_sampler) -> Self {
        SamplerConfig {
            temperature: s.temperature,
            top_k: s.top_k as usize,
            top_p: s.top_p,
            repeat_penalty: s.repeat_penalty,
            repeat_window: s.repeat_window as usize,
            seed: s.seed,
        }
    }
}

/// How a model is opened; start from edgelm_open_options_defaults().
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct edgelm_open_options {
    /// Threads for large matrix-vector products, 1 to 256: the thread that
    /// generates plus threads - 1 workers, started when the model is opened
    /// and shared by its sessions (their products take turns). Default 1.
    pub threads: u32,
    /// Non-zero: verify the checksum of the base and of every pack added
    /// later (reads each file once). 0: skip it; the structure is still
    /// validated. Default 1.
    pub verify_checksum: c_int,
    /// The sessions' KV cache, an edgelm_kv_type: EDGELM_KV_F32 (default),
    /// EDGELM_KV_F16 (half the cache's arena bytes) or EDGELM_KV_Q8 (about a
    /// quarter); their bits-per-byte cost on the shipped models is in
    /// docs/BENCHMARKS.md. (This int was `kv_f16`, 1 meaning f16: the same
    /// place, size and values 0 and 1.)
    pub kv: c_int,
}

/// Most threads a model may ask for (a bad value must not start millions).
const MAX_THREADS: u32 = 256;

impl edgelm_open_options {
    fn engine_options(&self) -> Res<(EngineOptions, VerifyChecksum, KvType)> {
        if self.threads == 0 || self.threads > MAX_THREADS {
            return Err(fail(
                EDGELM_ERR_INVALID_ARGUMENT,
                format!("threads must be between 1 and {MAX_THREADS} (got {})", self.threads),
            ));
        }
        let verify = if self.verify_checksum != 0 { VerifyChecksum::Yes } else { VerifyChecksum::Skip };
        let kv = match self.kv {
            k if k == edgelm_kv_type::EDGELM_KV_F32 as c_int => KvType::F32,
            k if k == edgelm_kv_type::EDGELM_KV_F16 as c_int => KvType::F16,
            k if k == edgelm_kv_type::EDGELM_KV_Q8 as c_int => KvType::Q8,
            k => {
                return Err(fail(
                    EDGELM_ERR_INVALID_ARGUMENT,
                    format!("kv must be EDGELM_KV_F32 (0), EDGELM_KV_F16 (1) or EDGELM_KV_Q8 (2) (got {k})"),
                ))
            }
        };
        Ok((EngineOptions { verify, threads: self.threads as usize, kernels: None }, verify, kv))
    }
}

impl Default for edgelm_open_options {
    fn default() -> Self {
        edgelm_open_options { threads: 1, verify_checksum: 1, kv: edgelm_kv_type::EDGELM_KV_F32 as c_int }
    }
}

/// Receives each piece of generated text: `len` bytes of complete UTF-8 at
/// `piece` (also NUL-terminated; valid only during the call), and the
/// `user_data` given to edgelm_session_generate(). Return 0 to go on,
/// non-zero to stop generating (EDGELM_STOP_CALLBACK).
pub type edgelm_piece_fn =
    Option<unsafe extern "C" fn(piece: *const c_char, len: usize, user_data: *mut c_void) -> c_int>;

/// A base model and its domain packs (opaque). See "Thread safety" above.
pub struct edgelm_model {
    inner: RwLock<ModelInner>,
    /// Open sessions; while any is open the engine is not changed or freed.
    sessions: AtomicUsize,
    /// Whether packs added later have their checksum verified (as the base had).
    verify: VerifyChecksum,
    /// KV cache type of its sessions.
    kv: KvType,
}

struct ModelInner {
    engine: Engine,
    /// NUL-terminated domain names, in the runtime's order; only ever appended
    /// to, so pointers handed out stay valid until the model is freed.
    names: Vec<CString>,
}

/// A generation session on one domain (opaque). Used by one thread at a time.
pub struct edgelm_session {
    /// Borrows `*model`, `*arena` and the owner's engine; dropped first (see `Drop`).
    session: Option<Session<'static, 'static>>,
    /// From `Box::into_raw`: the model view over the engine's bytes.
    model: *mut Model<'static>,
    /// From `Box::into_raw` when the library allocated the arena; null when the caller lent it.
    arena: *mut [u8],
    owner: *const edgelm_model,
    /// The current piece of text, NUL-terminated, for the callback.
    piece: Vec<u8>,
}

impl Drop for edgelm_session {
    fn drop(&mut self) {
        // The session borrows the model and the arena: it goes first.
        self.session = None;
        // SAFETY: `model` came from `Box::into_raw` in `open_session` and is
        // freed only here; nothing borrows it any more.
        drop(unsafe { Box::from_raw(self.model) });
        if !self.arena.is_null() {
            // SAFETY: as above, for the library-allocated arena.
            drop(unsafe { Box::from_raw(self.arena) });
        }
        // SAFETY: the owner outlives its sessions: edgelm_model_free refuses
        // while this count is non-zero.
        unsafe { &*self.owner }.sessions.fetch_sub(1, Ordering::AcqRel);
    }
}

// ---------------------------------------------------------------------------
// errors

/// A failed call: the status and what to tell the caller.
struct Fail {
    status: edgelm_status,
    message: String,
}

fn fail(status: edgelm_status, message: impl Into<String>) -> Fail {
    Fail { status, message: message.into() }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        let status = match e.kind() {
            ErrorKind::CorruptFile => EDGELM_ERR_CORRUPT_FILE,
            ErrorKind::Unsupported => EDGELM_ERR_UNSUPPORTED,
            ErrorKind::InvalidModel => EDGELM_ERR_INVALID_MODEL,
            ErrorKind::WrongFile => EDGELM_ERR_WRONG_FILE,
            ErrorKind::UnknownDomain => EDGELM_ERR_UNKNOWN_DOMAIN,
            ErrorKind::InvalidArgument => EDGELM_ERR_INVALID_ARGUMENT,
            ErrorKind::PromptTooLong => EDGELM_ERR_PROMPT_TOO_LONG,
            ErrorKind::ContextFull => EDGELM_ERR_CONTEXT_FULL,
            ErrorKind::Io => EDGELM_ERR_IO,
            _ => EDGELM_ERR_INTERNAL,
        };
        fail(status, e.to_string())
    }
}

type Res<T = ()> = Result<T, Fail>;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(function: &str, message: &str) {
    let text = format!("{function}: {message}").replace('\0', " ");
    let text = CString::new(text).unwrap_or_default();
    // during thread teardown the slot may be gone; the status code still says what failed
    let _ = LAST_ERROR.try_with(|slot| *slot.borrow_mut() = text);
}

/// Runs an entry point: its error or panic becomes a status and a message.
fn guard(function: &'static str, body: impl FnOnce() -> Res) -> edgelm_status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => EDGELM_OK,
        Ok(Err(f)) => {
            set_last_error(function, &f.message);
            f.status
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("unknown panic");
            set_last_error(function, &format!("internal error (please report it): {what}"));
            EDGELM_ERR_INTERNAL
        }
    }
}

/// `ptr` as a shared reference, or the NULL error naming `arg`.
///
/// # Safety
/// A non-null `ptr` must point to a valid `T` for `'a`.
unsafe fn arg_ref<'a, T>(ptr: *const T, arg: &str) -> Res<&'a T> {
    // SAFETY: non-null pointers are valid by the caller's contract.
    unsafe { ptr.as_ref() }.ok_or_else(|| fail(EDGELM_ERR_NULL_POINTER, format!("`{arg}` is NULL")))
}

/// `ptr` as a unique reference, or the NULL error naming `arg`.
///
/// # Safety
/// A non-null `ptr` must point to a valid `T`, not aliased, for `'a`.
unsafe fn arg_mut<'a, T>(ptr: *mut T, arg: &str) -> Res<&'a mut T> {
    // SAFETY: as in `arg_ref`, and unaliased by the caller's contract.
    unsafe { ptr.as_mut() }.ok_or_else(|| fail(EDGELM_ERR_NULL_POINTER, format!("`{arg}` is NULL")))
}

/// Checks an out-pointer before any work is done.
fn out_ptr<T>(ptr: *mut T, arg: &str) -> Res<()> {
    if ptr.is_null() {
        return Err(fail(EDGELM_ERR_NULL_POINTER, format!("`{arg}` is NULL")));
    }
    Ok(())
}

/// A NUL-terminated string argument as UTF-8.
///
/// # Safety
/// A non-null `ptr` must point to a NUL-terminated string valid for `'a`.
unsafe fn arg_str<'a>(ptr: *const c_char, arg: &str) -> Res<&'a str> {
    if ptr.is_null() {
        return Err(fail(EDGELM_ERR_NULL_POINTER, format!("`{arg}` is NULL")));
    }
    // SAFETY: non-null and NUL-terminated by the caller's contract.
    let s = unsafe { CStr::from_ptr(ptr) };
    s.to_str().map_err(|_| fail(EDGELM_ERR_INVALID_ARGUMENT, format!("`{arg}` is not valid UTF-8")))
}

/// A (pointer, length) byte argument; NULL is allowed only with length 0.
///
/// # Safety
/// A non-null `ptr` must point to `len` readable bytes valid for `'a`.
unsafe fn arg_bytes<'a>(ptr: *const u8, len: usize, arg: &str) -> Res<&'a [u8]> {
    if ptr.is_null() {
        if len == 0 {
            return Ok(&[]);
        }
        return Err(fail(EDGELM_ERR_NULL_POINTER, format!("`{arg}` is NULL but its length is {len}")));
    }
    if len > isize::MAX as usize {
        return Err(fail(EDGELM_ERR_INVALID_ARGUMENT, format!("length of `{arg}` ({len}) is impossibly large")));
    }
    // SAFETY: non-null, `len` readable bytes by the caller's contract, and
    // `len` fits a slice.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

impl edgelm_model {
    fn read(&self) -> RwLockReadGuard<'_, ModelInner> {
        // a panic while holding the lock cannot leave the engine half-changed
        // (packs are validated before they are kept), so poisoning is ignored
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, ModelInner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    fn new(engine: Engine, verify: VerifyChecksum, kv: KvType) -> Res<Box<edgelm_model>> {
        let mut inner = ModelInner { engine, names: Vec::new() };
        inner.refresh_names()?;
        Ok(Box::new(edgelm_model { inner: RwLock::new(inner), sessions: AtomicUsize::new(0), verify, kv }))
    }
}

impl ModelInner {
    /// Appends the names of domains added since the last call.
    fn refresh_names(&mut self) -> Res<()> {
        let model = self.engine.model()?;
        for d in &model.domains()[self.names.len()..] {
            let name = CString::new(d.name)
                .map_err(|_| fail(EDGELM_ERR_INVALID_MODEL, format!("domain name {:?} contains a NUL byte", d.name)))?;
            self.names.push(name);
        }
        Ok(())
    }
}

fn max_seq_or_default(engine: &Engine, max_seq: usize) -> Res<usize> {
    let limit = engine.max_seq();
    match max_seq {
        0 => Ok(limit),
        n if n > limit => Err(Error::SeqTooLong { requested: n, limit }.into()),
        n => Ok(n),
    }
}

// ---------------------------------------------------------------------------
// library

/// The library's version ("0.1.0"), a static string.
#[no_mangle]
pub extern "C" fn edgelm_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The message of the last call that failed on this thread ("" if none).
/// Valid until the next failing call on this thread.
#[no_mangle]
pub extern "C" fn edgelm_last_error() -> *const c_char {
    let ptr = catch_unwind(|| LAST_ERROR.try_with(|slot| slot.borrow().as_ptr()).ok());
    match ptr {
        Ok(Some(p)) => p,
        _ => c"".as_ptr(),
    }
}

/// A short static name for a status ("EDGELM_ERR_IO"; "unknown status" for a
/// value that is not one).
#[no_mangle]
pub extern "C" fn edgelm_status_name(status: c_int) -> *const c_char {
    let name: &CStr = match status {
        0 => c"EDGELM_OK",
        1 => c"EDGELM_ERR_NULL_POINTER",
        2 => c"EDGELM_ERR_INVALID_ARGUMENT",
        3 => c"EDGELM_ERR_IO",
        4 => c"EDGELM_ERR_CORRUPT_FILE",
        5 => c"EDGELM_ERR_UNSUPPORTED",
        6 => c"EDGELM_ERR_INVALID_MODEL",
        7 => c"EDGELM_ERR_WRONG_FILE",
        8 => c"EDGELM_ERR_UNKNOWN_DOMAIN",
        9 => c"EDGELM_ERR_PROMPT_TOO_LONG",
        10 => c"EDGELM_ERR_CONTEXT_FULL",
        11 => c"EDGELM_ERR_BUSY",
        12 => c"EDGELM_ERR_INTERNAL",
        _ => c"unknown status",
    };
    name.as_ptr()
}

/// Writes the default sampler settings to `*out`: greedy (temperature 0),
/// top_k 0, top_p 1, repeat_penalty 1, repeat_window 64, seed 42.
///
/// # Safety
/// `out` is NULL or points to writable memory for one edgelm_sampler.
#[no_mangle]
pub unsafe extern "C" fn edgelm_sampler_defaults(out: *mut edgelm_sampler) -> edgelm_status {
    guard("edgelm_sampler_defaults", || {
        // SAFETY: checked for NULL; writable by the caller's contract.
        *unsafe { arg_mut(out, "out") }? = SamplerConfig::default().into();
        Ok(())
    })
}

/// Checks sampler settings (EDGELM_ERR_INVALID_ARGUMENT says which is out of range).
///
/// # Safety
/// `sampler` is NULL or points to an edgelm_sampler.
#[no_mangle]
pub unsafe extern "C" fn edgelm_sampler_check(sampler: *const edgelm_sampler) -> edgelm_status {
    guard("edgelm_sampler_check", || {
        // SAFETY: checked for NULL; valid by the caller's contract.
        let s = unsafe { arg_ref(sampler, "sampler") }?;
        SamplerConfig::from(s).validate()?;
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// models

/// Opens the base model file at `path` (memory-mapped; the file must not be
/// changed while the model is open). The checksum is verified.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn edgelm_model_open(path: *const c_char, out: *mut *mut edgelm_model) -> edgelm_status {
    guard("edgelm_model_open", || {
        out_ptr(out, "out")?;
        // SAFETY: NUL-terminated by the caller's contract.
        let path = unsafe { arg_path(path, "path") }?;
        let model =
            edgelm_model::new(Engine::open(&path, EngineOptions::default())?, VerifyChecksum::Yes, KvType::F32)?;
        // SAFETY: `out` is non-null and writable by the caller's contract.
        unsafe { *out = Box::into_raw(model) };
        Ok(())
    })
}

/// Opens a base model from `len` bytes at `data` (a file read into memory,
/// flash). The bytes are copied, so the buffer may be reused at once; the
/// checksum is verified.
///
/// # Safety
/// `data` is NULL or points to `len` readable bytes; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn edgelm_model_open_buffer(
    data: *const u8,
    len: usize,
    out: *mut *mut edgelm_model,
) -> edgelm_status {
    guard("edgelm_model_open_buffer", || {
        out_ptr(out, "out")?;
        if data.is_null() {
            return Err(fail(EDGELM_ERR_NULL_POINTER, "`data` is NULL"));
        }
        // SAFETY: `len` readable bytes at `data` by the caller's contract.
        let bytes = unsafe { arg_bytes(data, len, "data") }?;
        let engine = Engine::from_bytes(AlignedBytes::from_slice(bytes), EngineOptions::default())?;
        let model = edgelm_model::new(engine, VerifyChecksum::Yes, KvType::F32)?;
        // SAFETY: `out` is non-null and writable by the caller's contract.
        unsafe { *out = Box::into_raw(model) };
        Ok(())
    })
}

/// Writes the default open options to `*out`: 1 thread, checksums verified, f32 KV cache
/// (what edgelm_model_open() and edgelm_model_open_buffer() use).
///
/// # Safety
/// `out` is NULL or points to writable memory for one edgelm_open_options.
#[no_mangle]
pub unsafe extern "C" fn edgelm_open_options_defaults(out: *mut edgelm_open_options) -> edgelm_status {
    guard("edgelm_open_options_defaults", || {
        // SAFETY: checked for NULL; writable by the caller's contract.
        *unsafe { arg_mut(out, "out") }? = edgelm_open_options::default();
        Ok(())
    })
}

/// Like edgelm_model_open(), with the threads and the checksum check from
/// `*options`.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `options` is NULL or points to
/// an edgelm_open_options; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn edgelm_model_open_with(
    path: *const c_char,
    options: *const edgelm_open_options,
    out: *mut *mut edgelm_model,
) -> edgelm_status {
    guard("edgelm_model_open_with", || {
        out_ptr(out, "out")?;
        // SAFETY: NUL-terminated by the caller's contract.
        let path = unsafe { arg_path(path, "path") }?;
        // SAFETY: checked for NULL; valid by the caller's contract.
        let (opts, verify, kv) = unsafe { arg_ref(options, "options") }?.engine_options()?;
        let model = edgelm_model::new(Engine::open(&path, opts)?, verify, kv)?;
        // SAFETY: `out` is non-null and writable by the caller's contract.
        unsafe { *out = Box::into_raw(model) };
        Ok(())
    })
}

/// `len` bytes at `data` for as long as the caller keeps them.
///
/// # Safety
/// `data` is NULL or points to `len` readable bytes that stay valid and
/// unchanged until the model they are given to has been freed.
unsafe fn arg_kept_bytes(data: *const u8, len: usize) -> Res<&'static [u8]> {
    if data.is_null() {
        return Err(fail(EDGELM_ERR_NULL_POINTER, "`data` is NULL"));
    }
    // SAFETY: readable for `len` bytes until the model is freed, by the
    // caller's contract; the model (and so the engine holding this slice) is
    // freed only by edgelm_model_free, which refuses while sessions borrow it.
    unsafe { arg_bytes(data, len, "data") }
}

/// Opens a base model from `len` bytes at `data` **in place** (no copy): for
/// a model in flash, a mapped file or a buffer the caller keeps. `data` must
/// start on a 64-byte boundary (EDGELM_ERR_INVALID_ARGUMENT otherwise) and
/// stay valid and unchanged until edgelm_model_free() has returned.
/// Threads and the checksum check come from `*options`.
///
/// # Safety
/// `data` is NULL or points to `len` readable bytes kept as above; `options`
/// is NULL or points to an edgelm_open_options; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn edgelm_model_open_buffer_in_place(
    data: *const u8,
    len: usize,
    options: *const edgelm_open_options,
    out: *mut *mut edgelm_model,
) -> edgelm_status {
    guard("edgelm_model_open_buffer_in_place", || {
        out_ptr(out, "out")?;
        // SAFETY: kept until the model is freed, by the caller's contract.
        let bytes = unsafe { arg_kept_bytes(data, len) }?;
        // SAFETY: checked for NULL; valid by the caller's contract.
        let (opts, verify, kv) = unsafe { arg_ref(options, "options") }?.engine_options()?;
        let model = edgelm_model::new(Engine::from_static(bytes, opts)?, verify, kv)?;
        // SAFETY: `out` is non-null and writable by the caller's contract.
        unsafe { *out = Box::into_raw(model) };
        Ok(())
    })
}

/// A path argument (any bytes but NUL on Unix).
///
/// # Safety
/// A non-null `ptr` must point to a NUL-terminated string.
unsafe fn arg_path(ptr: *const c_char, arg: &str) -> Res<std::path::PathBuf> {
    if ptr.is_null() {
        return Err(fail(EDGELM_ERR_NULL_POINTER, format!("`{arg}` is NULL")));
    }
    // SAFETY: non-null and NUL-terminated by the caller's contract.
    let bytes = unsafe { CStr::from_ptr(ptr) }.to_bytes();
    if bytes.is_empty() {
        return Err(fail(EDGELM_ERR_INVALID_ARGUMENT, format!("`{arg}` is empty")));
    }
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Ok(std::ffi::OsStr::from_bytes(bytes).into())
    }
    #[cfg(not(unix))]
    {
        std::str::from_utf8(bytes)
            .map(Into::into)
            .map_err(|_| fail(EDGELM_ERR_INVALID_ARGUMENT, format!("`{arg}` is not valid UTF-8")))
    }
}

/// Exclusive access to the engine for adding a pack: refused while sessions are open.
fn with_engine_mut(model: &edgelm_model, f: impl FnOnce(&mut Engine) -> Result<(), Error>) -> Res {
    let mut inner = model.write();
    let open = model.sessions.load(Ordering::Acquire);
    if open > 0 {
        return Err(fail(
            EDGELM_ERR_BUSY,
            format!("{open} session(s) are open on this model; add packs before opening sessions"),
        ));
    }
    f(&mut inner.engine)?;
    inner.refresh_names()
}

/// Adds the domain pack file at `path` (memory-mapped; checksum verified unless
/// the model was opened with verify_checksum = 0).
/// A refused pack (another base, a domain already loaded) leaves the model
/// as it was. EDGELM_ERR_BUSY while sessions are open on the model.
///
/// # Safety
/// `model` is NULL or from edgelm_model_open*; `path` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn edgelm_model_add_pack(model: *mut edgelm_model, path: *const c_char) -> edgelm_status {
    guard("edgelm_model_add_pack", || {
        // SAFETY: a live model by the caller's contract (shared: it has a lock).
        let model = unsafe { arg_ref(model, "model") }?;
        // SAFETY: NUL-terminated by the caller's contract.
        let path = unsafe { arg_path(path, "path") }?;
        with_engine_mut(model, |e| e.add_pack_with(&path, model.verify))
    })
}

/// Adds a domain pack from `len` bytes at `data` (copied; checksum as for the base).
/// Otherwise as edgelm_model_add_pack().
///
/// # Safety
/// `model` is NULL or from edgelm_model_open*; `data` is NULL or points to `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn edgelm_model_add_pack_buffer(
    model: *mut edgelm_model,
    data: *const u8,
    len: usize,
) -> edgelm_status {
    guard("edgelm_model_add_pack_buffer", || {
        // SAFETY: a live model by the caller's contract.
        let model = unsafe { arg_ref(model, "model") }?;
        if data.is_null() {
            return Err(fail(EDGELM_ERR_NULL_POINTER, "`data` is NULL"));
        }
        // SAFETY: `len` readable bytes by the caller's contract.
        let bytes = unsafe { arg_bytes(data, len, "data") }?;
        with_engine_mut(model, |e| e.add_pack_bytes_with(AlignedBytes::from_slice(bytes), model.verify))
    })
}

/// Adds a domain pack from `len` bytes at `data` in place (no copy), under
/// the contract of edgelm_model_open_buffer_in_place(): 64-byte aligned,
/// valid and unchanged until the model has been freed. Otherwise as
/// edgelm_model_add_pack().
///
/// # Safety
/// `model` is NULL or from edgelm_model_open*; `data` is NULL or points to
/// `len` readable bytes kept as above.
#[no_mangle]
pub unsafe extern "C" fn edgelm_model_add_pack_buffer_in_place(
    model: *mut edgelm_model,
    data: *const u8,
    len: usize,
) -> edgelm_status {
    guard("edgelm_model_add_pack_buffer_in_place", || {
        // SAFETY: a live model by the caller's contract.
        let model = unsafe { arg_ref(model, "model") }?;
        // SAFETY: kept until the model is freed, by the caller's contract.
        let bytes = unsafe { arg_kept_bytes(data, len) }?;
        with_engine_mut(model, |e| e.add_pack_static(bytes, model.verify))
    })
}

/// Frees a model. EDGELM_ERR_BUSY (and nothing is freed) while sessions are
/// open on it. NULL is a no-op.
///
/// # Safety
/// `model` is NULL or from edgelm_model_open* and not yet freed; no other
/// thread uses it during the call.
#[no_mangle]
pub unsafe extern "C" fn edgelm_model_free(model: *mut edgelm_model) -> edgelm_status {
    guard("edgelm_model_free", || {
        if model.is_null() {
            return Ok(());
        }
        // SAFETY: a live model by the caller's contract.
        let open = unsafe { &*model }.sessions.load(Ordering::Acquire);
        if open > 0 {
            return Err(fail(
                EDGELM_ERR_BUSY,
                format!("{open} session(s) are still open on this model; free them first"),
            ));
        }
        // SAFETY: from Box::into_raw in edgelm_model_open*, freed once, no session borrows it.
        drop(unsafe { Box::from_raw(model) });
        Ok(())
    })
}

/// The number of loaded domains (the base's, then each pack's), in `*count`.
///
/// # Safety
/// `model` is NULL or a live model; `count` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn edgelm_model_domain_count(model: *const edgelm_model, count: *mut usize) -> edgelm_status {
    guard("edgelm_model_domain_count", || {
        // SAFETY: a live model by the caller's contract.
        let model = unsafe { arg_ref(model, "model") }?;
        // SAFETY: checked for NULL; writable by the caller's contract.
        let count = unsafe { arg_mut(count, "count") }?;
        *count = model.read().names.len();
        Ok(())
    })
}

/// The name of domain `index` (0 ≤ index < count; 0 is the base's first
/// domain, the default) in `*name`: a NUL-terminated string owned by the
/// model, valid until edgelm_model_free().
///
/// # Safety
/// `model` is NULL or a live model; `name` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn edgelm_model_domain_name(
    model: *const edgelm_model,
    index: usize,
    name: *mut *const c_char,
) -> edgelm_status {
    guard("edgelm_model_domain_name", || {
        // SAFETY: a live model by the caller's contract.
        let model = unsafe { arg_ref(model, "model") }?;
        // SAFETY: checked for NULL; writable by the caller's contract.
        let name = unsafe { arg_mut(name, "name") }?;
        let inner = model.read();
        let n = inner.names.len();
        let s = inner.names.get(index).ok_or_else(|| {
            fail(EDGELM_ERR_INVALID_ARGUMENT, format!("domain index {index} is out of range (the model has {n})"))
        })?;
        // the CString's bytes stay where they are until the model is freed (names are only appended)
        *name = s.as_ptr();
        Ok(())
    })
}

/// The model's context length in tokens (the most a session can use), in `*max_seq`.
///
/// # Safety
/// `model` is NULL or a live model; `max_seq` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn edgelm_model_max_seq(model: *const edgelm_model, max_seq: *mut usize) -> edgelm_status {
    guard("edgelm_model_max_seq", || {
        // SAFETY: a live model by the caller's contract.
        let model = unsafe { arg_ref(model, "model") }?;
        // SAFETY: checked for NULL; writable by the caller's contract.
        let max_seq = unsafe { arg_mut(max_seq, "max_seq") }?;
        *max_seq = model.read().engine.max_seq();
        Ok(())
    })
}

/// The arena size in bytes that a session of `max_seq` tokens needs (0 =
/// the model's context length), for edgelm_session_new_in_arena(), in
/// `*bytes`. It covers every domain loaded now.
///
/// # Safety
/// `model` is NULL or a live model; `bytes` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn edgelm_model_arena_size(
    model: *const edgelm_model,
    max_seq: usize,
    bytes: *mut usize,
) -> edgelm_status {
    guard("edgelm_model_arena_size", || {
        // SAFETY: a live model by the caller's contract.
        let model = unsafe { arg_ref(model, "model") }?;
        // SAFETY: checked for NULL; writable by the caller's contract.
        let bytes = unsafe { arg_mut(bytes, "bytes") }?;
        let inner = model.read();
        let max_seq = max_seq_or_default(&inner.engine, max_seq)?;
        *bytes =
            inner.engine.model()?.arena_bytes_for(&SessionOptions { kv: model.kv, ..SessionOptions::new(max_seq) });
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// sessions

/// Where a session's arena comes from.
enum ArenaSource {
    /// The library allocates exactly what is needed.
    Library,
    /// The caller's `len` bytes at `ptr`.
    Caller { ptr: *mut u8, len: usize },
}

/// Opens a session on `model` and writes it to `out`.
///
/// # Safety
/// The pointers are NULL or valid as the public functions document.
unsafe fn open_session(
    model: *const edgelm_model,
    domain: *const c_char,
    max_seq: usize,
    sampler: *const edgelm_sampler,
    arena: ArenaSource,
    out: *mut *mut edgelm_session,
) -> Res {
    out_ptr(out, "out")?;
    // SAFETY: a live model by the caller's contract.
    let owner = unsafe { arg_ref(model, "model") }?;
    let domain = if domain.is_null() {
        None
    } else {
        // SAFETY: NUL-terminated by the caller's contract.
        Some(unsafe { arg_str(domain, "domain") }?)
    };
    let sampler = if sampler.is_null() {
        SamplerConfig::default()
    } else {
        // SAFETY: non-null, valid by the caller's contract.
        SamplerConfig::from(unsafe { &*sampler })
    };
    sampler.validate()?;
    let caller_arena = match arena {
        ArenaSource::Library => None,
        ArenaSource::Caller { ptr, len } => {
            if ptr.is_null() {
                return Err(fail(EDGELM_ERR_NULL_POINTER, "`arena` is NULL"));
            }
            if len > isize::MAX as usize {
                return Err(fail(EDGELM_ERR_INVALID_ARGUMENT, format!("`arena_len` {len} is impossibly large")));
            }
            // SAFETY: `len` writable bytes at `ptr`, lent to the session until
            // it is freed, by the caller's contract.
            Some(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
        }
    };

    // Under the read lock, so that no pack is added meanwhile; the count goes
    // up before the lock is released, so that none is added afterwards.
    let inner = owner.read();
    let engine: &Engine = &inner.engine;
    let max_seq = max_seq_or_default(engine, max_seq)?;
    let opts = SessionOptions { sampler, kv: owner.kv, ..SessionOptions::new(max_seq) };
    let view = engine.model()?;
    // SAFETY: `view` borrows the engine's file bytes (mapped or heap), which do
    // not move and are not freed or changed while a session is open: the
    // model refuses add_pack and free while `sessions` > 0, and the count is
    // raised below before the lock is released (and lowered only after the
    // session is dropped).
    let view: Model<'static> = unsafe { std::mem::transmute::<Model<'_>, Model<'static>>(view) };
    let model_ptr = Box::into_raw(Box::new(view));
    let arena_ptr: *mut [u8] = match caller_arena {
        // SAFETY: `model_ptr` is a live box (just made).
        None => Box::into_raw(vec![0u8; unsafe { &*model_ptr }.arena_bytes_for(&opts)].into_boxed_slice()),
        Some(_) => std::ptr::slice_from_raw_parts_mut(std::ptr::null_mut(), 0),
    };
    // The handle owns both boxes from here on, so an early return frees them.
    let mut handle = Box::new(edgelm_session {
        session: None,
        model: model_ptr,
        arena: arena_ptr,
        owner,
        piece: Vec::with_capacity(64),
    });
    owner.sessions.fetch_add(1, Ordering::AcqRel);
    let arena: &'static mut [u8] = match caller_arena {
        // SAFETY: the caller lends these bytes until the session is freed.
        Some(a) => unsafe { std::mem::transmute::<&mut [u8], &'static mut [u8]>(a) },
        // SAFETY: the library's arena box lives until the handle drops it,
        // after the session; nothing else refers to it.
        None => unsafe { &mut *arena_ptr },
    };
    // SAFETY: the model box lives until the handle drops it, after the session.
    let view: &'static Model<'static> = unsafe { &*model_ptr };
    // SAFETY: the engine outlives every session on it (see above).
    let engine: &'static Engine = unsafe { &*(engine as *const Engine) };
    handle.session = Some(engine.session(view, domain, arena, opts)?);
    drop(inner);
    // SAFETY: `out` is non-null and writable by the caller's contract.
    unsafe { *out = Box::into_raw(handle) };
    Ok(())
}

/// Opens a session on `domain` (NULL: the base's first domain) with a
/// context of `max_seq` tokens (0: the model's) and `sampler` (NULL:
/// edgelm_sampler_defaults()); the library allocates its arena. The session
/// keeps a reference to the model: free it before the model.
///
/// # Safety
/// `model` is NULL or a live model; `domain` is NULL or a NUL-terminated
/// string; `sampler` is NULL or valid; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn edgelm_session_new(
    model: *const edgelm_model,
    domain: *const c_char,
    max_seq: usize,
    sampler: *const edgelm_sampler,
    out: *mut *mut edgelm_session,
) -> edgelm_status {
    guard("edgelm_session_new", || {
        // SAFETY: the arguments are valid by the caller's contract.
        unsafe { open_session(model, domain, max_seq, sampler, ArenaSource::Library, out) }
    })
}

/// As edgelm_session_new(), but every buffer the session uses (activations,
/// KV cache) lives in the caller's `arena_len` bytes at `arena` (any
/// alignment); edgelm_model_arena_size() says how many are needed. The
/// arena must stay valid and untouched until the session is freed.
///
/// # Safety
/// As edgelm_session_new(); `arena` is NULL or points to `arena_len`
/// writable bytes that nothing else uses until edgelm_session_free().
#[no_mangle]
pub unsafe extern "C" fn edgelm_session_new_in_arena(
    model: *const edgelm_model,
    domain: *const c_char,
    max_seq: usize,
    sampler: *const edgelm_sampler,
    arena: *mut c_void,
    arena_len: usize,
    out: *mut *mut edgelm_session,
) -> edgelm_status {
    guard("edgelm_session_new_in_arena", || {
        let source = ArenaSource::Caller { ptr: arena.cast(), len: arena_len };
        // SAFETY: the arguments are valid by the caller's contract.
        unsafe { open_session(model, domain, max_seq, sampler, source, out) }
    })
}

/// The session behind a handle.
fn live(s: &mut edgelm_session) -> Res<&mut Session<'static, 'static>> {
    s.session.as_mut().ok_or_else(|| fail(EDGELM_ERR_INTERNAL, "the session was not opened"))
}

/// Starts a new context: the domain's start tokens, then the `len` bytes of
/// UTF-8 text at `text` (`text` may be NULL when `len` is 0: an empty
/// prompt). The number of prompt tokens goes to `*n_tokens` unless it is NULL.
///
/// # Safety
/// `session` is NULL or a live session; `text` is NULL or points to `len`
/// readable bytes; `n_tokens` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn edgelm_session_feed_prompt(
    session: *mut edgelm_session,
    text: *const c_char,
    len: usize,
    n_tokens: *mut usize,
) -> edgelm_status {
    guard("edgelm_session_feed_prompt", || {
        // SAFETY: a live session used by this thread only, by the caller's contract.
        let s = unsafe { arg_mut(session, "session") }?;
        // SAFETY: `len` readable bytes by the caller's contract.
        let bytes = unsafe { arg_bytes(text.cast(), len, "text") }?;
        let text = std::str::from_utf8(bytes).map_err(|e| {
            fail(EDGELM_ERR_INVALID_ARGUMENT, format!("`text` is not valid UTF-8 (at byte {})", e.valid_up_to()))
        })?;
        let n = live(s)?.feed_prompt(text)?;
        // SAFETY: NULL or writable by the caller's contract.
        if let Some(out) = unsafe { n_tokens.as_mut() } {
            *out = n;
        }
        Ok(())
    })
}

/// Generates up to `max_tokens` tokens after the prompt (with no prompt fed,
/// from the start token), passing each piece of text to `on_piece` (NULL:
/// the text is discarded) with `user_data`. Stops at end-of-text, a full
/// context, max_tokens, or when `on_piece` returns non-zero; why goes to
/// `*reason` unless it is NULL. Calling it again continues the text.
///
/// # Safety
/// `session` is NULL or a live session; `on_piece` is NULL or a function
/// that does not call into this session; `reason` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn edgelm_session_generate(
    session: *mut edgelm_session,
    max_tokens: usize,
    on_piece: edgelm_piece_fn,
    user_data: *mut c_void,
    reason: *mut edgelm_stop_reason,
) -> edgelm_status {
    guard("edgelm_session_generate", || {
        // SAFETY: a live session used by this thread only, by the caller's contract.
        let s = unsafe { arg_mut(session, "session") }?;
        let edgelm_session { session, piece, .. } = s;
        let session = session.as_mut().ok_or_else(|| fail(EDGELM_ERR_INTERNAL, "the session was not opened"))?;
        let stop = session.generate_while(max_tokens, &mut |text| {
            let Some(f) = on_piece else { return ControlFlow::Continue(()) };
            piece.clear();
            piece.extend_from_slice(text.as_bytes());
            piece.push(0);
            // SAFETY: `piece` holds `text.len()` bytes and a NUL for the call;
            // the callback is a valid function by the caller's contract.
            let r = unsafe { f(piece.as_ptr().cast(), text.len(), user_data) };
            if r == 0 {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            }
        })?;
        let why = match stop {
            StopReason::EndOfText => edgelm_stop_reason::EDGELM_STOP_END_OF_TEXT,
            StopReason::MaxTokens => edgelm_stop_reason::EDGELM_STOP_MAX_TOKENS,
            StopReason::ContextFull => edgelm_stop_reason::EDGELM_STOP_CONTEXT_FULL,
            StopReason::Stopped => edgelm_stop_reason::EDGELM_STOP_CALLBACK,
        };
        // SAFETY: NULL or writable by the caller's contract.
        if let Some(out) = unsafe { reason.as_mut() } {
            *out = why;
        }
        Ok(())
    })
}

/// Forgets the context (the prompt and generated tokens); the sampler's
/// random stream goes on, so the next text differs unless you open a new
/// session with the same seed.
///
/// # Safety
/// `session` is NULL or a live session used by this thread only.
#[no_mangle]
pub unsafe extern "C" fn edgelm_session_reset(session: *mut edgelm_session) -> edgelm_status {
    guard("edgelm_session_reset", || {
        // SAFETY: a live session used by this thread only, by the caller's contract.
        let s = unsafe { arg_mut(session, "session") }?;
        live(s)?.reset();
        Ok(())
    })
}

/// The number of tokens in the session's context (prompt and generated), in `*count`.
///
/// # Safety
/// `session` is NULL or a live session; `count` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn edgelm_session_token_count(
    session: *const edgelm_session,
    count: *mut usize,
) -> edgelm_status {
    guard("edgelm_session_token_count", || {
        // SAFETY: a live session by the caller's contract.
        let s = unsafe { arg_ref(session, "session") }?;
        // SAFETY: checked for NULL; writable by the caller's contract.
        let count = unsafe { arg_mut(count, "count") }?;
        *count = s.session.as_ref().map_or(0, |s| s.tokens().len());
        Ok(())
    })
}

/// Frees a session (and the arena, if the library allocated it; a caller's
/// arena may be reused afterwards). NULL is a no-op.
///
/// # Safety
/// `session` is NULL or a live session, not used by another thread meanwhile.
#[no_mangle]
pub unsafe extern "C" fn edgelm_session_free(session: *mut edgelm_session) -> edgelm_status {
    guard("edgelm_session_free", || {
        if !session.is_null() {
            // SAFETY: from Box::into_raw in open_session, freed once by the caller's contract.
            drop(unsafe { Box::from_raw(session) });
        }
        Ok(())
    })
}
