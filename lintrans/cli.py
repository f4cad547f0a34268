"""The command-line layer of ``experiments/``: flags generated from a frozen ``Config`` dataclass.

A script is its docstring, a frozen ``Config`` whose fields are declared with :func:`option`
(default, one help line, range or choices), a ``QUICK`` preset, ``run(config, *, quiet) -> dict``,
``plot(results) -> {name: Figure}`` and::

    def main(argv=None) -> int:
        return cli.main(Config, run, plot, argv, name="my_experiment", doc=__doc__, presets={"quick": QUICK})

    if __name__ == "__main__":
        cli.command(main)

What :func:`main` does, in order (each decision made here, once):

1. Builds the parser from ``Config``: field ``n_demos`` → ``--n-demos``, its type, default and help
   shown in ``--help``; values are checked when parsed (type, ``low``/``high``, ``choices``,
   ``parse``, input paths), each message naming the flag. Integers are refused beyond
   ``2**31 − 1`` unless the field says otherwise, so a huge value never reaches XLA.
2. Adds the common flags: ``--quick`` (apply the preset; results and figures are labelled
   ``quick``), ``--plot-only``, ``--json PATH``, ``--results-dir DIR`` (default ``results/``),
   ``--figures-dir DIR`` (default ``results/figures/``; both git-ignored, so a run never touches the
   committed ``figures/``, which only ``reproduce_all.py --publish`` writes) and ``--quiet``.
3. Builds the config: defaults, then the preset, then the flags given; then calls
   ``config.check(given)`` if the class defines it, with the names of the fields set on the command
   line, so that a flag meaningless in a combination is refused.
4. Checks every output location **before** the work starts, then runs, saves the results JSON
   (config, provenance, ``quick``) and an ``.npz`` of ``results["arrays"]`` if present, re-reads the
   JSON and plots from it (so ``--plot-only`` draws exactly the same figures), and prints one
   ``wrote: PATH`` line per file.

:func:`command` runs ``main`` as a program: ``ValueError``, ``TypeError``, ``OSError`` and XLA's
out-of-memory error become one ``error: …`` line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import math
import os
import sys
import tempfile
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lintrans.io import atomic_write_bytes, load_json, provenance, save_json, save_npz
from lintrans.limits import available_memory  # re-exported: one estimate of the memory a run may use
from lintrans.limits import check_size as check_size_bytes
from lintrans.progress import Progress  # re-exported: scripts take it from here
from lintrans.train import TrainingDivergedError

__all__ = [
    "REPO_ROOT", "RESULTS_DIR", "FIGURES_DIR", "PUBLISHED_FIGURES_DIR", "INT_MAX", "option", "rates", "run_dirs", "repo_path",
    "positive_int", "ArgParser", "build_parser", "parse_config", "main", "command", "check_output_file",
    "check_output_dir", "check_size", "available_memory", "Progress", "save_figure", "save_results",
    "load_results", "COMMON_FLAGS",
]

#: The repository root (the parent of ``lintrans/``).
REPO_ROOT = Path(__file__).resolve().parent.parent
#: Default home of results files (git-ignored).
RESULTS_DIR = REPO_ROOT / "results"
#: Default home of figures written by a run (git-ignored).
FIGURES_DIR = RESULTS_DIR / "figures"
#: The committed figures, written only by ``reproduce_all.py --publish``.
PUBLISHED_FIGURES_DIR = REPO_ROOT / "figures"
#: Largest integer a flag takes unless its field says otherwise: XLA indexes arrays with int32.
INT_MAX = 2**31 - 1
#: Flags every script gets; a ``Config`` field may not use these names.
COMMON_FLAGS = ("quick", "plot_only", "json", "results_dir", "figures_dir", "quiet")

_META = "lintrans.cli"
_KINDS = (None, "input_file", "input_dir", "input_path", "output_file", "output_dir")


def option(default: Any, help: str, *, choices=None, low=None, high=None, parse: Callable[[str], Any] | None = None,
           kind: str | None = None, metavar: str | None = None):
    """A ``Config`` field with its command-line description.

    Args:
      default: the default value (immutable: a tuple, not a list).
      help: one line for ``--help``; the default is appended there automatically.
      choices: allowed values (for a tuple field: allowed elements).
      low, high: inclusive bounds of a number (of each element for a tuple field).
      parse: ``str -> value`` raising ``ValueError`` for a bad value; replaces the type's parser.
      kind: ``"input_file"``, ``"input_dir"``, ``"input_path"`` (must exist), ``"output_file"``,
        ``"output_dir"`` (must be writable; checked before the run).
    """
    if isinstance(default, (list, dict, set)):
        raise TypeError(f"option default must be immutable (use a tuple), got {type(default).__name__}")
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    if not isinstance(help, str) or not help.strip():
        raise ValueError("every option needs a one-line help text")
    meta = {"help": help, "choices": None if choices is None else tuple(choices), "low": low, "high": high,
            "parse": parse, "kind": kind, "metavar": metavar}
    return dataclasses.field(default=default, metadata={_META: meta})


# ----------------------------------------------------------------------------------------------
# Value parsers
# ----------------------------------------------------------------------------------------------


def _parse_int(text: str) -> int:
    t = text.strip()
    try:
        return int(t)
    except ValueError:
        pass
    try:
        x = float(t)  # "2e3" is accepted when it is an integer
    except ValueError:
        raise ValueError(f"expected an integer, got {text!r}") from None
    if not math.isfinite(x) or x != int(x):
        raise ValueError(f"expected an integer, got {text!r}")
    return int(x)


def _parse_float(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"expected a finite number, got {text!r}")
    return x


def rates(text: str) -> tuple[float, ...]:
    """Comma-separated clipping rates ``ξ``, each in ``[0, 1)`` (:func:`lintrans.search.check_rates`)."""
    from lintrans.search import check_rates

    try:
        values = tuple(_parse_float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"expected comma-separated numbers in [0, 1), got {text!r}") from None
    return tuple(check_rates(values))


def repo_path(path) -> Path:
    """``path`` as given if absolute, else relative to the repository root (where ``runs/`` lives)."""
    p = Path(path)
    return p if p.is_absolute() else REPO_ROOT / p


def run_dirs(text: str) -> tuple[str, ...]:
    """Comma-separated training-run directories, each holding a ``config.json``."""
    dirs = tuple(s.strip() for s in text.split(",") if s.strip())
    if not dirs:
        raise ValueError(f"expected comma-separated run directories, got {text!r}")
    for d in dirs:
        if not (Path(d) / "config.json").is_file():
            raise ValueError(f"{d}: no such run directory (train one with experiments/train_icl.py)")
    return dirs


def positive_int(text: str) -> int:
    """A positive integer ``≤ INT_MAX``."""
    n = _parse_int(text)
    if not 1 <= n <= INT_MAX:
        raise ValueError(f"expected a positive integer ≤ {INT_MAX}, got {text!r}")
    return n


# ----------------------------------------------------------------------------------------------
# Fields → flags
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Field:
    name: str
    flag: str
    base: type  # int, float, str, bool
    optional: bool
    sequence: bool
    default: Any
    meta: dict

    def parse(self, text: str) -> Any:
        if self.optional and text.strip().lower() == "none":
            return None
        if self.sequence:
            parts = [p.strip() for p in text.split(",") if p.strip()]
            if not parts:
                raise ValueError(f"expected a comma-separated list, got {text!r}")
            if self.meta["parse"] is not None:
                return self.check(self.meta["parse"](text))
            return self.check(tuple(self._scalar(p) for p in parts))
        if self.meta["parse"] is not None:
            return self.check(self.meta["parse"](text))
        return self.check(self._scalar(text))

    def _scalar(self, text: str) -> Any:
        if self.base is int:
            return _parse_int(text)
        if self.base is float:
            return _parse_float(text)
        return text

    def check(self, value: Any) -> Any:
        """Validate a Python value (parsed, preset or default) against the field's description."""
        if value is None:
            if self.optional:
                return None
            raise ValueError(f"{self.flag} needs a value")
        items = value if self.sequence else (value,)
        if self.sequence and not isinstance(value, tuple):
            raise TypeError(f"{self.flag} must be a tuple, got {type(value).__name__}")
        for v in items:
            self._check_one(v)
        if self.meta["kind"] in ("input_file", "input_dir", "input_path"):
            _check_input(value, self.flag, self.meta["kind"])
        return value

    def _check_one(self, v: Any) -> None:
        m = self.meta
        if self.base is int and (isinstance(v, bool) or not isinstance(v, int)):
            raise TypeError(f"{self.flag} must be an integer, got {v!r}")
        if self.base is float:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise TypeError(f"{self.flag} must be a finite number, got {v!r}")
        if self.base is str and not isinstance(v, str):
            raise TypeError(f"{self.flag} must be a string, got {v!r}")
        if self.base is str and v == "" and m["kind"] is not None:
            raise ValueError(f"{self.flag} must not be empty")
        if m["choices"] is not None and v not in m["choices"]:
            raise ValueError(f"{self.flag} must be one of {', '.join(map(str, m['choices']))}; got {v!r}")
        high = m["high"] if m["high"] is not None else (INT_MAX if self.base is int else None)
        low = m["low"] if m["low"] is not None else (-INT_MAX if self.base is int else None)
        if low is not None and v < low:
            raise ValueError(f"{self.flag} must be ≥ {low}, got {v!r}")
        if high is not None and v > high:
            raise ValueError(f"{self.flag} must be ≤ {high}, got {v!r}")


def _fields(config_cls) -> list[_Field]:
    if not (dataclasses.is_dataclass(config_cls) and isinstance(config_cls, type)):
        raise TypeError(f"config_cls must be a dataclass type, got {config_cls!r}")
    if not config_cls.__dataclass_params__.frozen:
        raise TypeError(f"{config_cls.__name__} must be a frozen dataclass")
    hints = typing.get_type_hints(config_cls)
    out = []
    for f in dataclasses.fields(config_cls):
        if _META not in f.metadata:
            raise TypeError(f"{config_cls.__name__}.{f.name} must be declared with lintrans.cli.option(...)")
        if f.name in COMMON_FLAGS:
            raise TypeError(f"{config_cls.__name__}.{f.name} clashes with the common flag --{f.name.replace('_', '-')}")
        tp = hints[f.name]
        optional = False
        args = typing.get_args(tp)
        if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
            rest = [a for a in args if a is not type(None)]
            if len(rest) != 1:
                raise TypeError(f"{f.name}: unsupported type {tp!r}")
            tp, optional = rest[0], True
        sequence = False
        if typing.get_origin(tp) is tuple:
            targs = typing.get_args(tp)
            if len(targs) != 2 or targs[1] is not Ellipsis:
                raise TypeError(f"{f.name}: only tuple[T, ...] is supported, got {tp!r}")
            tp, sequence = targs[0], True
        if tp not in (int, float, str, bool) or (sequence and tp is bool):
            raise TypeError(f"{f.name}: unsupported type {tp!r}")
        out.append(_Field(f.name, "--" + f.name.replace("_", "-"), tp, optional, sequence, f.default,
                          dict(f.metadata[_META])))
    return out


class _Once(argparse.Action):
    """Store a flag's value, refusing a second occurrence (a silently dropped value is a wrong answer)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest) is not None:
            parser.error(f"{option_string} given twice; give it once (lists are comma-separated)")
        setattr(namespace, self.dest, values)


class ArgParser(argparse.ArgumentParser):
    """``argparse`` that reports bad flags as one line ``error: …`` and exit status 2."""

    def error(self, message: str):  # noqa: D401 - argparse hook
        self.exit(2, f"error: {message} (see --help)\n")


def _metavar(fld: _Field) -> str:
    m = fld.meta
    if m["choices"] is not None:
        return "{" + ",".join(map(str, m["choices"])) + "}" + ("[,...]" if fld.sequence else "")
    if m["kind"] is not None:
        return "DIR" if m["kind"].endswith("_dir") else "PATH"
    return ("LIST" if fld.sequence else fld.base.__name__.upper())


def _show(v: Any) -> str:
    if isinstance(v, tuple):
        return ",".join(map(str, v))
    return "none" if v is None else str(v)


def build_parser(config_cls, *, prog: str | None = None, doc: str | None = None,
                 presets: Mapping[str, Mapping[str, Any]] | None = None) -> ArgParser:
    """The parser of a script: one flag per ``Config`` field, then the common flags."""
    description = (doc or config_cls.__doc__ or "").strip().split("\n\n")[0]
    p = ArgParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("experiment")
    for fld in _fields(config_cls):
        m = fld.meta
        text = f"{m['help']} (default: {_show(fld.default)})"
        if fld.base is bool:
            g.add_argument(fld.flag, dest=fld.name, action=argparse.BooleanOptionalAction, default=None, help=text)
            continue

        def typ(s, _f=fld):
            try:
                return _f.parse(s)
            except (ValueError, TypeError, OSError) as e:
                raise argparse.ArgumentTypeError(str(e)) from None

        typ.__name__ = fld.base.__name__
        metavar = m["metavar"] or _metavar(fld)
        g.add_argument(fld.flag, dest=fld.name, type=typ, default=None, help=text, metavar=metavar, action=_Once)
    c = p.add_argument_group("common")
    names = sorted(presets or {})
    for preset in names:
        c.add_argument(f"--{preset}", dest=preset, action="store_true",
                       help=f"the {preset!r} preset ({_show_preset(presets[preset])}); outputs labelled {preset!r}")
    c.add_argument("--plot-only", action="store_true", help="redraw the figures from the saved results; no computation")
    c.add_argument("--json", metavar="PATH", default=None, help="results file (default: RESULTS_DIR/<name>.json)")
    c.add_argument("--results-dir", metavar="DIR", default=None, help=f"results directory (default: {_rel(RESULTS_DIR)})")
    c.add_argument("--figures-dir", metavar="DIR", default=None, help=f"figures directory (default: {_rel(FIGURES_DIR)})")
    c.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def _show_preset(preset: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_show(v)}" for k, v in preset.items()).replace("%", "%%") or "no changes"


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(REPO_ROOT)) + "/"
    except ValueError:
        return str(path)


def parse_config(config_cls, argv=None, *, presets: Mapping[str, Mapping[str, Any]] | None = None,
                 prog: str | None = None, doc: str | None = None):
    """``(config, args, given)``: the validated config, the parsed namespace, the fields given."""
    presets = dict(presets or {})
    for preset in presets:
        if (preset in COMMON_FLAGS and preset != "quick") or not preset.isidentifier():
            raise ValueError(f"bad preset name {preset!r}")
    parser = build_parser(config_cls, prog=prog, doc=doc, presets=presets)
    args = parser.parse_args(argv)
    fields = {f.name: f for f in _fields(config_cls)}
    active = [name for name in presets if getattr(args, name)]
    if len(active) > 1:
        parser.error(f"choose at most one of {', '.join('--' + a for a in active)}")
    values: dict[str, Any] = {}
    for name in active:
        for key, value in presets[name].items():
            if key not in fields:
                raise ValueError(f"preset {name!r} sets unknown field {key!r}")
            values[key] = value
    given = frozenset(n for n in fields if getattr(args, n) is not None)
    for n in given:
        values[n] = getattr(args, n)
    try:
        for key, value in values.items():
            fields[key].check(value)
        config = config_cls(**values)
        if hasattr(config, "check"):
            config.check(given)
    except (ValueError, TypeError, OSError) as e:
        parser.error(str(e))
    args.preset = active[0] if active else None
    return config, args, given


# ----------------------------------------------------------------------------------------------
# Paths
# ----------------------------------------------------------------------------------------------


def _check_input(value, flag: str, kind: str) -> None:
    for v in value if isinstance(value, tuple) else (value,):
        path = Path(v)
        if not path.exists():
            raise ValueError(f"{flag} {v}: no such file or directory")
        if kind == "input_file" and path.is_dir():
            raise ValueError(f"{flag} {v}: is a directory, expected a file")
        if kind == "input_dir" and not path.is_dir():
            raise ValueError(f"{flag} {v}: is not a directory")


def _probe_dir(existing: Path, flag: str, target: Path) -> None:
    # Permission bits say nothing to root; a real write in the deepest existing directory is the
    # only test that also catches read-only file systems.
    try:
        fd, tmp = tempfile.mkstemp(dir=existing, prefix=".probe-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise ValueError(f"{flag} {target}: cannot write in {existing} ({e.strerror or e})") from None


def _deepest_existing(path: Path, flag: str, target: Path) -> Path:
    p = path
    while not p.exists():
        if p.parent == p:
            break
        p = p.parent
    if not p.is_dir():
        raise ValueError(f"{flag} {target}: {p} is not a directory")
    return p


def check_output_file(path, flag: str) -> Path:
    """Refuse an output file that cannot be written (``ValueError`` naming ``flag``); no side effect."""
    if path is None or str(path) == "":
        raise ValueError(f"{flag} must not be empty")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path}: is a directory, expected a file path")
    _probe_dir(_deepest_existing(path.parent, flag, path), flag, path)
    return path


def check_output_dir(path, flag: str) -> Path:
    """Refuse an output directory that cannot be created or written (``ValueError`` naming ``flag``)."""
    if path is None or str(path) == "":
        raise ValueError(f"{flag} must not be empty")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path}: is a file, expected a directory")
    _probe_dir(_deepest_existing(path, flag, path), flag, path)
    return path


def check_size(n_elements: int, what: str, *, itemsize: int = 4, copies: float = 1.0) -> None:
    """Refuse an array of ``n_elements`` that XLA cannot index (int32) or the machine cannot hold.

    ``copies``: how many arrays of that size the computation holds at once (an estimate the caller
    states); together they may take at most 80 % of :func:`available_memory`. ``ValueError`` names
    the estimate and the limit (:func:`lintrans.limits.check_size`).
    """
    check_size_bytes(n_elements, what, itemsize=itemsize, limit=2**62)  # the int32 rule
    need = int(n_elements) * itemsize * float(copies)
    have = available_memory()
    if need > 0.8 * have:
        raise ValueError(f"{what}: needs about {need / 2**30:.3g} GiB, more than 80 % of the "
                         f"{have / 2**30:.3g} GiB of memory available")


# ----------------------------------------------------------------------------------------------
# Results and figures
# ----------------------------------------------------------------------------------------------


def _config_dict(config: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    if isinstance(config, Mapping):
        return dict(config)
    raise TypeError(f"config must be a dataclass or a mapping, got {type(config).__name__}")


def save_results(path, name: str, config: Any, results: Mapping[str, Any], *, seed: int | None = None,
                 arrays: Mapping[str, Any] | None = None, preset: str | None = None) -> list[Path]:
    """Write ``path`` (JSON: name, config, preset, provenance, results) and ``.npz`` of ``arrays``."""
    path = Path(path)
    doc = {"name": name, "config": _config_dict(config), "preset": preset, "provenance": provenance(seed),
           "results": dict(results)}
    written = []
    if arrays:
        npz = path.with_suffix(".npz")
        save_npz(npz, arrays)
        doc["arrays_file"] = npz.name
        written.append(npz)
    save_json(path, doc)
    return [path, *written]


def load_results(path) -> dict[str, Any]:
    """Read a results JSON written by :func:`save_results`; ``ValueError`` if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no results file (run without --plot-only first)")
    doc = load_json(path)
    if not isinstance(doc, dict) or "results" not in doc or "config" not in doc:
        raise ValueError(f"{path}: not a lintrans results file (needs 'config' and 'results')")
    return doc


def save_figure(fig, path, dpi: int | None = None) -> Path:
    """Write ``fig`` as PNG at ``path`` atomically (dpi: :data:`lintrans.plotting.DPI`) and close it."""
    import matplotlib.pyplot as plt

    from lintrans.plotting import DPI

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi or DPI, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())




# ----------------------------------------------------------------------------------------------
# The script driver
# ----------------------------------------------------------------------------------------------


def main(config_cls, run: Callable[..., Mapping[str, Any]], plot: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None,
         argv=None, *, name: str, doc: str | None = None, presets: Mapping[str, Mapping[str, Any]] | None = None,
         seed_field: str | None = "seed") -> int:
    """Parse ``argv``, check outputs, ``run``, save, ``plot``; print ``wrote: PATH`` lines. Returns 0, or 1
    with one ``error: …`` line when a training run diverged (a result, not bad input; nothing is saved).

    ``results`` may carry ``"arrays"`` (a mapping of NumPy arrays), saved as an ``.npz`` beside
    the JSON instead of inside it. ``plot`` receives the results as re-read from the JSON.
    """
    config, args, given = parse_config(config_cls, argv, presets=presets, prog=f"{name}.py", doc=doc)
    suffix = f"_{args.preset}" if args.preset else ""
    results_dir = Path(args.results_dir) if args.results_dir is not None else RESULTS_DIR
    figures_dir = Path(args.figures_dir) if args.figures_dir is not None else FIGURES_DIR
    json_path = Path(args.json) if args.json is not None else results_dir / f"{name}{suffix}.json"
    if args.results_dir is not None:
        check_output_dir(results_dir, "--results-dir")
    if args.plot_only:
        if given:
            raise ValueError(f"--plot-only redraws saved results; {', '.join('--' + g.replace('_', '-') for g in sorted(given))} "
                             "would be ignored")
        if plot is None:
            raise ValueError(f"{name} draws no figures; --plot-only has nothing to do")
        check_output_dir(figures_dir, "--figures-dir")
        doc_ = load_results(json_path)
        written = _plot(plot, doc_["results"], figures_dir, suffix)
        _print_written(written)
        return 0
    check_output_file(json_path, "--json")
    check_output_file(json_path.with_suffix(".npz"), "--json")
    if plot is not None:
        check_output_dir(figures_dir, "--figures-dir")
    try:
        results = dict(run(config, quiet=args.quiet))
    except TrainingDivergedError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    arrays = results.pop("arrays", None)
    seed = getattr(config, seed_field, None) if seed_field else None
    written = save_results(json_path, name, config, results, seed=seed if isinstance(seed, int) else None,
                           arrays=arrays, preset=args.preset)
    if plot is not None:
        written += _plot(plot, load_results(json_path)["results"], figures_dir, suffix)
    _print_written(written)
    return 0


def _plot(plot, results, figures_dir: Path, suffix: str) -> list[Path]:
    figs = plot(results) or {}
    return [save_figure(fig, figures_dir / f"{fig_name}{suffix}.png") for fig_name, fig in figs.items()]


def _print_written(paths) -> None:
    for p in paths:
        print(f"wrote: {_rel_file(Path(p))}")


def _rel_file(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _is_oom(e: BaseException) -> bool:
    text = str(e)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def command(main_fn: Callable[[list[str] | None], int]) -> None:
    """Run ``main_fn`` as a program: bad input → one ``error: …`` line on stderr, exit status 2."""
    try:
        code = main_fn(None)
    except (ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    except OSError as e:
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        code = 2
    except MemoryError:
        print("error: out of memory (try smaller sizes)", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        code = 130
    except Exception as e:  # XLA's errors have no stable Python type across jaxlib versions
        if not _is_oom(e):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: out of memory: {first[:300]} (try smaller sizes)", file=sys.stderr)
        code = 2
    sys.exit(code)
