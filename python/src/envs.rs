//! The paper's two RL task distributions for Python (`lvrnn.envs`, `lvrnn.references`):
//! - [`PyTaskBatch`]: B tasks of the Rust `Bandit` or `Gridworld`, stepped together in one call,
//!   one meta-episode (one task, T interactions) at a time;
//! - [`reference_runs`]: the reference policies of `envs::reference` on the same tasks;
//! - [`bandit_belief`], [`grid_belief`]: the exact belief after a history (the particle
//!   posterior of the bandit references; the goal cells a gridworld history leaves possible).
//!
//! **Tasks and seeds.** Task i under seed s is the one `lvrnn reference --seed s` and
//! `lvrnn eval` draw for i: the first thing drawn from `task_rng(s, i)`. A bandit task then
//! draws its rewards from the rest of that same stream (one uniform per pull), so a batch of
//! tasks i = first, …, first + B − 1 plays exactly like each task alone; the gridworld draws
//! nothing after its task. No dynamics here: every step is the Rust environment's.

use lvrnn::envs::MetaEnv;
use lvrnn::envs::bandit::{Bandit, NUM_ARMS};
use lvrnn::envs::gridworld::{self, Cell, Gridworld, move_cell};
use lvrnn::envs::reference::{
    BanditPolicy, DirichletParticles, GridPolicy, PolicyTraces, Trace, format_reference_table,
    run_bandit, run_grid, table_from_traces, task_rng,
};
use numpy::{PyArrayDyn, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::{array, guarded};

/// Largest grid side: every cell within one inner episode (2·(size − 1) ≤ 15) and a 64-bit mask.
const MAX_SIZE: usize = 8;

/// Which task distribution, from the Python name.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bandit,
    Grid,
}

fn kind(env: &str) -> anyhow::Result<Kind> {
    match env {
        "bandit" => Ok(Kind::Bandit),
        "gridworld" => Ok(Kind::Grid),
        other => anyhow::bail!("env = {other:?} is not valid; allowed values: bandit, gridworld"),
    }
}

/// The checks of the task-distribution arguments shared by the environments and the references.
fn check_args(kind: Kind, horizon: usize, alpha: f64, size: usize) -> anyhow::Result<()> {
    if horizon == 0 {
        anyhow::bail!("horizon = 0 is not valid: a task needs T >= 1 interactions");
    }
    match kind {
        Kind::Bandit if !(alpha > 0.0 && alpha.is_finite()) => {
            anyhow::bail!(
                "alpha = {alpha} is not valid: the Dirichlet concentration must be a finite number > 0"
            )
        }
        Kind::Grid if !(2..=MAX_SIZE).contains(&size) => anyhow::bail!(
            "size = {size} is not valid: the grid side must be 2 to {MAX_SIZE} (every cell reachable within an inner episode of {} steps)",
            gridworld::EPISODE_LEN
        ),
        _ => Ok(()),
    }
}

/// Task `i` under `seed`: a batch-1 environment holding it, its first observation and the rest
/// of the task's stream (what `simulate_policies` and `eval::rl::test_env` draw).
fn draw_bandit(alpha: f64, seed: u64, i: u64) -> (Bandit, ChaCha8Rng) {
    let mut rng = task_rng(seed, i as usize);
    let mut env = Bandit::new(1, alpha as f32);
    env.reset(&mut rng);
    (env, rng)
}

fn draw_grid(size: usize, seed: u64, i: u64) -> (Gridworld, Vec<f32>, ChaCha8Rng) {
    let mut rng = task_rng(seed, i as usize);
    let mut env = Gridworld::with_size(1, size, size);
    let obs = env.reset(&mut rng);
    (env, obs, rng)
}

enum Tasks {
    /// The tasks' arm probabilities, and each task's own reward stream.
    Bandit { env: Bandit, rngs: Vec<ChaCha8Rng> },
    /// The gridworld uses no randomness when stepped (`rng` is never drawn from).
    Grid {
        env: Gridworld,
        rng: Box<ChaCha8Rng>,
    },
}

/// B tasks stepped together, one meta-episode of T interactions each (see `lvrnn.envs`).
#[pyclass(name = "TaskBatch", module = "lvrnn._lvrnn")]
pub struct PyTaskBatch {
    tasks: Tasks,
    alpha: f64,
    horizon: usize,
    /// Interactions so far in this meta-episode.
    t: usize,
    regret: Vec<f64>,
    returns: Vec<f64>,
}

impl PyTaskBatch {
    fn batch(&self) -> usize {
        self.regret.len()
    }
    fn begin(&mut self) {
        self.t = 0;
        self.regret.iter_mut().for_each(|v| *v = 0.0);
        self.returns.iter_mut().for_each(|v| *v = 0.0);
    }
    fn obs_dim(&self) -> usize {
        match &self.tasks {
            Tasks::Bandit { .. } => 1,
            Tasks::Grid { env, .. } => env.obs_dim(),
        }
    }
    fn observe<'py>(
        &self,
        py: Python<'py>,
        obs: Vec<f32>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        array(py, obs, &[self.batch(), self.obs_dim()])
    }
}

#[pymethods]
impl PyTaskBatch {
    /// `env`: "bandit" or "gridworld"; `num_envs` tasks of `horizon` interactions; `alpha` the
    /// bandit's Dirichlet concentration, `size` the grid's side (each ignored by the other env).
    #[new]
    fn new(env: &str, num_envs: usize, horizon: usize, alpha: f64, size: usize) -> PyResult<Self> {
        guarded(|| {
            let k = kind(env)?;
            if num_envs == 0 {
                anyhow::bail!("num_envs = 0 is not valid: at least one task");
            }
            check_args(k, horizon, alpha, size)?;
            let tasks = match k {
                Kind::Bandit => Tasks::Bandit {
                    env: Bandit::new(num_envs, alpha as f32),
                    rngs: (0..num_envs).map(|i| task_rng(0, i)).collect(),
                },
                Kind::Grid => Tasks::Grid {
                    env: Gridworld::with_size(num_envs, size, size),
                    rng: Box::new(ChaCha8Rng::seed_from_u64(0)),
                },
            };
            Ok(Self {
                tasks,
                alpha,
                horizon,
                t: 0,
                regret: vec![0.0; num_envs],
                returns: vec![0.0; num_envs],
            })
        })
    }

    /// Starts tasks `first`, …, `first + B − 1` under `seed`; the first observation (B, obs_dim).
    fn reset<'py>(
        &mut self,
        py: Python<'py>,
        seed: u64,
        first: u64,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let b = self.batch() as u64;
        let alpha = self.alpha;
        let obs = match &mut self.tasks {
            Tasks::Bandit { env, rngs } => {
                let drawn: Vec<_> = (first..first + b)
                    .map(|i| draw_bandit(alpha, seed, i))
                    .collect();
                let probs: Vec<[f64; NUM_ARMS]> = drawn.iter().map(|(e, _)| e.probs()[0]).collect();
                *rngs = drawn.into_iter().map(|(_, r)| r).collect();
                env.set_probs(&probs)
            }
            Tasks::Grid { env, .. } => {
                let size = env.rows();
                let cells: Vec<(Cell, Cell)> = (first..first + b)
                    .map(|i| {
                        let (e, _, _) = draw_grid(size, seed, i);
                        (e.start(0), e.goal(0))
                    })
                    .collect();
                env.set_tasks(&cells)
            }
        };
        self.begin();
        self.observe(py, obs)
    }

    /// Starts the given tasks: bandit (B, 5) arm probabilities in [0, 1], gridworld (B, 4)
    /// cells (start row, start col, goal row, goal col); rewards of the bandit then come from
    /// the streams of tasks `first`, … under `seed`. The first observation (B, obs_dim).
    fn set_tasks<'py>(
        &mut self,
        py: Python<'py>,
        params: PyReadonlyArrayDyn<'py, f64>,
        seed: u64,
        first: u64,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let b = self.batch();
        let shape = params.shape().to_vec();
        let v = params.as_array().iter().copied().collect::<Vec<f64>>();
        let obs = guarded(|| match &mut self.tasks {
            Tasks::Bandit { env, rngs } => {
                if shape != [b, NUM_ARMS] {
                    anyhow::bail!(
                        "options['task'] has shape {shape:?}; expected ({b}, {NUM_ARMS}) arm probabilities"
                    );
                }
                if let Some(x) = v.iter().find(|x| !(0.0..=1.0).contains(*x)) {
                    anyhow::bail!(
                        "options['task'] holds {x}; arm probabilities must lie in [0, 1]"
                    );
                }
                let probs: Vec<[f64; NUM_ARMS]> = v
                    .chunks(NUM_ARMS)
                    .map(|c| c.try_into().expect("5 arms"))
                    .collect();
                *rngs = (first..first + b as u64)
                    .map(|i| draw_bandit(self.alpha, seed, i).1)
                    .collect();
                Ok(env.set_probs(&probs))
            }
            Tasks::Grid { env, .. } => {
                let n = env.rows();
                if shape != [b, 4] {
                    anyhow::bail!(
                        "options['task'] has shape {shape:?}; expected ({b}, 4) cells (start row, start col, goal row, goal col)"
                    );
                }
                if let Some(x) = v
                    .iter()
                    .find(|x| !(x.fract() == 0.0 && (0.0..n as f64).contains(*x)))
                {
                    anyhow::bail!(
                        "options['task'] holds {x}; a cell coordinate is an integer in 0..{n}"
                    );
                }
                let cells: Vec<(Cell, Cell)> = v
                    .chunks(4)
                    .map(|c| {
                        (
                            (c[0] as usize, c[1] as usize),
                            (c[2] as usize, c[3] as usize),
                        )
                    })
                    .collect();
                if let Some((s, _)) = cells.iter().find(|(s, g)| s == g) {
                    anyhow::bail!(
                        "options['task'] puts the start and the goal on the same cell {s:?}; they must differ"
                    );
                }
                Ok(env.set_tasks(&cells))
            }
        })?;
        self.begin();
        self.observe(py, obs)
    }

    /// One interaction of every task: `actions` (B,) int64. Returns (obs (B, obs_dim) float32,
    /// reward (B,) float64, inner_done (B,) bool or None for the bandit: an inner episode of
    /// the gridworld ended with this step, truncated: the meta-episode ended, t = T).
    #[allow(clippy::type_complexity)]
    fn step<'py>(
        &mut self,
        py: Python<'py>,
        actions: PyReadonlyArrayDyn<'py, i64>,
    ) -> PyResult<(
        Bound<'py, PyArrayDyn<f32>>,
        Bound<'py, PyArrayDyn<f64>>,
        Option<Bound<'py, PyArrayDyn<bool>>>,
        bool,
    )> {
        let b = self.batch();
        let a = actions.as_slice()?;
        let n_actions = self.num_actions();
        guarded(|| {
            if a.len() != b || actions.shape().len() != 1 {
                anyhow::bail!(
                    "actions has shape {:?}; expected ({b},), one action per task",
                    actions.shape()
                );
            }
            if let Some((i, x)) = a
                .iter()
                .enumerate()
                .find(|(_, x)| !(0..n_actions as i64).contains(*x))
            {
                anyhow::bail!("actions[{i}] = {x} is out of range: actions are 0..{n_actions}");
            }
            if self.t >= self.horizon {
                anyhow::bail!(
                    "step after the end of the task (t = T = {}): call reset",
                    self.horizon
                );
            }
            Ok(())
        })?;
        let mut reward = vec![0f64; b];
        let (obs, done) = match &mut self.tasks {
            Tasks::Bandit { env, rngs } => {
                for (i, (&arm, rng)) in a.iter().zip(rngs.iter_mut()).enumerate() {
                    let (r, g) = env.pull(i, arm as usize, rng);
                    reward[i] = r as f64;
                    self.regret[i] += g as f64;
                    self.returns[i] += r as f64;
                }
                (vec![1.0; b], None)
            }
            Tasks::Grid { env, rng } => {
                let acts: Vec<usize> = a.iter().map(|&x| x as usize).collect();
                let s = env.step(&acts, rng);
                for (i, out) in reward.iter_mut().enumerate() {
                    *out = s.reward[i] as f64;
                    self.regret[i] += s.regret[i] as f64;
                    self.returns[i] += s.reward[i] as f64;
                }
                let done: Vec<bool> = s.discount.iter().map(|&d| d == 0.0).collect();
                (s.obs, Some(done))
            }
        };
        self.t += 1;
        let done = done.map(|d| array(py, d, &[b])).transpose()?;
        Ok((
            self.observe(py, obs)?,
            array(py, reward, &[b])?,
            done,
            self.t == self.horizon,
        ))
    }

    /// The tasks' parameters (evaluation only): bandit (B, 5) arm probabilities, gridworld
    /// (B, 4) start row, start col, goal row, goal col.
    fn task_params<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArrayDyn<f64>>> {
        let (v, k): (Vec<f64>, usize) = match &self.tasks {
            Tasks::Bandit { env, .. } => {
                (env.probs().iter().flatten().copied().collect(), NUM_ARMS)
            }
            Tasks::Grid { env, .. } => (
                (0..self.batch())
                    .flat_map(|i| {
                        let (s, g) = (env.start(i), env.goal(i));
                        [s.0 as f64, s.1 as f64, g.0 as f64, g.1 as f64]
                    })
                    .collect(),
                4,
            ),
        };
        array(py, v, &[self.batch(), k])
    }

    /// Cumulative regret of each task so far in this meta-episode (B,) (evaluation only).
    fn regret<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArrayDyn<f64>>> {
        array(py, self.regret.clone(), &[self.batch()])
    }

    /// Cumulative reward of each task so far in this meta-episode (B,).
    fn returns<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArrayDyn<f64>>> {
        array(py, self.returns.clone(), &[self.batch()])
    }

    #[getter]
    fn t(&self) -> usize {
        self.t
    }
    #[getter]
    fn horizon(&self) -> usize {
        self.horizon
    }
    #[getter]
    fn num_envs(&self) -> usize {
        self.batch()
    }
    #[getter]
    fn num_actions(&self) -> usize {
        match &self.tasks {
            Tasks::Bandit { .. } => NUM_ARMS,
            Tasks::Grid { .. } => gridworld::NUM_ACTIONS,
        }
    }
    #[getter]
    fn observation_size(&self) -> usize {
        self.obs_dim()
    }
}

/// Every reference policy of `env` on tasks `first`, …, `first + tasks − 1` under `seed` for
/// `horizon` interactions: per policy {actions (N, T) int64, reward, regret (N, T) float64,
/// ess (N, T) or None}, in table order under "policies", and the table of `lvrnn reference`
/// at `checkpoints` ("table": its text; "rows": its rows as dicts). The runs are those of
/// `simulate_policies` (the same tasks, policies and random streams), with T, the grid's size
/// and the first task free.
#[pyfunction]
#[pyo3(signature = (env, tasks, seed, first, horizon, alpha, size, particles, checkpoints))]
#[allow(clippy::too_many_arguments)]
pub fn reference_runs<'py>(
    py: Python<'py>,
    env: &str,
    tasks: usize,
    seed: u64,
    first: u64,
    horizon: usize,
    alpha: f64,
    size: usize,
    particles: usize,
    checkpoints: Vec<usize>,
) -> PyResult<Bound<'py, PyDict>> {
    let k = guarded(|| {
        let k = kind(env)?;
        check_args(k, horizon, alpha, size)?;
        if tasks == 0 {
            anyhow::bail!("tasks = 0 is not valid: at least one task");
        }
        if particles == 0 {
            anyhow::bail!("particles = 0 is not valid: at least one particle");
        }
        if let Some(t) = checkpoints.iter().find(|t| !(1..=horizon).contains(*t)) {
            anyhow::bail!("checkpoints holds {t}; a checkpoint is a step 1..=horizon ({horizon})");
        }
        Ok(k)
    })?;
    let sims: Vec<PolicyTraces> = py.allow_threads(|| {
        let ids: Vec<u64> = (first..first + tasks as u64).collect();
        let run = |name: &str, one: &(dyn Fn(u64) -> Trace + Sync)| PolicyTraces {
            policy: name.to_string(),
            traces: ids.par_iter().map(|&i| one(i)).collect(),
        };
        match k {
            Kind::Bandit => BanditPolicy::ALL
                .iter()
                .map(|&p| {
                    run(p.name(), &|i| {
                        let (mut e, mut rng) = draw_bandit(alpha, seed, i);
                        run_bandit(p, &mut e, horizon, particles, &mut rng)
                    })
                })
                .collect(),
            Kind::Grid => GridPolicy::ALL
                .iter()
                .map(|&p| {
                    run(p.name(), &|i| {
                        let (mut e, obs, mut rng) = draw_grid(size, seed, i);
                        run_grid(p, &mut e, &obs, horizon, &mut rng)
                    })
                })
                .collect(),
        }
    });
    let (n, t) = (tasks, horizon);
    let out = PyDict::new(py);
    let names = PyList::empty(py);
    for sim in &sims {
        let d = PyDict::new(py);
        let flat = |f: &dyn Fn(&Trace) -> &Vec<f64>| {
            sim.traces
                .iter()
                .flat_map(|tr| f(tr).iter().copied())
                .collect::<Vec<f64>>()
        };
        let actions: Vec<i64> = sim
            .traces
            .iter()
            .flat_map(|tr| tr.actions.iter().map(|&a| a as i64))
            .collect();
        d.set_item("actions", array(py, actions, &[n, t])?)?;
        d.set_item("reward", array(py, flat(&|tr| &tr.reward), &[n, t])?)?;
        d.set_item("regret", array(py, flat(&|tr| &tr.regret), &[n, t])?)?;
        if sim.traces[0].ess.is_empty() {
            d.set_item("ess", py.None())?;
        } else {
            d.set_item("ess", array(py, flat(&|tr| &tr.ess), &[n, t])?)?;
        }
        names.append(&sim.policy)?;
        out.set_item(&sim.policy, d)?;
    }
    out.set_item("policies", names)?;
    let rows = table_from_traces(&sims, &checkpoints);
    out.set_item("table", format_reference_table(&rows))?;
    let list = PyList::empty(py);
    for r in &rows {
        let d = PyDict::new(py);
        d.set_item("policy", &r.policy)?;
        d.set_item("t", r.t)?;
        d.set_item("return_mean", r.return_mean)?;
        d.set_item("return_ci99", r.return_ci99)?;
        d.set_item("regret_mean", r.regret_mean)?;
        d.set_item("regret_ci99", r.regret_ci99)?;
        d.set_item("ess_mean", r.ess_mean)?;
        list.append(d)?;
    }
    out.set_item("rows", list)?;
    Ok(out)
}

/// (B, T) of a (B, T) array, named `name` in the error.
fn batch_shape(name: &str, shape: &[usize]) -> anyhow::Result<(usize, usize)> {
    match shape {
        [b, t] => Ok((*b, *t)),
        _ => anyhow::bail!(
            "{name} has shape {shape:?}; expected (B, T) (add a leading axis for one history)"
        ),
    }
}

/// The particle posterior of the bandit references along histories: `actions` (B, T) int64 and
/// `rewards` (B, T) 0/1, history b played on task `tasks[b]` under `seed` (the particles are
/// the ones `thompson_is`, `greedy_is` and `knowledge_gradient` draw on that task). Returns
/// {mean (B, T+1, 5), ess (B, T+1)} (t = 0: the prior) and, with `return_particles`, the
/// particles (B, N, 5) and their weights after the whole history (B, N).
#[pyfunction]
#[pyo3(signature = (actions, rewards, tasks, seed, alpha, particles, return_particles))]
#[allow(clippy::too_many_arguments)]
pub fn bandit_belief<'py>(
    py: Python<'py>,
    actions: PyReadonlyArrayDyn<'py, i64>,
    rewards: PyReadonlyArrayDyn<'py, f64>,
    tasks: PyReadonlyArrayDyn<'py, i64>,
    seed: u64,
    alpha: f64,
    particles: usize,
    return_particles: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let (a, r, ids) = (actions.as_slice()?, rewards.as_slice()?, tasks.as_slice()?);
    let (b, t) = guarded(|| {
        let (b, t) = batch_shape("actions", actions.shape())?;
        if rewards.shape() != actions.shape() {
            anyhow::bail!(
                "rewards has shape {:?}; expected that of actions {:?}",
                rewards.shape(),
                actions.shape()
            );
        }
        if tasks.shape() != [b] {
            anyhow::bail!(
                "tasks has shape {:?}; expected ({b},), one task index per history",
                tasks.shape()
            );
        }
        if let Some(i) = a.iter().position(|x| !(0..NUM_ARMS as i64).contains(x)) {
            anyhow::bail!(
                "actions[{}, {}] = {} is out of range: arms are 0..{NUM_ARMS}",
                i / t,
                i % t,
                a[i]
            );
        }
        if let Some(i) = r.iter().position(|&x| x != 0.0 && x != 1.0) {
            anyhow::bail!(
                "rewards[{}, {}] = {} is not a bandit reward (0 or 1)",
                i / t,
                i % t,
                r[i]
            );
        }
        if let Some(x) = ids.iter().find(|&&x| x < 0) {
            anyhow::bail!("tasks holds {x}; a task index is >= 0");
        }
        check_args(Kind::Bandit, 1, alpha, 0)?;
        if particles == 0 {
            anyhow::bail!("particles = 0 is not valid: at least one particle");
        }
        Ok((b, t))
    })?;
    // The references hold α as the environment's f32 (`Bandit::alpha`): the same particles.
    let alpha = alpha as f32 as f64;
    let posts: Vec<(Vec<f64>, Vec<f64>, DirichletParticles)> = py.allow_threads(|| {
        (0..b)
            .into_par_iter()
            .map(|k| {
                let (_, mut rng) = draw_bandit(alpha, seed, ids[k] as u64);
                let mut child = ChaCha8Rng::from_seed(rng.r#gen());
                let mut post = DirichletParticles::new(alpha, particles, &mut child);
                let (mut mean, mut ess) = (post.mean().to_vec(), vec![post.ess()]);
                for s in 0..t {
                    post.update(a[k * t + s] as usize, r[k * t + s] == 1.0);
                    mean.extend(post.mean());
                    ess.push(post.ess());
                }
                (mean, ess, post)
            })
            .collect()
    });
    let d = PyDict::new(py);
    let mean: Vec<f64> = posts.iter().flat_map(|p| p.0.iter().copied()).collect();
    let ess: Vec<f64> = posts.iter().flat_map(|p| p.1.iter().copied()).collect();
    d.set_item("mean", array(py, mean, &[b, t + 1, NUM_ARMS])?)?;
    d.set_item("ess", array(py, ess, &[b, t + 1])?)?;
    if return_particles {
        let p: Vec<f64> = posts
            .iter()
            .flat_map(|p| p.2.particles().iter().flatten().copied())
            .collect();
        let w: Vec<f64> = posts
            .iter()
            .flat_map(|p| p.2.weights().iter().copied())
            .collect();
        d.set_item("particles", array(py, p, &[b, particles, NUM_ARMS])?)?;
        d.set_item("weights", array(py, w, &[b, particles])?)?;
    }
    Ok(d)
}

/// The goal cells a gridworld history leaves possible, after each step: `observations`
/// (B, T+1, 2·size) as the environment returns them (t = 0: the start), `actions` (B, T),
/// `rewards` (B, T) 0/1. The goal is uniform over the cells other than the start; a cell
/// stepped on without reward is not the goal, a reward names it. Returns (B, T+1, size, size)
/// bool. A history no gridworld can produce (a reward on a cell already ruled out, an
/// observation that is neither the cell moved to nor the start) is a `ValueError`.
#[pyfunction]
pub fn grid_belief<'py>(
    py: Python<'py>,
    observations: PyReadonlyArrayDyn<'py, f32>,
    actions: PyReadonlyArrayDyn<'py, i64>,
    rewards: PyReadonlyArrayDyn<'py, f64>,
    size: usize,
) -> PyResult<Bound<'py, PyArrayDyn<bool>>> {
    let (o, a, r) = (
        observations.as_slice()?,
        actions.as_slice()?,
        rewards.as_slice()?,
    );
    let (b, t, masks) = guarded(|| {
        check_args(Kind::Grid, 1, 1.0, size)?;
        let (b, t) = batch_shape("actions", actions.shape())?;
        if rewards.shape() != actions.shape() {
            anyhow::bail!(
                "rewards has shape {:?}; expected that of actions {:?}",
                rewards.shape(),
                actions.shape()
            );
        }
        let d = 2 * size;
        if observations.shape() != [b, t + 1, d] {
            anyhow::bail!(
                "observations has shape {:?}; expected (B, T+1, 2·size) = ({b}, {}, {d}): the first observation then one per step",
                observations.shape(),
                t + 1
            );
        }
        let cells = size * size;
        let bit = |c: Cell| 1u64 << (c.0 * size + c.1);
        let decode = |k: usize, s: usize| -> anyhow::Result<Cell> {
            let v = &o[(k * (t + 1) + s) * d..(k * (t + 1) + s + 1) * d];
            if !one_hot_pair(v, size) {
                anyhow::bail!(
                    "observations[{k}, {s}] = {v:?} is not a one-hot row then a one-hot column of a {size}×{size} grid"
                );
            }
            Ok(Gridworld::decode_obs(v, size, size))
        };
        let mut masks = Vec::with_capacity(b * (t + 1) * cells);
        for k in 0..b {
            let start = decode(k, 0)?;
            let full = if cells == 64 {
                u64::MAX
            } else {
                (1u64 << cells) - 1
            };
            let mut possible = full & !bit(start);
            let mut pos = start;
            let push =
                |m: u64, masks: &mut Vec<bool>| masks.extend((0..cells).map(|i| m >> i & 1 == 1));
            push(possible, &mut masks);
            for s in 0..t {
                let act = a[k * t + s];
                if !(0..gridworld::NUM_ACTIONS as i64).contains(&act) {
                    anyhow::bail!(
                        "actions[{k}, {s}] = {act} is out of range: actions are 0..{}",
                        gridworld::NUM_ACTIONS
                    );
                }
                let target = move_cell(pos, act as usize, size, size);
                let next = decode(k, s + 1)?;
                match r[k * t + s] {
                    1.0 => {
                        if possible & bit(target) == 0 {
                            anyhow::bail!(
                                "history {k} is impossible: a reward at step {} on cell {target:?}, which the history had already ruled out as the goal",
                                s + 1
                            );
                        }
                        possible = bit(target);
                        if next != start {
                            anyhow::bail!(
                                "history {k} is impossible: after the reward at step {} the agent is back on its start {start:?}, not on {next:?}",
                                s + 1
                            );
                        }
                    }
                    0.0 => {
                        possible &= !bit(target);
                        if possible == 0 {
                            anyhow::bail!(
                                "history {k} is impossible: no reward on {target:?} at step {} leaves no cell for the goal",
                                s + 1
                            );
                        }
                        if next != target && next != start {
                            anyhow::bail!(
                                "history {k} is impossible: step {} moves from {pos:?} to {target:?}, but the next observation is {next:?} (neither that cell nor the start)",
                                s + 1
                            );
                        }
                    }
                    x => {
                        anyhow::bail!("rewards[{k}, {s}] = {x} is not a gridworld reward (0 or 1)")
                    }
                }
                pos = next;
                push(possible, &mut masks);
            }
        }
        Ok((b, t, masks))
    })?;
    array(py, masks, &[b, t + 1, size, size])
}

/// Whether `v` is a one-hot row then a one-hot column of a `size`×`size` grid.
fn one_hot_pair(v: &[f32], size: usize) -> bool {
    let one_hot = |v: &[f32]| {
        v.iter().all(|&x| x == 0.0 || x == 1.0) && v.iter().filter(|&&x| x == 1.0).count() == 1
    };
    v.len() == 2 * size && one_hot(&v[..size]) && one_hot(&v[size..])
}
