//! `lvrnn reference`: the exact reference policies' returns and regret on fresh tasks.

use anyhow::{Context, Result, bail};
use std::path::Path;

/// Prints the reference table of `env` ("bandit" or "gridworld") on `tasks` tasks drawn from
/// `seed` (bandit: Dirichlet concentration `alpha`), and writes it as CSV to `csv` if given.
pub fn run(env: &str, alpha: f32, tasks: usize, seed: u64, csv: Option<&Path>) -> Result<()> {
    use crate::envs::reference::{
        default_checkpoints, format_reference_table, reference_table, write_reference_csv,
    };
    let kind: crate::envs::EnvKind = env.parse().context("--env")?;
    if !(alpha > 0.0 && alpha.is_finite()) {
        bail!("--alpha must be a finite number > 0 (got {alpha})");
    }
    if tasks == 0 {
        bail!("--tasks must be a positive integer");
    }
    let rows = reference_table(kind, alpha, tasks, seed, &default_checkpoints(kind));
    let alpha_note = if kind == crate::envs::EnvKind::Bandit {
        format!(", alpha {alpha}")
    } else {
        String::new()
    };
    println!(
        "{} reference policies, {tasks} tasks, seed {seed}{alpha_note}",
        kind.as_str()
    );
    print!("{}", format_reference_table(&rows));
    if rows.iter().any(|r| r.ess_mean.is_some()) {
        println!(
            "ess: mean over tasks of the effective sample size 1/Σw² of the {} \
             importance-sampled particles after t pulls",
            crate::envs::reference::PARTICLES
        );
    }
    if let Some(path) = csv {
        write_reference_csv(path, &rows)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
