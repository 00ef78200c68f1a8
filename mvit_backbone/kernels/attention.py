"""Faster implementations of :func:`mvit_backbone.layers.attention.attend`, same signature.

- :func:`explicit_attend`: matmul + softmax as one autograd node that stores q, k, v and the
  probabilities only (autograd through the plain ops also keeps a scaled copy of q, copies
  made by the batched matmuls and the rel-pos einsums' operands). Backward is the textbook
  one; the rel-pos gradient goes through the adjoints of :class:`RelPos`
  (:meth:`~RelPos.grads_from_logits`, then :meth:`~RelPos.terms_backward`: two einsums per
  axis; the terms are not recomputed and no nested autograd call runs). In
  inference the probabilities overwrite the logits in place. For windows and small global
  maps, whose probabilities are small.
- :func:`sdpa_attend`: ``F.scaled_dot_product_attention`` with the rel-pos bias as additive mask,
  built one query chunk of at most 16 MiB at a time. On CUDA the memory-efficient kernel also
  differentiates the bias; on CPU the flash kernel runs in inference.
- :func:`folded_attend`: the bias folded into the dot product: q gets the terms ``q·R_a``
  appended, k the one-hot key codes, so plain attention on them is attention with the bias and
  the CPU flash kernel runs forward *and* backward with no Lq x Lk tensor (large global maps in
  training). Its autograd node stores the unfolded q, k, v, the output and the log-sum-exp,
  and rebuilds the folded operands in backward.

The nodes take the rel-pos lookups (not the terms) as inputs, so nothing of the terms is
stored for backward.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ..layers.rel_pos import RelPos

# largest rel-pos bias built at once by sdpa_attend (fp32 elements: 16 MiB)
BIAS_CHUNK_ELEMENTS = 1 << 22
# MKL's matmuls run up to 1.7x slower when the logits' row length (the key count) is not a
# multiple of 8 (393 keys: 8x7x7 and a class token); explicit_attend pads the keys to one with
# zero rows, whose logits are masked
KEY_ALIGN = 8


def _recompute(fn, tensors: list[torch.Tensor], needs: list[bool]):
    """``fn`` re-run with autograd on detached copies of ``tensors`` (requiring grad where
    ``needs``), inside a backward: returns (the copies, fn's outputs)."""
    inputs = [t.detach().requires_grad_(need) for t, need in zip(tensors, needs)]
    with torch.enable_grad():
        return inputs, fn(*inputs)


def _input_grads(outputs, inputs: list[torch.Tensor], grad_outputs) -> list[torch.Tensor | None]:
    """Gradients of :func:`_recompute`'s copies from its outputs' gradients (None where a copy
    needs none)."""
    wanted = [t for t in inputs if t.requires_grad]
    if not wanted:
        return [None] * len(inputs)
    found = iter(torch.autograd.grad(outputs, wanted, grad_outputs, allow_unused=True))
    return [next(found) if t.requires_grad else None for t in inputs]


def _pad_keys(t: torch.Tensor) -> torch.Tensor:
    """Keys or values (..., L, C) zero-padded to L a multiple of ``KEY_ALIGN``."""
    pad = -t.shape[-2] % KEY_ALIGN
    return F.pad(t, (0, 0, 0, pad)) if pad else t


class _ExplicitAttention(torch.autograd.Function):
    """Inputs: q, k, v (B, heads, L, C), scale, mask (bool or None), the RelPos (or None),
    then its lookups (so that autograd routes their gradients)."""

    @staticmethod
    def forward(ctx, q, k, v, scale, mask, rel_pos, *lookups):
        keys = k.shape[-2]
        k, v = _pad_keys(k), _pad_keys(v)
        padded_logits = (q * scale) @ k.transpose(-2, -1)
        logits = padded_logits[..., :keys]
        if rel_pos is not None:
            rel_pos.add_to_(logits, rel_pos.terms(q))
        if mask is not None:
            logits.masked_fill_(~mask, float("-inf"))
        padded_logits[..., keys:] = float("-inf")
        # nothing keeps the logits: the probabilities overwrite them, row by row
        probs = torch.ops.aten._softmax.out(padded_logits, -1, False, out=padded_logits)
        ctx.scale, ctx.keys = scale, keys
        # the placement of the terms, without the lookups (saved as tensors)
        ctx.rel_pos = None if rel_pos is None else dataclasses.replace(rel_pos, lookups=[])
        ctx.save_for_backward(q, k, v, probs, *lookups)
        return probs @ v

    @staticmethod
    def backward(ctx, grad):
        q, k, v, probs, *lookups = ctx.saved_tensors
        keys = ctx.keys
        grad = grad.contiguous()  # read by two matmuls
        grad_v = probs[..., :keys].transpose(-2, -1) @ grad
        grad_logits = grad @ v.transpose(-2, -1)
        # softmax backward in place (row by row): one Lq x Lk buffer instead of two; the
        # padded keys have probability 0, so their logits get gradient 0
        torch.ops.aten._softmax_backward_data.out(
            grad_logits, probs, -1, probs.dtype, grad_input=grad_logits
        )
        grad_q = (grad_logits @ k).mul_(ctx.scale)
        grad_logits = grad_logits[..., :keys]
        grad_k = (grad_logits.transpose(-2, -1) @ q).mul_(ctx.scale)
        grad_lookups = []
        if ctx.rel_pos is not None:
            grad_terms = ctx.rel_pos.grads_from_logits(grad_logits)
            del grad_logits
            rel_pos = dataclasses.replace(ctx.rel_pos, lookups=lookups)
            grad_lookups = rel_pos.terms_backward(q, grad_terms, grad_q, ctx.needs_input_grad[6:])
        return (grad_q, grad_k, grad_v, None, None, None, *grad_lookups)


def explicit_attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    rel_pos: RelPos | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Matmul + softmax in one autograd node (see the module docstring)."""
    lookups = rel_pos.lookups if rel_pos is not None else []
    return _ExplicitAttention.apply(q, k, v, scale, mask, rel_pos, *lookups)


def sdpa_attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    rel_pos: RelPos | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """SDPA with the rel-pos bias (and mask) as additive mask, one query chunk at a time."""
    if rel_pos is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    # a whole-map bias is 10-130 MiB at detection sizes, and writing fresh memory of that size
    # costs more than the attention reads from it
    terms = rel_pos.terms(q)
    rows = max(1, BIAS_CHUNK_ELEMENTS // (q.shape[0] * q.shape[1] * k.shape[2]))
    outs = []
    for start in range(0, q.shape[2], rows):
        part = slice(start, start + rows)
        bias = rel_pos.bias([t[:, :, part] for t in terms]).to(q.dtype)
        if mask is not None:
            bias = bias.masked_fill(~mask[..., part, :], float("-inf"))
        outs.append(F.scaled_dot_product_attention(q[:, :, part], k, v, attn_mask=bias, scale=scale))
    return torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]


def _fold(q, k, v, scale, rel_pos, lookups, codes):
    """``[q·scale, *terms]``, ``[k, *codes]`` and v zero-padded to the same head size (the CPU
    flash kernel wants one head size), so plain attention on them is attention with the bias."""
    lead = k.shape[:2]
    q_ext = torch.cat([q * scale, *rel_pos.terms(q, lookups)], dim=-1)
    k_ext = torch.cat([k, *(c.expand(*lead, *c.shape) for c in codes)], dim=-1)
    return q_ext, k_ext, F.pad(v, (0, q_ext.shape[-1] - v.shape[-1]))


class _FoldedFlashAttention(torch.autograd.Function):
    """Inputs: q, k, v, scale, additive mask bias (or None), the RelPos, then its lookups."""

    @staticmethod
    def forward(ctx, q, k, v, scale, bias, rel_pos, *lookups):
        codes = rel_pos.key_codes(k)
        q_ext, k_ext, v_ext = _fold(q, k, v, scale, rel_pos, lookups, codes)
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q_ext, k_ext, v_ext, 0.0, False, attn_mask=bias, scale=1.0
        )
        del q_ext, k_ext, v_ext
        out = out[..., : v.shape[-1]].contiguous()
        ctx.scale, ctx.codes = scale, codes
        ctx.rel_pos = dataclasses.replace(rel_pos, lookups=[])
        ctx.save_for_backward(q, k, v, bias, out, lse, *lookups)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, bias, out, lse, *lookups = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3] + ctx.needs_input_grad[6:]
        inputs, folded = _recompute(
            lambda q, k, v, *lk: _fold(q, k, v, ctx.scale, ctx.rel_pos, lk, ctx.codes),
            [q, k, v, *lookups], needs)
        # exact: the padded output columns are zeros (the padded v columns are)
        extra = folded[0].shape[-1] - v.shape[-1]
        grads = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            F.pad(grad, (0, extra)), *(t.detach() for t in folded), F.pad(out, (0, extra)), lse,
            0.0, False, attn_mask=bias, scale=1.0,
        )
        result = _input_grads(folded, inputs, grads)
        return (*result[:3], None, None, None, *result[3:])


def folded_attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    rel_pos: RelPos | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The rel-pos bias folded into the dot product (see the module docstring). On CPU it runs
    the flash kernel forward and backward; elsewhere SDPA on the folded operands."""
    if rel_pos is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    if q.device.type == "cpu":
        bias = None if mask is None else torch.zeros(mask.shape, dtype=q.dtype).masked_fill_(
            ~mask, float("-inf"))
        return _FoldedFlashAttention.apply(q, k, v, scale, bias, rel_pos, *rel_pos.lookups)
    q_ext, k_ext, v_ext = _fold(q, k, v, scale, rel_pos, rel_pos.lookups, rel_pos.key_codes(k))
    out = F.scaled_dot_product_attention(q_ext, k_ext, v_ext, attn_mask=mask, scale=1.0)
    return out[..., : v.shape[-1]]
