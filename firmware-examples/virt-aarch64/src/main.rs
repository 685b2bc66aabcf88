//! A story, then a recipe, on bare-metal aarch64 (QEMU virt): the models are
//! embedded with `include_model!`, every buffer is one static arena sized by
//! the build script, there is no allocator. Text goes to the PL011 UART; the
//! exit status goes to QEMU through semihosting. With a second core (QEMU
//! `-smp 2`) large matrix-vector products are split between the two.
#![no_std]
#![no_main]

mod boot;
mod exit;
mod pl011;
mod second_core;
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
    // matrix rows split with core 1 when QEMU has one (-smp 2)
    let core1 = second_core::SecondCore::start();
    let par = core1.as_ref().map(|c| c as &dyn edgelm_runtime::kernels::Parallel);
    match edgelm_stories::tell(&mut uart, &timer::GenericTimer, &IMAGE, arena, par) {
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
