//! The build-time plan, for the images' build scripts (host, std): reads the
//! build settings (`EDGELM_FW_*` variables, each with a default), loads and
//! validates the models with the runtime itself, sizes the arena exactly
//! (`Model::arena_bytes` for the longest run's prompt + tokens) and writes
//! `$OUT_DIR/plan.rs`, which the image `include!`s:
//!
//! ```text
//! pub const ARENA_BYTES: usize = …;          // static arena, in .bss
//! pub static IMAGE: edgelm_stories::Image = …; // models via include_model!, runs
//! ```
//!
//! A model, pack, domain, prompt or setting the runtime refuses fails the
//! build with the runtime's message, so an image never boots into an error
//! that the build could have seen.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use edgelm_runtime::{KvType, Model, Session, SessionOptions};

use crate::Run;

/// One image's defaults; every field can be overridden by a variable.
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    /// The example's folder name, printed in the transcript.
    pub board: &'static str,
    /// `EDGELM_FW_MODEL`: the base model, relative to the repository root.
    pub model: &'static str,
    /// `EDGELM_FW_PACKS`: domain packs, comma-separated (empty: none).
    pub packs: &'static [&'static str],
    /// `EDGELM_FW_DOMAINS` (comma-separated) and `EDGELM_FW_PROMPT_<DOMAIN>`
    /// (the domain upper-cased, other characters as `_`): the runs, in order.
    pub runs: &'static [(&'static str, &'static str)],
    /// `EDGELM_FW_MAX_TOKENS`: tokens per run.
    pub max_tokens: usize,
}

/// Sampler defaults, those of `edgelm generate`, so that a transcript's
/// `run:` flags are also what a plain `edgelm generate` would use.
/// Variables: `EDGELM_FW_SEED`, `EDGELM_FW_TEMPERATURE`, `EDGELM_FW_TOP_K`,
/// `EDGELM_FW_TOP_P`, `EDGELM_FW_REPEAT_PENALTY`; `EDGELM_FW_MAX_SEQ`
/// overrides the computed context length; `EDGELM_FW_KV` (`f32`, `f16` or
/// `q8`) sets the KV cache's element type, default f32.
const SEED: u64 = 42;
const TEMPERATURE: f32 = 0.8;
const TOP_K: usize = 0;
const TOP_P: f32 = 0.9;
const REPEAT_PENALTY: f32 = 1.0;

/// The settings after variables were applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub board: String,
    pub model: String,
    pub packs: Vec<String>,
    pub runs: Vec<(String, String)>,
    pub max_tokens: usize,
    pub seed: u64,
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub repeat_penalty: f32,
    pub max_seq: Option<usize>,
    pub kv: KvType,
}

fn number<T: std::str::FromStr>(var: &str, value: Option<String>, default: T) -> Result<T, String> {
    match value {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|_| format!("{var}={v:?} is not a valid number")),
    }
}

fn list(value: &str) -> Vec<String> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

/// `EDGELM_FW_PROMPT_<DOMAIN>` for `domain`.
pub fn prompt_var(domain: &str) -> String {
    let mut v = String::from("EDGELM_FW_PROMPT_");
    v.extend(domain.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }));
    v
}

impl Settings {
    /// `defaults`, overridden by whatever `var` returns for a variable name.
    pub fn new(defaults: &Defaults, var: &mut dyn FnMut(&str) -> Option<String>) -> Result<Self, String> {
        let model = var("EDGELM_FW_MODEL").unwrap_or_else(|| defaults.model.into());
        let packs = match var("EDGELM_FW_PACKS") {
            Some(v) => list(&v),
            None => defaults.packs.iter().map(|p| p.to_string()).collect(),
        };
        let domains = match var("EDGELM_FW_DOMAINS") {
            Some(v) => list(&v),
            None => defaults.runs.iter().map(|(d, _)| d.to_string()).collect(),
        };
        if domains.is_empty() {
            return Err("EDGELM_FW_DOMAINS names no domain; give at least one, e.g. EDGELM_FW_DOMAINS=story".into());
        }
        let mut runs = Vec::new();
        for d in domains {
            let default = defaults.runs.iter().find(|(n, _)| *n == d).map_or("", |(_, p)| *p);
            let var_name = prompt_var(&d);
            let prompt = var(&var_name).unwrap_or_else(|| default.into());
            if prompt.contains(['\n', '\r']) {
                return Err(format!("{var_name} must be one line (the transcript's run: line ends with it)"));
            }
            runs.push((d, prompt));
        }
        let max_seq = match var("EDGELM_FW_MAX_SEQ") {
            None => None,
            Some(v) if v.trim().is_empty() || v.trim() == "auto" => None,
            v => Some(number("EDGELM_FW_MAX_SEQ", v, 0usize)?),
        };
        let kv = match var("EDGELM_FW_KV") {
            None => KvType::F32,
            Some(v) => KvType::from_name(v.trim())
                .ok_or_else(|| format!("EDGELM_FW_KV={v:?} is not a KV cache type: use f32, f16 or q8"))?,
        };
        Ok(Settings {
            board: defaults.board.into(),
            model,
            packs,
            runs,
            max_tokens: number("EDGELM_FW_MAX_TOKENS", var("EDGELM_FW_MAX_TOKENS"), defaults.max_tokens)?,
            seed: number("EDGELM_FW_SEED", var("EDGELM_FW_SEED"), SEED)?,
            temperature: number("EDGELM_FW_TEMPERATURE", var("EDGELM_FW_TEMPERATURE"), TEMPERATURE)?,
            top_k: number("EDGELM_FW_TOP_K", var("EDGELM_FW_TOP_K"), TOP_K)?,
            top_p: number("EDGELM_FW_TOP_P", var("EDGELM_FW_TOP_P"), TOP_P)?,
            repeat_penalty: number("EDGELM_FW_REPEAT_PENALTY", var("EDGELM_FW_REPEAT_PENALTY"), REPEAT_PENALTY)?,
            max_seq,
            kv,
        })
    }

    fn run(&self, domain: &str, prompt: &str) -> Run {
        Run {
            // leaked: the plan runs once per build script and `Run` holds 'static text
            domain: Box::leak(domain.into()),
            prompt: Box::leak(prompt.into()),
            max_tokens: self.max_tokens,
            seed: self.seed,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repeat_penalty: self.repeat_penalty,
        }
    }
}

/// A model file read into a 64-byte aligned view, as the loader requires.
struct AlignedFile {
    buf: Vec<u8>,
    start: usize,
}

impl AlignedFile {
    fn read(path: &Path) -> Result<Self, String> {
        let data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut buf = vec![0u8; data.len() + 64];
        let start = buf.as_ptr().align_offset(64);
        buf[start..start + data.len()].copy_from_slice(&data);
        buf.truncate(start + data.len());
        Ok(AlignedFile { buf, start })
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// What the image embeds, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub board: String,
    /// `(path as given, resolved path)` of the base, then of each pack.
    pub files: Vec<(String, PathBuf)>,
    pub runs: Vec<Run>,
    pub max_seq: usize,
    pub kv: KvType,
    pub arena_bytes: usize,
}

impl Plan {
    /// Loads the models of `s` (paths relative to `root`) and sizes the
    /// arena for its runs. Every refusal names the setting to change.
    pub fn new(s: &Settings, root: &Path) -> Result<Self, String> {
        let files: Vec<(String, PathBuf)> =
            std::iter::once(&s.model).chain(&s.packs).map(|p| (p.clone(), root.join(p))).collect();
        let loaded = files.iter().map(|(_, p)| AlignedFile::read(p)).collect::<Result<Vec<_>, _>>()?;
        let mut model = Model::from_bytes(loaded[0].bytes())
            .map_err(|e| format!("EDGELM_FW_MODEL {}: {e}", files[0].1.display()))?;
        for (file, (_, path)) in loaded.iter().zip(&files).skip(1) {
            model.add_pack_bytes(file.bytes()).map_err(|e| format!("EDGELM_FW_PACKS {}: {e}", path.display()))?;
        }
        let runs: Vec<Run> = s.runs.iter().map(|(d, p)| s.run(d, p)).collect();

        // The context each run needs: its prompt's tokens (BOS and domain
        // tag included, as the session counts them) plus the tokens to
        // generate, capped at the model's own limit, where `edgelm generate
        // --max-seq` stops alike.
        let limit = model.config().max_seq_len as usize;
        let max_seq = match s.max_seq {
            Some(m) => m,
            None => {
                let mut probe = vec![0u8; model.arena_bytes_for(&image_options(limit, s.kv))];
                let mut need = 1;
                for run in &runs {
                    let n = prompt_tokens(&model, run, limit, s.kv, &mut probe)?;
                    need = need.max(n + run.max_tokens);
                }
                need.min(limit)
            }
        };
        let arena_bytes = model.arena_bytes_for(&image_options(max_seq, s.kv));
        // The image's exact sessions, once here, so that whatever the
        // runtime refuses (domain, sampler, context, prompt) fails the build.
        let mut arena = vec![0u8; arena_bytes];
        for run in &runs {
            prompt_tokens(&model, run, max_seq, s.kv, &mut arena)?;
        }
        Ok(Plan { board: s.board.clone(), files, runs, max_seq, kv: s.kv, arena_bytes })
    }

    /// The `plan.rs` the image includes.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let embedded = |(path, resolved): &(String, PathBuf)| {
            format!(
                "edgelm_stories::Embedded {{ path: {path:?}, bytes: edgelm_runtime::include_model!({:?}) }}",
                resolved.display().to_string()
            )
        };
        let _ = writeln!(o, "// Written by the build script (edgelm_stories::plan) from the build settings.");
        let _ = writeln!(
            o,
            "/// Bytes of the session arena: `Model::arena_bytes_for(&image_options({}, KvType::{:?}))`.",
            self.max_seq, self.kv
        );
        let _ = writeln!(o, "pub const ARENA_BYTES: usize = {};", self.arena_bytes);
        let _ = writeln!(o, "pub static IMAGE: edgelm_stories::Image = edgelm_stories::Image {{");
        let _ = writeln!(o, "    board: {:?},", self.board);
        let _ = writeln!(o, "    base: {},", embedded(&self.files[0]));
        let _ = writeln!(o, "    packs: &[");
        for f in &self.files[1..] {
            let _ = writeln!(o, "        {},", embedded(f));
        }
        let _ = writeln!(o, "    ],");
        let _ = writeln!(o, "    runs: &[");
        for r in &self.runs {
            let _ = writeln!(
                o,
                "        edgelm_stories::Run {{ domain: {:?}, prompt: {:?}, max_tokens: {}, seed: {}, \
                 temperature: {:?}, top_k: {}, top_p: {:?}, repeat_penalty: {:?} }},",
                r.domain, r.prompt, r.max_tokens, r.seed, r.temperature, r.top_k, r.top_p, r.repeat_penalty
            );
        }
        let _ = writeln!(o, "    ],");
        let _ = writeln!(o, "    max_seq: {},", self.max_seq);
        let _ = writeln!(o, "    kv: edgelm_runtime::KvType::{:?},", self.kv);
        let _ = writeln!(o, "}};");
        o
    }
}

/// Opens `run`'s session with context `max_seq` in `arena` and feeds its
/// prompt; returns the prompt's token count.
/// The session options of an image (and of this plan, which sizes its arena):
/// one token at a time, the smallest arena (`block: 0`; the batched prompt
/// path gives the same text and would add its block buffers to the image's
/// RAM), the KV cache as `EDGELM_FW_KV` says.
pub fn image_options(max_seq: usize, kv: KvType) -> SessionOptions {
    SessionOptions { block: 0, kv, ..SessionOptions::new(max_seq) }
}

fn prompt_tokens(model: &Model<'_>, run: &Run, max_seq: usize, kv: KvType, arena: &mut [u8]) -> Result<usize, String> {
    let why = |e: edgelm_runtime::Error| {
        format!(
            "run of domain {:?} (prompt {:?}, context {max_seq}): {e}; check EDGELM_FW_DOMAINS, {}, \
             EDGELM_FW_MAX_SEQ, EDGELM_FW_KV and the sampler settings",
            run.domain,
            run.prompt,
            prompt_var(run.domain)
        )
    };
    let opts = SessionOptions { sampler: run.sampler(), ..image_options(max_seq, kv) };
    let mut session = Session::new(model, run.domain, arena, opts).map_err(why)?;
    session.feed_prompt(run.prompt).map_err(why)
}

/// For `build.rs`: applies the environment to `defaults`, checks the models
/// and writes `$OUT_DIR/plan.rs`; on bad input says why and exits 1.
pub fn write_from_env(defaults: &Defaults) {
    if let Err(e) = try_write_from_env(defaults) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn try_write_from_env(defaults: &Defaults) -> Result<(), String> {
    let settings = Settings::new(defaults, &mut |name| {
        println!("cargo:rerun-if-env-changed={name}");
        std::env::var(name).ok()
    })?;
    let manifest = std::env::var("CARGO_MANIFEST_DIR").map_err(|_| "CARGO_MANIFEST_DIR is not set")?;
    // images live in firmware-examples/<image>/
    let root = Path::new(&manifest).join("../..");
    let root = root.canonicalize().map_err(|e| format!("cannot resolve {}: {e}", root.display()))?;
    let plan = Plan::new(&settings, &root)?;
    for (_, path) in &plan.files {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").map_err(|_| "OUT_DIR is not set")?);
    let tmp = out.join("plan.rs.tmp");
    std::fs::write(&tmp, plan.render()).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, out.join("plan.rs")).map_err(|e| format!("cannot write plan.rs: {e}"))
}
