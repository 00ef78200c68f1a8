"""The depthwise pooling conv of 3-D (video) attention with a faster backward on CPU.

oneDNN computes a depthwise ``conv3d`` forward in a few milliseconds but its backward 10-20x
slower (a 3x3x3 filter over 8x56x56 tokens of 96 channels: 4 ms forward, about 70 ms backward on
the 2-core development machine). The backward here is made of operations that are fast:

- input gradient, stride 1: the forward conv of the output gradient with the flipped filter;
- input gradient, strided: per filter offset, the output gradient times that tap, added into the
  strided positions it came from (few output positions: one add per tap);
- filter gradient: per filter offset, the channel sums of (input at that offset) x (output
  gradient), over the positions where the offset lands inside the input (no padded copy).

2-D convs keep PyTorch's backward, which oneDNN computes fast.
"""
from __future__ import annotations

import itertools
import math
from typing import Sequence

import torch
import torch.nn.functional as F

# strided input gradients with at least this many input positions per output position take
# the per-tap adds; below it (e.g. stride 1x2x2) the zero-inserted forward conv is faster
SCATTER_MIN_STRIDE = 8


def _tap_slices(
    tap: Sequence[int], in_shape: Sequence[int], out_shape: Sequence[int],
    stride: Sequence[int], padding: Sequence[int],
) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
    """For the filter offset ``tap``: (input slices, output slices) of the grid positions it
    connects, ``input[o * stride + tap - padding]`` -> ``output[o]``; None if none."""
    x_idx, g_idx = [], []
    for j, n_in, n_out, s, p in zip(tap, in_shape, out_shape, stride, padding):
        first = max(0, -(-(p - j) // s))
        last = min(n_out - 1, (n_in - 1 + p - j) // s)
        if last < first:
            return None
        start = first * s + j - p
        x_idx.append(slice(start, start + (last - first) * s + 1, s))
        g_idx.append(slice(first, last + 1))
    return tuple(x_idx), tuple(g_idx)


def _taps(kernel: Sequence[int]):
    return itertools.product(*(range(k) for k in kernel))


def _input_grad(grad: torch.Tensor, weight: torch.Tensor, in_shape: Sequence[int],
                stride: Sequence[int], padding: Sequence[int]) -> torch.Tensor:
    batch, channels = grad.shape[:2]
    kernel = weight.shape[2:]
    flipped = weight.flip(list(range(2, weight.dim())))
    # the conv forms below pad by k - 1 - p, so padding beyond k - 1 takes the per-tap adds
    beyond_kernel = any(p > k - 1 for k, p in zip(kernel, padding))
    if all(s == 1 for s in stride) and not beyond_kernel:
        return F.conv3d(grad, flipped, None, 1, [k - 1 - p for k, p in zip(kernel, padding)],
                        groups=channels)
    if math.prod(stride) >= SCATTER_MIN_STRIDE or beyond_kernel:
        # channels-last like the input the attention pools
        grad_x = grad.new_zeros(batch, *in_shape, channels).movedim(-1, 1)
        taps = weight.reshape(channels, -1)
        for i, tap in enumerate(_taps(kernel)):
            slices = _tap_slices(tap, in_shape, grad.shape[2:], stride, padding)
            if slices is not None:
                x_idx, g_idx = slices
                grad_x[(..., *x_idx)].addcmul_(grad[(..., *g_idx)], taps[:, i].view(-1, 1, 1, 1))
        return grad_x
    # zero-insert the gradient at the strided positions, then one stride-1 conv
    full = [n + k - 1 for n, k in zip(in_shape, kernel)]
    spread = grad.new_zeros(batch, *full, channels).movedim(-1, 1)
    spread[(..., *(slice(k - 1 - p, k - 1 - p + (o - 1) * s + 1, s)
                   for k, p, o, s in zip(kernel, padding, grad.shape[2:], stride)))] = grad
    return F.conv3d(spread, flipped, None, 1, 0, groups=channels)


def _weight_grad(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                 stride: Sequence[int], padding: Sequence[int]) -> torch.Tensor:
    reduce_dims = [0, *range(2, x.dim())]
    sums = []
    for tap in _taps(weight.shape[2:]):
        slices = _tap_slices(tap, x.shape[2:], grad.shape[2:], stride, padding)
        if slices is None:
            sums.append(weight.new_zeros(weight.shape[0]))
        else:
            x_idx, g_idx = slices
            sums.append((x[(..., *x_idx)] * grad[(..., *g_idx)]).sum(reduce_dims))
    return torch.stack(sums, 1).view_as(weight)


class _DepthwiseConv3dFn(torch.autograd.Function):
    """Inputs: x (B, C, T, H, W), weight (C, 1, kT, kH, kW), stride, padding (3-tuples)."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding):
        ctx.stride, ctx.padding = stride, padding
        ctx.save_for_backward(x, weight)
        return F.conv3d(x, weight, None, stride, padding, groups=x.shape[1])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = _input_grad(grad, weight, x.shape[2:], ctx.stride, ctx.padding)
        if ctx.needs_input_grad[1]:
            grad_w = _weight_grad(grad, x, weight, ctx.stride, ctx.padding)
        return grad_x, grad_w, None, None


def depthwise_conv(x: torch.Tensor, weight: torch.Tensor, stride: Sequence[int],
                   padding: Sequence[int]) -> torch.Tensor:
    """``conv(x, weight, stride=stride, padding=padding, groups=channels)``, no bias, no
    dilation; x: (B, C, *grid) with a (C, 1, *kernel) weight. 3-D inputs take the backward of
    this module, 2-D ones PyTorch's."""
    if x.dim() == 5:
        return _DepthwiseConv3dFn.apply(x, weight, tuple(stride), tuple(padding))
    return F.conv2d(x, weight, None, stride, padding, groups=x.shape[1])
