//! A trainer *domain* checkpoint (`edgelm-train expand` output, see
//! docs/CHECKPOINT.md "Domain checkpoints") to an `.edgelm` domain pack that
//! loads over the base `.edgelm` imported from the base checkpoint.
//!
//! The pack's `base_model_id` is the base config's `edgelm.model_id` (which
//! `import-checkpoint` writes as the base file's `model_id`), so the runtime
//! refuses the pack over any other base. New blocks `domain.layers.J.*` become
//! `domains.<name>.blocks.J.*` (q/k rows permuted from rotate-half to
//! interleaved RoPE exactly as for base blocks, [`permute_rope_rows`]); a
//! per-domain tokenizer brings its tables, embedding (`tok_embeddings`), final
//! `norm` and, when untied, `output`.

use std::path::Path;

use edgelm_checkpoint::{Kind, TokenizerMode, CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE};
use edgelm_runtime::format::{DomainSpec, FileKind};

use crate::checkpoint::{fit_vocab, import_checkpoint, parse_config, read_config, runtime_config};
use crate::store::{check_shape, permute_rope_rows, ModelBuilder, Role, Source};
use crate::tokenizer_import::{from_tokenizer_json, write_tables};
use crate::{Converted, Error, ImportOptions, Result, StoreDType};

fn read(dir: &Path, f: &str) -> Result<String> {
    let p = dir.join(f);
    std::fs::read_to_string(&p).map_err(|e| Error::io("read", &p, e))
}

/// The pack bytes for the domain checkpoint `domain_dir` trained over the base
/// checkpoint `base_dir`, with matrices stored as `dtype`. The result has been
/// loaded by the runtime over the imported base before it is returned.
pub fn domain_checkpoint_to_pack(domain_dir: &Path, base_dir: &Path, dtype: StoreDType) -> Result<Vec<u8>> {
    Ok(import_domain(domain_dir, base_dir, &ImportOptions::new(dtype))?.bytes)
}

/// [`domain_checkpoint_to_pack`] with the per-tensor report.
pub fn import_domain(domain_dir: &Path, base_dir: &Path, opts: &ImportOptions) -> Result<Converted> {
    let dc = read_config(&read(domain_dir, CONFIG_FILE)?)?;
    let e = &dc.edgelm;
    let bad = |what: String| Error::BadInput { path: domain_dir.join(CONFIG_FILE), what };
    if e.kind != Kind::Domain {
        return Err(bad("edgelm.kind is not \"domain\" (convert a base checkpoint with import-checkpoint)".into()));
    }
    let name = e.domains.first().ok_or_else(|| bad("edgelm.domains is missing".into()))?.clone();
    let want_base = e.base_model_id.as_deref().ok_or_else(|| bad("no edgelm.base_model_id".into()))?;
    let model_id = e.model_id.clone().unwrap_or_default();
    let exp = e.expansion.as_ref().ok_or_else(|| bad("no edgelm.expansion".into()))?;
    let positions: Vec<u16> = exp
        .positions
        .iter()
        .map(|&p| u16::try_from(p).ok())
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| bad("edgelm.expansion.positions must be small integers".into()))?;
    let per_domain = exp.tokenizer == TokenizerMode::PerDomain;
    let tag_token = exp.tag_token;

    // The base: its config (the runtime config of the pack) and its identity.
    let base = parse_config(&read(base_dir, CONFIG_FILE)?)?;
    let base_id = base.model_id.clone().ok_or_else(|| Error::BadInput {
        path: base_dir.join(CONFIG_FILE),
        what: "no edgelm.model_id: the pack could not be bound to this base".into(),
    })?;
    if base_id != want_base {
        return Err(bad(format!(
            "this domain was trained on base {want_base}, but {} is {base_id}",
            base_dir.display()
        )));
    }
    let c = base.config;
    let dc = runtime_config(&dc)?;
    if (dc.dim, dc.n_layers, dc.n_heads, dc.n_kv_heads, dc.ffn_dim)
        != (c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.ffn_dim)
    {
        return Err(bad("the domain's model shape differs from its base's".into()));
    }

    let mut tensors = crate::weights::load(&domain_dir.join(MODEL_FILE))?;
    let emb_rows = tensors.get("domain.embed_tokens.weight").and_then(|t| t.dims().first().copied());
    let has_head = tensors.contains_key("domain.lm_head.weight");
    let mut b = ModelBuilder::new(c, opts.policy)?;
    b.writer.kind = FileKind::Pack;
    b.writer.base_model_id = base_id;
    let prefix = format!("domains.{name}.");
    let (dim, hd, kv, ffn) = (c.dim as usize, c.head_dim(), c.kv_dim(), c.ffn_dim as usize);
    let mut take = |hf: &str, shape: &[usize]| -> Result<Vec<f32>> {
        let t = tensors.remove(hf).ok_or_else(|| Error::MissingTensor(hf.into()))?;
        check_shape(hf, t.dims(), shape)?;
        t.to_f32(hf)
    };

    let (vocab, info) = if per_domain {
        let mut tables = from_tokenizer_json(&read(domain_dir, TOKENIZER_FILE)?)
            .map_err(|e| Error::Tokenizer(format!("tokenizer.json: {e}")))?;
        let emb_rows = emb_rows.ok_or_else(|| Error::MissingTensor("domain.embed_tokens.weight".into()))?;
        fit_vocab(&mut tables, emb_rows)?;
        let emb = take("domain.embed_tokens.weight", &[emb_rows, dim])?;
        b.matrix(&format!("{prefix}tok_embeddings"), Role::Embedding, emb_rows, dim, Source::F32(emb))?;
        b.norm(&format!("{prefix}norm"), take("domain.norm.weight", &[dim])?)?;
        if has_head {
            let head = take("domain.lm_head.weight", &[emb_rows, dim])?;
            b.matrix(&format!("{prefix}output"), Role::Embedding, emb_rows, dim, Source::F32(head))?;
        }
        write_tables(&tables, &mut b.writer, &prefix).map_err(|e| Error::Tokenizer(e.to_string()))?;
        (emb_rows as u32, tables.info)
    } else {
        let tables = from_tokenizer_json(&read(base_dir, TOKENIZER_FILE)?)
            .map_err(|e| Error::Tokenizer(format!("base tokenizer.json: {e}")))?;
        if tag_token.is_none() {
            return Err(bad("a shared-tokenizer domain needs edgelm.expansion.tag_token".into()));
        }
        (c.vocab_size, tables.info)
    };

    for (j, _) in positions.iter().enumerate() {
        let hf = |s: &str| format!("domain.layers.{j}.{s}");
        let rt = |s: &str| format!("{prefix}blocks.{j}.{s}");
        b.norm(&rt("attention_norm"), take(&hf("input_layernorm.weight"), &[dim])?)?;
        let q = permute_rope_rows(&take(&hf("self_attn.q_proj.weight"), &[dim, dim])?, c.n_heads as usize, hd, dim)?;
        b.matrix(&rt("attention.wq"), Role::Matrix, dim, dim, Source::F32(q))?;
        let k = permute_rope_rows(&take(&hf("self_attn.k_proj.weight"), &[kv, dim])?, c.n_kv_heads as usize, hd, dim)?;
        b.matrix(&rt("attention.wk"), Role::Matrix, kv, dim, Source::F32(k))?;
        let v = take(&hf("self_attn.v_proj.weight"), &[kv, dim])?;
        b.matrix(&rt("attention.wv"), Role::Matrix, kv, dim, Source::F32(v))?;
        let o = take(&hf("self_attn.o_proj.weight"), &[dim, dim])?;
        b.matrix(&rt("attention.wo"), Role::Matrix, dim, dim, Source::F32(o))?;
        b.norm(&rt("ffn_norm"), take(&hf("post_attention_layernorm.weight"), &[dim])?)?;
        let g = take(&hf("mlp.gate_proj.weight"), &[ffn, dim])?;
        b.matrix(&rt("feed_forward.w1"), Role::Matrix, ffn, dim, Source::F32(g))?;
        let d = take(&hf("mlp.down_proj.weight"), &[dim, ffn])?;
        b.matrix(&rt("feed_forward.w2"), Role::Matrix, dim, ffn, Source::F32(d))?;
        let u = take(&hf("mlp.up_proj.weight"), &[ffn, dim])?;
        b.matrix(&rt("feed_forward.w3"), Role::Matrix, ffn, dim, Source::F32(u))?;
    }
    if let Some(extra) = tensors.keys().min() {
        return Err(Error::UnexpectedTensor(extra.clone()));
    }
    b.writer.domains.push(DomainSpec {
        name: name.clone(),
        prefix,
        own_tokenizer: per_domain,
        own_head: per_domain,
        vocab_size: vocab,
        tokenizer: info,
        tag_token,
        expansion_positions: positions,
    });
    b.writer.model_id = if model_id.is_empty() { b.content_id() } else { model_id };
    let report = b.report.clone();
    let bytes = b.writer.to_bytes()?;

    // Check: the runtime loads the pack over the imported base.
    let base_file = import_checkpoint(base_dir, &ImportOptions::new(StoreDType::F32))?;
    let base_bytes = edgelm_runtime::AlignedBytes::from_slice(&base_file.bytes);
    let pack_bytes = edgelm_runtime::AlignedBytes::from_slice(&bytes);
    let mut model = edgelm_runtime::Model::from_bytes(&base_bytes)?;
    model.add_pack_bytes(&pack_bytes)?;
    model.domain(&name)?;
    Ok(Converted { bytes, report })
}
