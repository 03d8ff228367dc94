//! XXH3-128 digests of the files a model folder or checkpoint is written as
//! (`xxh3-128:` and 32 hex digits, what `xxhsum -H2` prints), so that a truncated or
//! overwritten file is found before it is loaded. The weights are hashed as they are
//! written ([`DigestWriter`]), the rest by reading ([`digest_file`]).
//!
//! XXH3 guards against damage, not against an adversary; a checkpoint is written on
//! every iteration while the next one plays, where SHA-256 (about 1.5 GB/s with the
//! CPU's SHA extensions) took a core for a second per 1.6 GB.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use twox_hash::XxHash3_128;

/// The prefix of a digest.
pub const DIGEST_PREFIX: &str = "xxh3-128:";

/// File name (relative, with `/`) → digest.
pub type Digests = BTreeMap<String, String>;

/// The digest of a file's bytes.
pub fn digest_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = XxHash3_128::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.write(&buffer[..read]);
    }
    Ok(format(&hasher))
}

/// A writer that hashes what it passes on.
pub struct DigestWriter<W> {
    inner: W,
    hasher: XxHash3_128,
}

impl<W: Write> DigestWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: XxHash3_128::new(),
        }
    }

    /// The digest of every byte written so far, and the inner writer.
    pub fn finish(self) -> (String, W) {
        (format(&self.hasher), self.inner)
    }
}

impl<W: Write> Write for DigestWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.hasher.write(&bytes[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn format(hasher: &XxHash3_128) -> String {
    format!("{DIGEST_PREFIX}{:032x}", hasher.finish_128())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// XXH3-128 as the xxhash package for Python (4.1.0, libxxhash 0.8.4) gives it:
    /// `xxh3_128_hexdigest`.
    #[test]
    fn digests_are_xxh3_128_whether_read_or_written() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(Vec<u8>, &str); 3] = [
            (b"{}".to_vec(), "dc7048f8f8747f561349cde127705c16"),
            (vec![1u8; 3000], "74e6dda3b4bedfcfd87aff6a1463f82c"),
            // Several read buffers: 2.5 MB + 7 bytes of i mod 251.
            (
                (0..5 * (1usize << 19) + 7)
                    .map(|i| (i % 251) as u8)
                    .collect(),
                "7a3bbc2987fc9c0b3517a0628b836023",
            ),
        ];
        for (bytes, hex) in cases {
            let expected = format!("{DIGEST_PREFIX}{hex}");
            let path = dir.path().join("f.bin");
            std::fs::write(&path, &bytes).unwrap();
            assert_eq!(digest_file(&path).unwrap(), expected);
            // Written in uneven pieces.
            let mut writer = DigestWriter::new(Vec::new());
            for piece in bytes.chunks(777) {
                writer.write_all(piece).unwrap();
            }
            let (digest, written) = writer.finish();
            assert_eq!(digest, expected);
            assert_eq!(written, bytes);
        }
    }
}
