"""Opening a study for a sweep: create it, or resume it when its stored search space is the one
given, and close the trials a dead driver left RUNNING.

Resume = run again: points whose ``point_key`` has a final status are skipped; trials left
RUNNING by a dead driver are closed as FAIL with status ``interrupted`` (not final, see
``records.STATUS_INTERRUPTED``) and their points run again.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from optuna.storages import BaseStorage
from optuna.trial import TrialState

from proxstudy.errors import SweepError
from proxstudy.study.reader import study_names
from proxstudy.study.records import (
    ATTR_DRIVER,
    ATTR_ERROR,
    ATTR_STATUS,
    STATUS_INTERRUPTED,
    STUDY_ATTR_SOURCE,
    STUDY_ATTR_SPACE,
)
from proxstudy.study.space import SearchSpace

__all__ = ["INTERRUPTED_ERROR", "close_interrupted", "driver_id", "open_study"]

INTERRUPTED_ERROR = "interrupted: driver stopped"


def driver_id() -> str:
    """``host:pid`` of this process, recorded on every trial it creates (``ATTR_DRIVER``)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _normalised(document: Any) -> Any:
    return json.loads(json.dumps(document, sort_keys=True))


def _free_name(storage: BaseStorage, base: str) -> str:
    names = set(study_names(storage))
    n = 2
    while f"{base}-{n}" in names:
        n += 1
    return f"{base}-{n}"


def open_study(storage: BaseStorage, space: SearchSpace, study_name: str, force_new: bool,
               shown_url: str) -> tuple[str, int, bool]:
    """Create the study or check that the stored search space is the one given; returns
    (study name, study id, created). ``shown_url``: the storage as messages show it."""
    document = _normalised(space.document)
    if study_name in study_names(storage):
        study_id = storage.get_study_id_from_name(study_name)
        stored = storage.get_study_user_attrs(study_id).get(STUDY_ATTR_SPACE)
        if stored is not None and _normalised(stored) == document:
            return study_name, study_id, False
        if not force_new:
            why = "was created from a different search space" if stored is not None else (
                "was not created by proxstudy (no stored search space)")
            raise SweepError(
                f"study {study_name!r} in {shown_url} {why} than {space.source}; "
                "rerun with --force-new to start a new study with a suffixed name, "
                "or choose another name with --study-name"
            )
        study_name = _free_name(storage, study_name)
    study_id = storage.create_new_study([space.study_direction], study_name)
    storage.set_study_user_attr(study_id, STUDY_ATTR_SPACE, document)
    storage.set_study_user_attr(study_id, STUDY_ATTR_SOURCE, str(space.source))
    return study_name, study_id, True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def close_interrupted(storage: BaseStorage, study_id: int) -> int:
    """Close the trials a dead driver left RUNNING (FAIL, status ``interrupted``).

    The study's lease (study.lease) already keeps a second driver out; as a second line of
    defence, a RUNNING trial whose driver is a live process on this host (a driver of a version
    without leases) makes this refuse rather than steal its trials.
    """
    running = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
    host = socket.gethostname()
    for trial in running:
        driver = str(trial.user_attrs.get(ATTR_DRIVER, ""))
        d_host, _, d_pid = driver.rpartition(":")
        if d_host == host and d_pid.isdigit() and int(d_pid) != os.getpid() and _pid_alive(int(d_pid)):
            raise SweepError(
                f"study {storage.get_study_name_from_id(study_id)!r} is being run by process "
                f"{d_pid} on this host; wait for it or stop it first"
            )
    for trial in running:
        storage.set_trial_user_attr(trial._trial_id, ATTR_STATUS, STATUS_INTERRUPTED)
        storage.set_trial_user_attr(trial._trial_id, ATTR_ERROR, INTERRUPTED_ERROR)
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    return len(running)
