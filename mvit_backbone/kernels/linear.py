"""Linear layers, fused norm + Linear and the MLP on oneDNN's matmul kernels (CPU, float32).

MViT spends half its CPU time in Linear layers, most of them thin (96 or 192 input channels
over 16k-65k tokens). PyTorch runs ``F.linear`` on MKL's sgemm, whose fast code path is chosen
by CPU vendor; oneDNN (also bundled with PyTorch, as ``torch.ops.mkldnn._linear_pointwise``,
the kernel ``torch.compile`` uses on CPU) picks by instruction set. On the AMD EPYC development
machine oneDNN is 1.2-1.4x faster on most MViT shapes (``tools/benchmark_backbone.py
--kernels``). The result is the same matmul in fp32 (float rounding only).

- :func:`norm_linear`: projections of ``LayerNorm(x)`` as one autograd node that stores x and
  the norm's statistics, not the normalised tensor (recomputed exactly in backward).
- :func:`mlp_forward`: fc1 -> GELU -> fc2 of ``LayerNorm(x)``; inference applies GELU in place;
  training stores x and fc1's output only (5 instead of 9 token-width tensors per block) and
  computes the 4x-wide GELU and its gradient ``TOKEN_CHUNK`` tokens at a time.

Backward of a Linear is ``grad @ W`` on oneDNN and the weight gradient on ``mm``. The execution
policy (``mvit_backbone.kernels``) decides where these run; :func:`onednn_applies` says whether
oneDNN can.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def _onednn_op():
    ops = getattr(torch.ops, "mkldnn", None)
    return getattr(ops, "_linear_pointwise", None) if ops is not None else None


_LINEAR_POINTWISE = _onednn_op() if torch.backends.mkldnn.is_available() else None


# below this many tokens MKL computes a Linear's input gradient faster than oneDNN (on the
# 784- and 196-token stages of a 224² classifier at batch 4; oneDNN from 3136 tokens)
ONEDNN_MIN_GRAD_ROWS = 2048
# tokens per chunk of the MLP's 4x-wide activations: 2048 x 4 x 96 fp32 = 3 MiB, which stays in
# cache, where a whole fresh tensor (up to 96 MiB at detection sizes) would be page-faulted in
TOKEN_CHUNK = 2048


def onednn_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether oneDNN can run this Linear: CPU, float32, no autocast."""
    return (
        _LINEAR_POINTWISE is not None
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
    )


def _matmul(x2d: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """(M, K) x (N, K)ᵀ + bias on oneDNN. Other dtypes than float32 (float64 for gradcheck)
    take ``F.linear``."""
    if x2d.dtype != torch.float32 or _LINEAR_POINTWISE is None:
        return F.linear(x2d, weight, bias)
    return _LINEAR_POINTWISE(x2d, weight, bias, "none", [], "")


def _input_grad(grad2d: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """grad (M, N) @ W (N, K): a oneDNN linear whose weight is the strided view Wᵀ (oneDNN
    reads it as is; a contiguous copy of a large transposed weight costs more than it saves),
    or MKL's mm for few rows."""
    if grad2d.shape[0] < ONEDNN_MIN_GRAD_ROWS:
        return grad2d.mm(weight)
    return _matmul(grad2d, weight.t(), None)


def _param_grads(grad2d: torch.Tensor, y: torch.Tensor | None, has_bias: bool, need_weight: bool,
                 need_bias: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of W and b in ``y @ Wᵀ + b`` from the output gradient (M, N) and y (M, K)."""
    return (grad2d.t().mm(y) if need_weight else None,
            grad2d.sum(0) if has_bias and need_bias else None)


def _cat(chunks: list[torch.Tensor]) -> torch.Tensor:
    """The token chunks as one tensor; one chunk as it is (``torch.cat`` would copy it)."""
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks)


def _norm_forward(x2d, ln_weight, ln_bias, eps):
    """LayerNorm over the last axis, with its statistics; the identity when eps is None."""
    if eps is None:
        return x2d, None, None
    return torch.native_layer_norm(x2d, (x2d.shape[1],), ln_weight, ln_bias, eps)


def _norm_backward(ctx, grad_y, x2d, mean, rstd, ln_weight, ln_bias, needs):
    """Gradients of (x, ln_weight, ln_bias) from the gradient of the normalised input."""
    if ctx.eps is None:
        return grad_y, None, None
    mask = [needs[0], needs[1] and ln_weight is not None, needs[2] and ln_bias is not None]
    return torch.ops.aten.native_layer_norm_backward(
        grad_y, x2d, [x2d.shape[1]], mean, rstd, ln_weight, ln_bias, mask
    )


class _ProjectFn(torch.autograd.Function):
    """Linear projections y @ W_iᵀ + b_i of one input y = LayerNorm(x) (or y = x).

    Stores x and the norm's statistics for backward, not y: y is recomputed (exactly, by the
    same kernel), so a norm followed by its Linear keeps one token-width tensor instead of two.
    Inputs: x2d (M, K), ln_weight, ln_bias, eps (None: no norm), then W_0, b_0, W_1, b_1, ...
    """

    @staticmethod
    def forward(ctx, x2d, ln_weight, ln_bias, eps, *params):
        y, mean, rstd = _norm_forward(x2d, ln_weight, ln_bias, eps)
        weights, biases = params[0::2], params[1::2]
        ctx.eps = eps
        ctx.has_bias = [b is not None for b in biases]
        ctx.save_for_backward(x2d, mean, rstd, ln_weight, ln_bias, *weights)
        return tuple(_matmul(y, w, b) for w, b in zip(weights, biases))

    @staticmethod
    def backward(ctx, *grads):
        x2d, mean, rstd, ln_weight, ln_bias, *weights = ctx.saved_tensors
        y = _norm_forward(x2d, ln_weight, ln_bias, ctx.eps)[0]
        needs = ctx.needs_input_grad
        grad_y, grad_params = None, []
        for i, (grad, weight, has_bias) in enumerate(zip(grads, weights, ctx.has_bias)):
            grad = grad.contiguous()
            part = _input_grad(grad, weight)
            grad_y = part if grad_y is None else grad_y.add_(part)
            grad_params += _param_grads(grad, y, has_bias, needs[4 + 2 * i], needs[5 + 2 * i])
        del y
        grad_x, grad_ln_w, grad_ln_b = _norm_backward(
            ctx, grad_y, x2d, mean, rstd, ln_weight, ln_bias, needs[:3]
        )
        return (grad_x, grad_ln_w, grad_ln_b, None, *grad_params)


class _GeluMlpFn(torch.autograd.Function):
    """fc2(gelu(fc1(y))) with y = LayerNorm(x) (or y = x), storing x, the norm's statistics
    and fc1's output only; y and the GELU are recomputed in backward.

    The 4x-wide GELU output (forward and backward) and hidden gradients are computed
    ``TOKEN_CHUNK`` tokens at a time, so they stay in cache and are never allocated at full
    size; the weight gradients accumulate over the chunks.
    Inputs: x2d, ln_weight, ln_bias, eps (None: no norm), w1, b1, w2, b2."""

    @staticmethod
    def forward(ctx, x2d, ln_weight, ln_bias, eps, w1, b1, w2, b2):
        y, mean, rstd = _norm_forward(x2d, ln_weight, ln_bias, eps)
        hidden = _matmul(y, w1, b1)
        del y
        out = _cat([_matmul(F.gelu(h), w2, b2) for h in hidden.split(TOKEN_CHUNK)])
        ctx.eps = eps
        ctx.has_bias = (b1 is not None, b2 is not None)
        ctx.save_for_backward(x2d, mean, rstd, ln_weight, ln_bias, hidden, w1, w2)
        return out

    @staticmethod
    def backward(ctx, grad):
        x2d, mean, rstd, ln_weight, ln_bias, hidden, w1, w2 = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad = grad.contiguous()
        y = _norm_forward(x2d, ln_weight, ln_bias, ctx.eps)[0]
        grad_w1 = torch.zeros_like(w1) if needs[4] else None
        grad_b1 = w1.new_zeros(w1.shape[0]) if ctx.has_bias[0] and needs[5] else None
        grad_w2 = torch.zeros_like(w2) if needs[6] else None
        # one chunk: its input gradient is grad_y, not copied into one
        grad_y = torch.empty_like(y) if y.shape[0] > TOKEN_CHUNK else None
        chunks = (t.split(TOKEN_CHUNK) for t in (grad, hidden, y))
        for start, (g, h, y_part) in zip(range(0, y.shape[0], TOKEN_CHUNK), zip(*chunks)):
            if grad_w2 is not None:
                grad_w2.addmm_(g.t(), F.gelu(h))
            grad_h = torch.ops.aten.gelu_backward(_input_grad(g, w2), h)
            if grad_w1 is not None:
                grad_w1.addmm_(grad_h.t(), y_part)
            if grad_b1 is not None:
                grad_b1 += grad_h.sum(0)
            grad_y_part = _input_grad(grad_h, w1)
            if grad_y is None:
                grad_y = grad_y_part
            else:
                grad_y[start:start + TOKEN_CHUNK] = grad_y_part
        del y, hidden
        grad_b2 = grad.sum(0) if ctx.has_bias[1] and needs[7] else None
        grad_x, grad_ln_w, grad_ln_b = _norm_backward(
            ctx, grad_y, x2d, mean, rstd, ln_weight, ln_bias, needs[:3]
        )
        return grad_x, grad_ln_w, grad_ln_b, None, grad_w1, grad_b1, grad_w2, grad_b2


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1]).contiguous()


def _fusable_norm(norm: nn.Module | None) -> bool:
    return norm is None or (type(norm) is nn.LayerNorm and len(norm.normalized_shape) == 1)


def _norm_args(norm: nn.Module | None) -> tuple:
    return (None, None, None) if norm is None else (norm.weight, norm.bias, norm.eps)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` on oneDNN. x: (..., K) -> (..., N)."""
    return norm_linear(x, None, [(weight, bias)])[0]


def norm_linear(
    x: torch.Tensor,
    norm: nn.Module | None,
    projections: Sequence[tuple[torch.Tensor, torch.Tensor | None]],
) -> list[torch.Tensor]:
    """``[linear(norm(x), W, b) for W, b in projections]``; x: (..., K) -> each (..., N_i).

    With a LayerNorm (or no norm), one autograd node computes them all and stores x instead of
    norm(x) for backward; another norm is applied first.
    """
    if not _fusable_norm(norm):
        x, norm = norm(x), None
    params = [t for pair in projections for t in pair]
    outs = _ProjectFn.apply(_flat(x), *_norm_args(norm), *params)
    return [out.reshape(*x.shape[:-1], out.shape[-1]) for out in outs]


def mlp_forward(mlp: nn.Module, x: torch.Tensor, norm: nn.Module | None = None,
                recompute: bool = True) -> torch.Tensor:
    """``mlp(norm(x))`` for an fc1 -> act -> fc2 module; x: (..., in) -> (..., out).

    With exact GELU and a LayerNorm (or no norm): in training with ``recompute`` one autograd
    node storing x and fc1's output (the norm and GELU recomputed in backward), in inference
    GELU in place on fc1's output. Otherwise fc1/fc2 on oneDNN around the act.
    """
    w1, b1, w2, b2 = mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias
    exact_gelu = type(mlp.act) is nn.GELU and mlp.act.approximate == "none"
    if not (exact_gelu and _fusable_norm(norm)) or (torch.is_grad_enabled() and not recompute):
        y = x if norm is None else norm(x)
        return linear(mlp.act(linear(y, w1, b1)), w2, b2)
    x2d = _flat(x)
    if torch.is_grad_enabled():
        out = _GeluMlpFn.apply(x2d, *_norm_args(norm), w1, b1, w2, b2)
    else:
        y = x2d if norm is None else norm(x2d)
        # GELU in place, not as oneDNN's fused erf-GELU post-op: that runs 10-15 % slower
        out = _matmul(torch.ops.aten.gelu_(_matmul(y, w1, b1)), w2, b2)
    return out.reshape(*x.shape[:-1], out.shape[-1])
