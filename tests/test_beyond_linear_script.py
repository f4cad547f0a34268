"""Smoke run of experiments/beyond_linear.py at tiny size (issue 16), and its bad inputs."""

import json
from pathlib import Path

import pytest
from _scripts import load_script

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "experiments" / "beyond_linear.py"


def _module():
    return load_script("beyond_linear")


@pytest.mark.slow
def test_quick_smoke_run(tmp_path, capsys, monkeypatch):
    """--quick at an even smaller size: trains two models, probes them, writes the results, the npz and
    three figures; linear attention's affinity and T1 residuals are at float64 rounding level (≤ 1e-12,
    float64 probes of float32 weights); a second run reuses the training runs."""
    mod = _module()
    args = ["--quick", "--models", "linear,softmax_attn", "--steps", "20", "--checkpoint-every", "10", "--n-probe", "4",
            "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "res"),
            "--figures-dir", str(tmp_path / "fig"), "--quiet"]
    assert mod.main(args) == 0
    out = capsys.readouterr().out
    names = ["beyond_linear_layers", "beyond_linear_training", "beyond_linear_clipping"]
    for n in names:
        assert (tmp_path / "fig" / f"{n}_quick.png").is_file()
        assert f"{n}_quick.png" in out
    doc = json.loads((tmp_path / "res" / "beyond_linear_quick.json").read_text())
    res = doc["results"]
    assert res["steps"] == [0, 10, 20] and res["models"] == ["linear", "softmax_attn"]
    lin = res["per_model"]["linear"]["training"]
    assert max(max(row) for row in lin["affinity"]["mean"]) <= 1e-12
    assert max(max(row) for row in lin["t1"]["mean"]) <= 1e-12
    assert (tmp_path / "res" / "beyond_linear_quick.npz").is_file()
    assert set(res["per_model"]["softmax_attn"]["verdicts"]) == {"0.5"}
    # reuse: the runs exist, so nothing is trained again (figures: the first run's code again, not drawn)
    args2 = [a for a in args if a != "--quiet"]
    monkeypatch.setattr(mod, "plot", None)
    assert mod.main(args2) == 0
    out2 = capsys.readouterr().out
    assert "reusing linear" in out2
    # the verdicts are lines per rate, not a printed Python dict
    assert "  ξ = 0.5: " in out2 and "{'" not in out2


@pytest.mark.parametrize("flags, message", [
    (["--n-points", "4"], "--n-points must exceed"),
    (["--rates", "0,0.5"], "--rates"),
    (["--models", "gpt"], "--models"),
    (["--checkpoint-every", "5000"], "--checkpoint-every"),
])
def test_bad_flags(flags, message, tmp_path, capsys):
    """Refused before any work, naming the flag (in-process: a ValueError, or argparse's exit 2 with
    one `error: …` line); nothing written. As a program (exit 2, one line, no traceback): the table of
    tests/test_cli_errors.py runs beyond_linear's bad flags as real processes."""
    mod = _module()
    with pytest.raises((ValueError, SystemExit)) as info:
        mod.main([*flags, "--results-dir", str(tmp_path / "res")])
    if isinstance(info.value, SystemExit):
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err
    else:
        assert message in str(info.value)
    assert not (tmp_path / "res" / "beyond_linear.json").exists()


