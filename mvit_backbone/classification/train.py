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

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import DataLoader, Subset
from torchvision.datasets import ImageFolder

from ..data.checks import (
    DatasetError,
    Problem,
    SkipCounter,
    check_image_files,
    fail_or_skip,
)
from ..data.image_folder import write_synthetic_image_folder
from ..engine.epochs import EpochRun, EpochTrainConfig, run_epochs
from ..engine.optim import make_optimizer
# CheckpointError is the entry point's (projects/MViTv2/train_imagenet.py) to catch
from ..engine.runs import (CheckpointError, DistInfo, accuracy_counts, all_reduce_sum,
                           config_from_dict, load_model_state, load_yaml_config)
from ..engine.runs import plot_history as plot_runs_history
from ..engine.schedule import WarmupCosine, recipe_lr_multiplier
from .models import create_model

logger = logging.getLogger("mvit_backbone.classification.train")

EVAL_PROTOCOLS = ("center", "full")


class CorruptImageError(DatasetError):
    """An image file of the dataset cannot be decoded; the message names the file."""


@dataclass
class TrainConfig(EpochTrainConfig):
    """Every setting of a run: the shared :class:`~mvit_backbone.engine.epochs.EpochTrainConfig`
    with the ImageNet recipe's defaults, and the fields below. YAML configs and
    ``--set key=value`` fill these fields."""

    # data: an ImageFolder root with train/ and val/; empty -> the synthetic dataset
    data_dir: str = ""
    synthetic_dir: str = "datasets/synthetic_shapes"
    synthetic_train_per_class: int = 300
    synthetic_val_per_class: int = 50
    synthetic_image_size: int = 72
    output_dir: str = "output/mvitv2_imagenet"
    # model
    model: str = "mvitv2_t"
    img_size: int = 224
    head_dropout: float = 0.0
    # optimisation
    epochs: int = 300
    warmup_epochs: float = 70.0
    batch_size: int = 64  # per process
    base_lr: float = 2e-3
    base_batch_size: int = 2048
    ema: bool = False
    ema_decay: float = 0.9999
    # augmentation (timm)
    auto_augment: str = "rand-m9-mstd0.5-inc1"
    color_jitter: float = 0.4
    repeated_aug: int = 3
    eval_crop_pct: float = 0.875  # 224/256
    eval_protocols: tuple = EVAL_PROTOCOLS  # evaluated every epoch; the final eval does both
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


class _Run(EpochRun):
    """State of one ImageNet training or evaluation run (one per process)."""

    def __init__(self, cfg: TrainConfig, info: DistInfo):
        super().__init__(cfg, info, logger, deterministic=cfg.deterministic)
        # the synthetic tree is written by rank 0 while the others wait
        root = self.main_first(lambda: dataset_root(cfg))
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
        logger.info("model %s: %.2fM parameters, %d classes, %d process(es), %d thread(s) each, "
                    "device %s", cfg.model, sum(p.numel() for p in self.model.parameters()) / 1e6,
                    len(self.classes), info.world_size, self.threads, info.device)

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

    def eval_only(self, resume: str | None) -> dict[str, Any]:
        """Evaluate a training checkpoint (or ``cfg.weights``) with both protocols."""
        source, epoch = self.load_for_eval(resume)
        return self.write_eval_metrics({"checkpoint": source, "epoch": epoch,
                                        **self.evaluate_all(self.model, EVAL_PROTOCOLS)})

    def train(self, resume: str | None) -> dict[str, Any]:
        cfg, info = self.cfg, self.info
        from timm.utils import ModelEmaV3

        train_set = build_dataset(self.root, "train", build_transform(cfg, "train"), cfg.skip_bad_data)
        if cfg.check_data:
            train_set.check()
        if train_set.classes != self.classes:
            raise ValueError(f"train classes {train_set.classes} differ from val classes {self.classes}")
        loader = self.train_loader(train_set, "images")
        mixup, criterion = self.mixup_and_criterion()

        if cfg.weights:
            self.load_weights()
        model = self.model
        peak = cfg.peak_lr(info.world_size)
        optimizer = build_optimizer(model, cfg, peak)
        ddp = self.distributed(model)

        def loss_fn(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            images, target = (t.to(info.device, non_blocking=True) for t in batch)
            if mixup is not None:
                images, target = mixup(images, target)
            return criterion(ddp(images), target)

        schedule = lr_multiplier(cfg, peak)
        loop = self.train_loop(ddp, optimizer, loss_fn, schedule)
        ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema else None
        resumed = self.resume(resume, optimizer)
        if ema is not None and resumed.checkpoint.get("ema") is not None:
            load_model_state(ema.module, resumed.checkpoint["ema"], f"{resumed.path} (ema)")
        history, skip_batches = resumed.history, resumed.skip_batches

        tb = self.tensorboard()
        iters = len(loader)
        logger.info("training %d epochs from epoch %d: %d iterations/epoch, total batch %d, "
                    "peak lr %.3g, warm-up %.1f epochs", cfg.epochs, resumed.start_epoch, iters,
                    cfg.batch_size * info.world_size, peak, cfg.warmup_epochs)
        progress = self.progress(iters, resumed)
        log_step = self.step_logger(tb)

        def after_step(iteration: int, metrics: dict[str, float]) -> None:
            if ema is not None:
                ema.update(model, step=iteration)
            log_step(iteration, metrics)

        def state(epoch: int, partial_epoch_iterations: int = 0) -> dict[str, Any]:
            return self.training_state(optimizer, epoch, history, partial_epoch_iterations,
                                       ema=ema.module.state_dict() if ema is not None else None)

        t_start = time.time()
        for epoch in range(resumed.start_epoch, cfg.epochs):
            t_epoch = time.time()
            epoch_stats = self.run_epoch(loop, loader, progress, epoch, skip_batches, state,
                                         after_step)
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
                self.save(state(epoch), epoch)
            with self.stop_on_bad_eval_data():
                record.update(self.evaluate_all(model, cfg.eval_protocols))
                if ema is not None:
                    ema_metrics = self.evaluate_all(ema.module, ("center",))
                    record.update({k.replace("val_", "ema_val_"): v for k, v in ema_metrics.items()})
            record["elapsed_s"] = time.time() - t_start
            logger.info("epoch %d/%d done: train loss %.4f, %s, %.1fs", epoch + 1, cfg.epochs,
                        record["train_loss"], ", ".join(f"{k} {v:.2f}" for k, v in record.items()
                                                         if k.endswith("top1") or k.endswith("top5")),
                        record["epoch_time_s"])
            if info.is_main:
                self.write_history(history, tb, plot_history, ("val_", "ema_val_"))
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
        return self.finish(metrics, tb, t_start)


def run(cfg: TrainConfig, resume: str | None = None, eval_only: bool = False) -> dict[str, Any]:
    """Train (or with ``eval_only`` evaluate) under the current process group; returns metrics.

    ``resume``: ``None`` (fresh start), ``"auto"`` (the newest intact checkpoint of
    ``output_dir``, if any) or a checkpoint path (must exist).
    """
    return run_epochs(lambda info: _Run(cfg, info), resume, eval_only)
