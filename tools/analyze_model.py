#!/usr/bin/env python
"""Parameters and FLOPs (fvcore) of configs' models, LazyConfig (.py) or yacs (.yaml).

How FLOPs are counted: fvcore's FlopCountAnalysis (one multiply-add = one FLOP, as the papers
count) of inference on one random image of --flop-input, with the model's initial weights. A
model with random weights scores no box above its test threshold, so the box predictor keeps
its top --detections boxes whatever their score: the mask head then runs on as many RoIs as a
trained model's on a typical COCO image. The default (1024x1024, 100 detections) reproduces the
MViTv2 paper's Table 5 for detectron2's own MViT. With several configs it prints one line per
config (the parameter table only for a single config).
"""
from mvit_backbone import add_mvitv2_config
from mvit_backbone.engine import count_flops, count_parameters, parameter_table
from mvit_backbone.engine.analysis import TABLE5_DETECTIONS, TABLE5_INPUT
from mvit_backbone.engine.cli import (
    UserError,
    check_file,
    load_lazy_config,
    merge_yacs_overrides,
    move_overrides,
    run_tool,
    tool_parser,
)

TASKS = ("parameter", "flop")
EXAMPLE = ("tools/analyze_model.py --config-file configs/COCO-InstanceSegmentation/"
           "mask_rcnn_mvitv2_t_3x.py --tasks parameter flop model.roi_heads.num_classes=4")


def load_config(path: str, opts: list[str]):
    """A LazyConfig (``.py``) or a yacs config with ``cfg.MODEL.MVITV2``, overrides applied."""
    if path.endswith(".py"):
        return load_lazy_config(path, opts)
    from detectron2.config import get_cfg

    check_file(path, "config file")
    cfg = add_mvitv2_config(get_cfg())
    cfg.merge_from_file(path)
    merge_yacs_overrides(cfg, opts)
    return cfg


def parse_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--flop-input {text!r} is not HxW (e.g. 1024x1024)") from None
    return height, width


def main(args) -> None:
    # multi-value flags swallow the key=value overrides that follow them: take those back
    configs, opts = move_overrides(args.config_file, args.opts)
    tasks, opts = move_overrides(args.tasks, opts)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise UserError(f"--tasks {unknown[0]!r} is not one of {', '.join(TASKS)}")
    height, width = parse_size(args.flop_input)
    for path in configs:
        cfg = load_config(path, opts)
        line = [path]
        if "parameter" in tasks:
            if len(configs) == 1:
                print(parameter_table(cfg, args.max_depth))
            line.append(f"parameters: {count_parameters(cfg) / 1e6:.2f} M")
        if "flop" in tasks:
            gflops, unsupported = count_flops(cfg, height, width, args.detections)
            line.append(f"flops ({height}x{width}, {args.detections} detections): {gflops:.1f} G;"
                        f" not counted: {unsupported}")
        print("; ".join(line), flush=True)


if __name__ == "__main__":
    parser = tool_parser(__doc__, EXAMPLE, config_file="none")
    parser.add_argument("--config-file", required=True, nargs="+", metavar="FILE",
                        help="one or more config files (.py LazyConfig or .yaml yacs)")
    parser.add_argument("--tasks", nargs="+", default=["parameter"], metavar="TASK",
                        help=f"what to count: {' and/or '.join(TASKS)}")
    parser.add_argument("--flop-input", default="x".join(map(str, TABLE5_INPUT)),
                        help="HxW of the random image the FLOPs are counted on")
    parser.add_argument("--detections", type=int, default=TABLE5_DETECTIONS,
                        help="boxes the box predictor keeps per image whatever their score "
                             "(the RoIs of the mask head)")
    parser.add_argument("--max-depth", type=int, default=3, help="depth of the parameter table")
    run_tool(main, parser.parse_args())
