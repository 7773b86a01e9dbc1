//! The sweep file: parsing, validation and expansion into jobs (format in the module doc of
//! [`crate::sweep`]).
//!
//! Each job's configuration is the base config's TOML value tree with the `[set]` keys and the
//! job's axis values written in at their dotted keys, then parsed by the ordinary
//! [`ExperimentConfig`] parser, so every job is checked before anything runs and a bad value
//! gets the usual error (prefixed with the job's name).

use crate::config::ExperimentConfig;
use crate::posterior::PosteriorConfig;
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::path::Path;
use toml::{Table, Value};

/// The one key whose values may be given as a posterior SPEC string (`laplace:window=1`).
const POSTERIOR: &str = "model.posterior";

/// Longest job name accepted (it is a folder and a file name).
const MAX_NAME: usize = 200;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SweepFile {
    name: String,
    base: Value,
    #[serde(default)]
    set: Table,
    axes: Table,
    #[serde(default)]
    exclude: Vec<Table>,
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

/// One training job: a point of the grid.
#[derive(Clone, Debug)]
pub struct Job {
    /// `short=label` pairs in axis order, joined by commas; also the run name.
    pub name: String,
    /// The validated configuration (`name` is the job name).
    pub config: ExperimentConfig,
}

/// An expanded sweep.
#[derive(Clone, Debug)]
pub struct Sweep {
    pub name: String,
    pub axes: Vec<Axis>,
    /// Jobs in grid order (the first axis varies slowest).
    pub jobs: Vec<Job>,
    /// Grid points dropped by `[[exclude]]` rules.
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
        let mut set = vec![];
        for (key, value) in &self.set {
            check_key(key, &known, "[set]")?;
            if self.axes.contains_key(key) {
                bail!("`{key}` is both in [set] and in [axes]; keep one");
            }
            set.push((key.clone(), normalize(key, value)?));
        }
        let axes = self.axes(&known)?;
        let rules = self.exclusions(&axes)?;

        let mut jobs = vec![];
        let mut excluded = 0;
        let mut index = vec![0usize; axes.len()];
        loop {
            if rules.iter().any(|rule| {
                rule.iter()
                    .all(|(a, v)| same(&axes[*a].values[index[*a]], v))
            }) {
                excluded += 1;
            } else {
                jobs.push(job(&base, &set, &axes, &index)?);
            }
            // Odometer: the last axis varies fastest.
            let Some(a) = (0..axes.len())
                .rev()
                .find(|&a| index[a] + 1 < axes[a].values.len())
            else {
                break;
            };
            index[a] += 1;
            index[a + 1..].iter_mut().for_each(|i| *i = 0);
        }
        if jobs.is_empty() {
            bail!("every combination of the axes is excluded by an [[exclude]] rule");
        }
        Ok(Sweep {
            name: self.name,
            axes,
            jobs,
            excluded,
        })
    }

    fn axes(&self, known: &[String]) -> Result<Vec<Axis>> {
        if self.axes.is_empty() {
            bail!("[axes] is empty; give at least one axis, e.g. `seed = {{ range = [0, 4] }}`");
        }
        let mut axes = vec![];
        for (key, spec) in &self.axes {
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

    /// Each `[[exclude]]` rule as (axis index, value) pairs, checked against the axes.
    fn exclusions(&self, axes: &[Axis]) -> Result<Vec<Vec<(usize, Value)>>> {
        let axis_keys = || {
            axes.iter()
                .map(|a| a.key.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut rules = vec![];
        for (i, rule) in self.exclude.iter().enumerate() {
            let n = i + 1;
            if rule.is_empty() {
                bail!("[[exclude]] rule {n} is empty; give axis keys and the values to drop");
            }
            let mut pairs = vec![];
            for (key, value) in rule {
                let Some(a) = axes.iter().position(|a| &a.key == key) else {
                    bail!(
                        "[[exclude]] rule {n}: `{key}` is not an axis; allowed keys: {}",
                        axis_keys()
                    );
                };
                let v = normalize(key, value)?;
                if !axes[a].values.iter().any(|w| same(w, &v)) {
                    bail!(
                        "[[exclude]] rule {n}: `{key}` = {value} is not one of the axis values; allowed values: {}",
                        axes[a]
                            .values
                            .iter()
                            .map(|w| w.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
                pairs.push((a, v));
            }
            rules.push(pairs);
        }
        Ok(rules)
    }
}

/// Builds and validates the job at grid point `index`: the `[set]` and axis values are written
/// into the base, whole tables before the keys inside them (so `model.posterior.jitter` applies
/// to every posterior of a `model.posterior` axis).
fn job(base: &Table, set: &[(String, Value)], axes: &[Axis], index: &[usize]) -> Result<Job> {
    let name = axes
        .iter()
        .zip(index)
        .map(|(a, &i)| format!("{}={}", a.short, a.labels[i]))
        .collect::<Vec<_>>()
        .join(",");
    if name.len() > MAX_NAME {
        bail!(
            "job name `{name}` is longer than {MAX_NAME} characters; use fewer axes or shorter values"
        );
    }
    let mut assignments: Vec<(&str, &Value)> = set.iter().map(|(k, v)| (k.as_str(), v)).collect();
    assignments.extend(
        axes.iter()
            .zip(index)
            .map(|(a, &i)| (a.key.as_str(), &a.values[i])),
    );
    assignments.sort_by_key(|(k, _)| k.matches('.').count());
    let mut table = base.clone();
    for (key, value) in assignments {
        set_dotted(&mut table, key, value.clone())?;
    }
    table.insert("name".into(), Value::String(name.clone()));
    let text = toml::to_string(&table).context("serialising a job config")?;
    let config = ExperimentConfig::from_toml_str(&text, &format!("(sweep job `{name}`)"))?;
    Ok(Job { name, config })
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
    let cfg = ExperimentConfig::from_toml_str(
        "name = \"x\"\ntask = \"regression\"\n[model.posterior]\nfamily = \"laplace\"\n",
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
