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

import yaml

from mvit_backbone.classification.train import CheckpointError, load_config, run
from mvit_backbone.data.checks import DatasetError
from mvit_backbone.engine.loop import TrainingStopped

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "synthetic.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", "--config", dest="config", default=str(DEFAULT_CONFIG),
                   help="YAML config (default: %(default)s)")
    p.add_argument("--data-dir", help="ImageFolder root with train/ and val/ (default: synthetic)")
    p.add_argument("--output-dir", help="where checkpoints, logs, metrics and plots go")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="per process")
    p.add_argument("--weights", help="initial weights: official, timm or detectron2 checkpoint")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from PATH, or from OUTPUT_DIR/checkpoint_last.pth if no PATH")
    p.add_argument("--eval-only", action="store_true",
                   help="evaluate the --resume checkpoint (or --weights) with both protocols")
    p.add_argument("--check-data", action="store_true",
                   help="decode every image before training (broken ones: error, or skipped)")
    p.add_argument("--skip-bad-data", action="store_true",
                   help="skip images that cannot be read (a warning each, a count at the end)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field; VALUE is parsed as YAML, numbers such as 1e6 "
                        "as numbers; a value of the wrong type is an error (repeatable)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    overrides = {k.replace("-", "_"): v for k, v in (
        ("data_dir", args.data_dir), ("output_dir", args.output_dir), ("epochs", args.epochs),
        ("batch_size", args.batch_size), ("weights", args.weights)) if v is not None}
    overrides.update({k: True for k in ("check_data", "skip_bad_data") if getattr(args, k)})
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    try:
        cfg = load_config(args.config, overrides)
        run(cfg, resume=args.resume, eval_only=args.eval_only)
    except (ValueError, DatasetError, CheckpointError, TrainingStopped) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
