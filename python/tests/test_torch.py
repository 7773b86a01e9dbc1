"""``lvrnn.LaplaceLSTM`` on a real ``torch.nn.LSTM``: its h trajectory equals torch's forward.

Skipped (with the reason printed by ``pytest -rs``) where torch is not installed. A seeded
``nn.LSTM(d_in, H, batch_first=True)`` with random weights; its ``state_dict()`` (tensors) goes
to lvrnn as it is, and the inputs as tensors too. torch's ``output[:, t]`` is lvrnn's
``h[:, t + 1]`` (``h[:, 0]`` is the initial carry); torch takes h0 / c0 as (1, B, H), lvrnn as
(B, H). An ``nn.Linear(H, n)`` projection is passed as ``linear.weight.T`` and ``linear.bias``.

Tolerances (absolute, elementwise):
- float64 LSTM (``.double()``): 1e-5 (measured max |difference| 2.2e-16);
- float32 LSTM with float32 inputs (lvrnn's fast filter): 1e-5 (measured 1.0e-7);
- the mean with a projection (Σ accumulated: mu_t = linear(h_t)): 1e-5 (measured ~1e-16 in
  float64, ~6e-8 in float32).
"""

from __future__ import annotations

import numpy as np
import pytest

import lvrnn

torch = pytest.importorskip("torch", reason="torch is not installed: the torch cross-check is skipped")
nn = torch.nn

D_IN, H, N, B, T = 4, 7, 3, 3, 12
ATOL = 1e-5


def make_lstm(dtype, bias=True) -> "nn.LSTM":
    torch.manual_seed(11)
    lstm = nn.LSTM(D_IN, H, batch_first=True, bias=bias)
    with torch.no_grad():  # larger than the default init, so that the gates saturate somewhat
        for p in lstm.parameters():
            p.uniform_(-0.7, 0.7)
    return lstm.to(dtype)


def make_inputs(dtype):
    g = torch.Generator().manual_seed(12)
    return torch.randn(B, T, D_IN, generator=g, dtype=torch.float64).to(dtype)


def torch_h(lstm, x, h0=None, c0=None):
    with torch.no_grad():
        out, _ = lstm(x) if h0 is None else lstm(x, (h0[None], c0[None]))
    return out.numpy()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("with_carry", [False, True], ids=["zero-carry", "given-h0-c0"])
def test_h_trajectory_equals_torch_lstm_forward(dtype, with_carry):
    lstm = make_lstm(dtype)
    x = make_inputs(dtype)
    g = torch.Generator().manual_seed(13)
    h0 = torch.randn(B, H, generator=g, dtype=torch.float64).to(dtype) * 0.5 if with_carry else None
    c0 = torch.randn(B, H, generator=g, dtype=torch.float64).to(dtype) if with_carry else None
    want = torch_h(lstm, x, h0, c0)
    post = lvrnn.LaplaceLSTM(lstm.state_dict()).filter(x, "laplace:window=1,accumulate=sigma", h0=h0, c0=c0)
    expected_dtype = np.float64 if dtype == torch.float64 else np.float32
    assert post.h.dtype == expected_dtype and post.h.shape == (B, T + 1, H)
    np.testing.assert_allclose(post.h[:, 1:], want, rtol=0, atol=ATOL)
    np.testing.assert_allclose(post.h[:, 0], np.zeros((B, H)) if h0 is None else h0.numpy(), rtol=0, atol=0)
    # z = h without a projection
    np.testing.assert_allclose(post.mean, post.h, rtol=0, atol=0)


def test_h_trajectory_of_one_sequence_without_a_batch_axis_equals_torch():
    lstm = make_lstm(torch.float64)
    x = make_inputs(torch.float64)[0]  # (T, d_in): torch reads it as one unbatched sequence
    with torch.no_grad():
        want, _ = lstm(x)
    post = lvrnn.LaplaceLSTM(lstm.state_dict()).filter(x)
    assert post.h.shape == (T + 1, H)
    np.testing.assert_allclose(post.h[1:], want.numpy(), rtol=0, atol=ATOL)


def test_an_lstm_without_biases_equals_torch():
    lstm = make_lstm(torch.float64, bias=False)
    assert "bias_ih_l0" not in lstm.state_dict()
    x = make_inputs(torch.float64)
    post = lvrnn.LaplaceLSTM(lstm.state_dict()).filter(x)
    np.testing.assert_allclose(post.h[:, 1:], torch_h(lstm, x), rtol=0, atol=ATOL)


class Agent(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(D_IN, H, batch_first=True)
        self.head = nn.Linear(H, N)


@pytest.mark.parametrize("spec", ["laplace:window=1,accumulate=sigma", "laplace:window=3,accumulate=none,diagonal=true"])
def test_an_nn_linear_projection_gives_mean_equal_to_linear_of_h(spec):
    torch.manual_seed(5)
    agent = Agent().double()
    x = make_inputs(torch.float64)
    with torch.no_grad():
        out, _ = agent.lstm(x)
        want = agent.head(out).numpy()  # (B, T, n)
        mean0 = agent.head(torch.zeros(H, dtype=torch.float64)).numpy()
    # the whole agent's state dict, the LSTM selected by its prefix
    model = lvrnn.LaplaceLSTM(agent.state_dict(), projection=agent.head.weight.T, bias=agent.head.bias, prefix="lstm.")
    assert (model.input_size, model.hidden_size, model.features) == (D_IN, H, N)
    post = model.filter(x, spec)
    np.testing.assert_allclose(post.mean[:, 1:], want, rtol=0, atol=ATOL)
    np.testing.assert_allclose(post.mean[:, 0], np.broadcast_to(mean0, (B, N)), rtol=0, atol=ATOL)
    # the same from the LSTM's own state dict
    same = lvrnn.LaplaceLSTM(agent.lstm.state_dict(), agent.head.weight.T, agent.head.bias).filter(x, spec)
    np.testing.assert_array_equal(same.precision, post.precision)
    # a float32 agent through the fast filter
    agent32 = agent.float()
    with torch.no_grad():
        want32 = agent32.head(agent32.lstm(x.float())[0]).numpy()
    post32 = lvrnn.LaplaceLSTM(agent32.lstm.state_dict(), agent32.head.weight.T, agent32.head.bias).filter(x.float(), spec)
    assert post32.mean.dtype == np.float32
    np.testing.assert_allclose(post32.mean[:, 1:], want32, rtol=0, atol=ATOL)
