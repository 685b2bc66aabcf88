//! Training behaviour: learning, exact resume, determinism (tiny configs, seconds).

mod common;

use candle_core::Device;
use common::*;
use edgelm_trainer::corpus::{Corpus, Limits, TokenStream};
use edgelm_trainer::tokenizer::EdgeTokenizer;
use edgelm_trainer::train::{self, TrainJob};
use edgelm_trainer::{checkpoint, Error};

struct Fixture {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    tok: EdgeTokenizer,
    stream: TokenStream,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let p = write(&root, "stories/train.txt", &story_text(200, 1));
    let corpus = Corpus::load(&p, Limits::default()).unwrap();
    let docs = corpus.documents().into_iter().map(|(_, d)| d);
    let tok = EdgeTokenizer::train(docs, 320, &["story".into()]).unwrap();
    let stream = TokenStream::cached(&corpus, &tok, None, &root.join("cache")).unwrap();
    Fixture { _dir: dir, root, tok, stream }
}

fn job<'a>(f: &'a Fixture, out: &str, steps: usize) -> TrainJob<'a> {
    TrainJob {
        model: tiny_model(f.tok.vocab_size()),
        train: tiny_train(steps),
        out: f.root.join(out),
        tokenizer: &f.tok,
        domains: vec!["story".into()],
        train_stream: &f.stream,
        valid_stream: None,
        device: Device::Cpu,
        resume: false,
        progress: false,
        stop_after: None,
    }
}

/// Unigram entropy (nats/token) of a token stream.
fn unigram_entropy(tokens: &[u16]) -> f64 {
    let mut counts = std::collections::HashMap::new();
    for t in tokens {
        *counts.entry(*t).or_insert(0usize) += 1;
    }
    let n = tokens.len() as f64;
    counts.values().map(|&c| -(c as f64 / n) * (c as f64 / n).ln()).sum()
}

#[test]
fn loss_falls_well_below_unigram_entropy() {
    let f = fixture();
    let h = unigram_entropy(&f.stream.tokens);
    let r = train::run(&job(&f, "learn", 200)).unwrap();
    let last: f64 = r.rows[r.rows.len() - 10..].iter().map(|r| r.loss).sum::<f64>() / 10.0;
    eprintln!("unigram entropy {h:.3} nats, first loss {:.3}, last-10 mean {last:.3}", r.rows[0].loss);
    assert!(r.rows[0].loss > h, "starts near uniform");
    assert!(last < 0.6 * h, "loss {last} not well below unigram entropy {h}");
    // The run left a loadable checkpoint, a CSV log and a PNG.
    let out = f.root.join("learn");
    for file in ["model.safetensors", "config.json", "tokenizer.json", "train_state.json", "train_log.csv", "loss.png"]
    {
        assert!(out.join(file).exists(), "{file} missing");
    }
    let ck = checkpoint::load(&out, &Device::Cpu).unwrap();
    assert_eq!(ck.config.edgelm.model_id, r.model_id);
    assert_eq!(train::read_log(&out.join("train_log.csv")).len(), 200);
}

#[test]
fn resume_matches_uninterrupted_run() {
    let f = fixture();
    let full = train::run(&job(&f, "full", 20)).unwrap();

    // "Kill" after step 12: the last checkpoint is step 10, and the CSV has rows 11-12.
    let mut first = job(&f, "resumed", 20);
    first.stop_after = Some(12);
    let part = train::run(&first).unwrap();
    assert_eq!(part.final_step, 12);
    let mut second = job(&f, "resumed", 20);
    second.resume = true;
    let rest = train::run(&second).unwrap();
    assert_eq!(rest.rows[0].step, 11, "resumes from the step-10 checkpoint");

    let a: Vec<(usize, f64)> = full.rows.iter().map(|r| (r.step, r.loss)).collect();
    let log = train::read_log(&f.root.join("resumed/train_log.csv"));
    let b: Vec<(usize, f64)> = log.iter().map(|r| (r.step, r.loss)).collect();
    assert_eq!(a.len(), 20);
    assert_eq!(a, b, "the resumed loss curve differs from the uninterrupted one");
    assert_eq!(full.model_id, rest.model_id, "final weights differ");
}

#[test]
fn kill_between_record_and_model_files_resumes_exactly() {
    let f = fixture();
    let job2 = |out: &str, stop_after: Option<usize>, resume: bool| {
        let mut j = job(&f, out, 10);
        j.train.checkpoint_every = 2;
        j.stop_after = stop_after;
        j.resume = resume;
        j
    };
    // "Killed" after step 5: the record is step 4's.
    train::run(&job2("torn", Some(5), false)).unwrap();
    // A kill between the record and the model files leaves the model files one
    // checkpoint behind (here: step 2's); resuming continues from the record, exactly.
    let model = f.root.join("torn/model.safetensors");
    let newer = std::fs::read(&model).unwrap();
    train::run(&job2("early", Some(2), false)).unwrap();
    std::fs::copy(f.root.join("early/model.safetensors"), &model).unwrap();
    let resumed = train::run(&job2("torn", None, true)).unwrap();
    assert_eq!(resumed.rows[0].step, 5, "resumes from the record's step 4");
    assert_eq!(resumed.model_id, train::run(&job2("whole", None, false)).unwrap().model_id);
    assert_ne!(std::fs::read(&model).unwrap(), newer, "the model files were rewritten");

    // A damaged record is refused with a message, not used.
    let rec = f.root.join("torn/train_state.safetensors");
    let bytes = std::fs::read(&rec).unwrap();
    std::fs::write(&rec, &bytes[..bytes.len() / 2]).unwrap();
    let e = train::run(&job2("torn", None, true)).err().unwrap();
    assert!(matches!(e, Error::Checkpoint { .. }), "{e}");
    assert!(e.to_string().contains("restart without --resume"), "{e}");
}

#[test]
fn training_is_deterministic_for_a_seed() {
    let f = fixture();
    let a = train::run(&job(&f, "a", 8)).unwrap();
    let b = train::run(&job(&f, "b", 8)).unwrap();
    let la: Vec<f64> = a.rows.iter().map(|r| r.loss).collect();
    let lb: Vec<f64> = b.rows.iter().map(|r| r.loss).collect();
    assert_eq!(la, lb);
    assert_eq!(a.model_id, b.model_id);
    let mut c = job(&f, "c", 8);
    c.train.seed = 8;
    let c = train::run(&c).unwrap();
    assert_ne!(a.model_id, c.model_id);
}

#[test]
fn gradient_accumulation_matches_a_big_batch() {
    // batch 8 x accum 1 vs batch 4 x accum 2 see different windows, so compare the
    // maths instead: accum 2 with the same total loss scale must train finitely and
    // log one row per optimiser step.
    let f = fixture();
    let mut j = job(&f, "accum", 6);
    j.train.batch = 4;
    j.train.accum = 2;
    let r = train::run(&j).unwrap();
    assert_eq!(r.rows.len(), 6);
    assert_eq!(r.rows[5].tokens_seen, 6 * 8 * 32);
    assert!(r.rows.iter().all(|r| r.loss.is_finite()));
}
