//! Targets: a bound on one metric at one x that every seed of a group should meet
//! (`lvrnn report DIR --targets FILE`).
//!
//! A targets file holds `[[target]]` tables (a sweep file's own keys are ignored, so a sweep
//! file with targets can be passed as is):
//!
//! ```toml
//! [[target]]
//! section = "gridworld"          # optional: regression, bandit or gridworld
//! metric = "cum_return"          # a metric of summary.csv
//! t = 100                        # its x: t (bandit, gridworld) or points (regression)
//! at_least = 34.0                # or at_most = 4.2: exactly one of the two
//! groups = ["rnn", "vrnn-diag"]  # model labels; `*` stands for any run of characters
//! ```
//!
//! Each agent group (reference policies excluded) takes the first target, in file order, whose
//! `section` (if given) is the group's, whose metric the section has, and one of whose `groups`
//! patterns matches the group's whole `model` label: `rnn` matches the RNN only, not
//! `vrnn-full` nor `laplace-sigma-k1-full (post-hoc on rnn)`; `*post-hoc on rnn*` matches
//! every post-hoc posterior of an RNN; `*` matches every group. The per-seed values are those
//! of [`super::aggregate`] (each seed's mean over its test tasks).

use super::aggregate::{Aggregate, GroupKey};
use super::collect::{Provenance, Section};
use anyhow::{Context, Result, bail};
use std::collections::BTreeSet;
use std::path::Path;
use toml::Value;

/// Keys of a `[[target]]` table.
const TARGET_KEYS: [&str; 6] = ["section", "metric", "t", "at_least", "at_most", "groups"];

/// Top-level keys of a sweep file, ignored in a targets file.
const SWEEP_KEYS: [&str; 6] = ["name", "base", "set", "axes", "exclude", "stage"];

/// The metrics a target may name (those of summary.csv, without the training curves).
pub const METRICS: [&str; 11] = [
    "cum_return",
    "cum_regret",
    "return",
    "final_regret",
    "reward",
    "entropy",
    "kl",
    "ce",
    "cover50",
    "cover90",
    "cover99",
];

const SECTIONS: [Section; 3] = [Section::Regression, Section::Bandit, Section::Gridworld];

/// Every seed's value must be at least / at most the number.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bound {
    AtLeast(f64),
    AtMost(f64),
}

impl Bound {
    pub fn meets(self, v: f64) -> bool {
        match self {
            Self::AtLeast(b) => v >= b,
            Self::AtMost(b) => v <= b,
        }
    }

    /// How far a value is on the wrong side of the bound (0 where it meets it).
    pub fn distance(self, v: f64) -> f64 {
        match self {
            Self::AtLeast(b) => (b - v).max(0.0),
            Self::AtMost(b) => (v - b).max(0.0),
        }
    }

    /// `≥ 34` / `≤ 4.2`.
    pub fn text(self) -> String {
        match self {
            Self::AtLeast(b) => format!("≥ {b}"),
            Self::AtMost(b) => format!("≤ {b}"),
        }
    }

    /// (`at_least` | `at_most`, the number), as in the file.
    pub fn parts(self) -> (&'static str, f64) {
        match self {
            Self::AtLeast(b) => ("at_least", b),
            Self::AtMost(b) => ("at_most", b),
        }
    }
}

/// One `[[target]]` table.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub section: Option<Section>,
    pub metric: String,
    /// The x of the metric (t, or points for regression).
    pub x: usize,
    pub bound: Bound,
    /// Patterns on the group's `model` label (`*`: any run of characters).
    pub groups: Vec<String>,
}

impl Target {
    /// Whether the target names a group of `section` with this `model` label (its section,
    /// if given, and one of its patterns).
    pub fn matches(&self, section: Section, model: &str) -> bool {
        self.section.is_none_or(|s| s == section)
            && self.groups.iter().any(|p| glob_match(p, model))
    }
}

/// Whether `pattern` matches all of `text`, `*` standing for any run of characters.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// Reads the `[[target]]` tables of a file.
pub fn load_targets(path: &Path) -> Result<Vec<Target>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--targets: reading {}", path.display()))?;
    parse_targets(&text).with_context(|| format!("--targets {}", path.display()))
}

/// Parses the `[[target]]` tables of a targets (or sweep) file; every error names the key and
/// the allowed keys or values.
pub fn parse_targets(text: &str) -> Result<Vec<Target>> {
    let table: toml::Table = toml::from_str(text).context("not a TOML file")?;
    for k in table.keys() {
        if k != "target" && !SWEEP_KEYS.contains(&k.as_str()) {
            bail!(
                "unknown key `{k}`; allowed keys: target (the [[target]] tables), or a sweep \
                 file's {} (ignored)",
                SWEEP_KEYS.join(", ")
            );
        }
    }
    let Some(list) = table.get("target") else {
        bail!(
            "no [[target]] table (keys of each: {})",
            TARGET_KEYS.join(", ")
        );
    };
    let Some(list) = list.as_array() else {
        bail!("`target` must be an array of tables, written [[target]]");
    };
    if list.is_empty() {
        bail!(
            "no [[target]] table (keys of each: {})",
            TARGET_KEYS.join(", ")
        );
    }
    list.iter()
        .enumerate()
        .map(|(i, v)| parse_target(v).with_context(|| format!("[[target]] {}", i + 1)))
        .collect()
}

fn parse_target(v: &Value) -> Result<Target> {
    let Some(t) = v.as_table() else {
        bail!("must be a table, written [[target]]");
    };
    for k in t.keys() {
        if !TARGET_KEYS.contains(&k.as_str()) {
            bail!(
                "unknown key `{k}`; allowed keys: {}",
                TARGET_KEYS.join(", ")
            );
        }
    }
    let section = match t.get("section") {
        None => None,
        Some(s) => {
            let name = s.as_str().unwrap_or_default();
            let allowed = SECTIONS.map(Section::as_str);
            match SECTIONS.iter().find(|x| x.as_str() == name) {
                Some(x) => Some(*x),
                None => bail!(
                    "`section` = {s} is not a section; allowed values: {}",
                    allowed.join(", ")
                ),
            }
        }
    };
    let metric = match t.get("metric") {
        Some(Value::String(m)) if METRICS.contains(&m.as_str()) => m.clone(),
        Some(m) => bail!(
            "`metric` = {m} is not a metric of the report; allowed values: {}",
            METRICS.join(", ")
        ),
        None => bail!("`metric` missing; allowed values: {}", METRICS.join(", ")),
    };
    let x = match t.get("t") {
        Some(Value::Integer(x)) if *x >= 0 => *x as usize,
        Some(x) => bail!("`t` = {x} must be an integer >= 0 (t, or points for regression)"),
        None => bail!("`t` missing: the x of the metric (t, or points for regression)"),
    };
    let number = |key: &str| -> Result<Option<f64>> {
        match t.get(key) {
            None => Ok(None),
            Some(Value::Float(f)) if f.is_finite() => Ok(Some(*f)),
            Some(Value::Integer(i)) => Ok(Some(*i as f64)),
            Some(v) => bail!("`{key}` = {v} must be a finite number"),
        }
    };
    let bound = match (number("at_least")?, number("at_most")?) {
        (Some(b), None) => Bound::AtLeast(b),
        (None, Some(b)) => Bound::AtMost(b),
        (Some(_), Some(_)) => bail!(
            "both `at_least` and `at_most`; give exactly one (at_least = B: every seed >= B; \
             at_most = B: every seed <= B)"
        ),
        (None, None) => bail!(
            "neither `at_least` nor `at_most`; give exactly one (at_least = B: every seed >= B; \
             at_most = B: every seed <= B)"
        ),
    };
    let groups: Vec<String> = match t.get("groups") {
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .map(|p| match p.as_str() {
                Some(s) if !s.is_empty() => Ok(s.to_string()),
                _ => bail!("`groups`: {p} is not a non-empty string (a model label, `*` = any run of characters)"),
            })
            .collect::<Result<_>>()?,
        Some(v) => bail!(
            "`groups` = {v} must be a non-empty list of model labels (`*` = any run of characters, \
             \"*\" = every group)"
        ),
        None => bail!(
            "`groups` missing: a list of model labels (`*` = any run of characters, \"*\" = every group)"
        ),
    };
    Ok(Target {
        section,
        metric,
        x,
        bound,
        groups,
    })
}

/// One group under its target.
#[derive(Clone, Debug)]
pub struct Outcome<'a> {
    /// Index into the targets.
    pub target: usize,
    pub group: &'a GroupKey,
    /// (seed, value at x) of every seed with a value; empty when the group has none at x.
    pub seeds: Vec<(u64, f64)>,
}

impl Outcome<'_> {
    /// Seeds meeting the bound.
    pub fn meeting(&self, targets: &[Target]) -> usize {
        let b = targets[self.target].bound;
        self.seeds.iter().filter(|(_, v)| b.meets(*v)).count()
    }
}

/// Each agent group under the first target that applies to it (in the order of the targets,
/// then of the groups), and the targets that apply to no group.
pub fn evaluate<'a>(agg: &'a Aggregate, targets: &[Target]) -> (Vec<Outcome<'a>>, Vec<usize>) {
    let groups: BTreeSet<&GroupKey> = agg
        .rows
        .iter()
        .map(|r| &r.group)
        .filter(|g| g.provenance != Provenance::Reference)
        .collect();
    let has_metric = |s: Section, m: &str| {
        agg.rows
            .iter()
            .any(|r| r.group.section == s && r.metric == m)
    };
    let mut out = vec![];
    for g in groups {
        let Some(i) = targets
            .iter()
            .position(|t| t.matches(g.section, &g.model) && has_metric(g.section, &t.metric))
        else {
            continue;
        };
        let t = &targets[i];
        let seeds = agg
            .get(g, &t.metric, t.x)
            .map(|r| {
                r.seeds
                    .iter()
                    .copied()
                    .zip(r.per_seed.iter().copied())
                    .collect()
            })
            .unwrap_or_default();
        out.push(Outcome {
            target: i,
            group: g,
            seeds,
        });
    }
    out.sort_by_key(|o| o.target);
    let unused = (0..targets.len())
        .filter(|i| !out.iter().any(|o| o.target == *i))
        .collect();
    (out, unused)
}
