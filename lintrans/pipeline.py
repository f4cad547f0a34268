"""Running a table of stages as subprocesses, with reuse decided by full configs (``reproduce_all``).

A stage is a list of steps ``{"argv", "current", "why"}``: a command and whether its stored result
is current. Reuse is never decided by a file's existence alone:

* :func:`results_current`: an experiment's results JSON is current when the ``config`` and
  ``preset`` it records equal those the command would run with (the caller resolves them from the
  script's own ``Config``);
* :func:`run_current`: a training run directory is current when it holds a run of exactly this
  :class:`~lintrans.train_config.TrainConfig`, its final checkpoint and ``final.json``.

:func:`execute` runs the steps that are not current (all with ``force``), in order, skipping the
stages that depend on a failed one, and times each stage (wall and child CPU seconds).
Plain arguments only; the stage table and the script flags live in ``experiments/reproduce_all.py``.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import time
from pathlib import Path

from lintrans import checkpoint
from lintrans.io import load_json, to_jsonable
from lintrans.train import TrainConfig, config_to_dict

__all__ = ["jsonable", "results_current", "run_current", "shown", "execute", "summary"]


def jsonable(x):
    """``x`` as it reads back from a JSON file (tuples → lists), for comparisons with stored configs."""
    return json.loads(json.dumps(to_jsonable(x)))


def results_current(path: Path, want: dict | None, preset: str | None) -> tuple[bool, str]:
    """Is the results JSON at ``path`` made by config ``want`` (JSON form) and ``preset``? And why."""
    if not Path(path).is_file():
        return False, "no stored result"
    if want is None:
        return False, "config cannot be resolved yet (an input is made by an earlier stage)"
    try:
        doc = load_json(path)
    except ValueError:
        return False, f"{Path(path).name} unreadable"
    if not isinstance(doc, dict) or doc.get("config") != want or doc.get("preset") != preset:
        return False, f"{Path(path).name} was made by another config"
    return True, f"{Path(path).name} has the same config"


def run_current(tc: TrainConfig, run_dir: Path) -> tuple[bool, str]:
    """Does ``run_dir`` hold the finished run of ``tc`` (config, final checkpoint, ``final.json``)? And why."""
    run_dir = Path(run_dir)
    if not (run_dir / checkpoint.CONFIG_FILE).exists():
        return False, "not trained"
    if checkpoint.read_run_config(run_dir) != jsonable(config_to_dict(tc)):
        return False, "holds another config"
    if tc.steps not in checkpoint.list_checkpoints(run_dir):
        return False, "unfinished (resumed)"
    if not (run_dir / "final.json").exists():
        return False, "trained, not yet scored (final.json)"
    return True, "finished run of the same config"


def shown(argv: list[str], root: Path) -> str:
    """A command as a user would type it: ``python experiments/…``, paths relative to ``root``."""
    prefix = str(root) + os.sep
    return " ".join(["python"] + [a.replace(prefix, "") for a in argv[1:]])


def _children_cpu() -> float:
    """User + system CPU seconds of finished child processes (bounds the wall time on a quiet machine)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def execute(stages: list[dict], *, cwd: Path, force: bool = False, dry_run: bool = False,
            extra: tuple[str, ...] = ()) -> dict:
    """Run every step that is not current; ``extra`` flags are appended to each command.

    ``stages``: ``[{"stage", "depends", "steps": [{"argv", "current", "why"}]}]`` (``argv`` None: nothing
    to run). Returns ``{"stages": [...], "total_seconds", "total_cpu_seconds", "load_average_at_end",
    "cpu_count", "failed"}``; each stage entry has its status (``ok``, ``FAILED``, ``reused``,
    ``not run``, ``dry run``), commands and seconds.
    """
    report, failed = [], set()
    t_all = time.perf_counter()
    for s in stages:
        steps = [st for st in s["steps"] if st["argv"]]
        entry = {"stage": s["stage"], "commands": [shown(st["argv"], cwd) for st in steps]}
        todo = [st for st in steps if force or not st["current"]]
        blocked = [d for d in s["depends"] if d in failed]
        if dry_run:
            for st in steps:
                mark = "reuse" if st["current"] and not force else "run  "
                print(f"[{s['stage']}] {mark} ({st['why']}): {shown(st['argv'], cwd)}")
            entry.update(status="dry run", seconds=0.0)
        elif blocked:
            entry.update(status="not run", reason=f"depends on failed stage(s) {blocked}", seconds=0.0)
        elif not todo:
            entry.update(status="reused", reason="; ".join(st["why"] for st in s["steps"]), seconds=0.0)
        else:
            print(f"\n=== {s['stage']} ===", flush=True)
            t0, cpu0, codes = time.perf_counter(), _children_cpu(), []
            for st in todo:
                argv = st["argv"] + [a for a in extra if a not in st["argv"]]
                print("$ " + shown(argv, cwd), flush=True)
                codes.append(subprocess.run(argv, cwd=cwd).returncode)
                if codes[-1] != 0:
                    break
            entry.update(seconds=time.perf_counter() - t0, cpu_seconds=_children_cpu() - cpu0, exit_codes=codes,
                         status="ok" if all(c == 0 for c in codes) else "FAILED")
            if entry["status"] == "FAILED":
                failed.add(s["stage"])
        if not dry_run:
            print(f"--- {s['stage']}: {entry['status']} {entry['seconds']:.1f} s", flush=True)
        report.append(entry)
    return {"stages": report, "total_seconds": time.perf_counter() - t_all,
            "total_cpu_seconds": sum(e.get("cpu_seconds", 0.0) for e in report),
            "load_average_at_end": list(os.getloadavg()), "cpu_count": os.cpu_count(), "failed": sorted(failed)}


def summary(results: dict) -> str:
    """The table of stages: status, wall and CPU seconds, why a stage was reused or not run."""
    lines = ["", f"{'stage':24s} {'status':8s} {'wall s':>8s} {'CPU s':>8s}"]
    for e in results["stages"]:
        note = f"   ({e['reason']})" if e.get("reason") else ""
        lines.append(f"{e['stage']:24s} {e['status']:8s} {e['seconds']:8.1f} {e.get('cpu_seconds', 0.0):8.1f}" + note)
    lines.append(f"{'total':24s} {'':8s} {results['total_seconds']:8.1f} {results['total_cpu_seconds']:8.1f}")
    lines.append(f"(load average at the end {results['load_average_at_end'][0]:.1f} on {results['cpu_count']} cores; "
                 "CPU s = user + system time of the stage's processes)")
    return "\n".join(lines)
