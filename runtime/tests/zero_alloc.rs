//! The generation loop performs zero heap allocations: a counting global
//! allocator watches prompt feeding, sampling and decoding.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use edgelm_runtime::format::DType;
use edgelm_runtime::synthetic::{synthetic_model, SyntheticSpec};
use edgelm_runtime::{AlignedBytes, Model, SamplerConfig, Session, SessionOptions};

struct Counting;
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn generation_loop_does_not_allocate() {
    for dtype in [DType::F32, DType::F16, DType::Q8] {
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
        let before = ALLOCATIONS.load(Ordering::SeqCst);
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
        let after = ALLOCATIONS.load(Ordering::SeqCst);
        assert_eq!(after - before, 0, "{dtype:?}: the generation loop allocated {} times", after - before);
        assert!(text_bytes > 0);
    }
}

static LONG: &str = "the quick brown fox jumps over the lazy dog and runs far away into the woods where nobody can find him, not even his mother, who looks for him all day long and sings a song";
