//! Writers for llama2.c files (`tokenizer.bin`, v1 checkpoints), so tests
//! and fuzz seeds can make valid inputs for the llama2.c importer.

use edgelm_runtime::format::Config;

use crate::synthetic::WeightRng;

/// A llama2.c `tokenizer.bin` of `vocab` pieces (≥ 259): `<unk>`, `<s>`,
/// `</s>`, the 256 byte pieces `<0xXX>`, then a few words and filler.
pub fn tokenizer_bin(vocab: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut pieces: Vec<Vec<u8>> = vec![b"<unk>".to_vec(), b"\n<s>\n".to_vec(), b"\n</s>\n".to_vec()];
    for b in 0..=255u8 {
        pieces.push(format!("<0x{b:02X}>").into_bytes());
    }
    let words = [" ", "e", "t", "O", "n", " t", " th", " the", "he", " O", " On", " Once", "\u{e9}t\u{e9}"];
    for w in words {
        pieces.push(w.as_bytes().to_vec());
    }
    let mut i = 0;
    while pieces.len() < vocab {
        pieces.push(format!(" w{i}").into_bytes());
        i += 1;
    }
    pieces.truncate(vocab);
    let max = pieces.iter().map(Vec::len).max().unwrap_or(0) as i32;
    let mut out = max.to_le_bytes().to_vec();
    for (id, p) in pieces.iter().enumerate() {
        out.extend_from_slice(&(-(id as f32)).to_le_bytes());
        out.extend_from_slice(&(p.len() as i32).to_le_bytes());
        out.extend_from_slice(p);
    }
    (out, pieces)
}

/// A llama2.c v1 checkpoint (256-byte header, f32 weights) of config `c`
/// with seeded random weights.
pub fn v1_checkpoint(c: &Config, seed: u64) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0x616b_3432u32.to_le_bytes());
    out.extend_from_slice(&1i32.to_le_bytes());
    for v in [c.dim, c.ffn_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, c.max_seq_len] {
        out.extend_from_slice(&(v as i32).to_le_bytes());
    }
    out.push(c.tied_head as u8);
    out.resize(256, 0);
    let (dim, ffn, l, vocab, kv) =
        (c.dim as usize, c.ffn_dim as usize, c.n_layers as usize, c.vocab_size as usize, c.kv_dim());
    let mut rng = WeightRng::new(seed);
    let mut put = |n: usize, scale: f32, offset: f32| {
        for v in rng.fill(n, scale) {
            out.extend_from_slice(&(v + offset).to_le_bytes());
        }
    };
    // norms: attention, ffn, final
    put(l * dim, 0.1, 1.0);
    put(l * dim, 0.1, 1.0);
    put(dim, 0.1, 1.0);
    let s = 1.0 / (dim as f32).sqrt();
    put(vocab * dim, s, 0.0);
    for (rows, cols) in [(dim, dim), (kv, dim), (kv, dim), (dim, dim), (ffn, dim), (dim, ffn), (ffn, dim)] {
        put(l * rows * cols, 1.0 / (cols as f32).sqrt(), 0.0);
    }
    if !c.tied_head {
        put(vocab * dim, s, 0.0);
    }
    out
}
