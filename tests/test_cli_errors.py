"""Every class of bad input (issue 12) against the experiment CLIs, as real processes at tiny sizes.

Each case must give exit status 2, exactly one line starting ``error:`` on stderr, no traceback, and
leave nothing behind: its working directory stays empty (no half-written results, figures, npz or
run ``config.json``) and the shared input files are untouched. Classes:

* ``output``: output locations that cannot be written — made so WITHOUT file permissions (root
  ignores them): a regular file where a directory is needed, a directory where a file is needed, a
  path under a regular file, a directory under ``/proc`` (no file can be created there);
* ``size``: arrays beyond int32 indexing or beyond the machine's memory (:func:`lintrans.cli.check_size`);
* ``integer``: integers beyond range (``--seed 99999999999999999999``), zero or negative counts;
* ``combination``: flags that mean nothing together;
* ``message``: inputs whose old message misled (a directory as ``--params``, float16 arrays, NaN).

Speed: a JAX import costs seconds, so :data:`DRIVER` imports once and FORKS one child process per
case, up to four at a time (before any JAX backend exists in the parent, so the fork is safe); each
child runs the script file as ``__main__`` with its own argv, stdout/stderr redirected at the
file-descriptor level and a real exit status. ``test_fork_driver_matches_subprocess`` checks that a forked case prints and exits
exactly as ``python experiments/…`` does; a few representative cases also run as plain subprocesses
(unmarked, fast). The whole table is ``slow``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXP = ROOT / "experiments"

DRIVER = textwrap.dedent("""
    import json, os, runpy, signal, sys
    import jax, matplotlib
    matplotlib.use("Agg")
    import lintrans.cli, lintrans.verify, lintrans.curves, lintrans.trained  # warm imports, no backend yet
    cases = json.load(open(sys.argv[1]))
    width = max(1, min(4, os.cpu_count() or 1))  # children at once
    codes, running = [None] * len(cases), {}

    def start(i, c):
        sys.stdout.flush(); sys.stderr.flush()
        pid = os.fork()
        if pid:
            running[pid] = i
            return
        signal.alarm(c.get("timeout", 120))
        fo = os.open(c["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        fe = os.open(c["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fo, 1); os.dup2(fe, 2)
        os.chdir(c["cwd"])
        sys.argv = [c["script"], *c["argv"]]
        code = 1
        try:
            runpy.run_path(c["script"], run_name="__main__")
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            import traceback
            traceback.print_exc()
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)

    for i, c in enumerate(cases):
        while len(running) >= width:
            pid, status = os.wait()
            codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
        start(i, c)
    while running:
        pid, status = os.wait()
        codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
    json.dump(codes, open(sys.argv[2], "w"))
""")

# (script, argv, text the message must contain, class). Placeholders: {file} a regular file, {dir} an
# existing directory, {params}/{prompts} valid npz inputs, {f16_params}/{f16_prompts} float16 ones,
# {unwritable} a directory under /proc, {run} a run directory's config.json (no checkpoints). Outputs not
# under test go to the case's own directory, {tmp} (which must stay empty: no half-written run).
CASES = [
    # --- verify_theorem1 -----------------------------------------------------------------------
    ("verify_theorem1", ["--json", "{file}/r.json"], "--json", "output"),
    ("verify_theorem1", ["--json", "{dir}"], "is a directory", "output"),
    ("verify_theorem1", ["--figures-dir", "{file}"], "--figures-dir", "output"),
    ("verify_theorem1", ["--results-dir", "{file}"], "--results-dir", "output"),
    ("verify_theorem1", ["--results-dir", "{unwritable}"], "--results-dir", "output"),
    ("verify_theorem1", ["--dump", "{dir}"], "--dump", "output"),
    ("verify_theorem1", ["--dump", "{file}/t.npz"], "--dump", "output"),
    ("verify_theorem1", ["--batch", "1000000000"], "int32", "size"),
    ("verify_theorem1", ["--d-in", "100000"], "int32", "size"),
    ("verify_theorem1", ["--batch", "2e9"], "--batch", "size"),
    ("verify_theorem1", ["--seed", "99999999999999999999"], "--seed", "integer"),
    ("verify_theorem1", ["--layers", "99999999999999999999"], "--layers", "integer"),
    ("verify_theorem1", ["--layers", "0,2"], "--layers", "integer"),
    ("verify_theorem1", ["--batch", "0"], "--batch", "integer"),
    ("verify_theorem1", ["--seed", "-1"], "--seed", "integer"),
    ("verify_theorem1", ["--n-demos", "2.5"], "--n-demos", "integer"),
    ("verify_theorem1", ["--params", "{params}", "--init-scale", "0.1"], "--init-scale has no meaning", "combination"),
    ("verify_theorem1", ["--prompts", "{prompts}", "--n-demos", "5"], "--n-demos has no meaning", "combination"),
    ("verify_theorem1", ["--prompts", "{prompts}", "--task", "linear"], "--task has no meaning", "combination"),
    ("verify_theorem1", ["--plot-only", "--batch", "3"], "would be ignored", "combination"),
    ("verify_theorem1", ["--params", "{params}", "--layers", "1,3"], "holds 2 layers", "combination"),
    ("verify_theorem1", ["--params", "{dir}"], "is a directory", "message"),
    ("verify_theorem1", ["--params", "{f16_params}"], "float16", "message"),
    ("verify_theorem1", ["--prompts", "{f16_prompts}"], "float16", "message"),
    ("verify_theorem1", ["--params", "{file}"], "not a readable npz", "message"),
    ("verify_theorem1", ["--init-scale", "nan"], "--init-scale", "message"),
    ("verify_theorem1", ["--overflow-init-scale", "-1"], "--overflow-init-scale", "message"),
    ("verify_theorem1", ["--plot-only"], "no results file", "message"),
    ("verify_theorem1", ["--mask", "full"], "--mask", "message"),
    ("verify_theorem1", ["--params", "/nonexistent/p.npz"], "no such file", "message"),
    # --- icl_curves ------------------------------------------------------------------------------
    ("icl_curves", ["--runs-dir", "{file}"], "--runs-dir", "output"),
    ("icl_curves", ["--runs-dir", "{file}/runs"], "--runs-dir", "output"),
    ("icl_curves", ["--json", "{file}/r.json"], "--json", "output"),
    ("icl_curves", ["--figures-dir", "{file}"], "--figures-dir", "output"),
    ("icl_curves", ["--linear-batch", "1000000000"], "linear training step", "size"),
    ("icl_curves", ["--eval-prompts", "200000000"], "evaluation prompts", "size"),
    ("icl_curves", ["--d-in", "100000"], "--d-in", "size"),
    ("icl_curves", ["--seed", "99999999999999999999"], "--seed", "integer"),
    ("icl_curves", ["--depths", "99999999999999999999"], "--depths", "integer"),
    ("icl_curves", ["--depths", "1,x"], "--depths", "integer"),
    ("icl_curves", ["--eval-prompts", "10"], "--eval-prompts", "integer"),
    ("icl_curves", ["--checkpoints", "0"], "--checkpoints", "integer"),
    ("icl_curves", ["--no-softmax", "--softmax-width", "8"], "no meaning with --no-softmax", "combination"),
    ("icl_curves", ["--softmax-heads", "3"], "must divide", "combination"),
    ("icl_curves", ["--quick", "--plot-only", "--d-in", "2"], "would be ignored", "combination"),
    ("icl_curves", ["--linear-lr", "nan"], "--linear-lr", "message"),
    ("icl_curves", ["--dtype", "float16"], "--dtype", "message"),
    # --- reproduce_all ---------------------------------------------------------------------------
    ("reproduce_all", ["--results-dir", "{file}"], "--results-dir", "output"),
    ("reproduce_all", ["--results-dir", "{unwritable}"], "--results-dir", "output"),
    ("reproduce_all", ["--figures-dir", "{file}"], "--figures-dir", "output"),
    ("reproduce_all", ["--json", "{dir}"], "--json", "output"),
    ("reproduce_all", ["--publish", "--quick"], "not with --quick", "combination"),
    ("reproduce_all", ["--publish", "--figures-dir", "{dir}"], "--figures-dir has no meaning", "combination"),
    ("reproduce_all", ["--only", "nope"], "--only", "message"),
    # --- bound_vs_layer (converted by another session; cases from its --help) --------------------
    ("bound_vs_layer", ["--json", "{file}/r.json"], "--json", "output"),
    ("bound_vs_layer", ["--figures-dir", "{file}"], "--figures-dir", "output"),
    ("bound_vs_layer", ["--results-dir", "{unwritable}"], "--results-dir", "output"),
    ("bound_vs_layer", ["--n-prompts", "2000000000"], "int32", "size"),
    ("bound_vs_layer", ["--seed", "99999999999999999999"], "--seed", "integer"),
    ("bound_vs_layer", ["--seeds", "0"], "--seeds", "integer"),
    ("bound_vs_layer", ["--n-layers", "99999999999999999999"], "--n-layers", "integer"),
    ("bound_vs_layer", ["--n-layers", "0"], "--n-layers", "integer"),
    ("bound_vs_layer", ["--params", "{params}", "--n-layers", "3"], "--n-layers has no meaning", "combination"),
    ("bound_vs_layer", ["--step", "3"], "--step has no meaning", "combination"),
    ("bound_vs_layer", ["--mask", "causal"], "--mask", "combination"),
    ("bound_vs_layer", ["--mask", "foo"], "--mask", "combination"),
    ("bound_vs_layer", ["--weight-noise", "-1"], "--weight-noise", "message"),
    ("bound_vs_layer", ["--weight-noise", "nan"], "--weight-noise", "message"),
    ("bound_vs_layer", ["--params", "{dir}"], "is a directory", "message"),
    ("bound_vs_layer", ["--checkpoint", "{file}"], "--checkpoint", "message"),
    ("bound_vs_layer", ["--tag", "a/b"], "--tag", "message"),
    # --- pruning_phenomenon, clip_search (converted by another session) ---------------------------
    ("pruning_phenomenon", ["--json", "{file}/r.json"], "--json", "output"),
    ("pruning_phenomenon", ["--figures-dir", "{file}"], "--figures-dir", "output"),
    ("pruning_phenomenon", ["--runs-dir", "{file}"], "--runs-dir", "output"),
    ("pruning_phenomenon", ["--n-test", "2000000000"], "--n-test", "size"),
    ("pruning_phenomenon", ["--seed", "99999999999999999999"], "--seed", "integer"),
    ("pruning_phenomenon", ["--layers", "0"], "--layers", "integer"),
    ("pruning_phenomenon", ["--train-seeds", "99999999999999999999"], "--train-seeds", "integer"),
    ("pruning_phenomenon", ["--checkpoint", "{run}", "--linear-steps", "5"], "--linear-steps", "combination"),
    ("pruning_phenomenon", ["--checkpoint", "{dir}"], "--checkpoint", "message"),
    ("pruning_phenomenon", ["--rates", "1.5"], "--rates", "message"),
    ("pruning_phenomenon", ["--models", "foo"], "--models", "message"),
    ("clip_search", ["--json", "{dir}"], "--json", "output"),
    ("clip_search", ["--results-dir", "{unwritable}"], "--results-dir", "output"),
    ("clip_search", ["--runs-dir", "{file}/x"], "--runs-dir", "output"),
    ("clip_search", ["--n-test", "2000000000"], "--n-test", "size"),
    ("clip_search", ["--n-val", "1000000000"], "--n-val", "size"),
    ("clip_search", ["--seed", "99999999999999999999"], "--seed", "integer"),
    ("clip_search", ["--top-k", "0"], "--top-k", "integer"),
    ("clip_search", ["--checkpoint", "{run}", "--train-seeds", "3"], "--train-seeds", "combination"),
    ("clip_search", ["--group", "foo"], "--group", "message"),
    ("clip_search", ["--rates", "nan"], "--rates", "message"),
    # --- benchmark, pruning_under_shift, beyond_linear, train_icl (other sessions) ------------------
    ("benchmark", ["--json", "{file}/r.json"], "--json", "output"),
    ("benchmark", ["--results-dir", "{file}"], "--results-dir", "output"),
    ("benchmark", ["--matmul-n", "1000000"], "--matmul-n", "size"),
    ("benchmark", ["--n-prompts", "200000000"], "int32", "size"),
    ("benchmark", ["--batch", "2000000000"], "int32", "size"),
    ("benchmark", ["--seed", "99999999999999999999"], "--seed", "integer"),
    ("benchmark", ["--repeats", "0"], "--repeats", "integer"),
    ("benchmark", ["--only", "nope"], "--only", "message"),
    ("benchmark", ["--only", "bound", "--batch", "8"], "--batch sizes the training", "combination"),
    ("pruning_under_shift", ["--json", "{file}/r.json"], "--json", "output"),
    ("pruning_under_shift", ["--seed", "99999999999999999999"], "--seed", "integer"),
    ("pruning_under_shift", ["--layers", "0"], "--layers", "integer"),
    ("pruning_under_shift", ["--shift", "bogus=1"], "--shift", "message"),
    ("pruning_under_shift", ["--rates", "1"], "--rates", "message"),
    ("pruning_under_shift", ["--checkpoint", "{run}", "--models", "softmax"], "--models", "combination"),
    ("beyond_linear", ["--figures-dir", "{file}"], "--figures-dir", "output"),
    ("beyond_linear", ["--batch-size", "2000000000"], "--batch-size", "size"),
    ("beyond_linear", ["--d-in", "100000"], "--d-in", "size"),
    ("beyond_linear", ["--seeds", "0"], "--seeds", "integer"),
    ("beyond_linear", ["--seed", "99999999999999999999"], "--seed", "integer"),
    ("beyond_linear", ["--n-points", "3"], "--n-points", "combination"),
    ("beyond_linear", ["--models", "mlp"], "--models", "message"),
    ("beyond_linear", ["--radius", "nan"], "--radius", "message"),
    ("train_icl", ["--out", "{file}"], "--out", "output"),
    ("train_icl", ["--out", "{file}/run"], "--out", "output"),
    ("train_icl", ["--out", ""], "--out", "output"),
    ("train_icl", ["--out", "{tmp}/r", "--json", "{dir}"], "--json", "output"),
    ("train_icl", ["--out", "{tmp}/r", "--batch", "1000000000"], "int32", "size"),
    ("train_icl", ["--out", "{tmp}/r", "--d-in", "100000"], "--d-in", "size"),
    ("train_icl", ["--out", "{tmp}/r", "--seed", "99999999999999999999"], "--seed", "integer"),
    ("train_icl", ["--out", "{tmp}/r", "--layers", "99999999999999999999"], "--layers", "integer"),
    ("train_icl", ["--out", "{tmp}/r", "--final-lr-frac", "5"], "--final-lr-frac", "combination"),
    ("train_icl", ["--out", "{tmp}/r", "--model", "linear", "--width", "8"], "--width", "combination"),
    ("train_icl", ["--out", "{tmp}/r", "--curriculum", "1,2"], "--curriculum", "message"),
    ("train_icl", ["--out", "{tmp}/r", "--model", "mlp"], "--model", "message"),
    ("train_icl", ["--layers", "2"], "--out", "message"),
]

# Fixed after this module was written (they were strict xfails): runs directories and prompt sizes checked first.
CASES += [
    ("pruning_under_shift", ["--runs-dir", "{file}"], "--runs-dir", "output"),
    ("beyond_linear", ["--runs-dir", "{file}/x"], "--runs-dir", "output"),
    ("pruning_under_shift", ["--n-test", "2000000000"], "--n-test", "size"),
    ("bound_vs_layer", ["--params", "{f16_params}"], "float16", "message"),
]



#: Scripts that train into --runs-dir: a case that got that far must not touch the repository's runs/.
RUNS_DIR_SCRIPTS = ("icl_curves", "pruning_phenomenon", "clip_search", "pruning_under_shift", "beyond_linear")


def _memory_case():
    """verify_theorem1 sizes that ``cli.check_size`` refuses for memory, not int32 (None if none exist here)."""
    from lintrans import cli

    for d_in in range(300, 2700, 100):
        D, B = d_in + 1, 256
        n = B * 2 * D * 41 + 3 * B * D * D  # verify_theorem1's estimate: one layer, N = 40
        if n > 2**31 - 1:  # the script refuses int32 first: no memory-only size on a machine this large
            return None
        try:  # refused with a 2x margin, so a change in free memory before the case runs does not matter
            cli.check_size(n // 2, "probe", itemsize=8, copies=3)
        except ValueError as e:
            if "memory" in str(e):
                return ("verify_theorem1", ["--d-in", str(d_in), "--layers", "1"], "of memory available", "size")
            return None
    return None


def _inputs(d: Path) -> dict:
    from lintrans.io import save_npz

    rng = np.random.default_rng(0)
    w = {k: rng.normal(size=(2, 3, 3)) * 0.3 for k in ("w_k", "w_q", "w_v")}
    H = rng.normal(size=(4, 3, 4))
    H[:, 2, -1] = 0.0
    save_npz(d / "params.npz", w)
    save_npz(d / "prompts.npz", {"H": H})
    save_npz(d / "f16_params.npz", {k: v.astype(np.float16) for k, v in w.items()})
    save_npz(d / "f16_prompts.npz", {"H": H.astype(np.float16)})
    (d / "plain.txt").write_text("a regular file\n")
    (d / "adir").mkdir()
    from lintrans.io import save_json
    from lintrans.train import config_to_dict
    from lintrans.trained import default_config

    (d / "run").mkdir()  # a run directory's config.json (no checkpoints): enough for flag checks at parse time
    save_json(d / "run" / "config.json", config_to_dict(default_config("linear", steps=10, seeds=2)))
    return {"run": str(d / "run"), "file": str(d / "plain.txt"), "dir": str(d / "adir"), "params": str(d / "params.npz"),
            "prompts": str(d / "prompts.npz"), "f16_params": str(d / "f16_params.npz"),
            "f16_prompts": str(d / "f16_prompts.npz"), "unwritable": "/proc/lintrans-nowhere"}


def _listing(d: Path) -> dict:
    return {str(p.relative_to(d)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(d.rglob("*"))}


def _argv(script: str, argv: list[str], fill: dict, work: Path) -> list[str]:
    argv = [a.format(**fill, tmp=str(work)) for a in argv]
    own = []  # send every output not under test into the case's own (to stay empty) directory
    if script != "reproduce_all" or "--plot-only" not in argv:
        for flag, value in (("--results-dir", work / "results"), ("--figures-dir", work / "figures")):
            if flag not in argv and not (flag == "--figures-dir" and "--publish" in argv):
                own += [flag, str(value)]
    if script in RUNS_DIR_SCRIPTS and "--runs-dir" not in argv:
        own += ["--runs-dir", str(work / "runs")]
    if script == "reproduce_all":
        own += ["--dry-run"] + ([] if "--runs-dir" in argv else ["--runs-dir", str(work / "runs")])
    return argv + own


def _check(result: dict, match: str) -> list[str]:
    """The problems of one case's outcome (empty: clean)."""
    problems = []
    err = result["stderr"]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if result["code"] != 2:
        problems.append(f"exit {result['code']}")
    if sum(ln.startswith("error:") for ln in lines) != 1 or len(lines) != 1:
        problems.append(f"stderr is not one error line: {err[-400:]!r}")
    if "Traceback" in err:
        problems.append("traceback")
    if match not in err:
        problems.append(f"{match!r} not in message {err.strip()[:300]!r}")
    if result["left"]:
        problems.append(f"left behind: {result['left']}")
    return problems


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    return d, _inputs(d)


def _drive(cases, inputs, tmp: Path) -> list[dict]:
    """Run ``cases`` through :data:`DRIVER` (one process, one fork per case)."""
    d, fill = inputs
    before = _listing(d)
    spec = []
    for i, (script, argv, *rest) in enumerate(cases):
        work = tmp / f"case{i}"
        work.mkdir()
        spec.append({"script": str(EXP / f"{script}.py"), "argv": _argv(script, argv, fill, work), "cwd": str(work),
                     "stdout": str(tmp / f"{i}.out"), "stderr": str(tmp / f"{i}.err"),
                     "timeout": rest[2] if len(rest) > 2 else 120})
    (tmp / "cases.json").write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(tmp / "cases.json"), str(tmp / "codes.json")],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    codes = json.loads((tmp / "codes.json").read_text())
    assert _listing(d) == before, "the shared inputs changed"
    return [{"code": code, "stderr": Path(s["stderr"]).read_text(), "stdout": Path(s["stdout"]).read_text(),
             "argv": s["argv"], "left": sorted(_listing(Path(s["cwd"])))} for code, s in zip(codes, spec)]


def _all_cases():
    extra = _memory_case()
    return CASES + ([extra] if extra else [])


@pytest.fixture(scope="module")
def driven(inputs, tmp_path_factory):
    cases = _all_cases()
    return cases, _drive(cases, inputs, tmp_path_factory.mktemp("driven"))


@pytest.mark.slow
def test_every_bad_input_is_refused_cleanly(driven):
    cases, results = driven
    bad = {}
    for (script, argv, match, kind, *_), r in zip(cases, results):
        problems = _check(r, match)
        if problems:
            bad[f"{kind}: {script} {' '.join(argv)}"] = problems
    by_class = {}
    for _, _, _, kind, *_ in cases:
        by_class[kind] = by_class.get(kind, 0) + 1
    print(f"\n{len(cases)} bad inputs tried ({by_class}); {len(cases) - len(bad)} refused cleanly")
    assert not bad, json.dumps(bad, indent=1, ensure_ascii=False)


@pytest.mark.slow
def test_every_class_and_cli_is_covered():
    kinds = {}
    for script, _, _, kind, *_ in CASES:
        kinds.setdefault(script, set()).add(kind)
    for script in ("verify_theorem1", "icl_curves", "bound_vs_layer", "pruning_phenomenon", "clip_search", "benchmark",
                   "train_icl", "beyond_linear", "pruning_under_shift"):
        assert kinds[script] >= {"output", "size", "integer", "combination", "message"}, script
    assert kinds["reproduce_all"] >= {"output", "combination"}


REPRESENTATIVE = [
    ("verify_theorem1", ["--seed", "99999999999999999999"], "--seed", "integer"),
    ("verify_theorem1", ["--figures-dir", "{file}"], "--figures-dir", "output"),
    ("reproduce_all", ["--results-dir", "{file}"], "--results-dir", "output"),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", REPRESENTATIVE, ids=lambda c: f"{c[0]} {' '.join(c[1])}")
def test_representative_cases_as_plain_subprocesses(case, inputs, tmp_path):
    script, argv, match, _ = case
    d, fill = inputs
    proc = subprocess.run([sys.executable, str(EXP / f"{script}.py"), *_argv(script, argv, fill, tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    problems = _check({"code": proc.returncode, "stderr": proc.stderr, "left": sorted(_listing(tmp_path))}, match)
    assert not problems, problems


@pytest.mark.slow
def test_fork_driver_matches_subprocess(inputs, tmp_path):
    """A forked case prints and exits exactly as the same command run as ``python experiments/…``."""
    case = REPRESENTATIVE[0]
    (tmp_path / "fork").mkdir()
    forked = _drive([case], inputs, tmp_path / "fork")[0]
    d, fill = inputs
    work = tmp_path / "plain"
    work.mkdir()
    proc = subprocess.run([sys.executable, str(EXP / f"{case[0]}.py"), *_argv(case[0], case[1], fill, work)],
                          cwd=work, capture_output=True, text=True, timeout=300)
    assert (forked["code"], forked["stderr"], forked["stdout"]) == (proc.returncode, proc.stderr, proc.stdout)
