"""``lvrnn.load(path).posterior(...)`` on real lvrnn checkpoints equals ``lvrnn inspect``.

The checkpoints are trained by the lvrnn binary (conftest.py: $LVRNN_BIN, else
target/release/lvrnn, else target/debug/lvrnn; the tests are skipped with the reason where none
is built) on a tiny bandit config (2 updates of 8 tasks, `--threads 1`, well under a second):
the point-estimate RNN and a network trained as a diagonal Laplace VRNN. Two bandit histories
(rows obs=1, prev_action, prev_reward; the first prev_action is -1) are stacked as (2, T, 3) and
each is compared with its own `lvrnn inspect` run, under the checkpoint's own posterior and post
hoc under other Laplace specs: mean, precision, entropy and KL at every step t = 0..T.

Tolerance: 1e-6 relative (|got - want| <= 1e-6 * max(|want|, 1)); measured: 0 (the same Rust
code computes both; the JSON prints the shortest round-tripping decimal of every number). A
statistic that inspect prints as null (the RNN's entropy and KL, every KL at t = 0) is NaN.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import lvrnn

RTOL = 1e-6
T = 9


def bandit_history(rng, steps: int = T) -> np.ndarray:
    """(T, 3) rows obs (the bandit's constant 1), prev_action (-1 first, then 0..4),
    prev_reward (0 or 1; not read in the first row)."""
    rows = [[1.0, -1.0, 0.0]]
    for _ in range(steps - 1):
        rows.append([1.0, float(rng.integers(0, 5)), float(rng.integers(0, 2))])
    return np.array(rows)


@pytest.fixture(scope="module")
def histories() -> np.ndarray:
    rng = np.random.default_rng(7)
    return np.stack([bandit_history(rng), bandit_history(rng)])


def inspect(run_cli, checkpoint, history: np.ndarray, spec, workdir) -> list:
    """The JSON lines `lvrnn inspect` prints for one history (T, 3), parsed."""
    csv = workdir / "history.csv"
    np.savetxt(csv, history, delimiter=",", header="obs,prev_action,prev_reward", comments="", fmt="%g")
    args = ["inspect", "--checkpoint", str(checkpoint), "--history", str(csv)]
    if spec is not None:
        args += ["--posterior", spec]
    out = run_cli(args, workdir).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def field(lines: list, key: str) -> np.ndarray:
    """A statistic over the steps, null as NaN."""
    return np.array([np.nan if line.get(key) is None else line[key] for line in lines], dtype=float)


def max_rel_err(got, want) -> float:
    got, want = np.asarray(got, float), np.asarray(want, float)
    assert got.shape == want.shape, f"shape {got.shape} vs {want.shape}"
    assert np.array_equal(np.isnan(got), np.isnan(want)), f"NaNs at different places: {got} vs {want}"
    ok = ~np.isnan(want)
    return float(np.max(np.abs(got[ok] - want[ok]) / np.maximum(np.abs(want[ok]), 1.0), initial=0.0))


CASES = [
    ("rnn", None),
    ("rnn", "laplace:window=1,accumulate=sigma"),
    ("rnn", "laplace:window=3,accumulate=none,diagonal=true"),
    ("rnn", "laplace:window=0,accumulate=mu_sigma,prior_precision=2"),
    ("laplace", None),
    ("laplace", "laplace:window=2,accumulate=sigma,diagonal=true"),
    ("laplace", "laplace:window=1,accumulate=none,damping=3"),
]


@pytest.mark.parametrize("which,spec", CASES, ids=[f"{w}-{s or 'own'}" for w, s in CASES])
def test_posterior_of_a_checkpoint_equals_lvrnn_inspect_on_each_history(
    run_cli, checkpoints, histories, tmp_path, which, spec
):
    ck = checkpoints[which]
    model = lvrnn.load(ck)
    assert model.columns == 3
    post = model.posterior(histories, spec)
    n = post.mean.shape[-1]
    assert post.mean.shape == (2, T + 1, n) and post.entropy.shape == post.kl.shape == (2, T + 1)
    assert post.covariance is None
    for b in range(2):
        lines = inspect(run_cli, ck, histories[b], spec, tmp_path)
        assert [line["t"] for line in lines] == list(range(T + 1))
        want_mean = np.array([line["mean"] for line in lines])
        assert max_rel_err(post.mean[b], want_mean) <= RTOL, f"{which} {spec}: mean of history {b}"
        assert max_rel_err(post.entropy[b], field(lines, "entropy")) <= RTOL, f"{which} {spec}: entropy"
        assert max_rel_err(post.kl[b], field(lines, "kl")) <= RTOL, f"{which} {spec}: KL"
        assert np.isnan(post.kl[b, 0])
        if "precision" not in lines[0]:
            assert which == "rnn" and spec is None and post.precision is None
            assert np.isnan(post.entropy).all() and np.isnan(post.kl).all()
            continue
        want_prec = np.array([line["precision"] for line in lines])  # (T+1, n, n)
        got = post.precision[b]
        if got.ndim == 2:  # a diagonal spec: the diagonal, and inspect's off-diagonals are 0
            assert post.diagonal
            assert np.count_nonzero(want_prec * (1 - np.eye(n))) == 0
            want_prec = np.diagonal(want_prec, axis1=1, axis2=2)
        assert max_rel_err(got, want_prec) <= RTOL, f"{which} {spec}: precision of history {b}"
        assert np.isfinite(post.entropy[b]).all() and np.isfinite(post.kl[b, 1:]).all()


def test_one_history_without_a_batch_axis_gives_outputs_without_one(checkpoints, histories):
    model = lvrnn.load(str(checkpoints["rnn"]))
    spec = "laplace:window=1,accumulate=sigma"
    both = model.posterior(histories, spec)
    one = model.posterior(histories[1], spec)
    assert one.mean.shape == (T + 1, 4) and one.precision.shape == (T + 1, 4, 4) and one.kl.shape == (T + 1,)
    for key in ("mean", "precision", "entropy", "kl"):
        np.testing.assert_array_equal(getattr(one, key), getattr(both, key)[1], err_msg=key)
    # float32 and integer histories are read the same way (as float64, then as lvrnn reads a CSV)
    np.testing.assert_array_equal(model.posterior(histories[1].astype(np.float32), spec).mean, one.mean)
    np.testing.assert_array_equal(model.posterior(histories[1].astype(np.int64), spec).mean, one.mean)


def test_a_diagonal_checkpoints_own_posterior_has_the_layout_of_its_spec(checkpoints, histories):
    m = lvrnn.load(checkpoints["laplace"])
    own = m.posterior(histories)
    named = m.posterior(histories, "laplace:window=2,accumulate=sigma,diagonal=true")
    np.testing.assert_array_equal(own.mean, named.mean)
    assert own.diagonal and own.precision.shape == named.precision.shape
