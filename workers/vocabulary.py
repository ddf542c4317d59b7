"""The words a trial is described and recorded in, defined once for every layer above.

A trial (workers.training) ends with a status, reports one dict per epoch, and optimises an
objective in a direction; the sweep records the same words in the Optuna storage
(study.records) and the dashboards read them back. They are defined here, the lowest layer that
uses them, and re-exported by ``study.records`` for the readers of the storage.

The ProxProp modes are the layers' own vocabulary: ``proxprop.modes.MODE_KINDS`` (read by
workers.config). This module imports nothing.
"""

from __future__ import annotations

# -- how a trial ends (TrialOutcome.status, the trainable's reports, the recorded status)
STATUS_COMPLETED = "completed"
STATUS_DIVERGED = "diverged"  # an outcome of the study, not an error: it ranks last
STATUS_FAILED = "failed"
#: What the trainable reports for every epoch but the last.
STATUS_RUNNING = "running"
FINAL_STATUSES = (STATUS_COMPLETED, STATUS_DIVERGED, STATUS_FAILED)

# -- one dict per epoch (epoch 0 = the model before training); None where a value is not
# finite or does not apply
EPOCH = "epoch"
TRAIN_LOSS = "train_loss"  # full batch
TRAIN_ACCURACY = "train_accuracy"
VAL_LOSS = "val_loss"
VAL_ACCURACY = "val_accuracy"
EPOCH_SECONDS = "epoch_seconds"  # the training part of the epoch (0.0 for epoch 0)
OBJECTIVE = "objective"  # the value of the trial's objective at this epoch
EPOCH_KEYS = (EPOCH, TRAIN_LOSS, TRAIN_ACCURACY, VAL_LOSS, VAL_ACCURACY, EPOCH_SECONDS, OBJECTIVE)
#: The epoch keys a study stores as per-epoch lists (the objective is Optuna's intermediate value).
EPOCH_SERIES = (TRAIN_LOSS, TRAIN_ACCURACY, VAL_LOSS, VAL_ACCURACY, EPOCH_SECONDS)

# -- what the trainable reports beside the epoch dict
REPORT_STATUS = "trial_status"  # STATUS_RUNNING until the last report, then a final status
REPORT_DIVERGED_EPOCH = "diverged_epoch"
REPORT_DEVICE = "device"
REPORT_ERROR = "error"

# -- objectives and the direction each is optimised in
MINIMIZE = "minimize"
MAXIMIZE = "maximize"
DIRECTIONS = (MINIMIZE, MAXIMIZE)
DIRECTION_OF_OBJECTIVE = {TRAIN_LOSS: MINIMIZE, VAL_ACCURACY: MAXIMIZE}
OBJECTIVES = tuple(DIRECTION_OF_OBJECTIVE)
