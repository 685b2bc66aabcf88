//! Hugging Face `tokenizer.json` import: tables it accepts must validate
//! and write.
#![no_main]

use edgelm_convert::tokenizer_import::{from_tokenizer_json, validate_tables, write_tables};
use edgelm_runtime::format::{Config, FileKind, FileWriter};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(json) = std::str::from_utf8(data) else { return };
    if let Ok(t) = from_tokenizer_json(json) {
        validate_tables(&t).expect("imported tables validate");
        let c = Config {
            dim: 32,
            n_layers: 1,
            n_heads: 1,
            n_kv_heads: 1,
            ffn_dim: 32,
            vocab_size: t.vocab_size() as u32,
            max_seq_len: 8,
            rope_theta: 1e4,
            norm_eps: 1e-5,
            tied_head: true,
        };
        let mut w = FileWriter::new(FileKind::Base, "fuzz", c);
        write_tables(&t, &mut w, "").expect("validated tables write");
    }
});
