#!/usr/bin/env python
"""Parameters and FLOPs (fvcore) of configs' models, LazyConfig (.py) or yacs (.yaml):

    python tools/analyze_model.py --config-file configs/COCO-InstanceSegmentation/*.py \\
        --tasks parameter flop [--flop-input 1024x1024] [--detections 100] [key=value ...]

FLOPs are counted by default at 1024x1024 with the mask head on 100 detections, the setting
that reproduces the MViTv2 paper's Table 5 for detectron2's own MViT. With several configs it
prints one line per config (the parameter table only for a single config).
"""
import argparse

from detectron2.config import LazyConfig, get_cfg

from mvit_backbone import add_mvitv2_config
from mvit_backbone.engine import count_flops, count_parameters, parameter_table
from mvit_backbone.engine.analysis import TABLE5_DETECTIONS, TABLE5_INPUT


def load_config(path: str, opts: list[str]):
    """A LazyConfig (``.py``) or a yacs config with ``cfg.MODEL.MVITV2``, overrides applied."""
    if path.endswith(".py"):
        return LazyConfig.apply_overrides(LazyConfig.load(path), opts)
    cfg = add_mvitv2_config(get_cfg())
    cfg.merge_from_file(path)
    cfg.merge_from_list(opts)
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, nargs="+")
    parser.add_argument("--tasks", nargs="+", choices=["parameter", "flop"], default=["parameter"])
    parser.add_argument("--flop-input", default="x".join(map(str, TABLE5_INPUT)),
                        help="HxW of the random image")
    parser.add_argument("--detections", type=int, default=TABLE5_DETECTIONS,
                        help="boxes kept per image whatever their score (mask head RoIs)")
    parser.add_argument("--max-depth", type=int, default=3, help="depth of the parameter table")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides")
    args = parser.parse_args()
    height, width = (int(v) for v in args.flop_input.lower().split("x"))
    for path in args.config_file:
        cfg = load_config(path, args.opts)
        line = [path]
        if "parameter" in args.tasks:
            if len(args.config_file) == 1:
                print(parameter_table(cfg, args.max_depth))
            line.append(f"parameters: {count_parameters(cfg) / 1e6:.2f} M")
        if "flop" in args.tasks:
            gflops, unsupported = count_flops(cfg, height, width, args.detections)
            line.append(f"flops ({height}x{width}, {args.detections} detections): {gflops:.1f} G;"
                        f" not counted: {unsupported}")
        print("; ".join(line), flush=True)


if __name__ == "__main__":
    main()
