"""proxprop_module_generator: ProxProp for any module that is linear in its parameters.

The generated layer treats its base module's forward as the linear map theta -> phi(theta, a).
Its backward gets g = dL/dZ from autograd and:

* applies A^T (a vector-Jacobian product with respect to the parameters; the product does not
  depend on the parameter values because phi is linear in them) and A (the base forward run
  with candidate parameters through torch.func.functional_call);
* 'prox_cg<N>': textbook CG, per output channel when every parameter's first dimension is the
  output channel (nn.Linear and non-transposed nn.ConvNd: channel o's parameters only reach
  output channel o), otherwise jointly over all parameters as one vector (e.g. ConvTranspose);
  'prox_cg<N>_ref' is always joint, like the reference's generic layers;
* 'prox_exact': materialises A^T A over all parameters (vmap over an identity basis, in chunks)
  and solves with Cholesky - meant for small layers (cost grows with the parameter count squared).

nn.Linear and nn.Conv2d map to the fast ProxPropLinear / ProxPropConv2d classes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .cg import batched_cg
from .conv import ProxPropConv2d
from .layer_options import ProxPropOptions
from .linear import ProxPropLinear
from .modes import SolverConfig
from .solvers import gram_solve_factored

__all__ = ["proxprop_module_generator"]

_EXACT_VMAP_CHUNK = 64


def _output_units(module: nn.Module) -> int | None:
    """Number of output channels if every parameter is blocked by output channel on dim 0."""
    if isinstance(module, nn.Linear):
        units = module.out_features
    elif isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
        units = module.out_channels
    else:
        return None
    if all(p.dim() >= 1 and p.shape[0] == units for p in module.parameters()):
        return units
    return None


class _Flattener:
    """Maps a list of parameter-shaped tensors to a (blocks, q) matrix and back."""

    def __init__(self, shapes: list[torch.Size], blocks: int) -> None:
        self.shapes = shapes
        self.blocks = blocks
        self.widths = [int(torch.Size(s).numel()) // blocks for s in shapes]

    def flat(self, tensors: list[Tensor]) -> Tensor:
        return torch.cat([t.reshape(self.blocks, -1) for t in tensors], dim=1)

    def unflat(self, matrix: Tensor) -> list[Tensor]:
        parts = torch.split(matrix, self.widths, dim=1)
        return [part.reshape(shape) for part, shape in zip(parts, self.shapes, strict=True)]


class _Bypassable(nn.Module):
    """Base of the generated layers: ``_bypass()`` makes forward run the plain base module
    (the autograd function calls it for the forward values and for A, A^T)."""

    _proxprop_bypass: bool  # set with object.__setattr__: a plain attribute, not module state

    @contextlib.contextmanager
    def _bypass(self) -> Iterator[None]:
        previous = self._proxprop_bypass
        object.__setattr__(self, "_proxprop_bypass", True)
        try:
            yield
        finally:
            object.__setattr__(self, "_proxprop_bypass", previous)


class _GenericProxFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, module: _Bypassable, cfg: SolverConfig, x: Tensor, *params: Tensor) -> Tensor:
        ctx.module, ctx.cfg = module, cfg
        ctx.save_for_backward(x, *params)
        with module._bypass():
            return module(x)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        module, cfg = ctx.module, ctx.cfg
        x, *params = ctx.saved_tensors
        names = [name for name, _ in module.named_parameters()]
        need_x = ctx.needs_input_grad[2]
        with torch.enable_grad():
            x_leaf = x.detach().requires_grad_(need_x)
            leaves = [p.detach().requires_grad_(True) for p in params]
            with module._bypass():
                out = functional_call(module, dict(zip(names, leaves, strict=True)), (x_leaf,))
            wrt = ([x_leaf] if need_x else []) + leaves
            grads = torch.autograd.grad(out, wrt, grad_out, retain_graph=True, allow_unused=True)
        grad_x = grads[0] if need_x else None
        param_grads = grads[len(wrt) - len(leaves):]
        atg = [torch.zeros_like(p) if g is None else g for p, g in zip(params, param_grads, strict=True)]

        def apply_at(r: Tensor) -> list[Tensor]:
            with torch.enable_grad():
                res = torch.autograd.grad(out, leaves, r, retain_graph=True, allow_unused=True)
            return [torch.zeros_like(p) if g is None else g for p, g in zip(params, res, strict=True)]

        def apply_a(v: list[Tensor]) -> Tensor:
            with torch.no_grad(), module._bypass():
                return functional_call(module, dict(zip(names, v, strict=True)), (x,))

        directions = _direction(module, cfg, params, atg, apply_a, apply_at, names, x)
        grads_params = [d if need else None for d, need in zip(directions, ctx.needs_input_grad[3:], strict=True)]
        return (None, None, grad_x, *grads_params)


def _direction(
    module: _Bypassable, cfg: SolverConfig, params: list[Tensor], atg: list[Tensor],
    apply_a: Callable[[list[Tensor]], Tensor], apply_at: Callable[[Tensor], list[Tensor]],
    names: list[str], x: Tensor,
) -> list[Tensor]:
    if cfg.kind == "gradient":
        return atg
    shapes = [p.shape for p in params]
    if cfg.kind == "prox_exact":
        flat = _Flattener(shapes, 1)
        gram = _dense_gram(module, names, params, x, flat)
        rhs = flat.flat(atg)
        return flat.unflat(gram_solve_factored(gram, rhs, cfg, dual=False).dense())
    units = None if cfg.kind == "prox_cg_ref" else _output_units(module)
    flat = _Flattener(shapes, units or 1)
    inv_tau = cfg.inv_tau

    def apply_m(v: Tensor) -> Tensor:
        return flat.flat(apply_at(apply_a(flat.unflat(v)))) + inv_tau * v

    def curvature(v: Tensor) -> Tensor:
        """Per-block <v, M v> = |A v|^2 + |v|^2 / tau with one application of A (last step)."""
        out_sq = apply_a(flat.unflat(v)).square()
        if units is None:
            a_norm = out_sq.sum().reshape(1)
        else:
            channel_dim = out_sq.dim() - 1 if isinstance(module, nn.Linear) else 1
            a_norm = out_sq.movedim(channel_dim, 0).reshape(units, -1).sum(dim=1)
        return a_norm + inv_tau * v.square().sum(dim=1)

    result = batched_cg(
        apply_m, flat.flat(atg), cfg.cg_iterations,
        reference_variant=cfg.kind == "prox_cg_ref", curvature=curvature,
    )
    return flat.unflat(result)


def _dense_gram(module: _Bypassable, names: list[str], params: list[Tensor], x: Tensor, flat: _Flattener) -> Tensor:
    """A^T A over all parameters, built column block by column block with torch.func."""
    def forward(*ps: Tensor) -> Tensor:
        with module._bypass():
            return functional_call(module, dict(zip(names, ps, strict=True)), (x,))

    detached = [p.detach() for p in params]
    vjp_fn = torch.func.vjp(forward, *detached)[1]

    def ata(v: Tensor) -> Tensor:
        ps = flat.unflat(v[None, :])
        return flat.flat(list(vjp_fn(forward(*ps))))[0]

    size = sum(p.numel() for p in params)
    eye = torch.eye(size, dtype=x.dtype, device=x.device)
    return torch.func.vmap(ata, chunk_size=_EXACT_VMAP_CHUNK)(eye)


def proxprop_module_generator(BaseModule: type[nn.Module]) -> type[nn.Module]:
    """Return a ProxProp version of ``BaseModule`` taking extra kwargs tau_prox, optimization_mode.

    The base module's forward must be linear in its parameters (affine maps, convolutions of
    any dimension, transposed convolutions, ...) and take one input tensor.
    """
    if BaseModule is nn.Linear:
        return ProxPropLinear
    if BaseModule is nn.Conv2d:
        return ProxPropConv2d

    class ProxPropModule(ProxPropOptions, _Bypassable, BaseModule):  # type: ignore[misc, valid-type]
        def __init__(
            self, *args: Any, tau_prox: float = 1.0, optimization_mode: str = "prox_cg1", **kwargs: Any
        ) -> None:
            self._init_options(tau_prox, optimization_mode)
            object.__setattr__(self, "_proxprop_bypass", False)
            BaseModule.__init__(self, *args, **kwargs)

        def forward(self, input: Tensor) -> Tensor:
            if self._proxprop_bypass or self.solver_config.kind == "gradient":
                return BaseModule.forward(self, input)
            params = list(self.parameters())
            return _GenericProxFunction.apply(self, self.solver_config, input, *params)

        def extra_repr(self) -> str:
            return f"{BaseModule.extra_repr(self)}, {self.options_repr()}"

    ProxPropModule.__name__ = f"ProxProp{BaseModule.__name__}"
    ProxPropModule.__qualname__ = ProxPropModule.__name__
    return ProxPropModule
