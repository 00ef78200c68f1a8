"""Train/eval logic behind ``tools/``: LazyConfig and yacs training, analysis, prediction."""
from .analysis import count_flops, count_parameters, instantiate_on_meta, parameter_table
from .data import load_coco_instances, register_coco_dataset, register_coco_datasets
from .launcher import argument_parser, launch_main
from .lazy_train import build_model, do_eval_only, do_test, do_train, load_weights
from .predict import predict_images
from .yacs_train import Trainer, run_yacs, setup_yacs

__all__ = [
    "Trainer",
    "argument_parser",
    "build_model",
    "count_flops",
    "count_parameters",
    "do_eval_only",
    "do_test",
    "do_train",
    "instantiate_on_meta",
    "launch_main",
    "load_coco_instances",
    "load_weights",
    "parameter_table",
    "predict_images",
    "register_coco_dataset",
    "register_coco_datasets",
    "run_yacs",
    "setup_yacs",
]
