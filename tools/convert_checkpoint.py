#!/usr/bin/env python
"""Convert an MViT checkpoint between layouts; nothing in the input file runs.

    python tools/convert_checkpoint.py MViTv2_T_in1k.pyth                   # -> ours, .safetensors
    python tools/convert_checkpoint.py model_final.pth --to detectron2 -o d2_model.pth
    python tools/convert_checkpoint.py mvitv2_t.safetensors --to timm -o timm_mvitv2_t.safetensors

Input: any format and layout ``mvit_backbone.load_checkpoint`` reads (official ``.pyth``,
detectron2 ``.pkl``/``.pth``, timm ``.pth``/``.bin``/``.safetensors``, ours). ``--to ours``
gives our (official) names, ``--to detectron2`` a ``{"model": ...}`` file that stock
detectron2's ``DetectionCheckpointer`` loads into a model with ``detectron2.modeling.MViT``,
``--to timm`` timm's ``mvitv2_*`` names. The output type follows the suffix of ``-o``
(default: ``<input>_<layout>.safetensors``; ``.pth`` for detectron2).
"""
import os

from mvit_backbone.checkpoint.convert import LAYOUTS, convert_checkpoint
from mvit_backbone.engine.cli import run_tool, tool_parser

PROGRESS_FROM_BYTES = 64 * 2**20


def main(args) -> None:
    output = args.output or "{}_{}{}".format(
        os.path.splitext(args.input)[0], args.to, ".pth" if args.to == "detectron2" else ".safetensors")
    progress = (not args.no_progress and os.path.isfile(args.input)
                and os.path.getsize(args.input) >= PROGRESS_FROM_BYTES)
    summary = convert_checkpoint(args.input, output, to=args.to, progress=progress)
    print(f"wrote {summary['path']}: {summary['tensors']} tensors, {summary['bytes']} bytes "
          f"({summary['source_layout']} -> {summary['layout']})")


if __name__ == "__main__":
    parser = tool_parser(__doc__, "tools/convert_checkpoint.py model_final.pth --to detectron2 "
                                  "-o d2_model.pth", config_file="none", opts=False)
    parser.add_argument("input", help="checkpoint to convert")
    parser.add_argument("--to", choices=LAYOUTS, default="ours", help="layout to write")
    parser.add_argument("-o", "--output",
                        help="file to write; its suffix picks the file type (default: "
                             "<input>_<layout>.safetensors, .pth for detectron2)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    run_tool(main, parser.parse_args())
