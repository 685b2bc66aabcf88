//! Generation from a checkpoint (the reference the runtime's output is compared
//! with): temperature and top-k sampling, seeded; temperature 0 is greedy.

use crate::model::Llama;
use crate::rng::Rng;
use crate::tokenizer::EdgeTokenizer;
use crate::Result;

/// Sampling settings.
#[derive(Debug, Clone)]
pub struct SampleOptions {
    pub max_tokens: usize,
    pub temperature: f64,
    /// 0 = no top-k cut.
    pub top_k: usize,
    pub seed: u64,
    /// Domain tag token put after BOS (shared tokenizers).
    pub tag: Option<u32>,
}

/// Picks the next token from logits.
pub fn pick(logits: &[f32], o: &SampleOptions, rng: &mut Rng) -> u32 {
    if o.temperature <= 0.0 {
        return argmax(logits);
    }
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    if o.top_k > 0 && o.top_k < logits.len() {
        idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        idx.truncate(o.top_k);
    }
    let m = idx.iter().map(|&i| logits[i]).fold(f32::NEG_INFINITY, f32::max) as f64;
    let w: Vec<f64> = idx.iter().map(|&i| ((logits[i] as f64 - m) / o.temperature).exp()).collect();
    let total: f64 = w.iter().sum();
    let mut u = rng.next_f64() * total;
    for (k, &wi) in w.iter().enumerate() {
        if u < wi {
            return idx[k] as u32;
        }
        u -= wi;
    }
    idx[idx.len() - 1] as u32
}

fn argmax(v: &[f32]) -> u32 {
    v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i as u32)
}

/// Generates a continuation of `prompt`; stops at `<|endoftext|>` or
/// `max_tokens`. Returns the generated text (without the prompt) and the ids.
pub fn generate(model: &Llama, tok: &EdgeTokenizer, prompt: &str, o: &SampleOptions) -> Result<(String, Vec<u32>)> {
    let mut ids = vec![tok.eot_id()];
    if let Some(t) = o.tag {
        ids.push(t);
    }
    ids.extend(tok.encode(prompt)?);
    let mut rng = Rng::new(o.seed, 0x5A3);
    let mut out = Vec::new();
    for _ in 0..o.max_tokens {
        let logits = model.next_logits(&ids)?;
        let next = pick(&logits, o, &mut rng);
        if next == tok.eot_id() {
            break;
        }
        ids.push(next);
        out.push(next);
    }
    Ok((tok.decode(&out)?, out))
}
