"""Intervals over a few training seeds — an alias of :mod:`lintrans.stats`, kept for existing callers.

The Student-t interval over seeds (``seed_interval`` = :func:`lintrans.stats.interval`), its result
type and the t quantile now live in :mod:`lintrans.stats`, the one statistics module (one rule for
``n < 2``: ``se = half_width = NaN``). New code imports :mod:`lintrans.stats`.
"""

from lintrans.stats import SeedInterval, seed_interval, t_quantile

__all__ = ["t_quantile", "SeedInterval", "seed_interval"]
