//! The threaded generation loop allocates nothing either: the pool is built
//! (threads spawned) before counting starts; publishing jobs, the workers'
//! waits and the row split allocate nothing.

use edgelm_runtime::format::DType;
use edgelm_runtime::kernels::PARALLEL_MIN_BYTES;
use edgelm_testkit::synthetic::{synthetic_model, SyntheticSpec};
use edgelm_runtime::threads::Pool;
use edgelm_runtime::{AlignedBytes, Model, Session, SessionOptions};

use edgelm_testkit::counting_alloc::{allocations, Counting};

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn threaded_generation_loop_does_not_allocate() {
    let mut spec = SyntheticSpec::tiny(DType::Q8);
    // a head big enough to be split across the pool
    spec.config.vocab_size = 4096;
    assert!(spec.config.vocab_size as usize * spec.config.dim as usize >= PARALLEL_MIN_BYTES);
    let bytes = AlignedBytes::from(synthetic_model(&spec).unwrap());
    let model = Model::from_bytes(&bytes).unwrap();
    let pool = Pool::new(2);
    let mut arena = vec![0u8; model.arena_bytes(64)];
    // warm up: the first job publishes, workers start waiting
    pool.run(&|_| {});
    let before = allocations();
    {
        let mut session = Session::new(&model, "story", &mut arena, SessionOptions::new(64)).unwrap();
        session.set_pool(&pool);
        let mut tok = 1u32;
        for _ in 0..40 {
            tok = edgelm_runtime::sampler::argmax(session.step(tok).unwrap());
        }
    }
    let after = allocations();
    assert_eq!(after - before, 0, "the threaded loop allocated {} times", after - before);
}
