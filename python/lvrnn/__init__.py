"""lvrnn from Python: the recurrent-state Laplace posterior of trained LSTMs.

The paper (de Vries et al., "Bayesian Meta-Reinforcement Learning with Laplace Variational
Recurrent Networks") turns an LSTM's output into a Gaussian task posterior
q_t = N(mu_t, Lambda_t^-1) with no retraining: mu_t is the (projected) output, Lambda_t a sum of
outer products of Jacobians of that output with respect to the hidden state. Two entry points:

- ``lvrnn.LaplaceLSTM(weights, projection=None)``: any single-layer LSTM, from a PyTorch
  ``nn.LSTM`` state dict or a Flax ``LSTMCell`` parameter tree (or a safetensors file of
  either); ``.filter(inputs, spec)`` runs it over your own LSTM inputs (B, T, d_in).
- ``lvrnn.load(path)``: an lvrnn checkpoint; ``.posterior(histories, spec)`` gives the numbers
  ``lvrnn inspect`` prints, for a batch of histories.

The paper's tasks: ``import lvrnn.envs`` (needs gymnasium) registers ``lvrnn/DirichletBandit-v0``
and ``lvrnn/GridWorld-v0``; ``lvrnn.references(env, tasks, seed)`` runs the exact reference
policies on the same tasks, ``lvrnn.bandit_belief`` / ``lvrnn.grid_belief`` give the exact belief
after a history (no gymnasium needed).

Every statistic comes from the Rust crate (this module only converts arrays); errors are
``ValueError`` with lvrnn's message. Specs are the CLI's, e.g.
``"laplace:window=1,accumulate=sigma"``, ``"laplace:window=10,accumulate=none,damping=2"``,
``"laplace:window=1,accumulate=mu_sigma,diagonal=true,prior_precision=10"``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from . import _lvrnn
from .reference import PolicyRuns, References, bandit_belief, grid_belief, references

__all__ = [
    "LaplaceLSTM", "Model", "Posterior", "load", "set_threads",
    "references", "References", "PolicyRuns", "bandit_belief", "grid_belief",
]

#: Names of lvrnn.envs, imported (with gymnasium) on first use.
_ENV_NAMES = ("BanditEnv", "GridWorldEnv", "BanditVectorEnv", "GridWorldVectorEnv")


def __getattr__(name: str):
    if name in _ENV_NAMES or name == "envs":
        import importlib

        envs = importlib.import_module(".envs", __name__)
        return envs if name == "envs" else getattr(envs, name)
    raise AttributeError(f"module 'lvrnn' has no attribute {name!r}")


def set_threads(n: int) -> None:
    """Sets the number of CPU threads lvrnn's kernels use (once per process, before any work)."""
    _lvrnn.set_threads(int(n))


@dataclass
class Posterior:
    """The posterior along a batch of sequences, per task b and step t = 0..T (t = 0: the prior).

    mean: (B, T+1, n). precision: Lambda_t without jitter, (B, T+1, n, n), or its diagonal
    (B, T+1, n) for a diagonal spec (None for the VRNN and the RNN). covariance: the VRNN's
    Sigma_t (B, T+1, n, n), else None. entropy: differential entropy (B, T+1) (NaN for the RNN).
    kl: KL(q_t || q_{t-1}) (B, T+1), NaN at t = 0. h, c: the LSTM carry (B, T+1, H)
    (foreign LSTMs only). A history given without a batch axis gives outputs without one.
    """

    mean: np.ndarray
    precision: Optional[np.ndarray]
    entropy: np.ndarray
    kl: np.ndarray
    diagonal: bool
    spec: Optional[str]
    covariance: Optional[np.ndarray] = None
    h: Optional[np.ndarray] = None
    c: Optional[np.ndarray] = None

    @classmethod
    def _from(cls, d: dict, spec: Optional[str], squeeze: bool) -> "Posterior":
        get = (lambda k: d.get(k)[0] if d.get(k) is not None else None) if squeeze else d.get
        return cls(
            mean=get("mean"),
            precision=get("precision"),
            entropy=get("entropy"),
            kl=get("kl"),
            diagonal=bool(d["diagonal"]),
            spec=spec,
            covariance=get("covariance"),
            h=get("h"),
            c=get("c"),
        )


def _as_numpy(v: Any, name: str) -> np.ndarray:
    """A torch tensor, jax array or array-like as a numpy array (no copy where possible)."""
    if hasattr(v, "detach") and hasattr(v, "cpu"):  # torch.Tensor
        v = v.detach().cpu().numpy()
    a = np.asarray(v)
    if a.dtype.kind not in "fiu":
        raise ValueError(f"`{name}` has dtype {a.dtype}; expected a numeric array")
    return a


def _flatten(tree: Mapping, prefix: str = "") -> dict:
    """A nested mapping (a Flax parameter tree) as {'a/b/c': leaf}."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def _weights(weights: Any, prefix: str) -> dict:
    """{name: float64 array} from a dict, a Flax tree or a safetensors path; `prefix` is removed."""
    if isinstance(weights, (str, os.PathLike)):
        named = dict(_lvrnn.read_safetensors(os.fspath(weights)))
    elif isinstance(weights, Mapping):
        tree = weights
        if "params" in tree and isinstance(tree["params"], Mapping) and len(tree) == 1:
            tree = tree["params"]  # a Flax variables dict {'params': {...}}
        named = _flatten(tree)
    else:
        raise ValueError(
            "weights must be a dict of arrays (a torch nn.LSTM state_dict, a Flax LSTMCell "
            f"parameter tree) or the path of a safetensors file; got {type(weights).__name__}"
        )
    if prefix:
        named = {k[len(prefix):]: v for k, v in named.items() if k.startswith(prefix)}
        if not named:
            raise ValueError(f"no weight name starts with the prefix `{prefix}`")
    return {k: np.ascontiguousarray(_as_numpy(v, k), dtype=np.float64) for k, v in named.items()}


def _float_array(x: Any, name: str) -> np.ndarray:
    """float32 and float64 arrays pass as they are (made C-contiguous); ints become float64."""
    a = _as_numpy(x, name)
    if a.dtype not in (np.float32, np.float64):
        if a.dtype.kind in "iu":
            a = a.astype(np.float64)
        else:
            raise ValueError(f"`{name}` has dtype {a.dtype}; expected float32 or float64")
    return np.ascontiguousarray(a)


class LaplaceLSTM:
    """The Laplace posterior of a trained single-layer LSTM (no retraining).

    weights: a PyTorch ``nn.LSTM`` state dict (``weight_ih_l0`` (4H, d_in), ``weight_hh_l0``
    (4H, H), ``bias_ih_l0``, ``bias_hh_l0``; gates i, f, g, o), a Flax ``LSTMCell`` /
    ``OptimizedLSTMCell`` parameter tree (``ii/kernel`` (d_in, H) ... ``ho/bias`` (H)), or a
    safetensors file of either. ``prefix`` selects the LSTM's entries of a larger state dict
    (e.g. ``"lstm."``). projection: (H, n) with phi = h @ projection + bias (a torch
    ``nn.Linear(H, n)``: pass ``linear.weight.T``); None: the posterior is over h itself.
    """

    def __init__(
        self,
        weights: Any,
        projection: Any = None,
        bias: Any = None,
        *,
        prefix: str = "",
    ):
        named = _weights(weights, prefix)
        p = None if projection is None else np.ascontiguousarray(_as_numpy(projection, "projection"), dtype=np.float64)
        b = None if bias is None else np.ascontiguousarray(_as_numpy(bias, "bias"), dtype=np.float64)
        self._inner = _lvrnn.LaplaceLstm(named, p, b)

    @property
    def input_size(self) -> int:
        return self._inner.input_size

    @property
    def hidden_size(self) -> int:
        return self._inner.hidden_size

    @property
    def features(self) -> int:
        """n, the dimension of the posterior (H without a projection)."""
        return self._inner.features

    def filter(
        self,
        inputs: Any,
        spec: str = "laplace:window=1,accumulate=sigma",
        h0: Any = None,
        c0: Any = None,
    ) -> Posterior:
        """The posterior along the LSTM inputs (B, T, d_in) or (T, d_in), from the carry
        (h0, c0) ((B, H) each; default zeros). float32 inputs run lvrnn's fast filter (what its
        training uses) and give float32 means and precisions; float64 inputs run the per-step
        reference in float64 throughout."""
        x = _float_array(inputs, "inputs")
        squeeze = x.ndim == 2
        if squeeze:
            x = x[None]
        carry = []
        for name, v in (("h0", h0), ("c0", c0)):
            if v is None:
                carry.append(None)
                continue
            a = np.ascontiguousarray(_float_array(v, name), dtype=x.dtype)
            carry.append(a[None] if squeeze and a.ndim == 1 else a)
        run = self._inner.filter_f32 if x.dtype == np.float32 else self._inner.filter_f64
        return Posterior._from(run(x, spec, carry[0], carry[1]), spec, squeeze)

    def filter_priors(
        self, inputs: Any, spec: str, priors: Sequence[float], key: str = "prior_precision"
    ) -> list:
        """``filter`` once per value of ``key`` (``prior_precision`` or ``damping``) in ``priors``:
        the statistics for each candidate prior, for the caller to score."""
        if key not in ("prior_precision", "damping"):
            raise ValueError(f"key = `{key}` is not valid; allowed values: prior_precision, damping")
        return [self.filter(inputs, _with(spec, key, p)) for p in priors]

    def tune_prior(
        self,
        inputs: Any,
        spec: str,
        score: Callable[[Posterior], float],
        grid: Sequence[float] = (0.01, 0.1, 1.0, 10.0, 100.0),
        key: str = "prior_precision",
    ):
        """The value of ``key`` in ``grid`` whose posterior on ``inputs`` maximises ``score``
        (e.g. a held-out log-likelihood or return you compute from the posterior). Returns
        (best value, {value: score})."""
        scores = {float(p): float(score(post)) for p, post in zip(grid, self.filter_priors(inputs, spec, grid, key))}
        finite = {p: s for p, s in scores.items() if np.isfinite(s)}
        if not finite:
            raise ValueError("score gave no finite value on the grid")
        return max(finite, key=finite.get), scores


def _with(spec: str, key: str, value: float) -> str:
    """The spec with `key` set to `value` (added or replaced)."""
    family, _, rest = spec.partition(":")
    parts = [p.strip() for p in rest.split(",")]
    parts = [p for p in parts if p and p.partition("=")[0].strip() != key]
    return f"{family}:{','.join(parts + [f'{key}={float(value)!r}'])}"


class Model:
    """An lvrnn checkpoint (a ``.safetensors`` file written by ``lvrnn train``)."""

    def __init__(self, path: Any):
        self._inner = _lvrnn.Model(os.fspath(path))

    @property
    def columns(self) -> int:
        """Columns of one history row: regression (x, y); RL obs..., prev_action, prev_reward."""
        return self._inner.columns

    def posterior(self, history: Any, spec: Optional[str] = None) -> Posterior:
        """The posterior along histories (B, T, columns) or one history (T, columns), in the
        layout ``lvrnn inspect`` reads, under ``spec`` (default: the checkpoint's own
        posterior; any SPEC the CLI accepts for this checkpoint). The same numbers as
        ``lvrnn inspect``."""
        x = np.ascontiguousarray(_float_array(history, "history"), dtype=np.float64)
        squeeze = x.ndim == 2
        if squeeze:
            x = x[None]
        return Posterior._from(self._inner.posterior(x, spec), spec, squeeze)


def load(path: Any) -> Model:
    """The model of an lvrnn checkpoint."""
    return Model(path)
