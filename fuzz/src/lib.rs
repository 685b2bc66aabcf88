//! What the fuzz targets share: fixed models built once per process, the
//! checksum repair that lets mutations reach the structure checks, and a
//! short session run over every model that loads.

use std::path::Path;
use std::sync::OnceLock;

use edgelm_convert::llama2c::import_llama2c;
use edgelm_convert::{ImportOptions, StoreDType};
use edgelm_runtime::format::checksum::xxh64;
use edgelm_runtime::format::{DType, CHECKSUM_LEN};
use edgelm_runtime::tokenizer::Utf8Stream;
use edgelm_runtime::{AlignedBytes, Model, Session, SessionOptions};
use edgelm_testkit::llama2c::{tokenizer_bin, v1_checkpoint};
use edgelm_testkit::synthetic::{synthetic_model, synthetic_pack, SyntheticPackSpec, SyntheticSpec};

/// Rewrites the trailing checksum so a mutated file passes it (a random
/// mutation almost never does, and would then never reach the parser).
/// Returns false when the input is too short to have a trailer.
pub fn fix_checksum(bytes: &mut [u8]) -> bool {
    let Some(body_end) = bytes.len().checked_sub(CHECKSUM_LEN) else { return false };
    let sum = xxh64(&bytes[..body_end], 0);
    bytes[body_end..].copy_from_slice(&sum.to_le_bytes());
    true
}

/// The q8 micro base (byte-level BPE), as the pack and session targets load it.
pub fn micro_base() -> &'static AlignedBytes {
    static BASE: OnceLock<AlignedBytes> = OnceLock::new();
    BASE.get_or_init(|| {
        AlignedBytes::from(synthetic_model(&SyntheticSpec::micro(DType::Q8)).expect("the synthetic micro base"))
    })
}

/// A `recipe` pack for [`micro_base`]: own tokenizer, one expansion block.
pub fn micro_pack() -> &'static AlignedBytes {
    static PACK: OnceLock<AlignedBytes> = OnceLock::new();
    PACK.get_or_init(|| {
        let spec =
            SyntheticPackSpec { own_vocab: Some(260), positions: vec![1], ..SyntheticPackSpec::recipe(DType::Q8) };
        AlignedBytes::from(synthetic_pack(&SyntheticSpec::micro(DType::Q8), &spec).expect("the synthetic micro pack"))
    })
}

/// The micro shape imported from llama2.c: a SentencePiece tokenizer.
pub fn micro_sentencepiece() -> &'static AlignedBytes {
    static SP: OnceLock<AlignedBytes> = OnceLock::new();
    SP.get_or_init(|| {
        let mut c = SyntheticSpec::micro(DType::Q8).config;
        c.tied_head = true;
        let (tok, _) = tokenizer_bin(c.vocab_size as usize);
        let converted =
            import_llama2c(&v1_checkpoint(&c, 1), &tok, Path::new("micro.bin"), &ImportOptions::new(StoreDType::Q8))
                .expect("the llama2.c micro model");
        AlignedBytes::from(converted.bytes)
    })
}

/// Runs every domain of a loaded model for a few tokens: a model that loads
/// must also run without panicking.
pub fn exercise(model: &Model<'_>) {
    let max_seq = (model.config().max_seq_len as usize).min(8);
    let mut arena = vec![0u8; model.arena_bytes(max_seq)];
    for d in model.domains() {
        let Ok(mut s) = Session::new(model, d.name, &mut arena, SessionOptions::new(max_seq)) else { continue };
        let mut out = Utf8Stream::new();
        let _ = s.feed_prompt("Once upon");
        let _ = s.generate(3, &mut |t| out.push(t.as_bytes(), &mut |_| {}));
    }
}
