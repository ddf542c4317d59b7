"""`proxstudy train CONFIG.yaml [--method NAME] [--pick best|robust]`: re-run one configuration
and show it.

The CLI (study/cli.py) calls train_main; ConfigError and DataError propagate to it (it prints
the one-line message and exits 2). The data set is loaded here before training starts, so a
missing file or failed download is a DataError rather than a "failed" trial.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

import torch

from proxstudy.workers.config import (
    MODE_GRADIENT,
    TrialConfig,
    check_device_present,
    load_train_file,
    validate_device,
)
from proxstudy.workers.data import check_available, load_dataset
from proxstudy.workers.training import TrialOutcome, resolve_device, run_trial
from proxstudy.workers.vocabulary import (
    EPOCH,
    EPOCH_SECONDS,
    STATUS_DIVERGED,
    STATUS_FAILED,
    TRAIN_ACCURACY,
    TRAIN_LOSS,
    VAL_ACCURACY,
    VAL_LOSS,
)

__all__ = ["TABLE_HEADER", "format_epoch_row", "train_main"]

TABLE_HEADER = f"{'epoch':>5}  {'train loss':>11}  {'train acc':>9}  {'val loss':>11}  {'val acc':>8}  {'seconds':>8}"


def _number(value: float | None, width: int, digits: int = 4) -> str:
    if value is None:
        return f"{'-':>{width}}"
    text = f"{value:.{digits}f}" if abs(value) < 1e5 else f"{value:.3e}"
    return f"{text:>{width}}"


def format_epoch_row(entry: dict) -> str:
    return "  ".join(
        [
            f"{entry[EPOCH]:>5}",
            _number(entry[TRAIN_LOSS], 11, 5),
            _number(entry[TRAIN_ACCURACY], 9),
            _number(entry[VAL_LOSS], 11, 5),
            _number(entry[VAL_ACCURACY], 8),
            _number(entry[EPOCH_SECONDS], 8, 2),
        ]
    )


def _describe(config: TrialConfig) -> str:
    parts = [f"mode {config.layer_mode}", f"lr {config.lr:g}"]
    if config.mode != MODE_GRADIENT:
        parts.append(f"tau_prox {config.tau_prox:g}")
    parts.append(config.optimizer["name"])
    return (
        f"method {config.method} ({', '.join(parts)}) | {config.dataset['name']} / "
        f"{config.model['name']} | {config.training['epochs']} epochs, batch "
        f"{config.training['batch_size']} | seed {config.seed}"
    )


class _Progress:
    """A one-line progress indicator on stderr, redrawn at most ten times a second."""

    def __init__(self, stream: TextIO, epochs: int) -> None:
        self.stream = stream
        self.epochs = epochs
        self.last = 0.0
        self.width = 0

    def __call__(self, epoch: int, batch: int, n_batches: int) -> None:
        now = time.monotonic()
        if now - self.last < 0.1 and batch != n_batches:
            return
        self.last = now
        text = f"epoch {epoch}/{self.epochs}  batch {batch}/{n_batches}"
        self.width = max(self.width, len(text))
        self.stream.write("\r" + text.ljust(self.width))
        self.stream.flush()

    def clear(self) -> None:
        if self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0


def _run_one(config: TrialConfig, source: str, stream: TextIO, progress_stream: TextIO) -> TrialOutcome:
    device = resolve_device(config.device)  # present: train_main checked it
    check_available(config.dataset, source, "dataset")  # names the file and dataset.root
    load_dataset(config.dataset, device)  # DataError here, before any training
    print(f"== {_describe(config)}", file=stream)
    print(TABLE_HEADER, file=stream, flush=True)
    progress = _Progress(progress_stream, config.training["epochs"])

    def on_epoch(entry: dict) -> None:
        progress.clear()
        print(format_epoch_row(entry), file=stream, flush=True)

    try:
        outcome = run_trial(config, on_epoch, on_progress=progress)
    finally:
        progress.clear()
    summary = f"status: {outcome.status} on {outcome.device}"
    if outcome.status == STATUS_DIVERGED:
        summary += f" (diverged at epoch {outcome.diverged_epoch})"
    if outcome.test_accuracy is not None:
        summary += f"; test accuracy {outcome.test_accuracy:.4f}"
    elif outcome.test_loss is not None:
        summary += f"; test loss {outcome.test_loss:.5f}"
    print(summary, file=stream, flush=True)
    if outcome.error:
        print(f"error: {outcome.error}", file=stream, flush=True)
    return outcome


def train_main(
    path: str | os.PathLike,
    method: str | None = None,
    device: str | None = None,
    stream: TextIO | None = None,
    progress_stream: TextIO | None = None,
    pick: str | None = None,
) -> int:
    """Run the configuration(s) in `path` (a trial config, or an export file: `method`, or every
    method in turn, each at its configuration `pick`, "best" or "robust", which may be left
    out where the file has only one) and print the per-epoch table to `stream` (stdout).

    Returns 0 when every run completed or diverged (divergence is a result), 1 when one
    failed. Raises ConfigError / DataError for bad input (the CLI turns them into exit 2).
    """
    stream = sys.stdout if stream is None else stream
    progress_stream = sys.stderr if progress_stream is None else progress_stream
    configs = load_train_file(path, method, pick)
    if device is not None:
        device = validate_device(device, "<command line>", "--device")
        check_device_present(device, torch.cuda.device_count(), "<command line>", "--device")
        configs = [config.with_device(device) for config in configs]
    for config in configs:
        # The index is checked on the string: torch.device("cuda:4096") wraps round to cuda:0.
        check_device_present(config.device, torch.cuda.device_count(), str(path), "device")
    failed = 0
    for index, config in enumerate(configs):
        if index:
            print(file=stream)
        outcome = _run_one(config, str(path), stream, progress_stream)
        failed += outcome.status == STATUS_FAILED
    return 1 if failed else 0
