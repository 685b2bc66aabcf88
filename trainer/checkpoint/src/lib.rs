//! The checkpoint contract between the trainer (which writes checkpoints) and
//! the converter (which reads them, and checkpoints of other tools): the file
//! names of a checkpoint directory and the typed `config.json` — Hugging Face
//! `LlamaConfig` fields plus the `edgelm` section (docs/CHECKPOINT.md).
//!
//! serde only: the JSON library, candle and safetensors stay with the crates
//! that read and write the files.

use serde::{Deserialize, Serialize};

/// Weights, Hugging Face Llama tensor names (`model.embed_tokens.weight`, …).
pub const MODEL_FILE: &str = "model.safetensors";
/// Sharded weights: `weight_map` from tensor name to shard file.
pub const MODEL_INDEX_FILE: &str = "model.safetensors.index.json";
/// [`LlamaConfig`] as JSON.
pub const CONFIG_FILE: &str = "config.json";
/// The Hugging Face `tokenizers` file.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Optimiser state tensors (training checkpoints only).
pub const STATE_TENSORS_FILE: &str = "train_state.safetensors";
/// The training state's JSON, written last: the checkpoint's commit record.
pub const STATE_FILE: &str = "train_state.json";

/// Version of the `edgelm` section.
pub const SECTION_FORMAT: u32 = 1;

/// What a checkpoint holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A whole model.
    #[default]
    Base,
    /// A domain added to a frozen base by knowledge expansion: only the new tensors.
    Domain,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Base => "base",
            Kind::Domain => "domain",
        }
    }
}

/// How a domain checkpoint tokenizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenizerMode {
    /// The domain's own tokenizer, embedding, final norm and head.
    #[serde(rename = "per-domain")]
    PerDomain,
    /// The base's tokenizer, embedding and head, plus a tag token after BOS.
    #[serde(rename = "shared")]
    Shared,
}

impl TokenizerMode {
    pub fn name(self) -> &'static str {
        match self {
            TokenizerMode::PerDomain => "per-domain",
            TokenizerMode::Shared => "shared",
        }
    }
}

impl std::str::FromStr for TokenizerMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "per-domain" => Ok(TokenizerMode::PerDomain),
            "shared" => Ok(TokenizerMode::Shared),
            other => Err(format!("unknown tokenizer mode {other:?}: use per-domain or shared")),
        }
    }
}

/// `edgelm.expansion` of a domain checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Expansion {
    /// Each new block runs after this many base blocks (non-decreasing).
    pub positions: Vec<usize>,
    pub tokenizer: TokenizerMode,
    /// Shared tokenizer: the domain's tag token after BOS.
    #[serde(default)]
    pub tag_token: Option<u32>,
    /// The domain's vocabulary size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocab_size: Option<usize>,
}

/// The `edgelm` section: what Hugging Face's config lacks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgelmSection {
    #[serde(default = "section_format")]
    pub format: u32,
    #[serde(default)]
    pub kind: Kind,
    /// The domains the checkpoint serves (a domain checkpoint: exactly one).
    #[serde(default)]
    pub domains: Vec<String>,
    /// `sha256:<hex>` of the weights (the trainer's `model_id`).
    #[serde(default)]
    pub model_id: Option<String>,
    /// Domain checkpoints: the `model_id` of the base they were trained on.
    #[serde(default)]
    pub base_model_id: Option<String>,
    #[serde(default)]
    pub expansion: Option<Expansion>,
}

fn section_format() -> u32 {
    SECTION_FORMAT
}

impl Default for EdgelmSection {
    fn default() -> Self {
        EdgelmSection {
            format: SECTION_FORMAT,
            kind: Kind::Base,
            domains: Vec::new(),
            model_id: None,
            base_model_id: None,
            expansion: None,
        }
    }
}

/// `bos_token_id` / `eos_token_id`: one id, or a list (some Hugging Face models).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

/// Anything that is present and not `null` (for fields edgelm only refuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Present;

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| Present)
    }
}

/// `config.json`: Hugging Face `LlamaConfig` field names plus the `edgelm`
/// section. Fields other tools may leave out are optional; the getters give
/// the Hugging Face defaults. Unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub model_type: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Only `hidden_size / num_attention_heads` is supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    pub vocab_size: usize,
    #[serde(default)]
    pub max_position_embeddings: Option<usize>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rms_norm_eps: Option<f64>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub hidden_act: Option<String>,
    /// Present (not null): a RoPE scaling edgelm does not implement.
    #[serde(default, skip_serializing)]
    pub rope_scaling: Option<Present>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_bias: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp_bias: Option<bool>,
    #[serde(default)]
    pub torch_dtype: Option<String>,
    #[serde(default)]
    pub bos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    /// Absent in checkpoints of other tools: then a base with no recorded domains.
    #[serde(default)]
    pub edgelm: EdgelmSection,
}

impl LlamaConfig {
    /// Whether `model_type` or `architectures` says Llama.
    pub fn is_llama(&self) -> bool {
        self.model_type == "llama" || self.architectures.iter().any(|a| a == "LlamaForCausalLM")
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Context length; Hugging Face's default 2048 when absent.
    pub fn max_positions(&self) -> usize {
        self.max_position_embeddings.unwrap_or(2048)
    }

    pub fn rope_theta(&self) -> f64 {
        self.rope_theta.unwrap_or(10000.0)
    }

    pub fn norm_eps(&self) -> f64 {
        self.rms_norm_eps.unwrap_or(1e-6)
    }

    /// The first recorded domain.
    pub fn first_domain(&self) -> Option<&str> {
        self.edgelm.domains.first().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_minimal_hugging_face_config() {
        let c: LlamaConfig = serde_json::from_str(
            r#"{"model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
                "num_attention_heads": 4, "vocab_size": 300, "rope_scaling": null, "eos_token_id": [1, 2],
                "some_other_field": 3}"#,
        )
        .unwrap();
        assert!(c.is_llama());
        assert_eq!((c.kv_heads(), c.max_positions(), c.rope_theta()), (4, 2048, 10000.0));
        assert_eq!(c.rope_scaling, None);
        assert_eq!(c.edgelm, EdgelmSection::default());
        assert_eq!(c.eos_token_id, Some(TokenIds::Many(vec![1, 2])));
        let scaled: LlamaConfig = serde_json::from_str(
            r#"{"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
                "vocab_size": 300, "rope_scaling": {"type": "linear", "factor": 2.0}}"#,
        )
        .unwrap();
        assert_eq!(scaled.rope_scaling, Some(Present));
        assert!(!scaled.is_llama());
    }

    #[test]
    fn domain_section_round_trips() {
        let e = EdgelmSection {
            kind: Kind::Domain,
            domains: vec!["recipe".into()],
            model_id: Some("sha256:ab".into()),
            base_model_id: Some("sha256:cd".into()),
            expansion: Some(Expansion {
                positions: vec![2, 4],
                tokenizer: TokenizerMode::Shared,
                tag_token: Some(3),
                vocab_size: Some(4096),
            }),
            ..Default::default()
        };
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains(r#""kind":"domain""#) && json.contains(r#""tokenizer":"shared""#), "{json}");
        assert_eq!(serde_json::from_str::<EdgelmSection>(&json).unwrap(), e);
        assert!(serde_json::from_str::<EdgelmSection>(r#"{"kind": "lora"}"#).is_err());
    }
}
