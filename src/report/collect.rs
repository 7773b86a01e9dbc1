//! Finds the result folders under a directory and reads them into flat records.
//!
//! A result folder is any folder holding a `config.toml` and evaluation tables:
//! - a training run: `metrics/eval.csv` (regression) or `metrics/eval_rl.csv` +
//!   `metrics/eval_rl_returns.csv` (bandit, gridworld); with `init_from.json` it was finetuned;
//! - an evaluation folder of `lvrnn eval --out X`: `source.json` (`{"checkpoint", "update"}`) and
//!   `eval.csv` or `eval_rl.csv` + `eval_rl_returns.csv` beside its `config.toml`.
//!
//! Where present, `eval_belief.csv` and `eval_belief_summary.csv` (the posterior against the
//! exact belief) add [`BELIEF_STEP_METRICS`], [`BELIEF_STEP_CORRELATIONS`] per t and
//! [`BELIEF_SUMMARY_METRICS`] at T.
//!
//! Every CSV row becomes one [`Record`] per metric and x (points or t): the row's mean over the
//! folder's test tasks, which is one seed's value for the across-seed intervals of
//! [`super::aggregate`]. A training run's `metrics/train.jsonl` adds its training curves
//! (`training_return`, `training_regret`, `training_nll`, `training_kl` and the PPO
//! diagnostics `training_entropy`, `training_approx_kl`, … against the update: each seed's mean
//! over complete blocks of ⌈`train.updates` / 100⌉ updates).

use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where a row's numbers come from (the `provenance` column).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Provenance {
    /// The network trained as such (its own posterior).
    Trained,
    /// The network finetuned from another checkpoint (`train --init-from`) under its posterior.
    Finetuned,
    /// A trained network evaluated under another posterior, no retraining (`(post-hoc on …)`).
    PostHoc,
    /// An exact reference policy (`reference: NAME`), RL only.
    Reference,
}

impl Provenance {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trained => "trained",
            Self::Finetuned => "finetuned",
            Self::PostHoc => "post-hoc",
            Self::Reference => "reference",
        }
    }
}

/// The task family of a result folder (its config's `task`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Section {
    Regression,
    Bandit,
    Gridworld,
}

impl Section {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Regression => "regression",
            Self::Bandit => "bandit",
            Self::Gridworld => "gridworld",
        }
    }

    /// The x axis of the per-step metrics.
    pub fn x_name(self) -> &'static str {
        match self {
            Self::Regression => "points",
            _ => "t",
        }
    }
}

/// One result folder.
#[derive(Clone, Debug)]
pub struct Folder {
    /// Path relative to the scanned directory.
    pub path: PathBuf,
    pub section: Section,
    pub seed: u64,
    /// Every config leaf as a dotted key (`train.lr`), plus `model.posterior` as its label.
    pub keys: BTreeMap<String, String>,
    /// `run` for a training run, `eval: <checkpoint stem>` for an evaluation folder.
    pub evaluation: String,
    /// The network was finetuned (`init_from.json` in its run folder).
    pub finetuned: bool,
    /// `eval.tasks`: test tasks per seed.
    pub tasks: usize,
}

/// One number: a metric of one CSV row (mean over the folder's test tasks).
#[derive(Clone, Debug)]
pub struct Record {
    /// Index into the folder list.
    pub folder: usize,
    /// The row's `model` label (tuned prior values removed, see [`normalise_label`]).
    pub model: String,
    pub provenance: Provenance,
    pub metric: String,
    /// Points (regression) or t (RL); for `return` and `final_regret` the horizon T.
    pub x: usize,
    pub value: f64,
    /// The row's 99% half-width over the folder's tasks (used for reference policies only).
    pub task_ci99: f64,
}

/// A folder that has a `config.toml` but could not be used, and why.
#[derive(Clone, Debug)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

/// Everything found under a directory.
#[derive(Clone, Debug, Default)]
pub struct Collection {
    pub folders: Vec<Folder>,
    pub records: Vec<Record>,
    pub skipped: Vec<Skipped>,
}

/// Searches `dir` recursively (not following symbolic links, not entering `exclude`) for result
/// folders and reads them. Folders are visited in sorted order, so the result is deterministic.
pub fn collect(dir: &Path, exclude: &Path) -> Result<Collection> {
    if !dir.is_dir() {
        bail!("lvrnn report DIR: `{}` is not a directory", dir.display());
    }
    let exclude = std::fs::canonicalize(exclude).ok();
    let mut found = vec![];
    walk(dir, exclude.as_deref(), &mut found)?;
    let mut out = Collection::default();
    for abs in found {
        let rel = abs.strip_prefix(dir).unwrap_or(&abs).to_path_buf();
        match read_folder(&abs, rel.clone(), out.folders.len()) {
            Ok(Some((folder, records))) => {
                out.folders.push(folder);
                out.records.extend(records);
            }
            Ok(None) => out.skipped.push(Skipped {
                path: rel,
                reason: "config.toml but no evaluation tables (eval.csv, or eval_rl.csv and eval_rl_returns.csv)".into(),
            }),
            Err(e) => out.skipped.push(Skipped {
                path: rel,
                reason: format!("{e:#}"),
            }),
        }
    }
    Ok(out)
}

fn walk(dir: &Path, exclude: Option<&Path>, found: &mut Vec<PathBuf>) -> Result<()> {
    if let Some(ex) = exclude
        && std::fs::canonicalize(dir).ok().as_deref() == Some(ex)
    {
        return Ok(());
    }
    if dir.join("config.toml").is_file() {
        found.push(dir.to_path_buf());
    }
    let mut subs: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    subs.sort();
    for s in subs {
        walk(&s, exclude, found)?;
    }
    Ok(())
}

/// The tables of a folder: (section CSV dir, is an evaluation folder).
fn tables_dir(dir: &Path) -> Option<(PathBuf, bool)> {
    let eval_folder = dir.join("source.json").is_file();
    let base = if eval_folder {
        dir.to_path_buf()
    } else {
        dir.join("metrics")
    };
    let has = base.join("eval.csv").is_file()
        || (base.join("eval_rl.csv").is_file() && base.join("eval_rl_returns.csv").is_file());
    has.then_some((base, eval_folder))
}

fn read_folder(dir: &Path, rel: PathBuf, index: usize) -> Result<Option<(Folder, Vec<Record>)>> {
    let Some((tables, eval_folder)) = tables_dir(dir) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(dir.join("config.toml"))
        .with_context(|| format!("reading {}/config.toml", dir.display()))?;
    let value: toml::Value =
        toml::from_str(&text).with_context(|| format!("parsing {}/config.toml", dir.display()))?;
    let mut keys = BTreeMap::new();
    flatten("", &value, &mut keys);
    if let Some(p) = value.get("model").and_then(|m| m.get("posterior")) {
        keys.insert("model.posterior".into(), posterior_label(p));
        // A scale chosen by the "auto" rule groups by its rule, not by each seed's number.
        let chosen = p.get("chosen_by_auto").and_then(|c| c.as_array());
        for name in chosen.into_iter().flatten().filter_map(|n| n.as_str()) {
            keys.insert(format!("model.posterior.{name}"), "auto".into());
        }
        keys.remove("model.posterior.chosen_by_auto");
    }
    let section = match keys.get("task").map(String::as_str) {
        Some("regression") => Section::Regression,
        Some("bandit") => Section::Bandit,
        Some("gridworld") => Section::Gridworld,
        other => {
            bail!("config.toml: `task` must be regression, bandit or gridworld (got {other:?})")
        }
    };
    let seed = keys
        .get("seed")
        .and_then(|s| s.parse().ok())
        .context("config.toml: `seed` missing or not an integer")?;
    let tasks = keys
        .get("eval.tasks")
        .and_then(|s| s.parse().ok())
        .context("config.toml: `eval.tasks` missing or not an integer")?;
    let (evaluation, run_dir) = if eval_folder {
        let src: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("source.json"))
                .with_context(|| format!("reading {}/source.json", dir.display()))?,
        )
        .with_context(|| format!("parsing {}/source.json", dir.display()))?;
        let ck = PathBuf::from(
            src.get("checkpoint")
                .and_then(|c| c.as_str())
                .context("source.json: `checkpoint` (the evaluated checkpoint's path) missing")?,
        );
        let stem = ck
            .file_stem()
            .map_or("checkpoint".into(), |s| s.to_string_lossy().into_owned());
        // The run that wrote the checkpoint: <run>/checkpoints/<file>; else the folder above.
        let run = ck
            .parent()
            .and_then(Path::parent)
            .filter(|r| r.join("config.toml").is_file())
            .map(Path::to_path_buf)
            .or_else(|| dir.parent().map(Path::to_path_buf));
        (format!("eval: {stem}"), run)
    } else {
        ("run".to_string(), Some(dir.to_path_buf()))
    };
    let finetuned = run_dir.is_some_and(|r| r.join("init_from.json").is_file());
    let folder = Folder {
        path: rel,
        section,
        seed,
        keys,
        evaluation,
        finetuned,
        tasks,
    };
    let mut records = vec![];
    let provenance = |label: &str| {
        if label.starts_with("reference: ") {
            Provenance::Reference
        } else if label.contains("(post-hoc on ") && !same_posterior(label) {
            Provenance::PostHoc
        } else if finetuned {
            Provenance::Finetuned
        } else {
            Provenance::Trained
        }
    };
    let mut push = |model: &str, metric: &str, x: usize, value: f64, ci: f64| {
        records.push(Record {
            folder: index,
            model: normalise_label(model),
            provenance: provenance(model),
            metric: metric.to_string(),
            x,
            value,
            task_ci99: ci,
        });
    };
    if section == Section::Regression {
        let t = read_csv(&tables.join("eval.csv"))?;
        for row in &t.rows {
            let model = t.get(row, "model")?;
            let x = t.num(row, "points")? as usize;
            for m in ["ce", "entropy", "kl"] {
                push(
                    model,
                    m,
                    x,
                    t.num(row, &format!("{m}_mean"))?,
                    t.num(row, &format!("{m}_ci99"))?,
                );
            }
            // Coverage columns exist since the calibration metrics were added; tables written
            // before that still count for CE, entropy and KL.
            for m in ["cover50", "cover90", "cover99"] {
                if t.header.iter().any(|h| h == m) {
                    push(model, m, x, t.num(row, m)?, f64::NAN);
                }
            }
        }
    } else {
        let t = read_csv(&tables.join("eval_rl.csv"))?;
        let mut horizon: BTreeMap<String, usize> = BTreeMap::new();
        let mut cum_reward: BTreeMap<String, f64> = BTreeMap::new();
        for row in &t.rows {
            let model = t.get(row, "model")?;
            let x = t.num(row, "t")? as usize;
            for (m, col) in [
                ("reward", "reward"),
                ("cum_regret", "cum_regret"),
                ("entropy", "entropy"),
                ("kl", "kl"),
            ] {
                push(
                    model,
                    m,
                    x,
                    t.num(row, &format!("{col}_mean"))?,
                    t.num(row, &format!("{col}_ci99"))?,
                );
            }
            // Return through t: the mean of the sums is the sum of the per-step means.
            let c = cum_reward.entry(model.to_string()).or_default();
            *c += t.num(row, "reward_mean")?;
            push(model, "cum_return", x, *c, f64::NAN);
            let h = horizon.entry(model.to_string()).or_default();
            *h = (*h).max(x);
        }
        let r = read_csv(&tables.join("eval_rl_returns.csv"))?;
        let default_t = horizon.values().copied().max().unwrap_or(0);
        // The posterior against the exact belief, in tables written since issue 26.
        let belief = tables.join("eval_belief.csv");
        if belief.is_file() {
            let b = read_csv(&belief)?;
            for row in &b.rows {
                let model = b.get(row, "model")?;
                let x = b.num(row, "t")? as usize;
                for m in BELIEF_STEP_METRICS {
                    if b.header.iter().any(|h| *h == format!("{m}_mean")) {
                        push(
                            model,
                            m,
                            x,
                            b.num(row, &format!("{m}_mean"))?,
                            b.num(row, &format!("{m}_ci99"))?,
                        );
                    }
                }
                for m in BELIEF_STEP_CORRELATIONS {
                    push(model, m, x, b.num(row, m)?, f64::NAN);
                }
            }
        }
        let summary = tables.join("eval_belief_summary.csv");
        if summary.is_file() {
            let b = read_csv(&summary)?;
            for row in &b.rows {
                let model = b.get(row, "model")?;
                let x = horizon.get(model).copied().unwrap_or(default_t);
                for m in BELIEF_SUMMARY_METRICS {
                    push(model, m, x, b.num(row, m)?, f64::NAN);
                }
            }
        }
        for row in &r.rows {
            let model = r.get(row, "model")?;
            let x = horizon.get(model).copied().unwrap_or(default_t);
            push(
                model,
                "return",
                x,
                r.num(row, "return_mean")?,
                r.num(row, "return_ci99")?,
            );
            push(
                model,
                "final_regret",
                x,
                r.num(row, "final_regret_mean")?,
                r.num(row, "final_regret_ci99")?,
            );
        }
    }
    if !eval_folder {
        let own = folder
            .keys
            .get("model.posterior")
            .cloned()
            .unwrap_or_default();
        let updates = folder
            .keys
            .get("train.updates")
            .and_then(|u| u.parse().ok());
        let log = dir.join("metrics").join("train.jsonl");
        if let (Some(updates), true) = (updates, log.is_file()) {
            for (metric, x, value) in training_blocks(&log, updates)? {
                push(&own, &metric, x, value, f64::NAN);
            }
        }
    }
    Ok(Some((folder, records)))
}

/// Per-step metrics of `eval_belief.csv` (columns `<name>_mean`, `<name>_ci99`; those of the
/// table's environment).
pub const BELIEF_STEP_METRICS: [&str; 6] = [
    "exact_entropy",
    "exact_var",
    "ess",
    "reward_kl_exact",
    "reward_brier",
    "reward_brier_exact",
];

/// Per-step correlations of `eval_belief.csv` (one column each).
pub const BELIEF_STEP_CORRELATIONS: [&str; 2] = ["entropy_belief_corr_t", "entropy_drop_corr_t"];

/// Columns of `eval_belief_summary.csv`, each a record at the horizon T.
pub const BELIEF_SUMMARY_METRICS: [&str; 5] = [
    "entropy_belief_corr",
    "entropy_drop_corr",
    "reward_kl_exact_tmean",
    "reward_brier_tmean",
    "reward_brier_exact_tmean",
];

/// Metrics of `train.jsonl` that the report draws against the update: the prefix of their
/// record names, and the logged keys.
pub const TRAINING_PREFIX: &str = "training_";
const TRAINING_KEYS: [&str; 11] = [
    "return",
    "regret",
    "nll",
    "kl",
    // The PPO diagnostics of issue 17 (CleanRL's names where it has them).
    "entropy",
    "approx_kl",
    "clipfrac",
    "explained_variance",
    "grad_norm_raw",
    "kl_term_ratio",
    "noise_ratio",
];

/// Updates per point of a training curve: `updates` split into at most this many blocks.
pub const TRAINING_POINTS: usize = 100;

/// One seed's training curve of each of [`TRAINING_KEYS`] that the log holds: the mean over
/// each complete block of ⌈updates / [`TRAINING_POINTS`]⌉ updates, at the block's last update
/// (blocks follow the config's `train.updates`, so every seed of a group has the same x; an
/// unfinished run contributes its complete blocks).
fn training_blocks(log: &Path, updates: usize) -> Result<Vec<(String, usize, f64)>> {
    let block = updates.div_ceil(TRAINING_POINTS).max(1);
    let records: Vec<serde_json::Value> = crate::util::read_jsonl(log)?;
    let mut sums: BTreeMap<(&str, usize), (f64, usize)> = BTreeMap::new();
    for r in &records {
        let Some(u) = r.get("update").and_then(|u| u.as_u64()) else {
            continue;
        };
        let u = u as usize;
        if u == 0 || u > updates {
            continue;
        }
        let end = (u.div_ceil(block) * block).min(updates);
        for key in TRAINING_KEYS {
            if let Some(v) = r.get(key).and_then(|v| v.as_f64()) {
                let e = sums.entry((key, end)).or_default();
                e.0 += v;
                e.1 += 1;
            }
        }
    }
    Ok(sums
        .into_iter()
        .filter(|((_, end), (_, n))| *n == end - (end - 1) / block * block)
        .map(|((key, end), (sum, n))| (format!("{TRAINING_PREFIX}{key}"), end, sum / n as f64))
        .collect())
}

/// `X (post-hoc on X)`: the network's own posterior evaluated again (a re-evaluation, not post
/// hoc).
fn same_posterior(label: &str) -> bool {
    label
        .split_once(" (post-hoc on ")
        .and_then(|(fam, rest)| rest.split_once(')').map(|(base, _)| fam == base))
        .unwrap_or(false)
}

/// Removes the tuned prior values from a `…, tuned prior prior_precision=P…` label, so that the
/// tuned variant of every seed falls into one group (the values chosen per seed are in each
/// folder's `prior_tuning.csv`).
pub fn normalise_label(label: &str) -> String {
    const TUNED: &str = ", tuned prior ";
    let Some(i) = label.find(TUNED) else {
        return label.to_string();
    };
    let rest = &label[i + TUNED.len()..];
    let end = [" (post-hoc on ", " @ "]
        .iter()
        .filter_map(|m| rest.find(m))
        .min()
        .unwrap_or(rest.len());
    format!("{}, tuned prior{}", &label[..i], &rest[end..])
}

/// The SPEC-style label of a `[model.posterior]` table (`rnn`, `vrnn-full`,
/// `laplace-sigma-k1-full`); the table's own text where it does not parse.
fn posterior_label(p: &toml::Value) -> String {
    p.clone()
        .try_into::<crate::posterior::PosteriorConfig>()
        .map(|c| c.label())
        .unwrap_or_else(|_| p.to_string())
}

fn flatten(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        toml::Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// A CSV table with a header row (fields as written by `util::write_csv_atomic`).
struct Csv {
    path: PathBuf,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Csv {
    fn col(&self, name: &str) -> Result<usize> {
        self.header.iter().position(|h| h == name).with_context(|| {
            format!(
                "{}: no column `{name}` (columns: {})",
                self.path.display(),
                self.header.join(", ")
            )
        })
    }

    fn get<'a>(&self, row: &'a [String], name: &str) -> Result<&'a str> {
        let i = self.col(name)?;
        row.get(i)
            .map(String::as_str)
            .with_context(|| format!("{}: short row {row:?}", self.path.display()))
    }

    fn num(&self, row: &[String], name: &str) -> Result<f64> {
        let s = self.get(row, name)?;
        s.trim().parse::<f64>().with_context(|| {
            format!(
                "{}: column `{name}` holds `{}`, not a number",
                self.path.display(),
                crate::util::excerpt(s)
            )
        })
    }
}

fn read_csv(path: &Path) -> Result<Csv> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let damaged = "the table is damaged or was cut short: run the evaluation again (`lvrnn eval`) or move the folder out of the report";
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let header = split_csv(lines.next().map(|(_, l)| l).unwrap_or_default());
    if !header.iter().any(|h| h == "model") {
        bail!(
            "{}: the first line is not a table header with a `model` column (it reads `{}`); {damaged}",
            path.display(),
            crate::util::excerpt(&header.join(","))
        );
    }
    let mut rows = vec![];
    for (i, line) in lines {
        let row = split_csv(line);
        if row.len() != header.len() {
            bail!(
                "{}: line {} has {} fields, the header {}; {damaged}",
                path.display(),
                i + 1,
                row.len(),
                header.len()
            );
        }
        rows.push(row);
    }
    if rows.is_empty() {
        bail!("{}: a header and no rows; {damaged}", path.display());
    }
    Ok(Csv {
        path: path.to_path_buf(),
        header,
        rows,
    })
}

/// Splits one CSV line: fields separated by commas, `"…"` quoting with `""` for a quote.
pub fn split_csv(line: &str) -> Vec<String> {
    let mut out = vec![];
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    out.push(cur);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_curves_are_block_means_of_complete_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("train.jsonl");
        // 250 updates in blocks of 3 (⌈250 / 100⌉); the run stopped after update 8, so the
        // block 7–9 is incomplete and left out; `kl` is logged from update 4 on.
        let rows: String = (1..=8)
            .map(|u| {
                let kl = if u >= 4 {
                    format!(", \"kl\": {}", 10 * u)
                } else {
                    String::new()
                };
                format!("{{\"update\": {u}, \"regret\": {}{kl}}}\n", u * u)
            })
            .collect();
        std::fs::write(&log, rows).unwrap();
        let got = training_blocks(&log, 250).unwrap();
        let expected = [
            ("training_kl", 6, 50.0),
            ("training_regret", 3, (1.0 + 4.0 + 9.0) / 3.0),
            ("training_regret", 6, (16.0 + 25.0 + 36.0) / 3.0),
        ];
        assert_eq!(got.len(), expected.len(), "{got:?}");
        for ((name, x, v), (en, ex, ev)) in got.iter().zip(expected) {
            assert_eq!((name.as_str(), *x), (en, ex));
            assert!((v - ev).abs() < 1e-12, "{name} at {x}: {v} vs {ev}");
        }
        // A finished run's last block may be shorter: 101 updates in blocks of 2, whose last
        // block is update 101 alone.
        let rows: String = (1..=101)
            .map(|u| format!("{{\"update\": {u}, \"return\": {u}}}\n"))
            .collect();
        std::fs::write(&log, rows).unwrap();
        let got = training_blocks(&log, 101).unwrap();
        assert_eq!(got.len(), 51);
        assert_eq!(got[0], ("training_return".to_string(), 2, 1.5));
        assert_eq!(got[50], ("training_return".to_string(), 101, 101.0));
    }

    #[test]
    fn quoted_csv_fields_keep_their_commas() {
        assert_eq!(
            split_csv(r#"a,"b, c",1.5,"say ""hi""""#),
            vec!["a", "b, c", "1.5", r#"say "hi""#]
        );
    }

    #[test]
    fn tuned_prior_values_are_removed_from_labels() {
        assert_eq!(
            normalise_label(
                "laplace-sigma-k1-full, tuned prior prior_precision=0.1 (post-hoc on rnn) @ alpha=0.2"
            ),
            "laplace-sigma-k1-full, tuned prior (post-hoc on rnn) @ alpha=0.2"
        );
        assert_eq!(normalise_label("rnn"), "rnn");
        // The linearised predictive's rows keep their suffix: a report never pools them with
        // the sampled predictive's.
        assert_eq!(
            normalise_label(
                "laplace-sigma-k1-full (post-hoc on rnn), linearised, tuned prior prior_precision=0.1"
            ),
            "laplace-sigma-k1-full (post-hoc on rnn), linearised, tuned prior"
        );
        assert!(!same_posterior(
            "laplace-sigma-k1-full (post-hoc on rnn), linearised"
        ));
    }
}
