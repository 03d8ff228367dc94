//! SHA-256 digests of the files a checkpoint or the final model is made of, written
//! beside them and verified before they are used, so that a truncated or overwritten
//! file is found instead of loaded.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;

use crate::commands::sha256_file;

/// Relative path (with `/`) → SHA-256 in hex, of every regular file under a folder.
pub type Digests = BTreeMap<String, String>;

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
                out.insert(name, sha256_file(&path)?);
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
            true if sha256_file(&path)? != *digest => bad.push(format!("{name} is corrupt")),
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
        // SHA-256 of "{}".
        assert_eq!(
            digests["a.json"],
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        verify(dir.path(), &digests).unwrap();
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
