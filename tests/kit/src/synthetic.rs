//! Synthetic models with seeded random weights and a byte-level BPE
//! vocabulary, for tests and benchmarks (e.g. the 15M-parameter shape of
//! llama2.c's stories15M). Written through the format writer like any model.

use edgelm_runtime::format::{
    Config, DType, DomainSpec, FileKind, FileWriter, TokenizerInfo, TokenizerKind, TokenizerTables,
};
use edgelm_runtime::Result;

/// Deterministic weights (SplitMix64).
pub struct WeightRng(u64);

impl WeightRng {
    pub fn new(seed: u64) -> Self {
        WeightRng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub fn fill(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
}

/// Token byte strings and merges `(left, right, result)` in rank order.
pub type VocabAndMerges = (Vec<Vec<u8>>, Vec<(u32, u32, u32)>);

/// A byte-level BPE vocabulary: `<|endoftext|>` (id 0), the 256 bytes
/// (ids 1..=256), then merged tokens (printable pairs, then pair + byte)
/// up to `vocab_size`. Returns `(tokens, merges as (left, right, result))`.
pub fn byte_level_vocab(vocab_size: usize) -> VocabAndMerges {
    let mut vocab: Vec<Vec<u8>> = Vec::with_capacity(vocab_size);
    vocab.push(b"<|endoftext|>".to_vec());
    for b in 0..=255u8 {
        vocab.push(vec![b]);
    }
    let mut merges = Vec::new();
    // frequent English letters first, so small vocabularies get useful pairs
    let order: &[u8] = b" etaoinshrdlucmfwypvbgkjqxzETAOINSHRDLUCMFWYPVBGKJQXZ.,'\n0123456789!?;:-\"()";
    let byte_id = |b: u8| b as u32 + 1;
    'pairs: for &a in order {
        for &b in order {
            if vocab.len() >= vocab_size {
                break 'pairs;
            }
            merges.push((byte_id(a), byte_id(b), vocab.len() as u32));
            vocab.push(vec![a, b]);
        }
    }
    let n_pairs = vocab.len();
    'triples: for p in 257..n_pairs {
        for &c in order {
            if vocab.len() >= vocab_size {
                break 'triples;
            }
            let mut t = vocab[p].clone();
            t.push(c);
            merges.push((p as u32, byte_id(c), vocab.len() as u32));
            vocab.push(t);
        }
    }
    vocab.truncate(vocab_size);
    (vocab, merges)
}

/// Writes byte-level BPE tokenizer tables under `prefix` (`<|endoftext|>`,
/// id 0, is the one special token).
pub fn write_byte_level_tokenizer(
    w: &mut FileWriter,
    prefix: &str,
    vocab: &[Vec<u8>],
    merges: &[(u32, u32, u32)],
) -> Result<()> {
    let mut byte_tokens = [0u32; 256];
    for (i, t) in vocab.iter().enumerate().skip(1) {
        if t.len() == 1 {
            byte_tokens[t[0] as usize] = i as u32;
        }
    }
    let tables = TokenizerTables {
        info: byte_level_info(),
        vocab: vocab.to_vec(),
        merges: merges.to_vec(),
        scores: Vec::new(),
        special: vec![0],
        byte_tokens,
    };
    tables.write(w, prefix)
}

/// The tokenizer settings of synthetic byte-level models.
pub fn byte_level_info() -> TokenizerInfo {
    TokenizerInfo {
        kind: TokenizerKind::ByteLevelBpe,
        bos: Some(0),
        eos: Some(0),
        add_dummy_prefix: false,
        strip_space_after_bos: false,
    }
}

/// Shape and storage of a synthetic model.
#[derive(Debug, Clone)]
pub struct SyntheticSpec {
    pub config: Config,
    /// Storage of the matrices (the embedding included); norms stay f32.
    pub dtype: DType,
    pub seed: u64,
    pub domain: String,
}

impl SyntheticSpec {
    /// A tiny model for unit tests.
    pub fn tiny(dtype: DType) -> Self {
        SyntheticSpec {
            config: Config {
                dim: 64,
                n_layers: 2,
                n_heads: 4,
                n_kv_heads: 2,
                ffn_dim: 96,
                vocab_size: 320,
                max_seq_len: 96,
                rope_theta: 10000.0,
                norm_eps: 1e-5,
                tied_head: false,
            },
            dtype,
            seed: 7,
            domain: "story".into(),
        }
    }

    /// The smallest model the format accepts with q8 matrices and a
    /// byte-level vocabulary (one block, dim 32): seed inputs for the fuzzers.
    pub fn micro(dtype: DType) -> Self {
        SyntheticSpec {
            config: Config {
                dim: 32,
                n_layers: 1,
                n_heads: 2,
                n_kv_heads: 1,
                ffn_dim: 32,
                vocab_size: 264,
                max_seq_len: 16,
                rope_theta: 10000.0,
                norm_eps: 1e-5,
                tied_head: false,
            },
            dtype,
            seed: 3,
            domain: "story".into(),
        }
    }

    /// The shape of llama2.c's stories15M (the benchmark reference model).
    pub fn stories15m(dtype: DType) -> Self {
        SyntheticSpec {
            config: Config {
                dim: 288,
                n_layers: 6,
                n_heads: 6,
                n_kv_heads: 6,
                ffn_dim: 768,
                vocab_size: 32000,
                max_seq_len: 256,
                rope_theta: 10000.0,
                norm_eps: 1e-5,
                tied_head: true,
            },
            dtype,
            seed: 15,
            domain: "story".into(),
        }
    }
}

/// All f32 weights of a synthetic model by runtime tensor name, in the
/// order they are generated (so any dtype of the same spec shares values).
pub fn synthetic_weights(spec: &SyntheticSpec) -> Vec<(String, Vec<u32>, Vec<f32>)> {
    random_weights(&spec.config, spec.seed, 1.0)
}

/// Seeded random weights of a Llama with config `c`, by runtime tensor name:
/// matrices uniform with scale `1/sqrt(cols)`, the embedding and untied head
/// `embed_gain` times that; norms `1 + 0.1·uniform`.
pub fn random_weights(c: &Config, seed: u64, embed_gain: f32) -> Vec<(String, Vec<u32>, Vec<f32>)> {
    let (dim, ffn, vocab, kv) = (c.dim as usize, c.ffn_dim as usize, c.vocab_size as usize, c.kv_dim());
    let mut rng = WeightRng::new(seed);
    let mut out = Vec::new();
    let mut mat = |rng: &mut WeightRng, name: String, rows: usize, cols: usize| {
        let gain = if name == "tok_embeddings" || name == "output" { embed_gain } else { 1.0 };
        let scale = gain / libm::sqrtf(cols as f32);
        out.push((name, vec![rows as u32, cols as u32], rng.fill(rows * cols, scale)));
    };
    mat(&mut rng, "tok_embeddings".into(), vocab, dim);
    for l in 0..c.n_layers {
        let p = format!("layers.{l}.");
        mat(&mut rng, format!("{p}attention.wq"), dim, dim);
        mat(&mut rng, format!("{p}attention.wk"), kv, dim);
        mat(&mut rng, format!("{p}attention.wv"), kv, dim);
        mat(&mut rng, format!("{p}attention.wo"), dim, dim);
        mat(&mut rng, format!("{p}feed_forward.w1"), ffn, dim);
        mat(&mut rng, format!("{p}feed_forward.w2"), dim, ffn);
        mat(&mut rng, format!("{p}feed_forward.w3"), ffn, dim);
    }
    if !c.tied_head {
        mat(&mut rng, "output".into(), vocab, dim);
    }
    let mut norm = |rng: &mut WeightRng, name: String| {
        let v = (0..dim).map(|_| 1.0 + 0.1 * rng.uniform()).collect();
        out.push((name, vec![dim as u32], v));
    };
    for l in 0..c.n_layers {
        norm(&mut rng, format!("layers.{l}.attention_norm"));
        norm(&mut rng, format!("layers.{l}.ffn_norm"));
    }
    norm(&mut rng, "norm".into());
    out
}

/// Serialises a synthetic base model.
pub fn synthetic_model(spec: &SyntheticSpec) -> Result<Vec<u8>> {
    let c = spec.config;
    let mut w = FileWriter::new(FileKind::Base, &format!("synthetic:{}:{}", spec.seed, c.vocab_size), c);
    let (vocab, merges) = byte_level_vocab(c.vocab_size as usize);
    write_byte_level_tokenizer(&mut w, "", &vocab, &merges)?;
    w.domains.push(DomainSpec {
        name: spec.domain.clone(),
        prefix: String::new(),
        own_tokenizer: true,
        own_head: true,
        vocab_size: c.vocab_size,
        tokenizer: byte_level_info(),
        tag_token: None,
        expansion_positions: Vec::new(),
    });
    for (name, shape, data) in synthetic_weights(spec) {
        if shape.len() == 1 {
            w.add_f32(&name, &shape, &data)?;
        } else {
            match spec.dtype {
                DType::F16 => w.add_f16(&name, &shape, &data)?,
                DType::Q8 => w.add_q8(&name, &shape, &data)?,
                DType::Q4 => w.add_q4(&name, &shape, &data)?,
                _ => w.add_f32(&name, &shape, &data)?,
            }
        }
    }
    w.to_bytes()
}

/// How a synthetic domain pack relates to its base.
#[derive(Debug, Clone)]
pub struct SyntheticPackSpec {
    pub domain: String,
    /// `Some(vocab)`: own byte-level tokenizer, embedding, norm and head of
    /// that size. `None`: the base's tokenizer, embedding and head, plus a tag token.
    pub own_vocab: Option<u32>,
    pub tag_token: Option<u32>,
    /// Expansion blocks: each runs after this many base blocks.
    pub positions: Vec<u16>,
    /// Zero the attention-output and FFN-down projections of the new blocks,
    /// as expansion does at initialisation (the blocks then pass `x` through).
    pub identity_init: bool,
    pub dtype: DType,
    pub seed: u64,
}

impl SyntheticPackSpec {
    /// A `recipe` pack with its own 300-token byte-level tokenizer and one new
    /// block after base block 2 (the tiny model's last).
    pub fn recipe(dtype: DType) -> Self {
        SyntheticPackSpec {
            domain: "recipe".into(),
            own_vocab: Some(300),
            tag_token: None,
            positions: vec![2],
            identity_init: false,
            dtype,
            seed: 4,
        }
    }
}

/// Serialises a domain pack for the synthetic base `base`.
pub fn synthetic_pack(base: &SyntheticSpec, pack: &SyntheticPackSpec) -> Result<Vec<u8>> {
    let c = base.config;
    let (dim, ffn, kv) = (c.dim as usize, c.ffn_dim as usize, c.kv_dim());
    let mut w = FileWriter::new(FileKind::Pack, &format!("synthetic-pack:{}:{}", pack.domain, pack.seed), c);
    w.base_model_id = format!("synthetic:{}:{}", base.seed, c.vocab_size);
    let prefix = format!("domains.{}.", pack.domain);
    let mut rng = WeightRng::new(pack.seed);
    let add = |w: &mut FileWriter, name: &str, shape: &[u32], data: &[f32]| -> Result<()> {
        match (shape.len(), pack.dtype) {
            (1, _) => w.add_f32(name, shape, data),
            (_, DType::F16) => w.add_f16(name, shape, data),
            (_, DType::Q8) => w.add_q8(name, shape, data),
            (_, DType::Q4) => w.add_q4(name, shape, data),
            _ => w.add_f32(name, shape, data),
        }
    };
    let vocab = match pack.own_vocab {
        Some(v) => {
            let (toks, merges) = byte_level_vocab(v as usize);
            write_byte_level_tokenizer(&mut w, &prefix, &toks, &merges)?;
            let emb = rng.fill(v as usize * dim, 1.0 / libm::sqrtf(dim as f32));
            add(&mut w, &format!("{prefix}tok_embeddings"), &[v, dim as u32], &emb)?;
            let norm: Vec<f32> = (0..dim).map(|_| 1.0 + 0.1 * rng.uniform()).collect();
            add(&mut w, &format!("{prefix}norm"), &[dim as u32], &norm)?;
            v
        }
        None => c.vocab_size,
    };
    for (j, _) in pack.positions.iter().enumerate() {
        let p = format!("{prefix}blocks.{j}.");
        let s = 1.0 / libm::sqrtf(dim as f32);
        let zero_or = |rng: &mut WeightRng, n: usize, scale: f32| {
            if pack.identity_init {
                vec![0.0; n]
            } else {
                rng.fill(n, scale)
            }
        };
        add(&mut w, &format!("{p}attention.wq"), &[dim as u32, dim as u32], &rng.fill(dim * dim, s))?;
        add(&mut w, &format!("{p}attention.wk"), &[kv as u32, dim as u32], &rng.fill(kv * dim, s))?;
        add(&mut w, &format!("{p}attention.wv"), &[kv as u32, dim as u32], &rng.fill(kv * dim, s))?;
        let wo = zero_or(&mut rng, dim * dim, s);
        add(&mut w, &format!("{p}attention.wo"), &[dim as u32, dim as u32], &wo)?;
        add(&mut w, &format!("{p}feed_forward.w1"), &[ffn as u32, dim as u32], &rng.fill(ffn * dim, s))?;
        let w2 = zero_or(&mut rng, dim * ffn, 1.0 / libm::sqrtf(ffn as f32));
        add(&mut w, &format!("{p}feed_forward.w2"), &[dim as u32, ffn as u32], &w2)?;
        add(&mut w, &format!("{p}feed_forward.w3"), &[ffn as u32, dim as u32], &rng.fill(ffn * dim, s))?;
        let ones: Vec<f32> = (0..dim).map(|_| 1.0 + 0.1 * rng.uniform()).collect();
        add(&mut w, &format!("{p}attention_norm"), &[dim as u32], &ones)?;
        add(&mut w, &format!("{p}ffn_norm"), &[dim as u32], &ones)?;
    }
    w.domains.push(DomainSpec {
        name: pack.domain.clone(),
        prefix,
        own_tokenizer: pack.own_vocab.is_some(),
        own_head: pack.own_vocab.is_some(),
        vocab_size: vocab,
        tokenizer: byte_level_info(),
        tag_token: pack.tag_token,
        expansion_positions: pack.positions.clone(),
    });
    w.to_bytes()
}
