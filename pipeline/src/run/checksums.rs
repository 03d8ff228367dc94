//! Digests of the files a checkpoint or the final model is made of, written beside
//! them and verified before they are used, so that a truncated or overwritten file is
//! found instead of loaded.
//!
//! The digest is XXH3-128 (`xxh3-128:` and 32 hex digits, what `xxhsum -H2` prints): it
//! guards against damage, not against an adversary, and a checkpoint is hashed on
//! every iteration while the next one plays, where SHA-256 (about 1.5 GB/s with the
//! CPU's SHA extensions) took a core for a second per 1.6 GB. Digests of an earlier
//! version (SHA-256, 64 hex digits, no prefix) are still verified.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use anyhow::Context;
use twox_hash::XxHash3_128;

use crate::commands::sha256_file;

/// Relative path (with `/`) → digest, of every regular file under a folder.
pub type Digests = BTreeMap<String, String>;

/// The prefix of an XXH3-128 digest.
const XXH3_128: &str = "xxh3-128:";

/// The XXH3-128 digest of a file's bytes.
pub fn digest_file(path: &Path) -> anyhow::Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = XxHash3_128::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file
            .read(&mut buffer)
            .with_context(|| format!("reading {}", path.display()))?;
        if read == 0 {
            break;
        }
        hasher.write(&buffer[..read]);
    }
    Ok(format!("{XXH3_128}{:032x}", hasher.finish_128()))
}

/// Whether the file at `path` has `digest`, whichever of the two kinds it is.
fn matches(path: &Path, digest: &str) -> anyhow::Result<bool> {
    Ok(match digest.starts_with(XXH3_128) {
        true => digest_file(path)? == digest,
        false => sha256_file(path)? == digest,
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
                out.insert(name, digest_file(&path)?);
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
        // A file of several read buffers (2.5 MB + 7 bytes of i mod 251).
        let long: Vec<u8> = (0..5 * (1usize << 19) + 7)
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(dir.path().join("long.bin"), long).unwrap();
        assert_eq!(
            digest_file(&dir.path().join("long.bin")).unwrap(),
            "xxh3-128:7a3bbc2987fc9c0b3517a0628b836023"
        );
        std::fs::remove_file(dir.path().join("long.bin")).unwrap();
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
