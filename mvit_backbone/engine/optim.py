"""Weight-decay parameter groups of the MViT training recipes (ImageNet and the demo)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

# parameter names (last component) that never get weight decay, besides every 1-d tensor
NO_DECAY_NAMES = ("pos_embed", "pos_embed_spatial", "pos_embed_temporal", "pos_embed_class",
                  "cls_token", "rel_pos_h", "rel_pos_w", "rel_pos_t")


def param_groups(model: nn.Module, weight_decay: float,
                 zero_decay_pos_cls: bool = True) -> list[dict[str, Any]]:
    """Two AdamW groups: decayed weight matrices, and the rest with ``weight_decay`` 0.

    No decay for 1-d parameters (norm weights, biases) and, with ``zero_decay_pos_cls``, for
    position embeddings, relative positions and the class token (:data:`NO_DECAY_NAMES`).
    Group dicts carry ``names``.
    """
    zero_decay = NO_DECAY_NAMES if zero_decay_pos_cls else ()
    decay, no_decay, decay_names, no_decay_names = [], [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or name.split(".")[-1] in zero_decay:
            no_decay.append(p)
            no_decay_names.append(name)
        else:
            decay.append(p)
            decay_names.append(name)
    return [
        {"params": decay, "weight_decay": weight_decay, "names": decay_names},
        {"params": no_decay, "weight_decay": 0.0, "names": no_decay_names},
    ]


def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float,
                   zero_decay_pos_cls: bool = True, betas: tuple[float, float] = (0.9, 0.999),
                   momentum: float = 0.9) -> torch.optim.Optimizer:
    """``"adamw"`` (with ``betas``) or ``"sgd"`` (with ``momentum``, PySlowFast's fine-tuning
    optimizer) over :func:`param_groups` at ``lr``."""
    groups = [{k: v for k, v in g.items() if k != "names"}
              for g in param_groups(model, weight_decay, zero_decay_pos_cls)]
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {name!r}")
