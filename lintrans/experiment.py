"""The harness every script in ``experiments/`` shares: flags, errors, progress, results, figures.

A script has a frozen ``Config`` dataclass, ``run(config) -> results``, ``plot(results) -> Figure``
and ``main(argv) -> int`` built from these pieces:

* :class:`ArgParser` prints ``error: …`` and exits 2 (no usage dump, no traceback).
* :func:`cli` wraps ``main`` so a ``ValueError``/``TypeError`` from validation becomes
  ``error: …`` and exit status 2.
* :class:`Progress` shows progress on stderr for long runs.
* :func:`save_results` writes ``results/<name>.json`` (config, seed, versions, git revision, the
  numbers) and, optionally, ``results/<name>.npz``; :func:`save_figure` writes
  ``figures/<name>.png``. Both atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lintrans.io import atomic_write_bytes, load_json, provenance, save_json, save_npz
from lintrans.progress import Progress

__all__ = ["ArgParser", "cli", "positive_int", "rate_list", "Progress", "save_results", "load_results", "save_figure", "REPO_ROOT"]

#: The repository root (the parent of ``lintrans/``): default home of ``results/`` and ``figures/``.
REPO_ROOT = Path(__file__).resolve().parent.parent


class ArgParser(argparse.ArgumentParser):
    """``argparse`` that reports bad flags as one line ``error: …`` and exit status 2."""

    def error(self, message: str):  # noqa: D401 - argparse hook
        self.exit(2, f"error: {message} (see --help)\n")


def positive_int(v: str) -> int:
    """``argparse`` type: a positive integer, else a one-line error naming the value."""
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v!r}")
    return n


def rate_list(v: str) -> tuple[float, ...]:
    """``argparse`` type: comma-separated clipping rates, validated by :func:`lintrans.search.check_rates`."""
    from lintrans.search import check_rates

    try:
        rates = tuple(float(s) for s in v.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers in [0, 1), got {v!r}") from None
    try:
        return check_rates(rates)
    except (TypeError, ValueError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def cli(main: Callable[[list[str] | None], int]) -> None:
    """Run ``main`` as a command: bad input → ``error: …`` on stderr and exit 2, no traceback."""
    try:
        code = main(None)
    except (ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)


def _config_dict(config: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    if isinstance(config, Mapping):
        return dict(config)
    raise TypeError(f"config must be a dataclass or a mapping, got {type(config).__name__}")


def save_results(
    name: str,
    config: Any,
    results: Mapping[str, Any],
    *,
    seed: int | None = None,
    arrays: Mapping[str, Any] | None = None,
    json_path: str | os.PathLike | None = None,
    results_dir: str | os.PathLike | None = None,
) -> Path:
    """Write ``results/<name>.json`` (+ ``.npz`` when ``arrays`` is given) with provenance.

    The JSON holds ``{"name", "config", "provenance", "results"}``; ``provenance`` records the seed,
    package versions, git revision and devices. Returns the JSON path.
    """
    out_dir = Path(results_dir) if results_dir is not None else REPO_ROOT / "results"
    path = Path(json_path) if json_path is not None else out_dir / f"{name}.json"
    doc = {"name": name, "config": _config_dict(config), "provenance": provenance(seed), "results": dict(results)}
    if arrays:
        npz_path = path.with_suffix(".npz")
        save_npz(npz_path, arrays)
        doc["arrays_file"] = npz_path.name
    save_json(path, doc)
    return path


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read a results JSON written by :func:`save_results`; ``ValueError`` if it is not one."""
    doc = load_json(path)
    if not isinstance(doc, dict) or "results" not in doc or "config" not in doc:
        raise ValueError(f"{path}: not a lintrans results file (needs 'config' and 'results')")
    return doc


def save_figure(fig, name: str, figures_dir: str | os.PathLike | None = None, dpi: int = 110) -> Path:
    """Write ``figures/<name>.png`` atomically and close the figure."""
    import io

    import matplotlib.pyplot as plt

    out_dir = Path(figures_dir) if figures_dir is not None else REPO_ROOT / "figures"
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(out_dir / f"{name}.png", buf.getvalue())
