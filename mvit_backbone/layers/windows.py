"""Non-overlapping window partition for (B, H, W, C) grids, and the Swin shift mask."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * nH * nW, window, window, C), zero-padding H, W up to multiples.

    Returns the windows and the padded size (Hp, Wp).
    """
    b, h, w, c = x.shape
    pad_h = (window - h % window) % window
    pad_w = (window - w % window) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c), (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window: int, padded_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * nW, win, win, C) -> (B, H, W, C)."""
    hp, wp = padded_hw
    h, w = hw
    b = windows.shape[0] // ((hp // window) * (wp // window))
    x = windows.view(b, hp // window, wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    if hp > h or wp > w:
        x = x[:, :h, :w, :]
    return x


def _region_ids(padded_hw: tuple[int, int], window: int, shift: int, device) -> torch.Tensor:
    """Swin region label of every cell of a rolled grid, partitioned into windows: (nW, win²)."""
    ids = torch.zeros(1, *padded_hw, 1, device=device)
    label = 0
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for hs in bounds:
        for ws in bounds:
            ids[:, hs, ws, :] = label
            label += 1
    windows, _ = window_partition(ids, window)
    return windows.reshape(windows.shape[0], window * window)


def shifted_window_mask(
    q_padded_hw: tuple[int, int],
    q_window: int,
    q_shift: int,
    kv_padded_hw: tuple[int, int],
    kv_window: int,
    kv_shift: int,
    device=None,
) -> torch.Tensor:
    """Boolean mask (nW, Lq_win, Lk_win): True where a query may attend to a key.

    After the cyclic shift, a window can hold cells that were far apart in the image (across the
    wrapped-around border). Cells carry the label of the region they came from; a query attends
    only to keys of its own region. The query and key grids can have different resolutions
    (pooled keys); their shifts must correspond to the same image offset.
    """
    q_ids = _region_ids(q_padded_hw, q_window, q_shift, device)
    k_ids = _region_ids(kv_padded_hw, kv_window, kv_shift, device)
    return q_ids[:, :, None] == k_ids[:, None, :]
