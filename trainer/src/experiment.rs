//! `edgelm-train experiment` (issue #5): a story base, then every way of adding
//! the recipe domain with the same recipe data and token budget, plus the
//! tokenizer comparison; writes `report.md`, PNG charts and one `result.json` per
//! method into the output directory. A method whose `result.json` exists is
//! skipped (loaded), so a crashed or stopped run resumes where it was; the report
//! is rewritten after every method.
//!
//! Methods (every recipe method gets `domain.steps` steps of `batch × seq` tokens):
//! * `base`: a story model from scratch with its own story tokenizer (`base.steps`);
//! * `expand`: `k` new blocks + the recipe tokenizer's embedding/norm over the frozen base;
//! * `finetune`: all base weights on recipes (base tokenizer);
//! * `lora`: rank-r adapters on every projection, base frozen (base tokenizer);
//! * `separate`: a recipe model from scratch with its own recipe tokenizer;
//! * `joint`: a model from scratch on both corpora (`base.steps + domain.steps`
//!   steps, each step one domain in proportion), generic tokenizer with tags;
//! * `story-generic`, `recipe-generic`: the base and separate recipe models again,
//!   same architecture and steps, with one generic tokenizer trained on both corpora
//!   at a larger vocabulary (the tokenizer claim);
//! * `story-generic-eq`, `recipe-generic-eq`: the same with the FFN narrowed so the
//!   total parameter count matches the custom-tokenizer model (same parameter budget).

use crate::baselines::{finetune_copy, fit, FitConfig, FitStats, FnScorer, Lora};
use crate::checkpoint;
use crate::config::ModelConfig;
use crate::corpus::{split_documents, Batcher, Corpus, Limits, TokenStream};
use crate::eval::{evaluate, EvalResult, ModelScorer};
use crate::expand::{default_positions, Expanded, TokenizerMode};
use crate::model::Llama;
use crate::rng::Rng;
use crate::sample::{pick, SampleOptions};
use crate::tokenizer::EdgeTokenizer;
use crate::{Error, Result};
use candle_core::{Device, Tensor, Var};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Settings of an experiment run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExperimentConfig {
    /// Directory with `stories/` and `recipes/` (each `train.txt`, `valid.txt`).
    pub data: PathBuf,
    pub out: PathBuf,
    /// Architecture of every model (vocab_size is set per tokenizer).
    pub model: ModelConfig,
    /// Vocabulary of the per-domain tokenizers.
    pub vocab: usize,
    /// Vocabulary of the generic tokenizer (both corpora).
    pub generic_vocab: usize,
    pub base: FitConfig,
    pub domain: FitConfig,
    pub lora_rank: usize,
    /// New blocks of `expand`.
    pub blocks: usize,
    /// Text used to train each tokenizer (first documents of train.txt).
    pub tokenizer_bytes: usize,
    /// Text of each train.txt used for training (first documents).
    pub train_bytes: usize,
    /// Text of each valid.txt evaluated (first documents).
    pub valid_bytes: usize,
    /// Samples per domain in the report.
    pub samples: usize,
    pub methods: Vec<String>,
}

pub const ALL_METHODS: [&str; 10] = [
    "base",
    "expand",
    "finetune",
    "lora",
    "separate",
    "joint",
    "story-generic",
    "recipe-generic",
    "story-generic-eq",
    "recipe-generic-eq",
];

impl ExperimentConfig {
    /// The small, bounded default for a CPU-starved machine.
    pub fn small(data: PathBuf, out: PathBuf) -> Self {
        let model = ModelConfig {
            dim: 128,
            n_layers: 4,
            n_heads: 4,
            n_kv_heads: 2,
            ffn_dim: 352,
            vocab_size: 2048,
            max_seq: 128,
            ..ModelConfig::default()
        };
        let fc =
            FitConfig { steps: 300, batch: 16, seq: 128, lr: 3e-3, min_lr: 3e-4, warmup: 30, ..FitConfig::default() };
        ExperimentConfig {
            data,
            out,
            model,
            vocab: 2048,
            generic_vocab: 4096,
            base: fc.clone(),
            domain: fc,
            lora_rank: 8,
            blocks: 2,
            tokenizer_bytes: 6 << 20,
            train_bytes: 12 << 20,
            valid_bytes: 300 << 10,
            samples: 2,
            methods: ALL_METHODS.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// BPB of one domain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DomainScore {
    pub bpb: f64,
    pub loss: f64,
    pub tokenizer: String,
    pub vocab: usize,
    pub bytes_per_token: f64,
}

impl DomainScore {
    fn of(r: &EvalResult, tokenizer: &str, vocab: usize) -> Self {
        DomainScore {
            bpb: r.bpb,
            loss: r.loss,
            tokenizer: tokenizer.into(),
            vocab,
            bytes_per_token: r.bytes as f64 / (r.scored_tokens.saturating_sub(r.documents as u64)).max(1) as f64,
        }
    }
}

/// What one method produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MethodResult {
    pub method: String,
    pub story: Option<DomainScore>,
    pub recipe: Option<DomainScore>,
    pub trainable_params: usize,
    pub total_params: usize,
    pub train_tokens: u64,
    pub wall_s: f64,
    pub losses: Vec<(usize, f64)>,
    pub samples: Vec<(String, String)>,
    pub notes: Vec<String>,
}

struct Data {
    story_train: Corpus,
    story_valid: Corpus,
    recipe_train: Corpus,
    recipe_valid: Corpus,
}

fn head_docs(c: Corpus, max_bytes: usize) -> Corpus {
    let mut text = String::new();
    for (_, d) in split_documents(&c.text) {
        if text.len() >= max_bytes {
            break;
        }
        text.push_str(d);
        text.push_str("\n<|endoftext|>\n");
    }
    Corpus { path: c.path, text }
}

fn log(out: &Path, msg: &str) {
    eprintln!("[experiment] {msg}");
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(out.join("experiment.log")) {
        let _ = writeln!(f, "{msg}");
    }
}

/// Runs (or resumes) the experiment; returns the results in method order.
pub fn run(cfg: &ExperimentConfig) -> Result<Vec<MethodResult>> {
    let out = &cfg.out;
    std::fs::create_dir_all(out).map_err(|e| Error::io("cannot create", out, e))?;
    let json = serde_json::to_string_pretty(cfg).expect("config serialises");
    crate::error::write_atomic(&out.join("experiment.json"), json.as_bytes())?;
    let dev = Device::Cpu;
    let lim = Limits::default();
    let load = |dom: &str, f: &str, cap: usize| -> Result<Corpus> {
        Ok(head_docs(Corpus::load(&cfg.data.join(dom).join(f), lim)?, cap))
    };
    let t0 = Instant::now();
    let data = Data {
        story_train: load("stories", "train.txt", cfg.train_bytes)?,
        story_valid: load("stories", "valid.txt", cfg.valid_bytes)?,
        recipe_train: load("recipes", "train.txt", cfg.train_bytes)?,
        recipe_valid: load("recipes", "valid.txt", cfg.valid_bytes)?,
    };
    log(out, &format!("corpora loaded in {:.1}s", t0.elapsed().as_secs_f64()));

    // Tokenizers.
    let tdir = out.join("tokenizers");
    std::fs::create_dir_all(&tdir).map_err(|e| Error::io("cannot create", &tdir, e))?;
    let train_tok = |name: &str, corpora: &[&Corpus], vocab: usize, domains: &[String]| -> Result<EdgeTokenizer> {
        let p = tdir.join(format!("{name}.json"));
        if p.exists() {
            return EdgeTokenizer::load(&p);
        }
        let t = Instant::now();
        let caps: Vec<Corpus> = corpora.iter().map(|c| head_docs((*c).clone(), cfg.tokenizer_bytes)).collect();
        let docs: Vec<&str> = caps.iter().flat_map(|c| c.documents().into_iter().map(|(_, d)| d)).collect();
        let tok = EdgeTokenizer::train(docs.into_iter(), vocab, domains)?;
        tok.save(&p)?;
        log(out, &format!("tokenizer {name} (vocab {vocab}) trained in {:.1}s", t.elapsed().as_secs_f64()));
        Ok(tok)
    };
    let s = |x: &str| x.to_string();
    let story_tok = train_tok("story", &[&data.story_train], cfg.vocab, &[s("story")])?;
    let recipe_tok = train_tok("recipe", &[&data.recipe_train], cfg.vocab, &[s("recipe")])?;
    let generic_tok =
        train_tok("generic", &[&data.story_train, &data.recipe_train], cfg.generic_vocab, &[s("story"), s("recipe")])?;

    let cache = out.join(".token-cache");
    let stream = |c: &Corpus, t: &EdgeTokenizer, tag: Option<u32>| TokenStream::cached(c, t, tag, &cache);

    let mut results: Vec<MethodResult> = Vec::new();
    for m in ALL_METHODS {
        let p = out.join(m).join("result.json");
        if let Ok(b) = std::fs::read(&p) {
            if let Ok(r) = serde_json::from_slice::<MethodResult>(&b) {
                results.push(r);
            }
        }
    }
    let want = |m: &str| cfg.methods.iter().any(|x| x == m);
    let have = |rs: &Vec<MethodResult>, m: &str| rs.iter().any(|r| r.method == m);
    let save = |rs: &mut Vec<MethodResult>, r: MethodResult| -> Result<()> {
        let dir = out.join(&r.method);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("cannot create", &dir, e))?;
        let j = serde_json::to_string_pretty(&r).expect("result serialises");
        crate::error::write_atomic(&dir.join("result.json"), j.as_bytes())?;
        log(out, &format!("{} done: {}", r.method, summary(&r)));
        rs.retain(|x| x.method != r.method);
        rs.push(r);
        write_report(cfg, rs)?;
        Ok(())
    };
    let eval_llama =
        |m: &Llama, tok: &EdgeTokenizer, c: &Corpus, tag: Option<u32>, name: &str| -> Result<DomainScore> {
            let r = evaluate(&ModelScorer { model: m, batch: 16 }, tok, &c.text, tag)?;
            Ok(DomainScore::of(&r, name, tok.vocab_size()))
        };
    let progress = |name: &str, total: usize| {
        let (out, name) = (out.clone(), name.to_string());
        let t = Instant::now();
        move |step: usize, loss: f64| {
            if step.is_multiple_of(25) || step == total {
                log(&out, &format!("{name} step {step}/{total} loss {loss:.4} ({:.0}s)", t.elapsed().as_secs_f64()));
            }
        }
    };
    let model_for = |vocab: usize| ModelConfig { vocab_size: vocab, max_seq: cfg.base.seq, ..cfg.model.clone() };
    let batches = |st: &TokenStream, fc: &FitConfig| {
        let mut b = Batcher::new(fc.seed, fc.batch, fc.seq);
        let st = st.clone();
        move |_step: usize| b.next_batch(&st)
    };
    // trains `vars` on `corpus` with `fc`, logging progress under `name`
    let fit_on = |name: &str,
                  vars: Vec<(String, Var)>,
                  fc: &FitConfig,
                  corpus: &TokenStream,
                  lf: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>| {
        fit(vars, fc, &dev, &mut batches(corpus, fc), lf, &mut progress(name, fc.steps))
    };
    // story and recipe BPB of a plain Llama with tokenizer `tok` (tag domain `name`)
    let eval_both = |r: &mut MethodResult, m: &Llama, tok: &EdgeTokenizer, name: &str| -> Result<()> {
        r.story = Some(eval_llama(m, tok, &data.story_valid, None, name)?);
        r.recipe = Some(eval_llama(m, tok, &data.recipe_valid, None, name)?);
        Ok(())
    };

    // ---- base (story model, own tokenizer)
    let base_dir = out.join("base");
    let story_s = stream(&data.story_train, &story_tok, None)?;
    if !have(&results, "base") || !base_dir.join(checkpoint::MODEL_FILE).exists() {
        log(out, "training base");
        let m = Llama::new(&model_for(story_tok.vocab_size()), cfg.base.seed, &dev)?;
        let lf = |x: &Tensor, y: &Tensor| m.loss(x, y);
        let st = fit_on("base", m.vars(), &cfg.base, &story_s, &lf)?;
        checkpoint::save_model(&base_dir, &m, &story_tok, &[s("story")], candle_core::DType::F32)?;
        let mut r = result("base", &st, m.n_params(), m.n_params());
        eval_both(&mut r, &m, &story_tok, "story")?;
        r.samples = samples_of(&|ids| m.next_logits(ids), &story_tok, &["Once upon a time"], cfg.samples, None)?;
        save(&mut results, r)?;
    }
    let load_base = || -> Result<Llama> { Ok(checkpoint::load(&base_dir, &dev)?.model) };
    let base_cfg = checkpoint::load_config(&base_dir)?;
    let base_story = results.iter().find(|r| r.method == "base").and_then(|r| r.story.clone());

    let recipe_own = stream(&data.recipe_train, &recipe_tok, None)?;
    let recipe_base = stream(&data.recipe_train, &story_tok, None)?;
    let recipe_prompts = ["Title: ", "Title: Apple"];

    // ---- expand
    if want("expand") && !have(&results, "expand") {
        log(out, "training expand");
        let base = load_base()?;
        let id0 = checkpoint::model_id(&base.tensors())?;
        let positions = default_positions(base.cfg.n_layers, cfg.blocks);
        let e = Expanded::new(
            base,
            "recipe",
            TokenizerMode::PerDomain,
            positions,
            Some(&story_tok),
            Some(&recipe_tok),
            None,
        )?;
        let lf = |x: &Tensor, y: &Tensor| e.loss(x, y);
        let st = fit_on("expand", e.vars(), &cfg.domain, &recipe_own, &lf)?;
        let id1 = checkpoint::model_id(&e.base.tensors())?;
        e.save(&out.join("expand").join("recipe"), &base_cfg, &recipe_tok)?;
        let mut r = result("expand", &st, e.n_trainable(), e.n_total());
        // The story domain of the expanded model is the untouched base: measured again.
        r.story = Some(eval_llama(&e.base, &story_tok, &data.story_valid, None, "story")?);
        let f = |x: &Tensor, y: &Tensor| e.token_losses(x, y);
        let sc = FnScorer { max_seq: e.cfg().max_seq, batch: 16, device: dev.clone(), f: &f };
        let rr = evaluate(&sc, &recipe_tok, &data.recipe_valid.text, None)?;
        r.recipe = Some(DomainScore::of(&rr, "recipe", recipe_tok.vocab_size()));
        r.notes.push(format!(
            "positions {:?}; base tensors hash before {} after {} ({})",
            e.positions,
            short(&id0),
            short(&id1),
            if id0 == id1 { "identical" } else { "CHANGED" }
        ));
        if let Some(b) = &base_story {
            let d = r.story.as_ref().map(|s| s.bpb - b.bpb).unwrap_or(f64::NAN);
            r.notes.push(format!("story BPB change vs base: {d:+.6}"));
        }
        r.samples = samples_of(&|ids| e.next_logits(ids), &recipe_tok, &recipe_prompts, cfg.samples, None)?;
        save(&mut results, r)?;
    }

    // ---- finetune
    if want("finetune") && !have(&results, "finetune") {
        log(out, "training finetune");
        let m = finetune_copy(&load_base()?)?;
        let lf = |x: &Tensor, y: &Tensor| m.loss(x, y);
        let st = fit_on("finetune", m.vars(), &cfg.domain, &recipe_base, &lf)?;
        let mut r = result("finetune", &st, m.n_params(), m.n_params());
        eval_both(&mut r, &m, &story_tok, "story")?;
        r.samples = samples_of(&|ids| m.next_logits(ids), &story_tok, &recipe_prompts, cfg.samples, None)?;
        save(&mut results, r)?;
    }

    // ---- lora
    if want("lora") && !have(&results, "lora") {
        log(out, "training lora");
        let lo = Lora::new(load_base()?, cfg.lora_rank, cfg.domain.seed)?;
        let lf = |x: &Tensor, y: &Tensor| lo.loss(x, y);
        let st = fit_on("lora", lo.vars(), &cfg.domain, &recipe_base, &lf)?;
        let m = lo.merge()?;
        let mut r = result("lora", &st, lo.n_trainable(), lo.base.n_params() + lo.n_trainable());
        eval_both(&mut r, &m, &story_tok, "story")?;
        r.notes.push(format!(
            "rank {}, alpha {}, all 7 projections of every block",
            lo.rank,
            lo.scale * lo.rank as f64
        ));
        r.samples = samples_of(&|ids| m.next_logits(ids), &story_tok, &recipe_prompts, cfg.samples, None)?;
        save(&mut results, r)?;
    }

    // ---- separate (recipe model from scratch, own tokenizer)
    if want("separate") && !have(&results, "separate") {
        log(out, "training separate");
        let m = Llama::new(&model_for(recipe_tok.vocab_size()), cfg.domain.seed, &dev)?;
        let lf = |x: &Tensor, y: &Tensor| m.loss(x, y);
        let st = fit_on("separate", m.vars(), &cfg.domain, &recipe_own, &lf)?;
        let mut r = result("separate", &st, m.n_params(), m.n_params());
        eval_both(&mut r, &m, &recipe_tok, "recipe")?;
        r.samples = samples_of(&|ids| m.next_logits(ids), &recipe_tok, &recipe_prompts, cfg.samples, None)?;
        save(&mut results, r)?;
    }

    // ---- joint (both corpora, generic tokenizer with tags)
    if want("joint") && !have(&results, "joint") {
        log(out, "training joint");
        let (ts, tr) = (generic_tok.tag_id("story"), generic_tok.tag_id("recipe"));
        let ss = stream(&data.story_train, &generic_tok, ts)?;
        let rs = stream(&data.recipe_train, &generic_tok, tr)?;
        let (sn, dn) = (cfg.base.steps, cfg.domain.steps);
        let fc = FitConfig { steps: sn + dn, ..cfg.domain.clone() };
        let m = Llama::new(&model_for(generic_tok.vocab_size()), fc.seed, &dev)?;
        let mut bs = Batcher::new(fc.seed, fc.batch, fc.seq);
        let mut br = Batcher::new(fc.seed + 1, fc.batch, fc.seq);
        let total = sn + dn;
        let mut next = |i: usize| {
            // Step i is a recipe step when it crosses a multiple of total/dn.
            if (i + 1) * dn / total > i * dn / total {
                br.next_batch(&rs)
            } else {
                bs.next_batch(&ss)
            }
        };
        let lf = |x: &Tensor, y: &Tensor| m.loss(x, y);
        let st = fit(m.vars(), &fc, &dev, &mut next, &lf, &mut progress("joint", total))?;
        let mut r = result("joint", &st, m.n_params(), m.n_params());
        r.story = Some(eval_llama(&m, &generic_tok, &data.story_valid, ts, "generic")?);
        r.recipe = Some(eval_llama(&m, &generic_tok, &data.recipe_valid, tr, "generic")?);
        r.notes.push(format!("{sn} story steps + {dn} recipe steps, interleaved"));
        r.samples = samples_of(&|ids| m.next_logits(ids), &generic_tok, &recipe_prompts, cfg.samples, tr)?;
        save(&mut results, r)?;
    }

    // ---- tokenizer claim: same models, one generic tokenizer
    // `-eq`: FFN narrowed so the bigger embedding is paid for (same total parameters).
    let eq_ffn = {
        let extra = (generic_tok.vocab_size() - story_tok.vocab_size().min(generic_tok.vocab_size())) * cfg.model.dim;
        let per_unit = 3 * cfg.model.dim * cfg.model.n_layers;
        (cfg.model.ffn_dim.saturating_sub(extra.div_ceil(per_unit)) / 8 * 8).max(8)
    };
    for (name, dom) in [
        ("story-generic", "story"),
        ("recipe-generic", "recipe"),
        ("story-generic-eq", "story"),
        ("recipe-generic-eq", "recipe"),
    ] {
        if !want(name) || have(&results, name) {
            continue;
        }
        log(out, &format!("training {name}"));
        let (train, valid, fc) = if dom == "story" {
            (&data.story_train, &data.story_valid, &cfg.base)
        } else {
            (&data.recipe_train, &data.recipe_valid, &cfg.domain)
        };
        let stg = stream(train, &generic_tok, None)?;
        let mut mc = model_for(generic_tok.vocab_size());
        if name.ends_with("-eq") {
            mc.ffn_dim = eq_ffn;
        }
        let m = Llama::new(&mc, fc.seed, &dev)?;
        let lf = |x: &Tensor, y: &Tensor| m.loss(x, y);
        let st = fit_on(name, m.vars(), fc, &stg, &lf)?;
        let mut r = result(name, &st, m.n_params(), m.n_params());
        r.notes.push(format!("ffn {}", mc.ffn_dim));
        let sc = eval_llama(&m, &generic_tok, valid, None, "generic")?;
        if dom == "story" {
            r.story = Some(sc);
        } else {
            r.recipe = Some(sc);
        }
        save(&mut results, r)?;
    }
    write_report(cfg, &results)?;
    Ok(results)
}

fn short(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

fn result(method: &str, st: &FitStats, trainable: usize, total: usize) -> MethodResult {
    MethodResult {
        method: method.into(),
        story: None,
        recipe: None,
        trainable_params: trainable,
        total_params: total,
        train_tokens: st.tokens,
        wall_s: st.wall_s,
        losses: st.losses.clone(),
        samples: Vec::new(),
        notes: Vec::new(),
    }
}

fn summary(r: &MethodResult) -> String {
    let f = |d: &Option<DomainScore>| d.as_ref().map(|d| format!("{:.4}", d.bpb)).unwrap_or_else(|| "-".into());
    format!("story bpb {} recipe bpb {} ({:.0}s)", f(&r.story), f(&r.recipe), r.wall_s)
}

/// Seeded top-k samples from any next-token function.
pub fn samples_of(
    next: &dyn Fn(&[u32]) -> Result<Vec<f32>>,
    tok: &EdgeTokenizer,
    prompts: &[&str],
    n: usize,
    tag: Option<u32>,
) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for i in 0..n {
        let prompt = prompts[i % prompts.len().max(1)];
        let o = SampleOptions { max_tokens: 80, temperature: 0.8, top_k: 40, seed: 1 + i as u64, tag };
        let mut ids = vec![tok.eot_id()];
        ids.extend(tag);
        ids.extend(tok.encode(prompt)?);
        let mut rng = Rng::new(o.seed, 0x5A3);
        let mut gen = Vec::new();
        for _ in 0..o.max_tokens {
            let next_id = pick(&next(&ids)?, &o, &mut rng);
            if next_id == tok.eot_id() {
                break;
            }
            ids.push(next_id);
            gen.push(next_id);
        }
        out.push((prompt.to_string(), tok.decode(&gen)?));
    }
    Ok(out)
}

fn fmt_params(n: usize) -> String {
    if n >= 1_000_000 {
        format!("{:.2}M", n as f64 / 1e6)
    } else {
        format!("{:.1}k", n as f64 / 1e3)
    }
}

/// Writes `report.md` and the charts from whatever results exist.
pub fn write_report(cfg: &ExperimentConfig, rs: &[MethodResult]) -> Result<()> {
    let get = |m: &str| rs.iter().find(|r| r.method == m);
    let base_story = get("base").and_then(|r| r.story.as_ref()).map(|s| s.bpb);
    let mut md = String::new();
    md.push_str("# Experiment: adding the recipe domain to a story model\n\n");
    md.push_str(&format!(
        "Model: dim {}, {} layers, {} heads ({} KV), ffn {}, context {}; per-domain tokenizers of {} tokens, \
         generic tokenizer {} tokens. Story base: {} steps; every recipe method: {} steps; batch {} × {} tokens \
         (= {} tokens per step). LR {} → {} (cosine, {} warm-up), AdamW wd {}, clip {}. LoRA rank {}; expansion: {} \
         new blocks. Train text: first {:.1} MB of each train.txt; BPB on the first {} KB of each valid.txt.\n\n",
        cfg.model.dim,
        cfg.model.n_layers,
        cfg.model.n_heads,
        cfg.model.n_kv_heads,
        cfg.model.ffn_dim,
        cfg.base.seq,
        cfg.vocab,
        cfg.generic_vocab,
        cfg.base.steps,
        cfg.domain.steps,
        cfg.domain.batch,
        cfg.domain.seq,
        cfg.domain.batch * cfg.domain.seq,
        cfg.domain.lr,
        cfg.domain.min_lr,
        cfg.domain.warmup,
        cfg.domain.weight_decay,
        cfg.domain.grad_clip,
        cfg.lora_rank,
        cfg.blocks,
        cfg.train_bytes as f64 / (1 << 20) as f64,
        cfg.valid_bytes >> 10,
    ));
    md.push_str("## Methods (valid bits per byte, lower is better)\n\n");
    md.push_str(
        "| method | story BPB | Δ story vs base (forgetting) | recipe BPB | recipe tokenizer | trainable params | total params | train tokens | wall (s) |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    let f = |d: Option<&DomainScore>| d.map(|d| format!("{:.4}", d.bpb)).unwrap_or_else(|| "–".into());
    for m in ["base", "expand", "finetune", "lora", "separate", "joint"] {
        if let Some(r) = get(m) {
            let delta = match (r.story.as_ref(), base_story) {
                (Some(s), Some(b)) if m != "base" => format!("{:+.4}", s.bpb - b),
                _ => "–".into(),
            };
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} |\n",
                m,
                f(r.story.as_ref()),
                delta,
                f(r.recipe.as_ref()),
                r.recipe.as_ref().map(|d| format!("{} ({})", d.tokenizer, d.vocab)).unwrap_or_default(),
                fmt_params(r.trainable_params),
                fmt_params(r.total_params),
                r.train_tokens,
                r.wall_s
            ));
        }
    }
    md.push('\n');
    if let (Some(e), Some(s)) = (get("expand"), get("separate")) {
        if let (Some(er), Some(sr)) = (e.recipe.as_ref(), s.recipe.as_ref()) {
            let rel = (er.bpb - sr.bpb) / sr.bpb * 100.0;
            md.push_str(&format!(
                "Expansion's recipe BPB is {:+.1} % relative to the separate recipe model with the same budget \
                 (the issue's target: within 10 %: {}).\n\n",
                rel,
                if rel <= 10.0 { "met" } else { "NOT met" }
            ));
        }
    }
    md.push_str("## Tokenizer claim: custom per-domain tokenizers vs one generic tokenizer\n\n");
    md.push_str(
        "Same steps and tokens per step. `*-generic`: same architecture, only the tokenizer (and so the \
         embedding size) differs; `*-generic-eq`: the FFN is narrowed so the total parameter count equals the \
         custom-tokenizer model's (same parameter budget).\n\n",
    );
    md.push_str("| domain | tokenizer | vocab | bytes/token | params | BPB |\n|---|---|---|---|---|---|\n");
    for (dom, own, gen, eq) in [
        ("story", "base", "story-generic", "story-generic-eq"),
        ("recipe", "separate", "recipe-generic", "recipe-generic-eq"),
    ] {
        for m in [own, gen, eq] {
            if let Some(r) = get(m) {
                let d = if dom == "story" { r.story.as_ref() } else { r.recipe.as_ref() };
                if let Some(d) = d {
                    md.push_str(&format!(
                        "| {dom} | {} ({m}) | {} | {:.2} | {} | {:.4} |\n",
                        d.tokenizer,
                        d.vocab,
                        d.bytes_per_token,
                        fmt_params(r.total_params),
                        d.bpb
                    ));
                }
            }
        }
    }
    md.push_str(
        "\nCharts: `bpb.png` (per method, left bar story BPB in blue, right bar recipe BPB in orange; the \
         dashed line is the base's story BPB), `tokenizers.png` (per domain: custom tokenizer blue, generic \
         orange, generic with equal parameters grey), `curves.png` (recipe training loss per step: expand red, finetune blue, lora green, separate \
         black).\n\n",
    );
    md.push_str("## Notes\n\n");
    for r in rs {
        for n in &r.notes {
            md.push_str(&format!("- {}: {n}\n", r.method));
        }
    }
    md.push_str("\n## Samples (temperature 0.8, top-k 40)\n\n");
    for r in rs {
        for (p, t) in &r.samples {
            md.push_str(&format!("**{}** — `{}`\n\n```\n{}{}\n```\n\n", r.method, p.trim_end(), p, t));
        }
    }
    crate::error::write_atomic(&cfg.out.join("report.md"), md.as_bytes())?;
    if let Err(e) = charts(&cfg.out, rs) {
        eprintln!("warning: charts: {e}");
    }
    Ok(())
}

fn charts(out: &Path, rs: &[MethodResult]) -> std::result::Result<(), String> {
    let e = |x: &dyn std::fmt::Display| x.to_string();
    let get = |m: &str| rs.iter().find(|r| r.method == m);
    let blue = RGBColor(60, 110, 200);
    let orange = RGBColor(240, 140, 40);
    // bpb.png
    {
        let methods = ["base", "expand", "finetune", "lora", "separate", "joint"];
        let vals: Vec<(Option<f64>, Option<f64>)> = methods
            .iter()
            .map(|m| {
                get(m).map_or((None, None), |r| (r.story.as_ref().map(|d| d.bpb), r.recipe.as_ref().map(|d| d.bpb)))
            })
            .collect();
        let ymax = vals.iter().flat_map(|(a, b)| [a, b]).filter_map(|v| *v).fold(0.1, f64::max) * 1.1;
        let p = out.join("bpb.png");
        let root = BitMapBackend::new(&p, (800, 450)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let mut ch = ChartBuilder::on(&root)
            .margin(20)
            .build_cartesian_2d(0f64..methods.len() as f64, 0f64..ymax)
            .map_err(|x| e(&x))?;
        for k in 0..=(ymax * 2.0) as usize {
            let y = k as f64 / 2.0;
            ch.draw_series(LineSeries::new([(0.0, y), (methods.len() as f64, y)], RGBColor(220, 220, 220)))
                .map_err(|x| e(&x))?;
        }
        for (i, (s, r)) in vals.iter().enumerate() {
            let x = i as f64;
            if let Some(s) = s {
                ch.draw_series([Rectangle::new([(x + 0.1, 0.0), (x + 0.45, *s)], blue.filled())]).map_err(|x| e(&x))?;
            }
            if let Some(r) = r {
                ch.draw_series([Rectangle::new([(x + 0.55, 0.0), (x + 0.9, *r)], orange.filled())])
                    .map_err(|x| e(&x))?;
            }
        }
        if let Some(b) = get("base").and_then(|r| r.story.as_ref()) {
            ch.draw_series(DashedLineSeries::new([(0.0, b.bpb), (methods.len() as f64, b.bpb)], 6, 4, BLACK.into()))
                .map_err(|x| e(&x))?;
        }
        root.present().map_err(|x| e(&x))?;
    }
    // tokenizers.png
    {
        let bars = |m: [&str; 3], story: bool| -> Vec<Option<f64>> {
            m.iter()
                .map(|x| get(x).and_then(|r| if story { r.story.as_ref() } else { r.recipe.as_ref() }).map(|d| d.bpb))
                .collect()
        };
        let groups = [
            bars(["base", "story-generic", "story-generic-eq"], true),
            bars(["separate", "recipe-generic", "recipe-generic-eq"], false),
        ];
        let ymax = groups.iter().flatten().filter_map(|v| *v).fold(0.1, f64::max) * 1.1;
        let p = out.join("tokenizers.png");
        let root = BitMapBackend::new(&p, (500, 400)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let mut ch = ChartBuilder::on(&root).margin(20).build_cartesian_2d(0f64..2.0, 0f64..ymax).map_err(|x| e(&x))?;
        let colors = [blue, orange, RGBColor(150, 150, 150)];
        for (i, g) in groups.iter().enumerate() {
            for (k, v) in g.iter().enumerate() {
                if let Some(v) = v {
                    let x = i as f64 + 0.08 + k as f64 * 0.28;
                    ch.draw_series([Rectangle::new([(x, 0.0), (x + 0.25, *v)], colors[k].filled())])
                        .map_err(|x| e(&x))?;
                }
            }
        }
        root.present().map_err(|x| e(&x))?;
    }
    // curves.png
    {
        let series = [
            ("expand", RGBColor(220, 40, 40)),
            ("finetune", RGBColor(40, 80, 220)),
            ("lora", RGBColor(40, 160, 60)),
            ("separate", RGBColor(0, 0, 0)),
        ];
        let xmax = series.iter().filter_map(|(m, _)| get(m)).map(|r| r.losses.len()).max().unwrap_or(1).max(1) as f64;
        let ymax = series
            .iter()
            .filter_map(|(m, _)| get(m))
            .flat_map(|r| r.losses.iter().take(5).map(|l| l.1))
            .fold(1.0, f64::max)
            * 1.05;
        let p = out.join("curves.png");
        let root = BitMapBackend::new(&p, (800, 450)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let mut ch =
            ChartBuilder::on(&root).margin(20).build_cartesian_2d(0f64..xmax, 0f64..ymax).map_err(|x| e(&x))?;
        for (m, c) in series {
            if let Some(r) = get(m) {
                let w = 10usize;
                let pts: Vec<(f64, f64)> = (0..r.losses.len())
                    .map(|i| {
                        let lo = i.saturating_sub(w);
                        let s: f64 = r.losses[lo..=i].iter().map(|l| l.1).sum();
                        (r.losses[i].0 as f64, (s / (i - lo + 1) as f64).min(ymax))
                    })
                    .collect();
                ch.draw_series(LineSeries::new(pts, c.stroke_width(2))).map_err(|x| e(&x))?;
            }
        }
        root.present().map_err(|x| e(&x))?;
    }
    Ok(())
}
