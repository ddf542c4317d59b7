"""SGD and Adam over stacked parameters (K, ...), each member with its own hyperparameters.

Member k of a stacked optimizer makes exactly the updates torch.optim.SGD / torch.optim.Adam
would make on member k's unstacked parameters with member k's lr and fields (the formulas of
torch's single-tensor implementations, written with per-member vectors h of shape (K,)
broadcast over each parameter as h[:, None, ...]):

SGD (momentum mu, dampening d, weight decay wd, nesterov, maximize), g the gradient:
    g <- -g if maximize;  g <- g + wd * theta
    b <- g on the first step, else  b <- mu * b + (1 - d) * g
    step direction = g + mu * b (nesterov), b (momentum), g (mu = 0: no buffer)
    theta <- theta - lr * direction
Adam (beta1, beta2, eps, wd, amsgrad, maximize), t the step count (shared: members step together):
    g <- -g if maximize;  g <- g + wd * theta
    m <- lerp(m, g, 1 - beta1);  v <- beta2 * v + (1 - beta2) * g^2
    v_hat <- max(v_hat, v) (amsgrad)
    theta <- theta - lr / (1 - beta1^t) * m / (sqrt(v or v_hat) / sqrt(1 - beta2^t) + eps)
Derived per-member scalars are computed in float64 and cast to the parameters' dtype, as
torch's python-float scalars are.  `select_` keeps a subset of the members (a diverged member's
slot is dropped from the parameters and from every state tensor).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["StackedAdam", "StackedSGD", "build_stacked_optimizer"]


def _torch_default(optimizer: type, field: str):
    """torch.optim's default for a field, read from the constructor (so ours cannot drift)."""
    return inspect.signature(optimizer).parameters[field].default


class _StackedOptimizer:
    """Parameters, per-member hyperparameters and per-parameter state.

    hyper: float64 (K,) vectors (lr and the numeric fields); flags: bool (K,) vectors.  Before
    each use they are cast to the parameters' dtype and shaped (K, 1, ..., 1) per parameter
    once (``_views``, refreshed when members are dropped), and host-side summaries say which
    fields any / every member uses, so uniform groups skip the per-member selections.
    """

    torch_class: type = torch.optim.Optimizer  # where the fields' defaults come from

    def __init__(self, params: Sequence[Tensor], specs: Sequence[Mapping], lrs: Sequence[float]) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("a stacked optimizer needs parameters")
        members = self.params[0].shape[0]
        if len(specs) != members or len(lrs) != members:
            raise ValueError(f"need one optimizer spec and lr per member ({members})")
        self.device = self.params[0].device
        self.hyper: dict[str, Tensor] = {"lr": self._vector([float(lr) for lr in lrs])}
        self.flags: dict[str, Tensor] = {}
        self.state: list[dict[str, Tensor]] = [{} for _ in self.params]
        self.steps = 0

    def _vector(self, values: Sequence[float]) -> Tensor:
        return torch.tensor(values, dtype=torch.float64, device=self.device)

    def _field(self, specs: Sequence[Mapping], field: str) -> list:
        default = _torch_default(self.torch_class, field)
        return [spec.get(field, default) for spec in specs]

    def _set_fields(self, specs: Sequence[Mapping], numbers: Sequence[str], flags: Sequence[str]) -> None:
        for field in numbers:
            self.hyper[field] = self._vector([float(v) for v in self._field(specs, field)])
        for field in flags:
            self.flags[field] = torch.tensor([bool(v) for v in self._field(specs, field)], device=self.device)
        self._refresh()

    def _derived(self) -> dict[str, Tensor]:
        """Per-member float64 quantities the update uses besides the fields themselves."""
        return {}

    def _refresh(self) -> None:
        vectors = {**self.hyper, **self._derived()}
        self.any = {name: bool((v != 0).any()) for name, v in {**vectors, **self.flags}.items()}
        self.all = {name: bool((v != 0).all()) for name, v in {**vectors, **self.flags}.items()}
        self._views = []
        for param in self.params:
            shape = (-1,) + (1,) * (param.dim() - 1)
            views = {name: v.to(param.dtype).reshape(shape) for name, v in vectors.items()}
            views.update({name: v.reshape(shape) for name, v in self.flags.items()})
            self._views.append(views)

    def zero_grad(self) -> None:
        for param in self.params:
            param.grad = None

    def step(self) -> None:
        """One update of every member from the parameters' .grad (the subclasses')."""
        raise NotImplementedError

    def select_(self, index: Tensor, params: Sequence[Tensor]) -> None:
        """Keep only the members at ``index`` in every hyperparameter vector and state tensor;
        ``params`` are the parameters after the same selection (in the same order)."""
        self.params = list(params)
        index = index.to(self.device)
        self.hyper = {name: value[index] for name, value in self.hyper.items()}
        self.flags = {name: value[index] for name, value in self.flags.items()}
        for state in self.state:
            for name, value in state.items():
                state[name] = value[index].contiguous()
        self._refresh()

    def _signed_decayed_grad(self, param: Tensor, views: dict[str, Tensor]) -> Tensor:
        """g, negated where maximize, plus wd * theta where weight decay is set."""
        grad = param.grad
        assert grad is not None, "step() after a backward that reached every parameter"
        if self.all["maximize"]:
            grad = -grad
        elif self.any["maximize"]:
            grad = torch.where(views["maximize"], -grad, grad)
        if self.any["weight_decay"]:
            grad = torch.addcmul(grad, views["weight_decay"], param)
        return grad


class StackedSGD(_StackedOptimizer):
    torch_class = torch.optim.SGD

    def __init__(self, params: Sequence[Tensor], specs: Sequence[Mapping], lrs: Sequence[float]) -> None:
        super().__init__(params, specs, lrs)
        self._set_fields(specs, ("momentum", "dampening", "weight_decay"), ("nesterov", "maximize"))

    def _derived(self) -> dict[str, Tensor]:
        return {"neg_lr": -self.hyper["lr"], "undamped": 1.0 - self.hyper["dampening"]}

    @torch.no_grad()
    def step(self) -> None:
        for param, state, views in zip(self.params, self.state, self._views, strict=True):
            if param.grad is None:
                continue
            grad = self._signed_decayed_grad(param, views)
            if self.any["momentum"]:
                momentum = views["momentum"]
                if "momentum_buffer" not in state:
                    buf = state["momentum_buffer"] = grad.detach().clone()
                else:
                    buf = state["momentum_buffer"].mul_(momentum)
                    if self.any["dampening"]:
                        buf.addcmul_(grad, views["undamped"])
                    else:
                        buf.add_(grad)
                if self.all["nesterov"]:
                    direction = torch.addcmul(grad, momentum, buf)
                elif self.any["nesterov"]:
                    direction = torch.where(views["nesterov"], torch.addcmul(grad, momentum, buf), buf)
                else:
                    direction = buf
                grad = direction if self.all["momentum"] else torch.where(momentum != 0, direction, grad)
            param.addcmul_(grad, views["neg_lr"])
        self.steps += 1


class StackedAdam(_StackedOptimizer):
    torch_class = torch.optim.Adam

    def __init__(self, params: Sequence[Tensor], specs: Sequence[Mapping], lrs: Sequence[float]) -> None:
        super().__init__(params, specs, lrs)
        betas = [tuple(v) for v in self._field(specs, "betas")]
        self.hyper["beta1"] = self._vector([float(b[0]) for b in betas])
        self.hyper["beta2"] = self._vector([float(b[1]) for b in betas])
        self._set_fields(specs, ("eps", "weight_decay"), ("amsgrad", "maximize"))

    def _derived(self) -> dict[str, Tensor]:
        return {"one_minus_beta1": 1.0 - self.hyper["beta1"], "one_minus_beta2": 1.0 - self.hyper["beta2"]}

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        t = float(self.steps)
        # float64 per member, like torch's python-float scalars
        neg_step_size = -self.hyper["lr"] / (1.0 - self.hyper["beta1"] ** t)
        bias_correction2_sqrt = (1.0 - self.hyper["beta2"] ** t).sqrt()
        for param, state, views in zip(self.params, self.state, self._views, strict=True):
            if param.grad is None:
                continue
            grad = self._signed_decayed_grad(param, views)
            if not state:
                state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                if self.any["amsgrad"]:
                    state["max_exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            exp_avg.lerp_(grad, views["one_minus_beta1"])
            exp_avg_sq.mul_(views["beta2"]).addcmul_(grad * grad, views["one_minus_beta2"])
            second = exp_avg_sq
            if self.any["amsgrad"]:
                torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
                second = state["max_exp_avg_sq"] if self.all["amsgrad"] else torch.where(
                    views["amsgrad"], state["max_exp_avg_sq"], exp_avg_sq
                )
            shape = views["lr"].shape
            denom = (second.sqrt() / bias_correction2_sqrt.to(param.dtype).reshape(shape)).add_(views["eps"])
            param.addcdiv_(exp_avg * neg_step_size.to(param.dtype).reshape(shape), denom)


def build_stacked_optimizer(
    params: Sequence[Tensor], specs: Sequence[Mapping], lrs: Sequence[float]
) -> _StackedOptimizer:
    """The stacked counterpart of workers.training.build_optimizer: one validated optimizer
    spec and lr per member, all with the same optimizer name."""
    names = {spec["name"] for spec in specs}
    if len(names) != 1:
        raise ValueError(f"fused members need one optimizer, got {sorted(names)}")
    name = names.pop()
    if name == "sgd":
        return StackedSGD(params, specs, lrs)
    if name == "adam":
        return StackedAdam(params, specs, lrs)
    raise ValueError(f"unknown optimizer {name!r}")
