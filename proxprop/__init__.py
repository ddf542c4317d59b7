"""Proximal Backpropagation (Frerix et al., ICLR 2018) as drop-in torch layers.

After ``loss.backward()`` every ProxProp layer's parameters hold in ``.grad`` the update
direction X_k - X_{k+1} of the proximal step (exact, or N conjugate-gradient iterations),
so any torch optimizer consumes it like a gradient.  See /work/shared/ALGORITHM.md.
"""

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
