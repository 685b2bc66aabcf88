//! Measures the stack's high-water mark: the free RAM between the end of
//! `.bss` (cortex-m-rt's `__sheap`: there is no heap) and the stack pointer
//! is painted at start-up, and the untouched part is counted at the end.
//! Flash and static RAM come from the ELF's sections; this is the rest of
//! the RAM the image needs.

use core::ptr::{addr_of, read_volatile, write_volatile};

const PAINT: u32 = 0x5afe_57ac;
/// Left unpainted below the stack pointer: `paint`'s own frame.
const MARGIN: usize = 256;

extern "C" {
    static __sheap: u32;
    static _stack_start: u32;
}

fn bottom() -> usize {
    addr_of!(__sheap) as usize
}

fn top() -> usize {
    addr_of!(_stack_start) as usize
}

/// Paints the unused stack. Call first thing in `main`.
pub fn paint() {
    let end = (cortex_m::register::msp::read() as usize).saturating_sub(MARGIN) & !3;
    let mut at = (bottom() + 3) & !3;
    while at < end {
        // SAFETY: `[__sheap, sp - MARGIN)` is RAM that nothing owns: above
        // every static, below the live stack.
        unsafe { write_volatile(at as *mut u32, PAINT) };
        at += 4;
    }
}

/// Bytes of stack used at most so far.
pub fn peak() -> usize {
    let mut at = (bottom() + 3) & !3;
    // SAFETY: reads RAM between the statics and the stack top.
    while at < top() && unsafe { read_volatile(at as *const u32) } == PAINT {
        at += 4;
    }
    top() - at
}
