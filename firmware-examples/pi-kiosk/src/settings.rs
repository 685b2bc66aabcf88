//! Settings: defaults, then the TOML file (`--config`), then command-line
//! flags. Checked once at start-up, so a bad value stops the server with a
//! message instead of surfacing per request.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use edgelm_runtime::{KvType, SessionOptions};
use serde::{Deserialize, Deserializer};

/// Prompt block of every session: a kiosk's prompts are a line (under 32
/// tokens), so the runtime's default of 64 would add 170 KB of arena per
/// session (shipped models) and no speed.
const KIOSK_BLOCK: usize = 32;

#[derive(Parser, Debug, Default)]
#[command(
    name = "edgelm-kiosk",
    version,
    about = "A kiosk web page that tells stories and gives recipes, streamed from edgelm",
    long_about = "A kiosk web page that tells stories and gives recipes, streamed from edgelm.\n\n\
        Loads DIR/base.edgelm and the domain packs beside it once, then serves one page.\n\n\
        Example:\n  edgelm-kiosk --models models --bind 127.0.0.1:8080\n  \
        edgelm-kiosk --config /etc/edgelm/kiosk.toml --sessions 4"
)]
pub struct Cli {
    /// TOML settings file; flags given here override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Folder with base.edgelm and its domain packs.
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free one).
    #[arg(long)]
    pub bind: Option<SocketAddr>,
    /// Concurrent generations (each holds one arena, allocated at start-up).
    #[arg(long)]
    pub sessions: Option<usize>,
    /// Most tokens one request may ask for.
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Longest prompt accepted, in bytes of UTF-8.
    #[arg(long)]
    pub max_prompt_bytes: Option<usize>,
    /// Context length of each session (default: the model's).
    #[arg(long)]
    pub context: Option<usize>,
    /// Least milliseconds between streamed pieces (0 = as fast as generated).
    #[arg(long)]
    pub pace_ms: Option<u64>,
    /// Threads for large matrix-vector products (shared by all sessions).
    #[arg(long)]
    pub threads: Option<usize>,
    /// KV cache of each session: f32, f16 (half its memory) or q8 (about a quarter).
    #[arg(long, value_parser = parse_kv)]
    pub kv: Option<KvType>,
}

fn parse_kv(name: &str) -> std::result::Result<KvType, String> {
    KvType::from_name(name).ok_or_else(|| format!("unknown KV cache type {name:?}: use f32, f16 or q8"))
}

/// `kv = "q8"` in the file.
fn kv_from_name<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<KvType, D::Error> {
    let name = String::deserialize(d)?;
    parse_kv(&name).map_err(serde::de::Error::custom)
}

/// Everything the server runs with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub models: PathBuf,
    /// The base model, relative to `models`.
    pub base: PathBuf,
    /// Domain packs relative to `models`; empty: every other `*.edgelm` there
    /// that is a pack for this base.
    pub packs: Vec<PathBuf>,
    pub bind: SocketAddr,
    pub sessions: usize,
    /// 0: the model's context length.
    pub context: usize,
    pub max_prompt_bytes: usize,
    pub max_tokens: usize,
    /// Tokens generated when a request does not say.
    pub default_tokens: usize,
    pub pace_ms: u64,
    pub threads: usize,
    /// KV cache element type of every session (sizes its arena).
    #[serde(deserialize_with = "kv_from_name")]
    pub kv: KvType,
    /// Seconds a client is told to wait after a 503.
    pub retry_after_s: u32,
    /// A client that reads nothing for this long is dropped (frees its session).
    pub stall_timeout_s: u64,
    pub temperature: f32,
    pub top_p: f32,
    /// Prompt used when the box is empty, per domain.
    pub prompts: BTreeMap<String, String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            models: PathBuf::from("models"),
            base: PathBuf::from("base.edgelm"),
            packs: Vec::new(),
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            sessions: 2,
            context: 0,
            max_prompt_bytes: 1000,
            max_tokens: 400,
            default_tokens: 200,
            pace_ms: 30,
            threads: 1,
            kv: KvType::F32,
            retry_after_s: 2,
            stall_timeout_s: 30,
            temperature: 0.8,
            top_p: 0.9,
            prompts: [("story", "Once upon a time"), ("recipe", "Title:")]
                .into_iter()
                .map(|(d, p)| (d.to_string(), p.to_string()))
                .collect(),
        }
    }
}

impl Settings {
    /// Defaults, overridden by the file `cli.config` names, overridden by flags.
    pub fn load(cli: &Cli) -> Result<Settings> {
        let mut s = match &cli.config {
            Some(path) => Self::from_file(path)?,
            None => Settings::default(),
        };
        if let Some(v) = &cli.models {
            s.models = v.clone();
        }
        macro_rules! take {
            ($($field:ident),*) => {$( if let Some(v) = cli.$field { s.$field = v; } )*};
        }
        take!(bind, sessions, max_tokens, max_prompt_bytes, context, pace_ms, threads, kv);
        s.check()?;
        Ok(s)
    }

    fn from_file(path: &Path) -> Result<Settings> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut s: Settings = toml::from_str(&text)
            .with_context(|| format!("{}: not valid settings (see kiosk.toml for every key)", path.display()))?;
        // a relative models folder in a file means relative to that file
        if s.models.is_relative() {
            if let Some(dir) = path.parent() {
                s.models = dir.join(&s.models);
            }
        }
        Ok(s)
    }

    fn check(&self) -> Result<()> {
        if self.sessions == 0 {
            bail!("sessions must be at least 1");
        }
        if self.threads == 0 {
            bail!("threads must be at least 1");
        }
        if self.max_tokens == 0 || self.default_tokens == 0 || self.default_tokens > self.max_tokens {
            bail!("need 1 ≤ default_tokens ≤ max_tokens (got {} and {})", self.default_tokens, self.max_tokens);
        }
        if self.max_prompt_bytes == 0 {
            bail!("max_prompt_bytes must be at least 1");
        }
        if self.retry_after_s == 0 || self.stall_timeout_s == 0 {
            bail!("retry_after_s and stall_timeout_s must be at least 1");
        }
        for (d, p) in &self.prompts {
            if p.len() > self.max_prompt_bytes {
                bail!("the default prompt of {d:?} is longer than max_prompt_bytes ({})", self.max_prompt_bytes);
            }
        }
        Ok(())
    }

    /// The options of every session at `context` tokens (what sizes the
    /// arenas and what each request runs with, sampler aside).
    pub fn session_options(&self, context: usize) -> SessionOptions {
        SessionOptions { kv: self.kv, block: KIOSK_BLOCK, ..SessionOptions::new(context) }
    }

    /// The pack files to load: those listed, or every `*.edgelm` beside the
    /// base (the caller skips files that turn out not to be packs for it).
    pub fn pack_paths(&self) -> Result<(Vec<PathBuf>, bool)> {
        if !self.packs.is_empty() {
            return Ok((self.packs.iter().map(|p| self.models.join(p)).collect(), false));
        }
        let base = self.models.join(&self.base);
        let entries =
            std::fs::read_dir(&self.models).with_context(|| format!("cannot list {}", self.models.display()))?;
        let mut found = Vec::new();
        for e in entries {
            let path = e?.path();
            if path.extension().is_some_and(|x| x == "edgelm") && path != base {
                found.push(path);
            }
        }
        found.sort();
        Ok((found, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_settings_file_is_valid_and_states_the_defaults() {
        let s: Settings = toml::from_str(include_str!("../kiosk.toml")).unwrap();
        s.check().unwrap();
        let d = Settings::default();
        assert_eq!(s.models, Path::new("../../models"));
        let key = |s: &Settings| {
            (s.base.clone(), s.packs.clone(), s.bind, s.sessions, s.context, s.threads, s.max_prompt_bytes)
        };
        assert_eq!(key(&s), key(&d));
        let key = |s: &Settings| {
            (s.max_tokens, s.default_tokens, s.pace_ms, s.retry_after_s, s.stall_timeout_s, s.prompts.clone())
        };
        assert_eq!(key(&s), key(&d));
        assert_eq!((s.temperature, s.top_p, s.kv), (d.temperature, d.top_p, d.kv));
    }

    #[test]
    fn the_kv_cache_is_a_setting() {
        let s: Settings = toml::from_str("kv = \"Q8\"").unwrap();
        assert_eq!(s.session_options(64).kv, KvType::Q8);
        let e = toml::from_str::<Settings>("kv = \"q4\"").unwrap_err().to_string();
        assert!(e.contains("q4") && e.contains("q8"), "{e}");
        let s = Settings::load(&Cli { kv: Some(KvType::F16), ..Cli::default() }).unwrap();
        assert_eq!((s.kv, s.session_options(64).max_seq), (KvType::F16, 64));
        assert!(Cli::try_parse_from(["edgelm-kiosk", "--kv", "int4"]).is_err());
    }

    #[test]
    fn flags_override_the_file() {
        let cli = Cli { sessions: Some(5), pace_ms: Some(0), ..Cli::default() };
        let s = Settings::load(&cli).unwrap();
        assert_eq!((s.sessions, s.pace_ms, s.max_tokens), (5, 0, Settings::default().max_tokens));
        let cli = Cli { threads: Some(0), ..Cli::default() };
        assert!(Settings::load(&cli).unwrap_err().to_string().contains("threads"));
    }
}
