//! `edgelm-kiosk`: one touch page that tells stories and gives recipes,
//! streamed from a base model and its domain packs loaded once (mmap).

mod error;
mod generate;
mod pool;
mod request;
mod server;
mod settings;

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Parser;
use edgelm_runtime::{Engine, EngineOptions, ErrorKind};

use crate::server::AppState;
use crate::settings::{Cli, Settings};

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgelm-kiosk: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let settings = Settings::load(&cli)?;
    if let Err(e) = edgelm_runtime::kernels::from_env() {
        let var = edgelm_runtime::kernels::ENV_VAR;
        eprintln!("edgelm-kiosk: warning: {var}: {e}; using {}", edgelm_runtime::kernels::detected().name);
    }
    let engine = open(&settings)?;
    let context = match settings.context {
        0 => engine.max_seq(),
        n if n <= engine.max_seq() => n,
        n => bail!("context {n} exceeds the model's {} tokens; lower `context`", engine.max_seq()),
    };
    let state = AppState::new(engine, settings, context)?;
    eprintln!(
        "edgelm-kiosk: domains {:?}, kernels {}, {} session(s) of {} arena bytes (context {context}, KV cache {})",
        state.domains,
        state.engine.kernels().name,
        state.pool.total(),
        state.pool.arena_bytes(),
        state.settings.kv.name()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // generations run on blocking threads; the pool bounds how many at once
        .max_blocking_threads(state.pool.total() + 2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve(Arc::new(state)))
}

/// Opens the base and its packs; with no packs listed, files beside the base
/// that are not packs for it are skipped with a note.
fn open(s: &Settings) -> Result<Engine> {
    let base = s.models.join(&s.base);
    let opts = EngineOptions { threads: s.threads, ..EngineOptions::default() };
    let mut engine = Engine::open(&base, opts)
        .with_context(|| format!("loading {} (pass --models DIR with base.edgelm in it)", base.display()))?;
    let (packs, discovered) = s.pack_paths()?;
    for p in packs {
        match engine.add_pack(&p) {
            Ok(()) => {}
            Err(e) if discovered && e.kind() == ErrorKind::WrongFile => {
                eprintln!("edgelm-kiosk: note: skipping {}: {e}", p.display());
            }
            Err(e) => return Err(e).with_context(|| format!("loading pack {}", p.display())),
        }
    }
    Ok(engine)
}

async fn serve(state: Arc<AppState>) -> Result<()> {
    let bind = state.settings.bind;
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot listen on {bind} (is another server there? try --bind 127.0.0.1:PORT)"))?;
    let addr = listener.local_addr()?;
    // scripts and tests read the port from this line
    let mut out = std::io::stdout().lock();
    writeln!(out, "edgelm-kiosk: listening on http://{addr}")?;
    out.flush()?;
    drop(out);
    axum::serve(listener, server::router(state)).with_graceful_shutdown(shutdown()).await?;
    Ok(())
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
