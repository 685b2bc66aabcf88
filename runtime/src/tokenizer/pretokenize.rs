//! The GPT-2 pre-tokenizer split, by hand (no regex engine):
//!
//! ```text
//! 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//! ```
//!
//! Character classes: exactly the regex engine's `\p{L}`, `\p{N}` and
//! `\s` (Unicode 16.0.0 tables in `unicode.rs`, see there).

pub use super::unicode::{is_letter, is_number, is_space};

/// `[^\s\p{L}\p{N}]`.
pub fn is_other(c: char) -> bool {
    !is_letter(c) && !is_number(c) && !is_space(c)
}

const CONTRACTIONS: [&str; 7] = ["s", "t", "re", "ve", "m", "ll", "d"];

/// End (byte index) of the run of characters of `s` from `from` satisfying `f`.
fn run_end(s: &str, from: usize, f: fn(char) -> bool) -> usize {
    match s[from..].char_indices().find(|&(_, c)| !f(c)) {
        Some((i, _)) => from + i,
        None => s.len(),
    }
}

/// Byte length of the pre-token starting at the beginning of `s` (0 only for
/// an empty `s`). `s` must start at a pre-token boundary.
pub fn next_piece_len(s: &str) -> usize {
    let mut chars = s.chars();
    let c = match chars.next() {
        Some(c) => c,
        None => return 0,
    };
    if c == '\'' {
        let rest = &s[1..];
        for suf in CONTRACTIONS {
            if rest.starts_with(suf) {
                return 1 + suf.len();
            }
        }
    }
    let next = chars.next();
    for class in [is_letter as fn(char) -> bool, is_number, is_other] {
        if class(c) {
            return run_end(s, c.len_utf8(), class);
        }
        if c == ' ' && next.is_some_and(class) {
            return run_end(s, 1, class);
        }
    }
    // `c` is whitespace (every character is in exactly one of the classes).
    let end = run_end(s, 0, is_space);
    if end == s.len() {
        return end; // \s+(?!\S) at the end of the text
    }
    // Followed by a non-space: \s+(?!\S) backtracks one character if that
    // leaves at least one, otherwise \s+ takes the single character.
    match s[..end].char_indices().next_back() {
        Some((last, _)) if last > 0 => last,
        _ => end,
    }
}

/// Iterator over the GPT-2 pre-tokens of a string.
#[derive(Clone, Debug)]
pub struct Pieces<'s> {
    rest: &'s str,
}

impl<'s> Pieces<'s> {
    pub fn new(s: &'s str) -> Self {
        Pieces { rest: s }
    }
}

impl<'s> Iterator for Pieces<'s> {
    type Item = &'s str;
    fn next(&mut self) -> Option<&'s str> {
        let n = next_piece_len(self.rest);
        if n == 0 {
            return None;
        }
        let (piece, rest) = self.rest.split_at(n);
        self.rest = rest;
        Some(piece)
    }
}
