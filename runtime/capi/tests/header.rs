//! `include/edgelm.h` is what cbindgen makes of `src/lib.rs` with
//! `cbindgen.toml`: this test regenerates it and fails when the checked-in
//! header differs. `EDGELM_BLESS=1` writes the new header instead.

use std::path::Path;

#[test]
fn the_checked_in_header_is_fresh() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen could not generate the header");
    let mut fresh = Vec::new();
    bindings.write(&mut fresh);
    let path = dir.join("include/edgelm.h");
    if std::env::var_os("EDGELM_BLESS").is_some() {
        std::fs::write(&path, &fresh).expect("writing include/edgelm.h");
    }
    let checked_in = std::fs::read(&path).unwrap_or_default();
    assert!(
        checked_in == fresh,
        "{} is stale: regenerate it with `EDGELM_BLESS=1 cargo test -p edgelm-capi --test header` and commit it",
        path.display()
    );
    // every exported function is declared
    let text = String::from_utf8(fresh).unwrap();
    let source = std::fs::read_to_string(dir.join("src/lib.rs")).unwrap();
    let exported: Vec<&str> = source
        .split("pub unsafe extern \"C\" fn ")
        .skip(1)
        .chain(source.split("pub extern \"C\" fn ").skip(1))
        .map(|s| s.split('(').next().unwrap())
        .collect();
    assert!(exported.len() >= 20, "{exported:?}");
    for f in exported {
        assert!(text.contains(&format!("{f}(")), "{f} is missing from the header");
    }
}
