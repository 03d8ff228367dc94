//! Where a run's workers are: timely workers (threads) in each of its processes, the
//! processes connected over TCP as timely clusters are (`--processes N --process I
//! --hostfile hosts.txt`), and which queries each worker plays.

use std::net::ToSocketAddrs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use timely::{CommunicationConfig, WorkerConfig};

use crate::config::RunConfig;

/// How long the processes of a run may take to find each other at start-up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// One worker's share of an iteration: query i belongs to worker i mod `peers`, so
/// N need not divide evenly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This worker's index over the whole run.
    pub index: usize,
    /// Workers of the whole run.
    pub peers: usize,
}

impl Shard {
    /// The ids of this worker's queries among `n`.
    pub fn queries(&self, n: u32) -> Vec<u32> {
        (0..n)
            .filter(|&q| q as usize % self.peers == self.index)
            .collect()
    }

    /// Whether this worker writes the run's outputs (records, checkpoints, the final
    /// model): worker 0, in process 0.
    pub fn writes(&self) -> bool {
        self.index == 0
    }
}

/// The `host:port` lines of `path`, one per process.
fn read_hostfile(path: &Path, processes: u64) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the hostfile {}", path.display()))?;
    let hosts: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    if hosts.len() < processes as usize {
        bail!(
            "{}: {} host:port lines for {processes} processes (one line per process)",
            path.display(),
            hosts.len()
        );
    }
    for (i, host) in hosts.iter().enumerate().take(processes as usize) {
        host.to_socket_addrs().with_context(|| {
            format!(
                "{} line {}: process {i}'s address {host:?} does not resolve (host:port)",
                path.display(),
                i + 1
            )
        })?;
    }
    Ok(hosts.into_iter().take(processes as usize).collect())
}

/// timely's configuration for `run`: one thread, several in one process, or a
/// cluster of processes.
pub fn timely_config(run: &RunConfig) -> anyhow::Result<timely::Config> {
    let threads = run.workers as usize;
    let communication = match (run.processes, &run.hostfile) {
        (1, _) if threads == 1 => CommunicationConfig::Thread,
        (1, _) => CommunicationConfig::Process(threads),
        (_, None) => bail!("run.processes > 1 needs run.hostfile (or --hostfile)"),
        (processes, Some(path)) => CommunicationConfig::Cluster {
            threads,
            process: run.process as usize,
            addresses: read_hostfile(path, processes)?,
            report: false,
            zerocopy: false,
        },
    };
    Ok(timely::Config {
        communication,
        worker: WorkerConfig::default(),
    })
}

/// Until the returned flag is set, a watchdog that ends the process with an error
/// naming `run`'s peers when they have not all connected within [`CONNECT_TIMEOUT`]
/// (timely retries unreachable peers forever).
pub fn connection_watchdog(run: &RunConfig) -> Arc<AtomicBool> {
    let connected = Arc::new(AtomicBool::new(false));
    if run.processes > 1 {
        let flag = Arc::clone(&connected);
        let (process, processes) = (run.process, run.processes);
        let hostfile = run.hostfile.clone().unwrap_or_default();
        let peers = read_hostfile(&hostfile, processes).unwrap_or_default();
        std::thread::spawn(move || {
            std::thread::sleep(CONNECT_TIMEOUT);
            if !flag.load(Ordering::SeqCst) {
                tracing::error!(
                    process,
                    processes,
                    hostfile = %hostfile.display(),
                    "the run's processes did not all connect within {} s (process {process} \
                     waited for {}): start every process with the same hostfile and its own \
                     --process, and check that each host:port is reachable from the others",
                    CONNECT_TIMEOUT.as_secs(),
                    peers
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| *i as u64 != process)
                        .map(|(i, host)| format!("process {i} at {host}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                std::process::exit(2);
            }
        });
    }
    connected
}

/// Turns timely's reaction to a lost peer (a panic in its network thread, then in
/// the workers reading from it) into one clear error and a prompt exit, instead of a
/// panic message or a worker waiting on a peer that is gone.
pub fn exit_when_a_peer_is_lost() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = crate::panic_message(info);
        if message.starts_with("timely communication error")
            || message.contains("MergeQueue poisoned")
        {
            tracing::error!(
                cause = message,
                "lost the connection to another process of the run (it stopped or was \
                 killed): stopping; continue the run with --resume"
            );
            std::process::exit(3);
        }
        default(info);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_dealt_round_robin_and_uneven_counts_work() {
        let shards = |peers| (0..peers).map(move |index| Shard { index, peers });
        let dealt: Vec<Vec<u32>> = shards(2).map(|s| s.queries(5)).collect();
        assert_eq!(dealt, [vec![0, 2, 4], vec![1, 3]]);
        assert!(shards(3).all(|s| s.queries(2).len() <= 1));
        assert!(Shard { index: 1, peers: 2 }.queries(5).contains(&3));
        assert!(Shard { index: 0, peers: 1 }.writes());
    }

    #[test]
    fn hostfiles_are_checked_against_the_processes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts.txt");
        std::fs::write(&path, "# the run\n127.0.0.1:4100\n\n127.0.0.1:4101\n").unwrap();
        assert_eq!(
            read_hostfile(&path, 2).unwrap(),
            ["127.0.0.1:4100", "127.0.0.1:4101"]
        );
        let err = read_hostfile(&path, 3).unwrap_err().to_string();
        assert!(err.contains("2 host:port lines for 3 processes"), "{err}");
        std::fs::write(&path, "127.0.0.1:4100\nno-such-host.invalid:4101\n").unwrap();
        let err = format!("{:#}", read_hostfile(&path, 2).unwrap_err());
        assert!(
            err.contains("process 1's address \"no-such-host.invalid:4101\""),
            "{err}"
        );
    }
}
