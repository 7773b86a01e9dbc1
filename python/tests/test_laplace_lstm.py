"""``lvrnn.LaplaceLSTM``: the Laplace posterior of a foreign (PyTorch / Flax layout) LSTM.

The float64 path is checked against an independent numpy recomputation written from the
paper's definitions (DESIGN.md, "The model", Laplace), not from lvrnn's code:
- a numpy LSTM step in PyTorch's own terms (gate rows i, f, g, o of weight_ih / weight_hh);
- J_i = d phi(h'(x_i, (c_t, h))) / dh at h = h_t by CENTRAL FINITE DIFFERENCES (step 1e-5):
  one LSTM step applied to the past input x_i from the current carry, c_t held fixed;
- Lambda_t = prior_t + sum over the last k_H inputs of J_i J_i^T (its diagonal for
  diagonal=true), prior_t = Lambda_{t-1} (sigma, mu_sigma) or damping * I (none),
  Lambda_0 = prior_precision * I; mu_t = phi_t (+ mu_{t-1} for mu_sigma), mu_0 = phi(h_0);
- entropy and KL(q_t || q_{t-1}) in closed form with numpy.linalg on Lambda + jitter * I.

Tolerances (|got - expected| <= rtol * max(|expected|, 1), elementwise; measured max errors in
the tests' comments):
- float64 path vs the numpy recomputation: 1e-6 (mean, precision, entropy, KL, h, c);
- float32 fast filter vs the float64 path: 1e-4 for mean, precision, entropy, h, c; KL
  1e-4 * max(|KL|, 0.05) (KL is a small difference of large terms);
- Flax tree vs PyTorch dict: 1e-12 (the two biases are summed in another order);
  safetensors file vs dict: exact (float64 file), 1e-5 (weights stored as float32);
  2-D vs batched input: exact in float64, 1e-5 in float32 (float32 matrix products round
  differently for another batch size).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import lvrnn

RTOL_F64 = 1e-6
RTOL_F32 = 1e-4
KL_FLOOR_F32 = 0.05
FD_STEP = 1e-5

B, T = 2, 6


# ---------------------------------------------------------------------------------------------
# The independent numpy recomputation.


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def lstm_step(sd: dict, x, c, h):
    """One nn.LSTM step (PyTorch's documented equations): returns (c', h')."""
    z = sd["weight_ih_l0"] @ x + sd["weight_hh_l0"] @ h + sd["bias_ih_l0"] + sd["bias_hh_l0"]
    i, f, g, o = np.split(z, 4)
    c2 = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    return c2, sigmoid(o) * np.tanh(c2)


def parse_spec(spec: str) -> dict:
    cfg = dict(window=1, accumulate="sigma", diagonal=False, damping=1.0, jitter=1e-6, prior_precision=1.0)
    family, _, rest = spec.partition(":")
    assert family == "laplace"
    for kv in filter(None, rest.split(",")):
        k, v = kv.split("=")
        cfg[k] = {"window": int, "accumulate": str, "diagonal": lambda s: s == "true"}.get(k, float)(v)
    return cfg


def jacobian_fd(sd, phi, x, c, h):
    """J[k, m] = d phi_k(h'(x, (c, h))) / d h_m by central differences (c held fixed)."""
    cols = []
    for m in range(h.size):
        e = np.zeros_like(h)
        e[m] = FD_STEP
        cols.append((phi(lstm_step(sd, x, c, h + e)[1]) - phi(lstm_step(sd, x, c, h - e)[1])) / (2 * FD_STEP))
    return np.stack(cols, axis=1)


def reference(sd: dict, xs, spec: str, proj=None, bias=None, h0=None, c0=None) -> dict:
    """The posterior of one sequence xs (T, d_in): mean (T+1, n), precision (T+1, n, n) (dense,
    without jitter), entropy (T+1), kl (T+1) (NaN at t = 0), h and c (T+1, H)."""
    cfg = parse_spec(spec)
    hidden = sd["weight_hh_l0"].shape[1]
    P = np.eye(hidden) if proj is None else proj
    pb = np.zeros(P.shape[1]) if bias is None else bias
    n = P.shape[1]
    phi = lambda h: h @ P + pb
    eye = np.eye(n)
    tilde = lambda lam: lam + cfg["jitter"] * eye

    def entropy(lam):
        return 0.5 * n * math.log(2 * math.pi * math.e) - 0.5 * np.linalg.slogdet(tilde(lam))[1]

    def kl(mu, lam, mu_prev, lam_prev):
        new, old = tilde(lam), tilde(lam_prev)
        d = mu - mu_prev
        return 0.5 * (
            np.trace(old @ np.linalg.inv(new)) + d @ old @ d - n + np.linalg.slogdet(new)[1] - np.linalg.slogdet(old)[1]
        )

    h = np.zeros(hidden) if h0 is None else np.asarray(h0, float)
    c = np.zeros(hidden) if c0 is None else np.asarray(c0, float)
    lam = cfg["prior_precision"] * eye
    mu = phi(h)
    out = {"mean": [mu], "precision": [lam], "entropy": [entropy(lam)], "kl": [np.nan], "h": [h], "c": [c]}
    for t in range(len(xs)):
        c, h = lstm_step(sd, xs[t], c, h)
        k = t + 1 if cfg["window"] == 0 else min(cfg["window"], t + 1)
        new = cfg["damping"] * eye if cfg["accumulate"] == "none" else lam.copy()
        for x in xs[t + 1 - k : t + 1]:
            J = jacobian_fd(sd, phi, x, c, h)
            JJ = J @ J.T
            new = new + (np.diag(np.diag(JJ)) if cfg["diagonal"] else JJ)
        mu_new = phi(h) + (mu if cfg["accumulate"] == "mu_sigma" else 0.0)
        out["kl"].append(kl(mu_new, new, mu, lam))
        mu, lam = mu_new, new
        for key, v in (("mean", mu), ("precision", lam), ("entropy", entropy(lam)), ("h", h), ("c", c)):
            out[key].append(v)
    return {k: np.array(v) for k, v in out.items()}


def max_rel_err(got, want, floor=1.0) -> float:
    """max |got - want| / max(|want|, floor), NaNs required at the same places."""
    got, want = np.asarray(got, float), np.asarray(want, float)
    assert got.shape == want.shape, f"shape {got.shape} vs {want.shape}"
    assert np.array_equal(np.isnan(got), np.isnan(want)), "NaNs at different places"
    ok = ~np.isnan(want)
    if not ok.any():
        return 0.0
    return float(np.max(np.abs(got[ok] - want[ok]) / np.maximum(np.abs(want[ok]), floor)))


def dense(post: lvrnn.Posterior) -> np.ndarray:
    """The precision as (…, n, n) also for a diagonal posterior."""
    p = post.precision
    return p[..., :, None] * np.eye(p.shape[-1]) if post.diagonal else p


# ---------------------------------------------------------------------------------------------

VARIANTS = [
    "laplace:window=1,accumulate=sigma",
    "laplace:window=1,accumulate=mu_sigma",
    "laplace:window=1,accumulate=none",
    "laplace:window=3,accumulate=none,damping=2.5",
    "laplace:window=0,accumulate=none",
    "laplace:window=3,accumulate=sigma,diagonal=true,prior_precision=4",
    "laplace:window=0,accumulate=mu_sigma,diagonal=true,prior_precision=0.5,jitter=0.001",
    "laplace:window=3,accumulate=sigma,prior_precision=0.1,jitter=0.01",
]


@pytest.fixture
def inputs(rng):
    return rng.normal(0.0, 1.2, size=(B, T, 3))


@pytest.fixture
def projection(rng):
    return rng.normal(0.0, 0.7, size=(5, 3)), rng.normal(0.0, 0.3, size=3)


@pytest.fixture
def carry(rng):
    return rng.uniform(-0.6, 0.6, size=(B, 5)), rng.uniform(-1.0, 1.0, size=(B, 5))


@pytest.mark.parametrize("spec", VARIANTS)
@pytest.mark.parametrize("with_projection", [True, False], ids=["projected", "z=h"])
@pytest.mark.parametrize("from_carry", [False, True], ids=["zero-carry", "given-h0-c0"])
def test_float64_posterior_equals_an_independent_numpy_recomputation(
    torch_lstm, inputs, projection, carry, spec, with_projection, from_carry
):
    # measured max relative error over all 32 cases: precision 2.5e-11, KL 9.2e-12, entropy 5e-12,
    # mean / h / c 1e-15 (the finite differences' own error dominates)
    proj, bias = projection if with_projection else (None, None)
    h0, c0 = carry if from_carry else (None, None)
    post = lvrnn.LaplaceLSTM(torch_lstm, proj, bias).filter(inputs, spec, h0=h0, c0=c0)
    n = 3 if with_projection else 5
    assert post.mean.shape == (B, T + 1, n) and post.mean.dtype == np.float64
    assert post.diagonal == ("diagonal=true" in spec)
    for b in range(B):
        want = reference(
            torch_lstm, inputs[b], spec, proj, bias, None if h0 is None else h0[b], None if c0 is None else c0[b]
        )
        for key in ("mean", "entropy", "kl", "h", "c"):
            err = max_rel_err(getattr(post, key)[b], want[key])
            assert err <= RTOL_F64, f"{spec}: {key} of task {b} off by {err:.2e} (relative)"
        err = max_rel_err(dense(post)[b], want["precision"])
        assert err <= RTOL_F64, f"{spec}: precision of task {b} off by {err:.2e} (relative)"
        assert np.isnan(post.kl[b, 0])


@pytest.mark.parametrize("spec", VARIANTS)
def test_float32_fast_filter_agrees_with_the_float64_path(torch_lstm, inputs, projection, carry, spec):
    # measured max relative error: mean 2.3e-7, precision 9.5e-8, h / c 1e-7, entropy 2e-8;
    # KL 8e-7 of max(|KL|, 0.05)
    model = lvrnn.LaplaceLSTM(torch_lstm, *projection)
    h0, c0 = carry
    ref = model.filter(inputs, spec, h0=h0, c0=c0)
    fast = model.filter(inputs.astype(np.float32), spec, h0=h0.astype(np.float32), c0=c0.astype(np.float32))
    assert fast.mean.dtype == np.float32 and fast.precision.dtype == np.float32 and fast.h.dtype == np.float32
    for key in ("mean", "precision", "entropy", "h", "c"):
        err = max_rel_err(getattr(fast, key), getattr(ref, key))
        assert err <= RTOL_F32, f"{spec}: float32 {key} off by {err:.2e} (relative)"
    err = max_rel_err(fast.kl, ref.kl, floor=KL_FLOOR_F32)
    assert err <= RTOL_F32, f"{spec}: float32 KL off by {err:.2e} (relative, floor {KL_FLOOR_F32})"


@pytest.mark.parametrize("wrap", [True, False], ids=["{'params': tree}", "bare tree"])
def test_flax_tree_and_the_equivalent_pytorch_dict_give_identical_outputs(
    torch_lstm, to_flax, inputs, projection, carry, wrap
):
    spec = "laplace:window=3,accumulate=sigma"
    a = lvrnn.LaplaceLSTM(torch_lstm, *projection)
    b = lvrnn.LaplaceLSTM(to_flax(torch_lstm, wrap=wrap), *projection)
    assert (b.input_size, b.hidden_size, b.features) == (3, 5, 3)
    for x, carry_ in ((inputs, carry), (inputs.astype(np.float32), tuple(v.astype(np.float32) for v in carry))):
        pa, pb = a.filter(x, spec, *carry_), b.filter(x, spec, *carry_)
        for key in ("mean", "precision", "entropy", "kl", "h", "c"):
            # the biases are summed in a different order: allow the last bit
            np.testing.assert_allclose(getattr(pb, key), getattr(pa, key), rtol=1e-12, atol=1e-12, err_msg=key)


def test_filter_priors_returns_one_posterior_per_prior_with_lambda0_equal_to_prior_times_identity(
    torch_lstm, inputs, projection
):
    model = lvrnn.LaplaceLSTM(torch_lstm, *projection)
    spec = "laplace:window=1,accumulate=sigma,prior_precision=7"  # the key is replaced
    priors = [0.01, 1.0, 30.0]
    posts = model.filter_priors(inputs, spec, priors)
    assert len(posts) == len(priors)
    for p, post in zip(priors, posts):
        np.testing.assert_array_equal(post.precision[:, 0], np.broadcast_to(p * np.eye(3), (B, 3, 3)))
        same = model.filter(inputs, f"laplace:window=1,accumulate=sigma,prior_precision={p}")
        np.testing.assert_array_equal(post.precision, same.precision)
        np.testing.assert_array_equal(post.entropy, same.entropy)
        # Σ accumulated: Λ_t - Λ_0 does not depend on the prior
        np.testing.assert_allclose(post.precision - p * np.eye(3), posts[0].precision - 0.01 * np.eye(3), atol=1e-12)
    # key="damping": the prior of every step when nothing is accumulated
    posts = model.filter_priors(inputs, "laplace:window=1,accumulate=none", [0.5, 2.0], key="damping")
    want = reference(torch_lstm, inputs[0], "laplace:window=1,accumulate=none,damping=2.0", *projection)
    assert max_rel_err(posts[1].precision[0], want["precision"]) <= RTOL_F64
    assert not np.allclose(posts[0].precision[:, 1:], posts[1].precision[:, 1:])


def test_tune_prior_picks_the_argmax_of_the_given_score(torch_lstm, inputs):
    model = lvrnn.LaplaceLSTM(torch_lstm)
    spec = "laplace:window=1,accumulate=sigma"
    grid = (0.01, 0.1, 1.0, 10.0, 100.0)

    # a score peaked at the prior 10 (read back from Λ_0)
    def peaked(post):
        return -abs(math.log(post.precision[0, 0, 0, 0]) - math.log(10.0))

    best, scores = model.tune_prior(inputs, spec, peaked, grid)
    assert best == 10.0
    assert set(scores) == set(grid)
    # a score whose maximum is elsewhere: minus the squared distance of the final entropy from 3
    score = lambda post: -float((post.entropy[:, -1].mean() - 3.0) ** 2)
    manual = [score(model.filter(inputs, f"{spec},prior_precision={p}")) for p in grid]
    best, scores = model.tune_prior(inputs, spec, score, grid)
    assert best == grid[int(np.argmax(manual))]
    assert [scores[p] for p in grid] == pytest.approx(manual, rel=1e-12)
    # non-finite scores are ignored; all non-finite is refused
    best, _ = model.tune_prior(inputs, spec, lambda p: math.nan if p.precision[0, 0, 0, 0] > 1 else 0.0, grid)
    assert best in (0.01, 0.1, 1.0)
    with pytest.raises(ValueError, match="no finite value"):
        model.tune_prior(inputs, spec, lambda p: math.nan, grid)


def test_a_safetensors_file_gives_the_same_posterior_as_the_dict(torch_lstm, to_flax, inputs, projection, tmp_path):
    st = pytest.importorskip("safetensors.numpy", reason="safetensors is not installed")
    spec = "laplace:window=3,accumulate=none,damping=2"
    want = lvrnn.LaplaceLSTM(torch_lstm, *projection).filter(inputs, spec)
    # the PyTorch layout, float64
    st.save_file(torch_lstm, str(tmp_path / "lstm.safetensors"))
    # a whole model's state dict (float32) with the LSTM under "lstm.", selected by prefix
    other = {f"lstm.{k}": v.astype(np.float32) for k, v in torch_lstm.items()}
    other["head.weight"] = np.ones((2, 5), np.float32)
    st.save_file(other, str(tmp_path / "agent.safetensors"))
    # the Flax layout, names joined with "/"
    flat = {f"{g}/{leaf}": v for g, d in to_flax(torch_lstm, wrap=False).items() for leaf, v in d.items()}
    st.save_file(flat, str(tmp_path / "flax.safetensors"))

    for path, prefix, exact in (("lstm.safetensors", "", True), ("flax.safetensors", "", False), ("agent.safetensors", "lstm.", False)):
        got = lvrnn.LaplaceLSTM(tmp_path / path, *projection, prefix=prefix).filter(inputs, spec)
        for key in ("mean", "precision", "entropy", "kl", "h", "c"):
            if exact:
                np.testing.assert_array_equal(getattr(got, key), getattr(want, key), err_msg=f"{path}: {key}")
            elif path == "flax.safetensors":
                np.testing.assert_allclose(getattr(got, key), getattr(want, key), rtol=1e-12, atol=1e-12, err_msg=key)
            else:  # weights rounded to float32
                np.testing.assert_allclose(getattr(got, key), getattr(want, key), rtol=1e-5, atol=1e-5, err_msg=key)
    # the same file by str path
    got = lvrnn.LaplaceLSTM(str(tmp_path / "lstm.safetensors"), *projection).filter(inputs, spec)
    np.testing.assert_array_equal(got.precision, want.precision)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_2d_input_gives_outputs_without_the_batch_axis(torch_lstm, inputs, projection, carry, dtype):
    model = lvrnn.LaplaceLSTM(torch_lstm, *projection)
    x = inputs.astype(dtype)
    h0, c0 = (v.astype(dtype) for v in carry)
    for spec, psize in (("laplace:window=1,accumulate=sigma", (3, 3)), ("laplace:window=1,accumulate=sigma,diagonal=true", (3,))):
        batched = model.filter(x, spec, h0=h0, c0=c0)
        one = model.filter(x[1], spec, h0=h0[1], c0=c0[1])
        assert one.mean.shape == (T + 1, 3) and one.precision.shape == (T + 1, *psize)
        assert one.entropy.shape == one.kl.shape == (T + 1,)
        assert one.h.shape == one.c.shape == (T + 1, 5)
        for key in ("mean", "precision", "entropy", "kl", "h", "c"):
            if dtype == np.float64:
                np.testing.assert_array_equal(getattr(one, key), getattr(batched, key)[1], err_msg=key)
            else:  # float32 matrix products round differently for another batch size
                np.testing.assert_allclose(getattr(one, key), getattr(batched, key)[1], rtol=1e-5, atol=1e-6, err_msg=key)


def test_outputs_have_the_documented_shapes_and_the_prior_at_t0(torch_lstm, inputs, projection, carry):
    model = lvrnn.LaplaceLSTM(torch_lstm, *projection)
    assert (model.input_size, model.hidden_size, model.features) == (3, 5, 3)
    assert lvrnn.LaplaceLSTM(torch_lstm).features == 5
    h0, c0 = carry
    post = model.filter(inputs, "laplace:window=1,accumulate=sigma,prior_precision=3", h0=h0, c0=c0)
    assert post.mean.shape == (B, T + 1, 3) and post.precision.shape == (B, T + 1, 3, 3)
    assert post.entropy.shape == post.kl.shape == (B, T + 1)
    assert post.h.shape == post.c.shape == (B, T + 1, 5)
    assert post.spec == "laplace:window=1,accumulate=sigma,prior_precision=3" and post.covariance is None
    np.testing.assert_array_equal(post.h[:, 0], h0)
    np.testing.assert_array_equal(post.c[:, 0], c0)
    np.testing.assert_allclose(post.mean[:, 0], h0 @ projection[0] + projection[1], rtol=1e-12)
    assert np.isnan(post.kl[:, 0]).all() and np.isfinite(post.kl[:, 1:]).all() and (post.kl[:, 1:] >= 0).all()
    # Σ accumulated: the precision only grows, the entropy only falls
    assert (np.diff(post.entropy, axis=1) < 0).all()
    # integer inputs are read as float64
    ints = model.filter(np.round(inputs).astype(np.int64))
    assert ints.mean.dtype == np.float64
    np.testing.assert_array_equal(ints.mean, model.filter(np.round(inputs)).mean)
