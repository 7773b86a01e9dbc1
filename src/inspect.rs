//! `lvrnn inspect`: the posterior a checkpoint gives along a given history, step by step, as
//! JSON lines (mean, precision for the Laplace VRNN or covariance for the VRNN, entropy, KL).

use crate::agent::regression::RegressionModel;
use crate::posterior::{Covariance, Gaussian};
use anyhow::{Context, Result, bail};
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

fn gaussian_json(q: &Gaussian) -> Result<serde_json::Value> {
    let mean: Vec<f32> = q.mean.squeeze(0)?.to_vec1()?;
    let mut v = json!({ "mean": mean });
    match &q.cov {
        Covariance::Point => {}
        Covariance::Precision(p) => {
            let n = p.n;
            let d = p.dense(0);
            v["precision"] = json!(
                (0..n)
                    .map(|i| d[i * n..(i + 1) * n].to_vec())
                    .collect::<Vec<_>>()
            );
        }
        Covariance::Spectral { .. } => {
            let c = q.covariance_matrix()?.expect("VRNN has a covariance");
            let n = mean.len();
            v["covariance"] = json!(
                (0..n)
                    .map(|i| c[0][i * n..(i + 1) * n].to_vec())
                    .collect::<Vec<_>>()
            );
        }
    }
    v["entropy"] = json!(q.entropy()?.map(|e| e[0]));
    Ok(v)
}

/// Appends the step's posterior to the trace.
fn push_step(
    out: &mut Vec<String>,
    t: usize,
    row: &[f32],
    step: &crate::agent::CoreStep,
) -> Result<()> {
    let mut v = gaussian_json(&step.state.q)?;
    v["t"] = json!(t);
    v["input"] = json!(row);
    v["kl"] = json!(match &step.kl {
        Some(k) => Some(k.to_vec1::<f32>()?[0]),
        None => None,
    });
    out.push(v.to_string());
    Ok(())
}

fn prior_json(q: &Gaussian) -> Result<String> {
    let mut first = gaussian_json(q)?;
    first["t"] = json!(0);
    first["kl"] = serde_json::Value::Null;
    Ok(first.to_string())
}

/// One JSON object per step for an RL history of `kind`: rows `obs…, prev_action, prev_reward`
/// (obs_dim + 2 columns), from the start of a task: the first row's prev_action is −1 ("none";
/// its prev_reward is not read), every later row's an action index. Rows the environment
/// could not have produced (`EnvKind::implausible`) are refused with their row number.
pub fn rl_trace(
    model: &crate::agent::rl::RlModel,
    kind: crate::envs::EnvKind,
    rows: &[Vec<f32>],
) -> Result<Vec<String>> {
    let mut state = model.core.initial(1)?.detach();
    let mut out = vec![prior_json(&state.q)?];
    let d = model.obs_dim;
    for (t, row) in rows.iter().enumerate() {
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
        if let Some(why) = kind.implausible(&row[..d], reward) {
            bail!("history row {}: {why}", t + 1);
        }
        let (acts, rews): (Vec<usize>, Vec<f32>) = (prev.into_iter().collect(), vec![r]);
        let x = model.inputs(&row[..d], prev.map(|_| (&acts[..], &rews[..])))?;
        let (step, _) = model.observe(&state, &x)?;
        push_step(&mut out, t + 1, row, &step)?;
        state = step.state.detach();
    }
    Ok(out)
}

/// One JSON object per step t = 0 (the prior) … T for a regression history of (x, y) rows.
pub fn regression_trace(model: &RegressionModel, rows: &[Vec<f32>]) -> Result<Vec<String>> {
    let mut state = model.core.initial(1)?.detach();
    let mut out = vec![prior_json(&state.q)?];
    for (t, row) in rows.iter().enumerate() {
        let emb_x = model.embed_scalar(0, &row[..1])?;
        let step = model.observe(&state, &emb_x, &row[1..2])?;
        push_step(&mut out, t + 1, row, &step)?;
        state = step.state.detach();
    }
    Ok(out)
}
