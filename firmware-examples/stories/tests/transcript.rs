//! The transcript contract: the flags on a `run:` line, given to the runtime
//! the way `edgelm generate` gives them, reproduce the text up to `done:`.

use std::cell::Cell;

use edgelm_runtime::format::DType;
use edgelm_runtime::{AlignedBytes, Error, KvType, Model, SamplerConfig, Session, SessionOptions};
use edgelm_stories::{tell, Clock, Embedded, Failure, Image, Run, MARK};
use edgelm_testkit::synthetic::{synthetic_model, SyntheticSpec};

/// Advances 1000 ticks per read at 1000 Hz: one second per read.
struct StepClock(Cell<u64>);

impl Clock for StepClock {
    fn ticks(&self) -> u64 {
        self.0.set(self.0.get() + 1000);
        self.0.get()
    }
    fn ticks_per_second(&self) -> u64 {
        1000
    }
    fn name(&self) -> &'static str {
        "test clock"
    }
}

fn tiny_model() -> &'static [u8] {
    let bytes = synthetic_model(&SyntheticSpec::tiny(DType::Q8)).expect("synthetic model");
    let aligned: &'static AlignedBytes = Box::leak(Box::new(AlignedBytes::from(bytes)));
    aligned
}

const RUNS: &[Run] = &[
    Run {
        domain: "story",
        prompt: "Once upon a time",
        max_tokens: 24,
        seed: 7,
        temperature: 0.8,
        top_k: 40,
        top_p: 0.9,
        repeat_penalty: 1.1,
    },
    Run {
        domain: "story",
        prompt: "",
        max_tokens: 10,
        seed: 3,
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        repeat_penalty: 1.0,
    },
];

fn image(runs: &'static [Run], max_seq: usize) -> Image {
    Image {
        board: "test",
        base: Embedded { path: "tiny.edgelm", bytes: tiny_model() },
        packs: &[],
        runs,
        max_seq,
        kv: KvType::F32,
    }
}

fn flag<T: std::str::FromStr>(line: &str, name: &str) -> T {
    let mut words = line.split(' ');
    words.position(|w| w == name).unwrap_or_else(|| panic!("{name} missing from {line:?}"));
    words.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("bad value of {name} in {line:?}"))
}

/// What `edgelm generate` prints for these flags: the prompt, the text, a newline.
fn generate_like_the_cli(model: &Model<'_>, run_line: &str) -> String {
    let prompt = run_line.split_once(" --prompt ").map_or("", |(_, p)| p);
    let max_seq: usize = flag(run_line, "--max-seq");
    let kv: String = flag(run_line, "--kv");
    let kv = KvType::from_name(&kv).unwrap_or_else(|| panic!("bad --kv in {run_line:?}"));
    let opts = SessionOptions {
        max_seq,
        kv,
        sampler: SamplerConfig {
            temperature: flag(run_line, "--temperature"),
            top_k: flag(run_line, "--top-k"),
            top_p: flag(run_line, "--top-p"),
            repeat_penalty: flag(run_line, "--repeat-penalty"),
            repeat_window: 64,
            seed: flag(run_line, "--seed"),
        },
        ..SessionOptions::new(max_seq)
    };
    let domain: String = flag(run_line, "--domain");
    let mut arena = vec![0u8; model.arena_bytes_for(&opts)];
    let mut session = Session::new(model, &domain, &mut arena, opts).expect("session");
    session.feed_prompt(prompt).expect("prompt");
    let mut out = String::from(prompt);
    session.generate(flag(run_line, "--max-tokens"), &mut |t| out.push_str(t)).expect("generate");
    out.push('\n');
    out
}

#[test]
fn run_flags_reproduce_the_text_between_run_and_done() {
    let img = image(RUNS, 64);
    let model = Model::from_bytes(img.base.bytes).unwrap();
    let mut arena = vec![0u8; model.arena_bytes(img.max_seq)];
    let mut out = String::new();
    let speed = tell(&mut out, &StepClock(Cell::new(0)), &img, &mut arena, None).expect("tell");
    assert!(out.contains(" --max-seq 64 --kv f32 "), "{out}");

    assert!(out.starts_with(&format!("{MARK} image: test (arena {} bytes, max-seq 64)\n", arena.len())), "{out}");
    assert!(out.contains(&format!("\n{MARK} models: --model tiny.edgelm\n")), "{out}");
    let mut rest = out.as_str();
    let mut runs = 0;
    while let Some(at) = rest.find(&format!("{MARK} run: ")) {
        let after = &rest[at + MARK.len() + " run: ".len()..];
        let (run_line, body) = after.split_once('\n').unwrap();
        let end = body.find(&format!("{MARK} done: ")).expect("done line");
        assert_eq!(&body[..end], generate_like_the_cli(&model, run_line), "run {runs}: {run_line}");
        let done = body[end..].lines().next().unwrap();
        assert!(done.contains(" tokens in 1.000 s, "), "{done}");
        rest = &body[end..];
        runs += 1;
    }
    assert_eq!(runs, RUNS.len());
    // one clock read before and after each run: one second each
    assert_eq!(speed.ticks, 1000 * RUNS.len() as u64);
    let tenths = speed.tokens * 10 / 2;
    let line = format!(
        "{MARK} speed: {} tokens in 2.000 s = {}.{} tokens/s (test clock at 1000 Hz; under QEMU this is emulated, not a device speed)\n",
        speed.tokens,
        tenths / 10,
        tenths % 10
    );
    assert!(speed.tokens > 0 && out.ends_with(&line), "{out}");
}

#[test]
fn refusals_are_errors_not_panics() {
    const UNKNOWN: &[Run] = &[Run { domain: "poems", ..RUNS[0] }];
    let img = image(UNKNOWN, 64);
    let model = Model::from_bytes(img.base.bytes).unwrap();
    let mut arena = vec![0u8; model.arena_bytes_for(&SessionOptions { block: 0, ..SessionOptions::new(64) })];
    let e = tell(&mut String::new(), &StepClock(Cell::new(0)), &img, &mut arena, None).unwrap_err();
    assert!(matches!(e, Failure::Runtime(Error::UnknownDomain(_))), "{e}");

    let img = image(RUNS, 64);
    let mut small = vec![0u8; model.arena_bytes_for(&SessionOptions { block: 0, ..SessionOptions::new(64) }) - 1];
    let e = tell(&mut String::new(), &StepClock(Cell::new(0)), &img, &mut small, None).unwrap_err();
    assert!(matches!(e, Failure::Runtime(Error::ArenaTooSmall { .. })), "{e}");

    let bad = Image { base: Embedded { path: "x", bytes: &[0u8; 64] }, ..img };
    let e = tell(&mut String::new(), &StepClock(Cell::new(0)), &bad, &mut arena, None).unwrap_err();
    assert!(matches!(e, Failure::Runtime(_)), "{e}");
}

/// An image with a q8 KV cache says so on its `run:` lines, and those flags
/// give `edgelm generate`'s text (a cache other than f32 changes the text,
/// so a run line without it would not reproduce it).
#[test]
fn a_q8_cache_image_names_its_cache() {
    let img = Image { kv: KvType::Q8, ..image(RUNS, 64) };
    let model = Model::from_bytes(img.base.bytes).unwrap();
    let opts = SessionOptions { block: 0, kv: KvType::Q8, ..SessionOptions::new(64) };
    let mut arena = vec![0u8; model.arena_bytes_for(&opts)];
    assert!(arena.len() < model.arena_bytes_for(&SessionOptions { block: 0, ..SessionOptions::new(64) }));
    let mut out = String::new();
    tell(&mut out, &StepClock(Cell::new(0)), &img, &mut arena, None).expect("tell");
    let mut runs = 0;
    for line in out.lines().filter_map(|l| l.strip_prefix(&format!("{MARK} run: "))) {
        assert!(line.contains(" --kv q8 "), "{line}");
        let body = out.split_once(line).unwrap().1.split_once('\n').unwrap().1;
        let end = body.find(&format!("{MARK} done: ")).expect("done line");
        assert_eq!(&body[..end], generate_like_the_cli(&model, line), "{line}");
        runs += 1;
    }
    assert_eq!(runs, RUNS.len());
}
