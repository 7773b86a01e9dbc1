//! The Bayes-optimal search of the gridworld over the whole horizon, exactly.
//!
//! **Reduction.** The goal is uniform over the cells other than the start s, and never observed;
//! before the agent steps on it, every reward is 0 and every position is determined by the
//! actions, so a policy is, until the goal is found, one fixed action sequence (an open-loop
//! search path, put back on s at every episode end t = L, 2L, …). Once the goal g is found at
//! time τ the agent is on s with a fresh episode, and the best it can do is walk a shortest path
//! each time: d = |s − g|₁ ≤ L steps per reward, floor((T − τ)/d) more rewards. So the return
//! given g is R(g) = 1 + floor((T − τ_g)/d_g) if the path first visits g at τ_g ≤ T, else 0, and
//! the Bayes-optimal expected return is
//!
//!   V*(s) = max over paths of (1 / (n − 1)) Σ_{g ≠ s} R(g),
//!
//! a deterministic path problem with time-dependent rewards on first visits.
//!
//! **Search.** Depth-first branch and bound over (position, visited set, time), exact:
//! - moves into a wall are skipped (dropping a wall bump makes every later visit no later);
//! - bound: the k-th newly visited cell of the rest of the path comes at a distinct time, no
//!   earlier than its earliest reachable time e_c (Manhattan distance from here within this
//!   episode, else the next episode start plus its distance from s), and is worth at most
//!   1 + (T − τ)/d_c. The best assignment of cells to distinct times τ ≥ e_c of these linear
//!   values is the greedy one (at each time the available cell with the largest 1/d_c; an
//!   exchange argument), an upper bound on what is still obtainable;
//! - dominance: a state with the same position and visited set, reached no later, with at least
//!   as many steps left in its episode and at least the same value, can repeat the other's
//!   future (shifted earlier; spare steps only add visits), so the other is pruned.
//!
//! On the 5×5 grid (T = 100, L = 15) one start takes 40–80 thousand nodes, well under a second.
//! `tests/grid_bayes.rs` checks the search against exhaustive dynamic programming over
//! (visited set, position, time), wall bumps included, on small grids and short 5×5 horizons.

use super::gridworld::{Cell, manhattan, move_cell};
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, OnceLock};

/// One search problem: the grid, the start, the horizon T and the episode length L.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SearchProblem {
    pub rows: usize,
    pub cols: usize,
    pub start: Cell,
    pub horizon: usize,
    pub episode_len: usize,
}

/// The optimal search path of a [`SearchProblem`] and its value.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimalSearch {
    /// Actions of the open-loop search path (it stops once every cell is visited).
    pub actions: Vec<usize>,
    /// Σ_{g ≠ s} R(g), the return summed over the n − 1 equally likely goals.
    pub total_return: u64,
    /// Search nodes expanded.
    pub nodes: u64,
}

impl OptimalSearch {
    /// The Bayes-optimal expected return V*(s) = total_return / (n − 1).
    pub fn expected_return(&self, cells: usize) -> f64 {
        self.total_return as f64 / (cells - 1) as f64
    }
}

/// Manhattan distance from `pos` to the nearest cell of the bitset `cells` (bit i = cell
/// (i / cols, i % cols)); `usize::MAX` when it is empty. Shared by both grid searches.
pub(crate) fn nearest_in(cells: u64, cols: usize, pos: Cell) -> usize {
    let mut rest = cells;
    let mut best = usize::MAX;
    while rest != 0 {
        let i = rest.trailing_zeros() as usize;
        rest &= rest - 1;
        best = best.min(manhattan(pos, (i / cols, i % cols)));
    }
    best
}

/// R(g) = 1 + floor((T − τ)/d): the return of a task whose goal, d steps from the start, is
/// found at time τ ≤ T (shortest paths afterwards).
pub fn return_if_found(d: usize, tau: usize, horizon: usize) -> u64 {
    assert!(
        d >= 1 && tau <= horizon,
        "goal at d = {d}, found at {tau} > T"
    );
    1 + ((horizon - tau) / d) as u64
}

/// Σ_g R(g) of a given open-loop search path (actions), for checking: simulates the path with
/// the episode resets and sums the return over the goals it visits.
pub fn path_total_return(p: &SearchProblem, actions: &[usize]) -> u64 {
    let (mut pos, mut seen) = (p.start, 1u64 << index(p, p.start));
    let mut total = 0;
    for (i, &a) in actions.iter().enumerate().take(p.horizon) {
        let tau = i + 1;
        let next = move_cell(pos, a, p.rows, p.cols);
        if seen & (1 << index(p, next)) == 0 {
            seen |= 1 << index(p, next);
            total += return_if_found(manhattan(p.start, next), tau, p.horizon);
        }
        pos = if tau.is_multiple_of(p.episode_len) {
            p.start
        } else {
            next
        };
    }
    total
}

fn index(p: &SearchProblem, c: Cell) -> usize {
    c.0 * p.cols + c.1
}

#[derive(Default)]
pub(super) struct FxHasher(u64);
impl Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_u8(&mut self, x: u8) {
        self.write_u64(x as u64);
    }
}
/// A hash map with a fast multiplicative hash for small integer keys (also used by the
/// episodic search of `reference`).
pub(super) type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// Entries kept in the dominance table at most (it only prunes, so a cap keeps exactness).
const DOMINANCE_CAP: usize = 20_000_000;

/// A state reached in the search: (time, steps left in its episode, value so far).
type Reached = (u8, u8, u64);

struct Search {
    p: SearchProblem,
    full: u64,
    /// lcm(1..=max d): bound values scaled by it are integers.
    scale: u64,
    /// Distance of each cell from the start.
    d_start: Vec<usize>,
    best: u64,
    best_path: Vec<u8>,
    path: Vec<u8>,
    /// (position, visited set) → Pareto list of states reached.
    seen: FxMap<(u8, u64), Vec<Reached>>,
    entries: usize,
    nodes: u64,
}

impl Search {
    fn cell(&self, i: usize) -> Cell {
        (i / self.p.cols, i % self.p.cols)
    }

    /// Steps left in the episode of a state at time t: min(L − t mod L, T − t).
    fn left(&self, t: usize) -> usize {
        (self.p.episode_len - t % self.p.episode_len).min(self.p.horizon - t)
    }

    /// Scaled upper bound on the value still obtainable (see the module documentation).
    fn bound(&self, pos: Cell, mask: u64, t: usize) -> u64 {
        let (h, l) = (self.p.horizon, self.p.episode_len);
        let end = t + self.left(t);
        // (earliest time, weight scale/d) of every unvisited cell that can still be reached.
        let mut cells: Vec<(usize, u64)> = vec![];
        let mut rest = self.full & !mask;
        while rest != 0 {
            let i = rest.trailing_zeros() as usize;
            rest &= rest - 1;
            let here = t + manhattan(pos, self.cell(i));
            let e = if here <= end {
                here
            } else {
                // Next episode start is `end` (a multiple of L unless end = T).
                let later = end + self.d_start[i];
                if end == h || self.d_start[i] > l {
                    continue;
                }
                later
            };
            if e <= h {
                cells.push((e, self.scale / self.d_start[i] as u64));
            }
        }
        cells.sort_unstable();
        let mut heap = BinaryHeap::new();
        let (mut next, mut total) = (0, 0u64);
        let mut tau = t + 1;
        while tau <= h && (next < cells.len() || !heap.is_empty()) {
            if heap.is_empty() && cells[next].0 > tau {
                tau = cells[next].0;
            }
            while next < cells.len() && cells[next].0 <= tau {
                heap.push(cells[next].1);
                next += 1;
            }
            let w = heap.pop().expect("a cell is available");
            total += self.scale + w * (h - tau) as u64;
            tau += 1;
        }
        total
    }

    /// Whether a state is dominated; otherwise records it.
    fn dominated(&mut self, pos: Cell, mask: u64, t: usize, val: u64) -> bool {
        let left = self.left(t) as u8;
        let t = t as u8;
        let key = (index(&self.p, pos) as u8, mask);
        let cap_reached = self.entries >= DOMINANCE_CAP;
        let entry = match self.seen.get_mut(&key) {
            Some(e) => e,
            None if cap_reached => return false,
            None => self.seen.entry(key).or_default(),
        };
        if entry
            .iter()
            .any(|&(t2, l2, v2)| t2 <= t && l2 >= left && v2 >= val)
        {
            return true;
        }
        let before = entry.len();
        entry.retain(|&(t2, l2, v2)| !(t <= t2 && left >= l2 && val >= v2));
        self.entries -= before - entry.len();
        if !cap_reached {
            entry.push((t, left, val));
            self.entries += 1;
        }
        false
    }

    fn nearest_unvisited(&self, pos: Cell, mask: u64) -> usize {
        nearest_in(self.full & !mask, self.p.cols, pos)
    }

    fn dfs(&mut self, pos: Cell, mask: u64, t: usize, val: u64) {
        self.nodes += 1;
        if val > self.best {
            self.best = val;
            self.best_path.clone_from(&self.path);
        }
        if t == self.p.horizon || mask == self.full {
            return;
        }
        if val * self.scale + self.bound(pos, mask, t) <= self.best * self.scale {
            return;
        }
        if self.dominated(pos, mask, t, val) {
            return;
        }
        let (rows, cols) = (self.p.rows, self.p.cols);
        let tau = t + 1;
        // Children: largest gain first, then towards the nearest unvisited cell.
        let mut children: Vec<(std::cmp::Reverse<u64>, usize, usize, Cell)> = (0..4)
            .filter_map(|a| {
                let next = move_cell(pos, a, rows, cols);
                (next != pos).then(|| {
                    let i = index(&self.p, next);
                    let gain = if mask & (1 << i) == 0 {
                        return_if_found(self.d_start[i], tau, self.p.horizon)
                    } else {
                        0
                    };
                    let near = self.nearest_unvisited(next, mask | (1 << i));
                    (std::cmp::Reverse(gain), near, a, next)
                })
            })
            .collect();
        children.sort_unstable();
        for (std::cmp::Reverse(gain), _, a, next) in children {
            let after = if tau.is_multiple_of(self.p.episode_len) {
                self.p.start
            } else {
                next
            };
            self.path.push(a as u8);
            self.dfs(after, mask | (1 << index(&self.p, next)), tau, val + gain);
            self.path.pop();
        }
    }
}

fn lcm(a: u64, b: u64) -> u64 {
    let gcd = |mut x: u64, mut y: u64| {
        while y != 0 {
            (x, y) = (y, x % y);
        }
        x
    };
    a / gcd(a, b) * b
}

/// Solves a [`SearchProblem`] exactly: the open-loop path maximising Σ_g R(g) (see the module
/// documentation). Ties between paths of equal value go to the first found in the search order.
pub fn solve(p: &SearchProblem) -> OptimalSearch {
    let n = p.rows * p.cols;
    assert!((2..=64).contains(&n), "grid of 2 to 64 cells");
    assert!(
        p.rows + p.cols - 2 <= p.episode_len,
        "every cell reachable within an episode"
    );
    let d_start: Vec<usize> = (0..n)
        .map(|i| manhattan(p.start, (i / p.cols, i % p.cols)))
        .collect();
    let scale = (1..=(p.rows + p.cols - 2) as u64).fold(1, lcm);
    let mut s = Search {
        p: *p,
        full: if n == 64 { u64::MAX } else { (1 << n) - 1 },
        scale,
        d_start,
        best: 0,
        best_path: vec![],
        path: vec![],
        seen: Default::default(),
        entries: 0,
        nodes: 0,
    };
    let start_mask = 1u64 << index(p, p.start);
    s.dfs(p.start, start_mask, 0, 0);
    OptimalSearch {
        total_return: s.best,
        actions: s.best_path.iter().map(|&a| a as usize).collect(),
        nodes: s.nodes,
    }
}

/// [`solve`], computed once per problem in this process and shared (the reference policy runs
/// it for every task).
pub fn solve_cached(p: &SearchProblem) -> Arc<OptimalSearch> {
    static CACHE: OnceLock<Mutex<HashMap<SearchProblem, Arc<OptimalSearch>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(s) = cache.lock().expect("cache lock").get(p) {
        return s.clone();
    }
    // Solved outside the lock; two threads may both solve the same problem, with equal results.
    let s = Arc::new(solve(p));
    cache
        .lock()
        .expect("cache lock")
        .entry(*p)
        .or_insert(s)
        .clone()
}
