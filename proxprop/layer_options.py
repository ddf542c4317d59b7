"""The two ProxProp options every layer carries, validated on construction and assignment."""

from __future__ import annotations

from .modes import SolverConfig, check_tau_prox, parse_mode

__all__ = ["ProxPropOptions"]


class ProxPropOptions:
    """Mixin holding ``tau_prox`` (python float) and ``optimization_mode`` (str).

    Both are plain attributes (not buffers), so state_dicts stay interchangeable with the
    plain torch layers and tau_prox keeps full precision whatever the parameters' dtype.
    Assigning either re-validates it and raises ValueError naming the argument.
    """

    # set with object.__setattr__ (nn.Module's own __setattr__ is bypassed: plain attributes)
    _solver_config: SolverConfig
    _optimization_mode: str

    def _init_options(self, tau_prox: float, optimization_mode: str) -> None:
        cfg = SolverConfig.make(optimization_mode, tau_prox)
        object.__setattr__(self, "_solver_config", cfg)
        object.__setattr__(self, "_optimization_mode", optimization_mode)

    @property
    def tau_prox(self) -> float:
        return self._solver_config.tau_prox

    @tau_prox.setter
    def tau_prox(self, value: float) -> None:
        cfg = self._solver_config
        object.__setattr__(
            self, "_solver_config", SolverConfig(cfg.kind, cfg.cg_iterations, check_tau_prox(value))
        )

    @property
    def optimization_mode(self) -> str:
        return self._optimization_mode

    @optimization_mode.setter
    def optimization_mode(self, value: str) -> None:
        kind, iterations = parse_mode(value)
        object.__setattr__(
            self, "_solver_config", SolverConfig(kind, iterations, self._solver_config.tau_prox)
        )
        object.__setattr__(self, "_optimization_mode", value)

    @property
    def solver_config(self) -> SolverConfig:
        return self._solver_config

    def options_repr(self, **strategies: str | None) -> str:
        """The options, then any strategy keyword that is not automatic (None)."""
        forced = "".join(f", {name}={value!r}" for name, value in strategies.items() if value is not None)
        return f"tau_prox={self.tau_prox!r}, optimization_mode={self.optimization_mode!r}{forced}"
