"""Parameters of the MViTv2 image models against MViTv2 Table 1, counted as the papers did:
fvcore's ``parameter_count``, 1000 classes. Targets come from
``../shared/reference/paper_numbers.json``. (FLOPs: ``test_flops.py``.)

Table 1 prints rounded figures (52 M for B); a count passes if it lies within 1% of a value
that rounds to the printed one (B counts 51.47 M: 1.02% below 52, 0.06% below 51.5).
"""
from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
import torch
from fvcore.nn import parameter_count

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


def test_within_printed() -> None:
    assert within_printed(51.47, 52) and within_printed(4.704, 4.7)
    assert not within_printed(50.9, 52) and not within_printed(4.80, 4.7)


@pytest.mark.parametrize("variant", ["T", "S", "B"])
def test_params_match_table1(variant: str) -> None:
    numbers = paper_numbers()
    target = numbers["mvitv2_image_variants_table1"][variant]
    measured = numbers["mvitv2_image_measured_with_timm_and_fvcore"][variant]
    with torch.device("meta"):
        model = mvit_backbone.create_model(f"mvitv2_{variant.lower()}", num_classes=1000)
    params_m = parameter_count(model)[""] / 1e6
    assert within_printed(params_m, target["params_m"]), f"{variant}: {params_m:.3f}M vs {target['params_m']}"
    # and the exact count of timm's port of the official models
    assert params_m == pytest.approx(measured["params_m"], rel=1e-3)


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
