//! The runtime tokenizers: encode arbitrary text (byte-level BPE must give
//! the text back), decode arbitrary ids, and stream arbitrary bytes as UTF-8
//! (the same text `String::from_utf8_lossy` makes).
#![no_main]

use edgelm_fuzz::{micro_base, micro_sentencepiece};
use edgelm_runtime::tokenizer::Utf8Stream;
use edgelm_runtime::Model;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for (bytes, roundtrip) in [(micro_base(), true), (micro_sentencepiece(), false)] {
        let model = Model::from_bytes(bytes).expect("fixed model loads");
        let tok = &model.default_domain().tokenizer;
        // at most one id per byte of the (lossy, so possibly longer) text, plus a dummy prefix
        let mut ids = vec![0u32; text.len() + 8];
        let n = tok.encode(&text, &mut ids).expect("the buffer holds one id per byte");
        assert!(ids[..n].iter().all(|&id| (id as usize) < tok.vocab_size()));
        if roundtrip {
            let mut back = Vec::new();
            tok.decode_into(&ids[..n], &mut |b| back.extend_from_slice(b));
            assert_eq!(back, text.as_bytes(), "byte-level BPE round trip");
        }
        // a short buffer: the prompt-too-long error, never a panic
        let mut short = [0u32; 3];
        let _ = tok.encode(&text, &mut short);
        // arbitrary ids, out-of-range ones included
        let ids: Vec<u32> = data.chunks(4).map(|c| c.iter().fold(0u32, |a, &b| a << 8 | b as u32)).collect();
        let mut raw = Vec::new();
        tok.decode_into(&ids, &mut |b| raw.extend_from_slice(b));
        let _ = tok.decode_piece(None, u32::MAX);
        let _ = tok.is_byte_token(u32::MAX);
    }
    // streaming UTF-8 in arbitrary pieces equals the lossy conversion
    let mut s = Utf8Stream::new();
    let mut out = String::new();
    let cut = data.first().map_or(1, |&b| 1 + b as usize % 5);
    for piece in data.chunks(cut) {
        s.push(piece, &mut |t| out.push_str(t));
    }
    s.finish(&mut |t| out.push_str(t));
    assert_eq!(out, text, "Utf8Stream vs from_utf8_lossy");
});
