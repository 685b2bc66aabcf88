//! The generation loop performs zero heap allocations: a counting global
//! allocator watches prompt feeding, sampling and decoding.

use edgelm_runtime::format::DType;
use edgelm_runtime::{AlignedBytes, Model, SamplerConfig, Session, SessionOptions};
use edgelm_testkit::synthetic::{synthetic_model, SyntheticSpec};

use edgelm_testkit::counting_alloc::{allocations, Counting};

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn generation_loop_does_not_allocate() {
    for dtype in [DType::F32, DType::F16, DType::Q8, DType::Q4] {
        let bytes = AlignedBytes::from(synthetic_model(&SyntheticSpec::tiny(dtype)).unwrap());
        let model = Model::from_bytes(&bytes).unwrap();
        let mut arena = vec![0u8; model.arena_bytes(64)];
        let opts = SessionOptions {
            max_seq: 64,
            sampler: SamplerConfig {
                temperature: 0.9,
                top_k: 20,
                top_p: 0.9,
                repeat_penalty: 1.2,
                repeat_window: 32,
                seed: 5,
            },
            truncate_prompt: true,
        };
        let mut text_bytes = 0usize;
        let before = allocations();
        {
            let mut session = Session::new(&model, "story", &mut arena, opts).unwrap();
            session.feed_prompt("Once upon a time, in a small house by the sea,").unwrap();
            session.generate(40, &mut |t| text_bytes += t.len()).unwrap();
            for t in session.tokens_iter(5) {
                t.unwrap();
            }
            // truncation path too
            session.feed_prompt(LONG).unwrap();
        }
        let after = allocations();
        assert_eq!(after - before, 0, "{dtype:?}: the generation loop allocated {} times", after - before);
        assert!(text_bytes > 0);
    }
}

static LONG: &str = "the quick brown fox jumps over the lazy dog and runs far away into the woods where nobody can find him, not even his mother, who looks for him all day long and sings a song";
