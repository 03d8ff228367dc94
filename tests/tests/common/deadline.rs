//! A child process's output within a deadline, for the tests that run `pipeline` (and
//! Python): a process that hangs (a deadlock, a worker waiting for a dead peer) is
//! killed and its test fails with the command and what it printed, instead of hanging
//! the whole test run (libtest has no timeout; CI's limit would take every test with
//! it). Included by path from `pipeline/tests` too: one implementation.

use std::io::Read;
use std::process::{Child, Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long one process of a test may run: the slowest (runs on the real model) take
/// a few minutes on two cores.
pub const DEADLINE: Duration = Duration::from_secs(900);

/// [`Command::output`] and [`Child::wait_with_output`] within [`DEADLINE`].
pub trait Finish {
    /// The process's output once it exits; killed, and the test failed, past
    /// [`DEADLINE`].
    fn finish(self) -> Output;
}

impl Finish for &mut Command {
    /// As [`Command::output`]: stdin empty, stdout and stderr captured.
    fn finish(self) -> Output {
        let what = format!("{self:?}");
        let child = self
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        wait_within(child, &what, DEADLINE)
    }
}

impl Finish for Child {
    /// As [`Child::wait_with_output`]: what its piped stdout and stderr carried.
    fn finish(self) -> Output {
        let what = format!("process {}", self.id());
        wait_within(self, &what, DEADLINE)
    }
}

/// `child`'s output, its pipes drained on their own threads while it runs; past
/// `limit` it is killed and the caller panics with what it wrote to stderr.
pub fn wait_within(mut child: Child, what: &str, limit: Duration) -> Output {
    fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    }
    let (stdout, stderr) = (drain(child.stdout.take()), drain(child.stderr.take()));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for a test's process") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = stderr.join().unwrap_or_default();
            panic!(
                "{what} ran past {limit:?} and was killed; its stderr:\n{}",
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}
