//! A few long-lived helper threads that take parts of a decoding step's products,
//! so that the Rust kernel of [`super::panels`] reads the weights with every core.
//!
//! A decoding step makes about 120 small products, one every ~50 µs; starting
//! threads for each (scoped threads) cost more than they saved (measured slower than
//! one thread). The helpers here live as long as the packed weights, take their
//! part over a channel, and spin briefly for the next one before they block, so the
//! hand-off costs microseconds while a step runs and nothing while the model trains.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, Sender, TryRecvError};

/// How long a helper spins for its next part before it blocks: a few gaps between
/// one step's products.
const SPIN: Duration = Duration::from_micros(300);

/// A part of a product: computes and returns its share of the output.
type Part = Box<dyn FnOnce() -> Vec<f32> + Send>;

/// The caller's thread plus `size − 1` helpers.
#[derive(Debug)]
pub struct Team {
    helpers: Mutex<Vec<Helper>>,
    size: usize,
}

#[derive(Debug)]
struct Helper {
    parts: Option<Sender<Part>>,
    done: Receiver<Vec<f32>>,
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
    /// the helpers; the results in order. If another thread is using the team, or a
    /// helper is gone, the caller computes those parts itself.
    pub fn run<F>(&self, part: Arc<F>) -> Vec<Vec<f32>>
    where
        F: Fn(usize) -> Vec<f32> + Send + Sync + 'static,
    {
        let Ok(helpers) = self.helpers.try_lock() else {
            return (0..self.size).map(|i| part(i)).collect();
        };
        let sent: Vec<bool> = helpers
            .iter()
            .enumerate()
            .map(|(h, helper)| {
                let part = Arc::clone(&part);
                let task: Part = Box::new(move || part(h + 1));
                helper.parts.as_ref().is_some_and(|p| p.send(task).is_ok())
            })
            .collect();
        let mut results = vec![part(0)];
        for (h, helper) in helpers.iter().enumerate() {
            let result = match sent[h] {
                true => receive(&helper.done),
                false => None,
            };
            results.push(result.unwrap_or_else(|| part(h + 1)));
        }
        results
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
fn serve(inbox: &Receiver<Part>, outbox: &Sender<Vec<f32>>) {
    while let Some(part) = receive(inbox) {
        if outbox.send(part()).is_err() {
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
    use super::*;

    #[test]
    fn every_part_runs_once_in_order_on_its_own_thread() {
        let team = Team::new(3);
        assert_eq!(team.size(), 3);
        let caller = std::thread::current().id();
        for round in 0..50 {
            let ids = Arc::new(Mutex::new(Vec::new()));
            let seen = Arc::clone(&ids);
            let results = team.run(Arc::new(move |i: usize| {
                seen.lock().unwrap().push((i, std::thread::current().id()));
                vec![(round * 10 + i) as f32]
            }));
            let expected: Vec<Vec<f32>> = (0..3).map(|i| vec![(round * 10 + i) as f32]).collect();
            assert_eq!(results, expected);
            let mut ids = ids.lock().unwrap().clone();
            ids.sort_by_key(|&(i, _)| i);
            assert_eq!(ids.len(), 3);
            assert_eq!(ids[0].1, caller);
            assert!(ids[1].1 != caller && ids[2].1 != caller && ids[1].1 != ids[2].1);
        }
    }

    #[test]
    fn a_team_of_one_is_the_caller() {
        let team = Team::new(0);
        assert_eq!(team.size(), 1);
        assert_eq!(
            team.run(Arc::new(|i: usize| vec![i as f32])),
            vec![vec![0.0]]
        );
    }
}
