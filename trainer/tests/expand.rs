//! Knowledge expansion (issue #5): identity at initialisation, a frozen base
//! (checked by hash), domain checkpoints bound to their base.

use candle_core::{DType, Device, Tensor};
use edgelm_trainer::baselines::{finetune_copy, fit, FitConfig, Lora};
use edgelm_trainer::checkpoint;
use edgelm_trainer::config::{HfConfig, ModelConfig};
use edgelm_trainer::corpus::{Batcher, Corpus, TokenStream};
use edgelm_trainer::expand::{default_positions, load_domain, Expanded, TokenizerMode, DOMAIN_EMBED};
use edgelm_trainer::model::Llama;
use edgelm_trainer::resumable::Trainee;
use edgelm_trainer::tokenizer::EdgeTokenizer;
use std::collections::HashMap;
use std::path::PathBuf;

fn story_text(n: usize) -> String {
    let s = ["the cat", "a little dog", "the old owl"];
    let v = ["sat on", "ran to", "looked at"];
    let o = ["the mat", "the green hill", "a tall tree"];
    let mut t = String::new();
    for d in 0..n {
        t.push_str(&format!("Once {} {} {}. The end.\n<|endoftext|>\n", s[d % 3], v[(d / 3) % 3], o[(d / 9) % 3]));
    }
    t
}

fn recipe_text(n: usize) -> String {
    let f = ["flour", "butter", "sugar", "eggs"];
    let mut t = String::new();
    for d in 0..n {
        t.push_str(&format!(
            "Title: Cake {d}\nIngredients:\n- 2 cups {}\n- 1 cup {}\nSteps:\n1. Mix well and bake.\n<|endoftext|>\n",
            f[d % 4],
            f[(d / 4) % 4]
        ));
    }
    t
}

fn docs(t: &str) -> Vec<String> {
    edgelm_trainer::corpus::split_documents(t).into_iter().map(|(_, d)| d.to_string()).collect()
}

fn tiny(vocab: usize) -> ModelConfig {
    ModelConfig {
        dim: 32,
        n_layers: 3,
        n_heads: 4,
        n_kv_heads: 2,
        ffn_dim: 48,
        vocab_size: vocab,
        max_seq: 24,
        ..Default::default()
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

struct Fixture {
    base: Llama,
    story_tok: EdgeTokenizer,
    recipe_tok: EdgeTokenizer,
}

impl Fixture {
    /// The base checkpoint in `base_dir` with a per-domain recipe expansion
    /// (two new blocks), and the base's config.
    fn recipe_over(&self, base_dir: &std::path::Path) -> (Expanded, HfConfig) {
        let ck = checkpoint::load(base_dir, &Device::Cpu).unwrap();
        let e = Expanded::new(
            ck.model,
            "recipe",
            TokenizerMode::PerDomain,
            default_positions(3, 2),
            Some(&self.story_tok),
            Some(&self.recipe_tok),
            None,
        )
        .unwrap();
        (e, ck.config)
    }
}

fn fixture(seed: u64) -> Fixture {
    let sd = docs(&story_text(40));
    let rd = docs(&recipe_text(40));
    // The story tokenizer also holds a <|recipe|> tag, for shared-tokenizer expansion.
    let story_tok = EdgeTokenizer::train(sd.iter(), 300, &["story".into(), "recipe".into()]).unwrap();
    let recipe_tok = EdgeTokenizer::train(rd.iter(), 290, &["recipe".into()]).unwrap();
    let base = Llama::new(&tiny(story_tok.vocab_size()), seed, &Device::Cpu).unwrap();
    Fixture { base, story_tok, recipe_tok }
}

fn ids(v: &[u32]) -> Tensor {
    Tensor::new(v, &Device::Cpu).unwrap().unsqueeze(0).unwrap()
}

#[test]
fn default_positions_spread_blocks() {
    assert_eq!(default_positions(6, 2), vec![3, 6]);
    assert_eq!(default_positions(4, 2), vec![2, 4]);
    assert_eq!(default_positions(6, 4), vec![2, 4, 6, 6]);
    assert_eq!(default_positions(3, 1), vec![3]);
}

#[test]
fn expanded_model_computes_the_base_at_init() {
    let fx = fixture(3);
    let x = ids(&[0, 5, 9, 77, 120, 3, 250, 11]);
    let want = fx.base.forward(&x).unwrap();
    let base2 = Llama::from_tensors(&fx.base.cfg, fx.base.tensors(), &Device::Cpu).unwrap();
    // Shared tokenizer: the very same logits, bit for bit, at every position choice.
    for positions in [vec![0], vec![1, 3], vec![2, 2, 3]] {
        let tag = fx.story_tok.tag_id("recipe");
        let base = Llama::from_tensors(&fx.base.cfg, fx.base.tensors(), &Device::Cpu).unwrap();
        let e = Expanded::new(base, "recipe", TokenizerMode::Shared, positions.clone(), None, None, tag).unwrap();
        let got = e.forward(&x).unwrap();
        assert_eq!(max_diff(&got, &want), 0.0, "positions {positions:?}");
        // Only the new blocks are trainable.
        assert!(e.vars().iter().all(|(n, _)| n.starts_with("domain.layers.")));
    }
    // Per-domain tokenizer: the base's blocks on the domain's embedding, exactly.
    let e = Expanded::new(
        base2,
        "recipe",
        TokenizerMode::PerDomain,
        vec![1, 3],
        Some(&fx.story_tok),
        Some(&fx.recipe_tok),
        None,
    )
    .unwrap();
    let mut t: HashMap<String, Tensor> = fx.base.tensors();
    t.insert("model.embed_tokens.weight".into(), e.embed.as_ref().unwrap().as_tensor().clone());
    let cfg = ModelConfig { vocab_size: fx.recipe_tok.vocab_size(), ..fx.base.cfg.clone() };
    let reference = Llama::from_tensors(&cfg, t, &Device::Cpu).unwrap();
    let xr = ids(&[0, 40, 41, 200, 280, 7]);
    assert_eq!(max_diff(&e.forward(&xr).unwrap(), &reference.forward(&xr).unwrap()), 0.0);
    // A domain token that is also a base token starts from the base's row.
    let s = "the";
    if let (Some(r), Some(b)) = (fx.recipe_tok.inner().token_to_id(s), fx.story_tok.inner().token_to_id(s)) {
        let er = e.embed.as_ref().unwrap().as_tensor().get(r as usize).unwrap();
        let br = fx.base.embed.as_tensor().get(b as usize).unwrap();
        assert_eq!(max_diff(&er, &br), 0.0);
    }
    // The check can fail: a new block that is not zero-initialised changes the output.
    let wo = &e.blocks[0].wo;
    wo.set(&(wo.as_tensor().ones_like().unwrap() * 0.05).unwrap()).unwrap();
    assert!(max_diff(&e.forward(&xr).unwrap(), &reference.forward(&xr).unwrap()) > 1e-4);
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("edgelm-expand-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn expansion_training_leaves_every_base_tensor_bit_identical() {
    let dir = tmpdir("frozen");
    let fx = fixture(5);
    let base_dir = dir.join("base");
    let base_id = checkpoint::save_model(&base_dir, &fx.base, &fx.story_tok, &["story".into()], DType::F32).unwrap();
    let per_tensor = |m: &Llama| -> HashMap<String, String> {
        m.tensors()
            .into_iter()
            .map(|(k, v)| {
                let one: HashMap<String, Tensor> = [(k.clone(), v)].into_iter().collect();
                (k, checkpoint::model_id(&one).unwrap())
            })
            .collect()
    };
    let before = per_tensor(&fx.base);

    let (e, base_cfg) = fx.recipe_over(&base_dir);
    let init_new = checkpoint::model_id(&e.tensors()).unwrap();
    let corpus = Corpus { path: dir.join("recipes.txt"), text: recipe_text(40) };
    let stream = TokenStream::build(&corpus, &fx.recipe_tok, None).unwrap();
    let fc = FitConfig { steps: 6, batch: 4, seq: 16, lr: 1e-2, warmup: 1, ..FitConfig::default() };
    let mut b = Batcher::new(1, fc.batch, fc.seq);
    let lf = |x: &Tensor, y: &Tensor| e.loss(x, y);
    let st = fit(e.vars(), &fc, &Device::Cpu, &mut |_| b.next_batch(&stream), &lf, &mut |_, _| {}).unwrap();
    assert!(st.losses.last().unwrap().1 < st.losses[0].1, "training did not reduce the loss: {:?}", st.losses);

    // Every base tensor is bit-identical (by hash); the new tensors did change.
    assert_eq!(per_tensor(&e.base), before);
    assert_eq!(checkpoint::model_id(&e.base.tensors()).unwrap(), base_id);
    assert_ne!(checkpoint::model_id(&e.tensors()).unwrap(), init_new);

    // The domain checkpoint records the base it was trained on and reloads over it.
    let dom = dir.join("recipe");
    let dom_id = e.save(&dom, &base_cfg, &fx.recipe_tok).unwrap();
    let cfg = checkpoint::load_config(&dom).unwrap();
    assert_eq!(cfg.edgelm.kind, edgelm_checkpoint::Kind::Domain);
    assert_eq!(cfg.edgelm.base_model_id.as_deref(), Some(base_id.as_str()));
    assert_eq!(cfg.edgelm.model_id.as_deref(), Some(dom_id.as_str()));
    let st = checkpoint::load_tensors(&dom.join(checkpoint::MODEL_FILE), &Device::Cpu).unwrap();
    assert!(st.contains_key(DOMAIN_EMBED) && st.keys().all(|k| k.starts_with("domain.")), "{:?}", st.keys());
    let back = load_domain(&dom, &base_dir, &Device::Cpu).unwrap();
    let x = ids(&[0, 40, 41, 200, 280, 7]);
    assert_eq!(max_diff(&back.expanded.forward(&x).unwrap(), &e.forward(&x).unwrap()), 0.0);

    // ... and is refused over another base.
    let other = dir.join("other");
    let ob = Llama::new(&fx.base.cfg, 99, &Device::Cpu).unwrap();
    checkpoint::save_model(&other, &ob, &fx.story_tok, &["story".into()], DType::F32).unwrap();
    let err = load_domain(&dom, &other, &Device::Cpu).err().expect("a domain over another base must be refused");
    assert!(err.to_string().contains("trained on base"), "{err}");

    // The hash check can fail: full fine-tuning (and LoRA merged) change the base's weights.
    let ft = finetune_copy(&fx.base).unwrap();
    let stream_b = TokenStream::build(&corpus, &fx.story_tok, None).unwrap();
    let mut b2 = Batcher::new(2, fc.batch, fc.seq);
    let lf2 = |x: &Tensor, y: &Tensor| ft.loss(x, y);
    fit(ft.vars(), &fc, &Device::Cpu, &mut |_| b2.next_batch(&stream_b), &lf2, &mut |_, _| {}).unwrap();
    assert_ne!(per_tensor(&ft), before);
    assert_eq!(per_tensor(&fx.base), before, "fine-tuning a copy must not touch the original");
    let lo = Lora::new(Llama::from_tensors(&fx.base.cfg, fx.base.tensors(), &Device::Cpu).unwrap(), 2, 1).unwrap();
    let mut b3 = Batcher::new(3, fc.batch, fc.seq);
    let lf3 = |x: &Tensor, y: &Tensor| lo.loss(x, y);
    fit(lo.vars(), &fc, &Device::Cpu, &mut |_| b3.next_batch(&stream_b), &lf3, &mut |_, _| {}).unwrap();
    assert_eq!(per_tensor(&lo.base), before, "LoRA trains adapters only");
    assert_ne!(per_tensor(&lo.merge().unwrap()), before);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn untied_base_gets_its_own_domain_head() {
    let fx = fixture(8);
    let cfg = ModelConfig { tie_embeddings: false, ..fx.base.cfg.clone() };
    let base = Llama::new(&cfg, 8, &Device::Cpu).unwrap();
    let e = Expanded::new(
        Llama::from_tensors(&cfg, base.tensors(), &Device::Cpu).unwrap(),
        "recipe",
        TokenizerMode::PerDomain,
        vec![2],
        Some(&fx.story_tok),
        Some(&fx.recipe_tok),
        None,
    )
    .unwrap();
    let names: Vec<String> = e.vars().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"domain.lm_head.weight".to_string()), "{names:?}");
    let mut t = base.tensors();
    t.insert("model.embed_tokens.weight".into(), e.embed.as_ref().unwrap().as_tensor().clone());
    t.insert("lm_head.weight".into(), e.lm_head.as_ref().unwrap().as_tensor().clone());
    let rc = ModelConfig { vocab_size: fx.recipe_tok.vocab_size(), ..cfg };
    let reference = Llama::from_tensors(&rc, t, &Device::Cpu).unwrap();
    let x = ids(&[0, 40, 41, 200]);
    assert_eq!(max_diff(&e.forward(&x).unwrap(), &reference.forward(&x).unwrap()), 0.0);
}

/// An expansion stopped after a checkpoint and resumed ends with exactly the
/// weights, loss log and optimiser state of an uninterrupted run; a torn
/// checkpoint and other settings are refused.
#[test]
fn expansion_resume_matches_uninterrupted_run() {
    use edgelm_trainer::expand::train::{self as expand_train, ExpandJob};
    let dir = tmpdir("resume");
    let fx = fixture(7);
    let base_dir = dir.join("base");
    checkpoint::save_model(&base_dir, &fx.base, &fx.story_tok, &["story".into()], DType::F32).unwrap();
    let corpus = Corpus { path: dir.join("recipes.txt"), text: recipe_text(40) };
    let stream = TokenStream::build(&corpus, &fx.recipe_tok, None).unwrap();
    let fc = FitConfig { steps: 8, batch: 4, seq: 16, lr: 1e-2, warmup: 2, ..FitConfig::default() };
    let expanded = || fx.recipe_over(&base_dir);
    let (e, base_cfg) = expanded();
    let job = |out: &str, resume: bool, stop_after: Option<usize>| ExpandJob {
        base_config: &base_cfg,
        tokenizer: &fx.recipe_tok,
        stream: &stream,
        fit: fc.clone(),
        out: dir.join(out),
        checkpoint_every: 3,
        resume,
        stop_after,
    };
    let whole = expand_train::run(&e, &job("whole", false, None), &mut |_, _| {}).unwrap();
    assert_eq!(whole.final_step, 8);

    // Killed after step 5: the last checkpoint is step 3's; the resumed run redoes 4 and 5.
    let (e1, _) = expanded();
    let part = expand_train::run(&e1, &job("resumed", false, Some(5)), &mut |_, _| {}).unwrap();
    assert_eq!(part.final_step, 5);
    let (e2, _) = expanded();
    let mut seen = Vec::new();
    let rest = expand_train::run(&e2, &job("resumed", true, None), &mut |s, _| seen.push(s)).unwrap();
    assert_eq!(seen.first(), Some(&4), "resumes after the step-3 checkpoint");
    assert_eq!(rest.final_step, 8);
    assert_eq!(rest.model_id, whole.model_id, "resumed weights differ from the uninterrupted run's");
    assert_eq!(checkpoint::model_id(&e2.tensors()).unwrap(), checkpoint::model_id(&e.tensors()).unwrap());
    let log = |d: &str| std::fs::read_to_string(dir.join(d).join(expand_train::LOG_FILE)).unwrap();
    assert_eq!(log("resumed"), log("whole"));
    let moments = |d: &str| checkpoint::read_resume(&dir.join(d), &Device::Cpu).unwrap().moments;
    assert_eq!(checkpoint::model_id(&moments("resumed")).unwrap(), checkpoint::model_id(&moments("whole")).unwrap());

    // Other settings are refused rather than silently mixed.
    let (e3, _) = expanded();
    let mut other = job("resumed", true, None);
    other.fit.lr = 5e-3;
    let err = expand_train::run(&e3, &other, &mut |_, _| {}).expect_err("other settings must be refused");
    assert!(err.to_string().contains("other settings"), "{err}");

    // A longer run may follow a finished one (the schedule is stretched); fewer
    // steps than already done is refused.
    let (e6, _) = expanded();
    let mut longer = job("resumed", true, None);
    longer.fit.steps = 10;
    let mut seen = Vec::new();
    let more = expand_train::run(&e6, &longer, &mut |s, _| seen.push(s)).unwrap();
    assert_eq!((seen.first(), more.final_step), (Some(&9), 10), "extends after the last step");
    assert_ne!(more.model_id, whole.model_id);
    let (e7, _) = expanded();
    let mut shorter = job("resumed", true, None);
    shorter.fit.steps = 9;
    let err = expand_train::run(&e7, &shorter, &mut |_, _| {}).expect_err("fewer steps than done");
    assert!(err.to_string().contains("may grow"), "{err}");

    // A damaged resume record is refused.
    let (e4, _) = expanded();
    let rec = dir.join("resumed").join(checkpoint::STATE_TENSORS_FILE);
    let bytes = std::fs::read(&rec).unwrap();
    std::fs::write(&rec, &bytes[..bytes.len() - 9]).unwrap();
    let err = expand_train::run(&e4, &job("resumed", true, None), &mut |_, _| {}).expect_err("damaged record");
    assert!(err.to_string().contains("without resuming") || err.to_string().contains("without --resume"), "{err}");

    // Nothing to resume is a clear error.
    let (e5, _) = expanded();
    let err = expand_train::run(&e5, &job("fresh", true, None), &mut |_, _| {}).expect_err("nothing to resume");
    assert!(err.to_string().contains("nothing to resume"), "{err}");
}

/// The baselines resume exactly too: finetune and LoRA over a base, and a joint
/// model drawing from two corpora (whose sampler state has three RNGs), each
/// stopped after step 5 and resumed, end with the uninterrupted run's weights
/// and log; LoRA's checkpoint is the merged model; another base is refused.
#[test]
fn baseline_resume_matches_uninterrupted_run() {
    use edgelm_trainer::baselines::{BaselineModel, BaselineTrainee};
    use edgelm_trainer::resumable::{self, RunJob, Sampler, LOG_FILE};
    let dir = tmpdir("baseline-resume");
    let fx = fixture(11);
    let recipes = Corpus { path: dir.join("recipes.txt"), text: recipe_text(40) };
    let stories = Corpus { path: dir.join("stories.txt"), text: story_text(40) };
    let tag = |d: &str| fx.story_tok.tag_id(d);
    let rs = TokenStream::build(&recipes, &fx.story_tok, None).unwrap();
    let joint_streams = [
        TokenStream::build(&stories, &fx.story_tok, tag("story")).unwrap(),
        TokenStream::build(&recipes, &fx.story_tok, tag("recipe")).unwrap(),
    ];
    let fc = FitConfig { steps: 8, batch: 4, seq: 16, lr: 1e-2, warmup: 2, ..FitConfig::default() };
    let domains = vec!["recipe".to_string()];
    let base_id = Some("sha256:base".to_string());
    let model = |method: &str| match method {
        "finetune" => BaselineModel::Full(finetune_copy(&fx.base).unwrap()),
        "lora" => BaselineModel::Lora(Box::new(
            Lora::new(Llama::from_tensors(&fx.base.cfg, fx.base.tensors(), &Device::Cpu).unwrap(), 2, 3).unwrap(),
        )),
        _ => BaselineModel::Full(Llama::new(&tiny(fx.story_tok.vocab_size()), 5, &Device::Cpu).unwrap()),
    };
    for method in ["finetune", "lora", "joint"] {
        let streams: Vec<&TokenStream> = if method == "joint" { joint_streams.iter().collect() } else { vec![&rs] };
        let job = |out: &str, resume: bool, stop_after: Option<usize>| RunJob {
            fit: fc.clone(),
            out: dir.join(method).join(out),
            checkpoint_every: 3,
            resume,
            stop_after,
            base_model_id: if method == "joint" { None } else { base_id.clone() },
        };
        let go = |job: &RunJob, seen: &mut Vec<usize>| {
            let t = BaselineTrainee { model: model(method), tokenizer: &fx.story_tok, domains: &domains };
            let mut s = Sampler::new(streams.clone(), &fc).unwrap();
            let r = resumable::run(&t, &mut s, job, &mut |st, _| seen.push(st));
            (r, checkpoint::model_id(&t.vars().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect()).unwrap())
        };
        let (whole, whole_vars) = go(&job("whole", false, None), &mut Vec::new());
        let whole = whole.unwrap();
        assert_eq!(whole.final_step, 8, "{method}");
        assert_eq!(go(&job("resumed", false, Some(5)), &mut Vec::new()).0.unwrap().final_step, 5, "{method}");
        let mut seen = Vec::new();
        let (rest, rest_vars) = go(&job("resumed", true, None), &mut seen);
        let rest = rest.unwrap();
        assert_eq!(seen.first(), Some(&4), "{method}: resumes after the step-3 checkpoint");
        assert_eq!(rest.model_id, whole.model_id, "{method}: resumed weights differ from the uninterrupted run's");
        assert_eq!(rest_vars, whole_vars, "{method}");
        let log = |d: &str| std::fs::read_to_string(dir.join(method).join(d).join(LOG_FILE)).unwrap();
        assert_eq!(log("resumed"), log("whole"), "{method}");
        // The saved checkpoint is a plain model the other tools load.
        let ck = checkpoint::load(&dir.join(method).join("whole"), &Device::Cpu).unwrap();
        assert_eq!(ck.config.edgelm.model_id, whole.model_id, "{method}");
        assert_ne!(
            checkpoint::model_id(&ck.model.tensors()).unwrap(),
            checkpoint::model_id(&fx.base.tensors()).unwrap()
        );
        if method == "joint" {
            // Drawing the corpora with other weights is another run: refused.
            let t = BaselineTrainee { model: model(method), tokenizer: &fx.story_tok, domains: &domains };
            let mut s = Sampler::new(streams.clone(), &fc).unwrap().with_weights(&[1.0, 2.0]).unwrap();
            let err = resumable::run(&t, &mut s, &job("resumed", true, None), &mut |_, _| {})
                .expect_err("other stream weights must be refused");
            assert!(err.to_string().contains("weights"), "{err}");
        } else {
            let mut other = job("resumed", true, None);
            other.base_model_id = Some("sha256:other".into());
            let err = go(&other, &mut Vec::new()).0.expect_err("another base must be refused");
            assert!(err.to_string().contains("over base"), "{method}: {err}");
        }
    }
}
