"""The oneDNN Linear / MLP path: same outputs and gradients as F.linear and timm's Mlp."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp as TimmMlp

from mvit_backbone.layers.linear import TOKEN_CHUNK, Linear, Mlp, onednn_applies

needs_onednn = pytest.mark.skipif(
    not onednn_applies(torch.zeros(1), torch.zeros(1)), reason="oneDNN linear not available"
)


def _grads(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x = x.detach().requires_grad_(True)
    out = module(x)
    (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
    return (out.detach(), x.grad, *(p.grad for p in module.parameters()))


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_nn_linear(bias):
    torch.manual_seed(0)
    ours = Linear(96, 288, bias=bias)
    ref = nn.Linear(96, 288, bias=bias)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 300, 96)
    for a, b in zip(_grads(ours, x), _grads(ref, x)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@needs_onednn
@pytest.mark.parametrize("tokens", [50, 2 * TOKEN_CHUNK + 100], ids=["one_chunk", "three_chunks"])
def test_mlp_matches_timm_mlp_forward_backward_and_inference(tokens):
    """Also over several token chunks (the GELU and its gradient are computed per chunk)."""
    torch.manual_seed(0)
    ours = Mlp(64, 256, 96)
    ref = TimmMlp(64, 256, 96)
    assert set(ours.state_dict()) == set(ref.state_dict())
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, tokens, 64)
    pairs = list(zip(_grads(ours, x), _grads(ref, x)))
    for a, b in pairs[:2]:  # output and input gradient
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for a, b in pairs[2:]:  # parameter gradients
        if tokens <= TOKEN_CHUNK:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        else:
            # sums over 3 x 4196 tokens, which ours adds up chunk by chunk: float rounding
            # of that order, compared relative to the gradient's scale
            assert (a - b).abs().max() <= 5e-5 * b.abs().max(), a.shape
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_mlp_keeps_only_input_and_pre_activation_for_backward():
    """The fused MLP stores x and fc1's output; timm's stores GELU's output too."""
    torch.manual_seed(0)
    x = torch.randn(1000, 32, requires_grad=True)

    def saved_numel(module):
        params = {p.untyped_storage().data_ptr() for p in module.parameters()}
        storages = {}

        def pack(t):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in params:
                storages[ptr] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            module(x)
        return sum(storages.values()) // 4

    ours, ref = Mlp(32, 128, 32), TimmMlp(32, 128, 32)
    assert saved_numel(ours) == 1000 * (32 + 128)
    assert saved_numel(ref) == 1000 * (32 + 128 + 128)


def test_fallbacks_use_plain_linear():
    """Tracing, autocast, other dtypes and devices see F.linear (so fvcore counts FLOPs and
    ONNX exports a Gemm)."""
    layer = Linear(8, 4)
    x = torch.randn(2, 8)
    traced = torch.jit.trace(layer, x)
    assert "mkldnn" not in str(traced.graph)
    assert "linear" in str(traced.graph)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not onednn_applies(x, layer.weight)
        assert layer(x).dtype == torch.bfloat16
    assert not onednn_applies(x.double(), layer.weight.double())
    torch.testing.assert_close(layer.double()(x.double()), F.linear(x.double(), layer.weight, layer.bias))
