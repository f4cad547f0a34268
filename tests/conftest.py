"""Test-suite configuration: identities are checked in float64 (jax x64) throughout."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
