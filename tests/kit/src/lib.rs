//! edgelm-testkit: what the tests of several crates share, so none of them
//! reaches into another's test folder.
//!
//! * [`synthetic`]: seeded random models and domain packs with a byte-level
//!   vocabulary, written through the runtime's format writer.
//! * [`reference`]: an independent f64 Llama forward pass, the oracle of the
//!   runtime's and the converter's numeric tests.
//! * [`llama2c`]: llama2.c `tokenizer.bin` and v1 checkpoint writers.
//! * [`counting_alloc`]: a global allocator that counts, for the
//!   zero-allocation tests.

pub mod counting_alloc;
pub mod llama2c;
pub mod reference;
pub mod synthetic;

pub use edgelm_runtime::AlignedBytes;

/// 64-byte aligned copy of model bytes.
pub fn aligned(bytes: Vec<u8>) -> AlignedBytes {
    AlignedBytes::from(bytes)
}
