"""Validation of the two ProxProp layer options: ``optimization_mode`` and ``tau_prox``.

Kept apart from the layers so that workers/ and study/ can validate configurations with the
same rules (and the same messages) without building a layer.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = ["MODE_KINDS", "SolverConfig", "check_tau_prox", "parse_mode"]

#: The kinds ``parse_mode`` can return.  ``prox_cg_ref`` is the reference implementation's
#: (aliased) CG loop, offered only to reproduce the paper's numbers; see ALGORITHM.md section 2.
MODE_KINDS = ("gradient", "prox_exact", "prox_cg", "prox_cg_ref")

_CG_PATTERN = re.compile(r"prox_cg([0-9]+)(_ref)?")


def parse_mode(mode: str) -> tuple[str, int]:
    """Split a mode string into (kind, cg_iterations).

    "gradient" -> ("gradient", 0), "prox_exact" -> ("prox_exact", 0),
    "prox_cg3" -> ("prox_cg", 3), "prox_cg3_ref" -> ("prox_cg_ref", 3).
    Anything else (including "prox_cg0") raises ValueError naming ``optimization_mode``.
    """
    if not isinstance(mode, str):
        raise ValueError(
            f"optimization_mode must be a string such as 'gradient', 'prox_exact' or "
            f"'prox_cg3', got {mode!r}"
        )
    if mode in ("gradient", "prox_exact"):
        return mode, 0
    match = _CG_PATTERN.fullmatch(mode)
    if match is not None and int(match.group(1)) >= 1:
        kind = "prox_cg_ref" if match.group(2) else "prox_cg"
        return kind, int(match.group(1))
    raise ValueError(
        f"optimization_mode must be 'gradient', 'prox_exact' or 'prox_cg<N>' with N >= 1 "
        f"(optionally 'prox_cg<N>_ref' for the reference's aliased CG), got {mode!r}"
    )


def check_tau_prox(tau_prox: float) -> float:
    """Return ``tau_prox`` as a python float; raise ValueError naming it unless finite and > 0."""
    try:
        value = float(tau_prox)
    except (TypeError, ValueError):
        raise ValueError(f"tau_prox must be a positive finite number, got {tau_prox!r}") from None
    if isinstance(tau_prox, bool) or not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"tau_prox must be a positive finite number, got {tau_prox!r}")
    return value


@dataclass(frozen=True)
class SolverConfig:
    """What a layer's backward needs to know to compute its parameter direction."""

    kind: str  # one of MODE_KINDS
    cg_iterations: int  # 0 unless kind is prox_cg / prox_cg_ref
    tau_prox: float  # python float, applied in the parameters' dtype

    @property
    def inv_tau(self) -> float:
        return 1.0 / self.tau_prox

    @staticmethod
    def make(mode: str, tau_prox: float) -> SolverConfig:
        kind, iterations = parse_mode(mode)
        return SolverConfig(kind, iterations, check_tau_prox(tau_prox))
