//! Outputs are written to a temporary file and renamed; inputs are never
//! overwritten; a failed conversion leaves nothing behind. Also `inspect`
//! and `verify` on good and corrupt files.

mod convert_common;

use convert_common::tempdir;
use edgelm_convert::inspect::{describe, verify};
use edgelm_convert::output::{check_not_input, write_bytes, write_with};
use edgelm_convert::Error;
use edgelm_runtime::format::DType;
use edgelm_testkit::synthetic::{synthetic_model, SyntheticSpec};

fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn failed_write_leaves_nothing_and_keeps_the_old_file() {
    let dir = tempdir();
    let out = dir.path().join("out.edgelm");
    let r = write_with(&out, &[], |f| {
        use std::io::Write;
        f.write_all(b"half of a file").unwrap();
        Err(Error::Verify("simulated failure".into()))
    });
    assert!(r.is_err());
    assert!(entries(dir.path()).is_empty(), "left behind: {:?}", entries(dir.path()));
    // an existing output survives a failed rewrite untouched
    write_bytes(&out, &[], b"old").unwrap();
    let _ = write_with(&out, &[], |_| Err(Error::Verify("simulated failure".into())));
    assert_eq!(std::fs::read(&out).unwrap(), b"old");
    assert_eq!(entries(dir.path()), vec!["out.edgelm".to_string()]);
    write_bytes(&out, &[], b"new").unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), b"new");
}

#[test]
fn inputs_are_never_overwritten() {
    let dir = tempdir();
    let input = dir.path().join("model.bin");
    std::fs::write(&input, b"weights").unwrap();
    let e = write_bytes(&input, &[&input], b"x").unwrap_err();
    assert!(matches!(e, Error::WouldOverwriteInput(_)), "{e}");
    // the same file under another spelling
    let other = dir.path().join(".").join("model.bin");
    assert!(check_not_input(&other, &[&input]).is_err());
    assert_eq!(std::fs::read(&input).unwrap(), b"weights");
}

#[test]
fn inspect_and_verify() {
    let bytes = synthetic_model(&SyntheticSpec::tiny(DType::Q8)).unwrap();
    let text = describe(&bytes).unwrap();
    assert!(text.contains("layers.0.attention.wq") && text.contains("q8"), "{text}");
    let v = verify(&bytes, None).unwrap();
    assert_eq!(v.domains.len(), 1);
    assert_eq!(v.domains[0].0, "story");
    // a flipped bit in the data: the checksum catches it
    let mut bad = bytes.clone();
    let n = bad.len();
    bad[n - 100] ^= 1;
    let e = verify(&bad, None).unwrap_err();
    assert!(e.to_string().contains("checksum"), "{e}");
    // truncated
    let e = verify(&bytes[..bytes.len() / 2], None).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
    // wrong magic
    let mut bad = bytes.clone();
    bad[0] = b'X';
    assert!(describe(&bad).unwrap_err().to_string().contains("magic"));
}
