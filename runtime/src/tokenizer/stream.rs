//! Streaming UTF-8 assembly for generated tokens.

/// Turns a stream of token bytes into `&str` pieces without allocating.
///
/// A token may end in the middle of a multi-byte character; the incomplete
/// tail (at most 3 bytes) is held back until the next `push` completes it.
/// Invalid bytes become U+FFFD exactly as [`String::from_utf8_lossy`] would
/// replace them in the concatenation of everything pushed: for any way of
/// splitting a byte sequence into pushes, the emitted text is the same.
///
/// [`String::from_utf8_lossy`]: https://doc.rust-lang.org/std/string/struct.String.html#method.from_utf8_lossy
#[derive(Clone, Debug, Default)]
pub struct Utf8Stream {
    /// An incomplete character held back: at most 3 bytes, room for a 4th
    /// while deciding it.
    pending: heapless::Vec<u8, 4>,
}

const REPLACEMENT: &str = "\u{FFFD}";

impl Utf8Stream {
    pub fn new() -> Self {
        Utf8Stream { pending: heapless::Vec::new() }
    }

    /// Bytes held back (an incomplete character), 0..=3.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Feeds `bytes`; `emit` receives every complete piece of text.
    pub fn push(&mut self, bytes: &[u8], emit: &mut dyn FnMut(&str)) {
        let mut input = bytes;
        // Complete (or reject) the held-back character first, a byte at a
        // time: at most 3 more bytes decide it.
        while !self.pending.is_empty() {
            let Some((&b, rest)) = input.split_first() else { return };
            // A held-back prefix is at most 3 bytes, so the push fits.
            let fits = self.pending.push(b).is_ok();
            match core::str::from_utf8(&self.pending) {
                Ok(s) => {
                    emit(s);
                    self.pending.clear();
                    input = rest;
                }
                Err(e) if fits && e.error_len().is_none() => input = rest, // still incomplete
                Err(_) => {
                    // The held-back bytes are one invalid sequence (one
                    // U+FFFD, as from_utf8_lossy); `b` starts afresh.
                    self.pending.clear();
                    emit(REPLACEMENT);
                }
            }
        }
        let mut chunks = input.utf8_chunks().peekable();
        while let Some(chunk) = chunks.next() {
            if !chunk.valid().is_empty() {
                emit(chunk.valid());
            }
            let invalid = chunk.invalid();
            if invalid.is_empty() {
                continue;
            }
            // An incomplete character at the very end waits for the next push.
            let incomplete =
                chunks.peek().is_none() && core::str::from_utf8(invalid).is_err_and(|e| e.error_len().is_none());
            if !(incomplete && self.pending.extend_from_slice(invalid).is_ok()) {
                emit(REPLACEMENT);
            }
        }
    }

    /// Ends the stream: a held-back incomplete character becomes one U+FFFD.
    pub fn finish(&mut self, emit: &mut dyn FnMut(&str)) {
        if !self.pending.is_empty() {
            self.pending.clear();
            emit(REPLACEMENT);
        }
    }
}
