//! Runs one request on a blocking thread: a session over a leased arena,
//! the prompt, then pieces of text sent over a bounded channel. When the
//! receiver is gone (the client left) or stops reading for too long,
//! generation stops and the arena goes back to the pool.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgelm_runtime::{Engine, StopReason};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use crate::error::ApiError;
use crate::pool::Lease;
use crate::request::Job;

/// What the stream carries after the prompt was accepted.
#[derive(Debug)]
pub enum Event {
    /// The prompt the text continues (the domain's default when the box was empty).
    Prompt(String),
    Piece(String),
    Done {
        reason: StopReason,
        pieces: usize,
        ms: u128,
    },
    Failed(String),
}

impl Event {
    /// The event in `text/event-stream` form; data is JSON, so newlines in
    /// the text cannot end an event early.
    pub fn to_sse(&self) -> String {
        let (name, data) = match self {
            Event::Prompt(text) => ("prompt", serde_json::Value::from(text.as_str())),
            Event::Piece(text) => ("piece", serde_json::Value::from(text.as_str())),
            Event::Done { reason, pieces, ms } => {
                ("done", serde_json::json!({ "reason": format!("{reason:?}"), "pieces": pieces, "ms": ms }))
            }
            Event::Failed(msg) => ("error", serde_json::json!({ "error": msg })),
        };
        format!("event: {name}\ndata: {data}\n\n")
    }
}

/// Counters for `/healthz`.
#[derive(Default)]
pub struct Stats {
    pub started: AtomicU64,
    pub completed: AtomicU64,
    pub stopped_by_client: AtomicU64,
    pub failed: AtomicU64,
    pub rejected_busy: AtomicU64,
}

pub struct Run {
    pub engine: Arc<Engine>,
    pub lease: Lease,
    pub job: Job,
    pub pace: Duration,
    pub stall: Duration,
    pub stats: Arc<Stats>,
}

/// Runs on a blocking thread. `started` answers once the prompt is in (or
/// why it was refused); the text then goes to `tx`.
/// Answers a request that could not start: the lease is dropped (its arena
/// back in the pool) before the error goes to the handler.
fn refuse(started: oneshot::Sender<Result<(), ApiError>>, lease: Lease, e: ApiError) {
    drop(lease);
    let _ = started.send(Err(e));
}

pub fn run(r: Run, rt: Handle, started: oneshot::Sender<Result<(), ApiError>>, tx: mpsc::Sender<Event>) {
    let t0 = Instant::now();
    let Run { engine, mut lease, job, pace, stall, stats } = r;
    let send = |ev: Event| -> ControlFlow<()> {
        match rt.block_on(tx.send_timeout(ev, stall)) {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()), // closed or stalled
        }
    };
    let mut pieces = 0usize;
    let result = {
        // a refused request gives its arena back before the handler answers,
        // so `/api/health` never counts it busy after the error reached the client
        let model = match engine.model() {
            Ok(m) => m,
            Err(e) => return refuse(started, lease, e.into()),
        };
        let mut session = match engine.session(&model, Some(&job.domain), lease.arena(), job.opts) {
            Ok(s) => s,
            Err(e) => return refuse(started, lease, e.into()),
        };
        if let Err(e) = session.feed_prompt(&job.prompt) {
            // (the session's borrow of the arena ends here: it is not used again)
            return refuse(started, lease, e.into());
        }
        if started.send(Ok(())).is_err() {
            return; // the handler went away before the stream began
        }
        stats.started.fetch_add(1, Ordering::Relaxed);
        let mut last = Instant::now();
        if send(Event::Prompt(job.prompt.clone())).is_break() {
            Ok(StopReason::Stopped)
        } else {
            session.generate_while(job.max_tokens, &mut |text| {
                // a typewriter pace: small models outrun readers
                let wait = pace.saturating_sub(last.elapsed());
                if !wait.is_zero() {
                    std::thread::sleep(wait);
                }
                last = Instant::now();
                pieces += 1;
                send(Event::Piece(text.to_string()))
            })
        }
    };
    let counter = match result {
        Ok(StopReason::Stopped) => &stats.stopped_by_client,
        Ok(_) => &stats.completed,
        Err(_) => &stats.failed,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    // The arena goes back before the client hears "done", so a client that
    // starts again at once finds it free.
    drop(lease);
    let _ = match result {
        Ok(StopReason::Stopped) => ControlFlow::Break(()),
        Ok(reason) => send(Event::Done { reason, pieces, ms: t0.elapsed().as_millis() }),
        Err(e) => send(Event::Failed(e.to_string())),
    };
}
