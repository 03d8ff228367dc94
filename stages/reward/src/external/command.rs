//! `reward.kind: command`: a long-lived child process (any language) that reads one
//! JSON request per line on stdin and writes one JSON reply per line on stdout, in
//! order. Its stderr is the run's. A process that dies or stops replying is restarted
//! once per batch; what it then cannot answer is a [`Failure`].

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::{info, warn};

use super::{Failure, RewardRequest, parse_reply};

/// The user's reward program and, once started, its process.
#[derive(Debug)]
pub(crate) struct CommandReward {
    command: Vec<String>,
    dir: PathBuf,
    timeout: Duration,
    running: Mutex<Option<Running>>,
}

/// A started reward process: its stdin, and its stdout's lines (`None` at the end).
#[derive(Debug)]
struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<Option<String>>,
}

impl Running {
    fn start(command: &[String], dir: &PathBuf) -> Result<Self, Failure> {
        let (program, args) = command.split_first().expect("validated: not empty");
        let mut child = Command::new(program)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| Failure::Unavailable(format!("cannot start {command:?}: {e}")))?;
        let stdout = child.stdout.take().expect("piped");
        let (send, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(Some(line)).is_err() {
                    break;
                }
            }
            let _ = send.send(None);
        });
        info!(?command, pid = child.id(), "reward process started");
        Ok(Self {
            stdin: child.stdin.take(),
            child,
            lines,
        })
    }

    /// Writes `requests` on a thread of their own, so that a process that stops
    /// reading cannot block the run past the timeout.
    fn send(&mut self, requests: &[RewardRequest<'_>]) -> JoinHandle<Option<ChildStdin>> {
        let text: String = requests
            .iter()
            .map(|r| serde_json::to_string(r).expect("plain fields") + "\n")
            .collect();
        let mut stdin = self.stdin.take();
        std::thread::spawn(move || {
            let ok = stdin.as_mut().is_some_and(|s| {
                s.write_all(text.as_bytes())
                    .and_then(|()| s.flush())
                    .is_ok()
            });
            stdin.filter(|_| ok)
        })
    }

    /// Why the process stopped answering, after stopping it.
    fn stop(&mut self) -> String {
        self.stdin = None;
        let _ = self.child.kill();
        match self.child.wait() {
            Ok(status) => format!("the reward process exited ({status})"),
            Err(e) => format!("the reward process is lost: {e}"),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

impl CommandReward {
    pub(crate) fn new(command: Vec<String>, dir: PathBuf, timeout: Duration) -> Self {
        Self {
            command,
            dir,
            timeout,
            running: Mutex::new(None),
        }
    }

    /// A reward or a failure for each request, in order.
    pub(crate) fn score(&self, requests: &[RewardRequest<'_>]) -> Vec<Result<f64, Failure>> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<Result<f64, Failure>> = Vec::with_capacity(requests.len());
        let mut restarts = 1;
        while out.len() < requests.len() {
            if running.is_none() {
                match Running::start(&self.command, &self.dir) {
                    Ok(process) => *running = Some(process),
                    Err(failure) => {
                        out.resize(requests.len(), Err(failure));
                        break;
                    }
                }
            }
            let process = running.as_mut().expect("started above");
            let writer = process.send(&requests[out.len()..]);
            let lost = loop {
                if out.len() == requests.len() {
                    break None;
                }
                match process.lines.recv_timeout(self.timeout) {
                    Ok(Some(line)) => out.push(parse_reply(&line)),
                    Ok(None) | Err(RecvTimeoutError::Disconnected) => {
                        break Some(Failure::Unavailable(process.stop()));
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        let why = process.stop();
                        warn!(request = out.len(), timeout = ?self.timeout, "{why} after no reply in time");
                        out.push(Err(Failure::Timeout));
                        break Some(Failure::Timeout);
                    }
                }
            };
            let stdin = writer.join().ok().flatten();
            match lost {
                None => {
                    process.stdin = stdin;
                    break;
                }
                Some(failure) => {
                    *running = None;
                    if restarts == 0 {
                        let failure = match failure {
                            Failure::Timeout => Failure::Unavailable(
                                "the restarted reward process did not reply in time either".into(),
                            ),
                            other => other,
                        };
                        out.resize(requests.len(), Err(failure));
                        break;
                    }
                    restarts -= 1;
                    warn!(
                        answered = out.len(),
                        of = requests.len(),
                        "restarting the reward process"
                    );
                }
            }
        }
        out
    }
}
