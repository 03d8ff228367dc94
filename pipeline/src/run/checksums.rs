//! The digests ([`lsp_model::digest_file`], XXH3-128) of the files a checkpoint or
//! the final model is made of, written beside them and verified before they are used,
//! so that a truncated or overwritten file is found instead of loaded. Digests of an
//! earlier version (SHA-256, 64 hex digits, no prefix) are still verified.

use std::path::Path;

use anyhow::Context;
pub use lsp_model::Digests;
use lsp_model::{DIGEST_PREFIX, digest_file};

use crate::commands::sha256_file;

/// The digest of a file, its path named on failure.
fn digest(path: &Path) -> anyhow::Result<String> {
    digest_file(path).with_context(|| format!("reading {}", path.display()))
}

/// Whether the file at `path` has digest `expected`, whichever of the two kinds it is.
fn matches(path: &Path, expected: &str) -> anyhow::Result<bool> {
    Ok(match expected.starts_with(DIGEST_PREFIX) {
        true => digest(path)? == expected,
        false => sha256_file(path)? == expected,
    })
}

/// The digests of every file under `root` except those named in `skip` (at the top).
pub fn digest_folder(root: &Path, skip: &[&str]) -> anyhow::Result<Digests> {
    let mut out = Digests::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries =
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?;
        for entry in entries {
            let path = entry?.path();
            let name = path
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .replace('\\', "/");
            if path.is_dir() {
                pending.push(path);
            } else if !skip.contains(&name.as_str()) {
                out.insert(name, digest(&path)?);
            }
        }
    }
    Ok(out)
}

/// An error naming every file under `root` that is missing or differs from
/// `expected`.
pub fn verify(root: &Path, expected: &Digests) -> anyhow::Result<()> {
    let mut bad = Vec::new();
    for (name, digest) in expected {
        let path = root.join(name);
        match path.is_file() {
            false => bad.push(format!("{name} is missing")),
            true if !matches(&path, digest)? => bad.push(format!("{name} is corrupt")),
            true => {}
        }
    }
    anyhow::ensure!(
        bad.is_empty(),
        "{} does not match its checksums: {}",
        root.display(),
        bad.join(", ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_or_missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("model")).unwrap();
        std::fs::write(dir.path().join("model/weights.bin"), [1u8; 3000]).unwrap();
        std::fs::write(dir.path().join("a.json"), "{}").unwrap();
        std::fs::write(dir.path().join("state.json"), "{}").unwrap();
        let digests = digest_folder(dir.path(), &["state.json"]).unwrap();
        assert_eq!(
            digests.keys().collect::<Vec<_>>(),
            ["a.json", "model/weights.bin"]
        );
        // XXH3-128 of "{}" and of 3000 bytes of 1, as the xxhash package for Python
        // (4.1.0, libxxhash 0.8.4) gives them: `xxh3_128_hexdigest`.
        assert_eq!(
            digests["a.json"],
            "xxh3-128:dc7048f8f8747f561349cde127705c16"
        );
        assert_eq!(
            digests["model/weights.bin"],
            "xxh3-128:74e6dda3b4bedfcfd87aff6a1463f82c"
        );
        verify(dir.path(), &digests).unwrap();
        // An earlier version's SHA-256 digest (of "{}") verifies too, and a wrong one fails.
        let sha = "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
        let mut earlier = digests.clone();
        earlier.insert("a.json".into(), sha.into());
        verify(dir.path(), &earlier).unwrap();
        earlier.insert("a.json".into(), sha.replace('4', "5"));
        assert!(verify(dir.path(), &earlier).is_err());
        let mut bytes = std::fs::read(dir.path().join("model/weights.bin")).unwrap();
        bytes[2000] ^= 0xff;
        std::fs::write(dir.path().join("model/weights.bin"), bytes).unwrap();
        std::fs::remove_file(dir.path().join("a.json")).unwrap();
        let err = verify(dir.path(), &digests).unwrap_err().to_string();
        assert!(
            err.ends_with(
                "does not match its checksums: a.json is missing, model/weights.bin is corrupt"
            ),
            "{err}"
        );
    }
}
