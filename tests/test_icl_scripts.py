"""Smoke runs of experiments/train_icl.py and experiments/icl_curves.py (tiny sizes, tmp_path only),
the effective step size read-back, the benchmark's naive training loss, and bad flags."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from _scripts import load_script

from lintrans.constructions import gd_construction
from lintrans.numerics import rel_err
from lintrans.train import TrainConfig, batch_loss, init_state, sample_batch, seed_keys

ROOT = Path(__file__).resolve().parent.parent


_load = load_script


@pytest.fixture(scope="module")
def train_icl():
    return _load("train_icl")


@pytest.fixture(scope="module")
def icl_curves():
    return _load("icl_curves")


def test_effective_step_size_of_the_gd_construction_is_eta(train_icl):
    """SPEC §4's construction (s = 1, ρ = −1) reads back as Γ = η I exactly."""
    params = gd_construction([0.037], d_in=4)
    e = train_icl.effective_step_size(params, scale="1", readout=-1, n_demos=9)
    assert e["eta_eff"] == pytest.approx(0.037, rel=1e-15) and e["anisotropy"] == 0.0
    np.testing.assert_allclose(e["gamma"], 0.037 * np.eye(4), rtol=1e-15, atol=0)
    # s = 1/N and readout +1 rescale and flip it
    e2 = train_icl.effective_step_size(params, scale="1/N", readout=1, n_demos=9)
    assert e2["eta_eff"] == pytest.approx(-0.037 / 9, rel=1e-14)
    with pytest.raises(ValueError, match="one layer"):
        train_icl.effective_step_size(gd_construction([0.1, 0.1], d_in=4), scale="1", readout=-1, n_demos=9)


LINEAR_ARGS = ["--model", "linear", "--layers", "1", "--d-in", "3", "--n-demos", "6", "--steps", "30", "--seeds", "2",
               "--batch", "8", "--warmup", "5", "--checkpoint-every", "10", "--log-every", "5", "--lr", "0.05",
               "--test-prompts", "4096", "--tune-prompts", "256", "--dtype", "float64", "--quiet"]


@pytest.mark.slow
def test_train_icl_linear_smoke_resume_and_plot_only(train_icl, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_icl.main([*LINEAR_ARGS, "--out", str(out)]) == 0
    doc = json.loads((out / "final.json").read_text())
    res = doc["results"]
    assert doc["provenance"]["git_revision"] and doc["config"]["layers"] == 1 and res["train_config"]["n_layers"] == 1
    assert [s["seed"] for s in res["model"]["seeds"]] == [0, 1] and res["steps"] == 30
    assert set(res["estimators"]) == {"zero", "least_squares", "ridge", "averaging", "knn3", "gd_1step_opt", "gd_Lstep"}
    assert res["estimators"]["least_squares"]["n"] == 4096
    assert res["estimators"]["least_squares"]["mean"] < 1e-6, "least squares is exact for N >= d (noiseless)"
    assert res["estimators"]["gd_1step_opt"]["opts"]["eta"] == pytest.approx(1 / (6 + 3 + 1))
    eff = res["effective_step_size"]
    assert eff["eta_optimal"] == pytest.approx(0.1) and len(eff["seeds"]) == 2
    assert all(np.isfinite(s["eta_eff"]) for s in eff["seeds"])
    assert [m["step"] for m in res["metrics"]] == [5, 10, 15, 20, 25, 30]
    printed = capsys.readouterr().out
    assert (out / "final.png").stat().st_size > 0 and "effective step size" in printed and "final.png" in printed
    # A finished run resumes without training; --plot-only re-plots from final.json.
    assert train_icl.main([*LINEAR_ARGS, "--out", str(out), "--resume"]) == 0
    assert json.loads((out / "final.json").read_text())["results"]["resumed_from"] == 30
    (out / "final.png").unlink()
    assert train_icl.main(["--out", str(out), "--plot-only"]) == 0 and (out / "final.png").exists()
    with pytest.raises(ValueError, match="already holds a run"):
        train_icl.main([*LINEAR_ARGS, "--out", str(out)])


@pytest.mark.slow
def test_icl_curves_smoke_reuse_and_plot_only(icl_curves, tmp_path, capsys, monkeypatch):
    """Trains a linear and a softmax run (the softmax path of lintrans.train end to end), reuses them;
    a run of another size beside them trains into its own folder instead of being refused."""
    runs = tmp_path / "runs"
    args = ["--d-in", "2", "--depths", "2", "--linear-steps", "12", "--softmax-steps", "6", "--softmax-layers", "1",
            "--softmax-width", "8", "--softmax-heads", "2", "--softmax-mlp", "16", "--softmax-batch", "8",
            "--linear-batch", "8", "--checkpoints", "3", "--eval-prompts", "1000", "--dtype", "float64", "--quiet",
            "--runs-dir", str(runs), "--json", str(tmp_path / "icl.json"), "--figures-dir", str(tmp_path)]
    assert icl_curves.main(args) == 0
    out = capsys.readouterr().out
    for name in ("icl.json", "icl_vs_least_squares.png", "icl_train_steps.png"):
        assert f"{name}" in out, f"{name} not named among the files written"
    res = json.loads((tmp_path / "icl.json").read_text())["results"]
    assert res["k"] == [1, 2, 3, 4] and res["quick"] is False
    labels = {"linear attention, L=2", "softmax transformer, L=1",
              "least_squares", "averaging", "knn3", "gd_1step_opt"}
    assert set(res["curves"]) == labels
    for c in res["curves"].values():
        assert len(c["mean"]) == 4 and all(h > 0 for h in c["ci95"])
    dist = res["prediction_distance"]["softmax transformer, L=1"]
    assert set(dist) == {"least_squares", "averaging", "knn3", "gd_1step_opt"} and len(dist["knn3"]) == 4
    assert len(res["closest_estimator"]["linear attention, L=2"]) == 4
    ls = res["curves"]["least_squares"]["mean"]
    assert max(ls[1:]) < 1e-6, "least squares is exact for k >= d"
    assert set(res["train_steps"]) == {"softmax transformer, L=1", "linear attention, L=2"}
    assert list(res["train_steps"]["linear attention, L=2"]) == ["0", "4", "8", "12"]
    for name in ("icl_vs_least_squares.png", "icl_train_steps.png"):
        assert (tmp_path / name).stat().st_size > 0
    # A second run reuses the finished runs (its figures are the first run's code again: not drawn);
    # --plot-only redraws from the JSON.
    with monkeypatch.context() as m:
        m.setattr(icl_curves, "plot", None)
        assert icl_curves.main(args) == 0
    res2 = json.loads((tmp_path / "icl.json").read_text())["results"]
    assert {c.get("status") for c in res2["curves"].values()} == {"reused", None}
    assert res2["curves"]["linear attention, L=2"]["mean"] == res["curves"]["linear attention, L=2"]["mean"]
    (tmp_path / "icl_train_steps.png").unlink()
    assert icl_curves.main(["--plot-only", "--json", str(tmp_path / "icl.json"), "--figures-dir", str(tmp_path)]) == 0
    assert (tmp_path / "icl_train_steps.png").exists()
    # Another size in the same runs directory: its own folders (the run config's hash), nothing refused.
    before = {p.name for p in runs.iterdir()}
    linear_only = [a for i, a in enumerate(args) if not (a.startswith("--softmax") or args[i - 1].startswith("--softmax"))]
    linear_only[linear_only.index("--linear-steps") + 1] = "8"  # a flag is given once (the CLI refuses repeats)
    monkeypatch.setattr(icl_curves, "plot", None)
    assert icl_curves.main([*linear_only, "--no-softmax"]) == 0
    res3 = json.loads((tmp_path / "icl.json").read_text())["results"]
    assert res3["curves"]["linear attention, L=2"]["status"] == "trained" and res3["curves"]["linear attention, L=2"]["step"] == 8
    assert len({p.name for p in runs.iterdir()} - before) == 1


def test_icl_curves_quick_preset_is_labelled(icl_curves):
    from lintrans import cli

    config, args, _ = cli.parse_config(icl_curves.Config, ["--quick"], presets={"quick": icl_curves.QUICK})
    assert args.preset == "quick" and icl_curves.is_quick(config) and not icl_curves.is_quick(icl_curves.Config())
    quick_dirs = {str(d) for _, d in icl_curves.run_specs(config).values()}
    default_dirs = {str(d) for _, d in icl_curves.run_specs(icl_curves.Config()).values()}
    assert quick_dirs.isdisjoint(default_dirs), "a quick run never occupies a default run's folder"


def test_closest_estimator_ties_are_joined_not_flipped():
    """Identical estimators share the label (in table order); a clearly nearer one stands alone."""
    from lintrans.curves import closest_estimators

    rng = np.random.default_rng(0)
    y = rng.normal(size=(1, 2000))
    a = y[0] + 0.1 * rng.normal(size=2000)
    far = y[0] + 1.0 * rng.normal(size=2000)
    assert closest_estimators([y], {"a": [a], "b": [a.copy()], "far": [far]}, 1) == ["a≈b"]
    assert closest_estimators([y], {"b": [a.copy()], "a": [a]}, 1) == ["b≈a"]
    assert closest_estimators([y], {"far": [far], "a": [a]}, 1) == ["a"]
    # two estimators that differ by much less than the prompt-to-prompt spread: joined, never picked by noise
    a2 = a + 1e-6 * rng.normal(size=2000)
    assert closest_estimators([y], {"a": [a], "a2": [a2], "far": [far]}, 1) == ["a≈a2"]


@pytest.mark.slow
def test_bench_naive_training_loss_equals_library_float64():
    """The benchmark's naive attention-matrix loss and its gradient equal the library's (float64)."""
    _load("benchmark")  # registers _bench_util and bench_core, which bench_training imports
    bench = _load("bench_training")
    cfg = TrainConfig(d_in=3, n_demos=6, n_layers=2, batch_size=8, init_std=0.3, scale="1", dtype="float64")
    params = jax.tree_util.tree_map(lambda x: x[0], init_state(cfg).params)
    batch = jax.jit(lambda k: sample_batch(cfg, k, 1))(seed_keys(cfg)[1][0])
    lib = jax.jit(jax.value_and_grad(lambda p: batch_loss(cfg, p, batch)))(params)
    nai = jax.jit(jax.value_and_grad(lambda p: bench.naive_loss(cfg, p, batch)))(params)
    assert float(rel_err(lib[0], nai[0])) <= 1e-12, "loss: library vs naive attention matrix, rtol 1e-12"
    for a, b in zip(lib[1], nai[1]):
        assert float(rel_err(a, b)) <= 1e-12, "gradient: library vs naive attention matrix, rtol 1e-12"


@pytest.mark.parametrize("script, argv, message", [
    ("train_icl", ["--out", "x", "--layers", "0"], "--layers must be ≥ 1"),
    ("train_icl", ["--out", "x", "--test-prompts", "100"], "--test-prompts must be ≥ 4096"),
    ("train_icl", ["--out", "x", "--final-lr-frac", "5"], "--final-lr-frac must be ≤ 1"),
    ("train_icl", ["--out", "x", "--model", "linear", "--width", "8"], "--width has no meaning for the linear model"),
])
def test_bad_values_exit_2_naming_the_flag(script, argv, message, tmp_path, capsys):
    mod = _load(script)
    with pytest.raises(SystemExit) as info:
        mod.main([*argv[:1], str(tmp_path / "x"), *argv[2:]])
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x").exists(), "nothing written"
    with pytest.raises(ValueError, match="--out must not be empty"):
        mod.main(["--out", ""])


def test_icl_curves_bad_value_exits_2(icl_curves, capsys):
    with pytest.raises(SystemExit) as info:
        icl_curves.main(["--eval-prompts", "10"])
    assert info.value.code == 2 and "--eval-prompts must be ≥ 1000" in capsys.readouterr().err


def test_bad_flags_exit_2_with_one_error_line(capsys):
    """argparse's refusals in-process: exit 2 and an `error: …` line. As programs (exit 2, one line, no
    traceback): the table of tests/test_cli_errors.py runs train_icl's and icl_curves' bad flags as real processes."""
    for script, argv in (("train_icl", ["--model", "mlp", "--out", "r"]), ("train_icl", ["--layers", "1"]),
                         ("icl_curves", ["--d-in", "two"]), ("icl_curves", ["--depths", "1,x"])):
        with pytest.raises(SystemExit) as info:
            _load(script).main(argv)
        assert info.value.code == 2 and capsys.readouterr().err.startswith("error:")


def test_run_score_label_joins_estimators_not_measurably_farther():
    # A 1-layer GD construction at η* predicts exactly as gd_1step_opt; the run's label names it and
    # joins (with "≈") whatever is not measurably farther, so it cannot flip to a near-identical one.
    import jax
    import numpy as np

    from lintrans.constructions import gd_construction
    from lintrans.estimators import gd_one_step_optimal_eta
    from lintrans.train_config import TrainConfig
    from lintrans.train_eval import score_run

    tc = TrainConfig(model="linear", d_in=3, n_demos=10, n_layers=1, scale="1", readout=-1, seeds=2,
                     dtype="float64", steps=10, warmup_steps=0)
    one = gd_construction([gd_one_step_optimal_eta(tc.n_demos, tc.d_in, tc.noise_std)], tc.d_in)
    params = jax.tree_util.tree_map(lambda x: np.stack([x, x]), one)
    res = score_run(tc, params, test_prompts=256, test_seed=0, tune_prompts=256, ridge_lam=0.1)
    names = res["closest_estimator"].split("≈")
    assert "gd_1step_opt" in names, res["closest_estimator"]
    assert set(names) <= set(res["prediction_distance"]), names
    dist = res["prediction_distance"]
    assert min(dist, key=dist.get) in names  # the nearest is always named
    assert dist["gd_1step_opt"] < 1e-20  # identical predictions up to float64 rounding (atol 1e-20 on a mean square)
