//! Corpus errors, tokenizer round trip on files, checkpoint save/load.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use edgelm_trainer::checkpoint;
use edgelm_trainer::corpus::{Batcher, Corpus, Limits, TokenStream};
use edgelm_trainer::model::Llama;
use edgelm_trainer::tokenizer::EdgeTokenizer;
use edgelm_trainer::Error;

#[test]
fn corpus_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let e = Corpus::load(&dir.path().join("nope.txt"), Limits::default()).err().unwrap();
    assert!(e.to_string().contains("not found"), "{e}");
    let p = write(dir.path(), "empty.txt", "\n<|endoftext|>\n");
    let e = Corpus::load(&p, Limits::default()).err().unwrap();
    assert!(e.to_string().contains("no documents"), "{e}");
    let p = write(dir.path(), "long.txt", "short\n<|endoftext|>\nline\n\nthis one is longer\n<|endoftext|>\n");
    let e = Corpus::load(&p, Limits { max_doc_bytes: 10 }).err().unwrap();
    assert!(matches!(e, Error::Corpus { .. }));
    assert!(e.to_string().contains("line 3"), "{e}");
    let p = write(dir.path(), "bin.txt", "");
    std::fs::write(&p, [0xffu8, 0xfe, 0x00]).unwrap();
    assert!(Corpus::load(&p, Limits::default()).err().unwrap().to_string().contains("UTF-8"));
}

#[test]
fn tokenizer_file_round_trip_and_cache() {
    let dir = tempfile::tempdir().unwrap();
    let text = story_text(50, 2) + "Ünïcödé ½ tab\there\n<|endoftext|>\n";
    let p = write(dir.path(), "stories/train.txt", &text);
    let c = Corpus::load(&p, Limits::default()).unwrap();
    let tok =
        EdgeTokenizer::train(c.documents().into_iter().map(|x| x.1), 400, &["story".into(), "recipe".into()]).unwrap();
    let tp = dir.path().join("tok.json");
    tok.save(&tp).unwrap();
    let tok2 = EdgeTokenizer::load(&tp).unwrap();
    assert_eq!(tok2.vocab_size(), tok.vocab_size());
    assert!(tok.vocab_size() > 300 && tok.vocab_size() <= 400);
    assert_eq!(tok2.domains(), vec!["story".to_string(), "recipe".to_string()]);
    assert_eq!((tok2.tag_id("story"), tok2.tag_id("recipe")), (Some(1), Some(2)));
    for (_, d) in c.documents() {
        assert_eq!(tok2.decode(&tok2.encode(d).unwrap()).unwrap(), d);
    }
    // The cached stream equals a fresh build and is reused.
    let cache = dir.path().join("cache");
    let s1 = TokenStream::cached(&c, &tok2, Some(1), &cache).unwrap();
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);
    let s2 = TokenStream::cached(&c, &tok2, Some(1), &cache).unwrap();
    assert_eq!(s1, s2);
    assert_eq!(s1, TokenStream::build(&c, &tok2, Some(1)).unwrap());
    assert_eq!(s1.n_docs, 51);
    assert_eq!(&s1.tokens[..2], &[0, 1]);
    // Batches are deterministic for a seed.
    let mut a = Batcher::new(3, 4, 16);
    let mut b = Batcher::new(3, 4, 16);
    assert_eq!(a.next_batch(&s1).unwrap(), b.next_batch(&s1).unwrap());
    let (x, y) = a.next_batch(&s1).unwrap();
    assert_eq!(&x[1..16], &y[..15], "targets are inputs shifted by one");
    // Missing tokenizer file: the message says how to make one.
    let e = EdgeTokenizer::load(&dir.path().join("none.json")).err().unwrap();
    assert!(e.to_string().contains("edgelm-train tokenizer"), "{e}");
}

#[test]
fn checkpoint_round_trip_f32_and_half() {
    let dir = tempfile::tempdir().unwrap();
    let tok = EdgeTokenizer::train(["some words here, some more words"].iter(), 270, &["story".into()]).unwrap();
    let cfg = tiny_model(tok.vocab_size());
    let m = Llama::new(&cfg, 5, &Device::Cpu).unwrap();
    let ids = Tensor::new(&[[0u32, 5, 9, 100, 3]], &Device::Cpu).unwrap();
    let want = m.forward(&ids).unwrap();
    for (dt, tol) in [(DType::F32, 0.0), (DType::F16, 1e-2), (DType::BF16, 5e-2)] {
        let out = dir.path().join(format!("{dt:?}"));
        let id = checkpoint::save_model(&out, &m, &tok, &["story".into()], dt).unwrap();
        let ck = checkpoint::load(&out, &Device::Cpu).unwrap();
        assert_eq!(ck.model.cfg, cfg);
        assert_eq!(ck.config.edgelm.model_id.as_deref(), Some(id.as_str()));
        assert_eq!(checkpoint::model_id(&ck.model.tensors()).unwrap(), id);
        let got = ck.model.forward(&ids).unwrap();
        let d = (got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d <= tol, "{dt:?}: {d}");
    }
    // config.json follows docs/CHECKPOINT.md.
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("F32/config.json")).unwrap()).unwrap();
    assert_eq!(j["architectures"][0], "LlamaForCausalLM");
    assert_eq!(j["num_key_value_heads"], 2);
    assert_eq!(j["tie_word_embeddings"], true);
    assert_eq!(j["edgelm"]["kind"], "base");
    assert_eq!(j["edgelm"]["domains"][0], "story");
    assert!(j["edgelm"]["model_id"].as_str().unwrap().starts_with("sha256:"));
    // A bad checkpoint is an error, not a panic.
    std::fs::write(dir.path().join("F32/model.safetensors"), b"garbage").unwrap();
    assert!(checkpoint::load(&dir.path().join("F32"), &Device::Cpu).is_err());
    assert!(checkpoint::load(&dir.path().join("missing"), &Device::Cpu).is_err());
}
