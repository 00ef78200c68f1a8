"""Patch (2-D) and cube (3-D) embedding: a strided conv, then tokens (B, N, C) and grid shape."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn


class PatchEmbed(nn.Module):
    """(B, C, H, W) or (B, C, T, H, W) -> tokens (B, prod(grid), embed_dim), grid shape."""

    def __init__(
        self,
        kernel_size: Sequence[int] = (7, 7),
        stride: Sequence[int] = (4, 4),
        padding: Sequence[int] = (3, 3),
        in_chans: int = 3,
        embed_dim: int = 96,
    ):
        super().__init__()
        conv = nn.Conv2d if len(kernel_size) == 2 else nn.Conv3d
        self.proj = conv(in_chans, embed_dim, kernel_size, stride, padding)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        x = self.proj(x)
        shape = tuple(x.shape[2:])
        # one copy to contiguous tokens here; a transposed view would make every op of the
        # first blocks (adds, norms, Linear inputs) produce or copy strided tensors
        return x.flatten(2).transpose(1, 2).contiguous(), shape
