"""ONNX export of MViT models (classifier or detection backbone) and its check with onnxruntime.

The exporter is torch's dynamo-based ``torch.onnx.export(..., dynamo=True)`` (needs
``onnxscript``): it traces with ``torch.export``, so what exports here is what ``torch.export``
accepts. The legacy TorchScript exporter cannot take the pooling conv, whose weight is built at
run time (one depthwise conv for all heads). The batch dimension is dynamic (any batch size runs
in onnxruntime); height and width are fixed at export, any size the model takes (windows are
padded): the rel-pos tables are interpolated for that size during tracing, so the graph holds no
interpolation.

Peak memory of an export is the process's peak RSS during it (``PeakMemoryMeter``).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from .engine.memory import PeakMemoryMeter


@dataclass
class ExportReport:
    """What an export took: wall seconds, peak RSS of the process during the export and its
    growth over the RSS before it (MiB), and the file size (MiB)."""

    path: str
    seconds: float
    peak_rss_mib: float
    rss_growth_mib: float
    file_mib: float


def export_onnx(
    model: nn.Module, example: torch.Tensor, path: str, opset_version: int = 18,
    dynamic_batch: bool = True,
) -> ExportReport:
    """Export ``model`` (in eval mode) for inputs shaped like ``example`` (B, 3, H, W) to ``path``.

    With ``dynamic_batch`` the ONNX graph takes any batch size (an example of batch 1 is traced
    as a batch of 2: ``torch.export`` specialises a dimension of size 1). A detection
    backbone's dict output becomes one ONNX output per feature, in ``out_features`` order.
    """
    if dynamic_batch and example.shape[0] == 1:
        example = torch.cat([example, example])
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    model = model.eval()
    start = time.perf_counter()
    with PeakMemoryMeter("cpu") as peak, torch.no_grad():
        program = torch.onnx.export(
            model, (example,), dynamo=True, opset_version=opset_version, verbose=False,
            dynamic_shapes=dynamic_shapes,
        )
        program.save(path)
    seconds = time.perf_counter() - start
    return ExportReport(path, seconds, peak.peak_mib(), peak.growth_mib(),
                        os.path.getsize(path) / 2**20)


def _flat_outputs(out) -> list[torch.Tensor]:
    if isinstance(out, dict):
        return list(out.values())
    if isinstance(out, (list, tuple)):
        return list(out)
    return [out]


def onnx_max_abs_error(path: str, model: nn.Module, inputs: Sequence[torch.Tensor]) -> float:
    """Largest |onnxruntime - PyTorch| over all outputs and the given inputs (each (B, 3, H, W))."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    worst = 0.0
    model = model.eval()
    for x in inputs:
        got = session.run(None, {name: x.numpy()})
        with torch.no_grad():
            want = _flat_outputs(model(x))
        if len(got) != len(want):
            raise ValueError(f"ONNX model has {len(got)} outputs, PyTorch {len(want)}")
        for g, w in zip(got, want):
            worst = max(worst, float(np.abs(g - w.numpy()).max()))
    return worst


def load_weights_for_export(model: nn.Module, path: str):
    """Load ``path`` (any format :func:`mvit_backbone.load_checkpoint` reads: ours, official,
    timm, a detectron2 detector's ``backbone.bottom_up.*``) into ``model``; returns the
    :class:`~mvit_backbone.checkpoint.LoadReport` (also logged).

    Raises:
        ValueError: the file cannot be read, or leaves weights of the model unset (it was made
            for another model); the message names the file and the first missing names.
    """
    from .checkpoint import load_checkpoint

    report = load_checkpoint(model, path, strict=False)
    if report.missing:
        raise ValueError(f"weights {path} do not fit the model: {len(report.missing)} tensors "
                         f"missing, e.g. {', '.join(report.missing[:3])}")
    return report
