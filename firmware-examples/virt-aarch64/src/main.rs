//! A story, then a recipe, on bare-metal aarch64 (QEMU virt): the models are
//! embedded with `include_model!`, every buffer is one static arena sized by
//! the build script, there is no allocator. Text goes to the PL011 UART; the
//! exit status goes to QEMU through semihosting.
#![no_std]
#![no_main]

mod boot;
mod exit;
mod pl011;
mod timer;

use core::fmt::Write;

use edgelm_stories::{StaticArena, MARK};

// ARENA_BYTES and IMAGE (models, runs, context length), from build.rs.
include!(concat!(env!("OUT_DIR"), "/plan.rs"));

static ARENA: StaticArena<ARENA_BYTES> = StaticArena::new();

/// Called by `boot.rs` with the stack, FPU, MMU and `.bss` ready.
extern "C" fn main() -> ! {
    let mut uart = pl011::Uart::virt();
    let Some(arena) = ARENA.take() else { panic!("main ran twice") };
    match edgelm_stories::tell(&mut uart, &timer::GenericTimer, &IMAGE, arena) {
        Ok(_) => exit::exit(exit::SUCCESS),
        Err(e) => {
            let _ = writeln!(uart, "{MARK} error: {e}");
            exit::exit(exit::FAILURE)
        }
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let _ = writeln!(pl011::Uart::virt(), "\n{MARK} panic: {info}");
    exit::exit(exit::PANIC)
}
