//! A 64-bit tick count from SysTick, which every Cortex-M has: the 24-bit
//! down-counter runs at the core clock and its wrap interrupt counts laps.

use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::SYST;
use cortex_m_rt::exception;

/// The core clock of the MPS2 FPGA images (AN500 §3: 25 MHz; QEMU's
/// mps2 machines model the same). On a real part: its configured clock.
pub const CORE_HZ: u64 = 25_000_000;
const RELOAD: u32 = 0x00ff_ffff;

static LAPS: AtomicU32 = AtomicU32::new(0);

#[exception]
fn SysTick() {
    LAPS.fetch_add(1, Ordering::Relaxed);
}

pub struct SysTickClock;

impl SysTickClock {
    pub fn start(mut syst: SYST) -> Self {
        syst.set_clock_source(SystClkSource::Core);
        syst.set_reload(RELOAD);
        syst.clear_current();
        syst.enable_interrupt();
        syst.enable_counter();
        SysTickClock
    }
}

impl edgelm_stories::Clock for SysTickClock {
    fn ticks(&self) -> u64 {
        loop {
            // a lap that ends between the reads changes LAPS: read again
            let laps = LAPS.load(Ordering::Relaxed);
            let down = SYST::get_current();
            if LAPS.load(Ordering::Relaxed) == laps {
                return laps as u64 * (RELOAD as u64 + 1) + (RELOAD - down) as u64;
            }
        }
    }

    fn ticks_per_second(&self) -> u64 {
        CORE_HZ
    }

    fn name(&self) -> &'static str {
        "SysTick"
    }
}
