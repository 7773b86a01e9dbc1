//! The sparse-reward gridworld (paper Appendix B.4, after Zintgraf et al., 2021).
//!
//! An open `rows × cols` grid (5×5 by default). Each task draws a start and a goal cell uniformly
//! at random and distinct. Actions: 0 = up (row − 1), 1 = down (row + 1), 2 = left (col − 1),
//! 3 = right (col + 1); a move off the grid leaves the agent in place.
//!
//! **Timer semantics.** Every task keeps an episode timer, the number of steps taken since the
//! agent was last placed on its start cell (0 after `reset`). One `step`:
//! 1. moves the agent (or not, at a wall) and increments the timer;
//! 2. if the new cell is the goal: reward 1, the agent is put back on its start, discount 0
//!    (an episode ended), the timer restarts at 0;
//! 3. else if the timer has reached [`EPISODE_LEN`] = 15: reward 0, the agent is put back on its
//!    start, discount 0, the timer restarts at 0 (so an episode is at most 15 transitions, and
//!    the 15th transition of an episode that does not find the goal ends it);
//! 4. else: reward 0, discount 1.
//!
//! The observation is one-hot(row, rows) ⊕ one-hot(col, cols) (obs_dim 10 on 5×5) of the
//! position after the step, i.e. after any reset to the start. The goal is never observed.
//! A task lasts T = [`HORIZON`] = 100 interactions.
//!
//! **Regret.** The oracle knows the goal and walks a shortest path, d = |Δrow| + |Δcol| steps
//! (the Manhattan distance; the grid has no walls inside). Since d ≤ rows + cols − 2 = 8 ≤ 15 on
//! the 5×5 grid, it reaches the goal in every episode, so its reward sequence is deterministic:
//! 1 at steps d, 2d, 3d, … (1-based time index since `reset`) and 0 elsewhere. The regret of a
//! step at time index t is that oracle reward at t minus the agent's reward; its cumulative sum
//! floor(t/d) − (agent's hits up to t) is never negative.

use super::{MetaEnv, Step, one_hot_into};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Side length of the default grid.
pub const SIZE: usize = 5;
/// Steps without reaching the goal after which the agent is put back on its start.
pub const EPISODE_LEN: usize = 15;
/// Interactions per task T.
pub const HORIZON: usize = 100;
/// Number of actions (up, down, left, right).
pub const NUM_ACTIONS: usize = 4;

/// A grid cell (row, col).
pub type Cell = (usize, usize);

/// The cell reached from `pos` by `action` on a `rows × cols` grid (walls keep the agent in place).
pub fn move_cell(pos: Cell, action: usize, rows: usize, cols: usize) -> Cell {
    let (r, c) = pos;
    match action {
        0 => (r.saturating_sub(1), c),
        1 => ((r + 1).min(rows - 1), c),
        2 => (r, c.saturating_sub(1)),
        3 => (r, (c + 1).min(cols - 1)),
        _ => panic!("gridworld action {action} out of range 0..{NUM_ACTIONS}"),
    }
}

/// Manhattan distance, the length of a shortest path on the open grid.
pub fn manhattan(a: Cell, b: Cell) -> usize {
    a.0.abs_diff(b.0) + a.1.abs_diff(b.1)
}

/// The first action of a shortest path from `pos` to `goal` (vertical moves first), or `None`
/// when already there.
pub fn shortest_path_action(pos: Cell, goal: Cell) -> Option<usize> {
    if goal.0 < pos.0 {
        Some(0)
    } else if goal.0 > pos.0 {
        Some(1)
    } else if goal.1 < pos.1 {
        Some(2)
    } else if goal.1 > pos.1 {
        Some(3)
    } else {
        None
    }
}

/// The oracle's reward at 1-based time index `t` for a task whose goal is `d` steps from the
/// start (d ≤ [`EPISODE_LEN`]): 1 when t is a positive multiple of d.
pub fn oracle_reward(d: usize, t: usize) -> f32 {
    assert!(
        (1..=EPISODE_LEN).contains(&d),
        "oracle formula needs 1 ≤ d ≤ {EPISODE_LEN}, got {d}"
    );
    if t > 0 && t.is_multiple_of(d) {
        1.0
    } else {
        0.0
    }
}

/// A batch of B gridworld tasks.
#[derive(Clone, Debug)]
pub struct Gridworld {
    rows: usize,
    cols: usize,
    start: Vec<Cell>,
    goal: Vec<Cell>,
    pos: Vec<Cell>,
    timer: Vec<usize>,
    /// Steps taken since `reset` (the same for every task of the batch).
    t: usize,
}

impl Gridworld {
    /// A batch of `batch` tasks on the 5×5 grid (tasks are drawn by `reset`).
    pub fn new(batch: usize) -> Self {
        Self::with_size(batch, SIZE, SIZE)
    }

    /// A batch on a `rows × cols` grid (at least 2 cells, at most 64; the oracle formula
    /// additionally needs rows + cols − 2 ≤ 15).
    pub fn with_size(batch: usize, rows: usize, cols: usize) -> Self {
        assert!(
            rows >= 1 && cols >= 1 && rows * cols >= 2,
            "grid needs at least two cells"
        );
        assert!(rows * cols <= 64, "grid cells must fit a 64-bit mask");
        assert!(
            rows + cols - 2 <= EPISODE_LEN,
            "every goal must be reachable within one episode"
        );
        let mut g = Gridworld {
            rows,
            cols,
            start: vec![],
            goal: vec![],
            pos: vec![],
            timer: vec![],
            t: 0,
        };
        g.set_tasks(&vec![((0, 0), (rows - 1, cols - 1)); batch]);
        g.t = 0;
        g
    }

    /// Uses the given (start, goal) pairs as the tasks (the batch becomes `tasks.len()`), puts
    /// every agent on its start, zeroes the timers and the time index; returns the first
    /// observation.
    pub fn set_tasks(&mut self, tasks: &[(Cell, Cell)]) -> Vec<f32> {
        for &(s, g) in tasks {
            assert!(
                s.0 < self.rows && s.1 < self.cols,
                "start {s:?} off the grid"
            );
            assert!(
                g.0 < self.rows && g.1 < self.cols,
                "goal {g:?} off the grid"
            );
            assert_ne!(s, g, "start and goal must differ");
        }
        self.start = tasks.iter().map(|t| t.0).collect();
        self.goal = tasks.iter().map(|t| t.1).collect();
        self.pos = self.start.clone();
        self.timer = vec![0; tasks.len()];
        self.t = 0;
        self.observe()
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Start cell of task b (evaluation only).
    pub fn start(&self, b: usize) -> Cell {
        self.start[b]
    }
    /// Goal cell of task b (evaluation only).
    pub fn goal(&self, b: usize) -> Cell {
        self.goal[b]
    }
    /// Current cell of task b.
    pub fn position(&self, b: usize) -> Cell {
        self.pos[b]
    }
    /// Steps since task b's agent was last placed on its start.
    pub fn timer(&self, b: usize) -> usize {
        self.timer[b]
    }
    /// Steps taken since `reset`.
    pub fn time(&self) -> usize {
        self.t
    }

    /// Decodes one task's observation back into its cell.
    pub fn decode_obs(obs: &[f32], rows: usize, cols: usize) -> Cell {
        assert_eq!(obs.len(), rows + cols, "observation length");
        let r = obs[..rows]
            .iter()
            .position(|&v| v == 1.0)
            .expect("row one-hot");
        let c = obs[rows..]
            .iter()
            .position(|&v| v == 1.0)
            .expect("col one-hot");
        (r, c)
    }

    fn observe(&self) -> Vec<f32> {
        let d = self.rows + self.cols;
        let mut obs = vec![0.0; self.pos.len() * d];
        for (b, &(r, c)) in self.pos.iter().enumerate() {
            let o = &mut obs[b * d..(b + 1) * d];
            one_hot_into(&mut o[..self.rows], r);
            one_hot_into(&mut o[self.rows..], c);
        }
        obs
    }
}

impl MetaEnv for Gridworld {
    fn name(&self) -> &'static str {
        "gridworld"
    }
    fn batch(&self) -> usize {
        self.start.len()
    }
    fn obs_dim(&self) -> usize {
        self.rows + self.cols
    }
    fn num_actions(&self) -> usize {
        NUM_ACTIONS
    }
    fn horizon(&self) -> usize {
        HORIZON
    }

    /// For task 0, 1, …, B−1 in order: start uniform over the cells, then goal uniform over
    /// the other cells.
    fn reset(&mut self, rng: &mut ChaCha8Rng) -> Vec<f32> {
        let n = self.rows * self.cols;
        let tasks: Vec<(Cell, Cell)> = (0..self.start.len())
            .map(|_| {
                let s = rng.gen_range(0..n);
                let mut g = rng.gen_range(0..n - 1);
                if g >= s {
                    g += 1;
                }
                (
                    (s / self.cols, s % self.cols),
                    (g / self.cols, g % self.cols),
                )
            })
            .collect();
        self.set_tasks(&tasks)
    }

    /// See the module documentation for the exact semantics. Uses no randomness.
    fn step(&mut self, actions: &[usize], _rng: &mut ChaCha8Rng) -> Step {
        let b = self.start.len();
        assert_eq!(actions.len(), b, "one action per task");
        self.t += 1;
        let mut reward = vec![0.0; b];
        let mut discount = vec![1.0; b];
        let mut regret = vec![0.0; b];
        for i in 0..b {
            let next = move_cell(self.pos[i], actions[i], self.rows, self.cols);
            self.timer[i] += 1;
            if next == self.goal[i] {
                reward[i] = 1.0;
                discount[i] = 0.0;
                self.pos[i] = self.start[i];
                self.timer[i] = 0;
            } else if self.timer[i] >= EPISODE_LEN {
                discount[i] = 0.0;
                self.pos[i] = self.start[i];
                self.timer[i] = 0;
            } else {
                self.pos[i] = next;
            }
            let d = manhattan(self.start[i], self.goal[i]);
            regret[i] = oracle_reward(d, self.t) - reward[i];
        }
        Step {
            obs: self.observe(),
            reward,
            discount,
            regret,
        }
    }

    fn task_params(&self) -> Vec<Vec<f32>> {
        self.start
            .iter()
            .zip(&self.goal)
            .map(|(s, g)| vec![s.0 as f32, s.1 as f32, g.0 as f32, g.1 as f32])
            .collect()
    }
}
