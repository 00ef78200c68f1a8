"""Training and evaluation of LazyConfig detectors (what ``tools/lazyconfig_train_net.py`` runs).

A config has detectron2's LazyConfig layout: ``model``, ``dataloader.{train,test,evaluator}``,
``optimizer``, ``lr_multiplier`` and ``train`` (output_dir, init_checkpoint, max_iter, amp, ddp,
checkpointer, eval_period, log_period, device). The functions run in one process or in each
process started by detectron2's ``launch`` (NCCL on GPUs, gloo on CPUs).
"""
from __future__ import annotations

import ast
import logging
import os
from typing import Any, Sequence

import torch.nn as nn
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from detectron2.utils.registry import locate
from omegaconf import DictConfig, ListConfig, OmegaConf

from ..checkpoint import SafeDetectionCheckpointer, load_checkpoint
from .data import GuardedMapper, report_checked_datasets
from .guard import CheckedAMPTrainer, CheckedSimpleTrainer, train_saving_on_error
from .progress import training_writers

logger = logging.getLogger("detectron2")  # the logger default_setup() prints


def apply_overrides(cfg: Any, overrides: Sequence[str]) -> Any:
    """detectron2's ``LazyConfig.apply_overrides`` (``key=value``, values read as Python
    literals: ``1e6`` and ``1.0e-4`` are floats), refusing a value whose type does not fit the
    key's current value (a number where a number was, a list where a list was, ...).

    Raises:
        ValueError: at start-up, naming the key, its current value and the value given.
    """
    numbers = (int, float)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not KEY=VALUE")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        try:
            old = OmegaConf.select(cfg, key, throw_on_missing=False)
        except Exception:
            old = None
        if old is None or value is None or isinstance(old, str):
            continue
        fits = (isinstance(value, numbers) and not isinstance(value, bool)
                if isinstance(old, numbers) and not isinstance(old, bool)
                else isinstance(value, type(old)) or isinstance(old, (dict, DictConfig))
                or (isinstance(old, (list, tuple, ListConfig)) and isinstance(value, (list, tuple))))
        if not fits:
            raise ValueError(f"override {key}={text!r}: {key} is {old!r} ({type(old).__name__}), "
                             f"got a {type(value).__name__}")
    return LazyConfig.apply_overrides(cfg, list(overrides))


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


def _instantiate_with(node: Any, **objects: Any) -> Any:
    """``instantiate(node)`` with the arguments ``objects`` given as built objects (a config
    holds only configs, so they cannot be put into ``node``)."""
    target = node._target_
    if isinstance(target, str):
        target = locate(target)
    kwargs = {k: instantiate(v) for k, v in node.items() if k != "_target_" and k not in objects}
    return target(**kwargs, **objects)


def _train_dataset_names(cfg: Any) -> list[str]:
    names = cfg.dataloader.train.dataset.get("names", [])
    return [names] if isinstance(names, str) else list(names)


def do_train(cfg: Any, resume: bool = False, skip_bad_data: bool = False,
             check_data: bool = False) -> dict:
    """Train ``cfg.model`` with detectron2's trainer and hooks; returns the last evaluation.

    Args:
        cfg: a LazyConfig (``detectron2.config.LazyConfig.load``) with the keys listed in the
            module docstring.
        resume: continue from the newest intact checkpoint in ``cfg.train.output_dir`` (weights,
            optimizer, scheduler and iteration) when there is one; otherwise start from
            ``cfg.train.init_checkpoint`` at iteration 0 (see :func:`load_weights`).
        skip_bad_data: skip training images that cannot be read (one warning each, a count at
            the end) instead of stopping.
        check_data: before training, decode every training image and compare its size with
            the dataset's (:func:`~mvit_backbone.engine.data.report_checked_datasets`).

    Hooks: iteration timer, LR scheduler, periodic checkpointer (``cfg.train.checkpointer``),
    evaluation every ``cfg.train.eval_period`` iterations and at the end (:func:`do_test`),
    and :func:`~mvit_backbone.engine.progress.training_writers` (the shared progress line with
    ETA and peak memory, ``metrics.json``, tensorboard) every
    ``cfg.train.log_period`` iterations. AMP is used when ``cfg.train.amp.enabled`` and the
    device is CUDA. Call detectron2's ``setup_logger`` first to see the progress.

    Returns:
        The results of the last :func:`do_test` run (``{}`` if no evaluation ran).

    Raises:
        TrainingStopped: an unreadable training image (without ``skip_bad_data``; the last good
            state is saved first) or a non-finite loss (the last checkpoint is kept).
    """
    if check_data and comm.is_main_process():
        report_checked_datasets(_train_dataset_names(cfg), skip_bad_data)
    model = build_model(cfg)
    logger.info(f"Model:\n{model}")
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    mapper = GuardedMapper(instantiate(cfg.dataloader.train.mapper), skip_bad_data)
    train_loader = _instantiate_with(cfg.dataloader.train, mapper=mapper)
    model = create_ddp_model(model, **_ddp_kwargs(cfg))
    use_amp = cfg.train.amp.enabled and str(cfg.train.device).startswith("cuda")
    trainer = (CheckedAMPTrainer if use_amp else CheckedSimpleTrainer)(model, train_loader, optimizer)
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
        logger.info(f"Resumed from {checkpointer.resumed_from} at iteration {start_iter}")
    else:
        load_weights(model, cfg.train.init_checkpoint)
        start_iter = 0
    try:
        train_saving_on_error(lambda: trainer.train(start_iter, cfg.train.max_iter), trainer,
                              checkpointer, start_iter)
    finally:
        if mapper.skipped.count:
            logger.warning(f"skipped {mapper.skipped.count} training image(s) that could not be "
                           "read (named in the warnings above)")
    return dict(last_results)


def do_eval_only(cfg: Any) -> dict:
    """Build ``cfg.model``, load ``cfg.train.init_checkpoint`` and run :func:`do_test`."""
    model = build_model(cfg)
    model = create_ddp_model(model, **_ddp_kwargs(cfg))
    load_weights(model, cfg.train.init_checkpoint)
    return do_test(cfg, model)
