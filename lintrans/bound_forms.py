"""The registry of Theorem 2 bound forms: one place that names each form and says what it is (SPEC §7).

Every printer, figure, test and study takes form names from :data:`FORMS` (never a string literal
of its own) and asks :func:`reportable` before calling a number "the bound".

A form is two choices (see :mod:`lintrans.bound` for the formulas):

* **where the expectation over prompts sits** — ``printed``: outside the log, with
  ``‖ΔW_t‖²‖I + W_{t-1}‖²`` (Theorem 2 as printed); ``proof``: inside the log, with ``‖G_t‖²`` (what
  the proof establishes);
* **what replaces ``log det C_t``** — ``raw``: nothing (``C_t`` is singular, so ``+∞``); ``ridge``:
  ``C_t + ε_t I`` with ``ε_t = ε·E[tr C_t]/d``; ``support``: ``d → rank C_t``, ``log det → log pdet``.

Only forms that are **finite and continuous in the weights** may be reported as the bound
(:func:`reportable`): the ridged ones. The support-restricted form is kept as a diagnostic: its
dimension ``r_t`` is a numerical rank, which jumps under an arbitrarily small change of structured
weights (near the exact GD construction ``r_t`` goes from ``d_in`` at weight noise 0 to
``d_in(d_in+1)/2`` at 1e-6, and the form from ≈ 10 to ≈ 60). A restriction to a subspace fixed by
the model's structure (the image of the symmetric matrices under ``X ↦ W_V A X (W_K A)ᵀ W_Q A``)
does not escape this: its dimension is the rank of ``W_V A`` and ``W_K A``, which is 1 and ``d_in``
for the construction and ``D`` for any perturbation of it.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["BoundForm", "FORMS", "THE_BOUND", "REPORTED", "EPS_DEFAULT", "EPS_GRID", "get_form", "reportable",
           "check_reportable", "names"]


class BoundForm(NamedTuple):
    """One form of the Theorem 2 bound.

    Attributes:
      name: the key used everywhere (``"<expectation>_<covariance>"``).
      expectation: ``"printed"`` (E outside the log) or ``"proof"`` (E inside).
      covariance: ``"raw"``, ``"ridge"`` or ``"support"``.
      bounds: what the number bounds.
      finite: finite for every model with ``E tr C_t > 0`` at each active layer.
      continuous: continuous in the weights (at structured weights and after clipping too, except where a
        clipped matrix's rank changes).
      origin: ``"paper"`` (Yao et al. 2024, Theorem 2 / its proof) or ``"this project"``.
      note: one line for printers and figure legends.
    """

    name: str
    expectation: str
    covariance: str
    bounds: str
    finite: bool
    continuous: bool
    origin: str
    note: str


_NOISY = ("the generalization gap of the implicit learner run as noisy SGD, W_t = W_{{t-1}} + G_t + ν_t "
          "with ν_t ~ N(0, C_t{extra}) (the paper's model of ICL)")

FORMS: dict[str, BoundForm] = {
    f.name: f
    for f in (
        BoundForm("printed_raw", "printed", "raw", _NOISY.format(extra=""), False, False, "paper",
                  "Theorem 2 as printed: +inf, C_t is singular"),
        BoundForm("proof_raw", "proof", "raw", _NOISY.format(extra=""), False, False, "paper",
                  "the proof's form: +inf, C_t is singular"),
        BoundForm("printed_ridge", "printed", "ridge", _NOISY.format(extra=" + ε_t I"), True, True, "paper",
                  "Theorem 2 as printed for the learner with extra noise ε_t I (ε_t = ε·E tr C_t / d)"),
        BoundForm("proof_ridge", "proof", "ridge", _NOISY.format(extra=" + ε_t I"), True, True, "paper",
                  "the proof's form for the learner with extra noise ε_t I (ε_t = ε·E tr C_t / d)"),
        BoundForm("printed_support", "printed", "support", _NOISY.format(extra="") + ", when vec G_t ∈ supp C_t",
                  False, False, "this project",
                  "support-restricted (d → rank C_t): discontinuous in the weights, a diagnostic only"),
        BoundForm("proof_support", "proof", "support", _NOISY.format(extra="") + ", when vec G_t ∈ supp C_t",
                  False, False, "this project",
                  "support-restricted, proof form: discontinuous in the weights, a diagnostic only"),
    )
}

#: The form reported as "the bound" by default: the proof's form (what is actually proved), ridged.
THE_BOUND = "proof_ridge"
#: Every form that may be reported as the bound (finite and continuous), in registry order.
REPORTED = tuple(name for name, f in FORMS.items() if f.finite and f.continuous)
#: The relative ridge ``ε`` of the reported bound: the added noise has variance ``ε`` times the mean
#: per-coordinate variance ``E[tr C_t]/d`` of the SGD noise itself. Each direction of ``vec W`` outside
#: the support of ``C_t`` adds ``≈ log(1/ε)`` to the summand, so the value depends on ``ε``; the
#: ε sweep (:data:`EPS_GRID`) is reported beside it.
EPS_DEFAULT = 1e-3
#: Relative ridges ``ε`` of the ε sweep.
EPS_GRID = (1e-9, 1e-6, 1e-3, 1e-1, 1.0)


def get_form(name: str) -> BoundForm:
    """The registry entry ``name`` (``ValueError`` naming the known forms otherwise)."""
    if not isinstance(name, str) or name not in FORMS:
        raise ValueError(f"form must be one of {list(FORMS)}, got {name!r}")
    return FORMS[name]


def reportable(name: str) -> bool:
    """Whether form ``name`` may be reported as the bound: finite and continuous in the weights."""
    f = get_form(name)
    return f.finite and f.continuous


def check_reportable(name: str) -> BoundForm:
    """The entry of a form that may be reported as the bound; ``ValueError`` saying why otherwise."""
    f = get_form(name)
    if not reportable(name):
        why = "not finite (C_t is singular)" if not f.finite and f.covariance == "raw" else "not continuous in the weights"
        raise ValueError(f"form {name!r} cannot be reported as the bound: it is {why}; use one of {list(REPORTED)}")
    return f


def names(*, covariance: str | None = None, expectation: str | None = None) -> tuple[str, ...]:
    """Form names in registry order, optionally only those with the given covariance / expectation."""
    return tuple(n for n, f in FORMS.items()
                 if (covariance is None or f.covariance == covariance)
                 and (expectation is None or f.expectation == expectation))
