//! Ending the program with a status QEMU passes on: semihosting
//! `SYS_EXIT_EXTENDED` (QEMU runs with `-semihosting-config enable=on`;
//! plain `SYS_EXIT` on 32-bit Arm carries no status). Without a debugger
//! (a real board) the `BKPT` faults; `HardFault` then parks the core.

use core::arch::asm;

pub const SUCCESS: u32 = 0;
/// The runtime refused the model or a setting (message on the UART).
pub const FAILURE: u32 = 1;
/// A HardFault (see main.rs).
pub const FAULT: u32 = 3;
/// A panic, as Rust's own exit status for one.
pub const PANIC: u32 = 101;

const SYS_EXIT_EXTENDED: u32 = 0x20;
const ADP_STOPPED_APPLICATION_EXIT: u32 = 0x20026;

pub fn exit(status: u32) -> ! {
    let block = [ADP_STOPPED_APPLICATION_EXIT, status];
    // SAFETY: the semihosting trap (BKPT 0xAB) reads the two-word block r1
    // points to; with a semihosting host it does not return.
    unsafe { asm!("bkpt 0xab", in("r0") SYS_EXIT_EXTENDED, in("r1") block.as_ptr(), options(nostack, readonly)) };
    park()
}

pub fn park() -> ! {
    loop {
        cortex_m::asm::wfi();
    }
}
