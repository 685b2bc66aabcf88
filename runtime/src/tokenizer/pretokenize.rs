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

/// Byte length of the run of characters at the start of `s` satisfying `f`.
fn run_len(s: &str, f: fn(char) -> bool) -> usize {
    match s.char_indices().find(|&(_, c)| !f(c)) {
        Some((i, _)) => i,
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
    let after_c = chars.as_str();
    if c == '\'' {
        for suf in CONTRACTIONS {
            if after_c.starts_with(suf) {
                return 1 + suf.len();
            }
        }
    }
    let next = chars.next();
    for class in [is_letter as fn(char) -> bool, is_number, is_other] {
        if class(c) {
            return c.len_utf8() + run_len(after_c, class);
        }
        if c == ' ' && next.is_some_and(class) {
            return 1 + run_len(after_c, class);
        }
    }
    // `c` is whitespace (every character is in exactly one of the classes).
    // Followed by a non-space: \s+(?!\S) backtracks one character if that
    // leaves at least one, otherwise \s+ takes the single character.
    let mut last = 0;
    for (i, ch) in s.char_indices() {
        if !is_space(ch) {
            return if last > 0 { last } else { i };
        }
        last = i;
    }
    s.len() // \s+(?!\S) at the end of the text
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
        // `n` is a character boundary; were it not, the rest would be one piece.
        let (piece, rest) = self.rest.split_at_checked(n).unwrap_or((self.rest, ""));
        self.rest = rest;
        Some(piece)
    }
}
