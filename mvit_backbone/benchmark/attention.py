"""Attention mechanisms side by side: pooling, fixed windows, Swin, Hwin (MViTv2 Table 4).

Every row of :data:`ATTENTION_VARIANTS` is one model built from our one trunk by arguments
(``create_model(**ATTENTION_VARIANTS[row])``), named ``"<model>/<mechanism>"`` after the keys of
Table 4 in ``paper_numbers.json``. Per row and workload the benchmark measures

- parameters and fvcore FLOPs of the default model (batch 1, eval);
- peak training memory of one step, in a fresh process per row (``python -m
  mvit_backbone.benchmark SPEC``; peak RSS growth on CPU, ``max_memory_allocated`` on CUDA);
- training steps/s (forward + backward) and inference images/s at a given batch: medians over
  repeats after warm-up, the rows' steps interleaved (row a, row b, ..., row a, ...) so that load
  from other processes hits every row alike;
- optionally (:func:`train_classification_accuracy`, :func:`train_detection_accuracy`) the
  accuracy after the same training budget for every row.

Workloads: ``"classification"`` (the classifier at 224²), ``"backbone"`` (the detectron2
backbone ``mvit_backbone.MViT`` with the row's attention at detection sizes; its windows are
those of :data:`DETECTION_OVERRIDES`), ``"maskrcnn"`` (a LazyConfig Mask R-CNN whose
``backbone.bottom_up`` takes the row's attention; multi-scale trunks only).

Window sizes at 224²: ViT-B's 14x14 tokens are cut into 2x2 windows of 7. MViTv2-S's windows
in detection (56, 28, 14, 7 on the stage grids of a 1024² image) would each cover a whole stage
grid at 224² (56, 28, 14, 7): its classification rows use 28 (2x2 windows in stages 1-3), and
stage 4 (7x7, which no window halves) attends globally. The two-scale ViT-B with K/V stride 2
has no 2x2 window layout at 224² (its 7x7 pooled keys do not split into two windows), so
``ViT-B/pooling+hwin`` there has one window per map and equals ``ViT-B/pooling``; it differs
at detection sizes (Table 4b is a detection table).
"""
from __future__ import annotations

import csv
import json
import math
import os
import statistics
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from ..engine.progress import Progress
from .backbone import interleaved, memory_subprocess, reference_kwargs, run_step, step_peak_memory

# row -> create_model arguments at 224² (ImageNet classification, Table 4a)
ATTENTION_VARIANTS: dict[str, dict[str, Any]] = {
    "ViT-B/full": dict(name="vit_b"),
    "ViT-B/fixed_window": dict(name="vit_b", window_mode="window"),
    "ViT-B/swin": dict(name="vit_b", window_mode="swin"),
    "ViT-B/hwin": dict(name="vit_b", window_mode="hwin"),
    "ViT-B/pooling": dict(name="vit_b", kv_stride=2, last_block_indexes=(5, 11)),
    "ViT-B/pooling+hwin": dict(name="vit_b", kv_stride=2, last_block_indexes=(5, 11),
                               window_mode="hwin", adaptive_window_size=14),
    "MViTv2-S/pooling": dict(name="mvitv2_s"),
    "MViTv2-S/pooling_stride8": dict(name="mvitv2_s", kv_stride=8),
    "MViTv2-S/pooling+swin": dict(name="mvitv2_s", window_mode="swin", adaptive_window_size=28,
                                  global_blocks=(14, 15)),
    "MViTv2-S/pooling+hwin": dict(name="mvitv2_s", window_mode="hwin", adaptive_window_size=28,
                                  global_blocks=(2, 13, 14, 15)),
}

# row -> argument changes at detection sizes (Table 4b): ViTDet's window of 14 for ViT-B,
# MViTv2's Hwin windows (56 at stride 4) with detectron2's global blocks for MViTv2-S
DETECTION_OVERRIDES: dict[str, dict[str, Any]] = {
    "ViT-B/fixed_window": dict(adaptive_window_size=14),
    "ViT-B/swin": dict(adaptive_window_size=14),
    "ViT-B/hwin": dict(adaptive_window_size=14),
    "ViT-B/pooling+hwin": dict(adaptive_window_size=14),
    "MViTv2-S/pooling+swin": dict(adaptive_window_size=56, global_blocks=None),
    "MViTv2-S/pooling+hwin": dict(adaptive_window_size=56, global_blocks=None),
}

WORKLOADS = ("classification", "backbone", "maskrcnn")
DEFAULT_DET_CONFIG = "configs/Demo/mask_rcnn_mvitv2_demo.py"
PAPER_TABLE4A = "attention_mechanisms_table4a_in1k"
PAPER_TABLE4B = "attention_mechanisms_table4b_coco_mask_rcnn"


def split_row(row: str) -> tuple[str, str]:
    """``"ViT-B/hwin"`` -> ``("ViT-B", "hwin")``."""
    if row not in ATTENTION_VARIANTS:
        raise ValueError(f"unknown attention row {row!r}; known: {sorted(ATTENTION_VARIANTS)}")
    model, mechanism = row.split("/", 1)
    return model, mechanism


def select_rows(patterns: Sequence[str] | None = None) -> list[str]:
    """Rows whose name contains one of ``patterns`` (all rows for None), in table order."""
    if not patterns:
        return list(ATTENTION_VARIANTS)
    rows = [r for r in ATTENTION_VARIANTS if any(p in r for p in patterns)]
    if not rows:
        raise ValueError(f"no attention row matches {list(patterns)}; rows: {list(ATTENTION_VARIANTS)}")
    return rows


def trunk_kwargs(row: str, detection: bool = False) -> dict[str, Any]:
    """The row's trunk arguments (``mvit_backbone.MViTTrunk``), every architecture argument
    spelled out: ViT-B's :data:`~mvit_backbone.classification.models.VIT_B_ARCH` or MViTv2-S's
    detectron2 arguments, then the row's attention (with :data:`DETECTION_OVERRIDES` when
    ``detection``)."""
    from ..classification.models import VIT_B_ARCH, VIT_B_HWIN_GLOBAL_BLOCKS

    args = dict(ATTENTION_VARIANTS[row])
    name = args.pop("name")
    if name == "vit_b":
        base = dict(VIT_B_ARCH)
        if args.get("window_mode") == "hwin":
            base["global_blocks"] = VIT_B_HWIN_GLOBAL_BLOCKS
    else:
        base = reference_kwargs("S")
    base.update(window_mode="none", drop_path_rate=0.0)
    if "kv_stride" in args:
        args["adaptive_kv_stride"] = args.pop("kv_stride")
    base.update(args)
    if detection:
        base.update(DETECTION_OVERRIDES.get(row, {}))
    return base


def build_row_model(row: str, workload: str = "classification", kernels: str = "auto",
                    det_config: str = DEFAULT_DET_CONFIG, num_classes: int = 1000,
                    **overrides) -> nn.Module:
    """The row's model for a workload: the classifier (``create_model(**ATTENTION_VARIANTS[row],
    **overrides)``), the detectron2 backbone with every stage as an output, or the Mask R-CNN of
    ``det_config`` with the row's attention in ``backbone.bottom_up``."""
    if workload == "classification":
        return _create(row, kernels=kernels, num_classes=num_classes, **overrides)
    if workload == "backbone":
        from ..detection import MViT

        args = dict(trunk_kwargs(row, detection=True), kernels=kernels, **overrides)
        stages = [f"scale{s + 2}" for s in range(len(args["last_block_indexes"]))]
        return MViT(**args, out_features=stages)
    if workload == "maskrcnn":
        from detectron2.config import instantiate

        return instantiate(maskrcnn_config(row, det_config, kernels, **overrides).model)
    raise ValueError(f"workload must be one of {WORKLOADS}, got {workload!r}")


def _create(row: str, **kwargs) -> nn.Module:
    from ..classification.models import create_model

    return create_model(**dict(ATTENTION_VARIANTS[row], **kwargs))


def maskrcnn_config(row: str, det_config: str = DEFAULT_DET_CONFIG, kernels: str = "auto",
                    **overrides):
    """The LazyConfig ``det_config`` with the row's attention (window mode, K/V stride, window,
    global blocks at detection sizes) in ``model.backbone.bottom_up``, the rest of the trunk as
    the config has it. Multi-scale trunks (MViTv2 rows) only: the FPN needs four stages."""
    from detectron2.config import LazyConfig

    model, _ = split_row(row)
    if model != "MViTv2-S":
        raise ValueError(f"{row}: Mask R-CNN takes the multi-scale MViTv2 rows only (ViT-B "
                         "would need a simple feature pyramid over its single scale)")
    cfg = LazyConfig.load(str(det_config))
    attention = {k: v for k, v in trunk_kwargs(row, detection=True).items()
                 if k in ("window_mode", "adaptive_kv_stride", "adaptive_window_size",
                          "global_blocks")}
    cfg.model.backbone.bottom_up.update(attention, kernels=kernels, **overrides)
    return cfg


# --------------------------------------------------------------------------- inputs and steps


def maskrcnn_inputs(batch: int, height: int, width: int, device: str = "cpu",
                    boxes_per_image: int = 4, seed: int = 0) -> list[dict]:
    """detectron2 inputs of random images (uint8 values as float, BGR) with random box and mask
    annotations: one rectangle mask per box (the box filled), class ids 0-3."""
    from detectron2.structures import BitMasks, Boxes, Instances

    g = torch.Generator().manual_seed(seed)
    inputs = []
    for _ in range(batch):
        image = torch.randint(0, 256, (3, height, width), generator=g).float()
        xy = torch.rand(boxes_per_image, 2, generator=g) * torch.tensor([width * 0.6, height * 0.6])
        wh = (0.1 + 0.3 * torch.rand(boxes_per_image, 2, generator=g)) * torch.tensor([width, height])
        boxes = torch.cat([xy, xy + wh], dim=1).round()
        masks = torch.zeros(boxes_per_image, height, width, dtype=torch.bool)
        for m, (x0, y0, x1, y1) in zip(masks, boxes.long().tolist()):
            m[y0:y1, x0:x1] = True
        instances = Instances((height, width), gt_boxes=Boxes(boxes),
                              gt_classes=torch.randint(0, 4, (boxes_per_image,), generator=g),
                              gt_masks=BitMasks(masks))
        inputs.append({"image": image.to(device), "instances": instances.to(device),
                       "height": height, "width": width})
    return inputs


def workload_input(workload: str, batch: int, height: int, width: int, device: str = "cpu"):
    """A batch for the workload: images (B, 3, H, W), or Mask R-CNN's list of dicts."""
    if workload == "maskrcnn":
        return maskrcnn_inputs(batch, height, width, device)
    torch.manual_seed(0)
    return torch.randn(batch, 3, height, width, device=device)


def train_step(model: nn.Module, inputs, workload: str) -> None:
    """Forward + backward of one training step (no optimizer): the summed outputs (classifier,
    backbone; :func:`~mvit_backbone.benchmark.run_step`) or the summed losses (Mask R-CNN)."""
    if workload != "maskrcnn":
        run_step(model, inputs, "fwd+bwd")
        return
    from detectron2.utils.events import EventStorage

    model.train()
    model.zero_grad(set_to_none=True)
    with EventStorage(0):  # detectron2's heads record training statistics there
        losses = model(inputs)
    sum(losses.values()).backward()
    if inputs[0]["image"].is_cuda:
        torch.cuda.synchronize()


def inference_step(model: nn.Module, inputs, workload: str) -> None:
    """One inference forward (eval, no_grad)."""
    if workload != "maskrcnn":
        run_step(model, inputs, "fwd")
        return
    model.eval()
    with torch.no_grad():
        model(inputs)
    if inputs[0]["image"].is_cuda:
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- costs


def count_row_flops(model: nn.Module, workload: str, height: int, width: int) -> float:
    """fvcore GFLOPs (multiply-adds) of the model as built, one image, eval. Our kernels fall
    back to the reference path under tracing, so attention is counted."""
    if workload == "maskrcnn":
        from detectron2.utils.analysis import FlopCountAnalysis

        from ..engine.analysis import keep_top_detections

        keep_top_detections(model.eval())
        image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8).float()
        analysis = FlopCountAnalysis(model, [{"image": image}])
    else:
        from fvcore.nn import FlopCountAnalysis

        analysis = FlopCountAnalysis(model.eval(), torch.zeros(1, 3, height, width))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad():
        return analysis.total() / 1e9


def measure_row_memory(row: str, workload: str, height: int, width: int, batch: int,
                       device: str = "cpu", kernels: str = "auto",
                       det_config: str = DEFAULT_DET_CONFIG) -> float:
    """Peak memory (MiB) of one training step of the row, in this process (call it in a fresh
    one: :func:`row_memory_subprocess`)."""
    torch.manual_seed(0)
    model = build_row_model(row, workload, kernels, det_config).to(device)
    inputs = workload_input(workload, batch, height, width, device)
    return step_peak_memory(partial(train_step, model, inputs, workload), device)


def row_memory_subprocess(row: str, workload: str, height: int, width: int, batch: int,
                          device: str = "cpu", kernels: str = "auto",
                          det_config: str = DEFAULT_DET_CONFIG) -> float:
    """:func:`measure_row_memory` in a fresh Python process (same threads as this one)."""
    spec = dict(row=row, workload=workload, height=height, width=width, batch=batch,
                device=device, kernels=kernels, det_config=det_config)
    return memory_subprocess(spec, torch.get_num_threads())


@dataclass
class AttentionResult:
    """One row of one workload: costs, and accuracy when trained (mean over seeds)."""

    row: str
    workload: str
    height: int
    width: int
    batch: int
    params_m: float | None = None
    gflops: float | None = None
    train_mem_mib: float | None = None
    train_steps_per_s: float | None = None
    infer_images_per_s: float | None = None
    accuracy: float | None = None  # top-1 % (classification) or box AP (detection)
    accuracy_runs: list[float] = field(default_factory=list)
    mask_ap: float | None = None
    paper: dict[str, float] = field(default_factory=dict)


def paper_figures(row: str, workload: str, numbers: dict | None) -> dict[str, float]:
    """Table 4a (classification: gflops, mem_g, acc) or 4b (Mask R-CNN: box AP, train it/s,
    test im/s, mem_g) figures of the row, {} if the paper has none (or for the backbone alone)."""
    if not numbers:
        return {}
    model, mechanism = split_row(row)
    if workload == "classification":
        return dict(numbers.get(PAPER_TABLE4A, {}).get(model, {}).get(mechanism, {}))
    if workload != "maskrcnn":
        return {}
    entry = numbers.get(PAPER_TABLE4B, {}).get(model, {}).get(mechanism)
    return dict(zip(("box_ap", "train_it_s", "test_im_s", "mem_g"), entry)) if entry else {}


def load_paper_numbers(path: str | os.PathLike | None) -> dict | None:
    """``paper_numbers.json`` if it exists (the figures are shown beside ours), else None."""
    if path and Path(path).is_file():
        return json.loads(Path(path).read_text())
    return None


def run_attention_benchmark(
    rows: Sequence[str],
    workload: str = "classification",
    size: tuple[int, int] = (224, 224),
    batch: int = 8,
    train_batch: int | None = None,
    repeats: int = 3,
    warmup: int = 1,
    device: str = "cpu",
    kernels: str = "auto",
    det_config: str = DEFAULT_DET_CONFIG,
    flops: bool = True,
    memory: bool = True,
    timing: Sequence[str] = ("train", "infer"),
    paper_numbers: dict | None = None,
    log: Callable[[str], None] = print,
) -> list[AttentionResult]:
    """Costs of every row on one workload (see the module docstring). ``batch``: inference
    batch; ``train_batch`` (default ``batch``): training batch, also of the memory step;
    ``timing``: which steps to time ("train", "infer"; empty: none).
    ``log`` gets a progress line with ETA after each measurement."""
    height, width = size
    train_batch = train_batch or batch
    steps = len(rows) * (int(flops) + int(memory)) + int(bool(timing))
    progress = Progress(max(steps, 1), unit="measurement")
    results = {r: AttentionResult(r, workload, height, width, train_batch,
                                  paper=paper_figures(r, workload, paper_numbers)) for r in rows}
    models: dict[str, nn.Module] = {}
    for row in rows:
        torch.manual_seed(0)
        model = build_row_model(row, workload, kernels, det_config)
        results[row].params_m = sum(p.numel() for p in model.parameters()) / 1e6
        if flops:
            results[row].gflops = count_row_flops(model, workload, height, width)
            progress.step()
            log(f"{row}: {results[row].gflops:.2f} GFLOPs  " + progress.line())
        if memory:
            results[row].train_mem_mib = row_memory_subprocess(
                row, workload, height, width, train_batch, device, kernels, det_config)
            progress.step()
            log(f"{row}: peak training memory {results[row].train_mem_mib:.0f} MiB  "
                + progress.line())
        if timing:
            models[row] = model.to(device)
        else:
            del model
    if timing:
        infer_x = workload_input(workload, batch, height, width, device)
        train_x = workload_input(workload, train_batch, height, width, device)
        steps = []
        if "train" in timing:
            steps += [(f"{row}|train", partial(train_step, m, train_x, workload))
                      for row, m in models.items()]
        if "infer" in timing:
            steps += [(f"{row}|infer", partial(inference_step, m, infer_x, workload))
                      for row, m in models.items()]
        records = interleaved(steps, repeats=repeats, warmup=warmup)
        for row in models:
            if "train" in timing:
                train_s = statistics.median(r["wall_s"] for r in records[f"{row}|train"])
                results[row].train_steps_per_s = 1.0 / train_s
            if "infer" in timing:
                infer_s = statistics.median(r["wall_s"] for r in records[f"{row}|infer"])
                results[row].infer_images_per_s = batch / infer_s
        progress.step()
        log("timings done  " + progress.line())
    return [results[r] for r in rows]


# --------------------------------------------------------------------------- accuracy


@dataclass(frozen=True)
class ClassificationBudget:
    """The same training budget for every row (:func:`train_classification_accuracy`).

    ``width_div`` divides the width (and ViT-B's heads) of every row to fit a CPU, and
    ``img_size`` below 224 scales every window with the image (:func:`scaled_windows`): depth,
    stages, strides and the window layout of each mechanism are kept.
    """

    epochs: int = 1
    batch_size: int = 20
    img_size: int = 128
    lr: float = 1e-3
    warmup_epochs: float = 0.3
    width_div: int = 8
    train_per_class: int = 30
    val_per_class: int = 20
    image_size: int = 72  # of the synthetic PNGs (resized to img_size)


def reduced_width(row: str, width_div: int) -> dict[str, Any]:
    """Overrides dividing the row's width by ``width_div`` (ViT-B: heads too, so the head
    dimension stays 64)."""
    if width_div == 1:
        return {}
    model, _ = split_row(row)
    if model == "ViT-B":
        return dict(embed_dim=768 // width_div, num_heads=max(12 // width_div, 1))
    return dict(embed_dim=96 // width_div)


def scaled_windows(row: str, img_size: int) -> dict[str, Any]:
    """The row's window at ``img_size`` instead of 224 (window x img_size / 224), so that every
    stage keeps its layout of windows; ValueError where the window does not scale to a whole
    number or the image to whole stage grids (img_size must be a multiple of 32)."""
    from ..classification.models import VIT_B_ARCH

    args = ATTENTION_VARIANTS[row]
    if img_size == 224 or args.get("window_mode", "none") == "none":
        return {}
    window = args.get("adaptive_window_size", VIT_B_ARCH["adaptive_window_size"])
    if img_size % 32 or (window * img_size) % 224:
        raise ValueError(f"{row}: window {window} at 224² does not scale to {img_size}²; "
                         "use a multiple of 32 for which window * size / 224 is whole (e.g. 128)")
    return dict(adaptive_window_size=window * img_size // 224)


def train_classification_accuracy(
    rows: Sequence[str], seeds: Sequence[int], out_dir: str | os.PathLike,
    budget: ClassificationBudget = ClassificationBudget(), data_dir: str = "",
    kernels: str = "auto", log: Callable[[str], None] = print,
) -> dict[str, list[float]]:
    """Train every row for the same budget and return its top-1 (%) per seed.

    The trainer is the ImageNet one (:func:`mvit_backbone.classification.train.run`) with a
    light recipe (AdamW, warm-up + cosine, no mixup / RandAugment / flips: the synthetic classes
    include left-of / right-of). Data: ``data_dir`` (an ImageFolder root with train/ and val/)
    or the synthetic image set, drawn per seed. Top-1 is the "full" protocol (the whole image
    resized), which keeps every object of the synthetic images. The trainer runs on CUDA when
    there is one, else on the CPU.
    """
    from ..classification.train import TrainConfig, run

    out = Path(out_dir)
    progress = Progress(len(rows) * len(seeds), unit="training run")
    top1: dict[str, list[float]] = {r: [] for r in rows}
    for seed in seeds:
        for row in rows:
            args = dict(ATTENTION_VARIANTS[row])
            name = args.pop("name")
            args.update(reduced_width(row, budget.width_div), kernels=kernels,
                        **scaled_windows(row, budget.img_size))
            cfg = TrainConfig(
                data_dir=data_dir, synthetic_dir=str(out / "data" / f"shapes_seed{seed}"),
                synthetic_train_per_class=budget.train_per_class,
                synthetic_val_per_class=budget.val_per_class,
                synthetic_image_size=budget.image_size,
                output_dir=str(out / "train" / row.replace("/", "_") / f"seed{seed}"),
                model=name, model_kwargs=args, img_size=budget.img_size, drop_path=0.0,
                epochs=budget.epochs, warmup_epochs=budget.warmup_epochs,
                batch_size=budget.batch_size, base_lr=budget.lr,
                base_batch_size=budget.batch_size, auto_augment="", color_jitter=0.0, hflip=0.0,
                train_scale=(0.7, 1.0), reprob=0.0, mixup=0.0, cutmix=0.0, repeated_aug=1,
                eval_protocols=("full",), seed=seed, num_workers=0,
                threads=torch.get_num_threads(), log_period=10**6,
            )
            metrics = run(cfg)
            top1[row].append(metrics["final"]["val_full_top1"])
            progress.step()
            log(f"{row} seed {seed}: top-1 {top1[row][-1]:.1f}%  " + progress.line())
    return top1


def train_detection_accuracy(
    rows: Sequence[str], seeds: Sequence[int], out_dir: str | os.PathLike,
    det_config: str = DEFAULT_DET_CONFIG, iters: int = 60, val_images: int = 40,
    dataset_overrides: Sequence[str] = (), kernels: str = "auto",
    log: Callable[[str], None] = print,
) -> dict[str, list[tuple[float, float]]]:
    """Train the Mask R-CNN of ``det_config`` with every (MViTv2) row's attention for ``iters``
    iterations and return (box AP, mask AP) per seed, evaluated by pycocotools.

    Runs :func:`mvit_backbone.engine.demo.run_demo` (the demo's synthetic COCO set, written
    under ``out_dir``, the demo's pre-trained trunk for every row); ``dataset_overrides``
    (LazyConfig ``key=value`` strings) point the loaders and evaluator at a registered COCO set
    instead.
    """
    from ..engine.demo import run_demo

    out = Path(out_dir)
    progress = Progress(len(rows) * len(seeds), unit="training run")
    aps: dict[str, list[tuple[float, float]]] = {r: [] for r in rows}
    for seed in seeds:
        for row in rows:
            attention = {k: v for k, v in trunk_kwargs(row, detection=True).items()
                         if k in ("window_mode", "adaptive_kv_stride", "adaptive_window_size",
                                  "global_blocks")}
            overrides = [f"model.backbone.bottom_up.{k}={v!r}" for k, v in attention.items()]
            overrides += [f"model.backbone.bottom_up.kernels={kernels!r}", f"train.seed={seed}",
                          f"demo.dataset_root={str(out / 'data' / 'coco_shapes')!r}",
                          f"demo.splits.val=[{val_images}, 1]", *dataset_overrides]
            summary = run_demo(det_config, output_dir=out / "det" / row.replace("/", "_") / f"seed{seed}",
                               overrides=overrides, max_iter=iters, pretrained=True)
            aps[row].append((summary["bbox"].get("AP", float("nan")),
                             summary["segm"].get("AP", float("nan"))))
            progress.step()
            log(f"{row} seed {seed}: box AP {aps[row][-1][0]:.1f}, mask AP {aps[row][-1][1]:.1f}  "
                + progress.line())
    return aps


# --------------------------------------------------------------------------- output


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def to_markdown(results: Sequence[AttentionResult], device: str = "cpu") -> str:
    """A markdown table: our figures, and the paper's beside them where it has the row."""
    unit = "peak RSS growth" if device == "cpu" else "max_memory_allocated"
    r0 = results[0]
    acc_name = "top-1 %" if r0.workload == "classification" else "box AP / mask AP"
    lines = [
        f"| row | input | params M | GFLOPs (paper) | train MiB ({unit}, batch {r0.batch}) "
        f"(paper G) | train steps/s | infer images/s | {acc_name} (runs) | paper acc |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        paper_flops = r.paper.get("gflops")
        paper_mem = r.paper.get("mem_g")
        paper_acc = r.paper.get("acc", r.paper.get("box_ap"))
        acc = _fmt(r.accuracy, 1)
        if r.mask_ap is not None:
            acc += f" / {_fmt(r.mask_ap, 1)}"
        if r.accuracy_runs:
            acc += " (" + ", ".join(_fmt(a, 1) for a in r.accuracy_runs) + ")"
        lines.append(
            f"| {r.row} | {r.height}×{r.width} | {_fmt(r.params_m, 1)} | {_fmt(r.gflops)}"
            f"{f' ({paper_flops})' if paper_flops else ''} | {_fmt(r.train_mem_mib, 0)}"
            f"{f' ({paper_mem})' if paper_mem else ''} | {_fmt(r.train_steps_per_s, 3)} | "
            f"{_fmt(r.infer_images_per_s, 2)} | {acc} | {_fmt(paper_acc, 1) if paper_acc else '-'} |"
        )
    return "\n".join(lines) + "\n"


def write_csv(results: Sequence[AttentionResult], path: str | os.PathLike) -> None:
    """One line per result, one column per field (runs and paper figures as JSON)."""
    names = [f.name for f in fields(AttentionResult)]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        for r in results:
            row = asdict(r)
            row["accuracy_runs"] = json.dumps(row["accuracy_runs"])
            row["paper"] = json.dumps(row["paper"])
            writer.writerow(row)


def plot(results: Sequence[AttentionResult], path: str | os.PathLike) -> None:
    """Three panels per workload, one bar or point per row: accuracy against GFLOPs (when
    trained), peak training memory, training and inference throughput."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r.row for r in results]
    colors = ["tab:blue" if r.row.startswith("ViT") else "tab:orange" for r in results]
    fig, (ax_acc, ax_mem, ax_speed) = plt.subplots(1, 3, figsize=(17, 5))
    trained = [r for r in results if r.accuracy is not None and r.gflops is not None]
    for r in trained:
        ax_acc.errorbar(r.gflops, r.accuracy, fmt="o",
                        yerr=statistics.pstdev(r.accuracy_runs) if len(r.accuracy_runs) > 1 else None,
                        color="tab:blue" if r.row.startswith("ViT") else "tab:orange")
        ax_acc.annotate(r.row, (r.gflops, r.accuracy), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax_acc.set_xlabel("GFLOPs (fvcore)")
    ax_acc.set_ylabel("top-1 %" if results[0].workload == "classification" else "box AP")
    ax_acc.set_title("accuracy vs FLOPs" + ("" if trained else " (not trained)"))
    xs = range(len(results))
    ax_mem.barh(list(xs), [r.train_mem_mib or 0.0 for r in results], color=colors)
    ax_mem.set_yticks(list(xs))
    ax_mem.set_yticklabels(labels, fontsize=7)
    ax_mem.set_xlabel(f"peak training memory, MiB (batch {results[0].batch})")
    ax_mem.invert_yaxis()
    h = 0.4
    ax_speed.barh([x - h / 2 for x in xs], [r.train_steps_per_s or 0.0 for r in results], h,
                  label="train steps/s")
    ax_speed.barh([x + h / 2 for x in xs], [r.infer_images_per_s or 0.0 for r in results], h,
                  label="inference images/s")
    ax_speed.set_yticks(list(xs))
    ax_speed.set_yticklabels(labels, fontsize=7)
    ax_speed.invert_yaxis()
    ax_speed.legend(fontsize=7)
    ax_speed.set_title("throughput")
    r0 = results[0]
    fig.suptitle(f"attention mechanisms: {r0.workload} {r0.height}×{r0.width}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(results: Sequence[AttentionResult], prefix: str | os.PathLike,
                  device: str = "cpu", meta: dict | None = None) -> str:
    """``prefix``.md (the table, with ``meta`` as a header of settings), .csv, .json, .png;
    returns the markdown table."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    table = to_markdown(results, device)
    header = "".join(f"- {k}: {v}\n" for k, v in (meta or {}).items())
    prefix.with_suffix(".md").write_text(header + ("\n" if header else "") + table)
    write_csv(results, prefix.with_suffix(".csv"))
    prefix.with_suffix(".json").write_text(json.dumps(
        {"meta": meta or {}, "results": [asdict(r) for r in results]}, indent=1))
    plot(results, prefix.with_suffix(".png"))
    return table

