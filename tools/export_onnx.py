#!/usr/bin/env python
"""Export an MViT classifier or detection backbone to ONNX and check it with onnxruntime.

The model is a create_model name (--model mvitv2_t), the detection backbone of an MViTv2
variant (--model backbone-T), or the detection backbone of a LazyConfig (--config-file, e.g.
the demo's, with --weights output/demo/model_final.pth). --weights loads trained weights in any
format mvit_backbone.load_checkpoint reads. The ONNX graph takes any batch size; height and width
are fixed at export (--size, any size the model takes). The check runs onnxruntime at batch 1
and 2 against PyTorch and prints the largest difference.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict

import torch

from mvit_backbone import create_model, list_models
from mvit_backbone.benchmark import build_model
from mvit_backbone.engine.cli import (
    UserError,
    load_lazy_config,
    move_overrides,
    run_tool,
    tool_parser,
)
from mvit_backbone.export import export_onnx, load_weights_for_export, onnx_max_abs_error

EXAMPLE = ("tools/export_onnx.py --config-file configs/Demo/mask_rcnn_mvitv2_demo.py "
           "--weights output/demo/model_final.pth --size 208 277")
BACKBONE_VARIANTS = ("T", "S", "B", "L", "H")


def build(args) -> tuple[torch.nn.Module, str]:
    """The model to export and its name."""
    if args.config_file:
        from detectron2.config import instantiate

        cfg = load_lazy_config(args.config_file, args.opts)
        name = os.path.splitext(os.path.basename(args.config_file))[0] + "_backbone"
        return instantiate(cfg.model.backbone.bottom_up), name
    if args.opts:
        raise UserError(f"config overrides {args.opts} need --config-file")
    if args.model.startswith("backbone-"):
        variant = args.model.split("-", 1)[1].upper()
        if variant not in BACKBONE_VARIANTS:
            raise UserError(f"--model {args.model}: the variant is one of "
                            f"{', '.join(BACKBONE_VARIANTS)}")
        return build_model("ours", variant), args.model
    if args.model not in list_models():
        raise UserError(f"--model {args.model} is not a model name: backbone-T ... backbone-H, or "
                        f"one of {', '.join(list_models())}")
    return create_model(args.model), args.model


def parse_size(tokens: list[str]) -> list[int]:
    try:
        size = [int(t) for t in tokens]
    except ValueError:
        raise UserError(f"--size {' '.join(tokens)}: give H or H W in pixels") from None
    if not 1 <= len(size) <= 2:
        raise UserError(f"--size {' '.join(tokens)}: give H or H W in pixels")
    return size


def main(args) -> None:
    # --size takes several values and swallows the key=value overrides after it
    sizes, args.opts = move_overrides(args.size, args.opts)
    args.size = parse_size(sizes)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, name = build(args)
    if args.weights:
        load_weights_for_export(model, args.weights)
    height, width = args.size[0], args.size[-1]
    out = args.out or os.path.join("output", "onnx", f"{name}_{height}x{width}.onnx")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    report = export_onnx(model, torch.randn(2, 3, height, width), out)
    checks = [torch.randn(batch, 3, height, width) for batch in (1, 2)]
    err = onnx_max_abs_error(out, model, checks)
    print(json.dumps(dict(asdict(report), max_abs_error=err, checked_batches=[1, 2]), indent=1))


if __name__ == "__main__":
    parser = tool_parser(__doc__, EXAMPLE, config_file="optional")
    parser.add_argument("--model", default="mvitv2_t",
                        help="a create_model name, or backbone-<T|S|B|L|H> for the detection "
                             "backbone (ignored with --config-file)")
    parser.add_argument("--weights", default="", help="trained weights to export (default: random)")
    parser.add_argument("--size", nargs="+", default=["224"], metavar="PIXELS",
                        help="input height and width (one value: square)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", default="",
                        help="ONNX file (default: output/onnx/<model>_<H>x<W>.onnx)")
    run_tool(main, parser.parse_args())
