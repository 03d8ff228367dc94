//! The one timely operator every stage runs in: a small extension trait over `unary`
//! that applies a stage's `process` to each batch at its iteration (the timestamp).
//! A stage error stops the flow and is kept for the driver to report.

use std::cell::RefCell;
use std::rc::Rc;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;

use super::progress::Progress;

/// The first error of a run, shared by its operators and its driver.
#[derive(Debug, Clone, Default)]
pub struct Failure(Rc<RefCell<Option<anyhow::Error>>>);

impl Failure {
    /// Keeps `error` unless one is kept already.
    pub fn set(&self, error: anyhow::Error) {
        self.0.borrow_mut().get_or_insert(error);
    }

    /// Whether an error was kept.
    pub fn is_set(&self) -> bool {
        self.0.borrow().is_some()
    }

    /// Takes the kept error.
    pub fn take(&self) -> Option<anyhow::Error> {
        self.0.borrow_mut().take()
    }

    /// `logic()`'s output as a one-item list, unless an error is kept already (an
    /// empty list) or `logic` fails (its error kept, in `stage` of `iteration`).
    pub fn attempt<O>(
        &self,
        iteration: u64,
        stage: &str,
        logic: impl FnOnce() -> anyhow::Result<O>,
    ) -> Vec<O> {
        if self.is_set() {
            return Vec::new();
        }
        match logic() {
            Ok(out) => vec![out],
            Err(e) => {
                self.set(e.context(format!("{stage} stage, iteration {iteration}")));
                Vec::new()
            }
        }
    }
}

/// Applies a stage to every batch of a stream of iteration-stamped batches.
pub trait StageOperator<'scope, I> {
    /// `logic(iteration, batch)` for each batch, shown on `progress`; its output goes
    /// on at the same time.
    fn stage<O, L>(
        self,
        name: &str,
        failure: Failure,
        progress: Progress,
        logic: L,
    ) -> StreamVec<'scope, u64, O>
    where
        O: Clone + 'static,
        L: FnMut(u64, I) -> anyhow::Result<O> + 'static;
}

impl<'scope, I: Clone + 'static> StageOperator<'scope, I> for StreamVec<'scope, u64, I> {
    fn stage<O, L>(
        self,
        name: &str,
        failure: Failure,
        progress: Progress,
        mut logic: L,
    ) -> StreamVec<'scope, u64, O>
    where
        O: Clone + 'static,
        L: FnMut(u64, I) -> anyhow::Result<O> + 'static,
    {
        let name = name.to_string();
        self.unary::<CapacityContainerBuilder<Vec<O>>, _, _, _>(
            Pipeline,
            &name.clone(),
            move |_, _| {
                move |input, output| {
                    input.for_each(|cap, data| {
                        let iteration = *cap.least().expect("a stamp has a least time");
                        let mut session = output.session(&cap);
                        for item in data.drain(..) {
                            if failure.is_set() {
                                continue;
                            }
                            progress.stage(iteration, &name);
                            match logic(iteration, item) {
                                Ok(out) => session.give(out),
                                Err(e) => failure
                                    .set(e.context(format!("{name} stage, iteration {iteration}"))),
                            }
                        }
                    });
                }
            },
        )
    }
}
