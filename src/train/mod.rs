//! Training: the generic update loop shared by the supervised ELBO and recurrent PPO —
//! seeded per-update randomness, AdamW with clipping, metrics, checkpoints (the latest and the
//! one before it), snapshots, resume (from the one before when the latest cannot be read), and
//! a clean stop when the loss diverges or a signal arrives ([`interrupt`]).

pub mod interrupt;
pub mod optim;
pub mod ppo;
pub mod reference;
pub mod supervised;

use crate::config::ExperimentConfig;
use crate::nn::Params;
use crate::run::{Checkpoint, RunDir, load_checkpoint, save_checkpoint};
use crate::util::{JsonlAppender, read_jsonl, truncate_jsonl};
use anyhow::{Context, Result, bail};
use candle_core::Tensor;
use optim::{AdamW, AdamWConfig};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

/// Something trainable by gradient descent on a scalar loss.
pub trait Learner {
    fn params(&self) -> &Params;
    /// Builds the loss of update `update` (0-based) from fresh data drawn from `rng`; returns the
    /// loss and scalar metrics to log (e.g. "nll", "kl", "return").
    fn loss(
        &mut self,
        update: usize,
        rng: &mut ChaCha8Rng,
    ) -> Result<(Tensor, BTreeMap<String, f64>)>;
    /// The metric shown in the progress bar.
    fn headline(&self) -> &'static str {
        "loss"
    }
    /// Whether one update may take more than one gradient step (then `fit` keeps a copy of
    /// the parameters before each update, to restore it should a later step diverge).
    fn multi_step(&self) -> bool {
        false
    }
    /// One update: by default one gradient step on [`Learner::loss`] ([`gradient_step`]);
    /// a learner may take several (PPO's epochs and minibatches). Returns the metrics to log;
    /// a non-finite loss or gradient is a [`Divergence`] error.
    fn update(
        &mut self,
        update: usize,
        rng: &mut ChaCha8Rng,
        opt: &mut AdamW,
    ) -> Result<BTreeMap<String, f64>> {
        let (loss, mut metrics) = self.loss(update, rng)?;
        let (value, stats) = gradient_step(&loss, self.params(), opt)?;
        metrics.insert("loss".into(), value);
        insert_step_stats(&mut metrics, &[stats]);
        Ok(metrics)
    }
}

/// A loss or gradient that is not finite: the update that met it changed no parameter.
#[derive(Debug)]
pub struct Divergence(pub String);

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Divergence {}

/// Backward through `loss` and one AdamW step; returns the loss value and the step's clipping
/// statistics. A non-finite loss or gradient is a [`Divergence`] (no parameter touched).
pub fn gradient_step(
    loss: &Tensor,
    params: &Params,
    opt: &mut AdamW,
) -> Result<(f64, optim::StepStats)> {
    let value = loss.to_scalar::<f32>()? as f64;
    if !value.is_finite() {
        return Err(Divergence(format!("loss = {value}")).into());
    }
    let grads = loss.backward()?;
    match opt.step(params, &grads) {
        Ok(stats) => Ok((value, stats)),
        Err(e) => Err(Divergence(e.to_string()).into()),
    }
}

/// The gradient diagnostics of an update's steps, averaged over the steps: `grad_norm` (after
/// the element clip), `grad_norm_raw` (before any clip), `clip_element_frac` (fraction of
/// elements the element clip changed) and `clip_norm_frac` (fraction of steps the global-norm
/// clip rescaled).
pub fn insert_step_stats(metrics: &mut BTreeMap<String, f64>, steps: &[optim::StepStats]) {
    let k = steps.len().max(1) as f64;
    let mean = |f: &dyn Fn(&optim::StepStats) -> f64| steps.iter().map(f).sum::<f64>() / k;
    metrics.insert("grad_norm".into(), mean(&|s| s.grad_norm));
    metrics.insert("grad_norm_raw".into(), mean(&|s| s.raw_grad_norm));
    metrics.insert(
        "clip_element_frac".into(),
        mean(&|s| s.clip_element_fraction),
    );
    metrics.insert(
        "clip_norm_frac".into(),
        mean(&|s| f64::from(u8::from(s.norm_clipped))),
    );
}

/// The random stream of update `update`: a pure function of (seed, update), so that a resumed
/// run draws exactly the data an uninterrupted run would.
pub fn update_rng(seed: u64, update: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(update as u64 + 1);
    rng
}

/// The AdamW settings a config names.
pub fn adamw_config(cfg: &ExperimentConfig) -> AdamWConfig {
    AdamWConfig {
        lr: cfg.train.lr,
        weight_decay: cfg.train.weight_decay,
        clip_element: cfg.clip_element(),
        clip_global_norm: cfg.train.clip_global_norm,
        ..AdamWConfig::default()
    }
}

/// Options of one `fit` call.
#[derive(Default, Clone)]
pub struct FitOptions {
    pub resume: bool,
    /// Stop (as if interrupted) after this many updates of this call; used by tests and for
    /// budgeted runs. The run can be resumed later.
    pub stop_after: Option<usize>,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Stop at the next safe point on SIGINT or SIGTERM (see [`interrupt`]), write the
    /// checkpoint and fail with an [`interrupt::Interrupted`] naming this command, the one that
    /// resumes the run. `None` (library callers, tests) leaves signals alone.
    pub stop_on_signal: Option<String>,
}

pub struct FitSummary {
    pub updates_done: usize,
    pub finished: bool,
    pub wall_seconds: f64,
    pub last_metrics: BTreeMap<String, f64>,
}

/// Loads a model checkpoint's weights into `params` for finetuning under (possibly) another
/// posterior family; parameters absent from the checkpoint keep their fresh initialisation.
pub fn init_from(params: &Params, path: &Path) -> Result<Vec<String>> {
    load_weights(params, load_checkpoint(path)?, path)
}

/// The model tensors of `ck` (read from `path`) loaded into `params`, non-strictly; returns the
/// parameters the checkpoint did not have.
fn load_weights(params: &Params, ck: Checkpoint, path: &Path) -> Result<Vec<String>> {
    params
        .load_from(&ck.model_tensors(), false)
        .with_context(|| format!("initialising from {}", path.display()))
}

/// The common start of `lvrnn train` for every task, before any model is built: refuses a
/// config whose estimated memory exceeds what this machine has available
/// (`memory::check_fits_machine`), applies `train.threads` (no effect when `--threads` was
/// given: the first setting wins) and opens the run folder.
pub fn open_run(
    cfg: &ExperimentConfig,
    runs: &Path,
    opts: &FitOptions,
    overwrite: bool,
) -> Result<RunDir> {
    crate::config::memory::check_fits_machine(cfg)?;
    if cfg.train.threads > 0 {
        crate::init_threads(cfg.train.threads);
    }
    RunDir::open(runs, &cfg.name, opts.resume, overwrite)
}

/// Finetuning start: loads `init` (if any) into `params`, records it in the run's
/// `init_from.json` (see [`record_init_from`]) and reports which parameters the checkpoint did
/// not have (they keep their fresh initialisation).
pub fn init_from_reporting(params: &Params, init: Option<&Path>, run: &RunDir) -> Result<()> {
    if let Some(path) = init {
        let ck = load_checkpoint(path)?;
        let update = ck.update;
        let missing = load_weights(params, ck, path)?;
        record_init_from(run, path, update)?;
        eprintln!(
            "initialised from {} ({} parameters kept fresh: {:?})",
            path.display(),
            missing.len(),
            missing
        );
    }
    Ok(())
}

/// Writes `<run>/init_from.json` = `{"checkpoint": ABS_PATH, "update": U}` atomically: the
/// checkpoint a finetuned run started from and the update stored in it (`lvrnn report` labels
/// such runs as finetuned). Written at every start of the run, so a resumed run keeps it.
pub fn record_init_from(run: &RunDir, checkpoint: &Path, update: usize) -> Result<()> {
    let path = std::fs::canonicalize(checkpoint)
        .with_context(|| format!("resolving --init-from {}", checkpoint.display()))?;
    let record = serde_json::json!({
        "checkpoint": path.display().to_string(),
        "update": update,
    });
    crate::util::write_json_atomic(&run.init_from_record(), &record)
}

/// The update after which a snapshot at `fraction` of `total` updates is taken: the nearest
/// update, at least 1. `fit` writes it only when it falls before `total` (the end of training
/// writes `model-final` instead).
pub fn snapshot_update(fraction: f64, total: usize) -> usize {
    ((fraction * total as f64).round() as usize).clamp(1, total)
}

/// What, if anything, forbids resuming a run written with `old` under `new`: everything that
/// shapes the numbers must agree; only the budget (`train.updates`), checkpointing, threads and
/// the evaluation settings may change.
fn resume_mismatch(old: &ExperimentConfig, new: &ExperimentConfig) -> Option<&'static str> {
    let budget_free = |c: &ExperimentConfig| {
        let mut t = c.train.clone();
        t.updates = 0;
        t.checkpoint_every = 0;
        t.threads = 0;
        t.snapshots.clear();
        t
    };
    if old.task != new.task {
        Some("task")
    } else if old.model != new.model {
        Some("model")
    } else if old.seed != new.seed {
        Some("seed")
    } else if budget_free(old) != budget_free(new) {
        Some("[train] section")
    } else if old.ppo != new.ppo {
        Some("[ppo] section")
    } else if old.env != new.env {
        Some("[env] section")
    } else {
        None
    }
}

/// Runs (or resumes) training until `cfg.train.updates` updates are done.
pub fn fit(
    learner: &mut dyn Learner,
    cfg: &ExperimentConfig,
    run: &RunDir,
    opts: &FitOptions,
) -> Result<FitSummary> {
    let mut opt = AdamW::new(adamw_config(cfg), learner.params())?;
    let mut start = 0;
    // Whether `latest` holds a readable checkpoint (of this run), so that the next write may
    // keep it as `previous`; an unreadable one is overwritten instead.
    let mut latest_good = false;
    let latest = run.latest_checkpoint();
    if opts.resume
        && let Some((ck, from_latest)) = resume_point(run)?
    {
        let path = if from_latest {
            latest.clone()
        } else {
            run.previous_checkpoint()
        };
        if ck.update > cfg.train.updates {
            bail!(
                "cannot resume {}: it is at update {}, past train.updates = {} (raise train.updates to go on, or evaluate it with `lvrnn eval`)",
                path.display(),
                ck.update,
                cfg.train.updates
            );
        }
        if let Some(what) = resume_mismatch(&ck.config, cfg) {
            bail!(
                "cannot resume {}: its {what} differs from the given config (start a new run or use --overwrite)",
                path.display()
            );
        }
        learner.params().load_from(&ck.model_tensors(), true)?;
        opt.load_state(&ck.tensors, ck.update)?;
        start = ck.update;
        latest_good = from_latest;
        truncate_jsonl(&run.train_metrics(), |v| {
            v.get("update")
                .and_then(|u| u.as_u64())
                .is_some_and(|u| (u as usize) <= start)
        })?;
    } else if run.train_metrics().exists() {
        std::fs::remove_file(run.train_metrics())?;
    }
    run.write_config(cfg)?;
    let total = cfg.train.updates;
    let snapshots: Vec<usize> = cfg
        .train
        .snapshots
        .iter()
        .map(|&f| snapshot_update(f, total))
        .collect();
    let mut log = JsonlAppender::open(&run.train_metrics())?;
    let mut progress = Progress::new(opts.progress, total, start, &cfg.name);
    let t0 = Instant::now();
    let mut last = BTreeMap::new();
    let mut clipping = ClipWatch::new(total, cfg.task != crate::config::Task::Regression);
    let end = match opts.stop_after {
        Some(n) => (start + n).min(total),
        None => total,
    };
    let _signals = match &opts.stop_on_signal {
        Some(_) => Some(
            interrupt::StopOnSignal::install().context("installing the SIGINT/SIGTERM handlers")?,
        ),
        None => None,
    };
    for update in start..end {
        let mut rng = update_rng(cfg.seed, update);
        opt.cfg.lr = cfg.train.lr_at(update);
        // Several steps per update: the state before it, to restore should a later one diverge.
        let before = match learner.multi_step() {
            true => Some((learner.params().deep_copy()?, opt.clone())),
            false => None,
        };
        let mut metrics = match learner.update(update, &mut rng, &mut opt) {
            Ok(m) => m,
            Err(e) => match e.downcast_ref::<Divergence>() {
                Some(why) => {
                    let why = why.to_string();
                    if let Some((tensors, old)) = before {
                        learner.params().load_from(&tensors, true)?;
                        opt = old;
                    }
                    return diverged(learner, &opt, update, cfg, run, latest_good, why);
                }
                None => return Err(e),
            },
        };
        let value = metrics.get("loss").copied().unwrap_or(f64::NAN);
        clipping.push(&metrics);
        if cfg.train.lr_schedule != "constant" {
            metrics.insert("lr".into(), opt.cfg.lr);
        }
        let mut row = serde_json::Map::new();
        row.insert("update".into(), (update + 1).into());
        for (k, v) in &metrics {
            row.insert(k.clone(), serde_json::json!(v));
        }
        log.write(&serde_json::Value::Object(row))?;
        let done = update + 1;
        if snapshots.contains(&done) && done < total {
            save_checkpoint(
                &run.snapshot(done),
                learner.params(),
                &BTreeMap::new(),
                done,
                cfg,
            )?;
        }
        let signal = opts
            .stop_on_signal
            .as_ref()
            .and_then(|_| interrupt::requested());
        if (cfg.train.checkpoint_every > 0 && done % cfg.train.checkpoint_every == 0)
            || done == end
            || signal.is_some()
        {
            let state = opt.state_tensors();
            run.save_resumable(learner.params(), &state, done, cfg, latest_good)?;
            latest_good = true;
        }
        if let Some(progress) = &mut progress {
            let head = learner.headline();
            let shown = metrics.get(head).copied().unwrap_or(value);
            progress.update(done, end, &format!("{head} {shown:.4}"));
        }
        last = metrics;
        if let (Some(signal), Some(command)) = (signal, &opts.stop_on_signal)
            && done < end
        {
            if let Some(Progress::Bar(bar)) = &progress {
                bar.abandon();
            }
            return Err(interrupt::Interrupted {
                signal,
                message: format!(
                    "interrupted by {}: stopped after update {done} of {total}; {} holds that state (updates {}..={done} were trained in this session). Resume with:\n  {command}",
                    interrupt::signal_name(signal),
                    latest.display(),
                    start + 1
                ),
            }
            .into());
        }
    }
    let finished = end == total;
    if finished {
        save_checkpoint(
            &run.final_model(),
            learner.params(),
            &BTreeMap::new(),
            total,
            cfg,
        )?;
    }
    if let Some(Progress::Bar(bar)) = progress {
        bar.finish();
    }
    if let Some(warning) = clipping.warning(cfg.train.clip_global_norm) {
        eprintln!("{warning}");
    }
    if let (Some(signal), Some(command)) = (interrupt::requested(), &opts.stop_on_signal) {
        // The signal came during the last update: the training is complete, what follows it
        // (evaluation) is not.
        return Err(interrupt::Interrupted {
            signal,
            message: format!(
                "interrupted by {} as training ended: all {end} updates are done and saved in {}{}; what follows training was not run. Run it with:\n  {command}",
                interrupt::signal_name(signal),
                run.checkpoints().display(),
                if finished { " (model-final too)" } else { "" },
            ),
        }
        .into());
    }
    Ok(FitSummary {
        updates_done: end,
        finished,
        wall_seconds: t0.elapsed().as_secs_f64(),
        last_metrics: last,
    })
}

/// Watches the global-norm clip over the last updates of a run (`clip_norm_frac` and
/// `grad_norm_raw` of each update's metrics). A clip that acts on nearly every late update means
/// one loss term's gradient has outgrown the rest and sets the direction of every step: the
/// full VRNN's posterior-KL term on the bandit at β = 1e-2 (results/bandit-vrnn-kl) un-learned
/// that way with nothing in its log but this.
///
/// It watches the RL loss only (policy, value, entropy and KL terms compete there). The
/// supervised ELBO's gradient is the predictive NLL's (β·KL beside it is small) and its norm
/// grows as the predictive sharpens — the RNN of the regression study: 0.35 in its first 150
/// updates, 2.4 from update 450 on, the paper's clip at 1.0 acting on every update from ~300 —
/// so there a clip that always acts only normalises the step, and a warning would be about
/// the paper's own setting.
struct ClipWatch {
    window: usize,
    watching: bool,
    recent: std::collections::VecDeque<(f64, f64)>,
}

impl ClipWatch {
    /// The last tenth of `total` updates, at least 20; `watching` = false never warns.
    fn new(total: usize, watching: bool) -> Self {
        let window = (total / 10).max(20);
        Self {
            window,
            watching,
            recent: std::collections::VecDeque::with_capacity(window + 1),
        }
    }

    fn push(&mut self, metrics: &BTreeMap<String, f64>) {
        if !self.watching {
            return;
        }
        if let (Some(f), Some(g)) = (metrics.get("clip_norm_frac"), metrics.get("grad_norm_raw")) {
            self.recent.push_back((*f, *g));
            if self.recent.len() > self.window {
                self.recent.pop_front();
            }
        }
    }

    /// A warning when the clip acted on at least 90% of a full window of updates.
    fn warning(&self, clip: f64) -> Option<String> {
        if self.recent.len() < self.window {
            return None;
        }
        let n = self.recent.len() as f64;
        let acted = self.recent.iter().filter(|(f, _)| *f > 0.0).count() as f64 / n;
        let raw = self.recent.iter().map(|(_, g)| g).sum::<f64>() / n;
        (acted >= 0.9).then(|| {
            format!(
                "warning: the global-norm clip (train.clip_global_norm = {clip}) acted on {:.0}% of the last {} updates (mean raw gradient norm {raw:.2}): one loss term's gradient sets every step's direction; see grad_norm_raw and kl_term_ratio in train.jsonl (a VRNN's posterior-KL term: results/bandit-vrnn-kl, train.beta)",
                acted * 100.0,
                self.recent.len()
            )
        })
    }
}

/// Stops a diverged run: the parameters have not been touched by the failing update, so they
/// are the last good state; they are saved as the resumable checkpoint.
fn diverged(
    learner: &dyn Learner,
    opt: &AdamW,
    update: usize,
    cfg: &ExperimentConfig,
    run: &RunDir,
    latest_good: bool,
    why: String,
) -> Result<FitSummary> {
    let state = opt.state_tensors();
    run.save_resumable(learner.params(), &state, update, cfg, latest_good)?;
    bail!(
        "training diverged at update {} ({why}); stopped. The last good state (after update {update}) is kept in {}",
        update + 1,
        run.latest_checkpoint().display()
    )
}

/// The checkpoint `--resume` continues from, and whether it is `latest` (else `previous`):
/// `latest` when it can be read; otherwise `previous`, with a warning on stderr that says why,
/// which update the run restarts from and which logged updates are trained again. `None` when
/// the folder holds neither (the run starts at update 0; a note says so when updates were
/// logged). An error when neither can be read, saying what each is and what the log holds.
fn resume_point(run: &RunDir) -> Result<Option<(Checkpoint, bool)>> {
    let (latest, previous) = (run.latest_checkpoint(), run.previous_checkpoint());
    let logged = logged_updates(run);
    let log = run.train_metrics();
    if !latest.exists() && !previous.exists() {
        if let Some(n) = logged.filter(|&n| n > 0) {
            eprintln!(
                "note: {} holds no checkpoint to resume from; {} logs {n} updates, which are discarded: training starts at update 0",
                run.checkpoints().display(),
                log.display()
            );
        }
        return Ok(None);
    }
    let latest_err = match load_checkpoint(&latest) {
        Ok(ck) => return Ok(Some((ck, true))),
        Err(_) if !latest.exists() => format!("{} is missing", latest.display()),
        Err(e) => format!("{} cannot be read: {e:#}", latest.display()),
    };
    let log_text = match logged {
        Some(n) => format!("{} logs {n} updates", log.display()),
        None => format!("{} is missing or unreadable", log.display()),
    };
    match load_checkpoint(&previous) {
        Ok(ck) => {
            let lost = match logged {
                Some(n) if n > ck.update => format!(
                    "updates {}..={n}, logged after it, are lost and will be trained again",
                    ck.update + 1
                ),
                _ => "no logged update is lost".to_string(),
            };
            eprintln!(
                "warning: {latest_err}\nwarning: resuming from the checkpoint before it, {} (update {}): {lost}",
                previous.display(),
                ck.update
            );
            Ok(Some((ck, false)))
        }
        Err(e) => {
            let previous_err = if previous.exists() {
                format!(
                    "the one before it, {}, cannot be read either: {e:#}",
                    previous.display()
                )
            } else {
                format!(
                    "there is no checkpoint before it ({} is missing)",
                    previous.display()
                )
            };
            bail!(
                "cannot resume: {latest_err}; {previous_err}. {log_text}, but no readable checkpoint of them is left: start the run again with --overwrite (training from update 0), or choose another --name to keep this folder as it is"
            )
        }
    }
}

/// The highest update logged in the run's `metrics/train.jsonl` (0 for an empty log), `None`
/// when the log is missing or unreadable.
fn logged_updates(run: &RunDir) -> Option<usize> {
    let path = run.train_metrics();
    if !path.exists() {
        return None;
    }
    let rows: Vec<serde_json::Value> = read_jsonl(&path).ok()?;
    Some(
        rows.iter()
            .filter_map(|r| r.get("update").and_then(|u| u.as_u64()))
            .max()
            .unwrap_or(0) as usize,
    )
}

/// Training progress on stderr: a bar on a terminal; otherwise (stderr in a log file, e.g. a
/// run in the background or a sweep worker) a plain line after the first update, then at most
/// every [`PROGRESS_LINE_EVERY`], and after the last.
enum Progress {
    Bar(indicatif::ProgressBar),
    Lines {
        name: String,
        total: usize,
        /// The first update of this invocation (a resumed run starts later).
        start: usize,
        t0: Instant,
        last: Option<Instant>,
    },
}

/// How often a run whose stderr is not a terminal prints a progress line.
const PROGRESS_LINE_EVERY: Duration = Duration::from_secs(60);

impl Progress {
    fn new(show: bool, total: usize, start: usize, name: &str) -> Option<Self> {
        if !show {
            return None;
        }
        if !std::io::stderr().is_terminal() {
            return Some(Progress::Lines {
                name: name.to_string(),
                total,
                start,
                t0: Instant::now(),
                last: None,
            });
        }
        Some(Progress::Bar(crate::util::progress_bar(
            total, start, name, "updates",
        )))
    }

    /// After update `done` (1-based) of a loop that ends at `end`; `what` is the headline metric.
    fn update(&mut self, done: usize, end: usize, what: &str) {
        match self {
            Progress::Bar(bar) => {
                bar.set_message(what.to_string());
                bar.inc(1);
            }
            Progress::Lines {
                name,
                total,
                start,
                t0,
                last,
            } => {
                let now = Instant::now();
                let due = last.is_none_or(|l| now - l >= PROGRESS_LINE_EVERY) || done == end;
                if !due {
                    return;
                }
                *last = Some(now);
                let per = t0.elapsed().as_secs_f64() / (done - *start).max(1) as f64;
                eprintln!(
                    "{name}: update {done}/{total} ({:.0}%), {per:.2} s/update, {} to go, {what}",
                    100.0 * done as f64 / (*total).max(1) as f64,
                    clock(per * (end - done) as f64)
                );
            }
        }
    }
}

/// A duration for people: "45s", "12m05s", "3h07m".
fn clock(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::{ClipWatch, clock};
    use std::collections::BTreeMap;

    fn metrics(clip_frac: f64, raw: f64) -> BTreeMap<String, f64> {
        BTreeMap::from([
            ("clip_norm_frac".to_string(), clip_frac),
            ("grad_norm_raw".to_string(), raw),
        ])
    }

    /// The warning needs a full window (the last tenth, at least 20 updates) with the clip
    /// acting on at least 90% of it; only the window counts, not the start of the run.
    #[test]
    fn the_clip_warning_names_the_share_of_late_updates_clipped() {
        let mut w = ClipWatch::new(300, true);
        for _ in 0..270 {
            w.push(&metrics(0.0, 0.3));
        }
        assert!(w.warning(1.0).is_none());
        for _ in 0..27 {
            w.push(&metrics(1.0, 4.0));
        }
        // 27 of the last 30 updates: exactly 90%.
        let msg = w.warning(1.0).expect("90% of the window was clipped");
        assert!(
            msg.contains("acted on 90% of the last 30 updates") && msg.contains("train.beta"),
            "{msg}"
        );
        let mut short = ClipWatch::new(100, true);
        for _ in 0..19 {
            short.push(&metrics(1.0, 4.0));
        }
        assert!(short.warning(1.0).is_none(), "19 updates: no full window");
        // Runs without these metrics never warn, nor does a supervised (regression) run that
        // logs them with the clip acting on every update.
        let mut none = ClipWatch::new(100, true);
        for _ in 0..50 {
            none.push(&BTreeMap::new());
        }
        assert!(none.warning(1.0).is_none());
        let mut supervised = ClipWatch::new(100, false);
        for _ in 0..50 {
            supervised.push(&metrics(1.0, 2.4));
        }
        assert!(supervised.warning(1.0).is_none());
    }

    #[test]
    fn clock_reads_like_a_person_would_write_it() {
        assert_eq!(clock(0.4), "0s");
        assert_eq!(clock(45.0), "45s");
        assert_eq!(clock(725.0), "12m05s");
        assert_eq!(clock(3.0 * 3600.0 + 7.0 * 60.0 + 20.0), "3h07m");
        assert_eq!(clock(-3.0), "0s");
    }
}
