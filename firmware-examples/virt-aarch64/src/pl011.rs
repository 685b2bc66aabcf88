//! The PL011 UART of QEMU virt, transmit only, polled.

use core::fmt;
use core::ptr::{read_volatile, write_volatile};

/// QEMU virt's UART0 (from its device tree: `pl011@9000000`).
const VIRT_UART0: usize = 0x0900_0000;
const DR: usize = 0x00; // data
const FR: usize = 0x18; // flags
const CR: usize = 0x30; // control
const FR_TXFF: u32 = 1 << 5; // transmit FIFO full
const CR_UARTEN: u32 = 1 << 0;
const CR_TXE: u32 = 1 << 8;

pub struct Uart {
    base: usize,
}

impl Uart {
    /// UART0 of the virt machine, transmitter enabled. (QEMU needs no baud
    /// rate; a real PL011 also wants IBRD/FBRD/LCR_H set for its clock.)
    pub fn virt() -> Self {
        let uart = Uart { base: VIRT_UART0 };
        // SAFETY: VIRT_UART0 + CR is the PL011 control register, mapped as
        // device memory by boot.rs (and identity-mapped before the MMU is on).
        unsafe { write_volatile((uart.base + CR) as *mut u32, CR_UARTEN | CR_TXE) };
        uart
    }

    fn put(&mut self, byte: u8) {
        // SAFETY: FR and DR are PL011 registers at `base` (see `virt`).
        unsafe {
            while read_volatile((self.base + FR) as *const u32) & FR_TXFF != 0 {}
            write_volatile((self.base + DR) as *mut u32, byte as u32);
        }
    }
}

impl fmt::Write for Uart {
    /// The bytes as they are (no `\n` → `\r\n`): the transcript must match
    /// Linux byte for byte.
    fn write_str(&mut self, s: &str) -> fmt::Result {
        s.bytes().for_each(|b| self.put(b));
        Ok(())
    }
}
