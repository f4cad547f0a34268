"""Intervals over a few training seeds: mean, standard error and a Student-t interval.

With ``n`` seeds (3–5 here, one in the paper) the normal interval ``mean ± 1.96·s/√n`` is too
narrow; the t interval ``mean ± t_{(1+level)/2, n−1} · s/√n`` (``s``: sample std, ddof 1) is the
standard small-sample one for a mean of independent runs. The t quantile is computed from the
regularized incomplete beta function (``P(|T| > t) = I_{ν/(ν+t²)}(ν/2, 1/2)``) by bisection, so
no SciPy is needed.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from lintrans.io import require_int

__all__ = ["t_quantile", "SeedInterval", "seed_interval"]


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
    tail = 2 * (1 - p)  # two-sided tail probability at the quantile
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


class SeedInterval(NamedTuple):
    """``mean ± half_width`` (t interval at ``level``) and the standard error, over ``n`` seeds."""

    mean: np.ndarray
    se: np.ndarray
    half_width: np.ndarray
    n: int
    level: float

    @property
    def low(self) -> np.ndarray:
        return self.mean - self.half_width

    @property
    def high(self) -> np.ndarray:
        return self.mean + self.half_width

    def to_dict(self) -> dict:
        return {"mean": np.asarray(self.mean).tolist(), "se": np.asarray(self.se).tolist(),
                "low": np.asarray(self.low).tolist(), "high": np.asarray(self.high).tolist(),
                "n": self.n, "level": self.level}


def seed_interval(values, axis: int = 0, level: float = 0.95) -> SeedInterval:
    """Mean, s.e. and t interval of ``values`` along ``axis`` (the seed axis).

    ``n = 1`` gives ``se = half_width = NaN`` (no spread can be estimated; never reported as 0).
    Non-finite values are refused (``ValueError``), never averaged.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 0:
        raise ValueError("values must have a seed axis")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    bad = ~np.isfinite(v)
    if bad.any():
        raise ValueError(f"values contain {int(bad.sum())} NaN/Inf entries (first at {np.argwhere(bad)[0].tolist()})")
    n = v.shape[axis]
    mean = v.mean(axis=axis)
    if n < 2:
        nan = np.full_like(mean, np.nan)
        return SeedInterval(mean, nan, nan, int(n), level)
    se = v.std(axis=axis, ddof=1) / np.sqrt(n)
    return SeedInterval(mean, se, t_quantile(0.5 + level / 2, n - 1) * se, int(n), level)
