//! `Model::from_bytes` on arbitrary base files: first as given (the
//! checksum must catch most mutations), then with the checksum repaired so
//! the structure checks see the mutation; a model that loads must run.
#![no_main]

use edgelm_fuzz::{exercise, fix_checksum};
use edgelm_runtime::{AlignedBytes, Model};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let raw = AlignedBytes::from(data.to_vec());
    let _ = Model::from_bytes(&raw);
    let mut fixed = data.to_vec();
    if fix_checksum(&mut fixed) {
        let fixed = AlignedBytes::from(fixed);
        let loaded = Model::from_bytes(&fixed);
        if let Ok(model) = &loaded {
            exercise(model);
        }
    }
});
