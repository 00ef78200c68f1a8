"""Speed and memory of our MViTv2-S video model against torchvision's ``mvit_v2_s``.

torchvision's model is built with random weights; ours loads its ``state_dict`` through
``mvit_backbone.load_checkpoint`` (strict), so both compute the same function (stochastic depth
off in both, so that a training step does the same work). The steps are those of
:func:`~mvit_backbone.benchmark.backbone.run_step` on clips (batch, 3, T, H, W): inference
("fwd", eval, no_grad) and a training step ("fwd+bwd", train mode, backward of the summed
logits), timed interleaved (torchvision, ours, torchvision, ...) after warm-up; the figure per
model is the median and the ratio ours / torchvision. Peak memory is measured per configuration
in a fresh subprocess (``python -m mvit_backbone.benchmark``), as for the backbone benchmark.
"""
from __future__ import annotations

import csv
import gc
import json
from dataclasses import asdict, dataclass, fields
from typing import Sequence

import torch
import torch.nn as nn

from ..engine.progress import Progress
from .backbone import MODES, memory_subprocess, run_step, step_peak_memory, time_pair

# our model name -> torchvision's builder (torchvision.models.video)
TORCHVISION_NAMES = {"mvitv2_s_16x4": "mvit_v2_s", "mvitv1_b_16x4": "mvit_v1_b"}
IMPLS = ("torchvision", "ours")


@dataclass
class VideoBenchResult:
    """One configuration: medians in seconds, peak memory in MiB, ratios ours / torchvision."""

    model: str
    frames: int
    size: int
    batch: int
    mode: str
    torchvision_s: float
    ours_s: float
    time_ratio: float
    torchvision_mib: float | None = None
    ours_mib: float | None = None
    mem_ratio: float | None = None


def build_video_model(impl: str, name: str = "mvitv2_s_16x4", frames: int = 16, size: int = 224,
                      num_classes: int = 400) -> nn.Module:
    """``impl="torchvision"``: torchvision's counterpart of ``name``; ``"ours"``:
    ``create_model(name)``. Stochastic depth off in both.

    torchvision builds 16 x 224² clips only; its ``mvit_v2_s`` (relative positions only, which
    it interpolates) runs other clips when its token grid (``pos_encoding``'s sizes) is set to
    theirs, as done here; its ``mvit_v1_b`` (absolute positions) cannot."""
    if name not in TORCHVISION_NAMES:
        raise ValueError(f"no torchvision counterpart for {name!r}; known: {sorted(TORCHVISION_NAMES)}")
    if impl == "torchvision":
        import torchvision.models.video as tv_video

        model = getattr(tv_video, TORCHVISION_NAMES[name])(num_classes=num_classes,
                                                           stochastic_depth_prob=0.0)
        if (frames, size) != (16, 224):
            if model.pos_encoding.spatial_pos is not None:
                raise ValueError(f"torchvision's {TORCHVISION_NAMES[name]} runs 16x224² clips only")
            stride_t, stride_h, stride_w = model.conv_proj.stride
            model.pos_encoding.temporal_size = frames // stride_t
            model.pos_encoding.spatial_size = (size // stride_h, size // stride_w)
        return model
    if impl == "ours":
        from .. import create_model

        return create_model(name, num_classes=num_classes, drop_path_rate=0.0)
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


def build_video_pair(name: str = "mvitv2_s_16x4", frames: int = 16,
                     size: int = 224) -> tuple[nn.Module, nn.Module]:
    """(torchvision's model, ours) with the same random weights, for clips of ``frames`` x
    ``size``²."""
    from .. import load_checkpoint

    torch.manual_seed(0)
    reference = build_video_model("torchvision", name, frames, size)
    ours = build_video_model("ours", name, frames, size)
    load_checkpoint(ours, reference.state_dict(), strict=True)
    return reference, ours


def measure_video_peak_memory(impl: str, name: str, frames: int, size: int, batch: int,
                              mode: str, device: str = "cpu") -> float:
    """Peak memory (MiB) of one step of ``impl``'s model on a (batch, 3, frames, size, size)
    clip, in this process (call it in a fresh one; see
    :func:`~mvit_backbone.benchmark.backbone.measure_peak_memory`)."""
    torch.manual_seed(0)
    model = build_video_model(impl, name, frames, size).to(device)
    x = torch.randn(batch, 3, frames, size, size, device=device)

    def step() -> None:
        run_step(model, x, mode)
        model.zero_grad(set_to_none=True)

    return step_peak_memory(step, device)


def run_video_benchmark(
    name: str = "mvitv2_s_16x4",
    frames: int = 16,
    size: int = 224,
    batches: Sequence[int] = (1, 2),
    modes: Sequence[str] = MODES,
    repeats: int = 3,
    device: str = "cpu",
    memory: bool = True,
    log=print,
) -> list[VideoBenchResult]:
    """Every (batch, mode): interleaved medians of torchvision's and our model and, with
    ``memory``, the peak memory of each in a fresh subprocess; ``log`` gets each result and a
    progress line with ETA."""
    reference, ours = (m.to(device) for m in build_video_pair(name, frames, size))
    progress = Progress(len(batches) * len(modes), unit="config")
    results = []
    for batch in batches:
        x = torch.randn(batch, 3, frames, size, size, device=device)
        for mode in modes:
            t_ref, t_ours = time_pair(reference, ours, x, mode, repeats=repeats)
            result = VideoBenchResult(name, frames, size, batch, mode, t_ref, t_ours, t_ours / t_ref)
            if memory:
                spec = dict(kind="video", name=name, frames=frames, size=size, batch=batch,
                            mode=mode, device=device)
                threads = torch.get_num_threads()
                result.torchvision_mib = memory_subprocess(dict(spec, impl="torchvision"), threads)
                result.ours_mib = memory_subprocess(dict(spec, impl="ours"), threads)
                result.mem_ratio = result.ours_mib / result.torchvision_mib
            progress.step()
            log(json.dumps(asdict(result)))
            log(progress.line())
            results.append(result)
    del reference, ours
    gc.collect()
    return results


def video_markdown(results: Sequence[VideoBenchResult], device: str = "cpu") -> str:
    """A markdown table of :func:`run_video_benchmark`'s results."""
    unit = "peak RSS growth" if device == "cpu" else "max_memory_allocated"
    lines = [
        "| model | clip | batch | mode | torchvision s | ours s | time ours/tv | tv MiB | ours MiB "
        f"| memory ours/tv ({unit}) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        mem = ("-", "-", "-") if r.mem_ratio is None else (
            f"{r.torchvision_mib:.0f}", f"{r.ours_mib:.0f}", f"{r.mem_ratio:.2f}")
        lines.append(
            f"| `{r.model}` / torchvision `{TORCHVISION_NAMES[r.model]}` | {r.frames}×{r.size}² "
            f"| {r.batch} | {r.mode} | {r.torchvision_s:.2f} | {r.ours_s:.2f} | "
            f"{r.time_ratio:.2f} | {mem[0]} | {mem[1]} | {mem[2]} |"
        )
    return "\n".join(lines) + "\n"


def write_video_results(results: Sequence[VideoBenchResult], prefix: str, device: str = "cpu") -> list[str]:
    """Write ``prefix`` + .md, .csv, .json and .png (time and memory ratios); returns the paths."""
    from .backbone import plot

    paths = [prefix + ext for ext in (".md", ".csv", ".json", ".png")]
    with open(paths[0], "w") as f:
        f.write(video_markdown(results, device))
    with open(paths[1], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[field.name for field in fields(VideoBenchResult)])
        writer.writeheader()
        writer.writerows(asdict(r) for r in results)
    with open(paths[2], "w") as f:
        json.dump([asdict(r) for r in results], f, indent=1)
    labels = [f"{r.frames}×{r.size}² b{r.batch}\n{r.mode}" for r in results]
    plot(results, paths[3], labels=labels, reference="torchvision")
    return paths
