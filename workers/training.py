"""One trial: train a model with one method's hyperparameters and record every epoch.

What is recorded is what the robustness study compares: the FULL-BATCH training loss (the
paper's Table 1 metric, not a running mini-batch average), validation loss and accuracy, and
the wall-clock seconds of the training part of each epoch (evaluation excluded, so methods are
timed on what differs between them). Epoch 0 is the untrained model.

A diverging run (non-finite loss, or a full-batch loss beyond `divergence_factor` times the
initial one) is an outcome of the study, not an error: it stops at once with status
"diverged". Any exception during the run gives status "failed" with the message; run_trial
never raises for a training failure, so one broken trial never takes a sweep down. It takes a
validated :class:`~proxstudy.workers.config.TrialConfig` and checks nothing again.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from proxstudy.workers.config import TrialConfig
from proxstudy.workers.data import load_dataset
from proxstudy.workers.models import build_model
from proxstudy.workers.vocabulary import (
    EPOCH,
    EPOCH_KEYS,
    EPOCH_SECONDS,
    OBJECTIVE,
    REPORT_DEVICE,
    REPORT_DIVERGED_EPOCH,
    REPORT_ERROR,
    REPORT_STATUS,
    STATUS_COMPLETED,
    STATUS_DIVERGED,
    STATUS_FAILED,
    STATUS_RUNNING,
    TRAIN_ACCURACY,
    TRAIN_LOSS,
    VAL_ACCURACY,
    VAL_LOSS,
)

__all__ = [
    "EPOCH_KEYS",
    "CallbackFailed",
    "TrialOutcome",
    "build_optimizer",
    "build_trial_model",
    "call_callback",
    "describe_device",
    "finite_or_none",
    "format_error",
    "record_epoch",
    "resolve_device",
    "run_trial",
]


@dataclass
class TrialOutcome:
    status: str  # STATUS_COMPLETED | STATUS_DIVERGED | STATUS_FAILED
    history: list[dict] = field(default_factory=list)
    diverged_epoch: int | None = None
    device: str = "unknown"
    error: str | None = None
    # Extra (not in the per-epoch contract): the held-out test set after a completed run,
    # where the data set has one (the paper reports test accuracy at the end).
    test_loss: float | None = None
    test_accuracy: float | None = None

    @property
    def value(self) -> float | None:
        """The objective at the last recorded epoch."""
        return self.history[-1][OBJECTIVE] if self.history else None


# --------------------------------------------------------------------------------------------
# devices and optimizers


def resolve_device(name: str) -> torch.device:
    """auto -> cuda if available else cpu; "cuda" -> the current CUDA device with its index
    (so caches keyed by device agree)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but torch.cuda.is_available() is False")
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def build_optimizer(parameters, spec: Mapping, lr: float) -> torch.optim.Optimizer:
    """torch.optim.SGD or Adam from a validated optimizer spec; lr from the trial."""
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    if spec["name"] == "sgd":
        return torch.optim.SGD(parameters, lr=lr, **kwargs)
    return torch.optim.Adam(parameters, lr=lr, **kwargs)


# --------------------------------------------------------------------------------------------
# losses and full-batch evaluation


def _batch_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, classify: bool) -> torch.Tensor:
    out = model(x)
    return F.cross_entropy(out, y) if classify else F.mse_loss(out, x)


@torch.no_grad()
def _evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, classify: bool, chunk: int
) -> tuple[float, float | None]:
    """Mean loss (and accuracy) over the whole set, in chunks, with the model in eval mode."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    try:
        for start in range(0, len(x), chunk):
            xb, yb = x[start : start + chunk], y[start : start + chunk]
            out = model(xb)
            if classify:
                total += F.cross_entropy(out, yb, reduction="sum").double()
                correct += (out.argmax(dim=1) == yb).sum()
            else:
                total += F.mse_loss(out, xb, reduction="sum").double() / xb[0].numel()
    finally:
        model.train(was_training)
    loss = total.item() / len(x)
    return loss, (correct.item() / len(x) if classify else None)


def finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


# --------------------------------------------------------------------------------------------
# the run


class CallbackFailed(Exception):
    """Carries an exception raised by a caller's callback: it is not a training failure and
    must reach the caller (e.g. Ray stopping a trial), so run_trial re-raises it."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


def call_callback(callback: Callable | None, *args) -> None:
    if callback is None:
        return
    try:
        callback(*args)
    except Exception as exc:
        raise CallbackFailed(exc) from exc


def format_error(exc: BaseException, frames: int = 4) -> str:
    head = f"{type(exc).__name__}: {exc}"
    stack = traceback.extract_tb(exc.__traceback__)[-frames:]
    if not stack:
        return head
    return head + "\n" + "".join(traceback.format_list(stack)).rstrip()


def build_trial_model(config: TrialConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The trial's model with its initial weights: built seeded with the trial's seed inside a
    forked RNG (the caller's RNG is not disturbed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return build_model(config.model, input_shape, num_classes, config.layer_mode, config.tau_prox)


def record_epoch(
    config: TrialConfig,
    outcome: TrialOutcome,
    epoch: int,
    seconds: float,
    train: tuple[float, float | None],
    val: tuple[float, float | None],
    initial_loss: float,
    *,
    batch_diverged: bool = False,
) -> tuple[dict, dict]:
    """Record one evaluated epoch of a trial: the rule every training loop shares.

    train and val are the full-batch (loss, accuracy); initial_loss the training loss of
    epoch 0.  The trial has diverged when a mini-batch loss was not finite (batch_diverged) or
    the training loss is not finite or above divergence_factor x initial_loss.  Appends the
    epoch dict to outcome.history, sets outcome.status / diverged_epoch when the trial ends,
    and returns (epoch dict, report): the report is the epoch dict plus trial_status,
    diverged_epoch, device and error, what the trainable reports.  Both are fresh dicts.
    """
    (train_loss, train_acc), (val_loss, val_acc) = train, val
    factor = config.training["divergence_factor"]
    bound = factor * max(initial_loss, 1e-12) if math.isfinite(initial_loss) else -1.0
    diverged = batch_diverged or not math.isfinite(train_loss) or train_loss > bound
    entry: dict[str, float | int | None] = {
        EPOCH: epoch,
        TRAIN_LOSS: finite_or_none(train_loss),
        TRAIN_ACCURACY: finite_or_none(train_acc),
        VAL_LOSS: finite_or_none(val_loss),
        VAL_ACCURACY: finite_or_none(val_acc),
        EPOCH_SECONDS: seconds,
    }
    entry[OBJECTIVE] = entry[config.objective]  # the objectives are epoch keys
    outcome.history.append(entry)
    if diverged:
        status = outcome.status = STATUS_DIVERGED
        outcome.diverged_epoch = epoch
    elif epoch == config.training["epochs"]:
        status = outcome.status = STATUS_COMPLETED
    else:
        status = STATUS_RUNNING
    report = {
        **entry,
        REPORT_STATUS: status,
        REPORT_DIVERGED_EPOCH: outcome.diverged_epoch,
        REPORT_DEVICE: outcome.device,
        REPORT_ERROR: None,
    }
    return dict(entry), report


def run_trial(
    config: TrialConfig,
    on_epoch: Callable[[dict], None] | None = None,
    *,
    on_report: Callable[[dict], None] | None = None,
    on_progress: Callable[[int, int, int], None] | None = None,
) -> TrialOutcome:
    """Run one validated trial config to its outcome.

    on_epoch(epoch_dict) is called after every recorded epoch (epoch 0 included).
    on_report(metrics) gets the same epoch dict plus trial_status ("running", or the final
    "completed"/"diverged" on the last epoch), diverged_epoch, device, error: what the Ray
    trainable reports. on_progress(epoch, batch, n_batches) is called after every mini-batch
    (for progress displays). Exceptions raised by callbacks propagate unchanged.
    """
    outcome = TrialOutcome(status=STATUS_FAILED)
    try:
        _train(config, outcome, on_epoch, on_report, on_progress)
    except CallbackFailed as wrapped:
        raise wrapped.original from None
    except Exception as exc:  # a training failure is an outcome, not an exception
        outcome.status = STATUS_FAILED
        outcome.error = format_error(exc)
    return outcome


def _train(
    config: TrialConfig,
    outcome: TrialOutcome,
    on_epoch: Callable | None,
    on_report: Callable | None,
    on_progress: Callable | None,
) -> None:
    device = resolve_device(config.device)
    outcome.device = describe_device(device)
    data = load_dataset(config.dataset, device)
    classify = config.model["name"] != "autoencoder"
    training = config.training

    model = build_trial_model(config, data.input_shape, data.num_classes)
    model.to(device)
    model.train()
    optimizer = build_optimizer(model.parameters(), config.optimizer, config.lr)
    generator = torch.Generator().manual_seed(config.seed)

    n_train = len(data.x_train)
    batch_size = min(training["batch_size"], n_train)
    n_batches = n_train // batch_size if training["drop_last"] else -(-n_train // batch_size)
    chunk = training["eval_batch_size"]
    initial_loss: float | None = None

    def record(epoch: int, seconds: float, batch_diverged: bool) -> str:
        """Evaluate, record the epoch, notify; returns the status."""
        nonlocal initial_loss
        train = _evaluate(model, data.x_train, data.y_train, classify, chunk)
        val = _evaluate(model, data.x_val, data.y_val, classify, chunk)
        if epoch == 0:
            initial_loss = train[0]
        assert initial_loss is not None  # epoch 0 is recorded first
        entry, report = record_epoch(config, outcome, epoch, seconds, train, val, initial_loss,
                                     batch_diverged=batch_diverged)
        call_callback(on_epoch, entry)
        call_callback(on_report, report)
        return report[REPORT_STATUS]

    if record(0, 0.0, batch_diverged=False) != STATUS_RUNNING:
        return
    for epoch in range(1, training["epochs"] + 1):
        batch_diverged = False
        _synchronize(device)
        started = time.perf_counter()
        order = torch.randperm(n_train, generator=generator).to(device)
        for batch in range(n_batches):
            index = order[batch * batch_size : (batch + 1) * batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = _batch_loss(model, data.x_train[index], data.y_train[index], classify)
            if not torch.isfinite(loss).item():
                batch_diverged = True
                break
            loss.backward()
            optimizer.step()
            if on_progress is not None:
                call_callback(on_progress, epoch, batch + 1, n_batches)
        _synchronize(device)
        seconds = time.perf_counter() - started
        if record(epoch, seconds, batch_diverged) != STATUS_RUNNING:
            break
    if outcome.status == STATUS_COMPLETED and data.x_test is not None and data.y_test is not None:
        test_loss, test_acc = _evaluate(model, data.x_test, data.y_test, classify, chunk)
        outcome.test_loss, outcome.test_accuracy = finite_or_none(test_loss), finite_or_none(test_acc)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
