//! Checkpoint directories (docs/CHECKPOINT.md): `model.safetensors` (HF Llama
//! names), `config.json` (LlamaConfig + `edgelm` section), `tokenizer.json`, and for
//! training `train_state.safetensors` + `train_state.json`.
//!
//! Every file is written atomically ([`crate::fsio`]), in the
//! order model, config, tokenizer, train state tensors, train state JSON. The JSON
//! written last is the commit record: it names the step and the `model_id` of the
//! weights it belongs to, so `--resume` detects a torn checkpoint instead of
//! silently mixing steps.

use crate::config::{HfConfig, ModelConfig};
use crate::model::Llama;
use crate::tokenizer::EdgeTokenizer;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;

pub use edgelm_checkpoint::{CONFIG_FILE, MODEL_FILE, STATE_FILE, STATE_TENSORS_FILE, TOKENIZER_FILE};

/// `sha256:<hex>` over the tensors in name order; for each tensor the UTF-8 name,
/// a 0 byte, then its values as f32 little-endian.
pub fn model_id(tensors: &HashMap<String, Tensor>) -> Result<String> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut h = Sha256::new();
    for n in names {
        h.update(n.as_bytes());
        h.update([0u8]);
        let v = tensors[n].to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let mut buf = Vec::with_capacity(v.len() * 4);
        for x in v {
            buf.extend_from_slice(&x.to_le_bytes());
        }
        h.update(&buf);
    }
    Ok(format!("sha256:{}", hex(&h.finalize())))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Writes tensors (converted to `dtype`) as a safetensors file, atomically.
pub fn write_tensors(path: &Path, tensors: &HashMap<String, Tensor>, dtype: DType) -> Result<()> {
    let conv: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.to_dtype(dtype)?.to_device(&Device::Cpu)?)))
        .collect::<Result<_>>()?;
    crate::fsio::write_atomic_with(path, |tmp| {
        candle_core::safetensors::save(&conv, tmp).map_err(|e| Error::ckpt(tmp, format!("cannot write: {e}")))
    })
}

/// Reads a safetensors file (any float dtype) as f32 tensors.
pub fn load_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    if !path.exists() {
        return Err(Error::ckpt(path, "file not found"));
    }
    let t = candle_core::safetensors::load(path, device)
        .map_err(|e| Error::ckpt(path, format!("not a readable safetensors file: {e}")))?;
    t.into_iter().map(|(k, v)| Ok((k, v.to_dtype(DType::F32)?))).collect()
}

/// Writes model.safetensors, config.json and tokenizer.json into `dir`; the weights
/// are stored as `dtype` (F32 for training checkpoints; F16/BF16 for small copies).
/// Returns the `model_id` (computed over the weights as stored).
pub fn save_model(dir: &Path, model: &Llama, tok: &EdgeTokenizer, domains: &[String], dtype: DType) -> Result<String> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create directory", dir, e))?;
    let tensors = model.tensors();
    let stored: HashMap<String, Tensor> =
        tensors.iter().map(|(k, v)| Ok((k.clone(), v.to_dtype(dtype)?))).collect::<Result<_>>()?;
    let id = model_id(&stored)?;
    write_tensors(&dir.join(MODEL_FILE), &stored, dtype)?;
    let mut cfg = model.cfg.to_hf(domains.to_vec(), id.clone());
    cfg.torch_dtype = Some(
        match dtype {
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            _ => "float32",
        }
        .into(),
    );
    let json = serde_json::to_string_pretty(&cfg).expect("config serialises");
    crate::fsio::write_atomic(&dir.join(CONFIG_FILE), json.as_bytes())?;
    tok.save(&dir.join(TOKENIZER_FILE))?;
    Ok(id)
}

/// A loaded checkpoint.
pub struct Checkpoint {
    pub config: HfConfig,
    pub model: Llama,
    pub tokenizer: EdgeTokenizer,
}

/// Reads config.json of a checkpoint directory.
pub fn load_config(dir: &Path) -> Result<HfConfig> {
    let p = dir.join(CONFIG_FILE);
    if !dir.is_dir() {
        return Err(Error::ckpt(dir, "not a directory (pass the --out directory of `edgelm-train base`)"));
    }
    let bytes = crate::fsio::read(&p)?;
    serde_json::from_slice(&bytes).map_err(|source| Error::Json { path: p, source })
}

/// Loads model + tokenizer + config from a checkpoint directory.
pub fn load(dir: &Path, device: &Device) -> Result<Checkpoint> {
    let config = load_config(dir)?;
    let model_cfg = ModelConfig::from_hf(&config);
    let tensors = load_tensors(&dir.join(MODEL_FILE), device)?;
    let model = Llama::from_tensors(&model_cfg, tensors, device).map_err(|e| Error::ckpt(dir, e.to_string()))?;
    let tokenizer = EdgeTokenizer::load(&dir.join(TOKENIZER_FILE))?;
    if tokenizer.vocab_size() > model_cfg.vocab_size {
        return Err(Error::ckpt(
            dir,
            format!("tokenizer has {} tokens but the model only {}", tokenizer.vocab_size(), model_cfg.vocab_size),
        ));
    }
    Ok(Checkpoint { config, model, tokenizer })
}

/// The JSON part of the training state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Completed optimiser steps.
    pub step: usize,
    /// model_id of the model.safetensors this state belongs to.
    pub model_id: String,
    /// Batch sampler RNG state.
    pub batch_rng: crate::rng::Rng,
    /// Tokens trained on so far.
    pub tokens_seen: u64,
    /// Seconds of training so far (for tokens/s across resumes).
    pub elapsed_s: f64,
    /// The settings the run was started with.
    pub train: crate::config::TrainConfig,
    pub model: ModelConfig,
}

/// Writes the training state (after [`save_model`]).
pub fn save_state(dir: &Path, state: &TrainState, opt_tensors: &HashMap<String, Tensor>) -> Result<()> {
    write_tensors(&dir.join(STATE_TENSORS_FILE), opt_tensors, DType::F32)?;
    let json = serde_json::to_string_pretty(state).expect("state serialises");
    crate::fsio::write_atomic(&dir.join(STATE_FILE), json.as_bytes())
}

/// Reads the training state and checks it belongs to the model in `dir`.
pub fn load_state(dir: &Path, model: &Llama, device: &Device) -> Result<(TrainState, HashMap<String, Tensor>)> {
    let p = dir.join(STATE_FILE);
    if !p.exists() {
        return Err(Error::ckpt(dir, "no train_state.json: nothing to resume (drop --resume to start fresh)"));
    }
    let bytes = crate::fsio::read(&p)?;
    let state: TrainState = serde_json::from_slice(&bytes).map_err(|source| Error::Json { path: p, source })?;
    let id = model_id(&model.tensors())?;
    if id != state.model_id {
        return Err(Error::ckpt(
            dir,
            "train_state.json does not belong to model.safetensors (the checkpoint was interrupted while \
             being written); restart without --resume or restore a copy",
        ));
    }
    let t = load_tensors(&dir.join(STATE_TENSORS_FILE), device)?;
    Ok((state, t))
}
