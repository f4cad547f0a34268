"""Files: atomic writes, pickle-free npz loading with validation, JSON results with provenance.

Nothing is written half-way: every writer goes to a temporary file in the target directory and
``os.replace``s it into place (atomic on POSIX). npz files are read with ``allow_pickle=False``;
object arrays are refused, so a results or weights file can never execute code.
"""

from __future__ import annotations

import io as _io
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "atomic_write_bytes",
    "save_npz",
    "load_npz",
    "require_float_array",
    "require_int",
    "save_json",
    "load_json",
    "provenance",
    "to_jsonable",
]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600; give the file the mode an ordinary open() would (0666 & ~umask)
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_npz(path: str | os.PathLike, arrays: Mapping[str, Any]) -> Path:
    """Save named arrays as an uncompressed npz, atomically. Object arrays are refused."""
    clean = {}
    for name, value in arrays.items():
        arr = np.asarray(value)
        if arr.dtype == object:
            raise TypeError(f"save_npz: array {name!r} has dtype object; only numeric arrays are saved")
        clean[name] = arr
    buf = _io.BytesIO()
    np.savez(buf, **clean)
    return atomic_write_bytes(path, buf.getvalue())


def load_npz(path: str | os.PathLike, required: Iterable[str] = ()) -> dict[str, np.ndarray]:
    """Load every array of an npz file, without pickle, checking that ``required`` names exist.

    Raises ``ValueError`` naming the file and the problem for a missing, unreadable, truncated or
    non-npz file, an object array, or a missing array.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    # np.load would read a bare .npy as an array and call any other file "pickled (object) data":
    # only a zip archive is an npz.
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a readable npz file (not a zip archive; truncated or another format)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
    except ValueError as e:  # object arrays need pickle
        raise ValueError(f"{path}: cannot read without pickle (object arrays are not allowed): {e}") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise ValueError(f"{path}: not a readable npz file ({type(e).__name__}: {e})") from None
    if not isinstance(arrays, dict):
        raise ValueError(f"{path}: not an npz archive")
    missing = [name for name in required if name not in arrays]
    if missing:
        raise ValueError(f"{path}: missing array(s) {missing}; found {sorted(arrays)}")
    return arrays


def require_int(name: str, value: Any, lo: int = 1) -> int:
    """``value`` if it is an integer ``>= lo`` (not a bool), else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        allowed = "a positive integer" if lo == 1 else f"an integer >= {lo}"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value


def require_float_array(name: str, value: Any, ndim: int | None = None) -> np.ndarray:
    """Check that ``value`` is a finite floating-point array (of rank ``ndim``); return it.

    ``TypeError`` for non-float dtypes (integers, objects, complex), ``ValueError`` for a wrong
    rank or a NaN/Inf entry. Messages name the argument.
    """
    arr = np.asarray(value) if not hasattr(value, "dtype") else value
    if not np.issubdtype(np.dtype(arr.dtype), np.floating):
        raise TypeError(f"{name} must be a floating-point array, got dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(arr.shape)}")
    if not bool(np.all(np.isfinite(np.asarray(arr)))):
        raise ValueError(f"{name} contains NaN or Inf")
    return arr


def to_jsonable(obj: Any) -> Any:
    """Convert numpy/jax scalars and arrays, tuples and dataclasses to JSON-ready values.

    Non-finite floats become the strings "nan", "inf", "-inf" so the file is strict JSON; the
    field beside them must say why they are there.
    """
    if hasattr(obj, "__dataclass_fields__"):
        return {k: to_jsonable(getattr(obj, k)) for k in obj.__dataclass_fields__}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and hasattr(obj, "dtype"):
        return to_jsonable(np.asarray(obj).tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return x
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented strict JSON, atomically."""
    text = json.dumps(to_jsonable(obj), indent=2, allow_nan=False)
    return atomic_write_bytes(path, (text + "\n").encode())


def load_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; ``ValueError`` naming the file if it is missing or not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON file ({e})") from None


def _git_revision() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if rev.returncode != 0:
        return "unknown"
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def provenance(seed: int | None = None) -> dict[str, Any]:
    """Seed, package versions, git revision, backend and devices: stored in every results file."""
    import jax

    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("jax", "jaxlib", "flax", "optax", "numpy", "matplotlib"):
        try:
            mod = __import__(pkg)
            versions[pkg] = getattr(mod, "__version__", "unknown")
        except ImportError:
            versions[pkg] = "not installed"
    return {
        "seed": seed,
        "versions": versions,
        "git_revision": _git_revision(),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "x64": bool(jax.config.jax_enable_x64),
    }
