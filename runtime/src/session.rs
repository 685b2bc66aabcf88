//! A generation session: one domain, one arena, a prompt, then tokens
//! streamed one at a time. Nothing here allocates.

use core::ops::ControlFlow;

use crate::arena::{Layout, RunState};
use crate::error::{Error, Result};
use crate::forward::{forward, forward_block, forward_block_nll, head_nll_applies, BlockLogits, Exec};
use crate::kernels::{Kernels, Parallel};
use crate::kv::KvType;
use crate::model::{Domain, Model};
use crate::sampler::{sample, Rng, SamplerConfig};
use crate::tokenizer::Utf8Stream;

/// Tokens per block of the batched prompt path by default. With `std`: 64:
/// each weight tile is fetched from memory once per 64 tokens, and a 2-thread
/// pool hands each thread 32 tokens a block; prompts ran 3–9 % faster than
/// with 32 at one thread (15M shape, simultaneous A/B; `eval` of the shipped
/// model the same; docs/BENCHMARKS.md) for 5.3 KiB of arena per token on the shipped models
/// (12.7 KiB on the 15M shape; docs/FORMAT.md). Without `std` (firmware): 0,
/// blocks off, so a microcontroller's arena stays as small as before unless
/// it opts in; results are bit-identical either way (except where the kernel
/// table's `MatmulOrder` is not the matvec's: AVX-512, see `kernels`).
#[cfg(feature = "std")]
pub const DEFAULT_BLOCK: usize = 64;
/// See the `std` definition: blocks off by default without `std`.
#[cfg(not(feature = "std"))]
pub const DEFAULT_BLOCK: usize = 0;

/// Session settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SessionOptions {
    /// Context length of this session (≤ the model's `max_seq_len`); the
    /// arena must hold `model.arena_bytes_for(&opts)` bytes.
    pub max_seq: usize,
    pub sampler: SamplerConfig,
    /// Keep the end of a prompt that does not fit, instead of failing.
    pub truncate_prompt: bool,
    /// Element type of the KV cache (default f32; f16 halves it, see `kv.rs`).
    pub kv: KvType,
    /// Tokens per block when a prompt (or [`Session::extend`]) runs through
    /// the model as a matrix × matrix product (default [`DEFAULT_BLOCK`],
    /// clamped to `max_seq`). 0 or 1: one token at a time, no block buffers
    /// in the arena (the smallest arena, for microcontrollers).
    pub block: usize,
    /// Also keep the logits of every token of a block (`4 · block · vocab`
    /// arena bytes), so [`Session::extend_scored`] (bits-per-byte
    /// evaluation) runs in blocks too; without it, it runs token by token.
    pub block_logits: bool,
}

impl SessionOptions {
    pub fn new(max_seq: usize) -> Self {
        SessionOptions {
            max_seq,
            sampler: SamplerConfig::default(),
            truncate_prompt: false,
            kv: KvType::F32,
            block: DEFAULT_BLOCK,
            block_logits: false,
        }
    }

    /// Tokens per block actually used (0: the batched path is off).
    pub fn block_len(&self) -> usize {
        match self.block.min(self.max_seq) {
            0 | 1 => 0,
            b => b,
        }
    }
}

/// Receives `(index in the run, logits after that token)` ([`Session::extend_scored`]).
pub type OnLogits<'f> = dyn FnMut(usize, &[f32]) + 'f;

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced its end-of-text token.
    EndOfText,
    /// The requested number of tokens was generated.
    MaxTokens,
    /// The context is full.
    ContextFull,
    /// The caller's callback asked to stop ([`Session::generate_while`]).
    Stopped,
}

pub struct Session<'m, 'a> {
    model: &'m Model<'a>,
    domain: &'m Domain<'a>,
    kernels: &'static Kernels,
    /// Splits large matrix-vector products across threads when set.
    par: Option<&'m dyn Parallel>,
    state: RunState<'m>,
    opts: SessionOptions,
    rng: Rng,
    /// Tokens in the context (their K/V are cached, except the last one's
    /// when `pending` is set: it has been chosen but not yet run).
    len: usize,
    /// Whether `state.logits` holds the prediction after the last token.
    have_logits: bool,
}

impl<'m, 'a> Session<'m, 'a> {
    /// Opens a session on `domain` using `arena` for every buffer.
    pub fn new(model: &'m Model<'a>, domain: &str, arena: &'m mut [u8], opts: SessionOptions) -> Result<Self> {
        let domain = model.domain(domain)?;
        Self::with_domain(model, domain, arena, opts)
    }

    /// Opens a session on `domain`, one of `model.domains()`.
    pub fn with_domain(
        model: &'m Model<'a>,
        domain: &'m Domain<'a>,
        arena: &'m mut [u8],
        opts: SessionOptions,
    ) -> Result<Self> {
        // The arena and the forward pass are sized by this model's domains only.
        if !model.domains().iter().any(|d| core::ptr::eq(d, domain)) {
            return Err(Error::UnknownDomain(crate::error::Name::new(domain.name)));
        }
        let limit = model.config().max_seq_len as usize;
        if opts.max_seq == 0 || opts.max_seq > limit {
            return Err(Error::SeqTooLong { requested: opts.max_seq, limit });
        }
        opts.sampler.validate()?;
        let layout = Layout::new(model, &opts);
        let state = RunState::carve(&layout, arena)?;
        Ok(Session {
            model,
            domain,
            kernels: crate::kernels::best(),
            par: None,
            state,
            opts,
            rng: Rng::new(opts.sampler.seed),
            len: 0,
            have_logits: false,
        })
    }

    /// Uses a specific kernel table (tests and benchmarks).
    pub fn set_kernels(&mut self, k: &'static Kernels) {
        self.kernels = k;
    }

    pub fn kernels(&self) -> &'static Kernels {
        self.kernels
    }

    /// Splits large matrix-vector products across `par` (e.g. a
    /// [`crate::threads::Pool`], or a firmware's second core).
    pub fn set_parallel(&mut self, par: &'m dyn Parallel) {
        self.par = Some(par);
    }

    /// Runs large matrix-vector products on `pool`'s threads.
    #[cfg(feature = "std")]
    pub fn set_pool(&mut self, pool: &'m crate::threads::Pool) {
        self.par = Some(pool);
    }

    /// Back to one thread.
    pub fn clear_parallel(&mut self) {
        self.par = None;
    }

    pub fn domain(&self) -> &'m Domain<'a> {
        self.domain
    }

    /// Context length of this session.
    pub fn max_seq(&self) -> usize {
        self.opts.max_seq
    }

    /// Tokens in the context.
    pub fn tokens(&self) -> &[u32] {
        // `len <= max_seq`, the buffer's length: always `Some`.
        self.state.tokens.get(..self.len).unwrap_or_default()
    }

    /// Forgets the context (the RNG continues).
    pub fn reset(&mut self) {
        self.len = 0;
        self.have_logits = false;
    }

    /// Runs `token` at the next position; returns the logits that follow it.
    pub fn step(&mut self, token: u32) -> Result<&[f32]> {
        self.push(token, true)?;
        Ok(self.logits())
    }

    /// Logits after the last token (empty before the first step).
    pub fn logits(&self) -> &[f32] {
        if self.have_logits {
            // The buffer holds the largest vocabulary of the model: always `Some`.
            self.state.logits.get(..self.domain.vocab_size).unwrap_or_default()
        } else {
            &[]
        }
    }

    fn push(&mut self, token: u32, logits: bool) -> Result<()> {
        if token as usize >= self.domain.vocab_size {
            return Err(Error::BadToken(token));
        }
        let pos = self.len;
        let full = Error::ContextFull { limit: self.opts.max_seq };
        if pos >= self.opts.max_seq {
            return Err(full);
        }
        // (`forward` does not read `tokens`: storing first is the same.)
        *self.state.tokens.get_mut(pos).ok_or(full)? = token;
        let exec = Exec { kernels: self.kernels, par: self.par };
        forward(exec, self.model, self.domain, &mut self.state, token, pos, logits)?;
        self.len += 1;
        self.have_logits = logits;
        Ok(())
    }

    /// Starts a new context with BOS (and the domain tag), then `text`.
    /// An empty prompt starts from BOS alone. Returns the prompt's token count.
    pub fn feed_prompt(&mut self, text: &str) -> Result<usize> {
        self.reset();
        let tok = self.domain.tokenizer;
        let mut n = 0;
        let prefix = [tok.info().bos, self.domain.tag_token];
        let cap = self.opts.max_seq;
        for t in prefix.into_iter().flatten() {
            let slot = self.state.tokens.get_mut(n).filter(|_| n < cap);
            *slot.ok_or(Error::PromptTooLong { tokens: n + 1, limit: cap })? = t;
            n += 1;
        }
        // Leave room for at least one generated token.
        let room = cap.saturating_sub(n + 1);
        let out = self.state.tokens.get_mut(n..n + room).ok_or(Error::PromptTooLong { tokens: n + 1, limit: cap })?;
        let text_tokens = match tok.encode(text, out) {
            Ok(k) => k,
            Err(Error::PromptTooLong { tokens, .. }) if !self.opts.truncate_prompt => {
                return Err(Error::PromptTooLong { tokens: tokens + n, limit: room + n })
            }
            Err(Error::PromptTooLong { .. }) => self.encode_tail(text, n, room)?,
            Err(e) => return Err(e),
        };
        let total = n + text_tokens;
        if total == 0 {
            return Err(Error::BadTokenizer("the tokenizer has no BOS token, so a prompt cannot be empty"));
        }
        self.run_stored(total, None)?;
        Ok(total)
    }

    /// Runs `tokens` at the next positions (in blocks of
    /// [`SessionOptions::block_len`] tokens when the session has block
    /// buffers, else one by one); returns the logits after the last one.
    /// Nothing runs when a token is out of range or the context cannot hold
    /// them all.
    pub fn extend(&mut self, tokens: &[u32]) -> Result<&[f32]> {
        if tokens.is_empty() {
            return Ok(self.logits());
        }
        self.stage(tokens)?;
        self.run_stored(self.len + tokens.len(), None)?;
        Ok(self.logits())
    }

    /// Like [`Session::extend`], and calls `on_logits(i, logits)` with the
    /// logits after each `tokens[i]`, in order (scoring, see `bpb`). Runs in
    /// blocks only when the session keeps block logits
    /// ([`SessionOptions::block_logits`]).
    pub fn extend_scored(&mut self, tokens: &[u32], on_logits: &mut dyn FnMut(usize, &[f32])) -> Result<()> {
        if tokens.is_empty() {
            return Ok(());
        }
        self.stage(tokens)?;
        self.run_stored(self.len + tokens.len(), Some(on_logits))
    }

    /// Scores `tokens` run after the context: `on_nll(i, nats)` with
    /// `-ln softmax(logits after tokens[i])[targets[i]]`, in order (bits per
    /// byte, see `bpb`). On a table with a fused head ([`Kernels::head_nll`],
    /// AVX-512) whose head is q8 or q4, with block buffers, blocks go
    /// through it (the head on the calling thread, so every thread count
    /// gives the same sums) and no logits are kept ([`Session::logits`] is
    /// empty afterwards); else as [`Session::extend_scored`] with
    /// [`crate::bpb::nll_with`]. Either way within the tolerance of the
    /// batched path against the token-by-token one (`tests/batch.rs`).
    pub fn extend_nll(&mut self, tokens: &[u32], targets: &[u32], on_nll: &mut dyn FnMut(usize, f64)) -> Result<()> {
        if targets.len() != tokens.len() {
            return Err(Error::BadSetting("extend_nll: one target per token"));
        }
        if let Some(&bad) = targets.iter().find(|&&t| t as usize >= self.domain.vocab_size) {
            return Err(Error::BadToken(bad));
        }
        let block = self.state.block.len;
        if tokens.is_empty() || block == 0 || !head_nll_applies(self.kernels, self.domain) {
            let k = self.kernels;
            let mut failed = Ok(());
            self.extend_scored(tokens, &mut |i, logits| {
                if failed.is_ok() {
                    match targets.get(i).map(|&t| crate::bpb::nll_with(k, logits, t)) {
                        Some(Ok(nats)) => on_nll(i, nats),
                        Some(Err(e)) => failed = Err(e),
                        None => failed = Err(Error::BadSetting("extend_nll: logits past the targets")),
                    }
                }
            })?;
            return failed;
        }
        self.stage(tokens)?;
        let (start, end) = (self.len, self.len + tokens.len());
        let exec = Exec { kernels: self.kernels, par: self.par };
        let mut pos = start;
        while pos < end {
            let n = block.min(end - pos);
            let want = targets.get(pos - start..pos - start + n).unwrap_or_default();
            let at = pos - start;
            forward_block_nll(exec, self.model, self.domain, &mut self.state, pos, n, want, &mut |t, nats| {
                on_nll(at + t, nats)
            })?;
            pos += n;
            self.len = pos;
        }
        self.have_logits = false;
        Ok(())
    }

    /// Checks `tokens` and copies them after the context (not yet run).
    fn stage(&mut self, tokens: &[u32]) -> Result<()> {
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.domain.vocab_size) {
            return Err(Error::BadToken(bad));
        }
        let full = Error::ContextFull { limit: self.opts.max_seq };
        if self.len + tokens.len() > self.opts.max_seq {
            return Err(full);
        }
        self.state.tokens.get_mut(self.len..self.len + tokens.len()).ok_or(full)?.copy_from_slice(tokens);
        Ok(())
    }

    /// Runs the checked tokens `state.tokens[len..end]`, leaving the logits
    /// after the last one; `on_logits` gets every token's.
    fn run_stored(&mut self, end: usize, mut on_logits: Option<&mut OnLogits<'_>>) -> Result<()> {
        let start = self.len;
        let block = self.state.block.len;
        let all = on_logits.is_some();
        let exec = Exec { kernels: self.kernels, par: self.par };
        let vocab = self.domain.vocab_size;
        let stride = self.domain.head.rows;
        // Positions below `end` were checked and stored (`stage`, `feed_prompt`).
        let full = Error::ContextFull { limit: self.opts.max_seq };
        // per-token: no block buffers, or scoring without block logits
        if block == 0 || (all && self.state.block.logits.is_empty()) {
            for pos in start..end {
                let t = *self.state.tokens.get(pos).ok_or(full.clone())?;
                self.push(t, all || pos + 1 == end)?;
                if let Some(f) = on_logits.as_mut() {
                    f(pos - start, self.logits());
                }
            }
            return Ok(());
        }
        let mut pos = start;
        while pos < end {
            let n = block.min(end - pos);
            let last = pos + n == end;
            if n == 1 && !all {
                // a lone token: the one-token path is the same arithmetic
                let t = *self.state.tokens.get(pos).ok_or(full.clone())?;
                forward(exec, self.model, self.domain, &mut self.state, t, pos, last)?;
            } else {
                let want = match (all, last) {
                    (true, _) => BlockLogits::All,
                    (false, true) => BlockLogits::Last,
                    (false, false) => BlockLogits::None,
                };
                forward_block(exec, self.model, self.domain, &mut self.state, pos, n, want)?;
                if let Some(f) = on_logits.as_mut() {
                    // rows of `[block, stride]`, the first `vocab` of each
                    let rows = self.state.block.logits.chunks(stride.max(1)).take(n);
                    let mut row = &[][..];
                    for (t, r) in rows.enumerate() {
                        row = r.get(..vocab).ok_or(Error::BadConfig("head rows are fewer than the vocabulary"))?;
                        f(pos - start + t, row);
                    }
                    if last {
                        // `logits()` after the last token, as the per-token path leaves it
                        for (o, &l) in self.state.logits.iter_mut().zip(row) {
                            *o = l;
                        }
                    }
                }
            }
            pos += n;
            self.len = pos;
        }
        self.have_logits = true;
        Ok(())
    }

    /// Encodes the longest suffix of `text` (cut at a char boundary) that fits in `room` tokens.
    fn encode_tail(&mut self, text: &str, at: usize, room: usize) -> Result<usize> {
        let tok = self.domain.tokenizer;
        let out = self.state.tokens.get_mut(at..at + room).ok_or(Error::PromptTooLong { tokens: at + 1, limit: at })?;
        // binary search on the start offset: later starts give fewer tokens
        let (mut lo, mut hi) = (0usize, text.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            let mut start = mid;
            while !text.is_char_boundary(start) {
                start += 1;
            }
            if text.get(start..).is_some_and(|t| tok.encode(t, out).is_ok()) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        let mut start = lo;
        while !text.is_char_boundary(start) {
            start += 1;
        }
        tok.encode(text.get(start..).unwrap_or(""), out)
    }

    /// Chooses the next token from the current logits and runs it.
    /// `Ok(None)` at end-of-text or when the context is full.
    pub fn next_token(&mut self) -> Result<Option<u32>> {
        if !self.have_logits {
            if self.len > 0 {
                // generation already ended (end-of-text or full context); feed a new prompt to go on
                return Ok(None);
            }
            // nothing fed yet: start from BOS
            self.feed_prompt("")?;
        }
        let vocab = self.domain.vocab_size;
        // Both always `Some`: `len <= max_seq` and the buffers are sized for the model.
        let history = self.state.tokens.get(..self.len).ok_or(Error::ContextFull { limit: self.opts.max_seq })?;
        let logits = self
            .state
            .logits
            .get_mut(..vocab)
            .ok_or(Error::BadConfig("logits buffer is shorter than the vocabulary"))?;
        let next = sample(&self.opts.sampler, &mut self.rng, logits, history, self.state.scratch)?;
        self.have_logits = false;
        if Some(next) == self.domain.tokenizer.info().eos {
            return Ok(None);
        }
        if self.len >= self.opts.max_seq {
            return Ok(None);
        }
        self.push(next, true)?;
        Ok(Some(next))
    }

    /// Generates up to `max_tokens` tokens after the prompt, streaming text
    /// (complete UTF-8 only; special tokens are not printed) to `on_text`.
    pub fn generate(&mut self, max_tokens: usize, on_text: &mut dyn FnMut(&str)) -> Result<StopReason> {
        self.generate_while(max_tokens, &mut |text| {
            on_text(text);
            ControlFlow::Continue(())
        })
    }

    /// Like [`Session::generate`], but `on_text` may return
    /// `ControlFlow::Break(())` to stop ([`StopReason::Stopped`]): no token is
    /// generated and no text is passed after that.
    pub fn generate_while(
        &mut self,
        max_tokens: usize,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<StopReason> {
        let stopped = core::cell::Cell::new(false);
        let mut emit = |text: &str| {
            if !stopped.get() {
                stopped.set(on_text(text).is_break());
            }
        };
        let mut utf8 = Utf8Stream::new();
        let tok = self.domain.tokenizer;
        let mut reason = StopReason::MaxTokens;
        for _ in 0..max_tokens {
            if self.len >= self.opts.max_seq {
                reason = StopReason::ContextFull;
                break;
            }
            let prev = self.tokens().last().copied();
            match self.next_token()? {
                None => {
                    reason =
                        if self.len >= self.opts.max_seq { StopReason::ContextFull } else { StopReason::EndOfText };
                    break;
                }
                Some(t) if tok.is_special(t) => {}
                Some(t) => {
                    utf8.push(tok.decode_piece(prev, t), &mut emit);
                    if stopped.get() {
                        return Ok(StopReason::Stopped);
                    }
                }
            }
        }
        utf8.finish(&mut emit);
        Ok(if stopped.get() { StopReason::Stopped } else { reason })
    }
}

/// Iterator over generated token ids (see [`Session::tokens_iter`]).
pub struct TokenIter<'s, 'm, 'a> {
    session: &'s mut Session<'m, 'a>,
    left: usize,
}

impl Iterator for TokenIter<'_, '_, '_> {
    type Item = Result<u32>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        self.session.next_token().transpose()
    }
}

impl<'m, 'a> Session<'m, 'a> {
    /// Up to `max_tokens` generated token ids; ends at end-of-text or a full context.
    pub fn tokens_iter(&mut self, max_tokens: usize) -> TokenIter<'_, 'm, 'a> {
        TokenIter { session: self, left: max_tokens }
    }
}
