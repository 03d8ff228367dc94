//! The update's sequences dealt out by the update's plan ([`lsp_update::Plan`]): each
//! worker sends its sequences (its queries' answers, and the queries the challenger is
//! trained on) to the workers that train them, trains the micro-batches it is dealt,
//! and sends what it measured of each sequence back to the worker whose rows it came
//! from, which appends it to its rows as the update stage does on one worker.
//!
//! ```text
//! advantage ─ deal ─┬─ sequences (to their trainers) ─ train ─┬─ measured (to their owners) ─ rows ─ local part
//!                   └─ own rows ───────────────────────┘       ├─ loss parts, gradient pieces
//!                                                              └─ own rows ─────────────┘
//! ```
//!
//! Every worker sends every other a message for each iteration, empty or not, so a
//! worker dealt nothing still trains (nothing) and takes part in the all-reduce; a
//! message that does not come means its sender failed.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use lsp_schemas::{AdvantageBatch, StageSeconds};
use lsp_stage::{QueryTally, Stage};
use lsp_update::{Item, ItemKey, Measured, Plan, StepSums, Update};
use timely::dataflow::StreamVec;
use timely::dataflow::operators::Concat;
use timely::dataflow::operators::vec::{Map, Partition};
use tracing::debug;

use super::collective::{Collective, join_at};
use super::engine::{Engine, LocalUpdate};
use super::game::{KeptGradient, UpdatePart, missing, share_update};
use super::operator::{Failure, StageOperator};
use super::progress::Progress;

/// A worker's batch of an iteration after the advantage stage, with its timings and
/// every worker's tallies.
pub type Advantaged = (AdvantageBatch, StageSeconds, Vec<QueryTally>);

/// One owner's sequences for one trainer, each with its micro-batch: `(to, from,
/// sequences)`.
type Dealt = (u32, u32, Vec<(u32, Item)>);

/// One trainer's measurements for one owner: `(to, measurements)`.
type Measurements = (u32, Vec<(ItemKey, Measured)>);

/// A worker's own rows while their sequences are trained, with its loss parts and, as
/// the run's only worker, its gradient.
#[derive(Clone)]
struct Own {
    advantaged: AdvantageBatch,
    seconds: StageSeconds,
    sums: StepSums,
    gradients: KeptGradient,
}

/// What a trainer gives on.
#[derive(Clone)]
enum Trained {
    Own(Own),
    Back(Measurements),
    Parts(Vec<UpdatePart>),
}

/// The update of the game's dataflow, from the advantage stage's output: its parts
/// (each worker's rows and loss parts, and its gradient in pieces) for the collective
/// steps.
pub fn update<'scope>(
    advantaged: StreamVec<'scope, u64, Advantaged>,
    engine: Rc<RefCell<Engine>>,
    failure: &Failure,
    progress: &Progress,
    stop: Arc<AtomicBool>,
    (index, peers): (u32, usize),
) -> StreamVec<'scope, u64, Vec<UpdatePart>> {
    let e = engine.clone();
    let dealt = advantaged.stage(
        Update::NAME,
        failure.clone(),
        progress.clone(),
        move |_, (advantaged, seconds, tallies): Advantaged| {
            let engine = e.borrow();
            let update = &engine.stages.update;
            let plan = update.plan(&tallies, peers);
            let mut to: Vec<Vec<(u32, Item)>> = vec![Vec::new(); peers];
            for (worker, unit, item) in plan.route(update.items(&advantaged)?)? {
                to[worker as usize].push((unit, item));
            }
            let sent: Vec<Dealt> = (0..peers as u32)
                .zip(to)
                .map(|(w, s)| (w, index, s))
                .collect();
            Ok(((advantaged, seconds, tallies), sent))
        },
    );
    let own = dealt.clone().map(|(own, _)| own);
    let received = dealt.flat_map(|(_, sent)| sent).gather_at(
        "sequences",
        |(to, _, _)| u64::from(*to),
        |_, all: Vec<Dealt>| vec![all],
    );

    let (e, f, p) = (engine.clone(), failure.clone(), progress.clone());
    let trained = join_at(own, received, Update::NAME, move |t, own, received| {
        p.stage(t, Update::NAME);
        let Some((advantaged, mut seconds, tallies)) = own.into_iter().next() else {
            return Vec::new();
        };
        let Some(received) = received.into_iter().next().filter(|r| r.len() == peers) else {
            return missing(&f, t, "their sequences to train");
        };
        let trained = f.attempt(t, Update::NAME, || {
            let start = Instant::now();
            let mut owner = HashMap::new();
            let mut dealt = Vec::new();
            for (_, from, sequences) in received {
                for (unit, item) in sequences {
                    owner.insert(item.key, from);
                    dealt.push((unit, item));
                }
            }
            let batches = Plan::micro_batches(dealt);
            debug!(
                iteration = t,
                micro_batches = batches.len(),
                sequences = batches.iter().map(Vec::len).sum::<usize>(),
                "update dealt"
            );
            let mut engine = e.borrow_mut();
            let measured = engine.train(t, &tallies, batches)?;
            let (sums, gradients) = engine.stages.update.take_gradient()?;
            let mut back: Vec<Measurements> = (0..peers as u32).map(|w| (w, Vec::new())).collect();
            for (key, m) in measured {
                back[owner[&key] as usize].1.push((key, m));
            }
            seconds.update += start.elapsed().as_secs_f64();
            let stop = stop.load(Ordering::SeqCst);
            let (gradients, parts) = share_update(gradients, sums, index, peers, stop)?;
            let own = Own {
                advantaged,
                seconds,
                sums,
                gradients,
            };
            Ok((own, back, parts))
        });
        trained
            .into_iter()
            .flat_map(|(own, back, parts)| {
                std::iter::once(Trained::Own(own))
                    .chain(back.into_iter().map(Trained::Back))
                    .chain([Trained::Parts(parts)])
            })
            .collect()
    });

    let mut split = trained
        .partition(3, |part| {
            let port = match &part {
                Trained::Own(_) => 0,
                Trained::Back(_) => 1,
                Trained::Parts(_) => 2,
            };
            (port, part)
        })
        .into_iter();
    let (own, back, parts) = (
        split.next().expect("three parts"),
        split.next().expect("three parts"),
        split.next().expect("three parts"),
    );
    let own = own.flat_map(|part| match part {
        Trained::Own(own) => Some(own),
        _ => None,
    });
    let parts = parts.flat_map(|part| match part {
        Trained::Parts(parts) => Some(parts),
        _ => None,
    });
    let measured = back
        .flat_map(|part| match part {
            Trained::Back(back) => Some(back),
            _ => None,
        })
        .gather_at(
            "measured",
            |(to, _)| u64::from(*to),
            |_, all: Vec<Measurements>| vec![all],
        );

    let (e, f) = (engine, failure.clone());
    let local = join_at(own, measured, "update rows", move |t, own, measured| {
        let Some(own) = own.into_iter().next() else {
            return Vec::new();
        };
        let Some(measured) = measured.into_iter().next().filter(|m| m.len() == peers) else {
            return missing(&f, t, "their measurements of this worker's sequences");
        };
        f.attempt(t, Update::NAME, || {
            let measured: Vec<(ItemKey, Measured)> =
                measured.into_iter().flat_map(|(_, m)| m).collect();
            let updated = e
                .borrow()
                .stages
                .update
                .record(&own.advantaged, &measured)?;
            Ok(vec![UpdatePart::Local(LocalUpdate {
                updated,
                sums: own.sums,
                seconds: own.seconds,
                gradients: own.gradients,
            })])
        })
    });
    local.concat(parts)
}
