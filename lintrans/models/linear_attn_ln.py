"""Registry entry ``"linear_attn_ln"``: linear attention with pre-LayerNorm (SPEC layout; issue 16).

The model is ``lintrans.variants.VARIANTS["linear_attn_ln"]``; the entry is built by
:func:`lintrans.models.variant_base.variant_model`, whose docstring lists what the training loop does with it.
"""

from lintrans.models.variant_base import variant_model

MODEL = variant_model("linear_attn_ln", "linear attention with pre-LayerNorm (SPEC layout; issue 16)")
