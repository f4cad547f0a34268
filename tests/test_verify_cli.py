"""experiments/verify_theorem1.py as a command: smoke run, exit codes 0/1/2, file round trips,
and every bad-input path (one line ``error: …``, exit 2, no traceback). Tiny sizes, tmp_path only
(the committed figures/ are never touched). Most runs share one shape so the jit cache is reused.
Runs go through ``lintrans.cli.command`` in-process; tests/test_cli_errors.py drives real processes (its table
holds this script's bad inputs as programs: exit 2, one line, no traceback)."""

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lintrans.io import save_npz
from lintrans.params import init_params, save_params
from lintrans.tasks import random_prompts
from lintrans.trajectory import trajectory

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "experiments" / "verify_theorem1.py"


@pytest.fixture(scope="module")
def vt():
    spec = importlib.util.spec_from_file_location("verify_theorem1", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["verify_theorem1"] = mod  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


TINY = ["--d-in", "2", "--n-demos", "3", "--batch", "4", "--layers", "1,2", "--quiet"]


def outputs(tmp_path):
    return ["--json", str(tmp_path / "r.json"), "--figures-dir", str(tmp_path)]


def run_cli(vt, argv, monkeypatch, capsys):
    """Run the script's ``cli(main)`` in-process with ``argv``; return (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["verify_theorem1.py", *argv])
    with pytest.raises(SystemExit) as e:
        vt.cli.command(vt.main)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def assert_bad_input(vt, argv, monkeypatch, capsys, match):
    code, out, err = run_cli(vt, argv, monkeypatch, capsys)
    assert code == 2, f"{argv}: exit {code}, stderr {err!r}"
    assert err.startswith("error: "), err
    assert err.strip().count("\n") == 0, f"one line expected: {err!r}"
    assert "Traceback" not in err
    assert match in err, f"{match!r} not in {err!r}"


@pytest.mark.slow
def test_smoke_exit_0_and_files(vt, tmp_path, monkeypatch, capsys):
    code, out, err = run_cli(vt, [*TINY, *outputs(tmp_path)], monkeypatch, capsys)
    assert code == 0, err
    assert "PASS" in out and "exit 0" in out
    doc = json.loads((tmp_path / "r.json").read_text())
    prov = doc["provenance"]
    assert prov["seed"] == 0 and "git_revision" in prov and "jax" in prov["versions"] and prov["x64"]
    res = doc["results"]
    assert res["exit_status"] == 0 and res["passed"]
    rows = res["main"]["rows"]
    # 2 depths × 5 checks × 2 dtypes, every float64 one a pass
    assert len(rows) == 20
    assert all(r["status"] == "PASS" for r in rows if r["dtype"] == "float64")
    assert all(r["max"] <= 1e-12 for r in rows if r["dtype"] == "float64" and r["check"] != "T5")
    assert res["overflow"] is not None and len(res["overflow"]["rows"]) == 20
    assert (tmp_path / "theorem1_identity.png").stat().st_size > 1000
    assert not (tmp_path / "r.npz").exists(), "no npz unless --per-prompt asks for it"
    assert out.count("wrote: ") == 2 and "r.json" in out and "theorem1_identity.png" in out, "every file written is named"
    code, out, err = run_cli(vt, [*TINY, "--per-prompt", *outputs(tmp_path)], monkeypatch, capsys)
    assert code == 0, err
    arrays = np.load(tmp_path / "r.npz")
    assert arrays["main_float64_L2_T1"].shape == (4, 2)
    assert "r.npz" in out
    # re-plot from the saved results only
    (tmp_path / "theorem1_identity.png").unlink()
    code, _, err = run_cli(vt, ["--plot-only", *outputs(tmp_path)], monkeypatch, capsys)
    assert code == 0, err
    assert (tmp_path / "theorem1_identity.png").exists()


def test_default_init_scale(vt):
    assert vt.verify.default_init_scale("1", 40) == pytest.approx(0.05)
    assert vt.verify.default_init_scale("1", 320) == pytest.approx(0.025)  # ∝ N^(-1/3)
    assert vt.verify.default_init_scale("1/N", 7) == 0.1


@pytest.mark.slow
def test_nonfinite_main_block_exits_1(vt, tmp_path, monkeypatch, capsys):
    # weights ~1e120: ΔW_1 ~ 1e360 overflows float64 in layer 1
    params = init_params(jax.random.PRNGKey(0), 2, 3, 1e120, jnp.float64)
    save_params(tmp_path / "big.npz", params)
    code, out, err = run_cli(
        vt, ["--params", str(tmp_path / "big.npz"), *TINY[:-3], "--quiet", *outputs(tmp_path)], monkeypatch, capsys
    )
    assert code == 1, err
    assert "FAIL" in out
    res = json.loads((tmp_path / "r.json").read_text())["results"]
    assert res["overflow"] is None and "params" in res["overflow_skipped"]
    bad = [r for r in res["main"]["rows"] if r["dtype"] == "float64" and r["status"] == "NONFINITE"]
    assert bad and all(r["n_nonfinite"] > 0 and r["first_nonfinite_layer"] == 1 for r in bad)


def test_identity_failure_exits_1(vt):
    """An identity above its tolerance fails the run (tolerance 0: only exact zeros pass)."""
    config = vt.Config(d_in=2, n_demos=3, batch=4, layers=(1, 2), dtype="float64", overflow_init_scale=0.0, tol_float64=0.0)
    res = vt.run(config)
    assert res["exit_status"] == 1 and not res["passed"]
    assert any("T1" in f for f in res["failures"])
    # T2 at L = 1 is exact by construction (I + W_1 = I + ΔW_1), so it passes even at tolerance 0
    t2 = [r for r in res["main"]["rows"] if r["check"] == "T2" and r["L"] == 1]
    assert t2[0]["max"] == 0.0 and t2[0]["status"] == "PASS"


def test_float32_alone_decides(vt):
    config = vt.Config(d_in=2, n_demos=3, batch=4, layers=(1, 2), dtype="float32", overflow_init_scale=0.0)
    res = vt.run(config)
    assert res["decisive_dtype"] == "float32" and res["exit_status"] == 0
    assert all(r["dtype"] == "float32" for r in res["main"]["rows"])
    res = vt.run(dataclasses.replace(config, tol_float32=1e-12))
    assert res["exit_status"] == 1, "float32 at 1e-12 must fail when float32 is the only dtype"


@pytest.mark.slow
def test_params_prompts_dump_round_trip(vt, tmp_path, monkeypatch, capsys):
    D, N, B, L = 3, 3, 4, 2
    params = init_params(jax.random.PRNGKey(1), L, D, 0.3, jnp.float64)
    H = random_prompts(jax.random.PRNGKey(2), B, N, D - 1, 1, jnp.float64)
    save_params(tmp_path / "p.npz", params)
    save_npz(tmp_path / "h.npz", {"H": np.asarray(H)})
    for dtype, np_dtype in (("float64", np.float64), ("float32", np.float32), ("both", np.float64)):
        dump = tmp_path / f"dump_{dtype}.npz"
        argv = ["--params", str(tmp_path / "p.npz"), "--prompts", str(tmp_path / "h.npz"), "--dump", str(dump),
                "--dtype", dtype, "--quiet", *outputs(tmp_path)]
        code, out, err = run_cli(vt, argv, monkeypatch, capsys)
        assert code == 0, err
        z = np.load(dump)
        assert set(z.files) == {"delta_w", "G", "W", "states"}
        assert z["delta_w"].shape == z["G"].shape == z["W"].shape == (B, L, D, D)
        assert z["states"].shape == (B, L + 1, D, N + 1)
        assert all(z[k].dtype == np_dtype for k in z.files), f"--dtype {dtype} dumps {np_dtype}"
        cast = lambda a: jnp.asarray(a, np_dtype)  # noqa: E731
        ref = jax.vmap(lambda h: trajectory(type(params)(*map(cast, params)), h))(cast(H))
        tol = 1e-13 if np_dtype == np.float64 else 1e-5
        for k in z.files:
            np.testing.assert_allclose(z[k], np.asarray(getattr(ref, k)), rtol=tol, atol=tol)
        np.testing.assert_array_equal(z["states"][:, 0], np.asarray(H, np_dtype))
    res = json.loads((tmp_path / "r.json").read_text())["results"]
    assert res["config"]["layers"] == [1, 2] and res["config"]["batch"] == B and res["config"]["n_demos"] == N


def test_readout_recorded(vt, tmp_path, monkeypatch, capsys):
    r = {}
    for sign in ("1", "-1"):
        code, _, err = run_cli(vt, [*TINY, "--readout", sign, "--dtype", "float64", *outputs(tmp_path)], monkeypatch, capsys)
        assert code == 0, err
        res = json.loads((tmp_path / "r.json").read_text())["results"]
        r[sign] = res["main"]["predictions"][-1]
        assert r[sign]["readout"] == int(sign)
    assert r["1"]["mean"] == pytest.approx(-r["-1"]["mean"], rel=1e-14)


@pytest.fixture()
def files(tmp_path):
    """Valid params (D = 3, L = 2) and prompts (D = 3, N = 3) plus broken variants."""
    p = init_params(jax.random.PRNGKey(0), 2, 3, 0.3, jnp.float64)
    arrays = {k: np.asarray(getattr(p, k)) for k in ("w_k", "w_q", "w_v")}
    H = np.asarray(random_prompts(jax.random.PRNGKey(1), 4, 3, 2, 1, jnp.float64))
    f = {}

    def put(name, **content):
        path = tmp_path / f"{name}.npz"
        np.savez(path, **content)
        f[name] = str(path)

    put("params", **arrays)
    put("prompts", H=H)
    put("missing", w_k=arrays["w_k"], w_q=arrays["w_q"])
    put("misnamed", W_K=arrays["w_k"], w_q=arrays["w_q"], w_v=arrays["w_v"])
    put("rank", **{**arrays, "w_k": arrays["w_k"][0]})
    put("shape", **{**arrays, "w_v": np.zeros((2, 3, 4))})
    put("int_params", **{k: v.astype(np.int32) for k, v in arrays.items()})
    put("nan_params", **{**arrays, "w_q": np.full((2, 3, 3), np.nan)})
    put("prompts_D4", H=np.zeros((4, 4, 4)))
    put("prompts_rank", H=H[0])
    put("prompts_int", H=H.astype(np.int64))
    put("prompts_inf", H=np.where(H > 0.5, np.inf, H))
    put("prompts_label", H=np.ones_like(H))
    put("H_misnamed", X=H)
    put("object", H=np.array([None], dtype=object))
    put("f16_params", **{k: v.astype(np.float16) for k, v in arrays.items()})
    put("f16_prompts", H=H.astype(np.float16))
    (tmp_path / "adir.npz").mkdir()
    f["dir"] = str(tmp_path / "adir.npz")
    trunc = tmp_path / "truncated.npz"
    trunc.write_bytes(Path(f["params"]).read_bytes()[:300])
    f["truncated"] = str(trunc)
    text = tmp_path / "text.npz"
    text.write_text("hello")
    f["text"] = str(text)
    f["nofile"] = str(tmp_path / "nofile.npz")
    return f


BAD = [
    (["--params", "{missing}"], "missing array"),
    (["--params", "{misnamed}"], "missing array"),
    (["--params", "{rank}"], "w_k must have 3 dimensions"),
    (["--params", "{shape}"], "shape"),
    (["--params", "{int_params}"], "floating-point"),
    (["--params", "{nan_params}"], "NaN or Inf"),
    (["--params", "{truncated}"], "not a readable npz"),
    (["--params", "{text}"], "not a readable npz"),
    (["--params", "{nofile}"], "no such file"),
    (["--params", "{params}", "--prompts", "{prompts_D4}"], "D"),
    (["--params", "{params}", "--layers", "1,3"], "holds 2 layers"),
    (["--params", "{params}", "--init-scale", "0.1"], "--init-scale has no meaning with --params"),
    (["--params", "{params}", "--d-in", "5"], "--d-in 5"),
    (["--prompts", "{prompts_rank}"], "H must have 3 dimensions"),
    (["--prompts", "{prompts_int}"], "floating-point"),
    (["--prompts", "{prompts_inf}"], "NaN or Inf"),
    (["--prompts", "{prompts_label}"], "label slot"),
    (["--prompts", "{H_misnamed}"], "missing array"),
    (["--prompts", "{object}"], "object arrays"),
    (["--prompts", "{prompts}", "--n-demos", "5"], "--n-demos has no meaning with --prompts"),
    (["--prompts", "{prompts}", "--batch", "5"], "--batch has no meaning with --prompts"),
    (["--batch", "0"], "--batch"),
    (["--n-demos", "-3"], "--n-demos"),
    (["--d-in", "0"], "--d-in"),
    (["--layers", "0,2"], "--layers"),
    (["--layers", "a"], "--layers"),
    (["--layers", ""], "--layers"),
    (["--init-scale", "-1"], "--init-scale"),
    (["--init-scale", "nan"], "--init-scale"),
    (["--mask", "full"], "--mask"),
    (["--scale", "2"], "--scale"),
    (["--readout", "0"], "--readout"),
    (["--dtype", "float16"], "--dtype"),
    (["--task", "sparse"], "--task"),
    (["--seed", "x"], "--seed"),
    (["--seed", "99999999999999999999"], "--seed"),
    (["--layers", "99999999999999999999"], "--layers"),
    (["--batch", "1000000000"], "int32"),
    (["--d-in", "100000", "--layers", "16"], "int32"),
    (["--d-in", "200", "--layers", "4"], "of memory available"),  # 1 GiB available (monkeypatched)
    (["--params", "{f16_params}"], "float16"),
    (["--prompts", "{f16_prompts}"], "float16"),
    (["--params", "{dir}"], "is a directory"),
    (["--prompts", "{prompts}", "--task", "linear"], "--task has no meaning with --prompts"),
    (["--dump", "{dir}"], "--dump"),
    (["--dump", "{text}/x.npz"], "--dump"),
    (["--frobnicate"], "unrecognized arguments"),
]


@pytest.mark.parametrize("argv,match", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_exit_2(vt, files, tmp_path, monkeypatch, capsys, argv, match):
    argv = [a.format(**files) for a in argv]
    monkeypatch.setattr(vt.cli, "available_memory", lambda: 2**30)
    assert_bad_input(vt, [*argv, *outputs(tmp_path)], monkeypatch, capsys, match)
    assert not (tmp_path / "r.json").exists(), "nothing written on bad input"


def test_bad_output_paths_and_plot_only(vt, tmp_path, monkeypatch, capsys):
    assert_bad_input(vt, ["--plot-only", "--json", str(tmp_path / "none.json")], monkeypatch, capsys, "no results file")
    assert_bad_input(vt, ["--plot-only", "--batch", "3", *outputs(tmp_path)], monkeypatch, capsys, "would be ignored")
    assert_bad_input(vt, [*TINY, "--json", str(tmp_path)], monkeypatch, capsys, "is a directory")
    not_results = tmp_path / "x.json"
    not_results.write_text('{"config": {}, "results": {}}')
    assert_bad_input(vt, ["--plot-only", "--json", str(not_results), "--figures-dir", str(tmp_path)], monkeypatch, capsys, "not a verify_theorem1 results file")
