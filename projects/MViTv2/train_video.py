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
from mvit_backbone.engine.runs import CheckpointError, parse_set_overrides
from mvit_backbone.video.train import load_config, run

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "video" / "synthetic.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", "--config", dest="config", default=str(DEFAULT_CONFIG),
                   help="YAML config (default: %(default)s)")
    p.add_argument("--train-list", help="training videos, '<path> <label>' per line (default: synthetic)")
    p.add_argument("--val-list", help="validation/test videos, same format")
    p.add_argument("--data-root", help="folder the lists' relative paths start from")
    p.add_argument("--output-dir", help="where checkpoints, logs, metrics and plots go")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="per process")
    p.add_argument("--weights", help="initial weights: any checkpoint load_checkpoint reads "
                   "(2-D ImageNet weights are inflated)")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from PATH, or from OUTPUT_DIR/checkpoint_last.pth if no PATH")
    p.add_argument("--eval-only", action="store_true",
                   help="test the --resume checkpoint (or --weights) on the test views")
    p.add_argument("--skip-unreadable", action="store_true",
                   help="skip (and count) videos that cannot be decoded instead of stopping")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field; VALUE is parsed as YAML (repeatable)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    overrides = {k: v for k, v in (
        ("train_list", args.train_list), ("val_list", args.val_list),
        ("data_root", args.data_root), ("output_dir", args.output_dir),
        ("epochs", args.epochs), ("batch_size", args.batch_size),
        ("weights", args.weights)) if v is not None}
    if args.skip_unreadable:
        overrides["skip_unreadable"] = True
    overrides.update(parse_set_overrides(args.set))
    return run(load_config(args.config, overrides), resume=args.resume, eval_only=args.eval_only)


if __name__ == "__main__":
    try:
        main()
    except (ValueError, CheckpointError, TrainingStopped) as e:
        raise SystemExit(f"error: {e}") from None
