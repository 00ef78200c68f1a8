"""Parameters and FLOPs of the MViTv2 image models against MViTv2 Table 1, counted as the
papers did: fvcore's ``parameter_count`` and ``FlopCountAnalysis`` (one multiply-add = one
FLOP) at 224x224, 1000 classes. Targets come from ``../shared/reference/paper_numbers.json``.

FLOPs are counted with every attention module's ``attn_impl`` set to ``"explicit"`` (matmul +
softmax, the official code's form): fvcore has no handle for the fused SDPA kernel, whose FLOPs
it would drop.

Table 1 prints rounded figures (52 M for B); a count passes if it lies within 1% of a value
that rounds to the printed one (B counts 51.47 M: 1.02% below 52, 0.06% below 51.5).
"""
from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
import torch
from fvcore.nn import FlopCountAnalysis, parameter_count

import mvit_backbone

PAPER = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference" / "paper_numbers.json"


def paper_numbers() -> dict:
    if not PAPER.is_file():
        pytest.fail(f"paper figures not found at {PAPER.resolve()} (shared/ must sit beside the clone)")
    return json.loads(PAPER.read_text())


def within_printed(value: float, printed: float, rel: float = 0.01) -> bool:
    """``value`` is within ``rel`` of some number that rounds to ``printed`` at its precision."""
    exponent = Decimal(str(printed)).as_tuple().exponent
    half_unit = 0.5 * 10.0 ** int(exponent)
    lo, hi = printed - half_unit, printed + half_unit
    return lo * (1 - rel) <= value <= hi * (1 + rel)


def count_gflops(model: torch.nn.Module, size: int = 224) -> tuple[float, dict[str, int]]:
    """Total GFLOPs and FLOPs per operator at (1, 3, size, size), attention as explicit matmuls."""
    for module in model.modules():
        if hasattr(module, "attn_impl"):
            module.attn_impl = "explicit"
    flops = FlopCountAnalysis(model.eval(), torch.zeros(1, 3, size, size))
    flops.unsupported_ops_warnings(False)
    flops.uncalled_modules_warnings(False)
    return flops.total() / 1e9, dict(flops.by_operator())


def test_within_printed() -> None:
    assert within_printed(51.47, 52) and within_printed(4.704, 4.7)
    assert not within_printed(50.9, 52) and not within_printed(4.80, 4.7)


@pytest.mark.parametrize(
    "variant", ["T", pytest.param("S", marks=pytest.mark.slow), pytest.param("B", marks=pytest.mark.slow)]
)
def test_params_and_flops_match_table1(variant: str) -> None:
    numbers = paper_numbers()
    target = numbers["mvitv2_image_variants_table1"][variant]
    measured = numbers["mvitv2_image_measured_with_timm_and_fvcore"][variant]
    model = mvit_backbone.create_model(f"mvitv2_{variant.lower()}", num_classes=1000)
    params_m = parameter_count(model)[""] / 1e6
    gflops, by_op = count_gflops(model)
    assert by_op.get("matmul", 0) > 0.1 * gflops * 1e9, f"attention matmuls missing from the count: {by_op}"
    assert within_printed(params_m, target["params_m"]), f"{variant}: {params_m:.3f}M vs {target['params_m']}"
    assert within_printed(gflops, target["gflops"]), f"{variant}: {gflops:.3f} GFLOPs vs {target['gflops']}"
    # and the exact counts of timm's port of the official models
    assert params_m == pytest.approx(measured["params_m"], rel=1e-3)
    assert gflops == pytest.approx(measured["gflops"], rel=2e-3)


@pytest.mark.parametrize(
    "device",
    ["meta", pytest.param("cpu", marks=pytest.mark.slow)],  # meta: same modules, no storage
)
@pytest.mark.parametrize("variant", ["L", "H"])
def test_params_match_table1_large(variant: str, device: str) -> None:
    target = paper_numbers()["mvitv2_image_variants_table1"][variant]
    with torch.device(device):
        model = mvit_backbone.create_model(f"mvitv2_{variant.lower()}", num_classes=1000)
    assert next(model.parameters()).device.type == device
    params_m = parameter_count(model)[""] / 1e6
    assert within_printed(params_m, target["params_m"]), f"{variant}: {params_m:.3f}M vs {target['params_m']}"
