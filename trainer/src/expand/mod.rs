//! Knowledge expansion (issue #5): a frozen base [`Llama`] plus a domain's new
//! parameters — transformer blocks inserted between the base blocks and, with a
//! per-domain tokenizer, the domain's own embedding, final norm and (if the base's
//! head is untied) output head.
//!
//! * New block `j` runs after the first `positions[j]` base blocks (the runtime's
//!   `expansion_positions` convention). Default positions: after every ⌈L/k⌉ base
//!   blocks ([`default_positions`]).
//! * A new block starts as a copy of the base block just before it (block 0 for
//!   position 0) with `o_proj` and `down_proj` zeroed, so it passes its input
//!   through unchanged: at step 0 the expanded model computes exactly the base
//!   model (on the same embedding).
//! * The base's tensors enter the graph detached: the optimiser only ever sees
//!   [`Expanded::vars`] (the new tensors), and no gradient is even computed for
//!   the base weights.
//!
//! A domain checkpoint (docs/CHECKPOINT.md, "Domain checkpoints") stores only the
//! new tensors (`domain.*` names) and the `model_id` of the base it was trained on.

use crate::checkpoint::{self, CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE};
use crate::config::{HfConfig, ModelConfig};
use crate::model::{block_forward, Block, BlockW, Llama};
use crate::ops::{self, Rope};
use crate::tokenizer::EdgeTokenizer;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor, Var};
use edgelm_checkpoint::{Expansion, Kind};
use std::collections::HashMap;
use std::path::Path;

pub mod train;

pub use crate::model::BLOCK_SUFFIXES;

pub const DOMAIN_EMBED: &str = "domain.embed_tokens.weight";
pub const DOMAIN_NORM: &str = "domain.norm.weight";
pub const DOMAIN_HEAD: &str = "domain.lm_head.weight";

/// Name of a new block's tensor in a domain checkpoint.
pub fn domain_layer_name(j: usize, suffix: &str) -> String {
    format!("domain.layers.{j}.{suffix}")
}

/// How the domain tokenizes text (part of the checkpoint contract).
pub use edgelm_checkpoint::TokenizerMode;

/// `k` positions: after every ⌈L/k⌉ base blocks (capped at L).
pub fn default_positions(n_layers: usize, k: usize) -> Vec<usize> {
    if k == 0 {
        return Vec::new();
    }
    let step = n_layers.div_ceil(k).max(1);
    (1..=k).map(|j| (j * step).min(n_layers)).collect()
}

/// The frozen view of a base model: detached weights and the RoPE tables.
pub struct Frozen {
    pub cfg: ModelConfig,
    pub blocks: Vec<BlockW>,
    pub embed: Tensor,
    pub norm: Tensor,
    /// `None`: tied to `embed`.
    pub head: Option<Tensor>,
    pub rope: Rope,
}

impl Frozen {
    pub fn of(base: &Llama) -> Result<Self> {
        let cfg = base.cfg.clone();
        Ok(Frozen {
            blocks: base.blocks.iter().map(|b| BlockW::of(b, true)).collect(),
            embed: base.embed.as_tensor().detach(),
            norm: base.norm.as_tensor().detach(),
            head: base.lm_head.as_ref().map(|h| h.as_tensor().detach()),
            rope: Rope::new(cfg.head_dim(), cfg.max_seq, cfg.rope_theta, base.device())?,
            cfg,
        })
    }
}

/// Per-token cross-entropy `[B*T]` from logits `[B*T, V]` and targets `[B, T]`.
fn rows_ce(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    Ok(ops::cross_entropy_rows(logits, &targets.flatten_all()?)?)
}

/// A frozen base plus one domain's new parameters.
pub struct Expanded {
    pub base: Llama,
    pub frozen: Frozen,
    pub domain: String,
    pub mode: TokenizerMode,
    /// New block `j` runs after the first `positions[j]` base blocks.
    pub positions: Vec<usize>,
    pub blocks: Vec<Block>,
    /// Per-domain: the domain's embedding `[vocab, dim]`, final norm and (untied
    /// base only) head.
    pub embed: Option<Var>,
    pub norm: Option<Var>,
    pub lm_head: Option<Var>,
    pub vocab_size: usize,
    pub tag_token: Option<u32>,
}

fn var(t: Tensor) -> Result<Var> {
    Ok(Var::from_tensor(&t.to_dtype(DType::F32)?)?)
}

impl Expanded {
    /// Adds a domain to `base`. Per-domain mode needs the domain's tokenizer
    /// (`domain_tok`) and the base's (`base_tok`, to initialise the new embedding:
    /// a domain token that is also a base token starts from the base's row, any
    /// other from the mean of the rows of its base tokenization). Shared mode needs
    /// `tag_token` (a token of the base vocabulary).
    pub fn new(
        base: Llama,
        domain: &str,
        mode: TokenizerMode,
        positions: Vec<usize>,
        base_tok: Option<&EdgeTokenizer>,
        domain_tok: Option<&EdgeTokenizer>,
        tag_token: Option<u32>,
    ) -> Result<Self> {
        let l = base.cfg.n_layers;
        check_positions(&positions, l)?;
        let frozen = Frozen::of(&base)?;
        let blocks = positions
            .iter()
            .map(|&p| {
                let src = &base.blocks[p.saturating_sub(1).min(l - 1)];
                let c = |v: &Var| var(v.as_tensor().copy()?);
                Ok(Block {
                    attn_norm: c(&src.attn_norm)?,
                    wq: c(&src.wq)?,
                    wk: c(&src.wk)?,
                    wv: c(&src.wv)?,
                    wo: var(src.wo.as_tensor().zeros_like()?)?,
                    mlp_norm: c(&src.mlp_norm)?,
                    w_gate: c(&src.w_gate)?,
                    w_up: c(&src.w_up)?,
                    w_down: var(src.w_down.as_tensor().zeros_like()?)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let (embed, norm, lm_head, vocab_size, tag_token) = match mode {
            TokenizerMode::PerDomain => {
                let dt = domain_tok
                    .ok_or_else(|| Error::Config("per-domain expansion needs the domain's tokenizer".into()))?;
                let v = dt.vocab_size();
                let emb = init_rows(&frozen.embed, base_tok, dt)?;
                let head = match &frozen.head {
                    Some(h) => Some(var(init_rows(h, base_tok, dt)?)?),
                    None => None,
                };
                (Some(var(emb)?), Some(var(frozen.norm.copy()?)?), head, v, None)
            }
            TokenizerMode::Shared => {
                let tag = tag_token.ok_or_else(|| {
                    Error::Config(
                        "shared-tokenizer expansion needs a tag token in the base vocabulary (train the base \
                         tokenizer with `--domain story recipe`)"
                            .into(),
                    )
                })?;
                if tag as usize >= base.cfg.vocab_size {
                    return Err(Error::Config(format!("tag token {tag} is outside the base vocabulary")));
                }
                (None, None, None, base.cfg.vocab_size, Some(tag))
            }
        };
        Ok(Expanded {
            base,
            frozen,
            domain: domain.to_string(),
            mode,
            positions,
            blocks,
            embed,
            norm,
            lm_head,
            vocab_size,
            tag_token,
        })
    }

    pub fn cfg(&self) -> &ModelConfig {
        &self.frozen.cfg
    }

    pub fn device(&self) -> &Device {
        self.base.device()
    }

    /// The new (trainable) parameters with their domain-checkpoint names, sorted.
    pub fn vars(&self) -> Vec<(String, Var)> {
        let mut v = Vec::new();
        if let Some(e) = &self.embed {
            v.push((DOMAIN_EMBED.to_string(), e.clone()));
        }
        if let Some(n) = &self.norm {
            v.push((DOMAIN_NORM.to_string(), n.clone()));
        }
        if let Some(h) = &self.lm_head {
            v.push((DOMAIN_HEAD.to_string(), h.clone()));
        }
        for (j, b) in self.blocks.iter().enumerate() {
            let fields = [&b.attn_norm, &b.wq, &b.wk, &b.wv, &b.wo, &b.mlp_norm, &b.w_gate, &b.w_up, &b.w_down];
            for (s, f) in BLOCK_SUFFIXES.iter().zip(fields) {
                v.push((domain_layer_name(j, s), f.clone()));
            }
        }
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The new tensors by name.
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.vars().into_iter().map(|(k, v)| (k, v.as_tensor().clone())).collect()
    }

    /// Sets the new parameters from a domain checkpoint's tensors (`dir` names it
    /// in errors): every var present with its shape, nothing else.
    pub fn set_vars(&self, tensors: HashMap<String, Tensor>, dir: &Path) -> Result<()> {
        crate::resumable::set_vars(&self.vars(), tensors, dir)
    }

    pub fn n_trainable(&self) -> usize {
        self.vars().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Parameters the domain runs with (base + new; a shared embedding counted once).
    pub fn n_total(&self) -> usize {
        self.base.n_params() + self.n_trainable()
    }

    /// Final hidden states `[B*T, dim]` after the (domain's or base's) final norm.
    pub fn hidden(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let f = &self.frozen;
        if t > f.cfg.max_seq {
            return Err(Error::Config(format!("sequence of {t} tokens is longer than the context {}", f.cfg.max_seq)));
        }
        let emb = match &self.embed {
            Some(e) => e.as_tensor(),
            None => &f.embed,
        };
        let mut x = emb.index_select(&ids.flatten_all()?, 0)?;
        let new: Vec<BlockW> = self.blocks.iter().map(|b| BlockW::of(b, false)).collect();
        let mut j = 0;
        for (i, fb) in f.blocks.iter().enumerate() {
            while j < new.len() && self.positions[j] == i {
                x = block_forward(&f.cfg, &f.rope, &new[j], &x, b, t)?;
                j += 1;
            }
            x = block_forward(&f.cfg, &f.rope, fb, &x, b, t)?;
        }
        for nb in &new[j..] {
            x = block_forward(&f.cfg, &f.rope, nb, &x, b, t)?;
        }
        let norm = match &self.norm {
            Some(n) => n.as_tensor(),
            None => &f.norm,
        };
        Ok(ops::rms_norm(&x, norm, f.cfg.norm_eps)?)
    }

    /// The output head's weights `[vocab, dim]`.
    fn head_weight(&self) -> &Tensor {
        match (self.mode, &self.lm_head, &self.embed) {
            (TokenizerMode::PerDomain, Some(hd), _) => hd.as_tensor(),
            (TokenizerMode::PerDomain, None, Some(e)) => e.as_tensor(),
            _ => self.frozen.head.as_ref().unwrap_or(&self.frozen.embed),
        }
    }

    fn head(&self, h: &Tensor) -> Result<Tensor> {
        Ok(h.matmul(&self.head_weight().t()?)?)
    }

    /// Logits `[B, T, vocab]`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        Ok(self.head(&self.hidden(ids)?)?.reshape((b, t, self.vocab_size))?)
    }

    pub fn loss(&self, ids: &Tensor, targets: &Tensor) -> Result<Tensor> {
        Ok(ops::head_cross_entropy(&self.hidden(ids)?, self.head_weight(), targets)?)
    }

    pub fn token_losses(&self, ids: &Tensor, targets: &Tensor) -> Result<Tensor> {
        rows_ce(&self.head(&self.hidden(ids)?)?, targets)
    }

    /// Logits of the last position (no cache; the last `max_seq` tokens).
    pub fn next_logits(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let start = ids.len().saturating_sub(self.cfg().max_seq);
        let ctx = &ids[start..];
        let x = Tensor::new(ctx, self.device())?.unsqueeze(0)?;
        Ok(self.forward(&x)?.get(0)?.get(ctx.len() - 1)?.to_vec1::<f32>()?)
    }

    /// The `edgelm.expansion` of config.json.
    pub fn expansion(&self) -> Expansion {
        Expansion {
            positions: self.positions.clone(),
            tokenizer: self.mode,
            tag_token: self.tag_token,
            vocab_size: Some(self.vocab_size),
        }
    }

    /// Writes the domain checkpoint: model.safetensors (new tensors only),
    /// config.json (the base's fields, kind "domain", base_model_id, expansion) and
    /// tokenizer.json (the domain's own, or a copy of the base's). Returns the
    /// domain's model_id.
    pub fn save(&self, dir: &Path, base_cfg: &HfConfig, tok: &EdgeTokenizer) -> Result<String> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create directory", dir, e))?;
        let tensors = self.tensors();
        let id = checkpoint::model_id(&tensors)?;
        checkpoint::write_tensors(&dir.join(MODEL_FILE), &tensors, DType::F32)?;
        let mut cfg = base_cfg.clone();
        cfg.torch_dtype = Some("float32".into());
        cfg.edgelm.kind = Kind::Domain;
        cfg.edgelm.domains = vec![self.domain.clone()];
        cfg.edgelm.base_model_id = base_cfg.edgelm.model_id.clone();
        cfg.edgelm.model_id = Some(id.clone());
        cfg.edgelm.expansion = Some(self.expansion());
        crate::fsio::write_json(&dir.join(CONFIG_FILE), &cfg)?;
        tok.save(&dir.join(TOKENIZER_FILE))?;
        Ok(id)
    }
}

fn check_positions(positions: &[usize], n_layers: usize) -> Result<()> {
    if positions.len() > 8 {
        return Err(Error::Config(format!("{} new blocks: the runtime allows at most 8", positions.len())));
    }
    if positions.windows(2).any(|w| w[0] > w[1]) || positions.iter().any(|&p| p > n_layers) {
        return Err(Error::Config(format!(
            "expansion positions {positions:?} must be non-decreasing and at most the base's {n_layers} layers"
        )));
    }
    Ok(())
}

/// Initial rows of a domain embedding/head from a base matrix `[V_base, dim]`: a
/// domain token whose (byte-level) string is a base token copies that row, any
/// other takes the mean of the rows of its base tokenization; without the base
/// tokenizer, N(0, 0.02²) rows.
fn init_rows(base_w: &Tensor, base_tok: Option<&EdgeTokenizer>, dt: &EdgeTokenizer) -> Result<Tensor> {
    use tokenizers::Model;
    let (vb, dim) = base_w.dims2()?;
    let v = dt.vocab_size();
    let bw = base_w.to_device(&Device::Cpu)?.to_vec2::<f32>()?;
    let mut rng = crate::rng::Rng::new(0xD03A1, v as u64);
    let mut out = Vec::with_capacity(v * dim);
    for id in 0..v as u32 {
        let mut row: Option<Vec<f32>> = None;
        if let (Some(bt), Some(s)) = (base_tok, dt.inner().id_to_token(id)) {
            if let Some(bid) = bt.inner().token_to_id(&s).filter(|&b| (b as usize) < vb) {
                row = Some(bw[bid as usize].clone());
            } else if let Ok(toks) = bt.inner().get_model().tokenize(&s) {
                let ids: Vec<usize> = toks.iter().map(|t| t.id as usize).filter(|&b| b < vb).collect();
                if !ids.is_empty() {
                    let mut m = vec![0f32; dim];
                    for &b in &ids {
                        for (a, x) in m.iter_mut().zip(&bw[b]) {
                            *a += x / ids.len() as f32;
                        }
                    }
                    row = Some(m);
                }
            }
        }
        out.extend(row.unwrap_or_else(|| (0..dim).map(|_| (rng.normal() * 0.02) as f32).collect()));
    }
    Ok(Tensor::from_vec(out, (v, dim), base_w.device())?)
}

/// A loaded domain checkpoint.
pub struct DomainCheckpoint {
    pub config: HfConfig,
    pub expanded: Expanded,
    pub tokenizer: EdgeTokenizer,
}

/// Loads a domain checkpoint over its base checkpoint; refuses a base whose
/// `model_id` (recomputed from its tensors) is not the one recorded.
pub fn load_domain(domain_dir: &Path, base_dir: &Path, device: &Device) -> Result<DomainCheckpoint> {
    let config = checkpoint::load_config(domain_dir)?;
    if config.edgelm.kind != Kind::Domain {
        return Err(Error::ckpt(domain_dir, format!("edgelm.kind is {:?}, not \"domain\"", config.edgelm.kind.name())));
    }
    let exp = config.edgelm.expansion.clone().ok_or_else(|| Error::ckpt(domain_dir, "no edgelm.expansion"))?;
    let base = checkpoint::load(base_dir, device)?;
    let base_id = checkpoint::model_id(&base.model.tensors())?;
    let want = config.edgelm.base_model_id.clone().unwrap_or_default();
    if base_id != want {
        return Err(Error::ckpt(
            domain_dir,
            format!("trained on base {want}, but the base in {} is {base_id}", base_dir.display()),
        ));
    }
    let tensors = checkpoint::load_tensors(&domain_dir.join(MODEL_FILE), device)?;
    let tokenizer = EdgeTokenizer::load(&domain_dir.join(TOKENIZER_FILE))?;
    let domain = config.edgelm.domains.first().cloned().unwrap_or_else(|| "domain".into());
    let mut e = Expanded::new(
        base.model,
        &domain,
        exp.tokenizer,
        exp.positions.clone(),
        None,
        (exp.tokenizer == TokenizerMode::PerDomain).then_some(&tokenizer),
        exp.tag_token,
    )?;
    e.set_vars(tensors, domain_dir)?;
    // `Expanded::new` copied rows it could not see; nothing else to fix up.
    e.tag_token = exp.tag_token;
    Ok(DomainCheckpoint { config, expanded: e, tokenizer })
}
