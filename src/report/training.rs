//! Training curves from a run's `metrics/train.jsonl`: every metric the update loop logs
//! (loss, KL, regret, return, gradient norm, …), so that none is left without a figure.

use crate::plot::{LinePlot, Series, grid_plot_noted, line_plot};
use crate::util::read_jsonl;
use anyhow::Result;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Writes the run's training figures into `figures` (PNG + SVG) and returns the PNG paths:
/// - `training`: one panel per logged metric, per update and as a trailing moving average; a
///   metric that kept one value at every update it was logged (e.g. `clip_element_frac` = 0
///   when the element clip never acts) gets no flat panel but a line under the title saying
///   so, with its value;
/// - `training_return` (RL): the mean return per update with the held-out `test_return`.
///
/// Nothing when the log does not exist or holds no update.
pub fn plot_training(train_jsonl: &Path, figures: &Path) -> Result<Vec<PathBuf>> {
    if !train_jsonl.exists() {
        return Ok(vec![]);
    }
    let records: Vec<serde_json::Value> = read_jsonl(train_jsonl)?;
    let curves = metric_curves(&records);
    let mut written = vec![];
    if !curves.is_empty() {
        let (varying, constant) = split_constant(&curves);
        let panels: Vec<LinePlot> = varying
            .iter()
            .map(|(name, (x, y))| {
                let mut plot = LinePlot::new(name.as_str(), "update", name.as_str());
                plot.series = smoothed(x, y);
                plot
            })
            .collect();
        let stem = figures.join("training");
        let title = format!("Training metrics per update ({})", file_label(train_jsonl));
        grid_plot_noted(&stem, &title, &constant_note(&constant), &panels, 3)?;
        written.push(stem.with_extension("png"));
    }
    if let Some((x, y)) = curves.get("return") {
        let mut plot = LinePlot::new("Mean return per task during training", "update", "return");
        plot.series = smoothed(x, y);
        if let Some((tx, ty)) = curves.get("test_return") {
            plot.series
                .push(Series::new("held-out tasks", tx.clone(), ty.clone()));
        }
        let stem = figures.join("training_return");
        line_plot(&stem, &plot)?;
        written.push(stem.with_extension("png"));
    }
    Ok(written)
}

/// Every numeric metric of the log against its update, in name order. Held-out evaluations
/// (`test_…`, `ppo.eval_every`) are logged on the row of update u but measure the parameters
/// after u − 1 updates, so they are placed at u − 1.
fn metric_curves(records: &[serde_json::Value]) -> BTreeMap<String, Curve> {
    let mut curves: BTreeMap<String, Curve> = BTreeMap::new();
    for record in records {
        let (Some(update), Some(fields)) = (
            record.get("update").and_then(|u| u.as_f64()),
            record.as_object(),
        ) else {
            continue;
        };
        for (name, value) in fields {
            let Some(v) = value.as_f64().filter(|_| name != "update") else {
                continue;
            };
            let x = if name.starts_with("test_") {
                update - 1.0
            } else {
                update
            };
            let curve = curves.entry(name.clone()).or_default();
            curve.0.push(x);
            curve.1.push(v);
        }
    }
    curves
}

type Curve = (Vec<f64>, Vec<f64>);

/// The curves that change (their panels) and those that hold one value at two or more updates
/// (name and value, for the note). A metric logged once is a curve of one point, not constant.
fn split_constant(
    curves: &BTreeMap<String, Curve>,
) -> (BTreeMap<&String, &Curve>, Vec<(&String, f64)>) {
    let mut varying = BTreeMap::new();
    let mut constant = vec![];
    for (name, curve) in curves {
        let y = &curve.1;
        if y.len() >= 2 && y.iter().all(|v| *v == y[0]) {
            constant.push((name, y[0]));
        } else {
            varying.insert(name, curve);
        }
    }
    (varying, constant)
}

/// "constant at every update: clip_element_frac = 0, lr = 0.001", or nothing.
fn constant_note(constant: &[(&String, f64)]) -> String {
    if constant.is_empty() {
        return String::new();
    }
    let list: Vec<String> = constant.iter().map(|(n, v)| format!("{n} = {v}")).collect();
    format!("constant at every update: {}", list.join(", "))
}

/// The values per update and their trailing moving average over ~2% of the updates.
fn smoothed(x: &[f64], y: &[f64]) -> Vec<Series> {
    let window = (x.len() / 50).max(1);
    let average: Vec<f64> = (0..y.len())
        .map(|i| {
            let lo = (i + 1).saturating_sub(window);
            y[lo..=i].iter().sum::<f64>() / (i + 1 - lo) as f64
        })
        .collect();
    let mut series = vec![Series::new("per update", x.to_vec(), y.to_vec())];
    if window > 1 {
        series.push(Series::new(
            format!("moving average ({window} updates)"),
            x.to_vec(),
            average,
        ));
    }
    series
}

/// The run folder's name for a figure title (`runs/NAME/metrics/train.jsonl` → NAME).
fn file_label(train_jsonl: &Path) -> String {
    train_jsonl
        .parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .map_or_else(
            || train_jsonl.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_logged_metric_gets_a_curve_and_held_out_values_sit_one_update_earlier() {
        let records: Vec<serde_json::Value> = [
            r#"{"update": 1, "loss": 2.0, "regret": 20.0}"#,
            r#"{"update": 2, "loss": 1.5, "regret": 18.0, "test_return": 7.0, "note": "x"}"#,
            r#"{"update": 3, "loss": 1.0, "kl": 0.5}"#,
        ]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
        let curves = metric_curves(&records);
        let names: Vec<&str> = curves.keys().map(String::as_str).collect();
        assert_eq!(names, ["kl", "loss", "regret", "test_return"]);
        assert_eq!(curves["loss"], (vec![1.0, 2.0, 3.0], vec![2.0, 1.5, 1.0]));
        assert_eq!(curves["regret"], (vec![1.0, 2.0], vec![20.0, 18.0]));
        assert_eq!(curves["test_return"], (vec![1.0], vec![7.0]));
        assert_eq!(curves["kl"], (vec![3.0], vec![0.5]));
    }

    #[test]
    fn a_metric_with_one_value_throughout_is_named_in_the_note_not_given_a_panel() {
        let curves = BTreeMap::from([
            (
                "clip".to_string(),
                (vec![1.0, 2.0, 3.0], vec![0.0, 0.0, 0.0]),
            ),
            (
                "loss".to_string(),
                (vec![1.0, 2.0, 3.0], vec![2.0, 1.5, 1.5]),
            ),
            ("once".to_string(), (vec![3.0], vec![7.0])),
            ("lr".to_string(), (vec![1.0, 2.0], vec![1e-3, 1e-3])),
        ]);
        let (varying, constant) = split_constant(&curves);
        let names: Vec<&str> = varying.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["loss", "once"]);
        assert_eq!(
            constant_note(&constant),
            "constant at every update: clip = 0, lr = 0.001"
        );
        assert_eq!(constant_note(&[]), "");
    }

    #[test]
    fn the_moving_average_trails_over_two_percent_of_the_updates() {
        let x: Vec<f64> = (1..=100).map(f64::from).collect();
        let y: Vec<f64> = (1..=100).map(f64::from).collect();
        let series = smoothed(&x, &y);
        // Window 2: the mean of this update and the one before.
        assert_eq!(series[1].y[0], 1.0);
        assert_eq!(series[1].y[99], 99.5);
        // Too few updates for an average: the raw curve only.
        assert_eq!(smoothed(&x[..10], &y[..10]).len(), 1);
    }

    #[test]
    fn figures_are_written_for_a_log_and_nothing_for_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = dir.path().join("run/metrics");
        let figures = dir.path().join("run/figures");
        std::fs::create_dir_all(&metrics).unwrap();
        std::fs::create_dir_all(&figures).unwrap();
        let log = metrics.join("train.jsonl");
        let rows: String = (1..=5)
            .map(|u| {
                format!(
                    "{{\"update\": {u}, \"loss\": {}, \"return\": {u}}}\n",
                    1.0 / u as f64
                )
            })
            .collect();
        std::fs::write(&log, rows).unwrap();
        let written = plot_training(&log, &figures).unwrap();
        assert_eq!(
            written,
            [
                figures.join("training.png"),
                figures.join("training_return.png")
            ]
        );
        for f in ["training.png", "training.svg", "training_return.svg"] {
            assert!(std::fs::metadata(figures.join(f)).unwrap().len() > 0, "{f}");
        }
        assert!(
            plot_training(&metrics.join("absent.jsonl"), &figures)
                .unwrap()
                .is_empty()
        );
    }
}
