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
    q_hw: tuple[int, int] | None = None,
    kv_hw: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Boolean mask (nW, Lq_win, Lk_win): True where a query may attend to a key.

    After the cyclic shift, a window can hold cells that were far apart in the image (across the
    wrapped-around border). Cells carry the label of the region they came from; a query attends
    only to keys of its own region. The query and key grids can have different resolutions
    (pooled keys); their shifts must correspond to the same image offset.

    With the unpadded sizes ``q_hw``/``kv_hw`` given, zero-padded keys are masked out too
    (``window_padding="minimal"``); padded queries, whose outputs are cropped, then attend to
    every key so that no row is fully masked (a fully masked row gives NaN, also in backward).
    """
    q_ids = _region_ids(q_padded_hw, q_window, q_shift, device)
    k_ids = _region_ids(kv_padded_hw, kv_window, kv_shift, device)
    mask = q_ids[:, :, None] == k_ids[:, None, :]
    if q_hw is not None and kv_hw is not None:
        q_valid = _valid_cells(q_hw, q_window, device)
        k_valid = _valid_cells(kv_hw, kv_window, device)
        mask = (mask & k_valid[:, None, :]) | ~q_valid[:, :, None]
    return mask


def _valid_cells(hw: tuple[int, int], window: int, device) -> torch.Tensor:
    """True for the real (not zero-padded) cells of each window: (nW, win²)."""
    ones = torch.ones(1, *hw, 1, device=device)
    windows, _ = window_partition(ones, window)
    return windows.reshape(windows.shape[0], window * window) > 0


def window_runs(
    q_len: int, q_window: int, k_len: int, k_window: int, pad_keys: bool
) -> list[tuple[int, int, int, int, int]]:
    """Windows along one axis, merged into runs of equal size, without padding the queries.

    Window ``i`` holds queries ``[i * q_window, min((i + 1) * q_window, q_len))`` and keys
    ``[i * k_window, ...)``: a full ``k_window`` when ``pad_keys`` (the keys were zero-padded
    to a multiple, detectron2's semantics), else only the keys that exist.

    Returns ``(q_start, q_size, k_start, k_size, count)`` per run, e.g. 4 full windows then one
    partial window. Queries beyond the grid are never built: their outputs would be cropped.
    """
    n_q = -(-q_len // q_window)
    n_k = -(-k_len // k_window)
    if n_q != n_k:
        raise ValueError(
            f"query length {q_len} (window {q_window}) and key length {k_len} (window "
            f"{k_window}) split into different numbers of windows ({n_q} vs {n_k}); choose a "
            "window size that both pooled grids divide consistently"
        )
    runs: list[list[int]] = []
    for i in range(n_q):
        q_size = min(q_window, q_len - i * q_window)
        k_size = k_window if pad_keys else min(k_window, k_len - i * k_window)
        if runs and runs[-1][1] == q_size and runs[-1][3] == k_size:
            runs[-1][4] += 1
        else:
            runs.append([i * q_window, q_size, i * k_window, k_size, 1])
    return [tuple(r) for r in runs]


def partition_run(x: torch.Tensor, h_win: int, w_win: int) -> torch.Tensor:
    """(B, nh * h_win, nw * w_win, heads, C) -> (B * nh * nw, heads, h_win * w_win, C).

    Windows of any (not necessarily square) size, in the (batch, heads, tokens, channels)
    layout the attention matmuls read without another copy; the one copy made here moves
    whole head vectors (C contiguous channels).
    """
    b, hh, ww, heads, c = x.shape
    nh, nw = hh // h_win, ww // w_win
    x = x.reshape(b, nh, h_win, nw, w_win, heads, c).permute(0, 1, 3, 5, 2, 4, 6)
    return x.reshape(b * nh * nw, heads, h_win * w_win, c)


def unpartition_run(x: torch.Tensor, batch: int, nh: int, nw: int, h_win: int, w_win: int) -> torch.Tensor:
    """Inverse of :func:`partition_run`: (B * nh * nw, heads, h_win * w_win, C) -> (B,
    nh * h_win, nw * w_win, heads, C)."""
    heads, c = x.shape[1], x.shape[3]
    x = x.reshape(batch, nh, nw, heads, h_win, w_win, c).permute(0, 1, 4, 2, 5, 3, 6)
    return x.reshape(batch, nh * h_win, nw * w_win, heads, c)
