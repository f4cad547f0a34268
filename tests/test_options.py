"""AttentionOptions: the attention variant validated once, with s(N)."""

import jax
import jax.numpy as jnp
import pytest

from lintrans import attention
from lintrans.attention import AttentionOptions, resolve_options
from lintrans.params import init_params
from lintrans.trajectory import trajectory


def test_options_validate_and_scale():
    assert AttentionOptions().s(40) == 1.0
    assert AttentionOptions(scale="1/N").s(40) == 1.0 / 40
    for bad, needle in (({"mask": "foo"}, "mask must be one of"), ({"scale": "2"}, "scale must be one of"),
                        ({"readout": 0}, "readout must be"), ({"readout": True}, "readout must be")):
        with pytest.raises(ValueError, match=needle):
            AttentionOptions(**bad)
    with pytest.raises(TypeError, match="AttentionOptions"):
        resolve_options(("demos", "1", 1))


@pytest.mark.slow
def test_options_equal_keywords(monkeypatch):
    key = jax.random.PRNGKey(0)
    params = init_params(key, 3, 4, 0.3)
    H = jax.random.normal(jax.random.fold_in(key, 1), (4, 7))
    opts = AttentionOptions("causal", "1/N", -1)
    a = attention.predict(params, H, mask="causal", scale="1/N", readout=-1)
    # Identity of the two call forms: exactly the same computation, so bitwise equal.
    assert float(attention.predict(params, H, options=opts)) == float(a)
    t1 = trajectory(params, H, mask="causal", scale="1/N")
    t2 = trajectory(params, H, options=opts)
    assert all(bool(jnp.array_equal(x, y)) for x, y in zip(t1, t2))
    # Given an AttentionOptions, nothing validates again.
    calls = []
    orig = AttentionOptions.__post_init__
    monkeypatch.setattr(AttentionOptions, "__post_init__", lambda self: (calls.append(1), orig(self)))
    attention.predict(params, H, options=opts)
    trajectory(params, H, options=opts)
    assert calls == []
