//! Runs untrusted model output (HumanEval completions) where it cannot harm the
//! machine. Layers, from the outside in:
//!
//! 1. its own temporary folder as working directory and `HOME`, an empty environment,
//!    no standard input, output read up to a cap;
//! 2. a wall-clock limit, after which its whole process group and PID namespace die;
//! 3. `prlimit`: CPU seconds, address space, file size, open files, and no new
//!    processes at all (`RLIMIT_NPROC` 0: fork, clone and threads fail in the kernel,
//!    whatever route the program takes to them);
//! 4. `unshare`: new network (no network at all), PID and mount namespaces — as root
//!    directly, otherwise inside an unprivileged user namespace;
//! 5. a minimal root (`sandbox_root.sh`): chrooted into an empty read-only file
//!    system with only /usr, a fresh /proc, private /tmp and /dev/shm and the
//!    program's folder — no host file to read or write;
//! 6. as root, `setpriv` drops to the unprivileged `nobody` user, which owns only the
//!    program's folder;
//! 7. inside Python, an audit hook (`guard.py`) refuses writes and deletions outside
//!    the folder, new processes, signals, sockets and native code.
//!
//! Which of 4–6 were available is recorded with every result.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

const GUARD: &str = include_str!("guard.py");
const ROOT_SCRIPT: &str = include_str!("sandbox_root.sh");
/// The `nobody` user and group.
const NOBODY: u32 = 65534;
/// Output kept from each stream.
const OUTPUT_CAP: u64 = 16 * 1024;

/// Limits of one program.
#[derive(Debug, Clone)]
pub struct Limits {
    pub wall: Duration,
    pub cpu_seconds: u64,
    pub memory_bytes: u64,
    pub file_bytes: u64,
    pub processes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            wall: Duration::from_secs(10),
            cpu_seconds: 10,
            memory_bytes: 1 << 30,
            file_bytes: 16 << 20,
            processes: 0,
        }
    }
}

/// How a program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Exit status 0.
    Passed,
    /// Any other exit (a failed assertion, an exception, a refused operation).
    Failed,
    /// Killed at the wall-clock limit.
    Timeout,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passed => "passed",
            Status::Failed => "failed",
            Status::Timeout => "timeout",
        }
    }
}

/// One program's result.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: Status,
    /// The end of its standard error (why it failed).
    pub stderr: String,
    pub seconds: f64,
}

/// The sandbox as this machine allows it.
#[derive(Debug, Clone)]
pub struct Sandbox {
    python: PathBuf,
    limits: Limits,
    /// The `unshare` arguments that work here (empty: none do).
    namespaces: Vec<&'static str>,
    /// Whether to drop to `nobody` (running as root).
    drop_to_nobody: bool,
    /// Whether the program runs in the minimal root (a mount namespace works here
    /// and the Python lives under /usr).
    minimal_root: bool,
    /// The in-process layer (off only in tests of the layers below it).
    guard: &'static str,
}

/// What runs the program when the audit hook is off: the program alone.
#[cfg(test)]
const NO_GUARD: &str = "exec(compile(open('program.py').read(), 'program.py', 'exec'), \
    {'__name__': '__main__'})\n";

fn works(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl Sandbox {
    /// Finds which layers work here. `prlimit` is required (util-linux, on every Debian
    /// and Ubuntu); so is a Python the sandboxed user can run.
    pub fn new(python: &Path, limits: Limits) -> anyhow::Result<Self> {
        anyhow::ensure!(
            works("prlimit", &["--cpu=1", "true"]),
            "the sandbox needs `prlimit` (util-linux): install it"
        );
        let root = is_root();
        let mut namespaces = Vec::new();
        for candidate in [
            &["--net", "--pid", "--fork", "--kill-child"][..],
            &[
                "--user",
                "--map-root-user",
                "--net",
                "--pid",
                "--fork",
                "--kill-child",
            ][..],
        ] {
            if works("unshare", &[candidate, &["true"]].concat()) {
                namespaces = candidate.to_vec();
                break;
            }
        }
        let drop_to_nobody = root
            && works(
                "setpriv",
                &["--reuid=65534", "--regid=65534", "--clear-groups", "true"],
            );
        let mut sandbox = Self {
            python: python.to_path_buf(),
            limits,
            namespaces,
            drop_to_nobody,
            minimal_root: false,
            guard: GUARD,
        };
        let check = "import sys\nassert sys.version_info >= (3, 8)\n";
        if !sandbox.namespaces.is_empty() && python.starts_with("/usr") {
            sandbox.minimal_root = true;
            let probe = sandbox.run(check)?;
            if probe.status != Status::Passed {
                tracing::warn!(
                    stderr = probe.stderr,
                    "the sandbox's minimal root does not work here: running without it"
                );
                sandbox.minimal_root = false;
            }
        }
        let probe = sandbox.run(check)?;
        anyhow::ensure!(
            probe.status == Status::Passed,
            "{} does not run in the sandbox (it must be Python ≥ 3.8 that the `nobody` user can \
             execute when running as root, e.g. /usr/bin/python3; pass --python): {}",
            python.display(),
            probe.stderr
        );
        Ok(sandbox)
    }

    /// The sandbox of this machine with `seconds` of wall and CPU time per program.
    #[cfg(test)]
    pub fn for_tests(seconds: u64) -> Self {
        let limits = Limits {
            wall: Duration::from_secs(seconds),
            cpu_seconds: seconds,
            ..Limits::default()
        };
        Self::new(&default_python(), limits).expect("a sandbox on this machine")
    }

    /// This sandbox without its in-process audit hook: what the operating system's
    /// layers hold by themselves.
    #[cfg(test)]
    pub fn without_audit_hook(mut self) -> Self {
        self.guard = NO_GUARD;
        self
    }

    /// The layers in use, for the record.
    pub fn layers(&self) -> String {
        let mut layers = vec!["tempdir", "timeout", "prlimit", "audit-hook"];
        if self.namespaces.contains(&"--user") {
            layers.push("userns+netns+pidns");
        } else if !self.namespaces.is_empty() {
            layers.push("netns+pidns");
        }
        if self.minimal_root {
            layers.push("mountns+minimal-root");
        }
        if self.drop_to_nobody {
            layers.push("nobody");
        }
        layers.join(",")
    }

    /// The command that runs `guard.py` in `base/work` (with `base/root` as the
    /// minimal root's mount point).
    fn command(&self, base: &Path) -> Command {
        let l = &self.limits;
        let dir = base.join("work");
        let mut argv: Vec<String> = Vec::new();
        if !self.namespaces.is_empty() {
            argv.push("unshare".into());
            argv.extend(self.namespaces.iter().map(|s| s.to_string()));
        }
        if self.minimal_root {
            argv.extend(["--mount".to_string(), "sh".to_string()]);
            argv.push(base.join("root.sh").display().to_string());
            argv.push(base.display().to_string());
        }
        if self.drop_to_nobody {
            argv.extend(
                [
                    "setpriv",
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                    "--no-new-privs",
                ]
                .map(String::from),
            );
        }
        argv.extend([
            "prlimit".to_string(),
            format!("--cpu={}", l.cpu_seconds),
            format!("--as={}", l.memory_bytes),
            format!("--fsize={}", l.file_bytes),
            "--nofile=64".to_string(),
            format!("--nproc={}", l.processes),
            "--".to_string(),
        ]);
        argv.push(self.python.display().to_string());
        argv.extend(["-I", "-B", "guard.py"].map(String::from));
        let mut command = Command::new(&argv[0]);
        let inner = match self.minimal_root {
            true => PathBuf::from("/work"),
            false => dir.clone(),
        };
        command
            .args(&argv[1..])
            .current_dir(&dir)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", &inner)
            .env("TMPDIR", &inner)
            .env("LANG", "C.UTF-8")
            .env("PYTHONHASHSEED", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        command
    }

    /// Runs `program` (Python source) and says how it ended.
    pub fn run(&self, program: &str) -> anyhow::Result<Outcome> {
        let base = tempfile::Builder::new().prefix("lsp-sandbox-").tempdir()?;
        let dir = base.path().join("work");
        std::fs::create_dir_all(&dir)?;
        // `nobody` passes through to its folder, and sees nothing else here.
        std::fs::set_permissions(
            base.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )?;
        std::fs::create_dir_all(base.path().join("root"))?;
        std::fs::write(base.path().join("root.sh"), ROOT_SCRIPT)?;
        std::fs::write(dir.join("program.py"), program)?;
        std::fs::write(dir.join("guard.py"), self.guard)?;
        if self.drop_to_nobody {
            for entry in ["", "program.py", "guard.py"] {
                std::os::unix::fs::chown(dir.join(entry), Some(NOBODY), Some(NOBODY))
                    .context("giving the sandbox folder to nobody")?;
            }
        }
        let start = Instant::now();
        let mut child = self
            .command(base.path())
            .spawn()
            .context("starting the sandbox")?;
        let stderr = drain(child.stderr.take());
        let stdout = drain(child.stdout.take());
        let status = loop {
            if let Some(exit) = child.try_wait()? {
                break if exit.success() {
                    Status::Passed
                } else {
                    Status::Failed
                };
            }
            if start.elapsed() >= self.limits.wall {
                kill(&mut child);
                break Status::Timeout;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let _ = stdout.join();
        let stderr = stderr.join().unwrap_or_default();
        let tail: String = {
            let chars: Vec<char> = stderr.chars().collect();
            chars[chars.len().saturating_sub(2000)..].iter().collect()
        };
        Ok(Outcome {
            status,
            stderr: tail,
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}

/// Reads a stream to its end on a thread, keeping at most [`OUTPUT_CAP`] bytes.
fn drain<R: Read + Send + 'static>(stream: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        if let Some(mut s) = stream {
            let _ = s.by_ref().take(OUTPUT_CAP).read_to_end(&mut kept);
            let _ = std::io::copy(&mut s, &mut std::io::sink());
        }
        String::from_utf8_lossy(&kept).into_owned()
    })
}

/// Kills the child's process group (the child leads it), then the child.
fn kill(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

/// The Python to sandbox with: `/usr/bin/python3` when present (a root-owned system
/// interpreter the `nobody` user can run), else `python3` from `PATH`.
pub fn default_python() -> PathBuf {
    let system = PathBuf::from("/usr/bin/python3");
    if system.is_file() {
        system
    } else {
        PathBuf::from("python3")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox() -> Sandbox {
        Sandbox::for_tests(3)
    }

    #[test]
    fn correct_code_passes_and_wrong_code_fails() {
        let s = sandbox();
        let ok = s
            .run("def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\n")
            .unwrap();
        assert_eq!(ok.status, Status::Passed, "{}", ok.stderr);
        let wrong = s
            .run("def add(a, b):\n    return a - b\n\nassert add(2, 3) == 5\n")
            .unwrap();
        assert_eq!(wrong.status, Status::Failed);
        assert!(wrong.stderr.contains("AssertionError"), "{}", wrong.stderr);
    }

    #[test]
    fn deleting_or_overwriting_outside_files_is_contained() {
        let s = sandbox();
        let outside = tempfile::tempdir().unwrap();
        let canary = outside.path().join("canary.txt");
        std::fs::write(&canary, "alive").unwrap();
        let c = canary.display();
        let d = outside.path().display();
        for attack in [
            format!("import os\nos.remove('{c}')\n"),
            format!("import shutil\nshutil.rmtree('{d}')\n"),
            format!("open('{c}', 'w').write('gone')\n"),
            format!("import os\nos.rename('{c}', '{c}.moved')\n"),
            format!("import subprocess\nsubprocess.run(['rm', '-rf', '{d}'])\n"),
            format!("import os\nos.system('rm -rf {d}')\n"),
            format!("import ctypes\nctypes.CDLL(None).unlink(b'{c}')\n"),
        ] {
            let out = s.run(&attack).unwrap();
            assert_eq!(out.status, Status::Failed, "{attack}: {}", out.stderr);
            assert_eq!(
                std::fs::read_to_string(&canary).unwrap(),
                "alive",
                "{attack}"
            );
        }
        // Its own folder is writable.
        let own = s
            .run("open('scratch.txt', 'w').write('x')\nimport os\nos.remove('scratch.txt')\n")
            .unwrap();
        assert_eq!(own.status, Status::Passed, "{}", own.stderr);
    }

    #[test]
    fn forks_loops_memory_and_network_are_contained() {
        let s = sandbox();
        let bomb = s.run("import os\nwhile True:\n    os.fork()\n").unwrap();
        assert_eq!(bomb.status, Status::Failed, "{}", bomb.stderr);
        let started = Instant::now();
        let spin = s.run("while True:\n    pass\n").unwrap();
        assert_eq!(spin.status, Status::Timeout);
        assert!(started.elapsed() < Duration::from_secs(10));
        let hog = s.run("x = bytearray(8 * 1024 ** 3)\n").unwrap();
        assert_eq!(hog.status, Status::Failed);
        assert!(hog.stderr.contains("MemoryError"), "{}", hog.stderr);
        let net = s
            .run("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)\n")
            .unwrap();
        assert_eq!(net.status, Status::Failed, "{}", net.stderr);
        // Refused by the sandbox, not merely unreachable from this machine.
        assert!(net.stderr.contains("sandbox: socket"), "{}", net.stderr);
        let spam = s
            .run("import sys\nwhile True:\n    sys.stderr.write('x' * 65536)\n")
            .unwrap();
        assert_eq!(spam.status, Status::Timeout);
        assert!(spam.stderr.len() <= 2000);
    }
}
