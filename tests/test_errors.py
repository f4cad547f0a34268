"""Every bad-input path of the public functions of the core (issue 2): a ValueError or TypeError
that names the argument and what is allowed — never a silent wrong answer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lintrans.attention import check_options, predict, scale_factor
from lintrans.checks import t6_locality
from lintrans.constructions import gd_construction
from lintrans.cli import ArgParser, load_results
from lintrans.io import load_json, load_npz, require_float_array, save_npz
from lintrans.params import LinearAttentionParams, init_params, load_params, save_params, validate_params
from lintrans.pruning import kept_rank, truncate_matrix
from lintrans.tasks import load_prompts, random_prompts, sample_linear
from lintrans.trajectory import trajectory

KEY = jax.random.PRNGKey(0)


def good(L=2, D=3):
    return init_params(KEY, L, D, 0.5, jnp.float64)


# --- options ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"mask": "full"}, "mask must be one of"),
        ({"mask": None}, "mask must be one of"),
        ({"scale": "N"}, "scale must be one of"),
        ({"scale": 1}, "scale must be one of"),
        ({"readout": 0}, "readout must be"),
        ({"readout": 2}, "readout must be"),
        ({"readout": True}, "readout must be"),
    ],
)
def test_check_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        check_options(**kwargs)


def test_options_reach_every_entry_point():
    params = good()
    H = random_prompts(KEY, 1, 4, 2, 1, jnp.float64)[0]
    with pytest.raises(ValueError, match="mask"):
        trajectory(params, H, mask="bogus")
    with pytest.raises(ValueError, match="readout"):
        predict(params, H, readout=-2)
    with pytest.raises(ValueError, match="scale"):
        scale_factor("2", 4)


# --- parameters -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dim,L,scale,exc,match",
    [
        (0, 2, 0.1, ValueError, "dim must be a positive integer"),
        (3, 0, 0.1, ValueError, "n_layers must be a positive integer"),
        (3, -1, 0.1, ValueError, "n_layers"),
        (3, True, 0.1, ValueError, "n_layers"),
        (3.0, 2, 0.1, ValueError, "dim"),
        (3, 2, -0.1, ValueError, "init_scale must be a finite number >= 0"),
        (3, 2, float("nan"), ValueError, "init_scale"),
        (3, 2, float("inf"), ValueError, "init_scale"),
        (3, 2, "0.1", ValueError, "init_scale"),
    ],
)
def test_init_params(dim, L, scale, exc, match):
    with pytest.raises(exc, match=match):
        init_params(KEY, L, dim, scale)


def test_validate_params():
    p = good()
    assert validate_params(p) is p
    with pytest.raises(TypeError, match="LinearAttentionParams"):
        validate_params({"w_k": p.w_k, "w_q": p.w_q, "w_v": p.w_v})
    with pytest.raises(ValueError, match="w_k must have 3 dimensions"):
        validate_params(p._replace(w_k=p.w_k[0]))
    with pytest.raises(ValueError, match=r"w_q must have shape \(L, D, D\)"):
        validate_params(p._replace(w_q=jnp.zeros((2, 3, 4))))
    with pytest.raises(ValueError, match="same shape"):
        validate_params(p._replace(w_v=jnp.zeros((3, 3, 3))))
    with pytest.raises(ValueError, match="at least one layer"):
        validate_params(LinearAttentionParams(*(jnp.zeros((0, 3, 3)),) * 3))
    with pytest.raises(TypeError, match="w_k must be a floating-point array"):
        validate_params(p._replace(w_k=jnp.zeros((2, 3, 3), jnp.int32)))
    with pytest.raises(TypeError, match="share one dtype"):
        validate_params(p._replace(w_k=p.w_k.astype(jnp.float32)))
    with pytest.raises(ValueError, match="w_v contains NaN or Inf"):
        validate_params(p._replace(w_v=p.w_v.at[0, 0, 0].set(jnp.inf)))
    with pytest.raises(ValueError, match="D = 3 but the prompts have D = 4"):
        validate_params(p, dim=4)


def test_load_params(tmp_path):
    p = good()
    ok = tmp_path / "ok.npz"
    save_params(ok, p)
    loaded = load_params(ok)
    np.testing.assert_array_equal(loaded.w_k, p.w_k)
    with pytest.raises(ValueError, match="no such file"):
        load_params(tmp_path / "missing.npz")
    arrays = {k: np.asarray(getattr(p, k)) for k in ("w_k", "w_q", "w_v")}
    cases = {
        "missing": ({"w_k": arrays["w_k"], "w_q": arrays["w_q"]}, ValueError, r"missing array\(s\) \['w_v'\]"),
        "misnamed": ({"W_K": arrays["w_k"], "w_q": arrays["w_q"], "w_v": arrays["w_v"]}, ValueError, "missing array"),
        "rank": ({**arrays, "w_k": arrays["w_k"][0]}, ValueError, "w_k must have 3 dimensions"),
        "integer": ({**arrays, "w_q": arrays["w_q"].astype(np.int64)}, TypeError, "w_q must be a floating-point"),
        "nan": ({**arrays, "w_v": np.where(arrays["w_v"] > 0, np.nan, arrays["w_v"])}, ValueError, "NaN or Inf"),
        "shape": ({**arrays, "w_v": np.zeros((2, 4, 4))}, ValueError, "same shape"),
    }
    for name, (content, exc, match) in cases.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, **content)
        with pytest.raises(exc, match=match):
            load_params(path)
        with pytest.raises(exc, match=str(path).replace("\\", "\\\\")):
            load_params(path)  # the message names the file


def test_unreadable_files(tmp_path):
    ok = tmp_path / "ok.npz"
    save_params(ok, good())
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(ok.read_bytes()[: ok.stat().st_size // 2])
    text = tmp_path / "text.npz"
    text.write_text("not an archive")
    obj = tmp_path / "object.npz"
    np.savez(obj, w_k=np.array([None, 1], dtype=object), w_q=np.zeros((1, 2, 2)), w_v=np.zeros((1, 2, 2)))
    for path, match in ((truncated, "not a readable npz"), (text, "not a readable npz"), (obj, "object arrays")):
        with pytest.raises(ValueError, match=match):
            load_params(path)
        with pytest.raises(ValueError, match=match):
            load_npz(path)
    with pytest.raises(ValueError, match="no such file"):
        load_npz(tmp_path)  # a directory is not a file


def test_load_prompts(tmp_path):
    H = np.asarray(random_prompts(KEY, 3, 4, 2, 1, jnp.float64))
    ok = tmp_path / "ok.npz"
    save_npz(ok, {"H": H})
    np.testing.assert_array_equal(load_prompts(ok), H)
    cases = {
        "missing": ({"X": H}, ValueError, "missing array"),
        "rank": ({"H": H[0]}, ValueError, "H must have 3 dimensions"),
        "integer": ({"H": H.astype(np.int32)}, TypeError, "H must be a floating-point"),
        "inf": ({"H": np.where(H > 1, np.inf, H)}, ValueError, "NaN or Inf"),
        "no demos": ({"H": H[:, :, :1]}, ValueError, r"H must have shape \(B, D, N\+1\)"),
        "D=1": ({"H": H[:, :1, :]}, ValueError, r"H must have shape \(B, D, N\+1\)"),
        "B=0": ({"H": H[:0]}, ValueError, r"H must have shape"),
    }
    for name, (content, exc, match) in cases.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, **content)
        with pytest.raises(exc, match=match):
            load_prompts(path)


# --- samplers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [(0, 4, 2), (2, 0, 2), (2, 4, 0), (2, -1, 2), (True, 4, 2), (2.0, 4, 2)],
)
def test_sampler_sizes(args):
    with pytest.raises(ValueError, match="must be a positive integer"):
        random_prompts(KEY, *args)
    with pytest.raises(ValueError, match="must be a positive integer"):
        sample_linear(KEY, *args)
    with pytest.raises(ValueError, match="d_out must be a positive integer"):
        random_prompts(KEY, 2, 4, 2, d_out=0)


def test_sample_linear_options():
    with pytest.raises(ValueError, match="noise_std"):
        sample_linear(KEY, 2, 4, 3, noise_std=-1.0)
    with pytest.raises(ValueError, match="sparsity"):
        sample_linear(KEY, 2, 4, 3, sparsity=4)
    with pytest.raises(ValueError, match="sparsity"):
        sample_linear(KEY, 2, 4, 3, sparsity=0)
    with pytest.raises(ValueError, match="cov_sqrt"):
        sample_linear(KEY, 2, 4, 3, cov_sqrt=jnp.eye(2))


# --- constructions, pruning, checks -----------------------------------------------------------


@pytest.mark.parametrize(
    "etas,d_in,match",
    [
        ([], 2, "etas must be a non-empty 1-D"),
        ([[0.1]], 2, "etas must be a non-empty 1-D"),
        ([0.1, float("nan")], 2, "etas must be finite"),
        ([0.1], 0, "d_in must be a positive integer"),
        ([0.1], True, "d_in"),
    ],
)
def test_gd_construction(etas, d_in, match):
    with pytest.raises(ValueError, match=match):
        gd_construction(etas, d_in)


def test_kept_rank_and_truncate_matrix():
    with pytest.raises(ValueError, match="rule must be one of"):
        kept_rank(4, 4, 0.5, rule="floor")
    with pytest.raises(ValueError, match="m must be a positive integer"):
        kept_rank(0, 4, 0.5)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        kept_rank(4, 2.5, 0.5)
    with pytest.raises(ValueError, match="min_rank must be an integer >= 0"):
        kept_rank(4, 4, 0.5, min_rank=-1)
    with pytest.raises(ValueError, match="a must be a matrix"):
        truncate_matrix(jnp.ones(4), 0.5)
    with pytest.raises(TypeError, match="a must be a floating-point matrix"):
        truncate_matrix(jnp.ones((3, 3), jnp.int32), 0.5)
    with pytest.raises(TypeError, match="clipping rate"):
        truncate_matrix(jnp.ones((3, 3)), "0.5")


def test_t6_layer_index():
    params = good()
    traj = trajectory(params, random_prompts(KEY, 1, 3, 2, 1, jnp.float64)[0])
    with pytest.raises(ValueError, match=r"k must be a layer in 1..2"):
        t6_locality(traj, traj, 0)


# --- io and harness ---------------------------------------------------------------------------


def test_require_float_array():
    with pytest.raises(TypeError, match="x must be a floating-point array"):
        require_float_array("x", np.array(["a"]))
    with pytest.raises(TypeError, match="x must be a floating-point array"):
        require_float_array("x", np.ones(3, complex))
    with pytest.raises(ValueError, match="x must have 2 dimensions"):
        require_float_array("x", np.ones(3), ndim=2)
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        require_float_array("x", np.array([1.0, np.nan]))


def test_save_npz_refuses_object_arrays(tmp_path):
    with pytest.raises(TypeError, match="dtype object"):
        save_npz(tmp_path / "x.npz", {"a": np.array([None, 1], dtype=object)})
    assert not (tmp_path / "x.npz").exists(), "nothing is written half-way"


def test_json_and_results_files(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a readable JSON"):
        load_json(bad)
    other = tmp_path / "other.json"
    other.write_text('{"a": 1}')
    with pytest.raises(ValueError, match="not a lintrans results file"):
        load_results(other)


def test_argparser_errors_exit_2(capsys):
    p = ArgParser(prog="x")
    p.add_argument("--n", type=int)
    with pytest.raises(SystemExit) as e:
        p.parse_args(["--n", "abc"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
