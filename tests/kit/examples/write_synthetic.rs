//! Writes a synthetic (random-weight) model for benchmarks:
//! `cargo run --release -p edgelm-testkit --example write_synthetic -- stories15m q8 /tmp/s15m-q8.edgelm`
//! Shapes: `tiny`, `stories15m`. Dtypes: `f32`, `f16`, `q8`, `q4`.

use edgelm_runtime::format::DType;
use edgelm_testkit::synthetic::{synthetic_model, SyntheticSpec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [shape, dtype, out] = args.as_slice() else {
        return Err("usage: write_synthetic tiny|stories15m f32|f16|q8|q4 OUT.edgelm".into());
    };
    let dtype = match dtype.as_str() {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "q8" => DType::Q8,
        "q4" => DType::Q4,
        other => return Err(format!("unknown dtype {other}: use f32, f16, q8 or q4").into()),
    };
    let spec = match shape.as_str() {
        "tiny" => SyntheticSpec::tiny(dtype),
        "stories15m" => SyntheticSpec::stories15m(dtype),
        other => return Err(format!("unknown shape {other}: use tiny or stories15m").into()),
    };
    let bytes = synthetic_model(&spec)?;
    let tmp = format!("{out}.tmp");
    std::fs::write(&tmp, &bytes)?;
    std::fs::rename(&tmp, out)?;
    eprintln!("wrote {out} ({} bytes)", bytes.len());
    Ok(())
}
