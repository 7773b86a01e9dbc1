//! Groups the records of [`super::collect`] and takes 99% t-intervals over seeds.
//!
//! A group is one section (regression, bandit, gridworld), one value of each grouping key (config
//! keys, default: those that differ between the section's folders, except `seed` and `name`),
//! the row's `model` label, its provenance and its evaluation (`run` or `eval: <checkpoint>`).
//! Within a group, each seed's value is the row's mean over that seed's test tasks (averaged
//! if a seed has several results in the group). The group's estimate is the mean of the n
//! per-seed values and its interval x̄ ± t_{0.995, n−1} · s / √n, s the sample standard
//! deviation of the per-seed values: the seed-to-seed variation (initialisation, training
//! tasks, evaluation noise) is what the interval covers. One seed gives no interval.
//! Reference policies do not depend on the seed (the same test tasks for every seed), so their
//! interval is the per-run one over the test tasks.

use super::collect::{Collection, Folder, Provenance, Section};
use crate::stats::t_quantile;
use anyhow::{Result, bail};
use std::collections::{BTreeMap, BTreeSet};

/// Confidence level of every interval of the report.
pub const LEVEL: f64 = 0.99;

/// Keys never used for default grouping: they tell seeds apart or are bookkeeping.
/// Keys never grouped by default: identity (`seed`, `name`), the base config's extra post-hoc
/// list, and keys that only say which files a run writes (they do not change its numbers).
const NOT_GROUPED: [&str; 5] = [
    "seed",
    "name",
    "eval.posthoc",
    "train.snapshots",
    "train.checkpoint_every",
];

/// Mean and interval of one group's per-seed values.
#[derive(Clone, Debug, PartialEq)]
pub enum Interval {
    /// n ≥ 2 seeds: half-width t_{(1+LEVEL)/2, n−1} · s / √n.
    Seeds { n: usize, halfwidth: f64 },
    /// One seed: no across-seed interval.
    OneSeed,
    /// Reference policy: the 99% half-width over its test tasks.
    Tasks { halfwidth: f64 },
}

impl Interval {
    /// The half-width, where there is one.
    pub fn halfwidth(&self) -> Option<f64> {
        match self {
            Self::Seeds { halfwidth, .. } | Self::Tasks { halfwidth } => Some(*halfwidth),
            Self::OneSeed => None,
        }
    }

    /// How the interval was made, for tables.
    pub fn method(&self) -> &'static str {
        match self {
            Self::Seeds { .. } => "99% t-interval over seeds",
            Self::OneSeed => "1 seed: no across-seed interval",
            Self::Tasks { .. } => "99% t-interval over tasks (reference policy)",
        }
    }
}

/// The mean of per-seed values and its interval at [`LEVEL`] (Student t, n − 1 degrees of
/// freedom). Non-finite values are ignored; `None` when none is left.
pub fn across_seeds(per_seed: &[f64]) -> Option<(f64, Interval)> {
    let xs: Vec<f64> = per_seed.iter().copied().filter(|v| v.is_finite()).collect();
    let n = xs.len();
    if n == 0 {
        return None;
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    if n == 1 {
        return Some((mean, Interval::OneSeed));
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let halfwidth = t_quantile(LEVEL, n - 1) * (var / n as f64).sqrt();
    Some((mean, Interval::Seeds { n, halfwidth }))
}

/// What identifies a group.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKey {
    pub section: Section,
    /// Values of the section's grouping keys, in the order of [`Aggregate::by`].
    pub values: Vec<String>,
    pub model: String,
    pub provenance: Provenance,
    pub evaluation: String,
}

/// One group × metric × x.
#[derive(Clone, Debug)]
pub struct Row {
    pub group: GroupKey,
    pub metric: String,
    pub x: usize,
    pub mean: f64,
    pub interval: Interval,
    /// The seeds with a finite value.
    pub seeds: Vec<u64>,
    /// Each of those seeds' value (its mean over its results), in the order of `seeds`.
    pub per_seed: Vec<f64>,
    /// Distinct `eval.tasks` of those results (one value unless grouping pooled several).
    pub tasks: Vec<usize>,
    /// Result rows pooled (more than `seeds.len()` when a seed had several).
    pub results: usize,
}

/// The grouped table.
#[derive(Clone, Debug, Default)]
pub struct Aggregate {
    /// Grouping keys per section.
    pub by: BTreeMap<Section, Vec<String>>,
    pub rows: Vec<Row>,
}

impl Aggregate {
    /// Rows of one section and metric, grouped by group key, sorted by x.
    pub fn curves(&self, section: Section, metric: &str) -> Vec<(&GroupKey, Vec<&Row>)> {
        let mut map: BTreeMap<&GroupKey, Vec<&Row>> = BTreeMap::new();
        for r in &self.rows {
            if r.group.section == section && r.metric == metric {
                map.entry(&r.group).or_default().push(r);
            }
        }
        let mut out: Vec<_> = map.into_iter().collect();
        for (_, rows) in &mut out {
            rows.sort_by_key(|r| r.x);
        }
        out
    }

    /// The row of a group, metric and x.
    pub fn get(&self, group: &GroupKey, metric: &str, x: usize) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| &r.group == group && r.metric == metric && r.x == x)
    }

    /// Sections present, in order.
    pub fn sections(&self) -> Vec<Section> {
        let s: BTreeSet<Section> = self.rows.iter().map(|r| r.group.section).collect();
        s.into_iter().collect()
    }

    /// A short legend label: the model, then what else tells the group apart.
    pub fn label(&self, g: &GroupKey) -> String {
        let mut s = g.model.clone();
        if g.provenance == Provenance::Finetuned {
            s += " [finetuned]";
        }
        if g.evaluation != "run" && g.provenance != Provenance::Reference {
            s += &format!(" [{}]", g.evaluation);
        }
        let keys = self.by.get(&g.section).map(Vec::as_slice).unwrap_or(&[]);
        for (k, v) in keys.iter().zip(&g.values) {
            if k == "model.posterior" || v.is_empty() {
                continue;
            }
            s += &format!(", {}={v}", short_key(k));
        }
        s
    }
}

/// The last part of a dotted key (`train.lr` → `lr`).
pub fn short_key(k: &str) -> &str {
    k.rsplit('.').next().unwrap_or(k)
}

/// Keys accepted by `--by` beside config keys (they are always grouped by).
pub const ROW_KEYS: [&str; 3] = ["model", "provenance", "evaluation"];

/// The config keys that tell `folders` (of one section) apart, except those of `NOT_GROUPED`.
/// A `model.posterior.*` leaf counts only where it differs between folders of the same
/// `model.posterior` label (the label already tells the families apart, but not, e.g., their
/// prior precisions).
fn grouping_keys(folders: &[&Folder]) -> Vec<String> {
    let keys: BTreeSet<&String> = folders.iter().flat_map(|f| f.keys.keys()).collect();
    let differs = |k: &str, among: &[&&Folder]| {
        let vals: BTreeSet<Option<&String>> = among.iter().map(|f| f.keys.get(k)).collect();
        vals.len() > 1
    };
    let all: Vec<&&Folder> = folders.iter().collect();
    let mut by_label: BTreeMap<Option<&String>, Vec<&&Folder>> = BTreeMap::new();
    for f in folders {
        by_label
            .entry(f.keys.get("model.posterior"))
            .or_default()
            .push(f);
    }
    keys.into_iter()
        .filter(|k| !NOT_GROUPED.contains(&k.as_str()))
        .filter(|k| match k.starts_with("model.posterior.") {
            true => by_label.values().any(|among| differs(k, among)),
            false => differs(k, &all),
        })
        .cloned()
        .collect()
}

/// Groups the records. `by`: the grouping config keys for every section (checked against the
/// folders' keys); `None`: per section, every key whose value differs between its folders,
/// except those of `NOT_GROUPED` (and the `model.posterior.*` leaves where `model.posterior`
/// differs).
pub fn aggregate(col: &Collection, by: Option<&[String]>) -> Result<Aggregate> {
    let sections: BTreeSet<Section> = col.folders.iter().map(|f| f.section).collect();
    let all_keys: BTreeSet<&String> = col.folders.iter().flat_map(|f| f.keys.keys()).collect();
    let mut agg = Aggregate::default();
    if let Some(by) = by {
        for k in by {
            if !all_keys.contains(k) && !ROW_KEYS.contains(&k.as_str()) {
                bail!(
                    "--by: unknown key `{k}`; allowed: {}, or any config key of the result folders: {}",
                    ROW_KEYS.join(", "),
                    all_keys
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
    }
    for &section in &sections {
        let folders: Vec<_> = col
            .folders
            .iter()
            .filter(|f| f.section == section)
            .collect();
        let keys = match by {
            Some(by) => by
                .iter()
                .filter(|k| !ROW_KEYS.contains(&k.as_str()))
                .cloned()
                .collect(),
            None => grouping_keys(&folders),
        };
        agg.by.insert(section, keys);
    }

    // group × metric × x → seed → values; plus the tasks and the reference half-widths.
    type Cell = (BTreeMap<u64, Vec<f64>>, BTreeSet<usize>, Vec<f64>);
    let mut cells: BTreeMap<(GroupKey, String, usize), Cell> = BTreeMap::new();
    for r in &col.records {
        let f = &col.folders[r.folder];
        let keys = &agg.by[&f.section];
        let reference = r.provenance == Provenance::Reference;
        let values = keys
            .iter()
            .map(|k| {
                // A reference policy depends only on the environment and the test tasks.
                if reference && !(k.starts_with("env.") || k.starts_with("eval.") || k == "task") {
                    String::new()
                } else {
                    f.keys.get(k).cloned().unwrap_or_default()
                }
            })
            .collect();
        let group = GroupKey {
            section: f.section,
            values,
            model: r.model.clone(),
            provenance: r.provenance,
            evaluation: if reference {
                String::new()
            } else {
                f.evaluation.clone()
            },
        };
        let cell = cells.entry((group, r.metric.clone(), r.x)).or_default();
        cell.0.entry(f.seed).or_default().push(r.value);
        cell.1.insert(f.tasks);
        cell.2.push(r.task_ci99);
    }
    for ((group, metric, x), (by_seed, tasks, task_ci)) in cells {
        let mut seeds = vec![];
        let mut per_seed = vec![];
        let mut results = 0;
        for (seed, vals) in &by_seed {
            let finite: Vec<f64> = vals.iter().copied().filter(|v| v.is_finite()).collect();
            if finite.is_empty() {
                continue;
            }
            results += finite.len();
            seeds.push(*seed);
            per_seed.push(finite.iter().sum::<f64>() / finite.len() as f64);
        }
        let Some((mean, mut interval)) = across_seeds(&per_seed) else {
            continue;
        };
        if group.provenance == Provenance::Reference {
            let h: Vec<f64> = task_ci.into_iter().filter(|v| v.is_finite()).collect();
            interval = if h.is_empty() {
                Interval::OneSeed
            } else {
                Interval::Tasks {
                    halfwidth: h.iter().sum::<f64>() / h.len() as f64,
                }
            };
        }
        agg.rows.push(Row {
            group,
            metric,
            x,
            mean,
            interval,
            seeds,
            per_seed,
            tasks: tasks.into_iter().collect(),
            results,
        });
    }
    Ok(agg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn across_seed_interval_matches_a_hand_computation() {
        // Per-seed means 1..=5: mean 3, sample variance 2.5, t_{0.995,4} = 4.604 (printed
        // table, three decimals), so the half-width is 4.604·√(2.5/5) ≈ 3.2556 (±1e-3).
        let (mean, iv) = across_seeds(&[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        assert!((mean - 3.0).abs() < 1e-12);
        let Interval::Seeds { n, halfwidth } = iv else {
            panic!("{iv:?}")
        };
        assert_eq!(n, 5);
        assert!((halfwidth - 4.604 * (2.5f64 / 5.0).sqrt()).abs() < 1e-3);
    }

    fn folder(keys: &[(&str, &str)]) -> Folder {
        Folder {
            path: PathBuf::new(),
            section: Section::Bandit,
            seed: 0,
            keys: keys
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            evaluation: "run".into(),
            finetuned: false,
            tasks: 1,
        }
    }

    #[test]
    fn a_posterior_leaf_groups_where_it_differs_within_one_family() {
        let rnn = folder(&[("model.posterior", "rnn"), ("train.lr", "0.001")]);
        let lap = |p: &str| {
            folder(&[
                ("model.posterior", "laplace-sigma-k1-full"),
                ("model.posterior.prior_precision", p),
                ("model.posterior.window", "1"),
                ("train.lr", "0.001"),
            ])
        };
        let (a, b) = (lap("1"), lap("100"));
        assert_eq!(
            grouping_keys(&[&rnn, &a, &b]),
            ["model.posterior", "model.posterior.prior_precision"]
        );
        // Present in one family only, equal within it: the label is enough.
        assert_eq!(grouping_keys(&[&rnn, &a, &a]), ["model.posterior"]);
    }

    #[test]
    fn one_seed_gives_no_interval() {
        let (mean, iv) = across_seeds(&[0.7]).unwrap();
        assert_eq!(mean, 0.7);
        assert_eq!(iv, Interval::OneSeed);
        assert_eq!(iv.halfwidth(), None);
        assert_eq!(iv.method(), "1 seed: no across-seed interval");
        assert!(across_seeds(&[f64::NAN]).is_none());
    }
}
