//! `import-checkpoint`: a trainer (Hugging Face Llama) checkpoint directory —
//! `config.json`, `model.safetensors` (f32, f16 or bf16; or shards listed in
//! `model.safetensors.index.json`) and `tokenizer.json` — to `.edgelm`.
//! See docs/CHECKPOINT.md. q_proj / k_proj rows are permuted from the
//! rotate-half RoPE layout to interleaved pairs.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use edgelm_checkpoint::{Kind, LlamaConfig, CONFIG_FILE, MODEL_FILE, MODEL_INDEX_FILE, TOKENIZER_FILE};
use edgelm_runtime::format::{Config, DomainSpec, TokenizerTables};
use serde_json::Value;

use crate::store::{check_shape, permute_rope_rows, ModelBuilder, Role, Source};
use crate::tokenizer_import::{from_tokenizer_json, write_tables};
use crate::weights::StoredTensor;
use crate::{Converted, Error, ImportOptions, Result};

/// What `config.json` says, in runtime terms.
#[derive(Debug, Clone)]
pub struct CheckpointConfig {
    pub config: Config,
    pub model_id: Option<String>,
    /// The first trained domain (the base file's default).
    pub domain: String,
    /// Every trained domain, in the checkpoint's order (a joint model has several).
    pub domains: Vec<String>,
}

/// Reads `config.json` (the checkpoint contract's type).
pub fn read_config(json: &str) -> Result<LlamaConfig> {
    serde_json::from_str(json).map_err(|e| Error::Config(format!("config.json: {e}")))
}

fn to_u32(v: usize, key: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Config(format!("config.json: {key} {v} is out of range")))
}

/// The runtime config of a Llama `config.json`, whatever its `edgelm.kind`;
/// refuses what the runtime does not implement.
pub fn runtime_config(c: &LlamaConfig) -> Result<Config> {
    if !c.is_llama() {
        let name = if c.model_type.is_empty() { "<missing model_type>" } else { c.model_type.as_str() };
        return Err(Error::UnsupportedArchitecture(name.into()));
    }
    if let Some(act) = c.hidden_act.as_deref().filter(|a| *a != "silu") {
        return Err(Error::Config(format!("hidden_act {act:?} is not supported (the runtime uses SiLU)")));
    }
    if c.rope_scaling.is_some() {
        return Err(Error::Config("rope_scaling is not supported (the runtime uses plain RoPE)".into()));
    }
    for (key, on) in [("attention_bias", c.attention_bias), ("mlp_bias", c.mlp_bias)] {
        if on == Some(true) {
            return Err(Error::Config(format!("{key}=true is not supported (the runtime has no biases)")));
        }
    }
    let (dim, n_heads) = (to_u32(c.hidden_size, "hidden_size")?, to_u32(c.num_attention_heads, "num_attention_heads")?);
    if let Some(hd) = c.head_dim {
        if n_heads == 0 || hd * c.num_attention_heads != c.hidden_size {
            return Err(Error::Config(format!(
                "head_dim {hd} × num_attention_heads {n_heads} ≠ hidden_size {dim} (not supported by the runtime)"
            )));
        }
    }
    let config = Config {
        dim,
        n_layers: to_u32(c.num_hidden_layers, "num_hidden_layers")?,
        n_heads,
        n_kv_heads: to_u32(c.kv_heads(), "num_key_value_heads")?,
        ffn_dim: to_u32(c.intermediate_size, "intermediate_size")?,
        vocab_size: to_u32(c.vocab_size, "vocab_size")?,
        max_seq_len: c.max_positions().min(edgelm_runtime::format::MAX_SEQ as usize) as u32,
        rope_theta: c.rope_theta() as f32,
        norm_eps: c.norm_eps() as f32,
        tied_head: c.tie_word_embeddings,
    };
    config.validate()?;
    Ok(config)
}

/// Parses a base checkpoint's `config.json`.
pub fn parse_config(json: &str) -> Result<CheckpointConfig> {
    let c = read_config(json)?;
    let config = runtime_config(&c)?;
    if c.edgelm.kind != Kind::Base {
        return Err(Error::NotYet(format!(
            "this is a {:?} checkpoint (edgelm.kind): it imports as a domain pack over its base; \
             run `edgelm-convert import-checkpoint DIR --base BASE_DIR --output PACK.edgelm`",
            c.edgelm.kind.name()
        )));
    }
    let domain = c.first_domain().unwrap_or("story").to_string();
    let domains = if c.edgelm.domains.is_empty() { vec![domain.clone()] } else { c.edgelm.domains.clone() };
    Ok(CheckpointConfig { config, model_id: c.edgelm.model_id, domain, domains })
}

/// The safetensors files of a checkpoint.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join(MODEL_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join(MODEL_INDEX_FILE);
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

/// All tensors of the checkpoint, by name.
fn load_tensors(dir: &Path) -> Result<HashMap<String, StoredTensor>> {
    let mut all = HashMap::new();
    for f in weight_files(dir)? {
        if !f.is_file() {
            return Err(Error::BadInput { path: f, what: "listed in the index but missing".into() });
        }
        all.extend(crate::weights::load(&f)?);
    }
    Ok(all)
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

/// The domain tags of a tokenizer as the trainer writes them: special tokens
/// `<|name|>` other than `<|endoftext|>`, in id order.
fn domain_tags(tables: &TokenizerTables) -> Vec<(&str, u32)> {
    let mut tags: Vec<(&str, u32)> = tables
        .special
        .iter()
        .filter_map(|&id| {
            let piece = std::str::from_utf8(tables.vocab.get(id as usize)?).ok()?;
            let name = piece.strip_prefix("<|")?.strip_suffix("|>")?;
            (name != "endoftext").then_some((name, id))
        })
        .collect();
    tags.sort_by_key(|&(_, id)| id);
    tags
}

/// The base file's domains: `first`, then the checkpoint's other trained
/// domains. The trainer starts every document with `[BOS, <|domain|>]` when
/// its tokenizer is shared by several domains (tags for more than one), so
/// then each domain carries its tag, the first owning the tokenizer and head
/// and the others sharing them; otherwise one domain, no tag.
fn base_domains(first: &str, trained: &[String], vocab_size: u32, tables: &TokenizerTables) -> Result<Vec<DomainSpec>> {
    let tags = domain_tags(tables);
    let mut base = base_domain(first, vocab_size, tables);
    if tags.len() <= 1 {
        return Ok(vec![base]);
    }
    let tag = |name: &str| {
        tags.iter().find(|(n, _)| *n == name).map(|&(_, id)| id).ok_or_else(|| {
            let names: Vec<&str> = tags.iter().map(|(n, _)| *n).collect();
            Error::Config(format!("the tokenizer is shared by the domains {names:?} and has no <|{name}|> tag"))
        })
    };
    base.tag_token = Some(tag(first)?);
    let mut out = vec![base];
    for name in trained.iter().filter(|n| n.as_str() != first) {
        out.push(DomainSpec {
            name: name.clone(),
            prefix: String::new(),
            own_tokenizer: false,
            own_head: false,
            vocab_size,
            tokenizer: tables.info,
            tag_token: Some(tag(name)?),
            expansion_positions: Vec::new(),
        });
    }
    Ok(out)
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
    let cfg_path = dir.join(CONFIG_FILE);
    let cfg_text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io("read", &cfg_path, e))?;
    let ck = parse_config(&cfg_text)?;
    let c = ck.config;
    let tok_path = dir.join(TOKENIZER_FILE);
    let tok_text = std::fs::read_to_string(&tok_path).map_err(|e| Error::io("read", &tok_path, e))?;
    let mut tables = from_tokenizer_json(&tok_text).map_err(|e| Error::Tokenizer(format!("tokenizer.json: {e}")))?;
    fit_vocab(&mut tables, c.vocab_size as usize)?;

    let mut tensors = load_tensors(dir)?;
    // Non-persistent buffers some exporters include.
    tensors.retain(|k, _| !k.ends_with("rotary_emb.inv_freq"));
    let mut b = ModelBuilder::new(c, opts.policy)?;
    let pb = opts.progress(2 + 9 * c.n_layers as u64 + 1);
    let (dim, hd, vocab) = (c.dim as usize, c.head_dim(), c.vocab_size as usize);

    let take = |tensors: &mut HashMap<String, StoredTensor>, hf: &str, shape: &[usize]| -> Result<Vec<f32>> {
        let t = tensors.remove(hf).ok_or_else(|| Error::MissingTensor(hf.into()))?;
        check_shape(hf, t.dims(), shape)?;
        t.to_f32(hf)
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
        let q = permute_rope_rows(&q, c.n_heads as usize, hd, dim)?;
        b.matrix(&rt("attention.wq"), Role::Matrix, dim, dim, Source::F32(q))?;
        let k = take(t, &hf("self_attn.k_proj.weight"), &[kv, dim])?;
        let k = permute_rope_rows(&k, c.n_kv_heads as usize, hd, dim)?;
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
    write_tables(&tables, &mut b.writer, "").map_err(|e| Error::Tokenizer(e.to_string()))?;
    let first = opts.domain.as_deref().unwrap_or(&ck.domain);
    b.writer.domains.extend(base_domains(first, &ck.domains, c.vocab_size, &tables)?);
    b.writer.model_id = ck.model_id.unwrap_or_else(|| b.content_id());
    pb.finish_and_clear();
    let (bytes, report) = b.finish()?;
    Ok(Converted { bytes, report })
}
