//! Training and scoring every method of the experiment, resumably.

use super::{write_report, DomainScore, ExperimentConfig, MethodResult, ALL_METHODS};
use crate::baselines::{finetune_copy, fit, FitConfig, FitStats, FnScorer, Lora};
use crate::checkpoint;
use crate::config::ModelConfig;
use crate::corpus::{Batcher, Corpus, Limits, TokenStream};
use crate::eval::{evaluate, ModelScorer};
use crate::expand::{default_positions, Expanded, TokenizerMode};
use crate::model::Llama;
use crate::rng::Rng;
use crate::sample::{pick, SampleOptions};
use crate::tokenizer::EdgeTokenizer;
use crate::{Error, Result};
use candle_core::{Device, Tensor, Var};
use std::path::Path;
use std::time::Instant;

struct Data {
    story_train: Corpus,
    story_valid: Corpus,
    recipe_train: Corpus,
    recipe_valid: Corpus,
}

/// Appends `msg` to `experiment.log` in `out` (best effort: the log is a
/// convenience, the results are in `result.json`) and hands it to `on_log`.
fn log_to(out: &Path, msg: &str, on_log: &dyn Fn(&str)) {
    use std::io::Write;
    on_log(msg);
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(out.join("experiment.log")) {
        let _ = writeln!(f, "{msg}");
    }
}

/// Runs (or resumes) the experiment; returns the results in method order.
/// Progress lines go to `experiment.log` and to `on_log`.
pub fn run(cfg: &ExperimentConfig, on_log: &dyn Fn(&str)) -> Result<Vec<MethodResult>> {
    let out = &cfg.out;
    let log = |msg: &str| log_to(out, msg, on_log);
    std::fs::create_dir_all(out).map_err(|e| Error::io("cannot create", out, e))?;
    crate::fsio::write_json(&out.join("experiment.json"), cfg)?;
    let dev = Device::Cpu;
    let lim = Limits::default();
    let load = |dom: &str, f: &str, cap: usize| -> Result<Corpus> {
        Ok(Corpus::load(&cfg.data.join(dom).join(f), lim)?.head(cap))
    };
    let t0 = Instant::now();
    let data = Data {
        story_train: load("stories", "train.txt", cfg.train_bytes)?,
        story_valid: load("stories", "valid.txt", cfg.valid_bytes)?,
        recipe_train: load("recipes", "train.txt", cfg.train_bytes)?,
        recipe_valid: load("recipes", "valid.txt", cfg.valid_bytes)?,
    };
    log(&format!("corpora loaded in {:.1}s", t0.elapsed().as_secs_f64()));

    // Tokenizers.
    let tdir = out.join("tokenizers");
    std::fs::create_dir_all(&tdir).map_err(|e| Error::io("cannot create", &tdir, e))?;
    let train_tok = |name: &str, corpora: &[&Corpus], vocab: usize, domains: &[String]| -> Result<EdgeTokenizer> {
        let p = tdir.join(format!("{name}.json"));
        if p.exists() {
            return EdgeTokenizer::load(&p);
        }
        let t = Instant::now();
        let caps: Vec<Corpus> = corpora.iter().map(|c| (*c).clone().head(cfg.tokenizer_bytes)).collect();
        let docs: Vec<&str> = caps.iter().flat_map(|c| c.documents().into_iter().map(|(_, d)| d)).collect();
        let tok = EdgeTokenizer::train(docs.into_iter(), vocab, domains)?;
        tok.save(&p)?;
        log(&format!("tokenizer {name} (vocab {vocab}) trained in {:.1}s", t.elapsed().as_secs_f64()));
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
        crate::fsio::write_json(&dir.join("result.json"), &r)?;
        log(&format!("{} done: {}", r.method, summary(&r)));
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
        let name = name.to_string();
        let t = Instant::now();
        move |step: usize, loss: f64| {
            if step.is_multiple_of(25) || step == total {
                log(&format!("{name} step {step}/{total} loss {loss:.4} ({:.0}s)", t.elapsed().as_secs_f64()));
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
        log("training base");
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
        log("training expand");
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
        log("training finetune");
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
        log("training lora");
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
        log("training separate");
        let m = Llama::new(&model_for(recipe_tok.vocab_size()), cfg.domain.seed, &dev)?;
        let lf = |x: &Tensor, y: &Tensor| m.loss(x, y);
        let st = fit_on("separate", m.vars(), &cfg.domain, &recipe_own, &lf)?;
        let mut r = result("separate", &st, m.n_params(), m.n_params());
        eval_both(&mut r, &m, &recipe_tok, "recipe")?;
        r.samples = samples_of(&|ids| m.next_logits(ids), &recipe_tok, &recipe_prompts, cfg.samples, None)?;
        save(&mut results, r)?;
    }

    // ---- separate-deep (as separate, with the expansion's extra blocks)
    if want("separate-deep") && !have(&results, "separate-deep") {
        log("training separate-deep");
        let mc = ModelConfig { n_layers: cfg.model.n_layers + cfg.blocks, ..model_for(recipe_tok.vocab_size()) };
        let m = Llama::new(&mc, cfg.domain.seed, &dev)?;
        let lf = |x: &Tensor, y: &Tensor| m.loss(x, y);
        let st = fit_on("separate-deep", m.vars(), &cfg.domain, &recipe_own, &lf)?;
        let mut r = result("separate-deep", &st, m.n_params(), m.n_params());
        eval_both(&mut r, &m, &recipe_tok, "recipe")?;
        r.notes.push(format!("{} layers (base {} + {} expansion blocks)", mc.n_layers, cfg.model.n_layers, cfg.blocks));
        r.samples = samples_of(&|ids| m.next_logits(ids), &recipe_tok, &recipe_prompts, cfg.samples, None)?;
        save(&mut results, r)?;
    }

    // ---- joint (both corpora, generic tokenizer with tags)
    if want("joint") && !have(&results, "joint") {
        log("training joint");
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
        log(&format!("training {name}"));
        let (train, valid, own, fc) = if dom == "story" {
            (&data.story_train, &data.story_valid, &story_s, &cfg.base)
        } else {
            (&data.recipe_train, &data.recipe_valid, &recipe_own, &cfg.domain)
        };
        let stg = stream(train, &generic_tok, None)?;
        let fc = &if cfg.equal_bytes {
            // as many steps as read the custom-tokenizer model's bytes of text
            let ratio = bytes_per_token(own) / bytes_per_token(&stg);
            FitConfig { steps: ((fc.steps as f64 * ratio).round() as usize).max(1), ..fc.clone() }
        } else {
            fc.clone()
        };
        let mut mc = model_for(generic_tok.vocab_size());
        if name.ends_with("-eq") {
            mc.ffn_dim = eq_ffn;
        }
        let m = Llama::new(&mc, fc.seed, &dev)?;
        let lf = |x: &Tensor, y: &Tensor| m.loss(x, y);
        let st = fit_on(name, m.vars(), fc, &stg, &lf)?;
        let mut r = result(name, &st, m.n_params(), m.n_params());
        r.notes.push(format!("ffn {}, {} steps", mc.ffn_dim, fc.steps));
        if cfg.equal_bytes {
            r.notes.push(format!(
                "equal bytes: {:.3} bytes/token (custom {:.3}) on the training text",
                bytes_per_token(&stg),
                bytes_per_token(own)
            ));
        }
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

/// Bytes of text per token of a training stream.
fn bytes_per_token(s: &TokenStream) -> f64 {
    s.n_bytes as f64 / s.tokens.len().max(1) as f64
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
