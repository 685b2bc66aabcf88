//! The llama2.c importer. Input: u32 (LE) model length, the model bytes,
//! then `tokenizer.bin`. Whatever it accepts must load in the runtime.
#![no_main]

use std::path::Path;

use edgelm_convert::llama2c::import_llama2c;
use edgelm_convert::{ImportOptions, StoreDType};
use edgelm_fuzz::exercise;
use edgelm_runtime::{AlignedBytes, Model};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<4>() else { return };
    let len = (u32::from_le_bytes(*len) as usize).min(rest.len());
    let (model, tok) = rest.split_at(len);
    if let Ok(c) = import_llama2c(model, tok, Path::new("fuzz.bin"), &ImportOptions::new(StoreDType::Q8)) {
        let bytes = AlignedBytes::from(c.bytes);
        let m = Model::from_bytes(&bytes).expect("the importer's output loads");
        exercise(&m);
    }
});
