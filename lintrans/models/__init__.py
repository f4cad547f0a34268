"""Models registered by name: every model the training code, the checkpoints and the experiments know.

The registry maps a name (``TrainConfig.model``, ``config.json``'s ``"model"``) to a
:class:`~lintrans.models.base.Model`: its layout, loss, predictions, parameter type and file form,
truncation groups and whether Theorem 1 applies. Library code never compares ``model == "…"``; it
asks the entry (``get(config.model).targets == "query"``, ``.groups``, ``.theorem1``, …).

Registered: ``"linear"`` (:mod:`lintrans.models.linear`) and ``"softmax"`` (:mod:`lintrans.models.softmax`).

Adding a model (e.g. linear attention + MLP) — one file plus one entry:

1. Write ``lintrans/models/<name>.py`` defining its functions and ``MODEL = Model(name="<name>", …)``
   (copy :mod:`lintrans.models.linear` or :mod:`lintrans.models.softmax`; every field is documented
   in :class:`~lintrans.models.base.Model`). The functions take the run's ``TrainConfig`` and ONE
   seed's parameters; ``init(key, config, init_std=None)`` returns one seed's parameter pytree (a
   ``NamedTuple`` or ``flax.struct`` dataclass whose fields are arrays, layer axis first), and
   ``loss(config, params, batch, path)`` scores a :class:`lintrans.train.Batch`: with
   ``targets="query"`` the batch has ``H (B, D, N+1)`` (zeroed demonstrations after ``n_true``),
   ``targets (B,)``, ``gram``/``query``; with ``targets="positions"`` ``H`` and ``targets (B, N+1)``.
   Hyper-parameters come from existing ``TrainConfig`` fields (``width``, ``n_heads``,
   ``mlp_width``, ``mask``, ``scale``, ``readout``, ``init_std``); validate combinations in
   ``check_config``.
2. Import the module below and add its ``MODEL`` to ``_ENTRIES``.

That is all: ``TrainConfig(model="<name>")`` then trains with :func:`lintrans.train.train` (seeds
vmapped, checkpoints, resume — the checkpoint format stores every leaf of the pytree by its path),
``experiments/train_icl.py --model <name>`` offers it, and :func:`lintrans.trained.load_trained`
scores it. Test it in ``tests/test_models.py`` (the generic contract tests there run on every
registered model).
"""

from __future__ import annotations

from lintrans.models import linear, softmax
from lintrans.models import linear_attn_ln, linear_attn_mlp, softmax_attn, softmax_attn_ln_mlp  # issue 16 variants
from lintrans.models.base import LAYOUTS, TARGETS, Model

__all__ = ["Model", "LAYOUTS", "TARGETS", "REGISTRY", "MODELS", "get"]

_ENTRIES = (linear.MODEL, softmax.MODEL, linear_attn_mlp.MODEL, linear_attn_ln.MODEL, softmax_attn.MODEL,
            softmax_attn_ln_mlp.MODEL)

#: name → :class:`Model`, in registration order.
REGISTRY: dict[str, Model] = {m.name: m for m in _ENTRIES}
if len(REGISTRY) != len(_ENTRIES):
    raise RuntimeError("two registered models share a name")
#: The registered model names.
MODELS: tuple[str, ...] = tuple(REGISTRY)


def get(name: str) -> Model:
    """The registered model ``name``; ``ValueError`` listing the registered names otherwise."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"model must be one of {MODELS}, got {name!r}") from None
