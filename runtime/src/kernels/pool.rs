//! A persistent thread pool for splitting matrix rows (std only); re-exported
//! as [`crate::threads::Pool`].
//!
//! Workers are spawned once. A job is published by bumping a generation
//! counter; a waiting worker spins briefly (`spin_loop`, then `yield_now`, so
//! it never burns a core that another thread wants) and then parks. The
//! caller runs share 0 itself and waits for the others the same way.
//! Publishing a job and waiting for it allocate nothing.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use std::vec::Vec;

use super::Parallel;

/// Busy-wait iterations (with `spin_loop`) before a waiter starts yielding.
const SPIN: u32 = 200;
/// How long an idle worker keeps polling (yielding) before it parks.
const POLL: Duration = Duration::from_micros(200);

type Job = *const (dyn Fn(usize) + Sync + 'static);

struct Shared {
    /// Bumped once per job; workers run a job when they see a new value.
    generation: AtomicU64,
    /// Workers that have not finished the current job.
    pending: AtomicUsize,
    /// The current job; written only while no worker reads it (see `run`).
    job: UnsafeCell<Option<Job>>,
    panicked: AtomicBool,
    shutdown: AtomicBool,
}

// SAFETY: `job` is written by `Pool::run` only before it publishes a new
// generation (Release) and while every worker is idle (pending == 0), and read
// by workers only after they observe that generation (Acquire) and before they
// decrement `pending`; the pointee is `Sync`.
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw job pointer is only dereferenced under that protocol.
unsafe impl Send for Shared {}

/// A fixed set of worker threads; `threads()` counts the calling thread too.
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serialises `run` calls from different threads.
    lock: Mutex<()>,
}

impl Pool {
    /// A pool that runs jobs on `threads` threads: the caller plus
    /// `threads - 1` workers spawned now (`threads` of 0 is treated as 1).
    /// Panics if the OS refuses a thread; [`Pool::try_new`] reports that instead.
    #[allow(clippy::expect_used)] // documented panic (like std::thread::spawn); try_new is the fallible form
    pub fn new(threads: usize) -> Pool {
        Self::try_new(threads).expect("cannot spawn an edgelm worker thread")
    }

    /// As [`Pool::new`], with a failed thread spawn as an error (workers
    /// already started are shut down again).
    pub fn try_new(threads: usize) -> std::io::Result<Pool> {
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            pending: AtomicUsize::new(0),
            job: UnsafeCell::new(None),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
        });
        let mut pool = Pool { shared, workers: Vec::new(), lock: Mutex::new(()) };
        for i in 1..threads.max(1) {
            let s = Arc::clone(&pool.shared);
            // on error, dropping `pool` stops the workers started so far
            let handle = thread::Builder::new().name(std::format!("edgelm-worker-{i}")).spawn(move || worker(&s, i))?;
            pool.workers.push(handle);
        }
        Ok(pool)
    }

    /// Threads a job runs on, the caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Calls `f(i)` for `i` in `0..threads()`: `f(0)` on the calling thread,
    /// the others on the workers; returns when all have returned. A panic in
    /// a worker is re-raised here.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.workers.is_empty() {
            return f(0);
        }
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        // SAFETY: the lifetime is erased only for the duration of this call:
        // we do not return before every worker has finished with the job
        // (pending == 0 below), even when `f(0)` panics (`Wait` drop guard).
        let job: Job = unsafe { core::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f) };
        // SAFETY: no worker reads `job` now: the previous `run` waited until
        // `pending` reached 0, and workers read it only after a new generation.
        unsafe { *s.job.get() = Some(job) };
        s.pending.store(self.workers.len(), Ordering::Relaxed);
        s.generation.fetch_add(1, Ordering::Release);
        for w in &self.workers {
            w.thread().unpark();
        }
        struct Wait<'a>(&'a Shared);
        impl Drop for Wait<'_> {
            fn drop(&mut self) {
                wait_until(|| self.0.pending.load(Ordering::Acquire) == 0, None);
            }
        }
        {
            let _wait = Wait(s);
            f(0);
        }
        if s.panicked.swap(false, Ordering::Relaxed) {
            panic!("an edgelm worker thread panicked");
        }
    }
}

impl Parallel for Pool {
    fn threads(&self) -> usize {
        Pool::threads(self)
    }
    fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        Pool::run(self, f)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.generation.fetch_add(1, Ordering::Release);
        for w in &self.workers {
            w.thread().unpark();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl core::fmt::Debug for Pool {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Pool").field("threads", &self.threads()).finish()
    }
}

/// Spins (`spin_loop`), then yields, until `done()`; with `park_after`, parks
/// once that long has passed (woken by `unpark`; spurious wake-ups re-check).
fn wait_until(done: impl Fn() -> bool, park_after: Option<Duration>) {
    for _ in 0..SPIN {
        if done() {
            return;
        }
        core::hint::spin_loop();
    }
    let start = Instant::now();
    loop {
        if done() {
            return;
        }
        match park_after {
            Some(d) if start.elapsed() >= d => thread::park(),
            _ => thread::yield_now(),
        }
    }
}

fn worker(s: &Shared, index: usize) {
    let mut seen = 0u64;
    loop {
        wait_until(|| s.generation.load(Ordering::Acquire) != seen, Some(POLL));
        seen = s.generation.load(Ordering::Acquire);
        if s.shutdown.load(Ordering::Acquire) {
            return;
        }
        // SAFETY: a new generation was published after `job` was written
        // (Release/Acquire), and `run` keeps the job alive until we decrement
        // `pending` below.
        let job = unsafe { *s.job.get() };
        if let Some(job) = job {
            // SAFETY: see above: the pointee outlives this call.
            let f = unsafe { &*job };
            if catch_unwind(AssertUnwindSafe(|| f(index))).is_err() {
                s.panicked.store(true, Ordering::Relaxed);
            }
        }
        s.pending.fetch_sub(1, Ordering::Release);
    }
}
