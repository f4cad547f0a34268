"""experiments/benchmark.py --small: every registered section runs at tiny sizes, the results file
has provenance and a row per measurement, and the implementations it compares agree."""

import importlib.util
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from lintrans.attention import forward_states, predict
from lintrans.params import init_params
from lintrans.tasks import random_prompts

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmark", ROOT / "experiments" / "benchmark.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["benchmark"] = mod  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_small_run_writes_results(bench, tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert bench.main(["--small", "--repeats", "2", "--quiet", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "GFLOP/s" in out and "[core]" in out
    doc = json.loads(path.read_text())
    assert doc["provenance"]["git_revision"] and doc["config"]["small"] is True
    res = doc["results"]
    assert res["reference_matmul"]["gflop_per_s"] > 0
    assert set(res["sections"]) == set(bench.SECTIONS) - set(bench.OPT_IN)
    core = res["sections"]["core"]
    impls = {"predict", "predict_tokens", "trajectory", "naive", "naive_states"}
    for N in core["sizes"]["n_demos"]:
        rows = [r for r in core["rows"] if r["N"] == N]
        assert {r["impl"] for r in rows} == impls
        for r in rows:
            assert r["prompts_per_s"] > 0 and r["median_s"] > 0
            assert r["recompiled"] is False, f"{r['impl']} recompiled inside the timed loop"
            assert r["timing"]["repeats"] == 2
    training = res["sections"]["training"]
    impls = set(training["sizes"]["impls"])
    assert {"library", "library_wishart", "naive"} <= impls
    for N in training["sizes"]["n_demos"]:
        rows = {r["impl"]: r for r in training["rows"] if r["N"] == N}
        assert impls | {"sampling_tokens", "sampling_wishart"} <= set(rows)
        for r in rows.values():
            assert r["median_s"] > 0 and r["recompiled"] is False, f"training {r['impl']}: timing"
        # interleaved rounds pool every round's repeats (at least the harness's repeats per round)
        assert rows["library"]["timing"]["repeats"] >= 3 * 2
    assert {(s["N"], s["impl"]) for s in training["speedups"]} == {
        (N, i) for N in training["sizes"]["n_demos"] for i in ("library", "library_wishart")}
    for a in training["agreement"]:
        assert a["finite"] and a["library_vs_naive_loss_rel_err"] < 1e-5
    for a in core["agreement"]:
        # float32 end to end: the fast path, the ΔW form and the attention matrix give one function
        assert a["all_finite"]
        assert a["predict_vs_naive_rel_err"] < 1e-4 and a["predict_tokens_vs_naive_rel_err"] < 1e-4


def test_naive_reference_matches_library_float64(bench):
    """The benchmark's naive attention-matrix forward is the same map as the library's (float64)."""
    bench_core = sys.modules["bench_core"]  # registered by benchmark.py's loader
    params = init_params(jax.random.PRNGKey(0), 3, 4, 0.4, jnp.float64)
    H = random_prompts(jax.random.PRNGKey(1), 1, 6, 3, 1, jnp.float64)[0]
    ref, y_ref, lib, y_lib = jax.jit(
        lambda p, h: (bench_core.naive_states(p, h), bench_core.naive_predict(p, h), forward_states(p, h), predict(p, h))
    )(params, H)
    assert float(jnp.linalg.norm(ref - lib) / jnp.linalg.norm(lib)) <= 1e-13, "naive vs ΔW-form states: rtol 1e-13"
    assert abs(float(y_ref) - float(y_lib)) <= 1e-13 * float(jnp.linalg.norm(lib[-1, :, -1])), "naive vs fast ŷ"


def test_time_jitted_contract(bench):
    util = bench.bench_util
    fn = jax.jit(lambda x: x * 2.0)
    t = util.time_jitted(fn, jnp.ones(3), repeats=3, number=2)
    assert t.repeats == 3 and t.number == 2 and len(t.times_s) == 3
    assert t.min_s <= t.median_s <= t.max_s and t.recompiled is False
    for bad in ({"repeats": 0}, {"number": -1}, {"warmup": 0}, {"repeats": 1.5}):
        with pytest.raises(ValueError, match="must be a positive integer"):
            util.time_jitted(fn, jnp.ones(3), **bad)
    with pytest.raises(ValueError, match="max_seconds"):
        util.time_jitted(fn, jnp.ones(3), max_seconds=0)
    # a budget stops the repeats early, but never below three
    t = util.time_jitted(fn, jnp.ones(3), repeats=50, max_seconds=1e-9)
    assert t.repeats == 3 and len(t.times_s) == 3


def _refused(bench, argv, capsys) -> str:
    """``main(argv)`` refuses: a ValueError, or the CLI's one ``error: …`` line and exit 2."""
    try:
        bench.main(argv)
    except ValueError as e:
        return str(e)
    except SystemExit as e:
        assert e.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and err.count("\n") == 1 and "Traceback" not in err
        return err
    pytest.fail(f"accepted: {argv}")


@pytest.mark.parametrize("argv,match", [
    (["--only", "nope"], "unknown section"),
    (["--repeats", "0"], "repeats"),
    # sizes beyond int32 indexing or memory: refused before anything is compiled, estimate named
    (["--batch", "1000000000"], "int32 indexing"),
    (["--n-prompts", "2e8"], "int32 indexing"),
    (["--matmul-n", "1e6"], "int32 indexing"),
    (["--d-in", "100000"], "int32 indexing"),
    (["--seed", "99999999999999999999"], "--seed"),
    (["--batch", "8", "--only", "core"], "sizes the training section"),
    (["--device-check", "--only", "core"], "drop --only"),
])
def test_bad_flags(bench, argv, match, tmp_path, capsys):
    assert match in _refused(bench, [*argv, "--json", str(tmp_path / "x.json")], capsys)
    assert not (tmp_path / "x.json").exists()


def test_size_beyond_memory_refused_naming_estimate_and_limit(bench, tmp_path, capsys, monkeypatch):
    import lintrans.cli

    monkeypatch.setattr(lintrans.cli, "available_memory", lambda: 2**30)  # a machine with 1 GiB free
    err = _refused(bench, ["--only", "core", "--json", str(tmp_path / "x.json")], capsys)
    assert "trajectory states" in err and "GiB" in err and "1 GiB of memory available" in err, err


def test_output_locations_checked_before_work(bench, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert "not a directory" in _refused(bench, ["--small", "--json", str(tmp_path / "file" / "b.json")], capsys)
    assert "is a directory" in _refused(bench, ["--small", "--json", str(tmp_path)], capsys)


def test_report_prints_tables_not_dicts(bench):
    ref = {"n": 4, "dtype": "float32", "precision": "HIGHEST", "gflop_per_s": 1.0, "timing": {"repeats": 2}}
    sec = {"section_wall_s": 1.0, "rows": [{"N": 8, "impl": "predict", "timing": {"x": 1}, "median_s": 0.5}],
           "agreement": [{"N": 8, "rel_err": 1e-7, "finite": True}], "checks": {"rank": [1, 2], "n": {"a": 3}},
           "notes": "fine"}
    text = bench.bench_util.report({"reference_matmul": ref, "sections": {"core": sec}})
    assert "{" not in text and "[" not in text.replace("[core]", ""), text
    assert "rel_err" in text and "rank = 1,2" in text and "n.a = 3" in text
