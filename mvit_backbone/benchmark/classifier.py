"""Speed of our MViTv2 classifier against timm's with the same weights.

timm's model is built with random weights; ours loads timm's ``state_dict`` through
``mvit_backbone.load_checkpoint`` (strict), so both compute the same function. The steps are
those of :func:`~mvit_backbone.benchmark.backbone.run_step`: inference ("fwd", eval, no_grad)
and a training step ("fwd+bwd", train mode, backward of the summed logits), timed interleaved
(timm, ours, timm, ours, ...) after warm-up; the figure per model is the median and the ratio
ours / timm.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Mapping

import torch
import torch.nn as nn

from ..engine.progress import Progress
from .backbone import pair_kernel_floor, plot, time_pair

# our model name -> timm's
TIMM_NAMES = {"mvitv2_t": "mvitv2_tiny", "mvitv2_s": "mvitv2_small", "mvitv2_b": "mvitv2_base"}
# batch per mode: inference at batch 8, a training step at batch 4
CLASSIFIER_BATCHES = {"fwd": 8, "fwd+bwd": 4}


@dataclass
class ClassifierBenchResult:
    """One mode: medians in seconds and the ratio ours / timm."""

    model: str
    timm_model: str
    size: int
    batch: int
    mode: str
    timm_s: float
    ours_s: float
    time_ratio: float


def build_timm_pair(name: str = "mvitv2_t") -> tuple[nn.Module, nn.Module]:
    """(timm's model, ours) with the same random weights, 1000 classes, no drop path."""
    import timm

    from .. import create_model, load_checkpoint

    if name not in TIMM_NAMES:
        raise ValueError(f"no timm counterpart for {name!r}; known: {sorted(TIMM_NAMES)}")
    torch.manual_seed(0)
    reference = timm.create_model(TIMM_NAMES[name], pretrained=False, num_classes=1000,
                                  drop_path_rate=0.0)
    ours = create_model(name, num_classes=1000, drop_path_rate=0.0)
    load_checkpoint(ours, reference.state_dict(), strict=True)
    return reference, ours


def run_timm_benchmark(name: str = "mvitv2_t", size: int = 224,
                       batches: Mapping[str, int] = CLASSIFIER_BATCHES, repeats: int = 10,
                       device: str = "cpu", log=print) -> list[ClassifierBenchResult]:
    """Interleaved medians of timm's and our classifier per mode of ``batches`` (mode -> batch);
    ``log`` gets each result and a progress line with ETA."""
    reference, ours = (m.to(device) for m in build_timm_pair(name))
    progress = Progress(len(batches), unit="mode")
    results = []
    for mode, batch in batches.items():
        x = torch.randn(batch, 3, size, size, device=device)
        t_ref, t_ours = time_pair(reference, ours, x, mode, repeats=repeats, warmup=2)
        result = ClassifierBenchResult(name, TIMM_NAMES[name], size, batch, mode, t_ref, t_ours,
                                       t_ours / t_ref)
        progress.step()
        log(json.dumps(asdict(result)))
        log(progress.line())
        results.append(result)
    return results


def timm_kernel_floor(name: str = "mvitv2_t", size: int = 224,
                      batches: Mapping[str, int] = CLASSIFIER_BATCHES, repeats: int = 10,
                      profiled_steps: int = 3) -> list[dict]:
    """Per mode of ``batches``: :func:`~.backbone.pair_kernel_floor` of ours against timm's
    model, both profiled, so the matmul and attention kernel seconds of the two steps can be
    compared with the rest of each."""
    reference, ours = build_timm_pair(name)
    rows = []
    for mode, batch in batches.items():
        x = torch.randn(batch, 3, size, size)
        row = pair_kernel_floor(reference, ours, x, mode, "timm", repeats, profiled_steps)
        rows.append(dict(model=name, timm_model=TIMM_NAMES[name], size=size, batch=batch,
                         mode=mode, **row))
    return rows


def timm_markdown(results: list[ClassifierBenchResult]) -> str:
    """A markdown table of :func:`run_timm_benchmark`'s results."""
    lines = ["| model | input | batch | mode | timm s | ours s | time ours/timm |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| `{r.model}` / timm `{r.timm_model}` | {r.size}² | {r.batch} | {r.mode} | "
              f"{r.timm_s:.3f} | {r.ours_s:.3f} | {r.time_ratio:.2f} |" for r in results]
    return "\n".join(lines) + "\n"


def plot_timm(results: list[ClassifierBenchResult], path: str) -> None:
    """Bar chart of :func:`run_timm_benchmark`'s time ratios ours / timm per mode (PNG)."""
    labels = [f"{r.size}² batch {r.batch}\n{r.mode}" for r in results]
    plot(results, path, labels=labels, reference="timm")
