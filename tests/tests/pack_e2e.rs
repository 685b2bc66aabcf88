//! Trainer → converter → runtime for domain packs (issue #5): a tiny base and a
//! tiny expansion trained a few steps, the base imported with
//! `import-checkpoint`, the domain converted to a pack; the runtime's recipe
//! logits equal candle's, the story output is unchanged by loading the pack, and
//! the pack is refused over another base.

use candle_core::{DType, Device, Tensor};
use edgelm_convert::checkpoint::import_checkpoint;
use edgelm_convert::pack::domain_checkpoint_to_pack;
use edgelm_convert::{ImportOptions, StoreDType};
use edgelm_runtime::{AlignedBytes, Error as RtError, Model, SamplerConfig, Session, SessionOptions};
use edgelm_trainer::baselines::{fit, FitConfig};
use edgelm_trainer::checkpoint;
use edgelm_trainer::config::ModelConfig;
use edgelm_trainer::corpus::{split_documents, Batcher, Corpus, TokenStream};
use edgelm_trainer::expand::{Expanded, TokenizerMode};
use edgelm_trainer::model::Llama;
use edgelm_trainer::tokenizer::EdgeTokenizer;
use std::path::Path;

fn texts() -> (String, String) {
    let mut s = String::new();
    let mut r = String::new();
    let who = ["the cat", "a little dog", "the old owl", "my friend"];
    let food = ["flour", "butter", "sugar", "eggs", "milk"];
    for d in 0..60 {
        s.push_str(&format!("Once {} sat on the mat and sang. The end.\n<|endoftext|>\n", who[d % 4]));
        r.push_str(&format!(
            "Title: Cake {d}\nIngredients:\n- 2 cups {}\n- 1 cup {}\nSteps:\n1. Mix and bake.\n<|endoftext|>\n",
            food[d % 5],
            food[(d / 5) % 5]
        ));
    }
    (s, r)
}

fn docs(t: &str) -> Vec<String> {
    split_documents(t).into_iter().map(|(_, d)| d.to_string()).collect()
}

fn cfg(vocab: usize) -> ModelConfig {
    ModelConfig {
        dim: 64,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        ffn_dim: 96,
        vocab_size: vocab,
        max_seq: 32,
        ..Default::default()
    }
}

fn import(dir: &Path) -> AlignedBytes {
    AlignedBytes::from_slice(&import_checkpoint(dir, &ImportOptions::new(StoreDType::F32)).unwrap().bytes)
}

fn greedy(model: &Model<'_>, domain: &str, prompt: &str) -> String {
    let mut arena = vec![0u8; model.arena_bytes(32)];
    let opts = SessionOptions {
        max_seq: 32,
        sampler: SamplerConfig { temperature: 0.0, ..Default::default() },
        ..SessionOptions::new(32)
    };
    let mut s = Session::new(model, domain, &mut arena, opts).unwrap();
    s.feed_prompt(prompt).unwrap();
    let mut out = String::new();
    s.generate(16, &mut |t| out.push_str(t)).unwrap();
    out
}

fn runtime_logits(model: &Model<'_>, domain: &str, ids: &[u32]) -> Vec<Vec<f32>> {
    let mut arena = vec![0u8; model.arena_bytes(32)];
    let mut s = Session::new(model, domain, &mut arena, SessionOptions::new(32)).unwrap();
    ids.iter().map(|&t| s.step(t).unwrap().to_vec()).collect()
}

fn assert_close(rt: &[Vec<f32>], candle: &Tensor, what: &str) {
    let c = candle.get(0).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(rt.len(), c.len());
    let mut worst = 0f32;
    for (a, b) in rt.iter().zip(&c) {
        assert_eq!(a.len(), b.len(), "{what}: vocabulary");
        for (x, y) in a.iter().zip(b) {
            worst = worst.max((x - y).abs());
        }
    }
    assert!(worst < 1e-4, "{what}: runtime and candle logits differ by {worst}");
}

#[test]
fn a_trained_expansion_runs_on_device_as_a_pack() {
    let dir = tempfile::tempdir().unwrap();
    let (st, rt) = texts();
    let story_tok = EdgeTokenizer::train(docs(&st).iter(), 320, &["story".into(), "recipe".into()]).unwrap();
    let recipe_tok = EdgeTokenizer::train(docs(&rt).iter(), 300, &["recipe".into()]).unwrap();
    let dev = Device::Cpu;

    let base = Llama::new(&cfg(story_tok.vocab_size()), 11, &dev).unwrap();
    let base_dir = dir.path().join("base");
    let base_id = checkpoint::save_model(&base_dir, &base, &story_tok, &["story".into()], DType::F32).unwrap();
    let base_cfg = checkpoint::load_config(&base_dir).unwrap();
    let reference_story = base.forward(&Tensor::new(&[[0u32, 60, 61, 200, 7, 9]], &dev).unwrap()).unwrap();

    // Expansion with the recipe tokenizer, a few steps so every new tensor moves.
    let base2 = checkpoint::load(&base_dir, &dev).unwrap().model;
    let e =
        Expanded::new(base2, "recipe", TokenizerMode::PerDomain, vec![1, 2], Some(&story_tok), Some(&recipe_tok), None)
            .unwrap();
    let corpus = Corpus { path: dir.path().join("r.txt"), text: rt.clone() };
    let stream = TokenStream::build(&corpus, &recipe_tok, None).unwrap();
    let fc = FitConfig { steps: 5, batch: 4, seq: 16, lr: 1e-2, warmup: 1, ..FitConfig::default() };
    let mut b = Batcher::new(1, fc.batch, fc.seq);
    let lf = |x: &Tensor, y: &Tensor| e.loss(x, y);
    fit(e.vars(), &fc, &dev, &mut |_| b.next_batch(&stream), &lf, &mut |_, _| {}).unwrap();
    let dom_dir = dir.path().join("recipe");
    e.save(&dom_dir, &base_cfg, &recipe_tok).unwrap();

    // Convert both; the pack is bound to the base's model_id.
    let base_bytes = import(&base_dir);
    let pack = AlignedBytes::from_slice(&domain_checkpoint_to_pack(&dom_dir, &base_dir, StoreDType::F32).unwrap());
    let alone = Model::from_bytes(&base_bytes).unwrap();
    assert_eq!(alone.model_id(), base_id);
    let mut with = Model::from_bytes(&base_bytes).unwrap();
    with.add_pack_bytes(&pack).unwrap();

    // Recipe logits: runtime (pack over base) == candle (expanded model).
    let ids: Vec<u32> = std::iter::once(0).chain(recipe_tok.encode("Title: Cake 3\nIngredients:").unwrap()).collect();
    let want = e.forward(&Tensor::new(ids.as_slice(), &dev).unwrap().unsqueeze(0).unwrap()).unwrap();
    assert_close(&runtime_logits(&with, "recipe", &ids), &want, "recipe domain");
    // The runtime's recipe tokenizer agrees with the trainer's.
    let rt_tok = with.domain("recipe").unwrap().tokenizer;
    let mut buf = [0u32; 64];
    let n = rt_tok.encode("Title: Cake 3\nIngredients:", &mut buf).unwrap();
    assert_eq!(&buf[..n], &ids[1..]);

    // Story: unchanged by the pack, and equal to candle's base.
    assert_close(&runtime_logits(&with, "story", &[0, 60, 61, 200, 7, 9]), &reference_story, "story domain");
    assert_eq!(greedy(&alone, "story", "Once the cat"), greedy(&with, "story", "Once the cat"));
    assert_ne!(greedy(&with, "recipe", "Title:"), "");

    // Greedy decoding: the runtime picks the same tokens as candle, step by step.
    let mut rt_ids = ids.clone();
    let mut candle_ids = ids.clone();
    {
        let mut arena = vec![0u8; with.arena_bytes(32)];
        let mut s = Session::new(&with, "recipe", &mut arena, SessionOptions::new(32)).unwrap();
        let mut logits = Vec::new();
        for &t in &ids {
            logits = s.step(t).unwrap().to_vec();
        }
        for _ in 0..12 {
            let next = edgelm_runtime::sampler::argmax(&logits);
            rt_ids.push(next);
            logits = s.step(next).unwrap().to_vec();
        }
    }
    for _ in 0..12 {
        let l = e.forward(&Tensor::new(candle_ids.as_slice(), &dev).unwrap().unsqueeze(0).unwrap()).unwrap();
        let last: Vec<f32> = l.squeeze(0).unwrap().get(candle_ids.len() - 1).unwrap().to_vec1().unwrap();
        candle_ids.push(edgelm_runtime::sampler::argmax(&last));
    }
    assert_eq!(rt_ids, candle_ids, "greedy generations differ");

    // Another base: the converter refuses the pairing, the runtime refuses the pack.
    let other_dir = dir.path().join("other");
    let other = Llama::new(&cfg(story_tok.vocab_size()), 12, &dev).unwrap();
    checkpoint::save_model(&other_dir, &other, &story_tok, &["story".into()], DType::F32).unwrap();
    let err = domain_checkpoint_to_pack(&dom_dir, &other_dir, StoreDType::F32).unwrap_err();
    assert!(err.to_string().contains("trained on base"), "{err}");
    let other_bytes = import(&other_dir);
    let mut om = Model::from_bytes(&other_bytes).unwrap();
    assert!(matches!(om.add_pack_bytes(&pack), Err(RtError::PackBaseMismatch { .. })));

    // Shared tokenizer: the base's embedding and head, new blocks, the <|recipe|> tag.
    let tag = story_tok.tag_id("recipe").unwrap();
    let base3 = checkpoint::load(&base_dir, &dev).unwrap().model;
    let sh = Expanded::new(base3, "recipe", TokenizerMode::Shared, vec![0, 2], None, None, Some(tag)).unwrap();
    let stream = TokenStream::build(&corpus, &story_tok, Some(tag)).unwrap();
    let mut b = Batcher::new(2, fc.batch, fc.seq);
    let lf = |x: &Tensor, y: &Tensor| sh.loss(x, y);
    fit(sh.vars(), &fc, &dev, &mut |_| b.next_batch(&stream), &lf, &mut |_, _| {}).unwrap();
    let sh_dir = dir.path().join("recipe-shared");
    sh.save(&sh_dir, &base_cfg, &story_tok).unwrap();
    let sh_pack = AlignedBytes::from_slice(&domain_checkpoint_to_pack(&sh_dir, &base_dir, StoreDType::F32).unwrap());
    let mut shm = Model::from_bytes(&base_bytes).unwrap();
    shm.add_pack_bytes(&sh_pack).unwrap();
    assert_eq!(shm.domain("recipe").unwrap().tag_token, Some(tag));
    let ids: Vec<u32> = [0, tag].into_iter().chain(story_tok.encode("Title: Cake 3").unwrap()).collect();
    let want = sh.forward(&Tensor::new(ids.as_slice(), &dev).unwrap().unsqueeze(0).unwrap()).unwrap();
    assert_close(&runtime_logits(&shm, "recipe", &ids), &want, "shared-tokenizer recipe domain");
    assert_eq!(greedy(&alone, "story", "Once the cat"), greedy(&shm, "story", "Once the cat"));

    // q8 packs load too (the size that ships).
    let q8 = domain_checkpoint_to_pack(&dom_dir, &base_dir, StoreDType::Q8).unwrap();
    assert!(q8.len() < pack.len());
}

/// Writes a real pack until `edgelm-convert import-checkpoint DIR --base BASE` exists:
/// `EDGELM_PACK_DOMAIN=models/recipe-ckpt EDGELM_PACK_BASE=models/story-base
/// EDGELM_PACK_OUT=models/recipe.edgelm cargo test -p edgelm-tests --test pack_e2e -- --ignored`
#[test]
#[ignore]
fn write_pack_from_env() {
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("set {k}"));
    let (dom, base, out) = (var("EDGELM_PACK_DOMAIN"), var("EDGELM_PACK_BASE"), var("EDGELM_PACK_OUT"));
    let dtype: StoreDType = std::env::var("EDGELM_PACK_DTYPE").unwrap_or_else(|_| "q8".into()).parse().unwrap();
    let bytes = domain_checkpoint_to_pack(Path::new(&dom), Path::new(&base), dtype).unwrap();
    std::fs::write(&out, &bytes).unwrap();
    println!("wrote {out} ({} bytes)", bytes.len());
}
