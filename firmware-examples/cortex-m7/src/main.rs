//! A story on a Cortex-M7 (QEMU mps2-an500): the model is embedded with
//! `include_model!` and read from flash in place, every buffer is one
//! static arena sized by the build script, there is no allocator. Text goes
//! to the CMSDK UART; the exit status goes to QEMU through semihosting.
#![no_std]
#![no_main]

mod clock;
mod exit;
mod stack;
mod uart;

use core::fmt::Write;
use core::sync::atomic::{AtomicBool, Ordering};

use cortex_m_rt::{entry, exception, ExceptionFrame};
use edgelm_stories::{StaticArena, MARK};

// ARENA_BYTES and IMAGE (model, runs, context length), from build.rs.
include!(concat!(env!("OUT_DIR"), "/plan.rs"));

static ARENA: StaticArena<ARENA_BYTES> = StaticArena::new();

#[entry]
fn main() -> ! {
    stack::paint();
    let mut uart = uart::Uart::uart0();
    let Some(peripherals) = cortex_m::Peripherals::take() else { panic!("peripherals taken twice") };
    let clock = clock::SysTickClock::start(peripherals.SYST);
    let Some(arena) = ARENA.take() else { panic!("main ran twice") };
    match edgelm_stories::tell(&mut uart, &clock, &IMAGE, arena, None) {
        Ok(_) => {
            let _ = writeln!(uart, "{MARK} stack: {} bytes at most", stack::peak());
            exit::exit(exit::SUCCESS)
        }
        Err(e) => {
            let _ = writeln!(uart, "{MARK} error: {e}");
            exit::exit(exit::FAILURE)
        }
    }
}

#[exception]
unsafe fn HardFault(frame: &ExceptionFrame) -> ! {
    static REPORTING: AtomicBool = AtomicBool::new(false);
    if REPORTING.swap(true, Ordering::Relaxed) {
        // a fault while reporting one (no semihosting host): stop here
        exit::park();
    }
    let _ =
        writeln!(uart::Uart::uart0(), "\n{MARK} fault: HardFault at pc {:#010x}, lr {:#010x}", frame.pc(), frame.lr());
    exit::exit(exit::FAULT)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let _ = writeln!(uart::Uart::uart0(), "\n{MARK} panic: {info}");
    exit::exit(exit::PANIC)
}
