"""Registry entry ``"softmax_attn"``: softmax attention with the paper's K, Q, V shapes (SPEC layout, demos mask; issue 16).

The model is ``lintrans.variants.VARIANTS["softmax_attn"]``; the entry is built by
:func:`lintrans.models.variant_base.variant_model`, whose docstring lists what the training loop does with it.
"""

from lintrans.models.variant_base import variant_model

MODEL = variant_model("softmax_attn", "softmax attention with the paper's K, Q, V shapes (SPEC layout, demos mask; issue 16)")
