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

#[test]
fn bench() {
    lvrnn::init_threads(var("THREADS","1").parse().unwrap());
    lvrnn::rl_eval::bench_ppo(var("B","256").parse().unwrap(), var("REPS","1").parse().unwrap()).unwrap();
}

#[test]
fn profile() {
    use lvrnn::train::ppo::{gae, ppo_loss, rollout};
    use lvrnn::train::Learner;
    lvrnn::init_threads(1);
    let task = var("TASK", "bandit");
    let mut cfg = ExperimentConfig::from_toml_str(&format!("name = \"bench\"\ntask = \"{task}\""), "bench").unwrap();
    cfg.model.posterior = var("POST", "rnn").parse().unwrap();
    cfg.train.batch = var("B", "256").parse().unwrap();
    let mut learner = Ppo::new(&cfg, RlModel::for_experiment(&cfg).unwrap()).unwrap();
    let mut opt = lvrnn::train::optim::AdamW::new(lvrnn::train::adamw_config(&cfg), learner.params()).unwrap();
    for rep in 0..2 {
        let mut rng = lvrnn::train::update_rng(0, rep);
        let t0 = std::time::Instant::now();
        let first = learner.env.reset(&mut rng);
        let ro = rollout(&learner.model, learner.env.as_mut(), first, &mut rng, false).unwrap();
        let t1 = t0.elapsed().as_secs_f64();
        let (adv, targets) = gae(&ro.rewards, &ro.values, &ro.discounts, &ro.bootstrap, 0.9, 0.9);
        let parts = ppo_loss(&learner.model, &ro, &adv, &targets, &learner.ppo, learner.beta).unwrap();
        let t2 = t0.elapsed().as_secs_f64();
        let grads = parts.loss.backward().unwrap();
        let t3 = t0.elapsed().as_secs_f64();
        opt.step(learner.params(), &grads).unwrap();
        let t4 = t0.elapsed().as_secs_f64();
        eprintln!("rollout {t1:.3} loss {:.3} backward {:.3} step {:.3}", t2 - t1, t3 - t2, t4 - t3);
    }
    lvrnn::bench::run(256, 50, 1).unwrap();
}

#[test]
fn gradcheck() {
    use lvrnn::train::ppo::{gae, ppo_loss, rollout};
    use lvrnn::envs::make_env;
    use rand::SeedableRng;
    lvrnn::init_threads(1);
    for task in ["bandit", "gridworld"] {
    for post in ["rnn", "vrnn:diagonal=true", "vrnn", "laplace:window=1,accumulate=sigma"] {
    let text = format!(r#"
name = "x"
task = "{task}"
seed = 3
[model]
embed_width = 8
hidden = 8
features = 4
head_hidden = [8]
n_z = 2
[train]
batch = 4
"#);
    let mut cfg = ExperimentConfig::from_toml_str(&text, "t").unwrap();
    cfg.model.posterior = post.parse().unwrap();
    let model = RlModel::for_experiment(&cfg).unwrap();
    if std::env::var("JITTER").is_ok() {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for (name, var) in model.params.vars() {
            if name.ends_with("bias") {
                let shape = var.as_tensor().dims().to_vec();
                let noise = lvrnn::agent::randn(&mut r, &shape).unwrap();
                var.set(&(var.as_tensor() + (noise * 0.3).unwrap()).unwrap()).unwrap();
            }
        }
    }
    let mut env = make_env(if task == "bandit" { EnvKind::Bandit } else { EnvKind::Gridworld }, 6, 0.2);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let first = env.reset(&mut rng);
    let ro = rollout(&model, env.as_mut(), first, &mut rng, false).unwrap();
    let (_, targets) = gae(&ro.rewards, &ro.values, &ro.discounts, &ro.bootstrap, 0.9, 0.9);
    let ppo = lvrnn::config::PpoConfig { value_scale: 0.0, entropy_scale: 0.0, reward_loss_scale: 0.0, ..cfg.ppo.clone() };
    let adv = vec![vec![1.0f32; ro.batch()]; ro.horizon()];
    let before = ppo_loss(&model, &ro, &adv, &targets, &ppo, 0.0).unwrap();
    let grads = before.loss.backward().unwrap();
    let saved: std::collections::BTreeMap<String, candle_core::Tensor> = model.params.tensors().into_iter().map(|(k, t)| (k, t.copy().unwrap())).collect();
    let mut g2 = 0.0;
    for (_, var) in model.params.vars() {
        if let Some(g) = grads.get(var.as_tensor()) { g2 += g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64; }
    }
    let mut line = format!("{task} {post}: |g| {:.4e}; dir. derivative / |g|:", g2.sqrt());
    for step in [1e-3, 1e-4, 1e-5, 1e-6] {
        let h = step / g2.sqrt();
        for (_, var) in model.params.vars() {
            if let Some(g) = grads.get(var.as_tensor()) { var.set(&(var.as_tensor() - (g * h).unwrap()).unwrap()).unwrap(); }
        }
        let after = ppo_loss(&model, &ro, &adv, &targets, &ppo, 0.0).unwrap();
        model.params.load_from(&saved, true).unwrap();
        let fd = (after.taken_log_prob - before.taken_log_prob) / step;
        line += &format!(" {step:e}: {:.3}", fd / g2.sqrt());
    }
    eprintln!("{line}");
    }}
}
