"""Intervals and verdicts: the one place where lintrans decides what a spread of numbers supports.

* Over a few **seeds** (3–5 here, one in the paper) the normal interval ``mean ± 1.96·s/√n`` is
  too narrow; :func:`interval` gives the small-sample Student-t interval
  ``mean ± t_{(1+level)/2, n−1} · s/√n`` (``s``: sample std, ddof 1). The t quantile comes from the
  regularized incomplete beta function (``P(|T| > t) = I_{ν/(ν+t²)}(ν/2, 1/2)``) by bisection, so no
  SciPy is needed.
* Over many **prompts** (hundreds to thousands), :func:`prompt_interval` gives the normal interval
  ``mean ± z·s/√n``.
* **One rule for n < 2**: no spread can be estimated, so ``se = half_width = NaN`` (never 0) and
  no verdict is ever drawn from it (:func:`verdict` says "inconclusive: one sample").
* Non-finite values are refused (``ValueError`` naming how many and where), never averaged.
* :func:`spearman` and :func:`spearman_interval` (percentile bootstrap over pairs, key first) for
  rank correlations.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from lintrans.io import require_int

__all__ = ["t_quantile", "z_quantile", "Interval", "interval", "prompt_interval", "excludes_zero", "verdict",
           "spearman", "spearman_interval", "SeedInterval", "seed_interval"]


def _t_two_sided_tail(t: float, dof: int) -> float:
    from jax.scipy.special import betainc

    x = dof / (dof + t * t)
    return float(betainc(0.5 * dof, 0.5, x))


def t_quantile(p: float, dof: int) -> float:
    """The ``p``-quantile of Student's t with ``dof`` degrees of freedom, for ``0.5 ≤ p < 1``.

    Bisection to 1e-6 relative (the betainc evaluation, float32 when x64 is off, limits it).
    """
    if not 0.5 <= p < 1:
        raise ValueError(f"p must lie in [0.5, 1), got {p!r}")
    require_int("dof", dof)
    if p == 0.5:
        return 0.0
    tail = 2 * (1 - p)
    lo, hi = 0.0, 1.0
    while _t_two_sided_tail(hi, dof) > tail:
        hi *= 2
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if _t_two_sided_tail(mid, dof) > tail:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-7 * hi:
            break
    return 0.5 * (lo + hi)


def z_quantile(p: float) -> float:
    """The ``p``-quantile of the standard normal, ``0.5 ≤ p < 1`` (bisection on ``erf``, 1e-12)."""
    if not 0.5 <= p < 1:
        raise ValueError(f"p must lie in [0.5, 1), got {p!r}")
    lo, hi = 0.0, 40.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


class Interval(NamedTuple):
    """``mean ± half_width`` at ``level`` and the standard error, over ``n`` samples (``kind``: t or normal)."""

    mean: np.ndarray
    se: np.ndarray
    half_width: np.ndarray
    n: int
    level: float
    kind: str = "t"

    @property
    def low(self) -> np.ndarray:
        return self.mean - self.half_width

    @property
    def high(self) -> np.ndarray:
        return self.mean + self.half_width

    def to_dict(self) -> dict:
        return {"mean": np.asarray(self.mean).tolist(), "se": np.asarray(self.se).tolist(),
                "low": np.asarray(self.low).tolist(), "high": np.asarray(self.high).tolist(),
                "n": self.n, "level": self.level, "kind": self.kind}


def _values(values, axis: int, level: float) -> tuple[np.ndarray, int]:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 0:
        raise ValueError("values must have a sample axis")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    bad = ~np.isfinite(v)
    if bad.any():
        raise ValueError(f"values contain {int(bad.sum())} NaN/Inf entries (first at {np.argwhere(bad)[0].tolist()})")
    return v, int(v.shape[axis])


def interval(values, axis: int = 0, level: float = 0.95) -> Interval:
    """Mean, s.e. and Student-t interval of ``values`` along ``axis`` (e.g. the seed axis)."""
    v, n = _values(values, axis, level)
    mean = v.mean(axis=axis)
    if n < 2:
        nan = np.full_like(mean, np.nan)
        return Interval(mean, nan, nan, n, level, "t")
    se = v.std(axis=axis, ddof=1) / np.sqrt(n)
    return Interval(mean, se, t_quantile(0.5 + level / 2, n - 1) * se, n, level, "t")


def prompt_interval(values, axis: int = -1, level: float = 0.95) -> Interval:
    """Mean, s.e. and normal interval along ``axis`` (many prompts: the t and normal quantiles agree)."""
    v, n = _values(values, axis, level)
    mean = v.mean(axis=axis)
    if n < 2:
        nan = np.full_like(mean, np.nan)
        return Interval(mean, nan, nan, n, level, "normal")
    se = v.std(axis=axis, ddof=1) / np.sqrt(n)
    return Interval(mean, se, z_quantile(0.5 + level / 2) * se, n, level, "normal")


def excludes_zero(iv: Interval) -> np.ndarray:
    """``True`` where the interval lies strictly on one side of 0 (``False`` where it is NaN)."""
    low, high = np.asarray(iv.low), np.asarray(iv.high)
    with np.errstate(invalid="ignore"):
        return (low > 0) | (high < 0)


def verdict(iv: Interval, *, positive: str, negative: str, what: str = "the interval") -> str:
    """A sentence for a scalar interval: ``positive`` if it lies above 0, ``negative`` if below,
    else ``"inconclusive: …"`` saying why (one sample, or the interval contains 0)."""
    mean, low, high = (float(np.asarray(x).reshape(())) for x in (iv.mean, iv.low, iv.high))
    pct = f"{100 * iv.level:.0f} %"
    if iv.n < 2:
        return f"inconclusive: {what} rests on n = {iv.n} sample; no spread can be estimated"
    rng = f"{mean:.3g} [{low:.3g}, {high:.3g}], {pct} interval over n = {iv.n}"
    if low > 0:
        return f"{positive} ({rng})"
    if high < 0:
        return f"{negative} ({rng})"
    return f"inconclusive: {what} contains 0 ({rng})"


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their ranks) along the last axis."""
    if x.ndim > 1:
        return np.stack([_ranks(row) for row in x.reshape(-1, x.shape[-1])]).reshape(x.shape)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(x.shape, dtype=np.float64)
    ranks[order] = np.arange(x.size, dtype=np.float64)
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    if np.any(counts > 1):
        ranks = (np.bincount(inv, weights=ranks) / counts)[inv]
    return ranks


def spearman(x, y) -> float:
    """Spearman's rank correlation of two 1-D samples (average ranks for ties); NaN if either is constant."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of one length, got {x.shape} and {y.shape}")
    if x.size < 2 or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("spearman needs ≥ 2 finite pairs")
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float(rx @ rx) * float(ry @ ry))
    return float(rx @ ry) / den if den > 0 else float("nan")


def spearman_interval(key, x, y, n_boot: int = 1000, level: float = 0.95) -> dict:
    """Spearman's ρ with a percentile-bootstrap interval over pairs (``key``: a JAX key, first).

    Returns ``{"rho", "low", "high", "n", "n_boot", "level"}``; resamples in which one side is
    constant are dropped (their ρ is undefined) and counted in ``"dropped"``.
    """
    import jax

    require_int("n_boot", n_boot)
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    rho = spearman(x, y)
    n = x.size
    idx = np.asarray(jax.random.randint(key, (n_boot, n), 0, n))
    rx, ry = _ranks(x[idx]), _ranks(y[idx])
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    den = np.sqrt(np.sum(rx * rx, 1) * np.sum(ry * ry, 1))
    ok = den > 0
    boots = np.sum(rx * ry, 1)[ok] / den[ok]
    lo, hi = (np.quantile(boots, [(1 - level) / 2, (1 + level) / 2]) if boots.size else (np.nan, np.nan))
    return {"rho": rho, "low": float(lo), "high": float(hi), "n": int(n), "n_boot": int(n_boot),
            "dropped": int((~ok).sum()), "level": level}


# The seed-interval names kept for existing callers.
SeedInterval = Interval
seed_interval = interval
