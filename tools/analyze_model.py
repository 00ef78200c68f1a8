#!/usr/bin/env python
"""Parameters and FLOPs (fvcore) of a config's model, LazyConfig (.py) or yacs (.yaml):

    python tools/analyze_model.py --config-file configs/COCO-InstanceSegmentation/\
mask_rcnn_mvitv2_t_3x.py --tasks parameter flop [--flop-input 800x1333] [key=value ...]
"""
import argparse

from detectron2.config import LazyConfig, get_cfg

from mvit_backbone import add_mvitv2_config
from mvit_backbone.engine import count_flops, count_parameters, parameter_table


def load_config(path, opts):
    if path.endswith(".py"):
        return LazyConfig.apply_overrides(LazyConfig.load(path), opts)
    cfg = add_mvitv2_config(get_cfg())
    cfg.merge_from_file(path)
    cfg.merge_from_list(opts)
    return cfg


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--tasks", nargs="+", choices=["parameter", "flop"], default=["parameter"])
    parser.add_argument("--flop-input", default="800x1333", help="HxW of the random image")
    parser.add_argument("--max-depth", type=int, default=3, help="depth of the parameter table")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides")
    args = parser.parse_args()
    cfg = load_config(args.config_file, args.opts)
    if "parameter" in args.tasks:
        print(parameter_table(cfg, args.max_depth))
        print(f"parameters: {count_parameters(cfg) / 1e6:.2f} M")
    if "flop" in args.tasks:
        height, width = (int(v) for v in args.flop_input.lower().split("x"))
        gflops, unsupported = count_flops(cfg, height, width)
        print(f"flops ({height}x{width}): {gflops:.1f} G; not counted: {unsupported}")


if __name__ == "__main__":
    main()
