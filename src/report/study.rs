//! `lvrnn report DIR`: the tables (`summary.csv`, `summary.md`), the figures (PNG + SVG) and one
//! `report.md` page that shows the tables and embeds the figures, for every result folder under
//! DIR, grouped by config keys, with 99% t-intervals over seeds (see [`super::aggregate`]).

use super::aggregate::{Aggregate, GroupKey, Interval, Row, aggregate};
use super::collect::{Collection, Provenance, Section, TRAINING_PREFIX, collect};
use super::reference::add_reference_curves;
use super::regression::slug;
use super::targets::{Outcome, Target, evaluate, load_targets};
use crate::plot::{LinePlot, PALETTE, Series, line_plot};
use crate::util::{write_atomic, write_csv_atomic};
use anyhow::{Result, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// What `lvrnn report` was asked for.
#[derive(Clone, Debug)]
pub struct ReportOptions {
    pub dir: PathBuf,
    /// Output folder (default `DIR/report`).
    pub out: Option<PathBuf>,
    /// Grouping config keys (default: those that differ between result folders).
    pub by: Option<Vec<String>>,
    /// A file with `[[target]]` tables (see [`super::targets`]): adds the Targets section to
    /// report.md and summary.md, and targets.csv.
    pub targets: Option<PathBuf>,
}

/// Points (regression) shown in the tables, where present.
const TABLE_POINTS: [usize; 4] = [0, 10, 50, 100];

/// Writes the report; returns the files written (report.md first).
pub fn run_report(opts: &ReportOptions) -> Result<Vec<PathBuf>> {
    let out = opts.out.clone().unwrap_or_else(|| opts.dir.join("report"));
    let targets = opts.targets.as_deref().map(load_targets).transpose()?;
    let mut col = collect(&opts.dir, &out)?;
    if col.folders.is_empty() {
        bail!(
            "lvrnn report: no result folder under `{}` (a folder with config.toml and \
             metrics/eval.csv, metrics/eval_rl.csv + eval_rl_returns.csv, or an `lvrnn eval --out` \
             folder){}",
            opts.dir.display(),
            if col.skipped.is_empty() {
                String::new()
            } else {
                format!("; skipped: {}", skipped_text(&col))
            }
        );
    }
    add_reference_curves(&mut col);
    let agg = aggregate(&col, opts.by.as_deref())?;
    std::fs::create_dir_all(out.join("figures"))?;
    let mut written = vec![];
    written.push(write_summary_csv(&agg, &out)?);
    written.push(write_sources_csv(&col, &out)?);

    let mut tables = String::new();
    let mut page = header(&opts.dir, &col, &agg);
    if let (Some(targets), Some(file)) = (&targets, &opts.targets) {
        let (outcomes, unused) = evaluate(&agg, targets);
        let t = targets_section(&agg, targets, &outcomes, &unused, file);
        let _ = writeln!(tables, "## Targets\n\n{t}");
        let _ = writeln!(page, "## Targets\n\n{t}");
        written.push(write_targets_csv(&agg, targets, &outcomes, &out)?);
    }
    for section in agg.sections() {
        let t = section_tables(&agg, section);
        let figs = section_figures(&agg, section, &out.join("figures"))?;
        let _ = writeln!(tables, "## {}\n\n{t}", title_case(section.as_str()));
        let _ = writeln!(page, "## {}\n\n{t}", title_case(section.as_str()));
        for (stem, caption) in figs {
            let rel = format!("figures/{stem}.png");
            let _ = writeln!(
                page,
                "![{caption}]({rel})\n\n*{caption}* ([SVG](figures/{stem}.svg))\n"
            );
            written.push(out.join(&rel));
        }
    }
    if !col.skipped.is_empty() {
        let _ = writeln!(page, "## Skipped folders\n");
        for s in &col.skipped {
            let _ = writeln!(page, "- `{}`: {}", s.path.display(), s.reason);
        }
        page.push('\n');
    }
    let md = out.join("summary.md");
    write_atomic(&md, tables.as_bytes())?;
    written.push(md);
    let report = out.join("report.md");
    write_atomic(&report, page.as_bytes())?;
    written.insert(0, report);
    Ok(written)
}

fn title_case(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

fn skipped_text(col: &Collection) -> String {
    col.skipped
        .iter()
        .map(|s| format!("{} ({})", s.path.display(), s.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

fn header(dir: &Path, col: &Collection, agg: &Aggregate) -> String {
    let mut s = format!("# lvrnn report: `{}`\n\n", dir.display());
    let _ = writeln!(
        s,
        "{} result folders (listed in [sources.csv](sources.csv)){}. Every number is a mean over \
         seeds of the per-seed mean over that seed's test tasks; ± is the half-width of the **99% \
         t-interval over the per-seed means** (n seeds, n − 1 degrees of freedom: \
         x̄ ± t₀.₉₉₅,ₙ₋₁ · s/√n). A group with one seed has no across-seed interval and says so. \
         Reference policies run on the same test tasks for every seed; their ± is the 99% \
         t-interval over those tasks.\n",
        col.folders.len(),
        if col.skipped.is_empty() {
            String::new()
        } else {
            format!(", {} skipped (see the end)", col.skipped.len())
        }
    );
    let _ = writeln!(
        s,
        "Groups: the `model` label, the provenance (trained / finetuned / post-hoc), the \
         evaluation (`run` = the training run's own evaluation, `eval: <checkpoint>` = an \
         `lvrnn eval` folder), and these config keys:\n"
    );
    for (section, keys) in &agg.by {
        let _ = writeln!(
            s,
            "- {}: {}",
            section.as_str(),
            if keys.is_empty() {
                "(none differ)".to_string()
            } else {
                keys.iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
    }
    s.push_str(
        "\nAll numbers: [summary.csv](summary.csv); tables only: [summary.md](summary.md).\n\n",
    );
    s
}

// ---------------------------------------------------------------------------------------------
// CSV
// ---------------------------------------------------------------------------------------------

fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.6}")
    } else {
        String::new()
    }
}

fn write_summary_csv(agg: &Aggregate, out: &Path) -> Result<PathBuf> {
    let keys: Vec<String> = agg
        .by
        .values()
        .flatten()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut header: Vec<&str> = vec!["section"];
    header.extend(keys.iter().map(String::as_str));
    header.extend([
        "model",
        "provenance",
        "evaluation",
        "metric",
        "x_name",
        "x",
        "n_seeds",
        "tasks_per_seed",
        "mean",
        "ci99_halfwidth",
        "ci99_lower",
        "ci99_upper",
        "interval",
        "seeds",
    ]);
    let rows: Vec<Vec<String>> = agg
        .rows
        .iter()
        .map(|r| {
            let g = &r.group;
            let by = &agg.by[&g.section];
            let mut row = vec![g.section.as_str().to_string()];
            for k in &keys {
                row.push(
                    by.iter()
                        .position(|b| b == k)
                        .map(|i| g.values[i].clone())
                        .unwrap_or_default(),
                );
            }
            let h = r.interval.halfwidth();
            let training = r.metric.starts_with(TRAINING_PREFIX);
            row.extend([
                g.model.clone(),
                g.provenance.as_str().to_string(),
                g.evaluation.clone(),
                r.metric.clone(),
                if training {
                    "update".to_string()
                } else {
                    g.section.x_name().to_string()
                },
                r.x.to_string(),
                r.seeds.len().to_string(),
                // Training curves come from the training tasks, not the evaluation's.
                if training {
                    String::new()
                } else {
                    join(&r.tasks)
                },
                num(r.mean),
                h.map_or(String::new(), num),
                h.map_or(String::new(), |h| num(r.mean - h)),
                h.map_or(String::new(), |h| num(r.mean + h)),
                r.interval.method().to_string(),
                join(&r.seeds),
            ]);
            row
        })
        .collect();
    let path = out.join("summary.csv");
    write_csv_atomic(&path, &header, &rows)?;
    Ok(path)
}

/// targets.csv: one row per group under a target × seed (a group without a value at the
/// target's x: one row, seed and value empty).
fn write_targets_csv(
    agg: &Aggregate,
    targets: &[Target],
    outcomes: &[Outcome],
    out: &Path,
) -> Result<PathBuf> {
    let header = [
        "target",
        "section",
        "group",
        "model",
        "provenance",
        "evaluation",
        "metric",
        "x_name",
        "x",
        "bound",
        "bound_value",
        "seed",
        "value",
        "meets",
        "distance_to_bound",
        "seeds_meeting",
        "n_seeds",
    ];
    let mut rows = vec![];
    for o in outcomes {
        let t = &targets[o.target];
        let g = o.group;
        let (kind, b) = t.bound.parts();
        let common = vec![
            (o.target + 1).to_string(),
            g.section.as_str().to_string(),
            agg.label(g),
            g.model.clone(),
            g.provenance.as_str().to_string(),
            g.evaluation.clone(),
            t.metric.clone(),
            g.section.x_name().to_string(),
            t.x.to_string(),
            kind.to_string(),
            b.to_string(),
        ];
        let counts = [o.meeting(targets).to_string(), o.seeds.len().to_string()];
        let seeds: Vec<Option<(u64, f64)>> = if o.seeds.is_empty() {
            vec![None]
        } else {
            o.seeds.iter().copied().map(Some).collect()
        };
        for s in seeds {
            let mut row = common.clone();
            match s {
                Some((seed, v)) => row.extend([
                    seed.to_string(),
                    num(v),
                    t.bound.meets(v).to_string(),
                    if t.bound.meets(v) {
                        String::new()
                    } else {
                        num(t.bound.distance(v))
                    },
                ]),
                None => row.extend([String::new(), String::new(), "false".into(), String::new()]),
            }
            row.extend(counts.clone());
            rows.push(row);
        }
    }
    let path = out.join("targets.csv");
    write_csv_atomic(&path, &header, &rows)?;
    Ok(path)
}

fn join<T: ToString>(xs: &[T]) -> String {
    xs.iter().map(T::to_string).collect::<Vec<_>>().join(";")
}

fn write_sources_csv(col: &Collection, out: &Path) -> Result<PathBuf> {
    let rows: Vec<Vec<String>> = col
        .folders
        .iter()
        .map(|f| {
            vec![
                f.path.display().to_string(),
                f.section.as_str().into(),
                f.seed.to_string(),
                f.evaluation.clone(),
                f.finetuned.to_string(),
                f.tasks.to_string(),
                f.keys.get("model.posterior").cloned().unwrap_or_default(),
            ]
        })
        .collect();
    let path = out.join("sources.csv");
    write_csv_atomic(
        &path,
        &[
            "folder",
            "section",
            "seed",
            "evaluation",
            "finetuned",
            "tasks",
            "model.posterior",
        ],
        &rows,
    )?;
    Ok(path)
}

// ---------------------------------------------------------------------------------------------
// Markdown tables
// ---------------------------------------------------------------------------------------------

fn cell(r: Option<&Row>) -> String {
    match r {
        None => "–".into(),
        Some(r) => match r.interval {
            Interval::OneSeed => format!("{:.3} (1 seed)", r.mean),
            _ => format!(
                "{:.3} ± {:.3}",
                r.mean,
                r.interval.halfwidth().unwrap_or(f64::NAN)
            ),
        },
    }
}

/// Seeds and tasks of a group's rows: "2", "8".
fn counts(rows: &[&Row]) -> (String, String) {
    let seeds: BTreeSet<usize> = rows.iter().map(|r| r.seeds.len()).collect();
    let tasks: BTreeSet<usize> = rows.iter().flat_map(|r| r.tasks.clone()).collect();
    (range_text(&seeds), range_text(&tasks))
}

fn range_text(xs: &BTreeSet<usize>) -> String {
    match (xs.first(), xs.last()) {
        (Some(a), Some(b)) if a == b => a.to_string(),
        (Some(a), Some(b)) => format!("{a}–{b}"),
        _ => "0".into(),
    }
}

/// The table x values of a section: regression points, RL checkpoints of t.
fn table_xs(agg: &Aggregate, section: Section, metric: &str) -> Vec<usize> {
    let present: BTreeSet<usize> = agg
        .rows
        .iter()
        .filter(|r| r.group.section == section && r.metric == metric)
        .map(|r| r.x)
        .collect();
    let wanted: Vec<usize> = match section {
        Section::Regression => TABLE_POINTS.to_vec(),
        Section::Bandit => vec![10, 25, 50],
        Section::Gridworld => vec![25, 50, 100],
    };
    let xs: Vec<usize> = wanted.into_iter().filter(|x| present.contains(x)).collect();
    if xs.is_empty() {
        present.last().map(|x| vec![*x]).unwrap_or_default()
    } else {
        xs
    }
}

fn section_tables(agg: &Aggregate, section: Section) -> String {
    let mut s = String::new();
    let metrics: Vec<(&str, &str)> = match section {
        Section::Regression => vec![
            ("ce", "Predictive cross-entropy [nats]"),
            ("entropy", "Posterior entropy [nats]"),
            ("kl", "KL between consecutive posteriors [nats]"),
            (
                "cover90",
                "Coverage of the 90% credible interval (nominal 0.9)",
            ),
        ],
        _ => vec![
            ("cum_return", "Return through t"),
            ("cum_regret", "Cumulative regret through t"),
            (
                "entropy_belief_corr",
                "Posterior against the exact belief: correlation over test tasks of H[q_t] with \
                 the exact belief's uncertainty (gridworld ln |C_t|, bandit Σ_k Var[p_k]), \
                 averaged over the t where it is defined (listed at t = T)",
            ),
            (
                "entropy_drop_corr",
                "The same correlation for the drops H_1 − H_t and U_1 − U_t (listed at t = T)",
            ),
            (
                "entropy",
                "Posterior entropy H[q_t] [nats], beside the exact belief's uncertainty below",
            ),
            ("exact_entropy", "Exact belief entropy ln |C_t| [nats]"),
            (
                "exact_var",
                "Exact posterior total variance Σ_k Var[p_k | data] (particles)",
            ),
            (
                "ess",
                "Effective sample size 1/Σw² of the exact posterior's particles",
            ),
            (
                "reward_kl_exact",
                "Mean Bernoulli KL from the exact posterior mean to the reward head [nats]",
            ),
            (
                "reward_kl_exact_tmean",
                "Reward-head KL to the exact posterior mean, averaged over t (listed at t = T)",
            ),
            (
                "reward_brier_tmean",
                "Brier score of the reward head on the pulled arm, averaged over t (listed at t = T)",
            ),
            (
                "reward_brier_exact_tmean",
                "Brier score of the exact posterior mean on the same pulls, averaged over t \
                 (listed at t = T)",
            ),
        ],
    };
    // The RL posterior entropy is tabled beside the exact belief only (its figure has it).
    let scored = ["exact_entropy", "exact_var"]
        .iter()
        .any(|m| !agg.curves(section, m).is_empty());
    for (metric, title) in metrics {
        if section != Section::Regression && metric == "entropy" && !scored {
            continue;
        }
        let xs = table_xs(agg, section, metric);
        let curves = agg.curves(section, metric);
        if curves.is_empty() {
            continue;
        }
        let _ = writeln!(
            s,
            "**{title}** — mean ± 99% t-interval over seeds ({} = {}):\n",
            section.x_name(),
            xs.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = write!(s, "| group | provenance | seeds | tasks/seed |");
        for x in &xs {
            let _ = write!(s, " {} = {x} |", section.x_name());
        }
        let _ = write!(s, "\n|---|---|---|---|");
        for _ in &xs {
            s.push_str("---|");
        }
        s.push('\n');
        // Agents first, reference policies after them.
        let mut ordered = curves;
        ordered.sort_by_key(|(g, _)| g.provenance == Provenance::Reference);
        for (g, rows) in ordered {
            let (seeds, tasks) = counts(&rows);
            let seeds = if g.provenance == Provenance::Reference {
                "same tasks".to_string()
            } else {
                seeds
            };
            let _ = write!(
                s,
                "| {} | {} | {seeds} | {tasks} |",
                md_escape(&agg.label(g)),
                g.provenance.as_str()
            );
            for x in &xs {
                let _ = write!(s, " {} |", cell(agg.get(g, metric, *x)));
            }
            s.push('\n');
        }
        s.push('\n');
    }
    s
}

/// The Targets section: per target, one row per group with every seed's value, the bound,
/// `k / n` seeds meeting it and each failing seed's distance to it.
fn targets_section(
    agg: &Aggregate,
    targets: &[Target],
    outcomes: &[Outcome],
    unused: &[usize],
    file: &Path,
) -> String {
    let mut s = format!(
        "From `{}`. Each group takes the first target whose `groups` patterns match its \
         `model` label (`*` = any run of characters) in its section; reference policies are \
         not judged. A seed's value is its mean over its test tasks, as in the tables; ✗ marks \
         a seed that misses the bound, and `k / n` counts the seeds meeting it among the n \
         seeds with a value (– : no value for that seed). All rows: \
         [targets.csv](targets.csv).\n\n",
        file.display()
    );
    for (i, t) in targets.iter().enumerate() {
        let mine: Vec<&Outcome> = outcomes.iter().filter(|o| o.target == i).collect();
        let x_name = mine
            .first()
            .map(|o| o.group.section)
            .or(t.section)
            .map_or("t", Section::x_name);
        let _ = writeln!(
            s,
            "**Target {}**: `{}` at {x_name} = {} {}{} (groups: {}).\n",
            i + 1,
            t.metric,
            t.x,
            t.bound.text(),
            t.section
                .map_or(String::new(), |sec| format!(", {}", sec.as_str())),
            t.groups
                .iter()
                .map(|g| format!("`{g}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if unused.contains(&i) {
            s.push_str("No group of this report takes this target.\n\n");
            continue;
        }
        let seeds: BTreeSet<u64> = mine
            .iter()
            .flat_map(|o| o.seeds.iter().map(|(seed, _)| *seed))
            .collect();
        let _ = write!(s, "| group | provenance | bound |");
        for seed in &seeds {
            let _ = write!(s, " seed {seed} |");
        }
        s.push_str(
            " seeds meeting the target | failing seeds: distance to the bound |\n|---|---|---|",
        );
        for _ in &seeds {
            s.push_str("---|");
        }
        s.push_str("---|---|\n");
        for o in mine {
            let _ = write!(
                s,
                "| {} | {} | {} |",
                md_escape(&agg.label(o.group)),
                o.group.provenance.as_str(),
                t.bound.text()
            );
            for seed in &seeds {
                let cell = match o.seeds.iter().find(|(x, _)| x == seed) {
                    None => "–".to_string(),
                    Some((_, v)) if t.bound.meets(*v) => format!("{v:.3}"),
                    Some((_, v)) => format!("{v:.3} ✗"),
                };
                let _ = write!(s, " {cell} |");
            }
            let failing: Vec<String> = o
                .seeds
                .iter()
                .filter(|(_, v)| !t.bound.meets(*v))
                .map(|(seed, v)| format!("seed {seed}: {:.3}", t.bound.distance(*v)))
                .collect();
            let failing = if o.seeds.is_empty() {
                format!("no value at {x_name} = {}", t.x)
            } else if failing.is_empty() {
                "–".to_string()
            } else {
                failing.join(", ")
            };
            let _ = writeln!(
                s,
                " {} / {} | {failing} |",
                o.meeting(targets),
                o.seeds.len()
            );
        }
        s.push('\n');
    }
    s
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|")
}

// ---------------------------------------------------------------------------------------------
// Figures
// ---------------------------------------------------------------------------------------------

/// "99% t-interval over 2 seeds, 8 tasks each" for the rows drawn (agents only); `short`:
/// "99% t-interval, 2 seeds × 8 tasks" for a figure title.
fn interval_caption(rows: &[&Row]) -> String {
    interval_text(rows, false)
}

fn interval_text(rows: &[&Row], short: bool) -> String {
    let agents: Vec<&Row> = rows
        .iter()
        .copied()
        .filter(|r| r.group.provenance != Provenance::Reference)
        .collect();
    let (seeds, tasks) = counts(&agents);
    if seeds == "1" {
        format!("1 seed: no across-seed interval, {tasks} tasks")
    } else if short {
        format!("99% t-interval, {seeds} seeds × {tasks} tasks")
    } else {
        format!("99% t-interval over {seeds} seeds, {tasks} tasks each")
    }
}

/// One figure per metric against x; returns (stem, caption).
fn curve_figure(
    agg: &Aggregate,
    section: Section,
    metric: &str,
    what: &str,
    ylabel: &str,
    dir: &Path,
) -> Result<Option<(String, String)>> {
    let curves = drawn_curves(agg, section, metric, true);
    if curves.is_empty() {
        return Ok(None);
    }
    let regression = section == Section::Regression;
    let all: Vec<&Row> = curves.iter().flat_map(|(_, r)| r.iter().copied()).collect();
    let caption = format!(
        "{what} ({}): mean over seeds, {}",
        section.as_str(),
        interval_caption(&all)
    );
    let xlabel = if regression {
        "observed points"
    } else {
        "interactions t"
    };
    let title = format!("{what}: {}", interval_text(&all, true));
    let mut plot = LinePlot::new(title, xlabel, ylabel);
    plot.log_x = regression;
    for (g, rows) in &curves {
        // KL needs two posteriors: nothing at 0 points.
        let rows: Vec<&Row> = rows
            .iter()
            .copied()
            .filter(|r| !(metric == "kl" && r.x == 0))
            .collect();
        let x: Vec<f64> = rows
            .iter()
            .map(|r| {
                if regression && r.x == 0 {
                    0.5
                } else {
                    r.x as f64
                }
            })
            .collect();
        let name = agg.label(g);
        let s = if g.provenance == Provenance::Reference {
            Series::new(name, x, rows.iter().map(|r| r.mean).collect()).dashed()
        } else {
            seed_band(name, x, &rows)
        };
        plot.series.push(s);
    }
    let stem = format!("{}-{}", section.as_str(), slug(metric));
    line_plot(&dir.join(&stem), &plot)?;
    Ok(Some((stem, caption)))
}

/// The curves of one section and metric that a figure draws: the comparison the paper makes
/// (see `headline`), each group once (see `drawn_as`), and the reference policies when
/// `references`; every group stays in the tables.
fn drawn_curves<'a>(
    agg: &'a Aggregate,
    section: Section,
    metric: &str,
    references: bool,
) -> Vec<(&'a GroupKey, Vec<&'a Row>)> {
    let mut seen = BTreeSet::new();
    agg.curves(section, metric)
        .into_iter()
        .filter(|(g, _)| (references && g.provenance == Provenance::Reference) || headline(g))
        .filter(|(g, _)| seen.insert(drawn_as(g)))
        .collect()
}

/// A group's means over seeds at `x`, with the across-seed interval as a band where there is
/// one (a single seed has none).
fn seed_band(name: String, x: Vec<f64>, rows: &[&Row]) -> Series {
    let y: Vec<f64> = rows.iter().map(|r| r.mean).collect();
    let h: Vec<f64> = rows
        .iter()
        .map(|r| r.interval.halfwidth().unwrap_or(f64::NAN))
        .collect();
    let series = Series::new(name, x, y);
    if h.iter().all(|v| v.is_nan()) {
        series
    } else {
        series.with_halfwidth(&h)
    }
}

/// `s` with its band cut to [lo, hi] (a correlation's interval over few seeds can pass ±1).
fn clip_band(mut s: Series, lo: f64, hi: f64) -> Series {
    if let Some((lower, upper)) = &mut s.band {
        lower.iter_mut().for_each(|v| *v = v.max(lo));
        upper.iter_mut().for_each(|v| *v = v.min(hi));
    }
    s
}

/// Whether a group is part of the comparison the figures draw: each run's own evaluation (or,
/// for an `lvrnn eval` folder, that of the final model), and post-hoc posteriors of
/// point-estimate networks (`post-hoc on rnn`). Snapshot evaluations and post-hoc variants of
/// Bayesian networks stay in the tables.
fn headline(g: &GroupKey) -> bool {
    let final_model = g.evaluation == "run" || g.evaluation.ends_with("model-final");
    let base_ok = match family(&g.model).1 {
        Some(base) => base == "rnn",
        None => true,
    };
    g.provenance != Provenance::Reference && final_model && base_ok
}

/// What a figure draws a group as: the same numbers can arrive twice (a run's own evaluation
/// and an eval folder of its final model), and the figures keep the first of each (model,
/// provenance, other keys).
fn drawn_as(g: &GroupKey) -> (String, Provenance, Vec<String>) {
    (g.model.clone(), g.provenance, g.values.clone())
}

/// The family of a label: the model without its `(post-hoc on …)` part.
fn family(model: &str) -> (String, Option<String>) {
    match model.split_once(" (post-hoc on ") {
        Some((fam, rest)) => {
            let (base, tail) = rest.split_once(')').unwrap_or((rest, ""));
            (format!("{fam}{tail}"), Some(base.to_string()))
        }
        None => (model.to_string(), None),
    }
}

/// Post hoc vs finetuned vs trained as such: one metric at one x, per family (x axis), one
/// series per provenance, dots with 99% error bars. Only the comparison the paper makes is
/// drawn: each run's own evaluation (or, for an `lvrnn eval` folder, that of the final model),
/// and post-hoc posteriors of point-estimate networks (`post-hoc on rnn`); post-hoc variants of
/// Bayesian networks stay in the tables. Groups that differ only in other keys (e.g. the
/// snapshot a finetuned run started from) are dots side by side in their series.
fn provenance_figure(
    agg: &Aggregate,
    section: Section,
    metric: &str,
    x: usize,
    what: &str,
    dir: &Path,
) -> Result<Option<(String, String)>> {
    let mut seen = BTreeSet::new();
    let rows: Vec<&Row> = agg
        .rows
        .iter()
        .filter(|r| r.group.section == section && r.metric == metric && r.x == x)
        .filter(|r| headline(&r.group))
        .filter(|r| seen.insert(drawn_as(&r.group)))
        .collect();
    if rows.is_empty() {
        return Ok(None);
    }
    let category = |g: &GroupKey| family(&g.model).0;
    let series_name = |g: &GroupKey| match family(&g.model).1 {
        Some(base) if g.provenance == Provenance::PostHoc => format!("post-hoc on {base}"),
        _ => g.provenance.as_str().to_string(),
    };
    let cats: Vec<String> = rows
        .iter()
        .map(|r| category(&r.group))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut by_series: BTreeMap<String, Vec<&Row>> = BTreeMap::new();
    for r in &rows {
        by_series.entry(series_name(&r.group)).or_default().push(r);
    }
    let caption = format!(
        "Post hoc vs finetuned vs trained as such ({}): {what} at {} = {x}, {}",
        section.as_str(),
        section.x_name(),
        interval_caption(&rows)
    );
    let title = format!(
        "By provenance at {} = {x}: {}",
        section.x_name(),
        interval_text(&rows, true)
    );
    let mut plot = LinePlot::new(title, "posterior family", what);
    let n = by_series.len();
    for (i, (name, rs)) in by_series.into_iter().enumerate() {
        let offset = (i as f64 - (n as f64 - 1.0) / 2.0) * 0.12;
        let mut per_cat: BTreeMap<String, usize> = BTreeMap::new();
        let x: Vec<f64> = rs
            .iter()
            .map(|r| {
                let c = category(&r.group);
                let k = per_cat.entry(c.clone()).or_default();
                *k += 1;
                let within = (*k - 1) as f64 * 0.04;
                cats.iter().position(|k| *k == c).unwrap_or(0) as f64 + 1.0 + offset + within
            })
            .collect();
        let y: Vec<f64> = rs.iter().map(|r| r.mean).collect();
        let h: Vec<f64> = rs
            .iter()
            .map(|r| r.interval.halfwidth().unwrap_or(f64::NAN))
            .collect();
        let mut dots = Series::new(name, x, y).with_halfwidth(&h);
        if metric.ends_with("_corr") {
            dots = clip_band(dots, -1.0, 1.0);
        }
        plot.series.push(dots.as_points());
    }
    plot.x_ticks = cats
        .iter()
        .enumerate()
        .map(|(i, c)| ((i + 1) as f64, c.clone()))
        .collect();
    // Room for the outer dots' error bars.
    plot.series.push(Series::new(
        "",
        vec![0.5, cats.len() as f64 + 0.5],
        vec![f64::NAN, f64::NAN],
    ));
    // The first provenance figure of a section keeps its name; others are named by metric.
    let stem = match metric {
        "ce" | "final_regret" => format!("{}-provenance", section.as_str()),
        m => format!("{}-provenance-{}", section.as_str(), slug(m)),
    };
    line_plot(&dir.join(&stem), &plot)?;
    Ok(Some((stem, caption)))
}

/// A training curve of every drawn group over the updates (`collect::TRAINING_PREFIX` rows:
/// one seed's mean per block of updates); returns (stem, caption).
fn training_figure(
    agg: &Aggregate,
    section: Section,
    key: &str,
    what: &str,
    dir: &Path,
) -> Result<Option<(String, String)>> {
    let metric = format!("{TRAINING_PREFIX}{key}");
    let curves = drawn_curves(agg, section, &metric, false);
    if curves.is_empty() {
        return Ok(None);
    }
    let all: Vec<&Row> = curves.iter().flat_map(|(_, r)| r.iter().copied()).collect();
    let seeds = counts(&all).0;
    // Each curve's first point is its block length (⌈train.updates / 100⌉).
    let blocks: BTreeSet<usize> = curves
        .iter()
        .filter_map(|(_, r)| r.first().map(|r| r.x))
        .collect();
    let blocks = blocks
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let interval = if seeds == "1" {
        "1 seed: no across-seed interval".to_string()
    } else {
        format!("99% t-interval over {seeds} seeds")
    };
    let caption = format!(
        "{what} during training ({}): each seed's mean over blocks of ⌈train.updates / 100⌉ \
         updates (here {blocks}), mean over seeds, {interval}",
        section.as_str()
    );
    let mut plot = LinePlot::new(
        format!("{what} during training: {interval}"),
        "update",
        what,
    );
    for (g, rows) in &curves {
        let x: Vec<f64> = rows.iter().map(|r| r.x as f64).collect();
        plot.series.push(seed_band(agg.label(g), x, rows));
    }
    let stem = format!("{}-{}", section.as_str(), slug(&metric));
    line_plot(&dir.join(&stem), &plot)?;
    Ok(Some((stem, caption)))
}

/// The posterior against the exact belief (`eval_belief.csv`): one panel per quantity, a curve
/// per drawn group (mean over seeds, 99% band over seeds), the second metric of a panel
/// dashed; returns (stem, caption).
fn belief_figure(
    agg: &Aggregate,
    section: Section,
    dir: &Path,
) -> Result<Option<(String, String)>> {
    // (title, y label, [(metric, legend suffix)]).
    type Panel = (
        &'static str,
        &'static str,
        &'static [(&'static str, &'static str)],
    );
    const CORR: &[(&str, &str)] = &[
        ("entropy_belief_corr_t", ""),
        ("entropy_drop_corr_t", " (drops)"),
    ];
    let panels: &[Panel] = match section {
        Section::Gridworld => &[
            (
                "Agent: posterior entropy H[q_t]",
                "entropy [nats]",
                &[("entropy", "")],
            ),
            (
                "Exact belief: entropy ln|C_t| of the goal",
                "ln |C_t| [nats]",
                &[("exact_entropy", "")],
            ),
            (
                "corr over tasks of H[q_t] with ln|C_t|",
                "Pearson r, mean over seeds (drops dashed)",
                CORR,
            ),
        ],
        Section::Bandit => &[
            (
                "Reward head vs exact posterior mean",
                "mean Bernoulli KL [nats]",
                &[("reward_kl_exact", "")],
            ),
            (
                "Brier score of the pulled arm",
                "Brier (exact mean dashed)",
                &[
                    ("reward_brier", ""),
                    ("reward_brier_exact", " (exact mean)"),
                ],
            ),
            (
                "corr over tasks of H[q_t] with Σ Var[p_k]",
                "Pearson r, mean over seeds (drops dashed)",
                CORR,
            ),
            (
                "Exact posterior: total variance Σ_k Var[p_k]",
                "total variance",
                &[("exact_var", "")],
            ),
            ("Particles: effective sample size", "ESS", &[("ess", "")]),
        ],
        Section::Regression => return Ok(None),
    };
    // Every panel lists the groups in one order, a group without the metric as an unnamed NaN
    // series, so a group keeps its colour (palette index) in every panel; a panel's second
    // metric starts at the palette's light half (index 10), the same hue lighter, where the
    // groups fit in it.
    let order: Vec<&GroupKey> = panels
        .iter()
        .flat_map(|(_, _, metrics)| metrics.iter())
        .flat_map(|(metric, _)| drawn_curves(agg, section, metric, false))
        .map(|(g, _)| g)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let light = PALETTE.len() / 2;
    let mut all: Vec<&Row> = vec![];
    let mut plots = vec![];
    for (title, ylabel, metrics) in panels {
        let mut plot = LinePlot::new(*title, "interactions t", *ylabel);
        for (k, (metric, suffix)) in metrics.iter().enumerate() {
            let curves = drawn_curves(agg, section, metric, false);
            if curves.is_empty() {
                continue;
            }
            if k > 0 && order.len() <= light {
                while plot.series.len() < light {
                    plot.series.push(Series::new("", vec![], vec![]));
                }
            }
            for g in &order {
                let Some((_, rows)) = curves.iter().find(|(c, _)| c == g) else {
                    plot.series.push(Series::new("", vec![], vec![]));
                    continue;
                };
                let x: Vec<f64> = rows.iter().map(|r| r.x as f64).collect();
                let name = format!("{}{suffix}", agg.label(g));
                // A per-t correlation's interval over a few seeds (t_{0.995, n−1} · s/√n) spans
                // most of [−1, 1] and would hide the curves: means only (the averaged
                // correlation has its interval in the tables and the provenance figure).
                let s = if metric.ends_with("_corr_t") {
                    Series::new(name, x, rows.iter().map(|r| r.mean).collect())
                } else {
                    seed_band(name, x, rows)
                };
                plot.series.push(if k > 0 { s.dashed() } else { s });
                all.extend(rows);
            }
        }
        if plot.series.iter().any(|s| !s.name.is_empty()) {
            plots.push(plot);
        }
    }
    // Only the entropy: no belief table in these folders.
    if plots.len() < 2 {
        return Ok(None);
    }
    let caption = format!(
        "The posterior against the exact belief ({}): mean over seeds, {}; row t holds the \
         posterior the action at t is drawn under and the exact belief on the same t − 1 \
         transitions (docs/outputs.md)",
        section.as_str(),
        interval_caption(&all)
    );
    let title = format!(
        "The posterior against the exact belief: {}",
        interval_text(&all, true)
    );
    let stem = format!("{}-belief", section.as_str());
    crate::plot::grid_plot(&dir.join(&stem), &title, &plots, 3)?;
    Ok(Some((stem, caption)))
}

fn section_figures(agg: &Aggregate, section: Section, dir: &Path) -> Result<Vec<(String, String)>> {
    let mut figs = vec![];
    if section == Section::Regression {
        for (metric, what, ylabel) in [
            ("ce", "Predictive cross-entropy", "cross-entropy [nats]"),
            ("entropy", "Posterior entropy", "entropy [nats]"),
            ("kl", "Consecutive KL(q_t ‖ q_t−1)", "KL [nats]"),
        ] {
            figs.extend(curve_figure(agg, section, metric, what, ylabel, dir)?);
        }
        let xs = table_xs(agg, section, "ce");
        let x = [10, 50]
            .into_iter()
            .find(|x| xs.contains(x))
            .or(xs.last().copied());
        if let Some(x) = x {
            figs.extend(provenance_figure(
                agg,
                section,
                "ce",
                x,
                "cross-entropy [nats]",
                dir,
            )?);
        }
    } else {
        for (metric, what, ylabel) in [
            ("cum_return", "Return through t", "return"),
            ("cum_regret", "Cumulative regret", "cumulative regret"),
            ("entropy", "Posterior entropy", "entropy [nats]"),
            ("kl", "Consecutive KL(q_t ‖ q_t−1)", "KL [nats]"),
        ] {
            figs.extend(curve_figure(agg, section, metric, what, ylabel, dir)?);
        }
        let t = agg
            .rows
            .iter()
            .filter(|r| r.group.section == section && r.metric == "final_regret")
            .map(|r| r.x)
            .max();
        if let Some(t) = t {
            figs.extend(provenance_figure(
                agg,
                section,
                "final_regret",
                t,
                "cumulative regret at T",
                dir,
            )?);
            figs.extend(provenance_figure(
                agg,
                section,
                "entropy_belief_corr",
                t,
                "corr of H[q_t] with the exact belief",
                dir,
            )?);
        }
        figs.extend(belief_figure(agg, section, dir)?);
    }
    let training: &[(&str, &str)] = match section {
        Section::Regression => &[("nll", "NLL"), ("kl", "KL")],
        _ => &[
            ("return", "Return"),
            ("regret", "Regret"),
            ("kl", "KL"),
            ("entropy", "Policy entropy"),
            ("approx_kl", "Approximate KL (rollout → updated policy)"),
            ("clipfrac", "Clip fraction"),
            ("explained_variance", "Explained variance of the value head"),
            ("grad_norm_raw", "Gradient norm before clipping"),
            ("kl_term_ratio", "β·KL / mean |advantage|"),
            ("noise_ratio", "Sample noise ‖z − μ‖ / ‖μ‖"),
        ],
    };
    for (key, what) in training {
        figs.extend(training_figure(agg, section, key, what, dir)?);
    }
    Ok(figs)
}
