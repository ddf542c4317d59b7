"""Fill a real Optuna RDB storage with synthetic ProxProp-study trials (tests and benchmark).

Trials are written exactly as the sweep runner writes them (``study.records`` schema: params
method/lr/seed/tau_prox/cg_iterations, state COMPLETE/PRUNED/FAIL, per-epoch user attributes,
intermediate values = the objective per epoch), so the dashboards read them through the same
``records.load_records`` path as a real study. The loss surface is made up but shaped like the
paper's Table 1: BackProp diverges above a small learning rate, ProxProp tolerates larger ones.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from proxstudy.study import records as R


@dataclass(frozen=True)
class SyntheticSpace:
    """A grid like the paper's: BackProp over lr, ProxProp-CG over lr x tau_prox x cg."""

    lrs: Sequence[float] = (5e-4, 5e-3, 0.05, 0.5, 5.0)
    taus: Sequence[float] = (0.05, 1.0)
    cgs: Sequence[int] = (1, 3)
    seeds: Sequence[int] = (0, 1)
    epochs: int = 5
    backprop: str = "backprop"
    proxprop: str = "proxprop-cg"

    def points(self) -> list[tuple[str, dict, int]]:
        out = []
        for seed in self.seeds:
            for lr in self.lrs:
                out.append((self.backprop, {"lr": lr}, seed))
            for cg in self.cgs:
                for tau in self.taus:
                    for lr in self.lrs:
                        out.append((self.proxprop, {"lr": lr, "tau_prox": tau, "cg_iterations": cg}, seed))
        return out

    def distributions(self) -> dict:
        return {
            R.PARAM_METHOD: CategoricalDistribution([self.backprop, self.proxprop]),
            R.PARAM_LR: FloatDistribution(min(self.lrs), max(self.lrs), log=True),
            R.PARAM_TAU: FloatDistribution(min(self.taus), max(self.taus), log=True),
            R.PARAM_CG: IntDistribution(min(self.cgs), max(self.cgs)),
            R.PARAM_SEED: IntDistribution(min(self.seeds), max(self.seeds) + 100),
        }

    def document(self, study_name: str) -> dict:
        """A search-space document as the runner stores it (enough for export / trial configs)."""
        return {
            "study": study_name,
            "dataset": {"name": "synthetic"},
            "model": {"name": "mlp", "hidden": [16]},
            "training": {"epochs": self.epochs, "batch_size": 50, "seeds": list(self.seeds)},
            "sampler": {"name": "grid"},
            "objective": "train_loss",
            "methods": {
                self.backprop: {"mode": "gradient", "optimizer": {"name": "sgd", "momentum": 0.9},
                                "lr": list(self.lrs)},
                self.proxprop: {"mode": "prox_cg", "optimizer": {"name": "sgd", "momentum": 0.9},
                                "lr": list(self.lrs), "tau_prox": list(self.taus),
                                "cg_iterations": list(self.cgs)},
            },
        }


def final_loss(method: str, params: dict, seed: int, space: SyntheticSpace) -> float | None:
    """The made-up final training loss of a point; None means the run diverged."""
    lr = params["lr"]
    if method == space.backprop:
        if lr > 0.1:
            return None
        best = 0.05
    else:
        if lr > 2.0 * params["tau_prox"] * 10 and params["cg_iterations"] == 1:
            return None
        best = 1.0 / (1.0 + 10 * params["tau_prox"] * params["cg_iterations"])
    distance = abs(math.log10(lr) - math.log10(best))
    return round(0.02 + 0.4 * distance**2 + 0.01 * seed, 6)


def _epoch_lists(final: float | None, epochs: int, rng: random.Random) -> tuple[list, int | None]:
    if final is None:
        diverged_at = max(1, epochs // 2)
        losses = [2.3 * (1.5**e) for e in range(diverged_at)] + [None]
        return losses, diverged_at
    return [final + (2.3 - final) * math.exp(-e) for e in range(epochs + 1)], None


def add_trial(
    study: optuna.Study,
    space: SyntheticSpace,
    method: str,
    params: dict,
    seed: int,
    *,
    status: str | None = None,
    rng: random.Random | None = None,
) -> None:
    """Write one trial exactly as the runner does; ``status`` overrides the synthetic outcome."""
    rng = rng or random.Random(0)
    final = final_loss(method, params, seed, space)
    if status is None:
        status = R.STATUS_DIVERGED if final is None else R.STATUS_COMPLETED
    if status == R.STATUS_DIVERGED:
        final = None
    losses, diverged_at = _epoch_lists(final, space.epochs, rng)
    if status in (R.STATUS_FAILED, R.STATUS_RUNNING, R.STATUS_INTERRUPTED):
        losses = losses[:2]
    history = [
        {
            "train_loss": loss,
            "train_accuracy": None if loss is None else max(0.0, 1.0 - loss / 2.3),
            "val_loss": None if loss is None else loss * 1.1,
            "val_accuracy": None if loss is None else max(0.0, 0.95 - loss / 2.3),
            "epoch_seconds": 0.0 if e == 0 else 0.5 + 0.1 * params.get("cg_iterations", 0),
        }
        for e, loss in enumerate(losses)
    ]
    attrs = R.history_to_user_attrs(history)
    attrs[R.ATTR_POINT_KEY] = R.point_key(method, params, seed)
    attrs[R.ATTR_DEVICE] = "cpu"
    if status != R.STATUS_RUNNING:
        attrs[R.ATTR_STATUS] = status
    if status == R.STATUS_DIVERGED:
        attrs[R.ATTR_DIVERGED_EPOCH] = diverged_at if diverged_at is not None else 1
    if status == R.STATUS_FAILED:
        attrs[R.ATTR_ERROR] = "RuntimeError: <b>synthetic</b> failure"
    intermediate = {e: v for e, v in enumerate(losses) if v is not None}
    # An interrupted trial is what the runner leaves of a dead driver's trial: Optuna FAIL.
    state = {**R.STATE_FOR_STATUS, R.STATUS_INTERRUPTED: TrialState.FAIL}.get(status, TrialState.RUNNING)
    full_params = {R.PARAM_METHOD: method, R.PARAM_SEED: seed, **params}
    dists = space.distributions()
    study.add_trial(
        create_trial(
            state=state,
            value=final if state == TrialState.COMPLETE else None,
            params=full_params,
            distributions={k: dists[k] for k in full_params},
            user_attrs=attrs,
            intermediate_values=intermediate,
        )
    )


def build_study(
    storage: str,
    study_name: str,
    space: SyntheticSpace | None = None,
    *,
    n_trials: int | None = None,
    n_failed: int = 0,
    n_running: int = 0,
) -> SyntheticSpace:
    """Create ``study_name`` in ``storage`` holding the synthetic grid (optionally truncated).

    The first ``n_failed`` points are recorded as failed trials and ``n_running`` extra trials
    are left RUNNING, so status counts and live refresh can be tested.
    """
    space = space or SyntheticSpace()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=study_name, storage=storage, direction="minimize")
    study.set_user_attr(R.STUDY_ATTR_SPACE, space.document(study_name))
    rng = random.Random(0)
    points = space.points()
    if n_trials is not None:
        points = points[:n_trials]
    for i, (method, params, seed) in enumerate(points):
        status = R.STATUS_FAILED if i < n_failed else None
        add_trial(study, space, method, params, seed, status=status, rng=rng)
    for i in range(n_running):
        method, params, _ = points[i % len(points)]
        add_trial(study, space, method, params, max(space.seeds) + 1 + i, status=R.STATUS_RUNNING, rng=rng)
    return space


def benchmark_space(n_trials: int = 5000, epochs: int = 20) -> SyntheticSpace:
    """A grid of at least ``n_trials`` trials: 20 lrs x 8 taus x 4 cg (+ BackProp) x seeds."""
    lrs = tuple(10 ** (-4 + 5 * i / 19) for i in range(20))
    taus = tuple(10 ** (-2 + 3 * i / 7) for i in range(8))
    cgs = (1, 3, 5, 10)
    per_seed = len(lrs) * (1 + len(taus) * len(cgs))
    seeds = tuple(range(math.ceil(n_trials / per_seed)))
    return SyntheticSpace(lrs=lrs, taus=taus, cgs=cgs, seeds=seeds, epochs=epochs)


class RunningServer:
    """A Dash app served by werkzeug on a free 127.0.0.1 port in a daemon thread."""

    def __init__(self, dash_app) -> None:
        import logging
        import threading

        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request

        self._server = make_server("127.0.0.1", 0, dash_app.server, threaded=True)
        self.base = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def page_callback_payload(pathname: str, search: str = "") -> dict:
    """The JSON body Dash's renderer POSTs to /_dash-update-component for the page callback."""
    return {
        "output": "page.children",
        "outputs": {"id": "page", "property": "children"},
        "inputs": [{"id": "url", "property": "pathname", "value": pathname}],
        "state": [{"id": "url", "property": "search", "value": search}],
        "changedPropIds": ["url.pathname"],
    }


def refresh_callback_payload(study: str, version, n_intervals: int = 1) -> dict:
    """The body of the study page's live refresh (the interval ticked)."""
    return {
        "output": "..study-body.children...tick.disabled...version.data...tick.interval...study-status.children..",
        "outputs": [{"id": "study-body", "property": "children"}, {"id": "tick", "property": "disabled"},
                    {"id": "version", "property": "data"}, {"id": "tick", "property": "interval"},
                    {"id": "study-status", "property": "children"}],
        "inputs": [{"id": "tick", "property": "n_intervals", "value": n_intervals}],
        "state": [{"id": "version", "property": "data", "value": version},
                  {"id": "study-name", "property": "data", "value": study}],
        "changedPropIds": ["tick.n_intervals"],
    }


def trials_callback_payload(study: str, version, page_current: int = 0, page_size: int = 25,
                            sort_by: list | None = None, filter_query: str = "") -> dict:
    """The body of the trial table's server-side page request."""
    table = "trials-table"
    return {
        "output": f"..{table}.data...{table}.page_count...trials-note.children..",
        "outputs": [{"id": table, "property": "data"}, {"id": table, "property": "page_count"},
                    {"id": "trials-note", "property": "children"}],
        "inputs": [{"id": table, "property": "page_current", "value": page_current},
                   {"id": table, "property": "page_size", "value": page_size},
                   {"id": table, "property": "sort_by", "value": sort_by or []},
                   {"id": table, "property": "filter_query", "value": filter_query},
                   {"id": "version", "property": "data", "value": version}],
        "state": [{"id": "study-name", "property": "data", "value": study}],
        "changedPropIds": [f"{table}.filter_query"],
    }
