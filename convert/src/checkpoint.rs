//! `import-checkpoint`: a trainer (Hugging Face Llama) checkpoint directory —
//! `config.json`, `model.safetensors` (f32, f16 or bf16; or shards listed in
//! `model.safetensors.index.json`) and `tokenizer.json` — to `.edgelm`.
//! See docs/CHECKPOINT.md. q_proj / k_proj rows are permuted from the
//! rotate-half RoPE layout to interleaved pairs.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType as CDType, Device, Tensor};
use edgelm_runtime::format::{Config, DomainSpec};
use serde_json::Value;

use crate::store::{check_shape, permute_rope_rows, ModelBuilder, Role, Source};
use crate::tokenizer_import::{from_tokenizer_json, TokenizerTables};
use crate::{Converted, Error, ImportOptions, Result};

/// What `config.json` says, in runtime terms.
#[derive(Debug, Clone)]
pub struct CheckpointConfig {
    pub config: Config,
    pub model_id: Option<String>,
    pub domain: String,
}

fn get_u32(v: &Value, key: &str) -> Result<Option<u32>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => match x.as_u64() {
            Some(n) if n <= u32::MAX as u64 => Ok(Some(n as u32)),
            _ => Err(Error::Config(format!("config.json: {key} must be a non-negative integer, found {x}"))),
        },
    }
}

fn req_u32(v: &Value, key: &str) -> Result<u32> {
    get_u32(v, key)?.ok_or_else(|| Error::Config(format!("config.json lacks {key}")))
}

fn get_f32(v: &Value, key: &str, default: f32) -> Result<f32> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(x) => {
            x.as_f64().map(|f| f as f32).ok_or_else(|| Error::Config(format!("config.json: {key} must be a number")))
        }
    }
}

/// Parses `config.json`.
pub fn parse_config(json: &str) -> Result<CheckpointConfig> {
    let v: Value =
        serde_json::from_str(json).map_err(|e| Error::Config(format!("config.json is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(Error::Config("config.json is not a JSON object".into()));
    }
    let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or("");
    let is_llama_arch = v
        .get("architectures")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|x| x.as_str() == Some("LlamaForCausalLM")));
    if model_type != "llama" && !is_llama_arch {
        let name = if model_type.is_empty() { "<missing model_type>" } else { model_type };
        return Err(Error::UnsupportedArchitecture(name.into()));
    }
    if let Some(act) = v.get("hidden_act").and_then(Value::as_str) {
        if act != "silu" {
            return Err(Error::Config(format!("hidden_act {act:?} is not supported (the runtime uses SiLU)")));
        }
    }
    if !v.get("rope_scaling").is_none_or(Value::is_null) {
        return Err(Error::Config("rope_scaling is not supported (the runtime uses plain RoPE)".into()));
    }
    for key in ["attention_bias", "mlp_bias"] {
        if v.get(key).and_then(Value::as_bool) == Some(true) {
            return Err(Error::Config(format!("{key}=true is not supported (the runtime has no biases)")));
        }
    }
    let dim = req_u32(&v, "hidden_size")?;
    let n_heads = req_u32(&v, "num_attention_heads")?;
    if let Some(hd) = get_u32(&v, "head_dim")? {
        if n_heads == 0 || hd * n_heads != dim {
            return Err(Error::Config(format!(
                "head_dim {hd} × num_attention_heads {n_heads} ≠ hidden_size {dim} (not supported by the runtime)"
            )));
        }
    }
    let config = Config {
        dim,
        n_layers: req_u32(&v, "num_hidden_layers")?,
        n_heads,
        n_kv_heads: get_u32(&v, "num_key_value_heads")?.unwrap_or(n_heads),
        ffn_dim: req_u32(&v, "intermediate_size")?,
        vocab_size: req_u32(&v, "vocab_size")?,
        max_seq_len: get_u32(&v, "max_position_embeddings")?.unwrap_or(2048).min(edgelm_runtime::format::MAX_SEQ),
        rope_theta: get_f32(&v, "rope_theta", 10000.0)?,
        norm_eps: get_f32(&v, "rms_norm_eps", 1e-6)?,
        tied_head: v.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false),
    };
    config.validate()?;
    let e = v.get("edgelm");
    if let Some(kind) = e.and_then(|e| e.get("kind")).and_then(Value::as_str) {
        if kind != "base" {
            return Err(Error::NotYet(format!(
                "this is a {kind:?} checkpoint (edgelm.kind): it imports as a domain pack over its base; \
                 run `edgelm-convert import-checkpoint DIR --base BASE_DIR --output PACK.edgelm`"
            )));
        }
    }
    let model_id = e.and_then(|e| e.get("model_id")).and_then(Value::as_str).map(str::to_string);
    let domain = e
        .and_then(|e| e.get("domains"))
        .and_then(Value::as_array)
        .and_then(|d| d.first())
        .and_then(Value::as_str)
        .unwrap_or("story")
        .to_string();
    Ok(CheckpointConfig { config, model_id, domain })
}

/// The safetensors files of a checkpoint.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io("read", &index, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::BadInput { path: index.clone(), what: format!("not valid JSON: {e}") })?;
        let map = v
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| Error::BadInput { path: index.clone(), what: "no weight_map object".into() })?;
        let files: BTreeSet<&str> = map.values().filter_map(Value::as_str).collect();
        if files.is_empty() {
            return Err(Error::BadInput { path: index, what: "weight_map lists no files".into() });
        }
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    Err(Error::BadInput {
        path: dir.to_path_buf(),
        what: "no model.safetensors (or model.safetensors.index.json) in the checkpoint directory".into(),
    })
}

/// All tensors of the checkpoint (any float dtype), by name.
fn load_tensors(dir: &Path) -> Result<HashMap<String, Tensor>> {
    let mut all = HashMap::new();
    for f in weight_files(dir)? {
        if !f.is_file() {
            return Err(Error::BadInput { path: f, what: "listed in the index but missing".into() });
        }
        let t = candle_core::safetensors::load(&f, &Device::Cpu).map_err(|e| {
            Error::Safetensors(format!(
                "{}: not a readable safetensors file (truncated or corrupt?): {}",
                f.display(),
                crate::gguf::candle_msg(&e)
            ))
        })?;
        all.extend(t);
    }
    Ok(all)
}

fn to_f32(name: &str, t: &Tensor) -> Result<Vec<f32>> {
    match t.dtype() {
        CDType::F32 | CDType::F16 | CDType::BF16 | CDType::F64 => {}
        other => {
            return Err(Error::UnsupportedTensorType { name: name.into(), dtype: format!("{other:?}") });
        }
    }
    t.to_dtype(CDType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| Error::Safetensors(format!("tensor {name}: {}", crate::gguf::candle_msg(&e))))
}

/// Base domain declared with the tokenizer's settings.
pub(crate) fn base_domain(name: &str, vocab_size: u32, tables: &TokenizerTables) -> DomainSpec {
    DomainSpec {
        name: name.into(),
        prefix: String::new(),
        own_tokenizer: true,
        own_head: true,
        vocab_size,
        tokenizer: tables.info,
        tag_token: None,
        expansion_positions: Vec::new(),
    }
}

/// Pads a tokenizer whose vocabulary is smaller than the embedding (Hugging
/// Face models often round the embedding up) with empty, never-encoded tokens.
pub(crate) fn fit_vocab(tables: &mut TokenizerTables, vocab_size: usize) -> Result<()> {
    let n = tables.vocab.len();
    if n > vocab_size {
        return Err(Error::Tokenizer(format!(
            "the tokenizer has {n} tokens but the model's vocab_size is {vocab_size}"
        )));
    }
    while tables.vocab.len() < vocab_size {
        tables.vocab.push(Vec::new());
        if !tables.scores.is_empty() {
            tables.scores.push(f32::MIN);
        }
    }
    Ok(())
}

/// Imports the checkpoint in `dir`.
pub fn import_checkpoint(dir: &Path, opts: &ImportOptions) -> Result<Converted> {
    if !dir.is_dir() {
        return Err(Error::BadInput {
            path: dir.into(),
            what: "not a directory (expected a checkpoint directory)".into(),
        });
    }
    let cfg_path = dir.join("config.json");
    let cfg_text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io("read", &cfg_path, e))?;
    let ck = parse_config(&cfg_text)?;
    let c = ck.config;
    let tok_path = dir.join("tokenizer.json");
    let tok_text = std::fs::read_to_string(&tok_path).map_err(|e| Error::io("read", &tok_path, e))?;
    let mut tables = from_tokenizer_json(&tok_text).map_err(|e| Error::Tokenizer(format!("tokenizer.json: {e}")))?;
    fit_vocab(&mut tables, c.vocab_size as usize)?;

    let mut tensors = load_tensors(dir)?;
    // Non-persistent buffers some exporters include.
    tensors.retain(|k, _| !k.ends_with("rotary_emb.inv_freq"));
    let mut b = ModelBuilder::new(c, opts.policy)?;
    let pb = opts.progress(2 + 9 * c.n_layers as u64 + 1);
    let (dim, hd, vocab) = (c.dim as usize, c.head_dim(), c.vocab_size as usize);

    let take = |tensors: &mut HashMap<String, Tensor>, hf: &str, shape: &[usize]| -> Result<Vec<f32>> {
        let t = tensors.remove(hf).ok_or_else(|| Error::MissingTensor(hf.into()))?;
        check_shape(hf, t.dims(), shape)?;
        to_f32(hf, &t)
    };
    let t = &mut tensors;
    let emb = take(t, "model.embed_tokens.weight", &[vocab, dim])?;
    b.matrix("tok_embeddings", Role::Embedding, vocab, dim, Source::F32(emb.clone()))?;
    pb.inc(1);
    for l in 0..c.n_layers as usize {
        let hf = |s: &str| format!("model.layers.{l}.{s}");
        let rt = |s: &str| format!("layers.{l}.{s}");
        let (kv, ffn) = (c.kv_dim(), c.ffn_dim as usize);
        b.norm(&rt("attention_norm"), take(t, &hf("input_layernorm.weight"), &[dim])?)?;
        let q = take(t, &hf("self_attn.q_proj.weight"), &[dim, dim])?;
        let q = permute_rope_rows(&q, c.n_heads as usize, hd, dim);
        b.matrix(&rt("attention.wq"), Role::Matrix, dim, dim, Source::F32(q))?;
        let k = take(t, &hf("self_attn.k_proj.weight"), &[kv, dim])?;
        let k = permute_rope_rows(&k, c.n_kv_heads as usize, hd, dim);
        b.matrix(&rt("attention.wk"), Role::Matrix, kv, dim, Source::F32(k))?;
        let v = take(t, &hf("self_attn.v_proj.weight"), &[kv, dim])?;
        b.matrix(&rt("attention.wv"), Role::Matrix, kv, dim, Source::F32(v))?;
        let o = take(t, &hf("self_attn.o_proj.weight"), &[dim, dim])?;
        b.matrix(&rt("attention.wo"), Role::Matrix, dim, dim, Source::F32(o))?;
        b.norm(&rt("ffn_norm"), take(t, &hf("post_attention_layernorm.weight"), &[dim])?)?;
        let g = take(t, &hf("mlp.gate_proj.weight"), &[ffn, dim])?;
        b.matrix(&rt("feed_forward.w1"), Role::Matrix, ffn, dim, Source::F32(g))?;
        let d = take(t, &hf("mlp.down_proj.weight"), &[dim, ffn])?;
        b.matrix(&rt("feed_forward.w2"), Role::Matrix, dim, ffn, Source::F32(d))?;
        let u = take(t, &hf("mlp.up_proj.weight"), &[ffn, dim])?;
        b.matrix(&rt("feed_forward.w3"), Role::Matrix, ffn, dim, Source::F32(u))?;
        pb.inc(9);
    }
    b.norm("norm", take(t, "model.norm.weight", &[dim])?)?;
    if c.tied_head {
        if t.contains_key("lm_head.weight") {
            let head = take(t, "lm_head.weight", &[vocab, dim])?;
            if head != emb {
                return Err(Error::Config(
                    "tie_word_embeddings is true but lm_head.weight differs from the embedding".into(),
                ));
            }
        }
    } else {
        let head = take(t, "lm_head.weight", &[vocab, dim])?;
        b.matrix("output", Role::Embedding, vocab, dim, Source::F32(head))?;
    }
    pb.inc(1);
    if let Some(extra) = t.keys().min() {
        return Err(Error::UnexpectedTensor(extra.clone()));
    }
    tables.write(&mut b.writer, "").map_err(|e| Error::Tokenizer(e.to_string()))?;
    b.writer.domains.push(base_domain(opts.domain.as_deref().unwrap_or(&ck.domain), c.vocab_size, &tables));
    b.writer.model_id = ck.model_id.unwrap_or_else(|| b.content_id());
    pb.finish_and_clear();
    let (bytes, report) = b.finish()?;
    Ok(Converted { bytes, report })
}
