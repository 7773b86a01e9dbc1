"""Shared fixtures of the lvrnn Python tests.

- lvrnn runs its kernels on one thread (``lvrnn.set_threads(1)``, once per process, before any
  work): the machines that run these tests are shared and the inputs are tiny.
- ``torch_lstm``: a random single-layer LSTM in PyTorch ``nn.LSTM`` state-dict layout, as numpy
  float64 arrays (no torch needed); ``to_flax`` / :func:`torch_to_flax`: the same LSTM as a Flax
  ``LSTMCell`` parameter tree.
- ``lvrnn_bin``, ``run_cli``, ``checkpoints``: the ``lvrnn`` binary, a runner for it and tiny
  checkpoints it trains (skipped, with the reason, where no binary is built).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import lvrnn

lvrnn.set_threads(1)

#: The repository root (python/tests/../..).
ROOT = Path(__file__).resolve().parents[2]

#: Sizes of the small test LSTM: inputs d_in, hidden H, posterior features n (with a projection).
D_IN, HIDDEN, FEATURES = 3, 5, 3


def random_torch_lstm(rng: np.random.Generator, d_in: int = D_IN, hidden: int = HIDDEN, scale: float = 0.8) -> dict:
    """A PyTorch ``nn.LSTM(d_in, hidden)`` state dict as float64 numpy arrays: ``weight_ih_l0``
    (4H, d_in), ``weight_hh_l0`` (4H, H), ``bias_ih_l0`` and ``bias_hh_l0`` (4H), gate rows
    i, f, g, o. Uniform in [-scale, scale] (larger than torch's 1/sqrt(H) initialisation, so the
    gates are not all near their linear regime)."""
    u = lambda *shape: rng.uniform(-scale, scale, size=shape)
    return {
        "weight_ih_l0": u(4 * hidden, d_in),
        "weight_hh_l0": u(4 * hidden, hidden),
        "bias_ih_l0": u(4 * hidden),
        "bias_hh_l0": u(4 * hidden),
    }


def torch_to_flax(sd: dict, wrap: bool = True) -> dict:
    """The Flax ``LSTMCell`` parameter tree of the same LSTM: per gate g in (i, f, g, o),
    ``i{g}/kernel`` (d_in, H) = weight_ih rows of g transposed, ``h{g}/kernel`` (H, H) likewise
    from weight_hh, ``h{g}/bias`` (H) = bias_ih + bias_hh of g (Flax's input kernels have no
    bias). ``wrap``: inside ``{'params': …}`` as ``model.init`` returns it."""
    hidden = sd["weight_hh_l0"].shape[1]
    tree = {}
    for k, gate in enumerate("ifgo"):
        rows = slice(k * hidden, (k + 1) * hidden)
        tree[f"i{gate}"] = {"kernel": np.ascontiguousarray(sd["weight_ih_l0"][rows].T)}
        tree[f"h{gate}"] = {
            "kernel": np.ascontiguousarray(sd["weight_hh_l0"][rows].T),
            "bias": sd["bias_ih_l0"][rows] + sd["bias_hh_l0"][rows],
        }
    return {"params": tree} if wrap else tree


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240607)


@pytest.fixture
def torch_lstm(rng) -> dict:
    """A random PyTorch-layout LSTM dict (numpy float64), d_in = 3, H = 5."""
    return random_torch_lstm(rng)


@pytest.fixture
def to_flax():
    """:func:`torch_to_flax` (a fixture so that test modules need not import conftest)."""
    return torch_to_flax


# ---------------------------------------------------------------------------------------------
# The lvrnn binary and tiny checkpoints (for the checkpoint tests).

#: A bandit config that trains in well under a second (tests/cli.rs's TINY_BANDIT).
TINY_BANDIT = """
name = "{name}"
task = "bandit"
seed = 1
[model]
embed_width = 16
hidden = 16
features = 4
head_hidden = [16]
[train]
updates = 2
batch = 8
checkpoint_every = 2
[eval]
tasks = 8
"""

#: A regression config of the same size (tests/cli.rs's TINY, 2 updates).
TINY_REGRESSION = """
name = "{name}"
task = "regression"
seed = 3
[model]
embed_width = 16
hidden = 16
features = 4
head_hidden = [16]
[train]
updates = 2
batch = 8
seq_len = 10
checkpoint_every = 2
[eval]
tasks = 8
"""


def find_lvrnn_bin() -> Path | None:
    """$LVRNN_BIN, else target/release/lvrnn, else target/debug/lvrnn under the repository."""
    env = os.environ.get("LVRNN_BIN")
    if env:
        if not Path(env).is_file():
            pytest.fail(f"LVRNN_BIN={env} is not a file (unset it to use target/release/lvrnn)")
        return Path(env)
    for sub in ("release", "debug"):
        p = ROOT / "target" / sub / "lvrnn"
        if p.is_file() and os.access(p, os.X_OK):
            return p
    return None


@pytest.fixture(scope="session")
def lvrnn_bin() -> Path:
    p = find_lvrnn_bin()
    if p is None:
        pytest.skip(
            "no lvrnn binary: set LVRNN_BIN or build one (`cargo build --release`); "
            f"looked in {ROOT / 'target/release'} and {ROOT / 'target/debug'}"
        )
    return p


def run_lvrnn(bin_: Path, args: list, cwd: Path) -> subprocess.CompletedProcess:
    """Runs the binary with --threads 1; fails the test with its output if it fails."""
    proc = subprocess.run(
        [str(bin_), *args, "--threads", "1"], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    if proc.returncode != 0:
        pytest.fail(f"lvrnn {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def run_cli(lvrnn_bin):
    """run_cli(args, cwd): the binary with `args` and --threads 1 (the test fails if it fails)."""
    return lambda args, cwd: run_lvrnn(lvrnn_bin, args, cwd)


@pytest.fixture(scope="session")
def checkpoints(lvrnn_bin, tmp_path_factory) -> dict:
    """Tiny checkpoints trained by the binary (2 updates of 8 tasks each, well under a second):
    ``rnn`` (a bandit point-estimate RNN), ``laplace`` (a bandit network trained as a diagonal
    Laplace VRNN, Σ accumulated, k_H = 2, so its own posterior has a precision) and
    ``regression`` (a regression RNN). Also ``dir``: their folder."""
    d = tmp_path_factory.mktemp("checkpoints")
    out = {"dir": d}
    for name, config, extra in (
        ("rnn", TINY_BANDIT, []),
        ("laplace", TINY_BANDIT, ["--posterior", "laplace:window=2,accumulate=sigma,diagonal=true"]),
        ("regression", TINY_REGRESSION, []),
    ):
        (d / f"{name}.toml").write_text(config.format(name=name))
        run_lvrnn(lvrnn_bin, ["train", "--config", f"{name}.toml", "--runs", "runs", "--no-eval", *extra], d)
        ck = d / "runs" / name / "checkpoints" / "model-final.safetensors"
        assert ck.is_file(), f"training wrote no {ck}"
        out[name] = ck
    return out
