//! The game of one iteration as a timely dataflow, the same on every worker. Each
//! worker plays its share of the queries through the six stages on its own replica
//! of the models; what the stages need of the whole iteration goes through the
//! dataflow's collective steps ([`super::collective`]):
//!
//! ```text
//! iteration ─ challenger ─ solver ─ reward ─ self_reward ─┬──────────── advantage ─ update ───┬─ local ──────────── step ─ record rows ─ gather to worker 0
//!                                                         └ tallies (to all) ┘                 ├─ loss parts (to all) ┘
//!                                                                                              └─ gradient (all-reduce) ┘
//! ```
//!
//! - the tallies: each query's rows, tokens and challenger reward, so that V̄ and the
//!   loss's normalising counts are the whole iteration's, and every worker makes the
//!   same plan of the update;
//! - the update's sequences: dealt out by that plan in micro-batches that share a
//!   prompt, balanced by tokens, and what was measured of them sent back to their rows
//!   ([`super::dealt`]);
//! - the gradient: summed across workers by a reduce-scatter and all-gather of one
//!   chunk per parameter, so every replica takes the same AdamW step;
//! - the loss parts and the stop request, summed, so every worker reports the same
//!   loss and stops after the same iteration.
//!
//! With `update.epochs` = μ > 1 the update's collective steps run μ times in a row:
//! each epoch but the last takes its AdamW step and the loss again for the next.
//!
//! A worker that fails sends nothing more for that iteration; the others find its
//! part missing in the next collective step and fail too, so every worker leaves the
//! iteration with an error instead of waiting.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use lsp_advantage::AdvantageStage;
use lsp_model::LanguageModel;
use lsp_reward::RewardStage;
use lsp_schemas::{GameRecordBatch, GameRecordRow, StepRow, TypedBatch};
use lsp_self_reward::SelfReward;
use lsp_solver::Solver;
use lsp_stage::{QueryTally, Stage};
use lsp_update::StepSums;
use tch::{Kind, Tensor};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::vec::{Map, Partition};
use timely::dataflow::operators::{Input, Probe};
use timely::dataflow::{InputHandle, ProbeHandle, Scope, StreamVec};
use tracing::info;

use super::collective::{Chunk, Collective, Floats, all_reduce, join_at};
use super::engine::{Engine, LocalUpdate};
use super::operator::{Failure, StageOperator};
use super::progress::Progress;
use super::stages::Queries;

/// The advantage stage's name (the stage is generic over the model type).
const ADVANTAGE: &str = <AdvantageStage as Stage<LanguageModel>>::NAME;

/// What a worker's dataflow leaves for its driver, by iteration.
#[derive(Debug, Clone, Default)]
pub struct GameOutputs {
    /// The whole iteration's game record (worker 0 only).
    pub records: Rc<RefCell<BTreeMap<u64, GameRecordBatch>>>,
    /// The step, and whether the run stops after it (every worker alike).
    pub steps: Rc<RefCell<BTreeMap<u64, (StepRow, bool)>>>,
}

/// Values of a gradient piece sent through the all-reduce (4 MB).
const PIECE: usize = 1 << 20;

/// One of the update's three outputs.
#[derive(Debug, Clone)]
pub(super) enum UpdatePart {
    /// The worker's rows and loss parts, for its own step.
    Local(LocalUpdate),
    /// Its loss parts and stop request, for every worker.
    Sums(u32, StepSums, bool),
    /// One parameter's gradient, for the all-reduce.
    Gradient(Chunk),
}

/// What the dataflow shares.
#[derive(Clone)]
pub struct GameContext {
    pub engine: Rc<RefCell<Engine>>,
    pub failure: Failure,
    pub progress: Progress,
    /// Set by Ctrl-C: the run stops after the iteration in progress.
    pub stop: Arc<AtomicBool>,
    /// Compare the replicas' weights every this many iterations (0: never).
    pub replica_check_every: u64,
}

/// The game's dataflow in `scope`, fed iteration numbers by `input`; the probe
/// passes an iteration once its record has reached worker 0.
pub fn game<'scope>(
    scope: Scope<'scope, u64>,
    input: &mut InputHandle<u64, CapacityContainerBuilder<Vec<u64>>>,
    cx: GameContext,
) -> (GameOutputs, ProbeHandle<u64>) {
    let index = scope.index() as u32;
    let peers = scope.peers();
    let outputs = GameOutputs::default();
    let probe = ProbeHandle::new();
    let e = |cx: &GameContext| cx.engine.clone();
    let (e1, e2, e3, e4, e5) = (e(&cx), e(&cx), e(&cx), e(&cx), e(&cx));
    let (f, p) = (cx.failure.clone(), cx.progress.clone());
    let judged = scope
        .input_from(input)
        .container::<Vec<u64>>()
        .stage(Queries::NAME, f.clone(), p.clone(), move |t, _: u64| {
            let mut engine = e1.borrow_mut();
            let slots = engine.slots(t)?;
            engine.run(|s| &mut s.queries, t, None, slots)
        })
        .stage(Solver::NAME, f.clone(), p.clone(), move |t, q| {
            let mut engine = e2.borrow_mut();
            let answered = engine.run(|s| &mut s.solver, t, None, q);
            // The iteration's last generation: what the challenger's and the solver's
            // generations kept goes before the judge and the reference are loaded.
            engine.policy.release_inference_weights();
            answered
        })
        .stage(RewardStage::NAME, f.clone(), p.clone(), move |t, a| {
            e3.borrow_mut().run(|s| &mut s.reward, t, None, a)
        })
        .stage(SelfReward::NAME, f.clone(), p.clone(), move |t, r| {
            e4.borrow_mut().run(|s| &mut s.self_reward, t, None, r)
        });

    let tallies = judged
        .clone()
        .stage("tally", f.clone(), p.clone(), move |_, (batch, _)| {
            Ok((index, e5.borrow().tally(&batch)?))
        })
        .gather_everywhere("tallies", |_, all: Vec<(u32, Vec<QueryTally>)>| vec![all]);

    let (e6, f6) = (e(&cx), f.clone());
    let advantaged = join_at(judged, tallies, ADVANTAGE, move |t, judged, tallies| {
        let (Some(judged), Some(all)) = (judged.into_iter().next(), tallies.into_iter().next())
        else {
            return missing(&f6, t, "their queries' tallies");
        };
        if all.len() != peers {
            return missing(&f6, t, "their queries' tallies");
        }
        let all: Vec<QueryTally> = all.into_iter().flat_map(|(_, t)| t).collect();
        f6.attempt(t, ADVANTAGE, || {
            let (batch, seconds) =
                e6.borrow_mut()
                    .run(|s| &mut s.advantage, t, Some(&all), judged)?;
            Ok((batch, seconds, all))
        })
    });

    let mut parts =
        super::dealt::update(advantaged, e(&cx), &f, &p, cx.stop.clone(), (index, peers));
    // `update.epochs` > 1: every epoch but the last steps, and the loss is taken
    // again for the next, each through the same collective steps.
    let epochs = cx.engine.borrow().stages.update.epochs();
    for epoch in 2..=epochs {
        let (en, stop) = (e(&cx), cx.stop.clone());
        parts = summed(parts, peers, &f).stage(
            &format!("update, epoch {epoch}"),
            f.clone(),
            p.clone(),
            move |t, (mut local, chunks, sums, _): Summed| {
                let mut engine = en.borrow_mut();
                let gradients = gradient_of(&mut engine, &mut local, chunks)?;
                let again = engine.next_epoch(t, &mut local, &gradients, sums)?;
                drop(gradients);
                let stop = stop.load(Ordering::SeqCst);
                let (kept, mut parts) = share_update(again, local.sums, index, peers, stop)?;
                local.gradients = kept;
                parts.push(UpdatePart::Local(local));
                Ok(parts)
            },
        );
    }
    let e9 = e(&cx);
    let every = cx.replica_check_every;
    let stepped = summed(parts, peers, &f).stage(
        "step",
        f.clone(),
        p.clone(),
        move |t, (mut local, chunks, sums, stop): Summed| {
            let mut engine = e9.borrow_mut();
            let gradients = gradient_of(&mut engine, &mut local, chunks)?;
            let (record, step) = engine.step(t, local, &gradients, sums)?;
            drop(gradients);
            let check = peers > 1 && every > 0 && t % every == 0;
            let hash = if check {
                Some(engine.weights_hash()?)
            } else {
                None
            };
            Ok((index, record.to_rows()?, step, stop, hash))
        },
    );

    let steps = outputs.steps.clone();
    let records = outputs.records.clone();
    let f10 = f.clone();
    stepped
        .map(move |(from, rows, step, stop, hash)| {
            steps.borrow_mut().insert(step.iteration, (step, stop));
            (from, rows, hash)
        })
        .gather_at(
            "game record",
            |_| 0,
            move |t, mut parts: Vec<(u32, Vec<GameRecordRow>, Option<u64>)>| {
                if parts.len() != peers {
                    return missing(&f10, t, "their rows of the game record");
                }
                parts.sort_by_key(|(from, _, _)| *from);
                let hashes: Vec<Option<u64>> = parts.iter().map(|(_, _, h)| *h).collect();
                if let Err(e) = replicas_agree(t, &hashes) {
                    f10.set(e);
                    return Vec::<()>::new();
                }
                let mut rows: Vec<GameRecordRow> =
                    parts.into_iter().flat_map(|(_, rows, _)| rows).collect();
                rows.sort_by_key(|r| (r.query_id, r.answer_index));
                match GameRecordBatch::from_rows(&rows) {
                    Ok(record) => {
                        records.borrow_mut().insert(t, record);
                    }
                    Err(e) => f10
                        .set(anyhow::Error::from(e).context(format!("game record, iteration {t}"))),
                }
                Vec::new()
            },
        )
        .probe_with(&probe);
    (outputs, probe)
}

/// A gradient kept whole by the run's only worker (nothing to sum).
pub(super) type KeptGradient = Option<Rc<Vec<Tensor>>>;

/// What a worker shares of its update: its loss parts and stop request for every
/// worker, and its gradient for the all-reduce — or, as the run's only worker, its
/// gradient kept whole (returned).
pub(super) fn share_update(
    gradients: Vec<Tensor>,
    sums: StepSums,
    index: u32,
    peers: usize,
    stop: bool,
) -> anyhow::Result<(KeptGradient, Vec<UpdatePart>)> {
    let mut out = Vec::new();
    let kept = match peers {
        1 => Some(Rc::new(gradients)),
        _ => {
            send_gradient(&gradients, index, &mut out)?;
            None
        }
    };
    out.push(UpdatePart::Sums(index, sums, stop));
    Ok((kept, out))
}

/// A worker's update with the gradient sum's pieces, the summed loss parts and
/// whether any worker asked to stop.
type Summed = (LocalUpdate, Vec<Chunk>, StepSums, bool);

/// The collective steps of an update: every worker's loss parts gathered everywhere
/// and the gradient all-reduced, joined with each worker's own part.
fn summed<'scope>(
    parts: StreamVec<'scope, u64, Vec<UpdatePart>>,
    peers: usize,
    failure: &Failure,
) -> StreamVec<'scope, u64, Summed> {
    let mut parts = parts
        .flat_map(|parts| parts)
        .partition(3, |part| {
            let port = match &part {
                UpdatePart::Local(_) => 0,
                UpdatePart::Sums(..) => 1,
                UpdatePart::Gradient(_) => 2,
            };
            (port, part)
        })
        .into_iter();
    let (local, sums, gradient) = (
        parts.next().expect("three parts"),
        parts.next().expect("three parts"),
        parts.next().expect("three parts"),
    );
    let local = local.flat_map(|part| match part {
        UpdatePart::Local(local) => Some((local, Instant::now())),
        _ => None,
    });
    let sums = sums
        .flat_map(|part| match part {
            UpdatePart::Sums(from, sums, stop) => Some((from, sums, stop)),
            _ => None,
        })
        .gather_everywhere("loss parts", |_, mut all: Vec<(u32, StepSums, bool)>| {
            all.sort_by_key(|(from, _, _)| *from);
            vec![all]
        });
    let gradient = all_reduce(
        gradient.flat_map(|part| match part {
            UpdatePart::Gradient(chunk) => Some(chunk),
            _ => None,
        }),
        "gradient",
    );
    let f8 = failure.clone();
    let with_gradient = join_at(local, gradient, "gradient sum", move |t, local, chunks| {
        let Some((local, sent)) = local.into_iter().next() else {
            return Vec::new();
        };
        // The only worker keeps its gradient; otherwise every piece from every worker.
        let summed = local.gradients.is_some()
            || (!chunks.is_empty()
                && chunks
                    .iter()
                    .all(|(_, senders, _)| *senders as usize == peers));
        if !summed {
            return missing(&f8, t, "their gradients");
        }
        let bytes: usize = chunks.iter().map(|(_, _, v)| 4 * v.len()).sum();
        info!(
            iteration = t,
            workers = peers,
            gradient_bytes = bytes,
            seconds = sent.elapsed().as_secs_f64(),
            "gradient all-reduced"
        );
        vec![(local, chunks)]
    });
    let f9 = failure.clone();
    join_at(with_gradient, sums, "loss sum", move |t, local, sums| {
        let Some((local, chunks)) = local.into_iter().next() else {
            return Vec::new();
        };
        let Some(all) = sums.into_iter().next().filter(|all| all.len() == peers) else {
            return missing(&f9, t, "their loss parts");
        };
        let stop = all.iter().any(|(_, _, stop)| *stop);
        let sums = all
            .iter()
            .fold(StepSums::default(), |total, (_, s, _)| total + *s);
        vec![(local, chunks, sums, stop)]
    })
}

/// The gradient sum: the only worker's own, or the all-reduced pieces as tensors.
fn gradient_of(
    engine: &mut Engine,
    local: &mut LocalUpdate,
    chunks: Vec<Chunk>,
) -> anyhow::Result<Vec<Tensor>> {
    Ok(match local.gradients.take() {
        Some(kept) => Rc::try_unwrap(kept)
            .unwrap_or_else(|shared| shared.iter().map(Tensor::shallow_clone).collect()),
        None => receive_gradient(engine.parameter_layouts(), chunks)?,
    })
}

/// Each of `gradients` (one per parameter) as f32 bytes, in pieces of at most
/// [`PIECE`] values numbered across parameters, onto `out` (each piece copied once out
/// of its tensor); each gradient's memory goes as soon as its bytes are out. The
/// pieces stream through the all-reduce rather than waiting on whole tensors (the
/// embedding alone is 113 MB), as raw bytes (one copy in bincode).
fn send_gradient(
    gradients: &[Tensor],
    worker: u32,
    out: &mut Vec<UpdatePart>,
) -> anyhow::Result<()> {
    let mut piece = 0u32;
    for g in gradients {
        let flat = tch::no_grad(|| {
            g.to_kind(Kind::Float)
                .to_device(tch::Device::Cpu)
                .contiguous()
                .view([-1])
        });
        let n = flat.numel() as i64;
        let mut start = 0;
        while start < n {
            let len = (PIECE as i64).min(n - start);
            let bytes = flat.narrow(0, start, len).view_dtype(Kind::Uint8);
            let part = Floats::from_bytes(Vec::<u8>::try_from(&bytes)?);
            out.push(UpdatePart::Gradient((piece, worker, part)));
            piece += 1;
            start += len;
        }
        drop(flat);
        lsp_update::AdamW::release_grad(g);
    }
    Ok(())
}

/// The gradient sum as one tensor per parameter of `layouts` (shape, kind, device),
/// from the all-reduced pieces of [`send_gradient`], in order.
fn receive_gradient(
    layouts: Vec<(Vec<i64>, Kind, tch::Device)>,
    chunks: Vec<Chunk>,
) -> anyhow::Result<Vec<Tensor>> {
    let pieces: usize = layouts
        .iter()
        .map(|(shape, _, _)| (shape.iter().product::<i64>() as usize).div_ceil(PIECE))
        .sum();
    anyhow::ensure!(
        pieces == chunks.len(),
        "{} gradient pieces for {} parameters in {pieces} pieces",
        chunks.len(),
        layouts.len()
    );
    let mut chunks = chunks.into_iter();
    Ok(layouts
        .into_iter()
        .map(|(shape, kind, device)| {
            let n = shape.iter().product::<i64>() as usize;
            let mut parts = chunks.by_ref().take(n.div_ceil(PIECE));
            // A parameter of one piece (most) is read from it directly.
            let single = (n <= PIECE).then(|| parts.next()).flatten();
            let gradient = match &single {
                Some((_, _, part)) => Tensor::from_data_size(part.bytes(), &shape, Kind::Float),
                None => {
                    let mut bytes = Vec::with_capacity(4 * n);
                    for (_, _, part) in parts {
                        bytes.extend_from_slice(part.bytes());
                    }
                    Tensor::from_data_size(&bytes, &shape, Kind::Float)
                }
            };
            gradient.to_kind(kind).to_device(device)
        })
        .collect())
}

/// An error unless every worker's weights hash (in worker order; `None` where none was
/// taken this iteration) is the same.
fn replicas_agree(t: u64, hashes: &[Option<u64>]) -> anyhow::Result<()> {
    if hashes.iter().any(|h| *h != hashes[0]) {
        anyhow::bail!(
            "iteration {t}: the replicas' weights differ after the step (hashes {hashes:?} \
             by worker): the workers no longer train one model; stopping"
        );
    }
    Ok(())
}

/// Records that other workers' parts of iteration `t` did not come (one of them
/// failed), unless this worker has failed already; nothing goes on.
pub(super) fn missing<O>(failure: &Failure, t: u64, what: &str) -> Vec<O> {
    if !failure.is_set() {
        failure.set(anyhow::anyhow!(
            "iteration {t}: another worker of the run failed (its error is reported \
             beside this one): {what} did not all arrive"
        ));
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_that_differ_stop_the_run() {
        assert!(replicas_agree(3, &[Some(7), Some(7), Some(7)]).is_ok());
        assert!(replicas_agree(4, &[None, None]).is_ok());
        let err = replicas_agree(5, &[Some(7), Some(8)])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("iteration 5: the replicas' weights differ after the step"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_part_fails_the_iteration_once() {
        let failure = Failure::default();
        assert!(missing::<u8>(&failure, 2, "their gradients").is_empty());
        let err = failure.take().unwrap().to_string();
        assert!(
            err.contains("iteration 2: another worker of the run failed"),
            "{err}"
        );
        // A worker's own error is kept, not replaced.
        failure.set(anyhow::anyhow!("own"));
        let _ = missing::<u8>(&failure, 2, "their gradients");
        assert_eq!(failure.take().unwrap().to_string(), "own");
    }
}
