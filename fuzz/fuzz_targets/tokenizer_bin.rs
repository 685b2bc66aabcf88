//! llama2.c `tokenizer.bin` import. Input: u16 (LE) vocab size, then the file.
#![no_main]

use edgelm_convert::tokenizer_import::{from_llama2c_tokenizer_bin, validate_tables};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((vocab, bytes)) = data.split_first_chunk::<2>() else { return };
    if let Ok(t) = from_llama2c_tokenizer_bin(bytes, u16::from_le_bytes(*vocab) as usize) {
        validate_tables(&t).expect("imported tables validate");
    }
});
