//! `pipeline run epoch.yaml`: the stages of Algorithm 1 as a timely dataflow whose
//! timestamps are iterations. Iteration t+1 is fed only once the probe says t has
//! left the update (timely's progress tracking, no polling of stage state), so the
//! challenger of t+1 samples from the updated policy. Every iteration's game record is
//! written to Parquet by a writer thread; checkpoints and `--resume` keep the record
//! free of gaps and duplicates across a kill.

mod checkpoint;
mod data;
mod engine;
pub mod layout;
mod manifest;
mod operator;
mod progress;
mod records;
mod reference;
mod summary;

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::Args;
use lsp_schemas::{GameRecordBatch, MonitorBatch, MonitorRow, StepRow, TypedBatch};
use timely::dataflow::operators::{Input, Inspect, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};
use tracing::{info, warn};

use crate::config::{EpochConfig, load_epoch};
use crate::monitor::{LiveMonitor, MonitorConfig, observe};
use engine::Engine;
use layout::RunDir;
use operator::{Failure, StageOperator};
use records::RecordWriter;
pub use summary::Summary;

/// Arguments of `pipeline run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The config file.
    config: PathBuf,
    /// Continue the run from its last complete checkpoint.
    #[arg(long)]
    resume: bool,
    /// Progress bar: `auto` (when stderr is a terminal), `bar` or `none`.
    #[arg(long, value_enum, default_value = "auto")]
    progress: progress::ProgressMode,
    /// Write `pipeline report` into each run folder when the run stops.
    #[arg(long)]
    report: bool,
}

/// Set by Ctrl-C: the run stops after the iteration in progress.
fn interrupted() -> Arc<AtomicBool> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        let handler = flag.clone();
        if let Err(e) = ctrlc::set_handler(move || {
            handler.store(true, Ordering::SeqCst);
        }) {
            warn!(error = %e, "Ctrl-C handler not installed");
        }
        flag
    })
    .clone()
}

/// Runs the config (each of its stages in turn, if it has them); returns the closing
/// message.
pub fn run(args: &RunArgs) -> anyhow::Result<String> {
    let config = load_epoch(&args.config)?;
    tch::set_num_threads(config.run.threads as i32);
    tch::set_num_interop_threads(1);
    if config.stages.is_empty() {
        let dir = RunDir::new(&config.run.output_dir, &config.run.name);
        let message = run_one(config, dir.clone(), args.resume, args.progress)?;
        return with_report(message, &dir, args.report);
    }
    // A staged run: output_dir/name/<stage>/, each stage starting from the previous
    // stage's final model (and, unless `model.reference` is set, with it as reference).
    let root = config.run.output_dir.join(&config.run.name);
    let mut message = String::new();
    let mut policy = config.model.policy.clone();
    for stage in &config.stages {
        let mut staged = config.staged(stage);
        staged.model.policy = policy.clone();
        let dir = RunDir::new(&root, &stage.name);
        info!(stage = stage.name, mode = staged.run.mode.as_str(), policy = %policy.display(), "stage");
        let done = run_one(staged, dir.clone(), args.resume, args.progress)?;
        message.push_str(&with_report(done, &dir, args.report)?);
        anyhow::ensure!(
            dir.final_model().is_dir(),
            "stage {} stopped before its last iteration: the next stage needs its final model",
            stage.name
        );
        policy = dir.final_model();
    }
    Ok(message)
}

/// `message`, followed by the report's own line when one was asked for.
fn with_report(message: String, dir: &RunDir, report: bool) -> anyhow::Result<String> {
    if !report || !dir.records().is_dir() {
        return Ok(message);
    }
    Ok(message + &crate::report::write_report(dir.root(), None)?)
}

/// Runs one config into `dir`.
fn run_one(
    config: EpochConfig,
    dir: RunDir,
    resume: bool,
    progress: progress::ProgressMode,
) -> anyhow::Result<String> {
    let (start, policy_folder) = plan_start(&config, &dir, resume)?;
    let total = config.run.iterations;
    if start > total {
        return Ok(format!(
            "run {} already finished its {total} iterations\n",
            dir.root().display()
        ));
    }
    manifest::write_or_note_resume(&dir, &config, start)?;
    let stop = interrupted();
    let config = Arc::new(config);
    let dir_for_worker = dir.clone();
    let done = timely::execute_directly(move |worker| -> anyhow::Result<u64> {
        let dir = dir_for_worker;
        let run_id = config.run.name.clone();
        let mut engine = Engine::build(&config, &policy_folder, &run_id)?;
        if start > 1 {
            engine
                .update
                .optimizer()
                .load(&dir.checkpoint(start - 1).join("optimizer.safetensors"))?;
        }
        let engine = Rc::new(RefCell::new(engine));
        let shown = progress::Progress::new(progress, start, total);
        let failure = Failure::default();
        let finished: Rc<RefCell<Vec<(GameRecordBatch, StepRow)>>> = Rc::default();
        let mut input = InputHandle::new();
        let probe = ProbeHandle::new();
        worker.dataflow(|scope| {
            let (e1, e2, e3, e4, e5, e6) = (
                engine.clone(),
                engine.clone(),
                engine.clone(),
                engine.clone(),
                engine.clone(),
                engine.clone(),
            );
            let sink = finished.clone();
            scope
                .input_from(&mut input)
                .container::<Vec<u64>>()
                .stage(
                    "challenger",
                    failure.clone(),
                    shown.clone(),
                    move |t, _: u64| e1.borrow().queries(t),
                )
                .stage("solver", failure.clone(), shown.clone(), move |t, q| {
                    e2.borrow().answers(t, q)
                })
                .stage("reward", failure.clone(), shown.clone(), move |_, a| {
                    e3.borrow_mut().rewards(a)
                })
                .stage(
                    "self_reward",
                    failure.clone(),
                    shown.clone(),
                    move |t, r| e4.borrow_mut().self_rewards(t, r),
                )
                .stage("advantage", failure.clone(), shown.clone(), move |_, j| {
                    e5.borrow().advantages(j)
                })
                .stage("update", failure.clone(), shown.clone(), move |t, a| {
                    e6.borrow_mut().update(t, a)
                })
                .inspect(move |out| sink.borrow_mut().push(out.clone()))
                .probe_with(&probe);
        });
        let mut monitor = if config.monitor.enabled {
            Some(start_monitor(worker, &dir, &config.monitor, start)?)
        } else {
            None
        };
        let mut writer = RecordWriter::start();
        input.advance_to(start);
        let mut last = start - 1;
        for t in start..=total {
            input.send(t);
            input.advance_to(t + 1);
            while probe.less_than(input.time()) && !failure.is_set() {
                worker.step();
            }
            if let Some(e) = failure.take() {
                writer.finish()?;
                return Err(e);
            }
            let (record, _step) = finished
                .borrow_mut()
                .pop()
                .context("the iteration produced no record")?;
            let (record, monitored) = match monitor.as_mut() {
                Some(live) => {
                    let (record, row) = watch(worker, live, &config.monitor, &run_id, t, record)?;
                    (record, Some(row))
                }
                None => (record, None),
            };
            shown.iteration_done(&Summary::of(&record)?.line(total, monitored.as_ref()));
            writer.write(dir.record(t), record);
            if let Some(row) = monitored {
                writer.write(dir.monitor_row(t), MonitorBatch::from_rows(&[row])?);
            }
            let every = config.run.checkpoint_every;
            if (every > 0 && t % every == 0) || t == total {
                // Records up to t are on disk before the checkpoint says t is done.
                writer.flush()?;
                checkpoint::save(&dir, &mut engine.borrow_mut(), t)?;
            }
            last = t;
            if stop.load(Ordering::SeqCst) {
                warn!(iteration = t, "interrupted: stopping after this iteration");
                break;
            }
        }
        shown.finish();
        writer.finish()?;
        if last == total {
            engine.borrow().policy.save(&dir.final_model())?;
        }
        Ok(last)
    })?;
    Ok(format!(
        "run {}: iterations {start}..={done} done; records in {}, final model {}\n",
        dir.root().display(),
        dir.records().display(),
        if done == total {
            dir.final_model().display().to_string()
        } else {
            "not written (stopped early)".into()
        }
    ))
}

/// The live monitor, caught up with the records of the iterations before `start` (a
/// resumed run compares its new queries with those too).
fn start_monitor(
    worker: &mut timely::worker::Worker,
    dir: &RunDir,
    config: &MonitorConfig,
    start: u64,
) -> anyhow::Result<LiveMonitor> {
    let mut live = LiveMonitor::new(worker);
    for t in dir
        .recorded_iterations()?
        .into_iter()
        .filter(|&t| t < start)
    {
        let rows = dir.read_record(t)?.to_rows()?;
        let (queries, answers) = observe(&rows, config);
        live.observe(worker, t, &queries, &answers);
    }
    Ok(live)
}

/// Runs the monitor over iteration `t`'s record: the record with its monitor columns
/// filled, and the iteration's monitor row (its warnings logged).
fn watch(
    worker: &mut timely::worker::Worker,
    live: &mut LiveMonitor,
    config: &MonitorConfig,
    run_id: &str,
    t: u64,
    record: GameRecordBatch,
) -> anyhow::Result<(GameRecordBatch, MonitorRow)> {
    let rows = record.to_rows()?;
    let (queries, answers) = observe(&rows, config);
    let result = live.observe(worker, t, &queries, &answers);
    let row = result.row(run_id, t, config);
    for warning in &row.warnings {
        warn!(iteration = t, "monitor: {warning}");
    }
    Ok((record.with_monitor(&result.row_monitors(&rows))?, row))
}

/// Where to start: iteration 1 from the configured policy, or after the last complete
/// checkpoint when resuming, with any record past it removed (it will be redone).
fn plan_start(config: &EpochConfig, dir: &RunDir, resume: bool) -> anyhow::Result<(u64, PathBuf)> {
    if !dir.has_output() {
        return Ok((1, config.model.policy.clone()));
    }
    anyhow::ensure!(
        resume,
        "{} already holds a run: continue it with --resume, or set another run.name",
        dir.root().display()
    );
    let last = dir.last_checkpoint()?;
    let done = last.unwrap_or(0);
    for iteration in dir.recorded_iterations()? {
        if iteration > done {
            warn!(
                iteration,
                "removing the record of an iteration past the last checkpoint; it is redone"
            );
            std::fs::remove_file(dir.record(iteration))?;
        }
    }
    for iteration in dir.monitored_iterations()? {
        if iteration > done {
            std::fs::remove_file(dir.monitor_row(iteration))?;
        }
    }
    match last {
        Some(c) => {
            let state = checkpoint::load_state(dir, c)?;
            info!(
                checkpoint = c,
                optimizer_steps = state.optimizer_steps,
                "resuming"
            );
            Ok((c + 1, dir.checkpoint(c).join("model")))
        }
        None => Ok((1, config.model.policy.clone())),
    }
}
