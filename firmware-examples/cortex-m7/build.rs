//! Sizes the arena and embeds the model (see edgelm_stories::plan), and
//! hands memory.x to cortex-m-rt's link.x.

use edgelm_stories::plan::{write_from_env, Defaults};

fn main() {
    write_from_env(&Defaults {
        board: "cortex-m7",
        model: "models/tiny-story.edgelm",
        packs: &[],
        runs: &[("story", "Once upon a time")],
        max_tokens: 100,
    });
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    std::fs::copy("memory.x", format!("{out}/memory.x")).expect("copy memory.x to OUT_DIR");
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rustc-link-search={out}");
    println!("cargo:rustc-link-arg=-Tlink.x");
}
