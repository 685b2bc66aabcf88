//! Core 1 as the runtime's [`Parallel`] worker: started with PSCI `CPU_ON`
//! (QEMU: `-smp 2`), it sleeps in `wfi` until core 0 posts a job and wakes
//! it with a software-generated interrupt (GICv2 SGI), then runs `f(1)`
//! while core 0 runs `f(0)`. The runtime splits matrix rows between the two,
//! so every row is computed exactly as on one core: the same bytes.
//! (`wfi`, not a `wfe` spin: an idle emulated core then costs no host CPU.)

use core::arch::asm;
use core::cell::UnsafeCell;
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{AtomicU32, Ordering};

use edgelm_runtime::kernels::Parallel;

const PSCI_CPU_ON: u64 = 0xc400_0003;
/// MPIDR_EL1 affinity of the virt machine's second core.
const CORE1: u64 = 1;

/// QEMU virt's GICv2 (device tree `intc@8000000`): distributor, CPU interface.
const GICD: usize = 0x0800_0000;
const GICC: usize = 0x0801_0000;
const GICD_CTLR: usize = 0x000;
const GICD_ISENABLER0: usize = 0x100;
const GICD_SGIR: usize = 0xf00;
const GICC_CTLR: usize = 0x000;
const GICC_PMR: usize = 0x004;
const GICC_IAR: usize = 0x00c;
const GICC_EOIR: usize = 0x010;
/// The interrupt that wakes core 1 (SGI 0, to CPU 1 only).
const WAKE_SGI: u32 = 0;
const SGIR_TO_CORE1: u32 = (1 << 1) << 16;
const SPURIOUS: u32 = 1023;

fn gic_write(addr: usize, value: u32) {
    // SAFETY: `addr` is a GICv2 register (GICD/GICC above), mapped as device memory.
    unsafe { write_volatile(addr as *mut u32, value) }
}

fn gic_read(addr: usize) -> u32 {
    // SAFETY: as in `gic_write`.
    unsafe { read_volatile(addr as *const u32) }
}

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
        gic_write(GICD + GICD_CTLR, 1); // forward interrupts (the SGI) to the cores
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
        // the job is visible before the interrupt that announces it
        // SAFETY: a barrier; no other effect.
        unsafe { asm!("dsb ish", options(nostack, preserves_flags)) };
        gic_write(GICD + GICD_SGIR, SGIR_TO_CORE1 | WAKE_SGI);
        f(0);
        while MAILBOX.done.load(Ordering::Acquire) != seq {
            wait_for_event();
        }
    }
}

/// Core 1's loop, entered from boot.rs with its stack, FPU and MMU ready.
pub extern "C" fn worker() -> ! {
    // this core's view of the GIC: the wake-up SGI enabled, every priority let through
    gic_write(GICD + GICD_ISENABLER0, 1 << WAKE_SGI);
    gic_write(GICC + GICC_PMR, 0xff);
    gic_write(GICC + GICC_CTLR, 1);
    let mut seen = 0;
    loop {
        while MAILBOX.seq.load(Ordering::Acquire) == seen {
            // IRQs stay masked (PSTATE.I): a pending one ends `wfi` without
            // being taken; it is acknowledged here instead.
            // SAFETY: waits for an interrupt; no memory access.
            unsafe { asm!("wfi", options(nomem, nostack, preserves_flags)) };
            let irq = gic_read(GICC + GICC_IAR);
            if irq & 0x3ff != SPURIOUS {
                gic_write(GICC + GICC_EOIR, irq);
            }
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
