"""What detector training does when it cannot go on: detectron2's trainers with the package's
non-finite-loss check, and a checkpoint of the last good state when the data breaks.

- Bad data met by the training loader (:class:`~mvit_backbone.data.checks.DatasetError`, raised
  before the model sees the batch): the weights are those after the last finished iteration,
  so they are saved as ``model_<iteration>.pth`` (main process) and the run stops with
  :class:`~mvit_backbone.engine.loop.TrainingStopped` naming the file and the checkpoint.
- A non-finite loss (:class:`~mvit_backbone.engine.loop.NonFiniteLossError`, checked before the
  optimizer step; or detectron2's own ``FloatingPointError`` on NaN boxes): nothing is saved
  (those weights lead to the bad loss); the run stops naming the iteration, the loss terms and
  the last good checkpoint, which is kept.

In a distributed run both checks are agreed by every process (one all-reduce each,
:func:`~mvit_backbone.engine.loop.raise_if_any_failed`): one process meeting either stops all of
them at the same iteration, and the others' messages name its rank.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import torch
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.utils import comm

from ..data.checks import DatasetError, worker_message
from .loop import (
    NonFiniteLossError,
    agreed_batches,
    check_finite_loss_everywhere,
    stopped_on_bad_data,
    stopped_on_non_finite_loss,
)


class StopTogetherChecks:
    """Mixin for detectron2's trainers: the loss check of :func:`check_finite_loss` (this
    package's wording) before the optimizer step, and batches confirmed by every process
    (:func:`agreed_batches`), so that bad data or a non-finite loss in one process of a
    distributed run stops them all."""

    @property
    def _data_loader_iter(self):
        # SimpleTrainer.run_step takes each batch from here (detectron2's place to wrap the loader)
        if self._data_loader_iter_obj is None:
            self._data_loader_iter_obj = agreed_batches(self.data_loader)
        return self._data_loader_iter_obj

    def _write_metrics(self, loss_dict: Mapping[str, torch.Tensor], data_time: float,
                       prefix: str = "", iter: int | None = None) -> None:
        terms = {k: float(v.detach()) for k, v in loss_dict.items()}
        check_finite_loss_everywhere(sum(terms.values()), terms, self.iter if iter is None else iter)
        super()._write_metrics(loss_dict, data_time, prefix=prefix, iter=iter)


class CheckedSimpleTrainer(StopTogetherChecks, SimpleTrainer):
    """detectron2's ``SimpleTrainer`` with :class:`StopTogetherChecks`."""


class CheckedAMPTrainer(StopTogetherChecks, AMPTrainer):
    """detectron2's ``AMPTrainer`` with :class:`StopTogetherChecks`."""


def train_saving_on_error(train: Callable[[], Any], trainer: Any, checkpointer: Any,
                          start_iter: int) -> Any:
    """Run ``train()``; on bad data save the last good state, on either kind of stop raise
    :class:`~mvit_backbone.engine.loop.TrainingStopped` with what happened and where the last
    good state is.

    ``trainer`` is detectron2's trainer (its ``iter`` is the iteration that failed);
    ``checkpointer`` a :class:`~mvit_backbone.checkpoint.SafeDetectionCheckpointer`."""
    try:
        return train()
    except FloatingPointError as e:  # our loss check, or detectron2's checks of boxes
        if not isinstance(e, NonFiniteLossError):
            e = NonFiniteLossError(f"{e} (iteration {trainer.iter})")
        last = checkpointer.get_checkpoint_file() if checkpointer.has_checkpoint() else None
        raise stopped_on_non_finite_loss(e, last) from None
    except DatasetError as e:
        done = trainer.iter - 1  # iterations up to this one finished; this one never ran
        saved = None
        if done >= start_iter:  # every process stops here; the main one saves
            name = f"model_{done:07d}"
            if comm.is_main_process():
                trainer.iter = done
                checkpointer.save(name, iteration=done)
            saved = os.path.join(checkpointer.save_dir, name + ".pth")
        raise stopped_on_bad_data(worker_message(e), saved) from None
