//! The ARM generic timer's virtual count (CNTVCT_EL0), readable at EL1 on
//! every ARMv8-A core without set-up.

use core::arch::asm;

pub struct GenericTimer;

impl edgelm_stories::Clock for GenericTimer {
    fn ticks(&self) -> u64 {
        let t: u64;
        // SAFETY: reads a system register; the ISB keeps the read in program order.
        unsafe { asm!("isb", "mrs {}, cntvct_el0", out(reg) t, options(nomem, nostack, preserves_flags)) };
        t
    }

    fn ticks_per_second(&self) -> u64 {
        let f: u64;
        // SAFETY: reads a system register.
        unsafe { asm!("mrs {}, cntfrq_el0", out(reg) f, options(nomem, nostack, preserves_flags)) };
        f
    }

    fn name(&self) -> &'static str {
        "CNTVCT_EL0"
    }
}
