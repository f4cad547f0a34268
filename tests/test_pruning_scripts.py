"""Smoke runs and error paths of the pruning scripts (experiments/pruning_phenomenon.py,
clip_search.py) and of the trained-run adapter (lintrans.trained)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from lintrans.pruning import PAPER_RATES

REPO = Path(__file__).resolve().parent.parent


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"_script_{name}", REPO / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


def init_run(run_dir, **kw):
    """A valid run directory (step 0) of a tiny config holding random weights (std 0.3) and a zero
    optimizer state, built from the state's shapes alone: no compilation, no training."""
    from lintrans.checkpoint import prepare_run_dir, save_checkpoint
    from lintrans.train import TrainConfig, TrainState, init_state

    config = TrainConfig(d_in=3, n_demos=6, n_layers=3, steps=1, warmup_steps=0, seeds=2, dtype="float64", **kw)
    shapes = jax.eval_shape(lambda: init_state(config))
    leaves, tree = jax.tree_util.tree_flatten(shapes.params)
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_unflatten(tree, [0.3 * rng.standard_normal(l.shape) for l in leaves])
    opt_state = jax.tree_util.tree_map(lambda l: np.zeros(l.shape, l.dtype), shapes.opt_state)
    prepare_run_dir(run_dir, config, resume=False)
    save_checkpoint(run_dir, config, TrainState(params, opt_state, 0))
    return run_dir


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {
        "linear": init_run(root / "lin", model="linear"),
        "softmax": init_run(root / "soft", model="softmax", width=8, n_heads=2, mlp_width=16),
    }


@pytest.mark.slow
def test_pruning_phenomenon_script_smoke(tiny_runs, tmp_path):
    mod = load_script("pruning_phenomenon")
    out = tmp_path / "pp.json"
    args = ["--checkpoint", f"{tiny_runs['linear']},{tiny_runs['softmax']}", "--n-test", "24",
            "--json", str(out), "--figures-dir", str(tmp_path), "--quiet"]
    assert mod.main(args) == 0
    doc = json.loads(out.read_text())
    assert doc["provenance"]["git_revision"] and doc["config"]["n_test"] == 24
    models = {m["model"]: m for m in doc["results"]["models"]}
    assert set(models) == {"linear", "softmax"} and set(models["softmax"]["groups"]) == {"attn", "mlp"}
    g = models["linear"]["groups"]["attn"]
    err = np.asarray(g["error"])
    assert err.shape == (2, 3, len(PAPER_RATES)), "(seed, layer, ξ)"
    np.testing.assert_allclose(err[:, :, 0], np.broadcast_to(np.asarray(g["unpruned_error"])[:, None], (2, 3)),
                               rtol=1e-12, err_msg="ξ = 0 reproduces the unpruned error at every layer")
    assert set(g["steadiness"]) == {"worst", "spread", "best", "frac_improve"} and "verdict" in g
    assert len(g["steadiness"]["worst"]["mean"]) == 3
    assert np.asarray(models["softmax"]["condition_numbers"]["mlp_max"]).shape == (2, 3)
    for png in ("pruning_phenomenon.png", "condition_numbers.png"):
        assert (tmp_path / png).stat().st_size > 10_000
    (tmp_path / "pruning_phenomenon.png").unlink()
    assert mod.main(["--plot-only", "--json", str(out), "--figures-dir", str(tmp_path), "--quiet"]) == 0
    assert (tmp_path / "pruning_phenomenon.png").exists()


@pytest.mark.slow
def test_clip_search_script_smoke(tiny_runs, tmp_path, capsys):
    mod = load_script("clip_search")
    out = tmp_path / "cs.json"
    args = ["--checkpoint", str(tiny_runs["softmax"]), "--group", "mlp", "--n-val", "16", "--n-test", "16",
            "--shots", "4", "--top-k", "2", "--rates", "0,0.5,0.9", "--json", str(out), "--figures-dir", str(tmp_path),
            "--quiet"]
    assert mod.main(args) == 0
    assert "test error before → after" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    (row,) = doc["results"]["rows"]
    assert (row["model"], row["group"], row["shots"]) == ("softmax", "mlp", 4)
    assert len(row["per_seed"]) == 2 and row["summary"]["n_seeds"] == 2
    for rep in row["per_seed"]:
        assert rep["rates"] == [0.0, 0.5, 0.9] and rep["layer"] in rep["top_layers"] and len(rep["top_layers"]) == 2
        assert rep["layer"] == max(rep["top_layers"])
    assert (tmp_path / "clip_search.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    "which, extra, match",
    [
        ("linear", ["--group", "mlp"], "needs field(s) ['w_in', 'w_out']"),
        ("linear", ["--model", "softmax"], "holds a 'linear' model; a 'softmax' run is needed"),
        ("linear", ["--top-k", "0"], "top-k"),
        ("linear", ["--rates", "0.5,0.5"], "duplicates"),
        ("linear", ["--rates", "1.5"], "rates"),
        (None, [], "no such run directory"),
    ],
)
def test_clip_search_script_bad_inputs(tiny_runs, tmp_path, which, extra, match, capsys):
    mod = load_script("clip_search")
    ckpt = str(tiny_runs[which]) if which else str(tmp_path / "missing")
    argv = ["--checkpoint", ckpt, "--json", str(tmp_path / "x.json"), "--figures-dir", str(tmp_path), "--quiet", *extra]
    try:
        mod.main(argv)
    except ValueError as e:  # cli() turns this into "error: …", exit 2
        assert match in str(e)
    except SystemExit as e:  # argparse: "error: …", exit 2
        assert e.code == 2 and match in capsys.readouterr().err
    else:
        pytest.fail("bad input accepted")
    assert not (tmp_path / "x.json").exists(), "nothing written on bad input"


@pytest.mark.slow
def test_scripts_cli_error_exit_code(tiny_runs, tmp_path):
    """As a command: a checkpoint of the wrong model prints one `error:` line and exits 2."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "pruning_phenomenon.py"), "--checkpoint", str(tmp_path / "nope"),
         "--json", str(tmp_path / "x.json"), "--figures-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_default_run_is_trained_once_then_reused(tmp_path):
    """No --checkpoint: the script trains its default run into --runs-dir; a second call reuses it."""
    from lintrans.trained import default_config, default_models, run_name

    over = {"linear": dict(steps=3, seeds=2, n_layers=2, d_in=3, n_demos=6, batch_size=8)}
    (m,) = default_models(["linear"], tmp_path, overrides=over, quiet=True)
    run_dir = tmp_path / run_name(default_config("linear", **over["linear"]))
    assert m.run_dir == run_dir and m.step == 3 and m.n_seeds == 2
    def stamp():  # the run's files; the lock file (lintrans.lock) is rewritten by every holder
        return {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir() if p.name != ".lock"}

    before = stamp()
    (again,) = default_models(["linear"], tmp_path, overrides=over, quiet=True)
    assert stamp() == before, "reused, not retrained"
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(m.params), jax.tree_util.tree_leaves(again.params)))


# reproduce_all's plan, reuse and skip rules are tested in tests/test_reproduce_all.py (its rewrite on
# the CLI layer keys reuse by each stage's full config, issue 15, which replaced the "results file
# exists → skip" rule the two tests that stood here asserted).


# ----------------------------------------------------------------------------- issues 12 and 15


@pytest.mark.slow
def test_checkpoint_uses_the_runs_own_seeds(tiny_runs, tmp_path):
    """A 2-seed run is evaluated on 2 seeds, each with its own weights: the unpruned error of seed s
    equals the error of seed s's parameters on the same prompts, computed directly (rtol 1e-12,
    float64), and the two seeds differ."""
    from lintrans.trained import load_trained

    mod = load_script("pruning_phenomenon")
    out = tmp_path / "pp.json"
    assert mod.main(["--checkpoint", str(tiny_runs["linear"]), "--n-test", "16", "--rates", "0,0.5", "--json", str(out),
                     "--figures-dir", str(tmp_path), "--quiet"]) == 0
    (m,) = json.loads(out.read_text())["results"]["models"]
    assert m["n_seeds"] == 2 and len(m["groups"]["attn"]["unpruned_error"]) == 2
    assert np.asarray(m["condition_numbers"]["attn_max"]).shape == (2, 3), "(seed, layer)"
    model = load_trained(tiny_runs["linear"])
    H, y = model.sampler()(jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(0), 7), 0), 16)
    direct = [float(np.mean(jax.vmap(model.score_fn, (None, 0, 0))(model.seed_params(s), H, y))) for s in range(2)]
    np.testing.assert_allclose(m["groups"]["attn"]["unpruned_error"], direct, rtol=1e-12,
                               err_msg="seed s is scored with seed s's own weights")
    assert direct[0] != direct[1]


@pytest.mark.slow
def test_quick_preset_labels_its_files(tiny_runs, tmp_path, capsys):
    mod = load_script("clip_search")
    argv = ["--quick", "--checkpoint", str(tiny_runs["softmax"]), "--group", "attn", "--rates", "0,0.5",
            "--results-dir", str(tmp_path / "r"), "--figures-dir", str(tmp_path / "f"), "--quiet"]
    assert mod.main(argv) == 0
    out = capsys.readouterr().out
    doc = json.loads((tmp_path / "r" / "clip_search_quick.json").read_text())
    assert doc["preset"] == "quick" and doc["config"]["n_test"] == mod.QUICK["n_test"]
    assert (tmp_path / "f" / "clip_search_quick.png").exists() and "clip_search_quick.json" in out


def _cli_error(mod, argv, capsys) -> str:
    """``main(argv)`` refuses with the CLI's one ``error: …`` line and exit 2 (or a ValueError)."""
    try:
        mod.main(argv)
    except ValueError as e:
        return f"error: {e}"
    except SystemExit as e:
        assert e.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and err.count("\n") == 1 and "Traceback" not in err, err
        return err
    pytest.fail(f"accepted: {argv}")


@pytest.mark.parametrize("script", ["pruning_phenomenon", "clip_search"])
def test_bad_inputs_one_error_line_nothing_written(script, tiny_runs, tmp_path, capsys):
    mod = load_script(script)
    lin = str(tiny_runs["linear"])
    (tmp_path / "file").write_text("")
    defaults = {"--json": str(tmp_path / "x.json"), "--figures-dir": str(tmp_path / "f")}
    cases = [
        (["--checkpoint", lin, "--linear-steps", "5"], "meaningless with --checkpoint"),
        (["--checkpoint", lin, "--train-seeds", "3"], "meaningless with --checkpoint"),
        (["--checkpoint", lin, "--json", str(tmp_path / "file" / "x.json")], "is not a directory"),
        (["--checkpoint", lin, "--figures-dir", str(tmp_path / "file")], "is a file"),
        (["--runs-dir", str(tmp_path / "file")], "is a file"),
        (["--checkpoint", lin, "--seed", "99999999999999999999"], "--seed"),
        (["--checkpoint", lin, "--n-test", "0"], "--n-test"),
        (["--checkpoint", lin, "--rates", "0.5,nan"], "rates"),
        (["--checkpoint", f"{lin},{tmp_path / 'nope'}"], "no such run directory"),
    ]
    for argv, match in cases:
        extra = [x for flag, path in defaults.items() if flag not in argv for x in (flag, path)]
        err = _cli_error(mod, [*argv, *extra, "--quiet"], capsys)
        assert match in err, (argv, err)
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "f").exists(), "nothing written on bad input"


@pytest.mark.slow
def test_float64_run_works_from_a_fresh_process(tiny_runs, tmp_path):
    """A float64 run given to clip_search as a command (no x64 set by the caller) runs: the CLI
    switches jax_enable_x64 on for it instead of asking the user to."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "clip_search.py"), "--checkpoint", str(tiny_runs["linear"]),
         "--n-val", "8", "--n-test", "8", "--rates", "0,0.5", "--json", str(tmp_path / "cs.json"), "--figures-dir",
         str(tmp_path), "--quiet"], capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={k: v for k, v in __import__("os").environ.items() if k != "JAX_ENABLE_X64"})
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "cs.json").read_text())
    assert doc["provenance"]["x64"] is True and "wrote:" in proc.stdout
