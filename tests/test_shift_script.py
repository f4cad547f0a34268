"""experiments/pruning_under_shift.py: a --quick smoke run, the results schema, and its errors (exit 2, one line)."""

import json

import pytest
from _scripts import load_script

CELL_KEYS = {"model", "shift", "shift_label", "n_demos", "layer", "target", "xi", "rank", "ranks", "full_rank", "rank0",
             "error", "error_pruned", "rel_change", "rel_change_ci95", "rel_change_se", "significant", "improves",
             "log_ratio", "log_ratio_ci95", "median", "median_pruned", "frac_improved", "tail_frac", "tail_frac_pruned",
             "diverged", "diverged_pruned", "n_prompts", "n_seeds", "G_norm", "G_norm_pruned", "dlog_G", "step",
             "step_pruned"}


def _module():
    return load_script("pruning_under_shift")


@pytest.mark.parametrize("args,match", [
    (["--shift", "temperature=2"], "unknown key 'temperature'"),
    (["--shift", "noise=-1"], "noise=-1"),
    (["--shift", "none", "--shift", "noise=1", "--shift", "noise=1"], "repeat"),
    (["--rates", "0,1.5"], "rates"),
    (["--targets", "W"], "targets"),
])
def test_bad_flags_are_refused_naming_the_flag(args, match, tmp_path, capsys):
    """In-process (one import for every case): a ValueError naming the flag, or argparse's exit 2 with one
    `error: …` line; nothing written. As a program (exit 2, one line, no traceback): the table of
    tests/test_cli_errors.py runs pruning_under_shift's bad flags as real processes."""
    with pytest.raises((ValueError, SystemExit)) as info:
        _module().main([*args, "--quiet", "--results-dir", str(tmp_path / "res")])
    if isinstance(info.value, SystemExit):
        err = capsys.readouterr().err
        assert info.value.code == 2 and err.startswith("error: ") and match in err, err
    else:
        assert match in str(info.value)
    assert not (tmp_path / "res").exists() or not any((tmp_path / "res").iterdir())


@pytest.mark.slow
def test_quick_smoke_run_and_schema(tmp_path, capsys):
    """--quick at the smallest sizes: one tiny 1-layer model, two shifts (one with fewer shots); the cells carry
    the documented keys, the one-layer theory, the bound; ξ = 0 cells change nothing; figures are written."""
    # in-process (the CLI's --shift joining is main's, so argv takes the same path as a program's)
    assert _module().main(["--quick", "--models", "lin-L1-s1/N", "--shift", "none", "--shift", "shots=N/2",
                           "--n-test", "16", "--n-val", "8", "--n-bound", "2", "--runs-dir", str(tmp_path / "runs"),
                           "--results-dir", str(tmp_path), "--figures-dir", str(tmp_path / "fig"), "--quiet"]) == 0
    stdout = capsys.readouterr().out
    doc = json.loads((tmp_path / "pruning_under_shift_quick.json").read_text())
    res = doc["results"]
    cells = res["cells"]
    assert {c["shift_label"] for c in cells} == {"none", "shots=N/2"}
    assert {json.dumps(c["shift"]) for c in cells} == {"{}", json.dumps({"shots": 4})}
    for c in cells:
        assert CELL_KEYS <= set(c), CELL_KEYS - set(c)
        assert "error_theory" in c and "dlog_bound" in c
        assert c["layer"] == 1 and c["n_seeds"] == 4 and c["n_prompts"] == 16
        if c["xi"] == 0.0:
            assert c["rel_change"] == 0.0 and c["error_pruned"] == c["error"]
        assert c["rank0"] == (c["rank"] == 0)
    ch = res["models"][0]["shifts"]["none"]["choices"]
    assert {"algorithm1", "label_free", "oracle"} <= set(ch) and ch["oracle"]["rel_change"] <= 0.0
    assert sorted(p.name for p in (tmp_path / "fig").iterdir()) == [
        "shift_choices_quick.png", "shift_heatmap_quick.png", "shift_mechanism_quick.png", "shift_onelayer_quick.png"]
    assert "wrote:" in stdout


def test_rate_choice_figure_cuts_a_divergent_tail_at_the_axis_edge():
    """One +4e75 % change must not stretch the axis over every other row: the axis stays at
    ±CHOICE_AXIS_LIMIT and the cut point is labelled with its value."""
    import matplotlib

    matplotlib.use("Agg")
    from lintrans.plots.shift import CHOICE_AXIS_LIMIT, choices

    def choice(rel, lo, hi):
        return {"rel_change": rel, "rel_change_ci95": [lo, hi]}

    shifts = {"none": {"choices": {"algorithm1": choice(-0.01, -0.02, 0.0), "oracle": choice(-0.02, -0.03, -0.01),
                                   "label_free": choice(4e73, -9e73, 1.7e74)}},
              "x_scale=2": {"choices": {"algorithm1": choice(-0.8, -0.85, -0.75), "oracle": choice(-0.8, -0.85, -0.75),
                                        "label_free": choice(0.5, 0.2, 0.8)}}}
    fig = choices({"models": [{"model": "m", "shifts": shifts}]})
    ax = fig.axes[0]
    assert ax.get_xlim() == (-1.05 * CHOICE_AXIS_LIMIT, 1.05 * CHOICE_AXIS_LIMIT)
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["+4.0e+75 %"], texts  # the cut point's value, and only that one
    assert "cut at the edge" in ax.get_xlabel()
