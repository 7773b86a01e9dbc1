//! Reference-policy curves over time for RL result folders.
//!
//! `eval_rl_returns.csv` holds the reference policies' return and regret at the horizon only
//! (rows `reference: NAME`). Their tasks are a pure function of the config (`eval.tasks` tasks
//! drawn from `eval.seed`, Dirichlet concentration `env.alpha_test` or the label's
//! `@ alpha=A`), so the curves through t are simulated again here, once per distinct setting,
//! and added as `cum_regret` and `cum_return` records with their 99% half-width over the tasks.

use super::collect::{Collection, Provenance, Record, Section};
use crate::envs::EnvKind;
use crate::envs::reference::{PARTICLES, PolicyTraces, simulate_policies};
use crate::stats::mean_ci99;
use std::collections::BTreeMap;

/// Adds the reference curves of every RL folder's `reference: …` rows to `col.records`.
pub fn add_reference_curves(col: &mut Collection) {
    let mut cache: BTreeMap<(Section, String, usize, u64), Vec<PolicyTraces>> = BTreeMap::new();
    let mut added = vec![];
    for r in &col.records {
        if r.provenance != Provenance::Reference || r.metric != "return" {
            continue;
        }
        let f = &col.folders[r.folder];
        let kind = match f.section {
            Section::Bandit => EnvKind::Bandit,
            Section::Gridworld => EnvKind::Gridworld,
            Section::Regression => continue,
        };
        let name = r.model.trim_start_matches("reference: ");
        let (policy, alpha) = match name.split_once(" @ alpha=") {
            Some((p, a)) => (p, a.to_string()),
            None => (
                name,
                f.keys
                    .get("env.alpha_test")
                    .cloned()
                    .unwrap_or_else(|| "0.3".into()),
            ),
        };
        let Ok(alpha_f) = alpha.parse::<f32>() else {
            continue;
        };
        let eval_seed: u64 = f
            .keys
            .get("eval.seed")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let sims = cache
            .entry((f.section, alpha, f.tasks, eval_seed))
            .or_insert_with(|| simulate_policies(kind, alpha_f, f.tasks, eval_seed, PARTICLES));
        let Some(sim) = sims.iter().find(|s| s.policy == policy) else {
            continue;
        };
        let horizon = sim.traces.first().map_or(0, |tr| tr.regret.len());
        for t in 1..=horizon {
            let regret: Vec<f64> = sim.traces.iter().map(|tr| tr.regret_at(t)).collect();
            let ret: Vec<f64> = sim.traces.iter().map(|tr| tr.return_at(t)).collect();
            for (metric, xs) in [("cum_regret", regret), ("cum_return", ret)] {
                let (value, ci) = mean_ci99(&xs);
                added.push(Record {
                    folder: r.folder,
                    model: r.model.clone(),
                    provenance: Provenance::Reference,
                    metric: metric.into(),
                    x: t,
                    value,
                    task_ci99: ci,
                });
            }
        }
    }
    col.records.extend(added);
}
