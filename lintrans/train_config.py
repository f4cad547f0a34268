"""Training configuration: :class:`TrainConfig`, :class:`Curriculum`, and their JSON form (issue 3).

Split from :mod:`lintrans.train` (which re-exports every name here): what determines a run, how it
is validated, and how it round-trips through ``config.json``. See :mod:`lintrans.train` for what
each option does during training.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp
import numpy as np

from lintrans import attention, models
from lintrans.gram_sampler import SUM_MAX_DOF
from lintrans.io import require_int
from lintrans.models.softmax import softmax_config
from lintrans.transformer import SoftmaxConfig

__all__ = ["MODELS", "DTYPES", "PATHS", "SAMPLERS", "Curriculum", "TrainConfig", "config_to_dict",
           "config_from_dict", "softmax_config", "seed_values", "sampler_blocks", "resolve_sampler"]

#: The registered model names (:mod:`lintrans.models`).
MODELS = models.MODELS
DTYPES = {"float32": jnp.float32, "float64": jnp.float64}
#: Forward paths of the linear model: ``"batched"`` (:func:`linear_predict_batch`, the training
#: default), ``"gram"`` (:func:`lintrans.attention.predict` vmapped) and ``"tokens"`` (the
#: token-by-token reference :func:`lintrans.attention.predict_tokens`). Same function, tested.
PATHS = ("batched", "gram", "tokens")
#: How training prompts are drawn (``TrainConfig.sampler``): as tokens, as their Gram matrix, or
#: ``"auto"``: whichever needs fewer random bits (:func:`resolve_sampler`).
SAMPLERS = ("auto", "tokens", "wishart")
#: The version of the draws a config gives (same law, other numbers when it changes). Part of a
#: trained run's folder name (:func:`lintrans.trained.run_name`), so that a run trained on earlier
#: draws is never reused as if this code had drawn it. 2: noiseless Wishart draws from the inputs'
#: d × d Bartlett factor (issue 14); 3: small static chi degrees of freedom drawn by sums
#: (:func:`lintrans.gram_sampler.chi_by_sums`, issue 14).
DRAWS_VERSION = 3


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


def _finite(name: str, v, lo: float | None = None, strict: bool = False) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {v!r}")
    if lo is not None and (v <= lo if strict else v < lo):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {lo}, got {v!r}")


@dataclasses.dataclass(frozen=True)
class Curriculum:
    """Garg et al.'s curriculum: input dimension and demonstration count grow in stages.

    At step ``t`` (1-based): ``d = min(d_in, d_start + d_step·⌊(t−1)/every⌋)``,
    ``n = min(N, n_start + n_step·⌊(t−1)/every⌋)``. Garg et al. (d = 20): ``d_start = 5,
    d_step = 1, n_start = 10, n_step = 2, every = 2000`` (their "points" are ``n + 1``).
    """

    d_start: int
    d_step: int
    n_start: int
    n_step: int
    every: int

    def __post_init__(self):
        require_int("curriculum.d_start", self.d_start)
        require_int("curriculum.d_step", self.d_step, 0)
        require_int("curriculum.n_start", self.n_start)
        require_int("curriculum.n_step", self.n_step, 0)
        require_int("curriculum.every", self.every)

    def active(self, step, d_in: int, n_demos: int):
        """``(d_active, n_active)`` at ``step`` (works on a traced step)."""
        stage = (step - 1) // self.every
        return (jnp.minimum(d_in, self.d_start + self.d_step * stage),
                jnp.minimum(n_demos, self.n_start + self.n_step * stage))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (stored as ``config.json``).

    Model and task:
      model: a registered model name (:data:`MODELS`: ``"linear"``, ``"softmax"``, …; :mod:`lintrans.models`).
      d_in, n_demos, n_layers: ``d``, ``N`` (demonstrations per prompt), ``L``.
      mask, scale, readout: linear-model options (:mod:`lintrans.attention`).
      init_std: linear model, std of the i.i.d. Gaussian initial weights.
      width, n_heads, mlp_width: softmax model (:class:`lintrans.transformer.SoftmaxConfig`).
      noise_std: label noise ``σ``.
      k_min: models whose loss scores the query (linear); ``None`` trains at ``k = N`` only, an integer ``1..N`` draws
        ``k ~ Uniform{k_min..N}`` per prompt (zeroed demonstrations, see the module docstring).
      curriculum: ``None`` or a :class:`Curriculum`.
      sampler: how training prompts are drawn. ``"tokens"``: the demonstrations themselves
        (:func:`lintrans.tasks.sample_linear_split`), ``O(N·d)`` per prompt. ``"wishart"`` (linear model,
        ``mask="demos"``): only their Gram matrix, exactly in law and in ``O(d²)`` whatever N
        (:mod:`lintrans.gram_sampler`); different draws from ``"tokens"``, and only the
        ``"batched"`` path can read it. ``"auto"`` (the default): ``"wishart"`` where the model and path
        can read it and it needs fewer random-bit blocks than ``"tokens"``, else ``"tokens"``
        (:func:`resolve_sampler`, one rule); the two draw differently (same law).
    Optimisation:
      steps, batch_size, lr, warmup_steps, final_lr_frac, clip_norm: Adam with linear warm-up and
        cosine decay to ``lr·final_lr_frac`` (``final_lr_frac`` in ``[0, 1]``), global-norm clipping
        (``clip_norm = 0`` disables it).
      seed, seeds: seed values ``seed, seed+1, …, seed+seeds−1``, trained together (vmap).
      dtype: ``"float32"`` or ``"float64"`` (needs ``jax_enable_x64``).
      checkpoint_every, log_every: in steps.
    """

    model: str = "linear"
    d_in: int = 20
    n_demos: int = 40
    n_layers: int = 1
    mask: str = "demos"
    scale: str = "1/N"  # s·S is an average: O(1) whatever N, which conditions Adam's problem
    readout: int = 1
    init_std: float = 0.02  # trains stably at depth (module docstring)
    width: int = 64
    n_heads: int = 4
    mlp_width: int = 256
    noise_std: float = 0.0
    k_min: int | None = None
    curriculum: Curriculum | None = None
    sampler: str = "auto"
    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-2
    warmup_steps: int = 100
    final_lr_frac: float = 0.0
    clip_norm: float = 1.0
    seed: int = 0
    seeds: int = 1
    dtype: str = "float32"
    checkpoint_every: int = 500
    log_every: int = 50

    def __post_init__(self):
        spec = models.get(self.model)  # ValueError naming the registered models
        require_int("d_in", self.d_in)
        require_int("n_demos", self.n_demos)
        require_int("n_layers", self.n_layers)
        attention.check_options(self.mask, self.scale, self.readout)
        _finite("init_std", self.init_std, 0.0)
        for name in ("width", "n_heads", "mlp_width"):
            require_int(name, getattr(self, name))
        _finite("noise_std", self.noise_std, 0.0)
        if self.k_min is not None:
            if spec.targets != "query":
                raise ValueError(f"k_min applies to models whose loss scores the query (linear); the "
                                 f"{self.model} model's loss covers every k")
            require_int("k_min", self.k_min)
            if self.k_min > self.n_demos:
                raise ValueError(f"k_min must be <= n_demos={self.n_demos}, got {self.k_min}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.sampler == "wishart" and not (spec.reads_gram and self.mask == "demos"):
            raise ValueError("sampler='wishart' needs model='linear' and mask='demos' (the model must read "
                             f"prompts only through their Gram matrix); got model={self.model!r}, mask={self.mask!r}")
        if self.curriculum is not None and not isinstance(self.curriculum, Curriculum):
            raise TypeError(f"curriculum must be a Curriculum or None, got {type(self.curriculum).__name__}")
        require_int("steps", self.steps)
        require_int("batch_size", self.batch_size)
        _finite("lr", self.lr, 0.0, strict=True)
        require_int("warmup_steps", self.warmup_steps, 0)
        if self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps must be <= steps={self.steps}, got {self.warmup_steps}")
        _finite("final_lr_frac", self.final_lr_frac, 0.0)
        if self.final_lr_frac > 1:  # the schedule decays from lr to lr·final_lr_frac
            raise ValueError(f"final_lr_frac must be in [0, 1] (the final rate is lr·final_lr_frac), "
                             f"got {self.final_lr_frac!r}")
        _finite("clip_norm", self.clip_norm, 0.0)
        require_int("seed", self.seed, 0)
        require_int("seeds", self.seeds)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        require_int("checkpoint_every", self.checkpoint_every)
        require_int("log_every", self.log_every)
        spec.check_config(self)  # the model's own checks (softmax: width / n_heads)

    @property
    def dim(self) -> int:
        """``D = d_in + 1``."""
        return self.d_in + 1

    @property
    def jnp_dtype(self):
        return DTYPES[self.dtype]


def sampler_blocks(config: TrainConfig, sampler: str) -> float:
    """Threefry2x32 blocks one prompt costs with ``sampler`` (``"tokens"`` or ``"wishart"``): the cost model of :func:`resolve_sampler`.

    Drawing random bits dominates sampling on a CPU (issue 14: 2048 × 120 normals 4.4 ms of a 6 ms
    step). ``"tokens"`` (:func:`lintrans.tasks.sample_linear_split`, ``jax.random.normal``, one block
    per value): ``w``, ``N + 1`` inputs, ``N + 1`` label noises if ``σ > 0``. ``"wishart"``
    (:mod:`lintrans.gram_sampler`, two 32-bit words per block, one word per float32 value, two per
    float64): ``E(E−1)/2`` upper-triangle normals, ``E`` chi proposals (a normal and a uniform),
    ``w``, the query, one noise, with ``E = D`` (``σ > 0``) or ``E = d`` (noiseless: the Bartlett
    factor of the inputs alone); the chi retries (≈ 5 % of ``E`` elements × 8 values) are left out.
    With every prompt's count static (no ``k_min``, no curriculum), a chi column of ``f ≤``
    :data:`~lintrans.gram_sampler.SUM_MAX_DOF` degrees of freedom costs ``⌈f/2⌉`` values instead
    (:func:`lintrans.gram_sampler.chi_by_sums`).
    """
    d, N, D = config.d_in, config.n_demos, config.dim
    noisy = config.noise_std > 0
    E = D if noisy else d
    if sampler == "tokens":
        return float(d + (N + 1) * d + noisy * (N + 1))
    if sampler == "wishart":
        words_per_value = 2 if config.dtype == "float64" else 1
        static = config.k_min is None and config.curriculum is None
        dofs = [max(N - j, 0) for j in range(E)]
        chi = sum(-(-f // 2) if static and f <= SUM_MAX_DOF else 2 for f in dofs)
        return words_per_value * (E * (E - 1) / 2 + chi + 2 * d + noisy) / 2
    raise ValueError(f"sampler must be 'tokens' or 'wishart', got {sampler!r}")


def resolve_sampler(config: TrainConfig, path: str | None = None) -> str:
    """The sampler a run really uses: ``config.sampler``, or for ``"auto"`` the rule (one place).

    ``"auto"`` is ``"wishart"`` iff the model reads prompts only through their Gram matrix
    (``reads_gram``, ``mask="demos"``), ``path == "batched"`` (the only path that reads a Gram
    matrix; ``path=None``: a batch every path can read, so tokens) and :func:`sampler_blocks` is
    smaller for it; otherwise ``"tokens"``. E.g. noiseless, d = 10, N = 10: 120 vs 47.5 blocks
    (wishart); d = 20, N = 4: 120 vs 118 (wishart); d = 20, N = 2: 80 vs 116
    (tokens).
    """
    if config.sampler != "auto":
        return config.sampler
    spec = models.get(config.model)
    if not (spec.reads_gram and config.mask == "demos" and path == "batched"):
        return "tokens"
    return "wishart" if sampler_blocks(config, "wishart") < sampler_blocks(config, "tokens") else "tokens"


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """The JSON form stored as ``config.json``: every field, plus ``"softmax"`` (the
    :class:`~lintrans.transformer.SoftmaxConfig` fields, or ``None`` for the linear model) and
    ``"seed_values"`` (the list of seed values)."""
    out = dataclasses.asdict(config)
    arch = models.get(config.model).architecture(config)
    out["softmax"] = dataclasses.asdict(arch) if isinstance(arch, SoftmaxConfig) else None
    out["seed_values"] = seed_values(config)
    return out


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """Inverse of :func:`config_to_dict`; unknown keys or wrong types raise ``ValueError``."""
    if not isinstance(d, dict):
        raise ValueError(f"a training config must be a JSON object, got {type(d).__name__}")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    extra = set(d) - fields - {"softmax", "seed_values"}
    if extra:
        raise ValueError(f"unknown training-config keys {sorted(extra)}")
    kwargs = {k: v for k, v in d.items() if k in fields}
    if kwargs.get("curriculum") is not None:
        cur = kwargs["curriculum"]
        if not isinstance(cur, dict):
            raise ValueError(f"curriculum must be an object or null, got {cur!r}")
        try:
            kwargs["curriculum"] = Curriculum(**cur)
        except TypeError as e:
            raise ValueError(f"bad curriculum {cur!r}: {e}") from None
    try:
        return TrainConfig(**kwargs)
    except TypeError as e:
        raise ValueError(f"bad training config: {e}") from None


def seed_values(config: TrainConfig) -> list[int]:
    """``[seed, seed+1, …, seed+seeds−1]``."""
    return [config.seed + i for i in range(config.seeds)]
