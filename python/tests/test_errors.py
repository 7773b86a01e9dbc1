"""Bad input is refused with a ``ValueError`` whose message names the problem.

Each test gives one kind of bad input and matches (``re.search``) the part of lvrnn's message
that says what is wrong. No numeric tolerances here.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import lvrnn


@pytest.fixture
def model(torch_lstm, rng):
    """d_in = 3, H = 5, n = 3."""
    return lvrnn.LaplaceLSTM(torch_lstm, rng.normal(size=(5, 3)), rng.normal(size=3))


@pytest.fixture
def x(rng):
    return rng.normal(size=(2, 4, 3))


def raises(match: str):
    return pytest.raises(ValueError, match=match)


# --- inputs ------------------------------------------------------------------------------------


def test_inputs_with_the_wrong_number_of_features_are_refused(model, x):
    with raises(r"inputs have 2 features per step; this LSTM takes d_in = 3"):
        model.filter(x[..., :2])
    with raises(r"inputs have 4 features per step; this LSTM takes d_in = 3"):
        model.filter(np.zeros((4, 4)))  # one sequence (T, d_in) of the wrong width


@pytest.mark.parametrize("shape", [(3,), (1, 2, 4, 3)], ids=["1-D", "4-D"])
def test_inputs_that_are_not_b_t_d_in_are_refused(model, shape):
    with raises(r"inputs have shape \[.*\]; expected \(B, T, d_in\)"):
        model.filter(np.zeros(shape))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_nan_and_infinite_inputs_are_refused_with_their_index(model, x, dtype, bad):
    x = x.astype(dtype)
    x[1, 2, 0] = bad
    with raises(r"inputs\[1, 2, 0\] is not finite \((NaN|inf|-inf)\)"):
        model.filter(x)


def test_an_empty_batch_is_refused(model):
    with raises(r"no sequence \(B = 0\)"):
        model.filter(np.zeros((0, 4, 3)))


@pytest.mark.parametrize("dtype", ["U1", "complex128", "bool", "float16", "object"])
def test_arrays_of_a_non_float_dtype_are_refused(model, dtype):
    a = np.zeros((1, 2, 3)).astype(dtype)
    with raises(r"`inputs` has dtype .*; expected (a numeric array|float32 or float64)"):
        model.filter(a)


def test_a_string_array_as_inputs_or_weights_is_refused(model, torch_lstm):
    with raises(r"`inputs` has dtype <U1; expected a numeric array"):
        model.filter(np.array([[["a", "b", "c"]]]))
    bad = dict(torch_lstm, weight_ih_l0=torch_lstm["weight_ih_l0"].astype(str))
    with raises(r"`weight_ih_l0` has dtype <U\d+; expected a numeric array"):
        lvrnn.LaplaceLSTM(bad)


def test_an_initial_carry_of_the_wrong_size_or_not_finite_is_refused(model, x):
    with raises(r"h0 has shape \[2, 4\]; expected \(B, H\) = \(2, 5\)"):
        model.filter(x, h0=np.zeros((2, 4)))
    with raises(r"c0 has shape \[3, 5\]; expected \(B, H\) = \(2, 5\)"):
        model.filter(x, c0=np.zeros((3, 5)))
    with raises(r"c0 holds a non-finite value"):
        model.filter(x, c0=np.full((2, 5), np.nan))


def test_an_initial_carry_of_the_right_size_but_the_wrong_shape_is_refused(model, x):
    with raises(r"h0"):
        model.filter(x, h0=np.zeros((5, 2)))


# --- weights and projection --------------------------------------------------------------------


@pytest.mark.parametrize("key", ["weight_ih_l0", "weight_hh_l0"])
def test_a_missing_weight_is_named(torch_lstm, key):
    d = dict(torch_lstm)
    del d[key]
    with raises(rf"missing weight `{key}`"):
        lvrnn.LaplaceLSTM(d)


def test_a_missing_flax_weight_is_named(torch_lstm, to_flax):
    tree = to_flax(torch_lstm, wrap=True)
    del tree["params"]["hg"]["bias"]
    with raises(r"missing weight `hg/bias`"):
        lvrnn.LaplaceLSTM(tree)


@pytest.mark.parametrize(
    "key,shape,message",
    [
        ("bias_hh_l0", (19,), r"weight `bias_hh_l0` has shape \[19\]; expected \(20\)"),
        ("weight_hh_l0", (20, 4), r"weight `weight_hh_l0` has shape \[20, 4\]; expected \(4H, H\)"),
        ("weight_ih_l0", (19, 3), r"weight `weight_ih_l0` has shape \[19, 3\]; expected \(20, \*\)"),
    ],
)
def test_a_mis_shaped_weight_is_named_with_its_shape(torch_lstm, key, shape, message):
    d = dict(torch_lstm, **{key: np.zeros(shape)})
    with raises(message):
        lvrnn.LaplaceLSTM(d)


def test_a_non_finite_weight_is_refused(torch_lstm):
    w = torch_lstm["weight_hh_l0"].copy()
    w[0, 3] = np.inf
    with raises(r"weight `weight_hh_l0` holds a non-finite value \(inf\) at flat index 3"):
        lvrnn.LaplaceLSTM(dict(torch_lstm, weight_hh_l0=w))


def test_unrecognised_weights_and_unsupported_lstms_are_refused(torch_lstm):
    with raises(r"unrecognised LSTM weights"):
        lvrnn.LaplaceLSTM({"kernel": np.zeros(3)})
    with raises(r"weights must be a dict of arrays .* got list"):
        lvrnn.LaplaceLSTM([1, 2])
    with raises(r"only a single-layer, unidirectional nn.LSTM"):
        lvrnn.LaplaceLSTM(dict(torch_lstm, weight_ih_l1=torch_lstm["weight_ih_l0"]))
    with raises(r"no weight name starts with the prefix `lstm.`"):
        lvrnn.LaplaceLSTM(torch_lstm, prefix="lstm.")


def test_a_projection_of_the_wrong_shape_is_refused(torch_lstm):
    with raises(r"projection weight has shape \[3, 5\]; expected \(H, n\) with H = 5 .*pass weight.T"):
        lvrnn.LaplaceLSTM(torch_lstm, np.zeros((3, 5)))  # a torch nn.Linear weight, not transposed
    with raises(r"projection weight has shape \[5\]"):
        lvrnn.LaplaceLSTM(torch_lstm, np.zeros(5))
    with raises(r"projection bias has 4 values; expected n = 3"):
        lvrnn.LaplaceLSTM(torch_lstm, np.zeros((5, 3)), np.zeros(4))
    with raises(r"a projection bias without a projection weight"):
        lvrnn.LaplaceLSTM(torch_lstm, None, np.zeros(5))
    with raises(r"the projection holds a non-finite value"):
        lvrnn.LaplaceLSTM(torch_lstm, np.full((5, 3), np.nan))


# --- specs -------------------------------------------------------------------------------------


def test_an_unknown_spec_key_is_named_with_the_allowed_keys(model, x):
    with raises(r"unknown posterior key `bogus` for family laplace; allowed keys: window, accumulate"):
        model.filter(x, "laplace:window=1,bogus=2")


@pytest.mark.parametrize("spec", ["vrnn", "vrnn:diagonal=true", "rnn"])
def test_a_non_laplace_spec_is_refused_for_a_foreign_lstm(model, x, spec):
    with raises(rf"spec `{re.escape(spec)}` names the `[a-z-]+` family; a foreign LSTM's posterior is a Laplace one"):
        model.filter(x, spec)


@pytest.mark.parametrize("key", ["prior_precision", "damping"])
def test_auto_scales_are_refused_for_a_foreign_lstm(model, x, key):
    with raises(r'"auto" scales are chosen from an lvrnn network .* filter_priors / tune_prior'):
        model.filter(x, f"laplace:window=1,accumulate=none,{key}=auto")


@pytest.mark.parametrize(
    "spec,message",
    [
        ("laplace:accumulate=all", r"accumulate = `all` is not valid; allowed values: none, sigma, mu_sigma"),
        ("laplace:window=-1", r"posterior key `window` = `-1` is not valid"),
        ("laplace:prior_precision=-1", r"prior_precision must be a finite number > 0"),
        ("gauss", r"posterior family `gauss` is not valid; allowed values: rnn, vrnn, laplace"),
    ],
)
def test_bad_spec_values_are_named(model, x, spec, message):
    with raises(message):
        model.filter(x, spec)


def test_filter_priors_refuses_a_key_other_than_prior_precision_or_damping(model, x):
    with raises(r"key = `jitter` is not valid; allowed values: prior_precision, damping"):
        model.filter_priors(x, "laplace:window=1", [1.0], key="jitter")


def test_filter_priors_accepts_every_spec_that_filter_accepts(model, x):
    spec = "laplace:window=1, prior_precision=3"
    model.filter(x, spec)
    model.filter_priors(x, spec, [1.0])


def test_set_threads_refuses_zero():
    with raises(r"threads must be a positive integer \(got 0\)"):
        lvrnn.set_threads(0)


# --- files and checkpoints ---------------------------------------------------------------------


def test_a_checkpoint_or_weights_file_that_does_not_exist_is_refused(tmp_path):
    missing = tmp_path / "nowhere" / "model.safetensors"
    with raises(r"reading checkpoint .*model\.safetensors: No such file"):
        lvrnn.load(missing)
    with raises(r"reading .*model\.safetensors: No such file"):
        lvrnn.LaplaceLSTM(missing)
    junk = tmp_path / "junk.safetensors"
    junk.write_text("not a safetensors file")
    with raises(r"junk\.safetensors is not a safetensors file"):
        lvrnn.load(junk)
    with raises(r"junk\.safetensors is not a safetensors file"):
        lvrnn.LaplaceLSTM(junk)


def test_a_history_with_the_wrong_number_of_columns_is_refused(checkpoints):
    m = lvrnn.load(checkpoints["rnn"])
    with raises(r"histories have shape \[1, 2, 4\]; expected \(B, T, 3\)"):
        m.posterior(np.array([[1, -1, 0, 0], [1, 2, 1, 0]]))
    with raises(r"histories have shape \[3\]; expected \(B, T, 3\)"):
        m.posterior(np.array([1, -1, 0]))
    with raises(r"histories hold no step \(T = 0\)"):
        m.posterior(np.zeros((1, 0, 3)))
    with raises(r"`history` has dtype <U\d+; expected a numeric array"):
        m.posterior(np.array([["1", "-1", "0"]]))


def test_a_history_the_environment_could_not_give_is_refused_with_its_row(checkpoints):
    m = lvrnn.load(checkpoints["rnn"])
    with raises(r"history 0: history row 1: prev_action must be -1"):
        m.posterior(np.array([[1, 0, 0]]))
    with raises(r"history 1: history row 2: prev_action 7 is not an action index in 0..5"):
        m.posterior(np.array([[[1, -1, 0], [1, 2, 1]], [[1, -1, 0], [1, 7, 1]]]))
    with raises(r"history 0: history row 2, column 3: inf is not a finite number"):
        m.posterior(np.array([[1, -1, 0], [1, 2, np.inf]]))
    with raises(r"the bandit's observation is the constant 1"):
        m.posterior(np.array([[2, -1, 0]]))


def test_a_spec_the_checkpoint_cannot_take_is_refused(checkpoints):
    m = lvrnn.load(checkpoints["rnn"])
    h = np.array([[1, -1, 0]])
    with raises(r"cannot be applied post hoc to a network trained as `rnn`.*--init-from"):
        m.posterior(h, "vrnn")
    with raises(r"unknown posterior key `bogus`"):
        m.posterior(h, "laplace:bogus=2")
    with raises(r"`auto` in .* is chosen from the network at the start of training"):
        m.posterior(h, "laplace:prior_precision=auto")


def test_an_empty_batch_of_histories_is_a_value_error_not_a_panic(checkpoints):
    m = lvrnn.load(checkpoints["rnn"])
    try:
        m.posterior(np.zeros((0, 2, 3)))
    except ValueError:
        return
    except BaseException as e:  # pyo3_runtime.PanicException
        pytest.fail(f"{type(e).__name__}: {e}")
    pytest.fail("no error for an empty batch")


@pytest.mark.parametrize("spec", [None, "laplace:window=1,accumulate=sigma"])
def test_a_history_with_nan_is_refused_as_not_finite(checkpoints, spec):
    m = lvrnn.load(checkpoints["regression"])
    assert m.columns == 2
    with raises(r"(history|row).*(not a finite|is not finite)"):
        m.posterior(np.array([[0.1, 0.5], [np.nan, 0.2], [0.7, -0.4]]), spec)
