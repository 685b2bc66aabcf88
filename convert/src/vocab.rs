//! Tokenizer tables to and from GGUF vocabulary metadata, and back out of
//! an `.edgelm` file.
//!
//! * Byte-level BPE ↔ `tokenizer.ggml.model = "gpt2"`: tokens as GPT-2
//!   byte-to-unicode strings (special tokens as their literal text), merges
//!   as `"left right"` strings in rank order, `tokenizer.ggml.pre = "gpt-2"`.
//! * SentencePiece BPE ↔ `"llama"`: pieces with `▁` for space, byte-fallback
//!   tokens as `<0xXX>` (token type BYTE), one score per token.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use edgelm_runtime::format::{ModelFile, TokenizerInfo, TokenizerKind};

use crate::tokenizer_import::{byte_to_char, TokenizerTables};
use crate::{Error, Result};

/// llama.cpp token types.
pub const TOKEN_NORMAL: i32 = 1;
pub const TOKEN_UNKNOWN: i32 = 2;
pub const TOKEN_CONTROL: i32 = 3;
pub const TOKEN_USER_DEFINED: i32 = 4;
pub const TOKEN_BYTE: i32 = 6;

const SPACE_MARK: char = '\u{2581}'; // ▁

fn tok_err(msg: impl Into<String>) -> Error {
    Error::Tokenizer(msg.into())
}

/// Reads the tokenizer tables `{prefix}tokenizer.*` of a domain back out of
/// a parsed file.
pub fn tables_from_file(file: &ModelFile<'_>, prefix: &str, info: TokenizerInfo) -> Result<TokenizerTables> {
    let t = |s: &str| file.tensor(&format!("{prefix}tokenizer.{s}"));
    let bytes = t("vocab_bytes")?.u8s()?;
    let offsets = t("vocab_offsets")?.u32s()?;
    let mut vocab = Vec::with_capacity(offsets.len().saturating_sub(1));
    for (&a, &b) in offsets.iter().zip(offsets.iter().skip(1)) {
        let (a, b) = (a as usize, b as usize);
        let piece = bytes.get(a..b).ok_or_else(|| tok_err("vocab_offsets point outside vocab_bytes"))?;
        vocab.push(piece.to_vec());
    }
    let bt = t("byte_tokens")?.u32s()?;
    let mut byte_tokens = [0u32; 256];
    if bt.len() != 256 {
        return Err(tok_err("byte_tokens must have 256 entries"));
    }
    byte_tokens.copy_from_slice(bt);
    let opt = |s: &str| file.get(&format!("{prefix}tokenizer.{s}"));
    let special = match opt("special") {
        Some(v) => v.u32s()?.to_vec(),
        None => Vec::new(),
    };
    let merges = match opt("merges") {
        Some(v) => v.u32s()?.as_chunks::<3>().0.iter().map(|&[l, r, res]| (l, r, res)).collect(),
        None => Vec::new(),
    };
    let scores = match opt("scores") {
        Some(v) => v.f32s()?.to_vec(),
        None => Vec::new(),
    };
    Ok(TokenizerTables { info, vocab, merges, scores, special, byte_tokens })
}

fn strings(v: Vec<String>) -> Value {
    Value::Array(v.into_iter().map(Value::String).collect())
}

/// GGUF `tokenizer.ggml.*` metadata for `t`.
pub fn to_gguf(t: &TokenizerTables) -> Result<Vec<(String, Value)>> {
    let n = t.vocab.len();
    let mut kv: Vec<(String, Value)> = Vec::new();
    let mut types = vec![TOKEN_NORMAL; n];
    for id in t.special.iter().chain(&t.info.bos).chain(&t.info.eos) {
        *types.get_mut(*id as usize).ok_or_else(|| tok_err(format!("token {id} is outside the vocabulary")))? =
            TOKEN_CONTROL;
    }
    let piece_of = |id: u32| {
        t.vocab.get(id as usize).ok_or_else(|| tok_err(format!("merge token {id} is outside the vocabulary")))
    };
    match t.info.kind {
        TokenizerKind::ByteLevelBpe => {
            let map = byte_to_char();
            // (a u8 indexes the 256 entries of `map`)
            let enc =
                |b: &[u8]| -> String { b.iter().map(|&x| map.get(x as usize).copied().unwrap_or_default()).collect() };
            let mut tokens = Vec::with_capacity(n);
            for ((id, piece), ty) in t.vocab.iter().enumerate().zip(types.iter_mut()) {
                if *ty == TOKEN_CONTROL {
                    let s = std::str::from_utf8(piece)
                        .map_err(|_| tok_err(format!("special token {id} is not UTF-8 text")))?;
                    tokens.push(s.to_string());
                } else {
                    if piece.is_empty() {
                        // Padding tokens (vocabulary rounded up): unused.
                        *ty = TOKEN_USER_DEFINED;
                        tokens.push(format!("[PAD{id}]"));
                        continue;
                    }
                    tokens.push(enc(piece));
                }
            }
            let merges: Vec<String> = t
                .merges
                .iter()
                .map(|&(l, r, _)| Ok(format!("{} {}", enc(piece_of(l)?), enc(piece_of(r)?))))
                .collect::<Result<_>>()?;
            kv.push(("tokenizer.ggml.model".into(), Value::String("gpt2".into())));
            kv.push(("tokenizer.ggml.pre".into(), Value::String("gpt-2".into())));
            kv.push(("tokenizer.ggml.tokens".into(), strings(tokens)));
            kv.push(("tokenizer.ggml.token_type".into(), Value::Array(types.into_iter().map(Value::I32).collect())));
            kv.push(("tokenizer.ggml.merges".into(), strings(merges)));
        }
        TokenizerKind::SentencePieceBpe => {
            let mut tokens = Vec::with_capacity(n);
            for ((id, piece), ty) in t.vocab.iter().enumerate().zip(types.iter_mut()) {
                if let Some(b) = piece.first().filter(|_| t.is_byte_token(id as u32)) {
                    *ty = TOKEN_BYTE;
                    tokens.push(format!("<0x{b:02X}>"));
                    continue;
                }
                if piece.is_empty() {
                    *ty = TOKEN_USER_DEFINED;
                    tokens.push(format!("[PAD{id}]"));
                    continue;
                }
                let s = std::str::from_utf8(piece).map_err(|_| {
                    tok_err(format!("token {id} is not UTF-8 text; GGUF `llama` vocabularies hold UTF-8 pieces"))
                })?;
                if id == 0 && s == "<unk>" {
                    *ty = TOKEN_UNKNOWN;
                }
                tokens.push(s.replace(' ', &SPACE_MARK.to_string()));
            }
            if t.scores.len() != n {
                return Err(tok_err("SentencePiece tables need one score per token"));
            }
            kv.push(("tokenizer.ggml.model".into(), Value::String("llama".into())));
            kv.push(("tokenizer.ggml.pre".into(), Value::String("default".into())));
            kv.push(("tokenizer.ggml.tokens".into(), strings(tokens)));
            kv.push(("tokenizer.ggml.scores".into(), Value::Array(t.scores.iter().map(|&s| Value::F32(s)).collect())));
            kv.push(("tokenizer.ggml.token_type".into(), Value::Array(types.into_iter().map(Value::I32).collect())));
            if t.vocab.first().is_some_and(|v| v == b"<unk>") {
                kv.push(("tokenizer.ggml.unknown_token_id".into(), Value::U32(0)));
            }
            kv.push(("tokenizer.ggml.add_space_prefix".into(), Value::Bool(t.info.add_dummy_prefix)));
        }
    }
    if let Some(b) = t.info.bos {
        kv.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(b)));
    }
    if let Some(e) = t.info.eos {
        kv.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(e)));
    }
    kv.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(t.info.bos.is_some())));
    kv.push(("tokenizer.ggml.add_eos_token".into(), Value::Bool(false)));
    Ok(kv)
}

fn meta_u32(md: &HashMap<String, Value>, key: &str) -> Result<Option<u32>> {
    match md.get(key) {
        None => Ok(None),
        Some(v) => v.to_u32().map(Some).or_else(|_| match v {
            Value::I32(x) if *x >= 0 => Ok(Some(*x as u32)),
            Value::U64(x) if *x <= u32::MAX as u64 => Ok(Some(*x as u32)),
            _ => Err(Error::Gguf(format!("{key} must be an unsigned integer"))),
        }),
    }
}

fn meta_strings<'a>(md: &'a HashMap<String, Value>, key: &str) -> Result<Option<Vec<&'a str>>> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                _ => Err(Error::Gguf(format!("{key} must be an array of strings"))),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
        Some(_) => Err(Error::Gguf(format!("{key} must be an array of strings"))),
    }
}

fn meta_i32s(md: &HashMap<String, Value>, key: &str, n: usize) -> Result<Vec<i32>> {
    match md.get(key) {
        None => Ok(vec![TOKEN_NORMAL; n]),
        Some(Value::Array(a)) if a.len() == n => a
            .iter()
            .map(|v| match v {
                Value::I32(x) => Ok(*x),
                Value::U32(x) => Ok(*x as i32),
                _ => Err(Error::Gguf(format!("{key} must be an array of integers"))),
            })
            .collect(),
        Some(_) => Err(Error::Gguf(format!("{key} must be an array with one entry per token"))),
    }
}

/// `<0xXX>` -> the byte.
fn byte_piece(s: &str) -> Option<u8> {
    let hex = s.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Tokenizer tables from GGUF vocabulary metadata.
pub fn from_gguf(md: &HashMap<String, Value>) -> Result<TokenizerTables> {
    let model = match md.get("tokenizer.ggml.model") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(Error::Gguf("tokenizer.ggml.model must be a string".into())),
        None => return Err(Error::Gguf("no tokenizer.ggml.model: the file carries no vocabulary".into())),
    };
    let tokens = meta_strings(md, "tokenizer.ggml.tokens")?
        .ok_or_else(|| Error::Gguf("no tokenizer.ggml.tokens: the file carries no vocabulary".into()))?;
    let n = tokens.len();
    if n == 0 {
        return Err(Error::Gguf("tokenizer.ggml.tokens is empty".into()));
    }
    let types = meta_i32s(md, "tokenizer.ggml.token_type", n)?;
    let bos = meta_u32(md, "tokenizer.ggml.bos_token_id")?;
    let eos = meta_u32(md, "tokenizer.ggml.eos_token_id")?;
    for id in [bos, eos].into_iter().flatten() {
        if id as usize >= n {
            return Err(Error::Gguf(format!("bos/eos token id {id} is outside the {n}-token vocabulary")));
        }
    }
    let is_pad = |id: usize, s: &str, ty: i32| ty == TOKEN_USER_DEFINED && s == format!("[PAD{id}]");
    let mut byte_tokens = [u32::MAX; 256];
    let tables = match model {
        "gpt2" => {
            let map = byte_to_char();
            let inv: HashMap<char, u8> = map.iter().enumerate().map(|(b, &c)| (c, b as u8)).collect();
            let mut vocab = Vec::with_capacity(n);
            let mut special = Vec::new();
            for (id, (&s, &ty)) in tokens.iter().zip(&types).enumerate() {
                if is_pad(id, s, ty) {
                    vocab.push(Vec::new());
                } else if ty == TOKEN_CONTROL || ty == TOKEN_USER_DEFINED {
                    if !s.is_empty() {
                        special.push(id as u32);
                    }
                    vocab.push(s.as_bytes().to_vec());
                } else {
                    let b: Option<Vec<u8>> = s.chars().map(|c| inv.get(&c).copied()).collect();
                    match b {
                        Some(b) if !b.is_empty() => vocab.push(b),
                        _ => return Err(tok_err(format!("token {id} {s:?} is not a byte-level (gpt2) string"))),
                    }
                }
            }
            let mut by_string: HashMap<&str, u32> = HashMap::with_capacity(n);
            for (id, (&s, &ty)) in tokens.iter().zip(&types).enumerate() {
                if ty != TOKEN_CONTROL && ty != TOKEN_USER_DEFINED {
                    by_string.entry(s).or_insert(id as u32);
                }
            }
            for ((b, slot), c) in byte_tokens.iter_mut().enumerate().zip(map) {
                let c = c.to_string();
                *slot = *by_string.get(c.as_str()).ok_or_else(|| {
                    tok_err(format!("the vocabulary lacks the byte-level token {c:?} for byte 0x{b:02X}"))
                })?;
            }
            let mut merges = Vec::new();
            for m in meta_strings(md, "tokenizer.ggml.merges")?.unwrap_or_default() {
                let (l, r) = m
                    .split_once(' ')
                    .ok_or_else(|| tok_err(format!("merge {m:?} is not two tokens separated by a space")))?;
                let id = |s: &str| {
                    by_string.get(s).copied().ok_or_else(|| tok_err(format!("merge {m:?}: {s:?} is not a token")))
                };
                merges.push((id(l)?, id(r)?, id(&format!("{l}{r}"))?));
            }
            TokenizerTables {
                info: TokenizerInfo {
                    kind: TokenizerKind::ByteLevelBpe,
                    bos,
                    eos,
                    add_dummy_prefix: false,
                    strip_space_after_bos: false,
                },
                vocab,
                merges,
                scores: Vec::new(),
                special,
                byte_tokens,
            }
        }
        "llama" => {
            let scores: Vec<f32> = match md.get("tokenizer.ggml.scores") {
                Some(Value::Array(a)) if a.len() == n => a
                    .iter()
                    .map(|v| v.to_f32().map_err(|_| Error::Gguf("tokenizer.ggml.scores must be f32".into())))
                    .collect::<Result<_>>()?,
                Some(_) => return Err(Error::Gguf("tokenizer.ggml.scores must have one f32 per token".into())),
                None => vec![0.0; n],
            };
            let mut vocab = Vec::with_capacity(n);
            let mut special = Vec::new();
            for (id, (&s, &ty)) in tokens.iter().zip(&types).enumerate() {
                if is_pad(id, s, ty) {
                    vocab.push(Vec::new());
                    continue;
                }
                match byte_piece(s) {
                    Some(b) if ty == TOKEN_BYTE || ty == TOKEN_NORMAL => {
                        // (a u8 indexes the 256 entries of `byte_tokens`)
                        if let Some(slot) = byte_tokens.get_mut(b as usize).filter(|slot| **slot == u32::MAX) {
                            *slot = id as u32;
                        }
                        vocab.push(vec![b]);
                    }
                    _ => {
                        if ty == TOKEN_USER_DEFINED && !s.is_empty() {
                            special.push(id as u32);
                        }
                        vocab.push(s.replace(SPACE_MARK, " ").into_bytes());
                    }
                }
            }
            if let Some(b) = byte_tokens.iter().position(|&id| id == u32::MAX) {
                return Err(tok_err(format!(
                    "the vocabulary lacks the byte-fallback token <0x{b:02X}> (needed to encode any text)"
                )));
            }
            let prefix = match md.get("tokenizer.ggml.add_space_prefix") {
                Some(Value::Bool(b)) => *b,
                _ => true,
            };
            TokenizerTables {
                info: TokenizerInfo {
                    kind: TokenizerKind::SentencePieceBpe,
                    bos,
                    eos,
                    add_dummy_prefix: prefix,
                    strip_space_after_bos: prefix,
                },
                vocab,
                merges: Vec::new(),
                scores,
                special,
                byte_tokens,
            }
        }
        other => {
            return Err(tok_err(format!(
                "GGUF tokenizer model {other:?} is not supported (only \"gpt2\" byte-level BPE and \"llama\" SentencePiece)"
            )))
        }
    };
    crate::tokenizer_import::validate_tables(&tables).map_err(|e| tok_err(e.to_string()))?;
    Ok(tables)
}
