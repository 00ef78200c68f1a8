"""Mean attention distance per head and block (MViTv1 Fig. A.6): ViT-B beside MViTv2, one point
per head, and the ratio of their dynamic ranges (MViTv1: about 4x larger in MViT at
initialisation). The logic is in mvit_backbone/benchmark/attention_distance.py.

Writes <out>/attention_distance.png and .json.

Examples:
    .venv/bin/python tools/attention_distance.py                       # random init, synthetic images
    .venv/bin/python tools/attention_distance.py --weights mvitv2_s=MViTv2_S_in1k.pyth --models mvitv2_s
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mvit_backbone import create_model, load_checkpoint
from mvit_backbone.benchmark.attention_distance import (
    mean_attention_distance,
    plot_attention_distance,
    write_attention_distance,
)
from mvit_backbone.data.image_folder import write_synthetic_image_folder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_images(paths: list[Path], size: int) -> torch.Tensor:
    """Images resized to size x size, ImageNet-normalised: (N, 3, size, size)."""
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    batch = []
    for path in paths:
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB").resize((size, size), Image.BICUBIC), np.float32)
        batch.append((torch.from_numpy(rgb).permute(2, 0, 1) / 255.0 - mean) / std)
    return torch.stack(batch)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["vit_b", "mvitv2_s"],
                   help="create_model names; the first is the baseline of the range ratio")
    p.add_argument("--weights", nargs="*", default=[],
                   help="NAME=PATH: load a checkpoint into model NAME (default: random init)")
    p.add_argument("--image-dir", default="", help="images to use (default: the synthetic set)")
    p.add_argument("--images", type=int, default=8, help="number of images")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    p.add_argument("--out", default="output/attention_distance")
    args = p.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.image_dir:
        paths = sorted(q for q in Path(args.image_dir).rglob("*")
                       if q.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if not paths:
            raise SystemExit(f"no .png/.jpg images under {args.image_dir}")
    else:
        root = write_synthetic_image_folder(out / "images", train_per_class=0, val_per_class=1)
        paths = sorted((root / "val").rglob("*.png"))
    images = load_images(paths[:args.images], args.size)
    weights = dict(w.split("=", 1) for w in args.weights)
    results = {}
    for name in args.models:
        torch.manual_seed(args.seed)
        model = create_model(name, num_classes=0, drop_path_rate=0.0)
        if name in weights:
            print(load_checkpoint(model, weights[name], strict=False))
        results[name] = mean_attention_distance(model, images)
    init = "random init" if not weights else "weights: " + ", ".join(args.weights)
    plot_attention_distance(results, out / "attention_distance.png",
                            f"mean attention distance, {len(images)} images {args.size}², {init}")
    summary = write_attention_distance(results, out / "attention_distance.json", dict(
        images=len(images), size=args.size, seed=args.seed, weights=weights,
        source=args.image_dir or "synthetic image set"))
    for name, model_summary in summary["models"].items():
        print(f"{name}: dynamic range {model_summary['dynamic_range']:.4f}")
    for what, ratio in summary.get("range_ratio", {}).items():
        print(f"range ratio {what}: {ratio:.2f}")
    print(f"written: {out / 'attention_distance.png'} {out / 'attention_distance.json'}")


if __name__ == "__main__":
    main()
