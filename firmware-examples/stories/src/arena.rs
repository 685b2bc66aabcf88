//! The session arena as a `static`: zero-initialised, so it lands in `.bss`
//! and the ELF's section sizes account for it, and handed out once.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

/// `N` bytes (the plan's `ARENA_BYTES`) that [`StaticArena::take`] lends out
/// exactly once, as `&'static mut [u8]`.
pub struct StaticArena<const N: usize> {
    taken: AtomicBool,
    bytes: UnsafeCell<[u8; N]>,
}

// SAFETY: `bytes` is only reached through `take`, which the `taken` flag lets
// succeed once, so no two contexts ever hold a reference to it.
unsafe impl<const N: usize> Sync for StaticArena<N> {}

impl<const N: usize> StaticArena<N> {
    #[allow(clippy::new_without_default)] // used in `static` initialisers, which need a const fn
    pub const fn new() -> Self {
        StaticArena { taken: AtomicBool::new(false), bytes: UnsafeCell::new([0; N]) }
    }

    /// The buffer, the first time; `None` after that.
    #[allow(clippy::mut_from_ref)] // the point of this type: `taken` makes the borrow unique
    pub fn take(&'static self) -> Option<&'static mut [u8]> {
        if self.taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        // SAFETY: `taken` was false, so this is the only reference to `bytes`
        // there is or will ever be; it lives as long as the static.
        Some(unsafe { &mut *self.bytes.get() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lends_the_buffer_once() {
        static ARENA: StaticArena<100> = StaticArena::new();
        let a = ARENA.take().expect("first take");
        assert_eq!(a.len(), 100);
        assert!(a.iter().all(|&b| b == 0));
        a[99] = 1;
        assert!(ARENA.take().is_none(), "a second take would alias the first");
    }
}
