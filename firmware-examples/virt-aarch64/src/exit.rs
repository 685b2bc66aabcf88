//! Ending the program with a status QEMU passes on: semihosting `SYS_EXIT`
//! (QEMU runs with `-semihosting-config enable=on`). Without a semihosting
//! host (a real board) the trap faults, and `boot::fault` powers off
//! through PSCI `SYSTEM_OFF` instead.

use core::arch::asm;

pub const SUCCESS: u32 = 0;
/// The runtime refused the model or a setting (message on the UART).
pub const FAILURE: u32 = 1;
/// A CPU exception (see `boot::fault`).
pub const FAULT: u32 = 3;
/// A panic, as Rust's own exit status for one.
pub const PANIC: u32 = 101;

const SYS_EXIT: u64 = 0x18;
const ADP_STOPPED_APPLICATION_EXIT: u64 = 0x20026;
const PSCI_SYSTEM_OFF: u64 = 0x8400_0008;

pub fn exit(status: u32) -> ! {
    // AArch64 SYS_EXIT takes a block: (reason, exit status)
    let block = [ADP_STOPPED_APPLICATION_EXIT, status as u64];
    // SAFETY: the semihosting trap (HLT #0xF000) reads the two-word block
    // x1 points to; with a semihosting host it does not return.
    unsafe { asm!("hlt #0xf000", in("x0") SYS_EXIT, in("x1") block.as_ptr(), options(nostack, readonly)) };
    power_off()
}

pub fn power_off() -> ! {
    // SAFETY: PSCI SYSTEM_OFF through QEMU virt's conduit (HVC at EL1);
    // it does not return where PSCI is present.
    unsafe { asm!("hvc #0", in("x0") PSCI_SYSTEM_OFF, options(nomem, nostack)) };
    loop {
        // SAFETY: waits for an event; no memory access.
        unsafe { asm!("wfe", options(nomem, nostack)) };
    }
}
