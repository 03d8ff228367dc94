//! `pipeline run epoch.yaml`: the stages of Algorithm 1 as a timely dataflow whose
//! timestamps are iterations. Iteration t+1 is fed only once the probe says t has
//! left the update (timely's progress tracking, no polling of stage state), so the
//! challenger of t+1 samples from the updated policy. Every iteration's game record is
//! written to Parquet by a writer thread; checkpoints and `--resume` keep the record
//! free of gaps and duplicates across a kill.

mod checkpoint;
mod checksums;
mod cluster;
mod collective;
mod data;
mod dealt;
mod engine;
mod game;
pub mod layout;
mod manifest;
mod operator;
mod progress;
mod records;
mod reference;
mod stages;
mod summary;

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::Args;
use lsp_schemas::{GameRecordBatch, MonitorBatch, MonitorRow, TypedBatch};
use timely::dataflow::InputHandle;
use tracing::{info, warn};

use crate::config::{EpochConfig, load_epoch};
use crate::monitor::{LiveMonitor, MonitorConfig, observe};
use engine::Engine;
use layout::RunDir;
use operator::Failure;
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
    /// With --resume: apply a config that differs from the run's (beyond
    /// run.iterations and the workers' layout), recorded in manifest.json.
    #[arg(long, requires = "resume")]
    allow_config_change: bool,
    /// Progress bar: `auto` (when stderr is a terminal), `bar` or `none`.
    #[arg(long, value_enum, default_value = "auto")]
    progress: progress::ProgressMode,
    /// Write `pipeline report` into each run folder when the run stops.
    #[arg(long)]
    report: bool,
    /// timely workers in this process (`run.workers`).
    #[arg(long)]
    workers: Option<u64>,
    /// Processes of the run (`run.processes`); each is started with the same config
    /// and its own `--process`.
    #[arg(long)]
    processes: Option<u64>,
    /// This process's index, from 0 (`run.process`); process 0 writes the outputs.
    #[arg(long)]
    process: Option<u64>,
    /// One `host:port` per line, a line per process (`run.hostfile`).
    #[arg(long)]
    hostfile: Option<PathBuf>,
}

impl RunArgs {
    /// The command line's cluster settings over the config's, checked again.
    fn apply(&self, config: &mut EpochConfig) -> anyhow::Result<()> {
        let run = &mut config.run;
        if let Some(workers) = self.workers {
            run.workers = workers;
        }
        if let Some(processes) = self.processes {
            run.processes = processes;
        }
        if let Some(process) = self.process {
            run.process = process;
        }
        if let Some(hostfile) = &self.hostfile {
            run.hostfile = Some(hostfile.clone());
        }
        let mut problems = lsp_schemas::problems::Problems::new();
        lsp_schemas::problems::Validate::validate(&*run, "run", &mut problems);
        problems
            .into_result()
            .map_err(|p| anyhow::anyhow!("{}:\n{p}", self.config.display()))
    }
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

/// A run stopped by a signal before its last iteration (exit status 130).
#[derive(Debug)]
pub struct Stopped {
    /// Where it stopped and how to continue.
    pub message: String,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Stopped {}

/// Runs the config (each of its stages in turn, if it has them); returns the closing
/// message.
pub fn run(args: &RunArgs) -> anyhow::Result<String> {
    let mut config = load_epoch(&args.config)?;
    args.apply(&mut config)?;
    for warning in config.warnings() {
        warn!("{warning}");
    }
    tch::set_num_threads(config.run.threads as i32);
    tch::set_num_interop_threads(1);
    if config.stages.is_empty() {
        let dir = RunDir::new(&config.run.output_dir, &config.run.name);
        let message = run_one(config, dir.clone(), args)?;
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
        let done = run_one(staged, dir.clone(), args)?;
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

/// Runs one config into `dir`, on every worker of this process.
fn run_one(config: EpochConfig, dir: RunDir, args: &RunArgs) -> anyhow::Result<String> {
    let (resume, progress) = (args.resume, args.progress);
    let writes = config.run.process == 0;
    // Held until this function returns; the OS releases it if the process dies.
    let _lock = match writes {
        true => Some(dir.lock()?),
        false => None,
    };
    // A resume plays on with the config the run was started with, unless allowed.
    let resumed = writes && resume && dir.has_output();
    let changed = match resumed && dir.manifest().is_file() {
        true => manifest::check_resume(&dir, &config, args.allow_config_change)?,
        false => Vec::new(),
    };
    let (start, policy_folder) = plan_start(&config, &dir, resume, writes)?;
    let total = config.run.iterations;
    if start > total {
        let repaired = match writes {
            true => checkpoint::ensure_final(&dir, total, &config)?,
            false => None,
        };
        if let Some(note) = &repaired {
            warn!("{note}");
        }
        return Ok(format!(
            "run {} already finished its {total} iterations{}\n",
            dir.root().display(),
            repaired.map_or(String::new(), |note| format!("; {note}"))
        ));
    }
    if writes && !resumed {
        manifest::write_fresh(&dir, &config)?;
    }
    // A resume is recorded once it has played (a failed one leaves no entry).
    let resumed_with = (resumed && dir.manifest().is_file()).then(|| config.clone());
    let note = |done: u64| match &resumed_with {
        Some(config) => manifest::note_resume(&dir, config, (start, done), &changed),
        None => Ok(()),
    };
    let stop = interrupted();
    let timely_config = cluster::timely_config(&config.run)?;
    if config.run.processes > 1 {
        cluster::exit_when_a_peer_is_lost();
    }
    let connected = cluster::connection_watchdog(&config.run);
    let workers_per_process = config.run.workers as usize;
    let config = Arc::new(config);
    let dir_for_workers = dir.clone();
    let guards = timely::execute(timely_config, move |worker| {
        let first = worker.index() == 0;
        let progress = match first {
            true => progress,
            false => progress::ProgressMode::None,
        };
        play(
            worker,
            &config,
            &dir_for_workers,
            &policy_folder,
            (start, total),
            progress,
            stop.clone(),
        )
        .map_err(|e| (first, e))
    })
    .map_err(|e| anyhow::anyhow!("starting the run's workers: {e}"))?;
    connected.store(true, Ordering::SeqCst);
    let mut done = None;
    let mut errors = Vec::new();
    for (i, result) in guards.join().into_iter().enumerate() {
        match result {
            Ok(Ok(last)) => done = Some(done.map_or(last, |d: u64| d.min(last))),
            Ok(Err((_, e))) => errors.push(e),
            Err(panic) => errors.push(anyhow::anyhow!(
                "worker {i} of this process ({workers_per_process}) panicked: {panic}"
            )),
        }
    }
    // A worker's own error before the others' "another worker failed".
    errors.sort_by_key(|e| format!("{e:#}").contains("another worker of the run failed"));
    if let Some(e) = errors.into_iter().next() {
        return Err(e);
    }
    let done = done.context("the run had no workers")?;
    note(done)?;
    if done < total {
        return Err(Stopped {
            message: format!(
                "stopped at iteration {done} of {total} (interrupted); its records and a \
                 checkpoint are in {}: continue with `pipeline run <config> --resume`",
                dir.root().display()
            ),
        }
        .into());
    }
    Ok(format!(
        "run {}: iterations {start}..={done} done; records in {}, final model {}\n",
        dir.root().display(),
        dir.records().display(),
        dir.final_model().display()
    ))
}

/// One worker's run: its replica of the models, the game's dataflow, and the loop
/// that feeds it iterations; worker 0 also writes the records, the monitor's rows,
/// the checkpoints and the final model. Returns the last iteration done.
fn play(
    worker: &mut timely::worker::Worker,
    config: &EpochConfig,
    dir: &RunDir,
    policy_folder: &std::path::Path,
    (start, total): (u64, u64),
    progress: progress::ProgressMode,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<u64> {
    tch::set_num_threads(config.run.threads as i32);
    let shard = cluster::Shard {
        index: worker.index(),
        peers: worker.peers(),
    };
    let run_id = config.run.name.clone();
    let mut engine = Engine::build(config, policy_folder, &run_id, shard)?;
    if start > 1 {
        engine
            .stages
            .update
            .optimizer()
            .load(&dir.checkpoint_optimizer(start - 1))?;
    }
    let engine = Rc::new(RefCell::new(engine));
    let shown = progress::Progress::new(progress, start, total);
    let failure = Failure::default();
    let mut input = InputHandle::new();
    let cx = game::GameContext {
        engine: engine.clone(),
        failure: failure.clone(),
        progress: shown.clone(),
        stop,
        replica_check_every: config.run.replica_check_every,
    };
    let (outputs, probe) = worker.dataflow(|scope| game::game(scope, &mut input, cx));
    let mut monitor = if config.monitor.enabled {
        Some(start_monitor(
            worker,
            dir,
            &config.monitor,
            start,
            shard.writes(),
        )?)
    } else {
        None
    };
    let mut writer = shard.writes().then(RecordWriter::start);
    input.advance_to(start);
    let mut last = start - 1;
    let mut skipped: Vec<String> = Vec::new();
    for t in start..=total {
        input.send(t);
        input.advance_to(t + 1);
        // Until the iteration has left every stage, also after a failure: the other
        // workers then see this one's parts missing and stop at the same iteration.
        // A worker with nothing to do parks rather than spins: its core goes to the
        // workers still computing and to the threads moving the others' data.
        worker.step_or_park_while(None, || probe.less_than(input.time()));
        if let Some(e) = failure.take() {
            if let Some(writer) = writer {
                writer.finish()?;
            }
            return Err(e);
        }
        let (step, stopping) = outputs
            .steps
            .borrow_mut()
            .remove(&t)
            .context("the iteration produced no step")?;
        if let Some(writer) = writer.as_mut() {
            let record = outputs
                .records
                .borrow_mut()
                .remove(&t)
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
            // A stop (Ctrl-C, SIGTERM) checkpoints too: the iteration it finished is kept.
            // A failed write (a record, an earlier checkpoint) stops the run here.
            writer.poll()?;
            if (every > 0 && t % every == 0) || t == total || stopping {
                // Written after the records up to t (the writer keeps the order), so
                // they are on disk before the checkpoint says t is done; written from
                // the live weights while the next iteration plays, whose step waits
                // until it is on disk.
                let mut engine = engine.borrow_mut();
                let (hold, released) = records::hold();
                writer.checkpoint(checkpoint::Checkpoint::take(dir, &mut engine, t), hold);
                engine.hold_weights(released);
            }
        } else if let Some(live) = monitor.as_mut() {
            // The monitor's dataflow spans every worker: the others step it alike.
            live.observe(worker, t, &[], &[]);
        }
        last = t;
        match &step.skip_reason {
            Some(reason) => skipped.push(reason.clone()),
            None => skipped.clear(),
        }
        let limit = config.run.max_skipped_steps as usize;
        if limit > 0 && skipped.len() >= limit {
            if let Some(writer) = writer {
                writer.finish()?;
            }
            anyhow::bail!(
                "the optimizer steps of iterations {}..={t} were all skipped (last: {}): the \
                 policy no longer trains; stopping (run.max_skipped_steps: {limit}). The \
                 records are kept; resume from a checkpoint before the trouble with a lower \
                 learning rate",
                t + 1 - limit as u64,
                skipped.last().expect("limit > 0")
            );
        }
        if stopping {
            warn!(iteration = t, "interrupted: stopping after this iteration");
            break;
        }
    }
    shown.finish();
    if let Some(writer) = writer {
        writer.finish()?;
        if last == total {
            checkpoint::save_final(dir, &engine.borrow(), total)?;
        }
    }
    Ok(last)
}

/// The live monitor, caught up with the records of the iterations before `start` (a
/// resumed run compares its new queries with those too).
fn start_monitor(
    worker: &mut timely::worker::Worker,
    dir: &RunDir,
    config: &MonitorConfig,
    start: u64,
    writes: bool,
) -> anyhow::Result<LiveMonitor> {
    let mut live = LiveMonitor::new(worker);
    // Every worker steps the monitor through the same iterations; the writer feeds it.
    for t in dir
        .recorded_iterations()?
        .into_iter()
        .filter(|&t| t < start)
    {
        let (queries, answers) = match writes {
            true => observe(&dir.read_record(t)?.to_rows()?, config),
            false => Default::default(),
        };
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
/// A process that does not write (`writes` false: not process 0) only reads where
/// the run stands.
fn plan_start(
    config: &EpochConfig,
    dir: &RunDir,
    resume: bool,
    writes: bool,
) -> anyhow::Result<(u64, PathBuf)> {
    if !writes {
        return match dir.last_checkpoint()?.filter(|_| resume) {
            Some(c) => Ok((c + 1, dir.checkpoint_model(c))),
            None => Ok((1, config.model.policy.clone())),
        };
    }
    if !dir.has_output() {
        return Ok((1, config.model.policy.clone()));
    }
    anyhow::ensure!(
        resume,
        "{} already holds a run: continue it with --resume, or set another run.name",
        dir.root().display()
    );
    let partial = dir.remove_partial_writes()?;
    if partial > 0 {
        info!(files = partial, "removed the partial writes a kill left");
    }
    let mut last = dir.last_checkpoint()?;
    // Every iteration a checkpoint covers must have its record (and monitor row): one
    // lost or damaged is played again from the newest checkpoint before it.
    let monitored = config.monitor.enabled;
    if let Some((bad, why)) = dir.first_unsound(last.unwrap_or(0), monitored) {
        anyhow::ensure!(
            config.run.processes == 1,
            "iteration {bad} cannot be resumed: {why}. Restore the file, or remove the \
             checkpoints from iteration {bad} on so that --resume plays it again"
        );
        let before = dir.checkpoints()?.into_iter().rfind(|&c| c < bad);
        warn!(
            iteration = bad,
            from = before.unwrap_or(0),
            "{why}: playing again from the checkpoint before it"
        );
        for c in dir.checkpoints()?.into_iter().filter(|&c| c >= bad) {
            std::fs::remove_dir_all(dir.checkpoint(c))?;
        }
        last = before;
    }
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
            let state = checkpoint::load_verified(dir, c)?;
            info!(
                checkpoint = c,
                optimizer_steps = state.optimizer_steps,
                "resuming"
            );
            Ok((c + 1, dir.checkpoint_model(c)))
        }
        None => Ok((1, config.model.policy.clone())),
    }
}
