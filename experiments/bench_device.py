"""Benchmark section ``device``: a short, self-contained check for a machine with accelerators.

``python experiments/benchmark.py --device-check`` (``--small`` on a CPU) runs this section alone
and writes ``results/device_check.json``. It measures, on every device of the data mesh
(:mod:`lintrans.sharding`):

* the devices JAX sees and the backend;
* training throughput of the linear model (L = 4, d = 20, N = 40, float32: value-and-grad plus
  the Adam update, prompts sampled inside the step) at batch 256, 4096 and 65,536, the batch split
  over the mesh's ``data`` axis and the parameters replicated;
* the time of one jitted trajectory sweep (``ΔW_t, G_t, W_t`` and all states, L = 12, 4096
  prompts, float32);
* Theorem 1's identity errors T1–T4 (:mod:`lintrans.checks`) in float32 with
  full-precision products (the library always asks for ``Precision.HIGHEST``) and in float64.

Budget: under 3 minutes on one GPU at full size; under 2 minutes on a 2-core CPU with ``--small``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import _bench_util as bu
from lintrans.checks import identity_errors
from lintrans.params import init_params
from lintrans.sharding import make_mesh, replicate, shard_batch
from lintrans.tasks import random_prompts
from lintrans.train import TrainConfig, init_state, make_train_step, seed_keys
from lintrans.trajectory import trajectory

FULL = {"batches": (256, 4096, 65536), "sweep_prompts": 4096, "sweep_layers": 12, "check_prompts": 1024}
# Untimed calls after the compiling one, and timed calls at least: on the 2-core CPU, 1 untimed and
# 5 timed calls measured the batch-256 step at 40 steps/s, 3 and 10 at 96 (later calls run faster).
WARMUP = 3
MIN_REPEATS = 10
SMALL = {"batches": (64, 256, 1024), "sweep_prompts": 256, "sweep_layers": 4, "check_prompts": 64}


def memory(config) -> list[tuple[int, str, float]]:
    """The largest arrays (elements, what, how many at once), checked by the harness before the run."""
    sizes = SMALL if config.small else FULL
    b = max(sizes["batches"])
    return [(b * 21 * 41, f"a training batch of {b} prompts of 21×41", 4),
            (sizes["sweep_prompts"] * (sizes["sweep_layers"] + 1) * 21 * 41, "trajectory sweep states", 2)]


def _train_rows(sizes, config, mesh, progress) -> list[dict]:
    rows = []
    for batch in sizes["batches"]:
        progress.update(0, info=f"device: training step, batch {batch}")
        tc = TrainConfig(model="linear", n_layers=4, d_in=20, n_demos=40, batch_size=batch,
                         steps=10_000, warmup_steps=100, dtype="float32", seed=config.seed)
        state = init_state(tc)
        _, data_keys = seed_keys(tc)
        step_fn = make_train_step(tc, mesh=mesh)
        args = replicate((state.params, state.opt_state, data_keys, jnp.asarray(1, jnp.int32),
                          -jnp.ones((1, 2), jnp.int32)), mesh)
        timing = bu.time_jitted(step_fn, *args, repeats=max(config.repeats, MIN_REPEATS), warmup=WARMUP,
                                max_seconds=20.0)
        rows.append({
            "measurement": f"train step, batch {batch}",
            "steps_per_s": 1.0 / timing.median_s,
            "prompts_per_s": batch / timing.median_s,
            "median_ms": 1e3 * timing.median_s,
            "first_call_s": timing.first_call_s,
            "recompiled": timing.recompiled,
        })
    return rows


def run(config, progress) -> dict:
    sizes = SMALL if config.small else FULL
    mesh = make_mesh()
    devices = [str(d) for d in jax.devices()]
    rows = _train_rows(sizes, config, mesh, progress)

    progress.update(0, info="device: trajectory sweep")
    k_w, k_h = jax.random.split(jax.random.PRNGKey(config.seed))
    n, L = sizes["sweep_prompts"], sizes["sweep_layers"]
    params32 = init_params(k_w, L, 21, 0.05, jnp.float32)
    H32 = shard_batch(random_prompts(k_h, n, 40, 20, dtype=jnp.float32), mesh)
    sweep = jax.jit(jax.vmap(lambda h: trajectory(params32, h)))
    timing = bu.time_jitted(sweep, H32, repeats=max(config.repeats, MIN_REPEATS), warmup=WARMUP, max_seconds=20.0)
    rows.append({
        "measurement": f"trajectory sweep, L={L}, {n} prompts",
        "steps_per_s": None,
        "prompts_per_s": n / timing.median_s,
        "median_ms": 1e3 * timing.median_s,
        "first_call_s": timing.first_call_s,
        "recompiled": timing.recompiled,
    })

    progress.update(0, info="device: Theorem 1 identity errors")
    identity = {}
    m = sizes["check_prompts"]
    if not jax.config.jax_enable_x64:
        raise ValueError("the device check needs jax_enable_x64 for its float64 identity errors")
    for name, dtype in (("float32", jnp.float32), ("float64", jnp.float64)):
        params = init_params(k_w, L, 21, 0.05, jnp.float64)
        params = jax.tree_util.tree_map(lambda a: a.astype(dtype), params)
        H = shard_batch(random_prompts(k_h, m, 40, 20, dtype=jnp.float64).astype(dtype), mesh)
        errs, nonfinite_layer = jax.jit(jax.vmap(lambda h, p=params: identity_errors(p, h)))(H)
        errs = np.moveaxis(np.asarray(errs), 1, 0)  # (4, prompts, L)
        finite = np.asarray(nonfinite_layer) < 0
        identity[name] = {
            "max_rel_err": float(np.max(errs[:, finite])) if finite.any() else None,
            "median_rel_err": float(np.median(errs[:, finite])) if finite.any() else None,
            "nonfinite_prompts": int((~finite).sum()),
            "prompts": m,
            "layers": L,
        }
    return {
        "devices": devices,
        "backend": jax.default_backend(),
        "n_devices": len(devices),
        "rows": rows,
        "columns": ["measurement", "steps_per_s", "prompts_per_s", "median_ms", "first_call_s", "recompiled"],
        "identity_error": identity,
        "notes": (f"identity error (T1–T4, max over prompts and layers): float32 "
                  f"{identity['float32']['max_rel_err']}, float64 {identity['float64']['max_rel_err']}"),
    }
