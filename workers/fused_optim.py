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
    return inspect.signature(optimizer.__init__).parameters[field].default


class _StackedOptimizer:
    """Parameters, per-member float64 hyperparameter vectors and per-parameter state."""

    #: the spec fields that are per-member vectors, with torch.optim's class for their defaults
    torch_class: type = torch.optim.Optimizer

    def __init__(self, params: Sequence[Tensor], specs: Sequence[Mapping], lrs: Sequence[float]) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("a stacked optimizer needs parameters")
        members = self.params[0].shape[0]
        if len(specs) != members or len(lrs) != members:
            raise ValueError(f"need one optimizer spec and lr per member ({members})")
        self.device = self.params[0].device
        self.hyper: dict[str, Tensor] = {"lr": self._vector([float(lr) for lr in lrs])}  # float64 (K,)
        self.flags: dict[str, Tensor] = {}  # bool (K,)
        self.state: list[dict[str, Tensor]] = [{} for _ in self.params]
        self.steps = 0

    def _vector(self, values: Sequence[float]) -> Tensor:
        return torch.tensor(values, dtype=torch.float64, device=self.device)

    def _field(self, specs: Sequence[Mapping], field: str) -> list:
        default = _torch_default(self.torch_class, field)
        return [spec.get(field, default) for spec in specs]

    def _flag(self, specs: Sequence[Mapping], field: str) -> Tensor:
        return torch.tensor([bool(v) for v in self._field(specs, field)], device=self.device)

    @staticmethod
    def _per_member(vector: Tensor, param: Tensor) -> Tensor:
        """(K,) -> (K, 1, ..., 1), numbers in the parameter's dtype (flags stay bool)."""
        if vector.dtype != torch.bool:
            vector = vector.to(param.dtype)
        return vector.reshape((-1,) + (1,) * (param.dim() - 1))

    def _any(self, name: str) -> bool:
        """Whether any member uses a field (host-side, refreshed when members change)."""
        return self._used[name]

    def _refresh_usage(self) -> None:
        values = {**self.hyper, **self.flags}
        self._used = {name: bool((value != 0).any()) for name, value in values.items()}

    def zero_grad(self) -> None:
        for param in self.params:
            param.grad = None

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
        self._refresh_usage()

    def _signed_decayed_grad(self, param: Tensor) -> Tensor:
        """g, negated where maximize, plus wd * theta where weight decay is set."""
        grad = param.grad
        if self._any("maximize"):
            grad = torch.where(self._per_member(self.flags["maximize"], param), -grad, grad)
        if self._any("weight_decay"):
            grad = grad + self._per_member(self.hyper["weight_decay"], param) * param
        return grad


class StackedSGD(_StackedOptimizer):
    torch_class = torch.optim.SGD

    def __init__(self, params: Sequence[Tensor], specs: Sequence[Mapping], lrs: Sequence[float]) -> None:
        super().__init__(params, specs, lrs)
        for field in ("momentum", "dampening", "weight_decay"):
            self.hyper[field] = self._vector([float(v) for v in self._field(specs, field)])
        for field in ("nesterov", "maximize"):
            self.flags[field] = self._flag(specs, field)
        self._refresh_usage()

    @torch.no_grad()
    def step(self) -> None:
        hyper = self.hyper
        for param, state in zip(self.params, self.state):
            if param.grad is None:
                continue
            grad = self._signed_decayed_grad(param)
            if self._any("momentum"):
                momentum = self._per_member(hyper["momentum"], param)
                if "momentum_buffer" not in state:
                    buf = state["momentum_buffer"] = grad.detach().clone()
                else:
                    buf = state["momentum_buffer"]
                    buf.mul_(momentum).add_(grad * self._per_member(1.0 - hyper["dampening"], param))
                nesterov = grad + momentum * buf
                direction = torch.where(self._per_member(self.flags["nesterov"], param), nesterov, buf)
                grad = torch.where(momentum != 0, direction, grad)
            param.sub_(self._per_member(hyper["lr"], param) * grad)
        self.steps += 1


class StackedAdam(_StackedOptimizer):
    torch_class = torch.optim.Adam

    def __init__(self, params: Sequence[Tensor], specs: Sequence[Mapping], lrs: Sequence[float]) -> None:
        super().__init__(params, specs, lrs)
        betas = [tuple(v) for v in self._field(specs, "betas")]
        self.hyper["beta1"] = self._vector([float(b[0]) for b in betas])
        self.hyper["beta2"] = self._vector([float(b[1]) for b in betas])
        for field in ("eps", "weight_decay"):
            self.hyper[field] = self._vector([float(v) for v in self._field(specs, field)])
        for field in ("amsgrad", "maximize"):
            self.flags[field] = self._flag(specs, field)
        self._refresh_usage()

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        hyper = self.hyper
        t = float(self.steps)
        step_size = hyper["lr"] / (1.0 - hyper["beta1"] ** t)  # float64, like torch's python floats
        bias_correction2_sqrt = (1.0 - hyper["beta2"] ** t).sqrt()
        for param, state in zip(self.params, self.state):
            if param.grad is None:
                continue
            grad = self._signed_decayed_grad(param)
            if not state:
                state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                if self._any("amsgrad"):
                    state["max_exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            exp_avg.lerp_(grad, self._per_member(1.0 - hyper["beta1"], param))
            exp_avg_sq.mul_(self._per_member(hyper["beta2"], param)).add_(
                grad * grad * self._per_member(1.0 - hyper["beta2"], param)
            )
            second = exp_avg_sq
            if self._any("amsgrad"):
                torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
                amsgrad = self._per_member(self.flags["amsgrad"], param)
                second = torch.where(amsgrad, state["max_exp_avg_sq"], exp_avg_sq)
            denom = second.sqrt() / self._per_member(bias_correction2_sqrt, param) + self._per_member(
                hyper["eps"], param
            )
            param.sub_(self._per_member(step_size, param) * exp_avg / denom)


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
