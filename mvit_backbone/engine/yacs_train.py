"""Training with yacs YAML configs (``tools/train_net.py``): detectron2's ``DefaultTrainer``
with COCO evaluation through pycocotools, and ``cfg.MODEL.MVITV2`` added to the config, so a
model-zoo config switches to MViTv2 with ``MODEL.BACKBONE.NAME build_mvitv2_fpn_backbone``."""
from __future__ import annotations

import argparse
import os
import weakref

from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetMapper, build_detection_train_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, default_setup
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator
from detectron2.utils.events import EventWriter

from ..checkpoint import SafeDetectionCheckpointer
from ..detection import add_mvitv2_config
from .cli import check_file, merge_yacs_overrides, use_cpu_without_gpu
from .data import GuardedMapper, report_checked_datasets
from .guard import CheckedAMPTrainer, CheckedSimpleTrainer, train_saving_on_error
from .progress import training_writers


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` evaluating with ``COCOEvaluator(..., use_fast_impl=False)``,
    reading and writing checkpoints with :class:`SafeDetectionCheckpointer`, printing the shared
    progress line (:func:`~mvit_backbone.engine.progress.training_writers`), and stopping on bad
    data or a non-finite loss as :mod:`~mvit_backbone.engine.guard` says.

    ``skip_bad_data`` (set from ``--skip-bad-data`` before building): skip training images that
    cannot be read instead of stopping."""

    skip_bad_data = False
    _mapper: GuardedMapper | None = None

    def __init__(self, cfg: CfgNode):
        super().__init__(cfg)
        inner = self._trainer
        checked = CheckedAMPTrainer if isinstance(inner, AMPTrainer) else CheckedSimpleTrainer
        self._trainer = checked(inner.model, inner.data_loader, inner.optimizer)
        self.checkpointer = SafeDetectionCheckpointer(
            self.model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        cls._mapper = GuardedMapper(DatasetMapper(cfg, is_train=True), cls.skip_bad_data)
        return build_detection_train_loader(cfg, mapper=cls._mapper)

    def train(self):
        result = train_saving_on_error(super().train, self, self.checkpointer, self.start_iter)
        if self._mapper is not None and self._mapper.skipped.count:
            self.checkpointer.logger.warning(
                f"skipped {self._mapper.skipped.count} training image(s) that could not be read")
        return result

    def build_writers(self) -> list[EventWriter]:
        return training_writers(self.cfg.OUTPUT_DIR, self.max_iter, self.cfg.MODEL.DEVICE)

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str,
                        output_folder: str | None = None) -> DatasetEvaluator:
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        return COCOEvaluator(dataset_name, output_dir=output_folder, use_fast_impl=False)


def setup_yacs(args: argparse.Namespace) -> CfgNode:
    """detectron2's config with ``MODEL.MVITV2``, merged with ``args.config_file`` and
    ``args.opts`` (an unknown key is a one-line error), on the CPU when there is no GPU,
    frozen, after detectron2's ``default_setup`` (logging, output dir, seed)."""
    cfg = get_cfg()
    add_mvitv2_config(cfg)
    check_file(args.config_file, "config file")
    cfg.merge_from_file(args.config_file)
    merge_yacs_overrides(cfg, args.opts)
    use_cpu_without_gpu(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def run_yacs(args: argparse.Namespace) -> dict:
    """Train (or, with ``args.eval_only``, evaluate) the model of a yacs config.

    Returns the evaluation results (``{dataset: {"bbox": {...}, ...}}``), empty when the config
    names no test dataset.
    """
    cfg = setup_yacs(args)
    if getattr(args, "check_data", False):
        report_checked_datasets(list(cfg.DATASETS.TRAIN), args.skip_bad_data)
    Trainer.skip_bad_data = getattr(args, "skip_bad_data", False)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        SafeDetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train() or {}
