//! What an image prints. Between a `run:` line and its `done:` line stands
//! exactly what `edgelm generate` prints to stdout for the same flags (the
//! prompt, the generated text, a newline); the `[edgelm]` lines around it
//! carry those flags, so `check-linux.sh` can replay every run on Linux and
//! compare the bytes.

use core::fmt::{self, Write};

use edgelm_runtime::kernels::Parallel;
use edgelm_runtime::{KvType, Model, SamplerConfig, Session, SessionOptions};

/// Starts every line the app prints outside the generated text.
pub const MARK: &str = "[edgelm]";

/// A free-running tick counter (a generic timer, SysTick, …).
pub trait Clock {
    fn ticks(&self) -> u64;
    fn ticks_per_second(&self) -> u64;
    /// Named in the speed line, e.g. `"CNTVCT_EL0"`.
    fn name(&self) -> &'static str;
}

/// A model file embedded in the image (`include_model!`), and the path it
/// was read from at build time, relative to the repository root.
#[derive(Debug, Clone, Copy)]
pub struct Embedded {
    pub path: &'static str,
    pub bytes: &'static [u8],
}

/// One generation: the `edgelm generate` settings it mirrors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Run {
    pub domain: &'static str,
    /// One line (the `run:` line ends with it).
    pub prompt: &'static str,
    pub max_tokens: usize,
    pub seed: u64,
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub repeat_penalty: f32,
}

impl Run {
    pub(crate) fn sampler(&self) -> SamplerConfig {
        SamplerConfig {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repeat_penalty: self.repeat_penalty,
            seed: self.seed,
            ..SamplerConfig::default()
        }
    }
}

/// Everything an image embeds, as the build-time plan wrote it.
#[derive(Debug, Clone, Copy)]
pub struct Image {
    /// The example's folder name, e.g. `"virt-aarch64"`.
    pub board: &'static str,
    pub base: Embedded,
    pub packs: &'static [Embedded],
    pub runs: &'static [Run],
    /// Context length of every session (the plan's: longest prompt + tokens).
    pub max_seq: usize,
    /// KV cache element type of every session (`EDGELM_FW_KV`).
    pub kv: KvType,
}

/// Decode speed over all runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Speed {
    pub tokens: usize,
    pub ticks: u64,
}

/// Why [`tell`] stopped early.
#[derive(Debug)]
pub enum Failure {
    /// The model, a pack, a domain or the arena was refused by the runtime.
    Runtime(edgelm_runtime::Error),
    /// The output refused a write.
    Output,
}

impl From<edgelm_runtime::Error> for Failure {
    fn from(e: edgelm_runtime::Error) -> Self {
        Failure::Runtime(e)
    }
}

impl From<fmt::Error> for Failure {
    fn from(_: fmt::Error) -> Self {
        Failure::Output
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Runtime(e) => write!(f, "{e}"),
            Failure::Output => f.write_str("the output refused a write"),
        }
    }
}

/// `ticks` as seconds with millisecond digits, without floating point.
struct Seconds(u64, u64);

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = (self.0 as u128 * 1000 / self.1.max(1) as u128) as u64;
        write!(f, "{}.{:03} s", ms / 1000, ms % 1000)
    }
}

/// Tokens per second to one decimal, without floating point.
struct Rate(usize, u64, u64);

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Rate(tokens, ticks, hz) = *self;
        if ticks == 0 {
            return f.write_str("- tokens/s");
        }
        let tenths = (tokens as u128 * hz as u128 * 10 / ticks as u128) as u64;
        write!(f, "{}.{} tokens/s", tenths / 10, tenths % 10)
    }
}

/// Loads `image`'s model, runs each of its runs in `arena` and prints the
/// transcript to `out`, splitting large matrix-vector products across
/// `par` when given (the text is the same either way). Returns the decode
/// speed over all runs.
pub fn tell(
    out: &mut dyn Write,
    clock: &dyn Clock,
    image: &Image,
    arena: &mut [u8],
    par: Option<&dyn Parallel>,
) -> Result<Speed, Failure> {
    let mut model = Model::from_bytes(image.base.bytes)?;
    for pack in image.packs {
        model.add_pack_bytes(pack.bytes)?;
    }
    writeln!(out, "{MARK} image: {} (arena {} bytes, max-seq {})", image.board, arena.len(), image.max_seq)?;
    writeln!(out, "{MARK} kernels: {}", edgelm_runtime::kernels::best().name)?;
    writeln!(out, "{MARK} cores: {}", par.map_or(1, |p| p.threads()))?;
    write!(out, "{MARK} models: --model {}", image.base.path)?;
    for pack in image.packs {
        write!(out, " --pack {}", pack.path)?;
    }
    writeln!(out)?;

    let hz = clock.ticks_per_second();
    let mut total = Speed { tokens: 0, ticks: 0 };
    for run in image.runs {
        let opts =
            SessionOptions { sampler: run.sampler(), block: 0, kv: image.kv, ..SessionOptions::new(image.max_seq) };
        let mut session = Session::new(&model, run.domain, &mut *arena, opts)?;
        if let Some(p) = par {
            session.set_parallel(p);
        }
        writeln!(
            out,
            "{MARK} run: --domain {} --max-seq {} --kv {} --max-tokens {} --seed {} --temperature {} --top-k {} --top-p {} --repeat-penalty {} --prompt {}",
            run.domain,
            image.max_seq,
            image.kv.name(),
            run.max_tokens,
            run.seed,
            run.temperature,
            run.top_k,
            run.top_p,
            run.repeat_penalty,
            run.prompt
        )?;
        let prompt_tokens = session.feed_prompt(run.prompt)?;
        out.write_str(run.prompt)?;
        let mut write_failed = false;
        let start = clock.ticks();
        let reason = session.generate(run.max_tokens, &mut |text| write_failed |= out.write_str(text).is_err())?;
        let ticks = clock.ticks().wrapping_sub(start);
        if write_failed {
            return Err(Failure::Output);
        }
        let tokens = session.tokens().len() - prompt_tokens;
        writeln!(out)?;
        writeln!(
            out,
            "{MARK} done: {tokens} tokens in {}, {} ({reason:?})",
            Seconds(ticks, hz),
            Rate(tokens, ticks, hz)
        )?;
        total.tokens += tokens;
        total.ticks += ticks;
    }
    writeln!(
        out,
        "{MARK} speed: {} tokens in {} = {} ({} at {} Hz; under QEMU this is emulated, not a device speed)",
        total.tokens,
        Seconds(total.ticks, hz),
        Rate(total.tokens, total.ticks, hz),
        clock.name(),
        hz
    )?;
    Ok(total)
}
