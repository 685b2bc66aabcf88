//! `inspect` and `verify` for `.edgelm` files (and a short summary of GGUF
//! files for `inspect`).

use std::fmt::Write;

use edgelm_runtime::format::{DType, FileKind, ModelFile, VerifyChecksum};
use edgelm_runtime::{AlignedBytes, Model, Session, SessionOptions};

use crate::{Error, Result};

/// Human-readable description of an `.edgelm` file: header, domains and
/// the tensor table. Validates the structure (not the checksum).
pub fn describe(bytes: &[u8]) -> Result<String> {
    let aligned = AlignedBytes::from_slice(bytes);
    let f = ModelFile::parse(&aligned, VerifyChecksum::Skip)?;
    let m = &f.meta;
    let c = &m.config;
    let mut s = String::new();
    let _ = writeln!(s, "kind        {:?}", m.kind);
    let _ = writeln!(s, "model_id    {}", m.model_id);
    if m.kind == FileKind::Pack {
        let _ = writeln!(s, "base        {}", m.base_model_id);
    }
    let _ = writeln!(
        s,
        "config      dim {} layers {} heads {} kv-heads {} ffn {} vocab {} max-seq {} rope-theta {} eps {} tied-head {}",
        c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.ffn_dim, c.vocab_size, c.max_seq_len, c.rope_theta, c.norm_eps, c.tied_head
    );
    for d in &m.domains {
        let _ = writeln!(
            s,
            "domain      {} prefix {:?} vocab {} tokenizer {:?} bos {:?} eos {:?} own-tokenizer {} own-head {} tag {:?} expansion {:?}",
            d.name,
            d.prefix,
            d.vocab_size,
            d.tokenizer.kind,
            d.tokenizer.bos,
            d.tokenizer.eos,
            d.own_tokenizer,
            d.own_head,
            d.tag_token,
            d.expansion_positions.as_slice()
        );
    }
    let mut params = [0usize; 4];
    let _ = writeln!(s, "tensors     {} ({} bytes of data, file {} bytes)", f.n_tensors(), f.data_len(), f.file_len);
    for t in f.tensors() {
        let _ = writeln!(s, "  {:<40} {:<4} {:?} {} bytes", t.name, t.dtype.name(), t.shape(), t.bytes.len());
        let k = match t.dtype {
            DType::F32 => &mut params[0],
            DType::F16 => &mut params[1],
            DType::Q8 => &mut params[2],
            DType::Q4 => &mut params[3],
            _ => continue,
        };
        if !t.name.contains("tokenizer.") {
            *k += t.numel();
        }
    }
    let _ = writeln!(s, "parameters  f32 {} f16 {} q8 {} q4 {}", params[0], params[1], params[2], params[3]);
    let _ = writeln!(s, "checksum    {:#018x} (not verified; run `verify`)", f.checksum);
    Ok(s)
}

/// Result of `verify`.
#[derive(Debug, Clone)]
pub struct Verified {
    pub checksum: u64,
    pub n_tensors: usize,
    /// Per domain: name, argmax token after BOS, max |logit|.
    pub domains: Vec<(String, u32, f32)>,
}

/// Verifies an `.edgelm` base (checksum, structure as the runtime loads
/// it, then one forward step per domain from BOS with finite logits).
/// With `pack`, the pack is verified against the base too.
pub fn verify(bytes: &[u8], pack: Option<&[u8]>) -> Result<Verified> {
    let aligned = AlignedBytes::from_slice(bytes);
    let pack = pack.map(AlignedBytes::from_slice);
    let f = ModelFile::parse(&aligned, VerifyChecksum::Yes)?;
    if f.meta.kind == FileKind::Pack && pack.is_none() {
        return Err(Error::Verify(
            "this is a domain pack: verify it together with its base (`verify BASE --pack FILE`)".into(),
        ));
    }
    check_weights_finite(&f)?;
    let mut model = Model::from_file(&f)?;
    if let Some(p) = &pack {
        let pf = ModelFile::parse(p, VerifyChecksum::Yes)?;
        check_weights_finite(&pf)?;
        model.add_pack(&pf)?;
    }
    let max_seq = 4.min(model.config().max_seq_len as usize);
    let mut arena = vec![0u8; model.arena_bytes(max_seq)];
    let mut domains = Vec::new();
    for d in model.domains().iter() {
        let mut session = Session::with_domain(&model, d, &mut arena, SessionOptions::new(max_seq))?;
        let first = d.tokenizer.info().bos.unwrap_or(0);
        let logits = session.step(first)?;
        if logits.len() != d.vocab_size {
            return Err(Error::Verify(format!(
                "domain {}: {} logits for a vocabulary of {}",
                d.name,
                logits.len(),
                d.vocab_size
            )));
        }
        if let Some(i) = logits.iter().position(|v| !v.is_finite()) {
            return Err(Error::Verify(format!("domain {}: logit {i} is not finite after one token", d.name)));
        }
        let top = edgelm_runtime::sampler::argmax(logits);
        let amax = logits.iter().fold(0f32, |m, v| m.max(v.abs()));
        domains.push((d.name.to_string(), top, amax));
    }
    Ok(Verified { checksum: f.checksum, n_tensors: f.n_tensors(), domains })
}

/// Names the first tensor holding a NaN or infinite value (f32, f16, or a
/// q8 / q4 scale): the runtime loads such a file, but it computes garbage.
fn check_weights_finite(f: &ModelFile<'_>) -> Result<()> {
    // f16 bits with an all-ones exponent are NaN or infinite
    let f16_bad = |bits: &[u16]| bits.iter().position(|&b| b & 0x7c00 == 0x7c00);
    for t in f.tensors() {
        let bad = match t.dtype {
            DType::F32 => t.f32s()?.iter().position(|v| !v.is_finite()),
            DType::F16 => f16_bad(t.f16_bits()?),
            DType::Q8 => f16_bad(t.q8()?.1).map(|g| g * edgelm_runtime::format::Q8_GROUP),
            DType::Q4 => f16_bad(t.q4()?.1).map(|g| g * edgelm_runtime::format::Q4_GROUP),
            DType::U8 | DType::U32 => None,
        };
        if let Some(i) = bad {
            return Err(Error::Verify(format!(
                "tensor {} ({}): element {i} is NaN or infinite",
                t.name,
                t.dtype.name()
            )));
        }
    }
    Ok(())
}

/// A short summary of a GGUF file (metadata without the vocabulary arrays,
/// and the tensor table).
pub fn describe_gguf(path: &std::path::Path) -> Result<String> {
    use candle_core::quantized::gguf_file::{Content, Value};
    let mut r = std::io::BufReader::new(std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?);
    let c = Content::read(&mut r).map_err(|e| Error::BadInput {
        path: path.into(),
        what: format!("not a readable GGUF file: {}", crate::gguf::candle_msg(&e)),
    })?;
    let mut s = String::new();
    let _ = writeln!(s, "GGUF {:?}, {} metadata keys, {} tensors", c.magic, c.metadata.len(), c.tensor_infos.len());
    let mut metadata: Vec<(&String, &Value)> = c.metadata.iter().collect();
    metadata.sort_by_key(|&(k, _)| k);
    for (k, v) in metadata {
        let shown = match v {
            Value::Array(a) => format!("[{} values]", a.len()),
            Value::String(x) => format!("{x:?}"),
            other => format!("{other:?}"),
        };
        let _ = writeln!(s, "  {k} = {shown}");
    }
    let mut tensors: Vec<_> = c.tensor_infos.iter().collect();
    tensors.sort_by_key(|&(n, _)| n);
    for (n, t) in tensors {
        let _ = writeln!(s, "  {:<32} {:?} {:?}", n, t.ggml_dtype, t.shape.dims());
    }
    Ok(s)
}
