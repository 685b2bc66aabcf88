//! The GGUF importer (candle's GGUF reader, then ours) on arbitrary bytes;
//! whatever it accepts must load in the runtime.
#![no_main]

use std::io::Cursor;
use std::path::Path;

use edgelm_convert::gguf::import_gguf_from;
use edgelm_convert::{ImportOptions, StoreDType};
use edgelm_fuzz::exercise;
use edgelm_runtime::{AlignedBytes, Model};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let opts = ImportOptions::new(StoreDType::Q8);
    if let Ok(c) = import_gguf_from(&mut Cursor::new(data), Path::new("fuzz.gguf"), &opts) {
        let bytes = AlignedBytes::from(c.bytes);
        let m = Model::from_bytes(&bytes).expect("the importer's output loads");
        exercise(&m);
    }
});
