//! Model and training configuration, and the `config.json` of a checkpoint
//! (Hugging Face `LlamaConfig` fields plus an `edgelm` section, see docs/CHECKPOINT.md).

use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// Architecture of a Llama-style decoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelConfig {
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    /// SwiGLU hidden size.
    pub ffn_dim: usize,
    pub vocab_size: usize,
    /// Context length the model is trained (and evaluated) with.
    pub max_seq: usize,
    pub rope_theta: f64,
    pub norm_eps: f64,
    /// Output head shares the token embedding.
    pub tie_embeddings: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            dim: 256,
            n_layers: 6,
            n_heads: 8,
            n_kv_heads: 4,
            ffn_dim: 688,
            vocab_size: 4096,
            max_seq: 256,
            rope_theta: 10000.0,
            norm_eps: 1e-5,
            tie_embeddings: true,
        }
    }
}

impl ModelConfig {
    pub fn head_dim(&self) -> usize {
        self.dim / self.n_heads
    }

    /// Checks divisibility and sizes; the message names the flag to change.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.dim == 0 || self.n_layers == 0 || self.n_heads == 0 || self.n_kv_heads == 0 {
            return bad("--dim, --layers, --heads and --kv-heads must be positive".into());
        }
        if !self.dim.is_multiple_of(self.n_heads) {
            return bad(format!("--dim {} is not a multiple of --heads {}", self.dim, self.n_heads));
        }
        if !self.head_dim().is_multiple_of(2) {
            return bad(format!("head_dim {} (dim/heads) must be even for RoPE", self.head_dim()));
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!("--heads {} is not a multiple of --kv-heads {}", self.n_heads, self.n_kv_heads));
        }
        if self.vocab_size == 0 || self.vocab_size > 65536 {
            return bad(format!("vocab size {} must be in 1..=65536 (u16 token ids)", self.vocab_size));
        }
        if self.max_seq < 2 || self.ffn_dim == 0 {
            return bad("--seq-len must be >= 2 and --ffn positive".into());
        }
        Ok(())
    }

    /// Number of parameters (tied head counted once).
    pub fn n_params(&self) -> usize {
        let hd = self.head_dim();
        let attn = self.dim * self.n_heads * hd * 2 + self.dim * self.n_kv_heads * hd * 2;
        let mlp = 3 * self.dim * self.ffn_dim;
        let layer = attn + mlp + 2 * self.dim;
        let emb = self.vocab_size * self.dim;
        emb + self.n_layers * layer + self.dim + if self.tie_embeddings { 0 } else { emb }
    }
}

/// config.json of a checkpoint: the checkpoint contract's type (Hugging Face
/// `LlamaConfig` names plus the `edgelm` section).
pub use edgelm_checkpoint::{EdgelmSection, LlamaConfig as HfConfig};

impl ModelConfig {
    /// config.json for a base model of this shape serving `domains`, with
    /// weights `model_id`.
    pub fn to_hf(&self, domains: Vec<String>, model_id: String) -> HfConfig {
        HfConfig {
            architectures: vec!["LlamaForCausalLM".into()],
            model_type: "llama".into(),
            hidden_size: self.dim,
            intermediate_size: self.ffn_dim,
            num_hidden_layers: self.n_layers,
            num_attention_heads: self.n_heads,
            num_key_value_heads: Some(self.n_kv_heads),
            head_dim: None,
            vocab_size: self.vocab_size,
            max_position_embeddings: Some(self.max_seq),
            rope_theta: Some(self.rope_theta),
            rms_norm_eps: Some(self.norm_eps),
            tie_word_embeddings: self.tie_embeddings,
            hidden_act: Some("silu".into()),
            rope_scaling: None,
            attention_bias: None,
            mlp_bias: None,
            torch_dtype: Some("float32".into()),
            bos_token_id: Some(edgelm_checkpoint::TokenIds::One(0)),
            eos_token_id: Some(edgelm_checkpoint::TokenIds::One(0)),
            edgelm: EdgelmSection { domains, model_id: Some(model_id), ..Default::default() },
        }
    }

    /// The model shape a config.json describes.
    pub fn from_hf(c: &HfConfig) -> Self {
        ModelConfig {
            dim: c.hidden_size,
            n_layers: c.num_hidden_layers,
            n_heads: c.num_attention_heads,
            n_kv_heads: c.kv_heads(),
            ffn_dim: c.intermediate_size,
            vocab_size: c.vocab_size,
            max_seq: c.max_positions(),
            rope_theta: c.rope_theta(),
            norm_eps: c.norm_eps(),
            tie_embeddings: c.tie_word_embeddings,
        }
    }
}

/// Optimisation settings of `edgelm-train base`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// Sequences per micro-batch.
    pub batch: usize,
    /// Micro-batches per optimiser step (gradient accumulation).
    pub accum: usize,
    pub steps: usize,
    pub lr: f64,
    /// Final learning rate of the cosine schedule.
    pub min_lr: f64,
    pub warmup: usize,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Global gradient-norm clip (0 = off).
    pub grad_clip: f64,
    pub seed: u64,
    /// Write a checkpoint every N steps (and at the end).
    pub checkpoint_every: usize,
    /// Evaluate on a fixed sample of the valid split every N steps (0 = off).
    pub eval_every: usize,
    /// Windows of the valid split used by the periodic evaluation.
    pub eval_windows: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            batch: 32,
            accum: 1,
            steps: 1000,
            lr: 1e-3,
            min_lr: 1e-4,
            warmup: 200,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: 1.0,
            seed: 1234,
            checkpoint_every: 200,
            eval_every: 200,
            eval_windows: 64,
        }
    }
}

/// A TOML file for `edgelm-train base --config FILE`: `[model]` and `[train]` tables,
/// any field omitted takes its default; command-line flags override the file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FileConfig {
    pub model: ModelConfig,
    pub train: TrainConfig,
}

impl FileConfig {
    /// Reads a TOML config file.
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = String::from_utf8(crate::fsio::read(path)?)
            .map_err(|_| Error::Config(format!("{} is not UTF-8", path.display())))?;
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_file_overrides_defaults() {
        let fc: FileConfig = toml::from_str(
            "[model]\ndim = 64\nn_layers = 2\nn_heads = 4\nn_kv_heads = 2\nffn_dim = 176\nmax_seq = 128\n\n\
             [train]\nbatch = 8\nsteps = 50\nlr = 2e-3\n",
        )
        .unwrap();
        assert_eq!((fc.model.dim, fc.model.n_layers, fc.model.max_seq), (64, 2, 128));
        assert!(fc.model.tie_embeddings, "omitted fields keep their defaults");
        assert_eq!((fc.train.batch, fc.train.steps, fc.train.warmup), (8, 50, 200));
        fc.model.validate().unwrap();
        let bad = ModelConfig { n_kv_heads: 3, ..fc.model };
        assert!(bad.validate().unwrap_err().to_string().contains("--kv-heads"));
        assert!(toml::from_str::<FileConfig>("[model]\ndim = \"x\"").is_err());
    }
}
