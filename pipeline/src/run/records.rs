//! The Parquet writer thread: game records and monitor rows are written off the
//! dataflow's thread, each file atomically, and each write is acknowledged so that a checkpoint is marked
//! complete only after the records it covers are on disk.

use std::path::PathBuf;
use std::thread::JoinHandle;

use crossbeam::channel::{Receiver, Sender, bounded, unbounded};
use lsp_schemas::{TypedBatch, write_parquet};

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
            .name("parquet-writer".into())
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
        let job: Job = Box::new(move || Ok(write_parquet(&path, std::slice::from_ref(&batch))?));
        self.jobs
            .as_ref()
            .expect("open until finish")
            .send(job)
            .expect("writer thread alive");
        self.pending += 1;
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
                Err(_) => anyhow::bail!("the Parquet writer thread stopped"),
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
