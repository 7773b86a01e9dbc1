//! The sweep file: parsing, validation and expansion into jobs (format in the module doc of
//! [`crate::sweep`]).
//!
//! Each job's configuration is the base config's TOML value tree (a dependent train job: its
//! parent job's config) with the `[set]` keys and the job's axis values written in at their
//! dotted keys, then parsed by the ordinary [`ExperimentConfig`] parser, so every job is checked
//! before anything runs and a bad value gets the usual error (prefixed with the job's name). A
//! sweep without `[[stage]]` tables is one unnamed stage; stages are expanded in file order, each
//! dependent one over the jobs of its `from` stage, so parents always come before their jobs.

use crate::config::{ExperimentConfig, Task};
use crate::posterior::PosteriorConfig;
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::path::Path;
use toml::{Table, Value};

/// The one key whose values may be given as a posterior SPEC string (`laplace:window=1`).
const POSTERIOR: &str = "model.posterior";

/// Longest job name accepted (it is a folder and a file name).
const MAX_NAME: usize = 200;

/// The pseudo-key of a dependent stage's snapshot axis (in job names and `exclude` rules).
const SNAPSHOT: &str = "snapshot";

/// The snapshot value naming a run's final model.
const FINAL: &str = "final";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SweepFile {
    name: String,
    base: Value,
    #[serde(default)]
    set: Table,
    axes: Option<Table>,
    #[serde(default)]
    exclude: Vec<Table>,
    #[serde(default)]
    stage: Vec<StageFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StageFile {
    name: String,
    #[serde(default)]
    kind: StageKind,
    from: Option<FromFile>,
    #[serde(default)]
    set: Table,
    #[serde(default)]
    axes: Table,
    #[serde(default)]
    exclude: Vec<Table>,
    #[serde(default)]
    posteriors: Vec<String>,
    /// Eval stages: also evaluate each Laplace variant with its prior tuned on held-out tasks
    /// (`lvrnn eval --tune-prior`).
    #[serde(default)]
    tune_prior: bool,
    /// Eval stages: `lvrnn eval --actions` ("sample" or "greedy"; default the config's).
    actions: Option<String>,
    /// Eval stages: `lvrnn eval --predictive` ("sampled" or "linearised"; regression; default
    /// the config's).
    predictive: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FromFile {
    stage: String,
    #[serde(default)]
    snapshot: Vec<Value>,
    updates: Option<String>,
}

/// What the jobs of a stage do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    /// `lvrnn train` (from scratch, or `--init-from` a checkpoint of the parent job).
    #[default]
    Train,
    /// `lvrnn eval` of a checkpoint of the parent job under `posteriors`, post hoc.
    Eval,
}

/// One axis: a config key and the values it takes.
#[derive(Clone, Debug)]
pub struct Axis {
    /// Dotted config key, e.g. `train.lr`.
    pub key: String,
    /// The key as it appears in job names: its last component (`lr`), or the whole key where
    /// two axes share the last component.
    pub short: String,
    /// Values as written into the config (a posterior SPEC is already a table here).
    pub values: Vec<Value>,
    /// Filesystem-safe rendering of each value, as it appears in job names.
    pub labels: Vec<String>,
}

/// A stage of an expanded sweep (a one-stage sweep has one, named "").
#[derive(Clone, Debug)]
pub struct Stage {
    /// "" for a sweep without `[[stage]]` tables.
    pub name: String,
    pub kind: StageKind,
    /// The stage whose jobs this stage's jobs start from (`from.stage`).
    pub from: Option<String>,
    /// The stage's own axes (without the inherited ones and the snapshot axis).
    pub axes: Vec<Axis>,
    /// Jobs of this stage in the sweep.
    pub jobs: usize,
    /// Grid points of this stage dropped by its `exclude` rules.
    pub excluded: usize,
}

/// What a job runs.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// `lvrnn train --config jobs/<job>.toml …` (with `--init-from` when the job has a parent).
    Train,
    /// `lvrnn eval --checkpoint <parent checkpoint> --posterior P… --out evals/<job>`, with
    /// `--tune-prior` when `tune_prior`, `--actions A` when `actions` and `--predictive P` when
    /// `predictive` is given.
    Eval {
        posteriors: Vec<String>,
        tune_prior: bool,
        actions: Option<String>,
        predictive: Option<String>,
    },
}

/// The parent of a dependent job: the job whose checkpoint it starts from, and which must be
/// done first.
#[derive(Clone, Debug, PartialEq)]
pub struct After {
    /// The parent job's name.
    pub job: String,
    /// The snapshot as written in the sweep file: a fraction such as `0.5`, or `final`.
    pub snapshot: String,
    /// The update the checkpoint is taken at (`train::snapshot_update`, or `train.updates`).
    pub update: usize,
    /// Its file name in the parent run's `checkpoints/` folder.
    pub file: String,
}

/// One job: a point of a stage's grid.
#[derive(Clone, Debug)]
pub struct Job {
    /// `short=label` pairs in axis order, joined by commas (prefixed by `<stage>.` in a staged
    /// sweep); also the run name.
    pub name: String,
    /// The stage's name ("" in a one-stage sweep).
    pub stage: String,
    /// The validated configuration (`name` is the job name). An eval job's is its parent's.
    pub config: ExperimentConfig,
    pub action: Action,
    /// The job this one starts from and waits for.
    pub after: Option<After>,
    /// The job's axis values as (key, value), inherited ones and `snapshot` included.
    pub point: Vec<(String, Value)>,
    /// The `short=label` parts of the name.
    pub parts: Vec<String>,
}

/// An expanded sweep.
#[derive(Clone, Debug)]
pub struct Sweep {
    pub name: String,
    pub stages: Vec<Stage>,
    /// Jobs stage by stage, each stage in grid order (the first axis varies slowest; a
    /// dependent stage's jobs by parent job, then snapshot, then its own axes).
    pub jobs: Vec<Job>,
    /// Grid points dropped by `exclude` rules, over all stages.
    pub excluded: usize,
}

impl Sweep {
    /// Reads and expands a sweep file; a relative `base` path is taken relative to its folder.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading sweep file {}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new(""));
        Self::from_toml_str(&text, &path.display().to_string(), dir)
    }

    /// Parses and expands a sweep file's text; `origin` names it in errors and `base_dir` is
    /// where a relative `base` path points from.
    pub fn from_toml_str(text: &str, origin: &str, base_dir: &Path) -> Result<Self> {
        let file: SweepFile = toml::from_str(text)
            .map_err(|e| anyhow::anyhow!("invalid sweep file {origin}: {e}"))?;
        file.expand(base_dir)
            .with_context(|| format!("invalid sweep file {origin}"))
    }

    /// Whether the file has `[[stage]]` tables (job names then start with `<stage>.`).
    pub fn is_staged(&self) -> bool {
        self.stages.iter().any(|s| !s.name.is_empty())
    }

    /// The jobs of stage `name`, in order.
    pub fn stage_jobs<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Job> + 'a {
        self.jobs.iter().filter(move |j| j.stage == name)
    }
}

impl SweepFile {
    fn expand(self, base_dir: &Path) -> Result<Sweep> {
        if self.name.trim().is_empty() || self.name.contains(['/', '\\']) {
            bail!(
                "name must be a non-empty folder name without slashes (got `{}`)",
                self.name
            );
        }
        let known = config_keys();
        let base = match &self.base {
            Value::String(p) => {
                let path = base_dir.join(p);
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading base config {}", path.display()))?;
                toml::from_str::<Table>(&text)
                    .map_err(|e| anyhow::anyhow!("invalid base config {}: {e}", path.display()))?
            }
            Value::Table(t) => t.clone(),
            other => bail!(
                "base must be a path to a config file (relative to the sweep file) or an inline [base] table (got `{other}`)"
            ),
        };
        let stage_files = if self.stage.is_empty() {
            let Some(axes) = self.axes else {
                bail!(
                    "the sweep has neither [axes] nor [[stage]] tables; give at least one axis, e.g. `seed = {{ range = [0, 4] }}`"
                );
            };
            vec![StageFile {
                name: String::new(),
                kind: StageKind::Train,
                from: None,
                set: Table::new(),
                axes,
                exclude: self.exclude,
                posteriors: vec![],
                tune_prior: false,
                actions: None,
                predictive: None,
            }]
        } else {
            if self.axes.is_some() || !self.exclude.is_empty() {
                bail!(
                    "[axes] and [[exclude]] at the top level are for a sweep without stages; with [[stage]] tables give each stage its own `axes` and `exclude`"
                );
            }
            self.stage
        };
        let mut set = vec![];
        for (key, value) in &self.set {
            check_key(key, &known, "[set]")?;
            if stage_files.len() == 1 && stage_files[0].axes.contains_key(key) {
                bail!("`{key}` is both in [set] and in [axes]; keep one");
            }
            set.push((key.clone(), normalize(key, value)?));
        }
        let mut stages: Vec<Stage> = vec![];
        let mut jobs: Vec<Job> = vec![];
        for file in stage_files {
            let name = file.name.clone();
            let (stage, new) = if name.is_empty() {
                file.expand(&base, &set, &known, &stages, &jobs)?
            } else {
                file.expand(&base, &set, &known, &stages, &jobs)
                    .with_context(|| format!("stage `{name}`"))?
            };
            stages.push(stage);
            jobs.extend(new);
        }
        let mut names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            bail!(
                "two jobs are named `{}`; give the axes of different stages different keys",
                w[0]
            );
        }
        Ok(Sweep {
            name: self.name,
            excluded: stages.iter().map(|s| s.excluded).sum(),
            stages,
            jobs,
        })
    }
}

/// A snapshot of a parent job: a fraction of its training, or its final model.
#[derive(Clone, Copy, PartialEq)]
enum Snap {
    Fraction(f64),
    Final,
}

impl Snap {
    fn parse(v: &Value) -> Result<Self> {
        match v {
            Value::String(s) if s == FINAL => Ok(Snap::Final),
            Value::Float(f) => Ok(Snap::Fraction(*f)),
            Value::Integer(i) => Ok(Snap::Fraction(*i as f64)),
            other => bail!(
                "from.snapshot value {other} is neither a fraction of training (one of the parent stage's train.snapshots, e.g. 0.5) nor \"final\""
            ),
        }
    }
    fn value(self) -> Value {
        match self {
            Snap::Fraction(f) => Value::Float(f),
            Snap::Final => Value::String(FINAL.into()),
        }
    }
    fn label(self) -> String {
        match self {
            Snap::Fraction(f) => label("", &Value::Float(f)).unwrap_or_else(|_| f.to_string()),
            Snap::Final => FINAL.into(),
        }
    }
    /// The checkpoint of `parent` this names: (update, file name), or an error listing the
    /// snapshots the parent writes.
    fn of(self, parent: &Job) -> Result<(usize, String)> {
        let total = parent.config.train.updates;
        let Snap::Fraction(f) = self else {
            return Ok((total, crate::run::FINAL_MODEL.to_string()));
        };
        let snaps = &parent.config.train.snapshots;
        if !snaps.iter().any(|s| (s - f).abs() < 1e-12) {
            let mut allowed: Vec<String> = snaps.iter().map(|s| s.to_string()).collect();
            allowed.push(format!("\"{FINAL}\""));
            bail!(
                "from.snapshot {f} is not a snapshot of job `{}`; allowed values: {} (its train.snapshots, or its final model)",
                parent.name,
                allowed.join(", ")
            );
        }
        let update = crate::train::snapshot_update(f, total);
        if update >= total {
            bail!(
                "from.snapshot {f} of job `{}` falls on its last update ({total} of train.updates = {total}), where no snapshot is written; use \"{FINAL}\"",
                parent.name
            );
        }
        Ok((update, crate::run::snapshot_file(update)))
    }
}

impl StageFile {
    /// The stage's jobs; `earlier` and `done` are the stages and jobs before it.
    fn expand(
        self,
        base: &Table,
        top_set: &[(String, Value)],
        known: &[String],
        earlier: &[Stage],
        done: &[Job],
    ) -> Result<(Stage, Vec<Job>)> {
        let staged = !self.name.is_empty();
        if staged {
            if !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
            {
                bail!(
                    "the stage name must be letters, digits, `_` and `-` (got `{}`)",
                    self.name
                );
            }
            if earlier.iter().any(|s| s.name == self.name) {
                bail!("two stages are named `{}`; name each once", self.name);
            }
        }
        // The parent stage and the snapshots taken from its jobs.
        let parent = match &self.from {
            None => None,
            Some(f) => {
                let trains: Vec<&str> = earlier
                    .iter()
                    .filter(|s| s.kind == StageKind::Train)
                    .map(|s| s.name.as_str())
                    .collect();
                match earlier.iter().find(|s| s.name == f.stage) {
                    Some(s) if s.kind == StageKind::Train => Some(s),
                    found => bail!(
                        "from.stage `{}` is not {}; allowed values: {}",
                        f.stage,
                        if found.is_some() {
                            "a train stage (an eval stage writes no checkpoints)"
                        } else {
                            "an earlier train stage"
                        },
                        if trains.is_empty() {
                            "none (a stage can only start from a train stage listed before it)"
                                .to_string()
                        } else {
                            trains.join(", ")
                        }
                    ),
                }
            }
        };
        let snaps: Vec<Snap> = match &self.from {
            None => vec![],
            Some(f) if f.snapshot.is_empty() => vec![Snap::Final],
            Some(f) => f.snapshot.iter().map(Snap::parse).collect::<Result<_>>()?,
        };
        for (i, s) in snaps.iter().enumerate() {
            if snaps[..i].contains(s) {
                bail!(
                    "from.snapshot lists {} twice; list each snapshot once",
                    s.label()
                );
            }
        }
        let remaining = match self.from.as_ref().and_then(|f| f.updates.as_deref()) {
            None => false,
            Some("remaining") => true,
            Some(other) => bail!(
                "from.updates = \"{other}\" is not supported; allowed values: \"remaining\" (train for the parent's train.updates minus the snapshot's update), or leave it out (the stage's own train.updates)"
            ),
        };
        match self.kind {
            StageKind::Eval => {
                if parent.is_none() {
                    bail!(
                        "a stage with kind = \"eval\" needs `from = {{ stage = \"…\", snapshot = [0.5, \"final\"] }}`: it evaluates the checkpoints of another stage's jobs"
                    );
                }
                if !self.axes.is_empty() || !self.set.is_empty() {
                    bail!(
                        "`axes` and `set` are for train stages; a stage with kind = \"eval\" takes `from`, `posteriors` and `exclude`"
                    );
                }
                if remaining {
                    bail!("from.updates is for train stages; an eval stage does not train");
                }
                if let Some(a) = &self.actions {
                    crate::config::check_action_rule("actions =", a)?;
                }
                if let Some(p) = &self.predictive {
                    crate::config::check_predictive("predictive =", p)?;
                }
                if self.posteriors.is_empty() && self.actions.is_none() && self.predictive.is_none()
                {
                    bail!(
                        "`posteriors` is empty; list the posterior SPECs to evaluate post hoc, e.g. [\"laplace:window=1,accumulate=sigma\"] (or give `actions` or `predictive` to re-evaluate the checkpoints' own posteriors)"
                    );
                }
                for spec in &self.posteriors {
                    spec.parse::<PosteriorConfig>()
                        .with_context(|| format!("posteriors: `{spec}`"))?;
                }
            }
            StageKind::Train => {
                if self.tune_prior {
                    bail!(
                        "`tune_prior` is for stages with kind = \"eval\" (it adds --tune-prior to their lvrnn eval)"
                    );
                }
                if self.actions.is_some() {
                    bail!(
                        "`actions` is for stages with kind = \"eval\" (it adds --actions to their lvrnn eval); a train stage sets `eval.actions`"
                    );
                }
                if self.predictive.is_some() {
                    bail!(
                        "`predictive` is for stages with kind = \"eval\" (it adds --predictive to their lvrnn eval); a train stage sets `eval.predictive`"
                    );
                }
                if !self.posteriors.is_empty() {
                    bail!(
                        "`posteriors` is for stages with kind = \"eval\"; a train stage sets `model.posterior` in its `axes` or `set`"
                    );
                }
                if remaining && snaps.contains(&Snap::Final) {
                    bail!(
                        "from.updates = \"remaining\" with snapshot \"final\": no updates remain after the final model"
                    );
                }
            }
        }
        if self.axes.is_empty() && parent.is_none() {
            if staged {
                bail!(
                    "the stage has neither `axes` nor `from`; give at least one axis, e.g. axes = {{ seed = {{ range = [0, 4] }} }}"
                );
            }
            bail!("[axes] is empty; give at least one axis, e.g. `seed = {{ range = [0, 4] }}`");
        }
        let mut set = vec![];
        for (key, value) in &self.set {
            check_key(key, known, "the stage's `set`")?;
            if self.axes.contains_key(key) {
                bail!("`{key}` is both in the stage's `set` and in its `axes`; keep one");
            }
            if remaining && key == "train.updates" {
                bail!("`train.updates` is set while from.updates = \"remaining\"; keep one");
            }
            set.push((key.clone(), normalize(key, value)?));
        }
        let axes = axes(&self.axes, known)?;
        if remaining && axes.iter().any(|a| a.key == "train.updates") {
            bail!("`train.updates` is an axis while from.updates = \"remaining\"; keep one");
        }
        let parents: Vec<&Job> = match parent {
            Some(p) => done.iter().filter(|j| j.stage == p.name).collect(),
            None => vec![],
        };
        // Axes the parent stage has too select its jobs instead of adding a dimension.
        let inherited: Vec<&str> = parents
            .first()
            .map(|j| j.point.iter().map(|(k, _)| k.as_str()).collect())
            .unwrap_or_default();
        let (shared, own): (Vec<&Axis>, Vec<&Axis>) = axes
            .iter()
            .partition(|a| inherited.contains(&a.key.as_str()));
        let value_of = |j: &Job, key: &str| -> Option<Value> {
            j.point
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        for a in &shared {
            let mut theirs: Vec<Value> = vec![];
            for j in &parents {
                if let Some(v) = value_of(j, &a.key)
                    && !theirs.iter().any(|w| same(w, &v))
                {
                    theirs.push(v);
                }
            }
            if let Some(v) = a.values.iter().find(|v| !theirs.iter().any(|w| same(w, v))) {
                bail!(
                    "axis `{}` is also an axis of stage `{}`, so it picks that stage's jobs; its value {v} is not among them; allowed values: {}",
                    a.key,
                    parent.map_or("", |p| p.name.as_str()),
                    list(&theirs)
                );
            }
        }
        let parents: Vec<Option<&Job>> = if parent.is_some() {
            parents
                .into_iter()
                .filter(|j| {
                    shared.iter().all(|a| {
                        value_of(j, &a.key).is_some_and(|v| a.values.iter().any(|w| same(w, &v)))
                    })
                })
                .map(Some)
                .collect()
        } else {
            vec![None]
        };
        let snap_points: Vec<Option<Snap>> = if parent.is_some() {
            snaps.iter().copied().map(Some).collect()
        } else {
            vec![None]
        };

        // What `exclude` rules may name: every key of the jobs' points, with its values.
        let mut choices: Vec<(String, Vec<Value>)> = vec![];
        for j in parents.iter().flatten() {
            for (k, v) in &j.point {
                match choices.iter_mut().find(|(c, _)| c == k) {
                    Some((_, vs)) => {
                        if !vs.iter().any(|w| same(w, v)) {
                            vs.push(v.clone())
                        }
                    }
                    None => choices.push((k.clone(), vec![v.clone()])),
                }
            }
        }
        if parent.is_some() {
            choices.push((SNAPSHOT.into(), snaps.iter().map(|s| s.value()).collect()));
        }
        for a in &own {
            choices.push((a.key.clone(), a.values.clone()));
        }
        let rules = exclusions(&self.exclude, &choices)?;

        let prefix = if staged {
            format!("{}.", self.name)
        } else {
            String::new()
        };
        let mut jobs = vec![];
        let mut excluded = 0;
        for parent_job in &parents {
            for snap in &snap_points {
                let mut index = vec![0usize; own.len()];
                loop {
                    let mut point = parent_job.map(|p| p.point.clone()).unwrap_or_default();
                    let mut parts = parent_job.map(|p| p.parts.clone()).unwrap_or_default();
                    if let Some(s) = snap {
                        point.push((SNAPSHOT.into(), s.value()));
                        parts.push(format!("{SNAPSHOT}={}", s.label()));
                    }
                    for (a, &i) in own.iter().zip(&index) {
                        point.push((a.key.clone(), a.values[i].clone()));
                        parts.push(format!("{}={}", a.short, a.labels[i]));
                    }
                    let dropped = rules.iter().any(|rule| {
                        rule.iter()
                            .all(|(k, v)| point.iter().any(|(pk, pv)| pk == k && same(pv, v)))
                    });
                    if dropped {
                        excluded += 1;
                    } else {
                        let name = format!("{prefix}{}", parts.join(","));
                        if name.len() > MAX_NAME {
                            bail!(
                                "job name `{name}` is longer than {MAX_NAME} characters; use fewer axes or shorter values"
                            );
                        }
                        let after = match (parent_job, snap) {
                            (Some(p), Some(s)) => {
                                let (update, file) = s.of(p)?;
                                Some(After {
                                    job: p.name.clone(),
                                    snapshot: s.label(),
                                    update,
                                    file,
                                })
                            }
                            _ => None,
                        };
                        let (config, action) = match (self.kind, parent_job) {
                            (StageKind::Eval, Some(p)) => {
                                check_posthoc(&self.posteriors, p)?;
                                if self.actions.is_some() && p.config.task == Task::Regression {
                                    bail!(
                                        "`actions` applies to bandit and gridworld jobs; `{}` is a regression job",
                                        p.name
                                    );
                                }
                                if self.predictive.is_some() && p.config.task != Task::Regression {
                                    bail!(
                                        "`predictive` applies to regression jobs; `{}` is a `{}` job",
                                        p.name,
                                        p.config.task
                                    );
                                }
                                (
                                    p.config.clone(),
                                    Action::Eval {
                                        posteriors: self.posteriors.clone(),
                                        tune_prior: self.tune_prior,
                                        actions: self.actions.clone(),
                                        predictive: self.predictive.clone(),
                                    },
                                )
                            }
                            _ => {
                                let table = match parent_job {
                                    Some(p) => match Value::try_from(&p.config)
                                        .context("serialising a parent job's config")?
                                    {
                                        Value::Table(t) => t,
                                        _ => bail!("a config serialises to a table"),
                                    },
                                    None => base.clone(),
                                };
                                let mut assignments: Vec<(String, Value)> = match parent_job {
                                    Some(_) => vec![],
                                    None => top_set.to_vec(),
                                };
                                assignments.extend(set.iter().cloned());
                                for (a, &i) in own.iter().zip(&index) {
                                    assignments.push((a.key.clone(), a.values[i].clone()));
                                }
                                if let (true, Some(p), Some(a)) = (remaining, parent_job, &after) {
                                    let left = p.config.train.updates - a.update;
                                    assignments.push((
                                        "train.updates".into(),
                                        Value::Integer(left as i64),
                                    ));
                                }
                                (job_config(&table, assignments, &name)?, Action::Train)
                            }
                        };
                        jobs.push(Job {
                            name,
                            stage: self.name.clone(),
                            config,
                            action,
                            after,
                            point,
                            parts,
                        });
                    }
                    // Odometer: the last axis varies fastest.
                    let Some(a) = (0..own.len())
                        .rev()
                        .find(|&a| index[a] + 1 < own[a].values.len())
                    else {
                        break;
                    };
                    index[a] += 1;
                    index[a + 1..].iter_mut().for_each(|i| *i = 0);
                }
            }
        }
        if jobs.is_empty() {
            bail!("every combination of the axes is excluded by an [[exclude]] rule");
        }
        let stage = Stage {
            name: self.name,
            kind: self.kind,
            from: parent.map(|p| p.name.clone()),
            axes,
            jobs: jobs.len(),
            excluded,
        };
        Ok((stage, jobs))
    }
}

/// Fails where a post-hoc posterior does not belong to `parent`'s network (see
/// [`PosteriorConfig::check_posthoc`]: a VRNN head on a network not trained as a VRNN, the point
/// or Laplace posterior on a VRNN network, …), when the sweep is read, before any job runs.
fn check_posthoc(posteriors: &[String], parent: &Job) -> Result<()> {
    for spec in posteriors {
        let p: PosteriorConfig = spec.parse()?;
        parent
            .config
            .model
            .posterior
            .check_posthoc(&p)
            .with_context(|| {
                format!(
                    "posteriors: `{spec}` on job `{}`; evaluate other posteriors post hoc, or finetune in a train stage",
                    parent.name
                )
            })?;
    }
    Ok(())
}

fn list(values: &[Value]) -> String {
    values
        .iter()
        .map(|w| w.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A stage's axes, in file order (possibly none).
fn axes(table: &Table, known: &[String]) -> Result<Vec<Axis>> {
    let mut axes = vec![];
    for (key, spec) in table {
        check_key(key, known, "[axes]")?;
        let values = axis_values(key, spec)?
            .iter()
            .map(|v| normalize(key, v))
            .collect::<Result<Vec<_>>>()?;
        if values.is_empty() {
            bail!("axis `{key}` is empty; give at least one value");
        }
        let labels = values
            .iter()
            .map(|v| label(key, v))
            .collect::<Result<Vec<_>>>()?;
        for (i, l) in labels.iter().enumerate() {
            if let Some(j) = labels[..i].iter().position(|m| m == l) {
                bail!(
                    "axis `{key}`: values {} and {} both give the job-name part `{l}`; list each value once",
                    values[j],
                    values[i]
                );
            }
        }
        axes.push(Axis {
            key: key.clone(),
            short: String::new(),
            values,
            labels,
        });
    }
    let last = |k: &str| k.rsplit('.').next().unwrap_or(k).to_string();
    let shorts: Vec<String> = axes.iter().map(|a| last(&a.key)).collect();
    for (a, short) in axes.iter_mut().zip(&shorts) {
        let shared = shorts.iter().filter(|s| *s == short).count() > 1;
        a.short = if shared { a.key.clone() } else { short.clone() };
    }
    Ok(axes)
}

/// Each `[[exclude]]` rule as (key, value) pairs, checked against `choices` (the keys a job's
/// point has, with their values).
fn exclusions(
    rules: &[Table],
    choices: &[(String, Vec<Value>)],
) -> Result<Vec<Vec<(String, Value)>>> {
    let keys = || {
        choices
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = vec![];
    for (i, rule) in rules.iter().enumerate() {
        let n = i + 1;
        if rule.is_empty() {
            bail!("[[exclude]] rule {n} is empty; give axis keys and the values to drop");
        }
        let mut pairs = vec![];
        for (key, value) in rule {
            let Some((_, values)) = choices.iter().find(|(k, _)| k == key) else {
                bail!(
                    "[[exclude]] rule {n}: `{key}` is not an axis; allowed keys: {}",
                    keys()
                );
            };
            let v = normalize(key, value)?;
            if !values.iter().any(|w| same(w, &v)) {
                bail!(
                    "[[exclude]] rule {n}: `{key}` = {value} is not one of the axis values; allowed values: {}",
                    list(values)
                );
            }
            pairs.push((key.clone(), v));
        }
        out.push(pairs);
    }
    Ok(out)
}

/// Builds and validates a job's config: `assignments` written into `table`, whole tables before
/// the keys inside them (so `model.posterior.jitter` applies to every posterior of a
/// `model.posterior` axis), later assignments of one key winning.
fn job_config(
    table: &Table,
    mut assignments: Vec<(String, Value)>,
    name: &str,
) -> Result<ExperimentConfig> {
    assignments.sort_by_key(|(k, _)| k.matches('.').count());
    let mut table = table.clone();
    for (key, value) in assignments {
        set_dotted(&mut table, &key, value)?;
    }
    table.insert("name".into(), Value::String(name.to_string()));
    let text = toml::to_string(&table).context("serialising a job config")?;
    ExperimentConfig::from_toml_str(&text, &format!("(sweep job `{name}`)"))
}

/// The values of an axis: a list, or `{ range = [start, end] }` (integers, end excluded).
fn axis_values(key: &str, spec: &Value) -> Result<Vec<Value>> {
    match spec {
        Value::Array(values) => Ok(values.clone()),
        Value::Table(t) => {
            if let Some(k) = t.keys().find(|k| *k != "range") {
                bail!("axis `{key}`: unknown key `{k}` in the table; allowed keys: range");
            }
            let bounds = match t.get("range") {
                Some(Value::Array(b)) if b.len() == 2 => (b[0].as_integer(), b[1].as_integer()),
                _ => (None, None),
            };
            let (Some(start), Some(end)) = bounds else {
                bail!(
                    "axis `{key}`: range must be two integers [start, end] (end excluded), e.g. {{ range = [0, 4] }}"
                );
            };
            Ok((start..end).map(Value::Integer).collect())
        }
        other => bail!(
            "axis `{key}` must be a list of values or {{ range = [start, end] }} (got `{other}`)"
        ),
    }
}

/// A value as it goes into the config: posterior SPEC strings become `[model.posterior]` tables.
fn normalize(key: &str, value: &Value) -> Result<Value> {
    if key != POSTERIOR {
        return Ok(value.clone());
    }
    let p = posterior(value).with_context(|| format!("`{key}` value {value}"))?;
    Value::try_from(&p).context("serialising a posterior")
}

fn posterior(value: &Value) -> Result<PosteriorConfig> {
    match value {
        Value::String(spec) => spec.parse(),
        Value::Table(_) => {
            let p: PosteriorConfig = value.clone().try_into()?;
            p.validate()?;
            Ok(p)
        }
        _ => bail!("expected a posterior SPEC string (e.g. \"laplace:window=1\") or a table"),
    }
}

/// The job-name part of a (normalized) value: posteriors by their label, numbers in their
/// shortest form, anything outside `[A-Za-z0-9._+-]` replaced by `_`.
fn label(key: &str, value: &Value) -> Result<String> {
    if key == POSTERIOR {
        return Ok(posterior(value)?.label());
    }
    let raw = match value {
        Value::String(s) => s.clone(),
        Value::Integer(i) => i.to_string(),
        Value::Float(x) => {
            let s = x.to_string();
            if s.len() > 10 { format!("{x:e}") } else { s }
        }
        Value::Boolean(b) => b.to_string(),
        Value::Array(items) => items
            .iter()
            .map(|v| label("", v))
            .collect::<Result<Vec<_>>>()?
            .join("-"),
        other => bail!(
            "axis `{key}`: values must be numbers, strings, booleans or lists of them (got `{other}`)"
        ),
    };
    Ok(raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._+-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect())
}

/// Equality of axis values, with integers equal to the same float.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Integer(i), Value::Float(x)) | (Value::Float(x), Value::Integer(i)) => {
            *i as f64 == *x
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        _ => a == b,
    }
}

/// Writes `value` at the dotted `key` of `table`, creating intermediate tables.
fn set_dotted(table: &mut Table, key: &str, value: Value) -> Result<()> {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap_or(key);
    let mut t = table;
    for (i, part) in parts.iter().enumerate() {
        let entry = t
            .entry(part.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        t = match entry {
            Value::Table(inner) => inner,
            _ => bail!(
                "cannot set `{key}`: `{}` in the base config is not a table",
                parts[..=i].join(".")
            ),
        };
    }
    t.insert(last.to_string(), value);
    Ok(())
}

/// Every dotted key a sweep may set: the leaves of a full config (with a Laplace posterior,
/// which has every posterior option) and `model.posterior` as a whole; `name` is the job's.
pub fn config_keys() -> Vec<String> {
    // An RL config that sets the keys left out of the serialised config at their defaults
    // (`model.sample_scale`, `model.sample_warmup`, `model.sample_every`, `ppo.target_kl`, `ppo.entropy_final`, `eval.actions`), so that every key appears in
    // the walk below.
    let cfg = ExperimentConfig::from_toml_str(
        "name = \"x\"\ntask = \"bandit\"\n[model]\nsample_scale = 0.5\nsample_warmup = 0.5\nsample_every = \"task\"\n\
         [model.posterior]\nfamily = \"laplace\"\n[ppo]\ntarget_kl = 0.1\nentropy_final = 0.01\n\
         [eval]\nactions = \"greedy\"\n",
        "(key list)",
    )
    .expect("the minimal config is valid");
    let tree = Value::try_from(&cfg).expect("a config serialises");
    let mut keys = vec![];
    fn walk(prefix: &str, v: &Value, keys: &mut Vec<String>) {
        match v {
            Value::Table(t) => {
                if prefix == POSTERIOR {
                    keys.push(prefix.to_string());
                }
                for (k, v) in t {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&path, v, keys);
                }
            }
            _ => keys.push(prefix.to_string()),
        }
    }
    walk("", &tree, &mut keys);
    keys.retain(|k| k != "name");
    keys
}

/// Fails unless `key` is a config key a sweep may set; the error lists the keys of its section.
fn check_key(key: &str, known: &[String], place: &str) -> Result<()> {
    if known.iter().any(|k| k == key) {
        return Ok(());
    }
    if key == "name" {
        bail!("`name` in {place} cannot be set: each job is named by its axis values");
    }
    let section = key.split('.').next().unwrap_or(key);
    let prefix = format!("{section}.");
    let in_section: Vec<&str> = known
        .iter()
        .filter(|k| k.starts_with(&prefix))
        .map(String::as_str)
        .collect();
    if key.contains('.') && !in_section.is_empty() {
        bail!(
            "`{key}` in {place} is not a config key; allowed keys in [{section}]: {}",
            in_section.join(", ")
        );
    }
    let top: Vec<&str> = known
        .iter()
        .filter(|k| !k.contains('.'))
        .map(String::as_str)
        .collect();
    let mut sections: Vec<&str> = known
        .iter()
        .filter_map(|k| k.split_once('.').map(|(s, _)| s))
        .collect();
    sections.dedup();
    bail!(
        "`{key}` in {place} is not a config key; allowed keys: {}, or `section.key` with section one of {}",
        top.join(", "),
        sections.join(", ")
    )
}
