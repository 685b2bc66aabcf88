//! Core 1 as the runtime's [`Parallel`] worker: started with PSCI `CPU_ON`
//! (QEMU: `-smp 2`), it waits for a job and runs `f(1)` while core 0 runs
//! `f(0)`. The runtime splits matrix rows between the two, so every row is
//! computed exactly as on one core: the same bytes, sooner.

use core::arch::asm;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, Ordering};

use edgelm_runtime::kernels::Parallel;

const PSCI_CPU_ON: u64 = 0xc400_0003;
/// MPIDR_EL1 affinity of the virt machine's second core.
const CORE1: u64 = 1;

type Job = *const (dyn Fn(usize) + Sync);

/// The job core 0 publishes: `seq` counts jobs given, `done` jobs finished.
struct Mailbox {
    seq: AtomicU32,
    done: AtomicU32,
    job: UnsafeCell<Option<Job>>,
}

// SAFETY: `job` is written by core 0 only while core 1 is idle (done == seq)
// and read by core 1 only after it observed the new `seq` (Release/Acquire),
// until it publishes `done`; core 0 waits for that before returning.
unsafe impl Sync for Mailbox {}

static MAILBOX: Mailbox = Mailbox { seq: AtomicU32::new(0), done: AtomicU32::new(0), job: UnsafeCell::new(None) };

/// Core 1, running [`worker`].
pub struct SecondCore(());

impl SecondCore {
    /// Powers core 1 on; `None` where there is none (QEMU without `-smp 2`).
    pub fn start() -> Option<Self> {
        extern "C" {
            fn _start_core1();
        }
        let status: i64;
        // SAFETY: PSCI CPU_ON through QEMU virt's HVC conduit: core 1 starts
        // at `_start_core1` (boot.rs) on its own stack; x0 carries the status.
        unsafe {
            asm!("hvc #0", inout("x0") PSCI_CPU_ON as i64 => status, in("x1") CORE1,
                 in("x2") _start_core1 as *const () as usize, in("x3") 0u64, options(nostack))
        };
        (status == 0).then_some(SecondCore(()))
    }
}

fn wait_for_event() {
    // SAFETY: waits for an event (`sev` from the other core); no memory access.
    unsafe { asm!("wfe", options(nomem, nostack, preserves_flags)) }
}

fn send_event() {
    // SAFETY: wakes the other core from `wfe`; no memory access.
    unsafe { asm!("dsb ish", "sev", options(nostack, preserves_flags)) }
}

impl Parallel for SecondCore {
    fn threads(&self) -> usize {
        2
    }

    fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        // SAFETY (lifetime): the pointer outlives its use: core 1 drops it
        // before publishing `done`, and this call returns only after that.
        let job: Job = unsafe { core::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f) };
        // SAFETY: core 1 is idle (every earlier job is done), see `Mailbox`.
        unsafe { *MAILBOX.job.get() = Some(job) };
        let seq = MAILBOX.seq.fetch_add(1, Ordering::Release) + 1;
        send_event();
        f(0);
        while MAILBOX.done.load(Ordering::Acquire) != seq {
            wait_for_event();
        }
    }
}

/// Core 1's loop, entered from boot.rs with its stack, FPU and MMU ready.
pub extern "C" fn worker() -> ! {
    let mut seen = 0;
    loop {
        while MAILBOX.seq.load(Ordering::Acquire) == seen {
            wait_for_event();
        }
        seen = seen.wrapping_add(1);
        // SAFETY: job `seen` was published before `seq` (Acquire above) and
        // stays valid until `done` says it finished, see `Mailbox`.
        if let Some(job) = unsafe { *MAILBOX.job.get() } {
            // SAFETY: as above: core 0 is inside `run`, which keeps `f` alive.
            unsafe { (*job)(1) };
        }
        MAILBOX.done.store(seen, Ordering::Release);
        send_event();
    }
}
