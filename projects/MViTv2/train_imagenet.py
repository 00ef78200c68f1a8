#!/usr/bin/env python
"""Train or evaluate an MViT classifier on an ImageFolder tree (ImageNet layout).

With no arguments it writes a synthetic 10-class dataset and trains a slim MViTv2 on it
(``configs/synthetic.yaml``). For ImageNet-1K, e.g. MViTv2-T on 8 GPUs::

    torchrun --nproc_per_node 8 projects/MViTv2/train_imagenet.py \
        --config projects/MViTv2/configs/mvitv2_t_in1k.yaml --data-dir /path/to/imagenet

All the logic lives in :mod:`mvit_backbone.classification.train`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from mvit_backbone.classification.train import CheckpointError, load_config, run
from mvit_backbone.data.checks import DatasetError
from mvit_backbone.engine.epochs import epoch_run_parser, overrides_from_args
from mvit_backbone.engine.loop import TrainingStopped

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "synthetic.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = epoch_run_parser(__doc__, str(DEFAULT_CONFIG),
                         eval_help="evaluate the --resume checkpoint (or --weights) with both protocols",
                         weights_help="initial weights: official, timm or detectron2 checkpoint")
    p.add_argument("--data-dir", help="ImageFolder root with train/ and val/ (default: synthetic)")
    p.add_argument("--check-data", action="store_true",
                   help="decode every image before training (broken ones: error, or skipped)")
    p.add_argument("--skip-bad-data", action="store_true",
                   help="skip images that cannot be read (a warning each, a count at the end)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    overrides = overrides_from_args(args, ("data_dir", "output_dir", "epochs", "batch_size",
                                           "weights", "check_data", "skip_bad_data"))
    try:
        cfg = load_config(args.config, overrides)
        run(cfg, resume=args.resume, eval_only=args.eval_only)
    except (ValueError, DatasetError, CheckpointError, TrainingStopped) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
