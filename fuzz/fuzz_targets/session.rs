//! A session over the micro base and its pack, driven by arbitrary prompts,
//! domains, sampler settings, context sizes and raw token steps.
#![no_main]

use arbitrary::Arbitrary;
use edgelm_fuzz::{micro_base, micro_pack};
use edgelm_runtime::kernels::REFERENCE;
use edgelm_runtime::{KvType, Model, SamplerConfig, Session, SessionOptions};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    domain: u8,
    other_domain: String,
    prompt: String,
    temperature: f32,
    top_k: u16,
    top_p: f32,
    repeat_penalty: f32,
    repeat_window: u16,
    seed: u64,
    max_seq: u8,
    arena_short: u8,
    truncate_prompt: bool,
    kv: u8,
    block: u8,
    reference_kernels: bool,
    max_tokens: u8,
    steps: Vec<u32>,
    second_prompt: Option<String>,
}

fuzz_target!(|input: Input| {
    let Ok(mut model) = Model::from_bytes(micro_base()) else { return };
    model.add_pack_bytes(micro_pack()).expect("the micro pack loads");
    let domain = match input.domain % 3 {
        0 => "story",
        1 => "recipe",
        _ => input.other_domain.as_str(),
    };
    let sampler = SamplerConfig {
        temperature: input.temperature,
        top_k: input.top_k as usize,
        top_p: input.top_p,
        repeat_penalty: input.repeat_penalty,
        repeat_window: input.repeat_window as usize,
        seed: input.seed,
    };
    let max_seq = input.max_seq as usize % 20; // 0..=19 (the model holds 16)
    let opts = SessionOptions {
        sampler,
        truncate_prompt: input.truncate_prompt,
        kv: [KvType::F32, KvType::F16, KvType::Q8][input.kv as usize % 3],
        block: input.block as usize % 10, // 0..=9: token by token, and blocks shorter and longer than prompts
        ..SessionOptions::new(max_seq)
    };
    let need = model.arena_bytes_for(&SessionOptions { max_seq: max_seq.min(16), ..opts });
    let mut arena = vec![0u8; need.saturating_sub(input.arena_short as usize % 3 * 64)];
    let Ok(mut s) = Session::new(&model, domain, &mut arena, opts) else { return };
    if input.reference_kernels {
        s.set_kernels(&REFERENCE);
    }
    let _ = s.feed_prompt(&input.prompt);
    let _ = s.generate(input.max_tokens as usize % 24, &mut |_| {});
    for &t in input.steps.iter().take(24) {
        let _ = s.step(t);
    }
    if let Some(p) = &input.second_prompt {
        s.reset();
        let _ = s.feed_prompt(p);
        let _ = s.next_token();
    }
});
