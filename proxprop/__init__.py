"""Proximal Backpropagation (Frerix et al., ICLR 2018) as drop-in torch layers.

After ``loss.backward()`` every ProxProp layer's parameters hold in ``.grad`` the update
direction X_k - X_{k+1} of the proximal step (exact, or N conjugate-gradient iterations),
so any torch optimizer consumes it like a gradient.  See /work/shared/ALGORITHM.md.

The top-level names load their module on first use (PEP 562), so that importing a torch-free
submodule such as ``proxprop.modes`` (configuration checks in the CLI) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .conv import ProxPropConv2d
    from .generic import proxprop_module_generator
    from .linear import ProxPropLinear
    from .modes import check_tau_prox, parse_mode

__all__ = [
    "ProxPropConv2d",
    "ProxPropLinear",
    "check_tau_prox",
    "parse_mode",
    "proxprop_module_generator",
]

#: Exported name -> the submodule that defines it.
_EXPORTS = {
    "ProxPropConv2d": "conv",
    "ProxPropLinear": "linear",
    "check_tau_prox": "modes",
    "parse_mode": "modes",
    "proxprop_module_generator": "generic",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
