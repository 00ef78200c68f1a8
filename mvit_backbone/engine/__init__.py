"""The shared training pieces and the jobs behind ``tools/``.

One training loop (``loop.TrainLoop``), one learning-rate schedule (``schedule.WarmupCosine``),
one progress line with ETA (``progress``), one peak-memory meter (``memory.PeakMemoryMeter``),
the recipes' weight-decay groups (``optim.param_groups``), one epoch trainer's run for ImageNet
and video classification (``epochs.EpochRun``: resuming, checkpoints, history, outputs);
LazyConfig and yacs detector training on detectron2's hooks, analysis, prediction, and the demo
job (``engine.demo``).
"""
from .analysis import count_flops, count_parameters, instantiate_on_meta, parameter_table
from .data import (
    GuardedMapper,
    check_datasets,
    load_coco_instances,
    register_coco_dataset,
    register_coco_datasets,
)
from .launcher import argument_parser, launch_main
from .lazy_train import (
    apply_overrides,
    build_model,
    do_eval_only,
    do_test,
    do_train,
    load_weights,
)
from .loop import NonFiniteLossError, TrainingStopped, TrainLoop
from .memory import PeakMemoryMeter
from .optim import NO_DECAY_NAMES, param_groups
from .predict import predict_images
from .progress import Progress, ProgressWriter, format_eta, progress_line, training_writers
from .schedule import WarmupCosine
from .yacs_train import Trainer, run_yacs, setup_yacs

__all__ = [
    "GuardedMapper",
    "NonFiniteLossError",
    "TrainingStopped",
    "apply_overrides",
    "check_datasets",
    "NO_DECAY_NAMES",
    "PeakMemoryMeter",
    "Progress",
    "ProgressWriter",
    "TrainLoop",
    "Trainer",
    "WarmupCosine",
    "argument_parser",
    "build_model",
    "count_flops",
    "count_parameters",
    "do_eval_only",
    "do_test",
    "do_train",
    "format_eta",
    "instantiate_on_meta",
    "launch_main",
    "load_coco_instances",
    "load_weights",
    "param_groups",
    "parameter_table",
    "predict_images",
    "progress_line",
    "register_coco_dataset",
    "register_coco_datasets",
    "run_yacs",
    "setup_yacs",
    "training_writers",
]
