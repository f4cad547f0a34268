"""The CLI layer (lintrans.cli): flags generated from a frozen Config, validated once; outputs checked first."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lintrans import cli
from lintrans.cli import option


@dataclasses.dataclass(frozen=True)
class Toy:
    """A toy experiment."""

    n: int = option(3, "how many", low=1)
    scale: float = option(1.0, "a scale", low=0.0)
    mask: str = option("demos", "mask", choices=("demos", "causal"))
    rates: tuple[float, ...] = option((0.0, 0.5), "clipping rates", parse=cli.rates)
    layers: tuple[int, ...] = option((1, 2), "layers", low=1)
    params: str | None = option(None, "params file", kind="input_file")
    fast: bool = option(False, "go fast")
    seed: int = option(0, "seed", low=0)

    def check(self, given):
        if self.params is not None and "n" in given:
            raise ValueError("--n has no meaning with --params")


def _run(config, *, quiet=False):
    import numpy as np

    return {"squares": [i * i * config.scale for i in range(config.n)], "arrays": {"a": np.arange(config.n)}}


def _plot(results):
    from lintrans import plotting

    fig, ax = plotting.figure()
    ax.plot(results["squares"])
    return {"toy": fig}


def _main(argv):
    return cli.main(Toy, _run, _plot, argv, name="toy", presets={"quick": {"n": 2}})


def _err(capsys, argv) -> str:
    with pytest.raises(SystemExit) as e:
        cli.parse_config(Toy, argv, presets={"quick": {"n": 2}})
    assert e.value.code == 2, "bad flags exit with status 2"
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, f"one error line, got {err!r}"
    return err


def test_defaults_preset_and_flags(tmp_path):
    config, args, given = cli.parse_config(Toy, [])
    assert config == Toy() and given == frozenset() and args.preset is None
    config, args, given = cli.parse_config(Toy, ["--quick", "--scale", "2", "--rates", "0.1,0.9", "--layers", "3",
                                                 "--fast", "--seed", "1e3"], presets={"quick": {"n": 2}})
    assert config == Toy(n=2, scale=2.0, rates=(0.1, 0.9), layers=(3,), fast=True, seed=1000)
    assert given == {"scale", "rates", "layers", "fast", "seed"} and args.preset == "quick"


@pytest.mark.parametrize("argv, needle", [
    (["--n", "0"], "--n must be ≥ 1"),
    (["--n", "99999999999999999999"], "≤ 2147483647"),
    (["--n", "2.5"], "expected an integer"),
    (["--scale", "nan"], "finite"),
    (["--scale", "-1"], "--scale must be ≥ 0.0"),
    (["--mask", "foo"], "--mask must be one of demos, causal"),
    (["--rates", "1.5"], "[0, 1)"),
    (["--layers", "0,1"], "--layers must be ≥ 1"),
    (["--params", "/"], "is a directory"),
    (["--params", "/no/such/file"], "no such file"),
    (["--params", __file__, "--n", "2"], "--n has no meaning with --params"),
    (["--bogus"], "unrecognized arguments"),
    (["--n", "2", "--n", "3"], "--n given twice"),
])
def test_bad_flags_one_error_line(capsys, argv, needle):
    assert needle in _err(capsys, argv)


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        cli.parse_config(Toy, ["--help"], presets={"quick": {"n": 2}})
    out = capsys.readouterr().out
    for text in ("how many (default: 3)", "clipping rates (default: 0.0,0.5)", "params file (default: none)",
                 "--quick", "--plot-only", "--figures-dir"):
        assert text in out


def test_config_must_declare_every_field():
    @dataclasses.dataclass(frozen=True)
    class Bare:
        n: int = 3

    with pytest.raises(TypeError, match="lintrans.cli.option"):
        cli.build_parser(Bare)

    @dataclasses.dataclass(frozen=True)
    class Clash:
        quiet: bool = option(False, "clashes")

    with pytest.raises(TypeError, match="clashes with the common flag"):
        cli.build_parser(Clash)


def test_run_save_plot_and_plot_only(tmp_path, capsys):
    r, f = tmp_path / "r", tmp_path / "f"
    assert _main(["--results-dir", str(r), "--figures-dir", str(f), "--quick"]) == 0
    doc = json.loads((r / "toy_quick.json").read_text())
    assert doc["preset"] == "quick" and doc["config"]["n"] == 2 and doc["results"]["squares"] == [0.0, 1.0]
    assert {"git_revision", "seed"} <= set(doc["provenance"]) or "versions" in json.dumps(doc["provenance"])
    assert (r / "toy_quick.npz").is_file() and (f / "toy_quick.png").is_file()
    out = capsys.readouterr().out
    assert out.count("wrote: ") == 3, "every file written is named"
    (f / "toy_quick.png").unlink()
    assert _main(["--results-dir", str(r), "--figures-dir", str(f), "--quick", "--plot-only"]) == 0
    assert (f / "toy_quick.png").is_file()
    with pytest.raises(ValueError, match="would be ignored"):
        _main(["--results-dir", str(r), "--plot-only", "--n", "4"])


@pytest.mark.parametrize("flag, make", [
    ("--json", lambda t: t / "file" / "x.json"),        # parent is a regular file
    ("--json", lambda t: t),                            # a directory, not a file
    ("--figures-dir", lambda t: t / "file"),            # a file, not a directory
    ("--results-dir", lambda t: t / "file" / "sub"),    # below a regular file
])
def test_output_locations_checked_before_the_run(tmp_path, flag, make):
    (tmp_path / "file").write_text("x")
    calls = []

    def run(config, *, quiet=False):
        calls.append(config)
        return {}

    args = ["--results-dir", str(tmp_path / "r"), "--figures-dir", str(tmp_path / "f"), flag, str(make(tmp_path))]
    with pytest.raises(ValueError, match=flag):
        cli.main(Toy, run, _plot, args, name="toy")
    assert calls == [], "nothing runs before the outputs are known to be writable"
    assert not (tmp_path / "r").exists()


def test_check_size():
    cli.check_size(10, "tiny")
    with pytest.raises(ValueError, match="int32"):
        cli.check_size(2**31, "prompts")
    with pytest.raises(ValueError, match="GiB"):
        cli.check_size(2**30, "prompts", itemsize=8, copies=10**3)


@pytest.mark.slow
def test_command_prints_one_line_for_os_and_oom_errors(tmp_path):
    script = tmp_path / "s.py"
    script.write_text(textwrap.dedent("""
        import sys
        from lintrans import cli
        def main(argv=None):
            if sys.argv[1] == "os":
                open("/proc/no/such/file", "w")
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 99 bytes")
        cli.command(main)
    """))
    for mode, needle in (("os", "error: /proc/no/such/file"), ("oom", "error: out of memory")):
        p = subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(Path(cli.REPO_ROOT))})
        assert p.returncode == 2 and p.stderr.startswith(needle) and p.stderr.count("\n") == 1, p.stderr
        assert "Traceback" not in p.stderr
