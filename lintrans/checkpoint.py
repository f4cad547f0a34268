"""Run directories: atomic, pickle-free checkpoints, metrics and loaders (issue 3).

The contract (other modules and scripts rely on it; keep it exactly)::

    runs/NAME/config.json            the training config: lintrans.train.config_to_dict(config) —
                                     every TrainConfig field ("model": "linear" | "softmax", d_in,
                                     n_demos, n_layers, mask, scale, readout, seed, seeds, …) plus
                                     "softmax" (the SoftmaxConfig fields, null for linear) and
                                     "seed_values" (the list of seed values)
    runs/NAME/ckpt_<step:08d>.npz    the state after <step> steps: one array per leaf, named
                                     "params/<field>" and "opt_state/<path>", each with a leading
                                     seed axis S; "rng/data_keys" (S, 2) uint32; "pending/loss"
                                     (k, S), the losses of the k = step mod log_every steps since
                                     the last metrics record (absent in older files: k = 0);
                                     "__meta__" a uint8 array holding JSON {format, model, step,
                                     seed_values, dtype}
    runs/NAME/metrics.jsonl          one JSON object per log step: step, loss (per seed),
                                     loss_mean, grad_norm, lr, steps_per_s, prompts_per_s
    runs/NAME/.lock                  the writer's lock (lintrans.lock): one process at a time
    runs/NAME/final.json             written by experiments/train_icl.py: test errors, estimators,
                                     config and provenance

Checkpoints are written with :func:`lintrans.io.save_npz` (temporary file, fsync, atomic
rename), so a kill at any moment leaves every ``ckpt_*.npz`` complete: either the old set or the
old set plus the new file. They are read with ``allow_pickle=False`` and checked leaf by leaf
against the shapes and dtypes the config implies; a truncated or corrupt file, a missing or extra
array, a non-finite weight, an optimizer step count other than the checkpoint's step, or a
checkpoint of the other model raises ``ValueError`` naming the file.

Metrics survive ``kill -9`` (issue 12, item 7): the training loop appends a step's metrics line
BEFORE writing that step's checkpoint, so every checkpoint at step ``t`` has all records ``≤ t`` on
disk; resuming from ``t`` drops the records after ``t`` (:func:`truncate_metrics`: those of steps
that are recomputed) and restores the pending losses, so the file ends equal to an uninterrupted
run's (timing fields aside).

Loaders: :func:`load_run` (all seeds), :func:`load_linear_params` and
:func:`load_softmax_run_params` (one seed), :func:`list_checkpoints`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lintrans.io import atomic_write_bytes, load_json, load_npz, save_json, save_npz, to_jsonable
from lintrans.models.softmax import softmax_config
from lintrans.train_config import config_from_dict, config_to_dict, seed_values
from lintrans.train_state import TrainState, init_state, seed_keys

__all__ = [
    "CONFIG_FILE",
    "METRICS_FILE",
    "FINAL_FILE",
    "FORMAT",
    "checkpoint_path",
    "list_checkpoints",
    "read_run_config",
    "prepare_run_dir",
    "open_run",
    "start_run",
    "save_checkpoint",
    "load_state",
    "load_run",
    "load_linear_params",
    "load_softmax_run_params",
    "append_metrics",
    "read_metrics",
    "truncate_metrics",
]

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
FINAL_FILE = "final.json"
FORMAT = "lintrans-checkpoint-1"
_CKPT_RE = re.compile(r"^ckpt_(\d{8})\.npz$")
_META = "__meta__"
_PENDING = "pending/loss"
_KEYS = "rng/data_keys"


def checkpoint_path(run_dir: str | os.PathLike, step: int) -> Path:
    """``run_dir/ckpt_<step:08d>.npz``."""
    return Path(run_dir) / f"ckpt_{int(step):08d}.npz"


def list_checkpoints(run_dir: str | os.PathLike) -> list[int]:
    """Steps of the complete checkpoints in ``run_dir``, ascending (temporary files are ignored)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir}: no such run directory")
    return sorted(int(m.group(1)) for p in run_dir.iterdir() if (m := _CKPT_RE.match(p.name)))


def read_run_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The run's ``config.json`` as a dict (``ValueError`` naming the file if missing or invalid)."""
    path = Path(run_dir) / CONFIG_FILE
    doc = load_json(path)
    try:
        config_from_dict(doc)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: not a valid training config ({e})") from None
    return doc


def _normalized(obj) -> Any:
    return json.loads(json.dumps(to_jsonable(obj)))


def open_run(run_dir: str | os.PathLike, config, *, resume: bool):
    """Reopen a run directory to resume, writing nothing; return the state to start from (or ``None``).

    No ``config.json`` (a new or empty directory): ``None``, a fresh start. Existing run: ``resume``
    must be true and ``config.json`` must equal ``config`` (``ValueError`` naming the differing
    keys); stale temporary files of an interrupted write are removed (safe only under the run's
    lock, :mod:`lintrans.lock`) and the latest checkpoint is loaded (``None`` if there is none yet).
    """
    run_dir = Path(run_dir)
    cfg_path = run_dir / CONFIG_FILE
    if not cfg_path.exists():
        return None
    if not resume:
        raise ValueError(f"{run_dir} already holds a run ({CONFIG_FILE}); resume it (--resume) "
                         "or choose another directory")
    have = read_run_config(run_dir)
    want = _normalized(config_to_dict(config))
    if have != want:
        diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
        detail = ", ".join(f"{k}: {have.get(k)!r} in the run vs {want.get(k)!r} now" for k in diff)
        raise ValueError(f"{cfg_path}: cannot resume with a different config ({detail})")
    for p in run_dir.iterdir():
        if p.name.startswith((".ckpt_", f".{METRICS_FILE}.")) and p.name.endswith(".tmp"):
            p.unlink()
    steps = list_checkpoints(run_dir)
    if not steps:
        return None
    return load_state(run_dir, config, steps[-1])


def start_run(run_dir: str | os.PathLike, config) -> Path:
    """Write ``run_dir/config.json`` for ``config`` (creating the directory), atomically."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return save_json(run_dir / CONFIG_FILE, _normalized(config_to_dict(config)))


def prepare_run_dir(run_dir: str | os.PathLike, config, *, resume: bool):
    """:func:`open_run`, and for a new directory (no ``config.json``) :func:`start_run` at once.

    Returns the state to start from, or ``None``. (The training loop calls the two separately and
    writes ``config.json`` only once its first step has run, so a run refused or crashed before
    that leaves no ``config.json`` behind.)
    """
    new = not (Path(run_dir) / CONFIG_FILE).exists()
    state = open_run(run_dir, config, resume=resume)
    if new:
        start_run(run_dir, config)
    return state


def _leaf_names(prefix: str, tree) -> list[tuple[str, Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(f"{prefix}/{jax.tree_util.keystr(p, simple=True, separator='/')}", leaf) for p, leaf in flat]


def save_checkpoint(run_dir: str | os.PathLike, config, state) -> Path:
    """Write ``state`` (a :class:`lintrans.train.TrainState`, seed axis) as ``ckpt_<step>.npz``, atomically."""
    arrays = {}
    for name, leaf in _leaf_names("params", state.params) + _leaf_names("opt_state", state.opt_state):
        arrays[name] = np.asarray(jax.device_get(leaf))
    arrays[_KEYS] = np.asarray(seed_keys(config)[1])
    pending = state.pending_loss
    arrays[_PENDING] = (np.zeros((0, config.seeds), config.dtype) if pending is None
                        else np.asarray(jax.device_get(pending)).reshape(-1, config.seeds))
    meta = {"format": FORMAT, "model": config.model, "step": int(state.step),
            "seed_values": seed_values(config), "dtype": config.dtype}
    arrays[_META] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    return save_npz(checkpoint_path(run_dir, state.step), arrays)


def _read_meta(path: Path, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    if _META not in arrays:
        raise ValueError(f"{path}: not a lintrans checkpoint (no {_META} array)")
    try:
        meta = json.loads(arrays[_META].astype(np.uint8).tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable checkpoint metadata ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else meta
        raise ValueError(f"{path}: unknown checkpoint format {found!r}")
    return meta


def load_state(run_dir: str | os.PathLike, config, step: int):
    """Read ``ckpt_<step>.npz`` of ``run_dir`` into a :class:`lintrans.train.TrainState` for ``config``.

    Every leaf is checked against the shape and dtype ``config`` implies; ``ValueError`` names the
    file for a corrupt or truncated file, a wrong model, a missing/extra/mis-shaped array, a
    non-finite weight, an optimizer step count other than ``step``, or seeds that do not match.
    """
    path = checkpoint_path(run_dir, step)
    arrays = load_npz(path)
    meta = _read_meta(path, arrays)
    if meta.get("model") != config.model:
        raise ValueError(f"{path}: a checkpoint of a {meta.get('model')!r} model, but the run is {config.model!r}")
    if meta.get("step") != step:
        raise ValueError(f"{path}: holds step {meta.get('step')}, not {step}")
    if meta.get("seed_values") != seed_values(config):
        raise ValueError(f"{path}: seeds {meta.get('seed_values')} differ from the config's {seed_values(config)}")
    if not np.array_equal(arrays.get(_KEYS), np.asarray(seed_keys(config)[1])):
        raise ValueError(f"{path}: rng/data_keys do not match the keys of the config's seeds")

    def template():
        s = init_state(config)
        return s.params, s.opt_state

    params_t, opt_t = jax.eval_shape(template)
    expected = _leaf_names("params", params_t) + _leaf_names("opt_state", opt_t)
    extra = sorted(set(arrays) - {n for n, _ in expected} - {_META, _KEYS, _PENDING})
    if extra:
        raise ValueError(f"{path}: unexpected array(s) {extra}")
    leaves = []
    for name, spec in expected:
        if name not in arrays:
            raise ValueError(f"{path}: missing array {name!r}")
        arr = arrays[name]
        if arr.shape != spec.shape or arr.dtype != spec.dtype:
            raise ValueError(f"{path}: array {name!r} is {arr.dtype}{list(arr.shape)}, "
                             f"the config implies {spec.dtype}{list(spec.shape)}")
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            raise ValueError(f"{path}: array {name!r} contains NaN or Inf")
        if name.startswith("opt_state/") and name.endswith("/count") and not np.all(arr == step):
            raise ValueError(f"{path}: optimizer step count {name!r} is {sorted(set(arr.ravel().tolist()))}, "
                             f"but the checkpoint is at step {step}; the file is inconsistent")
        leaves.append(jnp.asarray(arr))
    n_params = len(jax.tree_util.tree_leaves(params_t))
    params = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params_t), leaves[:n_params])
    opt_state = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(opt_t), leaves[n_params:])
    return TrainState(params, opt_state, step, _pending(path, arrays, config, step))


def _pending(path: Path, arrays: dict[str, np.ndarray], config, step: int):
    """The checkpoint's ``pending/loss`` as a ``(k, S)`` array, checked; ``None`` when absent or empty."""
    if _PENDING not in arrays:
        return None
    arr = arrays[_PENDING]
    # The training loop writes k = step mod log_every rows (0 at log steps); any k < log_every,
    # k <= step is a consistent file.
    k_max = min(config.log_every - 1, step)
    if (arr.ndim != 2 or arr.shape[1] != config.seeds or arr.shape[0] > k_max
            or arr.dtype != np.dtype(config.dtype)):
        raise ValueError(f"{path}: array {_PENDING!r} is {arr.dtype}{list(arr.shape)}; at step {step} with "
                         f"log_every={config.log_every} the config allows {config.dtype}[k, {config.seeds}], "
                         f"k <= {k_max}")
    k = arr.shape[0]
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{path}: array {_PENDING!r} contains NaN or Inf")
    return jnp.asarray(arr) if k else None


def _pick_step(run_dir: Path, step: int | None) -> int:
    steps = list_checkpoints(run_dir)
    if not steps:
        raise ValueError(f"{run_dir}: no checkpoints (ckpt_*.npz)")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise ValueError(f"{run_dir}: no checkpoint at step {step}; available: {steps}")
    return step


def load_run(run_dir: str | os.PathLike, step: int | None = None) -> tuple[Any, dict[str, Any], int]:
    """``(params with seed axis, config dict, step)`` of the latest checkpoint (or of ``step``)."""
    run_dir = Path(run_dir)
    config_dict = read_run_config(run_dir)
    step = _pick_step(run_dir, step)
    state = load_state(run_dir, config_from_dict(config_dict), step)
    return state.params, config_dict, step


def _one_seed(run_dir: Path, model: str, seed_index: int, step: int | None):
    config_dict = read_run_config(run_dir)
    if config_dict["model"] != model:
        raise ValueError(f"{run_dir / CONFIG_FILE}: a {config_dict['model']!r} run, not a {model!r} run")
    n = config_dict["seeds"]
    if isinstance(seed_index, bool) or not isinstance(seed_index, (int, np.integer)) or not 0 <= seed_index < n:
        raise ValueError(f"seed_index must be an integer in 0..{n - 1} for {run_dir}, got {seed_index!r}")
    params, config_dict, step = load_run(run_dir, step)
    return jax.tree_util.tree_map(lambda x: x[seed_index], params), config_dict


def load_linear_params(run_dir: str | os.PathLike, seed_index: int = 0, step: int | None = None):
    """``(LinearAttentionParams, config dict)`` of one seed of a linear run (``ValueError`` otherwise)."""
    return _one_seed(Path(run_dir), "linear", seed_index, step)


def load_softmax_run_params(run_dir: str | os.PathLike, seed_index: int = 0, step: int | None = None):
    """``(SoftmaxParams, SoftmaxConfig, config dict)`` of one seed of a softmax run."""
    params, config_dict = _one_seed(Path(run_dir), "softmax", seed_index, step)
    return params, softmax_config(config_from_dict(config_dict)), config_dict


# ----------------------------------------------------------------------------------------------
# metrics.jsonl
# ----------------------------------------------------------------------------------------------


def append_metrics(run_dir: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one JSON line to ``metrics.jsonl`` (flushed and fsynced)."""
    line = json.dumps(to_jsonable(record), allow_nan=False) + "\n"
    with open(Path(run_dir) / METRICS_FILE, "a") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of ``metrics.jsonl`` (an incomplete last line, left by a kill, is skipped)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}: line {i + 1} is not JSON") from None
    return out


def truncate_metrics(run_dir: str | os.PathLike, step: int) -> None:
    """Drop records after ``step`` (those of an interrupted run past its last checkpoint), atomically."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return
    records = read_metrics(run_dir)
    keep = [r for r in records if r.get("step", 0) <= step]
    text = "".join(json.dumps(r) + "\n" for r in keep)
    if text != path.read_text():
        atomic_write_bytes(path, text.encode())
