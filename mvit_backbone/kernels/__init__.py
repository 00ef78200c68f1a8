"""How MViT blocks are computed: the execution policy, the one seam between the model's math
(``mvit_backbone.layers``, plain PyTorch) and the faster implementations of it here.

A trunk runs every block through :func:`run_block` with its ``kernels`` policy:

- ``"reference"``: the block's own forward with the reference :func:`attend` (matmul +
  softmax), plain PyTorch everywhere.
- ``"auto"`` (default): per call, by what the input is and whether gradients are recorded
  (:func:`plan_block`):

  * CPU, float32, no autocast: in inference :func:`.block.block_forward` (oneDNN linears,
    the MLP in token chunks) with :func:`.attention.sdpa_attend`. In training
    :func:`.block.block_forward` too, for inputs of at least ``RECOMPUTE_MIN_PIXELS`` (batch x
    frames x height x width) with recompute in backward (norms fused into the projections),
    below it storing its activations; 3-D pooling convs by
    :func:`.pool.depthwise_conv`; attention with rel-pos by
    :func:`.attention.explicit_attend` for windows and small global maps,
    :func:`.attention.folded_attend` for large global maps.
  * anything else (CUDA, autocast, half precision): the block's own forward with
    :func:`.attention.sdpa_attend` (the fused kernels of the device).
  * while tracing, scripting, compiling or exporting: ``"reference"``, so that FLOP counters
    (fvcore), ``torch.compile`` and ONNX see the plain graph of standard ops.

All give the same result up to float rounding (``tests/test_kernels.py``). The first call of
each kind of block logs which implementation it uses.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ..layers.attention import AttendFn, MultiScaleAttention, attend
from ..layers.blocks import MultiScaleBlock
from .attention import explicit_attend, folded_attend, sdpa_attend
from .block import block_forward
from .linear import onednn_applies
from .pool import depthwise_conv

KERNEL_POLICIES = ("auto", "reference")
# Global attention in CPU training keeps its probabilities (explicit) up to this many elements
# per call (B x heads x Lq x Lk; 64 MiB in fp32); beyond it, the folded flash kernel keeps none.
EXPLICIT_MAX_ELEMENTS = 1 << 24
# Recomputing in backward saves memory at a cost in time; below one 512² image per step (e.g. a
# 224² classifier at batch 4) the activations are small, and storing them is faster
# (tools/benchmark_backbone.py --timm).
RECOMPUTE_MIN_PIXELS = 512 * 512

logger = logging.getLogger(__name__)
_logged: set[tuple] = set()


def eager_mode() -> bool:
    """Not tracing, scripting, compiling or exporting: custom kernels and autograd nodes may
    run (the others must see the plain graph of standard ops)."""
    return not (
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.compiler.is_compiling()
        or torch.onnx.is_in_onnx_export()
    )


@dataclass(frozen=True)
class BlockPlan:
    """How one block call is computed: ``fast_block`` (:func:`.block.block_forward`, with
    ``recompute`` in training, and the pooling of :mod:`.pool`; else the block's own forward)
    with ``attend``."""

    fast_block: bool
    attend: AttendFn
    recompute: bool = False

    def describe(self) -> str:
        block = "plain block"
        if self.fast_block:
            block = "oneDNN block" + (" with recompute" if self.recompute else "")
        return f"{block} + {self.attend.__name__}"


REFERENCE_PLAN = BlockPlan(False, attend)


def check_policy(policy: str) -> str:
    if policy not in KERNEL_POLICIES:
        raise ValueError(f"kernels must be one of {KERNEL_POLICIES}, got {policy!r}")
    return policy


def plan_block(
    policy: str, block: MultiScaleBlock, x: torch.Tensor, shape: Sequence[int],
    input_pixels: int = RECOMPUTE_MIN_PIXELS,
) -> BlockPlan:
    """The implementation ``policy`` picks for ``block(x, shape)`` (see the module docstring);
    ``input_pixels``: the size of the trunk's input (batch x frames x height x width)."""
    if policy == "reference" or not eager_mode():
        return REFERENCE_PLAN
    if not onednn_applies(x, block.attn.qkv.weight):
        return BlockPlan(False, sdpa_attend)
    attn = block.attn
    if not torch.is_grad_enabled():
        return BlockPlan(True, sdpa_attend)
    recompute = input_pixels >= RECOMPUTE_MIN_PIXELS
    return BlockPlan(True, _training_attend(attn, x, shape), recompute)


def _training_attend(attn: MultiScaleAttention, x: torch.Tensor, shape: Sequence[int]) -> AttendFn:
    """The attend of CPU float32 training: SDPA without rel-pos, else explicit for windows and
    small global maps, folded for large ones."""
    if not attn.use_rel_pos:
        return sdpa_attend
    if attn.window_size:
        return explicit_attend
    q_len = attn.num_prefix + math.prod(-(-s // st) for s, st in zip(shape, attn.cfg.stride_q))
    k_len = attn.num_prefix + math.prod(-(-s // st) for s, st in zip(shape, attn.cfg.stride_kv))
    if x.shape[0] * attn.num_heads * q_len * k_len <= EXPLICIT_MAX_ELEMENTS:
        return explicit_attend
    return folded_attend


def run_block(
    policy: str, block: MultiScaleBlock, x: torch.Tensor, shape: Sequence[int],
    input_pixels: int = RECOMPUTE_MIN_PIXELS,
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``block(x, shape)`` computed as ``policy`` picks (logged once per kind of block)."""
    plan = plan_block(policy, block, x, shape, input_pixels)
    kind = (policy, x.device.type, x.dtype, torch.is_grad_enabled(),
            "window" if block.attn.window_size else "global", plan)
    if kind not in _logged and eager_mode():
        _logged.add(kind)
        logger.info("kernels=%s: %s attention blocks on %s %s (%s) use %s", policy, kind[4],
                    x.device.type, str(x.dtype).replace("torch.", ""),
                    "training" if kind[3] else "inference", plan.describe())
    if plan.fast_block:
        return block_forward(block, x, shape, plan.attend, plan.recompute)
    return block(x, shape, plan.attend)


__all__ = [
    "EXPLICIT_MAX_ELEMENTS",
    "RECOMPUTE_MIN_PIXELS",
    "KERNEL_POLICIES",
    "BlockPlan",
    "block_forward",
    "check_policy",
    "depthwise_conv",
    "eager_mode",
    "explicit_attend",
    "folded_attend",
    "plan_block",
    "run_block",
    "sdpa_attend",
]
