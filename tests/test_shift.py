"""The shift grammar (lintrans.shift): spelling, validation, resolution per model, the sampler."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lintrans.shift import DEFAULT_SHIFTS, Shift, parse_shift, parse_shifts, sample_shifted, spectrum_cov_sqrt
from lintrans.tasks import LinearTask


def test_control_and_combination():
    assert parse_shift("none") == Shift() == parse_shift("") and Shift().is_control
    s = parse_shift("noise=1,shots=10")
    assert s == Shift(shots=10, noise=1.0) and s.label() == "shots=10,noise=1"
    assert parse_shift(" shots = N/4 , sparsity=2").shots == (1, 4)


@pytest.mark.parametrize("text", DEFAULT_SHIFTS + ("spectrum=2:0.125", "shots=3N/2", "x_scale=1/2"))
def test_label_round_trips(text):
    s = parse_shift(text)
    assert parse_shift(s.label()) == s


@pytest.mark.parametrize("text,match", [
    ("temperature=2", "unknown key 'temperature'.*allowed keys: shots, noise, x_scale, spectrum, sparsity"),
    ("noise=-1", "noise=-1.*0 <= sigma <= 10"),
    ("noise=abc", "noise='abc': not a number"),
    ("x_scale=0", "x_scale.*0 < c <= 10"),
    ("shots=0", "shots"),
    ("shots=2.5", "shots='2.5': not an integer"),
    ("shots=3N", "shots=3N/1.*N/8 <= N' <= 2N"),
    ("shots=N/16", "shots"),
    ("spectrum=1:2", "spectrum.*HI >= LO"),
    ("spectrum=2", "spectrum='2'.*HI:LO"),
    ("sparsity=0", "sparsity"),
    ("noise=1,noise=2", "given twice"),
    ("noise", "not key=value"),
])
def test_errors_name_the_key_and_what_is_allowed(text, match):
    with pytest.raises(ValueError, match=match):
        parse_shift(text)


def test_model_dependent_ranges():
    assert parse_shift("shots=N/4").n_demos(20) == 5
    assert parse_shift("shots=N/8").n_demos(20) == 3  # rounded up
    assert parse_shift("shots=2N").n_demos(20) == 40
    with pytest.raises(ValueError, match="out of range for a model trained at N = 20.*3..40"):
        parse_shift("shots=41").n_demos(20)
    with pytest.raises(ValueError, match="sparsity=6.*d_in = 5"):
        parse_shift("sparsity=6").task(5, 20)
    with pytest.raises(ValueError, match="repeat"):
        parse_shifts(["noise=1", "noise=1.0"])


def test_task_and_resolved_dict():
    t = parse_shift("spectrum=2:1/8,x_scale=2,shots=N/2").task(3, 10, noise_train=0.1)
    assert isinstance(t, LinearTask) and t.n_demos == 5 and t.noise_std == 0.1
    np.testing.assert_allclose(np.diag(t.sigma()), 4 * np.array([2, 0.5, 0.125]), rtol=1e-12)
    assert parse_shift("noise=1,shots=N/4").resolved(5, 20) == {"shots": 5, "noise": 1.0}
    assert parse_shift("none").resolved(5, 20) == {}
    np.testing.assert_allclose(spectrum_cov_sqrt(1, 3.0, 1.0), [[np.sqrt(3.0)]])


def test_sampler_follows_the_shift():
    """Shapes and moments of shifted prompts: N' columns, Var x = c²λ, sparse w, noise in y_q (4000 prompts, 5 s.e.)."""
    key = jax.random.PRNGKey(0)

    def sampler(shift, n, **kw):  # jitted: one compilation per shift (op by op, one per primitive)
        return jax.jit(lambda k: sample_shifted(k, shift, n, d_in=3, n_train=8, **kw))

    b = sampler(parse_shift("shots=4,x_scale=2,sparsity=1"), 4000, dtype=jnp.float64)(key)
    assert b.H.shape == (4000, 4, 5)
    assert np.all(np.sum(np.asarray(b.w) != 0, axis=1) == 1)
    var_x = np.var(np.asarray(b.H)[:, :3, :4])
    assert abs(var_x - 4.0) < 5 * 4.0 * np.sqrt(2 / (4000 * 12))
    c = sampler(parse_shift("noise=2"), 4000, dtype=jnp.float64)(key)
    resid = np.asarray(c.y_query) - np.einsum("bd,bd->b", np.asarray(c.H)[:, :3, -1], np.asarray(c.w))
    assert abs(resid.var() - 4.0) < 5 * 4.0 * np.sqrt(2 / 4000)
    # the same key gives the same prompts (pure function of the key)
    control = sampler(Shift(), 3)
    np.testing.assert_array_equal(np.asarray(control(key).H), np.asarray(control(key).H))
