//! Threads (std): a persistent worker pool that splits matrix rows.
//!
//! ```
//! use edgelm_runtime::threads::Pool;
//! let pool = Pool::new(2); // the caller + 1 worker, spawned once
//! // session.set_pool(&pool);  // every large matvec is now split by rows
//! # assert_eq!(pool.threads(), 2);
//! ```
//!
//! Workers wait by spinning briefly, then yielding, then parking, so an idle
//! pool costs nothing and a busy machine is not starved. Matrices smaller
//! than [`crate::kernels::PARALLEL_MIN_BYTES`] stay on the calling thread.
//! Neither the hand-off nor the wait allocates.

pub use crate::kernels::pool::Pool;
pub use crate::kernels::Parallel;
