"""A study written straight through Optuna, as another tool would: no search space, user
attributes of the wrong types, a parameter that is text, and a method named with markup."""

from __future__ import annotations

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

MARKUP_METHOD = "<b>X</b><br>"
PLAIN_METHOD = "plain"
STUDY = "foreign"
TEXT_LR_STUDY = "foreign-text-lr"


def build_foreign_study(url: str) -> None:
    """Two studies in ``url``: ``foreign`` (6 completed trials, 2 methods x 3 lrs, with damaged
    user attributes on trials 0 and 1) and ``foreign-text-lr`` (3 trials whose lr is text)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=STUDY, storage=url)
    distributions = {
        "method": CategoricalDistribution([PLAIN_METHOD, MARKUP_METHOD]),
        "lr": FloatDistribution(1e-4, 1.0, log=True),
        "act": CategoricalDistribution(["relu", "tanh"]),
    }
    damaged = {
        0: {"train_loss": "not a list", "epoch_seconds": ["a", None], "diverged_epoch": "soon", "device": 3},
        1: {"train_loss": [1.0, "x", None], "status": 7},
    }
    for number in range(6):
        params = {"method": MARKUP_METHOD if number % 2 else PLAIN_METHOD, "lr": 10.0 ** -(number // 2),
                  "act": "relu"}
        final = 0.1 + 0.2 * (number // 2) + 0.05 * (number % 2)
        study.add_trial(create_trial(
            state=TrialState.COMPLETE, value=final, params=params, distributions=distributions,
            user_attrs=damaged.get(number, {}), intermediate_values={0: 2.0, 1: final},
        ))
    text_lr = optuna.create_study(study_name=TEXT_LR_STUDY, storage=url)
    for number, lr in enumerate(("fast", "slow", "<i>mid</i>")):
        text_lr.add_trial(create_trial(
            state=TrialState.COMPLETE, value=float(number), params={"lr": lr},
            distributions={"lr": CategoricalDistribution(["fast", "slow", "<i>mid</i>"])},
        ))
