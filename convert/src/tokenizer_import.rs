//! Importers that build the runtime's tokenizer tables (docs/TOKENIZER.md)
//! from a Hugging Face `tokenizer.json` (byte-level BPE) or a llama2.c
//! `tokenizer.bin` (SentencePiece-style BPE), and the writer that stores them
//! as `{prefix}tokenizer.*` tensors of an `.edgelm` file.

use std::collections::HashMap;

use edgelm_runtime::format::{FileWriter, TokenizerInfo, TokenizerKind};
use serde_json::Value;

/// Why a tokenizer could not be imported or written.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("tokenizer.json is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported tokenizer: {0}")]
    Unsupported(String),
    #[error("invalid tokenizer: {0}")]
    Invalid(String),
    #[error("could not write the tokenizer tables: {0}")]
    Write(#[from] edgelm_runtime::Error),
}

fn unsupported<T>(msg: impl Into<String>) -> Result<T, ImportError> {
    Err(ImportError::Unsupported(msg.into()))
}

fn invalid<T>(msg: impl Into<String>) -> Result<T, ImportError> {
    Err(ImportError::Invalid(msg.into()))
}

/// A tokenizer in the runtime's terms: the format's owned tables.
pub use edgelm_runtime::format::TokenizerTables;

/// GPT-2's `bytes_to_unicode`: the printable character standing for each byte.
pub fn byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for (b, slot) in (0..=255u8).zip(table.iter_mut()) {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        *slot = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(256 + n).unwrap_or('\0');
            n += 1;
            c
        };
    }
    table
}

fn char_to_byte() -> HashMap<char, u8> {
    byte_to_char().iter().enumerate().map(|(b, &c)| (c, b as u8)).collect()
}

fn is_null_or_absent(v: Option<&Value>) -> bool {
    v.is_none_or(Value::is_null)
}

fn flag(v: &Value, key: &str) -> Option<bool> {
    v.get(key).and_then(Value::as_bool)
}

/// Checks a pre-tokenizer is GPT-2's ByteLevel split without prefix space.
fn check_pre_tokenizer(p: &Value) -> Result<(), ImportError> {
    match p.get("type").and_then(Value::as_str) {
        Some("ByteLevel") => {
            if flag(p, "add_prefix_space") == Some(true) {
                return unsupported("ByteLevel pre-tokenizer with add_prefix_space=true");
            }
            if flag(p, "use_regex") == Some(false) {
                return unsupported("ByteLevel pre-tokenizer with use_regex=false");
            }
            Ok(())
        }
        Some("Sequence") => match p.get("pretokenizers").and_then(Value::as_array).map(Vec::as_slice) {
            Some([one]) => check_pre_tokenizer(one),
            _ => unsupported("pre-tokenizer Sequence other than a single ByteLevel"),
        },
        other => unsupported(format!("pre-tokenizer {other:?} (only ByteLevel is supported)")),
    }
}

fn as_id(v: &Value, what: &str) -> Result<u32, ImportError> {
    match v.as_u64() {
        Some(id) if id < edgelm_runtime::format::MAX_VOCAB as u64 => Ok(id as u32),
        _ => invalid(format!("{what}: token id {v} is not an integer in 0..{}", edgelm_runtime::format::MAX_VOCAB)),
    }
}

/// Parses a Hugging Face `tokenizer.json` holding a byte-level BPE.
///
/// Supported: model `BPE` (no dropout, no subword prefix/suffix, no byte
/// fallback, `ignore_merges` false), no normalizer, `ByteLevel`
/// pre-tokenizer (`add_prefix_space` false, `use_regex` true), `ByteLevel`
/// or no decoder, special added tokens without lstrip/rstrip/single_word.
/// The post-processor is ignored (the runtime adds BOS/EOS itself).
/// BOS and EOS are `<|endoftext|>` when the vocabulary has it.
pub fn from_tokenizer_json(json: &str) -> Result<TokenizerTables, ImportError> {
    let root: Value = serde_json::from_str(json)?;
    let model = match root.get("model") {
        Some(m) if m.is_object() => m,
        _ => return invalid("tokenizer.json has no \"model\" object"),
    };
    match model.get("type").and_then(Value::as_str) {
        Some("BPE") => {}
        None if model.get("merges").is_some() => {}
        other => return unsupported(format!("model type {other:?} (only BPE is supported)")),
    }
    if !is_null_or_absent(model.get("dropout")) {
        return unsupported("BPE dropout");
    }
    for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
        match model.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.is_empty() => {}
            Some(_) => return unsupported(format!("BPE {key}")),
        }
    }
    if flag(model, "byte_fallback") == Some(true) {
        return unsupported("BPE byte_fallback (byte-level BPE needs none)");
    }
    if flag(model, "ignore_merges") == Some(true) {
        return unsupported("BPE ignore_merges=true");
    }
    if !is_null_or_absent(root.get("normalizer")) {
        return unsupported("a normalizer (the runtime applies none)");
    }
    match root.get("pre_tokenizer") {
        Some(p) if !p.is_null() => check_pre_tokenizer(p)?,
        _ => return unsupported("no pre-tokenizer (the runtime needs the ByteLevel pre-tokenizer)"),
    }
    match root.get("decoder") {
        None | Some(Value::Null) => {}
        Some(d) if d.get("type").and_then(Value::as_str) == Some("ByteLevel") => {}
        Some(d) => return unsupported(format!("decoder {:?} (only ByteLevel is supported)", d.get("type"))),
    }

    // Model vocabulary (byte-level strings) and added tokens (raw text).
    let vocab_map = match model.get("vocab").and_then(Value::as_object) {
        Some(v) => v,
        None => return invalid("model.vocab is missing or not an object"),
    };
    let mut by_string: HashMap<&str, u32> = HashMap::with_capacity(vocab_map.len());
    let mut strings: HashMap<u32, &str> = HashMap::with_capacity(vocab_map.len());
    for (s, id) in vocab_map {
        let id = as_id(id, "model.vocab")?;
        if strings.insert(id, s.as_str()).is_some() {
            return invalid(format!("token id {id} appears twice in model.vocab"));
        }
        by_string.insert(s.as_str(), id);
    }
    let mut added: Vec<(u32, String)> = Vec::new();
    let mut special = Vec::new();
    if let Some(list) = root.get("added_tokens").and_then(Value::as_array) {
        for t in list {
            let id = as_id(t.get("id").unwrap_or(&Value::Null), "added_tokens")?;
            let content = match t.get("content").and_then(Value::as_str) {
                Some(c) if !c.is_empty() => c.to_string(),
                _ => return invalid(format!("added token {id} has no content")),
            };
            if flag(t, "special") != Some(true) {
                return unsupported(format!(
                    "non-special added token {content:?} (only special added tokens are matched)"
                ));
            }
            for key in ["lstrip", "rstrip", "single_word"] {
                if flag(t, key) == Some(true) {
                    return unsupported(format!("added token {content:?} with {key}=true"));
                }
            }
            if added.iter().any(|(i, _)| *i == id) {
                return invalid(format!("token id {id} appears twice in added_tokens"));
            }
            special.push(id);
            added.push((id, content));
        }
    }
    let n = strings.keys().chain(added.iter().map(|(i, _)| i)).map(|&i| i as usize + 1).max().unwrap_or(0);
    if n == 0 {
        return invalid("the vocabulary is empty");
    }
    let to_byte = char_to_byte();
    let mut vocab = Vec::with_capacity(n);
    for id in 0..n as u32 {
        if let Some((_, content)) = added.iter().find(|(i, _)| *i == id) {
            vocab.push(content.as_bytes().to_vec());
            continue;
        }
        let Some(s) = strings.get(&id) else {
            return invalid(format!("token id {id} is not assigned (ids must be 0..{n} without gaps)"));
        };
        let bytes: Option<Vec<u8>> = s.chars().map(|c| to_byte.get(&c).copied()).collect();
        match bytes {
            Some(b) if !b.is_empty() => vocab.push(b),
            _ => return invalid(format!("vocab entry {s:?} (id {id}) is not a byte-level string")),
        }
    }

    let mut byte_tokens = [0u32; 256];
    let chars = byte_to_char();
    for ((b, slot), c) in byte_tokens.iter_mut().enumerate().zip(chars) {
        let mut buf = [0u8; 4];
        let s: &str = c.encode_utf8(&mut buf);
        match by_string.get(s) {
            Some(&id) => *slot = id,
            None => {
                return unsupported(format!(
                    "model.vocab lacks the byte-level symbol {s:?} for byte 0x{b:02X} (every byte must be encodable)"
                ))
            }
        }
    }

    // Merges, as "a b" strings or ["a", "b"] pairs, in rank order.
    let raw = match model.get("merges").and_then(Value::as_array) {
        Some(m) => m,
        None => return invalid("model.merges is missing or not a list"),
    };
    let mut pairs = Vec::with_capacity(raw.len());
    for m in raw {
        let (a, b): (String, String) = match m {
            Value::String(s) => {
                let parts: Vec<&str> = s.split(' ').collect();
                match *parts.as_slice() {
                    [a, b] => (a.to_string(), b.to_string()),
                    _ => return invalid(format!("merge {s:?} is not two tokens separated by one space")),
                }
            }
            Value::Array(v) => match v.as_slice() {
                [Value::String(a), Value::String(b)] => (a.clone(), b.clone()),
                _ => return invalid(format!("merge {m} is not a pair of strings")),
            },
            _ => return invalid(format!("merge {m} is neither \"a b\" nor [\"a\", \"b\"]")),
        };
        let id = |s: &str| {
            by_string
                .get(s)
                .copied()
                .ok_or_else(|| ImportError::Invalid(format!("merge {a:?} {b:?}: {s:?} is not in model.vocab")))
        };
        let joined = format!("{a}{b}");
        pairs.push((id(&a)?, id(&b)?, id(&joined)?));
    }
    // Hugging Face keeps the last rank of a pair listed twice.
    let mut last: HashMap<(u32, u32), usize> = HashMap::new();
    for (i, &(a, b, _)) in pairs.iter().enumerate() {
        last.insert((a, b), i);
    }
    let merges: Vec<(u32, u32, u32)> =
        pairs.iter().enumerate().filter(|(i, m)| last.get(&(m.0, m.1)) == Some(i)).map(|(_, &m)| m).collect();

    let eot = added
        .iter()
        .find(|(_, c)| c == "<|endoftext|>")
        .map(|(i, _)| *i)
        .or_else(|| by_string.get("<|endoftext|>").copied());
    let tables = TokenizerTables {
        info: TokenizerInfo {
            kind: TokenizerKind::ByteLevelBpe,
            bos: eot,
            eos: eot,
            add_dummy_prefix: false,
            strip_space_after_bos: false,
        },
        vocab,
        merges,
        scores: Vec::new(),
        special,
        byte_tokens,
    };
    validate_tables(&tables)?;
    Ok(tables)
}

/// `<0xXX>` -> the byte.
fn byte_piece(piece: &[u8]) -> Option<u8> {
    let hex = piece.strip_prefix(b"<0x")?.strip_suffix(b">")?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

/// Parses a llama2.c `tokenizer.bin`: `i32 max_token_length`, then per
/// token `f32 score, i32 len, len bytes` (little-endian). `<0xXX>` pieces
/// become the raw byte and must sit at id `XX + 3` (run.c assumes so).
/// BOS = 1, EOS = 2, dummy prefix on, space after BOS stripped.
pub fn from_llama2c_tokenizer_bin(bytes: &[u8], vocab_size: usize) -> Result<TokenizerTables, ImportError> {
    if vocab_size < 259 {
        return invalid(format!("vocab_size {vocab_size} is too small for llama2.c (3 control + 256 byte tokens)"));
    }
    if vocab_size > edgelm_runtime::format::MAX_VOCAB as usize {
        return invalid(format!("vocab_size {vocab_size} exceeds {}", edgelm_runtime::format::MAX_VOCAB));
    }
    let mut pos = 0usize;
    let mut take = |n: usize, what: &str| -> Result<&[u8], ImportError> {
        match bytes.get(pos..pos + n) {
            Some(s) => {
                pos += n;
                Ok(s)
            }
            None => invalid(format!("tokenizer.bin is truncated (reading {what} at byte {pos})")),
        }
    };
    // (`take(4, …)` is 4 bytes)
    let word = |b: &[u8]| b.first_chunk::<4>().copied().unwrap_or_default();
    let max_len = i32::from_le_bytes(word(take(4, "max_token_length")?));
    if max_len < 0 {
        return invalid("tokenizer.bin max_token_length is negative");
    }
    let mut vocab = Vec::with_capacity(vocab_size);
    let mut scores = Vec::with_capacity(vocab_size);
    let mut fallback = Vec::with_capacity(vocab_size);
    for id in 0..vocab_size {
        let score = f32::from_le_bytes(word(take(4, "a score")?));
        let len = i32::from_le_bytes(word(take(4, "a token length")?));
        if len < 0 {
            return invalid(format!("tokenizer.bin token {id} has negative length"));
        }
        let piece = take(len as usize, "a token")?;
        match byte_piece(piece) {
            Some(b) => {
                vocab.push(vec![b]);
                fallback.push(Some(b));
            }
            None => {
                vocab.push(piece.to_vec());
                fallback.push(None);
            }
        }
        scores.push(score);
    }
    let mut byte_tokens = [0u32; 256];
    for (b, slot) in byte_tokens.iter_mut().enumerate() {
        let id = b + 3;
        if fallback.get(id) != Some(&Some(b as u8)) {
            return unsupported(format!(
                "tokenizer.bin: token {id} is not the byte-fallback piece <0x{b:02X}> (run.c maps byte b to id b + 3)"
            ));
        }
        *slot = id as u32;
    }
    let tables = TokenizerTables {
        info: TokenizerInfo {
            kind: TokenizerKind::SentencePieceBpe,
            bos: Some(1),
            eos: Some(2),
            add_dummy_prefix: true,
            strip_space_after_bos: true,
        },
        vocab,
        merges: Vec::new(),
        scores,
        special: Vec::new(),
        byte_tokens,
    };
    validate_tables(&tables)?;
    Ok(tables)
}

/// Consistency checks the runtime would make at load, with clearer messages.
pub fn validate_tables(t: &TokenizerTables) -> Result<(), ImportError> {
    let n = t.vocab.len();
    if n == 0 || n > edgelm_runtime::format::MAX_VOCAB as usize {
        return invalid(format!("vocabulary size {n} is out of range"));
    }
    if t.vocab.iter().map(Vec::len).sum::<usize>() > u32::MAX as usize {
        return invalid("token bytes exceed 4 GiB");
    }
    if t.vocab.iter().all(Vec::is_empty) {
        return invalid("every token is empty");
    }
    let ok = |id: u32| (id as usize) < n;
    let piece = |id: u32| t.vocab.get(id as usize);
    if !t.info.bos.is_none_or(ok) || !t.info.eos.is_none_or(ok) {
        return invalid("bos/eos outside the vocabulary");
    }
    for (b, &id) in t.byte_tokens.iter().enumerate() {
        if piece(id).is_none_or(|p| p != &[b as u8]) {
            return invalid(format!("byte_tokens[0x{b:02X}] = {id} is not the token of that byte"));
        }
    }
    for &id in &t.special {
        if piece(id).is_none_or(Vec::is_empty) {
            return invalid(format!("special token {id} is outside the vocabulary or empty"));
        }
    }
    match t.info.kind {
        TokenizerKind::ByteLevelBpe => {
            for &(l, r, res) in &t.merges {
                let (Some(lb), Some(rb), Some(result)) = (piece(l), piece(r), piece(res)) else {
                    return invalid(format!("merge ({l}, {r}) -> {res} is outside the vocabulary"));
                };
                if lb.is_empty() || rb.is_empty() || [&lb[..], &rb[..]].concat() != *result {
                    return invalid(format!("merge ({l}, {r}) -> {res}: result is not the concatenation"));
                }
            }
            let mut seen = std::collections::HashSet::new();
            for &(l, r, _) in &t.merges {
                if !seen.insert((l, r)) {
                    return invalid(format!("merge ({l}, {r}) is listed twice"));
                }
            }
        }
        TokenizerKind::SentencePieceBpe => {
            if t.scores.len() != n {
                return invalid("SentencePiece tables need one score per token");
            }
        }
    }
    Ok(())
}

/// Validates `t`, then adds its `{prefix}tokenizer.*` tensors to `w` (the
/// format's writer, [`TokenizerTables::write`]).
pub fn write_tables(t: &TokenizerTables, w: &mut FileWriter, prefix: &str) -> Result<(), ImportError> {
    validate_tables(t)?;
    Ok(t.write(w, prefix)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_is_gpt2() {
        let t = byte_to_char();
        assert_eq!(t[b'!' as usize], '!');
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[0], 'Ā');
        assert_eq!(t[0xAD], 'Ń');
        let mut all: Vec<char> = t.to_vec();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 256);
    }

    fn minimal_json(extra_model: &str, top: &str) -> String {
        let chars = byte_to_char();
        let mut vocab: Vec<String> = vec![r#""<|endoftext|>": 0"#.into()];
        for (b, c) in chars.iter().enumerate() {
            vocab.push(format!("{}: {}", serde_json::to_string(&c.to_string()).unwrap(), b + 1));
        }
        vocab.push(r#""Ġt": 257"#.into());
        vocab.push(r#""Ġth": 258"#.into());
        format!(
            r#"{{"version":"1.0","added_tokens":[{{"id":0,"content":"<|endoftext|>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}}],
            "normalizer":null,"pre_tokenizer":{{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true}},
            "post_processor":null,"decoder":{{"type":"ByteLevel"}},{top}
            "model":{{"type":"BPE","dropout":null,"unk_token":null,{extra_model}"vocab":{{{}}},"merges":["Ġ t",["Ġt","h"],"Ġ t"]}}}}"#,
            vocab.join(",")
        )
    }

    #[test]
    fn imports_minimal_json() {
        let t = from_tokenizer_json(&minimal_json("", "")).unwrap();
        assert_eq!(t.vocab_size(), 259);
        assert_eq!(t.vocab[0], b"<|endoftext|>");
        assert_eq!(t.vocab[257], b" t");
        assert_eq!(t.vocab[258], b" th");
        assert_eq!(t.byte_tokens[b' ' as usize], 33);
        // "Ġ t" listed twice: the last rank is kept.
        assert_eq!(t.merges, vec![(257, 105, 258), (33, 117, 257)]);
        assert_eq!(t.special, vec![0]);
        assert_eq!(t.info.bos, Some(0));
        let mut w = FileWriter::new(
            edgelm_runtime::format::FileKind::Base,
            "t",
            edgelm_runtime::format::Config {
                dim: 8,
                n_layers: 1,
                n_heads: 2,
                n_kv_heads: 2,
                ffn_dim: 8,
                vocab_size: 259,
                max_seq_len: 8,
                rope_theta: 1e4,
                norm_eps: 1e-5,
                tied_head: true,
            },
        );
        t.write(&mut w, "").unwrap();
        assert!(w.to_bytes().is_ok());
    }

    #[test]
    fn rejects_unsupported_json() {
        let bad = |json: String| assert!(from_tokenizer_json(&json).is_err(), "accepted {json}");
        bad(minimal_json("", "").replace(r#""type":"BPE""#, r#""type":"WordPiece""#));
        bad(minimal_json("", "").replace(r#""normalizer":null"#, r#""normalizer":{"type":"NFC"}"#));
        bad(minimal_json("", "").replace(r#""add_prefix_space":false"#, r#""add_prefix_space":true"#));
        bad(minimal_json("", "").replace(r#""special":true"#, r#""special":false"#));
        bad(minimal_json(r#""ignore_merges":true,"#, ""));
        bad(minimal_json(r###""continuing_subword_prefix":"##","###, ""));
        bad(minimal_json("", "").replace(r#""Ġth": 258"#, r#""Ġth": 300"#));
        bad(minimal_json("", "").replace(r#"["Ġt","h"]"#, r#"["Ġt","q"]"#));
        bad(minimal_json("", "").replace(r#""Ġ t","#, r#""Ġ  t","#));
        bad("not json".into());
    }

    fn tokenizer_bin(pieces: &[(&[u8], f32)]) -> Vec<u8> {
        let mut out = 16i32.to_le_bytes().to_vec();
        for (p, s) in pieces {
            out.extend(s.to_le_bytes());
            out.extend((p.len() as i32).to_le_bytes());
            out.extend_from_slice(p);
        }
        out
    }

    #[test]
    fn imports_llama2c_bin() {
        let mut pieces: Vec<(Vec<u8>, f32)> =
            vec![(b"<unk>".to_vec(), 0.0), (b"<s>".to_vec(), 0.0), (b"</s>".to_vec(), 0.0)];
        for b in 0..=255u8 {
            pieces.push((format!("<0x{b:02X}>").into_bytes(), 0.0));
        }
        pieces.push((b" ".to_vec(), -1.0));
        pieces.push((b"a".to_vec(), -2.0));
        let refs: Vec<(&[u8], f32)> = pieces.iter().map(|(p, s)| (&p[..], *s)).collect();
        let bin = tokenizer_bin(&refs);
        let t = from_llama2c_tokenizer_bin(&bin, 261).unwrap();
        assert_eq!(t.vocab[3 + 10], b"\n");
        assert_eq!(t.byte_tokens[10], 13);
        assert_eq!(t.sorted_vocab().len(), 5);
        assert!(from_llama2c_tokenizer_bin(&bin, 262).is_err()); // truncated
        assert!(from_llama2c_tokenizer_bin(&bin[..100], 261).is_err());
        let mut swapped = refs.clone();
        swapped.swap(3, 4);
        assert!(from_llama2c_tokenizer_bin(&tokenizer_bin(&swapped), 261).is_err());
    }
}
