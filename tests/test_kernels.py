"""The execution policies against the reference policy, the hand-written backwards against
gradcheck, and the one rel-pos owner against brute force."""
import inspect
import itertools
import math
from unittest import mock

import pytest
import torch
from torch.autograd import gradcheck

import mvit_backbone
import mvit_backbone.kernels as kernels
from mvit_backbone import MViT
from mvit_backbone.detection.config import _NOT_KEYS, add_mvitv2_config, mvit_arguments
from mvit_backbone.kernels import (
    EXPLICIT_MAX_ELEMENTS,
    KERNEL_POLICIES,
    RECOMPUTE_MIN_PIXELS,
    BlockPlan,
    block_forward,
    explicit_attend,
    folded_attend,
    plan_block,
    sdpa_attend,
)
from mvit_backbone.kernels.linear import mlp_forward, norm_linear, onednn_applies
from mvit_backbone.kernels.pool import depthwise_conv
from mvit_backbone.layers import (
    Mlp,
    MultiScaleBlock,
    attend,
    attention_pool,
    make_pool,
    pool_grid,
    rel_pos_lookup,
    RelPos,
)
from mvit_backbone.mvit import MViTTrunk

ATTENDS = [explicit_attend, sdpa_attend, folded_attend]


# ---------------------------------------------------------------- relative positions
@pytest.mark.parametrize("q_shape,k_shape,prefix", [
    ((5,), (3,), 0), ((5,), (3,), 2), ((4, 6), (2, 3), 1), ((2, 4, 3), (2, 2, 3), 0),
    ((2, 4, 3), (2, 2, 3), 1)], ids=["1d", "1d_cls", "2d_cls", "3d", "3d_cls"])
def test_rel_pos_terms_place_the_bias_of_eq4_every_way(q_shape, k_shape, prefix):
    """MViTv2 Eq. 4 by brute force; the bias, the in-place add, the one-hot key codes and the
    adjoint all describe the same placement of the per-axis terms."""
    torch.manual_seed(0)
    c, heads = 8, 2
    tables = [torch.randn(2 * max(a, b) - 1, c) for a, b in zip(q_shape, k_shape)]
    lookups = [rel_pos_lookup(a, b, t) for a, b, t in zip(q_shape, k_shape, tables)]
    lq, lk = math.prod(q_shape), math.prod(k_shape)
    q = torch.randn(3, heads, prefix + lq, c)
    rel = RelPos(lookups, q_shape, k_shape, prefix)
    terms = rel.terms(q)
    expected = torch.zeros(3, heads, prefix + lq, prefix + lk)
    q_cells = list(itertools.product(*map(range, q_shape)))
    k_cells = list(itertools.product(*map(range, k_shape)))
    for i, qi in enumerate(q_cells):
        for j, kj in enumerate(k_cells):
            r = sum(lookups[a][qi[a], kj[a]] for a in range(len(q_shape)))
            expected[:, :, prefix + i, prefix + j] = q[:, :, prefix + i] @ r
    torch.testing.assert_close(rel.bias(terms), expected, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # built in place, after the prefix columns
        torch.testing.assert_close(rel.bias(terms), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rel.add_to_(torch.zeros_like(expected), terms), expected,
                               atol=1e-5, rtol=1e-5)
    codes = rel.key_codes(q)
    folded = sum(t @ code.t() for t, code in zip(terms, codes))
    torch.testing.assert_close(folded, expected, atol=1e-5, rtol=1e-5)
    # adjoint: <add_to_(0), G> == sum_a <terms_a, grads_from_logits(G)_a>
    g = torch.randn_like(expected)
    lhs = (expected * g).sum()
    rhs = sum((t * gt).sum() for t, gt in zip(terms, rel.grads_from_logits(g)))
    torch.testing.assert_close(lhs, rhs, atol=1e-3, rtol=1e-4)


# ---------------------------------------------------------------- hand-written backwards
def _rel_pos_case(dtype, q_shape=(3, 2), k_shape=(2, 1), prefix=1, heads=2, c=4):
    g = torch.Generator().manual_seed(0)
    lq, lk = prefix + math.prod(q_shape), prefix + math.prod(k_shape)
    leaves = [torch.randn(1, heads, lq, c, generator=g, dtype=dtype),
              torch.randn(1, heads, lk, c, generator=g, dtype=dtype),
              torch.randn(1, heads, lk, c, generator=g, dtype=dtype)]
    leaves += [torch.randn(2 * max(a, b) - 1, c, generator=g, dtype=dtype)
               for a, b in zip(q_shape, k_shape)]
    leaves = [t.requires_grad_() for t in leaves]

    def attention(fn, mask=None):
        def run(q, k, v, *tables):
            lookups = [rel_pos_lookup(a, b, t) for a, b, t in zip(q_shape, k_shape, tables)]
            return fn(q, k, v, 0.5, RelPos(lookups, q_shape, k_shape, prefix), mask)
        return run
    return leaves, attention


@pytest.mark.parametrize("fn", [explicit_attend, folded_attend])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("q_shape,k_shape,prefix", [
    ((3, 2), (2, 1), 1),  # 2-D, pooled keys, class token
    ((2, 3, 2), (1, 2, 2), 0),  # 3-D
    ((2, 2, 3), (2, 1, 3), 1),  # 3-D with a class token
], ids=["2d_cls", "3d", "3d_cls"])
def test_attention_nodes_pass_gradcheck(fn, masked, q_shape, k_shape, prefix):
    leaves, attention = _rel_pos_case(torch.float64, q_shape, k_shape, prefix)
    mask = None
    if masked:
        mask = torch.rand(1, 1, leaves[0].shape[2], leaves[1].shape[2],
                          generator=torch.Generator().manual_seed(1)) > 0.4
        mask[..., 0] = True  # no fully masked row
    assert gradcheck(attention(fn, mask), leaves)


def test_linear_nodes_pass_gradcheck():
    g = torch.Generator().manual_seed(0)
    norm = torch.nn.LayerNorm(6).double()
    torch.nn.init.normal_(norm.weight, generator=g)
    mlp = Mlp(6, 10, 5).double()
    x = torch.randn(7, 6, dtype=torch.float64, generator=g, requires_grad=True)
    w1, w2 = torch.randn(4, 6, dtype=torch.float64, generator=g), torch.randn(3, 6, dtype=torch.float64, generator=g)
    b1 = torch.randn(4, dtype=torch.float64, generator=g)
    params = [t.requires_grad_() for t in (w1, b1, w2, norm.weight, norm.bias)]

    def project(x, w1, b1, w2, *_):
        return norm_linear(x, norm, [(w1, b1), (w2, None)])

    assert gradcheck(project, (x, *params))
    assert gradcheck(lambda x, *_: mlp_forward(mlp, x, norm), (x, mlp.fc1.weight, mlp.fc2.bias))


@pytest.mark.parametrize("grid,kernel,stride,padding", [
    ((5, 6, 7), (3, 3, 3), (1, 1, 1), (1, 1, 1)),  # Q/K/V pooling without stride
    ((5, 6, 7), (3, 3, 3), (1, 2, 2), (1, 1, 1)),  # Q at a stage transition (4 phases)
    ((4, 17, 16), (3, 3, 3), (2, 8, 8), (1, 1, 1)),  # adaptive K/V stride (phases no tap reaches)
    ((3, 5, 6), (3, 5, 5), (2, 3, 3), (1, 2, 2)),
    ((3, 4, 5), (2, 2, 2), (2, 2, 2), (0, 0, 0)),  # even kernel, no padding
    ((3, 4, 5), (1, 3, 3), (1, 1, 1), (1, 1, 1)),  # padding beyond the kernel (output cropped)
    ((1, 3, 2), (3, 3, 3), (2, 4, 4), (1, 1, 1)),  # grid smaller than the stride
    ((4, 9, 11), (2, 3, 3), (1, 2, 4), (1, 1, 2)),  # mixed strides, uneven padding
    ((4, 2, 1), (3, 3, 3), (1, 1, 1), (1, 1, 1)),  # frames smaller than the filter
], ids=["stride1", "stride122", "stride288", "kernel355", "even", "wide_padding", "tiny_grid",
        "mixed", "tiny_frames"])
def test_depthwise_conv3d_node_passes_gradcheck(grid, kernel, stride, padding):
    """The 3-D pooling conv's hand-written backward against finite differences (float64) and
    against PyTorch's conv3d backward, on a channels-last input as the attention pools it."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, *grid, 3, dtype=torch.float64, generator=g).movedim(-1, 1).requires_grad_()
    w = torch.randn(3, 1, *kernel, dtype=torch.float64, generator=g, requires_grad=True)
    assert gradcheck(lambda x, w: depthwise_conv(x, w, stride, padding), (x, w))
    out = depthwise_conv(x, w, stride, padding)
    ref = torch.nn.functional.conv3d(x, w, None, stride, padding, groups=3)
    torch.testing.assert_close(out, ref)
    grad = torch.randn(ref.shape, dtype=torch.float64, generator=g)
    for ours, theirs in zip(torch.autograd.grad(out, (x, w), grad), torch.autograd.grad(ref, (x, w), grad)):
        torch.testing.assert_close(ours, theirs)


# ---------------------------------------------------------------- policies equal the reference
def _grads(model, x, policy):
    model.kernels = policy
    model.zero_grad()
    xi = x.clone().requires_grad_()
    out = model(xi)
    out = out if isinstance(out, dict) else {"out": out}
    torch.manual_seed(1)
    sum((v * torch.randn_like(v)).sum() for v in out.values()).backward()
    return out, {"input": xi.grad, **{n: p.grad.clone() for n, p in model.named_parameters()}}


def _assert_policies_agree(model, x):
    with torch.no_grad():
        ref = model(x)
        for policy in KERNEL_POLICIES:
            model.kernels = policy
            for name, value in model(x).items():
                torch.testing.assert_close(value, ref[name], atol=1e-5, rtol=1e-5)
    ref_out, ref_grads = _grads(model, x, "reference")
    # CPU training takes the oneDNN block that stores its activations below
    # RECOMPUTE_MIN_PIXELS and the one that recomputes them above it: both, on the same input
    for policy, recompute_from in [*((p, RECOMPUTE_MIN_PIXELS) for p in KERNEL_POLICIES), ("auto", 0)]:
        with mock.patch.object(kernels, "RECOMPUTE_MIN_PIXELS", recompute_from):
            out, grads = _grads(model, x, policy)
        for name in ref_out:
            torch.testing.assert_close(out[name], ref_out[name], atol=1e-5, rtol=1e-5)
        for name, g in ref_grads.items():
            scale = max(g.abs().max().item(), 1.0)  # as the detectron2 gradient parity
            assert (grads[name] - g).abs().max().item() <= 1e-4 * scale, (policy, recompute_from, name)


SMALL_2D = dict(embed_dim=32, depth=4, num_heads=1, last_block_indexes=(0, 1, 2, 3),
                adaptive_window_size=16, rel_pos_zero_init=False)


@pytest.mark.parametrize("window_mode", ["hwin", "swin", "window", "none"])
def test_every_policy_equals_reference_2d(window_mode):
    torch.manual_seed(0)
    model = MViT(**SMALL_2D, window_mode=window_mode).train()
    _assert_policies_agree(model, torch.randn(1, 3, 104, 136))


def test_every_policy_equals_reference_with_class_token_and_abs_pos():
    torch.manual_seed(0)
    model = mvit_backbone.create_model(
        "mvitv2_t", num_classes=7, depth=3, embed_dim=32, last_block_indexes=(0, 1, 2),
        use_cls_token=True, use_abs_pos=True, drop_path_rate=0.0).train()
    with torch.no_grad():
        ref = model(torch.zeros(1, 3, 64, 64))
    assert ref.shape == (1, 7)
    model.kernels = "reference"
    x = torch.randn(2, 3, 96, 64)
    _assert_policies_agree(_AsDict(model, lambda m, x: {"logits": m(x)}), x)


class _AsDict(torch.nn.Module):
    """A trunk seen as a dict-output model with the trunk's policy switch: ``outputs(trunk, x)``
    gives the dict."""

    def __init__(self, trunk, outputs):
        super().__init__()
        self.trunk, self.outputs = trunk, outputs

    @property
    def kernels(self):
        return self.trunk.kernels

    @kernels.setter
    def kernels(self, policy):
        self.trunk.kernels = policy

    def forward(self, x):
        return self.outputs(self.trunk, x)


SMALL_3D = dict(patch_kernel=(3, 7, 7), patch_stride=(2, 4, 4), patch_padding=(1, 3, 3),
                qkv_pool_kernel=(3, 3, 3), embed_dim=16, depth=3, num_heads=1,
                last_block_indexes=(0, 1, 2), window_mode="none", rel_pos_zero_init=False,
                num_frames=8, img_size=64)


@pytest.mark.parametrize("use_cls_token", [False, True], ids=["grid", "cls"])
def test_3d_trunk_forward_backward_under_every_policy(use_cls_token):
    """Cube embedding, space-only Q pooling at transitions, (1, s, s) K/V strides and rel-pos
    over t, h, w; a clip length and frame size other than the built ones interpolate. With a
    class token and two clips the fast block projects the tokens grid-first."""
    torch.manual_seed(0)
    trunk = _AsDict(MViTTrunk(**SMALL_3D, use_cls_token=use_cls_token), lambda m, x: {
        f"stage{i}": t for i, (t, _) in enumerate(m.forward_stages(x))}).train()
    blocks = trunk.trunk.blocks
    assert blocks[1].attn.cfg.stride_q == (1, 2, 2)
    assert blocks[0].attn.cfg.stride_kv == (1, 4, 4)
    assert blocks[0].attn.rel_pos_t.shape[0] == 2 * 4 - 1
    x = torch.randn(2, 3, 6, 48, 80)
    with torch.no_grad():
        out = trunk(x)
    assert out["stage2"].shape == (2, use_cls_token + 3 * 3 * 5, 64)
    assert all(torch.isfinite(v).all() for v in out.values())
    _assert_policies_agree(trunk, x)


# ---------------------------------------------------------------- what the policy picks
def test_auto_picks_by_device_dtype_grad_and_size():
    torch.manual_seed(0)
    window = MultiScaleBlock(32, 32, num_heads=1, window_size=8, use_rel_pos=True, input_size=(16, 16))
    glob = MultiScaleBlock(32, 32, num_heads=1, stride_kv=2, use_rel_pos=True, input_size=(16, 16))
    x = torch.randn(1, 256, 32)
    fast = onednn_applies(x, window.attn.qkv.weight)
    with torch.no_grad():
        assert plan_block("auto", glob, x, (16, 16)).attend is sdpa_attend
    assert plan_block("auto", window, x, (16, 16)).attend is (explicit_attend if fast else sdpa_attend)
    # training: the oneDNN block, recomputing in backward for large inputs only
    large = plan_block("auto", window, x, (16, 16), RECOMPUTE_MIN_PIXELS)
    assert large.recompute == fast and large.fast_block == fast
    small = plan_block("auto", window, x, (16, 16), 224 * 224 * 4)
    assert not small.recompute and small.fast_block == fast
    assert plan_block("auto", glob, x, (16, 16)).attend is (explicit_attend if fast else sdpa_attend)
    big = torch.randn(1, 160 * 160, 32)
    assert 160 * 160 * 80 * 80 > EXPLICIT_MAX_ELEMENTS
    assert plan_block("auto", glob, big, (160, 160)).attend is (folded_attend if fast else sdpa_attend)
    assert plan_block("auto", glob, x.double(), (16, 16)) == BlockPlan(False, sdpa_attend)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not plan_block("auto", glob, x, (16, 16)).fast_block
    assert plan_block("reference", glob, x, (16, 16)).attend is attend
    with pytest.raises(ValueError, match="kernels must be one of"):
        MViT(**SMALL_2D, kernels="fast")


def test_tracing_sees_the_plain_graph():
    """fvcore counts FLOPs by tracing: under tracing every policy is the reference (matmul and
    einsum, which fvcore counts), with no custom autograd node and no SDPA."""
    torch.manual_seed(0)
    model = MViT(**SMALL_2D, window_mode="hwin").eval()
    graph = str(torch.jit.trace(model, torch.randn(1, 3, 64, 64), strict=False).inlined_graph)
    assert "PythonOp" not in graph and "scaled_dot_product" not in graph and "mkldnn" not in graph
    assert "aten::matmul" in graph and "aten::einsum" in graph


def test_block_forward_equals_block_and_recomputes_transition():
    """The oneDNN block equals the plain block; a block that pools the query keeps nothing at
    the input resolution and output width for backward (it recomputes the projection)."""
    torch.manual_seed(0)
    block = MultiScaleBlock(32, 64, num_heads=2, mlp_ratio=2.0, stride_q=2, stride_kv=2,
                            use_rel_pos=True, rel_pos_zero_init=False, input_size=(16, 16))
    x = torch.randn(1, 16 * 16, 32, requires_grad=True)
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, shape = block_forward(block, x, (16, 16), explicit_attend)
    ref, ref_shape = block(x, (16, 16))
    assert shape == ref_shape == (8, 8)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    if onednn_applies(x, block.attn.qkv.weight):
        assert max(sizes) < 16 * 16 * 64
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_explicit_node_keeps_less_than_autograd():
    leaves, attention = _rel_pos_case(torch.float32, q_shape=(8, 6), k_shape=(4, 3), prefix=0)
    stored = []
    for fn in (explicit_attend, attend):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.append(t.untyped_storage()) or t, lambda t: t
        ):
            attention(fn)(*leaves)
        stored.append(sum({s.data_ptr(): s.nbytes() for s in saved}.values()))
    assert stored[0] < stored[1]


# ---------------------------------------------------------------- options in one place
def test_yacs_keys_are_the_constructor_arguments():
    from detectron2.config import get_cfg

    cfg = add_mvitv2_config(get_cfg())
    keys = {k.lower() for k in cfg.MODEL.MVITV2} - {"variant", "norm_eps"}
    args = set(mvit_arguments()) - set(_NOT_KEYS)
    assert keys == args
    assert "kernels" in keys and "window_padding" in keys and "num_frames" in keys
    assert set(inspect.signature(MViTTrunk.__init__).parameters) - {"self"} <= set(mvit_arguments())


@pytest.mark.parametrize("mode,stride", [("conv", (2, 2)), ("max", (2, 2)), ("conv", (1, 1))],
                         ids=["conv", "max", "unpooled"])
def test_pool_grid_of_grid_first_tokens_equals_attention_pool(mode, stride):
    """The fast block's grid-first layout (grid and class tokens given apart) pools as
    attention_pool does on the (B, p + L) layout, including a part left unpooled."""
    torch.manual_seed(0)
    b, p, shape, groups, heads, c = 2, 1, (6, 4), 2, 3, 8
    made = [make_pool(c, (3, 3), stride, mode, torch.nn.LayerNorm, pool_stride_one=False)
            for _ in range(groups)]
    pools, norms = [m[0] for m in made], [m[1] for m in made]
    x = torch.randn(b, p + 24, groups, heads, c)
    expected, expected_shape = attention_pool(x, shape, pools, norms, p)
    out, out_shape = pool_grid(x[:, p:].contiguous(), x[:, :p].contiguous(), shape, pools, norms)
    assert out_shape == expected_shape
    for got, want in zip(out, expected):
        torch.testing.assert_close(got, want)
