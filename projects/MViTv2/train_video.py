#!/usr/bin/env python
"""Train or evaluate an MViT video classifier (Kinetics, Something-Something v2, Charades).

With no arguments it writes a synthetic 10-class motion dataset as mp4 files and trains a slim
3-D MViTv2 on it (``configs/video/synthetic.yaml``). For Kinetics-400, e.g. MViTv2-S 16x4 on
8 GPUs, with list files of ``<path> <label>`` lines::

    torchrun --nproc_per_node 8 projects/MViTv2/train_video.py \
        --config projects/MViTv2/configs/video/mvitv2_s_16x4_k400.yaml \
        --train-list k400/train.csv --val-list k400/val.csv --data-root k400/videos

All the logic lives in :mod:`mvit_backbone.video.train`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from mvit_backbone.engine.loop import TrainingStopped
from mvit_backbone.engine.epochs import epoch_run_parser, overrides_from_args
from mvit_backbone.engine.runs import CheckpointError
from mvit_backbone.video.train import load_config, run

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "video" / "synthetic.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = epoch_run_parser(__doc__, str(DEFAULT_CONFIG),
                         eval_help="test the --resume checkpoint (or --weights) on the test views",
                         weights_help="initial weights: any checkpoint load_checkpoint reads "
                                      "(2-D ImageNet weights are inflated)")
    p.add_argument("--train-list", help="training videos, '<path> <label>' per line (default: synthetic)")
    p.add_argument("--val-list", help="validation/test videos, same format")
    p.add_argument("--data-root", help="folder the lists' relative paths start from")
    p.add_argument("--skip-unreadable", action="store_true",
                   help="skip (and count) videos that cannot be decoded instead of stopping")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    overrides = overrides_from_args(args, ("train_list", "val_list", "data_root", "output_dir",
                                           "epochs", "batch_size", "weights", "skip_unreadable"))
    return run(load_config(args.config, overrides), resume=args.resume, eval_only=args.eval_only)


if __name__ == "__main__":
    try:
        main()
    except (ValueError, CheckpointError, TrainingStopped) as e:
        raise SystemExit(f"error: {e}") from None
