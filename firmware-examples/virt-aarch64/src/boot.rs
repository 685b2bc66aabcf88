//! Start-up on QEMU virt: core 0 enters at `_start` in EL1 with the MMU off
//! (core 1 at `_start_core1`, once PSCI starts it). Each enables the FPU/NEON (CPACR_EL1: the runtime's kernels and even
//! `memcpy` use SIMD registers), sets up the stack, the exception vectors
//! and an identity map (devices below 1 GiB, RAM above as normal cacheable
//! memory: with the MMU off every access is Device memory, where unaligned
//! or exclusive accesses fault on real cores; the map is also what keeps the
//! two cores' caches coherent); core 0 then zeroes `.bss` and calls `main`. Any exception ends in `fault`, which reports it on the UART and
//! exits with status 3.

use core::arch::{asm, global_asm};
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::pl011::Uart;

/// One level-1 translation table: 512 entries of 1 GiB each (4 KiB granule,
/// 32-bit address space: T0SZ = 32, so the walk starts at level 1).
#[repr(C, align(4096))]
struct Table([u64; 512]);

/// MAIR_EL1 slots: 0 = Device-nGnRnE, 1 = Normal write-back read/write-allocate.
const MAIR: u64 = 0xff << 8;
const BLOCK: u64 = 0b01; // level-1 block descriptor
const ATTR_DEVICE: u64 = 0 << 2;
const ATTR_NORMAL: u64 = 1 << 2;
const INNER_SHAREABLE: u64 = 0b11 << 8;
const ACCESS_FLAG: u64 = 1 << 10;
const EXECUTE_NEVER: u64 = (1 << 53) | (1 << 54); // PXN | UXN

const fn identity_map() -> Table {
    let mut t = [0u64; 512];
    // 0..1 GiB: flash and devices (GIC, PL011 at 0x0900_0000, …)
    t[0] = BLOCK | ATTR_DEVICE | ACCESS_FLAG | EXECUTE_NEVER;
    // 1..4 GiB: RAM (the virt machine's RAM starts at 0x4000_0000)
    let mut i = 1;
    while i < 4 {
        t[i] = ((i as u64) << 30) | BLOCK | ATTR_NORMAL | INNER_SHAREABLE | ACCESS_FLAG;
        i += 1;
    }
    Table(t)
}

/// Read by the MMU only; built at compile time.
static IDENTITY_MAP: Table = identity_map();

/// TCR_EL1: T0SZ = 32 (4 GiB), walks write-back cacheable and inner
/// shareable, 4 KiB granule, TTBR1 walks disabled (EPD1), 32-bit PA.
const TCR: u64 = 32 | (0b01 << 8) | (0b01 << 10) | (0b11 << 12) | (1 << 23);
/// SCTLR_EL1 bits set: M (MMU), C (data cache), I (instruction cache).
const SCTLR_ON: u64 = (1 << 0) | (1 << 2) | (1 << 12);
/// SCTLR_EL1 bits cleared: A (alignment faults; the runtime's NEON kernels
/// load unaligned rows, legal on normal memory).
const SCTLR_OFF: u64 = 1 << 1;

global_asm!(
    r#"
    .section .text.boot, "ax"
    .global _start
_start:
    // Only core 0 starts here; QEMU holds the others powered off until
    // PSCI CPU_ON (second_core.rs) sends core 1 to _start_core1.
    mrs     x0, mpidr_el1
    and     x0, x0, #0xff
    cbnz    x0, 9f
    adrp    x0, __stack_top
    add     x0, x0, :lo12:__stack_top
    bl      core_setup

    // zero .bss (16-byte aligned and sized by link.x)
    adrp    x0, __bss_start
    add     x0, x0, :lo12:__bss_start
    adrp    x1, __bss_end
    add     x1, x1, :lo12:__bss_end
1:  cmp     x0, x1
    b.hs    2f
    stp     xzr, xzr, [x0], #16
    b       1b
2:  bl      {main}
9:  wfe
    b       9b

    .global _start_core1
_start_core1:
    adrp    x0, __stack1_top
    add     x0, x0, :lo12:__stack1_top
    bl      core_setup
    bl      {core1_main}
    b       9b

    // Per core: x0 = stack top. FPU/NEON, stack, vectors, MMU and caches.
core_setup:
    // FPU and NEON at EL1 and EL0: CPACR_EL1.FPEN = 0b11
    mov     x1, #(3 << 20)
    msr     cpacr_el1, x1
    isb
    mov     sp, x0
    adrp    x0, vectors
    add     x0, x0, :lo12:vectors
    msr     vbar_el1, x0
    ldr     x0, ={mair}
    msr     mair_el1, x0
    ldr     x0, ={tcr}
    msr     tcr_el1, x0
    adrp    x0, {table}
    add     x0, x0, :lo12:{table}
    msr     ttbr0_el1, x0
    tlbi    vmalle1
    dsb     ish
    isb
    mrs     x0, sctlr_el1
    ldr     x1, ={sctlr_on}
    orr     x0, x0, x1
    ldr     x1, ={sctlr_off}
    bic     x0, x0, x1
    msr     sctlr_el1, x0
    isb
    ret

    // 16 vectors of 128 bytes: x0 = which one, then report it.
    .section .text.vectors, "ax"
    .balign 2048
vectors:
    .irp kind, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
    .balign 128
    mov     x0, #\kind
    b       {fault}
    .endr
"#,
    table = sym IDENTITY_MAP,
    mair = const MAIR,
    tcr = const TCR,
    sctlr_on = const SCTLR_ON,
    sctlr_off = const SCTLR_OFF,
    main = sym crate::main,
    core1_main = sym crate::second_core::worker,
    fault = sym fault,
);

/// Where an exception came from, by vector number.
const VECTOR_NAMES: [&str; 16] = [
    "synchronous, EL1 with SP_EL0",
    "IRQ, EL1 with SP_EL0",
    "FIQ, EL1 with SP_EL0",
    "SError, EL1 with SP_EL0",
    "synchronous, EL1",
    "IRQ, EL1",
    "FIQ, EL1",
    "SError, EL1",
    "synchronous, EL0 (AArch64)",
    "IRQ, EL0 (AArch64)",
    "FIQ, EL0 (AArch64)",
    "SError, EL0 (AArch64)",
    "synchronous, EL0 (AArch32)",
    "IRQ, EL0 (AArch32)",
    "FIQ, EL0 (AArch32)",
    "SError, EL0 (AArch32)",
];

/// Every exception vector lands here: nothing in this image expects one.
extern "C" fn fault(vector: u64) -> ! {
    static REPORTING: AtomicBool = AtomicBool::new(false);
    if REPORTING.swap(true, Ordering::Relaxed) {
        // a fault while reporting one (e.g. semihosting is off, so its
        // trap faults): power off without another word
        crate::exit::power_off();
    }
    let (esr, elr, far): (u64, u64, u64);
    // SAFETY: reads of EL1 system registers, no memory access.
    unsafe {
        asm!("mrs {}, esr_el1", "mrs {}, elr_el1", "mrs {}, far_el1", out(reg) esr, out(reg) elr, out(reg) far,
             options(nomem, nostack, preserves_flags))
    };
    let name = VECTOR_NAMES.get(vector as usize).copied().unwrap_or("unknown");
    let _ = writeln!(
        Uart::virt(),
        "\n{} fault: {name} exception, ESR_EL1 {esr:#x}, ELR_EL1 {elr:#x}, FAR_EL1 {far:#x}",
        edgelm_stories::MARK
    );
    crate::exit::exit(crate::exit::FAULT)
}
