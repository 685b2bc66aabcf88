//! Files the trainer writes, all the same way: into a temporary
//! `*.edgelm.tmp` name beside the destination (ignored by git), flushed to
//! disk, renamed over the destination, then the folder synced so the rename
//! itself survives a power cut. A reader never sees half a file.

use crate::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |tmp| {
        let mut f = std::fs::File::create(tmp).map_err(|e| Error::io("cannot create", tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io("cannot write", tmp, e))
    })
}

/// Writes `value` as pretty JSON to `path` atomically (configs, results).
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let json = serde_json::to_vec_pretty(value).map_err(|source| Error::Json { path: path.into(), source })?;
    write_atomic(path, &json)
}

/// Lets `fill` write the file at a temporary path (for writers that take a
/// path: safetensors, PNG), then commits it to `path` like [`write_atomic`].
/// The temporary file is removed when `fill` or the commit fails.
pub fn write_atomic_with(path: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = tmp_path(path);
    let done = fill(&tmp).and_then(|()| commit(&tmp, path));
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done
}

fn commit(tmp: &Path, path: &Path) -> Result<()> {
    std::fs::File::open(tmp).and_then(|f| f.sync_all()).map_err(|e| Error::io("cannot sync", tmp, e))?;
    std::fs::rename(tmp, path).map_err(|e| Error::io("cannot rename into place", path, e))?;
    sync_dir(path)
}

/// Syncs the folder holding `path` (where the platform allows opening a folder).
fn sync_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if cfg!(unix) {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io("cannot sync", dir, e))?;
    }
    Ok(())
}

/// The temporary name used by [`write_atomic`]: `<name>.edgelm.tmp`, with the
/// destination's extension kept last for writers that pick the format from it.
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".edgelm.tmp");
    if let Some(ext) = path.extension() {
        name.push(".");
        name.push(ext);
    }
    path.with_file_name(name)
}

/// Reads a whole file, with the path in the error.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io("cannot read", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let failed = write_atomic_with(&p, |tmp| {
            std::fs::write(tmp, b"half").unwrap();
            Err(Error::Config("stop".into()))
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"two", "a failed write keeps the old file");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file is left");
    }
}
