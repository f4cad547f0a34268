"""Train → test shifts of the regression task: a small grammar of named, validated, combinable options (issue 13).

A model is trained on prompts of :class:`lintrans.tasks.LinearTask` ``(d_in, N, σ_train)`` with
isotropic inputs and dense tasks; a :class:`Shift` says how the *test* prompts differ. Options
(each optional; a shift with none is the in-distribution control)::

    shots=N'        shot count N' of the test prompts: an integer, or a multiple of the training N
                    written N/8, N/4, N/2, N, 3N/2, 2N (rounded up); allowed N/8 ≤ N' ≤ 2N
    noise=σ         label noise of the test prompts (replaces the training σ), 0 ≤ σ ≤ 10
    x_scale=c       inputs x = c·Σ^{1/2} z, 0 < c ≤ 10
    spectrum=HI:LO  anisotropic inputs: the eigenvalues of Σ decay geometrically from HI to LO over the
                    d_in coordinates (HI ≥ LO > 0, both ≤ 100; e.g. spectrum=2:1/8)
    sparsity=k      k-sparse task vectors (k of the d_in coordinates kept), 1 ≤ k ≤ d_in

Spelling: ``key=value`` pairs joined by commas (``"noise=1,shots=10"``); ``"none"`` (or an empty
string) is the control. Numbers may be written as fractions (``1/8``). An unknown key, a repeated
key or a value outside its range is a ``ValueError`` naming the key and what is allowed; the
ranges that depend on the model (``shots``, ``sparsity``) are checked by :meth:`Shift.task`.

The shifted test distribution of a model trained at ``(d_in, N, σ_train)`` is ``shift.task(d_in, N,
σ_train)``; :func:`sample_shifted` draws from it (a JAX key first).
"""

from __future__ import annotations

import dataclasses
import math
import re
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np

from lintrans.tasks import LinearTask, RegressionBatch

__all__ = ["KEYS", "Shift", "parse_shift", "parse_shifts", "DEFAULT_SHIFTS", "spectrum_cov_sqrt", "sample_shifted"]

#: The grammar's keys, in the order a shift is spelled.
KEYS = ("shots", "noise", "x_scale", "spectrum", "sparsity")
_ALLOWED = {
    "shots": "an integer N' or a multiple of the training N (N/8, N/4, N/2, N, 3N/2, 2N), with N/8 <= N' <= 2N",
    "noise": "a label-noise std 0 <= sigma <= 10",
    "x_scale": "an input scale 0 < c <= 10",
    "spectrum": "HI:LO, the eigenvalues of the input covariance decaying geometrically from HI to LO, 100 >= HI >= LO > 0",
    "sparsity": "an integer 1 <= k <= d_in",
}
_RELATIVE = re.compile(r"^(\d+)?N(?:/(\d+))?$")

#: The default grid of :mod:`experiments.pruning_under_shift`: the control, fewer and more shots,
#: label noise (alone and with few shots), larger inputs, a decaying input spectrum, sparse tasks.
DEFAULT_SHIFTS = ("none", "shots=N/4", "shots=N/2", "shots=2N", "noise=1", "noise=1,shots=N/4", "x_scale=2",
                  "spectrum=2:1/8", "sparsity=2")


def _number(key: str, text: str) -> float:
    try:
        v = float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"shift {key}={text!r}: not a number; {key} must be {_ALLOWED[key]}") from None
    if not math.isfinite(v):
        raise ValueError(f"shift {key}={text!r}: not finite; {key} must be {_ALLOWED[key]}")
    return v


def _bad(key: str, text) -> ValueError:
    return ValueError(f"shift {key}={text}: out of range; {key} must be {_ALLOWED[key]}")


@dataclasses.dataclass(frozen=True)
class Shift:
    """A test distribution relative to the training one. Every field ``None`` means "as in training".

    Attributes:
      shots: ``int`` N', or ``(num, den)`` for N' = ⌈N·num/den⌉ (spelled ``N/4``, ``2N``, …).
      noise: label-noise std σ of the test prompts.
      x_scale: input scale c.
      spectrum: ``(HI, LO)`` eigenvalue range of the input covariance Σ.
      sparsity: k non-zero task coordinates.
    """

    shots: int | tuple[int, int] | None = None
    noise: float | None = None
    x_scale: float | None = None
    spectrum: tuple[float, float] | None = None
    sparsity: int | None = None

    def __post_init__(self):
        s = self.shots
        if s is not None:
            if isinstance(s, tuple):
                if len(s) != 2 or not all(isinstance(v, int) and v >= 1 for v in s) or Fraction(*s) > 2 or Fraction(*s) < Fraction(1, 8):
                    raise _bad("shots", f"{s[0]}N/{s[1]}" if len(s) == 2 else s)
            elif isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1:
                raise _bad("shots", s)
        if self.noise is not None and not (0 <= self.noise <= 10):
            raise _bad("noise", self.noise)
        if self.x_scale is not None and not (0 < self.x_scale <= 10):
            raise _bad("x_scale", self.x_scale)
        if self.spectrum is not None:
            hi, lo = self.spectrum
            if not (100 >= hi >= lo > 0):
                raise _bad("spectrum", f"{hi:g}:{lo:g}")
        if self.sparsity is not None and (isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, np.integer)) or self.sparsity < 1):
            raise _bad("sparsity", self.sparsity)

    # ---------------------------------------------------------------- spelling
    @property
    def is_control(self) -> bool:
        return all(getattr(self, k) is None for k in KEYS)

    def label(self) -> str:
        """The canonical spelling (``"none"`` for the control); ``parse_shift(s.label()) == s``."""
        parts = []
        for k in KEYS:
            v = getattr(self, k)
            if v is None:
                continue
            if k == "shots" and isinstance(v, tuple):
                num, den = v
                v = ("" if num == 1 else str(num)) + "N" + ("" if den == 1 else f"/{den}")
            elif k == "spectrum":
                v = f"{_fmt(v[0])}:{_fmt(v[1])}"
            elif isinstance(v, float):
                v = _fmt(v)
            parts.append(f"{k}={v}")
        return ",".join(parts) or "none"

    # ---------------------------------------------------------------- resolution for one model
    def n_demos(self, n_train: int) -> int:
        """N' for a model trained at ``N = n_train``; ``ValueError`` outside N/8 … 2N."""
        if self.shots is None:
            return int(n_train)
        n = math.ceil(Fraction(n_train) * Fraction(*self.shots)) if isinstance(self.shots, tuple) else int(self.shots)
        if not (Fraction(n_train, 8) <= n <= 2 * n_train):
            raise ValueError(f"shift shots={n}: out of range for a model trained at N = {n_train}; "
                             f"shots must be {_ALLOWED['shots']} (here {math.ceil(n_train / 8)}..{2 * n_train})")
        return n

    def resolved(self, d_in: int, n_train: int, noise_train: float = 0.0) -> dict:
        """The shift as plain numbers for one model: ``{"shots": N', ...}`` (only the keys it sets)."""
        self.task(d_in, n_train, noise_train)  # validates
        out = {}
        for k in KEYS:
            v = getattr(self, k)
            if v is None:
                continue
            out[k] = self.n_demos(n_train) if k == "shots" else (list(v) if k == "spectrum" else v)
        return out

    def task(self, d_in: int, n_train: int, noise_train: float = 0.0) -> LinearTask:
        """The shifted test task of a model trained at ``(d_in, N, σ_train)`` (isotropic, dense)."""
        if self.sparsity is not None and self.sparsity > d_in:
            raise ValueError(f"shift sparsity={self.sparsity}: out of range for d_in = {d_in}; sparsity must be {_ALLOWED['sparsity']}")
        cov = None
        if self.spectrum is not None or self.x_scale is not None:
            c = spectrum_cov_sqrt(d_in, *(self.spectrum or (1.0, 1.0))) * (self.x_scale or 1.0)
            cov = tuple(tuple(float(x) for x in row) for row in c)
        noise = float(noise_train) if self.noise is None else float(self.noise)
        return LinearTask(d_in=int(d_in), n_demos=self.n_demos(n_train), noise_std=noise, sparsity=self.sparsity,
                          cov_sqrt=cov)


def _fmt(v: float) -> str:
    f = Fraction(v).limit_denominator(1000)
    if float(f) == v and f.denominator != 1 and f.denominator <= 64:
        return f"{f.numerator}/{f.denominator}"
    return f"{v:g}"


def spectrum_cov_sqrt(d_in: int, hi: float, lo: float) -> np.ndarray:
    """``Σ^{1/2} = diag(λ_i^{1/2})`` with ``λ_i = HI·(LO/HI)^{i/(d−1)}``, ``i = 0..d−1`` (``λ = HI`` when ``d = 1``)."""
    i = np.arange(d_in, dtype=np.float64)
    lam = hi * (lo / hi) ** (i / max(d_in - 1, 1))
    return np.diag(np.sqrt(lam))


def parse_shift(text: str) -> Shift:
    """``"noise=1,shots=10"`` → :class:`Shift`; ``"none"``/``""`` → the control. ``ValueError`` names the key."""
    if not isinstance(text, str):
        raise TypeError(f"a shift must be a string such as 'noise=1,shots=10', got {type(text).__name__}")
    text = text.strip()
    if text in ("", "none", "id"):
        return Shift()
    kw = {}
    for part in text.split(","):
        if "=" not in part:
            raise ValueError(f"shift {text!r}: {part.strip()!r} is not key=value; keys: {', '.join(KEYS)} (or 'none')")
        key, value = (s.strip() for s in part.split("=", 1))
        if key not in KEYS:
            raise ValueError(f"shift {text!r}: unknown key {key!r}; allowed keys: {', '.join(KEYS)} (or 'none' for the control)")
        if key in kw:
            raise ValueError(f"shift {text!r}: key {key!r} given twice")
        kw[key] = _parse_value(key, value)
    return Shift(**kw)


def _parse_value(key: str, value: str):
    if key == "shots":
        m = _RELATIVE.match(value.replace(" ", ""))
        if m:
            return (int(m.group(1) or 1), int(m.group(2) or 1))
        v = _number(key, value)
        if v != int(v):
            raise ValueError(f"shift shots={value!r}: not an integer; shots must be {_ALLOWED['shots']}")
        return int(v)
    if key == "sparsity":
        v = _number(key, value)
        if v != int(v):
            raise ValueError(f"shift sparsity={value!r}: not an integer; sparsity must be {_ALLOWED['sparsity']}")
        return int(v)
    if key == "spectrum":
        if value.count(":") != 1:
            raise ValueError(f"shift spectrum={value!r}: spectrum must be {_ALLOWED['spectrum']}")
        hi, lo = (_number(key, v) for v in value.split(":"))
        return (hi, lo)
    return _number(key, value)


def parse_shifts(texts) -> tuple[Shift, ...]:
    """Several spellings → distinct shifts in the given order (``ValueError`` for a repeat)."""
    out = tuple(parse_shift(t) for t in texts)
    labels = [s.label() for s in out]
    if len(set(labels)) != len(labels):
        raise ValueError(f"shifts must not repeat, got {labels}")
    if not out:
        raise ValueError("give at least one shift")
    return out


def sample_shifted(key: jax.Array, shift: Shift, n_prompts: int, *, d_in: int, n_train: int,
                   noise_train: float = 0.0, dtype=jnp.float32) -> RegressionBatch:
    """``n_prompts`` test prompts of a model trained at ``(d_in, N, σ_train)`` under ``shift``."""
    return shift.task(d_in, n_train, noise_train).sample(key, n_prompts, dtype=dtype)
