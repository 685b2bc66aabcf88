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
    pending: [u8; 4],
    len: u8,
}

const REPLACEMENT: &str = "\u{FFFD}";

impl Utf8Stream {
    pub fn new() -> Self {
        Utf8Stream { pending: [0; 4], len: 0 }
    }

    /// Bytes held back (an incomplete character), 0..=3.
    pub fn pending_len(&self) -> usize {
        self.len as usize
    }

    /// Feeds `bytes`; `emit` receives every complete piece of text.
    pub fn push(&mut self, bytes: &[u8], emit: &mut dyn FnMut(&str)) {
        let mut input = bytes;
        // Complete (or reject) the held-back character first. The window
        // holds at most 4 bytes, enough to decide the first character.
        while self.len > 0 && !input.is_empty() {
            let plen = self.len as usize;
            let take = core::cmp::min(4 - plen, input.len());
            let mut tmp = [0u8; 4];
            tmp[..plen].copy_from_slice(&self.pending[..plen]);
            tmp[plen..plen + take].copy_from_slice(&input[..take]);
            let window = &tmp[..plen + take];
            match core::str::from_utf8(window) {
                Ok(s) => {
                    emit(s);
                    self.len = 0;
                    input = &input[take..];
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    if valid > 0 {
                        // The held-back character is complete (valid > plen
                        // because the pending bytes alone were incomplete).
                        if let Ok(s) = core::str::from_utf8(&window[..valid]) {
                            emit(s);
                        }
                        self.len = 0;
                        input = &input[valid.saturating_sub(plen)..];
                    } else {
                        match e.error_len() {
                            Some(n) => {
                                emit(REPLACEMENT);
                                self.len = 0;
                                input = &input[n.saturating_sub(plen)..];
                            }
                            None => {
                                // Still incomplete: all of `input` fit in the window.
                                let n = window.len();
                                self.pending[..n].copy_from_slice(window);
                                self.len = n as u8;
                                input = &[];
                            }
                        }
                    }
                }
            }
        }
        while !input.is_empty() {
            match core::str::from_utf8(input) {
                Ok(s) => {
                    emit(s);
                    return;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    if valid > 0 {
                        if let Ok(s) = core::str::from_utf8(&input[..valid]) {
                            emit(s);
                        }
                    }
                    match e.error_len() {
                        Some(n) => {
                            emit(REPLACEMENT);
                            input = &input[valid + n..];
                        }
                        None => {
                            let rest = &input[valid..];
                            let n = core::cmp::min(rest.len(), 3);
                            self.pending[..n].copy_from_slice(&rest[..n]);
                            self.len = n as u8;
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Ends the stream: a held-back incomplete character becomes one U+FFFD.
    pub fn finish(&mut self, emit: &mut dyn FnMut(&str)) {
        if self.len > 0 {
            self.len = 0;
            emit(REPLACEMENT);
        }
    }
}
