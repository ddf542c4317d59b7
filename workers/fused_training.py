"""A fused trial: K trial configs trained together as one stacked model, recorded one by one.

`run_fused_trials(configs, ...)` gives each member exactly what `run_trial(config)` would: the
same initial weights (its seed), the same data order (its own torch.Generator), the same
optimizer updates (its own lr and fields, fused_optim.py), the same ProxProp directions (its
own tau_prox, proxprop/stacked.py), the same records (epoch 0 included: full-batch training
loss and accuracy, validation loss and accuracy, epoch seconds) and the same divergence rule
(a non-finite mini-batch loss, or a full-batch loss that is non-finite or above
divergence_factor x the initial one).  In float64 the per-epoch losses agree with the unfused
trial's to rounding (tests/workers/test_fused_training.py).  In float32 they agree to float32
rounding, which batched products and a chunked evaluation round differently; at unstable
learning rates such differences grow, as with any change of BLAS or thread count.  Inputs are
cast to the models' dtype (the default dtype when they were built), so a float64 run needs
only torch.set_default_dtype.

Differences, all per member:
- epoch_seconds is the wall-clock time of the fused epoch's training part (what the member
  waited for; the K members of a fused trial share it).  A member that diverges on a
  mini-batch records the time up to that batch, as run_trial does.
- A diverged or failed member's slot is dropped from the stack at once (parameters,
  optimizer state, data order), so the others go on with less work.  Its last epoch is
  evaluated before it is dropped: a non-finite mini-batch loss stops the member before that
  batch's update, exactly like run_trial's break, and nothing changes it afterwards.
- Failures.  An exception in a step's forward/backward is attributed by replaying that batch
  for each member alone (forward and backward only change .grad, so the replay starts from the
  same state): members whose replay raises fail with their own error, the rest retry the batch
  together.  If no member fails alone (e.g. out of memory with K members), or the retry
  fails again, or anything else raises (data loading, evaluation, the optimizer step), every
  member still running fails with that error.  Members that already finished keep their
  outcomes.  Exceptions from callbacks propagate unchanged, as in run_trial.

Callbacks (member = the index of the config in ``configs``):
    on_epoch(member, epoch_dict)    after every recorded epoch of a member (run_trial's on_epoch)
    on_report(member, metrics)      the same dict plus trial_status, diverged_epoch, device,
                                    error (run_trial's on_report)
    on_finish(member, outcome)      once per member, when its outcome is final (completed,
                                    diverged or failed): a driver can record it at once
    on_progress(epoch, batch, n)    after every fused mini-batch
    on_reports(reports)             once per evaluation, the on_report calls it made as a list
                                    of (member, metrics): a driver can send them in one message
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from proxstudy.workers.config import TrialConfig
from proxstudy.workers.data import Dataset, load_dataset
from proxstudy.workers.fused_models import StackedNet, stack_models
from proxstudy.workers.fused_optim import build_stacked_optimizer
from proxstudy.workers.fused_plan import check_fusable
from proxstudy.workers.training import (
    CallbackFailed,
    TrialOutcome,
    build_trial_model,
    call_callback,
    describe_device,
    finite_or_none,
    format_error,
    record_epoch,
    resolve_device,
)
from proxstudy.workers.vocabulary import REPORT_STATUS, STATUS_DIVERGED, STATUS_FAILED

__all__ = ["run_fused_trials"]

MemberCallback = Callable[[int, dict], None]

#: Elements of all members' widest activation in one evaluation chunk (512 KB in float32):
#: measured best of 2^14 ... 2^20 for 14 and 28 digits MLPs (2x faster than 2^20).
_EVAL_CHUNK_ELEMENTS = 1 << 17
#: A member's weight matrix this large (1 MB in float32) no longer stays in cache.
_CACHED_WEIGHT_ELEMENTS = 1 << 18


def run_fused_trials(
    configs: Sequence[TrialConfig],
    on_epoch: MemberCallback | None = None,
    *,
    on_report: MemberCallback | None = None,
    on_finish: Callable[[int, TrialOutcome], None] | None = None,
    on_progress: Callable[[int, int, int], None] | None = None,
    on_reports: Callable[[list[tuple[int, dict]]], None] | None = None,
) -> list[TrialOutcome]:
    """Train the trial configs as one fused trial; one TrialOutcome per config, in order.

    The configs are validated (TrialConfig).  Raises ConfigError for configs that cannot share
    a fused trial (fused_plan.check_fusable); never for a training failure (see the module doc).
    """
    configs = list(configs)
    check_fusable(configs)
    run = _FusedRun(configs, on_epoch, on_report, on_finish, on_progress, on_reports)
    try:
        try:
            run.train()
        except CallbackFailed:
            raise
        except Exception as exc:  # a training failure is an outcome for every member still running
            running = [member for member in run.live if run.outcomes[member].status != STATUS_DIVERGED]
            run.fail(running, format_error(exc))
    except CallbackFailed as wrapped:
        raise wrapped.original from None
    return run.outcomes


@dataclass
class _Losses:
    """Full-batch evaluation of every member in a stack: (K,) float64, accuracy or None."""

    loss: torch.Tensor
    accuracy: torch.Tensor | None

    def member_values(self, slot: int) -> tuple[float, float | None]:
        accuracy = None if self.accuracy is None else self.accuracy[slot].item()
        return self.loss[slot].item(), accuracy


class _FusedRun:
    def __init__(
        self,
        configs: list[TrialConfig],
        on_epoch: MemberCallback | None,
        on_report: MemberCallback | None,
        on_finish: Callable[[int, TrialOutcome], None] | None,
        on_progress: Callable[[int, int, int], None] | None,
        on_reports: Callable[[list[tuple[int, dict]]], None] | None = None,
    ) -> None:
        self.configs = configs
        self.on_epoch, self.on_report, self.on_finish, self.on_progress = on_epoch, on_report, on_finish, on_progress
        self.on_reports = on_reports
        self.outcomes = [TrialOutcome(status=STATUS_FAILED) for _ in configs]
        #: the members still in the stack, in slot order (slot i of every stacked tensor)
        self.live: list[int] = list(range(len(configs)))
        self.initial_loss: dict[int, float] = {}
        self.training = configs[0].training
        self.classify = configs[0].model["name"] != "autoencoder"
        #: this epoch's data order and this step's rows, (K, n_train) and (K, B), slot order
        #: (empty before the first epoch)
        self.orders = torch.empty(0, dtype=torch.long)
        self.batch = torch.empty(0, dtype=torch.long)

    # ---------------------------------------------------------------------------- set-up

    def _setup(self) -> None:
        self.device = resolve_device(self.configs[0].device)
        described = describe_device(self.device)
        for outcome in self.outcomes:
            outcome.device = described
        data = load_dataset(self.configs[0].dataset, self.device)
        models = [build_trial_model(config, data.input_shape, data.num_classes) for config in self.configs]
        self.model: StackedNet = stack_models(models).to(self.device)
        self.model.train()
        self.data = _as_dtype(data, next(self.model.parameters()).dtype)
        self.optimizer = build_stacked_optimizer(
            list(self.model.parameters()), [c.optimizer for c in self.configs], [c.lr for c in self.configs]
        )
        self.generators = [torch.Generator().manual_seed(config.seed) for config in self.configs]
        self.eval_chunk = _evaluation_chunk(self.model, self.data.x_train[:1], self.training["eval_batch_size"])

    # ---------------------------------------------------------------------------- the run

    def train(self) -> None:
        self._setup()
        self._record_epoch(0, 0.0)
        n_train = len(self.data.x_train)
        batch_size = min(self.training["batch_size"], n_train)
        n_batches = n_train // batch_size if self.training["drop_last"] else -(-n_train // batch_size)
        for epoch in range(1, self.training["epochs"] + 1):
            if not self.live:
                return
            _synchronize(self.device)
            started = time.perf_counter()
            orders = torch.stack([torch.randperm(n_train, generator=self.generators[m]) for m in self.live])
            self.orders = orders.to(self.device)
            for batch in range(n_batches):
                self.batch = self.orders[:, batch * batch_size:(batch + 1) * batch_size]
                self._step(epoch, started)
                if not self.live:
                    return
                call_callback(self.on_progress, epoch, batch + 1, n_batches)
            _synchronize(self.device)
            self._record_epoch(epoch, time.perf_counter() - started)
        # every member left completed the last epoch
        if self.live and self.data.x_test is not None and self.data.y_test is not None:
            test = self._evaluate(self.model, self.data.x_test, self.data.y_test)
            for slot, member in enumerate(self.live):
                loss, accuracy = test.member_values(slot)
                outcome = self.outcomes[member]
                outcome.test_loss, outcome.test_accuracy = finite_or_none(loss), finite_or_none(accuracy)
        finished, self.live = self.live, []
        for member in finished:
            call_callback(self.on_finish, member, self.outcomes[member])

    def _step(self, epoch: int, started: float) -> None:
        """One mini-batch for every live member: member in slot k trains on rows self.batch[k].

        A member whose mini-batch loss is not finite is recorded as diverged and dropped before
        anyone's update (run_trial breaks before its update too); the rest redo the batch.  A
        failure is attributed (see the module doc) and the rest redo the batch once."""
        failures = 0
        while self.live:
            self.optimizer.zero_grad()
            try:
                losses = self._batch_losses(self.model, self.batch)
                finite = torch.isfinite(losses.detach())
                if not bool(finite.all()):
                    diverged = [slot for slot, ok in enumerate(finite.tolist()) if not ok]
                    self._diverge_now(diverged, epoch, time.perf_counter() - started)
                    continue
                losses.sum().backward()  # d(sum)/d(loss_k) = 1: member k gets its own gradient
            except CallbackFailed:
                raise
            except Exception as exc:
                failures += 1
                if failures > 1:
                    raise  # fails every member still running (run_fused_trials)
                self._attribute_failure(exc)
                continue
            self.optimizer.step()
            return

    # ---------------------------------------------------------------------------- losses

    def _batch_losses(self, model: StackedNet, rows: torch.Tensor) -> torch.Tensor:
        """(K,) mean mini-batch losses, member k on its rows[k] of the training set."""
        x = self.data.x_train[rows]  # (K, B, ...)
        out = model(x)
        if self.classify:
            y = self.data.y_train[rows]
            return _cross_entropy(_classes_first(out), y).mean(dim=1)
        return (out - x).square().reshape(x.shape[0], -1).mean(dim=1)

    @torch.no_grad()
    def _evaluate(self, model: StackedNet, x: torch.Tensor, y: torch.Tensor) -> _Losses:
        """Mean loss (and accuracy) of every member over a whole set, in chunks, eval mode."""
        was_training = model.training
        model.eval()
        members = model.members
        total = torch.zeros(members, dtype=torch.float64, device=x.device)
        correct = torch.zeros(members, dtype=torch.int64, device=x.device)
        chunk = self.eval_chunk
        try:
            for start in range(0, len(x), chunk):
                xb, yb = x[start:start + chunk], y[start:start + chunk]
                out = model(xb, shared=True)  # (K, b, ...)
                if self.classify:
                    logits = _classes_first(out)
                    labels = yb.expand(members, -1)
                    total += _cross_entropy(logits, labels).sum(dim=1).double()
                    # max(dim=0).indices: argmax's first-maximum rule, ~20x faster than
                    # argmax over this layout's leading dimension on CPU
                    correct += (logits.max(dim=0).indices == labels).sum(dim=1)
                else:
                    total += (out - xb).square().reshape(members, -1).sum(dim=1).double() / xb[0].numel()
        finally:
            model.train(was_training)
        return _Losses(total / len(x), correct.double() / len(x) if self.classify else None)

    # ---------------------------------------------------------------------------- records

    def _record_epoch(self, epoch: int, seconds: float, model: StackedNet | None = None,
                      slots: list[int] | None = None, batch_diverged: bool = False) -> None:
        """Evaluate ``model`` (default: the whole stack) holding the members at ``slots``,
        record the epoch for each, and drop the diverged ones from the stack."""
        model = self.model if model is None else model
        members = list(self.live) if slots is None else [self.live[slot] for slot in slots]
        train = self._evaluate(model, self.data.x_train, self.data.y_train)
        val = self._evaluate(model, self.data.x_val, self.data.y_val)
        diverged = []
        reports = []
        for slot, member in enumerate(members):
            report = self._record_member(
                member, epoch, seconds, train.member_values(slot), val.member_values(slot), batch_diverged
            )
            reports.append((member, report))
            if report[REPORT_STATUS] == STATUS_DIVERGED:
                diverged.append(member)
        call_callback(self.on_reports, reports)
        self._drop(diverged)
        for member in diverged:
            call_callback(self.on_finish, member, self.outcomes[member])

    def _record_member(self, member: int, epoch: int, seconds: float, train: tuple, val: tuple,
                       batch_diverged: bool) -> dict:
        """run_trial's record for one member (the shared training.record_epoch), callbacks;
        returns the report."""
        if epoch == 0:
            self.initial_loss[member] = train[0]
        entry, report = record_epoch(self.configs[member], self.outcomes[member], epoch, seconds, train, val,
                                     self.initial_loss[member], batch_diverged=batch_diverged)
        call_callback(self.on_epoch, member, entry)
        call_callback(self.on_report, member, dict(report))
        return report

    # ---------------------------------------------------------------------------- members

    def _subset(self, slots: list[int]) -> StackedNet:
        """A copy of the stack holding only the members at ``slots`` (evaluation, replays)."""
        subset = copy.deepcopy(self.model)
        subset.select_(torch.tensor(slots, device=self.device))
        return subset

    def _diverge_now(self, slots: list[int], epoch: int, seconds: float) -> None:
        self._record_epoch(epoch, seconds, self._subset(slots), slots, batch_diverged=True)

    def _drop(self, members: list[int]) -> None:
        """Remove members from the stack: parameters, optimizer state, data order, batch rows."""
        if not members:
            return
        keep = [slot for slot, member in enumerate(self.live) if member not in members]
        self.live = [self.live[slot] for slot in keep]
        if not self.live:
            return
        index = torch.tensor(keep, device=self.device)
        self.model.select_(index)
        self.optimizer.select_(index, list(self.model.parameters()))
        if self.orders.dim() == 2:
            self.orders, self.batch = self.orders[index], self.batch[index]

    def _attribute_failure(self, exc: Exception) -> None:
        """Replay this batch's forward/backward for each member alone: fail those that raise
        alone (with their own error), or every live member if none does."""
        guilty: dict[int, str] = {}
        for slot, member in enumerate(self.live):
            try:
                alone = self._subset([slot])
                self._batch_losses(alone, self.batch[slot:slot + 1]).sum().backward()
            except Exception as own:
                guilty[member] = format_error(own)
        if not guilty:
            guilty = {member: format_error(exc) for member in self.live}
        for member, error in guilty.items():
            self.fail([member], error)

    def fail(self, members: list[int], error: str) -> None:
        """Record members as failed with ``error``, drop them, and notify."""
        for member in members:
            outcome = self.outcomes[member]
            outcome.status, outcome.error = STATUS_FAILED, error
        try:
            self._drop(members)
        except Exception:  # the stack itself is unusable: nobody is left to train
            self.live = [m for m in self.live if m not in members]
        for member in members:
            call_callback(self.on_finish, member, self.outcomes[member])


def _evaluation_chunk(model: StackedNet, sample: torch.Tensor, eval_batch_size: int) -> int:
    """Samples per evaluation chunk: eval_batch_size (as run_trial) for models whose weights
    outgrow the cache anyway (every chunk streams them from memory, so fewer, larger chunks);
    for small models few enough that all members' activations of a chunk stay in cache.
    Chunking changes only the summation order of the losses."""
    largest_weight = max(layer.weight[0].numel() for layer in model.stacked_layers)
    if largest_weight >= _CACHED_WEIGHT_ELEMENTS:
        return eval_batch_size
    return max(1, min(eval_batch_size, _EVAL_CHUNK_ELEMENTS // model.widest_activation(sample)))


def _classes_first(logits: torch.Tensor) -> torch.Tensor:
    """(K, n, C) -> contiguous (C, K, n).  Softmax over a short last dimension (10 classes) runs
    ~20 ns per element on CPU, over the leading dimension of this layout ~50x faster."""
    return logits.permute(2, 0, 1).contiguous()


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy (K, n) from classes-first logits (C, K, n), labels (K, n): the
    same formula as F.cross_entropy, -log_softmax(logits)[label]."""
    return -torch.log_softmax(logits, dim=0).gather(0, labels[None]).squeeze(0)


def _as_dtype(data: Dataset, dtype: torch.dtype) -> Dataset:
    """The data set with floating-point inputs in the model's dtype (a no-op for float32)."""
    def cast(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(dtype) if tensor.is_floating_point() else tensor

    return Dataset(
        name=data.name, x_train=cast(data.x_train), y_train=data.y_train, x_val=cast(data.x_val),
        y_val=data.y_val, x_test=None if data.x_test is None else cast(data.x_test), y_test=data.y_test,
        num_classes=data.num_classes, input_shape=data.input_shape,
    )


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
