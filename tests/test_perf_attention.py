"""Fused attention paths (SDPA with bias, folded rel-pos) against the explicit reference, and
the window padding options against detectron2's padding."""
import math

import pytest
import torch

from mvit_backbone import MViT
from mvit_backbone.layers import MultiScaleAttention, MultiScaleBlock, window_runs
from mvit_backbone.layers.attention import _attn_impl_for

IMPLS = ["sdpa", "folded", "auto"]

CASES = {
    "global": dict(shape=(12, 12)),
    "global_pooled_kv_interp": dict(shape=(20, 13), stride_kv=2),  # rel-pos resized 16 -> 20
    "global_cls_token": dict(shape=(16, 16), num_prefix=1, stride_q=2, stride_kv=4),
    "windowed_border": dict(shape=(20, 13), window_size=8, stride_kv=2),
    "windowed_minimal": dict(shape=(20, 13), window_size=8, stride_kv=2, window_padding="minimal"),
    "windowed_smaller_than_window": dict(shape=(6, 5), window_size=8, stride_q=2, stride_kv=4),
    "swin_shifted": dict(shape=(20, 13), window_size=8, shift_windows=True),
    "swin_shifted_minimal": dict(shape=(20, 13), window_size=8, shift_windows=True,
                                 window_padding="minimal"),
}


def _run(impl: str, grad: bool, shape, num_prefix: int = 0, **kw):
    torch.manual_seed(0)
    attn = MultiScaleAttention(
        dim=32, dim_out=32, num_heads=2, use_rel_pos=True, rel_pos_zero_init=False,
        input_size=(16, 16), attn_impl=impl, num_prefix=num_prefix, **kw,
    )
    torch.manual_seed(1)
    x = torch.randn(2, num_prefix + shape[0] * shape[1], 32, requires_grad=grad)
    if not grad:
        with torch.no_grad():
            return [attn(x, shape)[0]]
    out, _ = attn(x, shape)
    (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    return [out, x.grad, attn.rel_pos_h.grad, attn.qkv.weight.grad]


@pytest.mark.parametrize("case", list(CASES))
def test_fused_equals_explicit(case):
    """Outputs to 1e-5 (fp32), in inference and training; gradients to 1e-4 (they sum many
    terms, so their rounding differs more)."""
    for grad in (False, True):
        ref = _run("explicit", grad, **CASES[case])
        for impl in IMPLS:
            got = _run(impl, grad, **CASES[case])
            torch.testing.assert_close(got[0], ref[0], atol=1e-5, rtol=1e-5)
            for r, g in zip(ref[1:], got[1:]):
                torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)


def test_auto_picks_folded_or_explicit_for_cpu_training_only():
    q = torch.randn(1, 1, 4, 8)
    assert _attn_impl_for("auto", q, use_rel_pos=True) == "sdpa"
    assert _attn_impl_for("auto", q, use_rel_pos=True, windowed=True) == "sdpa"
    assert _attn_impl_for("auto", q.requires_grad_(), use_rel_pos=True) == "folded"
    assert _attn_impl_for("auto", q, use_rel_pos=True, windowed=True) == "explicit"
    assert _attn_impl_for("auto", q, use_rel_pos=False) == "sdpa"
    assert _attn_impl_for("explicit", q, use_rel_pos=True) == "explicit"


EXPLICIT_CASES = {
    # q_shape, k_shape, num_prefix, heads, masked
    "window_pooled_kv": ((8, 6), (4, 3), 0, 2, False),
    "window_masked": ((6, 6), (6, 6), 0, 1, True),
    "cls_token": ((4, 4), (2, 2), 1, 2, False),
    "video": ((2, 4, 4), (2, 2, 2), 0, 2, False),
}


@pytest.mark.parametrize("case", list(EXPLICIT_CASES))
def test_explicit_node_matches_autograd_and_keeps_less(case):
    """The explicit path's autograd node gives autograd's outputs and gradients (for q, k, v
    and the rel-pos tables) and keeps less for backward than autograd through the same ops."""
    q_shape, k_shape, p, heads, masked = EXPLICIT_CASES[case]
    ndim = len(q_shape)
    torch.manual_seed(0)
    attn = MultiScaleAttention(
        16 * heads, 16 * heads, heads, pool_kernel=(3,) * ndim, use_rel_pos=True,
        rel_pos_zero_init=False, input_size=q_shape, stride_kv=q_shape[-1] // k_shape[-1],
        num_prefix=p,
    )
    lq, lk = p + math.prod(q_shape), p + math.prod(k_shape)
    q, k, v = torch.randn(3, heads, lq, 16), torch.randn(3, heads, lk, 16), torch.randn(3, heads, lk, 16)
    mask = torch.rand(3, 1, lq, lk) > 0.3 if masked else None
    if mask is not None:
        mask[..., 0] = True  # no fully masked row
    weight = torch.randn(3, heads, lq, 16)
    results = []
    for node in (True, False):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        attn.zero_grad()
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.append(t.untyped_storage()) or t, lambda t: t
        ):
            if node:
                out = attn.attend(*leaves, q_shape, k_shape, mask, impl="explicit")
            else:
                out, _ = attn._explicit(*leaves, q_shape, k_shape, mask,
                                        attn._rel_lookups(q_shape, k_shape))
        (out * weight).sum().backward()
        stored = sum({s.data_ptr(): s.nbytes() for s in saved}.values())
        grads = [t.grad for t in leaves] + [t.grad.clone() for t in attn.rel_pos_tables()]
        results.append((out.detach(), grads, stored))
    (out, grads, stored), (ref_out, ref_grads, ref_stored) = results
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)
    assert stored < ref_stored


def test_explicit_returns_attention_maps():
    torch.manual_seed(0)
    attn = MultiScaleAttention(16, 16, 2, use_rel_pos=True, input_size=(4, 4))
    q, k, v = (torch.randn(1, 2, 16, 8) for _ in range(3))
    out, probs = attn.attend(q, k, v, (4, 4), (4, 4), return_attn=True)
    assert probs.shape == (1, 2, 16, 16)
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 2, 16))
    torch.testing.assert_close(out, probs @ v)


def test_window_runs_skip_padded_queries():
    # 20 query rows, window 8: two full windows and one of 4 rows; keys padded to whole windows
    assert window_runs(20, 8, 10, 4, pad_keys=True) == [(0, 8, 0, 4, 2), (16, 4, 8, 4, 1)]
    assert window_runs(20, 8, 10, 4, pad_keys=False) == [(0, 8, 0, 4, 2), (16, 4, 8, 2, 1)]
    # smaller than one window: a single window of the map's size
    assert window_runs(6, 8, 3, 4, pad_keys=False) == [(0, 6, 0, 3, 1)]
    with pytest.raises(ValueError, match="different numbers of windows"):
        window_runs(17, 8, 4, 4, pad_keys=True)


def _models(**kw):
    # a small hwin model: 4 stages of one block, windows 16, 8, 4 on the stage grids
    args = dict(embed_dim=32, depth=4, num_heads=1, last_block_indexes=(0, 1, 2, 3),
                adaptive_window_size=16, rel_pos_zero_init=False)
    torch.manual_seed(0)
    d2_pad = MViT(**args, window_padding="detectron2", **kw).eval()
    minimal = MViT(**args, window_padding="minimal", **kw).eval()
    minimal.load_state_dict(d2_pad.state_dict())
    return d2_pad, minimal


@pytest.mark.parametrize("window_mode", ["hwin", "swin"])
def test_minimal_padding_equals_detectron2_on_window_multiples(window_mode):
    """Pooled grids that are window multiples need no padding: both options agree exactly."""
    d2_pad, minimal = _models(window_mode=window_mode)
    x = torch.randn(1, 3, 256, 192)  # stage grids 64x48, 32x24, 16x12: windows 16, 8, 4
    with torch.no_grad():
        a, b = d2_pad(x), minimal(x)
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=1e-5)


def test_minimal_padding_differs_where_detectron2_pads():
    """detectron2's zero keys take part in the softmax; without them border windows differ."""
    d2_pad, minimal = _models()
    x = torch.randn(1, 3, 200, 232)
    with torch.no_grad():
        a, b = d2_pad(x)["scale2"], minimal(x)["scale2"]
    assert a.shape == b.shape
    assert (a - b).abs().max() > 1e-4


def test_unknown_options_raise():
    with pytest.raises(ValueError, match="attn_impl must be one of"):
        MultiScaleAttention(16, 16, 1, attn_impl="flash")
    with pytest.raises(ValueError, match="window_padding must be one of"):
        MultiScaleAttention(16, 16, 1, window_padding="none")


def test_transition_block_keeps_nothing_at_input_resolution_and_output_width():
    """A block that pools the query recomputes its qkv projection (three output widths at the
    input resolution) and its projected skip in backward instead of keeping them.
    (Its gradients are checked against detectron2 in test_core_parity.py.)"""
    torch.manual_seed(0)
    block = MultiScaleBlock(32, 64, num_heads=2, mlp_ratio=2.0, stride_q=2, stride_kv=2,
                            use_rel_pos=True, input_size=(16, 16))
    x = torch.randn(1, 16 * 16, 32, requires_grad=True)
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, shape = block(x, (16, 16))
    assert shape == (8, 8)
    assert max(sizes) < 16 * 16 * 64
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
