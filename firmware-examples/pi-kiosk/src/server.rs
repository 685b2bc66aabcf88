//! The HTTP side: routes, the page, and the event stream of a request.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use edgelm_runtime::Engine;
use tokio::sync::{mpsc, oneshot};

use crate::error::ApiError;
use crate::generate::{self, Event, Run, Stats};
use crate::pool::ArenaPool;
use crate::request;
use crate::settings::Settings;

const PAGE: &str = include_str!("page.html");
/// Pieces buffered between a generation and its client.
const CHANNEL: usize = 16;

pub struct AppState {
    pub engine: Arc<Engine>,
    pub pool: Arc<ArenaPool>,
    pub settings: Settings,
    /// Loaded domains, the base's first.
    pub domains: Vec<String>,
    /// Sessions' context length.
    pub context: usize,
    pub stats: Arc<Stats>,
    seeds: AtomicU64,
}

impl AppState {
    pub fn new(engine: Engine, settings: Settings, context: usize) -> anyhow::Result<AppState> {
        let model = engine.model()?;
        let domains = model.domains().iter().map(|d| d.name.to_string()).collect();
        let pool = ArenaPool::new(settings.sessions, model.arena_bytes_for(&settings.session_options(context)));
        drop(model);
        // different text on every press unless the request fixes a seed
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        Ok(AppState {
            engine: Arc::new(engine),
            pool,
            settings,
            domains,
            context,
            stats: Arc::default(),
            seeds: AtomicU64::new(t as u64),
        })
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    // JSON escapes can make a prompt up to 6x longer on the wire
    let body_limit = state.settings.max_prompt_bytes * 6 + 1024;
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(healthz))
        .route("/api/domains", get(domains))
        .route("/api/generate", post(generate))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

async fn page() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-cache")], Html(PAGE))
}

async fn healthz(State(st): State<Arc<AppState>>) -> Response {
    let s = &st.stats;
    json(serde_json::json!({
        "status": "ok",
        "sessions": st.pool.total(),
        "busy": st.pool.busy(),
        "arena_bytes": st.pool.arena_bytes(),
        "context": st.context,
        "kv": st.settings.kv.name(),
        "kernels": st.engine.kernels().name,
        "threads": st.engine.threads(),
        "started": s.started.load(Ordering::Relaxed),
        "completed": s.completed.load(Ordering::Relaxed),
        "stopped_by_client": s.stopped_by_client.load(Ordering::Relaxed),
        "failed": s.failed.load(Ordering::Relaxed),
        "rejected_busy": s.rejected_busy.load(Ordering::Relaxed),
    }))
}

async fn domains(State(st): State<Arc<AppState>>) -> Response {
    let list: Vec<_> = st
        .domains
        .iter()
        .map(|d| serde_json::json!({ "name": d, "default_prompt": st.settings.prompts.get(d) }))
        .collect();
    json(serde_json::json!({
        "domains": list,
        "max_prompt_bytes": st.settings.max_prompt_bytes,
        "max_tokens": st.settings.max_tokens,
        "default_tokens": st.settings.default_tokens,
        "temperature": st.settings.temperature,
    }))
}

fn json(v: serde_json::Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

async fn generate(State(st): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large("the request is too large".into()),
        _ => ApiError::bad_request(format!("cannot read the request: {e}")),
    })?;
    let seed = st.seeds.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    let job = request::parse(&body, &st.settings, &st.domains, st.context, seed)?;
    let Some(lease) = st.pool.try_acquire() else {
        st.stats.rejected_busy.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::busy(st.settings.retry_after_s));
    };
    let run = Run {
        engine: Arc::clone(&st.engine),
        lease,
        job,
        pace: Duration::from_millis(st.settings.pace_ms),
        stall: Duration::from_secs(st.settings.stall_timeout_s),
        stats: Arc::clone(&st.stats),
    };
    let (started_tx, started_rx) = oneshot::channel();
    let (tx, rx) = mpsc::channel(CHANNEL);
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || generate::run(run, rt, started_tx, tx));
    match started_rx.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(ApiError::internal("the generation thread stopped unexpectedly".into())),
    }
    // Dropping this stream (the client left) drops `rx`, which stops the generation.
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let ev: Event = rx.recv().await?;
        Some((Ok::<_, Infallible>(ev.to_sse()), rx))
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}
