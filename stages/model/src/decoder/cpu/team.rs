//! A few long-lived helper threads that take parts of a decoding step's products,
//! so that the Rust kernel of [`super::panels`] reads the weights with every core.
//!
//! A decoding step makes about 120 small products, one every ~50 µs; starting
//! threads for each (scoped threads) cost more than they saved (measured slower than
//! one thread). The helpers here live as long as the packed weights, take their
//! part over a channel, and spin briefly for the next one before they block, so the
//! hand-off costs microseconds while a step runs and nothing while the model trains.
//! A call borrows what its parts read and write ([`Team::each`] returns once every
//! part has), as scoped threads do.

#![allow(unsafe_code)]

use std::panic::AssertUnwindSafe;
use std::sync::{Mutex, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, Sender, TryRecvError};

/// How long a helper spins for its next part before it blocks: a few gaps between
/// one step's products.
const SPIN: Duration = Duration::from_micros(300);

/// A part of a call to [`Team::each`], for a helper.
type Part = Box<dyn FnOnce() + Send>;

/// The caller's thread plus `size − 1` helpers.
#[derive(Debug)]
pub struct Team {
    helpers: Mutex<Vec<Helper>>,
    size: usize,
}

#[derive(Debug)]
struct Helper {
    parts: Option<Sender<Part>>,
    done: Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

impl Team {
    /// A team of `size` threads in all (at least 1): the caller's and `size − 1`
    /// helpers.
    pub fn new(size: usize) -> Self {
        let size = size.max(1);
        let helpers = (1..size)
            .map(|i| {
                let (parts, inbox) = channel::bounded::<Part>(1);
                let (outbox, done) = channel::bounded(1);
                let thread = std::thread::Builder::new()
                    .name(format!("lsp-decode-{i}"))
                    .spawn(move || serve(&inbox, &outbox))
                    .expect("spawning a decoding helper thread");
                Helper {
                    parts: Some(parts),
                    done,
                    thread: Some(thread),
                }
            })
            .collect();
        Self {
            helpers: Mutex::new(helpers),
            size,
        }
    }

    /// Threads in the team, the caller's included.
    pub fn size(&self) -> usize {
        self.size
    }

    /// `part(i)` for every `i < size`, part 0 on the calling thread and the others on
    /// the helpers; returns once every part has. If another thread is using the
    /// team, or a helper is gone, the caller runs those parts itself.
    ///
    /// # Panics
    /// If a part panics (on a helper: once the others are done).
    pub fn each(&self, part: &(dyn Fn(usize) + Sync)) {
        // A part that panicked earlier poisoned the lock, not the helpers: every
        // part had returned (or its helper had hung up) before the panic went on.
        let helpers = match self.helpers.try_lock() {
            Ok(helpers) => helpers,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return (0..self.size).for_each(part),
        };
        // SAFETY: the helpers call `part` only before they answer on `done` (or
        // hang up, if it panicked), and this waits below for every helper it sent a
        // part to, also when its own part panics: no call outlives the borrow.
        let shared: &'static (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(part) };
        let sent: Vec<bool> = helpers
            .iter()
            .enumerate()
            .map(|(h, helper)| {
                let task: Part = Box::new(move || shared(h + 1));
                helper.parts.as_ref().is_some_and(|p| p.send(task).is_ok())
            })
            .collect();
        let mine = std::panic::catch_unwind(AssertUnwindSafe(|| part(0)));
        let died = helpers
            .iter()
            .zip(&sent)
            .filter(|&(helper, &sent)| sent && receive(&helper.done).is_none())
            .count();
        if let Err(panic) = mine {
            std::panic::resume_unwind(panic);
        }
        assert!(
            died == 0,
            "{died} decoding part(s) panicked on their helpers"
        );
        for (h, _) in sent.iter().enumerate().filter(|&(_, &sent)| !sent) {
            part(h + 1);
        }
    }
}

impl Team {
    /// `work(first, share)` on each thread's share of `out`'s rows (rows of `width`,
    /// at least one each, contiguous: `share` starts at row `first`); returns once
    /// every share is done. For a step's work row by row (an activation, sampling)
    /// that would otherwise run on the caller while the helpers wait.
    pub fn rows<T: Send>(
        &self,
        out: &mut [T],
        width: usize,
        work: &(dyn Fn(usize, &mut [T]) + Sync),
    ) {
        let rows = out.len() / width.max(1);
        let parts = self.size.min(rows);
        if parts <= 1 {
            return work(0, out);
        }
        let first = |i: usize| rows * i / parts;
        let mut rest = out;
        let shares: Vec<Mutex<Option<&mut [T]>>> = (0..parts)
            .map(|i| {
                let (share, after) =
                    std::mem::take(&mut rest).split_at_mut((first(i + 1) - first(i)) * width);
                rest = after;
                Mutex::new(Some(share))
            })
            .collect();
        self.each(&|i| {
            let share = shares
                .get(i)
                .and_then(|s| s.lock().unwrap_or_else(|e| e.into_inner()).take());
            if let Some(share) = share {
                work(first(i), share);
            }
        });
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        let helpers = self.helpers.get_mut().unwrap_or_else(|e| e.into_inner());
        for helper in helpers.iter_mut() {
            helper.parts = None;
        }
        for helper in helpers.iter_mut() {
            if let Some(thread) = helper.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// A helper's loop: until the team is dropped, run each part and send its result.
fn serve(inbox: &Receiver<Part>, outbox: &Sender<()>) {
    while let Some(part) = receive(inbox) {
        part();
        if outbox.send(()).is_err() {
            return;
        }
    }
}

/// The next message of `channel`: spinning for [`SPIN`] (a helper waiting for its
/// next part, the caller for a helper's result), then blocking. `None` once the other
/// side is gone (the team dropped, or a helper died).
fn receive<T>(channel: &Receiver<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        match channel.try_recv() {
            Ok(message) => return Some(message),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) if start.elapsed() < SPIN => std::hint::spin_loop(),
            Err(TryRecvError::Empty) => return channel.recv().ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::panic::catch_unwind;
    use std::thread::ThreadId;

    use super::*;

    #[test]
    fn every_part_runs_once_on_its_own_thread_borrowing_the_callers_data() {
        let team = Team::new(3);
        assert_eq!(team.size(), 3);
        let caller = std::thread::current().id();
        for round in 0..50 {
            let seen: Mutex<Vec<(usize, ThreadId, usize)>> = Mutex::new(Vec::new());
            team.each(&|i| {
                seen.lock()
                    .unwrap()
                    .push((i, std::thread::current().id(), round));
            });
            let mut seen = seen.into_inner().unwrap();
            seen.sort_by_key(|&(i, ..)| i);
            assert_eq!(seen.iter().map(|&(i, ..)| i).collect::<Vec<_>>(), [0, 1, 2]);
            assert!(seen.iter().all(|&(.., r)| r == round));
            assert_eq!(seen[0].1, caller);
            assert!(seen[1].1 != caller && seen[2].1 != caller && seen[1].1 != seen[2].1);
        }
    }

    #[test]
    fn rows_go_to_the_threads_in_contiguous_shares_of_whole_rows() {
        for (size, rows) in [(2, 1), (2, 7), (3, 32), (1, 5), (4, 2)] {
            let team = Team::new(size);
            let mut out = vec![(0usize, usize::MAX); rows * 3];
            let threads = Mutex::new(Vec::new());
            team.rows(&mut out, 3, &|first, share| {
                assert_eq!(share.len() % 3, 0);
                threads.lock().unwrap().push(std::thread::current().id());
                for (r, row) in share.chunks_mut(3).enumerate() {
                    row.fill((first + r, row.len()));
                }
            });
            // Every row written once, by its own index; one thread per share.
            let want: Vec<_> = (0..rows).flat_map(|r| [(r, 3); 3]).collect();
            assert_eq!(out, want, "{size} threads, {rows} rows");
            let mut threads = threads.into_inner().unwrap();
            assert_eq!(threads.len(), size.min(rows));
            threads.dedup();
            assert_eq!(threads.len(), size.min(rows));
        }
    }

    #[test]
    fn a_team_of_one_is_the_caller() {
        let team = Team::new(0);
        assert_eq!(team.size(), 1);
        let seen = Mutex::new(Vec::new());
        team.each(&|i| seen.lock().unwrap().push(i));
        assert_eq!(seen.into_inner().unwrap(), [0]);
    }

    #[test]
    fn a_panic_returns_only_once_every_part_is_done_and_the_team_carries_on() {
        let team = Team::new(2);
        // The caller's part panics at once; the helper's finishes later.
        let done = Mutex::new(false);
        let caught = catch_unwind(AssertUnwindSafe(|| {
            team.each(&|i| match i {
                0 => panic!("the caller's part"),
                _ => {
                    std::thread::sleep(Duration::from_millis(50));
                    *done.lock().unwrap() = true;
                }
            })
        }));
        assert!(caught.is_err());
        assert!(*done.lock().unwrap(), "returned before the helper's part");
        // The helper's part panics: its thread is gone, the caller says so...
        let caught = catch_unwind(AssertUnwindSafe(|| {
            team.each(&|i| assert!(i == 0, "the helper's part"))
        }));
        let message = caught.expect_err("a part panicked");
        assert_eq!(
            message.downcast_ref::<String>().map(String::as_str),
            Some("1 decoding part(s) panicked on their helpers")
        );
        // ...and runs its parts from then on.
        let seen = Mutex::new(Vec::new());
        team.each(&|i| seen.lock().unwrap().push((i, std::thread::current().id())));
        let seen = seen.into_inner().unwrap();
        assert_eq!(seen.len(), 2);
        assert!(
            seen.iter()
                .all(|&(_, id)| id == std::thread::current().id())
        );
    }
}
