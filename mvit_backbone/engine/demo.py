"""The CPU demo: synthetic COCO-format shapes -> Mask R-CNN with a slim MViTv2 -> COCO AP + a PNG.

Two parts:

- :func:`pretrain_backbone` (the paper's "start from a pre-trained backbone", in miniature):
  the demo's MViTv2 backbone is trained for semantic segmentation (a per-pixel classification:
  background or one of the shape classes) of small 64² scenes rendered on the fly, and its
  weights are saved. The shipped ``weights/mvitv2_demo_shapes_pretrain.pth`` is made by
  ``tools/demo_pretrain.py`` with its default arguments. Pre-training scenes come from a random
  stream of their own, never from the demo's detection splits, and no box or instance label is
  used. (A global shape-presence classifier would be closer to ImageNet pre-training, but on
  this CPU its loss stays at the label prior after 12k images, while the per-pixel task learns
  within minutes.)
- :func:`run_demo`: writes and registers the dataset, builds ``configs/Demo`` (Mask R-CNN),
  loads the pretrained trunk, trains against a wall-clock budget through the shared
  :class:`~mvit_backbone.engine.loop.TrainLoop` (warm-up + cosine over an iteration count
  re-estimated from the measured speed), evaluates with detectron2's
  ``COCOEvaluator`` (pycocotools) and draws predictions on val images.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
import torch
import torch.nn as nn

from ..checkpoint import load_checkpoint
from ..data.coco_synthetic import ShapesConfig, render_scene
from .cli import load_lazy_config
from .loop import TrainLoop
from .memory import PeakMemoryMeter
from .optim import param_groups
from .progress import Progress
from .schedule import WarmupCosine

logger = logging.getLogger("mvit_backbone.engine.demo")

# The demo trunk: MViTv2 of width 48, depth 6 (stages of 1, 1, 3, 1 blocks), global pooling
# attention; rel-pos tables sized for the 64² pre-training scenes (interpolated for larger
# inputs). Shared by the pre-training model and the detector, so the weights load by name.
DEMO_BACKBONE: dict = dict(
    img_size=64,
    embed_dim=48,
    depth=6,
    num_heads=1,
    last_block_indexes=(0, 1, 4, 5),
    window_mode="none",
    adaptive_window_size=0,
    adaptive_kv_stride=4,
    residual_pooling=True,
    use_rel_pos=True,
    norm_layer=partial(nn.LayerNorm, eps=1e-6),
)
# detectron2's ImageNet BGR statistics (0-255), used by both pre-training and detection
DEMO_PIXEL_MEAN: tuple[float, float, float] = (103.530, 116.280, 123.675)
DEMO_PIXEL_STD: tuple[float, float, float] = (57.375, 57.120, 58.395)
DEFAULT_WEIGHTS = "weights/mvitv2_demo_shapes_pretrain.pth"
DEFAULT_CONFIG = "configs/Demo/mask_rcnn_mvitv2_demo.py"
DEFAULT_OUTPUT_DIR = "output/demo"  # the config's train.output_dir


# ---------------------------------------------------------------------------------------------
# pre-training


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of :func:`pretrain_backbone` (defaults make the shipped weights)."""

    iters: int = 600
    batch_size: int = 48
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_iters: int = 40
    drop_path_rate: float = 0.05
    seed: int = 1234
    val_images: int = 256
    # small scenes of the detection generator: 1-4 shapes covering 20-70% of the side
    scene: ShapesConfig = ShapesConfig(
        width_range=(64, 64), height_range=(64, 64), instances_range=(1, 4),
        shape_size=(0.2, 0.7), distractors_range=(1, 5), min_area=20,
    )


def normalize_image(image: np.ndarray) -> torch.Tensor:
    """BGR uint8 (H, W, 3) -> float (3, H, W) normalised with the demo's pixel statistics."""
    x = (torch.from_numpy(image).float() - torch.tensor(DEMO_PIXEL_MEAN)) / torch.tensor(DEMO_PIXEL_STD)
    return x.permute(2, 0, 1).contiguous()


def segmentation_sample(rng: np.random.Generator, scene: ShapesConfig) -> tuple[torch.Tensor,
                                                                                  torch.Tensor]:
    """One pre-training sample: normalised image (3, H, W) and its class map (H, W), long,
    0 for background (and distractors), 1 + class index on each shape's visible pixels."""
    image, instances = render_scene(rng, scene)
    labels = np.zeros(image.shape[:2], np.int64)
    for inst in instances:
        labels[inst.mask] = inst.category + 1
    return normalize_image(image), torch.from_numpy(labels)


class SegmentationStream(torch.utils.data.IterableDataset):
    """Endless stream of freshly rendered pre-training samples, seeded per loader worker."""

    def __init__(self, seed: int, scene: ShapesConfig):
        self.seed = seed
        self.scene = scene

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, info.id if info else 0])
        while True:
            yield segmentation_sample(rng, self.scene)


class SegmentationPretrainModel(nn.Module):
    """The demo's detection backbone (``mvit_backbone.MViT``) + a light semantic-segmentation
    head: every stage projected to 64 channels (1x1), upsampled to stride 4 and summed, GELU,
    1x1 to per-class logits, upsampled to the input size.

    Shapes: forward(x (B, 3, H, W)) -> logits (B, num_classes + 1, H, W).
    """

    def __init__(self, num_classes: int, drop_path_rate: float = 0.0, head_dim: int = 64):
        super().__init__()
        from ..detection import MViT

        self.backbone = MViT(drop_path_rate=drop_path_rate, **DEMO_BACKBONE)
        shapes = self.backbone.output_shape()
        self.lateral = nn.ModuleDict(
            {name: nn.Conv2d(s.channels, head_dim, 1) for name, s in shapes.items()}
        )
        self.classifier = nn.Conv2d(head_dim, num_classes + 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        size = features["scale2"].shape[-2:]
        fused = sum(
            nn.functional.interpolate(self.lateral[k](f), size=size, mode="bilinear",
                                      align_corners=False)
            for k, f in features.items()
        )
        logits = self.classifier(nn.functional.gelu(fused))
        return nn.functional.interpolate(logits, size=x.shape[-2:], mode="bilinear",
                                         align_corners=False)


@torch.no_grad()
def segmentation_metrics(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                         num_classes: int, batch_size: int = 64) -> dict[str, float]:
    """Pixel accuracy and mean IoU over background + shape classes on held-out scenes."""
    was_training = model.training
    model.eval()
    preds = torch.cat([model(images[i:i + batch_size]).argmax(1)
                       for i in range(0, len(images), batch_size)])
    model.train(was_training)
    ious = []
    for c in range(num_classes + 1):
        inter = ((preds == c) & (labels == c)).sum().item()
        union = ((preds == c) | (labels == c)).sum().item()
        if union:
            ious.append(inter / union)
    return {"pixel_acc": round((preds == labels).float().mean().item(), 4),
            "mean_iou": round(float(np.mean(ious)), 4)}


def pretrain_backbone(out_path: str | os.PathLike, cfg: PretrainConfig = PretrainConfig(),
                      num_workers: int = 1) -> dict:
    """Pre-train the demo backbone on synthetic semantic segmentation and save its weights.

    The scenes come from :func:`~mvit_backbone.data.coco_synthetic.render_scene` (64² pixels,
    a random stream of their own, never the demo's detection splits). Saves
    ``{"model": backbone state_dict, "meta": {...}}``: the keys are those of the detector's
    ``backbone.bottom_up`` (``patch_embed.*``, ``blocks.*``, ``scale*_norm``); the segmentation
    head is dropped. Returns the metadata (settings, held-out metrics, time).
    """
    torch.manual_seed(cfg.seed)
    num_classes = len(cfg.scene.classes)
    model = SegmentationPretrainModel(num_classes, cfg.drop_path_rate)
    val_rng = np.random.default_rng([cfg.seed, 10**6])  # a stream no loader worker uses
    val = [segmentation_sample(val_rng, cfg.scene) for _ in range(cfg.val_images)]
    val_x, val_y = torch.stack([v[0] for v in val]), torch.stack([v[1] for v in val])

    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    loader = torch.utils.data.DataLoader(
        SegmentationStream(cfg.seed, cfg.scene), batch_size=cfg.batch_size,
        num_workers=num_workers, persistent_workers=num_workers > 0,
    )
    schedule = WarmupCosine(warmup=cfg.warmup_iters / cfg.iters, start=0.01, end=0.02)
    loop = TrainLoop(model, optimizer,
                     lambda batch: nn.functional.cross_entropy(model(batch[0]), batch[1]),
                     schedule, log_period=25, log=logger)

    def held_out_every_100(iteration: int, metrics: dict[str, float]) -> None:
        if (iteration + 1) % 100 == 0 and iteration + 1 < cfg.iters:
            logger.info("pretrain held-out %s", segmentation_metrics(model, val_x, val_y, num_classes))

    start = time.perf_counter()
    loop.run(loader, Progress(cfg.iters, memory=PeakMemoryMeter()), on_step=held_out_every_100,
             prefix="pretrain  ")
    metrics = segmentation_metrics(model, val_x, val_y, num_classes)
    logger.info("pretrain held-out %s", metrics)
    meta = {
        "what": "MViTv2 demo backbone pre-trained on synthetic shapes semantic segmentation",
        "architecture": {k: v for k, v in DEMO_BACKBONE.items() if k != "norm_layer"},
        "settings": json.loads(json.dumps(asdict(cfg))),
        "held_out": metrics,
        "train_seconds": round(time.perf_counter() - start, 1),
        "threads": torch.get_num_threads(),
        "command": f"python tools/demo_pretrain.py --out {out_path}",
    }
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.backbone.state_dict(), "meta": meta}, out_path)
    return meta


def load_backbone_weights(bottom_up: nn.Module, path: str | os.PathLike) -> dict:
    """Load a backbone checkpoint by name into the detector's backbone; returns a report.

    Read by :func:`mvit_backbone.load_checkpoint` (any supported format, nothing in the file
    runs). Every trunk parameter (``patch_embed.*``, ``blocks.*``) must be in the file with the
    same shape, else ValueError naming the file (it was made for another architecture); the
    output norms ``scale*_norm`` are loaded when present (a classification checkpoint has none).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained backbone {path} not found; make it with `python tools/demo_pretrain.py "
            f"--out {path}` or pass --no-pretrained"
        )
    report = load_checkpoint(bottom_up, path, strict=False)
    required = [k for k in report.missing if k.startswith(("patch_embed.", "blocks."))]
    if required:
        raise ValueError(f"pretrained backbone {path} does not fit the demo backbone: "
                         f"missing {required[:5]}")
    return {"loaded": len(report.loaded), "ignored": sorted(report.unexpected),
            "not_in_file": sorted(report.missing)}


# ---------------------------------------------------------------------------------------------
# detection demo


def freeze_parameters(module: nn.Module, prefixes: Sequence[str]) -> int:
    """Stop training the parameters whose names start with one of ``prefixes`` (detectron2's
    ``FREEZE_AT`` for a ResNet stem, here for the patch embedding and first blocks of a
    pre-trained MViT: their backward pass is skipped too). Returns how many tensors froze."""
    frozen = 0
    for name, p in module.named_parameters():
        if name.startswith(tuple(prefixes)):
            p.requires_grad_(False)
            frozen += 1
    return frozen


def train_for_budget(cfg, model: nn.Module, seconds: float, max_iter: int | None = None,
                     output_dir: str | os.PathLike | None = None) -> tuple[dict, torch.optim.Optimizer]:
    """Train ``model`` with ``cfg.optimizer``/``cfg.lr_multiplier``/``cfg.dataloader.train``
    for about ``seconds`` of wall-clock time, through the shared :class:`TrainLoop`.

    The schedule runs over an iteration count that is re-estimated every few iterations from
    the median iteration time and the time left, so the run ends on time even when the machine's
    load changes; ``max_iter`` fixes the count instead (tests). Metrics go to detectron2's
    ``EventStorage`` and, with ``output_dir``, to ``metrics.json`` through ``JSONWriter``
    (``total_loss``, each loss, ``lr``, ``time``, ``data_time``).
    Returns {"iters": ..., "seconds": ..., "sec_per_iter": ...} and the optimizer.
    """
    from detectron2.config import instantiate
    from detectron2.utils.events import EventStorage, JSONWriter

    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    loop = TrainLoop(model, optimizer, model, instantiate(cfg.lr_multiplier),
                     log_period=cfg.train.get("log_period", 20), log=logger)
    json_writer = None
    if output_dir:
        metrics_path = Path(output_dir) / "metrics.json"
        metrics_path.unlink(missing_ok=True)  # JSONWriter appends; start a fresh file
        json_writer = JSONWriter(str(metrics_path))
    # a first guess; replaced by a measured estimate after the first iterations
    progress = Progress(max_iter or max(int(seconds / 1.0), 10), memory=PeakMemoryMeter())

    with EventStorage(0) as storage:
        def record(iteration: int, metrics: dict[str, float]) -> None:
            scalars = {("total_loss" if k == "loss" else k): v for k, v in metrics.items()}
            storage.put_scalars(**scalars, smoothing_hint=False)
            if json_writer and ((iteration + 1) % loop.log_period == 0
                                or iteration + 1 == progress.total):
                json_writer.write()
            storage.step()

        stats = loop.run(iter(instantiate(cfg.dataloader.train)), progress,
                         budget_seconds=None if max_iter else seconds, on_step=record)
        if json_writer:
            json_writer.close()
    return {"iters": stats["iters"], "seconds": round(stats["seconds"], 1),
            "sec_per_iter": round(stats["seconds"] / max(stats["iters"], 1), 3)}, optimizer


def save_final_checkpoint(cfg, model: nn.Module, optimizer: torch.optim.Optimizer, iters: int,
                          output_dir: str | os.PathLike) -> Path:
    """Write ``<output_dir>/model_final.pth`` and ``last_checkpoint`` in the layout of
    detectron2's trainer, so that ``tools/lazyconfig_train_net.py --resume`` continues from
    iteration ``iters`` and ``--eval-only`` / ``tools/predict.py`` load the model.

    The file holds ``{"model", "trainer": {"iteration", "optimizer"}}``. The optimizer state is
    that of ``cfg.optimizer`` built over every parameter (the one the training tool builds,
    frozen parameters included, which start with fresh moments), each trained parameter keeping
    its AdamW moments; ``initial_lr`` is the base learning rate, as a resumed scheduler expects.
    """
    from detectron2.config import instantiate

    frozen = [p for p in model.parameters() if not p.requires_grad]
    for p in frozen:
        p.requires_grad_(True)
    cfg.optimizer.params.model = model
    full = instantiate(cfg.optimizer)
    for p in frozen:
        p.requires_grad_(False)
    for p, state in optimizer.state.items():
        full.state[p] = state
    for group in full.param_groups:
        group["initial_lr"] = group["lr"]
    path = Path(output_dir) / "model_final.pth"
    torch.save({"model": model.state_dict(),
                "trainer": {"iteration": iters - 1, "optimizer": full.state_dict()}}, path)
    (Path(output_dir) / "last_checkpoint").write_text(path.name)
    return path


def register_demo_datasets(cfg, validate: bool = True) -> dict[str, str]:
    """Write (when missing or stale) and register the demo's synthetic shapes splits named by
    the config's ``demo`` section; returns split -> registered dataset name."""
    from ..data.coco_synthetic import register_synthetic_coco

    demo = cfg.demo
    splits = {k: tuple(v) for k, v in demo.splits.items()}
    return register_synthetic_coco(demo.dataset_root, splits, demo.dataset_prefix,
                                   validate=validate)


def next_commands(config: str | os.PathLike, output_dir: str | os.PathLike,
                  overrides: Sequence[str], iters: int, sec_per_iter: float,
                  images: Sequence[str]) -> list[tuple[str, str]]:
    """The commands that continue from a finished demo run, as (what it does, command line):
    predictions on images, evaluation of the saved model, resuming for as many iterations
    again, and the analysis tool. ``overrides`` (the demo's own ``key=value`` list) are repeated
    so that each command sees the same config."""
    import shlex
    import sys

    python = os.path.relpath(sys.executable)
    python = sys.executable if python.startswith("..") else python
    weights = Path(output_dir) / "model_final.pth"
    extra = list(overrides)
    if (Path(output_dir) != Path(DEFAULT_OUTPUT_DIR)
            and not any(o.startswith("train.output_dir=") for o in extra)):
        extra.append(f"train.output_dir={output_dir}")

    def line(tool: str, *args: str) -> str:
        return " ".join(shlex.quote(a) for a in (python, tool, "--config-file", str(config),
                                                 *args, *extra))

    longer = 2 * iters
    return [
        ("draw predictions on your own images (one PNG each)",
         line("tools/predict.py", "--weights", str(weights), "--output",
              str(Path(output_dir) / "predict"), *images)),
        ("evaluate the saved model (COCO AP, pycocotools)",
         line("tools/lazyconfig_train_net.py", "--eval-only",
              f"train.init_checkpoint={weights}")),
        (f"resume for longer: iterations {iters} to {longer} "
         f"(about {max(1, round((longer - iters) * sec_per_iter / 60))} min)",
         line("tools/lazyconfig_train_net.py", "--resume", f"train.max_iter={longer}")),
        ("parameters and FLOPs of the model",
         line("tools/analyze_model.py", "--tasks", "parameter", "flop", "--flop-input",
              "208x277")),
    ]


@torch.no_grad()
def time_inference(model: nn.Module, dataset_dicts: Sequence[dict], mapper, n: int = 3) -> float:
    """Median seconds per image of model inference on the first ``n`` images (after one warm-up)."""
    model.eval()
    times = []
    for d in list(dataset_dicts[: n + 1]):
        inputs = [mapper(dict(d))]
        t0 = time.perf_counter()
        model(inputs)
        times.append(time.perf_counter() - t0)
    model.train()
    return float(np.median(times[1:] if len(times) > 1 else times))


@torch.no_grad()
def draw_predictions(model: nn.Module, dataset_dicts: Sequence[dict], mapper, metadata,
                     out_png: str | os.PathLike, num_images: int = 6,
                     score_thresh: float = 0.3) -> Path:
    """Run the model on val images and save the drawn predictions (detectron2 ``Visualizer``)
    as one PNG grid, ground truth count and prediction count in each tile's lower corner."""
    from detectron2.utils.visualizer import ColorMode, Visualizer

    model.eval()
    tiles = []
    for d in dataset_dicts[:num_images]:
        image = cv2.imread(d["file_name"], cv2.IMREAD_COLOR)
        out = model([mapper(dict(d))])[0]["instances"].to("cpu")
        out = out[out.scores >= score_thresh]
        vis = Visualizer(image[:, :, ::-1], metadata=metadata, scale=1.0,
                         instance_mode=ColorMode.IMAGE)
        drawn = vis.draw_instance_predictions(out).get_image()[:, :, ::-1]
        drawn = cv2.resize(np.ascontiguousarray(drawn), (400, 320), interpolation=cv2.INTER_AREA)
        label = (f"{Path(d['file_name']).name}: gt {len(d.get('annotations', []))}, "
                 f"pred {len(out)} (score >= {score_thresh})")
        origin = (6, drawn.shape[0] - 8)  # bottom-left, clear of the instance labels
        cv2.putText(drawn, label, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 2)
        cv2.putText(drawn, label, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
        tiles.append(drawn)
    model.train()
    cols = min(3, len(tiles))
    while len(tiles) % cols:
        tiles.append(np.zeros_like(tiles[0]))
    grid = np.concatenate([np.concatenate(tiles[i:i + cols], axis=1)
                           for i in range(0, len(tiles), cols)], axis=0)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out_png), grid):
        raise OSError(f"could not write {out_png}")
    return out_png


def run_demo(config: str | os.PathLike = DEFAULT_CONFIG, minutes: float = 13.0,
             output_dir: str | os.PathLike | None = None, overrides: Sequence[str] = (),
             max_iter: int | None = None, pretrained: bool = True) -> dict:
    """The whole demo within ``minutes`` of wall-clock time (from this call).

    Writes (or reuses) the dataset, trains, evaluates (bbox and segm AP from pycocotools) and
    draws predictions. Time for evaluation and drawing is reserved from the measured inference
    speed before training starts. ``max_iter`` fixes the number of training iterations
    (ignoring the budget), ``pretrained=False`` trains the backbone from scratch.

    Returns a dict with "bbox"/"segm" (COCO metrics), "train" (iterations, seconds), "png",
    "seconds" (wall time) and the config path; also written to ``<output_dir>/results.json``.
    """
    from detectron2.config import instantiate
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.evaluation import inference_on_dataset
    from detectron2.utils.logger import setup_logger

    start = time.perf_counter()
    budget = minutes * 60.0
    setup_logger(name="mvit_backbone")
    setup_logger(name="detectron2", abbrev_name="d2")
    cfg = load_lazy_config(str(config), overrides)
    output_dir = Path(output_dir or cfg.train.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.train.get("seed", 0))

    demo = cfg.demo
    names = register_demo_datasets(cfg)
    logger.info("dataset ready in %.1fs: %s under %s", time.perf_counter() - start,
                {k: v[0] for k, v in demo.splits.items()}, demo.dataset_root)

    model = instantiate(cfg.model)
    weights = None
    if pretrained and cfg.train.init_checkpoint:
        weights = load_backbone_weights(model.backbone.bottom_up, cfg.train.init_checkpoint)
        logger.info("loaded %d pretrained backbone tensors from %s (not in the file: %s)",
                    weights["loaded"], cfg.train.init_checkpoint, weights["not_in_file"])

    freeze = list(demo.get("freeze_backbone", [])) if weights is not None else []
    if freeze:
        logger.info("froze %d pretrained backbone tensors (%s)",
                    freeze_parameters(model.backbone.bottom_up, freeze), ", ".join(freeze))

    val_dicts = DatasetCatalog.get(names["val"])
    test_mapper = instantiate(cfg.dataloader.test.mapper)
    train_seconds = 0.0
    if max_iter is None:  # train by the clock, keeping time for evaluation and drawing
        per_image = time_inference(model, val_dicts, test_mapper)
        reserve = per_image * (len(val_dicts) + demo.vis_images) * 1.05 + 10.0
        train_seconds = budget - (time.perf_counter() - start) - reserve
        logger.info("inference %.2fs/image: reserving %.0fs for evaluation; %.0fs for training",
                    per_image, reserve, train_seconds)
        if train_seconds < 30:
            raise ValueError(f"{minutes} minutes leave {train_seconds:.0f}s to train; "
                             "give more minutes")
    train_stats, optimizer = train_for_budget(cfg, model, train_seconds, max_iter=max_iter,
                                              output_dir=output_dir)
    checkpoint = save_final_checkpoint(cfg, model, optimizer, train_stats["iters"], output_dir)
    logger.info("trained %d iterations in %.0fs (%.2fs/iter)", train_stats["iters"],
                train_stats["seconds"], train_stats["sec_per_iter"])

    evaluator = instantiate(cfg.dataloader.evaluator)
    model.eval()
    results = inference_on_dataset(model, instantiate(cfg.dataloader.test), evaluator)
    png = draw_predictions(model, val_dicts, test_mapper, MetadataCatalog.get(names["val"]),
                           output_dir / "predictions.png", demo.vis_images)
    summary = {
        "config": str(config),
        "bbox": dict(results.get("bbox", {})),
        "segm": dict(results.get("segm", {})),
        "train": train_stats,
        "pretrained": weights is not None,
        "png": str(png),
        "checkpoint": str(checkpoint),
        "seconds": round(time.perf_counter() - start, 1),
        "load_average": os.getloadavg(),
        "next": next_commands(config, output_dir, overrides, train_stats["iters"],
                              train_stats["sec_per_iter"],
                              [d["file_name"] for d in val_dicts[:2]]),
    }
    (output_dir / "results.json").write_text(json.dumps(summary, indent=2))
    logger.info("bbox AP %.1f  segm AP %.1f  (%d val images)  predictions: %s  total %.0fs",
                summary["bbox"].get("AP", float("nan")), summary["segm"].get("AP", float("nan")),
                len(val_dicts), png, summary["seconds"])
    return summary
