"""How a layer computes its ProxProp direction: keyword choices with an automatic default.

Every choice is a keyword-only argument of the layers and of the solver functions, in the
style of torch.optim's ``foreach=None``: ``None`` (the default) lets a flop model pick from
the shapes, dtype and device; a name forces that way (tests, benchmarks, experiments).  All
ways compute the same direction up to rounding (ALGORITHM.md section 4), so a choice never
changes what is computed, only how.

    solver_form   "primal" | "dual"          which Gram matrix a linear layer forms:
                                             A^T A (p x p) or A A^T (n x n)
    cg_strategy   "direct" | "spectral" | "moments"
                                             how CG runs on a Gram matrix: one Gram product
                                             per iteration; elementwise CG in the Gram
                                             matrix's eigenbasis; or CG scalars from spectral
                                             moments (moments.py), then one pass
    conv_strategy "gram" | "matrix_free" | "dual"
                                             how a convolution gets its system: A^T A;
                                             convolutions per CG iteration; A A^T from im2col
    gram_method   "unfold" | "shift" | "fft" how A^T A of a convolution is formed (gram.py)
"""

from __future__ import annotations

__all__ = [
    "CG_STRATEGIES",
    "CONV_STRATEGIES",
    "GRAM_METHODS",
    "SOLVER_FORMS",
    "check_choice",
]

SOLVER_FORMS = ("primal", "dual")
CG_STRATEGIES = ("direct", "spectral", "moments")
CONV_STRATEGIES = ("gram", "matrix_free", "dual")
GRAM_METHODS = ("unfold", "shift", "fft")


def check_choice(argument: str, value: str | None, choices: tuple[str, ...]) -> str | None:
    """Return ``value`` if it is None or one of ``choices``; else raise ValueError naming ``argument``."""
    if value is None or (isinstance(value, str) and value in choices):
        return value
    names = ", ".join(repr(c) for c in choices)
    raise ValueError(f"{argument} must be None (automatic) or one of {names}, got {value!r}")
