//! Checkpoint directories (docs/CHECKPOINT.md): `model.safetensors` (HF Llama
//! names), `config.json` (LlamaConfig + `edgelm` section), `tokenizer.json`, and for
//! training `train_state.safetensors` + `train_state.json`.
//!
//! Every file is written atomically ([`crate::fsio`]). A training checkpoint is
//! committed by one file, `train_state.safetensors` (the resume record, written
//! first): it holds everything `--resume` reads — the trainable weights, the
//! optimiser moments and the state — so a kill at any moment leaves either the
//! previous record or the new one, never a mix of two steps. The model, config and
//! tokenizer written after it are what the other tools read; a kill between the two
//! leaves them one checkpoint behind the record, complete.

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
    crate::fsio::write_json(&dir.join(CONFIG_FILE), &cfg)?;
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
    /// model_id of the weights in the resume record (an integrity check).
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

/// The resume record's tensor holding the state as JSON bytes (u8).
const STATE_JSON_TENSOR: &str = "state.json";
/// Prefix of the trainable weights in the resume record (the moments are `m.`/`v.`).
const PARAM_PREFIX: &str = "param.";

/// What `--resume` reads back: see [`commit_resume`].
pub struct ResumeRecord {
    /// The trainer's state, JSON ([`TrainState`] or the expansion's state).
    pub state_json: Vec<u8>,
    /// Trainable weights by name.
    pub params: HashMap<String, Tensor>,
    /// AdamW moments (`m.NAME`, `v.NAME`).
    pub moments: HashMap<String, Tensor>,
}

/// Commits a checkpoint for `--resume`: the trainable weights, the optimiser
/// moments and the state JSON in one `train_state.safetensors`, written atomically
/// (temporary file, fsync, rename, directory fsync), so a kill or power loss at
/// any moment leaves the previous record or this one. Then `train_state.json`, a
/// readable copy of the state that nothing reads back.
pub fn commit_resume(
    dir: &Path,
    state_json: &[u8],
    params: &HashMap<String, Tensor>,
    moments: &HashMap<String, Tensor>,
) -> Result<()> {
    let cpu = Device::Cpu;
    let mut all = HashMap::with_capacity(params.len() + moments.len() + 1);
    for (k, v) in params {
        all.insert(format!("{PARAM_PREFIX}{k}"), v.to_dtype(DType::F32)?.to_device(&cpu)?);
    }
    for (k, v) in moments {
        all.insert(k.clone(), v.to_dtype(DType::F32)?.to_device(&cpu)?);
    }
    all.insert(STATE_JSON_TENSOR.into(), Tensor::from_vec(state_json.to_vec(), state_json.len(), &cpu)?);
    crate::fsio::write_atomic_with(&dir.join(STATE_TENSORS_FILE), |tmp| {
        candle_core::safetensors::save(&all, tmp).map_err(|e| Error::ckpt(tmp, format!("cannot write: {e}")))
    })?;
    crate::fsio::write_atomic(&dir.join(STATE_FILE), state_json)
}

/// Reads the record written by [`commit_resume`].
pub fn read_resume(dir: &Path, device: &Device) -> Result<ResumeRecord> {
    let p = dir.join(STATE_TENSORS_FILE);
    if !p.exists() {
        return Err(Error::ckpt(dir, "no train_state.safetensors: nothing to resume (drop --resume to start fresh)"));
    }
    let all = candle_core::safetensors::load(&p, &Device::Cpu)
        .map_err(|e| Error::ckpt(&p, format!("cannot read the resume record ({e}); restart without --resume")))?;
    let mut rec = ResumeRecord { state_json: Vec::new(), params: HashMap::new(), moments: HashMap::new() };
    for (k, v) in all {
        if k == STATE_JSON_TENSOR {
            rec.state_json = v.to_vec1::<u8>()?;
        } else if let Some(name) = k.strip_prefix(PARAM_PREFIX) {
            rec.params.insert(name.to_string(), v.to_dtype(DType::F32)?.to_device(device)?);
        } else {
            rec.moments.insert(k, v.to_dtype(DType::F32)?.to_device(device)?);
        }
    }
    if rec.state_json.is_empty() || rec.params.is_empty() {
        return Err(Error::ckpt(
            &p,
            "holds no state or no weights (written by an edgelm-train from before the single-file resume \
             record?); restart without --resume",
        ));
    }
    Ok(rec)
}

/// Commits a base-training checkpoint (before [`save_model`]; see [`commit_resume`]).
pub fn save_state(
    dir: &Path,
    state: &TrainState,
    params: &HashMap<String, Tensor>,
    opt_tensors: &HashMap<String, Tensor>,
) -> Result<()> {
    let json = serde_json::to_vec_pretty(state).map_err(|source| Error::Json { path: dir.join(STATE_FILE), source })?;
    commit_resume(dir, &json, params, opt_tensors)
}

/// The state of a base-training resume record, checked against its weights.
pub fn load_state(dir: &Path, device: &Device) -> Result<(TrainState, ResumeRecord)> {
    let rec = read_resume(dir, device)?;
    let state: TrainState = serde_json::from_slice(&rec.state_json)
        .map_err(|source| Error::Json { path: dir.join(STATE_TENSORS_FILE), source })?;
    if model_id(&rec.params)? != state.model_id {
        return Err(Error::ckpt(
            dir,
            "train_state.safetensors is damaged (its weights are not the ones its state names); restart \
             without --resume",
        ));
    }
    Ok((state, rec))
}
