//! `edgelm-convert`: import models to `.edgelm`, export GGUF, inspect and verify.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use edgelm_convert::gguf::{export_gguf, ExportOptions};
use edgelm_convert::{output, Converted, ImportOptions, Policy, StoreDType};

#[derive(Parser)]
#[command(
    name = "edgelm-convert",
    version,
    about = "Convert models to and from the .edgelm on-device format",
    long_about = "Convert models to and from the .edgelm on-device format.\n\n\
        Imports trainer (Hugging Face Llama) checkpoints, llama2.c checkpoints and GGUF `llama` \
        models, quantizes to q8 (int8, one f16 scale per 32 values) or q4 (4-bit, GGUF Q4_0), exports GGUF for llama.cpp, \
        and inspects / verifies files. Outputs are written to a temporary file and renamed; \
        inputs are never overwritten."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args)]
struct Store {
    /// Output file (.edgelm).
    #[arg(long, short)]
    output: PathBuf,
    /// Storage of the weight matrices: f32, f16, q8 (int8 + f16 scale per 32),
    /// q4 (4-bit + f16 scale per 32, GGUF Q4_0), or keep (as the input stores
    /// them; GGUF).
    #[arg(long, default_value = "q8")]
    dtype: StoreDType,
    /// Storage of the token embedding / output head (default: as --dtype).
    #[arg(long)]
    embedding_dtype: Option<StoreDType>,
    /// Storage of the attention projections wq/wk/wv/wo (default: as --dtype),
    /// e.g. `--dtype q4 --attention-dtype q8`.
    #[arg(long)]
    attention_dtype: Option<StoreDType>,
    /// Experiment (docs/CONVERT.md): quantize q4 matrices with this layout
    /// (symmetric = Q4_0, offset = Q4_1), dequantize and store them as f32.
    #[arg(long, hide = true)]
    q4_simulate: Option<edgelm_convert::store::Q4Layout>,
    /// Also write the per-tensor quantization report as JSON to this file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Name of the base domain (default: the checkpoint's first domain, or
    /// the GGUF's `edgelm.domain`, else "story").
    #[arg(long)]
    domain: Option<String>,
    /// Also list the tensors stored exactly (default: only those whose values changed).
    #[arg(long, short)]
    verbose: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Import a trainer / Hugging Face Llama checkpoint directory
    /// (config.json, model.safetensors, tokenizer.json). With --base, DIR is a
    /// domain checkpoint (edgelm-train expand) and the output a domain pack.
    ImportCheckpoint {
        dir: PathBuf,
        /// The base checkpoint a domain checkpoint was trained on.
        #[arg(long)]
        base: Option<PathBuf>,
        #[command(flatten)]
        store: Store,
    },
    /// Import a llama2.c model (.bin, v0 / v1 / v2) and its tokenizer.bin.
    ImportLlama2c {
        model: PathBuf,
        #[arg(long)]
        tokenizer: PathBuf,
        #[command(flatten)]
        store: Store,
    },
    /// Import a GGUF `llama` model (F32 / F16 / BF16 / Q8_0 / Q4_0 tensors).
    ImportGguf {
        model: PathBuf,
        #[command(flatten)]
        store: Store,
    },
    /// Export an .edgelm model (one domain; with --pack, a pack's domain
    /// flattened into a plain Llama) as GGUF for llama.cpp.
    ExportGguf {
        model: PathBuf,
        /// A domain pack made for MODEL.
        #[arg(long)]
        pack: Option<PathBuf>,
        /// Domain to export (default: the pack's, else the model's first).
        #[arg(long)]
        domain: Option<String>,
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Describe an .edgelm (or .gguf) file.
    Inspect { file: PathBuf },
    /// Verify an .edgelm file: checksum, structure, one forward step per domain.
    Verify {
        file: PathBuf,
        /// Also load this pack over the base.
        #[arg(long)]
        pack: Option<PathBuf>,
    },
}

fn options(s: &Store) -> ImportOptions {
    let mut o = ImportOptions::new(s.dtype);
    o.policy = Policy {
        matrices: s.dtype,
        embedding: s.embedding_dtype.unwrap_or(s.dtype),
        attention: s.attention_dtype,
        q4_simulate: s.q4_simulate,
    };
    o.progress = true;
    o.domain = s.domain.clone();
    o
}

fn finish(c: Converted, s: &Store, inputs: &[&Path], started: Instant) -> Result<()> {
    output::write_bytes(&s.output, inputs, &c.bytes)?;
    let secs = started.elapsed().as_secs_f64();
    let r = &c.report;
    // Every tensor the conversion changed (all of them with --verbose).
    let shown: Vec<_> = r.tensors.iter().filter(|t| s.verbose || t.max_err > 0.0 || t.note.is_some()).collect();
    if !shown.is_empty() {
        eprintln!(
            "{:<34} {:<4} {:>12} {:>10} {:>10} {:>10}",
            "tensor", "type", "shape", "max-err", "rms-err", "rel-rms"
        );
    }
    for t in &shown {
        let shape = t.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x");
        eprintln!(
            "{:<34} {:<4} {:>12} {:>10.3e} {:>10.3e} {:>10.3e}{}",
            t.name,
            t.dtype.name(),
            shape,
            t.max_err,
            t.rms_err,
            t.rel_rms_err(),
            t.note.map(|n| format!("  ({n})")).unwrap_or_default()
        );
    }
    for t in r.tensors.iter().filter(|t| t.note.is_some()) {
        eprintln!("note: {}: {}", t.name, t.note.unwrap_or_default());
    }
    let (max, rel) = r.summary();
    if let Some(p) = &s.report {
        let json = serde_json::to_string_pretty(&r.to_json())?;
        output::write_bytes(p, inputs, json.as_bytes())?;
    }
    writeln!(std::io::stdout(),
        "wrote {} ({} bytes, {} tensors, matrices {}, embedding {}) in {:.2} s; max abs error {:.3e}, relative RMS error {:.3e}",
        s.output.display(),
        c.bytes.len(),
        r.tensors.len(),
        s.dtype,
        s.embedding_dtype.unwrap_or(s.dtype),
        secs,
        max,
        rel
    )?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run() {
        // a reader that stopped early (`| head`) is not a failure
        Err(e) if !edgelm_runtime::is_broken_pipe(e.as_ref()) => {
            eprintln!("Error: {e:?}");
            std::process::ExitCode::FAILURE
        }
        _ => std::process::ExitCode::SUCCESS,
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    let started = Instant::now();
    match cli.cmd {
        Cmd::ImportCheckpoint { dir, base, store } => {
            let mut inputs: Vec<&Path> = vec![&dir];
            if let Some(b) = &base {
                inputs.push(b);
            }
            output::check_not_input(&store.output, &inputs)?;
            for d in &inputs {
                if store.output.starts_with(d) {
                    let name = store.output.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    if ["config.json", "model.safetensors", "tokenizer.json"].contains(&name) {
                        bail!("refusing to write {}: it is one of the checkpoint's inputs", store.output.display());
                    }
                }
            }
            let c = match &base {
                None => edgelm_convert::checkpoint::import_checkpoint(&dir, &options(&store))
                    .with_context(|| format!("importing checkpoint {}", dir.display()))?,
                Some(b) => edgelm_convert::pack::import_domain(&dir, b, &options(&store)).with_context(|| {
                    format!("importing domain checkpoint {} over base {}", dir.display(), b.display())
                })?,
            };
            finish(c, &store, &inputs, started)
        }
        Cmd::ImportLlama2c { model, tokenizer, store } => {
            output::check_not_input(&store.output, &[&model, &tokenizer])?;
            let m = output::read(&model)?;
            let t = output::read(&tokenizer)?;
            let c = edgelm_convert::llama2c::import_llama2c(&m, &t, &model, &options(&store))
                .with_context(|| format!("importing llama2.c model {}", model.display()))?;
            finish(c, &store, &[&model, &tokenizer], started)
        }
        Cmd::ImportGguf { model, store } => {
            output::check_not_input(&store.output, &[&model])?;
            let c = edgelm_convert::gguf::import_gguf(&model, &options(&store))
                .with_context(|| format!("importing GGUF {}", model.display()))?;
            finish(c, &store, &[&model], started)
        }
        Cmd::ExportGguf { model, pack, domain, output: out } => {
            let mut inputs: Vec<&Path> = vec![&model];
            if let Some(p) = &pack {
                inputs.push(p);
            }
            output::check_not_input(&out, &inputs)?;
            let base = output::read(&model)?;
            let pack_bytes = pack.as_deref().map(output::read).transpose()?;
            let e = export_gguf(&base, pack_bytes.as_deref(), &ExportOptions { domain })
                .with_context(|| format!("exporting {} to GGUF", model.display()))?;
            output::write_bytes(&out, &inputs, &e.bytes)?;
            writeln!(
                std::io::stdout(),
                "wrote {} ({} bytes, domain {}, {} blocks) in {:.2} s",
                out.display(),
                e.bytes.len(),
                e.domain,
                e.n_blocks,
                started.elapsed().as_secs_f64()
            )?;
            Ok(())
        }
        Cmd::Inspect { file } => {
            let bytes = output::read(&file)?;
            if bytes.starts_with(b"GGUF") {
                print!("{}", edgelm_convert::inspect::describe_gguf(&file)?);
            } else {
                print!(
                    "{}",
                    edgelm_convert::inspect::describe(&bytes)
                        .with_context(|| format!("inspecting {}", file.display()))?
                );
            }
            Ok(())
        }
        Cmd::Verify { file, pack } => {
            let bytes = output::read(&file)?;
            let pack_bytes = pack.as_deref().map(output::read).transpose()?;
            let v = edgelm_convert::inspect::verify(&bytes, pack_bytes.as_deref())
                .with_context(|| format!("verifying {}", file.display()))?;
            writeln!(
                std::io::stdout(),
                "ok: checksum {:#018x} verified, {} tensors, structure loads",
                v.checksum,
                v.n_tensors
            )?;
            for (name, top, amax) in &v.domains {
                writeln!(
                    std::io::stdout(),
                    "ok: domain {name}: one forward step from BOS, finite logits (max |logit| {amax:.3}, argmax {top})"
                )?;
            }
            Ok(())
        }
    }
}
