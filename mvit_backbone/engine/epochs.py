"""The epoch trainers' run (ImageNet classification, video): what both do around their data,
loss and metrics.

:class:`EpochRun` holds one process's run: output folder and log, threads and seeds, AMP, the
repeated-augmentation train loader, mixup and the loss, resuming from the newest intact
checkpoint, one epoch of :class:`~mvit_backbone.engine.loop.TrainLoop` that saves the last good
state when the data loader meets a broken file, checkpoints written before evaluation (the one
before stays as ``checkpoint_previous.pth``), and the history as JSON, tensorboard scalars and a
PNG curve. :func:`run_epochs` is the trainers' ``run``: it joins the process group and dispatches
to training or evaluation.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from ..checkpoint import (
    CheckpointReadError,
    atomic_save,
    atomic_write_text,
    checkpoint_candidates,
    load_newest_intact,
)
from ..checkpoint.saving import temporary_path
from ..data.checks import DatasetError, worker_message
from .loop import NonFiniteLossError, TrainLoop, stopped_on_bad_data, stopped_on_non_finite_loss
from .memory import PeakMemoryMeter
from .progress import Progress
from .runs import (CheckpointError, DistInfo, init_distributed, load_model_state,
                   load_training_checkpoint, parse_set_overrides, setup_run_logging)

LAST_CHECKPOINT = "checkpoint_last.pth"
PREVIOUS_CHECKPOINT = "checkpoint_previous.pth"


@dataclass
class EpochTrainConfig:
    """The settings :class:`EpochRun` and both trainers' recipes read. Each trainer's config
    adds its data, model and evaluation settings and its recipe's defaults; YAML configs and
    ``--set key=value`` fill the fields."""

    output_dir: str = "output"
    model: str = ""
    model_kwargs: dict = dataclasses.field(default_factory=dict)
    drop_path: float | None = None  # None: the model's default for its size
    weights: str = ""  # initial weights (any format mvit_backbone.load_checkpoint reads)
    # optimisation
    epochs: int = 100
    warmup_epochs: float = 10.0
    batch_size: int = 64  # per process
    base_lr: float = 1e-3
    base_batch_size: int = 512  # lr = base_lr * total batch / base_batch_size
    warmup_start_lr: float = 1e-6
    end_lr: float = 1e-6
    scale_start_end_lr: bool = False  # warmup_start_lr and end_lr scale with the batch as base_lr
    weight_decay: float = 0.05
    # no weight decay on position embeddings, rel-pos tables and the class token (1-d parameters
    # never get any)
    zero_decay_pos_cls: bool = True
    betas: tuple = (0.9, 0.999)  # adamw
    clip_grad: float = 0.0  # max L2 norm of the gradients; 0 = off
    amp: bool = True  # used on CUDA only
    amp_dtype: str = "float16"
    # augmentation (timm)
    auto_augment: str = ""
    hflip: float = 0.5
    train_scale: tuple = (0.08, 1.0)
    train_ratio: tuple = (3.0 / 4.0, 4.0 / 3.0)
    interpolation: str = "bicubic"
    reprob: float = 0.25
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    label_smoothing: float = 0.1
    repeated_aug: int = 1  # repeats per sample; 1 = off
    # run
    seed: int = 0
    num_workers: int = 8
    threads: int = 0  # torch intra-op threads per process; 0 = cores / processes - workers
    log_period: int = 20
    checkpoint_period: int = 0  # also keep checkpoint_{epoch}.pth every N epochs; 0 = only last
    eval_batch_size: int = 0  # 0 = batch_size

    def peak_lr(self, world_size: int) -> float:
        """The linearly scaled learning rate for the total batch ``batch_size * world_size``."""
        return self.base_lr * self.batch_size * world_size / self.base_batch_size


@dataclass
class Resumed:
    """Where a resumed run starts: the checkpoint read (``path`` None: a fresh start)."""

    path: Path | None = None
    checkpoint: dict[str, Any] = dataclasses.field(default_factory=dict)
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    start_epoch: int = 0
    skip_batches: int = 0  # iterations of ``start_epoch`` done before the checkpoint


class EpochRun:
    """State of one training or evaluation run (one per process) of an epoch trainer.

    Subclasses set ``self.model`` and ``self.classes`` and write ``train`` and ``eval_only``.
    """

    model: nn.Module
    classes: list[str]
    # the entry point's option that skips unreadable files, named when training stops on one
    skip_option = "--skip-bad-data"

    def __init__(self, cfg: EpochTrainConfig, info: DistInfo, log: logging.Logger, deterministic: bool = False):
        self.cfg, self.info, self.log = cfg, info, log
        self.out = Path(cfg.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        setup_run_logging(log, self.out, info)
        self.threads = cfg.threads or max(1, (os.cpu_count() or 1) // info.world_size
                                          - cfg.num_workers)
        torch.set_num_threads(self.threads)
        seed = cfg.seed + info.rank
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        if deterministic:
            # cuBLAS needs this for deterministic matmuls on CUDA (read when CUDA starts)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        cuda_amp = cfg.amp and info.device.type == "cuda"
        amp_dtype = getattr(torch, cfg.amp_dtype)
        self.amp_ctx = lambda: torch.autocast("cuda", dtype=amp_dtype, enabled=cuda_amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cuda_amp and amp_dtype == torch.float16)

    @property
    def last_checkpoint(self) -> Path:
        return self.out / LAST_CHECKPOINT

    def main_first(self, make: Callable[[], Any]) -> Any:
        """``make()`` on rank 0, then on the others (a dataset rank 0 writes while they wait)."""
        if self.info.is_main:
            made = make()
        if self.info.world_size > 1:
            dist.barrier()
        if not self.info.is_main:
            made = make()
        return made

    # ---------------------------------------------------------------- model and weights
    def load_weights(self) -> None:
        """``cfg.weights`` into the model through :func:`mvit_backbone.load_checkpoint`, which
        converts official and timm layouts and inflates 2-D weights for video models."""
        from .. import load_checkpoint

        report = load_checkpoint(self.model, self.cfg.weights, strict=False)
        self.log.info("initial weights from %s: %s", self.cfg.weights, report)

    def distributed(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel when there are several processes."""
        if self.info.world_size == 1:
            return model
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[self.info.local_rank] if self.info.device.type == "cuda" else None)

    def train_loop(self, ddp: nn.Module, optimizer: torch.optim.Optimizer, loss_fn, schedule
                   ) -> TrainLoop:
        """The config's :class:`TrainLoop`. Make it before a resumed optimizer state is loaded:
        the loop records each group's peak lr in the optimizer, and the saved state brings it
        back."""
        return TrainLoop(ddp, optimizer, loss_fn, schedule, scaler=self.scaler,
                         clip_grad=self.cfg.clip_grad, autocast=self.amp_ctx,
                         log_period=self.cfg.log_period, log=self.log)

    # ---------------------------------------------------------------- data and loss
    def train_loader(self, dataset: Dataset, what: str) -> DataLoader:
        """Shuffled batches of ``dataset`` with repeated augmentation: each process sees
        ``len(dataset) / world_size`` samples per epoch, every sample ``repeated_aug`` times
        across the processes (DeiT's sampler; ``selected_round=0`` keeps small datasets whole
        where DeiT rounds the count down to a multiple of 256). ``what`` names the samples in
        the error for a dataset smaller than one batch."""
        from timm.data.distributed_sampler import RepeatAugSampler

        cfg, info = self.cfg, self.info
        sampler = RepeatAugSampler(dataset, num_replicas=info.world_size, rank=info.rank,
                                   shuffle=True, num_repeats=cfg.repeated_aug, selected_round=0)
        if len(sampler) < cfg.batch_size:
            raise ValueError(f"{len(sampler)} training {what} per process is less than one batch "
                             f"of {cfg.batch_size}")
        return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                          num_workers=cfg.num_workers, pin_memory=info.device.type == "cuda",
                          persistent_workers=cfg.num_workers > 0)

    def mixup_and_criterion(self, multi_label: bool = False) -> tuple[Any, nn.Module]:
        """``(mixup, criterion)``: timm's ``Mixup`` with label smoothing and the soft-target
        cross-entropy when mixup or cutmix is on, else ``(None, cross-entropy with label
        smoothing)``; ``multi_label``: ``(None, binary cross-entropy)``."""
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy

        cfg = self.cfg
        if multi_label:
            return None, nn.BCEWithLogitsLoss()
        if cfg.mixup > 0 or cfg.cutmix > 0:
            mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                          switch_prob=cfg.mixup_switch_prob, label_smoothing=cfg.label_smoothing,
                          num_classes=len(self.classes))
            return mixup, SoftTargetCrossEntropy()
        return None, nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    # ---------------------------------------------------------------- checkpoints
    def find_checkpoint(self, resume: str) -> tuple[Path | None, dict[str, Any]]:
        """``(path, checkpoint)`` to resume from: the file ``resume`` names, or for ``"auto"``
        the newest intact checkpoint of ``output_dir`` (``checkpoint_last.pth`` first; a
        truncated or unreadable one is reported and the next is taken); ``(None, {})`` when
        ``"auto"`` finds none. The checkpoint's classes must be this run's."""
        if resume != "auto":
            path, ckpt = Path(resume), load_training_checkpoint(resume)
        else:
            last = self.last_checkpoint
            candidates = checkpoint_candidates(self.out, "checkpoint_*.pth",
                                               last if last.exists() else None)
            if not candidates:
                self.log.info("no checkpoint in %s; starting from scratch", self.out)
                return None, {}
            try:
                path, ckpt = load_newest_intact(candidates, load_training_checkpoint,
                                                (CheckpointError,))
            except CheckpointReadError as e:
                raise CheckpointError(f"cannot resume in {self.out}: {e}") from None
        if list(ckpt["classes"]) != list(self.classes):
            raise CheckpointError(f"checkpoint {path} was trained on classes {ckpt['classes'][:5]}... "
                                  f"({len(ckpt['classes'])}); this dataset has {self.classes[:5]}... "
                                  f"({len(self.classes)})")
        return path, ckpt

    def load_for_eval(self, resume: str | None) -> tuple[str, int]:
        """Load the weights to evaluate: the checkpoint ``resume`` names (``"auto"``: the newest
        intact one) or ``cfg.weights``. Returns ``(source, epoch)``, epoch -1 for weights."""
        if resume:
            path, ckpt = self.find_checkpoint(resume)
            if path is None:
                raise CheckpointError(f"no checkpoint in {self.out} to evaluate")
            load_model_state(self.model, ckpt["model"], str(path))
            return str(path), int(ckpt["epoch"])
        if self.cfg.weights:
            self.load_weights()
            return self.cfg.weights, -1
        raise CheckpointError("eval-only needs a checkpoint: pass --resume [PATH] or --weights PATH")

    def resume(self, resume: str | None, optimizer: torch.optim.Optimizer) -> Resumed:
        """Load model, optimizer and scaler state from the checkpoint ``resume`` names (see
        :meth:`find_checkpoint`; ``None``: a fresh start)."""
        path, ckpt = self.find_checkpoint(resume) if resume else (None, {})
        if path is None:
            return Resumed()
        load_model_state(self.model, ckpt["model"], str(path))
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"checkpoint {path}: optimizer state does not fit: {e}") from e
        if "scaler" in ckpt:
            self.scaler.load_state_dict(ckpt["scaler"])
        resumed = Resumed(path, ckpt, self._with_evaluations(list(ckpt["history"]), path.parent),
                          int(ckpt["epoch"]) + 1, int(ckpt.get("partial_epoch_iterations", 0)))
        self.log.info("resumed from %s at epoch %d%s", path, resumed.start_epoch,
                      f", iteration {resumed.skip_batches} of the epoch"
                      if resumed.skip_batches else "")
        return resumed

    @staticmethod
    def _with_evaluations(history: list[dict[str, Any]], folder: Path) -> list[dict[str, Any]]:
        """``history`` with the evaluation results of ``folder/history.json`` merged in: a
        checkpoint is written before its epoch's evaluation, ``history.json`` after it."""
        path = folder / "history.json"
        try:
            logged = {r["epoch"]: r for r in json.loads(path.read_text())}
        except (OSError, ValueError, KeyError, TypeError):
            return history
        return [{**logged.get(r["epoch"], {}), **r} for r in history]

    def training_state(self, optimizer: torch.optim.Optimizer, epoch: int,
                       history: list[dict[str, Any]], partial_epoch_iterations: int = 0,
                       **extra: Any) -> dict[str, Any]:
        """A training checkpoint: ``epoch`` is the last finished epoch, and
        ``partial_epoch_iterations`` the iterations of the next one already done."""
        return {
            "model": self.model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            **extra,
            "epoch": epoch,
            "partial_epoch_iterations": partial_epoch_iterations,
            "classes": list(self.classes),
            "history": history,
            "config": dataclasses.asdict(self.cfg),
        }

    def save(self, state: dict[str, Any], epoch: int | None = None) -> None:
        """Write ``checkpoint_last.pth`` (the one before it stays as ``checkpoint_previous.pth``,
        a fallback for resuming) and, after every ``checkpoint_period``-th finished ``epoch``,
        a copy ``checkpoint_<epoch>.pth``. ``checkpoint_last.pth`` is in place at every moment:
        the previous one is kept through a hard link (a copy where links are not supported)
        before the new one replaces it."""
        last, previous = self.last_checkpoint, self.out / PREVIOUS_CHECKPOINT
        if last.exists():
            link = temporary_path(previous)
            link.unlink(missing_ok=True)
            try:
                os.link(last, link)
            except OSError:
                shutil.copyfile(last, link)
            os.replace(link, previous)
        atomic_save(state, last)
        period = self.cfg.checkpoint_period
        if epoch is not None and period and (epoch + 1) % period == 0:
            atomic_save(state, self.out / f"checkpoint_{epoch + 1:04d}.pth")

    # ---------------------------------------------------------------- epochs
    def progress(self, iters: int, resumed: Resumed) -> Progress:
        """Progress with ETA over all epochs' iterations, counting those already done."""
        return Progress(self.cfg.epochs * iters,
                        done=resumed.start_epoch * iters + resumed.skip_batches,
                        memory=PeakMemoryMeter(self.info.device))

    def run_epoch(self, loop: TrainLoop, loader: DataLoader, progress: Progress, epoch: int,
                  skip_batches: int, state: Callable[[int, int], dict[str, Any]], on_step,
                  data_errors: tuple[type[BaseException], ...] = (DatasetError,)
                  ) -> dict[str, float]:
        """One epoch of ``loop`` over ``loader`` without its first ``skip_batches`` batches.

        A non-finite loss stops training and keeps the last checkpoint. A file the loader cannot
        read (one of ``data_errors``) stops it after saving ``state(epoch - 1, iterations
        done)``: the batch never reached the model, so the weights are those of the last
        finished iteration."""
        loader.sampler.set_epoch(epoch)
        last = self.last_checkpoint
        try:
            return loop.run(self._skip_batches(loader, skip_batches), progress, on_step=on_step,
                            prefix=f"epoch {epoch + 1}/{self.cfg.epochs}  ",
                            data_errors=data_errors)
        except NonFiniteLossError as e:
            raise stopped_on_non_finite_loss(e, str(last) if last.exists() else None) from None
        except data_errors as e:
            done = progress.done - epoch * len(loader)
            saved = None
            if done > skip_batches:  # every process stops here; the main one saves
                if self.info.is_main:
                    self.save(state(epoch - 1, done))
                saved = str(last)
            raise stopped_on_bad_data(worker_message(e), saved, self.skip_option) from None

    @staticmethod
    def _skip_batches(loader: DataLoader, batches: int) -> DataLoader:
        """``loader`` for this epoch without its first ``batches`` batches (resuming in the
        middle of an epoch: the sampler's order is fixed by its epoch)."""
        if not batches:
            return loader
        indices = list(iter(loader.sampler))[batches * loader.batch_size:]
        return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=indices,
                          drop_last=True, num_workers=loader.num_workers,
                          pin_memory=loader.pin_memory, collate_fn=loader.collate_fn)

    @contextlib.contextmanager
    def stop_on_bad_eval_data(self, data_errors: tuple[type[BaseException], ...] = (DatasetError,)
                              ) -> Iterator[None]:
        """Evaluation after the epoch's checkpoint: a file it cannot read stops training with
        a message naming the file and that checkpoint."""
        try:
            yield
        except data_errors as e:
            raise stopped_on_bad_data(worker_message(e), str(self.last_checkpoint),
                                      self.skip_option) from None

    # ---------------------------------------------------------------- outputs
    def tensorboard(self):
        """A tensorboard writer into ``output_dir/tb`` on rank 0; ``None`` on the others."""
        if not self.info.is_main:
            return None
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.out / "tb"))

    def step_logger(self, tb) -> Callable[[int, dict[str, float]], None]:
        """An ``on_step`` for :meth:`TrainLoop.run` writing loss and lr every ``log_period``."""
        def log_step(iteration: int, metrics: dict[str, float]) -> None:
            if tb is not None and (iteration + 1) % self.cfg.log_period == 0:
                tb.add_scalar("train/loss", metrics["loss"], iteration)
                tb.add_scalar("train/lr", metrics["lr"], iteration)
        return log_step

    def write_history(self, history: list[dict[str, Any]], tb,
                      plot: Callable[[list[dict[str, Any]], Path], None],
                      score_prefixes: tuple[str, ...] = ("val_",)) -> None:
        """The last epoch's loss, lr and scores (keys starting with ``score_prefixes``) to
        tensorboard, the history to ``history.json`` and ``plot`` to ``training_curve.png``."""
        rec = history[-1]
        for k, v in rec.items():
            if k.startswith(score_prefixes) or k in ("train_loss", "lr"):
                tb.add_scalar(f"epoch/{k}", v, rec["epoch"] + 1)
        tb.flush()
        atomic_write_text(self.out / "history.json", json.dumps(history, indent=1))
        plot(history, self.out / "training_curve.png")

    def finish(self, metrics: dict[str, Any], tb, t_start: float) -> dict[str, Any]:
        """Add the training time, close tensorboard, write ``metrics.json`` (rank 0)."""
        metrics["train_time_s"] = time.time() - t_start
        if tb is not None:
            tb.close()
        if self.info.is_main:
            (self.out / "metrics.json").write_text(json.dumps(metrics, indent=1))
            self.log.info("final: %s", json.dumps(metrics["final"]))
        return metrics

    def write_eval_metrics(self, metrics: dict[str, Any]) -> dict[str, Any]:
        if self.info.is_main:
            (self.out / "eval_metrics.json").write_text(json.dumps(metrics, indent=1))
        return metrics


def run_epochs(make_run: Callable[[DistInfo], EpochRun], resume: str | None = None,
               eval_only: bool = False) -> dict[str, Any]:
    """Train (or with ``eval_only`` evaluate) the run ``make_run`` builds under the current
    process group; returns its metrics.

    ``resume``: ``None`` (fresh start), ``"auto"`` (the newest intact checkpoint of
    ``output_dir``, if any) or a checkpoint path (must exist).
    """
    info = init_distributed()
    try:
        run = make_run(info)
        return run.eval_only(resume) if eval_only else run.train(resume)
    finally:
        if info.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def epoch_run_parser(description: str, default_config: str, eval_help: str,
                     weights_help: str) -> argparse.ArgumentParser:
    """The command line both epoch trainers share (config, output, budget, weights, resume,
    eval-only, ``--set`` overrides); each entry point adds its data flags."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", "--config", dest="config", default=default_config,
                   help="YAML config (default: %(default)s)")
    p.add_argument("--output-dir", help="where checkpoints, logs, metrics and plots go")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="per process")
    p.add_argument("--weights", help=weights_help)
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from PATH, or from OUTPUT_DIR/checkpoint_last.pth if no PATH")
    p.add_argument("--eval-only", action="store_true", help=eval_help)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field; VALUE is parsed as YAML, numbers such as 1e6 "
                        "as numbers; a value of the wrong type is an error (repeatable)")
    return p


def overrides_from_args(args: argparse.Namespace, fields: Sequence[str]) -> dict[str, Any]:
    """Config overrides from the command line: the given ``fields`` that were set (flags that
    are switched on count as True), then the ``--set`` items."""
    overrides = {f: getattr(args, f) for f in fields if getattr(args, f) not in (None, False)}
    overrides.update(parse_set_overrides(args.set))
    return overrides
