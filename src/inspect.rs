//! `lvrnn inspect`: the posterior a checkpoint gives along a given history, step by step, as
//! JSON lines (mean, precision for the Laplace VRNN or covariance for the VRNN, entropy, KL).

use crate::agent::model::load_under;
use crate::agent::regression::RegressionModel;
use crate::agent::rl::RlModel;
use crate::agent::{Core, CoreState};
use crate::config::Task;
use crate::envs::EnvKind;
use crate::posterior::{Covariance, Gaussian, PosteriorConfig};
use anyhow::{Context, Result, bail};
use candle_core::Tensor;
use serde_json::json;
use std::path::Path;

/// Reads a CSV of numbers with `columns` columns per row; a first non-blank row that does not
/// parse as numbers is taken as a header. Blank lines are skipped. Every value must be finite:
/// a NaN or infinity is refused with its line (1-based, counting every line of the file) and
/// column (1-based, with the header's name where there is one).
pub fn read_history(path: &Path, columns: usize) -> Result<Vec<Vec<f32>>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading history {}", path.display()))?;
    let mut rows = vec![];
    let mut header: Option<Vec<String>> = None;
    let mut first = true;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let is_first = std::mem::replace(&mut first, false);
        let parsed: Result<Vec<f32>, _> =
            line.split(',').map(|f| f.trim().parse::<f32>()).collect();
        let v = match parsed {
            Ok(v) if v.len() == columns => v,
            Ok(v) => bail!(
                "{}:{}: expected {columns} columns, found {}",
                path.display(),
                i + 1,
                v.len()
            ),
            Err(_) if is_first => {
                header = Some(line.split(',').map(|f| f.trim().to_string()).collect());
                continue;
            }
            Err(_) => {
                let (j, bad) = line
                    .split(',')
                    .map(str::trim)
                    .enumerate()
                    .find(|(_, f)| f.parse::<f32>().is_err())
                    .unwrap_or((0, ""));
                bail!(
                    "{}: line {}, column {}{}: `{}` is not a number",
                    path.display(),
                    i + 1,
                    j + 1,
                    column_name(&header, j),
                    crate::util::excerpt(bad)
                )
            }
        };
        if let Some(j) = v.iter().position(|x| !x.is_finite()) {
            bail!(
                "{}: line {}, column {}{}: {} is not a finite number; every history value must be finite (replace it with a number or drop the row)",
                path.display(),
                i + 1,
                j + 1,
                column_name(&header, j),
                crate::util::excerpt(line.split(',').nth(j).unwrap_or_default().trim())
            );
        }
        rows.push(v);
    }
    if rows.is_empty() {
        bail!(
            "{} holds no rows{}: a history needs at least one step",
            path.display(),
            if header.is_some() {
                " after its header"
            } else {
                ""
            }
        );
    }
    Ok(rows)
}

/// ` (`name`)` for column `j` of a history with a header, else nothing.
fn column_name(header: &Option<Vec<String>>, j: usize) -> String {
    header
        .as_ref()
        .and_then(|h| h.get(j))
        .map(|n| format!(" (`{}`)", crate::util::excerpt(n)))
        .unwrap_or_default()
}

/// The posterior q_t after one step of a history (t = 0: the prior q_0), as plain numbers.
#[derive(Clone, Debug)]
pub struct StepPosterior {
    pub t: usize,
    /// The history row that entered at this step (empty at t = 0).
    pub input: Vec<f32>,
    /// μ_t (n).
    pub mean: Vec<f32>,
    /// Λ_t without jitter, dense n×n row-major (Laplace VRNN).
    pub precision: Option<Vec<f64>>,
    /// Σ_t, dense n×n row-major (VRNN).
    pub covariance: Option<Vec<f64>>,
    /// Differential entropy (None for the point estimate).
    pub entropy: Option<f64>,
    /// KL(q_t ‖ q_{t−1}) (None at t = 0 and for the point estimate).
    pub kl: Option<f32>,
}

impl StepPosterior {
    fn of(t: usize, input: &[f32], q: &Gaussian, kl: Option<&Tensor>) -> Result<Self> {
        let covariance = match &q.cov {
            Covariance::Spectral { .. } => q.covariance_matrix()?.map(|mut c| c.remove(0)),
            _ => None,
        };
        Ok(Self {
            t,
            input: input.to_vec(),
            mean: q.mean.squeeze(0)?.to_vec1()?,
            precision: match &q.cov {
                Covariance::Precision(p) => Some(p.dense(0)),
                _ => None,
            },
            covariance,
            entropy: q.entropy()?.map(|e| e[0]),
            kl: kl.map(|k| k.to_vec1::<f32>().map(|v| v[0])).transpose()?,
        })
    }

    /// The JSON line `lvrnn inspect` prints for this step.
    pub fn json(&self) -> String {
        let n = self.mean.len();
        let rows = |m: &[f64]| -> Vec<Vec<f64>> {
            (0..n).map(|i| m[i * n..(i + 1) * n].to_vec()).collect()
        };
        let mut v = json!({ "mean": self.mean });
        if let Some(p) = &self.precision {
            v["precision"] = json!(rows(p));
        }
        if let Some(c) = &self.covariance {
            v["covariance"] = json!(rows(c));
        }
        v["entropy"] = json!(self.entropy);
        v["t"] = json!(self.t);
        if self.t > 0 {
            v["input"] = json!(self.input);
        }
        v["kl"] = json!(self.kl);
        v.to_string()
    }
}

/// A trained model as a history reader: what `lvrnn inspect` and the Python package's
/// `Model.posterior` need of it (implemented by the regression and the RL model).
pub trait HistoryModel: Send + Sync {
    fn core(&self) -> &Core;
    /// Columns of one history row (regression: x, y; RL: obs…, prev_action, prev_reward).
    fn columns(&self) -> usize;
    /// Checks row t (0-based) of a history and gives the core's embedded inputs for it.
    fn row_inputs(&self, t: usize, row: &[f32]) -> Result<Vec<Tensor>>;
}

/// The posterior along one history, step by step: q_0 (the prior) … q_T.
pub fn trace(model: &dyn HistoryModel, rows: &[Vec<f32>]) -> Result<Vec<StepPosterior>> {
    let prior = model.core().initial(1)?;
    let mut out = vec![StepPosterior::of(0, &[], &prior.q, None)?];
    let feed = |t: usize, _: &CoreState| {
        let row = &rows[t];
        if row.len() != model.columns() {
            bail!(
                "history row {}: {} columns; expected {}",
                t + 1,
                row.len(),
                model.columns()
            );
        }
        if let Some(j) = row.iter().position(|v| !v.is_finite()) {
            bail!(
                "history row {}, column {}: {} is not a finite number (as f32); every history value must be finite",
                t + 1,
                j + 1,
                row[j]
            );
        }
        model.row_inputs(t, row)
    };
    model
        .core()
        .unroll(1, rows.len(), true, feed, |t, step, _| {
            let q = &step.state.q;
            out.push(StepPosterior::of(t + 1, &rows[t], q, step.kl.as_ref())?);
            Ok(())
        })?;
    Ok(out)
}

impl HistoryModel for RegressionModel {
    fn core(&self) -> &Core {
        &self.core
    }
    fn columns(&self) -> usize {
        2
    }
    /// Rows (x, y).
    fn row_inputs(&self, _t: usize, row: &[f32]) -> Result<Vec<Tensor>> {
        self.inputs(&self.embed_scalar(0, &row[..1])?, &row[1..2])
    }
}

/// An RL model with the environment its histories come from (rows are checked against it).
pub struct RlHistory {
    pub model: RlModel,
    pub kind: EnvKind,
}

impl HistoryModel for RlHistory {
    fn core(&self) -> &Core {
        &self.model.core
    }
    fn columns(&self) -> usize {
        self.model.obs_dim + 2
    }
    /// Rows `obs…, prev_action, prev_reward` from the start of a task: the first row's
    /// prev_action is −1 ("none"; its prev_reward is not read), every later row's an action
    /// index. Rows the environment could not have produced (`EnvKind::implausible`) are
    /// refused with their row number.
    fn row_inputs(&self, t: usize, row: &[f32]) -> Result<Vec<Tensor>> {
        let (model, d) = (&self.model, self.model.obs_dim);
        let (a, r) = (row[d], row[d + 1]);
        let prev = if t == 0 {
            if a != -1.0 {
                bail!(
                    "history row 1: prev_action must be -1 (a history starts a task: no action before it), got {a}"
                );
            }
            None
        } else {
            if a.fract() != 0.0 || a < 0.0 || a as usize >= model.num_actions {
                bail!(
                    "history row {}: prev_action {a} is not an action index in 0..{} (-1 is for the first row only)",
                    t + 1,
                    model.num_actions
                );
            }
            Some(a as usize)
        };
        let reward = if t == 0 { 0.0 } else { r };
        if let Some(why) = self.kind.implausible(&row[..d], reward) {
            bail!("history row {}: {why}", t + 1);
        }
        let (acts, rews): (Vec<usize>, Vec<f32>) = (prev.into_iter().collect(), vec![r]);
        let x = model.inputs(&row[..d], prev.map(|_| (&acts[..], &rews[..])))?;
        model.embed_inputs(&x)
    }
}

/// A checkpoint's model as a [`HistoryModel`], under `posterior` (a SPEC; default its own).
pub fn load(checkpoint: &Path, posterior: Option<&str>) -> Result<Box<dyn HistoryModel>> {
    let posterior: Option<PosteriorConfig> = posterior
        .map(|s| s.parse().context("--posterior"))
        .transpose()?;
    let posterior = posterior.as_ref();
    Ok(match crate::run::load_checkpoint(checkpoint)?.config.task {
        Task::Regression => Box::new(load_under::<RegressionModel>(checkpoint, posterior)?.0),
        Task::Bandit | Task::Gridworld => {
            let (model, cfg) = load_under::<RlModel>(checkpoint, posterior)?;
            Box::new(RlHistory {
                model,
                kind: crate::config::env_kind(cfg.task)?,
            })
        }
    })
}
