//! Tokenizer parity: the runtime's allocation-free tokenizers against
//! Hugging Face `tokenizers` (byte-level BPE, imported from `tokenizer.json`)
//! and against a direct port of llama2.c `run.c` (SentencePiece-style BPE,
//! imported from `tokenizer.bin`), through a real `.edgelm` file.

use edgelm_convert::tokenizer_import::{from_llama2c_tokenizer_bin, from_tokenizer_json, TokenizerTables};
use edgelm_runtime::format::{Config, FileKind, FileWriter};
use edgelm_runtime::tokenizer::{pretokenize, Tokenizer, Utf8Stream};
use edgelm_runtime::{AlignedBytes, Error, ModelFile, VerifyChecksum};
use edgelm_trainer::tokenizer::EdgeTokenizer;
use proptest::prelude::*;
use std::sync::OnceLock;

const FIXTURE: &str = "\
Once upon a time, there was a little girl named Lily. She loved to play outside in the park.
One day, she saw a big, red ball. \"Can I play with it?\" she asked her mom.
Her mom said, \"Yes, but don't go too far!\" Lily smiled and ran to the ball.
The ball rolled down the hill... and into the pond! Lily was sad; she couldn't reach it.
A friendly frog named Ben jumped out. \"I'll help you,\" he said. They're friends now.
Lily's café had crêpes, jalapeños and piñatas. Zoë and Chloé ate naïve crème brûlée.
In 2023 they counted 1,234 stars and 56 moons; 7.5% were très jolies.
Tom said:   \"Wait!\"\t\tHe ran.  Then he stopped.
\n\nThe end.\n
Once upon a time, a cat and a dog went to the market. They've got apples, pears & figs.
The dog's name was Max; the cat's name was Mia. We'd like to meet them. I'm sure you'd too.
Über-fast trains go from München to Zürich. Ça va? Ñandú, señor! Ångström, Øresund, Æsir.
Σωκράτης, Москва и 東京 — languages 😀 emoji 👍🏽 and symbols © ® ™ § ¶ • … ½ ¼.
";

fn fixture_docs() -> Vec<String> {
    // Repeat so that merges reach min_frequency and the vocabulary fills up.
    let mut docs = Vec::new();
    for i in 0..6 {
        for line in FIXTURE.lines() {
            docs.push(format!("{line} {i}\n"));
        }
    }
    docs
}

/// The Hugging Face tokenizer trained by `edgelm-train tokenizer`'s own code,
/// reloaded from its JSON text, and that JSON.
fn hf() -> &'static (tokenizers::Tokenizer, String) {
    static HF: OnceLock<(tokenizers::Tokenizer, String)> = OnceLock::new();
    HF.get_or_init(|| {
        let trained = EdgeTokenizer::train(fixture_docs().into_iter(), 600, &["story".to_string()]).unwrap();
        let json = trained.json().to_string();
        let reloaded: tokenizers::Tokenizer = json.parse().unwrap();
        (reloaded, json)
    })
}

fn config(vocab: usize) -> Config {
    Config {
        dim: 8,
        n_layers: 1,
        n_heads: 2,
        n_kv_heads: 2,
        ffn_dim: 8,
        vocab_size: vocab as u32,
        max_seq_len: 64,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
        tied_head: true,
    }
}

/// An `.edgelm` file holding only the tokenizer tables (and a tiny config).
fn edgelm_file(t: &TokenizerTables) -> AlignedBytes {
    let mut w = FileWriter::new(FileKind::Base, "tokenizer-parity", config(t.vocab_size()));
    t.write(&mut w, "").unwrap();
    AlignedBytes::from_slice(&w.to_bytes().unwrap())
}

struct Loaded {
    bytes: AlignedBytes,
    tables: TokenizerTables,
}

impl Loaded {
    fn tokenizer(&self) -> Tokenizer<'_> {
        let file = ModelFile::parse(&self.bytes, VerifyChecksum::Yes).unwrap();
        Tokenizer::from_file(&file, "", self.tables.info, self.tables.vocab_size()).unwrap()
    }
}

fn bpe() -> &'static Loaded {
    static L: OnceLock<Loaded> = OnceLock::new();
    L.get_or_init(|| {
        let tables = from_tokenizer_json(&hf().1).unwrap();
        Loaded { bytes: edgelm_file(&tables), tables }
    })
}

fn ours(tok: &Tokenizer<'_>, text: &str) -> Vec<u32> {
    let mut out = vec![0u32; text.len() + 2];
    let n = tok.encode(text, &mut out).unwrap();
    out.truncate(n);
    out
}

fn theirs(text: &str) -> Vec<u32> {
    hf().0.encode(text, false).unwrap().get_ids().to_vec()
}

fn decode(tok: &Tokenizer<'_>, ids: &[u32]) -> String {
    let mut s = Utf8Stream::new();
    let mut text = String::new();
    let mut prev = None;
    for &id in ids {
        s.push(tok.decode_piece(prev, id), &mut |p| text.push_str(p));
        prev = Some(id);
    }
    s.finish(&mut |p| text.push_str(p));
    text
}

fn check_bpe(text: &str) -> Result<(), TestCaseError> {
    let tok = bpe().tokenizer();
    let want = theirs(text);
    let got = ours(&tok, text);
    prop_assert_eq!(&got, &want, "text {:?}", text);
    prop_assert_eq!(&decode(&tok, &got), text);
    prop_assert_eq!(&hf().0.decode(&got, false).unwrap(), text);
    Ok(())
}

#[test]
fn imported_tables_look_right() {
    let (hf, _) = hf();
    let l = bpe();
    assert_eq!(l.tables.vocab_size(), hf.get_vocab_size(true));
    assert!(l.tables.vocab_size() > 400, "training should fill most of the 600 slots");
    assert_eq!(l.tables.info.bos, Some(0));
    assert_eq!(l.tables.info.eos, Some(0));
    assert_eq!(l.tables.special, vec![0, 1]);
    assert!(l.tables.merges.len() > 100);
    let tok = l.tokenizer();
    assert!(tok.is_special(1) && !tok.is_special(300));
    assert_eq!(tok.token_bytes(0), b"<|endoftext|>");
}

#[test]
fn bpe_parity_on_fixture_and_samples() {
    let samples = [
        "",
        " ",
        "Once upon a time",
        "<|endoftext|>",
        "<|story|>Once upon a time<|endoftext|>",
        "x<|endoftext|>y <|story|> z<|endoftext|><|endoftext|>",
        "<|endoftext|",
        "<|endof<|endoftext|>text|>",
        "a  b   c    d\n\ne\n\n\nf \n g\t\th \t i",
        "   leading and trailing   ",
        "\n\n\n",
        "          ",
        "\r\n\r\nwindows\r\n",
        " \u{a0}nbsp\u{2003}em\u{3000}ideographic",
        "don't I'm we'll they're I've you'd it's 'S 'sup ''s",
        "1234567890 3.14159 1,000,000 ½ ² ③",
        "crème brûlée, naïve café, jalapeño, Zoë, Ærø, ÿ",
        "日本語のテキスト 中文 한국어 Ελληνικά русский עברית العربية",
        "emoji 😀😀 👍🏽 🇫🇷 family 👨‍👩‍👧",
        "हिन्दी भाषा, தமிழ், ไทย, e\u{301}te\u{301}, Ⓐⓑ Ⅻ ⅻ ①",
        "symbols !@#$%^&*()_+-=[]{}|;':\",./<>?`~",
        "mixed123abc abc123 _under_score_ CamelCase",
    ];
    for s in samples {
        check_bpe(s).unwrap();
    }
    for line in FIXTURE.lines() {
        check_bpe(line).unwrap();
    }
    check_bpe(FIXTURE).unwrap();
    for doc in fixture_docs() {
        check_bpe(&doc).unwrap();
    }
    let big = fixture_docs().concat();
    check_bpe(&big).unwrap();
    check_bpe(&" ".repeat(3000)).unwrap();
    check_bpe(&"\n".repeat(500)).unwrap();
    check_bpe(&"ab".repeat(500)).unwrap();
}

/// Whether the runtime's tables agree with the regex engine's classes on `c`.
fn classes_agree(c: char) -> bool {
    static RE: OnceLock<[fancy_regex::Regex; 3]> = OnceLock::new();
    let [l, n, s] = RE.get_or_init(|| [r"^\p{L}$", r"^\p{N}$", r"^\s$"].map(|p| fancy_regex::Regex::new(p).unwrap()));
    let t = c.to_string();
    l.is_match(&t).unwrap() == pretokenize::is_letter(c)
        && n.is_match(&t).unwrap() == pretokenize::is_number(c)
        && s.is_match(&t).unwrap() == pretokenize::is_space(c)
}

#[test]
fn classes_match_the_regex_on_every_code_point() {
    let bad: Vec<char> = (0u32..0x110000).filter_map(char::from_u32).filter(|&c| !classes_agree(c)).take(10).collect();
    assert!(bad.is_empty(), "classes differ from the regex on {bad:?}");
}

fn text_strategy() -> impl Strategy<Value = String> {
    let pieces = prop::sample::select(vec![
        " ",
        "  ",
        "\n",
        "\t",
        "the",
        " the",
        "a",
        "Lily",
        "'s",
        "'ll",
        "don't",
        ".",
        ",",
        "!",
        "\"",
        "é",
        "ñ",
        "ü",
        "ß",
        "1",
        "42",
        "2023",
        "<|endoftext|>",
        "<|story|>",
        "日本",
        "😀",
        "👍🏽",
        "\u{a0}",
        "\r\n",
        "café",
        "—",
        "…",
    ]);
    prop::collection::vec(pieces, 0..30).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn bpe_parity_random_ascii(s in "[ -~\t\n]{0,80}") {
        check_bpe(&s)?;
    }

    #[test]
    fn bpe_parity_random_pieces(s in text_strategy()) {
        check_bpe(&s)?;
    }

    #[test]
    fn bpe_parity_random_unicode(s in any::<String>()) {
        check_bpe(&s)?;
    }

    #[test]
    fn bpe_parity_random_marks_and_scripts(s in "[\\p{M}\\p{L}\\p{N}\\p{S}\\p{P}\\s]{0,40}") {
        check_bpe(&s)?;
    }

    #[test]
    fn bpe_small_output_is_exact_or_too_long(s in text_strategy(), slack in 0usize..3) {
        let tok = bpe().tokenizer();
        let want = theirs(&s);
        let cap = want.len().saturating_sub(1) + slack;
        let mut out = vec![0u32; cap];
        match tok.encode(&s, &mut out) {
            Ok(n) => prop_assert_eq!(&out[..n], &want[..]),
            Err(Error::PromptTooLong { tokens, limit }) => prop_assert!(limit == cap && tokens > cap),
            Err(e) => prop_assert!(false, "{e:?}"),
        }
    }
}

// ------------------------------------------------------------- llama2.c

/// Pieces of a tiny llama2.c vocabulary after the 3 control and 256 byte tokens.
const SP_PIECES: &[(&str, f32)] = &[
    (" ", -1.0),
    ("e", -1.1),
    ("t", -1.2),
    ("h", -1.3),
    ("a", -1.4),
    ("n", -1.5),
    ("d", -1.6),
    ("o", -1.7),
    ("i", -1.8),
    ("s", -1.9),
    ("g", -2.0),
    ("r", -2.1),
    (".", -2.2),
    (",", -2.3),
    ("\n", -2.4),
    ("é", -2.5),
    ("ü", -2.6),
    (" t", -3.0),
    ("th", -3.1),
    (" th", -3.2),
    ("he", -3.3),
    (" the", -3.4),
    ("in", -3.5),
    ("ing", -3.6),
    (" a", -3.7),
    ("an", -3.8),
    ("and", -3.9),
    (" and", -4.0),
    ("  ", -4.1),
    ("    ", -4.2),
    ("re", -4.3),
    ("er", -4.3),
    ("on", -4.3),
    ("en", -4.4),
    (" s", -4.5),
    ("é ", -4.6),
    ("ée", -4.7),
    ("<s>x", -5.0),
    ("s.", -5.1),
    ("\n\n", -5.2),
    (" é", -5.3),
];

/// llama2.c `tokenizer.bin` bytes for the pieces above.
fn tokenizer_bin() -> (Vec<u8>, usize) {
    let mut pieces: Vec<(Vec<u8>, f32)> =
        vec![(b"<unk>".to_vec(), 0.0), (b"<s>".to_vec(), 0.0), (b"</s>".to_vec(), 0.0)];
    for b in 0..=255u8 {
        pieces.push((format!("<0x{b:02X}>").into_bytes(), 0.0));
    }
    for (p, s) in SP_PIECES {
        pieces.push((p.as_bytes().to_vec(), *s));
    }
    let max_len = pieces.iter().map(|p| p.0.len()).max().unwrap() as i32;
    let mut out = max_len.to_le_bytes().to_vec();
    for (p, s) in &pieces {
        out.extend(s.to_le_bytes());
        out.extend((p.len() as i32).to_le_bytes());
        out.extend_from_slice(p);
    }
    (out, pieces.len())
}

/// A direct port of llama2.c run.c: `build_tokenizer` (reading the same
/// bytes), `encode` (bos = eos = 0) and `decode`.
struct RunC {
    vocab: Vec<Vec<u8>>,
    scores: Vec<f32>,
    sorted: Vec<(Vec<u8>, usize)>,
}

impl RunC {
    fn new(bin: &[u8], vocab_size: usize) -> Self {
        let mut pos = 4;
        let mut rd = |n: usize| {
            let s = &bin[pos..pos + n];
            pos += n;
            s.to_vec()
        };
        let mut vocab = Vec::new();
        let mut scores = Vec::new();
        for _ in 0..vocab_size {
            scores.push(f32::from_le_bytes(rd(4).try_into().unwrap()));
            let len = i32::from_le_bytes(rd(4).try_into().unwrap()) as usize;
            vocab.push(rd(len));
        }
        let mut sorted: Vec<(Vec<u8>, usize)> = vocab.iter().cloned().zip(0..).collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        RunC { vocab, scores, sorted }
    }

    fn str_lookup(&self, s: &[u8]) -> Option<usize> {
        self.sorted.binary_search_by(|(x, _)| x.as_slice().cmp(s)).ok().map(|i| self.sorted[i].1)
    }

    fn encode(&self, text: &[u8]) -> Vec<u32> {
        let mut tokens: Vec<usize> = Vec::new();
        if !text.is_empty() {
            tokens.push(self.str_lookup(b" ").unwrap());
        }
        let mut buf: Vec<u8> = Vec::new();
        for (i, &c) in text.iter().enumerate() {
            if c & 0xC0 != 0x80 {
                buf.clear();
            }
            buf.push(c);
            let next = text.get(i + 1).copied().unwrap_or(0);
            if next & 0xC0 == 0x80 && buf.len() < 4 {
                continue;
            }
            match self.str_lookup(&buf) {
                Some(id) => tokens.push(id),
                None => tokens.extend(buf.iter().map(|&b| b as usize + 3)),
            }
            buf.clear();
        }
        loop {
            let mut best_score = -1e10f32;
            let mut best: Option<(usize, usize)> = None;
            for i in 0..tokens.len().saturating_sub(1) {
                let cat = [&self.vocab[tokens[i]][..], &self.vocab[tokens[i + 1]][..]].concat();
                if let Some(id) = self.str_lookup(&cat) {
                    if self.scores[id] > best_score {
                        best_score = self.scores[id];
                        best = Some((i, id));
                    }
                }
            }
            let Some((i, id)) = best else { break };
            tokens[i] = id;
            tokens.remove(i + 1);
        }
        tokens.into_iter().map(|t| t as u32).collect()
    }

    fn decode(&self, prev: u32, token: u32) -> Vec<u8> {
        let mut piece = &self.vocab[token as usize][..];
        if prev == 1 && piece.first() == Some(&b' ') {
            piece = &piece[1..];
        }
        if piece.len() == 6 && piece.starts_with(b"<0x") && piece.ends_with(b">") {
            if let Ok(b) = u8::from_str_radix(std::str::from_utf8(&piece[3..5]).unwrap(), 16) {
                return vec![b];
            }
        }
        piece.to_vec()
    }
}

fn llama2c() -> &'static (Loaded, RunC) {
    static L: OnceLock<(Loaded, RunC)> = OnceLock::new();
    L.get_or_init(|| {
        let (bin, n) = tokenizer_bin();
        let tables = from_llama2c_tokenizer_bin(&bin, n).unwrap();
        (Loaded { bytes: edgelm_file(&tables), tables }, RunC::new(&bin, n))
    })
}

fn check_sp(text: &str) -> Result<(), TestCaseError> {
    let (l, runc) = llama2c();
    let tok = l.tokenizer();
    let want = runc.encode(text.as_bytes());
    let got = ours(&tok, text);
    prop_assert_eq!(&got, &want, "text {:?}", text);
    // Decoding after BOS (id 1) like run.c's generate loop.
    let mut prev = 1;
    let mut ours_bytes = Vec::new();
    let mut runc_bytes = Vec::new();
    for &id in &got {
        ours_bytes.extend_from_slice(tok.decode_piece(Some(prev), id));
        runc_bytes.extend(runc.decode(prev, id));
        prev = id;
    }
    prop_assert_eq!(&ours_bytes, &runc_bytes);
    prop_assert_eq!(&ours_bytes, text.as_bytes());
    // A tight output buffer: the same ids, or a too-long error.
    let mut out = vec![0u32; want.len()];
    match tok.encode(text, &mut out) {
        Ok(n) => prop_assert_eq!(&out[..n], &want[..]),
        Err(Error::PromptTooLong { tokens, limit }) => prop_assert!(limit == want.len() && tokens > limit),
        Err(e) => prop_assert!(false, "{e:?}"),
    }
    Ok(())
}

#[test]
fn llama2c_parity_samples() {
    for s in [
        "",
        " ",
        "the",
        "the and thing, the end.",
        "  the    and\n\nthe  end.  ",
        "ée é eé ü ẞ x€日本 the",
        "<s>x <s> </s> <0x41>",
        "theeeeeee ssssss. aaaaannnnddd",
        "\u{0}\u{1}\u{7f}",
    ] {
        check_sp(s).unwrap();
    }
    check_sp(&"the and ".repeat(300)).unwrap();
    check_sp(&" ".repeat(2000)).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn llama2c_parity_random(s in prop::collection::vec(prop::sample::select(vec![
        "t", "h", "e", " ", "  ", "a", "n", "d", "i", "g", "s", ".", "\n", "é", "ü", "x", "€", "日", "😀", "the", " and", "<s>",
    ]), 0..40).prop_map(|v| v.concat())) {
        check_sp(&s)?;
    }

    #[test]
    fn llama2c_round_trip_any(s in any::<String>()) {
        let (l, runc) = llama2c();
        let tok = l.tokenizer();
        let got = ours(&tok, &s);
        prop_assert_eq!(&got, &runc.encode(s.as_bytes()));
    }
}
