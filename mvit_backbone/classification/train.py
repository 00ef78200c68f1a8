"""ImageNet-style training and evaluation of the classification models (MViTv2 App. B.2).

The recipe: AdamW with the learning rate scaled linearly from ``base_lr`` per ``base_batch_size``
images, linear warm-up then half-period cosine (stepped every iteration), weight decay on weight
matrices only (not on norms and biases; optionally not on position embeddings, relative
positions and the class token), optional gradient clipping, AMP on CUDA, optional EMA of the
weights. Augmentation is timm's:
inception crop + RandAugment + random erasing (``timm.data.create_transform``), mixup/cutmix with
label smoothing (``timm.data.Mixup`` + ``SoftTargetCrossEntropy``) and repeated augmentation
(``timm.data.distributed_sampler.RepeatAugSampler``). Evaluation follows the paper's two
protocols: ``center`` (resize the shorter side to ``img_size / eval_crop_pct``, centre crop) and
``full`` (resize the whole image to ``img_size`` x ``img_size``).

Distributed training runs through ``torch.distributed`` under ``torchrun`` (NCCL on CUDA, gloo on
CPU). Rank 0 writes, under ``output_dir``: ``checkpoint_last.pth`` every epoch, ``log.txt``,
tensorboard scalars in ``tb/``, ``history.json``, ``training_curve.png`` and, at the end,
``metrics.json`` (``eval_metrics.json`` for ``eval_only``).

:func:`run` is the entry point; ``projects/MViTv2/train_imagenet.py`` only parses arguments. The
iterations run in the shared :class:`~mvit_backbone.engine.loop.TrainLoop`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from PIL import Image
from torch.utils.data import DataLoader, Subset
from torchvision.datasets import ImageFolder

from ..checkpoint import (
    CheckpointReadError,
    atomic_save,
    atomic_write_text,
    checkpoint_candidates,
    load_newest_intact,
)
from ..checkpoint.saving import temporary_path
from ..data.checks import (
    DatasetError,
    Problem,
    SkipCounter,
    check_image_files,
    fail_or_skip,
    worker_message,
)
from ..data.image_folder import write_synthetic_image_folder
from ..engine.loop import (
    NonFiniteLossError,
    TrainLoop,
    stopped_on_bad_data,
    stopped_on_non_finite_loss,
)
from ..engine.memory import PeakMemoryMeter
from ..engine.optim import make_optimizer
from ..engine.progress import Progress
from ..engine.runs import (CheckpointError, DistInfo, accuracy_counts, all_reduce_sum,
                           config_from_dict, init_distributed, load_model_state,
                           load_training_checkpoint, load_yaml_config,
                           setup_run_logging)
from ..engine.runs import plot_history as plot_runs_history
from ..engine.schedule import WarmupCosine, recipe_lr_multiplier
from .models import create_model

logger = logging.getLogger("mvit_backbone.classification.train")

EVAL_PROTOCOLS = ("center", "full")


class CorruptImageError(DatasetError):
    """An image file of the dataset cannot be decoded; the message names the file."""


@dataclass
class TrainConfig:
    """Every setting of a run. YAML configs and ``--set key=value`` fill these fields."""

    # data: an ImageFolder root with train/ and val/; empty -> the synthetic dataset
    data_dir: str = ""
    synthetic_dir: str = "datasets/synthetic_shapes"
    synthetic_train_per_class: int = 300
    synthetic_val_per_class: int = 50
    synthetic_image_size: int = 72
    output_dir: str = "output/mvitv2_imagenet"
    # model
    model: str = "mvitv2_t"
    model_kwargs: dict = field(default_factory=dict)
    img_size: int = 224
    drop_path: float | None = None  # None: the model's default for its size
    head_dropout: float = 0.0
    weights: str = ""  # initial weights (any format mvit_backbone.load_checkpoint reads)
    # optimisation
    epochs: int = 300
    warmup_epochs: float = 70.0
    batch_size: int = 64  # per process
    base_lr: float = 2e-3
    base_batch_size: int = 2048  # lr = base_lr * total batch / base_batch_size
    warmup_start_lr: float = 1e-6
    end_lr: float = 1e-6
    scale_start_end_lr: bool = False  # warmup_start_lr and end_lr scale with the batch as base_lr
    weight_decay: float = 0.05
    # no weight decay on position embeddings, rel-pos tables and the class token (1-d parameters
    # never get any)
    zero_decay_pos_cls: bool = True
    betas: tuple = (0.9, 0.999)
    clip_grad: float = 0.0  # max L2 norm of the gradients; 0 = off
    amp: bool = True  # used on CUDA only
    amp_dtype: str = "float16"
    ema: bool = False
    ema_decay: float = 0.9999
    # augmentation (timm)
    auto_augment: str = "rand-m9-mstd0.5-inc1"
    color_jitter: float = 0.4
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
    repeated_aug: int = 3  # repeats per sample; 1 = off
    eval_crop_pct: float = 0.875  # 224/256
    eval_protocols: tuple = EVAL_PROTOCOLS  # evaluated every epoch; the final eval does both
    # run
    seed: int = 0
    num_workers: int = 8
    threads: int = 0  # torch intra-op threads per process; 0 = cores / processes - workers
    log_period: int = 20
    checkpoint_period: int = 0  # also keep checkpoint_{epoch}.pth every N epochs; 0 = only last
    eval_batch_size: int = 0  # 0 = batch_size
    # data problems (docs/RELIABILITY.md): decode every image before training; skip broken
    # images (a warning each, a count at the end) instead of stopping with an error naming them
    check_data: bool = False
    skip_bad_data: bool = False
    # deterministic algorithms (torch.use_deterministic_algorithms): identical runs, slower
    deterministic: bool = False

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build from a dict, rejecting unknown keys; lists become tuples where fields are tuples."""
        return config_from_dict(cls, values)

    def peak_lr(self, world_size: int) -> float:
        """The linearly scaled learning rate for the total batch ``batch_size * world_size``."""
        return self.base_lr * self.batch_size * world_size / self.base_batch_size


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML config (``None``: the dataclass defaults) and apply ``overrides``."""
    return load_yaml_config(TrainConfig, path, overrides)


# --------------------------------------------------------------------------- optimisation


def lr_multiplier(cfg: TrainConfig, peak_lr: float) -> WarmupCosine:
    """The learning rate over training as a multiple of ``peak_lr``
    (:func:`~mvit_backbone.engine.schedule.recipe_lr_multiplier` of the config's fields)."""
    return recipe_lr_multiplier(cfg.epochs, cfg.warmup_epochs, peak_lr, cfg.base_lr,
                                cfg.warmup_start_lr, cfg.end_lr, cfg.scale_start_end_lr)


def build_optimizer(model: nn.Module, cfg: TrainConfig, peak_lr: float) -> torch.optim.AdamW:
    """AdamW over the recipe's weight-decay groups at ``peak_lr``; the loop scales it every step
    by :func:`lr_multiplier`."""
    return make_optimizer(model, "adamw", peak_lr, cfg.weight_decay, cfg.zero_decay_pos_cls,
                          tuple(cfg.betas))


# --------------------------------------------------------------------------- data


def load_rgb(path: str) -> Image.Image:
    """Decode an image file as RGB; :class:`CorruptImageError` naming ``path`` if it cannot be."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError) as e:
        raise CorruptImageError(f"cannot decode image file {path}: {e}") from e


def build_transform(cfg: TrainConfig, split: str):
    """timm transform: ``train`` (inception crop, RandAugment, random erasing), or an eval
    protocol ``center`` / ``full``. Output: float tensor (3, img_size, img_size), normalised."""
    from timm.data import create_transform

    if split == "train":
        return create_transform(
            cfg.img_size,
            is_training=True,
            scale=tuple(cfg.train_scale),
            ratio=tuple(cfg.train_ratio),
            hflip=cfg.hflip,
            color_jitter=cfg.color_jitter,
            auto_augment=cfg.auto_augment or None,
            interpolation=cfg.interpolation,
            re_prob=cfg.reprob,
            re_mode="pixel",
            re_count=1,
        )
    if split == "center":
        return create_transform(cfg.img_size, is_training=False, interpolation=cfg.interpolation,
                                crop_pct=cfg.eval_crop_pct, crop_mode="center")
    if split == "full":
        return create_transform(cfg.img_size, is_training=False, interpolation=cfg.interpolation,
                                crop_pct=1.0, crop_mode="squash")
    raise ValueError(f"split must be 'train' or one of {EVAL_PROTOCOLS}, got {split!r}")


def dataset_root(cfg: TrainConfig) -> Path:
    """The ImageFolder root: ``data_dir``, or the synthetic dataset (written if absent)."""
    if cfg.data_dir:
        root = Path(cfg.data_dir)
        for split in ("train", "val"):
            if not (root / split).is_dir():
                raise FileNotFoundError(f"{root / split} is not a directory; expected the "
                                        f"ImageNet layout {root}/{{train,val}}/<class>/<image>")
        return root
    return write_synthetic_image_folder(
        cfg.synthetic_dir,
        train_per_class=cfg.synthetic_train_per_class,
        val_per_class=cfg.synthetic_val_per_class,
        image_size=cfg.synthetic_image_size,
        seed=cfg.seed,
    )


class CheckedImageFolder(ImageFolder):
    """``torchvision`` ImageFolder that names the files it cannot use.

    At construction, an empty (0-byte) file is an error naming it, or with ``skip_bad_data``
    left out (a warning each). An image that cannot be decoded when read raises
    :class:`CorruptImageError` naming it, or with ``skip_bad_data`` is skipped (one warning per
    file, counted in ``skipped``): in training (``substitute``) the next readable image takes
    its place so that batches keep their size; in evaluation the item is ``None`` and
    :func:`collate_readable` leaves it out. :meth:`check` decodes every file beforehand.
    """

    def __init__(self, root: str, transform, skip_bad_data: bool = False,
                 substitute: bool = True):
        try:
            super().__init__(root, transform=transform, loader=load_rgb)
        except FileNotFoundError as e:  # torchvision: a class folder without images
            raise DatasetError(f"image folder {root}: {e}") from None
        self.skip_bad_data, self.substitute = skip_bad_data, substitute
        self.skipped = SkipCounter()
        empty = [Problem(p, "is empty (0 bytes)") for p, _ in self.samples if os.path.getsize(p) == 0]
        self._drop(empty, root)

    def _drop(self, problems: list[Problem], where: str) -> None:
        fail_or_skip(problems, self.skip_bad_data, where)
        bad = {p.file for p in problems}
        if bad:
            self.samples = [s for s in self.samples if s[0] not in bad]
            self.imgs, self.targets = self.samples, [t for _, t in self.samples]

    def check(self) -> list[Problem]:
        """Decode every image (the ``check_data`` pass); broken ones are an error naming them,
        or with ``skip_bad_data`` are left out. Returns the problems found."""
        problems = check_image_files((path, None) for path, _ in self.samples)
        self._drop(problems, self.root)
        return problems

    def __getitem__(self, index: int):
        for attempt in range(len(self.samples)):
            i = (index + attempt) % len(self.samples)
            try:
                return super().__getitem__(i)
            except CorruptImageError as e:
                if not self.skip_bad_data:
                    raise
                self.skipped.skip(Problem(self.samples[i][0], str(e)))
                if not self.substitute:
                    return None
        raise DatasetError(f"image folder {self.root}: no image can be decoded")


def collate_readable(batch: list):
    """``default_collate`` of the items that are not ``None`` (skipped images); ``None`` when
    none is left."""
    batch = [b for b in batch if b is not None]
    return torch.utils.data.default_collate(batch) if batch else None


def build_dataset(root: Path, split_dir: str, transform, skip_bad_data: bool = False,
                  substitute: bool = True) -> CheckedImageFolder:
    """:class:`CheckedImageFolder` of ``root/split_dir``."""
    return CheckedImageFolder(str(root / split_dir), transform, skip_bad_data, substitute)


# --------------------------------------------------------------------------- model, checkpoints


def build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """``create_model(cfg.model)`` at ``img_size`` with the config's overrides."""
    kwargs = dict(cfg.model_kwargs)
    kwargs.setdefault("img_size", cfg.img_size)
    kwargs.setdefault("head_dropout", cfg.head_dropout)
    if cfg.drop_path is not None:
        kwargs.setdefault("drop_path_rate", cfg.drop_path)
    return create_model(cfg.model, num_classes=num_classes, **kwargs)


# --------------------------------------------------------------------------- train / evaluate


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, info: DistInfo, amp_ctx) -> dict[str, float]:
    """Top-1/top-5 (%) and mean cross-entropy over the loader's shards of all processes."""
    model.eval()
    loss_sum, n, c1, c5 = 0.0, 0, 0, 0
    for batch in loader:
        if batch is None:  # every image of the batch was skipped
            continue
        images, target = (t.to(info.device) for t in batch)
        with amp_ctx():
            logits = model(images).float()
        loss_sum += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
        a1, a5 = accuracy_counts(logits, target)
        c1, c5, n = c1 + a1, c5 + a5, n + len(target)
    loss_sum, n, c1, c5 = all_reduce_sum([loss_sum, n, c1, c5], info)
    return {"top1": 100.0 * c1 / max(n, 1), "top5": 100.0 * c5 / max(n, 1),
            "loss": loss_sum / max(n, 1), "count": int(n)}


def plot_history(history: list[dict[str, Any]], path: Path) -> None:
    """Training loss and validation top-1 per epoch, side by side, as a PNG."""
    plot_runs_history(history, path, {"train": "train_loss", "val (center)": "val_center_loss"},
                      {f"top-1 ({p})": f"val_{p}_top1" for p in EVAL_PROTOCOLS})


class _Run:
    """State of one training or evaluation run (one per process)."""

    def __init__(self, cfg: TrainConfig, info: DistInfo):
        self.cfg, self.info = cfg, info
        self.out = Path(cfg.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        setup_run_logging(logger, self.out, info)
        workers_per_proc = cfg.num_workers
        threads = cfg.threads or max(1, (os.cpu_count() or 1) // info.world_size - workers_per_proc)
        torch.set_num_threads(threads)
        seed = cfg.seed + info.rank
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        if cfg.deterministic:
            # cuBLAS needs this for deterministic matmuls on CUDA (read when CUDA starts)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False

        # the synthetic tree is written by rank 0 while the others wait
        if info.is_main:
            root = dataset_root(cfg)
        if info.world_size > 1:
            dist.barrier()
        if not info.is_main:
            root = dataset_root(cfg)
        self.root = root
        self.eval_sets = {p: build_dataset(root, "val", build_transform(cfg, p), cfg.skip_bad_data,
                                           substitute=False) for p in EVAL_PROTOCOLS}
        if cfg.check_data:
            # the protocols share one file list: check it once, drop what broke from all
            checked = self.eval_sets["center"]
            checked.check()
            for ds in self.eval_sets.values():
                ds.samples = ds.imgs = checked.samples
                ds.targets = checked.targets
        self.classes = self.eval_sets["center"].classes
        self.model = build_model(cfg, len(self.classes)).to(info.device)
        cuda_amp = cfg.amp and info.device.type == "cuda"
        amp_dtype = getattr(torch, cfg.amp_dtype)
        self.amp_ctx = lambda: torch.autocast("cuda", dtype=amp_dtype, enabled=cuda_amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cuda_amp and amp_dtype == torch.float16)
        logger.info("model %s: %.2fM parameters, %d classes, %d process(es), %d thread(s) each, "
                    "device %s", cfg.model, sum(p.numel() for p in self.model.parameters()) / 1e6,
                    len(self.classes), info.world_size, threads, info.device)

    def eval_loader(self, protocol: str) -> DataLoader:
        ds = self.eval_sets[protocol]
        shard = Subset(ds, range(self.info.rank, len(ds), self.info.world_size))
        return DataLoader(shard, batch_size=self.cfg.eval_batch_size or self.cfg.batch_size,
                          shuffle=False, num_workers=self.cfg.num_workers,
                          collate_fn=collate_readable)

    def evaluate_all(self, model: nn.Module, protocols: Iterable[str]) -> dict[str, float]:
        """``{"val_<protocol>_<top1|top5|loss>": value}`` for the given protocols."""
        results = {}
        for p in protocols:
            m = evaluate(model, self.eval_loader(p), self.info, self.amp_ctx)
            results.update({f"val_{p}_{k}": v for k, v in m.items() if k != "count"})
            logger.info("eval (%s, %d images): top-1 %.2f%%  top-5 %.2f%%  loss %.4f",
                        p, m["count"], m["top1"], m["top5"], m["loss"])
        return results

    # ---------------------------------------------------------------- eval only
    def eval_only(self, resume: str | None) -> dict[str, Any]:
        """Evaluate a training checkpoint (or ``cfg.weights``) with both protocols."""
        if resume:
            path, ckpt = self._load_resume(resume)
            if path is None:
                raise CheckpointError(f"no checkpoint in {self.out} to evaluate")
            self._check_classes(ckpt, path)
            load_model_state(self.model, ckpt["model"], str(path))
            source, epoch = str(path), int(ckpt["epoch"])
        elif self.cfg.weights:
            self._load_weights()
            source, epoch = self.cfg.weights, -1
        else:
            raise CheckpointError("eval-only needs a checkpoint: pass --resume [PATH] or --weights PATH")
        metrics = {"checkpoint": source, "epoch": epoch, **self.evaluate_all(self.model, EVAL_PROTOCOLS)}
        if self.info.is_main:
            (self.out / "eval_metrics.json").write_text(json.dumps(metrics, indent=1))
        return metrics

    # ---------------------------------------------------------------- training
    def _load_resume(self, resume: str) -> tuple[Path | None, dict[str, Any]]:
        """``(path, checkpoint)`` to resume from: the file ``resume`` names, or for ``"auto"``
        the newest intact checkpoint of ``output_dir`` (``checkpoint_last.pth`` first; a
        truncated or unreadable one is reported and the next is taken); ``(None, {})`` when
        ``"auto"`` finds none."""
        if resume != "auto":
            return Path(resume), load_training_checkpoint(resume)
        last = self.out / "checkpoint_last.pth"
        candidates = checkpoint_candidates(self.out, "checkpoint_*.pth",
                                           last if last.exists() else None)
        if not candidates:
            logger.info("no checkpoint in %s; starting from scratch", self.out)
            return None, {}
        try:
            return load_newest_intact(candidates, load_training_checkpoint, (CheckpointError,))
        except CheckpointReadError as e:
            raise CheckpointError(f"cannot resume in {self.out}: {e}") from None

    @staticmethod
    def _eval_history(history: list[dict[str, Any]], folder: Path) -> list[dict[str, Any]]:
        """``history`` with the evaluation results of ``folder/history.json`` merged in: a
        checkpoint is written before its epoch's evaluation, ``history.json`` after it."""
        path = folder / "history.json"
        try:
            logged = {r["epoch"]: r for r in json.loads(path.read_text())}
        except (OSError, ValueError, KeyError, TypeError):
            return history
        return [{**logged.get(r["epoch"], {}), **r} for r in history]

    def _check_classes(self, ckpt: dict[str, Any], path: Path) -> None:
        if list(ckpt["classes"]) != list(self.classes):
            raise CheckpointError(f"checkpoint {path} was trained on classes {ckpt['classes'][:5]}... "
                                  f"({len(ckpt['classes'])}); this dataset has {self.classes[:5]}... "
                                  f"({len(self.classes)})")

    def _load_weights(self) -> None:
        from .. import load_checkpoint  # the checkpoint package converts official/timm layouts

        report = load_checkpoint(self.model, self.cfg.weights, strict=False)
        logger.info("initial weights from %s: %s", self.cfg.weights, report)

    def train(self, resume: str | None) -> dict[str, Any]:
        cfg, info = self.cfg, self.info
        from timm.data import Mixup
        from timm.data.distributed_sampler import RepeatAugSampler
        from timm.loss import SoftTargetCrossEntropy
        from timm.utils import ModelEmaV3

        train_set = build_dataset(self.root, "train", build_transform(cfg, "train"), cfg.skip_bad_data)
        if cfg.check_data:
            train_set.check()
        if train_set.classes != self.classes:
            raise ValueError(f"train classes {train_set.classes} differ from val classes {self.classes}")
        # each process sees len(train_set) / world_size samples per epoch, every sample
        # ``repeated_aug`` times across the processes (DeiT's sampler; selected_round=0 keeps
        # small datasets whole where DeiT rounds the count down to a multiple of 256)
        sampler = RepeatAugSampler(train_set, num_replicas=info.world_size, rank=info.rank,
                                   shuffle=True, num_repeats=cfg.repeated_aug, selected_round=0)
        if len(sampler) < cfg.batch_size:
            raise ValueError(f"{len(sampler)} training images per process is less than one batch "
                             f"of {cfg.batch_size}")
        loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                            num_workers=cfg.num_workers, pin_memory=info.device.type == "cuda",
                            persistent_workers=cfg.num_workers > 0)
        mixup = None
        if cfg.mixup > 0 or cfg.cutmix > 0:
            mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                          switch_prob=cfg.mixup_switch_prob, label_smoothing=cfg.label_smoothing,
                          num_classes=len(self.classes))
            criterion: nn.Module = SoftTargetCrossEntropy()
        else:
            criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

        if cfg.weights:
            self._load_weights()
        model = self.model
        peak = cfg.peak_lr(info.world_size)
        optimizer = build_optimizer(model, cfg, peak)
        ddp = model
        if info.world_size > 1:
            ddp = nn.parallel.DistributedDataParallel(
                model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)

        def loss_fn(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            images, target = (t.to(info.device, non_blocking=True) for t in batch)
            if mixup is not None:
                images, target = mixup(images, target)
            return criterion(ddp(images), target)

        schedule = lr_multiplier(cfg, peak)
        # made before a resumed optimizer state is loaded: the loop records each group's peak
        # lr in the optimizer, and the saved state brings it back
        loop = TrainLoop(ddp, optimizer, loss_fn, schedule, scaler=self.scaler,
                         clip_grad=cfg.clip_grad, autocast=self.amp_ctx,
                         log_period=cfg.log_period, log=logger)
        ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema else None
        history: list[dict[str, Any]] = []
        start_epoch, skip_batches = 0, 0
        path, ckpt = self._load_resume(resume) if resume else (None, {})
        if path is not None:
            self._check_classes(ckpt, path)
            load_model_state(model, ckpt["model"], str(path))
            try:
                optimizer.load_state_dict(ckpt["optimizer"])
            except (ValueError, KeyError) as e:
                raise CheckpointError(f"checkpoint {path}: optimizer state does not fit: {e}") from e
            if "scaler" in ckpt:
                self.scaler.load_state_dict(ckpt["scaler"])
            if ema is not None and ckpt.get("ema") is not None:
                load_model_state(ema.module, ckpt["ema"], f"{path} (ema)")
            history = self._eval_history(list(ckpt["history"]), path.parent)
            start_epoch = int(ckpt["epoch"]) + 1
            skip_batches = int(ckpt.get("partial_epoch_iterations", 0))
            logger.info("resumed from %s at epoch %d%s", path, start_epoch,
                        f", iteration {skip_batches} of the epoch" if skip_batches else "")

        tb = None
        if info.is_main:
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(str(self.out / "tb"))
        iters = len(loader)
        logger.info("training %d epochs from epoch %d: %d iterations/epoch, total batch %d, "
                    "peak lr %.3g, warm-up %.1f epochs", cfg.epochs, start_epoch, iters,
                    cfg.batch_size * info.world_size, peak, cfg.warmup_epochs)
        progress = Progress(cfg.epochs * iters, done=start_epoch * iters + skip_batches,
                            memory=PeakMemoryMeter(info.device))

        def after_step(iteration: int, metrics: dict[str, float]) -> None:
            if ema is not None:
                ema.update(model, step=iteration)
            if tb is not None and (iteration + 1) % cfg.log_period == 0:
                tb.add_scalar("train/loss", metrics["loss"], iteration)
                tb.add_scalar("train/lr", metrics["lr"], iteration)

        def state(epoch: int, partial_epoch_iterations: int = 0) -> dict[str, Any]:
            return {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "ema": ema.module.state_dict() if ema is not None else None,
                "epoch": epoch,  # the last finished epoch
                "partial_epoch_iterations": partial_epoch_iterations,
                "classes": list(self.classes),
                "history": history,
                "config": dataclasses.asdict(cfg),
            }

        last = self.out / "checkpoint_last.pth"
        t_start = time.time()
        for epoch in range(start_epoch, cfg.epochs):
            sampler.set_epoch(epoch)
            t_epoch = time.time()
            epoch_loader = self._skip_batches(loader, sampler, skip_batches)
            try:
                epoch_stats = loop.run(epoch_loader, progress, on_step=after_step,
                                       prefix=f"epoch {epoch + 1}/{cfg.epochs}  ")
            except NonFiniteLossError as e:
                raise stopped_on_non_finite_loss(e, str(last) if last.exists() else None) from None
            except DatasetError as e:
                # the batch never reached the model: the weights are those of the last
                # finished iteration, saved with where in the epoch they are
                done = progress.done - epoch * iters
                saved = None
                if info.is_main and done > skip_batches:
                    self._save(state(epoch - 1, done))
                    saved = str(last)
                raise stopped_on_bad_data(worker_message(e), saved) from None
            skip_batches = 0
            epoch_lr = peak * schedule(epoch / cfg.epochs)
            # every process runs the same number of equal batches (drop_last)
            loss_total, = all_reduce_sum([epoch_stats["loss"]], info)
            record: dict[str, Any] = {"epoch": epoch, "lr": epoch_lr,
                                      "train_loss": loss_total / info.world_size,
                                      "epoch_time_s": time.time() - t_epoch}
            history.append(record)
            # the epoch's training is saved before its evaluation, which may fail (a broken
            # validation image) or be interrupted
            if info.is_main:
                self._save(state(epoch), keep_as=f"checkpoint_{epoch + 1:04d}.pth"
                           if cfg.checkpoint_period and (epoch + 1) % cfg.checkpoint_period == 0
                           else None)
            try:
                record.update(self.evaluate_all(model, cfg.eval_protocols))
                if ema is not None:
                    ema_metrics = self.evaluate_all(ema.module, ("center",))
                    record.update({k.replace("val_", "ema_val_"): v for k, v in ema_metrics.items()})
            except DatasetError as e:
                raise stopped_on_bad_data(worker_message(e), str(last)) from None
            record["elapsed_s"] = time.time() - t_start
            logger.info("epoch %d/%d done: train loss %.4f, %s, %.1fs", epoch + 1, cfg.epochs,
                        record["train_loss"], ", ".join(f"{k} {v:.2f}" for k, v in record.items()
                                                         if k.endswith("top1") or k.endswith("top5")),
                        record["epoch_time_s"])
            if info.is_main:
                self._log_epoch(epoch, history, tb)
        skipped = train_set.skipped.count + sum(ds.skipped.count for ds in self.eval_sets.values())
        if skipped:
            logger.warning("skipped %d image(s) that could not be decoded (named in the warnings "
                           "above)", skipped)
        metrics: dict[str, Any] = {"epochs": cfg.epochs, "history": history}
        last = history[-1] if history else {}
        if all(f"val_{p}_top1" in last for p in EVAL_PROTOCOLS):
            metrics["final"] = {k: v for k, v in last.items() if k.startswith("val_")}
        else:  # the last epoch was evaluated with one protocol only: add the other
            metrics["final"] = self.evaluate_all(model, EVAL_PROTOCOLS)
        metrics["train_time_s"] = time.time() - t_start
        if tb is not None:
            tb.close()
        if info.is_main:
            (self.out / "metrics.json").write_text(json.dumps(metrics, indent=1))
            logger.info("final: %s", json.dumps(metrics["final"]))
        return metrics

    def _skip_batches(self, loader: DataLoader, sampler, batches: int) -> DataLoader:
        """``loader`` for this epoch without its first ``batches`` batches (resuming in the
        middle of an epoch: the sampler's order is fixed by its epoch)."""
        if not batches:
            return loader
        indices = list(iter(sampler))[batches * loader.batch_size:]
        return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=indices,
                          drop_last=True, num_workers=loader.num_workers,
                          pin_memory=loader.pin_memory)

    def _save(self, state: dict[str, Any], keep_as: str | None = None) -> None:
        """Write ``checkpoint_last.pth`` (the one before it stays as
        ``checkpoint_previous.pth``, a fallback for resuming) and, with ``keep_as``, a copy.
        ``checkpoint_last.pth`` is in place at every moment: the previous one is kept through a
        hard link (a copy where links are not supported) before the new one replaces it."""
        last, previous = self.out / "checkpoint_last.pth", self.out / "checkpoint_previous.pth"
        if last.exists():
            link = temporary_path(previous)
            link.unlink(missing_ok=True)
            try:
                os.link(last, link)
            except OSError:
                shutil.copyfile(last, link)
            os.replace(link, previous)
        atomic_save(state, last)
        if keep_as:
            atomic_save(state, self.out / keep_as)

    def _log_epoch(self, epoch: int, history: list[dict[str, Any]], tb) -> None:
        rec = history[-1]
        for k, v in rec.items():
            if k.startswith(("val_", "ema_val_")) or k in ("train_loss", "lr"):
                tb.add_scalar(f"epoch/{k}", v, epoch + 1)
        tb.flush()
        atomic_write_text(self.out / "history.json", json.dumps(history, indent=1))
        plot_history(history, self.out / "training_curve.png")


def run(cfg: TrainConfig, resume: str | None = None, eval_only: bool = False) -> dict[str, Any]:
    """Train (or with ``eval_only`` evaluate) under the current process group; returns metrics.

    ``resume``: ``None`` (fresh start), ``"auto"`` (``output_dir/checkpoint_last.pth`` if it
    exists) or a checkpoint path (must exist).
    """
    info = init_distributed()
    try:
        r = _Run(cfg, info)
        return r.eval_only(resume) if eval_only else r.train(resume)
    finally:
        if info.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()
