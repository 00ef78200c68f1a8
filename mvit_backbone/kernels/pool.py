"""The depthwise pooling conv of 3-D (video) attention with a faster backward on CPU.

oneDNN computes a depthwise ``conv3d`` forward in a few milliseconds but its backward 10-20x
slower (a 3x3x3 filter over 8x56x56 tokens of 96 channels: 4 ms forward, about 70 ms backward on
the 2-core development machine). The backward here is made of operations that are fast:

- input gradient: forward convs of the output gradient with the flipped filter, one per phase
  of the input grid when strided (each phase with the filter taps that reach it);
- filter gradient: per temporal filter offset, oneDNN's 2-D filter gradient (fast, unlike its
  3-D one) over the pairs of input and output frames that offset connects.

2-D convs keep PyTorch's backward, which oneDNN computes fast.
"""
from __future__ import annotations

import itertools
from typing import Sequence

import torch
import torch.nn.functional as F


def _frame_pairs(tap: int, n_in: int, n_out: int, stride: int, padding: int
                 ) -> tuple[slice, slice] | None:
    """For the temporal filter offset ``tap``: (input frames, output frames) it connects,
    ``input[o * stride + tap - padding]`` -> ``output[o]``; None if none."""
    first = max(0, -(-(padding - tap) // stride))
    last = min(n_out - 1, (n_in - 1 + padding - tap) // stride)
    if last < first:
        return None
    start = first * stride + tap - padding
    return slice(start, start + (last - first) * stride + 1, stride), slice(first, last + 1)


def _phase_plan(n_in: int, n_out: int, k: int, s: int, p: int) -> list[tuple | None]:
    """Along one axis, for each input phase r (positions r, r + s, ...): None if no filter tap
    reaches it, else (r, first tap, conv padding, output slice). The phase's gradient is a
    stride-1 conv of the output gradient with the taps ``first::s`` (flipped): input
    ``m * s + r`` reads output ``m + (r + p) // s - j`` through tap ``first + j * s``."""
    plan = []
    for r in range(min(s, n_in)):
        first = (r + p) % s
        taps = len(range(first, k, s))
        if taps == 0:
            plan.append(None)
            continue
        length = len(range(r, n_in, s))
        left = taps - 1 - (r + p) // s  # negative: the conv output starts inside the gradient
        right = length + taps - 1 - (n_out + left)
        pad = max(0, left, right)
        plan.append((r, first, pad, slice(pad - left, pad - left + length)))
    return plan


def _input_grad(grad: torch.Tensor, weight: torch.Tensor, in_shape: Sequence[int],
                stride: Sequence[int], padding: Sequence[int]) -> torch.Tensor:
    """One stride-1 conv per phase of the strided input grid (s_t x s_h x s_w phases, each
    with the filter taps that reach it): the work of the forward conv, where a conv of the
    zero-inserted gradient would do s_t x s_h x s_w times more."""
    batch, channels = grad.shape[:2]
    kernel = weight.shape[2:]
    plans = [_phase_plan(*dims) for dims in zip(in_shape, grad.shape[2:], kernel, stride, padding)]
    flip = list(range(2, weight.dim()))
    phases = list(itertools.product(*plans))
    if len(phases) == 1 and None not in phases[0]:  # stride 1
        _, _, pads, crops = zip(*phases[0])
        return F.conv3d(grad, weight.flip(flip), None, 1, pads, groups=channels)[(..., *crops)]
    unreached = any(None in phase for phase in phases)
    # channels-last like the input the attention pools
    grad_x = (grad.new_zeros if unreached else grad.new_empty)(batch, *in_shape, channels)
    grad_x = grad_x.movedim(-1, 1)
    for phase in phases:
        if None in phase:
            continue
        rs, firsts, pads, crops = zip(*phase)
        taps = weight[(..., *(slice(f, None, s) for f, s in zip(firsts, stride)))].flip(flip)
        part = F.conv3d(grad, taps, None, 1, pads, groups=channels)
        grad_x[(..., *(slice(r, None, s) for r, s in zip(rs, stride)))] = part[(..., *crops)]
    return grad_x


def _frames(t: torch.Tensor, frames: slice) -> torch.Tensor:
    """(B, C, T, H, W) -> the frames ``frames`` of every clip as channels-last images
    (B * T', C, H, W)."""
    t = t.movedim(1, -1)[:, frames]
    return t.reshape(-1, *t.shape[2:]).movedim(-1, 1)


def _weight_grad(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                 stride: Sequence[int], padding: Sequence[int]) -> torch.Tensor:
    """Per temporal filter offset, the 2-D filter gradient of the frames it connects (every
    clip's frames batched as images), which oneDNN computes fast."""
    # on frames smaller than the filter oneDNN's filter gradient falls back to a kernel about
    # 10x slower than on the same frames zero-padded first, so there they are padded here
    pad_frames = any(n < k for n, k in zip(x.shape[3:], weight.shape[3:]))
    conv_padding = [0, 0] if pad_frames else padding[1:]
    grads = []
    for dt in range(weight.shape[2]):
        pairs = _frame_pairs(dt, x.shape[2], grad.shape[2], stride[0], padding[0])
        if pairs is None:
            grads.append(torch.zeros_like(weight[:, :, dt]))
            continue
        x_frames, grad_frames = pairs
        frames = _frames(x, x_frames)
        if pad_frames:
            frames = F.pad(frames, [padding[2], padding[2], padding[1], padding[1]])
        grads.append(torch.ops.aten.convolution_backward(
            _frames(grad, grad_frames), frames, weight[:, :, dt], None,
            stride[1:], conv_padding, [1, 1], False, [0, 0], x.shape[1], [False, True, False],
        )[1])
    return torch.stack(grads, 2)


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
