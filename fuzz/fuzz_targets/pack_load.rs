//! Arbitrary domain packs over a valid base (checksum repaired, see
//! `model_load`); a refused pack must leave the base usable, an accepted
//! one must run.
#![no_main]

use edgelm_fuzz::{exercise, fix_checksum, micro_base};
use edgelm_runtime::{AlignedBytes, Model};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut fixed = data.to_vec();
    if !fix_checksum(&mut fixed) {
        return;
    }
    let pack = AlignedBytes::from(fixed);
    let Ok(mut model) = Model::from_bytes(micro_base()) else { return };
    let before = model.domains().len();
    match model.add_pack_bytes(&pack) {
        Ok(()) => exercise(&model),
        Err(_) => assert_eq!(model.domains().len(), before, "a refused pack changed the model"),
    }
});
