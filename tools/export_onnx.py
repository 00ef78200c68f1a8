"""Export an MViT classifier or detection backbone to ONNX and check it with onnxruntime.

Examples (docs/BENCHMARKS.md):
    .venv/bin/python tools/export_onnx.py --model mvitv2_t --size 224 --out /tmp/mvitv2_t.onnx
    .venv/bin/python tools/export_onnx.py --model backbone-T --size 512 --out /tmp/mvit_T.onnx
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict

import torch

from mvit_backbone import create_model
from mvit_backbone.benchmark import build_model
from mvit_backbone.export import export_onnx, onnx_max_abs_error


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mvitv2_t",
                   help="a create_model name, or backbone-<variant> for the detection backbone")
    p.add_argument("--size", type=int, nargs="+", default=[224], help="H [W]")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model.startswith("backbone-"):
        model = build_model("ours", args.model.split("-", 1)[1])
    else:
        model = create_model(args.model)
    h, w = args.size[0], args.size[-1]
    x = torch.randn(args.batch, 3, h, w)
    report = export_onnx(model, x, args.out)
    err = onnx_max_abs_error(args.out, model, [x, torch.randn_like(x)])
    print(json.dumps(dict(asdict(report), max_abs_error=err), indent=1))


if __name__ == "__main__":
    main()
