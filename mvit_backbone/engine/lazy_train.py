"""Training and evaluation of LazyConfig detectors (what ``tools/lazyconfig_train_net.py`` runs).

A config has detectron2's LazyConfig layout: ``model``, ``dataloader.{train,test,evaluator}``,
``optimizer``, ``lr_multiplier`` and ``train`` (output_dir, init_checkpoint, max_iter, amp, ddp,
checkpointer, eval_period, log_period, device). The functions run in one process or in each
process started by detectron2's ``launch`` (NCCL on GPUs, gloo on CPUs).
"""
from __future__ import annotations

import logging
import os
from typing import Any

import torch.nn as nn
from detectron2.config import instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from ..checkpoint import SafeDetectionCheckpointer, load_checkpoint
from .progress import training_writers

logger = logging.getLogger("detectron2")  # the logger default_setup() prints


def build_model(cfg: Any) -> nn.Module:
    """Instantiate ``cfg.model`` and move it to ``cfg.train.device``."""
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    return model


def load_weights(model: nn.Module, path: str) -> None:
    """Load ``path`` into a detector built from a LazyConfig, with
    :func:`mvit_backbone.load_checkpoint` (non-strict; nothing in the file runs).

    - A detector checkpoint (``model_final.pth`` of this package, detectron2's ``.pth``/``.pkl``,
      detectron2 URLs) loads by name into the whole model; detector heads of another shape
      (another class count) are left as initialised and logged.
    - An ImageNet backbone checkpoint (official ``MViTv2_*.pyth``, timm, safetensors, ...) loads
      into ``model.backbone.bottom_up`` (the classification head is dropped, rel-pos tables
      are interpolated).
    - An empty path loads nothing.

    Raises:
        ValueError: a local path that does not exist, a file that cannot be read or holds more
            than weights, or MViT weights of another shape; the message names the file.
    """
    if not path:
        return
    local = PathManager.get_local_path(path)
    if not os.path.isfile(local):
        raise ValueError(
            f"checkpoint {path!r} does not exist (train.init_checkpoint names the official file; "
            f"download it and give its path, or set train.init_checkpoint='' to start from scratch)"
        )
    net = model.module if hasattr(model, "module") else model
    report = load_checkpoint(net, local, strict=False)
    logger.info(f"Loaded checkpoint {path}: {report}")


def do_test(cfg: Any, model: nn.Module) -> dict:
    """Evaluate ``model`` on ``cfg.dataloader.test`` with ``cfg.dataloader.evaluator``.

    Returns the evaluator's results (e.g. ``{"bbox": {"AP": ...}, "segm": {...}}``), or ``{}``
    when the config has no evaluator.
    """
    if "evaluator" not in cfg.dataloader:
        return {}
    results = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )
    if comm.is_main_process():
        print_csv_format(results)
    return results


def _ddp_kwargs(cfg: Any) -> dict:
    kwargs = dict(cfg.train.get("ddp", {}))
    if not str(cfg.train.device).startswith("cuda"):
        kwargs["device_ids"] = None  # CPU modules (gloo) take no device ids
        kwargs["fp16_compression"] = False
    return kwargs


def do_train(cfg: Any, resume: bool = False) -> dict:
    """Train ``cfg.model`` with detectron2's trainer and hooks; returns the last evaluation.

    Args:
        cfg: a LazyConfig (``detectron2.config.LazyConfig.load``) with the keys listed in the
            module docstring.
        resume: continue from the last checkpoint in ``cfg.train.output_dir`` (weights,
            optimizer, scheduler and iteration) when there is one; otherwise start from
            ``cfg.train.init_checkpoint`` at iteration 0 (see :func:`load_weights`).

    Hooks: iteration timer, LR scheduler, periodic checkpointer (``cfg.train.checkpointer``),
    evaluation every ``cfg.train.eval_period`` iterations and at the end (:func:`do_test`),
    and :func:`~mvit_backbone.engine.progress.training_writers` (the shared progress line with
    ETA and peak memory, ``metrics.json``, tensorboard) every
    ``cfg.train.log_period`` iterations. AMP is used when ``cfg.train.amp.enabled`` and the
    device is CUDA. Call detectron2's ``setup_logger`` first to see the progress.

    Returns:
        The results of the last :func:`do_test` run (``{}`` if no evaluation ran).
    """
    model = build_model(cfg)
    logger.info(f"Model:\n{model}")
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    model = create_ddp_model(model, **_ddp_kwargs(cfg))
    use_amp = cfg.train.amp.enabled and str(cfg.train.device).startswith("cuda")
    trainer = (AMPTrainer if use_amp else SimpleTrainer)(model, train_loader, optimizer)
    checkpointer = SafeDetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer)

    last_results: dict = {}

    def evaluate() -> dict:
        last_results.clear()
        last_results.update(do_test(cfg, model))
        return dict(last_results)

    main = comm.is_main_process()
    trainer.register_hooks([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if main else None,
        hooks.EvalHook(cfg.train.eval_period, evaluate),
        hooks.PeriodicWriter(
            training_writers(cfg.train.output_dir, cfg.train.max_iter, str(cfg.train.device)),
            period=cfg.train.log_period,
        ) if main else None,
    ])
    if resume and checkpointer.has_checkpoint():
        checkpointer.resume_or_load("", resume=True)
        start_iter = trainer.iter + 1
        logger.info(f"Resumed from {checkpointer.get_checkpoint_file()} at iteration {start_iter}")
    else:
        load_weights(model, cfg.train.init_checkpoint)
        start_iter = 0
    trainer.train(start_iter, cfg.train.max_iter)
    return dict(last_results)


def do_eval_only(cfg: Any) -> dict:
    """Build ``cfg.model``, load ``cfg.train.init_checkpoint`` and run :func:`do_test`."""
    model = build_model(cfg)
    model = create_ddp_model(model, **_ddp_kwargs(cfg))
    load_weights(model, cfg.train.init_checkpoint)
    return do_test(cfg, model)
