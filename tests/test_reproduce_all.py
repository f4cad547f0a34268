"""experiments/reproduce_all.py: the stage table covers every experiment, reuse is keyed by the
stage's full config (never by a file's mere existence), --dry-run runs nothing, and the flags that
cannot go together are refused. In-process planning only (no stage is run)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ra():
    spec = importlib.util.spec_from_file_location("reproduce_all", ROOT / "experiments" / "reproduce_all.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["reproduce_all"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_every_experiment_script_is_a_stage(ra):
    """Each script in experiments/ is driven by a stage (benchmarks' helpers and the driver aside)."""
    scripts = {p.stem for p in (ROOT / "experiments").glob("*.py")}
    helpers = {s for s in scripts if s.startswith(("bench_", "_"))} | {"reproduce_all"}
    covered = {s.script for s in ra.STAGES if s.script} | ({"train_icl"} if any(s.runs for s in ra.STAGES) else set())
    assert scripts - helpers - covered == set(), "scripts without a stage"


def _verify_doc(ra, tmp_path, config, preset=None):
    path = tmp_path / "results" / ("verify_theorem1" + ("_quick" if preset else "") + ".json")
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"name": "verify_theorem1", "config": config, "preset": preset, "results": {}}))
    return path


def _plan(ra, tmp_path, **kw):
    config = ra.Config(only=("verify_theorem1",), runs_dir=str(tmp_path / "runs"), **kw)
    return ra.plan(config, tmp_path / "results", tmp_path / "figs")[0]["steps"][0]


def test_reuse_is_keyed_by_the_full_config(ra, tmp_path):
    assert _plan(ra, tmp_path)["current"] is False  # nothing stored
    want = ra.expected_config("verify_theorem1", [])
    assert want["batch"] is None and want["layers"] is None  # the defaults, as the script records them
    _verify_doc(ra, tmp_path, want)
    step = _plan(ra, tmp_path)
    assert step["current"] is True and "same config" in step["why"]
    _verify_doc(ra, tmp_path, {**want, "batch": 4})  # a smaller run's file
    step = _plan(ra, tmp_path)
    assert step["current"] is False and "another config" in step["why"]
    # a --quick file never stands in for a default run, and --quick looks for its own
    quick = ra.expected_config("verify_theorem1", ["--quick"])
    assert quick != want
    _verify_doc(ra, tmp_path, quick, preset=None)
    assert _plan(ra, tmp_path)["current"] is False
    _verify_doc(ra, tmp_path, quick, preset="quick")
    step = _plan(ra, tmp_path, stage_preset="quick")
    argv = step["argv"]
    assert step["current"] is True and "--quick" in argv and argv[argv.index("--json") + 1].endswith("verify_theorem1_quick.json")


def test_publish_redraws_reused_stages_into_figures(ra, tmp_path):
    _verify_doc(ra, tmp_path, ra.expected_config("verify_theorem1", []))
    config = ra.Config(only=("verify_theorem1",), publish=True, runs_dir=str(tmp_path / "runs"))
    step = ra.plan(config, tmp_path / "results", ROOT / "figures")[0]["steps"][0]
    assert "--plot-only" in step["argv"] and str(ROOT / "figures") in step["argv"]


def test_training_runs_are_keyed_by_their_config(ra, tmp_path):
    config = ra.Config(only=("train", "train_bound"), runs_dir=str(tmp_path / "runs"))
    stages = ra.plan(config, tmp_path / "results", tmp_path / "figs")
    steps = [st for s in stages for st in s["steps"]]
    assert [s["run"] for s in steps] == ["linear", "softmax", "bound"]
    assert all(not s["current"] and s["why"] == "not trained" for s in steps)
    quick = [st for s in ra.plan(ra.Config(only=("train", "train_bound"), runs_dir=str(tmp_path / "runs"),
                                           stage_preset="quick"), tmp_path / "results", tmp_path / "figs")
             for st in s["steps"]]
    out = lambda ss: {s["argv"][s["argv"].index("--out") + 1] for s in ss}  # noqa: E731
    assert out(quick).isdisjoint(out(steps)), "quick runs live in their own folders"


def test_dry_run_lists_and_runs_nothing(ra, tmp_path, capsys):
    code = ra.main(["--dry-run", "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "r"),
                    "--figures-dir", str(tmp_path / "f")])
    out = capsys.readouterr().out
    assert code == 0
    for name in ra.STAGE_NAMES:
        if name != "benchmark":
            assert f"[{name}] run" in out
    assert "train_icl.py" in out and "--tag trained" in out
    assert not (tmp_path / "r" / "reproduce_all.json").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv, match", [
    (["--publish", "--quick"], "not with --quick"),
    (["--publish", "--figures-dir", "x"], "--figures-dir has no meaning"),
    (["--only", "nope"], "--only"),
])
def test_bad_combinations(ra, argv, match, capsys):
    with pytest.raises((SystemExit, ValueError)) as e:
        ra.main([*argv, "--dry-run"])
    msg = str(e.value) if e.type is ValueError else capsys.readouterr().err
    assert match in msg
