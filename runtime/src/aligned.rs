//! A heap buffer whose start is 64-byte aligned, for loading model bytes
//! read from a stream (tests, `std::fs::read`) where mmap is not an option.

use alloc::vec::Vec;
use core::ops::Deref;

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Block([u8; 64]);

// The byte views below assume a block is exactly 64 bytes, without padding.
const _: () = assert!(core::mem::size_of::<Block>() == 64 && core::mem::align_of::<Block>() == 64);

/// Owned, 64-byte aligned bytes.
#[derive(Clone)]
pub struct AlignedBytes {
    blocks: Vec<Block>,
    len: usize,
}

impl AlignedBytes {
    pub fn from_slice(bytes: &[u8]) -> Self {
        let blocks = alloc::vec![Block([0; 64]); bytes.len().div_ceil(64)];
        let mut aligned = AlignedBytes { blocks, len: bytes.len() };
        // one copy; `as_mut_slice` is exactly `bytes.len()` long
        aligned.as_mut_slice().copy_from_slice(bytes);
        aligned
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let len = self.len;
        // SAFETY: `Block` is a plain 64-byte array with no padding, so the
        // blocks are `len.div_ceil(64) * 64 ≥ len` contiguous initialised bytes.
        unsafe { core::slice::from_raw_parts_mut(self.blocks.as_mut_ptr() as *mut u8, len) }
    }
}

impl Deref for AlignedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: as in `as_mut_slice`, shared.
        unsafe { core::slice::from_raw_parts(self.blocks.as_ptr() as *const u8, self.len) }
    }
}

impl From<Vec<u8>> for AlignedBytes {
    fn from(v: Vec<u8>) -> Self {
        Self::from_slice(&v)
    }
}
