//! `report.md`: the settings, the results table, the claims checked and samples.

use super::{DomainScore, ExperimentConfig, MethodResult};
use crate::Result;

fn fmt_params(n: usize) -> String {
    if n >= 1_000_000 {
        format!("{:.2}M", n as f64 / 1e6)
    } else {
        format!("{:.1}k", n as f64 / 1e3)
    }
}

/// Writes `report.md` and the charts from whatever results exist.
pub fn write_report(cfg: &ExperimentConfig, rs: &[MethodResult]) -> Result<()> {
    let get = |m: &str| rs.iter().find(|r| r.method == m);
    let base_story = get("base").and_then(|r| r.story.as_ref()).map(|s| s.bpb);
    let mut md = String::new();
    md.push_str("# Experiment: adding the recipe domain to a story model\n\n");
    md.push_str(&format!(
        "Model: dim {}, {} layers, {} heads ({} KV), ffn {}, context {}; per-domain tokenizers of {} tokens, \
         generic tokenizer {} tokens. Story base: {} steps; every recipe method: {} steps; batch {} × {} tokens \
         (= {} tokens per step). LR {} → {} (cosine, {} warm-up), AdamW wd {}, clip {}. LoRA rank {}; expansion: {} \
         new blocks. Train text: first {:.1} MB of each train.txt; BPB on the first {} KB of each valid.txt.\n\n",
        cfg.model.dim,
        cfg.model.n_layers,
        cfg.model.n_heads,
        cfg.model.n_kv_heads,
        cfg.model.ffn_dim,
        cfg.base.seq,
        cfg.vocab,
        cfg.generic_vocab,
        cfg.base.steps,
        cfg.domain.steps,
        cfg.domain.batch,
        cfg.domain.seq,
        cfg.domain.batch * cfg.domain.seq,
        cfg.domain.lr,
        cfg.domain.min_lr,
        cfg.domain.warmup,
        cfg.domain.weight_decay,
        cfg.domain.grad_clip,
        cfg.lora_rank,
        cfg.blocks,
        cfg.train_bytes as f64 / (1 << 20) as f64,
        cfg.valid_bytes >> 10,
    ));
    md.push_str("## Methods (valid bits per byte, lower is better)\n\n");
    md.push_str(
        "| method | story BPB | Δ story vs base (forgetting) | recipe BPB | recipe tokenizer | trainable params | total params | train tokens | wall (s) |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    let f = |d: Option<&DomainScore>| d.map(|d| format!("{:.4}", d.bpb)).unwrap_or_else(|| "–".into());
    for m in ["base", "expand", "finetune", "lora", "separate", "separate-deep", "joint"] {
        if let Some(r) = get(m) {
            let delta = match (r.story.as_ref(), base_story) {
                (Some(s), Some(b)) if m != "base" => format!("{:+.4}", s.bpb - b),
                _ => "–".into(),
            };
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} |\n",
                m,
                f(r.story.as_ref()),
                delta,
                f(r.recipe.as_ref()),
                r.recipe.as_ref().map(|d| format!("{} ({})", d.tokenizer, d.vocab)).unwrap_or_default(),
                fmt_params(r.trainable_params),
                fmt_params(r.total_params),
                r.train_tokens,
                r.wall_s
            ));
        }
    }
    md.push('\n');
    for (sep, what) in [
        ("separate", "the separate recipe model with the same token budget (base architecture)"),
        ("separate-deep", "the separate recipe model with the same blocks as base + expansion and the same tokens"),
    ] {
        if let (Some(e), Some(s)) = (get("expand"), get(sep)) {
            if let (Some(er), Some(sr)) = (e.recipe.as_ref(), s.recipe.as_ref()) {
                let rel = (er.bpb - sr.bpb) / sr.bpb * 100.0;
                md.push_str(&format!(
                    "Expansion's recipe BPB is {rel:+.1} % relative to {what} (within 5 %: {}).\n\n",
                    if rel <= 5.0 { "yes" } else { "no" }
                ));
            }
        }
    }
    md.push_str("## Tokenizer claim: custom per-domain tokenizers vs one generic tokenizer\n\n");
    md.push_str(
        "`*-generic`: same architecture, only the tokenizer (and so the embedding size) differs; \
         `*-generic-eq`: the FFN is narrowed so the total parameter count equals the custom-tokenizer model's \
         (same parameter budget).\n\n",
    );
    md.push_str(if cfg.equal_bytes {
        "Equal bytes: each generic-tokenizer model trains for as many steps as read the same bytes of training \
         text as the custom-tokenizer model it is compared with (steps in the notes).\n\n"
    } else {
        "Equal tokens: same steps and tokens per step (so the tokenizer that spends more bytes per token reads \
         more text).\n\n"
    });
    md.push_str(
        "| domain | tokenizer | vocab | bytes/token | params | train tokens | BPB |\n|---|---|---|---|---|---|---|\n",
    );
    for (dom, own, gen, eq) in [
        ("story", "base", "story-generic", "story-generic-eq"),
        ("recipe", "separate", "recipe-generic", "recipe-generic-eq"),
    ] {
        for m in [own, gen, eq] {
            if let Some(r) = get(m) {
                let d = if dom == "story" { r.story.as_ref() } else { r.recipe.as_ref() };
                if let Some(d) = d {
                    md.push_str(&format!(
                        "| {dom} | {} ({m}) | {} | {:.2} | {} | {} | {:.4} |\n",
                        d.tokenizer,
                        d.vocab,
                        d.bytes_per_token,
                        fmt_params(r.total_params),
                        r.train_tokens,
                        d.bpb
                    ));
                }
            }
        }
    }
    md.push_str(
        "\nCharts: `bpb.png` (per method, left bar story BPB in blue, right bar recipe BPB in orange; the \
         dashed line is the base's story BPB), `tokenizers.png` (per domain: custom tokenizer blue, generic \
         orange, generic with equal parameters grey), `curves.png` (recipe training loss per step: expand red, finetune blue, lora green, separate \
         black).\n\n",
    );
    md.push_str("## Notes\n\n");
    for r in rs {
        for n in &r.notes {
            md.push_str(&format!("- {}: {n}\n", r.method));
        }
    }
    md.push_str("\n## Samples (temperature 0.8, top-k 40)\n\n");
    for r in rs {
        for (p, t) in &r.samples {
            md.push_str(&format!("**{}** — `{}`\n\n```\n{}{}\n```\n\n", r.method, p.trim_end(), p, t));
        }
    }
    // A chart that cannot be drawn is said in the report; the tables stand without it.
    if let Err(e) = super::plots::charts(&cfg.out, rs) {
        md.push_str(&format!("\n(The charts could not be drawn: {e}.)\n"));
    }
    crate::fsio::write_atomic(&cfg.out.join("report.md"), md.as_bytes())?;
    Ok(())
}
