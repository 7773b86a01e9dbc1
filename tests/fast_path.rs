//! The fast training paths against the straightforward per-step reference
//! (`lvrnn::train::reference`): same rollouts, same losses and metrics, and every parameter
//! gradient equal to ≤ 1e-4 relative, for every posterior family on regression, bandit and
//! gridworld (small sizes). Also the fused LSTM sequence op against the per-step cell graph.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::fast_path::{assert_close, assert_same_gradients, jitter_biases, rl_config};
use common::tensors::values;
use lvrnn::agent::SampleEvery;
use lvrnn::agent::rl::{ActionRule, Keep, RlModel, rollout};
use lvrnn::config::env_kind;
use lvrnn::envs::make_env;
use lvrnn::nn::Params;
use lvrnn::nn::lstm::{Carry, Lstm};
use lvrnn::nn::lstm_seq::lstm_sequence;
use lvrnn::train::ppo::{gae, ppo_loss};
use lvrnn::train::reference;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Every posterior family and Table-2 variant the fast paths serve.
const FAMILIES: &[&str] = &[
    "rnn",
    "vrnn",
    "vrnn:diagonal=true",
    "laplace:window=1,accumulate=sigma",
    "laplace:window=1,accumulate=mu_sigma",
    "laplace:window=1,accumulate=none",
    "laplace:window=3,accumulate=none",
    "laplace:window=3,accumulate=sigma",
    "laplace:window=1,accumulate=sigma,diagonal=true",
    "laplace:window=3,accumulate=none,diagonal=true",
    "laplace:window=0,accumulate=none",
];

/// A small regression model (n_Z = 2) with biases off zero.
fn tiny_regression_model(posterior: &str) -> lvrnn::agent::regression::RegressionModel {
    let cfg = lvrnn::agent::ModelConfig {
        embed_width: 8,
        hidden: 8,
        features: 4,
        head_hidden: vec![8],
        n_z: 2,
        posterior: posterior.parse().unwrap(),
        sample_scale: 1.0,
        sample_warmup: None,
        sample_every: None,
    };
    let model = lvrnn::agent::regression::RegressionModel::new(&cfg, 7).unwrap();
    jitter_biases(&model.params);
    model
}

#[test]
fn ppo_rollout_loss_and_gradients_equal_the_per_step_reference() {
    lvrnn::init_threads(1);
    for task in ["bandit", "gridworld"] {
        // Every family with a fresh sample per step; the Bayesian ones also with one sample
        // per task (`model.sample_every = "task"`).
        let cases = FAMILIES.iter().map(|p| (p, SampleEvery::Step)).chain(
            FAMILIES[1..]
                .iter()
                .step_by(3)
                .map(|p| (p, SampleEvery::Task)),
        );
        for (posterior, every) in cases {
            let what = format!("{task} {posterior} sample_every={every:?}");
            let mut cfg = rl_config(task, posterior, 5);
            cfg.model.sample_every = Some(every);
            let model = RlModel::for_experiment(&cfg).unwrap();
            jitter_biases(&model.params);
            let kind = env_kind(cfg.task).unwrap();
            let run = |fast: bool| {
                let mut env = make_env(kind, cfg.train.batch, cfg.env.alpha_train as f32);
                let mut rng = ChaCha8Rng::seed_from_u64(11);
                let first = env.reset(&mut rng);
                if fast {
                    let keep = Keep {
                        posterior: true,
                        heads: true,
                    };
                    rollout(
                        &model,
                        env.as_mut(),
                        first,
                        &mut rng,
                        keep,
                        ActionRule::Sample,
                    )
                    .unwrap()
                } else {
                    reference::rollout(&model, env.as_mut(), first, &mut rng, true).unwrap()
                }
            };
            let (mut ro, ro_ref) = (run(true), run(false));
            assert_eq!(ro.actions, ro_ref.actions, "{what}: actions differ");
            if every == SampleEvery::Task {
                let first = values(&ro.noise[0]);
                assert!(first.iter().any(|v| *v != 0.0), "{what}: no noise");
                for (t, eps) in ro.noise.iter().enumerate() {
                    assert_eq!(values(eps), first, "{what}: ε of step {t} is not step 0's");
                }
            }
            let flat = |t: &[Vec<f32>]| t.iter().flatten().map(|v| *v as f64).collect::<Vec<_>>();
            let flat64 = |t: &[Vec<f64>]| t.iter().flatten().copied().collect::<Vec<_>>();
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
            assert_close(
                &format!("{what}: bootstrap"),
                &ro.bootstrap.iter().map(|v| *v as f64).collect::<Vec<_>>(),
                &ro_ref
                    .bootstrap
                    .iter()
                    .map(|v| *v as f64)
                    .collect::<Vec<_>>(),
                1.0,
            );
            let (ent, ent_ref) = (
                flat64(&ro.posterior_entropy),
                flat64(&ro_ref.posterior_entropy),
            );
            if posterior == &"rnn" {
                assert!(ent.iter().chain(&ent_ref).all(|v| v.is_nan()));
            } else {
                assert_close(&format!("{what}: posterior entropy"), &ent, &ent_ref, 1.0);
                assert_close(
                    &format!("{what}: posterior KL"),
                    &flat64(&ro.posterior_kl),
                    &flat64(&ro_ref.posterior_kl),
                    1.0,
                );
            }

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
            let beta = 0.5;
            let fast = ppo_loss(&model, &ro, &adv, &targets, &ppo, beta).unwrap();
            let slow = reference::ppo_loss(&model, &ro, &adv, &targets, &ppo, beta).unwrap();
            let scalars = |p: &lvrnn::train::ppo::LossParts| {
                vec![
                    p.loss.to_scalar::<f32>().unwrap() as f64,
                    p.policy_loss,
                    p.value_loss,
                    p.entropy,
                    p.kl.unwrap_or(0.0),
                    p.reward_loss.unwrap_or(0.0),
                    p.taken_log_prob,
                ]
            };
            assert_close(
                &format!("{what}: loss parts"),
                &scalars(&fast),
                &scalars(&slow),
                1.0,
            );
            assert_eq!(fast.kl.is_some(), slow.kl.is_some());
            assert_same_gradients(&what, &model.params, &fast.loss, &slow.loss);
            // The loss above reused the rollout's head activations; without them the heads run
            // forward in the loss pass, with the same result.
            let traces = ro.heads.take().expect("the rollout's head traces");
            assert_eq!(
                traces.cayley.is_some(),
                *posterior == "vrnn",
                "{what}: the full VRNN, and only it, keeps its Cayley factors"
            );
            let untraced = ppo_loss(&model, &ro, &adv, &targets, &ppo, beta).unwrap();
            assert_close(
                &format!("{what}: loss parts without the traces"),
                &scalars(&untraced),
                &scalars(&slow),
                1.0,
            );
            assert_same_gradients(&what, &model.params, &untraced.loss, &slow.loss);
        }
    }
}

#[test]
fn fused_lstm_sequence_equals_the_per_step_cell_with_gradients() {
    lvrnn::init_threads(1);
    let (steps, batch, d_in, hidden) = (7, 3, 5, 4);
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut p = Params::new();
    let lstm = Lstm::new(&mut p, d_in, hidden, &mut rng).unwrap();
    let b = p.get("core.b").unwrap();
    b.set(&lvrnn::agent::randn(&mut rng, &[4 * hidden], &candle_core::Device::Cpu).unwrap())
        .unwrap();
    let x = Var::from_tensor(
        &lvrnn::agent::randn(&mut rng, &[steps, batch, d_in], &candle_core::Device::Cpu).unwrap(),
    )
    .unwrap();
    // A loss that weighs every h_t and c_t differently.
    let wh_out =
        lvrnn::agent::randn(&mut rng, &[steps, batch, hidden], &candle_core::Device::Cpu).unwrap();
    let wc_out =
        lvrnn::agent::randn(&mut rng, &[steps, batch, hidden], &candle_core::Device::Cpu).unwrap();

    // Reference: the per-step cell.
    let mut carry = Carry::zeros(batch, hidden, &candle_core::Device::Cpu).unwrap();
    let mut terms = vec![];
    for t in 0..steps {
        carry = lstm.step(&x.as_tensor().get(t).unwrap(), &carry).unwrap();
        let th = carry
            .h
            .mul(&wh_out.get(t).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let tc = carry
            .c
            .mul(&wc_out.get(t).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        terms.push((th + tc).unwrap());
    }
    let slow = Tensor::stack(&terms, 0).unwrap().sum_all().unwrap();

    // Fused: input projections for all steps, then the sequence op.
    let xw = x
        .as_tensor()
        .reshape((steps * batch, d_in))
        .unwrap()
        .matmul(&lstm.wx)
        .unwrap()
        .broadcast_add(&lstm.b)
        .unwrap()
        .reshape((steps, batch, 4 * hidden))
        .unwrap();
    let out = lstm_sequence(&xw, &lstm.wh).unwrap();
    let w = Tensor::cat(&[&wh_out, &wc_out], 2).unwrap();
    let fast = out.mul(&w).unwrap().sum_all().unwrap();

    assert_close("loss", &values(&fast), &values(&slow), 1.0);
    let (gf, gs) = (fast.backward().unwrap(), slow.backward().unwrap());
    for (name, t) in [
        ("x", x.as_tensor()),
        ("wx", &lstm.wx),
        ("wh", &lstm.wh),
        ("b", &lstm.b),
    ] {
        assert_close(
            &format!("gradient of {name}"),
            &values(gf.get(t).unwrap()),
            &values(gs.get(t).unwrap()),
            1e-6,
        );
    }
    let _ = Device::Cpu;
}

/// Regression evaluation steps the core without a graph (`agent::acting`): its posterior
/// entropy, samples and KL at every step equal the per-step tensor path (`Core::step`).
#[test]
fn regression_evaluation_steps_equal_the_per_step_reference() {
    use lvrnn::agent::acting::Acting;
    lvrnn::init_threads(1);
    let (batch, steps, samples) = (5, 6, 3);
    for posterior in FAMILIES {
        let model = tiny_regression_model(posterior);
        let n = model.cfg.features;
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let mut acting = Acting::new(&model.core, batch).unwrap();
        let mut state = model.core.initial(batch).unwrap().detach();
        let none = Tensor::zeros((0, batch, n), DType::F32, &Device::Cpu).unwrap();
        let optional = |v: Option<Vec<f64>>| v.unwrap_or_default();
        for t in 0..=steps {
            let what = format!("regression {posterior}, step {t}");
            assert_close(
                &format!("{what}: entropy"),
                &optional(acting.entropy().unwrap()),
                &optional(state.q.entropy().unwrap()),
                1.0,
            );
            let eps = lvrnn::agent::randn(&mut rng, &[samples, batch, n], &Device::Cpu).unwrap();
            assert_close(
                &format!("{what}: samples"),
                &values(&acting.sample(&eps).unwrap()),
                &values(&state.q.sample(&eps).unwrap()),
                1.0,
            );
            if t == steps {
                break;
            }
            let x: Vec<f32> = (0..batch)
                .map(|b| ((b + 3 * t) as f32 * 0.37).sin())
                .collect();
            let y: Vec<f32> = x.iter().map(|v| (2.0 * v).cos()).collect();
            let fast = acting.observe(&[x.clone(), y.clone()], &none).unwrap();
            let emb_x = model.embed_scalar(0, &x).unwrap();
            let slow = model.observe(&state, &emb_x, &y).unwrap();
            let slow_kl = slow.kl.as_ref().map(values).unwrap_or_default();
            assert_close(&format!("{what}: KL"), &optional(fast.kl), &slow_kl, 1.0);
            state = slow.state.detach();
        }
    }
}

#[test]
fn supervised_elbo_and_gradients_equal_the_per_step_reference() {
    use lvrnn::train::supervised::{negative_elbo, sample_batch};
    lvrnn::init_threads(1);
    for posterior in FAMILIES {
        let model = tiny_regression_model(posterior);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (xs, ys) = sample_batch(&mut rng, 5, 9);
        let fast = negative_elbo(&model, &xs, &ys, 0.5, &mut rng.clone()).unwrap();
        let slow = reference::negative_elbo(&model, &xs, &ys, 0.5, &mut rng.clone()).unwrap();
        let scalars = |p: &lvrnn::train::supervised::ElboParts| {
            vec![p.loss.to_scalar::<f32>().unwrap() as f64, p.nll, p.kl]
        };
        assert_close(
            &format!("regression {posterior}: loss, nll, kl"),
            &scalars(&fast),
            &scalars(&slow),
            1.0,
        );
        assert_same_gradients(
            &format!("regression {posterior}"),
            &model.params,
            &fast.loss,
            &slow.loss,
        );
    }
}

#[test]
fn fused_layer_norm_and_leaky_relu_equal_their_candle_compositions_with_gradients() {
    use lvrnn::nn::mlp::{LEAKY_SLOPE, LayerNorm, leaky_relu};
    lvrnn::init_threads(1);
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mut p = Params::new();
    let norm = LayerNorm::new(&mut p, "ln", 6).unwrap();
    for (name, var) in p.vars() {
        let noise =
            lvrnn::agent::randn(&mut rng, var.as_tensor().dims(), &candle_core::Device::Cpu)
                .unwrap();
        var.set(&(var.as_tensor() + noise).unwrap()).unwrap();
        let _ = name;
    }
    // Rows of mixed scale, one with exact zeros (the leaky-ReLU kink).
    let mut x = lvrnn::agent::randn(&mut rng, &[4, 6], &candle_core::Device::Cpu).unwrap();
    x = x
        .broadcast_mul(&Tensor::new(&[[1f32], [10.0], [0.01], [0.0]], &Device::Cpu).unwrap())
        .unwrap();
    let x = Var::from_tensor(&x).unwrap();
    let w = lvrnn::agent::randn(&mut rng, &[4, 6], &candle_core::Device::Cpu).unwrap();
    let loss = |fused: bool| {
        let (y, a) = if fused {
            (
                norm.forward(x.as_tensor()).unwrap(),
                leaky_relu(x.as_tensor()).unwrap(),
            )
        } else {
            (
                norm.forward_composed(x.as_tensor()).unwrap(),
                candle_nn::ops::leaky_relu(x.as_tensor(), LEAKY_SLOPE).unwrap(),
            )
        };
        (y + a).unwrap().mul(&w).unwrap().sum_all().unwrap()
    };
    let (fast, slow) = (loss(true), loss(false));
    assert_close("value", &values(&fast), &values(&slow), 1.0);
    let (gf, gs) = (fast.backward().unwrap(), slow.backward().unwrap());
    assert_close(
        "dx",
        &values(gf.get(x.as_tensor()).unwrap()),
        &values(gs.get(x.as_tensor()).unwrap()),
        1e-6,
    );
    for (name, var) in p.vars() {
        assert_close(
            &format!("d{name}"),
            &values(gf.get(var.as_tensor()).unwrap()),
            &values(gs.get(var.as_tensor()).unwrap()),
            1e-6,
        );
    }
}

#[test]
fn fused_affine_layers_equal_their_candle_compositions_with_gradients() {
    use lvrnn::nn::mlp::Linear;
    lvrnn::init_threads(1);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut p = Params::new();
    let layer = Linear::new(&mut p, "lin", 5, 7, &mut rng).unwrap();
    for (name, var) in p.vars() {
        let noise =
            lvrnn::agent::randn(&mut rng, var.as_tensor().dims(), &candle_core::Device::Cpu)
                .unwrap();
        var.set(&(var.as_tensor() + noise).unwrap()).unwrap();
        if name == "lin.bias" {
            let mut b: Vec<f32> = var.as_tensor().to_vec1().unwrap();
            b[0] = 0.0;
            var.set(&Tensor::new(b.as_slice(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }
    // (2, 3, 5) inputs (a leading batch shape) with a row of zeros: with the zero bias entry,
    // one output sits exactly on the leaky-ReLU kink.
    let mut x = lvrnn::agent::randn(&mut rng, &[2, 3, 5], &candle_core::Device::Cpu).unwrap();
    x = x
        .broadcast_mul(&Tensor::new(&[[[1f32], [10.0], [0.0]]], &Device::Cpu).unwrap())
        .unwrap();
    let x = Var::from_tensor(&x).unwrap();
    let w = lvrnn::agent::randn(&mut rng, &[2, 3, 7], &candle_core::Device::Cpu).unwrap();
    for leaky in [false, true] {
        let loss = |fused: bool| {
            let y = match (fused, leaky) {
                (true, false) => layer.forward(x.as_tensor()).unwrap(),
                (true, true) => layer.forward_leaky(x.as_tensor()).unwrap(),
                (false, _) => layer.forward_composed(x.as_tensor(), leaky).unwrap(),
            };
            y.mul(&w).unwrap().sum_all().unwrap()
        };
        let (fast, slow) = (loss(true), loss(false));
        assert_close("value", &values(&fast), &values(&slow), 1e-6);
        let (gf, gs) = (fast.backward().unwrap(), slow.backward().unwrap());
        assert_close(
            &format!("dx (leaky = {leaky})"),
            &values(gf.get(x.as_tensor()).unwrap()),
            &values(gs.get(x.as_tensor()).unwrap()),
            1e-6,
        );
        for (name, var) in p.vars() {
            assert_close(
                &format!("d{name} (leaky = {leaky})"),
                &values(gf.get(var.as_tensor()).unwrap()),
                &values(gs.get(var.as_tensor()).unwrap()),
                1e-6,
            );
        }
    }
}

#[test]
fn fused_head_equals_its_chain_of_layers_with_gradients() {
    use lvrnn::nn::head::Head;
    lvrnn::init_threads(1);
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let mut p = Params::new();
    let head = Head::new(&mut p, "head", 6, &[8, 5], 3, &mut rng).unwrap();
    // Perturb every parameter (layer norm's γ = 1, β = 0 and the zero biases included).
    for (_, var) in p.vars() {
        let noise =
            lvrnn::agent::randn(&mut rng, var.as_tensor().dims(), &candle_core::Device::Cpu)
                .unwrap();
        var.set(&(var.as_tensor() + noise).unwrap()).unwrap();
    }
    // (2, 4, 6) inputs (a leading batch shape) with rows of mixed scale.
    let mut x = lvrnn::agent::randn(&mut rng, &[2, 4, 6], &candle_core::Device::Cpu).unwrap();
    x = x
        .broadcast_mul(&Tensor::new(&[[[1f32], [10.0], [0.01], [3.0]]], &Device::Cpu).unwrap())
        .unwrap();
    let x = Var::from_tensor(&x).unwrap();
    let w = lvrnn::agent::randn(&mut rng, &[2, 4, 3], &candle_core::Device::Cpu).unwrap();
    let loss = |fused: bool| {
        let y = if fused {
            head.forward(x.as_tensor()).unwrap()
        } else {
            head.forward_layers(x.as_tensor()).unwrap()
        };
        assert_eq!(y.dims(), &[2, 4, 3]);
        // Used twice, so the node's gradient is a sum of two contributions.
        (y.mul(&w).unwrap().sum_all().unwrap() + y.sqr().unwrap().sum_all().unwrap()).unwrap()
    };
    let (fast, slow) = (loss(true), loss(false));
    assert_close("value", &values(&fast), &values(&slow), 1e-6);
    let (gf, gs) = (fast.backward().unwrap(), slow.backward().unwrap());
    assert_close(
        "dx",
        &values(gf.get(x.as_tensor()).unwrap()),
        &values(gs.get(x.as_tensor()).unwrap()),
        1e-5,
    );
    for (name, var) in p.vars() {
        assert_close(
            &format!("d{name}"),
            &values(gf.get(var.as_tensor()).unwrap()),
            &values(gs.get(var.as_tensor()).unwrap()),
            1e-5,
        );
    }
}

/// The point estimate and the VRNN formed a few steps at a time (as the full-covariance VRNN is
/// at paper size) give the same samples, KL and gradients as all steps at once.
#[test]
fn chunked_posterior_sequence_equals_all_steps_at_once() {
    use lvrnn::agent::replay::SequenceInputs;
    use lvrnn::train::supervised::sample_batch;
    lvrnn::init_threads(1);
    for posterior in ["rnn", "vrnn", "vrnn:diagonal=true"] {
        let model = tiny_regression_model(posterior);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (steps, batch) = (7, 3);
        let (xs, ys) = sample_batch(&mut rng, batch, steps);
        let noise = lvrnn::agent::randn(&mut rng, &[steps, 2, batch, 4], &candle_core::Device::Cpu)
            .unwrap();
        // `together`: the samples and the KL from `samples_and_kl` (the loss passes' call,
        // fused for the full VRNN) instead of `samples` and `kl`.
        let loss = |per_chunk: usize, together: bool| {
            let inputs = SequenceInputs {
                steps,
                batch,
                kinds: vec![xs.concat(), ys.concat()],
            };
            let replay = model.core.replay(&inputs).unwrap();
            let post = model
                .core
                .posterior_sequence_in_chunks(&replay.phi, per_chunk)
                .unwrap();
            let (before, after, kl) = if together {
                let (before, kl) = post.samples_and_kl(0, steps, &noise, None).unwrap();
                let (after, _) = post.samples_and_kl(1, steps, &noise, None).unwrap();
                (before, after, kl)
            } else {
                let before = post.samples(0, steps, &noise).unwrap();
                let after = post.samples(1, steps, &noise).unwrap();
                (before, after, post.kl(None).unwrap())
            };
            assert_eq!(before.dims(), &[steps, 2, batch, 4]);
            assert_eq!(after.dims(), &[steps, 2, batch, 4]);
            let mut total = (before.sqr().unwrap().sum_all().unwrap()
                + after.sin().unwrap().sum_all().unwrap())
            .unwrap();
            if let Some(kl) = kl {
                assert_eq!(kl.dims(), &[steps, batch]);
                total = (total + kl.sum_all().unwrap()).unwrap();
            }
            total
        };
        let whole = loss(steps + 1, false);
        for per_chunk in [1, 2, 3, steps + 1] {
            for together in [false, true] {
                let chunked = loss(per_chunk, together);
                let what = format!("{posterior}, {per_chunk} steps per chunk, together {together}");
                assert_close(&what, &values(&chunked), &values(&whole), 1.0);
                assert_same_gradients(&what, &model.params, &chunked, &whole);
            }
        }
    }
}

/// PPO's later epochs and minibatches (`ppo.epochs` > 1, `ppo.minibatches` > 1): the loss of
/// a minibatch of the rollout's tasks, evaluated after the parameters have moved away from the
/// rollout's, equals the per-step reference for every family — the rollout's head activations,
/// Cayley factors and Laplace statistics must not be reused there (the fingerprint guard).
#[test]
fn ppo_loss_after_a_parameter_step_on_a_minibatch_equals_the_per_step_reference() {
    lvrnn::init_threads(1);
    for task in ["bandit", "gridworld"] {
        for posterior in FAMILIES {
            let what = format!("{task} {posterior} (after a step, minibatch)");
            let cfg = rl_config(task, posterior, 5);
            let model = RlModel::for_experiment(&cfg).unwrap();
            jitter_biases(&model.params);
            let kind = env_kind(cfg.task).unwrap();
            let mut env = make_env(kind, cfg.train.batch, cfg.env.alpha_train as f32);
            let mut rng = ChaCha8Rng::seed_from_u64(11);
            let first = env.reset(&mut rng);
            let ro = rollout(
                &model,
                env.as_mut(),
                first,
                &mut rng,
                Keep::TRAINING,
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
            ppo.reward_loss_scale = lvrnn::config::reward_loss_scale(&cfg).unwrap();
            let beta = 0.5;
            // One gradient step away from the rollout's parameters.
            let first_loss = ppo_loss(&model, &ro, &adv, &targets, &ppo, beta).unwrap();
            let grads = first_loss.loss.backward().unwrap();
            for (_, var) in model.params.vars() {
                if let Some(g) = grads.get(var.as_tensor()) {
                    let g = g.clamp(-1.0, 1.0).unwrap();
                    var.set(&(var.as_tensor() - (g * 0.05).unwrap()).unwrap())
                        .unwrap();
                }
            }
            let tasks = [3usize, 0, 4];
            let sub = ro.select(&tasks).unwrap();
            let cols = |t: &[Vec<f32>]| -> Vec<Vec<f32>> {
                t.iter()
                    .map(|row| tasks.iter().map(|&k| row[k]).collect())
                    .collect()
            };
            let (adv, targets) = (cols(&adv), cols(&targets));
            let fast = ppo_loss(&model, &sub, &adv, &targets, &ppo, beta).unwrap();
            let slow = reference::ppo_loss(&model, &sub, &adv, &targets, &ppo, beta).unwrap();
            let scalars = |p: &lvrnn::train::ppo::LossParts| {
                vec![
                    p.loss.to_scalar::<f32>().unwrap() as f64,
                    p.policy_loss,
                    p.value_loss,
                    p.entropy,
                    p.kl.unwrap_or(0.0),
                    p.reward_loss.unwrap_or(0.0),
                    p.taken_log_prob,
                    p.approx_kl,
                ]
            };
            assert_close(
                &format!("{what}: loss parts"),
                &scalars(&fast),
                &scalars(&slow),
                1e-3,
            );
            assert!(
                fast.max_ratio_deviation > 1e-4,
                "{what}: the step moved the policy (max |ρ − 1| = {:.2e})",
                fast.max_ratio_deviation
            );
            assert_same_gradients(&what, &model.params, &fast.loss, &slow.loss);
        }
    }
}
