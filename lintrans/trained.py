"""Trained runs as in-context scorers, for the pruning experiments (SPEC §6, §8; issue 5).

A run directory of :mod:`lintrans.checkpoint` (``config.json`` + ``ckpt_*.npz``, several seeds
trained at once) becomes a :class:`TrainedModel`: the parameters with their seed axis, the
training config, a per-prompt error ``score_fn(params, H, y_query) = (ŷ − y_query)² / d_in``
(SPEC §5) of ONE seed's parameters, and the module groups the model has (``attn`` for the
linear-attention stack; ``attn`` and ``mlp`` for the softmax transformer). ``score_fn`` is a
frozen dataclass, hashable by value, so jitted sweeps that take it as a static argument compile
once per model, not once per call.

:func:`ensure_run` gives a new user a model from one command: it trains a default configuration
with :func:`lintrans.train.train` into ``runs/NAME`` unless a complete run with the same config is
already there (then it is reused, so a second call costs nothing), resuming an interrupted one;
it holds the run's lock (:mod:`lintrans.lock`) from the check to the end of training, so two
processes never train one directory. Everything here takes plain arguments (run directories,
model names, :class:`~lintrans.train.TrainConfig` overrides); the command-line flags that choose
them belong to the scripts' harness.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lintrans import models
from lintrans.checkpoint import CONFIG_FILE, list_checkpoints, load_run, read_run_config
from lintrans.io import to_jsonable
from lintrans.lock import run_lock
from lintrans.tasks import sample_linear
from lintrans.train import TrainConfig, config_from_dict, config_to_dict, train
from lintrans.train_config import DRAWS_VERSION

__all__ = [
    "MODEL_GROUPS",
    "DEFAULT_RUNS",
    "default_run_overrides",
    "models_for",
    "parse_models",
    "QueryError",
    "PromptSampler",
    "TrainedModel",
    "load_trained",
    "default_config",
    "run_name",
    "ensure_run",
    "default_models",
    "resolve_models",
]

#: Module groups each registered model has (SPEC §6; :mod:`lintrans.models`): the linear-attention
#: stack has no MLP.
MODEL_GROUPS = {name: m.groups for name, m in models.REGISTRY.items()}

#: The small default runs the pruning experiments train when no checkpoint is given, sized so
#: that experiments/reproduce_all.py stays under 15 minutes on a 2-core CPU. Everything else is
#: TrainConfig's default.
DEFAULT_RUNS: dict[str, dict[str, Any]] = {
    # d = 5, N = 4d: least squares is exact; 4 layers give a shallow/deep contrast. ~1 CPU-minute.
    "linear": dict(model="linear", d_in=5, n_demos=20, n_layers=4, steps=2000, batch_size=128, lr=1e-2,
                   seeds=4, checkpoint_every=500, log_every=100),
    # Garg-style GPT-2 at toy width; N = 2d keeps the 2N+1-token sequence short. ~0.24 CPU-s per
    # step for 3 seeds. A scan on a GPU (d = 5, N = 10, L = 4, 2-3 seeds per setting) found batch 128
    # and 4 heads the only setting that left the zero-estimator plateau within a few thousand
    # steps, and even then erratically: query errors 0.41-0.72 after 2000 steps, 0.17-0.67 after
    # 3000, 0.03-0.13 after 8000 (averaging 0.59, optimal one-step GD 0.38). On the CPU, 2000 steps
    # gave 0.28, 0.74, 0.75 and 3000 steps 0.33, 0.72, 0.68; 1500 steps is what the 15-minute budget
    # of reproduce_all allows. --softmax-steps 3000 (or more, on a GPU) gives a better learner.
    "softmax": dict(model="softmax", d_in=5, n_demos=10, n_layers=4, width=32, n_heads=4, mlp_width=128,
                    steps=1500, batch_size=128, lr=1e-3, seeds=3, checkpoint_every=500, log_every=100),
}


@dataclasses.dataclass(frozen=True)
class QueryError:
    """Per-prompt ICL error ``(ŷ − y)² / d_in`` of one seed's parameters on one prompt ``H (D, N'+1)``.

    The registered model's ``predict_query`` (:mod:`lintrans.models`). Linear model:
    :func:`lintrans.attention.predict` with the run's mask, scale and readout (the scale ``1/N'``
    follows the prompt's own ``N'``). Softmax model: the query's prediction after ``N' ≤ N`` pairs
    (:func:`lintrans.transformer.softmax_predict`).
    """

    config: TrainConfig

    def __call__(self, params, H: jax.Array, y: jax.Array) -> jax.Array:
        c = self.config
        y_hat = models.get(c.model).predict_query(c, params, H)
        return (y_hat - y) ** 2 / c.d_in


@dataclasses.dataclass(frozen=True)
class PromptSampler:
    """``(key, n) -> (H (n, D, N'+1), y_query (n,))``: fresh prompts of the run's task.

    Same task as training (``linear``, the run's ``noise_std``, isotropic inputs); ``n_demos`` is
    ``N'`` (the shot count), by default the run's ``N``.
    """

    config: TrainConfig
    n_demos: int | None = None

    def __call__(self, key: jax.Array, n: int):
        c = self.config
        batch = sample_linear(key, n, self.n_demos or c.n_demos, c.d_in, noise_std=c.noise_std, dtype=c.jnp_dtype)
        return batch.H, batch.y_query


class TrainedModel(NamedTuple):
    """A loaded run.

    Attributes:
      run_dir: where it came from; ``step``: the checkpoint's step.
      config: the :class:`~lintrans.train.TrainConfig`.
      params: parameters with a leading seed axis ``S`` (``LinearAttentionParams`` or ``SoftmaxParams``).
      score_fn: :class:`QueryError` of the run.
      groups: the module groups the model has (:data:`MODEL_GROUPS`).
    """

    run_dir: Path
    step: int
    config: TrainConfig
    params: Any
    score_fn: QueryError
    groups: tuple[str, ...]

    @property
    def model(self) -> str:
        return self.config.model

    @property
    def n_seeds(self) -> int:
        return self.config.seeds

    def seed_params(self, i: int):
        """Parameters of seed index ``i`` (no seed axis)."""
        return jax.tree_util.tree_map(lambda x: x[i], self.params)

    def sampler(self, n_demos: int | None = None) -> PromptSampler:
        """Prompts of the run's task with ``n_demos`` demonstrations (default: the run's ``N``)."""
        c = self.config
        if n_demos is not None:
            if isinstance(n_demos, bool) or not isinstance(n_demos, int) or n_demos < 1:
                raise ValueError(f"shot count must be a positive integer, got {n_demos!r}")
            if models.get(c.model).context_limited and n_demos > c.n_demos:
                raise ValueError(
                    f"shot count {n_demos} exceeds the {c.model} model's context of {c.n_demos} demonstrations ({self.run_dir})"
                )
        return PromptSampler(c, n_demos)

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary: where the run is, its step and its training config."""
        return {"run_dir": str(self.run_dir), "step": int(self.step), "model": self.model,
                "train_config": config_to_dict(self.config)}


def load_trained(run_dir, model: str | None = None, step: int | None = None) -> TrainedModel:
    """Load every seed of a run; ``model`` (``"linear"``/``"softmax"``), when given, must match.

    ``ValueError`` naming the directory for a missing or invalid run, or a run of the other model.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir}: no such run directory (train one with experiments/train_icl.py)")
    if model is not None and model not in MODEL_GROUPS:
        raise ValueError(f"model must be one of {tuple(MODEL_GROUPS)}, got {model!r}")
    cfg_dict = read_run_config(run_dir)
    if model is not None and cfg_dict.get("model") != model:
        raise ValueError(f"{run_dir} holds a {cfg_dict.get('model')!r} model; a {model!r} run is needed here")
    params, cfg_dict, step = load_run(run_dir, step)
    config = config_from_dict(cfg_dict)
    if config.dtype == "float64" and not jax.config.jax_enable_x64:
        raise ValueError(f"{run_dir} was trained in float64; enable jax_enable_x64 to load it")
    params = jax.tree_util.tree_map(jnp.asarray, params)
    return TrainedModel(run_dir, int(step), config, params, QueryError(config), MODEL_GROUPS[config.model])


def default_config(model: str, **overrides) -> TrainConfig:
    """:data:`DEFAULT_RUNS` ``[model]`` with ``overrides`` (``None`` values ignored) as a TrainConfig."""
    if model not in DEFAULT_RUNS:
        raise ValueError(f"model must be one of {tuple(DEFAULT_RUNS)}, got {model!r}")
    kw = dict(DEFAULT_RUNS[model])
    kw.update({k: v for k, v in overrides.items() if v is not None})
    if kw["model"] != model:
        raise ValueError(f"overrides cannot change the model ({model!r} → {kw['model']!r})")
    for every in ("checkpoint_every", "log_every"):
        kw[every] = min(kw[every], kw["steps"])
    kw["warmup_steps"] = min(kw.get("warmup_steps", TrainConfig.warmup_steps), kw["steps"])
    return TrainConfig(**kw)


def run_name(config: TrainConfig) -> str:
    """A directory name: the main settings, readable, and a hash of the whole config and of
    :data:`~lintrans.train_config.DRAWS_VERSION`, so two different configs, or one config drawn by two
    versions of the samplers, never share a directory."""
    name = f"{config.model}_L{config.n_layers}_d{config.d_in}_N{config.n_demos}"
    if models.get(config.model).uses_width:
        name += f"_w{config.width}"
    key = json.dumps(to_jsonable(config_to_dict(config)), sort_keys=True) + f"|draws={DRAWS_VERSION}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    return name + f"_steps{config.steps}_seeds{config.seeds}_{digest}"


def ensure_run(config: TrainConfig, run_dir, *, quiet: bool = False) -> tuple[Path, bool]:
    """Train ``config`` into ``run_dir`` unless a finished run of the same config is there.

    Returns ``(run_dir, trained)``; ``trained`` is false when an existing run was reused. An
    interrupted run of the same config is resumed; a run of a different config is refused
    (``ValueError`` naming the differing keys), never overwritten.
    """
    run_dir = Path(run_dir)
    with run_lock(run_dir):  # RunInUseError (a ValueError) if another process holds it
        if (run_dir / CONFIG_FILE).exists():
            have = read_run_config(run_dir)
            want = json.loads(json.dumps(to_jsonable(config_to_dict(config))))
            if have == want and config.steps in list_checkpoints(run_dir):
                return run_dir, False
        train(config, run_dir, resume=True, quiet=quiet)
    return run_dir, True


def default_models(models, runs_dir, *, overrides=None, quiet: bool = False) -> list[TrainedModel]:
    """Train (or reuse) the default run of each model in ``runs_dir`` and load it.

    ``overrides``: ``{model: {TrainConfig field: value}}`` applied to :data:`DEFAULT_RUNS`.
    """
    out = []
    for model in models:
        config = default_config(model, **(overrides or {}).get(model, {}))
        run_dir, trained = ensure_run(config, Path(runs_dir) / run_name(config), quiet=quiet)
        if not quiet:
            print(f"{'trained' if trained else 'reusing'} {model} run {run_dir}", file=sys.stderr)
        out.append(load_trained(run_dir, model))
    return out


def resolve_models(checkpoints, models, runs_dir, *, overrides=None, model_filter: str | None = None,
                   quiet: bool = False) -> list[TrainedModel]:
    """The models an experiment runs on: the given run directories (each checked to be a
    ``model_filter`` run when that is set), or else the default runs of ``models``.

    At most one run per model (``ValueError`` otherwise), so results can be keyed by model.
    """
    if checkpoints:
        out = [load_trained(Path(c), model_filter) for c in checkpoints]
    else:
        out = default_models([model_filter] if model_filter else models, runs_dir, overrides=overrides, quiet=quiet)
    names = [m.model for m in out]
    if len(set(names)) != len(names):
        raise ValueError(f"give at most one checkpoint per model; got models {names}")
    return out


def default_run_overrides(*, train_seeds=None, layers=None, linear_steps=None, softmax_steps=None,
                          softmax_width=None) -> dict[str, dict[str, Any]]:
    """``overrides`` for :func:`default_models` from an experiment's flags (``None``: the default).

    The softmax MLP is 4× the width, as in :data:`DEFAULT_RUNS`.
    """
    common = {"seeds": train_seeds, "n_layers": layers}
    return {
        "linear": dict(common, steps=linear_steps),
        "softmax": dict(common, steps=softmax_steps, width=softmax_width,
                        mlp_width=None if softmax_width is None else 4 * softmax_width),
    }


def models_for(checkpoints, models_wanted, runs_dir, *, train_seeds=None, layers=None, linear_steps=None,
               softmax_steps=None, softmax_width=None, model_filter: str | None = None,
               quiet: bool = False) -> list[TrainedModel]:
    """:func:`resolve_models` with the default-run overrides of :func:`default_run_overrides`, from plain values.

    ``runs_dir`` is used as given (the caller resolves a relative one, e.g. against the repository root).
    """
    overrides = default_run_overrides(train_seeds=train_seeds, layers=layers, linear_steps=linear_steps,
                                      softmax_steps=softmax_steps, softmax_width=softmax_width)
    return resolve_models(checkpoints, models_wanted, Path(runs_dir), overrides=overrides,
                          model_filter=model_filter, quiet=quiet)


def parse_models(text: str) -> tuple[str, ...]:
    """``--models`` (``"linear,softmax"``) as a tuple; ``ValueError`` naming the flag otherwise."""
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    if not names or any(m not in MODEL_GROUPS for m in names):
        raise ValueError(f"--models must list some of {tuple(MODEL_GROUPS)}, got {text!r}")
    return names
