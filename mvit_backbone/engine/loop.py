"""The one training loop of the package's own trainers (ImageNet classification, the demo's
backbone pre-training and its budget-paced detector training). detectron2's LazyConfig and
yacs trainers keep detectron2's hooks and print the same progress line (``progress.py``)."""
from __future__ import annotations

import contextlib
import logging
import math
import statistics
import time
from typing import Any, Callable, ContextManager, Iterable, Iterator, Mapping

import torch
import torch.nn as nn

from ..data.checks import DatasetError, worker_message
from .progress import Progress

logger = logging.getLogger("mvit_backbone.engine")

LossFn = Callable[[Any], "torch.Tensor | Mapping[str, torch.Tensor]"]


class NonFiniteLossError(FloatingPointError):
    """The loss of an iteration is NaN or infinite; the message names the iteration and the
    loss terms. Raised before the optimizer step, so the weights are those of the last good
    iteration."""


class TrainingStopped(RuntimeError):
    """Training stopped on bad data or a non-finite loss; the message says why, names the file or
    the iteration, and the checkpoint that holds the last good state."""


def stopped_on_non_finite_loss(error: NonFiniteLossError, last_checkpoint: str | None
                               ) -> TrainingStopped:
    """The stop of a run whose loss went NaN or infinite: nothing is saved (those weights lead
    to the bad loss), the last good checkpoint is kept."""
    kept = (f"the last good checkpoint {last_checkpoint} is kept" if last_checkpoint
            else "no checkpoint was written yet")
    return TrainingStopped(f"training stopped: {error}; {kept}")


def stopped_on_bad_data(message: str, saved: str | None, skip_option: str = "--skip-bad-data"
                        ) -> TrainingStopped:
    """The stop of a run whose data loader met a file it cannot read: ``saved`` is the
    checkpoint of the last good state written just before (None: nothing new to save);
    ``skip_option`` is the command-line option that skips such files."""
    where = (f"the last good state is saved in {saved}" if saved
             else "no iteration finished since the last checkpoint")
    return TrainingStopped(f"training stopped on bad data: {message}; {where}; fix the file or "
                           f"pass {skip_option}, then --resume")


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def raise_if_any_failed(error: BaseException | None, raise_as: type[Exception]) -> None:
    """Raise ``error`` here, and in a distributed run on every process if any process failed
    at this point of the iteration, so that all stop together (one all-reduce) instead of the
    others waiting forever in the next collective. A process that did not fail raises
    ``raise_as`` with the failing processes' messages, each after its rank. Every process of
    the run must call this at the same point of each iteration."""
    if _world_size() == 1:
        if error is not None:
            raise error
        return
    dist = torch.distributed
    device = (torch.device("cuda", torch.cuda.current_device())
              if dist.get_backend() == "nccl" else torch.device("cpu"))
    failed = torch.tensor([int(error is not None)], device=device)
    dist.all_reduce(failed, op=dist.ReduceOp.MAX)
    if not failed.item():
        return
    messages: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(messages, None if error is None else worker_message(error))
    if error is not None:
        raise error
    raise raise_as("; ".join(f"rank {rank}: {m}" for rank, m in enumerate(messages) if m))


def _as_float(value: "torch.Tensor | float") -> float:
    # detached: float() of a tensor that requires grad warns
    return float(value.detach() if isinstance(value, torch.Tensor) else value)


def check_finite_loss(total: "torch.Tensor | float", terms: Mapping[str, "torch.Tensor | float"],
                      iteration: int) -> None:
    """Raise :class:`NonFiniteLossError` when ``total`` is NaN or infinite. The one wording of
    this error for every trainer (the package's loop, detectron2's trainers)."""
    value = _as_float(total)
    if math.isfinite(value):
        return
    named = ", ".join(f"{k}={_as_float(v):.6g}" for k, v in terms.items()) or "none"
    raise NonFiniteLossError(f"non-finite loss {value} at iteration {iteration} "
                             f"(loss terms: {named})")


def check_finite_loss_everywhere(total: "torch.Tensor | float",
                                 terms: Mapping[str, "torch.Tensor | float"], iteration: int) -> None:
    """:func:`check_finite_loss` in every process of a run: a non-finite loss in any of them
    raises :class:`NonFiniteLossError` in all (:func:`raise_if_any_failed`)."""
    error = None
    try:
        check_finite_loss(total, terms, iteration)
    except NonFiniteLossError as e:
        error = e
    raise_if_any_failed(error, NonFiniteLossError)


def agreed_batches(batches: Iterable, data_errors: tuple[type[BaseException], ...] = (DatasetError,)
                   ) -> Iterator:
    """The batches of ``batches``, each confirmed by every process of a run: one that a process
    cannot load (one of ``data_errors``) raises in all (:func:`raise_if_any_failed`; the others
    raise :class:`DatasetError` naming the rank and the file)."""
    loader = iter(batches)
    while True:
        batch, error = None, None
        try:
            batch = next(loader)
        except StopIteration:
            return
        except data_errors as e:
            error = e
        raise_if_any_failed(error, DatasetError)
        yield batch


class TrainLoop:
    """Runs training iterations of ``model``: the learning rate of each optimizer group set to
    its ``initial_lr`` times ``schedule(fraction of training done)``, ``loss_fn(batch)`` (a loss
    tensor, or a dict of losses that are summed) under ``autocast()``, a check that the loss is
    finite, backward (through ``scaler`` when given: AMP), optional gradient clipping, the
    optimizer step; every ``log_period`` iterations a progress line with ETA and peak memory.

    Args:
        model: put in train mode when a run starts (a ``DistributedDataParallel`` wrapper, or
            the model itself).
        optimizer: its groups' ``lr`` at construction become their ``initial_lr`` (kept in the
            optimizer's ``state_dict``, so a resumed optimizer brings it back).
        loss_fn: batch -> loss; it moves the batch to the device and calls the model.
        schedule: fraction of training done in [0, 1] -> learning-rate multiplier
            (e.g. :class:`~mvit_backbone.engine.schedule.WarmupCosine`).
        scaler: a ``torch.amp.GradScaler`` for mixed precision, or None.
        clip_grad: maximum L2 norm of all gradients; 0 = off.
        autocast: a factory of the context the forward runs in (``torch.autocast(...)``).
        log_period: iterations between progress lines.
        log: where the progress lines go.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn,
                 schedule: Callable[[float], float], *, scaler: torch.amp.GradScaler | None = None,
                 clip_grad: float = 0.0,
                 autocast: Callable[[], ContextManager] = contextlib.nullcontext,
                 log_period: int = 20, log: logging.Logger = logger):
        self.model, self.optimizer, self.loss_fn, self.schedule = model, optimizer, loss_fn, schedule
        self.scaler, self.clip_grad, self.autocast = scaler, clip_grad, autocast
        self.log_period, self.log = log_period, log
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])

    def set_lr(self, where: float) -> float:
        """Set every group's lr for the fraction ``where`` of training; returns the first's."""
        factor = self.schedule(where)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        return self.optimizer.param_groups[0]["lr"]

    def step(self, batch: Any, iteration: int) -> dict[str, float]:
        """One iteration on ``batch``; returns the losses (``loss`` is their sum) as floats.

        Raises:
            NonFiniteLossError: the loss is NaN or infinite (before any weight changes), here
                or in another process of a distributed run.
        """
        with self.autocast():
            out = self.loss_fn(batch)
        losses = dict(out) if isinstance(out, Mapping) else {}
        loss = sum(losses.values()) if losses else out
        check_finite_loss_everywhere(loss, losses, iteration)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        if self.clip_grad > 0:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            nn.utils.clip_grad_norm_(params, self.clip_grad)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return {"loss": loss.item(), **{k: v.item() for k, v in losses.items()}}

    def run(self, batches: Iterable, progress: Progress, *, budget_seconds: float | None = None,
            on_step: Callable[[int, dict[str, float]], None] | None = None,
            prefix: str = "", data_errors: tuple[type[BaseException], ...] = (DatasetError,)
            ) -> dict[str, float]:
        """Train on ``batches`` until they run out or ``progress.done`` reaches ``progress.total``.

        ``progress`` counts the iterations of the whole training (it may span several runs, one
        per epoch); the schedule is read at ``progress.done / progress.total``. With
        ``budget_seconds``, ``progress.total`` is re-estimated every 5 iterations from the median
        iteration time so that training ends about ``budget_seconds`` after ``progress`` started.
        ``on_step(iteration, metrics)`` runs after each iteration, with the losses, ``lr``,
        ``time`` and ``data_time`` (seconds). Progress lines start with ``prefix``. A batch that
        cannot be loaded (one of ``data_errors``) or a non-finite loss stops every process of a
        distributed run (:func:`raise_if_any_failed`; the others raise :class:`DatasetError` or
        :class:`NonFiniteLossError` naming the rank and its message).

        Returns this run's iterations, mean ``loss`` and wall ``seconds``.
        """
        self.model.train()
        progress.mark()
        start, losses = time.perf_counter(), []
        recent: dict[str, list[float]] = {}
        batch_iter = agreed_batches(batches, data_errors)
        logged = True
        while progress.done < progress.total:
            t0 = time.perf_counter()
            batch = next(batch_iter, None)
            if batch is None:
                break
            data_time = time.perf_counter() - t0
            lr = self.set_lr(progress.done / progress.total)
            metrics = self.step(batch, progress.done)
            seconds = progress.step()
            losses.append(metrics["loss"])
            for k, v in metrics.items():
                recent.setdefault(k, []).append(v)
            if budget_seconds is not None and progress.done % 5 == 0:
                left = budget_seconds - progress.elapsed
                progress.total = max(progress.done + int(left / progress.seconds_per_step()),
                                     progress.done + 1)
            if on_step is not None:
                on_step(progress.done - 1, {**metrics, "lr": lr, "time": seconds,
                                            "data_time": data_time})
            logged = progress.done % self.log_period == 0 or progress.done == progress.total
            if logged:
                self._log(progress, recent, lr, prefix)
                recent = {}
        if not logged:
            self._log(progress, recent, self.optimizer.param_groups[0]["lr"], prefix)
        return {"iters": len(losses), "loss": statistics.fmean(losses) if losses else float("nan"),
                "seconds": time.perf_counter() - start}

    def _log(self, progress: Progress, recent: dict[str, list[float]], lr: float,
             prefix: str) -> None:
        metrics = {k: statistics.median(v) for k, v in recent.items()}
        metrics["lr"] = lr
        self.log.info(prefix + progress.line(metrics))
