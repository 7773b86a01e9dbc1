use lvrnn::config::ExperimentConfig;
use lvrnn::envs::EnvKind;
use lvrnn::rl_eval::{evaluate_rl, reference_curves};
use lvrnn::run::RunDir;
use lvrnn::train::ppo::{Ppo, RlModel};
use lvrnn::train::{FitOptions, fit};

fn var(k: &str, d: &str) -> String {
    std::env::var(k).unwrap_or(d.to_string())
}

#[test]
fn scratch() {
    lvrnn::init_threads(1);
    let text = format!(
        r#"
name = "scratch"
task = "{task}"
seed = {seed}
[model]
embed_width = {e}
hidden = {h}
features = {f}
head_hidden = [{hh}]
n_z = 1
[train]
updates = {u}
batch = {b}
lr = {lr}
clip_element = {clip}
checkpoint_every = 0
snapshots = []
[ppo]
entropy_scale = {ent}
[eval]
tasks = 128
"#,
        task = var("TASK", "gridworld"),
        seed = var("SEED", "0"),
        e = var("E", "32"),
        h = var("H", "32"),
        f = var("F", "8"),
        hh = var("HH", "64, 64"),
        u = var("U", "20"),
        b = var("B", "32"),
        lr = var("LR", "1e-3"),
        clip = var("CLIP", "1.0"),
        ent = var("ENT", "0.1")
    );
    let mut cfg = ExperimentConfig::from_toml_str(&text, "scratch").unwrap();
    cfg.model.posterior = var("POST", "rnn").parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::open(dir.path(), &cfg.name, false, false).unwrap();
    let mut learner = Ppo::new(&cfg, RlModel::for_experiment(&cfg).unwrap()).unwrap();
    let t0 = std::time::Instant::now();
    let every: usize = var("EVERY", "50").parse().unwrap();
    let mut done = 0;
    while done < cfg.train.updates {
        let s = fit(
            &mut learner,
            &cfg,
            &run,
            &FitOptions {
                resume: done > 0,
                stop_after: Some(every),
                progress: false,
            },
        )
        .unwrap();
        done = s.updates_done;
        let rows: Vec<serde_json::Value> = lvrnn::util::read_jsonl(&run.train_metrics()).unwrap();
        let last: Vec<&serde_json::Value> = rows.iter().rev().take(every).collect();
        let avg = |k: &str| {
            last.iter()
                .map(|r| r[k].as_f64().unwrap_or(f64::NAN))
                .sum::<f64>()
                / last.len() as f64
        };
        eprintln!(
            "{:>5} {:>7.1}s return {:.3} entropy {:.3} vloss {:.4} gn {:.3}",
            done,
            t0.elapsed().as_secs_f64(),
            avg("return"),
            avg("entropy"),
            avg("value_loss"),
            avg("grad_norm")
        );
    }
    let kind = if cfg.task == lvrnn::config::Task::Bandit {
        EnvKind::Bandit
    } else {
        EnvKind::Gridworld
    };
    let r = evaluate_rl(&learner.model, "agent", kind, &cfg.eval, 0.3).unwrap();
    eprintln!(
        "agent return {:.3} ± {:.3} (train time {:.1}s)",
        r.return_mean,
        r.return_ci99,
        t0.elapsed().as_secs_f64()
    );
    for c in reference_curves(kind, 0.3, 128, cfg.eval.seed) {
        eprintln!("{} {:.3} ± {:.3}", c.policy, c.return_mean, c.return_ci99);
    }
}

#[test]
fn full() {
    lvrnn::init_threads(1);
    let text = format!(r#"
name = "{task}-small"
task = "{task}"
seed = 0
[model]
embed_width = 32
hidden = 32
features = 8
head_hidden = [64, 64]
n_z = 2
[model.posterior]
family = "laplace"
window = 1
accumulate = "sigma"
[train]
updates = {u}
batch = 32
lr = 3e-3
clip_element = 1.0
checkpoint_every = 100
[eval]
tasks = 256
posthoc = ["rnn", "laplace:window=10,accumulate=none"]
"#, task=var("TASK","bandit"), u=var("U","300"));
    let cfg = ExperimentConfig::from_toml_str(&text, "scratch").unwrap();
    lvrnn::rl_eval::train_and_eval_rl(&cfg, std::path::Path::new("/tmp/scratch/runs"), FitOptions::default(), true, None, false).unwrap();
}
