"""Linear layers and the MLP, on oneDNN's matmul kernels where they apply.

MViT spends half its CPU time in Linear layers, most of them thin (96 or 192 input channels
over 16k-65k tokens). PyTorch runs ``F.linear`` on MKL's sgemm, whose fast code path is chosen
by CPU vendor; oneDNN (also bundled with PyTorch, as ``torch.ops.mkldnn._linear_pointwise``,
the kernel ``torch.compile`` uses on CPU) picks by instruction set. On the AMD EPYC development
machine oneDNN is 1.2-1.9x faster on every MViT shape (``tools/benchmark_backbone.py
--kernels``). The result is the same matmul in fp32 (float rounding only).

``Linear`` is an ``nn.Linear`` (same parameters, same ``state_dict``, same init) whose forward
takes the oneDNN path when it applies: CPU, float32 input and weight, oneDNN available, no
autocast, and not while tracing, exporting or compiling (those see plain ``F.linear``, so
fvcore counts FLOPs, ONNX exports a Gemm and inductor picks its own kernels). Backward is
``grad @ W`` on oneDNN and the weight gradient on ``mm``.

``Mlp`` (fc1 -> GELU -> fc2, timm's parameter names) fuses GELU into fc1 for inference and,
when training, keeps only fc1's input and pre-activation for backward (GELU is recomputed), so
it stores 5 instead of 9 token-width tensors per block.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


def _onednn_op():
    ops = getattr(torch.ops, "mkldnn", None)
    return getattr(ops, "_linear_pointwise", None) if ops is not None else None


_LINEAR_POINTWISE = _onednn_op() if torch.backends.mkldnn.is_available() else None


def onednn_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`linear` will run on oneDNN for this input and weight."""
    return (
        _LINEAR_POINTWISE is not None
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and not torch.jit.is_tracing()
        and not torch.jit.is_scripting()
        and not torch.compiler.is_compiling()
        and not torch.onnx.is_in_onnx_export()
    )


def _matmul(x2d: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, act: str = "none"):
    """(M, K) x (N, K)ᵀ + bias on oneDNN, with an optional fused "gelu" (exact erf)."""
    return _LINEAR_POINTWISE(x2d, weight, bias, act, [], "none" if act == "gelu" else "")


def _input_grad(grad2d: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """grad (M, N) @ W (N, K): a oneDNN linear with Wᵀ as its weight (a small copy)."""
    return _matmul(grad2d, weight.t().contiguous(), None)


class _LinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2d, weight, bias):
        ctx.save_for_backward(x2d, weight)
        ctx.has_bias = bias is not None
        return _matmul(x2d, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x2d, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = _input_grad(grad, weight) if ctx.needs_input_grad[0] else None
        grad_w = grad.t().mm(x2d) if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


class _GeluMlpFn(torch.autograd.Function):
    """fc2(gelu(fc1(x))) saving x and fc1's output only; GELU is recomputed in backward."""

    @staticmethod
    def forward(ctx, x2d, w1, b1, w2, b2):
        hidden = _matmul(x2d, w1, b1)
        out = _matmul(F.gelu(hidden), w2, b2)
        ctx.save_for_backward(x2d, hidden, w1, w2)
        ctx.has_bias = (b1 is not None, b2 is not None)
        return out

    @staticmethod
    def backward(ctx, grad):
        x2d, hidden, w1, w2 = ctx.saved_tensors
        need_x, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad
        grad = grad.contiguous()
        grad_w2 = grad.t().mm(F.gelu(hidden)) if need_w2 else None
        grad_b2 = grad.sum(0) if ctx.has_bias[1] and need_b2 else None
        grad_hidden = torch.ops.aten.gelu_backward(_input_grad(grad, w2), hidden)
        del hidden
        grad_x = _input_grad(grad_hidden, w1) if need_x else None
        grad_w1 = grad_hidden.t().mm(x2d) if need_w1 else None
        grad_b1 = grad_hidden.sum(0) if ctx.has_bias[0] and need_b1 else None
        return grad_x, grad_w1, grad_b1, grad_w2, grad_b2


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1]).contiguous()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` that runs on oneDNN where :func:`onednn_applies`. x: (..., K) -> (..., N)."""
    if not onednn_applies(x, weight):
        return F.linear(x, weight, bias)
    return _LinearFn.apply(_flat(x), weight, bias).reshape(*x.shape[:-1], weight.shape[0])


class Linear(nn.Linear):
    """``nn.Linear`` on :func:`linear` (same parameters and initialisation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class Mlp(nn.Module):
    """fc1 -> act -> fc2, with timm's ``Mlp`` parameter names (``fc1``, ``fc2``).

    With exact GELU on the oneDNN path, GELU is fused into fc1 (inference) or recomputed in
    backward instead of stored (training). Shapes: (..., in_features) -> (..., out_features).
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: int,
        act_layer: Callable[[], nn.Module] = nn.GELU,
    ):
        super().__init__()
        self.fc1 = Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = Linear(hidden_features, out_features)
        self._fusable_gelu = type(self.act) is nn.GELU and self.act.approximate == "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w1, b1, w2, b2 = self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias
        if not (self._fusable_gelu and onednn_applies(x, w1)):
            return self.fc2(self.act(self.fc1(x)))
        x2d = _flat(x)
        if torch.is_grad_enabled() and (x.requires_grad or w1.requires_grad or w2.requires_grad):
            out = _GeluMlpFn.apply(x2d, w1, b1, w2, b2)
        else:
            out = _matmul(_matmul(x2d, w1, b1, "gelu"), w2, b2)
        return out.reshape(*x.shape[:-1], out.shape[-1])
