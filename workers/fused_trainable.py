"""The Ray Tune function trainable of a fused trial: K members in, one report per evaluation out.

The Tune config holds the members under ``FUSED_MEMBERS_KEY``: a list of ``{POINT_KEY: key,
TRIAL_CONFIG_KEY: TrialConfig}`` (validated by the sweep, fusable: fused_plan.check_fusable),
and ``CPUS_KEY`` as for the one-point trainable.  Each Tune report carries, under
``MEMBER_REPORTS_KEY``, one metrics dict per member recorded at that evaluation: what the
one-point trainable would report for that member (the epoch dict plus trial_status,
diverged_epoch, device, error) plus ``POINT_KEY``.  A member that fails is reported at once
with status "failed" and its error; the others go on.  The driver (study.recorder) records each
member as its own trial.

Reports are batched per evaluation (all members of an epoch in one message), so a fused trial
sends as many reports as one unfused trial, not K times as many.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from ray import tune

from proxstudy.workers.config import TrialConfig
from proxstudy.workers.fused_training import run_fused_trials
from proxstudy.workers.trainable import POINT_KEY, TRIAL_CONFIG_KEY, failure_metrics, threads_for_trial
from proxstudy.workers.training import TrialOutcome
from proxstudy.workers.vocabulary import STATUS_FAILED

__all__ = ["FUSED_MEMBERS_KEY", "MEMBER_REPORTS_KEY", "failure_report", "fused_trainable", "member_reports"]

FUSED_MEMBERS_KEY = "_fused_members"
MEMBER_REPORTS_KEY = "member_reports"


def failure_report(point_key: str, outcome: TrialOutcome) -> dict[str, Any]:
    """The report of a failed member: its last recorded epoch (if any) and the error."""
    last = outcome.history[-1] if outcome.history else {}
    return {**failure_metrics(last, outcome.device, outcome.error), POINT_KEY: point_key}


def member_reports(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The member reports of one Tune result of a fused trial ([] for any other result)."""
    reports = result.get(MEMBER_REPORTS_KEY)
    return [dict(r) for r in reports] if isinstance(reports, list) else []


def fused_trainable(config: dict[str, Any]) -> None:
    """Ray Tune function trainable for one fused trial (see the module docstring)."""
    threads = threads_for_trial(config)
    if threads is not None:
        torch.set_num_threads(threads)
    members = config[FUSED_MEMBERS_KEY]
    keys: list[str] = [str(m[POINT_KEY]) for m in members]
    configs: list[TrialConfig] = [m[TRIAL_CONFIG_KEY] for m in members]

    def send(reports: list[tuple[int, dict]]) -> None:
        if reports:
            tune.report({MEMBER_REPORTS_KEY: [{**report, POINT_KEY: keys[member]} for member, report in reports]})

    def on_finish(member: int, outcome: TrialOutcome) -> None:
        if outcome.status == STATUS_FAILED:
            tune.report({MEMBER_REPORTS_KEY: [failure_report(keys[member], outcome)]})

    run_fused_trials(configs, on_finish=on_finish, on_reports=send)
