//! Writes the seed corpora of the fuzz targets (`fuzz/`), made by the
//! project's own writers, into `DIR/<target>/`:
//! `cargo run -p edgelm-convert --example fuzz_seeds -- fuzz/corpus`.
//! Each seed is checked to load, so the fuzzers start from valid files.

use std::path::Path;

use edgelm_convert::gguf::{export_gguf, import_gguf_from, ExportOptions};
use edgelm_convert::llama2c::import_llama2c;
use edgelm_convert::tokenizer_import::{byte_to_char, from_llama2c_tokenizer_bin, from_tokenizer_json};
use edgelm_convert::{ImportOptions, StoreDType};
use edgelm_runtime::format::DType;
use edgelm_runtime::Model;
use edgelm_testkit::llama2c::{tokenizer_bin, v1_checkpoint};
use edgelm_testkit::synthetic::{synthetic_model, synthetic_pack, SyntheticPackSpec, SyntheticSpec};

type Res<T = ()> = Result<T, Box<dyn std::error::Error>>;

fn put(dir: &Path, target: &str, name: &str, bytes: &[u8]) -> Res {
    let d = dir.join(target);
    std::fs::create_dir_all(&d)?;
    std::fs::write(d.join(name), bytes)?;
    Ok(())
}

/// A small byte-level BPE tokenizer.json in the trainer's layout.
pub fn tokenizer_json() -> String {
    let chars = byte_to_char();
    let q = |s: &str| format!("{s:?}");
    let mut vocab: Vec<String> = vec![r#""<|endoftext|>": 0"#.into()];
    for (b, c) in chars.iter().enumerate() {
        vocab.push(format!("{}: {}", q(&c.to_string()), b + 1));
    }
    vocab.push(r#""Ġt": 257"#.into());
    vocab.push(r#""Ġth": 258"#.into());
    vocab.push(r#""he": 259"#.into());
    format!(
        r#"{{"version":"1.0","added_tokens":[{{"id":0,"content":"<|endoftext|>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}}],"normalizer":null,"pre_tokenizer":{{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true}},"post_processor":null,"decoder":{{"type":"ByteLevel"}},"model":{{"type":"BPE","dropout":null,"unk_token":null,"vocab":{{{}}},"merges":["Ġ t",["Ġt","h"],"h e"]}}}}"#,
        vocab.join(",")
    )
}

fn main() -> Res {
    let dir = std::env::args().nth(1).ok_or("usage: fuzz_seeds OUT_DIR")?;
    let dir = Path::new(&dir);

    // base files, four storages (q4: a format-version-2 file)
    let mut q8_base = Vec::new();
    for (dtype, name) in
        [(DType::Q8, "micro-q8"), (DType::Q4, "micro-q4"), (DType::F16, "micro-f16"), (DType::F32, "micro-f32")]
    {
        let bytes = synthetic_model(&SyntheticSpec::micro(dtype))?;
        Model::from_bytes(&edgelm_testkit::aligned(bytes.clone()))?;
        put(dir, "model_load", name, &bytes)?;
        if dtype == DType::Q8 {
            q8_base = bytes;
        }
    }

    // packs over the q8 micro base (the base the pack target loads)
    let base = SyntheticSpec::micro(DType::Q8);
    let base_bytes = edgelm_testkit::aligned(q8_base.clone());
    for (i, spec) in [
        SyntheticPackSpec { own_vocab: Some(260), positions: vec![1], ..SyntheticPackSpec::recipe(DType::Q8) },
        SyntheticPackSpec {
            own_vocab: None,
            tag_token: Some(5),
            positions: vec![0, 1],
            ..SyntheticPackSpec::recipe(DType::F16)
        },
    ]
    .into_iter()
    .enumerate()
    {
        let pack = synthetic_pack(&base, &spec)?;
        let aligned_pack = edgelm_testkit::aligned(pack.clone());
        let mut m = Model::from_bytes(&base_bytes)?;
        m.add_pack_bytes(&aligned_pack)?;
        put(dir, "pack_load", &format!("pack-{i}"), &pack)?;
    }

    // llama2.c: u32 model length, model, tokenizer.bin
    let mut c = base.config;
    c.tied_head = true;
    let (tok, _) = tokenizer_bin(c.vocab_size as usize);
    for (name, cfg) in [("v1-shared", c), ("v1-unshared", base.config)] {
        let model = v1_checkpoint(&cfg, 1);
        import_llama2c(&model, &tok, Path::new("seed.bin"), &ImportOptions::new(StoreDType::Q8))?;
        let mut input = (model.len() as u32).to_le_bytes().to_vec();
        input.extend_from_slice(&model);
        input.extend_from_slice(&tok);
        put(dir, "llama2c_import", name, &input)?;
    }

    // GGUF: the micro base exported the way llama.cpp reads it
    let gguf = export_gguf(&q8_base, None, &ExportOptions { domain: None })?.bytes;
    import_gguf_from(&mut std::io::Cursor::new(&gguf), Path::new("seed.gguf"), &ImportOptions::new(StoreDType::Q8))?;
    put(dir, "gguf_import", "micro-q8", &gguf)?;

    // tokenizer tables
    let json = tokenizer_json();
    from_tokenizer_json(&json)?;
    put(dir, "tokenizer_json", "byte-level", json.as_bytes())?;
    from_llama2c_tokenizer_bin(&tok, c.vocab_size as usize)?;
    let mut input = (c.vocab_size as u16).to_le_bytes().to_vec();
    input.extend_from_slice(&tok);
    put(dir, "tokenizer_bin", "llama2c", &input)?;

    // text for the tokenizers and the session
    for (i, text) in ["Once upon a time", "the cat\n\nsat. <|endoftext|> hé", "\u{1F600} 123 ,;"].iter().enumerate() {
        put(dir, "tokenizer_roundtrip", &format!("text-{i}"), text.as_bytes())?;
        put(dir, "session", &format!("text-{i}"), text.as_bytes())?;
    }
    eprintln!("seeds written under {}", dir.display());
    Ok(())
}
