//! The fast training paths at two threads, where the batch's tasks (and the heads' rows) are
//! split between the threads (`nn::kernels::parts`): the rollout, the PPO loss and every
//! parameter gradient equal the per-step reference (`lvrnn::train::reference`) within the
//! tolerance of `tests/fast_path.rs` (`common::fast_path`), and two runs give the same bits. A separate test binary,
//! because the thread count is fixed once per process (`lvrnn::init_threads`).

mod common;

use candle_core::Tensor;
use common::fast_path::{assert_close, assert_same_gradients, jitter_biases, rl_config};
use lvrnn::agent::rl::{ActionRule, Keep, RlModel, rollout};
use lvrnn::config::{ExperimentConfig, env_kind};
use lvrnn::envs::make_env;
use lvrnn::nn::Params;
use lvrnn::train::ppo::{LossParts, gae, ppo_loss};
use lvrnn::train::reference;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Tasks per batch: enough for two parts of at least `MIN_PART_ITEMS` tasks.
const BATCH: usize = 2 * lvrnn::nn::kernels::MIN_PART_ITEMS + 5;

const FAMILIES: &[&str] = &[
    "rnn",
    "vrnn",
    "laplace:window=1,accumulate=sigma",
    "laplace:window=3,accumulate=none",
];

fn scalars(p: &LossParts) -> Vec<f64> {
    vec![
        p.loss.to_scalar::<f32>().unwrap() as f64,
        p.policy_loss,
        p.value_loss,
        p.entropy,
        p.kl.unwrap_or(0.0),
        p.reward_loss.unwrap_or(0.0),
        p.taken_log_prob,
    ]
}

/// The parameters' gradients of `loss` by name, as f32 bits (None where there is none).
fn gradient_bits(params: &Params, loss: &Tensor) -> Vec<(String, Option<Vec<u32>>)> {
    let grads = loss.backward().unwrap();
    params
        .vars()
        .map(|(name, var)| {
            let g = grads.get(var.as_tensor()).map(|g| {
                let v: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
                v.iter().map(|x| x.to_bits()).collect()
            });
            (name.clone(), g)
        })
        .collect()
}

/// One update's numbers at two threads: the rollout's actions and log π, the loss parts and
/// the gradients, for the model of `cfg` (fresh weights each call).
fn fast_update(cfg: &ExperimentConfig) -> (RlModel, lvrnn::agent::rl::Rollout, LossParts) {
    let model = RlModel::for_experiment(cfg).unwrap();
    jitter_biases(&model.params);
    let kind = env_kind(cfg.task).unwrap();
    let mut env = make_env(kind, cfg.train.batch, cfg.env.alpha_train as f32);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let first = env.reset(&mut rng);
    let keep = Keep {
        posterior: true,
        heads: true,
    };
    let ro = rollout(
        &model,
        env.as_mut(),
        first,
        &mut rng,
        keep,
        ActionRule::Sample,
    )
    .unwrap();
    let (adv, targets) = gae(
        &ro.rewards,
        &ro.values,
        &ro.discounts,
        &ro.bootstrap,
        0.9,
        0.9,
    );
    let mut ppo = cfg.ppo.clone();
    ppo.reward_loss_scale = lvrnn::config::reward_loss_scale(cfg).unwrap();
    let loss = ppo_loss(&model, &ro, &adv, &targets, &ppo, 0.5).unwrap();
    (model, ro, loss)
}

#[test]
fn two_thread_update_equals_the_per_step_reference() {
    lvrnn::init_threads(2);
    assert_eq!(lvrnn::nn::kernels::parts(BATCH), 2, "the batch is split");
    for task in ["bandit", "gridworld"] {
        for posterior in FAMILIES {
            let what = format!("{task} {posterior} at 2 threads");
            let cfg = rl_config(task, posterior, BATCH);
            let (model, mut ro, fast) = fast_update(&cfg);
            let kind = env_kind(cfg.task).unwrap();
            let mut env = make_env(kind, cfg.train.batch, cfg.env.alpha_train as f32);
            let mut rng = ChaCha8Rng::seed_from_u64(11);
            let first = env.reset(&mut rng);
            let ro_ref = reference::rollout(&model, env.as_mut(), first, &mut rng, true).unwrap();
            assert_eq!(ro.actions, ro_ref.actions, "{what}: actions differ");
            let flat = |t: &[Vec<f32>]| t.iter().flatten().map(|v| *v as f64).collect::<Vec<_>>();
            assert_close(
                &format!("{what}: log π"),
                &flat(&ro.log_probs),
                &flat(&ro_ref.log_probs),
                1.0,
            );
            assert_close(
                &format!("{what}: values"),
                &flat(&ro.values),
                &flat(&ro_ref.values),
                1.0,
            );
            let (adv, targets) = gae(
                &ro.rewards,
                &ro.values,
                &ro.discounts,
                &ro.bootstrap,
                0.9,
                0.9,
            );
            let mut ppo = cfg.ppo.clone();
            ppo.reward_loss_scale = lvrnn::config::reward_loss_scale(&cfg).unwrap();
            let slow = reference::ppo_loss(&model, &ro, &adv, &targets, &ppo, 0.5).unwrap();
            assert_close(
                &format!("{what}: loss parts"),
                &scalars(&fast),
                &scalars(&slow),
                1.0,
            );
            assert_same_gradients(&what, &model.params, &fast.loss, &slow.loss);
            // Without the rollout's head traces the heads run forward in the loss pass.
            ro.heads.take().expect("the rollout's head traces");
            let untraced = ppo_loss(&model, &ro, &adv, &targets, &ppo, 0.5).unwrap();
            assert_close(
                &format!("{what}: loss parts without the traces"),
                &scalars(&untraced),
                &scalars(&slow),
                1.0,
            );
            assert_same_gradients(
                &format!("{what} (untraced)"),
                &model.params,
                &untraced.loss,
                &slow.loss,
            );
        }
    }
}

#[test]
fn two_thread_update_is_the_same_bits_on_every_run() {
    lvrnn::init_threads(2);
    for task in ["bandit", "gridworld"] {
        for posterior in FAMILIES {
            let what = format!("{task} {posterior} at 2 threads");
            let cfg = rl_config(task, posterior, BATCH);
            let run = || {
                let (model, ro, loss) = fast_update(&cfg);
                let log_probs: Vec<u32> =
                    ro.log_probs.iter().flatten().map(|v| v.to_bits()).collect();
                let parts: Vec<u64> = scalars(&loss).iter().map(|v| v.to_bits()).collect();
                (
                    ro.actions,
                    log_probs,
                    parts,
                    gradient_bits(&model.params, &loss.loss),
                )
            };
            let (a, b) = (run(), run());
            assert_eq!(a.0, b.0, "{what}: actions");
            assert_eq!(a.1, b.1, "{what}: log π");
            assert_eq!(a.2, b.2, "{what}: loss parts");
            assert_eq!(a.3, b.3, "{what}: gradients");
        }
    }
}
