//! Writing outputs safely, by the policy the trainer's `fsio` follows too: into a temporary file in the destination folder, synced to disk,
//! renamed into place, then the folder synced so the rename survives a power
//! cut. An input is never overwritten, and a failed conversion leaves nothing
//! half-written behind (the temporary file is removed when it is dropped).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Errors if `output` is (or resolves to) one of `inputs`.
pub fn check_not_input(output: &Path, inputs: &[&Path]) -> Result<()> {
    for i in inputs {
        if same_file(output, i) || output == *i {
            return Err(Error::WouldOverwriteInput(output.to_path_buf()));
        }
    }
    // An input directory (checkpoints): refuse writing inside it under a
    // name the importer reads.
    Ok(())
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Calls `fill` on a temporary file next to `output`, then renames it into
/// place. Nothing is left behind if `fill` or the rename fails.
pub fn write_with<F>(output: &Path, inputs: &[&Path], fill: F) -> Result<()>
where
    F: FnOnce(&mut std::fs::File) -> Result<()>,
{
    check_not_input(output, inputs)?;
    let dir = parent_of(output);
    let mut builder = tempfile::Builder::new();
    builder.prefix(".edgelm-convert-").suffix(".tmp");
    // Temporary files are private (0600) by default; the finished file is an
    // ordinary output (0644, like `cp` with the usual umask).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    let mut tmp = builder.tempfile_in(&dir).map_err(|e| Error::io("create a temporary file in", &dir, e))?;
    fill(tmp.as_file_mut())?;
    tmp.as_file_mut().flush().map_err(|e| Error::io("write", output, e))?;
    tmp.as_file().sync_all().map_err(|e| Error::io("sync", output, e))?;
    tmp.persist(output).map_err(|e| Error::io("rename the finished file to", output, e.error))?;
    if cfg!(unix) {
        std::fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(|e| Error::io("sync", &dir, e))?;
    }
    Ok(())
}

/// Writes `bytes` to `output` atomically (see [`write_with`]).
pub fn write_bytes(output: &Path, inputs: &[&Path], bytes: &[u8]) -> Result<()> {
    write_with(output, inputs, |f| f.write_all(bytes).map_err(|e| Error::io("write", output, e)))
}

/// Reads a whole input file, naming it in the error.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io("read", path, e))
}
