//! The CMSDK APB UART of the MPS2 boards, transmit only, polled.

use core::fmt;
use core::ptr::{read_volatile, write_volatile};

/// UART0 of mps2-an500 (AN500: APB UART0 at 0x4000_4000).
const MPS2_UART0: usize = 0x4000_4000;
const DATA: usize = 0x00;
const STATE: usize = 0x04;
const CTRL: usize = 0x08;
const BAUDDIV: usize = 0x10;
const STATE_TX_FULL: u32 = 1 << 0;
const CTRL_TX_EN: u32 = 1 << 0;
/// The smallest divider the UART accepts; QEMU ignores the rate. On a board:
/// system clock / baud rate (25 MHz / 115200 → 217).
const MIN_BAUDDIV: u32 = 16;

pub struct Uart {
    base: usize,
}

impl Uart {
    /// UART0 with its transmitter enabled.
    pub fn uart0() -> Self {
        let uart = Uart { base: MPS2_UART0 };
        // SAFETY: BAUDDIV and CTRL are registers of the CMSDK UART at `base`
        // (device memory in the default Cortex-M memory map).
        unsafe {
            write_volatile((uart.base + BAUDDIV) as *mut u32, MIN_BAUDDIV);
            write_volatile((uart.base + CTRL) as *mut u32, CTRL_TX_EN);
        }
        uart
    }

    fn put(&mut self, byte: u8) {
        // SAFETY: STATE and DATA are registers of the UART at `base` (see `uart0`).
        unsafe {
            while read_volatile((self.base + STATE) as *const u32) & STATE_TX_FULL != 0 {}
            write_volatile((self.base + DATA) as *mut u32, byte as u32);
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
