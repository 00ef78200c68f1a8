"""Multi-view testing of video models and its metrics.

A test video is seen through K temporal clips x 1 or 3 spatial crops; its score is the average
of the views' softmax probabilities (single-label sets), or the maximum of their per-class
sigmoid scores (Charades, MViTv1 App. D.3). Single-label sets report top-1 / top-5 accuracy,
multi-label sets the mean average precision over classes.
"""
from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Iterable

import torch
import torch.distributed as dist
import torch.nn as nn

from ..engine.runs import DistInfo, accuracy_counts, all_reduce_sum


def average_precision(scores: torch.Tensor, positives: torch.Tensor) -> float:
    """Average precision of one class: the mean, over its positives, of the precision among
    the samples scored at least as high (ties count together, as scikit-learn's
    ``average_precision_score``). scores, positives: (N,). NaN if there is no positive."""
    positives = positives.bool()
    n_pos = int(positives.sum())
    if n_pos == 0:
        return float("nan")
    order = torch.argsort(scores, descending=True, stable=True)
    s, p = scores[order], positives[order].double()
    tp, seen = torch.cumsum(p, 0), torch.arange(1, len(s) + 1, dtype=torch.float64)
    # with ties, precision and recall change only at the last sample of a run of equal scores
    last_of_run = torch.ones(len(s), dtype=torch.bool)
    last_of_run[:-1] = s[1:] != s[:-1]
    tp, seen = tp[last_of_run], seen[last_of_run]
    recall = tp / n_pos
    precision = tp / seen
    recall_step = torch.diff(recall, prepend=torch.zeros(1, dtype=torch.float64))
    return float((recall_step * precision).sum())


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean over classes of :func:`average_precision` (%), classes without a positive left
    out (as PySlowFast's Charades evaluation). scores, targets: (N, K)."""
    aps = [average_precision(scores[:, k], targets[:, k]) for k in range(scores.shape[1])]
    aps = [a for a in aps if a == a]
    if not aps:
        raise ValueError("no class has a positive sample: mean average precision is undefined")
    return 100.0 * sum(aps) / len(aps)


class ViewAggregator:
    """Collects the scores of test views per video: mean of softmax probabilities, or with
    ``multi_label`` the maximum of sigmoid scores. Across processes :meth:`reduce` sums (or
    takes the maximum of) every process's part."""

    def __init__(self, num_videos: int, num_classes: int, multi_label: bool,
                 device: torch.device | str = "cpu"):
        self.multi_label = multi_label
        fill = float("-inf") if multi_label else 0.0
        self.scores = torch.full((num_videos, num_classes), fill, dtype=torch.float64, device=device)
        self.views = torch.zeros(num_videos, dtype=torch.float64, device=device)

    def add(self, logits: torch.Tensor, videos: torch.Tensor) -> None:
        """Views' logits (N, K) of the videos ``videos`` (N,) (a video may repeat)."""
        logits, videos = logits.double(), videos.to(self.scores.device)
        if self.multi_label:
            probs = logits.sigmoid()
            self.scores.index_reduce_(0, videos, probs, "amax", include_self=True)
        else:
            self.scores.index_add_(0, videos, logits.softmax(dim=1))
        self.views.index_add_(0, videos, torch.ones_like(videos, dtype=torch.float64))

    def reduce(self, info: DistInfo) -> None:
        if info.world_size > 1:
            dist.all_reduce(self.scores, op=dist.ReduceOp.MAX if self.multi_label else dist.ReduceOp.SUM)
            dist.all_reduce(self.views)

    def video_scores(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores (V, K) of the videos with at least one view, their indices (V,))."""
        seen = self.views > 0
        scores = self.scores[seen]
        if not self.multi_label:
            scores = scores / self.views[seen, None]
        return scores, seen.nonzero().flatten()


def video_metrics(scores: torch.Tensor, labels: torch.Tensor, multi_label: bool) -> dict[str, float]:
    """``map`` (%) for multi-label ``labels`` (V, K) multi-hot; else ``top1`` / ``top5`` (%)
    for ``labels`` (V,) class indices. scores (V, K)."""
    if multi_label:
        return {"map": mean_average_precision(scores, labels)}
    c1, c5 = accuracy_counts(scores, labels)
    n = max(len(labels), 1)
    return {"top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n}


@torch.no_grad()
def evaluate_views(model: nn.Module, batches: Iterable[dict], num_videos: int, num_classes: int,
                   multi_label: bool, info: DistInfo | None = None,
                   autocast: Callable[[], ContextManager] = contextlib.nullcontext
                   ) -> dict[str, float]:
    """Run ``model`` on test batches of :class:`~mvit_backbone.video.data.VideoClipDataset`
    (``clip`` (B, crops, 3, T, S, S), ``label``, ``video``, ``valid``, ``skipped``), aggregate
    the views per video and score the videos.

    Returns ``top1``/``top5`` or ``map``, ``loss`` (mean per-view cross-entropy, or binary
    cross-entropy for multi-label), ``videos`` (scored), ``views`` and ``skipped`` (counted
    over all processes).
    """
    info = info or DistInfo()
    model.eval()
    agg = ViewAggregator(num_videos, num_classes, multi_label, info.device)
    labels = (torch.zeros(num_videos, num_classes, dtype=torch.float64) if multi_label
              else torch.full((num_videos,), -1, dtype=torch.long)).to(info.device)
    loss_sum, n_views, skipped = 0.0, 0, 0
    for batch in batches:
        skipped += int(batch["skipped"].sum())
        valid = batch["valid"].bool()
        if not valid.any():
            continue
        clips = batch["clip"][valid].to(info.device)
        target, videos = batch["label"][valid].to(info.device), batch["video"][valid].to(info.device)
        crops = clips.shape[1]
        with autocast():
            logits = model(clips.flatten(0, 1)).float()  # (B * crops, K)
        videos, target = videos.repeat_interleave(crops), target.repeat_interleave(crops, dim=0)
        if multi_label:
            loss = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="sum")
            loss = loss / num_classes
        else:
            loss = nn.functional.cross_entropy(logits, target, reduction="sum")
        loss_sum, n_views = loss_sum + float(loss), n_views + len(videos)
        agg.add(logits, videos)
        labels[videos] = target.to(labels.dtype)
    agg.reduce(info)
    if info.world_size > 1:
        dist.all_reduce(labels, op=dist.ReduceOp.MAX)
    loss_sum, n_views, skipped = all_reduce_sum([loss_sum, n_views, skipped], info)
    scores, seen = agg.video_scores()
    metrics = video_metrics(scores.cpu(), labels[seen].cpu(), multi_label) if len(seen) else {}
    return {**metrics, "loss": loss_sum / max(n_views, 1), "videos": int(len(seen)),
            "views": int(n_views), "skipped": int(skipped)}
