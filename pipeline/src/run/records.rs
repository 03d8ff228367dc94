//! The writer thread: game records, monitor rows and checkpoints are written off the
//! dataflow's thread, in the order they were queued, each file atomically; so a
//! checkpoint is marked complete only after the records it covers are on disk. Each
//! write is acknowledged; a failure surfaces at the next [`RecordWriter::poll`] or
//! [`RecordWriter::flush`].

use std::path::PathBuf;
use std::thread::JoinHandle;

use crossbeam::channel::{Receiver, Sender, TryRecvError, bounded, unbounded};
use lsp_schemas::{TypedBatch, write_parquet};

use super::checkpoint::Checkpoint;

/// Held by a queued checkpoint until it is written: the weights it reads must not
/// change before (see [`hold`]).
pub struct Hold {
    _sender: Sender<()>,
}

/// A hold and what waits on it: [`Released::wait`] returns once the hold is dropped.
pub fn hold() -> (Hold, Released) {
    let (sender, receiver) = bounded(0);
    (Hold { _sender: sender }, Released(receiver))
}

/// Waits for a [`Hold`] to be dropped.
#[derive(Debug)]
pub struct Released(Receiver<()>);

impl Released {
    /// Returns once the hold is gone (nothing is ever sent).
    pub fn wait(self) {
        let _ = self.0.recv();
    }
}

/// One file to write.
type Job = Box<dyn FnOnce() -> anyhow::Result<()> + Send>;

/// A running writer.
pub struct RecordWriter {
    jobs: Option<Sender<Job>>,
    done: Receiver<anyhow::Result<()>>,
    thread: Option<JoinHandle<()>>,
    pending: usize,
}

impl RecordWriter {
    /// Starts the writer thread.
    pub fn start() -> Self {
        let (jobs, inbox) = unbounded::<Job>();
        let (report, done) = bounded(64);
        let thread = std::thread::Builder::new()
            .name("run-writer".into())
            .spawn(move || {
                for job in inbox {
                    if report.send(job()).is_err() {
                        break;
                    }
                }
            })
            .expect("spawning the writer thread");
        Self {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
            pending: 0,
        }
    }

    /// Queues `batch` for `path`.
    pub fn write<T: TypedBatch + Send + 'static>(&mut self, path: PathBuf, batch: T) {
        self.run(Box::new(move || {
            Ok(write_parquet(&path, std::slice::from_ref(&batch))?)
        }));
    }

    /// Queues `checkpoint`; `hold` is dropped once it is written (or has failed).
    pub fn checkpoint(&mut self, checkpoint: Checkpoint, hold: Hold) {
        self.run(Box::new(move || {
            let written = checkpoint.write();
            drop(hold);
            written
        }));
    }

    fn run(&mut self, job: Job) {
        self.jobs
            .as_ref()
            .expect("open until finish")
            .send(job)
            .expect("writer thread alive");
        self.pending += 1;
    }

    /// The first failure among the writes done so far, without waiting for the rest.
    pub fn poll(&mut self) -> anyhow::Result<()> {
        let mut first_error = None;
        while self.pending > 0 {
            match self.done.try_recv() {
                Ok(result) => {
                    self.pending -= 1;
                    if let Err(e) = result {
                        first_error.get_or_insert(e);
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => anyhow::bail!("the writer thread stopped"),
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Waits until every queued record is written; the first failure is returned.
    pub fn flush(&mut self) -> anyhow::Result<()> {
        let mut first_error = None;
        while self.pending > 0 {
            self.pending -= 1;
            match self.done.recv() {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(_) => anyhow::bail!("the writer thread stopped"),
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Flushes and stops the thread.
    pub fn finish(mut self) -> anyhow::Result<()> {
        let result = self.flush();
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        result
    }
}

/// A writer dropped on an error path still finishes what was queued (a checkpoint
/// half-written when the process ends would only be ignored, but finished work is
/// kept).
impl Drop for RecordWriter {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
