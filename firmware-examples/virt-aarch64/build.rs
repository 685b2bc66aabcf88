//! Sizes the arena and embeds the models (see edgelm_stories::plan), and
//! links with this board's memory map.

use edgelm_stories::plan::{write_from_env, Defaults};

fn main() {
    write_from_env(&Defaults {
        board: "virt-aarch64",
        model: "models/base.edgelm",
        packs: &["models/recipe.edgelm"],
        runs: &[("story", "Once upon a time"), ("recipe", "Title:")],
        max_tokens: 200,
    });
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=link.x");
    println!("cargo:rustc-link-arg=-T{dir}/link.x");
}
