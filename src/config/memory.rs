//! How much memory a config needs, estimated before any tensor is allocated, so that an
//! impossible size (`[model] features = 100000000`) fails with a message naming the keys
//! instead of aborting the process with an allocation failure.
//!
//! The estimate covers one training update, in f32 numbers (4 bytes each):
//! - **parameters** P (embeddings, LSTM, projection, VRNN head, prediction / policy / value /
//!   reward heads, counted exactly as `Core::new`, `RegressionModel::new` and `RlModel::new`
//!   build them), held 4 times: the weights, their gradient and AdamW's two moments;
//! - **activations** the graph keeps for the backward pass, per row of R = batch × T rows
//!   (T = `train.seq_len` for regression, the environment's horizon for RL): the embeddings
//!   (3 × inputs × embed_width; regression only, as the RL inputs are embedded once per
//!   distinct row), the LSTM (8 × hidden), φ (2 × features) and each head's
//!   layer-norm input and layers before and after their activation (2 × widths), the heads
//!   once per posterior sample (n_z);
//! - **posterior buffers**: the full-covariance VRNN keeps (R, n, n) tensors in the graph (the
//!   Cayley map's U, kept from the rollout and formed per chunk in the loss pass, and the
//!   gradients flowing into it), counted as 2 of them (the measured peaks of README's
//!   performance table correspond to about 2.3); the diagonal VRNN R × n_z × n samples and 8
//!   R × n vectors; the Laplace filter 3 (B, n, n) f64 matrices per task (Λ_{t−1}, Λ_t, the
//!   Cholesky factor) and R × (n_z + 1) × n offsets and KL gradients (diagonal: vectors).
//!
//! The constants lean low (docs/performance.md's measured peaks are 1.5–3× the estimate), so a config this
//! refuses could not have run; one it accepts may still be close to the limit.

use super::{ExperimentConfig, Task, env_kind, policy_sees_state, reward_loss_scale};
use crate::envs::make_env;
use crate::posterior::PosteriorConfig;
use anyhow::{Result, bail};

/// Bytes per number (f32).
const BYTES: u128 = 4;
/// Copies of each parameter during an update: weights, gradient, AdamW m and v.
const PARAM_COPIES: u128 = 4;
/// (R, n, n) tensors the full-covariance VRNN keeps alive in one update: the rollout's U, kept
/// for the loss pass, and the loss pass's chunks with their gradients (measured ~2.3 at the
/// paper's sizes: bandit peak 813 MB against the RNN's 323 MB, (R, n, n) = 210 MB).
const VRNN_FULL_MATRICES: u128 = 2;
/// Where /proc/meminfo cannot be read: no machine this runs on is assumed to have more.
pub const FALLBACK_AVAILABLE_BYTES: u64 = 256 << 30;

/// The estimate for one training update, with the sizes it came from.
#[derive(Clone, Debug)]
pub struct MemoryEstimate {
    /// Number of model parameters.
    pub parameters: u128,
    /// Bytes of the parameters with their gradient and AdamW moments.
    pub parameter_bytes: u128,
    /// Bytes of the activations kept for the backward pass.
    pub activation_bytes: u128,
    /// Bytes of the posterior's buffers (covariances, precisions, samples).
    pub posterior_bytes: u128,
    /// The largest single tensor: a description and its number of elements.
    pub largest: (String, u128),
    /// Rows R = batch × T of the update.
    pub rows: u128,
    /// T and where it comes from (`train.seq_len = 50`, `the bandit horizon T = 50`).
    pub steps: (usize, String),
    /// Activation numbers per row, by the model key that sets their width.
    pub row_terms: Vec<(&'static str, u128)>,
}

fn mul(xs: &[u128]) -> u128 {
    xs.iter().fold(1u128, |a, &b| a.saturating_mul(b))
}

fn gb(bytes: u128) -> f64 {
    bytes as f64 / 1e9
}

/// Parameters of `Linear(i, o)`: weight and bias.
fn linear(i: u128, o: u128) -> u128 {
    mul(&[i, o]).saturating_add(o)
}

/// Tracks the parameter count and the largest tensor.
struct Tally {
    params: u128,
    largest: (String, u128),
}

impl Tally {
    fn tensor(&mut self, name: impl Fn() -> String, elements: u128) {
        if elements > self.largest.1 {
            self.largest = (name(), elements);
        }
    }
    fn linear(&mut self, name: &str, i: u128, o: u128) {
        self.params = self.params.saturating_add(linear(i, o));
        self.tensor(|| format!("{name}.weight ({i} × {o})"), mul(&[i, o]));
    }
    /// A `Head`: layer norm of the input, then the MLP d_in → hidden… → d_out.
    fn head(&mut self, name: &str, d_in: u128, hidden: &[usize], d_out: u128) {
        self.params = self.params.saturating_add(2 * d_in);
        let mut sizes = vec![d_in];
        sizes.extend(hidden.iter().map(|&h| h as u128));
        sizes.push(d_out);
        for (k, w) in sizes.windows(2).enumerate() {
            self.linear(&format!("{name}.mlp.{k}"), w[0], w[1]);
        }
    }
}

impl MemoryEstimate {
    /// The estimate for `cfg` (whose other keys are already valid).
    pub fn for_config(cfg: &ExperimentConfig) -> Result<Self> {
        let m = &cfg.model;
        let (e, h, n) = (m.embed_width as u128, m.hidden as u128, m.features as u128);
        let nz = m.n_z as u128;
        let batch = cfg.train.batch as u128;
        let mut t = Tally {
            params: 0,
            largest: (String::new(), 0),
        };
        // Inputs, heads and T per task.
        let (inputs, steps): (Vec<u128>, (usize, String)) = match cfg.task {
            Task::Regression => (
                vec![1, 1],
                (
                    cfg.train.seq_len,
                    format!("train.seq_len = {}", cfg.train.seq_len),
                ),
            ),
            Task::Bandit | Task::Gridworld => {
                let kind = env_kind(cfg.task)?;
                let env = make_env(kind, 1, cfg.env.alpha_train as f32);
                (
                    vec![env.obs_dim() as u128, env.num_actions() as u128, 1],
                    (
                        kind.horizon(),
                        format!("the {kind} horizon T = {} (fixed)", kind.horizon()),
                    ),
                )
            }
        };
        let k = inputs.len() as u128;
        for (i, d) in inputs.iter().enumerate() {
            t.linear(&format!("embed{i}.mlp.0"), *d, e);
            t.linear(&format!("embed{i}.mlp.1"), e, e);
            t.params = t.params.saturating_add(2 * e);
        }
        // LSTM: wx (K·E, 4H), wh (H, 4H), b (4H).
        let g4 = 4 * h;
        t.params = t
            .params
            .saturating_add(mul(&[k, e, g4]))
            .saturating_add(mul(&[h, g4]))
            .saturating_add(g4);
        t.tensor(|| format!("core.wx ({} × {g4})", k * e), mul(&[k, e, g4]));
        t.tensor(|| format!("core.wh ({h} × {g4})"), mul(&[h, g4]));
        t.linear("proj", h, n);
        if let PosteriorConfig::Vrnn { diagonal } = m.posterior {
            t.linear("vrnn.mean", n, n);
            t.linear("vrnn.log_s", n, n);
            if !diagonal {
                t.linear("vrnn.tri", n, mul(&[n, n]));
            }
        }
        // Head inputs, split by the key that sets their width: (embed_width part, features part).
        let mut head_inputs: Vec<(u128, u128)> = vec![];
        match cfg.task {
            Task::Regression => {
                t.head("pred", e.saturating_add(n), &m.head_hidden, 1);
                head_inputs.push((e, n));
                t.params = t.params.saturating_add(1);
            }
            Task::Bandit | Task::Gridworld => {
                let actions = inputs[1];
                let state = if policy_sees_state(cfg)? { e } else { 0 };
                let head_in = n.saturating_add(state);
                t.head("policy", head_in, &m.head_hidden, actions);
                t.head("value", head_in, &m.head_hidden, 1);
                head_inputs.extend([(state, n), (state, n)]);
                if reward_loss_scale(cfg)? > 0.0 {
                    t.head("reward", n.saturating_add(actions), &m.head_hidden, 1);
                    head_inputs.push((0, n));
                }
            }
        }
        let rows = mul(&[batch, steps.0 as u128]);
        // Activations per row, by the key that sets their width: embeddings, LSTM, φ, heads
        // (before and after each activation, once per sample).
        let sum = |xs: &mut dyn Iterator<Item = u128>| xs.fold(0u128, |a, b| a.saturating_add(b));
        let heads_e = sum(&mut head_inputs.iter().map(|h| h.0));
        let heads_n = sum(&mut head_inputs.iter().map(|h| h.1));
        let hidden_sum = sum(&mut m.head_hidden.iter().map(|&w| w as u128));
        // The bandit's and gridworld's inputs take a handful of values: the replay embeds each
        // distinct row once (`agent::replay`), so only regression embeds every row.
        let embedded = match cfg.task {
            Task::Regression => mul(&[3, k, e]),
            Task::Bandit | Task::Gridworld => 0,
        };
        let row_terms = vec![
            (
                "model.embed_width",
                embedded.saturating_add(mul(&[2, nz, heads_e])),
            ),
            ("model.hidden", 8 * h),
            (
                "model.features",
                (2 * n).saturating_add(mul(&[2, nz, heads_n])),
            ),
            (
                "model.head_hidden",
                mul(&[2, nz, head_inputs.len() as u128, hidden_sum]),
            ),
        ];
        let per_row = sum(&mut row_terms.iter().map(|r| r.1));
        let heads = heads_e.saturating_add(heads_n).max(hidden_sum);
        let widest_row = [k * e, g4, n, heads].into_iter().max().unwrap_or(0);
        t.tensor(
            || format!("activations (batch × T × n_z = {rows} × {nz} rows × {widest_row})"),
            mul(&[rows, nz, widest_row]),
        );
        let posterior = match &m.posterior {
            PosteriorConfig::Rnn => 0,
            PosteriorConfig::Vrnn { diagonal: true } => {
                mul(&[rows, nz, n]).saturating_add(mul(&[8, rows, n]))
            }
            PosteriorConfig::Vrnn { diagonal: false } => {
                t.tensor(
                    || format!("VRNN covariances (batch × T = {rows}, {n}, {n})"),
                    mul(&[rows, n, n]),
                );
                mul(&[VRNN_FULL_MATRICES, rows, n, n])
            }
            PosteriorConfig::Laplace(c) => {
                let per_task = if c.diagonal { n } else { mul(&[n, n]) };
                t.tensor(
                    || format!("Laplace precisions (batch = {batch}, {n}, {n}) in f64"),
                    mul(&[2, batch, per_task]),
                );
                // 3 f64 matrices per task = 6 f32-sized ones.
                mul(&[6, batch, per_task]).saturating_add(mul(&[rows, nz + 1, n]))
            }
        };
        Ok(Self {
            parameters: t.params,
            parameter_bytes: mul(&[PARAM_COPIES, t.params, BYTES]),
            activation_bytes: mul(&[rows, per_row, BYTES]),
            posterior_bytes: mul(&[posterior, BYTES]),
            largest: t.largest,
            rows,
            steps,
            row_terms,
        })
    }

    pub fn total_bytes(&self) -> u128 {
        self.parameter_bytes
            .saturating_add(self.activation_bytes)
            .saturating_add(self.posterior_bytes)
    }

    /// The keys that drive the largest part of the estimate, with their values, and what to
    /// change.
    fn advice(&self, cfg: &ExperimentConfig) -> String {
        let m = &cfg.model;
        let rows = format!("train.batch = {} × {} rows", cfg.train.batch, self.steps.1);
        let parts = [
            self.parameter_bytes,
            self.activation_bytes,
            self.posterior_bytes,
        ];
        let largest = (0..3).max_by_key(|&i| parts[i]).unwrap_or(0);
        match (largest, &m.posterior) {
            (0, PosteriorConfig::Vrnn { diagonal: false }) => format!(
                "the parameters dominate: the full-covariance VRNN head vrnn.tri has model.features³ weights (model.features = {}); reduce model.features or use [model.posterior] diagonal = true",
                m.features
            ),
            (0, _) => format!(
                "the parameters dominate: reduce model.features (= {}), model.hidden (= {}), model.embed_width (= {}) or model.head_hidden (= {:?})",
                m.features, m.hidden, m.embed_width, m.head_hidden
            ),
            (2, PosteriorConfig::Vrnn { .. }) => format!(
                "the VRNN's covariances dominate ({rows}, each model.features² = {}²): reduce model.features, train.batch, or use [model.posterior] diagonal = true",
                m.features
            ),
            (2, _) => format!(
                "the Laplace posterior dominates (train.batch = {} precisions of model.features² = {}², and {rows}): reduce model.features or train.batch, or use [model.posterior] diagonal = true",
                cfg.train.batch, m.features
            ),
            _ => {
                let mut terms = self.row_terms.clone();
                terms.sort_by_key(|t| std::cmp::Reverse(t.1));
                let widest = terms[0].0;
                let value = match widest {
                    "model.embed_width" => m.embed_width.to_string(),
                    "model.hidden" => m.hidden.to_string(),
                    "model.features" => m.features.to_string(),
                    _ => format!("{:?}", m.head_hidden),
                };
                format!(
                    "the activations dominate ({rows}, widest through {widest} = {value}, times model.n_z = {} samples): reduce {widest}, train.batch{}{}",
                    m.n_z,
                    if cfg.task == Task::Regression {
                        ", train.seq_len"
                    } else {
                        ""
                    },
                    if m.n_z > 1 { " or model.n_z" } else { "" }
                )
            }
        }
    }

    fn breakdown(&self) -> String {
        format!(
            "{} parameters with their gradient and AdamW moments {:.1} GB, activations {:.1} GB, posterior buffers {:.1} GB",
            self.parameters,
            gb(self.parameter_bytes),
            gb(self.activation_bytes),
            gb(self.posterior_bytes)
        )
    }
}

/// Refuses sizes no machine can hold, whatever its memory: a single tensor larger than one
/// allocation may be (isize::MAX bytes). Deterministic; part of `ExperimentConfig::validate`.
pub fn check_dimensions(cfg: &ExperimentConfig) -> Result<()> {
    let est = MemoryEstimate::for_config(cfg)?;
    let limit = isize::MAX as u128;
    let (name, elements) = &est.largest;
    if elements.saturating_mul(BYTES) > limit {
        bail!(
            "the config asks for a tensor {name} of {:.3e} numbers ({:.3e} GB), more than a single allocation can hold ({:.3e} GB); {}",
            *elements as f64,
            gb(elements.saturating_mul(BYTES)),
            gb(limit),
            est.advice(cfg)
        );
    }
    Ok(())
}

/// Memory this process can still allocate, in bytes, and where the number comes from:
/// `MemAvailable` of /proc/meminfo on Linux, else [`FALLBACK_AVAILABLE_BYTES`].
pub fn available_memory() -> (u64, &'static str) {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| parse_mem_available(&s))
        .map(|b| (b, "MemAvailable in /proc/meminfo"))
        .unwrap_or((
            FALLBACK_AVAILABLE_BYTES,
            "the fixed bound used without /proc/meminfo",
        ))
}

/// The `MemAvailable:` line of /proc/meminfo (in kB) in bytes.
pub fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

/// Refuses a config whose estimated memory for one training update exceeds `available` bytes
/// (`source` says where that number comes from), naming the keys that drive the size.
pub fn check_fits(cfg: &ExperimentConfig, available: u64, source: &str) -> Result<()> {
    let est = MemoryEstimate::for_config(cfg)?;
    if est.total_bytes() > available as u128 {
        bail!(
            "config `{}` needs an estimated {:.1} GB for one training update, more than the {:.1} GB available ({source}) — {}; {}",
            cfg.name,
            gb(est.total_bytes()),
            available as f64 / 1e9,
            est.breakdown(),
            est.advice(cfg)
        );
    }
    Ok(())
}

/// [`check_fits`] against this machine's available memory (the start of `lvrnn train`).
pub fn check_fits_machine(cfg: &ExperimentConfig) -> Result<()> {
    let (available, source) = available_memory();
    check_fits(cfg, available, source)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(task: &str, posterior: &str) -> ExperimentConfig {
        let mut c =
            ExperimentConfig::from_toml_str(&format!("name = \"m\"\ntask = \"{task}\"\n"), "t")
                .unwrap();
        c.model.posterior = posterior.parse().unwrap();
        c
    }

    /// The estimate is within the stated band of docs/performance.md's measured peaks (MB, paper sizes):
    /// at most the peak, and at least a third of it.
    #[test]
    fn estimates_lean_low_against_the_measured_peaks() {
        for (task, posterior, peak_mb) in [
            ("bandit", "rnn", 315.0),
            ("bandit", "vrnn", 922.0),
            ("gridworld", "rnn", 637.0),
            ("gridworld", "laplace", 763.0),
            ("gridworld", "vrnn", 1758.0),
            ("regression", "rnn", 428.0),
            ("regression", "vrnn", 963.0),
        ] {
            let mb = MemoryEstimate::for_config(&cfg(task, posterior))
                .unwrap()
                .total_bytes() as f64
                / 1e6;
            assert!(
                mb <= peak_mb && mb >= peak_mb / 3.0,
                "{task} {posterior}: estimate {mb:.0} MB against the measured {peak_mb} MB"
            );
        }
    }

    #[test]
    fn the_parameter_count_matches_the_built_model() {
        for posterior in ["rnn", "vrnn", "vrnn:diagonal=true", "laplace"] {
            let mut c = cfg("regression", posterior);
            c.model.features = 8;
            c.model.hidden = 16;
            c.model.embed_width = 12;
            c.model.head_hidden = vec![10, 6];
            let built = crate::agent::regression::RegressionModel::new(&c.model, 0).unwrap();
            let est = MemoryEstimate::for_config(&c).unwrap();
            assert_eq!(
                est.parameters,
                built.params.num_scalars() as u128,
                "{posterior}"
            );
        }
        for task in ["bandit", "gridworld"] {
            let c = cfg(task, "vrnn");
            let built = crate::agent::rl::RlModel::for_experiment(&c).unwrap();
            let est = MemoryEstimate::for_config(&c).unwrap();
            assert_eq!(est.parameters, built.params.num_scalars() as u128, "{task}");
        }
    }

    #[test]
    fn mem_available_is_read_in_bytes() {
        let text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   22000000 kB\n";
        assert_eq!(parse_mem_available(text), Some(22_000_000 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 5 kB\n"), None);
    }
}
