"""The exact references of the paper's tasks, and the exact belief after a history.

Everything runs the Rust code of ``lvrnn reference`` (``src/envs/reference.rs``,
``src/envs/grid_bayes.rs``); no gymnasium needed. Tasks are numbered as in ``lvrnn.envs``: task
i under seed s is the one ``lvrnn reference --seed s`` draws for i, and the one a vector
environment of B >= i + 1 tasks plays first after ``reset(seed=s)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from . import _lvrnn

__all__ = ["PolicyRuns", "References", "references", "bandit_belief", "grid_belief", "PARTICLES"]

#: Particles of the bandit references' importance-sampled posterior (``reference::PARTICLES``).
PARTICLES = 4096

_DEFAULT_HORIZON = {"bandit": 50, "gridworld": 100}
_CHECKPOINTS = {"bandit": (10, 25, 50), "gridworld": (25, 50, 100)}


@dataclass
class PolicyRuns:
    """One reference policy on N tasks for T steps: ``actions`` (N, T) int64, ``reward`` and
    ``regret`` (N, T) per step, ``ess`` (N, T) the particle posterior's effective sample size
    after each pull (bandit policies on particles; else None)."""

    policy: str
    actions: np.ndarray
    reward: np.ndarray
    regret: np.ndarray
    ess: Optional[np.ndarray]

    @property
    def returns(self) -> np.ndarray:
        """Return of each task over the T steps, (N,)."""
        return self.reward.sum(1)

    @property
    def cum_regret(self) -> np.ndarray:
        """Cumulative regret of each task over the T steps, (N,)."""
        return self.regret.sum(1)


@dataclass
class References:
    """Every reference policy of an environment on the same tasks (``refs["thompson_is"]``),
    and the table ``lvrnn reference`` prints for them (``table``: its text; ``rows``: a dict per
    policy and checkpoint, with ``return_mean``, ``return_ci99``, ``regret_mean``, ...)."""

    env: str
    policies: list
    runs: dict
    table: str
    rows: list

    def __getitem__(self, policy: str) -> PolicyRuns:
        if policy not in self.runs:
            raise KeyError(f"no reference policy {policy!r}; these are: {', '.join(self.policies)}")
        return self.runs[policy]

    def __iter__(self):
        return iter(self.runs.values())

    def __str__(self) -> str:
        return self.table


def _env_name(env: str) -> str:
    names = {"bandit": "bandit", "gridworld": "gridworld", "lvrnn/DirichletBandit-v0": "bandit", "lvrnn/GridWorld-v0": "gridworld"}
    if env not in names:
        raise ValueError(f"env = {env!r} is not valid; allowed values: bandit, gridworld (or their Gymnasium ids)")
    return names[env]


def _uint(name: str, v: Any, low: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
        raise ValueError(f"{name} = {v!r} is not valid: expected an integer >= {low}")
    return int(v)


def references(
    env: str,
    tasks: int,
    seed: int = 0,
    *,
    alpha: float = 0.3,
    horizon: Optional[int] = None,
    size: int = 5,
    first: int = 0,
    particles: int = PARTICLES,
    checkpoints: Optional[Sequence[int]] = None,
) -> References:
    """Every reference policy of ``env`` ("bandit" or "gridworld", or a Gymnasium id) on tasks
    ``first``, ..., ``first + tasks - 1`` under ``seed``, for ``horizon`` steps (default: the
    paper's T, 50 or 100). Bandit: random, thompson_is, greedy_is, knowledge_gradient,
    thompson_independent, oracle, at Dirichlet concentration ``alpha`` (default 0.3, the paper's
    test tasks, as ``lvrnn reference``); gridworld (``size`` x ``size``): random,
    episodic_search, bayes_optimal (exact), oracle. With the defaults, ``.table`` is what
    ``lvrnn reference --env ENV --tasks N --seed S`` prints."""
    kind = _env_name(env)
    t = _DEFAULT_HORIZON[kind] if horizon is None else _uint("horizon", horizon, 1)
    cps = [c for c in _CHECKPOINTS[kind] if c <= t] or [t] if checkpoints is None else list(checkpoints)
    for c in cps:
        _uint("checkpoints", c, 1)
    a = float(alpha) if isinstance(alpha, (int, float, np.floating, np.integer)) and not isinstance(alpha, bool) else float("nan")
    if kind == "bandit" and not (a > 0 and np.isfinite(a)):
        raise ValueError(f"alpha = {alpha!r} is not valid: the Dirichlet concentration must be a finite number > 0")
    d = _lvrnn.reference_runs(
        kind, _uint("tasks", tasks, 1), _uint("seed", seed), _uint("first", first), t,
        a if kind == "bandit" else 1.0, _uint("size", size, 2), _uint("particles", particles, 1), cps,
    )
    runs = {p: PolicyRuns(p, d[p]["actions"], d[p]["reward"], d[p]["regret"], d[p]["ess"]) for p in d["policies"]}
    return References(kind, list(d["policies"]), runs, d["table"], list(d["rows"]))


def _history(actions: Any, rewards: Any):
    a, r = np.asarray(actions), np.asarray(rewards)
    if a.dtype.kind not in "iu":
        raise ValueError(f"actions has dtype {a.dtype}; expected integers")
    if r.dtype.kind not in "fiub":
        raise ValueError(f"rewards has dtype {r.dtype}; expected numbers")
    squeeze = a.ndim == 1
    if squeeze:
        a, r = a[None], r[None]
    return np.ascontiguousarray(a, dtype=np.int64), np.ascontiguousarray(r, dtype=np.float64), squeeze


def bandit_belief(
    actions: Any,
    rewards: Any,
    *,
    alpha: float = 0.3,
    seed: int = 0,
    tasks: Any = None,
    particles: int = PARTICLES,
    return_particles: bool = False,
) -> dict:
    """The bandit references' posterior after each pull of a history: ``actions`` and
    ``rewards`` (B, T) or (T,). The posterior is the importance-sampled one of thompson_is,
    greedy_is and knowledge_gradient: ``particles`` draws from the Dirichlet(alpha) prior, weights
    the likelihood prod_a p_a^{s_a} (1 - p_a)^{f_a}; history b uses the particles those policies
    draw on task ``tasks[b]`` under ``seed`` (default: task b). Returns {"mean": (B, T+1, 5) the
    posterior mean of each arm's probability, "ess": (B, T+1) the effective sample size
    1/sum(w^2)} (t = 0: the prior; no batch axis for a (T,) history), and with
    ``return_particles`` the particles (B, N, 5) and their weights after the history (B, N)."""
    a, r, squeeze = _history(actions, rewards)
    ids = np.arange(a.shape[0]) if tasks is None else np.asarray(tasks)
    if ids.dtype.kind not in "iu":
        raise ValueError(f"tasks has dtype {ids.dtype}; expected integer task indices")
    al = float(alpha) if isinstance(alpha, (int, float, np.floating, np.integer)) and not isinstance(alpha, bool) else float("nan")
    d = _lvrnn.bandit_belief(a, r, np.ascontiguousarray(ids.reshape(-1), dtype=np.int64), _uint("seed", seed), al, _uint("particles", particles, 1), bool(return_particles))
    return {k: v[0] for k, v in d.items()} if squeeze else dict(d)


def grid_belief(observations: Any, actions: Any, rewards: Any, *, size: int = 5) -> np.ndarray:
    """The goal cells still possible after each step of a gridworld history: ``observations``
    (B, T+1, 2*size) as the environment returns them (the first, then one per step),
    ``actions`` and ``rewards`` (B, T); or one history without the B axis. Returns a bool mask
    (B, T+1, size, size): the exact posterior is uniform over its True cells (every cell but the
    start at t = 0; one cell once a reward has named the goal)."""
    a, r, squeeze = _history(actions, rewards)
    o = np.asarray(observations)
    if squeeze:
        o = o[None]
    m = _lvrnn.grid_belief(np.ascontiguousarray(o, dtype=np.float32), a, r, _uint("size", size, 2))
    return m[0] if squeeze else m
